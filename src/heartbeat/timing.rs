//! The heartbeat's timing, sans I/O: when to beat, when a silence becomes a
//! timeout, what a reply's latency is. Time is an input ([`Instant`]s passed
//! in), so the rules are tested without a clock and shared by every driver
//! (the engine's [`Heartbeat`](super::Heartbeat), or one on another runtime).
//!
//! The rules (Go muxado's `heartbeat.go`, ngrok's v2 semantics):
//! - periodic beats are due every interval, the first one interval after
//!   [`HeartbeatTimer::start`]; ticks missed while a beat was outstanding are
//!   dropped, not caught up, as Go's `time.Ticker` drops them;
//! - a timeout is due interval + tolerance after the start or after the last
//!   periodic success; it is reported once per silence, and only a later
//!   periodic success re-arms it;
//! - on-demand beats measure a latency but neither report nor re-arm; one
//!   gives up a tolerance after it was asked for.
//!
//! A driver loops: wait until [`HeartbeatTimer::next_beat`] or
//! [`HeartbeatTimer::timeout_at`] (whichever comes first), then ask
//! [`HeartbeatTimer::poll_beat`] and [`HeartbeatTimer::poll_timeout`] with the
//! current time, and feed replies to [`HeartbeatTimer::on_periodic_reply`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use muxado::heartbeat::{HeartbeatConfig, timing::HeartbeatTimer};
//!
//! let t0 = Instant::now(); // any instant: the timer never reads the clock
//! let s = Duration::from_secs;
//! let config = HeartbeatConfig::default().with_interval(s(10)).with_tolerance(s(5));
//! let mut timer = HeartbeatTimer::new(config, t0);
//! assert!(!timer.poll_beat(t0 + s(9)));
//! assert!(timer.poll_beat(t0 + s(10)));            // beat sent at t0 + 10 s
//! assert_eq!(timer.timeout_at(), Some(t0 + s(15)));
//! assert!(timer.poll_timeout(t0 + s(15)));         // no reply: one report
//! assert!(!timer.poll_timeout(t0 + s(60)));        // and only one
//! let latency = timer.on_periodic_reply(t0 + s(10), t0 + s(61));
//! assert_eq!(latency, s(51));                      // late reply re-arms
//! assert_eq!(timer.timeout_at(), Some(t0 + s(76)));
//! ```

use std::time::{Duration, Instant};

use crate::typed::StreamType;

/// The stream type of heartbeat streams in Go muxado and ngrok's crate, and
/// the default of [`HeartbeatConfig::stream_type`].
pub const HEARTBEAT_TYPE: StreamType = 0xFFFF_FFFF;

/// The shortest interval a timer uses: a zero interval would beat in a loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Heartbeat settings. The defaults are Go's: 10 s interval, 15 s tolerance,
/// stream type [`HEARTBEAT_TYPE`].
///
/// Built from [`Default`] and the chainable setters, so that fields can be
/// added without breaking callers:
///
/// ```
/// use std::time::Duration;
/// let config = muxado::HeartbeatConfig::default()
///     .with_interval(Duration::from_secs(1))
///     .with_tolerance(Duration::from_secs(3));
/// assert_eq!(config.interval, Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// Time between two periodic beats (at least [`MIN_INTERVAL`]).
    pub interval: Duration,
    /// How late past the interval an answer may be before a timeout is reported.
    pub tolerance: Duration,
    /// The stream type that carries heartbeats. Both peers must use the same
    /// one; Go muxado and ngrok's crate only know [`HEARTBEAT_TYPE`]. Streams
    /// of this type are answered and hidden from the application, and it
    /// cannot open one itself.
    pub stream_type: StreamType,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(10),
            tolerance: Duration::from_secs(15),
            stream_type: HEARTBEAT_TYPE,
        }
    }
}

impl HeartbeatConfig {
    /// Sets [`HeartbeatConfig::interval`].
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`HeartbeatConfig::tolerance`].
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Sets [`HeartbeatConfig::stream_type`].
    #[must_use]
    pub fn with_stream_type(mut self, stream_type: StreamType) -> Self {
        self.stream_type = stream_type;
        self
    }
}

