//! muxado-uring: the muxado stream-multiplexing protocol on an io_uring engine.
pub mod engine;
