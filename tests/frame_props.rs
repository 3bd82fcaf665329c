//! Property tests for the muxado wire codec.
//!
//! Runs with a fixed RNG seed and modest case counts so the file is fast and
//! deterministic (no regression files are written: a failure reproduces from
//! the seed).

use muxado::frame::{
    encode_data, encode_data_header, encode_goaway, encode_rst, encode_wndinc, Decode, EncodeError,
    Frame, FrameType, Header, HEADER_LEN, MAX_PAYLOAD, MAX_STREAM_ID, MAX_WINDOW_INCREMENT,
};
use muxado::ErrorCode;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x6d75_7861_646f),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A valid frame that owns its payload, so strategies can produce it.
#[derive(Clone, Debug)]
enum Owned {
    Rst(u32, u32),
    Data(u32, u8, Vec<u8>),
    WndInc(u32, u32),
    GoAway(u32, u32, Vec<u8>),
    Unknown(u8, u8, u32, Vec<u8>),
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Rst(stream_id, code) => Frame::Rst {
                stream_id: *stream_id,
                code: ErrorCode::from_u32(*code),
            },
            Owned::Data(stream_id, flags, payload) => Frame::Data {
                stream_id: *stream_id,
                flags: *flags,
                payload,
            },
            Owned::WndInc(stream_id, increment) => Frame::WndInc {
                stream_id: *stream_id,
                increment: *increment,
            },
            Owned::GoAway(last_stream_id, code, debug) => Frame::GoAway {
                last_stream_id: *last_stream_id,
                code: ErrorCode::from_u32(*code),
                debug,
            },
            Owned::Unknown(ty, flags, stream_id, payload) => Frame::Unknown {
                ty: *ty,
                flags: *flags,
                stream_id: *stream_id,
                payload,
            },
        }
    }
}

fn stream_id() -> impl Strategy<Value = u32> {
    prop_oneof![1..=8u32, Just(MAX_STREAM_ID), 1..=MAX_STREAM_ID]
}

fn code() -> impl Strategy<Value = u32> {
    prop_oneof![0..=16u32, Just(0xFF), any::<u32>()]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

fn valid_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (stream_id(), code()).prop_map(|(id, c)| Owned::Rst(id, c)),
        (stream_id(), 0..=15u8, payload()).prop_map(|(id, f, p)| Owned::Data(id, f, p)),
        (
            stream_id(),
            prop_oneof![1..=4096u32, 1..=MAX_WINDOW_INCREMENT]
        )
            .prop_map(|(id, i)| Owned::WndInc(id, i)),
        (0..=MAX_STREAM_ID, code(), payload()).prop_map(|(l, c, d)| Owned::GoAway(l, c, d)),
        (4..=15u8, 0..=15u8, 0..=MAX_STREAM_ID, payload())
            .prop_map(|(t, f, id, p)| Owned::Unknown(t, f, id, p)),
    ]
}

fn encode(f: &Frame<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    f.encode(&mut b).expect("valid frames encode");
    b
}

