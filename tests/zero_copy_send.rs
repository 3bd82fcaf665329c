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
use muxado::transport::{TlsClientConfig, TlsServerConfig, TlsStream};
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
            let server_cfg =
                TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
            let client_cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = engine::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                TlsStream::accept(tcp, &server_cfg).await.unwrap()
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            set_sndbuf(tcp.as_raw_fd(), 16 * 1024);
            let tls = TlsStream::connect(tcp, &client_cfg, "localhost")
                .await
                .unwrap();
            let server = Session::server(accept.await, Config::default());
            (Session::client(tls, Config::default()), server)
        }
    }
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
                    let mut s = server.accept().await.unwrap();
                    tasks.push(engine::spawn(async move {
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
                                engine::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        let seed = u64::from_be_bytes(got[..8].try_into().unwrap());
                        check_body(seed, &got[8..]);
                        s.write_all(&((got.len() - 8) as u64).to_be_bytes())
                            .await
                            .unwrap();
                        s.close_write().unwrap();
                    }));
                }
                for t in tasks {
                    t.await;
                }
                server.wait().await;
            });
            let mut tasks = Vec::new();
            for seed in 1..=STREAMS {
                let mut s = client.open().unwrap();
                tasks.push(engine::spawn(async move {
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
                }));
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
async fn engine_round(tx: &mut muxado::Stream, rx: &mut muxado::Stream, payload: &Bytes) {
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

/// Bulk by reference on the engine, lock-step, one frame at a time: no
/// allocation per frame once warm.
#[test]
fn engine_bulk_write_bytes_allocates_nothing() {
    const FRAME: usize = 64 * 1024;
    const WARMUP: usize = 500;
    const MEASURED: usize = 1000;
    let (allocs, by_ref, frames) = on_engine(Builder::default(), |b| {
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
            let payload = Bytes::from(vec![0xA5u8; FRAME]);
            let body = async {
                for _ in 0..WARMUP {
                    engine_round(&mut tx, &mut rx, &payload).await;
                }
                let before = client.stats();
                let (n, ()) = counting(async {
                    for _ in 0..MEASURED {
                        engine_round(&mut tx, &mut rx, &payload).await;
                    }
                })
                .await;
                let after = client.stats();
                (
                    n,
                    after.proto.bytes_by_reference - before.proto.bytes_by_reference,
                    after.proto.frames_out - before.proto.frames_out,
                )
            };
            let r = engine::timeout(Duration::from_secs(60), body)
                .await
                .expect("frames stalled");
            client.close().unwrap();
            r
        })
    });
    eprintln!("engine: {allocs} allocations in {frames} frames");
    assert_eq!(
        by_ref,
        (MEASURED * FRAME) as u64,
        "every payload by reference"
    );
    assert!(frames >= MEASURED as u64);
    assert_eq!(allocs, 0, "allocations in {MEASURED} by-reference frames");
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
            let mut s = server.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
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
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let seed = u64::from_be_bytes(got[..8].try_into().unwrap());
                check_body(seed, &got[8..]);
                s.write_all(&((got.len() - 8) as u64).to_be_bytes())
                    .await
                    .unwrap();
                s.close_write().unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        server
    });
    let mut tasks = Vec::new();
    for seed in 1..=STREAMS {
        let mut s = client.open().unwrap();
        tasks.push(tokio::spawn(async move {
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
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let by_ref = client.stats().proto.bytes_by_reference;
    client.close().unwrap();
    let _server = serve.await.unwrap();
    by_ref
}

#[test]
fn tokio_vectored_mixed_writes_arrive_intact() {
    let by_ref = tokio_rt().block_on(async {
        let (c, s) = tokio_tcp(true).await;
        assert!(tokio::io::AsyncWrite::is_write_vectored(&c));
        let client = muxado::tokio::Session::client(c, Config::default());
        let server = muxado::tokio::Session::server(s, Config::default());
        tokio::time::timeout(Duration::from_secs(90), tokio_transfer(client, server))
            .await
            .expect("transfer stalled")
    });
    assert!(by_ref > (STREAMS as usize * PER_STREAM / 2) as u64);
}

#[test]
fn tokio_plain_mixed_writes_arrive_intact() {
    let by_ref = tokio_rt().block_on(async {
        let (c, s) = tokio_tcp(true).await;
        let c = Plain(c);
        assert!(!tokio::io::AsyncWrite::is_write_vectored(&c));
        let client = muxado::tokio::Session::client(c, Config::default());
        let server = muxado::tokio::Session::server(s, Config::default());
        tokio::time::timeout(Duration::from_secs(90), tokio_transfer(client, server))
            .await
            .expect("transfer stalled")
    });
    assert!(by_ref > (STREAMS as usize * PER_STREAM / 2) as u64);
}

/// [`engine_round`] on tokio.
async fn tokio_round(
    tx: &mut muxado::tokio::Stream,
    rx: &mut muxado::tokio::Stream,
    payload: &Bytes,
) {
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

/// Bulk by reference on tokio (current-thread runtime: the driver runs on
/// the counting thread), lock-step: no allocation per frame once warm.
#[test]
fn tokio_bulk_write_bytes_allocates_nothing() {
    const FRAME: usize = 64 * 1024;
    const WARMUP: usize = 500;
    const MEASURED: usize = 1000;
    let rt = tokio_rt();
    let (allocs, by_ref, frames) = rt.block_on(async {
        let (c, s) = tokio_tcp(false).await;
        let client = muxado::tokio::Session::client(c, Config::default());
        let server = muxado::tokio::Session::server(s, Config::default());
        let mut tx = client.open().unwrap();
        tx.write_all(b"!").await.unwrap();
        let mut rx = server.accept().await.unwrap();
        let mut one = [0u8];
        rx.read_exact(&mut one).await.unwrap();
        let payload = Bytes::from(vec![0x3Cu8; FRAME]);
        let body = async {
            for _ in 0..WARMUP {
                tokio_round(&mut tx, &mut rx, &payload).await;
            }
            let before = client.stats();
            let (n, ()) = counting(async {
                for _ in 0..MEASURED {
                    tokio_round(&mut tx, &mut rx, &payload).await;
                }
            })
            .await;
            let after = client.stats();
            (
                n,
                after.proto.bytes_by_reference - before.proto.bytes_by_reference,
                after.proto.frames_out - before.proto.frames_out,
            )
        };
        let r = tokio::time::timeout(Duration::from_secs(60), body)
            .await
            .expect("frames stalled");
        client.close().unwrap();
        r
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("tokio: {allocs} allocations in {frames} frames");
    assert_eq!(
        by_ref,
        (MEASURED * FRAME) as u64,
        "every payload by reference"
    );
    assert!(frames >= MEASURED as u64);
    assert_eq!(allocs, 0, "allocations in {MEASURED} by-reference frames");
}
