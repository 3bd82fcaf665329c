//! The seam between a session and its socket: receive chunks, send a buffer,
//! shut down.
//!
//! A [`Session`](crate::Session) on the engine reaches its byte stream only
//! through [`Transport`], so the same driver runs over:
//! - TCP ([`TcpStream`]) and Unix domain sockets ([`UnixStream`], a path or
//!   a Linux abstract name): chunks straight from the core's multishot
//!   receive, frames straight to the ring's send, no copy and no allocation
//!   per frame;
//! - TLS ([`TlsStream`], rustls' unbuffered API driven sans-IO): ciphertext
//!   from the ring's multishot receive is gathered into the stream's own
//!   receive buffer, rustls opens each record there and the plaintext goes to
//!   the protocol; outgoing frames are sealed record by record into a reused
//!   send buffer for the ring's send. rustls 0.23 still decrypts and seals each
//!   record through a `Vec` of its own (one allocation and one copy per record
//!   each way), so TLS is not zero-alloc per frame the way TCP and Unix are.
//!
//! Dispatch is a `match` on a small enum, not a trait object: the TCP path
//! costs one branch per chunk and per send.
//!
//! A session over TLS, server and client (certificates from PEM files):
//!
//! ```no_run
//! use muxado::engine::{self, net::{TcpListener, TcpStream}};
//! use muxado::transport::{TlsClientConfig, TlsServerConfig, TlsStream};
//! use muxado::{Config, Session};
//!
//! type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
//!
//! engine::block_on(async {
//!     let server_tls = TlsServerConfig::from_pem_files("cert.pem", "key.pem")?;
//!     let client_tls = TlsClientConfig::from_ca_pem_file("ca.pem")?;
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = engine::spawn(async move {
//!         let (tcp, _) = listener.accept().await?;
//!         let tls = TlsStream::accept(tcp, &server_tls).await?;
//!         let session = Session::server(tls, Config::default());
//!         let mut stream = session.accept().await?;
//!         stream.write_all(b"hello over TLS").await?;
//!         stream.close_write()?;
//!         session.wait().await;
//!         Result::Ok(())
//!     });
//!     let tcp = TcpStream::connect(addr).await?;
//!     let tls = TlsStream::connect(tcp, &client_tls, "localhost").await?;
//!     let session = Session::client(tls, Config::default());
//!     let mut stream = session.open()?;
//!     stream.write_all(b"hi").await?;
//!     let mut answer = Vec::new();
//!     stream.read_to_end(&mut answer).await?;
//!     session.close()?;
//!     server.await
//! })
//! .expect("io_uring available")
//! .expect("TLS session");
//! ```

mod tls;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::task::Context;

use bytes::BytesMut;

use crate::engine::net::{IoBuf, MultiRecv, RecvBuf, TcpStream, UnixStream, VectoredSend};

pub use tls::{TlsClientConfig, TlsError, TlsServerConfig, TlsStream, DEFAULT_HANDSHAKE_TIMEOUT};

/// The rustls crate this module is built on, for callers who build their own
/// `ClientConfig` / `ServerConfig` (see [`TlsClientConfig::from_rustls`]).
pub use rustls;

/// A connected byte stream a session can run over.
///
/// Build it with `From`: `Session::client(tcp, config)` takes a
/// [`TcpStream`] as before, and a [`UnixStream`] or a [`TlsStream`] the same way.
#[derive(Debug)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A Unix domain stream socket.
    Unix(UnixStream),
    /// TLS (rustls) over TCP or a Unix socket, handshake done.
    Tls(TlsStream),
}

impl From<UnixStream> for Transport {
    fn from(s: UnixStream) -> Transport {
        Transport::Unix(s)
    }
}

impl From<TcpStream> for Transport {
    fn from(s: TcpStream) -> Transport {
        Transport::Tcp(s)
    }
}

impl From<TlsStream> for Transport {
    fn from(s: TlsStream) -> Transport {
        Transport::Tls(s)
    }
}

impl Transport {
    /// The local IP socket address, if the transport has one (TCP does,
    /// a Unix socket does not: see [`UnixStream::local_addr`]).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Transport::Tcp(s) => s.local_addr().ok(),
            Transport::Unix(_) => None,
            Transport::Tls(s) => s.local_addr(),
        }
    }

    /// The peer's IP socket address, if the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Transport::Tcp(s) => s.peer_addr().ok(),
            Transport::Unix(_) => None,
            Transport::Tls(s) => s.peer_addr(),
        }
    }

    /// What kind of transport this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Tcp(_) => "tcp",
            Transport::Unix(_) => "unix",
            Transport::Tls(_) => "tls",
        }
    }

    /// Starts receiving: the receiver yields the plaintext byte stream in chunks.
    pub(crate) fn receiver(&self) -> Receiver {
        match self {
            Transport::Tcp(s) => Receiver::Plain(s.recv_multishot()),
            Transport::Unix(s) => Receiver::Plain(s.recv_multishot()),
            Transport::Tls(s) => Receiver::Tls(s.receiver()),
        }
    }

    /// Sends all of `buf` and gives it back (its capacity is reused).
    pub(crate) async fn send_all(&self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        match self {
            Transport::Tcp(s) => s.send_all_session(buf).await,
            Transport::Unix(s) => s.send_all_session(buf).await,
            Transport::Tls(s) => s.send_all(buf).await,
        }
    }

    /// Sends all of a session's transmission and gives its buffers back. A
    /// transmission without parts goes the single-buffer way
    /// ([`Transport::send_all`]); one with payloads held by reference goes out
    /// vectored on TCP and Unix sockets (no copy); TLS seals each piece where
    /// it lies. With `more` (the last bytes before a FIN), TCP and Unix send
    /// with `MSG_MORE`.
    pub(crate) async fn send_transmit(
        &self,
        mut v: VectoredSend,
        more: bool,
    ) -> (io::Result<()>, VectoredSend) {
        if !v.t.has_parts() {
            let buf = v.t.take_flat();
            let (r, buf) = match self {
                Transport::Tcp(s) if more => s.send_all_more(buf).await,
                _ => self.send_all(buf).await,
            };
            v.t.put_flat(buf);
            return (r, v);
        }
        match self {
            Transport::Tcp(s) => s.send_vectored_session(v, more).await,
            Transport::Unix(s) => s.send_vectored_session(v, more).await,
            Transport::Tls(s) => {
                let r = s.send_transmit(&v.t).await;
                (r, v)
            }
        }
    }

    /// True if the transport has bytes of its own to send (TLS alerts, key
    /// updates); if not, `cx` is woken when it has. Always false for TCP.
    pub(crate) fn poll_wants_send(&self, cx: &Context<'_>) -> bool {
        match self {
            Transport::Tcp(_) | Transport::Unix(_) => false,
            Transport::Tls(s) => s.poll_wants_send(cx),
        }
    }

    /// Sends what the transport itself has queued (see [`Self::poll_wants_send`]).
    pub(crate) async fn flush(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(_) | Transport::Unix(_) => Ok(()),
            Transport::Tls(s) => s.flush().await,
        }
    }

    /// Ends the sending direction gracefully after everything sent so far:
    /// TCP sends FIN; TLS first sends its close_notify alert.
    pub(crate) async fn close_write(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown(Shutdown::Write),
            Transport::Unix(s) => s.shutdown(Shutdown::Write),
            Transport::Tls(s) => s.close_write().await,
        }
    }

    /// Shuts the socket down in both directions at once, which also ends a
    /// pending receive (it completes with EOF).
    pub(crate) fn shutdown_both(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown(Shutdown::Both),
            Transport::Unix(s) => s.shutdown(Shutdown::Both),
            Transport::Tls(s) => s.shutdown_both(),
        }
    }
}

