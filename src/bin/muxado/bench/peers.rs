//! The systems on tokio: `muxado-tokio` (our core on its tokio driver),
//! `tcp-tokio`, `ngrok-muxado` (ngrok's crate), the two muxados over
//! tokio-rustls (`muxado-tokio+tls`, `ngrok-muxado+tls`: the same session
//! settings as their plain rows, the same rustls configuration as
//! `muxado+tls`),
//! `yamux` (rust-yamux through tokio-util's compat layer) and
//! `tcp-tokio-uring` (the tokio-uring crate). Each has its own server with
//! the echo/sink semantics of `muxado serve`, and runs on current-thread
//! runtimes on threads pinned like the engine's cores (client CPU0, server
//! CPU1 for `split`; one thread on CPU0 for `shared`).

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures::future::{select, Either};
use ngrok_muxado::{Accept as _, OpenClose as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::loopback;
use super::workload::{self, BenchStream, Client};
use crate::model::{
    bench_config, CaseRun, Endpoint, Measurement, Mode, Placement, System, TAG_SINK,
};
use crate::serve::BufPool;
use crate::serve_tokio::{self, serve_stream, with_conn, ClientTls, Conn, Serving::AsPeers};

/// The TCP address of a system that runs over TCP only.
fn tcp_only(to: &Endpoint, system: System) -> io::Result<SocketAddr> {
    match to {
        Endpoint::Tcp(addr) => Ok(*addr),
        Endpoint::Unix(_) => Err(io::Error::other(format!(
            "{} runs over TCP only",
            system.name()
        ))),
    }
}

/// The connection of a muxado client on tokio: over TLS for the `+tls`
/// systems, with the bench's shared rustls configuration.
async fn tokio_connect(to: &Endpoint, run: &CaseRun) -> io::Result<Conn> {
    let tls = match (run.system.tls(), &run.tls) {
        (false, _) => None,
        (true, Some(t)) => Some(ClientTls {
            config: &t.client,
            server_name: &t.server_name,
        }),
        (true, None) => return Err(io::Error::other("no TLS settings for a +tls system")),
    };
    serve_tokio::connect(to, tls).await
}

/// Streams per session the peers allow (their defaults are 512).
const STREAM_LIMIT: usize = 4096;
/// Accept queue of ngrok's sessions (default 64; a full queue blocks the reader).
const ACCEPT_QUEUE: usize = 1024;

/// rust-yamux with no connection-wide receive window: its per-stream
/// auto-tuning may grow every stream's window (to 16 MiB) as ours does (a
/// bound of exactly 256 KiB per allowed stream would leave it no room).
fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_connection_receive_window(None);
    cfg.set_max_num_streams(STREAM_LIMIT);
    cfg
}

/// ngrok's crate does not auto-tune: its fixed window is set to the size
/// ours grows to (`max_auto_window`, 4 MiB), not its 256 KiB default. Except
/// where that stalls it: with 64 bulk streams, windows of 2 MiB and more
/// stalled ngrok's sessions in every try here (1 MiB ran; its default
/// 256 KiB stalls too, now and then, in very short runs), so those cases
/// get 1 MiB.
///
/// Against a server elsewhere (`--connect`/`--unix`) it gets the protocol's
/// initial window, 256 KiB: ngrok's crate takes its own setting as the
/// peer's initial window too, which holds only when both ends are ngrok's
/// with the same setting; any other server (ours, Go's) would see it send
/// past the window and reset the stream with FLOW_CONTROL_ERROR.
fn ngrok_window(run: &CaseRun) -> usize {
    const PROTOCOL_INITIAL_WINDOW: usize = 256 * 1024;
    let ours = bench_config().max_auto_window as usize;
    if run.remote {
        PROTOCOL_INITIAL_WINDOW
    } else if run.case.scenario.is_bulk() && run.case.streams >= 64 {
        ours.min(1 << 20)
    } else {
        ours
    }
}

// ---------------------------------------------------------------------------------------------
// Streams over tokio's I/O traits.

