//! A thin gateway and agent on ngrok's `muxado` crate over tokio
//! (`--runtime ngrok-tokio`): the same tunnel protocol (handshake, stream
//! types, connection header) on their runtime, for `scripts/tunnel-bench.sh`
//! to compare runtimes side by side. It is a benchmark peer, not a product:
//! no metrics, no drain, no heartbeat; the splice is tokio's
//! `copy_bidirectional` (a copy through its buffer each way).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ngrok_muxado::typed::{
    StreamType, Typed, TypedAccept as _, TypedOpenClose as _, TypedSession as _,
};
use ngrok_muxado::{MuxadoOpen, SessionBuilder};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::args::{AgentOptions, GatewayOptions};
use super::proxy_protocol;
use super::wire::{
    token_matches, ConnHeader, Hello, Reply, Status, TokioReader, CONN_HEADER_MAX, CONTROL_TYPE,
};

type Open = Typed<MuxadoOpen>;

/// Agent sessions serving one service: (session id, opener).
type Slots = Vec<Mutex<Vec<(u64, Open)>>>;

fn runtime(cores: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn builder(tcp: TcpStream) -> SessionBuilder<TcpStream> {
    SessionBuilder::new(tcp)
        .stream_limit(1 << 16)
        .accept_queue_size(1 << 14)
}

pub fn gateway(opts: GatewayOptions) -> Result<(), String> {
    let rt = runtime(opts.cores)?;
    rt.block_on(async move {
        let opts = Arc::new(opts);
        let agents = TcpListener::bind(opts.agents)
            .await
            .map_err(|e| format!("listen for agents on {}: {e}", opts.agents))?;
        info!("agents listening on {} (ngrok-tokio)", opts.agents);
        let slots: Arc<Slots> = Arc::new(
            opts.services
                .iter()
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        );
        for (svc, (name, addr)) in opts.services.iter().enumerate() {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("listen for {name} on {addr}: {e}"))?;
            info!("service {name} listening on {addr}");
            tokio::spawn(accept_public(l, svc, slots.clone()));
        }
        let next_id = AtomicUsize::new(0);
        loop {
            let Ok((tcp, peer)) = agents.accept().await else {
                continue;
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
            let (opts, slots) = (opts.clone(), slots.clone());
            tokio::spawn(async move {
                if let Err(e) = agent_session(tcp, id, &opts, &slots).await {
                    warn!("agent {peer}: {e}");
                }
                for s in slots.iter() {
                    s.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|(i, _)| *i != id);
                }
            });
        }
    })
}

async fn agent_session(
    tcp: TcpStream,
    id: u64,
    opts: &GatewayOptions,
    slots: &Slots,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let (open, mut accept) = Typed::new(builder(tcp).server().start()).split_typed();
    let mut ctl = tokio::time::timeout(Duration::from_secs(10), accept.accept_typed())
        .await
        .map_err(|_| "no handshake in time".to_string())?
        .map_err(|e| e.to_string())?;
    if ctl.typ() != StreamType::clamp(CONTROL_TYPE) {
        return Err("first stream is not the control stream".into());
    }
    let hello = Hello::read(&mut TokioReader(&mut *ctl)).await?;
    let mut reply = Reply {
        status: Status::Ok,
        message: String::new(),
        types: Vec::new(),
        core: 0,
        cores: 1,
    };
    if !token_matches(opts.token.as_bytes(), &hello.token) {
        reply.status = Status::BadToken;
        reply.message = "authentication failed: wrong token".into();
        let _ = ctl.write_all(&reply.encode()).await;
        return Err(reply.message);
    }
    let mut bound = Vec::new();
    for name in &hello.services {
        match opts.services.iter().position(|s| &s.0 == name) {
            Some(i) => {
                reply.types.push(i as u32 + 1);
                bound.push(i);
            }
            None => reply.types.push(0),
        }
    }
    ctl.write_all(&reply.encode())
        .await
        .map_err(|e| e.to_string())?;
    for &i in &bound {
        slots[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, open.clone()));
    }
    info!("agent session {id} connected (ngrok-tokio)");
    // Agents open no streams; this ends when the session does.
    while let Ok(s) = accept.accept_typed().await {
        drop(s);
    }
    drop(ctl);
    Err(format!("session {id} ended"))
}

