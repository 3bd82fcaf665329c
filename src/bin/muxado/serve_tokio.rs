//! `muxado serve --driver tokio`: the echo and sink servers of
//! [`crate::serve`] on the tokio driver (`muxado::tokio`), for machines
//! where io_uring is blocked (a container's seccomp profile,
//! `kernel.io_uring_disabled`). The bench's tokio-based servers (ours and
//! the peers') serve their streams with [`serve_stream`] too, so that every
//! tokio system echoes and sinks the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use muxado::tokio::{Heartbeat, Session, Stream, TypedSession};
use muxado::transport::{TlsClientConfig, TlsServerConfig, DEFAULT_HANDSHAKE_TIMEOUT};
use muxado::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::model::{Endpoint, HeartbeatOpts, Mode, TAG_SINK};
use crate::serve::{
    heartbeat_reporter, remove_stale_socket, serve_muxado, BufPool, ServedStream, Trim, BUF_SIZE,
};

/// How [`muxado_server`] serves its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// `muxado serve`: as on the engine, the sink counts in place and the
    /// echo copies each read into a buffer of its size ([`EchoCopy`]), so
    /// that an open stream holds no buffer (a flood of SYNs must not cost
    /// 64 KiB each).
    Bounded,
    /// The bench: [`serve_stream`] with a pooled 64 KiB buffer per stream,
    /// exactly as the tokio peers (ngrok-muxado, yamux) are served.
    AsPeers,
}

/// A connection on tokio, with or without TLS (tokio-rustls). Sessions are
/// started on the concrete type of each variant (see [`with_conn!`]), so
/// the plain ones pay no dispatch per read or write.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<tokio_rustls::TlsStream<TcpStream>>),
    TlsUnix(Box<tokio_rustls::TlsStream<UnixStream>>),
}

/// `with_conn!(conn, io => expr)`: `expr` with `io` bound to the connection
/// of whichever [`Conn`] variant `conn` is (one monomorphised copy each).
macro_rules! with_conn {
    ($conn:expr, $io:ident => $body:expr) => {
        match $conn {
            $crate::serve_tokio::Conn::Tcp($io) => $body,
            $crate::serve_tokio::Conn::Unix($io) => $body,
            $crate::serve_tokio::Conn::TlsTcp($io) => $body,
            $crate::serve_tokio::Conn::TlsUnix($io) => $body,
        }
    };
}
pub(crate) use with_conn;

/// The TLS side of a client connection: rustls' configuration (the one the
/// engine's `TlsStream` uses too) and the name to check the certificate against.
pub struct ClientTls<'a> {
    pub config: &'a TlsClientConfig,
    pub server_name: &'a str,
}

/// Bounds a handshake like the engine's `TlsStream` does.
async fn handshake<T>(
    what: &str,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(DEFAULT_HANDSHAKE_TIMEOUT, f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("TLS handshake failed ({what}): {e}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "TLS handshake failed ({what}): no answer within {DEFAULT_HANDSHAKE_TIMEOUT:?}"
            ),
        )),
    }
}

/// Connects to `to` (TCP with `TCP_NODELAY`, or a Unix socket), then
/// handshakes with `tls` if given.
pub async fn connect(to: &Endpoint, tls: Option<ClientTls<'_>>) -> io::Result<Conn> {
    let plain = match to {
        Endpoint::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Conn::Tcp(tcp)
        }
        Endpoint::Unix(path) => Conn::Unix(UnixStream::connect(path).await?),
    };
    let Some(tls) = tls else {
        return Ok(plain);
    };
    let name =
        muxado::transport::rustls::pki_types::ServerName::try_from(tls.server_name.to_owned())
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid TLS server name {:?}", tls.server_name),
                )
            })?;
    let connector = TlsConnector::from(tls.config.rustls().clone());
    Ok(match plain {
        Conn::Tcp(s) => Conn::TlsTcp(Box::new(
            handshake("client", connector.connect(name, s))
                .await?
                .into(),
        )),
        Conn::Unix(s) => Conn::TlsUnix(Box::new(
            handshake("client", connector.connect(name, s))
                .await?
                .into(),
        )),
        tls @ (Conn::TlsTcp(_) | Conn::TlsUnix(_)) => tls,
    })
}

/// What a tokio server listens on.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Listens at `at` (a stale Unix socket file is replaced, as on the engine).
    pub async fn bind(at: &Endpoint) -> io::Result<Listener> {
        match at {
            Endpoint::Tcp(addr) => tokio::net::TcpListener::bind(addr).await.map(Listener::Tcp),
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                tokio::net::UnixListener::bind(path).map(Listener::Unix)
            }
        }
    }

    async fn accept(&self) -> io::Result<(Conn, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Conn::Tcp(tcp), Some(peer)))
            }
            Listener::Unix(l) => Ok((Conn::Unix(l.accept().await?.0), None)),
        }
    }
}

/// The server side of TLS: the handshake of an accepted connection.
async fn accept_tls(conn: Conn, acceptor: &TlsAcceptor) -> io::Result<Conn> {
    Ok(match conn {
        Conn::Tcp(s) => Conn::TlsTcp(Box::new(
            handshake("server", acceptor.accept(s)).await?.into(),
        )),
        Conn::Unix(s) => Conn::TlsUnix(Box::new(
            handshake("server", acceptor.accept(s)).await?.into(),
        )),
        tls => tls,
    })
}

