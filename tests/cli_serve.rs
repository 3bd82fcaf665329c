//! `muxado serve` as a process, driven by `muxado bench --connect` (another
//! process) and by a client built on ngrok's `muxado` crate.
#![cfg(feature = "cli")]

#[path = "common/cli.rs"]
mod cli;

use std::time::Duration;

use cli::{muxado, Server};
use ngrok_muxado::{OpenClose, SessionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn bench_connect_drives_serve() {
    let server = Server::start(&["--mode", "echo"]);
    let r = muxado(
        &[
            "bench",
            "--connect",
            &server.addr.to_string(),
            "--duration",
            "0.2",
            "--repeat",
            "1",
            "--json",
        ],
        Duration::from_secs(60),
    );
    let (out, err) = (&r.stdout, &r.stderr);
    assert!(r.ok, "bench --connect failed:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    // rpc/1, rpc/64, rpc/1024 and open/16, each with muxado and ngrok-muxado.
    assert_eq!(lines.len(), 8, "{out}\n{err}");
    for l in lines {
        assert!(l.starts_with('{') && l.contains("\"ops_s\":"), "{l}");
        assert!(
            !l.contains("\"ops\":0,") && !l.contains("\"ops\":0}"),
            "{l}"
        );
    }
}

#[test]
fn bench_connect_bulk_against_sink() {
    let server = Server::start(&["--mode", "sink"]);
    let r = muxado(
        &[
            "bench",
            "--connect",
            &server.addr.to_string(),
            "--scenario",
            "bulk",
            "--systems",
            "muxado",
            "--streams",
            "1,8",
            "--duration",
            "0.2",
            "--repeat",
            "2",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert!(r.ok, "bench --connect bulk failed:\n{}", r.stderr);
    // Two cases, two rounds each: one line per run.
    assert_eq!(r.stdout.lines().count(), 4, "{}\n{}", r.stdout, r.stderr);
    for round in ["\"round\":1,", "\"round\":2,"] {
        assert_eq!(r.stdout.matches(round).count(), 2, "{}", r.stdout);
    }
}

#[test]
fn ngrok_client_talks_to_serve() {
    let echo = Server::start(&["--mode", "echo"]);
    let sink = Server::start(&["--mode", "sink"]);
    let (echo_addr, sink_addr) = (echo.addr, sink.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            // echo: several streams of one session, each echoed and half-closed.
            let tcp = tokio::net::TcpStream::connect(echo_addr).await.unwrap();
            let mut session = SessionBuilder::new(tcp).client().start();
            for i in 0..4u8 {
                let mut stream = session.open().await.unwrap();
                let msg: Vec<u8> = (0..1000u32).map(|j| (j as u8) ^ i).collect();
                stream.write_all(&msg).await.unwrap();
                stream.shutdown().await.unwrap();
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, msg, "echo of stream {i}");
            }
            // sink: the byte count as a big-endian u64, then FIN.
            let tcp = tokio::net::TcpStream::connect(sink_addr).await.unwrap();
            let mut session = SessionBuilder::new(tcp).client().start();
            let mut stream = session.open().await.unwrap();
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..16 {
                stream.write_all(&chunk).await.unwrap();
            }
            stream.shutdown().await.unwrap();
            let mut count = Vec::new();
            stream.read_to_end(&mut count).await.unwrap();
            assert_eq!(count, (16u64 * 64 * 1024).to_be_bytes());
        })
        .await
        .expect("ngrok client finished in time");
    });
}
