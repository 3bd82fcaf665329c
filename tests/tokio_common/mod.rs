//! Harness for the tokio driver's tests: one session of the tokio driver
//! (`muxado::tokio`) against a peer — ngrok's crate, our io_uring engine
//! driver, or the tokio driver itself — over loopback TCP, a Unix socket in a
//! temp dir, or TLS (rustls, with a certificate made at run time by rcgen).
//!
//! Each side runs in its own thread: the tokio driver and ngrok's crate on a
//! two-worker tokio runtime, the engine on an engine core. Test bodies are
//! written once, generic over [`Side`], and run with either side opening.

#![allow(dead_code)] // not every test binary uses every helper

pub mod bodies;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use muxado::engine::{self, net};
use muxado::ErrorCode;
use ngrok_muxado::{Accept as _, OpenClose as _, Session as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Barrier, Mutex};

use crate::common::{Impl, LocalBoxFuture, Peer, TEST_TIMEOUT, WINDOW};

/// Which implementation runs a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `muxado::tokio::Session`, the driver under test.
    Tokio,
    /// ngrok's `muxado` crate.
    Ngrok,
    /// `muxado::Session` on the io_uring engine (TCP only).
    Engine,
}

/// What carries the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
    Tls,
}

/// Config of our sessions (both drivers): 1,000 streams may be opened faster
/// than they are accepted.
pub fn our_config() -> muxado::Config {
    muxado::Config::default()
        .with_max_window(WINDOW as u32)
        .with_accept_backlog(2048)
        .with_max_streams(4096)
}

/// A side of a session as the test bodies see it: the common [`Peer`] plus
/// what these tests do to sessions and streams.
pub trait Side: Peer {
    /// Resets `s` with `code`; false if this implementation cannot (ngrok's
    /// streams have no reset).
    fn reset(&self, s: &mut Self::Stream, code: ErrorCode) -> bool;
    /// Kills the session from this side (GOAWAY, then the transport closes).
    fn kill(&self) -> LocalBoxFuture<'_, ()>;
    /// Waits for the session's end; a description of why, if this
    /// implementation says.
    fn ended(&self) -> LocalBoxFuture<'_, String>;
}

/// Any boxed transport for the tokio-based sides.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

// ---- the three sides -------------------------------------------------------------

#[derive(Clone)]
pub struct TokioSide {
    pub session: muxado::tokio::Session,
    barrier: Arc<Barrier>,
}

#[derive(Clone)]
pub struct EngineSide {
    pub session: muxado::Session,
    barrier: Arc<Barrier>,
}

#[derive(Clone)]
pub struct NgrokSide {
    pub open: ngrok_muxado::MuxadoOpen,
    pub accept: Rc<Mutex<ngrok_muxado::MuxadoAccept>>,
    barrier: Arc<Barrier>,
}

fn spawn_local<T: 'static>(f: impl Future<Output = T> + 'static) -> LocalBoxFuture<'static, T> {
    let h = tokio::task::spawn_local(f);
    Box::pin(async move {
        match h.await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task failed: {e}"),
        }
    })
}

fn sync(b: &Arc<Barrier>) -> LocalBoxFuture<'_, ()> {
    Box::pin(async move {
        b.wait().await;
    })
}

impl Peer for TokioSide {
    type Stream = muxado::tokio::Stream;
    fn which(&self) -> Impl {
        Impl::Ours
    }
    fn name(&self) -> &'static str {
        "tokio"
    }
    fn open(&self) -> LocalBoxFuture<'_, io::Result<Self::Stream>> {
        let r = self.session.open().map_err(io::Error::from);
        Box::pin(async move { r })
    }
    fn accept(&self) -> LocalBoxFuture<'_, Option<Self::Stream>> {
        Box::pin(async move { self.session.accept().await.ok() })
    }
    fn close_stream(&self, mut s: Self::Stream) {
        s.close().expect("closing a live stream");
    }
    fn spawn<T: 'static>(
        &self,
        f: impl Future<Output = T> + 'static,
    ) -> LocalBoxFuture<'static, T> {
        spawn_local(f)
    }
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
    fn sync(&self) -> LocalBoxFuture<'_, ()> {
        sync(&self.barrier)
    }
    fn barrier(&self) -> Arc<Barrier> {
        self.barrier.clone()
    }
}

