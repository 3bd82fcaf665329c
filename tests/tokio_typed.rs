//! Typed streams over the tokio driver (`muxado::tokio::TypedSession`): the
//! exact bytes of a typed open and of a heartbeat open (reference §13,
//! examples 17 and 18), a type coalesced with data or split across frames,
//! and every byte of typed streams both ways against ngrok's `typed` module
//! and against the engine's `TypedSession`, in both roles. The tokio side
//! runs on a two-worker runtime and spawns its stream tasks with
//! `tokio::spawn`, so the typed layer's futures must be `Send`.
#![cfg(feature = "tokio")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use muxado::heartbeat::HeartbeatConfig;
use muxado::tokio::{Heartbeat, Session, TypedSession};
use muxado::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait of these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// (type, flags, stream id, payload) of each whole frame in `bytes`.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 8 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let id = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        let end = (8 + len).min(bytes.len());
        out.push((bytes[3] >> 4, bytes[3] & 0xF, id, bytes[8..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The raw peer's thread: the first bytes it read, and the rest.
type RawPeer = thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

/// A raw peer: accepts one connection, reads the first `n` bytes our side
/// sends, answers with `reply` (or hangs up if it is empty), then reads the
/// rest until our side closes.
fn raw_server(n: usize, reply: Vec<u8>) -> (SocketAddr, RawPeer) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(LIMIT)).unwrap();
        let mut first = vec![0u8; n];
        tcp.read_exact(&mut first).unwrap();
        tcp.write_all(&reply).unwrap();
        if reply.is_empty() {
            tcp.shutdown(std::net::Shutdown::Write).unwrap(); // hang up
        }
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        (first, rest)
    });
    (addr, peer)
}

#[test]
fn typed_open_is_example_17() {
    // The raw peer answers "ok" on stream 3 once it has the 12 bytes of the open.
    let (addr, peer) = raw_server(12, hex("00 00 02 10 00 00 00 03 6F 6B"));
    tokio_rt().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let typed = TypedSession::new(Session::client(tcp, Config::default()));
        let mut stream = typed.open_typed(1).await.unwrap();
        assert_eq!((stream.id(), stream.stream_type()), (3, 1));
        let mut ok = [0u8; 2];
        tokio::time::timeout(LIMIT, stream.read_exact(&mut ok))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&ok, b"ok");
        typed.session().close().unwrap();
        tokio::time::timeout(LIMIT, typed.session().wait())
            .await
            .unwrap();
    });
    let (first, rest) = peer.join().unwrap();
    assert_eq!(first, hex("00 00 04 12 00 00 00 03 00 00 00 01"));
    // Nothing else carried data: the type went out alone, in the SYN frame.
    assert!(
        frames(&rest).iter().all(|f| f.0 != 1 || f.3.is_empty()),
        "{rest:02x?}"
    );
}

/// The heartbeat's open: one SYN frame whose data is the 4 type bytes.
fn heartbeat_open(config: HeartbeatConfig, expect: &str) {
    // The raw peer hangs up once it has the heartbeat stream's open.
    let (addr, peer) = raw_server(12, Vec::new());
    tokio_rt().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let typed = TypedSession::new(Session::client(tcp, Config::default()));
        let hb = Heartbeat::new(typed, config);
        hb.start(|_| {}).await.unwrap();
        // The heartbeat never closes the session; the peer's EOF does.
        tokio::time::timeout(LIMIT, hb.wait()).await.unwrap();
    });
    let (first, _) = peer.join().unwrap();
    assert_eq!(first, hex(expect));
}

#[test]
fn heartbeat_open_is_example_18() {
    heartbeat_open(
        HeartbeatConfig::default(),
        "00 00 04 12 00 00 00 03 FF FF FF FF",
    );
}

#[test]
fn a_configured_heartbeat_type_is_the_syn_frames_data() {
    heartbeat_open(
        HeartbeatConfig::default().with_stream_type(0x4842_0001),
        "00 00 04 12 00 00 00 03 48 42 00 01",
    );
}

