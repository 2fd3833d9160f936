//! Configuration of `ts-server` and `ts-client`.
//!
//! Each setting has a named default constant, a `TS_*` environment variable and a flag, in that
//! order of precedence (flag wins). `validate()` rejects nonsense with a message that names the
//! setting, before anything connects anywhere.

use crate::clock::DisciplineConfig;
use crate::error::{Error, Result};
use crate::protocol::Algorithm;
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// Broker used when none is given: the local RabbitMQ's default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Cache used when none is given: the local Redis, database 0.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Concurrent report consumers per server (the seed ran 4 Celery workers).
pub const DEFAULT_WORKERS: usize = 4;
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
/// How often the Berkeley coordinator polls (TEMPO's default period is minutes).
pub const DEFAULT_BERKELEY_INTERVAL_MS: u64 = 120_000;
/// How long the Berkeley coordinator collects readings after a poll.
pub const DEFAULT_BERKELEY_COLLECT_MS: u64 = 500;

/// Port of each replica's HTTP API.
pub const DEFAULT_HTTP_PORT: u16 = 8470;
/// Where a replica's HTTP API listens by default.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8470";

/// Default server log directory (the seed's).
pub const DEFAULT_SERVER_LOG_DIR: &str = "/tmp/ts_server_logs";
/// Default client log directory (the seed's); each client writes `<dir>/<id>`.
pub const DEFAULT_CLIENT_LOG_DIR: &str = "/tmp/ts_client_logs";

/// Where the broker and cache are.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    /// RabbitMQ URL (amqp://user:pass@host:port/vhost).
    #[arg(long, env = "TS_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
}

