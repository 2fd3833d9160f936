//! The client's own clock: host time + offset, with simulated drift and a bounded-rate slew.
//!
//! The offset is a piecewise-linear function of host time, re-anchored at every correction:
//!
//! ```text
//! offset(h) = anchor_offset + (h - anchor_host) * drift + slewed(h - anchor_host)
//! ```
//!
//! where `slewed` moves toward `slew_remaining` at `slew_rate` and then stops. Keeping the state
//! as an anchor (instead of updating it on a timer) makes reads exact and cheap (one host clock
//! read) and makes the clock a plain value that tests drive with host times they choose.

/// A virtual clock. All times are µs; `host_us` arguments are readings of the host clock.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualClock {
    anchor_host_us: i64,
    anchor_offset_us: f64,
    /// Simulated frequency error, as a fraction (50 ppm = 50e-6).
    drift: f64,
    /// Correction still to apply by slewing (µs, signed).
    slew_remaining_us: f64,
    /// Slew speed as a fraction of elapsed time (500 ppm = 500e-6).
    slew_rate: f64,
}

impl VirtualClock {
    /// A clock `offset_us` ahead of the host at `host_us`, drifting by `drift_ppm`.
    pub fn new(host_us: i64, offset_us: i64, drift_ppm: f64) -> Self {
        VirtualClock {
            anchor_host_us: host_us,
            anchor_offset_us: offset_us as f64,
            drift: drift_ppm * 1e-6,
            slew_remaining_us: 0.0,
            slew_rate: 0.0,
        }
    }

    fn elapsed(&self, host_us: i64) -> f64 {
        (host_us - self.anchor_host_us) as f64
    }

    fn slewed(&self, elapsed: f64) -> f64 {
        let max = elapsed.max(0.0) * self.slew_rate;
        self.slew_remaining_us.clamp(-max, max)
    }

    /// Offset from the host clock at `host_us` (µs, fractional).
    pub fn offset_at(&self, host_us: i64) -> f64 {
        let e = self.elapsed(host_us);
        self.anchor_offset_us + e * self.drift + self.slewed(e)
    }

    /// The clock's reading at host time `host_us`.
    pub fn now_at(&self, host_us: i64) -> i64 {
        host_us + self.offset_at(host_us).round() as i64
    }

    /// Correction still pending from the last slew, at `host_us`.
    pub fn slew_pending_at(&self, host_us: i64) -> f64 {
        self.slew_remaining_us - self.slewed(self.elapsed(host_us))
    }

    /// Moves the anchor to `host_us`, folding elapsed drift and slew into the offset.
    fn rebase(&mut self, host_us: i64) {
        let e = self.elapsed(host_us);
        let done = self.slewed(e);
        self.anchor_offset_us += e * self.drift + done;
        self.slew_remaining_us -= done;
        self.anchor_host_us = host_us;
    }

    /// Jumps the clock by `delta_us` at once and cancels any slew in progress.
    pub fn step(&mut self, host_us: i64, delta_us: i64) {
        self.rebase(host_us);
        self.anchor_offset_us += delta_us as f64;
        self.slew_remaining_us = 0.0;
    }

    /// Starts moving the clock by `delta_us` gradually, at most `rate_ppm` µs per second of host
    /// time. Replaces (does not add to) any slew in progress: the newest measurement wins.
    pub fn slew(&mut self, host_us: i64, delta_us: f64, rate_ppm: f64) {
        self.rebase(host_us);
        self.slew_remaining_us = delta_us;
        self.slew_rate = rate_ppm * 1e-6;
    }

    /// The simulated drift in ppm.
    pub fn drift_ppm(&self) -> f64 {
        self.drift * 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn offset_and_drift() {
        let c = VirtualClock::new(0, 500, 50.0);
        assert_eq!(c.now_at(0), 500);
        // 50 ppm over 10 s = 500 µs.
        assert_eq!(c.now_at(10 * S), 10 * S + 1000);
    }

    #[test]
    fn step_is_immediate_and_cancels_slew() {
        let mut c = VirtualClock::new(0, 0, 0.0);
        c.slew(0, 1000.0, 500.0);
        c.step(S, -200);
        // 1 s of slew at 500 ppm = 500 µs happened before the step.
        assert_eq!(c.now_at(S), S + 300);
        assert_eq!(c.now_at(3 * S), 3 * S + 300);
        assert_eq!(c.slew_pending_at(3 * S), 0.0);
    }

    #[test]
    fn slew_is_rate_bounded_then_stops() {
        let mut c = VirtualClock::new(0, 0, 0.0);
        c.slew(0, -1000.0, 500.0);
        assert_eq!(c.now_at(S), S - 500);
        assert_eq!(c.now_at(2 * S), 2 * S - 1000);
        assert_eq!(c.now_at(10 * S), 10 * S - 1000);
        assert_eq!(c.slew_pending_at(S), -500.0);
    }

    #[test]
    fn new_slew_replaces_pending_one() {
        let mut c = VirtualClock::new(0, 0, 0.0);
        c.slew(0, 1000.0, 500.0);
        c.slew(S, 100.0, 500.0);
        assert_eq!(c.now_at(10 * S), 10 * S + 600);
    }

    #[test]
    fn time_never_runs_backwards_while_slewing() {
        let mut c = VirtualClock::new(0, 0, 0.0);
        c.slew(0, -1_000_000.0, 500.0);
        let mut last = c.now_at(0);
        for h in (0..5 * S).step_by(1000) {
            let now = c.now_at(h);
            assert!(now >= last);
            last = now;
        }
    }
}
