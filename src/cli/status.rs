//! `tsc status` and `tsc wait`: what the cluster looks like now, and waiting until its clocks
//! agree. The verdicts themselves are [`super::verdict`]'s.

use super::output::{exit, CliResult, Failure, Out};
use super::snapshot::{redis, replicas, snapshot};
use super::verdict::{bounded, health, synced, Freshness};
use super::view::{client_rows, current_leader, ms, time_source};
use crate::cache::ReportStore;
use crate::core::clock::{Clock, SystemClock};
use crate::core::protocol::Algorithm;
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::{Role, Runtime};
use serde_json::json;
use std::time::{Duration, Instant};

/// Pause between two looks while waiting.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `tsc status`: services, replicas, counters, clients, master, health; exit 6 when unhealthy.
pub async fn status(cfg: &ClusterConfig, state: &State, rt: &Runtime, out: &Out) -> CliResult<u8> {
    let nodes = rt.nodes(state).await?;
    let redis_ok = redis(rt, state).await;
    let fresh = Freshness::new(SystemClock.now_us(), cfg.client.interval());
    let (rows, master, stats) = match &redis_ok {
        Ok(store) => {
            let reports = store.live_reports().await.unwrap_or_default();
            let master = store.master().await.ok().flatten();
            let rows = client_rows(&nodes, &reports, master.as_ref(), fresh.now_us);
            (rows, master, store.server_stats().await.unwrap_or_default())
        }
        Err(_) => (client_rows(&nodes, &[], None, 0), None, vec![]),
    };
    let replicas = replicas(rt, state).await?;
    let leader = current_leader(&replicas).map(|r| r.id);
    let mut problems = health(
        &nodes,
        &rows,
        master.as_ref(),
        stats.len(),
        &replicas,
        fresh,
        cfg.server.algorithm,
    );
    if let Err(f) = &redis_ok {
        problems.insert(0, f.message.clone());
    }
    let redis_rows = super::redis::rows(rt, state, &nodes).await;
    if state.redis_replicas > 0 && !redis_rows.iter().any(|r| r["is"] == "primary") {
        problems.insert(0, "no Redis server says it is the primary".into());
    }
    // A broker cluster: whom the broker counts as running, and who leads the reports queue.
    let broker_rows = if state.broker_count() > 1 {
        rt.broker_rows(state, &nodes).await
    } else {
        vec![]
    };
    problems.extend(super::brokers::problems(&broker_rows));
    let max_err = rows
        .iter()
        .filter_map(|r| r.true_error_us.map(i64::abs))
        .max();
    let code = if problems.is_empty() {
        0
    } else {
        exit::UNHEALTHY
    };
    if out.json {
        out.json(json!({
            "runtime": rt.kind().as_str(), "cluster_id": cfg.cluster_id, "nodes": nodes,
            "redis": redis_rows,
            "brokers": broker_rows.iter().map(super::brokers::row_json).collect::<Vec<_>>(),
            "clients": rows, "master": master, "replicas": replicas, "leader": leader,
            "servers": stats.iter().map(|(id, h)| json!({"id": id, "stats": h})).collect::<Vec<_>>(),
            "max_true_error_us": max_err, "healthy": problems.is_empty(), "problems": problems,
            "time_source": time_source(&rows),
        }));
        return Ok(code);
    }
    out.line(&format!(
        "Runtime:  {} (cluster {})",
        rt.kind().as_str(),
        cfg.cluster_id
    ));
    for n in nodes
        .iter()
        .filter(|n| n.role != Role::Client && n.role != Role::Server)
    {
        let swarm = n.swarm.as_ref().map_or_else(String::new, |s| {
            format!(", {} clients from {}", s.clients, s.first_ip)
        });
        // What a Redis server or Sentinel says it is (primary, replica of …).
        let is = redis_rows
            .iter()
            .find(|r| r["id"] == n.id.as_str() && matches!(n.role, Role::Redis | Role::Sentinel))
            .and_then(|r| r["is"].as_str())
            .map_or_else(String::new, |is| format!(", {is}"))
            + &broker_rows
                .iter()
                .find(|r| r.id == n.id && n.role == Role::Rabbitmq)
                .map_or_else(String::new, super::brokers::row_detail);
        // Several Redis servers, Sentinels or broker nodes: each by its id.
        let label = match n.role {
            Role::Redis | Role::Sentinel => &n.id,
            Role::Rabbitmq if !broker_rows.is_empty() => &n.id,
            _ => n.role.as_str(),
        };
        out.line(&format!(
            "{:<11} {:<15} {:<8} {}{swarm}{is}",
            format!("{label}:"),
            n.ip,
            n.state,
            n.handle
        ));
    }
    for r in &replicas {
        out.line(&format!(
            "{:<11} {:<15} {:<8} {} epoch {}{}",
            format!("server {}:", r.id),
            r.ip,
            r.state,
            r.role,
            r.epoch.map_or_else(|| "-".into(), |e| e.to_string()),
            r.heartbeat_age_ms.map_or_else(String::new, |a| format!(
                ", heartbeat {:.1}s ago",
                a as f64 / 1000.0
            ))
        ));
    }
    for (id, h) in &stats {
        let g = |k: &str| h.get(k).copied().unwrap_or(0);
        out.line(&format!(
            "server {id}: reports_stored={} rejected={} updates_published={} master_changes={}",
            g("reports_stored"),
            g("rejected_total"),
            g("updates_published"),
            g("master_changes")
        ));
    }
    let running = rows.iter().filter(|r| r.state == "running").count();
    let reporting = rows.iter().filter(|r| r.time_us.is_some()).count();
    out.line(&format!(
        "Clients:  {} ({running} running, {reporting} reporting)",
        rows.len()
    ));
    match &master {
        Some(m) => out.line(&format!("Master:   {} ({})", m.id, m.ip)),
        None => out.line("Master:   none"),
    }
    out.line(&format!("Time:     {}", time_source(&rows).describe()));
    out.line(&format!("Sync:     max |true error| {} ms", ms(max_err)));
    if problems.is_empty() {
        out.line("Health:   OK");
    } else {
        out.line(&format!("Health:   DEGRADED: {}", problems.join("; ")));
    }
    Ok(code)
}

