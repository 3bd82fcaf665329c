//! Typed streams: the exact bytes of a typed open (reference §13, examples 17
//! and 18), decoding of a type coalesced with data or split across frames, and
//! interop with ngrok's `muxado` crate (its `typed` module) in both roles.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream},
};
use muxado::heartbeat::{Heartbeat, HeartbeatConfig};
use muxado::{Config, Session, TypedSession};

/// Every wait of these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(5);

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
    engine::block_on(async move {
        let typed = TypedSession::new(Session::client(
            TcpStream::connect(addr).await.unwrap(),
            Config::default(),
        ));
        let mut stream = typed.open_typed(1).await.unwrap();
        assert_eq!((stream.id(), stream.stream_type()), (3, 1));
        let mut ok = [0u8; 2];
        engine::timeout(LIMIT, stream.read_exact(&mut ok))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&ok, b"ok");
        typed.session().close().unwrap();
    })
    .unwrap();
    let (first, rest) = peer.join().unwrap();
    assert_eq!(first, hex("00 00 04 12 00 00 00 03 00 00 00 01"));
    // Nothing else carried data: the type went out alone, in the SYN frame.
    assert!(
        frames(&rest).iter().all(|f| f.0 != 1 || f.3.is_empty()),
        "{rest:02x?}"
    );
}

#[test]
fn heartbeat_open_is_example_18() {
    // The raw peer hangs up once it has the heartbeat stream's open.
    let (addr, peer) = raw_server(12, Vec::new());
    engine::block_on(async move {
        let typed = TypedSession::new(Session::client(
            TcpStream::connect(addr).await.unwrap(),
            Config::default(),
        ));
        let hb = Heartbeat::new(typed, HeartbeatConfig::default());
        hb.start(|_| {}).await.unwrap();
        // The heartbeat never closes the session; the peer's EOF does.
        engine::timeout(LIMIT, hb.wait()).await.unwrap();
    })
    .unwrap();
    let (first, _) = peer.join().unwrap();
    assert_eq!(first, hex("00 00 04 12 00 00 00 03 FF FF FF FF"));
}

