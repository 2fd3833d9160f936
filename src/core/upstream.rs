//! Following NTP upstreams, without I/O: what each upstream's replies say about this clock, which
//! upstreams agree (NTP's selection: the largest group whose intervals meet, falsetickers
//! outside it), and which one a master steers to.
//!
//! Each upstream has its own [`OffsetEstimator`] of the raw clock against it, fed with the four
//! timestamps of its replies exactly as probes to the reference are (the raw clock, which
//! corrections never move, on the client's side). An upstream's **interval** is its estimated
//! offset ± its root distance: half the best round trip to it (the most path asymmetry can
//! hide), plus its own root delay / 2 and root dispersion (its distance to its reference), plus
//! 15 ppm of the age of its newest sample, plus [`SELECT_MARGIN_US`] for the estimate's jitter. With three or more upstreams, the selection keeps the
//! largest set (more than half of them) whose intervals share a point and calls the rest
//! falsetickers; with one or two, it keeps them if they agree. The survivor with the smallest
//! root distance is the one to follow.

use crate::core::clock::{Estimate, OffsetEstimator, Sample};
use crate::core::ntp::{self, PHI_PPM};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Upstreams a client may follow.
pub const MAX_UPSTREAMS: usize = 8;
/// Polls without an answer after which an upstream counts as unreachable.
pub const UNREACHABLE_AFTER: u32 = 4;
/// Added to every interval's half-width in the selection (µs): an estimate's own jitter, which
/// root distance does not count. Without it, two honest upstreams a few tens of µs apart on a
/// busy host can fail to overlap, leave no majority, and make the master drop its upstream for
/// a poll (NTP adds its MINDISP, 10 ms, for the same reason).
pub const SELECT_MARGIN_US: i64 = 1_000;
/// Largest root distance of a usable upstream (µs): RFC 5905's MAXDIST, 1.5 s.
pub const MAX_DISTANCE_US: i64 = 1_500_000;
/// Longest upstream address kept in reports (bytes).
pub const MAX_ADDR_LEN: usize = 64;

/// One reply of an upstream, reduced to what following it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    /// Our raw clock when the request left and when the reply arrived (µs).
    pub t1_raw_us: i64,
    pub t4_raw_us: i64,
    /// The upstream's receive and transmit timestamps (Unix µs).
    pub t2_us: i64,
    pub t3_us: i64,
    pub stratum: u8,
    pub leap: u8,
    pub root_delay_us: i64,
    pub root_dispersion_us: i64,
}

impl Reply {
    /// The reply to a request whose transmit timestamp was `sent` (raw clock `t1_raw_us`),
    /// received at raw `t4_raw_us`; `None` if it is not a usable server reply to that request
    /// (wrong mode, version or origin, a kiss, the alarm, stratum 0 or 16, no timestamps,
    /// transmit before receive, a root distance over 1.5 s, or a server that names this client
    /// as its reference, `own_refid`: a timing loop).
    pub fn parse(
        bytes: &[u8],
        sent: u64,
        t1_raw_us: i64,
        t4_raw_us: i64,
        own_refid: Option<[u8; 4]>,
    ) -> Option<Reply> {
        let p = ntp::Packet::decode(bytes)?;
        let usable = p.mode == 4
            && (1..=4).contains(&p.version)
            && p.origin_ts == sent
            && p.leap != 3
            && (1..ntp::UNSYNCED_STRATUM).contains(&p.stratum)
            && Some(p.reference_id) != own_refid
            && p.receive_ts != 0
            && p.transmit_ts != 0;
        if !usable {
            return None;
        }
        let near = t1_raw_us;
        let r = Reply {
            t1_raw_us,
            t4_raw_us,
            t2_us: ntp::unix_us_from_ntp(p.receive_ts, near),
            t3_us: ntp::unix_us_from_ntp(p.transmit_ts, near),
            stratum: p.stratum,
            leap: p.leap,
            root_delay_us: short_to_us(p.root_delay),
            root_dispersion_us: short_to_us(p.root_dispersion),
        };
        // Transmitted before it received, or further from its reference than NTP accepts.
        let distance = r.root_delay_us / 2 + r.root_dispersion_us;
        (r.t3_us >= r.t2_us && distance <= MAX_DISTANCE_US).then_some(r)
    }
}

