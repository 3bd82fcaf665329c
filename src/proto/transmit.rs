//! What a session hands its driver to send: frame bytes in one buffer, with
//! the payloads of large [`Session::write_bytes`](super::Session::write_bytes)
//! calls kept out of it, by reference, at the offsets where they belong.
//!
//! A driver that can send vectored (`sendmsg` with iovecs, `write_vectored`)
//! sends the pieces in order ([`Transmit::chunks`]) and the payloads are never
//! copied in user space; one that cannot sends them one by one. Both the
//! buffer and the list of parts keep their capacity across transmissions (the
//! session and the driver trade them), so steady state allocates nothing.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

/// Payloads at least this long are queued by reference by
/// [`Session::write_bytes`](super::Session::write_bytes); shorter ones are
/// copied into the frame buffer like [`Session::write`](super::Session::write).
///
/// A part costs an iovec (an entry the kernel walks and checks), two atomic
/// reference-count updates of the `Bytes`, and a list entry; copying a
/// payload costs a `memcpy` of bytes that are usually in cache. Below about
/// a page the copy is as cheap as the bookkeeping and keeps the frame
/// contiguous (one iovec for many small frames); from a page up the copy is
/// what costs, and at 16 KiB (a usual write) it is most of the sender's
/// user-space work.
pub const ZERO_COPY_MIN: usize = 4096;

/// One transmission: the frame bytes and, between them, the payloads queued by
/// reference. Filled by
/// [`Session::poll_transmit_vectored`](super::Session::poll_transmit_vectored);
/// keep one and pass it again, so that its buffers are reused.
#[derive(Debug, Default)]
pub struct Transmit {
    pub(super) buf: BytesMut,
    /// `(offset, payload)`: the payload goes after `buf[..offset]`; offsets
    /// never decrease.
    pub(super) parts: Vec<(usize, Bytes)>,
    pub(super) parts_len: usize,
}

impl Transmit {
    /// An empty transmission (allocates nothing until filled).
    pub fn new() -> Transmit {
        Transmit::default()
    }

    /// Bytes to send in all.
    pub fn len(&self) -> usize {
        self.buf.len() + self.parts_len
    }

    /// True if there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if payloads are held by reference (else everything is in
    /// [`Transmit::flat`]).
    pub fn has_parts(&self) -> bool {
        !self.parts.is_empty()
    }

    /// The frame bytes: the whole transmission when there are no parts.
    pub fn flat(&self) -> &BytesMut {
        &self.buf
    }

    /// Takes the frame buffer out (the transmission keeps an empty one), for a
    /// sender that owns a single buffer while it sends; give it back with
    /// [`Transmit::put_flat`]. Only for a transmission without parts (whose
    /// offsets point into the buffer): the caller checks.
    pub(crate) fn take_flat(&mut self) -> BytesMut {
        debug_assert!(self.parts.is_empty());
        std::mem::take(&mut self.buf)
    }

    /// Gives back the buffer [`Transmit::take_flat`] took (its contents are
    /// kept; its capacity is reused by the next transmission).
    pub(crate) fn put_flat(&mut self, buf: BytesMut) {
        debug_assert!(self.parts.is_empty());
        self.buf = buf;
    }

    /// How many pieces [`Transmit::chunks`] yields at most (one per part and
    /// one per run of frame bytes around them), e.g. to size an iovec array.
    pub fn max_chunks(&self) -> usize {
        2 * self.parts.len() + 1
    }

