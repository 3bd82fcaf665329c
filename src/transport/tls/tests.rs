//! Tests of the sans-IO TLS state (records fed by hand, split anywhere) and
//! of the stream over real loopback sockets (large transfers checked byte by
//! byte, key updates both ways, close_notify). Certificates are made at run
//! time.

use std::cell::Cell;
use std::io::{Read as _, Write as _};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::BytesMut;

use super::state::{Quiet, Sealed, State};
use super::{TlsClientConfig, TlsServerConfig, TlsStream};
use crate::engine::{
    self,
    net::{TcpListener, TcpStream},
};

/// Every test that runs the engine fails instead of hanging past this.
const BOUND: Duration = Duration::from_secs(60);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A self-signed certificate for "localhost" and the configurations of both
/// sides that use it (`tls12`: the client offers only TLS 1.2).
fn configs(tls12: bool) -> (TlsServerConfig, TlsClientConfig) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = made.cert.pem();
    let key = made.key_pair.serialize_pem();
    let server = TlsServerConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let client = if tls12 {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClientConfig::from_rustls(Arc::new(config))
    } else {
        TlsClientConfig::from_ca_pem(cert.as_bytes()).unwrap()
    };
    (server, client)
}

/// What `sealed` holds, as bytes (the test's "send").
fn drain(sealed: &mut Sealed) -> Vec<u8> {
    let (head, tail) = sealed.split();
    let bytes = head.to_vec();
    sealed.rejoin(head, tail);
    bytes
}

/// All the ciphertext the buffered peer has to send.
fn peer_output(peer: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut ct = Vec::new();
    while peer.wants_write() {
        peer.write_tls(&mut ct).unwrap();
    }
    ct
}

/// Hands `ct` to the buffered peer and processes it.
fn peer_input(peer: &mut rustls::ClientConnection, ct: &[u8]) {
    let mut rd = ct;
    while !rd.is_empty() {
        peer.read_tls(&mut rd).unwrap();
        peer.process_new_packets().unwrap();
    }
}

/// Everything the buffered peer decrypted so far.
fn peer_plaintext(peer: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match peer.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("peer read: {e}"),
        }
    }
    got
}

/// Our server state and rustls' buffered client, handshake done in memory.
fn in_memory_pair(tls12: bool) -> (State, rustls::ClientConnection) {
    let (server_cfg, client_cfg) = configs(tls12);
    let mut ours = State::new(
        rustls::server::UnbufferedServerConnection::new(server_cfg.inner.clone()).unwrap(),
    );
    let mut peer =
        rustls::ClientConnection::new(client_cfg.inner.clone(), "localhost".try_into().unwrap())
            .unwrap();
    for _ in 0..10 {
        let ct = peer_output(&mut peer);
        ours.feed_handshake(&ct).unwrap();
        ours.handshake_step().unwrap();
        peer_input(&mut peer, &ours.take_queued());
        if !ours.common().is_handshaking() && !peer.is_handshaking() {
            let want = if tls12 {
                rustls::ProtocolVersion::TLSv1_2
            } else {
                rustls::ProtocolVersion::TLSv1_3
            };
            assert_eq!(ours.common().protocol_version(), Some(want));
            return (ours, peer);
        }
    }
    panic!("the in-memory handshake did not finish in 10 rounds");
}

/// Feeds `ct` to `ours` in the given pieces; returns all plaintext.
fn feed(ours: &mut State, pieces: &[&[u8]]) -> Vec<u8> {
    let mut got = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let n = ours
                .receive(&mut rest.to_vec(), &mut |p: &[u8]| got.extend_from_slice(p))
                .unwrap();
            rest = &rest[n..];
        }
    }
    got
}

/// Messages the peer sends as separate records: small ones, so that every
/// split point can be tried.
fn messages(round: usize) -> Vec<Vec<u8>> {
    (0..3)
        .map(|i| {
            (0..40 + i * 7)
                .map(|j| (round * 31 + i * 7 + j) as u8)
                .collect()
        })
        .collect()
}

