//! Counters of the gateway, and their Prometheus text endpoint.
//!
//! Each engine core owns one [`CoreMetrics`] and is the only writer of it
//! (relaxed atomic adds on lines no other core writes, so the hot path shares
//! nothing); a scrape sums the cores. The HTTP endpoint runs on its own
//! ordinary thread, off the engine.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The counters of one service on one core.
#[derive(Default)]
pub struct ServiceCounters {
    /// Public connections tunneled (accepted and given a stream).
    pub conns_opened: AtomicU64,
    /// Of those, finished.
    pub conns_closed: AtomicU64,
    /// Of those finished, ended by an error (either side reset, or the agent
    /// session died): the client got an RST.
    pub conns_reset: AtomicU64,
    /// Public connections refused (no agent, draining, stream open failed).
    pub refused: AtomicU64,
    /// Bytes from public clients to the origin.
    pub bytes_to_origin: AtomicU64,
    /// Bytes from the origin to public clients.
    pub bytes_to_client: AtomicU64,
    /// Agent sessions that bound this service, and those that ended.
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    /// Agent sessions that said they replace an earlier one.
    pub reconnects: AtomicU64,
}

/// The counters of one core.
pub struct CoreMetrics {
    pub services: Vec<ServiceCounters>,
    /// Agent connections refused at the handshake (wrong token, bad request,
    /// failed TLS handshake).
    pub auth_failures: AtomicU64,
}

impl CoreMetrics {
    pub fn new(services: usize) -> CoreMetrics {
        CoreMetrics {
            services: (0..services).map(|_| ServiceCounters::default()).collect(),
            auth_failures: AtomicU64::new(0),
        }
    }
}

/// Adds to a counter this core owns.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Byte counters of one tunneled connection's service (the splice's meter).
#[derive(Clone)]
pub struct Meter {
    core: Arc<CoreMetrics>,
    service: usize,
}

impl Meter {
    pub fn new(core: Arc<CoreMetrics>, service: usize) -> Meter {
        Meter { core, service }
    }

    pub fn to_origin(&self, n: usize) {
        add(&self.core.services[self.service].bytes_to_origin, n as u64);
    }

    pub fn to_client(&self, n: usize) {
        add(&self.core.services[self.service].bytes_to_client, n as u64);
    }
}

/// Every core's counters, with the service names.
pub struct Registry {
    pub names: Vec<String>,
    pub cores: Vec<Arc<CoreMetrics>>,
}

impl Registry {
    /// The Prometheus text exposition of the sums over all cores.
    pub fn render(&self) -> String {
        let sum = |f: &dyn Fn(&ServiceCounters) -> &AtomicU64, i: usize| -> u64 {
            self.cores
                .iter()
                .map(|c| f(&c.services[i]).load(Relaxed))
                .sum()
        };
        type Field = fn(&ServiceCounters) -> &AtomicU64;
        let mut out = String::new();
        let counters: [(&str, &str, &str, Field); 6] = [
            (
                "muxado_tunnel_connections_total",
                "counter",
                "Public connections tunneled to an agent.",
                |s| &s.conns_opened,
            ),
            (
                "muxado_tunnel_connections_reset_total",
                "counter",
                "Tunneled connections ended by an error (the client, the origin or the agent session failed): the client got a TCP RST, not a FIN.",
                |s| &s.conns_reset,
            ),
            (
                "muxado_tunnel_refused_total",
                "counter",
                "Public connections refused (no agent connected, draining, or the stream could not be opened).",
                |s| &s.refused,
            ),
            (
                "muxado_tunnel_bytes_to_origin_total",
                "counter",
                "Bytes from public clients to the origin.",
                |s| &s.bytes_to_origin,
            ),
            (
                "muxado_tunnel_bytes_to_client_total",
                "counter",
                "Bytes from the origin to public clients.",
                |s| &s.bytes_to_client,
            ),
            (
                "muxado_tunnel_agent_reconnects_total",
                "counter",
                "Agent sessions that replaced an earlier session of the same agent.",
                |s| &s.reconnects,
            ),
        ];
        for (name, kind, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, svc) in self.names.iter().enumerate() {
                let _ = writeln!(out, "{name}{{service=\"{svc}\"}} {}", sum(&field, i));
            }
        }
        let gauges: [(&str, &str, Field, Field); 2] = [
            (
                "muxado_tunnel_connections_active",
                "Public connections being tunneled now.",
                |s| &s.conns_opened,
                |s| &s.conns_closed,
            ),
            (
                "muxado_tunnel_agent_sessions",
                "Authenticated agent sessions serving the service now.",
                |s| &s.sessions_opened,
                |s| &s.sessions_closed,
            ),
        ];
        for (name, help, up, down) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (i, svc) in self.names.iter().enumerate() {
                let v = sum(&up, i).saturating_sub(sum(&down, i));
                let _ = writeln!(out, "{name}{{service=\"{svc}\"}} {v}");
            }
        }
        let fails: u64 = self
            .cores
            .iter()
            .map(|c| c.auth_failures.load(Relaxed))
            .sum();
        let _ = writeln!(
            out,
            "# HELP muxado_tunnel_auth_failures_total Agent connections refused at the handshake (token, request or TLS).\n\
             # TYPE muxado_tunnel_auth_failures_total counter\n\
             muxado_tunnel_auth_failures_total {fails}"
        );
        out
    }
}

/// Binds `addr` and serves `GET` (any path) with the metrics, one request per
/// connection, on a thread of its own. Returns the bound address.
pub fn serve(addr: SocketAddr, registry: Arc<Registry>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("muxado-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = answer(&mut conn, &registry);
            }
        })?;
    Ok(local)
}

fn answer(conn: &mut std::net::TcpStream, registry: &Registry) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    // Read the request head (bounded); its content does not matter.
    let mut head = [0u8; 4096];
    let mut len = 0;
    while len < head.len() {
        let n = conn.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let body = registry.render();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
