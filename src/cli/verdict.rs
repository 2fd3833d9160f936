//! tsc's verdicts on a cluster: is it healthy (`tsc status`), are its clocks in sync
//! (`tsc wait`). Pure functions of what was read, so every rule is tested without a cluster.

use super::snapshot::Snapshot;
use super::view::{current_leader, ms, ClientRow, ServerRow};
use crate::core::protocol::{Algorithm, MasterRecord};
use crate::runtime::{Node, Role};

/// When a look was taken, and how old a report may be: a report older than two report
/// intervals is stale (its client, or the path from it to Redis, is stuck).
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub now_us: i64,
    pub stale_after_ms: i64,
}

impl Freshness {
    /// At `now_us`, for clients that report every `interval`.
    pub fn new(now_us: i64, interval: std::time::Duration) -> Self {
        Freshness {
            now_us,
            stale_after_ms: 2 * interval.as_millis() as i64,
        }
    }

    /// Why `r`'s last report cannot be trusted as a picture of now, if it cannot.
    fn stale(&self, r: &ClientRow) -> Option<String> {
        let age = r.last_report_age_ms.filter(|a| *a > self.stale_after_ms)?;
        Some(format!(
            "client {}'s last report is {:.1} s old (stale after {:.1} s)",
            r.id,
            age as f64 / 1000.0,
            self.stale_after_ms as f64 / 1000.0
        ))
    }
}

/// At most this many clients are named in one problem; the rest are counted.
const NAMED: usize = 3;

/// One problem for many clients: each named up to [`NAMED`], then a count.
fn many(problems: Vec<String>, what: &str) -> Vec<String> {
    if problems.len() <= NAMED {
        return problems;
    }
    let n = problems.len() - NAMED;
    let mut out: Vec<String> = problems.into_iter().take(NAMED).collect();
    out.push(format!("{n} more clients {what}"));
    out
}

/// Problems that make the cluster unhealthy; empty when all is well.
pub fn health(
    nodes: &[Node],
    rows: &[ClientRow],
    master: Option<&MasterRecord>,
    servers_reporting: usize,
    replicas: &[ServerRow],
    fresh: Freshness,
    alg: Algorithm,
) -> Vec<String> {
    let mut problems = Vec::new();
    for role in [Role::Redis, Role::Sentinel, Role::Rabbitmq, Role::Server] {
        let n: Vec<&Node> = nodes.iter().filter(|n| n.role == role).collect();
        // Sentinels run only beside Redis replicas.
        if n.is_empty() && role != Role::Sentinel {
            problems.push(format!("no {} node", role.as_str()));
        }
        for x in n.iter().filter(|x| !x.running()) {
            problems.push(format!("{} {} is {}", role.as_str(), x.id, x.state));
        }
    }
    if servers_reporting == 0 {
        problems.push("no server has written its counters to Redis".into());
    }
    // A swarm that stopped takes thousands of clients with it: name a few, count the rest.
    let (mut down, mut quiet) = (Vec::new(), Vec::new());
    for r in rows.iter().filter(|r| r.state != "external") {
        if r.state != "running" {
            down.push(format!("client {} is {}", r.id, r.state));
        } else if r.time_us.is_none() {
            quiet.push(format!("client {} has not reported", r.id));
        }
    }
    problems.extend(many(down, "are not running"));
    problems.extend(many(quiet, "have not reported"));
    let running = rows.iter().filter(|r| r.state == "running");
    let (fresh_rows, stale_rows): (Vec<&ClientRow>, Vec<&ClientRow>) =
        running.partition(|r| fresh.stale(r).is_none());
    let stale: Vec<String> = stale_rows.iter().filter_map(|r| fresh.stale(r)).collect();
    problems.extend(many(stale, "have stale reports"));
    // Whom a client follows is news only from a fresh report of a client that had time to hear
    // of the master: past its third report, and received two intervals after the election.
    let heard_since = |r: &ClientRow, since_us: i64| {
        r.reports_seq.is_some_and(|n| n > 3)
            && r.last_report_age_ms.is_some_and(|age| {
                fresh.now_us - age * 1000 > since_us + fresh.stale_after_ms * 1000
            })
    };
    match master {
        None if !rows.is_empty() => problems.push("no master elected".into()),
        None => {}
        // Berkeley's master only labels a client: nobody follows it, and no hand-over is due.
        Some(_) if alg == Algorithm::Berkeley => {}
        Some(m) => {
            let ignoring: Vec<String> = fresh_rows
                .iter()
                .filter(|r| !r.is_master && r.master_id != Some(m.id))
                .filter(|r| heard_since(r, m.elected_at_us))
                .map(|r| match r.master_id {
                    Some(o) => format!("client {} follows {o}, not master {}", r.id, m.id),
                    None => format!("client {} follows no master (master is {})", r.id, m.id),
                })
                .collect();
            problems.extend(many(ignoring, "do not follow the master"));
            let lowest = fresh_rows
                .iter()
                .min_by_key(|r| crate::core::master_election::ip_rank(&r.ip));
            if let Some(low) = lowest {
                if !low.is_master
                    && low.master_id == Some(m.id)
                    && low
                        .stratum
                        .is_some_and(|s| s < crate::core::ntp::UNSYNCED_STRATUM)
                {
                    problems.push(format!(
                        "master {} ({}) is not the lowest address: client {} ({}) is, and is synced to it (the leader hands the role over once their clocks agree, checking every {} s)",
                        m.id,
                        m.ip,
                        low.id,
                        low.ip,
                        crate::core::master_election::HANDOVER_SCAN.as_secs()
                    ));
                }
            }
        }
    }
    match current_leader(replicas) {
        None if replicas.iter().any(|r| r.state == "running") => {
            problems.push("no server replica leads".into());
        }
        Some(l) => {
            // Clients refuse every epoch below the one they follow: a leader under them leads
            // nobody (the epoch counter went backwards).
            let above: Vec<String> = fresh_rows
                .iter()
                .filter_map(|r| Some((r, r.epoch?, l.epoch?)))
                .filter(|(_, followed, leading)| followed > leading)
                .map(|(r, followed, leading)| {
                    format!(
                        "client {} ignores the leader: it follows epoch {followed}, the leader's is {leading}",
                        r.id
                    )
                })
                .collect();
            problems.extend(many(above, "ignore the leader"));
        }
        None => {}
    }
    problems
}

