//! Multishot receive into the core's provided-buffer ring, and the chunks it yields.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use io_uring::{cqueue, opcode, types};

use super::stream::{Socket, TcpStream};
use crate::engine::buffers::BufPool;
use crate::engine::op::MultiOp;
use crate::lease::{Lease, Lender};

/// How much of the core's buffer pool one multishot receive may hold in its queue before it is
/// paused (cancelled, and re-armed when the consumer catches up), so that one slow reader cannot
/// take every buffer of the core. Half the pool: a smaller bound (16 was tried) pauses healthy
/// bulk streams after every burst and cost more than half the throughput.
fn max_queued(pool: &BufPool) -> usize {
    (pool.count() / 2).max(1)
}
/// Size of the owned buffers used when no provided-buffer ring is available.
const FALLBACK_CHUNK: usize = 64 * 1024;

/// A chunk of received bytes. Dropping it returns its provided buffer to the ring, unless it lent
/// pieces of it that are still held (then the last of them returns it).
pub struct RecvBuf {
    inner: Chunk,
}

enum Chunk {
    Ring {
        pool: Rc<BufPool>,
        bid: u16,
        len: usize,
        /// Pieces were lent (the buffer counts against the core's lending cap).
        lent: Cell<bool>,
    },
    Owned(Vec<u8>),
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: the CQE handed buffer `bid` to us and it is recycled only when this guard
            // drops, so the kernel does not write to it meanwhile; `pool` keeps the memory alive.
            Chunk::Ring { pool, bid, len, .. } => unsafe { pool.slice(*bid, *len) },
            Chunk::Owned(v) => v,
        }
    }
}

impl RecvBuf {
    /// The received bytes, writable, unless pieces of them were lent to streams (then `None`:
    /// the leases read them). TLS decrypts its records in place here rather than in a copy.
    pub(crate) fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match &mut self.inner {
            Chunk::Ring {
                pool,
                bid,
                len,
                lent,
            } => {
                if lent.get() {
                    return None;
                }
                // SAFETY: the CQE handed buffer `bid` to this guard, which lent no piece of it,
                // and `&mut self` keeps every other use of the guard away while the slice
                // lives; the buffer is recycled only when the guard drops.
                Some(unsafe { pool.slice_mut(*bid, *len) })
            }
            Chunk::Owned(v) => Some(v),
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        if let Chunk::Ring {
            pool, bid, lent, ..
        } = &self.inner
        {
            // SAFETY: this guard holds buffer `bid` (its CQE handed it out) and is going away.
            unsafe { pool.unhold(*bid, lent.get()) };
        }
    }
}

/// Pieces of a ring buffer can be lent (not those of an owned buffer: they are copied).
impl Lender for RecvBuf {
    fn lend(&self, off: usize, len: usize) -> Option<Lease> {
        match &self.inner {
            Chunk::Ring {
                pool,
                bid,
                len: filled,
                lent,
            } => {
                if off.checked_add(len)? > *filled {
                    return None;
                }
                // SAFETY: this guard holds buffer `bid`; the range is within what the kernel
                // filled, so within the buffer.
                unsafe { pool.lend(*bid, off, len, lent) }
            }
            Chunk::Owned(_) => None,
        }
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf").field("len", &self.len()).finish()
    }
}

type FallbackRecv = Pin<Box<dyn std::future::Future<Output = (io::Result<usize>, Vec<u8>)>>>;

/// A reader over a multishot receive. See [`TcpStream::recv_multishot`].
///
/// Also implements `tokio::io::AsyncRead` (copying out of the chunks).
pub struct MultiRecv {
    sock: Rc<Socket>,
    pool: Option<Rc<BufPool>>,
    op: Option<MultiOp>,
    fallback: Option<FallbackRecv>,
    eof: bool,
    /// Partially consumed chunk, for `AsyncRead`.
    pending: Option<(RecvBuf, usize)>,
}

impl MultiRecv {
    /// A reader over `sock`, multishot into `pool` (one-shot receives without it).
    pub(super) fn new(sock: Rc<Socket>, pool: Option<Rc<BufPool>>) -> MultiRecv {
        MultiRecv {
            sock,
            pool,
            op: None,
            fallback: None,
            eof: false,
            pending: None,
        }
    }

