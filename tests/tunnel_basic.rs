//! `muxado gateway` + `muxado agent` as processes over loopback: bytes both
//! ways, half-close, refusals, authentication, metrics, PROXY protocol.
#![cfg(feature = "cli")]

mod tunnel_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tunnel_support::*;

#[test]
fn every_byte_arrives_both_ways() {
    let origin = origin(echo);
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(origin.addr, &[], 1);
    let clients: Vec<_> = (0..4u64)
        .map(|i| {
            let s = t.connect();
            thread::spawn(move || {
                let data = pattern(i + 1, 3 * 1024 * 1024 + i as usize * 777);
                let back = echo_roundtrip(s, data.clone());
                assert_eq!(back.len(), data.len(), "connection {i}: length");
                assert!(back == data, "connection {i}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
}

/// The origin answers only after the client's FIN: the FIN must travel to
/// the origin, and the origin's FIN back.
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

/// What `speak_then_listen` read after its own FIN.
static HEARD: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

/// The origin speaks first, half-closes, then keeps reading to the client's FIN.
fn speak_then_listen(mut c: TcpStream) {
    let _ = c.write_all(b"hello from the origin");
    let _ = c.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    *HEARD.lock().unwrap() = Some(got);
}

#[test]
fn half_close_travels_end_to_end() {
    let counter = origin(count_then_answer);
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(counter.addr, &[], 1);
    let mut s = t.connect();
    s.write_all(&pattern(7, 100_000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer after our FIN");
    assert_eq!(answer, "got 100000");

    // The other way: the origin's FIN reaches us while we can still write.
    let speaker = origin(speak_then_listen);
    let mut t2 = gateway(&[]);
    let _agent2 = t2.agent_connected(speaker.addr, &[], 1);
    let mut s = t2.connect();
    let mut first = Vec::new();
    s.read_to_end(&mut first).expect("origin's bytes then EOF");
    assert_eq!(first, b"hello from the origin");
    s.write_all(b"after your FIN")
        .expect("writing after the origin's FIN");
    s.shutdown(Shutdown::Write).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(heard) = HEARD.lock().unwrap().clone() {
            assert_eq!(heard, b"after your FIN");
            break;
        }
        assert!(Instant::now() < deadline, "the origin never saw our FIN");
        thread::sleep(Duration::from_millis(10));
    }
    let m = t2.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_connections_total"), 1);
}

/// The next read fails with ECONNRESET within `limit`: a refused connection
/// is reset, so that it never reads as an empty but complete answer.
fn expect_reset(s: &mut std::net::TcpStream, limit: Duration) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a refused connection ended with {other:?}, not a reset"),
    }
}

#[test]
fn refused_origin_closes_the_public_connection_promptly() {
    let closed = free_addr(); // nothing listens there
    let mut t = gateway(&[]);
    let mut agent = t.agent_connected(closed, &[], 1);
    let mut s = t.connect();
    let start = Instant::now();
    expect_reset(&mut s, Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_secs(3));
    agent.wait_log("unreachable", Duration::from_secs(5));
}

#[test]
fn no_agent_means_refused_at_once() {
    let mut t = gateway(&[]);
    let mut s = t.connect();
    expect_reset(&mut s, Duration::from_secs(2));
    t.gateway
        .wait_log("no agent connected", Duration::from_secs(5));
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_refused_total"), 1);
    assert_eq!(metric(&m, "muxado_tunnel_connections_total"), 0);
}

#[test]
fn wrong_token_is_refused() {
    let origin = origin(echo);
    let mut t = gateway(&[]);
    let mut bad = t.agent(origin.addr, &[], "not-the-token");
    let status = bad.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "an agent with a wrong token exited 0");
    let log = bad.log_text();
    assert!(
        log.contains("refused our token") && log.contains("wrong token"),
        "no clear message on the agent:\n{log}"
    );
    t.gateway.wait_log("wrong token", Duration::from_secs(5));
    // No public connection reaches it.
    let mut s = t.connect();
    assert!(ends_within(&mut s, Duration::from_secs(2)));
    assert_eq!(
        origin.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_auth_failures_total"), 1);
    assert_eq!(metric(&m, "muxado_tunnel_agent_sessions"), 0);
}

#[test]
fn metrics_count_connections_and_bytes() {
    let origin = origin(count_then_answer);
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(origin.addr, &[], 1);
    let mut up = 0u64;
    let mut down = 0u64;
    for i in 0..5usize {
        let mut s = t.connect();
        let data = pattern(i as u64, 1000 * (i + 1));
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, format!("got {}", data.len()));
        up += data.len() as u64;
        down += answer.len() as u64;
    }
    // Counters are updated when each connection finishes: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = t.scrape();
        let done = metric(&m, "muxado_tunnel_connections_active") == 0
            && metric(&m, "muxado_tunnel_bytes_to_client_total") == down;
        if done || Instant::now() > deadline {
            assert_eq!(metric(&m, "muxado_tunnel_connections_total"), 5, "{m}");
            assert_eq!(metric(&m, "muxado_tunnel_connections_active"), 0, "{m}");
            assert_eq!(metric(&m, "muxado_tunnel_bytes_to_origin_total"), up, "{m}");
            assert_eq!(
                metric(&m, "muxado_tunnel_bytes_to_client_total"),
                down,
                "{m}"
            );
            assert_eq!(metric(&m, "muxado_tunnel_agent_sessions"), 1, "{m}");
            assert_eq!(metric(&m, "muxado_tunnel_refused_total"), 0, "{m}");
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a PROXY v2 header and answers with the source address it names.
fn proxy_origin(mut c: TcpStream) {
    let mut head = [0u8; 16];
    if c.read_exact(&mut head).is_err() {
        return;
    }
    let sig = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    if head[..12] != sig || head[12] != 0x21 || head[13] != 0x11 {
        let _ = c.write_all(b"bad header");
        return;
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut addrs = vec![0u8; len];
    if c.read_exact(&mut addrs).is_err() || len != 12 {
        return;
    }
    let src = format!(
        "{}.{}.{}.{}:{}",
        addrs[0],
        addrs[1],
        addrs[2],
        addrs[3],
        u16::from_be_bytes([addrs[8], addrs[9]])
    );
    let _ = c.write_all(src.as_bytes());
    let _ = c.shutdown(Shutdown::Write);
}

#[test]
fn proxy_protocol_names_the_public_client() {
    let origin = origin(proxy_origin);
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(origin.addr, &["--proxy-protocol"], 1);
    let mut s = t.connect();
    let me = s.local_addr().unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, me.to_string());
}

/// The tunnel protocol is the same on ngrok's crate over tokio (the
/// benchmark's `--runtime ngrok-tokio` peer): each side works with the other.
#[test]
fn interoperates_with_the_ngrok_tokio_peer() {
    let origin = origin(echo);
    // Our gateway, their agent.
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(origin.addr, &["--runtime", "ngrok-tokio"], 1);
    let data = pattern(11, 1 << 20);
    assert_eq!(echo_roundtrip(t.connect(), data.clone()), data);
    // Their gateway, our agent.
    let dir = TempDir::new("ngrok");
    let [agents, public] = free_addrs();
    let args: Vec<String> = [
        "gateway",
        "--runtime",
        "ngrok-tokio",
        "--agents",
        &agents.to_string(),
        "--expose",
        &format!("web={public}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gw = Proc::start("ngrok-gateway", &dir, &args, TOKEN);
    gw.wait_log("service web listening", Duration::from_secs(10));
    let mut t2 = Tunnel {
        dir,
        agents,
        public,
        metrics: free_addr(),
        gateway: gw,
    };
    let _agent2 = t2.agent(origin.addr, &[], TOKEN);
    t2.gateway
        .wait_log("connected (ngrok-tokio)", Duration::from_secs(10));
    assert_eq!(echo_roundtrip(t2.connect(), data.clone()), data);
}

/// Two gateway cores, two agent cores: the agent's sessions cover both
/// gateway cores, so no public connection lands on a core without a session.
#[test]
fn multi_core_gateway_serves_every_connection() {
    let origin = origin(echo);
    let mut t = gateway(&["--cores", "2"]);
    let mut agent = t.agent(origin.addr, &["--cores", "2"], TOKEN);
    agent.wait_log("core 0: connected to the gateway", Duration::from_secs(10));
    agent.wait_log("core 1: connected to the gateway", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&t.scrape(), "muxado_tunnel_agent_sessions") != 2 {
        assert!(Instant::now() < deadline, "{}", t.gateway.log_text());
        thread::sleep(Duration::from_millis(20));
    }
    for i in 0..40u64 {
        let data = pattern(i, 10_000);
        assert_eq!(echo_roundtrip(t.connect(), data.clone()), data, "conn {i}");
    }
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_refused_total"), 0, "{m}");
    assert_eq!(metric(&m, "muxado_tunnel_connections_total"), 40, "{m}");
}
