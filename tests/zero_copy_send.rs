//! Zero-copy send: `Stream::write_bytes` payloads leave by reference, sent
//! vectored beside the frame headers, on both drivers.
//!
//! - Every byte arrives, in order, when copied writes (`write_all`) and
//!   by-reference writes (`write_all_bytes`) of every size interleave on
//!   several streams, over TCP (with a small `SO_SNDBUF` and a slow reader,
//!   so that sends are partial and resume mid-iovec) and Unix sockets, with
//!   plain and zero-copy (`SENDMSG_ZC`) sends on the engine, over the
//!   engine's TLS (which takes the transmission flattened), and with a
//!   vectored and a non-vectored transport on tokio.
//! - A transmission of more pieces than one `sendmsg` takes (1024) goes out
//!   whole.
//! - Steady-state bulk `write_all_bytes` allocates nothing per frame, on the
//!   engine and on tokio: a counting allocator counts allocations made on the
//!   measuring thread while the loop runs (both drivers run on that thread),
//!   so other tests of this binary, on other threads, do not disturb it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use muxado::engine::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use muxado::engine::{self, Builder};
use muxado::proto::ZERO_COPY_MIN;
use muxado::{Config, Session};

mod transport_util;

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Runs `f` counting this thread's allocations; returns them with `f`'s output.
async fn counting<T>(f: impl std::future::Future<Output = T>) -> (u64, T) {
    counting::start();
    let out = f.await;
    (counting::stop(), out)
}

// ---- payloads ---------------------------------------------------------------

const STREAMS: u64 = 4;
const PER_STREAM: usize = 3 << 20;

/// The bytes of stream `seed` (xorshift64*).
fn stream_bytes(seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(PER_STREAM);
    while v.len() < PER_STREAM {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        v.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(PER_STREAM);
    v.into()
}

/// How stream `seed`'s bytes are cut: `(length, by reference)` pieces that
/// cover them, from 1 byte to ~300 KiB, sizes around `ZERO_COPY_MIN`
/// included, alternating copied and by-reference writes irregularly.
fn plan(seed: u64) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    let (mut off, mut step, mut i) = (0usize, 1usize + seed as usize, 0u64);
    while off < PER_STREAM {
        let n = match i % 5 {
            0 => ZERO_COPY_MIN - 1 + (i as usize % 3),
            _ => step,
        }
        .min(PER_STREAM - off);
        out.push((n, (i * 7 + seed) % 3 != 0));
        off += n;
        step = (step * 7 + 13) % (300 * 1024) + 1;
        i += 1;
    }
    out
}

fn check_body(seed: u64, body: &[u8]) {
    let expected = stream_bytes(seed);
    assert_eq!(body.len(), expected.len(), "stream {seed}: length");
    if let Some(i) = body.iter().zip(&expected[..]).position(|(a, b)| a != b) {
        panic!("stream {seed}: first wrong byte at offset {i}");
    }
}

fn set_sndbuf(fd: i32, bytes: i32) {
    // SAFETY: setsockopt on a socket this test owns, with a valid int option.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_SNDBUF: {}", io::Error::last_os_error());
}

/// Runs an engine test on its own thread, failing (not skipping) if io_uring
/// is unavailable, or if it does not finish in time.
fn on_engine<T: Send + 'static>(
    builder: Builder,
    f: impl FnOnce(Builder) -> Result<T, engine::EngineError> + Send + 'static,
) -> T {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = f(builder);
        let _ = done_tx.send(());
        r
    });
    match done_rx.recv_timeout(Duration::from_secs(90)) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the engine test hung"),
    }
    match worker.join() {
        Ok(r) => r.expect("io_uring must be available for this test"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

// ---- engine -------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Link {
    /// TCP; the client's `SO_SNDBUF` is small.
    Tcp,
    /// A Unix socket in a temporary directory.
    Unix,
    /// TLS over TCP (small `SO_SNDBUF` too).
    Tls,
}

async fn engine_pair(link: Link) -> (Session, Session) {
    match link {
        Link::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
            let tcp = TcpStream::connect(addr).await.unwrap();
            set_sndbuf(tcp.as_raw_fd(), 16 * 1024);
            let server = Session::server(accept.await, Config::default());
            (Session::client(tcp, Config::default()), server)
        }
        Link::Unix => {
            let dir = std::env::temp_dir().join(format!(
                "muxado-zc-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("s");
            let listener = UnixListener::bind(&path).unwrap();
            let accept = engine::spawn(async move { listener.accept().await.unwrap() });
            let unix = UnixStream::connect(&path).await.unwrap();
            set_sndbuf(unix.as_raw_fd(), 16 * 1024);
            let server = Session::server(accept.await, Config::default());
            let _ = std::fs::remove_dir_all(&dir);
            (Session::client(unix, Config::default()), server)
        }
        Link::Tls => {
            let pki = transport_util::Pki::new();
            let (client, server) = pki
                .tls_pair(|tcp| set_sndbuf(tcp.as_raw_fd(), 16 * 1024))
                .await;
            let server = Session::server(server, Config::default());
            (Session::client(client, Config::default()), server)
        }
    }
}

/// The stream methods the transfers use, the same on both drivers' streams,
/// so that each half of a transfer is written once.
#[allow(async_fn_in_trait)]
trait DriverStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, muxado::Error>;
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), muxado::Error>;
    async fn read_with(&mut self, f: impl FnOnce(&[u8]) -> usize) -> Result<usize, muxado::Error>;
    async fn write_all(&mut self, data: &[u8]) -> Result<(), muxado::Error>;
    async fn write_all_bytes(&mut self, data: Bytes) -> Result<(), muxado::Error>;
    fn close_write(&mut self) -> Result<(), muxado::Error>;
    /// A pause of the driver's own timer.
    async fn nap(d: Duration);
}

