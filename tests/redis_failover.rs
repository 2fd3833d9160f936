//! Redis with failover, through tsc, on both runtimes: `tsc bootstrap --redis-replicas 2`
//! starts a primary, two replicas and three Sentinels; `tsc redis kill -n 0` kills the primary;
//! the Sentinels promote a replica, the servers follow, and reports are stored again within
//! 5 s; `tsc redis start -n 0` brings the dead server back as a replica of the new primary.
//! Throughout, no synced clock steps by more than 1 ms, and afterwards there is one master and
//! one leader, the cluster healthy. Docker is required: if no daemon answers, that test fails
//! (CI starts one).

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use time_sync::cache::ReportStore;
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

async fn failover(t: &Tsc) {
    t.ok(&["bootstrap", "-s", "2", "-c", "3", "--redis-replicas", "2"]);
    t.ok(&["wait", "--timeout", "90", "--bound-ms", "1"]);
    let r = roles(t);
    assert_eq!(r.len(), 6, "three servers and three Sentinels: {r:?}");
    assert_eq!(settled_primary(t).as_deref(), Some("redis"), "{r:?}");
    let status = t.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert!(
        status.stdout.contains("redis-1:") && status.stdout.contains("sentinel-3:"),
        "{}",
        status.stdout
    );
    let (_, store) = t.endpoints().await;
    let master = t.master().expect("a master");

    t.ok(&["redis", "kill", "-n", "0"]);
    let killed = Instant::now();
    let killed_us = SystemClock.now_us();
    let stored_again = wait_for(
        Duration::from_secs(30),
        "a report stored after the kill",
        || async {
            let r = store.live_reports().await.ok()?;
            r.iter()
                .any(|r| r.received_at_us > killed_us)
                .then(|| killed.elapsed())
        },
    )
    .await;
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
    t.ok(&["wait", "--timeout", "60", "--bound-ms", "1"]);
    // `max_step_us`: the largest step a client made since its first sync.
    let reports = store.live_reports().await.unwrap();
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in &reports {
        let step = r.report.max_step_us.unwrap_or(0);
        assert!(step < 1_000, "a clock stepped {step} µs: {r:?}");
    }
    assert_eq!(t.master(), Some(master), "the same master throughout");
    let v = t.ok(&["--json", "status"]).json();
    assert_eq!(v["healthy"], true, "{v}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_redis_failover() {
    assert_rabbitmq_up();
    let t = Tsc::new("local", "10.238.0.0/24");
    failover(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_redis_failover() {
    assert_docker_answers();
    let t = Tsc::new("docker", "10.239.0.0/24");
    failover(&t).await;
}
