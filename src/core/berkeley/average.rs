//! The Berkeley algorithm: one coordinator averages the clocks it polls and tells every node how
//! far to move.
//!
//! Gusella & Zatti's TEMPO (the Berkeley UNIX time daemon) assumes no clock in the group is
//! authoritative, so the group agrees on the *average* of its clocks instead of following one.
//! A coordinator polls each node, turns each answer into an offset from its own clock
//! ([`offset_from_poll`], compensating half the round trip), and computes an [`Average`].
//!
//! Two faults would wreck a plain mean, and both are handled before averaging:
//!
//! * **Unreliable readings.** The round-trip compensation assumes the request and the reply took
//!   equally long, so a reading is only good to ±RTT/2. A reading whose round trip exceeds
//!   [`BerkeleyConfig::max_rtt_us`] says little about the clock and is discarded.
//! * **Faulty clocks.** One clock that is an hour off would drag the mean by an hour divided by
//!   the group size. The average is *fault-tolerant*: it is taken over the largest subset of
//!   clocks that agree within [`BerkeleyConfig::max_spread_us`] of each other. With few nodes,
//!   "the largest agreeing cluster" is a more robust notion of the majority than any
//!   mean ± k·σ rule, which needs enough samples for σ to mean something.
//!
//! Discarded clocks are not left alone: every reading, used or not, gets an adjustment to the
//! average. That is how TEMPO repairs a faulty clock: it cannot vote, but it is corrected.
//! Adjustments are *deltas* rather than absolute times because a delta stays right however long
//! the message carrying it takes to arrive.
//!
//! Ties between equally large clusters are broken towards the median of all usable values (the
//! cluster in the middle of the group, not at one extreme), then towards the cluster that
//! contains the coordinator (moving no clock beats moving some), then towards the lower values,
//! so the result is a deterministic function of the input. Everything here is pure; the
//! coordinator's schedule is [`super::round`], its messaging [`crate::server`].

use crate::core::InvalidSetting;
use uuid::Uuid;

/// Default width of the agreeing cluster (µs): 20 ms. Clocks that follow each other across a
/// message broker agree to a few ms; a clock further away than this is treated as faulty.
pub const DEFAULT_MAX_SPREAD_US: i64 = 20_000;

/// Default largest usable round trip (µs): 50 ms. The RTT/2 uncertainty of such a reading is
/// 25 ms, already larger than [`DEFAULT_MAX_SPREAD_US`]; anything slower is noise.
pub const DEFAULT_MAX_RTT_US: i64 = 50_000;

/// By default the coordinator's own clock takes part in the average, as in TEMPO: it is one more
/// clock of the group, with a perfectly known offset (zero) and no round trip.
pub const DEFAULT_INCLUDE_COORDINATOR: bool = true;

/// One poll answer: the node's clock minus the coordinator's clock, RTT-compensated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The polled node.
    pub id: Uuid,
    /// Node clock minus coordinator clock (µs), as computed by [`offset_from_poll`].
    pub offset_us: i64,
    /// Round trip of the poll (µs).
    pub rtt_us: i64,
}

/// Tunables of a Berkeley round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BerkeleyConfig {
    /// Readings belong to the agreeing cluster if all lie within this width (µs) of each other.
    pub max_spread_us: i64,
    /// Whether the coordinator's own clock (offset 0) takes part in the average.
    pub include_coordinator: bool,
    /// Readings whose round trip exceeds this are discarded as unreliable (µs).
    pub max_rtt_us: i64,
}

impl Default for BerkeleyConfig {
    fn default() -> Self {
        BerkeleyConfig {
            max_spread_us: DEFAULT_MAX_SPREAD_US,
            include_coordinator: DEFAULT_INCLUDE_COORDINATOR,
            max_rtt_us: DEFAULT_MAX_RTT_US,
        }
    }
}

impl BerkeleyConfig {
    /// Rejects settings under which no round could ever use a reading.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_spread_us < 0 {
            return Err(InvalidSetting(format!(
                "berkeley max_spread_us must be >= 0 (got {})",
                self.max_spread_us
            )));
        }
        if self.max_rtt_us <= 0 {
            return Err(InvalidSetting(format!(
                "berkeley max_rtt_us must be > 0 (got {}); no poll has a zero round trip",
                self.max_rtt_us
            )));
        }
        Ok(())
    }
}

/// The outcome of one round: the target time and what each clock must do to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Average {
    /// The agreed time, relative to the coordinator's clock (µs).
    pub average_us: i64,
    /// Readings in the agreeing cluster, in input order.
    pub used: Vec<Uuid>,
    /// Readings left out (round trip too long, or outside the cluster), in input order.
    pub discarded: Vec<Uuid>,
    /// For every reading, discarded ones included, in input order: `average_us - offset_us`,
    /// the amount that node must add to its clock.
    pub adjustments: Vec<(Uuid, i64)>,
    /// What the coordinator must add to its own clock; equal to `average_us`.
    pub coordinator_adjust_us: i64,
    /// Whether the coordinator's clock was in the agreeing cluster (always false when
    /// [`BerkeleyConfig::include_coordinator`] is off).
    pub coordinator_used: bool,
}

