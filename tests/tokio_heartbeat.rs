//! The heartbeat over the tokio driver (`muxado::tokio::Heartbeat`):
//! against ngrok's `heartbeat` module in both roles (latencies on both sides;
//! a timeout reported once, within interval + tolerance, re-armed by a later
//! success), against the engine's `muxado::Heartbeat` in both roles, and
//! against itself: heartbeat streams never reach accept, on-demand beats,
//! settings at run time, a frozen peer, a configured heartbeat stream type.
//! Our side runs on a two-worker runtime: the callback and tasks are `Send`.
#![cfg(feature = "tokio")]

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use muxado::heartbeat::{HeartbeatConfig, HeartbeatEvent, HEARTBEAT_TYPE};
use muxado::tokio::{Heartbeat, Session, TypedSession};
use muxado::{Config, Error, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(20);
const TOLERANCE: Duration = Duration::from_millis(100);
/// Scheduling slack allowed past a deadline (debug build, 2 cores shared by
/// tests in parallel). A timeout may never come early.
const MARGIN: Duration = Duration::from_millis(500);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Events = Arc<Mutex<Vec<(Instant, HeartbeatEvent)>>>;

fn config() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .with_interval(INTERVAL)
        .with_tolerance(TOLERANCE)
}

fn recorder() -> (Events, impl FnMut(HeartbeatEvent) + Send + 'static) {
    let events: Events = Arc::default();
    let sink = events.clone();
    (events, move |e| {
        sink.lock().unwrap().push((Instant::now(), e))
    })
}

fn count(events: &Events, f: impl Fn(&HeartbeatEvent) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|(_, e)| f(e)).count()
}

fn is_latency(e: &HeartbeatEvent) -> bool {
    matches!(e, HeartbeatEvent::Latency(_))
}

fn is_timeout(e: &HeartbeatEvent) -> bool {
    *e == HeartbeatEvent::Timeout
}

/// Polls `cond` until it holds, or panics after `LIMIT`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The application streams one side accepted: (type, the bytes it carried).
type Got = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;
/// The same, on the engine's core.
type EngineGot = std::rc::Rc<std::cell::RefCell<Vec<(u32, Vec<u8>)>>>;

/// Keeps accepting (which answers the peer's heartbeats); records the
/// application streams it gets with their first 3 bytes.
fn accept_loop(hb: &Heartbeat) -> Got {
    let got: Got = Arc::default();
    let (hb, sink) = (hb.clone(), got.clone());
    tokio::spawn(async move {
        while let Ok(mut s) = hb.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut data = [0u8; 3];
                let data = match s.read_exact(&mut data).await {
                    Ok(_) => data.to_vec(),
                    Err(_) => Vec::new(),
                };
                sink.lock().unwrap().push((s.stream_type(), data));
            });
        }
    });
    got
}

fn types(got: &Got) -> Vec<u32> {
    got.lock().unwrap().iter().map(|(t, _)| *t).collect()
}

// ---- ngrok's side --------------------------------------------------------------------------

/// What the test tells ngrok's side to do.
enum Cmd {
    /// Start accepting (that spawns its responder to our heartbeat stream).
    Accept,
    /// Hang up: the session and its transport go.
    Cut,
}

type Cmds = tokio::sync::mpsc::UnboundedSender<Cmd>;
type Seen = Arc<Mutex<Vec<Option<Duration>>>>;

