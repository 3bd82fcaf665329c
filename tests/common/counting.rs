//! A counting global allocator for the zero-allocation tests: it counts the
//! allocations made on one thread while that thread measures, so other tests
//! of the same binary, on other threads, do not disturb the count.
//!
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: counting::Counting = counting::Counting;`
//! and measures with [`start`] / [`stop`]. With `MUXADO_ALLOC_TRACE=1`,
//! [`first_trace`] holds a backtrace of the first counted allocation.

#![allow(dead_code)] // not every test binary uses every helper

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The allocator: the system one, counting on measuring threads.
pub struct Counting;

thread_local! {
    /// Allocations counted on this thread while `Some`.
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A backtrace of the first counted allocation, with `MUXADO_ALLOC_TRACE=1`.
static FIRST: Mutex<Option<String>> = Mutex::new(None);
/// `MUXADO_ALLOC_TRACE` is set (read by [`start`]: reading the environment
/// allocates, so the allocator must not).
static TRACE: AtomicBool = AtomicBool::new(false);

fn note() {
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
            if n == 0 && TRACE.load(Ordering::Relaxed) {
                // The backtrace allocates: not counted.
                c.set(None);
                let bt = std::backtrace::Backtrace::force_capture().to_string();
                *FIRST.lock().unwrap() = Some(bt);
                c.set(Some(1));
            }
        }
    });
}

// SAFETY: forwards to the system allocator; the counting touches only a
// const-initialized thread-local `Cell` (no allocation, no destructor), and
// the optional trace runs with counting off.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts counting this thread's allocations from zero, after checking that
/// the allocator really counts (so a test can't pass because nothing was
/// counted: this binary must install [`Counting`]).
pub fn start() {
    TRACE.store(
        std::env::var_os("MUXADO_ALLOC_TRACE").is_some(),
        Ordering::Relaxed,
    );
    COUNT.with(|c| c.set(Some(0)));
    drop(std::hint::black_box(Box::new([0u8; 64])));
    assert_eq!(
        COUNT.with(|c| c.get()),
        Some(1),
        "the counting allocator counts (is it this binary's global allocator?)"
    );
    COUNT.with(|c| c.set(Some(0)));
}

/// Stops counting and returns the count since [`start`].
pub fn stop() -> u64 {
    COUNT
        .with(|c| c.take())
        .expect("counting was started on this thread")
}

/// The backtrace of the first counted allocation, if tracing was on.
pub fn first_trace() -> Option<String> {
    FIRST.lock().unwrap().take()
}
