//! The heartbeat: interop with ngrok's `heartbeat` module in both roles
//! (latencies on both sides; a timeout reported once, within interval +
//! tolerance, re-armed by a later success), heartbeat streams hidden from every
//! accept call, on-demand beats and run-time settings.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream},
};
use muxado::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent, HEARTBEAT_TYPE};
use muxado::{Config, Error, Session, TypedSession};

const LIMIT: Duration = Duration::from_secs(5);
const INTERVAL: Duration = Duration::from_millis(20);
const TOLERANCE: Duration = Duration::from_millis(100);
/// Scheduling slack allowed on top of a deadline (debug build, 2 cores, tests in parallel).
const MARGIN: Duration = Duration::from_millis(150);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Events = Rc<RefCell<Vec<(Instant, HeartbeatEvent)>>>;

fn config() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .with_interval(INTERVAL)
        .with_tolerance(TOLERANCE)
}

fn recorder() -> (Events, impl FnMut(HeartbeatEvent) + 'static) {
    let events: Events = Rc::default();
    let sink = events.clone();
    (events, move |e| sink.borrow_mut().push((Instant::now(), e)))
}

fn count(events: &Events, f: impl Fn(&HeartbeatEvent) -> bool) -> usize {
    events.borrow().iter().filter(|(_, e)| f(e)).count()
}

fn is_latency(e: &HeartbeatEvent) -> bool {
    matches!(e, HeartbeatEvent::Latency(_))
}

fn is_timeout(e: &HeartbeatEvent) -> bool {
    *e == HeartbeatEvent::Timeout
}

/// Polls `cond` on the engine clock until it holds, or panics after `LIMIT`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        engine::sleep(Duration::from_millis(2)).await;
    }
}

/// Keeps accepting (which answers the peer's heartbeats); returns the types
/// of the application streams it got.
fn accept_loop(hb: &Heartbeat) -> Rc<RefCell<Vec<u32>>> {
    let got: Rc<RefCell<Vec<u32>>> = Rc::default();
    let (hb, sink) = (hb.clone(), got.clone());
    engine::spawn(async move {
        while let Ok(s) = hb.accept().await {
            sink.borrow_mut().push(s.stream_type());
        }
    });
    got
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
/// a typed stream of type 5; hangs up on `Cmd::Cut` or when the sender goes.
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
    use tokio::io::AsyncWriteExt;

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

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs ngrok's side in its own thread and runtime, and ours under
/// `engine::block_on` on this thread; `we_client` picks the roles.
fn with_ngrok<T, F: std::future::Future<Output = T>>(
    we_client: bool,
    accept_now: bool,
    ours: impl FnOnce(Heartbeat, Cmds, Seen) -> F,
) -> T {
    let seen: Seen = Arc::default();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    // Whoever listens tells the other its address.
    let (their_addr_tx, their_addr_rx) = mpsc::channel();
    let (our_addr_tx, our_addr_rx) = mpsc::channel();
    let their_seen = seen.clone();
    let theirs = thread::spawn(move || {
        tokio_rt().block_on(async move {
            let tcp = if we_client {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                their_addr_tx.send(listener.local_addr()?)?;
                listener.accept().await?.0
            } else {
                let addr = our_addr_rx.recv_timeout(LIMIT)?;
                tokio::net::TcpStream::connect(addr).await?
            };
            let f = ngrok_side(tcp, !we_client, accept_now, their_seen, cmd_rx);
            tokio::time::timeout(LIMIT * 2, f).await?
        })
    });
    let out = engine::block_on(async move {
        let session = if we_client {
            let addr = their_addr_rx.recv_timeout(LIMIT).unwrap();
            Session::client(TcpStream::connect(addr).await.unwrap(), Config::default())
        } else {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            our_addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let (tcp, _) = engine::timeout(LIMIT, listener.accept())
                .await
                .unwrap()
                .unwrap();
            Session::server(tcp, Config::default())
        };
        let hb = Heartbeat::new(TypedSession::new(session), config());
        let out = ours(hb.clone(), cmd_tx, seen).await;
        let _ = hb.close();
        out
    })
    .unwrap();
    theirs.join().unwrap().unwrap();
    out
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
        until("ngrok's application stream", || !got.borrow().is_empty()).await;
        // Its heartbeat stream was answered, not handed to us.
        assert_eq!(*got.borrow(), [5]);
        assert_eq!(count(&events, is_timeout), 0);
        assert!(theirs.lock().unwrap().iter().all(Option::is_some));
        for (_, e) in events.borrow().iter() {
            if let HeartbeatEvent::Latency(d) = e {
                assert!(*d < TOLERANCE, "{d:?}");
            }
        }
    });
}

