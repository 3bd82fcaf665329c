//! Harness for the interoperability tests against ngrok's `muxado` crate
//! (`ngrok-muxado`): one session of ours on an engine core in its own thread,
//! one of theirs on a tokio runtime in another, joined by loopback TCP.
//!
//! Test bodies are written once, generic over [`Peer`], and run with either
//! side in either part (opener or acceptor), so that each behaviour is checked
//! in both directions and in both roles (client/server).

#![allow(dead_code)] // not every test binary uses every helper

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream},
};
use ngrok_muxado::{Accept as _, OpenClose as _, Session as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Barrier, Mutex};

/// Every test fails instead of hanging once this much time has passed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-stream window: the default of both implementations, kept equal on
/// purpose (muxado does not negotiate it).
pub const WINDOW: usize = 256 * 1024;

pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The session role (stream-id parity) that OUR side takes; theirs takes the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OurRole {
    Client,
    Server,
}

/// Which implementation plays a part of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Theirs,
}

/// One side of a session, as the generic test bodies see it. Streams of both
/// implementations are `tokio::io::AsyncRead + AsyncWrite`.
pub trait Peer: Clone + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;

    fn which(&self) -> Impl;
    fn open(&self) -> LocalBoxFuture<'_, io::Result<Self::Stream>>;
    /// The next stream the other side opened; `None` once the session ended.
    fn accept(&self) -> LocalBoxFuture<'_, Option<Self::Stream>>;
    /// Full close of a stream (Go's `Close`): ours `Stream::close`, theirs drop
    /// (ngrok's streams have no close; dropping sends FIN and forgets the stream).
    fn close_stream(&self, s: Self::Stream);
    /// Spawns a task on this side's executor; the future resolves to its output.
    fn spawn<T: 'static>(&self, f: impl Future<Output = T> + 'static)
        -> LocalBoxFuture<'static, T>;
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()>;
    /// Rendezvous with the other side (a reusable two-party barrier).
    fn sync(&self) -> LocalBoxFuture<'_, ()>;
    /// The barrier behind [`Peer::sync`], for a body that drops its session handle.
    fn barrier(&self) -> Arc<Barrier>;

    fn as_ours(&self) -> Option<&Ours> {
        None
    }
    fn as_theirs(&self) -> Option<&Theirs> {
        None
    }

    fn name(&self) -> &'static str {
        match self.which() {
            Impl::Ours => "ours",
            Impl::Theirs => "ngrok",
        }
    }

    /// `f`, or `Err(TimedOut)` once `d` has passed.
    fn timeout<'a, T: 'a>(
        &self,
        d: Duration,
        f: impl Future<Output = T> + 'a,
    ) -> LocalBoxFuture<'a, Result<T, Elapsed>> {
        let mut f = Box::pin(f);
        let mut sleep = self.sleep(d);
        Box::pin(poll_fn(move |cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Elapsed(d))),
                Poll::Pending => Poll::Pending,
            }
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

/// Our side: a `muxado::Session` on the current engine core.
#[derive(Clone)]
pub struct Ours {
    pub session: muxado::Session,
    barrier: Arc<Barrier>,
}

impl Peer for Ours {
    type Stream = muxado::Stream;

    fn which(&self) -> Impl {
        Impl::Ours
    }
    fn as_ours(&self) -> Option<&Ours> {
        Some(self)
    }
    fn open(&self) -> LocalBoxFuture<'_, io::Result<muxado::Stream>> {
        let r = self.session.open().map_err(io::Error::from);
        Box::pin(async move { r })
    }
    fn accept(&self) -> LocalBoxFuture<'_, Option<muxado::Stream>> {
        Box::pin(async move { self.session.accept().await.ok() })
    }
    fn close_stream(&self, mut s: muxado::Stream) {
        s.close().expect("closing a live stream of ours");
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
        Box::pin(async move {
            self.barrier.wait().await;
        })
    }
    fn barrier(&self) -> Arc<Barrier> {
        self.barrier.clone()
    }
}

/// Their side: an ngrok `MuxadoSession`, split so that handles can be shared
/// by the tasks of a `LocalSet`.
#[derive(Clone)]
pub struct Theirs {
    pub open: ngrok_muxado::MuxadoOpen,
    pub accept: Rc<Mutex<ngrok_muxado::MuxadoAccept>>,
    barrier: Arc<Barrier>,
}

impl Theirs {
    /// ngrok's `close(error, msg)`: queues GOAWAY(error, msg) for its writer.
    pub async fn close(
        &self,
        error: ngrok_muxado::Error,
        msg: &str,
    ) -> Result<(), ngrok_muxado::Error> {
        self.open.clone().close(error, msg.to_string()).await
    }
}

impl Peer for Theirs {
    type Stream = ngrok_muxado::Stream;

