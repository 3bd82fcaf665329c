//! Byte-exact wire vectors for the muxado codec.
//!
//! * Every worked example of section 13 of the protocol reference (#1..#21 and
//!   the coalesced typed-stream frame), run through a table-driven harness in
//!   the style of Go's `frame/shared_test.go`: encode and compare bytes, decode
//!   and compare fields and consumed length, encode→decode round trip.
//! * Ports of Go's `frame/*_test.go` (`TestPack`, data, rst, wndinc) plus our
//!   own GOAWAY, unknown-type, reserved-bit, error-code and `Incomplete` cases.

use muxado::frame::{
    encode_data, encode_data_header, encode_goaway, encode_rst, encode_wndinc, Decode, EncodeError,
    Frame, FrameError, FrameType, Header, FLAG_FIN, FLAG_SYN, HEADER_LEN, MAX_PAYLOAD,
    MAX_STREAM_ID,
};
use muxado::ErrorCode;

/// Parses space-separated hex bytes, e.g. `"00 00 02 12"`.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("bad hex {b:?}: {e}")))
        .collect()
}

fn decode_ok(buf: &[u8]) -> (Frame<'_>, usize) {
    match Frame::decode(buf) {
        Ok(Decode::Frame(f, n)) => (f, n),
        other => panic!("expected a whole frame from {buf:02x?}, got {other:?}"),
    }
}

fn decode_err(buf: &[u8]) -> FrameError {
    match Frame::decode(buf) {
        Err(e) => e,
        other => panic!("expected a decode error from {buf:02x?}, got {other:?}"),
    }
}

fn encoded(f: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v).expect("encoding must succeed");
    v
}

/// One wire vector: the frame, the encoder-specific call that must produce
/// it, and its exact bytes.
struct Vector {
    name: &'static str,
    frame: Frame<'static>,
    encode: fn(&mut Vec<u8>) -> Result<(), EncodeError>,
    bytes: &'static str,
}

const HI: &[u8] = b"hi";