/// `Ok(worst |true error|)` when every running client follows the reference within
/// `bound_us`: the master, or for `berkeley` (which has none) the mean of all clocks.
/// A report older than `fresh` allows is no evidence of sync: the client, or the path from it
/// to Redis, may be stuck.
pub fn synced(
    s: &Snapshot,
    alg: Algorithm,
    bound_us: i64,
    fresh: Freshness,
) -> Result<i64, String> {
    let clients = running_and_fresh(s, fresh)?;
    let worst = if alg == Algorithm::Berkeley {
        let offsets: Vec<i64> = clients
            .iter()
            .map(|r| {
                s.reports
                    .iter()
                    .find(|x| x.report.id.to_string() == r.id)
                    .and_then(|x| x.report.true_offset_us)
                    .ok_or(format!("client {} has not reported yet", r.id))
            })
            .collect::<Result<_, _>>()?;
        let mean = offsets.iter().sum::<i64>() / offsets.len() as i64;
        offsets.iter().map(|o| (o - mean).abs()).max().unwrap_or(0)
    } else {
        largest_among_followers(s, &clients, |r| {
            r.true_error_us
                .map(i64::abs)
                .ok_or(format!("client {} has no error figure yet", r.id))
        })?
    };
    at_most(worst, bound_us, "worst error")
}

/// The largest `figure` of `clients`, each of which must follow the master.
fn largest_among_followers(
    s: &Snapshot,
    clients: &[&ClientRow],
    figure: impl Fn(&ClientRow) -> Result<i64, String>,
) -> Result<i64, String> {
    let m = s.master.as_ref().ok_or("no master yet")?;
    let mut worst = 0;
    for r in clients {
        if r.master_id != Some(m.id) {
            return Err(format!("client {} does not follow the master yet", r.id));
        }
        worst = worst.max(figure(r)?);
    }
    Ok(worst)
}

