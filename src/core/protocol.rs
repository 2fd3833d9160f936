//! The wire protocol: names of queues, exchanges and Redis keys, and the two messages.
//!
//! Everything that crosses a process boundary is defined here and nowhere else, and every
//! message goes through [`encode`] / [`decode`] so that size limits, version checks and JSON
//! parsing are enforced at one choke point. `docs/PROTOCOL.md` documents this file field by
//! field; keep the two in step.
//!
//! Times are integers in **microseconds since the Unix epoch** (`*_us`). Microseconds keep every
//! value below 2^53, so a JavaScript or Python client can use plain numbers, and they resolve the
//! sub-millisecond errors this system is measured in.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::IpAddr;
use uuid::Uuid;

/// Version of the message format. Decoders reject any other value: a newer peer's message is
/// counted as rejected rather than misread.
pub const PROTOCOL_VERSION: u32 = 3;

/// Durable queue (default exchange, routing key = queue name) that every client publishes its
/// [`TimeReport`] to and the server's workers consume from.
pub const REPORTS_QUEUE: &str = "ts.reports";

/// Fanout exchange the server publishes [`MasterUpdate`]s to. Each client binds its own
/// server-named, exclusive, auto-delete queue to it.
pub const UPDATES_EXCHANGE: &str = "ts.master_updates";

/// Durable queue (default exchange) for requests that must be answered from one reference clock:
/// offset probes and Berkeley poll answers ([`ToServer`]). One task of the server consumes it.
pub const RPC_QUEUE: &str = "ts.rpc";

/// Direct exchange of the server replicas' leader election ([`ToReplica`]). Each replica binds
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
/// [`ReplicaRecord`] as JSON, rewritten at every heartbeat, expiring when the replica is gone.
pub const REPLICA_KEY_PREFIX: &str = "ts:replica:";

/// Redis key of a replica's record.
pub fn replica_record_key(id: u64) -> String {
    format!("{REPLICA_KEY_PREFIX}{id}")
}

/// Redis key prefix of a client's latest report: `ts:client:<id>` holds a [`StoredReport`] as
/// JSON with a TTL (the liveness window).
pub const CLIENT_KEY_PREFIX: &str = "ts:client:";

/// Redis key holding the current [`MasterRecord`] as JSON, without TTL: the master stays master
/// until its own client key expires.
pub const MASTER_KEY: &str = "ts:master";

/// Redis key prefix of a server's counters: `ts:stats:<server_id>` is a hash (see
/// [`crate::server::Metrics`]) rewritten by every replica at every heartbeat, expiring when the
/// replica is gone.
pub const STATS_KEY_PREFIX: &str = "ts:stats:";

/// Largest message accepted, in bytes. A report is ~300 bytes; anything this large is abuse.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Redis key of a client's latest report.
pub fn client_key(id: &Uuid) -> String {
    format!("{CLIENT_KEY_PREFIX}{id}")
}

/// A client's periodic report of its clock, published to [`REPORTS_QUEUE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeReport {
    /// Always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The client's id.
    pub id: Uuid,
    /// The address the client advertises; master election compares these numerically.
    pub ip: IpAddr,
    /// The client's clock at the moment of sending (µs since epoch). This is also the report's
    /// send timestamp, in the client's own time frame.
    pub time_us: i64,
    /// Per-client counter, +1 per report, starting at 1 when the process starts.
    pub seq: u64,
    /// Master named by the latest update the client applied (its own id if it is the master).
    pub master_id: Option<Uuid>,
    /// Master time carried by that update (µs since epoch).
    pub master_time_us: Option<i64>,
    /// Diagnostic: client clock minus the host's realtime clock (µs). Meaningful only to compare
    /// clients that share one host clock (containers or processes on one machine).
    #[serde(default)]
    pub true_offset_us: Option<i64>,
    /// The client's clock minus the server's reference clock at `time_us` (µs), estimated from
    /// offset probes. Absent until the client has probe samples (or if it does not probe).
    #[serde(default)]
    pub ref_offset_us: Option<i64>,
    /// The client clock's rate minus the reference clock's rate (ppm), estimated from probes.
    #[serde(default)]
    pub ref_freq_ppm: Option<f64>,
    /// Diagnostic: the largest step (µs) the client took since it first came within 1 ms of its
    /// target (0: none). Shows whether a synced clock ever jumped; slews are not steps.
    #[serde(default)]
    pub max_step_us: Option<i64>,
    /// The server instance (`server_id`) whose clock `ref_offset_us` is measured against.
    #[serde(default)]
    pub ref_server_id: Option<Uuid>,
    /// The leader epoch the client follows: the highest it has accepted a message from.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Diagnostic: messages the client ignored because their epoch was lower than `epoch`
    /// (a deposed leader still talking), since the client started.
    #[serde(default)]
    pub stale_epoch_msgs: Option<u64>,
}

