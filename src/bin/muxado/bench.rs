//! `muxado bench`: the loopback multiplexing-overhead benchmark.
//!
//! Every scenario runs against every system in the same invocation, so each
//! figure is read as a ratio to the `tcp-uring` row (plain TCP on the same
//! engine): absolute numbers drift on shared machines, ratios taken side by
//! side do not.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use muxado::engine::{self, net::TcpListener, net::TcpStream, Engine};
use muxado::{Config, Session};

use crate::serve::{self, Mode};

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Writes of `--size` bytes into a sink stream for `--duration`.
    Bulk,
    /// 64-byte request/response on an echo stream.
    Rpc,
}

/// What carries the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// muxado-uring: streams of one muxado session.
    Muxado,
    /// One plain TCP connection per stream, on the same engine.
    TcpUring,
}

/// Where the client and the server run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Client on CPU 0, server on CPU 1.
    Split,
    /// Client and server on one core (CPU 0).
    Shared,
}

/// The options of one bench run.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenarios: Vec<Scenario>,
    pub systems: Vec<System>,
    pub placements: Vec<Placement>,
    pub duration: Duration,
    pub size: usize,
    pub json: bool,
    pub connect: Option<SocketAddr>,
}

/// What one client run measured.
struct Measurement {
    bytes: u64,
    ops: u64,
    seconds: f64,
    latency: Option<Histogram<u64>>,
}

/// One line of the result table.
struct Row {
    scenario: Scenario,
    system: System,
    placement: &'static str,
    streams: usize,
    msg_size: usize,
    m: Measurement,
}

impl Row {
    fn gbit_s(&self) -> f64 {
        self.m.bytes as f64 * 8.0 / self.m.seconds / 1e9
    }

    fn ops_s(&self) -> f64 {
        self.m.ops as f64 / self.m.seconds
    }

    fn quantile_us(&self, q: f64) -> Option<f64> {
        self.m
            .latency
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The figure a ratio is taken of: throughput for bulk, ops/s for rpc.
    fn headline(&self) -> f64 {
        match self.scenario {
            Scenario::Bulk => self.gbit_s(),
            Scenario::Rpc => self.ops_s(),
        }
    }
}

/// Runs the selected scenarios × systems × placements and prints the table.
pub fn run(opts: &Options) -> Result<(), String> {
    if let Some(addr) = opts.connect {
        return run_remote(opts, addr);
    }
    let mut rows = Vec::new();
    for &scenario in &opts.scenarios {
        for &placement in &opts.placements {
            for &system in &opts.systems {
                let m = run_local(opts, scenario, system, placement)?;
                let row = Row {
                    scenario,
                    system,
                    placement: placement_name(placement),
                    streams: 1,
                    msg_size: msg_size(opts, scenario),
                    m,
                };
                if opts.json {
                    println!("{}", json_line(&row));
                } else {
                    eprintln!("  done: {:?} {:?} {}", scenario, system, row.placement);
                }
                rows.push(row);
            }
        }
    }
    if !opts.json {
        print_table(&rows);
    }
    Ok(())
}

fn placement_name(p: Placement) -> &'static str {
    match p {
        Placement::Split => "client CPU0 / server CPU1",
        Placement::Shared => "client+server CPU0",
    }
}

fn msg_size(opts: &Options, scenario: Scenario) -> usize {
    match scenario {
        Scenario::Bulk => opts.size,
        Scenario::Rpc => 64,
    }
}

/// The client half against a server elsewhere (ours, ngrok's, Go's).
fn run_remote(opts: &Options, addr: SocketAddr) -> Result<(), String> {
    let mut rows = Vec::new();
    for &scenario in &opts.scenarios {
        let (duration, size) = (opts.duration, msg_size(opts, scenario));
        let m = engine::block_on(async move {
            client(System::Muxado, scenario, addr, duration, size).await
        })
        .map_err(|e| e.to_string())??;
        let row = Row {
            scenario,
            system: System::Muxado,
            placement: "remote server",
            streams: 1,
            msg_size: size,
            m,
        };
        if opts.json {
            println!("{}", json_line(&row));
        }
        rows.push(row);
    }
    if !opts.json {
        print_table(&rows);
    }
    Ok(())
}

