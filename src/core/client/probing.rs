//! Probing the reference: when to send the next probe, which replies count, and the estimate
//! they make (see [`crate::core::clock::estimator`]).

use super::ClientCore;
use crate::core::clock::{Estimate, Sample};
use crate::core::protocol::{Probe, ProbeReply, PROTOCOL_VERSION};
use rand::Rng;
use std::time::Duration;

/// Probe period while the estimator has few samples: converge in about a second.
pub const PROBE_FAST: Duration = Duration::from_millis(100);
/// Probe period afterwards: 4 a second fill the estimator's 120 s window.
pub const PROBE_SLOW: Duration = Duration::from_millis(250);
/// Samples after which probing slows down.
pub const FAST_PROBES: usize = 40;
/// Probes awaiting a reply; older ones are forgotten (their replies are too late to be useful).
pub const MAX_PENDING_PROBES: usize = 32;
/// Probe samples needed before the estimate is used (half a second of fast probes): the very
/// first probes of a connection are the slowest and most lopsided.
pub const READY_SAMPLES: usize = 5;
/// Probe samples needed against a new reference by a client that is already synced: two
/// seconds of fast probes, while it holds over.
pub const RESYNC_SAMPLES: usize = 20;

impl ClientCore {
    /// The current estimate of (raw clock − reference), once enough probes were answered:
    /// [`READY_SAMPLES`] to get a clock close at all, [`RESYNC_SAMPLES`] once it is synced
    /// (after a change of reference; holding over is cheaper than a rough estimate then).
    pub fn estimate(&self) -> Option<Estimate> {
        let needed = if self.synced {
            RESYNC_SAMPLES
        } else {
            READY_SAMPLES
        };
        if self.estimator.len() < needed {
            return None;
        }
        self.estimator.estimate()
    }

    /// This clock minus the reference, and its rate difference, at host time `host_us`.
    pub(super) fn ref_offset(&self, host_us: i64) -> Option<(f64, Option<f64>)> {
        let est = self.estimate()?;
        let raw = self.clock.raw_at(host_us);
        let offset = est.offset_at(raw) + self.clock.correction_at(host_us);
        Some((offset, est.freq_ppm.map(|f| f + self.clock.freq_ppm())))
    }

    /// A bound on the error of this clock's offset to the reference at `host_us` (µs).
    pub(super) fn ref_error(&self, host_us: i64) -> Option<f64> {
        let raw = self.clock.raw_at(host_us);
        Some(self.estimate()?.error_at(raw))
    }

    /// The next offset probe, sent at host time `host_us`.
    pub fn probe(&mut self, host_us: i64) -> Probe {
        self.probe_seq += 1;
        self.stats.probes_sent += 1;
        if self.pending.len() == MAX_PENDING_PROBES {
            self.pending.pop_front();
        }
        self.pending
            .push_back((self.probe_seq, self.clock.raw_at(host_us)));
        Probe {
            v: PROTOCOL_VERSION,
            id: self.id,
            seq: self.probe_seq,
            t1_us: self.clock.now_at(host_us),
            stamp: self.stamp(host_us),
        }
    }

    /// How long to wait before the next probe: the period, randomized by ±50%. With a fixed
    /// period every client's probes keep one phase against everyone else's traffic, and a
    /// client whose probes always queue behind a burst gets a constant bias; at random phases
    /// the same queueing is noise that the window averages away.
    pub fn probe_interval(&mut self) -> Duration {
        let base = if self.estimator.len() < FAST_PROBES {
            PROBE_FAST
        } else {
            PROBE_SLOW
        };
        base.mul_f64(self.rng.gen_range(0.5..1.5))
    }

    /// Adds the sample a probe reply makes, received at host time `host_us`.
    pub fn on_probe_reply(&mut self, r: &ProbeReply, host_us: i64) -> Option<Sample> {
        if r.client_id != self.id {
            return None;
        }
        let pos = self.pending.iter().position(|(seq, _)| *seq == r.seq)?;
        let (_, t1_raw) = self.pending.remove(pos)?;
        if self.reference != Some(r.server_id) {
            // Another server's clock is another reference: samples do not mix.
            self.estimator.clear();
            self.reference = Some(r.server_id);
        }
        let s = Sample::from_timestamps(t1_raw, r.t2_us, r.t3_us, self.clock.raw_at(host_us));
        self.estimator.add(s);
        self.stats.probe_replies += 1;
        Some(s)
    }
}
