//! Sessions of this crate against themselves on the io_uring engine, over loopback: many streams,
//! many sessions, head-of-line isolation, fairness, and how streams and sessions end.
//!
//! Every test runs under a watchdog thread, so a hang fails the test instead of blocking the run;
//! sizes are kept small enough for debug builds on two cores.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use muxado::engine::net::{TcpListener, TcpStream};
use muxado::engine::{self, Engine};
use muxado::{Config, Error, ErrorCode, Session, Stream};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Runs `f` on its own thread and fails the test if it takes longer than `limit` (a hang), or
/// re-raises its panic.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let out = f();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test hung: not done after {limit:?}"),
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// FNV-1a, 64 bits.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A streaming FNV-1a, for data read in pieces.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A config that allows `n` streams at once, all of which may wait for accept.
fn wide_config(n: usize) -> Config {
    Config::default().with_max_streams(n).with_accept_backlog(n)
}

/// A client and a server session over one loopback connection, on the current core.
async fn pair(client_cfg: Config, server_cfg: Config) -> (Session, Session) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
    let client = TcpStream::connect(addr).await.unwrap();
    let server = accept.await;
    (
        Session::client(client, client_cfg),
        Session::server(server, server_cfg),
    )
}

/// Echoes every stream the peer opens (read to its FIN, write it back, FIN), until the session
/// dies. Returns how many streams it echoed.
async fn serve_echo(session: Session) -> usize {
    let echoed = Rc::new(Cell::new(0usize));
    while let Ok(mut stream) = session.accept().await {
        let echoed = echoed.clone();
        engine::spawn(async move {
            let mut data = Vec::new();
            stream.read_to_end(&mut data).await.expect("echo: read");
            stream.write_all(&data).await.expect("echo: write");
            stream.close_write().expect("echo: FIN");
            echoed.set(echoed.get() + 1);
        });
    }
    echoed.get()
}

/// Sends a random payload (1..=max bytes) on a stream, half-closes, reads the echo to the end and
/// compares checksums.
async fn echo_check(mut stream: Stream, seed: u64, max: usize) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let len = 1 + (rng.next() as usize % max);
    let payload = rng.bytes(len);
    stream
        .write_all(&payload)
        .await
        .map_err(|e| format!("stream {}: write: {e}", stream.id()))?;
    stream
        .close_write()
        .map_err(|e| format!("stream {}: FIN: {e}", stream.id()))?;
    let mut back = Vec::with_capacity(len);
    stream
        .read_to_end(&mut back)
        .await
        .map_err(|e| format!("stream {}: read: {e}", stream.id()))?;
    if back.len() != len || checksum(&back) != checksum(&payload) {
        return Err(format!(
            "stream {}: echo of {len} bytes came back as {} bytes, checksum {:#x} vs {:#x}",
            stream.id(),
            back.len(),
            checksum(&back),
            checksum(&payload)
        ));
    }
    Ok(())
}

/// Opens `n` streams on `session` at once, each running [`echo_check`]; returns the failures.
async fn many_echoes(session: &Session, n: usize, seed: u64, max: usize) -> Vec<String> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let stream = session.open().expect("open");
        tasks.push(engine::spawn(echo_check(stream, seed + i as u64, max)));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            failures.push(e);
        }
    }
    failures
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} streams failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

const STREAMS: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Many streams, many sessions.

#[test]
fn ten_thousand_streams_one_session_on_two_cores() {
    bounded(Duration::from_secs(60), || {
        let engine = Engine::builder().cores(2).build().expect("io_uring engine");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine
            .spawn_on(1, move || async move {
                assert_eq!(engine::current_core(), Some(1));
                let (tcp, _) = listener.accept().await.unwrap();
                serve_echo(Session::server(tcp, wide_config(STREAMS))).await
            })
            .unwrap();
        let client = engine
            .spawn_on(0, move || async move {
                assert_eq!(engine::current_core(), Some(0));
                let tcp = TcpStream::connect(addr).await.unwrap();
                let session = Session::client(tcp, wide_config(STREAMS));
                let work = many_echoes(&session, STREAMS, 1, 512);
                let failures = engine::timeout(Duration::from_secs(45), work)
                    .await
                    .expect("10,000 echoes timed out");
                let stats = session.stats();
                session.close().unwrap();
                (failures, stats)
            })
            .unwrap();
        let (failures, stats) = client.join().unwrap();
        let echoed = server.join().unwrap();
        engine.shutdown().unwrap();
        assert_no_failures(&failures);
        assert_eq!(echoed, STREAMS);
        assert_eq!(stats.proto.streams_opened, STREAMS as u64);
        assert_eq!(stats.open_streams, 0, "every stream was released");
        eprintln!("10,000 streams on 2 cores: {stats:?}");
    });
}

