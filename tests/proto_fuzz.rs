//! A structured fuzzer of `proto::Session` on stable Rust (issue 8).
//!
//! Two drivers, both from a seeded PRNG so that every failure replays:
//!
//! - `hostile_peer`: one session fed arbitrary frame sequences and mutated
//!   valid traces (bit flips, truncations, splices, lengths up to 0xFFFFFF),
//!   cut into random chunks, with the application's calls (open, write,
//!   read, close_write, close, reset, release, go_away, accept, timers)
//!   interleaved. Invariants: no panic; what it holds stays within its
//!   memory budget (and it always lets the application get back under it);
//!   the outgoing buffer stays bounded; everything it transmits decodes as
//!   valid frames; a session that dies sends one GOAWAY whose code is its
//!   error's wire code, and nothing after it; its memory accounting matches
//!   the bytes its streams actually hold.
//! - `healthy_pair`: two sessions wired together with random chunking and
//!   random application calls; every byte of every stream is checked by
//!   position (nothing lost, duplicated or reordered) and every stream that
//!   was not reset ends with exactly the bytes written.
//!
//! `cargo test` runs a bounded number of cases (a few seconds in debug).
//! `scripts/fuzz.sh` runs many more in release: `MUXADO_FUZZ_FRAMES` sets
//! how many frames the hostile driver must feed in total,
//! `MUXADO_FUZZ_SEED` the first seed. A failing case prints its seed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use muxado::frame::{Decode, Frame, FLAG_FIN, FLAG_SYN};
use muxado::proto::{MemoryBudget, Role, Session, StreamKey, STREAM_COST};
use muxado::{Config, Error, ErrorCode};

// ---- PRNG --------------------------------------------------------------------

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// Runs `case(seed)` for seeds from `first`, printing the seed of a case that panics.
fn run_case<T>(name: &str, seed: u64, case: impl FnOnce(u64) -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(seed))) {
        Ok(v) => v,
        Err(e) => {
            let count = if name == "healthy_pair" {
                "MUXADO_FUZZ_PAIRS"
            } else {
                "MUXADO_FUZZ_FRAMES"
            };
            eprintln!(
                "{name}: case with seed {seed} failed; replay it alone with \
                 MUXADO_FUZZ_SEED={seed} {count}=1 cargo test --test proto_fuzz {name}"
            );
            std::panic::resume_unwind(e)
        }
    }
}

// ---- frame generation ----------------------------------------------------------

const RST: u8 = 0;
const DATA: u8 = 1;
const WNDINC: u8 = 2;
const GOAWAY: u8 = 3;

fn header(out: &mut Vec<u8>, len: u32, ty: u8, flags: u8, id: u32) {
    let l = len.to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], (ty << 4) | (flags & 0xF)]);
    out.extend_from_slice(&id.to_be_bytes());
}

/// A stream id as a hostile peer would pick one: mostly the peer's own
/// parity and small (so they hit live streams), sometimes anything.
fn pick_id(rng: &mut Rng, target: Role) -> u32 {
    let remote_odd = target == Role::Server;
    let small = rng.range(0, 24) as u32;
    match rng.below(12) {
        0 => 0,
        1 => rng.u32() & 0x7FFF_FFFF,
        2 => rng.u32(),
        3 | 4 => 2 * small + u32::from(!remote_odd) + 2, // our parity
        _ => 2 * small + u32::from(remote_odd) + 2,      // the peer's parity
    }
}

