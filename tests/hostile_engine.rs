//! Hostile raw peers against `muxado::Session` servers on the engine, in
//! process, with small limits so that the backlog and the stream cap are
//! reached with a few hundred SYNs. The server side also reports how each of
//! its sessions ended (`Session::wait`), so the code the session died with is
//! checked on both ends.
//!
//! The tests of this binary run one at a time (a lock), because they count
//! this process's descriptors.

mod rawpeer;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use muxado::engine::{self, net::TcpListener};
use muxado::{Config, ErrorCode, Session, SessionEnd, Stream};
use rawpeer::*;

const T: Duration = Duration::from_secs(10);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// An echo server on an engine core in its own thread. It serves `conns`
/// connections, then returns once all their sessions have ended, so that
/// every descriptor it opened is closed when [`EngineServer::join`] returns.
struct EngineServer {
    addr: SocketAddr,
    /// How each session ended, in the order they ended.
    ends: mpsc::Receiver<SessionEnd>,
    /// While false, sessions do not accept streams (to fill the backlog).
    accepting: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

async fn echo(mut stream: Stream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = stream.close_write();
}

impl EngineServer {
    fn start(config: Config, conns: usize) -> EngineServer {
        // Said here, where the test fails: a failure inside the server thread
        // would only show as a closed channel. The probe's ring lives on a
        // thread of its own, so its teardown (kernel task work) never
        // interrupts this thread's blocking socket reads with EINTR.
        thread::spawn(engine::probe)
            .join()
            .expect("probe thread")
            .expect("io_uring unavailable: this engine test cannot run");
        let (tx, ends) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        let accepting = Arc::new(AtomicBool::new(true));
        let acc = accepting.clone();
        let thread = thread::spawn(move || {
            engine::block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let mut sessions = Vec::new();
                for _ in 0..conns {
                    let (tcp, _) = listener.accept().await.expect("accept");
                    let session = Session::server(tcp, config.clone());
                    let (tx, acc) = (tx.clone(), acc.clone());
                    sessions.push(engine::spawn(async move {
                        let s2 = session.clone();
                        let acceptor = engine::spawn(async move {
                            loop {
                                while !acc.load(Ordering::Relaxed) {
                                    engine::sleep(Duration::from_millis(5)).await;
                                }
                                match s2.accept().await {
                                    Ok(st) => drop(engine::spawn(echo(st))),
                                    Err(_) => break,
                                }
                            }
                        });
                        let end = session.wait().await;
                        let _ = tx.send(end);
                        acceptor.await;
                    }));
                }
                drop(listener);
                for s in sessions {
                    s.await;
                }
            })
            .expect("io_uring engine available");
        });
        let addr = addr_rx.recv_timeout(T).expect("engine server listening");
        EngineServer {
            addr,
            ends,
            accepting,
            thread: Some(thread),
        }
    }

    fn next_end(&self) -> SessionEnd {
        self.ends
            .recv_timeout(T)
            .expect("a server session ended in time")
    }

    /// Waits for the server thread (all its sessions ended) within `T`.
    fn join(mut self) {
        let t = self.thread.take().unwrap();
        let deadline = Instant::now() + T;
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "engine server did not finish");
            thread::sleep(Duration::from_millis(10));
        }
        t.join().expect("engine server thread");
    }
}

impl Drop for EngineServer {
    fn drop(&mut self) {
        // A failing test leaves the thread blocked in accept; it dies with
        // the process. Nothing to do on the normal path (joined).
    }
}

fn small() -> Config {
    Config::default()
        .with_accept_backlog(16)
        .with_max_streams(64)
        .with_reset_linger(Duration::from_millis(200))
}

