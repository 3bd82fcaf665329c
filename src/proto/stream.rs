//! The state of one stream inside a session's slab.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};

use crate::copy;
use crate::error::Error;
use crate::lease::Lease;

/// A handle to a stream inside a [`Session`](super::Session): its slab slot
/// plus the generation of the stream that lived there when the handle was made.
/// Once the slot is freed and reused, the old key no longer matches and every
/// call with it fails with [`Error::StaleHandle`] instead of touching the new
/// stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

/// Per-stream protocol state.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub(crate) id: u32,
    pub(crate) gen: u32,
    /// Opened by this side (vs accepted).
    pub(crate) local: bool,
    /// The peer knows the stream: we sent its SYN, or it opened it.
    pub(crate) syn_sent: bool,
    /// Registered in the id table: frames for this id reach this stream.
    pub(crate) in_table: bool,
    /// The application (or the accept queue) still holds a key.
    pub(crate) held: bool,
    /// Bytes we may still send (WNDINC has no upper bound in Go: saturate).
    pub(crate) send_window: u64,
    /// Our FIN is queued; writes fail.
    pub(crate) send_fin: bool,
    /// The peer's FIN arrived; reads end after the buffer.
    pub(crate) recv_fin: bool,
    /// The application closed the stream (both directions).
    pub(crate) closed: bool,
    /// Received, not yet read.
    pub(crate) recv_buf: RecvQueue,
    /// What the peer may have unread here: `max_window`, more once auto-tuned.
    pub(crate) recv_window: u32,
    /// Read, not yet credited back with WNDINC.
    pub(crate) credit: u32,
    /// Set once; overrides everything except data already buffered.
    pub(crate) error: Option<Error>,
    /// We sent an RST: at most one per stream.
    pub(crate) rst_sent: bool,
    /// The application waits for data / for send space.
    pub(crate) want_read: bool,
    pub(crate) want_write: bool,
    /// Queued in the session's list of writers waiting for buffer space.
    pub(crate) waiting_for_buffer: bool,
    /// Bytes queued in the current transmit epoch (fairness quota).
    pub(crate) epoch: u64,
    pub(crate) epoch_bytes: usize,
}

impl StreamState {
    pub(crate) fn new(id: u32, gen: u32, local: bool, window: u32) -> Self {
        StreamState {
            id,
            gen,
            local,
            syn_sent: !local,
            in_table: true,
            held: true,
            send_window: u64::from(window),
            send_fin: false,
            recv_fin: false,
            closed: false,
            recv_buf: RecvQueue::new(),
            recv_window: window,
            credit: 0,
            error: None,
            rst_sent: false,
            want_read: false,
            want_write: false,
            waiting_for_buffer: false,
            epoch: 0,
            epoch_bytes: 0,
        }
    }

    /// DATA may still arrive: no FIN, no error, not closed by the application.
    pub(crate) fn accepts_data(&self) -> bool {
        !self.recv_fin && self.error.is_none() && !self.closed
    }

    /// Both directions are finished cleanly.
    pub(crate) fn fully_closed(&self) -> bool {
        self.send_fin && self.recv_fin
    }
}

/// A stream's received bytes, in order: pieces copied into one buffer and
/// pieces lent from the engine's receive ring ([`Lease`]s), interleaved.
///
/// Copied bytes sit in `copied`, in arrival order; each lease remembers how
/// many copied bytes arrived before it (since the lease before it), so the
/// queue's order is kept without a node per copied piece. A stream that never
/// receives a lease never touches `lent` (it allocates nothing for it).
#[derive(Debug, Default)]
pub(crate) struct RecvQueue {
    copied: BytesMut,
    /// Leases, each after `.0` copied bytes (counted from the lease before).
    lent: VecDeque<(usize, Lease)>,
    /// Copied bytes after the last lease.
    tail_copied: usize,
    /// Bytes in the queue: copied plus lent.
    len: usize,
}

