//! What [`TcpStream::connect`](super::TcpStream::connect) and
//! [`TcpListener::bind`](super::TcpListener::bind) accept ([`ToAddrs`]), and host-name lookup
//! off the engine core.
//!
//! A name lookup (`getaddrinfo`) is a blocking call that can take seconds (a slow or absent DNS
//! server); run on an engine core it would stall every task of that core, all its sessions. So
//! the address is first split once: numeric addresses (a `SocketAddr`, `"127.0.0.1:80"`,
//! `("::1", 80)`…) are parsed inline — no lookup, no thread, the path every benchmark and
//! tunnel connect takes — and only a host name is looked up, on a short-lived thread of its own
//! while the connecting task waits; the thread wakes the task when the answer is in (engine
//! wakers may be woken from any thread), and the core keeps running its other tasks meanwhile.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread;

/// Most host-name lookups in flight at once in the process, each on its own thread. Beyond it a
/// connect fails at once with a clear error rather than piling up threads behind a DNS server
/// that does not answer.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 64;

/// An address to connect to or bind, split once into numeric addresses or a host name still to
/// look up. Only [`ToAddrs`] makes one; a type of your own can implement `ToAddrs` by delegating
/// to one of the implementations here.
#[derive(Debug, Clone)]
pub struct Target(Kind);

#[derive(Debug, Clone)]
enum Kind {
    /// One numeric address: no allocation, no lookup.
    One(SocketAddr),
    /// Several numeric addresses, tried in order.
    Many(Vec<SocketAddr>),
    /// A host name (not an IP literal) and the port.
    Host(String, u16),
}

/// Something that names socket addresses: the engine's counterpart of
/// [`std::net::ToSocketAddrs`], split so that numeric forms never look anything up.
///
/// Implemented for [`SocketAddr`], [`SocketAddrV4`], [`SocketAddrV6`], `(IpAddr, u16)`,
/// `(Ipv4Addr, u16)`, `(Ipv6Addr, u16)`, `[SocketAddr]` and `Vec<SocketAddr>` (numeric), for
/// `str` and `String` (`"host:port"` or `"[v6]:port"`: parsed as a numeric address first, a
/// host name otherwise), for `(&str, u16)` and `(String, u16)` (an IP literal or a host name),
/// and for references to all of these.
pub trait ToAddrs {
    /// Splits the address into numeric addresses or a host name to look up. Only parses: never
    /// blocks. Fails with `InvalidInput` on a malformed address (no port, a bad port).
    fn to_target(&self) -> io::Result<Target>;
}

impl<T: ToAddrs + ?Sized> ToAddrs for &T {
    fn to_target(&self) -> io::Result<Target> {
        (**self).to_target()
    }
}

impl ToAddrs for SocketAddr {
    fn to_target(&self) -> io::Result<Target> {
        Ok(Target(Kind::One(*self)))
    }
}

impl ToAddrs for SocketAddrV4 {
    fn to_target(&self) -> io::Result<Target> {
        SocketAddr::V4(*self).to_target()
    }
}

impl ToAddrs for SocketAddrV6 {
    fn to_target(&self) -> io::Result<Target> {
        SocketAddr::V6(*self).to_target()
    }
}

impl ToAddrs for (IpAddr, u16) {
    fn to_target(&self) -> io::Result<Target> {
        SocketAddr::from(*self).to_target()
    }
}

impl ToAddrs for (Ipv4Addr, u16) {
    fn to_target(&self) -> io::Result<Target> {
        SocketAddr::from(*self).to_target()
    }
}

impl ToAddrs for (Ipv6Addr, u16) {
    fn to_target(&self) -> io::Result<Target> {
        SocketAddr::from(*self).to_target()
    }
}

impl ToAddrs for [SocketAddr] {
    fn to_target(&self) -> io::Result<Target> {
        Ok(Target(Kind::Many(self.to_vec())))
    }
}

impl ToAddrs for Vec<SocketAddr> {
    fn to_target(&self) -> io::Result<Target> {
        self.as_slice().to_target()
    }
}

