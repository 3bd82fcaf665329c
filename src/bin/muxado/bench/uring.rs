//! The systems on our engine: `muxado` (streams of one muxado-uring session),
//! `muxado+tls` (the same over the engine's sans-IO rustls `TlsStream`) and
//! `tcp-uring` (one plain TCP connection per stream, the physical reference).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use muxado::engine::net::{MultiRecv, RecvBuf, TcpListener, TcpStream, UnixStream};
use muxado::engine::{self, JoinHandle};
use muxado::heartbeat::Heartbeat;
use muxado::transport::{Socket, TlsServerConfig, TlsStream, Transport};
use muxado::typed::TypedSession;
use muxado::{Session, Stream};

use super::loopback;
use super::workload::{self, BenchStream, Client};
use crate::model::{
    bench_config, CaseRun, Endpoint, HeartbeatOpts, Measurement, Mode, Placement, System,
};
use crate::serve;

/// The transport of an engine client: TCP or a Unix socket, with TLS on top
/// for the `+tls` systems (the handshake is part of connecting).
async fn transport(to: &Endpoint, run: &CaseRun) -> io::Result<Transport> {
    let tls = match (run.system.tls(), &run.tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => return Err(io::Error::other("no TLS settings for a +tls system")),
    };
    Ok(match (to, tls) {
        (Endpoint::Tcp(addr), None) => TcpStream::connect(*addr).await?.into(),
        (Endpoint::Unix(path), None) => UnixStream::connect(path).await?.into(),
        (to, Some(tls)) => {
            let socket: Socket = match to {
                Endpoint::Tcp(addr) => TcpStream::connect(*addr).await?.into(),
                Endpoint::Unix(path) => UnixStream::connect(path).await?.into(),
            };
            TlsStream::connect(socket, &tls.client, &tls.server_name)
                .await?
                .into()
        }
    })
}

pub struct MuxadoClient {
    session: Session,
}

impl Client for MuxadoClient {
    type Stream = Stream;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        Ok(MuxadoClient {
            session: Session::client(transport(to, run).await?, bench_config()),
        })
    }

    async fn open(&self) -> io::Result<Stream> {
        self.session.open().map_err(io::Error::from)
    }

    async fn close(self) {
        let _ = self.session.close();
    }

    async fn sleep(d: Duration) {
        engine::sleep(d).await
    }
}

impl BenchStream for Stream {
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.write_all(payload).await.map_err(io::Error::from)
    }

    /// By reference: a `Bytes` of the static payload (no allocation, no
    /// copy), sent vectored beside the frame headers.
    async fn send_bulk(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.write_all_bytes(bytes::Bytes::from_static(payload))
            .await
            .map_err(io::Error::from)
    }

    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await.map_err(io::Error::from)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.close_write().map_err(io::Error::from)
    }
}

/// `muxado bench --heartbeat`: a session wrapped as
/// Heartbeat(TypedSession(session)) with its heartbeat started; the peer's
/// heartbeats are answered by an accept loop; the workload's streams are
/// typed streams of type 1.
pub struct MuxadoHbClient {
    heartbeat: Heartbeat,
    accept_loop: JoinHandle<()>,
}

/// The stream type of the workload's streams.
const WORKLOAD_TYPE: u32 = 1;

impl Client for MuxadoHbClient {
    type Stream = Stream;

    async fn connect(to: &Endpoint, run: &CaseRun) -> io::Result<Self> {
        let opts = run
            .heartbeat
            .ok_or_else(|| io::Error::other("heartbeat settings not set"))?;
        let transport = transport(to, run).await?;
        let peer = transport.peer_addr();
        let heartbeat = Heartbeat::new(
            TypedSession::new(Session::client(transport, bench_config())),
            opts.config,
        );
        let reporter = serve::heartbeat_reporter(peer, opts);
        heartbeat.start(reporter).await.map_err(io::Error::from)?;
        // Answers the server's heartbeats; a server of `muxado serve`
        // semantics opens no other stream, so any other one is dropped.
        let acceptor = heartbeat.clone();
        let accept_loop =
            engine::spawn(async move { while acceptor.accept_typed().await.is_ok() {} });
        Ok(MuxadoHbClient {
            heartbeat,
            accept_loop,
        })
    }

    async fn open(&self) -> io::Result<Stream> {
        let stream = self
            .heartbeat
            .open_typed(WORKLOAD_TYPE)
            .await
            .map_err(io::Error::from)?;
        Ok(stream.into_stream())
    }

    async fn sleep(d: Duration) {
        engine::sleep(d).await
    }
}

impl Drop for MuxadoHbClient {
    fn drop(&mut self) {
        // The accept loop holds a handle of the heartbeat: stop it so the
        // session closes with the client.
        self.accept_loop.abort();
        let _ = self.heartbeat.close();
    }
}

pub struct TcpUringClient {
    addr: SocketAddr,
}

/// A plain TCP connection on the engine: sends from the caller's buffer
/// (no copy), receives by multishot into the provided-buffer ring.
pub struct TcpUringStream {
    tcp: TcpStream,
    rx: MultiRecv,
    pending: Option<(RecvBuf, usize)>,
}

impl Client for TcpUringClient {
    type Stream = TcpUringStream;

