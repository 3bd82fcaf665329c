//! The flags of `muxado gateway` and `muxado agent`, checked into options.

use std::net::SocketAddr;
use std::time::Duration;

use muxado::heartbeat::HeartbeatConfig;

use super::wire::MAX_NAME;

/// Environment variable holding the shared token (preferred over `--token`,
/// which other users can read in the process list).
pub const TOKEN_ENV: &str = "MUXADO_TOKEN";

/// `muxado gateway`: the public side of the tunnel.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// Address where agents connect.
    #[arg(long, value_name = "ADDR")]
    agents: SocketAddr,
    /// A public service: NAME=ADDR (repeatable). Connections to ADDR are
    /// tunneled to the agents that forward NAME.
    #[arg(long, value_name = "NAME=ADDR", required = true)]
    expose: Vec<String>,
    /// Shared token agents must present (default: $MUXADO_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Engine cores; each accepts agents and public connections (SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// Serve Prometheus metrics (text format) over HTTP on ADDR.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Seconds in-flight connections may take to finish after SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    drain_timeout: f64,
    #[command(flatten)]
    heartbeat: HeartbeatFlags,
    /// Benchmark peer: run on ngrok's muxado crate over tokio instead.
    #[arg(long, value_enum, default_value_t = Runtime::Uring, hide = true)]
    runtime: Runtime,
}

/// Which implementation runs the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// This crate's engine (io_uring).
    Uring,
    /// ngrok's `muxado` crate on tokio: the benchmark's same-protocol peer.
    NgrokTokio,
}

/// `muxado agent`: the private side of the tunnel.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The gateway's agent address (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    gateway: String,
    /// A forwarded service: NAME=LOCAL_ADDR (repeatable).
    #[arg(long, value_name = "NAME=LOCAL_ADDR", required = true)]
    forward: Vec<String>,
    /// Shared token (default: $MUXADO_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Engine cores; each keeps one session to the gateway.
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// Send a PROXY protocol v2 header to the origin with the public client's address.
    #[arg(long)]
    proxy_protocol: bool,
    /// Longest wait between two reconnect attempts, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    max_backoff: f64,
    #[command(flatten)]
    heartbeat: HeartbeatFlags,
    /// Benchmark peer: run on ngrok's muxado crate over tokio instead.
    #[arg(long, value_enum, default_value_t = Runtime::Uring, hide = true)]
    runtime: Runtime,
}

/// Heartbeat timing of both sides.
#[derive(clap::Args, Debug)]
struct HeartbeatFlags {
    /// Seconds between two heartbeats.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    heartbeat_interval: f64,
    /// Seconds past the interval before the peer is declared dead and the
    /// session closed.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    heartbeat_tolerance: f64,
}

/// The gateway's checked options.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub agents: SocketAddr,
    pub services: Vec<(String, SocketAddr)>,
    pub token: String,
    pub cores: usize,
    pub metrics: Option<SocketAddr>,
    pub drain_timeout: Duration,
    pub heartbeat: HeartbeatConfig,
    pub runtime: Runtime,
}

/// The agent's checked options.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub gateway: String,
    pub services: Vec<(String, String)>,
    pub token: String,
    pub cores: usize,
    pub proxy_protocol: bool,
    pub max_backoff: Duration,
    pub heartbeat: HeartbeatConfig,
    pub runtime: Runtime,
}

impl GatewayArgs {
    pub fn validate(self) -> Result<GatewayOptions, String> {
        let mut services = Vec::new();
        for spec in &self.expose {
            let (name, addr) = split_service(spec, "--expose")?;
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| format!("--expose {spec}: bad address: {e}"))?;
            services.push((name, addr));
        }
        check_unique(&services, "--expose")?;
        Ok(GatewayOptions {
            agents: self.agents,
            services,
            token: token(self.token)?,
            cores: cores(self.cores)?,
            metrics: self.metrics,
            drain_timeout: secs(self.drain_timeout, "--drain-timeout")?,
            heartbeat: self.heartbeat.config()?,
            runtime: self.runtime,
        })
    }
}

impl AgentArgs {
    pub fn validate(self) -> Result<AgentOptions, String> {
        let mut services = Vec::new();
        for spec in &self.forward {
            let (name, addr) = split_service(spec, "--forward")?;
            services.push((name, addr.to_string()));
        }
        check_unique(&services, "--forward")?;
        Ok(AgentOptions {
            gateway: self.gateway,
            services,
            token: token(self.token)?,
            cores: cores(self.cores)?,
            proxy_protocol: self.proxy_protocol,
            max_backoff: secs(self.max_backoff, "--max-backoff")?,
            heartbeat: self.heartbeat.config()?,
            runtime: self.runtime,
        })
    }
}

impl HeartbeatFlags {
    fn config(&self) -> Result<HeartbeatConfig, String> {
        Ok(HeartbeatConfig::default()
            .with_interval(secs(self.heartbeat_interval, "--heartbeat-interval")?)
            .with_tolerance(secs(self.heartbeat_tolerance, "--heartbeat-tolerance")?))
    }
}

fn split_service<'a>(spec: &'a str, flag: &str) -> Result<(String, &'a str), String> {
    let (name, addr) = spec
        .split_once('=')
        .ok_or_else(|| format!("{flag} {spec}: expected NAME=ADDR"))?;
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{flag} {spec}: the name must be 1..={MAX_NAME} printable ASCII characters"
        ));
    }
    Ok((name.to_string(), addr))
}

fn check_unique<T>(services: &[(String, T)], flag: &str) -> Result<(), String> {
    for (i, (name, _)) in services.iter().enumerate() {
        if services[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("{flag}: service {name} is given twice"));
        }
    }
    Ok(())
}

fn token(flag: Option<String>) -> Result<String, String> {
    let token = match flag {
        Some(t) => t,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            format!("a shared token is required: --token or the {TOKEN_ENV} environment variable")
        })?,
    };
    if token.is_empty() || token.len() > super::wire::MAX_TOKEN {
        return Err(format!(
            "the token must be 1..={} bytes",
            super::wire::MAX_TOKEN
        ));
    }
    Ok(token)
}

fn cores(n: usize) -> Result<usize, String> {
    if n == 0 || n > 1024 {
        return Err("--cores must be in 1..=1024".into());
    }
    Ok(n)
}

fn secs(v: f64, flag: &str) -> Result<Duration, String> {
    if v > 0.0 && v <= 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be in (0, 86400] seconds"))
    }
}
