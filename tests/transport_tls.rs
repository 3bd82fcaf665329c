//! Our engine sessions over TLS (rustls, driven sans-IO on the ring), in both
//! roles: a checksummed many-stream echo each way with half-closes, a clean
//! close whose GOAWAY crosses the TLS layer, and handshake failures and bad
//! PEM files that fail fast with an error naming their cause.

mod transport_util;

use std::sync::Arc;

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream},
};
use muxado::transport::{rustls, TlsClientConfig, TlsError, TlsServerConfig, TlsStream};
use muxado::{Config, Session};
use transport_util::*;

/// A connected pair of TLS streams over loopback TCP, handshaken on this core.
async fn tls_pair(
    server_cfg: TlsServerConfig,
    client_cfg: TlsClientConfig,
    name: &str,
) -> (Result<TlsStream, TlsError>, Result<TlsStream, TlsError>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = engine::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsStream::accept(tcp, &server_cfg).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = TlsStream::connect(tcp, &client_cfg, name).await;
    (client, server.await)
}

fn config() -> Config {
    Config::default().with_accept_backlog(1024)
}

#[test]
fn tls_sessions_echo_both_ways_with_pem_files() {
    let dir = TempDir::new("tls");
    let pki = Pki::new();
    let (ca, cert, key) = pki.write(dir.path());
    let server_cfg = TlsServerConfig::from_pem_files(&cert, &key).unwrap();
    let client_cfg = TlsClientConfig::from_ca_pem_file(&ca).unwrap();
    run_bounded(move || async move {
        let (client, server) = tls_pair(server_cfg, client_cfg, "localhost").await;
        let (client, server) = (client.unwrap(), server.unwrap());
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let client = Session::client(client, config());
        let server = Session::server(server, config());
        assert!(client.peer_addr().is_some() && server.local_addr() == client.peer_addr());
        echo_both_ways(&client, &server, 0x715).await;
    });
}

/// Our TLS client as the muxado server and vice versa: the TLS and the muxado
/// roles are independent; and TLS 1.2 works too.
#[test]
fn tls12_with_swapped_roles() {
    let pki = Pki::new();
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client_cfg = TlsClientConfig::from_rustls(Arc::new(tls12));
    run_bounded(move || async move {
        let (tls_client, tls_server) = tls_pair(server_cfg, client_cfg, "127.0.0.1").await;
        let (tls_client, tls_server) = (tls_client.unwrap(), tls_server.unwrap());
        assert_eq!(
            tls_server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let muxado_server = Session::server(tls_client, config());
        let muxado_client = Session::client(tls_server, config());
        echo_both_ways(&muxado_client, &muxado_server, 0x12).await;
    });
}

#[test]
fn wrong_ca_fails_the_handshake_on_both_sides() {
    let pki = Pki::new();
    let other = Pki::new();
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let client_cfg = TlsClientConfig::from_ca_pem(other.ca_pem.as_bytes()).unwrap();
    run_bounded(move || async move {
        let (client, server) = tls_pair(server_cfg, client_cfg, "localhost").await;
        let client = client.unwrap_err();
        eprintln!("client: {client}");
        assert!(
            matches!(
                client,
                TlsError::Handshake(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{client:?}"
        );
        assert!(client.to_string().contains("TLS handshake failed"));
        let server = server.unwrap_err();
        eprintln!("server: {server}");
        assert!(
            matches!(server, TlsError::Handshake(rustls::Error::AlertReceived(_))),
            "{server:?}"
        );
    });
}

#[test]
fn wrong_server_name_fails_the_handshake() {
    let pki = Pki::new();
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let client_cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    run_bounded(move || async move {
        let (client, server) = tls_pair(server_cfg, client_cfg, "example.com").await;
        let client = client.unwrap_err();
        eprintln!("client: {client}");
        assert!(
            matches!(
                client,
                TlsError::Handshake(rustls::Error::InvalidCertificate(_))
            ),
            "{client:?}"
        );
        assert!(server.is_err());
    });
}

/// A peer that speaks no TLS: the server's handshake fails, it does not hang.
#[test]
fn plaintext_peer_fails_the_server_handshake() {
    let pki = Pki::new();
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    run_bounded(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, &server_cfg).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (r, _) = tcp
            .send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
            .await;
        r.unwrap();
        let err = server.await.unwrap_err();
        eprintln!("server: {err}");
        assert!(matches!(err, TlsError::Handshake(_)), "{err:?}");
        // A peer that hangs up mid-handshake.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg =
            TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
        let server = engine::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, &cfg).await
        });
        drop(TcpStream::connect(addr).await.unwrap());
        let err = server.await.unwrap_err();
        assert!(matches!(err, TlsError::HandshakeEof), "{err:?}");
        assert!(err.to_string().contains("closed"), "{err}");
    });
}