impl RecvQueue {
    pub(crate) fn new() -> Self {
        RecvQueue::default()
    }

    /// Bytes not yet read.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Leases held (each pins one ring slot, possibly shared with others).
    #[inline]
    pub(crate) fn lent(&self) -> usize {
        self.lent.len()
    }

    /// Capacity of the copy buffer (0: the stream has none yet).
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.copied.capacity()
    }

    /// Gives the stream a buffer to copy into (an empty spare of the session).
    pub(crate) fn set_buffer(&mut self, buf: BytesMut) {
        debug_assert!(self.copied.is_empty() && buf.is_empty());
        self.copied = buf;
    }

    /// Appends a copy of `data`.
    #[inline]
    pub(crate) fn push_copy(&mut self, data: &[u8]) {
        copy::extend(&mut self.copied, data);
        self.tail_copied += data.len();
        self.len += data.len();
    }

    /// Appends a lent piece.
    pub(crate) fn push_lease(&mut self, lease: Lease) {
        self.len += lease.len();
        self.lent
            .push_back((std::mem::take(&mut self.tail_copied), lease));
    }

    /// The first contiguous piece of the queue (empty if the queue is).
    #[inline]
    pub(crate) fn front(&self) -> &[u8] {
        match self.lent.front() {
            None => &self.copied,
            Some((0, lease)) => lease.bytes(),
            Some(&(before, _)) => &self.copied[..before],
        }
    }

    /// Consumes `n` bytes of the front piece (`n <= front().len()`). Returns
    /// the number of leases this dropped (0 or 1).
    pub(crate) fn consume(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.len -= n;
        match self.lent.front_mut() {
            None => {
                self.copied.advance(n);
                self.tail_copied -= n;
                0
            }
            Some((0, lease)) => {
                lease.advance(n);
                if lease.len() == 0 {
                    self.lent.pop_front();
                    1
                } else {
                    0
                }
            }
            Some((before, _)) => {
                self.copied.advance(n);
                *before -= n;
                0
            }
        }
    }

    /// Consumes up to `dst.len()` bytes into `dst`, across pieces. Returns
    /// the bytes copied and the leases dropped.
    pub(crate) fn read_into(&mut self, dst: &mut [u8]) -> (usize, usize) {
        let (mut n, mut released) = (0, 0);
        while n < dst.len() && !self.is_empty() {
            let front = self.front();
            let k = front.len().min(dst.len() - n);
            copy::copy(&mut dst[n..n + k], &front[..k]);
            released += self.consume(k);
            n += k;
        }
        (n, released)
    }

    /// Resets the copy buffer's read position once it is drained (never
    /// allocates), so that it is reused from its start.
    pub(crate) fn reclaim_drained(&mut self) {
        if self.copied.is_empty() {
            self.copied.clear();
            let _ = self.copied.try_reclaim(self.copied.capacity() + 1);
        }
    }

    /// Drops every byte (leases go back to their ring) and hands out the
    /// copy buffer, empty. Returns it with the bytes and leases dropped.
    pub(crate) fn take(&mut self) -> (BytesMut, usize, usize) {
        let (len, lent) = (self.len, self.lent.len());
        self.lent.clear();
        self.tail_copied = 0;
        self.len = 0;
        let mut buf = std::mem::take(&mut self.copied);
        buf.clear();
        (buf, len, lent)
    }

    /// Replaces every lease by a copy of its bytes, in place in the order, so
    /// that the ring slots go back at once while the bytes stay readable (a
    /// stream closed, reset by the peer or left by a dead session). Allocates
    /// once, and only if something was lent. Returns the leases dropped.
    pub(crate) fn unlend(&mut self) -> usize {
        let lent = self.lent.len();
        if lent == 0 {
            return 0;
        }
        let mut all = BytesMut::with_capacity(self.len);
        while !self.is_empty() {
            let front = self.front();
            let k = front.len();
            copy::extend(&mut all, front);
            self.consume(k);
        }
        self.len = all.len();
        self.tail_copied = all.len();
        self.copied = all;
        lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::testing::{lease, TestPool};

    fn drain(q: &mut RecvQueue, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        loop {
            let (n, _) = q.read_into(&mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Copied and lent pieces come out in arrival order, whatever the read size.
    #[test]
    fn pieces_come_out_in_order_at_every_read_size() {
        let pool = TestPool::new(vec![vec![b'L'; 5], vec![b'M'; 7], vec![b'N'; 3]]);
        for step in [1, 2, 3, 4, 6, 100] {
            let mut q = RecvQueue::new();
            q.push_copy(b"ab");
            q.push_lease(lease(&pool, 0));
            q.push_lease(lease(&pool, 1));
            q.push_copy(b"c");
            q.push_copy(b"de");
            q.push_lease(lease(&pool, 2));
            q.push_copy(b"f");
            assert_eq!(q.len(), 2 + 5 + 7 + 3 + 3 + 1);
            assert_eq!(q.lent(), 3);
            let out = drain(&mut q, step);
            assert_eq!(out, b"abLLLLLMMMMMMMcdeNNNf", "read size {step}");
            assert!(q.is_empty());
            assert_eq!(q.lent(), 0);
            assert_eq!(pool.outstanding(), 0, "every lease went back");
        }
    }

    /// `front` lends one piece at a time; partial consumes keep the rest.
    #[test]
    fn front_lends_one_piece_and_partial_consumes_keep_the_rest() {
        let pool = TestPool::new(vec![b"LEASE".to_vec()]);
        let mut q = RecvQueue::new();
        q.push_copy(b"xy");
        q.push_lease(lease(&pool, 0));
        q.push_copy(b"z");
        assert_eq!(q.front(), b"xy");
        assert_eq!(q.consume(1), 0);
        assert_eq!(q.front(), b"y");
        assert_eq!(q.consume(1), 0);
        assert_eq!(q.front(), b"LEASE");
        assert_eq!(q.consume(2), 0);
        assert_eq!(q.front(), b"ASE");
        assert_eq!(pool.outstanding(), 1);
        assert_eq!(q.consume(3), 1, "the drained lease is dropped");
        assert_eq!(pool.outstanding(), 0);
        assert_eq!(q.front(), b"z");
        assert_eq!(q.len(), 1);
    }

    /// `take` drops every lease; `unlend` keeps the bytes but not the leases.
    #[test]
    fn take_and_unlend_release_every_lease() {
        let pool = TestPool::new(vec![b"1111".to_vec(), b"2222".to_vec()]);
        let mut q = RecvQueue::new();
        q.push_lease(lease(&pool, 0));
        q.push_copy(b"c");
        q.push_lease(lease(&pool, 1));
        q.consume(1);
        let (buf, len, lent) = q.take();
        assert!(buf.is_empty());
        assert_eq!((len, lent), (3 + 1 + 4, 2));
        assert_eq!(pool.outstanding(), 0);
        assert!(q.is_empty() && q.front().is_empty());

        q.push_copy(b"a");
        q.push_lease(lease(&pool, 0));
        q.push_copy(b"b");
        q.push_lease(lease(&pool, 1));
        q.consume(1);
        q.consume(2);
        assert_eq!(q.unlend(), 2);
        assert_eq!(pool.outstanding(), 0);
        assert_eq!(q.lent(), 0);
        assert_eq!(q.len(), 2 + 1 + 4);
        q.push_copy(b"!");
        assert_eq!(drain(&mut q, 3), b"11b2222!");
    }

    /// Dropping the stream's queue drops its leases.
    #[test]
    fn dropping_the_queue_releases_its_leases() {
        let pool = TestPool::new(vec![vec![0; 8]]);
        let mut q = RecvQueue::new();
        q.push_lease(lease(&pool, 0));
        q.push_lease(lease(&pool, 0));
        assert_eq!(pool.outstanding(), 2);
        drop(q);
        assert_eq!(pool.outstanding(), 0);
    }
}