impl Side for TokioSide {
    fn reset(&self, s: &mut Self::Stream, code: ErrorCode) -> bool {
        s.reset(code).expect("reset a live stream");
        true
    }
    fn kill(&self) -> LocalBoxFuture<'_, ()> {
        let r = self.session.close();
        Box::pin(async move { r.expect("close a live session") })
    }
    fn ended(&self) -> LocalBoxFuture<'_, String> {
        Box::pin(async move { format!("{:?}", self.session.wait().await) })
    }
}

impl Peer for EngineSide {
    type Stream = muxado::Stream;
    fn which(&self) -> Impl {
        Impl::Ours
    }
    fn name(&self) -> &'static str {
        "engine"
    }
    fn open(&self) -> LocalBoxFuture<'_, io::Result<Self::Stream>> {
        let r = self.session.open().map_err(io::Error::from);
        Box::pin(async move { r })
    }
    fn accept(&self) -> LocalBoxFuture<'_, Option<Self::Stream>> {
        Box::pin(async move { self.session.accept().await.ok() })
    }
    fn close_stream(&self, mut s: Self::Stream) {
        s.close().expect("closing a live stream");
    }
    fn spawn<T: 'static>(
        &self,
        f: impl Future<Output = T> + 'static,
    ) -> LocalBoxFuture<'static, T> {
        Box::pin(engine::spawn(f))
    }
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(engine::sleep(d))
    }
    fn sync(&self) -> LocalBoxFuture<'_, ()> {
        sync(&self.barrier)
    }
    fn barrier(&self) -> Arc<Barrier> {
        self.barrier.clone()
    }
}

impl Side for EngineSide {
    fn reset(&self, s: &mut Self::Stream, code: ErrorCode) -> bool {
        s.reset(code).expect("reset a live stream");
        true
    }
    fn kill(&self) -> LocalBoxFuture<'_, ()> {
        let r = self.session.close();
        Box::pin(async move { r.expect("close a live session") })
    }
    fn ended(&self) -> LocalBoxFuture<'_, String> {
        Box::pin(async move { format!("{:?}", self.session.wait().await) })
    }
}

impl Peer for NgrokSide {
    type Stream = ngrok_muxado::Stream;
    fn which(&self) -> Impl {
        Impl::Theirs
    }
    fn open(&self) -> LocalBoxFuture<'_, io::Result<Self::Stream>> {
        let mut open = self.open.clone();
        Box::pin(async move { open.open().await.map_err(io::Error::other) })
    }
    fn accept(&self) -> LocalBoxFuture<'_, Option<Self::Stream>> {
        Box::pin(async move { self.accept.lock().await.accept().await })
    }
    fn close_stream(&self, s: Self::Stream) {
        drop(s);
    }
    fn spawn<T: 'static>(
        &self,
        f: impl Future<Output = T> + 'static,
    ) -> LocalBoxFuture<'static, T> {
        spawn_local(f)
    }
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
    fn sync(&self) -> LocalBoxFuture<'_, ()> {
        sync(&self.barrier)
    }
    fn barrier(&self) -> Arc<Barrier> {
        self.barrier.clone()
    }
}

impl Side for NgrokSide {
    fn reset(&self, _s: &mut Self::Stream, _code: ErrorCode) -> bool {
        false
    }
    fn kill(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(async move {
            self.open
                .clone()
                .close(ngrok_muxado::Error::None, "killed by the test".into())
                .await
                .expect("ngrok close");
        })
    }
    fn ended(&self) -> LocalBoxFuture<'_, String> {
        // ngrok's accept ends (None) once its session is dead.
        Box::pin(async move {
            let mut a = self.accept.lock().await;
            while let Some(s) = a.accept().await {
                drop(s);
            }
            "ngrok session ended".to_string()
        })
    }
}

