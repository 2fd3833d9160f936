//! Probing the reference: when to send the next probe, which replies count, and the estimate
//! they make (see [`crate::core::clock::estimator`]).

use super::ClientCore;
use crate::core::clock::estimator::congestion_bound;
use crate::core::clock::{Estimate, Sample};
use crate::core::protocol::{Probe, ProbeReply, PROTOCOL_VERSION};
use rand::Rng;
use std::time::Duration;

/// Probe period while the estimator has few samples: converge in about a second.
pub const PROBE_FAST: Duration = Duration::from_millis(100);
/// Probe period afterwards, the ladder's first rung: 4 a second fill the estimator's 240 s
/// window.
pub const PROBE_SLOW: Duration = Duration::from_millis(250);
/// The longest probe period by default (`--probe-max-ms`): the ladder's first rung, so a
/// client probes as it always did unless told it may back off.
pub const DEFAULT_PROBE_MAX: Duration = PROBE_SLOW;
/// The longest probe period a client may be given (`--probe-max-ms`).
pub const MAX_PROBE_MAX: Duration = Duration::from_secs(64);
/// Consecutive good samples at one rung before the period doubles.
pub const LADDER_STEP: u32 = 8;
/// The estimator's window spans at least this many of the longest probe periods, so that a
/// client on the top rung still fits a line through enough samples.
pub const SPAN_PERIODS: u32 = 64;
/// Samples after which probing slows down (four seconds of fast probes).
pub const FAST_PROBES: usize = 40;
/// Probes awaiting a reply; older ones are forgotten (their replies are too late to be useful).
pub const MAX_PENDING_PROBES: usize = 32;
/// A forgotten probe sent less than this long ago went unanswered because of overload, not
/// because of one lost message long ago.
pub const UNANSWERED: Duration = Duration::from_secs(10);
/// Probe samples needed before the estimate is used (half a second of fast probes): the very
/// first probes of a connection are the slowest and most lopsided.
pub const READY_SAMPLES: usize = 5;
/// Probe samples needed against a new reference by a client that is already synced: two
/// seconds of fast probes, while it holds over.
pub const RESYNC_SAMPLES: usize = 20;

/// Adaptive probing, as NTP's poll interval: the probe period doubles, from [`PROBE_SLOW`] up
/// to `max`, after every [`LADDER_STEP`] consecutive samples that agree with the estimate, and
/// halves at each one that does not (the clock or the path changed; one rung at a time, as
/// NTP's poll adjustment, so a crowd whose samples disagree because the reference is
/// overloaded does not all return to 250 ms at once); it drops to [`PROBE_SLOW`] whenever the
/// estimate starts over (a new reference). A congested sample (its delay far above the window's
/// least, [`congested`]) says nothing about the clock and loads the path further: it doubles the
/// period at once (even while converging), and the estimator does not keep it. So does a probe
/// forgotten unanswered (after [`MAX_PENDING_PROBES`] newer ones) less than [`UNANSWERED`] after
/// it was sent: the reference or the path is overloaded.
#[derive(Debug, Clone)]
pub struct Ladder {
    period: Duration,
    max: Duration,
    good: u32,
    /// The last sample was congested: probe at `period` even while converging.
    congested: bool,
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder {
            period: PROBE_SLOW,
            max: DEFAULT_PROBE_MAX,
            good: 0,
            congested: false,
        }
    }
}

impl Ladder {
    /// The period after the first [`FAST_PROBES`] samples, before randomizing.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Judges one uncongested sample against the estimate made before it.
    fn judge(&mut self, agrees: bool) {
        if !agrees {
            self.period = (self.period / 2).max(PROBE_SLOW);
            self.good = 0;
            return;
        }
        self.good += 1;
        if self.good >= LADDER_STEP {
            self.climb();
        }
    }

    /// Whether the period may grow at all (a ceiling above [`PROBE_SLOW`]).
    fn on(&self) -> bool {
        self.max > PROBE_SLOW
    }

