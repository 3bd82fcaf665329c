//! Session state machine benchmarks: two in-memory `proto` sessions (client
//! and server) wired back to back, no I/O.
//!
//! - `bulk_1_stream/64KiB`: one stream, client→server, 64 KiB writes.
//! - `round_robin_64_streams/16KiB`: 64 streams, 16 KiB each in turn.
//! - `ping_pong/64B`: request/response on one stream (round trips).
//!
//! Throughput is application payload bytes (bulk) or round trips (ping-pong).
//! All buffers (wire buffers swapped with `poll_transmit`, the read buffer,
//! the payload) are allocated once, so the numbers are the state machine's.
//!
//! ```text
//! cargo bench --bench proto -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use muxado::proto::{Event, Role, Session, StreamKey};
use muxado::Config;

/// A client and a server session connected by two in-memory "wires".
struct Pair {
    client: Session,
    server: Session,
    /// Spare buffers for `poll_transmit`: they trade places with the
    /// sessions' outgoing buffers, so after warm-up nothing allocates.
    c2s: BytesMut,
    s2c: BytesMut,
    now: Instant,
    /// Server streams that reported `Readable`.
    readable: Vec<StreamKey>,
}

impl Pair {
    fn new() -> Self {
        Pair {
            client: Session::new(Role::Client, Config::default()),
            server: Session::new(Role::Server, Config::default()),
            c2s: BytesMut::new(),
            s2c: BytesMut::new(),
            now: Instant::now(),
            readable: Vec::new(),
        }
    }

    /// Moves pending bytes client→server, then server→client. Returns true
    /// if anything moved.
    fn exchange(&mut self) -> bool {
        let mut moved = false;
        if self.client.poll_transmit(&mut self.c2s) {
            self.server.handle_input(self.now, &self.c2s);
            moved = true;
        }
        if self.server.poll_transmit(&mut self.s2c) {
            self.client.handle_input(self.now, &self.s2c);
            moved = true;
        }
        moved
    }

    /// Drains both event queues; `Readable` server streams are remembered.
    fn drain_events(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            if let Event::Readable(k) = ev {
                self.readable.push(k);
            }
        }
        while let Some(ev) = self.client.poll_event() {
            black_box(ev);
        }
    }

    /// Reads a server stream until it has nothing more (which arms its
    /// `Readable` event). Returns the bytes read.
    fn server_drain(&mut self, key: StreamKey, buf: &mut [u8]) -> usize {
        let mut total = 0;
        while let Some(n) = self.server.read(key, buf).unwrap() {
            assert!(n > 0, "unexpected EOF");
            black_box(&buf[..n]);
            total += n;
        }
        total
    }

    /// Delivers everything and lets the server read every stream that
    /// became readable. Returns the bytes the server read.
    fn pump(&mut self, buf: &mut [u8]) -> usize {
        let mut total = 0;
        while self.exchange() {
            self.drain_events();
            while let Some(k) = self.readable.pop() {
                total += self.server_drain(k, buf);
            }
        }
        total
    }

    /// Opens `n` streams on the client and accepts them on the server; each
    /// has been read until empty so its `Readable` event is armed.
    fn open_streams(&mut self, n: usize, buf: &mut [u8]) -> (Vec<StreamKey>, Vec<StreamKey>) {
        let mut local = Vec::with_capacity(n);
        let mut remote = Vec::with_capacity(n);
        for _ in 0..n {
            let c = self.client.open().unwrap();
            assert_eq!(self.client.write(c, b"x").unwrap(), 1);
            self.exchange();
            let s = self.server.accept().unwrap().expect("accepted");
            assert_eq!(self.server_drain(s, buf), 1);
            local.push(c);
            remote.push(s);
        }
        self.drain_events();
        (local, remote)
    }

    /// Writes all of `data` on client stream `key`, pumping whenever the
    /// session asks the writer to wait. Returns the bytes the server read.
    fn client_write_all(&mut self, key: StreamKey, mut data: &[u8], buf: &mut [u8]) -> usize {
        let mut read = 0;
        while !data.is_empty() {
            let n = self.client.write(key, data).unwrap();
            if n == 0 {
                read += self.pump(buf);
            }
            data = &data[n..];
        }
        read
    }
}

