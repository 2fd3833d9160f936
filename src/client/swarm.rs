//! `ts-client --swarm N`: N clients in one process.
//!
//! Each swarm client is a whole client to the cluster: its own id and key (from the key
//! directory's `swarm.keys`), its own address (`--swarm-ip-base` + its index), its own virtual
//! clock (offset within ±`--skew`, drift within ±`--drift-ppm`, both drawn per client), its own
//! exclusive queue bound to the updates exchange, its own reports, probes and discipline
//! ([`ClientCore`], the code a lone client runs). Nothing on the wire tells a swarm client from
//! a lone one.
//!
//! A swarm's clients join at [`JOIN_RATE`] a second (by group), as clients of a real
//! deployment come up over time rather than at one instant: each probes fast while it
//! converges, and ten thousand doing that at once would only queue behind each other.
//!
//! What they share is the cost of being a process: `--swarm-connections` AMQP connections,
//! and per `--swarm-group` clients one channel and one task whose single timer runs every
//! member's report and probe schedule (reports spread evenly over the interval). An update
//! arrives once per member queue with the same bytes; a group verifies the leader's signature
//! once per distinct message and compares the bytes of the other copies.

use super::{handle, Link, Reply, ReportSchedule, PROBE_EXPIRY};
use crate::broker;
use crate::core::client::ClientCore;
use crate::core::clock::{Clock, Discipline, SystemClock, VirtualClock};
use crate::core::keyring::KeyRing;
use crate::core::protocol::{DecodeError, ToClient, ToServer, REPORTS_QUEUE};
use crate::error::{Error, Result};
use crate::keys::{KeySource, SWARM_KEYS};
use crate::logging::RejectLog;
use crate::settings::ClientConfig;
use futures_util::StreamExt;
use lapin::Connection;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Swarm clients that start per second. Each probes 10 times a second for its first 40
/// samples, so 100 joining a second add about 4,000 probes a second: what the reference answers
/// here beside everything else (at 250 a second, 3,000 clients queued thousands of probes for
/// seconds and first syncs rested on them).
pub const JOIN_RATE: f64 = 100.0;

/// One swarm client.
struct Member {
    /// Its place in the key ring's `swarm` list (which key seals its messages).
    index: usize,
    core: Mutex<ClientCore>,
}

/// The address of swarm client `i`.
pub fn member_ip(base: Ipv4Addr, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(base) + i as u32))
}

