//! What `tsc` shows about clients and server replicas: rows joined from the runtime's nodes and Redis, built by a
//! pure function so the arithmetic is tested without a cluster.
//!
//! Two offsets per client, in µs. **Offset to master** is what the system itself can know: each
//! clock minus the server's clock at receipt of its last report, compared with the master's.
//! **True error** is the client's true offset from the host clock minus the master's; it is exact
//! when all clients share one host clock (containers or processes on one machine) and
//! meaningless across hosts.

use super::output::{exit, CliResult, Failure};
use crate::core::ntp::NtpStats;
use crate::core::protocol::{MasterRecord, ReplicaRecord, StoredReport};
use crate::runtime::node::replica_of;
use crate::runtime::{Node, Role};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use uuid::Uuid;

/// A report older than this without a node behind it is from a client that went away.
pub const SILENT_AFTER_US: i64 = 3_000_000;

/// One client as `tsc clients list -v` and `--json` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientRow {
    pub id: String,
    pub ip: IpAddr,
    /// Runtime state (`running`, `exited`, ...); `external` for a reporting client this cluster
    /// did not start; `silent` for a report whose client is gone (until the report expires).
    pub state: String,
    pub is_master: bool,
    /// The client's clock now (extrapolated from its last report), µs since epoch.
    pub time_us: Option<i64>,
    pub master_id: Option<Uuid>,
    pub offset_to_master_us: Option<i64>,
    pub true_error_us: Option<i64>,
    /// ε: the client's own bound on |its clock − the master's| (µs), from its last report.
    pub max_error_us: Option<u64>,
    pub last_report_age_ms: Option<i64>,
    pub reports_seq: Option<u64>,
    /// The leader epoch it follows, from its last report.
    pub epoch: Option<u64>,
    /// NTP stratum of its time (16: not synchronized), from its last report.
    pub stratum: Option<u8>,
    /// What its time follows: `LOCL`, its master's address, or the master's NTP upstream.
    pub reference: Option<String>,
    /// Its NTP service's counters, when it serves NTP.
    pub ntp: Option<NtpStats>,
}

/// Where the cluster's time comes from, as `tsc status` says it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSource {
    /// The master's stratum and reference (`LOCL`: its own clock, no NTP upstream).
    pub master_stratum: Option<u8>,
    pub master_reference: Option<String>,
    /// Whether the master follows an NTP upstream (its reference is not `LOCL`).
    pub upstream: bool,
    /// Clients serving NTP.
    pub ntp_servers: usize,
}

/// The cluster's time source from its client rows.
pub fn time_source(rows: &[ClientRow]) -> TimeSource {
    let m = rows.iter().find(|r| r.is_master);
    let master_reference = m.and_then(|m| m.reference.clone());
    TimeSource {
        master_stratum: m.and_then(|m| m.stratum),
        upstream: master_reference.as_deref().is_some_and(|r| r != "LOCL"),
        master_reference,
        ntp_servers: rows.iter().filter(|r| r.ntp.is_some()).count(),
    }
}

impl TimeSource {
    /// One line for people.
    pub fn describe(&self) -> String {
        let serving = match self.ntp_servers {
            0 => "no client serves NTP".to_string(),
            1 => "1 client serves NTP".to_string(),
            n => format!("{n} clients serve NTP"),
        };
        let source = match (&self.master_reference, self.master_stratum) {
            (Some(r), Some(s)) if self.upstream => {
                format!("NTP upstream {r} (master at stratum {s})")
            }
            (Some(_), Some(s)) => format!("the master's own clock (stratum {s}, no NTP upstream)"),
            _ => "unknown (no report from a master)".to_string(),
        };
        format!("{source}; {serving}")
    }
}