impl ToAddrs for str {
    /// `"1.2.3.4:80"` and `"[::1]:80"` are numeric; otherwise the text after the last `:` is the
    /// port and the rest a host name (as `std`'s `ToSocketAddrs for str`).
    fn to_target(&self) -> io::Result<Target> {
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return addr.to_target();
        }
        let (host, port) = self
            .rsplit_once(':')
            .ok_or_else(|| invalid("invalid socket address: no port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| invalid("invalid socket address: bad port"))?;
        (host, port).to_target()
    }
}

impl ToAddrs for String {
    fn to_target(&self) -> io::Result<Target> {
        self.as_str().to_target()
    }
}

impl ToAddrs for (&str, u16) {
    fn to_target(&self) -> io::Result<Target> {
        let (host, port) = *self;
        match host.parse::<IpAddr>() {
            Ok(ip) => (ip, port).to_target(),
            Err(_) => Ok(Target(Kind::Host(host.to_owned(), port))),
        }
    }
}

impl ToAddrs for (String, u16) {
    fn to_target(&self) -> io::Result<Target> {
        (self.0.as_str(), self.1).to_target()
    }
}

/// The addresses a [`Target`] resolved to: at least one.
#[derive(Debug)]
pub(super) enum Resolved {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

impl Resolved {
    fn new(addrs: Vec<SocketAddr>) -> io::Result<Resolved> {
        if addrs.is_empty() {
            return Err(invalid("address resolved to nothing"));
        }
        Ok(Resolved::Many(addrs))
    }

    /// The addresses, in the order to try them.
    pub(super) fn as_slice(&self) -> &[SocketAddr] {
        match self {
            Resolved::One(a) => std::slice::from_ref(a),
            Resolved::Many(v) => v,
        }
    }
}

impl Target {
    /// Resolves without blocking the core: numeric addresses at once, a host name on a lookup
    /// thread of its own while the caller waits.
    pub(super) async fn resolve(self) -> io::Result<Resolved> {
        match self.0 {
            Kind::One(a) => Ok(Resolved::One(a)),
            Kind::Many(v) => Resolved::new(v),
            Kind::Host(host, port) => Resolved::new(Lookup::start(host, port)?.await?),
        }
    }

