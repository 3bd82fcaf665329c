//! `muxado agent`: keeps sessions to the gateway and splices every stream the
//! gateway opens to the service's local origin.
//!
//! Each engine core keeps one session (connect, authenticate on the control
//! stream, heartbeat, accept streams) and serves its streams on that core.
//! A session that ends is dialed again after an exponential, jittered
//! backoff; a refused token stops the agent (retrying cannot help). When the
//! gateway has several cores, the agent redials a session that landed on a
//! gateway core another of its sessions already covers while some core has
//! none (a few times), so that every gateway core can serve connections.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::Duration;

use muxado::engine::{self, net::TcpStream, EngineHandle};
use muxado::heartbeat::{Heartbeat, HeartbeatEvent};
use muxado::typed::{TypedSession, TypedStream};
use muxado::{ErrorCode, Session, Stream};
use tracing::{debug, info, warn};

use super::args::AgentOptions;
use super::backoff::Backoff;
use super::gateway::tunnel_config;
use super::proxy_protocol;
use super::signals;
use super::splice::splice;
use super::wire::{ConnHeader, Hello, Reply, Status, CONTROL_TYPE, NOTICE_DRAIN};

/// Bound on connecting to the gateway or an origin, and on the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Redials tried to land on an uncovered gateway core before settling.
const COVERAGE_TRIES: u32 = 16;

/// A forwarded service, as agreed with the gateway.
struct Service {
    name: String,
    stream_type: u32,
    origin: SocketAddr,
}