/// Appends one random frame: well-formed (right lengths, known types,
/// reserved bits clear, SYN only on the peer's ids) when `wild` is false,
/// anything at all when it is true.
fn random_frame(rng: &mut Rng, target: Role, wild: bool, syns: &mut u64, out: &mut Vec<u8>) {
    if !wild {
        return tame_frame(rng, target, syns, out);
    }
    let id = pick_id(rng, target);
    match rng.below(20) {
        0..=10 => {
            let mut flags = 0;
            if rng.chance(35) {
                flags |= FLAG_SYN;
            }
            if rng.chance(15) {
                flags |= FLAG_FIN;
            }
            if rng.chance(3) {
                flags |= rng.below(16) as u8;
            }
            let len = match rng.below(20) {
                0..=11 => rng.range(0, 200),
                12..=17 => rng.range(0, 5000),
                18 => rng.range(0, 70_000),
                _ => 0,
            };
            // Sometimes the header lies about the length (the rest of the
            // input is then taken as payload).
            let claimed = if rng.chance(3) {
                rng.below(0x100_0000) as u32
            } else {
                len as u32
            };
            header(out, claimed, DATA, flags, id);
            let start = out.len();
            out.resize(start + len, 0);
            let fill = rng.next() as u8;
            for (i, b) in out[start..].iter_mut().enumerate() {
                *b = fill.wrapping_add(i as u8);
            }
        }
        11..=13 => {
            let len = if rng.chance(5) {
                rng.range(0, 9) as u32
            } else {
                4
            };
            header(
                out,
                len,
                1,
                rng.below(16) as u8 * u8::from(rng.chance(5)),
                id,
            );
            let code = if rng.chance(80) {
                rng.below(16) as u32
            } else {
                rng.u32()
            };
            out.extend_from_slice(&code.to_be_bytes()[..len.min(4) as usize]);
            out.resize(out.len() + len.saturating_sub(4) as usize, 0);
        }
        14..=16 => {
            let len = if rng.chance(5) {
                rng.range(0, 9) as u32
            } else {
                4
            };
            header(out, len, WNDINC, 0, id);
            let inc = match rng.below(6) {
                0 => 0,
                1 => rng.u32(),
                2 => 0x7FFF_FFFF,
                _ => rng.range(1, 70_000) as u32,
            };
            out.extend_from_slice(&inc.to_be_bytes()[..len.min(4) as usize]);
            out.resize(out.len() + len.saturating_sub(4) as usize, 0);
        }
        17 => {
            let debug = rng.range(0, 40);
            let len = if rng.chance(5) {
                rng.range(0, 12) as u32
            } else {
                8 + debug as u32
            };
            header(out, len, GOAWAY, 0, if rng.chance(80) { 0 } else { id });
            let last = if rng.chance(50) {
                rng.range(0, 60) as u32
            } else {
                rng.u32()
            };
            out.extend_from_slice(&last.to_be_bytes());
            out.extend_from_slice(&(rng.below(16) as u32).to_be_bytes());
            out.resize(out.len() + (len as usize).saturating_sub(8), b'd');
        }
        _ => {
            let len = rng.range(0, 100);
            header(
                out,
                len as u32,
                rng.range(4, 15) as u8,
                rng.below(16) as u8,
                id,
            );
            out.resize(out.len() + len, 0xAB);
        }
    }
}

