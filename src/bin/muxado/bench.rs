//! `muxado bench`: the loopback multiplexing-overhead benchmark.
//!
//! Every scenario runs against every system in the same invocation, so each
//! figure is read as a ratio to the `tcp-uring` row (plain TCP on the same
//! engine): absolute numbers drift on shared machines, ratios taken side by
//! side do not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::serve::{HeartbeatOpts, Mode};
use crate::workload::{Measurement, Progress};
use crate::{peers, report, uring};

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 64 KiB writes into sink streams (1 and 64 streams): Gbit/s, fairness.
    Bulk,
    /// 64-byte request/response on echo streams (1, 64, 1024 streams).
    Rpc,
    /// 16 workers each opening a stream, writing 1 byte, half-closing and
    /// reading the echo: streams/s.
    Open,
    /// 1,000 concurrent sessions (connections), one rpc stream each.
    Sessions,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Rpc => "rpc",
            Scenario::Open => "open",
            Scenario::Sessions => "sessions",
        }
    }

    /// What the server does with each stream in this scenario.
    pub fn server_mode(self) -> Mode {
        match self {
            Scenario::Bulk => Mode::Sink,
            _ => Mode::Echo,
        }
    }

    fn default_streams(self) -> &'static [usize] {
        match self {
            Scenario::Bulk => &[1, 64],
            Scenario::Rpc => &[1, 64, 1024],
            Scenario::Open => &[16],
            Scenario::Sessions => &[1000],
        }
    }

    fn default_size(self) -> usize {
        match self {
            Scenario::Bulk => 64 * 1024,
            Scenario::Open => 1,
            _ => 64,
        }
    }
}

/// What carries the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// muxado-uring: streams of one muxado session on our engine.
    Muxado,
    /// One plain TCP connection per stream, on our engine (the reference).
    TcpUring,
    /// One plain TCP connection per stream, on tokio.
    TcpTokio,
    /// One plain TCP connection per stream, on tokio-uring.
    TcpTokioUring,
    /// ngrok's `muxado` crate on tokio.
    NgrokMuxado,
    /// rust-yamux on tokio.
    Yamux,
}

pub const ALL_SYSTEMS: &[System] = &[
    System::TcpUring,
    System::Muxado,
    System::TcpTokio,
    System::TcpTokioUring,
    System::NgrokMuxado,
    System::Yamux,
];

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Muxado => "muxado",
            System::TcpUring => "tcp-uring",
            System::TcpTokio => "tcp-tokio",
            System::TcpTokioUring => "tcp-tokio-uring",
            System::NgrokMuxado => "ngrok-muxado",
            System::Yamux => "yamux",
        }
    }

    fn on_engine(self) -> bool {
        matches!(self, System::Muxado | System::TcpUring)
    }

    /// Speaks muxado (can be a `--connect` client).
    pub fn speaks_muxado(self) -> bool {
        matches!(self, System::Muxado | System::NgrokMuxado)
    }
}

/// Where the client and the server run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Client on CPU 0, server on CPU 1.
    Split,
    /// Client and server on one thread on CPU 0.
    Shared,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Split => "client CPU0 / server CPU1",
            Placement::Shared => "client+server CPU0",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Placement::Split => "split",
            Placement::Shared => "shared",
        }
    }
}

/// One workload shape: a scenario with its stream count and message size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub scenario: Scenario,
    pub streams: usize,
    pub size: usize,
}

impl Case {
    pub fn label(&self) -> String {
        format!("{}/{}", self.scenario.name(), self.streams)
    }
}

/// The options of one bench run.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenarios: Vec<Scenario>,
    pub systems: Vec<System>,
    pub placements: Vec<Placement>,
    /// Measured seconds of each case; `None`: the scenario's default.
    pub duration: Option<Duration>,
    pub streams: Vec<usize>,
    pub size: Option<usize>,
    pub json: bool,
    pub out: Option<PathBuf>,
    pub connect: Option<SocketAddr>,
    /// `--heartbeat`: the `muxado` system's sessions are wrapped in the typed
    /// and heartbeat layers (other systems ignore it).
    pub heartbeat: Option<HeartbeatOpts>,
}

/// One line of the result table.
pub struct Row {
    pub case: Case,
    pub system: System,
    pub placement: String,
    pub m: Measurement,
    /// CPU seconds (user + system) of the whole process, both ends, during the case.
    pub cpu_s: f64,
}

impl Row {
    pub fn gbit_s(&self) -> f64 {
        self.m.bytes as f64 * 8.0 / self.m.seconds / 1e9
    }

    pub fn ops_s(&self) -> f64 {
        self.m.ops as f64 / self.m.seconds
    }

    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        self.m
            .latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The figure a ratio is taken of: Gbit/s for bulk, ops/s otherwise.
    pub fn headline(&self) -> f64 {
        match self.case.scenario {
            Scenario::Bulk => self.gbit_s(),
            _ => self.ops_s(),
        }
    }
}

