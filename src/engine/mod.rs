//! A small io_uring, thread-per-core runtime.
//!
//! Each core is one thread with its own io_uring, local executor (tasks need not be `Send`),
//! timers and provided-buffer ring. A loop turn runs the ready tasks, submits every SQE they
//! produced with one `io_uring_enter` that also waits for a completion (bounded by the nearest
//! timer), then drains the completion queue. Work moves between cores only through an explicit,
//! rare path ([`Engine::spawn_on`]: a mailbox plus an eventfd read armed on the target ring).
//!
//! - [`block_on`] runs one core on the calling thread (tests, simple programs);
//! - [`Engine`] runs `n` pinned cores; [`Engine::run`] runs a future on every core;
//! - [`spawn`], [`sleep`], [`timeout`], [`net::TcpListener`], [`net::TcpStream`] work inside a core.
//!
//! ```
//! use muxado::engine::{self, net::{TcpListener, TcpStream}};
//!
//! let echoed = engine::block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = engine::spawn(async move {
//!         let (conn, _) = listener.accept().await?;
//!         let mut rx = conn.recv_multishot();
//!         while let Some(chunk) = rx.next().await? {
//!             let (r, _) = conn.send_all(chunk.to_vec()).await;
//!             r?;
//!         }
//!         conn.shutdown_write()
//!     });
//!     let client = TcpStream::connect(addr).await?;
//!     let (r, _) = client.send_all(b"hello, ring".to_vec()).await;
//!     r?;
//!     client.shutdown_write()?;
//!     let mut got = Vec::new();
//!     let mut rx = client.recv_multishot();
//!     while let Some(chunk) = rx.next().await? {
//!         got.extend_from_slice(&chunk);
//!     }
//!     server.await?;
//!     Ok::<_, std::io::Error>(got)
//! })
//! .expect("io_uring available")
//! .expect("echo worked");
//! assert_eq!(echoed, b"hello, ring");
//! ```
//!
//! Parts, in the order they depend on each other:
//! - `ring`: one core's io_uring — `ring::setup` (flags and features), `ring::table` (the
//!   operations in flight and their lifecycle: submitted, awaiting a zero-copy notification,
//!   ignored, completed, multishot), `ring::driver` (push, enter, reap);
//! - `buffers`: the provided-buffer ring multishot receives fill;
//! - `core_loop`: the loop turn, and the thread-local that says which core runs here;
//! - `op`: the futures of one-shot and multishot operations;
//! - `executor` (tasks, the cross-core mailbox), `time` (timers);
//! - [`net`]: owned-buffer traits, addresses, listener, stream, multishot receive.
//!
//! Unsafe code lives where io_uring needs it: `ring::driver` (pushing SQEs, entering the
//! kernel), `op` (the `unsafe fn`s that submit an SQE, whose callers vouch for its pointers),
//! `buffers` (the provided-buffer memory), `net` (socket syscalls, owned-buffer pointers,
//! `IoBuf`/`IoBufMut` are `unsafe trait`s), `executor` (the eventfd, one pin projection) and
//! the CPU-affinity calls below. Each `unsafe fn` has a `# Safety` section and each block a
//! `SAFETY` comment saying why it holds.

mod buffers;
mod core_loop;
mod executor;
pub mod net;
mod op;
mod ring;
mod time;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

pub(crate) use executor::try_spawn_detached;
pub use executor::{spawn, try_spawn, yield_now, Join, JoinError, JoinHandle, RemoteJoinHandle};
pub use time::{sleep, sleep_until, timeout, timeout_at, Elapsed, Sleep, Timeout};

