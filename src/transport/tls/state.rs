//! The sans-IO half of TLS: rustls' unbuffered connection driven over buffers
//! this module owns. No socket, no waker, no await: the stream (`mod.rs`)
//! moves bytes between these buffers and the ring, and the tests feed them
//! by hand.
//!
//! Why the unbuffered API: the buffered one reads received ciphertext in
//! 4 KiB steps into a buffer it grows, shrinks and compacts per record, keeps
//! decrypted records in a queue of its own that `reader()` copies out of, and
//! queues every sealed record for `write_tls` to copy. Here rustls decrypts
//! whole records where they were received, in the ring's chunk ([`InPlace`]);
//! only a record cut by the chunk's end is completed in [`InBuf`] first.
//! Sealed records land straight in the sender's reused [`Sealed`] buffer.
//!
//! What rustls 0.23 still does per record, inside, whatever we hand it
//! (`conn/unbuffered.rs` and `common_state.rs` of rustls 0.23.48): a received
//! application-data record, decrypted in place, is copied into a `Vec` of its
//! own (`take_received_plaintext`) that `ReadTraffic::next_record` lends; a
//! sent record is sealed into a `Vec` of its own (`encrypt_outgoing`) that
//! `WriteTraffic::encrypt` then copies into our buffer. So one allocation and
//! one copy per record each way remain until rustls' unbuffered API decrypts
//! and encrypts in the caller's buffers (its own comments say "future").
//!
//! One rule keeps the two users of a connection apart: only the receiver
//! hands rustls new ciphertext, and it processes every complete record before
//! it returns. rustls keeps positions into the receive buffer between calls
//! (parts of a handshake message), so the sender passes the same buffer when
//! it asks for the right to encrypt, and finds nothing there to decrypt.

use std::io;

use bytes::BytesMut;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::CommonState;

/// The largest TLS record on the wire: header, 16 KiB of plaintext and the
/// most expansion TLS 1.2 allows.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// How much received ciphertext the receive buffer holds at most: a
/// handshake message may take 64 KiB over several records (rustls' limit)
/// and must stay whole in the buffer until its last part arrives; one more
/// record on top. A peer can make us hold no more than this.
pub(super) const INBUF_MAX: usize = 0x1_0000 + MAX_RECORD;

/// Plaintext per record at most (TLS' maximum fragment).
const MAX_FRAGMENT: usize = 16 * 1024;

/// What sealing adds to a record's plaintext at most: header (5), TLS 1.2
/// explicit nonce (8), TLS 1.3 content type (1), AEAD tag (16).
const RECORD_OVERHEAD: usize = 5 + 8 + 1 + 16;

/// The rustls connection, either side.
pub(super) enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

impl From<UnbufferedClientConnection> for Conn {
    fn from(c: UnbufferedClientConnection) -> Conn {
        Conn::Client(c)
    }
}

impl From<UnbufferedServerConnection> for Conn {
    fn from(c: UnbufferedServerConnection) -> Conn {
        Conn::Server(c)
    }
}

/// The one call that differs between the two sides (rustls has no trait for
/// it): everything else is generic over the side's data.
trait Driven {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Driven for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Driven for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// Runs `$body` with `$c` bound to the connection of either side.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Client($c) => $body,
            Conn::Server($c) => $body,
        }
    };
}

/// Received ciphertext rustls has not let go of yet: a partial record, the
/// parts of a handshake message, and, only inside [`State::receive`], the
/// records it is decrypting in place.
#[derive(Default)]
pub(super) struct InBuf {
    buf: Vec<u8>,
    /// Where the live bytes start (rustls discards from the front).
    start: usize,
}

impl InBuf {
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// How many bytes the last record in the buffer lacks (0 if the buffer
    /// ends where a record ends), read from the record headers. Only a hint
    /// of how much to append next: where rustls moved handshake fragments
    /// over later headers the walk reads nonsense, which costs at most an
    /// extra round, never a byte.
    fn missing(&self) -> usize {
        let data = &self.buf[self.start..];
        let mut at = 0;
        loop {
            let left = data.len() - at;
            if left == 0 {
                return 0;
            }
            if left < 5 {
                return 5 - left;
            }
            let len = 5 + usize::from(u16::from_be_bytes([data[at + 3], data[at + 4]]));
            if len > left {
                return len - left;
            }
            at += len;
        }
    }

