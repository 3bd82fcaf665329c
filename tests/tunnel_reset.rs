//! Errors cross the tunnel as errors, endings as endings: a connection that
//! is reset on one side (origin or client), or whose agent dies, is reset on
//! the other side too (a TCP RST, so a truncated response is never mistaken
//! for a complete one), while a clean close stays a FIN and a half-close.
//!
//! The tests reset a connection without `SO_LINGER`: closing a socket that
//! still holds received bytes nobody read makes the kernel send an RST. Each
//! scenario is first played directly (no tunnel), to show that it produces
//! the ending the tunnel must then pass on. Every wait is bounded.
#![cfg(feature = "cli")]

mod tunnel_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tunnel_support::*;

/// How a reader saw a connection end.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// `read` returned 0: a FIN.
    Eof,
    /// `ECONNRESET`: an RST.
    Reset,
    /// Anything else (a timeout included), with the error.
    Other(String),
}

/// Reads until the connection ends; the bytes and how it ended.
fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, Ending) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ending::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, Ending::Reset),
            Err(e) => return (got, Ending::Other(e.to_string())),
        }
    }
}

/// An origin on its own thread running `serve` for each connection, which
/// reports to the test through `tx`.
fn origin_with<T: Send + 'static>(serve: fn(TcpStream, &Sender<T>)) -> (SocketAddr, Receiver<T>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = l.local_addr().unwrap();
    let (tx, rx) = channel();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let tx = tx.clone();
            thread::spawn(move || serve(c, &tx));
        }
    });
    (addr, rx)
}

fn direct(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the origin");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Waits until `s` has at least one received byte that nobody read.
fn wait_unread(s: &TcpStream) {
    let mut one = [0u8; 1];
    assert_eq!(s.peek(&mut one).expect("peek"), 1, "the peer closed early");
}

/// The next report of an origin, within a bound.
fn next<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("the origin never reported {what}"))
}

/// Waits until the gateway's `name` metric reads `want` (it is counted once
/// the connection's splice has ended, just after the client saw the end).
fn wait_metric(t: &Tunnel, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = t.scrape();
        let got = metric(&m, name);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {got}, not {want}:\n{m}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

const REQUEST: &[u8] = b"GET /big HTTP/1.1\r\n\r\n";
const HALF: usize = 48 * 1024;

/// Reads the request, leaves the extra bytes that follow it unread, sends
/// half a response and closes: an RST (the unread bytes), like a backend
/// that crashes mid-response.
fn half_response_then_reset(mut c: TcpStream, _: &Sender<()>) {
    let mut req = vec![0u8; REQUEST.len()];
    if c.read_exact(&mut req).is_err() {
        return;
    }
    wait_unread(&c);
    let _ = c.write_all(&pattern(7, HALF));
}

fn truncated_response(mut s: TcpStream) {
    let mut out = REQUEST.to_vec();
    out.extend_from_slice(b"and more bytes the backend never reads");
    s.write_all(&out).unwrap();
    let (got, ending) = read_until_end(&mut s);
    assert_eq!(
        ending,
        Ending::Reset,
        "a truncated response ({} of {HALF} bytes) ended without a reset",
        got.len()
    );
    assert!(got.len() <= HALF && got[..] == pattern(7, HALF)[..got.len()]);
}

#[test]
fn a_backend_reset_mid_response_resets_the_client() {
    let (addr, _rx) = origin_with(half_response_then_reset);
    truncated_response(direct(addr));
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(addr, &[], 1);
    // Several in a row: the session outlives its streams' resets.
    for _ in 0..3 {
        truncated_response(t.connect());
    }
    wait_metric(&t, "muxado_tunnel_connections_reset_total", 3);
}

/// Greets (so the client holds an unread byte), then reads to the end and
/// reports the byte count and the ending.
fn greet_then_read(mut c: TcpStream, tx: &Sender<(usize, Ending)>) {
    if c.write_all(b"!").is_err() {
        return;
    }
    let (got, ending) = read_until_end(&mut c);
    let _ = tx.send((got.len(), ending));
}

/// Uploads 256 KiB and resets (its unread greeting) while the origin is
/// still reading.
fn upload_then_reset(mut s: TcpStream) {
    wait_unread(&s);
    s.write_all(&pattern(3, 256 * 1024)).unwrap();
    drop(s);
}

#[test]
fn a_client_reset_mid_upload_resets_the_origin() {
    let (addr, rx) = origin_with(greet_then_read);
    upload_then_reset(direct(addr));
    let (n, ending) = next(&rx, "the direct connection's end");
    assert_eq!(ending, Ending::Reset, "direct: after {n} bytes");
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(addr, &[], 1);
    for i in 0..3 {
        upload_then_reset(t.connect());
        let (n, ending) = next(&rx, "the tunneled connection's end");
        assert_eq!(
            ending,
            Ending::Reset,
            "connection {i}: the origin saw a reset client's upload end like this after {n} bytes"
        );
    }
    wait_metric(&t, "muxado_tunnel_connections_reset_total", 3);
}

/// Sends until the connection breaks, and reports how it ended: what the
/// first failed read or send said. One thread does both, without blocking:
/// after an RST the first call that fails takes the error and a second one
/// would then read a plain EOF, so a reader thread racing a writer thread
/// could report an RST as a FIN.
fn firehose_reporting(mut c: TcpStream, tx: &Sender<Ending>) {
    c.set_nonblocking(true).unwrap();
    let chunk = vec![0x5Au8; 16 * 1024];
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    let ending = loop {
        let read = match c.read(&mut buf) {
            Ok(0) => break Ending::Eof,
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break Ending::Reset,
            Err(e) => break Ending::Other(format!("read: {e}")),
        };
        let sent = match c.write(&chunk) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break Ending::Reset,
            Err(e) => break Ending::Other(format!("send: {e}")),
        };
        if Instant::now() > deadline {
            break Ending::Other("still open after 20 s".into());
        }
        if !read && !sent {
            thread::sleep(Duration::from_millis(1));
        }
    };
    let _ = tx.send(ending);
}

