//! `tsc brokers …`: the cluster's RabbitMQ nodes, and killing and starting one for drills.
//!
//! Connections and the reports queue's leader move with every failure, so they are asked of
//! the broker (`rabbitmqctl` on a node that answers), not remembered.

use super::output::{done, exit, expect_running, CliResult, Failure, Out};
use crate::runtime::cluster::State;
use crate::runtime::{broker_index, broker_node_id, BrokerRow, Node, Role, Runtime};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum BrokersCommand {
    /// Every broker node: address, state, whether the cluster counts it as running, its
    /// connections, and which one leads the reports queue.
    List,
    /// Crash a broker node (SIGKILL / docker kill): its peers reconnect to the next node; on
    /// a cluster the reports queue keeps running on the others.
    Kill {
        /// The node: `1` (`rabbitmq`), `2`, `3` (`rabbitmq-2`, `rabbitmq-3`).
        #[arg(short = 'n', long = "number")]
        number: String,
    },
    /// Start a killed node again: it rejoins the cluster with its data.
    Start {
        #[arg(short = 'n', long = "number")]
        number: String,
    },
}

pub async fn brokers(
    state: &mut State,
    rt: &Runtime,
    cmd: BrokersCommand,
    out: &Out,
) -> CliResult<u8> {
    let nodes = rt.nodes(state).await?;
    match cmd {
        BrokersCommand::List => {
            let rows = rt.broker_rows(state, &nodes).await;
            if out.json {
                out.json(json!({ "brokers": rows.iter().map(row_json).collect::<Vec<_>>() }));
            } else {
                for r in &rows {
                    out.line(&row_line(r));
                }
            }
        }
        BrokersCommand::Kill { number } => {
            let node = find(state, &nodes, &number)?;
            expect_running(&node, true)?;
            rt.kill(state, &node).await?;
            done(out, "broker", &node, "killed");
        }
        BrokersCommand::Start { number } => {
            let node = find(state, &nodes, &number)?;
            expect_running(&node, false)?;
            rt.start_broker_node(state, &node).await?;
            done(out, "broker", &node, "started");
        }
    }
    Ok(0)
}

/// A broker node as JSON (`tsc brokers list --json`, `tsc status --json`).
pub fn row_json(r: &BrokerRow) -> serde_json::Value {
    json!({
        "id": r.id,
        "addr": r.addr.to_string(),
        "state": r.state,
        "erlang_node": r.erlang,
        "in_cluster": r.in_cluster,
        "connections": r.connections,
        "leads_reports_queue": r.leads_reports,
    })
}

/// A broker node as one table line.
pub fn row_line(r: &BrokerRow) -> String {
    format!("{:<11} {:<21} {}{}", r.id, r.addr, r.state, row_detail(r))
}

/// What the broker says of a node, for the end of a line: `, in cluster, 3 connection(s),
/// leads ts.reports`.
pub fn row_detail(r: &BrokerRow) -> String {
    let member = if r.in_cluster {
        "in cluster"
    } else {
        "not in cluster"
    };
    let leads = if r.leads_reports {
        ", leads ts.reports"
    } else {
        ""
    };
    format!(", {member}, {} connection(s){leads}", r.connections)
}

/// What is wrong with a broker cluster (`tsc status`): a running node the cluster does not
/// count, or no node leading the reports queue. A node that is down is already a problem of
/// its own (every node's state is checked).
pub fn problems(rows: &[BrokerRow]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .filter(|r| r.state == "running" && !r.in_cluster)
        .map(|r| format!("broker node {} runs but is not in the broker cluster", r.id))
        .collect();
    if !rows.is_empty() && !rows.iter().any(|r| r.leads_reports) {
        out.push(format!(
            "no broker node leads {}",
            crate::core::protocol::REPORTS_QUEUE
        ));
    }
    out
}

/// Broker node `which` (`1`, `rabbitmq`, `rabbitmq-3`, …) among `nodes`.
fn find(state: &State, nodes: &[Node], which: &str) -> CliResult<Node> {
    let n = state.broker_count();
    let i = broker_index(which)
        .filter(|i| *i < n)
        .ok_or_else(|| Failure::usage(format!("-n {which:?}: a broker node is 1 to {n}")))?;
    let id = broker_node_id(i);
    nodes
        .iter()
        .find(|x| x.role == Role::Rabbitmq && x.id == id)
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                exit::FAILURE,
                format!("{id} is the machine's broker, not one this cluster can kill"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: &str, in_cluster: bool, leads: bool) -> BrokerRow {
        BrokerRow {
            id: id.into(),
            addr: "10.0.0.3:5672".parse().unwrap(),
            state: state.into(),
            erlang: format!("rabbit@{id}"),
            in_cluster,
            connections: 2,
            leads_reports: leads,
        }
    }

    #[test]
    fn a_healthy_cluster_has_no_problems() {
        let rows = [
            row("rabbitmq", "running", true, true),
            row("rabbitmq-2", "running", true, false),
            row("rabbitmq-3", "exited", false, false),
        ];
        assert!(problems(&rows).is_empty(), "{:?}", problems(&rows));
        assert!(problems(&[]).is_empty());
    }

    #[test]
    fn a_stray_node_and_a_leaderless_queue_are_problems() {
        let rows = [
            row("rabbitmq", "running", true, false),
            row("rabbitmq-2", "running", false, false),
        ];
        let p = problems(&rows);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("rabbitmq-2") && p[0].contains("not in the broker cluster"));
        assert!(p[1].contains("ts.reports"));
    }

    #[test]
    fn lines_say_membership_connections_and_leadership() {
        let l = row_line(&row("rabbitmq-2", "running", true, true));
        assert!(l.starts_with("rabbitmq-2 "), "{l}");
        assert!(
            l.ends_with(", in cluster, 2 connection(s), leads ts.reports"),
            "{l}"
        );
        let j = row_json(&row("rabbitmq", "exited", false, false));
        assert_eq!(j["in_cluster"], false);
        assert_eq!(j["addr"], "10.0.0.3:5672");
    }
}