/// ngrok's side: `Heartbeat::start(Typed::new(session))` with a 20 ms interval,
/// its latencies counted in `seen`; accepts at once or on `Cmd::Accept`; opens
/// a typed stream of type 5 carrying "app"; hangs up on `Cmd::Cut` or when
/// the sender goes.
async fn ngrok_side(
    tcp: tokio::net::TcpStream,
    client: bool,
    accept_now: bool,
    seen: Seen,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<Cmd>,
) -> Result<(), BoxError> {
    use ngrok_muxado::heartbeat::{Heartbeat as NgrokHeartbeat, HeartbeatConfig as NgrokConfig};
    use ngrok_muxado::typed::{StreamType, Typed, TypedAccept, TypedOpenClose};
    use ngrok_muxado::{MuxadoSession, SessionBuilder};

    let builder = SessionBuilder::new(tcp);
    let builder = if client {
        builder.client()
    } else {
        builder.server()
    };
    let handler = move |lat: Option<Duration>| {
        seen.lock().unwrap().push(lat);
        async { Result::<(), Box<dyn std::error::Error>>::Ok(()) }
    };
    let (mut hb, _ctl) = NgrokHeartbeat::start(
        Typed::new(builder.start()),
        NgrokConfig {
            interval: INTERVAL,
            tolerance: Duration::from_secs(1),
            handler: Some(Arc::new(handler)),
        },
    )
    .await?;
    let mut app = hb.open_typed(StreamType::clamp(5)).await?;
    app.write_all(b"app").await?;
    // Our heartbeat stream is answered inside accept_typed; nothing else comes.
    let start_accepting = |mut hb: NgrokHeartbeat<Typed<MuxadoSession>>| {
        tokio::spawn(async move { hb.accept_typed().await.map(|s| *s.typ()) })
    };
    let mut hb = Some(hb);
    let mut accepting = None;
    if accept_now {
        accepting = hb.take().map(start_accepting);
    }
    while let Some(Cmd::Accept) = cmds.recv().await {
        accepting = accepting.or_else(|| hb.take().map(start_accepting));
    }
    if let Some(task) = accepting {
        if !task.is_finished() {
            task.abort();
        } else if let Ok(t) = task.await? {
            return Err(format!("ngrok accepted an application stream of type {t}").into());
        }
    }
    Ok(())
}

