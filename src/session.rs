//! Async [`Session`] and [`Stream`] handles: the engine driving the sans-IO core.
//!
//! A session lives on the core that created it and never moves. Small tasks
//! drive it there: a reader (multishot receive → [`proto::Session::handle_input`]),
//! a writer (one send in flight; everything the turn's tasks queued goes out in
//! it) and, once the protocol first has a deadline, a clock for its timers.
//! Handles share the session
//! through an `Rc`: they are `!Send`, tied to their core, and cost no atomics.
//!
//! The session reaches its socket only through a [`Transport`] (receive
//! chunks, send a buffer, shut down): TCP, a Unix socket, or TLS over either;
//! see [`crate::transport`].
//!
//! ```
//! use muxado::engine::{self, net::{TcpListener, TcpStream}};
//! use muxado::{Config, Session};
//!
//! type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
//!
//! engine::block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = engine::spawn(async move {
//!         let (tcp, _) = listener.accept().await?;
//!         let session = Session::server(tcp, Config::default());
//!         let mut stream = session.accept().await?;
//!         let mut request = Vec::new();
//!         stream.read_to_end(&mut request).await?;   // until the client's FIN
//!         stream.write_all(&request).await?;         // echo
//!         stream.close_write()?;
//!         session.wait().await;                       // until the client closes
//!         Result::Ok(())
//!     });
//!     let session = Session::client(TcpStream::connect(addr).await?, Config::default());
//!     let mut stream = session.open()?;
//!     stream.write_all(b"What is the meaning of life?").await?;
//!     stream.close_write()?;                          // FIN: half-close
//!     let mut answer = Vec::new();
//!     stream.read_to_end(&mut answer).await?;
//!     assert_eq!(answer, b"What is the meaning of life?");
//!     session.close()?;
//!     server.await
//! })
//! .expect("io_uring available")
//! .expect("echo over muxado");
//! ```

