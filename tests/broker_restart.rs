//! Restarting RabbitMQ (stop_app/start_app: every connection dropped, port closed) while a
//! server and clients run. The broker is a RabbitMQ node of the test's own (own node name,
//! ports and data directory), so nobody else's broker is disturbed.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart() {
    let dir = tempdir::Dir::new("ts-broker");
    let node = RabbitNode::start(dir.path())
        .await
        .expect("a RabbitMQ node of the test's own");
    let mut env = TestEnv::on(&node);
    let store = env.store().await;
    env.server(60, &[]);
    let (_, a) = env.client("127.0.0.5", &[]);
    let (_, b) = env.client("127.0.0.6", &[]);
    wait_for(
        Duration::from_secs(20),
        "a master followed by both",
        || async {
            let r = live(&store).await;
            (r.len() == 2 && r.iter().all(|r| r.report.master_id == Some(a))).then_some(())
        },
    )
    .await;
    let published_before = stat(&store, "updates_published").await;
    node.stop_app().unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.start_app().unwrap();
    println!("broker was down for {:?}", down.elapsed());
    let back = time_sync::core::clock::SystemClock;
    let t_back = time_sync::core::clock::Clock::now_us(&back);
    // Reports stored after the broker came back, from both clients.
    wait_for(
        Duration::from_secs(30),
        "fresh reports from both clients",
        || async {
            let r = live(&store).await;
            let fresh = r.iter().filter(|r| r.received_at_us > t_back).count();
            (fresh == 2).then_some(())
        },
    )
    .await;
    // Updates flow again, and reach the clients' new queues.
    wait_for(
        Duration::from_secs(20),
        "updates after the restart",
        || async { (stat(&store, "updates_published").await > published_before + 2).then_some(()) },
    )
    .await;
    let log = env.path().join("clients").join(b.to_string());
    let applied_after = |text: &str| {
        text.lines()
            .filter(|l| l.contains("slewing toward master") || l.contains("stepped clock"))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["timestamp"].as_str().map(str::to_owned))
            .count()
    };
    let before = applied_after(&std::fs::read_to_string(&log).unwrap());
    wait_for(
        Duration::from_secs(20),
        "client applying updates again",
        || async {
            (applied_after(&std::fs::read_to_string(&log).unwrap()) >= before + 2).then_some(())
        },
    )
    .await;
    for p in env.procs.iter_mut() {
        assert!(p.is_running(), "{} survived", p.name);
    }
    let queues = env.queues();
    let names: Vec<&str> = queues.iter().map(|(q, _, _)| q.as_str()).collect();
    assert_eq!(
        client_queues(&queues),
        2,
        "one update queue per client, no orphans from the old connections: {names:?}"
    );
    assert!(
        names.contains(&"ts.reports") && names.contains(&"ts.rpc"),
        "{names:?}"
    );
    // A routine restart is no error: the AMQP library's own ERROR lines (about fifty of them,
    // restating the one error each session logs as a WARN) stay out of the logs.
    for dir in ["clients", "server"] {
        for f in std::fs::read_dir(env.path().join(dir)).unwrap() {
            let path = f.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let errors: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("\"level\":\"ERROR\"") || l.contains("returned us a message")
                })
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        }
    }
}

/// Two RabbitMQ nodes of the test's own, each with the same vhost, and every node given both
/// URLs (`--amqp-url A,B`): when A goes away (its application stopped), the server and the clients go on through B
/// within seconds, as they would through the next node of a RabbitMQ cluster; nothing steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_broker_url() {
    let dir = tempdir::Dir::new("ts-brokers");
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = tokio::join!(RabbitNode::start(&dir_a), RabbitNode::start(&dir_b));
    let (a, b) = (a.expect("node A"), b.expect("node B"));
    let mut env = TestEnv::on(&a);
    let on_b = b.vhost_named(&env.vhost.name).expect("the same vhost on B");
    let urls = format!("{},{}", env.vhost.url(), on_b.url());
    let store = env.store().await;
    env.server(3, &["--amqp-url", &urls]);
    let (_, m) = env.client_via(&urls, "127.0.0.5", &[]);
    env.client_via(&urls, "127.0.0.6", &[]);
    wait_for(
        Duration::from_secs(30),
        "both synced to the master",
        || async {
            let r = live(&store).await;
            // A follower's report has `max_step_us` once it is synced; the master's never does.
            (r.len() == 2
                && r.iter().all(|r| {
                    r.report.master_id == Some(m)
                        && (r.report.id == m || r.report.max_step_us.is_some())
                }))
            .then_some(())
        },
    )
    .await;
    assert!(on_b.queues().unwrap().is_empty(), "everyone starts on A");

    // As a node's death looks from outside: every connection dropped, the port closed.
    a.stop_app().unwrap();
    let started = Instant::now();
    wait_for(Duration::from_secs(30), "everyone on B", || async {
        let on = on_b.queues().ok()?;
        let reports = on.iter().find(|(q, _, _)| q == "ts.reports")?;
        (client_queues(&on) == 2 && reports.2 > 0).then_some(())
    })
    .await;
    let clock = time_sync::core::clock::SystemClock;
    let on_b_since = time_sync::core::clock::Clock::now_us(&clock);
    let published = stat(&store, "updates_published").await;
    wait_for(
        Duration::from_secs(20),
        "reports from both clients and updates, through B",
        || async {
            let r = live(&store).await;
            let fresh = r.iter().filter(|r| r.received_at_us > on_b_since).count();
            (fresh == 2 && stat(&store, "updates_published").await > published + 2).then_some(())
        },
    )
    .await;
    println!(
        "reports stored through B {:?} after A died",
        started.elapsed()
    );
    let r = live(&store).await;
    assert!(
        r.iter()
            .all(|r| r.report.master_id == Some(m) && r.report.max_step_us.unwrap_or(0) < 1_000),
        "still following the same master, no step over 1 ms: {r:?}"
    );
    for p in env.procs.iter_mut() {
        assert!(p.is_running(), "{} survived", p.name);
    }
}
