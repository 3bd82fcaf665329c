//! `muxado serve --tls-cert/--tls-key` as a process, driven by `muxado bench
//! --connect --tls-ca` (another process), on both drivers, with certificates
//! made at run time in a temp dir; and the failures a user meets first: a
//! certificate path that does not exist, a file that holds no certificate,
//! a client that does not trust the server's CA. Every byte is checked by
//! the bench itself (echoes compared, sink counts matched).
#![cfg(feature = "cli")]

#[path = "common/cli.rs"]
mod cli;

use std::time::Duration;

use cli::{
    arg, bench_short, check_rows, muxado, require_uring, self_signed, Output, Server, TempDir,
};

/// `muxado bench --connect <server> --tls-ca <ca> --json …` with short runs.
fn bench_tls(server: &Server, ca: &std::path::Path, extra: &[&str]) -> Output {
    let addr = server.addr.to_string();
    bench_short(&["--connect", &addr, "--tls-ca", arg(ca)], extra)
}

/// Echo (rpc, open) and sink (bulk) over TLS against a server on `driver`,
/// with the clients of `client_args`.
fn echo_and_sink(driver: &str, client_args: &[&str], systems: &[&str]) {
    let dir = TempDir::new("cli-tls");
    let (cert, key) = self_signed(&dir, "server");
    let tls = ["--tls-cert", arg(&cert), "--tls-key", arg(&key)];
    let echo = Server::start(&[&["--mode", "echo", "--driver", driver][..], &tls[..]].concat());
    let mut args = vec!["--scenario", "rpc,open", "--streams", "1,8"];
    args.extend_from_slice(client_args);
    check_rows(&bench_tls(&echo, &cert, &args), systems, 2 * 2);
    let log = echo.stop();
    assert!(log.contains("(TLS)"), "the server did not say TLS:\n{log}");

    let sink = Server::start(&[&["--mode", "sink", "--driver", driver][..], &tls[..]].concat());
    let mut args = vec!["--scenario", "bulk", "--streams", "1,4"];
    args.extend_from_slice(client_args);
    check_rows(&bench_tls(&sink, &cert, &args), systems, 2);
}

#[test]
fn tls_serve_on_the_engine_with_engine_and_tokio_clients() {
    require_uring("serve --driver uring over TLS");
    echo_and_sink(
        "uring",
        &["--driver", "uring"],
        &["muxado+tls", "ngrok-muxado+tls"],
    );
    echo_and_sink(
        "uring",
        &["--driver", "tokio"],
        &["muxado-tokio+tls", "ngrok-muxado+tls"],
    );
}

#[test]
fn tls_serve_on_tokio_with_tokio_clients() {
    // No io_uring anywhere: this runs where the engine cannot.
    echo_and_sink(
        "tokio",
        &["--driver", "tokio"],
        &["muxado-tokio+tls", "ngrok-muxado+tls"],
    );
}

#[test]
fn tls_serve_on_tokio_with_engine_clients() {
    require_uring("bench --connect with the engine's TLS client");
    echo_and_sink(
        "tokio",
        &["--driver", "uring", "--systems", "muxado"],
        &["muxado+tls"],
    );
}

/// A failed start: non-zero status, no panic, and a message with all of `want`.
fn assert_clear_failure(r: &Output, want: &[&str]) {
    assert!(!r.ok, "it should have failed; stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    for w in want {
        assert!(r.stderr.contains(w), "no {w:?} in:\n{}", r.stderr);
    }
}

#[test]
fn a_missing_certificate_file_is_named() {
    let dir = TempDir::new("cli-tls-missing");
    let (_, key) = self_signed(&dir, "server");
    let missing = dir.path("nope.pem");
    for driver in ["tokio", "uring", "auto"] {
        let r = muxado(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--driver",
                driver,
                "--tls-cert",
                arg(&missing),
                "--tls-key",
                arg(&key),
            ],
            Duration::from_secs(10),
        );
        assert_clear_failure(&r, &["certificate chain", arg(&missing)]);
        // Checked before any driver is set up: the same on every driver.
        assert!(!r.stderr.contains("io_uring"), "{}", r.stderr);
    }
}