/// Origins are resolved once, at start: no name lookup on the hot path.
pub fn resolve_origins(opts: &AgentOptions) -> Result<Vec<SocketAddr>, String> {
    let mut origins = Vec::new();
    for (name, addr) in &opts.services {
        let a = addr
            .to_socket_addrs()
            .map_err(|e| format!("--forward {name}={addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("--forward {name}={addr}: resolves to nothing"))?;
        origins.push(a);
    }
    Ok(origins)
}

pub fn run(opts: AgentOptions, origins: Vec<SocketAddr>) -> Result<(), String> {
    let handle: Arc<OnceLock<EngineHandle>> = Arc::new(OnceLock::new());
    let for_signals = handle.clone();
    signals::watch(move |name| {
        info!("{name}: closing the sessions and exiting");
        if for_signals.get().is_none() {
            std::process::exit(0);
        }
        stop_all(&for_signals);
    })
    .map_err(|e| format!("signal watcher: {e}"))?;
    let engine = muxado::Engine::builder()
        .cores(opts.cores)
        .build()
        .map_err(|e| e.to_string())?;
    let _ = handle.set(engine.handle());
    let opts = Arc::new(opts);
    let origins = Arc::new(origins);
    let coverage = Arc::new(Mutex::new(Vec::<usize>::new()));
    let results = engine
        .run(move |index| {
            let (opts, origins, coverage, handle) = (
                opts.clone(),
                origins.clone(),
                coverage.clone(),
                handle.clone(),
            );
            async move {
                let r = agent_core(index, opts, origins, coverage).await;
                if r.is_err() {
                    stop_all(&handle);
                }
                r
            }
        })
        .map_err(|e| e.to_string())?;
    let mut first_err = None;
    for r in results {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn stop_all(handle: &OnceLock<EngineHandle>) {
    if let Some(h) = handle.get() {
        for core in 0..h.cores() {
            let _ = h.spawn_on(core, || async { request_stop() });
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<AgentCore>>> = const { RefCell::new(None) };
}

fn request_stop() {
    if let Some(core) = CURRENT.with(|c| c.borrow().clone()) {
        core.stopping.set(true);
        if let Some(s) = core.session.borrow().as_ref() {
            let _ = s.close();
        }
        core.notify();
    }
}

/// One core's agent state.
struct AgentCore {
    stopping: Cell<bool>,
    /// The gateway said it drains: dial a new session, let the old one finish.
    redial: Cell<bool>,
    session: RefCell<Option<Session>>,
    wakers: RefCell<Vec<Waker>>,
}

impl AgentCore {
    fn notify(&self) {
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// How one session attempt ended.
enum Outcome {
    /// Retrying cannot help (wrong token, nothing to forward).
    Fatal(String),
    /// Never got a working session.
    Failed(String),
    /// A working session ended.
    Ended(String),
    /// Dial again at once (gateway draining, or coverage).
    Redial,
    Stopped,
}

async fn agent_core(
    index: usize,
    opts: Arc<AgentOptions>,
    origins: Arc<Vec<SocketAddr>>,
    coverage: Arc<Mutex<Vec<usize>>>,
) -> Result<(), String> {
    let core = Rc::new(AgentCore {
        stopping: Cell::new(false),
        redial: Cell::new(false),
        session: RefCell::new(None),
        wakers: RefCell::new(Vec::new()),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
    let mut backoff = Backoff::new(opts.max_backoff);
    let mut had_session = false;
    let mut coverage_tries = 0;
    let result = loop {
        if core.stopping.get() {
            break Ok(());
        }
        let outcome = session_once(
            index,
            &core,
            &opts,
            &origins,
            &coverage,
            had_session,
            &mut coverage_tries,
        )
        .await;
        let delay = match outcome {
            Outcome::Fatal(msg) => break Err(msg),
            Outcome::Stopped => break Ok(()),
            Outcome::Redial => {
                had_session = true;
                continue;
            }
            Outcome::Failed(msg) => {
                let d = backoff.next_delay();
                warn!("core {index}: {msg}; retrying in {d:.1?}");
                d
            }
            Outcome::Ended(why) => {
                had_session = true;
                backoff.reset();
                let d = backoff.next_delay();
                warn!("core {index}: session to the gateway ended: {why}; reconnecting in {d:.1?}");
                d
            }
        };
        let sleep = pin!(engine::sleep(delay));
        let mut sleep = sleep;
        poll_fn(|cx| {
            if core.stopping.get() || sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            core.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    };
    CURRENT.with(|c| *c.borrow_mut() = None);
    result
}

async fn session_once(
    index: usize,
    core: &Rc<AgentCore>,
    opts: &AgentOptions,
    origins: &[SocketAddr],
    coverage: &Arc<Mutex<Vec<usize>>>,
    reconnect: bool,
    coverage_tries: &mut u32,
) -> Outcome {
    let gw = &opts.gateway;
    let tcp = match engine::timeout(CONNECT_TIMEOUT, TcpStream::connect(gw.as_str())).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Outcome::Failed(format!("cannot reach the gateway at {gw}: {e}")),
        Err(_) => return Outcome::Failed(format!("cannot reach the gateway at {gw}: timed out")),
    };
    let session = Session::client(tcp, tunnel_config());
    let hb = Heartbeat::new(TypedSession::new(session.clone()), opts.heartbeat);
    let hello = Hello {
        token: opts.token.as_bytes().to_vec(),
        reconnect,
        services: opts.services.iter().map(|s| s.0.clone()).collect(),
    };
    let handshake = engine::timeout(CONNECT_TIMEOUT, async {
        let mut ctl = hb
            .open_typed(CONTROL_TYPE)
            .await
            .map_err(|e| e.to_string())?;
        ctl.write_all(&hello.encode())
            .await
            .map_err(|e| e.to_string())?;
        let reply = Reply::read(&mut *ctl).await?;
        Ok::<_, String>((ctl, reply))
    })
    .await
    .unwrap_or_else(|_| Err("no answer to the handshake in time".into()));
    let (ctl, reply) = match handshake {
        Ok(r) => r,
        Err(e) => {
            // A gateway that refused us may have said why in its GOAWAY.
            let end = engine::timeout(Duration::from_millis(200), hb.wait()).await;
            let _ = hb.close();
            if let Ok(muxado::SessionEnd {
                remote: Some((code, debug)),
                ..
            }) = end
            {
                return Outcome::Failed(format!(
                    "the gateway at {gw} ended the session (GOAWAY {code}): {}",
                    String::from_utf8_lossy(&debug)
                ));
            }
            return Outcome::Failed(format!("handshake with the gateway at {gw} failed: {e}"));
        }
    };
    match reply.status {
        Status::Ok => {}
        Status::BadToken => {
            let _ = hb.close();
            return Outcome::Fatal(format!(
                "the gateway at {gw} refused our token: {}",
                reply.message
            ));
        }
        Status::BadRequest => {
            let _ = hb.close();
            return Outcome::Fatal(format!("the gateway at {gw} refused us: {}", reply.message));
        }
        Status::Draining => {
            let _ = hb.close();
            return Outcome::Failed(format!("the gateway at {gw} is draining"));
        }
    }
    let mut services = Vec::new();
    for (i, (name, _)) in opts.services.iter().enumerate() {
        match reply.types.get(i).copied().unwrap_or(0) {
            0 => warn!("service {name}: the gateway does not expose it"),
            t => services.push(Service {
                name: name.clone(),
                stream_type: t,
                origin: origins[i],
            }),
        }
    }
    // Spread sessions over the gateway's cores (see the module docs).
    let gw_core = reply.core as usize;
    if reply.cores > 1 {
        let mut cov = coverage.lock().unwrap_or_else(|p| p.into_inner());
        cov.resize(reply.cores as usize, 0);
        let covered = cov.get(gw_core).copied().unwrap_or(0) > 0;
        if covered && cov.contains(&0) && *coverage_tries < COVERAGE_TRIES {
            *coverage_tries += 1;
            drop(cov);
            debug!("core {index}: gateway core {gw_core} is already covered; redialing");
            let _ = hb.close();
            return Outcome::Redial;
        }
        if let Some(c) = cov.get_mut(gw_core) {
            *c += 1;
        }
    }
    *coverage_tries = 0;
    if reply.cores > 1 {
        // Uncover the gateway core when this session ends.
        let (hb, coverage) = (hb.clone(), coverage.clone());
        engine::spawn(async move {
            hb.wait().await;
            let mut cov = coverage.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cov.get_mut(gw_core) {
                *c = c.saturating_sub(1);
            }
        });
    }
    info!(
        "core {index}: connected to the gateway at {gw} (gateway core {gw_core}/{}), forwarding {:?}",
        reply.cores,
        services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
    );
    core.redial.set(false);
    *core.session.borrow_mut() = Some(session.clone());
    if core.stopping.get() {
        let _ = session.close();
    }
    // A dead gateway is noticed within interval + tolerance.
    let killer = session.clone();
    let gw_name = gw.clone();
    let limit = opts.heartbeat.interval + opts.heartbeat.tolerance;
    if let Err(e) = hb
        .start(move |event| {
            if event == HeartbeatEvent::Timeout {
                warn!(
                    "gateway {gw_name}: no heartbeat answer within {limit:?}; closing the session"
                );
                let _ = killer.close();
            }
        })
        .await
    {
        debug!("heartbeat not started: {e}");
    }
    engine::spawn(watch_control(ctl.into_stream(), core.clone()));
    let services = Rc::new(services);
    let acceptor = engine::spawn(accept_streams(hb.clone(), services, opts.proxy_protocol));
    let ended = pin!(hb.wait());
    let mut ended = ended;
    let end = poll_fn(|cx| {
        if let Poll::Ready(end) = ended.as_mut().poll(cx) {
            return Poll::Ready(Some(end));
        }
        if core.redial.get() || core.stopping.get() {
            return Poll::Ready(None);
        }
        core.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .await;
    core.session.borrow_mut().take();
    drop(acceptor);
    match end {
        Some(end) => {
            if core.stopping.get() {
                return Outcome::Stopped;
            }
            let why = match end.remote {
                Some((code, debug)) => {
                    format!("GOAWAY {code}: {}", String::from_utf8_lossy(&debug))
                }
                None => end.local.to_string(),
            };
            Outcome::Ended(why)
        }
        None if core.stopping.get() => Outcome::Stopped,
        None => {
            info!("core {index}: the gateway is draining; dialing a new session while this one finishes");
            Outcome::Redial
        }
    }
}

/// Reads the control stream: a drain notice asks for a new session.
async fn watch_control(mut ctl: Stream, core: Rc<AgentCore>) {
    let mut b = [0u8; 1];
    while let Ok(1) = ctl.read(&mut b).await {
        if b[0] == NOTICE_DRAIN {
            core.redial.set(true);
            core.notify();
        }
    }
}

async fn accept_streams(hb: Heartbeat, services: Rc<Vec<Service>>, proxy: bool) {
    while let Ok(stream) = hb.accept_typed().await {
        engine::spawn(serve_stream(stream, services.clone(), proxy));
    }
}

/// Connects one tunneled stream to its origin and splices them.
async fn serve_stream(stream: TypedStream, services: Rc<Vec<Service>>, proxy: bool) {
    let ty = stream.stream_type();
    let mut stream = stream.into_stream();
    let Some(svc) = services.iter().find(|s| s.stream_type == ty) else {
        warn!("the gateway opened a stream of unknown type {ty}; refusing it");
        let _ = stream.reset(ErrorCode::StreamRefused);
        return;
    };
    let header = match engine::timeout(CONNECT_TIMEOUT, ConnHeader::read(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!("service {}: stream ended before its header: {e}", svc.name);
            let _ = stream.reset(ErrorCode::ProtocolError);
            return;
        }
        Err(_) => {
            let _ = stream.reset(ErrorCode::ProtocolError);
            return;
        }
    };
    let client = header
        .src
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    let tcp = match engine::timeout(CONNECT_TIMEOUT, TcpStream::connect(svc.origin)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            warn!(
                "service {}: refused {client}: origin {} unreachable: {e}",
                svc.name, svc.origin
            );
            let _ = stream.reset(ErrorCode::StreamRefused);
            return;
        }
        Err(_) => {
            warn!(
                "service {}: refused {client}: origin {} did not answer in time",
                svc.name, svc.origin
            );
            let _ = stream.reset(ErrorCode::StreamRefused);
            return;
        }
    };
    if proxy {
        let (r, _) = tcp
            .send_all(proxy_protocol::header(header.src, header.dst))
            .await;
        if r.is_err() {
            let _ = stream.reset(ErrorCode::StreamReset);
            return;
        }
    }
    debug!("service {}: {client} connected to {}", svc.name, svc.origin);
    let moved = splice(tcp, stream, None).await;
    debug!(
        "service {}: {client} done: {} bytes to the origin, {} from it",
        svc.name, moved.stream_to_tcp, moved.tcp_to_stream
    );
}
