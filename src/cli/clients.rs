//! `tsc clients …`: list, inspect, add, remove and tail clients.

use super::operator::command;
use super::output::{exit, CliResult, Failure, Out};
use super::snapshot::snapshot;
use super::tail::{tail_file, TailArgs};
use super::view::{find_by_prefix, ms, ClientRow};
use crate::core::clock::{format_us, parse_rfc3339};
use crate::core::protocol::TimeChange;
use crate::runtime::cluster::{ClusterConfig, RuntimeKind, State};
use crate::runtime::node::MAX_CLIENTS;
use crate::runtime::{Node, Role, Runtime};
use crate::settings::MAX_SWARM;
use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use futures_util::StreamExt;
use serde_json::json;
use std::net::Ipv4Addr;

#[derive(Subcommand, Debug)]
pub enum ClientsCommand {
    /// List clients (ids; -v: a table with clocks and offsets), at most --limit of them.
    List {
        #[arg(short, long)]
        verbose: bool,
        /// Show at most this many clients (in address order), then say how many were left out.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
        limit: usize,
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
    /// Start N more clients; with --swarm, N clients in one process (or container).
    Add {
        #[arg(short = 'n', long = "number", default_value_t = 1)]
        number: usize,
        /// Run the N clients in one `ts-client --swarm` process: a few KB each instead of a
        /// process (or container) each, the same protocol on the wire. Named `swarm-K`, and
        /// removed as one.
        #[arg(long)]
        swarm: bool,
        /// A swarm's first client address (client i advertises it + i). Default: right after
        /// the cluster's other swarms, from 198.18.0.1 (RFC 2544's benchmarking range).
        #[arg(long, requires = "swarm")]
        first_ip: Option<Ipv4Addr>,
    },
    /// Stop and remove a client, or a whole swarm (`-c swarm-K`).
    Remove {
        #[arg(short = 'c', long = "client")]
        client: String,
    },
    /// Show a client's log.
    Tail(TailArgs),
    /// Set a client's clock: to a time, or shifted by some seconds. The leader relays it,
    /// signed; a follower comes back to the master within seconds, a master takes the whole
    /// cluster with it.
    SetTime {
        #[arg(short = 'c', long = "client")]
        client: String,
        /// An RFC 3339 time, e.g. 2026-11-27T12:00:00Z.
        #[arg(long, conflicts_with = "shift", required_unless_present = "shift")]
        time: Option<String>,
        /// Seconds to move the clock by (negative: back).
        #[arg(long, allow_hyphen_values = true)]
        shift: Option<f64>,
    },
}

/// Asks the leader to set client `client`'s (an id or a unique prefix of a live client) time;
/// the leader's answer. The one code path of `tsc clients set-time` and the dashboard.
pub async fn set_time(
    cfg: &ClusterConfig,
    rt: &Runtime,
    state: &State,
    client: &str,
    change: TimeChange,
) -> CliResult<serde_json::Value> {
    let s = snapshot(rt, state).await?;
    let live: Vec<&ClientRow> = s.rows.iter().filter(|r| r.time_us.is_some()).collect();
    let id = find_by_prefix(&live, |r| &r.id, client)?.id.clone();
    let body = match change {
        TimeChange::Absolute { time_us } => json!({ "time_us": time_us }),
        TimeChange::Shift { shift_us } => json!({ "shift_us": shift_us }),
    };
    command(cfg, rt, state, &format!("/clients/{id}/time"), body).await
}

/// What `tsc clients set-time` (and the dashboard) says when the leader took the command.
pub fn set_time_message(change: TimeChange, answer: &serde_json::Value) -> String {
    let what = match change {
        TimeChange::Absolute { time_us } => format!("set to {}", format_us(time_us)),
        TimeChange::Shift { shift_us } => format!("shifted by {:+.6} s", shift_us as f64 / 1e6),
    };
    format!(
        "Client {} {what} (command {})",
        answer["client_id"].as_str().unwrap_or("?"),
        answer["op_id"].as_str().unwrap_or("?")
    )
}

/// The change `--time` or `--shift` asks for (also the dashboard's form).
pub fn time_change(time: Option<&str>, shift: Option<f64>) -> CliResult<TimeChange> {
    match (time, shift) {
        (Some(t), None) => parse_rfc3339(t)
            .map(|time_us| TimeChange::Absolute { time_us })
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--time {t:?} is not an RFC 3339 time (2026-11-27T12:00:00Z)"
                ))
            }),
        (None, Some(s)) if s.is_finite() && s.abs() <= MAX_SHIFT_SECS => Ok(TimeChange::Shift {
            shift_us: (s * 1e6).round() as i64,
        }),
        (None, Some(s)) => Err(Failure::usage(format!(
            "--shift {s} is out of range (at most ±{MAX_SHIFT_SECS} s)"
        ))),
        _ => Err(Failure::usage("give --time or --shift")),
    }
}

/// Clients `tsc clients list` shows unless `--limit` says otherwise: a table of 10,000 helps
/// nobody, and the count says how many there are.
pub const DEFAULT_LIST_LIMIT: usize = 1000;

