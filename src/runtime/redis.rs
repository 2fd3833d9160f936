//! The cluster's Redis: one server, or (`tsc bootstrap --redis-replicas N`) a primary, N
//! replicas and three Sentinels that fail it over, on either runtime.
//!
//! Servers are numbered: 0 (`redis`, the first primary), 1, 2 (`redis-1`, `redis-2`); the
//! Sentinels are `sentinel-1` … `sentinel-3`. Which server is the primary changes with every
//! failover; only the Sentinels know, so everyone (servers, tsc) asks them
//! (`redis+sentinel://`, [`crate::cache::RedisTarget`]). A killed server comes back empty (Redis
//! keeps nothing on disk here), so it must come back as a replica of the current primary, never
//! as a primary ([`Runtime::start_redis`]): its replicas would copy its empty data set, the
//! epoch counter with it.
//!
//! Docker: servers at host `.2` (0), `.4`, `.5`; Sentinels at `.6`–`.8` (port 26379). Local:
//! `127.0.0.1` on free ports, recorded in `state.json`.

use super::cluster::{LocalNode, State};
use super::node::{Node, Role};
use super::services::{
    forget_dump, redis_args, redis_config, sentinel_config, sentinel_primary, sentinel_url,
    wait_port, wait_sentinels, SENTINELS, SENTINEL_PORT,
};
use super::{DockerRuntime, LocalRuntime, Progress, Runtime};
use crate::error::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Most Redis replicas a cluster can have (the Docker addresses reserved for them).
pub const MAX_REDIS_REPLICAS: usize = 2;
/// Redis's port in its container.
pub const REDIS_PORT: u16 = 6379;
/// Host numbers of Redis servers 0, 1, 2 in the Docker subnet.
pub const REDIS_HOSTS: [u8; MAX_REDIS_REPLICAS + 1] = [2, 4, 5];
/// Host numbers of the Sentinels in the Docker subnet.
pub const SENTINEL_HOSTS: [u8; SENTINELS] = [6, 7, 8];

/// Node id of Redis server `i`.
pub fn redis_node_id(i: usize) -> String {
    if i == 0 {
        "redis".into()
    } else {
        format!("redis-{i}")
    }
}

/// The number of Redis server node `id` (`redis` is 0, `redis-2` is 2; `2` alone works too).
pub fn redis_index(id: &str) -> Option<usize> {
    match id {
        "redis" | "0" => Some(0),
        _ => id.strip_prefix("redis-").unwrap_or(id).parse().ok(),
    }
}

/// Node id of Sentinel `j` (0-based): `sentinel-1` …
pub fn sentinel_node_id(j: usize) -> String {
    format!("sentinel-{}", j + 1)
}

/// Where the cluster's Redis servers and Sentinels listen, as seen from this host (and from
/// the cluster's nodes: on Docker the host is on the cluster's network).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisAddrs {
    pub servers: Vec<SocketAddr>,
    pub sentinels: Vec<SocketAddr>,
}

impl RedisAddrs {
    /// The URL servers and tsc use: the one server's, or through the Sentinels.
    pub fn url(&self, password: &str) -> String {
        if self.sentinels.is_empty() {
            format!("redis://:{password}@{}/0", self.servers[0])
        } else {
            sentinel_url(&self.sentinels, password)
        }
    }
}

impl Runtime {
    /// Where Redis is.
    pub fn redis_addrs(&self, state: &State) -> RedisAddrs {
        match self {
            Runtime::Docker(d) => d.redis_addrs(state),
            Runtime::Local(l) => l.redis_addrs(state),
        }
    }

    /// The current primary, as the Sentinels name it (server 0 without Sentinels).
    pub async fn redis_primary(&self, state: &State) -> Result<SocketAddr> {
        let a = self.redis_addrs(state);
        if a.sentinels.is_empty() {
            return Ok(a.servers[0]);
        }
        sentinel_primary(&a.sentinels, &self.cfg().credentials.redis_password).await
    }