use std::cell::{Cell, OnceCell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::engine::net::VectoredSend;
use crate::engine::{self, Sleep};
use crate::error::{Error, ErrorCode};
use crate::proto::{self, Config, Event, Role, StreamKey};
use crate::transport::Transport;

/// How long a dying session tries to deliver its GOAWAY (Go: 250 ms).
const GOAWAY_GRACE: Duration = Duration::from_millis(250);

/// How long a dead session waits for the peer to close its side before it
/// shuts the transport down in both directions.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A muxado session over one connection ([`Transport`]: TCP or TLS), on
/// the current engine core.
///
/// Cloning is cheap and gives another handle to the same session. The session
/// is closed (GOAWAY NoError) when [`Session::close`] is called, or when every
/// `Session` handle and every [`Stream`] of it has been dropped.
pub struct Session {
    shared: Rc<Shared>,
}

/// One stream of a session: a full-duplex, flow-controlled byte stream.
///
/// Dropping it closes it like [`Stream::close`].
pub struct Stream {
    shared: Rc<Shared>,
    key: StreamKey,
    id: u32,
    read_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

/// How a session ended; see [`Session::wait`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    /// The error that killed the session on this side
    /// ([`Error::SessionClosed`] after a local [`Session::close`]).
    pub local: Error,
    /// The code and debug data of the peer's GOAWAY, if one arrived.
    pub remote: Option<(ErrorCode, Vec<u8>)>,
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames, bytes, stalls and streams, from the protocol core.
    pub proto: proto::Stats,
    /// Send operations submitted (each carries every frame queued before it).
    pub sends: u64,
    /// Receive completions handled.
    pub recvs: u64,
    /// Streams currently alive.
    pub open_streams: usize,
    /// The counters of the core the session runs on (turns, `io_uring_enter`
    /// calls, SQEs, CQEs), shared by every session of that core.
    pub core: engine::Stats,
}

struct Shared {
    state: RefCell<State>,
    transport: Transport,
    /// Session handles and streams alive; the session closes when it drops to 0.
    users: Cell<usize>,
    /// Asked of the socket on first use only: a `getsockname` per session was a
    /// measurable part of a short session's cost, and few ask.
    local_addr: OnceCell<Option<SocketAddr>>,
    /// Known without a system call for TCP (the address connected to or
    /// accepted from).
    peer_addr: Option<SocketAddr>,
    /// Role and transport kind, for the session's span.
    role: Role,
    kind: &'static str,
    /// The session's span (role, peer address, transport): its start and end
    /// are logged in it. Made only when one of those lines is to be logged:
    /// with a formatting subscriber, a span costs its fields' formatting and
    /// a slot even if never entered, a few per cent of a short session's
    /// cycles (profiled on the bench's connect case).
    span: OnceCell<tracing::Span>,
}

#[derive(Default)]
struct Wakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

struct State {
    proto: proto::Session,
    /// Indexed by the stream's slab slot.
    wakers: Vec<Wakers>,
    acceptors: Vec<Waker>,
    waiters: Vec<Waker>,
    writer: Option<Waker>,
    clock: Option<Waker>,
    /// The reader, waiting for the protocol to want input again.
    input: Option<Waker>,
    /// The reader saw the transport end; the writer waits for it to close.
    reader_done: bool,
    closer: Option<Waker>,
    /// Sends taken from the protocol (each takes every byte queued before it).
    sends: u64,
    /// Sends the transport completed; they complete in order.
    sent: u64,
    /// Tasks waiting for a send to complete ([`Session::go_away_with_deadline`]).
    flush_waiters: Vec<Waker>,
    recvs: u64,
    /// The session's end was logged.
    end_logged: bool,
    /// The clock task runs: it is started only once the protocol first has a
    /// deadline, so a session without timers costs one task less.
    clock_started: bool,
}

impl State {
    /// Wakes whoever the protocol's events concern, and the writer if there
    /// is something to send. Called after every handle or mutate.
    fn dispatch(&mut self, shared: &Rc<Shared>) {
        while let Some(event) = self.proto.poll_event() {
            match event {
                Event::Readable(k) => wake(self.slot(k).read.take()),
                Event::Writable(k) => wake(self.slot(k).write.take()),
                Event::Accept => self.acceptors.drain(..).for_each(Waker::wake),
                Event::GoAway => {}
                Event::Dead => {
                    self.log_end(shared);
                    self.acceptors.drain(..).for_each(Waker::wake);
                    self.waiters.drain(..).for_each(Waker::wake);
                    self.flush_waiters.drain(..).for_each(Waker::wake);
                    wake(self.clock.take());
                    wake(self.writer.take());
                }
            }
        }
        if self.proto.pending_transmit() > 0 {
            wake(self.writer.take());
        }
        if self.proto.poll_timeout().is_some() {
            if !std::mem::replace(&mut self.clock_started, true) {
                // Off a core (a handle dropped at engine shutdown) nothing
                // would run it anyway.
                let _ = engine::try_spawn_detached(clock(shared.clone()));
            }
            wake(self.clock.take());
        }
        if self.proto.wants_input() {
            wake(self.input.take());
        }
    }

    /// Logs once why the session ended: info for an error, debug for a clean close.
    fn log_end(&mut self, shared: &Shared) {
        if std::mem::replace(&mut self.end_logged, true) {
            return;
        }
        let Some(error) = self.proto.error() else {
            return;
        };
        let clean = matches!(error, Error::SessionClosed | Error::PeerEof(_));
        let wanted = if clean {
            tracing::enabled!(tracing::Level::DEBUG)
        } else {
            tracing::enabled!(tracing::Level::INFO)
        };
        if !wanted {
            return;
        }
        let _in = shared.span().enter();
        let remote = self.proto.remote_goaway().map(|(code, _)| code);
        let stats = self.proto.stats();
        if clean {
            tracing::debug!(
                %error, remote_goaway = ?remote, frames_in = stats.frames_in,
                frames_out = stats.frames_out, "session ended"
            );
        } else {
            tracing::info!(
                %error, remote_goaway = ?remote, frames_in = stats.frames_in,
                frames_out = stats.frames_out, "session ended"
            );
        }
    }

    fn slot(&mut self, key: StreamKey) -> &mut Wakers {
        let i = key.slot as usize;
        if self.wakers.len() <= i {
            self.wakers.resize_with(i + 1, Wakers::default);
        }
        &mut self.wakers[i]
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

fn push_waker(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Session {
    /// Starts a client session (odd stream ids) over `transport` on the
    /// current core: a [`TcpStream`](crate::engine::net::TcpStream) or a
    /// [`TlsStream`](crate::transport::TlsStream), or a [`Transport`].
    ///
    /// Takes a connected socket: nothing here resolves a host name, so
    /// nothing blocks the core (resolve names before connecting, off the core).
    pub fn client(transport: impl Into<Transport>, config: Config) -> Session {
        Session::start(transport.into(), Role::Client, config)
    }

    /// Starts a server session (even stream ids) over `transport` on the
    /// current core; see [`Session::client`].
    pub fn server(transport: impl Into<Transport>, config: Config) -> Session {
        Session::start(transport.into(), Role::Server, config)
    }

    fn start(transport: Transport, role: Role, config: Config) -> Session {
        let peer_addr = transport.peer_addr();
        let kind = transport.kind();
        let shared = Rc::new(Shared {
            state: RefCell::new(State {
                proto: proto::Session::new(role, config),
                wakers: Vec::new(),
                acceptors: Vec::new(),
                waiters: Vec::new(),
                writer: None,
                clock: None,
                input: None,
                reader_done: false,
                closer: None,
                sends: 0,
                sent: 0,
                flush_waiters: Vec::new(),
                recvs: 0,
                end_logged: false,
                clock_started: false,
            }),
            local_addr: OnceCell::new(),
            peer_addr,
            role,
            kind,
            span: OnceCell::new(),
            transport,
            users: Cell::new(1),
        });
        if tracing::enabled!(tracing::Level::DEBUG) {
            // The local address is looked up only if the line is logged.
            let local = shared.local_addr();
            shared
                .span()
                .in_scope(|| tracing::debug!(local = ?local, "session started"));
        }
        // The tasks are not instrumented with the span: entering it on every
        // poll cost ~6% of the cycles of a short session (profiled on the
        // bench's connect case).
        // Nobody joins these tasks: detached, they cost no join state. The
        // clock is started when first needed (see `State::dispatch`).
        let started = engine::try_spawn_detached(reader(shared.clone()))
            .and_then(|_| engine::try_spawn_detached(writer(shared.clone())));
        let mut st = shared.state.borrow_mut();
        if let Err(e) = started {
            st.proto.handle_transport_error(&e.to_string());
        }
        st.dispatch(&shared);
        drop(st);
        Session { shared }
    }

    /// Opens a stream. Nothing is sent until its first write (lazy SYN).
    pub fn open(&self) -> Result<Stream, Error> {
        let mut st = self.shared.state.borrow_mut();
        let key = st.proto.open()?;
        let id = st.proto.stream_id(key)?;
        drop(st);
        Ok(Stream::new(&self.shared, key, id))
    }

    /// Waits for the next stream the peer opens. After the session dies,
    /// streams already queued are still returned, then the error.
    pub async fn accept(&self) -> Result<Stream, Error> {
        let key = poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            match st.proto.accept() {
                Ok(Some(key)) => Poll::Ready(Ok(key)),
                Ok(None) => {
                    push_waker(&mut st.acceptors, cx);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await?;
        let id = self.shared.state.borrow().proto.stream_id(key)?;
        Ok(Stream::new(&self.shared, key, id))
    }

    /// Closes the session: GOAWAY(NoError, "no error"), then the transport.
    /// Every stream fails with [`Error::SessionClosed`]. A second call fails
    /// with [`Error::SessionClosed`], as in Go.
    pub fn close(&self) -> Result<(), Error> {
        let mut st = self.shared.state.borrow_mut();
        if st.proto.is_dead() {
            return Err(Error::SessionClosed);
        }
        st.proto.close_session();
        st.dispatch(&self.shared);
        Ok(())
    }

    /// Sends GOAWAY without closing: the peer may open no more streams
    /// (they are refused with RST StreamRefused); existing streams go on.
    pub fn go_away(&self, code: ErrorCode, debug: &[u8]) -> Result<(), Error> {
        let mut st = self.shared.state.borrow_mut();
        st.proto.go_away(code, debug)?;
        st.dispatch(&self.shared);
        Ok(())
    }

    /// Go's `GoAway(code, debug, deadline)`: sends GOAWAY like
    /// [`Session::go_away`] and waits until the transport has taken the frame.
    ///
    /// Fails with [`Error::Timeout`] if it was not sent by `deadline` (`None`:
    /// wait as long as it takes), and with [`Error::SessionClosed`] if the
    /// session died first. As in Go, the deadline bounds only this wait: the
    /// GOAWAY stays queued, and the session is *not* closed when the deadline
    /// passes. For a graceful shutdown, call [`Session::close`] once the
    /// streams you care about are done, or at a deadline of your own.
    pub async fn go_away_with_deadline(
        &self,
        code: ErrorCode,
        debug: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let target = {
            let mut st = self.shared.state.borrow_mut();
            st.proto.go_away(code, debug)?;
            st.dispatch(&self.shared);
            // The next send takes every byte queued so far, the GOAWAY included.
            st.sends + 1
        };
        let sent = poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            if st.sent >= target {
                Poll::Ready(Ok(()))
            } else if st.proto.is_dead() {
                Poll::Ready(Err(Error::SessionClosed))
            } else {
                push_waker(&mut st.flush_waiters, cx);
                Poll::Pending
            }
        });
        match deadline {
            None => sent.await,
            Some(d) => engine::timeout_at(d, sent)
                .await
                .unwrap_or(Err(Error::Timeout("go_away"))),
        }
    }

    /// Waits until the session is dead and says why.
    pub async fn wait(&self) -> SessionEnd {
        poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            match st.proto.error() {
                Some(e) => Poll::Ready(SessionEnd {
                    local: e.clone(),
                    remote: st.proto.remote_goaway().map(|(c, d)| (c, d.to_vec())),
                }),
                None => {
                    push_waker(&mut st.waiters, cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The peer's GOAWAY, once one has arrived whole: its error code and
    /// debug data (beyond [`Config::max_goaway_debug`], dropped; the last
    /// GOAWAY if several came). After it the peer accepts no new stream
    /// ([`Session::open`] fails with [`Error::RemoteGoneAway`]); streams it
    /// already knows go on. [`Session::wait`] reports it too, once the
    /// session has ended; this tells a live session's owner, for instance
    /// to stop opening streams and reconnect elsewhere.
    ///
    /// ```
    /// use muxado::engine::{self, net::{TcpListener, TcpStream}};
    /// use muxado::{Config, ErrorCode, Session};
    ///
    /// type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
    ///
    /// engine::block_on(async {
    ///     let listener = TcpListener::bind("127.0.0.1:0")?;
    ///     let addr = listener.local_addr()?;
    ///     let server = engine::spawn(async move {
    ///         let (tcp, _) = listener.accept().await?;
    ///         let session = Session::server(tcp, Config::default());
    ///         let mut stream = session.accept().await?;
    ///         // Going away: this stream is still served, no new ones.
    ///         session.go_away(ErrorCode::NoError, b"draining for an upgrade")?;
    ///         stream.write_all(b"last answer").await?;
    ///         stream.close_write()?;
    ///         session.wait().await;
    ///         Result::Ok(())
    ///     });
    ///     let session = Session::client(TcpStream::connect(addr).await?, Config::default());
    ///     assert_eq!(session.remote_goaway(), None);
    ///     let mut stream = session.open()?;
    ///     stream.write_all(b"question").await?;
    ///     let mut answer = Vec::new();
    ///     stream.read_to_end(&mut answer).await?;
    ///     // The GOAWAY came before the answer on the wire.
    ///     assert_eq!(
    ///         session.remote_goaway(),
    ///         Some((ErrorCode::NoError, b"draining for an upgrade".to_vec()))
    ///     );
    ///     assert!(session.open().is_err(), "no new streams after GOAWAY");
    ///     session.close()?;
    ///     server.await
    /// })
    /// .expect("io_uring available")
    /// .expect("a GOAWAY seen on a live session");
    /// ```
    pub fn remote_goaway(&self) -> Option<(ErrorCode, Vec<u8>)> {
        let st = self.shared.state.borrow();
        st.proto.remote_goaway().map(|(c, d)| (c, d.to_vec()))
    }

    /// True once the session is dead.
    pub fn is_closed(&self) -> bool {
        self.shared.state.borrow().proto.is_dead()
    }

    /// The transport's local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr()
    }

    /// The transport's remote address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.peer_addr
    }

    /// The session's counters, with its core's (turns, syscalls).
    pub fn stats(&self) -> SessionStats {
        self.shared.stats()
    }
}

impl Clone for Session {
    fn clone(&self) -> Self {
        self.shared.acquire();
        Session {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        release_user(&self.shared);
    }
}

impl Shared {
    fn local_addr(&self) -> Option<SocketAddr> {
        *self.local_addr.get_or_init(|| self.transport.local_addr())
    }

    fn span(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            tracing::info_span!(
                "muxado_session",
                role = ?self.role,
                peer = ?self.peer_addr,
                transport = self.kind
            )
        })
    }

    fn stats(&self) -> SessionStats {
        let st = self.state.borrow();
        SessionStats {
            proto: st.proto.stats(),
            sends: st.sends,
            recvs: st.recvs,
            open_streams: st.proto.stream_count(),
            core: engine::stats(),
        }
    }

    fn acquire(&self) {
        self.users.set(self.users.get() + 1);
    }
}

/// One handle fewer; after the last, nobody can use the session any more:
/// close it.
fn release_user(shared: &Rc<Shared>) {
    let left = shared.users.get() - 1;
    shared.users.set(left);
    if left == 0 {
        if let Ok(mut st) = shared.state.try_borrow_mut() {
            st.proto.close_session();
            st.dispatch(shared);
        }
    }
}

/// Moves received bytes into the protocol until the transport ends or the
/// session dies. Never waits on the writer.
async fn reader(shared: Rc<Shared>) {
    let mut rx = shared.transport.receiver();
    loop {
        // Over its memory budget the session takes no more input until the
        // application drains its streams: the multishot receive pauses once
        // its queue is full, and TCP's flow control holds the peer back.
        poll_fn(|cx| {
            let mut st = shared.state.borrow_mut();
            if st.proto.wants_input() {
                Poll::Ready(())
            } else {
                register(&mut st.input, cx);
                Poll::Pending
            }
        })
        .await;
        // Input is handed over as it is taken from the receiver (TLS:
        // record by record); the tasks it woke are dispatched once after.
        // After the session's death, input is still read but dropped: a
        // socket closed with unread input answers with RST, and the peer
        // could lose the last bytes we sent (our GOAWAY among them).
        let (mut now, mut fed) = (None, false);
        let r = rx
            .next_with(|chunk| {
                let mut st = shared.state.borrow_mut();
                if st.proto.is_dead() {
                    return;
                }
                fed = true;
                let now = *now.get_or_insert_with(Instant::now);
                match chunk {
                    // Ring buffers lend large payloads to their streams
                    // instead of having them copied; TLS plaintext is copied.
                    crate::transport::Chunk::Ring(buf) => {
                        st.proto.handle_input_lent(now, &buf, &buf)
                    }
                    crate::transport::Chunk::Plain(p) => st.proto.handle_input(now, p),
                }
            })
            .await;
        let mut st = shared.state.borrow_mut();
        let ended = !matches!(r, Ok(true));
        if fed {
            st.recvs += 1;
        }
        let alive = !st.proto.is_dead();
        if alive {
            match r {
                Ok(true) => {}
                Ok(false) => st.proto.handle_eof(),
                Err(e) => st.proto.handle_transport_error(&e.to_string()),
            }
        }
        // Input that killed the session is dispatched too: its GOAWAY must
        // leave and its handles learn why.
        if alive || fed {
            st.dispatch(&shared);
        }
        if ended {
            st.reader_done = true;
            wake(st.closer.take());
            return;
        }
    }
}

/// Sends what the protocol queued, one send in flight; after the session
/// dies, flushes its GOAWAY (bounded by [`GOAWAY_GRACE`]) and ends the
/// transport gracefully.
async fn writer(shared: Rc<Shared>) {
    // Empty until the first send: the protocol's buffer and this one trade
    // places at every send, and grow to what the traffic needs. (A 64 KiB
    // buffer per session was a measurable part of a short session's cost.)
    let mut spare = VectoredSend::new();
    loop {
        let ready = poll_fn(|cx| {
            let mut st = shared.state.borrow_mut();
            if st.proto.pending_transmit() > 0 {
                Poll::Ready(true)
            } else if st.proto.is_dead() {
                Poll::Ready(false)
            } else if shared.transport.poll_wants_send(cx) {
                Poll::Ready(true)
            } else {
                register(&mut st.writer, cx);
                Poll::Pending
            }
        })
        .await;
        if !ready {
            break;
        }
        // No yield to the other tasks of this turn before taking the frames:
        // the executor polls a task woken during a turn only in the next one,
        // after every task that was ready before it, so the frames those
        // tasks queue in this turn are already in. A yield cost every send
        // one more loop turn (a system call, and latency).
        let dying = {
            let mut st = shared.state.borrow_mut();
            if st.proto.poll_transmit_vectored(&mut spare.t) {
                st.sends += 1;
                st.dispatch(&shared);
                Some(st.proto.is_dead())
            } else {
                None
            }
        };
        let Some(dying) = dying else {
            // No frames after all; the transport may have bytes of its own
            // (TLS).
            if let Err(e) = shared.transport.flush().await {
                let mut st = shared.state.borrow_mut();
                st.proto.handle_transport_error(&e.to_string());
                st.dispatch(&shared);
                break;
            }
            continue;
        };
        // Frames go out as one buffer, or vectored with the payloads that
        // `write_bytes` queued by reference (see `Transport::send_transmit`).
        let (result, mut buf) = if dying {
            // The last bytes (the GOAWAY) wait in the socket for the FIN
            // that follows at once, and leave with it in one segment.
            match engine::timeout(GOAWAY_GRACE, shared.transport.send_transmit(spare, true)).await {
                Ok(done) => done,
                Err(_) => break,
            }
        } else {
            shared.transport.send_transmit(spare, false).await
        };
        // The payloads are sent: let go of them now, not at the next send.
        buf.t.clear();
        spare = buf;
        if result.is_ok() {
            let mut st = shared.state.borrow_mut();
            st.sent += 1;
            st.flush_waiters.drain(..).for_each(Waker::wake);
        }
        if let Err(e) = result {
            let mut st = shared.state.borrow_mut();
            st.proto.handle_transport_error(&e.to_string());
            st.dispatch(&shared);
            break;
        }
    }
    // A graceful end: FIN after the last byte, then give the peer a moment to
    // close its side while the reader drains, so the socket never closes with
    // unread input.
    let _ = shared.transport.close_write().await;
    let reader_done = poll_fn(|cx| {
        let mut st = shared.state.borrow_mut();
        if st.reader_done {
            Poll::Ready(())
        } else {
            register(&mut st.closer, cx);
            Poll::Pending
        }
    });
    // Only a reader still waiting needs the shutdown to end its receive; after
    // the peer's FIN the call would only fail (ENOTCONN) at the cost of a
    // system call per session.
    if engine::timeout(CLOSE_LINGER, reader_done).await.is_err() {
        let _ = shared.transport.shutdown_both();
    }
}

/// Runs the protocol's timers (reset linger) on the engine's clock.
async fn clock(shared: Rc<Shared>) {
    loop {
        let next = poll_fn(|cx| {
            let mut st = shared.state.borrow_mut();
            if st.proto.is_dead() {
                return Poll::Ready(None);
            }
            match st.proto.poll_timeout() {
                Some(t) => Poll::Ready(Some(t)),
                None => {
                    register(&mut st.clock, cx);
                    Poll::Pending
                }
            }
        })
        .await;
        let Some(deadline) = next else { return };
        // The sleep also ends when the session dies (so that a long timer,
        // such as an idle timeout, does not keep the transport open) or
        // when an earlier deadline appears; handle_timeout ignores early calls.
        let mut sleep = std::pin::pin!(engine::sleep_until(deadline));
        let dead = poll_fn(|cx| {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            let mut st = shared.state.borrow_mut();
            if st.proto.is_dead() {
                return Poll::Ready(true);
            }
            if st.proto.poll_timeout().is_some_and(|t| t < deadline) {
                return Poll::Ready(false);
            }
            register(&mut st.clock, cx);
            Poll::Pending
        })
        .await;
        if dead {
            return;
        }
        let mut st = shared.state.borrow_mut();
        st.proto.handle_timeout(Instant::now());
        st.dispatch(&shared);
    }
}

impl Stream {
    fn new(shared: &Rc<Shared>, key: StreamKey, id: u32) -> Stream {
        shared.acquire();
        Stream {
            shared: shared.clone(),
            key,
            id,
            read_deadline: None,
            write_deadline: None,
        }
    }

    /// The stream id on the wire.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A handle to the session this stream belongs to (Go's `Session()`);
    /// like any [`Session`] handle, it keeps the session open while it lives.
    pub fn session(&self) -> Session {
        self.shared.acquire();
        Session {
            shared: self.shared.clone(),
        }
    }

    /// The session transport's local address (Go's `LocalAddr`); `None` if
    /// the socket could not tell.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr()
    }

    /// The session transport's remote address (Go's `RemoteAddr`); `None` if
    /// the socket could not tell.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.peer_addr
    }

    /// Reads into `buf`: the number of bytes, 0 at the end of the stream
    /// (the peer's FIN). Data that arrived before a reset is returned first.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_read_slice(cx, buf)).await
    }

    /// Reads exactly `buf.len()` bytes; [`Error::UnexpectedEof`] if the stream
    /// ends (the peer's FIN) first, which leaves the session untouched. The
    /// bytes read before the end are in `buf`, their count is not reported.
    pub async fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            match self.read(buf).await? {
                0 => {
                    return Err(Error::UnexpectedEof(
                        "the stream ended before read_exact was satisfied",
                    ))
                }
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    /// Reads until the end of the stream, appending to `out`; returns the count.
    pub async fn read_to_end(&mut self, out: &mut Vec<u8>) -> Result<usize, Error> {
        let start = out.len();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.read(&mut chunk).await? {
                0 => return Ok(out.len() - start),
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Writes some of `data`, waiting for window or buffer space if needed.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_write_slice(cx, data)).await
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes some of `data` like [`Stream::write`], but without copying it:
    /// a payload of at least [`ZERO_COPY_MIN`](crate::proto::ZERO_COPY_MIN)
    /// bytes is queued by reference (a [`Bytes::slice`]; see
    /// [`proto::Session::write_bytes`](crate::proto::Session::write_bytes)) and
    /// sent from where it is, by a vectored send beside the frame headers.
    /// Returns how many bytes were taken; send the rest with
    /// `data.slice(n..)`, or use [`Stream::write_all_bytes`].
    pub async fn write_bytes(&mut self, data: &Bytes) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_write_bytes(cx, data)).await
    }

    /// Writes all of `data` without copying it (see [`Stream::write_bytes`]).
    pub async fn write_all_bytes(&mut self, mut data: Bytes) -> Result<(), Error> {
        while !data.is_empty() {
            let n = self.write_bytes(&data).await?;
            bytes::Buf::advance(&mut data, n);
        }
        Ok(())
    }

    /// Half-closes: no more writes; the peer reads EOF after the data. Reading goes on.
    pub fn close_write(&mut self) -> Result<(), Error> {
        self.with_state(|st, key| st.proto.close_write(key))
    }

    /// Closes both directions like Go's `Close`: FIN if not yet sent, and the
    /// peer's further data is answered with RST StreamClosed.
    pub fn close(&mut self) -> Result<(), Error> {
        self.with_state(|st, key| st.proto.close(key))
    }

    /// Resets the stream with `code`: an RST to the peer, errors on both sides.
    pub fn reset(&mut self, code: ErrorCode) -> Result<(), Error> {
        self.with_state(|st, key| st.proto.reset(Instant::now(), key, code))
    }

    /// Reads waiting longer than `deadline` fail with [`Error::Timeout`]; `None` clears it.
    pub fn set_read_deadline(&mut self, deadline: Option<Instant>) {
        self.read_deadline = deadline.map(|d| Box::pin(engine::sleep_until(d)));
    }

    /// Writes waiting (for window or buffer space) beyond `deadline` fail with
    /// [`Error::Timeout`]; `None` clears it. Bytes already accepted are sent.
    pub fn set_write_deadline(&mut self, deadline: Option<Instant>) {
        self.write_deadline = deadline.map(|d| Box::pin(engine::sleep_until(d)));
    }

    /// Sets the read and the write deadline at once (Go's `SetDeadline`);
    /// `None` clears both. See [`Stream::set_read_deadline`] and
    /// [`Stream::set_write_deadline`].
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.set_read_deadline(deadline);
        self.set_write_deadline(deadline);
    }

    /// The session's counters.
    pub fn session_stats(&self) -> SessionStats {
        self.shared.stats()
    }

    fn with_state<T>(
        &mut self,
        f: impl FnOnce(&mut State, StreamKey) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut st = self.shared.state.borrow_mut();
        let r = f(&mut st, self.key);
        st.dispatch(&self.shared);
        r
    }

    /// Lends the received bytes to `consume` without copying them out (the
    /// zero-copy form of [`Stream::read`], like `fill_buf` + `consume`):
    /// `consume` returns how many it used, the rest stay for the next read.
    /// It is shown an empty slice once, at the end of the stream. Returns the
    /// count `consume` returned.
    ///
    /// It lends one contiguous piece at a time, so loop until it returns 0.
    /// Large payloads are lent straight from the ring buffer the kernel
    /// received them into (no copy at all); small ones, and those past a
    /// stream's share of the ring, were copied into the stream on arrival.
    ///
    /// ```no_run
    /// # async fn sink(stream: &mut muxado::Stream) -> Result<u64, muxado::Error> {
    /// let mut total = 0u64;
    /// while stream.read_with(|bytes| { total += bytes.len() as u64; bytes.len() }).await? > 0 {}
    /// # Ok(total) }
    /// ```
    pub async fn read_with(
        &mut self,
        consume: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, Error> {
        let mut consume = Some(consume);
        poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            let f = consume.take().expect("polled after completion");
            let mut f = Some(f);
            let r = st
                .proto
                .read_with(self.key, |bytes| (f.take().expect("called once"))(bytes));
            let out = match r {
                Ok(Some(n)) => Poll::Ready(Ok(n)),
                Ok(None) => {
                    consume = f;
                    register(&mut st.slot(self.key).read, cx);
                    expired(&mut self.read_deadline, cx, "read")
                }
                Err(e) => Poll::Ready(Err(e)),
            };
            st.dispatch(&self.shared);
            out
        })
        .await
    }

    /// Poll form of [`Stream::read`].
    pub fn poll_read_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, Error>> {
        let mut st = self.shared.state.borrow_mut();
        let r = st.proto.read(self.key, buf);
        let out = match r {
            Ok(Some(n)) => Poll::Ready(Ok(n)),
            Ok(None) => {
                register(&mut st.slot(self.key).read, cx);
                expired(&mut self.read_deadline, cx, "read")
            }
            Err(e) => Poll::Ready(Err(e)),
        };
        st.dispatch(&self.shared);
        out
    }

    /// Poll form of [`Stream::write`].
    pub fn poll_write_slice(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, Error>> {
        let mut st = self.shared.state.borrow_mut();
        let out = match st.proto.write(self.key, data) {
            Ok(0) if !data.is_empty() => {
                register(&mut st.slot(self.key).write, cx);
                expired(&mut self.write_deadline, cx, "write")
            }
            r => Poll::Ready(r),
        };
        st.dispatch(&self.shared);
        out
    }

    /// Poll form of [`Stream::write_bytes`].
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &Bytes,
    ) -> Poll<Result<usize, Error>> {
        let mut st = self.shared.state.borrow_mut();
        let out = match st.proto.write_bytes(self.key, data) {
            Ok(0) if !data.is_empty() => {
                register(&mut st.slot(self.key).write, cx);
                expired(&mut self.write_deadline, cx, "write")
            }
            r => Poll::Ready(r),
        };
        st.dispatch(&self.shared);
        out
    }
}

