//! Soak: many checksummed sessions against `muxado serve --cores 2 --mode
//! echo`, with random stream resets, half-closes, GOAWAYs, session closes in
//! mid-transfer and clients killed (TCP reset, SO_LINGER 0).
//!
//! Every byte echoed back is checked against a seeded pattern at its offset,
//! on every stream, disrupted or not. A stream of an undisturbed session must
//! come back whole: any byte lost or corrupted, or any error on it, is a
//! failure. Errors on disrupted streams are expected and counted by kind.
//!
//! Duration: `SOAK_SECS` (default 3, the short run of `cargo test`). The
//! script `scripts/soak.sh MINUTES` runs it in release for longer. The
//! report gives bytes verified, errors by kind, and the server's RSS and
//! descriptors at start (after a warm-up), after each phase of the run (the
//! last is the end), each sampled with no session connected, and flags an
//! RSS change of more than 5% from start to end. `SOAK_PHASES` sets the
//! number of phases (default 10 from a minute on, else 2).
#![cfg(feature = "cli")]

mod rawpeer;

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use muxado::engine::{self, net::TcpStream};
use muxado::{Config, Error, ErrorCode, Session, Stream};
use rawpeer::*;

/// Wait before an idle RSS sample (see where it is used).
const SETTLE: Duration = Duration::from_millis(2500);

/// A stream that takes longer than this is a failure (a hang).
const STREAM_DEADLINE: Duration = Duration::from_secs(30);

// ---- data ----------------------------------------------------------------------

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The pattern of stream `seed` at `pos`: each byte depends on both, so a
/// loss, duplicate, reordering or mix-up between streams shows.
fn pattern(seed: u64, pos: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let p = pos + i as u64;
        *b = mix(seed ^ (p >> 3).wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes()
            [(p & 7) as usize];
    }
}

// ---- accounting ----------------------------------------------------------------

#[derive(Default, Debug)]
struct Stats {
    bytes_verified: u64,
    streams_ok: u64,
    sessions: u64,
    /// Expected errors (disruptions we caused), by kind.
    expected: BTreeMap<String, u64>,
    /// Lost or corrupted data, or errors on undisturbed streams.
    failures: BTreeMap<String, u64>,
    first_failures: Vec<String>,
}

impl Stats {
    fn expected(&mut self, kind: impl Into<String>) {
        *self.expected.entry(kind.into()).or_default() += 1;
    }
    fn fail(&mut self, kind: &str, detail: String) {
        *self.failures.entry(kind.to_string()).or_default() += 1;
        if self.first_failures.len() < 20 {
            self.first_failures.push(detail);
        }
    }
    fn merge(&mut self, o: Stats) {
        self.bytes_verified += o.bytes_verified;
        self.streams_ok += o.streams_ok;
        self.sessions += o.sessions;
        for (k, v) in o.expected {
            *self.expected.entry(k).or_default() += v;
        }
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.first_failures.extend(o.first_failures);
    }
}

fn kind(e: &Error) -> String {
    format!("{:?}", e.code())
}

// ---- one stream ----------------------------------------------------------------

/// What happened to one echoed stream.
enum Outcome {
    /// Everything written came back, every byte checked.
    Whole(u64),
    /// The stream failed; `verified` bytes came back correct first.
    Failed { verified: u64, error: Error },
    /// A byte came back wrong.
    Corrupt(String),
}

