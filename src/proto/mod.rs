//! The session state machine, sans I/O: no sockets, threads or clocks inside.
//!
//! A [`Session`] is fed received bytes ([`Session::handle_input`]), the
//! application's calls ([`Session::open`], [`Session::write`],
//! [`Session::read`], …) and the time ([`Session::handle_timeout`]); it
//! yields bytes to transmit ([`Session::poll_transmit`]) and [`Event`]s. Any
//! transport can drive it; the [`engine`](crate::engine) drives it on io_uring
//! and the tests drive it with byte strings.

mod config;
mod ids;
mod session;
mod stream;

pub use config::Config;
pub use ids::Role;
pub use session::{Event, Session, Stats, MAX_WINDOW};
pub use stream::StreamKey;
