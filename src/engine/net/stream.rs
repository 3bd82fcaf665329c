//! The TCP stream: connect, send (copying or zero-copy), one-shot receive; multishot receive
//! starts here and lives in `multishot`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use io_uring::{opcode, types};

use super::addr::{cvt, new_socket, set_opt, set_opt_value, sock_name, to_sockaddr};
use super::buf::{IoBuf, IoBufMut};
use super::multishot::MultiRecv;
use super::resolve::ToAddrs;
use crate::engine::core_loop;
use crate::engine::op::Op;
use crate::proto::Transmit;

/// Most iovecs one `sendmsg` takes (Linux's `UIO_MAXIOV`); a transmission with more pieces
/// goes out in several sends.
const IOV_MAX: usize = 1024;

/// A session's [`Transmit`] with what a vectored send of it needs: the iovecs and the
/// `msghdr` that point into it. The operation owns all of it while the kernel reads it, and
/// gives it back; the writer keeps one and reuses it, so a send allocates nothing.
pub(crate) struct VectoredSend {
    /// What to send; filled by the session.
    pub(crate) t: Transmit,
    iov: Vec<libc::iovec>,
    /// Boxed so that its address stays put while the op (which the future moves) owns it.
    msg: Option<Box<libc::msghdr>>,
}

impl std::fmt::Debug for VectoredSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectoredSend")
            .field("len", &self.t.len())
            .finish_non_exhaustive()
    }
}

impl VectoredSend {
    /// Empty; allocates nothing until used.
    pub(crate) fn new() -> VectoredSend {
        VectoredSend {
            t: Transmit::new(),
            iov: Vec::new(),
            msg: None,
        }
    }

    /// Points the iovecs and the `msghdr` at the transmission's bytes from `offset` on (at
    /// most [`IOV_MAX`] pieces) and returns the `msghdr`.
    fn prepare(&mut self, offset: usize) -> *const libc::msghdr {
        self.iov.clear();
        self.iov.reserve(self.t.max_chunks().min(IOV_MAX));
        let mut skip = offset;
        for c in self.t.chunks() {
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            let c = &c[skip..];
            skip = 0;
            self.iov.push(libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            });
            if self.iov.len() == IOV_MAX {
                break;
            }
        }
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let msg = self
            .msg
            .get_or_insert_with(|| Box::new(unsafe { std::mem::zeroed() }));
        msg.msg_iov = self.iov.as_mut_ptr();
        msg.msg_iovlen = self.iov.len() as _;
        &**msg
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendKind {
    /// `IORING_OP_SEND`: the kernel copies the bytes into socket buffers.
    Copy,
    /// `IORING_OP_SEND` with `MSG_MORE`: more (or a FIN) follows at once.
    CopyMore,
    /// `IORING_OP_SEND` with `MSG_WAITALL`: on a short send the kernel waits for room and goes
    /// on by itself, instead of completing and being submitted again: a session's sender hands
    /// over up to its whole send buffer at once, and a full socket buffer would otherwise bring
    /// it back for every few hundred KiB.
    CopyAll,
    /// `IORING_OP_SEND_ZC`: two CQEs; the buffer is busy until the notification.
    ZeroCopy,
}

/// An open socket. Every operation in flight on it holds a reference, so the descriptor is
/// closed only after the last handle is dropped AND the last completion naming it was reaped:
/// its number cannot be reused by a new socket while a queued or in-flight SQE still names it.
#[derive(Debug)]
pub(super) struct Socket {
    pub(super) fd: OwnedFd,
}

/// A TCP connection whose I/O runs on the ring.
///
/// Cloning is cheap and shares the socket (so a reader task and a writer task can each hold
/// one); the descriptor closes when the last clone and the last reader are dropped.
#[derive(Debug, Clone)]
pub struct TcpStream {
    sock: Rc<Socket>,
    /// The peer's address when it is known without asking the kernel (the address connected
    /// to, or the one accept returned): a session asks for it on every start, and a
    /// `getpeername` per connection was a measurable part of a short session's cost.
    peer: Option<SocketAddr>,
}

impl TcpStream {
    /// Another handle to an open socket.
    pub(super) fn from_socket(sock: Rc<Socket>) -> TcpStream {
        TcpStream { sock, peer: None }
    }

