//! Clock discipline: given a measured offset to the master, decide how to correct.
//!
//! The policy is ntpd's in miniature: an offset larger than the step threshold is corrected at
//! once (a clock an hour off should not take a week to slew), a smaller one is slewed at a
//! bounded rate so the clock never jumps and never runs backwards. The decision is a pure
//! function of the measurement and the configuration; [`crate::client`] applies it to the
//! [`super::VirtualClock`].

/// Default offset above which the clock is stepped (µs): 128 ms, as ntpd.
pub const DEFAULT_STEP_THRESHOLD_US: i64 = 128_000;
/// Default maximum slew rate (ppm): 500 ppm, as the Linux kernel's adjtime.
pub const DEFAULT_MAX_SLEW_PPM: f64 = 500.0;
/// Until a clock has first come this close to its target (µs), any larger offset is stepped:
/// the first corrections come from the first, noisiest measurements, and slewing their error
/// out at 500 ppm would take seconds. Once synced, only the step threshold applies.
pub const INITIAL_SYNC_US: i64 = 1000;

/// Tunables for [`Discipline`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisciplineConfig {
    pub step_threshold_us: i64,
    pub max_slew_ppm: f64,
}

impl Default for DisciplineConfig {
    fn default() -> Self {
        DisciplineConfig {
            step_threshold_us: DEFAULT_STEP_THRESHOLD_US,
            max_slew_ppm: DEFAULT_MAX_SLEW_PPM,
        }
    }
}

/// What to do with the clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Jump by this many µs.
    Step(i64),
    /// Slew by this many µs at this rate (ppm).
    Slew { delta_us: f64, rate_ppm: f64 },
}

/// The step/slew policy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Discipline {
    pub config: DisciplineConfig,
}

impl Discipline {
    pub fn new(config: DisciplineConfig) -> Self {
        Discipline { config }
    }

    /// Decides the correction for a measured `offset_us` (master minus local clock); `synced`
    /// says whether the clock has been within [`INITIAL_SYNC_US`] of its target before.
    pub fn decide(&self, offset_us: i64, synced: bool) -> Action {
        let threshold = if synced {
            self.config.step_threshold_us
        } else {
            self.config.step_threshold_us.min(INITIAL_SYNC_US)
        };
        if offset_us.abs() > threshold {
            Action::Step(offset_us)
        } else {
            self.slew(offset_us)
        }
    }

    /// Slewing away `offset_us` at the maximum slew rate, whatever its size.
    pub fn slew(&self, offset_us: i64) -> Action {
        Action::Slew {
            delta_us: offset_us as f64,
            rate_ppm: self.config.max_slew_ppm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::VirtualClock;

    #[test]
    fn step_or_slew_by_threshold() {
        let d = Discipline::default();
        let table = [
            (3_600_000_000, Action::Step(3_600_000_000)),
            (-128_001, Action::Step(-128_001)),
            (
                128_000,
                Action::Slew {
                    delta_us: 128_000.0,
                    rate_ppm: 500.0,
                },
            ),
            (
                -250,
                Action::Slew {
                    delta_us: -250.0,
                    rate_ppm: 500.0,
                },
            ),
            (
                0,
                Action::Slew {
                    delta_us: 0.0,
                    rate_ppm: 500.0,
                },
            ),
        ];
        for (offset, want) in table {
            assert_eq!(d.decide(offset, true), want, "offset {offset}");
        }
        // Before the first sync, anything above 1 ms is stepped.
        assert_eq!(d.decide(5_000, false), Action::Step(5_000));
        assert!(matches!(d.decide(900, false), Action::Slew { .. }));
    }

    /// Drives a clock with the policy against a perfect master using host times we choose.
    #[test]
    fn converges_from_an_hour_off() {
        let d = Discipline::default();
        let mut c = VirtualClock::new(0, -3_600_000_000, 0.0);
        let master = |h: i64| h + 1234;
        for tick in 0..5 {
            let h = tick * 1_000_000;
            match d.decide(master(h) - c.now_at(h), true) {
                Action::Step(delta) => c.step(h, delta),
                Action::Slew { delta_us, rate_ppm } => c.slew(h, delta_us, rate_ppm),
            }
        }
        assert_eq!(c.now_at(5_000_000), master(5_000_000));
    }
}
