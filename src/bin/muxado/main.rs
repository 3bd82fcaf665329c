//! `muxado`: the command-line tool of muxado-uring.
//!
//! Modules import downward only: `main` (arguments, logging, one function
//! per subcommand) → `bench` and `serve` → `model` (the shared types, which
//! imports nothing of the tool). A new subcommand is a variant of
//! [`Command`], one match arm in [`main`] and its own module.

mod bench;
mod model;
mod serve;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use model::{EngineOpts, HeartbeatOpts, Mode, Placement, Scenario, System};
use muxado::heartbeat::HeartbeatConfig;

/// The muxado stream multiplexer on io_uring: a server and a benchmark.
#[derive(Parser, Debug)]
#[command(name = "muxado", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output on stderr: -v debug (with --heartbeat: every
    /// heartbeat latency), -vv trace. Without it, RUST_LOG (default info).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Logs to stderr: `-v`/`-vv` if given, else `RUST_LOG`, else info.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        1 => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// `--heartbeat` and its timing (serve and bench).
#[derive(clap::Args, Debug)]
struct HeartbeatArgs {
    /// Wrap every session as Heartbeat(TypedSession(session)), like Go
    /// muxado and ngrok: streams are typed, a heartbeat runs both ways.
    /// Latencies are printed with -v, timeouts always (as warnings).
    /// serve: typed streams of any type are echoed/sunk (the 4 type bytes
    /// are not data), so clients must use the typed layer. bench: only the
    /// muxado system uses it (streams of type 1); the other systems ignore
    /// it, except ngrok-muxado with --connect, which is refused (with
    /// --connect the default systems become just muxado).
    #[arg(long)]
    heartbeat: bool,
    /// Seconds between two heartbeats (default 10).
    #[arg(long, value_name = "SECS", requires = "heartbeat")]
    heartbeat_interval: Option<f64>,
    /// Seconds past the interval before a missing answer is reported as a
    /// timeout (default 15).
    #[arg(long, value_name = "SECS", requires = "heartbeat")]
    heartbeat_tolerance: Option<f64>,
}