/// `ts-server` settings.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Redis URL (redis://[:password@]host:port/db).
    #[arg(long, env = "TS_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
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
    #[arg(long, env = "TS_ALGORITHM", value_enum, default_value_t = Algorithm::Master)]
    pub algorithm: Algorithm,
    /// Berkeley: milliseconds between polls.
    #[arg(long, env = "TS_BERKELEY_INTERVAL_MS", default_value_t = DEFAULT_BERKELEY_INTERVAL_MS)]
    pub berkeley_interval_ms: u64,
    /// Berkeley: milliseconds to collect readings after each poll.
    #[arg(long, env = "TS_BERKELEY_COLLECT_MS", default_value_t = DEFAULT_BERKELEY_COLLECT_MS)]
    pub berkeley_collect_ms: u64,
    /// Berkeley: readings within this many µs of each other form the agreeing cluster.
    #[arg(long, env = "TS_BERKELEY_MAX_SPREAD_US", default_value_t = crate::clock::berkeley::DEFAULT_MAX_SPREAD_US)]
    pub berkeley_max_spread_us: i64,
    /// Berkeley: readings with a longer round trip (µs) are not averaged.
    #[arg(long, env = "TS_BERKELEY_MAX_RTT_US", default_value_t = crate::clock::berkeley::DEFAULT_MAX_RTT_US)]
    pub berkeley_max_rtt_us: i64,
    /// Berkeley: whether the coordinator's (server's) own clock takes part in the average.
    #[arg(long, env = "TS_BERKELEY_INCLUDE_COORDINATOR", default_value_t = crate::clock::berkeley::DEFAULT_INCLUDE_COORDINATOR, action = clap::ArgAction::Set)]
    pub berkeley_include_coordinator: bool,
    /// This replica's id (unique among the replicas; ties in priority go to the higher id).
    #[arg(long, env = "TS_REPLICA_ID", default_value_t = 1)]
    pub replica_id: u64,
    /// Election priority: the live replica with the highest (priority, id) leads.
    #[arg(long, env = "TS_PRIORITY", default_value_t = 0)]
    pub priority: u64,
    /// Milliseconds between replica heartbeats.
    #[arg(long, env = "TS_HEARTBEAT_MS", default_value_t = crate::leader::HEARTBEAT_INTERVAL.as_millis() as u64)]
    pub heartbeat_ms: u64,
    /// Milliseconds of leader silence after which followers elect a new one.
    #[arg(long, env = "TS_LEADER_TIMEOUT_MS", default_value_t = crate::leader::LEADER_TIMEOUT.as_millis() as u64)]
    pub leader_timeout_ms: u64,
    /// Milliseconds a candidate waits for an outranking replica to answer before it leads.
    #[arg(long, env = "TS_ANSWER_TIMEOUT_MS", default_value_t = crate::leader::ANSWER_TIMEOUT.as_millis() as u64)]
    pub answer_timeout_ms: u64,
    /// Address of the HTTP API (`ip:port`; port 0 picks a free one, published in Redis).
    #[arg(long, env = "TS_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: std::net::SocketAddr,
    /// Directory of the server log (`server-<replica id>.json`).
    #[arg(long, env = "TS_LOG_DIR", default_value = DEFAULT_SERVER_LOG_DIR)]
    pub log_dir: PathBuf,
    /// Log to stderr only.
    #[arg(long, env = "TS_NO_LOG_FILE")]
    pub no_log_file: bool,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<()> {
        check_amqp_url(&self.endpoints.amqp_url)?;
        if !self.redis_url.starts_with("redis://") {
            return Err(Error::Config(format!(
                "--redis-url must start with redis:// (got {:?})",
                self.redis_url
            )));
        }
        if !(1..=256).contains(&self.workers) {
            return Err(Error::Config("--workers must be between 1 and 256".into()));
        }
        if self.prefetch == 0 {
            return Err(Error::Config("--prefetch must be at least 1".into()));
        }
        if self.ttl == 0 {
            return Err(Error::Config("--ttl must be at least 1 second".into()));
        }
        if !(10..=60_000).contains(&self.tick_ms) {
            return Err(Error::Config(
                "--tick-ms must be between 10 and 60000".into(),
            ));
        }
        if self.berkeley_interval_ms < 100 || self.berkeley_collect_ms >= self.berkeley_interval_ms
        {
            return Err(Error::Config(
                "--berkeley-interval-ms must be ≥ 100 and above --berkeley-collect-ms".into(),
            ));
        }
        self.bully()
            .validate()
            .map_err(|e| Error::Config(format!("election: {e}")))?;
        self.berkeley().validate()
    }

    /// The leader election settings.
    pub fn bully(&self) -> crate::leader::BullyConfig {
        let mut c = crate::leader::BullyConfig::new(self.replica_id, self.priority);
        c.heartbeat = Duration::from_millis(self.heartbeat_ms);
        c.leader_timeout = Duration::from_millis(self.leader_timeout_ms);
        c.answer_timeout = Duration::from_millis(self.answer_timeout_ms);
        c.coordinator_timeout = c.coordinator_timeout.max(c.answer_timeout * 4);
        c
    }

    /// File name of this replica's log.
    pub fn log_file_name(&self) -> String {
        format!("server-{}.json", self.replica_id)
    }

    /// The Berkeley averaging settings.
    pub fn berkeley(&self) -> crate::clock::berkeley::BerkeleyConfig {
        crate::clock::berkeley::BerkeleyConfig {
            max_spread_us: self.berkeley_max_spread_us,
            include_coordinator: self.berkeley_include_coordinator,
            max_rtt_us: self.berkeley_max_rtt_us,
        }
    }

    /// Directory for the log file, `None` for stderr only.
    pub fn log_file_dir(&self) -> Option<&std::path::Path> {
        (!self.no_log_file).then_some(self.log_dir.as_path())
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

/// `ts-client` settings.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Client id (default: a random UUID).
    #[arg(long, env = "TS_CLIENT_ID")]
    pub id: Option<Uuid>,
    /// Address to advertise (default: the local address used to reach the broker).
    #[arg(long, env = "TS_CLIENT_IP")]
    pub ip: Option<IpAddr>,
    /// Initial clock offset is random within ± this many seconds.
    #[arg(long, env = "TS_SKEW", default_value_t = DEFAULT_SKEW_SECS, allow_negative_numbers = true)]
    pub skew: f64,
    /// Fixed initial offset in milliseconds (overrides --skew).
    #[arg(long, env = "TS_INITIAL_OFFSET_MS", allow_hyphen_values = true)]
    pub initial_offset_ms: Option<i64>,
    /// Seed for the random initial offset, for reproducible runs.
    #[arg(long, env = "TS_SEED")]
    pub seed: Option<u64>,
    /// Simulated frequency error of this clock, in ppm.
    #[arg(
        long,
        env = "TS_DRIFT_PPM",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub drift_ppm: f64,
    /// Milliseconds between reports.
    #[arg(long, env = "TS_REPORT_INTERVAL_MS", default_value_t = DEFAULT_REPORT_INTERVAL_MS)]
    pub interval_ms: u64,
    /// Offsets above this many microseconds are stepped, smaller ones slewed.
    #[arg(long, env = "TS_STEP_THRESHOLD_US", default_value_t = crate::clock::DEFAULT_STEP_THRESHOLD_US)]
    pub step_threshold_us: i64,
    /// Fastest slew, in ppm (µs per second).
    #[arg(long, env = "TS_MAX_SLEW_PPM", default_value_t = crate::clock::DEFAULT_MAX_SLEW_PPM)]
    pub max_slew_ppm: f64,
    /// Directory of the client log (`<dir>/<id>`).
    #[arg(long, env = "TS_LOG_DIR", default_value = DEFAULT_CLIENT_LOG_DIR)]
    pub log_dir: PathBuf,
    /// Log to stderr only.
    #[arg(long, env = "TS_NO_LOG_FILE")]
    pub no_log_file: bool,
}

