//! Wakes the tasks of one core waiting for a change of its state (draining,
//! connections in flight, a new session): one list of wakers, emptied by
//! every notification.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(super) struct Notify {
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every task registered since the last notification.
    pub(super) fn notify(&self) {
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Registers the polling task for the next notification.
    pub(super) fn register(&self, cx: &Context<'_>) {
        self.wakers.borrow_mut().push(cx.waker().clone());
    }

    /// Waits until `cond` holds, re-checking after every notification.
    pub(super) async fn until(&self, cond: impl Fn() -> bool) {
        poll_fn(|cx| {
            if cond() {
                return Poll::Ready(());
            }
            self.register(cx);
            Poll::Pending
        })
        .await
    }
}
