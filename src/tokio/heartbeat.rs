//! The heartbeat over the tokio driver; see [`Heartbeat`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::tokio::runtime::Handle;
use ::tokio::task::JoinHandle;

use super::typed::{TypedSession, TypedStream};
use super::SessionStats;
use crate::error::{Error, ErrorCode};
use crate::heartbeat::core::{self, Clock, Core, Rng};
use crate::heartbeat::{HeartbeatConfig, HeartbeatEvent};
use crate::session::SessionEnd;
use crate::typed::StreamType;

/// The heartbeat over the tokio driver: the same heartbeat as the engine's
/// [`crate::heartbeat::Heartbeat`] (the driver-neutral core's tasks and the
/// sans-IO [`HeartbeatTimer`](crate::heartbeat::timing::HeartbeatTimer)),
/// its tasks spawned on tokio and its timers tokio's.
///
/// The handle is `Send + Sync` and the callback must be `Send`: it runs on
/// whichever worker thread runs the heartbeat's tasks. Everything else is as
/// on the engine: latencies of periodic beats to the callback, a timeout
/// reported once per silence and re-armed by the next success, on-demand
/// [`Heartbeat::beat`], the peer's heartbeat streams answered inside
/// [`Heartbeat::accept`] and never returned, a configurable stream type, and
/// the session never closed by the heartbeat itself.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use muxado::heartbeat::{HeartbeatConfig, HeartbeatEvent};
/// use muxado::tokio::{Heartbeat, Session, TypedSession};
/// use muxado::Config;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), muxado::Error> {
/// let (a, b) = tokio::io::duplex(64 * 1024);
/// let config = HeartbeatConfig::default().with_interval(Duration::from_millis(10));
/// let server = Heartbeat::new(TypedSession::new(Session::server(a, Config::default())), config);
/// let client = Heartbeat::new(TypedSession::new(Session::client(b, Config::default())), config);
/// // The server answers the client's beats while it accepts.
/// tokio::spawn(async move { while server.accept().await.is_ok() {} });
/// let events = Arc::new(Mutex::new(Vec::new()));
/// let sink = events.clone();
/// client.start(move |e| sink.lock().unwrap().push(e)).await?;
/// let latency = client.beat().await?;                // on demand
/// assert!(latency < Duration::from_secs(1));
/// tokio::time::sleep(Duration::from_millis(50)).await; // a few periodic beats
/// assert!(matches!(events.lock().unwrap().first(), Some(HeartbeatEvent::Latency(_))));
/// client.close()?;
/// # Ok(())
/// # }
/// ```
///
/// Cheap to clone, `Send + Sync`. When the last clone is dropped, the
/// heartbeat's tasks are aborted (and release their streams).
#[derive(Clone)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

/// The callback runs on a worker thread of the runtime.
type Callback = dyn FnMut(HeartbeatEvent) + Send;

struct Inner {
    typed: TypedSession,
    /// The behaviour, shared with the engine's heartbeat.
    core: Arc<Core<Callback>>,
    /// The runtime current when the heartbeat was made, if any: its tasks
    /// go there even if a method is polled elsewhere.
    runtime: Option<Handle>,
    /// The requester and the checker, once started.
    beaters: Mutex<Vec<JoinHandle<()>>>,
    /// One per heartbeat stream of the peer.
    responders: Mutex<Vec<JoinHandle<()>>>,
}

/// tokio's timers.
struct TokioClock;

impl Clock for TokioClock {
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> {
        ::tokio::time::sleep_until(deadline.into())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn runtime(&self) -> Result<Handle, Error> {
        match &self.runtime {
            Some(h) => Ok(h.clone()),
            None => Handle::try_current()
                .map_err(|e| Error::Transport(format!("no tokio runtime: {e}").into())),
        }
    }
}

impl Heartbeat {
    /// Wraps `typed`. Nothing is sent until [`Heartbeat::start`]; a side that
    /// only answers the peer's heartbeats need not start, but must keep
    /// accepting.
    pub fn new(typed: TypedSession, config: HeartbeatConfig) -> Heartbeat {
        Heartbeat {
            inner: Arc::new(Inner {
                typed,
                core: Arc::new(Core::new(config)),
                runtime: Handle::try_current().ok(),
                beaters: Mutex::new(Vec::new()),
                responders: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Opens the heartbeat stream (a SYN frame carrying the 4 type bytes,
    /// `FF FF FF FF` by default) and starts beating; `on_event` gets every
    /// periodic latency and timeouts.
    ///
    /// Fails if the stream cannot be opened (the session is dead), or with
    /// [`Error::Transport`] outside a tokio runtime. Starting twice, or
    /// after [`Heartbeat::stop`], does nothing.
    pub async fn start(
        &self,
        on_event: impl FnMut(HeartbeatEvent) + Send + 'static,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let rt = inner.runtime()?;
        if let Some(stream) = inner.core.open(&inner.typed, Box::new(on_event)).await? {
            let requester = rt.spawn(core::requester::<TokioClock, _, _>(
                inner.core.clone(),
                stream,
                Rng::new(),
            ));
            let checker = rt.spawn(core::checker::<TokioClock, _>(inner.core.clone()));
            lock(&inner.beaters).extend([requester, checker]);
        }
        Ok(())
    }

    /// Beats now and returns the round-trip time. Waits up to the tolerance
    /// (after a beat already in flight, if any), then fails with
    /// [`Error::Timeout`]; fails with [`Error::StreamClosed`] if the heartbeat
    /// is not started, stopped, or its stream failed. Does not feed the
    /// callback nor re-arm the timeout.
    pub async fn beat(&self) -> Result<Duration, Error> {
        self.inner.core.beat::<TokioClock>().await
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
        for task in lock(&self.inner.beaters).drain(..) {
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
                // Outside any runtime the stream is dropped unanswered: the
                // peer sees its heartbeat fail rather than hang.
                if let Ok(rt) = inner.runtime() {
                    let task = rt.spawn(core::respond(stream));
                    let mut responders = lock(&inner.responders);
                    responders.retain(|t| !t.is_finished());
                    responders.push(task);
                }
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

    /// Sends GOAWAY without closing; see [`Session::go_away`](super::Session::go_away).
    pub fn go_away(&self, code: ErrorCode, debug: &[u8]) -> Result<(), Error> {
        self.inner.typed.session().go_away(code, debug)
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
        let beaters = self
            .beaters
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let mut tasks = std::mem::take(beaters);
        let responders = self
            .responders
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.append(responders);
        for task in tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_heartbeat_is_send_and_sync() {
        assert_send_sync::<Heartbeat>();
    }
}