    /// Starts Redis server `node` again (a stopped or killed one), empty. With Sentinels, as
    /// a replica of the primary they name; refused while they still name it (it would come
    /// back as an empty primary, and its replicas would copy that).
    pub async fn start_redis(&self, state: &mut State, node: &Node) -> Result<()> {
        let i = redis_index(&node.id)
            .filter(|i| *i <= state.redis_replicas)
            .ok_or_else(|| Error::NotFound(format!("no Redis server {}", node.id)))?;
        let mut replica_of = None;
        if state.redis_replicas > 0 {
            let primary = self.redis_primary(state).await?;
            if primary == self.redis_addrs(state).servers[i] {
                return Err(Error::Runtime(format!(
                    "the Sentinels still name {} ({primary}) the primary; wait for the \
                     failover (seconds after it died) and try again",
                    node.id
                )));
            }
            replica_of = Some(primary);
        }
        let at = match self {
            Runtime::Docker(d) => {
                d.remove(node).await?;
                d.run_redis(i, replica_of).await?
            }
            Runtime::Local(l) => l.run_redis(state, i, replica_of)?,
        };
        wait_port(&node.id, at.ip(), at.port(), &mut |_| {}).await
    }

    /// Each Redis server's and Sentinel's own account of itself: `primary`, `replica of
    /// ADDR` (and whether its link is up), `sentinel (primary ADDR)`, or why it did not answer.
    pub async fn redis_roles(&self, state: &State) -> Vec<(String, String)> {
        let a = self.redis_addrs(state);
        let pw = &self.cfg().credentials.redis_password;
        let mut out = Vec::new();
        for (i, s) in a.servers.iter().enumerate() {
            out.push((redis_node_id(i), server_role(*s, pw).await));
        }
        for (j, s) in a.sentinels.iter().enumerate() {
            let what = match sentinel_primary(&[*s], pw).await {
                Ok(p) => format!("sentinel, primary {p}"),
                Err(_) => "sentinel, not answering".into(),
            };
            out.push((sentinel_node_id(j), what));
        }
        out
    }