fn bench_bulk(c: &mut Criterion) {
    const WRITE: usize = 64 * 1024;
    let mut pair = Pair::new();
    let mut buf = vec![0u8; WRITE];
    let data = vec![0xA5u8; WRITE];
    let (local, _) = pair.open_streams(1, &mut buf);
    let key = local[0];
    // Bytes written but not yet read by the server carry over between
    // iterations; the totals are checked at the end.
    let (mut written, mut read) = (0u64, 0u64);

    let mut group = c.benchmark_group("bulk_1_stream");
    group.throughput(Throughput::Bytes(WRITE as u64));
    group.bench_function("64KiB", |b| {
        b.iter(|| {
            read += pair.client_write_all(key, &data, &mut buf) as u64;
            read += pair.pump(&mut buf) as u64;
            written += WRITE as u64;
        })
    });
    group.finish();
    assert_eq!(written, read);
}

fn bench_round_robin(c: &mut Criterion) {
    const STREAMS: usize = 64;
    const WRITE: usize = 16 * 1024;
    let mut pair = Pair::new();
    let mut buf = vec![0u8; 64 * 1024];
    let data = vec![0x5Au8; WRITE];
    let (local, _) = pair.open_streams(STREAMS, &mut buf);
    let (mut written, mut read) = (0u64, 0u64);

    let mut group = c.benchmark_group("round_robin_64_streams");
    group.throughput(Throughput::Bytes((STREAMS * WRITE) as u64));
    group.bench_function("16KiB", |b| {
        b.iter(|| {
            for &key in &local {
                read += pair.client_write_all(key, &data, &mut buf) as u64;
            }
            read += pair.pump(&mut buf) as u64;
            written += (STREAMS * WRITE) as u64;
        })
    });
    group.finish();
    assert_eq!(written, read);
    assert_eq!(pair.client.stats().window_stalls, 0);
}

fn bench_ping_pong(c: &mut Criterion) {
    const MSG: usize = 64;
    let mut pair = Pair::new();
    let mut buf = vec![0u8; 1024];
    let (local, remote) = pair.open_streams(1, &mut buf);
    let (ck, sk) = (local[0], remote[0]);
    let request = [0x11u8; MSG];
    let response = [0x22u8; MSG];
    let mut got = [0u8; MSG];

    let mut group = c.benchmark_group("ping_pong");
    group.throughput(Throughput::Elements(1));
    group.bench_function("64B", |b| {
        b.iter(|| {
            // Request: client → server.
            assert_eq!(pair.client.write(ck, &request).unwrap(), MSG);
            assert!(pair.client.poll_transmit(&mut pair.c2s));
            pair.server.handle_input(pair.now, &pair.c2s);
            assert_eq!(pair.server.read(sk, &mut got).unwrap(), Some(MSG));
            // Response: server → client (with any WNDINC the read produced).
            assert_eq!(pair.server.write(sk, &response).unwrap(), MSG);
            assert!(pair.server.poll_transmit(&mut pair.s2c));
            pair.client.handle_input(pair.now, &pair.s2c);
            assert_eq!(pair.client.read(ck, &mut got).unwrap(), Some(MSG));
            // The client's WNDINC for the responses, once per 64 KiB.
            if pair.client.poll_transmit(&mut pair.c2s) {
                pair.server.handle_input(pair.now, &pair.c2s);
            }
            pair.drain_events();
            pair.readable.clear();
            black_box(&got);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_bulk, bench_round_robin, bench_ping_pong);
criterion_main!(benches);