/// A well-formed frame whose meaning may still be hostile: data beyond the
/// window, frames for unknown or closed streams, floods of SYNs, resets and
/// window updates, GOAWAYs.
fn tame_frame(rng: &mut Rng, target: Role, syns: &mut u64, out: &mut Vec<u8>) {
    let remote_odd = target == Role::Server;
    let n = rng.range(1, 60);
    let id = 2 * n as u32 + u32::from(remote_odd);
    match rng.below(10) {
        0..=6 => {
            let mut flags = 0;
            // SYN once per id, as a conforming peer would (a duplicate SYN
            // kills the session, so it is rare here).
            if (*syns & (1 << n) == 0 && rng.chance(50)) || rng.chance(1) {
                *syns |= 1 << n;
                flags |= FLAG_SYN;
            }
            if rng.chance(10) {
                flags |= FLAG_FIN;
            }
            let len = if rng.chance(90) {
                rng.range(0, 300)
            } else {
                rng.range(0, 40_000)
            };
            header(out, len as u32, DATA, flags, id);
            out.resize(out.len() + len, id as u8);
        }
        7 => {
            header(out, 4, RST, 0, id);
            out.extend_from_slice(&(rng.below(11) as u32).to_be_bytes());
        }
        8 => {
            header(out, 4, WNDINC, 0, id);
            out.extend_from_slice(&(rng.range(1, 100_000) as u32).to_be_bytes());
        }
        _ if rng.chance(10) => {
            header(out, 8, GOAWAY, 0, 0);
            out.extend_from_slice(&(rng.range(0, 60) as u32).to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        _ => {
            header(out, 4, WNDINC, 0, id);
            out.extend_from_slice(&1u32.to_be_bytes());
        }
    }
}

/// Mutates a valid trace: bit flips, truncation, splices, inserted bytes,
/// a header length set to anything up to 0xFFFFFF.
fn mutate(rng: &mut Rng, trace: &[u8], other: &[u8]) -> Vec<u8> {
    let mut t = trace.to_vec();
    for _ in 0..rng.range(1, 4) {
        if t.is_empty() {
            break;
        }
        match rng.below(6) {
            0 => {
                for _ in 0..rng.range(1, 8) {
                    let i = rng.below(t.len() as u64) as usize;
                    t[i] ^= 1 << rng.below(8);
                }
            }
            1 => t.truncate(rng.below(t.len() as u64 + 1) as usize),
            2 => {
                let at = rng.below(t.len() as u64 + 1) as usize;
                let from = rng.below(other.len() as u64 + 1) as usize;
                let to = (from + rng.range(0, 2000)).min(other.len());
                t.splice(at..at, other[from..to].iter().copied());
            }
            3 => {
                let at = rng.below(t.len() as u64 + 1) as usize;
                let n = rng.range(1, 16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                t.splice(at..at, junk);
            }
            4 if t.len() >= 3 => {
                // Rewrite three bytes that may be a length field.
                let at = rng.below(t.len() as u64 - 2) as usize;
                let len = (rng.below(0x100_0000) as u32).to_be_bytes();
                t[at..at + 3].copy_from_slice(&len[1..]);
            }
            _ => {
                let from = rng.below(t.len() as u64) as usize;
                let to = (from + rng.range(1, 500)).min(t.len());
                t.drain(from..to);
            }
        }
    }
    t
}

// ---- checking what a session transmits ------------------------------------------

/// Decodes everything transmitted; it must be whole, valid frames. Returns
/// the number of frames and the last one's GOAWAY code, if it is a GOAWAY.
fn check_frames(bytes: &[u8]) -> (usize, Option<ErrorCode>) {
    let mut b = bytes;
    let mut n = 0;
    let mut last_goaway = None;
    while !b.is_empty() {
        match Frame::decode(b) {
            Ok(Decode::Frame(f, used)) => {
                last_goaway = match f {
                    Frame::GoAway { code, .. } => Some(code),
                    _ => None,
                };
                b = &b[used..];
                n += 1;
            }
            Ok(Decode::Incomplete(_)) => panic!("transmitted a truncated frame"),
            Err(e) => panic!("transmitted an invalid frame: {e:?}"),
        }
    }
    (n, last_goaway)
}

// ---- the hostile-peer driver -------------------------------------------------------

struct Hostile {
    rng: Rng,
    s: Session,
    role: Role,
    config: Config,
    now: Instant,
    keys: Vec<StreamKey>,
    spare: BytesMut,
    /// Death has been observed and its GOAWAY transmitted.
    dead_flushed: bool,
    scratch: Vec<u8>,
    /// Streams the application opened: they are its choice, not the
    /// peer's, and are not held to the budget.
    local_opens: usize,
}

fn random_config(rng: &mut Rng) -> Config {
    if rng.chance(15) {
        return Config::default();
    }
    let window = match rng.below(4) {
        0 => rng.range(1, 64) as u32,
        1 => rng.range(64, 4096) as u32,
        _ => rng.range(4096, 256 * 1024) as u32,
    };
    Config::default()
        .with_max_window(window)
        .with_max_auto_window(window.saturating_mul(rng.range(1, 8) as u32))
        .with_auto_window_budget(rng.range(0, 1 << 20))
        .with_accept_backlog(rng.range(0, 16))
        .with_max_streams(rng.range(0, 48))
        .with_max_send_buffer(rng.range(1, 64 * 1024))
        .with_stream_send_quota(rng.range(1, 64 * 1024))
        .with_max_control_backlog(rng.range(0, 16 * 1024))
        .with_max_goaway_debug(rng.range(0, 64))
        .with_window_update_threshold(rng.range(0, window as usize) as u32)
        .with_reset_linger(Duration::from_millis(rng.range(0, 20) as u64))
        .with_max_session_memory(rng.range(1024, 1 << 20))
        .with_memory_budget(
            rng.chance(30)
                .then(|| MemoryBudget::new(rng.range(0, 1 << 20))),
        )
}

impl Hostile {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let role = if rng.chance(50) {
            Role::Server
        } else {
            Role::Client
        };
        let config = random_config(&mut rng);
        Hostile {
            s: Session::new(role, config.clone()),
            rng,
            role,
            config,
            now: Instant::now(),
            keys: Vec::new(),
            spare: BytesMut::new(),
            dead_flushed: false,
            scratch: vec![0; 70_000],
            local_opens: 0,
        }
    }

    /// Transmits and checks the output against the invariants.
    fn flush(&mut self) {
        let dead = self.s.is_dead();
        let limit = self.config.max_send_buffer + self.config.max_control_backlog + (64 << 10);
        assert!(
            self.s.pending_transmit() <= limit,
            "outgoing buffer {} beyond its bound {limit}",
            self.s.pending_transmit()
        );
        // The peer's orderly close (its GOAWAY, then EOF at a frame boundary)
        // is answered with no GOAWAY: the peer reads no more.
        let quiet = dead
            && self.s.remote_goaway().is_some()
            && matches!(self.s.error(), Some(Error::PeerEof(m)) if !m.contains("middle"));
        let sent = self.s.poll_transmit(&mut self.spare);
        if self.dead_flushed {
            assert!(!sent, "a dead session transmitted after its GOAWAY");
            return;
        }
        if sent {
            let (_, last_goaway) = check_frames(&self.spare);
            if dead {
                let err = self.s.error().expect("dead").clone();
                // A local close is a clean close: GOAWAY NoError, as in Go.
                let code = match err {
                    Error::SessionClosed => ErrorCode::NoError,
                    ref e => e.code(),
                };
                if !(quiet && last_goaway.is_none()) {
                    assert_eq!(
                        last_goaway,
                        Some(code),
                        "death {err:?} ends with its GOAWAY"
                    );
                }
                assert!(
                    !matches!(code, ErrorCode::Other(_)),
                    "{err:?} has no wire code"
                );
            }
        }
        if dead {
            assert!(sent || self.dead_flushed || quiet, "death sends a GOAWAY");
            self.dead_flushed = true;
        }
        while self.s.poll_event().is_some() {}
    }

    fn check_memory(&mut self, chunk: usize) {
        if let Some(budget) = &self.config.memory_budget {
            assert!(budget.used() <= budget.limit(), "shared budget overdrawn");
        }
        let held = self.s.memory_held();
        let limit = self.config.max_session_memory + self.local_opens * STREAM_COST;
        assert!(
            held <= limit + chunk,
            "holds {held} bytes: budget {limit} + chunk {chunk}"
        );
    }

    /// Feeds `input` in random chunks, as a driver that honours
    /// `wants_input` would.
    fn feed(&mut self, input: &[u8]) {
        let mut rest = input;
        while !rest.is_empty() && !self.s.is_dead() {
            if !self.s.wants_input() {
                self.unpause();
            }
            let n = match self.rng.below(4) {
                0 => 1,
                1 => self.rng.range(1, 16),
                2 => self.rng.range(1, 512),
                _ => self.rng.range(1, 8192),
            }
            .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            self.s.handle_input(self.now, chunk);
            self.check_memory(n);
            if self.rng.chance(30) {
                self.flush();
            }
            if self.rng.chance(10) {
                self.app_call();
            }
        }
    }

    /// The application gets the session under its budget again: accept,
    /// read, and failing that reset and release everything, then let the
    /// linger pass. It must always work.
    fn unpause(&mut self) {
        self.accept_all();
        for i in 0..self.keys.len() {
            let k = self.keys[i];
            while let Ok(Some(n)) = self.s.read(k, &mut self.scratch) {
                if n == 0 {
                    break;
                }
            }
        }
        if !self.s.wants_input() {
            for k in std::mem::take(&mut self.keys) {
                let _ = self.s.reset(self.now, k, ErrorCode::StreamCancelled);
                self.s.release(k);
            }
            self.now += self.config.reset_linger + Duration::from_millis(1);
            self.s.handle_timeout(self.now);
        }
        self.flush();
        assert!(
            self.s.wants_input(),
            "the application cannot get the session under its budget: holds {}",
            self.s.memory_held()
        );
    }

    fn accept_all(&mut self) {
        while let Ok(Some(k)) = self.s.accept() {
            self.keys.push(k);
        }
    }

    fn pick_key(&mut self) -> Option<StreamKey> {
        if self.keys.is_empty() {
            None
        } else {
            Some(self.keys[self.rng.below(self.keys.len() as u64) as usize])
        }
    }

    fn app_call(&mut self) {
        let key = self.pick_key();
        match (self.rng.below(14), key) {
            (0, _) => {
                if let Ok(k) = self.s.open() {
                    self.keys.push(k);
                    self.local_opens += 1;
                }
            }
            (1 | 2, Some(k)) => {
                let n = self.rng.range(0, 20_000);
                check_error(self.s.write(k, &self.scratch[..n]).map(|_| ()));
            }
            (3 | 4, Some(k)) => {
                let n = self.rng.range(0, 70_000);
                check_error(self.s.read(k, &mut self.scratch[..n]).map(|_| ()));
            }
            (5, Some(k)) => check_error(self.s.close_write(k)),
            (6, Some(k)) => check_error(self.s.close(k)),
            (7, Some(k)) => {
                let code = ErrorCode::from_u32(self.rng.below(16) as u32);
                check_error(self.s.reset(self.now, k, code));
            }
            (8, Some(k)) => {
                self.s.release(k);
                self.keys.retain(|&x| x != k);
            }
            (9, _) if self.rng.chance(20) => {
                let _ = self.s.go_away(ErrorCode::NoError, b"bye");
            }
            (10, _) => self.accept_all(),
            (11, _) => {
                self.now += Duration::from_millis(self.rng.range(0, 30) as u64);
                self.s.handle_timeout(self.now);
            }
            (12, Some(k)) => {
                let _ = self.s.read_with(k, |b| b.len() / 2);
            }
            _ => {}
        }
        self.check_accounting();
    }

    /// The bytes the budget counts are the bytes the streams hold.
    fn check_accounting(&mut self) {
        if self.rng.chance(90) {
            return;
        }
        self.accept_all();
        let sum: usize = self
            .keys
            .iter()
            .map(|&k| self.s.readable_len(k).unwrap_or(0))
            .sum();
        assert_eq!(sum, self.s.buffered_input(), "memory accounting drifted");
    }
}

fn check_error(r: Result<(), Error>) {
    if let Err(e) = r {
        // Every error has a code; the Display says something.
        let _ = e.code();
        assert!(!e.to_string().is_empty());
    }
}

/// Valid traces to mutate: the bytes each side of a healthy pair sent.
fn traces(seed: u64) -> [Vec<u8>; 2] {
    let mut rec = [Vec::new(), Vec::new()];
    healthy_pair_case(seed, Some(&mut rec));
    rec
}

/// Runs hostile cases from `seed` until `frames` frames were fed; returns
/// (frames, bytes, cases).
fn hostile_run(seed: u64, frames: u64) -> (u64, u64, u64) {
    let corpus: Vec<[Vec<u8>; 2]> = (0..4).map(|i| traces(seed ^ (0xC0FFEE + i))).collect();
    let (mut total_frames, mut total_bytes, mut cases) = (0u64, 0u64, 0u64);
    let mut case_seed = seed;
    while total_frames < frames {
        let (f, b) = run_case("hostile_peer", case_seed, |s| hostile_case(s, &corpus));
        total_frames += f;
        total_bytes += b;
        cases += 1;
        case_seed = case_seed.wrapping_add(1);
    }
    (total_frames, total_bytes, cases)
}

/// The start of a recorded trace (valid from its first byte), at most 32 KiB.
fn prefix<'a>(rng: &mut Rng, corpus: &'a [[Vec<u8>; 2]], side: usize) -> &'a [u8] {
    let t = &corpus[rng.below(corpus.len() as u64) as usize][side];
    &t[..t.len().min(rng.range(0, 32 * 1024))]
}