/// The heartbeat's clock rules as a state machine; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct HeartbeatTimer {
    interval: Duration,
    tolerance: Duration,
    /// When the last periodic beat was due: the next is one interval later.
    last_tick: Instant,
    /// When the timeout was last armed (start or periodic success); `None`
    /// once it was reported, until the next periodic success.
    armed_at: Option<Instant>,
}

impl HeartbeatTimer {
    /// A timer started at `now`.
    pub fn new(config: HeartbeatConfig, now: Instant) -> Self {
        HeartbeatTimer {
            interval: config.interval.max(MIN_INTERVAL),
            tolerance: config.tolerance,
            last_tick: now,
            armed_at: Some(now),
        }
    }

    /// Starts over at `now`: the next beat is one interval away and the
    /// timeout is armed from `now`.
    pub fn start(&mut self, now: Instant) {
        self.last_tick = now;
        self.armed_at = Some(now);
    }

    /// The interval in use.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The tolerance in use.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Changes the interval (at least [`MIN_INTERVAL`]); the next beat and the
    /// timeout move with it at once.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval.max(MIN_INTERVAL);
    }

    /// Changes the tolerance; the timeout moves with it at once.
    pub fn set_tolerance(&mut self, tolerance: Duration) {
        self.tolerance = tolerance;
    }

    /// When the next periodic beat is due.
    pub fn next_beat(&self) -> Instant {
        self.last_tick + self.interval
    }

    /// True if a periodic beat is due at `now`; the tick is then consumed. A
    /// driver that comes late by a whole interval or more (a beat was still
    /// outstanding) gets one beat, not one per missed tick, and the ticks go
    /// on from `now`.
    pub fn poll_beat(&mut self, now: Instant) -> bool {
        let due = self.next_beat();
        if now < due {
            return false;
        }
        self.last_tick = if now - due >= self.interval { now } else { due };
        true
    }

    /// When a silence becomes a timeout, if one is armed.
    pub fn timeout_at(&self) -> Option<Instant> {
        self.armed_at.map(|at| at + self.interval + self.tolerance)
    }

    /// True if a timeout is due at `now`; it is then reported (this returns
    /// true) once, and not again until [`HeartbeatTimer::on_periodic_reply`].
    pub fn poll_timeout(&mut self, now: Instant) -> bool {
        match self.timeout_at() {
            Some(at) if now >= at => {
                self.armed_at = None;
                true
            }
            _ => false,
        }
    }

    /// The earliest instant at which [`HeartbeatTimer::poll_beat`] or
    /// [`HeartbeatTimer::poll_timeout`] can change its answer.
    pub fn poll_at(&self) -> Instant {
        match self.timeout_at() {
            Some(t) => t.min(self.next_beat()),
            None => self.next_beat(),
        }
    }

    /// When an on-demand beat asked for at `now` gives up: one tolerance
    /// later (it may first wait for a beat already in flight).
    pub fn on_demand_deadline(&self, now: Instant) -> Instant {
        now + self.tolerance
    }

    /// A periodic beat sent at `sent` came back at `now`: re-arms the timeout
    /// from `now` and returns the round-trip time.
    pub fn on_periodic_reply(&mut self, sent: Instant, now: Instant) -> Duration {
        self.armed_at = Some(now);
        now.saturating_duration_since(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn timer(interval: u64, tolerance: u64) -> (HeartbeatTimer, Instant) {
        let t0 = Instant::now();
        let config = HeartbeatConfig::default()
            .with_interval(s(interval))
            .with_tolerance(s(tolerance));
        (HeartbeatTimer::new(config, t0), t0)
    }

    #[test]
    fn defaults_are_gos() {
        let c = HeartbeatConfig::default();
        assert_eq!((c.interval, c.tolerance), (s(10), s(15)));
        assert_eq!(c.stream_type, HEARTBEAT_TYPE);
        assert_eq!(c.with_stream_type(7).stream_type, 7);
    }

    #[test]
    fn first_beat_one_interval_after_start_then_every_interval() {
        let (mut t, t0) = timer(10, 15);
        assert_eq!(t.next_beat(), t0 + s(10));
        assert!(!t.poll_beat(t0));
        assert!(!t.poll_beat(t0 + s(10) - Duration::from_nanos(1)));
        assert!(t.poll_beat(t0 + s(10)));
        assert!(!t.poll_beat(t0 + s(10)), "a tick is consumed once");
        // A slightly late driver keeps the original cadence.
        assert!(t.poll_beat(t0 + s(21)));
        assert_eq!(t.next_beat(), t0 + s(30));
    }

    #[test]
    fn missed_ticks_are_dropped_not_caught_up() {
        let (mut t, t0) = timer(10, 15);
        // The driver comes back 35 s late (a beat was outstanding): one beat, not three.
        assert!(t.poll_beat(t0 + s(45)));
        assert!(!t.poll_beat(t0 + s(45)));
        assert_eq!(t.next_beat(), t0 + s(55));
    }

    #[test]
    fn timeout_is_reported_once_per_silence_then_re_armed_by_a_success() {
        let (mut t, t0) = timer(10, 15);
        assert_eq!(t.timeout_at(), Some(t0 + s(25)));
        assert!(!t.poll_timeout(t0 + s(24)));
        assert!(t.poll_timeout(t0 + s(25)));
        assert_eq!(t.timeout_at(), None);
        assert!(!t.poll_timeout(t0 + s(100)), "one report per silence");
        assert_eq!(t.poll_at(), t.next_beat());
        // A success re-arms from the reply's arrival.
        assert_eq!(t.on_periodic_reply(t0 + s(100), t0 + s(103)), s(3));
        assert_eq!(t.timeout_at(), Some(t0 + s(128)));
        assert!(!t.poll_timeout(t0 + s(127)));
        assert!(t.poll_timeout(t0 + s(128)));
    }

    #[test]
    fn a_success_before_the_timeout_pushes_it_back() {
        let (mut t, t0) = timer(10, 15);
        assert!(t.poll_beat(t0 + s(10)));
        t.on_periodic_reply(t0 + s(10), t0 + s(11));
        assert!(!t.poll_timeout(t0 + s(25)));
        assert_eq!(t.timeout_at(), Some(t0 + s(36)));
    }

    #[test]
    fn on_demand_beats_give_up_after_the_tolerance_and_do_not_re_arm() {
        let (mut t, t0) = timer(10, 15);
        assert_eq!(t.on_demand_deadline(t0 + s(3)), t0 + s(18));
        assert!(t.poll_timeout(t0 + s(25)));
        // An on-demand answer is not fed to the timer: the silence stays reported.
        assert_eq!(t.timeout_at(), None);
        t.set_tolerance(s(1));
        assert_eq!(t.on_demand_deadline(t0), t0 + s(1));
    }

    #[test]
    fn setters_move_the_pending_deadlines_at_once() {
        let (mut t, t0) = timer(10, 15);
        t.set_interval(s(2));
        assert_eq!(t.next_beat(), t0 + s(2));
        assert_eq!(t.timeout_at(), Some(t0 + s(17)));
        t.set_tolerance(s(1));
        assert_eq!(t.timeout_at(), Some(t0 + s(3)));
        assert_eq!(t.poll_at(), t0 + s(2));
        assert_eq!((t.interval(), t.tolerance()), (s(2), s(1)));
    }

    #[test]
    fn a_zero_interval_is_raised_to_the_minimum() {
        let t0 = Instant::now();
        let config = HeartbeatConfig::default().with_interval(Duration::ZERO);
        let mut t = HeartbeatTimer::new(config, t0);
        assert_eq!(t.interval(), MIN_INTERVAL);
        assert!(!t.poll_beat(t0));
        t.set_interval(Duration::ZERO);
        assert_eq!(t.next_beat(), t0 + MIN_INTERVAL);
    }

    #[test]
    fn start_restarts_the_clock() {
        let (mut t, t0) = timer(10, 15);
        assert!(t.poll_timeout(t0 + s(30)));
        t.start(t0 + s(40));
        assert_eq!(t.next_beat(), t0 + s(50));
        assert_eq!(t.timeout_at(), Some(t0 + s(65)));
    }

    #[test]
    fn latency_of_a_reply_from_the_past_is_zero_not_a_panic() {
        let (mut t, t0) = timer(10, 15);
        assert_eq!(t.on_periodic_reply(t0 + s(5), t0 + s(4)), Duration::ZERO);
    }
}