fn section13() -> Vec<Vector> {
    vec![
        Vector {
            name: "#1 DATA+SYN stream 1 \"hi\"",
            frame: Frame::Data {
                stream_id: 1,
                flags: FLAG_SYN,
                payload: HI,
            },
            encode: |b| encode_data(b, 1, HI, FLAG_SYN),
            bytes: "00 00 02 12 00 00 00 01 68 69",
        },
        Vector {
            name: "#2 DATA+SYN stream 3 \"hi\"",
            frame: Frame::Data {
                stream_id: 3,
                flags: FLAG_SYN,
                payload: HI,
            },
            encode: |b| encode_data(b, 3, HI, FLAG_SYN),
            bytes: "00 00 02 12 00 00 00 03 68 69",
        },
        Vector {
            name: "#3 DATA stream 3 \"hi\"",
            frame: Frame::Data {
                stream_id: 3,
                flags: 0,
                payload: HI,
            },
            encode: |b| encode_data(b, 3, HI, 0),
            bytes: "00 00 02 10 00 00 00 03 68 69",
        },
        Vector {
            name: "#4 DATA+FIN stream 2 \"ok\"",
            frame: Frame::Data {
                stream_id: 2,
                flags: FLAG_FIN,
                payload: b"ok",
            },
            encode: |b| encode_data(b, 2, b"ok", FLAG_FIN),
            bytes: "00 00 02 11 00 00 00 02 6F 6B",
        },
        Vector {
            name: "#5 FIN only stream 3",
            frame: Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                payload: b"",
            },
            encode: |b| encode_data(b, 3, b"", FLAG_FIN),
            bytes: "00 00 00 11 00 00 00 03",
        },
        Vector {
            name: "#6 SYN+FIN empty stream 3",
            frame: Frame::Data {
                stream_id: 3,
                flags: FLAG_SYN | FLAG_FIN,
                payload: b"",
            },
            encode: |b| encode_data(b, 3, b"", FLAG_SYN | FLAG_FIN),
            bytes: "00 00 00 13 00 00 00 03",
        },
        Vector {
            name: "#7 WNDINC stream 3 +1000",
            frame: Frame::WndInc {
                stream_id: 3,
                increment: 1000,
            },
            encode: |b| encode_wndinc(b, 3, 1000),
            bytes: "00 00 04 20 00 00 00 03 00 00 03 E8",
        },
        Vector {
            name: "#8 WNDINC stream 2 +262144",
            frame: Frame::WndInc {
                stream_id: 2,
                increment: 262_144,
            },
            encode: |b| encode_wndinc(b, 2, 262_144),
            bytes: "00 00 04 20 00 00 00 02 00 04 00 00",
        },
        Vector {
            name: "#9 RST stream 5 StreamClosed",
            frame: Frame::Rst {
                stream_id: 5,
                code: ErrorCode::StreamClosed,
            },
            encode: |b| encode_rst(b, 5, ErrorCode::StreamClosed),
            bytes: "00 00 04 00 00 00 00 05 00 00 00 04",
        },
        Vector {
            name: "#10 RST stream 2 FlowControlError",
            frame: Frame::Rst {
                stream_id: 2,
                code: ErrorCode::FlowControlError,
            },
            encode: |b| encode_rst(b, 2, ErrorCode::FlowControlError),
            bytes: "00 00 04 00 00 00 00 02 00 00 00 03",
        },
        Vector {
            name: "#11 RST stream 3 StreamRefused",
            frame: Frame::Rst {
                stream_id: 3,
                code: ErrorCode::StreamRefused,
            },
            encode: |b| encode_rst(b, 3, ErrorCode::StreamRefused),
            bytes: "00 00 04 00 00 00 00 03 00 00 00 05",
        },
        Vector {
            name: "#12 RST stream 7 AcceptQueueFull",
            frame: Frame::Rst {
                stream_id: 7,
                code: ErrorCode::AcceptQueueFull,
            },
            encode: |b| encode_rst(b, 7, ErrorCode::AcceptQueueFull),
            bytes: "00 00 04 00 00 00 00 07 00 00 00 09",
        },
        Vector {
            name: "#13 GOAWAY last=7 NoError \"no error\"",
            frame: Frame::GoAway {
                last_stream_id: 7,
                code: ErrorCode::NoError,
                debug: b"no error",
            },
            encode: |b| encode_goaway(b, 7, ErrorCode::NoError, b"no error"),
            bytes: "00 00 10 30 00 00 00 00 00 00 00 07 00 00 00 00 6E 6F 20 65 72 72 6F 72",
        },
        Vector {
            name: "#14 GOAWAY last=0 NoError \"no error\"",
            frame: Frame::GoAway {
                last_stream_id: 0,
                code: ErrorCode::NoError,
                debug: b"no error",
            },
            encode: |b| encode_goaway(b, 0, ErrorCode::NoError, b"no error"),
            bytes: "00 00 10 30 00 00 00 00 00 00 00 00 00 00 00 00 6E 6F 20 65 72 72 6F 72",
        },
        Vector {
            name: "#15 GOAWAY last=1 ProtocolError no debug",
            frame: Frame::GoAway {
                last_stream_id: 1,
                code: ErrorCode::ProtocolError,
                debug: b"",
            },
            encode: |b| encode_goaway(b, 1, ErrorCode::ProtocolError, b""),
            bytes: "00 00 08 30 00 00 00 00 00 00 00 01 00 00 00 01",
        },
        Vector {
            name: "#16 GOAWAY last=3 PeerEOF \"read EOF from remote peer\"",
            frame: Frame::GoAway {
                last_stream_id: 3,
                code: ErrorCode::PeerEof,
                debug: b"read EOF from remote peer",
            },
            encode: |b| encode_goaway(b, 3, ErrorCode::PeerEof, b"read EOF from remote peer"),
            bytes: "00 00 21 30 00 00 00 00 00 00 00 03 00 00 00 0F \
                    72 65 61 64 20 45 4F 46 20 66 72 6F 6D 20 72 65 6D 6F 74 65 20 70 65 65 72",
        },
        Vector {
            name: "#17 typed stream open type 1 stream 3",
            frame: Frame::Data {
                stream_id: 3,
                flags: FLAG_SYN,
                payload: &[0, 0, 0, 1],
            },
            encode: |b| encode_data(b, 3, &[0, 0, 0, 1], FLAG_SYN),
            bytes: "00 00 04 12 00 00 00 03 00 00 00 01",
        },
        Vector {
            name: "#18 heartbeat stream open stream 3",
            frame: Frame::Data {
                stream_id: 3,
                flags: FLAG_SYN,
                payload: &[0xFF; 4],
            },
            encode: |b| encode_data(b, 3, &[0xFF; 4], FLAG_SYN),
            bytes: "00 00 04 12 00 00 00 03 FF FF FF FF",
        },
        Vector {
            name: "#19 heartbeat ping 0x12345678 stream 3",
            frame: Frame::Data {
                stream_id: 3,
                flags: 0,
                payload: &[0x12, 0x34, 0x56, 0x78],
            },
            encode: |b| encode_data(b, 3, &[0x12, 0x34, 0x56, 0x78], 0),
            bytes: "00 00 04 10 00 00 00 03 12 34 56 78",
        },
        Vector {
            name: "#20 WNDINC(4) stream 3",
            frame: Frame::WndInc {
                stream_id: 3,
                increment: 4,
            },
            encode: |b| encode_wndinc(b, 3, 4),
            bytes: "00 00 04 20 00 00 00 03 00 00 00 04",
        },
        Vector {
            name: "coalesced typed SYN: type 1 + \"hi\" on stream 5",
            frame: Frame::Data {
                stream_id: 5,
                flags: FLAG_SYN,
                payload: &[0, 0, 0, 1, 0x68, 0x69],
            },
            encode: |b| encode_data(b, 5, &[0, 0, 0, 1, 0x68, 0x69], FLAG_SYN),
            bytes: "00 00 06 12 00 00 00 05 00 00 00 01 68 69",
        },
    ]
}

