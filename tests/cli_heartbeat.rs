//! `muxado serve --heartbeat` as a process, driven by `muxado bench --connect
//! --heartbeat` (another process) and by a client built on ngrok's `muxado`
//! crate with its typed and heartbeat layers. Loopback only; every step is
//! bounded in time.
#![cfg(feature = "cli")]

#[path = "common/cli.rs"]
mod cli;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cli::{muxado, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `muxado serve --heartbeat --heartbeat-interval 0.05 -v` on a free port.
fn serve_heartbeat() -> Server {
    Server::start(&["--heartbeat", "--heartbeat-interval", "0.05", "-v"])
}

#[test]
fn heartbeat_serve_with_bench_and_ngrok() {
    let server = serve_heartbeat();
    let addr = server.addr;

    // (a) our bench client, heartbeat on, typed streams of type 1.
    let r = muxado(
        &[
            "bench",
            "--connect",
            &addr.to_string(),
            "--heartbeat",
            "--duration",
            "0.3",
            "--repeat",
            "1",
            "--json",
        ],
        Duration::from_secs(90),
    );
    let (out, err) = (&r.stdout, &r.stderr);
    assert!(r.ok, "bench --connect --heartbeat failed:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    // rpc/1, rpc/64, rpc/1024 and open/16, muxado only: on the engine, or on the tokio driver
    // where io_uring is blocked (the tool says so on stderr).
    let system = if err.contains("using the tokio driver") {
        "\"system\":\"muxado-tokio\""
    } else {
        "\"system\":\"muxado\""
    };
    assert_eq!(lines.len(), 4, "{out}\n{err}");
    for l in lines {
        assert!(l.starts_with('{') && l.contains("\"ops_s\":"), "{l}");
        assert!(l.contains(system), "expected {system}: {l}\n{err}");
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
