//! The client half of every scenario, written once against two small traits
//! ([`Client`], [`BenchStream`]) that each system implements on its own
//! runtime. Every worker of a case runs in one task (`join_all`), on one
//! thread, for every system alike.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::future::{join, join_all};
use hdrhistogram::Histogram;

use super::loopback;
use crate::model::{
    new_histogram, CaseRun, Endpoint, Measurement, Progress, Scenario, TAG_ECHO, TAG_SINK,
};

/// One stream (or one connection, for the plain-TCP systems) of a system.
#[allow(async_fn_in_trait)]
pub trait BenchStream {
    /// Writes all of `payload`.
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()>;
    /// Writes all of `payload` in the `bulk` scenario: by default as
    /// [`BenchStream::send`]; a system whose API takes the payload by
    /// reference (muxado's `write_all_bytes`) hands it over that way.
    async fn send_bulk(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.send(payload).await
    }
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
    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self>;
    /// Opens a stream (for plain TCP: a connection).
    async fn open(&self) -> io::Result<Self::Stream>;
    /// Ends the session (the `connect` scenario); by default, by dropping it.
    async fn close(self) {}
    /// Sleeps on this system's runtime (the watchdog of a case).
    async fn sleep(d: Duration);
}

/// Size of the bulk stream's writes in the `mixed` scenario.
const MIXED_BULK_SIZE: usize = 64 * 1024;

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

/// Runs one case's client half against `addr` with client type `C`, within
/// a time limit (a stalled stream fails the case instead of hanging it).
pub async fn drive<C: Client>(to: &Endpoint, run: &CaseRun) -> Result<Measurement, String> {
    let limit = run.duration * 4 + Duration::from_secs(20);
    let work = std::pin::pin!(drive_inner::<C>(to, run));
    let watchdog = std::pin::pin!(C::sleep(limit));
    match futures::future::select(work, watchdog).await {
        futures::future::Either::Left((m, _)) => m,
        futures::future::Either::Right(_) => Err(format!(
            "timed out after {:.0} s (a stream stalled)",
            limit.as_secs_f64()
        )),
    }
}

async fn drive_inner<C: Client>(to: &Endpoint, run: &CaseRun) -> Result<Measurement, String> {
    let case = &run.case;
    if case.scenario == Scenario::Connect {
        return connect::<C>(to, run).await;
    }
    let sessions = if case.scenario == Scenario::Sessions {
        case.streams
    } else {
        1
    };
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(C::connect(to, run).await.map_err(|e| err("connect", e))?);
    }
    let payload = run.payload;
    match case.scenario {
        Scenario::Bulk => bulk(&clients[0], run).await,
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
            rpc(streams, run).await
        }
        Scenario::Open => open(&clients[0], run).await,
        Scenario::Mixed => mixed(&clients[0], run).await,
        Scenario::Connect => unreachable!("handled above"),
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

/// Writes `payload` until `end` (with [`BenchStream::send_bulk`] if
/// `bulk`), half-closes, and checks the sink's count.
async fn sink_until<S: BenchStream>(
    s: &mut S,
    payload: &'static [u8],
    end: Instant,
    progress: &Progress,
    bulk: bool,
) -> io::Result<u64> {
    let mut sent = 0u64;
    while Instant::now() < end {
        if bulk {
            s.send_bulk(payload).await?;
        } else {
            s.send(payload).await?;
        }
        sent += payload.len() as u64;
        progress
            .bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
    }
    s.finish().await?;
    let mut count = [0u8; 8];
    recv_exact(s, &mut count).await?;
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(io::Error::other(format!(
            "sink counted {received} bytes, {sent} were sent"
        )));
    }
    Ok(sent)
}

async fn bulk<C: Client>(client: &C, run: &CaseRun) -> Result<Measurement, String> {
    let payload = run.payload;
    let mut opened = Vec::with_capacity(run.case.streams);
    for _ in 0..run.case.streams {
        opened.push(client.open().await.map_err(|e| err("open", e))?);
    }
    let start = Instant::now();
    let end = start + run.duration;
    let progress = &*run.progress;
    let workers = opened
        .into_iter()
        .map(|mut s| async move { sink_until(&mut s, payload, end, progress, true).await });
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

/// Warm-up before the measured window of the latency scenarios.
fn warmup(duration: Duration) -> Duration {
    (duration / 5).clamp(Duration::from_millis(50), Duration::from_millis(300))
}

/// Request/response on `s` until `end`, recording the round trips that
/// start after `measure_from`; then half-closes and drains. Returns the
/// recorded count.
async fn rpc_loop<S: BenchStream>(
    s: &mut S,
    payload: &'static [u8],
    (measure_from, end): (Instant, Instant),
    hist: &RefCell<Histogram<u64>>,
    progress: &Progress,
) -> io::Result<u64> {
    let mut reply = vec![0u8; payload.len()];
    let mut ops = 0u64;
    let mut any = false;
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        s.send(payload).await?;
        recv_exact(s, &mut reply).await?;
        any = true;
        if t >= measure_from {
            let _ = hist
                .borrow_mut()
                .record(t.elapsed().as_nanos().max(1) as u64);
            ops += 1;
            progress.ops.fetch_add(1, Ordering::Relaxed);
        }
    }
    if any && reply != payload {
        return Err(io::Error::other("echo differs from the request"));
    }
    s.finish().await?;
    let mut rest = [0u8; 64];
    while s.recv(&mut rest).await? > 0 {}
    Ok(ops)
}

