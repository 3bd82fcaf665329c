//! Owned buffers: what an operation may hand the kernel, because the bytes do not move when
//! the value moves.

/// A buffer whose bytes stay at the same address while the value moves (heap storage), so that
/// the kernel may read from it while an operation owns it.
///
/// # Safety
///
/// `stable_ptr()` must point to `bytes_init()` initialized bytes that remain valid and unmoved
/// while the value is moved, until it is dropped or mutated.
pub unsafe trait IoBuf: Unpin + 'static {
    /// Address of the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialized bytes (what a send transmits).
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel can write into: the bytes between `bytes_init()` and `bytes_total()`.
///
/// # Safety
///
/// As for [`IoBuf`], for `bytes_total()` bytes from `stable_mut_ptr()`; `set_init(n)` must make
/// the first `n` bytes the buffer's contents.
pub unsafe trait IoBufMut: IoBuf {
    /// Address of the first byte, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Capacity in bytes.
    fn bytes_total(&self) -> usize;
    /// Marks the first `n` bytes as initialized.
    ///
    /// # Safety
    ///
    /// The first `n` bytes must have been written.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's elements live on the heap and do not move when the Vec moves.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for `IoBuf for Vec<u8>`; `set_len` is only called with written lengths.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller wrote the first `n` bytes, and `n` is within the capacity the
            // kernel was given.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: `BytesMut` keeps its bytes on the heap (a Vec or a shared block); moving it does not
// move them.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; `set_len` is only called with written lengths.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller wrote the first `n` bytes, and `n` is within the capacity the
            // kernel was given.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: `Bytes` points at static or heap memory that does not move with the handle.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: a boxed slice lives on the heap.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}
