//! Blocks io_uring in this process and its children, the way Docker's and
//! containerd's default seccomp profiles do: a seccomp filter that answers
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register` with EPERM and
//! lets every other system call through. The tests of the `--driver auto`
//! fallback install it in a child's `pre_exec`; the `no_uring` example
//! installs it and execs a command (scripts/test-no-uring.sh runs the test
//! suite under it).
//!
//! The filter is written for x86_64 (its system-call numbers and audit
//! arch); elsewhere [`install`] refuses with an error saying so, and the
//! tests that need it fail loudly rather than pass untested.

#![allow(dead_code)] // not every user calls every item

use std::io;

/// Why the filter cannot be used on this machine, if it cannot.
pub fn unsupported() -> Option<&'static str> {
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        None
    } else {
        Some("the io_uring seccomp filter is written for Linux on x86_64 only")
    }
}

/// What the filter does to a process that calls io_uring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The call fails with EPERM, as under Docker's default profile.
    Eperm,
    /// The process is killed (SIGSYS): proves that a program never even
    /// tries io_uring.
    Kill,
}

/// Installs the EPERM filter; see [`install_with`].
pub fn install() -> io::Result<()> {
    install_with(Action::Eperm)
}

/// Installs the filter on the calling thread (inherited by the threads and
/// processes it creates, and kept across `execve`). Async-signal-safe: two
/// `prctl` calls and no allocation, so it may run in a `pre_exec` hook.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub fn install_with(action: Action) -> io::Result<()> {
    // Classic BPF over `struct seccomp_data { int nr; u32 arch; … }`.
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    /// System calls of the x32 ABI carry this bit; none is expected here.
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const OFF_NR: u32 = 0;
    const OFF_ARCH: u32 = 4;
    let blocked = match action {
        Action::Eperm => libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        Action::Kill => libc::SECCOMP_RET_KILL_PROCESS,
    };
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let program = [
        // 0: a foreign ABI (i386 through int 0x80) would use other numbers: kill.
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        // 3: the system-call number.
        ins(LD_W_ABS, 0, 0, OFF_NR),
        // 4: x32 calls (bit 30) get EPERM too, io_uring's among them.
        ins(JGE_K, 4, 0, X32_SYSCALL_BIT),
        ins(JEQ_K, 3, 0, libc::SYS_io_uring_setup as u32),
        ins(JEQ_K, 2, 0, libc::SYS_io_uring_enter as u32),
        ins(JEQ_K, 1, 0, libc::SYS_io_uring_register as u32),
        // 8: everything else runs.
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        // 9: io_uring: "Operation not permitted", as under Docker (or death).
        ins(RET_K, 0, 0, blocked),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers. It is required to
    // install a filter without CAP_SYS_ADMIN.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `program`, a valid BPF program of `len`
    // instructions that outlives the call; the kernel copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Elsewhere: an error saying the filter cannot be installed here.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub fn install_with(_action: Action) -> io::Result<()> {
    Err(io::Error::other(unsupported().unwrap_or("unsupported")))
}
