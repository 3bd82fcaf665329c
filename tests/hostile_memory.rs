//! The memory targets of issue 8, against `muxado serve` with default
//! settings (`--nocapture` shows the figures).
//!
//! - a SYN flood of 100,000 streams on one connection, and one batched up to
//!   the stream limit: the server's peak RSS stays under 256 MB;
//! - a peer that never reads, with 2,000 streams each holding a window of
//!   data the server echoes: under 256 MB;
//! - within a few seconds of such a session ending, RSS is back under 96 MB;
//! - with `--max-memory 512M`, ten such sessions at once keep the whole
//!   process under 512 MB.
//!
//! One test at a time (a lock): each one loads the machine on its own.
#![cfg(feature = "cli")]

mod rawpeer;

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use muxado::ErrorCode;
use rawpeer::*;

const MIB: u64 = 1024;
const PEAK_LIMIT_KIB: u64 = 256 * MIB;
const AFTER_LIMIT_KIB: u64 = 96 * MIB;
/// "Within a few seconds" of the session's end.
const SETTLE: Duration = Duration::from_secs(5);
/// The stream limit of `muxado serve` (`max_streams` of its config).
const SERVE_STREAM_LIMIT: u32 = 1 << 16;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `frames` from a second thread while this one tallies what comes
/// back, until `done` holds (or 60 s without a frame).
fn flood(c: &mut Raw, frames: Vec<u8>, done: impl Fn(&Tally) -> bool) -> Tally {
    let mut w = Raw::from_tcp(c.tcp.try_clone().unwrap());
    let writer = thread::spawn(move || {
        for chunk in frames.chunks(256 * 1024) {
            w.send(chunk);
        }
    });
    let t = tally_until(c, Duration::from_secs(60), done);
    writer.join().expect("flood writer");
    t
}

/// Called once the hostile session has ended: waits up to [`SETTLE`] for
/// RSS to fall under 96 MB, prints the figures, then checks the peak
/// (`hwm`, taken before the end), the descriptors, and the RSS after.
fn check_after(s: &Serve, what: &str, base_fds: usize, hwm: u64) {
    let after = s.wait_rss_under(AFTER_LIMIT_KIB, SETTLE);
    eprintln!(
        "{what}: peak RSS {hwm} KiB, {} s after the end {after} KiB",
        SETTLE.as_secs()
    );
    assert!(
        hwm < PEAK_LIMIT_KIB,
        "{what}: peak RSS {hwm} KiB (target < 256 MB)"
    );
    s.assert_fds_back(base_fds, what);
    assert!(
        after < AFTER_LIMIT_KIB,
        "{what}: RSS {after} KiB {SETTLE:?} after the session ended (target < 96 MB)"
    );
}

#[test]
fn syn_flood_100k_streams_one_connection() {
    let _g = lock();
    let mut s = Serve::start("echo", &[]);
    let base = s.fds();
    let rss0 = s.rss_kib();
    const N: u32 = 100_000;
    let mut c = Raw::connect(s.addr);
    let mut frames = Vec::new();
    for k in 0..N {
        frames.extend_from_slice(&syn(client_id(k), &[k as u8]));
    }
    // Streams stay open (no FIN): past the limit they are refused.
    let t = flood(&mut c, frames, |t| {
        t.data.len() as u64
            + t.rst_count(ErrorCode::StreamRefused)
            + t.rst_count(ErrorCode::AcceptQueueFull)
            >= u64::from(N)
    });
    let refused = t.rst_count(ErrorCode::StreamRefused) + t.rst_count(ErrorCode::AcceptQueueFull);
    let hwm = s.hwm_kib();
    eprintln!(
        "SYN flood of {N}: {} echoed, {refused} refused ({:?}); RSS {rss0} KiB -> peak {hwm} KiB",
        t.data.len(),
        t.rsts
    );
    assert!(t.end.is_none() && t.goaway.is_none(), "{t:?}");
    assert_eq!(t.data.len() as u64 + refused, u64::from(N));
    assert!(
        t.data.len() as u32 <= SERVE_STREAM_LIMIT,
        "more streams than the limit"
    );
    // Others are served while the flooded session holds its streams.
    well_behaved_echo(s.addr, 1);
    s.assert_alive();
    drop(c);
    check_after(&s, "SYN flood of 100,000", base, hwm);
}

