//! The attacks of issue 10, each against a real cluster, each now failing to do harm.
//!
//! The attacker holds what any client holds: broker credentials and its own client key (the
//! message-level tests use the test's own broker user, which may publish anywhere, so that only
//! the seals stand in the way). The broker-level test uses the client user a real cluster gives
//! its clients, on the local runtime (the Docker runtime is checked in `tests/tsc.rs`).

mod common;

use common::*;
use std::time::{Duration, Instant};
use time_sync::cache::ReportStore;
use time_sync::core::logical::Stamp;
use time_sync::core::protocol::{
    self, Algorithm, Heartbeat, MasterUpdate, Probe, ReplicaRole, SetTime, StoredReport,
    TimeChange, TimeReport, ToClient, ToReplica, ToServer, CONTROL_ALL, CONTROL_EXCHANGE,
    PROTOCOL_VERSION, REPORTS_QUEUE, RPC_QUEUE, UPDATES_EXCHANGE,
};

const HOUR_US: i64 = 3_600_000_000;

/// A cluster of one replica and three clients, synced; returns the env, the store, the
/// master's id, and every client's id.
async fn synced_cluster() -> (TestEnv, time_sync::cache::RedisStore, uuid::Uuid) {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(60, &[]);
    let (_, m) = env.client("127.0.0.5", &[]);
    env.client("127.0.0.6", &[]);
    env.client("127.0.0.7", &[]);
    wait_for(Duration::from_secs(30), "clocks within 1 ms", || async {
        let r = live(&store).await;
        let master = master(&store).await?;
        (master.id == m).then_some(())?;
        spread_us(&r, &master, 3).filter(|s| *s < 1000)
    })
    .await;
    (env, store, m)
}

async fn channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn reports(store: &time_sync::cache::RedisStore) -> Vec<StoredReport> {
    let mut r = live(store).await;
    r.sort_by_key(|r| r.report.id);
    r
}

