//! Settings of `ts-server` and `ts-client`: one definition per setting.
//!
//! Every setting is one field of one struct, declared once with its flag, its `TS_*` variable,
//! its default (a named constant) and its help text. That one declaration serves everywhere:
//!
//! - **the binaries' command lines**: clap reads the flag, else the `TS_*` variable, else the
//!   default;
//! - **cluster.toml**: [`ServerSettings`] is its `[server]` section and [`ClientSettings`] its
//!   `[client]` section, with the same field names and the same defaults ([`defaults`] takes
//!   them from the clap declaration, so they cannot disagree);
//! - **the runtimes**, which start nodes by handing them their settings as `TS_*` variables
//!   ([`to_env`], generated from the clap declaration and the serialized values, so no key can
//!   be forgotten or misspelled, and no secret appears on a command line).
//!
//! Each struct's `validate()` is the one check of its values, used by the binaries and by tsc
//! when it loads cluster.toml.
//!
//! Node settings ([`ServerNode`], [`ClientNode`]: where the services are, identity, logs) differ
//! from node to node and are set by whoever starts the node; cluster-wide tunables
//! ([`ServerSettings`], [`ClientSettings`]) come from cluster.toml.

use crate::broker::QueueType;
use crate::core::berkeley::{self, BerkeleyConfig, RoundConfig};
use crate::core::client::{DEFAULT_PROBE_MAX, MAX_PROBE_MAX};
use crate::core::clock::{DisciplineConfig, DEFAULT_MAX_SLEW_PPM, DEFAULT_STEP_THRESHOLD_US};
use crate::core::leader_election::{self, BullyConfig};
use crate::core::logical::DEFAULT_MAX_OFFSET_US;
use crate::core::protocol::Algorithm;
use crate::error::{Error, Result};
use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Broker used when none is given: the local RabbitMQ's default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Cache used when none is given: the local Redis, database 0.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Concurrent report consumers per server (the seed ran 4 Celery workers).
pub const DEFAULT_WORKERS: usize = 4;
/// Most report consumers per server.
pub const MAX_WORKERS: usize = 256;
/// Unacknowledged reports each worker may hold; also its largest Redis batch.
pub const DEFAULT_PREFETCH: u16 = 256;
/// How long a client stays live after its last report (the seed's 60 s).
pub const DEFAULT_TTL_SECS: u64 = 60;
/// Scheduler period: elect if needed, broadcast the master's time.
pub const DEFAULT_TICK_MS: u64 = 1000;
/// How often a client reports.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;
/// Bound of the random initial offset of a client clock (± this many seconds).
pub const DEFAULT_SKEW_SECS: f64 = 3600.0;
/// Largest skew accepted: a year.
pub const MAX_SKEW_SECS: f64 = 86_400.0 * 366.0;
/// Largest simulated drift accepted (ppm); no real oscillator is further off.
pub const MAX_DRIFT_PPM: f64 = 1000.0;
/// NTP requests per second answered per source address (ntpd's default `limited` is far
/// stricter; a monitoring tool polling every few seconds stays well under this).
pub const DEFAULT_NTP_RATE: f64 = 8.0;
/// Highest NTP rate limit accepted (per address, per second).
pub const MAX_NTP_RATE: f64 = 1e6;
/// How often the Berkeley coordinator polls (TEMPO's default period is minutes).
pub const DEFAULT_BERKELEY_INTERVAL_MS: u64 = 120_000;
/// How long the Berkeley coordinator collects readings after a poll.
pub const DEFAULT_BERKELEY_COLLECT_MS: u64 = 500;
/// A swarm's first address by default: the RFC 2544 benchmarking range (198.18.0.0/15,
/// 131,072 addresses), which no real network uses.
pub const DEFAULT_SWARM_IP_BASE: &str = "198.18.0.1";
/// Largest swarm in one process.
pub const MAX_SWARM: usize = 100_000;
/// AMQP connections per swarm by default.
pub const DEFAULT_SWARM_CONNECTIONS: usize = 4;
/// Swarm clients per channel by default.
pub const DEFAULT_SWARM_GROUP: usize = 100;
/// Replica id when none is given.
pub const DEFAULT_REPLICA_ID: u64 = 1;
/// Port of each replica's HTTP API.
pub const DEFAULT_HTTP_PORT: u16 = 8470;
/// Where a replica's HTTP API listens by default: loopback only. Its mutating endpoints need
/// the operator token anyway; a runtime that must reach the API from elsewhere (Docker) binds
/// every address explicitly.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8470";
/// Where a node's keys are when no `--key-dir` is given.
pub const DEFAULT_KEY_DIR: &str = "/etc/time-sync/keys";
/// Default server log directory (the seed's).
pub const DEFAULT_SERVER_LOG_DIR: &str = "/tmp/ts_server_logs";
/// Default client log directory (the seed's); each client writes `<dir>/<id>`.
pub const DEFAULT_CLIENT_LOG_DIR: &str = "/tmp/ts_client_logs";
/// Entries the event log keeps by default: a day of a quiet cluster, minutes of a busy one.
pub const DEFAULT_EVENT_LOG_LEN: u64 = 10_000;
/// Range of every period in milliseconds (ticks, reports).
pub const PERIOD_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// Tunables every `ts-server` of a cluster shares: cluster.toml's `[server]`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Number of concurrent report consumers.
    #[arg(long, short = 'w', env = "TS_WORKERS", default_value_t = DEFAULT_WORKERS)]
    pub workers: usize,
    /// Reports each worker may hold unacknowledged (and store in one Redis round trip).
    #[arg(long, env = "TS_PREFETCH", default_value_t = DEFAULT_PREFETCH)]
    pub prefetch: u16,
    /// Seconds a client stays live (and master) after its last report.
    #[arg(long, env = "TS_TTL", default_value_t = DEFAULT_TTL_SECS)]
    pub ttl: u64,
    /// Scheduler period in milliseconds.
    #[arg(long, env = "TS_TICK_MS", default_value_t = DEFAULT_TICK_MS)]
    pub tick_ms: u64,
    /// Synchronization algorithm: master (four-timestamp offsets), naive (the seed's), berkeley.
    #[arg(long, env = "TS_ALGORITHM", default_value_t = Algorithm::Master)]
    pub algorithm: Algorithm,
    /// Berkeley: milliseconds between rounds.
    #[arg(long, env = "TS_BERKELEY_INTERVAL_MS", default_value_t = DEFAULT_BERKELEY_INTERVAL_MS)]
    pub berkeley_interval_ms: u64,
    /// Berkeley: milliseconds to collect readings after a round's last poll.
    #[arg(long, env = "TS_BERKELEY_COLLECT_MS", default_value_t = DEFAULT_BERKELEY_COLLECT_MS)]
    pub berkeley_collect_ms: u64,
    /// Berkeley: readings within this many µs of each other form the agreeing cluster.
    #[arg(long, env = "TS_BERKELEY_MAX_SPREAD_US", default_value_t = berkeley::DEFAULT_MAX_SPREAD_US)]
    pub berkeley_max_spread_us: i64,
    /// Berkeley: readings with a longer round trip (µs) are not averaged.
    #[arg(long, env = "TS_BERKELEY_MAX_RTT_US", default_value_t = berkeley::DEFAULT_MAX_RTT_US)]
    pub berkeley_max_rtt_us: i64,
    /// Berkeley: whether the coordinator's (server's) own clock takes part in the average.
    #[arg(long, env = "TS_BERKELEY_INCLUDE_COORDINATOR", default_value_t = berkeley::DEFAULT_INCLUDE_COORDINATOR, action = clap::ArgAction::Set)]
    pub berkeley_include_coordinator: bool,
    /// Milliseconds between replica heartbeats.
    #[arg(long, env = "TS_HEARTBEAT_MS", default_value_t = leader_election::HEARTBEAT_INTERVAL.as_millis() as u64)]
    pub heartbeat_ms: u64,
    /// Milliseconds of leader silence after which followers elect a new one.
    #[arg(long, env = "TS_LEADER_TIMEOUT_MS", default_value_t = leader_election::LEADER_TIMEOUT.as_millis() as u64)]
    pub leader_timeout_ms: u64,
    /// Milliseconds a candidate waits for an outranking replica to answer before it leads.
    #[arg(long, env = "TS_ANSWER_TIMEOUT_MS", default_value_t = leader_election::ANSWER_TIMEOUT.as_millis() as u64)]
    pub answer_timeout_ms: u64,
    /// Hybrid logical clock: remote timestamps further ahead than this (µs) are refused.
    #[arg(long, env = "TS_HLC_MAX_OFFSET_US", default_value_t = DEFAULT_MAX_OFFSET_US)]
    pub hlc_max_offset_us: i64,
    /// Entries the cluster's event log keeps (older ones are trimmed).
    #[arg(long, env = "TS_EVENT_LOG_LEN", default_value_t = DEFAULT_EVENT_LOG_LEN)]
    pub event_log_len: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        defaults()
    }
}