/// Writes `len` pattern bytes (half-closing after them) while reading the
/// echo, checking each byte. `reset_at`: reset the stream after writing that
/// many bytes instead.
async fn echo_stream(s: &mut Stream, seed: u64, len: u64, reset_at: Option<u64>) -> Outcome {
    s.set_read_deadline(Some(Instant::now() + STREAM_DEADLINE));
    s.set_write_deadline(Some(Instant::now() + STREAM_DEADLINE));
    let mut out = vec![0u8; 32 * 1024];
    let mut inb = vec![0u8; 32 * 1024];
    let mut want = vec![0u8; 32 * 1024];
    let (mut sent, mut recvd, mut fin_sent) = (0u64, 0u64, false);
    let mut pending: usize = 0; // bytes of `out` prepared but not yet written
    let mut pending_off: usize = 0;
    poll_fn(|cx| {
        // Writer half.
        while !fin_sent {
            if let Some(r) = reset_at {
                if sent >= r {
                    return Poll::Ready(match s.reset(ErrorCode::StreamCancelled) {
                        Ok(()) => Outcome::Failed {
                            verified: recvd,
                            error: Error::LocalReset(ErrorCode::StreamCancelled),
                        },
                        Err(error) => Outcome::Failed {
                            verified: recvd,
                            error,
                        },
                    });
                }
            }
            if sent == len {
                if let Err(error) = s.close_write() {
                    return Poll::Ready(Outcome::Failed {
                        verified: recvd,
                        error,
                    });
                }
                fin_sent = true;
                break;
            }
            if pending == 0 {
                let n = (len - sent).min(out.len() as u64) as usize;
                pattern(seed, sent, &mut out[..n]);
                pending = n;
                pending_off = 0;
            }
            match s.poll_write_slice(cx, &out[pending_off..pending_off + pending]) {
                Poll::Ready(Ok(n)) => {
                    pending -= n;
                    pending_off += n;
                    sent += n as u64;
                }
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Outcome::Failed {
                        verified: recvd,
                        error,
                    })
                }
                Poll::Pending => break,
            }
        }
        // Reader half.
        loop {
            match s.poll_read_slice(cx, &mut inb) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(if recvd == len {
                        Outcome::Whole(len)
                    } else {
                        Outcome::Corrupt(format!(
                            "echo ended after {recvd} of {len} bytes (seed {seed:#x})"
                        ))
                    });
                }
                Poll::Ready(Ok(n)) => {
                    pattern(seed, recvd, &mut want[..n]);
                    if inb[..n] != want[..n] || recvd + n as u64 > sent {
                        return Poll::Ready(Outcome::Corrupt(format!(
                            "wrong bytes at {recvd}..{} of {len} (seed {seed:#x})",
                            recvd + n as u64
                        )));
                    }
                    recvd += n as u64;
                }
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Outcome::Failed {
                        verified: recvd,
                        error,
                    })
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

// ---- one session ---------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Streams run to the end; some are reset by us; the session closes cleanly.
    Clean,
    /// Like Clean, with a GOAWAY sent by us in the middle (our streams go on).
    GoAway,
    /// The session is closed by us while its streams are in flight.
    CloseMidway,
}

async fn run_session(addr: SocketAddr, seed: u64, stats: Rc<std::cell::RefCell<Stats>>) {
    let mut rng = Rng(seed);
    let plan = match rng.below(100) {
        0..=69 => Plan::Clean,
        70..=84 => Plan::GoAway,
        _ => Plan::CloseMidway,
    };
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => {
            stats.borrow_mut().fail("connect", format!("connect: {e}"));
            return;
        }
    };
    let session = Session::client(tcp, Config::default());
    stats.borrow_mut().sessions += 1;
    let streams = 1 + rng.below(8);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let sseed = rng.next();
        // Sizes: mostly small, some past the window, a few of several MiB.
        let len = match rng.below(10) {
            0..=5 => rng.below(16 * 1024),
            6..=8 => rng.below(1 << 20),
            _ => rng.below(4 << 20),
        };
        let reset_at = rng.chance(10).then(|| rng.below(len + 1));
        let empty_half_close = rng.chance(5);
        let mut s = match session.open() {
            Ok(s) => s,
            Err(e) => {
                stats.borrow_mut().fail("open", format!("open: {e}"));
                continue;
            }
        };
        let st = stats.clone();
        let disturbed_session = matches!(plan, Plan::CloseMidway);
        tasks.push(engine::spawn(async move {
            let len = if empty_half_close { 0 } else { len };
            let out = echo_stream(&mut s, sseed, len, reset_at).await;
            let mut st = st.borrow_mut();
            match out {
                Outcome::Whole(n) => {
                    st.bytes_verified += n;
                    st.streams_ok += 1;
                    if empty_half_close {
                        st.expected("half-close before any data (ok)");
                    }
                }
                Outcome::Corrupt(d) => st.fail("lost or corrupted", format!("stream {i}: {d}")),
                Outcome::Failed { verified, error } => {
                    st.bytes_verified += verified;
                    if reset_at.is_some() && matches!(error, Error::LocalReset(_)) {
                        st.expected("stream reset by us");
                    } else if disturbed_session {
                        st.expected(format!("session closed by us: {}", kind(&error)));
                    } else {
                        st.fail(
                            &format!("error on an undisturbed stream: {}", kind(&error)),
                            format!("stream {i} ({len} bytes): {error}"),
                        );
                    }
                }
            }
        }));
    }
    match plan {
        Plan::Clean => {}
        Plan::GoAway => {
            engine::sleep(Duration::from_millis(rng.below(20))).await;
            if let Err(e) = session.go_away(ErrorCode::NoError, b"soak") {
                stats.borrow_mut().fail("go_away", format!("go_away: {e}"));
            } else {
                stats.borrow_mut().expected("GOAWAY sent by us");
            }
        }
        Plan::CloseMidway => {
            engine::sleep(Duration::from_millis(rng.below(30))).await;
            let _ = session.close();
            stats.borrow_mut().expected("session closed midway by us");
        }
    }
    for t in tasks {
        t.await;
    }
    let _ = session.close();
}

