//! Where a cluster's nodes run: Docker containers (via bollard) or local processes.
//!
//! Both runtimes offer the same operations, so every `tsc` command is written once against
//! [`Runtime`]. Nodes are found by labels (Docker) or by the cluster's state file (local),
//! never by parsing names. Decisions that do not need I/O (which address a new client gets)
//! are plain functions here so they can be tested without either runtime.

mod docker;
mod images;
mod local;

pub use docker::DockerRuntime;
pub use images::{ensure_images, BASE_BUILD_SCRIPT};
pub use local::LocalRuntime;

use crate::cli::cluster::{ClusterConfig, RuntimeKind, State};
use crate::error::Result;
use serde::Serialize;
use std::net::IpAddr;
use uuid::Uuid;

/// Label keys put on every Docker object tsc creates.
pub mod labels {
    /// The cluster id; teardown removes exactly the objects carrying ours.
    pub const CLUSTER: &str = "time-sync.cluster";
    /// `redis`, `rabbitmq`, `server` or `client`.
    pub const ROLE: &str = "time-sync.role";
    /// The node id (clients: their UUID).
    pub const ID: &str = "time-sync.id";
    /// The node's static address.
    pub const IP: &str = "time-sync.ip";
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Redis,
    Rabbitmq,
    Server,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Redis => "redis",
            Role::Rabbitmq => "rabbitmq",
            Role::Server => "server",
            Role::Client => "client",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Redis, Role::Rabbitmq, Role::Server, Role::Client]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A running (or stopped) node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub role: Role,
    pub id: String,
    pub ip: IpAddr,
    /// `running`, `exited`, `paused`, ... (Docker's words; local: `running` or `exited`).
    pub state: String,
    /// Container id or process id, for people.
    pub handle: String,
}

