//! `muxado gateway`: accepts agent sessions, authenticates them, and tunnels
//! each public connection to the least loaded agent session of its service.
//!
//! Every engine core runs the same thing on its own SO_REUSEPORT sockets: an
//! agent listener, one public listener per service, and a registry of the
//! agent sessions the kernel gave it. A public connection is served on the
//! core that accepted it, by a session of that core, so nothing crosses cores
//! on the hot path (the agent spreads its sessions over the gateway's cores,
//! see `agent.rs`). A core without a session for the service refuses the
//! connection at once, with a log line saying why.
//!
//! Agents connect over plain TCP, or over TLS with `--tls-cert/--tls-key`
//! (the handshake runs in the agent's own task, bounded in time, before the
//! session starts; a client that is not TLS or that rejects our certificate
//! is logged and dropped).
//!
//! An agent that drains (SIGTERM) says so on its control stream: its session
//! is picked no more, and the gateway acknowledges on the same stream, after
//! every stream it opened there before. The agent's GOAWAY follows; should a
//! stream be opened after it anyway (an agent that sends no notice), opening
//! fails at once, locally, without a byte sent, and the connection is
//! offered to the next agent session of the service (or refused if there is
//! none).
//! A public connection idle for `--idle-timeout` is closed on both sides.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use muxado::engine::{self, net::TcpListener, net::TcpStream, EngineHandle, JoinHandle};
use muxado::heartbeat::{Heartbeat, HeartbeatEvent};
use muxado::transport::{rustls, TlsError, TlsServerConfig, TlsStream, Transport};
use muxado::typed::TypedSession;
use muxado::{Config, Error, ErrorCode, Session, Stream};
use tracing::{debug, info, warn};

use super::args::GatewayOptions;
use super::metrics::{self, CoreMetrics, Meter, Registry};
use super::notify::Notify;
use super::signals;
use super::splice::{abort_on_close, splice};
use super::wire::{
    token_matches, ConnHeader, Hello, Reply, Status, CONN_HEADER_MAX, CONTROL_TYPE, NOTICE_DRAIN,
    NOTICE_DRAIN_ACK,
};

/// How long an agent has to authenticate after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused agent gets to read our answer before we close.
const REFUSE_LINGER: Duration = Duration::from_millis(500);

/// Session settings of both tunnel ends: many concurrent streams, and a deep
/// accept queue on the agent (the gateway opens streams in bursts).
pub fn tunnel_config() -> Config {
    Config::default()
        .with_max_streams(1 << 16)
        .with_accept_backlog(1 << 14)
}

/// How agent sessions arrive: a listener, and the TLS settings if any.
struct AgentTransport {
    listener: TcpListener,
    tls: Option<TlsServerConfig>,
}

/// Runs the server side of the TLS handshake (when configured) on an
/// accepted agent connection; the error says why, for the log.
async fn secure(tcp: TcpStream, tls: Option<&TlsServerConfig>) -> Result<Transport, String> {
    match tls {
        None => Ok(tcp.into()),
        Some(cfg) => match TlsStream::accept(tcp, cfg).await {
            Ok(s) => Ok(s.into()),
            Err(e) => Err(explain_tls(&e)),
        },
    }
}

