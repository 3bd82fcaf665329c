//! The event loop of one core: the io_uring, the table of in-flight operations and the loop turn.
//!
//! One turn = run ready tasks → fire due timers → submit every queued SQE with ONE
//! `io_uring_enter` that also waits for a completion (unless tasks are still runnable), bounded by
//! the nearest timer → drain the completion queue and wake the tasks whose operations finished.
//!
//! Memory safety of in-flight operations: an [`Op`] owns every buffer its SQE points into. If the
//! future is dropped before the CQE arrives, the owned data moves into the operation table
//! ([`Lifecycle::Ignored`]) and is freed only when the kernel reports completion; an async cancel is
//! submitted so that the completion comes soon.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring, Probe};
use slab::Slab;

use super::buffers::BufPool;
use super::executor::{Executor, Remote};
use super::time::Timers;
use super::{CoreConfig, EngineError, SendConfig, Stats};

/// `user_data` of the eventfd read that carries cross-core wakeups.
const WAKE_TOKEN: u64 = u64::MAX;
/// `user_data` of async-cancel requests; their own completions are ignored.
const CANCEL_TOKEN: u64 = u64::MAX - 1;
/// `user_data` of the `IORING_OP_TIMEOUT` used to bound a wait when `EXT_ARG` is unavailable.
const TIMEOUT_TOKEN: u64 = u64::MAX - 2;

/// What to do with a completion whose future is gone (e.g. close an accepted descriptor).
///
/// # Safety
///
/// A hook must only be called with the completion of the operation it was set on (an accept's
/// hook closes the descriptor in `result`).
pub(crate) type OrphanHook = unsafe fn(&Completion);

/// The result of one CQE: `res` and `flags`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// `res` as an `io::Result`: negative values are `-errno`.
    pub fn io_result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// Where an in-flight operation stands.
enum Lifecycle {
    /// In the kernel; the waker is the last task that polled the future.
    Submitted(Option<Waker>),
    /// The CQE arrived; waiting for the future to be polled.
    Completed(Completion),
    /// A zero-copy send reported its result (with `IORING_CQE_F_MORE`); the kernel still reads
    /// the buffer until the notification CQE (`IORING_CQE_F_NOTIF`), which completes the op.
    AwaitingNotif(Completion, Option<Waker>),
    /// The future was dropped: keep its data alive until the final CQE, and hand every
    /// completion nobody will read to `on_orphan` (an accept closes the descriptor it got).
    Ignored {
        _data: Box<dyn Any>,
        on_orphan: Option<OrphanHook>,
    },
    /// A multishot operation: completions queue up until the consumer takes them.
    Multi(MultiState),
}

struct MultiState {
    waker: Option<Waker>,
    queue: VecDeque<Completion>,
    /// The final CQE (without `IORING_CQE_F_MORE`) has arrived.
    finished: bool,
    /// When `queue` reaches this length, cancel the operation (the consumer re-arms it later):
    /// one slow reader must not take every provided buffer of the core.
    max_queued: usize,
    cancel_sent: bool,
}

/// The operations in flight, addressed by a token `generation << 32 | slot` used as the SQE's
/// `user_data`: a stale token (say, an async cancel aimed at an operation that already finished)
/// can never match a newer operation that reuses the slot.
struct OpTable {
    slots: Slab<(u32, Lifecycle)>,
    generation: u32,
}

impl OpTable {
    fn new() -> OpTable {
        OpTable {
            slots: Slab::with_capacity(256),
            generation: 0,
        }
    }

    fn insert(&mut self, state: Lifecycle) -> u64 {
        // Generations stay below 2^31 so that tokens never collide with the reserved ones.
        self.generation = (self.generation + 1) & 0x7fff_ffff;
        let slot = self.slots.insert((self.generation, state));
        (u64::from(self.generation) << 32) | slot as u64
    }

