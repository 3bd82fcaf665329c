//! The types every part of the tool shares: what a server does with a stream,
//! the heartbeat and engine settings, and the benchmark's vocabulary
//! (scenarios, systems, placements, cases, measurements).
//!
//! This module imports nothing from the rest of the tool: every other module
//! imports it, so imports only go downward (main → bench → model, serve →
//! model) and no two modules need each other.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use muxado::heartbeat::HeartbeatConfig;
use muxado::transport::{TlsClientConfig, TlsServerConfig};

/// What a server does with each stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Write back every byte; half-close after the peer's FIN.
    Echo,
    /// Count bytes to the peer's FIN, answer the count as a big-endian u64.
    Sink,
    /// Bench-only (the `mixed` scenario): the first byte of each stream picks
    /// [`TAG_SINK`] or [`TAG_ECHO`] for the rest of it.
    #[value(skip)]
    Tagged,
}

/// First byte of a [`Mode::Tagged`] stream that is sunk.
pub const TAG_SINK: u8 = b'S';
/// First byte of a [`Mode::Tagged`] stream that is echoed.
pub const TAG_ECHO: u8 = b'E';

/// Which driver runs the sessions (`--driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// The io_uring engine if it can be set up here, else tokio (saying why
    /// in one line on stderr).
    Auto,
    /// The io_uring engine, or a clear error.
    Uring,
    /// tokio only: io_uring is never touched (not even probed).
    Tokio,
}

/// The driver the tool runs on, once `--driver` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Uring,
    Tokio,
}

/// Where a server listens or a client connects: a TCP address or a Unix
/// socket path (`--unix PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The TLS settings of the bench's `+tls` systems, one set for all of them
/// (the same certificate, the same rustls configurations, hence the same
/// cipher suite): the engine's `TlsStream` and tokio-rustls are both built
/// from these rustls configurations.
#[derive(Clone)]
pub struct BenchTls {
    pub client: TlsClientConfig,
    /// The local suite's servers; `None` with `--connect` (the server is
    /// elsewhere).
    pub server: Option<TlsServerConfig>,
    /// The name the server's certificate is checked against.
    pub server_name: String,
}

impl fmt::Debug for BenchTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchTls")
            .field("server", &self.server.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The heartbeat settings of `--heartbeat` (serve and bench).
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatOpts {
    pub config: HeartbeatConfig,
}

/// Settings of every engine the tool builds.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineOpts {
    /// `MUXADO_SEND_ZC=<min bytes>`: session writers send with `SEND_ZC`
    /// when a send carries at least this many bytes.
    pub send_zc_min: Option<usize>,
    /// `--busy-poll MICROS`: idle cores spin this long before sleeping.
    pub busy_poll: Duration,
}

impl EngineOpts {
    /// Reads `MUXADO_SEND_ZC` as the library used to: a byte count turns
    /// zero-copy sends on from that size; unset means off. A value that is
    /// not a byte count is ignored (off), now with a warning.
    pub fn from_env() -> EngineOpts {
        let send_zc_min = match std::env::var("MUXADO_SEND_ZC") {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    tracing::warn!(
                        "MUXADO_SEND_ZC={v:?} is not a byte count; zero-copy sends stay off"
                    );
                    None
                }
            },
            Err(_) => None,
        };
        EngineOpts {
            send_zc_min,
            busy_poll: Duration::ZERO,
        }
    }

    /// An engine builder with these settings.
    pub fn builder(&self) -> muxado::engine::Builder {
        muxado::Engine::builder()
            .send_zero_copy(self.send_zc_min)
            .busy_poll(self.busy_poll)
    }
}

/// The session settings of the bench (both ends) and of `muxado serve`:
/// room for the 1,024-stream cases and for bursts of opens. The accept
/// backlog equals the stream cap: every stream the cap admits may wait for
/// `accept` (a queued stream costs a few bytes), so a burst within the cap is
/// never refused with AcceptQueueFull.
pub fn bench_config() -> muxado::Config {
    muxado::Config::default()
        .with_max_streams(1 << 16)
        .with_accept_backlog(1 << 16)
}

/// Parses a duration such as `10`, `2.5`, `10s` or `500ms` (seconds unless
/// `ms`); `0` means none.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (t.strip_suffix('s').unwrap_or(t), 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected seconds (e.g. 10, 2.5s, 500ms)"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("invalid duration {s:?}"))
}

/// Parses a size such as `512M`, `2G`, `64K` or `1048576` (bytes; K, M, G
/// are powers of 1024, an optional trailing `B`/`iB` is accepted).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: usize = digits.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional K, M or G (e.g. 512M)")
    })?;
    let bytes = n
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!("size {s:?} is too small: at least 1M"));
    }
    Ok(bytes)
}

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
    /// 16 workers each connecting a new session, echoing 64 bytes on one
    /// stream and closing it: sessions/s (plain TCP: connect, echo, close).
    Connect,
    /// One bulk stream and one 64-byte rpc stream on the same session (plain
    /// TCP: two connections): rpc latency next to bulk Gbit/s.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Rpc => "rpc",
            Scenario::Open => "open",
            Scenario::Sessions => "sessions",
            Scenario::Connect => "connect",
            Scenario::Mixed => "mixed",
        }
    }

    /// What the server does with each stream in this scenario.
    pub fn server_mode(self) -> Mode {
        match self {
            Scenario::Bulk => Mode::Sink,
            Scenario::Mixed => Mode::Tagged,
            _ => Mode::Echo,
        }
    }

    pub fn default_streams(self) -> &'static [usize] {
        match self {
            Scenario::Bulk => &[1, 64],
            Scenario::Rpc => &[1, 64, 1024],
            Scenario::Open | Scenario::Connect => &[16],
            Scenario::Sessions => &[1000],
            Scenario::Mixed => &[1],
        }
    }

    pub fn default_size(self) -> usize {
        match self {
            Scenario::Bulk => 64 * 1024,
            Scenario::Open => 1,
            _ => 64,
        }
    }

    /// Throughput in Gbit/s is this scenario's headline (else ops/s).
    pub fn is_bulk(self) -> bool {
        matches!(self, Scenario::Bulk | Scenario::Mixed)
    }
}

