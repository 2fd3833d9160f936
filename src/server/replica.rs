//! The replica's election driver: carries [`Bully`]'s messages over the broker and takes its
//! epochs from Redis.
//!
//! One task owns the state machine for the life of a broker session. It feeds it time (every
//! [`TICK`]), the control queue's messages, the epoch store's answers and the broker's returns
//! of unroutable direct sends, and carries out what it asks. Leadership is published on a
//! `watch` channel that the scheduler and the reference task follow ([`super::per_term`]).
//!
//! A replica that loses its broker session cannot hear the others, so it stops leading at once
//! and starts over (a fresh election) when it is back; the highest epoch it saw is kept, so
//! its next claim is above it. So is the highest epoch any client reports following
//! ([`ServerContext::saw_epoch`]): a Redis that lost its epoch count cannot hand out an epoch
//! that clients would refuse. On shutdown a leader resigns, so the others elect at once.
//!
//! Every control message is sealed with the replica key and carries the replica's logical
//! clocks, vector clock included; what the election does goes to the cluster's event log.

use super::context::{EventData, ServerContext};
use super::metrics::Counter;
use crate::broker;
use crate::cache::{RedisStore, ReportStore};
use crate::core::clock::Clock;
use crate::core::leader_election::{Bully, Output};
use crate::core::logical::Stamp;
use crate::core::protocol::{self, EventKind, ReplicaRecord, ToReplica, CONTROL_ALL};
use crate::error::{Error, Result};
use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// How often the state machine is ticked: the resolution of every election timeout.
pub const TICK: Duration = Duration::from_millis(20);
/// A replica record outlives its last heartbeat by this many heartbeats, so `tsc servers list`
/// shows a stopped replica's last words for a while.
const RECORD_TTL_HEARTBEATS: u32 = 30;

/// Requests from the HTTP API.
pub(crate) enum Command {
    Elect(oneshot::Sender<bool>),
}

/// What the driver learns asynchronously.
enum Learnt {
    Epoch(u64),
    Unreachable(u64),
}

/// The replica's election state, shared with the HTTP API.
pub(crate) struct Replica {
    origin: Instant,
    pub started_at_us: i64,
    /// `None` while there is no broker session.
    pub bully: Mutex<Option<Bully>>,
    pub http_addr: Mutex<Option<SocketAddr>>,
    lead_tx: watch::Sender<Option<u64>>,
    commands_tx: mpsc::UnboundedSender<Command>,
    commands_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Command>>,
    /// Highest epoch seen, carried across sessions.
    seen_epoch: AtomicU64,
    /// Elections started in earlier sessions.
    elections_before: AtomicU64,
}

impl Replica {
    pub fn new(started_at_us: i64) -> Self {
        let (lead_tx, _) = watch::channel(None);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        Replica {
            origin: Instant::now(),
            started_at_us,
            bully: Mutex::new(None),
            http_addr: Mutex::new(None),
            lead_tx,
            commands_tx,
            commands_rx: tokio::sync::Mutex::new(commands_rx),
            seen_epoch: AtomicU64::new(0),
            elections_before: AtomicU64::new(0),
        }
    }

    /// The state machine's time: monotonic, from this replica's start.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// `Some(epoch)` while this replica leads.
    pub fn leading(&self) -> watch::Receiver<Option<u64>> {
        self.lead_tx.subscribe()
    }

    /// Starts an election; `None` when there is no broker session to run one on.
    pub async fn request_election(&self) -> Option<bool> {
        let (tx, rx) = oneshot::channel();
        self.commands_tx.send(Command::Elect(tx)).ok()?;
        // The driver answers within a tick while it has a session.
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()
    }

    /// The epoch of the term this replica is in (0: none).
    pub fn epoch(&self) -> u64 {
        self.bully
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map_or(0, |b| b.epoch())
    }

