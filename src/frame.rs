//! The muxado wire codec: an 8-byte header and four frame types.
//!
//! ```text
//!  0        1        2        3        4        5        6        7
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! |  Length: u24 big-endian  |TTTTFFFF|R     Stream ID: u31 big-endian    |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! ```
//!
//! Encoding writes into the caller's [`BufMut`] and never allocates. Decoding
//! works over a byte window: [`Frame::decode`] returns a [`Decode::Incomplete`]
//! for partial input and a [`FrameError`] (which maps to the wire
//! [`ErrorCode`] the session must send in its GOAWAY) for every violation.
//!
//! The session core does not use [`Frame::decode`] on its hot path: it reads the
//! header with [`Header::decode`] and [`Header::validate`], then streams DATA
//! payloads straight into stream buffers, so a 16 MiB frame never has to be
//! held whole. [`Frame::decode`] is the convenient whole-frame view of the same
//! rules, used by tests, tools and anyone writing their own driver.
//!
//! **Reserved bit.** Go decodes the stream id as a full 32-bit value and never
//! sets the top bit when sending. [`Header::decode`] returns the raw value (as
//! Go's `TestPack` expects), and [`Header::validate`] rejects a set reserved
//! bit on RST, DATA and WNDINC frames as a `ProtocolError`: a conforming peer
//! never sends one, and guessing what it meant would be worse than saying so.
//! Unknown frame types are ignored whole, reserved bit included.

use bytes::BufMut;

use crate::error::ErrorCode;

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame can carry (the 24-bit length field).
pub const MAX_PAYLOAD: u32 = 0xFF_FFFF;
/// Largest valid stream id (31 bits).
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;
/// Largest window increment a WNDINC can carry (31 bits).
pub const MAX_WINDOW_INCREMENT: u32 = 0x7FFF_FFFF;
/// The reserved top bit of the stream id field.
pub const RESERVED_BIT: u32 = 0x8000_0000;

/// Length of the fixed part of a GOAWAY body (last stream id + error code).
pub const GOAWAY_FIXED_LEN: usize = 8;

/// DATA flag: the sender will send no more data on this stream.
pub const FLAG_FIN: u8 = 0x1;
/// DATA flag: this frame opens the stream.
pub const FLAG_SYN: u8 = 0x2;

/// The 4-bit frame type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 0: reset one stream.
    Rst,
    /// 1: stream data, with the FIN and SYN flags.
    Data,
    /// 2: window increment.
    WndInc,
    /// 3: the sender will accept no new streams.
    GoAway,
    /// 4..=15: not defined; the payload is drained and ignored.
    Unknown(u8),
}

impl FrameType {
    /// The type for a 4-bit value (the high bits are ignored).
    pub const fn from_u4(v: u8) -> Self {
        match v & 0x0F {
            0 => FrameType::Rst,
            1 => FrameType::Data,
            2 => FrameType::WndInc,
            3 => FrameType::GoAway,
            t => FrameType::Unknown(t),
        }
    }

    /// The 4-bit value on the wire.
    pub const fn to_u4(self) -> u8 {
        match self {
            FrameType::Rst => 0,
            FrameType::Data => 1,
            FrameType::WndInc => 2,
            FrameType::GoAway => 3,
            FrameType::Unknown(t) => t & 0x0F,
        }
    }
}

/// What went wrong while building a frame: always a bug in the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the maximum of 16777215")]
    PayloadTooLarge(usize),
    /// The stream id has the reserved bit set.
    #[error("stream id {0:#x} exceeds the maximum of 0x7fffffff")]
    StreamIdTooLarge(u32),
    /// RST, DATA and WNDINC frames need a non-zero stream id.
    #[error("stream id 0 is reserved for the session")]
    StreamIdZero,
    /// A WNDINC increment must be in 1..=0x7fffffff.
    #[error("window increment {0:#x} is outside 1..=0x7fffffff")]
    BadIncrement(u32),
    /// [`Frame::Unknown`] with a type outside 4..=15: it would be written as
    /// a known frame (or a masked type) and not decode back as itself.
    #[error("frame type {0:#x} is not an unknown type (4..=15)")]
    NotUnknownType(u8),
}

/// A frame the peer must not have sent. Each one kills the session, and
/// [`FrameError::code`] is the code its GOAWAY carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RST body length other than 4.
    #[error("RST frame with length {0}, expected 4")]
    RstLength(u32),
    /// WNDINC body length other than 4.
    #[error("WNDINC frame with length {0}, expected 4")]
    WndIncLength(u32),
    /// GOAWAY body shorter than 8.
    #[error("GOAWAY frame with length {0}, expected at least 8")]
    GoAwayLength(u32),
    /// RST, DATA or WNDINC on stream 0.
    #[error("{0:?} frame on stream 0")]
    StreamIdZero(FrameType),
    /// GOAWAY on a stream other than 0.
    #[error("GOAWAY frame on stream {0:#x}, expected 0")]
    GoAwayStreamId(u32),
    /// WNDINC whose increment is 0 after masking the top bit.
    #[error("WNDINC frame with a zero increment")]
    ZeroIncrement,
    /// The reserved top bit of the stream id was set.
    #[error("{0:?} frame with the reserved stream id bit set ({1:#x})")]
    ReservedBit(FrameType, u32),
}

impl FrameError {
    /// The code a GOAWAY sends for this violation (FrameSizeError 8 or ProtocolError 1).
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::RstLength(_)
            | FrameError::WndIncLength(_)
            | FrameError::GoAwayLength(_) => ErrorCode::FrameSizeError,
            _ => ErrorCode::ProtocolError,
        }
    }

    /// A short, static description for session errors.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::RstLength(_) => "RST frame length is not 4",
            FrameError::WndIncLength(_) => "WNDINC frame length is not 4",
            FrameError::GoAwayLength(_) => "GOAWAY frame length is below 8",
            FrameError::StreamIdZero(_) => "frame on stream 0",
            FrameError::GoAwayStreamId(_) => "GOAWAY frame on a stream other than 0",
            FrameError::ZeroIncrement => "WNDINC frame with a zero increment",
            FrameError::ReservedBit(..) => "reserved stream id bit set",
        }
    }
}

/// The 8-byte frame header, as raw fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload length (the header is not counted).
    pub length: u32,
    /// Frame type.
    pub ty: FrameType,
    /// The 4 flag bits; only DATA defines any ([`FLAG_FIN`], [`FLAG_SYN`]).
    pub flags: u8,
    /// Stream id as read: the reserved bit is not masked.
    pub stream_id: u32,
}

impl Header {
    /// Writes the header. Fails for a length over [`MAX_PAYLOAD`] or a stream
    /// id with the reserved bit set (Go's `TestPack` rules); flags above 4 bits
    /// are masked.
    pub fn encode<B: BufMut + ?Sized>(&self, dst: &mut B) -> Result<(), EncodeError> {
        if self.length > MAX_PAYLOAD {
            return Err(EncodeError::PayloadTooLarge(self.length as usize));
        }
        if self.stream_id > MAX_STREAM_ID {
            return Err(EncodeError::StreamIdTooLarge(self.stream_id));
        }
        put_header(dst, self.length, self.ty, self.flags, self.stream_id);
        Ok(())
    }

    /// Reads a header. Never fails: every 8-byte pattern is a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: FrameType::from_u4(b[3] >> 4),
            flags: b[3] & 0x0F,
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// The rules that the header alone can break, checked in the order the
    /// session applies them. The body rules (zero increment, GOAWAY stream id)
    /// are checked by [`parse_wndinc`] and [`Frame::decode`].
    pub fn validate(&self) -> Result<(), FrameError> {
        let id = self.stream_id;
        match self.ty {
            FrameType::Rst if self.length != 4 => Err(FrameError::RstLength(self.length)),
            FrameType::WndInc if self.length != 4 => Err(FrameError::WndIncLength(self.length)),
            FrameType::GoAway if (self.length as usize) < GOAWAY_FIXED_LEN => {
                Err(FrameError::GoAwayLength(self.length))
            }
            FrameType::GoAway if id != 0 => Err(FrameError::GoAwayStreamId(id)),
            FrameType::Rst | FrameType::Data | FrameType::WndInc if id == 0 => {
                Err(FrameError::StreamIdZero(self.ty))
            }
            FrameType::Rst | FrameType::Data | FrameType::WndInc if id & RESERVED_BIT != 0 => {
                Err(FrameError::ReservedBit(self.ty, id))
            }
            _ => Ok(()),
        }
    }

    /// True when the FIN flag is set.
    pub fn fin(&self) -> bool {
        self.flags & FLAG_FIN != 0
    }

    /// True when the SYN flag is set.
    pub fn syn(&self) -> bool {
        self.flags & FLAG_SYN != 0
    }
}

#[inline]
fn put_header<B: BufMut + ?Sized>(dst: &mut B, length: u32, ty: FrameType, flags: u8, id: u32) {
    let l = length.to_be_bytes();
    let i = id.to_be_bytes();
    dst.put_slice(&[
        l[1],
        l[2],
        l[3],
        (ty.to_u4() << 4) | (flags & 0x0F),
        i[0],
        i[1],
        i[2],
        i[3],
    ]);
}

fn check_stream_id(id: u32) -> Result<(), EncodeError> {
    match id {
        0 => Err(EncodeError::StreamIdZero),
        id if id > MAX_STREAM_ID => Err(EncodeError::StreamIdTooLarge(id)),
        _ => Ok(()),
    }
}

/// Writes only the header of a DATA frame whose `len` payload bytes the
/// caller writes next. This is how the session copies a stream write straight
/// into its outgoing buffer.
#[inline]
pub fn encode_data_header<B: BufMut + ?Sized>(
    dst: &mut B,
    stream_id: u32,
    len: usize,
    flags: u8,
) -> Result<(), EncodeError> {
    check_stream_id(stream_id)?;
    if len > MAX_PAYLOAD as usize {
        return Err(EncodeError::PayloadTooLarge(len));
    }
    put_header(dst, len as u32, FrameType::Data, flags, stream_id);
    Ok(())
}

/// Writes a whole DATA frame.
pub fn encode_data<B: BufMut + ?Sized>(
    dst: &mut B,
    stream_id: u32,
    payload: &[u8],
    flags: u8,
) -> Result<(), EncodeError> {
    encode_data_header(dst, stream_id, payload.len(), flags)?;
    crate::copy::put(dst, payload);
    Ok(())
}

/// Writes an RST frame.
pub fn encode_rst<B: BufMut + ?Sized>(
    dst: &mut B,
    stream_id: u32,
    code: ErrorCode,
) -> Result<(), EncodeError> {
    check_stream_id(stream_id)?;
    put_header(dst, 4, FrameType::Rst, 0, stream_id);
    dst.put_u32(code.to_u32());
    Ok(())
}

/// Writes a WNDINC frame; `increment` must be in 1..=0x7fffffff.
pub fn encode_wndinc<B: BufMut + ?Sized>(
    dst: &mut B,
    stream_id: u32,
    increment: u32,
) -> Result<(), EncodeError> {
    check_stream_id(stream_id)?;
    if increment == 0 || increment > MAX_WINDOW_INCREMENT {
        return Err(EncodeError::BadIncrement(increment));
    }
    put_header(dst, 4, FrameType::WndInc, 0, stream_id);
    dst.put_u32(increment);
    Ok(())
}

/// Writes a GOAWAY frame (always on stream 0).
pub fn encode_goaway<B: BufMut + ?Sized>(
    dst: &mut B,
    last_stream_id: u32,
    code: ErrorCode,
    debug: &[u8],
) -> Result<(), EncodeError> {
    if last_stream_id > MAX_STREAM_ID {
        return Err(EncodeError::StreamIdTooLarge(last_stream_id));
    }
    let len = GOAWAY_FIXED_LEN + debug.len();
    if len > MAX_PAYLOAD as usize {
        return Err(EncodeError::PayloadTooLarge(len));
    }
    put_header(dst, len as u32, FrameType::GoAway, 0, 0);
    dst.put_u32(last_stream_id);
    dst.put_u32(code.to_u32());
    dst.put_slice(debug);
    Ok(())
}

/// Reads an RST body.
#[inline]
pub fn parse_rst(body: &[u8; 4]) -> ErrorCode {
    ErrorCode::from_u32(u32::from_be_bytes(*body))
}

/// Reads a WNDINC body: masks the top bit, then rejects a zero increment.
#[inline]
pub fn parse_wndinc(body: &[u8; 4]) -> Result<u32, FrameError> {
    match u32::from_be_bytes(*body) & MAX_WINDOW_INCREMENT {
        0 => Err(FrameError::ZeroIncrement),
        inc => Ok(inc),
    }
}

/// Reads the fixed part of a GOAWAY body: (last stream id, error code). The
/// last stream id is not masked, as in Go.
#[inline]
pub fn parse_goaway(body: &[u8; GOAWAY_FIXED_LEN]) -> (u32, ErrorCode) {
    let last = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let code = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    (last, ErrorCode::from_u32(code))
}

/// One whole frame, borrowing its payload from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// RST: reset `stream_id` with `code`.
    Rst {
        /// The stream.
        stream_id: u32,
        /// Why.
        code: ErrorCode,
    },
    /// DATA.
    Data {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`] and/or [`FLAG_SYN`] (other bits as received).
        flags: u8,
        /// The payload.
        payload: &'a [u8],
    },
    /// WNDINC: grant `increment` more bytes of send window.
    WndInc {
        /// The stream.
        stream_id: u32,
        /// The masked, non-zero increment.
        increment: u32,
    },
    /// GOAWAY.
    GoAway {
        /// Highest peer-initiated stream id the sender saw.
        last_stream_id: u32,
        /// Why.
        code: ErrorCode,
        /// Free text, usually an error message.
        debug: &'a [u8],
    },
    /// Types 4..=15: the session ignores them.
    Unknown {
        /// The 4-bit type.
        ty: u8,
        /// The flag bits.
        flags: u8,
        /// The raw stream id.
        stream_id: u32,
        /// The payload.
        payload: &'a [u8],
    },
}

