//! Names of the queues, exchanges and Redis keys every peer shares.

use uuid::Uuid;

/// Durable queue (default exchange, routing key = queue name) that every client publishes its
/// [`TimeReport`](super::TimeReport) to and the server's workers consume from.
pub const REPORTS_QUEUE: &str = "ts.reports";

/// Fanout exchange the server publishes [`MasterUpdate`](super::MasterUpdate)s to. Each client binds its own
/// server-named, exclusive, auto-delete queue to it.
pub const UPDATES_EXCHANGE: &str = "ts.master_updates";

/// Durable queue (default exchange) for requests that must be answered from one reference clock:
/// offset probes and Berkeley poll answers ([`ToServer`](super::ToServer)). One task of the server consumes it.
pub const RPC_QUEUE: &str = "ts.rpc";

/// Direct exchange of the server replicas' leader election ([`ToReplica`](super::ToReplica)). Each replica binds
/// its own exclusive, auto-delete queue with two routing keys: [`CONTROL_ALL`] (broadcasts) and
/// [`replica_key`] of its own id (messages addressed to it).
pub const CONTROL_EXCHANGE: &str = "ts.control";

/// Routing key of control messages meant for every replica.
pub const CONTROL_ALL: &str = "all";

/// Routing key of control messages meant for replica `id` alone.
pub fn replica_key(id: u64) -> String {
    format!("replica.{id}")
}

/// Name of replica `id`'s control queue.
pub fn replica_queue(id: u64) -> String {
    format!("ts.replica.{id}")
}

/// Redis key of the latest leader epoch (an integer). A replica that wins an election takes
/// `max(this, highest epoch it has seen) + 1` atomically, so every leader term has its own
/// epoch and epochs only grow.
pub const EPOCH_KEY: &str = "ts:epoch";

/// Redis key prefix of a replica's self-description: `ts:replica:<id>` holds a
/// [`ReplicaRecord`](super::ReplicaRecord) as JSON, rewritten at every heartbeat, expiring when the replica is gone.
pub const REPLICA_KEY_PREFIX: &str = "ts:replica:";

/// Redis key of a replica's record.
pub fn replica_record_key(id: u64) -> String {
    format!("{REPLICA_KEY_PREFIX}{id}")
}

/// Redis key prefix of a client's latest report: `ts:client:<id>` holds a [`StoredReport`](super::StoredReport) as
/// JSON with a TTL (the liveness window).
pub const CLIENT_KEY_PREFIX: &str = "ts:client:";

/// Redis key holding the current [`MasterRecord`](super::MasterRecord) as JSON, without TTL: the master stays master
/// until its own client key expires.
pub const MASTER_KEY: &str = "ts:master";

/// Redis key prefix of a server's counters: `ts:stats:<server_id>` is a hash (see
/// [`crate::server::metrics::Metrics`]) rewritten by every replica at every heartbeat, expiring when the
/// replica is gone.
pub const STATS_KEY_PREFIX: &str = "ts:stats:";

/// Redis key of a client's latest report.
pub fn client_key(id: &Uuid) -> String {
    format!("{CLIENT_KEY_PREFIX}{id}")
}

/// Redis key prefix of the order (`<boot>:<seq>`) of a client's latest stored report, kept a
/// day so that an old report replayed later is refused.
pub const ORDER_KEY_PREFIX: &str = "ts:order:";

/// Redis key of the order of a client's latest stored report.
pub fn order_key(id: &Uuid) -> String {
    format!("{ORDER_KEY_PREFIX}{id}")
}

/// Redis sorted set of live clients in election order: every member has score 0 and is
/// `<rank>:<id>` ([`crate::core::master_election::live_member`]), so `ZRANGE … 0 k` is the `k + 1`
/// clients the election prefers, whatever their number. Kept by the store script with
/// [`SEEN_KEY`]; members whose client key expired are trimmed by the leader.
pub const LIVE_KEY: &str = "ts:live";

/// Redis sorted set of the same members as [`LIVE_KEY`], scored by when each client's last
/// report was stored (Redis `TIME`, ms): what is older than the TTL has expired.
pub const SEEN_KEY: &str = "ts:seen";

/// Redis stream of the cluster's event log: entries `* e <Event JSON>`, capped
/// (`XADD … MAXLEN ~ N`).
pub const EVENTS_KEY: &str = "ts:events";
