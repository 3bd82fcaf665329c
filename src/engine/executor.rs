//! The local executor of one core, and the rare cross-core path.
//!
//! Tasks are `!Send` futures stored in a slab; the run queue is FIFO. A task's waker is an
//! `Arc<Header>` holding only ids and a flag, so it is `Send + Sync` as `Waker` requires. Waking on
//! the task's own core pushes onto the local run queue (a `RefCell`, no lock); waking from another
//! thread pushes onto the core's [`Remote`] queue under a mutex and writes its eventfd, whose read
//! is armed on the core's ring.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;

use super::core_loop::{self, Core};
use super::EngineError;

/// What a waker points at: which core, which slot.
pub(crate) struct Header {
    owner: u64,
    id: usize,
    queued: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for Header {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return; // Already in a run queue.
        }
        if core_loop::current_instance() == self.owner {
            if let Some(core) = core_loop::current() {
                core.exec.queue.borrow_mut().push_back(self.clone());
                return;
            }
        }
        self.remote.push_task(self.clone());
    }
}

struct Task {
    header: Arc<Header>,
    waker: Waker,
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

/// Tasks and the FIFO run queue of one core.
pub(crate) struct Executor {
    queue: RefCell<VecDeque<Arc<Header>>>,
    tasks: RefCell<Slab<Task>>,
    polls: Cell<u64>,
}

impl Executor {
    pub(crate) fn new() -> Executor {
        Executor {
            queue: RefCell::new(VecDeque::with_capacity(64)),
            tasks: RefCell::new(Slab::with_capacity(64)),
            polls: Cell::new(0),
        }
    }

    fn spawn(&self, core: &Core, future: Pin<Box<dyn Future<Output = ()>>>) -> Arc<Header> {
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let header = Arc::new(Header {
            owner: core.instance,
            id: entry.key(),
            queued: AtomicBool::new(true),
            remote: core.remote.clone(),
        });
        entry.insert(Task {
            header: header.clone(),
            waker: Waker::from(header.clone()),
            future: Some(future),
        });
        self.queue.borrow_mut().push_back(header.clone());
        header
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    pub(crate) fn polls(&self) -> u64 {
        self.polls.get()
    }

    /// Polls the tasks that are ready now (not those they wake: those wait for the next turn, so
    /// a task that keeps waking itself cannot starve I/O).
    pub(crate) fn run_ready(&self, _core: &Core) {
        let n = self.queue.borrow().len();
        for _ in 0..n {
            let Some(header) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            header.queued.store(false, Ordering::Release);
            let (mut future, waker) = {
                let mut tasks = self.tasks.borrow_mut();
                match tasks.get_mut(header.id) {
                    Some(t) if Arc::ptr_eq(&t.header, &header) => match t.future.take() {
                        Some(f) => (f, t.waker.clone()),
                        None => continue,
                    },
                    _ => continue, // A stale wakeup of a finished task.
                }
            };
            self.polls.set(self.polls.get() + 1);
            let mut cx = Context::from_waker(&waker);
            let done = future.as_mut().poll(&mut cx).is_ready();
            let mut tasks = self.tasks.borrow_mut();
            if done {
                tasks.remove(header.id);
            } else if let Some(t) = tasks.get_mut(header.id) {
                t.future = Some(future);
            }
        }
    }

    /// Removes a task (used by `JoinHandle::abort`); the future is dropped outside the borrow.
    fn cancel(&self, header: &Arc<Header>) {
        let removed = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get(header.id) {
                Some(t) if Arc::ptr_eq(&t.header, header) && t.future.is_some() => {
                    Some(tasks.remove(header.id))
                }
                _ => None,
            }
        };
        drop(removed);
    }

