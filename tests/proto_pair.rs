//! Two sessions (client and server) wired back to back in memory: a pump moves
//! each side's `poll_transmit` bytes into the other's `handle_input`, in
//! random chunk sizes. A seeded soak and proptest properties check that every
//! byte is accounted for, that unread data never exceeds the window, that no
//! wakeup is lost (the driver only retries an operation after the event that
//! announces it), and that nothing stalls. Plus split invariance of input.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use muxado::frame::{self, FrameType, FLAG_FIN, FLAG_SYN};
use muxado::proto::{Event, Role, Session, StreamKey};
use muxado::{Config, Error, ErrorCode};
use proptest::prelude::*;

// ---- a tiny deterministic PRNG ----------------------------------------------

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
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
}

fn mix(a: u64) -> u64 {
    Rng(a).next()
}

// ---- what each stream carries -------------------------------------------------

/// The byte at `off` of the direction `dir` (0: opener → acceptor) of stream `id`.
fn byte_at(seed: u64, id: u32, dir: u8, off: u64) -> u8 {
    let k = seed ^ (u64::from(id) << 1 | u64::from(dir)).wrapping_mul(0x2545_F491_4F6C_DD1D);
    (off.wrapping_mul(131) ^ (off >> 7) ^ k ^ (k >> 17)) as u8
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resetter {
    Nobody,
    Opener,
    Acceptor,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Bytes opener → acceptor, acceptor → opener.
    len: [u64; 2],
    reset: Resetter,
    /// The resetter resets once it has sent this many bytes.
    reset_after: u64,
}

fn size(rng: &mut Rng, max_large: usize) -> u64 {
    (match rng.below(100) {
        0..=59 => rng.range(0, 2048.min(max_large)),
        60..=94 => rng.range(0, 40_000.min(max_large)),
        _ => rng.range(0, max_large),
    }) as u64
}

fn plan(seed: u64, id: u32, max_large: usize, reset_percent: u64) -> Plan {
    let mut rng = Rng(mix(seed ^ u64::from(id)));
    let len = [size(&mut rng, max_large), size(&mut rng, max_large)];
    let reset = if rng.chance(reset_percent) {
        if rng.chance(50) {
            Resetter::Opener
        } else {
            Resetter::Acceptor
        }
    } else {
        Resetter::Nobody
    };
    let reset_after = rng.below(len[0].max(len[1]) + 1);
    Plan {
        len,
        reset,
        reset_after,
    }
}

// ---- one side -----------------------------------------------------------------

struct St {
    key: StreamKey,
    id: u32,
    local: bool,
    plan: Plan,
    sent: u64,
    fin_sent: bool,
    recvd: u64,
    sum: u64,
    eof: bool,
    error: Option<Error>,
    read_blocked: bool,
    write_blocked: bool,
}

impl St {
    fn dir_out(&self) -> u8 {
        if self.local {
            0
        } else {
            1
        }
    }
    fn out_len(&self) -> u64 {
        self.plan.len[self.dir_out() as usize]
    }
    fn in_len(&self) -> u64 {
        self.plan.len[1 - self.dir_out() as usize]
    }
    fn i_reset(&self) -> bool {
        matches!(
            (self.plan.reset, self.local),
            (Resetter::Opener, true) | (Resetter::Acceptor, false)
        )
    }
    fn done(&self) -> bool {
        self.error.is_some() || (self.eof && self.fin_sent)
    }
}

struct Side {
    s: Session,
    role: Role,
    live: HashMap<StreamKey, St>,
    accept_blocked: bool,
    opened: usize,
    open_refused: usize,
    completed: usize,
    /// Ids of peer streams whose data we read to the end (checksum verified).
    verified: HashSet<u32>,
    spare: BytesMut,
}

impl Side {
    fn new(role: Role, config: Config) -> Self {
        Side {
            s: Session::new(role, config),
            role,
            live: HashMap::new(),
            accept_blocked: false,
            opened: 0,
            open_refused: 0,
            completed: 0,
            verified: HashSet::new(),
            spare: BytesMut::new(),
        }
    }
}

struct Params {
    seed: u64,
    streams_per_side: usize,
    max_live: usize,
    window: u32,
    max_large: usize,
    reset_percent: u64,
    /// The server calls go_away once the client has opened this many streams.
    go_away_at: Option<usize>,
}

struct World {
    p: Params,
    rng: Rng,
    now: Instant,
    sides: [Side; 2],
    scratch: Vec<u8>,
    wire: [u64; 2],
    /// Client stream ids the server had accepted when it sent GOAWAY.
    accepted_before_goaway: Option<HashSet<u32>>,
    server_accepted: HashSet<u32>,
    expected_sums: HashMap<(u32, u8), u64>,
}

fn checksum(sum: u64, b: &[u8]) -> u64 {
    b.iter().fold(sum, |s, &x| {
        s.rotate_left(5) ^ u64::from(x).wrapping_mul(0x100_0000_01B3)
    })
}

impl World {
    fn new(p: Params) -> Self {
        let config = Config::default().with_max_window(p.window);
        World {
            rng: Rng(p.seed),
            now: Instant::now(),
            sides: [
                Side::new(Role::Client, config.clone()),
                Side::new(Role::Server, config),
            ],
            scratch: vec![0; 70_000],
            wire: [0; 2],
            accepted_before_goaway: None,
            server_accepted: HashSet::new(),
            expected_sums: HashMap::new(),
            p,
        }
    }

    fn expected_sum(&mut self, id: u32, dir: u8, len: u64) -> u64 {
        let seed = self.p.seed;
        *self.expected_sums.entry((id, dir)).or_insert_with(|| {
            (0..len).fold(0, |s, off| checksum(s, &[byte_at(seed, id, dir, off)]))
        })
    }

    /// Is an error on this stream acceptable (planned reset, or GOAWAY refusal)?
    fn error_ok(&self, side: usize, st: &St, e: &Error) -> bool {
        let code = ErrorCode::StreamCancelled;
        if st.plan.reset != Resetter::Nobody
            && matches!(e, Error::RemoteReset(c) | Error::LocalReset(c) if *c == code)
        {
            return true;
        }
        let refused = matches!(
            e,
            Error::RemoteGoneAway | Error::RemoteReset(ErrorCode::StreamRefused)
        );
        refused
            && side == 0
            && st.local
            && self
                .accepted_before_goaway
                .as_ref()
                .is_some_and(|a| !a.contains(&st.id))
    }

    fn fail(&self, side: usize, st: &St, what: &str) -> ! {
        panic!(
            "seed {}: side {side} stream {} ({:?}, local {}): {what}; sent {} fin {} recvd {} eof {} err {:?}",
            self.p.seed, st.id, st.plan, st.local, st.sent, st.fin_sent, st.recvd, st.eof, st.error
        );
    }

    /// One operation on one stream; true if anything changed.
    fn step_stream(&mut self, side: usize, key: StreamKey, all_in: bool) -> bool {
        let mut st = self.sides[side].live.remove(&key).unwrap();
        let mut progress = false;
        let seed = self.p.seed;
        let pick = if all_in { 3 } else { self.rng.below(3) };
        // Reset when planned.
        if st.i_reset() && st.error.is_none() && st.sent >= st.plan.reset_after.min(st.out_len()) {
            self.sides[side]
                .s
                .reset(self.now, st.key, ErrorCode::StreamCancelled)
                .unwrap();
            st.error = Some(Error::LocalReset(ErrorCode::StreamCancelled));
            progress = true;
        }
        // Write.
        if st.error.is_none() && !st.write_blocked && !st.fin_sent && (pick == 0 || pick == 3) {
            let left = st.out_len() - st.sent;
            if left > 0 {
                let want = if all_in {
                    left as usize
                } else {
                    self.rng.range(1, 65_536).min(left as usize)
                }
                .min(self.scratch.len());
                let dir = st.dir_out();
                for (i, b) in self.scratch[..want].iter_mut().enumerate() {
                    *b = byte_at(seed, st.id, dir, st.sent + i as u64);
                }
                match self.sides[side].s.write(st.key, &self.scratch[..want]) {
                    Ok(0) => st.write_blocked = true,
                    Ok(n) => {
                        assert!(n <= want);
                        st.sent += n as u64;
                        progress = true;
                    }
                    Err(e) => {
                        if !self.error_ok(side, &st, &e) {
                            self.fail(side, &st, &format!("write error {e:?}"));
                        }
                        st.error = Some(e);
                        progress = true;
                    }
                }
            }
            if st.error.is_none() && st.sent == st.out_len() && !st.fin_sent {
                // Half-close once everything is written.
                match self.sides[side].s.close_write(st.key) {
                    Ok(()) => st.fin_sent = true,
                    Err(e) => {
                        if !self.error_ok(side, &st, &e) {
                            self.fail(side, &st, &format!("close_write error {e:?}"));
                        }
                        st.error = Some(e);
                    }
                }
                progress = true;
            }
        }
        // Read.
        if !st.read_blocked && !st.eof && st.error.is_none() && (pick == 1 || pick == 3) {
            let n = if all_in {
                self.scratch.len()
            } else {
                self.rng.range(1, 70_000)
            };
            let mut buf = std::mem::take(&mut self.scratch);
            let r = self.sides[side].s.read(st.key, &mut buf[..n]);
            match r {
                Ok(None) => st.read_blocked = true,
                Ok(Some(0)) => {
                    if st.recvd != st.in_len() {
                        self.fail(side, &st, "EOF before all data");
                    }
                    let dir = 1 - st.dir_out();
                    let want = self.expected_sum(st.id, dir, st.in_len());
                    if st.sum != want {
                        self.fail(side, &st, "checksum mismatch");
                    }
                    self.sides[side].verified.insert(st.id);
                    st.eof = true;
                    progress = true;
                }
                Ok(Some(k)) => {
                    let dir = 1 - st.dir_out();
                    for (i, &b) in buf[..k].iter().enumerate() {
                        if b != byte_at(seed, st.id, dir, st.recvd + i as u64) {
                            self.fail(side, &st, &format!("wrong byte at {}", st.recvd + i as u64));
                        }
                    }
                    st.sum = checksum(st.sum, &buf[..k]);
                    st.recvd += k as u64;
                    if st.recvd > st.in_len() {
                        self.fail(side, &st, "more data than sent");
                    }
                    progress = true;
                }
                Err(e) => {
                    if !self.error_ok(side, &st, &e) {
                        self.fail(side, &st, &format!("read error {e:?}"));
                    }
                    st.error = Some(e);
                    progress = true;
                }
            }
            self.scratch = buf;
        }
        if st.done() {
            self.sides[side].s.release(st.key);
            self.sides[side].completed += 1;
            progress = true;
        } else {
            self.sides[side].live.insert(key, st);
        }
        progress
    }

    fn open(&mut self, side: usize) -> bool {
        let p = &self.p;
        let sd = &mut self.sides[side];
        if sd.opened + sd.open_refused >= p.streams_per_side || sd.live.len() >= p.max_live {
            return false;
        }
        match sd.s.open() {
            Ok(key) => {
                let id = sd.s.stream_id(key).unwrap();
                sd.opened += 1;
                let plan = plan(p.seed, id, p.max_large, p.reset_percent);
                sd.live.insert(key, new_st(key, id, true, plan));
            }
            Err(Error::RemoteGoneAway) if side == 0 && self.accepted_before_goaway.is_some() => {
                sd.open_refused += 1;
            }
            Err(e) => panic!("seed {}: open failed: {e:?}", p.seed),
        }
        if side == 0 && Some(self.sides[0].opened) == self.p.go_away_at {
            self.sides[1]
                .s
                .go_away(ErrorCode::NoError, b"enough")
                .unwrap();
            self.accepted_before_goaway = Some(self.server_accepted.clone());
        }
        true
    }

    fn accept(&mut self, side: usize) -> bool {
        let mut progress = false;
        while !self.sides[side].accept_blocked {
            match self.sides[side].s.accept() {
                Ok(Some(key)) => {
                    let sd = &mut self.sides[side];
                    let id = sd.s.stream_id(key).unwrap();
                    assert!(sd.role.is_remote_id(id));
                    if side == 1 {
                        self.server_accepted.insert(id);
                    }
                    let plan = plan(self.p.seed, id, self.p.max_large, self.p.reset_percent);
                    self.sides[side]
                        .live
                        .insert(key, new_st(key, id, false, plan));
                    progress = true;
                }
                Ok(None) => self.sides[side].accept_blocked = true,
                Err(e) => panic!("accept: {e:?}"),
            }
        }
        progress
    }

    /// Applies events: each one must be for something that waited.
    fn events(&mut self, side: usize) {
        while let Some(ev) = self.sides[side].s.poll_event() {
            let sd = &mut self.sides[side];
            match ev {
                Event::Readable(k) => {
                    if let Some(st) = sd.live.get_mut(&k) {
                        assert!(st.read_blocked, "Readable for a stream that did not wait");
                        st.read_blocked = false;
                    }
                }
                Event::Writable(k) => {
                    if let Some(st) = sd.live.get_mut(&k) {
                        assert!(st.write_blocked, "Writable for a stream that did not wait");
                        st.write_blocked = false;
                    }
                }
                Event::Accept => {
                    assert!(sd.accept_blocked, "Accept without a waiting acceptor");
                    sd.accept_blocked = false;
                }
                Event::GoAway => assert_eq!(side, 0, "only the server goes away"),
                Event::Dead => panic!("seed {}: side {side} died: {:?}", self.p.seed, sd.s.error()),
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    /// Moves everything one side has to transmit into the other, in chunks.
    fn pump(&mut self, from: usize, all_at_once: bool) -> bool {
        let mut spare = std::mem::take(&mut self.sides[from].spare);
        if !self.sides[from].s.poll_transmit(&mut spare) {
            self.sides[from].spare = spare;
            return false;
        }
        self.wire[from] += spare.len() as u64;
        let to = 1 - from;
        let mode = if all_at_once { 0 } else { self.rng.below(4) };
        let mut rest = &spare[..];
        while !rest.is_empty() {
            let n = match mode {
                0 => rest.len(),
                1 => self.rng.range(1, 16),
                2 => self.rng.range(1, 4096),
                _ => self.rng.range(1, 100_000),
            }
            .min(rest.len());
            self.sides[to].s.handle_input(self.now, &rest[..n]);
            rest = &rest[n..];
            self.check_windows(to);
        }
        self.sides[from].spare = spare;
        true
    }

    fn check_windows(&self, side: usize) {
        let sd = &self.sides[side];
        for st in sd.live.values() {
            if let (Ok(n), Ok(w)) = (sd.s.readable_len(st.key), sd.s.recv_window(st.key)) {
                // Auto-tuning may grow a stream's window, never beyond its cap.
                let cap = sd.s.config().max_auto_window;
                assert!(
                    n <= w as usize && w >= self.p.window && w <= cap,
                    "unread {n}, window {w} (base {}, cap {cap}) on stream {}",
                    self.p.window,
                    st.id
                );
            }
        }
    }

    fn finished(&self) -> bool {
        self.sides
            .iter()
            .all(|sd| sd.live.is_empty() && sd.opened + sd.open_refused >= self.p.streams_per_side)
    }

    /// One round; `all_in` does every possible operation (used to prove a stall).
    fn round(&mut self, all_in: bool) -> bool {
        let mut progress = false;
        self.now += Duration::from_millis(1);
        for side in 0..2 {
            self.sides[side].s.handle_timeout(self.now);
            let opens = if all_in { 1 } else { self.rng.below(3) };
            for _ in 0..opens {
                progress |= self.open(side);
            }
            progress |= self.accept(side);
            let mut keys: Vec<StreamKey> = self.sides[side].live.keys().copied().collect();
            keys.sort_by_key(|k| self.sides[side].live[k].id);
            for key in keys {
                if all_in || self.rng.chance(60) {
                    progress |= self.step_stream(side, key, all_in);
                    self.events(side);
                }
            }
            self.events(side);
            progress |= self.pump(side, all_in);
            self.events(1 - side);
        }
        progress
    }

    fn run(&mut self) {
        let mut rounds = 0u64;
        while !self.finished() {
            rounds += 1;
            assert!(rounds < 2_000_000, "seed {}: runaway", self.p.seed);
            if !self.round(false) && !self.round(true) && !self.round(true) {
                let blocked: Vec<String> = self
                    .sides
                    .iter()
                    .flat_map(|sd| sd.live.values())
                    .take(5)
                    .map(|st| {
                        format!(
                            "id {} local {} sent {}/{} fin {} recvd {}/{} rb {} wb {}",
                            st.id,
                            st.local,
                            st.sent,
                            st.out_len(),
                            st.fin_sent,
                            st.recvd,
                            st.in_len(),
                            st.read_blocked,
                            st.write_blocked
                        )
                    })
                    .collect();
                panic!(
                    "seed {}: stall after {rounds} rounds: {blocked:#?}",
                    self.p.seed
                );
            }
        }
        // Quiesce, let resets stop lingering, and check that nothing leaks.
        while self.pump(0, true) | self.pump(1, true) {}
        self.now += Duration::from_secs(6);
        for side in 0..2 {
            self.sides[side].s.handle_timeout(self.now);
            self.events(side);
            let sd = &self.sides[side];
            assert!(!sd.s.is_dead());
            assert_eq!(sd.s.stream_count(), 0, "side {side} leaks streams");
            assert_eq!(sd.completed, sd.opened + sd.verified_accepts());
        }
        // Clean shutdown.
        self.sides[0].s.close_session();
        self.pump(0, true);
        assert_eq!(
            self.sides[1].s.remote_goaway().map(|g| g.0),
            Some(ErrorCode::NoError)
        );
    }
}

impl Side {
    fn verified_accepts(&self) -> usize {
        self.s.stats().streams_accepted as usize
    }
}

fn new_st(key: StreamKey, id: u32, local: bool, plan: Plan) -> St {
    St {
        key,
        id,
        local,
        plan,
        sent: 0,
        fin_sent: false,
        recvd: 0,
        sum: 0,
        eof: false,
        error: None,
        read_blocked: false,
        write_blocked: false,
    }
}

fn run(p: Params) -> World {
    let mut w = World::new(p);
    w.run();
    w
}

#[test]
fn soak_thousands_of_streams_both_ways() {
    let w = run(Params {
        seed: 0x5EED_0001,
        streams_per_side: 1100,
        max_live: 48,
        window: 16 * 1024,
        max_large: 30_000,
        reset_percent: 8,
        go_away_at: Some(1000),
    });
    let [c, s] = &w.sides;
    assert!(c.opened + s.opened >= 2000, "{} + {}", c.opened, s.opened);
    // Everything not reset was checked byte for byte on both ends.
    let both = c.verified.len() + s.verified.len();
    assert!(both > 1500, "only {both} directions verified");
    assert!(c.s.stats().window_stalls > 0 && s.s.stats().window_stalls > 0);
}

#[test]
fn soak_default_window_no_resets() {
    let w = run(Params {
        seed: 7,
        streams_per_side: 150,
        max_live: 24,
        window: Config::default().max_window,
        max_large: 600_000,
        reset_percent: 0,
        go_away_at: None,
    });
    let [c, s] = &w.sides;
    assert_eq!(c.verified.len(), 300, "client read every stream to EOF");
    assert_eq!(s.verified.len(), 300);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn pair_accounts_for_every_byte(
        seed in any::<u64>(),
        streams in 1usize..40,
        max_live in 1usize..16,
        (window, max_large) in prop_oneof![
            (Just(1u32), Just(64usize)),
            (2u32..64, Just(1000)),
            (64u32..4096, Just(20_000)),
            (Just(256 * 1024), Just(50_000)),
        ],
        reset_percent in 0u64..30,
        go_away in proptest::option::of(0usize..40),
    ) {
        run(Params {
            seed,
            streams_per_side: streams,
            max_live,
            window,
            max_large,
            reset_percent,
            go_away_at: go_away.filter(|&g| g >= 1 && g <= streams),
        });
    }
}

// ---- split invariance ---------------------------------------------------------

/// (transmitted bytes, events, per stream: id, data read, how it ended)
type Replay = (Vec<u8>, Vec<Event>, Vec<(u32, Vec<u8>, String)>);

/// What a fresh server does with `input` fed in the given chunks: the bytes
/// it transmits and the events it raises, then the data and WNDINC bytes when
/// the application accepts and reads everything.
fn replay(input: &[u8], cuts: &[usize]) -> Replay {
    let now = Instant::now();
    let mut s = Session::new(
        Role::Server,
        Config::default()
            .with_max_window(4096)
            .with_accept_backlog(4),
    );
    assert_eq!(s.accept(), Ok(None));
    let mut start = 0;
    for &cut in cuts.iter().chain([input.len()].iter()) {
        s.handle_input(now, &input[start..cut]);
        start = cut;
    }
    let mut wire = BytesMut::new();
    let mut tx = Vec::new();
    if s.poll_transmit(&mut wire) {
        tx.extend_from_slice(&wire);
    }
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    let mut streams = Vec::new();
    while let Ok(Some(k)) = s.accept() {
        let id = s.stream_id(k).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 777];
        let end = loop {
            match s.read(k, &mut buf) {
                Ok(Some(0)) => break "eof".to_string(),
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                Ok(None) => break "open".to_string(),
                Err(e) => break format!("{e:?}"),
            }
        };
        streams.push((id, got, end));
    }
    if s.poll_transmit(&mut wire) {
        tx.extend_from_slice(&wire);
    }
    tx.extend_from_slice(format!("{:?}", s.error()).as_bytes());
    (tx, events, streams)
}

/// A byte stream recorded from a real client session talking to a server.
fn recorded() -> Vec<u8> {
    let now = Instant::now();
    let cfg = Config::default().with_max_window(4096);
    let mut c = Session::new(Role::Client, cfg.clone());
    let mut s = Session::new(Role::Server, cfg);
    let mut rec = Vec::new();
    let mut wire = BytesMut::new();
    let mut keys = Vec::new();
    for i in 0..6usize {
        let k = c.open().unwrap();
        c.write(k, &vec![i as u8; 300 * i + 1]).unwrap();
        keys.push(k);
    }
    c.close_write(keys[1]).unwrap();
    c.reset(now, keys[2], ErrorCode::StreamCancelled).unwrap();
    let sk = s.open().unwrap();
    s.write(sk, &[9u8; 5000]).unwrap();
    for round in 0..4 {
        if s.poll_transmit(&mut wire) {
            c.handle_input(now, &wire);
        }
        let mut buf = [0u8; 2000];
        while let Ok(Some(n)) = c.read(sk, &mut buf) {
            if n == 0 {
                break;
            }
        }
        for &k in &keys[3..] {
            let _ = c.write(k, &vec![round as u8; 1500]);
        }
        if round == 2 {
            c.go_away(ErrorCode::NoError, b"client says bye").unwrap();
        }
        if c.poll_transmit(&mut wire) {
            rec.extend_from_slice(&wire);
            s.handle_input(now, &wire);
        }
        while let Ok(Some(k)) = s.accept() {
            let mut buf = [0u8; 700];
            let _ = s.read(k, &mut buf);
        }
    }
    // Hand-made extras: unknown frames, unknown streams, an overrun.
    for (ty, len) in [(4u8, 0usize), (9, 3), (15, 20)] {
        let f = frame::Frame::Unknown {
            ty,
            flags: 0xF,
            stream_id: 77,
            payload: &vec![ty; len],
        };
        f.encode(&mut rec).unwrap();
    }
    frame::encode_data(&mut rec, 51, b"nobody", 0).unwrap();
    frame::encode_data(&mut rec, 53, &[1u8; 5000], FLAG_SYN).unwrap();
    frame::encode_rst(&mut rec, 5, ErrorCode::StreamCancelled).unwrap();
    frame::encode_data(&mut rec, 55, b"", FLAG_SYN | FLAG_FIN).unwrap();
    frame::encode_goaway(&mut rec, 0, ErrorCode::NoError, b"done").unwrap();
    frame::encode_data(&mut rec, 57, b"tail", FLAG_SYN).unwrap();
    assert_eq!(FrameType::from_u4(rec[3] >> 4), FrameType::Data);
    rec
}

#[test]
fn recorded_stream_split_at_every_byte_boundary() {
    let rec = recorded();
    let whole = replay(&rec, &[]);
    assert!(!whole.2.is_empty());
    assert!(whole.0.len() > 20, "the replay transmits RSTs");
    for cut in 0..=rec.len() {
        assert_eq!(replay(&rec, &[cut]), whole, "split at {cut}");
    }
    let every: Vec<usize> = (1..rec.len()).collect();
    assert_eq!(replay(&rec, &every), whole, "one byte at a time");
}

#[derive(Clone, Debug)]
enum Op {
    Data {
        stream: u8,
        len: u16,
        syn: bool,
        fin: bool,
    },
    WndInc {
        stream: u8,
        inc: u32,
    },
    Rst {
        stream: u8,
        code: u32,
    },
    Unknown {
        ty: u8,
        len: u16,
    },
    GoAway {
        debug: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..12, 0u16..3000, any::<bool>(), any::<bool>())
            .prop_map(|(stream, len, syn, fin)| Op::Data { stream, len, syn, fin }),
        1 => (0u8..12, 1u32..0x7FFF_FFFF).prop_map(|(stream, inc)| Op::WndInc { stream, inc }),
        1 => (0u8..12, any::<u32>()).prop_map(|(stream, code)| Op::Rst { stream, code }),
        1 => (4u8..16, 0u16..300).prop_map(|(ty, len)| Op::Unknown { ty, len }),
        1 => (0u16..100).prop_map(|debug| Op::GoAway { debug }),
    ]
}

fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        // Streams 0..12 map to client ids 1, 3, … and a few server ids.
        let id = |s: u8| {
            if s < 10 {
                1 + 2 * u32::from(s)
            } else {
                2 * u32::from(s)
            }
        };
        let fill = |n: u16| vec![i as u8; n as usize];
        match *op {
            Op::Data {
                stream,
                len,
                syn,
                fin,
            } => {
                let flags = if syn { FLAG_SYN } else { 0 } | if fin { FLAG_FIN } else { 0 };
                frame::encode_data(&mut b, id(stream), &fill(len), flags).unwrap();
            }
            Op::WndInc { stream, inc } => frame::encode_wndinc(&mut b, id(stream), inc).unwrap(),
            Op::Rst { stream, code } => {
                frame::encode_rst(&mut b, id(stream), ErrorCode::from_u32(code)).unwrap()
            }
            Op::Unknown { ty, len } => frame::Frame::Unknown {
                ty,
                flags: 0,
                stream_id: i as u32,
                payload: &fill(len),
            }
            .encode(&mut b)
            .unwrap(),
            Op::GoAway { debug } => {
                frame::encode_goaway(&mut b, 0, ErrorCode::NoError, &fill(debug)).unwrap()
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_same_result(
        ops in proptest::collection::vec(op(), 1..40),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let input = encode_ops(&ops);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(replay(&input, &cuts), replay(&input, &[]));
    }
}