    /// The next chunk; `Ok(None)` at EOF.
    pub async fn next(&mut self) -> io::Result<Option<RecvBuf>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll form of [`next`](Self::next).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<RecvBuf>>> {
        if let Some((chunk, off)) = self.pending.take() {
            let mut v = chunk[off..].to_vec();
            drop(chunk);
            v.shrink_to_fit();
            return Poll::Ready(Ok(Some(RecvBuf {
                inner: Chunk::Owned(v),
            })));
        }
        if self.eof {
            return Poll::Ready(Ok(None));
        }
        let Some(pool) = self.pool.clone() else {
            return self.poll_fallback(cx);
        };
        loop {
            if self.op.is_none() {
                if pool.available() == 0 {
                    // Buffers whose last lease was just dropped go back first.
                    pool.reclaim();
                }
                if pool.available() == 0 {
                    // The ring is dry: wait for some consumer to return a buffer.
                    pool.wait_for_buffer(cx.waker());
                    return Poll::Pending;
                }
                let sqe = opcode::RecvMulti::new(types::Fd(self.sock.fd.as_raw_fd()), pool.bgid())
                    .build();
                let keep: Rc<dyn std::any::Any> = self.sock.clone();
                // SAFETY: the SQE points at no memory of ours; buffers come from the pool, which
                // lives as long as the core's ring; the op keeps the socket it names open.
                self.op = Some(unsafe { MultiOp::submit(sqe, max_queued(&pool), keep) }?);
            }
            let op = self.op.as_mut().expect("armed above");
            match ready!(op.poll_next(cx)) {
                None => self.op = None, // Finished: re-arm on the next iteration.
                Some(c) => {
                    if c.result > 0 {
                        let bid = cqueue::buffer_select(c.flags)
                            .expect("multishot recv completion without a buffer");
                        pool.hold(bid);
                        return Poll::Ready(Ok(Some(RecvBuf {
                            inner: Chunk::Ring {
                                pool,
                                bid,
                                len: c.result as usize,
                                lent: Cell::new(false),
                            },
                        })));
                    }
                    if c.result == 0 {
                        self.eof = true;
                        self.op = None;
                        return Poll::Ready(Ok(None));
                    }
                    match -c.result {
                        // Out of buffers, or paused because the consumer fell behind: re-arm once
                        // the op reports its end.
                        libc::ENOBUFS | libc::ECANCELED | libc::EINTR => {}
                        errno => {
                            self.op = None;
                            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
                        }
                    }
                }
            }
        }
    }

    fn poll_fallback(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<RecvBuf>>> {
        if self.fallback.is_none() {
            let stream = TcpStream::from_socket(self.sock.clone());
            self.fallback = Some(Box::pin(async move {
                stream.recv(Vec::with_capacity(FALLBACK_CHUNK)).await
            }));
        }
        let (r, buf) = ready!(self.fallback.as_mut().expect("set above").as_mut().poll(cx));
        self.fallback = None;
        match r {
            Ok(0) => {
                self.eof = true;
                Poll::Ready(Ok(None))
            }
            Ok(_) => Poll::Ready(Ok(Some(RecvBuf {
                inner: Chunk::Owned(buf),
            }))),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncRead for MultiRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match ready!(this.poll_next(cx))? {
                None => return Poll::Ready(Ok(())),
                Some(chunk) => this.pending = Some((chunk, 0)),
            }
        }
        let (chunk, off) = this.pending.as_mut().expect("set above");
        let n = (chunk.len() - *off).min(out.remaining());
        out.put_slice(&chunk[*off..*off + n]);
        *off += n;
        if *off == chunk.len() {
            this.pending = None;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{self, core_loop, net::TcpListener};
    use crate::lease::Lender;

    /// A lent buffer stays out of the ring until its last lease drops, then goes back when the
    /// core reclaims it; the core lends at most a quarter of its buffers; and a lease that
    /// outlives its core still reads its bytes (and writes no ring when dropped).
    #[test]
    fn leases_hold_buffers_until_dropped_and_stop_at_the_cap() {
        let (lease, want) = engine::Builder::default()
            .recv_buffers(8, 4096)
            .block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let client = TcpStream::connect(addr).await.unwrap();
                let (server, _) = listener.accept().await.unwrap();
                let pool = core_loop::buf_pool().expect("this test needs a provided-buffer ring");
                let mut rx = server.recv_multishot();
                let mut leases = Vec::new();
                let mut refused = 0;
                for tag in 0..3u8 {
                    let msg = vec![tag; 1000];
                    client.send_all(msg.clone()).await.0.unwrap();
                    let mut got = Vec::new();
                    while got.len() < msg.len() {
                        let chunk = rx.next().await.unwrap().expect("data");
                        got.extend_from_slice(&chunk);
                        match chunk.lend(0, chunk.len()) {
                            Some(l) => leases.push((l, chunk.to_vec())),
                            None => refused += 1,
                        }
                        assert!(chunk.lend(0, chunk.len() + 1).is_none(), "past the data");
                    }
                    assert_eq!(got, msg);
                }
                assert_eq!(pool.lent(), 2, "a quarter of 8 buffers");
                assert!(refused >= 1);
                assert_eq!(pool.available(), 8 - 2, "only the lent buffers are out");
                for (l, bytes) in &leases {
                    assert_eq!(l.bytes(), &bytes[..]);
                }
                // A clone keeps the buffer when the original goes.
                let (first, bytes) = leases.remove(0);
                let copy = first.clone();
                drop(first);
                pool.reclaim();
                assert_eq!(pool.available(), 6);
                assert_eq!(copy.bytes(), &bytes[..]);
                drop(copy);
                assert_eq!(pool.available(), 6, "back only once the core reclaims");
                pool.reclaim();
                assert_eq!(pool.available(), 7);
                assert_eq!(pool.lent(), 1);
                leases.pop().expect("the second lease")
            })
            .unwrap();
        assert_eq!(lease.bytes(), &want[..], "the memory outlives the core");
        drop(lease);
    }
}
