//! Typed streams: every stream carries a `u32` type as its first 4 data bytes
//! (big-endian), so the peer knows which protocol it speaks (protocol
//! reference §8). No new frame types: both peers must agree to use this layer.
//!
//! [`TypedSession::open_typed`] opens a stream and writes the type at once, so
//! the stream is opened on the wire by one DATA+SYN frame whose payload is
//! exactly the type, like Go's `OpenTypedStream` (`00 00 04 12 00 00 00 03 |
//! 00 00 00 01` for type 1 on a client's first stream).
//! [`TypedSession::accept_typed`] reads exactly 4 bytes (Go does one read; a
//! peer may split the type across frames or coalesce it with data, and both
//! decode here).
//!
//! ```
//! use muxado::engine::{self, net::{TcpListener, TcpStream}};
//! use muxado::typed::TypedSession;
//! use muxado::{Config, Session};
//!
//! type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
//!
//! engine::block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = engine::spawn(async move {
//!         let (tcp, _) = listener.accept().await?;
//!         let typed = TypedSession::new(Session::server(tcp, Config::default()));
//!         let mut stream = typed.accept_typed().await?;
//!         assert_eq!(stream.stream_type(), 7);
//!         let mut hello = [0u8; 5];
//!         stream.read_exact(&mut hello).await?;   // the type is not part of the data
//!         stream.write_all(&hello).await?;
//!         stream.close_write()?;
//!         typed.session().wait().await;
//!         Result::Ok(())
//!     });
//!     let tcp = TcpStream::connect(addr).await?;
//!     let typed = TypedSession::new(Session::client(tcp, Config::default()));
//!     let mut stream = typed.open_typed(7).await?;  // SYN frame: the 4 type bytes
//!     assert_eq!((stream.id(), stream.stream_type()), (3, 7));
//!     stream.write_all(b"hello").await?;
//!     let mut echo = Vec::new();
//!     stream.read_to_end(&mut echo).await?;
//!     assert_eq!(echo, b"hello");
//!     typed.session().close()?;
//!     server.await
//! })
//! .expect("io_uring available")
//! .expect("typed echo");
//! ```

use std::future::{poll_fn, Future};
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Error;
use crate::session::{Session, Stream};

/// A stream type: any `u32` (0 included). [`crate::heartbeat`] reserves
/// [`HEARTBEAT_TYPE`](crate::heartbeat::HEARTBEAT_TYPE).
pub type StreamType = u32;

/// Bytes of the type at the start of a typed stream.
pub(crate) const TYPE_LEN: usize = 4;

/// The first bytes of a stream of type `t` (big-endian). Driver-neutral: any
/// driver of typed streams writes these.
pub(crate) const fn encode_type(t: StreamType) -> [u8; TYPE_LEN] {
    t.to_be_bytes()
}

/// The type carried by a stream's first [`TYPE_LEN`] bytes.
pub(crate) const fn decode_type(bytes: [u8; TYPE_LEN]) -> StreamType {
    StreamType::from_be_bytes(bytes)
}

mod sealed {
    pub trait Sealed {}
}

/// What the typed and heartbeat layers need of a driver's session: open a
/// stream, accept the peer's. Implemented by the engine's [`Session`] and
/// the tokio driver's `muxado::tokio::Session`, so that both layers are
/// written once, for both drivers. Sealed: the layers rely on the drivers'
/// lazy SYN (the first write opens the stream on the wire).
pub trait MuxSession: sealed::Sealed {
    /// The driver's stream.
    type Stream: MuxStream;

    /// Opens a stream; nothing is sent until its first write.
    fn open(&self) -> Result<Self::Stream, Error>;

    /// Waits for the next stream the peer opens.
    fn accept(&self) -> impl Future<Output = Result<Self::Stream, Error>>;
}

/// What the typed and heartbeat layers need of a driver's stream: the poll
/// forms of read and write. Sealed, like [`MuxSession`].
pub trait MuxStream: sealed::Sealed {
    /// Reads into `buf` (0 at the end of the stream).
    fn poll_read_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, Error>>;

    /// Writes some of `data`.
    fn poll_write_slice(&mut self, cx: &mut Context<'_>, data: &[u8])
        -> Poll<Result<usize, Error>>;
}

impl sealed::Sealed for Session {}
impl sealed::Sealed for Stream {}

impl MuxSession for Session {
    type Stream = Stream;

    fn open(&self) -> Result<Stream, Error> {
        Session::open(self)
    }

    fn accept(&self) -> impl Future<Output = Result<Stream, Error>> {
        Session::accept(self)
    }
}

impl MuxStream for Stream {
    fn poll_read_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, Error>> {
        Stream::poll_read_slice(self, cx, buf)
    }

