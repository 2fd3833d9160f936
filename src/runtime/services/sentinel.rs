//! Redis with failover: a primary, replicas, and three Sentinels that watch the primary and
//! promote a replica when it dies.
//!
//! Sentinel rewrites its configuration file as it learns (the replicas, the other Sentinels,
//! the current primary), so each one gets a file of its own (mode 0600: it holds the password).
//! The Sentinels and the Redis servers share the cluster's password: clients give it to both,
//! Sentinels give it to the servers (`auth-pass`) and to each other (`sentinel-pass`).
//! Nothing is kept on disk, so a primary must never come back empty *as a primary*: its
//! replicas would copy its empty data set. A stopped server comes back as a replica of the
//! primary the Sentinels name ([`RedisGroup::start_server`]).

use super::{free_port, port_open, redis::quoted, Process, RedisServer};
use crate::error::{Error, Result};
use crate::keys::write_private;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name Sentinels monitor a cluster's primary under.
pub const SENTINEL_SERVICE: &str = "ts-primary";
/// Port of a Sentinel in a container.
pub const SENTINEL_PORT: u16 = 26379;
/// Sentinels in a group: a majority of three survives the loss of one.
pub const SENTINELS: usize = 3;
/// Sentinels that must agree the primary is down before one fails it over.
pub const SENTINEL_QUORUM: usize = 2;
/// How long the primary may not answer before a Sentinel thinks it down. Short: a LAN, and a
/// clock service whose reports are lost while there is no primary.
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1000);
/// How long Sentinels may take to find the replicas and each other after they start.
pub const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failover may take before another Sentinel tries again.
pub const SENTINEL_FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A Sentinel's configuration file: it listens on `bind:port` and watches `primary`.
pub fn sentinel_config(bind: IpAddr, port: u16, primary: SocketAddr, password: &str) -> String {
    let p = quoted(password);
    let s = SENTINEL_SERVICE;
    format!(
        "port {port}\nbind {bind}\nrequirepass {p}\n\
         sentinel monitor {s} {} {} {SENTINEL_QUORUM}\n\
         sentinel auth-pass {s} {p}\nsentinel sentinel-pass {p}\n\
         sentinel down-after-milliseconds {s} {}\n\
         sentinel failover-timeout {s} {}\nsentinel parallel-syncs {s} 1\n",
        primary.ip(),
        primary.port(),
        SENTINEL_DOWN_AFTER.as_millis(),
        SENTINEL_FAILOVER_TIMEOUT.as_millis(),
    )
}

/// The URL through which clients find the primary (`redis+sentinel://`, see
/// [`crate::cache::RedisTarget`]).
pub fn sentinel_url(sentinels: &[SocketAddr], password: &str) -> String {
    let hosts: Vec<String> = sentinels.iter().map(SocketAddr::to_string).collect();
    format!(
        "{}:{}@{}/{SENTINEL_SERVICE}/0",
        crate::cache::SENTINEL_SCHEME,
        password,
        hosts.join(",")
    )
}

/// One Sentinel process of one's own on loopback.
#[derive(Debug)]
pub struct Sentinel {
    pub port: u16,
    conf: PathBuf,
    proc: Option<Process>,
}

