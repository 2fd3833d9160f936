//! Reconnection delays.
//!
//! Retries wait longer each time, up to a cap small enough that a restarted
//! broker or cache is found again within seconds. The sequence is a pure value so tests and log
//! lines agree on it.

use std::time::Duration;

/// First delay after a failed connection attempt.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Growing delays: 1 s, 2 s, 3 s, 4 s, 5 s, 5 s, …
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: RETRY_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay to wait now; the following call returns a longer one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next + RETRY_INITIAL).min(RETRY_MAX);
        d
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.next = RETRY_INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_then_resets() {
        let mut b = Backoff::default();
        let secs: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, [1, 2, 3, 4, 5, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), RETRY_INITIAL);
    }
}
