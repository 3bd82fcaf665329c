//! Interop with ngrok's `muxado` crate over transports other than plain TCP:
//! TLS (ours: rustls on the ring; theirs: tokio-rustls) and Unix domain
//! sockets (ours on the ring; theirs tokio's `UnixStream`). Our session on an
//! engine core in one thread, theirs on a tokio runtime in another. Both
//! sides open streams at once; each stream carries a pattern that the echoing
//! side checks byte by byte, echoes and half-closes, and that the opener
//! checks again. Both TLS roles and both muxado roles.

mod common;
mod transport_util;

use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{echo_checked, read_pattern, write_pattern, Rng};
use muxado::engine::{
    self,
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};
use muxado::transport::{rustls, TlsClientConfig, TlsServerConfig, TlsStream, Transport};
use ngrok_muxado::{Accept as _, OpenClose as _, Session as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Barrier, Mutex};
use transport_util::{Pki, TempDir};

const STREAMS: u64 = 16;
const MAX_LEN: u64 = 1 << 20;
const WINDOW: usize = 256 * 1024;

/// Which side plays the server (listens, TLS server, muxado server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OurRole {
    Client,
    Server,
}

/// How the two sides are connected.
#[derive(Clone)]
enum Wire {
    Tls(Arc<Pki>),
    /// A socket file in a temp dir.
    Unix(Arc<TempDir>),
}

fn sizes(seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let mut v = vec![0, 1, 65_536, 262_145];
    v.extend((4..STREAMS).map(|_| rng.range(1, MAX_LEN)));
    v
}

/// The opener's part: the stream's index (8 bytes), then `size` pattern bytes
/// and FIN, while it reads the echo back and checks every byte and the length.
async fn send_indexed<S: AsyncRead + AsyncWrite>(s: S, seed: u64, i: u64, size: u64, who: &str) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let ps = seed ^ i;
    let w = async {
        wr.write_all(&i.to_le_bytes()).await?;
        write_pattern(&mut wr, ps, 0, size).await?;
        wr.shutdown().await
    };
    let r = async {
        let mut hdr = [0u8; 8];
        rd.read_exact(&mut hdr).await?;
        assert_eq!(u64::from_le_bytes(hdr), i, "{who}: echoed index");
        read_pattern(&mut rd, ps, 0, None).await
    };
    let (w, r) = tokio::join!(w, r);
    w.unwrap_or_else(|e| panic!("{who} writing {i}: {e}"));
    let n = r.unwrap_or_else(|e| panic!("{who} reading echo {i}: {e}"));
    assert_eq!(n, size, "{who}: echoed length of {i}");
}

/// The acceptor's part: reads the index, checks every byte of the pattern it
/// names as it echoes it, then FIN; checks the length.
async fn echo_indexed<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, seed: u64, who: &str) {
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.expect("index");
    let i = u64::from_le_bytes(hdr);
    assert!(i < STREAMS, "{who}: index {i}");
    s.write_all(&hdr).await.expect("echo index");
    let n = echo_checked(&mut s, seed ^ i, 0)
        .await
        .unwrap_or_else(|e| panic!("{who} echoing {i}: {e}"));
    assert_eq!(n, sizes(seed)[i as usize], "{who}: received length of {i}");
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Their side's rustls configurations, built from the same PEM text.
fn their_server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

fn their_client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Where the server listens: our listener on the ring, or theirs.
enum Listen {
    OursTcp(TcpListener),
    TheirsTcp(std::net::TcpListener),
    OursUnix(UnixListener),
    TheirsUnix(std::os::unix::net::UnixListener),
}

fn socket_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("muxado.sock")
}

