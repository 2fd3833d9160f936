//! The scheduler: once per tick, make sure there is a live master and broadcast its time.
//!
//! [`Scheduler::tick`] is the decision of one tick against the report store (which it reads, and
//! where it records a new master); `run` is its loop for one leadership term: a broker session
//! that ticks and publishes what the tick returns.
//!
//! The broadcast time is extrapolated, not echoed: the server knows the master's clock minus its
//! own from the master's last report (measured at receipt), so `master_time = server_now +
//! that offset` is the master's clock *now*, not as of its last report. What remains is
//! transit time (report and update hops, a few hundred µs on one host), which the delay
//! compensation of a later algorithm removes.

use super::commands::SetTimeRequest;
use super::context::{EventData, ServerContext};
use super::metrics::{Counter, Metrics};
use crate::broker;
use crate::cache::ReportStore;
use crate::core::clock::estimator::WANDER_PPM;
use crate::core::clock::{Clock, MinDelayFilter};
use crate::core::master_election::{decide, Decision, HANDOVER_SCAN};
use crate::core::protocol::{
    Algorithm, EventKind, MasterRecord, MasterUpdate, SetTime, Stamp, StoredReport, ToClient,
    PROTOCOL_VERSION, UPDATES_EXCHANGE,
};
use crate::error::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// The master's clock minus the reference (this server's clock) at `now`, carried forward from
/// its last report with the frequency it reported: (offset, frequency, error bound). The bound is
/// the report's `ref_error_us` grown by [`WANDER_PPM`] for the time carried.
fn master_reference(
    master: &StoredReport,
    now: i64,
    server_id: Uuid,
) -> Option<(i64, Option<f64>, Option<u64>)> {
    let r = &master.report;
    // An offset against another server's clock (the leader before us) is not against ours.
    if r.ref_server_id.is_some_and(|s| s != server_id) {
        return None;
    }
    let off = r.ref_offset_us?;
    let freq = r.ref_freq_ppm;
    // The report's time on the reference clock.
    let at = r.time_us - off;
    let carried = off as f64 + (now - at) as f64 * freq.unwrap_or(0.0) * 1e-6;
    let grown = (now - at).unsigned_abs() as f64 * WANDER_PPM * 1e-6;
    let error = r.ref_error_us.map(|e| e + grown.ceil() as u64);
    Some((carried.round() as i64, freq, error))
}

/// Election and broadcast state that outlives broker sessions.
pub struct Scheduler<S, C> {
    store: S,
    clock: C,
    server_id: Uuid,
    /// The leader epoch this scheduler broadcasts for (one scheduler per term).
    epoch: u64,
    seq: u64,
    metrics: Arc<Metrics>,
    algorithm: Algorithm,
    idle: bool,
    /// An election is due and was held back one tick (see [`Scheduler::tick`]).
    election_armed: bool,
    /// Samples of (master clock − server clock) from the current master's reports.
    filter: MinDelayFilter,
    filtered: Option<(Uuid, u64)>,
    /// Events of the last ticks, for the cluster's log ([`Scheduler::take_events`]).
    events: Vec<(EventKind, String, EventData)>,
    /// When the lowest live clients were last read (to look for a lower address to hand over
    /// to).
    scanned_at: Option<i64>,
    /// How long a client stays live after its last report.
    ttl: Duration,
}

/// How many of the lowest-ranked live clients an election reads: the winner is the first, the
/// others cost nothing and show in the log.
const CANDIDATES: usize = 4;

impl<S: ReportStore, C: Clock> Scheduler<S, C> {
    pub fn new(
        store: S,
        clock: C,
        server_id: Uuid,
        metrics: Arc<Metrics>,
        algorithm: Algorithm,
        epoch: u64,
        ttl: Duration,
    ) -> Self {
        Scheduler {
            ttl,
            store,
            clock,
            server_id,
            epoch,
            seq: 0,
            metrics,
            algorithm,
            idle: false,
            election_armed: false,
            filter: MinDelayFilter::default(),
            filtered: None,
            events: Vec::new(),
            scanned_at: None,
        }
    }

    /// What the last ticks did that belongs in the event log.
    pub fn take_events(&mut self) -> Vec<(EventKind, String, EventData)> {
        std::mem::take(&mut self.events)
    }

