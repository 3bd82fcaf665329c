//! `muxado serve`: echo and sink servers, over muxado sessions or plain TCP.
//!
//! echo: every byte read from a stream is written back; after the peer's FIN
//! the stream is half-closed. sink: read to the peer's FIN, then write the
//! byte count as a big-endian u64 and half-close. The bench's servers on our
//! engine are these same functions.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muxado::engine::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use muxado::engine::{self};
use muxado::heartbeat::{Heartbeat, HeartbeatEvent};
use muxado::transport::{Socket, TlsError, TlsServerConfig, TlsStream, Transport};
use muxado::typed::TypedSession;
use muxado::{Config, Session, Stream};

use crate::model::{Endpoint, HeartbeatOpts, Mode, TAG_SINK};

/// Size of the buffers streams are served with.
pub const BUF_SIZE: usize = 64 * 1024;
/// Buffers a pool keeps at most (4 MiB per pool, one pool per core): what a
/// burst of bulk streams warmed up is not held for ever after it.
const POOL_MAX: usize = 64;
/// Reads of at most this many bytes are echoed through a buffer of their own
/// size, so that a stream that receives a few bytes (or is merely open)
/// holds no 64 KiB buffer: 65,536 open streams must not cost 4 GB.
const SMALL_READ: usize = 4 * 1024;

/// Bytes of 64 KiB echo buffers in use at once in the whole process (they
/// hold data read from streams but not yet written back: a peer that does
/// not read its echoes makes them pile up). Past [`echo_limit`], reads are
/// echoed [`SMALL_READ`] bytes at a time instead.
static ECHO_IN_USE: AtomicUsize = AtomicUsize::new(0);
static ECHO_LIMIT: AtomicUsize = AtomicUsize::new(64 << 20);

/// Sets the most bytes of 64 KiB echo buffers in use at once (default 64 MiB).
fn set_echo_limit(bytes: usize) {
    ECHO_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Charges one echo buffer if the process-wide limit allows it.
fn try_charge_echo() -> bool {
    let limit = ECHO_LIMIT.load(Ordering::Relaxed);
    ECHO_IN_USE
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            (used + BUF_SIZE <= limit).then_some(used + BUF_SIZE)
        })
        .is_ok()
}

/// Buffers of finished streams, reused by the next ones: a server taking
/// many short streams should not allocate and zero 64 KiB for each. Every
/// bench server (ours and the tokio peers') serves with one, so that none
/// pays for allocation the others skip. A mutex rather than a `RefCell` so
/// that tokio's `Send` tasks can share it; it is taken once per stream, not
/// per read, by one thread.
#[derive(Clone, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    /// A buffer of [`BUF_SIZE`] bytes' capacity, returned to the pool on
    /// drop; `filled`: also of that length (zeroed only when new), to read into.
    pub fn take(&self, filled: bool) -> PooledBuf {
        let mut buf = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        if filled && buf.len() < BUF_SIZE {
            buf.resize(BUF_SIZE, 0);
        }
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }
}

/// A 64 KiB echo buffer charged to the process-wide echo limit: `None`
/// when the limit is reached.
fn take_echo(pool: &BufPool) -> Option<EchoBuf> {
    try_charge_echo().then(|| EchoBuf(pool.take(false)))
}

/// A pooled buffer charged to [`ECHO_IN_USE`] until dropped.
struct EchoBuf(PooledBuf);

impl Drop for EchoBuf {
    fn drop(&mut self) {
        ECHO_IN_USE.fetch_sub(BUF_SIZE, Ordering::Relaxed);
    }
}

/// A buffer of a [`BufPool`].
pub struct PooledBuf {
    pub buf: Vec<u8>,
    pool: BufPool,
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if self.buf.capacity() != BUF_SIZE {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut pool) = self.pool.0.lock() {
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        }
    }
}

/// The session settings of `muxado serve`: the bench's, with the timeouts
/// a server facing untrusted peers needs (zero: none; the defaults are 10 s
/// for a frame, 5 min for an idle session) and, with `--max-memory`, one
/// budget shared by every session on every core. Of `max_memory`, half is
/// the sessions' budget (received bytes not yet echoed, stream state), an
/// eighth the echo buffers' limit; the rest is left for what neither
/// counts (tasks, socket bookkeeping, the allocator's slack).
pub fn serve_config(
    max_memory: Option<usize>,
    frame_timeout: Duration,
    idle_timeout: Duration,
) -> Config {
    let config = crate::model::bench_config()
        .with_frame_timeout(Some(frame_timeout).filter(|t| !t.is_zero()))
        .with_idle_timeout(Some(idle_timeout).filter(|t| !t.is_zero()));
    match max_memory {
        Some(m) => {
            set_echo_limit(m / 8);
            let session_max = config.max_session_memory.min(m / 2);
            config
                .with_max_session_memory(session_max)
                .with_memory_budget(Some(muxado::proto::MemoryBudget::new(m / 2)))
        }
        None => config,
    }
}