/// Our transport, connected and (for TLS) handshaken.
async fn our_transport(
    wire: &Wire,
    role: OurRole,
    listen: Option<Listen>,
    addr: &str,
) -> Transport {
    match wire {
        Wire::Tls(pki) => {
            let tcp = match listen {
                Some(Listen::OursTcp(l)) => l.accept().await.expect("our accept").0,
                Some(_) => unreachable!("our side listens on the ring"),
                None => TcpStream::connect(addr).await.expect("our connect"),
            };
            let tls = match role {
                OurRole::Server => {
                    let cfg =
                        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
                            .unwrap();
                    TlsStream::accept(tcp, &cfg).await
                }
                OurRole::Client => {
                    let cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap();
                    TlsStream::connect(tcp, &cfg, "localhost").await
                }
            };
            tls.expect("our TLS handshake").into()
        }
        Wire::Unix(dir) => match listen {
            Some(Listen::OursUnix(l)) => l.accept().await.expect("our accept").into(),
            Some(_) => unreachable!("our side listens on the ring"),
            None => UnixStream::connect(socket_path(dir))
                .await
                .expect("our connect")
                .into(),
        },
    }
}

type Boxed = Box<dyn tokio_io::Io>;

mod tokio_io {
    pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}
}

/// Their transport, connected and (for TLS) handshaken.
async fn their_transport(wire: &Wire, role: OurRole, listen: Option<Listen>, addr: &str) -> Boxed {
    match wire {
        Wire::Tls(pki) => {
            let tcp = match listen {
                Some(Listen::TheirsTcp(l)) => {
                    tokio::net::TcpListener::from_std(l)
                        .unwrap()
                        .accept()
                        .await
                        .expect("their accept")
                        .0
                }
                Some(_) => unreachable!("their side listens with tokio"),
                None => tokio::net::TcpStream::connect(addr)
                    .await
                    .expect("their connect"),
            };
            tcp.set_nodelay(true).unwrap();
            match role {
                // We are the client: they serve TLS.
                OurRole::Client => Box::new(
                    tokio_rustls::TlsAcceptor::from(their_server_config(pki))
                        .accept(tcp)
                        .await
                        .expect("their TLS accept"),
                ),
                OurRole::Server => Box::new(
                    tokio_rustls::TlsConnector::from(their_client_config(pki))
                        .connect("localhost".try_into().unwrap(), tcp)
                        .await
                        .expect("their TLS connect"),
                ),
            }
        }
        Wire::Unix(dir) => match listen {
            Some(Listen::TheirsUnix(l)) => Box::new(
                tokio::net::UnixListener::from_std(l)
                    .unwrap()
                    .accept()
                    .await
                    .expect("their accept")
                    .0,
            ),
            Some(_) => unreachable!("their side listens with tokio"),
            None => Box::new(
                tokio::net::UnixStream::connect(socket_path(dir))
                    .await
                    .expect("their connect"),
            ),
        },
    }
}

/// The server side's listener, and the address the client connects to.
fn listen(wire: &Wire, role: OurRole) -> (Listen, String) {
    match (wire, role) {
        (Wire::Tls(_), OurRole::Server) => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap().to_string();
            (Listen::OursTcp(l), a)
        }
        (Wire::Tls(_), OurRole::Client) => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let a = l.local_addr().unwrap().to_string();
            (Listen::TheirsTcp(l), a)
        }
        (Wire::Unix(dir), OurRole::Server) => {
            let l = UnixListener::bind(socket_path(dir)).unwrap();
            (Listen::OursUnix(l), String::new())
        }
        (Wire::Unix(dir), OurRole::Client) => {
            let l = std::os::unix::net::UnixListener::bind(socket_path(dir)).unwrap();
            l.set_nonblocking(true).unwrap();
            (Listen::TheirsUnix(l), String::new())
        }
    }
}