/// SYNs past the accept backlog get RST AcceptQueueFull (9); past the stream
/// cap, RST StreamRefused (5). The session survives both; the queued and
/// accepted streams echo; closing them frees room for new ones.
#[test]
fn syn_flood_past_backlog_and_stream_cap() {
    let _g = lock();
    let fds0 = open_fds();
    let srv = EngineServer::start(small(), 2);
    srv.accepting.store(false, Ordering::Relaxed);
    let mut c = Raw::connect(srv.addr);

    // 1. Nobody accepts: 16 are queued, the other 84 refused (AcceptQueueFull).
    let mut frames = Vec::new();
    for k in 0..100 {
        frames.extend_from_slice(&syn(client_id(k), &[k as u8]));
    }
    c.send(&frames);
    let t = tally_until(&mut c, T, |t| t.rsts.values().sum::<u64>() >= 84);
    assert_eq!(t.rst_count(ErrorCode::AcceptQueueFull), 84, "{t:?}");
    assert!(
        t.data.is_empty(),
        "nothing accepted yet, nothing echoed: {t:?}"
    );

    // 2. Accepting: the 16 queued streams echo.
    srv.accepting.store(true, Ordering::Relaxed);
    let t = tally_until(&mut c, T, |t| t.data.len() >= 16);
    assert_eq!(t.data.len(), 16, "{t:?}");
    assert!(t.rsts.is_empty(), "{t:?}");

    // 3. Past the cap: 64 - 16 more are accepted, the rest get StreamRefused.
    // (In batches of 8, answered before the next, so that the backlog of 16
    // is never what refuses them.)
    let mut t = Tally::default();
    for b in 0..(100 / 4) {
        let mut frames = Vec::new();
        for k in 100 + 4 * b..100 + 4 * (b + 1) {
            frames.extend_from_slice(&syn(client_id(k), &[k as u8]));
        }
        c.send(&frames);
        let want = 4 * (b as u64 + 1);
        while t.data.len() as u64 + t.rsts.values().sum::<u64>() < want {
            t.add(c.next_frame(T).expect("an answer to each SYN"));
        }
    }
    assert_eq!(t.data.len(), 48, "{t:?}");
    assert_eq!(t.rst_count(ErrorCode::StreamRefused), 52, "{t:?}");
    assert_eq!(t.rsts.len(), 1, "only StreamRefused: {t:?}");

    // 4. Closing the open streams makes room again: a new stream echoes.
    let mut fins = Vec::new();
    for k in (0..16).chain(100..148) {
        fins.extend_from_slice(&fin(client_id(k)));
    }
    c.send(&fins);
    let t = tally_until(&mut c, T, |t| t.fins >= 64);
    assert_eq!(t.fins, 64, "{t:?}");
    assert_eq!(c.echo(client_id(1000), b"room again", T), b"room again");

    // Meanwhile a second client is served normally.
    well_behaved_echo(srv.addr, 7);
    drop(c);
    let ends = [srv.next_end(), srv.next_end()];
    for end in &ends {
        assert_eq!(end.local.code(), ErrorCode::PeerEof, "{end:?}");
    }
    srv.join();
    assert_eq!(open_fds(), fds0, "descriptors after the server stopped");
}

/// A peer that provokes replies (DATA on unknown streams, each answered with
/// RST StreamClosed) but never reads them: once the queued control frames
/// pass `max_send_buffer + max_control_backlog`, the session gives up with
/// GOAWAY EnhanceYourCalm (10) instead of buffering without bound.
#[test]
fn non_reader_provoking_resets_gets_enhance_your_calm() {
    let _g = lock();
    let fds0 = open_fds();
    let cfg = Config::default()
        .with_max_send_buffer(16 * 1024)
        .with_max_control_backlog(16 * 1024);
    let srv = EngineServer::start(cfg, 2);
    let mut c = Raw::connect(srv.addr);
    // Every frame provokes a 12-byte RST; 2 M of them are 24 MB of replies,
    // more than loopback socket buffers can absorb.
    let mut w = Raw::from_tcp(c.tcp.try_clone().unwrap());
    let writer = thread::spawn(move || {
        let mut batch = Vec::with_capacity(1 << 20);
        let mut sent = 0u32;
        while sent < 2_000_000 {
            batch.clear();
            for k in sent..sent + 100_000 {
                frame_data_unknown(&mut batch, client_id(k));
            }
            sent += 100_000;
            if w.try_send(&batch).is_err() {
                return sent; // the server closed the connection: expected
            }
        }
        sent
    });
    let sent = writer.join().expect("writer");
    // Now read: RSTs, then the GOAWAY, then the end.
    let t = tally_until(&mut c, T, |t| t.goaway.is_some());
    let (code, debug) = t
        .goaway
        .clone()
        .unwrap_or_else(|| panic!("no GOAWAY: {t:?}"));
    eprintln!(
        "non-reader: {} RSTs then GOAWAY({code}, {debug:?}) after {sent} frames written",
        t.rst_count(ErrorCode::StreamClosed)
    );
    assert_eq!(code, ErrorCode::EnhanceYourCalm.to_u32(), "{debug}");
    c.expect_closed(T);
    drop(c);
    let end = srv.next_end();
    assert_eq!(end.local.code(), ErrorCode::EnhanceYourCalm, "{end:?}");
    well_behaved_echo(srv.addr, 8);
    assert_eq!(srv.next_end().local.code(), ErrorCode::PeerEof);
    srv.join();
    assert_eq!(open_fds(), fds0, "descriptors after the server stopped");
}

fn frame_data_unknown(out: &mut Vec<u8>, id: u32) {
    out.extend_from_slice(&data(id, 0, b"x"));
}