    /// A connected socket whose peer is `peer` (if known); sets `TCP_NODELAY`.
    pub(super) fn from_owned(fd: OwnedFd, peer: Option<SocketAddr>) -> io::Result<TcpStream> {
        set_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        Ok(TcpStream {
            sock: Rc::new(Socket { fd }),
            peer,
        })
    }

    /// Connects (`IORING_OP_CONNECT`), trying each address in turn until one answers.
    /// `TCP_NODELAY` is on.
    ///
    /// Never blocks the core: a numeric address (a `SocketAddr`, `"127.0.0.1:80"`,
    /// `("::1", 80)`…) is parsed inline, with no lookup and no thread; a host name
    /// (`"localhost:80"`) is looked up on a short-lived thread of its own while this task waits
    /// and the core runs its other tasks (see [`ToAddrs`]). At most
    /// [`MAX_LOOKUPS_IN_FLIGHT`](super::MAX_LOOKUPS_IN_FLIGHT) lookups run at once in the
    /// process; beyond that the connect fails at once.
    pub async fn connect(addr: impl ToAddrs) -> io::Result<TcpStream> {
        let addrs = addr.to_target()?.resolve().await?;
        let mut last = None;
        for a in addrs.as_slice() {
            match Self::connect_one(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a resolved target has at least one address"))
    }

    async fn connect_one(addr: &SocketAddr) -> io::Result<TcpStream> {
        let fd = new_socket(addr)?;
        let (storage, len) = to_sockaddr(addr);
        // The op owns the socket too: dropped mid-connect, it is closed only after the CQE.
        let data = (Box::new(storage), fd);
        // SAFETY: the SQE points into the boxed address and names the socket, both owned by the
        // op until its CQE.
        let op = unsafe {
            Op::submit(data, |(addr, fd)| {
                opcode::Connect::new(
                    types::Fd(fd.as_raw_fd()),
                    &**addr as *const _ as *const libc::sockaddr,
                    len,
                )
                .build()
            })
        }
        .map_err(|(e, _)| e)?;
        let (c, (_, fd)) = op.await;
        c.io_result()?;
        TcpStream::from_owned(fd, Some(*addr))
    }

    /// The descriptor (still owned by the stream).
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }

    /// Local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_name(self.as_raw_fd(), false)
    }

