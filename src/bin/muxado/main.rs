//! `muxado`: the command-line tool of muxado-uring.
//!
//! Modules import downward only: `main` (arguments, logging, one function
//! per subcommand) → `bench` and `serve` → `model` (the shared types, which
//! imports nothing of the tool). A new subcommand is a variant of
//! [`Command`], one match arm in [`main`] and its own module.

mod bench;
mod model;
mod serve;
mod serve_tokio;
mod tunnel;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use model::{
    Driver, DriverChoice, Endpoint, EngineOpts, HeartbeatOpts, Mode, Placement, Scenario, System,
};
use muxado::heartbeat::HeartbeatConfig;
use muxado::transport::{TlsClientConfig, TlsServerConfig};

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
    /// Latency mode (bench: every engine, both ends; serve): an idle engine
    /// core spins up to MICROS µs on its completion queue before it sleeps
    /// in the kernel, which saves the wake-up at the cost of CPU (the bench
    /// shows CPU seconds). Default 0: off.
    #[arg(long, global = true, value_name = "MICROS", default_value_t = 0)]
    busy_poll: u64,
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
                .with_interval(secs(
                    self.heartbeat_interval,
                    d.interval,
                    "--heartbeat-interval",
                ))
                .with_tolerance(secs(
                    self.heartbeat_tolerance,
                    d.tolerance,
                    "--heartbeat-tolerance",
                )),
        })
    }
}

/// `--driver` (serve and bench).
#[derive(clap::Args, Debug)]
struct DriverArgs {
    /// Which driver runs the sessions: auto (the io_uring engine if it can
    /// be set up here, else tokio, saying why in one line on stderr), uring
    /// (the engine or an error), tokio (never touches io_uring).
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    driver: DriverChoice,
}

