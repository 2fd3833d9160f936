//! The client's decisions, without I/O: what to report and probe, and what to do with each
//! message from the server.
//!
//! Driven with host-clock readings passed in by the caller, so tests replay any sequence of
//! messages at any times. How an update is applied depends on its algorithm:
//!
//! - `master`: the client knows its own offset and frequency to the server's reference clock
//!   (from probes, [`OffsetEstimator`]); the update carries the master's. The correction is the
//!   difference, so neither the update's age nor its queueing matters. Frequency is set to the
//!   master's rate, so drift does not reopen the gap between updates. An update without the
//!   master's reference offset (a master that does not probe) falls back to the master time it
//!   carries, through a min-delay filter.
//! - `naive`: the seed's behaviour, kept for comparison: set the clock to the master time.
//! - `berkeley`: answer polls with the clock's reading, apply the adjustment the coordinator
//!   computed, and learn frequency from successive adjustments.

use crate::core::clock::estimator::WANDER_PPM;
use crate::core::clock::{Action, Discipline, MinDelayFilter, OffsetEstimator, VirtualClock};
use crate::core::logical::{NodeClocks, Stamp};
use crate::core::ntp::NtpStats;
use crate::core::protocol::{
    Algorithm, Event, EventKind, MasterUpdate, SetTime, TimeChange, TimeReport, ToClient,
    MAX_REPORT_EVENTS, PROTOCOL_VERSION,
};
use rand::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

mod berkeley;
mod bound;
mod probing;
mod time_source;
pub use berkeley::{BERKELEY_FREQ_GAIN, BERKELEY_MAX_FREQ_STEP_PPM};
pub use bound::ErrorBound;
pub use probing::{
    Ladder, DEFAULT_PROBE_MAX, FAST_PROBES, LADDER_STEP, MAX_PENDING_PROBES, MAX_PROBE_MAX,
    PROBE_FAST, PROBE_SLOW, READY_SAMPLES, RESYNC_SAMPLES, SPAN_PERIODS,
};
pub use time_source::UpstreamReply;
use uuid::Uuid;

/// A clock within this of its target (µs) counts as synced: from then on it is only stepped
/// above the step threshold, and its corrections count in the `max_step_us` diagnostic.
pub const SYNCED_US: i64 = crate::core::clock::INITIAL_SYNC_US;
/// Corrections after the clock first counts as synced during which a larger offset than
/// [`MAKESTEP_US`] is still stepped, not slewed (chrony's `makestep`): a first sync made on
/// probes that queued behind a crowd (thousands of clients starting at once) can be tens of
/// ms off, and slewing that away at 500 ppm would take minutes.
pub const MAKESTEP_UPDATES: u32 = 300;
/// See [`MAKESTEP_UPDATES`] (µs).
pub const MAKESTEP_US: i64 = 10 * SYNCED_US;
/// Consecutive corrections above [`MAKESTEP_US`], all one way, before a young clock is stepped
/// by one. A crowd's first sync is off for as long as its samples are, so it is stepped two
/// updates later; one bad estimate (a probe answered late while a broker node died) is slewed,
/// at most 500 µs before the next update corrects it, instead of a step away and a step back.
pub const MAKESTEP_CONFIRM: u32 = 3;
/// Largest jump up in leader epoch a client follows in one message. Epochs grow by one per
/// election, so a real jump is small; a larger one would be a corrupt or forged epoch that,
/// once followed, would fence off every real leader.
pub const MAX_EPOCH_STEP: u64 = 1_000_000;
/// Events kept for the next reports, at most (the oldest go first).
pub const MAX_PENDING_EVENTS: usize = 64;
/// Operator commands remembered, so that each applies once.
pub const REMEMBERED_OPS: usize = 256;
/// Largest unsealed report body: the seal (a key id and an HMAC tag in hex, under 200 bytes)
/// must still fit in [`crate::core::protocol::MAX_MESSAGE_BYTES`].
pub const REPORT_BODY_BUDGET: usize = crate::core::protocol::MAX_MESSAGE_BYTES - 256;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateOutcome {
    /// This client is the master: it is the reference and does not correct itself.
    IAmMaster,
    /// The clock was corrected; `offset_us` is the measured target-minus-local offset.
    Applied { offset_us: i64, action: Action },
    /// A duplicate or older message from the same server; ignored.
    Stale,
    /// Not corrected: the client is synced and its master probes, but their offsets are not
    /// against one reference right now (the leader, and with it the reference clock, just
    /// changed). Keeping the current frequency beats the coarser fallback for those seconds.
    Held,
    /// A command for another client.
    NotForMe,
}

/// Longest a synced client holds over (keeps its frequency, takes no correction) while every
/// update it gets carries only the fallback master time, counted from the first such update.
/// Afterwards it follows the fallback, by slewing only: a synced clock is never stepped on it.
pub const MAX_HOLDOVER: Duration = Duration::from_secs(60);

/// Updates further apart than this end a stretch of holding over: the next one starts another
/// (a leader that was gone for minutes comes back with the same coarse first updates).
pub const HOLD_GAP: Duration = Duration::from_secs(5);