impl ServerSettings {
    pub fn validate(&self) -> Result<()> {
        in_range("workers", self.workers, 1..=MAX_WORKERS)?;
        if self.prefetch == 0 {
            return invalid("prefetch must be at least 1".into());
        }
        if self.ttl == 0 {
            return invalid("ttl must be at least 1 second".into());
        }
        in_period("tick_ms", self.tick_ms)?;
        if self.berkeley_interval_ms < 100 || self.berkeley_collect_ms >= self.berkeley_interval_ms
        {
            return invalid(format!(
                "berkeley_interval_ms must be at least 100 and above berkeley_collect_ms (got {} and {})",
                self.berkeley_interval_ms, self.berkeley_collect_ms
            ));
        }
        max_offset(self.hlc_max_offset_us)?;
        in_range("event_log_len", self.event_log_len, 100..=10_000_000)?;
        self.bully(DEFAULT_REPLICA_ID, 0)
            .validate()
            .map_err(|e| Error::Config(format!("election timing: {e}")))?;
        self.berkeley()
            .average
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The leader election settings of replica `id` with `priority`.
    pub fn bully(&self, id: u64, priority: u64) -> BullyConfig {
        let mut c = BullyConfig::new(id, priority);
        c.heartbeat = Duration::from_millis(self.heartbeat_ms);
        c.leader_timeout = Duration::from_millis(self.leader_timeout_ms);
        c.answer_timeout = Duration::from_millis(self.answer_timeout_ms);
        c.coordinator_timeout = c.coordinator_timeout.max(c.answer_timeout * 4);
        c
    }

    /// The Berkeley coordinator's settings.
    pub fn berkeley(&self) -> RoundConfig {
        RoundConfig {
            interval: Duration::from_millis(self.berkeley_interval_ms),
            polls: berkeley::DEFAULT_POLLS,
            spacing: berkeley::DEFAULT_SPACING,
            collect: Duration::from_millis(self.berkeley_collect_ms),
            average: BerkeleyConfig {
                max_spread_us: self.berkeley_max_spread_us,
                include_coordinator: self.berkeley_include_coordinator,
                max_rtt_us: self.berkeley_max_rtt_us,
            },
        }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

/// What makes one `ts-server` this node: services, identity, API address, logs.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct ServerNode {
    /// RabbitMQ URL (`amqp://user:pass@host:port/vhost`); a broker's nodes: several, by commas.
    #[arg(long, env = "TS_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// How the shared queues are declared: classic on one broker, quorum on a RabbitMQ
    /// cluster (every replica and tsc must agree; see docs/PROTOCOL.md).
    #[arg(long, env = "TS_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,
    /// Redis URL: `redis://[:password@]host:port/db`, or a primary found through Sentinel,
    /// `redis+sentinel://[:password@]host:port,host:port,…/service/db`.
    #[arg(long, env = "TS_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// This replica's id (unique among the replicas; ties in priority go to the higher id).
    #[arg(long, env = "TS_REPLICA_ID", default_value_t = DEFAULT_REPLICA_ID)]
    pub replica_id: u64,
    /// Election priority: the live replica with the highest (priority, id) leads.
    #[arg(long, env = "TS_PRIORITY", default_value_t = 0)]
    pub priority: u64,
    /// Address of the HTTP API (`ip:port`; port 0 picks a free one, published in Redis).
    #[arg(long, env = "TS_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Directory of this replica's keys (leader.key, replica.key, cluster.key, …).
    #[arg(long, env = "TS_KEY_DIR", default_value = DEFAULT_KEY_DIR)]
    pub key_dir: PathBuf,
    /// Directory of the server log (`server-<replica id>.json`).
    #[arg(long, env = "TS_LOG_DIR", default_value = DEFAULT_SERVER_LOG_DIR)]
    pub log_dir: PathBuf,
    /// Log to stderr only.
    #[arg(long, env = "TS_NO_LOG_FILE")]
    pub no_log_file: bool,
}

impl ServerNode {
    pub fn validate(&self) -> Result<()> {
        crate::broker::check_urls(&self.amqp_url)?;
        crate::cache::RedisTarget::parse(&self.redis_url)?;
        Ok(())
    }

    /// File name of this replica's log.
    pub fn log_file_name(&self) -> String {
        format!("server-{}.json", self.replica_id)
    }

    /// Directory for the log file, `None` for stderr only.
    pub fn log_file_dir(&self) -> Option<&Path> {
        (!self.no_log_file).then_some(self.log_dir.as_path())
    }
}

/// Everything a `ts-server` is started with.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ServerConfig {
    #[command(flatten)]
    pub node: ServerNode,
    #[command(flatten)]
    pub settings: ServerSettings,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<()> {
        self.node.validate()?;
        self.settings.validate()
    }

    /// This replica's leader election settings.
    pub fn bully(&self) -> BullyConfig {
        self.settings
            .bully(self.node.replica_id, self.node.priority)
    }
}

/// Tunables every `ts-client` of a cluster shares: cluster.toml's `[client]`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// Initial clock offset is random within ± this many seconds.
    #[arg(long, env = "TS_SKEW", default_value_t = DEFAULT_SKEW_SECS, allow_negative_numbers = true)]
    pub skew: f64,
    /// Simulated frequency error of this clock, in ppm.
    #[arg(
        long,
        env = "TS_DRIFT_PPM",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub drift_ppm: f64,
    /// Milliseconds between reports.
    #[arg(long, env = "TS_REPORT_INTERVAL_MS", default_value_t = DEFAULT_REPORT_INTERVAL_MS)]
    pub interval_ms: u64,
    /// Longest probe period in milliseconds (250 … 64000): a settled client doubles its period
    /// from 250 ms up to this, and drops back when a probe disagrees (adaptive probing).
    #[arg(long, env = "TS_PROBE_MAX_MS", default_value_t = DEFAULT_PROBE_MAX.as_millis() as u64)]
    pub probe_max_ms: u64,
    /// Offsets above this many microseconds are stepped, smaller ones slewed.
    #[arg(long, env = "TS_STEP_THRESHOLD_US", default_value_t = DEFAULT_STEP_THRESHOLD_US)]
    pub step_threshold_us: i64,
    /// Fastest slew, in ppm (µs per second).
    #[arg(long, env = "TS_MAX_SLEW_PPM", default_value_t = DEFAULT_MAX_SLEW_PPM)]
    pub max_slew_ppm: f64,
    /// Hybrid logical clock: remote timestamps further ahead than this (µs) are refused.
    #[arg(long, env = "TS_HLC_MAX_OFFSET_US", default_value_t = DEFAULT_MAX_OFFSET_US)]
    pub hlc_max_offset_us: i64,
    /// Serve NTPv4 on this address (UDP; e.g. 0.0.0.0:123): standard NTP clients read this
    /// client's clock. Off when unset. tsc's local runtime gives each client its own address
    /// in place of an unspecified one (0.0.0.0), so they can share a port.
    #[arg(long, env = "TS_NTP_LISTEN")]
    pub ntp_listen: Option<SocketAddr>,
    /// NTP requests per second answered per source address (bursts of 16 first); over it, one
    /// `RATE` kiss and silence. 0: no limit.
    #[arg(long, env = "TS_NTP_RATE", default_value_t = DEFAULT_NTP_RATE)]
    pub ntp_rate: f64,
    /// NTP server to follow while this client is master, `HOST[:PORT]` (port 123 by default);
    /// repeat (or separate with commas) for several: with three or more, those that disagree
    /// with the majority are left out. Followers follow it through the master.
    #[arg(long, env = "TS_NTP_UPSTREAM", value_delimiter = ',')]
    pub ntp_upstream: Vec<String>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        defaults()
    }
}

