//! `tsc redis …`: the cluster's Redis servers and Sentinels, and killing and starting a server
//! for drills (a primary's death is what Sentinel is for).
//!
//! What each one *is* (primary, replica of whom) changes with every failover, so it is asked of
//! each server (`ROLE`) and each Sentinel, not remembered.

use super::output::{done, exit, expect_running, CliResult, Failure, Out};
use crate::runtime::cluster::State;
use crate::runtime::{redis_index, Node, Role, Runtime};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum RedisCommand {
    /// Every Redis server and Sentinel: address, state, and what it says it is.
    List,
    /// Crash a Redis server (SIGKILL / docker kill): its data is gone; with Sentinels, a
    /// replica is promoted within seconds and everyone follows it.
    Kill {
        /// The server: `0` (`redis`), `1`, `2` (`redis-1`, `redis-2`).
        #[arg(short = 'n', long = "number")]
        number: String,
    },
    /// Start a killed server again: empty, as a replica of the current primary (with
    /// Sentinels; refused while they still name it the primary).
    Start {
        #[arg(short = 'n', long = "number")]
        number: String,
    },
}

pub async fn redis(state: &mut State, rt: &Runtime, cmd: RedisCommand, out: &Out) -> CliResult<u8> {
    let nodes = rt.nodes(state).await?;
    match cmd {
        RedisCommand::List => {
            let rows = rows(rt, state, &nodes).await;
            if out.json {
                out.json(json!({ "redis": rows }));
            } else {
                for r in &rows {
                    out.line(&format!(
                        "{:<11} {:<21} {:<8} {}",
                        r["id"].as_str().unwrap_or_default(),
                        r["addr"].as_str().unwrap_or_default(),
                        r["state"].as_str().unwrap_or_default(),
                        r["is"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
        RedisCommand::Kill { number } => {
            let node = find(&nodes, &number)?;
            expect_running(&node, true)?;
            rt.kill(state, &node).await?;
            done(out, "redis", &node, "killed");
        }
        RedisCommand::Start { number } => {
            let node = find(&nodes, &number)?;
            expect_running(&node, false)?;
            rt.start_redis(state, &node).await?;
            done(out, "redis", &node, "started");
        }
    }
    Ok(0)
}

/// One JSON row per Redis server and Sentinel: id, address, the runtime's state, and what it
/// says it is.
pub async fn rows(rt: &Runtime, state: &State, nodes: &[Node]) -> Vec<serde_json::Value> {
    let addrs = rt.redis_addrs(state);
    let all = addrs.servers.iter().chain(addrs.sentinels.iter());
    let is = rt.redis_roles(state).await;
    is.into_iter()
        .zip(all)
        .map(|((id, is), addr)| {
            let st = nodes
                .iter()
                .find(|n| n.id == id && matches!(n.role, Role::Redis | Role::Sentinel))
                .map_or("missing", |n| n.state.as_str());
            json!({ "id": id, "addr": addr.to_string(), "state": st, "is": is })
        })
        .collect()
}

/// Redis server `which` (`0`, `redis`, `redis-2`, …) among `nodes`.
fn find(nodes: &[Node], which: &str) -> CliResult<Node> {
    let i = redis_index(which)
        .ok_or_else(|| Failure::usage(format!("-n {which:?}: a Redis server is 0, 1 or 2")))?;
    let id = crate::runtime::redis_node_id(i);
    nodes
        .iter()
        .find(|n| n.role == Role::Redis && n.id == id)
        .cloned()
        .ok_or_else(|| Failure::new(exit::FAILURE, format!("this cluster has no {id}")))
}
