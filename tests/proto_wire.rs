//! One `Session` driven with raw frame bytes: the exact bytes it transmits,
//! its events and its errors, against the Go reference (protocol reference
//! §11.1 and §11.2).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use muxado::frame::{self, Decode, Frame, FrameType, Header, FLAG_FIN, FLAG_SYN, MAX_STREAM_ID};
use muxado::proto::{Event, Role, Session, StreamKey};
use muxado::{Config, Error, ErrorCode};

// ---- helpers ----------------------------------------------------------------

fn data(id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode_data(&mut b, id, payload, flags).unwrap();
    b
}

fn rst(id: u32, code: ErrorCode) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode_rst(&mut b, id, code).unwrap();
    b
}

fn wndinc(id: u32, inc: u32) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode_wndinc(&mut b, id, inc).unwrap();
    b
}

fn goaway(last: u32, code: ErrorCode, debug: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode_goaway(&mut b, last, code, debug).unwrap();
    b
}

/// A header with any length or id (for malformed frames), followed by `body`.
fn raw(ty: FrameType, flags: u8, id: u32, length: u32, body: &[u8]) -> Vec<u8> {
    let l = length.to_be_bytes();
    let mut b = vec![l[1], l[2], l[3], (ty.to_u4() << 4) | flags];
    b.extend_from_slice(&id.to_be_bytes());
    assert_eq!(Header::decode(b[..8].try_into().unwrap()).length, length);
    b.extend_from_slice(body);
    b
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// Everything the session wants to transmit now.
fn tx(s: &mut Session) -> Vec<u8> {
    let mut spare = BytesMut::new();
    if s.poll_transmit(&mut spare) {
        assert!(!spare.is_empty(), "poll_transmit true with nothing to send");
        spare.to_vec()
    } else {
        Vec::new()
    }
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Decoded frames, for assertions on GOAWAY debug text and the like.
#[derive(Debug, PartialEq, Eq)]
enum F {
    Rst(u32, ErrorCode),
    Data(u32, u8, Vec<u8>),
    WndInc(u32, u32),
    GoAway(u32, ErrorCode, String),
}

fn frames(mut b: &[u8]) -> Vec<F> {
    let mut out = Vec::new();
    while !b.is_empty() {
        match Frame::decode(b).expect("we only send valid frames") {
            Decode::Frame(f, n) => {
                out.push(match f {
                    Frame::Rst { stream_id, code } => F::Rst(stream_id, code),
                    Frame::Data {
                        stream_id,
                        flags,
                        payload,
                    } => F::Data(stream_id, flags, payload.to_vec()),
                    Frame::WndInc {
                        stream_id,
                        increment,
                    } => F::WndInc(stream_id, increment),
                    Frame::GoAway {
                        last_stream_id,
                        code,
                        debug,
                    } => F::GoAway(
                        last_stream_id,
                        code,
                        String::from_utf8(debug.to_vec()).unwrap(),
                    ),
                    Frame::Unknown { .. } => panic!("we never send unknown frames"),
                });
                b = &b[n..];
            }
            Decode::Incomplete(_) => panic!("truncated frame in transmit buffer"),
        }
    }
    out
}

struct Peer {
    s: Session,
    now: Instant,
}

impl Peer {
    fn new(role: Role) -> Self {
        Self::with(role, Config::default())
    }

    fn with(role: Role, config: Config) -> Self {
        Peer {
            s: Session::new(role, config),
            now: Instant::now(),
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        self.s.handle_input(self.now, bytes);
    }

    fn tx(&mut self) -> Vec<u8> {
        tx(&mut self.s)
    }

    fn events(&mut self) -> Vec<Event> {
        events(&mut self.s)
    }

    fn accept(&mut self) -> StreamKey {
        self.s.accept().unwrap().expect("a stream is waiting")
    }

    fn read_all(&mut self, key: StreamKey) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Some(n)) = self.s.read(key, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Asserts the session died with `code` and sent exactly one GOAWAY
    /// (last, code) as its final frame; returns the frames before it.
    fn assert_died(&mut self, last: u32, code: ErrorCode) -> Vec<F> {
        assert!(self.s.is_dead(), "session should be dead");
        let err = self.s.error().unwrap().clone();
        assert_eq!(err.code(), code, "death error {err:?}");
        let mut fs = frames(&self.tx());
        let Some(F::GoAway(l, c, debug)) = fs.pop() else {
            panic!("last frame is not a GOAWAY: {fs:?}");
        };
        assert_eq!((l, c), (last, code));
        assert_eq!(debug, err.to_string());
        assert!(self.events().contains(&Event::Dead));
        // Dead: input is ignored and nothing more is ever sent.
        self.input(&data(0x7FFF_FFF1, 0, b"zz"));
        self.input(&data(0x7FFF_FFF2, FLAG_SYN, b"zz"));
        assert_eq!(self.tx(), b"");
        assert_eq!(self.s.open(), Err(Error::SessionClosed));
        fs
    }
}

// ---- Go session_test.go / stream_test.go ports ----------------------------

#[test]
fn go_wrong_client_parity() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(300, FLAG_SYN, b"x"));
    assert!(server.assert_died(1, ErrorCode::ProtocolError).is_empty());
    assert_eq!(server.s.accept(), Err(Error::SessionClosed));
}

#[test]
fn go_wrong_server_parity() {
    let mut client = Peer::new(Role::Client);
    client.input(&data(301, FLAG_SYN, b""));
    assert!(client.assert_died(0, ErrorCode::ProtocolError).is_empty());
}

#[test]
fn go_accept_stream() {
    let mut client = Peer::new(Role::Client);
    assert_eq!(client.s.accept(), Ok(None));
    client.input(&data(300, FLAG_SYN, b"hi"));
    assert_eq!(client.events(), vec![Event::Accept]);
    let k = client.accept();
    assert_eq!(client.s.stream_id(k), Ok(300));
    assert_eq!(client.read_all(k), b"hi");
    assert_eq!(
        client.tx(),
        b"",
        "2 bytes read: far below the WNDINC threshold"
    );
}

#[test]
fn go_write_after_close() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"ping"));
    let k = server.accept();
    server.s.close(k).unwrap();
    // Close sends FIN (no SYN: the peer opened it), no RST.
    assert_eq!(server.tx(), data(3, FLAG_FIN, b""));
    // Buffered data is still readable, then the stream reports closed.
    let mut buf = [0u8; 8];
    assert_eq!(server.s.read(k, &mut buf), Ok(Some(4)));
    assert_eq!(server.s.read(k, &mut buf), Err(Error::StreamClosed));
    // The peer's late write gets RST StreamClosed.
    server.input(&data(3, 0, b"late"));
    assert_eq!(server.tx(), rst(3, ErrorCode::StreamClosed));
    // The remote closes the session: GOAWAY NoError then EOF → PeerEof.
    server.input(&goaway(0, ErrorCode::NoError, b"no error"));
    assert!(
        !server.s.is_dead(),
        "GOAWAY alone does not kill the session"
    );
    server.s.handle_eof();
    assert!(matches!(server.s.error(), Some(Error::PeerEof(_))));
    assert_eq!(
        server.s.remote_goaway(),
        Some((ErrorCode::NoError, &b"no error"[..]))
    );
}

