//! What a cluster is made of: nodes, their roles and ids, and how addresses are handed out.
//!
//! Pure values and functions, shared by both runtimes and by tsc's views.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use uuid::Uuid;

/// Label keys put on every Docker object tsc creates.
pub mod labels {
    /// The cluster id; teardown removes exactly the objects carrying ours.
    pub const CLUSTER: &str = "time-sync.cluster";
    /// `redis`, `sentinel`, `rabbitmq`, `server`, `client` or `swarm`.
    pub const ROLE: &str = "time-sync.role";
    /// The node id (clients: their UUID).
    pub const ID: &str = "time-sync.id";
    /// The node's static address.
    pub const IP: &str = "time-sync.ip";
    /// A swarm's first client address (client i advertises it + i).
    pub const SWARM_FIRST_IP: &str = "time-sync.swarm-first-ip";
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Redis,
    /// A Redis Sentinel (with `tsc bootstrap --redis-replicas`).
    Sentinel,
    Rabbitmq,
    Server,
    Client,
    /// One `ts-client --swarm N` process: N clients (`tsc clients add --swarm`).
    Swarm,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Redis => "redis",
            Role::Sentinel => "sentinel",
            Role::Rabbitmq => "rabbitmq",
            Role::Server => "server",
            Role::Client => "client",
            Role::Swarm => "swarm",
        }
    }

    pub const ALL: [Role; 6] = [
        Role::Redis,
        Role::Sentinel,
        Role::Rabbitmq,
        Role::Server,
        Role::Client,
        Role::Swarm,
    ];

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
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
    /// A swarm's clients (`Role::Swarm` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmSpan>,
}

impl Node {
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// The clients this node runs: its own id, a swarm's members, or none (other roles).
    pub fn client_ids(&self) -> Vec<String> {
        match (&self.role, &self.swarm) {
            (Role::Client, _) => vec![self.id.clone()],
            (Role::Swarm, Some(s)) => s.ids.iter().map(Uuid::to_string).collect(),
            _ => Vec::new(),
        }
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
            swarm: None,
        }
    }
}

/// The clients of a swarm node: client i has id `ids[i]` and advertises `first_ip` + i.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmSpan {
    pub first_ip: Ipv4Addr,
    /// How many clients (`ids.len()`; what JSON shows instead of the ids).
    pub clients: usize,
    #[serde(skip)]
    pub ids: Vec<Uuid>,
}

impl SwarmSpan {
    pub fn new(first_ip: Ipv4Addr, ids: Vec<Uuid>) -> Self {
        SwarmSpan {
            first_ip,
            clients: ids.len(),
            ids,
        }
    }

    /// The address client `i` advertises.
    pub fn ip(&self, i: usize) -> IpAddr {
        crate::client::swarm::member_ip(self.first_ip, i)
    }

    /// Its first address as a number.
    pub fn start(&self) -> u64 {
        u64::from(u32::from(self.first_ip))
    }

    /// One past its last address as a number (2^32 for a swarm that ends at 255.255.255.255),
    /// where the next swarm starts.
    pub fn end(&self) -> u64 {
        self.start() + self.clients as u64
    }
}

/// Where a new swarm of `n` clients goes beside `nodes`: its number (one above the highest
/// swarm's) and its first address: `asked`, else right after the last address any swarm holds,
/// else `default_first`. Refused (`Error::Config`: the request's to change) when its addresses
/// overlap another swarm's or a client's (two clients with one address would leave the
/// election to chance) or run past 255.255.255.255.
pub fn place_swarm(
    nodes: &[Node],
    n: usize,
    asked: Option<Ipv4Addr>,
    default_first: Ipv4Addr,
) -> crate::Result<(u64, Ipv4Addr)> {
    let spans: Vec<&SwarmSpan> = nodes.iter().filter_map(|x| x.swarm.as_ref()).collect();
    let k = nodes
        .iter()
        .filter_map(|x| swarm_of(&x.id))
        .max()
        .unwrap_or(0)
        + 1;
    let start = match asked {
        Some(ip) => u64::from(u32::from(ip)),
        None => spans
            .iter()
            .map(|s| s.end())
            .max()
            .unwrap_or(u64::from(u32::from(default_first))),
    };
    let end = start + n as u64;
    let address = |a: u64| Ipv4Addr::from(a as u32);
    if end > 1 << 32 {
        return Err(crate::Error::Config(format!(
            "a swarm of {n} from {} runs past 255.255.255.255",
            if start < 1 << 32 {
                address(start).to_string()
            } else {
                "there".into()
            }
        )));
    }
    let first = address(start);
    let within = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => (start..end).contains(&u64::from(u32::from(*v4))),
        IpAddr::V6(_) => false,
    };
    if let Some(s) = spans.iter().find(|s| s.start() < end && start < s.end()) {
        return Err(crate::Error::Config(format!(
            "addresses {first}–{} overlap a swarm's, {}–{}",
            address(end - 1),
            s.first_ip,
            address(s.end() - 1)
        )));
    }
    if let Some(c) = nodes
        .iter()
        .find(|x| x.role == Role::Client && within(&x.ip))
    {
        return Err(crate::Error::Config(format!(
            "addresses {first}–{} include client {}'s, {}",
            address(end - 1),
            c.id,
            c.ip
        )));
    }
    Ok((k, first))
}