/// Starts an engine, a server and a client for one case.
fn run_local(
    opts: &Options,
    scenario: Scenario,
    system: System,
    placement: Placement,
) -> Result<Measurement, String> {
    let mode = match scenario {
        Scenario::Bulk => Mode::Sink,
        Scenario::Rpc => Mode::Echo,
    };
    let (duration, size) = (opts.duration, msg_size(opts, scenario));
    match placement {
        Placement::Shared => engine::block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            engine::spawn(server(system, listener, mode));
            client(system, scenario, addr, duration, size).await
        })
        .map_err(|e| e.to_string())?,
        Placement::Split => {
            let engine = Engine::builder()
                .cores(2)
                .build()
                .map_err(|e| e.to_string())?;
            let (port_tx, port_rx) = mpsc::sync_channel::<SocketAddr>(1);
            let port_rx = Arc::new(Mutex::new(port_rx));
            let stop = Arc::new(AtomicBool::new(false));
            let results = engine
                .run(move |core| {
                    let (port_tx, port_rx, stop) = (port_tx.clone(), port_rx.clone(), stop.clone());
                    async move {
                        if core == 1 {
                            let listener = TcpListener::bind("127.0.0.1:0").ok()?;
                            port_tx.send(listener.local_addr().ok()?).ok()?;
                            engine::spawn(server(system, listener, mode));
                            while !stop.load(Ordering::Acquire) {
                                engine::sleep(Duration::from_millis(20)).await;
                            }
                            None
                        } else {
                            let addr = port_rx.lock().ok()?.recv().ok()?;
                            let m = client(system, scenario, addr, duration, size).await;
                            stop.store(true, Ordering::Release);
                            Some(m)
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
            results
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_else(|| Err("the server core did not start".into()))
        }
    }
}

async fn server(system: System, listener: TcpListener, mode: Mode) {
    match system {
        System::Muxado => serve::muxado_server(listener, mode, Config::default()).await,
        System::TcpUring => serve::tcp_server(listener, mode).await,
    }
}

async fn client(
    system: System,
    scenario: Scenario,
    addr: SocketAddr,
    duration: Duration,
    size: usize,
) -> Result<Measurement, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let r = match (system, scenario) {
        (System::Muxado, Scenario::Bulk) => muxado_bulk(tcp, duration, size).await,
        (System::Muxado, Scenario::Rpc) => muxado_rpc(tcp, duration).await,
        (System::TcpUring, Scenario::Bulk) => tcp_bulk(tcp, duration, size).await,
        (System::TcpUring, Scenario::Rpc) => tcp_rpc(tcp, duration).await,
    };
    r.map_err(|e| format!("{system:?} {scenario:?}: {e}"))
}

type BoxError = Box<dyn std::error::Error>;

async fn muxado_bulk(
    tcp: TcpStream,
    duration: Duration,
    size: usize,
) -> Result<Measurement, BoxError> {
    let session = Session::client(tcp, Config::default());
    let mut stream = session.open()?;
    let buf = vec![0x5Au8; size];
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        stream.write_all(&buf).await?;
        sent += size as u64;
    }
    stream.close_write()?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let seconds = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(format!("sink counted {received} bytes, {sent} were sent").into());
    }
    let _ = session.close();
    Ok(Measurement {
        bytes: sent,
        ops: sent / size as u64,
        seconds,
        latency: None,
    })
}