/// Why the engine could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// io_uring cannot be used here; `reason` names the likely cause.
    #[error("io_uring unavailable: {reason}: {source}")]
    Unavailable {
        /// The likely cause, in words (seccomp, sysctl, memlock limit, …).
        reason: &'static str,
        /// What the kernel answered.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's io_uring lacks an opcode the engine needs.
    #[error("io_uring lacks the {0} opcode (kernel too old)")]
    MissingOpcode(&'static str),
    /// Called outside an engine core.
    #[error("not on an engine core (call inside block_on or Engine::run)")]
    NotOnCore,
    /// `block_on` was called on a thread that already runs a core.
    #[error("an engine core already runs on this thread")]
    Nested,
    /// No core with this index.
    #[error("no core {0}")]
    NoSuchCore(usize),
    /// The engine (or that core) has shut down.
    #[error("the engine has shut down")]
    ShutDown,
    /// A future run by `Engine::run` panicked or was cancelled on this core.
    #[error("core {core}: {error}")]
    Task {
        /// The core the future ran on.
        core: usize,
        /// How it ended.
        error: JoinError,
    },
    /// A core thread panicked outside a task.
    #[error("core thread {0} panicked")]
    ThreadPanicked(usize),
    /// Another system error (thread spawn, eventfd, ring wait).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Counters of one core's loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Loop turns.
    pub turns: u64,
    /// `io_uring_enter` system calls.
    pub enters: u64,
    /// Submission queue entries pushed.
    pub sqes: u64,
    /// Completion queue entries reaped.
    pub cqes: u64,
    /// Task polls.
    pub polls: u64,
    /// Busy-poll spins (see [`Builder::busy_poll`]) that ended without work, so that the core
    /// went to sleep in the kernel.
    pub spin_timeouts: u64,
}

/// The counters of the current core; all zero when called outside a core.
pub fn stats() -> Stats {
    match core_loop::current() {
        Some(core) => {
            let mut s = core.driver.borrow().stats;
            s.polls = core.exec.polls();
            s
        }
        None => Stats::default(),
    }
}

/// The index of the core running on this thread (`Some(0)` inside `block_on`).
pub fn current_core() -> Option<usize> {
    core_loop::current().map(|c| c.index)
}

/// Which optional io_uring features the current core uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Timed waits pass a timeout to `io_uring_enter` (`EXT_ARG`).
    pub ext_arg: bool,
    /// `SINGLE_ISSUER` + `DEFER_TASKRUN`.
    pub defer_taskrun: bool,
    /// `COOP_TASKRUN` (used when `DEFER_TASKRUN` is unavailable).
    pub coop_taskrun: bool,
    /// Multishot receives into a provided-buffer ring.
    pub pbuf_ring: bool,
}

/// Checks once that the engine can run here: an io_uring can be created and it supports every
/// opcode the engine needs. Applications call it to choose a driver before building anything, as
/// `muxado serve --driver auto` does (the tokio driver when this fails).
///
/// The error names the cause: [`EngineError::Unavailable`] with EPERM (a seccomp filter such as
/// Docker's default profile, or `kernel.io_uring_disabled`), ENOSYS (no io_uring in this kernel)
/// or ENOMEM (`RLIMIT_MEMLOCK` too low), or [`EngineError::MissingOpcode`] (kernel too old). It
/// creates and closes a small ring, on a short-lived thread of its own; nothing stays behind.
pub fn probe() -> Result<(), EngineError> {
    // Not on the caller's thread: the kernel finishes tearing a ring down with task work on the
    // thread that created it, which can interrupt that thread's next blocking system call with
    // EINTR (seen as a failed blocking socket read right after a probe).
    std::thread::Builder::new()
        .name("muxado-probe".into())
        .spawn(ring::probe)?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the io_uring probe panicked").into()))
}

/// The features of the current core, `None` outside a core.
pub fn features() -> Option<Features> {
    core_loop::current().map(|c| {
        let f = c.driver.borrow().features;
        Features {
            ext_arg: f.ext_arg,
            defer_taskrun: f.defer_taskrun,
            coop_taskrun: f.coop_taskrun,
            pbuf_ring: f.pbuf_ring,
        }
    })
}

/// True the first time it is called with `key` in this process: feature fallbacks are logged
/// once, not once per core or per socket. (The library never prints; it emits `tracing` events.)
pub(crate) fn first_time(key: &'static str) -> bool {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.get_or_insert_with(HashSet::new).insert(key)
}

/// Settings of each core.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    pub ring_entries: u32,
    pub recv_buf_count: u16,
    pub recv_buf_size: usize,
    pub send: SendConfig,
    /// How long an idle core spins on its completion queue before it sleeps in the kernel
    /// (see [`Builder::busy_poll`]); `None`: it never spins.
    pub busy_poll: Option<std::time::Duration>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            ring_entries: 256,
            recv_buf_count: 128,
            recv_buf_size: 32 * 1024,
            send: SendConfig::default(),
            busy_poll: None,
        }
    }
}

/// How session writers send.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendConfig {
    /// Use `SEND_ZC` for sends of at least this many bytes (see [`Builder::send_zero_copy`]).
    pub zc_min: Option<usize>,
}

/// Runs `future` on a single engine core on the calling thread, with default settings, and
/// returns its output. Tasks it spawns are dropped when it returns; every operation they had in
/// flight is cancelled and reclaimed before the ring closes.
///
/// Fails if io_uring is unavailable or this thread already runs a core. A panic of `future`
/// propagates.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, EngineError> {
    Builder::default().block_on(future)
}

