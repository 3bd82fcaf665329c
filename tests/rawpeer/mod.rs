//! A hostile peer that speaks raw muxado frames over blocking loopback
//! sockets, and a `muxado serve` child process it can be aimed at.
//!
//! The peer writes whatever bytes a test wants (bad frames, half headers,
//! floods) with `muxado::frame`'s encoder, and reads the server's answers back
//! as whole frames, so a test can check the exact RST / GOAWAY code the
//! reference (`/work/shared/muxado-protocol.md`) prescribes. The server's
//! descriptors and memory are read from `/proc/PID`.
//!
//! Everything is bounded: reads have timeouts, the child is killed on drop.

#![allow(dead_code)] // not every test binary uses every helper

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muxado::frame::{self, Decode, Frame, FLAG_FIN, FLAG_SYN};
use muxado::ErrorCode;

/// The tool under test (built by cargo for the integration tests).
pub const BIN: &str = env!("CARGO_BIN_EXE_muxado");

/// Stream ids a client may open: odd, from 3 (as Go and ngrok do).
pub fn client_id(n: u32) -> u32 {
    3 + 2 * n
}

// ---- the server process --------------------------------------------------------

/// A `muxado serve` child, killed (and reaped) when dropped, so that no test
/// leaves a server behind, even when it panics.
pub struct Serve {
    child: Child,
    pub addr: SocketAddr,
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

impl Serve {
    /// Starts `muxado serve --listen ADDR --mode MODE EXTRA...` and waits
    /// until it listens. Panics if it exits or does not listen within 10 s.
    pub fn start(mode: &str, extra: &[&str]) -> Serve {
        Serve::start_limited(mode, extra, None)
    }

    /// Like [`Serve::start`], with the server's descriptor limit
    /// (RLIMIT_NOFILE) set to `nofile` if given.
    pub fn start_limited(mode: &str, extra: &[&str], nofile: Option<u64>) -> Serve {
        let addr = free_addr();
        let mut cmd = Command::new(BIN);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec and
            // only calls setrlimit, which is async-signal-safe; it touches no
            // memory shared with the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["serve", "--listen", &addr.to_string(), "--mode", mode])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start muxado serve");
        let mut s = Serve { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("muxado serve {extra:?} exited early: {status}");
            }
            // A probe connection is closed at once; the server sees EOF.
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "muxado serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the probe's session end before a test takes its baseline.
        std::thread::sleep(Duration::from_millis(100));
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the server has exited (crashed): every hostile case must
    /// leave it running.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("muxado serve died: {status}");
        }
    }

    /// Open descriptors of the server.
    pub fn fds(&self) -> usize {
        fd_count(self.pid())
    }

