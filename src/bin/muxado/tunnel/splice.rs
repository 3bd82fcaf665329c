//! The hot path: a TCP connection joined with a muxado stream, both ways.
//!
//! - TCP → stream: one-shot receives into a buffer of this core's pool; each
//!   chunk is written into the stream (the one user-space copy, into the
//!   session's send buffer). Not the provided-buffer ring: a multishot
//!   receive keeps filling ring buffers while its consumer waits for stream
//!   window, and that window only comes back through the session's own
//!   reader, which needs ring buffers too. On a fast sender (iperf3) the
//!   ring ran dry and the session deadlocked, heartbeats included. A one-shot
//!   receive is posted only when the stream took the last chunk, so a
//!   blocked stream holds back its TCP sender and nothing else. Receives
//!   start small (4 KiB: an idle connection holds one untouched small
//!   buffer) and grow to 256 KiB while they come back full.
//! - stream → TCP: `Stream::read_with` lends the received bytes, which are
//!   copied once into a buffer taken from this core's pool only when bytes
//!   are there; the buffer is sent and returned to the pool.
//!
//! In steady state nothing is allocated per chunk. TCP → stream is a task of
//! its own, stream → TCP runs in the splice's task; both share the stream
//! through a `RefCell` that is borrowed only inside a poll, never across an
//! await.
//!
//! Endings travel, and an error stays an error:
//! - a clean EOF on one side is a half-close on the other (a muxado FIN, or
//!   a TCP FIN by `shutdown(Write)`), and the other direction goes on;
//! - an error on either side (the TCP peer resets, a send fails, the stream
//!   is reset by the other end or its session dies) aborts the connection:
//!   the stream is reset (`StreamReset`, unless it already failed) and the
//!   socket is closed with `SO_LINGER` 0, which sends a TCP RST. A FIN there
//!   would tell the client a truncated response was complete. The other
//!   direction is stopped at once (its pending receive or send cancelled),
//!   so the close, and the RST, follow right away.
//!
//! An idle limit (the gateway's `--idle-timeout`) puts the connection on its
//! core's idle table (see `idle.rs`): each relayed chunk marks it active, and
//! the core's sweeper resets the stream and shuts the socket down once it has
//! been idle too long: the far end sees a reset, the client a FIN (nothing
//! was in flight to be truncated).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::Shutdown;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use muxado::engine::{self, net::TcpStream, JoinHandle};
use muxado::{ErrorCode, Stream};

use super::idle::{Idle, Touch};
use super::metrics::Meter;

/// Size of the large buffers (sends, and receives while data streams in).
/// With one send in flight per direction, 256 KiB measured 4.2–5.6 Gbit/s
/// through the tunnel with iperf3 where 64 KiB gave 3.3–3.5 (loaded machine).
const CHUNK: usize = 256 * 1024;
/// Size of the receive buffer of a connection that is idle or chatty.
const SMALL: usize = 4 * 1024;
/// Buffers of each size kept in a core's pool for reuse.
const POOL_MAX: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SMALL_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Vec<u8> {
    take_sized(CHUNK)
}

/// An empty buffer of capacity `size` (`CHUNK` or `SMALL`) from this core's pool.
fn take_sized(size: usize) -> Vec<u8> {
    let pool = if size == SMALL { &SMALL_POOL } else { &POOL };
    pool.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(size))
}

fn give_buf(mut buf: Vec<u8>) {
    buf.clear();
    let pool = if buf.capacity() < CHUNK {
        &SMALL_POOL
    } else {
        &POOL
    };
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// Bytes moved by a finished splice.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    pub tcp_to_stream: u64,
    pub stream_to_tcp: u64,
    /// The idle limit ended it.
    pub idle_closed: bool,
    /// An error ended it: the stream was reset and the socket closed with RST
    /// (not set when the idle limit ended it: that client got a FIN).
    pub aborted: bool,
}

/// How one direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Its source's EOF was passed on as a half-close.
    Clean,
    /// An error on either side: the whole connection is to be aborted.
    Failed,
}