#[test]
fn ten_thousand_streams_one_session_in_block_on() {
    bounded(Duration::from_secs(60), || {
        engine::block_on(async {
            let cfg = wide_config(STREAMS);
            let (client, server) = pair(cfg.clone(), cfg).await;
            let server = engine::spawn(serve_echo(server));
            let failures = engine::timeout(
                Duration::from_secs(45),
                many_echoes(&client, STREAMS, 100_000, 512),
            )
            .await
            .expect("10,000 echoes timed out");
            assert_no_failures(&failures);
            assert_eq!(client.stats().open_streams, 0);
            client.close().unwrap();
            assert_eq!(server.await, STREAMS);
        })
        .expect("io_uring available");
    });
}

#[test]
fn hundred_sessions_at_once_on_two_cores() {
    const SESSIONS: usize = 100;
    const PER_SESSION: usize = 5;
    bounded(Duration::from_secs(60), || {
        let engine = Engine::builder().cores(2).build().expect("io_uring engine");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine
            .spawn_on(1, move || async move {
                let mut sessions = Vec::new();
                for _ in 0..SESSIONS {
                    let (tcp, _) = listener.accept().await.unwrap();
                    sessions.push(engine::spawn(serve_echo(Session::server(
                        tcp,
                        Config::default(),
                    ))));
                }
                let mut echoed = 0;
                for s in sessions {
                    echoed += s.await;
                }
                echoed
            })
            .unwrap();
        let client = engine
            .spawn_on(0, move || async move {
                let run = async {
                    let mut tasks = Vec::new();
                    for i in 0..SESSIONS {
                        let tcp = TcpStream::connect(addr).await.unwrap();
                        let session = Session::client(tcp, Config::default());
                        tasks.push(engine::spawn(async move {
                            let failures =
                                many_echoes(&session, PER_SESSION, (i * 1000) as u64, 64 * 1024)
                                    .await;
                            session.close().unwrap();
                            failures
                        }));
                    }
                    let mut failures = Vec::new();
                    for t in tasks {
                        failures.extend(t.await);
                    }
                    failures
                };
                engine::timeout(Duration::from_secs(45), run)
                    .await
                    .expect("100 sessions timed out")
            })
            .unwrap();
        let failures = client.join().unwrap();
        let echoed = server.join().unwrap();
        engine.shutdown().unwrap();
        assert_no_failures(&failures);
        assert_eq!(echoed, SESSIONS * PER_SESSION);
    });
}

// ---------------------------------------------------------------------------------------------
// Head-of-line isolation and fairness.

