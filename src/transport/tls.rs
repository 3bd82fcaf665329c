//! TLS on the engine: rustls driven sans-IO over a ring socket.
//!
//! rustls never touches the socket. Ciphertext comes in through the ring's
//! receive and is handed to `read_tls` / `process_new_packets`; the plaintext
//! is read out of `reader()` for the protocol. Outgoing frames go into
//! `writer()`, and `write_tls` fills a ciphertext buffer that the ring sends.
//! The handshake is finished before a [`TlsStream`] exists, so a failed
//! handshake is an error of [`TlsStream::connect`] / [`TlsStream::accept`]
//! that names its cause, never a session that dies later for no clear reason.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::Socket;
use crate::engine;

/// How long a handshake may take unless the configuration says otherwise:
/// a peer that connects and says nothing must not hold a task forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing the write side waits for the close_notify alert to leave.
const CLOSE_NOTIFY_GRACE: Duration = Duration::from_millis(250);

/// How many ciphertext bytes one handshake receive takes: at most one TLS
/// record and its header, so that rustls' plaintext buffer can always take
/// what follows the handshake in the same receive.
const HANDSHAKE_RECV: usize = 16 * 1024 + 256;

/// The plaintext buffer of a receiver: how much decrypted data one chunk
/// hands to the protocol at most.
const PLAIN_CHUNK: usize = 64 * 1024;

/// Why setting up TLS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading the {what} from {path}: {source}")]
    Pem {
        /// What the file should hold ("certificate chain", "private key", "CA certificates").
        what: &'static str,
        /// The file (or "(in memory)").
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
    /// A PEM file was readable but held none of what was asked for.
    #[error("no {what} found in {path}")]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file (or "(in memory)").
        path: PathBuf,
    },
    /// rustls refused the configuration (a key that does not match, a CA
    /// certificate that does not parse, ...).
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// The name to verify the server's certificate against is no valid DNS
    /// name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The handshake failed: a certificate the other side could not verify,
    /// an alert the peer sent, a protocol error.
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The handshake did not finish in time (see
    /// [`TlsServerConfig::with_handshake_timeout`]).
    #[error("TLS handshake failed: no answer within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer closed the connection before the handshake finished.
    #[error("TLS handshake failed: the peer closed the connection")]
    HandshakeEof,
    /// The socket failed during the handshake.
    #[error("TLS handshake failed: {0}")]
    Io(#[source] io::Error),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        match e {
            TlsError::Io(e) => e,
            TlsError::HandshakeEof => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            TlsError::HandshakeTimeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            TlsError::Pem { .. } | TlsError::Empty { .. } | TlsError::ServerName(_) => {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            }
            _ => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// rustls with *ring*: it builds with a C compiler alone (aws-lc-rs needs
/// cmake). rustls 0.23.48 deprecates ring's provider only because it lacks
/// the post-quantum key exchange; TLS 1.3 with X25519 is what we get.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn in_memory() -> PathBuf {
    PathBuf::from("(in memory)")
}

/// Every certificate of a PEM source; at least one.
fn certs(
    iter: Result<impl Iterator<Item = Result<CertificateDer<'static>, pem::Error>>, pem::Error>,
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = iter
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn key(
    r: Result<PrivateKeyDer<'static>, pem::Error>,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    r.map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::Empty {
            what: WHAT,
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            what: WHAT,
            path: path.to_owned(),
            source,
        },
    })
}

/// What a TLS server presents: its certificate chain and key (no client
/// certificates asked for). Cheap to clone; share one among connections.
#[derive(Clone)]
pub struct TlsServerConfig {
    inner: Arc<rustls::ServerConfig>,
    handshake_timeout: Option<Duration>,
}

