//! `muxado serve --heartbeat` as a process, driven by `muxado bench --connect
//! --heartbeat` (another process) and by a client built on ngrok's `muxado`
//! crate with its typed and heartbeat layers. Loopback only; every step is
//! bounded in time.
#![cfg(feature = "cli")]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_muxado");

/// A server process, killed when dropped; its stderr is collected by a thread.
struct Server {
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl Server {
    /// Kills the server and returns what it printed on stderr.
    fn stop(mut self) -> String {
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

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// `muxado serve --heartbeat --heartbeat-interval 0.05 -v` on a free port.
fn serve_heartbeat() -> (Server, SocketAddr) {
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--heartbeat",
            "--heartbeat-interval",
            "0.05",
            "-v",
        ])
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
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
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
    // Drain both pipes while the command runs (its output may exceed a pipe buffer).
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
            panic!("command timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

#[test]
fn heartbeat_serve_with_bench_and_ngrok() {
    let (server, addr) = serve_heartbeat();

    // (a) our bench client, heartbeat on, typed streams of type 1.
    let (ok, out, err) = run_bounded(
        Command::new(BIN).args([
            "bench",
            "--connect",
            &addr.to_string(),
            "--heartbeat",
            "--duration",
            "0.3",
            "--json",
        ]),
        Duration::from_secs(90),
    );
    assert!(ok, "bench --connect --heartbeat failed:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    // rpc/1, rpc/64, rpc/1024 and open/16, muxado only.
    assert_eq!(lines.len(), 4, "{out}\n{err}");
    for l in lines {
        assert!(l.starts_with('{') && l.contains("\"ops_s\":"), "{l}");
        assert!(l.contains("\"muxado\""), "{l}");
        assert!(
            !l.contains("\"ops\":0,") && !l.contains("\"ops\":0}"),
            "{l}"
        );
    }

    // (b) ngrok's typed + heartbeat layers with a 50 ms heartbeat.
    let seen: Arc<Mutex<Vec<Option<Duration>>>> = Arc::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let their_seen = seen.clone();
    let ngrok_addr = rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(30), ngrok_client(addr, their_seen))
            .await
            .expect("ngrok client finished in time")
    });
    let stderr = server.stop();

    let seen = seen.lock().unwrap().clone();
    let latencies = seen.iter().filter(|l| l.is_some()).count();
    assert!(
        latencies >= 3,
        "ngrok's heartbeat got {latencies} answers from serve: {seen:?}"
    );
    assert!(
        seen.iter().all(|l| l.is_some()),
        "ngrok's heartbeat timed out: {seen:?}"
    );
    // Our server's heartbeat toward ngrok is answered by ngrok's accept loop:
    // serve prints (with -v) the latencies of that session, named by ngrok's
    // address (bench's sessions have their own lines).
    let ngrok_latency = format!("heartbeat latency {ngrok_addr}:");
    let latency_lines = stderr
        .lines()
        .filter(|l| l.contains(&ngrok_latency))
        .count();
    assert!(
        latency_lines >= 3,
        "serve printed {latency_lines} latency lines for {ngrok_addr}:\n{stderr}"
    );
    assert!(
        !stderr.contains("heartbeat timeout"),
        "serve reported a heartbeat timeout:\n{stderr}"
    );
}

/// ngrok's client; returns its local address (how serve names the session).
async fn ngrok_client(addr: SocketAddr, seen: Arc<Mutex<Vec<Option<Duration>>>>) -> SocketAddr {
    use ngrok_muxado::heartbeat::{Heartbeat, HeartbeatConfig};
    use ngrok_muxado::typed::{StreamType, Typed, TypedAccept, TypedOpenClose};
    use ngrok_muxado::SessionBuilder;

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let session = SessionBuilder::new(tcp).client().start();
    let handler = move |lat: Option<Duration>| {
        seen.lock().unwrap().push(lat);
        async { Result::<(), Box<dyn std::error::Error>>::Ok(()) }
    };
    let (mut hb, _ctl) = Heartbeat::start(
        Typed::new(session),
        HeartbeatConfig {
            interval: Duration::from_millis(50),
            tolerance: Duration::from_secs(5),
            handler: Some(Arc::new(handler)),
        },
    )
    .await
    .expect("ngrok heartbeat started");

    // A typed stream of type 1: echoed, the type bytes not part of the data.
    let mut stream = hb
        .open_typed(StreamType::clamp(1))
        .await
        .expect("open a typed stream");

    // Keep accepting: ngrok answers our server's heartbeat stream there (and
    // our server opens no other stream).
    let accepting = tokio::spawn(async move {
        let r = hb.accept_typed().await.map(|s| *s.typ());
        (hb, r)
    });

    let msg: Vec<u8> = (0..1000u32).map(|j| (j * 7) as u8).collect();
    stream.write_all(&msg).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, msg, "echo of the typed stream");

    // Let both heartbeats run for a while (50 ms interval each way).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !accepting.is_finished(),
        "ngrok's accept returned: {:?}",
        accepting.await.map(|(_, r)| r.map_err(|e| e.to_string()))
    );
    accepting.abort();
    local
}
