//! The per-core provided-buffer ring (`IORING_REGISTER_PBUF_RING`) that multishot receives fill.
//!
//! The pool is one page-aligned block of `count` buffers of `size` bytes plus the ring of
//! `io_uring_buf` entries the kernel takes buffers from. A buffer the kernel filled is handed to
//! the consumer as a [`RecvBuf`](super::net::RecvBuf) guard; dropping the guard writes the buffer
//! back into the ring at once. The pool is reference counted, so a guard that outlives its core
//! still points at live memory (after the ring is gone the kernel never writes there again).
//!
//! A guard can also lend pieces of its buffer as [`Lease`]s, which the protocol keeps in a
//! stream's receive queue instead of copying them. Leases must be `Send` (the protocol is shared
//! with the tokio driver), so the memory and the per-buffer reference counts live apart from the
//! ring, in [`SlotMem`] (an `Arc`, atomics). A buffer whose last reference is a lease goes back
//! through a return bitmap, which the core drains into the ring ([`BufPool::reclaim`]) once per
//! loop turn and whenever a receive finds the ring dry: only the core writes the ring's tail.
//! The core lends at most a quarter of its buffers at once; past that, payloads are copied.

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use crate::lease::{Lease, LeasePool};

const PAGE: usize = 4096;

/// A provided-buffer ring and the memory of its buffers.
pub(crate) struct BufPool {
    bgid: u16,
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    mem: Arc<SlotMem>,
    count: u16,
    size: usize,
    /// Our copy of the ring tail (the kernel reads the published one).
    tail: Cell<u16>,
    /// Buffers the kernel has filled and not yet returned to the ring.
    outstanding: Cell<usize>,
    /// Debug builds: which buffers user space holds (taken by a CQE, not yet given back). A
    /// buffer recycled twice would sit in the ring twice and could be filled by two receives
    /// at once: silent corruption or loss, so it is caught where it happens instead.
    #[cfg(debug_assertions)]
    held: RefCell<Vec<bool>>,
    /// Receivers waiting for a buffer after the ring ran dry (ENOBUFS).
    waiters: RefCell<Vec<Waker>>,
    /// Buffers with leases out (lent by a guard, not yet back in the ring).
    lent: Cell<usize>,
}

/// The buffers' memory and their reference counts, shared with the leases (which may be dropped
/// on any thread, and after the core is gone).
pub(crate) struct SlotMem {
    mem: *mut u8,
    layout: Layout,
    size: usize,
    /// References per buffer while user space holds it: its guard and its leases.
    refs: Box<[AtomicU32]>,
    /// Buffers whose last reference was a lease: to go back into the ring (one bit each).
    returned: Box<[AtomicU64]>,
    /// Some bit of `returned` may be set.
    any_returned: AtomicBool,
}

// SAFETY: `mem` is a plain heap block owned by this struct; who may touch which buffer is governed
// by `refs` (atomics): a buffer is read through leases only while it holds references, and it goes
// back to the kernel only after the last one is released (Release/Acquire ordered), so no data
// race on the memory is possible from any thread. Everything else is atomics.
unsafe impl Send for SlotMem {}
// SAFETY: as above.
unsafe impl Sync for SlotMem {}

// SAFETY: a buffer is recycled into the ring (the only way the kernel can write it again) only
// once its references reach zero, and the memory lives as long as this struct, which every lease
// keeps alive through its `Arc`.
unsafe impl LeasePool for SlotMem {
    unsafe fn bytes(&self, slot: u32, off: u32, len: u32) -> &[u8] {
        debug_assert!(off as usize + len as usize <= self.size);
        debug_assert!(self.refs[slot as usize].load(Ordering::Relaxed) > 0);
        // SAFETY: the caller holds a reference on `slot`, so the kernel does not own it and
        // nobody writes to it; `slot < count` (it was handed out) and `off + len <= size`, so the
        // range lies inside `mem`, which lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(
                self.mem.add(slot as usize * self.size + off as usize),
                len as usize,
            )
        }
    }

    fn retain(&self, slot: u32) {
        self.refs[slot as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn release(&self, slot: u32) {
        if self.refs[slot as usize].fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every read through other references happens before the buffer goes back.
        fence(Ordering::Acquire);
        self.returned[slot as usize / 64].fetch_or(1 << (slot % 64), Ordering::Release);
        self.any_returned.store(true, Ordering::Release);
    }
}

impl Drop for SlotMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `BufPool::new` with this layout; the last reference (the pool's and
        // every lease's) is gone and the ring that could write it is closed (the driver drops its
        // pool after the ring, or leaks both).
        unsafe { alloc::dealloc(self.mem, self.layout) };
    }
}

