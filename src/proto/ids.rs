//! Stream id allocation and parity.
//!
//! A client opens odd ids starting at 3, a server even ids starting at 2 (Go
//! never uses id 1). Ids are never reused; once the 31-bit space is used up,
//! allocation fails for good (sticky, unlike Go's counter which could wrap).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::frame::MAX_STREAM_ID;

/// Which side of the session this is; decides id parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens odd stream ids (3, 5, 7, …).
    Client,
    /// Opens even stream ids (2, 4, 6, …).
    Server,
}

impl Role {
    /// True when `id` has the parity of streams the peer opens.
    pub fn is_remote_id(self, id: u32) -> bool {
        match self {
            Role::Client => id % 2 == 0,
            Role::Server => id % 2 == 1,
        }
    }

    /// GOAWAY's last-stream-id before any stream was accepted (Go: 0 on a
    /// client, 1 on a server).
    pub(crate) fn initial_remote_last_id(self) -> u32 {
        match self {
            Role::Client => 0,
            Role::Server => 1,
        }
    }
}

/// Hands out this side's stream ids.
#[derive(Clone, Debug)]
pub(crate) struct IdAllocator {
    next: u64,
}

impl IdAllocator {
    pub(crate) fn new(role: Role) -> Self {
        IdAllocator {
            next: match role {
                Role::Client => 3,
                Role::Server => 2,
            },
        }
    }

    /// The next id, or `None` forever once the id space is used up.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        if self.next > u64::from(MAX_STREAM_ID) {
            return None;
        }
        let id = self.next as u32;
        self.next += 2;
        Some(id)
    }

    #[cfg(test)]
    pub(crate) fn set_next(&mut self, next: u32) {
        self.next = u64::from(next);
    }
}

/// A hasher for stream ids: they are small, dense and chosen by the peer only
/// in their low bits, so a multiplicative hash spreads them well and costs one
/// instruction instead of SipHash's dozens.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Map from stream id to slab slot.
pub(crate) type IdMap = HashMap<u32, usize, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_starts_at_3_and_server_at_2() {
        let mut c = IdAllocator::new(Role::Client);
        let mut s = IdAllocator::new(Role::Server);
        assert_eq!([c.allocate(), c.allocate()], [Some(3), Some(5)]);
        assert_eq!([s.allocate(), s.allocate()], [Some(2), Some(4)]);
    }

    #[test]
    fn exhaustion_is_sticky_and_last_ids_are_usable() {
        let mut c = IdAllocator::new(Role::Client);
        c.set_next(MAX_STREAM_ID - 2);
        assert_eq!(c.allocate(), Some(0x7FFF_FFFD));
        assert_eq!(c.allocate(), Some(0x7FFF_FFFF));
        for _ in 0..3 {
            assert_eq!(c.allocate(), None);
        }
        let mut s = IdAllocator::new(Role::Server);
        s.set_next(MAX_STREAM_ID - 1);
        assert_eq!(s.allocate(), Some(0x7FFF_FFFE));
        assert_eq!(s.allocate(), None);
    }

    #[test]
    fn parity() {
        assert!(Role::Server.is_remote_id(3) && Role::Server.is_remote_id(1));
        assert!(!Role::Server.is_remote_id(300));
        assert!(Role::Client.is_remote_id(300) && !Role::Client.is_remote_id(301));
    }
}
