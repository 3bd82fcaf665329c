//! `--driver auto|uring|tokio`, tested from outside: the `muxado` binary run
//! with io_uring blocked by a seccomp filter (EPERM, as under Docker's
//! default profile) installed in the child's `pre_exec` hook. `auto` must
//! say in one line why and which driver it chose, then serve echo and sink
//! on tokio; `uring` must fail clearly; `tokio` must never call io_uring.
//!
//! The filter is written for x86_64: elsewhere these tests fail, saying
//! they cannot run, rather than pass untested.
#![cfg(feature = "cli")]

#[path = "common/cli.rs"]
mod cli;
#[path = "common/no_uring.rs"]
mod no_uring;

use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use cli::{run_bounded, Server, BIN};
use no_uring::Action;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fails the test loudly where the filter cannot be installed.
fn require_filter() {
    if let Some(why) = no_uring::unsupported() {
        panic!("cannot run this test here: {why}");
    }
}

/// Makes `cmd` run with io_uring blocked (`action` on any io_uring call).
fn blocked(cmd: &mut Command, action: Action) {
    // SAFETY: the hook runs in the child between fork and exec; it only
    // calls prctl twice with a program on its stack (no allocation, no
    // lock), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || no_uring::install_with(action));
    }
}

/// The lines of `stderr` that speak of io_uring being unavailable.
fn fallback_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("io_uring unavailable"))
        .collect()
}

/// Echo and sink checked byte for byte with a client on the tokio driver.
fn check_echo_and_sink(echo: std::net::SocketAddr, sink: std::net::SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let work = async {
            let config = muxado::Config::default();
            let tcp = tokio::net::TcpStream::connect(echo).await.expect("connect");
            let session = muxado::tokio::Session::client(tcp, config.clone());
            let request: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
            let mut s = session.open().expect("open");
            let (mut r, mut w) = tokio::io::split(&mut s);
            let write = async {
                w.write_all(&request).await.expect("write");
                w.shutdown().await.expect("FIN");
            };
            let mut answer = Vec::new();
            let read = r.read_to_end(&mut answer);
            let (_, n) = tokio::join!(write, read);
            n.expect("read the echo");
            assert!(
                answer == request,
                "echo differs ({} bytes back)",
                answer.len()
            );
            let _ = session.close();

            let tcp = tokio::net::TcpStream::connect(sink).await.expect("connect");
            let session = muxado::tokio::Session::client(tcp, config);
            let mut s = session.open().expect("open");
            s.write_all(&request).await.expect("write");
            s.close_write().expect("FIN");
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await.expect("the sink's count");
            assert_eq!(u64::from_be_bytes(count), request.len() as u64);
            let _ = session.close();
        };
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .expect("echo and sink answered within 30 s");
    });
}

#[test]
fn auto_falls_back_to_tokio_in_one_line_and_serves() {
    require_filter();
    let echo = Server::start_with(&["--mode", "echo", "--cores", "2"], |c| {
        blocked(c, Action::Eperm)
    });
    let sink = Server::start_with(&["--mode", "sink"], |c| blocked(c, Action::Eperm));
    check_echo_and_sink(echo.addr, sink.addr);

    // The bench client on the tokio driver, itself under the filter.
    for (addr, scenario) in [(echo.addr, "rpc,open"), (sink.addr, "bulk")] {
        let mut cmd = Command::new(BIN);
        blocked(&mut cmd, Action::Eperm);
        let addr = addr.to_string();
        cmd.args(["bench", "--driver", "tokio", "--connect", &addr])
            .args(["--systems", "muxado-tokio", "--scenario", scenario])
            .args(["--streams", "1", "--duration", "0.1", "--repeat", "1"]);
        let r = run_bounded(&mut cmd, Duration::from_secs(120));
        assert!(r.ok, "bench --connect failed:\n{}", r.stderr);
        assert!(fallback_lines(&r.stderr).is_empty(), "{}", r.stderr);
        assert!(r.stdout.contains("muxado-tokio"), "{}", r.stdout);
    }

    for (name, server) in [("echo", echo), ("sink", sink)] {
        let stderr = server.stop();
        let lines = fallback_lines(&stderr);
        assert_eq!(lines.len(), 1, "{name}: one fallback line, got:\n{stderr}");
        let line = lines[0];
        assert!(line.starts_with("muxado: "), "{line}");
        assert!(line.contains("EPERM"), "the cause is named: {line}");
        assert!(line.contains("using the tokio driver"), "{line}");
    }
}