/// Joins client nodes with their reports; reports without a node are listed as external.
pub fn client_rows(
    nodes: &[Node],
    reports: &[StoredReport],
    master: Option<&MasterRecord>,
    now_us: i64,
) -> Vec<ClientRow> {
    let master_report = master.and_then(|m| reports.iter().find(|r| r.report.id == m.id));
    let row = |id: String, ip: IpAddr, state: String, r: Option<&StoredReport>| {
        let is_master = master.is_some_and(|m| m.id.to_string() == id);
        ClientRow {
            is_master,
            time_us: r.map(|r| r.report.time_us + (now_us - r.received_at_us)),
            master_id: r.and_then(|r| r.report.master_id),
            offset_to_master_us: r.zip(master_report).map(|(r, m)| estimated_offset(r, m)),
            true_error_us: r
                .zip(master_report)
                .and_then(|(r, m)| Some(r.report.true_offset_us? - m.report.true_offset_us?)),
            max_error_us: r.and_then(|r| r.report.max_error_us),
            last_report_age_ms: r.map(|r| (now_us - r.received_at_us) / 1000),
            reports_seq: r.map(|r| r.report.seq),
            epoch: r.and_then(|r| r.report.epoch),
            stratum: r.and_then(|r| r.report.stratum),
            reference: r.and_then(|r| r.report.reference.clone()),
            ntp: r.and_then(|r| r.report.ntp),
            id,
            ip,
            state,
        }
    };
    // By id: a swarm brings thousands of clients, and a search per client would be quadratic.
    let by_id: HashMap<String, &StoredReport> = reports
        .iter()
        .map(|r| (r.report.id.to_string(), r))
        .collect();
    let mut rows: Vec<ClientRow> = Vec::new();
    for n in nodes {
        // A lone client's address is its node's; a swarm's client i has the swarm's first + i.
        for (i, id) in n.client_ids().into_iter().enumerate() {
            let r = by_id.get(&id).copied();
            let ip = n.swarm.as_ref().map_or(n.ip, |s| s.ip(i));
            rows.push(row(id, r.map_or(ip, |r| r.report.ip), n.state.clone(), r));
        }
    }
    let known: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    // A report with no node: a client this cluster did not start (`external`), or one that was
    // removed and whose report has not expired yet (`silent`, hidden from the plain list).
    for r in reports {
        if !known.contains(&r.report.id.to_string()) {
            let state = if now_us - r.received_at_us > SILENT_AFTER_US {
                "silent"
            } else {
                "external"
            };
            rows.push(row(
                r.report.id.to_string(),
                r.report.ip,
                state.into(),
                Some(r),
            ));
        }
    }
    rows.sort_by_key(|r| crate::core::master_election::ip_rank(&r.ip));
    rows
}

/// What the system itself can know of a client's offset to the master: the difference of their
/// probe-estimated offsets to the reference clock when both probe, else the difference of their
/// clocks against the server's at receipt of their reports (which includes transit).
pub fn estimated_offset(r: &StoredReport, m: &StoredReport) -> i64 {
    match (r.report.ref_offset_us, m.report.ref_offset_us) {
        (Some(a), Some(b)) => a - b,
        _ => r.offset_to_server_us() - m.offset_to_server_us(),
    }
}

/// A replica record older than this (µs) is a replica that stopped talking.
pub const STALE_RECORD_US: i64 = 5_000_000;

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

/// Finds the one item whose id (`id_of`) is `query` or, failing that, starts with it: how every
/// `-c ID` of tsc names a client. An empty query is a usage error (it would match everything).
pub fn find_by_prefix<'a, T>(
    items: &'a [T],
    id_of: impl Fn(&T) -> &str,
    query: &str,
) -> CliResult<&'a T> {
    if query.is_empty() {
        return Err(Failure::usage(
            "give a client id, or a unique prefix of one (see `tsc clients list`)",
        ));
    }
    if let Some(exact) = items.iter().find(|i| id_of(i) == query) {
        return Ok(exact);
    }
    let matches: Vec<&T> = items
        .iter()
        .filter(|i| id_of(i).starts_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Failure::new(
            exit::NOT_FOUND,
            format!("no client with id {query:?} in this cluster (see `tsc clients list`)"),
        )),
        many => Err(Failure::new(
            exit::NOT_FOUND,
            format!(
                "{query:?} matches {} clients; give more of the id",
                many.len()
            ),
        )),
    }
}

