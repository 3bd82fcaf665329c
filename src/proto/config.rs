//! Session limits and tuning. Every limit that protects memory is a field.

use std::time::Duration;

use super::memory::MemoryBudget;

/// Settings of one session. The defaults match Go's where Go has one.
///
/// Built from [`Config::default`] with `with_*` setters (the struct is
/// `#[non_exhaustive]`, so new settings are not breaking changes); every
/// field can be read.
///
/// ```
/// let config = muxado::Config::default().with_max_window(1 << 20);
/// assert_eq!(config.max_window, 1 << 20);
/// assert_eq!(config.accept_backlog, 128);
/// ```
///
/// # Limits, and what a peer sees when it reaches one
///
/// | limit | default | past it |
/// |---|---|---|
/// | [`max_window`](Config::max_window) per stream | 256 KiB | more DATA than the window: RST FlowControlError on that stream |
/// | [`max_streams`](Config::max_streams) | 4096 | a new stream: RST StreamRefused (a local `open` fails with `TooManyStreams`) |
/// | [`accept_backlog`](Config::accept_backlog) | 128 | a new stream while that many wait for `accept`: RST AcceptQueueFull |
/// | [`max_session_memory`](Config::max_session_memory) | 64 MiB | new streams: RST StreamRefused; the session stops reading its transport (TCP backpressure) until the application drains its streams, for at most [`max_pause`](Config::max_pause) without progress; then it reads on, and DATA it cannot hold resets its stream with RST FlowControlError |
/// | [`memory_budget`](Config::memory_budget) (all sessions sharing it) | none | as `max_session_memory`, for every session charging it that holds more than [`SESSION_FLOOR`](super::SESSION_FLOOR) (256 KiB): a small session is never locked out by big ones, so the budget can be exceeded by up to that much per session |
/// | [`max_send_buffer`](Config::max_send_buffer) | 512 KiB | local writers wait; nothing on the wire |
/// | [`max_control_backlog`](Config::max_control_backlog) | 1 MiB | a peer that makes us queue replies (WNDINC, RST) but does not read them: GOAWAY EnhanceYourCalm, the session ends |
/// | [`max_goaway_debug`](Config::max_goaway_debug) | 1 MiB | the rest of a GOAWAY's debug data is read and discarded |
/// | [`reset_linger`](Config::reset_linger) | 5 s | frames for a stream reset longer ago than this: RST StreamClosed |
/// | `max_auto_window`, `auto_window_budget` | 4 MiB, 16 MiB | a stream's window stops growing; nothing on the wire |
/// | [`frame_timeout`](Config::frame_timeout) | none (`muxado serve`: 10 s) | a frame begun but not completed within it, while the session reads (slowloris): GOAWAY ProtocolError, the session ends |
/// | [`idle_timeout`](Config::idle_timeout) | none (`muxado serve`: 5 min) | no stream open and no byte received for that long: GOAWAY NoError, the session ends |
///
/// Why the pause is bounded: while the session does not read, it does not
/// see the peer's WNDINC, RST or GOAWAY either, nor a window overrun. An
/// application that needs one of those to drain its streams (an echo
/// waiting for credit to write back what it read) would wait for ever on a
/// session waiting for it. So a pause in which the application reads
/// nothing for `max_pause` ends: the session reads on, answers every control frame and overrun as
/// usual, and resets with RST FlowControlError each stream whose DATA
/// arrives while it is still over its budget (the reference's answer to a
/// sender whose window is larger than the receiver's buffer, §4), dropping
/// that DATA instead of holding it.
///
/// What one session can be made to hold is bounded by `max_session_memory`:
/// received bytes not yet read, a few spare buffers, and
/// [`STREAM_COST`](super::STREAM_COST) per stream. It can be exceeded by the
/// bytes of one `handle_input` call (data admitted by flow control is not
/// dropped, except as above once a pause ran out); a driver that stops reading when
/// [`Session::wants_input`](super::Session::wants_input) turns false keeps
/// it to that. The outgoing buffer is bounded by `max_send_buffer +
/// max_control_backlog`. Frame headers and fixed bodies cost at most 8
/// bytes of stash; payloads are never held beyond the stream buffers.
///
/// Timeouts outside this struct: the engine driver gives a dying session's
/// GOAWAY 250 ms to leave and the peer 1 s to close its side before it shuts
/// the transport; per-stream read and write deadlines are set on the stream
/// handles; heartbeats (liveness) are configured by
/// [`HeartbeatConfig`](crate::heartbeat::HeartbeatConfig). A session paused by
/// the shared budget asks it again every 10 ms (through
/// [`Session::poll_timeout`](super::Session::poll_timeout)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Per-stream receive window, and the send window assumed for the peer
    /// (muxado does not negotiate it: both sides must agree). Default 256 KiB.
    pub max_window: u32,
    /// Inbound streams waiting for `accept`; beyond it a SYN is refused with
    /// RST AcceptQueueFull. Default 128 (Go's).
    pub accept_backlog: usize,
    /// Streams alive at once (open, queued for accept, or still held by the
    /// application). Beyond it a peer's SYN gets RST StreamRefused and a local
    /// `open` fails with [`Error::TooManyStreams`](crate::Error::TooManyStreams).
    /// Go has no limit. Default 4096.
    pub max_streams: usize,
    /// Bytes of DATA queued for the transport before writers wait. Control
    /// frames (WNDINC, RST, FIN, GOAWAY) are not held back by it. Default 512 KiB.
    pub max_send_buffer: usize,
    /// Most bytes one stream may queue between two transmissions. Each
    /// stream's share is the send buffer divided among the streams writing
    /// (at least 16 KiB), capped by this, so that a bulk writer cannot starve
    /// the other streams of the session. Default 256 KiB.
    pub stream_send_quota: usize,
    /// Receive-window auto-tuning: when the application keeps up with a
    /// stream (nothing is left unread when credit is returned), the stream's
    /// window doubles, up to this size, and the extra is granted in the same
    /// WNDINC; a Go or ngrok sender simply follows the credit. A window as
    /// large as the bandwidth-delay product is what keeps one stream as fast
    /// as a TCP connection when the two ends run on different cores. A window
    /// grows only while its stream has the session to itself (no other stream
    /// read within its last `max_auto_window` bytes), since all it admits can
    /// sit in the transport ahead of other streams' frames. Set it to
    /// `max_window` to turn auto-tuning off. Default 4 MiB.
    pub max_auto_window: u32,
    /// Bounds auto-tuning per session: a stream's window grows only while it
    /// is below an equal share of this among the open streams (so with 64
    /// streams of 256 KiB nothing grows), and the extra granted to all
    /// streams together never exceeds it. Default 16 MiB.
    pub auto_window_budget: usize,
    /// Consumed bytes are credited back to the peer with one WNDINC once this
    /// many accumulate (Go sends one per read). 0 means a quarter of `max_window`.
    pub window_update_threshold: u32,
    /// Control frames may exceed `max_send_buffer` by this much before the
    /// session gives up on a peer that sends but never reads (EnhanceYourCalm).
    /// Default 1 MiB.
    pub max_control_backlog: usize,
    /// Debug bytes of a peer's GOAWAY that are kept; the rest is drained.
    /// Default 1 MiB (Go's).
    pub max_goaway_debug: usize,
    /// How long a locally reset stream stays known so that the peer's late
    /// frames are absorbed silently. Default 5 s (Go's).
    pub reset_linger: Duration,
    /// Memory one session may hold (see the table above). Default 64 MiB:
    /// far above what conforming traffic with a reading application needs,
    /// far below the 1 GiB that 4096 streams with full windows could hold.
    pub max_session_memory: usize,
    /// A budget shared with other sessions (on any thread), charged in
    /// 64 KiB chunks; `None` (the default) for no shared limit.
    pub memory_budget: Option<MemoryBudget>,
    /// How long a frame may stay incomplete once its first byte has arrived
    /// (a header written a byte at a time, a payload that stops midway).
    /// The clock runs only while the session reads its transport: time spent
    /// paused by a memory budget does not count against the peer. Past it
    /// the session ends with GOAWAY ProtocolError. `None` (the default, as
    /// in Go) waits forever; a server facing untrusted peers should set it.
    pub frame_timeout: Option<Duration>,
    /// How long a session with no stream open may receive nothing before it
    /// closes itself (GOAWAY NoError): a connection that never sends (or
    /// stopped) would otherwise hold its descriptor and memory for ever.
    /// `None` (the default) keeps idle sessions.
    pub idle_timeout: Option<Duration>,
    /// How long a session over its memory budget may stop reading its
    /// transport while the application reads nothing from its streams
    /// (each read restarts the clock; bytes left in a reset stream do not
    /// count). Past it the session reads on and sheds what it cannot hold:
    /// DATA that arrives while it is still over the budget resets its
    /// stream with RST FlowControlError and is dropped; control frames and
    /// window overruns are answered as usual. Shedding lasts at least as
    /// long again, and until the session is back under its budget.
    /// Without the bound, an application that waits for something from the
    /// peer (credit, most often) before it reads again would deadlock with
    /// a session that waits for it to read. `None` pauses for as long as it
    /// takes (lossless, but a peer can then stall the session). Default 1 s.
    pub max_pause: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_window: 256 * 1024,
            accept_backlog: 128,
            max_streams: 4096,
            max_send_buffer: 512 * 1024,
            stream_send_quota: 256 * 1024,
            max_auto_window: 4 << 20,
            auto_window_budget: 16 << 20,
            window_update_threshold: 0,
            max_control_backlog: 1 << 20,
            max_goaway_debug: 1 << 20,
            reset_linger: Duration::from_secs(5),
            max_session_memory: 64 << 20,
            memory_budget: None,
            frame_timeout: None,
            idle_timeout: None,
            max_pause: Some(Duration::from_secs(1)),
        }
    }
}