impl ClientSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.skew.is_finite() && (0.0..=MAX_SKEW_SECS).contains(&self.skew)) {
            return invalid(format!(
                "skew must be between 0 and {MAX_SKEW_SECS} seconds (got {})",
                self.skew
            ));
        }
        if !(self.drift_ppm.is_finite() && self.drift_ppm.abs() <= MAX_DRIFT_PPM) {
            return invalid(format!(
                "drift_ppm must be within ±{MAX_DRIFT_PPM} (got {})",
                self.drift_ppm
            ));
        }
        in_period("interval_ms", self.interval_ms)?;
        let probe = DEFAULT_PROBE_MAX.as_millis() as u64..=MAX_PROBE_MAX.as_millis() as u64;
        in_range("probe_max_ms", self.probe_max_ms, probe)?;
        if self.step_threshold_us < 0 {
            return invalid(format!(
                "step_threshold_us must be ≥ 0 (got {})",
                self.step_threshold_us
            ));
        }
        if !(self.ntp_rate.is_finite() && (0.0..=MAX_NTP_RATE).contains(&self.ntp_rate)) {
            return invalid(format!(
                "ntp_rate must be between 0 (no limit) and {MAX_NTP_RATE} (got {})",
                self.ntp_rate
            ));
        }
        if !(self.max_slew_ppm.is_finite()
            && self.max_slew_ppm > 0.0
            && self.max_slew_ppm <= 100_000.0)
        {
            return invalid(format!(
                "max_slew_ppm must be in (0, 100000] (got {})",
                self.max_slew_ppm
            ));
        }
        ntp_upstreams(&self.ntp_upstream)?;
        max_offset(self.hlc_max_offset_us)
    }

    pub fn discipline(&self) -> DisciplineConfig {
        DisciplineConfig {
            step_threshold_us: self.step_threshold_us,
            max_slew_ppm: self.max_slew_ppm,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn probe_max(&self) -> Duration {
        Duration::from_millis(self.probe_max_ms)
    }
}

/// What makes one `ts-client` this node: broker, identity, initial clock, logs.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct ClientNode {
    /// RabbitMQ URL (`amqp://user:pass@host:port/vhost`); a broker's nodes: several, by commas.
    #[arg(long, env = "TS_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Client id (default: the one in the key directory's `client.id`, which tsc writes; the
    /// client's key derives from it).
    #[arg(long, env = "TS_CLIENT_ID")]
    pub id: Option<Uuid>,
    /// Address to advertise (default: the local address used to reach the broker).
    #[arg(long, env = "TS_CLIENT_IP")]
    pub ip: Option<IpAddr>,
    /// Fixed initial offset in milliseconds (overrides --skew).
    #[arg(long, env = "TS_INITIAL_OFFSET_MS", allow_hyphen_values = true)]
    pub initial_offset_ms: Option<i64>,
    /// Seed for the random initial offset, for reproducible runs.
    #[arg(long, env = "TS_SEED")]
    pub seed: Option<u64>,
    /// Directory of this client's keys (client.key, leader.pub).
    #[arg(long, env = "TS_KEY_DIR", default_value = DEFAULT_KEY_DIR)]
    pub key_dir: PathBuf,
    /// Directory of the client log (`<dir>/<id>`).
    #[arg(long, env = "TS_LOG_DIR", default_value = DEFAULT_CLIENT_LOG_DIR)]
    pub log_dir: PathBuf,
    /// Log to stderr only.
    #[arg(long, env = "TS_NO_LOG_FILE")]
    pub no_log_file: bool,
    /// Run this many clients in this one process (a swarm), each with its own id and key
    /// (from the key directory's `swarm.keys`), address, clock, queue, reports and probes.
    #[arg(long, env = "TS_SWARM")]
    pub swarm: Option<usize>,
    /// A swarm's first address; client i advertises this + i (default: the RFC 2544
    /// benchmarking range, 198.18.0.0/15).
    #[arg(long, env = "TS_SWARM_IP_BASE", default_value = DEFAULT_SWARM_IP_BASE)]
    pub swarm_ip_base: std::net::Ipv4Addr,
    /// AMQP connections a swarm shares among its clients.
    #[arg(long, env = "TS_SWARM_CONNECTIONS", default_value_t = DEFAULT_SWARM_CONNECTIONS)]
    pub swarm_connections: usize,
    /// Clients per AMQP channel in a swarm (one task, one timer and one channel each).
    #[arg(long, env = "TS_SWARM_GROUP", default_value_t = DEFAULT_SWARM_GROUP)]
    pub swarm_group: usize,
}

