//! The events of the cluster's log (`ts:events`), which clients also send in their reports.

use crate::core::logical::Stamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client's first report was stored.
    ClientJoined,
    /// A client's report expired: it was silent for the report TTL.
    ClientLeft,
    /// The leader chose a master client.
    MasterElected,
    /// A replica started a leader election.
    ElectionStarted,
    /// A replica took office with a new epoch.
    LeaderElected,
    /// A leader stopped leading (deposed, or lost its broker session).
    SteppedDown,
    /// A leader resigned on a clean shutdown.
    Resigned,
    /// A message from a deposed leader's epoch was refused.
    FencingRefused,
    /// A client first came within 1 ms of its target.
    ClockSynced,
    /// A synced client's clock was stepped.
    ClockStepped,
    /// A Berkeley round closed.
    BerkeleyRound,
    /// An operator set a client's time.
    TimeSet,
    /// A server replica got its broker session back after losing it.
    Reconnected,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::ClientJoined,
        EventKind::ClientLeft,
        EventKind::MasterElected,
        EventKind::ElectionStarted,
        EventKind::LeaderElected,
        EventKind::SteppedDown,
        EventKind::Resigned,
        EventKind::FencingRefused,
        EventKind::ClockSynced,
        EventKind::ClockStepped,
        EventKind::BerkeleyRound,
        EventKind::TimeSet,
        EventKind::Reconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ClientJoined => "client_joined",
            EventKind::ClientLeft => "client_left",
            EventKind::MasterElected => "master_elected",
            EventKind::ElectionStarted => "election_started",
            EventKind::LeaderElected => "leader_elected",
            EventKind::SteppedDown => "stepped_down",
            EventKind::Resigned => "resigned",
            EventKind::FencingRefused => "fencing_refused",
            EventKind::ClockSynced => "clock_synced",
            EventKind::ClockStepped => "clock_stepped",
            EventKind::BerkeleyRound => "berkeley_round",
            EventKind::TimeSet => "time_set",
            EventKind::Reconnected => "reconnected",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// One entry of the cluster's event log (`ts:events`), or an event a client reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: EventKind,
    /// Who it happened to: `server-<replica id>`, `client-<uuid>`, `tsc`.
    pub node: String,
    /// The node's logical clocks at the event.
    pub stamp: Stamp,
    /// The stamp of the message that caused it, when a message did: the log can check that
    /// every cause comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Stamp>,
    /// One line for people.
    pub text: String,
    /// The facts, for programs (client id, epoch, reason, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, serde_json::Value>,
}

/// Most events a client sends in one report.
pub const MAX_REPORT_EVENTS: usize = 8;
/// Longest event text accepted (bytes).
pub const MAX_EVENT_TEXT: usize = 240;
