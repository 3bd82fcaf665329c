//! TLS on the engine: rustls driven sans-IO over a ring socket, through its
//! unbuffered API.
//!
//! rustls never touches the socket. Ciphertext comes in through the ring's
//! receive; `process_tls_records` decrypts whole records where the kernel
//! put them, and only a record cut by a chunk's end is completed in the
//! connection's receive buffer first. The plaintext goes to the protocol
//! record by record.
//! Outgoing frames are sealed by `WriteTraffic::encrypt` straight into a send
//! buffer that is reused from send to send. The handshake is finished before
//! a [`TlsStream`] exists, so a failed handshake is an error of
//! [`TlsStream::connect`] / [`TlsStream::accept`] that names its cause, never
//! a session that dies later for no clear reason.
//!
//! Parts: `config` (PEM files, trust, errors), `state` (the sans-IO
//! connection: buffers, processing, sealing) and this file (the stream: the
//! handshake over the socket, sends, the receiver).

mod config;
mod state;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;

use super::Socket;
use crate::engine;
use state::{Quiet, Sealed, State};

pub use config::{TlsClientConfig, TlsError, TlsServerConfig, DEFAULT_HANDSHAKE_TIMEOUT};

/// How long closing the write side waits for the close_notify alert to leave.
const CLOSE_NOTIFY_GRACE: Duration = Duration::from_millis(250);

/// The smallest piece of a transmission sealed where it lies rather than
/// gathered with its neighbours: two full records. Bulk payloads (64 KiB
/// writes held by reference) are; the 16 KiB shares of 64 streams are not,
/// as sealing each on its own (with its frame header as a record of its own)
/// made twice the records and cost more than the copy it saved.
const SEAL_IN_PLACE_MIN: usize = 32 * 1024;

/// How many ciphertext bytes one handshake receive takes at most.
const HANDSHAKE_RECV: usize = 16 * 1024 + 256;

/// What the stream's halves share (one core, no locks).
struct Shared {
    tls: State,
    /// The session's writer, waiting for TLS output of rustls' own (alerts,
    /// key-update answers) that the receiver caused.
    sender: Option<Waker>,
    /// The send buffer, between sends (taken while one is in flight).
    out: Sealed,
    /// Where small pieces of a transmission gather into one record (see
    /// [`TlsStream::send_transmit`]); reused.
    stage: Vec<u8>,
}

