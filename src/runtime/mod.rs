//! Where a cluster's nodes run: Docker containers (via bollard) or local processes.
//!
//! Both runtimes offer the same operations, so every `tsc` command is written once against
//! [`Runtime`]. Nodes are found by labels (Docker) or by the cluster's state file (local),
//! never by parsing names. Decisions that do not need I/O (which address a new client gets)
//! are plain functions here so they can be tested without either runtime.

mod brokers;
pub mod cluster;
mod docker;
mod images;
mod local;
pub mod node;
mod redis;
pub mod services;

pub use brokers::{broker_index, broker_node_id, BrokerRow, BrokerView, BROKER_HOSTS};
pub use docker::DockerRuntime;
pub use images::{ensure_images, BASE_BUILD_SCRIPT};
pub use local::LocalRuntime;
pub use node::{Node, Role, SwarmSpan, MAX_REPLICAS};
pub use redis::{redis_index, redis_node_id, RedisAddrs, MAX_REDIS_REPLICAS};

use crate::broker::{self, QueueType};
use crate::error::{Error, Result};
use crate::settings::{self, ClientNode, ServerNode, ServerSettings, DEFAULT_SWARM_IP_BASE};
use cluster::{ClusterConfig, RuntimeKind, State};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// How the cluster's nodes, and tsc itself, reach its services. Each kind of node has a broker
/// user of its own ([`services::BrokerRole`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    /// For `ts-client` processes (inside the cluster's network).
    pub client_amqp_url: String,
    /// For `ts-server` processes.
    pub server_amqp_url: String,
    /// For tsc (and tests): the host reaches the cluster's network and loopback alike.
    pub operator_amqp_url: String,
    /// For `ts-server`, and for tsc itself. Clients never get it.
    pub redis_url: String,
    /// How the shared queues are declared: quorum on a cluster of brokers.
    pub queue_type: QueueType,
}

/// Progress lines for people; `tsc` prints them, tests collect them.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// A runtime chosen for a cluster.
pub enum Runtime {
    Docker(DockerRuntime),
    Local(LocalRuntime),
}

