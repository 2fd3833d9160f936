//! The cluster's RabbitMQ: one broker, or (`tsc bootstrap --brokers N`, `broker.nodes`) a
//! RabbitMQ cluster of N nodes, on either runtime.
//!
//! Nodes are numbered 1 to N: `rabbitmq` (1, the one a single-broker cluster has), then
//! `rabbitmq-2`, `rabbitmq-3`. Every peer gets every node's URL, rotated so that peers start on
//! different nodes ([`crate::broker::rotate_urls`]) and fail over to the next. On a cluster the
//! reports queue is a quorum queue and the RPC queue a transient one
//! ([`crate::broker::QueueType::Quorum`]); users, permissions and exchanges are cluster-wide.
//!
//! Docker: nodes at host `.3`, `.9`, `.254`, named `rabbit@<address>` (Erlang long names: no
//! DNS needed), with a shared Erlang cookie derived from the cluster's credentials. Local: one
//! node is a vhost on the machine's broker, as before; a cluster is N nodes of the cluster's own
//! (own names, ports, data under `/var/lib/rabbitmq/time-sync-<cluster>/`), run as the
//! `rabbitmq` user and recorded in `state.json`.

use super::cluster::{check_brokers, ClusterConfig, LocalBroker, LocalNode, State};
use super::node::{Node, Role};
use super::services::{
    apply_broker_setup, broker_setup, free_port, node_command, node_env, prepare_node_dir,
    rabbitmqctl, rabbitmqctl_input, wait_port, RABBITMQ_PORT,
};
use super::{broker_users, declare_topology, DockerRuntime, LocalRuntime, Progress, Runtime};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Host numbers of broker nodes 1, 2, 3 in the Docker subnet.
pub const BROKER_HOSTS: [u8; super::cluster::MAX_BROKERS] = [3, 9, 254];
/// AMQP port of a broker container.
pub const AMQP_PORT: u16 = 5672;

/// Node id of broker node `i` (0-based): `rabbitmq`, `rabbitmq-2`, `rabbitmq-3`.
pub fn broker_node_id(i: usize) -> String {
    if i == 0 {
        "rabbitmq".into()
    } else {
        format!("rabbitmq-{}", i + 1)
    }
}

/// The 0-based index of broker node `id` (`rabbitmq` or `1` is 0, `rabbitmq-3` or `3` is 2).
pub fn broker_index(id: &str) -> Option<usize> {
    let n: usize = match id {
        "rabbitmq" => 1,
        _ => id.strip_prefix("rabbitmq-").unwrap_or(id).parse().ok()?,
    };
    n.checked_sub(1)
}

/// The Erlang cookie the nodes of a Docker cluster of brokers share: derived from the operator's
/// broker password, so it is as secret as that and needs no file of its own.
pub fn erlang_cookie(cfg: &ClusterConfig) -> String {
    let mut h = Sha256::new();
    h.update(b"time-sync erlang cookie\0");
    h.update(cfg.credentials.rabbitmq_operator_password.as_bytes());
    hex::encode(h.finalize())[..32].to_ascii_uppercase()
}

/// The Erlang node that a process id printed by `rabbitmqctl` lives on:
/// `<rabbit@10.0.0.3.1701.1234.0>` is on `rabbit@10.0.0.3`.
pub fn pid_node(pid: &str) -> Option<&str> {
    let inner = pid.trim().strip_prefix('<')?.strip_suffix('>')?;
    let mut it = inner.rsplitn(4, '.');
    let (_, _, _) = (it.next()?, it.next()?, it.next()?);
    it.next()
}

/// What the broker says of each of its nodes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BrokerView {
    /// Erlang node name → AMQP connections on it.
    pub connections: HashMap<String, usize>,
    /// The Erlang node that leads `ts.reports` (a quorum queue), or hosts it (classic).
    pub reports_leader: Option<String>,
    /// Erlang nodes the cluster counts as running.
    pub running: Vec<String>,
}