impl TlsServerConfig {
    /// Reads the certificate chain (leaf first) and the private key (PKCS#8,
    /// PKCS#1 or SEC1) from PEM files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<TlsServerConfig, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key_file.as_ref());
        let chain = certs(
            CertificateDer::pem_file_iter(cert_path),
            "certificate chain",
            cert_path,
        )?;
        let key = key(PrivateKeyDer::from_pem_file(key_path), key_path)?;
        Self::from_der(chain, key)
    }

    /// Like [`Self::from_pem_files`], from PEM text in memory.
    pub fn from_pem(cert_chain: &[u8], key_pem: &[u8]) -> Result<TlsServerConfig, TlsError> {
        let chain = certs(
            Ok(CertificateDer::pem_slice_iter(cert_chain)),
            "certificate chain",
            &in_memory(),
        )?;
        let key = key(PrivateKeyDer::from_pem_slice(key_pem), &in_memory())?;
        Self::from_der(chain, key)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsServerConfig, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        Ok(TlsServerConfig::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by the caller (client
    /// authentication, ALPN, another crypto provider, ...).
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> TlsServerConfig {
        TlsServerConfig {
            inner: config,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// How long [`TlsStream::accept`] waits for the handshake to finish
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set; `None`: no limit).
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> TlsServerConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
        &self.inner
    }
}

/// What a TLS client trusts: the CA certificates its server's chain must end
/// in. Cheap to clone; share one among connections.
#[derive(Clone)]
pub struct TlsClientConfig {
    inner: Arc<rustls::ClientConfig>,
    handshake_timeout: Option<Duration>,
}

impl TlsClientConfig {
    /// Trusts the CA certificates of a PEM file (one or more).
    pub fn from_ca_pem_file(ca: impl AsRef<Path>) -> Result<TlsClientConfig, TlsError> {
        let path = ca.as_ref();
        let cas = certs(CertificateDer::pem_file_iter(path), "CA certificates", path)?;
        Self::from_cas(cas)
    }

    /// Like [`Self::from_ca_pem_file`], from PEM text in memory.
    pub fn from_ca_pem(ca: &[u8]) -> Result<TlsClientConfig, TlsError> {
        let cas = certs(
            Ok(CertificateDer::pem_slice_iter(ca)),
            "CA certificates",
            &in_memory(),
        )?;
        Self::from_cas(cas)
    }

    fn from_cas(cas: Vec<CertificateDer<'static>>) -> Result<TlsClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(TlsError::Config)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClientConfig::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by the caller.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> TlsClientConfig {
        TlsClientConfig {
            inner: config,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// How long [`TlsStream::connect`] waits for the handshake to finish
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set; `None`: no limit).
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> TlsClientConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.inner
    }
}

/// The TLS state the receiver and the sender share (one core, no locks).
struct State {
    conn: rustls::Connection,
    /// The session's writer, waiting for TLS output of rustls' own (alerts,
    /// key-update answers) that the receiver caused.
    sender: Option<Waker>,
    /// The ciphertext buffer of the last send, kept for its capacity.
    spare: Vec<u8>,
}

impl State {
    /// Encrypts `plain` (possibly empty: then only what rustls queued itself)
    /// into a ciphertext buffer to send.
    fn seal(&mut self, mut plain: &[u8]) -> io::Result<Vec<u8>> {
        let mut ct = std::mem::take(&mut self.spare);
        ct.clear();
        loop {
            while self.conn.wants_write() {
                self.conn.write_tls(&mut ct)?;
            }
            if plain.is_empty() {
                return Ok(ct);
            }
            // Takes up to rustls' buffer limit, which the loop drains each time.
            let n = self.conn.writer().write(plain)?;
            if n == 0 && !self.conn.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "TLS: the connection takes no more data (closed for writing)",
                ));
            }
            plain = &plain[n..];
        }
    }
}

/// A TLS connection on a ring socket, handshake done.
///
/// Make one with [`TlsStream::connect`] (client) or [`TlsStream::accept`]
/// (server), then start a [`Session`](crate::Session) over it.
pub struct TlsStream {
    socket: Socket,
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("version", &st.conn.protocol_version())
            .finish()
    }
}

