//! A swarm (`ts-client --swarm N`, N clients in one process) beside lone clients, against a
//! real RabbitMQ, Redis and ts-server: the cluster cannot tell them apart, and the lowest
//! address is master whichever side it is on.

mod common;

use common::*;
use std::time::Duration;
use time_sync::core::master_election::live_member;
use time_sync::core::protocol::StoredReport;

/// Clocks must agree with the master within this bound (µs) once converged (as in core.rs).
const SYNC_BOUND_US: i64 = 5_000;
/// Swarm clients in each test.
const SWARM: usize = 40;

/// Starts a swarm of `n` clients from `base`; returns their ids, in address order.
fn swarm(env: &mut TestEnv, n: usize, base: &str, extra: &[&str]) -> Vec<uuid::Uuid> {
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::new_v4()).collect();
    let dir = env.path().join("keys").join(format!("swarm-{base}"));
    time_sync::keys::write_ring(&dir, &env.keys.swarm_ring(&ids)).unwrap();
    let mut args: Vec<String> = [
        "--amqp-url",
        &env.vhost.url(),
        "--swarm",
        &n.to_string(),
        "--swarm-ip-base",
        base,
        "--swarm-group",
        "16",
        "--swarm-connections",
        "2",
        "--log-dir",
        &env.path().join("clients").display().to_string(),
        "--key-dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = env.path().join(format!("swarm-{base}.out"));
    env.procs.push(spawn("ts-client", CLIENT_BIN, &args, &log));
    ids
}

/// Waits until `n` clients are live and all follow the elected master within the bound; returns
/// the master and the live reports.
async fn converged(
    store: &time_sync::cache::RedisStore,
    n: usize,
) -> (time_sync::core::protocol::MasterRecord, Vec<StoredReport>) {
    wait_for(
        Duration::from_secs(60),
        "every client converged",
        || async {
            let m = master(store).await?;
            let r = live(store).await;
            let all_synced = r
                .iter()
                .all(|f| f.report.id == m.id || f.report.max_step_us.is_some());
            spread_us(&r, &m, n)
                .filter(|s| *s < SYNC_BOUND_US && all_synced)
                .map(|_| (m, r))
        },
    )
    .await
}

/// Lone clients at 10.0.0.50 and .60 and a swarm from 10.0.0.1: the swarm's first client is
/// master, every client of both kinds follows it, each swarm client has its own queue, and
/// nothing any of them sent was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_client_with_the_lowest_address_is_master() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(TTL_S, &[]);
    let lone = [
        env.client("10.0.0.50", &[]).1,
        env.client("10.0.0.60", &[]).1,
    ];
    let ids = swarm(&mut env, SWARM, "10.0.0.1", &["--seed", "7"]);
    let (m, reports) = converged(&store, SWARM + lone.len()).await;
    assert_eq!(m.id, ids[0], "10.0.0.1 is the lowest address");
    assert_eq!(m.ip.to_string(), "10.0.0.1");
    for (i, id) in ids.iter().enumerate() {
        let r = reports
            .iter()
            .find(|r| r.report.id == *id)
            .expect("every swarm client reports");
        assert_eq!(r.report.ip.to_string(), format!("10.0.0.{}", i + 1));
        assert!(r.report.ref_offset_us.is_some(), "swarm clients probe");
    }
    // Each client of the swarm has a queue of its own, with one consumer: its own.
    let listeners = client_queues(&env.queues());
    assert_eq!(listeners, SWARM + lone.len(), "{:?}", env.queues());
    assert_eq!(stat(&store, "rejected_total").await, 0);
    // No follower, lone or in the swarm, stepped once synced.
    for r in reports.iter().filter(|r| r.report.id != m.id) {
        assert_eq!(r.report.max_step_us, Some(0), "{}", r.report.ip);
    }
}

/// A swarm from 10.0.0.100 behind lone clients at 10.0.0.50 and .60: the lone client at .50 is
/// master, the swarm follows it, and the replica's paged client list walks all of them in
/// election order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_client_with_the_lowest_address_is_master_over_a_swarm() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(TTL_S, &[]);
    let low = env.client("10.0.0.50", &[]).1;
    env.client("10.0.0.60", &[]);
    let ids = swarm(&mut env, SWARM, "10.0.0.100", &[]);
    let total = SWARM + 2;
    let (m, reports) = converged(&store, total).await;
    assert_eq!(m.id, low, "10.0.0.50 is below the swarm's 10.0.0.100");
    assert!(ids
        .iter()
        .all(|id| reports.iter().any(|r| r.report.id == *id)));
    let replica = store.replicas().await.unwrap();
    let api = replica[0].http.clone();
    let mut after: Option<String> = None;
    let mut walked: Vec<StoredReport> = Vec::new();
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/clients?limit=10&after={a}"),
            None => "/clients?limit=10".to_string(),
        };
        let (code, body) = http(&api, "GET", &path);
        assert_eq!(code, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["live"], total, "{body}");
        let clients: Vec<StoredReport> = serde_json::from_value(page["clients"].clone()).unwrap();
        assert!(clients.len() <= 10);
        walked.extend(clients);
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, total.div_ceil(10));
    assert_eq!(walked.len(), total);
    let members: Vec<String> = walked
        .iter()
        .map(|r| live_member(&r.report.id, &r.report.ip))
        .collect();
    let mut sorted = members.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        members, sorted,
        "pages are in election order, no client twice"
    );
    assert_eq!(walked[0].report.id, low);
    let (code, body) = http(&api, "GET", "/clients?limit=10&bogus=1");
    assert_eq!(code, 400, "{body}");
}
