//! 1,000 concurrent public connections through one agent session, every byte
//! checked. Clients and origin run on a small tokio runtime in the test.
#![cfg(feature = "cli")]

mod tunnel_support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_support::*;

const CONNS: usize = 1000;

/// Raises the soft descriptor limit to the hard one (clients, origin and the
/// child processes each hold 1,000 sockets).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    assert!(
        lim.rlim_cur >= 4 * CONNS as u64 + 256,
        "this test needs {} descriptors, the limit is {}",
        4 * CONNS + 256,
        lim.rlim_cur
    );
}

#[test]
fn a_thousand_concurrent_connections_all_complete() {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A deep accept queue: the agent dials the origin 1,000 times at once, and
    // an overflowing queue (tokio's default backlog is 1024) made the kernel
    // reset a few of those connections, which the tunnel rightly passed on
    // as closed public connections.
    let listener = {
        let _rt = rt.enter();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(8192).unwrap()
    };
    let origin = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let mut t = gateway(&[]);
    let agent = t.agent_connected(origin, &[], 1);
    let public = t.public;
    let results = rt.block_on(async move {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONNS));
        let tasks: Vec<_> = (0..CONNS)
            .map(|i| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(public).await?;
                    let data = pattern(i as u64, 4096 + i);
                    let (mut r, mut w) = s.split();
                    let send = async {
                        w.write_all(&data).await?;
                        // Every connection is open and has sent before any
                        // half-closes (bounded, should one fail to connect).
                        let _ = tokio::time::timeout(Duration::from_secs(30), barrier.wait()).await;
                        w.shutdown().await
                    };
                    let mut back = Vec::new();
                    let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
                    sent?;
                    got?;
                    if back == data {
                        return Ok::<Option<String>, std::io::Error>(None);
                    }
                    let at = back.iter().zip(&data).position(|(a, b)| a != b);
                    Ok(Some(format!(
                        "connection {i}: sent {} bytes, got {} back, first difference at {at:?}",
                        data.len(),
                        back.len()
                    )))
                })
            })
            .collect();
        let mut ok = 0;
        let mut errors = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        for t in tasks {
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(Ok(None))) => ok += 1,
                Ok(Ok(Ok(Some(differ)))) => errors.push(differ),
                Ok(Ok(Err(e))) => errors.push(e.to_string()),
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push("timed out".into()),
            }
        }
        (ok, errors)
    });
    let (ok, errors) = results;
    assert_eq!(
        ok,
        CONNS,
        "{} failed, first ones: {:?}\ngateway log:\n{}\nagent log:\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        t.gateway.log_text(),
        agent.log_text()
    );
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_connections_total"), CONNS as u64);
    rt.shutdown_timeout(Duration::from_secs(1));
}
