//! Integration tests of the io_uring engine: executor, timers, cross-core path, TCP on loopback.
//! Every test is bounded in time (timeouts inside, small sizes) and uses loopback only.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use muxado::engine::net::{TcpListener, TcpStream};
use muxado::engine::{self, Elapsed, Engine};

/// A deterministic byte stream (xorshift64*), so that both ends can check every byte in order.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Sends `total` pattern bytes in `chunk`-sized owned buffers, then half-closes.
async fn send_pattern(conn: &TcpStream, seed: u64, total: usize, chunk: usize) -> io::Result<()> {
    let mut pat = Pattern::new(seed);
    let mut sent = 0;
    let mut buf = vec![0u8; chunk];
    while sent < total {
        let n = chunk.min(total - sent);
        buf.resize(n, 0);
        pat.fill(&mut buf);
        let (r, b) = conn.send_all(buf).await;
        r?;
        buf = b;
        sent += n;
    }
    conn.shutdown_write()
}

/// Reads to EOF through a multishot receive and checks every byte against the pattern.
/// `hold` chunks are kept alive at a time (to stress buffer recycling). Returns the byte count.
async fn check_pattern(conn: &TcpStream, seed: u64, hold: usize) -> io::Result<usize> {
    let mut pat = Pattern::new(seed);
    let mut expected = Vec::new();
    let mut carry = Vec::new(); // pattern bytes generated but not yet compared
    let mut total = 0;
    let mut held = std::collections::VecDeque::new();
    let mut rx = conn.recv_multishot();
    while let Some(chunk) = rx.next().await? {
        // Generate enough pattern (in 8-byte units, keeping the tail for later).
        while carry.len() < chunk.len() {
            expected.resize(64 * 1024, 0);
            pat.fill(&mut expected);
            carry.extend_from_slice(&expected);
        }
        if carry[..chunk.len()] != chunk[..] {
            return Err(io::Error::other(format!("mismatch after {total} bytes")));
        }
        carry.drain(..chunk.len());
        total += chunk.len();
        held.push_back(chunk);
        while held.len() > hold {
            held.pop_front();
        }
    }
    Ok(total)
}

#[test]
fn spawn_and_join_fifo() {
    let out = engine::block_on(async {
        let order = Rc::new(RefCell::new(Vec::new()));
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let order = order.clone();
                engine::spawn(async move {
                    order.borrow_mut().push(i);
                    i * 2
                })
            })
            .collect();
        let mut sum = 0;
        for h in handles {
            sum += h.await;
        }
        let order = order.borrow().clone();
        (sum, order)
    })
    .unwrap();
    assert_eq!(out.0, 90);
    assert_eq!(out.1, (0..10).collect::<Vec<_>>(), "run queue is FIFO");
}

#[test]
fn spawn_outside_core_is_an_error_not_a_panic() {
    assert!(engine::try_spawn(async {}).is_err());
    assert_eq!(engine::current_core(), None);
    assert_eq!(engine::stats(), engine::Stats::default());
}

#[test]
fn task_panic_reaches_joiner() {
    let r = engine::block_on(async {
        let h = engine::spawn(async {
            panic!("boom");
        });
        // The joiner sees the panic; the core survives.
        let joined = std::panic::AssertUnwindSafe(h);
        let caught = engine::spawn(async move {
            let _ = joined.await;
        });
        engine::sleep(Duration::from_millis(5)).await;
        assert!(caught.is_finished());
        7
    })
    .unwrap();
    assert_eq!(r, 7);
}

#[test]
fn nested_block_on_is_refused() {
    let r = engine::block_on(async { engine::block_on(async {}).is_err() }).unwrap();
    assert!(r);
}

#[test]
fn sleep_ordering_and_timeouts() {
    engine::block_on(async {
        let order = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        let hs: Vec<_> = [30u64, 10, 20, 0]
            .into_iter()
            .map(|ms| {
                let order = order.clone();
                engine::spawn(async move {
                    engine::sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(ms);
                })
            })
            .collect();
        for h in hs {
            h.await;
        }
        assert_eq!(*order.borrow(), vec![0, 10, 20, 30]);
        assert!(start.elapsed() >= Duration::from_millis(30));

        let r = engine::timeout(
            Duration::from_millis(10),
            engine::sleep(Duration::from_secs(10)),
        );
        assert_eq!(r.await, Err(Elapsed));
        let r = engine::timeout(Duration::from_secs(10), async { 5 }).await;
        assert_eq!(r, Ok(5));
        // A yielding loop still lets timers fire.
        let t = engine::timeout(Duration::from_millis(10), async {
            loop {
                engine::yield_now().await;
            }
        });
        assert_eq!(t.await, Err(Elapsed));
    })
    .unwrap();
}

