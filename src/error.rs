//! Error codes of the wire protocol and the one error type of the API.

use std::fmt;
use std::sync::Arc;

/// A muxado error code: the `u32` carried by RST and GOAWAY frames.
///
/// The numeric values are those of the Go implementation. A peer may send any
/// `u32`; values this crate does not know are preserved in [`ErrorCode::Other`]
/// and sent back unchanged, so nothing is lost on the way through. Codes
/// compare by wire value, so `Other(5) == StreamRefused`.
#[derive(Clone, Copy, Debug)]
pub enum ErrorCode {
    /// 0: clean close of the session.
    NoError,
    /// 1: a malformed frame or a broken protocol rule; kills the session.
    ProtocolError,
    /// 2: an internal failure of the sender.
    InternalError,
    /// 3: the peer sent more data than the stream's receive window allows.
    FlowControlError,
    /// 4: data arrived for a stream that is closed.
    StreamClosed,
    /// 5: a stream was refused (after GOAWAY, or over the stream limit).
    StreamRefused,
    /// 6: defined by the protocol, never sent by Go.
    StreamCancelled,
    /// 7: defined by the protocol, never sent by Go.
    StreamReset,
    /// 8: an RST, WNDINC or GOAWAY frame had the wrong length.
    FrameSizeError,
    /// 9: the accept backlog was full.
    AcceptQueueFull,
    /// 10: the peer is too aggressive.
    EnhanceYourCalm,
    /// 11: the peer sent GOAWAY; no new streams may be opened (local only).
    RemoteGoneAway,
    /// 12: the stream id space is used up (local only).
    StreamsExhausted,
    /// 13: a write deadline passed (local only).
    WriteTimeout,
    /// 14: the session is closed (local only).
    SessionClosed,
    /// 15: the transport returned end-of-file.
    PeerEof,
    /// 0xFF: the session died of a non-muxado error, such as an I/O error.
    Unknown,
    /// Any other value, preserved as received.
    Other(u32),
}

impl ErrorCode {
    /// The value on the wire.
    pub const fn to_u32(self) -> u32 {
        match self {
            ErrorCode::NoError => 0,
            ErrorCode::ProtocolError => 1,
            ErrorCode::InternalError => 2,
            ErrorCode::FlowControlError => 3,
            ErrorCode::StreamClosed => 4,
            ErrorCode::StreamRefused => 5,
            ErrorCode::StreamCancelled => 6,
            ErrorCode::StreamReset => 7,
            ErrorCode::FrameSizeError => 8,
            ErrorCode::AcceptQueueFull => 9,
            ErrorCode::EnhanceYourCalm => 10,
            ErrorCode::RemoteGoneAway => 11,
            ErrorCode::StreamsExhausted => 12,
            ErrorCode::WriteTimeout => 13,
            ErrorCode::SessionClosed => 14,
            ErrorCode::PeerEof => 15,
            ErrorCode::Unknown => 0xFF,
            ErrorCode::Other(v) => v,
        }
    }

    /// The code for a value on the wire; never fails.
    pub const fn from_u32(v: u32) -> Self {
        match v {
            0 => ErrorCode::NoError,
            1 => ErrorCode::ProtocolError,
            2 => ErrorCode::InternalError,
            3 => ErrorCode::FlowControlError,
            4 => ErrorCode::StreamClosed,
            5 => ErrorCode::StreamRefused,
            6 => ErrorCode::StreamCancelled,
            7 => ErrorCode::StreamReset,
            8 => ErrorCode::FrameSizeError,
            9 => ErrorCode::AcceptQueueFull,
            10 => ErrorCode::EnhanceYourCalm,
            11 => ErrorCode::RemoteGoneAway,
            12 => ErrorCode::StreamsExhausted,
            13 => ErrorCode::WriteTimeout,
            14 => ErrorCode::SessionClosed,
            15 => ErrorCode::PeerEof,
            0xFF => ErrorCode::Unknown,
            v => ErrorCode::Other(v),
        }
    }
}

impl PartialEq for ErrorCode {
    fn eq(&self, other: &Self) -> bool {
        self.to_u32() == other.to_u32()
    }
}

impl Eq for ErrorCode {}

impl std::hash::Hash for ErrorCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.to_u32().hash(state);
    }
}

impl From<u32> for ErrorCode {
    fn from(v: u32) -> Self {
        ErrorCode::from_u32(v)
    }
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c.to_u32()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Other(v) => write!(f, "unknown error code {v:#x}"),
            c => write!(f, "{c:?} ({})", c.to_u32()),
        }
    }
}

