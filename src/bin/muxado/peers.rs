//! The peer systems on tokio: `tcp-tokio`, `ngrok-muxado` (ngrok's crate),
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
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::{select, Either};
use ngrok_muxado::{Accept as _, OpenClose as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::bench::{Case, Placement, System};
use crate::serve::Mode;
use crate::workload::{self, BenchStream, Client, Measurement, Progress};

/// Streams per session the peers allow (their defaults are 512).
const STREAM_LIMIT: usize = 4096;
/// Accept queue of ngrok's sessions (default 64; a full queue blocks the reader).
const ACCEPT_QUEUE: usize = 1024;

fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_connection_receive_window(Some(STREAM_LIMIT * 256 * 1024));
    cfg.set_max_num_streams(STREAM_LIMIT);
    cfg
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

pub struct TcpTokioClient {
    addr: SocketAddr,
}

impl Client for TcpTokioClient {
    type Stream = Tok<tokio::net::TcpStream>;

    async fn connect(addr: SocketAddr, _streams: usize) -> io::Result<Self> {
        Ok(TcpTokioClient { addr })
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

    async fn connect(addr: SocketAddr, _streams: usize) -> io::Result<Self> {
        use ngrok_muxado::Session as _;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let session = ngrok_muxado::SessionBuilder::new(tcp)
            .client()
            .stream_limit(STREAM_LIMIT)
            .accept_queue_size(ACCEPT_QUEUE)
            .start();
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

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await
    }
}

type YamuxStream = tokio_util::compat::Compat<yamux::Stream>;
type OpenRequest = oneshot::Sender<yamux::Result<yamux::Stream>>;

/// rust-yamux 0.13 has no control handle: one task owns the connection,
/// drives it and opens streams on request.
pub struct YamuxClient {
    requests: mpsc::UnboundedSender<OpenRequest>,
}

impl Client for YamuxClient {
    type Stream = Tok<YamuxStream>;

    async fn connect(addr: SocketAddr, _streams: usize) -> io::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut conn = yamux::Connection::new(tcp.compat(), yamux_config(), yamux::Mode::Client);
        let (tx, mut rx) = mpsc::unbounded_channel::<OpenRequest>();
        tokio::spawn(async move {
            let mut waiting: Option<OpenRequest> = None;
            poll_fn(|cx| loop {
                if waiting.is_none() {
                    if let Poll::Ready(r) = rx.poll_recv(cx) {
                        match r {
                            Some(req) => waiting = Some(req),
                            None => return Poll::Ready(()),
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

    async fn connect(addr: SocketAddr, _streams: usize) -> io::Result<Self> {
        Ok(TokioUringClient { addr })
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

/// echo/sink over one tokio stream.
async fn serve_tokio_stream<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mode: Mode) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if mode == Mode::Echo
                    && (s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err())
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    if mode == Mode::Sink && s.write_all(&total.to_be_bytes()).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
}

async fn tcp_tokio_server(listener: tokio::net::TcpListener, mode: Mode) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_tokio_stream(tcp, mode));
    }
}

/// ngrok's muxado crate, server role: echo or sink every stream.
pub async fn ngrok_server(listener: tokio::net::TcpListener, mode: Mode) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut session = ngrok_muxado::SessionBuilder::new(tcp)
                .server()
                .stream_limit(STREAM_LIMIT)
                .accept_queue_size(ACCEPT_QUEUE)
                .start();
            while let Some(stream) = session.accept().await {
                tokio::spawn(serve_tokio_stream(stream, mode));
            }
        });
    }
}

async fn yamux_server(listener: tokio::net::TcpListener, mode: Mode) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut conn =
                yamux::Connection::new(tcp.compat(), yamux_config(), yamux::Mode::Server);
            while let Some(Ok(stream)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                tokio::spawn(serve_tokio_stream(stream.compat(), mode));
            }
        });
    }
}

async fn tokio_uring_server(listener: tokio_uring::net::TcpListener, mode: Mode) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio_uring::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut total = 0u64;
            loop {
                buf.clear();
                let (r, b) = tcp.read(buf).await;
                buf = b;
                match r {
                    Ok(0) => break,
                    Ok(n) => {
                        total += n as u64;
                        if mode == Mode::Echo {
                            let (r, b) = tcp.write_all(buf).await;
                            buf = b;
                            if r.is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
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

/// Pins the calling thread to `cpu` (a warning if it cannot).
pub fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it and reports errors.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !ok {
        eprintln!(
            "muxado bench: could not pin a thread to CPU {cpu}: {}",
            io::Error::last_os_error()
        );
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

fn server_future(system: System, listener: std::net::TcpListener, mode: Mode) -> LocalFuture<()> {
    Box::pin(async move {
        if system == System::TcpTokioUring {
            tokio_uring_server(tokio_uring::net::TcpListener::from_std(listener), mode).await;
            return;
        }
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        match system {
            System::NgrokMuxado => ngrok_server(listener, mode).await,
            System::Yamux => yamux_server(listener, mode).await,
            _ => tcp_tokio_server(listener, mode).await,
        }
    })
}

fn client_future(
    system: System,
    addr: SocketAddr,
    case: Case,
    payload: &'static [u8],
    duration: Duration,
    progress: Arc<Progress>,
) -> LocalFuture<Result<Measurement, String>> {
    Box::pin(async move {
        let p = &progress;
        match system {
            System::NgrokMuxado => {
                workload::drive::<NgrokClient>(addr, &case, payload, duration, p).await
            }
            System::Yamux => {
                workload::drive::<YamuxClient>(addr, &case, payload, duration, p).await
            }
            System::TcpTokioUring => {
                workload::drive::<TokioUringClient>(addr, &case, payload, duration, p).await
            }
            _ => workload::drive::<TcpTokioClient>(addr, &case, payload, duration, p).await,
        }
    })
}

fn bind() -> Result<(std::net::TcpListener, SocketAddr), String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    Ok((l, addr))
}

/// Runs one case of a tokio-based system.
pub fn run_case(
    system: System,
    case: Case,
    placement: Placement,
    payload: &'static [u8],
    duration: Duration,
    progress: Arc<Progress>,
) -> Result<Measurement, String> {
    let mode = case.scenario.server_mode();
    let (listener, addr) = bind()?;
    match placement {
        Placement::Shared => std::thread::scope(|s| {
            s.spawn(move || {
                pin_to(0);
                block_on(system, move || {
                    Box::pin(async move {
                        let server = server_future(system, listener, mode);
                        let client = client_future(system, addr, case, payload, duration, progress);
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
                pin_to(1);
                block_on(system, move || {
                    Box::pin(async move {
                        let _ = select(server_future(system, listener, mode), stop_rx).await;
                    })
                })
            });
            let client = std::thread::spawn(move || {
                pin_to(0);
                block_on(system, move || {
                    client_future(system, addr, case, payload, duration, progress)
                })
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

/// The client half of `system` against a server elsewhere, on this thread.
pub fn run_remote(
    system: System,
    addr: SocketAddr,
    case: Case,
    payload: &'static [u8],
    duration: Duration,
    progress: Arc<Progress>,
) -> Result<Measurement, String> {
    block_on(system, move || {
        client_future(system, addr, case, payload, duration, progress)
    })
}
