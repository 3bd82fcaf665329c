//! Memory budgets: what one session may hold, and a budget shared by every
//! session of the process.
//!
//! A session's memory is what a peer can make it hold: the bytes buffered in
//! its streams' receive buffers, the spare buffers it keeps for reuse, and a
//! fixed cost per stream (state, id table entry, handle). Flow control bounds
//! each stream, `max_streams` bounds their number, and the budgets bound the
//! sum, which with thousands of streams could otherwise reach gigabytes.
//!
//! Past a budget a session refuses new peer streams and asks its driver to
//! stop reading the transport ([`Session::wants_input`](super::Session::wants_input)),
//! so TCP's own flow control holds the peer back until the application drains
//! the streams. Data admitted by flow control is not dropped while the
//! application drains: a session may exceed its budget by what one call to
//! `handle_input` carries. Only a pause in which the application reads
//! nothing for
//! [`Config::max_pause`](super::Config::max_pause) ends with the session
//! reading on and resetting (RST FlowControlError) each stream whose DATA it
//! cannot hold, so that a peer's credit and overruns are still answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

/// What one stream costs beyond its buffered bytes: its state in the slab,
/// its id table entry and the driver's per-stream bookkeeping, rounded up.
pub const STREAM_COST: usize = 512;

/// The shared budget is charged in chunks this large, so that a session
/// touches the shared atomic once per this many bytes, not once per frame.
const CHUNK: usize = 64 * 1024;

/// What every session may hold whatever the shared budget says: a session
/// holding no more than its floor is never paused or refused streams by the
/// shared budget (only by its own limit). Without it, a few hostile sessions
/// that fill the shared budget would lock every other session out, a
/// well-behaved one included. The floor is this or 1/1024 of the shared
/// limit, whichever is smaller (256 KiB from a 256 MiB budget up), so the
/// shared budget can be exceeded by at most that much per session (and the
/// number of sessions is bounded by the descriptor limit).
pub const SESSION_FLOOR: usize = 256 * 1024;

/// Spare receive buffers a session keeps for reuse (so that steady traffic
/// allocates nothing while idle streams hold no large buffer), at most this
/// many and [`POOL_BYTES`] together. The count is high enough for a session
/// of a thousand streams trading mid-sized messages; the byte cap is what
/// bounds memory.
const POOL_BUFFERS: usize = 1024;

/// Most bytes of spare buffers a session keeps.
const POOL_BYTES: usize = 2 << 20;

