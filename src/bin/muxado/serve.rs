//! `muxado serve`: echo and sink servers, over muxado sessions or plain TCP.
//!
//! echo: every byte read from a stream is written back; after the peer's FIN
//! the stream is half-closed. sink: read to the peer's FIN, then write the
//! byte count as a big-endian u64 and half-close.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use muxado::engine::{self, net::TcpListener, net::TcpStream};
use muxado::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
use muxado::typed::TypedSession;
use muxado::{Config, Session, Stream};

/// What a server does with each stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Write back every byte; half-close after the peer's FIN.
    Echo,
    /// Count bytes to the peer's FIN, answer the count as a big-endian u64.
    Sink,
}

/// Accepts connections forever, running a muxado server session on each.
pub async fn muxado_server(listener: TcpListener, mode: Mode, config: Config) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("muxado serve: accept failed: {e}");
                engine::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let session = Session::server(tcp, config.clone());
        engine::spawn(async move {
            while let Ok(stream) = session.accept().await {
                engine::spawn(serve_stream(stream, mode));
            }
        });
    }
}

/// The heartbeat settings of `--heartbeat` (serve and bench).
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatOpts {
    pub config: HeartbeatConfig,
    /// Print every latency on stderr (timeouts are always printed).
    pub verbose: bool,
}

/// The heartbeat's event callback: latencies at debug level (stderr with
/// `-v` only), timeouts as warnings (always).
pub fn heartbeat_reporter(
    who: &'static str,
    peer: Option<SocketAddr>,
    opts: HeartbeatOpts,
) -> impl FnMut(HeartbeatEvent) + 'static {
    let peer = peer.map_or_else(|| "?".to_string(), |a| a.to_string());
    move |event| match event {
        HeartbeatEvent::Latency(d) => {
            if opts.verbose {
                eprintln!(
                    "{who}: debug: heartbeat latency {peer}: {}",
                    fmt_duration(d)
                );
            }
        }
        HeartbeatEvent::Timeout => eprintln!(
            "{who}: warning: heartbeat timeout {peer}: no answer within {}",
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
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("muxado serve: accept failed: {e}");
                engine::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let heartbeat = Heartbeat::new(
            TypedSession::new(Session::server(tcp, config.clone())),
            hb.config,
        );
        engine::spawn(async move {
            let reporter = heartbeat_reporter("muxado serve", heartbeat.peer_addr(), hb);
            if let Err(e) = heartbeat.start(reporter).await {
                eprintln!("muxado serve: warning: heartbeat not started: {e}");
            }
            while let Ok(stream) = heartbeat.accept_typed().await {
                engine::spawn(serve_stream(stream.into_stream(), mode));
            }
        });
    }
}

/// Size of the buffers streams are served with.
const BUF_SIZE: usize = 64 * 1024;

thread_local! {
    /// Buffers of finished streams, reused by the next ones on this core: a
    /// server taking many short streams should not allocate and zero 64 KiB
    /// for each (the TCP server below reuses its buffers the same way).
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this core's pool, returned to it on drop.
struct PooledBuf(Vec<u8>);

impl PooledBuf {
    fn take(zeroed: bool) -> PooledBuf {
        let mut buf = BUFFERS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        if zeroed && buf.len() < BUF_SIZE {
            buf.resize(BUF_SIZE, 0);
        }
        PooledBuf(buf)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        BUFFERS.with(|b| {
            let mut pool = b.borrow_mut();
            if pool.len() < 1024 {
                pool.push(buf);
            }
        });
    }
}

async fn serve_stream(mut stream: Stream, mode: Mode) {
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
    let mut pooled = PooledBuf::take(true);
    let buf = &mut pooled.0[..BUF_SIZE];
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
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        engine::spawn(serve_tcp(Rc::new(tcp), mode));
    }
}

async fn serve_tcp(tcp: Rc<TcpStream>, mode: Mode) {
    let mut rx = tcp.recv_multishot();
    let mut total: u64 = 0;
    let mut pooled = PooledBuf::take(false);
    let mut out = std::mem::take(&mut pooled.0);
    loop {
        match rx.next().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if mode == Mode::Echo {
                    out.clear();
                    out.extend_from_slice(&chunk);
                    drop(chunk);
                    let (r, b) = tcp.send_all(out).await;
                    out = b;
                    if r.is_err() {
                        pooled.0 = out;
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                pooled.0 = out;
                return;
            }
        }
    }
    pooled.0 = out;
    if mode == Mode::Sink {
        let (r, _) = tcp.send_all(total.to_be_bytes().to_vec()).await;
        if r.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown_write();
}
