//! The client half of every scenario, written once against two small traits
//! ([`Client`], [`BenchStream`]) that each system implements on its own
//! runtime. Every worker of a case runs in one task (`join_all`), on one
//! thread, for every system alike.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;

use crate::bench::{Case, Scenario};

/// One stream (or one connection, for the plain-TCP systems) of a system.
#[allow(async_fn_in_trait)]
pub trait BenchStream {
    /// Writes all of `payload`.
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()>;
    /// Reads some bytes; 0 at the end of the stream.
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Half-closes (FIN); reading goes on.
    async fn finish(&mut self) -> io::Result<()>;
}

/// A client of a system: a session (or, for plain TCP, just the address).
#[allow(async_fn_in_trait)]
pub trait Client: Sized {
    type Stream: BenchStream;
    /// Connects to the server (starts a session).
    async fn connect(addr: SocketAddr, streams: usize) -> io::Result<Self>;
    /// Opens a stream (for plain TCP: a connection).
    async fn open(&self) -> io::Result<Self::Stream>;
    /// Sleeps on this system's runtime (the watchdog of a case).
    async fn sleep(d: Duration);
}

/// Counters the progress reporter reads while a case runs.
#[derive(Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub ops: AtomicU64,
}

/// What the client half of one case measured.
pub struct Measurement {
    pub bytes: u64,
    pub ops: u64,
    pub seconds: f64,
    pub latency: Option<Histogram<u64>>,
    /// Jain's fairness index of the bytes moved per stream (bulk).
    pub fairness: Option<f64>,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Jain's fairness index: (Σx)² / (n Σx²); 1 when every stream got the same.
pub fn jain(xs: &[u64]) -> f64 {
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let sq: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if sq == 0.0 {
        return 0.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Runs one case's client half against `addr` with client type `C`.
pub async fn drive<C: Client>(
    addr: SocketAddr,
    case: &Case,
    payload: &'static [u8],
    duration: Duration,
    progress: &Progress,
) -> Result<Measurement, String> {
    let limit = duration * 4 + Duration::from_secs(20);
    let work = std::pin::pin!(drive_inner::<C>(addr, case, payload, duration, progress));
    let watchdog = std::pin::pin!(C::sleep(limit));
    match futures::future::select(work, watchdog).await {
        futures::future::Either::Left((m, _)) => m,
        futures::future::Either::Right(_) => Err(format!(
            "timed out after {:.0} s (a stream stalled)",
            limit.as_secs_f64()
        )),
    }
}

async fn drive_inner<C: Client>(
    addr: SocketAddr,
    case: &Case,
    payload: &'static [u8],
    duration: Duration,
    progress: &Progress,
) -> Result<Measurement, String> {
    let sessions = if case.scenario == Scenario::Sessions {
        case.streams
    } else {
        1
    };
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(
            C::connect(addr, case.streams)
                .await
                .map_err(|e| err("connect", e))?,
        );
    }
    match case.scenario {
        Scenario::Bulk => bulk(&clients[0], case.streams, payload, duration, progress).await,
        Scenario::Rpc | Scenario::Sessions => {
            // Every stream opens and makes one round trip before the clock
            // starts (yamux holds back opens beyond 256 unacknowledged ones).
            let clients = &clients;
            let opens = (0..case.streams).map(|i| async move {
                let mut s = clients[i % clients.len()].open().await?;
                let mut reply = vec![0u8; payload.len()];
                s.send(payload).await?;
                recv_exact(&mut s, &mut reply).await?;
                io::Result::Ok(s)
            });
            let streams = join_all(opens)
                .await
                .into_iter()
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| err("open", e))?;
            rpc(streams, payload, duration, progress).await
        }
        Scenario::Open => open(&clients[0], case.streams, duration, progress).await,
    }
}

/// Reads exactly `buf.len()` bytes.
async fn recv_exact<S: BenchStream>(s: &mut S, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.recv(&mut buf[got..]).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(())
}

async fn bulk<C: Client>(
    client: &C,
    streams: usize,
    payload: &'static [u8],
    duration: Duration,
    progress: &Progress,
) -> Result<Measurement, String> {
    let mut opened = Vec::with_capacity(streams);
    for _ in 0..streams {
        opened.push(client.open().await.map_err(|e| err("open", e))?);
    }
    let start = Instant::now();
    let end = start + duration;
    let workers = opened.into_iter().map(|mut s| async move {
        let mut sent = 0u64;
        while Instant::now() < end {
            s.send(payload).await?;
            sent += payload.len() as u64;
            progress
                .bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        s.finish().await?;
        let mut count = [0u8; 8];
        recv_exact(&mut s, &mut count).await?;
        let received = u64::from_be_bytes(count);
        if received != sent {
            return Err(io::Error::other(format!(
                "sink counted {received} bytes, {sent} were sent"
            )));
        }
        io::Result::Ok(sent)
    });
    let results = join_all(workers).await;
    let seconds = start.elapsed().as_secs_f64();
    let per_stream = results
        .into_iter()
        .collect::<io::Result<Vec<u64>>>()
        .map_err(|e| err("bulk", e))?;
    let bytes: u64 = per_stream.iter().sum();
    Ok(Measurement {
        bytes,
        ops: bytes / payload.len() as u64,
        seconds,
        latency: None,
        fairness: Some(jain(&per_stream)),
    })
}

/// Warm-up before the measured window of the rpc and open scenarios.
fn warmup(duration: Duration) -> Duration {
    (duration / 5).clamp(Duration::from_millis(50), Duration::from_millis(300))
}

async fn rpc<S: BenchStream>(
    streams: Vec<S>,
    payload: &'static [u8],
    duration: Duration,
    progress: &Progress,
) -> Result<Measurement, String> {
    let hist = Rc::new(RefCell::new(new_histogram()));
    let measure_from = Instant::now() + warmup(duration);
    let end = measure_from + duration;
    let size = payload.len();
    let workers = streams.into_iter().map(|mut s| {
        let hist = hist.clone();
        async move {
            let mut reply = vec![0u8; size];
            let mut ops = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                s.send(payload).await?;
                recv_exact(&mut s, &mut reply).await?;
                if t >= measure_from {
                    let _ = hist
                        .borrow_mut()
                        .record(t.elapsed().as_nanos().max(1) as u64);
                    ops += 1;
                    progress.ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            if reply != payload {
                return Err(io::Error::other("echo differs from the request"));
            }
            s.finish().await?;
            let mut rest = [0u8; 64];
            while s.recv(&mut rest).await? > 0 {}
            io::Result::Ok(ops)
        }
    });
    latency_result("rpc", join_all(workers).await, hist, size as u64, duration)
}

async fn open<C: Client>(
    client: &C,
    workers: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<Measurement, String> {
    static ONE: [u8; 1] = [0x4F];
    let hist = Rc::new(RefCell::new(new_histogram()));
    let measure_from = Instant::now() + warmup(duration);
    let end = measure_from + duration;
    let workers = (0..workers).map(|_| {
        let hist = hist.clone();
        async move {
            let mut ops = 0u64;
            let mut buf = [0u8; 16];
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let mut s = client.open().await?;
                s.send(&ONE).await?;
                s.finish().await?;
                let mut got = 0;
                loop {
                    match s.recv(&mut buf[got..]).await? {
                        0 => break,
                        n => got += n,
                    }
                }
                if got != 1 {
                    return Err(io::Error::other(format!("echo of 1 byte gave {got}")));
                }
                drop(s);
                if t >= measure_from {
                    let _ = hist
                        .borrow_mut()
                        .record(t.elapsed().as_nanos().max(1) as u64);
                    ops += 1;
                    progress.ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            io::Result::Ok(ops)
        }
    });
    latency_result("open", join_all(workers).await, hist, 1, duration)
}

/// Sums the workers' operation counts and takes the shared latency histogram
/// back: the common end of the latency scenarios.
fn latency_result(
    what: &str,
    results: Vec<io::Result<u64>>,
    hist: Rc<RefCell<Histogram<u64>>>,
    bytes_per_op: u64,
    duration: Duration,
) -> Result<Measurement, String> {
    let ops: u64 = results
        .into_iter()
        .collect::<io::Result<Vec<u64>>>()
        .map_err(|e| err(what, e))?
        .iter()
        .sum();
    let hist = Rc::try_unwrap(hist)
        .map_err(|_| "histogram still shared".to_string())?
        .into_inner();
    Ok(Measurement {
        bytes: ops * bytes_per_op,
        ops,
        seconds: duration.as_secs_f64(),
        latency: Some(hist),
        fairness: None,
    })
}