/// The shared harness: encode-compare-bytes (both the dedicated encoder and
/// `Frame::encode`), decode-compare-fields (also with trailing bytes, which
/// must not be consumed), and an encode→decode round trip.
fn run_vector(v: &Vector) {
    let want = hex(v.bytes);

    let got = encoded(v.encode);
    assert_eq!(got, want, "{}: dedicated encoder bytes", v.name);
    let got = encoded(|b| v.frame.encode(b));
    assert_eq!(got, want, "{}: Frame::encode bytes", v.name);

    let (f, n) = decode_ok(&want);
    assert_eq!(f, v.frame, "{}: decoded fields", v.name);
    assert_eq!(n, want.len(), "{}: consumed length", v.name);

    let mut trailing = want.clone();
    trailing.extend_from_slice(&hex("00 00 04 20 00 00 00 03 00 00 00 04 AA"));
    let (f, n) = decode_ok(&trailing);
    assert_eq!(f, v.frame, "{}: decoded fields with trailing bytes", v.name);
    assert_eq!(
        n,
        want.len(),
        "{}: consumed length with trailing bytes",
        v.name
    );

    let mut buf = Vec::new();
    v.frame.encode(&mut buf).unwrap();
    let (f, n) = decode_ok(&buf);
    assert_eq!((f, n), (v.frame, want.len()), "{}: round trip", v.name);
}

#[test]
fn section13_vectors_encode_decode_and_round_trip() {
    let vectors = section13();
    assert_eq!(
        vectors.len(),
        21,
        "#1..#20 plus the coalesced frame (#21 is tested alone)"
    );
    for v in &vectors {
        run_vector(v);
    }
}

#[test]
fn section13_vectors_back_to_back_in_one_window() {
    let vectors = section13();
    let stream: Vec<u8> = vectors.iter().flat_map(|v| hex(v.bytes)).collect();
    let mut at = 0;
    for v in &vectors {
        let (f, n) = decode_ok(&stream[at..]);
        assert_eq!(f, v.frame, "{} in a stream", v.name);
        at += n;
    }
    assert_eq!(at, stream.len());
    assert_eq!(
        Frame::decode(&stream[at..]),
        Ok(Decode::Incomplete(HEADER_LEN))
    );
}

#[test]
fn section13_vector21_largest_data_header() {
    let want = hex("FF FF FF 10 7F FF FF FF");
    let got = encoded(|b| encode_data_header(b, MAX_STREAM_ID, MAX_PAYLOAD as usize, 0));
    assert_eq!(got, want);
    assert_eq!(
        Header::decode(want.as_slice().try_into().unwrap()),
        Header {
            length: 0xFF_FFFF,
            ty: FrameType::Data,
            flags: 0,
            stream_id: 0x7FFF_FFFF
        }
    );
    // The header alone is not a frame: the whole 16 MiB + 8 is needed.
    assert_eq!(Frame::decode(&want), Ok(Decode::Incomplete(8 + 0xFF_FFFF)));

    // And with the whole payload it is one maximal DATA frame.
    let payload = vec![0xA5; MAX_PAYLOAD as usize];
    let buf = encoded(|b| encode_data(b, MAX_STREAM_ID, &payload, 0));
    assert_eq!(&buf[..8], &want[..]);
    assert_eq!(buf.len(), 8 + 0xFF_FFFF);
    let (f, n) = decode_ok(&buf);
    assert_eq!(n, buf.len());
    assert_eq!(
        f,
        Frame::Data {
            stream_id: MAX_STREAM_ID,
            flags: 0,
            payload: &payload
        }
    );
    // One byte short is incomplete.
    assert_eq!(
        Frame::decode(&buf[..buf.len() - 1]),
        Ok(Decode::Incomplete(buf.len()))
    );
}

// ---------------------------------------------------------------------------
// frame/common_test.go: TestPack
// ---------------------------------------------------------------------------

struct PackTest {
    ty: u8,
    /// As in Go an `int`: -1 is the "negative length" case.
    length: i64,
    stream_id: u32,
    flags: u8,
    serialized: &'static str,
    serialize_error: bool,
}