    fn split(token: u64) -> (usize, u32) {
        ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut Lifecycle> {
        let (slot, generation) = Self::split(token);
        match self.slots.get_mut(slot) {
            Some((g, state)) if *g == generation => Some(state),
            _ => None,
        }
    }

    fn remove(&mut self, token: u64) {
        if self.get_mut(token).is_some() {
            self.slots.remove(Self::split(token).0);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Lifecycle)> {
        self.slots
            .iter()
            .map(|(slot, (g, state))| ((u64::from(*g) << 32) | slot as u64, state))
    }
}

/// Optional kernel features found when the ring was set up.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Features {
    pub ext_arg: bool,
    pub defer_taskrun: bool,
    pub coop_taskrun: bool,
    pub pbuf_ring: bool,
    /// `IORING_OP_SEND_ZC` is supported.
    pub send_zc: bool,
}

/// The io_uring of one core plus the table of operations in flight.
///
/// Drop order matters and is spelled out in `Drop`: the provided-buffer ring is unregistered
/// first; then the fields drop in declaration order, `ring` (which closes the ring) before
/// `bufs` (whose memory the kernel wrote into).
pub(crate) struct Driver {
    ring: IoUring,
    ops: OpTable,
    /// Operations the kernel still owns (their final CQE has not arrived).
    in_kernel: usize,
    pub stats: Stats,
    pub features: Features,
    /// Provided-buffer ring for multishot receives; `None` when unavailable.
    pub bufs: Option<Rc<BufPool>>,
    /// How sends are issued (see [`SendConfig`]).
    pub send: SendConfig,
    /// 8-byte target of the eventfd read; `wake_armed` says whether the kernel holds it.
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    wake_fd: i32,
    /// Completions copied out of the CQ by `drain`; kept so no turn allocates.
    cq_batch: Vec<cqueue::Entry>,
    /// Test hook: submissions fail with `EBUSY` while the CQ holds completions, as kernels
    /// before 5.19 (?) did when they could not post more.
    /// SQEs that found the SQ full while the kernel could not take more (see `push`).
    backlog: VecDeque<squeue::Entry>,
    /// The timespec of the `IORING_OP_TIMEOUT` that bounds a wait without `EXT_ARG`; boxed so
    /// that its address outlives any SQE naming it.
    wait_ts: Box<types::Timespec>,
    #[cfg(test)]
    busy_while_cq_nonempty: bool,
}

/// Errors of `io_uring_enter` after which the next turn simply tries again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

/// Completions `drain` takes from the CQ at a time.
const CQ_BATCH: usize = 256;

/// The opcodes the engine cannot work without.
const REQUIRED: &[(u8, &str)] = &[
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Read::CODE, "READ"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Timeout::CODE, "TIMEOUT"),
];

/// Maps the error of `io_uring_setup` to an [`EngineError`] that names the cause.
pub(crate) fn setup_error(e: io::Error) -> EngineError {
    let reason = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring (ENOSYS: kernel too old or built without it)",
        Some(libc::EPERM) => {
            "io_uring is not permitted (EPERM: sysctl kernel.io_uring_disabled, or a seccomp filter)"
        }
        Some(libc::EACCES) => "io_uring is not permitted (EACCES: security policy)",
        Some(libc::ENOMEM) => "cannot allocate the io_uring (ENOMEM: RLIMIT_MEMLOCK too low?)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files to create an io_uring",
        _ => "io_uring_setup failed",
    };
    EngineError::Unavailable { reason, source: e }
}

/// Creates a ring, preferring SINGLE_ISSUER + DEFER_TASKRUN, then COOP_TASKRUN, then plain.
fn create_ring(entries: u32) -> Result<(IoUring, Features), EngineError> {
    let mut features = Features::default();
    let cq = entries * 4;
    let best = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all()
        .setup_cqsize(cq)
        .build(entries);
    let ring = match best {
        Ok(r) => {
            features.defer_taskrun = true;
            r
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if super::first_time("no-defer-taskrun") {
                tracing::info!(
                    feature = "SINGLE_ISSUER+DEFER_TASKRUN",
                    fallback = "COOP_TASKRUN",
                    "io_uring feature unavailable"
                );
            }
            match IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_cqsize(cq)
                .build(entries)
            {
                Ok(r) => {
                    features.coop_taskrun = true;
                    r
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    if super::first_time("no-coop-taskrun") {
                        tracing::info!(
                            feature = "COOP_TASKRUN",
                            fallback = "plain io_uring",
                            "io_uring feature unavailable"
                        );
                    }
                    IoUring::builder()
                        .setup_cqsize(cq)
                        .build(entries)
                        .map_err(setup_error)?
                }
                Err(e) => return Err(setup_error(e)),
            }
        }
        Err(e) => return Err(setup_error(e)),
    };
    features.ext_arg = ring.params().is_feature_ext_arg();
    if !features.ext_arg && super::first_time("no-ext-arg") {
        tracing::info!(
            feature = "EXT_ARG",
            fallback = "IORING_OP_TIMEOUT",
            "io_uring feature unavailable"
        );
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| EngineError::Unavailable {
            reason: "io_uring probe failed (kernel older than 5.6?)",
            source: e,
        })?;
    for &(code, name) in REQUIRED {
        if !probe.is_supported(code) {
            return Err(EngineError::MissingOpcode(name));
        }
    }
    features.send_zc = probe.is_supported(opcode::SendZc::CODE);
    Ok((ring, features))
}

