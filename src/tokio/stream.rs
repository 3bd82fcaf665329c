//! [`Stream`]: one muxado stream of a tokio-driven session.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::time::Sleep;
use bytes::Bytes;

use super::shared::{register, Shared};
use super::SessionStats;
use crate::error::{Error, ErrorCode};
use crate::proto::StreamKey;

/// One stream of a session: a full-duplex, flow-controlled byte stream.
/// It implements tokio's [`AsyncRead`] and [`AsyncWrite`]; `poll_shutdown`
/// half-closes (FIN).
///
/// Dropping it closes it like [`Stream::close`].
pub struct Stream {
    shared: Arc<Shared>,
    key: StreamKey,
    id: u32,
    read_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl Stream {
    pub(super) fn new(shared: &Arc<Shared>, key: StreamKey, id: u32) -> Stream {
        shared.acquire();
        Stream {
            shared: shared.clone(),
            key,
            id,
            read_deadline: None,
            write_deadline: None,
        }
    }

    /// The stream id on the wire.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads into `buf`: the number of bytes, 0 at the end of the stream
    /// (the peer's FIN). Data that arrived before a reset is returned first.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_read_slice(cx, buf)).await
    }

    /// Reads exactly `buf.len()` bytes; [`Error::PeerEof`] if the stream ends first.
    pub async fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            match self.read(buf).await? {
                0 => {
                    return Err(Error::PeerEof(
                        "stream ended before read_exact was satisfied",
                    ))
                }
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    /// Writes some of `data`, waiting for window or buffer space if needed.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_write_slice(cx, data)).await
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes some of `data` like [`Stream::write`], but without copying it:
    /// a payload of at least [`ZERO_COPY_MIN`](crate::proto::ZERO_COPY_MIN)
    /// bytes is queued by reference (a [`Bytes::slice`]; see
    /// [`proto::Session::write_bytes`](crate::proto::Session::write_bytes)) and
    /// the driver sends it from where it is (`poll_write_vectored` when the
    /// transport writes vectored, else piece by piece). Returns how many bytes
    /// were taken; see also [`Stream::write_all_bytes`].
    pub async fn write_bytes(&mut self, data: &Bytes) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_write_bytes(cx, data)).await
    }

    /// Writes all of `data` without copying it (see [`Stream::write_bytes`]).
    pub async fn write_all_bytes(&mut self, mut data: Bytes) -> Result<(), Error> {
        while !data.is_empty() {
            let n = self.write_bytes(&data).await?;
            bytes::Buf::advance(&mut data, n);
        }
        Ok(())
    }

    /// Lends the received bytes to `consume` without copying them out (like
    /// `fill_buf` + `consume`): `consume` returns how many it used, the rest
    /// stay for the next read. It is shown an empty slice once, at the end of
    /// the stream. Returns the count `consume` returned. `consume` runs under
    /// the session's lock: keep it short, and use no handle of the same
    /// session inside it (dropping one there would wait on that lock).
    pub async fn read_with(
        &mut self,
        consume: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, Error> {
        let mut consume = Some(consume);
        poll_fn(|cx| {
            let key = self.key;
            let r = self.shared.with(|st| {
                let mut f = consume.take();
                let r = st
                    .proto
                    .read_with(key, |bytes| (f.take().expect("called at most once"))(bytes));
                if let Ok(None) = r {
                    consume = f;
                    register(&mut st.slot(key).read, cx);
                }
                r
            });
            match r {
                Ok(Some(n)) => Poll::Ready(Ok(n)),
                Ok(None) => expired(&mut self.read_deadline, cx, "read"),
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Half-closes: no more writes; the peer reads EOF after the data. Reading goes on.
    pub fn close_write(&mut self) -> Result<(), Error> {
        let key = self.key;
        self.shared.with(|st| st.proto.close_write(key))
    }

    /// Closes both directions like Go's `Close`: FIN if not yet sent, and the
    /// peer's further data is answered with RST StreamClosed.
    pub fn close(&mut self) -> Result<(), Error> {
        let key = self.key;
        self.shared.with(|st| st.proto.close(key))
    }

    /// Resets the stream with `code`: an RST to the peer, errors on both sides.
    pub fn reset(&mut self, code: ErrorCode) -> Result<(), Error> {
        let key = self.key;
        self.shared
            .with(|st| st.proto.reset(std::time::Instant::now(), key, code))
    }

    /// Reads waiting longer than `deadline` fail with [`Error::Timeout`]; `None` clears it.
    pub fn set_read_deadline(&mut self, deadline: Option<Instant>) {
        self.read_deadline = deadline.map(|d| Box::pin(::tokio::time::sleep_until(d.into())));
    }

    /// Writes waiting (for window or buffer space) beyond `deadline` fail with
    /// [`Error::Timeout`]; `None` clears it. Bytes already accepted are sent.
    pub fn set_write_deadline(&mut self, deadline: Option<Instant>) {
        self.write_deadline = deadline.map(|d| Box::pin(::tokio::time::sleep_until(d.into())));
    }

    /// The session's counters.
    pub fn session_stats(&self) -> SessionStats {
        self.shared.stats()
    }

    /// Poll form of [`Stream::read`].
    pub fn poll_read_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, Error>> {
        let key = self.key;
        let r = self.shared.with(|st| {
            let r = st.proto.read(key, buf);
            if let Ok(None) = r {
                register(&mut st.slot(key).read, cx);
            }
            r
        });
        match r {
            Ok(Some(n)) => Poll::Ready(Ok(n)),
            Ok(None) => expired(&mut self.read_deadline, cx, "read"),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Poll form of [`Stream::write`].
    pub fn poll_write_slice(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, Error>> {
        let key = self.key;
        let r = self.shared.with(|st| {
            let r = st.proto.write(key, data);
            if let Ok(0) = r {
                if !data.is_empty() {
                    register(&mut st.slot(key).write, cx);
                }
            }
            r
        });
        match r {
            Ok(0) if !data.is_empty() => expired(&mut self.write_deadline, cx, "write"),
            r => Poll::Ready(r),
        }
    }

    /// Poll form of [`Stream::write_bytes`].
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &Bytes,
    ) -> Poll<Result<usize, Error>> {
        let key = self.key;
        let r = self.shared.with(|st| {
            let r = st.proto.write_bytes(key, data);
            if let Ok(0) = r {
                if !data.is_empty() {
                    register(&mut st.slot(key).write, cx);
                }
            }
            r
        });
        match r {
            Ok(0) if !data.is_empty() => expired(&mut self.write_deadline, cx, "write"),
            r => Poll::Ready(r),
        }
    }
}

/// Pending, unless the deadline has passed (then the timeout error).
fn expired<T>(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    what: &'static str,
) -> Poll<Result<T, Error>> {
    match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
        Some(Poll::Ready(())) => Poll::Ready(Err(Error::Timeout(what))),
        _ => Poll::Pending,
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let key = self.key;
        // The wakers leave the lock with this closure's result and are
        // dropped after it: dropping a waker may drop a task (and its streams).
        let _wakers: (Option<Waker>, Option<Waker>) = self.shared.with(|st| {
            let w = st.slot(key);
            let taken = (w.read.take(), w.write.take());
            st.proto.release(key);
            taken
        });
        self.shared.release_user();
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let key = this.key;
        // One lock for the size check and the read.
        let r = this.shared.with(|st| {
            let buffered = st.proto.readable_len(key).unwrap_or(0);
            // Only the bytes that will be written need initialising; at least
            // one, since an empty slice reads as end-of-stream.
            let dst = buf.initialize_unfilled_to(buffered.clamp(1, buf.remaining()));
            let r = st.proto.read(key, dst);
            match r {
                Ok(Some(n)) => buf.advance(n),
                Ok(None) => register(&mut st.slot(key).read, cx),
                Err(_) => {}
            }
            r
        });
        match r {
            Ok(Some(_)) => Poll::Ready(Ok(())),
            Ok(None) => expired(&mut this.read_deadline, cx, "read").map_err(io::Error::from),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_slice(cx, data)
            .map_err(io::Error::from)
    }

    /// Written bytes are already queued in the session, whose driver sends
    /// them on its own; there is nothing to wait for.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-closes the stream (FIN).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().close_write().map_err(io::Error::from))
    }
}