impl Runtime {
    /// Opens the runtime that `kind` names (`Auto`: Docker if a daemon answers, else local).
    /// A `DOCKER_HOST` that does not answer is an error even under `Auto`: whoever set it meant
    /// that daemon, and a silent fall back to local processes would hide the mistake.
    pub async fn open(cfg: &ClusterConfig, kind: RuntimeKind) -> Result<Runtime> {
        match kind {
            RuntimeKind::Docker => Ok(Runtime::Docker(DockerRuntime::connect(cfg).await?)),
            RuntimeKind::Local => Ok(Runtime::Local(LocalRuntime::new(cfg))),
            RuntimeKind::Auto => match DockerRuntime::connect(cfg).await {
                Ok(d) => Ok(Runtime::Docker(d)),
                Err(e) => match std::env::var("DOCKER_HOST") {
                    Ok(host) if !host.is_empty() => Err(Error::Runtime(format!(
                        "DOCKER_HOST={host} does not answer ({e}); fix or unset it, or set \
                         runtime = \"local\" in cluster.toml"
                    ))),
                    _ => Ok(Runtime::Local(LocalRuntime::new(cfg))),
                },
            },
        }
    }

    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Docker(_) => RuntimeKind::Docker,
            Runtime::Local(_) => RuntimeKind::Local,
        }
    }

    fn cfg(&self) -> &ClusterConfig {
        match self {
            Runtime::Docker(d) => &d.cfg,
            Runtime::Local(l) => &l.cfg,
        }
    }

    /// Every node of this cluster; a swarm with its clients' ids (from its key directory).
    pub async fn nodes(&self, state: &State) -> Result<Vec<Node>> {
        let mut nodes = match self {
            Runtime::Docker(d) => d.nodes().await?,
            Runtime::Local(l) => l.nodes(state),
        };
        for n in &mut nodes {
            if let Some(span) = &mut n.swarm {
                let ids = swarm_ids(&self.cfg().node_keys_dir(&n.id))?;
                *span = SwarmSpan::new(span.first_ip, ids);
            }
        }
        Ok(nodes)
    }

    /// Starts Redis (with `redis_replicas` replicas and Sentinels, if any) and RabbitMQ
    /// (`brokers` nodes), and waits until they answer.
    pub async fn start_services(
        &self,
        state: &mut State,
        redis_replicas: usize,
        brokers: usize,
        p: Progress<'_>,
    ) -> Result<()> {
        if let Runtime::Docker(d) = self {
            d.prepare(p).await?;
        }
        self.start_redis_group(state, redis_replicas, p).await?;
        self.start_brokers(state, brokers, p).await
    }

    /// Where the services are.
    pub fn endpoints(&self, state: &State) -> Endpoints {
        match self {
            Runtime::Docker(d) => d.endpoints(state),
            Runtime::Local(l) => l.endpoints(state),
        }
    }

    /// Starts server replica `replica` (its id and election rank; see
    /// [`node::server_node_id`]) with `settings`.
    pub async fn start_server(
        &self,
        state: &mut State,
        settings: &ServerSettings,
        replica: u64,
    ) -> Result<Node> {
        let ep = self.endpoints(state);
        match self {
            Runtime::Docker(d) => d.start_server(&ep, settings, replica).await,
            Runtime::Local(l) => l.start_server(state, &ep, settings, replica),
        }
    }

    /// Stops a node and keeps it (`start` brings it back as it was): seed 004's "shut off".
    pub async fn stop(&self, state: &mut State, node: &Node) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.stop(node).await,
            Runtime::Local(l) => l.stop(state, node),
        }
    }

    /// Kills a node at once (SIGKILL, `docker kill`), keeping it for `start`: a crash.
    pub async fn kill(&self, state: &State, node: &Node) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.kill(node).await,
            Runtime::Local(l) => l.kill(state, node),
        }
    }

    /// Starts a stopped node again.
    pub async fn start(&self, state: &mut State, node: &Node) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.start(node).await,
            Runtime::Local(l) => l.start(state, node),
        }
    }

    /// Freezes a node's processes (`docker pause`, SIGSTOP): it keeps its connections but says
    /// nothing, as a stalled machine would.
    pub async fn pause(&self, state: &State, node: &Node) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.pause(node, true).await,
            Runtime::Local(l) => l.pause(state, node, true),
        }
    }

    /// Thaws a paused node.
    pub async fn resume(&self, state: &State, node: &Node) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.pause(node, false).await,
            Runtime::Local(l) => l.pause(state, node, false),
        }
    }

    /// Starts a lone client at the lowest free address: no node's, and none of a swarm's
    /// clients'.
    pub async fn start_client(&self, state: &mut State) -> Result<Node> {
        let nodes = self.nodes(state).await?;
        let taken: Vec<IpAddr> = nodes
            .iter()
            .map(|n| n.ip)
            .chain(
                nodes
                    .iter()
                    .filter_map(|n| n.swarm.as_ref())
                    .flat_map(|s| (0..s.clients).map(|i| s.ip(i))),
            )
            .collect();
        let ep = self.endpoints(state);
        let id = Uuid::new_v4();
        match self {
            Runtime::Docker(d) => d.start_client(&ep, id, &taken).await,
            Runtime::Local(l) => l.start_client(state, &ep, id, &taken),
        }
    }

    /// Starts a swarm of `n` clients (one `ts-client --swarm` process) from address `first`,
    /// else right after the cluster's other swarms (from [`DEFAULT_SWARM_IP_BASE`]).
    pub async fn start_swarm(
        &self,
        state: &mut State,
        n: usize,
        first: Option<Ipv4Addr>,
    ) -> Result<Node> {
        let nodes = self.nodes(state).await?;
        let default: Ipv4Addr = DEFAULT_SWARM_IP_BASE.parse().expect("an IPv4 address");
        let (k, first) = node::place_swarm(&nodes, n, first, default)?;
        let id = node::swarm_node_id(k);
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let keys = crate::keys::ClusterKeys::load(&self.cfg().keys_dir())?;
        let dir = self.cfg().node_keys_dir(&id);
        crate::keys::write_ring(&dir, &keys.swarm_ring(&ids))?;
        let ep = self.endpoints(state);
        let taken: Vec<IpAddr> = nodes.iter().map(|n| n.ip).collect();
        let mut node = match self {
            Runtime::Docker(d) => d.start_swarm(&ep, &id, n, first, &taken).await,
            Runtime::Local(l) => l.start_swarm(state, &ep, &id, n, first),
        }?;
        node.swarm = Some(SwarmSpan::new(first, ids));
        Ok(node)
    }

    /// Stops and removes one node.
    pub async fn remove(&self, state: &mut State, node: &Node) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.remove(node).await,
            Runtime::Local(l) => l.remove(state, node),
        }
    }

    /// Removes every node and whatever else the cluster created; returns what it removed.
    pub async fn teardown(&self, state: &mut State, p: Progress<'_>) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.teardown(p).await,
            Runtime::Local(l) => l.teardown(state, p),
        }
    }
}