impl ClientNode {
    pub fn validate(&self) -> Result<()> {
        crate::broker::check_urls(&self.amqp_url)?;
        if let Some(n) = self.swarm {
            in_range("swarm", n, 1..=MAX_SWARM)?;
            if u32::from(self.swarm_ip_base)
                .checked_add(n as u32 - 1)
                .is_none()
            {
                return invalid(format!(
                    "a swarm of {n} from {} runs past 255.255.255.255",
                    self.swarm_ip_base
                ));
            }
            if self.id.is_some() || self.ip.is_some() {
                return invalid(
                    "--id and --ip name one client; a swarm takes its ids from swarm.keys and its addresses from --swarm-ip-base".into(),
                );
            }
        }
        in_range("swarm_connections", self.swarm_connections, 1..=256)?;
        in_range("swarm_group", self.swarm_group, 1..=10_000)
    }

    /// The client's id: `--id`, else the key directory's `client.id`. Its key is derived from
    /// it, so an id that disagrees with `client.id`, or none at all, is an error.
    pub fn resolved_id(&self) -> Result<Uuid> {
        let written = crate::keys::read_client_id(&self.key_dir)?;
        match (self.id, written) {
            (Some(a), Some(b)) if a != b => Err(Error::Config(format!(
                "--id {a} disagrees with {}: {b}",
                self.key_dir.join(crate::keys::CLIENT_ID).display()
            ))),
            (Some(id), _) | (None, Some(id)) => Ok(id),
            (None, None) => Err(Error::Config(format!(
                "no client id: give --id (TS_CLIENT_ID) or write it to {}",
                self.key_dir.join(crate::keys::CLIENT_ID).display()
            ))),
        }
    }

