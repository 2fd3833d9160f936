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
//! Every task here only carries messages: the decisions are the core's state machines
//! ([`crate::core::master_election`], [`crate::core::leader_election`],
//! [`crate::core::berkeley`]). Each worker, the scheduler and the reference own their AMQP
//! connection and run broker *sessions* that are restarted after any failure
//! ([`crate::broker::run_sessions`]); Redis is one self-reconnecting multiplexed connection
//! shared by all. The scheduler and the reference task run once per leadership term
//! (`term::per_term`). Shutdown is a [`CancellationToken`]: workers finish the batch in hand,
//! cancel their consumers and close; a leader resigns.

mod commands;
mod context;
mod events;
mod http;
pub mod metrics;
mod reference;
mod replica;
pub mod scheduler;
mod term;
mod worker;

use crate::broker;
use crate::cache::RedisStore;
use crate::core::clock::{Clock, SystemClock};
use crate::core::keyring::KeyRing;
use crate::core::logical::NodeClocks;
use crate::error::Result;
use crate::keys::KeySource;
use crate::settings::ServerConfig;
use commands::Commands;
use context::ServerContext;
use metrics::Counter;
use replica::Replica;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// Runs the server until `shutdown` is cancelled. Returns an error only for bad configuration
/// or an HTTP address it cannot bind; unreachable services are retried forever.
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let server_id = Uuid::new_v4();
    let s = &cfg.settings;
    info!(
        %server_id,
        replica = cfg.node.replica_id,
        priority = cfg.node.priority,
        workers = s.workers,
        ttl_s = s.ttl,
        tick_ms = s.tick_ms,
        algorithm = s.algorithm.as_str(),
        "ts-server starting"
    );
    let keys = KeySource::open(&cfg.node.key_dir, KeyRing::check_server)?;
    let addr = cfg.node.http_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Runtime(format!("cannot listen on {addr}: {e}")))?;
    let Some(store) = RedisStore::connect(&cfg.node.redis_url, &shutdown).await? else {
        return Ok(());
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let clocks = NodeClocks::replica(cfg.node.replica_id, cfg.settings.hlc_max_offset_us);
    let ctx = Arc::new(ServerContext {
        cfg,
        server_id,
        store,
        clock: SystemClock,
        keys: keys.clone(),
        metrics: Arc::default(),
        shutdown: shutdown.clone(),
        clocks: Mutex::new(clocks),
        events: events_tx,
        reported_epochs: Mutex::default(),
        commands: Commands::default(),
    });
    let replica = Arc::new(Replica::new(ctx.clock.now_us()));
    let mut tasks = JoinSet::new();
    tasks.spawn(keys.watch(shutdown.clone()));
    tasks.spawn(events::write(ctx.clone(), events_rx));
    tasks.spawn(http::serve(listener, ctx.clone(), replica.clone()));
    for idx in 0..ctx.cfg.settings.workers {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let name = format!("ts-server worker {idx}");
            broker::run_sessions(&ctx.cfg.node.amqp_url, &name, &ctx.shutdown, |conn| {
                let ctx = ctx.clone();
                async move { worker::session(idx, &conn, &ctx).await }
            })
            .await;
        });
    }
    tasks.spawn(replica::run(ctx.clone(), replica.clone()));
    let leading = replica.leading();
    let c = ctx.clone();
    tasks.spawn(async move {
        term::per_term(leading, &c.shutdown.clone(), |epoch, term| {
            scheduler::run(c.clone(), epoch, term)
        })
        .await
    });
    let leading = replica.leading();
    let c = ctx.clone();
    tasks.spawn(async move {
        term::per_term(leading, &c.shutdown.clone(), |epoch, term| {
            reference::run(c.clone(), epoch, term)
        })
        .await
    });
    let leading = replica.leading();
    let c = ctx.clone();
    tasks.spawn(async move {
        term::per_term(leading, &c.shutdown.clone(), |epoch, term| {
            events::leaves(c.clone(), epoch, term)
        })
        .await
    });
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            warn!(error = %e, "server task panicked");
        }
    }
    info!(
        reports_stored = ctx.metrics.get(Counter::ReportsStored),
        rejected = ctx.metrics.rejected_total(),
        "ts-server stopped"
    );
    Ok(())
}
