//! What the handles and the driver task share: the protocol core behind a
//! mutex, and the wakers of everyone waiting on it.
//!
//! The lock is taken for one protocol call and the dispatch of its events,
//! never across an `.await`. Wakers are collected while it is held and woken
//! after it is released ([`WakeList`]), so that a woken task (or a waker whose
//! drop drops a task) never runs into the lock it came from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use std::time::Instant;

use crate::proto::{self, Event, StreamKey};

/// The state of one session and the handles' count.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Session handles and streams alive; the session closes when it drops to 0.
    users: AtomicUsize,
}

/// The readers and the writer waiting on one stream.
#[derive(Default)]
pub(super) struct Wakers {
    pub(super) read: Option<Waker>,
    pub(super) write: Option<Waker>,
}

/// Everything behind the lock.
pub(super) struct State {
    pub(super) proto: proto::Session,
    /// Indexed by the stream's slab slot (grows to the most streams alive at once).
    wakers: Vec<Wakers>,
    acceptors: Vec<Waker>,
    waiters: Vec<Waker>,
    /// The driver task, waiting for something to transmit or a new timer.
    driver: Option<Waker>,
    /// The deadline the driver's timer is set to; a different
    /// [`proto::Session::poll_timeout`] wakes the driver to re-arm it.
    pub(super) armed: Option<Instant>,
    pub(super) sends: u64,
    pub(super) recvs: u64,
    /// The driver stopped reading because the session's memory budget is
    /// spent (`proto::Session::wants_input`); it is woken once input is
    /// wanted again, so the transport's own backpressure holds the peer.
    pub(super) input_paused: bool,
}

impl Shared {
    pub(super) fn new(proto: proto::Session) -> Shared {
        Shared {
            state: Mutex::new(State {
                proto,
                wakers: Vec::new(),
                acceptors: Vec::new(),
                waiters: Vec::new(),
                driver: None,
                armed: None,
                sends: 0,
                recvs: 0,
                input_paused: false,
            }),
            users: AtomicUsize::new(1),
        }
    }

    /// Locks the state. A panic while it was held (a bug) does not stop the
    /// other handles: the protocol state is still consistent between calls.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the locked state, dispatches the events it caused, and
    /// wakes their waiters once the lock is released.
    pub(super) fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A handle's call wakes few tasks (the driver, its own stream's
        // waiters): a small list is cheap to make and drop on every call.
        self.with_list(&mut WakeList::<4>::new(), f).0
    }

    /// [`Shared::with`] for calls that may wake many tasks at once (the
    /// session's death, closing it): a larger list, so that fewer of them
    /// are woken under the lock.
    pub(super) fn with_many<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        self.with_list(&mut WakeList::<32>::new(), f).0
    }

    /// [`Shared::with`] with the caller's list (the driver keeps one, so
    /// that feeding input, which may wake many readers, does not make and
    /// drop a large list every time); it is empty again on return. Also
    /// says whether it woke anyone.
    pub(super) fn with_list<T, const N: usize>(
        &self,
        wake: &mut WakeList<N>,
        f: impl FnOnce(&mut State) -> T,
    ) -> (T, bool) {
        let out = {
            let mut st = self.lock();
            let out = f(&mut st);
            st.dispatch(wake);
            out
        };
        let woke = wake.len() > 0;
        wake.wake_all();
        (out, woke)
    }

    pub(super) fn acquire(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    /// The last handle is gone: nobody can use the session any more, close it.
    pub(super) fn release_user(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.with_many(|st| st.proto.close_session());
        }
    }
}

impl State {
    /// Wakes whoever the protocol's events concern, and the driver if there
    /// is something to send or a timer to re-arm. Called after every handle
    /// or mutate.
    pub(super) fn dispatch<const N: usize>(&mut self, wake: &mut WakeList<N>) {
        while let Some(event) = self.proto.poll_event() {
            match event {
                Event::Readable(k) => wake.push(self.slot(k).read.take()),
                Event::Writable(k) => wake.push(self.slot(k).write.take()),
                Event::Accept => self.acceptors.drain(..).for_each(|w| wake.push(Some(w))),
                Event::GoAway => {}
                Event::Dead => {
                    self.acceptors.drain(..).for_each(|w| wake.push(Some(w)));
                    self.waiters.drain(..).for_each(|w| wake.push(Some(w)));
                    wake.push(self.driver.take());
                }
            }
        }
        let resume = self.input_paused && self.proto.wants_input();
        if resume || self.proto.pending_transmit() > 0 || self.proto.poll_timeout() != self.armed {
            wake.push(self.driver.take());
        }
    }

    pub(super) fn slot(&mut self, key: StreamKey) -> &mut Wakers {
        let i = key.slot as usize;
        if self.wakers.len() <= i {
            self.wakers.resize_with(i + 1, Wakers::default);
        }
        &mut self.wakers[i]
    }

    pub(super) fn wait_accept(&mut self, cx: &Context<'_>) {
        push_waker(&mut self.acceptors, cx);
    }

    pub(super) fn wait_end(&mut self, cx: &Context<'_>) {
        push_waker(&mut self.waiters, cx);
    }

    pub(super) fn wait_driver(&mut self, cx: &Context<'_>) {
        register(&mut self.driver, cx);
    }
}

/// Stores `cx`'s waker in `slot` unless the same one is already there.
pub(super) fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn push_waker(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

/// Wakers collected under the lock, woken after it (tokio's own `WakeList`
/// idea): a fixed array, so dispatching allocates nothing.
pub(super) struct WakeList<const N: usize> {
    wakers: [Option<Waker>; N],
    len: usize,
}

impl<const N: usize> WakeList<N> {
    pub(super) fn new() -> WakeList<N> {
        WakeList {
            wakers: std::array::from_fn(|_| None),
            len: 0,
        }
    }

    /// Wakers collected and not yet woken.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds a waker. When the list is full, the waker is woken at once (under
    /// the lock): rare, and still correct, since waking only schedules a task.
    pub(super) fn push(&mut self, waker: Option<Waker>) {
        let Some(w) = waker else { return };
        if self.len == N {
            w.wake();
        } else {
            self.wakers[self.len] = Some(w);
            self.len += 1;
        }
    }

    pub(super) fn wake_all(&mut self) {
        for w in &mut self.wakers[..self.len] {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        self.len = 0;
    }
}

impl<const N: usize> Drop for WakeList<N> {
    fn drop(&mut self) {
        self.wake_all();
    }
}
