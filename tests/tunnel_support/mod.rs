//! Shared helpers of the tunnel tests: the gateway and agent as processes
//! (the built `muxado` binary), small origins on std threads, and bounded
//! waits. Every wait has a deadline and panics with the process logs.
#![allow(dead_code)]

pub mod pki;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_muxado");
pub const TOKEN: &str = "test-token-0123456789";

/// A free loopback address (bound then released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// `N` distinct free loopback addresses: all bound at once, then released
/// (one at a time, the kernel may hand out the same port twice).
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr"))
}

/// The gateway's log line once its metrics endpoint listens (its error
/// line, "metrics on ADDR: …", must not count).
const METRICS_UP: &str = "metrics on http://";

/// A directory for logs, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "muxado-tunnel-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `RUST_LOG` of the processes: `info`, or `$TUNNEL_TEST_LOG` (to debug a
/// failing test, e.g. `TUNNEL_TEST_LOG=debug`).
pub fn default_log() -> String {
    std::env::var("TUNNEL_TEST_LOG").unwrap_or_else(|_| "info".into())
}

/// A gateway or agent process, killed when dropped; stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn start(name: &str, dir: &TempDir, args: &[String], token: &str) -> Proc {
        Proc::start_logging(name, dir, args, token, &default_log())
    }

    /// Like [`Proc::start`], with `RUST_LOG=rust_log`.
    pub fn start_logging(
        name: &str,
        dir: &TempDir,
        args: &[String],
        token: &str,
        rust_log: &str,
    ) -> Proc {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = dir
            .0
            .join(format!("{name}-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env("MUXADO_TOKEN", token)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start muxado");
        Proc {
            child,
            log,
            name: name.to_string(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times.
    pub fn wait_log_count(&mut self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if text.matches(needle).count() >= count {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{text}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {limit:?}:\n{text}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        self.wait_log_count(needle, 1, limit)
    }

    /// Waits for the process to exit; kills it and panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {limit:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }
}

pub const SIGTERM: i32 = libc::SIGTERM;

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Addresses of one tunnel setup.
pub struct Tunnel {
    pub dir: TempDir,
    pub agents: SocketAddr,
    pub public: SocketAddr,
    pub metrics: SocketAddr,
    pub gateway: Proc,
}

/// Starts a gateway exposing `web` (one core) and waits until it listens.
pub fn gateway(extra: &[&str]) -> Tunnel {
    gateway_logging(extra, &default_log())
}

pub fn start_gateway(
    dir: &TempDir,
    agents: SocketAddr,
    public: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> Proc {
    start_gateway_logging(dir, agents, public, metrics, extra, &default_log())
}

/// `muxado gateway` arguments: agents on `agents`, `web` on `public`,
/// metrics on `metrics`, then `extra`.
fn gateway_args(
    agents: SocketAddr,
    public: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "gateway".into(),
        "--agents".into(),
        agents.to_string(),
        "--expose".into(),
        format!("web={public}"),
        "--metrics".into(),
        metrics.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A gateway exposing `web` with `RUST_LOG=rust_log`.
///
/// The free ports are picked before the gateway binds them, so a parallel
/// test may take one meanwhile: the gateway then exits at once saying so,
/// and it is started again on other ports (a few times).
pub fn gateway_logging(extra: &[&str], rust_log: &str) -> Tunnel {
    let dir = TempDir::new("gw");
    for _ in 0..4 {
        let [agents, public, metrics] = free_addrs();
        let args = gateway_args(agents, public, metrics, extra);
        let mut gw = Proc::start_logging("gateway", &dir, &args, TOKEN, rust_log);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = gw.log_text();
            if text.contains(METRICS_UP) {
                return Tunnel {
                    dir,
                    agents,
                    public,
                    metrics,
                    gateway: gw,
                };
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                assert!(
                    text.contains("Address already in use"),
                    "the gateway exited ({status}) before listening:\n{text}"
                );
                break; // a port was taken meanwhile: other ports
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not listen within 10 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("the gateway found no free ports in 4 tries");
}

pub fn start_gateway_logging(
    dir: &TempDir,
    agents: SocketAddr,
    public: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
    rust_log: &str,
) -> Proc {
    let args = gateway_args(agents, public, metrics, extra);
    let mut gw = Proc::start_logging("gateway", dir, &args, TOKEN, rust_log);
    gw.wait_log(METRICS_UP, Duration::from_secs(10));
    gw
}

impl Tunnel {
    /// Starts an agent forwarding `web` to `origin` and waits until the
    /// gateway has `sessions` sessions logged in total.
    pub fn agent(&mut self, origin: SocketAddr, extra: &[&str], token: &str) -> Proc {
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--gateway".into(),
            self.agents.to_string(),
            "--forward".into(),
            format!("web={origin}"),
            "--max-backoff".into(),
            "0.5".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::start("agent", &self.dir, &args, token)
    }

    /// An agent, and waits until the gateway logged `n` agent connections.
    pub fn agent_connected(&mut self, origin: SocketAddr, extra: &[&str], n: usize) -> Proc {
        let agent = self.agent(origin, extra, TOKEN);
        self.gateway
            .wait_log_count("connected (core", n, Duration::from_secs(10));
        agent
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.public).unwrap_or_else(|e| {
            // A refused connect usually means the gateway is gone: show why
            // (its log says, e.g., that io_uring is unavailable).
            panic!(
                "connect to the public address: {e}; gateway log:\n{}",
                self.gateway.log_text()
            )
        });
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// GET /metrics, the body.
    pub fn scrape(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read metrics");
        assert!(out.starts_with("HTTP/1.1 200 OK"), "bad response: {out}");
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }
}

/// The value of `name{service="web"}` (or a bare `name`) in a scrape.
pub fn metric(body: &str, name: &str) -> u64 {
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(key), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        if key == name || key == format!("{name}{{service=\"web\"}}") {
            return v.parse().expect("metric value");
        }
    }
    panic!("metric {name} missing in:\n{body}")
}

/// An origin on its own thread: `serve` runs for each connection.
pub struct Origin {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
}

pub fn origin(serve: fn(TcpStream)) -> Origin {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            count.fetch_add(1, Ordering::Relaxed);
            thread::spawn(move || serve(c));
        }
    });
    Origin { addr, accepted }
}

/// Echo every byte; half-close after the peer's FIN.
pub fn echo(mut c: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = c.shutdown(Shutdown::Write);
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` on one thread while reading everything back on this one,
/// with a half-close after the data; returns what came back.
pub fn echo_roundtrip(mut s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&data).expect("write to the tunnel");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read from the tunnel");
    writer.join().unwrap();
    back
}

/// True if the connection ends (EOF or error) within `limit`.
pub fn ends_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
        if start.elapsed() > limit {
            return false;
        }
    }
}