    fn which(&self) -> Impl {
        Impl::Theirs
    }
    fn as_theirs(&self) -> Option<&Theirs> {
        Some(self)
    }
    fn open(&self) -> LocalBoxFuture<'_, io::Result<ngrok_muxado::Stream>> {
        let mut open = self.open.clone();
        Box::pin(async move { open.open().await.map_err(io::Error::other) })
    }
    fn accept(&self) -> LocalBoxFuture<'_, Option<ngrok_muxado::Stream>> {
        Box::pin(async move { self.accept.lock().await.accept().await })
    }
    fn close_stream(&self, s: ngrok_muxado::Stream) {
        drop(s);
    }
    fn spawn<T: 'static>(
        &self,
        f: impl Future<Output = T> + 'static,
    ) -> LocalBoxFuture<'static, T> {
        let h = tokio::task::spawn_local(f);
        Box::pin(async move {
            match h.await {
                Ok(v) => v,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("ngrok-side task failed: {e}"),
            }
        })
    }
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
    fn sync(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(async move {
            self.barrier.wait().await;
        })
    }
    fn barrier(&self) -> Arc<Barrier> {
        self.barrier.clone()
    }
}

/// Settings of one pair of sessions.
#[derive(Clone, Debug)]
pub struct PairConfig {
    pub ours: muxado::Config,
    pub their_stream_limit: usize,
    pub their_accept_queue: usize,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            ours: muxado::Config::default()
                .with_max_window(WINDOW as u32)
                // 1,000 streams may be opened faster than they are accepted.
                .with_accept_backlog(2048)
                .with_max_streams(4096),
            // ngrok's defaults (512 streams, accept queue 64) are too small for
            // the 1,000-stream test; over its stream limit ngrok kills the session.
            their_stream_limit: 4096,
            their_accept_queue: 2048,
        }
    }
}

type SideResult = (&'static str, thread::Result<()>);

/// Runs `ours` on an engine core and `theirs` on a tokio runtime, connected by
/// loopback TCP, with our session in `role`. Panics (fails the test) if a side
/// panics, or if both have not finished within [`TEST_TIMEOUT`].
pub fn run_pair<FO, RO, FT, RT>(role: OurRole, cfg: PairConfig, ours: FO, theirs: FT)
where
    FO: FnOnce(Ours) -> RO + Send + 'static,
    RO: Future<Output = ()>,
    FT: FnOnce(Theirs) -> RT + Send + 'static,
    RT: Future<Output = ()>,
{
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(2));
    let (tx, rx) = mpsc::channel::<SideResult>();

    // Whoever takes the server role also listens, so that both the TCP and the
    // muxado roles vary together with `role`.
    let (our_listener, their_listener, addr) = match role {
        OurRole::Server => {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind ours");
            let a = l.local_addr().unwrap();
            (Some(l), None, a)
        }
        OurRole::Client => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind theirs");
            l.set_nonblocking(true).unwrap();
            let a = l.local_addr().unwrap();
            (None, Some(l), a)
        }
    };

    let our_cfg = cfg.ours.clone();
    let b = barrier.clone();
    let txo = tx.clone();
    thread::Builder::new()
        .name("ours".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine::block_on(async move {
                    let tcp = match our_listener {
                        Some(l) => l.accept().await.expect("our accept").0,
                        None => TcpStream::connect(addr).await.expect("our connect"),
                    };
                    let session = match role {
                        OurRole::Client => muxado::Session::client(tcp, our_cfg),
                        OurRole::Server => muxado::Session::server(tcp, our_cfg),
                    };
                    ours(Ours {
                        session,
                        barrier: b,
                    })
                    .await
                })
                .expect("io_uring engine available")
            }));
            let _ = txo.send(("ours", r));
        })
        .unwrap();

    let b = barrier;
    thread::Builder::new()
        .name("ngrok".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                rt.block_on(local.run_until(async move {
                    let tcp = match their_listener {
                        Some(l) => {
                            let l = tokio::net::TcpListener::from_std(l).unwrap();
                            l.accept().await.expect("their accept").0
                        }
                        None => tokio::net::TcpStream::connect(addr)
                            .await
                            .expect("their connect"),
                    };
                    tcp.set_nodelay(true).unwrap();
                    let builder = ngrok_muxado::SessionBuilder::new(tcp)
                        .window_size(WINDOW)
                        .stream_limit(cfg.their_stream_limit)
                        .accept_queue_size(cfg.their_accept_queue);
                    let builder = match role {
                        OurRole::Client => builder.server(),
                        OurRole::Server => builder.client(),
                    };
                    let (open, accept) = builder.start().split();
                    theirs(Theirs {
                        open,
                        accept: Rc::new(Mutex::new(accept)),
                        barrier: b,
                    })
                    .await
                }));
                drop(local);
                rt.shutdown_timeout(Duration::from_secs(1));
            }));
            let _ = tx.send(("ngrok", r));
        })
        .unwrap();

    let deadline = start + TEST_TIMEOUT;
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
            Err(_) => {
                panic!("timed out after {TEST_TIMEOUT:?} (a hang); still running: {pending:?}")
            }
        }
    }
    eprintln!("pair ({role:?}) done in {:?}", start.elapsed());
}

