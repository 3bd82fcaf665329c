//! Flow control: each stream's receive window, the WNDINC credit returned as
//! the application reads (coalesced), and the auto-tuning budget that lets
//! the windows of streams whose reader keeps up grow.
//!
//! A window grows only while its stream has the session to itself. Whatever a
//! window admits can sit in the TCP buffers ahead of every other stream's
//! next frame, so a 4 MiB bulk window beside an rpc stream costs each of its
//! requests up to a millisecond on loopback. A grown window is never shrunk
//! back, though: that would mean withholding credit the peer was granted,
//! and a sender that ignores extra credit (ngrok's crate caps its window at
//! the initial size) would then wait for credit that never comes.

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
    /// The stream that read last (0: none yet), whether it is gone, and how
    /// many bytes were read since another stream last did (saturating).
    last_reader: u32,
    last_reader_gone: bool,
    solo_bytes: usize,
    /// Bytes a stream must read with no other stream reading before its
    /// window may grow (again): other streams are active if one of them read
    /// within the last `max_auto_window` bytes of this stream's traffic, as
    /// much as a grown window could queue ahead of them. An rpc stream beside
    /// bulk reads every few hundred KiB of bulk; a heartbeat every few
    /// seconds only pauses growth for a moment.
    solo_after: usize,
}

impl FlowControl {
    pub(crate) fn new(config: &Config) -> Self {
        FlowControl {
            max_window: config.max_window,
            max_auto_window: config.max_auto_window,
            budget: config.auto_window_budget,
            used: 0,
            threshold: config.credit_threshold(),
            last_reader: 0,
            last_reader_gone: true,
            solo_bytes: config.max_auto_window as usize,
            solo_after: config.max_auto_window as usize,
        }
    }

    /// May a frame of `len` bytes be buffered on `s` (reference §6: the peer
    /// must not exceed the window)?
    pub(crate) fn admits(s: &StreamState, len: u32) -> bool {
        s.recv_buf.len() + len as usize <= s.recv_window as usize
    }

    /// The application read `n` bytes of `s`: the WNDINC increment to send,
    /// if enough credit accumulated. A stream whose reader keeps up (nothing
    /// left unread) while no other stream reads has its window doubled,
    /// within its share of the budget among `open_streams`, and the extra is
    /// granted in the same WNDINC.
    pub(crate) fn credit(
        &mut self,
        s: &mut StreamState,
        n: usize,
        open_streams: usize,
    ) -> Option<u32> {
        if s.id != self.last_reader {
            // Another stream reads: this one is no longer alone. Unless the
            // last reader is gone: one transfer after another (a stream per
            // download) keeps the session to itself.
            if !self.last_reader_gone {
                self.solo_bytes = 0;
            }
            self.last_reader = s.id;
            self.last_reader_gone = false;
        }
        // Alone if it read enough before this read with nobody else reading.
        let alone = self.solo_bytes >= self.solo_after;
        self.solo_bytes = self.solo_bytes.saturating_add(n);
        s.credit += n as u32;
        // The threshold stays that of the base window even when this stream's
        // window grew: a sender may ignore extra credit (ngrok's crate caps
        // its window at the initial size), and it must still get credit
        // before its base window runs out.
        if s.credit < self.threshold {
            return None;
        }
        let mut inc = std::mem::take(&mut s.credit);
        if alone && s.recv_buf.is_empty() {
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
    pub(crate) fn release(&mut self, s: &StreamState) {
        self.used -= (s.recv_window - self.max_window) as usize;
        if s.id == self.last_reader {
            self.last_reader_gone = true;
        }
    }
}