/// What a server listens on: a TCP address or a Unix socket path.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listens at `at`. A Unix socket path left by a server that is gone is
    /// replaced; one that a live server answers on, or a file that is no
    /// socket, is an error.
    pub fn bind(at: &Endpoint) -> io::Result<Listener> {
        match at {
            Endpoint::Tcp(addr) => TcpListener::bind(*addr).map(Listener::Tcp),
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                UnixListener::bind(path).map(Listener::Unix)
            }
        }
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            Listener::Unix(l) => l.accept().await.map(Accepted::Unix),
        }
    }
}

/// Removes a Unix socket file no server answers on (what a killed server
/// leaves behind), so that `bind` can take the path again.
///
/// A server killed a moment ago may still answer for a while: its listening
/// socket is closed only when the kernel tears its io_uring down, after the
/// process is gone, and until then connections to it are queued (then
/// reset). So a path that answers is tried again for up to
/// [`STALE_SOCKET_GRACE`] before it is called in use.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let deadline = Instant::now() + STALE_SOCKET_GRACE;
    loop {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Err(_) => return std::fs::remove_file(path),
            Ok(_) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a server is already listening on this socket",
                ))
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// How long a Unix socket that answers may take to go away (see
/// [`remove_stale_socket`]).
const STALE_SOCKET_GRACE: Duration = Duration::from_secs(2);

/// An accepted connection, before its TLS handshake (if any).
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Accepted {
    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Accepted::Tcp(_, a) => Some(*a),
            Accepted::Unix(_) => None,
        }
    }

    /// The session's transport: the socket itself, or TLS over it once the
    /// handshake (bounded by the configuration's timeout) succeeded.
    async fn transport(self, tls: Option<&TlsServerConfig>) -> Result<Transport, TlsError> {
        let Some(tls) = tls else {
            return Ok(match self {
                Accepted::Tcp(s, _) => s.into(),
                Accepted::Unix(s) => s.into(),
            });
        };
        let socket: Socket = match self {
            Accepted::Tcp(s, _) => s.into(),
            Accepted::Unix(s) => s.into(),
        };
        TlsStream::accept(socket, tls).await.map(Transport::from)
    }
}

/// A failed TLS handshake: logged (at most once a second with a count, as
/// accept errors), the connection dropped.
fn handshake_failed(peer: Option<SocketAddr>, e: &TlsError) {
    thread_local! {
        static LOG: RefCell<AcceptErrors> = RefCell::new(AcceptErrors::default());
    }
    let peer = peer.map_or_else(|| "a unix peer".to_string(), |a| a.to_string());
    LOG.with(|l| {
        l.borrow_mut()
            .log(&format!("TLS handshake with {peer} failed: {e}"))
    });
}

/// Accepts connections forever, running a muxado server session on each
/// (over TLS with `tls`: each handshake runs in the connection's own task).
pub async fn muxado_server(
    listener: Listener,
    tls: Option<TlsServerConfig>,
    mode: Mode,
    config: Config,
) {
    let pool = BufPool::default();
    let mut accept_errors = AcceptErrors::default();
    engine::spawn(trimmer());
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                accept_errors.failed(&e);
                engine::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (pool, config, tls) = (pool.clone(), config.clone(), tls.clone());
        engine::spawn(async move {
            let peer = conn.peer();
            let session = match conn.transport(tls.as_ref()).await {
                Ok(t) => Session::server(t, config),
                Err(e) => return handshake_failed(peer, &e),
            };
            while let Ok(stream) = session.accept().await {
                engine::spawn(serve_stream(stream, mode, pool.clone()));
            }
            drop(session);
            session_ended();
        });
    }
}

