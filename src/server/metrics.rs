//! Server counters, shared by the workers, the scheduler, the reference and the election.
//!
//! Counters live in atomics (workers must not contend on a lock per message) and are written to
//! Redis as a hash by the election driver at every heartbeat, so `tsc` and tests can read them
//! without scraping logs; `GET /metrics` serves them as Prometheus text.

use crate::protocol::DecodeError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters since the server started.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reports_stored: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_too_large: AtomicU64,
    pub rejected_bad_version: AtomicU64,
    pub store_errors: AtomicU64,
    pub updates_published: AtomicU64,
    pub master_changes: AtomicU64,
    pub probes_answered: AtomicU64,
    pub berkeley_rounds: AtomicU64,
    /// Elections this replica started.
    pub elections: AtomicU64,
    /// Terms this replica led.
    pub terms_led: AtomicU64,
    /// Control messages rejected (also counted in the `rejected_*` totals).
    pub control_rejected: AtomicU64,
    /// Reports stored per second over the last heartbeat interval (`f64` bits).
    rate_bits: AtomicU64,
}

impl Metrics {
    /// Counts one rejected message under its reason.
    pub fn rejected(&self, e: &DecodeError) {
        let c = match e {
            DecodeError::TooLarge(_) => &self.rejected_too_large,
            DecodeError::Version(_) => &self.rejected_bad_version,
            DecodeError::Malformed(_) => &self.rejected_malformed,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Records the storage rate measured over the last interval.
    pub fn set_reports_per_second(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Relaxed);
    }

    /// The storage rate last recorded.
    pub fn reports_per_second(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Relaxed))
    }

    /// Reports stored so far.
    pub fn stored(&self) -> u64 {
        self.reports_stored.load(Relaxed)
    }

    /// All rejected messages, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_malformed.load(Relaxed)
            + self.rejected_too_large.load(Relaxed)
            + self.rejected_bad_version.load(Relaxed)
    }

    /// `(name, value)` pairs, as stored in Redis and shown by `tsc status`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("reports_stored", self.reports_stored.load(Relaxed)),
            ("rejected_total", self.rejected_total()),
            ("rejected_malformed", self.rejected_malformed.load(Relaxed)),
            ("rejected_too_large", self.rejected_too_large.load(Relaxed)),
            (
                "rejected_bad_version",
                self.rejected_bad_version.load(Relaxed),
            ),
            ("store_errors", self.store_errors.load(Relaxed)),
            ("updates_published", self.updates_published.load(Relaxed)),
            ("master_changes", self.master_changes.load(Relaxed)),
            ("probes_answered", self.probes_answered.load(Relaxed)),
            ("berkeley_rounds", self.berkeley_rounds.load(Relaxed)),
            ("elections", self.elections.load(Relaxed)),
            ("terms_led", self.terms_led.load(Relaxed)),
            ("control_rejected", self.control_rejected.load(Relaxed)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_counted_by_reason() {
        let m = Metrics::default();
        m.rejected(&DecodeError::TooLarge(9000));
        m.rejected(&DecodeError::Malformed("x".into()));
        m.rejected(&DecodeError::Malformed("y".into()));
        assert_eq!(m.rejected_total(), 3);
        let snap: std::collections::HashMap<_, _> = m.snapshot().into_iter().collect();
        assert_eq!(snap["rejected_malformed"], 2);
        assert_eq!(snap["rejected_too_large"], 1);
        assert_eq!(snap["rejected_bad_version"], 0);
    }
}
