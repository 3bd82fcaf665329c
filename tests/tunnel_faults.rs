//! The tunnel when things go wrong: a killed agent, a restarted gateway, a
//! drain on SIGTERM, a stalled origin. Every wait is bounded.
#![cfg(feature = "cli")]

mod tunnel_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tunnel_support::*;

/// Sends bytes until the connection breaks.
fn firehose(mut c: TcpStream) {
    let chunk = vec![0x5Au8; 16 * 1024];
    while c.write_all(&chunk).is_ok() {}
}

#[test]
fn killed_agent_closes_connections_and_a_new_agent_serves() {
    let hose = origin(firehose);
    let echo_origin = origin(echo);
    let mut t = gateway(&[]);
    let mut agent = t.agent_connected(hose.addr, &[], 1);
    let mut s = t.connect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1 << 20 {
        got += s.read(&mut buf).expect("bytes through the tunnel");
    }
    agent.kill();
    assert!(
        ends_within(&mut s, Duration::from_secs(5)),
        "the public connection outlived its agent"
    );
    t.gateway
        .wait_log("disconnected (session 0)", Duration::from_secs(5));
    // A new agent (now forwarding to an echo origin) serves new connections.
    let _agent2 = t.agent_connected(echo_origin.addr, &[], 2);
    let data = pattern(3, 200_000);
    assert_eq!(echo_roundtrip(t.connect(), data.clone()), data);
}

#[test]
fn agent_survives_a_gateway_restart() {
    let origin = origin(echo);
    let mut t = gateway(&[]);
    let mut agent = t.agent_connected(origin.addr, &[], 1);
    let data = pattern(5, 100_000);
    assert_eq!(echo_roundtrip(t.connect(), data.clone()), data);
    t.gateway.kill();
    agent.wait_log("session to the gateway ended", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(300));
    t.gateway = start_gateway(&t.dir, t.agents, t.public, t.metrics, &[]);
    t.gateway.wait_log(
        "connected (core 0, session 0, a reconnect)",
        Duration::from_secs(15),
    );
    assert_eq!(echo_roundtrip(t.connect(), data.clone()), data);
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_agent_reconnects_total"), 1, "{m}");
    assert_eq!(metric(&m, "muxado_tunnel_agent_sessions"), 1, "{m}");
}

/// Reads to the client's FIN, answers with the count.
fn count_then_answer(mut c: TcpStream) {
    let mut n = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return,
        }
    }
    let _ = c.write_all(format!("got {n}").as_bytes());
    let _ = c.shutdown(Shutdown::Write);
}

#[test]
fn sigterm_drains_in_flight_connections() {
    let origin = origin(count_then_answer);
    let mut t = gateway(&["--drain-timeout", "10"]);
    let mut agent = t.agent_connected(origin.addr, &[], 1);
    let mut inflight = t.connect();
    inflight.write_all(&pattern(1, 5000)).unwrap();
    // Let the connection reach the origin before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.accepted.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the origin never got the connection"
        );
        thread::sleep(Duration::from_millis(10));
    }
    t.gateway.signal(SIGTERM);
    t.gateway.wait_log("draining", Duration::from_secs(5));
    agent.wait_log("the gateway is draining", Duration::from_secs(5));
    // New public connections are not accepted any more.
    thread::sleep(Duration::from_millis(200));
    match TcpStream::connect(t.public) {
        Err(_) => {}
        Ok(mut s) => assert!(ends_within(&mut s, Duration::from_secs(2))),
    }
    // The in-flight one finishes normally.
    inflight.write_all(&pattern(2, 5000)).unwrap();
    inflight.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    inflight.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 10000");
    let status = t.gateway.wait_exit(Duration::from_secs(5));
    assert!(
        status.success(),
        "gateway exit status after drain: {status}"
    );
    assert!(t.gateway.log_text().contains("drained; exiting"));
}

static STALLS: AtomicU64 = AtomicU64::new(0);

/// The first connection is never read (a stalled origin); the others echo.
fn stall_first(c: TcpStream) {
    if STALLS.fetch_add(1, Ordering::Relaxed) == 0 {
        thread::sleep(Duration::from_secs(30));
        drop(c);
    } else {
        echo(c);
    }
}