/// Bad frames kill the session with the reference's code, seen on both ends:
/// the GOAWAY the raw peer reads and the error `Session::wait` reports.
#[test]
fn bad_frames_end_the_session_with_the_same_code_on_both_ends() {
    let _g = lock();
    let fds0 = open_fds();
    let mut wnd0 = raw_header(4, 2, 0, 3).to_vec();
    wnd0.extend_from_slice(&0x8000_0000u32.to_be_bytes());
    let mut rst3 = raw_header(3, 0, 0, 3).to_vec();
    rst3.extend_from_slice(&[0; 3]);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        ([syn(3, b"x"), wnd0].concat(), ErrorCode::ProtocolError),
        (rst3, ErrorCode::FrameSizeError),
        (syn(2, b"even"), ErrorCode::ProtocolError),
        (
            [syn(3, b"a"), syn(3, b"b")].concat(),
            ErrorCode::ProtocolError,
        ),
    ];
    let srv = EngineServer::start(Config::default(), cases.len() + 1);
    for (bytes, want) in &cases {
        let mut c = Raw::connect(srv.addr);
        c.send(bytes);
        let (code, debug) = c.expect_goaway(T);
        assert_eq!(code, want.to_u32(), "{bytes:02x?}: {debug}");
        c.expect_closed(T);
        let end = srv.next_end();
        assert_eq!(end.local.code(), *want, "{end:?}");
    }
    // A peer killed mid-transfer (TCP reset): the session ends, nothing leaks.
    let mut c = Raw::connect(srv.addr);
    c.send(&syn(3, &[1u8; 100_000]));
    let _ = tally_until(&mut c, T, |t| t.data.values().sum::<u64>() > 0);
    set_linger_zero(&c.tcp);
    drop(c);
    let end = srv.next_end();
    eprintln!("session of a reset peer ended with {:?}", end.local);
    srv.join();
    assert_eq!(open_fds(), fds0, "descriptors after the server stopped");
}

/// In process, the cases that must *not* end the session: WNDINC credit past
/// 2^31−1 (no overflow check in the reference: the stream goes on), and a
/// DATA header of 0xFFFFFF bytes (RST FlowControlError, the payload drained,
/// then silence: the session waits, there is no idle timeout).
#[test]
fn wndinc_overflow_and_max_length_header_keep_the_session() {
    let _g = lock();
    let fds0 = open_fds();
    let srv = EngineServer::start(Config::default(), 3);
    let mut c = Raw::connect(srv.addr);
    c.send(&syn(3, b"abc"));
    for _ in 0..4 {
        c.send(&wndinc(3, 0x7FFF_FFFF));
    }
    c.send(&data(3, 0, &[9u8; 100_000]));
    c.send(&fin(3));
    let t = tally_until(&mut c, T, |t| t.fins >= 1);
    assert_eq!(t.data.get(&3), Some(&100_003), "{t:?}");
    assert!(t.rsts.is_empty() && t.goaway.is_none(), "{t:?}");

    let mut m = Raw::connect(srv.addr);
    m.send(&raw_header(0xFF_FFFF, 1, 2, 3));
    m.send(&[1u8; 4096]);
    assert_eq!(m.expect_rst(3, T), ErrorCode::FlowControlError.to_u32());
    match m.next_frame(Duration::from_millis(700)) {
        Err(End::Timeout) => {}
        other => panic!("after the reset, silence expected: {other:?}"),
    }
    // Both sessions are alive: a third client is served, the first echoes again.
    well_behaved_echo(srv.addr, 9);
    assert_eq!(c.echo(5, b"still alive", T), b"still alive");
    drop((c, m));
    for _ in 0..3 {
        let end = srv.next_end();
        assert_eq!(end.local.code(), ErrorCode::PeerEof, "{end:?}");
    }
    srv.join();
    assert_eq!(open_fds(), fds0, "descriptors after the server stopped");
}