/// What the server stores in Redis for each client: the report plus when the server got it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReport {
    /// The report as received.
    pub report: TimeReport,
    /// Server clock when the worker received the report (µs since epoch).
    pub received_at_us: i64,
}

impl TimeReport {
    /// A report with no master, no reference estimate and no diagnostics yet; callers set what
    /// they have with struct update syntax.
    pub fn new(id: Uuid, ip: IpAddr, time_us: i64, seq: u64) -> Self {
        TimeReport {
            v: PROTOCOL_VERSION,
            id,
            ip,
            time_us,
            seq,
            master_id: None,
            master_time_us: None,
            true_offset_us: None,
            ref_offset_us: None,
            ref_freq_ppm: None,
            max_step_us: None,
            ref_server_id: None,
            epoch: None,
            stale_epoch_msgs: None,
        }
    }
}

impl StoredReport {
    /// The client's clock minus the server's, as seen at receipt: the report's transit time is
    /// folded in (a few hundred µs on one host). Used to extrapolate the master's clock to "now".
    pub fn offset_to_server_us(&self) -> i64 {
        self.report.time_us - self.received_at_us
    }
}

/// The current master client, stored under [`MASTER_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterRecord {
    pub id: Uuid,
    pub ip: IpAddr,
    /// Server clock when this client was elected (µs since epoch).
    pub elected_at_us: i64,
    /// Epoch of the leader that elected it. A record is only replaced by a leader of the same
    /// or a later epoch, so a deposed leader cannot re-elect.
    #[serde(default)]
    pub epoch: u64,
}

/// How clients are synchronized; chosen on the server (`--algorithm`), carried in updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Four-timestamp offset estimation against the server's reference clock: clients correct
    /// by the master's offset to the reference minus their own.
    #[default]
    Master,
    /// The seed's behaviour: set the clock to the master's last reported time.
    Naive,
    /// Berkeley (TEMPO): the server polls every client and sends each its adjustment to the
    /// fault-tolerant average.
    Berkeley,
}

impl Algorithm {
    /// Every algorithm, in the order they are documented.
    pub const ALL: [Algorithm; 3] = [Algorithm::Master, Algorithm::Naive, Algorithm::Berkeley];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Master => "master",
            Algorithm::Naive => "naive",
            Algorithm::Berkeley => "berkeley",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    /// Parses the lowercase name, as flags, `TS_ALGORITHM` and cluster.toml spell it.
    fn from_str(s: &str) -> Result<Self, String> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown algorithm {s:?} (expected master, naive or berkeley)"))
    }
}

