//! The tokio driver's own behaviour over loopback TCP: handles that move
//! between threads, deadlines, GOAWAY, a stopped driver, closing, and a peer
//! that breaks the protocol. Each test is bounded by a timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use muxado::proto::Role;
use muxado::tokio::{Session, Stream};
use muxado::{Config, Error, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` on a two-worker runtime; fails instead of hanging.
fn run<F: Future<Output = ()> + Send + 'static>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, tokio::spawn(f))
            .await
            .expect("test timed out (a hang)")
            .expect("test task panicked");
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, c) = tokio::join!(l.accept(), TcpStream::connect(addr));
    (c.unwrap(), a.unwrap().0)
}

async fn session_pair(config: Config) -> (Session, Session) {
    let (c, s) = tcp_pair().await;
    (
        Session::client(c, config.clone()),
        Session::server(s, config),
    )
}

fn fill(id: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (id.wrapping_mul(131) ^ (i as u64).wrapping_mul(7)) as u8;
    }
}

#[test]
fn streams_move_between_threads_with_tokio_spawn() {
    run(async {
        let (client, server) = session_pair(Config::default()).await;
        // The server echoes each stream in a task of its own (any worker).
        let acceptor = tokio::spawn(async move {
            let mut n = 0;
            while let Ok(mut s) = server.accept().await {
                n += 1;
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(&mut s);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
            n
        });
        let mut tasks = Vec::new();
        for id in 0..64u64 {
            let client = client.clone(); // Session: Send + Sync, cheap clone
            tasks.push(tokio::spawn(async move {
                let s = client.open().unwrap();
                let mut data = vec![0u8; 40_000 + id as usize * 997];
                fill(id, &mut data);
                let (mut r, mut w) = tokio::io::split(s);
                let sent = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert_eq!(back, data, "stream {id}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        client.close().unwrap();
        assert_eq!(acceptor.await.unwrap(), 64);
    });
}

#[test]
fn deadlines_end_waiting_reads_and_writes() {
    run(async {
        let (client, server) = session_pair(Config::default()).await;
        let mut s = client.open().unwrap();
        s.write_all(b"x").await.unwrap();
        let mut peer = server.accept().await.unwrap();
        // Nothing to read: the read deadline ends the wait.
        let t0 = Instant::now();
        peer.set_read_deadline(Some(Instant::now() + Duration::from_millis(100)));
        let mut one = [0u8; 1];
        peer.read_exact(&mut one).await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(peer.read(&mut buf).await, Err(Error::Timeout("read")));
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // The peer never reads: the writer gets exactly one window, then waits
        // (bounded memory), and the write deadline ends the wait.
        s.set_write_deadline(Some(Instant::now() + Duration::from_millis(300)));
        let chunk = vec![7u8; 32 * 1024];
        let mut accepted = 1u64; // the "x"
        let err = loop {
            match s.write(&chunk).await {
                Ok(n) => accepted += n as u64,
                Err(e) => break e,
            }
        };
        assert_eq!(err, Error::Timeout("write"));
        assert_eq!(accepted, 256 * 1024, "bytes accepted without credit");
        assert!(s.session_stats().proto.window_stalls > 0);
        // Clearing the deadline and reading resumes the flow.
        s.set_write_deadline(None);
        peer.set_read_deadline(None);
        let mut got = vec![0u8; 256 * 1024 - 1];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        s.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        peer.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more");
    });
}

#[test]
fn go_away_refuses_new_streams_and_keeps_old_ones() {
    run(async {
        let (client, server) = session_pair(Config::default()).await;
        let mut old = client.open().unwrap();
        old.write_all(b"old").await.unwrap();
        let mut old_peer = server.accept().await.unwrap();
        server.go_away(ErrorCode::NoError, b"draining").unwrap();
        // The client learns of the GOAWAY.
        let t0 = Instant::now();
        while client.remote_goaway().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "GOAWAY never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            client.remote_goaway(),
            Some((ErrorCode::NoError, b"draining".to_vec()))
        );
        // A stream opened now fails; the old one goes on both ways.
        let refused = match client.open() {
            Err(e) => e,
            Ok(mut s) => s.write_all(b"new").await.expect_err("write after GOAWAY"),
        };
        assert_eq!(refused, Error::RemoteGoneAway);
        let mut got = [0u8; 3];
        old_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"old");
        old_peer.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        old.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    });
}

#[test]
fn a_stopped_driver_kills_the_session_and_the_peer_sees_eof() {
    run(async {
        let (c, s) = tcp_pair().await;
        let (client, driver) = Session::with_driver(c, Role::Client, Config::default());
        let server = Session::server(s, Config::default());
        let running = tokio::spawn(driver);
        let mut stream = client.open().unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut peer = server.accept().await.unwrap();
        let waiting = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            stream.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        running.abort(); // the driver future is dropped
        let r = waiting.await.unwrap();
        assert!(matches!(r, Err(Error::SessionClosed)), "{r:?}");
        let end = client.wait().await;
        assert!(
            matches!(&end.local, Error::Transport(m) if m.contains("driver")),
            "{end:?}"
        );
        // The transport was dropped with the driver: the peer reads EOF.
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let mut rest = [0u8; 1];
        assert!(peer.read(&mut rest).await.is_err());
        let end = server.wait().await;
        assert!(matches!(end.local, Error::PeerEof(_)), "{end:?}");
    });
}

#[test]
fn close_once_and_dropping_every_handle_closes() {
    run(async {
        let (client, server) = session_pair(Config::default()).await;
        client.close().unwrap();
        assert_eq!(client.close(), Err(Error::SessionClosed));
        assert!(client.open().is_err());
        assert!(client.accept().await.is_err());
        let end = server.wait().await;
        assert_eq!(end.remote, Some((ErrorCode::NoError, b"no error".to_vec())));

        // The last handle (here a stream) dropped: GOAWAY NoError.
        let (client, server) = session_pair(Config::default()).await;
        let mut s: Stream = client.open().unwrap();
        s.write_all(b"x").await.unwrap();
        drop(client);
        let mut peer = server.accept().await.unwrap();
        let mut one = [0u8; 1];
        peer.read_exact(&mut one).await.unwrap();
        assert!(!server.is_closed(), "a live stream keeps the session open");
        drop(s);
        let end = server.wait().await;
        assert_eq!(end.remote, Some((ErrorCode::NoError, b"no error".to_vec())));
    });
}

#[test]
fn a_peer_breaking_the_protocol_gets_goaway_and_eof() {
    run(async {
        let (mut raw, s) = tcp_pair().await;
        let server = Session::server(s, Config::default());
        // A WNDINC whose length is 5 instead of 4: FrameSizeError (8).
        let mut bad = bytes::BytesMut::new();
        muxado::frame::encode_wndinc(&mut bad, 1, 100).unwrap();
        bad[2] = 5;
        bad.extend_from_slice(&[0]);
        raw.write_all(&bad).await.unwrap();
        let end = server.wait().await;
        assert_eq!(end.local.code(), ErrorCode::FrameSizeError, "{end:?}");
        // What comes back is one GOAWAY carrying that code, then EOF.
        let mut back = Vec::new();
        raw.read_to_end(&mut back).await.unwrap();
        match muxado::frame::Frame::decode(&back) {
            Ok(muxado::frame::Decode::Frame(muxado::frame::Frame::GoAway { code, .. }, n)) => {
                assert_eq!(code, ErrorCode::FrameSizeError);
                assert_eq!(n, back.len(), "only the GOAWAY");
            }
            other => panic!("expected a GOAWAY, got {other:?} from {back:?}"),
        }
    });
}

#[test]
fn any_async_read_write_carries_a_session_here_an_in_memory_duplex() {
    run(async {
        // A small pipe: the driver must go round many partial reads and writes.
        let (a, b) = tokio::io::duplex(4096);
        let client = Session::client(a, Config::default());
        let server = Session::server(b, Config::default());
        let echo = tokio::spawn(async move {
            let mut s = server.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            loop {
                match s.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => s.write_all(&buf[..n]).await.unwrap(),
                }
            }
            s.close_write().unwrap();
            server.wait().await
        });
        let mut data = vec![0u8; 1 << 20];
        fill(99, &mut data);
        let s = client.open().unwrap();
        let (mut r, mut w) = tokio::io::split(s);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == data, "echo over the duplex differs");
        client.close().unwrap();
        let end = echo.await.unwrap();
        assert_eq!(end.remote, Some((ErrorCode::NoError, b"no error".to_vec())));
    });
}