    /// Resident set size now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident set size so far, in KiB.
    pub fn hwm_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// Waits (up to `limit`) for the server's descriptor count to come back to
    /// `baseline`; returns the last count seen.
    pub fn wait_fds(&self, baseline: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.fds();
            if n <= baseline || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to `limit`) for the descriptor count to reach at least `n`;
    /// returns the last count seen.
    pub fn wait_fds_at_least(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.fds();
            if c >= n || Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that the descriptor count comes back to `baseline` within 5 s.
    pub fn assert_fds_back(&self, baseline: usize, what: &str) {
        let n = self.wait_fds(baseline, Duration::from_secs(5));
        assert!(
            n <= baseline,
            "{what}: server has {n} descriptors open, baseline {baseline}"
        );
    }

    /// Waits (up to `limit`) for RSS to drop under `kib`; returns the last value.
    pub fn wait_rss_under(&self, kib: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.rss_kib();
            if r < kib || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// A `kB` field of /proc/PID/status.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Raises this process's descriptor limit to its hard limit (tests open
/// thousands of sockets); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to a live rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Makes `close` of this socket send a TCP RST instead of a FIN (SO_LINGER 0):
/// what the server sees when a client is killed or its host drops it.
pub fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a live `linger` of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

// ---- frames --------------------------------------------------------------------

/// A frame read from the server, owning its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    Rst {
        id: u32,
        code: u32,
    },
    Data {
        id: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    WndInc {
        id: u32,
        inc: u32,
    },
    GoAway {
        last: u32,
        code: u32,
        debug: String,
    },
    Unknown {
        ty: u8,
        id: u32,
    },
}

pub fn data(id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    frame::encode_data(&mut v, id, payload, flags).expect("encode DATA");
    v
}

pub fn syn(id: u32, payload: &[u8]) -> Vec<u8> {
    data(id, FLAG_SYN, payload)
}

pub fn fin(id: u32) -> Vec<u8> {
    data(id, FLAG_FIN, &[])
}

pub fn rst(id: u32, code: ErrorCode) -> Vec<u8> {
    let mut v = Vec::new();
    frame::encode_rst(&mut v, id, code).expect("encode RST");
    v
}

pub fn wndinc(id: u32, inc: u32) -> Vec<u8> {
    let mut v = Vec::new();
    frame::encode_wndinc(&mut v, id, inc).expect("encode WNDINC");
    v
}

/// A raw 8-byte header, for frames the encoder refuses to build on purpose.
pub fn raw_header(len: u32, ty: u8, flags: u8, id: u32) -> [u8; 8] {
    let l = len.to_be_bytes();
    let i = id.to_be_bytes();
    [
        l[1],
        l[2],
        l[3],
        (ty << 4) | (flags & 0xF),
        i[0],
        i[1],
        i[2],
        i[3],
    ]
}

/// Why [`Raw::next_frame`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (FIN).
    Eof,
    /// The connection was reset.
    Reset,
    /// Nothing arrived in time.
    Timeout,
    /// The bytes were not a valid frame.
    Bad(String),
}

/// One raw connection to the server.
pub struct Raw {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_nodelay(true).unwrap();
        Raw {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Wraps a socket (e.g. a clone of another `Raw`'s, for a writer thread).
    pub fn from_tcp(tcp: TcpStream) -> Raw {
        Raw {
            tcp,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.tcp
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        self.tcp.write_all(bytes).expect("write to the server");
    }

    /// Like [`Raw::send`], but reports a failure instead of panicking (the
    /// server may already have closed the connection).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tcp
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        self.tcp.write_all(bytes)
    }

    /// The next whole frame, or why there is none within `limit`.
    pub fn next_frame(&mut self, limit: Duration) -> Result<Got, End> {
        let deadline = Instant::now() + limit;
        loop {
            match Frame::decode(&self.buf) {
                Ok(Decode::Frame(f, n)) => {
                    let got = match f {
                        Frame::Rst { stream_id, code } => Got::Rst {
                            id: stream_id,
                            code: code.to_u32(),
                        },
                        Frame::Data {
                            stream_id,
                            flags,
                            payload,
                        } => Got::Data {
                            id: stream_id,
                            flags,
                            payload: payload.to_vec(),
                        },
                        Frame::WndInc {
                            stream_id,
                            increment,
                        } => Got::WndInc {
                            id: stream_id,
                            inc: increment,
                        },
                        Frame::GoAway {
                            last_stream_id,
                            code,
                            debug,
                        } => Got::GoAway {
                            last: last_stream_id,
                            code: code.to_u32(),
                            debug: String::from_utf8_lossy(debug).into_owned(),
                        },
                        Frame::Unknown { ty, stream_id, .. } => Got::Unknown { ty, id: stream_id },
                    };
                    self.buf.drain(..n);
                    return Ok(got);
                }
                Ok(Decode::Incomplete(_)) => {}
                Err(e) => return Err(End::Bad(format!("{e:?}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Timeout);
            }
            self.tcp.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.tcp.read(&mut chunk) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(End::Timeout)
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(End::Reset),
                Err(e) => return Err(End::Bad(e.to_string())),
            }
        }
    }

    /// Reads frames until a GOAWAY; returns (code, debug). Panics on timeout
    /// or if the connection ends without one.
    pub fn expect_goaway(&mut self, limit: Duration) -> (u32, String) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(Got::GoAway { code, debug, .. }) => return (code, debug),
                Ok(_) => {}
                Err(e) => panic!("no GOAWAY from the server: {e:?}"),
            }
        }
    }

    /// Reads frames until an RST on `id`; returns its code.
    pub fn expect_rst(&mut self, id: u32, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(Got::Rst { id: i, code }) if i == id => return code,
                Ok(Got::GoAway { code, debug, .. }) => {
                    panic!("GOAWAY({code}, {debug:?}) instead of RST on stream {id}")
                }
                Ok(_) => {}
                Err(e) => panic!("no RST on stream {id}: {e:?}"),
            }
        }
    }

