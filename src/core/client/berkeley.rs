//! The client's side of a Berkeley round: answer the coordinator's polls with this clock's
//! reading, apply the adjustment it computed, and learn frequency from successive rounds.

use super::{ClientCore, UpdateOutcome};
use crate::core::clock::Action;
use crate::core::protocol::{BerkeleyAdjust, BerkeleyPoll, BerkeleyReading, PROTOCOL_VERSION};

/// Share of a Berkeley adjustment attributed to frequency error. Small, because a round's
/// adjustment is mostly measurement noise once the clock is close: a large gain would turn that
/// noise into frequency swings.
pub const BERKELEY_FREQ_GAIN: f64 = 0.3;
/// Largest frequency change one Berkeley round may make (ppm).
pub const BERKELEY_MAX_FREQ_STEP_PPM: f64 = 10.0;

impl ClientCore {
    /// Answers a Berkeley poll received at host time `host_us`.
    pub fn on_poll(&mut self, p: &BerkeleyPoll, host_us: i64) -> BerkeleyReading {
        BerkeleyReading {
            v: PROTOCOL_VERSION,
            id: self.id,
            epoch: p.epoch,
            round: p.round,
            poll: p.poll,
            time_us: self.clock.now_at(host_us),
            // Only an estimate against this coordinator's clock says anything about it.
            ref_offset_us: (self.reference == Some(p.server_id))
                .then(|| self.ref_offset(host_us))
                .flatten()
                .map(|(o, _)| o.round() as i64),
            stamp: self.stamp(host_us),
        }
    }

    /// Applies a Berkeley adjustment received at host time `host_us`.
    pub fn on_adjust(&mut self, a: &BerkeleyAdjust, host_us: i64) -> UpdateOutcome {
        if a.client_id != self.id {
            return UpdateOutcome::NotForMe;
        }
        let term = (a.server_id, a.epoch);
        if let Some((_, last, round)) = self.last_round {
            // Rounds count per coordinator term: a new term starts again at 1.
            if last == term && a.round <= round {
                self.stats.updates_ignored += 1;
                return UpdateOutcome::Stale;
            }
        }
        // The average of the clocks is not the master's clock: no bound to the master.
        self.bound.clear();
        let action = self.discipline.decide(a.adjust_us, self.synced);
        // A first round proves nothing: with one usable reading the average is the client's own
        // clock and the adjustment 0. Only a consecutive round's small adjustment means synced
        // (before that, larger errors are stepped, not slewed for minutes).
        let consecutive = self
            .last_round
            .is_some_and(|(_, t, r)| t == term && a.round == r + 1);
        if let (Some((prev_host, prev_term, prev_round)), Action::Slew { .. }) =
            (self.last_round, action)
        {
            // What is left to adjust after a round without steps is drift since the last one.
            if prev_term == term && a.round == prev_round + 1 {
                let secs = (host_us - prev_host) as f64 / 1e6;
                if secs > 0.0 {
                    let change = (BERKELEY_FREQ_GAIN * a.adjust_us as f64 / secs)
                        .clamp(-BERKELEY_MAX_FREQ_STEP_PPM, BERKELEY_MAX_FREQ_STEP_PPM);
                    let f = self.clock.freq_ppm() + change;
                    self.clock.set_freq(host_us, f.clamp(-1000.0, 1000.0));
                }
            }
        }
        self.last_round = Some((host_us, term, a.round));
        self.apply(host_us, a.adjust_us, action, consecutive, &a.stamp)
    }
}
