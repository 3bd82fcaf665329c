//! Typed streams over the tokio driver; see [`TypedSession`].

use std::future::Future;
use std::task::{Context, Poll};

use super::{Session, Stream};
use crate::error::Error;
use crate::typed::{MuxSession, MuxStream};

/// Typed streams over the tokio driver: the driver-neutral
/// [`typed`](crate::typed) layer, instantiated with this driver's
/// [`Session`] and [`Stream`]. The same code writes the 4 type bytes in the
/// SYN frame and reads them back with read-exact, for both drivers.
///
/// ```
/// use muxado::tokio::{Session, TypedSession};
/// use muxado::Config;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let (a, b) = tokio::io::duplex(64 * 1024);
/// let server = TypedSession::new(Session::server(a, Config::default()));
/// let client = TypedSession::new(Session::client(b, Config::default()));
/// let mut out = client.open_typed(7).await?;   // SYN frame: 00 00 00 07
/// out.write_all(b"hi").await?;
/// let mut inbound = server.accept_typed().await?;
/// assert_eq!((inbound.id(), inbound.stream_type()), (3, 7));
/// let mut hi = [0u8; 2];
/// inbound.read_exact(&mut hi).await?;           // the type is not data
/// assert_eq!(&hi, b"hi");
/// client.session().close()?;
/// # Ok(())
/// # }
/// ```
///
/// A tokio-driven session whose streams carry a type; `Send + Sync`.
pub type TypedSession = crate::typed::TypedSession<Session>;

/// A typed stream of a tokio-driven session; `Send`.
pub type TypedStream = crate::typed::TypedStream<Stream>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn typed_handles_and_their_futures_are_send() {
        assert_send_sync::<TypedSession>();
        assert_send_sync::<TypedStream>();
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (io, _peer) = ::tokio::io::duplex(64);
            let typed = TypedSession::new(Session::client(io, crate::Config::default()));
            // The futures cross `tokio::spawn`: the layer written once for
            // both drivers is Send when the driver is.
            let open = typed.open_typed(1);
            assert_send(&open);
            let accept = typed.accept_typed();
            assert_send(&accept);
        });
    }
}
