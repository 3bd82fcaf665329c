//! `muxado serve --unix PATH` as a process, driven by `muxado bench --unix
//! PATH` (another process), on both drivers, plain and over TLS; a stale
//! socket file is replaced, a live one or a regular file is refused; and
//! `serve --driver tokio --heartbeat`. Sockets live in a temp dir.
#![cfg(feature = "cli")]

#[path = "common/cli.rs"]
mod cli;

use std::time::Duration;

use cli::{
    arg, bench_short, check_rows, muxado, require_uring, self_signed, Output, Server, TempDir,
};

const LIMIT: Duration = Duration::from_secs(90);

/// One rpc stream, muxado-tokio only.
const TOKIO_RPC_1: &[&str] = &[
    "--driver",
    "tokio",
    "--systems",
    "muxado-tokio",
    "--scenario",
    "rpc",
    "--streams",
    "1",
];

/// `muxado bench --unix <path> …` with short runs, one JSON line per row.
fn bench_unix(path: &std::path::Path, extra: &[&str]) -> Output {
    bench_short(&["--unix", arg(path)], extra)
}

/// Echo (rpc, open) and sink (bulk) over a Unix socket against a server on
/// `driver` (with `server_extra`), with clients of `client_args`.
fn echo_and_sink(driver: &str, server_extra: &[&str], client_args: &[&str], systems: &[&str]) {
    let dir = TempDir::new("cli-unix");
    // A path per server: a killed engine server's socket lingers until the
    // kernel tears its ring down (the stale-socket test covers reuse).
    let path = dir.path("echo.sock");
    let echo = Server::start_unix(
        &path,
        &[&["--mode", "echo", "--driver", driver][..], server_extra].concat(),
    );
    let args = [
        &["--scenario", "rpc,open", "--streams", "1,8"][..],
        client_args,
    ]
    .concat();
    check_rows(&bench_unix(&path, &args), systems, 4);
    let log = echo.stop();
    assert!(
        log.contains("unix:"),
        "the server did not say where:\n{log}"
    );

    let path = dir.path("sink.sock");
    let sink = Server::start_unix(
        &path,
        &[&["--mode", "sink", "--driver", driver][..], server_extra].concat(),
    );
    let args = [&["--scenario", "bulk", "--streams", "1,4"][..], client_args].concat();
    let r = bench_unix(&path, &args);
    if !r.ok {
        panic!(
            "bench failed:\n{}\nthe server's stderr:\n{}",
            r.stderr,
            sink.stop()
        );
    }
    check_rows(&r, systems, 2);
    drop(sink);
}

#[test]
fn unix_serve_on_tokio_with_tokio_clients() {
    // No io_uring anywhere: this runs where the engine cannot.
    echo_and_sink(
        "tokio",
        &[],
        &["--driver", "tokio"],
        &["muxado-tokio", "ngrok-muxado"],
    );
}

#[test]
fn unix_serve_on_the_engine_with_engine_and_tokio_clients() {
    require_uring("serve --driver uring on a Unix socket");
    echo_and_sink(
        "uring",
        &[],
        &["--driver", "uring"],
        &["muxado", "ngrok-muxado"],
    );
    echo_and_sink(
        "uring",
        &[],
        &["--driver", "tokio", "--systems", "muxado-tokio"],
        &["muxado-tokio"],
    );
}

#[test]
fn tls_over_unix_on_both_drivers() {
    let dir = TempDir::new("cli-unix-tls");
    let (cert, key) = self_signed(&dir, "server");
    let tls = ["--tls-cert", arg(&cert), "--tls-key", arg(&key)];
    // The name checked is localhost by default with --unix.
    let ca = ["--tls-ca", arg(&cert)];
    echo_and_sink(
        "tokio",
        &tls,
        &[&ca[..], &["--driver", "tokio"]].concat(),
        &["muxado-tokio+tls", "ngrok-muxado+tls"],
    );
    require_uring("serve --driver uring over TLS on a Unix socket");
    echo_and_sink(
        "uring",
        &tls,
        &[&ca[..], &["--driver", "uring", "--systems", "muxado"]].concat(),
        &["muxado+tls"],
    );
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_refused() {
    let dir = TempDir::new("cli-unix-stale");
    let path = dir.path("s.sock");
    let first = Server::start_unix(&path, &["--driver", "tokio"]);
    let started = std::time::Instant::now();
    // A second server on the same live path is refused, clearly.
    let r = muxado(
        &["serve", "--unix", arg(&path), "--driver", "tokio"],
        Duration::from_secs(10),
    );
    assert!(!r.ok, "a second server took a live socket:\n{}", r.stderr);
    assert!(r.stderr.contains("already listening"), "{}", r.stderr);
    // It waited for the socket to go away (a just-killed server's may
    // linger), then gave up.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    // Killed, the server leaves its socket file; the next one replaces it.
    drop(first);
    assert!(path.exists(), "the killed server's socket file is gone");
    let second = Server::start_unix(&path, &["--driver", "tokio", "--mode", "echo"]);
    check_rows(&bench_unix(&path, TOKIO_RPC_1), &["muxado-tokio"], 1);
    drop(second);
    // A regular file at the path is never removed.
    let file = dir.path("plain-file");
    std::fs::write(&file, b"keep me").unwrap();
    let r = muxado(
        &["serve", "--unix", arg(&file), "--driver", "tokio"],
        Duration::from_secs(10),
    );
    assert!(!r.ok && r.stderr.contains("not a socket"), "{}", r.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // Nothing at the path: the client names the path and fails.
    let r = bench_unix(&dir.path("nobody.sock"), TOKIO_RPC_1);
    assert!(!r.ok && r.stderr.contains("connect"), "{}", r.stderr);
}

/// `bench --connect --heartbeat` with the clients of `client_args` against
/// a `serve --driver tokio --heartbeat`: both ends' heartbeats answered.
fn heartbeat_against_tokio(client_args: &[&str]) {
    let server = Server::start(&[
        "--driver",
        "tokio",
        "--heartbeat",
        "--heartbeat-interval",
        "0.05",
        "-v",
    ]);
    let addr = server.addr.to_string();
    let args = [
        &[
            "bench",
            "--connect",
            &addr,
            "--heartbeat",
            "--heartbeat-interval",
            "0.05",
            "--scenario",
            "rpc",
            "--streams",
            "1,8",
            "--duration",
            "0.3",
            "--repeat",
            "1",
            "--json",
            "-v",
        ][..],
        client_args,
    ]
    .concat();
    let r = muxado(&args, LIMIT);
    assert!(
        r.ok,
        "bench --heartbeat against a tokio server failed:\n{}",
        r.stderr
    );
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    // The client's heartbeat was answered by the server (-v: latencies).
    assert!(r.stderr.contains("heartbeat latency"), "{}", r.stderr);
    let log = server.stop();
    // The server's own heartbeat measured the client's answers.
    assert!(log.contains("heartbeat latency"), "{log}");
    assert!(!log.contains("heartbeat timeout"), "{log}");
}

#[test]
fn heartbeat_serve_on_tokio() {
    // The tokio driver runs the typed and heartbeat layers, server and
    // client: no io_uring needed.
    heartbeat_against_tokio(&["--driver", "tokio"]);
    // The engine's heartbeat client against it.
    require_uring("the engine's heartbeat client of bench --connect --heartbeat");
    heartbeat_against_tokio(&["--driver", "uring"]);
}
