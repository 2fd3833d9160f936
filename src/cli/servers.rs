//! `tsc servers …`: the server replicas, their roles in the leader election, and shutting them
//! off, crashing, pausing and rebooting them to simulate failures.
//!
//! Facts come from the runtime (does the container or process run, is it paused) and from each
//! replica's record in Redis (`ts:replica:<id>`: role, epoch, leader, heartbeat), joined by a
//! pure function ([`server_rows`]) so the joining is tested without a cluster.

use super::output::{exit, CliResult, Failure, Out};
use super::snapshot::redis;
use crate::core::clock::{Clock, SystemClock};
use crate::core::protocol::ReplicaRecord;
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::node::replica_of;
use crate::runtime::{Node, Role, Runtime, MAX_REPLICAS};
use crate::settings::ServerSettings;
use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;
use serde_json::json;
use std::net::IpAddr;

/// A replica record older than this (µs) is a replica that stopped talking.
pub const STALE_RECORD_US: i64 = 5_000_000;

#[derive(Subcommand, Debug)]
pub enum ServersCommand {
    /// List the server replicas: id, address, role, epoch, heartbeat age (-v: more).
    List {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Start N more replicas (the next free ids; a higher id outranks, so the newest leads).
    Add {
        #[arg(short = 'n', long = "number", default_value_t = 1)]
        number: u64,
        /// Workers per new replica (default: cluster.toml's server.workers).
        #[arg(short = 'w', long = "workers")]
        workers: Option<usize>,
    },
    /// Shut a replica off (SIGTERM; a leader resigns), keeping it for `start`.
    Stop {
        #[arg(short = 's', long = "server")]
        server: String,
    },
    /// Crash a replica (SIGKILL / docker kill: no resignation), keeping it for `start`.
    Kill {
        #[arg(short = 's', long = "server")]
        server: String,
    },
    /// Boot a stopped replica again; it rejoins with an election.
    Start {
        #[arg(short = 's', long = "server")]
        server: String,
    },
    /// Freeze a replica (docker pause / SIGSTOP): alive but silent, as a stalled machine.
    Pause {
        #[arg(short = 's', long = "server")]
        server: String,
    },
    /// Thaw a paused replica.
    Resume {
        #[arg(short = 's', long = "server")]
        server: String,
    },
    /// Stop and remove a replica for good.
    Remove {
        #[arg(short = 's', long = "server")]
        server: String,
    },
}

/// One replica as `tsc servers list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerRow {
    pub id: u64,
    pub ip: IpAddr,
    /// Runtime state: `running`, `paused`, `exited`, ...
    pub state: String,
    /// Election role from its record (`leader`, `follower`, `candidate`); `down` when not
    /// running, `silent` when running without a fresh record, `starting` without any.
    pub role: String,
    pub epoch: Option<u64>,
    pub leader: Option<u64>,
    pub heartbeat_age_ms: Option<i64>,
    pub priority: Option<u64>,
    pub server_id: Option<uuid::Uuid>,
    pub http: Option<String>,
    pub elections: Option<u64>,
}

/// Joins server nodes with replica records.
pub fn server_rows(nodes: &[Node], records: &[ReplicaRecord], now_us: i64) -> Vec<ServerRow> {
    let mut rows: Vec<ServerRow> = nodes
        .iter()
        .filter(|n| n.role == Role::Server)
        .filter_map(|n| {
            let id = replica_of(&n.id)?;
            let rec = records.iter().find(|r| r.id == id);
            let age = rec.map(|r| (now_us - r.heartbeat_at_us) / 1000);
            let role = match (n.state.as_str(), rec) {
                ("running", Some(r)) if now_us - r.heartbeat_at_us <= STALE_RECORD_US => {
                    r.role.as_str().to_string()
                }
                ("running", Some(_)) => "silent".into(),
                ("running", None) => "starting".into(),
                ("paused", _) => "paused".into(),
                _ => "down".into(),
            };
            Some(ServerRow {
                id,
                ip: n.ip,
                state: n.state.clone(),
                role,
                epoch: rec.map(|r| r.epoch),
                leader: rec.and_then(|r| r.leader),
                heartbeat_age_ms: age,
                priority: rec.map(|r| r.priority),
                server_id: rec.map(|r| r.server_id),
                http: rec.map(|r| r.http.clone()),
                elections: rec.map(|r| r.elections),
            })
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    rows
}

/// The replica that leads now, by the fresh records: the leader with the highest epoch.
pub fn current_leader(rows: &[ServerRow]) -> Option<&ServerRow> {
    rows.iter()
        .filter(|r| r.role == "leader")
        .max_by_key(|r| r.epoch)
}

/// Finds a server node by `3` or `server-3`.
fn find(nodes: &[Node], arg: &str) -> CliResult<Node> {
    let want = arg.strip_prefix("server-").unwrap_or(arg);
    nodes
        .iter()
        .filter(|n| n.role == Role::Server)
        .find(|n| replica_of(&n.id).is_some_and(|id| id.to_string() == want))
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                exit::NOT_FOUND,
                format!("no server replica {arg:?} in this cluster (see `tsc servers list`)"),
            )
        })
}

