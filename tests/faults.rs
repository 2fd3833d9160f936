//! The fault suite. One cluster of the test's own (a RabbitMQ node, a Redis, three replicas, four
//! clients drifting by 10–20 ppm, one of them behind a TCP proxy that can cut its network) is
//! let settle, then takes one fault at a time: broker pause and restart, Redis restart (which
//! loses every key, the epoch counter included), the same followed by a restart of every
//! replica (nothing but the clients remembers the epoch), leader kill, pause and stop, all
//! replicas down together, a client cut off, the master killed and brought back.
//!
//! A sampler reads every report 10 times a second. For each fault it measures the largest true
//! error of any client to the master (from the fault until 5 s after the cluster is back in
//! sync), clock steps after first sync, the time from healing the fault until every client
//! follows the master again within its steady-state error with fresh reports, epochs in which
//! more than one server broadcast, and client queues left behind. One line per fault goes to
//! the results file (`faults.txt` in `TS_FAULTS_OUT`, default `target/`), which the README's
//! reliability table quotes; then the suite asserts: no step, error ≤ 1 ms, no shared epoch, no
//! orphan queue, back in sync.
//!
//! On Docker (`docker_client_cut_off_and_moved`, results in `faults-docker.txt`): a follower's
//! container is disconnected from the cluster's network for 20 s, and `tsc status` and `tsc
//! wait` must say so (a stale report, exit 6); it is then connected again under another
//! address, which it must notice and report. Docker is required: if no daemon answers, that
//! test fails (CI starts one).

mod common;

use common::sampler::*;
use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time_sync::cache::RedisStore;
use time_sync::core::clock::{Clock, SystemClock};
use time_sync::core::protocol::ReplicaRole;
use time_sync::runtime::services::RedisGroup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// Short, so that losing the master costs seconds, not a minute.
const TTL_S: u64 = 5;
/// Lowest first: 127.0.0.5 is the master.
const CLIENT_IPS: [&str; 4] = ["127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"];
const DRIFTS: [&str; 4] = ["20", "-20", "10", "-15"];
/// Behind the proxy: a follower.
const CUT_CLIENT: usize = 3;
const REPLICAS: [u64; 3] = [1, 2, 3];
/// How long after being back in sync the error is still watched.
const AFTERMATH: Duration = Duration::from_secs(5);
/// One suite at a time: each is a whole cluster (its own broker node, three replicas, four
/// clients), and two side by side on two cores measure each other's load, not the faults (a
/// cut-off client came back 1.1 ms off once, with the other suite beside it).
static ONE_SUITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The longest any fault may take to heal before the suite fails.
const BACK_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP proxy in front of the broker that can stop carrying bytes either way without closing
/// anything: to both ends, the network is gone.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    while c.load(Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pipe(dr, uw, c.clone()), pipe(ur, dw, c));
                });
            }
        });
        Proxy { port, cut, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Reading is cancel-safe: a timed-out read loses nothing.
        match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(Ok(n)) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    BrokerPause,
    BrokerRestart,
    RedisRestart,
    RedisLostThenReplicas,
    LeaderKill,
    LeaderPause,
    LeaderStop,
    AllReplicasRestart,
    ClientCut,
    MasterKill,
    RedisPrimaryKill,
    RedisPrimaryAndLeaderKill,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::BrokerPause => "broker_pause_5s",
            Fault::BrokerRestart => "broker_restart",
            Fault::RedisRestart => "redis_restart_data_lost",
            Fault::RedisLostThenReplicas => "redis_data_lost_then_all_replicas_restart",
            Fault::LeaderKill => "leader_kill",
            Fault::LeaderPause => "leader_pause",
            Fault::LeaderStop => "leader_stop",
            Fault::AllReplicasRestart => "all_replicas_down_10s",
            Fault::ClientCut => "client_network_cut_20s",
            Fault::MasterKill => "master_kill_and_return",
            Fault::RedisPrimaryKill => "redis_primary_kill",
            Fault::RedisPrimaryAndLeaderKill => "redis_primary_and_leader_kill",
        }
    }
}

