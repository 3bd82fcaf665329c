//! Leases: received bytes lent out of the engine's provided-buffer ring without a copy.
//!
//! The engine's multishot receive fills buffers ("slots") of a per-core ring. The protocol, which
//! is sans-IO and must stay `Send` (the tokio driver moves sessions between threads), keeps a large
//! DATA payload as a [`Lease`] on the slot it arrived in instead of copying it into the stream's
//! buffer. A lease is a counted reference on its slot: the slot goes back to the ring only when
//! the last reference is gone.
//!
//! This module sits below both `proto` and `engine`, so that neither imports the other: the
//! protocol sees only the [`LeasePool`] trait and a [`Lender`], the engine implements them.
//! Taking and dropping a lease allocates nothing: an `Arc` clone and an atomic count.

use std::fmt;
use std::sync::Arc;

/// Memory whose slots can be leased: the engine's provided-buffer ring.
///
/// # Safety
///
/// An implementation must keep a slot's bytes valid and unwritten while any reference on it is
/// held (from [`Lender::lend`]'s hand-over or [`LeasePool::retain`] until the matching
/// [`LeasePool::release`]), on any thread, for as long as the pool itself lives.
pub(crate) unsafe trait LeasePool: Send + Sync {
    /// The bytes of `slot` from `off`, `len` long.
    ///
    /// # Safety
    ///
    /// The caller holds a reference on `slot`, and `off + len` is within the slot.
    unsafe fn bytes(&self, slot: u32, off: u32, len: u32) -> &[u8];

    /// Takes one more reference on `slot`, on which the caller already holds one.
    fn retain(&self, slot: u32);

    /// Gives back one reference on `slot`; the last one returns the slot to its ring (later, on
    /// the core that owns the ring: this may be called from any thread).
    fn release(&self, slot: u32);
}

/// Received bytes that stay in the ring slot they arrived in.
///
/// Dropping the lease releases its reference on the slot.
pub(crate) struct Lease {
    pool: Arc<dyn LeasePool>,
    slot: u32,
    off: u32,
    len: u32,
}

impl Lease {
    /// A lease on `len` bytes of `slot` from `off`.
    ///
    /// # Safety
    ///
    /// The caller hands one reference on `slot` (already counted by `pool`) over to the lease,
    /// and `off + len` is within the slot.
    pub(crate) unsafe fn new(pool: Arc<dyn LeasePool>, slot: u32, off: u32, len: u32) -> Lease {
        Lease {
            pool,
            slot,
            off,
            len,
        }
    }

    /// The leased bytes not yet consumed.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: this lease holds a reference on its slot (given in `new` or taken in `clone`),
        // and `off + len` stays within the slot (`advance` only shrinks the range).
        unsafe { self.pool.bytes(self.slot, self.off, self.len) }
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Drops the first `n` bytes (at most all of them).
    pub(crate) fn advance(&mut self, n: usize) {
        let n = n.min(self.len as usize) as u32;
        self.off += n;
        self.len -= n;
    }
}

impl Clone for Lease {
    fn clone(&self) -> Lease {
        self.pool.retain(self.slot);
        Lease {
            pool: self.pool.clone(),
            slot: self.slot,
            off: self.off,
            len: self.len,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.slot);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("slot", &self.slot)
            .field("off", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

/// A received chunk that can lend pieces of itself (the engine's ring buffers can; TLS plaintext
/// and owned buffers cannot).
pub(crate) trait Lender {
    /// A lease on `len` bytes of the chunk from `off`, or `None` when this chunk cannot be lent
    /// or its pool has lent as much as it may (the caller copies instead).
    fn lend(&self, off: usize, len: usize) -> Option<Lease>;
}

/// A heap-backed pool for tests: counts the references on each slot.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::{Lease, LeasePool, Lender};

    pub(crate) struct TestPool {
        slots: Vec<Box<[u8]>>,
        refs: Vec<AtomicU32>,
    }

    // SAFETY: the slots are never written after `new`, and freed only with the pool.
    unsafe impl LeasePool for TestPool {
        unsafe fn bytes(&self, slot: u32, off: u32, len: u32) -> &[u8] {
            assert!(self.refs[slot as usize].load(Ordering::Relaxed) > 0);
            &self.slots[slot as usize][off as usize..(off + len) as usize]
        }
        fn retain(&self, slot: u32) {
            self.refs[slot as usize].fetch_add(1, Ordering::Relaxed);
        }
        fn release(&self, slot: u32) {
            let before = self.refs[slot as usize].fetch_sub(1, Ordering::Relaxed);
            assert!(before > 0, "slot {slot} released more often than taken");
        }
    }

    impl TestPool {
        /// A pool whose slots hold `contents`.
        pub(crate) fn new(contents: Vec<Vec<u8>>) -> Arc<TestPool> {
            Arc::new(TestPool {
                refs: contents.iter().map(|_| AtomicU32::new(0)).collect(),
                slots: contents.into_iter().map(Vec::into_boxed_slice).collect(),
            })
        }

        /// The bytes of `slot`.
        pub(crate) fn slot(&self, slot: u32) -> &[u8] {
            &self.slots[slot as usize]
        }

        /// References held on all slots together.
        pub(crate) fn outstanding(&self) -> u32 {
            self.refs.iter().map(|r| r.load(Ordering::Relaxed)).sum()
        }
    }

    /// Lends pieces of one slot of a [`TestPool`] (as a ring chunk lends pieces of its buffer).
    pub(crate) struct TestChunk {
        pub(crate) pool: Arc<TestPool>,
        pub(crate) slot: u32,
        /// Lend nothing (a pool at its cap).
        pub(crate) refuse: bool,
    }

    impl Lender for TestChunk {
        fn lend(&self, off: usize, len: usize) -> Option<Lease> {
            if self.refuse {
                return None;
            }
            assert!(off + len <= self.pool.slots[self.slot as usize].len());
            self.pool.retain(self.slot);
            let pool: Arc<dyn LeasePool> = self.pool.clone();
            // SAFETY: the reference was just taken for this lease; the range is checked above.
            Some(unsafe { Lease::new(pool, self.slot, off as u32, len as u32) })
        }
    }

    /// A test lease of the whole of `slot`.
    pub(crate) fn lease(pool: &Arc<TestPool>, slot: u32) -> Lease {
        let len = pool.slots[slot as usize].len();
        TestChunk {
            pool: pool.clone(),
            slot,
            refuse: false,
        }
        .lend(0, len)
        .expect("lends")
    }
}
