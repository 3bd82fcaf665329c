//! Helpers of the tests that run the `muxado` binary as a process: a free
//! loopback port, a server process killed on drop (its stderr collected),
//! and a command run with a time limit. Used as `#[path = "common/cli.rs"]
//! mod cli;` so that test binaries without the `cli` feature (or without a
//! use for them) do not compile them.

#![allow(dead_code)] // not every test binary uses every helper

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The tool under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_muxado");

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// A server process, killed when dropped; its stderr is collected by a thread.
pub struct Server {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `muxado serve --listen <free port> <args…>` and waits (10 s at
    /// most) until it accepts connections.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, |_| {})
    }

    /// Like [`Server::start`], with `prepare` applied to the command first
    /// (a `pre_exec` hook, an environment variable).
    pub fn start_with(args: &[&str], prepare: impl FnOnce(&mut Command)) -> Server {
        let addr = free_addr();
        let mut cmd = Command::new(BIN);
        prepare(&mut cmd);
        let mut child = cmd
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start muxado serve");
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        });
        let mut server = Server {
            child,
            stderr: Some(stderr),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let stderr = server.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "muxado serve exited early: {status}; its stderr:\n{}",
                    stderr.unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "muxado serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Kills the server and returns what it printed on stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a bounded command left: success, stdout, stderr.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the command, killing it (and failing the test) if it takes longer
/// than `limit`. Both pipes are drained while it runs, so output larger than
/// a pipe buffer cannot block it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!("command timed out after {limit:?}; its stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `muxado <args…>` within `limit`.
pub fn muxado(args: &[&str], limit: Duration) -> Output {
    run_bounded(Command::new(BIN).args(args), limit)
}