    /// Congestion (a sample queued far behind, or probes unanswered): the next rung at once,
    /// and no fast probes until a sample is not congested.
    fn back_off(&mut self) {
        self.congested = true;
        self.climb();
    }

    fn climb(&mut self) {
        self.period = (self.period * 2).min(self.max.max(PROBE_SLOW));
        self.good = 0;
    }

    fn reset(&mut self) {
        self.period = PROBE_SLOW;
        self.good = 0;
        self.congested = false;
    }
}

/// Whether sample `s` queued far behind the least-delayed sample of `e`'s window
/// ([`congestion_bound`]).
fn congested(e: &Estimate, s: &Sample) -> bool {
    s.delay_us > congestion_bound(e.min_delay_us)
}

/// Whether sample `s` agrees with estimate `e`: its offset is within 4 σ of the fitted line,
/// plus half its extra delay (a slower path can be that lopsided), plus 10 µs.
fn agrees(e: &Estimate, s: &Sample) -> bool {
    let residual = (s.offset_us - e.offset_at(s.raw_us)).abs();
    let extra = (s.delay_us - e.min_delay_us).max(0) as f64 / 2.0;
    residual <= 4.0 * e.sigma_us + extra + 10.0
}

impl ClientCore {
    /// Lets the probe period grow to `max` (from [`PROBE_SLOW`], clamped to
    /// [`MAX_PROBE_MAX`]); the estimator's window stretches to [`SPAN_PERIODS`] of it.
    pub fn set_probe_max(&mut self, max: Duration) {
        self.ladder.max = max.clamp(PROBE_SLOW, MAX_PROBE_MAX);
        let span = (self.ladder.max * SPAN_PERIODS).as_micros() as i64;
        self.estimator.set_min_span(span);
    }

    /// The probe ladder's state.
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// The current estimate of (raw clock − reference), once enough probes were answered:
    /// [`READY_SAMPLES`] to get a clock close at all, [`RESYNC_SAMPLES`] once it was synced by
    /// reference offsets (after a change of reference; holding over is cheaper than a rough
    /// estimate then). A clock synced by the fallback alone (updates came before its probes
    /// were answered, as for a crowd's late joiners) has nothing better to hold over with: the
    /// fallback is off by however long the update waited (at 5,000 clients, the fan-out took
    /// ~0.2 s), so [`READY_SAMPLES`] do.
    pub fn estimate(&self) -> Option<Estimate> {
        let needed = if self.synced && self.ref_synced {
            RESYNC_SAMPLES
        } else {
            READY_SAMPLES
        };
        if self.estimator.len() < needed {
            return None;
        }
        self.estimator.estimate()
    }

    /// This clock minus the reference, and its rate difference, at host time `host_us`.
    pub(super) fn ref_offset(&self, host_us: i64) -> Option<(f64, Option<f64>)> {
        let est = self.estimate()?;
        let raw = self.clock.raw_at(host_us);
        let offset = est.offset_at(raw) + self.clock.correction_at(host_us);
        Some((offset, est.freq_ppm.map(|f| f + self.clock.freq_ppm())))
    }

    /// A bound on the error of this clock's offset to the reference at `host_us` (µs).
    pub(super) fn ref_error(&self, host_us: i64) -> Option<f64> {
        let raw = self.clock.raw_at(host_us);
        Some(self.estimate()?.error_at(raw))
    }

    /// The next offset probe, sent at host time `host_us`.
    pub fn probe(&mut self, host_us: i64) -> Probe {
        self.probe_seq += 1;
        self.stats.probes_sent += 1;
        let raw = self.clock.raw_at(host_us);
        if self.pending.len() == MAX_PENDING_PROBES {
            if let Some((_, sent)) = self.pending.pop_front() {
                if raw - sent < UNANSWERED.as_micros() as i64 && self.ladder.on() {
                    self.ladder.back_off();
                }
            }
        }
        self.pending.push_back((self.probe_seq, raw));
        Probe {
            v: PROTOCOL_VERSION,
            id: self.id,
            seq: self.probe_seq,
            t1_us: self.clock.now_at(host_us),
            stamp: self.stamp(host_us),
        }
    }

