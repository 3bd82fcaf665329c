//! `muxado serve`: echo and sink servers, over muxado sessions or plain TCP.
//!
//! echo: every byte read from a stream is written back; after the peer's FIN
//! the stream is half-closed. sink: read to the peer's FIN, then write the
//! byte count as a big-endian u64 and half-close. The bench's servers on our
//! engine are these same functions.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muxado::engine::{self, net::TcpListener, net::TcpStream};
use muxado::heartbeat::{Heartbeat, HeartbeatEvent};
use muxado::typed::TypedSession;
use muxado::{Config, Session, Stream};

use crate::model::{HeartbeatOpts, Mode, TAG_SINK};

/// Size of the buffers streams are served with.
pub const BUF_SIZE: usize = 64 * 1024;
/// Buffers a pool keeps at most (64 MiB).
const POOL_MAX: usize = 1024;

/// Buffers of finished streams, reused by the next ones: a server taking
/// many short streams should not allocate and zero 64 KiB for each. Every
/// bench server (ours and the tokio peers') serves with one, so that none
/// pays for allocation the others skip. A mutex rather than a `RefCell` so
/// that tokio's `Send` tasks can share it; it is taken once per stream, not
/// per read, by one thread.
#[derive(Clone, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    /// A buffer of [`BUF_SIZE`] bytes' capacity, returned to the pool on
    /// drop; `filled`: also of that length (zeroed only when new), to read into.
    pub fn take(&self, filled: bool) -> PooledBuf {
        let mut buf = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        if filled && buf.len() < BUF_SIZE {
            buf.resize(BUF_SIZE, 0);
        }
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }
}

/// A buffer of a [`BufPool`].
pub struct PooledBuf {
    pub buf: Vec<u8>,
    pool: BufPool,
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut pool) = self.pool.0.lock() {
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        }
    }
}

/// Accepts connections forever, running a muxado server session on each.
pub async fn muxado_server(listener: TcpListener, mode: Mode, config: Config) {
    let pool = BufPool::default();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                engine::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let session = Session::server(tcp, config.clone());
        let pool = pool.clone();
        engine::spawn(async move {
            while let Ok(stream) = session.accept().await {
                engine::spawn(serve_stream(stream, mode, pool.clone()));
            }
        });
    }
}

/// The heartbeat's event callback: latencies at debug level (stderr with
/// `-v`), timeouts as warnings.
pub fn heartbeat_reporter(
    peer: Option<SocketAddr>,
    opts: HeartbeatOpts,
) -> impl FnMut(HeartbeatEvent) + 'static {
    let peer = peer.map_or_else(|| "?".to_string(), |a| a.to_string());
    move |event| match event {
        HeartbeatEvent::Latency(d) => {
            tracing::debug!("heartbeat latency {peer}: {}", fmt_duration(d));
        }
        HeartbeatEvent::Timeout => tracing::warn!(
            "heartbeat timeout {peer}: no answer within {}",
            fmt_duration(opts.config.interval + opts.config.tolerance)
        ),
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Like [`muxado_server`], but every session is wrapped as
/// Heartbeat(TypedSession(session)): its heartbeat is started, the peer's
/// heartbeats are answered (the accept loop keeps running), and typed
/// streams of any type are served (their 4 type bytes are not data).
pub async fn muxado_heartbeat_server(
    listener: TcpListener,
    mode: Mode,
    config: Config,
    hb: HeartbeatOpts,
) {
    let pool = BufPool::default();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                engine::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let heartbeat = Heartbeat::new(
            TypedSession::new(Session::server(tcp, config.clone())),
            hb.config,
        );
        let pool = pool.clone();
        engine::spawn(async move {
            let reporter = heartbeat_reporter(heartbeat.peer_addr(), hb);
            if let Err(e) = heartbeat.start(reporter).await {
                tracing::warn!("heartbeat not started: {e}");
            }
            while let Ok(stream) = heartbeat.accept_typed().await {
                engine::spawn(serve_stream(stream.into_stream(), mode, pool.clone()));
            }
        });
    }
}

async fn serve_stream(mut stream: Stream, mut mode: Mode, pool: BufPool) {
    if mode == Mode::Tagged {
        let mut tag = [0u8; 1];
        match stream.read(&mut tag).await {
            Ok(1) if tag[0] == TAG_SINK => mode = Mode::Sink,
            Ok(1) => mode = Mode::Echo,
            _ => return,
        }
    }
    if mode == Mode::Sink {
        // Count in place: a sink has no use for a copy of the bytes (as the
        // plain-TCP sink below counts the received chunks without copying).
        let mut total: u64 = 0;
        loop {
            match stream.read_with(|bytes| bytes.len()).await {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => return,
            }
        }
        if stream.write_all(&total.to_be_bytes()).await.is_ok() {
            let _ = stream.close_write();
        }
        return;
    }
    let mut pooled = pool.take(true);
    let buf = &mut pooled.buf[..BUF_SIZE];
    loop {
        match stream.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = stream.close_write();
}

/// Accepts plain TCP connections forever and serves each as one stream: the
/// physical reference the muxado figures are compared with.
pub async fn tcp_server(listener: TcpListener, mode: Mode) {
    let pool = BufPool::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        engine::spawn(serve_tcp(Rc::new(tcp), mode, pool.clone()));
    }
}

async fn serve_tcp(tcp: Rc<TcpStream>, mut mode: Mode, pool: BufPool) {
    let mut rx = tcp.recv_multishot();
    let mut total: u64 = 0;
    let mut pooled = pool.take(false);
    let mut out = std::mem::take(&mut pooled.buf);
    loop {
        match rx.next().await {
            Ok(Some(chunk)) => {
                let mut data = &chunk[..];
                if mode == Mode::Tagged {
                    let Some((&tag, rest)) = data.split_first() else {
                        continue;
                    };
                    mode = if tag == TAG_SINK {
                        Mode::Sink
                    } else {
                        Mode::Echo
                    };
                    data = rest;
                }
                total += data.len() as u64;
                if mode == Mode::Echo && !data.is_empty() {
                    out.clear();
                    out.extend_from_slice(data);
                    drop(chunk);
                    let (r, b) = tcp.send_all(out).await;
                    out = b;
                    if r.is_err() {
                        pooled.buf = out;
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                pooled.buf = out;
                return;
            }
        }
    }
    pooled.buf = out;
    if mode == Mode::Sink {
        let (r, _) = tcp.send_all(total.to_be_bytes().to_vec()).await;
        if r.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown_write();
}