fn run(wire: Wire, role: OurRole) {
    let start = Instant::now();
    let seed = common::seed() ^ role as u64;
    let barrier = Arc::new(Barrier::new(2));
    let (l, addr) = listen(&wire, role);
    let (mut our_listen, mut their_listen) = (None, None);
    match role {
        OurRole::Server => our_listen = Some(l),
        OurRole::Client => their_listen = Some(l),
    }
    let (tx, rx) = mpsc::channel::<(&'static str, thread::Result<()>)>();

    let (w, b, a, txo) = (wire.clone(), barrier.clone(), addr.clone(), tx.clone());
    thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine::block_on(async move {
                let t = our_transport(&w, role, our_listen, &a).await;
                let config = muxado::Config::default().with_max_window(WINDOW as u32);
                let session = match role {
                    OurRole::Client => muxado::Session::client(t, config),
                    OurRole::Server => muxado::Session::server(t, config),
                };
                // Echo what they open.
                let s2 = session.clone();
                let echo = engine::spawn(async move {
                    let mut tasks = Vec::new();
                    for _ in 0..STREAMS {
                        let s = s2.accept().await.expect("ours: accept");
                        tasks.push(engine::spawn(echo_indexed(s, seed ^ 0xEE, "ours")));
                    }
                    for t in tasks {
                        t.await;
                    }
                });
                // Open our own and check their echo.
                let mut tasks = Vec::new();
                for (i, size) in sizes(seed).into_iter().enumerate() {
                    let s = session.open().expect("ours: open");
                    tasks.push(engine::spawn(send_indexed(s, seed, i as u64, size, "ours")));
                }
                for t in tasks {
                    t.await;
                }
                echo.await;
                b.wait().await;
                session.close().expect("ours: close");
                let end = session.wait().await;
                assert_eq!(end.local, muxado::Error::SessionClosed);
            })
            .expect("io_uring engine available")
        }));
        let _ = txo.send(("ours", r));
    });

    let (w, b) = (wire, barrier);
    thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            rt.block_on(local.run_until(async move {
                let t = their_transport(&w, role, their_listen, &addr).await;
                let builder = ngrok_muxado::SessionBuilder::new(t).window_size(WINDOW);
                let builder = match role {
                    OurRole::Client => builder.server(),
                    OurRole::Server => builder.client(),
                };
                let (mut open, accept) = builder.start().split();
                let accept = Rc::new(Mutex::new(accept));
                let acc = accept.clone();
                let echo = tokio::task::spawn_local(async move {
                    let mut tasks = Vec::new();
                    for _ in 0..STREAMS {
                        let s = acc.lock().await.accept().await.expect("theirs: accept");
                        tasks.push(tokio::task::spawn_local(echo_indexed(s, seed, "theirs")));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                let mut tasks = Vec::new();
                for (i, size) in sizes(seed ^ 0xEE).into_iter().enumerate() {
                    let st = open.open().await.expect("theirs: open");
                    tasks.push(tokio::task::spawn_local(send_indexed(
                        st,
                        seed ^ 0xEE,
                        i as u64,
                        size,
                        "theirs",
                    )));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                echo.await.unwrap();
                b.wait().await;
                // Our close ends their session: accept returns None.
                let ended = tokio::time::timeout(Duration::from_secs(10), async {
                    accept.lock().await.accept().await
                })
                .await
                .expect("theirs: the session ends after our close");
                assert!(ended.is_none());
            }));
            drop(local);
            rt.shutdown_timeout(Duration::from_secs(1));
        }));
        let _ = tx.send(("ngrok", r));
    });

    let deadline = start + transport_util::TEST_TIMEOUT;
    let mut pending = vec!["ours", "ngrok"];
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((side, Ok(()))) => pending.retain(|s| *s != side),
            Ok((side, Err(panic))) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{side} side failed: {msg}");
            }
            Err(_) => panic!("timed out (a hang); still running: {pending:?}"),
        }
    }
    eprintln!("{role:?} done in {:?}", start.elapsed());
}

#[test]
fn ngrok_over_tls_our_client() {
    run(Wire::Tls(Arc::new(Pki::new())), OurRole::Client);
}

#[test]
fn ngrok_over_tls_our_server() {
    run(Wire::Tls(Arc::new(Pki::new())), OurRole::Server);
}

#[test]
fn ngrok_over_unix_our_client() {
    run(
        Wire::Unix(Arc::new(TempDir::new("interop"))),
        OurRole::Client,
    );
}

#[test]
fn ngrok_over_unix_our_server() {
    run(
        Wire::Unix(Arc::new(TempDir::new("interop"))),
        OurRole::Server,
    );
}
