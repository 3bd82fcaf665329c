//! muxado-uring: the [muxado] stream-multiplexing protocol, wire-compatible
//! with the Go implementations and ngrok's Rust crate, on an io_uring,
//! thread-per-core engine.
//!
//! The crate is built in layers, each usable on its own:
//! - [`frame`]: the wire codec (8-byte header, RST / DATA / WNDINC / GOAWAY);
//! - [`proto`]: the session state machine, sans I/O;
//! - [`engine`]: the io_uring, thread-per-core runtime (cores, tasks, timers, TCP);
//! - [`Session`] and [`Stream`]: async handles that run `proto` on the engine;
//! - [`typed`]: streams that carry a `u32` type ([`TypedSession`], [`TypedStream`]);
//! - [`heartbeat`]: latency and dead-peer detection over a typed session ([`Heartbeat`]);
//! - [`Error`] and [`ErrorCode`]: what went wrong, in words and on the wire.
//!
//! [muxado]: https://github.com/inconshreveable/muxado

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod copy;
pub mod engine;
pub mod error;
pub mod frame;
pub mod heartbeat;
pub mod proto;
mod session;
pub mod typed;

pub use engine::Engine;
pub use error::{Error, ErrorCode};
pub use heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
pub use proto::Config;
pub use session::{Session, SessionEnd, SessionStats, Stream};
pub use typed::{StreamType, TypedSession, TypedStream};

/// The README's examples run as doc tests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
