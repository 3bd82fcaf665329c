//! Steady-state DATA through a session pair on the engine allocates nothing per frame.
//!
//! A counting global allocator (this test binary only) counts every allocation made while the
//! measured loop runs: the streams' writes and reads, the session writer task's sends, the reader
//! task's multishot receives, the WNDINCs the reads trigger, and the engine's loop turns.
//!
//! Set `MUXADO_ALLOC_TRACE=1` to print a backtrace of the first few counted allocations.
//! One test in this binary, so no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use muxado::engine;
use muxado::engine::net::{TcpListener, TcpStream};
use muxado::{Config, Session, Stream};

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
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        if IN_TRACE.with(|t| t.get()) {
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

// SAFETY: forwards to the system allocator; the counting touches only atomics, a const
// thread-local and (when tracing) a mutex guarded against re-entry.
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

#[derive(Debug)]
struct Delta {
    /// WNDINC frames the client received (it receives nothing else).
    wndinc_in: u64,
    /// DATA frames the client sent.
    data_out: u64,
    /// Send operations of the client's writer task.
    sends: u64,
    /// Receive completions of the server's reader task.
    server_recvs: u64,
}

const STREAMS: usize = 4;
const FRAME: usize = 1024;
const WARMUP: usize = 2_000;
const MEASURED: usize = 2_000;

/// One lock-step frame per stream in turn: a write (one DATA frame, sent by the writer task) and
/// the peer's read of it (received by the reader task's multishot receive). Every 64 KiB read per
/// stream makes the reader's session queue a WNDINC, which flows back the same way.
async fn lockstep(tx: &mut [Stream], rx: &mut [Stream], frames: usize, out: &[u8], inb: &mut [u8]) {
    for i in 0..frames {
        let k = i % tx.len();
        tx[k].write_all(out).await.unwrap();
        rx[k].read_exact(inb).await.unwrap();
        assert_eq!(inb[0], out[0]);
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
        }
    }
}

fn measure<'a, F>(what: &str, frames: usize, run: F) -> impl std::future::Future<Output = u64> + 'a
where
    F: std::future::Future<Output = ()> + 'a,
{
    let what = what.to_string();
    async move {
        let turns = engine::stats().turns;
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        run.await;
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCS.load(Ordering::SeqCst);
        eprintln!(
            "{what}: {n} allocations in {frames} DATA frames ({:.4} per frame, {} loop turns)",
            n as f64 / frames as f64,
            engine::stats().turns - turns
        );
        n
    }
}

#[test]
fn steady_state_frames_allocate_nothing() {
    TRACE.store(
        std::env::var_os("MUXADO_ALLOC_TRACE").is_some(),
        Ordering::SeqCst,
    );
    let (tx_, rx_) = std::sync::mpsc::channel();
    // A watchdog: the engine thread must finish in time, or the test fails.
    let worker = std::thread::spawn(move || {
        let r = engine::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
            let client =
                Session::client(TcpStream::connect(addr).await.unwrap(), Config::default());
            let server = Session::server(accept.await, Config::default());
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
            let out = vec![0x5Au8; FRAME];
            let mut inb = vec![0u8; FRAME];
            let body = async {
                // Warm up: buffers grow to their working size, slabs and queues fill, WNDINCs flow.
                lockstep(&mut tx, &mut rx, WARMUP, &out, &mut inb).await;
                burst(&mut tx, &mut rx, WARMUP, &out, &mut inb).await;
                let (c0, s0) = (client.stats(), server.stats());
                let a = measure(
                    "lock-step",
                    MEASURED,
                    lockstep(&mut tx, &mut rx, MEASURED, &out, &mut inb),
                )
                .await;
                let b = measure(
                    "bursts of 4",
                    MEASURED,
                    burst(&mut tx, &mut rx, MEASURED, &out, &mut inb),
                )
                .await;
                let (c1, s1) = (client.stats(), server.stats());
                let delta = Delta {
                    wndinc_in: c1.proto.frames_in - c0.proto.frames_in,
                    data_out: c1.proto.frames_out - c0.proto.frames_out,
                    sends: c1.sends - c0.sends,
                    server_recvs: s1.recvs - s0.recvs,
                };
                (a, b, delta)
            };
            let counts = engine::timeout(Duration::from_secs(30), body)
                .await
                .expect("frames stalled");
            let features = engine::features().expect("on a core");
            client.close().unwrap();
            drop((tx, rx));
            (counts, features)
        });
        let _ = tx_.send(());
        r
    });
    match rx_.recv_timeout(Duration::from_secs(45)) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("test hung"),
    }
    let ((lock, bursts, delta), features) = match worker.join() {
        Ok(r) => r.expect("io_uring available"),
        Err(p) => std::panic::resume_unwind(p),
    };
    for t in TRACES.lock().unwrap().iter() {
        eprintln!("--- allocation ---\n{t}");
    }
    eprintln!("measured phases: {delta:?}; engine features: {features:?}");
    assert_eq!(
        delta.data_out,
        2 * MEASURED as u64,
        "one DATA frame per write"
    );
    assert!(delta.wndinc_in > 0, "WNDINCs came back during the run");
    assert!(delta.sends > 0 && delta.server_recvs > 0);
    assert_eq!(lock, 0, "allocations in {MEASURED} lock-step frames");
    assert_eq!(bursts, 0, "allocations in {MEASURED} burst frames");
}
