//! The futures of operations in flight: [`Op`] (one-shot: resolves to its completion and gives
//! its data back) and [`MultiOp`] (multishot: a stream of completions). Dropping either before
//! the final completion parks what the kernel may still use in the op table.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::{cqueue, squeue};

use super::core_loop::{current, Core};
use super::ring::{Completion, Lifecycle, MultiState, OrphanHook};

/// A one-shot operation in flight. Resolves to its completion and gives its data back.
pub(crate) struct Op<T: 'static> {
    core: Rc<Core>,
    key: u64,
    data: Option<T>,
    /// Called with the completion if the future is dropped before taking it.
    on_orphan: Option<OrphanHook>,
}

fn not_on_core() -> io::Error {
    io::Error::other(
        "muxado engine: I/O must run on an engine core (inside block_on or Engine::run)",
    )
}

impl<T: 'static> Op<T> {
    /// Submits the SQE `build` makes from the data, which the operation then owns.
    ///
    /// # Safety
    ///
    /// Every pointer in the SQE must point into heap memory owned by `data` (which does not move
    /// when `data` moves) or to `'static` memory, and stay valid as long as `data` is not dropped
    /// and not mutated through safe code. The engine keeps `data` alive until the final CQE.
    pub(crate) unsafe fn submit(
        mut data: T,
        build: impl FnOnce(&mut T) -> squeue::Entry,
    ) -> Result<Op<T>, (io::Error, T)> {
        let Some(core) = current() else {
            return Err((not_on_core(), data));
        };
        let sqe = build(&mut data);
        let key = {
            let mut d = core.driver.borrow_mut();
            d.start(Lifecycle::Submitted(None), sqe)
        };
        Ok(Op {
            core,
            key,
            data: Some(data),
            on_orphan: None,
        })
    }

    /// Sets what to do with the completion if this future is dropped before taking it: an
    /// accept closes the descriptor it got, so the peer does not wait on a connection nobody
    /// serves.
    pub(crate) fn on_orphan(mut self, hook: OrphanHook) -> Self {
        self.on_orphan = Some(hook);
        self
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = (Completion, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut d = this.core.driver.borrow_mut();
        let state = d.ops.get_mut(this.key).expect("op slot vanished");
        match state {
            Lifecycle::Completed(c) => {
                let c = *c;
                d.ops.remove(this.key);
                drop(d);
                let data = this.data.take().expect("op polled after completion");
                Poll::Ready((c, data))
            }
            Lifecycle::Submitted(w) | Lifecycle::AwaitingNotif(_, w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => unreachable!("one-shot op in a multishot state"),
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return; // Completed and consumed.
        };
        let mut d = self.core.driver.borrow_mut();
        match d.ops.get_mut(self.key) {
            Some(Lifecycle::Completed(c)) => {
                let c = *c;
                d.ops.remove(self.key);
                if let Some(hook) = self.on_orphan {
                    // SAFETY: `c` is this op's completion.
                    unsafe { hook(&c) };
                }
                if cqueue::buffer_select(c.flags).is_some() {
                    d.release_buffer(&c);
                }
            }
            Some(state @ Lifecycle::Submitted(_)) => {
                // The kernel still owns pointers into `data` (and `data` holds the socket the SQE
                // names): park it until the CQE.
                *state = Lifecycle::Ignored {
                    _data: Box::new(data),
                    on_orphan: self.on_orphan,
                };
                d.cancel(self.key);
            }
            Some(state @ Lifecycle::AwaitingNotif(..)) => {
                // The send finished but the kernel may still read `data` until the notification.
                *state = Lifecycle::Ignored {
                    _data: Box::new(data),
                    on_orphan: None,
                };
            }
            _ => {}
        }
    }
}

/// A multishot operation (e.g. multishot recv): a stream of completions.
pub(crate) struct MultiOp {
    core: Rc<Core>,
    key: u64,
    done: bool,
    /// What the SQE names (the socket): kept open until the final CQE, even if this is dropped.
    keep: Option<Rc<dyn Any>>,
}

impl MultiOp {
    /// Submits a multishot SQE.
    ///
    /// # Safety
    ///
    /// The SQE must not point into memory the caller may free (it normally points at nothing but
    /// a file descriptor and a provided-buffer group).
    pub(crate) unsafe fn submit(
        sqe: squeue::Entry,
        max_queued: usize,
        keep: Rc<dyn Any>,
    ) -> io::Result<MultiOp> {
        let core = current().ok_or_else(not_on_core)?;
        let key = {
            let mut d = core.driver.borrow_mut();
            let state = Lifecycle::Multi(MultiState {
                waker: None,
                queue: VecDeque::new(),
                finished: false,
                max_queued: max_queued.max(1),
                cancel_sent: false,
            });
            d.start(state, sqe)
        };
        Ok(MultiOp {
            core,
            key,
            done: false,
            keep: Some(keep),
        })
    }

    /// The next completion, or `None` once the final one was taken.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut d = self.core.driver.borrow_mut();
        let Some(Lifecycle::Multi(m)) = d.ops.get_mut(self.key) else {
            unreachable!("multishot slot vanished");
        };
        if let Some(c) = m.queue.pop_front() {
            return Poll::Ready(Some(c));
        }
        if m.finished {
            d.ops.remove(self.key);
            self.done = true;
            return Poll::Ready(None);
        }
        match &m.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => m.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for MultiOp {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut d = self.core.driver.borrow_mut();
        let Some(Lifecycle::Multi(m)) = d.ops.get_mut(self.key) else {
            return;
        };
        let queued: Vec<Completion> = m.queue.drain(..).collect();
        let finished = m.finished;
        let cancel_sent = m.cancel_sent;
        for c in &queued {
            d.release_buffer(c);
        }
        if finished {
            d.ops.remove(self.key);
        } else {
            if let Some(state) = d.ops.get_mut(self.key) {
                *state = Lifecycle::Ignored {
                    _data: Box::new(self.keep.take()),
                    on_orphan: None,
                };
            }
            if !cancel_sent {
                d.cancel(self.key);
            }
        }
    }
}