/// The plain socket under a [`TlsStream`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Socket {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain stream connection.
    Unix(UnixStream),
}

impl From<UnixStream> for Socket {
    fn from(s: UnixStream) -> Socket {
        Socket::Unix(s)
    }
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Socket {
        Socket::Tcp(s)
    }
}

/// The multishot receive of a [`Socket`].
pub(crate) type SocketRecv = MultiRecv;

impl Socket {
    /// The local socket address, if there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr().ok(),
            Socket::Unix(_) => None,
        }
    }

    /// The peer's socket address, if there is one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.peer_addr().ok(),
            Socket::Unix(_) => None,
        }
    }

    pub(crate) async fn recv(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Socket::Tcp(s) => s.recv(buf).await,
            Socket::Unix(s) => s.recv(buf).await,
        }
    }

    pub(crate) async fn send_all(&self, buf: Vec<u8>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.send_all(buf).await.0,
            Socket::Unix(s) => s.send_all(buf).await.0,
        }
    }

    pub(crate) async fn send_all_session<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        match self {
            Socket::Tcp(s) => s.send_all_session(buf).await,
            Socket::Unix(s) => s.send_all_session(buf).await,
        }
    }

    pub(crate) fn recv_multishot(&self) -> SocketRecv {
        match self {
            Socket::Tcp(s) => s.recv_multishot(),
            Socket::Unix(s) => s.recv_multishot(),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(how),
            Socket::Unix(s) => s.shutdown(how),
        }
    }
}

/// The receiving half of a [`Transport`].
pub(crate) enum Receiver {
    /// Chunks as the ring received them.
    Plain(MultiRecv),
    /// Ciphertext in, plaintext out.
    Tls(tls::TlsReceiver),
}

/// A chunk of the received byte stream.
pub(crate) enum Chunk<'a> {
    /// A provided buffer of the ring (or an owned one): no copy. A ring
    /// buffer can lend pieces of itself to streams (`lease::Lender`).
    Ring(RecvBuf),
    /// The plaintext of one TLS record, lent by rustls until the call returns.
    Plain(&'a [u8]),
}

impl Receiver {
    /// Waits for input and hands it to `deliver`: a ring chunk as it came,
    /// or TLS plaintext record by record. True once something was
    /// delivered, false at the end of the stream.
    pub(crate) async fn next_with(
        &mut self,
        mut deliver: impl FnMut(Chunk<'_>),
    ) -> io::Result<bool> {
        match self {
            Receiver::Plain(rx) => Ok(match rx.next().await? {
                Some(buf) => {
                    deliver(Chunk::Ring(buf));
                    true
                }
                None => false,
            }),
            Receiver::Tls(rx) => rx.next_with(&mut |p| deliver(Chunk::Plain(p))).await,
        }
    }
}