/// Polls `cond` every millisecond until it holds.
async fn until(cond: impl Fn() -> bool) {
    while !cond() {
        engine::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn slow_reader_on_one_stream_does_not_stall_another() {
    const BULK: usize = 8 << 20;
    const ROUND_TRIPS: usize = 200;
    bounded(Duration::from_secs(60), || {
        engine::block_on(async {
            let cfg = Config::default();
            let window = cfg.max_window as usize;
            let (client, server) = pair(cfg.clone(), cfg).await;
            let bulk = Rc::new(Rng::new(7).bytes(BULK));

            // Server: A is accepted first and not read until `drain` is set; B is echoed.
            let drain = Rc::new(Cell::new(false));
            let srv = {
                let drain = drain.clone();
                engine::spawn(async move {
                    let mut a = server.accept().await.unwrap();
                    let mut b = server.accept().await.unwrap();
                    let echo = engine::spawn(async move {
                        let mut msg = [0u8; 64];
                        loop {
                            match b.read(&mut msg[..1]).await.unwrap() {
                                0 => break,
                                _ => b.read_exact(&mut msg[1..]).await.unwrap(),
                            }
                            b.write_all(&msg).await.unwrap();
                        }
                        b.close_write().unwrap();
                    });
                    until(|| drain.get()).await;
                    let mut got = Vec::with_capacity(BULK);
                    a.read_to_end(&mut got).await.unwrap();
                    echo.await;
                    (got.len(), checksum(&got), server)
                })
            };

            // Client A: its first bytes go out (and its SYN reaches the server) before B's.
            let mut a = client.open().unwrap();
            let first = a.write(&bulk).await.unwrap();
            let written = Rc::new(Cell::new(first));
            let a_done = Rc::new(Cell::new(false));
            let writer = {
                let (bulk, written, a_done) = (bulk.clone(), written.clone(), a_done.clone());
                engine::spawn(async move {
                    while written.get() < BULK {
                        let n = a.write(&bulk[written.get()..]).await.unwrap();
                        written.set(written.get() + n);
                    }
                    a.close_write().unwrap();
                    a_done.set(true);
                })
            };

            // Client B: request/response round trips while A is stuck.
            let mut b = client.open().unwrap();
            let mut rng = Rng::new(8);
            let mut latencies = Vec::with_capacity(ROUND_TRIPS);
            let rounds = async {
                for i in 0..ROUND_TRIPS {
                    let msg: [u8; 64] = rng.bytes(64).try_into().unwrap();
                    let t = Instant::now();
                    b.write_all(&msg).await.unwrap();
                    let mut back = [0u8; 64];
                    b.read_exact(&mut back).await.unwrap();
                    latencies.push(t.elapsed());
                    assert_eq!(back, msg, "round trip {i}");
                    if (i + 1) % 50 == 0 {
                        eprintln!(
                            "B: {} round trips done; A has written {} of {BULK} bytes",
                            i + 1,
                            written.get()
                        );
                    }
                }
            };
            engine::timeout(Duration::from_secs(30), rounds)
                .await
                .expect("B's round trips stalled behind A");

            // A is still blocked by its full window.
            assert!(!a_done.get(), "A finished although nobody read it");
            assert!(
                written.get() <= window,
                "A wrote {} bytes, more than its window of {window}",
                written.get()
            );
            assert!(
                client.stats().proto.window_stalls > 0,
                "A never waited for window"
            );
            latencies.sort();
            eprintln!(
                "B: {ROUND_TRIPS} x 64-byte round trips while A was blocked at {} bytes: \
                 min {:?}, median {:?}, p99 {:?}, max {:?}",
                written.get(),
                latencies[0],
                latencies[ROUND_TRIPS / 2],
                latencies[ROUND_TRIPS * 99 / 100],
                latencies[ROUND_TRIPS - 1]
            );
            b.close_write().unwrap();
            let mut tail = Vec::new();
            b.read_to_end(&mut tail).await.unwrap();
            assert!(tail.is_empty());

            // Now let A drain, and check every byte.
            drain.set(true);
            let (len, sum, _server) = engine::timeout(Duration::from_secs(30), srv)
                .await
                .expect("A did not drain");
            engine::timeout(Duration::from_secs(5), writer)
                .await
                .expect("A's writer did not finish");
            assert!(a_done.get());
            assert_eq!(len, BULK);
            assert_eq!(sum, checksum(&bulk));
            client.close().unwrap();
        })
        .expect("io_uring available");
    });
}

#[test]
fn bulk_writers_and_a_small_stream_all_progress() {
    const MSGS: usize = 100;
    const CHUNK: usize = 16 * 1024;
    bounded(Duration::from_secs(60), || {
        engine::block_on(async {
            let (client, server) = pair(Config::default(), Config::default()).await;

            // Server: the first byte of each stream says what it is. Bulk streams are read to the
            // end (count, checksum); the small one is echoed message by message.
            let srv = engine::spawn(async move {
                let mut bulk = Vec::new();
                for _ in 0..3 {
                    let mut s = server.accept().await.unwrap();
                    let mut tag = [0u8];
                    s.read_exact(&mut tag).await.unwrap();
                    if tag[0] == b's' {
                        engine::spawn(async move {
                            let mut msg = [0u8; 32];
                            while s.read(&mut msg[..1]).await.unwrap() == 1 {
                                s.read_exact(&mut msg[1..]).await.unwrap();
                                s.write_all(&msg).await.unwrap();
                            }
                            s.close_write().unwrap();
                        });
                    } else {
                        bulk.push(engine::spawn(async move {
                            let (mut n, mut sum) = (0usize, Fnv::new());
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                match s.read(&mut buf).await.unwrap() {
                                    0 => break,
                                    k => {
                                        n += k;
                                        sum.update(&buf[..k]);
                                    }
                                }
                            }
                            (tag[0], n, sum.0)
                        }));
                    }
                }
                let mut out = Vec::new();
                for b in bulk {
                    out.push(b.await);
                }
                out.sort();
                (out, server)
            });

            // Two bulk writers that write until told to stop.
            let stop = Rc::new(Cell::new(false));
            let counts = [Rc::new(Cell::new(0usize)), Rc::new(Cell::new(0usize))];
            let writers: Vec<_> = (0..2)
                .map(|i| {
                    let mut s = client.open().unwrap();
                    let (stop, count) = (stop.clone(), counts[i].clone());
                    engine::spawn(async move {
                        let tag = [b'a' + i as u8];
                        s.write_all(&tag).await.unwrap();
                        let (mut rng, mut sum) = (Rng::new(i as u64 + 20), Fnv::new());
                        let mut chunk = vec![0u8; CHUNK];
                        while !stop.get() {
                            chunk.iter_mut().for_each(|b| *b = rng.next() as u8);
                            s.write_all(&chunk).await.unwrap();
                            sum.update(&chunk);
                            count.set(count.get() + CHUNK);
                        }
                        s.close_write().unwrap();
                        (tag[0], count.get(), sum.0)
                    })
                })
                .collect();

            // Let the bulk writers get going, then run the small stream.
            engine::timeout(
                Duration::from_secs(20),
                until(|| counts.iter().all(|c| c.get() >= 1 << 20)),
            )
            .await
            .expect("bulk writers did not start");
            let before: Vec<usize> = counts.iter().map(|c| c.get()).collect();
            let mut small = client.open().unwrap();
            small.write_all(b"s").await.unwrap();
            let mut rng = Rng::new(30);
            let t = Instant::now();
            let rounds = async {
                for i in 0..MSGS {
                    let msg: [u8; 32] = rng.bytes(32).try_into().unwrap();
                    small.write_all(&msg).await.unwrap();
                    let mut back = [0u8; 32];
                    small.read_exact(&mut back).await.unwrap();
                    assert_eq!(back, msg, "small message {i}");
                }
            };
            engine::timeout(Duration::from_secs(30), rounds)
                .await
                .expect("the small stream starved");
            let took = t.elapsed();
            let after: Vec<usize> = counts.iter().map(|c| c.get()).collect();
            assert!(
                writers.iter().all(|w| !w.is_finished()),
                "bulk writers still writing"
            );
            eprintln!(
                "small stream: {MSGS} round trips in {took:?} while bulk writers went \
                 {before:?} -> {after:?} bytes"
            );
            for i in 0..2 {
                assert!(
                    after[i] > before[i],
                    "bulk writer {i} made no progress while the small stream ran"
                );
            }
            small.close_write().unwrap();

            stop.set(true);
            let mut sent = Vec::new();
            for w in writers {
                sent.push(
                    engine::timeout(Duration::from_secs(20), w)
                        .await
                        .expect("bulk writer stuck"),
                );
            }
            let (received, _server) = engine::timeout(Duration::from_secs(20), srv)
                .await
                .expect("server stuck");
            assert_eq!(received, sent, "bulk bytes and checksums arrived intact");
            let total: usize = sent.iter().map(|s| s.1).sum();
            for s in &sent {
                assert!(
                    s.1 * 5 >= total,
                    "bulk writer {} got {} of {total} bytes: starved",
                    s.0 as char,
                    s.1
                );
            }
            eprintln!(
                "bulk writers sent {:?} bytes",
                sent.iter().map(|s| s.1).collect::<Vec<_>>()
            );
            client.close().unwrap();
        })
        .expect("io_uring available");
    });
}

// ---------------------------------------------------------------------------------------------
// Deadlines, resets, and the end of sessions.

#[test]
fn read_deadline_fires_with_timeout() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair(Config::default(), Config::default()).await;
            let mut s = client.open().unwrap();
            s.write_all(b"hi").await.unwrap();
            let mut peer = server.accept().await.unwrap();

            let deadline = Instant::now() + Duration::from_millis(100);
            s.set_read_deadline(Some(deadline));
            let mut buf = [0u8; 8];
            let r = engine::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("read deadline never fired");
            assert_eq!(r, Err(Error::Timeout("read")));
            assert!(Instant::now() >= deadline, "deadline fired early");

            // The stream is still usable once the deadline is cleared.
            s.set_read_deadline(None);
            peer.write_all(b"late").await.unwrap();
            s.read_exact(&mut buf[..4]).await.unwrap();
            assert_eq!(&buf[..4], b"late");
            client.close().unwrap();
        })
        .expect("io_uring available");
    });
}