/// The heartbeat's event callback: latencies at debug level (stderr with
/// `-v`), timeouts as warnings. `Send`, so that the tokio driver's
/// heartbeat can run it too.
pub fn heartbeat_reporter(
    peer: Option<SocketAddr>,
    opts: HeartbeatOpts,
) -> impl FnMut(HeartbeatEvent) + Send + 'static {
    let peer = peer.map_or_else(|| "?".to_string(), |a| a.to_string());
    move |event| match event {
        HeartbeatEvent::Latency(d) => {
            tracing::debug!("heartbeat latency {peer}: {}", fmt_duration(d));
        }
        HeartbeatEvent::Timeout => tracing::warn!(
            "heartbeat timeout {peer}: no answer within {}",
            fmt_duration(opts.config.interval + opts.config.tolerance)
        ),
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Like [`muxado_server`], but every session is wrapped as
/// Heartbeat(TypedSession(session)): its heartbeat is started, the peer's
/// heartbeats are answered (the accept loop keeps running), and typed
/// streams of any type are served (their 4 type bytes are not data).
pub async fn muxado_heartbeat_server(
    listener: Listener,
    tls: Option<TlsServerConfig>,
    mode: Mode,
    config: Config,
    hb: HeartbeatOpts,
) {
    let pool = BufPool::default();
    let mut accept_errors = AcceptErrors::default();
    engine::spawn(trimmer());
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                accept_errors.failed(&e);
                engine::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (pool, config, tls) = (pool.clone(), config.clone(), tls.clone());
        engine::spawn(async move {
            let peer = conn.peer();
            let transport = match conn.transport(tls.as_ref()).await {
                Ok(t) => t,
                Err(e) => return handshake_failed(peer, &e),
            };
            let heartbeat = Heartbeat::new(
                TypedSession::new(Session::server(transport, config)),
                hb.config,
            );
            let reporter = heartbeat_reporter(peer, hb);
            if let Err(e) = heartbeat.start(reporter).await {
                tracing::warn!("heartbeat not started: {e}");
            }
            while let Ok(stream) = heartbeat.accept_typed().await {
                engine::spawn(serve_stream(stream.into_stream(), mode, pool.clone()));
            }
            drop(heartbeat);
            session_ended();
        });
    }
}

async fn serve_stream(stream: Stream, mode: Mode, pool: BufPool) {
    serve_muxado(stream, mode, pool).await
}

/// A muxado stream as `serve` uses it, on either driver (the engine's
/// [`Stream`] and `muxado::tokio::Stream`), so that both serve alike.
pub(crate) trait ServedStream {
    /// As the drivers' `read_with`: `consume` sees the received bytes in
    /// place (an empty slice at the end) and says how many it used.
    async fn read_with(
        &mut self,
        consume: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, muxado::Error>;
    async fn write_all(&mut self, data: &[u8]) -> Result<(), muxado::Error>;
    fn close_write(&mut self) -> Result<(), muxado::Error>;
}

impl ServedStream for Stream {
    async fn read_with(
        &mut self,
        consume: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, muxado::Error> {
        Stream::read_with(self, consume).await
    }
    async fn write_all(&mut self, data: &[u8]) -> Result<(), muxado::Error> {
        Stream::write_all(self, data).await
    }
    fn close_write(&mut self) -> Result<(), muxado::Error> {
        Stream::close_write(self)
    }
}

/// echo or sink (or, tagged, whichever the first byte asks for) on one
/// stream. The sink counts in place: it has no use for a copy of the bytes
/// (as the plain-TCP sink below counts the received chunks without
/// copying). The echo copies each read out through [`EchoCopy`].
pub(crate) async fn serve_muxado<S: ServedStream>(mut stream: S, mut mode: Mode, pool: BufPool) {
    if mode == Mode::Tagged {
        let mut tag = None;
        let read = stream.read_with(|bytes| {
            tag = bytes.first().copied();
            bytes.len().min(1)
        });
        match (read.await, tag) {
            (Ok(1), Some(TAG_SINK)) => mode = Mode::Sink,
            (Ok(1), Some(_)) => mode = Mode::Echo,
            _ => return,
        }
    }
    if mode == Mode::Sink {
        let mut total: u64 = 0;
        loop {
            match stream.read_with(|bytes| bytes.len()).await {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => return,
            }
        }
        if stream.write_all(&total.to_be_bytes()).await.is_ok() {
            let _ = stream.close_write();
        }
        return;
    }
    let mut copy = EchoCopy::default();
    loop {
        match stream.read_with(|bytes| copy.take(bytes, &pool)).await {
            Ok(0) => break,
            Ok(_) => {
                if stream.write_all(copy.data()).await.is_err() {
                    return;
                }
                copy.written();
            }
            Err(_) => return,
        }
    }
    let _ = stream.close_write();
}

/// What the echo copies out of one read (the borrowed bytes of `read_with`
/// cannot be held across the write): a buffer the size of the read, a few
/// bytes for small reads, a pooled 64 KiB buffer for bulk ones while the
/// process-wide echo limit allows. Either is given back once written, so an
/// idle or merely open stream holds no buffer at all (a 9-byte SYN must not
/// cost 64 KiB). Both drivers' `serve` echo through it.
#[derive(Default)]
pub struct EchoCopy {
    small: Vec<u8>,
    big: Option<EchoBuf>,
}

impl EchoCopy {
    /// Copies what fits of `bytes`; returns the count (`read_with`'s answer).
    pub fn take(&mut self, bytes: &[u8], pool: &BufPool) -> usize {
        if bytes.len() > SMALL_READ {
            if let Some(mut b) = take_echo(pool) {
                let n = bytes.len().min(BUF_SIZE);
                b.0.buf.clear();
                b.0.buf.extend_from_slice(&bytes[..n]);
                self.big = Some(b);
                return n;
            }
        }
        let n = bytes.len().min(SMALL_READ);
        self.small.clear();
        self.small.extend_from_slice(&bytes[..n]);
        n
    }

