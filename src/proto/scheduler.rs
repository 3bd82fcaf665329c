//! The send scheduler: how much each stream may queue for the transport, so
//! that many writers share the link fairly and a bulk writer cannot starve
//! the others, and in which order waiting writers are woken (round robin).
//!
//! Time is cut into transmit epochs, one per [`Session::poll_transmit`]
//! (super::Session::poll_transmit). In each, a stream may queue its share of
//! the send buffer among the streams writing (at least 16 KiB, at most the
//! configured quota); a stream that used its share waits for the next epoch,
//! behind those that found the buffer full.

use std::collections::VecDeque;

use super::config::Config;
use super::stream::{StreamKey, StreamState};
use crate::frame::MAX_PAYLOAD;

/// Smallest per-stream share of the send buffer in one transmit epoch.
const MIN_FAIR_SHARE: usize = 16 * 1024;

/// Fewest bytes a write is cut to when the send buffer or the fair share
/// (not the window) is what limits it.
const SMALLEST_CUT: usize = 64;

/// Why a write could take nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stall {
    /// The stream's send window is empty: WNDINC will wake it.
    Window,
    /// The buffer is full or the stream's share is used: the next
    /// transmission will wake it.
    Buffer,
}

/// Fairness state of one session's writers.
#[derive(Debug)]
pub(crate) struct Scheduler {
    epoch: u64,
    /// Streams that wrote in the current and in the previous epoch: the
    /// quota of each is the send buffer divided among them.
    writers_now: usize,
    writers_before: usize,
    /// Woken first after a transmission: they found no room.
    buffer_waiters: VecDeque<StreamKey>,
    /// Woken after them: they had used their share.
    quota_waiters: VecDeque<StreamKey>,
}

impl Scheduler {
    pub(crate) fn new() -> Self {
        Scheduler {
            epoch: 1,
            writers_now: 0,
            writers_before: 1,
            buffer_waiters: VecDeque::new(),
            quota_waiters: VecDeque::new(),
        }
    }

    /// How many of `len` bytes stream `s` may queue now, with `room` bytes
    /// left in the send buffer; `Err` says why none, and a stream stalled on
    /// the buffer is queued to be woken.
    #[inline]
    pub(crate) fn admit(
        &mut self,
        key: StreamKey,
        s: &mut StreamState,
        len: usize,
        room: usize,
        config: &Config,
    ) -> Result<usize, Stall> {
        let writers = self.writers_now.max(self.writers_before);
        let quota = (config.max_send_buffer / writers.max(1))
            .max(MIN_FAIR_SHARE)
            .min(config.stream_send_quota);
        if s.epoch != self.epoch {
            s.epoch = self.epoch;
            s.epoch_bytes = 0;
            self.writers_now += 1;
        }
        let share = quota.saturating_sub(s.epoch_bytes);
        let window = usize::try_from(s.send_window).unwrap_or(usize::MAX);
        // The buffer or the share may cut a write, but not into a sliver: a
        // few bytes cost a whole header, and a typed stream's 4-byte type must
        // go out in one frame for Go's single-read accept.
        let smallest_cut = len
            .min(SMALLEST_CUT)
            .min(config.max_send_buffer)
            .min(config.stream_send_quota);
        let room = if room < smallest_cut { 0 } else { room };
        let share = if share < smallest_cut { 0 } else { share };
        let n = len
            .min(window)
            .min(room)
            .min(share)
            .min(MAX_PAYLOAD as usize);
        if n > 0 {
            s.epoch_bytes += n;
            return Ok(n);
        }
        if window == 0 {
            return Err(Stall::Window);
        }
        if !std::mem::replace(&mut s.waiting_for_buffer, true) {
            // Round robin: streams that found no room go first after the
            // next transmission, those that used their share after.
            if share == 0 {
                self.quota_waiters.push_back(key);
            } else {
                self.buffer_waiters.push_back(key);
            }
        }
        Err(Stall::Buffer)
    }

    /// A transmission happened: a new epoch begins, and every waiting writer
    /// is due to be woken, in order ([`Scheduler::next_waiter`]).
    pub(crate) fn on_transmit(&mut self) {
        self.epoch += 1;
        self.writers_before = std::mem::take(&mut self.writers_now);
        self.buffer_waiters.append(&mut self.quota_waiters);
    }

    /// The next writer to wake after a transmission.
    pub(crate) fn next_waiter(&mut self) -> Option<StreamKey> {
        self.buffer_waiters.pop_front()
    }

    /// The session died: nobody waits any more.
    pub(crate) fn clear(&mut self) {
        self.buffer_waiters.clear();
        self.quota_waiters.clear();
    }
}