    /// How long to wait before the next probe: the period, randomized by ±50%. With a fixed
    /// period every client's probes keep one phase against everyone else's traffic, and a
    /// client whose probes always queue behind a burst gets a constant bias; at random phases
    /// the same queueing is noise that the window averages away.
    pub fn probe_interval(&mut self) -> Duration {
        let base = if self.estimator.len() < FAST_PROBES && !self.ladder.congested {
            PROBE_FAST
        } else {
            self.ladder.period
        };
        base.mul_f64(self.rng.gen_range(0.5..1.5))
    }

    /// Adds the sample a probe reply makes, received at host time `host_us`.
    pub fn on_probe_reply(&mut self, r: &ProbeReply, host_us: i64) -> Option<Sample> {
        if r.client_id != self.id {
            return None;
        }
        let pos = self.pending.iter().position(|(seq, _)| *seq == r.seq)?;
        let (_, t1_raw) = self.pending.remove(pos)?;
        if self.reference != Some(r.server_id) {
            // Another server's clock is another reference: samples do not mix. Every probe
            // still pending was sent before the client knew this reference, maybe while the
            // probe queue had no consumer: their waits are in their delays, one-sided, and
            // answered in one burst they agree with each other (seen in the broker drill: a
            // new leader's reference connected 3 s late, and a master's first estimate, 5
            // samples of that burst, was 277 ms off and stepped every follower away and back;
            // and at start, when the first probes beat the server, 159 ms off). At most one
            // sample of such a burst is kept: this one, at the first reference; none after a
            // change of leader, whose first reply was itself sent to the old one.
            self.estimator.clear();
            self.ladder.reset();
            self.pending.clear();
            if self.reference.replace(r.server_id).is_some() {
                self.stats.probe_replies += 1;
                return None;
            }
        }
        let s = Sample::from_timestamps(t1_raw, r.t2_us, r.t3_us, self.clock.raw_at(host_us));
        if let Some(e) = self.estimator.estimate() {
            if congested(&e, &s) {
                if self.ladder.on() {
                    self.ladder.back_off();
                    self.stats.probe_replies += 1;
                    return None;
                }
            } else {
                self.ladder.congested = false;
                if self.estimator.len() >= FAST_PROBES && e.freq_ppm.is_some() {
                    self.ladder.judge(agrees(&e, &s));
                }
            }
        }
        let usable = self.estimate().is_some();
        self.estimator.add(s);
        self.stats.probe_replies += 1;
        // The first usable estimate (at start, or after a change of reference) goes out in a
        // report at once instead of up to an interval later: a master's update can carry its
        // reference offset only once the server has stored a report with one, and until then
        // every follower corrects by the fallback (~4 ms off at start in the sync bench).
        self.report_due |= !usable && self.estimate().is_some();
        Some(s)
    }

