//! Measuring a running cluster against the truth: `tsc report` and the sync benchmark.
//!
//! All clients on one host share the host clock, so a report's `true_offset_us` (clock − host)
//! is exact. A client's error at host instant `h` is its true offset minus the reference's *at
//! the same instant*, the reference's being interpolated between the reference's own reports
//! (comparing two reports taken up to a second apart would add the master's drift to the
//! error). The reference is the master for `master` and `naive`, and the mean of all clients for
//! `berkeley`, which has no master and converges to the average.

use crate::cache::{RedisStore, ReportStore};
use crate::clock::{Clock, SystemClock};
use crate::protocol::Algorithm;
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// Every report seen, per client, in order.
#[derive(Debug, Default)]
pub struct Series {
    /// Per client: (host time, true offset) of each report.
    pub points: HashMap<Uuid, Vec<(i64, i64)>>,
    pub ips: HashMap<Uuid, std::net::IpAddr>,
    last_seq: HashMap<Uuid, u64>,
    /// Latest `max_step_us` per client.
    pub max_step: HashMap<Uuid, i64>,
    /// (from host time, master id): who was master when.
    pub masters: Vec<(i64, Uuid)>,
}

impl Series {
    /// Reads the live reports and the master once, keeping what is new.
    pub async fn poll(&mut self, store: &RedisStore) {
        let Ok(reports) = store.live_reports().await else {
            return;
        };
        for r in reports {
            let rep = r.report;
            let Some(off) = rep.true_offset_us else {
                continue;
            };
            if self.last_seq.get(&rep.id).is_some_and(|s| *s >= rep.seq) {
                continue;
            }
            self.last_seq.insert(rep.id, rep.seq);
            self.ips.insert(rep.id, rep.ip);
            self.points
                .entry(rep.id)
                .or_default()
                .push((rep.time_us - off, off));
            if let Some(s) = rep.max_step_us {
                self.max_step.insert(rep.id, s);
            }
        }
        if let Ok(Some(m)) = store.master().await {
            if self.masters.last().map(|(_, id)| *id) != Some(m.id) {
                self.masters.push((SystemClock.now_us(), m.id));
            }
        }
    }

    /// A client's true offset at host time `h`, interpolated between its reports.
    pub fn at(&self, id: &Uuid, h: i64) -> Option<f64> {
        let p = self.points.get(id)?;
        let i = p.partition_point(|(t, _)| *t <= h);
        if i == 0 || i == p.len() {
            return None;
        }
        let ((t0, o0), (t1, o1)) = (p[i - 1], p[i]);
        Some(o0 as f64 + (o1 - o0) as f64 * (h - t0) as f64 / (t1 - t0).max(1) as f64)
    }

    /// The master at host time `h`; before the first one seen, the first (the reference
    /// everyone converges to).
    pub fn master_at(&self, h: i64) -> Option<Uuid> {
        self.masters
            .iter()
            .rev()
            .find(|(from, _)| *from <= h)
            .or(self.masters.first())
            .map(|(_, id)| *id)
    }

    /// (client, host time, error µs) for every report with a reference at its instant.
    pub fn errors(&self, alg: Algorithm) -> Vec<(Uuid, i64, i64)> {
        let mut out = Vec::new();
        for (id, pts) in &self.points {
            for &(h, off) in pts {
                let reference = match alg {
                    Algorithm::Berkeley => {
                        let all: Vec<f64> =
                            self.points.keys().filter_map(|j| self.at(j, h)).collect();
                        (all.len() == self.points.len())
                            .then(|| all.iter().sum::<f64>() / all.len() as f64)
                    }
                    _ => match self.master_at(h) {
                        Some(m) if m == *id => None,
                        Some(m) => self.at(&m, h),
                        None => None,
                    },
                };
                if let Some(r) = reference {
                    out.push((*id, h, (off as f64 - r).round() as i64));
                }
            }
        }
        out.sort_by_key(|(id, h, _)| (*h, *id));
        out
    }
}

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
            max_us: v.last().copied().unwrap_or(0),
        }
    }
}

/// Per-client error series for a plot, in seconds since `t0`.
pub fn plot_series(
    series: &Series,
    alg: Algorithm,
    t0: i64,
    from: i64,
) -> Vec<crate::cli::plot::Series> {
    let mut by_client: HashMap<Uuid, Vec<(f64, f64)>> = HashMap::new();
    for (id, h, e) in series.errors(alg) {
        if h >= from {
            by_client
                .entry(id)
                .or_default()
                .push(((h - t0) as f64 / 1e6, e as f64));
        }
    }
    let mut out: Vec<crate::cli::plot::Series> = by_client
        .into_iter()
        .map(|(id, points)| crate::cli::plot::Series {
            label: series
                .ips
                .get(&id)
                .map_or_else(|| id.to_string(), |ip| ip.to_string()),
            points,
        })
        .collect();
    out.sort_by_key(|s| {
        s.label
            .parse::<std::net::IpAddr>()
            .map(|ip| crate::election::ip_rank(&ip))
            .ok()
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_compare_at_the_same_instant() {
        let (m, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut s = Series::default();
        // The master drifts +100 µs per second; the client reports half-way between, exactly on
        // the master's line plus 7 µs.
        s.points
            .insert(m, vec![(0, 1000), (1_000_000, 1100), (2_000_000, 1200)]);
        s.points.insert(c, vec![(500_000, 1057), (1_500_000, 1157)]);
        s.masters.push((0, m));
        let errs = s.errors(Algorithm::Master);
        assert_eq!(errs, vec![(c, 500_000, 7), (c, 1_500_000, 7)]);
        // Berkeley: the reference is the mean of both at each instant.
        let errs = s.errors(Algorithm::Berkeley);
        assert!(errs.iter().all(|(_, _, e)| e.abs() <= 4), "{errs:?}");
    }

    #[test]
    fn stats_and_percentiles() {
        let st = Stats::of([-5, 1, 3, -100, 2]);
        assert_eq!((st.samples, st.median_us, st.max_us), (5, 3, 100));
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
