//! The session state machine, sans I/O: no sockets, threads or clocks inside.
//!
//! A [`Session`] is fed received bytes ([`Session::handle_input`]), the
//! application's calls ([`Session::open`], [`Session::write`],
//! [`Session::read`], …) and the time ([`Session::handle_timeout`]); it
//! yields bytes to transmit ([`Session::poll_transmit`]) and [`Event`]s. Any
//! transport can drive it; the [`engine`](crate::engine) drives it on io_uring
//! and the tests drive it with byte strings.
//!
//! Inside, each job has its module: `reader` cuts the byte stream into
//! frames, `flow` keeps the receive windows and their credit, `scheduler`
//! shares the send buffer among writers, `memory` keeps the budgets, and
//! `session` is the state machine that ties them together.

mod config;
mod flow;
mod ids;
mod memory;
mod reader;
mod scheduler;
mod session;
mod stream;
mod transmit;

pub use config::Config;
pub use ids::Role;
pub use memory::{MemoryBudget, SESSION_FLOOR, STREAM_COST};
pub use session::{Event, Session, Stats, MAX_WINDOW};
pub use stream::StreamKey;
pub use transmit::{Chunks, Transmit, ZERO_COPY_MIN};
