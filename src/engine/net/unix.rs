//! Unix domain stream sockets on the ring: a filesystem path, or a Linux
//! abstract name (no file; gone with the last socket bound to it).
//!
//! Accept and connect run on the ring like TCP's. Once connected, a Unix
//! stream is a socket like any other to `send`, `recv` and the multishot
//! receive, so it carries the very same operations as [`TcpStream`] (it wraps
//! one internally, without `TCP_NODELAY`).

use std::ffi::OsStr;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, types};

use super::addr::{cvt, listen, DEFAULT_BACKLOG};
use super::buf::{IoBuf, IoBufMut};
use super::listener::close_accepted;
use super::multishot::MultiRecv;
use super::stream::{Socket, TcpStream, VectoredSend};
use crate::engine::op::Op;

/// The address of a Unix domain socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// A filesystem path (the socket file stays after the listener is
    /// dropped; remove it yourself, as with std's `UnixListener`).
    Path(PathBuf),
    /// A Linux abstract name: no file, and the name is free again once the
    /// last socket bound to it is closed.
    Abstract(Vec<u8>),
    /// No address (the client end of a connection, or a socket pair).
    Unnamed,
}

/// Where the path starts in a `sockaddr_un`.
const PATH_OFFSET: usize = mem::offset_of!(libc::sockaddr_un, sun_path);

impl UnixAddr {
    /// Encodes the address, or says why it cannot be one.
    fn to_raw(&self) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
        let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let cap = sun.sun_path.len();
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let (bytes, start, extra) = match self {
            UnixAddr::Path(p) => {
                let b = p.as_os_str().as_bytes();
                if b.is_empty() {
                    return invalid("empty Unix socket path".into());
                }
                if b.contains(&0) {
                    return invalid(format!("Unix socket path {p:?} contains a NUL byte"));
                }
                if b.len() >= cap {
                    return invalid(format!(
                        "Unix socket path {p:?} is {} bytes long; at most {} fit",
                        b.len(),
                        cap - 1
                    ));
                }
                // The path, then the NUL the zeroed struct already holds.
                (b, 0, 1)
            }
            UnixAddr::Abstract(name) => {
                if name.len() >= cap {
                    return invalid(format!(
                        "abstract Unix socket name is {} bytes long; at most {} fit",
                        name.len(),
                        cap - 1
                    ));
                }
                // A leading NUL, then the name (NULs allowed, no terminator).
                (&name[..], 1, 0)
            }
            UnixAddr::Unnamed => {
                return invalid("cannot bind or connect to an unnamed address".into())
            }
        };
        for (dst, &b) in sun.sun_path[start..].iter_mut().zip(bytes) {
            *dst = b as libc::c_char;
        }
        let len = PATH_OFFSET + start + bytes.len() + extra;
        Ok((sun, len as libc::socklen_t))
    }

    fn from_raw(sun: &libc::sockaddr_un, len: libc::socklen_t) -> UnixAddr {
        let len = (len as usize).min(mem::size_of::<libc::sockaddr_un>());
        if len <= PATH_OFFSET {
            return UnixAddr::Unnamed;
        }
        let path: Vec<u8> = sun.sun_path[..len - PATH_OFFSET]
            .iter()
            .map(|&c| c as u8)
            .collect();
        match path.split_first() {
            Some((0, name)) => UnixAddr::Abstract(name.to_vec()),
            _ => {
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                UnixAddr::Path(PathBuf::from(OsStr::from_bytes(&path[..end])))
            }
        }
    }
}

impl From<&Path> for UnixAddr {
    fn from(p: &Path) -> UnixAddr {
        UnixAddr::Path(p.to_owned())
    }
}

fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unix_name(fd: RawFd, peer: bool) -> io::Result<UnixAddr> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let p = &mut sun as *mut _ as *mut libc::sockaddr;
    // SAFETY: `p` and `len` describe a live, writable sockaddr_un.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    Ok(UnixAddr::from_raw(&sun, len))
}

/// A Unix domain stream listener whose accepts run on the ring.
#[derive(Debug)]
pub struct UnixListener {
    /// Shared with every accept in flight, so the number stays ours until their CQEs.
    sock: Arc<Socket>,
}