/// Configures an [`Engine`] (or a single [`block_on`] core).
#[derive(Debug, Clone)]
pub struct Builder {
    cores: Option<usize>,
    pin: bool,
    cfg: CoreConfig,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            cores: None,
            pin: true,
            cfg: CoreConfig::default(),
        }
    }
}

impl Builder {
    /// Number of cores (threads). Default: the CPUs this process may run on.
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = Some(n.max(1));
        self
    }

    /// Pin each core's thread to its own CPU (default true). Cores wrap modulo the CPUs
    /// available.
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Submission queue size of each ring (default 256; the CQ is 4× larger).
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.cfg.ring_entries = n.max(8);
        self
    }

    /// Provided receive buffers per core: `count` (a power of two, ≤ 32768) of `size` bytes.
    /// Default 128 × 32 KiB.
    pub fn recv_buffers(mut self, count: u16, size: usize) -> Self {
        self.cfg.recv_buf_count = count;
        self.cfg.recv_buf_size = size;
        self
    }

    /// Session writers send with `IORING_OP_SEND_ZC` when a send carries at least `min_bytes`
    /// (`None`, the default: never). The buffer is held until the kernel's notification CQE.
    /// Falls back to plain sends, with one log line, if the kernel lacks SEND_ZC.
    ///
    /// Off by default: on loopback (where the kernel copies zero-copy pages anyway) it measured
    /// slower than SEND, since the writer also waits for the notification before its next send.
    /// (The library never reads the environment; the `muxado` tool maps `MUXADO_SEND_ZC` here.)
    pub fn send_zero_copy(mut self, min_bytes: Option<usize>) -> Self {
        self.cfg.send.zc_min = min_bytes;
        self
    }

    /// Latency mode: a core with nothing to run spins for up to `spin` on its completion queue,
    /// its kernel task-work flag and its cross-core mailbox — all shared memory, no system call —
    /// before it sleeps in `io_uring_enter` (off by default: it sleeps at once).
    ///
    /// Sleeping costs a wake-up when the next completion arrives: the kernel has to schedule the
    /// core's thread again (tens of µs when the peer runs on another CPU). Spinning trades that
    /// for CPU: a spinning core uses its CPU fully for up to `spin` after each piece of work, so
    /// only use it when each core has a CPU to itself. Zero turns it off.
    pub fn busy_poll(mut self, spin: std::time::Duration) -> Self {
        self.cfg.busy_poll = Some(spin).filter(|d| !d.is_zero());
        self
    }

    /// Runs `future` on one core on the calling thread (see [`block_on`]).
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, EngineError> {
        // The guard tears the core down even if `future` panics, so the thread can run another.
        let core = core_loop::Installed::new(core_loop::Core::install(0, &self.cfg)?);
        drive_root(core.core(), future)
    }

    /// Starts the cores.
    pub fn build(self) -> Result<Engine, EngineError> {
        ring::probe()?;
        let cpus = if self.pin { allowed_cpus() } else { Vec::new() };
        let n = self.cores.unwrap_or_else(|| allowed_cpus().len().max(1));
        let mut threads = Vec::with_capacity(n);
        let mut remotes = Vec::with_capacity(n);
        let mut failure = None;
        for index in 0..n {
            let (tx, rx) = mpsc::channel();
            let cfg = self.cfg.clone();
            let cpu = if cpus.is_empty() {
                None
            } else {
                Some(cpus[index % cpus.len()])
            };
            let spawned = thread::Builder::new()
                .name(format!("muxado-core-{index}"))
                .spawn(move || core_thread(index, cpu, cfg, tx));
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(EngineError::Io(e));
                    break;
                }
            };
            match rx.recv() {
                Ok(Ok(remote)) => {
                    threads.push(Some(handle));
                    remotes.push(remote);
                }
                Ok(Err(e)) => {
                    let _ = handle.join();
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    let _ = handle.join();
                    failure = Some(EngineError::ThreadPanicked(index));
                    break;
                }
            }
        }
        let engine = Engine {
            handle: EngineHandle {
                remotes: Arc::new(remotes),
            },
            threads,
        };
        match failure {
            None => Ok(engine),
            Some(e) => {
                drop(engine);
                Err(e)
            }
        }
    }
}