/// Largest shift accepted (s): a year.
pub const MAX_SHIFT_SECS: f64 = 366.0 * 86_400.0;

/// Whether `n` more clients fit beside `existing` nodes that take an address of the cluster's
/// /24 (a lone client, a swarm's container): checked before any is started, so that a request
/// too large starts none.
pub fn check_room(existing: usize, n: usize) -> CliResult<()> {
    let left = MAX_CLIENTS.saturating_sub(existing);
    if n > left {
        return Err(Failure::usage(format!(
            "this cluster's nodes take {existing} of its {MAX_CLIENTS} client addresses (one \
             each) and leave room for {left} more; {n} asked"
        )));
    }
    Ok(())
}

/// Starts `n` clients, one line each, if all of them fit.
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
    // A lone client takes an address, and so does a swarm's container on Docker.
    let docker = rt.kind() == RuntimeKind::Docker;
    let existing = rt
        .nodes(state)
        .await?
        .iter()
        .filter(|n| n.role == Role::Client || (docker && n.role == Role::Swarm))
        .count();
    check_room(existing, n)?;
    out.line(&format!("Starting {n} client {what}.."));
    let mut started = Vec::new();
    for _ in 0..n {
        let node = rt.start_client(state).await?;
        out.line(&started_message(&node));
        started.push(node);
        // Starting a local process never waits: let a ctrl-c (tsc bootstrap) be seen.
        tokio::task::yield_now().await;
    }
    Ok(started)
}

/// Starts a swarm of `n` clients from `first` (or after the other swarms).
pub async fn add_swarm(
    rt: &Runtime,
    state: &mut State,
    n: usize,
    first: Option<Ipv4Addr>,
    out: &Out,
) -> CliResult<Node> {
    if n == 0 || n > MAX_SWARM {
        return Err(Failure::usage(format!(
            "a swarm has between 1 and {MAX_SWARM} clients (-n)"
        )));
    }
    let node = rt.start_swarm(state, n, first).await.map_err(|e| match e {
        // Its addresses overlap others, or run out: the request's to change.
        crate::Error::Config(m) => Failure::usage(m),
        e => e.into(),
    })?;
    out.line(&started_message(&node));
    Ok(node)
}

/// A node that runs clients: a lone client, or a swarm.
fn runs_clients(n: &&Node) -> bool {
    matches!(n.role, Role::Client | Role::Swarm)
}

/// What tsc (and the dashboard) says of a client it started.
pub fn started_message(node: &Node) -> String {
    match &node.swarm {
        Some(s) => format!(
            "Started {} of {} clients at {}–{}",
            node.id,
            s.clients,
            s.first_ip,
            s.ip(s.clients.saturating_sub(1))
        ),
        None => format!("Started new client at {}", node.ip),
    }
}

/// What tsc (and the dashboard) says of a client it removed.
pub fn removed_message(node: &Node) -> String {
    match &node.swarm {
        Some(s) => format!(
            "{} and its {} clients removed successfully",
            node.id, s.clients
        ),
        None => format!("Client at IP {} removed successfully", node.ip),
    }
}

/// Stops and removes client `client` (an id or a unique prefix of one, or a swarm's name), and
/// expires its reports so that views drop them and, if one was master, the leader elects
/// another at once; the node removed.
pub async fn remove_client(rt: &Runtime, state: &mut State, client: &str) -> CliResult<Node> {
    let nodes = rt.nodes(state).await?;
    let clients: Vec<&Node> = nodes.iter().filter(runs_clients).collect();
    let node = match find_by_prefix(&clients, |n| &n.id, client) {
        Ok(n) => (*n).clone(),
        Err(e) => {
            return Err(match swarm_holding(&nodes, client) {
                Some(s) => Failure::usage(format!(
                    "client {client} is one of {id}'s; a swarm is removed as one: tsc clients \
                     remove -c {id}",
                    id = s.id
                )),
                None => e,
            })
        }
    };
    rt.remove(state, &node).await?;
    // Their reports would keep them "live" (and master, if one was) for the TTL: expire them
    // now. If Redis cannot be reached, the TTL does the same later.
    if let Ok(store) = super::snapshot::redis(rt, state).await {
        let ids: Vec<uuid::Uuid> = node
            .client_ids()
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect();
        let expired = futures_util::stream::iter(ids)
            .map(|id| {
                let store = store.clone();
                async move { store.expire_report(&id).await }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        if let Some(Err(e)) = expired.into_iter().find(|r| r.is_err()) {
            tracing::debug!(error = %e, "cannot expire the removed clients' reports");
        }
    }
    Ok(node)
}

/// The swarm that runs client `client` (an id or a prefix of one), if one does.
fn swarm_holding<'a>(nodes: &'a [Node], client: &str) -> Option<&'a Node> {
    nodes.iter().find(|n| {
        n.swarm
            .as_ref()
            .is_some_and(|s| s.ids.iter().any(|id| id.to_string().starts_with(client)))
    })
}