/// Checks that an io_uring can be created here and supports every opcode the engine uses.
pub(crate) fn probe() -> Result<(), EngineError> {
    create_ring(8).map(drop)
}

impl Driver {
    pub(crate) fn new(cfg: &CoreConfig, wake_fd: i32) -> Result<Driver, EngineError> {
        let (ring, mut features) = create_ring(cfg.ring_entries)?;
        let bufs = match BufPool::new(&ring.submitter(), 0, cfg.recv_buf_count, cfg.recv_buf_size) {
            Ok(pool) => {
                features.pbuf_ring = true;
                Some(Rc::new(pool))
            }
            Err(e) => {
                if super::first_time("no-pbuf-ring") {
                    tracing::info!(
                        feature = "provided-buffer ring",
                        fallback = "one-shot receives into owned buffers",
                        error = %e,
                        "io_uring feature unavailable"
                    );
                }
                None
            }
        };
        let mut send = cfg.send.clone();
        if send.zc_min.is_some() && !features.send_zc {
            if super::first_time("no-send-zc") {
                tracing::info!(
                    feature = "IORING_OP_SEND_ZC",
                    fallback = "SEND",
                    "io_uring feature unavailable"
                );
            }
            send.zc_min = None;
        }
        let mut driver = Driver {
            ring,
            ops: OpTable::new(),
            in_kernel: 0,
            stats: Stats::default(),
            features,
            bufs,
            send,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            wake_fd,
            cq_batch: Vec::with_capacity(CQ_BATCH),
            backlog: VecDeque::new(),
            wait_ts: Box::new(types::Timespec::new()),
            #[cfg(test)]
            busy_while_cq_nonempty: false,
        };
        driver.arm_wake();
        Ok(driver)
    }

    /// Queues one SQE. If the SQ is full, submits to make room; if the kernel cannot take SQEs
    /// now (`EBUSY`/`EAGAIN`: its CQ is full), parks the SQE in the backlog, which the next turn
    /// moves into the SQ after draining the CQ. Never spins: only a turn can free the kernel.
    fn push(&mut self, sqe: &squeue::Entry) {
        if self.backlog.is_empty() {
            if self.try_push(sqe) {
                return;
            }
            self.stats.enters += 1;
            match self.enter(|r| r.submit()) {
                Ok(_) => {
                    if self.try_push(sqe) {
                        return;
                    }
                }
                Err(e) if is_transient(&e) => {}
                // The next turn's enter reports it (and stops the core).
                Err(e) => tracing::warn!(error = %e, "io_uring_enter failed flushing a full SQ"),
            }
        }
        self.backlog.push_back(sqe.clone());
    }