/// The cluster's server settings (cluster.toml's `[server]`), with `-w` if given, checked as
/// `ts-server` checks them.
pub fn settings(cfg: &ClusterConfig, workers: Option<usize>) -> CliResult<ServerSettings> {
    let mut s = cfg.server.clone();
    if let Some(w) = workers {
        s.workers = w;
    }
    s.validate()
        .map_err(|e| Failure::usage(format!("-w/--workers: {e}")))?;
    Ok(s)
}

/// Starts `n` replicas with the lowest free ids.
pub async fn add_servers(
    rt: &Runtime,
    state: &mut State,
    n: u64,
    settings: &ServerSettings,
    out: &Out,
) -> CliResult<Vec<Node>> {
    let nodes = rt.nodes(state).await?;
    let taken: Vec<u64> = nodes
        .iter()
        .filter(|n| n.role == Role::Server)
        .filter_map(|n| replica_of(&n.id))
        .collect();
    let free: Vec<u64> = (1..=MAX_REPLICAS)
        .filter(|i| !taken.contains(i))
        .take(n as usize)
        .collect();
    if (free.len() as u64) < n {
        return Err(Failure::usage(format!(
            "a cluster has at most {MAX_REPLICAS} server replicas ({} exist)",
            taken.len()
        )));
    }
    let mut started = Vec::new();
    for id in free {
        let node = rt.start_server(state, settings, id).await?;
        out.line(&format!(
            "Started server replica {id} at {} ({} workers)",
            node.ip, settings.workers
        ));
        started.push(node);
    }
    Ok(started)
}

/// `tsc servers …`.
pub async fn servers(
    cfg: &ClusterConfig,
    state: &mut State,
    rt: &Runtime,
    cmd: ServersCommand,
    out: &Out,
) -> CliResult<u8> {
    match cmd {
        ServersCommand::List { verbose } => {
            let rows = rows(rt, state).await?;
            if out.json {
                out.json(json!({"servers": rows, "leader": current_leader(&rows).map(|r| r.id)}));
                return Ok(0);
            }
            out.line(&format!(
                "Found {} server replicas on the {} runtime:",
                rows.len(),
                rt.kind().as_str()
            ));
            out.line(&table(&rows, verbose).to_string());
        }
        ServersCommand::Add { number, workers } => {
            if number == 0 {
                return Err(Failure::usage("-n must be at least 1"));
            }
            let settings = settings(cfg, workers)?;
            let nodes = add_servers(rt, state, number, &settings, out).await?;
            state.save(&cfg.home)?;
            if out.json {
                out.json(json!({"started": nodes}));
            }
        }
        ServersCommand::Stop { server } => {
            let node = find(&rt.nodes(state).await?, &server)?;
            rt.stop(state, &node).await?;
            done(out, "stopped", &node);
        }
        ServersCommand::Kill { server } => {
            let node = find(&rt.nodes(state).await?, &server)?;
            rt.kill(state, &node).await?;
            done(out, "killed", &node);
        }
        ServersCommand::Start { server } => {
            let node = find(&rt.nodes(state).await?, &server)?;
            if node.running() {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("{} is already running", node.id),
                ));
            }
            if node.state == "paused" {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("{} is paused; `tsc servers resume -s {server}`", node.id),
                ));
            }
            rt.start(state, &node).await?;
            done(out, "started", &node);
        }
        ServersCommand::Pause { server } => {
            let node = find(&rt.nodes(state).await?, &server)?;
            if !node.running() {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("{} is {}, not running", node.id, node.state),
                ));
            }
            rt.pause(state, &node).await?;
            done(out, "paused", &node);
        }
        ServersCommand::Resume { server } => {
            let node = find(&rt.nodes(state).await?, &server)?;
            if node.state != "paused" {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("{} is {}, not paused", node.id, node.state),
                ));
            }
            rt.resume(state, &node).await?;
            done(out, "resumed", &node);
        }
        ServersCommand::Remove { server } => {
            let node = find(&rt.nodes(state).await?, &server)?;
            rt.remove(state, &node).await?;
            done(out, "removed", &node);
        }
    }
    Ok(0)
}

