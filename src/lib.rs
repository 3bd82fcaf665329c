//! muxado-uring: the [muxado] stream-multiplexing protocol, wire-compatible
//! with the Go implementations and ngrok's Rust crate, on an io_uring,
//! thread-per-core engine.
//!
//! The crate is built in layers, each usable on its own:
//! - [`frame`]: the wire codec (8-byte header, RST / DATA / WNDINC / GOAWAY);
//! - [`proto`]: the session state machine, sans I/O;
//! - [`engine`]: the io_uring, thread-per-core runtime (cores, tasks, timers, TCP, Unix sockets);
//! - [`Session`] and [`Stream`]: async handles that run `proto` on the engine;
//! - [`transport`]: what an engine session runs over: TCP, a Unix socket, or TLS
//!   (rustls, sans-IO) ([`Transport`]);
//! - [`tokio`](mod@crate::tokio): the same handles over any `AsyncRead + AsyncWrite`
//!   on a tokio runtime, `Send` and portable (feature `tokio`, on by default);
//! - [`typed`]: streams that carry a `u32` type ([`TypedSession`], [`TypedStream`]);
//! - [`heartbeat`]: latency and dead-peer detection over a typed session ([`Heartbeat`]),
//!   its timing rules sans I/O in [`heartbeat::timing`];
//! - [`Error`] and [`ErrorCode`]: what went wrong, in words and on the wire.
//!
//! The library never prints and never reads the environment: it logs through
//! [`tracing`] (a span per session; start and end of sessions, never per
//! frame), and the application installs a subscriber if it wants the logs.
//!
//! [muxado]: https://github.com/inconshreveable/muxado

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, unreachable_pub)]

mod copy;
pub mod engine;
pub mod error;
pub mod frame;
pub mod heartbeat;
mod lease;
pub mod proto;
mod session;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod transport;
pub mod typed;

pub use engine::Engine;
pub use error::{Error, ErrorCode};
pub use heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
pub use proto::Config;
pub use session::{Session, SessionEnd, SessionStats, Stream};
pub use transport::Transport;
pub use typed::{StreamType, TypedSession, TypedStream};

/// The README's examples run as doc tests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