#[test]
fn go_close_write() {
    let mut client = Peer::new(Role::Client);
    let k = client.s.open().unwrap();
    assert_eq!(client.s.write(k, &[7u8; 10]), Ok(10));
    client.s.close_write(k).unwrap();
    assert_eq!(
        client.tx(),
        cat(&[data(3, FLAG_SYN, &[7u8; 10]), data(3, FLAG_FIN, b"")])
    );
    assert_eq!(client.s.write(k, b"x"), Err(Error::StreamClosed));
    // A second close_write sends nothing (Go would send a duplicate FIN).
    client.s.close_write(k).unwrap();
    assert_eq!(client.tx(), b"");
}

// ---- §11.2 ------------------------------------------------------------------

#[test]
fn ids_start_at_3_and_2_with_right_parity() {
    let mut client = Peer::new(Role::Client);
    let mut server = Peer::new(Role::Server);
    let c: Vec<u32> = (0..3)
        .map(|_| {
            let k = client.s.open().unwrap();
            client.s.stream_id(k).unwrap()
        })
        .collect();
    let s: Vec<u32> = (0..3)
        .map(|_| {
            let k = server.s.open().unwrap();
            server.s.stream_id(k).unwrap()
        })
        .collect();
    assert_eq!(c, [3, 5, 7]);
    assert_eq!(s, [2, 4, 6]);
}

#[test]
fn lazy_syn_on_first_frame_actually_sent() {
    let mut client = Peer::new(Role::Client);
    let a = client.s.open().unwrap();
    let b = client.s.open().unwrap();
    assert_eq!(client.tx(), b"", "open sends nothing");
    assert_eq!(client.s.write(a, b""), Ok(0));
    assert_eq!(client.tx(), b"", "an empty write sends nothing");
    // The first frame actually sent carries SYN (reference example #2) …
    assert_eq!(client.s.write(a, b"hi"), Ok(2));
    assert_eq!(client.tx(), hex("00 00 02 12 00 00 00 03 68 69"));
    // … and only the first (example #3).
    assert_eq!(client.s.write(a, b"hi"), Ok(2));
    assert_eq!(client.tx(), hex("00 00 02 10 00 00 00 03 68 69"));
    // Close before any write: SYN+FIN on an empty frame (example #6 on id 5).
    client.s.close(b).unwrap();
    assert_eq!(client.tx(), hex("00 00 00 13 00 00 00 05"));
    // An accepted stream never sends SYN.
    client.input(&data(2, FLAG_SYN, b""));
    let k = client.accept();
    client.s.write(k, b"ok").unwrap();
    client.s.close_write(k).unwrap();
    assert_eq!(
        client.tx(),
        cat(&[data(2, 0, b"ok"), data(2, FLAG_FIN, b"")])
    );
}

