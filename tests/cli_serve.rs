//! `muxado serve` as a process, driven by `muxado bench --connect` (another
//! process) and by a client built on ngrok's `muxado` crate.
#![cfg(feature = "cli")]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ngrok_muxado::{OpenClose, SessionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_muxado");

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

fn serve(mode: &str) -> (Server, SocketAddr) {
    let addr = free_addr();
    let child = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string(), "--mode", mode])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start muxado serve");
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("muxado serve exited early: {status}");
        }
        assert!(Instant::now() < deadline, "muxado serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, addr)
}

/// Runs the command, killing it if it takes longer than `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    (status.success(), out, err)
}

#[test]
fn bench_connect_drives_serve() {
    let (_server, addr) = serve("echo");
    let (ok, out, err) = run_bounded(
        Command::new(BIN).args([
            "bench",
            "--connect",
            &addr.to_string(),
            "--duration",
            "0.2",
            "--json",
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "bench --connect failed:\n{err}");
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
    let (_server, addr) = serve("sink");
    let (ok, out, err) = run_bounded(
        Command::new(BIN).args([
            "bench",
            "--connect",
            &addr.to_string(),
            "--scenario",
            "bulk",
            "--systems",
            "muxado",
            "--streams",
            "1,8",
            "--duration",
            "0.2",
            "--json",
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "bench --connect bulk failed:\n{err}");
    assert_eq!(out.lines().count(), 2, "{out}\n{err}");
}

#[test]
fn ngrok_client_talks_to_serve() {
    let (_echo, echo_addr) = serve("echo");
    let (_sink, sink_addr) = serve("sink");
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
