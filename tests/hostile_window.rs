//! Peers that send more DATA on a stream than its receive window, against
//! `muxado serve` on the engine driver (the built binary, over loopback).
//!
//! The reference (`/work/shared/muxado-protocol.md` §4): once a stream's
//! unread bytes would exceed the window, the stream is reset with
//! RST FlowControlError (3). It is a stream error, not a session one: no
//! GOAWAY, and the session's other streams go on. Each case checks that the
//! RST comes back within a bounded time (never a stall), that other streams
//! of the same session and other clients are still served, and that the
//! server's memory stays bounded.
//!
//! The peer here reads everything the server sends (on a thread of its own)
//! and writes from another thread, so that neither direction can block the
//! other: a stall seen here is the server's.
#![cfg(feature = "cli")]

mod rawpeer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use muxado::frame::FLAG_FIN;
use muxado::ErrorCode;
use rawpeer::*;

const T: Duration = Duration::from_secs(10);
/// The window of `muxado serve` (the library's default, 256 KiB).
const W: usize = 256 * 1024;
/// RSS bound (KiB) for a debug-built server that must not buffer overruns.
const SMALL_RSS_KIB: u64 = 96 * 1024;

fn flow_control_error() -> u32 {
    ErrorCode::FlowControlError.to_u32()
}

