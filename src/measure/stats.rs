//! Percentiles of absolute errors.

use serde::Serialize;

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// |error| statistics of one client (or of all).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub samples: usize,
    pub median_us: i64,
    pub p99_us: i64,
    pub p999_us: i64,
    pub max_us: i64,
}

impl Stats {
    pub fn of(errors: impl IntoIterator<Item = i64>) -> Stats {
        let mut v: Vec<i64> = errors.into_iter().map(i64::abs).collect();
        v.sort_unstable();
        Stats {
            samples: v.len(),
            median_us: percentile(&v, 0.5),
            p99_us: percentile(&v, 0.99),
            p999_us: percentile(&v, 0.999),
            max_us: v.last().copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_percentiles() {
        let st = Stats::of([-5, 1, 3, -100, 2]);
        assert_eq!((st.samples, st.median_us, st.max_us), (5, 3, 100));
        assert_eq!(percentile(&[], 0.5), 0);
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.99)), (51, 99));
        let v: Vec<i64> = (1..=2000).collect();
        assert_eq!(Stats::of(v).p999_us, 1998);
    }
}