/// A raw client writes `chunks` (pausing between them so they arrive apart)
/// to our tokio server, which accepts typed streams and reads their data.
fn serve_raw(chunks: Vec<Vec<u8>>, expect: Vec<(u32, u32, &'static [u8])>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let peer = thread::spawn(move || {
        let mut tcp = StdStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(LIMIT)).unwrap();
        for c in chunks {
            tcp.write_all(&c).unwrap();
            thread::sleep(Duration::from_millis(20));
        }
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
    });
    tokio_rt().block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let typed = TypedSession::new(Session::server(tcp, Config::default()));
        for (id, ty, data) in expect {
            let mut stream = tokio::time::timeout(LIMIT, typed.accept_typed())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((stream.id(), stream.stream_type()), (id, ty));
            let mut got = vec![0u8; data.len()];
            tokio::time::timeout(LIMIT, stream.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, data);
        }
        typed.session().close().unwrap();
    });
    // The raw peer's thread ends at our EOF.
    peer.join().unwrap();
}

#[test]
fn type_and_data_coalesced_in_one_syn_frame() {
    serve_raw(
        vec![hex("00 00 06 12 00 00 00 05 00 00 00 01 68 69")],
        vec![(5, 1, b"hi")],
    );
}

#[test]
fn type_split_across_frames_and_segments() {
    serve_raw(
        vec![
            // Stream 3: 1 type byte in the SYN frame, 3 in the next, then data.
            hex("00 00 01 12 00 00 00 03 00"),
            hex("00 00 03 10 00 00 00 03 00 00 02"),
            hex("00 00 03 10 00 00 00 03 79 6F 21"),
            // Stream 5: the type's frame itself split across two TCP writes,
            // with the data coalesced after the type.
            hex("00 00 06 12 00 00"),
            hex("00 05 AB CD EF 01 6F 6B"),
            // Stream 7: SYN with no data first (a lazy open), then the type.
            hex("00 00 00 12 00 00 00 07"),
            hex("00 00 04 10 00 00 00 07 00 00 00 00"),
            hex("00 00 01 10 00 00 00 07 21"),
        ],
        vec![(3, 2, b"yo!"), (5, 0xABCD_EF01, b"ok"), (7, 0, b"!")],
    );
}

#[test]
fn a_stream_that_ends_before_its_type_is_skipped() {
    serve_raw(
        vec![
            // Stream 3 sends 2 of its 4 type bytes and ends (FIN): dropped.
            hex("00 00 02 13 00 00 00 03 00 00"),
            // Stream 5 is whole.
            hex("00 00 06 12 00 00 00 05 00 00 00 09 6F 6B"),
        ],
        vec![(5, 9, b"ok")],
    );
}

// ---- every byte, both ways, against ngrok's crate and the engine ----------------------------

/// Types the tokio side opens, and types its peer opens.
const TOKIO_TYPES: [u32; 4] = [0, 1, 42, 0xFFFF_FFFE];
const PEER_TYPES: [u32; 3] = [2, 7, 0x8000_0000];

fn payload(from: &str, t: u32) -> Vec<u8> {
    // Larger than one read and one window update, so data crosses many frames.
    let mut p = format!("{from}-{t}:").into_bytes();
    p.extend((0..300_000u32).map(|i| (i.wrapping_mul(31) % 251) as u8 ^ (t as u8)));
    p
}

/// What the acceptor sends back: the type it decoded, then the data it read.
fn answer(t: u32, data: &[u8]) -> Vec<u8> {
    let mut a = t.to_be_bytes().to_vec();
    a.extend_from_slice(data);
    a
}

fn check_answer(who: &str, t: u32, sent: &[u8], back: &[u8]) {
    let want = answer(t, sent);
    assert!(
        back == want,
        "{who}'s stream of type {t}: {} bytes back of {}, first difference at {:?}",
        back.len(),
        want.len(),
        back.iter().zip(&want).position(|(a, b)| a != b)
    );
}

