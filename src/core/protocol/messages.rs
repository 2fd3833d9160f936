//! The messages between clients and servers: reports, what a client receives (`ToClient`), what
//! the reference clock receives (`ToServer`), and what the server keeps in Redis about clients.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use uuid::Uuid;

use super::{Event, Stamp, PROTOCOL_VERSION};
use crate::core::ntp::NtpStats;
pub use crate::core::upstream::Status as UpstreamStatus;

/// A client's periodic report of its clock, published to [`REPORTS_QUEUE`](super::REPORTS_QUEUE).
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
    /// Diagnostic: messages the client refused (unsigned, badly signed, unknown key, malformed,
    /// replayed), since it started.
    #[serde(default)]
    pub rejected_msgs: Option<u64>,
    /// When this client process started (µs since the epoch on its host's clock): with `seq`
    /// it orders every report of a client id across restarts, so a replayed old report is
    /// refused.
    pub boot_us: i64,
    /// The client's logical clocks when it sent the report.
    pub stamp: Stamp,
    /// Things that happened to the client since its last report (at most 8): the server adds
    /// them to the cluster's event log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// The NTP stratum the client's time has (docs/NTP.md): the master's is
    /// [`crate::core::ntp::LOCAL_STRATUM`], a follower's one more than its master's; 16 while the
    /// client is not synchronized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stratum: Option<u8>,
    /// What the client's time follows, as its NTP service names it: `LOCL` for a master on its
    /// own clock, else the address of the master it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Diagnostic: the client's NTP service counters, when it serves NTP (docs/NTP.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<NtpStats>,
    /// The NTP upstreams the client follows while it is master, each with its state (at most
    /// 8; absent without upstreams).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamStatus>,
    /// A bound (µs) on the error of `ref_offset_us`, from the client's own probes: the
    /// estimate's prediction error, an asymmetry share, and 1 ppm since the newest probe
    /// (docs/PROTOCOL.md §14.5). Absent with `ref_offset_us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_error_us: Option<u64>,
    /// ε: a bound (µs) on |this clock − the master's clock| at `time_us`, computed by the client
    /// from its own measurements (§14.5); 0 for the master itself. Absent while the client has
    /// no bound (before its first reference-offset correction, under `naive` and `berkeley`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_us: Option<u64>,
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
            rejected_msgs: None,
            boot_us: 0,
            stamp: Stamp::default(),
            events: Vec::new(),
            ref_error_us: None,
            max_error_us: None,
            stratum: None,
            reference: None,
            ntp: None,
            upstreams: Vec::new(),
        }
    }

    /// The order of this report among all of its client's reports: (incarnation, sequence).
    pub fn order(&self) -> (i64, u64) {
        (self.boot_us, self.seq)
    }
}

impl StoredReport {
    /// The client's clock minus the server's, as seen at receipt: the report's transit time is
    /// folded in (a few hundred µs on one host). Used to extrapolate the master's clock to "now".
    pub fn offset_to_server_us(&self) -> i64 {
        self.report.time_us - self.received_at_us
    }
}

/// The current master client, stored under [`MASTER_KEY`](super::MASTER_KEY).
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

/// The master's time, broadcast through [`UPDATES_EXCHANGE`](super::UPDATES_EXCHANGE) once per scheduler tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterUpdate {
    /// Always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Id of the server process that sent it (new on every server start).
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    /// Counter of the sender's term (server, epoch), +1 per update, from 1.
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
    /// The master's NTP stratum, from its latest report: a follower's is one more
    /// (docs/NTP.md). Absent when the master's report has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_stratum: Option<u8>,
    /// `master` only: a bound (µs) on the error of `master_ref_offset_us`: the master's
    /// reported `ref_error_us`, grown by 1 ppm for the time it was carried forward. Absent when
    /// the master's report has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_ref_error_us: Option<u64>,
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// Answer to a [`Probe`], sent to the probe's `reply_to` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeReply {
    pub v: u32,
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    /// The client whose probe this answers (its `id`, echoed): a client takes no reply meant
    /// for another, whichever queue it arrived on.
    pub client_id: Uuid,
    /// The probe's `seq`, echoed.
    pub seq: u64,
    /// The probe's `t1_us`, echoed.
    pub t1_us: i64,
    /// Reference clock when the probe was received (µs).
    pub t2_us: i64,
    /// Reference clock when this reply was sent (µs).
    pub t3_us: i64,
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// Start of a Berkeley round, broadcast through [`UPDATES_EXCHANGE`](super::UPDATES_EXCHANGE).
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
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// A client's adjustment at the end of a Berkeley round, sent to its `reply_to` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BerkeleyAdjust {
    pub v: u32,
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    /// The client whose reading this adjustment answers: a client applies no adjustment meant
    /// for another, whichever queue it arrived on.
    pub client_id: Uuid,
    pub round: u64,
    /// Add this to the clock (µs).
    pub adjust_us: i64,
    /// Whether this client's reading was left out of the average (too far from the others, or
    /// too slow a round trip). It is adjusted all the same.
    pub outlier: bool,
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// What an operator asked a client's clock to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeChange {
    /// Set the clock to this time (µs since the epoch).
    Absolute { time_us: i64 },
    /// Move the clock by this much (µs, either way).
    Shift { shift_us: i64 },
}