fn now_us() -> i64 {
    time_sync::core::clock::Clock::now_us(&time_sync::core::clock::SystemClock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_leader_and_control_messages_move_nobody_and_stall_nothing() {
    let (env, store, master_id) = synced_cluster().await;
    let before = reports(&store).await;
    let epoch = before[0].report.epoch.expect("clients follow an epoch");
    let attacker = env.keys.client_ring(&uuid::Uuid::new_v4());
    let leader_kid = env.keys.leader[0].kid.clone();
    let (_conn, ch) = channel(&env.vhost.url()).await;

    // 1. The hour-long forgery: epoch 1000000, made-up master and server, master time +1 h.
    let forged = |seq| {
        ToClient::MasterUpdate(MasterUpdate {
            v: PROTOCOL_VERSION,
            server_id: uuid::Uuid::new_v4(),
            epoch: 1_000_000,
            seq,
            master_id: uuid::Uuid::new_v4(),
            master_ip: "10.0.0.1".parse().unwrap(),
            master_time_us: now_us() + HOUR_US,
            server_time_us: now_us(),
            algorithm: Algorithm::Naive,
            master_ref_offset_us: None,
            master_ref_freq_ppm: None,
            master_stratum: Some(10),
            master_ref_error_us: None,
            stamp: Stamp::default(),
        })
    };
    let set_time = ToClient::SetTime(SetTime {
        v: PROTOCOL_VERSION,
        server_id: uuid::Uuid::new_v4(),
        epoch: 1_000_000,
        client_id: before[1].report.id,
        op_id: uuid::Uuid::new_v4(),
        change: TimeChange::Shift { shift_us: HOUR_US },
        stamp: Stamp::default(),
    });
    let to_clients: Vec<Vec<u8>> = vec![
        protocol::encode(&forged(1)),
        // Sealed with a client's own key under the leader key's kid: the key a client has.
        protocol::encode_sealed(&forged(2), &leader_kid, |d| attacker.client[0].tag(d)),
        protocol::encode(&set_time),
    ];
    for m in &to_clients {
        time_sync::broker::publish_raw(&ch, UPDATES_EXCHANGE, "", m, None)
            .await
            .unwrap();
    }
    // 2. The leader-stalling heartbeat: epoch 2^64-1 (and 2^53, sealed with a client key).
    let heartbeat = |epoch| {
        ToReplica::Heartbeat(Heartbeat {
            v: PROTOCOL_VERSION,
            from: 9,
            priority: 99,
            role: ReplicaRole::Leader,
            epoch,
            leader: Some(9),
            stamp: Stamp::default(),
        })
    };
    let replica_kid = env.keys.replica[0].kid.clone();
    let to_replicas: Vec<Vec<u8>> = vec![
        protocol::encode(&heartbeat(u64::MAX)),
        protocol::encode_sealed(&heartbeat(1 << 53), &replica_kid, |d| {
            attacker.client[0].tag(d)
        }),
    ];
    for m in &to_replicas {
        time_sync::broker::publish_raw(&ch, CONTROL_EXCHANGE, CONTROL_ALL, m, None)
            .await
            .unwrap();
    }
    let sent_at = Instant::now();
    // Every client refuses every forgery, and keeps following the real leader meanwhile.
    let after = wait_for(Duration::from_secs(10), "every forgery refused", || async {
        let now = reports(&store).await;
        (now.len() == 3
            && now.iter().zip(&before).all(|(a, b)| {
                a.report.rejected_msgs.unwrap() >= b.report.rejected_msgs.unwrap() + 3
            }))
        .then_some(now)
    })
    .await;
    println!("forgeries refused within {:?}", sent_at.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after2 = reports(&store).await;
    for ((b, a), a2) in before.iter().zip(&after).zip(&after2) {
        let (rb, ra) = (&b.report, &a2.report);
        assert_eq!(
            ra.epoch,
            Some(epoch),
            "client {} follows the real epoch",
            ra.id
        );
        assert_eq!(
            ra.stale_epoch_msgs, rb.stale_epoch_msgs,
            "nothing reached fencing"
        );
        let moved = (ra.true_offset_us.unwrap() - rb.true_offset_us.unwrap()).abs();
        assert!(moved < 1_000, "client {} moved {moved} µs", ra.id);
        assert_eq!(ra.master_id, Some(master_id), "the real master is followed");
        assert!(ra.seq > a.report.seq, "client {} still reports", ra.id);
        assert!(ra.max_step_us.unwrap_or(0) < 1_000, "no step");
    }
    let spread = spread_us(&after2, &master(&store).await.unwrap(), 3).unwrap();
    assert!(spread < 1_000, "still in sync: {spread} µs");
    // The leader still leads the same term, and the epoch counter is sane.
    let replicas = store.replicas().await.unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0].role, ReplicaRole::Leader);
    assert_eq!(replicas[0].epoch, epoch);
    assert_eq!(store.epoch().await.unwrap(), epoch, "ts:epoch untouched");
    assert!(stat(&store, "control_rejected").await >= 2);
    let updates = stat(&store, "updates_published").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stat(&store, "updates_published").await > updates,
        "still broadcasting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_reports_are_refused_and_counted() {
    let (env, store, master_id) = synced_cluster().await;
    let stored = store.report(&master_id).await.unwrap().unwrap().report;
    let (_conn, ch) = channel(&env.vhost.url()).await;
    let master_keys = env.keys.client_ring(&master_id);
    let other_keys = env.keys.client_ring(&uuid::Uuid::new_v4());
    let ahead = |seq: u64, boot: i64| TimeReport {
        time_us: now_us() + 2 * HOUR_US,
        true_offset_us: stored.true_offset_us.map(|o| o + 2 * HOUR_US),
        ref_offset_us: stored.ref_offset_us.map(|o| o + 2 * HOUR_US),
        boot_us: boot,
        ..TimeReport::new(master_id, stored.ip, 0, seq)
    };
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        (
            "unsigned",
            protocol::encode(&ahead(stored.seq + 100, stored.boot_us)),
        ),
        (
            "bad_signature",
            protocol::encode_sealed(
                &ahead(stored.seq + 100, stored.boot_us),
                &other_keys.client[0].kid,
                |d| other_keys.client[0].tag(d),
            ),
        ),
        // The master's own seal, but an old report: a replay (an older seq, an older process).
        (
            "replay",
            master_keys
                .seal_from_client(&ahead(stored.seq - 1, stored.boot_us))
                .unwrap(),
        ),
        (
            "replay",
            master_keys
                .seal_from_client(&ahead(stored.seq + 100, stored.boot_us - 1))
                .unwrap(),
        ),
    ];
    for (_, m) in &kinds {
        time_sync::broker::publish_raw(&ch, "", REPORTS_QUEUE, m, None)
            .await
            .unwrap();
    }
    wait_for(
        Duration::from_secs(10),
        "every forged report counted",
        || async {
            let u = stat(&store, "rejected_unsigned").await;
            let b = stat(&store, "rejected_bad_signature").await;
            let r = stat(&store, "rejected_replay").await;
            (u >= 1 && b >= 1 && r >= 2).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = store.report(&master_id).await.unwrap().unwrap().report;
    assert!(now.seq > stored.seq, "the master's real reports go on");
    assert!(
        (now.time_us - now_us()).abs() < HOUR_US,
        "no forged report was stored: {}",
        now.time_us - now_us()
    );
    let r = reports(&store).await;
    let spread = spread_us(&r, &master(&store).await.unwrap(), 3).unwrap();
    assert!(spread < 1_000, "no follower moved: {spread} µs");
    assert!(r.iter().all(|x| x.report.max_step_us.unwrap_or(0) < 1_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_cannot_aim_replies_at_the_servers_own_queues() {
    let (env, store, _) = synced_cluster().await;
    let (_conn, ch) = channel(&env.vhost.url()).await;
    let id = uuid::Uuid::new_v4();
    let keys = env.keys.client_ring(&id);
    let probe = ToServer::Probe(Probe {
        v: PROTOCOL_VERSION,
        id,
        seq: 1,
        t1_us: now_us(),
        stamp: Stamp::default(),
    });
    let sealed = keys.seal_from_client(&probe).unwrap();
    for target in [REPORTS_QUEUE, RPC_QUEUE, "ts.replica.1"] {
        time_sync::broker::publish_rpc(&ch, &sealed, target, Duration::from_secs(5))
            .await
            .unwrap();
    }
    wait_for(
        Duration::from_secs(10),
        "three bad reply_to refused",
        || async { (stat(&store, "rejected_bad_reply_to").await >= 3).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nothing was published into the server's own queues: the workers saw no probe reply.
    assert_eq!(stat(&store, "rejected_malformed").await, 0);
    assert_eq!(stat(&store, "rejected_unsigned").await, 0);
    assert_eq!(stat(&store, "control_rejected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_flood_is_logged_in_bursts_and_every_worker_says_what_it_left_out() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(60, &[]);
    wait_for(Duration::from_secs(10), "the server's counters", || async {
        store.server_stats().await.ok().filter(|s| !s.is_empty())
    })
    .await;
    let (_conn, ch) = channel(&env.vhost.url()).await;
    let flood = 11_000;
    for i in 0..flood {
        let junk = format!("junk {i}");
        time_sync::broker::publish_raw(&ch, "", REPORTS_QUEUE, junk.as_bytes(), None)
            .await
            .unwrap();
    }
    wait_for(Duration::from_secs(30), "the flood counted", || async {
        (stat(&store, "rejected_malformed").await >= flood).then_some(())
    })
    .await;
    let flooded = Instant::now();
    let log_path = env.path().join("server").join("server-1.json");
    // Within a window and a bit: every worker that left lines out says how many, and the
    // window it names is the one that really passed.
    let summaries = wait_for(
        Duration::from_secs(25),
        "suppressed counts flushed",
        || async {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| l.contains("more messages were refused than logged"))
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let total: u64 = lines
                .iter()
                .filter_map(|v| v["fields"]["suppressed"].as_u64())
                .sum();
            let logged = text
                .lines()
                .filter(|l| l.contains("rejected message"))
                .count() as u64;
            (total + logged >= flood).then_some((lines, logged))
        },
    )
    .await;
    let (lines, logged) = summaries;
    println!(
        "flood of {flood}: {logged} lines logged, {} summaries within {:?}",
        lines.len(),
        flooded.elapsed()
    );
    assert!(logged <= 4 * 10 * 3, "rate-limited: {logged} lines");
    let workers: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|v| v["fields"]["source"].as_str())
        .collect();
    assert!(!workers.is_empty());
    for v in &lines {
        let msg = v["fields"]["message"].as_str().unwrap();
        let secs: f64 = msg
            .rsplit("in the last ")
            .next()
            .and_then(|s| s.trim_end_matches('s').parse().ok())
            .unwrap();
        assert!((10.0..=14.0).contains(&secs), "{msg}");
    }
}

/// The real broker users of a local cluster: a client's user cannot publish to the updates or
/// control exchanges, nor delete the shared queues; no user is an administrator; no secret is
/// on a command line; and the keys rotate under the running cluster with no clock step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_secrets_off_command_lines_and_key_rotation() {
    let t = Tsc::local_synced("10.249.0.0/24", 1, 3, 2);
    let (ep, store) = t.endpoints().await;
    assert_client_user_is_confined(&ep.client_amqp_url).await;
    // No administrator among the cluster's users.
    let users = sh("rabbitmqctl", &["-q", "list_users", "--no-table-headers"]);
    let cfg = time_sync::runtime::cluster::ClusterConfig::load(t.home.path()).unwrap();
    for line in users.lines().filter(|l| l.contains(&cfg.cluster_id)) {
        assert!(!line.contains("administrator"), "{line}");
    }
    // Nothing secret in any process's command line.
    let state = time_sync::runtime::cluster::State::load(t.home.path()).unwrap();
    let c = &cfg.credentials;
    let secrets = [
        &c.rabbitmq_client_password,
        &c.rabbitmq_server_password,
        &c.rabbitmq_operator_password,
        &c.redis_password,
        &c.operator_token,
    ];
    for n in &state.local.nodes {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", n.pid)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        for s in secrets {
            assert!(
                !cmdline.contains(s.as_str()),
                "{} {} shows a secret: {cmdline}",
                n.role.as_str(),
                n.id
            );
        }
    }
    // Rotation under the running cluster.
    let old = t.keys();
    let steps_before: Vec<i64> = live(&store)
        .await
        .iter()
        .map(|r| r.report.max_step_us.unwrap_or(0))
        .collect();
    let rotated = Instant::now();
    t.ok(&["keys", "rotate", "--grace", "3"]);
    println!("rotation took {:?}", rotated.elapsed());
    let new = t.keys();
    assert_ne!(new.leader[0].kid, old.leader[0].kid);
    assert_ne!(new.cluster[0].kid, old.cluster[0].kid);
    assert_eq!(new.leader.len(), 1, "the old key is gone");
    let before = reports(&store).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = reports(&store).await;
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a.report.seq > b.report.seq,
            "reports go on with the new keys"
        );
        assert_eq!(
            a.report.rejected_msgs, b.report.rejected_msgs,
            "nothing refused since"
        );
    }
    for (r, s0) in after.iter().zip(steps_before) {
        let step = r.report.max_step_us.unwrap_or(0);
        assert!(
            step <= s0.max(1_000),
            "client {} stepped {step} µs",
            r.report.id
        );
    }
    assert_eq!(stat(&store, "rejected_unknown_key").await, 0);
    assert_eq!(stat(&store, "rejected_bad_signature").await, 0);
    t.ok(&["wait", "--timeout", "30", "--bound-ms", "1"]);
    // A message sealed with the old leader key is now refused by every client.
    let obs = Observer::start(&ep.operator_amqp_url, new.server_ring()).await;
    let heard = obs.first_above(0, Duration::from_secs(10)).await;
    assert!(
        heard.epoch > 0,
        "the new key's broadcasts open with the new public key"
    );
    t.ok(&["teardown"]);
}