impl TlsStream {
    /// The client side: handshakes over `socket`, verifying the server's
    /// certificate against `config`'s CAs and `server_name` (a DNS name or an
    /// IP address). Fails with [`TlsError::HandshakeTimeout`] if the server
    /// does not finish in the configuration's time.
    pub async fn connect(
        socket: impl Into<Socket>,
        config: &TlsClientConfig,
        server_name: &str,
    ) -> Result<TlsStream, TlsError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        let conn =
            rustls::ClientConnection::new(config.inner.clone(), name).map_err(TlsError::Config)?;
        Self::handshake_within(socket.into(), conn.into(), config.handshake_timeout).await
    }

    /// The server side: handshakes over `socket` with `config`'s certificate.
    /// Fails with [`TlsError::HandshakeTimeout`] if the client does not
    /// finish in the configuration's time.
    pub async fn accept(
        socket: impl Into<Socket>,
        config: &TlsServerConfig,
    ) -> Result<TlsStream, TlsError> {
        let conn = rustls::ServerConnection::new(config.inner.clone()).map_err(TlsError::Config)?;
        Self::handshake_within(socket.into(), conn.into(), config.handshake_timeout).await
    }

    async fn handshake_within(
        socket: Socket,
        conn: rustls::Connection,
        timeout: Option<Duration>,
    ) -> Result<TlsStream, TlsError> {
        match timeout {
            None => Self::handshake(socket, conn).await,
            Some(t) => engine::timeout(t, Self::handshake(socket, conn))
                .await
                .unwrap_or(Err(TlsError::HandshakeTimeout(t))),
        }
    }

    async fn handshake(
        socket: Socket,
        mut conn: rustls::Connection,
    ) -> Result<TlsStream, TlsError> {
        let mut inbuf = Vec::with_capacity(HANDSHAKE_RECV);
        loop {
            if conn.wants_write() {
                let mut out = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut out).map_err(TlsError::Io)?;
                }
                socket.send_all(out).await.map_err(TlsError::Io)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            inbuf.clear();
            let (r, buf) = socket.recv(inbuf).await;
            inbuf = buf;
            if r.map_err(TlsError::Io)? == 0 {
                return Err(TlsError::HandshakeEof);
            }
            let mut rd = &inbuf[..];
            while !rd.is_empty() {
                let n = conn.read_tls(&mut rd).map_err(TlsError::Io)?;
                if let Err(e) = conn.process_new_packets() {
                    // Tell the peer why (rustls queued an alert), best effort.
                    let mut out = Vec::new();
                    if conn.write_tls(&mut out).is_ok() && !out.is_empty() {
                        let _ = engine::timeout(CLOSE_NOTIFY_GRACE, socket.send_all(out)).await;
                    }
                    return Err(TlsError::Handshake(e));
                }
                if n == 0 {
                    return Err(TlsError::Io(io::Error::other(
                        "rustls took no handshake bytes",
                    )));
                }
            }
        }
        Ok(TlsStream {
            socket,
            state: Rc::new(RefCell::new(State {
                conn,
                sender: None,
                spare: Vec::new(),
            })),
        })
    }

    /// The socket under the TLS layer.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The negotiated protocol version (TLS 1.2 or 1.3).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.state.borrow().conn.protocol_version()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.state.borrow().conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr()
    }

    pub(crate) fn receiver(&self) -> TlsReceiver {
        TlsReceiver {
            raw: self.socket.recv_multishot(),
            state: self.state.clone(),
            plain: vec![0; PLAIN_CHUNK],
            pending: None,
            eof: false,
        }
    }

    /// Encrypts and sends all of `buf`; gives it back for reuse.
    pub(crate) async fn send_all(&self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        let r = self.send_sealed(&buf).await;
        (r, buf)
    }

    async fn send_sealed(&self, plain: &[u8]) -> io::Result<()> {
        let ct = self.state.borrow_mut().seal(plain)?;
        if ct.is_empty() {
            self.state.borrow_mut().spare = ct;
            return Ok(());
        }
        let (r, ct) = self.socket.send_all_session(ct).await;
        self.state.borrow_mut().spare = ct;
        r
    }

    pub(crate) fn poll_wants_send(&self, cx: &Context<'_>) -> bool {
        let mut st = self.state.borrow_mut();
        if st.conn.wants_write() {
            return true;
        }
        match &st.sender {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.sender = Some(cx.waker().clone()),
        }
        false
    }

    /// Sends what rustls queued on its own.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        self.send_sealed(&[]).await
    }

    /// close_notify, then FIN.
    pub(crate) async fn close_write(&self) -> io::Result<()> {
        self.state.borrow_mut().conn.send_close_notify();
        let sent = engine::timeout(CLOSE_NOTIFY_GRACE, self.send_sealed(&[])).await;
        let shut = self.socket.shutdown(Shutdown::Write);
        match sent {
            Ok(r) => r.and(shut),
            Err(_) => shut,
        }
    }

    pub(crate) fn shutdown_both(&self) -> io::Result<()> {
        self.socket.shutdown(Shutdown::Both)
    }
}

/// Turns received ciphertext into plaintext chunks.
pub(crate) struct TlsReceiver {
    raw: super::SocketRecv,
    state: Rc<RefCell<State>>,
    /// Where plaintext is read out of rustls, lent to the caller.
    plain: Vec<u8>,
    /// A received chunk rustls has not taken all of yet, and how far it got.
    pending: Option<(crate::engine::net::RecvBuf, usize)>,
    /// The socket reached its end (rustls was told).
    eof: bool,
}

impl TlsReceiver {
    /// The next plaintext chunk; `Ok(None)` at the end of the stream (the
    /// peer's close_notify, or the socket's end without one: muxado frames
    /// carry their own ends, so a cut stream fails in the protocol, not here).
    pub(crate) async fn next(&mut self) -> io::Result<Option<&[u8]>> {
        let n = loop {
            {
                let mut st = self.state.borrow_mut();
                match st.conn.reader().read(&mut self.plain) {
                    Ok(0) => break 0,
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break 0,
                    Err(e) => return Err(e),
                }
                if let Some((chunk, off)) = &mut self.pending {
                    let mut rd = &chunk[*off..];
                    let taken = st.conn.read_tls(&mut rd)?;
                    *off += taken;
                    if *off == chunk.len() {
                        self.pending = None;
                    }
                    let processed = st.conn.process_new_packets();
                    if st.conn.wants_write() {
                        if let Some(w) = st.sender.take() {
                            w.wake();
                        }
                    }
                    if let Err(e) = processed {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS: {e}"),
                        ));
                    }
                    if taken == 0 {
                        return Err(io::Error::other("TLS: rustls took no received bytes"));
                    }
                    continue;
                }
                if self.eof {
                    break 0;
                }
            }
            match self.raw.next().await? {
                Some(chunk) => self.pending = Some((chunk, 0)),
                None => {
                    self.eof = true;
                    // An empty read tells rustls the socket ended.
                    let mut st = self.state.borrow_mut();
                    st.conn.read_tls(&mut io::empty())?;
                    st.conn.process_new_packets().map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
                    })?;
                }
            }
        };
        Ok((n > 0).then(|| &self.plain[..n]))
    }
}
