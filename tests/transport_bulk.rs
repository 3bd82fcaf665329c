//! A rough loopback throughput measurement of one engine session over plain
//! TCP and over TLS (rustls on the ring): two engine cores in two threads,
//! one stream, bulk data one way. It measures, it asserts no speed: run it
//! by hand, in release, on a quiet machine:
//!
//! `cargo test --release --test transport_bulk -- --ignored --nocapture`
//!
//! (Without `--ignored` it moves a few MiB to prove the measurement runs.)
//!
//! It also counts the heap allocations of the whole run (both sides, setup
//! and handshake included) and prints them per MiB moved.

mod transport_util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream, UnixStream},
};
use muxado::transport::{TlsClientConfig, TlsServerConfig, TlsStream, Transport};
use muxado::{Config, Session};
use transport_util::Pki;

/// Counts every allocation of the process.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; the counting touches one atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Unix,
    Tls,
}

/// Sends `total` bytes over one stream from a client core to a server core;
/// returns the time from the first write to the server's last read.
fn bulk(kind: Kind, total: u64, streams: u64, pki: &Pki) -> Duration {
    let server_cfg =
        TlsServerConfig::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let client_cfg = TlsClientConfig::from_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A connected pair made up front: its ends move to the two cores.
    let (ua, ub) = std::os::unix::net::UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        engine::block_on(async move {
            let t: Transport = match kind {
                Kind::Tcp => listener.accept().await.unwrap().0.into(),
                Kind::Unix => UnixStream::from_std(ub).unwrap().into(),
                Kind::Tls => {
                    let (tcp, _) = listener.accept().await.unwrap();
                    TlsStream::accept(tcp, &server_cfg).await.unwrap().into()
                }
            };
            let session = Session::server(t, Config::default());
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let mut s = session.accept().await.unwrap();
                tasks.push(engine::spawn(async move {
                    let mut n = 0u64;
                    while s
                        .read_with(|b| {
                            n += b.len() as u64;
                            b.len()
                        })
                        .await
                        .unwrap()
                        > 0
                    {}
                    n
                }));
            }
            let mut got = 0;
            for t in tasks {
                got += t.await;
            }
            tx.send(Instant::now()).unwrap();
            assert_eq!(got, total);
            session.wait().await;
        })
        .unwrap()
    });
    let start = engine::block_on(async move {
        let t: Transport = match kind {
            Kind::Tcp => TcpStream::connect(addr).await.unwrap().into(),
            Kind::Unix => UnixStream::from_std(ua).unwrap().into(),
            Kind::Tls => {
                let tcp = TcpStream::connect(addr).await.unwrap();
                TlsStream::connect(tcp, &client_cfg, "localhost")
                    .await
                    .unwrap()
                    .into()
            }
        };
        let session = Session::client(t, Config::default());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let mut s = session.open().unwrap();
            let each = total / streams;
            tasks.push(engine::spawn(async move {
                let chunk = vec![0x5Au8; 64 * 1024];
                let mut left = each;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    s.write_all(&chunk[..n]).await.unwrap();
                    left -= n as u64;
                }
                s.close_write().unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
            }));
        }
        for t in tasks {
            t.await;
        }
        session.close().unwrap();
        start
    })
    .unwrap();
    let end = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    server.join().unwrap();
    end - start
}

fn report(kind: Kind, total: u64, streams: u64) {
    let pki = Pki::new();
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let d = bulk(kind, total, streams, &pki);
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs;
    let mbs = total as f64 / d.as_secs_f64() / 1e6;
    eprintln!(
        "{kind:?}: {streams} stream(s), {} MiB in {d:.2?}: {mbs:.0} MB/s; {:.1} allocations per MiB",
        total >> 20,
        allocs as f64 / (total >> 20) as f64
    );
}

#[test]
fn bulk_runs() {
    transport_util::thread_bounded(|| {
        for kind in [Kind::Tcp, Kind::Unix, Kind::Tls] {
            report(kind, 8 << 20, 2);
        }
    });
}

#[test]
#[ignore = "a measurement: run by hand in release (see the file's doc)"]
fn bulk_throughput() {
    for streams in [1, 8] {
        for kind in [Kind::Tcp, Kind::Unix, Kind::Tls] {
            report(kind, 2 << 30, streams);
        }
    }
}
