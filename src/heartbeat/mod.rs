//! The heartbeat: round-trip latency and dead-peer detection over a typed
//! stream of the reserved type [`HEARTBEAT_TYPE`] (protocol reference §9),
//! wire-compatible with Go muxado and ngrok's crate. The type can be changed
//! ([`HeartbeatConfig::stream_type`]) when both peers are this crate.
//!
//! - [`Heartbeat::start`] opens one heartbeat stream; every interval (default
//!   10 s, first beat one interval after the start) a random 4-byte value is
//!   written on it and the time until the same 4 bytes come back is measured.
//! - On the accepting side, [`Heartbeat::accept_typed`] and [`Heartbeat::accept`]
//!   answer the peer's heartbeat streams themselves (a task per stream: read 4
//!   bytes, echo them) and never return them. As in Go, responders are only
//!   started while the application keeps accepting; unlike Go, no accept call
//!   of the wrapper lets a heartbeat stream through, and the wrapper does not
//!   hand out its session (a clone taken *before* wrapping could still accept
//!   raw streams: don't).
//! - Reporting is a callback, `FnMut(HeartbeatEvent)`, run on the session's
//!   core by the heartbeat's own tasks: our executor is `!Send`, so it needs
//!   neither `Send` nor `Sync`, costs no channel, and can forward events into
//!   any channel or spawn async work ([`engine::spawn`]) if it needs to. It
//!   gets every periodic latency, and [`HeartbeatEvent::Timeout`] when no
//!   answer came within interval + tolerance (default 15 s) of the start or
//!   the last success; a timeout is reported once, and only a later success
//!   re-arms it.
//! - [`Heartbeat::beat`] requests an immediate beat and returns its latency,
//!   or [`Error::Timeout`] after the tolerance; on-demand beats neither feed
//!   the callback nor re-arm the timeout (as ngrok's v2).
//! - [`Heartbeat::set_interval`] and [`Heartbeat::set_tolerance`] take effect
//!   at once (the pending tick and deadline are recomputed).
//! - The heartbeat never closes the session: the application decides what a
//!   timeout means. Timers are the engine's; no thread is started.
//! - The timing rules themselves live in [`timing`], sans I/O, and the
//!   tasks' behaviour in a driver-neutral core: the tokio driver's
//!   `muxado::tokio::Heartbeat` is the same heartbeat on tokio's timers.
//!
//! ```
//! use std::{cell::RefCell, rc::Rc, time::Duration};
//! use muxado::engine::{self, net::{TcpListener, TcpStream}};
//! use muxado::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
//! use muxado::typed::TypedSession;
//! use muxado::{Config, Session};
//!
//! type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
//!
//! engine::block_on(async {
//!     let config = HeartbeatConfig::default().with_interval(Duration::from_millis(10));
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     // The server only answers: it keeps accepting, and gets no heartbeat stream.
//!     let server = engine::spawn(async move {
//!         let (tcp, _) = listener.accept().await?;
//!         let hb = Heartbeat::new(TypedSession::new(Session::server(tcp, Config::default())), config);
//!         let mut stream = hb.accept().await?;
//!         assert_eq!(stream.stream_type(), 1);
//!         stream.write_all(b"ok").await?;
//!         let _ = hb.accept().await;                     // until the client closes
//!         Result::Ok(())
//!     });
//!     let tcp = TcpStream::connect(addr).await?;
//!     let hb = Heartbeat::new(TypedSession::new(Session::client(tcp, Config::default())), config);
//!     let events = Rc::new(RefCell::new(Vec::new()));
//!     let sink = events.clone();
//!     hb.start(move |event| sink.borrow_mut().push(event)).await?;
//!     let latency = hb.beat().await?;                   // on demand
//!     assert!(latency < Duration::from_secs(1));
//!     let mut stream = hb.open_typed(1).await?;
//!     let mut ok = [0u8; 2];
//!     stream.read_exact(&mut ok).await?;
//!     engine::sleep(Duration::from_millis(50)).await;   // a few periodic beats
//!     assert!(matches!(events.borrow().first(), Some(HeartbeatEvent::Latency(_))));
//!     hb.close()?;
//!     server.await
//! })
//! .expect("io_uring available")
//! .expect("heartbeat");
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::engine::{self, JoinHandle};
use crate::error::{Error, ErrorCode};
use crate::session::{SessionEnd, SessionStats};
use crate::typed::{StreamType, TypedSession, TypedStream};

pub(crate) mod core;
pub mod timing;

use self::core::{Clock, Core, Rng};
pub use timing::{HeartbeatConfig, HEARTBEAT_TYPE};

/// What the heartbeat reports to its callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// A periodic beat came back after this round-trip time (queueing and
    /// flow-control waits included).
    Latency(Duration),
    /// No beat came back within interval + tolerance. Reported once; a later
    /// success re-arms it.
    Timeout,
}

/// A [`TypedSession`] with a heartbeat; see the [module docs](self).
///
/// Cheap to clone; `!Send` like the session. When the last clone is dropped,
/// the heartbeat's tasks stop (and release their streams).
#[derive(Clone)]
pub struct Heartbeat {
    inner: Rc<Inner>,
}

/// The engine's callback: it runs on the session's core, so it need not be `Send`.
type Callback = dyn FnMut(HeartbeatEvent);

struct Inner {
    typed: TypedSession,
    /// The behaviour, shared with the tokio driver's heartbeat.
    core: Rc<Core<Callback>>,
    /// The requester and the checker, once started.
    beaters: RefCell<Vec<JoinHandle<()>>>,
    /// One per heartbeat stream of the peer.
    responders: RefCell<Vec<JoinHandle<()>>>,
}