    /// Peer address: the one connected to or accepted from (no system call), else asked of
    /// the kernel.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.peer {
            Some(addr) => Ok(addr),
            None => sock_name(self.as_raw_fd(), true),
        }
    }

    /// Sets `TCP_NOTSENT_LOWAT`: the kernel takes more bytes for this socket only while fewer
    /// than `bytes` of those it holds are still unsent. A bulk sender then queues no more in
    /// the kernel than that, so a small frame sent after it waits behind less.
    pub fn set_notsent_lowat(&self, bytes: u32) -> io::Result<()> {
        set_opt(
            self.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            bytes.min(i32::MAX as u32) as i32,
        )
    }

    /// Sets or clears `TCP_NODELAY` (on by default).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            on as i32,
        )
    }

    /// Sets `SO_LINGER`. `Some(Duration::ZERO)` makes the close abort the connection: the peer
    /// gets a TCP RST instead of a FIN, which is how a proxy tells its client that the far end
    /// failed (a FIN would read as a complete answer). `None` restores the ordinary close.
    pub fn set_linger(&self, linger: Option<std::time::Duration>) -> io::Result<()> {
        let value = libc::linger {
            l_onoff: linger.is_some() as libc::c_int,
            l_linger: linger.map_or(0, |d| d.as_secs().min(i32::MAX as u64) as libc::c_int),
        };
        set_opt_value(self.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &value)
    }

    /// Half-closes: sends FIN after the data already queued. Await your sends first.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    /// Shuts down one or both directions. `Both` also ends a receive pending on
    /// this socket (it completes with EOF), which is how a session stops its reader.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: plain syscall on a socket we own.
        cvt(unsafe { libc::shutdown(self.as_raw_fd(), how) }).map(drop)
    }

    /// Sends from `buf` once (`IORING_OP_SEND`, `MSG_NOSIGNAL`); returns how much was sent, and
    /// the buffer.
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        self.send_at(buf, 0).await
    }

    async fn send_at<B: IoBuf>(&self, buf: B, offset: usize) -> (io::Result<usize>, B) {
        self.send_with(buf, offset, SendKind::Copy).await
    }

    /// Sends all of `buf`, looping over partial sends.
    pub async fn send_all<B: IoBuf>(&self, mut buf: B) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let (r, b) = self.send_at(buf, done).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends all of `buf` once with `IORING_OP_SEND_ZC` (`MSG_NOSIGNAL`): the kernel sends
    /// from the pages of `buf` without copying them into socket buffers (on loopback it copies
    /// anyway). Resolves only after both CQEs: the result, and the notification
    /// (`IORING_CQE_F_NOTIF`) that says the kernel no longer reads the buffer, so `buf` is given
    /// back only when it may be reused. Returns how much was sent. Fails with `EINVAL` (or
    /// `EOPNOTSUPP`) if the kernel or the socket does not support zero-copy sends.
    pub async fn send_zc<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        self.send_with(buf, 0, SendKind::ZeroCopy).await
    }

    /// One send from `buf[offset..]`, the way `kind` says.
    async fn send_with<B: IoBuf>(
        &self,
        buf: B,
        offset: usize,
        kind: SendKind,
    ) -> (io::Result<usize>, B) {
        let len = buf
            .bytes_init()
            .saturating_sub(offset)
            .min(u32::MAX as usize) as u32;
        // SAFETY: the SQE points into `buf`'s stable storage, within its initialized bytes, and
        // names the socket; the op owns both until its final CQE, which for SEND_ZC is the
        // notification, after which the kernel no longer reads the pages.
        let op = unsafe {
            Op::submit((buf, self.sock.clone()), |(b, sock)| {
                let fd = sock.fd.as_raw_fd();
                let ptr = b.stable_ptr().add(offset);
                match kind {
                    SendKind::Copy => opcode::Send::new(types::Fd(fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build(),
                    SendKind::CopyAll => opcode::Send::new(types::Fd(fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                        .build(),
                    SendKind::CopyMore => opcode::Send::new(types::Fd(fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL | libc::MSG_MORE)
                        .build(),
                    SendKind::ZeroCopy => opcode::SendZc::new(types::Fd(fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build(),
                }
            })
        };
        match op {
            Ok(op) => {
                let (c, (buf, _)) = op.await;
                (c.io_result().map(|n| n as usize), buf)
            }
            Err((e, (buf, _))) => (Err(e), buf),
        }
    }

    /// Sends all of `buf` with `MSG_MORE`: the kernel may hold a last partial segment back
    /// until more data or a FIN follows. For the last bytes before [`shutdown`](Self::shutdown)
    /// (`Write`), which then leave with the FIN in one segment. Call the shutdown right after.
    pub(crate) async fn send_all_more<B: IoBuf>(&self, mut buf: B) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let (r, b) = self.send_with(buf, done, SendKind::CopyMore).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends all of `buf` like [`send_all`](Self::send_all), but with `SEND_ZC` when the
    /// core's settings say so for what is left ([`Builder::send_zero_copy`]). Session writers
    /// send this way.
    ///
    /// [`Builder::send_zero_copy`]: super::Builder::send_zero_copy
    pub(crate) async fn send_all_session<B: IoBuf>(&self, mut buf: B) -> (io::Result<()>, B) {
        let mut zc_min = core_loop::with_driver(|d| d.send.zc_min).flatten();
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let kind = match zc_min {
                Some(min) if total - done >= min => SendKind::ZeroCopy,
                _ => SendKind::CopyAll,
            };
            let (r, b) = self.send_with(buf, done, kind).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if kind == SendKind::ZeroCopy
                        && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
                {
                    if crate::engine::first_time("send-zc-refused") {
                        tracing::info!(error = %e, fallback = "SEND", "SEND_ZC refused on a socket");
                    }
                    zc_min = None;
                }
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends all of `v.t` with vectored sends (`IORING_OP_SENDMSG`, or `SENDMSG_ZC` when the
    /// core's settings say so, as in [`send_all_session`](Self::send_all_session)): the
    /// frame bytes and the payloads queued by reference leave from where they are, without
    /// a copy into one buffer. A partial send resumes at the right piece and offset. With
    /// `more`, `MSG_MORE` (see [`send_all_more`](Self::send_all_more)) and no zero-copy.
    pub(crate) async fn send_vectored_session(
        &self,
        mut v: VectoredSend,
        more: bool,
    ) -> (io::Result<()>, VectoredSend) {
        let mut zc_min = if more {
            None
        } else {
            core_loop::with_driver(|d| d.send.zc_min).flatten()
        };
        let total = v.t.len();
        let mut done = 0;
        while done < total {
            let kind = match zc_min {
                Some(min) if total - done >= min => SendKind::ZeroCopy,
                _ if more => SendKind::CopyMore,
                _ => SendKind::CopyAll,
            };
            let (r, back) = self.sendmsg_with(v, done, kind).await;
            v = back;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), v),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if kind == SendKind::ZeroCopy
                        && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
                {
                    if crate::engine::first_time("sendmsg-zc-refused") {
                        tracing::info!(error = %e, fallback = "SENDMSG", "SENDMSG_ZC refused on a socket");
                    }
                    zc_min = None;
                }
                Err(e) => return (Err(e), v),
            }
        }
        (Ok(()), v)
    }

    /// One vectored send of `v.t` from `offset` on, the way `kind` says.
    async fn sendmsg_with(
        &self,
        mut v: VectoredSend,
        offset: usize,
        kind: SendKind,
    ) -> (io::Result<usize>, VectoredSend) {
        let msg = v.prepare(offset);
        // SAFETY: the msghdr is boxed and owned by `v`; its iovecs live in `v.iov` (heap) and
        // point into `v.t`'s buffer and its `Bytes` parts, whose storage does not move when
        // `v` moves; the op owns `v` and the socket until its final CQE (for SENDMSG_ZC the
        // notification), and nothing mutates them meanwhile.
        let op = unsafe {
            Op::submit((v, self.sock.clone()), |(_, sock)| {
                let fd = types::Fd(sock.fd.as_raw_fd());
                match kind {
                    SendKind::ZeroCopy => opcode::SendMsgZc::new(fd, msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build(),
                    SendKind::CopyMore => opcode::SendMsg::new(fd, msg)
                        .flags((libc::MSG_NOSIGNAL | libc::MSG_MORE) as u32)
                        .build(),
                    SendKind::CopyAll => opcode::SendMsg::new(fd, msg)
                        .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
                        .build(),
                    SendKind::Copy => opcode::SendMsg::new(fd, msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build(),
                }
            })
        };
        match op {
            Ok(op) => {
                let (c, (v, _)) = op.await;
                (c.io_result().map(|n| n as usize), v)
            }
            Err((e, (v, _))) => (Err(e), v),
        }
    }

    /// Receives once into the spare capacity of `buf` (`IORING_OP_RECV`), appending to its
    /// contents; returns the byte count (0 = EOF) and the buffer. `buf` needs spare capacity.
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        let init = buf.bytes_init();
        let spare = buf.bytes_total() - init;
        if spare == 0 {
            return (
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "recv needs a buffer with spare capacity",
                )),
                buf,
            );
        }
        let len = spare.min(u32::MAX as usize) as u32;
        // SAFETY: the SQE points into `buf`'s spare capacity, inside its stable allocation, and
        // names the socket; the op owns both until the CQE.
        let op = unsafe {
            Op::submit((buf, self.sock.clone()), |(b, sock)| {
                let fd = sock.fd.as_raw_fd();
                opcode::Recv::new(types::Fd(fd), b.stable_mut_ptr().add(init), len).build()
            })
        };
        match op {
            Ok(op) => {
                let (c, (mut buf, _)) = op.await;
                let r = c.io_result().map(|n| n as usize);
                if let Ok(n) = r {
                    // SAFETY: the kernel wrote `n` bytes after the initialized ones.
                    unsafe { buf.set_init(init + n) };
                }
                (r, buf)
            }
            Err((e, (buf, _))) => (Err(e), buf),
        }
    }

    /// Starts a multishot receive on the core's provided-buffer ring: one submission keeps the
    /// socket reading; chunks come back as [`RecvBuf`](super::RecvBuf) guards. Falls back to one-shot receives into
    /// owned buffers if the core has no provided-buffer ring.
    pub fn recv_multishot(&self) -> MultiRecv {
        MultiRecv::new(self.sock.clone(), core_loop::buf_pool())
    }
}