impl BrokerView {
    /// Reads `rabbitmqctl` output: `list_connections pid`, `list_queues name pid` (a quorum
    /// queue's pid is its leader's), `eval 'rabbit_nodes:all_running().'`.
    pub fn parse(connections: &str, queues: &str, running: &str) -> BrokerView {
        let mut v = BrokerView::default();
        for node in connections.lines().filter_map(pid_node) {
            *v.connections.entry(node.to_string()).or_default() += 1;
        }
        v.reports_leader = queues.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == crate::core::protocol::REPORTS_QUEUE)
                .then(|| pid_node(it.next()?).map(str::to_string))
                .flatten()
        });
        v.running = running
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|n| n.trim().trim_matches('\'').to_string())
            .filter(|n| !n.is_empty())
            .collect();
        v
    }
}

/// One broker node as `tsc status` and `tsc brokers list` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerRow {
    pub id: String,
    pub addr: SocketAddr,
    /// The runtime's state (`running`, `exited`, …).
    pub state: String,
    /// Its Erlang node name.
    pub erlang: String,
    /// Whether the cluster counts it as running.
    pub in_cluster: bool,
    pub connections: usize,
    pub leads_reports: bool,
}

impl Runtime {
    /// Each broker node: address and Erlang node name.
    pub fn broker_addrs(&self, state: &State) -> Vec<(SocketAddr, String)> {
        match self {
            Runtime::Docker(d) => d.broker_addrs(state),
            Runtime::Local(l) => l.broker_addrs(state),
        }
    }

    /// Starts the cluster's RabbitMQ: `nodes` nodes (1 as before; more, a cluster), its
    /// users and the shared topology.
    pub(super) async fn start_brokers(
        &self,
        state: &mut State,
        nodes: usize,
        p: Progress<'_>,
    ) -> Result<()> {
        check_brokers(nodes)?;
        state.brokers = nodes;
        match self {
            Runtime::Docker(d) => d.start_broker(state, p).await,
            Runtime::Local(l) if nodes == 1 => l.start_broker(state, p).await,
            Runtime::Local(l) => l.start_broker_cluster(state, p).await,
        }
    }

