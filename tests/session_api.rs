//! The parts of Go's stream and session API that a port needs, on the io_uring engine over
//! loopback: a stream's early end in `read_exact`, `Stream::session` and addresses, one deadline
//! for both directions, and GOAWAY with a deadline.
//!
//! Every test runs under a watchdog thread, so a hang fails the test instead of blocking the run.

use std::sync::mpsc;
use std::time::Duration;

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
