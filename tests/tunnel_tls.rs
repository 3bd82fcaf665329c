//! The tunnel with TLS between agent and gateway (`--tls-cert/--tls-key` on
//! the gateway, `--tls-ca` on the agent), certificates made at run time:
//! bytes both ways, and clean refusals of an agent that does not trust the
//! gateway's certificate and of one that does not speak TLS at all.
#![cfg(feature = "cli")]

mod tunnel_support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use tunnel_support::pki::Pki;
use tunnel_support::*;

/// A gateway serving agents over TLS with `pki`'s certificate.
fn tls_gateway(pki: &Pki) -> Tunnel {
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let mut t = gateway(&["--tls-cert", cert, "--tls-key", key]);
    t.gateway.wait_log("(TLS)", Duration::from_secs(5));
    t
}

#[test]
fn tls_tunnel_relays_every_byte_both_ways() {
    let dir = TempDir::new("pki");
    let pki = Pki::new(&dir.0, "good");
    let origin = origin(echo);
    let mut t = tls_gateway(&pki);
    // The certificate is checked against the host of --gateway (127.0.0.1).
    let ca = pki.ca.to_str().unwrap();
    let mut agent = t.agent_connected(origin.addr, &["--tls-ca", ca], 1);
    agent.wait_log("connected to the gateway", Duration::from_secs(5));
    assert!(
        t.gateway.log_text().contains("over TLS"),
        "the gateway did not log a TLS agent:\n{}",
        t.gateway.log_text()
    );
    let clients: Vec<_> = (0..3u64)
        .map(|i| {
            let s = t.connect();
            thread::spawn(move || {
                let data = pattern(100 + i, 2 * 1024 * 1024 + i as usize * 1001);
                let back = echo_roundtrip(s, data.clone());
                assert_eq!(back.len(), data.len(), "connection {i}: length");
                assert!(back == data, "connection {i}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    // A naming the certificate carries, given explicitly, works too.
    let mut named = t.agent(
        origin.addr,
        &["--tls-ca", ca, "--tls-server-name", "localhost"],
        TOKEN,
    );
    named.wait_log("connected to the gateway", Duration::from_secs(10));
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_connections_total"), 3, "{m}");
    assert_eq!(metric(&m, "muxado_tunnel_auth_failures_total"), 0, "{m}");
}

/// After a refused agent, no public connection reaches its origin, and the
/// gateway counts the refusal.
fn assert_nothing_reaches(t: &mut Tunnel, origin: &Origin) {
    let mut s = t.connect();
    assert!(
        ends_within(&mut s, Duration::from_secs(2)),
        "a public connection was left hanging"
    );
    assert_eq!(origin.accepted.load(Ordering::Relaxed), 0);
    let m = t.scrape();
    assert_eq!(metric(&m, "muxado_tunnel_agent_sessions"), 0, "{m}");
    assert_eq!(metric(&m, "muxado_tunnel_connections_total"), 0, "{m}");
    assert!(metric(&m, "muxado_tunnel_auth_failures_total") >= 1, "{m}");
}

#[test]
fn agent_with_the_wrong_ca_is_refused_clearly() {
    let dir = TempDir::new("pki");
    let good = Pki::new(&dir.0, "good");
    let other = Pki::new(&dir.0, "other");
    let origin = origin(echo);
    let mut t = tls_gateway(&good);
    let mut agent = t.agent(
        origin.addr,
        &["--tls-ca", other.ca.to_str().unwrap()],
        TOKEN,
    );
    agent.wait_log("not signed by a CA of --tls-ca", Duration::from_secs(10));
    let log = agent.log_text();
    assert!(
        log.contains("cannot connect to the gateway at") && log.contains("UnknownIssuer"),
        "the agent's message does not say what failed:\n{log}"
    );
    t.gateway
        .wait_log("rejected our certificate", Duration::from_secs(5));
    assert_nothing_reaches(&mut t, &origin);

    // A certificate that does not carry the name the agent checks.
    let mut misnamed = t.agent(
        origin.addr,
        &[
            "--tls-ca",
            good.ca.to_str().unwrap(),
            "--tls-server-name",
            "gateway.example.com",
        ],
        TOKEN,
    );
    misnamed.wait_log(
        "does not name \"gateway.example.com\"",
        Duration::from_secs(10),
    );
    assert_nothing_reaches(&mut t, &origin);
}

#[test]
fn plaintext_agent_against_a_tls_gateway_is_refused_cleanly() {
    let dir = TempDir::new("pki");
    let pki = Pki::new(&dir.0, "good");
    let origin = origin(echo);
    let mut t = tls_gateway(&pki);
    let mut plain = t.agent(origin.addr, &[], TOKEN);
    t.gateway
        .wait_log("does not speak TLS", Duration::from_secs(10));
    plain.wait_log("pass --tls-ca", Duration::from_secs(10));
    assert_nothing_reaches(&mut t, &origin);
    // The gateway goes on serving agents that do speak TLS.
    plain.kill();
    let ca = pki.ca.to_str().unwrap();
    let _agent = t.agent_connected(origin.addr, &["--tls-ca", ca], 1);
    let mut s = t.connect();
    s.write_all(b"still serving").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"still serving");
}
