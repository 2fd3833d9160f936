//! [`ReportStore`] on Redis.
//!
//! Keys (see `docs/PROTOCOL.md`): `ts:client:<id>` → [`StoredReport`] JSON with `EX ttl`;
//! `ts:master` → [`MasterRecord`] JSON without TTL. Listing uses `SCAN` (never `KEYS`, which
//! blocks Redis) followed by one `MGET`.

use super::ReportStore;
use crate::backoff::Backoff;
use crate::config::endpoint_of;
use crate::error::Result;
use crate::protocol::{
    client_key, MasterRecord, StoredReport, CLIENT_KEY_PREFIX, MASTER_KEY, STATS_KEY_PREFIX,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long one Redis command may take before it fails (so a frozen Redis cannot freeze us).
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys fetched per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// A cloneable, self-reconnecting Redis connection used as a [`ReportStore`].
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl RedisStore {
    /// Connects, retrying with growing delays (logged as `Failed connecting to HOST:PORT,
    /// retrying in Ns`) until it works or `shutdown` fires (then `None`). Once connected, the
    /// connection manager reconnects by itself after a Redis restart.
    pub async fn connect(url: &str, shutdown: &CancellationToken) -> Result<Option<Self>> {
        let client = redis::Client::open(url)?;
        let endpoint = endpoint_of(url);
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_max_delay(Duration::from_secs(1));
        let mut backoff = Backoff::default();
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                r = client.get_connection_manager_with_config(config.clone()) => r,
            };
            match attempt {
                Ok(conn) => {
                    info!(redis = %endpoint, "connected to Redis");
                    return Ok(Some(RedisStore { conn }));
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, "Failed connecting to {endpoint}, retrying in {}s", delay.as_secs());
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Every server's counters (`ts:stats:<server_id>` hashes), by server id.
    pub async fn server_stats(&self) -> Result<Vec<(String, HashMap<String, u64>)>> {
        let mut conn = self.conn.clone();
        let keys = scan(&mut conn, &format!("{STATS_KEY_PREFIX}*")).await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let h: HashMap<String, u64> = conn.hgetall(&k).await?;
            if !h.is_empty() {
                out.push((k.trim_start_matches(STATS_KEY_PREFIX).to_string(), h));
            }
        }
        Ok(out)
    }

    /// One counter summed over every server (0 when absent).
    pub async fn stat_total(&self, name: &str) -> Result<u64> {
        Ok(self
            .server_stats()
            .await?
            .iter()
            .map(|(_, h)| h.get(name).copied().unwrap_or(0))
            .sum())
    }

    /// The underlying connection, for callers (tsc, tests) that read other keys.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Every key matching `pattern`, by `SCAN` (never `KEYS`, which blocks Redis), deduplicated.
async fn scan(conn: &mut ConnectionManager, pattern: &str) -> Result<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

impl ReportStore for RedisStore {
    async fn report(&self, id: &uuid::Uuid) -> Result<Option<StoredReport>> {
        let raw: Option<String> = self.conn.clone().get(client_key(id)).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn store_reports(&self, reports: &[StoredReport], ttl: Duration) -> Result<()> {
        if reports.is_empty() {
            return Ok(());
        }
        let ttl = ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for r in reports {
            let json = serde_json::to_string(r).expect("stored reports serialize");
            pipe.set_ex(client_key(&r.report.id), json, ttl).ignore();
        }
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn live_reports(&self) -> Result<Vec<StoredReport>> {
        let mut conn = self.conn.clone();
        let keys = scan(&mut conn, &format!("{CLIENT_KEY_PREFIX}*")).await?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_COUNT) {
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            // A key that expired since SCAN reads as nil; a value we cannot parse is not ours.
            out.extend(
                values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str::<StoredReport>(&v).ok()),
            );
        }
        Ok(out)
    }

    async fn master(&self) -> Result<Option<MasterRecord>> {
        let raw: Option<String> = self.conn.clone().get(MASTER_KEY).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn set_master(&self, master: &MasterRecord) -> Result<()> {
        let json = serde_json::to_string(master).expect("master record serializes");
        let _: () = self.conn.clone().set(MASTER_KEY, json).await?;
        Ok(())
    }

    async fn write_stats(
        &self,
        server_id: &uuid::Uuid,
        stats: &[(&'static str, u64)],
        ttl: Duration,
    ) -> Result<()> {
        let key = format!("{STATS_KEY_PREFIX}{server_id}");
        let _: () = redis::pipe()
            .hset_multiple(&key, stats)
            .ignore()
            .expire(&key, ttl.as_secs().max(1) as i64)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