/// A client killed in mid-transfer: raw frames, some echo read, then a TCP
/// reset (SO_LINGER 0). Blocking, so it runs on its own thread.
fn killed_client(addr: SocketAddr, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut c = Raw::connect(addr);
    let chunk = vec![0x33u8; 1 + rng.below(100_000) as usize];
    for k in 0..1 + rng.below(6) as u32 {
        c.try_send(&syn(client_id(k), &chunk))
            .map_err(|e| format!("killed client write: {e}"))?;
    }
    let _ = tally_until(&mut c, Duration::from_millis(rng.below(50)), |t| {
        t.data.values().sum::<u64>() > 1000
    });
    set_linger_zero(&c.tcp);
    Ok(())
}

// ---- the run -------------------------------------------------------------------

/// Runs the workload for `secs` against `addr`: 2 engine threads, each with
/// `per_thread` sessions at a time, and a thread of killed clients.
fn run_load(addr: SocketAddr, secs: f64, seed: u64, per_thread: usize) -> Stats {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let total = Arc::new(Mutex::new(Stats::default()));
    let mut threads = Vec::new();
    for w in 0..2u64 {
        let total = total.clone();
        threads.push(thread::spawn(move || {
            let stats = Rc::new(std::cell::RefCell::new(Stats::default()));
            let st = stats.clone();
            engine::block_on(async move {
                let mut slots = Vec::new();
                for slot in 0..per_thread as u64 {
                    let st = st.clone();
                    slots.push(engine::spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let s = seed ^ mix((w << 48) | (slot << 32) | n);
                            run_session(addr, s, st.clone()).await;
                            n += 1;
                        }
                    }));
                }
                for s in slots {
                    s.await;
                }
            })
            .expect("io_uring engine available");
            let stats = Rc::try_unwrap(stats).expect("all tasks done").into_inner();
            total.lock().unwrap().merge(stats);
        }));
    }
    let killer_total = total.clone();
    threads.push(thread::spawn(move || {
        let mut st = Stats::default();
        let mut n = 0u64;
        while Instant::now() < deadline {
            match killed_client(addr, seed ^ mix(0xDEAD_0000 + n)) {
                Ok(()) => st.expected("client killed (TCP reset)"),
                Err(e) => st.fail("killed client", e),
            }
            n += 1;
            thread::sleep(Duration::from_millis(20));
        }
        killer_total.lock().unwrap().merge(st);
    }));
    for t in threads {
        t.join().expect("soak thread");
    }
    let stats = std::mem::take(&mut *total.lock().unwrap());
    stats
}

/// The server's memory at one moment, in KiB (from /proc/PID/status):
/// resident in all, and its anonymous (heap, stacks, buffers) and file
/// (the mapped binary and libraries) parts.
#[derive(Clone, Copy, Debug)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
}