/// The master's time, broadcast through [`UPDATES_EXCHANGE`] once per scheduler tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterUpdate {
    /// Always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Id of the server process that sent it (new on every server start).
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    /// Per-server counter, +1 per update.
    pub seq: u64,
    pub master_id: Uuid,
    pub master_ip: IpAddr,
    /// `master`: the master's clock extrapolated to `server_time_us`. `naive`: the master's
    /// last reported time, as the seed sent it (µs since epoch).
    pub master_time_us: i64,
    /// Server clock when the update was sent (µs since epoch). The server's clock is the
    /// reference clock of probes.
    pub server_time_us: i64,
    /// How receivers should apply this update.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// `master` only: the master's clock minus the reference clock at `server_time_us` (µs),
    /// from the master's own probe estimate. Absent when the master does not probe.
    #[serde(default)]
    pub master_ref_offset_us: Option<i64>,
    /// `master` only: the master clock's rate minus the reference's (ppm).
    #[serde(default)]
    pub master_ref_freq_ppm: Option<f64>,
}

/// Answer to a [`Probe`], sent to the probe's `reply_to` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeReply {
    pub v: u32,
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    /// The probe's `seq`, echoed.
    pub seq: u64,
    /// The probe's `t1_us`, echoed.
    pub t1_us: i64,
    /// Reference clock when the probe was received (µs).
    pub t2_us: i64,
    /// Reference clock when this reply was sent (µs).
    pub t3_us: i64,
}

/// Start of a Berkeley round, broadcast through [`UPDATES_EXCHANGE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BerkeleyPoll {
    pub v: u32,
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    pub round: u64,
    /// Which poll of the round (a round sends several; each client's fastest answer counts).
    pub poll: u32,
}

/// A client's adjustment at the end of a Berkeley round, sent to its `reply_to` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BerkeleyAdjust {
    pub v: u32,
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    pub round: u64,
    /// Add this to the clock (µs).
    pub adjust_us: i64,
    /// Whether this client's reading was left out of the average (too far from the others, or
    /// too slow a round trip). It is adjusted all the same.
    pub outlier: bool,
}

/// Every message a client receives on its queue, told apart by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToClient {
    MasterUpdate(MasterUpdate),
    ProbeReply(ProbeReply),
    BerkeleyPoll(BerkeleyPoll),
    BerkeleyAdjust(BerkeleyAdjust),
}

impl ToClient {
    /// The sender's leader epoch: every message a client receives carries one.
    pub fn epoch(&self) -> u64 {
        match self {
            ToClient::MasterUpdate(m) => m.epoch,
            ToClient::ProbeReply(m) => m.epoch,
            ToClient::BerkeleyPoll(m) => m.epoch,
            ToClient::BerkeleyAdjust(m) => m.epoch,
        }
    }
}

/// What a server replica is doing in the leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    /// Follows a leader (or has not found one yet).
    #[default]
    Follower,
    /// Runs an election: waiting for answers, for a coordinator, or for its epoch.
    Candidate,
    /// Runs the scheduler and the reference clock, and broadcasts.
    Leader,
}

impl ReplicaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Follower => "follower",
            ReplicaRole::Candidate => "candidate",
            ReplicaRole::Leader => "leader",
        }
    }
}

/// Bully: "I am starting an election", broadcast to every replica. Every live replica that
/// outranks the sender answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Election {
    pub v: u32,
    pub from: u64,
    pub priority: u64,
}

/// Bully: "I outrank you and I am alive; stand down", sent to the candidate alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub v: u32,
    pub from: u64,
    pub priority: u64,
}

/// Bully: "I am the leader of `epoch`", broadcast when a replica takes office, and again to
/// correct a replica that shows a stale view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinator {
    pub v: u32,
    pub from: u64,
    pub priority: u64,
    pub epoch: u64,
}

/// Every replica's periodic "alive" broadcast; the leader's doubles as its lease renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub v: u32,
    pub from: u64,
    pub priority: u64,
    pub role: ReplicaRole,
    /// A leader's own epoch; otherwise the epoch of the leader it follows (0: none).
    pub epoch: u64,
    /// The leader it follows (itself if leader).
    pub leader: Option<u64>,
}