async fn rpc<S: BenchStream>(streams: Vec<S>, run: &CaseRun) -> Result<Measurement, String> {
    let hist = RefCell::new(new_histogram());
    let measure_from = Instant::now() + warmup(run.duration);
    let window = (measure_from, measure_from + run.duration);
    let (hist_ref, progress) = (&hist, &*run.progress);
    let workers = streams.into_iter().map(|mut s| async move {
        rpc_loop(&mut s, run.payload, window, hist_ref, progress).await
    });
    let results = join_all(workers).await;
    latency_result("rpc", results, hist, run)
}

async fn open<C: Client>(client: &C, run: &CaseRun) -> Result<Measurement, String> {
    let hist = RefCell::new(new_histogram());
    let measure_from = Instant::now() + warmup(run.duration);
    let end = measure_from + run.duration;
    let (hist, progress) = (Rc::new(hist), &*run.progress);
    let workers = (0..run.case.streams).map(|_| {
        let hist = hist.clone();
        async move {
            let mut ops = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let mut s = client.open().await?;
                echo_once(&mut s, run.payload).await?;
                drop(s);
                if t >= measure_from {
                    record(&hist, t, progress);
                    ops += 1;
                }
            }
            io::Result::Ok(ops)
        }
    });
    let results = join_all(workers).await;
    let hist = Rc::try_unwrap(hist).map_err(|_| "histogram still shared".to_string())?;
    latency_result("open", results, hist, run)
}

/// `connect`: each worker connects a session, echoes the payload once on one
/// stream and closes the session, again and again.
async fn connect<C: Client>(to: &Endpoint, run: &CaseRun) -> Result<Measurement, String> {
    let hist = Rc::new(RefCell::new(new_histogram()));
    let measure_from = Instant::now() + warmup(run.duration);
    let end = measure_from + run.duration;
    let progress = &*run.progress;
    let workers = (0..run.case.streams).map(|k| {
        let hist = hist.clone();
        let to = loopback::for_worker(to, run, k);
        async move {
            let mut ops = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let client = C::connect(&to, run).await?;
                let mut s = client.open().await?;
                echo_once(&mut s, run.payload).await?;
                drop(s);
                client.close().await;
                if t >= measure_from {
                    record(&hist, t, progress);
                    ops += 1;
                }
            }
            io::Result::Ok(ops)
        }
    });
    let results = join_all(workers).await;
    let hist = Rc::try_unwrap(hist).map_err(|_| "histogram still shared".to_string())?;
    latency_result("connect", results, hist, run)
}

/// Sends `msg`, half-closes and reads the echo to its end.
async fn echo_once<S: BenchStream>(s: &mut S, msg: &'static [u8]) -> io::Result<()> {
    s.send(msg).await?;
    s.finish().await?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    loop {
        match s.recv(&mut buf).await? {
            0 => break,
            n => got += n,
        }
    }
    if got != msg.len() {
        return Err(io::Error::other(format!(
            "echo of {} bytes gave {got}",
            msg.len()
        )));
    }
    Ok(())
}

fn record(hist: &RefCell<Histogram<u64>>, t: Instant, progress: &Progress) {
    let _ = hist
        .borrow_mut()
        .record(t.elapsed().as_nanos().max(1) as u64);
    progress.ops.fetch_add(1, Ordering::Relaxed);
}

/// `mixed`: a bulk stream into a sink beside an rpc stream, on one session.
async fn mixed<C: Client>(client: &C, run: &CaseRun) -> Result<Measurement, String> {
    static SINK: [u8; 1] = [TAG_SINK];
    static ECHO: [u8; 1] = [TAG_ECHO];
    static BULK: OnceLock<Box<[u8]>> = OnceLock::new();
    let bulk_payload: &'static [u8] =
        BULK.get_or_init(|| (0..MIXED_BULK_SIZE).map(|i| i as u8).collect());
    let mut bulk = client.open().await.map_err(|e| err("open", e))?;
    let mut rpc = client.open().await.map_err(|e| err("open", e))?;
    let start = Instant::now();
    let measure_from = start + warmup(run.duration);
    let end = measure_from + run.duration;
    let hist = RefCell::new(new_histogram());
    let progress = &*run.progress;
    let bulk_side = async {
        bulk.send(&SINK).await?;
        sink_until(&mut bulk, bulk_payload, end, progress, false).await
    };
    let rpc_side = async {
        rpc.send(&ECHO).await?;
        rpc_loop(&mut rpc, run.payload, (measure_from, end), &hist, progress).await
    };
    let (bytes, ops) = join(bulk_side, rpc_side).await;
    let seconds = start.elapsed().as_secs_f64();
    let bytes = bytes.map_err(|e| err("mixed bulk", e))?;
    let ops = ops.map_err(|e| err("mixed rpc", e))?;
    Ok(Measurement {
        bytes,
        ops,
        seconds,
        latency: Some(hist.into_inner()),
        fairness: None,
    })
}

/// Sums the workers' operation counts: the common end of the latency
/// scenarios.
fn latency_result(
    what: &str,
    results: Vec<io::Result<u64>>,
    hist: RefCell<Histogram<u64>>,
    run: &CaseRun,
) -> Result<Measurement, String> {
    let ops: u64 = results
        .into_iter()
        .collect::<io::Result<Vec<u64>>>()
        .map_err(|e| err(what, e))?
        .iter()
        .sum();
    Ok(Measurement {
        bytes: ops * run.payload.len() as u64,
        ops,
        seconds: run.duration.as_secs_f64(),
        latency: Some(hist.into_inner()),
        fairness: None,
    })
}