/// A TLS connection on a ring socket, handshake done.
///
/// Make one with [`TlsStream::connect`] (client) or [`TlsStream::accept`]
/// (server), then start a [`Session`](crate::Session) over it.
pub struct TlsStream {
    socket: Socket,
    shared: Rc<RefCell<Shared>>,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sh = self.shared.borrow();
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("version", &sh.tls.common().protocol_version())
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
        let conn = rustls::client::UnbufferedClientConnection::new(config.inner.clone(), name)
            .map_err(TlsError::Config)?;
        Self::handshake_within(socket.into(), State::new(conn), config.handshake_timeout).await
    }

    /// The server side: handshakes over `socket` with `config`'s certificate.
    /// Fails with [`TlsError::HandshakeTimeout`] if the client does not
    /// finish in the configuration's time.
    pub async fn accept(
        socket: impl Into<Socket>,
        config: &TlsServerConfig,
    ) -> Result<TlsStream, TlsError> {
        let conn = rustls::server::UnbufferedServerConnection::new(config.inner.clone())
            .map_err(TlsError::Config)?;
        Self::handshake_within(socket.into(), State::new(conn), config.handshake_timeout).await
    }

    async fn handshake_within(
        socket: Socket,
        tls: State,
        timeout: Option<Duration>,
    ) -> Result<TlsStream, TlsError> {
        match timeout {
            None => Self::handshake(socket, tls).await,
            Some(t) => engine::timeout(t, Self::handshake(socket, tls))
                .await
                .unwrap_or(Err(TlsError::HandshakeTimeout(t))),
        }
    }

    async fn handshake(socket: Socket, mut tls: State) -> Result<TlsStream, TlsError> {
        let mut inbuf = Vec::with_capacity(HANDSHAKE_RECV);
        loop {
            let step = tls.handshake_step();
            let out = tls.take_queued();
            let quiet = match step {
                Ok(quiet) => quiet,
                Err(e) => {
                    // Tell the peer why (rustls queued an alert), best effort.
                    if !out.is_empty() {
                        let _ = engine::timeout(CLOSE_NOTIFY_GRACE, socket.send_all(out)).await;
                    }
                    return Err(match e {
                        state::Failure::Tls(e) => TlsError::Handshake(e),
                        state::Failure::Io(e) => TlsError::Io(e),
                    });
                }
            };
            if !out.is_empty() {
                socket.send_all(out).await.map_err(TlsError::Io)?;
            }
            if !tls.common().is_handshaking() {
                break;
            }
            if quiet == Quiet::Closed {
                return Err(TlsError::HandshakeEof);
            }
            inbuf.clear();
            let (r, buf) = socket.recv(inbuf).await;
            inbuf = buf;
            if r.map_err(TlsError::Io)? == 0 {
                return Err(TlsError::HandshakeEof);
            }
            tls.feed_handshake(&inbuf).map_err(TlsError::Io)?;
        }
        Ok(TlsStream {
            socket,
            shared: Rc::new(RefCell::new(Shared {
                tls,
                sender: None,
                out: Sealed::default(),
                stage: Vec::new(),
            })),
        })
    }

    /// The socket under the TLS layer.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The negotiated protocol version (TLS 1.2 or 1.3).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.shared.borrow().tls.common().protocol_version()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.shared
            .borrow()
            .tls
            .common()
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr()
    }

    pub(crate) fn receiver(&self) -> TlsReceiver {
        let early = std::mem::take(&mut self.shared.borrow_mut().tls.early_plain);
        TlsReceiver {
            raw: self.socket.recv_multishot(),
            shared: self.shared.clone(),
            early,
            pending: None,
            eof: false,
        }
    }

    /// Encrypts and sends what a session queued. A piece of at least
    /// [`SEAL_IN_PLACE_MIN`] (a large payload held by reference) goes into
    /// records straight from the caller's memory; smaller ones (frame
    /// headers, small frames, the pieces of many streams sharing the link)
    /// are gathered and sealed together, so that records stay full.
    pub(crate) async fn send_transmit(&self, t: &crate::proto::Transmit) -> io::Result<()> {
        self.send_sealed_staged(|tls, out, stage| {
            stage.clear();
            for c in t.chunks() {
                if c.len() < SEAL_IN_PLACE_MIN {
                    stage.extend_from_slice(c);
                    continue;
                }
                if !stage.is_empty() {
                    tls.seal(stage, out)?;
                    stage.clear();
                }
                tls.seal(c, out)?;
            }
            let r = tls.seal(stage, out);
            stage.clear();
            r
        })
        .await
    }

    /// Encrypts and sends all of `buf`; gives it back for reuse.
    pub(crate) async fn send_all(&self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        let r = self.send_sealed(|tls, out| tls.seal(&buf, out)).await;
        (r, buf)
    }

    /// Seals with `seal` into the send buffer, then sends what it holds.
    async fn send_sealed(
        &self,
        seal: impl FnOnce(&mut State, &mut Sealed) -> io::Result<()>,
    ) -> io::Result<()> {
        self.send_sealed_staged(|tls, out, _| seal(tls, out)).await
    }

    /// [`Self::send_sealed`] with the staging buffer at hand.
    async fn send_sealed_staged(
        &self,
        seal: impl FnOnce(&mut State, &mut Sealed, &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut out = {
            let mut sh = self.shared.borrow_mut();
            let sh = &mut *sh;
            // One send at a time (the session's writer); a second one, if
            // any, gets a fresh buffer rather than the one in flight.
            let mut out = std::mem::take(&mut sh.out);
            if let Err(e) = seal(&mut sh.tls, &mut out, &mut sh.stage) {
                sh.out = out;
                return Err(e);
            }
            out
        };
        if out.is_empty() {
            self.shared.borrow_mut().out = out;
            return Ok(());
        }
        let (head, tail) = out.split();
        let (r, head) = self.socket.send_all_session(head).await;
        out.rejoin(head, tail);
        self.shared.borrow_mut().out = out;
        r
    }

    pub(crate) fn poll_wants_send(&self, cx: &Context<'_>) -> bool {
        let mut sh = self.shared.borrow_mut();
        if sh.tls.wants_send() {
            return true;
        }
        match &sh.sender {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => sh.sender = Some(cx.waker().clone()),
        }
        false
    }

    /// Sends what rustls queued on its own.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        self.send_sealed(|tls, out| tls.seal(&[], out)).await
    }

    /// close_notify, then FIN.
    pub(crate) async fn close_write(&self) -> io::Result<()> {
        let sent = engine::timeout(
            CLOSE_NOTIFY_GRACE,
            self.send_sealed(|tls, out| tls.seal_close_notify(out)),
        )
        .await;
        let shut = self.socket.shutdown(Shutdown::Write);
        match sent {
            Ok(r) => r.and(shut),
            Err(_) => shut,
        }
    }

    pub(crate) fn shutdown_both(&self) -> io::Result<()> {
        self.socket.shutdown(Shutdown::Both)
    }

    /// Starts a TLS 1.3 key update (the next send carries it, and asks the
    /// peer to update its keys too). Fails before TLS 1.3.
    #[cfg(test)]
    pub(crate) fn refresh_traffic_keys(&self) -> io::Result<()> {
        let mut sh = self.shared.borrow_mut();
        sh.tls.refresh_traffic_keys()?;
        if let Some(w) = sh.sender.take() {
            w.wake();
        }
        Ok(())
    }
}

