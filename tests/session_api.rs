//! The parts of Go's stream and session API that a port needs, on the io_uring engine over
//! loopback: a stream's early end in `read_exact`, `Stream::session` and addresses, one deadline
//! for both directions, and GOAWAY with a deadline.
//!
//! Every test runs under a watchdog thread, so a hang fails the test instead of blocking the run.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use muxado::engine;
use muxado::engine::net::{TcpListener, TcpStream};
use muxado::{Config, Error, ErrorCode, Session};

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

/// A client and a server session over one loopback connection, on the current core.
async fn pair() -> (Session, Session) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
    let client = TcpStream::connect(addr).await.unwrap();
    let server = accept.await;
    (
        Session::client(client, Config::default()),
        Session::server(server, Config::default()),
    )
}

/// A stream that ends (FIN) before `read_exact` is satisfied reports its own early end, not the
/// session's `PeerEof`: the session is alive and well.
#[test]
fn read_exact_on_a_stream_that_ends_early_is_a_stream_error() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair().await;
            let mut s = client.open().unwrap();
            s.write_all(b"abc").await.unwrap();
            s.close_write().unwrap();
            let mut peer = server.accept().await.unwrap();
            let mut buf = [0u8; 8];
            let err = peer.read_exact(&mut buf).await.unwrap_err();
            assert!(
                !matches!(err, Error::PeerEof(_)),
                "a stream's early end was reported as the session's: {err:?}"
            );
            assert_ne!(err.code(), ErrorCode::PeerEof, "{err:?}");
            let io: std::io::Error = err.clone().into();
            assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof, "{err:?}");
            // The session did not end: a new stream still works both ways.
            assert!(!server.is_closed() && !client.is_closed());
            let mut s2 = client.open().unwrap();
            s2.write_all(b"more").await.unwrap();
            let mut p2 = server.accept().await.unwrap();
            p2.read_exact(&mut buf[..4]).await.unwrap();
            assert_eq!(&buf[..4], b"more");
            client.close().unwrap();
        })
        .expect("io_uring available");
    });
}

/// Waits (bounded) until `client` knows the peer went away: its new streams are refused locally.
async fn until_remote_gone_away(client: &Session) {
    for _ in 0..500 {
        match client.open() {
            Err(Error::RemoteGoneAway) => return,
            Ok(_) => engine::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("open failed with {e:?}, not RemoteGoneAway"),
        }
    }
    panic!("the peer's GOAWAY never arrived");
}

/// A stream hands out its session (which keeps the session open on its own) and the transport's
/// addresses, as Go's `Session()`, `LocalAddr()` and `RemoteAddr()` do.
#[test]
fn a_stream_knows_its_session_and_addresses() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair().await;
            let mut s = client.open().unwrap();
            s.write_all(b"x").await.unwrap();
            let peer = server.accept().await.unwrap();

            assert_eq!(s.local_addr(), client.local_addr());
            assert_eq!(s.peer_addr(), client.peer_addr());
            assert!(s.local_addr().is_some() && s.peer_addr().is_some());
            assert_eq!(s.local_addr(), peer.peer_addr());
            assert_eq!(s.peer_addr(), peer.local_addr());

            // The stream's session handle is a full handle: it outlives `client`.
            let session = s.session();
            drop(client);
            drop(s);
            assert!(!session.is_closed());
            let mut s2 = session.open().unwrap();
            s2.write_all(b"second").await.unwrap();
            let mut p2 = server.accept().await.unwrap();
            let mut buf = [0u8; 6];
            p2.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"second");
            // Dropping the last handles closes it, as for any session.
            drop((session, s2));
            let end = server.wait().await;
            assert_eq!(end.remote.map(|(c, _)| c), Some(ErrorCode::NoError));
            drop(peer);
        })
        .expect("io_uring available");
    });
}

/// One deadline for both directions: a read and a write that wait past it both time out.
#[test]
fn set_deadline_bounds_reads_and_writes() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair().await;
            let mut s = client.open().unwrap();
            s.write_all(b"hi").await.unwrap();
            let mut peer = server.accept().await.unwrap(); // never reads: the window fills

            let deadline = Instant::now() + Duration::from_millis(100);
            s.set_deadline(Some(deadline));
            let mut buf = [0u8; 8];
            let r = engine::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("read deadline never fired");
            assert_eq!(r, Err(Error::Timeout("read")));
            let big = vec![7u8; 4 << 20];
            let w = engine::timeout(Duration::from_secs(5), s.write_all(&big))
                .await
                .expect("write deadline never fired");
            assert_eq!(w, Err(Error::Timeout("write")));
            assert!(Instant::now() >= deadline, "deadline fired early");

            // Cleared, the stream works again (its send window stays full: nobody reads).
            s.set_deadline(None);
            peer.write_all(b"late").await.unwrap();
            s.read_exact(&mut buf[..4]).await.unwrap();
            assert_eq!(&buf[..4], b"late");
            client.close().unwrap();
        })
        .expect("io_uring available");
    });
}

/// Go's `GoAway(code, debug, deadline)`: returns once the frame is sent; the session lives on,
/// the peer can no longer open streams, existing streams carry on.
#[test]
fn go_away_with_deadline_returns_once_sent_and_keeps_the_session() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair().await;
            let mut s = client.open().unwrap();
            s.write_all(b"before").await.unwrap();
            let mut peer = server.accept().await.unwrap();

            let deadline = Instant::now() + Duration::from_secs(5);
            server
                .go_away_with_deadline(ErrorCode::NoError, b"draining", Some(deadline))
                .await
                .unwrap();
            assert!(!server.is_closed());
            until_remote_gone_away(&client).await;

            // The existing stream still works both ways.
            let mut buf = [0u8; 6];
            peer.read_exact(&mut buf).await.unwrap();
            peer.write_all(b"after").await.unwrap();
            s.read_exact(&mut buf[..5]).await.unwrap();
            assert_eq!(&buf[..5], b"after");

            client.close().unwrap();
            let end = server.wait().await;
            assert_eq!(end.remote.map(|(c, _)| c), Some(ErrorCode::NoError));
        })
        .expect("io_uring available");
    });
}

/// A deadline that passes before the GOAWAY is sent fails the call with a timeout, and (as in Go)
/// does not close the session: the frame still goes out. On a dead session it fails at once.
#[test]
fn go_away_past_its_deadline_times_out_without_closing() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (client, server) = pair().await;
            // Already past: the writer cannot have sent the frame at the first poll.
            let r = server
                .go_away_with_deadline(ErrorCode::EnhanceYourCalm, b"", Some(Instant::now()))
                .await;
            assert_eq!(r, Err(Error::Timeout("go_away")));
            assert!(!server.is_closed());
            until_remote_gone_away(&client).await;

            client.close().unwrap();
            server.wait().await;
            let r = server
                .go_away_with_deadline(ErrorCode::NoError, b"", None)
                .await;
            assert_eq!(r, Err(Error::SessionClosed));
        })
        .expect("io_uring available");
    });
}
