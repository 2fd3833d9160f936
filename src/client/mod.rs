//! `ts-client`: report the virtual clock every interval, follow the master's updates.
//!
//! One broker session carries both directions on one channel: a timer publishes reports to the
//! reports queue, and a consumer reads updates from this client's own server-named, exclusive,
//! auto-delete queue bound to the updates fanout exchange (so a client that goes away leaves no
//! queue behind). The reports queue is declared before the first publish so no early report is
//! dropped. Decisions live in [`ClientCore`]; this module only moves messages.

pub mod ntp;
pub mod swarm;

use crate::backoff::Backoff;
use crate::broker;
use crate::core::client::{ClientCore, UpdateOutcome};
use crate::core::clock::{Action, Clock, Discipline, SystemClock, VirtualClock};
use crate::core::keyring::KeyRing;
use crate::core::protocol::{BerkeleyReading, ToClient, ToServer, REPORTS_QUEUE};
use crate::error::{Error, Result};
use crate::keys::KeySource;
use crate::logging::RejectLog;
use crate::net::{endpoint_of, local_ip_toward};
use crate::settings::ClientConfig;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use rand::{Rng, SeedableRng};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The initial offset of the clock in µs: fixed, or uniform in ±skew (seeded if asked).
pub fn initial_offset_us(cfg: &ClientConfig) -> i64 {
    if let Some(ms) = cfg.node.initial_offset_ms {
        return ms.saturating_mul(1000);
    }
    let bound = (cfg.settings.skew * 1e6) as i64;
    if bound == 0 {
        return 0;
    }
    let mut rng = match cfg.node.seed {
        Some(seed) => rand::rngs::SmallRng::seed_from_u64(seed),
        None => rand::rngs::SmallRng::from_entropy(),
    };
    rng.gen_range(-bound..=bound)
}

/// Runs a client until `shutdown`. Its id is `--id` or its key directory's `client.id`
/// ([`crate::settings::ClientNode::resolved_id`]); its keys come from the key directory, which
/// is watched for rotations.
pub async fn run(cfg: ClientConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let keys = KeySource::open(&cfg.node.key_dir, KeyRing::check_client)?;
    let id = cfg.node.resolved_id()?;
    let Some(ip) = advertised_ip(&cfg, &shutdown).await else {
        return Ok(());
    };
    let clock = SystemClock;
    let offset = initial_offset_us(&cfg);
    let mut core = ClientCore::new(
        id,
        ip,
        VirtualClock::new(clock.now_us(), offset, cfg.settings.drift_ppm),
        Discipline::new(cfg.settings.discipline()),
        clock.now_us(),
        cfg.settings.hlc_max_offset_us,
    );
    core.set_probe_max(cfg.settings.probe_max());
    info!(
        client_id = %id,
        %ip,
        initial_offset_us = offset,
        drift_ppm = cfg.settings.drift_ppm,
        "ts-client starting"
    );
    tokio::spawn(keys.clone().watch(shutdown.clone()));
    let core = Arc::new(Mutex::new(core));
    if let Some(addr) = cfg.settings.ntp_listen {
        let socket = ntp::bind(addr).await?;
        let serve = ntp::serve(
            socket,
            core.clone(),
            clock,
            cfg.settings.ntp_rate,
            shutdown.clone(),
        );
        tokio::spawn(serve);
    }
    if !cfg.settings.ntp_upstream.is_empty() {
        core.lock()
            .expect("not poisoned")
            .set_upstreams(&cfg.settings.ntp_upstream);
        let follow = ntp::follow(
            core.clone(),
            clock,
            cfg.settings.ntp_upstream.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = follow.await {
                tracing::error!(error = %e, "not following NTP upstreams");
            }
        });
    }
    let link = Link {
        keys,
        rejects: Arc::new(Mutex::new(RejectLog::new("client".into()))),
        loud: true,
    };
    broker::run_sessions(&cfg.node.amqp_url, "ts-client", &shutdown, |conn| {
        session(conn, core.clone(), &cfg, clock, link.clone(), &shutdown)
    })
    .await;
    let stats = core.lock().expect("not poisoned").stats;
    info!(
        reports_sent = stats.reports_sent,
        updates_applied = stats.updates_applied,
        updates_rejected = stats.updates_rejected,
        "ts-client stopped"
    );
    Ok(())
}