fn hostile_case(seed: u64, corpus: &[[Vec<u8>; 2]]) -> (u64, u64) {
    let mut h = Hostile::new(seed);
    let steps = h.rng.range(1, 60);
    // Half the cases break the framing now and then; the others send only
    // well-formed frames and so get deeper into the state machine.
    let wild = h.rng.chance(50);
    let mut syns = 0u64;
    // Traces recorded toward a server come from the client, and vice versa.
    let side = usize::from(h.role == Role::Client);
    for _ in 0..steps {
        let mut input = Vec::new();
        // Well-formed cases send generated frames only: a recorded trace
        // cut at a random point would break the framing.
        let pick = match h.rng.below(10) {
            5..=8 if !wild => 0,
            p => p,
        };
        match pick {
            0..=4 => {
                for _ in 0..h.rng.range(1, 40) {
                    let wild = wild && h.rng.chance(20);
                    random_frame(&mut h.rng, h.role, wild, &mut syns, &mut input);
                }
            }
            5..=7 => {
                let a = prefix(&mut h.rng, corpus, side);
                let b = prefix(&mut h.rng, corpus, side);
                input = mutate(&mut h.rng, a, b);
            }
            8 => input = prefix(&mut h.rng, corpus, side).to_vec(),
            _ => {
                for _ in 0..h.rng.range(1, 5) {
                    h.app_call();
                }
            }
        }
        h.feed(&input);
        h.flush();
        if h.rng.chance(2) {
            match h.rng.below(3) {
                0 => h.s.handle_eof(),
                1 => h.s.handle_transport_error("fuzz"),
                _ => h.s.close_session(),
            }
        }
        if h.s.is_dead() {
            h.flush();
            // Dead: input is ignored and nothing is ever sent again.
            let mut more = Vec::new();
            random_frame(&mut h.rng, h.role, true, &mut syns, &mut more);
            h.s.handle_input(h.now, &more);
            h.app_call();
            h.flush();
            break;
        }
    }
    let stats = h.s.stats();
    let budget = h.config.memory_budget.clone();
    drop(h);
    if let Some(budget) = budget {
        assert_eq!(budget.used(), 0, "a dropped session gives its memory back");
    }
    (stats.frames_in, stats.bytes_in)
}

