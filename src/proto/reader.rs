//! The frame reader: where the session is within the received byte stream.
//!
//! It cuts any split of the byte stream into the same sequence of steps (a
//! header, a fixed body, pieces of a payload), so the session never sees how
//! the transport chunked its input, and payload bytes are lent straight from
//! the input without a copy. Only headers and fixed bodies that straddle two
//! chunks are stashed (at most 8 bytes).

use crate::frame::{FrameType, Header, GOAWAY_FIXED_LEN, HEADER_LEN};

/// Where the payload bytes of the frame being read go; decided by the session
/// when it sees the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    /// Appended to a stream's receive buffer.
    Stream(super::StreamKey),
    /// Read and discarded.
    Drain,
    /// Kept (up to the limit) as the peer's GOAWAY debug data.
    GoAwayDebug,
}

/// Where the reader is within the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Collecting the 8 header bytes.
    Header,
    /// Collecting the fixed body of an RST/WNDINC (4) or GOAWAY (8).
    Fixed(Header),
    /// Passing `remaining` payload bytes to `sink`.
    Payload {
        header: Header,
        remaining: u32,
        sink: Sink,
    },
}

/// One thing the reader found in the input.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A complete header. The session must answer with [`FrameReader::expect_fixed`]
    /// or [`FrameReader::expect_payload`] (or nothing, if it died).
    Header(Header),
    /// The complete fixed body of an RST/WNDINC (first 4 bytes) or GOAWAY (8).
    Fixed(Header, [u8; GOAWAY_FIXED_LEN]),
    /// A piece of a payload; `end` is the frame's header once its last byte is in.
    Payload {
        sink: Sink,
        chunk: &'a [u8],
        end: Option<Header>,
    },
}

/// The frame reader's state: a tiny stash plus the current position.
#[derive(Debug)]
pub(crate) struct FrameReader {
    state: State,
    stash: [u8; GOAWAY_FIXED_LEN],
    stash_len: usize,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        FrameReader {
            state: State::Header,
            stash: [0; GOAWAY_FIXED_LEN],
            stash_len: 0,
        }
    }

    /// True when the byte stream stopped inside a frame (for EOF's message).
    pub(crate) fn mid_frame(&self) -> bool {
        self.state != State::Header || self.stash_len != 0
    }

    /// The next step found in `data` (which is advanced past it), or `None`
    /// once `data` is used up without completing one.
    #[inline]
    pub(crate) fn next<'a>(&mut self, data: &mut &'a [u8]) -> Option<Step<'a>> {
        if data.is_empty() {
            return None;
        }
        match self.state {
            State::Header => {
                let header = if self.stash_len == 0 && data.len() >= HEADER_LEN {
                    let (head, rest) = data.split_first_chunk::<HEADER_LEN>()?;
                    *data = rest;
                    Header::decode(head)
                } else {
                    if !self.fill_stash(data, HEADER_LEN) {
                        return None;
                    }
                    self.stash_len = 0;
                    let mut head = [0; HEADER_LEN];
                    head.copy_from_slice(&self.stash[..HEADER_LEN]);
                    Header::decode(&head)
                };
                // Until the session says otherwise the frame is drained, so a
                // session that died on this header reads nothing more of it.
                self.state = State::Header;
                Some(Step::Header(header))
            }
            State::Fixed(header) => {
                let need = match header.ty {
                    FrameType::GoAway => GOAWAY_FIXED_LEN,
                    _ => 4,
                };
                if !self.fill_stash(data, need) {
                    return None;
                }
                self.stash_len = 0;
                self.state = State::Header;
                Some(Step::Fixed(header, self.stash))
            }
            State::Payload {
                header,
                remaining,
                sink,
            } => {
                let n = data.len().min(remaining as usize);
                let (chunk, rest) = data.split_at(n);
                *data = rest;
                let remaining = remaining - n as u32;
                let end = if remaining == 0 {
                    self.state = State::Header;
                    Some(header)
                } else {
                    self.state = State::Payload {
                        header,
                        remaining,
                        sink,
                    };
                    None
                };
                Some(Step::Payload { sink, chunk, end })
            }
        }
    }

    /// The header just returned announces a fixed body (RST, WNDINC, GOAWAY).
    pub(crate) fn expect_fixed(&mut self, header: Header) {
        self.state = State::Fixed(header);
    }

    /// The next `len` bytes are the payload of `header`, bound for `sink`.
    /// Returns false when `len` is 0: the frame has ended already.
    pub(crate) fn expect_payload(&mut self, header: Header, len: u32, sink: Sink) -> bool {
        if len == 0 {
            self.state = State::Header;
            return false;
        }
        self.state = State::Payload {
            header,
            remaining: len,
            sink,
        };
        true
    }

    /// Moves bytes from `data` into the stash until it holds `need`; true when full.
    fn fill_stash(&mut self, data: &mut &[u8], need: usize) -> bool {
        let n = (need - self.stash_len).min(data.len());
        self.stash[self.stash_len..self.stash_len + n].copy_from_slice(&data[..n]);
        self.stash_len += n;
        *data = &data[n..];
        self.stash_len == need
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, FLAG_FIN};

    /// Every split of a frame sequence yields the same steps.
    #[test]
    fn any_split_gives_the_same_steps() {
        let mut wire = Vec::new();
        frame::encode_data(&mut wire, 3, b"hello", FLAG_FIN).unwrap();
        frame::encode_rst(&mut wire, 5, crate::ErrorCode::StreamClosed).unwrap();
        let run = |cut: usize| {
            let mut r = FrameReader::new();
            let mut seen = Vec::new();
            for piece in [&wire[..cut], &wire[cut..]] {
                let mut data = piece;
                while let Some(step) = r.next(&mut data) {
                    match step {
                        Step::Header(h) => {
                            seen.push(format!("h{}", h.stream_id));
                            if h.ty == FrameType::Data {
                                r.expect_payload(h, h.length, Sink::Drain);
                            } else {
                                r.expect_fixed(h);
                            }
                        }
                        Step::Fixed(h, body) => {
                            seen.push(format!("f{}:{:?}", h.stream_id, &body[..4]))
                        }
                        Step::Payload { chunk, end, .. } => {
                            seen.push(format!("p{}", String::from_utf8_lossy(chunk)));
                            if end.is_some() {
                                seen.push("end".into());
                            }
                        }
                    }
                }
            }
            assert!(!r.mid_frame());
            // Payload pieces may be split differently; join them.
            seen.join("").replace("endh", "|h")
        };
        let whole = run(wire.len());
        for cut in 0..wire.len() {
            let got = run(cut);
            let norm = |s: &str| s.replace('p', "");
            assert_eq!(norm(&got), norm(&whole), "cut at {cut}");
        }
    }
}