    /// Resolves on the calling thread: a host name is looked up inline, blocking the caller
    /// for as long as the lookup takes.
    pub(super) fn resolve_inline(self) -> io::Result<Resolved> {
        match self.0 {
            Kind::One(a) => Ok(Resolved::One(a)),
            Kind::Many(v) => Resolved::new(v),
            Kind::Host(host, port) => Resolved::new(lookup(&host, port)?),
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The blocking lookup itself (`getaddrinfo` through std).
fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Lookups in flight in the process (see [`MAX_LOOKUPS_IN_FLIGHT`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One slot of [`IN_FLIGHT`], given back when the lookup thread ends (or never starts).
struct Permit;

impl Permit {
    fn acquire() -> io::Result<Permit> {
        if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::other(
                "too many host-name lookups in flight (muxado::engine::net::MAX_LOOKUPS_IN_FLIGHT)",
            ));
        }
        Ok(Permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the lookup thread leaves its answer and finds whom to wake.
#[derive(Default)]
struct Slot {
    result: Option<io::Result<Vec<SocketAddr>>>,
    waker: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // Nothing that holds the lock can panic halfway through an update; take it even if poisoned.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// A host-name lookup running on its own thread. Dropping it abandons the answer: the thread
/// finishes its lookup (it cannot be interrupted) and drops the result.
struct Lookup {
    slot: Arc<Mutex<Slot>>,
}

impl Lookup {
    fn start(host: String, port: u16) -> io::Result<Lookup> {
        let permit = Permit::acquire()?;
        let slot = Arc::new(Mutex::new(Slot::default()));
        let theirs = slot.clone();
        #[cfg(test)]
        let before = hooks::started_lookup();
        thread::Builder::new()
            .name("muxado-dns".into())
            .spawn(move || {
                let _permit = permit;
                #[cfg(test)]
                if let Some(before) = before {
                    before();
                }
                let result = lookup(&host, port);
                let waker = {
                    let mut slot = lock(&theirs);
                    slot.result = Some(result);
                    slot.waker.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            })?;
        Ok(Lookup { slot })
    }
}

impl Future for Lookup {
    type Output = io::Result<Vec<SocketAddr>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.slot);
        if let Some(result) = slot.result.take() {
            return Poll::Ready(result);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Test hooks, per spawning thread (so tests running in parallel do not see each other's
/// lookups): how many lookup threads this thread started, and an action the next lookup thread
/// runs before it looks anything up.
#[cfg(test)]
mod hooks {
    use std::cell::{Cell, RefCell};

    pub(super) type Before = Box<dyn FnOnce() + Send>;

    thread_local! {
        static STARTED: Cell<u64> = const { Cell::new(0) };
        static BEFORE: RefCell<Option<Before>> = const { RefCell::new(None) };
    }

    /// Counts a lookup thread started here and hands it the pending action, if any.
    pub(super) fn started_lookup() -> Option<Before> {
        STARTED.with(|s| s.set(s.get() + 1));
        BEFORE.with(|b| b.borrow_mut().take())
    }

    pub(super) fn lookups_started() -> u64 {
        STARTED.with(Cell::get)
    }

    pub(super) fn before_next_lookup(f: Before) {
        BEFORE.with(|b| *b.borrow_mut() = Some(f));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::{self, net::TcpListener, net::TcpStream};

    fn kind(t: impl ToAddrs) -> Kind {
        t.to_target().expect("well-formed").0
    }

    #[test]
    fn numeric_forms_parse_inline_and_names_are_kept_for_lookup() {
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(matches!(kind("127.0.0.1:80"), Kind::One(x) if x == a));
        assert!(matches!(kind(String::from("127.0.0.1:80")), Kind::One(x) if x == a));
        assert!(matches!(kind(("127.0.0.1", 80)), Kind::One(x) if x == a));
        assert!(matches!(kind((a.ip(), 80)), Kind::One(x) if x == a));
        assert!(matches!(kind(("::1", 9)), Kind::One(x) if x == "[::1]:9".parse().unwrap()));
        assert!(matches!(kind("[::1]:9"), Kind::One(x) if x == "[::1]:9".parse().unwrap()));
        assert!(matches!(kind(&[a, a][..]), Kind::Many(v) if v == [a, a]));
        assert!(matches!(kind("localhost:80"), Kind::Host(h, 80) if h == "localhost"));
        assert!(
            matches!(kind((String::from("example.test"), 7)), Kind::Host(h, 7) if h == "example.test")
        );
        for bad in ["localhost", "localhost:http", "localhost:65536", "1.2.3.4"] {
            let e = bad.to_target().expect_err(bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        let empty: &[SocketAddr] = &[];
        let e = block(async { empty.to_target()?.resolve().await }).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    fn block<T>(f: impl Future<Output = T>) -> T {
        engine::block_on(f).expect("io_uring available")
    }

    /// Every numeric form connects without starting a lookup thread (the connect fast path).
    #[test]
    fn numeric_addresses_never_start_a_thread() {
        block(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let port = addr.port();
            let text = format!("127.0.0.1:{port}");
            let before = hooks::lookups_started();
            let mut peers = Vec::new();
            peers.push(TcpStream::connect(addr).await.unwrap());
            peers.push(TcpStream::connect(text.as_str()).await.unwrap());
            peers.push(TcpStream::connect(&text).await.unwrap());
            peers.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
            peers.push(TcpStream::connect((addr.ip(), port)).await.unwrap());
            peers.push(TcpStream::connect(&[addr][..]).await.unwrap());
            for p in &peers {
                let (_, from) = listener.accept().await.unwrap();
                assert_eq!(p.peer_addr().unwrap(), addr);
                assert!(from.ip().is_loopback());
            }
            let _ = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            assert_eq!(
                hooks::lookups_started(),
                before,
                "a numeric address started a lookup"
            );
        });
    }

    /// "localhost" (from /etc/hosts: no network needed) is looked up on another thread, and
    /// while that lookup is held open another task on the same core keeps running: the lookup
    /// thread waits for a go-ahead only that other task gives, so a lookup on the core itself
    /// would leave the task unrun and the checks below failing after the bounded wait.
    #[test]
    fn a_host_name_is_looked_up_off_the_core_while_the_core_runs_on() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        hooks::before_next_lookup(Box::new(move || {
            let _ = tid_tx.send(thread::current().id());
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
        }));
        let before = hooks::lookups_started();
        block(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let done = Rc::new(Cell::new(false));
            let connected = engine::spawn({
                let done = done.clone();
                async move {
                    let s = TcpStream::connect(format!("localhost:{port}")).await;
                    done.set(true);
                    s
                }
            });
            // This task runs on the core while the lookup is held open.
            let deadline = Instant::now() + Duration::from_secs(10);
            let lookup_thread = loop {
                match tid_rx.try_recv() {
                    Ok(id) => break id,
                    Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                        engine::sleep(Duration::from_millis(1)).await
                    }
                    Err(e) => panic!("the lookup thread never started: {e:?}"),
                }
            };
            assert_ne!(
                lookup_thread,
                thread::current().id(),
                "looked up on the core"
            );
            assert!(
                !done.get(),
                "connect finished while its lookup was held open"
            );
            go_tx.send(()).expect("lookup thread waiting");
            let client = connected.await.expect("connect to localhost");
            let (server, _) = listener.accept().await.unwrap();
            assert_eq!(client.local_addr().unwrap(), server.peer_addr().unwrap());
        });
        assert_eq!(hooks::lookups_started(), before + 1);
    }

    /// `bind` takes a host name too, looking it up inline on the calling thread.
    #[test]
    fn bind_looks_up_a_host_name_inline() {
        let before = hooks::lookups_started();
        let l = TcpListener::bind("localhost:0").expect("bind localhost");
        assert!(l.local_addr().unwrap().ip().is_loopback());
        assert_eq!(
            hooks::lookups_started(),
            before,
            "bind started a lookup thread"
        );
    }
}
