//! Session limits and tuning. Every limit that protects memory is a field.

use std::time::Duration;

/// Settings of one session. The defaults match Go's where Go has one.
///
/// ```
/// let config = muxado::Config {
///     max_window: 1 << 20,
///     ..muxado::Config::default()
/// };
/// assert_eq!(config.accept_backlog, 128);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// as a TCP connection when the two ends run on different cores. Set it to
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
        }
    }
}

impl Config {
    /// The WNDINC threshold actually used: within 1..=max_window.
    pub(crate) fn credit_threshold(&self) -> u32 {
        let window = self.max_window.max(1);
        match self.window_update_threshold {
            0 => (window / 4).max(1),
            t => t.min(window),
        }
    }
}