/// The acceptor of the engine's TLS server configuration (same rustls
/// configuration, hence the same certificate and cipher suites).
pub fn acceptor(tls: &TlsServerConfig) -> TlsAcceptor {
    TlsAcceptor::from(tls.rustls().clone())
}

/// What `muxado serve --driver tokio` serves.
pub struct ServeOpts {
    pub listen: Endpoint,
    pub mode: Mode,
    pub workers: usize,
    pub config: Config,
    pub tls: Option<TlsServerConfig>,
    pub heartbeat: Option<HeartbeatOpts>,
}

/// Runs `muxado serve` on a multi-thread tokio runtime of `workers` threads
/// until the process is stopped; an error if the runtime or the listener
/// cannot be set up.
pub fn serve(o: ServeOpts) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.workers)
        .thread_name("muxado-serve")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let listener = Listener::bind(&o.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", o.listen))?;
        tracing::info!(
            "muxado serve: {:?} on {}{} with {} tokio worker thread(s) (the tokio driver){}",
            o.mode,
            o.listen,
            if o.tls.is_some() { " (TLS)" } else { "" },
            o.workers,
            o.heartbeat.map_or(String::new(), |hb| format!(
                ", heartbeat every {:?} (tolerance {:?})",
                hb.config.interval, hb.config.tolerance
            )),
        );
        let acceptor = o.tls.as_ref().map(acceptor);
        let serving = Serving::Bounded;
        muxado_server(listener, acceptor, o.mode, o.config, o.heartbeat, serving).await;
        Ok(())
    })
}

/// Accepts connections forever, running a muxado server session (tokio
/// driver) on each and serving every stream in its own task; with `tls`,
/// each connection's handshake runs in its own task first; with `hb`, every
/// session is Heartbeat(TypedSession(session)) as on the engine.
pub async fn muxado_server(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    mode: Mode,
    config: Config,
    hb: Option<HeartbeatOpts>,
    serving: Serving,
) {
    let pool = BufPool::default();
    let tls = tls.map(Arc::new);
    if serving == Serving::Bounded && Trim::enabled() {
        // As on the engine: freed memory goes back to the system after
        // sessions end.
        tokio::spawn(async {
            let mut trim = Trim::default();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                trim.tick();
            }
        });
    }
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, say: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (pool, config, tls) = (pool.clone(), config.clone(), tls.clone());
        tokio::spawn(async move {
            let conn = match &tls {
                None => conn,
                Some(acceptor) => match accept_tls(conn, acceptor).await {
                    Ok(c) => c,
                    Err(e) => {
                        let peer = peer.map_or_else(|| "a unix peer".into(), |a| a.to_string());
                        tracing::warn!("{peer}: {e}");
                        return;
                    }
                },
            };
            let session = with_conn!(conn, io => Session::server(io, config));
            match hb {
                None => {
                    while let Ok(stream) = session.accept().await {
                        tokio::spawn(serve_muxado_stream(stream, mode, pool.clone(), serving));
                    }
                    drop(session);
                }
                Some(hb) => {
                    let heartbeat = Heartbeat::new(TypedSession::new(session), hb.config);
                    if let Err(e) = heartbeat.start(heartbeat_reporter(peer, hb)).await {
                        tracing::warn!("heartbeat not started: {e}");
                    }
                    while let Ok(stream) = heartbeat.accept_typed().await {
                        let stream = stream.into_stream();
                        tokio::spawn(serve_muxado_stream(stream, mode, pool.clone(), serving));
                    }
                    drop(heartbeat);
                }
            }
            if serving == Serving::Bounded {
                crate::serve::session_ended();
            }
        });
    }
}

/// echo/sink over one stream of our tokio driver, as `serving` says.
async fn serve_muxado_stream(s: Stream, mode: Mode, pool: BufPool, serving: Serving) {
    match serving {
        Serving::AsPeers => serve_stream(s, mode, pool).await,
        Serving::Bounded => serve_muxado(s, mode, pool).await,
    }
}

impl ServedStream for Stream {
    async fn read_with(
        &mut self,
        consume: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, muxado::Error> {
        Stream::read_with(self, consume).await
    }
    async fn write_all(&mut self, data: &[u8]) -> Result<(), muxado::Error> {
        Stream::write_all(self, data).await
    }
    fn close_write(&mut self) -> Result<(), muxado::Error> {
        Stream::close_write(self)
    }
}

/// echo/sink over one tokio stream, with a buffer from the server's pool.
/// The sink reads into that buffer too: `AsyncRead` has no way to count
/// bytes in place (as the engine's `read_with` and multishot sinks do), and
/// every tokio system of the bench sinks this same way.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut mode: Mode,
    pool: BufPool,
) {
    if mode == Mode::Tagged {
        match s.read_u8().await {
            Ok(TAG_SINK) => mode = Mode::Sink,
            Ok(_) => mode = Mode::Echo,
            Err(_) => return,
        }
    }
    let mut pooled = pool.take(true);
    let buf = &mut pooled.buf[..BUF_SIZE];
    let mut total = 0u64;
    loop {
        match s.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if mode == Mode::Echo
                    && (s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err())
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    if mode == Mode::Sink && s.write_all(&total.to_be_bytes()).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
}