fn pack_tests() -> [PackTest; 9] {
    let p = |ty, length, stream_id, flags, serialized, serialize_error| PackTest {
        ty,
        length,
        stream_id,
        flags,
        serialized,
        serialize_error,
    };
    [
        p(0x0, 0x4, 0x2843, 0, "00 00 04 00 00 00 28 43", false),
        p(0x7, 0x37BD, 0x0, 0x2, "00 37 BD 72 00 00 00 00", false),
        p(0x0, 0, 0, 0, "00 00 00 00 00 00 00 00", false),
        p(
            0xF,
            0xFF_FFFF,
            0x7FFF_FFFF,
            0xF,
            "FF FF FF FF 7F FF FF FF",
            false,
        ),
        p(
            0xC,
            0x0F_1DAA,
            0x4F22_4719,
            0xF,
            "0F 1D AA CF 4F 22 47 19",
            false,
        ),
        p(
            0xC,
            0x0F_1DAA,
            0x8000_0000,
            0xF,
            "0F 1D AA CF 80 00 00 00",
            true,
        ),
        p(0x0, 0, 0xFFFF_FFFF, 0, "00 00 00 00 FF FF FF FF", true),
        p(0x0, 0x100_0000, 0x1, 0, "00 00 00 00 00 00 00 01", true),
        p(0x0, -1, 0x1, 0, "00 00 00 00 00 00 00 01", true),
    ]
}

impl PackTest {
    fn header(&self) -> Header {
        Header {
            // A negative Go int arrives as a huge u32 here; it must still fail.
            length: self.length as u32,
            ty: FrameType::from_u4(self.ty),
            flags: self.flags,
            stream_id: self.stream_id,
        }
    }
}

#[test]
fn go_test_pack_serialization() {
    for pt in pack_tests() {
        let mut buf = Vec::new();
        let res = pt.header().encode(&mut buf);
        if pt.serialize_error {
            assert!(res.is_err(), "expected a packing error: {}", pt.serialized);
            assert!(buf.is_empty(), "a failed encode must write nothing");
        } else {
            assert_eq!(res, Ok(()), "{}", pt.serialized);
            assert_eq!(buf, hex(pt.serialized));
        }
    }
    // The specific errors.
    let errs: Vec<_> = pack_tests()
        .iter()
        .filter(|pt| pt.serialize_error)
        .map(|pt| pt.header().encode(&mut Vec::new()).unwrap_err())
        .collect();
    assert_eq!(
        errs,
        [
            EncodeError::StreamIdTooLarge(0x8000_0000),
            EncodeError::StreamIdTooLarge(0xFFFF_FFFF),
            EncodeError::PayloadTooLarge(0x100_0000),
            EncodeError::PayloadTooLarge(0xFFFF_FFFF),
        ]
    );
}

#[test]
fn go_test_pack_deserialization_never_fails_and_is_raw() {
    for pt in pack_tests() {
        let bytes: [u8; 8] = hex(pt.serialized).try_into().unwrap();
        let h = Header::decode(&bytes);
        assert_eq!(h.ty.to_u4(), pt.ty, "{}", pt.serialized);
        assert_eq!(h.flags, pt.flags, "{}", pt.serialized);
        assert_eq!(
            h.stream_id, pt.stream_id,
            "{}: reserved bit not masked",
            pt.serialized
        );
        if !pt.serialize_error {
            assert_eq!(h.length as i64, pt.length, "{}", pt.serialized);
        }
    }
    let h = Header::decode(&[0xFF; 8]);
    assert_eq!(
        h,
        Header {
            length: 0xFF_FFFF,
            ty: FrameType::Unknown(0xF),
            flags: 0xF,
            stream_id: 0xFFFF_FFFF
        }
    );
}

#[test]
fn go_test_pack_round_trip() {
    for pt in pack_tests().iter().filter(|pt| !pt.serialize_error) {
        let mut buf = Vec::new();
        pt.header().encode(&mut buf).unwrap();
        let h = Header::decode(buf.as_slice().try_into().unwrap());
        assert_eq!(h, pt.header(), "{}", pt.serialized);
    }
}

#[test]
fn header_type_nibble_names_the_frame_type_and_flags_are_masked() {
    let types = [
        FrameType::Rst,
        FrameType::Data,
        FrameType::WndInc,
        FrameType::GoAway,
    ];
    for (t, want) in types.into_iter().enumerate() {
        assert_eq!(FrameType::from_u4(t as u8), want);
        assert_eq!(want.to_u4(), t as u8);
    }
    for t in 4..=15u8 {
        assert_eq!(FrameType::from_u4(t), FrameType::Unknown(t));
        assert_eq!(FrameType::Unknown(t).to_u4(), t);
    }
    // Flags above 4 bits do not leak into the type nibble.
    let mut buf = Vec::new();
    Header {
        length: 0,
        ty: FrameType::Data,
        flags: 0xF3,
        stream_id: 1,
    }
    .encode(&mut buf)
    .unwrap();
    assert_eq!(buf, hex("00 00 00 13 00 00 00 01"));
    let h = Header::decode(buf.as_slice().try_into().unwrap());
    assert!(h.fin() && h.syn());
}

// ---------------------------------------------------------------------------
// frame/data_test.go
// ---------------------------------------------------------------------------

