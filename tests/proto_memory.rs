//! Memory budgets against a hostile peer (issue 8), over the sans-IO core:
//! what an idle stream costs, the per-session budget, the shared budget,
//! and buffers given back once drained. Heap use is measured by a counting
//! allocator, per thread (each test runs on its own thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use muxado::frame::{self, Decode, Frame, FLAG_SYN};
use muxado::proto::{MemoryBudget, Role, Session, StreamKey, STREAM_COST};
use muxado::{Config, ErrorCode};

struct Counting;

thread_local! {
    /// Bytes allocated and not yet freed by this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// Allocations (and reallocations) made by this thread.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn add(n: i64) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = LIVE.try_with(|l| l.set(l.get() + n));
}

fn count_alloc() {
    let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting touches only a const-initialised thread-local (which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        count_alloc();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        count_alloc();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        count_alloc();
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn syn(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode_data(&mut b, id, payload, FLAG_SYN).unwrap();
    b
}

fn data(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode_data(&mut b, id, payload, 0).unwrap();
    b
}

/// The RST frames the session transmits, as (id, code).
fn rsts(s: &mut Session) -> Vec<(u32, ErrorCode)> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    if s.poll_transmit(&mut buf) {
        let mut b = &buf[..];
        while let Ok(Decode::Frame(f, n)) = Frame::decode(b) {
            if let Frame::Rst { stream_id, code } = f {
                out.push((stream_id, code));
            }
            b = &b[n..];
        }
    }
    out
}

fn accept_all(s: &mut Session) -> Vec<StreamKey> {
    let mut keys = Vec::new();
    while let Ok(Some(k)) = s.accept() {
        keys.push(k);
    }
    keys
}

/// A 9-byte SYN carrying one byte used to cost the echo server ~64 KiB. In
/// the protocol core an accepted stream holding one unread byte now costs
/// less than the budget charges for it, and nothing is reserved ahead.
#[test]
fn an_accepted_stream_with_one_byte_costs_little() {
    const N: u32 = 10_000;
    let config = Config::default()
        .with_max_streams(2 * N as usize)
        .with_accept_backlog(2 * N as usize);
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(syn(3 + 2 * i, b"x"));
    }
    let now = Instant::now();
    let before = live();
    let mut server = Session::new(Role::Server, config);
    server.handle_input(now, &wire);
    let keys = accept_all(&mut server);
    assert_eq!(keys.len(), N as usize);
    let per_stream = (live() - before) / i64::from(N);
    println!("heap per accepted one-byte stream: {per_stream} bytes");
    assert!(
        per_stream <= STREAM_COST as i64,
        "{per_stream} bytes per stream, more than the {STREAM_COST} the budget charges"
    );
    assert_eq!(server.buffered_input(), N as usize);
    assert_eq!(server.memory_held(), N as usize * (STREAM_COST + 1));
    assert!(server.wants_input());
}

/// Past `max_session_memory`: new peer streams get RST StreamRefused and
/// the session asks its driver to stop reading; reading the streams lifts
/// both.
#[test]
fn session_budget_refuses_streams_and_pauses_input_until_drained() {
    let window = 64 * 1024;
    let config = Config::default()
        .with_max_window(window)
        .with_max_session_memory(200 * 1024);
    let now = Instant::now();
    let mut server = Session::new(Role::Server, config);
    let chunk = vec![7u8; window as usize];
    // Three full windows fit in 200 KiB; the fourth crosses it.
    for i in 0..4u32 {
        assert!(server.wants_input(), "stream {i}");
        server.handle_input(now, &syn(3 + 2 * i, &chunk));
    }
    assert!(!server.wants_input(), "over budget: stop reading");
    assert!(server.memory_held() > 200 * 1024);
    assert!(
        rsts(&mut server).is_empty(),
        "admitted data is never dropped"
    );
    // A driver that ignores the pause is still protected: new streams are refused.
    server.handle_input(now, &syn(11, b"more"));
    assert_eq!(rsts(&mut server), [(11, ErrorCode::StreamRefused)]);
    assert_eq!(server.stats().streams_refused, 1);
    let keys = accept_all(&mut server);
    assert_eq!(keys.len(), 4);
    let mut buf = vec![0u8; window as usize];
    assert_eq!(
        server.read(keys[0], &mut buf).unwrap(),
        Some(window as usize)
    );
    assert!(server.wants_input(), "drained below the budget: read again");
    server.handle_input(now, &syn(13, b"ok"));
    assert!(rsts(&mut server).is_empty());
    assert_eq!(accept_all(&mut server).len(), 1);
}