    /// Starts the cluster's Redis: server 0, then with replicas, the replicas and the
    /// Sentinels, waiting until the Sentinels know them all.
    pub(super) async fn start_redis_group(
        &self,
        state: &mut State,
        replicas: usize,
        p: Progress<'_>,
    ) -> Result<()> {
        if replicas > MAX_REDIS_REPLICAS {
            return Err(Error::Config(format!(
                "--redis-replicas must be at most {MAX_REDIS_REPLICAS}"
            )));
        }
        state.redis_replicas = replicas;
        let what = if replicas == 0 {
            "Starting Redis service..".to_string()
        } else {
            format!("Starting Redis: a primary, {replicas} replica(s) and {SENTINELS} Sentinels..")
        };
        p(&what);
        for i in 0..=replicas {
            let primary = (i > 0).then(|| self.redis_addrs(state).servers[0]);
            let at = match self {
                Runtime::Docker(d) => d.run_redis(i, primary).await?,
                Runtime::Local(l) => l.run_redis(state, i, primary)?,
            };
            wait_port(&redis_node_id(i), at.ip(), at.port(), p).await?;
        }
        if replicas == 0 {
            return Ok(());
        }
        let primary = self.redis_addrs(state).servers[0];
        for j in 0..SENTINELS {
            match self {
                Runtime::Docker(d) => d.run_sentinel(j, primary).await?,
                Runtime::Local(l) => l.run_sentinel(state, j, primary)?,
            }
        }
        let a = self.redis_addrs(state);
        let pw = &self.cfg().credentials.redis_password;
        wait_sentinels(&a.sentinels, pw, replicas).await?;
        p(&format!(
            "Redis primary {}, replicas {}; Sentinels at {} agree",
            a.servers[0],
            a.servers[1..]
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            a.sentinels
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    }
}

/// What the Redis server at `at` says it is (`ROLE`).
async fn server_role(at: SocketAddr, password: &str) -> String {
    let asked = async {
        let client = redis::Client::open(format!("redis://:{password}@{at}/0"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_response_timeout(Some(std::time::Duration::from_secs(1)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("ROLE")
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
    };
    let v = match asked.await {
        Ok(v) => v,
        Err(e) => return format!("not answering ({})", e.category()),
    };
    let text = |i: usize| -> String {
        v.get(i)
            .and_then(|x| redis::from_redis_value::<String>(x.clone()).ok())
            .unwrap_or_default()
    };
    match text(0).as_str() {
        "master" => "primary".into(),
        "slave" => format!("replica of {}:{} (link {})", text(1), text(2), text(3)),
        other => other.to_string(),
    }
}

impl DockerRuntime {
    pub(super) fn redis_addrs(&self, state: &State) -> RedisAddrs {
        let n = state.redis_replicas.min(MAX_REDIS_REPLICAS);
        let sentinels = if n == 0 { &[][..] } else { &SENTINEL_HOSTS[..] };
        RedisAddrs {
            servers: REDIS_HOSTS[..=n]
                .iter()
                .map(|h| SocketAddr::new(self.ip(*h), REDIS_PORT))
                .collect(),
            sentinels: sentinels
                .iter()
                .map(|h| SocketAddr::new(self.ip(*h), SENTINEL_PORT))
                .collect(),
        }
    }

    /// Runs Redis server `i`'s container (a replica of `replica_of`, if given); its address.
    pub(super) async fn run_redis(
        &self,
        i: usize,
        replica_of: Option<SocketAddr>,
    ) -> Result<SocketAddr> {
        let ip = self.ip(REDIS_HOSTS[i]);
        let config = redis_config(&self.cfg.credentials.redis_password, replica_of);
        self.run(
            Role::Redis,
            &redis_node_id(i),
            ip,
            &self.cfg.docker.base_image,
            // The password reaches redis-server on its standard input, from the environment
            // (a here-document): it is in no process's arguments nor in the container's command.
            [
                "sh",
                "-c",
                "exec redis-server \"$@\" <<EOF\n$TS_REDIS_CONFIG\nEOF",
                "sh",
            ]
            .into_iter()
            .map(String::from)
            .chain(redis_args(
                Ipv4Addr::UNSPECIFIED.into(),
                REDIS_PORT,
                true,
                std::path::Path::new("/tmp"),
            ))
            .collect(),
            vec![format!("TS_REDIS_CONFIG={config}")],
            Some("redis"),
            vec![],
            vec![],
        )
        .await?;
        Ok(SocketAddr::new(ip, REDIS_PORT))
    }

    /// Runs Sentinel `j`'s container, watching `primary`. Sentinel rewrites its configuration
    /// file, so the container writes it (mode 0600) from the environment when it first starts,
    /// and keeps it over a restart.
    pub(super) async fn run_sentinel(&self, j: usize, primary: SocketAddr) -> Result<()> {
        let ip = self.ip(SENTINEL_HOSTS[j]);
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let config = sentinel_config(
            any,
            SENTINEL_PORT,
            primary,
            &self.cfg.credentials.redis_password,
        );
        self.run(
            Role::Sentinel,
            &sentinel_node_id(j),
            ip,
            &self.cfg.docker.base_image,
            [
                "sh",
                "-c",
                // Only the first time: after a restart, the file Sentinel rewrote (the current
                // primary, the replicas, the other Sentinels) is what it must start from.
                "umask 077 && { [ -f /tmp/sentinel.conf ] || printf '%s\\n' \"$TS_SENTINEL_CONFIG\" \
                 > /tmp/sentinel.conf; } && exec redis-server /tmp/sentinel.conf --sentinel",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![format!("TS_SENTINEL_CONFIG={config}")],
            Some("redis"),
            vec![],
            vec![],
        )
        .await?;
        Ok(())
    }
}

impl LocalRuntime {
    pub(super) fn redis_addrs(&self, state: &State) -> RedisAddrs {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let l = &state.local;
        RedisAddrs {
            servers: std::iter::once(l.redis_port.unwrap_or(REDIS_PORT))
                .chain(l.redis_replica_ports.iter().copied())
                .map(|p| SocketAddr::new(lo, p))
                .collect(),
            sentinels: l
                .sentinel_ports
                .iter()
                .map(|p| SocketAddr::new(lo, *p))
                .collect(),
        }
    }

    /// Starts Redis server `i` (on its recorded port, or a free one the first time), a
    /// replica of `replica_of` if given, and records it; its address.
    pub(super) fn run_redis(
        &self,
        state: &mut State,
        i: usize,
        replica_of: Option<SocketAddr>,
    ) -> Result<SocketAddr> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let recorded = match i {
            0 => state.local.redis_port,
            _ => state.local.redis_replica_ports.get(i - 1).copied(),
        };
        let port = match recorded {
            Some(p) => p,
            None => super::services::free_port()?,
        };
        let id = redis_node_id(i);
        let config = redis_config(&self.cfg.credentials.redis_password, replica_of);
        let program = std::path::Path::new("redis-server");
        let dir = self.cfg.home.join("local");
        forget_dump(&dir, port);
        let args = redis_args(lo, port, true, &dir);
        let pid = self.spawn(&id, program, &args, &[], Some(&config))?;
        match i {
            0 => state.local.redis_port = Some(port),
            _ if recorded.is_none() => state.local.redis_replica_ports.push(port),
            _ => {}
        }
        record(state, Role::Redis, id, pid);
        state.save(&self.cfg.home)?;
        Ok(SocketAddr::new(lo, port))
    }

    /// Starts Sentinel `j` on a free port, watching `primary`, with its configuration file
    /// (0600) in the cluster's `local/` directory, and records it.
    pub(super) fn run_sentinel(
        &self,
        state: &mut State,
        j: usize,
        primary: SocketAddr,
    ) -> Result<()> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = super::services::free_port()?;
        let id = sentinel_node_id(j);
        let conf = self.cfg.home.join("local").join(format!("{id}.conf"));
        let pw = &self.cfg.credentials.redis_password;
        crate::keys::write_private(&conf, &sentinel_config(lo, port, primary, pw))?;
        let args = [conf.display().to_string(), "--sentinel".into()];
        let pid = self.spawn(&id, std::path::Path::new("redis-server"), &args, &[], None)?;
        state.local.sentinel_ports.push(port);
        record(state, Role::Sentinel, id, pid);
        state.save(&self.cfg.home)
    }
}

/// Records (or updates) a service process of the local runtime.
fn record(state: &mut State, role: Role, id: String, pid: u32) {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    state
        .local
        .nodes
        .retain(|n| !(n.role == role && n.id == id));
    state.local.nodes.push(LocalNode {
        role,
        id,
        ip: lo,
        pid,
        command: Vec::new(),
        env: Vec::new(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_numbers() {
        assert_eq!(redis_node_id(0), "redis");
        assert_eq!(redis_node_id(2), "redis-2");
        for (id, i) in [("redis", 0), ("0", 0), ("redis-1", 1), ("2", 2)] {
            assert_eq!(redis_index(id), Some(i), "{id}");
        }
        assert_eq!(redis_index("sentinel-1"), None);
        assert_eq!(sentinel_node_id(0), "sentinel-1");
    }

    #[test]
    fn the_url_is_the_servers_or_the_sentinels() {
        let one = RedisAddrs {
            servers: vec!["10.0.0.2:6379".parse().unwrap()],
            sentinels: vec![],
        };
        assert_eq!(one.url("pw"), "redis://:pw@10.0.0.2:6379/0");
        let group = RedisAddrs {
            servers: vec!["10.0.0.2:6379".parse().unwrap()],
            sentinels: vec!["10.0.0.6:26379".parse().unwrap()],
        };
        assert_eq!(
            group.url("pw"),
            "redis+sentinel://:pw@10.0.0.6:26379/ts-primary/0"
        );
    }
}
