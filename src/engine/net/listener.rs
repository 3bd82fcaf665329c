//! The TCP listener: bind with the plain syscalls, accept on the ring.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types};

use super::addr::{
    cvt, from_sockaddr, listen, new_socket, set_opt, sock_name, to_sockaddr, DEFAULT_BACKLOG,
};
use super::resolve::ToAddrs;
use super::stream::{Socket, TcpStream};
use crate::engine::op::Op;
use crate::engine::ring::Completion;

/// A TCP listener whose accepts run on the ring.
///
/// `bind` sets `SO_REUSEADDR` and `SO_REUSEPORT`, so every core can bind its own listener to the
/// same address and the kernel spreads incoming connections across them.
#[derive(Debug)]
pub struct TcpListener {
    /// Shared with every accept in flight, so the number stays ours until their CQEs.
    sock: Arc<Socket>,
}

impl TcpListener {
    /// Binds and listens ([`DEFAULT_BACKLOG`]) on the first address that binds. Does not need
    /// an engine core.
    ///
    /// Synchronous, meant for startup: a numeric address (a `SocketAddr`, `"127.0.0.1:0"`…) is
    /// parsed inline, but a host name (`"localhost:0"`) is looked up inline too, blocking the
    /// calling thread for the lookup — on an engine core, the whole core. Bind before the
    /// cores start, or pass numeric addresses, to keep a core from waiting on DNS.
    pub fn bind(addr: impl ToAddrs) -> io::Result<TcpListener> {
        Self::bind_with_backlog(addr, DEFAULT_BACKLOG)
    }

    /// [`bind`](Self::bind) with an accept backlog of `backlog` connections (the kernel caps it
    /// at `net.core.somaxconn`).
    ///
    /// ```
    /// let listener = muxado::engine::net::TcpListener::bind_with_backlog("127.0.0.1:0", 64)?;
    /// assert!(listener.local_addr()?.port() > 0);
    /// # std::io::Result::Ok(())
    /// ```
    pub fn bind_with_backlog(addr: impl ToAddrs, backlog: u32) -> io::Result<TcpListener> {
        let addrs = addr.to_target()?.resolve_inline()?;
        let mut last = None;
        for a in addrs.as_slice() {
            match Self::bind_one(a, backlog) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a resolved target has at least one address"))
    }

    fn bind_one(addr: &SocketAddr, backlog: u32) -> io::Result<TcpListener> {
        let fd = new_socket(addr)?;
        let raw = fd.as_raw_fd();
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        let (storage, len) = to_sockaddr(addr);
        // SAFETY: `storage` holds a valid address of `len` bytes.
        cvt(unsafe { libc::bind(raw, &storage as *const _ as *const libc::sockaddr, len) })?;
        listen(raw, backlog)?;
        Ok(TcpListener {
            sock: Arc::new(Socket { fd }),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_name(self.sock.fd.as_raw_fd(), false)
    }

    /// Accepts one connection (`IORING_OP_ACCEPT`). The stream has `TCP_NODELAY` set.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        struct AcceptData {
            addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
            /// Keeps the listening socket open until the CQE (see [`Socket`]).
            listener: Arc<Socket>,
        }
        let data = AcceptData {
            listener: self.sock.clone(),
            // SAFETY: all-zero is a valid sockaddr_storage.
            addr: Box::new((
                unsafe { mem::zeroed() },
                mem::size_of::<libc::sockaddr_storage>() as _,
            )),
        };
        // SAFETY: the SQE points into the boxed address and names the listener's descriptor, both
        // owned by the op until its CQE.
        let op = unsafe {
            Op::submit(data, |d| {
                let fd = d.listener.fd.as_raw_fd();
                let (storage, len) = &mut *d.addr;
                opcode::Accept::new(
                    types::Fd(fd),
                    storage as *mut _ as *mut libc::sockaddr,
                    len as *mut libc::socklen_t,
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            })
        }
        .map_err(|(e, _)| e)?
        .on_orphan(close_accepted);
        let (c, data) = op.await;
        let new_fd = c.io_result()? as RawFd;
        // SAFETY: the kernel returned a fresh descriptor that we now own.
        let owned = unsafe { OwnedFd::from_raw_fd(new_fd) };
        let (storage, len) = &*data.addr;
        let known = from_sockaddr(storage, *len).ok();
        let stream = TcpStream::from_owned(owned, known)?;
        let peer = match known {
            Some(addr) => addr,
            None => stream.peer_addr()?,
        };
        Ok((stream, peer))
    }
}

/// Closes the descriptor an accept returned after its future was dropped: nobody else will,
/// and the peer would wait on a connection nobody serves.
///
/// # Safety
///
/// `c` must be the completion of an accept: a non-negative result is a descriptor nobody owns.
pub(super) unsafe fn close_accepted(c: &Completion) {
    if c.result >= 0 {
        // SAFETY: the kernel returned this fresh descriptor to us and no one else has seen it.
        drop(unsafe { OwnedFd::from_raw_fd(c.result) });
    }
}