#[test]
fn wndinc_coalesced_and_every_read_byte_credited() {
    // Exact Go-like credit: auto-tuning off.
    let mut server = Peer::with(Role::Server, no_auto_tuning());
    let window = Config::default().max_window; // 256 KiB, threshold 64 KiB
    let threshold = window / 4;
    let payload: Vec<u8> = (0..window).map(|i| i as u8).collect();
    server.input(&data(3, FLAG_SYN, &payload[..1000]));
    for chunk in payload[1000..].chunks(60_000) {
        server.input(&data(3, 0, chunk));
    }
    let k = server.accept();
    assert_eq!(server.s.readable_len(k), Ok(window as usize));
    let mut buf = vec![0u8; 1000];
    let (mut read, mut credited, mut got) = (0u32, 0u32, Vec::new());
    while read < window {
        let n = server.s.read(k, &mut buf).unwrap().unwrap();
        got.extend_from_slice(&buf[..n]);
        read += n as u32;
        let fs = frames(&server.tx());
        match fs.as_slice() {
            [] => assert!(read - credited < threshold, "credit withheld too long"),
            [F::WndInc(3, inc)] => {
                credited += inc;
                assert_eq!(credited, read, "a WNDINC credits everything read so far");
                assert!(*inc >= threshold, "coalesced: no tiny WNDINCs");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, payload);
    // What is still uncredited is less than one threshold, so the peer's window
    // (window - unread - uncredited) is never empty once everything is read.
    assert!(read - credited < threshold);
    // The next byte that arrives and is read pushes the rest out.
    server.input(&data(
        3,
        0,
        &vec![1u8; (threshold - (read - credited)) as usize],
    ));
    let rest = server.read_all(k);
    assert!(!rest.is_empty());
    assert_eq!(
        frames(&server.tx()),
        vec![F::WndInc(3, read + rest.len() as u32 - credited)]
    );
}

/// Windows of 1000 bytes, credited every 250, auto-tuned up to `max_auto`.
fn small_windows(max_auto: u32) -> Config {
    Config::default()
        .with_max_window(1000)
        .with_window_update_threshold(250)
        .with_max_auto_window(max_auto)
}

fn no_auto_tuning() -> Config {
    Config::default().with_max_auto_window(Config::default().max_window)
}

/// A reader that keeps up gets its window doubled with each credit, up to
/// `max_auto_window`; the extra is granted in the WNDINC and then enforced as
/// the new flow-control limit. A reader that lags gets no growth.
#[test]
fn auto_tuning_grows_the_window_of_a_reader_that_keeps_up() {
    let config = small_windows(4000);
    let mut server = Peer::with(Role::Server, config.clone());
    server.input(&data(3, FLAG_SYN, &[7u8; 1000]));
    let k = server.accept();
    assert_eq!(server.s.recv_window(k), Ok(1000));
    // Reads everything: credit 1000 consumed + 1000 growth.
    assert_eq!(server.read_all(k).len(), 1000);
    assert_eq!(frames(&server.tx()), vec![F::WndInc(3, 2000)]);
    assert_eq!(server.s.recv_window(k), Ok(2000));
    // The peer may now have 2000 unread: accepted, no RST.
    server.input(&data(3, 0, &[7u8; 2000]));
    assert_eq!(server.s.readable_len(k), Ok(2000));
    assert_eq!(server.read_all(k).len(), 2000);
    // Growth stops at the cap.
    assert_eq!(frames(&server.tx()), vec![F::WndInc(3, 4000)]);
    assert_eq!(server.s.recv_window(k), Ok(4000));
    server.input(&data(3, 0, &[7u8; 4000]));
    assert_eq!(server.read_all(k).len(), 4000);
    assert_eq!(frames(&server.tx()), vec![F::WndInc(3, 4000)]);
    assert_eq!(server.s.recv_window(k), Ok(4000));
    // Beyond the grown window: FlowControlError.
    server.input(&data(3, 0, &[7u8; 4001]));
    assert_eq!(
        frames(&server.tx()),
        vec![F::Rst(3, ErrorCode::FlowControlError)]
    );

    // A reader that lags (data left unread when credit is due) gets no growth.
    let mut lagging = Peer::with(Role::Server, config);
    lagging.input(&data(3, FLAG_SYN, &[7u8; 1000]));
    let k = lagging.accept();
    let mut buf = [0u8; 300];
    assert_eq!(lagging.s.read(k, &mut buf), Ok(Some(300)));
    assert_eq!(frames(&lagging.tx()), vec![F::WndInc(3, 300)]);
    assert_eq!(lagging.s.recv_window(k), Ok(1000));
}

/// A stream alone may grow to the whole budget (bounded by `max_auto_window`);
/// streams open together grow only to an equal share of it.
#[test]
fn auto_tuning_shares_the_budget_among_open_streams() {
    let config = |budget| {
        Config::default()
            .with_max_window(1000)
            .with_window_update_threshold(250)
            .with_max_auto_window(8000)
            .with_auto_window_budget(budget)
    };
    // Alone with a budget of 1500: grows to 1500, not to 2000.
    let mut alone = Peer::with(Role::Server, config(1500));
    alone.input(&data(3, FLAG_SYN, &[1u8; 1000]));
    let k = alone.accept();
    alone.read_all(k);
    assert_eq!(alone.s.recv_window(k), Ok(1500));

    // Three open with a budget of 6000: one that reads alone grows to its
    // share, 2000, however much it reads.
    let mut server = Peer::with(Role::Server, config(6000));
    let keys: Vec<_> = [3u32, 5, 7]
        .iter()
        .map(|&id| {
            server.input(&data(id, FLAG_SYN, &[1u8; 1000]));
            server.accept()
        })
        .collect();
    for &k in &keys[1..] {
        server.read_all(k);
    }
    // Stream 7 read last: stream 3 is alone only after reading
    // `max_auto_window` (8000) bytes with nobody else reading.
    let mut read = 0;
    while read < 3 * 8000 {
        read += server.read_all(keys[0]).len();
        let window = server.s.recv_window(keys[0]).unwrap() as usize;
        if read < 8000 {
            assert_eq!(window, 1000, "not alone yet after {read} bytes");
        }
        server.input(&data(3, 0, &vec![1u8; window]));
    }
    assert_eq!(
        server.s.recv_window(keys[0]),
        Ok(2000),
        "a third of the budget"
    );

    // With as many streams as the budget holds base windows, nothing grows.
    let mut many = Peer::with(Role::Server, config(3000));
    let keys: Vec<_> = [3u32, 5, 7]
        .iter()
        .map(|&id| {
            many.input(&data(id, FLAG_SYN, &[1u8; 1000]));
            many.accept()
        })
        .collect();
    for &k in &keys {
        many.read_all(k);
        assert_eq!(many.s.recv_window(k), Ok(1000));
    }
}

/// A server (1000-byte windows, auto-tuned to 4000) whose stream 3 received
/// and read its first window, and credited it doubled: 2000.
fn stream_3_grown_once() -> (Peer, StreamKey) {
    let mut server = Peer::with(Role::Server, small_windows(4000));
    server.input(&data(3, FLAG_SYN, &[7u8; 1000]));
    let k = server.accept();
    server.read_all(k);
    assert_eq!(frames(&server.tx()), vec![F::WndInc(3, 2000)]);
    (server, k)
}

/// A window does not grow while another stream reads (its bulk would queue
/// ahead of their frames), and a window that grew is not shrunk: credit is
/// never withheld, since a peer that ignores extra credit (ngrok's crate)
/// would then wait for credit that never comes.
#[test]
fn auto_tuning_pauses_while_another_stream_reads() {
    let (mut server, bulk) = stream_3_grown_once();
    // Another stream reads: the next credit of stream 3 is what it read,
    // no growth, and nothing withheld.
    server.input(&data(5, FLAG_SYN, &[1u8; 10]));
    let rpc = server.accept();
    assert_eq!(server.read_all(rpc).len(), 10);
    server.input(&data(3, 0, &[7u8; 2000]));
    assert_eq!(server.read_all(bulk).len(), 2000);
    let credited: u32 = frames(&server.tx())
        .iter()
        .map(|f| match f {
            F::WndInc(3, inc) => *inc,
            other => panic!("unexpected {other:?}"),
        })
        .sum();
    assert_eq!(credited, 2000, "every byte read is credited, no growth");
    assert_eq!(server.s.recv_window(bulk), Ok(2000));
    // Once it has read max_auto_window (4000) bytes alone, it grows again.
    server.input(&data(3, 0, &[7u8; 2000]));
    server.read_all(bulk);
    assert_eq!(server.s.recv_window(bulk), Ok(2000), "2000 alone: not yet");
    server.tx();
    server.input(&data(3, 0, &[7u8; 2000]));
    server.read_all(bulk);
    assert_eq!(server.s.recv_window(bulk), Ok(4000));
}

/// One transfer after another (a stream per download) keeps the session to
/// itself: the next stream grows at once, as the first did.
#[test]
fn a_stream_after_a_finished_one_grows_at_once() {
    let (mut server, first) = stream_3_grown_once();
    // The download ends both ways and the stream is gone.
    server.input(&data(3, FLAG_FIN, b""));
    assert!(server.read_all(first).is_empty());
    server.s.close(first).unwrap();
    server.s.release(first);
    assert_eq!(frames(&server.tx()), vec![F::Data(3, FLAG_FIN, vec![])]);
    server.input(&data(5, FLAG_SYN, &[7u8; 1000]));
    let next = server.accept();
    server.read_all(next);
    assert_eq!(frames(&server.tx()), vec![F::WndInc(5, 2000)]);
}

#[test]
fn flow_control_stall_and_resume() {
    let mut client = Peer::new(Role::Client);
    let k = client.s.open().unwrap();
    let big = vec![9u8; 300_000];
    assert_eq!(client.s.write(k, &big), Ok(262_144));
    assert_eq!(client.s.send_window(k), Ok(0));
    assert_eq!(client.tx(), data(3, FLAG_SYN, &big[..262_144]));
    assert_eq!(client.s.write(k, &big), Ok(0), "window empty: wait");
    assert_eq!(client.s.stats().window_stalls, 1);
    assert_eq!(client.tx(), b"");
    assert_eq!(client.events(), vec![]);
    client.input(&wndinc(3, 1000));
    assert_eq!(client.events(), vec![Event::Writable(k)]);
    assert_eq!(client.s.write(k, &big), Ok(1000));
    assert_eq!(client.tx(), data(3, 0, &big[..1000]));
    // WNDINC for unknown streams is ignored.
    client.input(&wndinc(99, 5));
    client.input(&wndinc(4, 5));
    assert_eq!(client.tx(), b"");
    assert!(!client.s.is_dead());
}

#[test]
fn rst_flow_control_error_on_overrun() {
    let cfg = Config::default().with_max_window(100);
    let mut server = Peer::with(Role::Server, cfg);
    server.input(&data(3, FLAG_SYN, &[1u8; 60]));
    server.input(&data(3, 0, &[2u8; 40])); // exactly the window: fine
    assert_eq!(server.tx(), b"");
    // One byte over: RST FlowControlError (example #10 layout), payload drained,
    // and the following frame is parsed.
    server.input(&cat(&[data(3, 0, &[3u8; 7]), data(5, FLAG_SYN, b"next")]));
    assert_eq!(server.tx(), rst(3, ErrorCode::FlowControlError));
    let k = server.accept();
    let k5 = server.accept();
    assert_eq!(server.read_all(k5), b"next");
    // The data received within the window is still readable, then the error.
    let mut buf = [0u8; 200];
    assert_eq!(server.s.read(k, &mut buf), Ok(Some(100)));
    assert_eq!(
        server.s.read(k, &mut buf),
        Err(Error::LocalReset(ErrorCode::FlowControlError))
    );
    // A single frame larger than the window on a fresh stream is refused too.
    server.input(&data(7, FLAG_SYN, &[0u8; 101]));
    assert_eq!(server.tx(), rst(7, ErrorCode::FlowControlError));
}

#[test]
fn rst_stream_refused_after_go_away_drains_payload() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"a"));
    let k = server.accept();
    server.s.go_away(ErrorCode::NoError, b"bye").unwrap();
    assert_eq!(server.tx(), goaway(3, ErrorCode::NoError, b"bye"));
    server.input(&cat(&[
        data(5, FLAG_SYN, b"refused payload"),
        data(3, 0, b"b"),
        data(7, FLAG_SYN | FLAG_FIN, b""),
    ]));
    assert_eq!(
        server.tx(),
        cat(&[
            rst(5, ErrorCode::StreamRefused),
            rst(7, ErrorCode::StreamRefused)
        ])
    );
    assert_eq!(server.s.accept(), Ok(None));
    assert_eq!(server.read_all(k), b"ab");
    assert_eq!(server.s.stats().streams_refused, 2);
    // Existing streams carry on; the session is alive.
    server.s.write(k, b"reply").unwrap();
    assert_eq!(server.tx(), data(3, 0, b"reply"));
}

