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
