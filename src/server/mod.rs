//! `ts-server`: report workers and the master scheduler.
//!
//! ```text
//!  clients ──report──▶ [ts.reports] ──▶ worker × N ──SET EX──▶ Redis ts:client:<id>
//!                                                              │
//!  clients ◀──update── (ts.master_updates fanout) ◀── scheduler ┘ (every tick: elect, extrapolate)
//! ```
//!
//! Each worker and the scheduler own their AMQP connection and run broker *sessions* that are
//! restarted after any failure ([`crate::broker::run_sessions`]); Redis is one self-reconnecting
//! multiplexed connection shared by all. Shutdown is a [`CancellationToken`]: workers finish the
//! batch in hand, cancel their consumers and close; the scheduler stops between ticks.

mod metrics;
mod reference;
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
use std::sync::Arc;
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

/// Runs the server until `shutdown` is cancelled. Returns an error only for bad configuration;
/// unreachable services are retried forever.
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let server_id = Uuid::new_v4();
    info!(
        %server_id,
        workers = cfg.workers,
        ttl_s = cfg.ttl,
        tick_ms = cfg.tick_ms,
        algorithm = cfg.algorithm.as_str(),
        "ts-server starting"
    );
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
    let mut tasks = JoinSet::new();
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
    tasks.spawn(run_scheduler(ctx.clone()));
    {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let rounds = Arc::new(tokio::sync::Mutex::new(reference::Rounds::default()));
            let name = "ts-server reference";
            broker::run_sessions(&ctx.cfg.endpoints.amqp_url, name, &ctx.shutdown, |conn| {
                let (ctx, rounds) = (ctx.clone(), rounds.clone());
                async move { reference::session(&conn, &ctx, &mut *rounds.lock().await).await }
            })
            .await;
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

async fn run_scheduler<S: ReportStore, C: Clock + Clone>(ctx: Arc<ServerContext<S, C>>) {
    let scheduler = Arc::new(tokio::sync::Mutex::new(Scheduler::new(
        ctx.store.clone(),
        ctx.clock.clone(),
        ctx.server_id,
        ctx.metrics.clone(),
        ctx.cfg.ttl(),
        ctx.cfg.algorithm,
    )));
    broker::run_sessions(
        &ctx.cfg.endpoints.amqp_url,
        "ts-server scheduler",
        &ctx.shutdown,
        |conn| {
            let ctx = ctx.clone();
            let scheduler = scheduler.clone();
            async move {
                let ch = conn.create_channel().await?;
                broker::declare_updates_exchange(&ch).await?;
                let mut interval = tokio::time::interval(ctx.cfg.tick());
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut cache_down = false;
                loop {
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => {
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
                    if let Err(e) = s.write_stats().await {
                        warn!(error = %e, "could not write server stats");
                    }
                }
            }
        },
    )
    .await;
}