fn mem(pid: u32) -> Mem {
    Mem {
        rss: status_kib(pid, "VmRSS:"),
        anon: status_kib(pid, "RssAnon:"),
        file: status_kib(pid, "RssFile:"),
    }
}

/// An idle checkpoint: waits for the server's descriptors to come back to
/// `fds_idle`, then for its trim ticks (see [`SETTLE`]), and samples its
/// memory with no session connected. With `MUXADO_MALLOC_INFO=PATH` (which
/// the server inherits: it then writes glibc's `malloc_info` there after
/// each trim), keeps a copy of that file as `PATH.NAME`.
fn idle_sample(s: &Serve, fds_idle: usize, name: &str) -> (usize, Mem) {
    let fds = s.wait_fds(fds_idle, Duration::from_secs(10));
    // The server hands freed memory back to the system within two of its
    // one-second trim ticks after sessions end: sample after them, every
    // time, so that all idle samples see the same settled state.
    thread::sleep(SETTLE);
    let m = mem(s.pid());
    if let Some(path) = std::env::var_os("MUXADO_MALLOC_INFO") {
        let mut copy = path.clone();
        copy.push(format!(".{name}"));
        if let Err(e) = std::fs::copy(&path, &copy) {
            println!("soak: WARNING: MUXADO_MALLOC_INFO set but not copied: {e}");
        }
    }
    (fds, m)
}