    /// The bytes of the last [`EchoCopy::take`], to write back.
    pub fn data(&self) -> &[u8] {
        self.big.as_ref().map_or(&self.small[..], |b| &b.0.buf[..])
    }

    /// After the write: the big buffer goes back to its pool, and a small
    /// one that grew past a few hundred bytes is freed.
    pub fn written(&mut self) {
        self.big = None;
        if self.small.capacity() > 256 {
            self.small = Vec::new();
        }
    }
}

/// Set when a session ends: the trimmer then hands freed memory back to the
/// operating system.
static SESSION_ENDED: AtomicBool = AtomicBool::new(false);

/// Tells the trimmer that a session ended (either driver).
pub fn session_ended() {
    SESSION_ENDED.store(true, Ordering::Relaxed);
}

/// `MUXADO_NO_TRIM=1` turns the trimmer and [`tune_allocator`] off (glibc's
/// defaults, no trimming), to measure what they buy.
fn trim_disabled() -> bool {
    std::env::var_os("MUXADO_NO_TRIM").is_some_and(|v| v == "1")
}

/// Every second, if a session ended since the last look, asks the allocator
/// to return its free memory to the system (one core does it for the
/// process). glibc's malloc keeps freed memory in its arenas: after a flood
/// of 65,536 streams ends, the process would otherwise stay at its peak RSS.
/// `malloc_trim` releases, with `MADV_DONTNEED`, the whole free pages inside
/// every arena, and the free top of the main arena; it takes a few
/// milliseconds, hence once a second at most and only after sessions end.
/// It cannot shrink the free top of the other arenas (the engine cores'):
/// [`tune_allocator`] keeps that small in `muxado serve`.
async fn trimmer() {
    if trim_disabled() {
        return;
    }
    let mut trim = Trim::default();
    loop {
        engine::sleep(Duration::from_secs(1)).await;
        trim.tick();
    }
}

/// The trimmer's state between its one-second ticks, on either driver.
#[derive(Default)]
pub struct Trim {
    again: bool,
}

impl Trim {
    /// Whether trimming is on (see [`trim_disabled`]).
    pub fn enabled() -> bool {
        !trim_disabled()
    }