fn records_split_at_every_byte_boundary(tls12: bool) {
    let (mut ours, mut peer) = in_memory_pair(tls12);
    let mut round = 0;
    let mut next_batch = |peer: &mut rustls::ClientConnection| {
        round += 1;
        let msgs = messages(round);
        for m in &msgs {
            peer.writer().write_all(m).unwrap();
        }
        (peer_output(peer), msgs.concat())
    };
    // One batch whole first, which gives the length of each.
    let (ct, want) = next_batch(&mut peer);
    let len = ct.len();
    assert_eq!(feed(&mut ours, &[&ct]), want);
    for k in 0..=len {
        let (ct, want) = next_batch(&mut peer);
        assert_eq!(ct.len(), len);
        assert_eq!(feed(&mut ours, &[&ct[..k], &ct[k..]]), want, "split at {k}");
    }
    // And every byte on its own.
    let (ct, want) = next_batch(&mut peer);
    let bytes: Vec<&[u8]> = ct.chunks(1).collect();
    assert_eq!(feed(&mut ours, &bytes), want, "byte by byte");
    // A full-size record (16 KiB), split around its header, inside, and
    // around its tag.
    let big: Vec<u8> = (0..16 * 1024).map(|i| (i * 7 + 3) as u8).collect();
    for k in (0..64)
        .chain((64..big.len()).step_by(1021))
        .chain(big.len()..big.len() + 40)
    {
        peer.writer().write_all(&big).unwrap();
        let ct = peer_output(&mut peer);
        let k = k.min(ct.len());
        assert_eq!(
            feed(&mut ours, &[&ct[..k], &ct[k..]]),
            big,
            "big record split at {k}"
        );
    }
    assert!(!ours.peer_closed());
}

/// Whole records are decrypted in the received buffer itself (no copy):
/// after the call, each record's plaintext stands where its ciphertext was.
/// A record cut by the buffer's end is completed from the next one.
#[test]
fn whole_records_are_decrypted_where_they_were_received() {
    let (mut ours, mut peer) = in_memory_pair(false);
    let msgs = messages(1);
    for m in &msgs {
        peer.writer().write_all(m).unwrap();
    }
    let first = peer_output(&mut peer);
    peer.writer().write_all(b"the next record").unwrap();
    let second = peer_output(&mut peer);
    let cut = 9;
    let mut buf = [&first[..], &second[..cut]].concat();
    let mut got = Vec::new();
    let n = ours
        .receive(&mut buf, &mut |p: &[u8]| got.extend_from_slice(p))
        .unwrap();
    assert_eq!(n, buf.len());
    assert_eq!(got, msgs.concat());
    let mut at = 0;
    for m in &msgs {
        // TLS 1.3: a 5-byte header, then the plaintext (and its type).
        assert_eq!(&buf[at + 5..at + 5 + m.len()], &m[..], "record at {at}");
        at += 5 + usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
    }
    assert_eq!(at, first.len());
    assert_eq!(
        &buf[at..],
        &second[..cut],
        "the cut record is left as it came"
    );
    got.clear();
    let mut rest = second[cut..].to_vec();
    ours.receive(&mut rest, &mut |p: &[u8]| got.extend_from_slice(p))
        .unwrap();
    assert_eq!(got, b"the next record");
}

#[test]
fn tls13_records_split_at_every_byte_boundary() {
    records_split_at_every_byte_boundary(false);
}

#[test]
fn tls12_records_split_at_every_byte_boundary() {
    records_split_at_every_byte_boundary(true);
}

/// The peer asks for a key update (a TLS 1.3 post-handshake message) with
/// data behind it, the whole split anywhere: the data is read, and our next
/// send starts with our key_update (rustls answers with the next write),
/// then data sealed with our new keys, which the peer reads.
#[test]
fn a_key_update_of_the_peer_split_anywhere_is_answered() {
    let (mut ours, mut peer) = in_memory_pair(false);
    let mut out = Sealed::default();
    let mut round = 0u8;
    let mut len = None;
    loop {
        round = round.wrapping_add(1);
        peer.refresh_traffic_keys().unwrap();
        let msg = vec![round; 33];
        peer.writer().write_all(&msg).unwrap();
        let ct = peer_output(&mut peer);
        let len = *len.get_or_insert(ct.len());
        assert_eq!(ct.len(), len, "a key update and a record every round");
        let k = usize::from(round) - 1;
        if k > len {
            break;
        }
        assert_eq!(feed(&mut ours, &[&ct[..k], &ct[k..]]), msg, "split at {k}");
        let reply = vec![!round; 21];
        ours.seal(&reply, &mut out).unwrap();
        let sent = drain(&mut out);
        // key_update: header 5, handshake header 4, request 1, type 1, tag 16;
        // the data record: header 5, data, type 1, tag 16.
        assert_eq!(sent.len(), 27 + 5 + reply.len() + 17, "split at {k}");
        peer_input(&mut peer, &sent);
        assert_eq!(peer_plaintext(&mut peer), reply, "split at {k}");
    }
}