// ---- test bodies -----------------------------------------------------------------

/// A test body written once for every implementation.
pub trait Body: Clone + Send + 'static {
    fn opener<P: Side>(self, p: P) -> impl Future<Output = ()>;
    fn acceptor<P: Side>(self, p: P) -> impl Future<Output = ()>;
}

// ---- transports ------------------------------------------------------------------

/// A self-signed certificate for "localhost", made at run time.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl Tls {
    pub fn new() -> Tls {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        // rustls' default provider, as the library's own configurations.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("trust the certificate");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        }
    }

    pub async fn accept(&self, tcp: tokio::net::TcpStream) -> io::Result<BoxIo> {
        Ok(Box::new(self.acceptor.accept(tcp).await?))
    }

    pub async fn connect(&self, tcp: tokio::net::TcpStream) -> io::Result<BoxIo> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Ok(Box::new(self.connector.connect(name, tcp).await?))
    }
}

/// A fresh socket path in the temp dir; the file is removed on drop.
pub struct SocketPath(pub PathBuf);

impl SocketPath {
    pub fn new() -> SocketPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "muxado-tokio-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&p);
        SocketPath(p)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How one side reaches the other.
enum Endpoint {
    TcpListen(std::net::TcpListener),
    TcpConnect(std::net::SocketAddr),
    EngineListen(net::TcpListener),
    UnixListen(std::os::unix::net::UnixListener),
    UnixConnect(PathBuf),
}

impl Endpoint {
    /// The transport of a tokio-based side.
    async fn tokio_io(self, tls: Option<Arc<Tls>>) -> BoxIo {
        match self {
            Endpoint::TcpListen(l) => {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                let tcp = l.accept().await.expect("accept").0;
                tcp.set_nodelay(true).unwrap();
                match tls {
                    Some(t) => t.accept(tcp).await.expect("TLS accept"),
                    None => Box::new(tcp),
                }
            }
            Endpoint::TcpConnect(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).unwrap();
                match tls {
                    Some(t) => t.connect(tcp).await.expect("TLS connect"),
                    None => Box::new(tcp),
                }
            }
            Endpoint::UnixListen(l) => {
                let l = tokio::net::UnixListener::from_std(l).unwrap();
                Box::new(l.accept().await.expect("unix accept").0)
            }
            Endpoint::UnixConnect(p) => Box::new(
                tokio::net::UnixStream::connect(p)
                    .await
                    .expect("unix connect"),
            ),
            Endpoint::EngineListen(_) => unreachable!("engine listener on a tokio side"),
        }
    }

    async fn engine_io(self) -> net::TcpStream {
        match self {
            Endpoint::EngineListen(l) => l.accept().await.expect("engine accept").0,
            Endpoint::TcpConnect(addr) => net::TcpStream::connect(addr).await.expect("connect"),
            _ => panic!("the engine side runs over TCP only"),
        }
    }
}

