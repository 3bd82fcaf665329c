//! Steady-state DATA/WNDINC traffic between two in-memory sessions allocates
//! nothing: writes copy into the outgoing buffer, `poll_transmit` swaps two
//! reused buffers, `handle_input` appends into stream buffers that already
//! have their capacity, reads copy out, and events go through queues that
//! already have theirs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use muxado::proto::{Role, Session, StreamKey};
use muxado::Config;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only the test's own thread counts, and only while measuring.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Pair {
    c: Session,
    s: Session,
    /// Streams as (client key, server key).
    streams: Vec<(StreamKey, StreamKey)>,
    spare: [BytesMut; 2],
    src: Vec<u8>,
    dst: Vec<u8>,
    now: Instant,
    moved: u64,
}

impl Pair {
    fn new(n: usize) -> Self {
        let now = Instant::now();
        let mut c = Session::new(Role::Client, Config::default());
        let mut s = Session::new(Role::Server, Config::default());
        let mut streams = Vec::new();
        let mut wire = BytesMut::new();
        for i in 0..n {
            // Half the streams are opened by each side.
            let (opener, acceptor) = if i % 2 == 0 {
                (&mut c, &mut s)
            } else {
                (&mut s, &mut c)
            };
            let k = opener.open().unwrap();
            opener.write(k, b"syn").unwrap();
            assert!(opener.poll_transmit(&mut wire));
            acceptor.handle_input(now, &wire);
            let a = acceptor.accept().unwrap().unwrap();
            let mut three = [0u8; 3];
            assert_eq!(acceptor.read(a, &mut three).unwrap(), Some(3));
            streams.push(if i % 2 == 0 { (k, a) } else { (a, k) });
        }
        Pair {
            c,
            s,
            streams,
            spare: [BytesMut::new(), BytesMut::new()],
            src: (0..70_000u32).map(|i| i as u8).collect(),
            dst: vec![0; 70_000],
            now,
            moved: 0,
        }
    }

    /// One round of traffic both ways on every stream; sizes vary with `round`.
    fn round(&mut self, round: usize) {
        const SIZES: [usize; 7] = [1, 100, 1_500, 9_000, 16_384, 33_333, 65_536];
        for (i, &(ck, sk)) in self.streams.iter().enumerate() {
            let n = SIZES[(round + i) % SIZES.len()];
            self.c.write(ck, &self.src[..n]).unwrap();
            let m = SIZES[(round + 3 * i + 1) % SIZES.len()];
            self.s.write(sk, &self.src[..m]).unwrap();
        }
        // Client → server, server reads, server → client (data + WNDINC), …
        for _ in 0..2 {
            if self.c.poll_transmit(&mut self.spare[0]) {
                self.s.handle_input(self.now, &self.spare[0]);
            }
            if self.s.poll_transmit(&mut self.spare[1]) {
                self.c.handle_input(self.now, &self.spare[1]);
            }
            for (i, &(ck, sk)) in self.streams.iter().enumerate() {
                let r = SIZES[(round + 5 * i + 2) % SIZES.len()].max(4096);
                // The server sometimes leaves data unread, so stream buffers
                // hold data while more arrives.
                let mut reads = (round + i) % 4;
                while reads > 0 {
                    let Some(n) = self.s.read(sk, &mut self.dst[..r]).unwrap() else {
                        break;
                    };
                    assert!(n > 0);
                    self.moved += n as u64;
                    reads -= 1;
                }
                while let Some(n) = self.c.read(ck, &mut self.dst[..r]).unwrap() {
                    assert!(n > 0);
                    self.moved += n as u64;
                }
            }
            while self.c.poll_event().is_some() {}
            while self.s.poll_event().is_some() {}
        }
    }
}

#[test]
fn steady_state_traffic_allocates_nothing() {
    const WARM: usize = 300;
    let mut p = Pair::new(16);
    for round in 0..WARM {
        p.round(round);
    }
    // The counter works.
    COUNTING.with(|c| c.set(true));
    std::hint::black_box(Vec::<u8>::with_capacity(10));
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCS.swap(0, Ordering::Relaxed), 1);

    let before = p.moved;
    COUNTING.with(|c| c.set(true));
    for round in WARM..WARM + 1_000 {
        p.round(round);
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let moved = p.moved - before;
    assert!(moved > 100 << 20, "only {moved} bytes moved");
    assert!(!p.c.is_dead() && !p.s.is_dead());
    assert_eq!(allocs, 0, "{allocs} allocations while moving {moved} bytes");
}