    /// Elections started since the process started.
    pub fn elections(&self) -> u64 {
        self.elections_with(self.bully.lock().expect("not poisoned").as_ref())
    }

    /// Elections of earlier sessions plus those of `current`'s (the caller holds the lock).
    fn elections_with(&self, current: Option<&Bully>) -> u64 {
        self.elections_before.load(Relaxed)
            + current.map_or(0, |b| b.election_status(self.now()).started)
    }

    fn record<S, C: Clock>(&self, ctx: &ServerContext<S, C>) -> ReplicaRecord {
        let guard = self.bully.lock().expect("not poisoned");
        let now = self.now();
        let http = self
            .http_addr
            .lock()
            .expect("not poisoned")
            .map(|a| a.to_string())
            .unwrap_or_default();
        ReplicaRecord {
            id: ctx.cfg.node.replica_id,
            priority: ctx.cfg.node.priority,
            server_id: ctx.server_id,
            role: guard.as_ref().map(|b| b.role()).unwrap_or_default(),
            epoch: guard.as_ref().map_or(0, |b| b.epoch()),
            leader: guard.as_ref().and_then(|b| b.leader()),
            electing: guard
                .as_ref()
                .is_some_and(|b| b.election_status(now).in_progress),
            elections: self.elections_with(guard.as_ref()),
            http,
            heartbeat_at_us: ctx.clock.now_us(),
            started_at_us: self.started_at_us,
        }
    }
}

/// An election event's data: which replica, which epoch.
fn epoch_data(replica: u64, epoch: u64) -> EventData {
    EventData::from([
        ("replica".to_string(), replica.into()),
        ("epoch".to_string(), epoch.into()),
    ])
}

/// Runs the election driver until shutdown.
pub(crate) async fn run<C: Clock>(ctx: Arc<ServerContext<RedisStore, C>>, replica: Arc<Replica>) {
    let name = format!("ts-server replica {} control", ctx.cfg.node.replica_id);
    // Whether a session was ever up (its queue declared): the next one that comes up is a
    // reconnection. A session refused at once (a duplicate id) is not one.
    let was_up = Arc::new(AtomicBool::new(false));
    broker::run_sessions(&ctx.cfg.node.amqp_url, &name, &ctx.shutdown, |conn| {
        let (ctx, replica, was_up) = (ctx.clone(), replica.clone(), was_up.clone());
        async move {
            let outcome = session(&conn, &ctx, &replica, &was_up).await;
            // Without a session we hear nobody: stop leading, keep what we learnt.
            let lost = replica.lead_tx.send_replace(None);
            if let Some(epoch) = lost.filter(|_| !ctx.shutdown.is_cancelled()) {
                info!(
                    replica = ctx.cfg.node.replica_id,
                    epoch, "lost the broker: no longer leading"
                );
                let text = format!("stepped down from epoch {epoch}: lost the broker session");
                ctx.record(
                    EventKind::SteppedDown,
                    text,
                    epoch_data(ctx.cfg.node.replica_id, epoch),
                    None,
                );
            }
            if let Some(b) = replica.bully.lock().expect("not poisoned").take() {
                replica.seen_epoch.fetch_max(b.max_epoch(), Relaxed);
                replica
                    .elections_before
                    .fetch_add(b.election_status(replica.now()).started, Relaxed);
            }
            outcome
        }
    })
    .await;
}