macro_rules! driver_stream {
    ($stream:ty, $sleep:path) => {
        impl DriverStream for $stream {
            async fn read(&mut self, buf: &mut [u8]) -> Result<usize, muxado::Error> {
                <$stream>::read(self, buf).await
            }
            async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), muxado::Error> {
                <$stream>::read_exact(self, buf).await
            }
            async fn read_with(
                &mut self,
                f: impl FnOnce(&[u8]) -> usize,
            ) -> Result<usize, muxado::Error> {
                <$stream>::read_with(self, f).await
            }
            async fn write_all(&mut self, data: &[u8]) -> Result<(), muxado::Error> {
                <$stream>::write_all(self, data).await
            }
            async fn write_all_bytes(&mut self, data: Bytes) -> Result<(), muxado::Error> {
                <$stream>::write_all_bytes(self, data).await
            }
            fn close_write(&mut self) -> Result<(), muxado::Error> {
                <$stream>::close_write(self)
            }
            async fn nap(d: Duration) {
                $sleep(d).await
            }
        }
    };
}

driver_stream!(muxado::Stream, engine::sleep);
driver_stream!(muxado::tokio::Stream, tokio::time::sleep);

/// The server half of a transfer: reads slowly (small reads, pauses),
/// checks every byte and answers with the length.
async fn receive_checked<S: DriverStream>(mut s: S) {
    let mut got = Vec::with_capacity(PER_STREAM + 8);
    let mut buf = vec![0u8; 7000];
    let mut reads = 0u32;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads % 64 == 0 {
            S::nap(Duration::from_millis(1)).await;
        }
    }
    let seed = u64::from_be_bytes(got[..8].try_into().unwrap());
    check_body(seed, &got[8..]);
    s.write_all(&((got.len() - 8) as u64).to_be_bytes())
        .await
        .unwrap();
    s.close_write().unwrap();
}

/// The client half: stream `seed`'s bytes in [`plan`]'s mix of copied and
/// by-reference writes, then the server's count of them.
async fn send_planned<S: DriverStream>(mut s: S, seed: u64) {
    let data = stream_bytes(seed);
    s.write_all(&seed.to_be_bytes()).await.unwrap();
    let mut off = 0;
    for (n, by_ref) in plan(seed) {
        if by_ref {
            s.write_all_bytes(data.slice(off..off + n)).await.unwrap();
        } else {
            s.write_all(&data[off..off + n]).await.unwrap();
        }
        off += n;
    }
    s.close_write().unwrap();
    let mut len = [0u8; 8];
    s.read_exact(&mut len).await.unwrap();
    assert_eq!(u64::from_be_bytes(len), PER_STREAM as u64);
}

/// Streams of mixed writes from client to server; the server reads slowly
/// (small reads, pauses), checks every byte and echoes the length.
fn engine_transfer(builder: Builder, link: Link) {
    let by_ref = on_engine(builder, move |b| {
        b.block_on(async move {
            let (client, server) = engine_pair(link).await;
            let serve = engine::spawn(async move {
                let mut tasks = Vec::new();
                for _ in 0..STREAMS {
                    let s = server.accept().await.unwrap();
                    tasks.push(engine::spawn(receive_checked(s)));
                }
                for t in tasks {
                    t.await;
                }
                server.wait().await;
            });
            let mut tasks = Vec::new();
            for seed in 1..=STREAMS {
                let s = client.open().unwrap();
                tasks.push(engine::spawn(send_planned(s, seed)));
            }
            for t in tasks {
                t.await;
            }
            let by_ref = client.stats().proto.bytes_by_reference;
            client.close().unwrap();
            serve.await;
            by_ref
        })
    });
    assert!(
        by_ref > (STREAMS as usize * PER_STREAM / 2) as u64,
        "most bytes went by reference ({by_ref})"
    );
}