#[test]
fn rst_accept_queue_full_forgets_stream_and_drains() {
    let cfg = Config::default().with_accept_backlog(2);
    let mut server = Peer::with(Role::Server, cfg);
    server.input(&cat(&[
        data(3, FLAG_SYN, b"one"),
        data(5, FLAG_SYN, b"two"),
        data(7, FLAG_SYN, b"three is refused"),
        data(3, 0, b"!"),
    ]));
    assert_eq!(server.tx(), hex("00 00 04 00 00 00 00 07 00 00 00 09"));
    assert_eq!(server.s.stream_count(), 2);
    assert_eq!(server.s.accept_queue_len(), 2);
    // The refused stream is forgotten: its late data is an unknown stream.
    server.input(&data(7, 0, b"more"));
    assert_eq!(server.tx(), rst(7, ErrorCode::StreamClosed));
    let k3 = server.accept();
    assert_eq!(server.read_all(k3), b"one!");
    // Room again: the next SYN is accepted.
    server.input(&data(9, FLAG_SYN, b""));
    assert_eq!(server.tx(), b"");
    assert_eq!(server.s.accept_queue_len(), 2);
}

#[test]
fn unknown_frame_types_drained_and_ignored() {
    let mut server = Peer::new(Role::Server);
    let mut input = Vec::new();
    for ty in 4..=15u8 {
        let payload = vec![ty; ty as usize * 3];
        // Whatever the stream id (0, reserved bit) or flags.
        for id in [0, 3, 0x8000_0001, 0xFFFF_FFFF] {
            input.extend(raw(
                FrameType::Unknown(ty),
                ty & 0xF,
                id,
                payload.len() as u32,
                &payload,
            ));
        }
    }
    input.extend(data(3, FLAG_SYN, b"after"));
    server.input(&input);
    assert_eq!(server.tx(), b"", "no reply to unknown frames");
    assert!(!server.s.is_dead());
    let k = server.accept();
    assert_eq!(server.read_all(k), b"after");
}

#[test]
fn goaway_from_peer_fails_only_our_streams_above_last() {
    let mut client = Peer::new(Role::Client);
    let keys: Vec<StreamKey> = (0..4).map(|_| client.s.open().unwrap()).collect(); // 3 5 7 9
    for &k in &keys[..3] {
        client.s.write(k, b"x").unwrap();
    }
    client.tx();
    client.input(&data(2, FLAG_SYN, b"srv"));
    let remote = client.accept();
    // Streams 7 and 9 wait to read; 3 waits too.
    let mut buf = [0u8; 4];
    for &k in &[keys[0], keys[2], keys[3]] {
        assert_eq!(client.s.read(k, &mut buf), Ok(None));
    }
    client.input(&goaway(5, ErrorCode::NoError, b"going"));
    assert_eq!(client.tx(), b"", "no RST: the peer never saw those streams");
    let ev = client.events();
    assert!(ev.contains(&Event::GoAway));
    assert!(ev.contains(&Event::Readable(keys[2])));
    assert!(ev.contains(&Event::Readable(keys[3])));
    assert!(!ev.contains(&Event::Readable(keys[0])));
    assert_eq!(client.s.write(keys[2], b"y"), Err(Error::RemoteGoneAway));
    assert_eq!(client.s.write(keys[3], b"y"), Err(Error::RemoteGoneAway));
    assert_eq!(client.s.read(keys[3], &mut buf), Err(Error::RemoteGoneAway));
    // At or below last: alive; remote streams: alive.
    assert_eq!(client.s.write(keys[0], b"y"), Ok(1));
    assert_eq!(client.s.write(keys[1], b"y"), Ok(1));
    assert_eq!(client.s.write(remote, b"y"), Ok(1));
    assert_eq!(
        client.tx(),
        cat(&[data(3, 0, b"y"), data(5, 0, b"y"), data(2, 0, b"y")])
    );
    assert_eq!(client.s.open(), Err(Error::RemoteGoneAway));
    assert_eq!(
        client.s.remote_goaway(),
        Some((ErrorCode::NoError, &b"going"[..]))
    );
    // New inbound SYNs are still accepted after the peer's GOAWAY.
    client.input(&data(4, FLAG_SYN, b""));
    assert_eq!(client.tx(), b"");
    assert!(client.s.accept().unwrap().is_some());
    assert!(!client.s.is_dead());
}