/// Any tokio `AsyncRead + AsyncWrite` stream.
pub struct Tok<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> BenchStream for Tok<S> {
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.0.write_all(payload).await?;
        self.0.flush().await
    }

    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

/// Our tokio driver's stream: like [`Tok`], but the bulk payload goes by
/// reference (`write_all_bytes`).
pub struct MuxTok(muxado::tokio::Stream);

impl BenchStream for MuxTok {
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(&mut self.0, payload).await?;
        AsyncWriteExt::flush(&mut self.0).await
    }

    /// By reference: a `Bytes` of the static payload (no allocation, no
    /// copy), which the driver writes vectored beside the frame headers.
    async fn send_bulk(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.0
            .write_all_bytes(bytes::Bytes::from_static(payload))
            .await
            .map_err(io::Error::from)
    }

    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        AsyncReadExt::read(&mut self.0, buf).await
    }

    async fn finish(&mut self) -> io::Result<()> {
        AsyncWriteExt::shutdown(&mut self.0).await
    }
}

pub struct TcpTokioClient {
    addr: SocketAddr,
}

impl Client for TcpTokioClient {
    type Stream = Tok<tokio::net::TcpStream>;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        Ok(TcpTokioClient {
            addr: tcp_only(to, run.system)?,
        })
    }

    async fn open(&self) -> io::Result<Self::Stream> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Tok(tcp))
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

pub struct NgrokClient {
    open: ngrok_muxado::MuxadoOpen,
    _accept: ngrok_muxado::MuxadoAccept,
}

