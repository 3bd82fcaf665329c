//! Zero-copy receive on the engine: large DATA payloads stay in the ring's receive buffers (lent
//! to their stream) instead of being copied.
//!
//! - Steady-state bulk through the lending path allocates nothing per frame (a counting global
//!   allocator, counting only on the engine's thread while the measured loop runs).
//! - A stream whose application never reads holds only its share of the ring: past it, its
//!   payloads are copied, so other streams keep flowing on a small ring; its bytes stay intact.

use std::time::Duration;

use muxado::engine::{self, net::TcpListener, net::TcpStream};
use muxado::{Config, Session, Stream};

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Runs `f` on an engine core of its own thread, failing the test if it takes over `limit`.
fn on_engine<T: Send + 'static>(
    builder: engine::Builder,
    limit: Duration,
    f: impl AsyncFnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = builder.block_on(async move { engine::timeout(limit, f()).await });
        let _ = tx.send(());
        r
    });
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        rx.recv_timeout(limit + Duration::from_secs(10))
    {
        panic!("the engine thread did not finish in time");
    }
    worker
        .join()
        .expect("engine thread")
        .expect("io_uring engine available")
        .expect("stalled: did not finish in time")
}

/// A connected session pair on this core.
async fn pair(config: Config) -> (Session, Session) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
    let client = Session::client(TcpStream::connect(addr).await.unwrap(), config.clone());
    let server = Session::server(accept.await, config);
    (client, server)
}

/// The test streams' bytes repeat every `PERIOD` bytes (251 × 256: not a power of two, so a
/// misplaced piece shows).
const PERIOD: usize = 251 * 256;

/// One period of the bytes of a test stream tagged `tag`.
fn period(tag: u8) -> Vec<u8> {
    (0..PERIOD)
        .map(|i| tag.wrapping_add((i / 251) as u8) ^ (i as u8))
        .collect()
}

/// Reads the stream's bytes `start..end` with `read_with` (in place), checking them.
async fn sink(stream: &mut Stream, want: &[u8], start: usize, end: usize) {
    let tag = want[0];
    let (mut at, total) = (start, end);
    while at < total {
        let mut good = true;
        let n = stream
            .read_with(|bytes| {
                let n = bytes.len().min(total - at);
                let mut i = 0;
                while i < n {
                    let off = (at + i) % PERIOD;
                    let k = (n - i).min(PERIOD - off);
                    good &= bytes[i..i + k] == want[off..off + k];
                    i += k;
                }
                n
            })
            .await
            .unwrap();
        assert!(n > 0, "stream {tag} ended after {at} of {total} bytes");
        assert!(good, "stream {tag}: wrong bytes at {at}");
        at += n;
    }
}

/// Writes `total` bytes in writes of at most `write`.
async fn source(stream: &mut Stream, tag: u8, total: usize, write: usize) {
    let bytes = period(tag);
    let mut at = 0;
    while at < total {
        let off = at % PERIOD;
        let n = write.min(total - at).min(PERIOD - off);
        stream.write_all(&bytes[off..off + n]).await.unwrap();
        at += n;
    }
}

/// Steady-state bulk through the lending path allocates nothing, and it is the lending path: all
/// but the small pieces (under 4 KiB, where a frame ends inside a ring buffer) are lent.
#[test]
fn steady_state_bulk_lends_and_allocates_nothing() {
    const WARMUP: usize = 32 << 20;
    const MEASURED: usize = 64 << 20;
    let (allocs, lent, received) = on_engine(
        engine::Builder::default(),
        Duration::from_secs(60),
        async || {
            // A window the reader's share of leases always covers (128 KiB: 5 ring buffers), so
            // that every large piece is lent however slowly this debug build reads.
            let config = Config::default()
                .with_max_window(128 << 10)
                .with_max_auto_window(128 << 10);
            let (client, server) = pair(config).await;
            let want = period(1);
            let mut tx = client.open().unwrap();
            let writer = engine::spawn(async move {
                source(&mut tx, 1, WARMUP + MEASURED, 64 * 1024).await;
                tx
            });
            let mut rx = server.accept().await.unwrap();
            sink(&mut rx, &want, 0, WARMUP).await;
            let s0 = server.stats().proto;
            counting::start();
            sink(&mut rx, &want, WARMUP, WARMUP + MEASURED).await;
            let allocs = counting::stop();
            let s1 = server.stats().proto;
            let tx = writer.await;
            drop((tx, rx));
            client.close().unwrap();
            (
                allocs,
                s1.bytes_lent - s0.bytes_lent,
                s1.bytes_in - s0.bytes_in,
            )
        },
    );
    eprintln!(
        "{allocs} allocations while receiving {received} bytes, {lent} of them lent ({:.0}%)",
        100.0 * lent as f64 / received.max(1) as f64
    );
    assert!(
        received >= MEASURED as u64 / 2,
        "measured too little: {received}"
    );
    assert!(
        lent >= received / 10 * 9,
        "most bulk bytes must be lent, not copied: {lent} of {received}"
    );
    if let Some(bt) = counting::first_trace() {
        eprintln!("first allocation:\n{bt}");
    }
    assert_eq!(
        allocs, 0,
        "steady-state bulk allocated (MUXADO_ALLOC_TRACE=1 shows where)"
    );
}

/// On a ring of 16 buffers of 32 KiB (512 KiB), a stream that is sent a whole 1 MiB window and
/// never read would pin every buffer if all of it were lent, and the other streams would stall.
/// It holds only its share; the rest of its bytes are copied; another stream moves 8 MiB; and the
/// idle stream's bytes are all there, in order, when it is finally read.
#[test]
fn a_stream_that_never_reads_does_not_pin_the_ring() {
    const IDLE: usize = 1 << 20;
    const BUSY: usize = 8 << 20;
    let config = Config::default()
        .with_max_window(IDLE as u32)
        .with_max_auto_window(IDLE as u32);
    let lent = on_engine(
        engine::Builder::default().recv_buffers(16, 32 * 1024),
        Duration::from_secs(60),
        async move || {
            let (client, server) = pair(config).await;
            let mut idle_tx = client.open().unwrap();
            source(&mut idle_tx, 7, IDLE, 64 * 1024).await;
            let mut idle_rx = server.accept().await.unwrap();
            // Let the whole window arrive before the busy stream starts.
            while server.stats().proto.bytes_in < IDLE as u64 {
                engine::sleep(Duration::from_millis(2)).await;
            }
            let lent_idle = server.stats().proto.bytes_lent;
            let mut busy_tx = client.open().unwrap();
            let writer = engine::spawn(async move {
                source(&mut busy_tx, 9, BUSY, 64 * 1024).await;
                busy_tx
            });
            let mut busy_rx = server.accept().await.unwrap();
            sink(&mut busy_rx, &period(9), 0, BUSY).await;
            let busy_tx = writer.await;
            sink(&mut idle_rx, &period(7), 0, IDLE).await;
            drop((busy_tx, busy_rx, idle_tx, idle_rx));
            client.close().unwrap();
            lent_idle
        },
    );
    assert!(
        lent > 0,
        "the idle stream lent nothing: the test proves nothing"
    );
    assert!(
        lent < IDLE as u64 / 2,
        "the idle stream lent {lent} of {IDLE} bytes: more than its share"
    );
}