/// Byte-level noise: either anything, or a plausible header (small length,
/// any type/flags/id) followed by anything, so that bodies are reached.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (
            0..40u8,
            any::<u8>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(len, b3, id, tail)| {
                let mut v = vec![0, 0, len, b3];
                v.extend_from_slice(&id.to_be_bytes());
                v.extend(tail);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Frames encoded back to back decode, in order, to the same frames, each
    /// consuming exactly its own bytes, and the empty rest asks for a header.
    #[test]
    fn sequences_round_trip_back_to_back(frames in prop::collection::vec(valid_frame(), 0..16)) {
        let mut wire = Vec::new();
        let mut sizes = Vec::new();
        for f in &frames {
            let before = wire.len();
            f.frame().encode(&mut wire).unwrap();
            sizes.push(wire.len() - before);
        }
        let mut at = 0;
        for (f, size) in frames.iter().zip(&sizes) {
            match Frame::decode(&wire[at..]) {
                Ok(Decode::Frame(got, n)) => {
                    prop_assert_eq!(got, f.frame());
                    prop_assert_eq!(n, *size);
                    at += n;
                }
                other => prop_assert!(false, "expected a frame at {}, got {:?}", at, other),
            }
        }
        prop_assert_eq!(at, wire.len());
        prop_assert_eq!(Frame::decode(&wire[at..]), Ok(Decode::Incomplete(HEADER_LEN)));
    }

    /// The same sequence delivered in arbitrary chunks to a growing window,
    /// the way a reader would see it: every frame comes out once, in order,
    /// and every `Incomplete(n)` asks for more than the window holds but no
    /// more than the frame really needs.
    #[test]
    fn sequences_decode_from_a_growing_window(
        frames in prop::collection::vec(valid_frame(), 1..12),
        chunks in prop::collection::vec(1..40usize, 1..64),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(&f.frame())).collect();
        let mut bounds = Vec::new(); // end offset of each frame
        let mut end = 0;
        for f in &frames {
            end += encode(&f.frame()).len();
            bounds.push(end);
        }
        let (mut start, mut filled, mut next, mut chunk) = (0usize, 0usize, 0usize, 0usize);
        while next < frames.len() {
            filled = (filled + chunks[chunk % chunks.len()]).min(wire.len());
            chunk += 1;
            while next < frames.len() {
                match Frame::decode(&wire[start..filled]) {
                    Ok(Decode::Frame(got, n)) => {
                        prop_assert_eq!(got, frames[next].frame());
                        prop_assert_eq!(start + n, bounds[next]);
                        start += n;
                        next += 1;
                    }
                    Ok(Decode::Incomplete(n)) => {
                        prop_assert!(n > filled - start, "Incomplete({}) with {} bytes", n, filled - start);
                        prop_assert!(start + n <= bounds[next]);
                        if filled - start >= HEADER_LEN {
                            prop_assert_eq!(start + n, bounds[next]);
                        } else {
                            prop_assert_eq!(n, HEADER_LEN);
                        }
                        break;
                    }
                    Err(e) => prop_assert!(false, "valid stream failed: {:?}", e),
                }
            }
        }
        prop_assert_eq!(start, wire.len());
    }

    /// Every proper prefix of a valid frame is `Incomplete` with the total the
    /// frame needs (8 until the header is there), never an error or a frame.
    #[test]
    fn every_truncation_is_incomplete(f in valid_frame(), trailing in payload()) {
        let bytes = encode(&f.frame());
        for cut in 0..bytes.len() {
            let want = if cut < HEADER_LEN { HEADER_LEN } else { bytes.len() };
            prop_assert_eq!(Frame::decode(&bytes[..cut]), Ok(Decode::Incomplete(want)), "cut {}", cut);
        }
        let mut more = bytes.clone();
        more.extend_from_slice(&trailing);
        prop_assert_eq!(Frame::decode(&more), Ok(Decode::Frame(f.frame(), bytes.len())));
    }

    /// Arbitrary bytes never panic the decoder, and whatever it says is
    /// coherent: a frame takes between 8 and all of the bytes and re-encodes
    /// (when encodable) to something that decodes to itself; `Incomplete`
    /// asks for more than there is; errors carry code 1 or 8.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in noise()) {
        match Frame::decode(&bytes) {
            Ok(Decode::Frame(f, n)) => {
                prop_assert!((HEADER_LEN..=bytes.len()).contains(&n));
                let h = Header::decode(bytes[..8].try_into().unwrap());
                prop_assert_eq!(n, HEADER_LEN + h.length as usize);
                prop_assert_eq!(h.validate(), Ok(()));
                let mut again = Vec::new();
                if f.encode(&mut again).is_ok() {
                    prop_assert_eq!(again.len(), n);
                    prop_assert_eq!(Frame::decode(&again), Ok(Decode::Frame(f, n)));
                } else {
                    prop_assert!(again.is_empty());
                }
            }
            Ok(Decode::Incomplete(n)) => prop_assert!(n > bytes.len()),
            Err(e) => {
                let c = e.code();
                prop_assert!(c == ErrorCode::ProtocolError || c == ErrorCode::FrameSizeError);
                // Header errors are decided by the header alone.
                let h = Header::decode(bytes[..8].try_into().unwrap());
                if let Err(he) = h.validate() {
                    prop_assert_eq!(he, e);
                }
            }
        }
    }

    /// Every 8-byte pattern is a header, and valid headers round-trip.
    #[test]
    fn any_header_decodes(b in any::<[u8; 8]>()) {
        let h = Header::decode(&b);
        prop_assert!(h.length <= MAX_PAYLOAD && h.flags <= 0xF);
        let mut out = Vec::new();
        match h.encode(&mut out) {
            Ok(()) => prop_assert_eq!(&out[..], &b[..]),
            Err(e) => {
                prop_assert_eq!(e, EncodeError::StreamIdTooLarge(h.stream_id));
                prop_assert!(out.is_empty());
            }
        }
    }

    /// The encoders never panic, accept exactly the in-range inputs, write
    /// nothing on error and, on success, produce one decodable frame.
    #[test]
    fn encoders_never_panic(
        id in prop_oneof![Just(0u32), Just(MAX_STREAM_ID), Just(MAX_STREAM_ID + 1), any::<u32>()],
        flags in any::<u8>(),
        num in prop_oneof![Just(0u32), Just(MAX_WINDOW_INCREMENT), Just(MAX_WINDOW_INCREMENT + 1), any::<u32>()],
        len in prop_oneof![Just(MAX_PAYLOAD as usize), Just(MAX_PAYLOAD as usize + 1), any::<usize>(), 0..64usize],
        ty in any::<u8>(),
        data in payload(),
    ) {
        let id_ok = (1..=MAX_STREAM_ID).contains(&id);

        let mut b = Vec::new();
        let r = encode_data_header(&mut b, id, len, flags);
        prop_assert_eq!(r.is_ok(), id_ok && len <= MAX_PAYLOAD as usize);
        prop_assert_eq!(b.len(), if r.is_ok() { HEADER_LEN } else { 0 });

        let mut b = Vec::new();
        let r = encode_data(&mut b, id, &data, flags);
        prop_assert_eq!(r.is_ok(), id_ok);
        check_encoded(&b, r)?;

        let mut b = Vec::new();
        let r = encode_rst(&mut b, id, ErrorCode::from_u32(num));
        prop_assert_eq!(r.is_ok(), id_ok);
        check_encoded(&b, r)?;

        let mut b = Vec::new();
        let r = encode_wndinc(&mut b, id, num);
        prop_assert_eq!(r.is_ok(), id_ok && (1..=MAX_WINDOW_INCREMENT).contains(&num));
        check_encoded(&b, r)?;

        let mut b = Vec::new();
        let r = encode_goaway(&mut b, id, ErrorCode::Other(num), &data);
        prop_assert_eq!(r.is_ok(), id <= MAX_STREAM_ID);
        check_encoded(&b, r)?;

        let mut b = Vec::new();
        let r = Header { length: len as u32, ty: FrameType::from_u4(ty), flags, stream_id: id }
            .encode(&mut b);
        prop_assert_eq!(r.is_ok(), id <= MAX_STREAM_ID && len as u32 <= MAX_PAYLOAD);
        prop_assert_eq!(b.len(), if r.is_ok() { HEADER_LEN } else { 0 });

        let mut b = Vec::new();
        let r = Frame::Unknown { ty, flags, stream_id: id, payload: &data }.encode(&mut b);
        prop_assert_eq!(r.is_ok(), (4..=15).contains(&ty) && id <= MAX_STREAM_ID);
        check_encoded(&b, r)?;
    }
}

/// After an encoder call: an error wrote nothing; success wrote exactly one
/// frame that the decoder accepts whole.
fn check_encoded(b: &[u8], r: Result<(), EncodeError>) -> Result<(), TestCaseError> {
    match r {
        Err(_) => prop_assert!(b.is_empty()),
        Ok(()) => match Frame::decode(b) {
            Ok(Decode::Frame(_, n)) => prop_assert_eq!(n, b.len()),
            other => prop_assert!(false, "encoded bytes do not decode: {:?}", other),
        },
    }
    Ok(())
}