/// A peer that connects and says nothing: both handshakes give up in time.
#[test]
fn silent_peer_times_the_handshake_out() {
    use std::time::{Duration, Instant};
    let pki = Pki::new();
    let t = Duration::from_millis(200);
    let server_cfg = TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .unwrap()
        .with_handshake_timeout(Some(t));
    let client_cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
        .with_handshake_timeout(Some(t));
    run_bounded(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let start = Instant::now();
        let server = engine::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, &server_cfg).await
        });
        let silent = TcpStream::connect(addr).await.unwrap();
        let err = server.await.unwrap_err();
        assert!(
            matches!(err, TlsError::HandshakeTimeout(d) if d == t),
            "{err:?}"
        );
        assert!(start.elapsed() >= t);
        eprintln!("server: {err}");
        drop(silent);

        // A "server" that accepts and never answers the ClientHello.
        let mute = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = mute.local_addr().unwrap();
        let held = engine::spawn(async move { mute.accept().await.unwrap() });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = TlsStream::connect(tcp, &client_cfg, "localhost")
            .await
            .unwrap_err();
        assert!(matches!(err, TlsError::HandshakeTimeout(_)), "{err:?}");
        let e: std::io::Error = err.into();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        drop(held.await);
    });
}

#[test]
fn bad_pem_files_name_the_file_and_the_cause() {
    let dir = TempDir::new("pem");
    let pki = Pki::new();
    let (ca, cert, key) = pki.write(dir.path());
    let missing = dir.path().join("no-such.pem");

    let e = TlsServerConfig::from_pem_files(&missing, &key)
        .err()
        .unwrap();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(
            e,
            TlsError::Pem {
                what: "certificate chain",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains(&*missing.to_string_lossy()), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    let e = TlsServerConfig::from_pem_files(&cert, &missing)
        .err()
        .unwrap();
    assert!(e.to_string().contains("private key"), "{e}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

    // A key file that holds only a certificate, a certificate file that holds only a key.
    let e = TlsServerConfig::from_pem_files(&cert, &cert).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("no private key found in {}", cert.display())
    );
    let e = TlsServerConfig::from_pem_files(&key, &key).err().unwrap();
    assert!(
        matches!(
            e,
            TlsError::Empty {
                what: "certificate chain",
                ..
            }
        ),
        "{e:?}"
    );

    // A key that is not the certificate's.
    let other = Pki::new();
    let e = TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), other.key_pem.as_bytes())
        .err()
        .unwrap();
    eprintln!("{e}");
    assert!(matches!(e, TlsError::Config(_)), "{e:?}");

    let e = TlsClientConfig::from_ca_pem_file(&missing).err().unwrap();
    assert!(e.to_string().contains("CA certificates"), "{e}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = TlsClientConfig::from_ca_pem_file(&empty).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("no CA certificates found in {}", empty.display())
    );
    assert!(TlsClientConfig::from_ca_pem_file(&ca).is_ok());

    // Corrupt base64 inside the markers.
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = TlsClientConfig::from_ca_pem_file(&bad).err().unwrap();
    eprintln!("{e}");
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");

    let e: std::io::Error = TlsError::ServerName("bad name".into()).into();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

/// After the handshake, the peer sends a record that does not decrypt: the
/// session dies with a transport error that says TLS and why; no panic, no hang.
#[test]
fn a_corrupt_record_kills_the_session_with_a_tls_error() {
    use std::io::Write as _;
    let pki = Pki::new();
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let client_cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A blocking rustls client in a thread of its own: handshake, then garbage.
    let peer = std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let name = "localhost".try_into().unwrap();
        let conn = rustls::ClientConnection::new(client_cfg.rustls().clone(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        // An application-data record of 32 bytes that no key made.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend_from_slice(&[0xAB; 32]);
        tls.sock.write_all(&record).unwrap();
        // Hold the socket until the server has seen it.
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    run_bounded(move || async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = TlsStream::accept(tcp, &server_cfg).await.unwrap();
        let session = Session::server(tls, config());
        let end = session.wait().await;
        eprintln!("{:?}", end.local);
        match &end.local {
            muxado::Error::Transport(msg) => {
                assert!(msg.contains("TLS"), "{msg}");
            }
            other => panic!("expected a TLS transport error, got {other:?}"),
        }
    });
    peer.join().unwrap();
}