/// We start a key update: the next send carries it, the data after it is
/// sealed with the new keys, and the peer's answer is taken in.
#[test]
fn our_key_update_reaches_the_peer_and_its_answer_comes_back() {
    let (mut ours, mut peer) = in_memory_pair(false);
    let mut out = Sealed::default();
    for round in 0..3u8 {
        ours.refresh_traffic_keys().unwrap();
        assert!(ours.wants_send());
        let data = vec![round; 5000];
        ours.seal(&data, &mut out).unwrap();
        peer_input(&mut peer, &drain(&mut out));
        assert_eq!(peer_plaintext(&mut peer), data);
        // The peer answers with a key update of its own, then data.
        peer.writer().write_all(b"after the update").unwrap();
        let ct = peer_output(&mut peer);
        assert_eq!(feed(&mut ours, &[&ct]), b"after the update");
    }
    // TLS 1.2 has no key update: a clear error, not a panic.
    let (mut ours12, _peer12) = in_memory_pair(true);
    assert!(ours12.refresh_traffic_keys().is_err());
}

/// close_notify both ways: the peer sees a clean end (not an unexpected
/// EOF); ours notes the peer's, and data sent before it still arrives.
#[test]
fn close_notify_both_ways() {
    let (mut ours, mut peer) = in_memory_pair(false);
    let mut out = Sealed::default();
    ours.seal(b"last words", &mut out).unwrap();
    ours.seal_close_notify(&mut out).unwrap();
    peer_input(&mut peer, &drain(&mut out));
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match peer.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the peer did not see a clean close: {e}"),
        }
    }
    assert_eq!(got, b"last words");
    // Sending after close_notify is refused.
    assert!(ours.seal(b"more", &mut out).is_err());

    peer.writer().write_all(b"bye").unwrap();
    peer.send_close_notify();
    let ct = peer_output(&mut peer);
    assert_eq!(feed(&mut ours, &[&ct]), b"bye");
    assert!(ours.peer_closed());
    // Bytes after the close_notify are not data.
    assert_eq!(
        feed(&mut ours, &[&[0x17, 0x03, 0x03, 0x00, 0x01, 0xff]]),
        b""
    );
}

/// A record that does not decrypt fails the state with an error that says
/// TLS; the alert rustls queued leaves; later calls fail the same way.
#[test]
fn a_bad_record_fails_with_an_alert() {
    let (mut ours, _peer) = in_memory_pair(false);
    let mut bad = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    bad.extend_from_slice(&[0xAB; 32]);
    let e = ours.receive(&mut bad, &mut |_: &[u8]| {}).unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    assert!(ours.wants_send(), "the alert waits to be sent");
    let mut out = Sealed::default();
    ours.seal(&[], &mut out).unwrap();
    assert!(!drain(&mut out).is_empty());
    assert!(ours.seal(b"data", &mut out).is_err());
    assert!(ours
        .receive(&mut b"x".to_vec(), &mut |_: &[u8]| {})
        .is_err());
}

/// A peer that sends a record header announcing more than TLS allows is
/// refused; a peer that trickles a handshake message bigger than the limit
/// cannot make the buffer grow past it.
#[test]
fn oversized_input_is_refused() {
    let (mut ours, _peer) = in_memory_pair(false);
    let e = ours
        .receive(&mut [0x17, 0x03, 0x03, 0xff, 0xff], &mut |_: &[u8]| {})
        .unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");

    let (server_cfg, _) = configs(false);
    let mut fresh = State::new(
        rustls::server::UnbufferedServerConnection::new(server_cfg.inner.clone()).unwrap(),
    );
    let junk = vec![0u8; super::state::INBUF_MAX + 1];
    assert!(fresh.feed_handshake(&junk).is_err());
}

/// Runs `f` on an engine core in a thread of its own, bounded in time.
fn run_bounded<T: Send + 'static, Fut: std::future::Future<Output = T>>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine::block_on(f()).expect("io_uring engine available")
        }));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(BOUND) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("timed out after {BOUND:?} (a hang)"),
    }
}

/// The byte at `i` of what side `seed` sends.
fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 11) as u8)
}