#[test]
fn goaway_followed_by_frames_does_not_desync() {
    let input = cat(&[
        goaway(0, ErrorCode::InternalError, b"debug text of some length"),
        data(3, FLAG_SYN, b"hello"),
        goaway(0, ErrorCode::Other(77), b""),
        data(3, FLAG_FIN, b"!"),
    ]);
    // Whole, and split at every byte.
    for split in 0..=input.len() {
        let mut server = Peer::new(Role::Server);
        server.input(&input[..split]);
        server.input(&input[split..]);
        assert_eq!(server.tx(), b"");
        let k = server.accept();
        assert_eq!(server.read_all(k), b"hello!");
        assert_eq!(
            server.s.remote_goaway(),
            Some((ErrorCode::Other(77), &b""[..]))
        );
        assert!(!server.s.is_dead());
    }
}

#[test]
fn goaway_debug_is_capped_but_fully_drained() {
    let cfg = Config::default().with_max_goaway_debug(4);
    let mut server = Peer::with(Role::Server, cfg);
    server.input(&cat(&[
        goaway(0, ErrorCode::NoError, b"0123456789"),
        data(3, FLAG_SYN, b"x"),
    ]));
    assert_eq!(
        server.s.remote_goaway(),
        Some((ErrorCode::NoError, &b"0123"[..]))
    );
    let k = server.accept();
    assert_eq!(server.read_all(k), b"x");
}

#[test]
fn duplicate_fin_tolerated() {
    let mut server = Peer::new(Role::Server);
    server.input(&cat(&[
        data(3, FLAG_SYN, b"a"),
        data(3, FLAG_FIN, b""),
        data(3, FLAG_FIN, b""),
    ]));
    let k = server.accept();
    assert_eq!(server.read_all(k), b"a");
    let mut buf = [0u8; 4];
    assert_eq!(server.s.read(k, &mut buf), Ok(Some(0)));
    // After both sides FIN the id is forgotten; yet another FIN is still ignored.
    server.s.close_write(k).unwrap();
    server.input(&data(3, FLAG_FIN, b""));
    assert_eq!(server.tx(), data(3, FLAG_FIN, b""));
    assert!(!server.s.is_dead());
}

#[test]
fn fin_only_on_unknown_stream_ignored() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(9, FLAG_FIN, b""));
    server.input(&data(10, FLAG_FIN, b""));
    assert_eq!(server.tx(), b"");
    assert!(!server.s.is_dead());
}

#[test]
fn data_on_unknown_stream_gets_rst_stream_closed() {
    let mut server = Peer::new(Role::Server);
    // Zero-length without FIN, with payload, with payload and FIN.
    server.input(&cat(&[
        data(9, 0, b""),
        data(11, 0, b"abc"),
        data(13, FLAG_FIN, b"abc"),
        data(3, FLAG_SYN, b"ok"),
    ]));
    assert_eq!(
        server.tx(),
        cat(&[
            rst(9, ErrorCode::StreamClosed),
            rst(11, ErrorCode::StreamClosed),
            rst(13, ErrorCode::StreamClosed),
        ])
    );
    let k = server.accept();
    assert_eq!(server.read_all(k), b"ok");
}

#[test]
fn data_after_fin_gets_rst_stream_closed_once() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN | FLAG_FIN, b"done"));
    let k = server.accept();
    server.input(&data(3, 0, b"more"));
    assert_eq!(server.tx(), rst(3, ErrorCode::StreamClosed));
    // Only one RST per stream; later frames are absorbed while it lingers.
    server.input(&data(3, 0, b"more"));
    assert_eq!(server.tx(), b"");
    // The data before the FIN is still readable.
    let mut buf = [0u8; 8];
    assert_eq!(server.s.read(k, &mut buf), Ok(Some(4)));
}

#[test]
fn duplicate_syn_kills_session() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"a"));
    let k = server.accept();
    let mut buf = [0u8; 4];
    server.read_all(k);
    assert_eq!(server.s.read(k, &mut buf), Ok(None));
    server.input(&data(3, FLAG_SYN, b"b"));
    assert!(server.assert_died(3, ErrorCode::ProtocolError).is_empty());
    // The blocked reader of the first stream is woken (Go's duplicate_syn_test).
    assert_eq!(server.s.read(k, &mut buf), Err(Error::SessionClosed));
}

#[test]
fn bad_fixed_lengths_are_frame_size_errors() {
    let cases = [
        raw(FrameType::Rst, 0, 3, 3, &[0, 0, 4]),
        raw(FrameType::Rst, 0, 3, 5, &[0, 0, 0, 4, 0]),
        raw(FrameType::WndInc, 0, 3, 5, &[0, 0, 0, 4, 0]),
        raw(FrameType::WndInc, 0, 3, 0, &[]),
        raw(FrameType::GoAway, 0, 0, 7, &[0; 7]),
        raw(FrameType::GoAway, 0, 0, 0, &[]),
    ];
    for frame in cases {
        let mut client = Peer::new(Role::Client);
        client.input(&frame);
        assert!(client.assert_died(0, ErrorCode::FrameSizeError).is_empty());
    }
}

#[test]
fn protocol_errors_kill_the_session() {
    let cases = [
        // Zero increment (the top bit is masked first).
        wndinc_raw(3, 0),
        wndinc_raw(3, 0x8000_0000),
        // Stream id 0 on RST / DATA / WNDINC; GOAWAY on a stream.
        raw(FrameType::Rst, 0, 0, 4, &[0, 0, 0, 1]),
        raw(FrameType::Data, 0, 0, 1, b"x"),
        wndinc_raw(0, 1),
        raw(FrameType::GoAway, 0, 3, 8, &[0; 8]),
    ];
    for frame in cases {
        let mut server = Peer::new(Role::Server);
        server.input(&frame);
        assert!(server.assert_died(1, ErrorCode::ProtocolError).is_empty());
    }
}

fn wndinc_raw(id: u32, inc: u32) -> Vec<u8> {
    raw(FrameType::WndInc, 0, id, 4, &inc.to_be_bytes())
}