async fn session<C: Clock>(
    conn: &Connection,
    ctx: &ServerContext<RedisStore, C>,
    replica: &Replica,
    was_up: &AtomicBool,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = broker::declare_control_listener(&ch, ctx.cfg.node.replica_id).await?;
    if was_up.swap(true, Relaxed) {
        let text = "reconnected to RabbitMQ after losing it".to_string();
        ctx.record(EventKind::Reconnected, text, EventData::new(), None);
    }
    let tag = format!("ts-server-replica-{}", ctx.cfg.node.replica_id);
    let mut consumer = broker::consume_no_ack(&ch, &queue, &tag).await?;
    let cfg = ctx.cfg.bully();
    let expiry = cfg.leader_timeout;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let io = Io {
        ch: &ch,
        ctx,
        replica,
        events: events_tx,
        expiry,
    };
    let first = {
        let b = Bully::new(cfg.clone(), replica.now(), replica.seen_epoch.load(Relaxed));
        let mut guard = replica.bully.lock().expect("not poisoned");
        guard.insert(b).drain()
    };
    info!(
        replica = ctx.cfg.node.replica_id,
        priority = ctx.cfg.node.priority,
        "joined the replicas' election"
    );
    io.execute(first, None).await?;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut records = tokio::time::interval(cfg.heartbeat);
    records.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut commands = replica.commands_rx.lock().await;
    let mut rejects = crate::logging::RejectLog::new("control".into());
    let mut flush = tokio::time::interval(crate::logging::RejectLog::window());
    let record_ttl = cfg.heartbeat * RECORD_TTL_HEARTBEATS;
    let mut rate_from = (Instant::now(), ctx.metrics.get(Counter::ReportsStored));
    loop {
        // Each branch runs the state machine under the lock and hands back its outputs.
        let (outs, cause) = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                let outs = replica.with(|b, _| b.resign());
                io.execute(outs, None).await?;
                let _ = ch.close(200, "shutdown".into()).await;
                return Ok(());
            }
            _ = ticker.tick() => (replica.with(|b, now| b.tick(now)), None),
            _ = flush.tick() => {
                rejects.flush();
                continue;
            }
            _ = records.tick() => {
                let (at, stored) = (Instant::now(), ctx.metrics.get(Counter::ReportsStored));
                let secs = at.duration_since(rate_from.0).as_secs_f64();
                if secs > 0.0 {
                    ctx.metrics.set_reports_per_second((stored - rate_from.1) as f64 / secs);
                }
                rate_from = (at, stored);
                let record = replica.record(ctx);
                if let Err(e) = ctx.store.write_replica(&record, record_ttl).await {
                    warn!(error = %e, "cannot write the replica record");
                }
                if let Err(e) = ctx.store.write_stats(&ctx.server_id, &ctx.metrics.snapshot(), record_ttl).await {
                    warn!(error = %e, "cannot write server stats");
                }
                let floor = ctx.epoch_floor();
                (replica.with(|b, now| b.observe_epoch(floor, now)), None)
            }
            d = consumer.next() => match d {
                Some(Ok(d)) => match ctx.keys.get().open_control(&d.data) {
                    Ok(msg) => {
                        // Our own broadcasts come back; they are no news to our clocks.
                        if msg.from() != ctx.cfg.node.replica_id {
                            ctx.observe(msg.stamp());
                        }
                        (replica.with(|b, now| b.step(&msg, now)), Some(msg.stamp().clone()))
                    }
                    Err(e) => {
                        ctx.metrics.rejected(&e);
                        ctx.metrics.inc(Counter::ControlRejected);
                        rejects.record(&e, d.data.len());
                        continue;
                    }
                },
                Some(Err(e)) => return Err(e.into()),
                None => return Err(Error::Runtime("the broker cancelled the control consumer".into())),
            },
            Some(ev) = events.recv() => match ev {
                Learnt::Epoch(e) => (replica.with(|b, now| b.on_epoch(e, now)), None),
                Learnt::Unreachable(id) => {
                    info!(replica = id, "replica unreachable (its queue is gone)");
                    (replica.with(|b, now| b.on_unreachable(id, now)), None)
                }
            },
            Some(Command::Elect(reply)) = commands.recv() => {
                let mut started = false;
                let outs = replica.with(|b, now| started = b.request_election(now));
                let _ = reply.send(started);
                if started {
                    ctx.metrics.inc(Counter::OperatorCommands);
                }
                (outs, None)
            }
        };
        io.execute(outs, cause).await?;
    }
}