/// Sends `total` bytes of `seed`'s pattern in sends of varying sizes,
/// starting a key update at the middle if asked; then close_notify.
async fn send_pattern(tls: Rc<TlsStream>, seed: u8, total: usize, update_at_half: bool) {
    let mut sent = 0;
    let mut buf = BytesMut::new();
    let mut size = 1;
    let mut update = update_at_half;
    while sent < total {
        if update && sent >= total / 2 {
            update = false;
            tls.refresh_traffic_keys().unwrap();
        }
        let n = size.min(total - sent);
        buf.clear();
        buf.extend((sent..sent + n).map(|i| pattern(seed, i)));
        let (r, b) = tls.send_all(buf).await;
        r.unwrap();
        buf = b;
        sent += n;
        // 1 byte to 200 KiB: sends of one record, of many, and odd sizes.
        size = (size * 3 + 7) % (200 * 1024);
    }
    // What rustls queued itself (an answer to the peer's key update).
    tls.flush().await.unwrap();
    tls.close_write().await.unwrap();
}

/// What the session's writer does when it has no frames: sends what rustls
/// queued on its own, if anything. Only where nothing else sends meanwhile
/// (one sender at a time, as in a session).
async fn flush_if_wanted(tls: &TlsStream, flushes: &Cell<usize>) {
    let wants = std::future::poll_fn(|cx| std::task::Poll::Ready(tls.poll_wants_send(cx))).await;
    if wants {
        flushes.set(flushes.get() + 1);
        tls.flush().await.unwrap();
    }
}

/// Receives `seed`'s pattern from `rx`, checking every byte, until `total`
/// bytes (`Some`) or the end (`None`); returns the count. With `flushes`,
/// sends what rustls queued after each chunk (only when nothing else sends).
async fn receive_pattern(
    rx: &mut super::TlsReceiver,
    seed: u8,
    from: usize,
    total: Option<usize>,
    flush: Option<(&TlsStream, &Cell<usize>)>,
) -> usize {
    let mut got = from;
    while total.map_or(true, |t| got < t) {
        let more = rx
            .next_with(&mut |chunk| {
                for (j, b) in chunk.iter().enumerate() {
                    assert_eq!(
                        *b,
                        pattern(seed, got + j),
                        "byte {} of seed {seed}",
                        got + j
                    );
                }
                got += chunk.len();
            })
            .await
            .unwrap();
        if !more {
            assert!(total.is_none(), "the end came after {got} bytes");
            break;
        }
        if let Some((tls, flushes)) = flush {
            flush_if_wanted(tls, flushes).await;
        }
    }
    got - from
}

/// Two engine TLS streams over loopback TCP, each sending and receiving at
/// once, every byte checked both ways, a key update from each side in the
/// middle (TLS 1.3), close_notify at the end. Each stream has one sender
/// task, as under a session; the answers to key updates ride on its sends.
fn large_transfer_both_ways(tls12: bool) {
    const TOTAL: usize = 8 << 20;
    let (server_cfg, client_cfg) = configs(tls12);
    run_bounded(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, &server_cfg).await.unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = TlsStream::connect(tcp, &client_cfg, "localhost")
            .await
            .unwrap();
        let server = server.await;
        let (client, server) = (Rc::new(client), Rc::new(server));
        let update = !tls12;
        let receive = |tls: Rc<TlsStream>, seed: u8| async move {
            let mut rx = tls.receiver();
            let n = receive_pattern(&mut rx, seed, 0, None, None).await;
            let clean = tls.shared.borrow().tls.peer_closed();
            (n, clean)
        };
        let rx_server = engine::spawn(receive(server.clone(), 1));
        let rx_client = engine::spawn(receive(client.clone(), 2));
        let tasks = [
            engine::spawn(send_pattern(client.clone(), 1, TOTAL, update)),
            engine::spawn(send_pattern(server.clone(), 2, TOTAL, update)),
        ];
        for t in tasks {
            t.await;
        }
        assert_eq!(
            rx_server.await,
            (TOTAL, true),
            "server: bytes, close_notify"
        );
        assert_eq!(
            rx_client.await,
            (TOTAL, true),
            "client: bytes, close_notify"
        );
    });
}

#[test]
fn large_transfer_checked_both_ways_with_key_updates_tls13() {
    large_transfer_both_ways(false);
}

#[test]
fn large_transfer_checked_both_ways_tls12() {
    large_transfer_both_ways(true);
}

