//! The core loop: driver + executor + timers, installed in a thread-local while it runs.
//!
//! One turn = run ready tasks → fire due timers → submit every queued SQE with ONE
//! `io_uring_enter` that also waits for a completion (unless tasks are still runnable), bounded by
//! the nearest timer → drain the completion queue and wake the tasks whose operations finished.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::buffers::BufPool;
use super::executor::{Executor, Remote};
use super::ring::Driver;
use super::time::Timers;
use super::{CoreConfig, EngineError};

static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Everything one core owns. Lives in a thread-local `Rc` while the core runs.
pub(crate) struct Core {
    pub index: usize,
    /// Unique per core instance in this process (wakers compare it to find "same thread").
    pub instance: u64,
    pub driver: RefCell<Driver>,
    pub exec: Executor,
    pub timers: RefCell<Timers>,
    pub remote: Arc<Remote>,
    /// See [`crate::engine::Builder::busy_poll`].
    busy_poll: Option<Duration>,
    wakers: RefCell<Vec<Waker>>,
    stopping: Cell<bool>,
    /// Whether kernel-owned memory could not be reclaimed at shutdown (then it is leaked).
    leaked: Cell<bool>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    static CURRENT_INSTANCE: Cell<u64> = const { Cell::new(0) };
}

/// Owns an installed core: dropping it (also while unwinding from a panic) tears the core down
/// and uninstalls it from the thread.
pub(crate) struct Installed(Option<Rc<Core>>);

impl Installed {
    pub(crate) fn new(core: Rc<Core>) -> Installed {
        Installed(Some(core))
    }

    pub(crate) fn core(&self) -> &Rc<Core> {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(core) = self.0.take() {
            core.teardown();
        }
    }
}

/// The core running on this thread, if any.
pub(crate) fn current() -> Option<Rc<Core>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The instance id of the core running on this thread (0 if none). Cheap: no refcounting.
pub(crate) fn current_instance() -> u64 {
    CURRENT_INSTANCE.try_with(|c| c.get()).unwrap_or(0)
}