impl Client for NgrokClient {
    type Stream = Tok<ngrok_muxado::Stream>;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        use ngrok_muxado::Session as _;
        let conn = tokio_connect(to, run).await?;
        let session = with_conn!(conn, io => ngrok_muxado::SessionBuilder::new(io)
            .client()
            .window_size(ngrok_window(run))
            .stream_limit(STREAM_LIMIT)
            .accept_queue_size(ACCEPT_QUEUE)
            .start());
        let (open, accept) = session.split();
        Ok(NgrokClient {
            open,
            _accept: accept,
        })
    }

    async fn open(&self) -> io::Result<Self::Stream> {
        let mut open = self.open.clone();
        open.open().await.map(Tok).map_err(io::Error::other)
    }

    async fn close(mut self) {
        let _ = self
            .open
            .close(ngrok_muxado::Error::None, String::new())
            .await;
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

/// Our muxado core on its tokio driver, set up like the engine's `muxado`
/// system (the same [`bench_config`]: auto-tuned windows up to 4 MiB).
pub struct MuxadoTokioClient {
    session: muxado::tokio::Session,
}

impl Client for MuxadoTokioClient {
    type Stream = MuxTok;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        let conn = tokio_connect(to, run).await?;
        Ok(MuxadoTokioClient {
            session: with_conn!(conn, io => muxado::tokio::Session::client(io, bench_config())),
        })
    }

    async fn open(&self) -> io::Result<Self::Stream> {
        self.session.open().map(MuxTok).map_err(io::Error::from)
    }

    async fn close(self) {
        let _ = self.session.close();
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

/// `--heartbeat` on the tokio driver: the session wrapped as
/// Heartbeat(TypedSession(session)) with its heartbeat started, as the
/// engine's `muxado` client does; the peer's heartbeats are answered by an
/// accept loop; the workload's streams are typed streams of type 1.
pub struct MuxadoTokioHbClient {
    heartbeat: muxado::tokio::Heartbeat,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Client for MuxadoTokioHbClient {
    type Stream = MuxTok;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        use muxado::tokio::{Heartbeat, Session, TypedSession};
        let opts = run
            .heartbeat
            .ok_or_else(|| io::Error::other("heartbeat settings not set"))?;
        let conn = tokio_connect(to, run).await?;
        let peer = match to {
            Endpoint::Tcp(addr) => Some(*addr),
            Endpoint::Unix(_) => None,
        };
        let session = with_conn!(conn, io => Session::client(io, bench_config()));
        let heartbeat = Heartbeat::new(TypedSession::new(session), opts.config);
        let reporter = crate::serve::heartbeat_reporter(peer, opts);
        heartbeat.start(reporter).await.map_err(io::Error::from)?;
        let acceptor = heartbeat.clone();
        let accept_loop =
            tokio::spawn(async move { while acceptor.accept_typed().await.is_ok() {} });
        Ok(MuxadoTokioHbClient {
            heartbeat,
            accept_loop,
        })
    }

    async fn open(&self) -> io::Result<Self::Stream> {
        let stream = self
            .heartbeat
            .open_typed(WORKLOAD_TYPE)
            .await
            .map_err(io::Error::from)?;
        Ok(MuxTok(stream.into_stream()))
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

impl Drop for MuxadoTokioHbClient {
    fn drop(&mut self) {
        // The accept loop holds a clone of the heartbeat: stop it so that
        // the session closes with the client.
        self.accept_loop.abort();
        let _ = self.heartbeat.close();
    }
}

/// The stream type of the workload's streams under `--heartbeat` (as on the engine).
const WORKLOAD_TYPE: u32 = 1;

type YamuxStream = tokio_util::compat::Compat<yamux::Stream>;
type OpenRequest = oneshot::Sender<yamux::Result<yamux::Stream>>;

/// rust-yamux 0.13 has no control handle: one task owns the connection,
/// drives it and opens streams on request.
pub struct YamuxClient {
    requests: mpsc::UnboundedSender<OpenRequest>,
}

impl Client for YamuxClient {
    type Stream = Tok<YamuxStream>;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(tcp_only(to, run.system)?).await?;
        tcp.set_nodelay(true)?;
        let mut conn = yamux::Connection::new(tcp.compat(), yamux_config(), yamux::Mode::Client);
        let (tx, mut rx) = mpsc::unbounded_channel::<OpenRequest>();
        tokio::spawn(async move {
            let mut waiting: Option<OpenRequest> = None;
            let mut closing = false;
            poll_fn(|cx| loop {
                if closing {
                    // The client is gone: GOAWAY and close the connection.
                    return conn.poll_close(cx).map(|_| ());
                }
                if waiting.is_none() {
                    if let Poll::Ready(r) = rx.poll_recv(cx) {
                        match r {
                            Some(req) => waiting = Some(req),
                            None => {
                                closing = true;
                                continue;
                            }
                        }
                    }
                }
                if waiting.is_some() {
                    if let Poll::Ready(r) = conn.poll_new_outbound(cx) {
                        let _ = waiting.take().expect("checked").send(r);
                        continue;
                    }
                }
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(_unexpected))) => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
        });
        Ok(YamuxClient { requests: tx })
    }

    async fn open(&self) -> io::Result<Self::Stream> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .map_err(|_| io::Error::other("yamux connection ended"))?;
        let stream = rx
            .await
            .map_err(|_| io::Error::other("yamux connection ended"))?
            .map_err(io::Error::other)?;
        Ok(Tok(stream.compat()))
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

/// A plain TCP connection on tokio-uring (owned-buffer reads and writes).
pub struct TokioUringStream {
    tcp: Rc<tokio_uring::net::TcpStream>,
    buf: Option<Vec<u8>>,
    pending: Vec<u8>,
    off: usize,
}

pub struct TokioUringClient {
    addr: SocketAddr,
}

impl Client for TokioUringClient {
    type Stream = TokioUringStream;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        Ok(TokioUringClient {
            addr: tcp_only(to, run.system)?,
        })
    }

    async fn open(&self) -> io::Result<Self::Stream> {
        let tcp = tokio_uring::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(TokioUringStream {
            tcp: Rc::new(tcp),
            buf: Some(Vec::with_capacity(64 * 1024)),
            pending: Vec::new(),
            off: 0,
        })
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

impl BenchStream for TokioUringStream {
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.tcp.write_all(payload).await.0
    }

    async fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.off == self.pending.len() {
            let mut buf = self.buf.take().unwrap_or_default();
            buf.clear();
            if buf.capacity() == 0 {
                buf.reserve(64 * 1024);
            }
            let (r, buf) = self.tcp.read(buf).await;
            let n = r?;
            self.buf = Some(std::mem::replace(&mut self.pending, buf));
            self.off = 0;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = (self.pending.len() - self.off).min(out.len());
        out[..n].copy_from_slice(&self.pending[self.off..self.off + n]);
        self.off += n;
        Ok(n)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.tcp.shutdown(std::net::Shutdown::Write)
    }
}

// ---------------------------------------------------------------------------------------------
// Servers.

async fn tcp_tokio_server(listener: tokio::net::TcpListener, mode: Mode) {
    let pool = BufPool::default();
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_stream(tcp, mode, pool.clone()));
    }
}

/// ngrok's muxado crate, server role: echo or sink every stream; over TLS
/// (tokio-rustls) with `tls`, each handshake in the connection's task as in
/// our servers.
async fn ngrok_server(
    listener: tokio::net::TcpListener,
    mode: Mode,
    window: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let pool = BufPool::default();
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let (pool, tls) = (pool.clone(), tls.clone());
        tokio::spawn(async move {
            let conn = match tls {
                None => Conn::Tcp(tcp),
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(s) => Conn::TlsTcp(Box::new(s.into())),
                    Err(e) => {
                        tracing::warn!("ngrok-muxado+tls server: TLS handshake failed: {e}");
                        return;
                    }
                },
            };
            let mut session = with_conn!(conn, io => ngrok_muxado::SessionBuilder::new(io)
                .server()
                .window_size(window)
                .stream_limit(STREAM_LIMIT)
                .accept_queue_size(ACCEPT_QUEUE)
                .start());
            while let Some(stream) = session.accept().await {
                tokio::spawn(serve_stream(stream, mode, pool.clone()));
            }
        });
    }
}

