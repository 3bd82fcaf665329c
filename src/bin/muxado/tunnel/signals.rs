//! SIGTERM and SIGINT, turned into a call on an ordinary thread.
//!
//! The signals are blocked in the calling thread before the engine's cores
//! are started (threads inherit the mask), and one thread waits for them with
//! `sigwait`: no handler runs in a core, and the core is told through the
//! engine's own cross-core path (`EngineHandle::spawn_on`). A second signal
//! exits at once.

use std::io;

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGTERM and SIGINT in this thread (and the threads it starts next),
/// then starts a thread that calls `on_signal` with the signal's name at the
/// first one and exits the process with status 130 at the second.
pub fn watch(on_signal: impl Fn(&'static str) + Send + 'static) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("muxado-signals".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                let Ok(sig) = set.wait() else { continue };
                seen += 1;
                if seen > 1 {
                    eprintln!("muxado: second signal, exiting now");
                    std::process::exit(130);
                }
                on_signal(if sig == Signal::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                });
            }
        })?;
    Ok(())
}