    /// Directory for the log file, `None` for stderr only.
    pub fn log_file_dir(&self) -> Option<&Path> {
        (!self.no_log_file).then_some(self.log_dir.as_path())
    }
}

/// Everything a `ts-client` is started with.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ClientConfig {
    #[command(flatten)]
    pub node: ClientNode,
    #[command(flatten)]
    pub settings: ClientSettings,
}

impl ClientConfig {
    pub fn validate(&self) -> Result<()> {
        self.node.validate()?;
        self.settings.validate()
    }
}

/// The defaults of a settings struct, exactly as its clap declaration states them (and with
/// no `TS_*` variable consulted: a default is the same whatever the environment).
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let cmd =
        T::augment_args(clap::Command::new("defaults")).mut_args(|a| a.env(None::<&'static str>));
    let matches = cmd
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("defaults parse")
}

/// Every field of `settings` as the `TS_*` variable its declaration names, with its value as
/// the flag would take it. Unset optional fields are left out.
pub fn to_env<T: Args + Serialize>(settings: &T) -> Vec<(String, String)> {
    let values = serde_json::to_value(settings).expect("settings serialize");
    let cmd = T::augment_args(clap::Command::new("env"));
    cmd.get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_str()?.to_string();
            let value = match values.get(arg.get_id().as_str())? {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => s.clone(),
                // A repeatable flag: its values joined as its `value_delimiter` splits them.
                serde_json::Value::Array(a) if a.is_empty() => return None,
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            Some((var, value))
        })
        .collect()
}

