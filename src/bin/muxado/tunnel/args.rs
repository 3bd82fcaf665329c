//! The flags of `muxado gateway` and `muxado agent`, checked into options.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Close a public connection after this many seconds without a byte
    /// either way (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    idle_timeout: f64,
    /// Serve agents over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    /// Seconds in-flight connections may take to finish after SIGTERM (the
    /// agent first tells the gateway to send it no new ones).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    drain_timeout: f64,
    /// Connect to the gateway over TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the gateway's certificate must carry (default: the host
    /// part of --gateway).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
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
    /// `None`: public connections never time out.
    pub idle_timeout: Option<Duration>,
    /// Certificate chain and key files: agents connect over TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub heartbeat: HeartbeatConfig,
    pub runtime: Runtime,
}

/// How the agent reaches the gateway over TLS.
#[derive(Clone, Debug)]
pub struct AgentTls {
    /// The CA certificates (PEM) the gateway's certificate must chain to.
    pub ca: PathBuf,
    /// The DNS name or IP address the certificate must name.
    pub server_name: String,
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
    pub drain_timeout: Duration,
    pub tls: Option<AgentTls>,
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
            idle_timeout: secs_or_off(self.idle_timeout, "--idle-timeout")?,
            tls: self.tls_cert.zip(self.tls_key),
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
        let tls = match self.tls_ca {
            None => None,
            Some(ca) => Some(AgentTls {
                ca,
                server_name: match self.tls_server_name {
                    Some(name) => name,
                    None => host_of(&self.gateway)?.to_string(),
                },
            }),
        };
        Ok(AgentOptions {
            gateway: self.gateway,
            services,
            token: token(self.token)?,
            cores: cores(self.cores)?,
            proxy_protocol: self.proxy_protocol,
            max_backoff: secs(self.max_backoff, "--max-backoff")?,
            drain_timeout: secs(self.drain_timeout, "--drain-timeout")?,
            tls,
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

/// Like [`secs`], but 0 turns the limit off.
fn secs_or_off(v: f64, flag: &str) -> Result<Option<Duration>, String> {
    if v == 0.0 {
        Ok(None)
    } else {
        secs(v, flag).map(Some)
    }
}

/// The host part of HOST:PORT, `[V6]:PORT` or a bare host: the name the
/// gateway's certificate is checked against unless `--tls-server-name` says.
fn host_of(addr: &str) -> Result<&str, String> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h),
        None => Some(addr.rsplit_once(':').map_or(addr, |(h, _)| h)),
    };
    match host {
        Some(h) if !h.is_empty() => Ok(h),
        _ => Err(format!(
            "--gateway {addr}: no host to check the TLS certificate against; pass --tls-server-name"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_takes_the_host_part() {
        assert_eq!(host_of("gw.example.com:7000"), Ok("gw.example.com"));
        assert_eq!(host_of("127.0.0.1:7000"), Ok("127.0.0.1"));
        assert_eq!(host_of("[::1]:7000"), Ok("::1"));
        assert_eq!(host_of("localhost"), Ok("localhost"));
        assert!(host_of(":7000").is_err());
        assert!(host_of("[::1").is_err());
    }

    #[test]
    fn idle_timeout_zero_is_off() {
        assert_eq!(secs_or_off(0.0, "--idle-timeout"), Ok(None));
        assert_eq!(
            secs_or_off(1.5, "--idle-timeout"),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert!(secs_or_off(-1.0, "--idle-timeout").is_err());
    }
}