struct Suite {
    node: RabbitNode,
    env: TestEnv,
    /// Redis with Sentinel failover, when the suite runs on one (else `env.redis`).
    group: Option<RedisGroup>,
    /// When the last fault struck (and the wall clock then, µs), for faults that strike at
    /// once: reports stored after it count as stored again.
    struck: Option<(Instant, i64)>,
    store: RedisStore,
    /// Replica id → index in `env.procs`.
    replicas: HashMap<u64, usize>,
    clients: Vec<(usize, Uuid)>,
    proxy: Proxy,
    sampler: Sampler,
    results: Vec<String>,
}

impl Suite {
    fn start_replica(&mut self, id: u64) {
        let id_s = id.to_string();
        let mut args = vec!["--replica-id", &id_s];
        let url = self.group.as_ref().map(RedisGroup::url);
        if let Some(url) = &url {
            args.extend(["--redis-url", url]);
        }
        let i = self.env.server(TTL_S, &args);
        self.replicas.insert(id, i);
    }

    /// Kills the Redis primary (SIGKILL: everything it had that no replica got is gone); its
    /// index among the group's servers.
    async fn kill_redis_primary(&mut self) -> usize {
        let group = self.group.as_mut().expect("a Redis group");
        let at = group.primary().await.expect("the Sentinels name a primary");
        let i = group.index_of(at).expect("the primary is one of ours");
        group.kill_server(i);
        self.struck = Some((Instant::now(), SystemClock.now_us()));
        i
    }

    /// Starts Redis server `i` again once the Sentinels have promoted another (as its replica).
    async fn return_redis_server(&mut self, i: usize) {
        let group = self.group.as_mut().expect("a Redis group");
        let gone = group.servers[i].addr();
        let g = &*group;
        wait_for(Duration::from_secs(30), "a replica promoted", || async {
            g.primary().await.ok().filter(|a| *a != gone).map(|_| ())
        })
        .await;
        group
            .start_server(i)
            .await
            .expect("the old primary back, as a replica");
    }

    fn start_client(&mut self, n: usize) -> (usize, Uuid) {
        let drift = ["--drift-ppm", DRIFTS[n]];
        if n == CUT_CLIENT {
            let url = self.env.vhost.url().replace(
                &format!(":{}/", self.node.port),
                &format!(":{}/", self.proxy.port),
            );
            self.env.client_via(&url, CLIENT_IPS[n], &drift)
        } else {
            self.env.client(CLIENT_IPS[n], &drift)
        }
    }

    /// Replica `id`'s process.
    fn replica(&mut self, id: u64) -> &mut Process {
        &mut self.env.procs[self.replicas[&id]]
    }

    /// Kills every replica, waits `down`, and starts them all again.
    async fn restart_all_replicas(&mut self, down: Duration) {
        for id in REPLICAS {
            self.replica(id).kill();
        }
        tokio::time::sleep(down).await;
        for id in REPLICAS {
            self.start_replica(id);
        }
    }

    /// The replica that leads now, by the records in Redis.
    async fn leader(&self) -> u64 {
        wait_for(Duration::from_secs(30), "a leading replica", || async {
            let records = self.store.replicas().await.ok()?;
            records
                .iter()
                .filter(|r| r.role == ReplicaRole::Leader)
                .max_by_key(|r| r.epoch)
                .map(|r| r.id)
        })
        .await
    }