fn invalid(message: String) -> Result<()> {
    Err(Error::Config(message))
}

fn in_period(name: &str, ms: u64) -> Result<()> {
    in_range(name, ms, PERIOD_MS)
}

/// `value` of setting `name` is within `range`, or a one-line error that says so.
fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    invalid(format!(
        "{name} must be between {} and {} (got {value})",
        range.start(),
        range.end()
    ))
}

fn ntp_upstreams(addrs: &[String]) -> Result<()> {
    use crate::core::upstream::{MAX_ADDR_LEN, MAX_UPSTREAMS};
    if addrs.len() > MAX_UPSTREAMS {
        return invalid(format!(
            "ntp_upstream: at most {MAX_UPSTREAMS} servers (got {})",
            addrs.len()
        ));
    }
    for (i, a) in addrs.iter().enumerate() {
        // One server named twice would get two votes in the selection.
        if addrs[..i].contains(a) {
            return invalid(format!("ntp_upstream: {a:?} is given twice"));
        }
        let ok = a.len() <= MAX_ADDR_LEN
            && crate::net::host_port(a, 123).is_some_and(|(h, _)| !h.is_empty());
        if !ok {
            return invalid(format!(
                "ntp_upstream: {a:?} is not HOST[:PORT] (at most {MAX_ADDR_LEN} bytes)"
            ));
        }
    }
    Ok(())
}

