//! Helpers of the tests that run the `muxado` binary as a process: a free
//! loopback port, a server process killed on drop (its stderr collected),
//! on TCP or a Unix socket, a command run with a time limit, temp dirs, and
//! PEM certificates made at run time (rcgen), never checked in. Used as `#[path = "common/cli.rs"]
//! mod cli;` so that test binaries without the `cli` feature (or without a
//! use for them) do not compile them.

#![allow(dead_code)] // not every test binary uses every helper

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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

/// Fails the test, loudly, if io_uring cannot be set up here (probed on a
/// thread of its own: a ring torn down on the test's thread could interrupt
/// its blocking calls). `what` says what needed it.
pub fn require_uring(what: &str) {
    std::thread::spawn(muxado::engine::probe)
        .join()
        .expect("probe thread")
        .unwrap_or_else(|e| panic!("io_uring unavailable ({e}): {what} cannot run"));
}

/// A directory under the system's temp dir, removed (with its files) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "muxado-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (its own CA),
/// written as `<name>.pem` and `<name>.key` in `dir`: (certificate, key).
pub fn self_signed(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("make a certificate");
    let (cert, key) = (
        dir.path(&format!("{name}.pem")),
        dir.path(&format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("write the key");
    (cert, key)
}

/// A path as an argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A server process, killed when dropped; its stderr is collected by a thread.
pub struct Server {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    /// The TCP address it listens on (unspecified, 0.0.0.0:0, for a Unix one).
    pub addr: SocketAddr,
    /// The Unix socket path it listens on, if it does.
    pub unix: Option<PathBuf>,
}

impl Server {
    /// Starts `muxado serve --unix <path> <args…>` and waits (10 s at most)
    /// until it accepts connections on the path.
    ///
    /// A socket a server killed a moment ago left at `path` may still accept
    /// connections (its listener closes when the kernel tears that server's
    /// ring down): it is waited out first, so that readiness is the new
    /// server's.
    pub fn start_unix(path: &Path, args: &[&str]) -> Server {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(path).is_ok() {
            assert!(Instant::now() < deadline, "{path:?} is still served");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--unix", arg(path)]).args(args);
        let p = path.to_owned();
        let mut s = Server::launch(cmd, "0.0.0.0:0".parse().expect("addr"), move || {
            UnixStream::connect(&p).is_ok()
        });
        s.unix = Some(path.to_owned());
        s
    }

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
        cmd.args(["serve", "--listen", &addr.to_string()])
            .args(args);
        Server::launch(cmd, addr, move || TcpStream::connect(addr).is_ok())
    }

    /// Spawns `cmd` and waits (10 s at most) until `ready()`.
    fn launch(mut cmd: Command, addr: SocketAddr, ready: impl Fn() -> bool) -> Server {
        let mut child = cmd
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
            unix: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
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

/// `muxado bench <target…> --duration 0.15 --repeat 1 --json <extra…>`: short
/// runs against a server elsewhere, one JSON line per row, within 90 s.
pub fn bench_short(target: &[&str], extra: &[&str]) -> Output {
    let mut args = vec!["bench"];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--duration", "0.15", "--repeat", "1", "--json"]);
    args.extend_from_slice(extra);
    muxado(&args, Duration::from_secs(90))
}

/// The bench succeeded with `per_system` JSON rows for each of `systems` and
/// nothing else, every row measured against the remote server and did work.
pub fn check_rows(r: &Output, systems: &[&str], per_system: usize) {
    assert!(r.ok, "bench failed:\n{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        systems.len() * per_system,
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    for l in &lines {
        assert!(
            l.starts_with('{') && l.contains("\"placement\":\"remote\""),
            "{l}"
        );
        assert!(!l.contains("\"ops\":0,"), "a row did nothing: {l}");
    }
    for s in systems {
        let tag = format!("\"system\":\"{s}\"");
        let n = lines.iter().filter(|l| l.contains(&tag)).count();
        assert_eq!(n, per_system, "rows of {s}:\n{}", r.stdout);
    }
}