/// µs as milliseconds with three decimals, or `-`.
pub fn ms(us: Option<i64>) -> String {
    us.map_or_else(|| "-".into(), |u| format!("{:+.3}", u as f64 / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::{ReplicaRole, TimeReport};

    fn node(id: &Uuid, ip: &str) -> Node {
        Node::fake(Role::Client, &id.to_string(), ip, "running")
    }

    fn stored(id: Uuid, ip: &str, true_off: i64, transit: i64, at: i64) -> StoredReport {
        StoredReport {
            report: TimeReport {
                master_id: Some(Uuid::from_u128(1)),
                true_offset_us: Some(true_off),
                ..TimeReport::new(id, ip.parse().unwrap(), at + true_off, 9)
            },
            received_at_us: at + transit,
        }
    }

    #[test]
    fn rows_join_nodes_reports_and_master() {
        let (m, a, b, ext) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let nodes = [
            node(&a, "10.0.0.21"),
            node(&m, "10.0.0.20"),
            node(&b, "10.0.0.22"),
        ];
        let now = 10_000_000;
        let reports = [
            stored(m, "10.0.0.20", 5000, 100, now - 500_000),
            stored(a, "10.0.0.21", 5300, 250, now - 200_000),
            stored(ext, "10.0.0.5", 0, 0, now),
            stored(Uuid::from_u128(5), "10.0.0.99", 0, 0, now - 4_000_000),
        ];
        let master = MasterRecord {
            id: m,
            ip: "10.0.0.20".parse().unwrap(),
            elected_at_us: 0,
            epoch: 1,
        };
        let rows = client_rows(&nodes, &reports, Some(&master), now);
        let ids: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(ids, ["external", "running", "running", "running", "silent"]);
        let rm = &rows[1];
        assert!(rm.is_master);
        assert_eq!(rm.true_error_us, Some(0));
        let ra = &rows[2];
        assert_eq!(ra.true_error_us, Some(300));
        // Estimated: (5300 − 250) − (5000 − 100) = 150.
        assert_eq!(ra.offset_to_master_us, Some(150));
        assert_eq!(ra.last_report_age_ms, Some(199));
        assert_eq!(ra.time_us, Some(now + 5300 - 250));
        // b has not reported yet.
        assert_eq!(rows[3].time_us, None);
        assert_eq!(rows[3].offset_to_master_us, None);
    }

    #[test]
    fn a_swarms_clients_are_rows_of_its_node() {
        let ids: Vec<Uuid> = (10..13).map(Uuid::from_u128).collect();
        let lone = Uuid::from_u128(1);
        let nodes = [
            node(&lone, "10.0.0.20"),
            Node {
                swarm: Some(crate::runtime::SwarmSpan::new(
                    "198.18.0.1".parse().unwrap(),
                    ids.clone(),
                )),
                ..Node::fake(Role::Swarm, "swarm-1", "198.18.0.1", "exited")
            },
        ];
        let now = 10_000_000;
        let reports = [
            stored(ids[0], "198.18.0.1", 0, 0, now),
            stored(ids[1], "198.18.0.2", 0, 0, now),
        ];
        let rows = client_rows(&nodes, &reports, None, now);
        let got: Vec<(String, String, String, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    r.ip.to_string(),
                    r.state.clone(),
                    r.time_us.is_some(),
                )
            })
            .collect();
        let want = |id: &Uuid, ip: &str, state: &str, reported| {
            (id.to_string(), ip.to_string(), state.to_string(), reported)
        };
        assert_eq!(
            got,
            [
                want(&lone, "10.0.0.20", "running", false),
                want(&ids[0], "198.18.0.1", "exited", true),
                want(&ids[1], "198.18.0.2", "exited", true),
                // Not reported yet: the address the swarm gives it.
                want(&ids[2], "198.18.0.3", "exited", false),
            ],
            "a swarm's clients take its state; none is external"
        );
    }

    #[test]
    fn the_time_source_is_the_masters_reference() {
        let now = 10_000_000;
        let (m, a) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let master = MasterRecord {
            id: m,
            ip: "10.0.0.20".parse().unwrap(),
            elected_at_us: 0,
            epoch: 1,
        };
        let with = |reference: &str, stratum: u8, serves: bool| {
            let mut r = stored(m, "10.0.0.20", 0, 0, now);
            r.report.reference = Some(reference.into());
            r.report.stratum = Some(stratum);
            r.report.ntp = serves.then(NtpStats::default);
            let mut f = stored(a, "10.0.0.21", 0, 0, now);
            f.report.ntp = Some(NtpStats::default());
            let rows = client_rows(&[], &[r, f], Some(&master), now);
            time_source(&rows)
        };
        let own = with("LOCL", 10, false);
        assert!(!own.upstream);
        assert_eq!(
            own.describe(),
            "the master's own clock (stratum 10, no NTP upstream); 1 client serves NTP"
        );
        let up = with("127.0.0.1", 4, true);
        assert!(up.upstream);
        assert_eq!(
            up.describe(),
            "NTP upstream 127.0.0.1 (master at stratum 4); 2 clients serve NTP"
        );
        let none = time_source(&[]);
        assert_eq!(
            none.describe(),
            "unknown (no report from a master); no client serves NTP"
        );
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
            Node::fake(Role::Server, "server-10", "10.0.0.19", "running"),
            Node::fake(Role::Server, "server-1", "10.0.0.10", "exited"),
            Node::fake(Role::Server, "server-2", "10.0.0.11", "running"),
            Node::fake(Role::Server, "server-3", "10.0.0.12", "paused"),
            Node::fake(Role::Server, "server-4", "10.0.0.13", "running"),
            Node {
                role: Role::Client,
                ..Node::fake(Role::Server, "server-5", "10.0.0.20", "running")
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
    fn find_by_id_or_unique_prefix() {
        let ids = ["abc1", "abd2", "abd"];
        let find = |q: &str| find_by_prefix(&ids, |s| s, q).copied();
        // (query, found, or the exit code)
        let table: &[(&str, Result<&str, u8>)] = &[
            ("abc1", Ok("abc1")),
            ("abc", Ok("abc1")),
            ("abd", Ok("abd")), // an exact id wins over the prefix it also is
            ("abd2", Ok("abd2")),
            ("ab", Err(exit::NOT_FOUND)),
            ("zzz", Err(exit::NOT_FOUND)),
            ("", Err(exit::USAGE)),
        ];
        for (q, want) in table {
            assert_eq!(find(q).map_err(|f| f.code), *want, "{q:?}");
        }
        assert!(find("ab").unwrap_err().message.contains("matches 3"));
        assert!(find("").unwrap_err().message.contains("client id"));
    }

    #[test]
    fn ms_formatting() {
        assert_eq!(ms(Some(1234)), "+1.234");
        assert_eq!(ms(Some(-5)), "-0.005");
        assert_eq!(ms(None), "-");
    }
}