    /// Drops every task (at shutdown). Futures are dropped outside the borrow since their drop
    /// may touch the executor.
    pub(crate) fn clear(&self) {
        loop {
            let tasks: Vec<Task> = self.tasks.borrow_mut().drain().collect();
            self.queue.borrow_mut().clear();
            if tasks.is_empty() {
                break;
            }
            drop(tasks);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning and joining.

/// Spawns a task on the current core.
///
/// # Panics
///
/// Panics if called outside an engine core (that is, outside [`block_on`](super::block_on),
/// [`Engine::run`](super::Engine::run) or a task they spawned). Use [`try_spawn`] to get an error
/// instead.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
{
    match try_spawn(future) {
        Ok(h) => h,
        Err(e) => panic!("muxado::engine::spawn: {e}"),
    }
}

/// Spawns a task on the current core, or fails with [`EngineError::NotOnCore`].
pub fn try_spawn<F>(future: F) -> Result<JoinHandle<F::Output>, EngineError>
where
    F: Future + 'static,
{
    let core = core_loop::current().ok_or(EngineError::NotOnCore)?;
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let completer = Completer(Some(state.clone()));
    let task = async move {
        let result = CatchUnwind(future).await;
        completer.finish(result.map_err(Failure::Panicked));
    };
    let header = core.exec.spawn(&core, Box::pin(task));
    Ok(JoinHandle { state, header })
}

/// Spawns a task nobody will join, or fails with [`EngineError::NotOnCore`]: like
/// [`try_spawn`] without the join state (one allocation fewer per task, which a short-lived
/// session's tasks notice). A panic in it ends only the task, as with a dropped [`JoinHandle`].
pub(crate) fn try_spawn_detached<F>(future: F) -> Result<(), EngineError>
where
    F: Future<Output = ()> + 'static,
{
    let core = core_loop::current().ok_or(EngineError::NotOnCore)?;
    let task = async move {
        // The payload is dropped, as a dropped JoinHandle drops it.
        let _ = CatchUnwind(future).await;
    };
    core.exec.spawn(&core, Box::pin(task));
    Ok(())
}

/// Yields once to the other ready tasks of this core.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

struct JoinState<T> {
    result: Option<Result<T, Failure>>,
    waker: Option<Waker>,
}

/// Why a local task has no output.
enum Failure {
    /// It panicked; the payload is resumed by `.await`.
    Panicked(Box<dyn std::any::Any + Send>),
    /// It was dropped before finishing: aborted, or its core shut down.
    Cancelled,
}

/// Travels with a task's future and hands its outcome to the [`JoinHandle`]. If the future is
/// dropped before finishing (abort, shutdown), its drop reports `Cancelled`, so a joiner never
/// waits forever.
struct Completer<T>(Option<Rc<RefCell<JoinState<T>>>>);

impl<T> Completer<T> {
    fn finish(mut self, result: Result<T, Failure>) {
        if let Some(state) = self.0.take() {
            Self::deliver(&state, result);
        }
    }

    fn deliver(state: &RefCell<JoinState<T>>, result: Result<T, Failure>) {
        let waker = {
            let mut st = state.borrow_mut();
            st.result = Some(result);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            Self::deliver(&state, Err(Failure::Cancelled));
        }
    }
}

/// A future that turns a panic of the inner future into `Err(payload)`, so that it reaches the
/// joiner instead of unwinding through the event loop.
struct CatchUnwind<F>(F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field: it is never moved out of `self`.
        let fut = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The handle of a task spawned on this core: a future giving the task's output.
///
/// Dropping it detaches the task. If the task panicked, awaiting the handle resumes the panic; if
/// it was aborted (or its core shut down), awaiting it panics with [`JoinError::Cancelled`]'s
/// message. [`join`](JoinHandle::join) gives both as a [`JoinError`] instead.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
    header: Arc<Header>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }

    /// Stops the task: its future is dropped (if it has not finished yet). Afterwards
    /// [`join`](Self::join) gives `Err(JoinError::Cancelled)` and `.await` panics with it.
    /// Does nothing when called from another core or thread.
    pub fn abort(&self) {
        if let Some(core) = core_loop::current() {
            if core.instance == self.header.owner {
                core.exec.cancel(&self.header);
            }
        }
    }
}

impl<T> JoinHandle<T> {
    /// Waits for the task and gives its output, or why there is none: `Panicked` (with the
    /// panic's message) or `Cancelled` (aborted, or its core shut down).
    pub fn join(self) -> Join<T> {
        Join(self)
    }

    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<T, Failure>> {
        let mut st = self.state.borrow_mut();
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                match &st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match std::task::ready!(self.poll_result(cx)) {
            Ok(v) => Poll::Ready(v),
            Err(Failure::Panicked(payload)) => panic::resume_unwind(payload),
            Err(Failure::Cancelled) => panic!("{}", JoinError::Cancelled),
        }
    }
}

/// The future of [`JoinHandle::join`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct Join<T>(JoinHandle<T>);

impl<T> Future for Join<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match std::task::ready!(self.0.poll_result(cx)) {
            Ok(v) => Ok(v),
            Err(Failure::Panicked(p)) => Err(JoinError::Panicked(panic_message(&*p))),
            Err(Failure::Cancelled) => Err(JoinError::Cancelled),
        })
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// The cross-core path.

type Job = Box<dyn FnOnce() + Send>;

struct RemoteState {
    tasks: Vec<Arc<Header>>,
    jobs: Vec<Job>,
    /// The eventfd. It is closed only after the ring has let go of every SQE naming it (see
    /// [`Remote::release_eventfd`]).
    efd: Option<OwnedFd>,
    /// The core has shut down: pushes are dropped.
    closed: bool,
    stop: bool,
}

/// The mailbox of one core, shared with other threads.
pub(crate) struct Remote {
    state: Mutex<RemoteState>,
    /// Set when the eventfd was written and the core has not drained the mailbox since.
    notified: AtomicBool,
    raw_efd: RawFd,
}

impl Remote {
    pub(crate) fn new() -> Result<Remote, EngineError> {
        // SAFETY: plain syscall; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(EngineError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Remote {
            raw_efd: efd.as_raw_fd(),
            state: Mutex::new(RemoteState {
                tasks: Vec::new(),
                jobs: Vec::new(),
                efd: Some(efd),
                closed: false,
                stop: false,
            }),
            notified: AtomicBool::new(false),
        })
    }