/// Splices `tcp` and `stream` until both directions have ended, or one has
/// failed. `meter` (the gateway's) counts bytes from `tcp` as going to the
/// origin. With `idle`, both sides are closed once no byte has moved either
/// way for that long.
pub async fn splice(
    tcp: TcpStream,
    stream: Stream,
    meter: Option<Meter>,
    idle: Option<Duration>,
) -> Moved {
    let stream = Rc::new(RefCell::new(stream));
    let idle = idle.map(|limit| Idle::register(limit, tcp.clone(), stream.clone()));
    let touch = idle.as_ref().map(Idle::toucher);
    let up_total = Rc::new(Cell::new(0u64));
    let mut up = engine::spawn(tcp_to_stream(
        tcp.clone(),
        stream.clone(),
        meter.clone(),
        touch,
        up_total.clone(),
    ));
    let down_total = Cell::new(0u64);
    let failed = {
        let down = pin!(stream_to_tcp(&tcp, &stream, &meter, touch, &down_total));
        first_failure(down, &mut up).await
    };
    let idle_closed = idle.as_ref().is_some_and(Idle::fired);
    if failed {
        // A no-op if the stream already failed (reset by the other end, its
        // session dead, or by the idle sweeper, whose code stays).
        let _ = stream.borrow_mut().reset(ErrorCode::StreamReset);
        // The idle sweeper already sent a FIN: an idle connection has nothing
        // in flight, so its client is told no more than that.
        if !idle_closed {
            abort_on_close(&tcp);
        }
        // Stops the other direction now (if it is still running), before the
        // idle slot its toucher names is freed: its pending receive is
        // cancelled, and its socket handle goes with it.
        up.abort();
    }
    // The last handles of the socket drop here (or when the ring gives back
    // a cancelled operation), which closes it: with a RST after a failure.
    Moved {
        tcp_to_stream: up_total.get(),
        stream_to_tcp: down_total.get(),
        idle_closed,
        aborted: failed && !idle_closed,
    }
}