#[test]
fn engine_tcp_mixed_writes_arrive_intact() {
    engine_transfer(Builder::default(), Link::Tcp);
}

/// `SENDMSG_ZC` does not wait for the whole message: with a small send
/// buffer its sends come back short and resume mid-iovec.
#[test]
fn engine_tcp_zero_copy_sends_resume_mid_iovec() {
    engine_transfer(Builder::default().send_zero_copy(Some(1)), Link::Tcp);
}

#[test]
fn engine_unix_mixed_writes_arrive_intact() {
    engine_transfer(Builder::default(), Link::Unix);
}

/// TLS takes the transmission flattened (it copies into records anyway).
#[test]
fn engine_tls_mixed_writes_arrive_intact() {
    engine_transfer(Builder::default(), Link::Tls);
}

/// 16 streams each queue 64 by-reference frames of `ZERO_COPY_MIN` bytes in
/// one task turn: one transmission of 1024 parts (2049 pieces), more than a
/// `sendmsg` takes. It goes out in several, whole and in order.
#[test]
fn engine_more_pieces_than_iov_max() {
    const N: usize = 16;
    const FRAMES: usize = 64;
    let (sends, frames) = on_engine(Builder::default(), |b| {
        b.block_on(async {
            let cfg = Config::default().with_max_send_buffer(8 << 20);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
            let client = Session::client(TcpStream::connect(addr).await.unwrap(), cfg.clone());
            let server = Session::server(accept.await, cfg);
            let mut tx: Vec<_> = (0..N).map(|_| client.open().unwrap()).collect();
            let data: Vec<Bytes> = (0..N as u64).map(stream_bytes).collect();
            let before = client.stats();
            // No await that waits: every write is admitted at once.
            for (s, d) in tx.iter_mut().zip(&data) {
                for f in 0..FRAMES {
                    let piece = d.slice(f * ZERO_COPY_MIN..(f + 1) * ZERO_COPY_MIN);
                    assert_eq!(s.write_bytes(&piece).await.unwrap(), ZERO_COPY_MIN);
                }
            }
            for (k, d) in data.iter().enumerate() {
                let mut rx = server.accept().await.unwrap();
                let mut got = vec![0u8; FRAMES * ZERO_COPY_MIN];
                rx.read_exact(&mut got).await.unwrap();
                assert!(got == d[..got.len()], "stream {k}: bytes differ");
            }
            let after = client.stats();
            client.close().unwrap();
            (
                after.sends - before.sends,
                after.proto.frames_out - before.proto.frames_out,
            )
        })
    });
    assert_eq!(frames, (N * FRAMES) as u64);
    // Frames per transmission above 512 means more than 1024 pieces in one.
    assert!(
        frames / sends.max(1) > 512,
        "{frames} frames in {sends} transmissions"
    );
}

/// One lock-step bulk frame: a by-reference write of a clone of `payload`
/// (no allocation: the `Bytes` is shared), read in place on the other side.
async fn round<S: DriverStream>(tx: &mut S, rx: &mut S, payload: &Bytes) {
    tx.write_all_bytes(payload.clone()).await.unwrap();
    let mut left = payload.len();
    while left > 0 {
        let n = rx
            .read_with(|b| {
                assert!(b.iter().all(|&x| x == payload[0]));
                b.len()
            })
            .await
            .unwrap();
        assert!(n > 0, "EOF");
        left -= n;
    }
}

/// The lock-step rounds of the allocation tests: 64 KiB by reference each.
const FRAME: usize = 64 * 1024;
const WARMUP: usize = 500;
const MEASURED: usize = 1000;

/// What [`measure_rounds`] saw: allocations on the counting thread, and the
/// client's bytes sent by reference and frames sent, over the measured rounds.
struct Rounds {
    allocs: u64,
    by_ref: u64,
    frames: u64,
}

impl Rounds {
    fn check(&self, driver: &str) {
        let Rounds {
            allocs,
            by_ref,
            frames,
        } = self;
        eprintln!("{driver}: {allocs} allocations in {frames} frames");
        assert_eq!(
            *by_ref,
            (MEASURED * FRAME) as u64,
            "every payload by reference"
        );
        assert!(*frames >= MEASURED as u64);
        assert_eq!(*allocs, 0, "allocations in {MEASURED} by-reference frames");
    }
}