#[test]
fn reset_reaches_the_peer_as_remote_reset() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair(Config::default(), Config::default()).await;
            for (i, code) in [
                ErrorCode::StreamCancelled,
                ErrorCode::InternalError,
                ErrorCode::Other(0xBEEF),
            ]
            .into_iter()
            .enumerate()
            {
                let mut s = client.open().unwrap();
                s.write_all(b"ping").await.unwrap();
                let mut peer = server.accept().await.unwrap();
                let mut buf = [0u8; 4];
                peer.read_exact(&mut buf).await.unwrap();
                // Alternate which side resets.
                let (resetter, victim) = if i % 2 == 0 {
                    (&mut peer, &mut s)
                } else {
                    (&mut s, &mut peer)
                };
                resetter.reset(code).unwrap();
                let r = engine::timeout(Duration::from_secs(5), victim.read(&mut buf))
                    .await
                    .expect("the RST never arrived");
                assert_eq!(r, Err(Error::RemoteReset(code)));
                assert_eq!(
                    victim.write(b"more").await,
                    Err(Error::RemoteReset(code)),
                    "writes fail after a reset too"
                );
                assert_eq!(
                    resetter.read(&mut buf).await,
                    Err(Error::LocalReset(code)),
                    "the resetting side sees its own reset"
                );
            }
            client.close().unwrap();
        })
        .expect("io_uring available");
    });
}