fn std_listener() -> (StdListener, SocketAddr) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn tokio_tcp(listener: Option<StdListener>, addr: SocketAddr) -> tokio::net::TcpStream {
    let tcp = match listener {
        Some(l) => {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            // Bounded: if the engine side could not start (io_uring
            // blocked), its panic is the failure, not a hang here.
            tokio::time::timeout(LIMIT, l.accept())
                .await
                .expect("the engine side connects within the limit")
                .unwrap()
                .0
        }
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Runs ngrok's side in its own thread and runtime, and ours on a
/// two-worker runtime on this thread; `we_client` picks the roles.
fn with_ngrok<F: Future<Output = ()> + Send + 'static>(
    we_client: bool,
    accept_now: bool,
    ours: impl FnOnce(Heartbeat, Cmds, Seen) -> F,
) {
    let seen: Seen = Arc::default();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let (listener, addr) = std_listener();
    let (our_l, their_l) = if we_client {
        (None, Some(listener))
    } else {
        (Some(listener), None)
    };
    let their_seen = seen.clone();
    let theirs = thread::spawn(move || {
        tokio_rt().block_on(async move {
            let tcp = tokio_tcp(their_l, addr).await;
            let f = ngrok_side(tcp, !we_client, accept_now, their_seen, cmd_rx);
            tokio::time::timeout(LIMIT * 2, f).await?
        })
    });
    tokio_rt().block_on(async move {
        let tcp = tokio_tcp(our_l, addr).await;
        let session = if we_client {
            Session::client(tcp, Config::default())
        } else {
            Session::server(tcp, Config::default())
        };
        let hb = Heartbeat::new(TypedSession::new(session), config());
        // Our side runs as a spawned task: its futures must be Send.
        let task = tokio::spawn(ours(hb.clone(), cmd_tx, seen));
        tokio::time::timeout(LIMIT * 2, task)
            .await
            .expect("our side within the limit")
            .unwrap();
        let _ = hb.close();
    });
    theirs.join().unwrap().unwrap();
}

fn latencies_both_sides(we_client: bool) {
    with_ngrok(we_client, true, |hb, cmds, theirs| async move {
        let _hold = cmds; // ngrok's side hangs up when this goes
        let got = accept_loop(&hb);
        let (events, cb) = recorder();
        hb.start(cb).await.unwrap();
        until("3 latencies on each side", || {
            count(&events, is_latency) >= 3 && theirs.lock().unwrap().iter().flatten().count() >= 3
        })
        .await;
        until("ngrok's application stream", || {
            !got.lock().unwrap().is_empty()
        })
        .await;
        // Its heartbeat stream was answered, not handed to us.
        assert_eq!(*got.lock().unwrap(), [(5, b"app".to_vec())]);
        assert_eq!(count(&events, is_timeout), 0);
        assert!(theirs.lock().unwrap().iter().all(Option::is_some));
        for (_, e) in events.lock().unwrap().iter() {
            if let HeartbeatEvent::Latency(d) = e {
                assert!(*d < TOLERANCE + MARGIN, "{d:?}");
            }
        }
        let d = hb.beat().await.expect("an on-demand beat");
        assert!(d < LIMIT, "{d:?}");
    });
}

#[test]
fn interop_ngrok_latencies_tokio_is_client() {
    latencies_both_sides(true);
}

#[test]
fn interop_ngrok_latencies_tokio_is_server() {
    latencies_both_sides(false);
}

/// ngrok's side does not accept at first, so our heartbeat stream gets no
/// responder (a frozen peer, as far as the heartbeat can tell): one timeout,
/// within interval + tolerance. Then it accepts: the pending ping is
/// answered, which re-arms the timeout. Then it hangs up: a second timeout,
/// within interval + tolerance of the last success.
fn timeout_once_then_rearmed(we_client: bool) {
    with_ngrok(we_client, false, |hb, cmds, _theirs| async move {
        let got = accept_loop(&hb);
        let (events, cb) = recorder();
        let started = Instant::now();
        hb.start(cb).await.unwrap();
        let due = INTERVAL + TOLERANCE;
        // Stay silent for 4 timeout periods: one report only.
        tokio::time::sleep(due * 4).await;
        {
            let ev = events.lock().unwrap();
            assert_eq!(ev.len(), 1, "{ev:?}");
            let (at, e) = ev[0];
            assert_eq!(e, HeartbeatEvent::Timeout);
            let after = at - started;
            assert!(
                after >= due && after <= due + MARGIN,
                "timeout after {after:?}"
            );
        }
        assert!(!hb.is_closed(), "the heartbeat never closes the session");
        assert_eq!(hb.beat().await, Err(Error::Timeout("heartbeat")));

        cmds.send(Cmd::Accept).unwrap();
        until("latencies after the peer answers", || {
            count(&events, is_latency) >= 3
        })
        .await;
        assert_eq!(count(&events, is_timeout), 1);
        assert!(hb.beat().await.is_ok());

        cmds.send(Cmd::Cut).unwrap();
        until("the second timeout", || count(&events, is_timeout) == 2).await;
        let ev = events.lock().unwrap();
        let last_ok = ev.iter().rev().find(|(_, e)| is_latency(e)).unwrap().0;
        let (at, _) = *ev.last().unwrap();
        // The timeout was armed just before the last latency was recorded.
        let after = at - last_ok + Duration::from_millis(1);
        assert!(
            after >= due && after <= due + MARGIN,
            "timeout {after:?} after the last beat"
        );
        assert!(types(&got).iter().all(|t| *t != HEARTBEAT_TYPE));
    });
}

#[test]
fn interop_ngrok_timeout_once_and_rearm_tokio_is_client() {
    timeout_once_then_rearmed(true);
}

#[test]
fn interop_ngrok_timeout_once_and_rearm_tokio_is_server() {
    timeout_once_then_rearmed(false);
}

// ---- against the engine's heartbeat ---------------------------------------------------------

/// Both sides accept, open one application stream (tokio: type 5 "tok",
/// engine: type 6 "eng"), and start a heartbeat once the other's stream has
/// arrived (so both answer beats). Each sees its own latencies,
/// no timeout, and exactly the other's application stream; then the client
/// closes.
fn vs_engine(tokio_is_client: bool) {
    // The engine side runs on a thread of its own: say why it cannot run
    // here rather than fail on a closed channel or a missing peer.
    muxado::engine::probe().expect("io_uring available");
    use muxado::engine::{self, net};
    use std::cell::RefCell;
    use std::rc::Rc;

    let tokio_ok = Arc::new(AtomicBool::new(false));
    let engine_ok = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (tokio_listener, engine_addr) = if tokio_is_client {
        (None, None)
    } else {
        let (l, a) = std_listener();
        (Some(l), Some(a))
    };
    let (t_ok, e_ok) = (tokio_ok.clone(), engine_ok.clone());
    let theirs = thread::spawn(move || {
        engine::block_on(async move {
            let tcp = match engine_addr {
                Some(addr) => net::TcpStream::connect(addr).await.unwrap(),
                None => {
                    let l = net::TcpListener::bind("127.0.0.1:0").unwrap();
                    addr_tx.send(l.local_addr().unwrap()).unwrap();
                    engine::timeout(LIMIT, l.accept()).await.unwrap().unwrap().0
                }
            };
            let session = if tokio_is_client {
                muxado::Session::server(tcp, Config::default())
            } else {
                muxado::Session::client(tcp, Config::default())
            };
            let hb = muxado::Heartbeat::new(muxado::TypedSession::new(session), config());
            let got: EngineGot = Rc::default();
            engine::spawn({
                let (hb, got) = (hb.clone(), got.clone());
                async move {
                    while let Ok(mut s) = hb.accept().await {
                        let mut data = [0u8; 3];
                        if s.read_exact(&mut data).await.is_ok() {
                            got.borrow_mut().push((s.stream_type(), data.to_vec()));
                        }
                    }
                }
            });
            let mut app = hb.open_typed(6).await.unwrap();
            app.write_all(b"eng").await.unwrap();
            let start = Instant::now();
            // Beat once the peer accepts (its stream arrived): a beat sent
            // earlier could time out on a loaded machine.
            while got.borrow().is_empty() {
                assert!(start.elapsed() < LIMIT, "the tokio side's stream");
                engine::sleep(Duration::from_millis(2)).await;
            }
            let events: Rc<RefCell<Vec<HeartbeatEvent>>> = Rc::default();
            let sink = events.clone();
            hb.start(move |e| sink.borrow_mut().push(e)).await.unwrap();
            let latencies = || events.borrow().iter().filter(|e| is_latency(e)).count();
            while latencies() < 3 || got.borrow().is_empty() {
                assert!(start.elapsed() < LIMIT, "engine: {:?}", events.borrow());
                engine::sleep(Duration::from_millis(2)).await;
            }
            let d = engine::timeout(LIMIT, hb.beat()).await.unwrap().unwrap();
            assert!(d < LIMIT);
            assert_eq!(*got.borrow(), [(5, b"tok".to_vec())]);
            assert!(
                !events.borrow().iter().any(is_timeout),
                "{:?}",
                events.borrow()
            );
            e_ok.store(true, Ordering::SeqCst);
            while !t_ok.load(Ordering::SeqCst) {
                assert!(start.elapsed() < LIMIT, "the tokio side's checks");
                engine::sleep(Duration::from_millis(2)).await;
            }
            if !tokio_is_client {
                hb.close().unwrap();
            }
            engine::timeout(LIMIT, hb.wait()).await.unwrap();
            // Nothing but the application stream reached the engine's accept.
            assert_eq!(got.borrow().len(), 1);
        })
        .expect("io_uring available")
    });
    tokio_rt().block_on(async move {
        let addr = match &tokio_listener {
            Some(l) => l.local_addr().unwrap(),
            None => addr_rx.recv_timeout(LIMIT).unwrap(),
        };
        let tcp = tokio_tcp(tokio_listener, addr).await;
        let session = if tokio_is_client {
            Session::client(tcp, Config::default())
        } else {
            Session::server(tcp, Config::default())
        };
        let hb = Heartbeat::new(TypedSession::new(session), config());
        let task = tokio::spawn(async move {
            let got = accept_loop(&hb);
            let mut app = hb.open_typed(5).await.unwrap();
            app.write_all(b"tok").await.unwrap();
            until("the engine's stream", || !got.lock().unwrap().is_empty()).await;
            let (events, cb) = recorder();
            hb.start(cb).await.unwrap();
            until("latencies and the engine's stream", || {
                count(&events, is_latency) >= 3 && !got.lock().unwrap().is_empty()
            })
            .await;
            assert!(hb.beat().await.is_ok());
            assert_eq!(*got.lock().unwrap(), [(6, b"eng".to_vec())]);
            assert_eq!(count(&events, is_timeout), 0);
            tokio_ok.store(true, Ordering::SeqCst);
            until("the engine side's checks", || {
                engine_ok.load(Ordering::SeqCst)
            })
            .await;
            if tokio_is_client {
                hb.close().unwrap();
            }
            hb.wait().await;
            assert_eq!(got.lock().unwrap().len(), 1);
        });
        tokio::time::timeout(LIMIT * 2, task)
            .await
            .expect("the tokio side within the limit")
            .unwrap();
    });
    theirs.join().unwrap();
}

#[test]
fn vs_engine_tokio_is_client() {
    vs_engine(true);
}

#[test]
fn vs_engine_tokio_is_server() {
    vs_engine(false);
}

// ---- against itself -------------------------------------------------------------------------

/// A connected client/server session pair over an in-memory duplex.
fn pair() -> (Session, Session) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Session::client(a, Config::default()),
        Session::server(b, Config::default()),
    )
}

