//! `no_uring COMMAND [ARGS…]`: runs COMMAND with io_uring blocked by a
//! seccomp filter (EPERM from `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register`), as in a container under Docker's default profile.
//! A test helper, not part of the library: scripts/test-no-uring.sh uses it
//! as cargo's test runner, so that every test binary (and every process it
//! starts) runs without io_uring.

#[path = "../tests/common/no_uring.rs"]
mod no_uring;

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: no_uring COMMAND [ARGS…]");
        return ExitCode::from(2);
    };
    if let Err(e) = no_uring::install() {
        eprintln!("no_uring: cannot block io_uring: {e}");
        return ExitCode::from(125);
    }
    // Only returns on failure.
    let e = Command::new(&program).args(args).exec();
    eprintln!("no_uring: cannot run {}: {e}", program.to_string_lossy());
    ExitCode::from(127)
}
