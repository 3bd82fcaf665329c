//! SIGTERM and SIGINT, turned into a call on an ordinary thread.
//!
//! The signals are blocked in the calling thread before the engine's cores
//! are started (threads inherit the mask), and one thread waits for them with
//! `sigwait`: no handler runs in a core, and the core is told through the
//! engine's own cross-core path (`EngineHandle::spawn_on`). A second signal
//! exits at once.

use std::io;

/// Blocks SIGTERM and SIGINT in this thread (and the threads it starts next),
/// then starts a thread that calls `on_signal` with the signal's name at the
/// first one and exits the process with status 130 at the second.
pub fn watch(on_signal: impl Fn(&'static str) + Send + 'static) -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised sigset_t; pthread_sigmask only reads it.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name("muxado-signals".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and `sig` is a live c_int the call writes.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                seen += 1;
                if seen > 1 {
                    eprintln!("muxado: second signal, exiting now");
                    std::process::exit(130);
                }
                on_signal(if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                });
            }
        })?;
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}