impl ClientConfig {
    pub fn validate(&self) -> Result<()> {
        check_amqp_url(&self.endpoints.amqp_url)?;
        if !(self.skew.is_finite() && self.skew >= 0.0 && self.skew <= 86_400.0 * 366.0) {
            return Err(Error::Config(
                "--skew must be between 0 and 31622400 seconds".into(),
            ));
        }
        if !(self.drift_ppm.is_finite() && self.drift_ppm.abs() <= 1000.0) {
            return Err(Error::Config("--drift-ppm must be within ±1000".into()));
        }
        if !(10..=60_000).contains(&self.interval_ms) {
            return Err(Error::Config(
                "--interval-ms must be between 10 and 60000".into(),
            ));
        }
        if self.step_threshold_us < 0 {
            return Err(Error::Config("--step-threshold-us must be ≥ 0".into()));
        }
        if !(self.max_slew_ppm.is_finite()
            && self.max_slew_ppm > 0.0
            && self.max_slew_ppm <= 100_000.0)
        {
            return Err(Error::Config(
                "--max-slew-ppm must be in (0, 100000]".into(),
            ));
        }
        Ok(())
    }

    /// Directory for the log file, `None` for stderr only.
    pub fn log_file_dir(&self) -> Option<&std::path::Path> {
        (!self.no_log_file).then_some(self.log_dir.as_path())
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
}

fn check_amqp_url(url: &str) -> Result<()> {
    if !url.starts_with("amqp://") {
        return Err(Error::Config(format!(
            "--amqp-url must start with amqp:// (got {url:?})"
        )));
    }
    crate::broker::parse_url(url).map(|_| ())
}

/// `host:port` of a URL such as `amqp://user:pass@host:5672/vhost`, for log lines (never the
/// credentials).
pub fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hides_credentials() {
        assert_eq!(
            endpoint_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(
            endpoint_of("redis://:p%40ss@10.0.0.2:6379/0"),
            "10.0.0.2:6379"
        );
        assert_eq!(endpoint_of("redis://localhost:6379"), "localhost:6379");
    }
}