    fn poll_write_slice(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, Error>> {
        Stream::poll_write_slice(self, cx, data)
    }
}

#[cfg(feature = "tokio")]
impl sealed::Sealed for crate::tokio::Session {}
#[cfg(feature = "tokio")]
impl sealed::Sealed for crate::tokio::Stream {}

/// Reads exactly `buf.len()` bytes from any driver's stream;
/// [`Error::UnexpectedEof`] if it ends first.
pub(crate) async fn read_exact<T: MuxStream>(
    stream: &mut T,
    mut buf: &mut [u8],
) -> Result<(), Error> {
    while !buf.is_empty() {
        match poll_fn(|cx| stream.poll_read_slice(cx, buf)).await? {
            0 => {
                return Err(Error::UnexpectedEof(
                    "the stream ended before read_exact was satisfied",
                ))
            }
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

/// Writes all of `data` to any driver's stream.
pub(crate) async fn write_all<T: MuxStream>(stream: &mut T, mut data: &[u8]) -> Result<(), Error> {
    while !data.is_empty() {
        let n = poll_fn(|cx| stream.poll_write_slice(cx, data)).await?;
        data = &data[n..];
    }
    Ok(())
}

/// A session whose streams carry a [`StreamType`], over either driver: the
/// engine's [`Session`] (the default) or the tokio driver's
/// (`muxado::tokio::TypedSession` names that one).
///
/// Cheap to clone (it clones the session handle). Over the engine it is
/// `!Send`, like [`Session`]: it lives on the engine core that created the
/// session; over tokio it is `Send + Sync`.
#[derive(Clone, Debug)]
pub struct TypedSession<S = Session> {
    session: S,
}

/// A stream with its type: a full driver stream (through
/// `Deref`/`DerefMut`, and tokio's `AsyncRead`/`AsyncWrite`) plus
/// [`TypedStream::stream_type`]. The 4 type bytes are not part of its data.
#[derive(Debug)]
pub struct TypedStream<T = Stream> {
    stream: T,
    stream_type: StreamType,
}

impl<S: MuxSession> TypedSession<S> {
    /// Wraps `session`. Both peers must use the typed layer.
    pub fn new(session: S) -> TypedSession<S> {
        TypedSession { session }
    }

    /// The underlying session (to close it, wait for its end, read its stats).
    pub fn session(&self) -> &S {
        &self.session
    }

    /// Unwraps the session.
    pub fn into_session(self) -> S {
        self.session
    }

    /// Opens a stream of type `t`: the 4 big-endian type bytes are written at
    /// once, so the stream's SYN frame carries exactly the type.
    ///
    /// Completes at its first poll unless the session's send buffer is full
    /// (then it waits for room, like any write).
    pub async fn open_typed(&self, t: StreamType) -> Result<TypedStream<S::Stream>, Error> {
        let mut stream = self.session.open()?;
        write_all(&mut stream, &encode_type(t)).await?;
        Ok(TypedStream {
            stream,
            stream_type: t,
        })
    }

    /// Waits for the next stream the peer opens and reads its type (exactly 4
    /// bytes, however the peer framed them).
    ///
    /// A stream that ends or is reset before its 4 type bytes arrive is
    /// dropped and the next one awaited (Go would return the error; here an
    /// error is the session's: it is dead and no stream is left to accept).
    /// Until a stream's type has arrived, the streams accepted after it
    /// wait, as in Go.
    pub async fn accept_typed(&self) -> Result<TypedStream<S::Stream>, Error> {
        loop {
            let mut stream = self.session.accept().await?;
            let mut ty = [0u8; TYPE_LEN];
            match read_exact(&mut stream, &mut ty).await {
                Ok(()) => {
                    return Ok(TypedStream {
                        stream,
                        stream_type: decode_type(ty),
                    })
                }
                // That stream failed; if the session did, accept says so.
                Err(_) => continue,
            }
        }
    }

    /// The same as [`TypedSession::accept_typed`] (Go's typed `Accept` also
    /// returns typed streams). For untyped streams, use `session().accept()`.
    pub async fn accept(&self) -> Result<TypedStream<S::Stream>, Error> {
        self.accept_typed().await
    }
}

impl<S: MuxSession> From<S> for TypedSession<S> {
    fn from(session: S) -> Self {
        TypedSession::new(session)
    }
}

impl<T> TypedStream<T> {
    /// The stream's type.
    pub fn stream_type(&self) -> StreamType {
        self.stream_type
    }

    /// The plain stream (its type bytes are already consumed or sent).
    pub fn into_stream(self) -> T {
        self.stream
    }
}

impl<T> Deref for TypedStream<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.stream
    }
}

impl<T> DerefMut for TypedStream<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.stream
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for TypedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for TypedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Half-closes the stream (FIN).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_four_big_endian_bytes() {
        assert_eq!(encode_type(1), [0, 0, 0, 1]);
        assert_eq!(encode_type(0xFFFF_FFFF), [0xFF; 4]);
        assert_eq!(encode_type(0x0102_0304), [1, 2, 3, 4]);
        for t in [0, 1, 7, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF] {
            assert_eq!(decode_type(encode_type(t)), t);
        }
    }
}