/// Counters a client keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub reports_sent: u64,
    pub probes_sent: u64,
    pub probe_replies: u64,
    pub updates_applied: u64,
    pub steps: u64,
    pub updates_ignored: u64,
    pub updates_rejected: u64,
    /// Messages ignored for coming from a lower epoch than the one followed.
    pub stale_epoch: u64,
    /// Updates not applied while holding over a change of reference.
    pub holdovers: u64,
    /// Operator commands applied.
    pub time_sets: u64,
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
    /// Term (server, epoch) and sequence number of the last update: `seq` counts per term.
    last_update: Option<((Uuid, u64), u64)>,
    /// Fallback: samples of (master clock − host clock) for the current (server, master).
    filter: MinDelayFilter,
    filter_for: Option<(Uuid, Uuid)>,
    estimator: OffsetEstimator,
    /// A report is due at once: the estimate just became usable (see
    /// [`ClientCore::take_report_due`]).
    report_due: bool,
    /// The probe period's ladder (adaptive probing).
    ladder: probing::Ladder,
    probe_seq: u64,
    /// (seq, raw clock at send) of probes awaiting replies.
    pending: VecDeque<(u64, i64)>,
    /// Server whose reference clock the estimator's samples are against.
    reference: Option<Uuid>,
    synced: bool,
    /// Corrections taken since the clock last became synced (up to [`MAKESTEP_UPDATES`]).
    young: u32,
    /// Consecutive corrections above [`MAKESTEP_US`], all of one sign (negative: behind).
    makestep_run: i64,
    max_step_us: i64,
    /// Host time, coordinator and round of the last Berkeley adjustment.
    last_round: Option<(i64, (Uuid, u64), u64)>,
    rng: rand::rngs::SmallRng,
    /// Leader epoch followed.
    epoch: Option<u64>,
    /// The highest stale epoch already recorded as an event (one event per stale epoch).
    refused_epoch: Option<u64>,
    /// When this process started (host clock, µs): the incarnation in every report.
    boot_us: i64,
    clocks: NodeClocks,
    /// Events for the next reports.
    events: VecDeque<Event>,
    /// Operator commands applied, newest last.
    applied_ops: VecDeque<Uuid>,
    /// Since when, and until when (host µs), updates brought nothing but the fallback to a
    /// synced clock: one stretch of holding over.
    held_since: Option<(i64, i64)>,
    /// Whether the clock has taken a reference-offset correction since it was last unsynced:
    /// only then does it have something better than the fallback to hold over with.
    ref_synced: bool,
    /// The master's address, from the last update.
    master_ip: Option<IpAddr>,
    /// The master's NTP stratum, from the last update that had one.
    master_stratum: Option<u8>,
    /// When the clock last took a correction, or (as master) last heard it is master (host µs).
    corrected_at_us: Option<i64>,
    /// ε, the bound on |clock − master| ([`ErrorBound`]).
    bound: ErrorBound,
    pub stats: ClientStats,
    /// The NTP service's counters, while it runs (reported as `ntp`).
    pub ntp: Option<NtpStats>,
    /// NTP upstreams to follow while master, and the state of following them.
    follow: time_source::Follow,
}

