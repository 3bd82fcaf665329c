//! The driver of one core's ring: pushes SQEs (with a backlog when the kernel cannot take
//! them), enters the kernel once per loop turn, and reaps completions into the op table.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring};

use super::setup::{create_ring, Features};
use super::table::{Completion, Lifecycle, OpTable, CANCEL_TOKEN, TIMEOUT_TOKEN, WAKE_TOKEN};
use crate::engine::buffers::BufPool;
use crate::engine::{CoreConfig, EngineError, SendConfig, Stats};

/// The io_uring of one core plus the table of operations in flight.
///
/// Drop order matters and is spelled out in `Drop`: the provided-buffer ring is unregistered
/// first; then the fields drop in declaration order, `ring` (which closes the ring) before
/// `bufs` (whose memory the kernel wrote into).
pub(crate) struct Driver {
    ring: IoUring,
    pub(crate) ops: OpTable,
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

impl Driver {
    pub(crate) fn new(cfg: &CoreConfig, wake_fd: i32) -> Result<Driver, EngineError> {
        let (ring, mut features) = create_ring(cfg.ring_entries)?;
        let bufs = match BufPool::new(&ring.submitter(), 0, cfg.recv_buf_count, cfg.recv_buf_size) {
            Ok(pool) => {
                features.pbuf_ring = true;
                Some(Rc::new(pool))
            }
            Err(e) => {
                if crate::engine::first_time("no-pbuf-ring") {
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
            if crate::engine::first_time("no-send-zc") {
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
    pub(crate) fn push(&mut self, sqe: &squeue::Entry) {
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

    /// Starts an operation: enters it in the table as `state` and queues its SQE, whose
    /// `user_data` becomes the returned token.
    pub(crate) fn start(&mut self, state: Lifecycle, sqe: squeue::Entry) -> u64 {
        let key = self.ops.insert(state);
        self.in_kernel += 1;
        self.push(&sqe.user_data(key));
        key
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

    pub(crate) fn cancel(&mut self, token: u64) {
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

    /// Latency mode: waits for work without a system call, spinning until a completion is in the
    /// CQ, the kernel flags task work to run (with `DEFER_TASKRUN`, a receive whose data arrived
    /// is such task work: its CQE is posted only by an enter), `interrupt()` says so (the
    /// cross-core mailbox), or `until`. Returns true if there is something to do.
    ///
    /// SQEs queued by the turn are submitted first, so that the kernel works while we spin.
    pub(crate) fn spin_for_work(&mut self, until: Instant, interrupt: impl Fn() -> bool) -> bool {
        if !self.flush_backlog() {
            return true;
        }
        if !self.ring.submission().is_empty() {
            match self.submit_getevents() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => return true,
                // The next enter reports it.
                Err(_) => return true,
            }
        }
        let mut spins = 0u32;
        loop {
            if !self.ring.completion().is_empty() {
                return true;
            }
            let sq = self.ring.submission();
            if sq.taskrun() || sq.cq_overflow() {
                return true;
            }
            drop(sq);
            if interrupt() {
                return true;
            }
            spins = spins.wrapping_add(1);
            // The clock is cheap (vDSO), but not as cheap as a look at shared memory.
            if spins % 64 == 0 && Instant::now() >= until {
                self.stats.spin_timeouts += 1;
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Submits without waiting, but lets the kernel post completions that are ready.
    ///
    /// With `DEFER_TASKRUN`, completions (of receives whose data arrived, say) are task work that
    /// the kernel runs only in an enter carrying `GETEVENTS`, so a turn with runnable tasks asks
    /// for it too: otherwise a task that keeps waking itself would starve every I/O of its core.
    /// As liburing does, `GETEVENTS` is passed whenever the kernel flags pending task work
    /// (`IORING_SQ_TASKRUN`: the ring is set up with `TASKRUN_FLAG`, and the kernel sets it when it
    /// queues deferred work) or a CQ overflow. Asking for it on every busy turn instead looked
    /// slower on rpc (smaller completion batches; one noisy A/B) and gains nothing.
    fn submit_getevents(&mut self) -> io::Result<usize> {
        let sq = self.ring.submission();
        let to_submit = sq.len() as u32;
        let kernel_wants_us = sq.taskrun() || sq.cq_overflow();
        drop(sq);
        let getevents = kernel_wants_us;
        if to_submit == 0 && !kernel_wants_us {
            // Nothing to submit, and the kernel would have set the flag if task work were
            // pending.
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
        if let (Some(bid), Some(pool)) = (cqueue::buffer_select(c.flags), &self.bufs) {
            pool.note_taken(bid);
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
    pub(crate) fn release_buffer(&self, c: &Completion) {
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