#[test]
fn a_stalled_origin_does_not_block_other_connections() {
    let origin = origin(stall_first);
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(origin.addr, &[], 1);
    let mut stalled = t.connect();
    stalled
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Fill every buffer on the way to the stalled origin.
    let chunk = vec![1u8; 64 * 1024];
    let mut pushed = 0usize;
    let fill_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < fill_until {
        match stalled.write(&chunk) {
            Ok(n) => pushed += n,
            Err(_) => break, // the write blocked: everything is full
        }
    }
    assert!(pushed > 0);
    // Other connections still flow, every byte checked.
    let start = Instant::now();
    for i in 0..20u64 {
        let data = pattern(100 + i, 256 * 1024);
        assert_eq!(echo_roundtrip(t.connect(), data.clone()), data, "conn {i}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "other connections were blocked"
    );
    drop(stalled);
}

#[test]
fn heartbeats_notice_a_frozen_peer() {
    let origin = origin(echo);
    let mut t = gateway(&[
        "--heartbeat-interval",
        "0.2",
        "--heartbeat-tolerance",
        "0.6",
    ]);
    let mut agent = t.agent_connected(
        origin.addr,
        &[
            "--heartbeat-interval",
            "0.2",
            "--heartbeat-tolerance",
            "0.6",
        ],
        1,
    );
    // A frozen gateway (its sockets stay open): the agent notices within
    // interval + tolerance and drops the session.
    t.gateway.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    agent.wait_log("no heartbeat answer", Duration::from_secs(5));
    assert!(frozen.elapsed() < Duration::from_secs(5));
    t.gateway.signal(libc::SIGCONT);
    // It comes back: the agent's new session is served again.
    t.gateway.wait_log("a reconnect", Duration::from_secs(15));
    let data = pattern(9, 50_000);
    assert_eq!(echo_roundtrip(t.connect(), data.clone()), data);
    // A frozen agent: the gateway notices and refuses public connections.
    agent.signal(libc::SIGSTOP);
    t.gateway
        .wait_log("no heartbeat answer", Duration::from_secs(5));
    t.gateway.wait_log("disconnected", Duration::from_secs(5));
    let mut s = t.connect();
    assert!(ends_within(&mut s, Duration::from_secs(2)));
    agent.signal(libc::SIGCONT);
}

/// A fast sender whose stream runs out of window must not starve the
/// session (this deadlocked when the splice received into the engine's
/// shared provided-buffer ring: iperf3 stalled, heartbeats timed out).
#[test]
fn a_fast_bulk_upload_does_not_stall_the_session() {
    let origin = origin(count_then_answer);
    let mut t = gateway(&["--heartbeat-interval", "1", "--heartbeat-tolerance", "2"]);
    let agent = t.agent_connected(
        origin.addr,
        &["--heartbeat-interval", "1", "--heartbeat-tolerance", "2"],
        1,
    );
    let total = 256usize << 20;
    let chunk = vec![0xA5u8; 1 << 20];
    let mut uploads = Vec::new();
    for _ in 0..2 {
        let mut s = t.connect();
        let chunk = chunk.clone();
        uploads.push(thread::spawn(move || {
            for _ in 0..total / chunk.len() {
                s.write_all(&chunk).expect("upload");
            }
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).expect("answer");
            answer
        }));
    }
    for u in uploads {
        assert_eq!(u.join().unwrap(), format!("got {total}"));
    }
    assert!(
        !agent.log_text().contains("no heartbeat answer"),
        "{}",
        agent.log_text()
    );
}

/// Origin connections the idle test's origin saw end.
static IDLE_ORIGIN_ENDED: AtomicU64 = AtomicU64::new(0);

fn echo_and_note_end(c: TcpStream) {
    echo(c);
    IDLE_ORIGIN_ENDED.fetch_add(1, Ordering::Relaxed);
}

/// One byte out, the same byte back, through the tunnel.
fn ping(s: &mut TcpStream, b: u8) {
    s.write_all(&[b]).expect("write through the tunnel");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).expect("the echo");
    assert_eq!(one[0], b);
}

#[test]
fn an_idle_public_connection_is_closed_on_both_sides() {
    let origin = origin(echo_and_note_end);
    let mut t = gateway_logging(&["--idle-timeout", "1"], "info,muxado::tunnel=debug");
    let _agent = t.agent_connected(origin.addr, &[], 1);
    let mut s = t.connect();
    // Traffic every 300 ms keeps it open well past the limit.
    let busy = Instant::now();
    let mut i = 0u8;
    let quiet = loop {
        ping(&mut s, i);
        // The echo is the last byte to move.
        let last = Instant::now();
        if busy.elapsed() > Duration::from_millis(2500) {
            break last;
        }
        i = i.wrapping_add(1);
        thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(IDLE_ORIGIN_ENDED.load(Ordering::Relaxed), 0);
    // Then silence: closed about a second after the last byte, on both
    // sides; the client gets a FIN (nothing was in flight), not an RST.
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let mut one = [0u8; 1];
    match s.read(&mut one) {
        Ok(0) => {}
        other => panic!("an idle connection ended with {other:?}, not a FIN"),
    }
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the idle limit"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while IDLE_ORIGIN_ENDED.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the origin side of an idle connection stayed open"
        );
        thread::sleep(Duration::from_millis(10));
    }
    t.gateway
        .wait_log("without traffic", Duration::from_secs(2));
    // Counted as closed, not as reset: its client got a FIN.
    let deadline = Instant::now() + Duration::from_secs(3);
    let m = loop {
        let m = t.scrape();
        if metric(&m, "muxado_tunnel_connections_active") == 0 {
            break m;
        }
        assert!(Instant::now() < deadline, "still active:\n{m}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        metric(&m, "muxado_tunnel_connections_reset_total"),
        0,
        "{m}"
    );
    // The tunnel itself is fine.
    let data = pattern(21, 100_000);
    assert_eq!(echo_roundtrip(t.connect(), data.clone()), data);
}