/// A test body written once for both implementations: what the side that opens
/// the streams does, and what the side that accepts them does.
pub trait Scenario: Clone + Send + 'static {
    fn opener<P: Peer>(self, p: P) -> impl Future<Output = ()>;
    fn acceptor<P: Peer>(self, p: P) -> impl Future<Output = ()>;
}

/// Runs `s` with our session in `role` and `opener` opening the streams.
pub fn run_scenario<S: Scenario>(role: OurRole, opener: Impl, cfg: PairConfig, s: S) {
    let s2 = s.clone();
    match opener {
        Impl::Ours => run_pair(role, cfg, move |o| s.opener(o), move |t| s2.acceptor(t)),
        Impl::Theirs => run_pair(role, cfg, move |o| s.acceptor(o), move |t| s2.opener(t)),
    }
}

// ---- data ----------------------------------------------------------------------

/// SplitMix64: a small seeded PRNG for sizes and for the byte pattern.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The test seed: `MUXADO_INTEROP_SEED` if set, else a fixed one.
pub fn seed() -> u64 {
    std::env::var("MUXADO_INTEROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD_0001)
}

/// Fills `buf` with the pattern of `seed` from byte offset `pos`. Each byte
/// depends on (seed, absolute offset), so any loss, duplication, reordering or
/// cross-stream mix-up shows.
pub fn pattern(seed: u64, pos: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let p = pos + i as u64;
        let word = mix(seed ^ (p / 8).wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
        let off = (p % 8) as usize;
        let n = (8 - off).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[off..off + n]);
        i += n;
    }
}

/// Writes pattern bytes `start..end` of `seed`, in chunks of varying size (up to 64 KiB),
/// so that frames of many sizes go on the wire.
pub async fn write_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    start: u64,
    end: u64,
) -> io::Result<()> {
    let mut rng = Rng(seed ^ 0x00C0_FFEE);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(rng.range(1, buf.len() as u64)) as usize;
        pattern(seed, pos, &mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        pos += n as u64;
    }
    Ok(())
}

/// Checks `data`, found at offset `pos` of the stream, against the pattern of `seed`.
pub fn check_pattern(seed: u64, pos: u64, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<()> {
    scratch.resize(data.len(), 0);
    pattern(seed, pos, scratch);
    if data != &scratch[..] {
        let i = (0..data.len()).find(|&i| data[i] != scratch[i]).unwrap();
        return Err(io::Error::other(format!(
            "pattern mismatch at offset {} (seed {seed:#x})",
            pos + i as u64
        )));
    }
    Ok(())
}

/// Reads to EOF, checking every byte against the pattern of `seed` from offset
/// `start`; returns the number of bytes read. A wrong byte is an error naming
/// its offset; `progress` (if any) counts the bytes as they arrive.
pub async fn read_pattern<R: AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
    start: u64,
    progress: Option<&std::cell::Cell<u64>>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut scratch = Vec::new();
    let mut pos = start;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(pos - start);
        }
        check_pattern(seed, pos, &buf[..n], &mut scratch)?;
        pos += n as u64;
        if let Some(p) = progress {
            p.set(p.get() + n as u64);
        }
    }
}

/// Echo that also checks: reads to EOF, checking every byte against the pattern
/// of `seed`, writes each chunk back, then half-closes. Returns the byte count.
pub async fn echo_checked<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    seed: u64,
    start: u64,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut scratch = Vec::new();
    let mut pos = start;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        check_pattern(seed, pos, &buf[..n], &mut scratch)?;
        s.write_all(&buf[..n]).await?;
        pos += n as u64;
    }
    s.shutdown().await?;
    Ok(pos - start)
}

// ---- errors --------------------------------------------------------------------

/// The muxado error code carried by an I/O error of either implementation.
pub fn code_of(e: &io::Error) -> Option<u32> {
    let inner = e.get_ref()?;
    if let Some(m) = inner.downcast_ref::<muxado::Error>() {
        return Some(m.code().to_u32());
    }
    if let Some(n) = inner.downcast_ref::<ngrok_muxado::Error>() {
        return Some(*n as u32);
    }
    None
}

/// Writes small chunks until a write fails (the peer's RST arrived); returns
/// that error. Panics if none fails within `limit`.
pub async fn write_until_error<P: Peer>(p: &P, s: &mut P::Stream, limit: Duration) -> io::Error {
    let until = Instant::now() + limit;
    let mut writes = 0;
    loop {
        match s.write_all(b"more data after close").await {
            Ok(()) => writes += 1,
            Err(e) => return e,
        }
        assert!(
            Instant::now() < until,
            "{}: {writes} writes after the peer closed the stream all succeeded",
            p.name()
        );
        p.sleep(Duration::from_millis(5)).await;
    }
}