#[test]
fn engine_run_and_spawn_on() {
    let engine = Engine::builder().cores(2).build().unwrap();
    let cores = engine
        .run(|core| async move {
            engine::sleep(Duration::from_millis(1)).await;
            (core, engine::current_core())
        })
        .unwrap();
    assert_eq!(cores, vec![(0, Some(0)), (1, Some(1))]);

    let h = engine
        .spawn_on(1, || async { engine::current_core() })
        .unwrap();
    assert_eq!(h.join().unwrap(), Some(1));

    // From core 0, send work to core 1 and await it there (a cross-thread wake of core 0).
    let handle = engine.handle();
    let r = engine
        .spawn_on(0, move || async move {
            let other = handle
                .spawn_on(1, || async {
                    engine::sleep(Duration::from_millis(5)).await;
                    engine::current_core().unwrap() * 100
                })
                .unwrap();
            other.await.unwrap() + engine::current_core().unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(r, 100);

    // A panicking remote task is reported, and the core keeps working.
    let e = engine
        .spawn_on(1, || async { panic!("remote boom") })
        .unwrap();
    assert!(matches!(e.join(), Err(engine::JoinError::Panicked(m)) if m.contains("remote boom")));
    assert!(matches!(
        engine.spawn_on(7, || async {}),
        Err(engine::EngineError::NoSuchCore(7))
    ));
    assert_eq!(
        engine.spawn_on(1, || async { 3 }).unwrap().join().unwrap(),
        3
    );
    engine.shutdown().unwrap();
}

#[test]
fn tcp_echo_block_on() {
    engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = engine::spawn(async move {
            let (conn, peer) = listener.accept().await?;
            assert_eq!(peer, conn.peer_addr()?);
            let mut rx = conn.recv_multishot();
            while let Some(chunk) = rx.next().await? {
                let (r, _) = conn.send_all(bytes::BytesMut::from(&chunk[..])).await;
                r?;
            }
            conn.shutdown_write()?;
            io::Result::Ok(())
        });
        let client = TcpStream::connect(addr).await?;
        assert_eq!(client.peer_addr()?, addr);
        for i in 0..50u32 {
            let msg = format!("message {i}").into_bytes();
            let (r, msg) = client.send_all(msg).await;
            r?;
            let mut got = Vec::with_capacity(64);
            while got.len() < msg.len() {
                let (r, g) = client.recv(got).await;
                got = g;
                assert!(r? > 0, "unexpected EOF");
            }
            assert_eq!(got, msg);
        }
        client.shutdown_write()?;
        let (r, _) = client.recv(Vec::with_capacity(16)).await;
        assert_eq!(r?, 0, "EOF after the server's FIN");
        server.await?;
        let s = engine::stats();
        assert!(s.enters > 0 && s.sqes > 0 && s.cqes > 0 && s.turns > 0);
        io::Result::Ok(())
    })
    .unwrap()
    .unwrap();
}

#[test]
fn tcp_echo_across_two_cores() {
    let engine = Engine::builder().cores(2).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = engine
        .spawn_on(1, move || async move {
            let (conn, _) = listener.accept().await?;
            let mut rx = conn.recv_multishot();
            let mut n = 0;
            while let Some(chunk) = rx.next().await? {
                n += chunk.len();
                let (r, _) = conn.send_all(chunk.to_vec()).await;
                r?;
            }
            conn.shutdown_write()?;
            io::Result::Ok((n, engine::current_core()))
        })
        .unwrap();
    let client = engine
        .spawn_on(0, move || async move {
            let conn = TcpStream::connect(addr).await?;
            let mut rx = conn.recv_multishot();
            let mut echoed = Vec::new();
            for i in 0..100u32 {
                let msg = i.to_be_bytes().repeat(16);
                let (r, _) = conn.send_all(msg.clone()).await;
                r?;
                let want = echoed.len() + msg.len();
                while echoed.len() < want {
                    let chunk = rx.next().await?.expect("early EOF");
                    echoed.extend_from_slice(&chunk);
                }
                assert_eq!(&echoed[want - msg.len()..], &msg[..]);
            }
            conn.shutdown_write()?;
            assert!(rx.next().await?.is_none());
            io::Result::Ok((echoed.len(), engine::current_core()))
        })
        .unwrap();
    let (cn, ccore) = client.join().unwrap().unwrap();
    let (sn, score) = server.join().unwrap().unwrap();
    assert_eq!((cn, sn), (6400, 6400));
    assert_eq!((ccore, score), (Some(0), Some(1)));
}