/// Polls the root future on the installed core until it completes.
///
/// The root may borrow the caller's stack (it need not be `'static`), so it is not a task: the
/// loop polls it whenever its waker has fired.
fn drive_root<F: Future>(
    core: &std::rc::Rc<core_loop::Core>,
    future: F,
) -> Result<F::Output, EngineError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    struct RootWaker {
        owner: u64,
        woken: AtomicBool,
        remote: Arc<executor::Remote>,
    }
    impl Wake for RootWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            if core_loop::current_instance() != self.owner {
                // Woken from another thread: interrupt the core's wait.
                self.remote.kick();
            }
        }
    }
    let root = Arc::new(RootWaker {
        owner: core.instance,
        woken: AtomicBool::new(true),
        remote: core.remote.clone(),
    });
    let waker = Waker::from(root.clone());
    let mut future = std::pin::pin!(future);
    let mut output = None;
    core.run_until(
        || {
            if root.woken.swap(false, Ordering::AcqRel) {
                let mut cx = Context::from_waker(&waker);
                if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                    output = Some(v);
                    return true;
                }
            }
            false
        },
        || root.woken.load(Ordering::Acquire),
    )?;
    output.ok_or(EngineError::ShutDown)
}

fn core_thread(
    index: usize,
    cpu: Option<usize>,
    cfg: CoreConfig,
    ready: mpsc::Sender<Result<Arc<executor::Remote>, EngineError>>,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_to(cpu) {
            tracing::warn!(core = index, cpu, error = %e, "could not pin an engine core to its CPU");
        }
    }
    let core = match core_loop::Core::install(index, &cfg) {
        Ok(c) => core_loop::Installed::new(c),
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(core.core().remote.clone()));
    drop(ready);
    if let Err(e) = core.core().run_until(|| false, || false) {
        tracing::error!(core = index, error = %e, "engine core loop failed");
    }
}

/// A cheap, cloneable, `Send` handle to an engine's cores, for `spawn_on` from anywhere
/// (including from a task on another core).
#[derive(Clone)]
pub struct EngineHandle {
    remotes: Arc<Vec<Arc<executor::Remote>>>,
}

impl EngineHandle {
    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.remotes.len()
    }

    /// Builds a future on core `core` with `make` and runs it there as a task.
    pub fn spawn_on<M, F>(
        &self,
        core: usize,
        make: M,
    ) -> Result<RemoteJoinHandle<F::Output>, EngineError>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let remote = self
            .remotes
            .get(core)
            .ok_or(EngineError::NoSuchCore(core))?;
        executor::spawn_remote(remote, make)
    }
}

/// A running set of cores. Dropping it (or [`shutdown`](Engine::shutdown)) stops every core,
/// drops their tasks and joins their threads.
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<Option<thread::JoinHandle<()>>>,
}

impl Engine {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.handle.cores()
    }

    /// A `Send` handle for `spawn_on`.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Builds a future on core `core` with `make` and runs it there; the handle can be awaited
    /// from any executor or joined by blocking.
    pub fn spawn_on<M, F>(
        &self,
        core: usize,
        make: M,
    ) -> Result<RemoteJoinHandle<F::Output>, EngineError>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn_on(core, make)
    }

    /// Runs `f(core)` on every core and waits for all outputs, in core order. Blocks the calling
    /// thread (do not call it from an engine core).
    pub fn run<M, F, T>(&self, f: M) -> Result<Vec<T>, EngineError>
    where
        M: Fn(usize) -> F + Send + Sync + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let handles = (0..self.cores())
            .map(|core| {
                let f = f.clone();
                self.spawn_on(core, move || f(core))
            })
            .collect::<Result<Vec<_>, _>>()?;
        handles
            .into_iter()
            .enumerate()
            .map(|(core, h)| h.join().map_err(|error| EngineError::Task { core, error }))
            .collect()
    }

    /// Stops every core and joins the threads.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), EngineError> {
        for r in self.handle.remotes.iter() {
            r.stop();
        }
        let mut result = Ok(());
        for (i, t) in self.threads.iter_mut().enumerate() {
            if let Some(t) = t.take() {
                if t.join().is_err() && result.is_ok() {
                    result = Err(EngineError::ThreadPanicked(i));
                }
            }
        }
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cores", &self.cores())
            .finish()
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it and reports errors.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to the CPU that engine core `core` runs on (cores wrap modulo the
/// CPUs this process may run on) and returns that CPU: for threads a program places beside an
/// engine's cores, such as `muxado bench`'s tokio peers, so that both sit on the same CPUs.
pub fn pin_like_core(core: usize) -> std::io::Result<usize> {
    let cpus = allowed_cpus();
    if cpus.is_empty() {
        return Err(std::io::Error::other(
            "no CPU in this process's affinity mask",
        ));
    }
    let cpu = cpus[core % cpus.len()];
    pin_to(cpu)?;
    Ok(cpu)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; `cpu` < CPU_SETSIZE because it came from allowed_cpus.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
