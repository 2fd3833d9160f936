//! The report store: each client's latest report (with a TTL) and the current master.
//!
//! [`RedisStore`] is the real one. [`MemoryStore`] keeps the same semantics (TTL against an
//! injected clock) for unit tests of the server's logic; integration tests always use Redis.
//!
//! Liveness *is* the TTL: a client is live while its key exists, so no sweeper is needed, and a
//! key that expires between listing and reading is simply skipped.
//!
//! Where Redis is ([`RedisTarget`]: one server, or a primary the Sentinels name) and the
//! connection that follows a failover ([`Primary`]) are in `primary.rs`.

mod memory;
mod primary;
mod redis_store;

pub use memory::MemoryStore;
pub use primary::{failover_error, Primary, RedisTarget, SENTINEL_SCHEME};
pub use redis_store::RedisStore;

use crate::core::protocol::{MasterRecord, StoredReport};
use crate::error::Result;
use std::future::Future;
use std::time::Duration;

/// What became of one report given to [`ReportStore::store_reports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored; its client had a live report already.
    Updated,
    /// Stored; its client had none (it joined, or came back).
    New,
    /// Refused: a report of the same client with an equal or later order was stored before.
    Replay,
}

/// Storage the server needs. Cloning shares the underlying connection or map.
pub trait ReportStore: Clone + Send + Sync + 'static {
    /// Stores each report under its client's key with `ttl`, in one round trip, unless an
    /// equal or later report of that client was stored before (a replay). Says per report
    /// what happened.
    fn store_reports(
        &self,
        reports: &[StoredReport],
        ttl: Duration,
    ) -> impl Future<Output = Result<Vec<Stored>>> + Send;

    /// One client's latest report, if it is live.
    fn report(&self, id: &uuid::Uuid) -> impl Future<Output = Result<Option<StoredReport>>> + Send;

    /// All reports whose keys have not expired, in no particular order.
    fn live_reports(&self) -> impl Future<Output = Result<Vec<StoredReport>>> + Send;

    /// Up to `n` live reports in election order (lowest rank first, [`crate::core::master_election::live_member`]),
    /// starting after the member `after` (a page's last, for the next page) or at the lowest.
    /// Costs a round trip or two whatever the number of clients.
    fn live_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> impl Future<Output = Result<Vec<StoredReport>>> + Send;

    /// How many clients are live (stored within `ttl`), without reading their reports.
    fn live_count(&self, ttl: Duration) -> impl Future<Output = Result<usize>> + Send;

    /// Drops clients whose reports expired more than `ttl` ago from the live index (the leader,
    /// whenever it reads the index); returns how many.
    fn trim_live(&self, ttl: Duration) -> impl Future<Output = Result<usize>> + Send;

    /// The current master, if one was ever stored.
    fn master(&self) -> impl Future<Output = Result<Option<MasterRecord>>> + Send;

    /// Replaces the current master unless the stored record is from a later leader epoch
    /// (fencing); `false` if it was not replaced.
    fn set_master(&self, master: &MasterRecord) -> impl Future<Output = Result<bool>> + Send;

    /// Publishes a server's counters under `ts:stats:<server_id>`, expiring after `ttl`.
    fn write_stats(
        &self,
        server_id: &uuid::Uuid,
        stats: &[(&'static str, u64)],
        ttl: Duration,
    ) -> impl Future<Output = Result<()>> + Send;
}
