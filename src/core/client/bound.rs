//! ε: a client's bound on |its clock − the master's clock|, from its own measurements only.
//!
//! A reference-offset correction measures the master's offset to the reference minus the
//! client's own, each from a fitted line of probes (see [`crate::core::clock::estimator`]); the
//! error of the difference is at most the sum of the two estimates' bounds, the master's carried
//! in the update (`master_ref_error_us`). That sum is the bound right after the correction. (The
//! root sum of squares, right for independent errors, was tried and measured too small: each
//! path's asymmetry drifts slowly, and no fit sees that.) The
//! correction is slewed, so until the slew is done the part not applied yet adds to it. After
//! it, the clock runs at the frequency the correction set, whose error is at most the two
//! frequency bounds plus a wander allowance, and the bound grows at that rate until the next
//! correction: holding over (no correction), it just keeps growing. A correction that is not
//! measured against the reference (the fallback) moves the clock by an amount nothing bounds
//! better than itself, so it widens the bound by its size.

/// The bound as of the last correction, and how fast it grows since.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorBound {
    anchor: Option<Anchor>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Anchor {
    host_us: i64,
    error_us: f64,
    rate_ppm: f64,
}

impl ErrorBound {
    /// After a correction at host time `host_us`: the clock is within `error_us` of the master
    /// once the slew is done, and drifts from it by at most `rate_ppm`.
    pub fn set(&mut self, host_us: i64, error_us: f64, rate_ppm: f64) {
        self.anchor = Some(Anchor {
            host_us,
            error_us,
            rate_ppm,
        });
    }

    /// Nothing bounds the clock any more (an operator set it, or it follows an algorithm
    /// without reference offsets).
    pub fn clear(&mut self) {
        self.anchor = None;
    }

    /// A correction of `delta_us` that nothing measured: the bound, as of `host_us`, widens by
    /// its size.
    pub fn widen(&mut self, host_us: i64, delta_us: f64) {
        if let Some(e) = self.at(host_us, 0.0) {
            let rate = self.anchor.map_or(0.0, |a| a.rate_ppm);
            self.set(host_us, e + delta_us.abs(), rate);
        }
    }

    /// The bound at host time `host_us`, with `slew_pending_us` of the correction not applied
    /// yet.
    pub fn at(&self, host_us: i64, slew_pending_us: f64) -> Option<f64> {
        let a = self.anchor?;
        let since = (host_us - a.host_us).max(0) as f64;
        Some(a.error_us + since * a.rate_ppm * 1e-6 + slew_pending_us.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_at_its_rate_with_the_pending_slew_and_widens_by_unmeasured_corrections() {
        let mut b = ErrorBound::default();
        assert_eq!(b.at(0, 0.0), None);
        b.widen(0, 500.0);
        assert_eq!(b.at(0, 0.0), None, "nothing to widen");
        b.set(1_000_000, 20.0, 2.0);
        assert_eq!(b.at(1_000_000, 0.0), Some(20.0));
        assert_eq!(b.at(1_000_000, -30.0), Some(50.0));
        assert_eq!(b.at(6_000_000, 0.0), Some(30.0), "2 ppm for 5 s");
        assert_eq!(b.at(0, 0.0), Some(20.0), "never shrinks into the past");
        b.widen(6_000_000, -100.0);
        assert_eq!(b.at(6_000_000, 0.0), Some(130.0));
        assert_eq!(b.at(7_000_000, 0.0), Some(132.0));
        b.clear();
        assert_eq!(b.at(7_000_000, 0.0), None);
    }
}