/// What a client's sessions share besides its core: its keys and its log of refusals.
#[derive(Clone)]
struct Link {
    keys: KeySource,
    rejects: Arc<Mutex<RejectLog>>,
    /// Whether each correction is logged at `info` (a lone client) or `debug` (a swarm, whose
    /// thousands of clients would flood the log).
    loud: bool,
}

async fn advertised_ip(cfg: &ClientConfig, shutdown: &CancellationToken) -> Option<IpAddr> {
    if let Some(ip) = cfg.node.ip {
        return Some(ip);
    }
    let endpoint = endpoint_of(&cfg.node.amqp_url);
    let mut backoff = Backoff::default();
    loop {
        match local_ip_toward(&endpoint).await {
            Ok(ip) => return Some(ip),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, "cannot find the address toward {endpoint}, retrying in {}s", delay.as_secs());
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// On every (re)connection, unless the address is configured: the address toward the broker
/// again, since the one found at start may be gone (a container moved to another network, a
/// DHCP lease renewed), and the election ranks clients by the address they report.
async fn redetect_ip(cfg: &ClientConfig, core: &Mutex<ClientCore>) {
    if cfg.node.ip.is_some() {
        return;
    }
    let endpoint = endpoint_of(&cfg.node.amqp_url);
    match local_ip_toward(&endpoint).await {
        Ok(ip) => {
            let mut c = core.lock().expect("not poisoned");
            if c.ip != ip {
                info!(old = %c.ip, new = %ip, "the address toward the broker changed; reporting the new one");
                c.ip = ip;
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot find the address toward {endpoint}; keeping the last one")
        }
    }
}

async fn session<C: Clock>(
    conn: Arc<Connection>,
    core: Arc<Mutex<ClientCore>>,
    cfg: &ClientConfig,
    clock: C,
    link: Link,
    shutdown: &CancellationToken,
) -> Result<()> {
    redetect_ip(cfg, &core).await;
    let ch = conn.create_channel().await?;
    if let Err(e) = broker::expect_client_topology(&ch).await {
        warn!(error = %e, "the servers have not declared the reports queue and updates exchange yet");
        return Err(e);
    }
    // One queue for everything addressed to this client: fanout updates and polls, and direct
    // replies (its name is the `reply_to` of probes and Berkeley readings).
    let queue = broker::declare_update_listener(&ch).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    debug!(%queue, "listening for master updates");
    let interval = cfg.settings.interval();
    let mut reports = ReportSchedule::new(Instant::now());
    let mut next_probe = Instant::now();
    let expiry = broker::expiry_for(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(reports.next()) => {
                link.rejects.lock().expect("not poisoned").flush();
                let report = core.lock().expect("not poisoned").report(clock.now_us());
                let sealed = link.keys.get().seal_from_client(&report)?;
                broker::publish_raw(&ch, "", REPORTS_QUEUE, &sealed, Some(expiry)).await?;
                reports.sent(Instant::now(), interval);
            }
            _ = tokio::time::sleep_until(next_probe) => {
                let (probe, every) = {
                    let mut c = core.lock().expect("not poisoned");
                    (c.probe(clock.now_us()), c.probe_interval())
                };
                let sealed = link.keys.get().seal_from_client(&ToServer::Probe(probe))?;
                broker::publish_rpc(&ch, &sealed, &queue, PROBE_EXPIRY).await?;
                next_probe = Instant::now() + every;
            }
            next = consumer.next() => {
                let d = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(Error::Runtime("the broker cancelled the update consumer".into())),
                };
                // Stamp arrival first: everything after it would count as transit.
                let host_us = clock.now_us();
                // Authenticate before anything else: fencing, clocks, corrections.
                match link.keys.get().open_from_leader(&d.data) {
                    Ok(msg) => {
                        let reply = handle(&core, &msg, host_us, &link);
                        d.acker.ack(BasicAckOptions::default()).await?;
                        match reply {
                            Reply::Nothing => {}
                            Reply::Reading(reading) => {
                                let sealed = link.keys.get().seal_from_client(&ToServer::BerkeleyReading(reading))?;
                                broker::publish_rpc(&ch, &sealed, &queue, PROBE_EXPIRY).await?;
                            }
                            Reply::ReportNow => reports.out_of_turn(Instant::now(), interval),
                        }
                    }
                    Err(e) => {
                        core.lock().expect("not poisoned").stats.updates_rejected += 1;
                        link.rejects.lock().expect("not poisoned").record(&e, d.data.len());
                        d.acker.reject(BasicRejectOptions { requeue: false }).await?;
                    }
                }
            }
        }
    }
    let tag = consumer.tag();
    let _ = ch.basic_cancel(tag, BasicCancelOptions::default()).await;
    let _ = ch.close(200, "shutdown".into()).await;
    Ok(())
}

/// When one client's reports go out: every interval, missed ticks skipped; and out of turn
/// ([`Reply::ReportNow`]), so that the cluster (and the operator's dashboard) sees a new time or
/// a first estimate now, not up to an interval later. An out-of-turn report restarts the
/// interval, and it waits until [`REPORT_GAP`] of an interval has passed since the last report:
/// two reports of one client in the queue together can be taken by two workers and stored out
/// of order, and the older one is then refused as a replay (docs/PROTOCOL.md §14.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportSchedule {
    next: Instant,
    last: Option<Instant>,
}