/// Pending, unless the deadline has passed (then the timeout error).
fn expired<T>(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    what: &'static str,
) -> Poll<Result<T, Error>> {
    match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
        Some(Poll::Ready(())) => Poll::Ready(Err(Error::Timeout(what))),
        _ => Poll::Pending,
    }
}

use std::future::Future as _;

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.try_borrow_mut() {
            let w = st.slot(self.key);
            w.read = None;
            w.write = None;
            st.proto.release(self.key);
            st.dispatch(&self.shared);
        }
        release_user(&self.shared);
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.state.borrow();
        f.debug_struct("Session")
            .field("role", &st.proto.role())
            .field("peer", &self.shared.peer_addr)
            .field("dead", &st.proto.is_dead())
            .finish()
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let buffered = {
            let st = this.shared.state.borrow();
            st.proto.readable_len(this.key).unwrap_or(0)
        };
        // Only the bytes that will be written need initialising; at least one,
        // since an empty slice reads as end-of-stream.
        let dst = buf.initialize_unfilled_to(buffered.clamp(1, buf.remaining()));
        match this.poll_read_slice(cx, dst) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_slice(cx, data)
            .map_err(io::Error::from)
    }

    /// Written bytes are already queued in the session, which sends them on
    /// its own; there is nothing to wait for.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-closes the stream (FIN).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().close_write().map_err(io::Error::from))
    }
}
