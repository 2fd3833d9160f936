//! `tsc clients …`: list, inspect, add, remove and tail clients.

use super::output::{exit, CliResult, Failure, Out};
use super::snapshot::snapshot;
use super::tail::{tail_file, TailArgs};
use super::view::{find_by_prefix, ms, ClientRow};
use crate::core::clock::format_us;
use crate::runtime::cluster::{ClusterConfig, RuntimeKind, State};
use crate::runtime::node::MAX_CLIENTS;
use crate::runtime::{Node, Role, Runtime};
use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum ClientsCommand {
    /// List clients (ids; -v: a table with clocks and offsets).
    List {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Show one client.
    Get {
        #[arg(short = 'c', long = "client")]
        client: String,
    },
    /// Show the master client.
    GetMaster {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Start N more clients.
    Add {
        #[arg(short = 'n', long = "number", default_value_t = 1)]
        number: usize,
    },
    /// Stop and remove a client.
    Remove {
        #[arg(short = 'c', long = "client")]
        client: String,
    },
    /// Show a client's log.
    Tail(TailArgs),
}

/// Starts `n` clients, one line each.
pub async fn add_clients(
    rt: &Runtime,
    state: &mut State,
    n: usize,
    out: &Out,
) -> CliResult<Vec<Node>> {
    let what = if rt.kind() == RuntimeKind::Docker {
        "containers"
    } else {
        "processes"
    };
    out.line(&format!("Starting {n} client {what}.."));
    let mut started = Vec::new();
    for _ in 0..n {
        let node = rt.start_client(state).await?;
        out.line(&format!("Started new client at {}", node.ip));
        started.push(node);
    }
    Ok(started)
}

fn client_table(rows: &[ClientRow]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "ID",
        "IP",
        "STATE",
        "TIME (UTC)",
        "MASTER",
        "OFFSET ms",
        "TRUE ERR ms",
        "AGE s",
    ]);
    for r in rows {
        t.add_row([
            r.id.clone(),
            r.ip.to_string(),
            r.state.clone(),
            r.time_us.map_or_else(|| "-".into(), format_us),
            if r.is_master {
                "(master)".into()
            } else {
                r.master_id.map_or_else(|| "-".into(), |m| m.to_string())
            },
            ms(r.offset_to_master_us),
            ms(r.true_error_us),
            r.last_report_age_ms
                .map_or_else(|| "-".into(), |a| format!("{:.1}", a as f64 / 1000.0)),
        ]);
    }
    t
}

fn detail(r: &ClientRow) -> String {
    format!(
        "Client ID: {}, IP Address {}, State {}, Time {}, Master Client ID {}{}, Offset to master {} ms, True error {} ms, Last report {} ms ago",
        r.id,
        r.ip,
        r.state,
        r.time_us.map_or_else(|| "-".into(), format_us),
        r.master_id.map_or_else(|| "None".into(), |m| m.to_string()),
        if r.is_master { " (this client)" } else { "" },
        ms(r.offset_to_master_us),
        ms(r.true_error_us),
        r.last_report_age_ms.map_or_else(|| "-".into(), |a| a.to_string()),
    )
}

/// `tsc clients …`.
pub async fn clients(
    cfg: &ClusterConfig,
    state: &mut State,
    rt: &Runtime,
    cmd: ClientsCommand,
    out: &Out,
) -> CliResult<u8> {
    match cmd {
        ClientsCommand::List { verbose } => {
            let s = snapshot(rt, state).await?;
            if out.json {
                out.json(json!({"clients": s.rows, "master": s.master}));
            } else {
                if verbose {
                    out.line(&format!("Found {} clients in cluster:", s.rows.len()));
                    out.line(&client_table(&s.rows).to_string());
                } else {
                    let shown: Vec<&ClientRow> =
                        s.rows.iter().filter(|r| r.state != "silent").collect();
                    out.line(&format!("Found {} clients in cluster:", shown.len()));
                    for r in shown {
                        out.line(&r.id);
                    }
                }
            }
        }
        ClientsCommand::Get { client } => {
            let s = snapshot(rt, state).await?;
            let r = find_by_prefix(&s.rows, |r| &r.id, &client)?;
            if out.json {
                let report = s.reports.iter().find(|x| x.report.id.to_string() == r.id);
                out.json(json!({"client": r, "last_report": report}));
            } else {
                out.line(&detail(r));
            }
        }
        ClientsCommand::GetMaster { verbose } => {
            let s = snapshot(rt, state).await?;
            let Some(m) = &s.master else {
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    "no master elected yet (no client has reported)",
                ));
            };
            let row = s.rows.iter().find(|r| r.id == m.id.to_string());
            if out.json {
                out.json(json!({"master": m, "client": row}));
            } else if verbose {
                match row {
                    Some(r) => out.line(&detail(r)),
                    None => out.line(&format!(
                        "Master Client ID: {} (IP {}; no live report)",
                        m.id, m.ip
                    )),
                }
            } else {
                out.line(&format!("Master Client ID: {}", m.id));
            }
        }
        ClientsCommand::Add { number } => {
            if number == 0 || number > MAX_CLIENTS {
                return Err(Failure::usage(format!(
                    "-n must be between 1 and {MAX_CLIENTS}"
                )));
            }
            let nodes = add_clients(rt, state, number, out).await?;
            state.save(&cfg.home)?;
            if out.json {
                out.json(json!({"started": nodes}));
            }
        }
        ClientsCommand::Remove { client } => {
            let nodes = rt.nodes(state).await?;
            let clients: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Client).collect();
            let node = (*find_by_prefix(&clients, |n| &n.id, &client)?).clone();
            out.line(&format!("Attempting to remove client with ID {}", node.id));
            rt.remove(state, &node).await?;
            if out.json {
                out.json(json!({"removed": node}));
            } else {
                out.line(&format!("Client at IP {} removed successfully", node.ip));
            }
        }
        ClientsCommand::Tail(a) => {
            let nodes = rt.nodes(state).await?;
            let clients: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Client).collect();
            let id = find_by_prefix(&clients, |n| &n.id, &a.client)?.id.clone();
            tail_file(&cfg.client_log_dir.join(id), &a.opts).await?;
        }
    }
    Ok(0)
}