#[test]
fn heartbeat_streams_never_reach_accept() {
    tokio_rt().block_on(async {
        let (client, server) = pair();
        let client = Heartbeat::new(TypedSession::new(client), config());
        let server = Heartbeat::new(TypedSession::new(server), config());
        let (client_events, cb) = recorder();
        client.start(cb).await.unwrap();
        let (server_events, cb) = recorder();
        server.start(cb).await.unwrap();
        // Both heartbeat streams are open before any application stream.
        for t in [1, 2, 0, 0xFFFF_FFFE] {
            let mut s = client.open_typed(t).await.unwrap();
            s.write_all(&t.to_le_bytes()[..3]).await.unwrap();
        }
        assert_eq!(
            client.open_typed(HEARTBEAT_TYPE).await.unwrap_err(),
            Error::LocalReset(ErrorCode::StreamRefused)
        );
        // The client must accept too, to answer the server's heartbeats.
        let client_got = accept_loop(&client);
        let mut got = Vec::new();
        for i in 0..4 {
            let s = if i % 2 == 0 {
                tokio::time::timeout(LIMIT, server.accept()).await
            } else {
                tokio::time::timeout(LIMIT, server.accept_typed()).await
            };
            let mut s = s.unwrap().unwrap();
            let mut data = [0u8; 3];
            s.read_exact(&mut data).await.unwrap();
            let t = s.stream_type();
            assert_eq!(data, t.to_le_bytes()[..3]);
            got.push(t);
        }
        assert_eq!(got, [1, 2, 0, 0xFFFF_FFFE]);
        until("beats both ways", || {
            count(&client_events, is_latency) >= 2 && count(&server_events, is_latency) >= 2
        })
        .await;
        // Nothing else arrives on either side.
        assert!(tokio::time::timeout(INTERVAL * 3, server.accept())
            .await
            .is_err());
        assert!(client_got.lock().unwrap().is_empty());
        client.close().unwrap();
        tokio::time::timeout(LIMIT, server.wait()).await.unwrap();
    });
}

