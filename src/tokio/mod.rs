//! The tokio driver: muxado sessions over any `AsyncRead + AsyncWrite`
//! transport (TCP, Unix sockets, TLS, an in-memory duplex…) on a tokio runtime.
//!
//! It runs the same sans-IO core as the io_uring [`engine`](crate::engine)
//! driver ([`proto::Session`]), in the same rhythm:
//! handle input → mutate → poll transmit, events and timeout. What differs is
//! the glue. Handles are `Send` ([`Session`] is also `Sync`), so they work with
//! `tokio::spawn`, hyper and tonic; the core sits behind a `std` mutex that is
//! held for one protocol call and never across an `.await`; one driver task
//! per session does all the transport I/O and wakes readers, writers and
//! acceptors.
//!
//! Typed streams ([`TypedSession`]) and the heartbeat ([`Heartbeat`]) are the
//! crate's driver-neutral layers ([`crate::typed`], [`crate::heartbeat`])
//! over this driver: the same code, wire and behaviour as on the engine.
//!
//! ```
//! use muxado::tokio::Session;
//! use muxado::Config;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = tokio::spawn(async move {
//!     let (tcp, _) = listener.accept().await?;
//!     let session = Session::server(tcp, Config::default());
//!     let mut stream = session.accept().await?;
//!     let mut request = Vec::new();
//!     stream.read_to_end(&mut request).await?;   // until the client's FIN
//!     stream.write_all(&request).await?;         // echo
//!     stream.shutdown().await?;                  // FIN
//!     session.wait().await;                      // until the client closes
//!     std::io::Result::Ok(())
//! });
//! let session = Session::client(tokio::net::TcpStream::connect(addr).await?, Config::default());
//! let mut stream = session.open()?;
//! stream.write_all(b"What is the meaning of life?").await?;
//! stream.close_write()?;                         // FIN: half-close
//! let mut answer = Vec::new();
//! stream.read_to_end(&mut answer).await?;
//! assert_eq!(answer, b"What is the meaning of life?");
//! session.close()?;
//! server.await??;
//! # Ok(())
//! # }
//! ```

mod driver;
mod heartbeat;
mod shared;
mod stream;
mod typed;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, ErrorCode};
use crate::proto::{self, Config, Role};
use crate::session::SessionEnd;

pub use driver::Driver;
pub use heartbeat::Heartbeat;
use shared::Shared;
pub use stream::Stream;
pub use typed::{TypedSession, TypedStream};

/// A muxado session over one transport, driven by a tokio task.
///
/// Cloning is cheap and gives another handle to the same session. The session
/// is closed (GOAWAY NoError) when [`Session::close`] is called, or when every
/// `Session` handle and every [`Stream`] of it has been dropped.
pub struct Session {
    shared: Arc<Shared>,
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames, bytes, stalls and streams, from the protocol core.
    pub proto: proto::Stats,
    /// Batches taken from the core for the transport (each holds every frame
    /// queued since the previous one).
    pub sends: u64,
    /// Reads from the transport handed to the core.
    pub recvs: u64,
    /// Streams currently alive.
    pub open_streams: usize,
}