/// A leader's goodbye on a clean shutdown: followers elect at once instead of waiting out the
/// heartbeat timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resign {
    pub v: u32,
    pub from: u64,
    pub epoch: u64,
}

/// Every message on [`CONTROL_EXCHANGE`], told apart by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToReplica {
    Election(Election),
    Answer(Answer),
    Coordinator(Coordinator),
    Heartbeat(Heartbeat),
    Resign(Resign),
}

impl ToReplica {
    /// The replica that sent it.
    pub fn from(&self) -> u64 {
        match self {
            ToReplica::Election(m) => m.from,
            ToReplica::Answer(m) => m.from,
            ToReplica::Coordinator(m) => m.from,
            ToReplica::Heartbeat(m) => m.from,
            ToReplica::Resign(m) => m.from,
        }
    }
}

/// A replica's self-description under `ts:replica:<id>`, for `tsc servers list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub id: u64,
    pub priority: u64,
    /// This process's `server_id` (new on every start).
    pub server_id: Uuid,
    pub role: ReplicaRole,
    /// Own epoch if leader, else the followed leader's (0: none).
    pub epoch: u64,
    pub leader: Option<u64>,
    /// Whether an election is running on this replica.
    pub electing: bool,
    /// Elections this replica started since it started.
    pub elections: u64,
    /// The address of its HTTP API (`ip:port`).
    pub http: String,
    /// When this record was written (replica clock, µs since epoch): its heartbeat.
    pub heartbeat_at_us: i64,
    pub started_at_us: i64,
}

/// An offset probe: "what time is it on the reference clock?", published to [`RPC_QUEUE`] with
/// the AMQP `reply_to` property naming the client's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub v: u32,
    pub id: Uuid,
    /// Per-client counter, echoed in the reply.
    pub seq: u64,
    /// Client clock at send (µs).
    pub t1_us: i64,
}

/// A client's answer to a [`BerkeleyPoll`], published to [`RPC_QUEUE`] with `reply_to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BerkeleyReading {
    pub v: u32,
    pub id: Uuid,
    /// The poll's `epoch`, echoed: a new leader ignores answers to its predecessor's polls.
    pub epoch: u64,
    pub round: u64,
    /// The poll's `poll`, echoed.
    pub poll: u32,
    /// The client's clock when it answered (µs).
    pub time_us: i64,
    /// The client's clock minus the coordinator's at `time_us` (µs), from its probe estimate
    /// (many four-timestamp exchanges). Preferred over the poll's own round trip, which a
    /// fanout to many clients makes lopsided; absent when the client does not probe.
    #[serde(default)]
    pub ref_offset_us: Option<i64>,
}

/// Every message on [`RPC_QUEUE`], told apart by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToServer {
    Probe(Probe),
    BerkeleyReading(BerkeleyReading),
}

/// Why a message was rejected. Each variant is a counter in the server's stats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("unsupported protocol version {0} (expected {PROTOCOL_VERSION})")]
    Version(u64),
    #[error("malformed: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// Short stable name, used as a counter label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::Version(_) => "bad_version",
            DecodeError::Malformed(_) => "malformed",
        }
    }
}

/// Serializes a message. Infallible for the types in this module.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("protocol messages always serialize")
}

/// Parses a message, enforcing the size limit and the version before the schema, so that a
/// newer peer's message is reported as a version mismatch rather than as garbage.
pub fn decode<T: DeserializeOwned + Checked>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<serde_json::Value>,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match versioned.v.as_ref().and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => return Err(DecodeError::Version(v)),
        None => {
            return Err(DecodeError::Malformed(
                "missing or non-integer field `v`".into(),
            ))
        }
    }
    let msg: T =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    msg.check()?;
    Ok(msg)
}

/// Largest magnitude accepted for any time or offset field (µs): 2^53, about 285 years. Beyond
/// it a value is not a clock reading, and sums and differences of a few accepted values can
/// never overflow, so no arithmetic on received times needs to be checked.
pub const MAX_TIME_US: i64 = 1 << 53;

