//! The min-delay filter: the best estimate from samples that transit can only make late.
//!
//! Every offset sample taken across the broker is `true offset − transit delay`, and transit is
//! never negative: queueing and scheduling only ever make a sample *smaller*. So the largest
//! sample of a short window is the one that waited least, and the best estimate of the truth.
//! This is the clock filter of NTP in its simplest form. The window is short (a few seconds)
//! because the truth itself moves with drift; a frequency-tracking estimator can do better.

use std::collections::VecDeque;

/// Samples kept. At one sample a second, 8 s: long enough to catch one quiet moment of the
/// broker, short enough that 50 ppm of drift moves the truth by at most 400 µs across it.
pub const FILTER_WINDOW: usize = 8;

/// A sliding window of samples whose maximum is the estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinDelayFilter {
    samples: VecDeque<i64>,
}

impl MinDelayFilter {
    /// Adds a sample and returns the current estimate.
    pub fn push(&mut self, sample: i64) -> i64 {
        if self.samples.len() == FILTER_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.best().expect("just pushed")
    }

    /// The estimate, if there is any sample.
    pub fn best(&self) -> Option<i64> {
        self.samples.iter().copied().max()
    }

    /// Forgets every sample (the reference changed).
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_least_delayed_sample_of_window() {
        let mut f = MinDelayFilter::default();
        assert_eq!(f.best(), None);
        // truth = 1000, delays 300, 50, 900
        assert_eq!(f.push(700), 700);
        assert_eq!(f.push(950), 950);
        assert_eq!(f.push(100), 950);
        // The good sample falls out of the window after FILTER_WINDOW more samples.
        for _ in 0..FILTER_WINDOW - 1 {
            f.push(500);
        }
        assert_eq!(f.best(), Some(500));
        f.clear();
        assert_eq!(f.best(), None);
    }
}