/// A window overrun on a session over its memory budget. The peer keeps to
/// its windows on 24 streams until the echo server holds more than its
/// 512 KiB budget (each echo waits for credit the peer withholds), so the
/// session pauses its input; then it overruns stream 3. The pause frees
/// nothing (the echoes wait for that credit, behind the pause), so after
/// `max_pause` (1 s) the session reads on: the overrun gets RST
/// FlowControlError, the credit reaches the echoes, and every other stream
/// either echoes all its bytes or is reset with FlowControlError (DATA the
/// session could not hold). It was a stall: no answer, ever.
#[test]
fn overrun_on_a_session_over_its_budget_is_answered() {
    let _g = lock();
    let fds0 = open_fds();
    const WND: usize = 64 * 1024;
    let cfg = Config::default()
        .with_max_window(WND as u32)
        .with_max_auto_window(WND as u32)
        .with_max_session_memory(512 * 1024);
    let srv = EngineServer::start(cfg, 2);
    let mut c = Raw::connect(srv.addr);
    let mut w = Raw::from_tcp(c.tcp.try_clone().unwrap());
    let ids: Vec<u32> = (0..24).map(client_id).collect();
    // 1. One window per stream, four streams at a time (all at once would
    // be more than the budget: new streams refused): echoed in full (the
    // server's send window is a window too) and credited back, but for less
    // than a quarter window.
    for batch in ids.chunks(4) {
        let mut wire = Vec::new();
        for &id in batch {
            wire.extend(syn(id, &[1]));
            wire.extend(data(id, 0, &[1u8; WND - 1]));
        }
        w.send(&wire);
        let t = tally_until(&mut c, T, |t| {
            batch
                .iter()
                .all(|id| t.data.get(id).copied().unwrap_or(0) >= WND as u64)
        });
        assert!(
            t.rsts.is_empty() && t.end.is_none(),
            "batch {batch:?}: {t:?}"
        );
    }
    // 2. Three quarters of a window more (within the credit): the echoes
    // wait for our credit; the server holds more than its budget.
    let mut wire = Vec::new();
    for &id in &ids {
        wire.extend(data(id, 0, &[2u8; WND * 3 / 4]));
    }
    let writer = thread::spawn(move || {
        w.send(&wire);
        w
    });
    thread::sleep(Duration::from_millis(300));
    // 3. The overrun, from another thread (the server may not be reading).
    let mut w = writer.join().expect("writer");
    let writer = thread::spawn(move || {
        w.send(&data(client_id(0), 0, &[3u8; WND + 1]));
        w
    });
    let mut reset = HashMap::new();
    let mut finished = HashSet::new();
    let started = Instant::now();
    watch(&mut c, "the overrun", &mut reset, &mut finished, |r, _| {
        r.contains_key(&3)
    });
    eprintln!("overrun answered after {:?}", started.elapsed());
    assert_eq!(reset[&3], ErrorCode::FlowControlError.to_u32());
    // 4. Credit and FIN for every other stream: the session moves again.
    let mut w = writer.join().expect("writer");
    let mut wire = Vec::new();
    for &id in &ids[1..] {
        wire.extend(wndinc(id, 4 * WND as u32));
        wire.extend(fin(id));
    }
    let writer = thread::spawn(move || {
        w.send(&wire);
        w
    });
    let others = ids[1..].to_vec();
    watch(
        &mut c,
        "after the credit",
        &mut reset,
        &mut finished,
        |r, f| others.iter().all(|id| r.contains_key(id) || f.contains(id)),
    );
    let w = writer.join().expect("writer");
    eprintln!(
        "after the credit: {} streams finished, {} reset",
        finished.len(),
        reset.len() - 1
    );
    for (id, code) in &reset {
        assert_eq!(*code, ErrorCode::FlowControlError.to_u32(), "stream {id}");
    }
    // Drained: the same session echoes a new stream; another client too.
    assert_eq!(c.echo(client_id(100), b"after", T), b"after");
    well_behaved_echo(srv.addr, 10);
    drop((c, w));
    for _ in 0..2 {
        let end = srv.next_end();
        assert_eq!(end.local.code(), ErrorCode::PeerEof, "{end:?}");
    }
    srv.join();
    assert_eq!(open_fds(), fds0, "descriptors after the server stopped");
}

/// Reads what the server sends until `done`, noting which streams were reset
/// (and with what code) and which finished (FIN); panics on a GOAWAY, or
/// naming the stall if `T` passes first.
fn watch(
    c: &mut Raw,
    what: &str,
    reset: &mut HashMap<u32, u32>,
    finished: &mut HashSet<u32>,
    done: impl Fn(&HashMap<u32, u32>, &HashSet<u32>) -> bool,
) {
    let deadline = Instant::now() + T;
    while !done(reset, finished) {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_frame(left) {
            Ok(Got::Rst { id, code }) => {
                reset.insert(id, code);
            }
            Ok(Got::Data { id, flags, .. }) if flags & muxado::frame::FLAG_FIN != 0 => {
                finished.insert(id);
            }
            Ok(Got::GoAway { code, debug, .. }) => panic!("{what}: GOAWAY({code}, {debug})"),
            Ok(_) => {}
            Err(e) => panic!("{what}: stalled ({e:?}); reset {reset:?}, finished {finished:?}"),
        }
    }
}