/// The shortest time between two reports of one client, as a fraction of the interval.
pub(crate) const REPORT_GAP: f64 = 0.25;

impl ReportSchedule {
    /// The first report is due at `first`.
    pub(crate) fn new(first: Instant) -> Self {
        Self {
            next: first,
            last: None,
        }
    }

    /// When the next report is due.
    pub(crate) fn next(&self) -> Instant {
        self.next
    }

    /// The report due at [`Self::next`] went out at `now`.
    pub(crate) fn sent(&mut self, now: Instant, interval: Duration) {
        self.last = Some(now);
        self.next = skip_to_future(self.next, interval, now);
    }

    /// A report is wanted out of turn at `now`.
    pub(crate) fn out_of_turn(&mut self, now: Instant, interval: Duration) {
        self.next = match self.last {
            Some(last) => now.max(last + interval.mul_f64(REPORT_GAP)),
            None => now,
        };
    }
}

/// The next tick of a period that last fired at `t`: one period later, or, if the loop fell
/// behind, the first tick after `now` (missed ticks are skipped).
fn skip_to_future(t: Instant, period: Duration, now: Instant) -> Instant {
    let mut next = t + period;
    while next <= now {
        next += period;
    }
    next
}

/// A probe or reading older than this is not worth answering.
const PROBE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What to send after handling a message.
enum Reply {
    Nothing,
    /// The answer to a Berkeley poll.
    Reading(BerkeleyReading),
    /// A report now, out of turn: the operator set this clock, or its estimate just became
    /// usable.
    ReportNow,
}