/// Both sides finished their streams: the data both ways is delivered, so
/// closing loses nothing.
#[derive(Clone, Default)]
struct Done(Arc<AtomicUsize>);

impl Done {
    fn arrive(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn both(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= 2
    }
}

/// The tokio side: opens one stream of each of `TOKIO_TYPES` and answers the
/// peer's `PEER_TYPES`, every stream in its own `tokio::spawn`ed task.
async fn tokio_side(typed: TypedSession, closes: bool, done: Done) {
    let acceptor = tokio::spawn({
        let typed = typed.clone();
        async move {
            let mut handlers = Vec::new();
            for _ in PEER_TYPES {
                let mut stream = typed.accept_typed().await.unwrap();
                handlers.push(tokio::spawn(async move {
                    let t = stream.stream_type();
                    let mut data = Vec::new();
                    stream.read_to_end(&mut data).await.unwrap();
                    assert_eq!(data, payload("peer", t), "type {t}");
                    stream.write_all(&answer(t, &data)).await.unwrap();
                    stream.close_write().unwrap();
                    t
                }));
            }
            let mut seen = Vec::new();
            for h in handlers {
                seen.push(h.await.unwrap());
            }
            seen.sort();
            seen
        }
    });
    let mut tasks = Vec::new();
    for t in TOKIO_TYPES {
        let mut stream = typed.open_typed(t).await.unwrap();
        assert_eq!(stream.stream_type(), t);
        tasks.push(tokio::spawn(async move {
            let sent = payload("tokio", t);
            stream.write_all(&sent).await.unwrap();
            stream.close_write().unwrap();
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await.unwrap();
            check_answer("tokio", t, &sent, &back);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(acceptor.await.unwrap(), PEER_TYPES.to_vec());
    done.arrive();
    while !done.both() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if closes {
        typed.session().close().unwrap();
    }
    typed.session().wait().await;
}

/// ngrok's side: answers the tokio side's streams and opens one of each of
/// `PEER_TYPES`; returns (and hangs up) once everything is checked on both
/// sides (its close is abortive: it could lose answers still queued).
async fn ngrok_side(tcp: tokio::net::TcpStream, client: bool, done: Done) -> Result<(), BoxError> {
    use ngrok_muxado::typed::{StreamType, Typed, TypedAccept, TypedOpenClose, TypedSession as _};
    use ngrok_muxado::SessionBuilder;

    let builder = SessionBuilder::new(tcp);
    let builder = if client {
        builder.client()
    } else {
        builder.server()
    };
    let (mut open, mut accept) = Typed::new(builder.start()).split_typed();
    let acceptor = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in TOKIO_TYPES {
            let mut stream = accept.accept_typed().await?;
            handlers.push(tokio::spawn(async move {
                let t = *stream.typ();
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await?;
                assert_eq!(data, payload("tokio", t), "type {t}");
                stream.write_all(&answer(t, &data)).await?;
                stream.shutdown().await?;
                Result::<u32, BoxError>::Ok(t)
            }));
        }
        let mut seen = Vec::new();
        for h in handlers {
            seen.push(h.await??);
        }
        seen.sort();
        Result::<_, BoxError>::Ok((seen, accept))
    });
    let mut tasks = Vec::new();
    for t in PEER_TYPES {
        let mut stream = open.open_typed(StreamType::clamp(t)).await?;
        tasks.push(tokio::spawn(async move {
            let sent = payload("peer", t);
            stream.write_all(&sent).await?;
            stream.shutdown().await?;
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await?;
            check_answer("ngrok", t, &sent, &back);
            Result::<(), BoxError>::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (seen, _accept) = acceptor.await??;
    let mut want = TOKIO_TYPES.to_vec();
    want.sort();
    assert_eq!(seen, want);
    done.arrive();
    while !done.both() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// A listening socket, and the end that connects to it, as tokio streams.
async fn tokio_tcp(listener: Option<StdListener>, addr: SocketAddr) -> tokio::net::TcpStream {
    let tcp = match listener {
        Some(l) => {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            // Bounded: if the engine side could not start (io_uring
            // blocked), its panic is the failure, not a hang here.
            tokio::time::timeout(LIMIT, l.accept())
                .await
                .expect("the engine side connects within the limit")
                .unwrap()
                .0
        }
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    tcp.set_nodelay(true).unwrap();
    tcp
}

fn std_listener() -> (StdListener, SocketAddr) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Runs the tokio side in this thread against ngrok's in another.
fn vs_ngrok(tokio_is_client: bool) {
    let (listener, addr) = std_listener();
    let (ours, theirs) = if tokio_is_client {
        (None, Some(listener))
    } else {
        (Some(listener), None)
    };
    let done = Done::default();
    let their_done = done.clone();
    let theirs = thread::spawn(move || {
        tokio_rt().block_on(async move {
            let tcp = tokio_tcp(theirs, addr).await;
            let f = ngrok_side(tcp, !tokio_is_client, their_done);
            tokio::time::timeout(LIMIT, f).await?
        })
    });
    tokio_rt().block_on(async move {
        let tcp = tokio_tcp(ours, addr).await;
        let session = if tokio_is_client {
            Session::client(tcp, Config::default())
        } else {
            Session::server(tcp, Config::default())
        };
        // ngrok's side hangs up once both are done, which ends our session.
        tokio::time::timeout(LIMIT, tokio_side(TypedSession::new(session), false, done))
            .await
            .expect("the tokio side within the limit");
    });
    theirs.join().unwrap().unwrap();
}

#[test]
fn every_byte_vs_ngrok_tokio_is_client() {
    vs_ngrok(true);
}

#[test]
fn every_byte_vs_ngrok_tokio_is_server() {
    vs_ngrok(false);
}

/// The engine's side: the mirror of [`tokio_side`] with the engine's
/// `muxado::TypedSession` (the same typed layer on the other driver).
async fn engine_side(typed: muxado::TypedSession, closes: bool, done: Done) {
    use muxado::engine;
    let acceptor = engine::spawn({
        let typed = typed.clone();
        async move {
            let mut handlers = Vec::new();
            for _ in TOKIO_TYPES {
                let mut stream = typed.accept_typed().await.unwrap();
                handlers.push(engine::spawn(async move {
                    let t = stream.stream_type();
                    let mut data = Vec::new();
                    stream.read_to_end(&mut data).await.unwrap();
                    assert_eq!(data, payload("tokio", t), "type {t}");
                    stream.write_all(&answer(t, &data)).await.unwrap();
                    stream.close_write().unwrap();
                    t
                }));
            }
            let mut seen = Vec::new();
            for h in handlers {
                seen.push(h.await);
            }
            seen.sort();
            seen
        }
    });
    let mut tasks = Vec::new();
    for t in PEER_TYPES {
        let mut stream = typed.open_typed(t).await.unwrap();
        tasks.push(engine::spawn(async move {
            let sent = payload("peer", t);
            stream.write_all(&sent).await.unwrap();
            stream.close_write().unwrap();
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await.unwrap();
            check_answer("engine", t, &sent, &back);
        }));
    }
    for t in tasks {
        t.await;
    }
    let mut want = TOKIO_TYPES.to_vec();
    want.sort();
    assert_eq!(acceptor.await, want);
    done.arrive();
    while !done.both() {
        engine::sleep(Duration::from_millis(2)).await;
    }
    if closes {
        typed.session().close().unwrap();
    }
    typed.session().wait().await;
}

/// The tokio side in this thread against the engine's on an engine core;
/// the client closes once both sides are done.
fn vs_engine(tokio_is_client: bool) {
    // The engine side runs on a thread of its own: say why it cannot run
    // here rather than fail on a closed channel or a missing peer.
    muxado::engine::probe().expect("io_uring available");
    use muxado::engine::{self, net};
    let done = Done::default();
    let (addr_tx, addr_rx) = mpsc::channel();
    let (tokio_listener, engine_addr) = if tokio_is_client {
        (None, None)
    } else {
        let (l, a) = std_listener();
        (Some(l), Some(a))
    };
    let engine_done = done.clone();
    let theirs = thread::spawn(move || {
        engine::block_on(async move {
            let tcp = match engine_addr {
                Some(addr) => net::TcpStream::connect(addr).await.unwrap(),
                None => {
                    let l = net::TcpListener::bind("127.0.0.1:0").unwrap();
                    addr_tx.send(l.local_addr().unwrap()).unwrap();
                    engine::timeout(LIMIT, l.accept()).await.unwrap().unwrap().0
                }
            };
            let session = if tokio_is_client {
                muxado::Session::server(tcp, Config::default())
            } else {
                muxado::Session::client(tcp, Config::default())
            };
            let typed = muxado::TypedSession::new(session);
            engine::timeout(LIMIT, engine_side(typed, !tokio_is_client, engine_done))
                .await
                .expect("the engine side within the limit");
        })
        .expect("io_uring available")
    });
    tokio_rt().block_on(async move {
        let addr = match &tokio_listener {
            Some(l) => l.local_addr().unwrap(),
            None => addr_rx.recv_timeout(LIMIT).unwrap(),
        };
        let tcp = tokio_tcp(tokio_listener, addr).await;
        let session = if tokio_is_client {
            Session::client(tcp, Config::default())
        } else {
            Session::server(tcp, Config::default())
        };
        let typed = TypedSession::new(session);
        tokio::time::timeout(LIMIT, tokio_side(typed, tokio_is_client, done))
            .await
            .expect("the tokio side within the limit");
    });
    theirs.join().unwrap();
}

#[test]
fn every_byte_vs_engine_tokio_is_client() {
    vs_engine(true);
}

#[test]
fn every_byte_vs_engine_tokio_is_server() {
    vs_engine(false);
}

/// The tokio driver against itself, both ends on one multi-threaded runtime.
#[test]
fn every_byte_tokio_vs_tokio() {
    tokio_rt().block_on(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = TypedSession::new(Session::server(a, Config::default()));
        let client = TypedSession::new(Session::client(b, Config::default()));
        // Both run the same body; the server's opened types are the peer's.
        let done = Done::default();
        let c = tokio::spawn(tokio_side(client, true, done.clone()));
        let s = tokio::spawn(async move {
            let mut handlers = Vec::new();
            for _ in TOKIO_TYPES {
                let mut stream = server.accept_typed().await.unwrap();
                handlers.push(tokio::spawn(async move {
                    let t = stream.stream_type();
                    let mut data = Vec::new();
                    stream.read_to_end(&mut data).await.unwrap();
                    assert_eq!(data, payload("tokio", t));
                    stream.write_all(&answer(t, &data)).await.unwrap();
                    stream.close_write().unwrap();
                }));
            }
            let mut tasks = Vec::new();
            for t in PEER_TYPES {
                let mut stream = server.open_typed(t).await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let sent = payload("peer", t);
                    stream.write_all(&sent).await.unwrap();
                    stream.close_write().unwrap();
                    let mut back = Vec::new();
                    stream.read_to_end(&mut back).await.unwrap();
                    check_answer("tokio server", t, &sent, &back);
                }));
            }
            for h in handlers.into_iter().chain(tasks) {
                h.await.unwrap();
            }
            done.arrive();
            server.session().wait().await;
        });
        tokio::time::timeout(LIMIT, async {
            c.await.unwrap();
            s.await.unwrap();
        })
        .await
        .expect("within the limit");
    });
}