impl ClientCore {
    /// A client started at host time `boot_us`; `max_offset_us` bounds its HLC.
    pub fn new(
        id: Uuid,
        ip: IpAddr,
        clock: VirtualClock,
        discipline: Discipline,
        boot_us: i64,
        max_offset_us: i64,
    ) -> Self {
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
            estimator: OffsetEstimator::default(),
            report_due: false,
            ladder: probing::Ladder::default(),
            probe_seq: 0,
            pending: VecDeque::new(),
            reference: None,
            synced: false,
            young: 0,
            makestep_run: 0,
            max_step_us: 0,
            last_round: None,
            rng: rand::rngs::SmallRng::seed_from_u64(id.as_u128() as u64),
            epoch: None,
            refused_epoch: None,
            boot_us,
            clocks: NodeClocks::new(max_offset_us),
            events: VecDeque::new(),
            applied_ops: VecDeque::new(),
            held_since: None,
            ref_synced: false,
            master_ip: None,
            master_stratum: None,
            corrected_at_us: None,
            bound: ErrorBound::default(),
            stats: ClientStats::default(),
            ntp: None,
            follow: time_source::Follow::default(),
        }
    }

    /// The physical time the HLC may use: the reference clock's time, as this client's probe
    /// estimate gives it (none without one). The servers' HLCs run on that timebase, their
    /// own clocks; the disciplined clock does not, since it follows the master, whose time
    /// may be any distance from the reference's (an hour, with the default skew).
    fn pt(&self, host_us: i64) -> Option<i64> {
        let est = self.estimate()?;
        let raw = self.clock.raw_at(host_us);
        Some((raw as f64 - est.offset_at(raw)).round() as i64)
    }

    /// Stamps a send or a local event at host time `host_us`.
    pub fn stamp(&mut self, host_us: i64) -> Stamp {
        let pt = self.pt(host_us);
        self.clocks.tick(pt)
    }

    /// Takes in the logical clocks of a message received at `host_us` (after it was
    /// authenticated and admitted); returns the receive event's stamp.
    pub fn observe(&mut self, msg: &ToClient, host_us: i64) -> Stamp {
        let pt = self.pt(host_us);
        self.clocks.observe(msg.stamp(), pt)
    }

    /// Remote timestamps the HLC refused for being too far ahead.
    pub fn hlc_refused(&self) -> u64 {
        self.clocks.hlc_refused()
    }

    /// Records an event for the next reports.
    fn record(
        &mut self,
        kind: EventKind,
        text: String,
        data: BTreeMap<String, serde_json::Value>,
        cause: Option<&Stamp>,
        host_us: i64,
    ) {
        let stamp = self.stamp(host_us);
        if self.events.len() == MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            kind,
            node: format!("client-{}", self.id),
            stamp,
            cause: cause.cloned(),
            text,
            data,
        });
    }

    /// Fencing: whether a message from leader epoch `epoch`, received at host time `host_us`,
    /// may be acted on. Epochs below the one followed are refused and counted: a deposed leader
    /// is still talking, or someone replays its messages. So is a jump above it by more than
    /// [`MAX_EPOCH_STEP`]. A higher epoch is followed from now on. Every authenticated message
    /// from the server passes here first.
    pub fn admit(&mut self, epoch: u64, host_us: i64) -> bool {
        if let Some(current) = self.epoch {
            if epoch < current || epoch - current > MAX_EPOCH_STEP {
                self.stats.stale_epoch += 1;
                if self.refused_epoch.is_none_or(|r| r < epoch) && epoch < current {
                    self.refused_epoch = Some(epoch);
                    let data = BTreeMap::from([
                        ("epoch".to_string(), epoch.into()),
                        ("following".to_string(), current.into()),
                    ]);
                    let text =
                        format!("refused a message of deposed epoch {epoch} (following {current})");
                    self.record(EventKind::FencingRefused, text, data, None, host_us);
                }
                return false;
            }
        }
        self.epoch = Some(epoch);
        true
    }

    /// The leader epoch followed.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The client's clock at host time `host_us`.
    pub fn now_at(&self, host_us: i64) -> i64 {
        self.clock.now_at(host_us)
    }

    /// ε at host time `host_us` (µs): 0 for the master, else the bound of the last correction
    /// grown since (see [`ErrorBound`]).
    pub fn max_error(&self, host_us: i64) -> Option<f64> {
        if self.is_master() {
            return Some(0.0);
        }
        self.bound.at(host_us, self.clock.slew_pending_at(host_us))
    }

    /// The next report, stamped at host time `host_us`.
    pub fn report(&mut self, host_us: i64) -> TimeReport {
        self.seq += 1;
        self.stats.reports_sent += 1;
        let time_us = self.clock.now_at(host_us);
        let reference = self.ref_offset(host_us);
        let source = self.ntp_source(host_us);
        let mut report = TimeReport {
            v: PROTOCOL_VERSION,
            id: self.id,
            ip: self.ip,
            time_us,
            seq: self.seq,
            master_id: self.master.map(|(id, _)| id),
            master_time_us: self.master.map(|(_, t)| t),
            true_offset_us: Some(time_us - host_us),
            ref_offset_us: reference.map(|(o, _)| o.round() as i64),
            ref_freq_ppm: reference.and_then(|(_, f)| f),
            max_step_us: self.synced.then_some(self.max_step_us),
            ref_server_id: reference.and(self.reference),
            epoch: self.epoch(),
            stale_epoch_msgs: Some(self.stats.stale_epoch),
            rejected_msgs: Some(self.stats.updates_rejected),
            boot_us: self.boot_us,
            stamp: self.stamp(host_us),
            events: self
                .events
                .drain(..self.events.len().min(MAX_REPORT_EVENTS))
                .collect(),
            stratum: Some(source.served_stratum()),
            reference: self.reference_name(),
            upstreams: self.upstream_statuses(host_us),
            ntp: self.ntp,
            ref_error_us: reference
                .and(self.ref_error(host_us))
                .map(|e| e.ceil() as u64),
            max_error_us: self.max_error(host_us).map(|e| e.ceil() as u64),
        };
        // Events that would make the sealed report too large wait for the next one, in order.
        while !report.events.is_empty()
            && serde_json::to_vec(&report).map_or(0, |b| b.len()) > REPORT_BODY_BUDGET
        {
            let e = report.events.pop().expect("not empty");
            self.events.push_front(e);
        }
        report
    }

    /// Handles a master update received at host time `host_us`.
    pub fn on_update(&mut self, u: &MasterUpdate, host_us: i64) -> UpdateOutcome {
        let term = (u.server_id, u.epoch);
        if let Some((last, seq)) = self.last_update {
            if last == term && u.seq <= seq {
                self.stats.updates_ignored += 1;
                return UpdateOutcome::Stale;
            }
        }
        self.last_update = Some((term, u.seq));
        self.master = Some((u.master_id, u.master_time_us));
        self.master_ip = Some(u.master_ip);
        if u.master_id != self.id {
            self.follow.stop();
        }
        self.master_stratum = u.master_stratum;
        if u.master_id == self.id {
            self.corrected_at_us = Some(host_us);
            self.held_since = None;
            return UpdateOutcome::IAmMaster;
        }
        let offset_us = match u.algorithm {
            Algorithm::Naive => {
                // The seed: set the clock to the master time, whatever it is.
                self.bound.clear();
                let offset = u.master_time_us - self.clock.now_at(host_us);
                return self.apply(host_us, offset, Action::Step(offset), true, &u.stamp);
            }
            Algorithm::Master | Algorithm::Berkeley => match self.master_offset(u, host_us) {
                Some(offset) => {
                    self.held_since = None;
                    self.ref_synced = true;
                    offset
                }
                None if self.synced => return self.hold_over(u, host_us),
                None => {
                    self.held_since = None;
                    self.bound.clear();
                    self.filtered_offset(u, host_us)
                }
            },
        };
        self.makestep_run = match (offset_us.abs() > MAKESTEP_US, offset_us.signum()) {
            (false, _) => 0,
            (true, sign) if self.makestep_run.signum() == sign => self.makestep_run + sign,
            (true, sign) => sign,
        };
        let action = match self.discipline.decide(offset_us, self.synced) {
            Action::Slew { .. }
                if self.young < MAKESTEP_UPDATES
                    && self.makestep_run.unsigned_abs() >= u64::from(MAKESTEP_CONFIRM) =>
            {
                Action::Step(offset_us)
            }
            action => action,
        };
        self.apply(host_us, offset_us, action, true, &u.stamp)
    }

    /// A synced clock and an update without a reference offset it can use (the leader, and
    /// with it the reference clock, just changed, or the master's report still names the
    /// previous leader's clock). The fallback master time is a single report's offset, and a
    /// report that waited in a queue makes it wrong by the wait (hundreds of ms after the
    /// replicas restart), so a clock that was synced by reference offsets keeps its frequency
    /// and takes no correction for up to [`MAX_HOLDOVER`]. After that, or when the fallback is
    /// all it ever had, it slews toward the fallback, never steps.
    fn hold_over(&mut self, u: &MasterUpdate, host_us: i64) -> UpdateOutcome {
        if self.ref_synced {
            // A stretch is updates coming on time: after a silence (no leader at all), the
            // first update starts a new one.
            let gap = HOLD_GAP.as_micros() as i64;
            let (since, _) = match self.held_since {
                Some((since, last)) if host_us - last <= gap => (since, last),
                _ => (host_us, host_us),
            };
            self.held_since = Some((since, host_us));
            if host_us - since < MAX_HOLDOVER.as_micros() as i64 {
                self.stats.holdovers += 1;
                return UpdateOutcome::Held;
            }
        }
        let offset_us = self.filtered_offset(u, host_us);
        self.bound.widen(host_us, offset_us as f64);
        let action = self.discipline.slew(offset_us);
        self.apply(host_us, offset_us, action, false, &u.stamp)
    }

    /// Target minus local from reference offsets, setting frequency to the master's rate.
    fn master_offset(&mut self, u: &MasterUpdate, host_us: i64) -> Option<i64> {
        let m_off = u.master_ref_offset_us? as f64;
        if self.reference != Some(u.server_id) {
            return None; // our samples are against another server's clock
        }
        let est = self.estimate()?;
        let raw = self.clock.raw_at(host_us);
        let own_raw = est.offset_at(raw);
        // Reference time now, to carry the master's offset forward from `server_time_us`.
        let ref_now = raw as f64 - own_raw;
        let m_freq = u.master_ref_freq_ppm.unwrap_or(0.0);
        let target = m_off + (ref_now - u.server_time_us as f64) * m_freq * 1e-6;
        let own = own_raw + self.clock.correction_at(host_us);
        if let Some(f) = est.freq_ppm {
            self.clock.set_freq(host_us, m_freq - f);
        }
        // ε: the sum of both estimates' bounds (the master's carried here from the update's
        // time), then
        // both frequency bounds (the master's taken as ours: one path, one probe rate) and the
        // wander allowance per µs until the next correction.
        match u.master_ref_error_us {
            Some(m_err) => {
                let carried = (ref_now - u.server_time_us as f64).abs() * WANDER_PPM * 1e-6;
                let error = est.error_at(raw) + m_err as f64 + carried;
                let rate = match est.freq_ppm {
                    Some(_) => 2.0 * est.freq_error_ppm() + WANDER_PPM,
                    None => est.freq_error_ppm(),
                };
                self.bound.set(host_us, error, rate);
            }
            None => self.bound.clear(),
        }
        Some((target - own).round() as i64)
    }

    /// Fallback without reference offsets: the master time through a min-delay filter, kept
    /// against the host clock, which our own corrections do not move.
    fn filtered_offset(&mut self, u: &MasterUpdate, host_us: i64) -> i64 {
        if self.filter_for != Some((u.server_id, u.master_id)) {
            self.filter.clear();
            self.filter_for = Some((u.server_id, u.master_id));
        }
        let master_minus_host = self.filter.push(u.master_time_us - host_us);
        host_us + master_minus_host - self.clock.now_at(host_us)
    }

    /// Applies a correction; `confirms` says whether a small one may mark the clock synced.
    /// Corrects the clock by `action` (the measured target-minus-local offset is `offset_us`),
    /// in answer to the message stamped `cause`. `confirms`: whether a small offset may mark
    /// the clock synced.
    fn apply(
        &mut self,
        host_us: i64,
        offset_us: i64,
        action: Action,
        confirms: bool,
        cause: &Stamp,
    ) -> UpdateOutcome {
        let was_synced = self.synced;
        if confirms && offset_us.abs() < SYNCED_US {
            self.synced = true;
        }
        if was_synced {
            self.young = self.young.saturating_add(1);
        } else {
            self.young = 0;
        }
        self.corrected_at_us = Some(host_us);
        match action {
            Action::Step(delta) => {
                // The initial steps toward sync are expected; a step after it is what
                // `max_step_us` tells. Only one beyond the step threshold is worth an event:
                // `naive` steps a synced clock on every update, by a few ms.
                if was_synced {
                    self.max_step_us = self.max_step_us.max(delta.abs());
                }
                self.clock.step(host_us, delta);
                self.stats.steps += 1;
                if was_synced && delta.abs() > self.discipline.config.step_threshold_us {
                    let data = BTreeMap::from([("step_us".to_string(), delta.into())]);
                    let text = format!("stepped {:+.6} s to follow the master", delta as f64 / 1e6);
                    self.record(EventKind::ClockStepped, text, data, Some(cause), host_us);
                }
            }
            Action::Slew { delta_us, rate_ppm } => self.clock.slew(host_us, delta_us, rate_ppm),
        }
        if self.synced && !was_synced {
            let data = BTreeMap::from([("offset_us".to_string(), offset_us.into())]);
            let text = format!("synced: within {} µs of the master", offset_us.abs());
            self.record(EventKind::ClockSynced, text, data, Some(cause), host_us);
        }
        self.stats.updates_applied += 1;
        UpdateOutcome::Applied { offset_us, action }
    }

    /// An operator's command received at host time `host_us`: set or shift this clock, once.
    /// The clock counts as not synced afterwards, so coming back to the master is an initial
    /// sync (stepped), not a step of a synced clock.
    pub fn on_set_time(&mut self, t: &SetTime, host_us: i64) -> UpdateOutcome {
        if t.client_id != self.id {
            return UpdateOutcome::NotForMe;
        }
        if self.applied_ops.contains(&t.op_id) {
            self.stats.updates_ignored += 1;
            return UpdateOutcome::Stale;
        }
        if self.applied_ops.len() == REMEMBERED_OPS {
            self.applied_ops.pop_front();
        }
        self.applied_ops.push_back(t.op_id);
        let delta = match t.change {
            TimeChange::Absolute { time_us } => time_us - self.clock.now_at(host_us),
            TimeChange::Shift { shift_us } => shift_us,
        };
        let data = BTreeMap::from([
            ("step_us".to_string(), delta.into()),
            ("op_id".to_string(), t.op_id.to_string().into()),
        ]);
        let text = format!("set by the operator: stepped {:+.6} s", delta as f64 / 1e6);
        self.record(EventKind::ClockStepped, text, data, Some(&t.stamp), host_us);
        self.synced = false;
        self.ref_synced = false;
        self.held_since = None;
        self.bound.clear();
        // A master on NTP upstreams starts over with them: it returns to their time.
        self.follow.stop();
        self.clock.step(host_us, delta);
        self.stats.steps += 1;
        self.stats.time_sets += 1;
        UpdateOutcome::Applied {
            offset_us: delta,
            action: Action::Step(delta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ntp;
    use crate::core::protocol::{BerkeleyAdjust, BerkeleyPoll, ProbeReply};

    /// Whether `out` applied a step.
    fn stepped(out: &UpdateOutcome) -> bool {
        matches!(
            out,
            UpdateOutcome::Applied {
                action: Action::Step(_),
                ..
            }
        )
    }

    const S: i64 = 1_000_000;
    const SERVER: u128 = 500;

    fn core(id: u128, offset_us: i64, drift_ppm: f64) -> ClientCore {
        ClientCore::new(
            Uuid::from_u128(id),
            "10.0.0.9".parse().unwrap(),
            VirtualClock::new(0, offset_us, drift_ppm),
            Discipline::default(),
            0,
            crate::core::logical::DEFAULT_MAX_OFFSET_US,
        )
    }

    fn update(seq: u64, master: u128, master_time_us: i64) -> MasterUpdate {
        MasterUpdate {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(SERVER),
            epoch: 1,
            seq,
            master_id: Uuid::from_u128(master),
            master_ip: "10.0.0.1".parse().unwrap(),
            master_time_us,
            server_time_us: 0,
            algorithm: Algorithm::Master,
            master_ref_offset_us: None,
            master_ref_freq_ppm: None,
            master_stratum: Some(ntp::LOCAL_STRATUM),
            master_ref_error_us: None,
            stamp: Stamp::default(),
        }
    }

    #[test]
    fn reports_and_ntp_answers_carry_stratum_and_reference() {
        let mut c = core(2, 5_000, 0.0);
        let r = c.report(1_000_000);
        assert_eq!(
            (r.stratum, r.reference),
            (Some(ntp::UNSYNCED_STRATUM), None)
        );
        // A follower of a master at stratum 12: 13, naming the master's address, once synced.
        for (seq, at) in [(1, 2_000_000), (2, 3_000_000)] {
            let mut u = update(seq, 1, at);
            u.master_stratum = Some(12);
            c.on_update(&u, at);
        }
        let s = c.ntp_source(3_000_000);
        assert!(s.synced);
        assert_eq!((s.stratum, s.reference_id), (13, [10, 0, 0, 1]));
        let r = c.report(3_000_000);
        assert_eq!(
            (r.stratum, r.reference.as_deref()),
            (Some(13), Some("10.0.0.1"))
        );
        // The master: the local stratum, `LOCL`, no delay.
        let mut m = core(1, 0, 0.0);
        m.on_update(&update(1, 1, 1_000_000), 1_000_000);
        let s = m.ntp_source(1_500_000);
        assert_eq!(
            (s.stratum, s.reference_id, s.root_delay_us),
            (10, ntp::LOCAL_REFID, 0)
        );
        assert_eq!(m.report(1_500_000).reference.as_deref(), Some("LOCL"));
    }

    #[test]
    fn a_master_follows_its_upstream_and_runs_free_when_it_goes_silent() {
        use crate::core::ntp::{ntp_from_unix_us, Packet};
        let mut m = core(1, 3_600_000_000, 0.0);
        m.set_upstreams(&["192.0.2.5:123".to_string()]);
        assert!(!m.wants_upstreams(), "not master yet");
        m.on_update(&update(1, 1, 1_000_000), 1_000_000);
        assert!(m.wants_upstreams());
        m.upstream_resolved(0, "192.0.2.5".parse().unwrap());
        // The upstream's time is the host clock; replies after a 200 µs round trip.
        let reply = |m: &mut ClientCore, at: i64| {
            let sent = 0xabcd_0000 + at as u64;
            let p = Packet {
                version: 4,
                mode: 4,
                stratum: 2,
                origin_ts: sent,
                receive_ts: ntp_from_unix_us(at + 100),
                transmit_ts: ntp_from_unix_us(at + 100),
                ..Packet::default()
            };
            m.on_upstream_packet(0, &p.encode(), sent, at, at + 200)
        };
        let first = reply(&mut m, 2_000_000);
        assert!(
            matches!(first, UpstreamReply::Taken(Some(UpdateOutcome::Applied { action: Action::Step(d), .. })) if (d + 3_600_000_000).abs() < 10),
            "an hour off: stepped back at once: {first:?}"
        );
        reply(&mut m, 3_000_000);
        let s = m.ntp_source(3_000_500);
        assert_eq!((s.stratum, s.reference_id), (3, [192, 0, 2, 5]));
        assert!((m.now_at(3_000_500) - 3_000_500).abs() < 10);
        assert_eq!(
            m.report(3_000_500).reference.as_deref(),
            Some("192.0.2.5:123")
        );
        // Silent: after a few missed polls the master runs free, and says so.
        for _ in 0..crate::core::upstream::UNREACHABLE_AFTER {
            m.on_upstream_missed(0);
        }
        let s = m.ntp_source(8_000_000);
        assert_eq!((s.stratum, s.reference_id), (10, ntp::LOCAL_REFID));
        assert_eq!(m.report(8_000_000).reference.as_deref(), Some("LOCL"));
        // A bogus answer (wrong origin) counts as a miss, never as time.
        let p = Packet {
            mode: 4,
            stratum: 2,
            origin_ts: 1,
            transmit_ts: 5,
            ..Packet::default()
        };
        assert_eq!(
            m.on_upstream_packet(0, &p.encode(), 2, 9_000_000, 9_000_100),
            UpstreamReply::Unusable
        );
    }

    /// Answers a probe from a reference clock equal to the host clock, with the given one-way
    /// delays, and feeds the reply back.
    fn probe_round(c: &mut ClientCore, host: i64, up: i64, down: i64) {
        answer(c, host, up, down).unwrap();
    }

    /// [`probe_round`], saying whether the reply made a sample.
    pub(super) fn answer(
        c: &mut ClientCore,
        host: i64,
        up: i64,
        down: i64,
    ) -> Option<crate::core::clock::Sample> {
        let p = c.probe(host);
        let t2 = host + up;
        let reply = ProbeReply {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(SERVER),
            epoch: 1,
            client_id: c.id,
            seq: p.seq,
            t1_us: p.t1_us,
            t2_us: t2,
            t3_us: t2 + 10,
            stamp: Stamp::default(),
        };
        c.on_probe_reply(&reply, t2 + 10 + down)
    }

    #[test]
    fn reports_carry_clock_master_and_reference_offset() {
        let mut c = core(1, 250, 0.0);
        let r = c.report(10 * S);
        assert_eq!(
            (r.seq, r.time_us, r.true_offset_us),
            (1, 10 * S + 250, Some(250))
        );
        assert_eq!(
            (r.master_id, r.ref_offset_us, r.max_step_us),
            (None, None, None)
        );
        for i in 0..RESYNC_SAMPLES as i64 {
            probe_round(&mut c, 10 * S + i * 1000, 100, 100);
        }
        c.on_update(&update(1, 7, 11 * S), 11 * S);
        let r = c.report(11 * S);
        assert_eq!(r.seq, 2);
        assert_eq!(r.master_id, Some(Uuid::from_u128(7)));
        assert_eq!(r.master_time_us, Some(11 * S));
        // Reference = host; after the update the clock is slewing toward it, so ref offset = 250
        // minus what was slewed so far (nothing yet at the same instant).
        assert_eq!(r.ref_offset_us, Some(250));
    }

    #[test]
    fn master_algorithm_corrects_by_offset_difference_and_matches_frequency() {
        // Client: 2 s behind the host, oscillator +40 ppm. Master: 3 ms ahead of the reference,
        // running 10 ppm fast. Reference = host clock.
        let mut c = core(1, -2 * S, 40.0);
        for i in 0..40 {
            // Queueing noise on both legs; the trusted (fastest) samples are nearly symmetric.
            probe_round(&mut c, i * S / 2, 150 + (i % 3) * 20, 150 + (i % 5) * 20);
        }
        let mut u = update(1, 7, 0);
        let t = 20 * S;
        u.server_time_us = t - 300; // sent 300 µs ago: the age must not matter
        u.master_ref_offset_us = Some(3000);
        u.master_ref_freq_ppm = Some(10.0);
        let out = c.on_update(&u, t);
        assert!(stepped(&out), "{out:?}");
        let master_at = |h: i64| 3000.0 + (h - (t - 300)) as f64 * 10e-6;
        let err = c.clock.offset_at(t) - master_at(t);
        assert!(err.abs() < 30.0, "error after the step: {err} µs");
        // 100 s later, with no further update, frequency keeps it there.
        let later = t + 100 * S;
        let err = c.clock.offset_at(later) - master_at(later);
        assert!(err.abs() < 60.0, "drifted by {err} µs in 100 s");
    }

    #[test]
    fn falls_back_to_filtered_master_time_without_reference_offsets() {
        let mut c = core(1, 0, 0.0);
        // Master = host + 1 ms. First update arrives after 100 µs, later ones after 3 ms.
        c.on_update(&update(1, 7, S + 1000), S + 100);
        for i in 2..6 {
            let h = i * S;
            let before = c.now_at(h);
            let out = c.on_update(&update(i as u64, 7, h - 3000 + 1000), h);
            let UpdateOutcome::Applied { offset_us, .. } = out else {
                panic!("{out:?}")
            };
            assert_eq!(offset_us, h + 900 - before, "least-delayed sample wins");
        }
        assert_eq!(c.now_at(10 * S), 10 * S + 900);
    }

    #[test]
    fn naive_sets_the_clock_to_the_master_time() {
        let mut c = core(1, 5000, 0.0);
        let mut u = update(1, 7, S - 777);
        u.algorithm = Algorithm::Naive;
        assert_eq!(
            c.on_update(&u, S),
            UpdateOutcome::Applied {
                offset_us: -5777,
                action: Action::Step(-5777)
            }
        );
        assert_eq!(c.now_at(S), S - 777);
    }

    #[test]
    fn only_a_step_beyond_the_threshold_of_a_synced_clock_is_an_event() {
        let mut c = core(1, 5000, 0.0);
        let naive = |seq, t| {
            let mut u = update(seq, 7, t);
            u.algorithm = Algorithm::Naive;
            u
        };
        c.on_update(&naive(1, S), S); // the initial step: expected, no event
        c.on_update(&naive(2, 2 * S + 300), 2 * S); // synced now
        c.on_update(&naive(3, 3 * S - 3_000), 3 * S); // naive's usual few-ms step
        let stepped = |c: &mut ClientCore| {
            c.report(4 * S)
                .events
                .iter()
                .filter(|e| e.kind == EventKind::ClockStepped)
                .count()
        };
        assert_eq!(stepped(&mut c), 0);
        assert_eq!(c.report(4 * S).max_step_us, Some(3_300), "still told");
        c.on_update(&naive(4, 5 * S + 200_000), 5 * S); // 200 ms: beyond 128 ms
        assert_eq!(stepped(&mut c), 1);
    }

    #[test]
    fn master_does_not_correct_itself_but_knows_it_is_master() {
        let mut c = core(7, 123, 0.0);
        assert_eq!(
            c.on_update(&update(1, 7, 999 * S), S),
            UpdateOutcome::IAmMaster
        );
        assert_eq!(c.now_at(S), S + 123);
        assert_eq!(c.report(S).master_id, Some(Uuid::from_u128(7)));
    }

    /// A client synced at host time S by a reference-offset update of master 2, against server
    /// SERVER (10 probe rounds before it).
    fn synced_by_reference() -> ClientCore {
        let mut c = core(1, 0, 0.0);
        let n = RESYNC_SAMPLES as i64;
        for i in 0..n {
            probe_round(&mut c, i * S / n, 100, 100);
        }
        let mut u = update(1, 2, 0);
        u.master_ref_offset_us = Some(0);
        u.server_time_us = S;
        assert!(matches!(c.on_update(&u, S), UpdateOutcome::Applied { .. }));
        c
    }

    #[test]
    fn holds_over_a_change_of_reference_instead_of_falling_back() {
        let mut c = synced_by_reference();
        // A new leader: its updates name another server, whose clock we have no samples of.
        let mut v = update(2, 2, 5_000);
        v.server_id = Uuid::from_u128(SERVER + 7);
        v.master_ref_offset_us = Some(0);
        let before = (c.now_at(2 * S), c.now_at(3 * S));
        assert_eq!(c.on_update(&v, 2 * S), UpdateOutcome::Held);
        assert_eq!(
            (c.now_at(2 * S), c.now_at(3 * S)),
            before,
            "clock untouched"
        );
        // Too long without a usable reference (updates on time all along): the fallback takes
        // over, by slewing only.
        let late = 2 * S + MAX_HOLDOVER.as_micros() as i64;
        for (seq, at) in (3..).zip((3 * S..late).step_by(S as usize)) {
            v.seq = seq;
            assert_eq!(c.on_update(&v, at), UpdateOutcome::Held);
        }
        v.seq = 1000;
        assert!(matches!(
            c.on_update(&v, late),
            UpdateOutcome::Applied {
                action: Action::Slew { .. },
                ..
            }
        ));
    }

    #[test]
    fn epsilon_adds_both_bounds_grows_until_the_next_correction_and_clears_on_set_time() {
        // Synced by an update without the master's bound: no ε.
        let mut c = synced_by_reference();
        let mut u = update(1, 2, 0);
        u.master_ref_offset_us = Some(0);
        u.server_time_us = S;
        assert_eq!(c.report(S).max_error_us, None);
        assert!(
            c.report(S).ref_error_us.is_some(),
            "its own estimate's bound"
        );
        u.seq = 2;
        u.master_ref_error_us = Some(30);
        c.on_update(&u, S + 1000);
        let e0 = c.max_error(S + 1000).unwrap();
        // The sum of the two bounds: slow path biases keep their errors from being independent.
        let own = c.ref_error(S + 1000).unwrap();
        assert!(
            e0 >= own + 30.0 - 0.01 && e0 < own + 31.0,
            "ε {e0}, own {own}"
        );
        assert_eq!(c.report(S + 1000).max_error_us, Some(e0.ceil() as u64));
        // No frequency yet (the samples span 1 s): it grows at 500 ppm until the next update.
        let e1 = c.max_error(2 * S + 1000).unwrap();
        assert!((e1 - e0 - 500.0).abs() < 1.0, "{e0} → {e1}");
        // A new leader: held over, ε keeps growing.
        let mut v = update(1, 2, 0);
        v.server_id = Uuid::from_u128(SERVER + 7);
        assert_eq!(c.on_update(&v, 2 * S), UpdateOutcome::Held);
        assert!(c.max_error(3 * S).unwrap() > e1);
        // An operator's set_time: nothing bounds the clock any more.
        let t = SetTime {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(SERVER),
            epoch: 1,
            client_id: c.id,
            op_id: Uuid::from_u128(77),
            change: TimeChange::Shift { shift_us: 5_000 },
            stamp: Stamp::default(),
        };
        c.on_set_time(&t, 3 * S);
        assert_eq!(c.max_error(3 * S), None);
        // The master's ε is 0.
        let mut m = core(2, 0, 0.0);
        m.on_update(&update(1, 2, 0), S);
        assert_eq!(m.report(S).max_error_us, Some(0));
    }

    /// All replicas restarted: the first updates of the new leader carry no reference offset
    /// and a fallback master time wrong by the time a report waited in the queue (−284 ms seen).
    /// A synced client holds over however long the outage was, and is never stepped.
    #[test]
    fn a_synced_client_never_steps_on_a_fallback_update() {
        let mut c = synced_by_reference();
        // 20 s without any leader, then a new one whose update is 284 ms off.
        let back = 21 * S;
        let mut v = update(1, 2, back - 284_000);
        v.server_id = Uuid::from_u128(SERVER + 9);
        let before = c.now_at(back + S);
        assert_eq!(c.on_update(&v, back), UpdateOutcome::Held);
        assert_eq!(c.now_at(back + S), before, "clock untouched");
        // Its next updates, still without reference offsets, a minute on: slewed, not stepped.
        for (seq, at) in [(2, back + 30 * S), (3, back + 61 * S), (4, back + 62 * S)] {
            v.seq = seq;
            v.master_time_us = at - 284_000;
            let out = c.on_update(&v, at);
            assert!(
                matches!(
                    out,
                    UpdateOutcome::Held
                        | UpdateOutcome::Applied {
                            action: Action::Slew { .. },
                            ..
                        }
                ),
                "{out:?}"
            );
        }
        assert_eq!(c.stats.steps, 0);
        assert_eq!(c.report(back + 63 * S).max_step_us, Some(0));
        // Then no leader for two minutes: the next leader's first updates are held again.
        let later = back + 180 * S;
        v.seq = 5;
        v.master_time_us = later - 284_000;
        let before = c.now_at(later + S);
        assert_eq!(c.on_update(&v, later), UpdateOutcome::Held);
        assert_eq!(c.now_at(later + S), before, "clock untouched");
    }

    #[test]
    fn lower_epochs_are_fenced_off_for_good_and_wild_jumps_refused() {
        let mut c = core(1, 0, 0.0);
        assert!(c.admit(5, 0));
        assert!(c.admit(6, S), "a new leader's epoch is followed");
        assert!(!c.admit(5, 2 * S), "a deposed leader is ignored");
        assert!(c.admit(6, 3 * S));
        assert_eq!((c.epoch(), c.stats.stale_epoch), (Some(6), 1));
        // However long the silence: a lower epoch is never followed again.
        assert!(!c.admit(5, 3600 * S));
        // A jump of more than MAX_EPOCH_STEP would fence off every real leader: refused.
        assert!(!c.admit(6 + MAX_EPOCH_STEP + 1, 3601 * S));
        assert!(c.admit(6 + MAX_EPOCH_STEP, 3602 * S));
        let r = c.report(3603 * S);
        assert_eq!(r.epoch, Some(6 + MAX_EPOCH_STEP));
        assert_eq!(r.stale_epoch_msgs, Some(3));
        // One event per deposed epoch, not one per message.
        let refusals = r
            .events
            .iter()
            .filter(|e| e.kind == EventKind::FencingRefused)
            .count();
        assert_eq!(refusals, 1, "{:?}", r.events);
    }

    #[test]
    fn set_time_applies_once_to_its_client_and_unsyncs_it() {
        let mut c = core(1, 0, 0.0);
        c.on_update(&update(1, 7, S), S);
        c.on_update(&update(2, 7, 2 * S), 2 * S);
        assert!(c.report(2 * S).max_step_us.is_some(), "synced");
        let mut t = SetTime {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(SERVER),
            epoch: 1,
            client_id: Uuid::from_u128(2),
            op_id: Uuid::from_u128(77),
            change: TimeChange::Shift { shift_us: 30 * S },
            stamp: Stamp {
                lt: 40,
                ..Stamp::default()
            },
        };
        assert_eq!(c.on_set_time(&t, 3 * S), UpdateOutcome::NotForMe);
        t.client_id = c.id;
        assert!(stepped(&c.on_set_time(&t, 3 * S)));
        assert_eq!(c.now_at(3 * S), 33 * S, "shifted by 30 s");
        assert_eq!(c.on_set_time(&t, 4 * S), UpdateOutcome::Stale, "once");
        let r = c.report(4 * S);
        assert_eq!(r.max_step_us, None, "not synced after an operator's change");
        let step = r
            .events
            .iter()
            .find(|e| e.kind == EventKind::ClockStepped)
            .expect("a step event");
        assert_eq!(step.cause.as_ref().map(|s| s.lt), Some(40));
        // Absolute: set to a given time.
        t.op_id = Uuid::from_u128(78);
        t.change = TimeChange::Absolute { time_us: 100 * S };
        c.on_set_time(&t, 5 * S);
        assert_eq!(c.now_at(5 * S), 100 * S);
        // The next update brings it back (stepped: it is an initial sync again).
        let out = c.on_update(&update(3, 7, 6 * S), 6 * S);
        assert!(stepped(&out), "{out:?}");
        c.on_update(&update(4, 7, 7 * S), 7 * S);
        assert_eq!(
            c.report(7 * S).max_step_us,
            Some(0),
            "synced again, and the way back was not a step of a synced clock"
        );
    }

    #[test]
    fn reports_carry_logical_time_and_events() {
        // An hour off the reference (the servers' clock, here the host's), and so is its master.
        let hour = 3600 * S;
        let mut c = core(1, hour, 0.0);
        let a = c.report(S);
        let b = c.report(2 * S);
        assert!(a.stamp.lt < b.stamp.lt);
        assert_eq!(a.stamp.hlc, None, "no HLC without a probe estimate");
        c.on_update(&update(1, 7, 3 * S - hour), 3 * S); // stepped an hour back
        c.on_update(&update(2, 7, 3 * S + S / 2 - hour), 3 * S + S / 2); // synced
        let synced = c.report(3 * S + S / 2);
        assert_eq!(synced.stamp.hlc, None, "synced, but no estimate yet");
        assert!(synced.stamp.lt > b.stamp.lt);
        for i in 0..25 {
            probe_round(&mut c, 4 * S + i * S / 10, 100, 100);
        }
        let r = c.report(7 * S);
        let hlc = r
            .stamp
            .hlc
            .expect("an HLC once the probe estimate is ready");
        assert!(
            (hlc.us - 7 * S).abs() < 1_000,
            "on the reference's timebase, not the master's: {hlc}"
        );
        assert!(
            synced
                .events
                .iter()
                .any(|e| e.kind == EventKind::ClockSynced),
            "{:?}",
            synced.events
        );
        assert!(synced.events.iter().all(|e| e.stamp.lt < synced.stamp.lt));
    }

    #[test]
    fn a_new_term_of_the_same_server_restarts_its_sequence() {
        let mut c = core(1, 0, 0.0);
        let mut u = update(50, 2, 0);
        assert!(!matches!(c.on_update(&u, S), UpdateOutcome::Stale));
        u.epoch = 2;
        u.seq = 1;
        assert!(!matches!(c.on_update(&u, 2 * S), UpdateOutcome::Stale));
        assert_eq!(c.on_update(&u, 3 * S), UpdateOutcome::Stale, "a duplicate");
    }

    #[test]
    fn stale_and_duplicate_updates_ignored() {
        let mut c = core(1, 0, 0.0);
        c.on_update(&update(5, 7, S), S);
        assert_eq!(c.on_update(&update(5, 7, 9 * S), S), UpdateOutcome::Stale);
        assert_eq!(c.on_update(&update(4, 7, 9 * S), S), UpdateOutcome::Stale);
        let mut u = update(1, 7, S + 10);
        u.server_id = Uuid::from_u128(501);
        assert!(matches!(c.on_update(&u, S), UpdateOutcome::Applied { .. }));
    }

    #[test]
    fn probe_replies_match_pending_probes_only() {
        let mut c = core(1, 0, 0.0);
        let p = c.probe(0);
        let mut r = ProbeReply {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(SERVER),
            epoch: 1,
            client_id: c.id,
            seq: p.seq + 1,
            t1_us: 0,
            t2_us: 100,
            t3_us: 110,
            stamp: Stamp::default(),
        };
        assert_eq!(c.on_probe_reply(&r, 200), None, "unknown seq");
        r.seq = p.seq;
        assert!(c.on_probe_reply(&r, 200).is_some());
        assert_eq!(c.on_probe_reply(&r, 200), None, "answered once");
        let d = c.probe_interval();
        assert!(d >= PROBE_FAST / 2 && d <= PROBE_FAST * 3 / 2, "{d:?}");
    }

    fn adj(round: u64, adjust_us: i64) -> BerkeleyAdjust {
        BerkeleyAdjust {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(SERVER),
            epoch: 1,
            client_id: Uuid::from_u128(1),
            round,
            adjust_us,
            outlier: false,
            stamp: Stamp::default(),
        }
    }

    #[test]
    fn a_first_berkeley_round_does_not_count_as_synced() {
        let mut c = core(1, 0, 0.0);
        c.on_adjust(&adj(1, 0), S);
        let out = c.on_adjust(&adj(2, -57_000), 3 * S);
        assert!(
            matches!(
                out,
                UpdateOutcome::Applied {
                    action: Action::Step(-57_000),
                    ..
                }
            ),
            "{out:?}: not yet synced, so stepped"
        );
        c.on_adjust(&adj(3, 10), 5 * S);
        let out = c.on_adjust(&adj(4, -5_000), 7 * S);
        assert!(
            matches!(
                out,
                UpdateOutcome::Applied {
                    action: Action::Slew { .. },
                    ..
                }
            ),
            "{out:?}: synced by a consecutive small round, so slewed"
        );
    }

    #[test]
    fn berkeley_adjusts_and_learns_frequency() {
        let mut c = core(1, 0, 20.0);
        let poll = c.on_poll(
            &BerkeleyPoll {
                v: PROTOCOL_VERSION,
                server_id: Uuid::from_u128(SERVER),
                epoch: 1,
                round: 1,
                poll: 3,
                stamp: Stamp::default(),
            },
            5 * S,
        );
        assert_eq!((poll.round, poll.poll, poll.time_us), (1, 3, 5 * S + 100));
        c.on_adjust(&adj(1, -100), 5 * S);
        // Ten seconds later the clock has drifted +200 µs; the coordinator says −200.
        c.on_adjust(&adj(2, -200), 15 * S);
        assert!(
            (c.clock.freq_ppm() - (-6.0)).abs() < 1e-9,
            "{}",
            c.clock.freq_ppm()
        );
        assert_eq!(c.on_adjust(&adj(2, 5), 16 * S), UpdateOutcome::Stale);
        let mut restarted = adj(1, 5);
        restarted.server_id = Uuid::from_u128(SERVER + 1);
        assert!(
            matches!(
                c.on_adjust(&restarted, 17 * S),
                UpdateOutcome::Applied { .. }
            ),
            "a restarted coordinator's round 1 is applied"
        );
        assert!(
            c.report(16 * S).max_step_us.is_some(),
            "synced after a sub-ms adjustment"
        );
    }

    #[test]
    fn a_young_clock_steps_a_large_offset_only_when_it_persists() {
        let mut c = synced_by_reference();
        // One update whose master is 12 ms ahead of what the estimate says: slewed, not
        // stepped (a bad estimate comes and goes).
        let mut u = update(2, 2, 0);
        u.server_time_us = 2 * S;
        u.master_ref_offset_us = Some(12_000);
        assert!(
            !stepped(&c.on_update(&u, 2 * S)),
            "one large offset is slewed"
        );
        // Back to agreeing: the run starts over.
        u.seq = 3;
        u.master_ref_offset_us = Some(0);
        u.server_time_us = 3 * S;
        assert!(!stepped(&c.on_update(&u, 3 * S)));
        // Large and the same way, update after update: a real error, stepped on the third.
        let mut steps = vec![];
        for k in 0..MAKESTEP_CONFIRM as i64 {
            u.seq = 4 + k as u64;
            u.server_time_us = (4 + k) * S;
            u.master_ref_offset_us = Some(-15_000);
            steps.push(stepped(&c.on_update(&u, (4 + k) * S)));
        }
        assert_eq!(steps, [false, false, true]);
        assert!(c.report(7 * S).max_step_us.unwrap() > MAKESTEP_US);
    }

    #[test]
    fn max_step_counts_only_steps_after_first_sync() {
        let mut c = core(1, -3600 * S, 0.0);
        c.on_update(&update(1, 7, S), S); // the big initial step
        assert_eq!(c.report(S).max_step_us, None);
        c.on_update(&update(2, 7, 2 * S + 300), 2 * S); // synced: slews 300 µs
        assert_eq!(c.report(2 * S).max_step_us, Some(0));
        let mut u = update(3, 7, 3 * S + 300 + 200_000);
        u.algorithm = Algorithm::Naive; // steps whatever the size
        c.on_update(&u, 3 * S);
        assert_eq!(c.report(3 * S).max_step_us, Some(200_000));
    }
}