#[test]
fn a_file_without_pem_is_named() {
    let dir = TempDir::new("cli-tls-bad");
    let (cert, key) = self_signed(&dir, "server");
    let garbage = dir.path("garbage.pem");
    std::fs::write(&garbage, b"this is not PEM\n").unwrap();
    let serve = |cert: &std::path::Path, key: &std::path::Path| {
        muxado(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--driver",
                "tokio",
                "--tls-cert",
                arg(cert),
                "--tls-key",
                arg(key),
            ],
            Duration::from_secs(10),
        )
    };
    assert_clear_failure(
        &serve(&garbage, &key),
        &["no certificate chain found", arg(&garbage)],
    );
    assert_clear_failure(
        &serve(&cert, &garbage),
        &["no private key found", arg(&garbage)],
    );
    // A key that is not the certificate's.
    let (_, other_key) = self_signed(&dir, "other");
    let r = serve(&cert, &other_key);
    assert_clear_failure(&r, &["--tls-cert/--tls-key"]);
    // A missing CA file on the client side.
    let missing = dir.path("no-ca.pem");
    let r = muxado(
        &[
            "bench",
            "--connect",
            "127.0.0.1:9",
            "--tls-ca",
            arg(&missing),
            "--driver",
            "tokio",
        ],
        Duration::from_secs(10),
    );
    assert_clear_failure(&r, &["--tls-ca", arg(&missing)]);
    // --tls-key without --tls-cert is a usage error.
    let r = muxado(&["serve", "--tls-key", arg(&key)], Duration::from_secs(10));
    assert_clear_failure(&r, &["--tls-cert"]);
}

/// A client that trusts another CA fails the handshake with a message that
/// says so, exits non-zero in bounded time, and the server keeps serving.
fn wrong_ca(server_driver: &str, client_args: &[&str]) {
    let dir = TempDir::new("cli-tls-wrong-ca");
    let (cert, key) = self_signed(&dir, "server");
    let (other_ca, _) = self_signed(&dir, "other");
    let server = Server::start(&[
        "--mode",
        "echo",
        "--driver",
        server_driver,
        "--tls-cert",
        arg(&cert),
        "--tls-key",
        arg(&key),
    ]);
    let mut args = vec!["--scenario", "rpc", "--streams", "1"];
    args.extend_from_slice(client_args);
    let r = bench_tls(&server, &other_ca, &args);
    assert_clear_failure(&r, &["TLS handshake failed", "invalid peer certificate"]);
    // The right CA still works against the same server.
    let r = bench_tls(&server, &cert, &args);
    assert!(r.ok, "the right CA failed:\n{}", r.stderr);
    let log = server.stop();
    assert!(
        log.contains("TLS handshake"),
        "the server did not log the failure:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_client_with_the_wrong_ca_fails_cleanly_on_tokio() {
    wrong_ca("tokio", &["--driver", "tokio"]);
}

#[test]
fn a_client_with_the_wrong_ca_fails_cleanly_on_the_engine() {
    require_uring("serve --driver uring and the engine's TLS client");
    wrong_ca("uring", &["--driver", "uring", "--systems", "muxado"]);
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    // The certificate is for localhost and 127.0.0.1: checked against
    // another name it must not be accepted.
    let dir = TempDir::new("cli-tls-name");
    let (cert, key) = self_signed(&dir, "server");
    let server = Server::start(&[
        "--driver",
        "tokio",
        "--tls-cert",
        arg(&cert),
        "--tls-key",
        arg(&key),
    ]);
    let args = [
        "--scenario",
        "rpc",
        "--streams",
        "1",
        "--driver",
        "tokio",
        "--systems",
        "muxado-tokio",
    ];
    let r = bench_tls(
        &server,
        &cert,
        &[&args[..], &["--tls-name", "example.com"]].concat(),
    );
    assert_clear_failure(&r, &["TLS handshake failed", "not valid for name"]);
    let r = bench_tls(
        &server,
        &cert,
        &[&args[..], &["--tls-name", "localhost"]].concat(),
    );
    assert!(r.ok, "--tls-name localhost failed:\n{}", r.stderr);
}
