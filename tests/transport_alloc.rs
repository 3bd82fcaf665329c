//! Steady-state DATA over a Unix socket allocates nothing per frame, as over
//! TCP (the same multishot receive and sends); over TLS the count per frame is
//! printed and bounded (rustls 0.23, even through its unbuffered API, opens
//! and seals each record through a `Vec` of its own).
//!
//! A counting global allocator (this test binary only) counts every
//! allocation made while the measured loop runs. One test in this binary, so
//! no other test allocates meanwhile.

mod transport_util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use muxado::engine::{self, net::UnixStream};
use muxado::transport::Transport;
use muxado::{Config, Session, Stream};
use transport_util::{thread_bounded, Pki};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; the counting touches two atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STREAMS: usize = 4;
const FRAME: usize = 1024;
const WARMUP: usize = 4_000;
const MEASURED: usize = 4_000;

/// One frame per stream in turn: a write, and the peer's read of it.
async fn lockstep(tx: &mut [Stream], rx: &mut [Stream], frames: usize, out: &[u8], inb: &mut [u8]) {
    for i in 0..frames {
        let k = i % tx.len();
        tx[k].write_all(out).await.unwrap();
        rx[k].read_exact(inb).await.unwrap();
        assert_eq!(inb, out);
    }
}

/// Allocations per frame in steady state over the transports `pair` makes.
async fn per_frame(what: &str, (a, b): (Transport, Transport)) -> f64 {
    let client = Session::client(a, Config::default());
    let server = Session::server(b, Config::default());
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
    let out: Vec<u8> = (0..FRAME).map(|i| i as u8).collect();
    let mut inb = vec![0u8; FRAME];
    let body = async {
        lockstep(&mut tx, &mut rx, WARMUP, &out, &mut inb).await;
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        lockstep(&mut tx, &mut rx, MEASURED, &out, &mut inb).await;
        COUNTING.store(false, Ordering::SeqCst);
        ALLOCS.load(Ordering::SeqCst)
    };
    let n = engine::timeout(Duration::from_secs(30), body)
        .await
        .expect("frames stalled");
    let per = n as f64 / MEASURED as f64;
    eprintln!(
        "{what}: {n} allocations in {MEASURED} DATA frames of {FRAME} bytes ({per:.4} per frame)"
    );
    client.close().unwrap();
    server.wait().await;
    per
}

#[test]
fn steady_state_frames_over_unix_allocate_nothing_and_tls_is_bounded() {
    let pki = Pki::new();
    let (unix, tls) = thread_bounded(move || {
        engine::block_on(async move {
            let (a, b) = UnixStream::pair().unwrap();
            let unix = per_frame("unix", (a.into(), b.into())).await;

            let (c, s) = pki.tls_pair(|_| {}).await;
            let tls = per_frame("tls", (c.into(), s.into())).await;
            (unix, tls)
        })
        .unwrap()
    });
    assert_eq!(unix, 0.0, "allocations per frame over a Unix socket");
    // A frame is one TLS record here; rustls allocates a few times per record.
    assert!(tls <= 8.0, "allocations per frame over TLS: {tls}");
}
