//! Sessions leak no file descriptors, however they end: clean close, streams reset by the peer,
//! a TCP reset, a peer that vanishes mid-frame, and a peer engine shut down mid-transfer.
//! Descriptors in `/proc/self/fd` are counted before and after (rings, eventfds, sockets).
//!
//! One test in this binary, so no other test opens descriptors meanwhile.

use std::sync::mpsc;
use std::time::Duration;

use muxado::engine::net::{TcpListener, TcpStream};
use muxado::engine::{self, Engine};
use muxado::frame::{self, FLAG_SYN};
use muxado::{Config, Error, ErrorCode, Session};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
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

/// Echo streams, then a clean close from the client; both sides end.
async fn clean_close() {
    let (client, server) = pair().await;
    let srv = engine::spawn(async move {
        while let Ok(mut s) = server.accept().await {
            engine::spawn(async move {
                let mut data = Vec::new();
                s.read_to_end(&mut data).await.unwrap();
                s.write_all(&data).await.unwrap();
                s.close_write().unwrap();
            });
        }
        server.wait().await
    });
    for i in 0..20u8 {
        let mut s = client.open().unwrap();
        let msg = vec![i; 1000 + 1000 * i as usize];
        s.write_all(&msg).await.unwrap();
        s.close_write().unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    client.close().unwrap();
    let end = srv.await;
    assert_eq!(end.remote.map(|r| r.0), Some(ErrorCode::NoError));
}

/// The server resets every stream mid-transfer; the client's writes and reads fail with the code.
async fn streams_reset_by_peer() {
    let (client, server) = pair().await;
    let srv = engine::spawn(async move {
        for _ in 0..10 {
            let mut s = server.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            s.read_exact(&mut buf).await.unwrap();
            s.reset(ErrorCode::StreamCancelled).unwrap();
        }
        server
    });
    let mut writers = Vec::new();
    for _ in 0..10 {
        let mut s = client.open().unwrap();
        writers.push(engine::spawn(async move {
            let chunk = [7u8; 16 * 1024];
            loop {
                if let Err(e) = s.write_all(&chunk).await {
                    return e;
                }
            }
        }));
    }
    for w in writers {
        assert_eq!(w.await, Error::RemoteReset(ErrorCode::StreamCancelled));
    }
    let server = srv.await;
    drop(client);
    server.wait().await;
}

/// A raw peer sends a SYN and half of a DATA frame, then the TCP connection ends: with a FIN
/// (`rst == false`) or with a TCP reset (SO_LINGER 0). The session and its stream fail.
async fn peer_vanishes_mid_frame(rst: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
    let raw = TcpStream::connect(addr).await.unwrap();
    let server = Session::server(accept.await, Config::default());

    let mut wire = Vec::new();
    frame::encode_data(&mut wire, 1, &[1u8; 64 * 1024], FLAG_SYN).unwrap();
    wire.truncate(32 * 1024);
    let (r, _) = raw.send_all(wire).await;
    r.unwrap();
    let mut s = server.accept().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 32 * 1024 - frame::HEADER_LEN {
        got += s.read(&mut buf).await.unwrap();
    }
    if rst {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a live `linger` of the right size.
        let rc = unsafe {
            libc::setsockopt(
                raw.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }
    drop(raw);
    let err = s.read(&mut buf).await.unwrap_err();
    assert_eq!(err, Error::SessionClosed);
    let end = server.wait().await;
    if rst {
        assert!(
            matches!(end.local, Error::Transport(_) | Error::PeerEof(_)),
            "{end:?}"
        );
    } else {
        assert!(matches!(end.local, Error::PeerEof(_)), "{end:?}");
    }
}

/// A client on its own engine writes bulk data; the engine is shut down mid-transfer. The server,
/// on another engine, sees its stream fail and its session end.
fn peer_engine_shut_down_mid_transfer() {
    let server_engine = Engine::builder().cores(1).build().unwrap();
    let client_engine = Engine::builder().cores(1).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let server = server_engine
        .spawn_on(0, move || async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let session = Session::server(tcp, Config::default());
            let mut s = session.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            let mut told = false;
            let err = loop {
                match s.read(&mut buf).await {
                    Ok(0) => panic!("clean EOF from a vanished peer"),
                    Ok(n) => got += n,
                    Err(e) => break e,
                }
                if got >= 1 << 20 && !told {
                    told = true;
                    tx.send(()).unwrap();
                }
            };
            let end = session.wait().await;
            (err, end.local, got)
        })
        .unwrap();
    let _client = client_engine
        .spawn_on(0, move || async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let session = Session::client(tcp, Config::default());
            let mut s = session.open().unwrap();
            let chunk = vec![3u8; 64 * 1024];
            loop {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            drop(session);
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("server received 1 MiB");
    client_engine.shutdown().unwrap();
    let (err, local, got) = server.join().unwrap();
    eprintln!("peer engine shut down after {got} bytes: stream {err:?}, session {local:?}");
    assert!(got >= 1 << 20);
    server_engine.shutdown().unwrap();
}

#[test]
fn sessions_close_every_descriptor_however_they_end() {
    // Warm up lazily opened process descriptors first.
    engine::block_on(async {}).unwrap();
    let before = open_fds();

    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        engine::block_on(async {
            let all = async {
                clean_close().await;
                streams_reset_by_peer().await;
                peer_vanishes_mid_frame(false).await;
                peer_vanishes_mid_frame(true).await;
            };
            engine::timeout(Duration::from_secs(20), all)
                .await
                .expect("a session scenario hung");
        })
        .expect("io_uring available");
        let after_block_on = open_fds();
        peer_engine_shut_down_mid_transfer();
        let _ = done_tx.send(());
        after_block_on
    });
    match done_rx.recv_timeout(Duration::from_secs(45)) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test hung"),
    }
    let after_block_on = match worker.join() {
        Ok(n) => n,
        Err(p) => std::panic::resume_unwind(p),
    };
    assert_eq!(after_block_on, before, "after the block_on scenarios");
    assert_eq!(open_fds(), before, "after the engines shut down");
}