    /// One tick: elect if needed, and return the update to broadcast (`None`: no live clients).
    pub async fn tick(&mut self) -> Result<Option<MasterUpdate>> {
        let current = self.store.master().await?;
        // The common case costs two GETs: the master is alive. Only an election, and a look for
        // a lower address to hand over to every HANDOVER_SCAN, read the live index's lowest
        // entries: the same few reads with 3 clients or 10,000.
        let mut live = Vec::new();
        let now = self.clock.now_us();
        // A held election (or hand-over) is decided on the same candidates the next tick.
        let scan = self.election_armed
            || self
                .scanned_at
                .is_none_or(|at| now - at >= HANDOVER_SCAN.as_micros() as i64);
        if let Some(cur) = &current {
            live.extend(self.store.report(&cur.id).await?);
        }
        if scan || live.is_empty() {
            // Stale members only cost memory (readers skip them): trimmed when the index is read.
            self.store.trim_live(self.ttl).await?;
            for r in self.store.live_after(None, CANDIDATES).await? {
                if !live.iter().any(|l| l.report.id == r.report.id) {
                    live.push(r);
                }
            }
            self.scanned_at = Some(now);
        }
        let master = match decide(current.as_ref(), &live) {
            Decision::NoClients => {
                self.election_armed = false;
                if !self.idle {
                    info!("no live clients; nothing to broadcast");
                    self.idle = true;
                }
                return Ok(None);
            }
            Decision::Keep(r) => {
                self.election_armed = false;
                r
            }
            // Hold every election for one tick: clients started together report within one
            // interval, and the master is sticky, so electing on the very first report would
            // make whoever reported first the master instead of the lowest address.
            Decision::Elect { .. } if !self.election_armed => {
                self.election_armed = true;
                info!(
                    candidate = %live.iter().map(|r| r.report.ip.to_string()).min().unwrap_or_default(),
                    "no live master; electing on the next tick"
                );
                return Ok(None);
            }
            // Held the same way, but the current master is alive and still broadcast meanwhile.
            Decision::HandOver { master, current } if !self.election_armed => {
                self.election_armed = true;
                info!(
                    candidate = %master.report.id,
                    candidate_ip = %master.report.ip,
                    "a lower address is synced to the master; handing over on the next tick"
                );
                current
            }
            Decision::Elect { master, previous } => {
                let why = match previous {
                    Some(p) => format!("master {p} has not reported for the TTL"),
                    None => "there was no master".to_string(),
                };
                if !self.elect(master, previous, &why).await? {
                    return Ok(None);
                }
                master
            }
            Decision::HandOver { master, current } => {
                let previous = current.report.id;
                let why = format!(
                    "it has the lowest address and is synced to master {previous}, which hands over"
                );
                if !self.elect(master, Some(previous), &why).await? {
                    return Ok(None);
                }
                master
            }
        };
        self.idle = false;
        if self.algorithm == Algorithm::Berkeley {
            // Berkeley has no master reference; the election only labels a client for people.
            return Ok(None);
        }
        self.seq += 1;
        let master_minus_server = self.master_offset(master);
        let now = self.clock.now_us();
        let (master_time_us, reference) = match self.algorithm {
            // The seed: the master's last reported time, however old.
            Algorithm::Naive => (master.report.time_us, None),
            _ => (
                now + master_minus_server,
                master_reference(master, now, self.server_id),
            ),
        };
        Ok(Some(MasterUpdate {
            v: PROTOCOL_VERSION,
            server_id: self.server_id,
            epoch: self.epoch,
            seq: self.seq,
            master_id: master.report.id,
            master_ip: master.report.ip,
            master_time_us,
            server_time_us: now,
            algorithm: self.algorithm,
            master_ref_offset_us: reference.map(|r| r.0),
            master_ref_freq_ppm: reference.and_then(|r| r.1),
            master_ref_error_us: reference.and_then(|r| r.2),
            // A newly elected master's report is still its follower's (stratum 11, or 16): until
            // it reports as master, the cluster's time is its own clock, stratum 10.
            master_stratum: if master.report.master_id == Some(master.report.id) {
                master.report.stratum
            } else {
                Some(crate::core::ntp::LOCAL_STRATUM)
            },
            stamp: Stamp::default(),
        }))
    }

