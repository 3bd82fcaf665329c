//! The sans-IO session: a plain struct fed with bytes, application calls and
//! time, which yields bytes to transmit and events.
//!
//! Methods come in four kinds, called in one rhythm:
//! - getters (`&self`): [`Session::stream_id`], [`Session::stats`], …;
//! - `handle_*`: what arrives from the network or the clock;
//! - mutators: the application's commands ([`Session::open`], [`Session::write`],
//!   [`Session::read`], [`Session::reset`], …);
//! - `poll_*`: what the caller must do next ([`Session::poll_transmit`],
//!   [`Session::poll_event`], [`Session::poll_timeout`]), called after every
//!   handle or mutate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slab::Slab;

use super::config::Config;
use super::flow::FlowControl;
use super::ids::{IdAllocator, IdMap, Role};
use super::memory::SessionMemory;
use super::reader::{FrameReader, Sink, Step};
use super::scheduler::{Scheduler, Stall};
use super::stream::{StreamKey, StreamState};
use super::transmit::{Transmit, ZERO_COPY_MIN};
use crate::copy;
use crate::error::{Error, ErrorCode};
use crate::frame::{self, FrameType, Header, FLAG_FIN, FLAG_SYN, GOAWAY_FIXED_LEN, MAX_PAYLOAD};
use crate::lease::Lender;

/// How often a session paused by the shared memory budget asks it again.
const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// Largest drained receive buffer a stream keeps (a larger one goes back
/// to the session's spares): well within [`STREAM_COST`](super::STREAM_COST).
const KEEP_RECV_BUF: usize = 256;

/// Smallest payload piece kept as a lease on the transport's receive buffer
/// instead of copied (see [`Session::handle_input`]): smaller pieces (an
/// rpc's messages) cost less to copy than to track, and would pin a whole
/// ring slot for a few bytes.
const LEND_MIN: usize = 4096;

/// Most leases one stream holds: past it, its payloads are copied, so that a
/// stream whose reader is slow holds at most this many ring slots.
const LEND_PER_STREAM: usize = 16;

/// Most leases all streams of a session hold together (the ring is shared by
/// every session on the core, which bounds lending again, see `Lender`).
const LEND_PER_SESSION: usize = 32;

/// Largest receive window: credit must fit a WNDINC's 31 bits with room to spare.
pub const MAX_WINDOW: u32 = 1 << 30;

/// Something the caller should act on; see [`Session::poll_event`].
///
/// Stream events fire only for a stream whose last [`Session::read`] or
/// [`Session::write`] had to wait, and once per wait, so the queue stays as
/// small as the number of waiting streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A stream that waited to read has data, EOF or an error.
    Readable(StreamKey),
    /// A stream that waited to write has window or buffer space, or an error.
    Writable(StreamKey),
    /// An inbound stream is waiting (after [`Session::accept`] returned `None`),
    /// or the session died.
    Accept,
    /// The peer sent GOAWAY; see [`Session::remote_goaway`].
    GoAway,
    /// The session died; see [`Session::error`]. Transmit what is left, then
    /// close the transport.
    Dead,
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames decoded from the peer.
    pub frames_in: u64,
    /// Frames encoded for the peer.
    pub frames_out: u64,
    /// Bytes handed to [`Session::handle_input`].
    pub bytes_in: u64,
    /// Bytes handed out by [`Session::poll_transmit`] (and
    /// [`Session::poll_transmit_vectored`]).
    pub bytes_out: u64,
    /// Payload bytes [`Session::write_bytes`] queued by reference instead of
    /// copying them (part of `bytes_out` once transmitted).
    pub bytes_by_reference: u64,
    /// Times a write waited because the stream's send window was empty.
    pub window_stalls: u64,
    /// Times a write waited for outgoing buffer space or its fairness quota.
    pub buffer_stalls: u64,
    /// Streams opened by this side.
    pub streams_opened: u64,
    /// Streams accepted from the peer.
    pub streams_accepted: u64,
    /// Payload bytes kept in the transport's receive buffers (lent to the
    /// stream) instead of copied: only on the io_uring engine, for pieces of
    /// at least 4 KiB, while the stream and session are within their share.
    pub bytes_lent: u64,
    /// Inbound streams refused (backlog full, limit reached, after GOAWAY).
    pub streams_refused: u64,
}

/// One muxado session, sans I/O.
///
/// ```
/// use muxado::proto::{Event, Role, Session};
/// use std::time::Instant;
///
/// let now = Instant::now();
/// let mut client = Session::new(Role::Client, Default::default());
/// let mut server = Session::new(Role::Server, Default::default());
///
/// let s = client.open().unwrap();
/// assert_eq!(client.write(s, b"hello").unwrap(), 5);
/// client.close_write(s).unwrap();
///
/// let mut wire = bytes::BytesMut::new();
/// assert!(client.poll_transmit(&mut wire));
/// server.handle_input(now, &wire);
///
/// let t = server.accept().unwrap().unwrap();
/// let mut buf = [0u8; 16];
/// assert_eq!(server.read(t, &mut buf).unwrap(), Some(5));
/// assert_eq!(&buf[..5], b"hello");
/// assert_eq!(server.read(t, &mut buf).unwrap(), Some(0)); // FIN: end of stream
/// ```
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Config,
    flow: FlowControl,
    sched: Scheduler,
    memory: SessionMemory,
    reader: FrameReader,

    streams: Slab<StreamState>,
    table: IdMap,
    next_gen: u32,
    ids: IdAllocator,
    ids_exhausted: bool,
    remote_last_id: u32,
    accept_queue: VecDeque<StreamKey>,
    want_accept: bool,
    /// Locally reset streams with the time they may be forgotten, in
    /// deadline order.
    lingering: VecDeque<(Instant, StreamKey)>,
    /// While the shared memory budget is used up, when to ask it again (the
    /// sessions that free memory may live on other threads and cannot wake
    /// this one).
    budget_retry: Option<Instant>,
    /// While over a memory budget (input paused): when the pause runs out
    /// unless the application reads meanwhile, and `app_read` when its clock
    /// last (re)started ([`Config::max_pause`]).
    pause: Option<(Instant, u64)>,
    /// Since when the session sheds (`None`: it does not): the pause ran out
    /// with nothing read, so the session reads on, and DATA it cannot hold
    /// resets its stream. It ends once the session is under its budget, but
    /// not before `max_pause` after it began:
    /// the resets free memory by themselves, and ending at once would start
    /// a new pause each time the session filled up again, so that a stuck
    /// application would see one pause per budget's worth of input (a
    /// window overrun behind it answered only many pauses later).
    shed_since: Option<Instant>,
    /// Bytes the application read from streams that were not reset: its
    /// progress, as the pause and shedding measure it.
    app_read: u64,
    /// While a frame is incomplete: when it must be complete
    /// ([`Config::frame_timeout`]).
    frame_deadline: Option<Instant>,
    /// When the last input arrived (or the session began), for
    /// [`Config::idle_timeout`].
    last_input: Option<Instant>,
    goaway_event_queued: bool,
    /// The GOAWAY being read: its last id and code, and its debug data so
    /// far. It takes effect, and shows in `remote_goaway`, once complete.
    pending_goaway: (u32, ErrorCode),
    pending_goaway_debug: Vec<u8>,

    out: Transmit,
    events: VecDeque<Event>,
    /// Leases held by all streams' receive buffers.
    lent: usize,

    local_gone_away: bool,
    remote_goaway: Option<(ErrorCode, Vec<u8>)>,
    error: Option<Error>,
    stats: Stats,
}

impl Session {
    /// A new session in the given role. Nothing is sent until a stream writes.
    pub fn new(role: Role, mut config: Config) -> Self {
        config.max_window = config.max_window.clamp(1, MAX_WINDOW);
        config.max_auto_window = config.max_auto_window.clamp(config.max_window, MAX_WINDOW);
        Session {
            role,
            flow: FlowControl::new(&config),
            sched: Scheduler::new(),
            memory: SessionMemory::new(config.max_session_memory, config.memory_budget.clone()),
            reader: FrameReader::new(),
            streams: Slab::new(),
            table: IdMap::default(),
            next_gen: 0,
            ids: IdAllocator::new(role),
            ids_exhausted: false,
            remote_last_id: role.initial_remote_last_id(),
            // Grows on demand: a backlog-sized buffer per session was a
            // measurable cost of short sessions.
            accept_queue: VecDeque::new(),
            want_accept: false,
            lingering: VecDeque::new(),
            budget_retry: None,
            pause: None,
            shed_since: None,
            app_read: 0,
            frame_deadline: None,
            // The one clock read outside the `now` arguments: an idle
            // session must time out even if it never receives a byte.
            last_input: config.idle_timeout.map(|_| Instant::now()),
            goaway_event_queued: false,
            pending_goaway: (0, ErrorCode::NoError),
            pending_goaway_debug: Vec::new(),
            out: Transmit::new(),
            events: VecDeque::new(),
            lent: 0,
            local_gone_away: false,
            remote_goaway: None,
            error: None,
            stats: Stats::default(),
            config,
        }
    }

    // ---- getters ---------------------------------------------------------

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Streams alive (open, queued for accept, or held by the application).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Inbound streams waiting for [`Session::accept`].
    pub fn accept_queue_len(&self) -> usize {
        self.accept_queue.len()
    }

    /// The wire id of a stream.
    pub fn stream_id(&self, key: StreamKey) -> Result<u32, Error> {
        Ok(self.get(key)?.id)
    }