/// Applies one authenticated message; says what to send in return.
fn handle(core: &Mutex<ClientCore>, msg: &ToClient, host_us: i64, link: &Link) -> Reply {
    let mut c = core.lock().expect("not poisoned");
    if !c.admit(msg.epoch(), host_us) {
        let what = format!(
            "ignored a message of leader epoch {} (following {:?}; {} ignored so far)",
            msg.epoch(),
            c.epoch(),
            c.stats.stale_epoch
        );
        link.rejects
            .lock()
            .expect("not poisoned")
            .note("stale_epoch", &what, 0);
        return Reply::Nothing;
    }
    c.observe(msg, host_us);
    match msg {
        ToClient::MasterUpdate(u) => {
            let outcome = c.on_update(u, host_us);
            log_outcome(&u.master_id.to_string(), u.seq, outcome, link.loud);
        }
        ToClient::ProbeReply(r) => {
            if let Some(s) = c.on_probe_reply(r, host_us) {
                debug!(
                    delay_us = s.delay_us,
                    offset_us = s.offset_us,
                    raw_us = s.raw_us,
                    "probe sample"
                );
            }
            if c.take_report_due() {
                return Reply::ReportNow;
            }
        }
        ToClient::BerkeleyPoll(p) => return Reply::Reading(c.on_poll(p, host_us)),
        ToClient::BerkeleyAdjust(a) => {
            let outcome = c.on_adjust(a, host_us);
            log_outcome("berkeley average", a.round, outcome, link.loud);
        }
        ToClient::SetTime(t) => {
            let outcome = c.on_set_time(t, host_us);
            if let UpdateOutcome::Applied { offset_us, .. } = outcome {
                info!(op_id = %t.op_id, step_us = offset_us, "the operator set this clock");
                return Reply::ReportNow;
            }
        }
    }
    Reply::Nothing
}

fn log_outcome(target: &str, seq: u64, outcome: UpdateOutcome, loud: bool) {
    match outcome {
        UpdateOutcome::IAmMaster => debug!(seq, "update names this client as master"),
        UpdateOutcome::Applied {
            offset_us,
            action: Action::Step(delta),
        } if loud => info!(
            target,
            offset_us,
            step_us = delta,
            "stepped clock to master"
        ),
        UpdateOutcome::Applied {
            offset_us,
            action: Action::Step(delta),
        } => debug!(
            target,
            offset_us,
            step_us = delta,
            "stepped clock to master"
        ),
        UpdateOutcome::Applied { offset_us, .. } if loud => {
            info!(target, offset_us, "slewing toward master")
        }
        UpdateOutcome::Applied { offset_us, .. } => {
            debug!(target, offset_us, "slewing toward master")
        }
        UpdateOutcome::Stale => debug!(seq, "ignored stale update"),
        UpdateOutcome::Held => debug!(seq, "holding over a change of reference"),
        UpdateOutcome::NotForMe => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn reports_tick_every_interval_and_skip_missed_ticks() {
        let t0 = Instant::now();
        let mut s = ReportSchedule::new(t0);
        assert_eq!(s.next(), t0);
        s.sent(t0, SECOND);
        assert_eq!(s.next(), t0 + SECOND);
        // Sent 1.5 s late: the tick at 2 s is skipped, not sent twice.
        s.sent(t0 + Duration::from_millis(2500), SECOND);
        assert_eq!(s.next(), t0 + 3 * SECOND);
    }

    #[test]
    fn an_out_of_turn_report_keeps_its_distance_and_restarts_the_interval() {
        let t0 = Instant::now();
        let mut s = ReportSchedule::new(t0 + SECOND);
        // Before any report: at once.
        s.out_of_turn(t0, SECOND);
        assert_eq!(s.next(), t0);
        s.sent(t0, SECOND);
        // 10 ms after a report (a first estimate right after the first report): a quarter
        // interval after it, not at once.
        let soon = t0 + Duration::from_millis(10);
        s.out_of_turn(soon, SECOND);
        let due = t0 + SECOND.mul_f64(REPORT_GAP);
        assert_eq!(s.next(), due);
        s.sent(due, SECOND);
        assert_eq!(s.next(), due + SECOND, "the interval restarts");
        // Long enough after the last one: at once.
        let later = due + Duration::from_millis(600);
        s.out_of_turn(later, SECOND);
        assert_eq!(s.next(), later);
    }
}