/// The `TS_*` variables a `ts-server` of this cluster is started with: replica `replica`, its
/// API on `http`, with the cluster's server settings (`settings`: cluster.toml's `[server]`,
/// perhaps with a different worker count).
pub fn server_env(
    cfg: &ClusterConfig,
    ep: &Endpoints,
    settings: &ServerSettings,
    replica: u64,
    http: SocketAddr,
    key_dir: &Path,
) -> Vec<(String, String)> {
    let node = ServerNode {
        amqp_url: broker::rotate_urls(&ep.server_amqp_url, replica as usize),
        queue_type: ep.queue_type,
        redis_url: ep.redis_url.clone(),
        replica_id: replica,
        http_addr: http,
        key_dir: key_dir.to_path_buf(),
        log_dir: cfg.server_log_dir.clone(),
        ..settings::defaults()
    };
    let mut env = settings::to_env(&node);
    env.extend(settings::to_env(settings));
    env
}

/// The `TS_*` variables a `ts-client` of this cluster is started with. Without `ip` the client
/// finds the address it reaches the broker from, as it would in production (Docker); the local
/// runtime gives each client its own loopback address.
pub fn client_env(
    cfg: &ClusterConfig,
    ep: &Endpoints,
    id: Uuid,
    ip: Option<IpAddr>,
    key_dir: &Path,
) -> Vec<(String, String)> {
    let node = ClientNode {
        // Clients spread over the broker's nodes, each with the others as fall-backs.
        amqp_url: broker::rotate_urls(&ep.client_amqp_url, id.as_u128() as usize),
        id: Some(id),
        ip,
        key_dir: key_dir.to_path_buf(),
        log_dir: cfg.client_log_dir.clone(),
        ..settings::defaults()
    };
    let mut client = cfg.client.clone();
    // Clients of the local runtime share the host's addresses: each serves NTP on its own.
    if let (Some(listen), Some(ip)) = (client.ntp_listen, ip) {
        if listen.ip().is_unspecified() {
            client.ntp_listen = Some(std::net::SocketAddr::new(ip, listen.port()));
        }
    }
    let mut env = settings::to_env(&node);
    env.extend(settings::to_env(&client));
    env
}

/// The `TS_*` variables of a swarm of `n` clients from `first`: a client's, with no NTP (a
/// swarm serves none and follows no upstream).
pub fn swarm_env(
    cfg: &ClusterConfig,
    ep: &Endpoints,
    n: usize,
    first: Ipv4Addr,
    key_dir: &Path,
) -> Vec<(String, String)> {
    let node = ClientNode {
        amqp_url: broker::rotate_urls(&ep.client_amqp_url, u32::from(first) as usize),
        swarm: Some(n),
        swarm_ip_base: first,
        key_dir: key_dir.to_path_buf(),
        log_dir: cfg.client_log_dir.clone(),
        ..settings::defaults()
    };
    let client = settings::ClientSettings {
        ntp_listen: None,
        ntp_upstream: Vec::new(),
        ..cfg.client.clone()
    };
    let mut env = settings::to_env(&node);
    env.extend(settings::to_env(&client));
    env
}

/// The log file of a swarm whose first address is `first` (as `ts-client` names it).
pub fn swarm_log_name(first: Ipv4Addr) -> String {
    format!("swarm-{first}")
}

/// The ids of a swarm's clients, in address order, from its key directory.
fn swarm_ids(dir: &Path) -> Result<Vec<Uuid>> {
    Ok(crate::keys::load(dir)?
        .swarm
        .iter()
        .map(|(id, _)| *id)
        .collect())
}

/// Where a node's key directory is in its container (bind-mounted read-only from the host).
pub const CONTAINER_KEY_DIR: &str = "/run/time-sync/keys";