/// Turns one poll into `(offset_us, rtt_us)`.
///
/// The coordinator sent the poll at `coordinator_send_us` and received the node's clock reading
/// `node_time_us` at `coordinator_recv_us` (both on the coordinator's clock). Assuming the reply
/// took half the round trip, the node's clock read `node_time_us` when the coordinator's read
/// `recv - rtt/2`, so `offset = node_time + rtt/2 - recv`, good to ±rtt/2.
pub fn offset_from_poll(
    coordinator_send_us: i64,
    node_time_us: i64,
    coordinator_recv_us: i64,
) -> (i64, i64) {
    let rtt_us = coordinator_recv_us.saturating_sub(coordinator_send_us);
    let offset_us = node_time_us
        .saturating_add(rtt_us / 2)
        .saturating_sub(coordinator_recv_us);
    (offset_us, rtt_us)
}

/// One clock taking part in the cluster search.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    value: i64,
    /// Index into the readings; `None` is the coordinator.
    reading: Option<usize>,
}

/// Averages one round's readings; `None` if no reading is usable (none given, or every round trip
/// is negative or longer than [`BerkeleyConfig::max_rtt_us`]).
///
/// A negative round trip (the coordinator's clock went backwards during the poll) is as
/// unreliable as a long one and is discarded too.
pub fn average(readings: &[Reading], cfg: &BerkeleyConfig) -> Option<Average> {
    let mut candidates: Vec<Candidate> = readings
        .iter()
        .enumerate()
        .filter(|(_, r)| (0..=cfg.max_rtt_us).contains(&r.rtt_us))
        .map(|(i, r)| Candidate {
            value: r.offset_us,
            reading: Some(i),
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    if cfg.include_coordinator {
        candidates.push(Candidate {
            value: 0,
            reading: None,
        });
    }
    candidates.sort_by_key(|c| c.value);

    let window = &candidates[best_window(&candidates, cfg.max_spread_us)];
    let sum: i128 = window.iter().map(|c| i128::from(c.value)).sum();
    // The mean of i64 values is within i64 range, so the narrowing cannot truncate.
    let average_us = div_round(sum, window.len() as i128) as i64;

    let mut in_window = vec![false; readings.len()];
    let mut coordinator_used = false;
    for c in window {
        match c.reading {
            Some(i) => in_window[i] = true,
            None => coordinator_used = true,
        }
    }
    let (mut used, mut discarded) = (vec![], vec![]);
    for (r, &inside) in readings.iter().zip(&in_window) {
        if inside {
            used.push(r.id);
        } else {
            discarded.push(r.id);
        }
    }
    let adjustments = readings
        .iter()
        .map(|r| (r.id, average_us.saturating_sub(r.offset_us)))
        .collect();

    Some(Average {
        average_us,
        used,
        discarded,
        adjustments,
        coordinator_adjust_us: average_us,
        coordinator_used,
    })
}

/// The index range of the largest run of `sorted` (by value, non-empty) that fits in `spread`,
/// ties broken as the module docs say.
fn best_window(sorted: &[Candidate], spread: i64) -> std::ops::Range<usize> {
    let n = sorted.len();
    let v = |i: usize| i128::from(sorted[i].value);
    // Twice the median keeps the comparison in integers for even counts too.
    let twice_median = if n % 2 == 1 {
        2 * v(n / 2)
    } else {
        v(n / 2 - 1) + v(n / 2)
    };
    let spread = i128::from(spread);

    let mut best = 0..1;
    let mut best_key = None;
    let mut end = 0;
    for start in 0..n {
        end = end.max(start + 1);
        while end < n && v(end) - v(start) <= spread {
            end += 1;
        }
        let distance = (v(start) + v(end - 1) - twice_median).abs();
        let has_coordinator = sorted[start..end].iter().any(|c| c.reading.is_none());
        // Larger is better on every component; `Reverse` makes a smaller distance larger.
        let key = (end - start, std::cmp::Reverse(distance), has_coordinator);
        if best_key.as_ref().is_none_or(|b| key > *b) {
            best_key = Some(key);
            best = start..end;
        }
    }
    best
}

/// `num / den` rounded to the nearest integer, halves away from zero; `den > 0`.
fn div_round(num: i128, den: i128) -> i128 {
    let half = den / 2;
    if num >= 0 {
        (num + half) / den
    } else {
        (num - half) / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_US: i64 = 3_600_000_000;
    const FAST_RTT: i64 = 1_000;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Readings `(id, offset, rtt)`.
    fn readings(rs: &[(u128, i64, i64)]) -> Vec<Reading> {
        rs.iter()
            .map(|&(n, offset_us, rtt_us)| Reading {
                id: id(n),
                offset_us,
                rtt_us,
            })
            .collect()
    }

    fn cfg(include_coordinator: bool) -> BerkeleyConfig {
        BerkeleyConfig {
            include_coordinator,
            ..BerkeleyConfig::default()
        }
    }

    struct Case {
        name: &'static str,
        readings: Vec<Reading>,
        cfg: BerkeleyConfig,
        /// `(average, used ids, coordinator used)`; discarded is every other reading.
        expect: Option<(i64, Vec<u128>, bool)>,
    }

    fn cases() -> Vec<Case> {
        let r = |rs: &[(u128, i64, i64)]| readings(rs);
        vec![
            Case {
                name: "agreeing clocks, coordinator included",
                readings: r(&[(1, 100, FAST_RTT), (2, -200, FAST_RTT), (3, 400, FAST_RTT)]),
                cfg: cfg(true),
                expect: Some((75, vec![1, 2, 3], true)),
            },
            Case {
                name: "agreeing clocks, coordinator not included",
                readings: r(&[(1, 100, FAST_RTT), (2, -200, FAST_RTT), (3, 400, FAST_RTT)]),
                cfg: cfg(false),
                expect: Some((100, vec![1, 2, 3], false)),
            },
            Case {
                name: "a lying clock an hour ahead is left out of the average",
                readings: r(&[
                    (1, 100, FAST_RTT),
                    (2, -100, FAST_RTT),
                    (3, HOUR_US, FAST_RTT),
                ]),
                cfg: cfg(true),
                expect: Some((0, vec![1, 2], true)),
            },
            Case {
                name: "two clusters: the majority wins, even against the coordinator",
                readings: r(&[
                    (1, 1_000_000, FAST_RTT),
                    (2, 1_004_000, FAST_RTT),
                    (3, 1_008_000, FAST_RTT),
                    (4, 3_000, FAST_RTT),
                ]),
                cfg: cfg(true),
                expect: Some((1_004_000, vec![1, 2, 3], false)),
            },
            Case {
                name: "equal clusters: the one nearer the median wins",
                readings: r(&[
                    (1, -300_000, FAST_RTT),
                    (2, -290_000, FAST_RTT),
                    (3, 100_000, FAST_RTT),
                    (4, 200_000, FAST_RTT),
                    (5, 210_000, FAST_RTT),
                ]),
                cfg: cfg(false),
                expect: Some((205_000, vec![4, 5], false)),
            },
            Case {
                name: "equal clusters equally near the median: the coordinator's wins",
                readings: r(&[
                    (1, 10_000, FAST_RTT),
                    (2, 100_000, FAST_RTT),
                    (3, 110_000, FAST_RTT),
                ]),
                cfg: cfg(true),
                expect: Some((5_000, vec![1], true)),
            },
            Case {
                name: "a lone reading against the coordinator: the coordinator's clock wins",
                readings: r(&[(1, HOUR_US, FAST_RTT)]),
                cfg: cfg(true),
                expect: Some((0, vec![], true)),
            },
            Case {
                name: "a lone reading without the coordinator is the average",
                readings: r(&[(1, HOUR_US, FAST_RTT)]),
                cfg: cfg(false),
                expect: Some((HOUR_US, vec![1], false)),
            },
            Case {
                name: "a spread of exactly max_spread_us still agrees",
                readings: r(&[(1, 0, FAST_RTT), (2, DEFAULT_MAX_SPREAD_US, FAST_RTT)]),
                cfg: cfg(false),
                expect: Some((DEFAULT_MAX_SPREAD_US / 2, vec![1, 2], false)),
            },
            Case {
                name: "a high-RTT reading is discarded even when it agrees",
                readings: r(&[(1, 100, FAST_RTT), (2, 200, DEFAULT_MAX_RTT_US + 1)]),
                cfg: cfg(true),
                expect: Some((50, vec![1], true)),
            },
            Case {
                name: "an RTT of exactly max_rtt_us is still usable",
                readings: r(&[(1, 100, DEFAULT_MAX_RTT_US)]),
                cfg: cfg(false),
                expect: Some((100, vec![1], false)),
            },
            Case {
                name: "a negative RTT is discarded",
                readings: r(&[(1, 100, FAST_RTT), (2, 300, -5)]),
                cfg: cfg(false),
                expect: Some((100, vec![1], false)),
            },
            Case {
                name: "halves round away from zero (positive)",
                readings: r(&[(1, 1, FAST_RTT), (2, 2, FAST_RTT)]),
                cfg: cfg(false),
                expect: Some((2, vec![1, 2], false)),
            },
            Case {
                name: "halves round away from zero (negative)",
                readings: r(&[(1, -1, FAST_RTT), (2, -2, FAST_RTT)]),
                cfg: cfg(false),
                expect: Some((-2, vec![1, 2], false)),
            },
            Case {
                name: "no readings",
                readings: vec![],
                cfg: cfg(true),
                expect: None,
            },
            Case {
                name: "every round trip too long: the coordinator alone is no round",
                readings: r(&[
                    (1, 100, DEFAULT_MAX_RTT_US * 2),
                    (2, 0, DEFAULT_MAX_RTT_US * 3),
                ]),
                cfg: cfg(true),
                expect: None,
            },
        ]
    }

    #[test]
    fn rounds() {
        for c in cases() {
            let got = average(&c.readings, &c.cfg);
            let Some((average, used, coordinator_used)) = c.expect else {
                assert_eq!(got, None, "{}", c.name);
                continue;
            };
            let got = got.unwrap_or_else(|| panic!("{}: expected a round", c.name));
            let used: Vec<Uuid> = used.into_iter().map(id).collect();
            let discarded: Vec<Uuid> = c
                .readings
                .iter()
                .map(|r| r.id)
                .filter(|i| !used.contains(i))
                .collect();
            assert_eq!(got.average_us, average, "{}: average", c.name);
            assert_eq!(got.used, used, "{}: used", c.name);
            assert_eq!(got.discarded, discarded, "{}: discarded", c.name);
            assert_eq!(
                got.coordinator_used, coordinator_used,
                "{}: coordinator used",
                c.name
            );
            assert_eq!(got.coordinator_adjust_us, average, "{}", c.name);
        }
    }

    /// Every reading, discarded ones included, is told to move to the average.
    #[test]
    fn every_clock_is_adjusted_to_the_average() {
        for c in cases() {
            let Some(got) = average(&c.readings, &c.cfg) else {
                continue;
            };
            let ids: Vec<Uuid> = got.adjustments.iter().map(|(i, _)| *i).collect();
            let input: Vec<Uuid> = c.readings.iter().map(|r| r.id).collect();
            assert_eq!(ids, input, "{}: one adjustment per reading", c.name);
            let after: i128 = c
                .readings
                .iter()
                .zip(&got.adjustments)
                .map(|(r, (_, adj))| i128::from(r.offset_us + adj))
                .sum();
            let n = c.readings.len() as i128;
            assert_eq!(after, n * i128::from(got.average_us), "{}: sum", c.name);
        }
    }

    #[test]
    fn the_lying_clock_is_corrected_by_an_hour() {
        let rs = readings(&[
            (1, 100, FAST_RTT),
            (2, -100, FAST_RTT),
            (3, HOUR_US, FAST_RTT),
        ]);
        let got = average(&rs, &BerkeleyConfig::default()).expect("a round");
        assert_eq!(got.discarded, vec![id(3)]);
        assert_eq!(
            got.adjustments,
            vec![(id(1), -100), (id(2), 100), (id(3), -HOUR_US)]
        );
    }

    #[test]
    fn offsets_from_polls() {
        // (send, node time, receive) -> (offset, rtt)
        type Case = ((i64, i64, i64), (i64, i64));
        let cases: &[Case] = &[
            // In step: the node read the coordinator's midpoint time.
            ((0, 50, 100), (0, 100)),
            // Node 3.9 ms ahead.
            ((1_000, 5_000, 1_200), (3_900, 200)),
            // Node 1.2 ms behind.
            ((10_000, 9_000, 10_400), (-1_200, 400)),
            // No round trip at all.
            ((5, 5, 5), (0, 0)),
            // An odd round trip: the half rounds towards zero, as rtt/2 does.
            ((0, 0, 3), (-2, 3)),
            // Real epoch times, node an hour behind.
            (
                (
                    1_700_000_000_000_000,
                    1_700_000_000_000_000 - HOUR_US + 500,
                    1_700_000_000_001_000,
                ),
                (-HOUR_US, 1_000),
            ),
        ];
        for &((send, node, recv), want) in cases {
            assert_eq!(
                offset_from_poll(send, node, recv),
                want,
                "send={send} node={node} recv={recv}"
            );
        }
    }

    #[test]
    fn validates_config() {
        let ok = BerkeleyConfig::default();
        let cases = [
            (ok, true),
            (
                BerkeleyConfig {
                    max_spread_us: 0,
                    ..ok
                },
                true,
            ),
            (
                BerkeleyConfig {
                    max_spread_us: -1,
                    ..ok
                },
                false,
            ),
            (
                BerkeleyConfig {
                    max_rtt_us: 0,
                    ..ok
                },
                false,
            ),
        ];
        for (c, valid) in cases {
            assert_eq!(c.validate().is_ok(), valid, "{c:?}");
        }
    }
}
