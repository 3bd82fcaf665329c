//! The state of one stream inside a session's slab.

use bytes::BytesMut;

use crate::error::Error;

/// A handle to a stream inside a [`Session`](super::Session): its slab slot
/// plus the generation of the stream that lived there when the handle was made.
/// Once the slot is freed and reused, the old key no longer matches and every
/// call with it fails with [`Error::StaleHandle`] instead of touching the new
/// stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

/// Per-stream protocol state.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub(crate) id: u32,
    pub(crate) gen: u32,
    /// Opened by this side (vs accepted).
    pub(crate) local: bool,
    /// The peer knows the stream: we sent its SYN, or it opened it.
    pub(crate) syn_sent: bool,
    /// Registered in the id table: frames for this id reach this stream.
    pub(crate) in_table: bool,
    /// The application (or the accept queue) still holds a key.
    pub(crate) held: bool,
    /// Bytes we may still send (WNDINC has no upper bound in Go: saturate).
    pub(crate) send_window: u64,
    /// Our FIN is queued; writes fail.
    pub(crate) send_fin: bool,
    /// The peer's FIN arrived; reads end after the buffer.
    pub(crate) recv_fin: bool,
    /// The application closed the stream (both directions).
    pub(crate) closed: bool,
    /// Received, not yet read.
    pub(crate) recv_buf: BytesMut,
    /// What the peer may have unread here: `max_window`, more once auto-tuned.
    pub(crate) recv_window: u32,
    /// Read, not yet credited back with WNDINC.
    pub(crate) credit: u32,
    /// Set once; overrides everything except data already buffered.
    pub(crate) error: Option<Error>,
    /// We sent an RST: at most one per stream.
    pub(crate) rst_sent: bool,
    /// The application waits for data / for send space.
    pub(crate) want_read: bool,
    pub(crate) want_write: bool,
    /// Queued in the session's list of writers waiting for buffer space.
    pub(crate) waiting_for_buffer: bool,
    /// Bytes queued in the current transmit epoch (fairness quota).
    pub(crate) epoch: u64,
    pub(crate) epoch_bytes: usize,
}

impl StreamState {
    pub(crate) fn new(id: u32, gen: u32, local: bool, window: u32) -> Self {
        StreamState {
            id,
            gen,
            local,
            syn_sent: !local,
            in_table: true,
            held: true,
            send_window: u64::from(window),
            send_fin: false,
            recv_fin: false,
            closed: false,
            recv_buf: BytesMut::new(),
            recv_window: window,
            credit: 0,
            error: None,
            rst_sent: false,
            want_read: false,
            want_write: false,
            waiting_for_buffer: false,
            epoch: 0,
            epoch_bytes: 0,
        }
    }

    /// DATA may still arrive: no FIN, no error, not closed by the application.
    pub(crate) fn accepts_data(&self) -> bool {
        !self.recv_fin && self.error.is_none() && !self.closed
    }

    /// Both directions are finished cleanly.
    pub(crate) fn fully_closed(&self) -> bool {
        self.send_fin && self.recv_fin
    }
}