    /// Appends as much of `bytes` as [`INBUF_MAX`] lets in; returns how much.
    /// The live bytes move to the front only when the tail has no room:
    /// then they are at most a record and the parts of a handshake message.
    fn append(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(INBUF_MAX - self.len());
        if self.start > 0 && self.buf.len() + n > self.buf.capacity() {
            let live = self.len();
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(live);
            self.start = 0;
        }
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }
}

/// Received ciphertext as rustls sees it in one round: the connection's
/// [`InBuf`], or whole records still in the ring's chunk ([`InPlace`]).
trait Incoming {
    /// The bytes rustls has not discarded yet.
    fn data_mut(&mut self) -> &mut [u8];
    /// rustls is done with the first `n` of them.
    fn consume(&mut self, n: usize);
}

impl Incoming for InBuf {
    fn data_mut(&mut self) -> &mut [u8] {
        InBuf::data_mut(self)
    }

    fn consume(&mut self, n: usize) {
        InBuf::consume(self, n)
    }
}

/// Whole records decrypted where they were received, with no copy: rustls
/// decrypts in the caller's buffer, whichever it is, as long as the bytes it
/// has not discarded keep their places relative to the front (they move to
/// the [`InBuf`] after the round).
struct InPlace<'a> {
    buf: &'a mut [u8],
    /// Discarded so far.
    done: usize,
}

impl Incoming for InPlace<'_> {
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.done..]
    }

    fn consume(&mut self, n: usize) {
        self.done = (self.done + n).min(self.buf.len());
    }
}

/// The length of the longest prefix of `bytes` made of whole records (as
/// their headers tell; rustls checks them).
fn whole_records(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 5) {
        let len = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if bytes.len() - at < len {
            break;
        }
        at += len;
    }
    at
}

/// Ciphertext to send: `buf[..filled]`. The bytes of `buf` past `filled` are
/// room left from earlier sends, written over without being zeroed again.
#[derive(Default)]
pub(super) struct Sealed {
    buf: BytesMut,
    filled: usize,
}

impl Sealed {
    /// The room after the filled bytes, at least `n` bytes of it.
    fn room(&mut self, n: usize) -> &mut [u8] {
        let need = self.filled + n;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.filled..]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.room(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Splits the filled bytes off to be sent; the rest of the buffer is
    /// kept apart and [`Self::rejoin`] puts the two back together (no copy:
    /// they are neighbours in one allocation).
    pub(super) fn split(&mut self) -> (BytesMut, BytesMut) {
        let mut head = std::mem::take(&mut self.buf);
        let tail = head.split_off(self.filled);
        self.filled = 0;
        (head, tail)
    }

    /// Takes back the buffer of a finished send and the room split off it.
    pub(super) fn rejoin(&mut self, mut head: BytesMut, tail: BytesMut) {
        head.unsplit(tail);
        self.buf = head;
        self.filled = 0;
    }
}

/// Where a round of processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// rustls needs more ciphertext to go on with the handshake.
    NeedInput,
    /// The connection can carry application data (maybe while the
    /// handshake still finishes: a TLS 1.3 server may send first).
    Open,
    /// Both sides sent close_notify.
    Closed,
}

/// What the sender asks for once rustls lets it write.
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
    /// Only the tests start key updates (a session never needs to: rustls
    /// starts one itself before its keys wear out).
    #[cfg(test)]
    RefreshKeys,
}

/// A failure of one round: rustls' own error (its alert is queued), or one
/// of ours.
#[derive(Debug)]
pub(super) enum Failure {
    Tls(rustls::Error),
    Io(io::Error),
}

impl From<rustls::Error> for Failure {
    fn from(e: rustls::Error) -> Failure {
        Failure::Tls(e)
    }
}

impl From<Failure> for io::Error {
    fn from(f: Failure) -> io::Error {
        match f {
            Failure::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")),
            Failure::Io(e) => e,
        }
    }
}

/// Received records that would take the receive buffer past [`INBUF_MAX`].
fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "TLS: the peer's records do not fit the receive buffer's limit",
    )
}

