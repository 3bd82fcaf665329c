//! Flow control: each stream's receive window, the WNDINC credit returned as
//! the application reads (coalesced), and the auto-tuning budget that lets
//! the windows of streams whose reader keeps up grow.

use super::config::Config;
use super::stream::StreamState;

/// The receive side's flow-control state, shared by a session's streams.
#[derive(Debug)]
pub(crate) struct FlowControl {
    /// Base window of every stream.
    max_window: u32,
    max_auto_window: u32,
    /// Extra window auto-tuning may grant, over all streams.
    budget: usize,
    /// Extra window granted now, over all streams.
    used: usize,
    /// Read bytes are credited back once this many accumulate.
    threshold: u32,
}

impl FlowControl {
    pub(crate) fn new(config: &Config) -> Self {
        FlowControl {
            max_window: config.max_window,
            max_auto_window: config.max_auto_window,
            budget: config.auto_window_budget,
            used: 0,
            threshold: config.credit_threshold(),
        }
    }

    /// May a frame of `len` bytes be buffered on `s` (reference §6: the peer
    /// must not exceed the window)?
    pub(crate) fn admits(s: &StreamState, len: u32) -> bool {
        s.recv_buf.len() + len as usize <= s.recv_window as usize
    }

    /// The application read `n` bytes of `s`: the WNDINC increment to send,
    /// if enough credit accumulated. A stream whose reader keeps up (nothing
    /// left unread) has its window doubled, within its share of the budget
    /// among `open_streams`, and the extra is granted in the same WNDINC.
    pub(crate) fn credit(
        &mut self,
        s: &mut StreamState,
        n: usize,
        open_streams: usize,
    ) -> Option<u32> {
        s.credit += n as u32;
        // The threshold stays that of the base window even when this stream's
        // window grew: a sender may ignore extra credit (ngrok's crate caps
        // its window at the initial size), and it must still get credit
        // before its base window runs out.
        if s.credit < self.threshold {
            return None;
        }
        let mut inc = std::mem::take(&mut s.credit);
        if s.recv_buf.is_empty() {
            // A stream's window grows only up to an equal share of the budget
            // among the open streams: with many streams their base windows
            // already cover the path, and a few that grew early would take
            // more than their share of the link.
            let room = self.budget - self.used;
            let share = self.budget / open_streams.max(1);
            let grow = (s.recv_window as usize)
                .min((self.max_auto_window - s.recv_window) as usize)
                .min(room)
                .min(share.saturating_sub(s.recv_window as usize)) as u32;
            s.recv_window += grow;
            self.used += grow as usize;
            inc += grow;
        }
        Some(inc)
    }

    /// A stream is gone: the window it grew returns to the budget.
    pub(crate) fn release(&mut self, recv_window: u32) {
        self.used -= (recv_window - self.max_window) as usize;
    }
}
