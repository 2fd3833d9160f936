//! Where Redis is, and a connection that follows it across a failover.
//!
//! A Redis URL names one server (`redis://[:password@]host:port/db`) or a primary found through
//! Sentinel (`redis+sentinel://[:password@]host:port,host:port,…/service/db`: the Sentinels'
//! addresses, the name they monitor the primary under, the database). With Sentinel, a
//! [`Primary`] asks the Sentinels, in order, where the primary is (`SENTINEL
//! get-master-addr-by-name`), checks with `ROLE` that the server there really is a primary (a
//! Sentinel may not have noticed a failover yet), and connects. When a command fails in a way
//! that a failover explains (the connection is gone or refused, a timeout, or the server says
//! `READONLY`, `MASTERDOWN`, `NOREPLICAS` or `LOADING`), it looks for the primary again, in the
//! background, until the Sentinels name one that says it is one, and swaps the connection if
//! the primary moved. The failed command still fails: every caller already retries (a worker
//! requeues its batch, a leader claims again), and a blind retry could apply a write twice.
//!
//! The same password serves the Sentinels and the Redis servers. With one server, nothing is
//! asked: the connection manager reconnects to it by itself.

use crate::error::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// Scheme of a URL that finds the primary through Sentinel.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";
/// How long one Sentinel or candidate primary may take to connect and to answer (a LAN: a
/// dead host must not hold a search for long).
pub const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a search for a lost primary asks the Sentinels.
pub const RESOLVE_INTERVAL: Duration = Duration::from_millis(200);
/// How long one search for a lost primary goes on (a failover takes seconds).
pub const HUNT_LIMIT: Duration = Duration::from_secs(30);
/// How long connecting to Redis may take.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one Redis command may take before it fails (so a frozen Redis cannot freeze us).
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is, parsed from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, its URL as given.
    Direct(String),
    /// A primary the Sentinels know under `service`.
    Sentinel {
        /// `host:port` of each Sentinel, in the order to ask them.
        sentinels: Vec<String>,
        service: String,
        /// The URL's user information (`:password`), kept percent-encoded as written.
        userinfo: Option<String>,
        db: i64,
    },
}

impl RedisTarget {
    /// Parses `redis://…` or `redis+sentinel://…` (see the module documentation).
    pub fn parse(url: &str) -> Result<RedisTarget> {
        if url.starts_with("redis://") {
            return Ok(RedisTarget::Direct(url.to_string()));
        }
        let bad = |why: &str| {
            Err(Error::Config(format!(
                "redis URL {:?}: {why}",
                crate::net::endpoint_of(url)
            )))
        };
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return bad("must start with redis:// or redis+sentinel://");
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let mut sentinels = Vec::new();
        for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            match crate::net::host_port(h, 26379) {
                Some((host, port)) if host.contains(':') => {
                    sentinels.push(format!("[{host}]:{port}"))
                }
                Some((host, port)) if !host.is_empty() => sentinels.push(format!("{host}:{port}")),
                _ => return bad(&format!("{h:?} is not host:port")),
            }
        }
        if sentinels.is_empty() {
            return bad("names no Sentinel");
        }
        let mut parts = path.split('/');
        let service = parts.next().unwrap_or_default().to_string();
        if service.is_empty() {
            return bad("names no service (redis+sentinel://hosts/SERVICE/DB)");
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => match d.parse::<i64>() {
                Ok(n) if n >= 0 => n,
                _ => return bad(&format!("database {d:?} is not a number")),
            },
        };
        Ok(RedisTarget::Sentinel {
            sentinels,
            service,
            userinfo,
            db,
        })
    }

    /// The database number.
    pub fn db(&self) -> i64 {
        match self {
            RedisTarget::Direct(url) => url
                .rsplit_once('/')
                .and_then(|(_, db)| db.parse().ok())
                .unwrap_or(0),
            RedisTarget::Sentinel { db, .. } => *db,
        }
    }

    /// Where it is, for logs: no password.
    pub fn endpoint(&self) -> String {
        match self {
            RedisTarget::Direct(url) => crate::net::endpoint_of(url),
            RedisTarget::Sentinel {
                sentinels, service, ..
            } => format!("{service} via sentinels {}", sentinels.join(",")),
        }
    }

    /// Whether a failover can move the primary (Sentinel).
    pub fn follows_failover(&self) -> bool {
        matches!(self, RedisTarget::Sentinel { .. })
    }

    /// The URL of a server at `host:port` with this target's password and database.
    fn server_url(&self, addr: &str, db: i64) -> String {
        match self {
            RedisTarget::Sentinel {
                userinfo: Some(u), ..
            } => format!("redis://{u}@{addr}/{db}"),
            _ => format!("redis://{addr}/{db}"),
        }
    }

    /// The URL of the current primary: the one server, or the primary the first Sentinel
    /// that answers names, once it says it is one.
    pub async fn primary_url(&self) -> Result<String> {
        let RedisTarget::Sentinel {
            sentinels, service, ..
        } = self
        else {
            let RedisTarget::Direct(url) = self else {
                unreachable!()
            };
            return Ok(url.clone());
        };
        let mut last = String::from("no Sentinel answered");
        // During a failover every Sentinel names the dead primary for a while: ask it once.
        let mut refused: Vec<(String, u16)> = Vec::new();
        for s in sentinels {
            // Sentinels have no databases: no SELECT.
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("get-master-addr-by-name").arg(service);
            let asked = ask::<Option<(String, u16)>>(&self.server_url(s, 0), &cmd).await;
            let (host, port) = match asked {
                Ok(Some(a)) if refused.contains(&a) => continue,
                Ok(Some(a)) => a,
                Ok(None) => {
                    last = format!("sentinel {s} does not know {service:?}");
                    continue;
                }
                Err(e) => {
                    last = format!("sentinel {s}: {e}");
                    continue;
                }
            };
            let url = self.server_url(&format!("{host}:{port}"), self.db());
            // ROLE answers [role, …]: the first element is all that counts here.
            let role = ask::<Vec<Value>>(&url, &redis::cmd("ROLE"))
                .await
                .and_then(|v| {
                    let first = v.into_iter().next().unwrap_or(Value::Nil);
                    redis::from_redis_value::<String>(first).map_err(|e| e.to_string())
                });
            match role {
                Ok(r) if r == "master" => return Ok(url),
                Ok(r) => last = format!("{host}:{port}, named by sentinel {s}, is a {r}"),
                Err(e) => last = format!("{host}:{port}, named by sentinel {s}: {e}"),
            }
            refused.push((host, port));
        }
        Err(Error::Runtime(format!(
            "no Redis primary for {}: {last}",
            self.endpoint()
        )))
    }
}