/// A budget shared by two sessions: when one holds it all, the other
/// refuses new streams and pauses; once memory is given back, the paused
/// session notices on its own timer (the one that freed memory may be on
/// another thread) and resumes.
#[test]
fn shared_budget_spans_sessions() {
    let budget = MemoryBudget::new(256 * 1024);
    let config = Config::default()
        .with_max_window(256 * 1024)
        .with_memory_budget(Some(budget.clone()));
    let now = Instant::now();
    let mut a = Session::new(Role::Server, config.clone());
    let mut b = Session::new(Role::Server, config);
    a.handle_input(now, &syn(3, &vec![1u8; 200 * 1024]));
    assert!(a.wants_input());
    assert!(budget.used() >= 200 * 1024);
    // B's stream needs a chunk that is not there: refused; its data would
    // go to an unknown stream and is drained.
    b.handle_input(now, &syn(3, &vec![2u8; 100 * 1024]));
    assert_eq!(rsts(&mut b), [(3, ErrorCode::StreamRefused)]);
    // A takes more and crosses the shared limit: A pauses.
    a.handle_input(now, &data(3, &vec![1u8; 56 * 1024 - 100]));
    assert!(!a.wants_input(), "the shared budget is used up");
    let retry = a
        .poll_timeout()
        .expect("a paused session retries on a timer");
    assert!(retry <= now + Duration::from_secs(1));
    // A's application reads everything: A resumes by itself.
    let k = accept_all(&mut a)[0];
    let mut buf = vec![0u8; 512 * 1024];
    assert!(a.read(k, &mut buf).unwrap().unwrap() > 0);
    a.handle_timeout(retry);
    assert!(a.wants_input());
    // B now gets its stream.
    b.handle_input(now, &syn(5, &vec![2u8; 100 * 1024]));
    assert!(rsts(&mut b).is_empty());
    assert_eq!(accept_all(&mut b).len(), 1);
    drop(a);
    drop(b);
    assert_eq!(
        budget.used(),
        0,
        "sessions give everything back when dropped"
    );
}

/// A paused session whose memory is freed elsewhere resumes on its timer.
#[test]
fn paused_session_resumes_when_another_frees_the_shared_budget() {
    let budget = MemoryBudget::new(192 * 1024);
    let config = Config::default()
        .with_max_window(256 * 1024)
        .with_memory_budget(Some(budget.clone()));
    let now = Instant::now();
    let mut a = Session::new(Role::Server, config.clone());
    let mut b = Session::new(Role::Server, config);
    a.handle_input(now, &syn(3, &vec![1u8; 100 * 1024]));
    b.handle_input(now, &syn(3, &[1u8; 10]));
    b.handle_input(now, &data(3, &vec![1u8; 100 * 1024]));
    assert!(!b.wants_input());
    let retry = b.poll_timeout().unwrap();
    b.handle_timeout(retry);
    assert!(!b.wants_input(), "still no room");
    drop(a);
    let retry = b.poll_timeout().unwrap();
    b.handle_timeout(retry);
    assert!(b.wants_input(), "room again: input resumes");
    assert_eq!(b.poll_timeout(), None);
}

/// Drained receive buffers are not kept by their streams: after 200 streams
/// each received and read 64 KiB, the session holds at most its small pool
/// of spares, not 200 buffers.
#[test]
fn drained_buffers_are_given_back() {
    const N: u32 = 200;
    let config = Config::default()
        .with_max_streams(1000)
        .with_accept_backlog(1000);
    let now = Instant::now();
    let mut server = Session::new(Role::Server, config);
    let payload = vec![3u8; 64 * 1024];
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(syn(3 + 2 * i, &payload));
    }
    let before = live();
    server.handle_input(now, &wire);
    let keys = accept_all(&mut server);
    let full = live() - before;
    assert!(full >= i64::from(N) * 64 * 1024, "{full}");
    let mut buf = vec![0u8; 64 * 1024];
    for &k in &keys {
        assert_eq!(server.read(k, &mut buf).unwrap(), Some(64 * 1024));
    }
    // The session's outgoing WNDINCs and our own buffer are small; stream
    // buffers beyond the pool of spares (2 MiB at most) are freed.
    let held = live() - before - buf.len() as i64;
    println!("heap after draining {N} streams: {held} bytes (was {full})");
    assert!(held < 3 << 20, "{held} bytes still held after draining");
    assert_eq!(server.buffered_input(), 0);
    assert!(server.memory_held() <= N as usize * STREAM_COST + (2 << 20));
    // Streams released: the session keeps no spares at all.
    for k in keys {
        server.release(k);
    }
    let mut wire = Vec::new();
    for i in 0..N {
        frame::encode_data(&mut wire, 3 + 2 * i, &[], frame::FLAG_FIN).unwrap();
    }
    server.handle_input(now, &wire);
    assert_eq!(server.stream_count(), 0);
    assert_eq!(server.memory_held(), 0);
}

/// Many streams trading small messages allocate nothing per message once
/// warm: a drained small receive buffer stays with its stream instead of
/// cycling through the session's (bounded) pool of spares. With 1,024
/// streams and a pool of 64, most streams used to allocate and free a
/// buffer for every message (rpc/1024 in the bench).
#[test]
fn small_messages_on_many_streams_allocate_nothing_once_warm() {
    const N: u32 = 1024;
    let config = Config::default()
        .with_max_streams(2 * N as usize)
        .with_accept_backlog(2 * N as usize);
    let now = Instant::now();
    let mut server = Session::new(Role::Server, config);
    let request = [7u8; 64];
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(syn(3 + 2 * i, &request));
    }
    server.handle_input(now, &wire);
    let keys = accept_all(&mut server);
    assert_eq!(keys.len(), N as usize);
    let mut buf = [0u8; 64];
    let mut round = |server: &mut Session| {
        for &k in &keys {
            assert_eq!(server.read(k, &mut buf).unwrap(), Some(64));
            assert_eq!(buf, request);
        }
    };
    round(&mut server);
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(data(3 + 2 * i, &request));
    }
    // One warm round, then count.
    server.handle_input(now, &wire);
    round(&mut server);
    let before = allocs();
    for _ in 0..3 {
        server.handle_input(now, &wire);
        round(&mut server);
    }
    let made = allocs() - before;
    println!("allocations for 3 rounds of {N} small messages: {made}");
    assert_eq!(made, 0, "{made} allocations for {} messages", 3 * N);
    // The kept buffers are small: the session's accounting is per stream.
    assert!(server.memory_held() <= N as usize * STREAM_COST + (2 << 20));
}