    /// Bytes a stream may still send before it needs a WNDINC.
    pub fn send_window(&self, key: StreamKey) -> Result<u64, Error> {
        Ok(self.get(key)?.send_window)
    }

    /// How much the peer may have unread on a stream: `max_window`, or more
    /// once auto-tuning has grown it (never beyond `max_auto_window`).
    pub fn recv_window(&self, key: StreamKey) -> Result<u32, Error> {
        Ok(self.get(key)?.recv_window)
    }

    /// Bytes received on a stream and not yet read.
    pub fn readable_len(&self, key: StreamKey) -> Result<usize, Error> {
        Ok(self.get(key)?.recv_buf.len())
    }

    /// The error that killed the session, once it is dead.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// True once the session is dead.
    pub fn is_dead(&self) -> bool {
        self.error.is_some()
    }

    /// The peer's GOAWAY (code, debug data), once one has arrived whole
    /// (debug data beyond [`Config::max_goaway_debug`] is dropped); the
    /// last one if several did.
    pub fn remote_goaway(&self) -> Option<(ErrorCode, &[u8])> {
        self.remote_goaway.as_ref().map(|(c, d)| (*c, d.as_slice()))
    }

    /// Bytes waiting to be transmitted: frames in the outgoing buffer and
    /// the payloads queued by reference beside them.
    pub fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// False while the session holds more memory than its budget (or the
    /// shared [`MemoryBudget`](super::MemoryBudget)) allows: the driver
    /// should stop reading its transport, so that TCP's flow control holds
    /// the peer back, and read again once this turns true, which happens
    /// as the application reads or resets its streams (check it after every
    /// call). Meanwhile new peer streams are refused with RST StreamRefused.
    /// A dead session always wants input (it is drained and dropped).
    ///
    /// A pause in which the application reads nothing for
    /// [`Config::max_pause`] ends (on [`Session::handle_timeout`]): this
    /// turns true again while the session is still over its budget, and
    /// DATA it cannot hold then resets its stream with RST FlowControlError
    /// instead of being held, so that control frames (credit the
    /// application may be waiting for) and overruns are read and answered:
    /// a full session never stalls. For `max_pause` after that, a session
    /// that fills up again sheds at once.
    #[inline]
    pub fn wants_input(&self) -> bool {
        self.error.is_some() || self.shed_since.is_some() || !self.memory.over(self.streams.len())
    }

    /// Bytes of memory the session holds now, as its budget counts them:
    /// received bytes not yet read, spare buffers, and
    /// [`STREAM_COST`](super::STREAM_COST) per stream.
    pub fn memory_held(&self) -> usize {
        self.memory.held(self.streams.len())
    }

    /// Received bytes not yet read, over all streams.
    pub fn buffered_input(&self) -> usize {
        self.memory.buffered()
    }

    // ---- handle_* --------------------------------------------------------