fn short_to_us(v: u32) -> i64 {
    ((u64::from(v) * 1_000_000) >> 16) as i64
}

/// Where an upstream stands, as reports and `tsc` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No reply yet.
    Waiting,
    /// Recent polls went unanswered (or answered with the alarm).
    Unreachable,
    /// Outside the interval the majority agrees on.
    Falseticker,
    /// Agrees with the majority; not the best of them.
    Candidate,
    /// The one this clock steers to.
    Selected,
}

/// One upstream as reports carry it (PROTOCOL.md §9, `upstreams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// As configured (`HOST[:PORT]`).
    pub addr: String,
    pub state: State,
    /// Its time minus this client's clock (µs), from its estimate; absent without one.
    #[serde(default)]
    pub offset_us: Option<i64>,
    /// Best round trip to it in the window (µs).
    #[serde(default)]
    pub delay_us: Option<i64>,
    #[serde(default)]
    pub stratum: Option<u8>,
}

/// One upstream: its estimate and its latest reply's claims.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: String,
    /// Its address once resolved (the reference id a master names).
    pub ip: Option<IpAddr>,
    estimator: OffsetEstimator,
    last: Option<Reply>,
    missed: u32,
    pub state: State,
}

impl Upstream {
    pub fn new(addr: &str) -> Upstream {
        Upstream {
            addr: addr.chars().take(MAX_ADDR_LEN).collect(),
            ip: None,
            estimator: OffsetEstimator::default(),
            last: None,
            missed: 0,
            state: State::Waiting,
        }
    }

    /// A poll went unanswered.
    pub fn missed(&mut self) {
        self.missed = self.missed.saturating_add(1);
        if self.missed >= UNREACHABLE_AFTER {
            self.state = State::Unreachable;
            self.estimator.clear();
        }
    }

    /// A usable reply.
    pub fn reply(&mut self, r: Reply) {
        self.missed = 0;
        self.estimator.add(Sample::from_timestamps(
            r.t1_raw_us,
            r.t2_us,
            r.t3_us,
            r.t4_raw_us,
        ));
        self.last = Some(r);
        if matches!(self.state, State::Waiting | State::Unreachable) {
            self.state = State::Candidate;
        }
    }

    /// Raw clock minus this upstream, now.
    pub fn estimate(&self) -> Option<Estimate> {
        self.estimator.estimate()
    }

    /// The stratum it claims.
    pub fn stratum(&self) -> Option<u8> {
        self.last.map(|r| r.stratum)
    }

    /// Root delay to the upstream's reference through it (µs): its own plus our best round trip.
    pub fn root_delay_us(&self) -> i64 {
        let own = self.estimate().map_or(0, |e| e.min_delay_us);
        self.last.map_or(0, |r| r.root_delay_us) + own
    }

    /// Its root dispersion as seen here at raw time `raw_us` (µs): its own, grown by 15 ppm
    /// since its newest reply.
    pub fn dispersion_us(&self, raw_us: i64) -> i64 {
        self.last.map_or(0, |r| {
            let age = (raw_us - r.t4_raw_us).max(0);
            r.root_dispersion_us + (age as f64 * PHI_PPM * 1e-6) as i64
        })
    }

    /// Half-width of its interval at raw time `raw_us` (µs): its root distance as seen here,
    /// root delay / 2 + root dispersion (RFC 5905), our best round trip to it included.
    pub fn distance_us(&self, raw_us: i64) -> i64 {
        if self.estimate().is_none() || self.last.is_none() {
            return i64::MAX;
        }
        self.root_delay_us() / 2 + self.dispersion_us(raw_us)
    }

    /// The status a report carries; `correction_us` is the clock's correction (virtual − raw).
    pub fn status(&self, raw_us: i64, correction_us: f64) -> Status {
        let est = self.estimate();
        Status {
            addr: self.addr.clone(),
            state: self.state,
            offset_us: est.map(|e| -(e.offset_at(raw_us) + correction_us).round() as i64),
            delay_us: est.map(|e| e.min_delay_us),
            stratum: self.stratum(),
        }
    }
}