    /// Puts one SQE into the SQ; false if it is full.
    fn try_push(&mut self, sqe: &squeue::Entry) -> bool {
        // SAFETY: every SQE pushed here points only into memory that outlives the operation:
        // data owned by an `Op`/`Lifecycle::Ignored` entry, the driver's own boxed wake buffer
        // and timespec, or nothing at all (cancel).
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            self.stats.sqes += 1;
            true
        } else {
            false
        }
    }

    /// Moves backlogged SQEs into the SQ, in order; true if none is left.
    fn flush_backlog(&mut self) -> bool {
        while let Some(sqe) = self.backlog.pop_front() {
            if !self.try_push(&sqe) {
                self.backlog.push_front(sqe);
                return false;
            }
        }
        true
    }

    /// Runs one `io_uring_enter` made by `f` (the test hook may refuse it).
    fn enter(&mut self, f: impl FnOnce(&IoUring) -> io::Result<usize>) -> io::Result<usize> {
        #[cfg(test)]
        if self.busy_while_cq_nonempty && !self.ring.completion().is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        f(&self.ring)
    }

    /// Arms the read of the cross-core eventfd.
    fn arm_wake(&mut self) {
        if self.wake_armed || self.wake_fd < 0 {
            return;
        }
        let sqe = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE_TOKEN);
        self.push(&sqe);
        self.wake_armed = true;
    }

    fn cancel(&mut self, token: u64) {
        let sqe = opcode::AsyncCancel::new(token)
            .build()
            .user_data(CANCEL_TOKEN);
        self.push(&sqe);
    }

    /// Submits queued SQEs and, unless `busy`, waits for one completion or until `deadline`.
    pub(crate) fn submit_and_wait(
        &mut self,
        busy: bool,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        // SQEs the kernel could not take last time: if some still do not fit, do not block (the
        // drain after this enter makes room for them).
        let busy = !self.flush_backlog() || busy;
        let res = if busy {
            self.submit_getevents()
        } else {
            match deadline {
                None => {
                    self.stats.enters += 1;
                    self.enter(|r| r.submit_and_wait(1))
                }
                Some(d) => {
                    let now = Instant::now();
                    if d <= now {
                        self.submit_getevents()
                    } else {
                        // Round up so that we do not wake just before the deadline and spin.
                        let wait = d - now + Duration::from_micros(50);
                        self.submit_and_wait_for(wait)
                    }
                }
            }
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits without waiting, but lets the kernel post completions that are ready.
    ///
    /// With `DEFER_TASKRUN`, completions (of receives whose data arrived, say) are task work that
    /// the kernel runs only in an enter carrying `GETEVENTS`, so a turn with runnable tasks asks
    /// for it too: otherwise a task that keeps waking itself would starve every I/O of its core.
    /// Without `DEFER_TASKRUN`, `GETEVENTS` is passed when the kernel flags pending task work
    /// (`IORING_SQ_TASKRUN`, with `COOP_TASKRUN`) or a CQ overflow, as liburing does.
    fn submit_getevents(&mut self) -> io::Result<usize> {
        let sq = self.ring.submission();
        let to_submit = sq.len() as u32;
        let kernel_wants_us = sq.taskrun() || sq.cq_overflow();
        drop(sq);
        let getevents = self.features.defer_taskrun || kernel_wants_us;
        if to_submit == 0 && !kernel_wants_us {
            // Nothing to submit, and with DEFER_TASKRUN + TASKRUN_FLAG the kernel would have set
            // the flag if task work were pending.
            return Ok(0);
        }
        let flags = if getevents {
            EnterFlags::GETEVENTS.bits()
        } else {
            0
        };
        self.stats.enters += 1;
        // SAFETY: `to_submit` counts SQEs we queued (each valid, see `try_push`); no wait and no
        // argument pointer.
        self.enter(|r| unsafe {
            r.submitter()
                .enter::<libc::sigset_t>(to_submit, 0, flags, None)
        })
    }

    /// Submits and waits for one completion, at most `wait`.
    fn submit_and_wait_for(&mut self, wait: Duration) -> io::Result<usize> {
        self.stats.enters += 1;
        if self.features.ext_arg {
            let ts = types::Timespec::from(wait);
            let args = types::SubmitArgs::new().timespec(&ts);
            // The kernel reads `ts` during this call only.
            return self.enter(|r| r.submitter().submit_with_args(1, &args));
        }
        // No EXT_ARG: bound the wait with an IORING_OP_TIMEOUT. Its SQE points at `wait_ts`,
        // which lives as long as the driver: a partial submit may leave the SQE queued past this
        // call, and the kernel reads the timespec only when it finally takes the SQE.
        *self.wait_ts = types::Timespec::from(wait);
        let sqe = opcode::Timeout::new(&*self.wait_ts)
            .build()
            .user_data(TIMEOUT_TOKEN);
        self.push(&sqe);
        if !self.backlog.is_empty() {
            // The timeout did not reach the SQ: waiting now could block forever.
            return self.submit_getevents();
        }
        self.enter(|r| r.submit_and_wait(1))
    }

    /// Drains the completion queue. Wakers to call go into `wakers` (called by the caller after the
    /// driver is released). Returns true if the cross-core eventfd fired.
    pub(crate) fn drain(&mut self, wakers: &mut Vec<Waker>) -> bool {
        let mut remote = false;
        loop {
            let mut cq = self.ring.completion();
            if cq.is_empty() {
                break;
            }
            let mut batch = std::mem::take(&mut self.cq_batch);
            batch.extend(cq.by_ref().take(CQ_BATCH));
            // Dropping `cq` publishes the new head to the kernel.
            drop(cq);
            for cqe in batch.drain(..) {
                self.stats.cqes += 1;
                let c = Completion {
                    result: cqe.result(),
                    flags: cqe.flags(),
                };
                match cqe.user_data() {
                    WAKE_TOKEN => {
                        self.wake_armed = false;
                        remote = true;
                    }
                    CANCEL_TOKEN | TIMEOUT_TOKEN => {}
                    token => self.complete(token, c, wakers),
                }
            }
            self.cq_batch = batch;
        }
        remote
    }

    fn complete(&mut self, key: u64, c: Completion, wakers: &mut Vec<Waker>) {
        let more = cqueue::more(c.flags);
        if !more {
            self.in_kernel -= 1;
        }
        if let (Some(_), Some(pool)) = (cqueue::buffer_select(c.flags), &self.bufs) {
            pool.note_taken();
        }
        let Some(state) = self.ops.get_mut(key) else {
            return;
        };
        match state {
            Lifecycle::Submitted(waker) if more => {
                // SEND_ZC's result: the notification follows once the kernel lets go of the data.
                *state = Lifecycle::AwaitingNotif(c, waker.take());
            }
            Lifecycle::Submitted(waker) => {
                if let Some(w) = waker.take() {
                    wakers.push(w);
                }
                *state = Lifecycle::Completed(c);
            }
            Lifecycle::AwaitingNotif(result, waker) => {
                if !more {
                    if let Some(w) = waker.take() {
                        wakers.push(w);
                    }
                    *state = Lifecycle::Completed(*result);
                }
            }
            Lifecycle::Completed(_) => {}
            Lifecycle::Ignored { on_orphan, .. } => {
                let on_orphan = *on_orphan;
                if let Some(hook) = on_orphan {
                    // SAFETY: `c` is a completion of the op that set this hook.
                    unsafe { hook(&c) };
                }
                if cqueue::buffer_select(c.flags).is_some() {
                    self.release_buffer(&c);
                }
                if !more {
                    self.ops.remove(key);
                }
            }
            Lifecycle::Multi(m) => {
                m.queue.push_back(c);
                if !more {
                    m.finished = true;
                }
                if let Some(w) = m.waker.take() {
                    wakers.push(w);
                }
                if !m.finished && !m.cancel_sent && m.queue.len() >= m.max_queued {
                    m.cancel_sent = true;
                    self.cancel(key);
                }
            }
        }
    }

    /// Gives back to the provided-buffer ring the buffer a completion carries, if any.
    fn release_buffer(&self, c: &Completion) {
        if let (Some(bid), Some(pool)) = (cqueue::buffer_select(c.flags), &self.bufs) {
            // SAFETY: the completion handed this buffer out and nobody has seen it: its consumer
            // is gone (or never existed), so it goes straight back.
            unsafe { pool.recycle(bid) };
        }
    }

    /// Re-arms the eventfd read after a remote wakeup was handled.
    pub(crate) fn rearm_wake(&mut self) {
        self.arm_wake();
    }

    /// Cancels every operation still in the kernel and waits (bounded) for their completions, so
    /// that no kernel write can land in memory we are about to free. Returns false on timeout.
    pub(crate) fn cancel_all_and_drain(&mut self, limit: Duration) -> bool {
        let keys: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, s)| match s {
                Lifecycle::Submitted(_) | Lifecycle::Ignored { .. } => true,
                // The send is done; only its notification is outstanding. Nothing to cancel.
                Lifecycle::AwaitingNotif(..) => false,
                Lifecycle::Multi(m) => !m.finished,
                Lifecycle::Completed(_) => false,
            })
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.cancel(k);
        }
        if self.wake_armed {
            let sqe = opcode::AsyncCancel::new(WAKE_TOKEN)
                .build()
                .user_data(CANCEL_TOKEN);
            self.push(&sqe);
        }
        let end = Instant::now() + limit;
        let mut wakers = Vec::new();
        while self.in_kernel > 0 || self.wake_armed {
            if Instant::now() >= end {
                return false;
            }
            if self.submit_and_wait(false, Some(end)).is_err() {
                return false;
            }
            self.drain(&mut wakers);
            wakers.clear();
        }
        true
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Every operation has completed (teardown drained them, or the core was leaked whole),
        // so the kernel holds no buffer of the pool; unregistering makes sure it takes no more.
        if let Some(pool) = &self.bufs {
            if let Err(e) = self.ring.submitter().unregister_buf_ring(pool.bgid()) {
                // The kernel may still know the ring: never free its memory.
                tracing::warn!(error = %e, "could not unregister the provided-buffer ring; leaking it");
                std::mem::forget(pool.clone());
            }
        }
        // `ring` drops next (closing the io_uring), then `bufs`: see the struct's docs.
    }
}

