//! Our engine sessions over Unix domain stream sockets: a filesystem path, a
//! Linux abstract name, a socket pair, and TLS on top of a Unix socket. A
//! checksummed many-stream echo each way with half-closes; addresses and
//! errors that say what went wrong.

mod transport_util;

use muxado::engine::{
    self,
    net::{UnixAddr, UnixListener, UnixStream},
};
use muxado::transport::{TlsClientConfig, TlsServerConfig, TlsStream};
use muxado::{Config, Session};
use transport_util::*;

fn config() -> Config {
    Config::default().with_accept_backlog(1024)
}

/// An abstract name no other test (or process) uses.
fn abstract_name(tag: &str) -> Vec<u8> {
    format!(
        "muxado-test-{tag}-{}-{:x}",
        std::process::id(),
        mix(tag.len() as u64 ^ 0xAB)
    )
    .into_bytes()
}

#[test]
fn sessions_over_a_unix_path() {
    let dir = TempDir::new("unix");
    let path = dir.path().join("muxado.sock");
    run_bounded(move || async move {
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(listener.local_addr().unwrap(), UnixAddr::Path(path.clone()));
        let server = engine::spawn(async move { listener.accept().await.unwrap() });
        let client = UnixStream::connect(&path).await.unwrap();
        let server = server.await;
        assert_eq!(client.peer_addr().unwrap(), UnixAddr::Path(path.clone()));
        assert_eq!(client.local_addr().unwrap(), UnixAddr::Unnamed);
        let client = Session::client(client, config());
        let server = Session::server(server, config());
        assert_eq!(client.peer_addr(), None, "no IP address over a Unix socket");
        echo_both_ways(&client, &server, 0x1).await;
    });
}

#[test]
fn sessions_over_an_abstract_name() {
    let name = abstract_name("abstract");
    run_bounded(move || async move {
        let listener = UnixListener::bind_abstract(&name).unwrap();
        assert_eq!(
            listener.local_addr().unwrap(),
            UnixAddr::Abstract(name.clone())
        );
        // The name is taken while the listener lives.
        let e = UnixListener::bind_abstract(&name).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        let server = engine::spawn(async move { listener.accept().await.unwrap() });
        let client = UnixStream::connect_abstract(&name).await.unwrap();
        let server = server.await;
        // Muxado roles swapped relative to the socket roles.
        let muxado_server = Session::server(client, config());
        let muxado_client = Session::client(server, config());
        echo_both_ways(&muxado_client, &muxado_server, 0x2).await;
    });
}

#[test]
fn sessions_over_a_socket_pair() {
    run_bounded(|| async {
        let (a, b) = UnixStream::pair().unwrap();
        let client = Session::client(a, config());
        let server = Session::server(b, config());
        echo_both_ways(&client, &server, 0x3).await;
    });
}

#[test]
fn tls_over_a_unix_socket() {
    let pki = Pki::new();
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let client_cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    let name = abstract_name("tls");
    run_bounded(move || async move {
        let listener = UnixListener::bind_abstract(&name).unwrap();
        let server = engine::spawn(async move {
            let unix = listener.accept().await.unwrap();
            TlsStream::accept(unix, &server_cfg).await.unwrap()
        });
        let unix = UnixStream::connect_abstract(&name).await.unwrap();
        let client = TlsStream::connect(unix, &client_cfg, "localhost")
            .await
            .unwrap();
        let server = server.await;
        let client = Session::client(client, config());
        let server = Session::server(server, config());
        echo_both_ways(&client, &server, 0x4).await;
    });
}

#[test]
fn unix_errors_say_what_went_wrong() {
    let dir = TempDir::new("unix-err");
    let missing = dir.path().join("nobody.sock");
    let taken = dir.path().join("taken.sock");
    let too_long = dir.path().join("x".repeat(200));
    run_bounded(move || async move {
        let e = UnixStream::connect(&missing).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        let e = UnixStream::connect_abstract(abstract_name("nobody"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

        let _l = UnixListener::bind(&taken).unwrap();
        let e = UnixListener::bind(&taken).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");

        let e = UnixListener::bind(&too_long).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        eprintln!("{e}");
        assert!(e.to_string().contains("at most 107"), "{e}");
        let e = UnixListener::bind("").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let e = UnixListener::bind_abstract(vec![b'a'; 108]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        // 107 bytes is the longest abstract name.
        let l = UnixListener::bind_abstract(vec![b'z'; 107]).unwrap();
        assert_eq!(l.local_addr().unwrap(), UnixAddr::Abstract(vec![b'z'; 107]));
    });
}