#[test]
fn hostile_peer() {
    let seed = env_u64("MUXADO_FUZZ_SEED").unwrap_or(0x5EED_0001);
    let frames = env_u64("MUXADO_FUZZ_FRAMES").unwrap_or(60_000);
    let start = Instant::now();
    let (frames, bytes, cases) = hostile_run(seed, frames);
    println!(
        "hostile_peer: {frames} frames, {bytes} bytes, {cases} cases from seed {seed:#x} in {:.1?}",
        start.elapsed()
    );
}

// ---- the healthy pair ------------------------------------------------------------

/// The byte at `off` of the stream with wire id `id`: position-dependent, so
/// a lost, duplicated or reordered byte shows.
fn content(id: u32, off: u64) -> u8 {
    let x = (off ^ (u64::from(id) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ off as u8
}

#[derive(Default)]
struct Out {
    key: Option<StreamKey>,
    planned: u64,
    written: u64,
    fin: bool,
    reset: bool,
}

#[derive(Default)]
struct In {
    key: Option<StreamKey>,
    read: u64,
    eof: bool,
    failed: bool,
}

struct PairSide {
    s: Session,
    /// Streams this side writes, by wire id.
    out: BTreeMap<u32, Out>,
    /// Streams this side reads, by wire id.
    inc: BTreeMap<u32, In>,
    /// Bytes on their way to the other side.
    pipe: Vec<u8>,
    spare: BytesMut,
}

/// Streams are full duplex: both sides write and read every stream. Returns
/// the number of frames exchanged.
fn healthy_pair_case(seed: u64, mut record: Option<&mut [Vec<u8>; 2]>) -> u64 {
    let mut rng = Rng(seed);
    let window = match rng.below(3) {
        0 => rng.range(1, 512) as u32,
        1 => rng.range(512, 16_384) as u32,
        _ => 256 * 1024,
    };
    let config = Config::default()
        .with_max_window(window)
        .with_max_send_buffer(rng.range(64, 128 * 1024))
        .with_max_session_memory(rng.range(64 * 1024, 4 << 20))
        .with_memory_budget(Some(MemoryBudget::new(64 << 20)))
        .with_reset_linger(Duration::from_millis(rng.range(0, 50) as u64));
    let now = Instant::now();
    let mut sides = [Role::Client, Role::Server].map(|role| PairSide {
        s: Session::new(role, config.clone()),
        out: BTreeMap::new(),
        inc: BTreeMap::new(),
        pipe: Vec::new(),
        spare: BytesMut::new(),
    });
    let mut scratch = vec![0u8; 40_000];
    let streams_to_open = rng.range(1, 12);
    let mut opened = 0;
    let max_len = [100u64, 5_000, 100_000][rng.below(3) as usize];
    let mut time = now;
    for step in 0..200_000 {
        let i = rng.below(2) as usize;
        let j = 1 - i;
        match rng.below(12) {
            0 if opened < streams_to_open => {
                if let Ok(k) = sides[i].s.open() {
                    let id = sides[i].s.stream_id(k).unwrap();
                    let planned = rng.below(max_len + 1);
                    sides[i].out.insert(
                        id,
                        Out {
                            key: Some(k),
                            planned,
                            ..Out::default()
                        },
                    );
                    sides[i].inc.insert(
                        id,
                        In {
                            key: Some(k),
                            ..In::default()
                        },
                    );
                    opened += 1;
                }
            }
            1 => {
                while let Ok(Some(k)) = sides[i].s.accept() {
                    let id = sides[i].s.stream_id(k).unwrap();
                    let planned = rng.below(max_len + 1);
                    sides[i].out.insert(
                        id,
                        Out {
                            key: Some(k),
                            planned,
                            ..Out::default()
                        },
                    );
                    let inc = sides[i].inc.entry(id).or_default();
                    inc.key = Some(k);
                }
            }
            2..=4 => {
                // Write a piece of some stream's planned content.
                let side = &mut sides[i];
                let ids: Vec<u32> = side.out.keys().copied().collect();
                if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                    let o = side.out.get_mut(&id).unwrap();
                    let k = o.key.unwrap();
                    if !o.fin && !o.reset {
                        let left = o.planned - o.written;
                        let n = (rng.range(0, 30_000) as u64).min(left) as usize;
                        for (x, b) in scratch[..n].iter_mut().enumerate() {
                            *b = content(id, o.written + x as u64);
                        }
                        match side.s.write(k, &scratch[..n]) {
                            Ok(m) => o.written += m as u64,
                            Err(_) => o.reset = true, // the peer reset it
                        }
                        if o.written == o.planned && side.s.close_write(k).is_ok() {
                            o.fin = true;
                        }
                    }
                }
            }
            5..=7 => {
                // Read and verify every byte by position.
                let side = &mut sides[i];
                let ids: Vec<u32> = side.inc.keys().copied().collect();
                for id in ids {
                    let r = side.inc.get_mut(&id).unwrap();
                    let Some(k) = r.key else { continue };
                    if r.eof || r.failed {
                        continue;
                    }
                    let n = rng.range(1, scratch.len());
                    match side.s.read(k, &mut scratch[..n]) {
                        Ok(Some(0)) => r.eof = true,
                        Ok(Some(m)) => {
                            for (x, &b) in scratch[..m].iter().enumerate() {
                                let off = r.read + x as u64;
                                assert_eq!(
                                    b,
                                    content(id, off),
                                    "seed {seed}: stream {id} byte {off} lost or reordered"
                                );
                            }
                            r.read += m as u64;
                        }
                        Ok(None) => {}
                        Err(_) => r.failed = true,
                    }
                }
            }
            8 if rng.chance(3) => {
                // Reset a stream now and then; its bytes so far were checked.
                let side = &mut sides[i];
                let ids: Vec<u32> = side.out.keys().copied().collect();
                if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                    let k = side.out[&id].key.unwrap();
                    if side.s.reset(time, k, ErrorCode::StreamCancelled).is_ok() {
                        side.out.get_mut(&id).unwrap().reset = true;
                        if let Some(r) = side.inc.get_mut(&id) {
                            r.failed = true;
                        }
                    }
                }
            }
            9 => {
                time += Duration::from_millis(rng.range(0, 10) as u64);
                for side in sides.iter_mut() {
                    side.s.handle_timeout(time);
                }
            }
            _ => {
                // Move bytes: transmit, then deliver a random part of the pipe.
                let side = &mut sides[i];
                if side.s.poll_transmit(&mut side.spare) {
                    if let Some(rec) = record.as_deref_mut() {
                        rec[i].extend_from_slice(&side.spare);
                    }
                    side.pipe.extend_from_slice(&side.spare);
                }
                if sides[j].s.wants_input() && !sides[i].pipe.is_empty() {
                    let n = rng.range(1, sides[i].pipe.len());
                    let chunk: Vec<u8> = sides[i].pipe.drain(..n).collect();
                    sides[j].s.handle_input(time, &chunk);
                }
            }
        }
        for side in sides.iter_mut() {
            while side.s.poll_event().is_some() {}
            assert!(!side.s.is_dead(), "seed {seed}: died: {:?}", side.s.error());
        }
        let done = opened == streams_to_open
            && sides.iter().all(|s| {
                s.out.values().all(|o| o.fin || o.reset)
                    && s.inc.values().all(|r| r.eof || r.failed)
            })
            && sides[1 - i].inc.len() + sides[i].inc.len() >= 2 * opened;
        if done && step > 10 {
            break;
        }
    }
    // Every stream that was not reset delivered exactly what was written.
    for i in 0..2 {
        for (id, o) in &sides[i].out {
            if o.reset {
                continue;
            }
            let r = &sides[1 - i].inc[id];
            if r.failed {
                continue; // the other side reset it
            }
            assert!(o.fin && r.eof, "seed {seed}: stream {id} did not finish");
            assert_eq!(r.read, o.written, "seed {seed}: stream {id} lost bytes");
        }
    }
    sides[0].s.stats().frames_in + sides[1].s.stats().frames_in
}

#[test]
fn healthy_pair() {
    let seed = env_u64("MUXADO_FUZZ_SEED").unwrap_or(0x9A1B_0001);
    let cases = env_u64("MUXADO_FUZZ_PAIRS").unwrap_or(40);
    let mut frames = 0;
    for c in 0..cases {
        frames += run_case("healthy_pair", seed + c, |s| healthy_pair_case(s, None));
    }
    println!("healthy_pair: {cases} cases, {frames} frames");
}