#[test]
fn session_close_fails_every_open_stream() {
    const N: usize = 8;
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair(Config::default(), Config::default()).await;
            let mut readers = Vec::new();
            for _ in 0..N {
                let mut s = client.open().unwrap();
                s.write_all(b"x").await.unwrap();
                readers.push(engine::spawn(async move {
                    let mut buf = [0u8; 8];
                    s.read(&mut buf).await
                }));
            }
            let mut peers = Vec::new();
            for _ in 0..N {
                let mut p = server.accept().await.unwrap();
                peers.push(engine::spawn(async move {
                    let mut buf = [0u8; 1];
                    p.read_exact(&mut buf).await.unwrap();
                    // Blocked until the session dies.
                    p.read(&mut buf).await
                }));
            }
            // Let every task block in its read.
            engine::sleep(Duration::from_millis(20)).await;
            let spare = client.open().unwrap();

            client.close().unwrap();
            let all = async {
                for r in readers {
                    assert_eq!(r.await, Err(Error::SessionClosed), "local stream");
                }
                for p in peers {
                    assert!(p.await.is_err(), "remote stream must fail, not end cleanly");
                }
            };
            engine::timeout(Duration::from_secs(5), all)
                .await
                .expect("a stream hung after session close");
            assert_eq!(client.close(), Err(Error::SessionClosed), "second close");
            assert!(client.open().is_err());
            let mut spare = spare;
            assert!(spare.write(b"x").await.is_err());
            let end = engine::timeout(Duration::from_secs(5), server.wait())
                .await
                .expect("server session did not end");
            assert_eq!(
                end.remote.as_ref().map(|r| r.0),
                Some(ErrorCode::NoError),
                "server got the client's GOAWAY: {end:?}"
            );
            assert!(server.accept().await.is_err());
        })
        .expect("io_uring available");
    });
}

#[test]
fn dropping_every_handle_closes_the_session() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair(Config::default(), Config::default()).await;
            let mut s = client.open().unwrap();
            s.write_all(b"bye").await.unwrap();
            let extra = client.clone();
            let mut peer = server.accept().await.unwrap();
            drop(client);
            assert!(!extra.is_closed(), "a clone still holds the session");
            drop(s);
            drop(extra);

            let end = engine::timeout(Duration::from_secs(5), server.wait())
                .await
                .expect("peer's wait() did not return after every handle was dropped");
            assert_eq!(end.remote.map(|r| r.0), Some(ErrorCode::NoError));
            // The data and FIN sent before the drop are still readable.
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
        })
        .expect("io_uring available");
    });
}