    /// Records `master` as the new master and logs the election; `false` when a later leader
    /// already chose one (this term is over).
    async fn elect(
        &mut self,
        master: &StoredReport,
        previous: Option<Uuid>,
        why: &str,
    ) -> Result<bool> {
        self.election_armed = false;
        let live_clients = self.store.live_count(self.ttl).await?;
        let record = MasterRecord {
            id: master.report.id,
            ip: master.report.ip,
            elected_at_us: self.clock.now_us(),
            epoch: self.epoch,
        };
        if !self.store.set_master(&record).await? {
            info!(
                epoch = self.epoch,
                "a later leader has chosen the master; not electing"
            );
            return Ok(false);
        }
        self.metrics.inc(Counter::MasterChanges);
        info!(
            master_id = %record.id,
            master_ip = %record.ip,
            previous = ?previous,
            live_clients,
            reason = why,
            "elected new master"
        );
        let mut data = EventData::from([
            ("master_id".to_string(), record.id.to_string().into()),
            ("ip".to_string(), record.ip.to_string().into()),
            ("epoch".to_string(), self.epoch.into()),
            ("live_clients".to_string(), live_clients.into()),
            ("reason".to_string(), why.into()),
        ]);
        if let Some(p) = previous {
            data.insert("previous".to_string(), p.to_string().into());
        }
        let text = format!(
            "elected master {} ({}), the lowest IP of {live_clients} live clients: {why}",
            record.id, record.ip,
        );
        self.events.push((EventKind::MasterElected, text, data));
        Ok(true)
    }

    /// The filtered offset of the master's clock to the server's: each new report of the same
    /// master adds a sample, a new master starts a new window.
    fn master_offset(&mut self, master: &StoredReport) -> i64 {
        let (id, seq) = (master.report.id, master.report.seq);
        match self.filtered {
            Some((fid, fseq)) if fid == id && fseq == seq => {
                return self.filter.best().expect("a sample of this master");
            }
            Some((fid, fseq)) if fid == id && seq > fseq => {}
            _ => self.filter.clear(),
        }
        self.filtered = Some((id, seq));
        self.filter.push(master.offset_to_server_us())
    }
}

/// Runs the scheduler for leadership term `epoch` until `term` is cancelled: ticks, publishes
/// what the ticks return, and carries out the operator's time changes.
pub(crate) async fn run<S: ReportStore, C: Clock + Clone>(
    ctx: Arc<ServerContext<S, C>>,
    epoch: u64,
    term: CancellationToken,
) {
    let scheduler = Arc::new(tokio::sync::Mutex::new(Scheduler::new(
        ctx.store.clone(),
        ctx.clock.clone(),
        ctx.server_id,
        ctx.metrics.clone(),
        ctx.cfg.settings.algorithm,
        epoch,
        ctx.cfg.settings.ttl(),
    )));
    let url = ctx.cfg.node.amqp_url.clone();
    broker::run_sessions(&url, "ts-server scheduler", &term, |conn| {
        let (ctx, scheduler, term) = (ctx.clone(), scheduler.clone(), term.clone());
        async move {
            let ch = conn.create_channel().await?;
            broker::declare_updates_exchange(&ch).await?;
            let tick = ctx.cfg.settings.tick();
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut cache_down = false;
            let mut commands = ctx.commands.set_time_rx.lock().await;
            loop {
                tokio::select! {
                    _ = term.cancelled() => {
                        // Close the channel before the connection, or lapin logs the race.
                        let _ = ch.close(200, "shutdown".into()).await;
                        return Ok(());
                    }
                    Some(req) = commands.recv() => {
                        // The operator was already told 503 (timeout); doing it now would
                        // surprise them.
                        if req.reply.is_closed() {
                            continue;
                        }
                        let outcome = set_time(&ch, &ctx, epoch, &req).await;
                        let _ = req.reply.send(outcome);
                        continue;
                    }
                    _ = interval.tick() => {}
                }
                let mut s = scheduler.lock().await;
                let ticked = s.tick().await;
                for (kind, text, data) in s.take_events() {
                    ctx.record(kind, text, data, None);
                }
                match ticked {
                    Ok(Some(update)) => {
                        let sealed = ctx.seal_to_clients(ToClient::MasterUpdate(update))?;
                        let expiry = broker::expiry_for(tick);
                        broker::publish_raw(&ch, UPDATES_EXCHANGE, "", &sealed, Some(expiry))
                            .await?;
                        ctx.metrics.inc(Counter::UpdatesPublished);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Say it once per outage, not once per tick.
                        if !cache_down {
                            warn!(error = %e, "scheduler cannot read Redis; will retry every tick");
                            cache_down = true;
                        }
                        continue;
                    }
                }
                if cache_down {
                    info!("scheduler reached Redis again");
                    cache_down = false;
                }
            }
        }
    })
    .await;
}