/// Field ranges a message must respect beyond its schema.
pub trait Checked {
    fn check(&self) -> Result<(), DecodeError>;
}

fn times(fields: &[(&str, Option<i64>)]) -> Result<(), DecodeError> {
    for (name, v) in fields {
        if v.is_some_and(|v| !(-MAX_TIME_US..=MAX_TIME_US).contains(&v)) {
            return Err(DecodeError::Malformed(format!("`{name}` out of range")));
        }
    }
    Ok(())
}

fn freq(name: &str, v: Option<f64>) -> Result<(), DecodeError> {
    match v {
        Some(f) if !(f.is_finite() && f.abs() <= 1e6) => {
            Err(DecodeError::Malformed(format!("`{name}` out of range")))
        }
        _ => Ok(()),
    }
}

impl Checked for TimeReport {
    fn check(&self) -> Result<(), DecodeError> {
        times(&[
            ("time_us", Some(self.time_us)),
            ("master_time_us", self.master_time_us),
            ("true_offset_us", self.true_offset_us),
            ("ref_offset_us", self.ref_offset_us),
            ("max_step_us", self.max_step_us),
        ])?;
        freq("ref_freq_ppm", self.ref_freq_ppm)
    }
}

impl Checked for ToClient {
    fn check(&self) -> Result<(), DecodeError> {
        match self {
            ToClient::MasterUpdate(u) => {
                times(&[
                    ("master_time_us", Some(u.master_time_us)),
                    ("server_time_us", Some(u.server_time_us)),
                    ("master_ref_offset_us", u.master_ref_offset_us),
                ])?;
                freq("master_ref_freq_ppm", u.master_ref_freq_ppm)
            }
            ToClient::ProbeReply(r) => times(&[
                ("t1_us", Some(r.t1_us)),
                ("t2_us", Some(r.t2_us)),
                ("t3_us", Some(r.t3_us)),
            ]),
            ToClient::BerkeleyPoll(_) => Ok(()),
            ToClient::BerkeleyAdjust(a) => times(&[("adjust_us", Some(a.adjust_us))]),
        }
    }
}

impl Checked for ToServer {
    fn check(&self) -> Result<(), DecodeError> {
        match self {
            ToServer::Probe(p) => times(&[("t1_us", Some(p.t1_us))]),
            ToServer::BerkeleyReading(r) => times(&[
                ("time_us", Some(r.time_us)),
                ("ref_offset_us", r.ref_offset_us),
            ]),
        }
    }
}

impl Checked for ToReplica {
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> TimeReport {
        TimeReport {
            v: PROTOCOL_VERSION,
            id: Uuid::from_u128(7),
            ip: "10.0.0.7".parse().unwrap(),
            time_us: 1_700_000_000_000_000,
            seq: 3,
            master_id: None,
            master_time_us: None,
            true_offset_us: Some(-12),
            ..TimeReport::new(Uuid::from_u128(7), "10.0.0.7".parse().unwrap(), 0, 0)
        }
    }

