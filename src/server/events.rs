//! The cluster's event log, as a replica feeds it.
//!
//! Every task records its events through [`ServerContext::record`] (stamped with the replica's
//! logical clocks); one writer per replica appends them to the Redis stream `ts:events` in
//! batches, capped at `event_log_len` entries. Clients' events arrive in their reports and go
//! the same way. While Redis is unreachable events wait in memory (at most
//! [`MAX_BACKLOG`]; beyond that the oldest are dropped and counted in a warning).
//!
//! A client leaving is noticed when its report expires: the leader of each term listens to
//! Redis's expiry announcements ([`leaves`]).

use super::context::{EventData, ServerContext};
use super::metrics::Counter;
use crate::cache::RedisStore;
use crate::core::clock::Clock;
use crate::core::protocol::{Event, EventKind, CLIENT_KEY_PREFIX};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

/// Events kept in memory while Redis cannot take them.
pub const MAX_BACKLOG: usize = 10_000;
/// Longest batch appended at once.
const BATCH: usize = 256;
/// Pause after a failed append.
const RETRY: Duration = Duration::from_millis(500);

/// Appends recorded events to the log until shutdown, then what is left.
pub(crate) async fn write<C: Clock>(
    ctx: Arc<ServerContext<RedisStore, C>>,
    mut inbox: mpsc::UnboundedReceiver<Event>,
) {
    let mut backlog: VecDeque<Event> = VecDeque::new();
    let mut dropped = 0u64;
    let max_len = ctx.cfg.settings.event_log_len;
    loop {
        if backlog.is_empty() {
            tokio::select! {
                e = inbox.recv() => match e {
                    Some(e) => backlog.push_back(e),
                    None => return,
                },
                _ = ctx.shutdown.cancelled() => {
                    while let Ok(e) = inbox.try_recv() {
                        backlog.push_back(e);
                    }
                    let batch: Vec<Event> = backlog.drain(..).collect();
                    let _ = ctx.store.append_events(&batch, max_len).await;
                    return;
                }
            }
        }
        while let Ok(e) = inbox.try_recv() {
            if backlog.len() == MAX_BACKLOG {
                backlog.pop_front();
                dropped += 1;
            }
            backlog.push_back(e);
        }
        let n = backlog.len().min(BATCH);
        let batch: Vec<Event> = backlog.iter().take(n).cloned().collect();
        match ctx.store.append_events(&batch, max_len).await {
            Ok(()) => {
                backlog.drain(..n);
                ctx.metrics.add(Counter::EventsWritten, n as u64);
                if dropped > 0 {
                    warn!(
                        dropped,
                        "events were dropped while Redis could not take them"
                    );
                    dropped = 0;
                }
            }
            Err(e) => {
                warn!(error = %e, waiting = backlog.len(), "cannot append to the event log; will retry");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// While leading (term `term`), records a `client_left` event for every client whose report
/// expires. Redis announces expiries on a pub/sub channel once asked to
/// ([`RedisStore::announce_expiries`]); only the primary expires keys, so the subscription is
/// to the primary, made again when it is lost or the primary moves (a failover).
pub(crate) async fn leaves<C: Clock>(
    ctx: Arc<ServerContext<RedisStore, C>>,
    epoch: u64,
    term: CancellationToken,
) {
    let primary = ctx.store.connection();
    let channel = format!("__keyevent@{}__:expired", primary.target().db());
    let mut moves = primary.moves();
    while !term.is_cancelled() {
        moves.mark_unchanged();
        let subscribed = async {
            ctx.store.announce_expiries().await?;
            let client = redis::Client::open(primary.url())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, crate::Error>(pubsub)
        };
        let mut pubsub = match subscribed.await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot listen for expired reports; will retry");
                tokio::select! {
                    _ = term.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut messages = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = term.cancelled() => return,
                _ = moves.changed() => break,
                m = messages.next() => m,
            };
            let Some(msg) = msg else { break };
            let Ok(key) = msg.get_payload::<String>() else {
                continue;
            };
            let Some(id) = key
                .strip_prefix(CLIENT_KEY_PREFIX)
                .and_then(|i| i.parse::<Uuid>().ok())
            else {
                continue;
            };
            let data = EventData::from([
                ("client_id".to_string(), id.to_string().into()),
                ("epoch".to_string(), epoch.into()),
            ]);
            let text = format!("client {id} left: its report expired");
            ctx.record(EventKind::ClientLeft, text, data, None);
        }
    }
}