// ---------------------------------------------------------------------------------------------
// The core: driver + executor + timers, installed in a thread-local while it runs.

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
            let now = Instant::now();
            let deadline = {
                let mut timers = self.timers.borrow_mut();
                timers.fire(now);
                timers.next_deadline()
            };
            let busy = self.exec.has_ready() || root_ready();
            let remote = {
                let mut driver = self.driver.borrow_mut();
                driver.stats.turns += 1;
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
            if remote {
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

// ---------------------------------------------------------------------------------------------
// One-shot and multishot operations.

/// A one-shot operation in flight. Resolves to its completion and gives its data back.
pub(crate) struct Op<T: 'static> {
    core: Rc<Core>,
    key: u64,
    data: Option<T>,
    /// Called with the completion if the future is dropped before taking it.
    on_orphan: Option<OrphanHook>,
}

fn not_on_core() -> io::Error {
    io::Error::other(
        "muxado engine: I/O must run on an engine core (inside block_on or Engine::run)",
    )
}

impl<T: 'static> Op<T> {
    /// Submits the SQE `build` makes from the data, which the operation then owns.
    ///
    /// # Safety
    ///
    /// Every pointer in the SQE must point into heap memory owned by `data` (which does not move
    /// when `data` moves) or to `'static` memory, and stay valid as long as `data` is not dropped
    /// and not mutated through safe code. The engine keeps `data` alive until the final CQE.
    pub(crate) unsafe fn submit(
        mut data: T,
        build: impl FnOnce(&mut T) -> squeue::Entry,
    ) -> Result<Op<T>, (io::Error, T)> {
        let Some(core) = current() else {
            return Err((not_on_core(), data));
        };
        let sqe = build(&mut data);
        let key = {
            let mut d = core.driver.borrow_mut();
            let key = d.ops.insert(Lifecycle::Submitted(None));
            d.in_kernel += 1;
            d.push(&sqe.user_data(key));
            key
        };
        Ok(Op {
            core,
            key,
            data: Some(data),
            on_orphan: None,
        })
    }

    /// Sets what to do with the completion if this future is dropped before taking it: an
    /// accept closes the descriptor it got, so the peer does not wait on a connection nobody
    /// serves.
    pub(crate) fn on_orphan(mut self, hook: OrphanHook) -> Self {
        self.on_orphan = Some(hook);
        self
    }
}

