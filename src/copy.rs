//! Byte copies on the data path.
//!
//! glibc's `memcpy` switches to `rep movsb` for large copies. On the AMD EPYC
//! machines this project is measured on, `rep movsb` of a few hundred KiB runs
//! at about 1 GiB/s instead of 15–30 GiB/s when source and destination are
//! not equally aligned, and that is the normal case here: a DATA payload sits
//! 8 bytes after its frame header. Copying in pieces below glibc's `rep movsb`
//! threshold keeps every copy on its vector loop, at the cost of one call per
//! 2 KiB (see perf/README.md for the measurement).

use bytes::{BufMut, BytesMut};

/// Largest piece copied by one `memcpy` call.
const PIECE: usize = 2048;

/// Appends `src` to `dst`.
#[inline]
pub(crate) fn extend(dst: &mut BytesMut, src: &[u8]) {
    dst.reserve(src.len());
    put(dst, src);
}

/// Writes `src` into any `BufMut`.
#[inline]
pub(crate) fn put<B: BufMut + ?Sized>(dst: &mut B, src: &[u8]) {
    if src.len() <= PIECE {
        dst.put_slice(src);
    } else {
        for piece in src.chunks(PIECE) {
            dst.put_slice(piece);
        }
    }
}

/// Copies `src` into `dst`; the two must have the same length.
#[inline]
pub(crate) fn copy(dst: &mut [u8], src: &[u8]) {
    if src.len() <= PIECE {
        dst.copy_from_slice(src);
    } else {
        for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
            d.copy_from_slice(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_every_size_and_offset() {
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 5, 20_000 - 8] {
            for off in [0, 3, 8] {
                let s = &src[off..off + len.min(src.len() - off)];
                let mut out = BytesMut::from(&b"head"[..]);
                extend(&mut out, s);
                assert_eq!(&out[..4], b"head");
                assert_eq!(&out[4..], s);
                let mut dst = vec![0u8; s.len()];
                copy(&mut dst, s);
                assert_eq!(dst, s);
            }
        }
    }
}