/// Writes the key directory of node `node_id` (`server-N`, or a client's id) from tsc's copy
/// of the cluster's keys: a replica gets the server keys, a client only its own key and the
/// leader's public key. Returns the directory.
pub fn write_node_keys(cfg: &ClusterConfig, node_id: &str) -> Result<PathBuf> {
    let keys = crate::keys::ClusterKeys::load(&cfg.keys_dir())?;
    let dir = cfg.node_keys_dir(node_id);
    write_node_ring(&keys, node_id, &dir)?;
    Ok(dir)
}

/// What node `node_id` holds of `keys`, written to `dir`.
pub fn write_node_ring(keys: &crate::keys::ClusterKeys, node_id: &str, dir: &Path) -> Result<()> {
    let ring = if node::replica_of(node_id).is_some() {
        keys.server_ring()
    } else if node::swarm_of(node_id).is_some() {
        keys.swarm_ring(&swarm_ids(dir)?)
    } else {
        let id: Uuid = node_id.parse().map_err(|_| {
            crate::Error::Runtime(format!("{node_id:?} is neither a replica nor a client id"))
        })?;
        crate::keys::write_client_id(dir, &id)?;
        keys.client_ring(&id)
    };
    crate::keys::write_ring(dir, &ring)
}

/// Gives every node directory under tsc's home `keys` (tsc's own copy is written too): how a
/// key rotation reaches a running cluster.
pub fn write_all_keys(cfg: &ClusterConfig, keys: &crate::keys::ClusterKeys) -> Result<usize> {
    keys.save(&cfg.keys_dir())?;
    let nodes = cfg.keys_dir().join("nodes");
    let mut n = 0;
    let entries = match std::fs::read_dir(&nodes) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(crate::Error::io(&nodes, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| crate::Error::io(&nodes, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        write_node_ring(keys, &name, &entry.path())?;
        n += 1;
    }
    Ok(n)
}

/// Removes node `node_id`'s key directory.
pub fn remove_node_keys(cfg: &ClusterConfig, node_id: &str) -> Result<()> {
    let dir = cfg.node_keys_dir(node_id);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::Error::io(&dir, e)),
        _ => Ok(()),
    }
}

/// The broker users of a cluster: (name, password, role), named `<prefix><suffix>-<role>`.
pub fn broker_users(
    cfg: &ClusterConfig,
    suffix: &str,
) -> Vec<(String, String, services::BrokerRole)> {
    let c = &cfg.credentials;
    services::BrokerRole::ALL
        .iter()
        .map(|role| {
            let pass = match role {
                services::BrokerRole::Client => &c.rabbitmq_client_password,
                services::BrokerRole::Server => &c.rabbitmq_server_password,
                services::BrokerRole::Operator => &c.rabbitmq_operator_password,
            };
            (
                format!("{}{suffix}-{}", c.rabbitmq_user, role.as_str()),
                pass.clone(),
                *role,
            )
        })
        .collect()
}

/// Declares the shared topology as the operator, so that clients (which may not declare it)
/// find it from their first connection.
pub async fn declare_topology(ep: &Endpoints) -> Result<()> {
    let first = broker::split_urls(&ep.operator_amqp_url)[0];
    let uri = broker::parse_url(first)?;
    let conn = lapin::Connection::connect_uri(uri, Default::default()).await?;
    let ch = conn.create_channel().await?;
    broker::declare_topology(&ch, ep.queue_type).await?;
    let _ = conn.close(200, "topology declared".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClusterKeys;

    #[test]
    fn a_key_rotation_reaches_a_swarm_and_keeps_its_clients() {
        let dir = std::env::temp_dir().join(format!("ts-swarm-keys-{}", Uuid::new_v4().simple()));
        let (old, new) = (ClusterKeys::generate("t"), ClusterKeys::generate("t"));
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        crate::keys::write_ring(&dir, &old.swarm_ring(&ids)).unwrap();
        write_node_ring(&new, "swarm-1", &dir).unwrap();
        let ring = crate::keys::load(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ring.swarm.len(), 3);
        for ((id, keys), want) in ring.swarm.iter().zip(&ids) {
            assert_eq!(id, want, "the same clients, in the same order");
            assert_eq!(
                *keys,
                new.server_ring().client_keys(id),
                "with the new keys"
            );
        }
        assert_eq!(
            ring.leader_public,
            new.server_ring().leader_public,
            "and the new leader key"
        );
    }
}
