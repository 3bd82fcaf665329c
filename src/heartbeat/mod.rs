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
//! - The timing rules themselves live in [`timing`], sans I/O, for any driver.
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
//!     let config = HeartbeatConfig::default().interval(Duration::from_millis(10));
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

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::engine::{self, JoinHandle};
use crate::error::{Error, ErrorCode};
use crate::session::{SessionEnd, SessionStats};
use crate::typed::{StreamType, TypedSession, TypedStream};

pub mod timing;

use timing::HeartbeatTimer;
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

struct Inner {
    typed: TypedSession,
    /// The type of heartbeat streams, both ways.
    stream_type: StreamType,
    shared: Rc<Shared>,
    /// The requester and the checker, once started.
    beaters: RefCell<Vec<JoinHandle<()>>>,
    /// One per heartbeat stream of the peer.
    responders: RefCell<Vec<JoinHandle<()>>>,
}

/// What the heartbeat's tasks share (not the session: tasks hold only their
/// stream, so dropping every handle lets the session close).
struct Shared {
    /// When to beat and when to report a timeout.
    timer: RefCell<HeartbeatTimer>,
    started: Cell<bool>,
    stopped: Cell<bool>,
    /// The requester runs and its stream works.
    running: Cell<bool>,
    requests: RefCell<VecDeque<Rc<BeatSlot>>>,
    requester: Signal,
    checker: Signal,
    on_event: RefCell<Option<Callback>>,
}

/// The application's event callback.
type Callback = Box<dyn FnMut(HeartbeatEvent)>;

/// An on-demand beat's answer.
#[derive(Default)]
struct BeatSlot {
    result: Cell<Option<Result<Duration, Error>>>,
    waker: Cell<Option<Waker>>,
}