    /// Whether a report is due now, out of turn (once per usable estimate: the answer is
    /// `true` once, then `false` until the estimator starts over).
    pub fn take_report_due(&mut self) -> bool {
        std::mem::take(&mut self.report_due)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::answer;
    use super::*;
    use crate::core::clock::{Discipline, VirtualClock};
    use uuid::Uuid;

    fn core() -> ClientCore {
        ClientCore::new(
            Uuid::from_u128(1),
            "10.0.0.9".parse().unwrap(),
            VirtualClock::new(0, 2_000, 10.0),
            Discipline::default(),
            0,
            crate::core::logical::DEFAULT_MAX_OFFSET_US,
        )
    }

    /// One probe at host time `*h` answered after `delay_us` (the reference is the host clock,
    /// the path symmetric, plus `lopsided_us` on the way out); advances `*h` to the next probe.
    /// Returns whether the reply made a sample.
    fn probe(c: &mut ClientCore, h: &mut i64, delay_us: i64, lopsided_us: i64) -> bool {
        let (up, down) = (delay_us / 2 + lopsided_us, delay_us / 2 - lopsided_us);
        let made = answer(c, *h, up, down).is_some();
        *h += c.probe_interval().as_micros() as i64;
        made
    }

    #[test]
    fn the_period_climbs_while_samples_agree_and_drops_when_one_does_not() {
        let mut c = core();
        c.set_probe_max(Duration::from_secs(16));
        let mut h = 0;
        let mut n = 0;
        while c.ladder().period() < Duration::from_secs(16) {
            probe(&mut c, &mut h, 200 + (n % 7) * 5, 0);
            n += 1;
            assert!(
                n < 1000,
                "still at {:?} after {n} probes",
                c.ladder().period()
            );
        }
        // The fast samples, then 8 per rung from 250 ms to 16 s (6 rungs).
        assert!(
            (FAST_PROBES as i64 + 6 * LADDER_STEP as i64..=200).contains(&n),
            "{n} probes"
        );
        let every = c.probe_interval();
        assert!(every >= Duration::from_secs(8) && every < Duration::from_secs(24));
        // The path changes by 2 ms: each sample that says so halves the period.
        probe(&mut c, &mut h, 200, 2_000);
        assert_eq!(c.ladder().period(), Duration::from_secs(8));
        probe(&mut c, &mut h, 200, 2_000);
        assert_eq!(c.ladder().period(), Duration::from_secs(4));
        let mut ladder = c.ladder().clone();
        for _ in 0..10 {
            ladder.judge(false);
        }
        assert_eq!(ladder.period(), PROBE_SLOW, "never below 250 ms");
    }

    #[test]
    fn a_report_is_due_once_when_the_estimate_becomes_usable() {
        let mut c = core();
        let mut h = 0;
        let due: Vec<bool> = (0..READY_SAMPLES + 3)
            .map(|_| {
                probe(&mut c, &mut h, 300, 0);
                c.take_report_due()
            })
            .collect();
        let expected: Vec<bool> = (0..READY_SAMPLES + 3)
            .map(|i| i == READY_SAMPLES - 1)
            .collect();
        assert_eq!(due, expected, "due with the fifth sample, and only then");
        assert!(!c.take_report_due(), "taken once");
    }

    /// Reference `server`'s reply to `client`'s probe `p`, stamped `t2` on arrival and sent
    /// 10 µs later.
    fn reply_of(server: Uuid, client: Uuid, p: &Probe, t2: i64) -> ProbeReply {
        ProbeReply {
            v: PROTOCOL_VERSION,
            server_id: server,
            epoch: 2,
            client_id: client,
            seq: p.seq,
            t1_us: p.t1_us,
            t2_us: t2,
            t3_us: t2 + 10,
            stamp: Default::default(),
        }
    }

    #[test]
    fn of_probes_answered_in_one_burst_at_start_one_is_used() {
        let mut c = core();
        // The first probes beat the server: ten, 50 ms apart, wait in its queue and are
        // answered in one burst at 2 s (each one's request waited, its reply did not).
        let sent: Vec<Probe> = (0..10).map(|i| c.probe(i * 50_000)).collect();
        let (server, id) = (Uuid::from_u128(99), c.id);
        let mut h = 2_000_000;
        let made = (0..)
            .zip(&sent)
            .filter(|&(i, p)| {
                let t2 = h + i * 20;
                c.on_probe_reply(&reply_of(server, id, p, t2), t2 + 160)
                    .is_some()
            })
            .count();
        assert_eq!(made, 1, "one sample of the burst");
        assert!(c.estimate().is_none(), "not usable on one sample");
        // Fresh probes, answered on time.
        for _ in 1..READY_SAMPLES {
            h += 50_000;
            let p = c.probe(h);
            let r = reply_of(server, id, &p, h + 150);
            assert!(c.on_probe_reply(&r, h + 310).is_some());
        }
        let raw = c.clock.raw_at(h);
        let err = c.estimate().expect("usable").offset_at(raw) - (raw - h) as f64;
        assert!(err.abs() < 50.0, "estimate {err:+.0} µs off");
    }

    #[test]
    fn probes_sent_before_a_change_of_reference_are_not_used() {
        let mut c = core();
        let mut h = 0;
        for _ in 0..60 {
            probe(&mut c, &mut h, 300, 0);
        }
        // The leader changes, and its reference answers 3 s of queued probes in one burst:
        // each one's request waited, its reply did not.
        let sent: Vec<Probe> = (0..30).map(|i| c.probe(h + i * 100_000)).collect();
        h += 3_000_000;
        let (new_ref, id) = (Uuid::from_u128(99), c.id);
        let reply = |p: &Probe, t2: i64| reply_of(new_ref, id, p, t2);
        for (i, p) in sent.iter().enumerate() {
            let t2 = h + i as i64 * 20;
            let r = reply(p, t2);
            assert!(
                c.on_probe_reply(&r, t2 + 160).is_none(),
                "queued probe {i} used"
            );
        }
        assert!(c.estimate().is_none(), "nothing fresh yet");
        // Fresh probes to the new reference, answered on time.
        for _ in 0..READY_SAMPLES {
            h += 100_000;
            let p = c.probe(h);
            let r = reply(&p, h + 150);
            assert!(c.on_probe_reply(&r, h + 310).is_some());
        }
        let raw = c.clock.raw_at(h);
        let err = c.estimate().expect("usable").offset_at(raw) - (raw - h) as f64;
        assert!(err.abs() < 50.0, "estimate {err:+.0} µs off");
    }

    #[test]
    fn unanswered_probes_back_off() {
        let mut c = core();
        c.set_probe_max(Duration::from_secs(16));
        let mut h = 0;
        // Converging: fast probes, none answered (the reference is swamped).
        for _ in 0..MAX_PENDING_PROBES {
            c.probe(h);
            h += c.probe_interval().as_micros() as i64;
        }
        assert_eq!(c.ladder().period(), PROBE_SLOW, "nothing forgotten yet");
        for _ in 0..3 {
            c.probe(h);
            h += c.probe_interval().as_micros() as i64;
        }
        assert_eq!(c.ladder().period(), PROBE_SLOW * 8);
        assert!(c.probe_interval() >= PROBE_SLOW * 4, "no fast probes");
        // Without a ceiling, nothing changes.
        let mut c = core();
        let mut h = 0;
        for _ in 0..2 * MAX_PENDING_PROBES {
            c.probe(h);
            h += c.probe_interval().as_micros() as i64;
        }
        assert_eq!(c.ladder().period(), PROBE_SLOW);
    }

    #[test]
    fn a_congested_sample_is_dropped_and_backs_off_at_once() {
        let mut c = core();
        c.set_probe_max(Duration::from_secs(4));
        let mut h = 0;
        for _ in 0..10 {
            assert!(probe(&mut c, &mut h, 200, 0));
        }
        let before = c.estimator.len();
        assert!(
            !probe(&mut c, &mut h, 50_000, 20_000),
            "queued 50 ms: no sample"
        );
        assert_eq!(c.estimator.len(), before);
        assert_eq!(c.ladder().period(), PROBE_SLOW * 2);
        assert!(
            c.probe_interval() >= PROBE_SLOW,
            "no fast probes while congested"
        );
        assert!(probe(&mut c, &mut h, 200, 0), "a quick one counts again");
    }

    #[test]
    fn without_a_ceiling_above_250_ms_probing_is_as_it_was() {
        let mut c = core();
        let mut h = 0;
        for n in 0..300 {
            assert!(probe(
                &mut c,
                &mut h,
                if n == 100 { 50_000 } else { 200 },
                0
            ));
        }
        assert_eq!(c.ladder().period(), PROBE_SLOW);
        assert!(c.probe_interval() < PROBE_SLOW * 2);
    }
}