/// Sends `cmd` on a fresh connection to `url`, connecting and answering each within
/// [`SENTINEL_TIMEOUT`].
async fn ask<T: redis::FromRedisValue>(url: &str, cmd: &Cmd) -> std::result::Result<T, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    cmd.query_async(&mut conn).await.map_err(|e| e.to_string())
}

/// Whether an error is what a failover looks like from a client.
pub fn failover_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.code().is_some_and(failover_code)
}

/// `READONLY` (a demoted primary), `MASTERDOWN`, `NOREPLICAS`, `LOADING`.
fn failover_code(code: &str) -> bool {
    matches!(code, "READONLY" | "MASTERDOWN" | "NOREPLICAS" | "LOADING")
}

/// Whether an answer carries a server error a failover explains (Redis answers errors as
/// values; they become `Err` only when the caller converts them).
fn failover_value(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => failover_code(e.code()),
        Value::Array(items) => items.iter().any(failover_value),
        _ => false,
    }
}

/// The connection manager's settings: every command within [`REDIS_RESPONSE_TIMEOUT`]. With
/// Sentinel, a lost connection is retried once, not six times: the command then fails at
/// once, and the primary is looked for instead of waited for.
fn manager_config(target: &RedisTarget) -> ConnectionManagerConfig {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_max_delay(Duration::from_secs(1));
    if target.follows_failover() {
        config.set_number_of_retries(1)
    } else {
        config
    }
}

struct Shared {
    target: RedisTarget,
    /// The current primary's URL and a connection to it.
    current: Mutex<(String, ConnectionManager)>,
    /// Whether a search for the primary runs (one at a time).
    hunting: AtomicBool,
    /// The current primary's URL, for those that hold connections of their own (pub/sub).
    moved: watch::Sender<String>,
}

/// A cloneable, self-reconnecting connection to the Redis primary: a [`ConnectionManager`]
/// that, with Sentinel, moves to the new primary after a failover (see the module docs).
#[derive(Clone)]
pub struct Primary {
    shared: Arc<Shared>,
}

impl Primary {
    /// Finds the primary and connects to it (one attempt).
    pub async fn connect(target: RedisTarget) -> Result<Primary> {
        let url = target.primary_url().await?;
        let conn = redis::Client::open(url.as_str())?
            .get_connection_manager_with_config(manager_config(&target))
            .await?;
        let (moved, _) = watch::channel(url.clone());
        Ok(Primary {
            shared: Arc::new(Shared {
                target,
                current: Mutex::new((url, conn)),
                hunting: AtomicBool::new(false),
                moved,
            }),
        })
    }

    pub fn target(&self) -> &RedisTarget {
        &self.shared.target
    }

    /// The current primary's URL (it has the password).
    pub fn url(&self) -> String {
        self.lock().0.clone()
    }

