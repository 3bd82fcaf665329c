//! The test bodies, each written once for every implementation: what the side
//! that opens the streams does, and what the side that accepts them does.
//! Every byte carried is checked against a seeded pattern.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use muxado::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Body, Side};
use crate::common::*;

pub const MIB: u64 = 1024 * 1024;

async fn accept_one<P: Side>(p: &P) -> P::Stream {
    p.timeout(Duration::from_secs(20), p.accept())
        .await
        .unwrap_or_else(|_| panic!("{}: accept timed out", p.name()))
        .unwrap_or_else(|| panic!("{}: session ended instead of accepting", p.name()))
}

// ---- echo ------------------------------------------------------------------------

/// Streams one after another; on each the opener sends `size` pattern bytes
/// and half-closes while reading the echo; the acceptor checks and echoes
/// every byte and half-closes; the opener checks every echoed byte.
#[derive(Clone)]
pub struct Echo {
    pub seed: u64,
    pub sizes: Vec<u64>,
}

impl Echo {
    pub fn new(big: u64) -> Echo {
        let seed = seed();
        let mut rng = Rng(seed);
        let mut sizes = vec![1, 7, 8, 9, 65_536, 262_143, 262_144, 262_145];
        sizes.extend((0..3).map(|_| rng.range(1, 2 * MIB)));
        sizes.push(big);
        Echo { seed, sizes }
    }
}

impl Body for Echo {
    async fn opener<P: Side>(self, p: P) {
        for (i, &size) in self.sizes.iter().enumerate() {
            let seed = self.seed ^ i as u64;
            let s = p.open().await.expect("open");
            let (mut rd, mut wr) = tokio::io::split(s);
            let (w, r) = tokio::join!(
                async {
                    write_pattern(&mut wr, seed, 0, size).await?;
                    wr.shutdown().await
                },
                read_pattern(&mut rd, seed, 0, None)
            );
            w.unwrap_or_else(|e| panic!("{}: write of {size} bytes: {e}", p.name()));
            let n = r.unwrap_or_else(|e| panic!("{}: echo of {size} bytes: {e}", p.name()));
            assert_eq!(n, size, "{}: echoed length", p.name());
        }
        p.sync().await;
    }

    async fn acceptor<P: Side>(self, p: P) {
        for (i, &size) in self.sizes.iter().enumerate() {
            let mut s = accept_one(&p).await;
            let n = echo_checked(&mut s, self.seed ^ i as u64, 0)
                .await
                .unwrap_or_else(|e| panic!("{}: stream {i} ({size} bytes): {e}", p.name()));
            assert_eq!(n, size, "{}: received length of stream {i}", p.name());
        }
        p.sync().await;
    }
}

// ---- many concurrent streams -------------------------------------------------------

/// `n` streams at once; stream `i` carries its index (4 bytes) then a pattern
/// payload of random size up to 16 KiB; the acceptor echoes both, checked on
/// both ends.
#[derive(Clone)]
pub struct Many {
    pub n: u32,
    pub seed: u64,
}

impl Many {
    pub fn new(n: u32) -> Many {
        Many { n, seed: seed() }
    }
    fn size(&self, i: u32) -> u64 {
        Rng(self.seed ^ u64::from(i)).range(0, 16 * 1024)
    }
}

impl Body for Many {
    async fn opener<P: Side>(self, p: P) {
        let mut tasks = Vec::new();
        for i in 0..self.n {
            let mut s = p.open().await.expect("open");
            let (me, name, size) = (self.clone(), p.name(), self.size(i));
            tasks.push(p.spawn(async move {
                let seed = me.seed ^ u64::from(i);
                s.write_all(&i.to_be_bytes()).await.expect("write index");
                let (mut rd, mut wr) = tokio::io::split(s);
                let (w, r) = tokio::join!(
                    async {
                        write_pattern(&mut wr, seed, 0, size).await?;
                        wr.shutdown().await
                    },
                    async {
                        let mut idx = [0u8; 4];
                        rd.read_exact(&mut idx).await?;
                        assert_eq!(u32::from_be_bytes(idx), i, "{name}: echoed index");
                        read_pattern(&mut rd, seed, 0, None).await
                    }
                );
                w.unwrap_or_else(|e| panic!("{name}: stream {i}: write: {e}"));
                let n = r.unwrap_or_else(|e| panic!("{name}: stream {i}: echo: {e}"));
                assert_eq!(n, size, "{name}: stream {i}: echoed length");
            }));
        }
        for t in tasks {
            t.await;
        }
        p.sync().await;
    }

