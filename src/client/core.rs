//! The client's decisions, without I/O: what to report, and what to do with a master update.
//!
//! Driven with host-clock readings passed in by the caller, so tests can replay any sequence of
//! updates at any times.

use crate::clock::{Action, Discipline, MinDelayFilter, VirtualClock};
use crate::protocol::{MasterUpdate, TimeReport, PROTOCOL_VERSION};
use std::net::IpAddr;
use uuid::Uuid;

/// What happened to an update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateOutcome {
    /// This client is the master: it is the reference and does not correct itself.
    IAmMaster,
    /// The clock was corrected; `offset_us` is the measured master-minus-local offset.
    Applied { offset_us: i64, action: Action },
    /// A duplicate or older update from the same server; ignored.
    Stale,
}

/// Counters a client keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub reports_sent: u64,
    pub updates_applied: u64,
    pub steps: u64,
    pub updates_ignored: u64,
    pub updates_rejected: u64,
}

/// One client's clock and sync state.
#[derive(Debug, Clone)]
pub struct ClientCore {
    pub id: Uuid,
    pub ip: IpAddr,
    clock: VirtualClock,
    discipline: Discipline,
    seq: u64,
    master: Option<(Uuid, i64)>,
    last_update: Option<(Uuid, u64)>,
    /// Samples of (master clock − host clock), for the current (server, master) pair.
    filter: MinDelayFilter,
    filter_for: Option<(Uuid, Uuid)>,
    pub stats: ClientStats,
}

impl ClientCore {
    pub fn new(id: Uuid, ip: IpAddr, clock: VirtualClock, discipline: Discipline) -> Self {
        ClientCore {
            id,
            ip,
            clock,
            discipline,
            seq: 0,
            master: None,
            last_update: None,
            filter: MinDelayFilter::default(),
            filter_for: None,
            stats: ClientStats::default(),
        }
    }

    /// The client's clock at host time `host_us`.
    pub fn now_at(&self, host_us: i64) -> i64 {
        self.clock.now_at(host_us)
    }

    /// The next report, stamped at host time `host_us`.
    pub fn report(&mut self, host_us: i64) -> TimeReport {
        self.seq += 1;
        self.stats.reports_sent += 1;
        let time_us = self.clock.now_at(host_us);
        TimeReport {
            v: PROTOCOL_VERSION,
            id: self.id,
            ip: self.ip,
            time_us,
            seq: self.seq,
            master_id: self.master.map(|(id, _)| id),
            master_time_us: self.master.map(|(_, t)| t),
            true_offset_us: Some(time_us - host_us),
        }
    }

