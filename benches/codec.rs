//! Wire codec benchmarks: DATA frame encode/decode throughput and small
//! control frame (WNDINC, RST) rates.
//!
//! Throughput is counted in wire bytes (8-byte header + payload) for DATA
//! frames and in frames for the control frames.
//!
//! ```text
//! cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use muxado::frame::{self, Decode, Frame, HEADER_LEN};
use muxado::ErrorCode;

/// DATA payload sizes: tiny, a typical write, and the default window.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (16 * 1024, "16KiB"), (256 * 1024, "256KiB")];

/// Decode windows hold about this many bytes of back-to-back frames (at
/// least one frame), so that the per-call overhead is amortised the same
/// way a real read buffer would amortise it.
const DECODE_WINDOW: usize = 1 << 20;

/// Control frames per iteration of the small-frame benches.
const SMALL_BATCH: usize = 256;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn bench_data_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("data_encode");
    for (len, name) in SIZES {
        let body = payload(len);
        let mut dst = BytesMut::with_capacity(HEADER_LEN + len);
        group.throughput(Throughput::Bytes((HEADER_LEN + len) as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                dst.clear();
                frame::encode_data(&mut dst, black_box(3), black_box(&body), 0).unwrap();
                black_box(dst.len());
            })
        });
    }
    group.finish();
}

fn bench_data_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("data_decode");
    for (len, name) in SIZES {
        let body = payload(len);
        let count = (DECODE_WINDOW / (HEADER_LEN + len)).max(1);
        let mut window = BytesMut::with_capacity(count * (HEADER_LEN + len));
        for i in 0..count {
            frame::encode_data(&mut window, 2 * i as u32 + 1, &body, 0).unwrap();
        }
        let window = window.freeze();
        group.throughput(Throughput::Bytes(window.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut buf: &[u8] = black_box(&window);
                let mut sum = 0usize;
                while !buf.is_empty() {
                    match Frame::decode(buf).unwrap() {
                        Decode::Frame(Frame::Data { payload, .. }, used) => {
                            sum += payload.len();
                            buf = &buf[used..];
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                black_box(sum);
            })
        });
    }
    group.finish();
}

fn bench_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("small_frames");
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    let mut dst = BytesMut::with_capacity(SMALL_BATCH * (HEADER_LEN + 4));

    group.bench_function("wndinc_encode", |b| {
        b.iter(|| {
            dst.clear();
            for i in 0..SMALL_BATCH as u32 {
                frame::encode_wndinc(&mut dst, black_box(2 * i + 1), black_box(65536)).unwrap();
            }
            black_box(dst.len());
        })
    });
    group.bench_function("rst_encode", |b| {
        b.iter(|| {
            dst.clear();
            for i in 0..SMALL_BATCH as u32 {
                frame::encode_rst(&mut dst, black_box(2 * i + 1), ErrorCode::StreamClosed).unwrap();
            }
            black_box(dst.len());
        })
    });

    let mut wndinc = BytesMut::new();
    let mut rst = BytesMut::new();
    for i in 0..SMALL_BATCH as u32 {
        frame::encode_wndinc(&mut wndinc, 2 * i + 1, 65536).unwrap();
        frame::encode_rst(&mut rst, 2 * i + 1, ErrorCode::StreamClosed).unwrap();
    }
    for (name, window) in [("wndinc_decode", &wndinc), ("rst_decode", &rst)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buf: &[u8] = black_box(window);
                let mut acc = 0u32;
                while !buf.is_empty() {
                    let Decode::Frame(f, used) = Frame::decode(buf).unwrap() else {
                        panic!("incomplete");
                    };
                    acc = acc.wrapping_add(match f {
                        Frame::WndInc { increment, .. } => increment,
                        Frame::Rst { code, .. } => code.to_u32(),
                        other => panic!("unexpected {other:?}"),
                    });
                    buf = &buf[used..];
                }
                black_box(acc);
            })
        });
    }

    // Encode then decode the same frame, one at a time: the cost a control
    // frame adds to one round trip through the codec.
    let mut one = BytesMut::with_capacity(HEADER_LEN + 4);
    group.throughput(Throughput::Elements(1));
    group.bench_function("wndinc_roundtrip", |b| {
        b.iter(|| {
            one.clear();
            frame::encode_wndinc(&mut one, black_box(7), black_box(4096)).unwrap();
            black_box(Frame::decode(&one).unwrap());
        })
    });
    group.bench_function("rst_roundtrip", |b| {
        b.iter(|| {
            one.clear();
            frame::encode_rst(&mut one, black_box(7), ErrorCode::StreamCancelled).unwrap();
            black_box(Frame::decode(&one).unwrap());
        })
    });
    group.finish();
}

criterion_group!(benches, bench_data_encode, bench_data_decode, bench_small);
criterion_main!(benches);
