//! `ts-server`: one replica of the server: report workers, the leader election, and (while
//! leading) the master scheduler and the reference clock; plus an HTTP API.
//!
//! ```text
//!  clients ──report──▶ [ts.reports] ──▶ worker × N (every replica) ──SET EX──▶ Redis
//!                                                                              │
//!  clients ◀──update── (ts.master_updates) ◀── scheduler (leader only) ─────────┘
//!  clients ──probe───▶ [ts.rpc] ──▶ reference (leader only) ──reply──▶ client queue
//!  replicas ◀──ELECTION/ANSWER/COORDINATOR/HEARTBEAT──▶ (ts.control) ── election driver
//! ```
//!
//! Each worker and the scheduler own their AMQP connection and run broker *sessions* that are
//! restarted after any failure ([`crate::broker::run_sessions`]); Redis is one self-reconnecting
//! multiplexed connection shared by all. The scheduler and the reference task run once per
//! leadership term ([`per_term`]): a term's token is cancelled the moment the election driver
//! says the term is over, so a deposed leader's broadcasting stops within one step. Shutdown is
//! a [`CancellationToken`]: workers finish the batch in hand, cancel their consumers and close;
//! a leader resigns.

mod http;
mod metrics;
mod reference;
mod replica;
mod scheduler;
mod worker;

pub use metrics::Metrics;
pub use scheduler::Scheduler;

use crate::broker;
use crate::cache::{RedisStore, ReportStore};
use crate::clock::{Clock, SystemClock};
use crate::config::ServerConfig;
use crate::error::Result;
use crate::protocol::UPDATES_EXCHANGE;
use replica::Replica;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// What every server task shares.
pub(crate) struct ServerContext<S, C> {
    pub cfg: ServerConfig,
    pub server_id: Uuid,
    pub store: S,
    pub clock: C,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// Runs the server until `shutdown` is cancelled. Returns an error only for bad configuration
/// or an HTTP address it cannot bind; unreachable services are retried forever.
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let server_id = Uuid::new_v4();
    info!(
        %server_id,
        replica = cfg.replica_id,
        priority = cfg.priority,
        workers = cfg.workers,
        ttl_s = cfg.ttl,
        tick_ms = cfg.tick_ms,
        algorithm = cfg.algorithm.as_str(),
        "ts-server starting"
    );
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|e| crate::Error::Runtime(format!("cannot listen on {}: {e}", cfg.http_addr)))?;
    let Some(store) = RedisStore::connect(&cfg.redis_url, &shutdown).await? else {
        return Ok(());
    };
    let ctx = Arc::new(ServerContext {
        cfg,
        server_id,
        store,
        clock: SystemClock,
        metrics: Arc::default(),
        shutdown: shutdown.clone(),
    });
    let replica = Arc::new(Replica::new(ctx.clock.now_us()));
    let mut tasks = JoinSet::new();
    tasks.spawn(http::serve(listener, ctx.clone(), replica.clone()));
    for idx in 0..ctx.cfg.workers {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let name = format!("ts-server worker {idx}");
            broker::run_sessions(&ctx.cfg.endpoints.amqp_url, &name, &ctx.shutdown, |conn| {
                let ctx = ctx.clone();
                async move { worker::session(idx, &conn, &ctx).await }
            })
            .await;
        });
    }
    tasks.spawn(replica::run(ctx.clone(), replica.clone()));
    {
        let ctx = ctx.clone();
        let leading = replica.leading();
        tasks.spawn(async move {
            per_term(leading, &ctx.shutdown.clone(), |epoch, term| {
                run_scheduler(ctx.clone(), epoch, term)
            })
            .await
        });
    }
    {
        let ctx = ctx.clone();
        let leading = replica.leading();
        tasks.spawn(async move {
            per_term(leading, &ctx.shutdown.clone(), |epoch, term| {
                run_reference(ctx.clone(), epoch, term)
            })
            .await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            warn!(error = %e, "server task panicked");
        }
    }
    info!(
        reports_stored = ctx.metrics.stored(),
        rejected = ctx.metrics.rejected_total(),
        "ts-server stopped"
    );
    Ok(())
}

/// Runs `term(epoch, token)` for every leadership term announced on `leading`, one at a time.
/// The token is cancelled when the term ends (leadership lost or moved to another epoch) or on
/// shutdown, and the next term starts only after the previous one has returned.
pub(crate) async fn per_term<F, Fut>(
    mut leading: watch::Receiver<Option<u64>>,
    shutdown: &CancellationToken,
    mut term: F,
) where
    F: FnMut(u64, CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let epoch = loop {
            if let Some(e) = *leading.borrow_and_update() {
                break e;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leading.changed() => if changed.is_err() { return },
            }
        };
        let token = shutdown.child_token();
        let run = term(epoch, token.clone());
        tokio::pin!(run);
        let over = loop {
            tokio::select! {
                _ = &mut run => break false,
                changed = leading.changed() => {
                    if changed.is_err() || *leading.borrow() != Some(epoch) {
                        break true;
                    }
                }
            }
        };
        if over {
            token.cancel();
            run.await;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn run_reference<S: ReportStore, C: Clock>(
    ctx: Arc<ServerContext<S, C>>,
    epoch: u64,
    term: CancellationToken,
) {
    // Berkeley rounds outlive broker sessions within the term, not the term.
    let rounds = Arc::new(tokio::sync::Mutex::new(reference::Rounds::default()));
    let name = "ts-server reference";
    broker::run_sessions(&ctx.cfg.endpoints.amqp_url, name, &term, |conn| {
        let (ctx, rounds, term) = (ctx.clone(), rounds.clone(), term.clone());
        async move { reference::session(&conn, &ctx, &mut *rounds.lock().await, epoch, &term).await }
    })
    .await;
}

async fn run_scheduler<S: ReportStore, C: Clock + Clone>(
    ctx: Arc<ServerContext<S, C>>,
    epoch: u64,
    term: CancellationToken,
) {
    let scheduler = Arc::new(tokio::sync::Mutex::new(Scheduler::new(
        ctx.store.clone(),
        ctx.clock.clone(),
        ctx.server_id,
        ctx.metrics.clone(),
        ctx.cfg.algorithm,
        epoch,
    )));
    broker::run_sessions(
        &ctx.cfg.endpoints.amqp_url,
        "ts-server scheduler",
        &term,
        |conn| {
            let ctx = ctx.clone();
            let scheduler = scheduler.clone();
            let term = term.clone();
            async move {
                let ch = conn.create_channel().await?;
                broker::declare_updates_exchange(&ch).await?;
                let mut interval = tokio::time::interval(ctx.cfg.tick());
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut cache_down = false;
                loop {
                    tokio::select! {
                        _ = term.cancelled() => {
                            // Close the channel before the connection, or lapin logs the race.
                            let _ = ch.close(200, "shutdown".into()).await;
                            return Ok(());
                        }
                        _ = interval.tick() => {}
                    }
                    let mut s = scheduler.lock().await;
                    match s.tick().await {
                        Ok(Some(update)) => {
                            let expiry = broker::expiry_for(ctx.cfg.tick());
                            let msg = crate::protocol::ToClient::MasterUpdate(update);
                            broker::publish(&ch, UPDATES_EXCHANGE, "", &msg, Some(expiry)).await?;
                            ctx.metrics
                                .updates_published
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        },
    )
    .await;
}
