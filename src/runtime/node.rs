//! What a cluster is made of: nodes, their roles and ids, and how addresses are handed out.
//!
//! Pure values and functions, shared by both runtimes and by tsc's views.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// A node for unit tests (no handle).
    #[cfg(test)]
    pub(crate) fn fake(role: Role, id: &str, ip: &str, state: &str) -> Node {
        Node {
            role,
            id: id.into(),
            ip: ip.parse().expect("an IP address"),
            state: state.into(),
            handle: String::new(),
        }
    }
}

/// Host numbers of clients in a cluster's /24 (Docker) or on loopback (local).
pub const CLIENT_HOSTS: (u8, u8) = (20, 254);
/// Most clients a cluster can have: one per host number in [`CLIENT_HOSTS`].
pub const MAX_CLIENTS: usize = (CLIENT_HOSTS.1 - CLIENT_HOSTS.0) as usize + 1;

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
pub fn server_host(replica: u64) -> crate::Result<u8> {
    if (1..=MAX_REPLICAS).contains(&replica) {
        Ok(9 + replica as u8)
    } else {
        Err(crate::Error::Runtime(format!(
            "replica ids go from 1 to {MAX_REPLICAS} (got {replica})"
        )))
    }
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
        assert_eq!(server_host(1).unwrap(), 10);
        assert_eq!(server_host(10).unwrap(), 19);
        assert!(server_host(0).is_err());
        assert!(server_host(11).is_err());
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Redis, Role::Rabbitmq, Role::Server, Role::Client] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("nope"), None);
    }
}