/// A peer on rustls' buffered API over a blocking socket (as tokio-rustls
/// drives it) asks for a key update in the middle of what it sends; ours
/// answers, and the peer then reads what ours sends, and sees close_notify.
#[test]
fn a_buffered_peer_updates_keys_mid_transfer() {
    const TOTAL: usize = 4 << 20;
    let (server_cfg, client_cfg) = configs(false);
    let (addr_tx, addr_rx) = mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr = addr_rx.recv_timeout(BOUND).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(BOUND)).unwrap();
        tcp.set_write_timeout(Some(BOUND)).unwrap();
        let conn = rustls::ClientConnection::new(
            client_cfg.inner.clone(),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut i = 0;
        while i < TOTAL {
            if i == TOTAL / 2 {
                tls.conn.refresh_traffic_keys().unwrap();
            }
            let chunk: Vec<u8> = (i..i + 65536).map(|j| pattern(3, j)).collect();
            tls.write_all(&chunk).unwrap();
            i += chunk.len();
        }
        tls.flush().unwrap();
        let mut got = Vec::new();
        // read_to_end fails on an EOF without close_notify.
        tls.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(j, b)| *b == pattern(4, j)));
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    run_bounded(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = Rc::new(TlsStream::accept(tcp, &server_cfg).await.unwrap());
        let flushes = Cell::new(0);
        let mut rx = tls.receiver();
        let got = receive_pattern(&mut rx, 3, 0, Some(TOTAL), Some((&tls, &flushes))).await;
        assert_eq!(got, TOTAL);
        // Our answer to the key update leads our first send: the peer can
        // read nothing we send without it.
        send_pattern(tls.clone(), 4, TOTAL, false).await;
        let rest = receive_pattern(&mut rx, 3, TOTAL, None, None).await;
        assert_eq!(rest, 0);
        assert!(
            tls.shared.borrow().tls.peer_closed(),
            "the peer's close_notify"
        );
    });
    peer.join().unwrap();
}

/// The state machine's idle answer: after the handshake and with nothing
/// received, rustls lets us write (what the sender relies on).
#[test]
fn an_idle_connection_is_open() {
    let (mut ours, _peer) = in_memory_pair(false);
    assert_eq!(ours.handshake_step().unwrap(), Quiet::Open);
}

/// Ours as the client, the peer a server that cuts its records to 64 bytes:
/// its session tickets (handshake messages) come in many records, so rustls
/// keeps the first parts in our receive buffer while the rest is missing.
/// The sender, sealing between the receives, hands rustls that same buffer
/// and must not disturb the parts (an empty one would make rustls panic).
#[test]
fn handshake_messages_split_over_records_survive_sends_between_receives() {
    let (server_cfg, client_cfg) = configs(false);
    let mut server_config = (*server_cfg.inner).clone();
    server_config.max_fragment_size = Some(64);
    server_config.send_tls13_tickets = 2;
    // Stateless tickets: the ticket carries the encrypted session (~150 bytes).
    server_config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    let mut peer = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
    let mut ours = State::new(
        rustls::client::UnbufferedClientConnection::new(
            client_cfg.inner.clone(),
            "localhost".try_into().unwrap(),
        )
        .unwrap(),
    );
    let mut server_out = Vec::new();
    for _ in 0..10 {
        ours.handshake_step().unwrap();
        let mut rd = &ours.take_queued()[..];
        while !rd.is_empty() {
            peer.read_tls(&mut rd).unwrap();
            peer.process_new_packets().unwrap();
        }
        while peer.wants_write() {
            peer.write_tls(&mut server_out).unwrap();
        }
        if !peer.is_handshaking() && !ours.common().is_handshaking() {
            break;
        }
        ours.feed_handshake(&server_out).unwrap();
        server_out.clear();
    }
    assert!(!ours.common().is_handshaking());
    // What is left: the tickets in 64-byte records; then data.
    peer.writer().write_all(b"after the tickets").unwrap();
    while peer.wants_write() {
        peer.write_tls(&mut server_out).unwrap();
    }
    assert!(
        server_out.len() > 300,
        "tickets in many records: {}",
        server_out.len()
    );
    let mut out = Sealed::default();
    let mut got = Vec::new();
    for (i, piece) in server_out.chunks(50).enumerate() {
        let msg = format!("send {i}");
        ours.seal(msg.as_bytes(), &mut out).unwrap();
        let mut rd = &drain(&mut out)[..];
        while !rd.is_empty() {
            peer.read_tls(&mut rd).unwrap();
            peer.process_new_packets().unwrap();
        }
        let mut read = vec![0u8; msg.len()];
        peer.reader().read_exact(&mut read).unwrap();
        assert_eq!(read, msg.as_bytes());
        let mut rest = piece;
        while !rest.is_empty() {
            let n = ours
                .receive(&mut rest.to_vec(), &mut |p: &[u8]| got.extend_from_slice(p))
                .unwrap();
            rest = &rest[n..];
        }
    }
    assert_eq!(got, b"after the tickets");
}
