//! The messages among server replicas (`ToReplica`, on `ts.control`) and each replica's record
//! in Redis.

use super::Stamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    /// The sender's logical clocks, vector clock included.
    pub stamp: Stamp,
}

/// Bully: "I outrank you and I am alive; stand down", sent to the candidate alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub v: u32,
    pub from: u64,
    pub priority: u64,
    /// The sender's logical clocks, vector clock included.
    pub stamp: Stamp,
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
    /// The sender's logical clocks, vector clock included.
    pub stamp: Stamp,
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
    /// The sender's logical clocks, vector clock included.
    pub stamp: Stamp,
}

/// A leader's goodbye on a clean shutdown: followers elect at once instead of waiting out the
/// heartbeat timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resign {
    pub v: u32,
    pub from: u64,
    pub epoch: u64,
    /// The sender's logical clocks, vector clock included.
    pub stamp: Stamp,
}

/// Every message on [`CONTROL_EXCHANGE`](super::CONTROL_EXCHANGE), told apart by `"type"`.
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

    /// The sender's logical clocks.
    pub fn stamp(&self) -> &Stamp {
        match self {
            ToReplica::Election(m) => &m.stamp,
            ToReplica::Answer(m) => &m.stamp,
            ToReplica::Coordinator(m) => &m.stamp,
            ToReplica::Heartbeat(m) => &m.stamp,
            ToReplica::Resign(m) => &m.stamp,
        }
    }

    pub fn stamp_mut(&mut self) -> &mut Stamp {
        match self {
            ToReplica::Election(m) => &mut m.stamp,
            ToReplica::Answer(m) => &mut m.stamp,
            ToReplica::Coordinator(m) => &mut m.stamp,
            ToReplica::Heartbeat(m) => &mut m.stamp,
            ToReplica::Resign(m) => &mut m.stamp,
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