    /// After a GOAWAY the server must close the connection: EOF (or a reset)
    /// within `limit`, with no frame in between.
    pub fn expect_closed(&mut self, limit: Duration) {
        match self.next_frame(limit) {
            Err(End::Eof) | Err(End::Reset) => {}
            other => panic!("expected the server to close the connection, got {other:?}"),
        }
    }

    /// Echoes `msg` on stream `id` (opened here): SYN+data, FIN, then reads
    /// the echo and the server's FIN, answering nothing (the message fits the
    /// window). Returns the echoed bytes.
    pub fn echo(&mut self, id: u32, msg: &[u8], limit: Duration) -> Vec<u8> {
        self.send(&syn(id, msg));
        self.send(&fin(id));
        let deadline = Instant::now() + limit;
        let mut back = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(Got::Data {
                    id: i,
                    flags,
                    payload,
                }) if i == id => {
                    back.extend_from_slice(&payload);
                    if flags & FLAG_FIN != 0 {
                        return back;
                    }
                }
                Ok(Got::Rst { id: i, code }) if i == id => {
                    panic!("echo stream {id} reset with code {code}")
                }
                Ok(Got::GoAway { code, debug, .. }) => {
                    panic!("GOAWAY({code}, {debug:?}) during echo")
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "echo on stream {id} did not finish: {e:?} after {} bytes",
                    back.len()
                ),
            }
        }
    }
}

/// A well-behaved client: a fresh connection, one echoed stream of 4 KiB, a
/// clean close. Panics unless the echo is exact within 10 s.
pub fn well_behaved_echo(addr: SocketAddr, tag: u8) {
    let mut c = Raw::connect(addr);
    let msg: Vec<u8> = (0..4096u32).map(|i| (i as u8) ^ tag).collect();
    let back = c.echo(3, &msg, Duration::from_secs(10));
    assert_eq!(back, msg, "echo of the well-behaved client");
}

/// Tally of what the server sent on one connection.
#[derive(Debug, Default)]
pub struct Tally {
    /// RSTs by code.
    pub rsts: HashMap<u32, u64>,
    /// DATA payload bytes by stream.
    pub data: HashMap<u32, u64>,
    /// Streams the server half-closed.
    pub fins: u64,
    pub wndincs: u64,
    pub goaway: Option<(u32, String)>,
    /// How the reading ended.
    pub end: Option<End>,
}

impl Tally {
    pub fn rst_count(&self, code: ErrorCode) -> u64 {
        self.rsts.get(&code.to_u32()).copied().unwrap_or(0)
    }
    pub fn add(&mut self, g: Got) {
        match g {
            Got::Rst { code, .. } => *self.rsts.entry(code).or_default() += 1,
            Got::Data { id, flags, payload } => {
                *self.data.entry(id).or_default() += payload.len() as u64;
                if flags & FLAG_FIN != 0 {
                    self.fins += 1;
                }
            }
            Got::WndInc { .. } => self.wndincs += 1,
            Got::GoAway { code, debug, .. } => self.goaway = Some((code, debug)),
            Got::Unknown { .. } => {}
        }
    }
}

/// Reads frames into a [`Tally`] until `done(&tally)` holds, the connection
/// ends, or nothing arrives for `idle`.
pub fn tally_until(c: &mut Raw, idle: Duration, done: impl Fn(&Tally) -> bool) -> Tally {
    let mut t = Tally::default();
    while !done(&t) {
        match c.next_frame(idle) {
            Ok(g) => t.add(g),
            Err(e) => {
                t.end = Some(e);
                break;
            }
        }
    }
    t
}