/// What `tsc wait` holds to its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// The true error: the client's clock minus the master's, on one host clock.
    True,
    /// ε, each client's own bound on its error (docs/PROTOCOL.md §15.6).
    Eps,
}

/// What `tsc wait` waits for.
pub struct WaitFor {
    pub alg: Algorithm,
    /// The clients' report interval: reports older than two are stale.
    pub interval: Duration,
    pub timeout: Duration,
    pub bound_ms: f64,
    pub by: Measure,
}

/// `tsc wait`: until every client follows the reference within `bound_ms`, with fresh
/// reports; exit 6 on timeout.
pub async fn wait(state: &State, rt: &Runtime, how: WaitFor, out: &Out) -> CliResult<u8> {
    let WaitFor {
        alg,
        interval,
        timeout,
        bound_ms,
        by,
    } = how;
    let t0 = Instant::now();
    let bound_us = (bound_ms * 1000.0) as i64;
    loop {
        let s = snapshot(rt, state).await;
        let verdict = match &s {
            Err(f) => Err(f.message.clone()),
            Ok(s) => {
                let fresh = Freshness::new(s.now_us, interval);
                match (by, alg) {
                    (Measure::True, _) => synced(s, alg, bound_us, fresh),
                    (Measure::Eps, Algorithm::Master) => bounded(s, bound_us, fresh),
                    (Measure::Eps, other) => {
                        return Err(Failure::new(
                            exit::USAGE,
                            format!(
                                "`--by eps` needs the master algorithm: under {} clients state no error bound",
                                other.as_str()
                            ),
                        ))
                    }
                }
            }
        };
        match verdict {
            Ok(worst) => {
                let s = s.expect("ok");
                let reference = match (&s.master, alg) {
                    (_, Algorithm::Berkeley) | (None, _) => "the clients' mean".to_string(),
                    (Some(m), _) => format!("master {} ({})", m.id, m.ip),
                };
                let (key, what) = match by {
                    Measure::True => ("max_true_error_us", ""),
                    Measure::Eps => ("max_error_us", " (error bound ε)"),
                };
                if out.json {
                    out.json(json!({"synced": true, "clients": s.rows.len(), "master": s.master, "reference": reference, key: worst, "seconds": t0.elapsed().as_secs_f64()}));
                } else {
                    out.line(&format!(
                        "Clocks synced: {} clients within {} ms of {reference}{what} after {:.1}s",
                        s.rows.len(),
                        ms(Some(worst)),
                        t0.elapsed().as_secs_f64()
                    ));
                }
                return Ok(0);
            }
            Err(why) => {
                if t0.elapsed() > timeout {
                    return Err(Failure::new(
                        exit::UNHEALTHY,
                        format!("not in sync after {}s: {why}", timeout.as_secs()),
                    ));
                }
            }
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}