impl BufPool {
    /// Allocates `count` buffers of `size` bytes and registers them as buffer group `bgid`.
    pub(crate) fn new(
        submitter: &Submitter<'_>,
        bgid: u16,
        count: u16,
        size: usize,
    ) -> io::Result<BufPool> {
        if !count.is_power_of_two() || count == 0 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two and size in 1..=u32::MAX",
            ));
        }
        let entries_layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), PAGE)
                .map_err(io::Error::other)?;
        let mem_layout =
            Layout::from_size_align(count as usize * size, PAGE).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count > 0, size > 0).
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) } as *mut BufRingEntry;
        // SAFETY: as above.
        let mem = unsafe { alloc::alloc(mem_layout) };
        if entries.is_null() || mem.is_null() {
            alloc::handle_alloc_error(mem_layout);
        }
        let mem = Arc::new(SlotMem {
            mem,
            layout: mem_layout,
            size,
            refs: (0..count).map(|_| AtomicU32::new(0)).collect(),
            returned: (0..(count as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            any_returned: AtomicBool::new(false),
        });
        let pool = BufPool {
            bgid,
            entries,
            entries_layout,
            mem,
            count,
            size,
            tail: Cell::new(0),
            outstanding: Cell::new(count as usize),
            #[cfg(debug_assertions)]
            held: RefCell::new(vec![true; count as usize]),
            waiters: RefCell::new(Vec::new()),
            lent: Cell::new(0),
        };
        // SAFETY: `entries` is a page-aligned allocation of `count` entries that lives as long as
        // the pool; the pool outlives the registration (the driver unregisters it, or drops the
        // ring, before dropping its reference, and guards only touch the memory, never the ring).
        unsafe { submitter.register_buf_ring_with_flags(entries as u64, count, bgid, 0)? };
        for bid in 0..count {
            // SAFETY: the kernel has no buffer yet; each `bid < count` is added once.
            unsafe { pool.recycle(bid) };
        }
        Ok(pool)
    }

    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Notes that the kernel handed one buffer to user space (a CQE carried it).
    pub(crate) fn note_taken(&self, bid: u16) {
        #[cfg(debug_assertions)]
        {
            let mut held = self.held.borrow_mut();
            assert!(
                !held[bid as usize],
                "provided buffer {bid} handed out twice without being given back"
            );
            held[bid as usize] = true;
        }
        #[cfg(not(debug_assertions))]
        let _ = bid;
        self.outstanding.set(self.outstanding.get() + 1);
    }

    /// Number of buffers in the pool.
    pub(crate) fn count(&self) -> usize {
        self.count as usize
    }

    /// Buffers currently available to the kernel.
    pub(crate) fn available(&self) -> usize {
        self.count as usize - self.outstanding.get()
    }

    /// Registers a waker to be called when a buffer comes back.
    pub(crate) fn wait_for_buffer(&self, waker: &Waker) {
        self.waiters.borrow_mut().push(waker.clone());
    }

    /// Returns buffer `bid` to the kernel.
    ///
    /// # Safety
    ///
    /// The caller must own buffer `bid` (a CQE handed it out and it was not given back since),
    /// and must not read it afterwards: the kernel may write into it at once.
    pub(crate) unsafe fn recycle(&self, bid: u16) {
        debug_assert!(bid < self.count);
        debug_assert_eq!(self.mem.refs[bid as usize].load(Ordering::Relaxed), 0);
        #[cfg(debug_assertions)]
        {
            let mut held = self.held.borrow_mut();
            assert!(
                held[bid as usize],
                "provided buffer {bid} given back twice (or never taken)"
            );
            held[bid as usize] = false;
        }
        let tail = self.tail.get();
        let idx = (tail & (self.count - 1)) as usize;
        // SAFETY: `idx < count`, so the entry is inside the ring allocation; the kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(idx) };
        // SAFETY: `bid < count`, so the buffer lies inside `mem`.
        entry.set_addr(unsafe { self.mem.mem.add(bid as usize * self.size) } as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field overlays the first entry's reserved word, inside the allocation;
        // it is an aligned u16 that the kernel reads concurrently, hence the atomic release store
        // which also publishes the entry written above.
        unsafe {
            let tail_ptr = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail_ptr).store(tail, Ordering::Release);
        }
        self.outstanding
            .set(self.outstanding.get().saturating_sub(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    ///
    /// The buffer must be owned by the caller: the kernel filled it (a CQE named it) and it has
    /// not been recycled yet, so nobody writes to it while the slice lives.
    pub(crate) unsafe fn slice(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < self.count && len <= self.size);
        // SAFETY: `bid < count` and `len <= size`, so the range lies inside `mem`, which lives as
        // long as `self`; the caller promises nobody writes to it meanwhile.
        unsafe { std::slice::from_raw_parts(self.mem.mem.add(bid as usize * self.size), len) }
    }

    /// [`BufPool::slice`], writable: TLS decrypts records where the kernel put them.
    ///
    /// # Safety
    ///
    /// As for [`BufPool::slice`], and more: the caller's guard is the only reference to buffer
    /// `bid` (it lent no piece of it), so nothing else reads or writes it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, bid: u16, len: usize) -> &mut [u8] {
        debug_assert!(bid < self.count && len <= self.size);
        // SAFETY: the range lies inside `mem`, which lives as long as `self` (as in `slice`);
        // the caller promises that its guard holds the only reference to the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.mem.mem.add(bid as usize * self.size), len) }
    }

    /// A guard takes buffer `bid`, which a CQE handed out: its first reference.
    pub(crate) fn hold(&self, bid: u16) {
        let refs = &self.mem.refs[bid as usize];
        debug_assert_eq!(refs.load(Ordering::Relaxed), 0, "buffer {bid} held twice");
        // A plain store, not a read-modify-write: nobody else can reference a buffer that the
        // kernel just handed out (this runs for every chunk, lent or not).
        refs.store(1, Ordering::Relaxed);
    }

    /// Most buffers lent at once: a quarter of the pool, so that with the multishot's own bound
    /// (half the pool queued) the kernel always keeps buffers to receive into, and a reader that
    /// never reads cannot pin the ring.
    fn lend_cap(&self) -> usize {
        (self.count as usize / 4).max(1)
    }

    /// Buffers with leases out now.
    #[cfg(test)]
    pub(crate) fn lent(&self) -> usize {
        self.lent.get()
    }

    /// A lease on `len` bytes of buffer `bid` from `off`, whose guard is the caller; `lent` is the
    /// guard's flag saying it has lent already (a buffer counts once against the cap). `None` when
    /// the core has lent its share.
    ///
    /// # Safety
    ///
    /// The caller is the guard of `bid`: it holds a reference on it; `off + len <= size`.
    pub(crate) unsafe fn lend(
        &self,
        bid: u16,
        off: usize,
        len: usize,
        lent: &Cell<bool>,
    ) -> Option<Lease> {
        debug_assert!(off + len <= self.size);
        if !lent.get() {
            if self.lent.get() >= self.lend_cap() {
                return None;
            }
            self.lent.set(self.lent.get() + 1);
            lent.set(true);
        }
        self.mem.retain(u32::from(bid));
        let pool: Arc<dyn LeasePool> = self.mem.clone();
        // SAFETY: the reference just taken goes to the lease; the range is within the buffer.
        Some(unsafe { Lease::new(pool, u32::from(bid), off as u32, len as u32) })
    }

    /// The guard of buffer `bid` is done with it (`lent`: it lent pieces). Back into the ring at
    /// once if no lease holds it; else the last lease returns it (see [`BufPool::reclaim`]).
    ///
    /// # Safety
    ///
    /// The caller is the guard of `bid` and does not read it afterwards.
    pub(crate) unsafe fn unhold(&self, bid: u16, lent: bool) {
        let refs = &self.mem.refs[bid as usize];
        if !lent {
            // Leases are only made by the guard, which then says so: the guard's is the only
            // reference, and no locked instruction is needed (the common, copying case).
            debug_assert_eq!(refs.load(Ordering::Relaxed), 1);
            refs.store(0, Ordering::Relaxed);
        } else {
            if refs.fetch_sub(1, Ordering::Release) != 1 {
                return;
            }
            fence(Ordering::Acquire);
            self.lent.set(self.lent.get() - 1);
        }
        // SAFETY: the last reference is gone: nobody reads the buffer any more.
        unsafe { self.recycle(bid) };
    }

    /// Puts the buffers whose last lease was dropped back into the ring. Cheap when there is none
    /// (one atomic load): the core calls it every loop turn.
    pub(crate) fn reclaim(&self) {
        if !self.mem.any_returned.load(Ordering::Relaxed)
            || !self.mem.any_returned.swap(false, Ordering::Acquire)
        {
            return;
        }
        for (w, word) in self.mem.returned.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::Acquire);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.lent.set(self.lent.get() - 1);
                // SAFETY: the bit was set by the release of the buffer's last reference (a lease),
                // which also took the buffer out of its guard's hands: nobody reads it any more,
                // and the bit is cleared here, so it goes back once.
                unsafe { self.recycle((w * 64 + bit) as u16) };
            }
        }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, and the last reference is gone: the ring
        // that reads it is closed (the buffers' memory is `SlotMem`'s, freed with its last lease).
        unsafe { alloc::dealloc(self.entries as *mut u8, self.entries_layout) };
    }
}