#[test]
fn death_goaway_carries_highest_accepted_peer_id_and_is_last() {
    // Nothing accepted: client 0, server 1 (e.g. examples #14 and #15).
    let mut c = Peer::new(Role::Client);
    c.s.close_session();
    assert_eq!(
        c.tx(),
        hex("00 00 10 30 00 00 00 00 00 00 00 00 00 00 00 00 6E 6F 20 65 72 72 6F 72")
    );
    let mut s = Peer::new(Role::Server);
    s.s.close_session();
    assert_eq!(
        frames(&s.tx()),
        vec![F::GoAway(1, ErrorCode::NoError, "no error".into())]
    );

    // Server that accepted 3 then 7 and then dies of a zero WNDINC.
    let mut s = Peer::new(Role::Server);
    s.input(&data(3, FLAG_SYN, b"a"));
    s.input(&data(7, FLAG_SYN, b"b"));
    let k3 = s.accept();
    let k7 = s.accept();
    let mine = s.s.open().unwrap();
    s.s.write(mine, b"queued before death").unwrap();
    s.input(&wndinc_raw(7, 0));
    // Frames queued before death go out first, then the GOAWAY, then nothing.
    assert_eq!(
        s.assert_died(7, ErrorCode::ProtocolError),
        vec![F::Data(2, FLAG_SYN, b"queued before death".to_vec())]
    );
    // Writes, WNDINC (reads), RST and FIN are all refused after death.
    assert_eq!(s.s.write(k3, b"x"), Err(Error::SessionClosed));
    assert_eq!(s.s.write(mine, b"x"), Err(Error::SessionClosed));
    let mut buf = vec![0u8; 10];
    assert_eq!(
        s.s.read(k7, &mut buf),
        Ok(Some(1)),
        "buffered data still readable"
    );
    assert_eq!(s.s.read(k7, &mut buf), Err(Error::SessionClosed));
    let _ = s.s.reset(s.now, k3, ErrorCode::StreamCancelled);
    assert!(s.s.close_write(k3).is_err());
    let _ = s.s.close(k7);
    assert_eq!(
        s.s.go_away(ErrorCode::NoError, b""),
        Err(Error::SessionClosed)
    );
    s.s.close_session();
    s.s.handle_eof();
    s.s.handle_timeout(s.now + Duration::from_secs(60));
    assert_eq!(s.tx(), b"");
    assert!(
        matches!(s.s.error(), Some(Error::Protocol { .. })),
        "first error kept"
    );
}

#[test]
fn death_goaway_last_is_latest_accepted_big_reads_credit_nothing() {
    // A large read after death credits nothing (WNDINC refused).
    let mut s = Peer::new(Role::Server);
    s.input(&data(3, FLAG_SYN, &vec![0u8; 200_000]));
    let k = s.accept();
    s.s.close_session();
    assert_eq!(
        frames(&s.tx()),
        vec![F::GoAway(3, ErrorCode::NoError, "no error".into())]
    );
    assert_eq!(s.read_all(k).len(), 200_000);
    assert_eq!(s.tx(), b"");
}

#[test]
fn close_session_sends_reference_examples_13_and_14() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(7, FLAG_SYN, b""));
    server.s.close_session();
    assert_eq!(
        server.tx(),
        hex("00 00 10 30 00 00 00 00 00 00 00 07 00 00 00 00 6E 6F 20 65 72 72 6F 72")
    );
    assert_eq!(server.s.error(), Some(&Error::SessionClosed));
    server.s.close_session();
    assert_eq!(server.tx(), b"", "a second close does nothing");

    let mut client = Peer::new(Role::Client);
    let k = client.s.open().unwrap();
    client.s.close_session();
    assert_eq!(
        client.tx(),
        hex("00 00 10 30 00 00 00 00 00 00 00 00 00 00 00 00 6E 6F 20 65 72 72 6F 72")
    );
    assert_eq!(client.s.write(k, b"x"), Err(Error::SessionClosed));
    assert_eq!(client.events(), vec![Event::Dead]);
}

#[test]
fn eof_is_peer_eof_with_reference_example_16() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b""));
    assert!(server.s.accept().unwrap().is_some());
    assert_eq!(server.s.accept(), Ok(None));
    server.s.handle_eof();
    assert_eq!(
        server.tx(),
        hex("00 00 21 30 00 00 00 00 00 00 00 03 00 00 00 0F 72 65 61 64 20 45 4F 46 20 66 72 6F 6D 20 72 65 6D 6F 74 65 20 70 65 65 72")
    );
    assert_eq!(server.s.error().unwrap().code(), ErrorCode::PeerEof);
    let ev = server.events();
    assert!(ev.contains(&Event::Accept), "a waiting acceptor is woken");
    assert!(ev.contains(&Event::Dead));
    assert_eq!(server.s.accept(), Err(Error::SessionClosed));

    // EOF in the middle of a frame is still PeerEof.
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"abcdef")[..10]);
    server.s.handle_eof();
    assert_eq!(server.s.error().unwrap().code(), ErrorCode::PeerEof);
}

#[test]
fn peer_rst_fails_stream_after_buffered_data() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"buffered"));
    let k = server.accept();
    server.s.write(k, b"w").unwrap();
    server.tx();
    server.input(&rst(3, ErrorCode::StreamCancelled));
    assert_eq!(server.tx(), b"", "no reply to RST");
    let mut buf = [0u8; 64];
    assert_eq!(server.s.read(k, &mut buf), Ok(Some(8)));
    assert_eq!(&buf[..8], b"buffered");
    assert_eq!(
        server.s.read(k, &mut buf),
        Err(Error::RemoteReset(ErrorCode::StreamCancelled))
    );
    assert_eq!(
        server.s.write(k, b"x"),
        Err(Error::RemoteReset(ErrorCode::StreamCancelled))
    );
    // The id is forgotten at once: late data gets RST StreamClosed; RST for
    // unknown streams is ignored.
    server.input(&rst(3, ErrorCode::StreamClosed));
    server.input(&rst(41, ErrorCode::StreamClosed));
    assert_eq!(server.tx(), b"");
    server.input(&data(3, 0, b"late"));
    assert_eq!(server.tx(), rst(3, ErrorCode::StreamClosed));
    server.s.release(k);
    assert_eq!(server.s.stream_count(), 0);
}

#[test]
fn peer_rst_wakes_waiting_reader_and_writer() {
    let mut client = Peer::new(Role::Client);
    let k = client.s.open().unwrap();
    client.s.write(k, &vec![0u8; 262_144]).unwrap();
    client.tx();
    assert_eq!(client.s.write(k, b"x"), Ok(0));
    let mut buf = [0u8; 4];
    assert_eq!(client.s.read(k, &mut buf), Ok(None));
    client.input(&rst(3, ErrorCode::FlowControlError));
    let ev = client.events();
    assert!(ev.contains(&Event::Readable(k)) && ev.contains(&Event::Writable(k)));
}