/// The engine's timers.
struct EngineClock;

impl Clock for EngineClock {
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> {
        engine::sleep_until(deadline)
    }
}

impl Heartbeat {
    /// Wraps `typed`. Nothing is sent until [`Heartbeat::start`]; a side that
    /// only answers the peer's heartbeats need not start, but must keep
    /// accepting.
    pub fn new(typed: TypedSession, config: HeartbeatConfig) -> Heartbeat {
        Heartbeat {
            inner: Rc::new(Inner {
                typed,
                core: Rc::new(Core::new(config)),
                beaters: RefCell::new(Vec::new()),
                responders: RefCell::new(Vec::new()),
            }),
        }
    }

    /// Opens the heartbeat stream (a SYN frame carrying `FF FF FF FF`) and
    /// starts beating; `on_event` gets every periodic latency and timeouts.
    ///
    /// Fails if the stream cannot be opened (the session is dead). Starting
    /// twice, or after [`Heartbeat::stop`], does nothing.
    pub async fn start(&self, on_event: impl FnMut(HeartbeatEvent) + 'static) -> Result<(), Error> {
        let core = &self.inner.core;
        if let Some(stream) = core.open(&self.inner.typed, Box::new(on_event)).await? {
            let requester = engine::spawn(core::requester::<EngineClock, _, _>(
                core.clone(),
                stream,
                Rng::new(),
            ));
            let checker = engine::spawn(core::checker::<EngineClock, _>(core.clone()));
            self.inner.beaters.borrow_mut().extend([requester, checker]);
        }
        Ok(())
    }

    /// Beats now and returns the round-trip time. Waits up to the tolerance
    /// (after a beat already in flight, if any), then fails with
    /// [`Error::Timeout`]; fails with [`Error::StreamClosed`] if the heartbeat
    /// is not started, stopped, or its stream failed. Does not feed the
    /// callback nor re-arm the timeout.
    pub async fn beat(&self) -> Result<Duration, Error> {
        self.inner.core.beat::<EngineClock>().await
    }

    /// Changes the interval; the pending tick and timeout deadline are
    /// recomputed at once.
    pub fn set_interval(&self, interval: Duration) {
        self.inner.core.set_interval(interval);
    }

    /// Changes the tolerance; the pending timeout deadline is recomputed at once.
    pub fn set_tolerance(&self, tolerance: Duration) {
        self.inner.core.set_tolerance(tolerance);
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        self.inner.core.interval()
    }

    /// The current tolerance.
    pub fn tolerance(&self) -> Duration {
        self.inner.core.tolerance()
    }

    /// Stops beating and reporting (the heartbeat stream is closed); the
    /// peer's heartbeats are still answered. The session stays open.
    pub fn stop(&self) {
        self.inner.core.stop();
        for task in self.inner.beaters.borrow_mut().drain(..) {
            task.abort();
        }
    }

    /// Waits for the next stream the peer opens, answering (and hiding) its
    /// heartbeat streams on the way. Keep calling it: the peer's heartbeats
    /// are only answered from here.
    pub async fn accept_typed(&self) -> Result<TypedStream, Error> {
        let inner = &self.inner;
        inner
            .core
            .accept(&inner.typed, |stream| {
                let task = engine::spawn(core::respond(stream));
                let mut responders = inner.responders.borrow_mut();
                responders.retain(|t| !t.is_finished());
                responders.push(task);
            })
            .await
    }

    /// The same as [`Heartbeat::accept_typed`]: no accept call of the wrapper
    /// returns a heartbeat stream.
    pub async fn accept(&self) -> Result<TypedStream, Error> {
        self.accept_typed().await
    }

    /// Opens a typed stream; the heartbeat's stream type is refused with
    /// [`Error::LocalReset`]`(StreamRefused)`.
    pub async fn open_typed(&self, t: StreamType) -> Result<TypedStream, Error> {
        self.inner.core.open_typed(&self.inner.typed, t).await
    }

    /// Stops the heartbeat and closes the session (GOAWAY NoError), like Go's `Close`.
    pub fn close(&self) -> Result<(), Error> {
        self.stop();
        self.inner.typed.session().close()
    }

    /// Sends GOAWAY without closing; see [`Session::go_away`](crate::Session::go_away).
    pub fn go_away(&self, code: ErrorCode, debug: &[u8]) -> Result<(), Error> {
        self.inner.typed.session().go_away(code, debug)
    }

    /// Sends GOAWAY and waits until it is sent, or fails at `deadline`; see
    /// [`Session::go_away_with_deadline`](crate::Session::go_away_with_deadline).
    pub async fn go_away_with_deadline(
        &self,
        code: ErrorCode,
        debug: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        self.inner
            .typed
            .session()
            .go_away_with_deadline(code, debug, deadline)
            .await
    }

    /// Waits until the session is dead and says why.
    pub async fn wait(&self) -> SessionEnd {
        self.inner.typed.session().wait().await
    }

    /// True once the session is dead.
    pub fn is_closed(&self) -> bool {
        self.inner.typed.session().is_closed()
    }

    /// The session's counters.
    pub fn stats(&self) -> SessionStats {
        self.inner.typed.session().stats()
    }

    /// The transport's local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.typed.session().local_addr()
    }

    /// The transport's remote address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.typed.session().peer_addr()
    }
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("session", self.inner.typed.session())
            .field("core", &self.inner.core)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.stop();
        let tasks = self.beaters.get_mut().drain(..);
        for task in tasks.chain(self.responders.get_mut().drain(..)) {
            task.abort();
        }
    }
}