/// A memory budget shared by many sessions, on any number of threads.
///
/// Sessions charge it in 64 KiB chunks as their buffers grow and give the
/// chunks back as they drain (and all of it when dropped). When it is used
/// up, every session charging it refuses new peer streams and pauses its
/// input, as when its own budget is exceeded. Cloning gives another handle
/// to the same budget.
///
/// ```
/// let budget = muxado::proto::MemoryBudget::new(512 << 20);
/// let config = muxado::Config::default().with_memory_budget(Some(budget.clone()));
/// assert_eq!(budget.used(), 0);
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            inner: Arc::new(Shared {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes charged by sessions now (a multiple of the 64 KiB chunk).
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit under the limit.
    fn try_charge(&self, n: usize) -> bool {
        let limit = self.inner.limit;
        self.inner
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Would `n` more bytes fit now?
    fn has_room(&self, n: usize) -> bool {
        self.used().saturating_add(n) <= self.inner.limit
    }

    /// Takes `n` bytes even past the limit (a session within its floor).
    fn charge(&self, n: usize) {
        self.inner.used.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: usize) {
        self.inner.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Two handles are equal when they share one budget.
impl PartialEq for MemoryBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for MemoryBudget {}

/// One session's accounting against its own limit and the shared budget.
#[derive(Debug)]
pub(crate) struct SessionMemory {
    limit: usize,
    /// Bytes in stream receive buffers, not yet read.
    buffered: usize,
    /// Spare buffers (empty, with capacity) for streams that receive next.
    pool: Vec<BytesMut>,
    pool_bytes: usize,
    global: Option<MemoryBudget>,
    /// Charged to `global`, in whole chunks.
    reserved: usize,
    /// The shared budget refused the last chunk asked for.
    global_full: bool,
}

impl SessionMemory {
    pub(crate) fn new(limit: usize, global: Option<MemoryBudget>) -> Self {
        SessionMemory {
            limit,
            buffered: 0,
            pool: Vec::new(),
            pool_bytes: 0,
            global,
            reserved: 0,
            global_full: false,
        }
    }

    /// What this session may hold past a full shared budget (see
    /// [`SESSION_FLOOR`]).
    fn floor(&self) -> usize {
        self.global
            .as_ref()
            .map_or(0, |g| (g.limit() / 1024).min(SESSION_FLOOR))
    }

    /// What the session holds with `streams` streams alive.
    #[inline]
    pub(crate) fn held(&self, streams: usize) -> usize {
        self.buffered + self.pool_bytes + streams * STREAM_COST
    }

    /// Bytes buffered in streams, not yet read.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// True while the session holds more than a budget lets it.
    #[inline]
    pub(crate) fn over(&self, streams: usize) -> bool {
        self.global_full || self.held(streams) > self.limit
    }

    /// True while the shared budget refused this session a chunk; cleared
    /// by [`SessionMemory::settle`] once it has room again.
    pub(crate) fn global_full(&self) -> bool {
        self.global_full
    }

    /// Would one more stream fit, in this session's budget and the shared one?
    /// The spare buffers do not count: they are a cache, dropped as soon as
    /// the session needs the room (see [`SessionMemory::settle`]). Counted,
    /// a pool that grew to a small budget refused every new stream of a
    /// session that held nothing else.
    pub(crate) fn admits_stream(&self, streams: usize) -> bool {
        let held = self.held(streams + 1) - self.pool_bytes;
        if self.global_full || held > self.limit {
            return false;
        }
        match &self.global {
            Some(global) if held > self.reserved => held <= self.floor() || global.has_room(CHUNK),
            _ => true,
        }
    }

    pub(crate) fn add_buffered(&mut self, n: usize) {
        self.buffered += n;
    }

    pub(crate) fn sub_buffered(&mut self, n: usize) {
        self.buffered -= n;
    }

    /// A buffer for a stream that starts receiving: a spare one if any.
    pub(crate) fn take_buffer(&mut self) -> BytesMut {
        match self.pool.pop() {
            Some(buf) => {
                self.pool_bytes -= buf.capacity();
                buf
            }
            None => BytesMut::new(),
        }
    }

    /// Takes back a drained stream buffer: kept for reuse while the pool has
    /// room (and the session is within its budget), else freed.
    pub(crate) fn give_buffer(&mut self, mut buf: BytesMut, streams: usize) {
        debug_assert!(buf.is_empty());
        // Reclaim the space before the read position (never allocates;
        // false when there was none to reclaim).
        buf.clear();
        let _ = buf.try_reclaim(buf.capacity() + 1);
        let cap = buf.capacity();
        if cap == 0 || self.pool.len() >= POOL_BUFFERS || self.pool_bytes + cap > POOL_BYTES {
            return;
        }
        if self.held(streams) + cap > self.limit || self.global_full {
            return;
        }
        self.pool_bytes += cap;
        self.pool.push(buf);
    }

    /// Brings the shared budget's charge in line with what is held, in
    /// chunks, with a chunk of slack each way so that a session hovering at a
    /// chunk boundary does not touch the atomic on every frame. Past a budget
    /// the spare buffers go first.
    #[inline]
    pub(crate) fn settle(&mut self, streams: usize) {
        // The common case, called after every read and every input: no
        // shared budget, and within the session's own.
        if self.global.is_none() && self.held(streams) <= self.limit {
            return;
        }
        self.settle_slow(streams);
    }

    #[cold]
    fn settle_slow(&mut self, streams: usize) {
        if self.held(streams) > self.limit && !self.pool.is_empty() {
            self.drop_pool();
        }
        let floor = self.floor();
        let Some(global) = &self.global else { return };
        let held = self.held(streams);
        if held > self.reserved {
            while held > self.reserved {
                if held <= floor {
                    global.charge(CHUNK);
                } else if !global.try_charge(CHUNK) {
                    if !self.pool.is_empty() {
                        self.drop_pool();
                        return self.settle_slow(streams);
                    }
                    self.global_full = true;
                    return;
                }
                self.reserved += CHUNK;
            }
            self.global_full = false;
        } else if held + 2 * CHUNK <= self.reserved {
            while held + CHUNK < self.reserved {
                global.release(CHUNK);
                self.reserved -= CHUNK;
            }
            self.global_full = false;
        } else if self.global_full && held <= self.reserved {
            self.global_full = false;
        }
    }

    /// Frees the spare buffers (the session has no stream left to use them).
    pub(crate) fn drop_pool(&mut self) {
        self.pool.clear();
        self.pool_bytes = 0;
    }

    /// Bytes charged to the shared budget by this session.
    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        self.reserved
    }
}

impl Drop for SessionMemory {
    fn drop(&mut self) {
        if let Some(global) = &self.global {
            global.release(self.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_budget_is_charged_in_chunks_and_refuses_past_its_limit() {
        let budget = MemoryBudget::new(3 * CHUNK);
        let mut a = SessionMemory::new(usize::MAX, Some(budget.clone()));
        let mut b = SessionMemory::new(usize::MAX, Some(budget.clone()));
        a.add_buffered(CHUNK + 1);
        a.settle(0);
        assert_eq!((a.reserved(), budget.used()), (2 * CHUNK, 2 * CHUNK));
        assert!(!a.over(0));
        b.add_buffered(2 * CHUNK);
        b.settle(0);
        assert!(b.over(0), "the shared budget is used up");
        assert!(!b.admits_stream(0));
        assert_eq!(budget.used(), 3 * CHUNK, "never charged past the limit");
        a.sub_buffered(CHUNK + 1);
        a.settle(0);
        assert_eq!(a.reserved(), CHUNK, "one chunk of slack is kept");
        b.settle(0);
        assert!(!b.over(0), "room again once another session drained");
        drop(b);
        drop(a);
        assert_eq!(budget.used(), 0, "everything is given back on drop");
    }

    /// A session within its floor is served even when others used the
    /// shared budget up: hostile sessions cannot lock a small one out.
    #[test]
    fn a_small_session_is_not_locked_out_by_a_full_budget() {
        let budget = MemoryBudget::new(256 << 20);
        let mut hog = SessionMemory::new(usize::MAX, Some(budget.clone()));
        hog.add_buffered(budget.limit() + CHUNK);
        hog.settle(0);
        assert!(hog.over(0) && !hog.admits_stream(0));
        let mut small = SessionMemory::new(usize::MAX, Some(budget.clone()));
        assert!(small.admits_stream(0));
        small.add_buffered(4096);
        small.settle(1);
        assert!(!small.over(1), "a small session reads on");
        small.add_buffered(SESSION_FLOOR);
        small.settle(1);
        assert!(small.over(1), "past its floor the full budget applies");
        drop((hog, small));
        assert_eq!(budget.used(), 0);

        // A small budget has a small floor: 1/1024 of it.
        let tiny = MemoryBudget::new(4 * CHUNK);
        let mut hog = SessionMemory::new(usize::MAX, Some(tiny.clone()));
        hog.add_buffered(8 * CHUNK);
        hog.settle(0);
        let small = SessionMemory::new(usize::MAX, Some(tiny.clone()));
        assert!(!small.admits_stream(0), "STREAM_COST is over a 256 B floor");
    }

    #[test]
    fn small_changes_near_a_chunk_boundary_do_not_touch_the_budget() {
        let budget = MemoryBudget::new(usize::MAX);
        let mut m = SessionMemory::new(usize::MAX, Some(budget.clone()));
        m.add_buffered(CHUNK);
        m.settle(0);
        let charged = budget.used();
        for _ in 0..100 {
            m.add_buffered(1);
            m.settle(0);
            m.sub_buffered(1);
            m.settle(0);
        }
        assert!(budget.used() == charged || budget.used() == charged + CHUNK);
    }

    /// Spare buffers up to the budget do not refuse new streams.
    #[test]
    fn spare_buffers_do_not_refuse_streams() {
        let mut m = SessionMemory::new(64 * 1024, None);
        for _ in 0..8 {
            let mut b = BytesMut::with_capacity(8 * 1024);
            b.extend_from_slice(&[1; 10]);
            bytes::Buf::advance(&mut b, 10);
            m.give_buffer(b, 1);
        }
        assert!(
            m.pool_bytes + STREAM_COST > 48 * 1024,
            "the pool fills the budget"
        );
        assert!(m.admits_stream(1), "a cache must not refuse a stream");
        m.add_buffered(64 * 1024);
        assert!(!m.admits_stream(1), "buffered data does");
    }

    #[test]
    fn the_pool_is_bounded_and_dropped_first_under_pressure() {
        let mut m = SessionMemory::new(1 << 20, None);
        for _ in 0..POOL_BUFFERS + 4 {
            let mut b = BytesMut::with_capacity(1024);
            b.extend_from_slice(&[1; 10]);
            bytes::Buf::advance(&mut b, 10);
            m.give_buffer(b, 0);
        }
        assert_eq!(m.pool.len(), POOL_BUFFERS);
        assert!(m.pool_bytes >= POOL_BUFFERS * 1024);
        m.add_buffered(1 << 20);
        m.settle(0);
        assert_eq!((m.pool.len(), m.pool_bytes), (0, 0));
    }
}