#[test]
fn uring_driver_fails_clearly_when_blocked() {
    require_filter();
    let addr = cli::free_addr().to_string();
    let runs: [&[&str]; 2] = [
        &["serve", "--driver", "uring", "--listen", &addr],
        &[
            "bench",
            "--driver",
            "uring",
            "--duration",
            "0.05",
            "--repeat",
            "1",
        ],
    ];
    for args in runs {
        let mut cmd = Command::new(BIN);
        blocked(&mut cmd, Action::Eperm);
        cmd.args(args);
        let r = run_bounded(&mut cmd, Duration::from_secs(30));
        assert!(!r.ok, "{args:?} must fail without io_uring:\n{}", r.stderr);
        let lines = fallback_lines(&r.stderr);
        assert_eq!(lines.len(), 1, "{args:?}:\n{}", r.stderr);
        assert!(lines[0].contains("EPERM"), "{}", lines[0]);
        assert!(!r.stderr.contains("using the tokio driver"), "{}", r.stderr);
    }
}

#[test]
fn tokio_driver_never_calls_io_uring() {
    require_filter();
    // Any io_uring call kills the server (SIGSYS): it must serve all the same.
    let echo = Server::start_with(&["--driver", "tokio", "--mode", "echo"], |c| {
        blocked(c, Action::Kill)
    });
    let sink = Server::start_with(&["--driver", "tokio", "--mode", "sink"], |c| {
        blocked(c, Action::Kill)
    });
    check_echo_and_sink(echo.addr, sink.addr);
    // The bench client too, under the same lethal filter.
    let mut cmd = Command::new(BIN);
    blocked(&mut cmd, Action::Kill);
    let addr = echo.addr.to_string();
    cmd.args(["bench", "--driver", "tokio", "--connect", &addr])
        .args(["--systems", "muxado-tokio", "--scenario", "rpc"])
        .args(["--streams", "1", "--duration", "0.05", "--repeat", "1"]);
    let r = run_bounded(&mut cmd, Duration::from_secs(120));
    assert!(r.ok, "bench --driver tokio under the filter:\n{}", r.stderr);
    assert!(fallback_lines(&r.stderr).is_empty(), "{}", r.stderr);
    for server in [echo, sink] {
        let stderr = server.stop();
        assert!(fallback_lines(&stderr).is_empty(), "{stderr}");
    }
}

#[test]
fn local_suite_on_the_fallback_runs_the_tokio_systems_only() {
    require_filter();
    let mut cmd = Command::new(BIN);
    blocked(&mut cmd, Action::Eperm);
    cmd.args(["bench", "--scenario", "rpc", "--streams", "1"])
        .args(["--duration", "0.03", "--repeat", "1"]);
    let r = run_bounded(&mut cmd, Duration::from_secs(300));
    assert_eq!(fallback_lines(&r.stderr).len(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("skipped the systems that need io_uring: tcp-uring, muxado, tcp-tokio-uring"),
        "{}",
        r.stderr
    );
    let ran = |system: &str| {
        r.stdout
            .lines()
            .any(|l| l.starts_with("rpc/1 ") && l.split_whitespace().nth(1) == Some(system))
    };
    for system in ["muxado-tokio", "tcp-tokio", "ngrok-muxado", "yamux"] {
        assert!(ran(system), "no row for {system}:\n{}", r.stdout);
    }
    for system in ["muxado", "tcp-uring", "tcp-tokio-uring"] {
        assert!(!ran(system), "{system} ran without io_uring:\n{}", r.stdout);
    }
    assert!(r.ok, "{}", r.stderr);
}

/// The library's probe, in a child of this test binary under the filter:
/// the error names EPERM (the cause the tool prints).
#[test]
fn library_probe_names_the_cause() {
    require_filter();
    if std::env::var_os("MUXADO_PROBE_CHILD").is_some() {
        let e = muxado::engine::probe().expect_err("io_uring is blocked here");
        let msg = e.to_string();
        assert!(msg.starts_with("io_uring unavailable"), "{msg}");
        assert!(msg.contains("EPERM"), "{msg}");
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    blocked(&mut cmd, Action::Eperm);
    cmd.args(["--exact", "library_probe_names_the_cause", "--nocapture"])
        .env("MUXADO_PROBE_CHILD", "1");
    let r = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("1 passed"), "{}", r.stdout);
}