/// A raw client writes `chunks` (pausing between them so they arrive apart)
/// to our server, which accepts typed streams and reads their data.
fn serve_raw(chunks: Vec<Vec<u8>>, expect: Vec<(u32, u32, &'static [u8])>) {
    engine::block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
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
        let (tcp, _) = listener.accept().await.unwrap();
        let typed = TypedSession::new(Session::server(tcp, Config::default()));
        for (id, ty, data) in expect {
            let mut stream = engine::timeout(LIMIT, typed.accept_typed())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((stream.id(), stream.stream_type()), (id, ty));
            let mut got = vec![0u8; data.len()];
            engine::timeout(LIMIT, stream.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, data);
        }
        typed.session().close().unwrap();
        // The raw peer's thread ends at our EOF; wait for it off the core.
        engine::timeout(LIMIT, async {
            while !peer.is_finished() {
                engine::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    })
    .unwrap();
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

// ---- interop with ngrok's crate -----------------------------------------------------------

const OUR_TYPES: [u32; 4] = [0, 1, 42, 0xFFFF_FFFE];
const THEIR_TYPES: [u32; 3] = [2, 7, 0x8000_0000];

fn payload(from: &str, t: u32) -> Vec<u8> {
    // Larger than one read, so data crosses several frames both ways.
    let mut p = format!("{from}-{t}:").into_bytes();
    p.extend((0..40_000u32).map(|i| (i % 251) as u8));
    p
}

fn answer(t: u32, data: &[u8]) -> Vec<u8> {
    let mut a = t.to_be_bytes().to_vec();
    a.extend_from_slice(data);
    a
}

/// ngrok's side: answers our `OUR_TYPES.len()` streams (type + data back) and
/// opens one stream of each of `THEIR_TYPES`.
async fn ngrok_side(tcp: tokio::net::TcpStream, client: bool) -> Result<(), BoxError> {
    use ngrok_muxado::typed::{StreamType, Typed, TypedAccept, TypedOpenClose, TypedSession as _};
    use ngrok_muxado::SessionBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let builder = SessionBuilder::new(tcp);
    let builder = if client {
        builder.client()
    } else {
        builder.server()
    };
    let (mut open, mut accept) = Typed::new(builder.start()).split_typed();
    let acceptor = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in OUR_TYPES {
            let mut stream = accept.accept_typed().await?;
            handlers.push(tokio::spawn(async move {
                let t = *stream.typ();
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await?;
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
    for t in THEIR_TYPES {
        let mut stream = open.open_typed(StreamType::clamp(t)).await?;
        let sent = payload("ngrok", t);
        stream.write_all(&sent).await?;
        stream.shutdown().await?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await?;
        assert!(
            back == answer(t, &sent),
            "ngrok's stream of type {t}: {} bytes back",
            back.len()
        );
    }
    let (seen, _accept) = acceptor.await??;
    let mut want = OUR_TYPES.to_vec();
    want.sort();
    assert_eq!(seen, want);
    Ok(())
}

/// Our side: answers ngrok's streams and opens one stream of each of `OUR_TYPES`.
async fn our_side(session: Session) {
    let typed = TypedSession::new(session);
    let acceptor = engine::spawn({
        let typed = typed.clone();
        async move {
            let mut handlers = Vec::new();
            for _ in THEIR_TYPES {
                let mut stream = typed.accept_typed().await.unwrap();
                handlers.push(engine::spawn(async move {
                    let t = stream.stream_type();
                    let mut data = Vec::new();
                    stream.read_to_end(&mut data).await.unwrap();
                    stream.write_all(&answer(t, &data)).await.unwrap();
                    stream.close_write().unwrap();
                    t
                }));
            }
            let mut seen = Vec::new();
            for h in handlers {
                seen.push(h.await);
            }
            seen
        }
    });
    // Open all first, then talk on them concurrently.
    let mut tasks = Vec::new();
    for t in OUR_TYPES {
        let mut stream = typed.open_typed(t).await.unwrap();
        assert_eq!(stream.stream_type(), t);
        tasks.push(engine::spawn(async move {
            let sent = payload("ours", t);
            stream.write_all(&sent).await.unwrap();
            stream.close_write().unwrap();
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await.unwrap();
            assert!(
                back == answer(t, &sent),
                "our stream of type {t}: {} bytes back",
                back.len()
            );
        }));
    }
    for t in tasks {
        t.await;
    }
    let mut seen = acceptor.await;
    seen.sort();
    assert_eq!(seen, THEIR_TYPES.to_vec());
    // Closing is abortive (data still queued may be lost), so the side that
    // finishes first must not close: ngrok's side hangs up when it is done.
    typed.session().wait().await;
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn interop_typed_streams_we_are_client() {
    let (tx, rx) = mpsc::channel();
    let theirs = thread::spawn(move || {
        tokio_rt().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            tx.send(listener.local_addr()?)?;
            let (tcp, _) = listener.accept().await?;
            tokio::time::timeout(LIMIT, ngrok_side(tcp, false)).await?
        })
    });
    let addr = rx.recv_timeout(LIMIT).unwrap();
    engine::block_on(async move {
        let session = Session::client(TcpStream::connect(addr).await.unwrap(), Config::default());
        engine::timeout(LIMIT, our_side(session)).await.unwrap();
    })
    .unwrap();
    theirs.join().unwrap().unwrap();
}

#[test]
fn interop_typed_streams_we_are_server() {
    // The engine side runs on a thread of its own: say why it cannot run
    // here rather than fail on a closed channel.
    muxado::engine::probe().expect("io_uring available");
    let (tx, rx) = mpsc::channel();
    let ours = thread::spawn(move || {
        engine::block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let (tcp, _) = engine::timeout(LIMIT, listener.accept())
                .await
                .unwrap()
                .unwrap();
            let session = Session::server(tcp, Config::default());
            engine::timeout(LIMIT, our_side(session)).await.unwrap();
        })
        .unwrap()
    });
    let addr = rx.recv_timeout(LIMIT).unwrap();
    tokio_rt()
        .block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tokio::time::timeout(LIMIT, ngrok_side(tcp, true)).await?
        })
        .unwrap();
    ours.join().unwrap();
}
