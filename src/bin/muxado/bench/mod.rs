//! `muxado bench`: the loopback multiplexing-overhead benchmark.
//!
//! Every scenario runs against every system in the same invocation, `N`
//! times (`--repeat`), the systems interleaved round by round (A B C, A B C,
//! …) after a warm-up, so that a slow minute of a shared machine hits every
//! system alike. Each figure is reported as its median with min–max, and
//! each ratio is taken within a round, then summarised the same way.
//!
//! Layering: this module runs the plan; [`uring`] and [`peers`] run one case
//! of a system (both on [`workload`], the client half written once);
//! [`stats`] summarises the samples, [`goals`] checks them, [`report`]
//! prints and writes them, [`baseline`] compares them with a saved run
//! ([`json`] writes and reads that file); [`loopback`] gives every case's
//! server an address of its own. All of them import
//! [`crate::model`]; none imports this module or a module above it.

mod baseline;
mod goals;
mod json;
mod loopback;
mod peers;
mod plots;
mod report;
mod stats;
mod uring;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::model::{
    BenchTls, Case, CaseRun, Driver, Endpoint, EngineOpts, HeartbeatOpts, Placement, Progress,
    Scenario, System,
};
use muxado::transport::{TlsClientConfig, TlsServerConfig};
use stats::{Row, Sample};

/// The options of one bench run.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenarios: Vec<Scenario>,
    pub systems: Vec<System>,
    pub placements: Vec<Placement>,
    /// Measured seconds of each case; `None`: [`DEFAULT_DURATION`].
    pub duration: Option<Duration>,
    pub streams: Vec<usize>,
    pub size: Option<usize>,
    /// Runs of every case (`--repeat`).
    pub repeat: usize,
    pub json: bool,
    pub out: Option<PathBuf>,
    /// `--connect ADDR` / `--unix PATH`: only the client half, against a
    /// server there.
    pub connect: Option<Endpoint>,
    /// `--tls-ca` (with `connect`): what the `+tls` clients trust.
    pub remote_tls: Option<BenchTls>,
    /// A saved results.json to compare with (`--baseline`).
    pub baseline: Option<PathBuf>,
    /// `--heartbeat`: the sessions of our systems (`muxado`, `muxado-tokio`
    /// and their `+tls` rows) are wrapped in the typed and heartbeat layers
    /// (the other systems ignore it).
    pub heartbeat: Option<HeartbeatOpts>,
    pub engine: EngineOpts,
    /// On [`Driver::Tokio`] the systems that need io_uring are skipped.
    pub driver: Driver,
}

/// The default number of runs of each case.
pub const DEFAULT_REPEAT: usize = 3;

/// The default measured time of a case. The default suite (9 cases × 7
/// systems × 3 rounds, each case also paying its warm-up and set-up) then
/// takes 3 to 4 minutes on 2 cores.
pub const DEFAULT_DURATION: Duration = Duration::from_millis(600);

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

/// CPU seconds (user + system) used by this process so far (0 if the
/// kernel will not say, which getrusage(RUSAGE_SELF) never refuses).
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |ru| {
        (ru.user_time().num_microseconds() + ru.system_time().num_microseconds()) as f64 / 1e6
    })
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

/// Runs one case of one system once, with its CPU time.
fn run_once(opts: &Options, run: &CaseRun) -> Result<Sample, String> {
    let (stop, reporter) = progress_reporter(
        format!("{} {}", run.case.label(), run.system.name()),
        run.progress.clone(),
        run.case.scenario.is_bulk(),
    );
    let cpu0 = cpu_seconds();
    let result = match (&opts.connect, run.system.on_engine()) {
        (Some(to), true) => uring::run_remote(to, run),
        (Some(to), false) => peers::run_remote(to, run),
        (None, true) => uring::run_case(run),
        (None, false) => peers::run_case(run),
    };
    let cpu_s = cpu_seconds() - cpu0;
    let _ = stop.send(());
    let _ = reporter.join();
    result.map(|m| Sample { m, cpu_s })
}

/// The selected systems this driver can run. On the tokio driver those
/// that need io_uring are left out, and the tool says which; if none is
/// left, that is an error.
fn runnable_systems(opts: &Options) -> Result<Vec<System>, String> {
    if opts.driver == Driver::Uring {
        return Ok(opts.systems.clone());
    }
    let (skipped, kept): (Vec<System>, Vec<System>) =
        opts.systems.iter().partition(|s| s.needs_uring());
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|s| s.name()).collect();
        eprintln!(
            "muxado bench: on the tokio driver; skipped the systems that need io_uring: {}",
            names.join(", ")
        );
    }
    if kept.is_empty() {
        return Err("no selected system runs on the tokio driver \
                    (muxado-tokio, tcp-tokio, ngrok-muxado and yamux do)"
            .into());
    }
    Ok(kept)
}

/// The TLS settings of the `+tls` systems: `--tls-ca`'s against a remote
/// server; for the local suite, a self-signed certificate for "localhost"
/// (ECDSA P-256, made now by rcgen) that every system's server presents and
/// every client trusts, through one rustls configuration each way.
fn bench_tls(opts: &Options, systems: &[System]) -> Result<Option<Arc<BenchTls>>, String> {
    if !systems.iter().any(|s| s.tls()) {
        return Ok(None);
    }
    if let Some(remote) = &opts.remote_tls {
        return Ok(Some(Arc::new(remote.clone())));
    }
    if opts.connect.is_some() {
        return Err("the +tls systems against a remote server need --tls-ca".into());
    }
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| format!("making the bench's TLS certificate: {e}"))?;
    let cert = made.cert.pem();
    let key = made.key_pair.serialize_pem();
    let server = TlsServerConfig::from_pem(cert.as_bytes(), key.as_bytes())
        .map_err(|e| format!("the bench's TLS certificate: {e}"))?;
    let client = TlsClientConfig::from_ca_pem(cert.as_bytes())
        .map_err(|e| format!("the bench's TLS certificate: {e}"))?;
    Ok(Some(Arc::new(BenchTls {
        client,
        server: Some(server),
        server_name: "localhost".into(),
    })))
}