    /// `rabbitmqctl args` on the first broker node that answers.
    pub async fn broker_ctl(&self, state: &State, args: &[&str]) -> Result<String> {
        let mut last = Error::Runtime("no broker node".into());
        for i in 0..state.broker_count() {
            let r = match self {
                Runtime::Docker(d) => d.broker_ctl(i, args).await,
                Runtime::Local(l) => l.broker_ctl(state, i, args),
            };
            match r {
                Ok(out) => return Ok(out),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// What the broker says of its nodes (connections, the reports queue's leader, who runs).
    pub async fn broker_view(&self, state: &State) -> Result<BrokerView> {
        let vhost = match self {
            Runtime::Docker(_) => "/".to_string(),
            Runtime::Local(l) => l.vhost(),
        };
        let conns = self
            .broker_ctl(
                state,
                &["-q", "list_connections", "--no-table-headers", "pid"],
            )
            .await?;
        let queues = self
            .broker_ctl(
                state,
                &[
                    "-q",
                    "list_queues",
                    "-p",
                    &vhost,
                    "--no-table-headers",
                    "name",
                    "pid",
                ],
            )
            .await?;
        let running = self
            .broker_ctl(state, &["-q", "eval", "rabbit_nodes:all_running()."])
            .await?;
        Ok(BrokerView::parse(&conns, &queues, &running))
    }

    /// Every broker node with its state, connections and whether it leads the reports queue.
    /// Connections on the machine's broker (a local single-node cluster) are everyone's.
    pub async fn broker_rows(&self, state: &State, nodes: &[Node]) -> Vec<BrokerRow> {
        let view = self.broker_view(state).await.unwrap_or_default();
        self.broker_addrs(state)
            .into_iter()
            .enumerate()
            .map(|(i, (addr, erlang))| {
                let id = broker_node_id(i);
                let st = nodes
                    .iter()
                    .find(|n| n.role == Role::Rabbitmq && n.id == id)
                    .map_or("missing".to_string(), |n| n.state.clone());
                BrokerRow {
                    in_cluster: view.running.contains(&erlang),
                    connections: view.connections.get(&erlang).copied().unwrap_or(0),
                    leads_reports: view.reports_leader.as_deref() == Some(erlang.as_str()),
                    id,
                    addr,
                    state: st,
                    erlang,
                }
            })
            .collect()
    }

    /// Starts broker node `node` again (killed or stopped); it rejoins the cluster with the
    /// data it had, and waits until it answers.
    pub async fn start_broker_node(&self, state: &mut State, node: &Node) -> Result<()> {
        let i = broker_index(&node.id)
            .filter(|i| *i < state.broker_count())
            .ok_or_else(|| Error::NotFound(format!("no broker node {}", node.id)))?;
        self.start(state, node).await?;
        let (addr, _) = self.broker_addrs(state)[i].clone();
        super::services::wait_port(&node.id, addr.ip(), addr.port(), &mut |_| {}).await?;
        match self {
            Runtime::Docker(d) => d.broker_ctl(i, &["-q", "await_startup"]).await,
            Runtime::Local(l) => l.broker_ctl(state, i, &["-q", "await_startup"]),
        }
        .map(|_| ())
    }
}

impl DockerRuntime {
    pub(super) fn broker_addrs(&self, state: &State) -> Vec<(SocketAddr, String)> {
        let n = state.broker_count();
        (0..n)
            .map(|i| {
                let ip = self.ip(BROKER_HOSTS[i]);
                // One broker keeps the name it always had (its container's host name).
                let erlang = if n == 1 {
                    "rabbit@ts-rabbitmq-rabbitmq".to_string()
                } else {
                    format!("rabbit@{ip}")
                };
                (SocketAddr::new(ip, AMQP_PORT), erlang)
            })
            .collect()
    }

    fn broker_container(&self, i: usize) -> String {
        format!("ts-{}-rabbitmq-{}", self.cfg.cluster_id, broker_node_id(i))
    }

    /// `rabbitmqctl args` inside broker node `i`'s container.
    pub(super) async fn broker_ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let cmd: Vec<&str> = std::iter::once("rabbitmqctl")
            .chain(args.iter().copied())
            .collect();
        self.exec(&self.broker_container(i), &cmd).await
    }

    /// Starts the broker's nodes (one container each), joins them into one cluster, replaces
    /// `guest` with the cluster's users and declares the topology.
    pub(super) async fn start_broker(&self, state: &State, p: Progress<'_>) -> Result<()> {
        let base = self.cfg.docker.base_image.clone();
        let addrs = self.broker_addrs(state);
        let n = addrs.len();
        let server = "/usr/lib/rabbitmq/bin/rabbitmq-server".to_string();
        for (i, (at, erlang)) in addrs.iter().enumerate() {
            p(&format!(
                "Starting Rabbitmq service container {}..",
                broker_node_id(i)
            ));
            let (cmd, env) = if n == 1 {
                (vec![server.clone()], vec![])
            } else {
                // The cookie goes from the environment into the file Erlang reads, by a shell
                // builtin: never on a command line (`ps` on the host shows the container's).
                let script = "rm -f \"$HOME/.erlang.cookie\"; umask 077; \
                              printf %s \"$TS_ERLANG_COOKIE\" > \"$HOME/.erlang.cookie\"; \
                              unset TS_ERLANG_COOKIE; exec \"$0\"";
                (
                    vec!["sh".into(), "-c".into(), script.into(), server.clone()],
                    vec![
                        format!("RABBITMQ_NODENAME={erlang}"),
                        "RABBITMQ_USE_LONGNAME=true".into(),
                        format!("TS_ERLANG_COOKIE={}", erlang_cookie(&self.cfg)),
                    ],
                )
            };
            self.run(
                Role::Rabbitmq,
                &broker_node_id(i),
                at.ip(),
                &base,
                cmd,
                env,
                // As root, rabbitmq-server ignores SIGTERM and `docker stop` must kill it.
                Some("rabbitmq"),
                vec![],
                vec![],
            )
            .await?;
        }
        for (i, (at, _)) in addrs.iter().enumerate() {
            wait_port(&broker_node_id(i), at.ip(), at.port(), p).await?;
            self.broker_ctl(i, &["-q", "await_startup"]).await?;
        }
        for i in 1..n {
            p(&format!("Joining {} to {}", broker_node_id(i), addrs[0].1));
            for args in [
                vec!["-q", "stop_app"],
                vec!["-q", "join_cluster", addrs[0].1.as_str()],
                vec!["-q", "start_app"],
            ] {
                self.broker_ctl(i, &args).await?;
            }
        }
        // The broker starts with `guest`, an administrator that can log in only from inside
        // its container. The cluster's three users replace it (users are cluster-wide).
        let container = self.broker_container(0);
        let users = broker_users(&self.cfg, "");
        apply_broker_setup(broker_setup("/", &users), |ctl| {
            let container = container.clone();
            async move {
                let cmd: Vec<&str> = ["rabbitmqctl", "-q"]
                    .into_iter()
                    .chain(ctl.args.iter().map(String::as_str))
                    .collect();
                self.exec_input(&container, &cmd, ctl.input.as_deref())
                    .await
            }
        })
        .await?;
        self.broker_ctl(0, &["-q", "delete_user", "guest"]).await?;
        declare_topology(&self.endpoints(state)).await?;
        p(&format!(
            "RabbitMQ ({n} node{}) ready for the cluster's client, server and operator users",
            if n == 1 {
                ""
            } else {
                "s, reports in a quorum queue"
            }
        ));
        Ok(())
    }
}

impl LocalRuntime {
    /// Where the cluster's own broker nodes keep their data (the `rabbitmq` user's home, which
    /// it can reach whatever tsc's home is).
    pub(super) fn broker_data(&self) -> PathBuf {
        PathBuf::from(format!(
            "/var/lib/rabbitmq/time-sync-{}",
            self.cfg.cluster_id
        ))
    }

    pub(super) fn broker_addrs(&self, state: &State) -> Vec<(SocketAddr, String)> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if state.local.broker_nodes.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let short = host.trim().split('.').next().unwrap_or_default();
            return vec![(
                SocketAddr::new(lo, RABBITMQ_PORT),
                format!("rabbit@{short}"),
            )];
        }
        state
            .local
            .broker_nodes
            .iter()
            .map(|b| (SocketAddr::new(lo, b.port), b.name.clone()))
            .collect()
    }