#[test]
fn syn_flood_beyond_backlog_is_bounded() {
    let mut server = Peer::new(Role::Server);
    let backlog = server.s.config().accept_backlog;
    let mut spare = BytesMut::new();
    let mut rsts = 0usize;
    let mut id = 1u32;
    for round in 0..100 {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend(data(id, FLAG_SYN, b"flood"));
            id += 2;
        }
        server.input(&input);
        assert!(server.s.stream_count() <= backlog);
        if server.s.poll_transmit(&mut spare) {
            for f in frames(&spare) {
                match f {
                    F::Rst(_, ErrorCode::AcceptQueueFull) => rsts += 1,
                    other => panic!("round {round}: {other:?}"),
                }
            }
        }
    }
    assert_eq!(rsts, 10_000 - backlog);
    assert_eq!(server.s.stream_count(), backlog);
    assert_eq!(server.s.stats().streams_refused as usize, 10_000 - backlog);
    assert!(!server.s.is_dead());
}

#[test]
fn stale_stream_key_after_release() {
    let mut client = Peer::new(Role::Client);
    let old = client.s.open().unwrap();
    client.s.release(old);
    assert_eq!(client.tx(), data(3, FLAG_SYN | FLAG_FIN, b""));
    assert_eq!(client.s.stream_count(), 0);
    // The slot is reused by the next stream; the old key must not reach it.
    let new = client.s.open().unwrap();
    assert_eq!(client.s.stream_id(new), Ok(5));
    assert_eq!(client.s.write(old, b"x"), Err(Error::StaleHandle));
    assert_eq!(client.s.read(old, &mut [0u8; 4]), Err(Error::StaleHandle));
    assert_eq!(client.s.stream_id(old), Err(Error::StaleHandle));
    assert_eq!(client.s.close(old), Err(Error::StaleHandle));
    assert_eq!(
        client.s.reset(client.now, old, ErrorCode::StreamCancelled),
        Err(Error::StaleHandle)
    );
    client.s.release(old); // harmless
    assert_eq!(client.s.write(new, b"x"), Ok(1));
    assert_eq!(client.tx(), data(5, FLAG_SYN, b"x"));
}

#[test]
fn max_streams_refuses_and_open_fails() {
    let cfg = Config::default().with_max_streams(2);
    let mut server = Peer::with(Role::Server, cfg);
    let mine = server.s.open().unwrap();
    server.input(&data(3, FLAG_SYN, b"a"));
    server.input(&data(5, FLAG_SYN, b"b"));
    assert_eq!(server.tx(), rst(5, ErrorCode::StreamRefused));
    assert_eq!(server.s.open(), Err(Error::TooManyStreams(2)));
    // Freeing a stream makes room again.
    server.s.release(mine);
    server.tx();
    server.input(&data(7, FLAG_SYN, b""));
    assert_eq!(server.tx(), b"");
    assert_eq!(server.s.stream_count(), 2);
}

#[test]
fn control_backlog_limit_is_enhance_your_calm() {
    let cfg = Config::default()
        .with_max_send_buffer(64)
        .with_max_control_backlog(64);
    let mut server = Peer::with(Role::Server, cfg);
    // Each DATA on an unknown stream demands a 12-byte RST; we never transmit.
    let mut input = Vec::new();
    for i in 0..20 {
        input.extend(data(1001 + 2 * i, 0, b"x"));
    }
    server.input(&input);
    assert!(server.s.is_dead());
    assert_eq!(server.s.error().unwrap().code(), ErrorCode::EnhanceYourCalm);
    let fs = frames(&server.tx());
    // 128 bytes allowed: the 11th RST (132 bytes) crosses the limit.
    assert_eq!(fs.len(), 12);
    assert!(matches!(
        fs.last(),
        Some(F::GoAway(1, ErrorCode::EnhanceYourCalm, _))
    ));
}

#[test]
fn reset_linger_absorbs_late_data_then_forgets() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"a"));
    let k = server.accept();
    server
        .s
        .reset(server.now, k, ErrorCode::StreamCancelled)
        .unwrap();
    assert_eq!(server.tx(), rst(3, ErrorCode::StreamCancelled));
    assert_eq!(
        server.s.read(k, &mut [0u8; 4]),
        Err(Error::LocalReset(ErrorCode::StreamCancelled)),
        "reset drops buffered data"
    );
    let linger = server.s.config().reset_linger;
    assert_eq!(server.s.poll_timeout(), Some(server.now + linger));
    server.input(&cat(&[
        data(3, 0, b"late"),
        wndinc(3, 10),
        data(3, FLAG_FIN, b""),
    ]));
    assert_eq!(server.tx(), b"", "absorbed silently while lingering");
    server
        .s
        .handle_timeout(server.now + linger - Duration::from_millis(1));
    server.input(&data(3, 0, b"late"));
    assert_eq!(server.tx(), b"");
    server.s.handle_timeout(server.now + linger);
    assert_eq!(server.s.poll_timeout(), None);
    server.input(&data(3, 0, b"late"));
    assert_eq!(server.tx(), rst(3, ErrorCode::StreamClosed));
    // A reset of a stream the peer never saw sends nothing.
    let mine = server.s.open().unwrap();
    server
        .s
        .reset(server.now, mine, ErrorCode::StreamCancelled)
        .unwrap();
    assert_eq!(server.tx(), b"");
    server.s.release(k);
    server.s.release(mine);
}

/// Issue 11: the linger is dated by the reset's own time. It used to be
/// dated by the time of the last input, so on a session idle for longer than
/// the linger a reset stream was forgotten at once and the peer's late
/// frames (sent before it saw our RST) were answered with RST StreamClosed.
#[test]
fn reset_on_an_idle_session_lingers_from_the_reset() {
    let mut server = Peer::new(Role::Server);
    server.input(&data(3, FLAG_SYN, b"a"));
    let k = server.accept();
    let linger = server.s.config().reset_linger;
    // Idle for twice the linger, then the application resets.
    let later = server.now + 2 * linger;
    server
        .s
        .reset(later, k, ErrorCode::StreamCancelled)
        .unwrap();
    assert_eq!(server.tx(), rst(3, ErrorCode::StreamCancelled));
    assert_eq!(server.s.poll_timeout(), Some(later + linger));
    // The clock moves on a little; the peer's late data still arrives.
    server.s.handle_timeout(later + Duration::from_millis(100));
    server
        .s
        .handle_input(later + Duration::from_millis(100), &data(3, 0, b"late"));
    assert_eq!(server.tx(), b"", "absorbed: the stream still lingers");
    server.s.handle_timeout(later + linger);
    server.s.handle_input(later + linger, &data(3, 0, b"late"));
    assert_eq!(
        server.tx(),
        rst(3, ErrorCode::StreamClosed),
        "forgotten after the linger"
    );
    server.s.release(k);
}

#[test]
fn reserved_bit_and_max_ids() {
    // A Go client's last id is accepted by a server.
    let mut server = Peer::new(Role::Server);
    server.input(&data(MAX_STREAM_ID, FLAG_SYN, b"x"));
    let k = server.accept();
    assert_eq!(server.s.stream_id(k), Ok(MAX_STREAM_ID));
    // A set reserved bit is a protocol error (reference §1.3 recommendation).
    server.input(&raw(FrameType::Data, FLAG_SYN, 0x8000_0003, 0, &[]));
    assert!(server
        .assert_died(MAX_STREAM_ID, ErrorCode::ProtocolError)
        .is_empty());
}

