//! Timers of one core: an ordered map of deadlines. The loop fires the due ones each turn and
//! bounds its wait in `io_uring_enter` by the nearest one.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::core_loop;

/// The timers of one core.
#[derive(Default)]
pub(crate) struct Timers {
    map: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

impl Timers {
    fn insert(&mut self, deadline: Instant, waker: Waker) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.map.insert((deadline, id), waker);
        id
    }

    fn update(&mut self, deadline: Instant, id: u64, waker: &Waker) -> bool {
        match self.map.get_mut(&(deadline, id)) {
            Some(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, deadline: Instant, id: u64) {
        self.map.remove(&(deadline, id));
    }

    /// Wakes every timer due at `now`.
    pub(crate) fn fire(&mut self, now: Instant) {
        while let Some(entry) = self.map.first_entry() {
            if entry.key().0 > now {
                break;
            }
            entry.remove().wake();
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.map.keys().next().map(|k| k.0)
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }
}

/// A future that completes at a deadline. See [`sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    id: Option<u64>,
}

/// Waits for `duration` on the current core's clock.
///
/// Must be polled on an engine core: polled elsewhere it panics with a clear message.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Waits until `deadline`. Must be polled on an engine core (see [`sleep`]).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, id: None }
}

impl Sleep {
    /// The instant this sleep completes at.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let core =
            core_loop::current().expect("muxado engine timers must be polled on an engine core");
        let mut timers = core.timers.borrow_mut();
        if Instant::now() >= self.deadline {
            if let Some(id) = self.id.take() {
                timers.remove(self.deadline, id);
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        match self.id {
            Some(id) if timers.update(deadline, id, cx.waker()) => {}
            _ => self.id = Some(timers.insert(deadline, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            if let Some(core) = core_loop::current() {
                if let Ok(mut t) = core.timers.try_borrow_mut() {
                    t.remove(self.deadline, id);
                }
            }
        }
    }
}

/// The error of [`timeout`]: the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// Runs `future`, giving up with [`Elapsed`] after `duration` (the future is then dropped).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    timeout_at(Instant::now() + duration, future)
}

/// Like [`timeout`] with an absolute deadline.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`] and [`timeout_at`].
    ///
    /// A struct rather than an `async fn`: an `async fn` keeps the future it
    /// is given both as its argument and as the pinned local it moves it
    /// into, so a timeout around a 1.3 KiB send grew to 4 KiB, and every
    /// session's writer task with it; the engine copies a task's future into
    /// place when it spawns it, and those copies were the largest user-space
    /// cost of a short session (perf, the bench's `connect` case).
    #[must_use = "futures do nothing unless awaited"]
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_as_big_as_its_future_and_a_sleep_not_three_times_it() {
        let big = async {
            let buf = [0u8; 2048];
            std::future::ready(()).await;
            buf.len()
        };
        let inner = std::mem::size_of_val(&big);
        let t = timeout(Duration::from_secs(1), big);
        assert!(
            std::mem::size_of_val(&t) <= inner + std::mem::size_of::<Sleep>() + 8,
            "timeout {} bytes around a future of {inner}",
            std::mem::size_of_val(&t)
        );
    }
}