/// Every scenario, in the order of the default suite.
pub const ALL_SCENARIOS: &[Scenario] = &[
    Scenario::Bulk,
    Scenario::Rpc,
    Scenario::Open,
    Scenario::Sessions,
    Scenario::Connect,
    Scenario::Mixed,
];

/// What carries the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// muxado-uring: streams of one muxado session on our engine.
    Muxado,
    /// Our muxado core on its tokio driver (`muxado::tokio`), on the same
    /// runtimes as ngrok-muxado and yamux.
    MuxadoTokio,
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
    /// `muxado` over TLS: rustls driven sans-IO on our engine (`TlsStream`).
    #[value(name = "muxado+tls")]
    MuxadoTls,
    /// `muxado-tokio` over tokio-rustls.
    #[value(name = "muxado-tokio+tls")]
    MuxadoTokioTls,
    /// `ngrok-muxado` over tokio-rustls.
    #[value(name = "ngrok-muxado+tls")]
    NgrokMuxadoTls,
}

pub const ALL_SYSTEMS: &[System] = &[
    System::TcpUring,
    System::Muxado,
    System::TcpTokio,
    System::TcpTokioUring,
    System::MuxadoTokio,
    System::NgrokMuxado,
    System::Yamux,
];

/// The plain-TCP systems: their best in a round is "tcp-best".
pub const TCP_SYSTEMS: &[System] = &[System::TcpUring, System::TcpTokio, System::TcpTokioUring];

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Muxado => "muxado",
            System::MuxadoTokio => "muxado-tokio",
            System::TcpUring => "tcp-uring",
            System::TcpTokio => "tcp-tokio",
            System::TcpTokioUring => "tcp-tokio-uring",
            System::NgrokMuxado => "ngrok-muxado",
            System::Yamux => "yamux",
            System::MuxadoTls => "muxado+tls",
            System::MuxadoTokioTls => "muxado-tokio+tls",
            System::NgrokMuxadoTls => "ngrok-muxado+tls",
        }
    }

    /// Runs over TLS.
    pub fn tls(self) -> bool {
        self.plain() != self
    }

    /// The same system without TLS (itself if it has none).
    pub fn plain(self) -> System {
        match self {
            System::MuxadoTls => System::Muxado,
            System::MuxadoTokioTls => System::MuxadoTokio,
            System::NgrokMuxadoTls => System::NgrokMuxado,
            s => s,
        }
    }

    /// The same system over TLS, if it has a TLS variant (or is one).
    pub fn over_tls(self) -> Option<System> {
        match self.plain() {
            System::Muxado => Some(System::MuxadoTls),
            System::MuxadoTokio => Some(System::MuxadoTokioTls),
            System::NgrokMuxado => Some(System::NgrokMuxadoTls),
            _ => None,
        }
    }

    /// Runs on our engine (else on tokio or tokio-uring).
    pub fn on_engine(self) -> bool {
        matches!(self.plain(), System::Muxado | System::TcpUring)
    }

    /// Speaks muxado (can be a `--connect` client).
    pub fn speaks_muxado(self) -> bool {
        matches!(
            self.plain(),
            System::Muxado | System::MuxadoTokio | System::NgrokMuxado
        )
    }

    /// Needs io_uring (our engine or tokio-uring): not run on the tokio driver.
    pub fn needs_uring(self) -> bool {
        matches!(
            self.plain(),
            System::Muxado | System::TcpUring | System::TcpTokioUring
        )
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

/// Counters the progress reporter reads while a case runs.
#[derive(Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub ops: AtomicU64,
}

/// Everything one run of one case needs, on both ends: built once by the
/// bench loop and handed down (no setting travels any other way).
#[derive(Clone)]
pub struct CaseRun {
    pub system: System,
    pub case: Case,
    pub placement: Placement,
    /// The bytes of each write (bulk) or request (rpc).
    pub payload: &'static [u8],
    /// The measured time.
    pub duration: Duration,
    pub progress: Arc<Progress>,
    /// `--heartbeat`, for our systems (`muxado`, `muxado-tokio`, their `+tls` rows) only.
    pub heartbeat: Option<HeartbeatOpts>,
    pub engine: EngineOpts,
    /// The TLS settings, for the `+tls` systems.
    pub tls: Option<Arc<BenchTls>>,
    /// Only the client half runs, against a server elsewhere (`--connect`).
    pub remote: bool,
}

/// What the client half of one case measured.
pub struct Measurement {
    /// Bytes moved (bulk: by the bulk streams).
    pub bytes: u64,
    /// Operations done (bulk: writes; mixed: rpc round trips).
    pub ops: u64,
    pub seconds: f64,
    /// Per-operation latency (rpc, open, connect; mixed: the rpc stream's).
    pub latency: Option<Histogram<u64>>,
    /// Jain's fairness index of the bytes moved per stream (bulk).
    pub fairness: Option<f64>,
}

impl Measurement {
    pub fn gbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }

    pub fn ops_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        self.latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}