fn max_offset(us: i64) -> Result<()> {
    in_range("hlc_max_offset_us", us, 1_000..=60_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_client_takes_its_id_from_the_key_directory_and_refuses_a_disagreeing_one() {
        let dir = std::env::temp_dir().join(format!("ts-id-{}", Uuid::new_v4().simple()));
        let mut node: ClientNode = defaults();
        node.key_dir = dir.clone();
        assert!(node
            .resolved_id()
            .unwrap_err()
            .to_string()
            .contains("no client id"));
        let id = Uuid::new_v4();
        crate::keys::write_client_id(&dir, &id).unwrap();
        assert_eq!(node.resolved_id().unwrap(), id);
        node.id = Some(id);
        assert_eq!(node.resolved_id().unwrap(), id);
        node.id = Some(Uuid::new_v4());
        assert!(node
            .resolved_id()
            .unwrap_err()
            .to_string()
            .contains("disagrees"));
        std::fs::write(dir.join(crate::keys::CLIENT_ID), "nonsense").unwrap();
        node.id = None;
        assert!(node
            .resolved_id()
            .unwrap_err()
            .to_string()
            .contains("not a UUID"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Parser)]
    struct Server {
        #[command(flatten)]
        config: ServerConfig,
    }

    /// Parses `to_env`'s output as flags: every variable names a declared setting and every
    /// value reads back as the value it came from.
    fn via_env<T: Args + FromArgMatches + Serialize>(settings: &T) -> T {
        let declared = T::augment_args(clap::Command::new("t"));
        let cmd = declared.clone().mut_args(|a| a.env(None::<&'static str>));
        let mut argv = vec!["t".to_string()];
        for (var, value) in to_env(settings) {
            let arg = declared
                .get_arguments()
                .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(var.as_str()))
                .unwrap_or_else(|| panic!("{var} names no setting"));
            let long = arg.get_long().expect("every setting has a flag");
            let flag = matches!(arg.get_action(), clap::ArgAction::SetTrue);
            match (flag, value.as_str()) {
                (true, "true") => argv.push(format!("--{long}")),
                (true, _) => {}
                (false, _) => argv.push(format!("--{long}={value}")),
            }
        }
        T::from_arg_matches(&cmd.try_get_matches_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn defaults_come_from_the_declaration_and_validate() {
        let s = ServerSettings::default();
        assert_eq!((s.workers, s.ttl, s.tick_ms), (DEFAULT_WORKERS, 60, 1000));
        assert_eq!(s.algorithm, Algorithm::Master);
        assert!(s.berkeley_include_coordinator);
        s.validate().unwrap();
        let c = ClientSettings::default();
        assert_eq!((c.skew, c.interval_ms), (DEFAULT_SKEW_SECS, 1000));
        c.validate().unwrap();
        // The binary with no flags has exactly these settings.
        let parsed = Server::try_parse_from(["ts-server"]).unwrap().config;
        assert_eq!(parsed.settings, s);
    }

    #[test]
    fn every_setting_survives_the_trip_through_ts_variables() {
        let s = ServerSettings {
            workers: 7,
            algorithm: Algorithm::Berkeley,
            berkeley_include_coordinator: false,
            berkeley_max_spread_us: -3,
            ..ServerSettings::default()
        };
        assert_eq!(via_env(&s), s);
        let n = ServerNode {
            amqp_url: "amqp://u:p@10.0.0.3:5672/v".into(),
            replica_id: 4,
            http_addr: "127.0.0.1:0".parse().unwrap(),
            no_log_file: true,
            ..defaults()
        };
        assert_eq!(via_env(&n), n);
        let c = ClientSettings {
            skew: 0.5,
            drift_ppm: -20.0,
            ..ClientSettings::default()
        };
        assert_eq!(via_env(&c), c);
        let cn = ClientNode {
            id: Some(Uuid::from_u128(9)),
            ip: Some("127.0.0.20".parse().unwrap()),
            initial_offset_ms: Some(-5),
            ..defaults()
        };
        assert_eq!(via_env(&cn), cn);
        let vars: Vec<String> = to_env(&s).into_iter().map(|(k, _)| k).collect();
        assert!(vars.contains(&"TS_WORKERS".to_string()), "{vars:?}");
        assert!(
            vars.iter().all(|v| v.starts_with("TS_")),
            "every variable is a TS_ one: {vars:?}"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_the_settings_name() {
        type Case = (fn(&mut ServerSettings), &'static str);
        let server: &[Case] = &[
            (|s| s.workers = 0, "workers"),
            (|s| s.workers = 257, "workers"),
            (|s| s.ttl = 0, "ttl"),
            (|s| s.tick_ms = 5, "tick_ms"),
            (|s| s.berkeley_collect_ms = 200_000, "berkeley_interval_ms"),
            (|s| s.leader_timeout_ms = 1000, "leader timeout"),
            (|s| s.berkeley_max_rtt_us = 0, "max_rtt_us"),
        ];
        for (bad, name) in server {
            let mut s = ServerSettings::default();
            bad(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
        type ClientCase = (fn(&mut ClientSettings), &'static str);
        let client: &[ClientCase] = &[
            (|c| c.skew = -1.0, "skew"),
            (|c| c.skew = f64::NAN, "skew"),
            (|c| c.drift_ppm = 1e9, "drift_ppm"),
            (|c| c.drift_ppm = f64::NAN, "drift_ppm"),
            (|c| c.interval_ms = 0, "interval_ms"),
            (|c| c.max_slew_ppm = 0.0, "max_slew_ppm"),
            (|c| c.ntp_rate = -1.0, "ntp_rate"),
            (
                |c| c.ntp_upstream = vec!["a:1".into(), "a:1".into()],
                "twice",
            ),
            (
                |c| c.ntp_upstream = vec!["host:port".into()],
                "ntp_upstream",
            ),
            (|c| c.ntp_upstream = vec!["x".repeat(65)], "ntp_upstream"),
            (|c| c.ntp_upstream = vec!["n".into(); 9], "at most 8"),
            (|c| c.probe_max_ms = 100, "probe_max_ms"),
            (|c| c.probe_max_ms = 65_000, "probe_max_ms"),
        ];
        for (bad, name) in client {
            let mut c = ClientSettings::default();
            bad(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
        let node = ServerNode {
            redis_url: "http://x".into(),
            ..defaults()
        };
        assert!(node.validate().is_err());
        type NodeCase = (fn(&mut ClientNode), &'static str);
        let nodes: &[NodeCase] = &[
            (|n| n.swarm = Some(0), "swarm"),
            (|n| n.swarm = Some(MAX_SWARM + 1), "swarm"),
            (
                |n| (n.swarm, n.swarm_ip_base) = (Some(2), "255.255.255.255".parse().unwrap()),
                "runs past",
            ),
            (|n| (n.swarm, n.id) = (Some(2), Some(Uuid::nil())), "--id"),
            (|n| n.swarm_connections = 0, "swarm_connections"),
            (|n| n.swarm_group = 10_001, "swarm_group"),
        ];
        for (bad, name) in nodes {
            let mut n: ClientNode = defaults();
            bad(&mut n);
            let e = n.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn cluster_toml_sections_use_the_same_names_and_reject_unknown_keys() {
        let s: ServerSettings = toml::from_str("workers = 2\nalgorithm = \"naive\"").unwrap();
        assert_eq!((s.workers, s.algorithm), (2, Algorithm::Naive));
        assert_eq!(
            s.ttl, DEFAULT_TTL_SECS,
            "unset keys take the flag's default"
        );
        let e = toml::from_str::<ServerSettings>("wrokers = 2").unwrap_err();
        assert!(e.to_string().contains("wrokers"), "{e}");
        let e = toml::from_str::<ServerSettings>("algorithm = \"fast\"").unwrap_err();
        assert!(e.to_string().contains("fast"), "{e}");
    }
}
