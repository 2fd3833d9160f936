//! The stamp every message and event carries: the sender's logical clocks.

use super::{Hlc, VectorClock};
use serde::{Deserialize, Serialize};

/// The sender's logical clocks when it sent a message (or when an event happened).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    /// Lamport counter (every process).
    pub lt: u64,
    /// Hybrid logical clock. Servers and tsc always send it; a client only once its clock is
    /// synced (before that its physical time may be an hour off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc: Option<Hlc>,
    /// Vector clock, by replica id (replicas' control messages and events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vc: Option<VectorClock>,
}