impl Config {
    /// Sets [`max_window`](Config::max_window).
    #[must_use]
    pub fn with_max_window(mut self, max_window: u32) -> Self {
        self.max_window = max_window;
        self
    }

    /// Sets [`accept_backlog`](Config::accept_backlog).
    #[must_use]
    pub fn with_accept_backlog(mut self, accept_backlog: usize) -> Self {
        self.accept_backlog = accept_backlog;
        self
    }

    /// Sets [`max_streams`](Config::max_streams).
    #[must_use]
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams;
        self
    }

    /// Sets [`max_send_buffer`](Config::max_send_buffer).
    #[must_use]
    pub fn with_max_send_buffer(mut self, max_send_buffer: usize) -> Self {
        self.max_send_buffer = max_send_buffer;
        self
    }

    /// Sets [`stream_send_quota`](Config::stream_send_quota).
    #[must_use]
    pub fn with_stream_send_quota(mut self, stream_send_quota: usize) -> Self {
        self.stream_send_quota = stream_send_quota;
        self
    }

    /// Sets [`max_auto_window`](Config::max_auto_window).
    #[must_use]
    pub fn with_max_auto_window(mut self, max_auto_window: u32) -> Self {
        self.max_auto_window = max_auto_window;
        self
    }

    /// Sets [`auto_window_budget`](Config::auto_window_budget).
    #[must_use]
    pub fn with_auto_window_budget(mut self, auto_window_budget: usize) -> Self {
        self.auto_window_budget = auto_window_budget;
        self
    }

    /// Sets [`window_update_threshold`](Config::window_update_threshold).
    #[must_use]
    pub fn with_window_update_threshold(mut self, window_update_threshold: u32) -> Self {
        self.window_update_threshold = window_update_threshold;
        self
    }

    /// Sets [`max_control_backlog`](Config::max_control_backlog).
    #[must_use]
    pub fn with_max_control_backlog(mut self, max_control_backlog: usize) -> Self {
        self.max_control_backlog = max_control_backlog;
        self
    }

    /// Sets [`max_goaway_debug`](Config::max_goaway_debug).
    #[must_use]
    pub fn with_max_goaway_debug(mut self, max_goaway_debug: usize) -> Self {
        self.max_goaway_debug = max_goaway_debug;
        self
    }

    /// Sets [`reset_linger`](Config::reset_linger).
    #[must_use]
    pub fn with_reset_linger(mut self, reset_linger: Duration) -> Self {
        self.reset_linger = reset_linger;
        self
    }

    /// Sets [`max_session_memory`](Config::max_session_memory).
    #[must_use]
    pub fn with_max_session_memory(mut self, max_session_memory: usize) -> Self {
        self.max_session_memory = max_session_memory;
        self
    }

    /// Sets [`memory_budget`](Config::memory_budget).
    #[must_use]
    pub fn with_memory_budget(mut self, memory_budget: Option<MemoryBudget>) -> Self {
        self.memory_budget = memory_budget;
        self
    }

    /// Sets [`frame_timeout`](Config::frame_timeout).
    #[must_use]
    pub fn with_frame_timeout(mut self, frame_timeout: Option<Duration>) -> Self {
        self.frame_timeout = frame_timeout;
        self
    }

    /// Sets [`idle_timeout`](Config::idle_timeout).
    #[must_use]
    pub fn with_idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`max_pause`](Config::max_pause).
    #[must_use]
    pub fn with_max_pause(mut self, max_pause: Option<Duration>) -> Self {
        self.max_pause = max_pause;
        self
    }

    /// The WNDINC threshold actually used: within 1..=max_window.
    pub(crate) fn credit_threshold(&self) -> u32 {
        let window = self.max_window.max(1);
        match self.window_update_threshold {
            0 => (window / 4).max(1),
            t => t.min(window),
        }
    }
}