impl Sentinel {
    fn start(dir: &Path, primary: SocketAddr, password: &str) -> Result<Sentinel> {
        let port = free_port()?;
        let conf = dir.join(format!("sentinel-{port}.conf"));
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        write_private(&conf, &sentinel_config(lo, port, primary, password))?;
        let mut s = Sentinel {
            port,
            conf,
            proc: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// (Re)starts it with the configuration it last wrote.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = self.conf.with_extension("log");
        let args = [self.conf.display().to_string(), "--sentinel".into()];
        self.proc = Some(Process::spawn(
            "redis-sentinel",
            Path::new("redis-server"),
            &args,
            &[],
            &log,
        )?);
        wait_open(self.port, &log)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

fn wait_open(port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !port_open(IpAddr::V4(Ipv4Addr::LOCALHOST), port) {
        if Instant::now() > deadline {
            return Err(Error::Runtime(format!(
                "port {port} did not open (see {})",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs one command on the Sentinel at `at`; its answer as flat strings.
async fn ask_sentinel(at: SocketAddr, password: &str, args: &[&str]) -> Result<Vec<String>> {
    let client = redis::Client::open(format!("redis://:{password}@{at}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    Ok(cmd.query_async(&mut conn).await?)
}

/// Whether the Sentinel at `at` knows `replicas` replicas and [`SENTINELS`]` - 1` other
/// Sentinels (until then a failover could not pick a replica, or reach a majority).
pub async fn sentinel_ready(at: SocketAddr, password: &str, replicas: usize) -> bool {
    let Ok(kv) = ask_sentinel(at, password, &["SENTINEL", "MASTER", SENTINEL_SERVICE]).await else {
        return false;
    };
    let field = |name: &str| -> Option<usize> {
        let i = kv.iter().position(|k| k == name)?;
        kv.get(i + 1)?.parse().ok()
    };
    field("num-slaves") == Some(replicas) && field("num-other-sentinels") == Some(SENTINELS - 1)
}

/// Waits until every Sentinel in `sentinels` is ready ([`sentinel_ready`]).
pub async fn wait_sentinels(
    sentinels: &[SocketAddr],
    password: &str,
    replicas: usize,
) -> Result<()> {
    let deadline = Instant::now() + SENTINEL_READY_TIMEOUT;
    loop {
        let mut ready = true;
        for s in sentinels {
            ready &= sentinel_ready(*s, password, replicas).await;
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Runtime(format!(
                "the Sentinels did not find {replicas} replicas and each other within {} s",
                SENTINEL_READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The primary's address as the first Sentinel that answers names it.
pub async fn sentinel_primary(sentinels: &[SocketAddr], password: &str) -> Result<SocketAddr> {
    let cmd = ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE];
    for s in sentinels {
        if let Ok(a) = ask_sentinel(*s, password, &cmd).await {
            if let [ip, port] = &a[..] {
                if let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>()) {
                    return Ok(SocketAddr::new(ip, port));
                }
            }
        }
    }
    Err(Error::Runtime("no Sentinel answers with a primary".into()))
}

/// A primary, `replicas` replicas and [`SENTINELS`] Sentinels of one's own on loopback, with a
/// password; all gone when dropped.
#[derive(Debug)]
pub struct RedisGroup {
    /// The servers; the first started as the primary (failovers move the role).
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
    password: String,
}

impl RedisGroup {
    /// Starts the group (logs in `dir`) and waits until the Sentinels are ready.
    pub async fn start(dir: &Path, replicas: usize, password: &str) -> Result<RedisGroup> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let primary = RedisServer::start(dir, Some(password))?;
        let at = primary.addr();
        let mut servers = vec![primary];
        for _ in 0..replicas {
            servers.push(RedisServer::start_replica(dir, password, at)?);
        }
        let sentinels = (0..SENTINELS)
            .map(|_| Sentinel::start(dir, at, password))
            .collect::<Result<Vec<_>>>()?;
        let group = RedisGroup {
            servers,
            sentinels,
            password: password.to_string(),
        };
        wait_sentinels(&group.sentinel_addrs(), password, replicas).await?;
        Ok(group)
    }

    fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(Sentinel::addr).collect()
    }

    /// The URL clients use: through the Sentinels.
    pub fn url(&self) -> String {
        sentinel_url(&self.sentinel_addrs(), &self.password)
    }

    /// The primary's address as the Sentinels see it.
    pub async fn primary(&self) -> Result<SocketAddr> {
        sentinel_primary(&self.sentinel_addrs(), &self.password).await
    }

    /// The index of the server at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.servers.iter().position(|s| s.addr() == addr)
    }

    /// Kills server `i` (SIGKILL: its data set is gone).
    pub fn kill_server(&mut self, i: usize) {
        self.servers[i].stop();
    }

    /// Starts server `i` again, empty, as a replica of the current primary (never as a
    /// primary: see the module documentation).
    pub async fn start_server(&mut self, i: usize) -> Result<()> {
        let primary = self.primary().await?;
        let server = &mut self.servers[i];
        if server.addr() == primary {
            return Err(Error::Runtime(format!(
                "the Sentinels still name {primary}, which is down, as the primary"
            )));
        }
        server.replica_of = Some(primary);
        server.restart()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_watches_the_primary_with_the_password() {
        let c = sentinel_config(
            "127.0.0.1".parse().unwrap(),
            26380,
            "10.0.0.2:6379".parse().unwrap(),
            "p\"w",
        );
        assert!(c.contains("port 26380\n"), "{c}");
        assert!(
            c.contains("sentinel monitor ts-primary 10.0.0.2 6379 2\n"),
            "{c}"
        );
        assert!(
            c.contains("sentinel auth-pass ts-primary \"p\\\"w\"\n"),
            "{c}"
        );
        assert!(c.contains("requirepass \"p\\\"w\"\n"), "{c}");
        assert!(
            c.contains("down-after-milliseconds ts-primary 1000\n"),
            "{c}"
        );
    }

    #[test]
    fn the_url_lists_every_sentinel() {
        let url = sentinel_url(
            &[
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            "pw",
        );
        assert_eq!(
            url,
            "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/ts-primary/0"
        );
        let target = crate::cache::RedisTarget::parse(&url).unwrap();
        assert!(target.follows_failover());
    }
}