#[test]
fn goaway_last_id_is_highest_accepted_even_when_syns_arrive_out_of_order() {
    // Lazy SYN lets a peer's streams reach us out of id order (open 3, open 5,
    // write on 5 first). GOAWAY's last id must still be the highest accepted
    // id, or the peer fails stream 5 locally (RemoteGoneAway, no RST) while
    // we keep it open and wait on it forever.
    let mut server = Peer::new(Role::Server);
    server.input(&cat(&[data(5, FLAG_SYN, b"b"), data(3, FLAG_SYN, b"a")]));
    server.s.go_away(ErrorCode::NoError, b"").unwrap();
    assert_eq!(server.tx(), goaway(5, ErrorCode::NoError, b""));
    server.s.close_session();
    assert_eq!(
        frames(&server.tx()),
        vec![F::GoAway(5, ErrorCode::NoError, "no error".into())]
    );

    // The same through a client: stream 5 survives the server's GOAWAY.
    let mut client = Peer::new(Role::Client);
    let k3 = client.s.open().unwrap();
    let k5 = client.s.open().unwrap();
    client.s.write(k5, b"b").unwrap();
    client.s.write(k3, b"a").unwrap();
    let mut server = Peer::new(Role::Server);
    server.input(&client.tx());
    server.s.go_away(ErrorCode::NoError, b"").unwrap();
    client.input(&server.tx());
    assert_eq!(client.s.write(k5, b"more"), Ok(4));
    assert_eq!(client.s.write(k3, b"more"), Ok(4));
}

/// `read_with` lends the buffered bytes in place: what the closure does not
/// consume stays for the next read, consumed bytes are credited like `read`'s,
/// and the end of the stream is shown as one empty slice.
#[test]
fn read_with_consumes_in_place() {
    let mut server = Peer::with(Role::Server, no_auto_tuning());
    let window = Config::default().max_window as usize;
    let payload: Vec<u8> = (0..window).map(|i| (i % 251) as u8).collect();
    server.input(&data(3, FLAG_SYN, &payload));
    let k = server.accept();
    // Nothing consumed: everything stays.
    assert_eq!(
        server.s.read_with(k, |b| {
            assert_eq!(b, &payload[..]);
            0
        }),
        Ok(Some(0))
    );
    assert_eq!(server.s.readable_len(k), Ok(window));
    // Consume in two steps; the second sees exactly the rest.
    assert_eq!(server.s.read_with(k, |_| 1000), Ok(Some(1000)));
    assert_eq!(
        server.s.read_with(k, |b| {
            assert_eq!(b, &payload[1000..]);
            b.len()
        }),
        Ok(Some(window - 1000))
    );
    // Everything consumed was credited (auto-tuning off: exactly what was read).
    let credited: u32 = frames(&server.tx())
        .iter()
        .map(|f| match f {
            F::WndInc(3, inc) => *inc,
            other => panic!("unexpected {other:?}"),
        })
        .sum();
    assert_eq!(credited as usize, window);
    // Nothing buffered: the closure is not called and the caller must wait.
    assert_eq!(server.s.read_with(k, |_| unreachable!()), Ok(None));
    // FIN: one empty slice.
    server.input(&data(3, FLAG_FIN, b""));
    let mut seen = None;
    assert_eq!(
        server.s.read_with(k, |b| {
            seen = Some(b.len());
            0
        }),
        Ok(Some(0))
    );
    assert_eq!(seen, Some(0));
    // A closure claiming more than it was shown is clamped.
    let mut other = Peer::with(Role::Server, no_auto_tuning());
    other.input(&data(3, FLAG_SYN, b"abc"));
    let k = other.accept();
    assert_eq!(other.s.read_with(k, |_| 99), Ok(Some(3)));
}

/// Many writers that never run out of data share the outgoing buffer round
/// robin: streams that found no room go first after a transmission, streams
/// that used their share go after them, so every stream gets the same bytes.
#[test]
fn writers_share_the_send_buffer_round_robin() {
    let config = Config::default()
        // never window-bound: only the buffer decides
        .with_max_window(1 << 30)
        .with_max_send_buffer(64 * 1024);
    let mut client = Session::new(Role::Client, config);
    let keys: Vec<StreamKey> = (0..8).map(|_| client.open().unwrap()).collect();
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = vec![0usize; keys.len()];
    // The order tasks would run in: every stream once, then whoever is woken.
    let mut runnable: Vec<StreamKey> = keys.clone();
    let mut spare = BytesMut::new();
    for _ in 0..200 {
        for key in runnable.drain(..) {
            let i = keys.iter().position(|&k| k == key).unwrap();
            loop {
                let n = client.write(key, &chunk).unwrap();
                if n == 0 {
                    break;
                }
                sent[i] += n;
            }
        }
        assert!(client.poll_transmit(&mut spare));
        while let Some(event) = client.poll_event() {
            if let Event::Writable(k) = event {
                runnable.push(k);
            }
        }
    }
    let total: usize = sent.iter().sum();
    let squares: f64 = sent.iter().map(|&b| (b as f64).powi(2)).sum();
    let jain = (total as f64).powi(2) / (sent.len() as f64 * squares);
    assert!(
        jain > 0.99,
        "Jain's fairness {jain:.3}, bytes per stream {sent:?}"
    );
}

/// A write is not cut into a sliver by a nearly full send buffer: with room
/// for only 2 of 4 bytes it waits, then goes out whole in one frame (a typed
/// stream's type must reach a Go peer in one frame).
#[test]
fn nearly_full_buffer_does_not_split_a_small_write() {
    let config = Config::default().with_max_send_buffer(1000);
    let mut client = Session::new(Role::Client, config);
    let filler = client.open().unwrap();
    // Fill the buffer to 2 bytes short: header 8 + payload 990.
    assert_eq!(client.write(filler, &[0u8; 990]).unwrap(), 990);
    assert_eq!(client.pending_transmit(), 998);
    let typed = client.open().unwrap();
    assert_eq!(
        client.write(typed, &[0, 0, 0, 1]).unwrap(),
        0,
        "waits rather than split"
    );
    let mut wire = BytesMut::new();
    assert!(client.poll_transmit(&mut wire));
    assert_eq!(client.poll_event(), Some(Event::Writable(typed)));
    assert_eq!(client.write(typed, &[0, 0, 0, 1]).unwrap(), 4);
    assert!(client.poll_transmit(&mut wire));
    assert_eq!(frames(&wire), vec![F::Data(5, FLAG_SYN, vec![0, 0, 0, 1])]);
}