/// Runs a swarm until `shutdown`.
pub async fn run(cfg: ClientConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let n = cfg
        .node
        .swarm
        .ok_or_else(|| Error::Config("no swarm size".into()))?;
    if cfg.settings.ntp_listen.is_some() || !cfg.settings.ntp_upstream.is_empty() {
        return Err(Error::Config(
            "a swarm serves no NTP and follows no NTP upstream (unset ntp_listen and ntp_upstream)"
                .into(),
        ));
    }
    let keys = KeySource::open(&cfg.node.key_dir, KeyRing::check_swarm)?;
    let have = keys.get().swarm.len();
    if have < n {
        return Err(Error::Config(format!(
            "{}: keys of {have} clients, a swarm of {n} needs as many",
            cfg.node.key_dir.join(SWARM_KEYS).display()
        )));
    }
    let members = Arc::new(members(&cfg, &keys.get(), n));
    info!(
        clients = n,
        first_ip = %cfg.node.swarm_ip_base,
        connections = cfg.node.swarm_connections,
        group = cfg.node.swarm_group,
        "ts-client swarm starting"
    );
    tokio::spawn(keys.clone().watch(shutdown.clone()));
    let link = Link {
        keys,
        rejects: Arc::new(Mutex::new(RejectLog::new("swarm".into()))),
        loud: false,
    };
    let groups: Vec<Range<usize>> = (0..n)
        .step_by(cfg.node.swarm_group)
        .map(|s| s..(s + cfg.node.swarm_group).min(n))
        .collect();
    let connections = cfg.node.swarm_connections.min(groups.len());
    let cfg = Arc::new(cfg);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let mine: Vec<Range<usize>> = groups
            .iter()
            .skip(c)
            .step_by(connections)
            .cloned()
            .collect();
        let (cfg, members, link, shutdown) =
            (cfg.clone(), members.clone(), link.clone(), shutdown.clone());
        tasks.spawn(async move {
            let name = format!("ts-client swarm {c}");
            broker::run_sessions(&cfg.node.amqp_url, &name, &shutdown, |conn| {
                let sessions: Vec<_> = mine
                    .iter()
                    .map(|r| {
                        group_session(
                            conn.clone(),
                            members.clone(),
                            r.clone(),
                            cfg.clone(),
                            link.clone(),
                            started,
                            shutdown.clone(),
                        )
                    })
                    .collect();
                async move {
                    futures_util::future::try_join_all(sessions)
                        .await
                        .map(|_| ())
                }
            })
            .await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let (mut sent, mut applied, mut rejected) = (0, 0, 0);
    for m in members.iter() {
        let s = m.core.lock().expect("not poisoned").stats;
        (sent, applied, rejected) = (
            sent + s.reports_sent,
            applied + s.updates_applied,
            rejected + s.updates_rejected,
        );
    }
    info!(
        reports_sent = sent,
        updates_applied = applied,
        updates_rejected = rejected,
        "ts-client swarm stopped"
    );
    Ok(())
}

/// The swarm's clients, each with its own clock drawn from the seed (or at random).
fn members(cfg: &ClientConfig, ring: &KeyRing, n: usize) -> Vec<Member> {
    let mut rng = match cfg.node.seed {
        Some(seed) => rand::rngs::SmallRng::seed_from_u64(seed),
        None => rand::rngs::SmallRng::from_entropy(),
    };
    let skew = (cfg.settings.skew * 1e6) as i64;
    let drift = cfg.settings.drift_ppm.abs();
    let now = SystemClock.now_us();
    (0..n)
        .map(|i| {
            let offset = match cfg.node.initial_offset_ms {
                Some(ms) => ms.saturating_mul(1000),
                None if skew == 0 => 0,
                None => rng.gen_range(-skew..=skew),
            };
            let drift_ppm = if drift == 0.0 {
                0.0
            } else {
                rng.gen_range(-drift..=drift)
            };
            let mut core = ClientCore::new(
                ring.swarm[i].0,
                member_ip(cfg.node.swarm_ip_base, i),
                VirtualClock::new(now, offset, drift_ppm),
                Discipline::new(cfg.settings.discipline()),
                now,
                cfg.settings.hlc_max_offset_us,
            );
            core.set_probe_max(cfg.settings.probe_max());
            Member {
                index: i,
                core: Mutex::new(core),
            }
        })
        .collect()
}

/// What a member's timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Report,
    Probe,
}

/// Leader messages of the last moments, verified once: every member of a group gets its own
/// copy of each broadcast, byte for byte the same.
#[derive(Default)]
struct Verified {
    ring: Option<Arc<KeyRing>>,
    recent: VecDeque<(Vec<u8>, ToClient)>,
}

/// Broadcasts remembered per group (an update, a set-time, a Berkeley poll and adjustment
/// can overlap).
const VERIFIED_KEPT: usize = 4;

impl Verified {
    fn open(
        &mut self,
        keys: &KeySource,
        bytes: &[u8],
    ) -> std::result::Result<ToClient, DecodeError> {
        let ring = keys.get();
        if !self.ring.as_ref().is_some_and(|r| Arc::ptr_eq(r, &ring)) {
            // New keys: what they accept may differ.
            self.recent.clear();
            self.ring = Some(ring.clone());
        }
        if let Some((_, msg)) = self.recent.iter().find(|(b, _)| b.as_slice() == bytes) {
            return Ok(msg.clone());
        }
        let msg = ring.open_from_leader(bytes)?;
        // Probe replies are addressed to one client: never seen twice.
        if !matches!(msg, ToClient::ProbeReply(_)) {
            if self.recent.len() == VERIFIED_KEPT {
                self.recent.pop_front();
            }
            self.recent.push_back((bytes.to_vec(), msg.clone()));
        }
        Ok(msg)
    }
}

/// One group's broker session: a channel, a queue and consumer per member, and one loop that
/// runs the members' timers and handles what arrives for them.
async fn group_session(
    conn: Arc<Connection>,
    members: Arc<Vec<Member>>,
    range: Range<usize>,
    cfg: Arc<ClientConfig>,
    link: Link,
    started: Instant,
    shutdown: CancellationToken,
) -> Result<()> {
    let clock = SystemClock;
    let ch = conn.create_channel().await?;
    broker::expect_client_topology(&ch).await?;
    let group = &members[range.clone()];
    let mut queues = Vec::with_capacity(group.len());
    let mut inboxes = Vec::with_capacity(group.len());
    for k in 0..group.len() {
        let queue = broker::declare_update_listener(&ch).await?;
        let consumer = broker::consume_no_ack(&ch, &queue, "").await?;
        inboxes.push(consumer.map(move |d| (k, d)));
        queues.push(queue);
    }
    let mut inbox = futures_util::stream::select_all(inboxes);
    let interval = cfg.settings.interval();
    let expiry = broker::expiry_for(interval);
    // This group's turn to join (already past after a reconnection).
    let start =
        Instant::now().max(started + Duration::from_secs_f64(range.start as f64 / JOIN_RATE));
    // A member's report timer is the one its schedule names: an out-of-turn report moves the
    // schedule and pushes a new timer, and the old one is dropped when it comes up.
    let mut timers: BinaryHeap<Reverse<(Instant, usize, Due)>> = BinaryHeap::new();
    let mut schedules = Vec::with_capacity(group.len());
    for k in 0..group.len() {
        let phase = interval.mul_f64(k as f64 / group.len() as f64);
        schedules.push(ReportSchedule::new(start + phase));
        timers.push(Reverse((start + phase, k, Due::Report)));
        timers.push(Reverse((start + phase / 10, k, Due::Probe)));
    }
    let mut verified = Verified::default();
    loop {
        let next = timers.peek().map(|Reverse((t, _, _))| *t).expect("timers");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                while let Some(&Reverse((t, k, due))) = timers.peek() {
                    if t > now {
                        break;
                    }
                    timers.pop();
                    let m = &group[k];
                    let ring = link.keys.get();
                    match due {
                        Due::Report if t != schedules[k].next() => {}
                        Due::Report => {
                            if k == 0 {
                                link.rejects.lock().expect("not poisoned").flush();
                            }
                            let report = m.core.lock().expect("not poisoned").report(clock.now_us());
                            let sealed = ring.seal_from_member(m.index, &report)?;
                            broker::publish_raw(&ch, "", REPORTS_QUEUE, &sealed, Some(expiry)).await?;
                            schedules[k].sent(now, interval);
                            timers.push(Reverse((schedules[k].next(), k, Due::Report)));
                        }
                        Due::Probe => {
                            let (probe, every) = {
                                let mut c = m.core.lock().expect("not poisoned");
                                (c.probe(clock.now_us()), c.probe_interval())
                            };
                            let sealed = ring.seal_from_member(m.index, &ToServer::Probe(probe))?;
                            broker::publish_rpc(&ch, &sealed, &queues[k], PROBE_EXPIRY).await?;
                            timers.push(Reverse((now + every, k, Due::Probe)));
                        }
                    }
                }
            }
            next = inbox.next() => {
                let (k, d) = match next {
                    Some((k, Ok(d))) => (k, d),
                    Some((_, Err(e))) => return Err(e.into()),
                    None => return Err(Error::Runtime("the broker cancelled the swarm's consumers".into())),
                };
                // Stamp arrival first: everything after it would count as transit.
                let host_us = clock.now_us();
                let m = &group[k];
                match verified.open(&link.keys, &d.data) {
                    Ok(msg) => match handle(&m.core, &msg, host_us, &link) {
                        Reply::Nothing => {}
                        Reply::Reading(reading) => {
                            let sealed = link.keys.get().seal_from_member(m.index, &ToServer::BerkeleyReading(reading))?;
                            broker::publish_rpc(&ch, &sealed, &queues[k], PROBE_EXPIRY).await?;
                        }
                        Reply::ReportNow => {
                            schedules[k].out_of_turn(Instant::now(), interval);
                            timers.push(Reverse((schedules[k].next(), k, Due::Report)));
                        }
                    },
                    Err(e) => {
                        m.core.lock().expect("not poisoned").stats.updates_rejected += 1;
                        link.rejects.lock().expect("not poisoned").record(&e, d.data.len());
                    }
                }
            }
        }
    }
    drop(inbox);
    let _ = ch.close(200, "shutdown".into()).await;
    Ok(())
}