type SideResult = (&'static str, thread::Result<()>);

/// Runs `body` with `server` (the muxado server role, and the listener) and
/// `client` over `transport`; `server_opens` says which side opens the
/// streams. Fails the test if a side panics or both are not done within
/// [`TEST_TIMEOUT`].
pub fn run<B: Body>(server: Kind, client: Kind, transport: Transport, server_opens: bool, body: B) {
    assert!(
        !(transport != Transport::Tcp && (server == Kind::Engine || client == Kind::Engine)),
        "the engine driver has no Unix or TLS transport"
    );
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(2));
    let tls = (transport == Transport::Tls).then(|| Arc::new(Tls::new()));
    let mut _path = None;
    let (listen, connect) = match (transport, server) {
        (Transport::Unix, _) => {
            let p = SocketPath::new();
            let l = std::os::unix::net::UnixListener::bind(&p.0).expect("bind unix");
            l.set_nonblocking(true).unwrap();
            let c = Endpoint::UnixConnect(p.0.clone());
            _path = Some(p);
            (Endpoint::UnixListen(l), c)
        }
        (_, Kind::Engine) => {
            let l = net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let a = l.local_addr().unwrap();
            (Endpoint::EngineListen(l), Endpoint::TcpConnect(a))
        }
        _ => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.set_nonblocking(true).unwrap();
            let a = l.local_addr().unwrap();
            (Endpoint::TcpListen(l), Endpoint::TcpConnect(a))
        }
    };
    let (tx, rx) = mpsc::channel::<SideResult>();
    let names = [side_name(server, true), side_name(client, false)];
    for (kind, ep, is_server, name) in [
        (server, listen, true, names[0]),
        (client, connect, false, names[1]),
    ] {
        let opens = is_server == server_opens;
        let (body, barrier, tls, tx) = (body.clone(), barrier.clone(), tls.clone(), tx.clone());
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_side(kind, ep, tls, is_server, opens, body, barrier)
                }));
                let _ = tx.send((name, r));
            })
            .unwrap();
    }
    let deadline = start + TEST_TIMEOUT;
    let mut pending = names.to_vec();
    while !pending.is_empty() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((side, Ok(()))) => pending.retain(|s| *s != side),
            Ok((side, Err(panic))) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{side} side failed: {msg}");
            }
            Err(_) => {
                panic!("timed out after {TEST_TIMEOUT:?} (a hang); still running: {pending:?}")
            }
        }
    }
    eprintln!(
        "{server:?} server, {client:?} client over {transport:?}: done in {:?}",
        start.elapsed()
    );
}

fn side_name(kind: Kind, server: bool) -> &'static str {
    match (kind, server) {
        (Kind::Tokio, true) => "tokio-server",
        (Kind::Tokio, false) => "tokio-client",
        (Kind::Ngrok, true) => "ngrok-server",
        (Kind::Ngrok, false) => "ngrok-client",
        (Kind::Engine, true) => "engine-server",
        (Kind::Engine, false) => "engine-client",
    }
}

async fn play<B: Body, P: Side>(body: B, p: P, opens: bool) {
    if opens {
        body.opener(p).await
    } else {
        body.acceptor(p).await
    }
}

fn run_side<B: Body>(
    kind: Kind,
    ep: Endpoint,
    tls: Option<Arc<Tls>>,
    is_server: bool,
    opens: bool,
    body: B,
    barrier: Arc<Barrier>,
) {
    if kind == Kind::Engine {
        engine::block_on(async move {
            let tcp = ep.engine_io().await;
            let session = if is_server {
                muxado::Session::server(tcp, our_config())
            } else {
                muxado::Session::client(tcp, our_config())
            };
            play(body, EngineSide { session, barrier }, opens).await
        })
        .expect("io_uring engine available");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(async move {
        let io = ep.tokio_io(tls).await;
        match kind {
            Kind::Tokio => {
                let session = if is_server {
                    muxado::tokio::Session::server(io, our_config())
                } else {
                    muxado::tokio::Session::client(io, our_config())
                };
                play(body, TokioSide { session, barrier }, opens).await
            }
            Kind::Ngrok => {
                let builder = ngrok_muxado::SessionBuilder::new(io)
                    .window_size(WINDOW)
                    .stream_limit(4096)
                    .accept_queue_size(2048);
                let builder = if is_server {
                    builder.server()
                } else {
                    builder.client()
                };
                let (open, accept) = builder.start().split();
                let side = NgrokSide {
                    open,
                    accept: Rc::new(Mutex::new(accept)),
                    barrier,
                };
                play(body, side, opens).await
            }
            Kind::Engine => unreachable!(),
        }
    }));
    drop(local);
    rt.shutdown_timeout(Duration::from_secs(1));
}
