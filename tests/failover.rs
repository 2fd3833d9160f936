//! No single point of failure, through tsc: `tsc bootstrap -s 2 --redis-replicas 2 --brokers 3`
//! starts two server replicas, a Redis primary, two replicas, three Sentinels and a RabbitMQ
//! cluster of three nodes.
//!
//! On both runtimes, `tsc redis kill -n 0` kills the primary; the Sentinels promote a replica,
//! the servers follow, and reports are stored again within 5 s; `tsc redis start -n 0` brings
//! the dead server back as a replica of the new primary. Then `tsc brokers kill` kills the
//! broker node with the most connections, and once it is back the node leading the reports
//! queue: each time its peers move to another node and reports are stored again within 5 s,
//! and the node, started again, rejoins the cluster (`failover-local.txt`, and the Docker lines
//! in `failover-docker.txt`). On Docker, then: the leading server
//! replica is cut off the network for 20 s (`docker network disconnect`): the other leads with
//! a later epoch, and the cut one, back, does not lead again beside it (fencing); then every
//! component but the clients is restarted, one at a time. After each fault no synced clock has
//! stepped by more than 1 ms, reports are stored again within 5 s, and there is one master and
//! one leader, the cluster healthy. The measured times go to `failover-docker.txt` (in
//! `TS_FAULTS_OUT`, default `target/`). Docker is required: if no daemon answers, the Docker
//! test fails (CI starts one).

mod common;

use common::sampler::{Sampler, MAX_ERROR_US};
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use time_sync::cache::{RedisStore, ReportStore};
use time_sync::core::clock::{Clock, SystemClock};

/// What each Redis server and Sentinel says it is, by id.
fn roles(t: &Tsc) -> Vec<(String, String, String)> {
    let v = t.ok(&["--json", "redis", "list"]).json();
    v["redis"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("addr"), s("is"))
        })
        .collect()
}

/// The one server that says it is the primary, with every other server that answers its
/// replica (link up) and every Sentinel naming it; its id.
fn settled_primary(t: &Tsc) -> Option<String> {
    let r = roles(t);
    let primaries: Vec<_> = r.iter().filter(|(_, _, is)| is == "primary").collect();
    let [(id, addr, _)] = primaries[..] else {
        return None;
    };
    let replicas_ok = r
        .iter()
        .filter(|(i, _, is)| i.starts_with("redis") && i != id && !is.starts_with("not answering"))
        .all(|(_, _, is)| *is == format!("replica of {addr} (link connected)"));
    let sentinels_ok = r
        .iter()
        .filter(|(i, _, _)| i.starts_with("sentinel"))
        .all(|(_, _, is)| *is == format!("sentinel, primary {addr}"));
    (replicas_ok && sentinels_ok).then(|| id.clone())
}

/// Waits for a report stored after `since_us` (wall clock); how long after `since` it came.
async fn stored_after(store: &RedisStore, since: Instant, since_us: i64) -> Duration {
    wait_for(
        Duration::from_secs(60),
        "a report stored after the fault",
        || async {
            let r = store.live_reports().await.ok()?;
            r.iter()
                .any(|r| r.received_at_us > since_us)
                .then(|| since.elapsed())
        },
    )
    .await
}

/// After a fault: in sync within 1 ms, no clock stepped by 1 ms or more since its first sync,
/// the same master, one leader, one Redis primary, healthy.
async fn settled(t: &Tsc, store: &RedisStore, master: &str) {
    t.ok(&["wait", "--timeout", "90", "--bound-ms", "1"]);
    // `max_step_us`: the largest step a client made since its first sync.
    // Retried: this store's own connection may have been to a primary just killed.
    let reports = wait_for(Duration::from_secs(10), "the reports", || async {
        store.live_reports().await.ok()
    })
    .await;
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in &reports {
        let step = r.report.max_step_us.unwrap_or(0);
        assert!(step < 1_000, "a clock stepped {step} µs: {r:?}");
    }
    assert_eq!(
        t.master().as_deref(),
        Some(master),
        "the same master throughout"
    );
    let v = wait_for(Duration::from_secs(30), "a healthy status", || async {
        let r = t.run(&["--json", "status"]);
        (r.code == 0).then(|| r.json())
    })
    .await;
    let leaders = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["role"] == "leader")
        .count();
    assert_eq!(leaders, 1, "one leader: {v}");
    let redis: &Vec<Value> = v["redis"].as_array().unwrap();
    assert_eq!(
        redis.iter().filter(|r| r["is"] == "primary").count(),
        1,
        "{redis:?}"
    );
}