impl UnixListener {
    /// Binds to a filesystem path and listens ([`DEFAULT_BACKLOG`]). Fails with
    /// `AddrInUse` if the file exists. Does not need an engine core.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        Self::bind_addr(&UnixAddr::Path(path.as_ref().to_owned()))
    }

    /// Binds to a Linux abstract name (no file is created) and listens.
    pub fn bind_abstract(name: impl AsRef<[u8]>) -> io::Result<UnixListener> {
        Self::bind_addr(&UnixAddr::Abstract(name.as_ref().to_vec()))
    }

    /// Binds to `addr` and listens ([`DEFAULT_BACKLOG`]).
    pub fn bind_addr(addr: &UnixAddr) -> io::Result<UnixListener> {
        Self::bind_addr_with_backlog(addr, DEFAULT_BACKLOG)
    }

    /// Binds to `addr` and listens with an accept backlog of `backlog` connections (the kernel
    /// caps it at `net.core.somaxconn`).
    pub fn bind_addr_with_backlog(addr: &UnixAddr, backlog: u32) -> io::Result<UnixListener> {
        let (sun, len) = addr.to_raw()?;
        let fd = unix_socket()?;
        let raw = fd.as_raw_fd();
        // SAFETY: `sun` holds a valid address of `len` bytes.
        cvt(unsafe { libc::bind(raw, &sun as *const _ as *const libc::sockaddr, len) })?;
        listen(raw, backlog)?;
        Ok(UnixListener {
            sock: Arc::new(Socket { fd }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<UnixAddr> {
        unix_name(self.sock.fd.as_raw_fd(), false)
    }

    /// Accepts one connection (`IORING_OP_ACCEPT`).
    pub async fn accept(&self) -> io::Result<UnixStream> {
        let listener = self.sock.clone();
        // SAFETY: the SQE names the listener's descriptor, owned by the op until its CQE, and
        // asks for no peer address (null pointers).
        let op = unsafe {
            Op::submit(listener, |l| {
                opcode::Accept::new(
                    types::Fd(l.fd.as_raw_fd()),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            })
        }
        .map_err(|(e, _)| e)?
        .on_orphan(close_accepted);
        let (c, _) = op.await;
        let new_fd = c.io_result()? as RawFd;
        // SAFETY: the kernel returned a fresh descriptor that we now own.
        Ok(UnixStream::from_owned(unsafe {
            OwnedFd::from_raw_fd(new_fd)
        }))
    }
}

/// A Unix domain stream connection whose I/O runs on the ring.
///
/// Cloning is cheap and shares the socket, as for [`TcpStream`].
#[derive(Debug, Clone)]
pub struct UnixStream {
    /// The socket-generic stream operations (send, recv, multishot receive).
    inner: TcpStream,
}

impl UnixStream {
    fn from_owned(fd: OwnedFd) -> UnixStream {
        UnixStream {
            inner: TcpStream::from_socket(Rc::new(Socket { fd })),
        }
    }

    /// Connects to a filesystem path (`IORING_OP_CONNECT`).
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        Self::connect_addr(&UnixAddr::Path(path.as_ref().to_owned())).await
    }

    /// Connects to a Linux abstract name.
    pub async fn connect_abstract(name: impl AsRef<[u8]>) -> io::Result<UnixStream> {
        Self::connect_addr(&UnixAddr::Abstract(name.as_ref().to_vec())).await
    }

    /// Connects to `addr`.
    pub async fn connect_addr(addr: &UnixAddr) -> io::Result<UnixStream> {
        let (sun, len) = addr.to_raw()?;
        let fd = unix_socket()?;
        // The op owns the socket too: dropped mid-connect, it is closed only after the CQE.
        let data = (Box::new(sun), fd);
        // SAFETY: the SQE points into the boxed address and names the socket, both owned by the
        // op until its CQE.
        let op = unsafe {
            Op::submit(data, |(sun, fd)| {
                opcode::Connect::new(
                    types::Fd(fd.as_raw_fd()),
                    &**sun as *const _ as *const libc::sockaddr,
                    len,
                )
                .build()
            })
        }
        .map_err(|(e, _)| e)?;
        let (c, (_, fd)) = op.await;
        c.io_result()?;
        Ok(UnixStream::from_owned(fd))
    }

    /// A connected pair (`socketpair`), e.g. for a parent and a child process.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors the call writes.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((UnixStream::from_owned(a), UnixStream::from_owned(b)))
    }

    /// Takes over a connected Unix stream socket of the standard library.
    pub fn from_std(s: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        s.set_nonblocking(false)?;
        Ok(UnixStream::from_owned(OwnedFd::from(s)))
    }

    /// The descriptor (still owned by the stream).
    pub fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<UnixAddr> {
        unix_name(self.as_raw_fd(), false)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<UnixAddr> {
        unix_name(self.as_raw_fd(), true)
    }

    /// Shuts down one or both directions; see [`TcpStream::shutdown`].
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// Sends from `buf` once; see [`TcpStream::send`].
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        self.inner.send(buf).await
    }

    /// Sends all of `buf`; see [`TcpStream::send_all`].
    pub async fn send_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        self.inner.send_all(buf).await
    }

    /// Sends all of `buf` the way session writers do (zero-copy when the
    /// core says so).
    pub(crate) async fn send_all_session<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        self.inner.send_all_session(buf).await
    }

    /// Sends a session's transmission vectored; see `TcpStream::send_vectored_session`.
    pub(crate) async fn send_vectored_session(
        &self,
        v: VectoredSend,
        more: bool,
    ) -> (io::Result<()>, VectoredSend) {
        self.inner.send_vectored_session(v, more).await
    }

    /// Receives once into the spare capacity of `buf`; see [`TcpStream::recv`].
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        self.inner.recv(buf).await
    }

    /// Starts a multishot receive; see [`TcpStream::recv_multishot`].
    pub fn recv_multishot(&self) -> MultiRecv {
        self.inner.recv_multishot()
    }
}