    async fn inject_and_heal(&mut self, fault: Fault) -> Instant {
        match fault {
            Fault::BrokerPause => {
                self.node.pause(true);
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.node.pause(false);
            }
            Fault::BrokerRestart => {
                self.node.stop_app().unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.node.start_app().unwrap();
            }
            Fault::RedisRestart => {
                self.env.redis.stop();
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.env.redis.restart().unwrap();
            }
            Fault::RedisLostThenReplicas => {
                // The epoch counter is gone, and so is every replica's memory of it: only the
                // clients remember the epoch they follow.
                self.env.redis.stop();
                self.env.redis.restart().unwrap();
                self.restart_all_replicas(Duration::from_secs(2)).await;
            }
            Fault::LeaderKill => {
                let id = self.leader().await;
                self.replica(id).kill();
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.start_replica(id);
            }
            Fault::LeaderPause => {
                let id = self.leader().await;
                self.replica(id).signal(libc::SIGSTOP);
                let timeout = time_sync::core::leader_election::LEADER_TIMEOUT;
                tokio::time::sleep(timeout + Duration::from_secs(2)).await;
                self.replica(id).signal(libc::SIGCONT);
            }
            Fault::LeaderStop => {
                let id = self.leader().await;
                let st = self.replica(id).terminate(Duration::from_secs(10));
                assert!(
                    st.is_some_and(|s| s.success()),
                    "replica {id} stops cleanly"
                );
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.start_replica(id);
            }
            Fault::AllReplicasRestart => {
                self.restart_all_replicas(Duration::from_secs(10)).await;
            }
            Fault::ClientCut => {
                self.proxy.cut.store(true, Relaxed);
                tokio::time::sleep(Duration::from_secs(20)).await;
                self.proxy.cut.store(false, Relaxed);
            }
            Fault::MasterKill => {
                self.env.procs[self.clients[0].0].kill();
                // The master is replaced after the TTL; then it comes back, lowest again.
                tokio::time::sleep(Duration::from_secs(TTL_S + 3)).await;
                self.clients[0] = self.start_client(0);
            }
            Fault::RedisPrimaryKill => {
                let i = self.kill_redis_primary().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.return_redis_server(i).await;
            }
            Fault::RedisPrimaryAndLeaderKill => {
                // The next leader claims its epoch from the promoted replica: it must be above
                // every epoch used before.
                let id = self.leader().await;
                self.replica(id).kill();
                let i = self.kill_redis_primary().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.start_replica(id);
                self.return_redis_server(i).await;
            }
        }
        Instant::now()
    }

