//! TLS on the engine: rustls driven sans-IO over a ring socket.
//!
//! rustls never touches the socket. Ciphertext comes in through the ring's
//! receive and is handed to `read_tls` / `process_new_packets`; the plaintext
//! is read out of `reader()` for the protocol. Outgoing frames go into
//! `writer()`, and `write_tls` fills a ciphertext buffer that the ring sends.
//! The handshake is finished before a [`TlsStream`] exists, so a failed
//! handshake is an error of [`TlsStream::connect`] / [`TlsStream::accept`]
//! that names its cause, never a session that dies later for no clear reason.
//!
//! Parts: `config` (PEM files, trust, errors) and this file (the stream: the
//! handshake, sealing frames, opening received records).

mod config;

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;

use super::Socket;
use crate::engine;

pub use config::{TlsClientConfig, TlsError, TlsServerConfig, DEFAULT_HANDSHAKE_TIMEOUT};

/// How long closing the write side waits for the close_notify alert to leave.
const CLOSE_NOTIFY_GRACE: Duration = Duration::from_millis(250);

/// How many ciphertext bytes one handshake receive takes: at most one TLS
/// record and its header, so that rustls' plaintext buffer can always take
/// what follows the handshake in the same receive.
const HANDSHAKE_RECV: usize = 16 * 1024 + 256;

/// The plaintext buffer of a receiver: how much decrypted data one chunk
/// hands to the protocol at most.
const PLAIN_CHUNK: usize = 64 * 1024;

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