#[test]
fn bulk_64mib_checksummed_through_multishot() {
    const TOTAL: usize = 64 << 20;
    let engine = Engine::builder().cores(2).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = engine
        .spawn_on(1, move || async move {
            assert!(engine::features().unwrap().pbuf_ring);
            let (conn, _) = listener.accept().await?;
            check_pattern(&conn, 42, 4).await
        })
        .unwrap();
    let client = engine
        .spawn_on(0, move || async move {
            let conn = TcpStream::connect(addr).await?;
            send_pattern(&conn, 42, TOTAL, 256 * 1024).await
        })
        .unwrap();
    client.join().unwrap().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), TOTAL);
}

#[test]
fn tiny_buffer_ring_runs_dry_and_recovers() {
    // 4 buffers of 4 KiB, and the reader holds 3 chunks at a time: the ring runs dry (ENOBUFS)
    // over and over; the reader must re-arm and still see every byte in order.
    const TOTAL: usize = 4 << 20;
    engine::Builder::default()
        .recv_buffers(4, 4096)
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let sender = engine::spawn(async move {
                let conn = TcpStream::connect(addr).await?;
                send_pattern(&conn, 7, TOTAL, 100_000).await
            });
            let (conn, _) = listener.accept().await?;
            let n = check_pattern(&conn, 7, 3).await?;
            sender.await?;
            assert_eq!(n, TOTAL);
            io::Result::Ok(())
        })
        .unwrap()
        .unwrap();
}

#[test]
fn many_connections() {
    const CONNS: usize = 200;
    engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = engine::spawn(async move {
            let mut echoers = Vec::new();
            for _ in 0..CONNS {
                let (conn, _) = listener.accept().await?;
                echoers.push(engine::spawn(async move {
                    let mut rx = conn.recv_multishot();
                    while let Some(chunk) = rx.next().await? {
                        let (r, _) = conn.send_all(chunk.to_vec()).await;
                        r?;
                    }
                    conn.shutdown_write()
                }));
            }
            for e in echoers {
                e.await?;
            }
            io::Result::Ok(())
        });
        let clients: Vec<_> = (0..CONNS)
            .map(|i| {
                engine::spawn(async move {
                    let conn = TcpStream::connect(addr).await?;
                    let msg = vec![i as u8; 1000 + i];
                    let (r, msg) = conn.send_all(msg).await;
                    r?;
                    conn.shutdown_write()?;
                    let mut got = Vec::new();
                    let mut rx = conn.recv_multishot();
                    while let Some(c) = rx.next().await? {
                        got.extend_from_slice(&c);
                    }
                    assert_eq!(got, msg);
                    io::Result::Ok(())
                })
            })
            .collect();
        for c in clients {
            c.await?;
        }
        server.await
    })
    .unwrap()
    .unwrap();
}

#[test]
fn eof_and_errors() {
    engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let client = TcpStream::connect(addr).await?;
        let (server, _) = listener.accept().await?;
        client.shutdown_write()?;
        let mut rx = server.recv_multishot();
        assert!(rx.next().await?.is_none(), "FIN is EOF");
        assert!(rx.next().await?.is_none(), "EOF is sticky");
        let (r, _) = server.recv(Vec::with_capacity(8)).await;
        assert_eq!(r?, 0);
        // The other direction still works after a half-close.
        let (r, _) = server.send_all(&b"late"[..]).await;
        r?;
        server.shutdown_write()?;
        let mut got = Vec::new();
        let mut rx = client.recv_multishot();
        while let Some(c) = rx.next().await? {
            got.extend_from_slice(&c);
        }
        assert_eq!(got, b"late");
        // A recv into a full buffer is refused, not mistaken for EOF.
        let (r, _) = server.recv(Vec::new()).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        // Connecting to a closed port fails cleanly.
        drop(listener);
        let e = TcpStream::connect(addr).await;
        assert!(e.is_err());
        io::Result::Ok(())
    })
    .unwrap()
    .unwrap();
}