    async fn run(&mut self, fault: Fault) {
        println!("[faults] {}", fault.name());
        let observer = Observer::start(&self.env.vhost.url(), self.env.ring()).await;
        let begin = Instant::now();
        self.struck = None;
        let epoch_before = observer.max_epoch();
        let healed = self.inject_and_heal(fault).await;
        // A broker that restarted dropped the observer's queue: listen again.
        let after = Observer::start(&self.env.vhost.url(), self.env.ring()).await;
        let back = wait_for(
            BACK_TIMEOUT,
            &format!("back in sync after {}", fault.name()),
            || async {
                let s = self.sampler.since(healed);
                s.last().filter(|s| s.in_sync).map(|s| s.at)
            },
        )
        .await;
        let mut handover = None;
        if let Fault::MasterKill = fault {
            // The returning lowest address syncs to the interim master and takes over.
            let at = wait_for(
                Duration::from_secs(40),
                "the lowest address master again",
                || async {
                    let s = self.sampler.since(healed);
                    s.last()
                        .filter(|s| s.in_sync && s.master_ip.as_deref() == Some(CLIENT_IPS[0]))
                        .map(|s| s.at)
                },
            )
            .await;
            handover = Some(at.duration_since(healed));
        }
        tokio::time::sleep(AFTERMATH).await;
        let seen = self.sampler.since(begin);
        let stored_again = self.struck.map(|(at, at_us)| {
            seen.iter()
                .find(|s| s.newest_us > at_us)
                .map_or(f64::INFINITY, |s| s.at.duration_since(at).as_secs_f64())
        });
        let worst = seen.iter().filter_map(|s| s.worst.clone()).max();
        let max_err = worst.as_ref().map_or(0, |w| w.0);
        let worst_client = worst.map_or_else(|| "-".to_string(), |w| w.1);
        let max_step = seen.iter().map(|s| s.max_step_us).max().unwrap_or(0);
        let shared = [observer.shared_epochs(), after.shared_epochs()].concat();
        let epochs: std::collections::BTreeSet<u64> = observer
            .all()
            .iter()
            .chain(after.all().iter())
            .map(|s| s.epoch)
            .collect();
        drop((observer, after));
        // Queues of connections that died are removed once the broker notices (heartbeats).
        let t = Instant::now();
        let orphans = loop {
            // Signed: a missing client queue must not hide an orphan one.
            let n = client_queues(&self.env.queues()) as i64 - CLIENT_IPS.len() as i64;
            if n == 0 || t.elapsed() > Duration::from_secs(20) {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let line = format!(
            "fault={} back_in_sync_s={:.1} max_error_us={max_err} worst_client={worst_client} max_step_us={max_step} epochs={} shared_epochs={} orphan_queues={orphans}{}",
            fault.name(),
            back.duration_since(healed).as_secs_f64(),
            epochs.len(),
            shared.len(),
            handover.map_or_else(String::new, |h| format!(" handover_s={:.1}", h.as_secs_f64())),
        ) + &stored_again.map_or_else(String::new, |s| format!(" stored_again_s={s:.1}"));
        println!("[faults] {line}");
        self.results.push(line);
        assert_eq!(max_step, 0, "{}: a synced clock stepped", fault.name());
        assert!(
            max_err <= MAX_ERROR_US,
            "{}: error {max_err} µs",
            fault.name()
        );
        assert!(
            shared.is_empty(),
            "{}: epochs {shared:?} had two leaders",
            fault.name()
        );
        assert_eq!(orphans, 0, "{}: client queues left behind", fault.name());
        if let Some(s) = stored_again {
            assert!(
                s <= 5.0,
                "{}: reports stored again after {s:.1} s",
                fault.name()
            );
        }
        if let Fault::RedisPrimaryAndLeaderKill = fault {
            assert!(
                epochs.iter().all(|e| *e >= epoch_before) && epochs.last() > Some(&epoch_before),
                "{}: a new leader's epoch is above every earlier one ({epoch_before}): {epochs:?}",
                fault.name()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite() {
    let _alone = ONE_SUITE.lock().await;
    let dir = tempdir::Dir::new("ts-faults");
    let mut s = Suite::settled(dir.path(), None).await;
    s.run_all(
        &[
            Fault::BrokerPause,
            Fault::BrokerRestart,
            Fault::RedisRestart,
            Fault::RedisLostThenReplicas,
            Fault::LeaderKill,
            Fault::LeaderPause,
            Fault::LeaderStop,
            Fault::AllReplicasRestart,
            Fault::ClientCut,
            Fault::MasterKill,
        ],
        "faults.txt",
    )
    .await;
}

/// The same cluster on Redis with failover (a primary, two replicas, three Sentinels): the
/// primary killed, then the primary and the leading replica together (the next leader's epoch
/// comes from the promoted replica, and must be above every earlier one). Each time the killed
/// server comes back as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failover_suite() {
    let _alone = ONE_SUITE.lock().await;
    let dir = tempdir::Dir::new("ts-faults-sentinel");
    let group = RedisGroup::start(&dir.path().join("redis"), 2, "faults-redis-pw")
        .await
        .expect("a Redis primary, two replicas and three Sentinels of the test's own");
    let mut s = Suite::settled(dir.path(), Some(group)).await;
    s.run_all(
        &[Fault::RedisPrimaryKill, Fault::RedisPrimaryAndLeaderKill],
        "faults-sentinel.txt",
    )
    .await;
}

impl Suite {
    /// A cluster of the test's own (on `group` if given), let settle: in sync, and past the
    /// clients' first frequency estimates; the steady-state error measured.
    async fn settled(dir: &std::path::Path, group: Option<RedisGroup>) -> Suite {
        let node = RabbitNode::start(dir)
            .await
            .expect("a RabbitMQ node of the test's own");
        let env = TestEnv::on(&node);
        let connect = |url: String| async move {
            RedisStore::connect(&url, &tokio_util::sync::CancellationToken::new())
                .await
                .unwrap()
                .unwrap()
        };
        let url = group
            .as_ref()
            .map_or_else(|| env.redis.url(), RedisGroup::url);
        let store = connect(url.clone()).await;
        let sampler = Sampler::start(connect(url).await, CLIENT_IPS.len());
        let proxy = Proxy::start(node.port).await;
        let mut s = Suite {
            node,
            env,
            group,
            struck: None,
            store,
            replicas: HashMap::new(),
            clients: Vec::new(),
            proxy,
            sampler,
            results: Vec::new(),
        };
        for id in REPLICAS {
            s.start_replica(id);
        }
        for n in 0..CLIENT_IPS.len() {
            let c = s.start_client(n);
            s.clients.push(c);
        }
        let t0 = Instant::now();
        wait_for(Duration::from_secs(60), "the cluster in sync", || async {
            s.sampler.since(t0).last().filter(|x| x.in_sync).map(|_| ())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        let steady_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let steady = s
            .sampler
            .since(steady_from)
            .iter()
            .filter_map(|x| x.max_err_us)
            .max()
            .expect("samples of the steady state");
        // "Back within their steady-state error": twice the steady maximum, at least 100 µs.
        let bound = (2 * steady).max(100);
        s.sampler.bound_us.store(bound, Relaxed);
        let header = format!("steady_max_error_us={steady} back_in_sync_bound_us={bound}");
        println!("[faults] {header}");
        s.results.push(header);
        s
    }

    /// Runs `faults` one after the other, writing the results file `name` after each.
    async fn run_all(&mut self, faults: &[Fault], name: &str) {
        for &fault in faults {
            // `TS_FAULTS=name,…` runs only the faults whose names contain one of them.
            let only = std::env::var("TS_FAULTS").unwrap_or_default();
            if !only.is_empty() && !only.split(',').any(|o| fault.name().contains(o)) {
                continue;
            }
            self.run(fault).await;
            // Each line is written as soon as it is known, so a failure keeps the ones before.
            write_results(name, &self.results);
        }
    }
}

/// A follower cut off from the Docker network for 20 s, then connected again with another
/// address: `tsc status` and `tsc wait` name the stale report meanwhile (the TTL is 30 s, so
/// the report stays), the client notices the dead connection by heartbeat, reconnects, reports
/// its new address, and is back in sync; the broker keeps no queue of the dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_client_cut_off_and_moved() {
    assert_docker_answers();
    let t = Tsc::new("docker", "10.240.0.0/24");
    t.edit_config(|c| c.server.ttl = 30);
    t.ok(&["bootstrap", "-s", "1", "-c", "3"]);
    t.ok(&["wait", "--timeout", "90", "--bound-ms", "1"]);
    let cfg = time_sync::runtime::cluster::ClusterConfig::load(t.home.path()).unwrap();
    let ip_of =
        |c: &serde_json::Value| -> std::net::IpAddr { c["ip"].as_str().unwrap().parse().unwrap() };
    let clients = t.clients();
    let follower = clients.iter().max_by_key(|c| ip_of(c)).unwrap().clone();
    let id = follower["id"].as_str().unwrap().to_string();
    let container = format!("ts-{}-client-{}", cfg.cluster_id, &id[..8]);
    let network = format!("ts-{}", cfg.cluster_id);
    sh("docker", &["network", "disconnect", &network, &container]);
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = t.run(&["status"]);
    assert_eq!(status.code, 6, "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains(&format!("client {id}'s last report is"))
            && status.stdout.contains("stale"),
        "{}",
        status.stdout
    );
    let wait = t.run(&["wait", "--timeout", "2", "--bound-ms", "1"]);
    assert_eq!(wait.code, 6, "a stale report is no evidence of sync");
    assert!(
        wait.stderr.contains("stale") || wait.stdout.contains("stale"),
        "{}{}",
        wait.stdout,
        wait.stderr
    );
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut.elapsed())).await;
    let moved = "10.240.0.250";
    sh(
        "docker",
        &["network", "connect", "--ip", moved, &network, &container],
    );
    let healed = Instant::now();
    let back = wait_for(
        Duration::from_secs(60),
        "the client back, at its new address",
        || async {
            let c = t.clients();
            let me = c.iter().find(|c| c["id"] == id.as_str())?.clone();
            (me["ip"] == moved && t.run(&["wait", "--timeout", "1", "--bound-ms", "1"]).code == 0)
                .then(|| healed.elapsed())
        },
    )
    .await;
    // The dead connection's queue is gone: one queue per client (and none other).
    let rabbit = format!("ts-{}-rabbitmq-rabbitmq", cfg.cluster_id);
    let t0 = Instant::now();
    let orphans = loop {
        let queues = docker_queues(&rabbit);
        let n = queues.iter().filter(|q| q.starts_with("amq.gen-")).count() as i64;
        let extra = n - clients.len() as i64;
        if extra == 0 || t0.elapsed() > Duration::from_secs(20) {
            break extra;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let line = format!(
        "fault=docker_client_network_cut_20s_and_moved back_in_sync_s={:.1} new_address={moved} orphan_queues={orphans} status_during=stale_exit_6",
        back.as_secs_f64()
    );
    println!("[faults] {line}");
    write_results("faults-docker.txt", &[line]);
    assert_eq!(orphans, 0, "one queue per client, no orphan");
}