/// Runs `f` with the core's driver (`None` outside a core).
pub(crate) fn with_driver<R>(f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    current().map(|c| f(&mut c.driver.borrow_mut()))
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = (Completion, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut d = this.core.driver.borrow_mut();
        let state = d.ops.get_mut(this.key).expect("op slot vanished");
        match state {
            Lifecycle::Completed(c) => {
                let c = *c;
                d.ops.remove(this.key);
                drop(d);
                let data = this.data.take().expect("op polled after completion");
                Poll::Ready((c, data))
            }
            Lifecycle::Submitted(w) | Lifecycle::AwaitingNotif(_, w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => unreachable!("one-shot op in a multishot state"),
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return; // Completed and consumed.
        };
        let mut d = self.core.driver.borrow_mut();
        match d.ops.get_mut(self.key) {
            Some(Lifecycle::Completed(c)) => {
                let c = *c;
                d.ops.remove(self.key);
                if let Some(hook) = self.on_orphan {
                    // SAFETY: `c` is this op's completion.
                    unsafe { hook(&c) };
                }
                if cqueue::buffer_select(c.flags).is_some() {
                    d.release_buffer(&c);
                }
            }
            Some(state @ Lifecycle::Submitted(_)) => {
                // The kernel still owns pointers into `data` (and `data` holds the socket the SQE
                // names): park it until the CQE.
                *state = Lifecycle::Ignored {
                    _data: Box::new(data),
                    on_orphan: self.on_orphan,
                };
                d.cancel(self.key);
            }
            Some(state @ Lifecycle::AwaitingNotif(..)) => {
                // The send finished but the kernel may still read `data` until the notification.
                *state = Lifecycle::Ignored {
                    _data: Box::new(data),
                    on_orphan: None,
                };
            }
            _ => {}
        }
    }
}

/// A multishot operation (e.g. multishot recv): a stream of completions.
pub(crate) struct MultiOp {
    core: Rc<Core>,
    key: u64,
    done: bool,
    /// What the SQE names (the socket): kept open until the final CQE, even if this is dropped.
    keep: Option<Rc<dyn Any>>,
}

impl MultiOp {
    /// Submits a multishot SQE.
    ///
    /// # Safety
    ///
    /// The SQE must not point into memory the caller may free (it normally points at nothing but
    /// a file descriptor and a provided-buffer group).
    pub(crate) unsafe fn submit(
        sqe: squeue::Entry,
        max_queued: usize,
        keep: Rc<dyn Any>,
    ) -> io::Result<MultiOp> {
        let core = current().ok_or_else(not_on_core)?;
        let key = {
            let mut d = core.driver.borrow_mut();
            let key = d.ops.insert(Lifecycle::Multi(MultiState {
                waker: None,
                queue: VecDeque::new(),
                finished: false,
                max_queued: max_queued.max(1),
                cancel_sent: false,
            }));
            d.in_kernel += 1;
            d.push(&sqe.user_data(key));
            key
        };
        Ok(MultiOp {
            core,
            key,
            done: false,
            keep: Some(keep),
        })
    }

    /// The next completion, or `None` once the final one was taken.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut d = self.core.driver.borrow_mut();
        let Some(Lifecycle::Multi(m)) = d.ops.get_mut(self.key) else {
            unreachable!("multishot slot vanished");
        };
        if let Some(c) = m.queue.pop_front() {
            return Poll::Ready(Some(c));
        }
        if m.finished {
            d.ops.remove(self.key);
            self.done = true;
            return Poll::Ready(None);
        }
        match &m.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => m.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for MultiOp {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut d = self.core.driver.borrow_mut();
        let Some(Lifecycle::Multi(m)) = d.ops.get_mut(self.key) else {
            return;
        };
        let queued: Vec<Completion> = m.queue.drain(..).collect();
        let finished = m.finished;
        let cancel_sent = m.cancel_sent;
        for c in &queued {
            d.release_buffer(c);
        }
        if finished {
            d.ops.remove(self.key);
        } else {
            if let Some(state) = d.ops.get_mut(self.key) {
                *state = Lifecycle::Ignored {
                    _data: Box::new(self.keep.take()),
                    on_orphan: None,
                };
            }
            if !cancel_sent {
                d.cancel(self.key);
            }
        }
    }
}

/// Whether this thread's core has provided-buffer rings; and the pool.
pub(crate) fn buf_pool() -> Option<Rc<BufPool>> {
    current().and_then(|c| c.driver.borrow().bufs.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// With the kernel refusing submissions until the CQ is drained (old kernels' EBUSY), a push
    /// onto a full SQ must not spin: the turn that drains the CQ has to run.
    #[test]
    fn push_onto_a_full_sq_does_not_spin_when_the_kernel_is_busy() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let cfg = CoreConfig {
                ring_entries: 8,
                recv_buf_count: 2,
                recv_buf_size: 4096,
                ..CoreConfig::default()
            };
            let mut d = Driver::new(&cfg, -1).expect("io_uring available");
            let nop = opcode::Nop::new().build().user_data(CANCEL_TOKEN);
            for _ in 0..8 {
                d.push(&nop);
            }
            d.submit_and_wait(false, None).unwrap();
            // Eight completions sit in the CQ; from now on the kernel says EBUSY until they go.
            d.busy_while_cq_nonempty = true;
            for _ in 0..9 {
                d.push(&nop);
            }
            let mut wakers = Vec::new();
            let mut reaped = 0;
            for _ in 0..4 {
                d.submit_and_wait(true, None).unwrap();
                let before = d.stats.cqes;
                d.drain(&mut wakers);
                reaped += d.stats.cqes - before;
            }
            let _ = tx.send(reaped);
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(reaped) => assert_eq!(reaped, 17, "every NOP completes"),
            Err(_) => panic!("push spun on EBUSY with a full SQ for 10 s"),
        }
    }
}