#[test]
fn interop_heartbeat_latencies_we_are_client() {
    latencies_both_sides(true);
}

#[test]
fn interop_heartbeat_latencies_we_are_server() {
    latencies_both_sides(false);
}

/// ngrok's side does not accept at first, so our heartbeat stream gets no
/// responder: one timeout, within interval + tolerance. Then it accepts: the
/// pending ping is answered, which re-arms the timeout. Then it hangs up: a
/// second timeout, within interval + tolerance of the last success.
fn timeout_once_then_rearmed(we_client: bool) {
    with_ngrok(we_client, false, |hb, cmds, _theirs| async move {
        let got = accept_loop(&hb);
        let (events, cb) = recorder();
        let started = Instant::now();
        hb.start(cb).await.unwrap();
        let due = INTERVAL + TOLERANCE;
        // Stay silent for 4 timeout periods: one report only.
        engine::sleep(due * 4).await;
        {
            let ev = events.borrow();
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
        let ev = events.borrow();
        let last_ok = ev.iter().rev().find(|(_, e)| is_latency(e)).unwrap().0;
        let (at, _) = *ev.last().unwrap();
        // The timeout was armed just before the last latency was recorded.
        let after = at - last_ok + Duration::from_millis(1);
        assert!(
            after >= due && after <= due + MARGIN,
            "timeout {after:?} after the last beat"
        );
        assert!(got.borrow().iter().all(|t| *t != HEARTBEAT_TYPE));
    });
}

#[test]
fn interop_heartbeat_timeout_once_and_rearm_we_are_client() {
    timeout_once_then_rearmed(true);
}

#[test]
fn interop_heartbeat_timeout_once_and_rearm_we_are_server() {
    timeout_once_then_rearmed(false);
}

// ---- ours against ours ---------------------------------------------------------------------

/// A connected client/server session pair on this core.
async fn pair() -> (Session, Session) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = engine::spawn(async move { listener.accept().await });
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = server.await.unwrap();
    (
        Session::client(client, Config::default()),
        Session::server(server, Config::default()),
    )
}

#[test]
fn heartbeat_streams_never_reach_the_application() {
    engine::block_on(async {
        let (client, server) = pair().await;
        let client = Heartbeat::new(TypedSession::new(client), config());
        let server = Heartbeat::new(TypedSession::new(server), config());
        let (client_events, cb) = recorder();
        client.start(cb).await.unwrap();
        let (server_events, cb) = recorder();
        server.start(cb).await.unwrap();
        // Both heartbeat streams are open before any application stream.
        for t in [1, 2, 0, 0xFFFF_FFFE] {
            let mut s = client.open_typed(t).await.unwrap();
            s.write_all(b"x").await.unwrap();
        }
        assert_eq!(
            client.open_typed(HEARTBEAT_TYPE).await.unwrap_err(),
            Error::LocalReset(muxado::ErrorCode::StreamRefused)
        );
        // The client must accept too, to answer the server's heartbeats.
        let client_got = accept_loop(&client);
        let mut types = Vec::new();
        for i in 0..4 {
            let s = if i % 2 == 0 {
                engine::timeout(LIMIT, server.accept()).await
            } else {
                engine::timeout(LIMIT, server.accept_typed()).await
            };
            types.push(s.unwrap().unwrap().stream_type());
        }
        assert_eq!(types, [1, 2, 0, 0xFFFF_FFFE]);
        until("beats both ways", || {
            count(&client_events, is_latency) >= 2 && count(&server_events, is_latency) >= 2
        })
        .await;
        // Nothing else arrives on either side.
        assert!(engine::timeout(INTERVAL * 3, server.accept())
            .await
            .is_err());
        assert!(client_got.borrow().is_empty());
        client.close().unwrap();
    })
    .unwrap();
}