impl HeartbeatArgs {
    /// The settings, or `None` without `--heartbeat`; bad values exit 2.
    fn opts(&self) -> Option<HeartbeatOpts> {
        if !self.heartbeat {
            return None;
        }
        let secs = |v: Option<f64>, default: Duration, flag: &str| match v {
            None => default,
            Some(s) if s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
            Some(_) => usage_error(&format!("{flag} must be in (0, 86400] seconds")),
        };
        let d = HeartbeatConfig::default();
        Some(HeartbeatOpts {
            config: d
                .interval(secs(
                    self.heartbeat_interval,
                    d.interval,
                    "--heartbeat-interval",
                ))
                .tolerance(secs(
                    self.heartbeat_tolerance,
                    d.tolerance,
                    "--heartbeat-tolerance",
                )),
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the loopback benchmark: every scenario against every system,
    /// side by side, with ratios to plain TCP on the same engine.
    Bench {
        /// Scenarios to run (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        scenario: Vec<Scenario>,
        /// Systems to compare (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        systems: Vec<System>,
        /// Client/server placement (default: split).
        #[arg(long, value_enum, value_delimiter = ',')]
        placement: Vec<Placement>,
        /// Measured seconds of each run of a case (default 0.6).
        #[arg(long)]
        duration: Option<f64>,
        /// Runs of every case, the systems interleaved round by round
        /// (default 3); figures are medians with min–max.
        #[arg(long, value_name = "N")]
        repeat: Option<usize>,
        /// Compare with a results.json saved by --out: figures that moved
        /// outside both runs' spread are flagged; a regression exits non-zero.
        #[arg(long, value_name = "FILE.json")]
        baseline: Option<PathBuf>,
        /// Stream counts (default: bulk 1,64; rpc 1,64,1024; open 16 workers;
        /// sessions 1000; connect 16 workers; mixed 1).
        #[arg(long, value_delimiter = ',')]
        streams: Vec<usize>,
        /// Message size in bytes: bulk writes (default 65536) and rpc
        /// requests (default 64).
        #[arg(long)]
        size: Option<usize>,
        /// One JSON object per result line on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write results.json, results.md and SVG plots into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Run only the client half against a muxado server at ADDR
        /// (ours, ngrok's or Go's, with `muxado serve` semantics); default
        /// scenarios rpc,open (an echo server); systems muxado,ngrok-muxado.
        #[arg(long, value_name = "ADDR")]
        connect: Option<SocketAddr>,
        // Only the muxado system uses it: its client (and, without
        // --connect, its server) wraps the session in the typed and heartbeat
        // layers and opens typed streams of type 1.
        #[command(flatten)]
        heartbeat: HeartbeatArgs,
    },
    /// Serve muxado sessions: echo or sink every stream.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// What to do with each stream.
        #[arg(long, value_enum, default_value_t = Mode::Echo)]
        mode: Mode,
        /// Engine cores (each accepts on the same address with SO_REUSEPORT).
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Memory budget shared by all sessions on all cores (e.g. 512M, 2G):
        /// past it new streams are refused and sessions stop reading.
        #[arg(long, value_name = "SIZE", value_parser = model::parse_size)]
        max_memory: Option<usize>,
        /// A frame begun but not finished within this is a slowloris: the
        /// session ends with GOAWAY ProtocolError (0: never).
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = model::parse_duration)]
        frame_timeout: Duration,
        /// A session with no stream that receives nothing for this long is
        /// closed with GOAWAY NoError (0: never).
        #[arg(long, value_name = "SECS", default_value = "300", value_parser = model::parse_duration)]
        idle_timeout: Duration,
        #[command(flatten)]
        heartbeat: HeartbeatArgs,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    let engine = EngineOpts::from_env();
    let result = match cli.command {
        Command::Bench {
            scenario,
            systems,
            placement,
            duration,
            repeat,
            baseline,
            streams,
            size,
            json,
            out,
            connect,
            heartbeat,
        } => bench_options(BenchArgs {
            scenarios: scenario,
            systems,
            placements: placement,
            duration,
            repeat,
            baseline,
            streams,
            size,
            json,
            out,
            connect,
            heartbeat: heartbeat.opts(),
            engine,
        })
        .and_then(|opts| bench::run(&opts)),
        Command::Serve {
            listen,
            mode,
            cores,
            max_memory,
            frame_timeout,
            idle_timeout,
            heartbeat,
        } => {
            let config = serve::serve_config(max_memory, frame_timeout, idle_timeout);
            serve(listen, mode, cores, config, heartbeat.opts(), engine)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muxado: {e}");
            ExitCode::FAILURE
        }
    }
}

struct BenchArgs {
    scenarios: Vec<Scenario>,
    systems: Vec<System>,
    placements: Vec<Placement>,
    duration: Option<f64>,
    repeat: Option<usize>,
    baseline: Option<PathBuf>,
    streams: Vec<usize>,
    size: Option<usize>,
    json: bool,
    out: Option<PathBuf>,
    connect: Option<SocketAddr>,
    heartbeat: Option<HeartbeatOpts>,
    engine: EngineOpts,
}

fn bench_options(a: BenchArgs) -> Result<bench::Options, String> {
    if let Some(d) = a.duration {
        if !(d > 0.0 && d <= 3600.0) {
            usage_error("--duration must be in (0, 3600] seconds");
        }
    }
    if a.repeat.is_some_and(|n| n == 0 || n > 1000) {
        usage_error("--repeat must be in 1..=1000");
    }
    if let Some(size) = a.size {
        if size == 0 || size > 64 << 20 {
            usage_error("--size must be in 1..=67108864 bytes");
        }
    }
    if a.streams.iter().any(|&n| n == 0 || n > 100_000) {
        usage_error("--streams must be in 1..=100000");
    }
    let remote = a.connect.is_some();
    if remote && a.systems.iter().any(|s| !s.speaks_muxado()) {
        usage_error("with --connect, --systems can only be muxado and ngrok-muxado");
    }
    if remote && a.scenarios.contains(&Scenario::Mixed) {
        usage_error("--scenario mixed needs the bench's own servers (not --connect)");
    }
    let default_scenarios: &[Scenario] = if remote {
        &[Scenario::Rpc, Scenario::Open]
    } else {
        model::ALL_SCENARIOS
    };
    if remote && a.heartbeat.is_some() && a.systems.contains(&System::NgrokMuxado) {
        usage_error(
            "--heartbeat with --connect is only supported by the muxado system \
             (drop ngrok-muxado from --systems)",
        );
    }
    let default_systems: &[System] = if remote && a.heartbeat.is_some() {
        &[System::Muxado]
    } else if remote {
        &[System::Muxado, System::NgrokMuxado]
    } else {
        model::ALL_SYSTEMS
    };
    Ok(bench::Options {
        scenarios: or_all(a.scenarios, default_scenarios),
        systems: or_all(a.systems, default_systems),
        placements: or_all(a.placements, &[Placement::Split]),
        duration: a.duration.map(Duration::from_secs_f64),
        streams: a.streams,
        size: a.size,
        repeat: a.repeat.unwrap_or(bench::DEFAULT_REPEAT),
        json: a.json,
        out: a.out,
        connect: a.connect,
        baseline: a.baseline,
        heartbeat: a.heartbeat,
        engine: a.engine,
    })
}

/// `v` (without repeats), or every choice when none was given.
fn or_all<T: Clone + PartialEq>(v: Vec<T>, all: &[T]) -> Vec<T> {
    if v.is_empty() {
        return all.to_vec();
    }
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Bad arguments: a clear message and exit status 2, like clap's own errors.
fn usage_error(msg: &str) -> ! {
    eprintln!("muxado: {msg}");
    std::process::exit(2)
}

fn serve(
    listen: SocketAddr,
    mode: Mode,
    cores: usize,
    config: muxado::Config,
    heartbeat: Option<HeartbeatOpts>,
    engine: EngineOpts,
) -> Result<(), String> {
    if cores == 0 {
        usage_error("--cores must be at least 1");
    }
    let engine = engine
        .builder()
        .cores(cores)
        .build()
        .map_err(|e| e.to_string())?;
    match heartbeat {
        Some(hb) => tracing::info!(
            "muxado serve: {mode:?} on {listen} with {cores} core(s), heartbeat every {:?} \
             (tolerance {:?})",
            hb.config.interval,
            hb.config.tolerance
        ),
        None => tracing::info!("muxado serve: {mode:?} on {listen} with {cores} core(s)"),
    }
    engine
        .run(move |_core| {
            let config = config.clone();
            async move {
                match muxado::engine::net::TcpListener::bind(listen) {
                    Ok(listener) => {
                        match heartbeat {
                            Some(hb) => {
                                serve::muxado_heartbeat_server(listener, mode, config, hb).await
                            }
                            None => serve::muxado_server(listener, mode, config).await,
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("listen on {listen}: {e}")),
                }
            }
        })
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect()
}