    async fn acceptor<P: Side>(self, p: P) {
        let mut tasks = Vec::new();
        let mut seen = vec![false; self.n as usize];
        let seen_count = Rc::new(Cell::new(0u32));
        for _ in 0..self.n {
            let mut s = accept_one(&p).await;
            let (me, name, count) = (self.clone(), p.name(), seen_count.clone());
            tasks.push(p.spawn(async move {
                let mut idx = [0u8; 4];
                s.read_exact(&mut idx).await.expect("read index");
                let i = u32::from_be_bytes(idx);
                assert!(i < me.n, "{name}: index {i} out of range");
                s.write_all(&idx).await.expect("echo index");
                let n = echo_checked(&mut s, me.seed ^ u64::from(i), 0)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: stream {i}: {e}"));
                assert_eq!(n, me.size(i), "{name}: stream {i}: length");
                count.set(count.get() + 1);
                i
            }));
        }
        for t in tasks {
            let i = t.await as usize;
            assert!(!seen[i], "{}: index {i} twice", p.name());
            seen[i] = true;
        }
        assert_eq!(seen_count.get(), self.n);
        p.sync().await;
    }
}

// ---- half-close --------------------------------------------------------------------

/// The opener sends a request and half-closes; the acceptor reads it to EOF
/// and only then answers on the same stream, which still carries data the
/// other way; the opener reads the answer to EOF.
#[derive(Clone)]
pub struct HalfClose;

const REQUEST: u64 = 300 * 1024;
const ANSWER: u64 = 500 * 1024;

impl Body for HalfClose {
    async fn opener<P: Side>(self, p: P) {
        let seed = seed();
        let mut s = p.open().await.expect("open");
        write_pattern(&mut s, seed, 0, REQUEST)
            .await
            .expect("request");
        s.shutdown().await.expect("half-close");
        let n = read_pattern(&mut s, seed ^ 1, 0, None)
            .await
            .expect("answer");
        assert_eq!(n, ANSWER, "{}: answer length", p.name());
        p.sync().await;
    }

    async fn acceptor<P: Side>(self, p: P) {
        let seed = seed();
        let mut s = accept_one(&p).await;
        let n = read_pattern(&mut s, seed, 0, None).await.expect("request");
        assert_eq!(n, REQUEST, "{}: request length", p.name());
        write_pattern(&mut s, seed ^ 1, 0, ANSWER)
            .await
            .expect("answer after EOF");
        s.shutdown().await.expect("half-close");
        p.sync().await;
    }
}

// ---- reset -------------------------------------------------------------------------

/// One side resets a stream with StreamCancelled (6) after data went each way;
/// the other side's writes then fail with that code, and the resetter's own
/// reads fail. `by_opener` picks the resetter, which must be able to reset.
#[derive(Clone)]
pub struct Reset {
    pub by_opener: bool,
}

const CANCELLED: u32 = 6;

async fn reset_it<P: Side>(p: &P, s: &mut P::Stream) {
    assert!(
        p.reset(s, ErrorCode::StreamCancelled),
        "{} cannot reset",
        p.name()
    );
    let mut buf = [0u8; 16];
    let e = s
        .read(&mut buf)
        .await
        .expect_err("read after a local reset");
    assert_eq!(code_of(&e), Some(CANCELLED), "{}: {e:?}", p.name());
}

async fn see_reset<P: Side>(p: &P, s: &mut P::Stream) {
    let e = write_until_error(p, s, Duration::from_secs(10)).await;
    assert_eq!(
        code_of(&e),
        Some(CANCELLED),
        "{}: write failed with {e:?}",
        p.name()
    );
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{}",
        p.name()
    );
}

impl Body for Reset {
    async fn opener<P: Side>(self, p: P) {
        let mut s = p.open().await.expect("open");
        s.write_all(b"ping").await.expect("ping");
        let mut pong = [0u8; 4];
        s.read_exact(&mut pong).await.expect("pong");
        assert_eq!(&pong, b"pong");
        if self.by_opener {
            reset_it(&p, &mut s).await;
            p.sync().await;
        } else {
            p.sync().await;
            see_reset(&p, &mut s).await;
        }
        p.sync().await;
    }

    async fn acceptor<P: Side>(self, p: P) {
        let mut s = accept_one(&p).await;
        let mut ping = [0u8; 4];
        s.read_exact(&mut ping).await.expect("ping");
        assert_eq!(&ping, b"ping");
        s.write_all(b"pong").await.expect("pong");
        if self.by_opener {
            p.sync().await;
            see_reset(&p, &mut s).await;
        } else {
            p.sync().await;
            reset_it(&p, &mut s).await;
        }
        p.sync().await;
    }
}

// ---- slow reader -------------------------------------------------------------------

/// The opener writes 3 MiB on stream 0 to a reader that takes a break after
/// every 16 KiB: the writer waits on the window (backpressure, bounded memory)
/// while stream 1 still completes 20 small round trips (no head-of-line
/// blocking). Every byte is checked.
#[derive(Clone)]
pub struct SlowReader;

const SLOW_BYTES: u64 = 3 * MIB;