impl BeatSlot {
    fn complete(&self, r: Result<Duration, Error>) {
        self.result.set(Some(r));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Wakes one task when something it waits on changed.
#[derive(Default)]
struct Signal {
    generation: Cell<u64>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits for a notification after generation `seen`, or until
    /// `deadline`; true if the deadline passed first.
    async fn wait(&self, seen: u64, deadline: Option<Instant>) -> bool {
        let mut sleep = deadline.map(engine::sleep_until);
        poll_fn(|cx| {
            if self.generation.get() != seen {
                return Poll::Ready(false);
            }
            if let Some(s) = sleep.as_mut() {
                if Pin::new(s).poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

impl Shared {
    fn emit(&self, event: HeartbeatEvent) {
        if self.stopped.get() {
            return;
        }
        // A callback that re-enters (it cannot: both callers are tasks) would
        // lose its event rather than panic.
        if let Ok(mut cb) = self.on_event.try_borrow_mut() {
            if let Some(f) = cb.as_mut() {
                f(event);
            }
        }
    }

    fn has_requests(&self) -> bool {
        let mut q = self.requests.borrow_mut();
        // A slot only the queue holds belongs to a `beat` that gave up.
        q.retain(|s| Rc::strong_count(s) > 1);
        !q.is_empty()
    }

    fn fail_requests(&self, e: &Error) {
        let slots: Vec<_> = self.requests.borrow_mut().drain(..).collect();
        for s in slots {
            s.complete(Err(e.clone()));
        }
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
                stream_type: config.stream_type,
                shared: Rc::new(Shared {
                    timer: RefCell::new(HeartbeatTimer::new(config, Instant::now())),
                    started: Cell::new(false),
                    stopped: Cell::new(false),
                    running: Cell::new(false),
                    requests: RefCell::new(VecDeque::new()),
                    requester: Signal::default(),
                    checker: Signal::default(),
                    on_event: RefCell::new(None),
                }),
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
        let shared = &self.inner.shared;
        if shared.started.replace(true) {
            return Ok(());
        }
        let stream = match self.inner.typed.open_typed(self.inner.stream_type).await {
            Ok(s) => s,
            Err(e) => {
                shared.started.set(false);
                return Err(e);
            }
        };
        if shared.stopped.get() {
            return Ok(());
        }
        *shared.on_event.borrow_mut() = Some(Box::new(on_event));
        shared.running.set(true);
        shared.timer.borrow_mut().start(Instant::now());
        let requester = engine::spawn(requester(shared.clone(), stream, Rng::new()));
        let checker = engine::spawn(checker(shared.clone()));
        self.inner.beaters.borrow_mut().extend([requester, checker]);
        Ok(())
    }

    /// Beats now and returns the round-trip time. Waits up to the tolerance
    /// (after a beat already in flight, if any), then fails with
    /// [`Error::Timeout`]; fails with [`Error::StreamClosed`] if the heartbeat
    /// is not started, stopped, or its stream failed. Does not feed the
    /// callback nor re-arm the timeout.
    pub async fn beat(&self) -> Result<Duration, Error> {
        let shared = &self.inner.shared;
        if !shared.running.get() {
            return Err(Error::StreamClosed);
        }
        let slot = Rc::new(BeatSlot::default());
        shared.requests.borrow_mut().push_back(slot.clone());
        shared.requester.notify();
        let answer = poll_fn(|cx| match slot.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        });
        let deadline = shared.timer.borrow().on_demand_deadline(Instant::now());
        engine::timeout_at(deadline, answer)
            .await
            .unwrap_or(Err(Error::Timeout("heartbeat")))
    }

    /// Changes the interval; the pending tick and timeout deadline are
    /// recomputed at once.
    pub fn set_interval(&self, interval: Duration) {
        self.inner.shared.timer.borrow_mut().set_interval(interval);
        self.inner.shared.requester.notify();
        self.inner.shared.checker.notify();
    }

    /// Changes the tolerance; the pending timeout deadline is recomputed at once.
    pub fn set_tolerance(&self, tolerance: Duration) {
        self.inner
            .shared
            .timer
            .borrow_mut()
            .set_tolerance(tolerance);
        self.inner.shared.checker.notify();
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        self.inner.shared.timer.borrow().interval()
    }

    /// The current tolerance.
    pub fn tolerance(&self) -> Duration {
        self.inner.shared.timer.borrow().tolerance()
    }

    /// Stops beating and reporting (the heartbeat stream is closed); the
    /// peer's heartbeats are still answered. The session stays open.
    pub fn stop(&self) {
        let shared = &self.inner.shared;
        shared.stopped.set(true);
        shared.running.set(false);
        shared.fail_requests(&Error::StreamClosed);
        for task in self.inner.beaters.borrow_mut().drain(..) {
            task.abort();
        }
    }

    /// Waits for the next stream the peer opens, answering (and hiding) its
    /// heartbeat streams on the way. Keep calling it: the peer's heartbeats
    /// are only answered from here.
    pub async fn accept_typed(&self) -> Result<TypedStream, Error> {
        loop {
            let stream = self.inner.typed.accept_typed().await?;
            if stream.stream_type() != self.inner.stream_type {
                return Ok(stream);
            }
            let task = engine::spawn(respond(stream));
            let mut responders = self.inner.responders.borrow_mut();
            responders.retain(|t| !t.is_finished());
            responders.push(task);
        }
    }

    /// The same as [`Heartbeat::accept_typed`]: no accept call of the wrapper
    /// returns a heartbeat stream.
    pub async fn accept(&self) -> Result<TypedStream, Error> {
        self.accept_typed().await
    }

    /// Opens a typed stream; the heartbeat's stream type is refused with
    /// [`Error::LocalReset`]`(StreamRefused)`.
    pub async fn open_typed(&self, t: StreamType) -> Result<TypedStream, Error> {
        if t == self.inner.stream_type {
            return Err(Error::LocalReset(ErrorCode::StreamRefused));
        }
        self.inner.typed.open_typed(t).await
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
        let s = &self.inner.shared;
        f.debug_struct("Heartbeat")
            .field("session", self.inner.typed.session())
            .field("timer", &*s.timer.borrow())
            .field("running", &s.running.get())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stopped.set(true);
        self.shared.running.set(false);
        let tasks = self.beaters.get_mut().drain(..);
        for task in tasks.chain(self.responders.get_mut().drain(..)) {
            task.abort();
        }
    }
}

/// Beats on every tick and on demand, over `stream`, until it fails.
async fn requester(shared: Rc<Shared>, mut stream: TypedStream, mut rng: Rng) {
    loop {
        // Wait for the next tick or an on-demand request.
        let on_demand = loop {
            let seen = shared.requester.generation.get();
            if shared.has_requests() {
                break true;
            }
            if shared.timer.borrow_mut().poll_beat(Instant::now()) {
                break false;
            }
            let due = shared.timer.borrow().next_beat();
            shared.requester.wait(seen, Some(due)).await;
        };
        let waiting: Vec<_> = if on_demand {
            shared.requests.borrow_mut().drain(..).collect()
        } else {
            Vec::new()
        };
        let start = Instant::now();
        match beat_once(&mut stream, rng.next_u32()).await {
            Ok(()) => {
                let now = Instant::now();
                if on_demand {
                    let latency = now.saturating_duration_since(start);
                    for slot in waiting {
                        slot.complete(Ok(latency));
                    }
                } else {
                    let latency = shared.timer.borrow_mut().on_periodic_reply(start, now);
                    shared.checker.notify();
                    shared.emit(HeartbeatEvent::Latency(latency));
                }
            }
            Err(e) => {
                // Like Go: stop beating; the checker reports the timeout.
                shared.running.set(false);
                for slot in waiting {
                    slot.complete(Err(e.clone()));
                }
                shared.fail_requests(&e);
                return;
            }
        }
        if shared.stopped.get() {
            return;
        }
    }
}

async fn beat_once(stream: &mut TypedStream, ping: u32) -> Result<(), Error> {
    stream.write_all(&ping.to_be_bytes()).await?;
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await?;
    if u32::from_be_bytes(echo) != ping {
        return Err(Error::StreamClosed);
    }
    Ok(())
}

/// Reports a timeout when no periodic beat succeeded within interval +
/// tolerance of the last arming; once, until the next success.
async fn checker(shared: Rc<Shared>) {
    while !shared.stopped.get() {
        let seen = shared.checker.generation.get();
        if shared.timer.borrow_mut().poll_timeout(Instant::now()) {
            shared.emit(HeartbeatEvent::Timeout);
            continue;
        }
        let deadline = shared.timer.borrow().timeout_at();
        shared.checker.wait(seen, deadline).await;
    }
}

/// Answers one of the peer's heartbeat streams: read 4 bytes, echo them.
async fn respond(mut stream: TypedStream) {
    let mut ping = [0u8; 4];
    while stream.read_exact(&mut ping).await.is_ok() {
        if stream.write_all(&ping).await.is_err() {
            return;
        }
    }
}

/// xorshift64*: heartbeat values need to differ, not to be secret.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut h = RandomState::new().build_hasher();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        h.write_u128(now.map_or(0, |d| d.as_nanos()));
        Rng(h.finish() | 1)
    }

    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}