/// One connection with a writer thread (so a write that blocks because the
/// server stopped reading cannot hold the test up) and a reader thread that
/// hands every frame the server sends to the test.
struct Conn {
    /// Shut down on drop, which ends the reader thread.
    tcp: std::net::TcpStream,
    to_writer: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<thread::JoinHandle<()>>,
    frames: mpsc::Receiver<Got>,
    /// RST code per stream (the first one).
    rst: HashMap<u32, u32>,
    /// DATA payload bytes per stream, and the payloads of streams asked to
    /// keep them.
    data: HashMap<u32, u64>,
    kept: HashMap<u32, Vec<u8>>,
    fin: HashMap<u32, bool>,
    /// Credit (WNDINC) received per stream.
    credit: HashMap<u32, u64>,
    goaway: Option<(u32, String)>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let c = Raw::connect(addr);
        let mut w = Raw::from_tcp(c.tcp.try_clone().unwrap());
        let (to_writer, bytes) = mpsc::channel::<Vec<u8>>();
        let writer = thread::spawn(move || {
            for b in bytes {
                // The server may have closed the connection: stop quietly,
                // the test reads what it said.
                if w.try_send(&b).is_err() {
                    return;
                }
            }
        });
        let (tx, frames) = mpsc::channel();
        let tcp = c.tcp.try_clone().unwrap();
        let mut r = c;
        thread::spawn(move || loop {
            match r.next_frame(Duration::from_secs(60)) {
                Ok(g) => {
                    if tx.send(g).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        });
        Conn {
            tcp,
            to_writer: Some(to_writer),
            writer: Some(writer),
            frames,
            rst: HashMap::new(),
            data: HashMap::new(),
            kept: HashMap::new(),
            fin: HashMap::new(),
            credit: HashMap::new(),
            goaway: None,
        }
    }

    fn send(&self, bytes: Vec<u8>) {
        self.to_writer
            .as_ref()
            .unwrap()
            .send(bytes)
            .expect("writer thread alive");
    }

    fn keep(&mut self, id: u32) {
        self.kept.insert(id, Vec::new());
    }

    fn add(&mut self, g: Got) {
        match g {
            Got::Rst { id, code } => {
                self.rst.entry(id).or_insert(code);
            }
            Got::Data { id, flags, payload } => {
                *self.data.entry(id).or_default() += payload.len() as u64;
                if let Some(k) = self.kept.get_mut(&id) {
                    k.extend_from_slice(&payload);
                }
                if flags & FLAG_FIN != 0 {
                    self.fin.insert(id, true);
                }
            }
            Got::GoAway { code, debug, .. } => self.goaway = Some((code, debug)),
            Got::WndInc { id, inc } => *self.credit.entry(id).or_default() += u64::from(inc),
            Got::Unknown { .. } => {}
        }
    }

    /// Takes frames until `done` holds; false if `limit` passes first.
    fn wait(&mut self, limit: Duration, done: impl Fn(&Conn) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(g) => self.add(g),
                Err(_) => return done(self),
            }
        }
        true
    }

    /// Waits for the RST of stream `id` and returns its code; panics, naming
    /// the stall, if none comes within `limit`.
    fn expect_rst(&mut self, id: u32, limit: Duration, what: &str) -> u32 {
        let started = Instant::now();
        if !self.wait(limit, |c| c.rst.contains_key(&id) || c.goaway.is_some()) {
            panic!(
                "{what}: no RST on stream {id} within {limit:?}: the server stalled \
                 (RSTs {:?}, data {:?})",
                self.rst, self.data
            );
        }
        assert!(
            self.goaway.is_none(),
            "{what}: GOAWAY {:?} instead of a stream reset",
            self.goaway
        );
        eprintln!("{what}: RST on stream {id} after {:?}", started.elapsed());
        self.rst[&id]
    }

    /// Opens stream `id` with `msg` and FIN, and returns what the server
    /// sends back on it up to its FIN (echo: the message; sink: the count).
    fn request(&mut self, id: u32, msg: &[u8], what: &str) -> Vec<u8> {
        self.keep(id);
        self.send([syn(id, msg), fin(id)].concat());
        let ok = self.wait(T, |c| {
            c.fin.contains_key(&id) || c.rst.contains_key(&id) || c.goaway.is_some()
        });
        assert!(ok, "{what}: stream {id} not answered within {T:?}");
        assert!(
            !self.rst.contains_key(&id) && self.goaway.is_none(),
            "{what}: stream {id} reset ({:?}) or GOAWAY ({:?})",
            self.rst.get(&id),
            self.goaway
        );
        self.kept.remove(&id).unwrap()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.to_writer = None;
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
        if let Some(w) = self.writer.take() {
            // The writer ends once its queue is empty or the socket fails; a
            // writer blocked on a server that stopped reading is left to the
            // process's end rather than hanging the test.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !w.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// What `mode` answers to a request of `msg`: the echo, or the sink's count.
fn answer(mode: &str, msg: &[u8]) -> Vec<u8> {
    match mode {
        "echo" => msg.to_vec(),
        _ => (msg.len() as u64).to_be_bytes().to_vec(),
    }
}

/// A fresh client's request on a fresh connection is answered in full.
fn other_client(addr: SocketAddr, mode: &str, msg: &[u8]) {
    let mut c = Conn::connect(addr);
    assert_eq!(
        c.request(3, msg, "another client"),
        answer(mode, msg),
        "another client's {mode} request"
    );
}

fn serve(mode: &str, extra: &[&str]) -> Serve {
    serve_on("uring", mode, extra)
}

/// `muxado serve` on `driver`. The engine driver needs io_uring: without
/// it the test says so (scripts/test-no-uring.sh counts it as could-not-run)
/// rather than failing on a server that exits at once. (The probe runs on a
/// thread of its own: see hostile_engine.rs.)
fn serve_on(driver: &str, mode: &str, extra: &[&str]) -> Serve {
    if driver == "uring" {
        thread::spawn(muxado::engine::probe)
            .join()
            .expect("probe thread")
            .expect("io_uring unavailable: `muxado serve --driver uring` cannot run");
    }
    let mut args = vec!["--driver", driver];
    args.extend_from_slice(extra);
    Serve::start(mode, &args)
}

/// One DATA frame longer than the window (by one byte, and by 4 MiB), on a
/// fresh stream and on one that already holds data: RST FlowControlError at
/// once, the payload drained, the session's other streams and other clients
/// served. Echo and sink.
#[test]
fn one_frame_past_the_window() {
    for mode in ["echo", "sink"] {
        let mut s = serve(mode, &[]);
        let base = s.fds();
        let mut c = Conn::connect(s.addr);
        // Past it by one byte, in the SYN frame itself.
        c.send(syn(3, &vec![1u8; W + 1]));
        assert_eq!(
            c.expect_rst(3, T, &format!("{mode}: SYN of W+1")),
            flow_control_error()
        );
        // Past it by a lot: 4 MiB in one frame, after a first small frame.
        c.send([syn(5, b"x"), data(5, 0, &vec![2u8; 4 << 20])].concat());
        assert_eq!(
            c.expect_rst(5, T, &format!("{mode}: 4 MiB frame")),
            flow_control_error()
        );
        // The session goes on: a new stream on it is served in full.
        let msg: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        assert_eq!(c.request(7, &msg, mode), answer(mode, &msg));
        assert!(c.goaway.is_none(), "{mode}: {:?}", c.goaway);
        still_serving(&mut s, c, base, mode);
    }
}

/// After a case: another client is served, and once `c` is gone the server
/// is alive, back to its `base` descriptors, and its peak RSS stayed small.
fn still_serving(s: &mut Serve, c: Conn, base: usize, mode: &str) {
    other_client(s.addr, mode, b"hello");
    drop(c);
    s.assert_alive();
    s.assert_fds_back(base, mode);
    assert!(
        s.hwm_kib() < SMALL_RSS_KIB,
        "{mode}: peak RSS {} KiB",
        s.hwm_kib()
    );
}

/// The echo server stops reading a stream once it cannot write its echo (the
/// peer here never credits it), so the peer's frames pile up to the window:
/// many small frames past it get RST FlowControlError, and no more than the
/// window was echoed.
#[test]
fn many_frames_past_the_window() {
    let mut s = serve("echo", &[]);
    let base = s.fds();
    let mut c = Conn::connect(s.addr);
    c.send(syn(3, b"start"));
    let frame = vec![3u8; 16 * 1024];
    // 4 MiB in 16 KiB frames: 16 windows' worth.
    for _ in 0..(4 << 20) / frame.len() {
        c.send(data(3, 0, &frame));
    }
    assert_eq!(c.expect_rst(3, T, "16 KiB frames"), flow_control_error());
    let echoed = c.data.get(&3).copied().unwrap_or(0);
    assert!(
        echoed <= W as u64,
        "{echoed} bytes echoed on a window of {W}"
    );
    let msg = vec![9u8; 50_000];
    assert_eq!(c.request(5, &msg, "after the overrun"), msg);
    still_serving(&mut s, c, base, "echo");
}

/// 64 streams at once, half of them overrunning their windows and half
/// well-behaved, interleaved: each overrun gets its RST, each other stream
/// its full answer. Echo and sink.
#[test]
fn many_streams_some_past_the_window() {
    for mode in ["echo", "sink"] {
        let mut s = serve(mode, &[]);
        let base = s.fds();
        let mut c = Conn::connect(s.addr);
        let msg = vec![5u8; 20_000];
        let mut bad = Vec::new();
        let mut good = Vec::new();
        let mut wire = Vec::new();
        for k in 0..64 {
            let id = client_id(k);
            if k % 2 == 0 {
                wire.extend(syn(id, b"a"));
                wire.extend(data(id, 0, &vec![4u8; W]));
                bad.push(id);
            } else {
                c.keep(id);
                wire.extend(syn(id, &msg));
                wire.extend(fin(id));
                good.push(id);
            }
        }
        c.send(wire);
        let ok = c.wait(T, |c| {
            bad.iter().all(|id| c.rst.contains_key(id))
                && good.iter().all(|id| c.fin.contains_key(id))
        });
        assert!(
            ok,
            "{mode}: stalled: {} of {} RSTs, {} of {} answers",
            bad.iter().filter(|id| c.rst.contains_key(id)).count(),
            bad.len(),
            good.iter().filter(|id| c.fin.contains_key(id)).count(),
            good.len()
        );
        for id in &bad {
            assert_eq!(c.rst[id], flow_control_error(), "{mode}: stream {id}");
        }
        for id in &good {
            assert!(!c.rst.contains_key(id), "{mode}: good stream {id} reset");
            assert_eq!(c.kept[id], answer(mode, &msg), "{mode}: stream {id}");
        }
        still_serving(&mut s, c, base, mode);
    }
}

/// The stall: a session over its memory budget stops reading its transport
/// until the application drains its streams. The echo application cannot:
/// it waits for the peer's credit (WNDINC), which sits unread in that same
/// transport. A peer that keeps to its windows fills 32 streams (more than
/// the session's budget of 4 MiB), then overruns one of them: the reference
/// resets it with FlowControlError at once, and once the peer credits the
/// echoes, the session must move again. Other clients are served meanwhile.
/// On the engine driver, and on the tokio driver (the same protocol core).
#[test]
fn overrun_while_the_session_is_over_its_budget() {
    overrun_over_budget("uring");
}

#[test]
fn overrun_while_the_session_is_over_its_budget_tokio() {
    overrun_over_budget("tokio");
}

fn overrun_over_budget(driver: &str) {
    // --max-memory 8M: each session may hold 4 MiB (and all together 4 MiB).
    let mut s = serve_on(driver, "echo", &["--max-memory", "8M"]);
    let base = s.fds();
    let mut c = Conn::connect(s.addr);
    const N: u32 = 32;
    let ids: Vec<u32> = (0..N).map(client_id).collect();
    let window = vec![6u8; W];
    // 1. A window on each stream, eight streams at a time (all at once
    // would be more than the budget, and new streams would be refused): the
    // server echoes it (its send window to us is a window too) and credits
    // it back (in quarter windows, so up to a quarter may stay uncredited;
    // more where it grew the window).
    for batch in ids.chunks(8) {
        let mut wire = Vec::new();
        for &id in batch {
            wire.extend(syn(id, &window[..1]));
            wire.extend(data(id, 0, &window[1..]));
        }
        c.send(wire);
        let ok = c.wait(T, |c| {
            !c.rst.is_empty()
                || batch.iter().all(|id| {
                    c.data.get(id).copied().unwrap_or(0) >= W as u64
                        && c.credit.get(id).copied().unwrap_or(0) >= (W - W / 4) as u64
                })
        });
        assert!(
            ok,
            "first windows: echoed {:?}, credit {:?}",
            c.data, c.credit
        );
        assert!(c.rst.is_empty(), "first windows: {:?}", c.rst);
    }
    assert!(c.rst.is_empty(), "{:?}", c.rst);
    // 2. As much again on each as the credit allows: the echoes wait for
    // our credit, which we withhold, so the server holds over 6 MiB of
    // unread data, more than its budget: it stops reading.
    let mut wire = Vec::new();
    for &id in &ids {
        let mut left = c.credit[&id] as usize;
        while left > 0 {
            let n = left.min(W);
            wire.extend(data(id, 0, &window[..n]));
            left -= n;
        }
    }
    let sent: HashMap<u32, u64> = ids
        .iter()
        .map(|id| (*id, W as u64 + c.credit[id]))
        .collect();
    c.send(wire);
    thread::sleep(Duration::from_millis(500));
    eprintln!("second windows sent; server RSS {} KiB", s.rss_kib());
    // 3. Stream 3 overruns: one frame longer than the window.
    c.send(data(ids[0], 0, &vec![7u8; W + 1]));
    assert_eq!(
        c.expect_rst(ids[0], T, "overrun over the budget"),
        flow_control_error()
    );
    // A small client on another connection is served meanwhile.
    other_client(s.addr, "echo", b"small");
    // 4. The peer credits every other stream and finishes it: the echoes go
    // on, and every stream either echoes all its bytes or is reset with
    // FlowControlError (bytes the session could not hold).
    let mut credit = Vec::new();
    for &id in &ids[1..] {
        credit.extend(wndinc(id, (4 * W) as u32));
        credit.extend(fin(id));
    }
    c.send(credit);
    let done = c.wait(T, |c| {
        ids[1..]
            .iter()
            .all(|id| c.rst.contains_key(id) || (c.fin.contains_key(id) && c.data[id] >= sent[id]))
    });
    let resets: Vec<u32> = ids[1..]
        .iter()
        .copied()
        .filter(|id| c.rst.contains_key(id))
        .collect();
    assert!(
        done,
        "the session stalled after the credit: echoed {:?}, resets {:?}",
        c.data, c.rst
    );
    for id in &resets {
        assert_eq!(c.rst[id], flow_control_error(), "stream {id}");
    }
    for id in &ids[1..] {
        if !resets.contains(id) {
            assert_eq!(c.data[id], sent[id], "stream {id} echoed");
        }
    }
    eprintln!(
        "after the credit: {} streams echoed in full, {} reset",
        N as usize - 1 - resets.len(),
        resets.len()
    );
    // Drained: the same session serves a new stream in full.
    let msg = vec![8u8; 10_000];
    assert_eq!(c.request(client_id(100), &msg, "after the drain"), msg);
    assert!(c.goaway.is_none(), "{:?}", c.goaway);
    drop(c);
    s.assert_alive();
    s.assert_fds_back(base, "over the budget");
    assert!(s.hwm_kib() < SMALL_RSS_KIB, "peak RSS {} KiB", s.hwm_kib());
}