/// The peer is a plain typed session with a hand-made responder that can
/// freeze (hold the pings it reads); on-demand beats and run-time settings.
#[test]
fn a_frozen_peer_times_out_once_then_rearms_and_beats_on_demand() {
    tokio_rt().block_on(async {
        let (client, server) = pair();
        // An hour between beats: only on-demand beats at first.
        let slow = HeartbeatConfig::default()
            .with_interval(Duration::from_secs(3600))
            .with_tolerance(Duration::from_secs(3600));
        let client = Heartbeat::new(TypedSession::new(client), slow);
        assert_eq!(client.beat().await, Err(Error::StreamClosed), "not started");
        let answering = Arc::new(AtomicBool::new(true));
        let pings = Arc::new(Mutex::new(Vec::<[u8; 4]>::new()));
        let responder = tokio::spawn({
            let (answering, pings) = (answering.clone(), pings.clone());
            async move {
                let typed = TypedSession::new(server);
                let mut s = typed.accept_typed().await.unwrap();
                assert_eq!(s.stream_type(), HEARTBEAT_TYPE);
                let mut ping = [0u8; 4];
                while s.read_exact(&mut ping).await.is_ok() {
                    pings.lock().unwrap().push(ping);
                    // Frozen: hold the ping; it is answered late on resume.
                    while !answering.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if s.write_all(&ping).await.is_err() {
                        return;
                    }
                }
            }
        });
        let (events, cb) = recorder();
        client.start(cb).await.unwrap();
        for _ in 0..3 {
            let d = tokio::time::timeout(LIMIT, client.beat())
                .await
                .unwrap()
                .unwrap();
            assert!(d < LIMIT, "{d:?}");
        }
        assert!(
            events.lock().unwrap().is_empty(),
            "on-demand beats don't feed the callback"
        );
        // A shorter interval applies to the pending tick at once.
        client.set_interval(INTERVAL);
        assert_eq!(client.interval(), INTERVAL);
        until("periodic beats", || count(&events, is_latency) >= 3).await;
        {
            // Random values, not a counter or a constant.
            let p = pings.lock().unwrap();
            let distinct: std::collections::HashSet<_> = p.iter().collect();
            assert!(distinct.len() >= p.len() - 1, "{p:02x?}");
        }

        // The peer freezes; a shorter tolerance applies to the pending
        // deadline at once.
        answering.store(false, Ordering::SeqCst);
        tokio::time::sleep(INTERVAL * 4).await;
        assert_eq!(count(&events, is_timeout), 0);
        let before = Instant::now();
        client.set_tolerance(TOLERANCE);
        assert_eq!(client.tolerance(), TOLERANCE);
        until("the timeout", || count(&events, is_timeout) == 1).await;
        assert!(before.elapsed() <= INTERVAL + TOLERANCE + MARGIN);
        // Reported once per silence.
        tokio::time::sleep((INTERVAL + TOLERANCE) * 3).await;
        assert_eq!(count(&events, is_timeout), 1);
        assert!(
            !client.is_closed(),
            "the heartbeat never closes the session"
        );
        // It answers again: the late echo re-arms; the next silence times out again.
        let latencies = count(&events, is_latency);
        answering.store(true, Ordering::SeqCst);
        until("re-armed by a success", || {
            count(&events, is_latency) > latencies
        })
        .await;
        answering.store(false, Ordering::SeqCst);
        until("a second timeout", || count(&events, is_timeout) == 2).await;
        client.stop();
        assert_eq!(client.beat().await, Err(Error::StreamClosed), "stopped");
        let after_stop = events.lock().unwrap().len();
        answering.store(true, Ordering::SeqCst);
        tokio::time::sleep((INTERVAL + TOLERANCE) * 2).await;
        assert_eq!(
            events.lock().unwrap().len(),
            after_stop,
            "stopped: no reports"
        );
        // Stopping closed the heartbeat stream: the responder ends, and with
        // it the peer's session (its last handle), hence ours.
        tokio::time::timeout(LIMIT, responder)
            .await
            .expect("the responder ends")
            .unwrap();
        tokio::time::timeout(LIMIT, client.wait()).await.unwrap();
    });
}

