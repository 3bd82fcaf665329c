//! Multishot receive into the core's provided-buffer ring, and the chunks it yields.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use io_uring::{cqueue, opcode, types};

use super::stream::{Socket, TcpStream};
use crate::engine::buffers::BufPool;
use crate::engine::op::MultiOp;

/// How much of the core's buffer pool one multishot receive may hold in its queue before it is
/// paused (cancelled, and re-armed when the consumer catches up), so that one slow reader cannot
/// take every buffer of the core. Half the pool: a smaller bound (16 was tried) pauses healthy
/// bulk streams after every burst and cost more than half the throughput.
fn max_queued(pool: &BufPool) -> usize {
    (pool.count() / 2).max(1)
}
/// Size of the owned buffers used when no provided-buffer ring is available.
const FALLBACK_CHUNK: usize = 64 * 1024;

/// A chunk of received bytes. Dropping it returns its provided buffer to the ring.
pub struct RecvBuf {
    inner: Chunk,
}

enum Chunk {
    Ring {
        pool: Rc<BufPool>,
        bid: u16,
        len: usize,
    },
    Owned(Vec<u8>),
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: the CQE handed buffer `bid` to us and it is recycled only when this guard
            // drops, so the kernel does not write to it meanwhile; `pool` keeps the memory alive.
            Chunk::Ring { pool, bid, len } => unsafe { pool.slice(*bid, *len) },
            Chunk::Owned(v) => v,
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        if let Chunk::Ring { pool, bid, .. } = &self.inner {
            // SAFETY: this guard owns buffer `bid` (its CQE handed it out) and is going away.
            unsafe { pool.recycle(*bid) };
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
                        return Poll::Ready(Ok(Some(RecvBuf {
                            inner: Chunk::Ring {
                                pool,
                                bid,
                                len: c.result as usize,
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