fn invalid(msg: &'static str) -> Failure {
    Failure::Io(io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// Where a round hands decrypted application data, record by record.
type Plain<'p> = dyn FnMut(&[u8]) + 'p;

/// The buffers one round works on, beside the connection.
struct Buffers<'a, 'p> {
    inbuf: &'a mut dyn Incoming,
    /// TLS output of rustls' own (handshake flights, alerts, key updates),
    /// in order; it leaves before anything encrypted after it.
    queued: &'a mut Vec<u8>,
    peer_closed: &'a mut bool,
    /// Where decrypted application data goes, record by record; `None` for
    /// the sender, which never finds any (see the module's rule).
    plain: Option<&'a mut Plain<'p>>,
    /// Where the sender's ciphertext goes.
    out: Option<&'a mut Sealed>,
}

/// Calls `process_tls_records` until rustls needs input or lets us write,
/// doing on the way what needs no I/O: decrypted records into `plain`,
/// rustls' own output into `queued`, the peer's close_notify noted. When
/// rustls lets us write, does `action`.
fn pump<C: Driven>(
    conn: &mut C,
    b: Buffers<'_, '_>,
    mut action: Action<'_>,
) -> Result<Quiet, Failure> {
    let Buffers {
        inbuf,
        queued,
        peer_closed,
        mut plain,
        mut out,
    } = b;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(inbuf.data_mut());
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                inbuf.consume(discard);
                return Err(e.into());
            }
        };
        let stop = match state {
            ConnectionState::ReadTraffic(mut records) => {
                let Some(plain) = plain.as_mut() else {
                    return Err(invalid(
                        "TLS: application data reached the sender (a bug of this module)",
                    ));
                };
                while let Some(record) = records.next_record() {
                    let record = record?;
                    plain(record.payload);
                    discard += record.discard;
                }
                None
            }
            ConnectionState::EncodeTlsData(mut tls) => {
                encode(&mut tls, queued)?;
                None
            }
            // What was encoded sits in `queued`, which leaves first.
            ConnectionState::TransmitTlsData(tls) => {
                tls.done();
                None
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                None
            }
            ConnectionState::BlockedHandshake => Some(Quiet::NeedInput),
            ConnectionState::Closed => {
                if matches!(action, Action::Encrypt(_)) {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "TLS: the connection is closed for writing (close_notify sent)",
                    )));
                }
                Some(Quiet::Closed)
            }
            ConnectionState::WriteTraffic(mut w) => {
                if let Some(out) = out.as_deref_mut() {
                    out.push(queued);
                    queued.clear();
                }
                match std::mem::replace(&mut action, Action::Nothing) {
                    Action::Nothing => {}
                    Action::Encrypt(data) => {
                        let out = out
                            .as_deref_mut()
                            .ok_or_else(|| invalid("TLS: no buffer"))?;
                        encrypt(&mut w, data, out)?;
                    }
                    Action::CloseNotify => {
                        let out = out
                            .as_deref_mut()
                            .ok_or_else(|| invalid("TLS: no buffer"))?;
                        close_notify(&mut w, out)?;
                    }
                    #[cfg(test)]
                    Action::RefreshKeys => {
                        w.refresh_traffic_keys()?;
                        // The key_update is queued in rustls: go round again to encode it.
                        inbuf.consume(discard);
                        continue;
                    }
                }
                Some(Quiet::Open)
            }
            ConnectionState::ReadEarlyData(_) => {
                return Err(invalid(
                    "TLS: 0-RTT early data is not supported (set the rustls ServerConfig's \
                     max_early_data_size to 0)",
                ));
            }
            _ => {
                return Err(invalid(
                    "TLS: a rustls connection state this module does not know",
                ))
            }
        };
        inbuf.consume(discard);
        if let Some(quiet) = stop {
            return Ok(quiet);
        }
    }
}

/// Appends a record rustls made on its own to `queued`.
fn encode<D>(tls: &mut EncodeTlsData<'_, D>, queued: &mut Vec<u8>) -> Result<(), Failure> {
    let at = queued.len();
    let mut want = 64;
    loop {
        queued.resize(at + want, 0);
        match tls.encode(&mut queued[at..]) {
            Ok(n) => {
                queued.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) if s.required_size > want => {
                want = s.required_size;
            }
            Err(e) => {
                queued.truncate(at);
                return Err(Failure::Io(io::Error::other(format!("TLS: {e}"))));
            }
        }
    }
}

fn encrypt_error(e: EncryptError) -> Failure {
    Failure::Io(io::Error::other(format!("TLS: {e}")))
}

/// Seals `data` into `out` (after whatever rustls still had queued).
fn encrypt<D>(w: &mut WriteTraffic<'_, D>, data: &[u8], out: &mut Sealed) -> Result<(), Failure> {
    let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
    let want = data.len() + records * RECORD_OVERHEAD;
    write_into(out, want, |room| w.encrypt(data, room))
}

