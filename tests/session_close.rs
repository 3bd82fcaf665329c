//! How a session ends on the wire and what a short session costs: the closing side's GOAWAY is
//! the only one (the peer, which sees GOAWAY then EOF, dies without answering it), the echo still
//! arrives, and addresses are right without being asked of the kernel at start.
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

/// The bench's `connect` cycle: connect, echo once, close. Addresses are right (the peer's is
/// the one connected to or accepted from); the client's GOAWAY(NoError) reaches the server,
/// which dies of the EOF that follows it.
#[test]
fn connect_echo_close() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = engine::spawn(async move {
                let (tcp, from) = listener.accept().await.unwrap();
                let session = Session::server(tcp, Config::default());
                assert_eq!(session.peer_addr(), Some(from));
                let mut s = session.accept().await.unwrap();
                let mut msg = Vec::new();
                s.read_to_end(&mut msg).await.unwrap();
                s.write_all(&msg).await.unwrap();
                s.close_write().unwrap();
                let end = session.wait().await;
                (end, session.local_addr())
            });
            let client =
                Session::client(TcpStream::connect(addr).await.unwrap(), Config::default());
            assert_eq!(client.peer_addr(), Some(addr), "the address connected to");
            let mut s = client.open().unwrap();
            s.write_all(b"hello").await.unwrap();
            s.close_write().unwrap();
            let mut echo = Vec::new();
            s.read_to_end(&mut echo).await.unwrap();
            assert_eq!(echo, b"hello");
            drop(s);
            let client_local = client.local_addr();
            client.close().unwrap();
            let mine = engine::timeout(Duration::from_secs(10), client.wait())
                .await
                .expect("the client's session ends");
            let (theirs, server_local) = server.await;
            assert_eq!(server_local, Some(addr));
            assert!(client_local.is_some());

            assert_eq!(mine.local, Error::SessionClosed);
            assert!(matches!(theirs.local, Error::PeerEof(_)), "{theirs:?}");
            let (code, debug) = theirs.remote.expect("the client's GOAWAY arrived");
            assert_eq!(code, ErrorCode::NoError);
            assert_eq!(debug, b"no error");
        })
        .expect("io_uring available")
    });
}

/// What the server sends back, on the wire, to a client that ends with `ending` then FIN.
async fn answer_to(ending: &[u8]) -> (Vec<u8>, Error) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = engine::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        Session::server(tcp, Config::default()).wait().await
    });
    let raw = TcpStream::connect(addr).await.unwrap();
    if !ending.is_empty() {
        raw.send_all(ending.to_vec()).await.0.unwrap();
    }
    raw.shutdown_write().unwrap();
    let end = server.await;
    let mut got = Vec::new();
    loop {
        let (n, buf) = raw.recv(Vec::with_capacity(256)).await;
        match n.unwrap() {
            0 => break,
            _ => got.extend_from_slice(&buf),
        }
    }
    (got, end.local)
}

/// A peer's orderly close (GOAWAY NoError, then FIN) gets no GOAWAY back: only the FIN.
#[test]
fn goaway_then_eof_is_answered_by_fin_alone() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            // GOAWAY: length 8, type 3, stream 0; last id 0, code 0 (NoError).
            let goaway = [0, 0, 8, 3 << 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let (got, local) = answer_to(&goaway).await;
            assert!(matches!(local, Error::PeerEof(_)), "{local:?}");
            assert!(got.is_empty(), "answered with {got:?}");
        })
        .expect("io_uring available")
    });
}

/// A session that dies of the peer's EOF *without* a GOAWAY before it still sends its own
/// GOAWAY(PeerEOF), as Go does.
#[test]
fn an_eof_without_goaway_is_still_answered() {
    bounded(Duration::from_secs(20), || {
        engine::block_on(async {
            let (got, local) = answer_to(&[]).await;
            assert!(matches!(local, Error::PeerEof(_)), "{local:?}");
            // The server's GOAWAY: type 3, code 15 (PeerEOF), then FIN.
            assert!(got.len() >= 16, "no GOAWAY before the FIN: {got:?}");
            assert_eq!(got[3] >> 4, 3, "not a GOAWAY: {got:?}");
            assert_eq!(u32::from_be_bytes(got[12..16].try_into().unwrap()), 15);
        })
        .expect("io_uring available")
    });
}
