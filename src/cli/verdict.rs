//! tsc's verdicts on a cluster: is it healthy (`tsc status`), are its clocks in sync
//! (`tsc wait`). Pure functions of what was read, so every rule is tested without a cluster.

use super::snapshot::Snapshot;
use super::view::{current_leader, ms, ClientRow, ServerRow};
use crate::core::protocol::{Algorithm, MasterRecord};
use crate::runtime::{Node, Role};

/// Problems that make the cluster unhealthy; empty when all is well.
pub fn health(
    nodes: &[Node],
    rows: &[ClientRow],
    master: Option<&MasterRecord>,
    servers_reporting: usize,
    replicas: &[ServerRow],
) -> Vec<String> {
    let mut problems = Vec::new();
    for role in [Role::Redis, Role::Rabbitmq, Role::Server] {
        let n: Vec<&Node> = nodes.iter().filter(|n| n.role == role).collect();
        if n.is_empty() {
            problems.push(format!("no {} node", role.as_str()));
        }
        for x in n.iter().filter(|x| !x.running()) {
            problems.push(format!("{} {} is {}", role.as_str(), x.id, x.state));
        }
    }
    if servers_reporting == 0 {
        problems.push("no server has written its counters to Redis".into());
    }
    for r in rows.iter().filter(|r| r.state != "external") {
        if r.state != "running" {
            problems.push(format!("client {} is {}", r.id, r.state));
        } else if r.time_us.is_none() {
            problems.push(format!("client {} has not reported", r.id));
        }
    }
    if master.is_none() && !rows.is_empty() {
        problems.push("no master elected".into());
    }
    if current_leader(replicas).is_none() && replicas.iter().any(|r| r.state == "running") {
        problems.push("no server replica leads".into());
    }
    problems
}

/// `Ok(worst |true error|)` when every running client follows the reference within
/// `bound_us`: the master, or for `berkeley` (which has none) the mean of all clocks.
pub fn synced(s: &Snapshot, alg: Algorithm, bound_us: i64) -> Result<i64, String> {
    let clients: Vec<&ClientRow> = s.rows.iter().filter(|r| r.state == "running").collect();
    if clients.is_empty() {
        return Err("no running clients".into());
    }
    if s.nodes.iter().filter(|n| n.role == Role::Client).count() != clients.len() {
        return Err("some clients are not running".into());
    }
    let mut worst = 0;
    if alg == Algorithm::Berkeley {
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
        worst = offsets.iter().map(|o| (o - mean).abs()).max().unwrap_or(0);
    } else {
        let m = s.master.as_ref().ok_or("no master yet")?;
        for r in clients {
            if r.master_id != Some(m.id) {
                return Err(format!("client {} does not follow the master yet", r.id));
            }
            let e = r
                .true_error_us
                .ok_or(format!("client {} has no error figure yet", r.id))?;
            worst = worst.max(e.abs());
        }
    }
    if worst > bound_us {
        return Err(format!(
            "worst error {} ms exceeds {} ms",
            ms(Some(worst)),
            ms(Some(bound_us))
        ));
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::view::client_rows;
    use crate::core::protocol::{StoredReport, TimeReport};
    use uuid::Uuid;

    const NOW: i64 = 100_000_000;

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
        let replica = |role: &str| ServerRow {
            id: 1,
            ip: "10.0.0.10".parse().unwrap(),
            state: "running".into(),
            role: role.into(),
            epoch: Some(1),
            leader: None,
            heartbeat_age_ms: Some(100),
            priority: None,
            server_id: None,
            http: None,
            elections: None,
        };
        assert_eq!(
            health(
                &s.nodes,
                &s.rows,
                s.master.as_ref(),
                1,
                &[replica("leader")]
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
        assert_eq!(synced(&s, Algorithm::Master, 300), Ok(300));
        assert!(synced(&s, Algorithm::Master, 299)
            .unwrap_err()
            .contains("exceeds"));
        // Berkeley: against the mean (1033): worst is a, 267 µs off.
        assert_eq!(synced(&s, Algorithm::Berkeley, 300), Ok(267));
        // Not yet following the master.
        let mut lagging = reports.clone();
        lagging[1].report.master_id = None;
        let s = snap(nodes.clone(), lagging, master.clone());
        assert!(synced(&s, Algorithm::Master, 10_000)
            .unwrap_err()
            .contains("does not follow"));
        // No master, or no clients at all.
        let s = snap(nodes.clone(), reports.clone(), None);
        assert_eq!(
            synced(&s, Algorithm::Master, 10_000),
            Err("no master yet".into())
        );
        let s = snap(services(), vec![], None);
        assert_eq!(
            synced(&s, Algorithm::Master, 10_000),
            Err("no running clients".into())
        );
        // A client that stopped.
        let mut stopped = nodes;
        stopped[4].state = "exited".into();
        let s = snap(stopped, reports, master);
        assert!(synced(&s, Algorithm::Master, 10_000)
            .unwrap_err()
            .contains("not running"));
    }
}
