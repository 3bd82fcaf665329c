//! Reconnect delays: exponential with full jitter (a uniformly random wait
//! up to the current ceiling), so agents cut off together by a gateway
//! restart do not all dial back in the same instant.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// First ceiling.
const BASE: Duration = Duration::from_millis(100);

pub struct Backoff {
    ceiling: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        Backoff {
            ceiling: BASE.min(max),
            max,
            rng: h.finish() | 1,
        }
    }

    /// After a session that worked: start again from the base.
    pub fn reset(&mut self) {
        self.ceiling = BASE.min(self.max);
    }

    /// The next wait, and doubles the ceiling (up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        // xorshift64: jitter needs to differ between agents, not to be secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(frac).max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[0] <= BASE);
        assert_eq!(b.ceiling, Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling, BASE);
        assert!(b.next_delay() <= BASE);
    }
}