async fn accept_public(l: TcpListener, svc: usize, slots: Arc<Slots>) {
    let turn = AtomicUsize::new(0);
    loop {
        let Ok((mut tcp, peer)) = l.accept().await else {
            continue;
        };
        let open = {
            let list = slots[svc].lock().unwrap_or_else(|p| p.into_inner());
            if list.is_empty() {
                None
            } else {
                Some(
                    list[turn.fetch_add(1, Ordering::Relaxed) % list.len()]
                        .1
                        .clone(),
                )
            }
        };
        let Some(mut open) = open else {
            drop(tcp);
            continue;
        };
        let local = tcp.local_addr().ok();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut stream) = open.open_typed(StreamType::clamp(svc as u32 + 1)).await else {
                return;
            };
            let mut header = [0u8; CONN_HEADER_MAX];
            let n = ConnHeader {
                src: Some(peer),
                dst: local,
            }
            .encode(&mut header);
            if stream.write_all(&header[..n]).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut *stream).await;
        });
    }
}

pub fn agent(opts: AgentOptions, origins: Vec<SocketAddr>) -> Result<(), String> {
    let rt = runtime(opts.cores)?;
    let opts = Arc::new(opts);
    let origins = Arc::new(origins);
    rt.block_on(async move {
        loop {
            match agent_once(&opts, &origins).await {
                Err((true, e)) => return Err(e),
                Err((false, e)) => warn!("{e}; retrying"),
                Ok(()) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// One session; the error says whether retrying is pointless.
async fn agent_once(
    opts: &AgentOptions,
    origins: &Arc<Vec<SocketAddr>>,
) -> Result<(), (bool, String)> {
    let soft = |e: String| (false, e);
    let tcp = TcpStream::connect(&opts.gateway)
        .await
        .map_err(|e| soft(format!("cannot reach the gateway at {}: {e}", opts.gateway)))?;
    let _ = tcp.set_nodelay(true);
    let (mut open, mut accept) = Typed::new(builder(tcp).client().start()).split_typed();
    let mut ctl = open
        .open_typed(StreamType::clamp(CONTROL_TYPE))
        .await
        .map_err(|e| soft(e.to_string()))?;
    let hello = Hello {
        token: opts.token.as_bytes().to_vec(),
        reconnect: false,
        services: opts.services.iter().map(|s| s.0.clone()).collect(),
    };
    ctl.write_all(&hello.encode())
        .await
        .map_err(|e| soft(e.to_string()))?;
    let reply = Reply::read(&mut TokioReader(&mut *ctl))
        .await
        .map_err(soft)?;
    if reply.status != Status::Ok {
        return Err((true, format!("the gateway refused us: {}", reply.message)));
    }
    let services: Arc<Vec<(u32, SocketAddr)>> = Arc::new(
        reply
            .types
            .iter()
            .zip(origins.iter())
            .filter(|(t, _)| **t != 0)
            .map(|(t, o)| (*t, *o))
            .collect(),
    );
    info!("connected to the gateway at {} (ngrok-tokio)", opts.gateway);
    let proxy = opts.proxy_protocol;
    while let Ok(mut stream) = accept.accept_typed().await {
        let services = services.clone();
        tokio::spawn(async move {
            let ty: u32 = *stream.typ();
            let Some(&(_, origin)) = services.iter().find(|(t, _)| *t == ty) else {
                return;
            };
            let Ok(header) = ConnHeader::read(&mut TokioReader(&mut *stream)).await else {
                return;
            };
            let Ok(mut tcp) = TcpStream::connect(origin).await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            if proxy
                && tcp
                    .write_all(&proxy_protocol::header(header.src, header.dst))
                    .await
                    .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut *stream).await;
        });
    }
    drop(ctl);
    Err(soft("session to the gateway ended".into()))
}
