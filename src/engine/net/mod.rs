//! TCP and Unix domain stream sockets whose I/O runs on the core's ring.
//!
//! Sends take owned buffers ([`IoBuf`]) and give them back with the result, so a dropped future
//! can never leave the kernel writing from freed memory. Receives are either multishot into the
//! core's provided-buffer ring ([`TcpStream::recv_multishot`]) or one-shot into an owned buffer
//! ([`TcpStream::recv`]).

//!
//! Parts: `buf` (the owned-buffer traits), `addr` (socket addresses and the plain socket
//! syscalls), `resolve` ([`ToAddrs`]: what connect and bind accept; host names looked up off the
//! core), `listener`, `stream`, `multishot` (multishot receive into the provided-buffer
//! ring), `unix` (Unix listener and stream: a path or an abstract name; once connected, the same
//! operations as a TCP stream). Every operation in flight holds a reference to its socket, so a descriptor is closed
//! only after the last completion naming it was reaped.

mod addr;
mod buf;
mod listener;
mod multishot;
mod resolve;
mod stream;
mod unix;

pub use addr::DEFAULT_BACKLOG;
pub use buf::{IoBuf, IoBufMut};
pub use listener::TcpListener;
pub use multishot::{MultiRecv, RecvBuf};
pub use resolve::{Target, ToAddrs, MAX_LOOKUPS_IN_FLIGHT};
pub use stream::TcpStream;
pub(crate) use stream::VectoredSend;
pub use unix::{UnixAddr, UnixListener, UnixStream};