    /// One tick: trims if a session ended since the last one, and once more
    /// a tick later, for what the ended session's last streams freed after.
    pub fn tick(&mut self) {
        let ended = SESSION_ENDED.swap(false, Ordering::Relaxed);
        if ended || self.again {
            trim_allocator();
        }
        self.again = ended;
    }
}

/// Chunks of at least this size get a mapping of their own (see
/// [`tune_allocator`]): buffers of a stream or a session stay in the arenas.
const MMAP_THRESHOLD: i32 = 1 << 20;
/// An arena's free top past this size is handed back to the system when a
/// free grows it: glibc's own default, kept fixed.
const TRIM_THRESHOLD: i32 = 128 << 10;

/// Pins glibc's mmap and trim thresholds (once per process). By default
/// glibc raises them as it goes: each freed chunk that had a mapping of its
/// own (one of more than 128 KiB) lifts the mmap threshold to its size, up
/// to 32 MiB, and the trim threshold to twice that. A thread's arena then
/// keeps that much free memory at its top, resident, and `malloc_trim`
/// does not release the top of a thread's arena. The soak measured it: with
/// no session connected, the free tops of the two cores' arenas varied from
/// 0.3 to 13.6 MiB between one idle moment and the next (server RSS 18 to
/// 25 MiB); with the thresholds pinned they stayed at 128 KiB each, and the
/// idle RSS moved by 1.4% over a 30-minute soak (perf/soak.md).
///
/// `muxado serve` calls it; the bench does not: with the mmap threshold at
/// 1 MiB a bulk stream's receive buffer, which grows to its window, is
/// mapped and unmapped as it grows and drains, and bulk/1 fell from about
/// 27 to 16–22 Gbit/s on this machine.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    if trim_disabled() {
        return;
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (param, value, name) in [
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "M_MMAP_THRESHOLD"),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD, "M_TRIM_THRESHOLD"),
        ] {
            // SAFETY: mallopt only sets a parameter of the allocator; it takes
            // the allocator's lock itself and is safe at any time.
            if unsafe { libc::mallopt(param, value) } != 1 {
                tracing::warn!("mallopt({name}, {value}) failed");
            }
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_allocator() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // memory; it takes the arena locks itself and is safe at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Some(path) = std::env::var_os("MUXADO_MALLOC_INFO") {
        write_malloc_info(&path);
    }
}

/// Diagnostics: `MUXADO_MALLOC_INFO=PATH` writes glibc's `malloc_info` (XML:
/// each arena's free chunks, system bytes and in-use figures) to PATH after
/// every trim, overwriting it, so that PATH read while the server is idle
/// shows the allocator in its settled state. The soak uses it to tell live
/// memory from memory the allocator keeps.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn write_malloc_info(path: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cpath) = std::ffi::CString::new(path.as_bytes()) else {
        return;
    };
    // SAFETY: both arguments are NUL-terminated strings that outlive the call.
    let file = unsafe { libc::fopen(cpath.as_ptr(), c"w".as_ptr()) };
    if file.is_null() {
        tracing::warn!("MUXADO_MALLOC_INFO: cannot open {}", path.to_string_lossy());
        return;
    }
    // SAFETY: `file` is a stream fopen just opened, closed once right after.
    unsafe {
        libc::malloc_info(0, file);
        libc::fclose(file);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() {}

/// Accept failures (out of descriptors, mostly), logged at most once a
/// second with how many there were rather than every 10 ms.
#[derive(Default)]
struct AcceptErrors {
    count: u64,
    last_log: Option<Instant>,
}

impl AcceptErrors {
    fn failed(&mut self, e: &std::io::Error) {
        self.log(&format!("accept failed: {e}"));
    }

    /// Logs `what` as a warning, unless one was logged less than a second
    /// ago (then it is only counted).
    fn log(&mut self, what: &str) {
        self.count += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!("{what} ({} failure(s) in the last second)", self.count);
        self.count = 0;
        self.last_log = Some(now);
    }
}

/// Accepts plain TCP connections forever and serves each as one stream: the
/// physical reference the muxado figures are compared with.
pub async fn tcp_server(listener: TcpListener, mode: Mode) {
    let pool = BufPool::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        engine::spawn(serve_tcp(Rc::new(tcp), mode, pool.clone()));
    }
}

async fn serve_tcp(tcp: Rc<TcpStream>, mut mode: Mode, pool: BufPool) {
    let mut rx = tcp.recv_multishot();
    let mut total: u64 = 0;
    let mut pooled = pool.take(false);
    let mut out = std::mem::take(&mut pooled.buf);
    loop {
        match rx.next().await {
            Ok(Some(chunk)) => {
                let mut data = &chunk[..];
                if mode == Mode::Tagged {
                    let Some((&tag, rest)) = data.split_first() else {
                        continue;
                    };
                    mode = if tag == TAG_SINK {
                        Mode::Sink
                    } else {
                        Mode::Echo
                    };
                    data = rest;
                }
                total += data.len() as u64;
                if mode == Mode::Echo && !data.is_empty() {
                    out.clear();
                    out.extend_from_slice(data);
                    drop(chunk);
                    let (r, b) = tcp.send_all(out).await;
                    out = b;
                    if r.is_err() {
                        pooled.buf = out;
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                pooled.buf = out;
                return;
            }
        }
    }
    pooled.buf = out;
    if mode == Mode::Sink {
        let (r, _) = tcp.send_all(total.to_be_bytes().to_vec()).await;
        if r.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown_write();
}