    /// `rabbitmqctl args` against broker node `i` (the machine's broker for a single node).
    pub(super) fn broker_ctl(&self, state: &State, i: usize, args: &[&str]) -> Result<String> {
        let node = state.local.broker_nodes.get(i).map(|b| b.name.as_str());
        rabbitmqctl(node, args)
    }

    /// Starts `state.brokers` RabbitMQ nodes of the cluster's own, joins them into one
    /// cluster, gives it the cluster's vhost and users (no `guest`) and declares the topology.
    pub(super) async fn start_broker_cluster(
        &self,
        state: &mut State,
        p: Progress<'_>,
    ) -> Result<()> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Runtime(
                "a local cluster of brokers runs its nodes as the rabbitmq user: run tsc as root"
                    .into(),
            ));
        }
        let n = state.brokers;
        p(&format!(
            "Starting {n} RabbitMQ nodes of the cluster's own.."
        ));
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < 2 * n {
            ports.insert(free_port()?);
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        for i in 0..n {
            let id = broker_node_id(i);
            let name = format!("ts-{}-{}@localhost", self.cfg.cluster_id, i + 1);
            let (port, dist_port) = (ports[2 * i], ports[2 * i + 1]);
            let dir = self.broker_data().join(&id);
            // Recorded before it starts, so that a bootstrap cut short leaves no node behind
            // (teardown stops the VM its data directory names).
            state.local.broker_nodes.push(LocalBroker {
                name: name.clone(),
                port,
                dist_port,
            });
            state.save(&self.cfg.home)?;
            prepare_node_dir(&dir)?;
            let env = node_env(&name, port, dist_port, &dir);
            let command = node_command();
            let launcher = self.spawn(&id, Path::new(&command[0]), &command[1..], &env, None)?;
            let mut rec = LocalNode {
                role: Role::Rabbitmq,
                id,
                ip: lo,
                pid: launcher,
                command,
                env,
            };
            rec.pid = super::local::broker_vm(&rec)?;
            state.local.nodes.push(rec);
            state.save(&self.cfg.home)?;
        }
        let nodes = state.local.broker_nodes.clone();
        for (i, b) in nodes.iter().enumerate() {
            wait_port(&broker_node_id(i), lo, b.port, p).await?;
            rabbitmqctl(Some(&b.name), &["-q", "await_startup"])?;
        }
        for (i, b) in nodes.iter().enumerate().skip(1) {
            p(&format!(
                "Joining {} to {}",
                broker_node_id(i),
                nodes[0].name
            ));
            for args in [
                vec!["-q", "stop_app"],
                vec!["-q", "join_cluster", nodes[0].name.as_str()],
                vec!["-q", "start_app"],
            ] {
                rabbitmqctl(Some(&b.name), &args)?;
            }
        }
        let first = nodes[0].name.clone();
        let setup = broker_setup(&self.vhost(), &self.users());
        apply_broker_setup(setup, |cmd| {
            let first = first.clone();
            async move {
                let args: Vec<&str> = std::iter::once("-q")
                    .chain(cmd.args.iter().map(String::as_str))
                    .collect();
                rabbitmqctl_input(Some(&first), &args, cmd.input.as_deref())
            }
        })
        .await?;
        // `guest` may log in from loopback, which is everyone here.
        rabbitmqctl(Some(&first), &["-q", "delete_user", "guest"])?;
        declare_topology(&self.endpoints(state)).await?;
        p(&format!(
            "RabbitMQ cluster of {n} nodes ready (reports in a quorum queue), vhost {}",
            self.vhost()
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_nodes_are_numbered_from_one() {
        assert_eq!(broker_node_id(0), "rabbitmq");
        assert_eq!(broker_node_id(2), "rabbitmq-3");
        for (id, i) in [("rabbitmq", 0), ("1", 0), ("rabbitmq-2", 1), ("3", 2)] {
            assert_eq!(broker_index(id), Some(i), "{id}");
        }
        assert_eq!(broker_index("0"), None);
        assert_eq!(broker_index("redis"), None);
    }

    #[test]
    fn the_view_counts_connections_per_node_and_finds_the_reports_leader() {
        let conns = "<rabbit@10.0.0.3.1701.1234.0>\n<rabbit@10.0.0.9.1.2.3>\n\
                     <rabbit@10.0.0.3.1701.99.0>\n";
        let queues = "ts.rpc\t<rabbit@10.0.0.3.1.2.0>\nts.reports\t<rabbit@10.0.0.9.7.8.0>\n";
        let running = "['rabbit@10.0.0.3','rabbit@10.0.0.9']\n";
        let v = BrokerView::parse(conns, queues, running);
        assert_eq!(v.connections["rabbit@10.0.0.3"], 2);
        assert_eq!(v.connections["rabbit@10.0.0.9"], 1);
        assert_eq!(v.reports_leader.as_deref(), Some("rabbit@10.0.0.9"));
        assert_eq!(v.running, ["rabbit@10.0.0.3", "rabbit@10.0.0.9"]);
        assert_eq!(pid_node("<ts-1@localhost.5.6.7>"), Some("ts-1@localhost"));
        assert_eq!(pid_node("garbage"), None);
    }

    #[test]
    fn the_cookie_is_derived_and_not_the_password() {
        let cfg = ClusterConfig::generate(std::path::Path::new("/tmp"));
        let c = erlang_cookie(&cfg);
        assert_eq!(c.len(), 32);
        assert_eq!(c, erlang_cookie(&cfg));
        assert!(!c.contains(&cfg.credentials.rabbitmq_operator_password));
    }
}