/// Bootstraps, kills the Redis primary and brings it back; the store and the master.
async fn failover(t: &Tsc) -> (RedisStore, String, Duration) {
    t.ok(&[
        "bootstrap",
        "-s",
        "2",
        "-c",
        "3",
        "--redis-replicas",
        "2",
        "--brokers",
        "3",
    ]);
    t.ok(&["wait", "--timeout", "90", "--bound-ms", "1"]);
    let r = roles(t);
    assert_eq!(r.len(), 6, "three servers and three Sentinels: {r:?}");
    assert_eq!(settled_primary(t).as_deref(), Some("redis"), "{r:?}");
    let status = t.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert!(
        status.stdout.contains("redis-1:")
            && status.stdout.contains("sentinel-3:")
            && status.stdout.contains("rabbitmq-3:"),
        "{}",
        status.stdout
    );
    let b = brokers(t);
    assert_eq!(b.len(), 3, "{b:?}");
    assert!(b.iter().all(|r| r["in_cluster"] == true), "{b:?}");
    let (_, store) = t.endpoints().await;
    let master = t.master().expect("a master");

    t.ok(&["redis", "kill", "-n", "0"]);
    let stored_again = stored_after(&store, Instant::now(), SystemClock.now_us()).await;
    println!("reports stored again {stored_again:?} after the primary was killed");
    assert!(
        stored_again <= Duration::from_secs(5),
        "reports stored again after {stored_again:?}"
    );
    let promoted = wait_for(Duration::from_secs(30), "a replica promoted", || async {
        settled_primary(t).filter(|p| p != "redis")
    })
    .await;
    // Back, as a replica of the promoted server (it may take a moment to be allowed: until
    // the Sentinels agree, they still name the dead server).
    wait_for(Duration::from_secs(30), "redis started again", || async {
        (t.run(&["redis", "start", "-n", "0"]).code == 0).then_some(())
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "the old primary a replica of the new one",
        || async {
            let p = settled_primary(t)?;
            let r = roles(t);
            (p == promoted
                && r.iter()
                    .any(|(i, _, is)| i == "redis" && is.starts_with("replica")))
            .then_some(())
        },
    )
    .await;
    settled(t, &store, &master).await;
    (store, master, stored_again)
}

/// `tsc brokers list`: one row per broker node.
fn brokers(t: &Tsc) -> Vec<Value> {
    t.ok(&["--json", "brokers", "list"]).json()["brokers"]
        .as_array()
        .expect("a list")
        .clone()
}

/// The largest error of a synced client to the master since `t`; fails if it passed the
/// bound, or if any client stepped.
fn worst(sampler: &Sampler, t: Instant) -> i64 {
    let s = sampler.since(t);
    let err = s.iter().filter_map(|x| x.max_err_us).max().unwrap_or(0);
    let step = s.iter().map(|x| x.max_step_us).max().unwrap_or(0);
    assert!(
        err <= MAX_ERROR_US && step == 0,
        "error {err} µs, step {step} µs"
    );
    err
}

/// How long after `t` (wall clock `t_us`) the sampler first saw a report stored after it.
async fn stored_since(sampler: &Sampler, t: Instant, t_us: i64) -> Duration {
    wait_for(
        Duration::from_secs(60),
        "a report stored after the fault",
        || async {
            let s = sampler.since(t);
            let first = s.iter().find(|x| x.newest_us > t_us)?;
            Some(first.at.duration_since(t))
        },
    )
    .await
}

/// How long after `t` every running replica names one leader and has heard its heartbeat
/// (over the broker) since `t`: a leader broadcasting again.
async fn leader_heard_since(t: &Tsc, since: Instant) -> Duration {
    wait_for(
        Duration::from_secs(60),
        "a leader heard by every replica",
        || async {
            let v = t.run(&["--json", "servers", "list"]);
            if v.code != 0 {
                return None;
            }
            let v = v.json();
            let elapsed = since.elapsed();
            let running: Vec<&Value> = v["servers"]
                .as_array()?
                .iter()
                .filter(|r| r["state"] == "running")
                .collect();
            let leader = v["leader"].as_u64()?;
            running
                .iter()
                .all(|r| {
                    r["leader"].as_u64() == Some(leader)
                        && r["heartbeat_age_ms"]
                            .as_u64()
                            .is_some_and(|a| Duration::from_millis(a) < elapsed)
                })
                .then_some(elapsed)
        },
    )
    .await
}

/// Kills the broker node with the most connections and brings it back, then the node leading
/// the reports queue: each time, reports are stored again within 5 s, another node leads the
/// queue, every replica hears a leader, no synced clock moves by 1 ms; the node, started
/// again, rejoins. One result line per fault.
async fn broker_drill(
    t: &Tsc,
    rt: &str,
    store: &RedisStore,
    master: &str,
    sampler: &Sampler,
) -> Vec<String> {
    let mut lines = vec![];
    for pick in ["most_connections", "reports_leader"] {
        let rows = brokers(t);
        let victim = match pick {
            "most_connections" => rows.iter().max_by_key(|r| r["connections"].as_u64()),
            _ => rows.iter().find(|r| r["leads_reports_queue"] == true),
        }
        .unwrap_or_else(|| panic!("no node for {pick}: {rows:?}"));
        let id = victim["id"].as_str().unwrap().to_string();
        let connections = victim["connections"].as_u64().unwrap();
        let led = victim["leads_reports_queue"] == true;
        println!("[failover] killing broker node {id} ({pick}, {connections} connections)");
        let (since, since_us) = (Instant::now(), SystemClock.now_us());
        t.ok(&["brokers", "kill", "-n", &id]);
        let stored = stored_since(sampler, since, since_us).await;
        // Another node leads the queue (a new leader if the victim led it); each look is a
        // few `rabbitmqctl` calls, a second or two, which the figure includes.
        let queue_leader = wait_for(
            Duration::from_secs(30),
            "another node leading the reports queue",
            || async {
                brokers(t)
                    .iter()
                    .any(|r| r["leads_reports_queue"] == true && r["id"] != id.as_str())
                    .then(|| since.elapsed())
            },
        )
        .await;
        let queue_leader = if led {
            format!("{:.1}", queue_leader.as_secs_f64())
        } else {
            "-".into()
        };
        let leader = leader_heard_since(t, since).await;
        // In sync through the fault, with the node still down.
        t.ok(&["wait", "--timeout", "60", "--bound-ms", "1"]);
        let down = worst(sampler, since);
        let back = Instant::now();
        t.ok(&["brokers", "start", "-n", &id]);
        wait_for(
            Duration::from_secs(60),
            "the node back in the cluster",
            || async {
                brokers(t)
                    .iter()
                    .any(|r| r["id"] == id.as_str() && r["in_cluster"] == true)
                    .then_some(())
            },
        )
        .await;
        settled(t, store, master).await;
        let line = format!(
            "fault={rt}_broker_kill pick={pick} node={id} connections={connections} \
             stored_again_s={:.1} new_queue_leader_s={queue_leader} leader_heard_s={:.1} \
             rejoin_s={:.1} max_error_us={}",
            stored.as_secs_f64(),
            leader.as_secs_f64(),
            back.elapsed().as_secs_f64(),
            down.max(worst(sampler, since))
        );
        println!("[failover] {line}");
        lines.push(line);
        assert!(
            stored <= Duration::from_secs(5),
            "{id}: stored again after {stored:?}"
        );
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_redis_and_broker_failover() {
    assert_rabbitmq_up();
    let t = Tsc::new("local", "10.238.0.0/24");
    let (store, master, redis_s) = failover(&t).await;
    let (_, sampled) = t.endpoints().await;
    let sampler = Sampler::start(sampled, 3);
    let mut results = vec![format!(
        "fault=local_redis_primary_kill stored_again_s={:.1}",
        redis_s.as_secs_f64()
    )];
    results.extend(broker_drill(&t, "local", &store, &master, &sampler).await);
    write_results("failover-local.txt", &results);
    // A replica that resynced wrote its file in its own directory, not `dump.rdb` in the
    // working directory, which every later redis-server started there would load.
    assert!(
        !std::path::Path::new("dump.rdb").exists(),
        "a redis-server wrote dump.rdb in {}",
        std::env::current_dir().unwrap().display()
    );
}

/// The leading replica, by `tsc servers list`: (id, epoch).
fn leader(t: &Tsc) -> Option<(u64, u64)> {
    let v = t.ok(&["--json", "servers", "list"]).json();
    let id = v["leader"].as_u64()?;
    let row = v["servers"].as_array()?.iter().find(|r| r["id"] == id)?;
    Some((id, row["epoch"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_failover_partition_and_rolling_restart() {
    assert_docker_answers();
    let t = Tsc::new("docker", "10.239.0.0/24");
    let (store, master, redis_s) = failover(&t).await;
    let mut results = vec![format!(
        "fault=docker_redis_primary_kill stored_again_s={:.1}",
        redis_s.as_secs_f64()
    )];
    let (_, sampled) = t.endpoints().await;
    let sampler = Sampler::start(sampled, 3);
    results.extend(broker_drill(&t, "docker", &store, &master, &sampler).await);
    let cfg = time_sync::runtime::cluster::ClusterConfig::load(t.home.path()).unwrap();
    let network = format!("ts-{}", cfg.cluster_id);
    let container = |role: &str, id: &str| format!("ts-{}-{role}-{id}", cfg.cluster_id);

    // The leader cut off for 20 s: the other replica leads with a later epoch; back, the cut
    // one follows it (it cannot have led on its side: it reached neither broker nor Redis).
    let (cut, epoch) = leader(&t).expect("a leader");
    let name = container("server", &format!("server-{cut}"));
    let ip = sh(
        "docker",
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ],
    );
    let ip = ip.trim().to_string();
    sh("docker", &["network", "disconnect", &network, &name]);
    let (since, since_us) = (Instant::now(), SystemClock.now_us());
    let took_over = wait_for(
        Duration::from_secs(30),
        "another replica leading",
        || async {
            let (id, e) = leader(&t)?;
            (id != cut && e > epoch).then(|| since.elapsed())
        },
    )
    .await;
    let stored = stored_since(&sampler, since, since_us).await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(since.elapsed())).await;
    sh(
        "docker",
        &["network", "connect", "--ip", &ip, &network, &name],
    );
    settled(&t, &store, &master).await;
    let (now, e) = leader(&t).expect("a leader");
    assert!(
        now != cut && e > epoch,
        "the cut replica leads again: {now} at {e}"
    );
    let line = format!(
        "fault=docker_leader_network_cut_20s new_leader_s={:.1} stored_again_s={:.1} max_error_us={}",
        took_over.as_secs_f64(),
        stored.as_secs_f64(),
        worst(&sampler, since)
    );
    println!("[failover] {line}");
    results.push(line);
    assert!(
        stored <= Duration::from_secs(5),
        "stored again after {stored:?}"
    );

    // Every component but the clients, one at a time (a Redis replica before the primary, so
    // that the replica named is still one).
    let primary = settled_primary(&t).expect("a primary");
    let replica = ["redis", "redis-1", "redis-2"]
        .into_iter()
        .find(|r| *r != primary)
        .unwrap();
    let steps: Vec<(String, Vec<Vec<String>>)> = vec![
        (
            format!("redis_replica {replica}"),
            vec![
                tsc_args(&["redis", "kill", "-n", replica]),
                tsc_args(&["redis", "start", "-n", replica]),
            ],
        ),
        (
            format!("redis_primary {primary}"),
            vec![tsc_args(&["redis", "kill", "-n", &primary])],
        ),
        (
            "sentinel sentinel-1".into(),
            vec![docker_args(&[
                "restart",
                &container("sentinel", "sentinel-1"),
            ])],
        ),
    ]
    .into_iter()
    .chain(["rabbitmq", "rabbitmq-2", "rabbitmq-3"].map(|b| {
        (
            format!("rabbitmq {b}"),
            vec![docker_args(&["restart", &container("rabbitmq", b)])],
        )
    }))
    .chain([
        (
            "server server-1".into(),
            vec![
                tsc_args(&["servers", "stop", "-s", "1"]),
                tsc_args(&["servers", "start", "-s", "1"]),
            ],
        ),
        (
            "server server-2".into(),
            vec![
                tsc_args(&["servers", "kill", "-s", "2"]),
                tsc_args(&["servers", "start", "-s", "2"]),
            ],
        ),
    ])
    .collect();
    for (what, cmds) in steps {
        println!("[failover] restarting {what}");
        let (since, since_us) = (Instant::now(), SystemClock.now_us());
        for c in &cmds {
            let args: Vec<&str> = c[1..].iter().map(String::as_str).collect();
            if c[0] == "docker" {
                sh("docker", &args);
            } else {
                t.ok(&args);
            }
        }
        if let Some(node) = what.strip_prefix("rabbitmq ") {
            // Back when it has rejoined the cluster (it boots for seconds after its start).
            wait_for(
                Duration::from_secs(60),
                "the broker node back in the cluster",
                || async {
                    brokers(&t)
                        .iter()
                        .any(|r| r["id"] == node && r["in_cluster"] == true)
                        .then_some(())
                },
            )
            .await;
        }
        if what.starts_with("redis_primary") {
            // Killed: promoted away from, then back as a replica.
            wait_for(
                Duration::from_secs(30),
                "the killed primary back",
                || async { (t.run(&["redis", "start", "-n", &primary]).code == 0).then_some(()) },
            )
            .await;
        }
        let back = Instant::now();
        stored_since(&sampler, back, SystemClock.now_us()).await;
        settled(&t, &store, &master).await;
        // The longest time without a newly stored report, from before the restart until now
        // (reports arrive every second, so 1 s is no gap at all).
        let s = sampler.since(since);
        let mut newest = since_us;
        let mut gap_us = 0;
        for x in &s {
            if x.newest_us > newest {
                gap_us = gap_us.max(x.newest_us - newest);
                newest = x.newest_us;
            }
        }
        let gap = Duration::from_micros(gap_us as u64);
        let down = back.duration_since(since);
        let line = format!(
            "fault=docker_restart component={} no_report_s={:.1} restart_s={:.1} max_error_us={}",
            what.replace(' ', ":"),
            gap.as_secs_f64(),
            down.as_secs_f64(),
            worst(&sampler, since)
        );
        println!("[failover] {line}");
        results.push(line);
        // Every component is one of several (three broker nodes, three Redis servers, two
        // replicas): none may stop the reports for 5 s.
        assert!(
            gap <= Duration::from_secs(5),
            "{what}: no report stored for {gap:?} (down {down:?})"
        );
    }
    write_results("failover-docker.txt", &results);
}

fn tsc_args(a: &[&str]) -> Vec<String> {
    std::iter::once("tsc")
        .chain(a.iter().copied())
        .map(String::from)
        .collect()
}

fn docker_args(a: &[&str]) -> Vec<String> {
    std::iter::once("docker")
        .chain(a.iter().copied())
        .map(String::from)
        .collect()
}
