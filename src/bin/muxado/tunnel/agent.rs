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
//!
//! With `--tls-ca` the session runs over TLS, the gateway's certificate
//! checked against those CAs and `--tls-server-name` (default: the host of
//! `--gateway`). A failed handshake is logged with its likely cause and
//! retried like any failed dial.
//!
//! SIGTERM/SIGINT drain the agent: each core writes a drain notice on its
//! control stream (the gateway stops picking the session for new public
//! connections, routing them to other agents or refusing them) and, once the
//! gateway has acknowledged it (or after `ACK_WAIT`), sends GOAWAY. The ack
//! follows every stream the gateway opened before it, so none of those is
//! refused by the GOAWAY. The core then waits until its spliced connections
//! have finished or `--drain-timeout` has passed, closes the session, and the
//! process exits 0. A second signal exits at once.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use muxado::engine::{self, net::TcpStream, EngineHandle};
use muxado::heartbeat::{Heartbeat, HeartbeatEvent};
use muxado::transport::{rustls, TlsClientConfig, TlsError, TlsStream, Transport};
use muxado::typed::{TypedSession, TypedStream};
use muxado::{ErrorCode, Session, Stream};
use tracing::{debug, info, warn};

use super::args::AgentOptions;
use super::backoff::Backoff;
use super::gateway::tunnel_config;
use super::notify::Notify;
use super::proxy_protocol;
use super::signals;
use super::splice::splice;
use super::wire::{ConnHeader, Hello, Reply, Status, CONTROL_TYPE, NOTICE_DRAIN, NOTICE_DRAIN_ACK};

/// Bound on connecting to the gateway or an origin, and on the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a draining agent waits for the gateway to acknowledge its drain
/// notice before it sends GOAWAY anyway (a gateway that does not answer).
const ACK_WAIT: Duration = Duration::from_secs(2);
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

/// The TLS settings a session dials with: trusted CAs and the name checked.
struct Tls {
    config: TlsClientConfig,
    server_name: String,
}

/// What every core's sessions are set up with, read-only once running.
struct Setup {
    opts: AgentOptions,
    tls: Option<Tls>,
    /// Resolved address of each forwarded service, in `opts.services` order.
    origins: Vec<SocketAddr>,
}