/// Everything that can go wrong, for streams and sessions alike.
///
/// Every variant maps to an [`ErrorCode`] through [`Error::code`], and its
/// `Display` says what happened in words. Cheap to clone: a session hands the
/// same error to every stream it fails.
///
/// New variants may be added in minor releases (`#[non_exhaustive]`): match
/// with a wildcard arm, or on [`Error::code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke the protocol; the session is dead.
    #[error("protocol violation by the peer ({code}): {reason}")]
    Protocol {
        /// `ProtocolError` or `FrameSizeError`.
        code: ErrorCode,
        /// What the peer did.
        reason: &'static str,
    },
    /// The peer reset the stream with RST.
    #[error("stream reset by peer with error code {0}")]
    RemoteReset(ErrorCode),
    /// This side reset the stream (by [`reset`](crate::proto::Session::reset) or
    /// because the peer broke a stream rule).
    #[error("stream reset locally with error code {0}")]
    LocalReset(ErrorCode),
    /// The stream is closed in the direction of the operation.
    #[error("stream closed")]
    StreamClosed,
    /// The peer sent GOAWAY: no new streams, and streams above its last id failed.
    #[error("remote gone away")]
    RemoteGoneAway,
    /// This side's stream ids are used up; open a new session.
    #[error("stream ids exhausted")]
    StreamsExhausted,
    /// The configured limit of concurrent streams is reached.
    #[error("too many concurrent streams (limit {0})")]
    TooManyStreams(usize),
    /// The session is closed; the session's own error says why.
    #[error("session closed")]
    SessionClosed,
    /// The transport ended: the whole session is over (a session error; a
    /// single stream ending early is [`Error::UnexpectedEof`]).
    #[error("{0}")]
    PeerEof(&'static str),
    /// The stream ended (the peer's FIN) before a read that needed more bytes,
    /// such as [`Stream::read_exact`](crate::Stream::read_exact), was
    /// satisfied. Only this stream is concerned; the session goes on.
    #[error("stream ended early: {0}")]
    UnexpectedEof(&'static str),
    /// The peer does not read what we send while making us queue more.
    #[error("peer is not reading: {0}")]
    EnhanceYourCalm(&'static str),
    /// A transport (I/O) error killed the session.
    #[error("transport error: {0}")]
    Transport(Arc<str>),
    /// A read or write deadline passed.
    #[error("{0} deadline exceeded")]
    Timeout(&'static str),
    /// A handle referred to a stream slot that has since been freed.
    #[error("stale stream handle")]
    StaleHandle,
}

impl Error {
    /// The wire code for this error (what a GOAWAY or RST would carry).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Protocol { code, .. } => *code,
            Error::RemoteReset(c) | Error::LocalReset(c) => *c,
            Error::StreamClosed | Error::StaleHandle | Error::UnexpectedEof(_) => {
                ErrorCode::StreamClosed
            }
            Error::RemoteGoneAway => ErrorCode::RemoteGoneAway,
            Error::StreamsExhausted => ErrorCode::StreamsExhausted,
            Error::TooManyStreams(_) => ErrorCode::StreamRefused,
            Error::SessionClosed => ErrorCode::SessionClosed,
            Error::PeerEof(_) => ErrorCode::PeerEof,
            Error::EnhanceYourCalm(_) => ErrorCode::EnhanceYourCalm,
            Error::Transport(_) => ErrorCode::Unknown,
            Error::Timeout(_) => ErrorCode::WriteTimeout,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            Error::RemoteReset(_) | Error::LocalReset(_) => ErrorKind::ConnectionReset,
            Error::StreamClosed | Error::SessionClosed | Error::StaleHandle => {
                ErrorKind::NotConnected
            }
            Error::PeerEof(_) | Error::UnexpectedEof(_) => ErrorKind::UnexpectedEof,
            Error::Timeout(_) => ErrorKind::TimedOut,
            Error::RemoteGoneAway | Error::TooManyStreams(_) => ErrorKind::ConnectionRefused,
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_every_u32_class() {
        for v in (0..=16).chain([0xFE, 0xFF, 0x100, 0xFFFF_FFFF]) {
            assert_eq!(ErrorCode::from_u32(v).to_u32(), v);
        }
        assert_eq!(ErrorCode::from(8), ErrorCode::FrameSizeError);
        assert_eq!(ErrorCode::from(0xFF), ErrorCode::Unknown);
        assert_eq!(ErrorCode::from(16), ErrorCode::Other(16));
        assert_eq!(ErrorCode::Other(5), ErrorCode::StreamRefused);
        assert_ne!(ErrorCode::Other(6), ErrorCode::StreamRefused);
    }

    #[test]
    fn errors_name_their_code_and_say_what_happened() {
        let e = Error::RemoteReset(ErrorCode::FlowControlError);
        assert_eq!(e.code(), ErrorCode::FlowControlError);
        assert_eq!(
            e.to_string(),
            "stream reset by peer with error code FlowControlError (3)"
        );
        let io: std::io::Error = Error::StreamClosed.into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotConnected);
    }
}