impl Node {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// How tsc reaches the cluster's services from where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    /// For `ts-server` and `ts-client` processes (inside the cluster's network).
    pub amqp_url: String,
    /// For `ts-server`, and for tsc itself: the host reaches the cluster's bridge network and
    /// loopback alike, so one URL serves both.
    pub redis_url: String,
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
    pub async fn open(cfg: &ClusterConfig, kind: RuntimeKind) -> Result<Runtime> {
        match kind {
            RuntimeKind::Docker => Ok(Runtime::Docker(DockerRuntime::connect(cfg).await?)),
            RuntimeKind::Local => Ok(Runtime::Local(LocalRuntime::new(cfg))),
            RuntimeKind::Auto => match DockerRuntime::connect(cfg).await {
                Ok(d) => Ok(Runtime::Docker(d)),
                Err(_) => Ok(Runtime::Local(LocalRuntime::new(cfg))),
            },
        }
    }

    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Docker(_) => RuntimeKind::Docker,
            Runtime::Local(_) => RuntimeKind::Local,
        }
    }

    /// Every node of this cluster.
    pub async fn nodes(&self, state: &State) -> Result<Vec<Node>> {
        match self {
            Runtime::Docker(d) => d.nodes().await,
            Runtime::Local(l) => Ok(l.nodes(state)),
        }
    }

    /// Starts Redis and RabbitMQ and waits for their ports.
    pub async fn start_services(&self, state: &mut State, p: Progress<'_>) -> Result<()> {
        match self {
            Runtime::Docker(d) => d.start_services(p).await,
            Runtime::Local(l) => l.start_services(state, p).await,
        }
    }

    /// Where the services are.
    pub fn endpoints(&self, state: &State) -> Endpoints {
        match self {
            Runtime::Docker(d) => d.endpoints(),
            Runtime::Local(l) => l.endpoints(state),
        }
    }

    /// Starts server replica `replica` (its id and election rank; see [`server_node_id`]).
    pub async fn start_server(
        &self,
        state: &mut State,
        workers: usize,
        replica: u64,
    ) -> Result<Node> {
        let ep = self.endpoints(state);
        match self {
            Runtime::Docker(d) => d.start_server(&ep, workers, replica).await,
            Runtime::Local(l) => l.start_server(state, &ep, workers, replica),
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

    pub async fn start_client(&self, state: &mut State) -> Result<Node> {
        let ep = self.endpoints(state);
        let id = Uuid::new_v4();
        match self {
            Runtime::Docker(d) => d.start_client(&ep, id).await,
            Runtime::Local(l) => l.start_client(state, &ep, id),
        }
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

/// Most server replicas a cluster can have: they take host numbers `.10`–`.19`.
pub const MAX_REPLICAS: u64 = 10;

/// Node id of server replica `replica`.
pub fn server_node_id(replica: u64) -> String {
    format!("server-{replica}")
}

/// The replica id in a server node id (`server-3` → 3).
pub fn replica_of(node_id: &str) -> Option<u64> {
    node_id.strip_prefix("server-")?.parse().ok()
}

/// Host number of replica `replica` in the cluster's subnet (and on loopback): `.10` for 1.
pub fn server_host(replica: u64) -> Option<u8> {
    (1..=MAX_REPLICAS)
        .contains(&replica)
        .then(|| 9 + replica as u8)
}

/// Command-line arguments of a `ts-server` in this cluster (both runtimes start it this way).
/// `http` is where its API listens (inside the container: every address).
pub fn server_args(
    cfg: &ClusterConfig,
    ep: &Endpoints,
    workers: usize,
    replica: u64,
    http: std::net::SocketAddr,
) -> Vec<String> {
    let s = &cfg.server;
    vec![
        "--replica-id".into(),
        replica.to_string(),
        "--http-addr".into(),
        http.to_string(),
        "--amqp-url".into(),
        ep.amqp_url.clone(),
        "--redis-url".into(),
        ep.redis_url.clone(),
        "--workers".into(),
        workers.to_string(),
        "--ttl".into(),
        s.ttl.to_string(),
        "--tick-ms".into(),
        s.tick_ms.to_string(),
        "--algorithm".into(),
        s.algorithm.as_str().into(),
        "--berkeley-interval-ms".into(),
        s.berkeley_interval_ms.to_string(),
        "--log-dir".into(),
        cfg.server_log_dir.display().to_string(),
    ]
}

/// Command-line arguments of a `ts-client` in this cluster. Without `ip` the client finds the
/// address it reaches the broker from, as it would in production (Docker); the local runtime
/// gives each client its own loopback address.
pub fn client_args(
    cfg: &ClusterConfig,
    ep: &Endpoints,
    id: Uuid,
    ip: Option<IpAddr>,
) -> Vec<String> {
    let c = &cfg.client;
    let mut args = vec![
        "--amqp-url".into(),
        ep.amqp_url.clone(),
        "--id".into(),
        id.to_string(),
        "--skew".into(),
        c.skew.to_string(),
        "--drift-ppm".into(),
        c.drift_ppm.to_string(),
        "--interval-ms".into(),
        c.interval_ms.to_string(),
        "--log-dir".into(),
        cfg.client_log_dir.display().to_string(),
    ];
    if let Some(ip) = ip {
        args.extend(["--ip".into(), ip.to_string()]);
    }
    args
}

/// The lowest address in `first..=last` (host numbers within the subnet `base`) not in `taken`.
pub fn next_free_ip(
    base: std::net::Ipv4Addr,
    first: u8,
    last: u8,
    taken: &[IpAddr],
) -> Option<IpAddr> {
    let base = u32::from(base);
    (first..=last)
        .map(|n| IpAddr::V4((base + u32::from(n)).into()))
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_free_ip_fills_gaps_first() {
        let base = "10.251.0.0".parse().unwrap();
        let taken: Vec<IpAddr> = ["10.251.0.20", "10.251.0.22"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            next_free_ip(base, 20, 254, &taken),
            Some("10.251.0.21".parse().unwrap())
        );
        assert_eq!(next_free_ip(base, 20, 20, &taken), None);
        assert_eq!(
            next_free_ip(base, 23, 254, &[]),
            Some("10.251.0.23".parse().unwrap())
        );
    }

    #[test]
    fn replica_ids_and_addresses() {
        assert_eq!(server_node_id(3), "server-3");
        assert_eq!(replica_of("server-3"), Some(3));
        assert_eq!(replica_of("server-x"), None);
        assert_eq!(replica_of("client-3"), None);
        assert_eq!(server_host(1), Some(10));
        assert_eq!(server_host(10), Some(19));
        assert_eq!(server_host(0), None);
        assert_eq!(server_host(11), None);
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Redis, Role::Rabbitmq, Role::Server, Role::Client] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("nope"), None);
    }
}
