//! One core's io_uring: ring setup ([`setup`]), the table of operations in flight and their
//! lifecycle ([`table`]), and the driver that pushes SQEs, enters the kernel and reaps CQEs
//! ([`driver`]).
//!
//! Memory safety of in-flight operations: an [`Op`](super::op::Op) owns every buffer its SQE
//! points into (and the socket it names). If the future is dropped before the CQE arrives, the
//! owned data moves into the operation table ([`table::Lifecycle::Ignored`]) and is freed only
//! when the kernel reports completion; an async cancel is submitted so that the completion comes
//! soon.

mod driver;
mod setup;
mod table;

pub(crate) use driver::Driver;
pub(crate) use setup::probe;
pub(crate) use table::{Completion, Lifecycle, MultiState, OrphanHook};