impl Core {
    /// Creates a core and installs it on the calling thread.
    pub(crate) fn install(index: usize, cfg: &CoreConfig) -> Result<Rc<Core>, EngineError> {
        if current().is_some() {
            return Err(EngineError::Nested);
        }
        let instance = NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let remote = Arc::new(Remote::new()?);
        let driver = Driver::new(cfg, remote.raw_eventfd())?;
        let core = Rc::new(Core {
            index,
            instance,
            driver: RefCell::new(driver),
            exec: Executor::new(),
            timers: RefCell::new(Timers::default()),
            remote,
            busy_poll: cfg.busy_poll,
            wakers: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            leaked: Cell::new(false),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
        CURRENT_INSTANCE.with(|c| c.set(instance));
        Ok(core)
    }

    /// Runs loop turns until `done` says so, or a stop request arrives from another thread.
    ///
    /// `poll_root` is called once per turn (it polls a root future if woken and says whether it is
    /// done); `root_ready` says whether the root has been woken (then the turn does not wait).
    pub(crate) fn run_until(
        &self,
        mut poll_root: impl FnMut() -> bool,
        root_ready: impl Fn() -> bool,
    ) -> io::Result<()> {
        loop {
            self.exec.run_ready(self);
            if poll_root() || self.stopping.get() {
                return Ok(());
            }
            // Receive buffers whose last lease the tasks just dropped go back to the kernel
            // before it may need them (wakes receivers waiting for one: before `busy`).
            let pool = self.driver.borrow().bufs.clone();
            if let Some(pool) = pool {
                pool.reclaim();
            }
            let now = Instant::now();
            let deadline = {
                let mut timers = self.timers.borrow_mut();
                timers.fire(now);
                timers.next_deadline()
            };
            let mut busy = self.exec.has_ready() || root_ready();
            let remote = {
                let mut driver = self.driver.borrow_mut();
                driver.stats.turns += 1;
                if let (false, Some(spin)) = (busy, self.busy_poll) {
                    let mut until = now + spin;
                    if let Some(d) = deadline {
                        until = until.min(d);
                    }
                    busy = driver.spin_for_work(until, || self.remote.pending());
                }
                driver.submit_and_wait(busy, deadline)?;
                let mut wakers = self.wakers.borrow_mut();
                driver.drain(&mut wakers)
            };
            let mut wakers = std::mem::take(&mut *self.wakers.borrow_mut());
            for w in wakers.drain(..) {
                w.wake();
            }
            // Give the emptied vector back, so that the next turn reuses its capacity.
            let mut slot = self.wakers.borrow_mut();
            if slot.is_empty() {
                *slot = wakers;
            }
            drop(slot);
            // A spinning core sees the mailbox's flag before the eventfd's read completes.
            if remote || self.remote.pending() {
                if self.remote.handle(self) {
                    self.stopping.set(true);
                } else {
                    self.driver.borrow_mut().rearm_wake();
                }
            }
        }
    }

    /// Drops every task, reclaims every in-flight operation and uninstalls the core.
    pub(crate) fn teardown(self: Rc<Core>) {
        self.remote.close();
        self.exec.clear();
        self.timers.borrow_mut().clear();
        let ok = self
            .driver
            .borrow_mut()
            .cancel_all_and_drain(Duration::from_secs(5));
        if !ok {
            tracing::error!(
                core = self.index,
                "in-flight io_uring operations did not finish at shutdown; leaking their memory"
            );
            self.leaked.set(true);
        }
        // Only now: until the drain, an unsubmitted SQE could still name the eventfd's number.
        self.remote.release_eventfd(!ok);
        CURRENT.with(|c| c.borrow_mut().take());
        CURRENT_INSTANCE.with(|c| c.set(0));
        // Tasks dropped above may have woken others: nothing more will run on this core.
        self.exec.clear();
        if self.leaked.get() {
            // The kernel may still write into buffers it owns: never free them.
            std::mem::forget(self);
        }
    }
}

/// Runs `f` with the core's driver (`None` outside a core).
pub(crate) fn with_driver<R>(f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    current().map(|c| f(&mut c.driver.borrow_mut()))
}

/// Whether this thread's core has provided-buffer rings; and the pool.
pub(crate) fn buf_pool() -> Option<Rc<BufPool>> {
    current().and_then(|c| c.driver.borrow().bufs.clone())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::engine::net::{TcpListener, TcpStream};
    use crate::engine::{self, Engine};

    /// Latency mode must not change what a core does: I/O completes across cores, timers fire
    /// while the core spins (the spin stops at the nearest deadline), work handed over from
    /// another thread runs, and a spin with nothing to do ends in a sleep.
    #[test]
    fn a_busy_polling_engine_does_io_timers_and_remote_work() {
        let engine = Engine::builder()
            .cores(2)
            .busy_poll(Duration::from_micros(300))
            .build()
            .expect("io_uring available");
        let (tx, rx) = std::sync::mpsc::channel();
        let server = engine
            .spawn_on(1, move || async move {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                tx.send(listener.local_addr()?).expect("test alive");
                let (conn, _) = listener.accept().await?;
                let mut rx = conn.recv_multishot();
                while let Some(chunk) = rx.next().await? {
                    let (r, _) = conn.send_all(chunk.to_vec()).await;
                    r?;
                }
                conn.shutdown_write()
            })
            .expect("core 1");
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server bound");
        let client = engine
            .spawn_on(0, move || async move {
                let tcp = TcpStream::connect(addr).await?;
                let mut rx = tcp.recv_multishot();
                for i in 0..200u32 {
                    let (r, _) = tcp.send_all(i.to_be_bytes().to_vec()).await;
                    r?;
                    let mut got = Vec::new();
                    while got.len() < 4 {
                        match rx.next().await? {
                            Some(c) => got.extend_from_slice(&c),
                            None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        }
                    }
                    assert_eq!(got, i.to_be_bytes());
                }
                tcp.shutdown_write()?;
                let t = Instant::now();
                engine::sleep(Duration::from_millis(5)).await;
                let slept = t.elapsed();
                Ok::<_, std::io::Error>((slept, engine::stats()))
            })
            .expect("core 0");
        let (slept, stats) = client.join().expect("client ran").expect("echo worked");
        server.join().expect("server ran").expect("server worked");
        assert!(slept >= Duration::from_millis(5), "woke early: {slept:?}");
        assert!(slept < Duration::from_secs(2), "timer late: {slept:?}");
        assert!(
            stats.spin_timeouts > 0,
            "a 5 ms sleep spins 300 µs and then sleeps: {stats:?}"
        );
        // The mailbox path while both cores spin or sleep.
        let from_outside = engine.spawn_on(1, || async { 7 }).expect("core 1");
        assert_eq!(from_outside.join().expect("ran"), 7);
        engine.shutdown().expect("clean shutdown");
    }
}