/// Streams opened in batches that fill the stream limit exactly (65,536 at
/// once, then the remaining 34,464), each batch echoed and closed before the
/// next: 100,000 streams, none refused. Within a batch the SYNs go in waves
/// of 4,096, each wave echoed before the next, so the accept backlog
/// (16,384 in `muxado serve`) never refuses any either.
#[test]
fn syn_batches_up_to_the_stream_limit() {
    let _g = lock();
    let mut s = Serve::start("echo", &[]);
    let base = s.fds();
    const N: u32 = 100_000;
    const WAVE: u32 = 4_096;
    let mut c = Raw::connect(s.addr);
    let mut start = 0;
    while start < N {
        let end = (start + SERVE_STREAM_LIMIT).min(N);
        let mut wave = start;
        while wave < end {
            let wave_end = (wave + WAVE).min(end);
            let mut frames = Vec::new();
            for k in wave..wave_end {
                frames.extend_from_slice(&syn(client_id(k), &[k as u8]));
            }
            let n = u64::from(wave_end - wave);
            let t = flood(&mut c, frames, |t| {
                t.data.len() as u64 + t.rsts.values().sum::<u64>() >= n
            });
            assert!(t.end.is_none() && t.goaway.is_none(), "{t:?}");
            assert!(
                t.rsts.is_empty(),
                "streams refused within the limit: {:?} (wave {wave}..{wave_end})",
                t.rsts
            );
            wave = wave_end;
        }
        let open_hwm = s.hwm_kib();
        let mut fins = Vec::new();
        for k in start..end {
            fins.extend_from_slice(&fin(client_id(k)));
        }
        let n = u64::from(end - start);
        let t = flood(&mut c, fins, |t| t.fins >= n);
        assert!(t.end.is_none() && t.goaway.is_none(), "{t:?}");
        eprintln!(
            "batch {start}..{end}: {n} streams open at once, echoed and closed; peak RSS {open_hwm} KiB"
        );
        start = end;
    }
    well_behaved_echo(s.addr, 2);
    s.assert_alive();
    let hwm = s.hwm_kib();
    drop(c);
    check_after(&s, "SYN batches up to the stream limit", base, hwm);
}

/// One session that opens 2,000 streams, sends a full window (256 KiB) on
/// each for the server to echo, and never reads its socket. The writes may
/// block once the server stops reading (that is what a budget does); they
/// time out instead of failing the test.
fn never_reading_session(addr: std::net::SocketAddr, streams: u32) -> Raw {
    let c = Raw::connect(addr);
    c.tcp
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let window = vec![0x3Cu8; 256 * 1024];
    let mut tcp = c.tcp.try_clone().unwrap();
    use std::io::Write;
    for k in 0..streams {
        let id = client_id(k);
        let ok = tcp.write_all(&syn(id, &window[..1])).is_ok()
            && tcp.write_all(&data(id, 0, &window[1..])).is_ok();
        if !ok {
            eprintln!("never-reading session: writes blocked after {k} streams");
            break;
        }
    }
    c
}

#[test]
fn never_reading_peer_2000_streams() {
    let _g = lock();
    let mut s = Serve::start("echo", &[]);
    let base = s.fds();
    let started = Instant::now();
    let c = never_reading_session(s.addr, 2_000);
    thread::sleep(Duration::from_secs(1));
    well_behaved_echo(s.addr, 3);
    s.assert_alive();
    let hwm = s.hwm_kib();
    eprintln!(
        "never-reading peer, 2,000 x 256 KiB in {:?}: RSS {} KiB, peak {hwm} KiB",
        started.elapsed(),
        s.rss_kib()
    );
    drop(c);
    check_after(&s, "never-reading peer, 2,000 streams", base, hwm);
}

#[test]
fn ten_never_reading_sessions_under_max_memory() {
    let _g = lock();
    let mut s = Serve::start("echo", &["--max-memory", "512M"]);
    let base = s.fds();
    let addr = s.addr;
    let sessions: Vec<_> = (0..10)
        .map(|_| thread::spawn(move || never_reading_session(addr, 2_000)))
        .collect();
    let conns: Vec<Raw> = sessions
        .into_iter()
        .map(|h| h.join().expect("session thread"))
        .collect();
    thread::sleep(Duration::from_secs(1));
    well_behaved_echo(s.addr, 4);
    s.assert_alive();
    let hwm = s.hwm_kib();
    eprintln!("ten never-reading sessions with --max-memory 512M: peak {hwm} KiB");
    drop(conns);
    let after = s.wait_rss_under(AFTER_LIMIT_KIB, SETTLE);
    eprintln!(
        "ten sessions: {} s after the end {after} KiB",
        SETTLE.as_secs()
    );
    assert!(hwm < 512 * MIB, "peak RSS {hwm} KiB over --max-memory 512M");
    s.assert_fds_back(base, "ten never-reading sessions");
    assert!(
        after < AFTER_LIMIT_KIB,
        "RSS {after} KiB after the sessions ended"
    );
}

/// The same flood three times on one server, each session ended before the
/// next: if the memory a flood takes were leaked rather than kept for reuse
/// by the allocator, RSS would grow with each round.
#[test]
fn repeated_syn_floods_do_not_accumulate() {
    let _g = lock();
    let mut s = Serve::start("echo", &[]);
    let base = s.fds();
    const N: u32 = 100_000;
    let mut after = Vec::new();
    for round in 0..3 {
        let mut c = Raw::connect(s.addr);
        let mut frames = Vec::new();
        for k in 0..N {
            frames.extend_from_slice(&syn(client_id(k), &[k as u8]));
        }
        let t = flood(&mut c, frames, |t| {
            t.data.len() as u64 + t.rsts.values().sum::<u64>() >= u64::from(N)
        });
        assert!(
            t.end.is_none() && t.goaway.is_none(),
            "round {round}: {t:?}"
        );
        drop(c);
        s.assert_fds_back(base, "after a flood");
        thread::sleep(Duration::from_secs(1));
        after.push(s.rss_kib());
        eprintln!(
            "flood round {round}: {} accepted, RSS after {} KiB, peak so far {} KiB",
            t.data.len(),
            s.rss_kib(),
            s.hwm_kib()
        );
    }
    s.assert_alive();
    assert!(
        after[2] <= after[0] + 32 * MIB,
        "RSS grows with each flood (KiB after each round: {after:?})"
    );
}