    /// The eventfd number, for the ring's read (valid while the core runs).
    pub(crate) fn raw_eventfd(&self) -> RawFd {
        self.raw_efd
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, st: &RemoteState) {
        if self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(efd) = &st.efd {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own (kept open by the lock).
            unsafe { libc::write(efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn push_task(&self, h: Arc<Header>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.tasks.push(h);
        self.notify(&st);
    }

    /// Hands a job to the core; gives it back if the core has shut down.
    pub(crate) fn push_job(&self, job: Job) -> Result<(), Job> {
        let mut st = self.lock();
        if st.closed || st.stop {
            return Err(job);
        }
        st.jobs.push(job);
        self.notify(&st);
        Ok(())
    }

    /// Whether the mailbox was notified and the core has not handled it yet (a busy-polling core
    /// looks at this instead of waiting for the eventfd).
    pub(crate) fn pending(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Interrupts the core's wait without queueing anything.
    pub(crate) fn kick(&self) {
        let st = self.lock();
        self.notify(&st);
    }

    /// Asks the core to stop.
    pub(crate) fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        self.notify(&st);
    }

    /// Closes the mailbox (at core shutdown): later pushes are dropped. The eventfd stays open
    /// until [`release_eventfd`](Self::release_eventfd).
    pub(crate) fn close(&self) {
        let (tasks, jobs) = {
            let mut st = self.lock();
            st.closed = true;
            (std::mem::take(&mut st.tasks), std::mem::take(&mut st.jobs))
        };
        drop((tasks, jobs));
    }

    /// Closes the eventfd, once the ring holds no SQE that names it (teardown drained it).
    ///
    /// Why not sooner: a read of the eventfd re-armed in the last turn sits in the SQ until the
    /// next enter, and the kernel resolves its fd number only then. Closed before that enter, the
    /// number can go to a socket that another thread opens meanwhile, and the stale read takes 8
    /// bytes of that connection's data. With `leak` (the ring could not be drained) the fd is
    /// never closed, for the same reason.
    pub(crate) fn release_eventfd(&self, leak: bool) {
        let efd = self.lock().efd.take();
        let Some(efd) = efd else { return };
        let raw = efd.as_raw_fd();
        if leak {
            let _ = efd.into_raw_fd();
        } else {
            drop(efd);
        }
        #[cfg(test)]
        tests::after_eventfd_close(raw);
        #[cfg(not(test))]
        let _ = raw;
    }

    /// Runs on the core after its eventfd fired: queues woken tasks, runs jobs.
    /// Returns true if the core was asked to stop.
    pub(crate) fn handle(&self, core: &Core) -> bool {
        self.notified.store(false, Ordering::Release);
        let (tasks, jobs, stop) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.tasks),
                std::mem::take(&mut st.jobs),
                st.stop,
            )
        };
        core.exec.queue.borrow_mut().extend(tasks);
        for job in jobs {
            job();
        }
        stop
    }
}

/// Error of a task joined from another thread.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The task panicked; the message is the panic's, when it was a string.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task was dropped before finishing: aborted, or its core shut down.
    #[error("task was cancelled (aborted, or its core shut down)")]
    Cancelled,
}

struct RemoteJoinState<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
}

struct RemoteJoinShared<T> {
    state: Mutex<RemoteJoinState<T>>,
    cond: Condvar,
}

impl<T> RemoteJoinShared<T> {
    fn finish(&self, r: Result<T, JoinError>) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.result.is_some() {
                return;
            }
            st.result = Some(r);
            st.waker.take()
        };
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The handle of a task started on a core with `spawn_on`: `Send`, awaitable from any executor
/// and joinable by blocking ([`RemoteJoinHandle::join`]).
pub struct RemoteJoinHandle<T> {
    shared: Arc<RemoteJoinShared<T>>,
}