/// `close()` right after the last write loses nothing, even when the peer
/// reads its socket slowly and keeps sending: the closing side drains its
/// input after death and half-closes instead of closing with unread input
/// (which makes the kernel send RST, and the peer drop what it had not read).
#[test]
fn close_right_after_writing_loses_nothing() {
    use muxado::frame::{self, Decode, Frame};
    bounded(Duration::from_secs(30), || {
        engine::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // A raw peer: sends ignorable frames (unknown type 5) all along, and
            // reads only after a while, then parses everything to EOF.
            let peer = engine::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let noise = tcp.clone();
                let done = Rc::new(Cell::new(false));
                let stop = done.clone();
                engine::spawn(async move {
                    let mut frame = Vec::new();
                    Frame::Unknown {
                        ty: 5,
                        flags: 0,
                        stream_id: 0,
                        payload: &[0; 64],
                    }
                    .encode(&mut frame)
                    .unwrap();
                    while !stop.get() {
                        let (r, f) = noise.send_all(frame).await;
                        frame = f;
                        if r.is_err() {
                            break;
                        }
                        engine::sleep(Duration::from_millis(1)).await;
                    }
                });
                engine::sleep(Duration::from_millis(200)).await;
                let mut wire = Vec::new();
                let mut rx = tcp.recv_multishot();
                let end = loop {
                    match rx.next().await {
                        Ok(Some(chunk)) => wire.extend_from_slice(&chunk),
                        Ok(None) => break "EOF".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                done.set(true);
                let _ = tcp.shutdown(std::net::Shutdown::Both);
                let (mut data, mut fin, mut goaway, mut at) = (Vec::new(), false, false, 0);
                while let Ok(Decode::Frame(f, n)) = Frame::decode(&wire[at..]) {
                    at += n;
                    match f {
                        Frame::Data { payload, flags, .. } => {
                            data.extend_from_slice(payload);
                            fin |= flags & frame::FLAG_FIN != 0;
                        }
                        Frame::GoAway { .. } => goaway = true,
                        _ => {}
                    }
                }
                (end, data, fin, goaway)
            });
            let config = Config::default().with_max_window(4 << 20);
            let client = Session::client(TcpStream::connect(addr).await.unwrap(), config);
            let payload = Rng::new(7).bytes(1 << 20);
            let mut s = client.open().expect("open");
            s.write_all(&payload).await.expect("write");
            s.close_write().expect("FIN");
            client.close().expect("close");
            drop(s);
            drop(client);
            let (end, data, fin, goaway) = peer.await;
            assert_eq!(end, "EOF", "the peer saw the transport end with {end}");
            assert_eq!(data.len(), payload.len());
            assert_eq!(checksum(&data), checksum(&payload));
            assert!(fin && goaway, "FIN {fin}, GOAWAY {goaway}");
        })
        .expect("io_uring available");
    });
}

/// A sink that counts in place with `read_with` sees every byte, in order,
/// and the end of the stream, over a real session.
#[test]
fn read_with_sink_over_loopback() {
    bounded(Duration::from_secs(30), || {
        engine::block_on(async {
            let (client, server) = pair(Config::default(), Config::default()).await;
            let payload = Rng::new(11).bytes(4 << 20);
            let expected = checksum(&payload);
            let sink = engine::spawn(async move {
                let mut s = server.accept().await.expect("accept");
                let (mut fnv, mut total) = (Fnv::new(), 0usize);
                loop {
                    let n = s
                        .read_with(|bytes| {
                            // Consume at most 10,000 at a time: the rest must stay.
                            let n = bytes.len().min(10_000);
                            fnv.update(&bytes[..n]);
                            n
                        })
                        .await
                        .expect("read_with");
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                (total, fnv.0)
            });
            let mut s = client.open().expect("open");
            s.write_all(&payload).await.expect("write");
            s.close_write().expect("FIN");
            let (total, sum) = sink.await;
            assert_eq!(total, payload.len());
            assert_eq!(sum, expected);
        })
        .expect("io_uring available");
    });
}
