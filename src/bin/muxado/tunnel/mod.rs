//! `muxado gateway` and `muxado agent`: a reverse TCP tunnel over muxado.
//!
//! The agent (private side) dials the gateway (public side), authenticates on
//! a first control stream and names the services it forwards. The gateway
//! listens on one public address per service; each public connection becomes
//! a typed stream (the type was agreed for that service in the handshake) on
//! the least loaded agent session of that service, and the agent splices the
//! stream to its local origin.
//!
//! Modules, one job each, imported downwards only:
//! - [`args`]: the command-line flags and their checks;
//! - [`wire`]: the control handshake and the per-connection header (bytes only);
//! - [`proxy_protocol`]: the PROXY protocol v2 header sent to origins;
//! - [`splice`]: the hot path, a TCP connection joined with a muxado stream;
//! - [`idle`]: the idle limit of spliced connections (one sweeper per core);
//! - [`metrics`]: per-core counters and the Prometheus text endpoint;
//! - [`backoff`]: reconnect delays with jitter;
//! - [`signals`]: SIGTERM/SIGINT delivered to the engine cores;
//! - [`gateway`], [`agent`]: the two processes;
//! - [`ngrok`]: the same tunnel on ngrok's crate over tokio (a benchmark peer).

mod agent;
mod args;
mod backoff;
mod gateway;
mod idle;
mod metrics;
mod ngrok;
mod notify;
mod proxy_protocol;
mod signals;
mod splice;
mod wire;

use args::Runtime;
pub use args::{AgentArgs, GatewayArgs};

/// Runs `muxado gateway` until it has drained after SIGTERM/SIGINT.
pub fn gateway(args: GatewayArgs) -> Result<(), String> {
    init_logs();
    let opts = args.validate()?;
    match opts.runtime {
        Runtime::Uring => gateway::run(opts),
        Runtime::NgrokTokio if opts.tls.is_some() => Err(NGROK_NO_TLS.into()),
        Runtime::NgrokTokio => ngrok::gateway(opts),
    }
}

/// Runs `muxado agent` until SIGTERM/SIGINT or a fatal error (such as a
/// refused token).
pub fn agent(args: AgentArgs) -> Result<(), String> {
    init_logs();
    let opts = args.validate()?;
    let origins = agent::resolve_origins(&opts)?;
    match opts.runtime {
        Runtime::Uring => agent::run(opts, origins),
        Runtime::NgrokTokio if opts.tls.is_some() => Err(NGROK_NO_TLS.into()),
        Runtime::NgrokTokio => ngrok::agent(opts, origins),
    }
}

/// The benchmark peer on ngrok's crate runs plain TCP only (and has no idle
/// limit nor agent drain: it exists to measure the same protocol on tokio).
const NGROK_NO_TLS: &str = "TLS (--tls-*) is not supported with --runtime ngrok-tokio";

/// Logs go to stderr through `tracing`; `RUST_LOG` filters them (default
/// `info`). Another subscriber already installed by the tool wins.
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
