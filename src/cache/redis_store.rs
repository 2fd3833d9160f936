//! [`ReportStore`] on Redis.
//!
//! Keys (see `docs/PROTOCOL.md`): `ts:client:<id>` → [`StoredReport`] JSON with `EX ttl`;
//! `ts:master` → [`MasterRecord`] JSON without TTL, written only by a leader of the same or a
//! later epoch (a Lua script); `ts:epoch` → the last leader epoch, taken atomically by Lua;
//! `ts:replica:<id>` → [`ReplicaRecord`] JSON; `ts:stats:<server_id>` → counters; `ts:live` and
//! `ts:seen`, the live index (clients in election order, and when each was last stored), so
//! that electing, counting and paging cost the same with 10 clients or 10,000. Listing every
//! report uses `SCAN` (never `KEYS`, which blocks Redis) followed by one `MGET`.

use super::primary::{Primary, RedisTarget};
use super::{ReportStore, Stored};
use crate::backoff::Backoff;
use crate::core::master_election::{live_member, member_id};
use crate::core::protocol::{
    client_key, order_key, replica_record_key, Event, MasterRecord, ReplicaRecord, StoredReport,
    CLIENT_KEY_PREFIX, EPOCH_KEY, EVENTS_KEY, LIVE_KEY, MASTER_KEY, MAX_COUNTER,
    REPLICA_KEY_PREFIX, SEEN_KEY, STATS_KEY_PREFIX,
};
use crate::error::Result;
use crate::net::endpoint_of;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a claimed epoch may take to reach a replica (with Sentinel; see
/// [`RedisStore::acquire_epoch`]).
pub const EPOCH_WAIT: Duration = Duration::from_secs(1);
/// `max(stored epoch, ARGV[1]) + 1`, stored and returned atomically; an error instead of a
/// number above ARGV[2] (2^53), which Lua's doubles could no longer count exactly.
const ACQUIRE_EPOCH: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local seen = tonumber(ARGV[1]) or 0
local n = math.max(cur, seen) + 1
if n > tonumber(ARGV[2]) or n ~= n then
  return redis.error_reply('epoch would exceed 2^53')
end
redis.call('SET', KEYS[1], string.format('%d', n))
return n
";
/// Sets the master record unless the stored one comes from a later epoch (a deposed leader
/// must not overwrite its successor's choice). Returns 1 if set.
const SET_MASTER_FENCED: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and (tonumber(rec.epoch) or 0) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";
/// Stores each report of a batch unless an equal or later one of its client is already
/// stored (a replay): compares the reports' order (`<boot>:<seq>`, fixed width, so strings
/// compare like numbers) with the one kept in `ts:order:<id>`, and keeps the live index
/// (`ts:live`, `ts:seen`). KEYS: the client keys, then the order keys, then `ts:live` and
/// `ts:seen`; ARGV: the TTL, the order keys' TTL, then per report its order, its JSON and its
/// live member. Returns per report: 0 refused as a replay, 1 stored, 2 stored and the client is
/// new (its key did not exist).
const STORE_REPORTS: &str = r"
local n = (#KEYS - 2) / 2
local live, seen = KEYS[2 * n + 1], KEYS[2 * n + 2]
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for i = 1, n do
  local key, okey = KEYS[i], KEYS[n + i]
  local order, json, member = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local prev = redis.call('GET', okey)
  if prev and prev >= order then
    out[i] = 0
  else
    local existed = redis.call('EXISTS', key)
    redis.call('SET', key, json, 'EX', ARGV[1])
    redis.call('SET', okey, order, 'EX', ARGV[2])
    redis.call('ZADD', live, 0, member)
    redis.call('ZADD', seen, now_ms, member)
    out[i] = 2 - existed
  end
end
return out
";
/// Drops from the live index (KEYS: `ts:live`, `ts:seen`) at most ARGV[2] members not stored
/// for ARGV[1] ms (their client keys have expired); returns how many.
const TRIM_LIVE: &str = r"
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
end
return #old
";
/// How many members of `ts:seen` (KEYS[1]) were stored in the last ARGV[1] ms: the live clients.
const COUNT_LIVE: &str = r"
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. (now_ms - tonumber(ARGV[1])), '+inf')
";
/// Members trimmed from the live index per trim at most (a leader trims at least every 10 s,
/// so even a mass departure of 10,000 is gone within a minute; readers skip them meanwhile).
pub const TRIM_BATCH: usize = 5000;
/// Slack (ms) added to the TTL before a member counts as expired: Redis expires keys at
/// whole-millisecond resolution, a little after their time.
const EXPIRY_SLACK_MS: u64 = 1000;

/// A report's order as a string that sorts like the order: `<boot + 2^53>:<seq>`, both
/// zero-padded to 20 digits (decoding keeps `boot_us` within ±2^53, so the first is never
/// negative).
pub fn order_string((boot, seq): (i64, u64)) -> String {
    let boot = i128::from(boot) + (1i128 << 53);
    format!("{boot:020}:{seq:020}")
}

/// How long a client's last report order is remembered after its last report: a day, so an
/// old report replayed after the client went away is still refused.
pub const ORDER_TTL: Duration = Duration::from_secs(86_400);
/// Keys fetched per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// A cloneable, self-reconnecting Redis connection used as a [`ReportStore`]; with Sentinel
/// it follows the primary across a failover ([`Primary`]).
#[derive(Clone)]
pub struct RedisStore {
    conn: Primary,
}

impl RedisStore {
    /// Connects (`redis://…` or `redis+sentinel://…`, see [`RedisTarget`]), retrying with
    /// growing delays (logged as `Failed connecting to HOST:PORT, retrying in Ns`) until it
    /// works or `shutdown` fires (then `None`). Once connected, the connection reconnects by
    /// itself after a Redis restart, and follows a failover.
    pub async fn connect(url: &str, shutdown: &CancellationToken) -> Result<Option<Self>> {
        let target = RedisTarget::parse(url)?;
        let endpoint = target.endpoint();
        let mut backoff = Backoff::default();
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                r = Primary::connect(target.clone()) => r,
            };
            match attempt {
                Ok(conn) => {
                    info!(redis = %endpoint_of(&conn.url()), via = %endpoint, "connected to Redis");
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

    /// A fresh leader epoch above both the stored one and `at_least` (see [`EPOCH_KEY`]).
    ///
    /// With Sentinel, the epoch counts only once a replica has it (`WAIT 1`, within
    /// [`EPOCH_WAIT`], on a connection of the claim's own: `WAIT` waits for that connection's
    /// writes and blocks it meanwhile). Otherwise a failover could promote a replica that never
    /// saw the claim, and hand the same epoch to the next leader. A claim no replica took is an
    /// error; the election starts over (and the number is not reused: it is above the stored
    /// one wherever the next claim lands, because the next claimant passes the highest epoch it
    /// has seen as `at_least`).
    pub async fn acquire_epoch(&self, at_least: u64) -> Result<u64> {
        let script = redis::Script::new(ACQUIRE_EPOCH);
        let mut invocation = script.key(EPOCH_KEY);
        invocation.arg(at_least.min(MAX_COUNTER)).arg(MAX_COUNTER);
        if !self.conn.target().follows_failover() {
            return Ok(invocation.invoke_async(&mut self.conn.clone()).await?);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(super::primary::REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(EPOCH_WAIT + super::primary::REDIS_RESPONSE_TIMEOUT));
        let mut own = redis::Client::open(self.conn.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let n: u64 = invocation.invoke_async(&mut own).await?;
        let acked: u64 = redis::cmd("WAIT")
            .arg(1)
            .arg(EPOCH_WAIT.as_millis() as u64)
            .query_async(&mut own)
            .await?;
        if acked == 0 {
            return Err(crate::Error::Runtime(format!(
                "epoch {n} reached no Redis replica within {} ms",
                EPOCH_WAIT.as_millis()
            )));
        }
        Ok(n)
    }

    /// The latest epoch handed out (0: none yet).
    pub async fn epoch(&self) -> Result<u64> {
        let n: Option<u64> = self.conn.clone().get(EPOCH_KEY).await?;
        Ok(n.unwrap_or(0))
    }

    /// Publishes a replica's self-description, expiring after `ttl` unless rewritten.
    pub async fn write_replica(&self, r: &ReplicaRecord, ttl: Duration) -> Result<()> {
        let json = serde_json::to_string(r).expect("replica records serialize");
        let _: () = self
            .conn
            .clone()
            .set_ex(replica_record_key(r.id), json, ttl.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// Every replica record that has not expired, by id.
    pub async fn replicas(&self) -> Result<Vec<ReplicaRecord>> {
        let mut conn = self.conn.clone();
        let keys = scan(&mut conn, &format!("{REPLICA_KEY_PREFIX}*")).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut out: Vec<ReplicaRecord> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Appends events to the cluster's log, trimming it to about `max_len` entries.
    pub async fn append_events(&self, events: &[Event], max_len: u64) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in events {
            let json = serde_json::to_string(e).expect("events serialize");
            pipe.cmd("XADD")
                .arg(EVENTS_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg("e")
                .arg(json)
                .ignore();
        }
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Up to `count` events of the log after stream id `after` (from the start if `None`),
    /// oldest first, with their stream ids. Entries that are not events are skipped.
    pub async fn events(&self, after: Option<&str>, count: usize) -> Result<Vec<(String, Event)>> {
        let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(EVENTS_KEY)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(parse_events(raw))
    }

    /// The newest `count` events of the log, oldest first, with their stream ids.
    pub async fn events_tail(&self, count: usize) -> Result<Vec<(String, Event)>> {
        let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(EVENTS_KEY)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut out = parse_events(raw);
        out.reverse();
        Ok(out)
    }

    /// Asks Redis to announce expired keys (`notify-keyspace-events Ex`), so that a client
    /// leaving is noticed when its report expires.
    pub async fn announce_expiries(&self) -> Result<()> {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Ex")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Makes client `id`'s report expire now (in 1 ms), as if it had been silent for the TTL:
    /// the leader then elects another master at its next tick if it was master, and logs
    /// `client_left` from the expiry. `tsc clients remove` does this once the client is gone.
    /// Its live-index member goes too, so counts and lists drop it at once.
    pub async fn expire_report(&self, id: &uuid::Uuid) -> Result<()> {
        if let Some(r) = self.report(id).await? {
            let member = live_member(&r.report.id, &r.report.ip);
            let _: () = redis::pipe()
                .zrem(LIVE_KEY, &member)
                .ignore()
                .zrem(SEEN_KEY, &member)
                .ignore()
                .query_async(&mut self.conn.clone())
                .await?;
        }
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(crate::core::protocol::client_key(id))
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The underlying connection, for callers (tsc, tests) that read other keys.
    pub fn connection(&self) -> Primary {
        self.conn.clone()
    }
}

/// Every key matching `pattern`, by `SCAN` (never `KEYS`, which blocks Redis), deduplicated.
async fn scan(conn: &mut Primary, pattern: &str) -> Result<Vec<String>> {
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

    async fn store_reports(&self, reports: &[StoredReport], ttl: Duration) -> Result<Vec<Stored>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let store = redis::Script::new(STORE_REPORTS);
        let mut script = store.prepare_invoke();
        for r in reports {
            script.key(client_key(&r.report.id));
        }
        for r in reports {
            script.key(order_key(&r.report.id));
        }
        script.key(LIVE_KEY).key(SEEN_KEY);
        script.arg(ttl.as_secs().max(1)).arg(ORDER_TTL.as_secs());
        for r in reports {
            script.arg(order_string(r.report.order()));
            script.arg(serde_json::to_string(r).expect("stored reports serialize"));
            script.arg(live_member(&r.report.id, &r.report.ip));
        }
        let codes: Vec<u8> = script.invoke_async(&mut self.conn.clone()).await?;
        Ok(codes
            .into_iter()
            .map(|c| match c {
                0 => Stored::Replay,
                2 => Stored::New,
                _ => Stored::Updated,
            })
            .collect())
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

    async fn live_after(&self, after: Option<&str>, n: usize) -> Result<Vec<StoredReport>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(n);
        let mut from = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let batch = n.clamp(8, SCAN_COUNT);
        while out.len() < n {
            let members: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(LIVE_KEY)
                .arg(&from)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(batch)
                .query_async(&mut conn)
                .await?;
            let Some(last) = members.last() else { break };
            from = format!("({last}");
            let ids: Vec<(&String, uuid::Uuid)> = members
                .iter()
                .filter_map(|m| Some((m, member_id(m)?)))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let keys: Vec<String> = ids.iter().map(|(_, id)| client_key(id)).collect();
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            // An expired key reads as nil; a member whose client now reports another address
            // is a stale rank (the new one is elsewhere in the index): both are skipped.
            for ((member, _), value) in ids.iter().zip(values) {
                let Some(r) = value.and_then(|v| serde_json::from_str::<StoredReport>(&v).ok())
                else {
                    continue;
                };
                if live_member(&r.report.id, &r.report.ip) == **member && out.len() < n {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    async fn live_count(&self, ttl: Duration) -> Result<usize> {
        let n: usize = redis::Script::new(COUNT_LIVE)
            .key(SEEN_KEY)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n)
    }

    async fn trim_live(&self, ttl: Duration) -> Result<usize> {
        let n: usize = redis::Script::new(TRIM_LIVE)
            .key(LIVE_KEY)
            .key(SEEN_KEY)
            .arg(ttl.as_millis() as u64 + EXPIRY_SLACK_MS)
            .arg(TRIM_BATCH)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n)
    }

    async fn master(&self) -> Result<Option<MasterRecord>> {
        let raw: Option<String> = self.conn.clone().get(MASTER_KEY).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn set_master(&self, master: &MasterRecord) -> Result<bool> {
        let json = serde_json::to_string(master).expect("master record serializes");
        let set: i64 = redis::Script::new(SET_MASTER_FENCED)
            .key(MASTER_KEY)
            .arg(json)
            .arg(master.epoch)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(set == 1)
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

/// Stream entries as events; entries that are not events are skipped.
fn parse_events(raw: Vec<(String, Vec<(String, String)>)>) -> Vec<(String, Event)> {
    raw.into_iter()
        .filter_map(|(id, fields)| {
            let json = fields.into_iter().find(|(k, _)| k == "e")?.1;
            serde_json::from_str(&json).ok().map(|e| (id, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_strings_sort_like_orders() {
        let orders = [
            (-(1i64 << 53), 0u64),
            (-5, 9),
            (-5, 10),
            (0, 0),
            (1_796_000_000_000_000, 1),
            (1_796_000_000_000_000, 2),
            (1i64 << 53, u64::MAX),
        ];
        for w in orders.windows(2) {
            assert!(
                order_string(w[0]) < order_string(w[1]),
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
    }
}