impl<T> RemoteJoinHandle<T> {
    /// Blocks the calling thread until the task finishes. Do not call it on an engine core.
    pub fn join(self) -> Result<T, JoinError> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = st.result.take() {
                return r;
            }
            st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T> Future for RemoteJoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Reports `Cancelled` if the task is dropped before it finishes.
struct CancelGuard<T>(Arc<RemoteJoinShared<T>>);

impl<T> Drop for CancelGuard<T> {
    fn drop(&mut self) {
        self.0.finish(Err(JoinError::Cancelled));
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Sends `make` to the core behind `remote`, which builds the future there and spawns it.
pub(crate) fn spawn_remote<M, F>(
    remote: &Remote,
    make: M,
) -> Result<RemoteJoinHandle<F::Output>, EngineError>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future + 'static,
    F::Output: Send + 'static,
{
    let shared = Arc::new(RemoteJoinShared {
        state: Mutex::new(RemoteJoinState {
            result: None,
            waker: None,
        }),
        cond: Condvar::new(),
    });
    // The guard travels with the job: if the job is dropped unrun (the core shut down first),
    // the handle reports `Cancelled` instead of waiting forever.
    let guard = CancelGuard(shared.clone());
    let job: Job = Box::new(move || {
        let future = match panic::catch_unwind(AssertUnwindSafe(make)) {
            Ok(f) => f,
            Err(p) => {
                guard.0.finish(Err(JoinError::Panicked(panic_message(&*p))));
                return;
            }
        };
        let _ = try_spawn(async move {
            let out = match CatchUnwind(future).await {
                Ok(v) => Ok(v),
                Err(p) => Err(JoinError::Panicked(panic_message(&*p))),
            };
            guard.0.finish(out);
        });
    });
    remote.push_job(job).map_err(|_| EngineError::ShutDown)?;
    Ok(RemoteJoinHandle { shared })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::task::Poll;
    use std::time::Duration;

    use crate::engine;

    type Hook = Box<dyn FnOnce(RawFd)>;

    thread_local! {
        /// Test hook: runs on the core's thread right after its eventfd is closed.
        static AFTER_EVENTFD_CLOSE: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    pub(super) fn after_eventfd_close(fd: RawFd) {
        if let Some(hook) = AFTER_EVENTFD_CLOSE.with(|h| h.borrow_mut().take()) {
            hook(fd);
        }
    }

    /// A core whose last turn re-armed its eventfd read (a wakeup from another thread) tears
    /// down. If the eventfd were closed while that read still sat unsubmitted in the SQ, a socket
    /// opened on the freed number would lose 8 bytes to the stale read. (A CI run once lost 8
    /// bytes of a loopback echo this way: another test's core tore down meanwhile.)
    #[test]
    fn a_stale_eventfd_read_never_takes_a_sockets_bytes() {
        const SENT: &[u8] = b"sixteen bytes!!!";
        let (mut tx, rx) = UnixStream::pair().expect("socketpair");
        tx.write_all(SENT).expect("write");
        let victim: RefCell<Option<OwnedFd>> = RefCell::new(None);
        let victim = std::rc::Rc::new(victim);
        let slot = victim.clone();
        AFTER_EVENTFD_CLOSE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |freed: RawFd| {
                // Put the socket on the number the eventfd just gave up, as a socket opened by
                // another thread at this moment would get it.
                // SAFETY: dup2 onto a number nobody owns any more; the result is checked.
                let fd = unsafe { libc::dup2(rx.as_raw_fd(), freed) };
                assert_eq!(fd, freed, "dup2: {}", std::io::Error::last_os_error());
                // SAFETY: `fd` was just created by dup2 and is owned by nobody else.
                *slot.borrow_mut() = Some(unsafe { OwnedFd::from_raw_fd(fd) });
            }));
        });
        let mut polled = false;
        engine::block_on(std::future::poll_fn(|cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            // Woken from another thread once the core waits: the eventfd read completes, the turn
            // re-arms it (into the SQ), and the next turn finishes the root and tears down.
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                waker.wake();
            });
            Poll::Pending
        }))
        .expect("io_uring available");
        let fd = victim
            .borrow_mut()
            .take()
            .expect("the eventfd was closed at teardown");
        let mut sock = UnixStream::from(fd);
        sock.set_nonblocking(true).expect("nonblocking");
        let mut got = [0u8; 32];
        let n = sock.read(&mut got).unwrap_or(0);
        assert_eq!(&got[..n], SENT, "bytes were taken from the socket");
    }
}