impl Session {
    /// Starts a client session (odd stream ids) over `io`, its driver spawned
    /// on the current tokio runtime. Outside a runtime the session is born
    /// dead (every call fails with a transport error) rather than panicking.
    pub fn client<T>(io: T, config: Config) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Session::spawn(io, Role::Client, config)
    }

    /// Starts a server session (even stream ids) over `io`; see [`Session::client`].
    pub fn server<T>(io: T, config: Config) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Session::spawn(io, Role::Server, config)
    }

    fn spawn<T>(io: T, role: Role, config: Config) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match ::tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (session, driver) = Session::with_driver(io, role, config);
                rt.spawn(driver);
                session
            }
            Err(e) => {
                let session = Session {
                    shared: Arc::new(Shared::new(proto::Session::new(role, config))),
                };
                session.shared.with_many(|st| {
                    st.proto
                        .handle_transport_error(&format!("no tokio runtime: {e}"))
                });
                session
            }
        }
    }

    /// A session and its driver, for callers that run the driver themselves
    /// (their own task, a `LocalSet`, a `select!`). The driver needs tokio's
    /// timer (`enable_time`) and must be polled for the session to move.
    pub fn with_driver<T>(io: T, role: Role, config: Config) -> (Session, Driver<T>)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = Arc::new(Shared::new(proto::Session::new(role, config)));
        let driver = Driver::new(shared.clone(), io);
        (Session { shared }, driver)
    }

    /// Opens a stream. Nothing is sent until its first write (lazy SYN).
    pub fn open(&self) -> Result<Stream, Error> {
        let (key, id) = self.shared.with(|st| {
            let key = st.proto.open()?;
            Ok::<_, Error>((key, st.proto.stream_id(key)?))
        })?;
        Ok(Stream::new(&self.shared, key, id))
    }

    /// Waits for the next stream the peer opens. After the session dies,
    /// streams already queued are still returned, then the error.
    pub async fn accept(&self) -> Result<Stream, Error> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Poll form of [`Session::accept`], for accept loops written as a
    /// `Stream` of streams (hyper's and tonic's servers take those).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let r = self.shared.with(|st| match st.proto.accept() {
            Ok(Some(key)) => Poll::Ready(st.proto.stream_id(key).map(|id| (key, id))),
            Ok(None) => {
                st.wait_accept(cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        });
        r.map_ok(|(key, id)| Stream::new(&self.shared, key, id))
    }

    /// Closes the session: GOAWAY(NoError, "no error"), then the transport.
    /// Every stream fails with [`Error::SessionClosed`]. A second call fails
    /// with [`Error::SessionClosed`], as in Go.
    pub fn close(&self) -> Result<(), Error> {
        self.shared.with_many(|st| {
            if st.proto.is_dead() {
                return Err(Error::SessionClosed);
            }
            st.proto.close_session();
            Ok(())
        })
    }

    /// Sends GOAWAY without closing: the peer may open no more streams
    /// (they are refused with RST StreamRefused); existing streams go on.
    pub fn go_away(&self, code: ErrorCode, debug: &[u8]) -> Result<(), Error> {
        self.shared.with(|st| st.proto.go_away(code, debug))
    }

    /// Waits until the session is dead and says why.
    pub async fn wait(&self) -> SessionEnd {
        poll_fn(|cx| {
            self.shared.with(|st| match st.proto.error() {
                Some(e) => Poll::Ready(SessionEnd {
                    local: e.clone(),
                    remote: st.proto.remote_goaway().map(|(c, d)| (c, d.to_vec())),
                }),
                None => {
                    st.wait_end(cx);
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// True once the session is dead.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().proto.is_dead()
    }

    /// The peer's GOAWAY (code, debug data), if one arrived.
    pub fn remote_goaway(&self) -> Option<(ErrorCode, Vec<u8>)> {
        let st = self.shared.lock();
        st.proto.remote_goaway().map(|(c, d)| (c, d.to_vec()))
    }

    /// The session's counters.
    pub fn stats(&self) -> SessionStats {
        self.shared.stats()
    }
}

impl Shared {
    fn stats(&self) -> SessionStats {
        let st = self.lock();
        SessionStats {
            proto: st.proto.stats(),
            sends: st.sends,
            recvs: st.recvs,
            open_streams: st.proto.stream_count(),
        }
    }
}

impl Clone for Session {
    fn clone(&self) -> Self {
        self.shared.acquire();
        Session {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.release_user();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Session")
            .field("role", &st.proto.role())
            .field("dead", &st.proto.is_dead())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn handles_are_send_and_the_session_is_sync() {
        assert_send_sync::<Session>();
        assert_send::<Stream>();
        assert_send::<Driver<::tokio::net::TcpStream>>();
    }

    #[test]
    fn outside_a_runtime_the_session_is_born_dead() {
        let (io, _peer) = ::tokio::io::duplex(64);
        let s = Session::client(io, Config::default());
        assert!(s.is_closed());
        assert!(s.open().is_err());
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let end = rt.block_on(s.wait());
        assert!(
            matches!(&end.local, Error::Transport(m) if m.contains("no tokio runtime")),
            "{end:?}"
        );
    }
}