#[test]
fn soak() {
    raise_fd_limit();
    let secs: f64 = match std::env::var("SOAK_SECS") {
        Ok(v) => v.parse().expect("SOAK_SECS must be a number of seconds"),
        Err(_) => 3.0,
    };
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x50AC_0001);
    let per_thread: usize = std::env::var("SOAK_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    // The measured run is cut into phases with an idle checkpoint after
    // each, so that the idle RSS is seen all along the run: a plateau and a
    // leak look alike at two points, not at ten.
    let phases: u32 = std::env::var("SOAK_PHASES")
        .ok()
        .map(|v| v.parse().expect("SOAK_PHASES must be a whole number"))
        .unwrap_or(if secs >= 60.0 { 10 } else { 2 })
        .max(1);
    let mut s = Serve::start("echo", &["--cores", "2"]);
    let fds_idle = s.fds();
    let pid = s.pid();
    let fresh = mem(pid);
    // Warm-up: a tenth of the run (1 to 180 s), then the start sample, taken
    // with no session connected, like every later idle sample. The server
    // keeps spare 64 KiB echo buffers per core, up to a bound, as many as it
    // ever had in use at once: the pools grow with the highest concurrency
    // seen, fast at first, then by a buffer now and then (perf/soak.md: 13
    // buffers in the 30 s after a 30 s warm-up, 3 in the 4.5 minutes after
    // that). The start sample is taken once most of that growth is past;
    // the idle samples after every phase show whether it was.
    let warm = (secs / 10.0).clamp(1.0, 180.0);
    let mut stats = run_load(s.addr, warm, seed ^ 1, per_thread);
    let (fds_start, start) = idle_sample(&s, fds_idle, "start");
    let started = Instant::now();
    let phase_secs = secs / f64::from(phases);
    let mut loaded = Vec::new(); // RSS in the middle of each phase, MiB
    let mut idle = Vec::new(); // memory after each phase
    let mut fds_after = Vec::new();
    for p in 0..phases {
        let sampler = thread::spawn(move || {
            thread::sleep(Duration::from_secs_f64(phase_secs / 2.0));
            status_kib(pid, "VmRSS:") / 1024
        });
        let phase_seed = if p == 0 {
            seed
        } else {
            seed ^ mix(u64::from(p))
        };
        stats.merge(run_load(s.addr, phase_secs, phase_seed, per_thread));
        loaded.push(sampler.join().expect("RSS sampler"));
        s.assert_alive();
        let (fds, m) = idle_sample(&s, fds_idle, &format!("phase-{:02}", p + 1));
        println!(
            "soak: idle after phase {}/{phases}: RSS {} KiB (anon {}, file {}), fds {fds}",
            p + 1,
            m.rss,
            m.anon,
            m.file
        );
        fds_after.push(fds);
        idle.push(m);
    }
    let elapsed = started.elapsed();
    let end = *idle.last().expect("at least one phase");
    let fds_end = *fds_after.last().expect("at least one phase");
    let hwm = s.hwm_kib();
    let drift = (end.rss as f64 - start.rss as f64) / start.rss as f64 * 100.0;
    let flag = if drift.abs() > 5.0 {
        "  <-- FLAG: RSS start vs end differ by more than 5%"
    } else {
        ""
    };
    println!("soak: {:.0} s in {phases} phase(s) (+{warm:.0} s warm-up), seed {seed:#x}, {per_thread} sessions per thread x 2 threads + killed clients", elapsed.as_secs_f64());
    println!(
        "soak: bytes verified {} ({:.1} MB/s), streams whole {}, sessions {}",
        stats.bytes_verified,
        stats.bytes_verified as f64 / 1e6 / (elapsed.as_secs_f64() + warm),
        stats.streams_ok,
        stats.sessions
    );
    println!("soak: expected errors by kind:");
    for (k, v) in &stats.expected {
        println!("soak:   {v:>8}  {k}");
    }
    println!(
        "soak: failures (lost/corrupted/unexpected) by kind: {:?}",
        stats.failures
    );
    for f in &stats.first_failures {
        println!("soak:   {f}");
    }
    let idle_rss: Vec<u64> = idle.iter().map(|m| m.rss).collect();
    println!("soak: server RSS under load, mid-phase (MiB): {loaded:?}");
    println!("soak: server RSS idle after each phase (KiB): {idle_rss:?}");
    println!("soak: server fds idle {fds_idle}, start {fds_start}, after each phase {fds_after:?}");
    println!(
        "soak: server RSS fresh {} KiB (anon {}, file {}); start {} KiB (anon {}, file {})",
        fresh.rss, fresh.anon, fresh.file, start.rss, start.anon, start.file
    );
    println!(
        "soak: server RSS start {} KiB, end {} KiB ({drift:+.1}%; anon {} -> {}, file {} -> {}), peak {hwm} KiB{flag}",
        start.rss, end.rss, start.anon, end.anon, start.file, end.file
    );
    // SOAK_JSON=PATH: the same figures as JSON, for perf/.
    if let Ok(path) = std::env::var("SOAK_JSON") {
        let kib = |m: &Mem| serde_json::json!({ "rss": m.rss, "anon": m.anon, "file": m.file });
        let json = serde_json::json!({
            "seconds": elapsed.as_secs_f64(),
            "warmup_seconds": warm,
            "phases": phases,
            "seed": seed,
            "sessions_per_thread": per_thread,
            "bytes_verified": stats.bytes_verified,
            "streams_whole": stats.streams_ok,
            "sessions": stats.sessions,
            "expected_errors": stats.expected,
            "failures": stats.failures,
            "first_failures": stats.first_failures,
            "rss_under_load_mib": loaded,
            "idle_kib": {
                "fresh": kib(&fresh),
                "start": kib(&start),
                "after_each_phase": idle.iter().map(kib).collect::<Vec<_>>(),
            },
            "fds": { "idle": fds_idle, "start": fds_start, "after_each_phase": fds_after, "end": fds_end },
            "rss_kib": { "start": start.rss, "end": end.rss, "peak": hwm, "drift_percent": drift },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("writing SOAK_JSON {path}: {e}"));
    }
    assert!(
        stats.failures.is_empty(),
        "soak failures: {:?}\n{:#?}",
        stats.failures,
        stats.first_failures
    );
    assert!(
        stats.bytes_verified > 0 && stats.streams_ok > 0,
        "nothing was verified"
    );
    assert_eq!(fds_start, fds_idle, "server descriptors after the warm-up");
    for (p, fds) in fds_after.iter().enumerate() {
        assert_eq!(*fds, fds_idle, "server descriptors after phase {}", p + 1);
    }
}