/// Reads 1 MiB of a download and resets (the rest is unread).
fn download_then_reset(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1 << 20 {
        let n = s.read(&mut buf).expect("the download");
        assert!(n > 0, "the download ended early");
        got += n;
    }
    wait_unread(&s);
    drop(s);
}

#[test]
fn a_client_reset_mid_download_resets_the_origin() {
    let (addr, rx) = origin_with(firehose_reporting);
    download_then_reset(direct(addr));
    assert_eq!(next(&rx, "the direct connection's end"), Ending::Reset);
    let mut t = gateway(&[]);
    let _agent = t.agent_connected(addr, &[], 1);
    for i in 0..3 {
        download_then_reset(t.connect());
        assert_eq!(
            next(&rx, "the tunneled connection's end"),
            Ending::Reset,
            "connection {i}"
        );
    }
    wait_metric(&t, "muxado_tunnel_connections_reset_total", 3);
}

#[test]
fn a_killed_agent_resets_its_clients() {
    let (addr, _rx) = origin_with(firehose_reporting);
    let mut t = gateway(&[]);
    let mut agent = t.agent_connected(addr, &[], 1);
    let mut s = t.connect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1 << 20 {
        let n = s.read(&mut buf).expect("bytes through the tunnel");
        assert!(n > 0, "the download ended early");
        got += n;
    }
    agent.kill();
    let started = Instant::now();
    let (_, ending) = read_until_end(&mut s);
    assert_eq!(
        ending,
        Ending::Reset,
        "a download cut by the agent's death ended like this"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_metric(&t, "muxado_tunnel_connections_reset_total", 1);
}

/// Reads the request to the client's FIN, reports it, answers with 200 KB
/// and closes cleanly.
fn answer_after_fin(mut c: TcpStream, tx: &Sender<(Vec<u8>, Ending)>) {
    let (got, ending) = read_until_end(&mut c);
    let clean = ending == Ending::Eof;
    let _ = tx.send((got, ending));
    if clean {
        let _ = c.write_all(&pattern(11, 200_000));
        let _ = c.shutdown(Shutdown::Write);
    }
}

/// Answers at once and closes its side (FIN) first, then reads what the
/// client still sends, to its FIN, and reports it.
fn answer_first(mut c: TcpStream, tx: &Sender<(Vec<u8>, Ending)>) {
    let _ = c.write_all(&pattern(12, 200_000));
    let _ = c.shutdown(Shutdown::Write);
    let _ = tx.send(read_until_end(&mut c));
}

/// Passes before the fix as after it: the reset paths must not turn clean
/// endings (and half-closes, either side first) into resets.
#[test]
fn clean_endings_stay_clean() {
    let (after_fin, rx1) = origin_with(answer_after_fin);
    let (first, rx2) = origin_with(answer_first);
    let mut t = gateway(&[]);
    let _agent1 = t.agent_connected(after_fin, &[], 1);
    for i in 0..3u64 {
        let mut s = t.connect();
        let req = pattern(100 + i, 30_000);
        s.write_all(&req).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, ending) = read_until_end(&mut s);
        assert_eq!(ending, Ending::Eof, "connection {i}");
        assert!(
            got == pattern(11, 200_000),
            "connection {i}: the answer differs"
        );
        assert_eq!(
            next(&rx1, "the request"),
            (req, Ending::Eof),
            "connection {i}"
        );
    }
    // A second gateway, so that its only agent forwards to `first`.
    let mut t2 = gateway(&[]);
    let _agent2 = t2.agent_connected(first, &[], 1);
    for i in 0..3u64 {
        let mut s = t2.connect();
        let (got, ending) = read_until_end(&mut s);
        assert_eq!(ending, Ending::Eof, "connection {i}");
        assert!(
            got == pattern(12, 200_000),
            "connection {i}: the answer differs"
        );
        // The origin's FIN arrived; the client's direction still flows.
        let late = pattern(200 + i, 50_000);
        s.write_all(&late).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            next(&rx2, "the late upload"),
            (late, Ending::Eof),
            "connection {i}"
        );
    }
    for t in [&t, &t2] {
        wait_metric(t, "muxado_tunnel_connections_active", 0);
        wait_metric(t, "muxado_tunnel_connections_total", 3);
        wait_metric(t, "muxado_tunnel_connections_reset_total", 0);
    }
}
