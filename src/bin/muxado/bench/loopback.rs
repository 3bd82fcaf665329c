//! The loopback addresses a local case's server listens on, and which of
//! them each client worker connects to.
//!
//! Why more than one for `connect`: every session of that case ends with the
//! client's FIN going first (it half-closes to mark its request complete), so
//! the client's port stays in TIME_WAIT for a minute, and the kernel lets a
//! new connection to the same address and port reuse it only after a second.
//! At 13–54 k sessions/s against one address that exhausts the ports a
//! connect may take, and the kernel searches longer for every new one. How
//! long depended on how full the TIME_WAIT table already was (past
//! `tcp_max_tw_buckets` the kernel stops keeping them), so the same binary
//! measured tcp-uring at 13 k or 54 k sessions/s depending on what ran in the
//! minute before (perf/connect-spread-2026-12-05), and "connect ≥ 0.9×
//! tcp-best" flipped between consecutive runs. Spread over [`SPREAD`]
//! addresses (all of 127.0.0.0/8 is local), each address sees a sixteenth of
//! the rate and the search never runs long: one client connecting to many
//! gateway addresses stands in for the many clients a gateway really has.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use crate::model::{CaseRun, Endpoint, Scenario};

/// Addresses the `connect` case's server listens on: 127.0.0.1 up to
/// 127.0.0.16, one port.
pub const SPREAD: usize = 16;

/// How many addresses the local server of `run` listens on.
pub fn addresses(run: &CaseRun) -> usize {
    match run.case.scenario {
        Scenario::Connect if !run.remote => SPREAD,
        _ => 1,
    }
}

/// Binds `n` listeners with `bind`, on 127.0.0.1 up to 127.0.0.`n`, all on
/// one port the kernel chose for the first; returns them and the first's
/// address. Retries a few times if another program holds that port on one
/// of the other addresses.
pub fn bind_all<L>(
    n: usize,
    bind: impl Fn(SocketAddr) -> io::Result<L>,
    local_addr: impl Fn(&L) -> io::Result<SocketAddr>,
) -> io::Result<(Vec<L>, SocketAddr)> {
    let mut last = None;
    for _ in 0..8 {
        let first = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = local_addr(&first)?;
        let mut all = vec![first];
        let rest = (1..n).try_for_each(|k| {
            let at = nth(addr, k);
            let l = bind(at).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listening on {at} for the connect case: {e}"),
                )
            })?;
            all.push(l);
            io::Result::Ok(())
        });
        match rest {
            Ok(()) => return Ok((all, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("eight attempts failed"))
}

/// The endpoint client worker `k` of `run` connects to: its share of the
/// server's addresses.
pub fn for_worker(to: &Endpoint, run: &CaseRun, k: usize) -> Endpoint {
    match to {
        Endpoint::Tcp(first) => Endpoint::Tcp(nth(*first, k % addresses(run))),
        other => other.clone(),
    }
}

/// `first`'s port on the `k`th address after it (127.0.0.1 → 127.0.0.`k+1`).
fn nth(first: SocketAddr, k: usize) -> SocketAddr {
    match first {
        SocketAddr::V4(a) => {
            let ip = u32::from(*a.ip()).wrapping_add(k as u32);
            SocketAddr::from((Ipv4Addr::from(ip), a.port()))
        }
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_a_port_across_loopback_addresses_and_each_is_reachable() {
        let (all, first) =
            bind_all(SPREAD, std::net::TcpListener::bind, |l| l.local_addr()).expect("bind");
        assert_eq!(all.len(), SPREAD);
        assert_eq!(first.ip(), Ipv4Addr::LOCALHOST);
        for (k, l) in all.iter().enumerate() {
            let at = l.local_addr().expect("addr");
            assert_eq!(at, nth(first, k));
            assert_eq!(at.port(), first.port());
            let _c = std::net::TcpStream::connect(at).expect("connect");
            l.accept().expect("accept");
        }
        assert_eq!(nth(first, SPREAD - 1).ip(), Ipv4Addr::new(127, 0, 0, 16));
    }
}
