//! Quick loopback measurements of the engine (raw TCP, no muxado). Ignored by default; run with
//! `cargo test --release --test engine_bench -- --ignored --nocapture --test-threads=1`.
//! Nothing here asserts performance.

use std::io;
use std::time::{Duration, Instant};

use muxado::engine::net::{TcpListener, TcpStream};
use muxado::engine::{self, Engine};

const BULK_BYTES: usize = 2 << 30;

/// Two cores, pinned unless `MUXADO_BENCH_NOPIN` is set; receive buffers from
/// `MUXADO_BENCH_BUFS=count,size` (default 128,32768).
fn builder() -> engine::Builder {
    let mut b = Engine::builder()
        .cores(2)
        .pin(std::env::var_os("MUXADO_BENCH_NOPIN").is_none());
    if let Ok(v) = std::env::var("MUXADO_BENCH_BUFS") {
        let (c, s) = v.split_once(',').expect("count,size");
        b = b.recv_buffers(c.parse().unwrap(), s.parse().unwrap());
    }
    b
}

async fn bulk_send(addr: std::net::SocketAddr, chunk: usize) -> io::Result<()> {
    let conn = TcpStream::connect(addr).await?;
    let mut buf = vec![0x5au8; chunk];
    let mut sent = 0;
    while sent < BULK_BYTES {
        let (r, b) = conn.send_all(buf).await;
        r?;
        buf = b;
        sent += chunk;
    }
    conn.shutdown_write()
}

async fn bulk_recv(listener: TcpListener) -> io::Result<(usize, Duration, engine::Stats)> {
    let (conn, _) = listener.accept().await?;
    let start = Instant::now();
    let mut rx = conn.recv_multishot();
    let mut n = 0;
    while let Some(c) = rx.next().await? {
        n += c.len();
    }
    Ok((n, start.elapsed(), engine::stats()))
}

fn report_bulk(what: &str, n: usize, t: Duration, s: engine::Stats) {
    println!(
        "bulk {what}: {:.1} Gbit/s ({} MiB in {:.2?}); receiver core: {} turns, {} enters, {} sqes, {} cqes",
        n as f64 * 8.0 / t.as_secs_f64() / 1e9,
        n >> 20,
        t,
        s.turns,
        s.enters,
        s.sqes,
        s.cqes
    );
}

#[test]
#[ignore]
fn bulk_two_cores() {
    for chunk in [64 << 10, 256 << 10, 1 << 20] {
        let engine = builder().build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rx = engine.spawn_on(1, move || bulk_recv(listener)).unwrap();
        let tx = engine.spawn_on(0, move || bulk_send(addr, chunk)).unwrap();
        tx.join().unwrap().unwrap();
        let (n, t, s) = rx.join().unwrap().unwrap();
        report_bulk(
            &format!("client CPU0 / server CPU1, {} KiB sends", chunk >> 10),
            n,
            t,
            s,
        );
    }
}

#[test]
#[ignore]
fn bulk_one_core() {
    for chunk in [64 << 10, 1 << 20] {
        let (n, t, s) = engine::block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let tx = engine::spawn(bulk_send(addr, chunk));
            let r = bulk_recv(listener).await.unwrap();
            tx.await.unwrap();
            r
        })
        .unwrap();
        report_bulk(
            &format!("both ends on one core, {} KiB sends", chunk >> 10),
            n,
            t,
            s,
        );
    }
}

const RPC_ROUNDS: usize = 50_000;

async fn rpc_server(listener: TcpListener, conns: usize) -> io::Result<()> {
    let mut hs = Vec::new();
    for _ in 0..conns {
        let (conn, _) = listener.accept().await?;
        hs.push(engine::spawn(async move {
            let mut rx = conn.recv_multishot();
            let mut pending = 0usize;
            while let Some(c) = rx.next().await? {
                pending += c.len();
                let replies = pending / 64;
                pending %= 64;
                if replies > 0 {
                    let (r, _) = conn.send_all(vec![1u8; 64 * replies]).await;
                    r?;
                }
            }
            io::Result::Ok(())
        }));
    }
    for h in hs {
        h.await?;
    }
    Ok(())
}

async fn rpc_client(addr: std::net::SocketAddr, rounds: usize) -> io::Result<Vec<Duration>> {
    let conn = TcpStream::connect(addr).await?;
    let mut rx = conn.recv_multishot();
    let mut lat = Vec::with_capacity(rounds);
    let mut buf = vec![7u8; 64];
    for _ in 0..rounds {
        let t = Instant::now();
        let (r, b) = conn.send_all(buf).await;
        r?;
        buf = b;
        let mut got = 0;
        while got < 64 {
            got += rx.next().await?.expect("eof").len();
        }
        lat.push(t.elapsed());
    }
    conn.shutdown_write()?;
    Ok(lat)
}

fn report_rpc(what: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "rpc 64 B {what}: {:.1}k ops/s, p50 {:.1} µs, p99 {:.1} µs",
        lat.len() as f64 / wall.as_secs_f64() / 1e3,
        p(0.5).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6
    );
}

#[test]
#[ignore]
fn rpc_one_conn() {
    // Client CPU0 / server CPU1.
    let engine = builder().build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = engine.spawn_on(1, move || rpc_server(listener, 1)).unwrap();
    let start = Instant::now();
    let lat = engine
        .spawn_on(0, move || rpc_client(addr, RPC_ROUNDS))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    report_rpc("1 conn, client CPU0 / server CPU1", lat, start.elapsed());
    srv.join().unwrap().unwrap();
    drop(engine);

    // Both ends on one core.
    let (lat, wall) = engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = engine::spawn(rpc_server(listener, 1));
        let start = Instant::now();
        let lat = rpc_client(addr, RPC_ROUNDS).await.unwrap();
        let wall = start.elapsed();
        srv.await.unwrap();
        let s = engine::stats();
        println!(
            "  (one core: {} turns, {} enters, {} sqes, {} cqes)",
            s.turns, s.enters, s.sqes, s.cqes
        );
        (lat, wall)
    })
    .unwrap();
    report_rpc("1 conn, both ends on one core", lat, wall);
}

#[test]
#[ignore]
fn rpc_64_conns() {
    const CONNS: usize = 64;
    let engine = builder().build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = engine
        .spawn_on(1, move || rpc_server(listener, CONNS))
        .unwrap();
    let start = Instant::now();
    let (lat, s) = engine
        .spawn_on(0, move || async move {
            let hs: Vec<_> = (0..CONNS)
                .map(|_| engine::spawn(rpc_client(addr, RPC_ROUNDS / 8)))
                .collect();
            let mut all = Vec::new();
            for h in hs {
                all.extend(h.await.unwrap());
            }
            (all, engine::stats())
        })
        .unwrap()
        .join()
        .unwrap();
    report_rpc("64 conns, client CPU0 / server CPU1", lat, start.elapsed());
    println!(
        "  (client core: {} turns, {} enters, {} sqes, {} cqes, {:.1} cqes/enter)",
        s.turns,
        s.enters,
        s.sqes,
        s.cqes,
        s.cqes as f64 / s.enters.max(1) as f64
    );
    srv.join().unwrap().unwrap();
}