/// An operator's command to one client, relayed (and signed) by the leader, broadcast through
/// [`UPDATES_EXCHANGE`](super::UPDATES_EXCHANGE): every other client ignores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTime {
    pub v: u32,
    pub server_id: Uuid,
    /// Leader epoch of the sender; receivers ignore anything below the highest they have seen.
    pub epoch: u64,
    /// The client it is for.
    pub client_id: Uuid,
    /// Names this command: a client applies each at most once.
    pub op_id: Uuid,
    pub change: TimeChange,
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// Every message a client receives on its queue, told apart by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToClient {
    MasterUpdate(MasterUpdate),
    ProbeReply(ProbeReply),
    BerkeleyPoll(BerkeleyPoll),
    BerkeleyAdjust(BerkeleyAdjust),
    SetTime(SetTime),
}

impl ToClient {
    /// The sender's leader epoch: every message a client receives carries one.
    pub fn epoch(&self) -> u64 {
        match self {
            ToClient::MasterUpdate(m) => m.epoch,
            ToClient::ProbeReply(m) => m.epoch,
            ToClient::BerkeleyPoll(m) => m.epoch,
            ToClient::BerkeleyAdjust(m) => m.epoch,
            ToClient::SetTime(m) => m.epoch,
        }
    }

    /// The sender's logical clocks.
    pub fn stamp(&self) -> &Stamp {
        match self {
            ToClient::MasterUpdate(m) => &m.stamp,
            ToClient::ProbeReply(m) => &m.stamp,
            ToClient::BerkeleyPoll(m) => &m.stamp,
            ToClient::BerkeleyAdjust(m) => &m.stamp,
            ToClient::SetTime(m) => &m.stamp,
        }
    }

    pub fn stamp_mut(&mut self) -> &mut Stamp {
        match self {
            ToClient::MasterUpdate(m) => &mut m.stamp,
            ToClient::ProbeReply(m) => &mut m.stamp,
            ToClient::BerkeleyPoll(m) => &mut m.stamp,
            ToClient::BerkeleyAdjust(m) => &mut m.stamp,
            ToClient::SetTime(m) => &mut m.stamp,
        }
    }
}

/// An offset probe: "what time is it on the reference clock?", published to [`RPC_QUEUE`](super::RPC_QUEUE) with
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
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// A client's answer to a [`BerkeleyPoll`], published to [`RPC_QUEUE`](super::RPC_QUEUE) with `reply_to`.
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
    /// The sender's logical clocks.
    pub stamp: Stamp,
}

/// Every message on [`RPC_QUEUE`](super::RPC_QUEUE), told apart by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToServer {
    Probe(Probe),
    BerkeleyReading(BerkeleyReading),
}

impl ToServer {
    /// The client that sent it.
    pub fn client_id(&self) -> Uuid {
        match self {
            ToServer::Probe(m) => m.id,
            ToServer::BerkeleyReading(m) => m.id,
        }
    }

    /// The sender's logical clocks.
    pub fn stamp(&self) -> &Stamp {
        match self {
            ToServer::Probe(m) => &m.stamp,
            ToServer::BerkeleyReading(m) => &m.stamp,
        }
    }
}