pub fn run(opts: AgentOptions, origins: Vec<SocketAddr>) -> Result<(), String> {
    let tls = match &opts.tls {
        None => None,
        Some(t) => Some(Tls {
            config: TlsClientConfig::from_ca_pem_file(&t.ca)
                .map_err(|e| format!("--tls-ca {}: {e}", t.ca.display()))?,
            server_name: t.server_name.clone(),
        }),
    };
    let handle: Arc<OnceLock<EngineHandle>> = Arc::new(OnceLock::new());
    let for_signals = handle.clone();
    let drain_timeout = opts.drain_timeout;
    signals::watch(move |name| {
        if for_signals.get().is_none() {
            info!("{name}: exiting");
            std::process::exit(0);
        }
        info!(
            "{name}: draining (GOAWAY to the gateway, no new connections; \
             in-flight connections have up to {drain_timeout:?})"
        );
        drain_all(&for_signals, Instant::now() + drain_timeout);
    })
    .map_err(|e| format!("signal watcher: {e}"))?;
    let engine = muxado::Engine::builder()
        .cores(opts.cores)
        .build()
        .map_err(|e| e.to_string())?;
    let _ = handle.set(engine.handle());
    let setup = Arc::new(Setup { opts, tls, origins });
    let coverage = Arc::new(Mutex::new(Vec::<usize>::new()));
    let results = engine
        .run(move |index| {
            let (setup, coverage, handle) = (setup.clone(), coverage.clone(), handle.clone());
            async move {
                let r = agent_core(index, setup, coverage).await;
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

fn drain_all(handle: &OnceLock<EngineHandle>, deadline: Instant) {
    if let Some(h) = handle.get() {
        for core in 0..h.cores() {
            let _ = h.spawn_on(core, move || async move { request_drain(deadline) });
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
        core.changed.notify();
    }
}

/// Called on each core at SIGTERM: drain (see the module docs), closing at
/// `deadline` at the latest.
fn request_drain(deadline: Instant) {
    if let Some(core) = CURRENT.with(|c| c.borrow().clone()) {
        if core.draining.get().is_some() {
            return;
        }
        core.draining.set(Some(deadline));
        core.changed.notify();
    }
}

/// One core's agent state.
struct AgentCore {
    stopping: Cell<bool>,
    /// Draining (SIGTERM) until this deadline: no new streams, then exit.
    draining: Cell<Option<Instant>>,
    /// Spliced connections in flight on this core, over any of its sessions.
    active: Cell<usize>,
    /// The gateway said it drains: dial a new session, let the old one finish.
    redial: Cell<bool>,
    session: RefCell<Option<Session>>,
    /// Woken when any of the above changes.
    changed: Notify,
}

impl AgentCore {
    /// Stopping or draining: dial nothing new.
    fn winding_down(&self) -> bool {
        self.stopping.get() || self.draining.get().is_some()
    }

    /// Runs `fut` unless the core winds down first (then `None`).
    async fn unless_winding_down<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if self.winding_down() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            self.changed.register(cx);
            Poll::Pending
        })
        .await
    }
}

/// Counts one spliced connection for the drain, for as long as it lives.
struct InFlight(Rc<AgentCore>);

impl InFlight {
    fn new(core: &Rc<AgentCore>) -> InFlight {
        core.active.set(core.active.get() + 1);
        InFlight(core.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let core = &self.0;
        core.active.set(core.active.get() - 1);
        // Only a drain waits for the count: don't wake anyone otherwise.
        if core.draining.get().is_some() {
            core.changed.notify();
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
    setup: Arc<Setup>,
    coverage: Arc<Mutex<Vec<usize>>>,
) -> Result<(), String> {
    let core = Rc::new(AgentCore {
        stopping: Cell::new(false),
        draining: Cell::new(None),
        active: Cell::new(0),
        redial: Cell::new(false),
        session: RefCell::new(None),
        changed: Notify::default(),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
    let mut backoff = Backoff::new(setup.opts.max_backoff);
    let mut had_session = false;
    let mut coverage_tries = 0;
    let result = loop {
        if core.winding_down() {
            break Ok(());
        }
        let outcome = session_once(
            index,
            &core,
            &setup,
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
        core.unless_winding_down(engine::sleep(delay)).await;
    };
    CURRENT.with(|c| *c.borrow_mut() = None);
    result
}

async fn session_once(
    index: usize,
    core: &Rc<AgentCore>,
    setup: &Setup,
    coverage: &Arc<Mutex<Vec<usize>>>,
    reconnect: bool,
    coverage_tries: &mut u32,
) -> Outcome {
    let (opts, tls, origins) = (&setup.opts, setup.tls.as_ref(), &setup.origins);
    let gw = &opts.gateway;
    // Dialing (TCP, TLS) gives way to a stop or a drain at once.
    let dialed = core
        .unless_winding_down(engine::timeout(CONNECT_TIMEOUT, dial(gw, tls)))
        .await;
    let transport = match dialed {
        None => return Outcome::Stopped,
        Some(Ok(Ok(t))) => t,
        Some(Ok(Err(e))) => return Outcome::Failed(e),
        Some(Err(_)) => {
            return Outcome::Failed(format!("cannot reach the gateway at {gw}: timed out"))
        }
    };
    let session = Session::client(transport, tunnel_config());
    let hb = Heartbeat::new(TypedSession::new(session.clone()), opts.heartbeat);
    let hello = Hello {
        token: opts.token.as_bytes().to_vec(),
        reconnect,
        services: opts.services.iter().map(|s| s.0.clone()).collect(),
    };
    let handshake = core.unless_winding_down(engine::timeout(CONNECT_TIMEOUT, async {
        let mut ctl = hb
            .open_typed(CONTROL_TYPE)
            .await
            .map_err(|e| e.to_string())?;
        ctl.write_all(&hello.encode())
            .await
            .map_err(|e| e.to_string())?;
        let reply = Reply::read(&mut *ctl).await?;
        Ok::<_, String>((ctl, reply))
    }));
    let Some(handshake) = handshake.await else {
        let _ = hb.close();
        return Outcome::Stopped;
    };
    let handshake = handshake.unwrap_or_else(|_| Err("no answer to the handshake in time".into()));
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
            let hint = if tls.is_none() {
                " (if the gateway serves agents over TLS, pass --tls-ca)"
            } else {
                ""
            };
            return Outcome::Failed(format!(
                "handshake with the gateway at {gw} failed: {e}{hint}"
            ));
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
    if core.winding_down() {
        // The signal came during the handshake: nothing runs on this session yet.
        let _ = hb.close();
        return Outcome::Stopped;
    }
    *core.session.borrow_mut() = Some(session.clone());
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
    let acked = Rc::new(Cell::new(false));
    engine::spawn(watch_control(
        ctl.into_stream(),
        core.clone(),
        acked.clone(),
    ));
    let services = Rc::new(services);
    let acceptor = engine::spawn(accept_streams(
        hb.clone(),
        services,
        opts.proxy_protocol,
        core.clone(),
    ));
    let ended = pin!(hb.wait());
    let mut ended = ended;
    let end = poll_fn(|cx| {
        if let Poll::Ready(end) = ended.as_mut().poll(cx) {
            return Poll::Ready(Some(end));
        }
        if core.redial.get() || core.winding_down() {
            return Poll::Ready(None);
        }
        core.changed.register(cx);
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
        None if core.draining.get().is_some() => {
            drain(index, core, &hb, &acked).await;
            Outcome::Stopped
        }
        None => {
            info!("core {index}: the gateway is draining; dialing a new session while this one finishes");
            Outcome::Redial
        }
    }
}

/// Dials the gateway: TCP, then the TLS handshake when configured. The error
/// names the likely cause, for the log.
async fn dial(gw: &str, tls: Option<&Tls>) -> Result<Transport, String> {
    let tcp = TcpStream::connect(gw)
        .await
        .map_err(|e| format!("cannot reach the gateway at {gw}: {e}"))?;
    let Some(tls) = tls else {
        return Ok(tcp.into());
    };
    match TlsStream::connect(tcp, &tls.config, &tls.server_name).await {
        Ok(s) => Ok(s.into()),
        Err(e) => Err(format!(
            "cannot connect to the gateway at {gw} over TLS: {e}{}",
            tls_hint(&e, &tls.server_name)
        )),
    }
}

/// The likely cause of a failed TLS handshake, as a hint for the log.
fn tls_hint(e: &TlsError, name: &str) -> String {
    use rustls::{CertificateError as C, Error as R};
    match e {
        TlsError::Handshake(R::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => {
            " (the gateway's certificate is not signed by a CA of --tls-ca)".into()
        }
        TlsError::Handshake(R::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        )) => format!(" (the gateway's certificate does not name {name:?}: see --tls-server-name)"),
        // webpki's reason for a self-signed CA certificate served as the
        // gateway's own: only its text names it.
        TlsError::Handshake(R::InvalidCertificate(c))
            if format!("{c:?}").contains("CaUsedAsEndEntity") =>
        {
            " (the gateway serves a CA certificate: give it a certificate signed by that CA)".into()
        }
        TlsError::Handshake(R::InvalidCertificate(_)) => {
            " (the gateway's certificate was rejected: check --tls-ca)".into()
        }
        TlsError::Handshake(R::InvalidMessage(_) | R::InappropriateMessage { .. })
        | TlsError::HandshakeEof => " (is the gateway serving agents over TLS?)".into(),
        _ => String::new(),
    }
}

/// The drain of one core's session (the notice is on its way, see
/// `watch_control`): GOAWAY once the gateway has acknowledged, then waits
/// for the spliced connections up to the deadline and closes the session.
async fn drain(index: usize, core: &AgentCore, hb: &Heartbeat, acked: &Cell<bool>) {
    let deadline = core.draining.get().unwrap_or_else(Instant::now);
    let ack_by = deadline.min(Instant::now() + ACK_WAIT);
    if engine::timeout_at(ack_by, core.changed.until(|| acked.get()))
        .await
        .is_err()
    {
        warn!("core {index}: the gateway did not acknowledge the drain in time; sending GOAWAY anyway");
    }
    let _ = hb.go_away(ErrorCode::NoError, b"agent draining");
    let n = core.active.get();
    if n > 0 {
        info!("core {index}: draining: waiting for {n} connections to finish");
    }
    if engine::timeout_at(deadline, core.changed.until(|| core.active.get() == 0))
        .await
        .is_ok()
    {
        info!("core {index}: drained");
    } else {
        warn!(
            "core {index}: drain deadline passed with {} connections still open; closing them",
            core.active.get()
        );
    }
    let _ = hb.close();
    // Let the GOAWAY leave before the process exits.
    let _ = engine::timeout(Duration::from_millis(300), hb.wait()).await;
}

/// Serves the control stream of one session: the gateway's drain notice
/// asks for a new session; when this core drains, writes our own notice,
/// and sets `acked` when the gateway answers it.
async fn watch_control(mut ctl: Stream, core: Rc<AgentCore>, acked: Rc<Cell<bool>>) {
    let mut told = false;
    let mut b = [0u8; 1];
    loop {
        let event = poll_fn(|cx| {
            if !told && core.draining.get().is_some() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(r) = ctl.poll_read_slice(cx, &mut b) {
                return Poll::Ready(Some(r));
            }
            if !told {
                core.changed.register(cx);
            }
            Poll::Pending
        })
        .await;
        match event {
            None => {
                told = true;
                if ctl.write_all(&[NOTICE_DRAIN]).await.is_err() {
                    return;
                }
            }
            Some(Ok(1)) if b[0] == NOTICE_DRAIN => {
                core.redial.set(true);
                core.changed.notify();
            }
            Some(Ok(1)) if b[0] == NOTICE_DRAIN_ACK => {
                acked.set(true);
                core.changed.notify();
            }
            // Unknown notices are ignored (a newer gateway).
            Some(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

async fn accept_streams(
    hb: Heartbeat,
    services: Rc<Vec<Service>>,
    proxy: bool,
    core: Rc<AgentCore>,
) {
    while let Ok(stream) = hb.accept_typed().await {
        let guard = InFlight::new(&core);
        engine::spawn(serve_stream(stream, services.clone(), proxy, guard));
    }
}

/// Connects one tunneled stream to its origin and splices them; `_guard`
/// counts it for a drain until it ends.
async fn serve_stream(
    stream: TypedStream,
    services: Rc<Vec<Service>>,
    proxy: bool,
    _guard: InFlight,
) {
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
    let moved = splice(tcp, stream, None, None).await;
    debug!(
        "service {}: {client} {}: {} bytes to the origin, {} from it",
        svc.name,
        if moved.aborted { "reset" } else { "done" },
        moved.stream_to_tcp,
        moved.tcp_to_stream
    );
}
