//! TCP sockets whose I/O runs on the core's ring.
//!
//! Sends take owned buffers ([`IoBuf`]) and give them back with the result, so a dropped future
//! can never leave the kernel writing from freed memory. Receives are either multishot into the
//! core's provided-buffer ring ([`TcpStream::recv_multishot`]) or one-shot into an owned buffer
//! ([`TcpStream::recv`]).

use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use io_uring::{cqueue, opcode, types};

use super::buffers::BufPool;
use super::ring::{self, MultiOp, Op};

// ---------------------------------------------------------------------------------------------
// Owned buffers.

/// A buffer whose bytes stay at the same address while the value moves (heap storage), so that
/// the kernel may read from it while an operation owns it.
///
/// # Safety
///
/// `stable_ptr()` must point to `bytes_init()` initialized bytes that remain valid and unmoved
/// while the value is moved, until it is dropped or mutated.
pub unsafe trait IoBuf: Unpin + 'static {
    /// Address of the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialized bytes (what a send transmits).
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel can write into: the bytes between `bytes_init()` and `bytes_total()`.
///
/// # Safety
///
/// As for [`IoBuf`], for `bytes_total()` bytes from `stable_mut_ptr()`; `set_init(n)` must make
/// the first `n` bytes the buffer's contents.
pub unsafe trait IoBufMut: IoBuf {
    /// Address of the first byte, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Capacity in bytes.
    fn bytes_total(&self) -> usize;
    /// Marks the first `n` bytes as initialized.
    ///
    /// # Safety
    ///
    /// The first `n` bytes must have been written.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's elements live on the heap and do not move when the Vec moves.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for `IoBuf for Vec<u8>`; `set_len` is only called with written lengths.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller wrote the first `n` bytes, and `n` is within the capacity the
            // kernel was given.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: `BytesMut` keeps its bytes on the heap (a Vec or a shared block); moving it does not
// move them.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; `set_len` is only called with written lengths.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller wrote the first `n` bytes, and `n` is within the capacity the
            // kernel was given.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: `Bytes` points at static or heap memory that does not move with the handle.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: a boxed slice lives on the heap.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Sends.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendKind {
    /// `IORING_OP_SEND`: the kernel copies the bytes into socket buffers.
    Copy,
    /// `IORING_OP_SEND_ZC`: two CQEs; the buffer is busy until the notification.
    ZeroCopy,
}

// ---------------------------------------------------------------------------------------------
// Socket addresses.

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { (&mut storage as *mut _ as *mut libc::sockaddr_in).write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { (&mut storage as *mut _ as *mut libc::sockaddr_in6).write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> io::Result<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = sin.sin_addr.s_addr.to_ne_bytes();
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip.into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is long enough.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unsupported socket address family",
        )),
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the result is checked.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sock_name(fd: RawFd, peer: bool) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut storage as *mut _ as *mut libc::sockaddr;
    // SAFETY: `p` and `len` describe a live, writable sockaddr_storage.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    from_sockaddr(&storage, len)
}

fn resolve(addr: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "address resolved to nothing",
        ));
    }
    Ok(addrs)
}

// ---------------------------------------------------------------------------------------------
// Listener.

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
    /// Binds and listens (backlog 1024). Does not need an engine core.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let mut last = None;
        for a in resolve(addr)? {
            match Self::bind_one(&a) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("resolve gives at least one address"))
    }

    fn bind_one(addr: &SocketAddr) -> io::Result<TcpListener> {
        let fd = new_socket(addr)?;
        let raw = fd.as_raw_fd();
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        let (storage, len) = to_sockaddr(addr);
        // SAFETY: `storage` holds a valid address of `len` bytes.
        cvt(unsafe { libc::bind(raw, &storage as *const _ as *const libc::sockaddr, len) })?;
        // SAFETY: plain syscall on a socket we own.
        cvt(unsafe { libc::listen(raw, 1024) })?;
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
        let stream = TcpStream::from_owned(owned)?;
        let (storage, len) = &*data.addr;
        let peer = from_sockaddr(storage, *len).or_else(|_| stream.peer_addr())?;
        Ok((stream, peer))
    }
}

/// Closes the descriptor an accept returned after its future was dropped: nobody else will,
/// and the peer would wait on a connection nobody serves.
///
/// # Safety
///
/// `c` must be the completion of an accept: a non-negative result is a descriptor nobody owns.
unsafe fn close_accepted(c: &ring::Completion) {
    if c.result >= 0 {
        // SAFETY: the kernel returned this fresh descriptor to us and no one else has seen it.
        drop(unsafe { OwnedFd::from_raw_fd(c.result) });
    }
}

// ---------------------------------------------------------------------------------------------
// Stream.

/// An open socket. Every operation in flight on it holds a reference, so the descriptor is
/// closed only after the last handle is dropped AND the last completion naming it was reaped:
/// its number cannot be reused by a new socket while a queued or in-flight SQE still names it.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
}

/// A TCP connection whose I/O runs on the ring.
///
/// Cloning is cheap and shares the socket (so a reader task and a writer task can each hold
/// one); the descriptor closes when the last clone and the last reader are dropped.
#[derive(Debug, Clone)]
pub struct TcpStream {
    sock: Rc<Socket>,
}

impl TcpStream {
    fn from_owned(fd: OwnedFd) -> io::Result<TcpStream> {
        set_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        Ok(TcpStream {
            sock: Rc::new(Socket { fd }),
        })
    }

    /// Connects (`IORING_OP_CONNECT`), trying each resolved address in turn. `TCP_NODELAY` is on.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for a in resolve(addr)? {
            match Self::connect_one(&a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("resolve gives at least one address"))
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
        TcpStream::from_owned(fd)
    }

    /// The descriptor (still owned by the stream).
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }

    /// Local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_name(self.as_raw_fd(), false)
    }

    /// Peer address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        sock_name(self.as_raw_fd(), true)
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

    /// Sends all of `buf` like [`send_all`](Self::send_all), but with `SEND_ZC` when the
    /// core's settings say so for what is left ([`Builder::send_zero_copy`]). Session writers
    /// send this way.
    ///
    /// [`Builder::send_zero_copy`]: super::Builder::send_zero_copy
    pub(crate) async fn send_all_session<B: IoBuf>(&self, mut buf: B) -> (io::Result<()>, B) {
        let mut zc_min = ring::with_driver(|d| d.send.zc_min).flatten();
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let kind = match zc_min {
                Some(min) if total - done >= min => SendKind::ZeroCopy,
                _ => SendKind::Copy,
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
                    if super::first_time("send-zc-refused") {
                        tracing::info!(error = %e, fallback = "SEND", "SEND_ZC refused on a socket");
                    }
                    zc_min = None;
                }
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
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
    /// socket reading; chunks come back as [`RecvBuf`] guards. Falls back to one-shot receives into
    /// owned buffers if the core has no provided-buffer ring.
    pub fn recv_multishot(&self) -> MultiRecv {
        MultiRecv {
            sock: self.sock.clone(),
            pool: ring::buf_pool(),
            op: None,
            fallback: None,
            eof: false,
            pending: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multishot receive.

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
            let stream = TcpStream {
                sock: self.sock.clone(),
            };
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