async fn yamux_server(listener: tokio::net::TcpListener, mode: Mode) {
    let pool = BufPool::default();
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn =
                yamux::Connection::new(tcp.compat(), yamux_config(), yamux::Mode::Server);
            while let Some(Ok(stream)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                tokio::spawn(serve_stream(stream.compat(), mode, pool.clone()));
            }
        });
    }
}

async fn tokio_uring_server(listener: tokio_uring::net::TcpListener, mode: Mode) {
    let pool = BufPool::default();
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let pool = pool.clone();
        tokio_uring::spawn(async move {
            let mut pooled = pool.take(false);
            let mut buf = std::mem::take(&mut pooled.buf);
            let mut mode = mode;
            let mut total = 0u64;
            loop {
                buf.clear();
                let (r, b) = tcp.read(buf).await;
                buf = b;
                match r {
                    Ok(0) => break,
                    Ok(_) => {
                        if mode == Mode::Tagged {
                            mode = if buf[0] == TAG_SINK {
                                Mode::Sink
                            } else {
                                Mode::Echo
                            };
                            buf.remove(0);
                        }
                        total += buf.len() as u64;
                        if mode == Mode::Echo && !buf.is_empty() {
                            let (r, b) = tcp.write_all(buf).await;
                            buf = b;
                            if r.is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            pooled.buf = buf;
            if mode == Mode::Sink {
                let (r, _) = tcp.write_all(total.to_be_bytes().to_vec()).await;
                if r.is_err() {
                    return;
                }
            }
            let _ = tcp.shutdown(std::net::Shutdown::Write);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Threads and runtimes.

/// Pins the calling thread where engine core `core` would run, so that the
/// peers sit on the same CPUs as our systems (a warning if it cannot).
fn pin_like_core(core: usize) {
    if let Err(e) = muxado::engine::pin_like_core(core) {
        tracing::warn!("could not pin a bench thread like engine core {core}: {e}");
    }
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Runs `make()` on a fresh runtime of `system`'s kind on the calling thread.
fn block_on<T>(system: System, make: impl FnOnce() -> LocalFuture<T>) -> T {
    if system == System::TcpTokioUring {
        tokio_uring::start(make())
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(make())
    }
}

fn server_future(run: &CaseRun, listener: std::net::TcpListener) -> LocalFuture<()> {
    let (system, mode, window, hb) = (
        run.system,
        run.case.scenario.server_mode(),
        ngrok_window(run),
        run.heartbeat,
    );
    let tls = run
        .tls
        .as_ref()
        .and_then(|t| t.server.as_ref())
        .map(serve_tokio::acceptor);
    Box::pin(async move {
        if system == System::TcpTokioUring {
            tokio_uring_server(tokio_uring::net::TcpListener::from_std(listener), mode).await;
            return;
        }
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        match system.plain() {
            System::MuxadoTokio => {
                let listener = serve_tokio::Listener::Tcp(listener);
                serve_tokio::muxado_server(listener, tls, mode, bench_config(), hb, AsPeers).await
            }
            System::NgrokMuxado => ngrok_server(listener, mode, window, tls).await,
            System::Yamux => yamux_server(listener, mode).await,
            _ => tcp_tokio_server(listener, mode).await,
        }
    })
}

fn client_future(to: Endpoint, run: CaseRun) -> LocalFuture<Result<Measurement, String>> {
    Box::pin(async move {
        let to = &to;
        match run.system.plain() {
            System::MuxadoTokio if run.heartbeat.is_some() => {
                workload::drive::<MuxadoTokioHbClient>(to, &run).await
            }
            System::MuxadoTokio => workload::drive::<MuxadoTokioClient>(to, &run).await,
            System::NgrokMuxado => workload::drive::<NgrokClient>(to, &run).await,
            System::Yamux => workload::drive::<YamuxClient>(to, &run).await,
            System::TcpTokioUring => workload::drive::<TokioUringClient>(to, &run).await,
            _ => workload::drive::<TcpTokioClient>(to, &run).await,
        }
    })
}

/// The listeners of a local case ([`loopback::addresses`] of them, one
/// port, non-blocking for tokio) and the first one's address.
fn bind(run: &CaseRun) -> Result<(Vec<std::net::TcpListener>, SocketAddr), String> {
    let bind = |at: SocketAddr| {
        let l = std::net::TcpListener::bind(at)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    loopback::bind_all(loopback::addresses(run), bind, |l| l.local_addr())
        .map_err(|e| e.to_string())
}

/// A server on each listener, run together.
fn serve_all(run: &CaseRun, listeners: Vec<std::net::TcpListener>) -> LocalFuture<()> {
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| server_future(run, l))
        .collect();
    Box::pin(async move {
        futures::future::join_all(servers).await;
    })
}

/// Runs one case of a tokio-based system.
pub fn run_case(run: &CaseRun) -> Result<Measurement, String> {
    let system = run.system;
    let (listeners, addr) = bind(run)?;
    let server_run = run.clone();
    let run = run.clone();
    match run.placement {
        Placement::Shared => std::thread::scope(|s| {
            s.spawn(move || {
                pin_like_core(0);
                block_on(system, move || {
                    Box::pin(async move {
                        let server = serve_all(&server_run, listeners);
                        let client = client_future(Endpoint::Tcp(addr), run);
                        match select(client, server).await {
                            Either::Left((m, _)) => m,
                            Either::Right(_) => Err("the server stopped".into()),
                        }
                    })
                })
            })
            .join()
            .map_err(|_| "the bench thread panicked".to_string())?
        }),
        Placement::Split => {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let server = std::thread::spawn(move || {
                pin_like_core(1);
                block_on(system, move || {
                    Box::pin(async move {
                        let _ = select(serve_all(&server_run, listeners), stop_rx).await;
                    })
                })
            });
            let client = std::thread::spawn(move || {
                pin_like_core(0);
                block_on(system, move || client_future(Endpoint::Tcp(addr), run))
            });
            let m = client
                .join()
                .map_err(|_| "the client thread panicked".to_string())?;
            let _ = stop_tx.send(());
            server
                .join()
                .map_err(|_| "the server thread panicked".to_string())?;
            m
        }
    }
}

/// The client half of a tokio-based system against a server elsewhere, on
/// this thread.
pub fn run_remote(to: &Endpoint, run: &CaseRun) -> Result<Measurement, String> {
    let (to, run) = (to.clone(), run.clone());
    block_on(run.system, move || client_future(to, run))
}