#[test]
fn go_data_valid_five_bytes() {
    let payload = [0x1, 0x2, 0x3, 0x4, 0x5];
    let buf = encoded(|b| encode_data(b, 0x49a1_bb00, &payload, 0));
    assert_eq!(buf, hex("00 00 05 10 49 A1 BB 00 01 02 03 04 05"));
    let (f, n) = decode_ok(&buf);
    assert_eq!(n, 13);
    assert_eq!(
        f,
        Frame::Data {
            stream_id: 0x49a1_bb00,
            flags: 0,
            payload: &payload
        }
    );
}

#[test]
fn go_data_fin_at_max_stream_id() {
    let payload: Vec<u8> = (0..16).collect();
    let buf = encoded(|b| encode_data(b, MAX_STREAM_ID, &payload, FLAG_FIN));
    assert_eq!(&buf[..8], &hex("00 00 10 11 7F FF FF FF")[..]);
    assert_eq!(&buf[8..], &payload[..]);
    let (f, n) = decode_ok(&buf);
    assert_eq!(n, 24);
    assert_eq!(
        f,
        Frame::Data {
            stream_id: MAX_STREAM_ID,
            flags: FLAG_FIN,
            payload: &payload
        }
    );
}

#[test]
fn go_data_zero_length() {
    let buf = encoded(|b| encode_data(b, 0x1, b"", 0));
    assert_eq!(buf, hex("00 00 00 10 00 00 00 01"));
    assert_eq!(
        decode_ok(&buf),
        (
            Frame::Data {
                stream_id: 1,
                flags: 0,
                payload: b""
            },
            8
        )
    );
}

#[test]
fn go_data_too_long_fails_to_encode() {
    let payload = vec![0u8; MAX_PAYLOAD as usize + 1];
    let mut buf = Vec::new();
    assert_eq!(
        encode_data(&mut buf, 1, &payload, 0),
        Err(EncodeError::PayloadTooLarge(0x100_0000))
    );
    assert!(buf.is_empty(), "nothing written on error");
    assert_eq!(
        encode_data_header(&mut buf, 1, 0x100_0000, 0),
        Err(EncodeError::PayloadTooLarge(0x100_0000))
    );
    assert!(buf.is_empty());
}

#[test]
fn go_data_bad_stream_ids_fail_to_encode() {
    let mut buf = Vec::new();
    assert_eq!(
        encode_data(&mut buf, 0, b"x", 0),
        Err(EncodeError::StreamIdZero)
    );
    assert_eq!(
        encode_data(&mut buf, 0x8000_0000, b"x", 0),
        Err(EncodeError::StreamIdTooLarge(0x8000_0000))
    );
    assert!(buf.is_empty());
}

#[test]
fn go_data_decode_reads_exactly_length_bytes() {
    // Header says 4 bytes, 10 follow.
    let buf = hex("00 00 04 10 00 00 00 09 01 02 03 04 05 06 07 08 09 0A");
    let (f, n) = decode_ok(&buf);
    assert_eq!(n, 12);
    assert_eq!(
        f,
        Frame::Data {
            stream_id: 9,
            flags: 0,
            payload: &[1, 2, 3, 4]
        }
    );
}

#[test]
fn data_unused_flags_are_kept_on_decode() {
    // 0x4 and 0x8 are unused: written 0 by Go, ignored (but visible) on read.
    let buf = hex("00 00 00 1F 00 00 00 03");
    assert_eq!(
        decode_ok(&buf),
        (
            Frame::Data {
                stream_id: 3,
                flags: 0xF,
                payload: b""
            },
            8
        )
    );
}

#[test]
fn data_on_stream_zero_is_a_protocol_error() {
    let e = decode_err(&hex("00 00 02 10 00 00 00 00 68 69"));
    assert_eq!(e, FrameError::StreamIdZero(FrameType::Data));
    assert_eq!(e.code(), ErrorCode::ProtocolError);
}

// ---------------------------------------------------------------------------
// frame/rst_test.go
// ---------------------------------------------------------------------------

#[test]
fn go_rst_valid() {
    for (id, code, bytes) in [
        (
            0x49a1_bb00,
            ErrorCode::StreamRefused,
            "00 00 04 00 49 A1 BB 00 00 00 00 05",
        ),
        (
            0x1,
            ErrorCode::NoError,
            "00 00 04 00 00 00 00 01 00 00 00 00",
        ),
    ] {
        let buf = encoded(|b| encode_rst(b, id, code));
        assert_eq!(buf, hex(bytes));
        assert_eq!(
            decode_ok(&buf),
            (
                Frame::Rst {
                    stream_id: id,
                    code
                },
                12
            )
        );
    }
}

#[test]
fn go_rst_length_3_is_a_frame_size_error() {
    let e = decode_err(&hex("00 00 03 00 00 00 00 01 00 00 00"));
    assert_eq!(e, FrameError::RstLength(3));
    assert_eq!(e.code(), ErrorCode::FrameSizeError);
    // Length is checked before the stream id, as in Go.
    assert_eq!(
        decode_err(&hex("00 00 05 00 00 00 00 00")),
        FrameError::RstLength(5)
    );
}