#[test]
fn beat_on_demand_and_settings_at_run_time() {
    engine::block_on(async {
        let (client, server) = pair().await;
        // An hour between beats: only on-demand beats at first.
        let slow = HeartbeatConfig::default()
            .with_interval(Duration::from_secs(3600))
            .with_tolerance(Duration::from_secs(3600));
        let client = Heartbeat::new(TypedSession::new(client), slow);
        assert_eq!(client.beat().await, Err(Error::StreamClosed), "not started");
        // The server is a plain typed session (it sees the heartbeat stream)
        // with a hand-made responder that can stop answering.
        let answering = Rc::new(std::cell::Cell::new(true));
        let responder = engine::spawn({
            let answering = answering.clone();
            async move {
                let typed = TypedSession::new(server);
                let mut s = typed.accept_typed().await.unwrap();
                assert_eq!(s.stream_type(), HEARTBEAT_TYPE);
                let mut ping = [0u8; 4];
                while s.read_exact(&mut ping).await.is_ok() {
                    // Paused: hold the ping; it is answered late on resume.
                    while !answering.get() {
                        engine::sleep(Duration::from_millis(2)).await;
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
            let d = engine::timeout(LIMIT, client.beat())
                .await
                .unwrap()
                .unwrap();
            assert!(d < Duration::from_secs(1), "{d:?}");
        }
        assert!(
            events.borrow().is_empty(),
            "on-demand beats don't feed the callback"
        );
        // A shorter interval applies to the pending tick at once.
        client.set_interval(INTERVAL);
        until("periodic beats", || count(&events, is_latency) >= 3).await;

        // The peer stops answering; a shorter tolerance applies to the
        // pending deadline at once.
        answering.set(false);
        engine::sleep(INTERVAL * 4).await;
        assert_eq!(count(&events, is_timeout), 0);
        let before = Instant::now();
        client.set_tolerance(TOLERANCE);
        until("the timeout", || count(&events, is_timeout) == 1).await;
        assert!(before.elapsed() <= INTERVAL + TOLERANCE + MARGIN);
        assert!(
            !client.is_closed(),
            "the heartbeat never closes the session"
        );
        // It answers again: the late echo re-arms; the next silence times out again.
        answering.set(true);
        until("re-armed by a success", || count(&events, is_latency) >= 4).await;
        engine::sleep(INTERVAL * 3).await;
        let latencies = count(&events, is_latency);
        assert!(latencies >= 5, "{latencies}");
        answering.set(false);
        until("a second timeout", || count(&events, is_timeout) == 2).await;
        client.stop();
        assert_eq!(client.beat().await, Err(Error::StreamClosed), "stopped");
        client.close().unwrap();
        responder.abort();
    })
    .unwrap();
}

/// A heartbeat on a stream type of its own: both sides configured alike beat, answer and hide
/// that type; the default heartbeat type is then an ordinary stream type.
#[test]
fn a_configured_heartbeat_stream_type_is_used_both_ways() {
    const CUSTOM: u32 = 0x4842_0001;
    engine::block_on(async {
        let (client, server) = pair().await;
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
            Error::LocalReset(muxado::ErrorCode::StreamRefused)
        );
        // Not the heartbeat type here: it reaches the application like any other.
        let mut s = client.open_typed(HEARTBEAT_TYPE).await.unwrap();
        s.write_all(b"x").await.unwrap();
        until("the ordinary stream", || {
            got.borrow().contains(&HEARTBEAT_TYPE)
        })
        .await;
        assert!(!got.borrow().contains(&CUSTOM), "{:?}", got.borrow());
        client.close().unwrap();
    })
    .expect("io_uring available");
}
