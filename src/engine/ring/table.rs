//! The operations in flight and where each stands (submitted, awaiting a zero-copy
//! notification, ignored, completed, multishot), addressed by the token in each SQE's
//! `user_data`.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::task::Waker;

use slab::Slab;

/// `user_data` of the eventfd read that carries cross-core wakeups.
pub(crate) const WAKE_TOKEN: u64 = u64::MAX;
/// `user_data` of async-cancel requests; their own completions are ignored.
pub(crate) const CANCEL_TOKEN: u64 = u64::MAX - 1;
/// `user_data` of the `IORING_OP_TIMEOUT` used to bound a wait when `EXT_ARG` is unavailable.
pub(crate) const TIMEOUT_TOKEN: u64 = u64::MAX - 2;

/// What to do with a completion whose future is gone (e.g. close an accepted descriptor).
///
/// # Safety
///
/// A hook must only be called with the completion of the operation it was set on (an accept's
/// hook closes the descriptor in `result`).
pub(crate) type OrphanHook = unsafe fn(&Completion);

/// The result of one CQE: `res` and `flags`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// `res` as an `io::Result`: negative values are `-errno`.
    pub(crate) fn io_result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// Where an in-flight operation stands.
pub(crate) enum Lifecycle {
    /// In the kernel; the waker is the last task that polled the future.
    Submitted(Option<Waker>),
    /// The CQE arrived; waiting for the future to be polled.
    Completed(Completion),
    /// A zero-copy send reported its result (with `IORING_CQE_F_MORE`); the kernel still reads
    /// the buffer until the notification CQE (`IORING_CQE_F_NOTIF`), which completes the op.
    AwaitingNotif(Completion, Option<Waker>),
    /// The future was dropped: keep its data alive until the final CQE, and hand every
    /// completion nobody will read to `on_orphan` (an accept closes the descriptor it got).
    Ignored {
        _data: Box<dyn Any>,
        on_orphan: Option<OrphanHook>,
    },
    /// A multishot operation: completions queue up until the consumer takes them.
    Multi(MultiState),
}

pub(crate) struct MultiState {
    pub(crate) waker: Option<Waker>,
    pub(crate) queue: VecDeque<Completion>,
    /// The final CQE (without `IORING_CQE_F_MORE`) has arrived.
    pub(crate) finished: bool,
    /// When `queue` reaches this length, cancel the operation (the consumer re-arms it later):
    /// one slow reader must not take every provided buffer of the core.
    pub(crate) max_queued: usize,
    pub(crate) cancel_sent: bool,
}

/// The operations in flight, addressed by a token `generation << 32 | slot` used as the SQE's
/// `user_data`: a stale token (say, an async cancel aimed at an operation that already finished)
/// can never match a newer operation that reuses the slot.
pub(crate) struct OpTable {
    slots: Slab<(u32, Lifecycle)>,
    generation: u32,
}

impl OpTable {
    pub(crate) fn new() -> OpTable {
        OpTable {
            slots: Slab::with_capacity(256),
            generation: 0,
        }
    }

    pub(crate) fn insert(&mut self, state: Lifecycle) -> u64 {
        // Generations stay below 2^31 so that tokens never collide with the reserved ones.
        self.generation = (self.generation + 1) & 0x7fff_ffff;
        let slot = self.slots.insert((self.generation, state));
        (u64::from(self.generation) << 32) | slot as u64
    }

    fn split(token: u64) -> (usize, u32) {
        ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
    }

    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut Lifecycle> {
        let (slot, generation) = Self::split(token);
        match self.slots.get_mut(slot) {
            Some((g, state)) if *g == generation => Some(state),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, token: u64) {
        if self.get_mut(token).is_some() {
            self.slots.remove(Self::split(token).0);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Lifecycle)> {
        self.slots
            .iter()
            .map(|(slot, (g, state))| ((u64::from(*g) << 32) | slot as u64, state))
    }
}