/// Marks every reachable upstream with an estimate `Selected`, `Candidate` or `Falseticker` at
/// raw time `raw_us`, and returns the selected one's index (`None`: no majority, none reachable,
/// or some upstream not heard from yet: the first reply alone must not decide). `current`, the
/// one followed so far, stays selected while it agrees with the majority, so that near-equal
/// upstreams do not take turns.
pub fn select(upstreams: &mut [Upstream], raw_us: i64, current: Option<usize>) -> Option<usize> {
    if upstreams.iter().any(|u| u.state == State::Waiting) {
        return None;
    }
    let live: Vec<(usize, f64, f64)> = upstreams
        .iter()
        .enumerate()
        .filter(|(_, u)| u.state != State::Unreachable)
        .filter_map(|(i, u)| {
            let e = u.estimate()?;
            // Intervals of the upstream's time minus the raw clock.
            let theta = -e.offset_at(raw_us);
            let d = (u.distance_us(raw_us) + SELECT_MARGIN_US) as f64;
            Some((i, theta - d, theta + d))
        })
        .collect();
    let truechimers: Vec<usize> =
        agreeing(&live.iter().map(|&(_, lo, hi)| (lo, hi)).collect::<Vec<_>>())
            .into_iter()
            .map(|k| live[k].0)
            .collect();
    for &(i, _, _) in &live {
        upstreams[i].state = State::Falseticker;
    }
    let best = current.filter(|c| truechimers.contains(c)).or_else(|| {
        truechimers
            .iter()
            .copied()
            .min_by_key(|&i| (upstreams[i].distance_us(raw_us), upstreams[i].stratum()))
    })?;
    for &i in &truechimers {
        upstreams[i].state = State::Candidate;
    }
    upstreams[best].state = State::Selected;
    Some(best)
}