    /// The bytes to send, in order, as non-empty slices.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks {
            t: self,
            next_part: 0,
            at: 0,
            part_pending: false,
        }
    }

    /// The rest of the piece that holds byte `offset` (empty at the end):
    /// for a sender that writes one slice at a time.
    pub fn chunk_at(&self, offset: usize) -> &[u8] {
        let mut skip = offset;
        for c in self.chunks() {
            if skip < c.len() {
                return &c[skip..];
            }
            skip -= c.len();
        }
        &[]
    }

    /// Fills `dst` with the pieces from byte `offset` on, in order, as many as
    /// fit; returns how many it filled. For `write_vectored`.
    pub fn io_slices<'a>(&'a self, offset: usize, dst: &mut [IoSlice<'a>]) -> usize {
        let mut skip = offset;
        let mut n = 0;
        for c in self.chunks() {
            if n == dst.len() {
                break;
            }
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            dst[n] = IoSlice::new(&c[skip..]);
            skip = 0;
            n += 1;
        }
        n
    }

    /// Writes everything into `dst` in order (for a transport that copies
    /// anyway, such as TLS).
    pub fn flatten_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.len());
        for c in self.chunks() {
            dst.extend_from_slice(c);
        }
    }

    /// Empties it, keeping the capacity; the payloads are released.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.parts.clear();
        self.parts_len = 0;
    }
}