fn client_table(rows: &[&ClientRow]) -> Table {
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
        "ε ms",
        "AGE s",
        "NTP",
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
            ms(r.max_error_us.map(|e| e as i64)),
            r.last_report_age_ms
                .map_or_else(|| "-".into(), |a| format!("{:.1}", a as f64 / 1000.0)),
            ntp_cell(r),
        ]);
    }
    t
}

/// A client's stratum and reference, `s11 10.0.0.20` (`s16`: not synchronized).
fn ntp_cell(r: &ClientRow) -> String {
    match (r.stratum, &r.reference) {
        (Some(s), Some(re)) => format!("s{s} {re}"),
        (Some(s), None) => format!("s{s}"),
        _ => "-".into(),
    }
}

fn detail(r: &ClientRow) -> String {
    format!(
        "Client ID: {}, IP Address {}, State {}, Time {}, Master Client ID {}{}, Offset to master {} ms, True error {} ms, Bound ε {} ms, Last report {} ms ago, NTP {}",
        r.id,
        r.ip,
        r.state,
        r.time_us.map_or_else(|| "-".into(), format_us),
        r.master_id.map_or_else(|| "None".into(), |m| m.to_string()),
        if r.is_master { " (this client)" } else { "" },
        ms(r.offset_to_master_us),
        ms(r.true_error_us),
        ms(r.max_error_us.map(|e| e as i64)),
        r.last_report_age_ms.map_or_else(|| "-".into(), |a| a.to_string()),
        ntp_cell(r),
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
        ClientsCommand::List { verbose, limit } => {
            let s = snapshot(rt, state).await?;
            let shown: Vec<&ClientRow> = s
                .rows
                .iter()
                .filter(|r| verbose || out.json || r.state != "silent")
                .collect();
            let total = shown.len();
            let page = &shown[..total.min(limit)];
            if out.json {
                out.json(
                    json!({"clients": page, "total": total, "limit": limit, "master": s.master}),
                );
            } else {
                out.line(&format!("Found {total} clients in cluster:"));
                if verbose {
                    out.line(&client_table(page).to_string());
                } else {
                    for r in page {
                        out.line(&r.id);
                    }
                }
                if total > page.len() {
                    out.line(&format!(
                        "... and {} more (--limit {limit}; in address order)",
                        total - page.len()
                    ));
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
        ClientsCommand::Add {
            number,
            swarm: true,
            first_ip,
        } => {
            let node = add_swarm(rt, state, number, first_ip, out).await?;
            state.save(&cfg.home)?;
            if out.json {
                out.json(json!({"started": [node]}));
            }
        }
        ClientsCommand::Add { number, .. } => {
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
            out.line(&format!("Attempting to remove client with ID {client}"));
            let node = remove_client(rt, state, &client).await?;
            if out.json {
                out.json(json!({"removed": node}));
            } else {
                out.line(&removed_message(&node));
            }
        }
        ClientsCommand::Tail(a) => {
            let nodes = rt.nodes(state).await?;
            let clients: Vec<&Node> = nodes.iter().filter(runs_clients).collect();
            // A swarm logs for all its clients, to one file: a client of it shows that.
            let node = match find_by_prefix(&clients, |n| &n.id, &a.client) {
                Ok(n) => *n,
                Err(e) => swarm_holding(&nodes, &a.client).ok_or(e)?,
            };
            let file = match &node.swarm {
                Some(s) => crate::runtime::swarm_log_name(s.first_ip),
                None => node.id.clone(),
            };
            tail_file(&cfg.client_log_dir.join(file), &a.opts).await?;
        }
        ClientsCommand::SetTime {
            client,
            time,
            shift,
        } => {
            let change = time_change(time.as_deref(), shift)?;
            let answer = set_time(cfg, rt, state, &client, change).await?;
            if out.json {
                out.json(answer);
            } else {
                out.line(&set_time_message(change, &answer));
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_added_only_when_all_fit() {
        assert!(check_room(0, MAX_CLIENTS).is_ok());
        assert!(check_room(26, MAX_CLIENTS - 26).is_ok());
        let e = check_room(26, MAX_CLIENTS + 1).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("room for 208 more"), "{}", e.message);
        assert!(check_room(MAX_CLIENTS, 1).is_err());
        assert!(
            check_room(MAX_CLIENTS + 3, 1).is_err(),
            "more than fit already: none more"
        );
    }

    #[test]
    fn time_changes_from_flags() {
        assert_eq!(
            time_change(Some("1970-01-01T00:00:01Z"), None).unwrap(),
            TimeChange::Absolute { time_us: 1_000_000 }
        );
        assert_eq!(
            time_change(None, Some(-2.5)).unwrap(),
            TimeChange::Shift {
                shift_us: -2_500_000
            }
        );
        for (t, s) in [
            (Some("yesterday"), None),
            (None, Some(f64::NAN)),
            (None, Some(1e12)),
        ] {
            assert_eq!(
                time_change(t, s).unwrap_err().code,
                exit::USAGE,
                "{t:?} {s:?}"
            );
        }
    }
}
