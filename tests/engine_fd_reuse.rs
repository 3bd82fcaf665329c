//! An operation in flight keeps its socket open until its completion is reaped, and an accept
//! whose future was dropped closes the connection it accepted.
//!
//! Both checks depend on the kernel handing out the lowest free descriptor number, so this
//! binary holds ONE test that runs its cases one after the other: no other test of this process
//! opens descriptors meanwhile.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream},
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Polls `fut` exactly once (so that its SQE is queued but not yet submitted), then drops it.
async fn poll_once_then_drop<F: Future>(fut: F) {
    let mut fut: Pin<Box<F>> = Box::pin(fut);
    std::future::poll_fn(|cx: &mut Context<'_>| {
        assert!(
            fut.as_mut().poll(cx).is_pending(),
            "the op finished at once"
        );
        Poll::Ready(())
    })
    .await;
    drop(fut);
}

/// A recv is queued on connection A, its future and A are dropped, and a new connection B takes
/// A's descriptor number before the SQE reaches the kernel. The stale recv must not read B's
/// bytes: the op keeps A's socket open until its completion, so B gets another number.
async fn stale_recv_does_not_read_a_reused_fd() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let other = std::net::TcpListener::bind("127.0.0.1:0")?;
    let other_addr = other.local_addr()?;

    let a = TcpStream::connect(addr).await?;
    let (_a_peer, _) = listener.accept().await?;
    let a_fd = a.as_raw_fd();
    poll_once_then_drop(a.recv(Vec::with_capacity(64))).await;
    drop(a);

    // Blocking std calls: the loop does not turn, so the recv SQE is still queued.
    let mut b = std::net::TcpStream::connect(other_addr)?;
    let (mut b_peer, _) = other.accept()?;
    b_peer.write_all(b"secret")?;
    // Without the fix, `b` reuses A's number, which the queued recv names.
    let reused = b.as_raw_fd_for_test() == a_fd;

    engine::sleep(Duration::from_millis(50)).await;
    b.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut got = [0u8; 6];
    let r = b.read_exact(&mut got);
    assert!(
        r.is_ok(),
        "connection B lost its bytes to a stale recv (B reused A's fd: {reused}): {r:?}"
    );
    assert_eq!(&got, b"secret");
    Ok(())
}

/// An accept is queued, a client connects, and the accept future is dropped before the loop
/// submits: the accept completes with a connection nobody owns. The engine must close it, so the
/// client sees EOF instead of a live connection nobody serves.
async fn dropped_accept_closes_its_connection() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let before = open_fds();
    poll_once_then_drop(listener.accept()).await;
    let mut client = std::net::TcpStream::connect(addr)?;
    engine::sleep(Duration::from_millis(50)).await;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 1];
    let r = client.read(&mut buf);
    assert!(
        matches!(r, Ok(0)),
        "the orphaned accepted connection was not closed: {r:?}"
    );
    drop(client);
    assert_eq!(open_fds(), before, "a descriptor leaked");
    Ok(())
}

/// Tasks with an accept, a recv, a send and a multishot recv in flight are aborted and every
/// handle dropped: once their completions are reaped, the process holds the descriptors it held
/// before (the sockets stayed open only as long as the kernel needed them).
async fn aborted_ops_leave_no_descriptor_behind() -> io::Result<()> {
    let before = open_fds();
    {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        // Connection 1 carries no data: a recv and a multishot recv wait on its server end.
        let client1 = TcpStream::connect(addr).await?;
        let (server1, _) = listener.accept().await?;
        // Connection 2: its client never reads, so a large send from the server stays in flight.
        let client2 = TcpStream::connect(addr).await?;
        let (server2, _) = listener.accept().await?;
        let pending_accept = engine::spawn(async move { listener.accept().await.map(drop) });
        let s = server1.clone();
        let recv = engine::spawn(async move { s.recv(Vec::with_capacity(64)).await.0.map(drop) });
        let s = server1.clone();
        let multi = engine::spawn(async move { s.recv_multishot().next().await.map(drop) });
        let s = server2.clone();
        let send = engine::spawn(async move { s.send_all(vec![7u8; 32 << 20]).await.0 });
        engine::sleep(Duration::from_millis(20)).await;
        for task in [&pending_accept, &recv, &send, &multi] {
            assert!(
                !task.is_finished(),
                "an op finished early; the test proves nothing"
            );
        }
        pending_accept.abort();
        recv.abort();
        send.abort();
        multi.abort();
        drop((client1, server1, client2, server2));
    }
    // The cancels and the last completions are reaped by the next turns.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open_fds() != before && std::time::Instant::now() < deadline {
        engine::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(open_fds(), before, "descriptors leaked by aborted ops");
    Ok(())
}

trait RawFdForTest {
    fn as_raw_fd_for_test(&self) -> i32;
}

impl RawFdForTest for std::net::TcpStream {
    fn as_raw_fd_for_test(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

#[test]
fn in_flight_ops_own_their_descriptors() {
    engine::block_on(async {
        stale_recv_does_not_read_a_reused_fd().await?;
        dropped_accept_closes_its_connection().await?;
        aborted_ops_leave_no_descriptor_behind().await
    })
    .expect("io_uring available")
    .expect("no I/O error");
}