/// The pieces of a [`Transmit`] in order; see [`Transmit::chunks`].
#[derive(Debug)]
pub struct Chunks<'a> {
    t: &'a Transmit,
    next_part: usize,
    /// Frame bytes before this offset are yielded.
    at: usize,
    /// The frame bytes before `parts[next_part]` were yielded; the part is next.
    part_pending: bool,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let Some((off, part)) = self.t.parts.get(self.next_part) else {
                let rest = &self.t.buf[self.at..];
                self.at = self.t.buf.len();
                return (!rest.is_empty()).then_some(rest);
            };
            if self.part_pending {
                self.part_pending = false;
                self.next_part += 1;
                if !part.is_empty() {
                    return Some(part);
                }
                continue;
            }
            self.part_pending = true;
            let before = &self.t.buf[self.at..*off];
            self.at = *off;
            if !before.is_empty() {
                return Some(before);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::{Bytes, BytesMut};

    use super::{Transmit, ZERO_COPY_MIN};
    use crate::error::ErrorCode;
    use crate::frame::{Decode, Frame, FLAG_FIN, FLAG_SYN};
    use crate::proto::{Config, Event, Role, Session};

    /// A payload whose every byte says where it is.
    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    /// The transmission's bytes in order, from its chunks.
    fn flat(t: &Transmit) -> Vec<u8> {
        let mut v = Vec::with_capacity(t.len());
        for c in t.chunks() {
            assert!(!c.is_empty(), "chunks are never empty");
            v.extend_from_slice(c);
        }
        assert_eq!(v.len(), t.len());
        v
    }

    /// Frames as (type, stream id, flags, payload) in wire order.
    fn frames(mut b: &[u8]) -> Vec<(&'static str, u32, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let Ok(Decode::Frame(f, n)) = Frame::decode(b) else {
                panic!("the transmission ends mid-frame")
            };
            out.push(match f {
                Frame::Data {
                    stream_id,
                    flags,
                    payload,
                } => ("data", stream_id, flags, payload.to_vec()),
                Frame::Rst { stream_id, .. } => ("rst", stream_id, 0, Vec::new()),
                Frame::WndInc { stream_id, .. } => ("wndinc", stream_id, 0, Vec::new()),
                Frame::GoAway { .. } => ("goaway", 0, 0, Vec::new()),
                Frame::Unknown { .. } => panic!("unknown frame"),
            });
            b = &b[n..];
        }
        out
    }

    /// One script of writes, copies and control frames, run with `write_bytes`
    /// or with `write` only: the bytes on the wire must be the same, and the
    /// large payloads must be parts, not copies.
    #[test]
    fn parts_interleave_in_order_with_copied_and_control_frames() {
        let big = pattern(20_000, 1);
        let small = pattern(ZERO_COPY_MIN - 1, 2);
        let edge = pattern(ZERO_COPY_MIN, 3);
        let script = |by_ref: bool| {
            let mut s = Session::new(Role::Client, Config::default());
            let a = s.open().unwrap();
            let b = s.open().unwrap();
            let c = s.open().unwrap();
            let put = |s: &mut Session, k, d: &Bytes| {
                let n = if by_ref {
                    s.write_bytes(k, d).unwrap()
                } else {
                    s.write(k, d).unwrap()
                };
                assert_eq!(n, d.len());
            };
            s.write(a, b"hello").unwrap();
            put(&mut s, b, &big);
            put(&mut s, a, &small);
            s.close_write(a).unwrap();
            put(&mut s, b, &edge);
            put(&mut s, c, &big.slice(100..9000));
            s.reset(Instant::now(), c, ErrorCode::StreamCancelled)
                .unwrap();
            s.go_away(ErrorCode::NoError, b"bye").unwrap();
            put(&mut s, b, &big.slice(7..));
            let mut t = Transmit::new();
            let pending = s.pending_transmit();
            assert!(s.poll_transmit_vectored(&mut t));
            assert_eq!(t.len(), pending, "pending_transmit counts the parts");
            assert_eq!(s.pending_transmit(), 0);
            assert_eq!(s.stats().bytes_out, t.len() as u64);
            (t, s)
        };
        let (by_ref, _s1) = script(true);
        let (copied, _s2) = script(false);
        assert_eq!(by_ref.parts.len(), 4, "the payloads from ZERO_COPY_MIN up");
        assert!(!copied.has_parts());
        assert!(by_ref.flat().len() < 2 * ZERO_COPY_MIN);
        let wire = flat(&by_ref);
        assert_eq!(wire, flat(&copied), "the same bytes either way");
        let got = frames(&wire);
        let kinds: Vec<_> = got.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            [
                ("data", 3, FLAG_SYN),
                ("data", 5, FLAG_SYN),
                ("data", 3, 0),
                ("data", 3, FLAG_FIN),
                ("data", 5, 0),
                ("data", 7, FLAG_SYN),
                ("rst", 7, 0),
                ("goaway", 0, 0),
                ("data", 5, 0),
            ]
        );
        assert_eq!(got[1].3, big[..]);
        assert_eq!(got[2].3, small[..]);
        assert_eq!(got[4].3, edge[..]);
        assert_eq!(got[5].3, big[100..9000]);
        assert_eq!(got[8].3, big[7..]);
        // The old single-buffer poll gives the same bytes, copied.
        let mut s = Session::new(Role::Client, Config::default());
        let k = s.open().unwrap();
        s.write_bytes(k, &big).unwrap();
        let mut spare = BytesMut::new();
        assert!(s.poll_transmit(&mut spare));
        assert_eq!(frames(&spare)[0].3, big[..]);
        assert_eq!(s.pending_transmit(), 0);
    }

    /// The send buffer, the fair share and the window cut a `write_bytes` as
    /// they cut a `write`; the cut part is a slice of the caller's bytes, and
    /// the writer is woken as usual.
    #[test]
    fn write_bytes_is_admitted_by_buffer_share_and_window() {
        let cfg = Config::default()
            .with_max_send_buffer(64 * 1024)
            .with_stream_send_quota(64 * 1024);
        let mut s = Session::new(Role::Client, cfg);
        let a = s.open().unwrap();
        let data = pattern(1 << 20, 9);
        // The buffer (and the share) cut it.
        let n = s.write_bytes(a, &data).unwrap();
        assert_eq!(n, 64 * 1024);
        assert_eq!(s.pending_transmit(), 8 + n, "header and the queued part");
        assert_eq!(s.write_bytes(a, &data.slice(n..)).unwrap(), 0);
        assert_eq!(s.stats().buffer_stalls, 1);
        let mut t = Transmit::new();
        assert!(s.poll_transmit_vectored(&mut t));
        assert_eq!(t.parts.len(), 1);
        assert_eq!(t.parts[0].1, data[..n]);
        assert_eq!(s.poll_event(), Some(Event::Writable(a)));
        // Then the peer's window (256 KiB) runs out: 3 more transmissions.
        let mut sent = n;
        loop {
            match s.write_bytes(a, &data.slice(sent..)).unwrap() {
                0 => break,
                k => sent += k,
            }
            assert!(s.poll_transmit_vectored(&mut t));
            assert_eq!(t.len(), 8 + t.parts[0].1.len());
            assert_eq!(t.parts[0].1, data[sent - t.parts[0].1.len()..sent]);
        }
        assert_eq!(sent, 256 * 1024);
        assert_eq!(s.stats().window_stalls, 1);
        assert_eq!(s.send_window(a).unwrap(), 0);
        // A second stream shares the buffer with the parts queued before it.
        let b = s.open().unwrap();
        let mut s2 = Session::new(
            Role::Client,
            Config::default()
                .with_max_send_buffer(40 * 1024)
                .with_stream_send_quota(40 * 1024),
        );
        let (x, y) = (s2.open().unwrap(), s2.open().unwrap());
        assert_eq!(s2.write_bytes(x, &data.slice(..30_000)).unwrap(), 30_000);
        let left = 40 * 1024 - (30_000 + 8);
        assert_eq!(s2.write_bytes(y, &data).unwrap(), left);
        assert_eq!(s2.pending_transmit(), 40 * 1024 + 8);
        let _ = (b, s);
    }

    /// Queued parts hold the caller's bytes only until they are transmitted
    /// and the transmission is cleared, or until the session is dropped;
    /// a reset or the session's death sends them first, like copied bytes.
    #[test]
    fn a_reset_or_death_releases_queued_parts() {
        let data = pattern(50_000, 4);
        let mut s = Session::new(Role::Client, Config::default());
        let a = s.open().unwrap();
        assert_eq!(s.write_bytes(a, &data).unwrap(), data.len());
        assert!(!data.is_unique(), "the session holds the payload");
        s.reset(Instant::now(), a, ErrorCode::StreamCancelled)
            .unwrap();
        assert!(s.write_bytes(a, &data).is_err(), "no writes after a reset");
        s.close_session();
        assert!(s.write_bytes(a, &data).is_err());
        let mut t = Transmit::new();
        assert!(s.poll_transmit_vectored(&mut t));
        let kinds: Vec<_> = frames(&flat(&t)).iter().map(|f| f.0).collect();
        assert_eq!(kinds, ["data", "rst", "goaway"]);
        t.clear();
        assert!(data.is_unique(), "released once sent");
        // Dropped with a part still queued.
        let mut s = Session::new(Role::Client, Config::default());
        let a = s.open().unwrap();
        s.write_bytes(a, &data).unwrap();
        s.close_session();
        assert!(!data.is_unique());
        drop(s);
        assert!(data.is_unique(), "released with the session");
    }

    /// Pieces from any offset: the vectored and the one-piece views agree.
    #[test]
    fn io_slices_and_chunk_at_resume_anywhere() {
        let mut s = Session::new(Role::Client, Config::default());
        let a = s.open().unwrap();
        let big = pattern(10_000, 5);
        s.write(a, b"abc").unwrap();
        s.write_bytes(a, &big).unwrap();
        s.write(a, b"defg").unwrap();
        s.write_bytes(a, &big).unwrap();
        let mut t = Transmit::new();
        assert!(s.poll_transmit_vectored(&mut t));
        let all = flat(&t);
        assert_eq!(t.max_chunks(), 5);
        for off in [
            0,
            1,
            14,
            15,
            10_015,
            10_016,
            10_030,
            all.len() - 1,
            all.len(),
        ] {
            let mut v = Vec::new();
            let mut at = off;
            while at < all.len() {
                let c = t.chunk_at(at);
                assert!(!c.is_empty());
                v.extend_from_slice(c);
                at += c.len();
            }
            assert_eq!(v, all[off..]);
            let mut slices = [std::io::IoSlice::new(&[]); 2];
            let mut v = Vec::new();
            let mut at = off;
            loop {
                let n = t.io_slices(at, &mut slices);
                if n == 0 {
                    break;
                }
                for sl in &slices[..n] {
                    v.extend_from_slice(sl);
                    at += sl.len();
                }
            }
            assert_eq!(v, all[off..]);
        }
        assert!(t.chunk_at(all.len()).is_empty());
    }
}
