//! Creating a core's io_uring: the best setup flags this kernel accepts, the optional features
//! found, and the opcodes the engine cannot work without.

use std::io;

use io_uring::{opcode, IoUring, Probe};

use crate::engine::EngineError;

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
pub(crate) fn create_ring(entries: u32) -> Result<(IoUring, Features), EngineError> {
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
            if crate::engine::first_time("no-defer-taskrun") {
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
                    if crate::engine::first_time("no-coop-taskrun") {
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
    if !features.ext_arg && crate::engine::first_time("no-ext-arg") {
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
