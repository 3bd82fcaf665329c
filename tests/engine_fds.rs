//! The engine closes every descriptor it opened (rings, eventfds, sockets) when it shuts down.
//! A separate test binary with one test, so no other test opens descriptors meanwhile.

use std::io;

use muxado::engine::net::{TcpListener, TcpStream};
use muxado::engine::{self, Engine};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn echo_once(
    listener: TcpListener,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>>>> + Send {
    move || {
        Box::pin(async move {
            let (conn, _) = listener.accept().await?;
            let mut rx = conn.recv_multishot();
            while let Some(c) = rx.next().await? {
                let (r, _) = conn.send_all(c.to_vec()).await;
                r?;
            }
            conn.shutdown_write()
        })
    }
}

#[test]
fn fds_return_to_start_after_shutdown() {
    // Warm up lazily opened process descriptors (e.g. the test harness's) first.
    engine::block_on(async {}).unwrap();
    let before = open_fds();

    engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine::spawn(async move {
            let (c, _) = listener.accept().await.unwrap();
            let _ = c.recv(Vec::with_capacity(16)).await;
        });
        let c = TcpStream::connect(addr).await.unwrap();
        // Leave a task with an in-flight recv behind on purpose.
        engine::spawn(async move {
            let _ = c.recv(Vec::with_capacity(16)).await;
        });
        engine::yield_now().await;
        drop(server);
    })
    .unwrap();
    assert_eq!(open_fds(), before, "after block_on");

    for _ in 0..3 {
        let engine = Engine::builder().cores(2).build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine.spawn_on(1, echo_once(listener)).unwrap();
        let client = engine
            .spawn_on(0, move || async move {
                let conn = TcpStream::connect(addr).await?;
                let (r, _) = conn.send_all(vec![9u8; 100_000]).await;
                r?;
                conn.shutdown_write()?;
                let mut rx = conn.recv_multishot();
                let mut n = 0;
                while let Some(c) = rx.next().await? {
                    n += c.len();
                }
                assert_eq!(n, 100_000);
                // Leave a listener with a pending accept behind.
                let l = TcpListener::bind("127.0.0.1:0")?;
                engine::spawn(async move {
                    let _ = l.accept().await;
                });
                io::Result::Ok(())
            })
            .unwrap();
        client.join().unwrap().unwrap();
        server.join().unwrap().unwrap();
        engine.shutdown().unwrap();
        assert_eq!(open_fds(), before, "after Engine::shutdown");
    }
}