#[test]
fn dropping_in_flight_ops_is_safe() {
    engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        // An accept that never completes, dropped by a timeout.
        let r = engine::timeout(Duration::from_millis(5), listener.accept()).await;
        assert!(r.is_err());
        let client = TcpStream::connect(addr).await?;
        let (server, _) = listener.accept().await?;
        // A one-shot recv dropped in flight: its buffer is parked until the cancel completes.
        for _ in 0..20 {
            let r = engine::timeout(
                Duration::from_millis(1),
                server.recv(Vec::with_capacity(1 << 16)),
            )
            .await;
            assert!(r.is_err());
        }
        // A multishot recv dropped in flight, then a fresh one.
        {
            let mut rx = server.recv_multishot();
            let r = engine::timeout(Duration::from_millis(2), rx.next()).await;
            assert!(r.is_err());
        }
        // A large send dropped in flight (the peer is not reading, so it cannot finish).
        let big = vec![1u8; 32 << 20];
        let r = engine::timeout(Duration::from_millis(20), client.send_all(big)).await;
        assert!(
            r.is_err(),
            "a 32 MiB send to a non-reading peer should block"
        );
        // The connection is still usable: the dropped send may have put any prefix on the wire
        // (none at all on a loaded machine), so a marker sent after it must arrive last.
        // The server reads meanwhile: the dropped send may have filled the socket buffers.
        let reader = engine::spawn(async move {
            let mut rx = server.recv_multishot();
            let mut tail = Vec::new();
            while let Some(c) = rx.next().await? {
                tail.extend_from_slice(&c[c.len().saturating_sub(3)..]);
                let cut = tail.len().saturating_sub(3);
                tail.drain(..cut);
            }
            io::Result::Ok(tail)
        });
        let (r, _) = client.send_all(b"end".to_vec()).await;
        r?;
        client.shutdown_write()?;
        let tail = engine::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the server reads to EOF")?;
        assert_eq!(tail, b"end");
        // Dropping an op future and its task while data arrives: nothing crashes.
        engine::sleep(Duration::from_millis(5)).await;
        io::Result::Ok(())
    })
    .unwrap()
    .unwrap();
}

#[test]
fn shutdown_with_ops_in_flight() {
    // Tasks with pending accepts/recvs/sleeps are dropped at shutdown; the engine must reclaim
    // their operations and exit promptly.
    let engine = Engine::builder().cores(2).pin(false).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    engine
        .spawn_on(0, move || async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut rx = conn.recv_multishot();
            let _ = rx.next().await;
        })
        .unwrap();
    let connected = engine
        .spawn_on(1, move || async move {
            let conn = TcpStream::connect(addr).await.unwrap();
            engine::spawn(async move {
                let _ = conn.recv(Vec::with_capacity(1024)).await;
            });
            engine::spawn(engine::sleep(Duration::from_secs(3600)));
        })
        .unwrap();
    connected.join().unwrap();
    let start = Instant::now();
    engine.shutdown().unwrap();
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[test]
fn busy_task_does_not_starve_io() {
    // One task yields forever (so every turn has runnable work and never blocks in the kernel);
    // completions must still be reaped each turn. The whole exchange is bounded by a timer, which
    // fires every turn even if completions are starved.
    engine::block_on(async {
        let spinner = engine::spawn(async {
            loop {
                engine::yield_now().await;
            }
        });
        let exchange = async {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let accept = engine::spawn(async move { listener.accept().await });
            let client = TcpStream::connect(addr).await?;
            let (server, _) = accept.await?;
            for _ in 0..100 {
                // The recv is in the kernel before the data is sent: its completion is deferred
                // task work that only an enter with GETEVENTS runs.
                let s = server.clone();
                let recv = engine::spawn(async move { s.recv(Vec::with_capacity(4)).await });
                engine::yield_now().await;
                engine::yield_now().await;
                let (r, _) = client.send_all(&b"ping"[..]).await;
                r?;
                let (r, buf) = recv.await;
                assert_eq!(r?, 4);
                assert_eq!(buf, b"ping");
            }
            io::Result::Ok(())
        };
        let r = engine::timeout(Duration::from_secs(20), exchange).await;
        spinner.abort();
        r.expect("socket I/O was starved by a task that keeps waking itself")
    })
    .unwrap()
    .unwrap();
}

#[test]
fn spawn_on_racing_shutdown_never_hangs() {
    for _ in 0..20 {
        let engine = Engine::builder().cores(2).pin(false).build().unwrap();
        let handle = engine.handle();
        let hs: Vec<_> = (0..10)
            .filter_map(|i| {
                handle
                    .spawn_on(i % 2, || async { engine::yield_now().await })
                    .ok()
            })
            .collect();
        drop(engine);
        for h in hs {
            // Either it ran or it was cancelled; it must not block forever.
            let _ = h.join();
        }
        assert!(matches!(
            handle.spawn_on(0, || async {}),
            Err(engine::EngineError::ShutDown)
        ));
    }
}