/// `Ok(worst)` if it is at most `bound_us`, else an error naming `what`.
fn at_most(worst: i64, bound_us: i64, what: &str) -> Result<i64, String> {
    if worst > bound_us {
        return Err(format!(
            "{what} {} ms exceeds {} ms",
            ms(Some(worst)),
            ms(Some(bound_us))
        ));
    }
    Ok(worst)
}

/// Every client of the cluster, running, each with a fresh report; else why not.
fn running_and_fresh(s: &Snapshot, fresh: Freshness) -> Result<Vec<&ClientRow>, String> {
    let clients: Vec<&ClientRow> = s.rows.iter().filter(|r| r.state == "running").collect();
    if clients.is_empty() {
        return Err("no running clients".into());
    }
    let expected: usize = s.nodes.iter().map(|n| n.client_ids().len()).sum();
    if expected != clients.len() {
        return Err("some clients are not running".into());
    }
    if let Some(why) = clients.iter().find_map(|r| fresh.stale(r)) {
        return Err(why);
    }
    Ok(clients)
}

/// `Ok(largest ε)` when every running client follows the master and states an ε
/// (`max_error_us`, docs/PROTOCOL.md §15.6) of at most `bound_us`, with fresh reports: what can
/// be waited for when the true error is not knowable (clients on other hosts).
pub fn bounded(s: &Snapshot, bound_us: i64, fresh: Freshness) -> Result<i64, String> {
    let clients = running_and_fresh(s, fresh)?;
    let worst = largest_among_followers(s, &clients, |r| {
        r.max_error_us
            .map(|e| e as i64)
            .ok_or(format!("client {} states no error bound (ε) yet", r.id))
    })?;
    at_most(worst, bound_us, "largest error bound ε")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::view::client_rows;
    use crate::core::protocol::{StoredReport, TimeReport};
    use uuid::Uuid;

    const NOW: i64 = 100_000_000;

    fn fresh() -> Freshness {
        Freshness::new(NOW, std::time::Duration::from_secs(1))
    }

    fn services() -> Vec<Node> {
        vec![
            Node::fake(Role::Redis, "redis", "10.0.0.2", "running"),
            Node::fake(Role::Rabbitmq, "rabbitmq", "10.0.0.3", "running"),
            Node::fake(Role::Server, "server-1", "10.0.0.10", "running"),
        ]
    }

    fn client(n: u128, ip: &str) -> (Uuid, Node) {
        let id = Uuid::from_u128(n);
        (id, Node::fake(Role::Client, &id.to_string(), ip, "running"))
    }

    /// A report of client `id` following `master`, `true_off` µs from the host clock.
    fn report(id: Uuid, ip: &str, master: Uuid, true_off: i64) -> StoredReport {
        StoredReport {
            report: TimeReport {
                master_id: Some(master),
                true_offset_us: Some(true_off),
                ..TimeReport::new(id, ip.parse().unwrap(), NOW + true_off, 3)
            },
            received_at_us: NOW - 200_000,
        }
    }

    /// Replica 1, running, in `role` at `epoch`.
    fn replica(role: &str, epoch: u64) -> ServerRow {
        ServerRow {
            id: 1,
            ip: "10.0.0.10".parse().unwrap(),
            state: "running".into(),
            role: role.into(),
            epoch: Some(epoch),
            leader: None,
            heartbeat_age_ms: Some(100),
            priority: None,
            server_id: None,
            http: None,
            elections: None,
        }
    }

    fn record(id: Uuid, ip: &str) -> MasterRecord {
        MasterRecord {
            id,
            ip: ip.parse().unwrap(),
            elected_at_us: 0,
            epoch: 1,
        }
    }

    fn snap(
        nodes: Vec<Node>,
        reports: Vec<StoredReport>,
        master: Option<MasterRecord>,
    ) -> Snapshot {
        let rows = client_rows(&nodes, &reports, master.as_ref(), NOW);
        Snapshot {
            nodes,
            rows,
            master,
            reports,
            now_us: NOW,
        }
    }

    #[test]
    fn health_names_every_problem() {
        let (m, mn) = client(1, "10.0.0.20");
        let (a, mut an) = client(2, "10.0.0.21");
        let mut nodes = services();
        nodes.extend([mn.clone(), an.clone()]);
        let reports = vec![report(m, "10.0.0.20", m, 0), report(a, "10.0.0.21", m, 40)];
        let s = snap(nodes.clone(), reports.clone(), Some(record(m, "10.0.0.20")));
        let replica = |role: &str| replica(role, 1);
        assert_eq!(
            health(
                &s.nodes,
                &s.rows,
                s.master.as_ref(),
                1,
                &[replica("leader")],
                fresh(),
                Algorithm::Master
            ),
            Vec::<String>::new()
        );
        // No counters written, no master, a client exited, a service down, one not reporting.
        an.state = "exited".into();
        let (b, bn) = client(3, "10.0.0.22");
        let mut broken = services();
        broken[1].state = "exited".into();
        broken.retain(|n| n.role != Role::Server);
        broken.extend([mn, an, bn]);
        let s = snap(broken, reports, None);
        let problems = health(
            &s.nodes,
            &s.rows,
            s.master.as_ref(),
            0,
            &[replica("follower")],
            fresh(),
            Algorithm::Master,
        );
        for want in [
            "no server replica leads",
            "no server node",
            "rabbitmq rabbitmq is exited",
            "no server has written its counters",
            &format!("client {a} is exited"),
            &format!("client {b} has not reported"),
            "no master elected",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{want:?} not in {problems:?}"
            );
        }
    }

    /// What a table of live reports cannot show by itself: reports that stopped coming, clients
    /// that follow someone else, a master that is not the lowest address, clients above the
    /// leader's epoch.
    #[test]
    fn health_judges_freshness_and_whom_clients_follow() {
        let (m, mn) = client(1, "10.0.0.20");
        let (a, an) = client(2, "10.0.0.21");
        let (b, bn) = client(3, "10.0.0.5");
        let mut nodes = services();
        nodes.extend([mn, an, bn]);
        let leader = replica("leader", 4);
        let judge = |s: &Snapshot| {
            let replicas = std::slice::from_ref(&leader);
            health(
                &s.nodes,
                &s.rows,
                s.master.as_ref(),
                1,
                replicas,
                fresh(),
                Algorithm::Master,
            )
        };
        let other = Uuid::from_u128(77);
        let mut reports = vec![
            report(m, "10.0.0.20", m, 0),
            report(a, "10.0.0.21", other, 40),
            report(b, "10.0.0.5", m, 10),
        ];
        for r in reports.iter_mut() {
            r.report.seq = 10; // long enough up to have heard of the master
        }
        reports[1].received_at_us = NOW - 3_000_000; // stale, and so no evidence of whom it follows
        reports[2].report.stratum = Some(11);
        reports[2].report.epoch = Some(9);
        let s = snap(nodes.clone(), reports.clone(), Some(record(m, "10.0.0.20")));
        let problems = judge(&s);
        for want in [
            format!("client {a}'s last report is 3.0 s old (stale after 2.0 s)"),
            format!("master {m} (10.0.0.20) is not the lowest address: client {b} (10.0.0.5) is"),
            format!("client {b} ignores the leader: it follows epoch 9, the leader's is 4"),
        ] {
            assert!(
                problems.iter().any(|p| p.contains(&want)),
                "{want:?} not in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 3, "{problems:?}");
        // A fresh report that follows another master, long after the election.
        reports[1].received_at_us = NOW - 100_000;
        let s = snap(nodes.clone(), reports.clone(), Some(record(m, "10.0.0.20")));
        let problems = judge(&s);
        assert!(
            problems.contains(&format!("client {a} follows {other}, not master {m}")),
            "{problems:?}"
        );
        // Berkeley's master is a label: nobody follows it.
        let berkeley = health(
            &s.nodes,
            &s.rows,
            s.master.as_ref(),
            1,
            std::slice::from_ref(&leader),
            fresh(),
            Algorithm::Berkeley,
        );
        assert!(
            !berkeley
                .iter()
                .any(|p| p.contains("not master") || p.contains("lowest")),
            "{berkeley:?}"
        );
        // A client that has just started has not heard of the master yet.
        let mut young = reports.clone();
        young[1].report.seq = 2;
        let s2 = snap(nodes.clone(), young, Some(record(m, "10.0.0.20")));
        assert!(
            !judge(&s2).iter().any(|p| p.contains("not master")),
            "just started"
        );
        // ... nor one right after the election.
        let mut just = record(m, "10.0.0.20");
        just.elected_at_us = NOW - 1_000_000;
        let s = snap(nodes, reports, Some(just));
        let problems = judge(&s);
        assert!(
            !problems.iter().any(|p| p.contains("not master")),
            "{problems:?}"
        );
    }

    #[test]
    fn bounded_waits_for_every_follower_to_state_a_small_enough_epsilon() {
        let (m, mn) = client(1, "10.0.0.20");
        let (a, an) = client(2, "10.0.0.21");
        let mut nodes = services();
        nodes.extend([mn, an]);
        let with_eps = |eps: Option<u64>| {
            let mut r = vec![
                report(m, "10.0.0.20", m, 1000),
                report(a, "10.0.0.21", m, 1300),
            ];
            r[0].report.max_error_us = Some(0);
            r[1].report.max_error_us = eps;
            snap(nodes.clone(), r, Some(record(m, "10.0.0.20")))
        };
        assert!(bounded(&with_eps(None), 1000, fresh())
            .unwrap_err()
            .contains("states no error bound"));
        assert_eq!(bounded(&with_eps(Some(45)), 1000, fresh()), Ok(45));
        assert!(bounded(&with_eps(Some(1001)), 1000, fresh())
            .unwrap_err()
            .contains("exceeds"));
    }

    #[test]
    fn many_problems_of_one_kind_name_three_and_count_the_rest() {
        let p: Vec<String> = (0..5).map(|i| format!("client {i} is stale")).collect();
        let out = many(p, "have stale reports");
        assert_eq!(out.len(), 4);
        assert_eq!(out[3], "2 more clients have stale reports");
    }

    #[test]
    fn synced_within_the_bound_against_the_master_or_the_mean() {
        let (m, mn) = client(1, "10.0.0.20");
        let (a, an) = client(2, "10.0.0.21");
        let (b, bn) = client(3, "10.0.0.22");
        let mut nodes = services();
        nodes.extend([mn, an, bn]);
        let reports = vec![
            report(m, "10.0.0.20", m, 1000),
            report(a, "10.0.0.21", m, 1300),
            report(b, "10.0.0.22", m, 800),
        ];
        let master = Some(record(m, "10.0.0.20"));
        let s = snap(nodes.clone(), reports.clone(), master.clone());
        assert_eq!(synced(&s, Algorithm::Master, 300, fresh()), Ok(300));
        assert!(synced(&s, Algorithm::Master, 299, fresh())
            .unwrap_err()
            .contains("exceeds"));
        // Berkeley: against the mean (1033): worst is a, 267 µs off.
        assert_eq!(synced(&s, Algorithm::Berkeley, 300, fresh()), Ok(267));
        // Not yet following the master.
        let mut lagging = reports.clone();
        lagging[1].report.master_id = None;
        let s = snap(nodes.clone(), lagging, master.clone());
        assert!(synced(&s, Algorithm::Master, 10_000, fresh())
            .unwrap_err()
            .contains("does not follow"));
        // No master, or no clients at all.
        let s = snap(nodes.clone(), reports.clone(), None);
        assert_eq!(
            synced(&s, Algorithm::Master, 10_000, fresh()),
            Err("no master yet".into())
        );
        let s = snap(services(), vec![], None);
        assert_eq!(
            synced(&s, Algorithm::Master, 10_000, fresh()),
            Err("no running clients".into())
        );
        // A stale report is no evidence of sync.
        let mut stuck = reports.clone();
        stuck[2].received_at_us = NOW - 2_500_000;
        let s = snap(nodes.clone(), stuck, master.clone());
        assert!(synced(&s, Algorithm::Master, 10_000, fresh())
            .unwrap_err()
            .contains("stale"));
        // A client that stopped.
        let mut stopped = nodes;
        stopped[4].state = "exited".into();
        let s = snap(stopped, reports, master);
        assert!(synced(&s, Algorithm::Master, 10_000, fresh())
            .unwrap_err()
            .contains("not running"));
    }
}