fn done(out: &Out, what: &str, node: &Node) {
    if out.json {
        out.json(json!({ what: node }));
    } else {
        out.line(&format!("Server {} at {} {what}", node.id, node.ip));
    }
}

/// The rows `tsc servers list` shows (also used by `status` and `server tail`).
pub async fn rows(rt: &Runtime, state: &State) -> CliResult<Vec<ServerRow>> {
    let nodes = rt.nodes(state).await?;
    let records = match redis(rt, state).await {
        Ok(store) => store.replicas().await.unwrap_or_default(),
        // Without Redis the runtime's view still says what runs.
        Err(_) => Vec::new(),
    };
    Ok(server_rows(&nodes, &records, SystemClock.now_us()))
}

fn table(rows: &[ServerRow], verbose: bool) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    let mut header = vec![
        "ID",
        "IP",
        "STATE",
        "ROLE",
        "EPOCH",
        "LEADER",
        "HEARTBEAT AGE s",
    ];
    if verbose {
        header.extend(["PRIORITY", "ELECTIONS", "API", "SERVER ID"]);
    }
    t.set_header(header);
    let opt = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    for r in rows {
        let mut row = vec![
            r.id.to_string(),
            r.ip.to_string(),
            r.state.clone(),
            r.role.clone(),
            opt(r.epoch),
            opt(r.leader),
            r.heartbeat_age_ms
                .map_or_else(|| "-".into(), |a| format!("{:.1}", a as f64 / 1000.0)),
        ];
        if verbose {
            row.extend([
                opt(r.priority),
                opt(r.elections),
                r.http
                    .clone()
                    .map_or_else(|| "-".into(), |h| format!("http://{h}")),
                r.server_id.map_or_else(|| "-".into(), |s| s.to_string()),
            ]);
        }
        t.add_row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::ReplicaRole;

    fn node(id: &str, ip: &str, state: &str) -> Node {
        Node {
            role: Role::Server,
            id: id.into(),
            ip: ip.parse().unwrap(),
            state: state.into(),
            handle: String::new(),
        }
    }

    fn record(id: u64, role: ReplicaRole, epoch: u64, heartbeat_at_us: i64) -> ReplicaRecord {
        ReplicaRecord {
            id,
            priority: 0,
            server_id: uuid::Uuid::from_u128(id.into()),
            role,
            epoch,
            leader: Some(3),
            electing: false,
            elections: 1,
            http: format!("10.0.0.{}:8470", 9 + id),
            heartbeat_at_us,
            started_at_us: 0,
        }
    }

    #[test]
    fn rows_join_runtime_state_and_fresh_records() {
        let now = 100_000_000;
        let nodes = [
            node("server-10", "10.0.0.19", "running"),
            node("server-1", "10.0.0.10", "exited"),
            node("server-2", "10.0.0.11", "running"),
            node("server-3", "10.0.0.12", "paused"),
            node("server-4", "10.0.0.13", "running"),
            Node {
                role: Role::Client,
                ..node("server-5", "10.0.0.20", "running")
            },
        ];
        let records = [
            record(1, ReplicaRole::Leader, 4, now - 60_000_000),
            record(2, ReplicaRole::Follower, 7, now - 200_000),
            record(3, ReplicaRole::Leader, 6, now - 4_000_000),
            record(4, ReplicaRole::Leader, 7, now - STALE_RECORD_US - 1),
            record(10, ReplicaRole::Leader, 7, now - 100_000),
        ];
        let rows = server_rows(&nodes, &records, now);
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 10], "numeric order, servers only");
        let roles: Vec<&str> = rows.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(roles, ["down", "follower", "paused", "silent", "leader"]);
        assert_eq!(rows[1].heartbeat_age_ms, Some(200));
        assert_eq!(current_leader(&rows).map(|r| r.id), Some(10));
        assert!(server_rows(&nodes[..1], &[], now)[0].epoch.is_none());
        assert_eq!(server_rows(&nodes[2..3], &[], now)[0].role, "starting");
    }

    #[test]
    fn find_takes_a_number_or_a_node_id() {
        let nodes = [node("server-2", "10.0.0.11", "running")];
        assert_eq!(find(&nodes, "2").unwrap().id, "server-2");
        assert_eq!(find(&nodes, "server-2").unwrap().id, "server-2");
        let e = find(&nodes, "3").unwrap_err();
        assert_eq!(e.code, exit::NOT_FOUND);
        assert!(find(&nodes, "").is_err());
    }
}