#[test]
fn go_rst_stream_zero_is_a_protocol_error() {
    let e = decode_err(&hex("00 00 04 00 00 00 00 00 00 00 00 05"));
    assert_eq!(e, FrameError::StreamIdZero(FrameType::Rst));
    assert_eq!(e.code(), ErrorCode::ProtocolError);
    let mut buf = Vec::new();
    assert_eq!(
        encode_rst(&mut buf, 0, ErrorCode::NoError),
        Err(EncodeError::StreamIdZero)
    );
    assert!(buf.is_empty());
}

#[test]
fn go_rst_short_body_is_incomplete() {
    let full = hex("00 00 04 00 00 00 00 01 00 00 00 05");
    for cut in 8..full.len() {
        assert_eq!(
            Frame::decode(&full[..cut]),
            Ok(Decode::Incomplete(12)),
            "cut at {cut}"
        );
    }
}

#[test]
fn rst_unknown_codes_are_preserved() {
    let buf = hex("00 00 04 00 00 00 00 01 DE AD BE EF");
    let (f, _) = decode_ok(&buf);
    assert_eq!(
        f,
        Frame::Rst {
            stream_id: 1,
            code: ErrorCode::Other(0xDEAD_BEEF)
        }
    );
    assert_eq!(encoded(|b| f.encode(b)), buf);
}

// ---------------------------------------------------------------------------
// frame/wndinc_test.go
// ---------------------------------------------------------------------------

#[test]
fn go_wndinc_valid() {
    for (id, inc, bytes) in [
        (
            0x49a1_bb00,
            0x12_c498,
            "00 00 04 20 49 A1 BB 00 00 12 C4 98",
        ),
        (
            0x7FFF_FFFF,
            0x7FFF_FFFF,
            "00 00 04 20 7F FF FF FF 7F FF FF FF",
        ),
    ] {
        let buf = encoded(|b| encode_wndinc(b, id, inc));
        assert_eq!(buf, hex(bytes));
        assert_eq!(
            decode_ok(&buf),
            (
                Frame::WndInc {
                    stream_id: id,
                    increment: inc
                },
                12
            )
        );
    }
}

#[test]
fn go_wndinc_zero_increment_is_a_protocol_error() {
    let e = decode_err(&hex("00 00 04 20 00 00 00 01 00 00 00 00"));
    assert_eq!(e, FrameError::ZeroIncrement);
    assert_eq!(e.code(), ErrorCode::ProtocolError);
}

#[test]
fn wndinc_increment_top_bit_is_masked() {
    // 0x80000000 masks to 0: still a zero increment.
    let e = decode_err(&hex("00 00 04 20 00 00 00 01 80 00 00 00"));
    assert_eq!(e, FrameError::ZeroIncrement);
    assert_eq!(e.code(), ErrorCode::ProtocolError);
    // 0x80000005 masks to 5.
    assert_eq!(
        decode_ok(&hex("00 00 04 20 00 00 00 01 80 00 00 05")),
        (
            Frame::WndInc {
                stream_id: 1,
                increment: 5
            },
            12
        )
    );
}

#[test]
fn go_wndinc_length_5_is_a_frame_size_error() {
    let e = decode_err(&hex("00 00 05 20 00 00 00 01 00 00 00 00 01"));
    assert_eq!(e, FrameError::WndIncLength(5));
    assert_eq!(e.code(), ErrorCode::FrameSizeError);
    assert_eq!(
        decode_err(&hex("00 00 00 20 00 00 00 01")),
        FrameError::WndIncLength(0)
    );
}

#[test]
fn go_wndinc_short_body_is_incomplete() {
    let full = hex("00 00 04 20 00 00 00 01 00 00 00 05");
    for cut in 8..full.len() {
        assert_eq!(
            Frame::decode(&full[..cut]),
            Ok(Decode::Incomplete(12)),
            "cut at {cut}"
        );
    }
}

#[test]
fn wndinc_stream_zero_is_a_protocol_error() {
    let e = decode_err(&hex("00 00 04 20 00 00 00 00 00 00 00 05"));
    assert_eq!(e, FrameError::StreamIdZero(FrameType::WndInc));
    assert_eq!(e.code(), ErrorCode::ProtocolError);
}

