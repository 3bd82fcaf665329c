//! The idle limit of spliced connections (the gateway's `--idle-timeout`):
//! one sweeper task per core instead of a timer per connection.
//!
//! A timer task per connection would cost a spawn, a timer insert and an
//! abort per connection, on the `Connection: close` path. Here each core
//! keeps a table (a slab) of its limited connections; relaying a chunk only
//! writes the core's current tick into the connection's slot (no clock read,
//! no allocation), and the sweeper wakes every 1/8 of the limit, advances the
//! tick and closes the connections whose last tick is too old. A connection
//! is closed between 1 and 1.125 times the limit after its last byte.

use std::cell::RefCell;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Duration;

use muxado::engine::{self, net::TcpStream};
use muxado::{ErrorCode, Stream};
use slab::Slab;

/// Sweeps per limit: the precision of the close (1/8 of the limit late at most).
const TICKS_PER_LIMIT: u32 = 8;
/// Shortest sweep period, so that a tiny limit does not spin the core.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// One limited connection.
struct Entry {
    /// The core's tick when a byte last moved.
    last: u64,
    tcp: TcpStream,
    stream: Rc<RefCell<Stream>>,
    fired: bool,
}

/// One core's limited connections.
struct Table {
    entries: Slab<Entry>,
    tick: u64,
    /// The sweeper's period and the ticks a connection may stay idle, fixed
    /// by the first registration (the gateway has one limit).
    period: Option<(Duration, u64)>,
    /// Connections closed by one sweep, reused (no allocation per sweep).
    doomed: Vec<(TcpStream, Rc<RefCell<Stream>>)>,
}

thread_local! {
    static TABLE: RefCell<Table> = const {
        RefCell::new(Table {
            entries: Slab::new(),
            tick: 0,
            period: None,
            doomed: Vec::new(),
        })
    };
}

/// A connection under the idle limit; dropping it takes it off the table.
pub struct Idle {
    key: usize,
}

impl Idle {
    /// Puts a connection under the core's idle limit; the first call on a
    /// core starts its sweeper with `limit` (later calls share it).
    pub fn register(limit: Duration, tcp: TcpStream, stream: Rc<RefCell<Stream>>) -> Idle {
        let (key, start) = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let last = t.tick;
            let key = t.entries.insert(Entry {
                last,
                tcp,
                stream,
                fired: false,
            });
            let start = t.period.is_none();
            if start {
                let period = (limit / TICKS_PER_LIMIT).max(MIN_PERIOD);
                let ticks = limit.as_nanos().div_ceil(period.as_nanos()) as u64;
                t.period = Some((period, ticks));
            }
            (key, start)
        });
        if start {
            engine::spawn(sweep());
        }
        Idle { key }
    }

    /// What the relaying tasks mark activity with.
    pub fn toucher(&self) -> Touch {
        Touch { key: self.key }
    }

    /// True if the limit closed the connection.
    pub fn fired(&self) -> bool {
        TABLE.with(|t| t.borrow().entries.get(self.key).is_some_and(|e| e.fired))
    }
}

/// Marks one connection active. Used only while its [`Idle`] lives (the
/// splice awaits both directions before dropping it), so its slot is never
/// another connection's.
#[derive(Clone, Copy)]
pub struct Touch {
    key: usize,
}

impl Touch {
    /// A byte moved: the connection is not idle.
    pub fn touch(self) {
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let tick = t.tick;
            if let Some(e) = t.entries.get_mut(self.key) {
                e.last = tick;
            }
        })
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        // `try_with`: the table may be gone while the thread exits.
        let _ = TABLE.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.entries.try_remove(self.key);
            }
        });
    }
}

/// The core's sweeper: every period, advances the tick and closes the
/// connections whose last byte moved more than `ticks` ticks ago: the tick
/// of the last byte began at most one period before it, so that is at
/// least `ticks` periods (the limit) after it, and less than one more.
async fn sweep() {
    let Some((period, ticks)) = TABLE.with(|t| t.borrow().period) else {
        return;
    };
    loop {
        engine::sleep(period).await;
        let mut doomed = TABLE.with(|t| {
            let t = &mut *t.borrow_mut();
            t.tick += 1;
            let tick = t.tick;
            let mut doomed = std::mem::take(&mut t.doomed);
            for (_, e) in t.entries.iter_mut() {
                if !e.fired && tick - e.last > ticks {
                    e.fired = true;
                    doomed.push((e.tcp.clone(), e.stream.clone()));
                }
            }
            doomed
        });
        // Closed outside the table's borrow: a reset wakes tasks that touch it.
        for (tcp, stream) in doomed.drain(..) {
            // The stream first: the far end learns it was cut, not finished.
            let _ = stream.borrow_mut().reset(ErrorCode::StreamCancelled);
            let _ = tcp.shutdown(Shutdown::Both);
        }
        TABLE.with(|t| t.borrow_mut().doomed = doomed);
    }
}