/// The indices of the intervals that agree: with three or more, those that meet the
/// intersection of the largest group of more than half of them that share a point (Marzullo's
/// algorithm, as NTP's selection uses it); with one, it; with two, both if they overlap.
pub fn agreeing(intervals: &[(f64, f64)]) -> Vec<usize> {
    let n = intervals.len();
    if n <= 2 {
        let meet = n < 2 || (intervals[0].0 <= intervals[1].1 && intervals[1].0 <= intervals[0].1);
        return if meet { (0..n).collect() } else { Vec::new() };
    }
    // Endpoints: +1 where an interval starts, -1 where it ends (starts first at a tie).
    let mut ends: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(lo, hi)| [(lo, 1), (hi, -1)])
        .collect();
    ends.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    // Allow f falsetickers, fewest first, while the rest are a majority.
    for f in 0..n.div_ceil(2) {
        let need = (n - f) as i32;
        let (mut count, mut low) = (0, None);
        for &(x, d) in &ends {
            count += d;
            if count >= need {
                low = Some(x);
                break;
            }
        }
        let (mut count, mut high) = (0, None);
        for &(x, d) in ends.iter().rev() {
            count -= d;
            if count >= need {
                high = Some(x);
                break;
            }
        }
        if let (Some(lo), Some(hi)) = (low, high) {
            if lo <= hi {
                return intervals
                    .iter()
                    .enumerate()
                    .filter(|(_, &(a, b))| a <= hi && b >= lo)
                    .map(|(i, _)| i)
                    .collect();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_majority_decides_and_falsetickers_are_left_out() {
        struct Case {
            what: &'static str,
            intervals: &'static [(f64, f64)],
            agree: &'static [usize],
        }
        let cases = [
            Case {
                what: "one source",
                intervals: &[(-5.0, 5.0)],
                agree: &[0],
            },
            Case {
                what: "two that overlap",
                intervals: &[(-5.0, 5.0), (3.0, 9.0)],
                agree: &[0, 1],
            },
            Case {
                what: "two that do not: no majority",
                intervals: &[(-5.0, 5.0), (100.0, 110.0)],
                agree: &[],
            },
            Case {
                what: "three, one an hour off",
                intervals: &[(-5.0, 5.0), (3_600e6, 3_600e6 + 10.0), (-2.0, 8.0)],
                agree: &[0, 2],
            },
            Case {
                what: "three that all agree",
                intervals: &[(-5.0, 5.0), (-1.0, 1.0), (0.0, 9.0)],
                agree: &[0, 1, 2],
            },
            Case {
                what: "three that all disagree",
                intervals: &[(0.0, 1.0), (10.0, 11.0), (20.0, 21.0)],
                agree: &[],
            },
            Case {
                what: "five, two liars that agree with each other",
                intervals: &[
                    (-5.0, 5.0),
                    (500.0, 510.0),
                    (-3.0, 4.0),
                    (502.0, 512.0),
                    (0.0, 6.0),
                ],
                agree: &[0, 2, 4],
            },
            Case {
                what: "touching ends agree",
                intervals: &[(0.0, 1.0), (1.0, 2.0), (1.0, 3.0)],
                agree: &[0, 1, 2],
            },
        ];
        for c in cases {
            assert_eq!(agreeing(c.intervals), c.agree, "{}", c.what);
        }
    }

    fn reply(t1: i64, upstream_minus_raw: i64, rtt: i64, stratum: u8) -> Reply {
        Reply {
            t1_raw_us: t1,
            t4_raw_us: t1 + rtt,
            t2_us: t1 + rtt / 2 + upstream_minus_raw,
            t3_us: t1 + rtt / 2 + upstream_minus_raw,
            stratum,
            leap: 0,
            root_delay_us: 100,
            root_dispersion_us: 50,
        }
    }

    #[test]
    fn the_closest_agreeing_upstream_is_selected() {
        let t0 = 1_796_000_000_000_000;
        let mut ups: Vec<Upstream> = ["a:123", "liar:123", "c:123"].map(Upstream::new).into();
        for k in 0..5 {
            let t = t0 + k * 1_000_000;
            ups[0].reply(reply(t, 1_000, 400, 2));
            ups[1].reply(reply(t, 5_000_000, 300, 1));
            ups[2].reply(reply(t, 1_050, 200, 3));
        }
        let now = t0 + 5_000_000;
        // The one followed stays while it agrees, though another is better.
        assert_eq!(select(&mut ups, now, Some(0)), Some(0));
        assert_eq!(
            select(&mut ups, now, None),
            Some(2),
            "c: the shortest distance"
        );
        let states: Vec<State> = ups.iter().map(|u| u.state).collect();
        assert_eq!(
            states,
            [State::Candidate, State::Falseticker, State::Selected]
        );
        let s = ups[2].status(now, 0.0);
        assert_eq!(
            (s.offset_us, s.delay_us, s.stratum),
            (Some(1_050), Some(200), Some(3))
        );
        // c goes quiet: after a few missed polls it is unreachable, and a is followed.
        for _ in 0..UNREACHABLE_AFTER {
            ups[2].missed();
        }
        assert_eq!(
            select(&mut ups, now, Some(2)),
            None,
            "a and the liar: two that disagree"
        );
        assert_eq!(ups[2].state, State::Unreachable);
        ups.remove(1);
        assert_eq!(select(&mut ups, now, None), Some(0));
        // Until every upstream has been heard from, nothing is selected.
        ups.push(Upstream::new("late:123"));
        assert_eq!(select(&mut ups, now, Some(0)), None);
    }

    #[test]
    fn only_a_proper_reply_to_our_request_counts() {
        let sent = ntp::ntp_from_unix_us(1_796_000_000_000_000);
        let good = ntp::Packet {
            leap: 0,
            version: 4,
            mode: 4,
            stratum: 3,
            origin_ts: sent,
            receive_ts: sent + 1,
            transmit_ts: sent + 2,
            root_delay: 1 << 16,
            ..ntp::Packet::default()
        };
        let parse = |p: ntp::Packet| Reply::parse(&p.encode(), sent, 10, 20, Some([10, 0, 0, 9]));
        let r = parse(good).expect("usable");
        assert_eq!((r.stratum, r.root_delay_us), (3, 1_000_000));
        for bad in [
            ntp::Packet {
                origin_ts: sent + 9,
                ..good
            },
            ntp::Packet { mode: 3, ..good },
            ntp::Packet { leap: 3, ..good },
            ntp::Packet { stratum: 0, ..good },
            ntp::Packet {
                stratum: 16,
                ..good
            },
            ntp::Packet {
                transmit_ts: 0,
                ..good
            },
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(Reply::parse(&[0u8; 47], sent, 0, 0, None), None);
    }
}