    async fn connect(to: &Endpoint, _run: &CaseRun) -> io::Result<Self> {
        match to {
            Endpoint::Tcp(addr) => Ok(TcpUringClient { addr: *addr }),
            Endpoint::Unix(_) => Err(io::Error::other("tcp-uring runs over TCP only")),
        }
    }

    async fn open(&self) -> io::Result<TcpUringStream> {
        let tcp = TcpStream::connect(self.addr).await?;
        let rx = tcp.recv_multishot();
        Ok(TcpUringStream {
            tcp,
            rx,
            pending: None,
        })
    }

    async fn sleep(d: Duration) {
        engine::sleep(d).await
    }
}

impl BenchStream for TcpUringStream {
    async fn send(&mut self, payload: &'static [u8]) -> io::Result<()> {
        self.tcp.send_all(payload).await.0
    }

    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_none() {
            match self.rx.next().await? {
                Some(chunk) => self.pending = Some((chunk, 0)),
                None => return Ok(0),
            }
        }
        let (chunk, off) = self.pending.as_mut().expect("filled above");
        let n = (chunk.len() - *off).min(buf.len());
        buf[..n].copy_from_slice(&chunk[*off..*off + n]);
        *off += n;
        if *off == chunk.len() {
            self.pending = None;
        }
        Ok(n)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.tcp.shutdown_write()
    }
}

async fn server(
    system: System,
    listener: TcpListener,
    mode: Mode,
    hb: Option<HeartbeatOpts>,
    tls: Option<TlsServerConfig>,
) {
    if system == System::TcpUring {
        return serve::tcp_server(listener, mode).await;
    }
    let listener = serve::Listener::Tcp(listener);
    match hb {
        Some(hb) => serve::muxado_heartbeat_server(listener, tls, mode, bench_config(), hb).await,
        None => serve::muxado_server(listener, tls, mode, bench_config()).await,
    }
}

/// The listeners of a local case ([`loopback::addresses`] of them, one
/// port) and the first one's address.
fn listen(run: &CaseRun) -> io::Result<(Vec<TcpListener>, SocketAddr)> {
    loopback::bind_all(loopback::addresses(run), TcpListener::bind, |l| {
        l.local_addr()
    })
}

/// A server on each listener; dropping the handles stops them.
fn serve_all(
    listeners: Vec<TcpListener>,
    system: System,
    mode: Mode,
    hb: Option<HeartbeatOpts>,
    tls: Option<TlsServerConfig>,
) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|l| engine::spawn(server(system, l, mode, hb, tls.clone())))
        .collect()
}

async fn client(to: &Endpoint, run: &CaseRun) -> Result<Measurement, String> {
    match (run.system, run.heartbeat) {
        (System::TcpUring, _) => workload::drive::<TcpUringClient>(to, run).await,
        (_, Some(_)) => workload::drive::<MuxadoHbClient>(to, run).await,
        (_, None) => workload::drive::<MuxadoClient>(to, run).await,
    }
}

/// Runs one case of `muxado` or `tcp-uring`: server and client on engine
/// cores placed as asked.
pub fn run_case(run: &CaseRun) -> Result<Measurement, String> {
    let mode = run.case.scenario.server_mode();
    let (system, hb) = (run.system, run.heartbeat);
    let tls = run.tls.as_ref().and_then(|t| t.server.clone());
    match run.placement {
        Placement::Shared => {
            // One core on CPU0 runs both ends.
            let engine = run
                .engine
                .builder()
                .cores(1)
                .build()
                .map_err(|e| e.to_string())?;
            let run = run.clone();
            engine
                .run(move |_| {
                    let (run, tls) = (run.clone(), tls.clone());
                    async move {
                        let (listeners, addr) = listen(&run).map_err(|e| e.to_string())?;
                        let servers = serve_all(listeners, system, mode, hb, tls);
                        let m = client(&Endpoint::Tcp(addr), &run).await;
                        drop(servers);
                        m
                    }
                })
                .map_err(|e| e.to_string())?
                .pop()
                .unwrap_or_else(|| Err("the engine ran no core".into()))
        }
        Placement::Split => {
            // Core 0 (CPU0) is the client, core 1 (CPU1) the server.
            let engine = run
                .engine
                .builder()
                .cores(2)
                .build()
                .map_err(|e| e.to_string())?;
            let (port_tx, port_rx) = mpsc::sync_channel::<SocketAddr>(1);
            let port_rx = Arc::new(Mutex::new(port_rx));
            let stop = Arc::new(AtomicBool::new(false));
            let run = run.clone();
            let results = engine
                .run(move |core| {
                    let (port_tx, port_rx, stop) = (port_tx.clone(), port_rx.clone(), stop.clone());
                    let (run, tls) = (run.clone(), tls.clone());
                    async move {
                        if core == 1 {
                            let (listeners, addr) = listen(&run).ok()?;
                            port_tx.send(addr).ok()?;
                            let _servers = serve_all(listeners, system, mode, hb, tls);
                            while !stop.load(Ordering::Acquire) {
                                engine::sleep(Duration::from_millis(20)).await;
                            }
                            None
                        } else {
                            let addr = port_rx.lock().ok()?.recv().ok()?;
                            let m = client(&Endpoint::Tcp(addr), &run).await;
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

/// The client half against a server elsewhere, on one engine core.
pub fn run_remote(to: &Endpoint, run: &CaseRun) -> Result<Measurement, String> {
    run.engine
        .builder()
        .block_on(client(to, run))
        .map_err(|e| e.to_string())?
}