/// Node id of the `k`-th swarm tsc started (`swarm-1`, ...).
pub fn swarm_node_id(k: u64) -> String {
    format!("swarm-{k}")
}

/// The number in a swarm node id (`swarm-2` → 2).
pub fn swarm_of(node_id: &str) -> Option<u64> {
    node_id.strip_prefix("swarm-")?.parse().ok()
}

/// Host numbers of clients in a cluster's /24 (Docker) or on loopback (local).
pub const CLIENT_HOSTS: (u8, u8) = (20, 253);
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

    fn swarm(k: u64, first: &str, n: usize) -> Node {
        Node {
            swarm: Some(SwarmSpan::new(
                first.parse().unwrap(),
                (0..n).map(|_| Uuid::new_v4()).collect(),
            )),
            ..Node::fake(Role::Swarm, &swarm_node_id(k), "10.0.0.30", "running")
        }
    }

    #[test]
    fn swarms_go_one_after_another_and_never_overlap() {
        let dflt: Ipv4Addr = "198.18.0.1".parse().unwrap();
        let client = Node::fake(Role::Client, "c", "127.0.0.20", "running");
        assert_eq!(
            place_swarm(std::slice::from_ref(&client), 40, None, dflt).unwrap(),
            (1, dflt)
        );
        let nodes = vec![
            client,
            swarm(1, "198.18.0.1", 300),
            swarm(3, "10.1.0.0", 10),
        ];
        // After the highest address any swarm holds; numbered above the highest swarm.
        assert_eq!(
            place_swarm(&nodes, 5, None, dflt).unwrap(),
            (4, "198.18.1.45".parse().unwrap())
        );
        assert_eq!(
            place_swarm(&nodes, 10, Some("10.1.0.10".parse().unwrap()), dflt).unwrap(),
            (4, "10.1.0.10".parse().unwrap())
        );
        for (asked, n, why) in [
            ("10.1.0.9", 2, "overlap a swarm's, 10.1.0.0–10.1.0.9"),
            ("198.18.0.0", 2, "overlap a swarm's"),
            ("127.0.0.1", 20, "include client c's, 127.0.0.20"),
            ("255.255.255.250", 7, "runs past 255.255.255.255"),
        ] {
            let e = place_swarm(&nodes, n, Some(asked.parse().unwrap()), dflt).unwrap_err();
            assert!(e.to_string().contains(why), "{asked}+{n}: {e}");
        }
        assert!(place_swarm(&nodes, 6, Some("255.255.255.250".parse().unwrap()), dflt).is_ok());
        let s = swarm(1, "198.18.0.1", 300).swarm.unwrap();
        assert_eq!(s.ip(299), "198.18.1.44".parse::<IpAddr>().unwrap());
        // A swarm to the very last address leaves no room after it, and says so.
        let full = vec![swarm(1, "255.255.255.250", 6)];
        let e = place_swarm(&full, 1, None, dflt).unwrap_err();
        assert!(e.to_string().contains("runs past"), "{e}");
        assert_eq!(swarm_of("swarm-12"), Some(12));
        assert_eq!(swarm_of("server-1"), None);
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("nope"), None);
    }
}