impl DriverArgs {
    /// Resolves `--driver`: probes io_uring once unless told `tokio`.
    fn resolve(&self) -> Result<Driver, String> {
        match self.driver {
            DriverChoice::Tokio => Ok(Driver::Tokio),
            DriverChoice::Uring => muxado::engine::probe()
                .map(|()| Driver::Uring)
                .map_err(|e| format!("{e} (--driver uring; --driver tokio runs without it)")),
            DriverChoice::Auto => match muxado::engine::probe() {
                Ok(()) => Ok(Driver::Uring),
                Err(e) => {
                    eprintln!("muxado: {e}; using the tokio driver");
                    Ok(Driver::Tokio)
                }
            },
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reverse tunnel, public side: accept agents, expose their services.
    Gateway(tunnel::GatewayArgs),
    /// Reverse tunnel, private side: forward the gateway's connections to local origins.
    Agent(tunnel::AgentArgs),
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
        /// scenarios rpc,open (an echo server); systems muxado,ngrok-muxado
        /// (on the tokio driver: muxado-tokio,ngrok-muxado).
        #[arg(long, value_name = "ADDR")]
        connect: Option<SocketAddr>,
        /// Like --connect, to a server listening on the Unix socket PATH.
        #[arg(long, value_name = "PATH", conflicts_with = "connect")]
        unix: Option<PathBuf>,
        /// With --connect/--unix: speak TLS to the server, trusting the CA
        /// certificate(s) in this PEM file; the rows are then muxado+tls,
        /// muxado-tokio+tls and ngrok-muxado+tls.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// With --tls-ca: the name the server's certificate must carry
        /// (default: the IP address of --connect; localhost with --unix).
        #[arg(long, value_name = "NAME", requires = "tls_ca")]
        tls_name: Option<String>,
        /// Local suite: also run every selected system that can over TLS
        /// (muxado, muxado-tokio, ngrok-muxado → rows muxado+tls,
        /// muxado-tokio+tls, ngrok-muxado+tls), all with one self-signed
        /// certificate made at start and the same rustls configuration.
        #[arg(long, conflicts_with_all = ["connect", "unix"])]
        tls: bool,
        // Only the muxado system uses it: its client (and, without
        // --connect, its server) wraps the session in the typed and heartbeat
        // layers and opens typed streams of type 1.
        #[command(flatten)]
        heartbeat: HeartbeatArgs,
        #[command(flatten)]
        driver: DriverArgs,
    },
    /// Serve muxado sessions: echo or sink every stream.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Listen on this Unix socket path instead (a stale socket file left
        /// by a server that is gone is replaced).
        #[arg(long, value_name = "PATH", conflicts_with = "listen")]
        unix: Option<PathBuf>,
        /// Serve over TLS with this certificate chain (PEM, leaf first).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// What to do with each stream.
        #[arg(long, value_enum, default_value_t = Mode::Echo)]
        mode: Mode,
        /// Engine cores (each accepts on the same address with SO_REUSEPORT);
        /// on the tokio driver, worker threads.
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
        #[command(flatten)]
        driver: DriverArgs,
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
    let engine = EngineOpts {
        busy_poll: std::time::Duration::from_micros(cli.busy_poll),
        ..EngineOpts::from_env()
    };
    let result = match cli.command {
        Command::Gateway(args) => tunnel::gateway(args),
        Command::Agent(args) => tunnel::agent(args),
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
            unix,
            tls_ca,
            tls_name,
            tls,
            heartbeat,
            driver,
        } => driver
            .resolve()
            .and_then(|driver| {
                let connect = match (connect, unix) {
                    (Some(addr), _) => Some(Endpoint::Tcp(addr)),
                    (None, Some(path)) => Some(Endpoint::Unix(path)),
                    (None, None) => None,
                };
                bench_options(BenchArgs {
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
                    tls_ca,
                    tls_name,
                    tls,
                    heartbeat: heartbeat.opts(),
                    engine,
                    driver,
                })
            })
            .and_then(|opts| bench::run(&opts)),
        Command::Serve {
            listen,
            unix,
            tls_cert,
            tls_key,
            mode,
            cores,
            max_memory,
            frame_timeout,
            idle_timeout,
            heartbeat,
            driver,
        } => {
            if cores == 0 {
                usage_error("--cores must be at least 1");
            }
            let heartbeat = heartbeat.opts();
            // A long-running server: its idle memory should not depend on
            // what the allocator happened to keep (see tune_allocator).
            serve::tune_allocator();
            let config = serve::serve_config(max_memory, frame_timeout, idle_timeout);
            let listen = unix.map_or(Endpoint::Tcp(listen), Endpoint::Unix);
            // Certificate problems are reported before anything listens.
            server_tls(tls_cert, tls_key).and_then(|tls| {
                driver.resolve().and_then(|driver| match driver {
                    Driver::Uring => serve(listen, tls, mode, cores, config, heartbeat, engine),
                    Driver::Tokio => serve_tokio::serve(serve_tokio::ServeOpts {
                        listen,
                        mode,
                        workers: cores,
                        config,
                        tls,
                        heartbeat,
                    }),
                })
            })
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
    connect: Option<Endpoint>,
    tls_ca: Option<PathBuf>,
    tls_name: Option<String>,
    tls: bool,
    heartbeat: Option<HeartbeatOpts>,
    engine: EngineOpts,
    driver: Driver,
}

/// `serve --tls-cert F --tls-key F`: the server's TLS configuration, or an
/// error naming the file and what is wrong with it.
fn server_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsServerConfig>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => TlsServerConfig::from_pem_files(&cert, &key)
            .map(Some)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}")),
        _ => Ok(None),
    }
}