/// The default measured time of a case: the whole default suite (7 cases ×
/// 6 systems) finishes in about a minute on 2 cores.
fn default_duration(s: Scenario) -> Duration {
    match s {
        Scenario::Bulk => Duration::from_millis(1000),
        _ => Duration::from_millis(800),
    }
}

fn cases(opts: &Options) -> Vec<Case> {
    let mut out = Vec::new();
    for &scenario in &opts.scenarios {
        let counts: &[usize] = if opts.streams.is_empty() {
            scenario.default_streams()
        } else {
            &opts.streams
        };
        for &streams in counts {
            let size = match scenario {
                Scenario::Open => 1,
                _ => opts.size.unwrap_or(scenario.default_size()),
            };
            out.push(Case {
                scenario,
                streams,
                size,
            });
        }
    }
    out
}

fn payload(size: usize) -> &'static [u8] {
    Box::leak((0..size).map(|i| (i * 7 + 1) as u8).collect::<Box<[u8]>>())
}

/// CPU seconds (user + system) used by this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Prints a progress line per second on stderr while a case runs.
fn progress_reporter(
    label: String,
    progress: Arc<Progress>,
    bulk: bool,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut last_b, mut last_o) = (0u64, 0u64);
        let mut last_t = start;
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(1)) {
            let now = Instant::now();
            let dt = (now - last_t).as_secs_f64();
            let b = progress.bytes.load(Ordering::Relaxed);
            let o = progress.ops.load(Ordering::Relaxed);
            let rate = if bulk {
                format!("{:8.2} Gbit/s", (b - last_b) as f64 * 8.0 / dt / 1e9)
            } else {
                format!("{:10.0} ops/s", (o - last_o) as f64 / dt)
            };
            eprintln!("    [{:5.1}s] {label}: {rate}", (now - start).as_secs_f64());
            (last_b, last_o, last_t) = (b, o, now);
        }
    });
    (tx, h)
}

/// Runs the selected scenarios × systems × placements and prints the table.
pub fn run(opts: &Options) -> Result<(), String> {
    let cases = cases(opts);
    let mut plan = Vec::new();
    for &case in &cases {
        for &placement in &opts.placements {
            for &system in &opts.systems {
                plan.push((case, system, placement));
            }
        }
    }
    if opts.connect.is_some() {
        plan.retain(|&(_, s, p)| s.speaks_muxado() && p == opts.placements[0]);
    }
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let total = plan.len();
    for (i, (case, system, placement)) in plan.into_iter().enumerate() {
        let duration = opts
            .duration
            .unwrap_or_else(|| default_duration(case.scenario));
        let place = match opts.connect {
            Some(addr) => format!("remote server {addr}"),
            None => placement.name().to_string(),
        };
        eprintln!(
            "[{}/{total}] {} {} ({}) ...",
            i + 1,
            case.label(),
            system.name(),
            if opts.connect.is_some() {
                "remote"
            } else {
                placement.short()
            }
        );
        let progress = Arc::new(Progress::default());
        let (stop, reporter) = progress_reporter(
            format!("{} {}", case.label(), system.name()),
            progress.clone(),
            case.scenario == Scenario::Bulk,
        );
        let data = payload(case.size);
        let hb = opts.heartbeat.filter(|_| system == System::Muxado);
        let cpu0 = cpu_seconds();
        let result = match (opts.connect, system.on_engine()) {
            (Some(addr), true) => {
                uring::run_remote(system, addr, case, data, duration, progress, hb)
            }
            (Some(addr), false) => peers::run_remote(system, addr, case, data, duration, progress),
            (None, true) => uring::run_case(system, case, placement, data, duration, progress, hb),
            (None, false) => peers::run_case(system, case, placement, data, duration, progress),
        };
        let cpu_s = cpu_seconds() - cpu0;
        let _ = stop.send(());
        let _ = reporter.join();
        match result {
            Ok(m) => {
                let row = Row {
                    case,
                    system,
                    placement: place,
                    m,
                    cpu_s,
                };
                eprintln!("    {}", report::summary(&row));
                if opts.json {
                    println!("{}", report::json_line(&row));
                }
                rows.push(row);
            }
            Err(e) => {
                eprintln!("    FAILED: {e}");
                failures.push(format!("{} {}: {e}", case.label(), system.name()));
            }
        }
    }
    if !opts.json {
        report::print_table(&rows);
    }
    if let Some(dir) = &opts.out {
        report::write_dir(dir, &rows, &failures).map_err(|e| format!("--out {dir:?}: {e}"))?;
        eprintln!("wrote {}", dir.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} case(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        ))
    }
}