/// Waits until both directions have ended (false), or one of them failed
/// (true, at once: the other may still be blocked on its socket or stream).
async fn first_failure(
    mut down: Pin<&mut impl Future<Output = End>>,
    up: &mut JoinHandle<End>,
) -> bool {
    let (mut down_end, mut up_end) = (None, None);
    poll_fn(|cx| {
        if down_end.is_none() {
            if let Poll::Ready(e) = down.as_mut().poll(cx) {
                down_end = Some(e);
            }
        }
        if up_end.is_none() {
            if let Poll::Ready(e) = Pin::new(&mut *up).poll(cx) {
                up_end = Some(e);
            }
        }
        match (down_end, up_end) {
            (Some(End::Failed), _) | (_, Some(End::Failed)) => Poll::Ready(true),
            (Some(End::Clean), Some(End::Clean)) => Poll::Ready(false),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Sets `SO_LINGER` to zero: the socket's close resets the connection (RST,
/// unsent bytes dropped) instead of ending it with a FIN. If it cannot be
/// set, the close is an ordinary one (the stream reset still tells the far
/// end); the error is logged. Also for public connections the gateway
/// refuses: a FIN would read as an empty but complete answer.
pub fn abort_on_close(tcp: &TcpStream) {
    if let Err(e) = tcp.set_linger(Some(Duration::ZERO)) {
        tracing::debug!("SO_LINGER 0 refused ({e}): the aborted connection ends with a FIN");
    }
}

type Watch = Option<Touch>;

fn count(meter: &Option<Meter>, watch: &Watch, from_tcp: bool, n: usize) {
    if let Some(w) = watch {
        w.touch();
    }
    if let Some(m) = meter {
        if from_tcp {
            m.to_origin(n);
        } else {
            m.to_client(n);
        }
    }
}

/// TCP → stream; `total` counts the bytes written into the stream (it is
/// read after the task ends, or after it was stopped).
async fn tcp_to_stream(
    tcp: TcpStream,
    stream: Rc<RefCell<Stream>>,
    meter: Option<Meter>,
    watch: Watch,
    total: Rc<Cell<u64>>,
) -> End {
    let mut size = SMALL;
    loop {
        let (r, buf) = tcp.recv(take_sized(size)).await;
        match r {
            Ok(0) => {
                give_buf(buf);
                // Fails only if the stream already failed; the other
                // direction sees that.
                let _ = stream.borrow_mut().close_write();
                return End::Clean;
            }
            Ok(n) => {
                let mut off = 0;
                while off < n {
                    let w =
                        poll_fn(|cx| stream.borrow_mut().poll_write_slice(cx, &buf[off..n])).await;
                    match w {
                        Ok(k) => off += k,
                        Err(_) => {
                            // The stream is gone (reset, session dead).
                            give_buf(buf);
                            return End::Failed;
                        }
                    }
                }
                // Grow while receives come back full; shrink when traffic is small.
                size = if n == buf.capacity() {
                    CHUNK
                } else if n <= SMALL {
                    SMALL
                } else {
                    size
                };
                give_buf(buf);
                total.set(total.get() + n as u64);
                count(&meter, &watch, true, n);
            }
            Err(_) => {
                // The TCP peer reset the connection (or the socket failed).
                give_buf(buf);
                return End::Failed;
            }
        }
    }
}

/// Stream → TCP; `total` counts the bytes sent to the socket.
async fn stream_to_tcp(
    tcp: &TcpStream,
    stream: &RefCell<Stream>,
    meter: &Option<Meter>,
    watch: Watch,
    total: &Cell<u64>,
) -> End {
    loop {
        let mut buf: Option<Vec<u8>> = None;
        let r = poll_fn(|cx| {
            let mut s = stream.borrow_mut();
            // `read_with` lends one piece at a time (a ring buffer's worth at
            // most, when the bytes stay where the kernel received them):
            // gather what is there now, up to one chunk, so that a bulk
            // transfer still leaves in one large send instead of one per piece.
            let mut got = 0;
            loop {
                let slot = &mut buf;
                let room = CHUNK - got;
                // A fresh `read_with` future per poll: it only registers our
                // waker when nothing is there, so dropping it when pending
                // loses nothing.
                let read = s.read_with(|bytes| {
                    if bytes.is_empty() {
                        return 0;
                    }
                    let b = slot.get_or_insert_with(take_buf);
                    let n = bytes.len().min(room);
                    b.extend_from_slice(&bytes[..n]);
                    n
                });
                // The future borrows `s`: poll it in a statement, so it is
                // dropped before the next one.
                #[allow(clippy::let_and_return)]
                let out = pin!(read).poll(cx);
                match out {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        got += n;
                        if got == CHUNK {
                            return Poll::Ready(Ok(got));
                        }
                    }
                    // The end of the stream, an error or nothing more yet:
                    // what was gathered goes first (the end and errors stay
                    // and are seen by the next read).
                    _ if got > 0 => return Poll::Ready(Ok(got)),
                    other => return other,
                }
            }
        })
        .await;
        match (r, buf) {
            (Ok(n), Some(b)) if n > 0 => {
                let (sent, b) = tcp.send_all(b).await;
                give_buf(b);
                if sent.is_err() {
                    // The TCP peer is gone (reset, or the socket failed).
                    return End::Failed;
                }
                total.set(total.get() + n as u64);
                count(meter, &watch, false, n);
            }
            (Ok(_), b) => {
                // End of the stream: FIN to the TCP side; reading goes on.
                if let Some(b) = b {
                    give_buf(b);
                }
                // Fails only if the peer is gone; the other direction sees that.
                let _ = tcp.shutdown(Shutdown::Write);
                return End::Clean;
            }
            (Err(_), b) => {
                // Reset by the other end, or its session died.
                if let Some(b) = b {
                    give_buf(b);
                }
                return End::Failed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The splice relays in steady state without allocating: a counting
    //! allocator (this test binary's only one) counts this thread's
    //! allocations while chunks go both ways through a running splice.
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use muxado::engine::net::TcpListener;
    use muxado::{Config, Session};

    struct Counting;

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    fn note() {
        // `try_with`: thread-locals may be gone while a thread exits.
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        });
    }

    // SAFETY: forwards to the system allocator; counting touches only
    // thread-locals that never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note();
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note();
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            note();
            System.realloc(ptr, layout, new)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    #[test]
    fn steady_state_relay_allocates_nothing() {
        const CHUNK_LEN: usize = 16 * 1024;
        // The counter sees an allocation (so a zero below means something).
        COUNTING.with(|c| c.set(true));
        drop(std::hint::black_box(Vec::<u8>::with_capacity(10)));
        COUNTING.with(|c| c.set(false));
        assert_eq!(ALLOCS.with(|a| a.replace(0)), 1);
        let allocs = engine::block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (origin_side, _) = l.accept().await.unwrap();
            let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
            let c2 = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
            let (s2, _) = l2.accept().await.unwrap();
            let a = Session::client(c2, Config::default());
            let b = Session::server(s2, Config::default());
            let mut near = a.open().unwrap();
            near.write_all(b"!").await.unwrap();
            let mut far = b.accept().await.unwrap();
            let mut one = [0u8; 1];
            far.read_exact(&mut one).await.unwrap();
            let relay = engine::spawn(splice(
                origin_side,
                near,
                None,
                Some(Duration::from_secs(60)),
            ));
            let mut out = vec![7u8; CHUNK_LEN];
            let mut back = vec![0u8; CHUNK_LEN];
            let mut rx = client.recv_multishot();
            // 100 warm-up rounds, then 300 counted: client → splice → far end, and back.
            for i in 0..400 {
                if i == 100 {
                    COUNTING.with(|c| c.set(true));
                }
                let (r, b) = client.send_all(std::mem::take(&mut out)).await;
                r.unwrap();
                out = b;
                far.read_exact(&mut back).await.unwrap();
                assert!(back.iter().all(|&x| x == 7));
                far.write_all(&back).await.unwrap();
                let mut got = 0;
                while got < CHUNK_LEN {
                    let chunk = rx.next().await.unwrap().expect("data");
                    got += chunk.len();
                }
                assert_eq!(got, CHUNK_LEN);
            }
            COUNTING.with(|c| c.set(false));
            client.shutdown_write().unwrap();
            far.close_write().unwrap();
            let _ = relay.await;
            ALLOCS.with(Cell::get)
        })
        .expect("io_uring available");
        assert_eq!(allocs, 0, "allocations during 300 relayed round trips");
    }
}
