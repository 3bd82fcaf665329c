//! Steady-state DATA through a pair of tokio-driven sessions allocates
//! nothing per frame.
//!
//! A counting global allocator (this test binary only) counts every
//! allocation made while the measured loop runs: the streams' writes and
//! reads, the driver tasks' transport reads and writes (loopback TCP), the
//! WNDINCs the reads trigger, the wakeups between tasks, and tokio's own
//! scheduling. Both the current-thread and the multi-thread runtime are
//! measured. Set `MUXADO_ALLOC_TRACE=1` to print a backtrace of the first few
//! counted allocations. One test in this binary, so no other test allocates
//! meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use muxado::tokio::{Session, Stream};
use muxado::Config;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static TRACE: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
const MAX_TRACES: usize = 8;

thread_local! {
    /// Set while this thread records a backtrace (which allocates itself).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

impl Counting {
    fn note(&self) {
        if !COUNTING.load(Ordering::Relaxed) || IN_TRACE.with(|t| t.get()) {
            return;
        }
        let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
        if TRACE.load(Ordering::Relaxed) && (n as usize) < MAX_TRACES {
            IN_TRACE.with(|t| t.set(true));
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            TRACES.lock().unwrap().push(bt);
            IN_TRACE.with(|t| t.set(false));
        }
    }
}

// SAFETY: forwards to the system allocator; the counting touches only atomics,
// a const thread-local and (when tracing) a mutex guarded against re-entry.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STREAMS: usize = 4;
const FRAME: usize = 1024;
const WARMUP: usize = 4_000;
const MEASURED: usize = 2_000;

/// One lock-step frame per stream in turn: a write (one DATA frame) and the
/// peer's read of it. Every 64 KiB read per stream makes the reader's session
/// queue a WNDINC, which flows back the same way.
async fn lockstep(tx: &mut [Stream], rx: &mut [Stream], frames: usize, out: &[u8], inb: &mut [u8]) {
    for i in 0..frames {
        let k = i % tx.len();
        tx[k].write_all(out).await.unwrap();
        rx[k].read_exact(inb).await.unwrap();
        assert_eq!(inb, out);
    }
}

/// Frames in bursts: a frame on every stream, then all the reads.
async fn burst(tx: &mut [Stream], rx: &mut [Stream], frames: usize, out: &[u8], inb: &mut [u8]) {
    for _ in 0..frames / tx.len() {
        for s in tx.iter_mut() {
            s.write_all(out).await.unwrap();
        }
        for s in rx.iter_mut() {
            s.read_exact(inb).await.unwrap();
            assert_eq!(inb, out);
        }
    }
}

async fn measure(what: &str, run: impl std::future::Future<Output = ()>) -> u64 {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    run.await;
    COUNTING.store(false, Ordering::SeqCst);
    let n = ALLOCS.load(Ordering::SeqCst);
    eprintln!(
        "{what}: {n} allocations in {MEASURED} DATA frames ({:.4} per frame)",
        n as f64 / MEASURED as f64
    );
    n
}

/// (lock-step allocations, burst allocations, DATA frames sent, WNDINCs received)
async fn pair() -> (u64, u64, u64, u64) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, connected) =
        tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
    let (server_tcp, client_tcp) = (accepted.unwrap().0, connected.unwrap());
    server_tcp.set_nodelay(true).unwrap();
    client_tcp.set_nodelay(true).unwrap();
    let client = Session::client(client_tcp, Config::default());
    let server = Session::server(server_tcp, Config::default());
    let mut tx = Vec::new();
    let mut rx = Vec::new();
    for _ in 0..STREAMS {
        let mut s = client.open().unwrap();
        s.write_all(b"!").await.unwrap();
        let mut p = server.accept().await.unwrap();
        let mut one = [0u8];
        p.read_exact(&mut one).await.unwrap();
        tx.push(s);
        rx.push(p);
    }
    let out: Vec<u8> = (0..FRAME).map(|i| (i * 31 + 7) as u8).collect();
    let mut inb = vec![0u8; FRAME];
    // Warm up: buffers grow to their working size, slabs and queues fill,
    // WNDINCs flow, tokio's queues and timers reach their size.
    lockstep(&mut tx, &mut rx, WARMUP, &out, &mut inb).await;
    burst(&mut tx, &mut rx, WARMUP, &out, &mut inb).await;
    let (c0, s0) = (client.stats(), server.stats());
    let a = measure(
        "lock-step",
        lockstep(&mut tx, &mut rx, MEASURED, &out, &mut inb),
    )
    .await;
    let b = measure(
        "bursts of 4",
        burst(&mut tx, &mut rx, MEASURED, &out, &mut inb),
    )
    .await;
    let (c1, s1) = (client.stats(), server.stats());
    assert!(c1.sends > c0.sends && s1.recvs > s0.recvs);
    client.close().unwrap();
    (
        a,
        b,
        c1.proto.frames_out - c0.proto.frames_out,
        c1.proto.frames_in - c0.proto.frames_in,
    )
}

fn check(flavor: &str, rt: tokio::runtime::Runtime) {
    let (lock, bursts, data_out, wndinc_in) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), pair())
            .await
            .expect("frames stalled")
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    for t in TRACES.lock().unwrap().drain(..) {
        eprintln!("--- allocation ---\n{t}");
    }
    eprintln!("{flavor}: {data_out} DATA frames out, {wndinc_in} WNDINC in");
    assert_eq!(
        data_out,
        2 * MEASURED as u64,
        "{flavor}: one DATA frame per write"
    );
    assert!(wndinc_in > 0, "{flavor}: WNDINCs came back during the run");
    assert_eq!(
        lock, 0,
        "{flavor}: allocations in {MEASURED} lock-step frames"
    );
    assert_eq!(
        bursts, 0,
        "{flavor}: allocations in {MEASURED} burst frames"
    );
}

#[test]
fn steady_state_frames_allocate_nothing() {
    // The counter counts: one allocation while counting is seen.
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    drop(std::hint::black_box(Box::new([0u8; 64])));
    COUNTING.store(false, Ordering::SeqCst);
    assert!(
        ALLOCS.load(Ordering::SeqCst) >= 1,
        "the counting allocator counts nothing"
    );
    TRACE.store(
        std::env::var_os("MUXADO_ALLOC_TRACE").is_some(),
        Ordering::SeqCst,
    );
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    check("current-thread runtime", current);
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    check("multi-thread runtime", multi);
}