    /// Changes whenever the primary moves.
    pub fn moves(&self) -> watch::Receiver<String> {
        self.shared.moved.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (String, ConnectionManager)> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn manager(&self) -> ConnectionManager {
        self.lock().1.clone()
    }

    /// After a failure a failover explains (`why`), with Sentinel: unless one runs already,
    /// starts a search for the primary that asks every [`RESOLVE_INTERVAL`] until the Sentinels
    /// name a server that says it is the primary (during a failover they name the dead one for
    /// a second or two), moves there if it moved, and ends. It gives up after
    /// [`HUNT_LIMIT`]; the next failure starts another.
    fn lost(&self, why: &str) {
        if !self.shared.target.follows_failover() || self.shared.hunting.swap(true, SeqCst) {
            return;
        }
        warn!(error = %why, "Redis primary lost; looking for it through Sentinel");
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = String::new();
            while started.elapsed() < HUNT_LIMIT {
                match me.shared.target.primary_url().await {
                    Ok(url) if url == me.url() => break,
                    Ok(url) => match me.move_to(&url).await {
                        Ok(()) => break,
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(RESOLVE_INTERVAL).await;
            }
            if started.elapsed() >= HUNT_LIMIT {
                warn!(search = %last, "no Redis primary found; looking again on the next error");
            }
            me.shared.hunting.store(false, SeqCst);
        });
    }

    /// Connects to the primary at `url` and makes it the current one.
    async fn move_to(&self, url: &str) -> Result<()> {
        let conn = redis::Client::open(url)?
            .get_connection_manager_with_config(manager_config(&self.shared.target))
            .await?;
        let from = crate::net::endpoint_of(&self.url());
        *self.lock() = (url.to_string(), conn);
        info!(from = %from, to = %crate::net::endpoint_of(url), "Redis primary moved; following it");
        self.shared.moved.send_replace(url.to_string());
        Ok(())
    }

    /// Looks at a command's outcome for signs of a failover.
    fn check<T>(&self, r: &redis::RedisResult<T>, value: impl Fn(&T) -> bool) {
        match r {
            Err(e) if failover_error(e) => self.lost(&e.to_string()),
            Ok(v) if value(v) => self.lost("the server refused a write (no longer the primary?)"),
            _ => {}
        }
    }
}

/// What a command still waiting on the old primary gets when the primary moves.
fn moved_error() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "the Redis primary moved"))
}

impl Primary {
    /// Runs command `f` on the current connection and looks at its outcome (`failed`: an
    /// answer that shows a failover). A command still waiting when the primary moves (on a
    /// connection to a dead server, whose reconnection can take seconds) fails then, so that
    /// its caller retries on the new primary at once.
    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
        failed: impl Fn(&T) -> bool,
    ) -> redis::RedisResult<T> {
        let mut moves = self.shared.moved.subscribe();
        let r = tokio::select! {
            r = f => r,
            _ = moves.changed() => return Err(moved_error()),
        };
        self.check(&r, failed);
        r
    }
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.manager();
            self.run(conn.req_packed_command(cmd), failover_value).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.manager();
            let failed = |v: &Vec<Value>| v.iter().any(failover_value);
            self.run(conn.req_packed_commands(pipeline, offset, count), failed)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.target.db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_url_is_one_server() {
        let t = RedisTarget::parse("redis://:pw@10.0.0.2:6379/3").unwrap();
        assert_eq!(t, RedisTarget::Direct("redis://:pw@10.0.0.2:6379/3".into()));
        assert_eq!(t.db(), 3);
        assert!(!t.follows_failover());
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379").unwrap().db(),
            0
        );
    }

    #[test]
    fn a_sentinel_url_names_sentinels_service_and_database() {
        let t = RedisTarget::parse("redis+sentinel://:p%40w@10.0.0.6:26379, 10.0.0.7,[::1]:5/ts/2")
            .unwrap();
        assert_eq!(
            t,
            RedisTarget::Sentinel {
                sentinels: vec![
                    "10.0.0.6:26379".into(),
                    "10.0.0.7:26379".into(),
                    "[::1]:5".into()
                ],
                service: "ts".into(),
                userinfo: Some(":p%40w".into()),
                db: 2,
            }
        );
        assert_eq!(
            t.server_url("10.0.0.4:6380", 2),
            "redis://:p%40w@10.0.0.4:6380/2"
        );
        assert!(!t.endpoint().contains("p%40w"));
        assert_eq!(
            RedisTarget::parse("redis+sentinel://h:1/ts").unwrap().db(),
            0
        );
    }

    #[test]
    fn a_bad_url_says_why_without_its_password() {
        for (url, why) in [
            ("http://x", "must start with"),
            ("redis+sentinel://:secret@/ts/0", "names no Sentinel"),
            ("redis+sentinel://:secret@h:1", "names no service"),
            ("redis+sentinel://:secret@h:x/ts", "is not host:port"),
            ("redis+sentinel://:secret@h:1/ts/-1", "is not a number"),
        ] {
            let e = RedisTarget::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }
}