#[test]
fn wndinc_encoder_rejects_out_of_range_values() {
    let mut buf = Vec::new();
    assert_eq!(
        encode_wndinc(&mut buf, 1, 0),
        Err(EncodeError::BadIncrement(0))
    );
    assert_eq!(
        encode_wndinc(&mut buf, 1, 0x8000_0000),
        Err(EncodeError::BadIncrement(0x8000_0000))
    );
    assert_eq!(
        encode_wndinc(&mut buf, 0, 1),
        Err(EncodeError::StreamIdZero)
    );
    assert_eq!(
        encode_wndinc(&mut buf, 0x8000_0001, 1),
        Err(EncodeError::StreamIdTooLarge(0x8000_0001))
    );
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// GOAWAY (Go has no tests; these are ours)
// ---------------------------------------------------------------------------

#[test]
fn goaway_shorter_than_8_is_a_frame_size_error() {
    for len in 0..8u8 {
        let mut buf = vec![0, 0, len, 0x30, 0, 0, 0, 0];
        buf.extend(std::iter::repeat(0).take(len as usize));
        let e = decode_err(&buf);
        assert_eq!(e, FrameError::GoAwayLength(len as u32));
        assert_eq!(e.code(), ErrorCode::FrameSizeError);
    }
}

#[test]
fn goaway_on_a_stream_is_a_protocol_error() {
    for id in [1u32, 2, 0x7FFF_FFFF, 0x8000_0000] {
        let mut buf = hex("00 00 08 30");
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&[0; 8]);
        let e = decode_err(&buf);
        assert_eq!(e, FrameError::GoAwayStreamId(id));
        assert_eq!(e.code(), ErrorCode::ProtocolError);
    }
}

#[test]
fn goaway_debug_empty_and_large() {
    let buf = encoded(|b| encode_goaway(b, 0, ErrorCode::NoError, b""));
    assert_eq!(buf, hex("00 00 08 30 00 00 00 00 00 00 00 00 00 00 00 00"));
    assert_eq!(
        decode_ok(&buf),
        (
            Frame::GoAway {
                last_stream_id: 0,
                code: ErrorCode::NoError,
                debug: b""
            },
            16
        )
    );

    let debug: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let buf = encoded(|b| encode_goaway(b, 0x7FFF_FFFF, ErrorCode::InternalError, &debug));
    let len = 8 + debug.len() as u32;
    assert_eq!(&buf[..3], &len.to_be_bytes()[1..]);
    assert_eq!(
        &buf[3..16],
        &hex("30 00 00 00 00 7F FF FF FF 00 00 00 02")[..]
    );
    let (f, n) = decode_ok(&buf);
    assert_eq!(n, 16 + debug.len());
    assert_eq!(
        f,
        Frame::GoAway {
            last_stream_id: 0x7FFF_FFFF,
            code: ErrorCode::InternalError,
            debug: &debug
        }
    );
}

#[test]
fn goaway_reads_exactly_its_debug_and_the_next_frame_follows() {
    let mut buf = encoded(|b| encode_goaway(b, 5, ErrorCode::NoError, b"no error"));
    encode_data(&mut buf, 3, b"hi", FLAG_FIN).unwrap();
    encode_wndinc(&mut buf, 3, 4).unwrap();

    let (f, n) = decode_ok(&buf);
    assert_eq!(
        f,
        Frame::GoAway {
            last_stream_id: 5,
            code: ErrorCode::NoError,
            debug: b"no error"
        }
    );
    assert_eq!(n, 24);
    let (f, m) = decode_ok(&buf[n..]);
    assert_eq!(
        f,
        Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            payload: b"hi"
        }
    );
    let (f, k) = decode_ok(&buf[n + m..]);
    assert_eq!(
        f,
        Frame::WndInc {
            stream_id: 3,
            increment: 4
        }
    );
    assert_eq!(n + m + k, buf.len());
}

#[test]
fn goaway_last_stream_id_is_not_masked_on_decode_but_checked_on_encode() {
    let buf = hex("00 00 08 30 00 00 00 00 80 00 00 07 00 00 00 00");
    assert_eq!(
        decode_ok(&buf).0,
        Frame::GoAway {
            last_stream_id: 0x8000_0007,
            code: ErrorCode::NoError,
            debug: b""
        }
    );
    let mut out = Vec::new();
    assert_eq!(
        encode_goaway(&mut out, 0x8000_0007, ErrorCode::NoError, b""),
        Err(EncodeError::StreamIdTooLarge(0x8000_0007))
    );
    let too_long = vec![0u8; MAX_PAYLOAD as usize - 7];
    assert_eq!(
        encode_goaway(&mut out, 0, ErrorCode::NoError, &too_long),
        Err(EncodeError::PayloadTooLarge(MAX_PAYLOAD as usize + 1))
    );
    assert!(out.is_empty());
    // Exactly the maximum still fits.
    let max = vec![0u8; MAX_PAYLOAD as usize - 8];
    encode_goaway(&mut out, 0, ErrorCode::NoError, &max).unwrap();
    assert_eq!(&out[..4], &hex("FF FF FF 30")[..]);
}

#[test]
fn goaway_short_fixed_body_is_incomplete() {
    let full = hex("00 00 0A 30 00 00 00 00 00 00 00 01 00 00 00 00 41 42");
    for cut in 8..full.len() {
        assert_eq!(
            Frame::decode(&full[..cut]),
            Ok(Decode::Incomplete(18)),
            "cut at {cut}"
        );
    }
    assert_eq!(
        decode_ok(&full),
        (
            Frame::GoAway {
                last_stream_id: 1,
                code: ErrorCode::NoError,
                debug: b"AB"
            },
            18
        )
    );
}