    /// Handles an update received at host time `host_us`.
    pub fn on_update(&mut self, u: &MasterUpdate, host_us: i64) -> UpdateOutcome {
        if let Some((server, seq)) = self.last_update {
            if server == u.server_id && u.seq <= seq {
                self.stats.updates_ignored += 1;
                return UpdateOutcome::Stale;
            }
        }
        self.last_update = Some((u.server_id, u.seq));
        self.master = Some((u.master_id, u.master_time_us));
        if u.master_id == self.id {
            return UpdateOutcome::IAmMaster;
        }
        // Samples are kept against the host clock, which our own corrections do not move, so
        // earlier samples stay valid after a step or slew.
        if self.filter_for != Some((u.server_id, u.master_id)) {
            self.filter.clear();
            self.filter_for = Some((u.server_id, u.master_id));
        }
        let master_minus_host = self.filter.push(u.master_time_us - host_us);
        let offset_us = host_us + master_minus_host - self.clock.now_at(host_us);
        let action = self.discipline.decide(offset_us);
        match action {
            Action::Step(delta) => {
                self.clock.step(host_us, delta);
                self.stats.steps += 1;
            }
            Action::Slew { delta_us, rate_ppm } => self.clock.slew(host_us, delta_us, rate_ppm),
        }
        self.stats.updates_applied += 1;
        UpdateOutcome::Applied { offset_us, action }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn core(id: u128, offset_us: i64) -> ClientCore {
        ClientCore::new(
            Uuid::from_u128(id),
            "10.0.0.9".parse().unwrap(),
            VirtualClock::new(0, offset_us, 0.0),
            Discipline::default(),
        )
    }

    fn update(seq: u64, master: u128, master_time_us: i64) -> MasterUpdate {
        MasterUpdate {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(500),
            seq,
            master_id: Uuid::from_u128(master),
            master_ip: "10.0.0.1".parse().unwrap(),
            master_time_us,
            server_time_us: 0,
        }
    }

    #[test]
    fn reports_carry_clock_and_master() {
        let mut c = core(1, 250);
        let r = c.report(10 * S);
        assert_eq!(
            (r.seq, r.time_us, r.true_offset_us),
            (1, 10 * S + 250, Some(250))
        );
        assert_eq!(r.master_id, None);
        c.on_update(&update(1, 7, 10 * S), 10 * S);
        let r = c.report(11 * S);
        assert_eq!(r.seq, 2);
        assert_eq!(r.master_id, Some(Uuid::from_u128(7)));
        assert_eq!(r.master_time_us, Some(10 * S));
    }

    #[test]
    fn steps_far_then_slews_near() {
        let mut c = core(1, -3600 * S);
        // Master is host + 2 ms.
        let out = c.on_update(&update(1, 7, 5 * S + 2000), 5 * S);
        assert_eq!(
            out,
            UpdateOutcome::Applied {
                offset_us: 3600 * S + 2000,
                action: Action::Step(3600 * S + 2000)
            }
        );
        assert_eq!(c.now_at(5 * S), 5 * S + 2000);
        let out = c.on_update(&update(2, 7, 6 * S + 2300), 6 * S);
        assert!(matches!(
            out,
            UpdateOutcome::Applied {
                offset_us: 300,
                action: Action::Slew { .. }
            }
        ));
        assert_eq!(c.now_at(8 * S), 8 * S + 2300);
        assert_eq!(c.stats.steps, 1);
        assert_eq!(c.stats.updates_applied, 2);
    }

    #[test]
    fn late_updates_do_not_drag_the_clock_back() {
        let mut c = core(1, 0);
        // Master = host + 1 ms. First update arrives after 100 µs, later ones after 3 ms.
        c.on_update(&update(1, 7, S + 1000), S + 100);
        assert_eq!(c.now_at(S + 100), S + 100); // slewing starts from here
        for i in 2..6 {
            let h = i * S;
            let before = c.now_at(h);
            let out = c.on_update(&update(i as u64, 7, h - 3000 + 1000), h);
            // The estimate still comes from the least-delayed sample: master is 900 µs ahead of
            // the host, not 2 ms behind as the late samples alone would say.
            let UpdateOutcome::Applied { offset_us, .. } = out else {
                panic!("{out:?}")
            };
            assert_eq!(offset_us, h + 900 - before);
        }
        assert_eq!(c.now_at(10 * S), 10 * S + 900);
    }

    #[test]
    fn master_does_not_correct_itself_but_knows_it_is_master() {
        let mut c = core(7, 123);
        assert_eq!(
            c.on_update(&update(1, 7, 999 * S), S),
            UpdateOutcome::IAmMaster
        );
        assert_eq!(c.now_at(S), S + 123);
        assert_eq!(c.report(S).master_id, Some(Uuid::from_u128(7)));
    }

    #[test]
    fn stale_and_duplicate_updates_ignored() {
        let mut c = core(1, 0);
        c.on_update(&update(5, 7, S), S);
        assert_eq!(c.on_update(&update(5, 7, 9 * S), S), UpdateOutcome::Stale);
        assert_eq!(c.on_update(&update(4, 7, 9 * S), S), UpdateOutcome::Stale);
        assert_eq!(c.now_at(S), S);
        // A restarted server (new id) starts again at seq 1 and is accepted.
        let mut u = update(1, 7, S + 10);
        u.server_id = Uuid::from_u128(501);
        assert!(matches!(c.on_update(&u, S), UpdateOutcome::Applied { .. }));
    }
}