fn close_notify<D>(w: &mut WriteTraffic<'_, D>, out: &mut Sealed) -> Result<(), Failure> {
    write_into(out, 64, |room| w.queue_close_notify(room))
}

/// Runs one of rustls' writing calls on room at the end of `out`, starting
/// with `want` bytes and growing to what rustls says it needs.
fn write_into(
    out: &mut Sealed,
    mut want: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), Failure> {
    loop {
        let room = out.room(want);
        let have = room.len();
        match write(room) {
            Ok(n) => {
                out.filled += n;
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > have => {
                want = s.required_size;
            }
            Err(e) => return Err(encrypt_error(e)),
        }
    }
}

/// After rustls failed: one more call gives the alert it queued to tell the
/// peer why, before it looks at the buffer again; collects it into `queued`.
/// Exactly one call: a second would decrypt the bad record again, and rustls
/// asserts (in debug builds) that it sends only one fatal alert.
fn collect_alert<C: Driven>(conn: &mut C, inbuf: &mut dyn Incoming, queued: &mut Vec<u8>) {
    let UnbufferedStatus { discard, state } = conn.process(inbuf.data_mut());
    if let Ok(ConnectionState::EncodeTlsData(mut tls)) = state {
        let _ = encode(&mut tls, queued);
    }
    inbuf.consume(discard);
}

/// One TLS connection, sans-IO.
pub(super) struct State {
    conn: Conn,
    inbuf: InBuf,
    queued: Vec<u8>,
    peer_closed: bool,
    /// Our close_notify is sealed: no data after it.
    closed_write: bool,
    /// The error that ended the connection, as text (every later call
    /// returns it): nothing is decrypted or encrypted after it.
    failed: Option<String>,
    /// Application data that arrived with the end of the handshake, for the
    /// receiver to hand out first.
    pub(super) early_plain: Vec<u8>,
}

impl State {
    pub(super) fn new(conn: impl Into<Conn>) -> State {
        State {
            conn: conn.into(),
            inbuf: InBuf::default(),
            queued: Vec::new(),
            peer_closed: false,
            closed_write: false,
            failed: None,
            early_plain: Vec::new(),
        }
    }

    pub(super) fn common(&self) -> &CommonState {
        with_conn!(&self.conn, c => {
            let common: &CommonState = c;
            common
        })
    }

    /// True once the peer's close_notify came: no more data from it.
    pub(super) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// True if rustls made output of its own that waits to be sent.
    pub(super) fn wants_send(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Takes rustls' own output (the handshake sends it this way).
    pub(super) fn take_queued(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.queued)
    }

    fn round(
        &mut self,
        plain: Option<&mut Plain<'_>>,
        out: Option<&mut Sealed>,
        action: Action<'_>,
    ) -> Result<Quiet, Failure> {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let r = self.round_over(&mut inbuf, plain, out, action);
        self.inbuf = inbuf;
        r
    }

    /// One round over the ciphertext in `incoming` (see [`pump`]); a failure
    /// is kept, and the alert rustls made for it queued.
    fn round_over(
        &mut self,
        incoming: &mut dyn Incoming,
        plain: Option<&mut Plain<'_>>,
        out: Option<&mut Sealed>,
        action: Action<'_>,
    ) -> Result<Quiet, Failure> {
        let b = Buffers {
            inbuf: incoming,
            queued: &mut self.queued,
            peer_closed: &mut self.peer_closed,
            plain,
            out,
        };
        let r = with_conn!(&mut self.conn, c => pump(c, b, action));
        if let Err(e) = &r {
            if self.failed.is_none() {
                self.failed = Some(match e {
                    Failure::Tls(e) => format!("TLS: {e}"),
                    Failure::Io(e) => e.to_string(),
                });
            }
            if matches!(e, Failure::Tls(_)) {
                with_conn!(&mut self.conn, c => collect_alert(c, incoming, &mut self.queued));
            }
        }
        r
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(msg) => Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone())),
            None => Ok(()),
        }
    }

    /// One handshake step over what was received so far (see
    /// [`Self::feed_handshake`]). The handshake is over when
    /// `common().is_handshaking()` is false.
    pub(super) fn handshake_step(&mut self) -> Result<Quiet, Failure> {
        let mut early = std::mem::take(&mut self.early_plain);
        let r = self.round(
            Some(&mut |p: &[u8]| early.extend_from_slice(p)),
            None,
            Action::Nothing,
        );
        self.early_plain = early;
        r
    }

    /// Adds received handshake bytes; all of them, or an error if a
    /// handshake message would not fit (rustls refuses those anyway).
    pub(super) fn feed_handshake(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.inbuf.append(bytes) < bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: handshake data beyond the receive buffer's limit",
            ));
        }
        Ok(())
    }

    /// Takes what fits of `bytes` (received ciphertext), hands every complete
    /// record's plaintext to `plain` as it is decrypted (no gathering copy:
    /// the protocol reads it where rustls lends it) and queues rustls'
    /// answers. Returns how many bytes it took: fewer than offered only when
    /// the buffer holds [`INBUF_MAX`] and the rest must wait.
    ///
    /// `bytes` is written over: whole records are decrypted where they lie
    /// ([`InPlace`]), so a caller must not read them as ciphertext after.
    /// A record that the last chunk left incomplete is completed first, in
    /// the buffer and on its own: once it is decrypted the buffer is empty
    /// again, and the rest of the chunk is decrypted in place.
    pub(super) fn receive(&mut self, bytes: &mut [u8], plain: &mut Plain<'_>) -> io::Result<usize> {
        self.check_failed()?;
        if self.peer_closed {
            // After the peer's close_notify nothing is data: dropped.
            return Ok(bytes.len());
        }
        let mut taken = 0;
        while taken < bytes.len() {
            let rest = &mut bytes[taken..];
            if self.inbuf.len() == 0 {
                // Whole records are decrypted where they lie; what rustls
                // keeps of them (parts of a handshake message) moves to the
                // buffer, in order, as if it had been copied there first.
                let whole = whole_records(rest);
                if whole > 0 {
                    let mut records = InPlace {
                        buf: &mut rest[..whole],
                        done: 0,
                    };
                    self.round_over(&mut records, Some(plain), None, Action::Nothing)?;
                    let kept = &records.buf[records.done..];
                    if self.inbuf.append(kept) < kept.len() {
                        return Err(too_large());
                    }
                    taken += whole;
                    if self.peer_closed {
                        return Ok(bytes.len());
                    }
                    continue;
                }
            }
            // A record cut by the chunk's end (or the parts of a handshake
            // message) is completed in the buffer.
            let missing = self.inbuf.missing();
            let n = if missing > 0 {
                self.inbuf.append(&rest[..missing.min(rest.len())])
            } else {
                self.inbuf.append(rest)
            };
            if n == 0 {
                if taken == 0 {
                    return Err(too_large());
                }
                break;
            }
            taken += n;
            self.round(Some(plain), None, Action::Nothing)?;
            if self.peer_closed {
                return Ok(bytes.len());
            }
        }
        Ok(taken)
    }

    /// Puts into `out` what rustls queued on its own, then `data` sealed
    /// (nothing more if `data` is empty).
    pub(super) fn seal(&mut self, data: &[u8], out: &mut Sealed) -> io::Result<()> {
        if self.failed.is_some() {
            // Only the alert that says why may still leave.
            out.push(&self.queued);
            self.queued.clear();
            return if data.is_empty() {
                Ok(())
            } else {
                self.check_failed()
            };
        }
        if self.closed_write && !data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS: the connection is closed for writing (close_notify sent)",
            ));
        }
        let action = if data.is_empty() {
            Action::Nothing
        } else {
            Action::Encrypt(data)
        };
        let quiet = self.round(None, Some(out), action)?;
        out.push(&self.queued);
        self.queued.clear();
        if !data.is_empty() && quiet != Quiet::Open {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS: the connection cannot carry data (handshake not done)",
            ));
        }
        Ok(())
    }

    /// Puts into `out` what rustls queued, then a close_notify alert.
    pub(super) fn seal_close_notify(&mut self, out: &mut Sealed) -> io::Result<()> {
        if self.failed.is_some() {
            return self.seal(&[], out);
        }
        if self.closed_write {
            return self.seal(&[], out);
        }
        self.round(None, Some(out), Action::CloseNotify)?;
        self.closed_write = true;
        out.push(&self.queued);
        self.queued.clear();
        Ok(())
    }

    /// Starts a TLS 1.3 key update: rustls queues a key_update message
    /// (asking the peer to update too) that the next send carries, and
    /// encrypts with new keys from then on. Fails before TLS 1.3.
    #[cfg(test)]
    pub(super) fn refresh_traffic_keys(&mut self) -> io::Result<()> {
        self.check_failed()?;
        self.round(None, None, Action::RefreshKeys)?;
        Ok(())
    }
}