// ---------------------------------------------------------------------------
// Unknown types, reserved bit, error codes, Incomplete
// ---------------------------------------------------------------------------

#[test]
fn unknown_types_4_to_15_decode_with_their_payload() {
    for ty in 4..=15u8 {
        // Any stream id (0, the reserved bit...) and any flags are accepted.
        for id in [0u32, 7, 0x8000_0001] {
            let mut buf = vec![0, 0, 3, (ty << 4) | 0x5];
            buf.extend_from_slice(&id.to_be_bytes());
            buf.extend_from_slice(b"xyz!!");
            let (f, n) = decode_ok(&buf);
            assert_eq!(n, 11, "type {ty}: exactly 3 payload bytes consumed");
            assert_eq!(
                f,
                Frame::Unknown {
                    ty,
                    flags: 5,
                    stream_id: id,
                    payload: b"xyz"
                }
            );
            if id <= MAX_STREAM_ID {
                assert_eq!(encoded(|b| f.encode(b)), buf[..11], "type {ty} re-encodes");
            }
        }
        // An unknown frame of length 0 is a whole frame; a long one needs its payload.
        assert_eq!(
            decode_ok(&[0, 0, 0, ty << 4, 0, 0, 0, 0]),
            (
                Frame::Unknown {
                    ty,
                    flags: 0,
                    stream_id: 0,
                    payload: b""
                },
                8
            )
        );
        assert_eq!(
            Frame::decode(&[0, 1, 0, ty << 4, 0, 0, 0, 0, 1, 2]),
            Ok(Decode::Incomplete(8 + 256))
        );
    }
}

#[test]
fn reserved_bit_on_data_rst_wndinc_is_a_protocol_error() {
    for (ty, body) in [
        (FrameType::Rst, &[0u8, 0, 0, 4][..]),
        (FrameType::Data, &b"hi"[..]),
        (FrameType::WndInc, &[0u8, 0, 0, 4][..]),
    ] {
        for id in [0x8000_0000u32, 0x8000_0003, 0xFFFF_FFFF] {
            let mut buf = vec![0, 0, body.len() as u8, ty.to_u4() << 4];
            buf.extend_from_slice(&id.to_be_bytes());
            buf.extend_from_slice(body);
            let e = decode_err(&buf);
            assert_eq!(e, FrameError::ReservedBit(ty, id), "{ty:?} id {id:#x}");
            assert_eq!(e.code(), ErrorCode::ProtocolError);
            // The header alone is enough to reject it.
            assert_eq!(decode_err(&buf[..8]), e);
            let h = Header::decode(buf[..8].try_into().unwrap());
            assert_eq!(h.validate(), Err(e));
        }
    }
}

#[test]
fn every_frame_error_maps_to_its_wire_code() {
    use FrameError::*;
    let cases = [
        (RstLength(3), ErrorCode::FrameSizeError),
        (WndIncLength(5), ErrorCode::FrameSizeError),
        (GoAwayLength(7), ErrorCode::FrameSizeError),
        (StreamIdZero(FrameType::Rst), ErrorCode::ProtocolError),
        (StreamIdZero(FrameType::Data), ErrorCode::ProtocolError),
        (StreamIdZero(FrameType::WndInc), ErrorCode::ProtocolError),
        (GoAwayStreamId(1), ErrorCode::ProtocolError),
        (ZeroIncrement, ErrorCode::ProtocolError),
        (
            ReservedBit(FrameType::Data, 0x8000_0001),
            ErrorCode::ProtocolError,
        ),
    ];
    for (e, code) in cases {
        assert_eq!(e.code(), code, "{e:?}");
        assert_eq!(
            e.code().to_u32(),
            if code == ErrorCode::FrameSizeError {
                8
            } else {
                1
            }
        );
        assert!(!e.reason().is_empty());
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn incomplete_reports_the_total_bytes_needed() {
    // Fewer than 8 bytes: the header is needed.
    for n in 0..HEADER_LEN {
        assert_eq!(Frame::decode(&[0u8; 7][..n]), Ok(Decode::Incomplete(8)));
    }
    // With a header: header + length, whatever is already there.
    let buf = hex("00 01 00 10 00 00 00 01 AA BB");
    assert_eq!(Frame::decode(&buf), Ok(Decode::Incomplete(8 + 0x100)));
    assert_eq!(Frame::decode(&buf[..8]), Ok(Decode::Incomplete(8 + 0x100)));
    let buf = hex("00 00 10 30 00 00 00 00 00 00 00 07");
    assert_eq!(Frame::decode(&buf), Ok(Decode::Incomplete(24)));
    // A bad header is reported at once, without waiting for the body.
    assert_eq!(
        decode_err(&hex("00 00 10 00 00 00 00 01")),
        FrameError::RstLength(16)
    );
}