/// A heartbeat on a stream type of its own: both sides configured alike
/// beat, answer and hide that type; the default heartbeat type is then an
/// ordinary stream type.
#[test]
fn a_configured_heartbeat_stream_type_is_used_both_ways() {
    const CUSTOM: u32 = 0x4842_0001;
    tokio_rt().block_on(async {
        let (client, server) = pair();
        let config = config().with_stream_type(CUSTOM);
        let client = Heartbeat::new(TypedSession::new(client), config);
        let server = Heartbeat::new(TypedSession::new(server), config);
        let got = accept_loop(&server);
        let (events, on_event) = recorder();
        client.start(on_event).await.unwrap();
        until("periodic latencies", || count(&events, is_latency) >= 3).await;
        assert_eq!(count(&events, is_timeout), 0);
        assert!(client.beat().await.is_ok());

        assert_eq!(
            client.open_typed(CUSTOM).await.unwrap_err(),
            Error::LocalReset(ErrorCode::StreamRefused)
        );
        // Not the heartbeat type here: it reaches the application like any other.
        let mut s = client.open_typed(HEARTBEAT_TYPE).await.unwrap();
        s.write_all(b"xyz").await.unwrap();
        until("the ordinary stream", || !got.lock().unwrap().is_empty()).await;
        assert_eq!(*got.lock().unwrap(), [(HEARTBEAT_TYPE, b"xyz".to_vec())]);
        client.close().unwrap();
    });
}