async fn tcp_bulk(
    tcp: TcpStream,
    duration: Duration,
    size: usize,
) -> Result<Measurement, BoxError> {
    let mut buf = vec![0x5Au8; size];
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        let (r, b) = tcp.send_all(buf).await;
        buf = b;
        r?;
        sent += size as u64;
    }
    tcp.shutdown_write()?;
    let mut count = Vec::with_capacity(8);
    let mut rx = tcp.recv_multishot();
    while count.len() < 8 {
        match rx.next().await? {
            Some(chunk) => count.extend_from_slice(&chunk),
            None => return Err("server closed before the count".into()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count[..8].try_into()?);
    if received != sent {
        return Err(format!("sink counted {received} bytes, {sent} were sent").into());
    }
    Ok(Measurement {
        bytes: sent,
        ops: sent / size as u64,
        seconds,
        latency: None,
    })
}

const RPC_SIZE: usize = 64;
const RPC_WARMUP: usize = 1000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

async fn muxado_rpc(tcp: TcpStream, duration: Duration) -> Result<Measurement, BoxError> {
    let session = Session::client(tcp, Config::default());
    let mut stream = session.open()?;
    let request = [0xA5u8; RPC_SIZE];
    let mut reply = [0u8; RPC_SIZE];
    let mut hist = new_histogram();
    let mut ops = 0u64;
    for _ in 0..RPC_WARMUP {
        stream.write_all(&request).await?;
        stream.read_exact(&mut reply).await?;
    }
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut reply).await?;
        hist.record(t.elapsed().as_nanos() as u64)?;
        ops += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    if reply != request {
        return Err("echo differs from the request".into());
    }
    let _ = session.close();
    Ok(Measurement {
        bytes: ops * RPC_SIZE as u64,
        ops,
        seconds,
        latency: Some(hist),
    })
}

async fn tcp_rpc(tcp: TcpStream, duration: Duration) -> Result<Measurement, BoxError> {
    let tcp = Rc::new(tcp);
    let mut rx = tcp.recv_multishot();
    let mut request = vec![0xA5u8; RPC_SIZE];
    let mut hist = new_histogram();
    let mut ops = 0u64;
    let mut round_trip = async |request: Vec<u8>| -> Result<Vec<u8>, BoxError> {
        let (r, request) = tcp.send_all(request).await;
        r?;
        let mut got = 0;
        while got < RPC_SIZE {
            match rx.next().await? {
                Some(chunk) => got += chunk.len(),
                None => return Err("server closed".into()),
            }
        }
        Ok(request)
    };
    for _ in 0..RPC_WARMUP {
        request = round_trip(request).await?;
    }
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        request = round_trip(request).await?;
        hist.record(t.elapsed().as_nanos() as u64)?;
        ops += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Measurement {
        bytes: ops * RPC_SIZE as u64,
        ops,
        seconds,
        latency: Some(hist),
    })
}

fn json_line(r: &Row) -> String {
    let q = |q| {
        r.quantile_us(q)
            .map_or("null".to_string(), |v| format!("{v:.1}"))
    };
    format!(
        "{{\"scenario\":\"{:?}\",\"system\":\"{}\",\"placement\":\"{}\",\"streams\":{},\"msg_size\":{},\"seconds\":{:.3},\"gbit_s\":{:.3},\"ops_s\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
        r.scenario,
        system_name(r.system),
        r.placement,
        r.streams,
        r.msg_size,
        r.m.seconds,
        r.gbit_s(),
        r.ops_s(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
    )
    .to_lowercase()
}

fn system_name(s: System) -> &'static str {
    match s {
        System::Muxado => "muxado",
        System::TcpUring => "tcp-uring",
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<6} {:<10} {:<26} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "case",
        "system",
        "placement",
        "Gbit/s",
        "ops/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "× tcp"
    );
    for r in rows {
        let base = rows.iter().find(|b| {
            b.system == System::TcpUring && b.scenario == r.scenario && b.placement == r.placement
        });
        let ratio = base.map_or("-".to_string(), |b| {
            format!("{:.2}", r.headline() / b.headline())
        });
        let q = |q| {
            r.quantile_us(q)
                .map_or("-".to_string(), |v| format!("{v:.1}"))
        };
        println!(
            "{:<6} {:<10} {:<26} {:>9.2} {:>10.0} {:>9} {:>9} {:>9} {:>10} {:>8}",
            format!("{:?}", r.scenario).to_lowercase(),
            system_name(r.system),
            r.placement,
            r.gbit_s(),
            r.ops_s(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            ratio
        );
    }
}