/// A TLS failure as the operator needs it: what happened and the likely cause.
fn explain_tls(e: &TlsError) -> String {
    use rustls::Error as R;
    let hint = match e {
        TlsError::Handshake(R::InvalidMessage(_) | R::InappropriateMessage { .. }) => {
            " (the peer does not speak TLS: an agent without --tls-ca?)"
        }
        TlsError::Handshake(R::AlertReceived(_)) => {
            " (the agent rejected our certificate: check its --tls-ca and --tls-server-name)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}

/// Listeners of one core, bound before the engine starts so that port 0
/// resolves once and every core shares the same ports.
struct CoreListeners {
    agents: TcpListener,
    public: Vec<TcpListener>,
}

pub fn run(opts: GatewayOptions) -> Result<(), String> {
    // Signals are blocked before any thread starts (metrics, cores), so that
    // only the watcher gets them.
    let handle: Arc<OnceLock<EngineHandle>> = Arc::new(OnceLock::new());
    let for_signals = handle.clone();
    signals::watch(move |name| {
        info!("{name}: draining (stop accepting, GOAWAY to agents, let connections finish)");
        match for_signals.get() {
            Some(h) => {
                for core in 0..h.cores() {
                    let _ = h.spawn_on(core, || async { request_drain() });
                }
            }
            // Not serving yet: nothing to drain.
            None => std::process::exit(0),
        }
    })
    .map_err(|e| format!("signal watcher: {e}"))?;
    let mut per_core = Vec::with_capacity(opts.cores);
    let mut agents_addr = opts.agents;
    let mut public_addrs: Vec<SocketAddr> = opts.services.iter().map(|s| s.1).collect();
    for _ in 0..opts.cores {
        let agents = TcpListener::bind(agents_addr)
            .map_err(|e| format!("listen for agents on {agents_addr}: {e}"))?;
        agents_addr = agents.local_addr().map_err(|e| e.to_string())?;
        let mut public = Vec::new();
        for (i, addr) in public_addrs.iter_mut().enumerate() {
            let l = TcpListener::bind(*addr)
                .map_err(|e| format!("listen for {} on {addr}: {e}", opts.services[i].0))?;
            *addr = l.local_addr().map_err(|e| e.to_string())?;
            public.push(l);
        }
        per_core.push(Some(CoreListeners { agents, public }));
    }
    let tls = match &opts.tls {
        None => None,
        Some((cert, key)) => Some(
            TlsServerConfig::from_pem_files(cert, key)
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
        ),
    };
    info!(
        "agents listening on {agents_addr} ({})",
        if tls.is_some() { "TLS" } else { "plain TCP" }
    );
    for ((name, _), addr) in opts.services.iter().zip(&public_addrs) {
        info!("service {name} listening on {addr}");
    }
    let core_metrics: Vec<Arc<CoreMetrics>> = (0..opts.cores)
        .map(|_| Arc::new(CoreMetrics::new(opts.services.len())))
        .collect();
    if let Some(addr) = opts.metrics {
        let registry = Arc::new(Registry {
            names: opts.services.iter().map(|s| s.0.clone()).collect(),
            cores: core_metrics.clone(),
        });
        let bound =
            metrics::serve(addr, registry).map_err(|e| format!("metrics on {addr}: {e}"))?;
        info!("metrics on http://{bound}/metrics");
    }
    let engine = muxado::Engine::builder()
        .cores(opts.cores)
        .build()
        .map_err(|e| e.to_string())?;
    let _ = handle.set(engine.handle());
    let per_core = Arc::new(Mutex::new(per_core));
    let opts = Arc::new(opts);
    let results = engine
        .run(move |index| {
            let listeners = per_core.lock().unwrap_or_else(|p| p.into_inner())[index].take();
            let opts = opts.clone();
            let metrics = core_metrics[index].clone();
            let tls = tls.clone();
            async move {
                match listeners {
                    Some(l) => run_core(index, l, tls, opts, metrics).await,
                    None => Err(format!("core {index}: no listeners")),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    info!("drained; exiting");
    results.into_iter().collect()
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<GwCore>>> = const { RefCell::new(None) };
}

/// Called on each core by the signal watcher.
fn request_drain() {
    if let Some(core) = CURRENT.with(|c| c.borrow().clone()) {
        core.draining.set(true);
        core.changed.notify();
    }
}

/// One core's gateway.
struct GwCore {
    index: usize,
    cores: usize,
    opts: Arc<GatewayOptions>,
    metrics: Arc<CoreMetrics>,
    /// Authenticated agent sessions.
    links: RefCell<Vec<Rc<Link>>>,
    draining: Cell<bool>,
    /// Public connections being tunneled.
    active: Cell<usize>,
    changed: Notify,
    next_id: Cell<u64>,
}

/// An authenticated agent session.
struct Link {
    id: u64,
    peer: String,
    hb: Heartbeat,
    /// Per gateway service: the stream type agreed, 0 if not forwarded.
    types: Vec<u32>,
    /// Connections it carries now (the load the picker balances).
    active: Cell<usize>,
    /// The agent sent GOAWAY (it drains): no new connections go to it.
    draining: Cell<bool>,
    /// The control stream: notices both ways (see `wire.rs`). Borrowed only
    /// inside a poll.
    control: RefCell<Stream>,
}

async fn run_core(
    index: usize,
    listeners: CoreListeners,
    tls: Option<TlsServerConfig>,
    opts: Arc<GatewayOptions>,
    metrics: Arc<CoreMetrics>,
) -> Result<(), String> {
    let core = Rc::new(GwCore {
        index,
        cores: opts.cores,
        opts,
        metrics,
        links: RefCell::new(Vec::new()),
        draining: Cell::new(false),
        active: Cell::new(0),
        changed: Notify::default(),
        next_id: Cell::new(0),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
    let mut accepts: Vec<JoinHandle<()>> = Vec::new();
    accepts.push(engine::spawn(accept_agents(
        core.clone(),
        AgentTransport {
            listener: listeners.agents,
            tls,
        },
    )));
    for (svc, listener) in listeners.public.into_iter().enumerate() {
        accepts.push(engine::spawn(accept_public(core.clone(), svc, listener)));
    }
    core.changed.until(|| core.draining.get()).await;
    // Drain: stop accepting (the listeners close with their tasks), tell the agents.
    for task in &accepts {
        task.abort();
    }
    let links: Vec<Rc<Link>> = core.links.borrow().clone();
    for link in &links {
        let _ = write_notice(&link.control, NOTICE_DRAIN).await;
        let _ = link.hb.go_away(ErrorCode::NoError, b"gateway draining");
    }
    let deadline = Instant::now() + core.opts.drain_timeout;
    let drained = engine::timeout_at(deadline, core.changed.until(|| core.active.get() == 0)).await;
    if drained.is_err() {
        warn!(
            "core {index}: drain deadline passed with {} connections still open; closing them",
            core.active.get()
        );
    }
    for link in core.links.borrow().iter() {
        let _ = link.hb.close();
    }
    // Give the GOAWAYs a moment to leave.
    engine::sleep(Duration::from_millis(300)).await;
    CURRENT.with(|c| *c.borrow_mut() = None);
    Ok(())
}

async fn accept_agents(core: Rc<GwCore>, transport: AgentTransport) {
    loop {
        match transport.listener.accept().await {
            Ok((tcp, peer)) => {
                engine::spawn(agent_session(
                    core.clone(),
                    tcp,
                    peer,
                    transport.tls.clone(),
                ));
            }
            Err(e) => {
                warn!("accepting an agent failed: {e}");
                engine::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Authenticates one agent session, serves it until it ends, then forgets it.
async fn agent_session(
    core: Rc<GwCore>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsServerConfig>,
) {
    // The handshake has its own time limit (the library's, 10 s by default).
    let transport = match secure(tcp, tls.as_ref()).await {
        Ok(t) => t,
        Err(e) => {
            warn!("agent {peer} refused: {e}");
            metrics::add(&core.metrics.auth_failures, 1);
            return;
        }
    };
    let over = match &transport {
        Transport::Tls(_) => "TLS",
        _ => "plain TCP",
    };
    let session = Session::server(transport, tunnel_config());
    let hb = Heartbeat::new(TypedSession::new(session.clone()), core.opts.heartbeat);
    let hello = engine::timeout(HANDSHAKE_TIMEOUT, async {
        let mut ctl = hb.accept_typed().await.map_err(|e| e.to_string())?;
        if ctl.stream_type() != CONTROL_TYPE {
            return Err(format!(
                "first stream has type {}, not the control type",
                ctl.stream_type()
            ));
        }
        let hello = Hello::read(&mut *ctl).await?;
        Ok((ctl.into_stream(), hello))
    })
    .await
    .unwrap_or_else(|_| Err("no handshake within the time limit".into()));
    let (mut ctl, hello) = match hello {
        Ok(h) => h,
        Err(e) => {
            warn!("agent {peer} refused: handshake failed: {e}");
            metrics::add(&core.metrics.auth_failures, 1);
            let _ = hb.go_away(
                ErrorCode::ProtocolError,
                format!("handshake failed: {e}").as_bytes(),
            );
            engine::sleep(REFUSE_LINGER).await;
            let _ = hb.close();
            return;
        }
    };
    let refuse = |status: Status, why: String| Reply {
        status,
        message: why,
        types: Vec::new(),
        core: core.index as u16,
        cores: core.cores as u16,
    };
    let verdict = if !token_matches(core.opts.token.as_bytes(), &hello.token) {
        Err(refuse(
            Status::BadToken,
            "authentication failed: wrong token".into(),
        ))
    } else if core.draining.get() {
        Err(refuse(Status::Draining, "the gateway is draining".into()))
    } else {
        let mut by_service = vec![0u32; core.opts.services.len()];
        let mut types = Vec::with_capacity(hello.services.len());
        for name in &hello.services {
            match core.opts.services.iter().position(|s| &s.0 == name) {
                Some(i) => {
                    by_service[i] = i as u32 + 1;
                    types.push(i as u32 + 1);
                }
                None => types.push(0),
            }
        }
        if by_service.iter().all(|&t| t == 0) {
            Err(refuse(
                Status::BadRequest,
                format!(
                    "none of the services {:?} is exposed by this gateway",
                    hello.services
                ),
            ))
        } else {
            Ok((by_service, types))
        }
    };
    let (by_service, types) = match verdict {
        Ok(v) => v,
        Err(reply) => {
            warn!("agent {peer} refused: {}", reply.message);
            metrics::add(&core.metrics.auth_failures, 1);
            let _ = ctl.write_all(&reply.encode()).await;
            let _ = hb.go_away(ErrorCode::ProtocolError, reply.message.as_bytes());
            // The agent closes once it has read the answer; don't wait long.
            let _ = engine::timeout(REFUSE_LINGER, hb.wait()).await;
            let _ = hb.close();
            return;
        }
    };
    let reply = Reply {
        status: Status::Ok,
        message: String::new(),
        types,
        core: core.index as u16,
        cores: core.cores as u16,
    };
    if let Err(e) = ctl.write_all(&reply.encode()).await {
        warn!("agent {peer}: session failed during the handshake: {e}");
        return;
    }
    // Unique across cores: core index + cores × the core's count.
    let n = core.next_id.get();
    core.next_id.set(n + 1);
    let id = n * core.cores as u64 + core.index as u64;
    let link = Rc::new(Link {
        id,
        peer: peer.to_string(),
        hb: hb.clone(),
        types: by_service,
        active: Cell::new(0),
        draining: Cell::new(false),
        control: RefCell::new(ctl),
    });
    let bound: Vec<&str> = core
        .opts
        .services
        .iter()
        .zip(&link.types)
        .filter(|(_, &t)| t != 0)
        .map(|(s, _)| s.0.as_str())
        .collect();
    info!(
        "agent {peer} connected (core {}, session {id}{}), serving {bound:?} over {over}",
        core.index,
        if hello.reconnect { ", a reconnect" } else { "" }
    );
    for (i, &t) in link.types.iter().enumerate() {
        if t != 0 {
            metrics::add(&core.metrics.services[i].sessions_opened, 1);
            if hello.reconnect {
                metrics::add(&core.metrics.services[i].reconnects, 1);
            }
        }
    }
    core.links.borrow_mut().push(link.clone());
    engine::spawn(read_control(link.clone()));
    // A dead agent is noticed by the heartbeat even when TCP is silent.
    let killer = session.clone();
    let who = peer;
    let tolerance = core.opts.heartbeat.interval + core.opts.heartbeat.tolerance;
    let started = hb
        .start(move |event| {
            if event == HeartbeatEvent::Timeout {
                warn!("agent {who}: no heartbeat answer within {tolerance:?}; closing its session");
                let _ = killer.close();
            }
        })
        .await;
    if let Err(e) = started {
        debug!("agent {peer}: heartbeat not started: {e}");
    }
    drop(session);
    // Agents do not open streams; any they open is refused. This loop also
    // answers the agent's heartbeats, and ends with the session.
    while let Ok(mut stream) = hb.accept_typed().await {
        let _ = stream.reset(ErrorCode::StreamRefused);
    }
    let end = hb.wait().await;
    let why = match &end.remote {
        Some((code, debug)) => format!("GOAWAY {code}: {}", String::from_utf8_lossy(debug)),
        None => end.local.to_string(),
    };
    info!("agent {peer} disconnected (session {id}): {why}");
    core.links.borrow_mut().retain(|l| !Rc::ptr_eq(l, &link));
    for (i, &t) in link.types.iter().enumerate() {
        if t != 0 {
            metrics::add(&core.metrics.services[i].sessions_closed, 1);
        }
    }
}

/// Writes one notice byte on a control stream.
async fn write_notice(ctl: &RefCell<Stream>, notice: u8) -> Result<(), Error> {
    poll_fn(|cx| ctl.borrow_mut().poll_write_slice(cx, &[notice]))
        .await
        .map(|_| ())
}

/// Reads an agent's notices until its session ends: a drain notice takes
/// the session out of the picking, then is acknowledged.
async fn read_control(link: Rc<Link>) {
    let mut b = [0u8; 1];
    loop {
        match poll_fn(|cx| link.control.borrow_mut().poll_read_slice(cx, &mut b)).await {
            Ok(1) if b[0] == NOTICE_DRAIN => {
                link.mark_draining();
                if write_notice(&link.control, NOTICE_DRAIN_ACK).await.is_err() {
                    return;
                }
            }
            // Unknown notices are ignored (a newer agent).
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

impl Link {
    /// The agent drains: no new connections go to it (logged once).
    fn mark_draining(&self) {
        if !self.draining.replace(true) {
            info!(
                "agent {} (session {}) is draining: no new connections go to it",
                self.peer, self.id
            );
        }
    }
}

impl GwCore {
    /// The live agent session of `svc` carrying the fewest connections.
    fn pick(&self, svc: usize) -> Option<Rc<Link>> {
        self.links
            .borrow()
            .iter()
            .filter(|l| l.types[svc] != 0 && !l.draining.get() && !l.hb.is_closed())
            .min_by_key(|l| l.active.get())
            .cloned()
    }
}

async fn accept_public(core: Rc<GwCore>, svc: usize, listener: TcpListener) {
    let name = core.opts.services[svc].0.clone();
    let local = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("service {name}: accept failed: {e}");
                engine::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match core.pick(svc) {
            Some(link) => {
                engine::spawn(public_conn(core.clone(), svc, link, tcp, peer, local));
            }
            None => {
                info!("service {name}: refused {peer}: no agent connected");
                metrics::add(&core.metrics.services[svc].refused, 1);
                abort_on_close(&tcp);
                drop(tcp);
            }
        }
    }
}

/// Tunnels one public connection over `link`, or over the next agent
/// session of the service if `link`'s agent has started draining.
async fn public_conn(
    core: Rc<GwCore>,
    svc: usize,
    mut link: Rc<Link>,
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) {
    let name = &core.opts.services[svc].0;
    let counters = &core.metrics.services[svc];
    core.active.set(core.active.get() + 1);
    let opened = loop {
        link.active.set(link.active.get() + 1);
        match open_conn(&link, svc, peer, local).await {
            // Refused locally, nothing sent: the agent drains. Try another.
            Err(Error::RemoteGoneAway) => {
                link.active.set(link.active.get() - 1);
                link.mark_draining();
                match core.pick(svc) {
                    Some(next) => link = next,
                    None => break None,
                }
            }
            r => break Some(r),
        }
    };
    match opened {
        Some(Ok(stream)) => {
            metrics::add(&counters.conns_opened, 1);
            debug!(
                "service {name}: {peer} tunneled to agent {} (session {})",
                link.peer, link.id
            );
            let meter = Meter::new(core.metrics.clone(), svc);
            let moved = splice(tcp, stream, Some(meter), core.opts.idle_timeout).await;
            if moved.idle_closed {
                debug!(
                    "service {name}: {peer} closed after {:?} without traffic",
                    core.opts.idle_timeout.unwrap_or_default()
                );
            }
            debug!(
                "service {name}: {peer} {}: {} bytes in, {} bytes out",
                if moved.aborted { "reset" } else { "done" },
                moved.tcp_to_stream,
                moved.stream_to_tcp
            );
            if moved.aborted {
                metrics::add(&counters.conns_reset, 1);
            }
            metrics::add(&counters.conns_closed, 1);
            link.active.set(link.active.get() - 1);
        }
        Some(Err(e)) => {
            abort_on_close(&tcp);
            info!(
                "service {name}: refused {peer}: agent {} could not take it: {e}",
                link.peer
            );
            metrics::add(&counters.refused, 1);
            link.active.set(link.active.get() - 1);
        }
        None => {
            abort_on_close(&tcp);
            info!("service {name}: refused {peer}: every agent is draining");
            metrics::add(&counters.refused, 1);
        }
    }
    core.active.set(core.active.get() - 1);
    if core.draining.get() {
        core.changed.notify();
    }
}

/// Opens the stream of one public connection on `link` and writes its header.
/// `Err(RemoteGoneAway)` means the agent never saw it (it sent GOAWAY first).
async fn open_conn(
    link: &Link,
    svc: usize,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Result<Stream, Error> {
    let mut stream = link.hb.open_typed(link.types[svc]).await?;
    let mut header = [0u8; CONN_HEADER_MAX];
    let n = ConnHeader {
        src: Some(peer),
        dst: local,
    }
    .encode(&mut header);
    stream.write_all(&header[..n]).await?;
    Ok(stream.into_stream())
}