fn case_run(
    opts: &Options,
    tls: &Option<Arc<BenchTls>>,
    case: Case,
    system: System,
    placement: Placement,
) -> CaseRun {
    CaseRun {
        system,
        case,
        placement,
        payload: payload(case.size),
        duration: opts.duration.unwrap_or(DEFAULT_DURATION),
        progress: Arc::new(Progress::default()),
        heartbeat: opts
            .heartbeat
            .filter(|_| matches!(system.plain(), System::Muxado | System::MuxadoTokio)),
        engine: opts.engine,
        tls: tls.clone().filter(|_| system.tls()),
        remote: opts.connect.is_some(),
    }
}

/// What the `+tls` rows ran over, for the report: the cipher suites and
/// versions rustls offers (the first is chosen: every system has the same
/// configuration) and the certificate.
fn tls_description(t: &BenchTls) -> String {
    let cfg = t.client.rustls();
    let suites: Vec<String> = cfg
        .crypto_provider()
        .cipher_suites
        .iter()
        .take(1)
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    let cert = if t.server.is_some() {
        "self-signed ECDSA P-256 certificate made at start (rcgen)"
    } else {
        "the server's certificate (--tls-ca)"
    };
    format!(
        "rustls 0.23 (aws-lc-rs), TLS 1.3, cipher suite {} (the first of the one rustls \
         configuration every end shares: the engine's TlsStream and tokio-rustls alike); {cert}",
        suites.join(", ")
    )
}

/// Runs the selected scenarios × systems × placements `repeat` times and
/// prints the table; an error if a case failed or a figure regressed
/// against `--baseline`.
pub fn run(opts: &Options) -> Result<(), String> {
    let baseline = match &opts.baseline {
        Some(path) => Some(baseline::load(path)?),
        None => None,
    };
    let load_before = report::loadavg();
    let systems = runnable_systems(opts)?;
    let tls = bench_tls(opts, &systems)?;
    let mut rows: Vec<Row> = Vec::new();
    for &case in &cases(opts) {
        for &placement in &opts.placements {
            for &system in &systems {
                if opts.connect.is_some()
                    && (!system.speaks_muxado() || placement != opts.placements[0])
                {
                    continue;
                }
                rows.push(Row::new(case, system, placement, opts.repeat));
            }
        }
    }
    let where_ = |p: Placement| {
        if opts.connect.is_some() {
            "remote"
        } else {
            p.short()
        }
    };
    // Warm-up: each system once, briefly, on the first case; not recorded.
    let mut warmed: Vec<System> = Vec::new();
    for row in &rows {
        if warmed.contains(&row.system) {
            continue;
        }
        warmed.push(row.system);
        let mut run = case_run(opts, &tls, row.case, row.system, row.placement);
        run.duration = (run.duration / 4).max(Duration::from_millis(20));
        eprintln!("[warm-up] {} {}", row.case.label(), row.system.name());
        if let Err(e) = run_once(opts, &run) {
            eprintln!("    warm-up failed: {e}");
        }
    }
    let total = rows.len() * opts.repeat;
    let mut done = 0;
    for round in 0..opts.repeat {
        for row in rows.iter_mut() {
            done += 1;
            eprintln!(
                "[{done}/{total}] round {} {} {} ({}) ...",
                round + 1,
                row.case.label(),
                row.system.name(),
                where_(row.placement)
            );
            let run = case_run(opts, &tls, row.case, row.system, row.placement);
            match run_once(opts, &run) {
                Ok(sample) => {
                    eprintln!("    {}", report::summary(row.case.scenario, &sample));
                    if opts.json {
                        println!(
                            "{}",
                            report::json_line(row, round, &sample, opts.connect.as_ref())
                        );
                    }
                    row.samples[round] = Some(sample);
                }
                Err(e) => {
                    eprintln!("    FAILED: {e}");
                    row.errors.push(format!("round {}: {e}", round + 1));
                }
            }
        }
    }
    let mut meta = report::Meta::collect(
        opts.repeat,
        &opts.placements,
        opts.connect.as_ref(),
        opts.duration.unwrap_or(DEFAULT_DURATION),
        load_before,
    );
    meta.busy_poll = !opts.engine.busy_poll.is_zero();
    meta.fields.push((
        "busy_poll_us",
        opts.engine.busy_poll.as_micros().to_string(),
    ));
    if let Some(t) = &tls {
        meta.fields.push(("tls", tls_description(t)));
    }
    if !opts.json {
        report::print_table(&rows, &meta, opts.connect.as_ref());
    }
    let comparison = baseline.map(|b| baseline::compare(&b, &rows));
    if let Some(c) = &comparison {
        baseline::print(c);
    }
    if let Some(dir) = &opts.out {
        report::write_dir(dir, &rows, &meta, opts.connect.as_ref())
            .map_err(|e| format!("--out {dir:?}: {e}"))?;
        eprintln!("wrote {}", dir.display());
    }
    let failures: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| format!("{} {} {e}", r.case.label(), r.system.name()))
        })
        .collect();
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(format!(
            "{} run(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        ));
    }
    if let Some(c) = comparison {
        let n = c.iter().filter(|d| d.regression).count();
        if n > 0 {
            problems.push(format!("{n} figure(s) regressed against the baseline"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