/// `bench --tls-ca F` (with --connect/--unix): what the `+tls` clients trust
/// and the name they check.
fn remote_tls(
    ca: &std::path::Path,
    name: Option<String>,
    to: &Endpoint,
) -> Result<model::BenchTls, String> {
    let client = TlsClientConfig::from_ca_pem_file(ca).map_err(|e| format!("--tls-ca: {e}"))?;
    let server_name = name.unwrap_or_else(|| match to {
        Endpoint::Tcp(addr) => addr.ip().to_string(),
        Endpoint::Unix(_) => "localhost".into(),
    });
    Ok(model::BenchTls {
        client,
        server: None,
        server_name,
    })
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
    if a.tls_ca.is_some() && !remote {
        usage_error(
            "--tls-ca needs --connect or --unix (the local suite makes its own certificate: --tls)",
        );
    }
    if remote && a.tls_ca.is_none() && a.systems.iter().any(|s| s.tls()) {
        usage_error("the +tls systems with --connect/--unix need --tls-ca");
    }
    if remote && a.systems.iter().any(|s| !s.speaks_muxado()) {
        usage_error("with --connect, --systems can only be muxado, muxado-tokio and ngrok-muxado");
    }
    if remote && a.scenarios.contains(&Scenario::Mixed) {
        usage_error("--scenario mixed needs the bench's own servers (not --connect)");
    }
    let default_scenarios: &[Scenario] = if remote {
        &[Scenario::Rpc, Scenario::Open]
    } else {
        model::ALL_SCENARIOS
    };
    if remote && a.heartbeat.is_some() && a.systems.iter().any(|s| s.plain() == System::NgrokMuxado)
    {
        usage_error(
            "--heartbeat with --connect is only supported by our systems, muxado and \
             muxado-tokio (drop ngrok-muxado from --systems)",
        );
    }
    let tokio = a.driver == Driver::Tokio;
    let default_systems: &[System] = if remote && a.heartbeat.is_some() && tokio {
        &[System::MuxadoTokio]
    } else if remote && a.heartbeat.is_some() {
        &[System::Muxado]
    } else if remote && tokio {
        &[System::MuxadoTokio, System::NgrokMuxado]
    } else if remote {
        &[System::Muxado, System::NgrokMuxado]
    } else {
        model::ALL_SYSTEMS
    };
    let mut systems = or_all(a.systems, default_systems);
    let remote_tls = match (&a.tls_ca, &a.connect) {
        (Some(ca), Some(to)) => {
            // Against a TLS server every client speaks TLS: the rows say so.
            systems = or_all(
                systems.iter().map(|s| s.over_tls().unwrap_or(*s)).collect(),
                &[],
            );
            Some(remote_tls(ca, a.tls_name, to)?)
        }
        _ => None,
    };
    if a.tls {
        // Each TLS-capable system gets its +tls row right after its own.
        let mut with_tls = Vec::new();
        for s in systems {
            with_tls.push(s);
            with_tls.extend(s.over_tls().filter(|t| *t != s));
        }
        systems = or_all(with_tls, &[]);
        if !systems.iter().any(|s| s.tls()) {
            usage_error("--tls: none of the selected systems runs over TLS (muxado, muxado-tokio and ngrok-muxado do)");
        }
    }
    Ok(bench::Options {
        scenarios: or_all(a.scenarios, default_scenarios),
        systems,
        remote_tls,
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
        driver: a.driver,
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
    listen: Endpoint,
    tls: Option<TlsServerConfig>,
    mode: Mode,
    cores: usize,
    config: muxado::Config,
    heartbeat: Option<HeartbeatOpts>,
    engine: EngineOpts,
) -> Result<(), String> {
    if matches!(listen, Endpoint::Unix(_)) && cores > 1 {
        // One socket path has one listener: the other cores would fail to bind it.
        usage_error("--unix serves on one core (--cores 1)");
    }
    let engine = engine
        .builder()
        .cores(cores)
        .build()
        .map_err(|e| e.to_string())?;
    let over = if tls.is_some() { " (TLS)" } else { "" };
    match heartbeat {
        Some(hb) => tracing::info!(
            "muxado serve: {mode:?} on {listen}{over} with {cores} core(s), heartbeat every {:?} \
             (tolerance {:?})",
            hb.config.interval,
            hb.config.tolerance
        ),
        None => tracing::info!("muxado serve: {mode:?} on {listen}{over} with {cores} core(s)"),
    }
    engine
        .run(move |_core| {
            let (config, tls, listen) = (config.clone(), tls.clone(), listen.clone());
            async move {
                match serve::Listener::bind(&listen) {
                    Ok(listener) => {
                        match heartbeat {
                            Some(hb) => {
                                serve::muxado_heartbeat_server(listener, tls, mode, config, hb)
                                    .await
                            }
                            None => serve::muxado_server(listener, tls, mode, config).await,
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
