//! Sessions over the other transports leak no file descriptors, however they
//! end: TLS sessions closed cleanly or cut by the peer, TLS handshakes that
//! fail, Unix sessions (path and abstract name) and failed Unix connects. Descriptors in `/proc/self/fd` are counted before and after.
//!
//! One test in this binary, so no other test opens descriptors meanwhile.

mod transport_util;

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};
use muxado::transport::{TlsClientConfig, TlsServerConfig, TlsStream};
use muxado::{Config, Session};
use transport_util::*;

struct Tls {
    server: TlsServerConfig,
    client: TlsClientConfig,
    wrong: TlsClientConfig,
}

impl Tls {
    fn new() -> Tls {
        let pki = Pki::new();
        Tls {
            server: TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
                .unwrap(),
            client: TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap(),
            wrong: TlsClientConfig::from_ca_pem(Pki::new().ca_pem.as_bytes()).unwrap(),
        }
    }
}

/// Handshakes a TLS pair over loopback TCP with `client` trust.
async fn tls_pair(
    tls: &Tls,
    client: &TlsClientConfig,
) -> (
    Result<TlsStream, muxado::transport::TlsError>,
    Result<TlsStream, muxado::transport::TlsError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = tls.server.clone();
    let server = engine::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsStream::accept(tcp, &cfg).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let c = TlsStream::connect(tcp, client, "localhost").await;
    (c, server.await)
}

async fn tls_clean_close(tls: &Tls) {
    let (c, s) = tls_pair(tls, &tls.client).await;
    let client = Session::client(c.unwrap(), Config::default());
    let server = Session::server(s.unwrap(), Config::default());
    let echo = spawn_echo(server.clone());
    echo_many(&client, 10, 7, 100_000).await;
    client.close().unwrap();
    server.wait().await;
    echo.await;
}

/// The server closes its session mid-transfer and drops it; the client's stream fails.
async fn tls_peer_cut(tls: &Tls) {
    let (c, s) = tls_pair(tls, &tls.client).await;
    let client = Session::client(c.unwrap(), Config::default());
    let server = Session::server(s.unwrap(), Config::default());
    let mut st = client.open().unwrap();
    let writer = engine::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        loop {
            if st.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = server.accept().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < 1 << 20 {
        n += got.read(&mut buf).await.unwrap();
    }
    drop(got);
    server.close().unwrap();
    drop(server);
    writer.await;
    client.wait().await;
}

async fn tls_handshake_fails(tls: &Tls) {
    let (c, s) = tls_pair(tls, &tls.wrong).await;
    assert!(c.is_err() && s.is_err());
}

/// Unix sessions over a path and over an abstract name, closed cleanly; a
/// connect to nobody; a listener dropped with a connection never accepted.
async fn unix_sessions(dir: &std::path::Path, round: u32) {
    let path = dir.join(format!("s{round}.sock"));
    let name = format!("muxado-fds-{}-{round}", std::process::id());
    for abstract_name in [false, true] {
        let listener = if abstract_name {
            UnixListener::bind_abstract(&name).unwrap()
        } else {
            UnixListener::bind(&path).unwrap()
        };
        let server = engine::spawn(async move { listener.accept().await.unwrap() });
        let client = if abstract_name {
            UnixStream::connect_abstract(&name).await.unwrap()
        } else {
            UnixStream::connect(&path).await.unwrap()
        };
        let client = Session::client(client, Config::default());
        let server = Session::server(server.await, Config::default());
        let echo = spawn_echo(server.clone());
        echo_many(&client, 10, 9, 100_000).await;
        drop(client);
        server.wait().await;
        echo.await;
    }
    assert!(UnixStream::connect(dir.join("nobody.sock")).await.is_err());
    let l = UnixListener::bind_abstract(format!("{name}-unaccepted")).unwrap();
    let _c = UnixStream::connect_abstract(format!("{name}-unaccepted"))
        .await
        .unwrap();
    drop(l);
}

#[test]
fn sessions_close_every_descriptor_however_they_end() {
    // Warm up lazily opened process descriptors first.
    engine::block_on(async {}).unwrap();
    let tls = Tls::new();
    let dir = TempDir::new("fds");
    let path = dir.path().to_owned();
    let before = open_fds();
    thread_bounded(move || {
        engine::block_on(async move {
            for round in 0..3 {
                tls_clean_close(&tls).await;
                tls_peer_cut(&tls).await;
                tls_handshake_fails(&tls).await;
                unix_sessions(&path, round).await;
            }
        })
        .unwrap()
    });
    let after = open_fds();
    assert_eq!(before, after, "descriptors before and after");
}