impl Replica {
    /// Runs `f` on the state machine and returns what it asks for.
    fn with(&self, f: impl FnOnce(&mut Bully, Duration)) -> Vec<Output> {
        let now = self.now();
        let mut guard = self.bully.lock().expect("not poisoned");
        match guard.as_mut() {
            Some(b) => {
                f(b, now);
                b.drain()
            }
            None => Vec::new(),
        }
    }
}

/// What executing outputs needs.
struct Io<'a, C> {
    ch: &'a Channel,
    ctx: &'a ServerContext<RedisStore, C>,
    replica: &'a Replica,
    events: mpsc::UnboundedSender<Learnt>,
    expiry: Duration,
}

impl<C: Clock> Io<'_, C> {
    /// Carries out the state machine's outputs; `cause` is the stamp of the message that led
    /// to them, if one did.
    async fn execute(&self, outs: Vec<Output>, cause: Option<Stamp>) -> Result<()> {
        let ctx = self.ctx;
        let epoch_data = |epoch: u64| epoch_data(ctx.cfg.node.replica_id, epoch);
        for out in outs {
            match out {
                Output::Broadcast(mut msg) => {
                    if let ToReplica::Resign(r) = &msg {
                        let text = format!("resigned from epoch {} (shutting down)", r.epoch);
                        ctx.record(EventKind::Resigned, text, epoch_data(r.epoch), None);
                    }
                    *msg.stamp_mut() = ctx.stamp();
                    let sealed = ctx.keys.get().seal_control(&msg)?;
                    // Confirmations of broadcasts carry nothing we act on.
                    drop(
                        broker::publish_control(self.ch, CONTROL_ALL, &sealed, false, self.expiry)
                            .await?,
                    );
                }
                Output::Send(to, mut msg) => {
                    *msg.stamp_mut() = ctx.stamp();
                    let sealed = ctx.keys.get().seal_control(&msg)?;
                    let key = protocol::replica_key(to);
                    let confirm =
                        broker::publish_control(self.ch, &key, &sealed, true, self.expiry).await?;
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        if let Ok(c) = confirm.await {
                            if c.take_message().is_some() {
                                let _ = events.send(Learnt::Unreachable(to));
                            }
                        }
                    });
                }
                Output::AcquireEpoch { at_least } => {
                    let (store, events) = (ctx.store.clone(), self.events.clone());
                    tokio::spawn(async move {
                        match store.acquire_epoch(at_least).await {
                            Ok(e) => {
                                let _ = events.send(Learnt::Epoch(e));
                            }
                            // The claim times out and the election starts over.
                            Err(e) => error!(
                                error = %e,
                                at_least,
                                "cannot take an epoch from Redis; the election will start over"
                            ),
                        }
                    });
                }
                Output::Lead(epoch) => {
                    ctx.metrics.inc(Counter::TermsLed);
                    info!(replica = ctx.cfg.node.replica_id, epoch, "leading");
                    self.replica.lead_tx.send_replace(Some(epoch));
                    let text = format!("took office as leader with epoch {epoch}");
                    ctx.record(
                        EventKind::LeaderElected,
                        text,
                        epoch_data(epoch),
                        cause.clone(),
                    );
                }
                Output::StepDown => {
                    if let Some(epoch) = self.replica.lead_tx.send_replace(None) {
                        info!(replica = ctx.cfg.node.replica_id, "no longer leading");
                        let text = format!("stepped down from epoch {epoch}");
                        ctx.record(
                            EventKind::SteppedDown,
                            text,
                            epoch_data(epoch),
                            cause.clone(),
                        );
                    }
                }
                Output::Event(kind, text) => {
                    let epoch = self.replica.epoch();
                    ctx.record(kind, text, epoch_data(epoch), cause.clone());
                }
            }
        }
        ctx.metrics
            .set(Counter::Elections, self.replica.elections());
        Ok(())
    }
}