impl Body for SlowReader {
    async fn opener<P: Side>(self, p: P) {
        let seed = seed();
        let mut bulk = p.open().await.expect("open bulk");
        bulk.write_all(&[0]).await.expect("tag bulk");
        let bulk_done = Rc::new(Cell::new(false));
        let done = bulk_done.clone();
        let writer = p.spawn(async move {
            write_pattern(&mut bulk, seed, 0, SLOW_BYTES)
                .await
                .expect("bulk");
            bulk.shutdown().await.expect("bulk FIN");
            done.set(true);
            bulk
        });
        let mut chat = p.open().await.expect("open chat");
        chat.write_all(&[1]).await.expect("tag chat");
        let started = Instant::now();
        for round in 0..20u64 {
            let mut msg = [0u8; 64];
            pattern(seed ^ 0xC4A7, round * 64, &mut msg);
            chat.write_all(&msg).await.expect("chat write");
            let mut back = [0u8; 64];
            p.timeout(Duration::from_secs(10), chat.read_exact(&mut back))
                .await
                .unwrap_or_else(|_| panic!("{}: chat starved by the bulk stream", p.name()))
                .expect("chat read");
            assert_eq!(back, msg, "{}: chat round {round}", p.name());
        }
        assert!(
            !bulk_done.get(),
            "{}: the bulk writer finished before the chat ({:?}): the reader was not slow",
            p.name(),
            started.elapsed()
        );
        chat.shutdown().await.expect("chat FIN");
        let bulk = writer.await;
        // The tokio driver's writer must have waited for the window: the
        // slow reader's credit, not memory, bounded what was in flight.
        if let Some(t) = (&p as &dyn std::any::Any).downcast_ref::<super::TokioSide>() {
            let stats = t.session.stats();
            assert!(
                stats.proto.window_stalls > 0,
                "tokio: no window stall: {stats:?}"
            );
        }
        p.sync().await;
        drop(bulk);
    }

    async fn acceptor<P: Side>(self, p: P) {
        let seed = seed();
        let mut streams = [None, None];
        for _ in 0..2 {
            let mut s = accept_one(&p).await;
            let mut tag = [0u8];
            s.read_exact(&mut tag).await.expect("tag");
            streams[tag[0] as usize] = Some(s);
        }
        let [Some(mut bulk), Some(mut chat)] = streams else {
            panic!("{}: streams not tagged 0 and 1", p.name());
        };
        let name = p.name();
        let slow = {
            let p = p.clone();
            p.clone().spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut scratch = Vec::new();
                let mut pos = 0u64;
                loop {
                    let n = bulk.read(&mut buf).await.expect("bulk read");
                    if n == 0 {
                        break;
                    }
                    check_pattern(seed, pos, &buf[..n], &mut scratch).expect("bulk bytes");
                    pos += n as u64;
                    p.sleep(Duration::from_millis(4)).await;
                }
                assert_eq!(pos, SLOW_BYTES, "{name}: bulk length");
            })
        };
        let mut buf = [0u8; 64];
        loop {
            match chat.read(&mut buf).await.expect("chat read") {
                0 => break,
                n => chat.write_all(&buf[..n]).await.expect("chat echo"),
            }
        }
        slow.await;
        p.sync().await;
    }
}

// ---- session death -----------------------------------------------------------------

/// The acceptor kills its session while the opener waits to read on a
/// stream and to accept: both end (read error or EOF, accept `None`) within
/// seconds, and the opener's session reports its end.
#[derive(Clone)]
pub struct Death;

impl Body for Death {
    async fn opener<P: Side>(self, p: P) {
        let mut s = p.open().await.expect("open");
        s.write_all(b"before death").await.expect("write");
        let mut buf = [0u8; 16];
        let n = p
            .timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{}: read still waiting after the peer died", p.name()));
        if let Ok(n) = n {
            assert_eq!(n, 0, "{}: data after the peer's death", p.name());
        }
        let accepted = p
            .timeout(Duration::from_secs(10), p.accept())
            .await
            .unwrap_or_else(|_| panic!("{}: accept still waiting after the peer died", p.name()));
        assert!(
            accepted.is_none(),
            "{}: accepted a stream from a dead peer",
            p.name()
        );
        let why = p
            .timeout(Duration::from_secs(10), p.ended())
            .await
            .unwrap_or_else(|_| panic!("{}: session not ended", p.name()));
        eprintln!("{}: session ended: {why}", p.name());
        drop(s);
    }

    async fn acceptor<P: Side>(self, p: P) {
        let mut s = accept_one(&p).await;
        let mut got = [0u8; 12];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"before death");
        p.kill().await;
        drop(s);
        p.timeout(Duration::from_secs(10), p.ended())
            .await
            .unwrap_or_else(|_| panic!("{}: own session not ended after kill", p.name()));
    }
}
