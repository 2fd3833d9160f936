//! The client's own clock: a simulated oscillator (host time + offset + drift) plus a
//! correction that the discipline steps, slews and tunes in frequency.
//!
//! ```text
//! raw(h)        = h + raw_offset0 + (h − h0)·drift                 the "hardware" clock
//! correction(h) = anchor_corr + (h − anchor)·freq + slewed(h − anchor)
//! now(h)        = raw(h) + correction(h)
//! ```
//!
//! Keeping the raw clock separate is what lets offset estimation work on samples taken across
//! corrections: samples are expressed against `raw`, which no step or slew ever moves, so a
//! regression over them sees a straight line (offset + drift) however often the clock was
//! corrected meanwhile. The correction is re-anchored at every change, which keeps reads exact
//! and cheap and makes the clock a plain value that tests drive with host times they choose.

/// A virtual clock. All times are µs; `host_us` arguments are readings of the host clock.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualClock {
    raw_h0: i64,
    raw_offset0: f64,
    /// Simulated frequency error of the oscillator, as a fraction (50 ppm = 50e-6).
    drift: f64,
    anchor_host_us: i64,
    anchor_corr_us: f64,
    /// Frequency correction, as a fraction.
    freq: f64,
    /// Correction still to apply by slewing (µs, signed).
    slew_remaining_us: f64,
    /// Slew speed as a fraction of elapsed time (500 ppm = 500e-6).
    slew_rate: f64,
}

impl VirtualClock {
    /// A clock `offset_us` ahead of the host at `host_us`, drifting by `drift_ppm`.
    pub fn new(host_us: i64, offset_us: i64, drift_ppm: f64) -> Self {
        VirtualClock {
            raw_h0: host_us,
            raw_offset0: offset_us as f64,
            drift: drift_ppm * 1e-6,
            anchor_host_us: host_us,
            anchor_corr_us: 0.0,
            freq: 0.0,
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

    /// The uncorrected oscillator's offset from the host at `host_us`.
    pub fn raw_offset_at(&self, host_us: i64) -> f64 {
        self.raw_offset0 + (host_us - self.raw_h0) as f64 * self.drift
    }

    /// The uncorrected oscillator's reading at `host_us`.
    pub fn raw_at(&self, host_us: i64) -> i64 {
        host_us + self.raw_offset_at(host_us).round() as i64
    }

    /// Everything the discipline has added so far, at `host_us`.
    pub fn correction_at(&self, host_us: i64) -> f64 {
        let e = self.elapsed(host_us);
        self.anchor_corr_us + e * self.freq + self.slewed(e)
    }

    /// Offset from the host clock at `host_us` (µs, fractional).
    pub fn offset_at(&self, host_us: i64) -> f64 {
        self.raw_offset_at(host_us) + self.correction_at(host_us)
    }

    /// The clock's reading at host time `host_us`.
    pub fn now_at(&self, host_us: i64) -> i64 {
        host_us + self.offset_at(host_us).round() as i64
    }

    /// Correction still pending from the last slew, at `host_us`.
    pub fn slew_pending_at(&self, host_us: i64) -> f64 {
        self.slew_remaining_us - self.slewed(self.elapsed(host_us))
    }

    /// Moves the anchor to `host_us`, folding elapsed frequency correction and slew into it.
    fn rebase(&mut self, host_us: i64) {
        let e = self.elapsed(host_us);
        let done = self.slewed(e);
        self.anchor_corr_us += e * self.freq + done;
        self.slew_remaining_us -= done;
        self.anchor_host_us = host_us;
    }

    /// Jumps the clock by `delta_us` at once and cancels any slew in progress.
    pub fn step(&mut self, host_us: i64, delta_us: i64) {
        self.rebase(host_us);
        self.anchor_corr_us += delta_us as f64;
        self.slew_remaining_us = 0.0;
    }

    /// Starts moving the clock by `delta_us` gradually, at most `rate_ppm` µs per second of host
    /// time. Replaces (does not add to) any slew in progress: the newest measurement wins.
    pub fn slew(&mut self, host_us: i64, delta_us: f64, rate_ppm: f64) {
        self.rebase(host_us);
        self.slew_remaining_us = delta_us;
        self.slew_rate = rate_ppm * 1e-6;
    }

    /// Sets the frequency correction (ppm) from `host_us` on.
    pub fn set_freq(&mut self, host_us: i64, ppm: f64) {
        self.rebase(host_us);
        self.freq = ppm * 1e-6;
    }

    /// The frequency correction in ppm.
    pub fn freq_ppm(&self) -> f64 {
        self.freq * 1e6
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
    fn frequency_correction_cancels_drift_and_raw_is_untouched() {
        let mut c = VirtualClock::new(0, 0, 50.0);
        c.set_freq(0, -50.0);
        assert_eq!(c.now_at(100 * S), 100 * S);
        assert_eq!(c.raw_at(100 * S), 100 * S + 5000);
        c.step(100 * S, 7);
        assert_eq!(
            c.raw_at(100 * S),
            100 * S + 5000,
            "corrections never move raw"
        );
        assert_eq!(c.correction_at(100 * S), -4993.0);
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
