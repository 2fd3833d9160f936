//! True offsets of running clocks over time, and their errors against a reference.
//!
//! All clients on one host share the host clock, so a report's `true_offset_us` (clock − host)
//! is exact. A client's error at host instant `h` is its true offset minus the reference's *at
//! the same instant*, the reference's being interpolated between the reference's own reports
//! (comparing two reports taken up to a second apart would add the master's drift to the
//! error). The reference is the master for `master` and `naive`, and the mean of all clients for
//! `berkeley`, which has no master and converges to the average.

use crate::cache::{RedisStore, ReportStore};
use crate::core::clock::{Clock, SystemClock};
use crate::core::protocol::Algorithm;
use std::collections::HashMap;
use uuid::Uuid;

/// How often ε (`max_error_us`) held: see [`TrueOffsets::coverage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Coverage {
    /// Samples with |error| ≤ ε.
    pub held: usize,
    /// Samples that had an ε.
    pub bounded: usize,
    /// Largest |error| − ε of a sample where ε did not hold (µs; 0 or less: none).
    pub worst_miss_us: i64,
}

impl Coverage {
    /// `held / bounded` with four decimals, or `none` without any bounded sample.
    pub fn ratio(&self) -> String {
        if self.bounded == 0 {
            "none".into()
        } else {
            format!("{:.4}", self.held as f64 / self.bounded as f64)
        }
    }
}

/// Every report seen, per client, in order, and who was master when.
#[derive(Debug, Default)]
pub struct TrueOffsets {
    /// Per client: (host time, true offset) of each report.
    pub points: HashMap<Uuid, Vec<(i64, i64)>>,
    pub ips: HashMap<Uuid, std::net::IpAddr>,
    last_seq: HashMap<Uuid, u64>,
    /// Each report's ε (`max_error_us`), by client and host time, when it had one.
    pub bounds: HashMap<(Uuid, i64), u64>,
    /// Each report's estimate error against the reference clock, by client and host time: its
    /// `true_offset_us` (clock − host) − `ref_offset_us` (clock − reference, as estimated); the
    /// reference runs on the host clock, so the difference is exact on one host. A follower's
    /// error is its own estimate error minus the master's.
    pub estimate_errors: HashMap<(Uuid, i64), i64>,
    /// Latest `max_step_us` per client.
    pub max_step: HashMap<Uuid, i64>,
    /// (from host time, master id): who was master when.
    pub masters: Vec<(i64, Uuid)>,
}

impl TrueOffsets {
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
            if let Some(e) = rep.max_error_us {
                self.bounds.insert((rep.id, rep.time_us - off), e);
            }
            if let Some(r) = rep.ref_offset_us {
                self.estimate_errors
                    .insert((rep.id, rep.time_us - off), off - r);
            }
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

    /// How ε held over `errors`: of the samples whose report had an ε, how many had
    /// |error| ≤ ε, and the largest |error| − ε of those that did not.
    pub fn coverage(&self, errors: &[(Uuid, i64, i64)]) -> Coverage {
        let mut c = Coverage::default();
        for (id, h, e) in errors {
            if let Some(eps) = self.bounds.get(&(*id, *h)) {
                c.bounded += 1;
                let miss = e.abs() - *eps as i64;
                if miss <= 0 {
                    c.held += 1;
                }
                c.worst_miss_us = c.worst_miss_us.max(miss);
            }
        }
        c
    }

    /// The ε of each of `errors` that had one.
    pub fn bounds_of<'a>(
        &'a self,
        errors: &'a [(Uuid, i64, i64)],
    ) -> impl Iterator<Item = i64> + 'a {
        errors
            .iter()
            .filter_map(|(id, h, _)| self.bounds.get(&(*id, *h)).map(|e| *e as i64))
    }

    /// Whether every client (every one but the master, unless `berkeley`) of `clients` has
    /// errors, and its last `last` of them are all below `bound_us`.
    pub fn converged(&self, alg: Algorithm, clients: usize, bound_us: i64, last: usize) -> bool {
        let mut latest: HashMap<Uuid, Vec<(i64, i64)>> = HashMap::new();
        for (id, h, e) in self.errors(alg) {
            latest.entry(id).or_default().push((h, e));
        }
        let expected = if alg == Algorithm::Berkeley {
            clients
        } else {
            clients.saturating_sub(1)
        };
        latest.len() >= expected
            && latest.values().all(|v| {
                v.len() >= last && v[v.len() - last..].iter().all(|(_, e)| e.abs() < bound_us)
            })
    }
}

/// Per-client error lines for a plot, in seconds since `t0`, from host time `from` on.
pub fn plot_lines(
    series: &TrueOffsets,
    alg: Algorithm,
    t0: i64,
    from: i64,
) -> Vec<super::plot::Line> {
    let mut by_client: HashMap<Uuid, Vec<(f64, f64)>> = HashMap::new();
    for (id, h, e) in series.errors(alg) {
        if h >= from {
            by_client
                .entry(id)
                .or_default()
                .push(((h - t0) as f64 / 1e6, e as f64));
        }
    }
    let mut out: Vec<super::plot::Line> = by_client
        .into_iter()
        .map(|(id, points)| super::plot::Line {
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
            .map(|ip| crate::core::master_election::ip_rank(&ip))
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
        let mut s = TrueOffsets::default();
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
    fn converged_means_the_last_errors_of_every_follower_are_in_bound() {
        let (m, a, b) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut s = TrueOffsets::default();
        s.masters.push((0, m));
        s.points
            .insert(m, (0..6).map(|i| (i * 1_000_000, 0)).collect());
        s.points
            .insert(a, vec![(500_000, 5_000), (1_500_000, 10), (2_500_000, 20)]);
        assert!(
            !s.converged(Algorithm::Master, 3, 1000, 2),
            "b has not reported"
        );
        s.points.insert(b, vec![(500_000, 30), (1_500_000, 40)]);
        assert!(s.converged(Algorithm::Master, 3, 1000, 2));
        assert!(
            !s.converged(Algorithm::Master, 3, 1000, 3),
            "a's third-last is 5 ms off"
        );
        assert!(!s.converged(Algorithm::Master, 3, 25, 2), "b is 40 µs off");
    }
}