    #[test]
    fn report_round_trips() {
        let r = report();
        assert_eq!(decode::<TimeReport>(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn rejects_garbage_with_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "malformed"),
            (b"\x80\x03}q", "malformed"),
            (b"[1,2]", "malformed"),
            (b"{\"v\":1,\"id\":1}", "bad_version"),
            (b"{\"v\":\"1\"}", "malformed"),
            (b"{\"v\":3,\"id\":\"nope\"}", "malformed"),
        ];
        for (bytes, kind) in cases {
            let err = decode::<TimeReport>(bytes).unwrap_err();
            assert_eq!(err.kind(), *kind, "{bytes:?}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_fields_and_bad_ip() {
        let mut v = serde_json::to_value(report()).unwrap();
        v["ip"] = "10.0.0.300".into();
        let err = decode::<TimeReport>(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(err.kind(), "malformed");
        let mut v = serde_json::to_value(report()).unwrap();
        v["extra"] = 1.into();
        assert!(decode::<TimeReport>(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn tagged_messages_round_trip_and_reject_unknown_fields() {
        let m = ToClient::ProbeReply(ProbeReply {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(1),
            epoch: 1,
            seq: 4,
            t1_us: 1,
            t2_us: 2,
            t3_us: 3,
        });
        let bytes = encode(&m);
        assert!(String::from_utf8_lossy(&bytes).contains("\"type\":\"probe_reply\""));
        assert_eq!(decode::<ToClient>(&bytes).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["surprise"] = 1.into();
        assert!(decode::<ToClient>(&serde_json::to_vec(&v).unwrap()).is_err());
        v.as_object_mut().unwrap().remove("surprise");
        v["type"] = "nonsense".into();
        assert_eq!(
            decode::<ToClient>(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .kind(),
            "malformed"
        );
        let p = ToServer::Probe(Probe {
            v: PROTOCOL_VERSION,
            id: Uuid::from_u128(2),
            seq: 1,
            t1_us: 5,
        });
        assert_eq!(decode::<ToServer>(&encode(&p)).unwrap(), p);
    }

    #[test]
    fn rejects_times_out_of_range() {
        let mut r = report();
        r.time_us = i64::MAX;
        assert_eq!(
            decode::<TimeReport>(&encode(&r)).unwrap_err().kind(),
            "malformed"
        );
        let mut r = report();
        r.ref_freq_ppm = Some(1e300);
        assert!(decode::<TimeReport>(&encode(&r)).is_err());
        let adj = ToClient::BerkeleyAdjust(BerkeleyAdjust {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(1),
            epoch: 1,
            round: 1,
            adjust_us: i64::MIN,
            outlier: false,
        });
        assert!(decode::<ToClient>(&encode(&adj)).is_err());
    }

    #[test]
    fn control_messages_round_trip_and_carry_their_sender() {
        let msgs = [
            ToReplica::Election(Election {
                v: PROTOCOL_VERSION,
                from: 10,
                priority: 2,
            }),
            ToReplica::Answer(Answer {
                v: PROTOCOL_VERSION,
                from: 11,
                priority: 0,
            }),
            ToReplica::Coordinator(Coordinator {
                v: PROTOCOL_VERSION,
                from: 12,
                priority: 0,
                epoch: 9,
            }),
            ToReplica::Heartbeat(Heartbeat {
                v: PROTOCOL_VERSION,
                from: 13,
                priority: 0,
                role: ReplicaRole::Leader,
                epoch: 9,
                leader: Some(13),
            }),
            ToReplica::Resign(Resign {
                v: PROTOCOL_VERSION,
                from: 14,
                epoch: 9,
            }),
        ];
        for (i, m) in msgs.iter().enumerate() {
            let back: ToReplica = decode(&encode(m)).unwrap();
            assert_eq!(&back, m);
            assert_eq!(back.from(), 10 + i as u64);
        }
        let json = String::from_utf8(encode(&msgs[3])).unwrap();
        assert!(
            json.contains(r#""type":"heartbeat""#) && json.contains(r#""role":"leader""#),
            "{json}"
        );
        assert!(
            decode::<ToReplica>(br#"{"v":3,"type":"election","from":-1,"priority":0}"#).is_err()
        );
        assert!(decode::<ToReplica>(br#"{"v":3,"type":"coup","from":1}"#).is_err());
    }

    #[test]
    fn rejects_oversized() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode::<TimeReport>(&big).unwrap_err().kind(), "too_large");
    }

    #[test]
    fn optional_diagnostic_may_be_absent() {
        let mut v = serde_json::to_value(report()).unwrap();
        v.as_object_mut().unwrap().remove("true_offset_us");
        let r: TimeReport = decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(r.true_offset_us, None);
    }
}