    /// Feeds bytes received from the transport. Any split of the byte stream
    /// gives the same result; payloads go straight into stream buffers. After
    /// the session dies, input is ignored. A driver should feed input only
    /// while [`Session::wants_input`] says so.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.input(now, data, None);
    }

    /// [`Session::handle_input`] for a chunk that can lend its bytes: DATA
    /// payload pieces of at least 4 KiB are kept as leases on `chunk`
    /// instead of copied, while the stream and the session hold fewer than
    /// their share of leases (and `chunk`'s pool agrees); the rest is copied.
    pub(crate) fn handle_input_lent(&mut self, now: Instant, data: &[u8], chunk: &dyn Lender) {
        self.input(now, data, Some(chunk));
    }

    fn input(&mut self, now: Instant, mut data: &[u8], lender: Option<&dyn Lender>) {
        let base = data.as_ptr() as usize;
        self.stats.bytes_in += data.len() as u64;
        let headers_before = self.stats.frames_in;
        if !data.is_empty() {
            self.last_input = Some(now);
        }
        // The application may have drained the session since the last input.
        self.track_pause(now);
        while self.error.is_none() {
            let Some(step) = self.reader.next(&mut data) else {
                break;
            };
            match step {
                Step::Header(header) => self.on_header(now, header),
                Step::Fixed(header, body) => self.on_fixed_body(header, body),
                Step::Payload { sink, chunk, end } => {
                    // The piece lies within `data`: its offset there is
                    // its offset in the lender's chunk.
                    let lend = lender.map(|l| (l, chunk.as_ptr() as usize - base));
                    self.on_payload(sink, chunk, lend);
                    if let Some(header) = end {
                        self.on_frame_end(header, sink);
                    }
                }
            }
            self.check_control_backlog();
        }
        self.memory.settle(self.streams.len());
        if self.memory.global_full() && self.budget_retry.is_none() {
            self.budget_retry = Some(now + BUDGET_RETRY);
        }
        self.track_pause(now);
        // The deadline belongs to the frame in progress: it is kept only
        // while no new header was read (the same frame is still incomplete);
        // a stream of frames where every read ends inside one is not late.
        self.frame_deadline = match self.config.frame_timeout {
            Some(t) if self.reader.mid_frame() && self.error.is_none() => {
                match self.frame_deadline {
                    Some(d) if self.stats.frames_in == headers_before => Some(d),
                    _ => Some(now + t),
                }
            }
            _ => None,
        };
    }

    /// The transport reached end-of-file: the session dies with PeerEOF.
    ///
    /// After the peer's GOAWAY, an EOF is its orderly close: it reads no more
    /// (Go closes the whole connection), so our own GOAWAY would only cost a
    /// send, and a reset if the peer's socket is already closed. The session
    /// dies without it.
    pub fn handle_eof(&mut self) {
        let quiet =
            self.remote_goaway.is_some() && !self.reader.mid_frame() && self.error.is_none();
        let mark = self.out.buf.len();
        self.die(Error::PeerEof(if self.reader.mid_frame() {
            "unexpected EOF from remote peer in the middle of a frame"
        } else {
            "read EOF from remote peer"
        }));
        if quiet {
            self.out.buf.truncate(mark);
            self.stats.frames_out -= 1;
        }
    }

    /// The transport failed: the session dies with ErrorUnknown (0xFF).
    pub fn handle_transport_error(&mut self, message: &str) {
        self.die(Error::Transport(message.into()));
    }

    /// Advances the clock: streams reset long enough ago are forgotten, and a
    /// session paused by the shared memory budget asks it again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.error.is_some() {
            return;
        }
        if let Some(deadline) = self.frame_deadline.filter(|&t| t <= now) {
            if self.wants_input() {
                self.frame_deadline = None;
                self.die(Error::Protocol {
                    code: ErrorCode::ProtocolError,
                    reason: "a frame stayed incomplete past the frame timeout",
                });
                return;
            }
            // Paused by a memory budget: we are the ones not reading, so the
            // peer's frame is not late; its clock restarts.
            let t = self.config.frame_timeout.unwrap_or_default();
            self.frame_deadline = Some(deadline.max(now) + t);
        }
        if let Some(deadline) = self.idle_deadline(now) {
            if deadline <= now {
                self.die(Error::SessionClosed);
                return;
            }
        }
        if self.budget_retry.is_some_and(|t| t <= now) {
            self.memory.settle(self.streams.len());
            self.budget_retry = self.memory.global_full().then(|| now + BUDGET_RETRY);
        }
        while let Some(&(deadline, key)) = self.lingering.front() {
            if deadline > now {
                break;
            }
            self.lingering.pop_front();
            if let Some(s) = self.get_mut_opt(key) {
                let id = s.id;
                self.unregister(key.slot as usize, id);
            }
        }
        self.memory.settle(self.streams.len());
        self.track_pause(now);
    }

    /// Keeps the pause clock ([`Config::max_pause`]): started when the
    /// session goes over a budget, restarted when the application read
    /// since, and when it runs out with nothing read, the session sheds.
    /// Shedding ends once the session is back under its budget, `max_pause`
    /// after it began at the earliest.
    fn track_pause(&mut self, now: Instant) {
        let over = self.memory.over(self.streams.len());
        if self.error.is_some() {
            self.pause = None;
            self.shed_since = None;
            return;
        }
        if let Some(since) = self.shed_since {
            let done = self
                .config
                .max_pause
                .map_or(true, |limit| now >= since + limit);
            if !over && done {
                self.shed_since = None;
            }
            return;
        }
        if !over {
            self.pause = None;
            return;
        }
        let Some(limit) = self.config.max_pause else {
            return;
        };
        match self.pause {
            Some((deadline, mark)) if self.app_read == mark && deadline <= now => {
                self.pause = None;
                self.shed_since = Some(now);
            }
            Some((_, mark)) if self.app_read == mark => {}
            // Paused now, or the application read since the clock started.
            _ => self.pause = Some((now + limit, self.app_read)),
        }
    }

    // ---- mutators ---------------------------------------------------------

    /// Opens a stream. Nothing is sent until its first write or FIN, which
    /// carries SYN (lazy open, as in Go).
    pub fn open(&mut self) -> Result<StreamKey, Error> {
        if self.error.is_some() {
            return Err(Error::SessionClosed);
        }
        if self.remote_goaway.is_some() {
            return Err(Error::RemoteGoneAway);
        }
        if self.ids_exhausted {
            return Err(Error::StreamsExhausted);
        }
        if self.streams.len() >= self.config.max_streams {
            return Err(Error::TooManyStreams(self.config.max_streams));
        }
        let Some(id) = self.ids.allocate() else {
            self.ids_exhausted = true;
            return Err(Error::StreamsExhausted);
        };
        self.stats.streams_opened += 1;
        Ok(self.insert_stream(id, true))
    }

    /// Takes the next inbound stream: `Ok(None)` if none is waiting (an
    /// [`Event::Accept`] follows when one arrives). Streams queued before the
    /// session died are still handed out; after them, the session's error.
    pub fn accept(&mut self) -> Result<Option<StreamKey>, Error> {
        if let Some(key) = self.accept_queue.pop_front() {
            return Ok(Some(key));
        }
        if self.error.is_some() {
            return Err(Error::SessionClosed);
        }
        self.want_accept = true;
        Ok(None)
    }

    /// Queues up to `data.len()` bytes as DATA frames copied straight into the
    /// outgoing buffer. Returns how many were taken; `Ok(0)` for non-empty
    /// `data` means wait for [`Event::Writable`] (window empty, buffer full, or
    /// this stream's fair share of the current transmission used up).
    pub fn write(&mut self, key: StreamKey, data: &[u8]) -> Result<usize, Error> {
        let Some((id, n, flags)) = self.admit_data(key, data.len())? else {
            return Ok(0);
        };
        frame::encode_data_header(&mut self.out.buf, id, n, flags).expect("id and length checked");
        copy::extend(&mut self.out.buf, &data[..n]);
        Ok(n)
    }

    /// Like [`Session::write`], with the same window, buffer and fairness
    /// rules, but a payload of at least [`ZERO_COPY_MIN`] bytes is not copied:
    /// the frame's header goes into the outgoing buffer and the payload (a
    /// [`Bytes::slice`] of `data`: no allocation) is queued beside it, to be
    /// sent from where it is ([`Session::poll_transmit_vectored`]). The queued
    /// payload counts toward [`Config::max_send_buffer`] like copied bytes.
    /// Shorter payloads are copied (cheaper than the bookkeeping).
    ///
    /// `data` is borrowed so that a write that must wait costs nothing; what
    /// is taken is a clone or slice of it, which allocates nothing for a
    /// static or shared `Bytes` (one made from a `Vec` becomes shared, with
    /// one allocation, at its first clone). Like copied bytes, queued parts
    /// are sent even if the stream is reset or the session dies meanwhile
    /// (before the RST or GOAWAY), and are released once transmitted (or
    /// with the session).
    pub fn write_bytes(&mut self, key: StreamKey, data: &Bytes) -> Result<usize, Error> {
        let Some((id, n, flags)) = self.admit_data(key, data.len())? else {
            return Ok(0);
        };
        frame::encode_data_header(&mut self.out.buf, id, n, flags).expect("id and length checked");
        if n >= ZERO_COPY_MIN {
            let part = if n == data.len() {
                data.clone()
            } else {
                data.slice(..n)
            };
            self.out.parts.push((self.out.buf.len(), part));
            self.out.parts_len += n;
            self.stats.bytes_by_reference += n as u64;
        } else {
            copy::extend(&mut self.out.buf, &data[..n]);
        }
        Ok(n)
    }

    /// Admits up to `len` bytes of DATA on `key`: `Some((id, n, flags))` for
    /// a frame of `n` bytes the caller then queues, `None` to wait (the stream
    /// is told to expect [`Event::Writable`]).
    fn admit_data(
        &mut self,
        key: StreamKey,
        len: usize,
    ) -> Result<Option<(u32, usize, u8)>, Error> {
        let room = self.config.max_send_buffer.saturating_sub(self.out.len());
        let s = self.get_mut(key)?;
        check_writable(s)?;
        if len == 0 {
            return Ok(None);
        }
        let s = &mut self.streams[key.slot as usize];
        let n = match self.sched.admit(key, s, len, room, &self.config) {
            Ok(n) => n,
            Err(stall) => {
                s.want_write = true;
                match stall {
                    Stall::Window => self.stats.window_stalls += 1,
                    Stall::Buffer => self.stats.buffer_stalls += 1,
                }
                return Ok(None);
            }
        };
        let flags = if s.syn_sent { 0 } else { FLAG_SYN };
        s.syn_sent = true;
        s.send_window -= n as u64;
        self.stats.frames_out += 1;
        Ok(Some((s.id, n, flags)))
    }

    /// Copies received bytes into `dst`. `Ok(Some(n))` with n > 0: data;
    /// `Ok(Some(0))`: the peer finished the stream (or `dst` is empty);
    /// `Ok(None)`: nothing yet, wait for [`Event::Readable`]. Data that arrived
    /// before a reset or the session's death is still returned before the error.
    /// Consumed bytes are credited back to the peer with coalesced WNDINCs.
    pub fn read(&mut self, key: StreamKey, dst: &mut [u8]) -> Result<Option<usize>, Error> {
        if dst.is_empty() {
            return self.get(key).map(|_| Some(0));
        }
        let s = self.get_mut(key)?;
        if s.recv_buf.is_empty() {
            // EOF, an error, or nothing yet: as `read_with` says.
            return self.read_with(key, |_| 0);
        }
        let (n, released) = s.recv_buf.read_into(dst);
        self.finish_read(key, n, released);
        Ok(Some(n))
    }

    /// Lends the received bytes to `consume` in place, without copying them
    /// out, like `BufRead::fill_buf` + `consume` in one call: `consume` returns
    /// how many it used (the rest stay for the next read), and that count is
    /// returned. An empty slice means the peer finished the stream. `Ok(None)`:
    /// nothing yet (`consume` was not called); wait for [`Event::Readable`].
    /// Errors and crediting as for [`Session::read`].
    ///
    /// `consume` sees one contiguous piece of what is buffered: on the
    /// io_uring engine, a large payload stays in the receive buffer it
    /// arrived in, so the bytes after it may be in another piece; loop (as
    /// for `fill_buf`) to take them all.
    pub fn read_with(
        &mut self,
        key: StreamKey,
        consume: impl FnOnce(&[u8]) -> usize,
    ) -> Result<Option<usize>, Error> {
        let s = self.get_mut(key)?;
        if !s.recv_buf.is_empty() {
            // Only the front piece: the bytes after it may live elsewhere
            // (copied, or in another lent receive buffer).
            let front = s.recv_buf.front();
            let n = consume(front).min(front.len());
            let released = s.recv_buf.consume(n);
            self.finish_read(key, n, released);
            return Ok(Some(n));
        }
        if s.recv_fin {
            consume(&[]);
            return Ok(Some(0));
        }
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        if s.closed {
            return Err(Error::StreamClosed);
        }
        s.want_read = true;
        Ok(None)
    }

    /// Book-keeping after `n` bytes of a stream were read, which dropped
    /// `released` leases.
    fn finish_read(&mut self, key: StreamKey, n: usize, released: usize) {
        let s = &mut self.streams[key.slot as usize];
        // Reclaim the consumed front (never allocates) to see the buffer's
        // whole size.
        s.recv_buf.reclaim_drained();
        let drained = s.recv_buf.is_empty();
        let large = s.recv_buf.capacity() > KEEP_RECV_BUF;
        if s.error.is_none() {
            self.app_read += n as u64;
        }
        self.lent -= released;
        self.memory.sub_buffered(n);
        // A small drained buffer stays with its stream (its size is within
        // the per-stream estimate, STREAM_COST): a stream trading small
        // messages would otherwise cycle one through the pool on every
        // message. A large one goes back to the session's spares for the
        // next stream that receives: an idle stream holds no large buffer.
        if drained && large {
            self.recycle_recv_buf(key.slot as usize);
        }
        self.credit(key, n);
        self.memory.settle(self.streams.len());
    }

    /// Half-closes the stream: sends FIN (with SYN if nothing was sent yet).
    /// Reading continues. Calling it again does nothing (Go would send
    /// another empty FIN frame).
    pub fn close_write(&mut self, key: StreamKey) -> Result<(), Error> {
        let s = self.get_mut(key)?;
        if s.send_fin && s.error.is_none() {
            return Ok(());
        }
        check_writable(s)?;
        self.send_fin(key);
        Ok(())
    }

    /// Closes the stream like Go's `Close`: sends FIN if not yet sent, then
    /// forgets the stream's id, so that data the peer still sends is answered
    /// with RST StreamClosed. Data already received can still be read; after
    /// it, reads fail with [`Error::StreamClosed`]. No RST is sent.
    pub fn close(&mut self, key: StreamKey) -> Result<(), Error> {
        let dead = self.error.is_some();
        let s = self.get_mut(key)?;
        if s.closed {
            return Ok(());
        }
        s.closed = true;
        // The bytes stay readable, but not in the ring's slots: an
        // application that closes without reading must not pin them.
        let released = s.recv_buf.unlend();
        let failed = s.error.is_some();
        let send_fin = s.send_fin;
        self.lent -= released;
        if dead || failed {
            // A reset stream lingers in the table by itself; nothing to send.
            return Ok(());
        }
        if !send_fin {
            self.send_fin(key);
        }
        let id = self.streams[key.slot as usize].id;
        self.unregister(key.slot as usize, id);
        Ok(())
    }

    /// Resets the stream: sends RST(code) if the peer knows the stream, fails
    /// both directions locally and drops buffered data. The id stays known for
    /// [`Config::reset_linger`] so late frames are absorbed silently.
    ///
    /// `now` dates the linger: the session keeps no clock of its own, and a
    /// time cached from the last input could be older than the linger itself
    /// on an idle session, so the id would be forgotten at once.
    pub fn reset(&mut self, now: Instant, key: StreamKey, code: ErrorCode) -> Result<(), Error> {
        let dead = self.error.is_some();
        let s = self.get_mut(key)?;
        if s.error.is_some() || dead {
            return Ok(());
        }
        let in_table = s.in_table;
        self.recycle_recv_buf(key.slot as usize);
        self.memory.settle(self.streams.len());
        if in_table {
            self.reset_stream(now, key, code);
        } else {
            self.fail_stream(key, Error::LocalReset(code));
        }
        Ok(())
    }

    /// The application dropped its handle. An open stream is closed as by
    /// [`Session::close`]; the slot is freed once the id is forgotten.
    pub fn release(&mut self, key: StreamKey) {
        let Ok(s) = self.get_mut(key) else { return };
        if !s.closed {
            let _ = self.close(key);
        }
        self.streams[key.slot as usize].held = false;
        self.recycle_recv_buf(key.slot as usize);
        self.maybe_free(key.slot as usize);
        self.memory.settle(self.streams.len());
    }

    /// Sends GOAWAY(code, debug) without closing: from now on inbound SYNs are
    /// refused with RST StreamRefused; existing streams carry on. (Old Go peers
    /// mis-read a GOAWAY followed by other frames; see the README.)
    pub fn go_away(&mut self, code: ErrorCode, debug: &[u8]) -> Result<(), Error> {
        if self.error.is_some() {
            return Err(Error::SessionClosed);
        }
        let debug = &debug[..debug.len().min(MAX_PAYLOAD as usize - GOAWAY_FIXED_LEN)];
        frame::encode_goaway(&mut self.out.buf, self.remote_last_id, code, debug)
            .expect("last id and length are in range");
        self.stats.frames_out += 1;
        self.local_gone_away = true;
        Ok(())
    }

    /// Closes the session: GOAWAY(NoError, "no error"), then nothing more is
    /// sent. Every stream fails with SessionClosed. A second call does nothing.
    pub fn close_session(&mut self) {
        self.die(Error::SessionClosed);
    }

    // ---- poll_* -----------------------------------------------------------

    /// Hands the bytes to transmit to the caller by swapping buffers: `spare`
    /// (its contents are discarded, its capacity reused) becomes the session's
    /// new outgoing buffer and the filled one is returned in `spare`, so
    /// neither side copies or allocates. Returns false when there is nothing to
    /// send. Writers that waited for buffer space are woken.
    ///
    /// Payloads that [`Session::write_bytes`] queued by reference are copied
    /// into `spare` in their place: a driver that can send vectored should
    /// call [`Session::poll_transmit_vectored`] instead.
    pub fn poll_transmit(&mut self, spare: &mut BytesMut) -> bool {
        if self.out.is_empty() {
            return false;
        }
        spare.clear();
        if self.out.has_parts() {
            self.out.flatten_into(spare);
            self.out.clear();
        } else {
            std::mem::swap(spare, &mut self.out.buf);
        }
        self.on_transmitted(spare.len());
        true
    }

    /// Hands the bytes to transmit to the caller, payloads queued by
    /// [`Session::write_bytes`] included by reference: `t` (its contents are
    /// released, its buffers reused) trades places with the session's
    /// outgoing [`Transmit`], so nothing is copied or allocated. Send its
    /// [`Transmit::chunks`] in order. Returns false when there is nothing to
    /// send. Writers that waited for buffer space are woken.
    pub fn poll_transmit_vectored(&mut self, t: &mut Transmit) -> bool {
        if self.out.is_empty() {
            return false;
        }
        t.clear();
        std::mem::swap(t, &mut self.out);
        self.on_transmitted(t.len());
        true
    }

    /// `n` bytes left the session: a new transmit epoch, and the writers that
    /// waited for buffer space are woken.
    fn on_transmitted(&mut self, n: usize) {
        self.stats.bytes_out += n as u64;
        self.sched.on_transmit();
        while let Some(key) = self.sched.next_waiter() {
            if let Some(s) = self.get_mut_opt(key) {
                s.waiting_for_buffer = false;
                self.notify_write(key);
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event == Some(Event::GoAway) {
            self.goaway_event_queued = false;
        }
        event
    }

    /// When [`Session::handle_timeout`] should next be called.
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        // Drivers ask after every call: the common answers (none, or only
        // a frame deadline) take no more than a few compares.
        let mut next = self.frame_deadline;
        for t in [
            self.lingering.front().map(|&(t, _)| t),
            self.budget_retry,
            self.pause.map(|(t, _)| t),
            self.last_input.and_then(|t| self.idle_deadline(t)),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    /// When an idle session closes itself: `idle_timeout` after the last
    /// input (or after `now`, the first time the clock is read), while no
    /// stream is open.
    fn idle_deadline(&self, now: Instant) -> Option<Instant> {
        let t = self.config.idle_timeout?;
        if !self.streams.is_empty() {
            return None;
        }
        Some(self.last_input.unwrap_or(now) + t)
    }

    // ---- frame reading ----------------------------------------------------

    fn on_header(&mut self, now: Instant, header: Header) {
        self.stats.frames_in += 1;
        if let Err(e) = header.validate() {
            self.die(Error::Protocol {
                code: e.code(),
                reason: e.reason(),
            });
            return;
        }
        match header.ty {
            FrameType::Rst | FrameType::WndInc | FrameType::GoAway => {
                self.reader.expect_fixed(header);
            }
            FrameType::Data => {
                let sink = self.on_data_header(now, header);
                self.begin_payload(header, header.length, sink);
            }
            FrameType::Unknown(_) => self.begin_payload(header, header.length, Sink::Drain),
        }
    }

    fn begin_payload(&mut self, header: Header, len: u32, sink: Sink) {
        if !self.reader.expect_payload(header, len, sink) {
            self.on_frame_end(header, sink);
        }
    }

    fn on_fixed_body(&mut self, header: Header, body: [u8; GOAWAY_FIXED_LEN]) {
        let id = header.stream_id;
        let [a, b, c, d, ..] = body;
        match header.ty {
            FrameType::Rst => {
                let code = frame::parse_rst(&[a, b, c, d]);
                if let Some(&slot) = self.table.get(&id) {
                    let key = self.key_of(slot);
                    self.fail_stream(key, Error::RemoteReset(code));
                    self.unregister(slot, id);
                }
            }
            FrameType::WndInc => {
                let inc = match frame::parse_wndinc(&[a, b, c, d]) {
                    Ok(inc) => inc,
                    Err(e) => {
                        self.die(Error::Protocol {
                            code: e.code(),
                            reason: e.reason(),
                        });
                        return;
                    }
                };
                if let Some(&slot) = self.table.get(&id) {
                    let s = &mut self.streams[slot];
                    s.send_window = s.send_window.saturating_add(u64::from(inc));
                    let key = self.key_of(slot);
                    self.notify_write(key);
                }
            }
            FrameType::GoAway => {
                self.pending_goaway = frame::parse_goaway(&body);
                self.pending_goaway_debug.clear();
                let debug_len = header.length - GOAWAY_FIXED_LEN as u32;
                self.begin_payload(header, debug_len, Sink::GoAwayDebug);
            }
            FrameType::Data | FrameType::Unknown(_) => unreachable!("no fixed body"),
        }
    }

    /// Decides where a DATA frame's payload goes, applying SYN, table and
    /// flow-control rules (reference §6). Every rejected payload is drained.
    fn on_data_header(&mut self, now: Instant, h: Header) -> Sink {
        let id = h.stream_id;
        if h.syn() {
            if !self.role.is_remote_id(id) {
                self.die(Error::Protocol {
                    code: ErrorCode::ProtocolError,
                    reason: "SYN on a stream id of the wrong parity",
                });
                return Sink::Drain;
            }
            if self.table.contains_key(&id) {
                self.die(Error::Protocol {
                    code: ErrorCode::ProtocolError,
                    reason: "duplicate SYN for an open stream",
                });
                return Sink::Drain;
            }
            // Past the stream cap or the memory budgets a new stream is
            // refused as after GOAWAY: the peer may retry it later.
            let over_limit = self.streams.len() >= self.config.max_streams
                || !self.memory.admits_stream(self.streams.len());
            let refuse = if self.local_gone_away || over_limit {
                Some(ErrorCode::StreamRefused)
            } else if self.accept_queue.len() >= self.config.accept_backlog {
                Some(ErrorCode::AcceptQueueFull)
            } else {
                None
            };
            if let Some(code) = refuse {
                self.stats.streams_refused += 1;
                self.send_rst(id, code);
                return Sink::Drain;
            }
            let key = self.insert_stream(id, false);
            // Go overwrites `remote_last_id` with every SYN's id, but with lazy
            // SYN a peer's streams can arrive out of id order (open 3, open 5,
            // write on 5 first). A GOAWAY carrying 3 would make the peer fail
            // stream 5 locally (RemoteGoneAway, no RST) while we keep it open
            // and wait on it forever. GOAWAY's last id means "the highest
            // stream id I have seen" (reference §5.3), so keep the maximum.
            self.remote_last_id = self.remote_last_id.max(id);
            self.stats.streams_accepted += 1;
            self.accept_queue.push_back(key);
            if std::mem::take(&mut self.want_accept) {
                self.events.push_back(Event::Accept);
            }
        }
        let Some(&slot) = self.table.get(&id) else {
            if !(h.length == 0 && h.fin()) {
                self.send_rst(id, ErrorCode::StreamClosed);
            }
            return Sink::Drain;
        };
        let key = self.key_of(slot);
        let streams = self.streams.len();
        let s = &mut self.streams[slot];
        if !s.accepts_data() {
            if h.length > 0 && !s.rst_sent && s.error.is_none() {
                self.reset_stream(now, key, ErrorCode::StreamClosed);
            }
            return Sink::Drain;
        }
        if !FlowControl::admits(s, h.length) {
            self.reset_stream(now, key, ErrorCode::FlowControlError);
            return Sink::Drain;
        }
        // A session whose pause ran out (see `Config::max_pause`) reads on
        // but holds no more while over its budget: to the peer, its buffer
        // is smaller than the window, and the reference answers that with
        // FlowControlError (§4). The payload is drained.
        if self.shed_since.is_some() && h.length > 0 && self.memory.over(streams) {
            self.reset_stream(now, key, ErrorCode::FlowControlError);
            return Sink::Drain;
        }
        // Nothing is reserved ahead for the announced length: a peer could
        // announce large frames on many streams and send a byte of each.
        // The buffer grows with the bytes that actually arrive.
        if h.length > 0 && s.recv_buf.capacity() == 0 {
            s.recv_buf.set_buffer(self.memory.take_buffer());
        }
        Sink::Stream(key)
    }

    /// A piece of a payload, for `sink`; `lend` is the chunk it lies in and
    /// its offset there, if that chunk can lend it instead of a copy.
    fn on_payload(&mut self, sink: Sink, chunk: &[u8], lend: Option<(&dyn Lender, usize)>) {
        match sink {
            Sink::Stream(key) => {
                let session_share = self.lent < LEND_PER_SESSION;
                if let Some(s) = self.get_mut_opt(key) {
                    if s.accepts_data() {
                        let lease = match lend {
                            Some((lender, off))
                                if chunk.len() >= LEND_MIN
                                    && session_share
                                    && s.recv_buf.lent() < LEND_PER_STREAM =>
                            {
                                lender.lend(off, chunk.len())
                            }
                            _ => None,
                        };
                        match lease {
                            Some(lease) => {
                                s.recv_buf.push_lease(lease);
                                self.lent += 1;
                                self.stats.bytes_lent += chunk.len() as u64;
                            }
                            None => s.recv_buf.push_copy(chunk),
                        }
                        self.memory.add_buffered(chunk.len());
                        self.notify_read(key);
                    }
                }
            }
            Sink::GoAwayDebug => {
                let limit = self.config.max_goaway_debug;
                let debug = &mut self.pending_goaway_debug;
                let n = chunk.len().min(limit.saturating_sub(debug.len()));
                debug.extend_from_slice(&chunk[..n]);
            }
            Sink::Drain => {}
        }
    }

    fn on_frame_end(&mut self, h: Header, sink: Sink) {
        match (h.ty, sink) {
            (FrameType::Data, Sink::Stream(key)) if h.fin() => {
                let Some(s) = self.get_mut_opt(key) else {
                    return;
                };
                if !s.accepts_data() {
                    return;
                }
                s.recv_fin = true;
                s.credit = 0;
                let (fully, id) = (s.fully_closed(), s.id);
                self.notify_read(key);
                if fully {
                    self.unregister(key.slot as usize, id);
                }
            }
            (FrameType::GoAway, _) => self.on_goaway(),
            _ => {}
        }
    }

    /// The peer's GOAWAY is complete: no more opens, and our streams above its
    /// last id fail with RemoteGoneAway (no RST: the peer never saw them).
    fn on_goaway(&mut self) {
        let (last, code) = self.pending_goaway;
        let debug = std::mem::take(&mut self.pending_goaway_debug);
        self.remote_goaway = Some((code, debug));
        let doomed: Vec<(usize, u32)> = self
            .table
            .iter()
            .filter(|&(&id, &slot)| self.streams[slot].local && id > last)
            .map(|(&id, &slot)| (slot, id))
            .collect();
        for (slot, id) in doomed {
            let key = self.key_of(slot);
            self.fail_stream(key, Error::RemoteGoneAway);
            self.unregister(slot, id);
        }
        // One event however many GOAWAYs arrive before it is polled.
        if !std::mem::replace(&mut self.goaway_event_queued, true) {
            self.events.push_back(Event::GoAway);
        }
    }

    // ---- internals --------------------------------------------------------

    fn insert_stream(&mut self, id: u32, local: bool) -> StreamKey {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let slot = self
            .streams
            .insert(StreamState::new(id, gen, local, self.config.max_window));
        self.table.insert(id, slot);
        StreamKey {
            slot: slot as u32,
            gen,
        }
    }

    fn key_of(&self, slot: usize) -> StreamKey {
        StreamKey {
            slot: slot as u32,
            gen: self.streams[slot].gen,
        }
    }

    fn get(&self, key: StreamKey) -> Result<&StreamState, Error> {
        match self.streams.get(key.slot as usize) {
            Some(s) if s.gen == key.gen && s.held => Ok(s),
            _ => Err(Error::StaleHandle),
        }
    }

    fn get_mut(&mut self, key: StreamKey) -> Result<&mut StreamState, Error> {
        match self.streams.get_mut(key.slot as usize) {
            Some(s) if s.gen == key.gen && s.held => Ok(s),
            _ => Err(Error::StaleHandle),
        }
    }

    fn get_mut_opt(&mut self, key: StreamKey) -> Option<&mut StreamState> {
        self.streams
            .get_mut(key.slot as usize)
            .filter(|s| s.gen == key.gen)
    }

    /// Forgets the stream's id; frees the slot if nobody holds it.
    fn unregister(&mut self, slot: usize, id: u32) {
        let s = &mut self.streams[slot];
        if s.in_table {
            s.in_table = false;
            self.table.remove(&id);
        }
        self.maybe_free(slot);
    }

    fn maybe_free(&mut self, slot: usize) {
        let s = &self.streams[slot];
        if !s.in_table && !s.held {
            let s = self.streams.remove(slot);
            self.flow.release(&s);
            self.memory.sub_buffered(s.recv_buf.len());
            // Its leases go back to their ring as `s` drops.
            self.lent -= s.recv_buf.lent();
            if self.streams.is_empty() {
                // An idle session keeps no spare buffers.
                self.memory.drop_pool();
            }
        }
    }

    /// Empties a stream's receive buffer (the bytes are gone: read or
    /// discarded) and hands the buffer to the session's spares.
    fn recycle_recv_buf(&mut self, slot: usize) {
        let (buf, len, lent) = self.streams[slot].recv_buf.take();
        self.memory.sub_buffered(len);
        self.lent -= lent;
        self.memory.give_buffer(buf, self.streams.len());
    }

    fn send_fin(&mut self, key: StreamKey) {
        let s = &mut self.streams[key.slot as usize];
        let flags = if s.syn_sent {
            FLAG_FIN
        } else {
            FLAG_FIN | FLAG_SYN
        };
        s.syn_sent = true;
        s.send_fin = true;
        let (id, fully) = (s.id, s.fully_closed());
        frame::encode_data(&mut self.out.buf, id, &[], flags).expect("valid id");
        self.stats.frames_out += 1;
        if fully {
            self.unregister(key.slot as usize, id);
        }
    }

    fn send_rst(&mut self, id: u32, code: ErrorCode) {
        if self.error.is_none() {
            frame::encode_rst(&mut self.out.buf, id, code).expect("valid id");
            self.stats.frames_out += 1;
        }
    }

    /// Resets a stream that is in the table: one RST (if the peer knows the
    /// stream), the stream fails, and its id lingers to absorb late frames.
    fn reset_stream(&mut self, now: Instant, key: StreamKey, code: ErrorCode) {
        let s = &mut self.streams[key.slot as usize];
        let send = s.syn_sent && !s.rst_sent;
        s.rst_sent = true;
        let id = s.id;
        if send {
            self.send_rst(id, code);
        }
        self.fail_stream(key, Error::LocalReset(code));
        // Deadlines stay in order even if a caller's clock went backwards.
        let mut deadline = now + self.config.reset_linger;
        if let Some(&(last, _)) = self.lingering.back() {
            deadline = deadline.max(last);
        }
        self.lingering.push_back((deadline, key));
    }

    fn fail_stream(&mut self, key: StreamKey, error: Error) {
        let s = &mut self.streams[key.slot as usize];
        if s.error.is_none() {
            s.error = Some(error);
        }
        // What arrived before stays readable, copied: a failed stream (reset
        // by the peer, or of a dead session) pins no ring slot.
        self.lent -= s.recv_buf.unlend();
        self.notify_read(key);
        self.notify_write(key);
    }

    fn notify_read(&mut self, key: StreamKey) {
        let s = &mut self.streams[key.slot as usize];
        if std::mem::take(&mut s.want_read) {
            self.events.push_back(Event::Readable(key));
        }
    }

    fn notify_write(&mut self, key: StreamKey) {
        let s = &mut self.streams[key.slot as usize];
        if std::mem::take(&mut s.want_write) {
            self.events.push_back(Event::Writable(key));
        }
    }

    /// Credits consumed bytes back to the peer once enough have accumulated,
    /// growing the window of a stream whose reader keeps up (auto-tuning).
    fn credit(&mut self, key: StreamKey, n: usize) {
        let dead = self.error.is_some();
        let s = &mut self.streams[key.slot as usize];
        if !s.in_table || s.recv_fin || s.error.is_some() || dead {
            return;
        }
        let Some(inc) = self.flow.credit(s, n, self.table.len()) else {
            return;
        };
        frame::encode_wndinc(&mut self.out.buf, s.id, inc).expect("credit within window");
        self.stats.frames_out += 1;
    }

    /// A peer that sends frames demanding replies but never reads them would
    /// grow the outgoing buffer without bound: past the limit, give up.
    #[inline]
    fn check_control_backlog(&mut self) {
        let limit = self.config.max_send_buffer + self.config.max_control_backlog;
        if self.out.len() > limit && self.error.is_none() {
            self.die(Error::EnhanceYourCalm(
                "outgoing control frames exceed the configured backlog",
            ));
        }
    }

    /// Session death, once: GOAWAY with the right code, then nothing more is
    /// sent; every stream fails with SessionClosed.
    fn die(&mut self, error: Error) {
        if self.error.is_some() {
            return;
        }
        let (code, debug): (ErrorCode, std::borrow::Cow<'_, str>) = match &error {
            Error::SessionClosed => (ErrorCode::NoError, "no error".into()),
            e => (e.code(), e.to_string().into()),
        };
        frame::encode_goaway(
            &mut self.out.buf,
            self.remote_last_id,
            code,
            debug.as_bytes(),
        )
        .expect("last id and length are in range");
        self.stats.frames_out += 1;
        self.error = Some(error);
        self.table.clear();
        self.lingering.clear();
        let keys: Vec<StreamKey> = self
            .streams
            .iter()
            .map(|(slot, _)| self.key_of(slot))
            .collect();
        for key in keys {
            self.streams[key.slot as usize].in_table = false;
            self.fail_stream(key, Error::SessionClosed);
            self.maybe_free(key.slot as usize);
        }
        self.sched.clear();
        if std::mem::take(&mut self.want_accept) {
            self.events.push_back(Event::Accept);
        }
        self.events.push_back(Event::Dead);
    }
}

fn check_writable(s: &StreamState) -> Result<(), Error> {
    if let Some(e) = &s.error {
        return Err(e.clone());
    }
    if s.send_fin || s.closed {
        return Err(Error::StreamClosed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decode, Frame, MAX_STREAM_ID};

    fn sent(s: &mut Session) -> Vec<(u32, u8, usize)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        if s.poll_transmit(&mut buf) {
            let mut b = &buf[..];
            while let Ok(Decode::Frame(f, n)) = Frame::decode(b) {
                if let Frame::Data {
                    stream_id,
                    flags,
                    payload,
                } = f
                {
                    out.push((stream_id, flags, payload.len()));
                }
                b = &b[n..];
            }
            assert!(b.is_empty());
        }
        out
    }

    #[test]
    fn open_fails_with_streams_exhausted_sticky_and_sends_nothing() {
        for (role, next, last) in [
            (Role::Client, MAX_STREAM_ID - 2, MAX_STREAM_ID),
            (Role::Server, MAX_STREAM_ID - 3, MAX_STREAM_ID - 1),
        ] {
            let mut s = Session::new(role, Config::default());
            s.ids.set_next(next);
            let a = s.open().unwrap();
            let b = s.open().unwrap();
            assert_eq!(s.stream_id(a), Ok(last - 2));
            assert_eq!(s.stream_id(b), Ok(last));
            for _ in 0..3 {
                assert_eq!(s.open(), Err(Error::StreamsExhausted));
            }
            assert_eq!(s.stats().streams_opened, 2);
            assert_eq!(s.pending_transmit(), 0, "a failed open sends nothing");
            // The session stays usable for existing streams.
            assert_eq!(s.write(b, b"last"), Ok(4));
            s.close_write(a).unwrap();
            assert_eq!(
                sent(&mut s),
                [(last, FLAG_SYN, 4), (last - 2, FLAG_SYN | FLAG_FIN, 0)]
            );
            assert!(!s.is_dead());
            assert_eq!(s.open(), Err(Error::StreamsExhausted));
        }
    }

    fn goaway_code(s: &mut Session) -> Option<u32> {
        let mut buf = BytesMut::new();
        s.poll_transmit(&mut buf);
        let mut b = &buf[..];
        while let Ok(Decode::Frame(f, n)) = Frame::decode(b) {
            if let Frame::GoAway { code, .. } = f {
                return Some(code.to_u32());
            }
            b = &b[n..];
        }
        None
    }

    /// A header sent 5 bytes of 8 and then nothing: the session ends with
    /// GOAWAY ProtocolError once the frame timeout passes, not before.
    #[test]
    fn a_partial_frame_ends_the_session_after_the_frame_timeout() {
        let t = Duration::from_secs(10);
        let mut s = Session::new(Role::Server, Config::default().with_frame_timeout(Some(t)));
        let t0 = Instant::now();
        assert_eq!(s.poll_timeout(), None);
        s.handle_input(t0, &[0, 0, 100, 0, 0]);
        assert_eq!(s.poll_timeout(), Some(t0 + t));
        // More bytes of the same frame do not move the deadline.
        s.handle_input(t0 + Duration::from_secs(5), &[0]);
        assert_eq!(s.poll_timeout(), Some(t0 + t));
        s.handle_timeout(t0 + Duration::from_secs(9));
        assert!(!s.is_dead());
        s.handle_timeout(t0 + t);
        assert!(s.is_dead());
        assert_eq!(goaway_code(&mut s), Some(ErrorCode::ProtocolError.to_u32()));
        assert_eq!(s.poll_timeout(), None);
    }

    /// Steady traffic where every read ends inside a frame lives on: each
    /// frame is complete well within the timeout, though the session is
    /// never between frames when a read ends.
    #[test]
    fn steady_traffic_ending_mid_frame_is_not_timed_out() {
        let t = Duration::from_secs(1);
        let mut s = Session::new(Role::Server, Config::default().with_frame_timeout(Some(t)));
        let mut wire = Vec::new();
        frame::encode_data(&mut wire, 3, &[1; 100], FLAG_SYN).unwrap();
        for _ in 0..100 {
            frame::encode_data(&mut wire, 3, &[1; 100], 0).unwrap();
        }
        let key = {
            let t0 = Instant::now();
            s.handle_input(t0, &wire[..50]);
            s.accept().unwrap().unwrap()
        };
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        // 150-byte reads, 0.4 s apart: every read ends mid-frame, 40 s in all.
        for (i, piece) in wire[50..].chunks(150).enumerate() {
            let now = t0 + Duration::from_millis(400 * i as u64);
            s.handle_timeout(now);
            s.handle_input(now, piece);
            assert!(!s.is_dead(), "killed at piece {i}");
            while s.read(key, &mut buf).unwrap().is_some_and(|n| n > 0) {}
        }
    }

    /// Whole frames leave no deadline behind; without the setting there is none.
    #[test]
    fn complete_frames_clear_the_frame_deadline() {
        let t = Duration::from_secs(1);
        let mut s = Session::new(Role::Server, Config::default().with_frame_timeout(Some(t)));
        let mut wire = Vec::new();
        frame::encode_data(&mut wire, 3, b"hello", FLAG_SYN).unwrap();
        let t0 = Instant::now();
        s.handle_input(t0, &wire[..10]);
        assert!(s.poll_timeout().is_some());
        s.handle_input(t0, &wire[10..]);
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(t0 + 10 * t);
        assert!(!s.is_dead());

        let mut plain = Session::new(Role::Server, Config::default());
        plain.handle_input(t0, &wire[..10]);
        assert_eq!(plain.poll_timeout(), None, "no frame timeout by default");
    }

    /// While a memory budget pauses the session, its own not reading is not
    /// the peer's fault: the frame's clock restarts instead of killing it.
    #[test]
    fn a_session_paused_by_its_budget_does_not_time_the_peer_out() {
        let t = Duration::from_secs(1);
        let mut s = Session::new(
            Role::Server,
            Config::default()
                .with_frame_timeout(Some(t))
                .with_max_session_memory(1024),
        );
        let mut wire = Vec::new();
        frame::encode_data(&mut wire, 3, &[7; 4000], FLAG_SYN).unwrap();
        let t0 = Instant::now();
        s.handle_input(t0, &wire[..3000]);
        assert!(!s.wants_input(), "over its 1 KiB budget");
        s.handle_timeout(t0 + 2 * t);
        assert!(!s.is_dead());
        assert!(s.poll_timeout().is_some_and(|d| d > t0 + 2 * t));
    }

    /// No stream and no input for the idle timeout: GOAWAY NoError. A
    /// session with a stream open is not idle.
    #[test]
    fn an_idle_session_closes_itself() {
        let t = Duration::from_secs(30);
        let mut s = Session::new(Role::Server, Config::default().with_idle_timeout(Some(t)));
        let deadline = s.poll_timeout().expect("an idle deadline from the start");
        s.handle_timeout(deadline - Duration::from_secs(1));
        assert!(!s.is_dead());
        s.handle_timeout(deadline);
        assert!(s.is_dead());
        assert_eq!(goaway_code(&mut s), Some(ErrorCode::NoError.to_u32()));

        let mut busy = Session::new(Role::Server, Config::default().with_idle_timeout(Some(t)));
        let mut wire = Vec::new();
        frame::encode_data(&mut wire, 3, b"hi", FLAG_SYN).unwrap();
        let t0 = Instant::now();
        busy.handle_input(t0, &wire);
        assert_eq!(busy.poll_timeout(), None, "a stream is open");
        busy.handle_timeout(t0 + 10 * t);
        assert!(!busy.is_dead());
    }

    fn rsts(s: &mut Session) -> Vec<(u32, ErrorCode)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        if s.poll_transmit(&mut buf) {
            let mut b = &buf[..];
            while let Ok(Decode::Frame(f, n)) = Frame::decode(b) {
                if let Frame::Rst { stream_id, code } = f {
                    out.push((stream_id, code));
                }
                b = &b[n..];
            }
        }
        out
    }

    fn wire_data(id: u32, flags: u8, n: usize) -> Vec<u8> {
        let mut w = Vec::new();
        frame::encode_data(&mut w, id, &vec![7u8; n], flags).unwrap();
        w
    }

    /// A server with 64 KiB windows and a 200 KiB budget, holding 60 KiB
    /// unread on each of streams 3, 5, 7 and 9 (240 KiB: paused).
    fn full_session(max_pause: Option<Duration>, t0: Instant) -> (Session, Vec<StreamKey>) {
        let config = Config::default()
            .with_max_window(64 * 1024)
            .with_max_auto_window(64 * 1024)
            .with_max_session_memory(200 * 1024)
            .with_max_pause(max_pause);
        let mut s = Session::new(Role::Server, config);
        for id in [3, 5, 7, 9] {
            s.handle_input(t0, &wire_data(id, FLAG_SYN, 60 * 1024));
        }
        let mut keys = Vec::new();
        while let Ok(Some(k)) = s.accept() {
            keys.push(k);
        }
        assert_eq!(keys.len(), 4);
        assert!(!s.wants_input(), "over its budget: paused");
        assert!(rsts(&mut s).is_empty());
        (s, keys)
    }

    /// The stall this guards against: paused, the session would never read
    /// the overrun (nor the credit its application waits for). After
    /// `max_pause` with nothing read it reads on: the overrun gets RST
    /// FlowControlError, a WNDINC is applied, DATA it cannot hold resets its
    /// stream (FlowControlError, nothing buffered), and once the application
    /// drains it, DATA is held again.
    #[test]
    fn a_pause_that_frees_nothing_ends_and_the_session_sheds() {
        let t0 = Instant::now();
        let pause = Duration::from_secs(1);
        let (mut s, keys) = full_session(Some(pause), t0);
        assert_eq!(s.poll_timeout(), Some(t0 + pause));
        s.handle_timeout(t0 + pause / 2);
        assert!(!s.wants_input(), "not yet");
        s.handle_timeout(t0 + pause);
        assert!(s.wants_input(), "the pause ran out: read on");
        let held = s.memory_held();
        let send_before = s.send_window(keys[0]).unwrap();
        let mut input = wire_data(3, 0, 8 * 1024); // overrun: 68 KiB on 64
        frame::encode_wndinc(&mut input, 3, 1000).unwrap();
        input.extend(wire_data(5, 0, 1024)); // within the window, over budget
        s.handle_input(t0 + pause, &input);
        assert_eq!(
            rsts(&mut s),
            [
                (3, ErrorCode::FlowControlError),
                (5, ErrorCode::FlowControlError)
            ]
        );
        assert_eq!(s.send_window(keys[0]).unwrap(), send_before + 1000);
        assert_eq!(s.memory_held(), held, "nothing more was held");
        assert!(!s.is_dead());
        // Data that came before the resets is still read, then the error.
        let mut buf = vec![0u8; 128 * 1024];
        assert_eq!(s.read(keys[1], &mut buf), Ok(Some(60 * 1024)));
        assert_eq!(
            s.read(keys[1], &mut buf),
            Err(Error::LocalReset(ErrorCode::FlowControlError))
        );
        // Under the budget again (the reset stream's data was read): DATA
        // is held again.
        assert!(s.wants_input());
        s.handle_input(t0 + pause, &wire_data(7, 0, 1024));
        assert!(rsts(&mut s).is_empty());
        assert_eq!(s.readable_len(keys[2]), Ok(61 * 1024));
        // But within `max_pause` of the shedding's start, a session that
        // fills up again sheds at once, without another pause.
        s.handle_input(t0 + pause, &wire_data(13, FLAG_SYN, 30 * 1024));
        assert!(rsts(&mut s).is_empty(), "under the budget when it came");
        assert!(s.wants_input(), "over, and shedding at once");
        s.handle_input(t0 + pause, &wire_data(13, 0, 1024));
        assert_eq!(rsts(&mut s), [(13, ErrorCode::FlowControlError)]);
        // The application reads what stream 3 held before its reset: under
        // the budget again. Later, shedding has ended; over again means a
        // new pause, with its clock from then.
        assert_eq!(s.read(keys[0], &mut buf), Ok(Some(60 * 1024)));
        let later = t0 + 3 * pause;
        s.handle_input(later, &wire_data(11, FLAG_SYN, 60 * 1024));
        assert!(rsts(&mut s).is_empty());
        assert!(!s.wants_input(), "paused again, not shedding");
        assert_eq!(s.poll_timeout(), Some(later + pause));
    }

    /// Reading during the pause restarts its clock: an application that
    /// drains, however slowly, is never shed.
    #[test]
    fn progress_restarts_the_pause_clock() {
        let t0 = Instant::now();
        let pause = Duration::from_secs(1);
        let (mut s, keys) = full_session(Some(pause), t0);
        let mut buf = vec![0u8; 1024];
        assert_eq!(s.read(keys[0], &mut buf), Ok(Some(1024)));
        s.handle_timeout(t0 + pause);
        assert!(!s.wants_input(), "the application read: still paused");
        assert_eq!(s.poll_timeout(), Some(t0 + 2 * pause));
        s.handle_timeout(t0 + 2 * pause);
        assert!(s.wants_input(), "nothing read for a whole pause: read on");
    }

    /// `max_pause: None` keeps the old behaviour: paused until drained.
    #[test]
    fn without_max_pause_the_pause_lasts_until_drained() {
        let t0 = Instant::now();
        let (mut s, keys) = full_session(None, t0);
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(t0 + Duration::from_secs(3600));
        assert!(!s.wants_input());
        let mut buf = vec![0u8; 64 * 1024];
        assert_eq!(s.read(keys[0], &mut buf), Ok(Some(60 * 1024)));
        assert!(s.wants_input());
    }

    /// Random traffic against a small budget, fed only while the session
    /// wants input, with the clock jumping past `max_pause` at random and an
    /// application that reads at random: every frame past its stream's
    /// window is answered with RST FlowControlError, the session never dies
    /// nor stays paused for two pauses in which nothing is read, and it
    /// holds no more than its budget plus one frame (what one input can take
    /// before the session notices).
    #[test]
    fn random_overruns_never_stall_or_overflow() {
        const WINDOW: usize = 16 * 1024;
        const LIMIT: usize = 64 * 1024;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rng = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let (mut overruns, mut shed, mut pauses) = (0, 0, 0);
        for round in 0..50 {
            let pause = Duration::from_millis(100);
            let config = Config::default()
                .with_max_window(WINDOW as u32)
                .with_max_auto_window(WINDOW as u32)
                .with_max_session_memory(LIMIT)
                .with_max_pause(Some(pause));
            let mut s = Session::new(Role::Server, config);
            let mut now = Instant::now();
            // The peer's view: unread bytes of each stream it opened that
            // was not reset (an overrun depends on them alone); ids used.
            let mut open: Vec<(u32, usize, Option<StreamKey>)> = Vec::new();
            let mut next_id = 3u32;
            for step in 0..400 {
                if !s.wants_input() {
                    pauses += 1;
                    if rng(2) == 0 {
                        for _ in 0..2 {
                            now += pause;
                            s.handle_timeout(now);
                        }
                        assert!(
                            s.wants_input(),
                            "round {round} step {step}: paused for two pauses, nothing read"
                        );
                    } else if !open.is_empty() {
                        // The application reads one stream.
                        let i = rng(open.len());
                        if let Some(k) = open[i].2 {
                            let mut buf = vec![0u8; WINDOW];
                            if let Ok(Some(n)) = s.read(k, &mut buf) {
                                open[i].1 -= n;
                            }
                        }
                        continue;
                    } else {
                        continue;
                    }
                }
                // Mostly frames that fit, some that may not.
                let len = if rng(4) == 0 {
                    rng(WINDOW + WINDOW / 2)
                } else {
                    rng(WINDOW / 4)
                };
                let (i, flags) = if open.is_empty() || rng(4) == 0 {
                    open.push((next_id, 0, None));
                    next_id += 2;
                    (open.len() - 1, FLAG_SYN)
                } else {
                    (rng(open.len()), 0)
                };
                let id = open[i].0;
                let overrun = open[i].1 + len > WINDOW;
                s.handle_input(now, &wire_data(id, flags, len));
                assert!(!s.is_dead(), "round {round}: {:?}", s.error());
                let answers = rsts(&mut s);
                if overrun {
                    overruns += 1;
                    // (A new stream refused for the budget never existed.)
                    let refused =
                        flags & FLAG_SYN != 0 && answers == [(id, ErrorCode::StreamRefused)];
                    assert!(
                        refused || answers == [(id, ErrorCode::FlowControlError)],
                        "round {round} step {step}: overrun of stream {id}: {answers:?}"
                    );
                }
                match answers.first() {
                    Some(&(_, ErrorCode::FlowControlError)) if !overrun => shed += 1,
                    Some(&(_, ErrorCode::StreamRefused)) => {}
                    Some(other) if !overrun => panic!("round {round}: {other:?}"),
                    _ => {}
                }
                if answers.is_empty() {
                    open[i].1 += len;
                } else {
                    // Reset or refused: the peer forgets it (an
                    // application holding it reads the rest, then the error).
                    open.remove(i);
                }
                while let Ok(Some(k)) = s.accept() {
                    let id = s.stream_id(k).unwrap();
                    if let Some(o) = open.iter_mut().find(|o| o.0 == id) {
                        o.2 = Some(k);
                    }
                }
                assert!(
                    s.buffered_input() <= LIMIT + WINDOW,
                    "round {round} step {step}: {} bytes buffered",
                    s.buffered_input()
                );
            }
        }
        assert!(
            overruns > 100 && shed > 100 && pauses > 50,
            "the traffic must exercise all three: {overruns} overruns, {shed} shed, {pauses} pauses"
        );
    }

    /// A GOAWAY shows in `remote_goaway` once whole, with its code and
    /// debug data, not while its debug data is still arriving; a later one
    /// replaces it.
    #[test]
    fn remote_goaway_shows_once_whole() {
        let t0 = Instant::now();
        let mut s = Session::new(Role::Client, Config::default());
        let mut wire = Vec::new();
        frame::encode_goaway(&mut wire, 0, ErrorCode::EnhanceYourCalm, b"slow down").unwrap();
        s.handle_input(t0, &wire[..wire.len() - 4]);
        assert_eq!(s.remote_goaway(), None, "debug data incomplete");
        assert!(s.open().is_ok(), "not in force yet");
        s.handle_input(t0, &wire[wire.len() - 4..]);
        assert_eq!(
            s.remote_goaway(),
            Some((ErrorCode::EnhanceYourCalm, &b"slow down"[..]))
        );
        assert_eq!(s.poll_event(), Some(Event::GoAway));
        assert_eq!(s.open(), Err(Error::RemoteGoneAway));
        let mut second = Vec::new();
        frame::encode_goaway(&mut second, 0, ErrorCode::NoError, b"bye").unwrap();
        s.handle_input(t0, &second);
        assert_eq!(s.remote_goaway(), Some((ErrorCode::NoError, &b"bye"[..])));
    }
}

/// Lending: payload pieces kept as leases on the receive buffer.
#[cfg(test)]
mod lend_tests {
    use super::*;
    use crate::lease::testing::{TestChunk, TestPool};
    use std::sync::Arc;

    /// A payload of `n` bytes recognisable by `tag` and position.
    fn payload(tag: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| tag.wrapping_add((i / 7) as u8)).collect()
    }

    fn data(id: u32, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        frame::encode_data(&mut w, id, body, flags).unwrap();
        w
    }

    /// Feeds each chunk as one slot of a fresh test pool; returns the pool.
    fn feed(s: &mut Session, now: Instant, chunks: &[Vec<u8>]) -> Arc<TestPool> {
        let pool = TestPool::new(chunks.to_vec());
        for (i, _) in chunks.iter().enumerate() {
            let lender = TestChunk {
                pool: pool.clone(),
                slot: i as u32,
                refuse: false,
            };
            s.handle_input_lent(now, pool.slot(i as u32), &lender);
        }
        pool
    }

    fn read_all(s: &mut Session, key: StreamKey, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        while let Ok(Some(n)) = s.read(key, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// A server holding stream 1 with small and large payloads, some split
    /// across chunks; returns the session, key, pool and expected bytes.
    fn mixed(now: Instant) -> (Session, StreamKey, Arc<TestPool>, Vec<u8>) {
        let mut s = Session::new(Role::Server, Config::default());
        let (a, b, c, d) = (
            payload(1, 100),
            payload(50, 5000),
            payload(100, 200),
            payload(150, 9000),
        );
        let mut first = data(1, FLAG_SYN, &a);
        first.extend(data(1, 0, &b));
        first.extend(data(1, 0, &c));
        let big = data(1, 0, &d);
        // The 9000-byte frame is cut in pieces of 100 (copied), 4200 (lent),
        // 3000 and 1700 (copied: under LEND_MIN).
        first.extend_from_slice(&big[..8 + 100]);
        let chunks = vec![
            first,
            big[108..108 + 4200].to_vec(),
            big[4308..4308 + 3000].to_vec(),
            big[7308..].to_vec(),
        ];
        let pool = feed(&mut s, now, &chunks);
        let key = s.accept().unwrap().expect("stream 1");
        let expected = [a, b, c, d].concat();
        (s, key, pool, expected)
    }

    #[test]
    fn copied_and_lent_pieces_read_in_order_at_any_read_size() {
        let now = Instant::now();
        for step in [1, 100, 4096, 5001, 1 << 20] {
            let (mut s, key, pool, expected) = mixed(now);
            assert_eq!(
                s.stats().bytes_lent,
                5000 + 4200,
                "the large pieces are lent"
            );
            assert_eq!(pool.outstanding(), 2);
            assert_eq!(s.readable_len(key).unwrap(), expected.len());
            assert_eq!(s.buffered_input(), expected.len());
            let got = read_all(&mut s, key, step);
            assert_eq!(got.len(), expected.len(), "read size {step}");
            assert!(got == expected, "bytes differ at read size {step}");
            assert_eq!(pool.outstanding(), 0, "read leases go back");
            assert_eq!(s.buffered_input(), 0);
            assert_eq!(s.lent, 0);
        }
    }

    #[test]
    fn read_with_lends_the_front_piece_only() {
        let now = Instant::now();
        let (mut s, key, pool, expected) = mixed(now);
        let mut got = Vec::new();
        let mut calls = 0;
        loop {
            let r = s.read_with(key, |bytes| {
                // Take half of each piece (at least one byte) to test
                // partial consumption across piece kinds.
                let n = bytes.len().div_ceil(2);
                got.extend_from_slice(&bytes[..n]);
                n
            });
            match r {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(_)) => calls += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got == expected);
        assert!(calls > 5);
        assert_eq!(pool.outstanding(), 0);
    }

    /// Large payloads of a stream that never reads: `LEND_PER_STREAM`
    /// leases, then copies; the session as a whole stops at its share too.
    #[test]
    fn a_stream_past_its_share_is_copied_and_the_session_too() {
        let now = Instant::now();
        let mut s = Session::new(Role::Server, Config::default());
        let mut chunks = Vec::new();
        let mut expected: [Vec<u8>; 3] = Default::default();
        for (j, id) in [1u32, 3, 5].into_iter().enumerate() {
            for i in 0..20u8 {
                let body = payload(i * 3 + j as u8, 5000);
                expected[j].extend_from_slice(&body);
                chunks.push(data(id, if i == 0 { FLAG_SYN } else { 0 }, &body));
            }
        }
        let pool = feed(&mut s, now, &chunks);
        assert_eq!(s.lent, LEND_PER_SESSION);
        assert_eq!(pool.outstanding() as usize, LEND_PER_SESSION);
        let keys: Vec<StreamKey> = (0..3).map(|_| s.accept().unwrap().unwrap()).collect();
        let lent: Vec<usize> = keys
            .iter()
            .map(|k| s.streams[k.slot as usize].recv_buf.lent())
            .collect();
        // Stream 1 and 3 stop at their share, stream 5 finds the session's
        // share used up.
        assert_eq!(
            lent,
            [LEND_PER_STREAM, LEND_PER_SESSION - LEND_PER_STREAM, 0]
        );
        for (k, want) in keys.iter().zip(&expected) {
            assert!(read_all(&mut s, *k, 3000) == *want);
        }
        assert_eq!(pool.outstanding(), 0);
    }

    /// A lender that refuses (its pool at its cap): everything is copied.
    #[test]
    fn a_refusing_lender_gets_copies() {
        let now = Instant::now();
        let mut s = Session::new(Role::Server, Config::default());
        let body = payload(9, 20_000);
        let pool = TestPool::new(vec![data(1, FLAG_SYN, &body)]);
        let lender = TestChunk {
            pool: pool.clone(),
            slot: 0,
            refuse: true,
        };
        s.handle_input_lent(now, pool.slot(0), &lender);
        let key = s.accept().unwrap().unwrap();
        assert_eq!(s.stats().bytes_lent, 0);
        assert_eq!(pool.outstanding(), 0);
        assert!(read_all(&mut s, key, 7000) == body);
    }

    /// Every way a stream ends gives its leases back at once; close, a
    /// peer's reset and the session's death keep the bytes readable.
    #[test]
    fn reset_close_release_and_death_give_every_lease_back() {
        let now = Instant::now();
        for how in ["reset", "release", "close", "peer reset", "death"] {
            let (mut s, key, pool, expected) = mixed(now);
            assert_eq!(pool.outstanding(), 2);
            let keeps = match how {
                "reset" => {
                    s.reset(now, key, ErrorCode::StreamClosed).unwrap();
                    false
                }
                "release" => {
                    s.release(key);
                    false
                }
                "close" => {
                    s.close(key).unwrap();
                    true
                }
                "peer reset" => {
                    let mut w = Vec::new();
                    frame::encode_rst(&mut w, 1, ErrorCode::StreamClosed).unwrap();
                    s.handle_input(now, &w);
                    true
                }
                _ => {
                    s.close_session();
                    assert!(s.is_dead());
                    true
                }
            };
            assert_eq!(pool.outstanding(), 0, "{how}: leases still held");
            assert_eq!(s.lent, 0, "{how}");
            if keeps {
                assert!(read_all(&mut s, key, 1000) == expected, "{how}: bytes lost");
            } else {
                assert_eq!(s.buffered_input(), 0, "{how}");
            }
        }
    }

    /// Dropping the session drops its leases.
    #[test]
    fn dropping_the_session_gives_every_lease_back() {
        let (s, _key, pool, _) = mixed(Instant::now());
        assert_eq!(pool.outstanding(), 2);
        drop(s);
        assert_eq!(pool.outstanding(), 0);
    }
}