/// Waits until `origin` has accepted `n` connections.
fn wait_accepted(origin: &Origin, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.accepted.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "the origin never got connection {n}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn agent_sigterm_drains_in_flight_connections_and_exits() {
    let counter = origin(count_then_answer);
    let echo_origin = origin(echo);
    let mut t = gateway(&[]);
    let mut agent = t.agent_connected(counter.addr, &["--drain-timeout", "10"], 1);
    // A transfer in flight when the signal arrives.
    let mut inflight = t.connect();
    let first = pattern(31, 300_000);
    inflight.write_all(&first).unwrap();
    wait_accepted(&counter, 1);
    agent.signal(SIGTERM);
    let signalled = Instant::now();
    agent.wait_log("draining", Duration::from_secs(5));
    agent.wait_log("waiting for 1 connections", Duration::from_secs(5));
    // New public connections are not routed to the draining agent: with no
    // other agent they are closed at once.
    thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let mut s = t.connect();
        assert!(
            ends_within(&mut s, Duration::from_secs(2)),
            "a connection after the agent's GOAWAY was left hanging"
        );
    }
    t.gateway.wait_log(
        "is draining: no new connections go to it",
        Duration::from_secs(2),
    );
    assert_eq!(counter.accepted.load(Ordering::Relaxed), 1);
    // Another agent joins: new connections go to it, never to the draining one.
    let _other = t.agent_connected(echo_origin.addr, &[], 2);
    for i in 0..5u64 {
        let data = pattern(40 + i, 50_000);
        assert_eq!(echo_roundtrip(t.connect(), data.clone()), data, "conn {i}");
    }
    assert_eq!(counter.accepted.load(Ordering::Relaxed), 1);
    // The transfer in flight goes on and completes, every byte counted.
    let second = pattern(32, 700_000);
    inflight.write_all(&second).unwrap();
    inflight.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    inflight.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("got {}", first.len() + second.len()));
    // Then the agent exits 0, well within its deadline.
    let status = agent.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "agent exit status after drain: {status}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(agent.log_text().contains("core 0: drained"));
    t.gateway.wait_log("disconnected", Duration::from_secs(5));
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_agent_sessions"), 1, "{m}");
}

/// Never answers, never closes (until the test process ends).
fn hold(c: TcpStream) {
    thread::sleep(Duration::from_secs(60));
    drop(c);
}

#[test]
fn agent_drain_deadline_closes_what_is_left() {
    let holder = origin(hold);
    let mut t = gateway(&[]);
    let mut agent = t.agent_connected(holder.addr, &["--drain-timeout", "1"], 1);
    let mut stuck = t.connect();
    stuck.write_all(b"hello?").unwrap();
    wait_accepted(&holder, 1);
    agent.signal(SIGTERM);
    let signalled = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(5));
    let took = signalled.elapsed();
    assert!(status.success(), "agent exit status: {status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before its 1 s deadline"
    );
    assert!(
        agent
            .log_text()
            .contains("drain deadline passed with 1 connections"),
        "{}",
        agent.log_text()
    );
    assert!(
        ends_within(&mut stuck, Duration::from_secs(3)),
        "the public connection outlived the drained agent"
    );
}

/// New connections keep arriving while an agent drains and another serves:
/// the drain notice, its acknowledgement and only then the GOAWAY mean that
/// no connection is cut on the way (every byte of every one checked).
#[test]
fn no_connection_is_lost_while_an_agent_drains_under_load() {
    let origin = origin(echo);
    let mut t = gateway(&[]);
    let mut draining = t.agent_connected(origin.addr, &["--drain-timeout", "10"], 1);
    let _stays = t.agent_connected(origin.addr, &[], 2);
    let public = t.public;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = (0..4u64)
        .map(|h| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = TcpStream::connect(public).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let data = pattern(h * 1_000_000 + n, 4096 + (n as usize % 7) * 1000);
                    let back = echo_roundtrip(s, data.clone());
                    assert!(back == data, "hammer {h}, connection {n}: bytes differ");
                    n += 1;
                }
                n
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    draining.signal(SIGTERM);
    let status = draining.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "draining agent's exit status: {status}");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = hammers.into_iter().map(|h| h.join().expect("hammer")).sum();
    assert!(total > 20, "only {total} connections went through");
    let log = draining.log_text();
    assert!(
        !log.contains("did not acknowledge"),
        "the gateway never acknowledged the drain:\n{log}"
    );
    t.gateway.wait_log("is draining", Duration::from_secs(2));
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_refused_total"), 0, "{m}");
}