/// How long an operator's time change may wait in a client's queue: a command is meant for
/// now, not for whenever a client comes back.
const SET_TIME_EXPIRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Publishes an operator's time change (signed, like every leader message) to every client;
/// only the client it names applies it. Refused for a client that is not live.
async fn set_time<S: ReportStore, C: Clock>(
    ch: &lapin::Channel,
    ctx: &ServerContext<S, C>,
    epoch: u64,
    req: &SetTimeRequest,
) -> Result<(), String> {
    let live = ctx
        .store
        .report(&req.client_id)
        .await
        .map_err(|e| format!("cannot read Redis: {e}"))?;
    if live.is_none() {
        return Err(format!("no live client {}", req.client_id));
    }
    ctx.observe(&req.cause);
    let msg = ToClient::SetTime(SetTime {
        v: PROTOCOL_VERSION,
        server_id: ctx.server_id,
        epoch,
        client_id: req.client_id,
        op_id: req.op_id,
        change: req.change,
        stamp: Stamp::default(),
    });
    let (sealed, sent) = ctx
        .seal_to_clients_stamped(msg)
        .map_err(|e| e.to_string())?;
    broker::publish_raw(ch, UPDATES_EXCHANGE, "", &sealed, Some(SET_TIME_EXPIRY))
        .await
        .map_err(|e| format!("cannot publish: {e}"))?;
    ctx.metrics.inc(Counter::OperatorCommands);
    let data = EventData::from([
        ("client_id".to_string(), req.client_id.to_string().into()),
        ("op_id".to_string(), req.op_id.to_string().into()),
        (
            "change".to_string(),
            serde_json::to_value(req.change).expect("serializes"),
        ),
    ]);
    let text = match req.change {
        crate::core::protocol::TimeChange::Absolute { time_us } => format!(
            "operator set client {} to {}",
            req.client_id,
            crate::core::clock::format_us(time_us)
        ),
        crate::core::protocol::TimeChange::Shift { shift_us } => format!(
            "operator shifted client {} by {:+.6} s",
            req.client_id,
            shift_us as f64 / 1e6
        ),
    };
    // The event is the send: it carries the message's stamp, so the client's step (which
    // merges that stamp) always comes after it.
    ctx.record_at(
        sent,
        EventKind::TimeSet,
        text,
        data,
        Some(req.cause.clone()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryStore;
    use crate::core::clock::ManualClock;
    use crate::core::protocol::TimeReport;

    const S: i64 = 1_000_000;
    const TTL: Duration = Duration::from_secs(3);

    fn report(n: u128, ip: &str, time_us: i64, received_at_us: i64) -> StoredReport {
        StoredReport {
            report: TimeReport::new(Uuid::from_u128(n), ip.parse().unwrap(), time_us, 1),
            received_at_us,
        }
    }

    fn setup() -> (
        ManualClock,
        MemoryStore<ManualClock>,
        Scheduler<MemoryStore<ManualClock>, ManualClock>,
    ) {
        let clock = ManualClock::new(1000 * S);
        let store = MemoryStore::new(clock.clone());
        let sched = Scheduler::new(
            store.clone(),
            clock.clone(),
            Uuid::from_u128(99),
            Arc::default(),
            Algorithm::Master,
            1,
            TTL,
        );
        (clock, store, sched)
    }

    /// Client 2 (10.0.0.20) reported, and the first tick held its election.
    async fn with_one_client_held() -> (
        ManualClock,
        MemoryStore<ManualClock>,
        Scheduler<MemoryStore<ManualClock>, ManualClock>,
    ) {
        let (clock, store, mut s) = setup();
        let now = clock.now_us();
        store
            .store_reports(&[report(2, "10.0.0.20", now, now)], TTL)
            .await
            .unwrap();
        assert_eq!(s.tick().await.unwrap(), None, "held one tick");
        (clock, store, s)
    }

    #[tokio::test]
    async fn late_joiner_with_lower_ip_wins_the_held_election() {
        let (clock, store, mut s) = with_one_client_held().await;
        clock.advance_us(S / 2);
        let t = clock.now_us();
        store
            .store_reports(&[report(1, "10.0.0.3", t, t)], TTL)
            .await
            .unwrap();
        clock.advance_us(S / 2);
        assert_eq!(
            s.tick().await.unwrap().unwrap().master_id,
            Uuid::from_u128(1)
        );
    }

    /// After churn, a lower address than the master's joins: it is left alone until it has
    /// synced to the master, then the role is handed to it at the next scan.
    #[tokio::test]
    async fn a_synced_lower_address_takes_over_at_the_next_scan() {
        let (clock, store, mut s) = with_one_client_held().await;
        clock.advance_us(S);
        assert_eq!(
            s.tick().await.unwrap().unwrap().master_id,
            Uuid::from_u128(2)
        );
        let mut low = report(1, "10.0.0.3", clock.now_us(), clock.now_us());
        low.report.master_id = Some(Uuid::from_u128(2));
        low.report.ref_server_id = Some(Uuid::from_u128(99));
        low.report.ref_offset_us = Some(40);
        low.report.stratum = Some(crate::core::ntp::UNSYNCED_STRATUM);
        let keep = |s: Option<MasterUpdate>| s.expect("an update").master_id;
        let mut seq = 1;
        let mut fresh = |t: i64, low: &mut StoredReport| {
            seq += 1;
            let mut r2 = report(2, "10.0.0.20", t, t);
            r2.report.seq = seq;
            r2.report.ref_server_id = Some(Uuid::from_u128(99));
            r2.report.ref_offset_us = Some(0);
            low.report.seq = seq;
            low.received_at_us = t;
            [r2, low.clone()]
        };
        for _ in 0..12 {
            clock.advance_us(S);
            let t = clock.now_us();
            store.store_reports(&fresh(t, &mut low), TTL).await.unwrap();
            assert_eq!(
                keep(s.tick().await.unwrap()),
                Uuid::from_u128(2),
                "not synced yet"
            );
        }
        low.report.stratum = Some(11);
        let mut master = Uuid::from_u128(2);
        for _ in 0..12 {
            clock.advance_us(S);
            let t = clock.now_us();
            store.store_reports(&fresh(t, &mut low), TTL).await.unwrap();
            if let Some(u) = s.tick().await.unwrap() {
                master = u.master_id;
            }
        }
        assert_eq!(
            master,
            Uuid::from_u128(1),
            "handed over within a scan and a tick"
        );
        let events = s.take_events();
        assert!(
            events.last().unwrap().1.contains("hands over"),
            "{:?}",
            events.last()
        );
    }

    #[tokio::test]
    async fn idle_without_clients() {
        let (_, _, mut s) = setup();
        assert_eq!(s.tick().await.unwrap(), None);
    }

    #[tokio::test]
    async fn elects_lowest_ip_and_extrapolates_its_clock() {
        let (clock, store, mut s) = setup();
        let now = clock.now_us();
        // Client 1 (lower IP) was 5 s ahead of the server when its report arrived 0.7 s ago.
        store
            .store_reports(
                &[
                    report(1, "10.0.0.2", now - 700_000 + 5 * S, now - 700_000),
                    report(2, "10.0.0.10", now, now),
                ],
                TTL,
            )
            .await
            .unwrap();
        assert_eq!(s.tick().await.unwrap(), None, "the election waits one tick");
        let u = s.tick().await.unwrap().unwrap();
        assert_eq!(u.master_id, Uuid::from_u128(1));
        assert_eq!(u.server_time_us, now);
        assert_eq!(u.master_time_us, now + 5 * S);
        assert_eq!(u.seq, 1);
        assert_eq!(
            store.master().await.unwrap().unwrap().id,
            Uuid::from_u128(1)
        );
    }

    #[tokio::test]
    async fn silent_master_replaced_after_ttl_only() {
        let (clock, store, mut s) = setup();
        let now = clock.now_us();
        store
            .store_reports(&[report(1, "10.0.0.2", now, now)], TTL)
            .await
            .unwrap();
        assert_eq!(s.tick().await.unwrap(), None);
        assert_eq!(
            s.tick().await.unwrap().unwrap().master_id,
            Uuid::from_u128(1)
        );
        // Client 2 keeps reporting; client 1 goes silent.
        for _ in 0..2 {
            clock.advance_us(S);
            let t = clock.now_us();
            store
                .store_reports(&[report(2, "10.0.0.3", t, t)], TTL)
                .await
                .unwrap();
            assert_eq!(
                s.tick().await.unwrap().unwrap().master_id,
                Uuid::from_u128(1)
            );
        }
        clock.advance_us(S + 1);
        let t = clock.now_us();
        store
            .store_reports(&[report(2, "10.0.0.3", t, t)], TTL)
            .await
            .unwrap();
        assert_eq!(
            s.tick().await.unwrap(),
            None,
            "replacement also waits one tick"
        );
        let u = s.tick().await.unwrap().unwrap();
        assert_eq!(u.master_id, Uuid::from_u128(2));
        assert_eq!(u.seq, 4);
        assert_eq!(s.metrics.get(Counter::MasterChanges), 2);
    }
}