/// The result of [`Frame::decode`] over a byte window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode<'a> {
    /// A frame and the number of input bytes it took.
    Frame(Frame<'a>, usize),
    /// The window holds part of a frame; at least this many bytes in total are needed.
    Incomplete(usize),
}

impl<'a> Frame<'a> {
    /// Decodes the first frame of `buf`. Reads exactly the frame's length,
    /// whatever follows it. Header rules are checked as soon as the header is
    /// complete, so a bad frame is reported before its body arrives.
    pub fn decode(buf: &'a [u8]) -> Result<Decode<'a>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(Decode::Incomplete(HEADER_LEN));
        };
        let h = Header::decode(head);
        h.validate()?;
        let total = HEADER_LEN + h.length as usize;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Ok(Decode::Incomplete(total));
        };
        let frame = match h.ty {
            FrameType::Rst => Frame::Rst {
                stream_id: h.stream_id,
                code: parse_rst(body.first_chunk().expect("validated length 4")),
            },
            FrameType::Data => Frame::Data {
                stream_id: h.stream_id,
                flags: h.flags,
                payload: body,
            },
            FrameType::WndInc => Frame::WndInc {
                stream_id: h.stream_id,
                increment: parse_wndinc(body.first_chunk().expect("validated length 4"))?,
            },
            FrameType::GoAway => {
                let (fixed, debug) = body.split_at(GOAWAY_FIXED_LEN);
                let (last_stream_id, code) =
                    parse_goaway(fixed.first_chunk().expect("validated length 8"));
                Frame::GoAway {
                    last_stream_id,
                    code,
                    debug,
                }
            }
            FrameType::Unknown(ty) => Frame::Unknown {
                ty,
                flags: h.flags,
                stream_id: h.stream_id,
                payload: body,
            },
        };
        Ok(Decode::Frame(frame, total))
    }

    /// Encodes this frame (unknown types too, for tests and tools). An
    /// [`Frame::Unknown`] must have a type in 4..=15 and a stream id without
    /// the reserved bit.
    pub fn encode<B: BufMut + ?Sized>(&self, dst: &mut B) -> Result<(), EncodeError> {
        match *self {
            Frame::Rst { stream_id, code } => encode_rst(dst, stream_id, code),
            Frame::Data {
                stream_id,
                flags,
                payload,
            } => encode_data(dst, stream_id, payload, flags),
            Frame::WndInc {
                stream_id,
                increment,
            } => encode_wndinc(dst, stream_id, increment),
            Frame::GoAway {
                last_stream_id,
                code,
                debug,
            } => encode_goaway(dst, last_stream_id, code, debug),
            Frame::Unknown {
                ty,
                flags,
                stream_id,
                payload,
            } => {
                if !(4..=15).contains(&ty) {
                    return Err(EncodeError::NotUnknownType(ty));
                }
                if payload.len() > MAX_PAYLOAD as usize {
                    return Err(EncodeError::PayloadTooLarge(payload.len()));
                }
                Header {
                    length: payload.len() as u32,
                    ty: FrameType::Unknown(ty),
                    flags,
                    stream_id,
                }
                .encode(dst)?;
                dst.put_slice(payload);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(length: u32, ty: FrameType, flags: u8, stream_id: u32) -> Header {
        Header {
            length,
            ty,
            flags,
            stream_id,
        }
    }

    #[test]
    fn put_header_lays_out_every_field() {
        let mut b = Vec::new();
        put_header(&mut b, 0x12_3456, FrameType::Unknown(0xA), 0x5, 0x0708_090A);
        assert_eq!(b, [0x12, 0x34, 0x56, 0xA5, 0x07, 0x08, 0x09, 0x0A]);
        // Flags above the nibble never reach the type bits.
        let mut b = Vec::new();
        put_header(&mut b, 0, FrameType::Rst, 0xF0, 1);
        assert_eq!(b[3], 0x00);
        // put_header itself trusts the caller: the length's top byte is dropped.
        let mut b = Vec::new();
        put_header(&mut b, 0xAB00_0001, FrameType::Data, 0, 1);
        assert_eq!(&b[..4], &[0, 0, 1, 0x10]);
    }

    #[test]
    fn check_stream_id_accepts_exactly_1_to_max() {
        assert_eq!(check_stream_id(0), Err(EncodeError::StreamIdZero));
        assert_eq!(check_stream_id(1), Ok(()));
        assert_eq!(check_stream_id(MAX_STREAM_ID), Ok(()));
        assert_eq!(
            check_stream_id(RESERVED_BIT),
            Err(EncodeError::StreamIdTooLarge(RESERVED_BIT))
        );
    }

    #[test]
    fn validate_checks_header_rules_in_go_order() {
        use FrameType::*;
        // Length first: an RST of length 3 on stream 0 is a size error.
        assert_eq!(
            header(3, Rst, 0, 0).validate(),
            Err(FrameError::RstLength(3))
        );
        assert_eq!(
            header(4, Rst, 0, 0).validate(),
            Err(FrameError::StreamIdZero(Rst))
        );
        assert_eq!(
            header(5, WndInc, 0, 0).validate(),
            Err(FrameError::WndIncLength(5))
        );
        assert_eq!(
            header(7, GoAway, 0, 1).validate(),
            Err(FrameError::GoAwayLength(7))
        );
        assert_eq!(
            header(8, GoAway, 0, 1).validate(),
            Err(FrameError::GoAwayStreamId(1))
        );
        assert_eq!(header(8, GoAway, 0, 0).validate(), Ok(()));
        assert_eq!(header(MAX_PAYLOAD, GoAway, 0xF, 0).validate(), Ok(()));
        assert_eq!(
            header(0, Data, 0, 0).validate(),
            Err(FrameError::StreamIdZero(Data))
        );
        assert_eq!(
            header(MAX_PAYLOAD, Data, 0xF, MAX_STREAM_ID).validate(),
            Ok(())
        );
        assert_eq!(
            header(0, Data, 0, RESERVED_BIT | 1).validate(),
            Err(FrameError::ReservedBit(Data, RESERVED_BIT | 1))
        );
        // Unknown types: anything goes.
        for ty in 4..=15 {
            for id in [0, 1, u32::MAX] {
                assert_eq!(header(MAX_PAYLOAD, Unknown(ty), 0xF, id).validate(), Ok(()));
            }
        }
    }

    #[test]
    fn parse_bodies() {
        assert_eq!(parse_rst(&[0, 0, 0, 8]), ErrorCode::FrameSizeError);
        assert_eq!(parse_rst(&[0xFF; 4]), ErrorCode::Other(u32::MAX));
        assert_eq!(parse_wndinc(&[0, 0, 0, 1]), Ok(1));
        assert_eq!(parse_wndinc(&[0xFF; 4]), Ok(MAX_WINDOW_INCREMENT));
        assert_eq!(
            parse_wndinc(&[0x80, 0, 0, 0]),
            Err(FrameError::ZeroIncrement)
        );
        assert_eq!(
            parse_goaway(&[0x80, 0, 0, 3, 0, 0, 0, 0xFF]),
            (0x8000_0003, ErrorCode::Unknown)
        );
    }

    #[test]
    fn header_flag_accessors() {
        let h = header(0, FrameType::Data, FLAG_FIN, 1);
        assert!(h.fin() && !h.syn());
        let h = header(0, FrameType::Data, FLAG_SYN | 0x4, 1);
        assert!(!h.fin() && h.syn());
    }

    /// Regression: `Frame::Unknown` with a known type (0..=3) used to be
    /// written as that known frame without any of its checks (e.g. DATA on
    /// stream 0), and types above 15 were silently masked, so the bytes did
    /// not decode back to the frame that was encoded.
    #[test]
    fn unknown_frame_encode_rejects_types_outside_4_to_15() {
        for ty in (0..4).chain([16, 0x13, 0xFF]) {
            let f = Frame::Unknown {
                ty,
                flags: 0,
                stream_id: 0,
                payload: b"hi",
            };
            let mut b = Vec::new();
            assert_eq!(f.encode(&mut b), Err(EncodeError::NotUnknownType(ty)));
            assert!(b.is_empty());
        }
        for ty in 4..=15 {
            let f = Frame::Unknown {
                ty,
                flags: 0x9,
                stream_id: 0,
                payload: b"hi",
            };
            let mut b = Vec::new();
            f.encode(&mut b).unwrap();
            assert_eq!(Frame::decode(&b), Ok(Decode::Frame(f, 10)));
        }
    }

    #[test]
    fn unknown_frame_encode_rejects_reserved_bit_and_huge_payloads() {
        let f = Frame::Unknown {
            ty: 9,
            flags: 0,
            stream_id: RESERVED_BIT,
            payload: b"",
        };
        let mut b = Vec::new();
        assert_eq!(
            f.encode(&mut b),
            Err(EncodeError::StreamIdTooLarge(RESERVED_BIT))
        );
        let big = vec![0u8; MAX_PAYLOAD as usize + 1];
        let f = Frame::Unknown {
            ty: 9,
            flags: 0,
            stream_id: 1,
            payload: &big,
        };
        assert_eq!(
            f.encode(&mut b),
            Err(EncodeError::PayloadTooLarge(big.len()))
        );
        assert!(b.is_empty());
    }

    #[test]
    fn frame_errors_have_their_codes() {
        for e in [
            FrameError::RstLength(0),
            FrameError::WndIncLength(0),
            FrameError::GoAwayLength(0),
        ] {
            assert_eq!(e.code(), ErrorCode::FrameSizeError);
        }
        for e in [
            FrameError::StreamIdZero(FrameType::Rst),
            FrameError::GoAwayStreamId(3),
            FrameError::ZeroIncrement,
            FrameError::ReservedBit(FrameType::WndInc, RESERVED_BIT),
        ] {
            assert_eq!(e.code(), ErrorCode::ProtocolError);
        }
    }
}