/// Turns received ciphertext into plaintext, handed out record by record.
pub(crate) struct TlsReceiver {
    raw: super::SocketRecv,
    shared: Rc<RefCell<Shared>>,
    /// Application data that came with the end of the handshake, handed out
    /// first.
    early: Vec<u8>,
    /// A received chunk the receive buffer has not taken all of yet, and how
    /// far it got.
    pending: Option<(crate::engine::net::RecvBuf, usize)>,
    /// The socket reached its end.
    eof: bool,
}

impl TlsReceiver {
    /// Waits for ciphertext and hands each record's plaintext to `deliver`
    /// as rustls lends it, without gathering the records of a chunk into one
    /// buffer first (that copy was a measurable part of a TLS receiver's
    /// time). Returns true once something was delivered, false at the end of
    /// the stream (the peer's close_notify, or the socket's end without one:
    /// muxado frames carry their own ends, so a cut stream fails in the
    /// protocol, not here).
    pub(crate) async fn next_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        if !self.early.is_empty() {
            deliver(&std::mem::take(&mut self.early));
            return Ok(true);
        }
        loop {
            if let Some((chunk, off)) = &mut self.pending {
                let Some(bytes) = chunk.as_mut_slice() else {
                    return Err(io::Error::other(
                        "TLS: a received chunk was lent before it was decrypted (a bug of this module)",
                    ));
                };
                let mut delivered = false;
                let mut sh = self.shared.borrow_mut();
                let taken = sh.tls.receive(&mut bytes[*off..], &mut |p: &[u8]| {
                    delivered = true;
                    deliver(p);
                });
                if sh.tls.wants_send() {
                    if let Some(w) = sh.sender.take() {
                        w.wake();
                    }
                }
                *off += taken?;
                if *off == chunk.len() {
                    self.pending = None;
                }
                if delivered {
                    return Ok(true);
                }
                if sh.tls.peer_closed() {
                    return Ok(false);
                }
                continue;
            }
            if self.eof || self.shared.borrow().tls.peer_closed() {
                return Ok(false);
            }
            match self.raw.next().await? {
                Some(chunk) => self.pending = Some((chunk, 0)),
                None => self.eof = true,
            }
        }
    }
}