/// Dropping every handle stops the heartbeat's tasks, which release their
/// streams: the session then closes by itself.
#[test]
fn dropping_the_heartbeat_releases_the_session() {
    tokio_rt().block_on(async {
        let (client, server) = pair();
        let watcher = client.clone();
        let client = Heartbeat::new(TypedSession::new(client), config());
        let server = Heartbeat::new(TypedSession::new(server), config());
        let _got = accept_loop(&server);
        let (events, cb) = recorder();
        client.start(cb).await.unwrap();
        until("a latency", || count(&events, is_latency) >= 1).await;
        drop(client);
        assert!(!watcher.is_closed(), "a session handle keeps it open");
        // The last handle goes; the heartbeat's stream must go with its task.
        drop(watcher);
        tokio::time::timeout(LIMIT, server.wait())
            .await
            .expect("the session closes once every handle and task is gone");
    });
}

// ---- a frozen raw peer, byte by byte --------------------------------------------------------

/// Reads one frame: (type, flags, stream id, payload).
fn read_frame(tcp: &mut std::net::TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    use std::io::Read;
    let mut h = [0u8; 8];
    tcp.read_exact(&mut h)?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let id = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload)?;
    Ok((h[3] >> 4, h[3] & 0xF, id, payload))
}

/// A raw peer that checks the heartbeat stream's open, then stays frozen
/// (reads nothing, answers nothing) until told to answer one ping; the ping
/// must be a 4-byte DATA frame on the heartbeat stream, and its echo is the
/// same 4 bytes in a DATA frame back.
#[test]
fn a_frozen_raw_peer_times_out_once_and_one_late_echo_rearms() {
    use std::io::{Read, Write};
    let (listener, addr) = std_listener();
    listener.set_nonblocking(false).unwrap();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(LIMIT)).unwrap();
        let open = read_frame(&mut tcp).unwrap();
        assert_eq!(
            open,
            (1, 0x2, 3, vec![0xFF; 4]),
            "the heartbeat's SYN frame"
        );
        let mut echoed = Vec::new();
        // Each message: answer the next ping once.
        while answer_rx.recv().is_ok() {
            let ping = loop {
                let f = read_frame(&mut tcp).unwrap();
                if f.0 == 1 && f.2 == 3 {
                    break f;
                }
            };
            assert_eq!((ping.1, ping.3.len()), (0, 4), "a ping: 4 bytes, no flags");
            let mut echo = vec![0, 0, 4, 0x10, 0, 0, 0, 3];
            echo.extend_from_slice(&ping.3);
            tcp.write_all(&echo).unwrap();
            echoed.push(ping.3);
        }
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        echoed
    });
    tokio_rt().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let hb = Heartbeat::new(
            TypedSession::new(Session::client(tcp, Config::default())),
            config(),
        );
        let (events, cb) = recorder();
        let started = Instant::now();
        hb.start(cb).await.unwrap();
        let due = INTERVAL + TOLERANCE;
        // Frozen for 4 timeout periods: one report, not before it is due.
        tokio::time::sleep(due * 4).await;
        {
            let ev = events.lock().unwrap();
            assert_eq!(ev.len(), 1, "{ev:?}");
            assert_eq!(ev[0].1, HeartbeatEvent::Timeout);
            let after = ev[0].0 - started;
            assert!(after >= due && after <= due + MARGIN, "{after:?}");
        }
        // One late echo: a latency as long as the freeze, and the timeout re-armed.
        answer_tx.send(()).unwrap();
        until("the late echo", || count(&events, is_latency) == 1).await;
        let (latency_at, latency) = {
            let ev = events.lock().unwrap();
            match ev[1] {
                (at, HeartbeatEvent::Latency(d)) => (at, d),
                e => panic!("{e:?}"),
            }
        };
        // The ping went out about one interval after the start and waited
        // through the freeze (4 timeout periods).
        assert!(latency >= due * 3, "{latency:?}");
        assert!(latency <= latency_at - started, "{latency:?}");
        // Frozen again: the next ping goes unanswered; a second timeout,
        // due after the late success, not before.
        until("a second timeout", || count(&events, is_timeout) == 2).await;
        let ev = events.lock().unwrap().clone();
        let after = ev.last().unwrap().0 - latency_at + Duration::from_millis(1);
        assert!(after >= due && after <= due + MARGIN, "{after:?} {ev:?}");
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(!hb.is_closed(), "the heartbeat never closes the session");
        drop(answer_tx);
        hb.close().unwrap();
    });
    let echoed = peer.join().unwrap();
    assert_eq!(echoed.len(), 1);
}
