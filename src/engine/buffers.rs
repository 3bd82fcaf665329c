//! The per-core provided-buffer ring (`IORING_REGISTER_PBUF_RING`) that multishot receives fill.
//!
//! The pool is one page-aligned block of `count` buffers of `size` bytes plus the ring of
//! `io_uring_buf` entries the kernel takes buffers from. A buffer the kernel filled is handed to
//! the consumer as a [`RecvBuf`](super::net::RecvBuf) guard; dropping the guard writes the buffer
//! back into the ring at once. The pool is reference counted, so a guard that outlives its core
//! still points at live memory (after the ring is gone the kernel never writes there again).

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Waker;

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

const PAGE: usize = 4096;

/// A provided-buffer ring and the memory of its buffers.
pub(crate) struct BufPool {
    bgid: u16,
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    mem: *mut u8,
    mem_layout: Layout,
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
        let pool = BufPool {
            bgid,
            entries,
            entries_layout,
            mem,
            mem_layout,
            count,
            size,
            tail: Cell::new(0),
            outstanding: Cell::new(count as usize),
            #[cfg(debug_assertions)]
            held: RefCell::new(vec![true; count as usize]),
            waiters: RefCell::new(Vec::new()),
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
        entry.set_addr(unsafe { self.mem.add(bid as usize * self.size) } as u64);
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
        unsafe { std::slice::from_raw_parts(self.mem.add(bid as usize * self.size), len) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: both blocks were allocated in `new` with these layouts, and the last reference
        // is gone: no guard reads them and the ring that could write them is closed.
        unsafe {
            alloc::dealloc(self.entries as *mut u8, self.entries_layout);
            alloc::dealloc(self.mem, self.mem_layout);
        }
    }
}