/// [`WARMUP`] rounds of a `FRAME` of `byte`s, then [`MEASURED`] rounds
/// counted; `stats` reads the client session's protocol counters.
async fn measure_rounds<S: DriverStream>(
    tx: &mut S,
    rx: &mut S,
    byte: u8,
    stats: impl Fn() -> muxado::proto::Stats,
) -> Rounds {
    let payload = Bytes::from(vec![byte; FRAME]);
    for _ in 0..WARMUP {
        round(tx, rx, &payload).await;
    }
    let before = stats();
    let (allocs, ()) = counting(async {
        for _ in 0..MEASURED {
            round(tx, rx, &payload).await;
        }
    })
    .await;
    let after = stats();
    Rounds {
        allocs,
        by_ref: after.bytes_by_reference - before.bytes_by_reference,
        frames: after.frames_out - before.frames_out,
    }
}

/// Bulk by reference on the engine, lock-step, one frame at a time: no
/// allocation per frame once warm.
#[test]
fn engine_bulk_write_bytes_allocates_nothing() {
    let rounds = on_engine(Builder::default(), |b| {
        b.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
            let client =
                Session::client(TcpStream::connect(addr).await.unwrap(), Config::default());
            let server = Session::server(accept.await, Config::default());
            let mut tx = client.open().unwrap();
            tx.write_all(b"!").await.unwrap();
            let mut rx = server.accept().await.unwrap();
            let mut one = [0u8];
            rx.read_exact(&mut one).await.unwrap();
            let body = measure_rounds(&mut tx, &mut rx, 0xA5, || client.stats().proto);
            let r = engine::timeout(Duration::from_secs(60), body)
                .await
                .expect("frames stalled");
            client.close().unwrap();
            r
        })
    });
    rounds.check("engine");
}

// ---- tokio --------------------------------------------------------------------

/// A transport that does not write vectored: the driver sends piece by piece.
struct Plain(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Two connected tokio TCP sockets; with `small`, the client's send buffer
/// is small.
async fn tokio_tcp(small: bool) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if small {
        sock.set_send_buffer_size(16 * 1024).unwrap();
    }
    let (accepted, connected) = tokio::join!(listener.accept(), sock.connect(addr));
    let (server, client) = (accepted.unwrap().0, connected.unwrap());
    server.set_nodelay(true).unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

async fn tokio_transfer(client: muxado::tokio::Session, server: muxado::tokio::Session) -> u64 {
    let serve = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let s = server.accept().await.unwrap();
            tasks.push(tokio::spawn(receive_checked(s)));
        }
        for t in tasks {
            t.await.unwrap();
        }
        server
    });
    let mut tasks = Vec::new();
    for seed in 1..=STREAMS {
        let s = client.open().unwrap();
        tasks.push(tokio::spawn(send_planned(s, seed)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let by_ref = client.stats().proto.bytes_by_reference;
    client.close().unwrap();
    let _server = serve.await.unwrap();
    by_ref
}

/// [`tokio_transfer`] over loopback TCP with a small send buffer, the
/// client's socket wrapped by `wrap`, which writes vectored or not as
/// `vectored` says.
fn tokio_mixed<T>(wrap: fn(tokio::net::TcpStream) -> T, vectored: bool)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let by_ref = tokio_rt().block_on(async {
        let (c, s) = tokio_tcp(true).await;
        let c = wrap(c);
        assert_eq!(tokio::io::AsyncWrite::is_write_vectored(&c), vectored);
        let client = muxado::tokio::Session::client(c, Config::default());
        let server = muxado::tokio::Session::server(s, Config::default());
        tokio::time::timeout(Duration::from_secs(90), tokio_transfer(client, server))
            .await
            .expect("transfer stalled")
    });
    assert!(by_ref > (STREAMS as usize * PER_STREAM / 2) as u64);
}

#[test]
fn tokio_vectored_mixed_writes_arrive_intact() {
    tokio_mixed(|c| c, true);
}

#[test]
fn tokio_plain_mixed_writes_arrive_intact() {
    tokio_mixed(Plain, false);
}

/// Bulk by reference on tokio (current-thread runtime: the driver runs on
/// the counting thread), lock-step: no allocation per frame once warm.
#[test]
fn tokio_bulk_write_bytes_allocates_nothing() {
    let rt = tokio_rt();
    let rounds = rt.block_on(async {
        let (c, s) = tokio_tcp(false).await;
        let client = muxado::tokio::Session::client(c, Config::default());
        let server = muxado::tokio::Session::server(s, Config::default());
        let mut tx = client.open().unwrap();
        tx.write_all(b"!").await.unwrap();
        let mut rx = server.accept().await.unwrap();
        let mut one = [0u8];
        rx.read_exact(&mut one).await.unwrap();
        let body = measure_rounds(&mut tx, &mut rx, 0x3C, || client.stats().proto);
        let r = tokio::time::timeout(Duration::from_secs(60), body)
            .await
            .expect("frames stalled");
        client.close().unwrap();
        r
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    rounds.check("tokio");
}
