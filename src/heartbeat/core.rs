//! The heartbeat's behaviour, written once for every driver: the shared
//! state, the requester (beats on every tick and on demand), the checker
//! (reports a timeout once per silence), the responder (echoes the peer's
//! beats), on-demand beats and the accept filter. A driver's `Heartbeat`
//! wraps a [`Core`], spawns these task bodies on its runtime and supplies its
//! clock ([`Clock`]); it adds no protocol logic of its own.
//!
//! The state sits behind `std` mutexes, never held across an `.await`, so
//! that the tokio driver's heartbeat is `Send + Sync` while the engine's
//! (whose callback need not be `Send`) stays on its core. The mutexes are
//! uncontended on the engine and cost nothing per frame: the heartbeat acts
//! once an interval. The handle shares the core with its tasks through any
//! pointer (`Rc` on the engine, `Arc` on tokio).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hasher};
use std::ops::Deref;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::timing::{HeartbeatConfig, HeartbeatTimer};
use super::HeartbeatEvent;
use crate::error::{Error, ErrorCode};
use crate::typed::{self, MuxSession, MuxStream, StreamType, TypedSession, TypedStream};

/// Bytes of one beat: a random value, echoed as is.
const BEAT_LEN: usize = 4;

/// A driver's clock: the only runtime service the task bodies need.
pub(crate) trait Clock {
    /// Completes at `deadline`.
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()>;
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a callback leaves consistent state behind: go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The heartbeat's state, shared by the handle and its tasks (never the
/// session: tasks hold only their stream, so dropping every handle lets the
/// session close). `C` is the callback's type: `dyn FnMut(HeartbeatEvent)`,
/// with `+ Send` on a multi-threaded runtime.
pub(crate) struct Core<C: ?Sized> {
    /// The type of heartbeat streams, both ways.
    stream_type: StreamType,
    state: Mutex<State>,
    started: AtomicBool,
    stopped: AtomicBool,
    /// The requester runs and its stream works.
    running: AtomicBool,
    requester: Signal,
    checker: Signal,
    on_event: Mutex<Option<Box<C>>>,
}

struct State {
    /// When to beat and when to report a timeout.
    timer: HeartbeatTimer,
    /// On-demand beats waiting for the requester.
    requests: VecDeque<Arc<BeatSlot>>,
}

/// An on-demand beat's answer.
#[derive(Default)]
struct BeatSlot {
    inner: Mutex<SlotState>,
}

/// The answer once it came, and the waker of the `beat` waiting for it.
type SlotState = (Option<Result<Duration, Error>>, Option<Waker>);

impl BeatSlot {
    fn complete(&self, r: Result<Duration, Error>) {
        let waker = {
            let mut s = lock(&self.inner);
            s.0 = Some(r);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Wakes one task when something it waits on changed.
#[derive(Default)]
struct Signal {
    generation: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn seen(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn notify(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits for a notification after generation `seen`, or until
    /// `deadline`; true if the deadline passed first.
    async fn wait<K: Clock>(&self, seen: u64, deadline: Option<Instant>) -> bool {
        let mut sleep = pin!(deadline.map(K::sleep_until));
        poll_fn(|cx| {
            {
                // The generation is checked under the waker's lock, which
                // `notify` takes after bumping it: no wake-up is lost.
                let mut slot = lock(&self.waker);
                if self.generation.load(Ordering::Acquire) != seen {
                    return Poll::Ready(false);
                }
                *slot = Some(cx.waker().clone());
            }
            if let Some(s) = sleep.as_mut().as_pin_mut() {
                if s.poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl<C: ?Sized + FnMut(HeartbeatEvent)> Core<C> {
    pub(crate) fn new(config: HeartbeatConfig) -> Core<C> {
        Core {
            stream_type: config.stream_type,
            state: Mutex::new(State {
                timer: HeartbeatTimer::new(config, Instant::now()),
                requests: VecDeque::new(),
            }),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            running: AtomicBool::new(false),
            requester: Signal::default(),
            checker: Signal::default(),
            on_event: Mutex::new(None),
        }
    }

    /// Opens the heartbeat stream for [`Heartbeat::start`](super::Heartbeat::start):
    /// `Ok(None)` if it was already started (or stopped meanwhile), else the
    /// stream for the requester, whose task the driver then spawns with
    /// [`requester`] and [`checker`].
    pub(crate) async fn open<S: MuxSession>(
        &self,
        typed: &TypedSession<S>,
        on_event: Box<C>,
    ) -> Result<Option<S::Stream>, Error> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let stream = match typed.open_typed(self.stream_type).await {
            Ok(s) => s,
            Err(e) => {
                self.started.store(false, Ordering::Release);
                return Err(e);
            }
        };
        if self.stopped.load(Ordering::Acquire) {
            return Ok(None);
        }
        *lock(&self.on_event) = Some(on_event);
        self.running.store(true, Ordering::Release);
        lock(&self.state).timer.start(Instant::now());
        Ok(Some(stream.into_stream()))
    }

    fn emit(&self, event: HeartbeatEvent) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        // The requester and the checker may report at once (on two threads):
        // the second waits for the first.
        if let Some(f) = lock(&self.on_event).as_mut() {
            f(event);
        }
    }

    fn has_requests(&self) -> bool {
        let mut st = lock(&self.state);
        // A slot only the queue holds belongs to a `beat` that gave up.
        st.requests.retain(|s| Arc::strong_count(s) > 1);
        !st.requests.is_empty()
    }

    fn fail_requests(&self, e: &Error) {
        let slots: Vec<_> = lock(&self.state).requests.drain(..).collect();
        for s in slots {
            s.complete(Err(e.clone()));
        }
    }

    /// See [`Heartbeat::beat`](super::Heartbeat::beat).
    pub(crate) async fn beat<K: Clock>(&self) -> Result<Duration, Error> {
        if !self.running.load(Ordering::Acquire) {
            return Err(Error::StreamClosed);
        }
        let slot = Arc::new(BeatSlot::default());
        let deadline = {
            let mut st = lock(&self.state);
            st.requests.push_back(slot.clone());
            st.timer.on_demand_deadline(Instant::now())
        };
        self.requester.notify();
        let mut sleep = pin!(K::sleep_until(deadline));
        poll_fn(|cx| {
            {
                let mut s = lock(&slot.inner);
                if let Some(r) = s.0.take() {
                    return Poll::Ready(r);
                }
                s.1 = Some(cx.waker().clone());
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Error::Timeout("heartbeat"))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// See [`Heartbeat::set_interval`](super::Heartbeat::set_interval).
    pub(crate) fn set_interval(&self, interval: Duration) {
        lock(&self.state).timer.set_interval(interval);
        self.requester.notify();
        self.checker.notify();
    }

    /// See [`Heartbeat::set_tolerance`](super::Heartbeat::set_tolerance).
    pub(crate) fn set_tolerance(&self, tolerance: Duration) {
        lock(&self.state).timer.set_tolerance(tolerance);
        self.checker.notify();
    }

    pub(crate) fn interval(&self) -> Duration {
        lock(&self.state).timer.interval()
    }

    pub(crate) fn tolerance(&self) -> Duration {
        lock(&self.state).timer.tolerance()
    }

    /// Stops beating and reporting; the driver aborts the tasks.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.running.store(false, Ordering::Release);
        self.fail_requests(&Error::StreamClosed);
        self.requester.notify();
        self.checker.notify();
    }

    /// Accepts the next application stream: streams of the heartbeat's type
    /// go to `answer` (the driver spawns [`respond`] on them) and never
    /// reach the application.
    pub(crate) async fn accept<S: MuxSession>(
        &self,
        typed: &TypedSession<S>,
        mut answer: impl FnMut(S::Stream),
    ) -> Result<TypedStream<S::Stream>, Error> {
        loop {
            let stream = typed.accept_typed().await?;
            if stream.stream_type() != self.stream_type {
                return Ok(stream);
            }
            answer(stream.into_stream());
        }
    }

    /// Refuses the heartbeat's own type, then opens a typed stream.
    pub(crate) async fn open_typed<S: MuxSession>(
        &self,
        typed: &TypedSession<S>,
        t: StreamType,
    ) -> Result<TypedStream<S::Stream>, Error> {
        if t == self.stream_type {
            return Err(Error::LocalReset(ErrorCode::StreamRefused));
        }
        typed.open_typed(t).await
    }
}

impl<C: ?Sized> std::fmt::Debug for Core<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("timer", &lock(&self.state).timer)
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish()
    }
}

/// The requester task: beats on every tick and on demand, over `stream`,
/// until it fails or the heartbeat stops.
pub(crate) async fn requester<K, C, T>(
    core: impl Deref<Target = Core<C>>,
    mut stream: T,
    mut rng: Rng,
) where
    K: Clock,
    C: ?Sized + FnMut(HeartbeatEvent),
    T: MuxStream,
{
    loop {
        // Wait for the next tick or an on-demand request.
        let on_demand = loop {
            if core.stopped.load(Ordering::Acquire) {
                return;
            }
            let seen = core.requester.seen();
            if core.has_requests() {
                break true;
            }
            let due = {
                let mut st = lock(&core.state);
                if st.timer.poll_beat(Instant::now()) {
                    None
                } else {
                    Some(st.timer.next_beat())
                }
            };
            match due {
                None => break false,
                Some(due) => core.requester.wait::<K>(seen, Some(due)).await,
            };
        };
        let waiting: Vec<_> = if on_demand {
            lock(&core.state).requests.drain(..).collect()
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
                    let latency = lock(&core.state).timer.on_periodic_reply(start, now);
                    core.checker.notify();
                    core.emit(HeartbeatEvent::Latency(latency));
                }
            }
            Err(e) => {
                // Like Go: stop beating; the checker reports the timeout.
                core.running.store(false, Ordering::Release);
                for slot in waiting {
                    slot.complete(Err(e.clone()));
                }
                core.fail_requests(&e);
                return;
            }
        }
    }
}

/// One beat: a value out, the same value back.
async fn beat_once<T: MuxStream>(stream: &mut T, ping: u32) -> Result<(), Error> {
    typed::write_all(stream, &ping.to_be_bytes()).await?;
    let mut echo = [0u8; BEAT_LEN];
    typed::read_exact(stream, &mut echo).await?;
    if u32::from_be_bytes(echo) != ping {
        return Err(Error::StreamClosed);
    }
    Ok(())
}

/// The checker task: reports a timeout when no periodic beat succeeded
/// within interval + tolerance of the last arming; once, until the next
/// success.
pub(crate) async fn checker<K, C>(core: impl Deref<Target = Core<C>>)
where
    K: Clock,
    C: ?Sized + FnMut(HeartbeatEvent),
{
    while !core.stopped.load(Ordering::Acquire) {
        let seen = core.checker.seen();
        let (due, deadline) = {
            let mut st = lock(&core.state);
            (st.timer.poll_timeout(Instant::now()), st.timer.timeout_at())
        };
        if due {
            core.emit(HeartbeatEvent::Timeout);
            continue;
        }
        core.checker.wait::<K>(seen, deadline).await;
    }
}

/// The responder task: answers one of the peer's heartbeat streams (read 4
/// bytes, echo them) until it ends.
pub(crate) async fn respond<T: MuxStream>(mut stream: T) {
    let mut ping = [0u8; BEAT_LEN];
    while typed::read_exact(&mut stream, &mut ping).await.is_ok() {
        if typed::write_all(&mut stream, &ping).await.is_err() {
            return;
        }
    }
}

/// xorshift64*: heartbeat values need to differ, not to be secret.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beat_values_differ() {
        let mut rng = Rng::new();
        let values: std::collections::HashSet<u32> = (0..1000).map(|_| rng.next_u32()).collect();
        assert!(values.len() > 990, "{}", values.len());
    }
}
