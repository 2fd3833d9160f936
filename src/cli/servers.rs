//! `tsc servers …`: the server replicas, their roles in the leader election, and shutting them
//! off, crashing, pausing and rebooting them to simulate failures.
//!
//! Facts come from the runtime (does the container or process run, is it paused) and from each
//! replica's record in Redis (`ts:replica:<id>`: role, epoch, leader, heartbeat), joined by a
//! pure function ([`server_rows`]) so the joining is tested without a cluster.

use super::operator::{command, command_at, leader_api};
use super::output::{exit, CliResult, Failure, Out};
use super::snapshot::replicas;
use super::view::{current_leader, ServerRow};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::node::replica_of;
use crate::runtime::{Node, Role, Runtime, MAX_REPLICAS};
use crate::settings::ServerSettings;
use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::json;

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
    /// Start a leader election now (Bully), on the leader unless -s names another replica.
    Elect {
        #[arg(short = 's', long = "server")]
        server: Option<String>,
    },
    /// Run a Berkeley round now (the leader polls every client and sends adjustments; only
    /// under the `berkeley` algorithm).
    BerkeleyRound,
}

/// What `tsc servers stop|kill|start|pause|resume|remove` (and the dashboard) do to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Kill,
    Start,
    Pause,
    Resume,
    Remove,
}

impl Action {
    /// The action named `s` (`stop`, `kill`, ...).
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "stop" => Action::Stop,
            "kill" => Action::Kill,
            "start" => Action::Start,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "remove" => Action::Remove,
            _ => return None,
        })
    }

    /// The past tense, for messages.
    pub fn done(self) -> &'static str {
        match self {
            Action::Stop => "stopped",
            Action::Kill => "killed",
            Action::Start => "started",
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Remove => "removed",
        }
    }
}

/// Does `action` to replica `server` (`3` or `server-3`), refusing what its state does not
/// allow; the node it acted on.
pub async fn act(rt: &Runtime, state: &mut State, action: Action, server: &str) -> CliResult<Node> {
    let node = find(&rt.nodes(state).await?, server)?;
    let refuse = |why: String| Err(Failure::new(exit::FAILURE, why));
    match action {
        Action::Start if node.running() => {
            return refuse(format!("{} is already running", node.id))
        }
        Action::Start if node.state == "paused" => {
            return refuse(format!(
                "{} is paused; `tsc servers resume -s {server}`",
                node.id
            ))
        }
        Action::Pause if !node.running() => {
            return refuse(format!("{} is {}, not running", node.id, node.state))
        }
        Action::Resume if node.state != "paused" => {
            return refuse(format!("{} is {}, not paused", node.id, node.state))
        }
        _ => {}
    }
    match action {
        Action::Stop => rt.stop(state, &node).await?,
        Action::Kill => rt.kill(state, &node).await?,
        Action::Start => rt.start(state, &node).await?,
        Action::Pause => rt.pause(state, &node).await?,
        Action::Resume => rt.resume(state, &node).await?,
        Action::Remove => rt.remove(state, &node).await?,
    }
    Ok(node)
}

/// Asks replica `server` (default: the leader) to start an election; its answer.
pub async fn elect(
    cfg: &ClusterConfig,
    rt: &Runtime,
    state: &State,
    server: Option<&str>,
) -> CliResult<serde_json::Value> {
    let (id, addr) = match server {
        None => leader_api(rt, state).await?,
        Some(s) => {
            let id = replica_of(&find(&rt.nodes(state).await?, s)?.id).unwrap_or_default();
            let row = replicas(rt, state).await?.into_iter().find(|r| r.id == id);
            let addr = row.and_then(|r| r.http).filter(|h| !h.is_empty());
            let addr = addr.ok_or_else(|| {
                Failure::new(
                    exit::FAILURE,
                    format!("replica {id} has not published its API address (is it running?)"),
                )
            })?;
            (id, addr)
        }
    };
    command_at(cfg, id, &addr, "/election", json!({})).await
}

/// Asks the leader to run a Berkeley round now; its answer.
pub async fn berkeley_round(
    cfg: &ClusterConfig,
    rt: &Runtime,
    state: &State,
) -> CliResult<serde_json::Value> {
    command(cfg, rt, state, "/berkeley/round", json!({})).await
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
        tokio::task::yield_now().await; // see add_clients
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
            let rows = replicas(rt, state).await?;
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
        ServersCommand::Stop { server } => acted(rt, state, Action::Stop, &server, out).await?,
        ServersCommand::Kill { server } => acted(rt, state, Action::Kill, &server, out).await?,
        ServersCommand::Start { server } => acted(rt, state, Action::Start, &server, out).await?,
        ServersCommand::Pause { server } => acted(rt, state, Action::Pause, &server, out).await?,
        ServersCommand::Resume { server } => acted(rt, state, Action::Resume, &server, out).await?,
        ServersCommand::Remove { server } => acted(rt, state, Action::Remove, &server, out).await?,
        ServersCommand::Elect { server } => {
            let answer = elect(cfg, rt, state, server.as_deref()).await?;
            if out.json {
                out.json(answer);
            } else {
                out.line(&elect_message(&answer));
            }
        }
        ServersCommand::BerkeleyRound => {
            let answer = berkeley_round(cfg, rt, state).await?;
            if out.json {
                out.json(answer);
            } else {
                out.line(&round_message(&answer));
            }
        }
    }
    Ok(0)
}

async fn acted(
    rt: &Runtime,
    state: &mut State,
    action: Action,
    server: &str,
    out: &Out,
) -> CliResult<()> {
    let node = act(rt, state, action, server).await?;
    done(out, action.done(), &node);
    Ok(())
}

fn done(out: &Out, what: &str, node: &Node) {
    if out.json {
        out.json(json!({ what: node }));
    } else {
        out.line(&acted_message(what, node));
    }
}

/// What tsc (and the dashboard) says of a replica it acted on (`what`: `stopped`, ...).
pub fn acted_message(what: &str, node: &Node) -> String {
    format!("Server {} at {} {what}", node.id, node.ip)
}

/// What tsc (and the dashboard) says when a replica started an election.
pub fn elect_message(answer: &serde_json::Value) -> String {
    let who = answer["replica"]
        .as_u64()
        .map_or_else(|| "?".into(), |r| r.to_string());
    format!("Replica {who} started an election (follow it with `tsc servers list` or `tsc events -f --kind leader_elected`)")
}

/// What tsc (and the dashboard) says when a Berkeley round started.
pub fn round_message(answer: &serde_json::Value) -> String {
    let n = answer["round"]
        .as_u64()
        .map_or_else(|| "?".into(), |r| r.to_string());
    format!("Berkeley round {n} started")
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

    #[test]
    fn find_takes_a_number_or_a_node_id() {
        let nodes = [Node::fake(Role::Server, "server-2", "10.0.0.11", "running")];
        assert_eq!(find(&nodes, "2").unwrap().id, "server-2");
        assert_eq!(find(&nodes, "server-2").unwrap().id, "server-2");
        let e = find(&nodes, "3").unwrap_err();
        assert_eq!(e.code, exit::NOT_FOUND);
        assert!(find(&nodes, "").is_err());
    }
}
