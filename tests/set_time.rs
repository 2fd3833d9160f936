//! An operator sets a client's time (`tsc clients set-time`, the signed `set_time` message),
//! against a real cluster on the local runtime, and the cluster does what PROTOCOL.md §10.5
//! says: a shifted follower steps and comes back to the master within seconds; a shifted master
//! takes the whole cluster with it; under `berkeley`, the next rounds average the shift out.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;
use time_sync::core::protocol::{Algorithm, EventKind};
use time_sync::runtime::cluster::ClusterConfig;
use uuid::Uuid;

const S: i64 = 1_000_000;

/// Every live client's true offset (its clock minus the shared host clock), in µs.
async fn offsets(store: &time_sync::cache::RedisStore) -> HashMap<Uuid, i64> {
    live(store)
        .await
        .into_iter()
        .filter_map(|r| Some((r.report.id, r.report.true_offset_us?)))
        .collect()
}

/// Largest distance between two clients' clocks, in µs.
fn spread(o: &HashMap<Uuid, i64>) -> i64 {
    let (lo, hi) = (o.values().min(), o.values().max());
    lo.zip(hi).map_or(i64::MAX, |(lo, hi)| hi - lo)
}

/// Waits until every one of `n` clients is within 1 ms of every other; their offsets then.
async fn agree(store: &time_sync::cache::RedisStore, n: usize, what: &str) -> HashMap<Uuid, i64> {
    wait_for(Duration::from_secs(30), what, || async {
        let o = offsets(store).await;
        (o.len() == n && spread(&o) < 1_000).then_some(o)
    })
    .await
}

/// Waits for the event log to show that `client` stepped by exactly `step_us`.
async fn stepped(store: &time_sync::cache::RedisStore, client: &Uuid, step_us: i64) {
    let node = format!("client-{client}");
    wait_for(
        Duration::from_secs(10),
        "the step in the event log",
        || async {
            let events = store.events(None, 10_000).await.ok()?;
            events
                .iter()
                .find(|(_, e)| {
                    e.kind == EventKind::ClockStepped
                        && e.node == node
                        && e.data["step_us"].as_i64() == Some(step_us)
                })
                .map(|_| ())
        },
    )
    .await;
}

fn set_time(t: &Tsc, client: &Uuid, shift_s: &str) {
    let r = t.ok(&[
        "clients",
        "set-time",
        "-c",
        &client.to_string(),
        "--shift",
        shift_s,
    ]);
    assert!(
        r.stdout.contains("(command "),
        "names the command: {}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_follower_comes_back_and_a_shifted_master_moves_everyone() {
    let t = Tsc::local_synced("10.247.0.0/24", 1, 3, 2);
    let (_, store) = t.endpoints().await;
    let master: Uuid = t.master().expect("a master").parse().unwrap();
    let before = agree(&store, 3, "three synced clients").await;
    let follower = *before.keys().find(|id| **id != master).unwrap();

    // A follower shifted by +30 s steps there (its next report may already be back: the next
    // update, within a second, steps it back), then comes back to the master.
    set_time(&t, &follower, "30");
    stepped(&store, &follower, 30 * S).await;
    let back = agree(&store, 3, "the follower back with the master").await;
    assert!(
        (back[&master] - before[&master]).abs() < 5_000,
        "the master did not move: {} → {}",
        before[&master],
        back[&master]
    );

    // The master shifted by −20 s: every clock follows it.
    set_time(&t, &master, "-20");
    let after = wait_for(Duration::from_secs(30), "everyone 20 s back", || async {
        let o = offsets(&store).await;
        let moved = o.len() == 3
            && spread(&o) < 1_000
            && o.iter()
                .all(|(id, off)| (off - back[id] + 20 * S).abs() < S);
        moved.then_some(o)
    })
    .await;
    println!("before {back:?}\nafter  {after:?}");

    // The log tells it: the leader published each command, each client stepped once for it.
    let events = store.events(None, 10_000).await.unwrap();
    let of = |kind: EventKind| {
        events
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
    };
    let published = of(EventKind::TimeSet);
    assert_eq!(published.len(), 2, "{published:?}");
    for p in &published {
        let op = p.data["op_id"].as_str().unwrap();
        let client = p.data["client_id"].as_str().unwrap();
        let steps: Vec<_> = of(EventKind::ClockStepped)
            .into_iter()
            .filter(|e| e.data.get("op_id").and_then(|v| v.as_str()) == Some(op))
            .collect();
        assert_eq!(steps.len(), 1, "one step for {op}: {steps:?}");
        assert_eq!(steps[0].node, format!("client-{client}"));
        assert!(steps[0].stamp.lt > p.stamp.lt, "published, then applied");
    }
    t.ok(&["teardown"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_berkeley_a_shift_is_averaged_out_at_the_next_round() {
    assert_rabbitmq_up();
    let t = Tsc::new("local", "10.246.0.0/24");
    let mut cfg = ClusterConfig::load(t.home.path()).unwrap();
    cfg.server.algorithm = Algorithm::Berkeley;
    cfg.server.berkeley_interval_ms = 2_000;
    cfg.save().unwrap();
    t.ok(&["bootstrap", "-s", "1", "-c", "3", "-w", "2"]);
    let (_, store) = t.endpoints().await;
    let before = agree(&store, 3, "three clocks averaged together").await;
    let shifted = *before.keys().next().unwrap();

    set_time(&t, &shifted, "30");
    stepped(&store, &shifted, 30 * S).await;
    // The next rounds leave it out of the average (an outlier by 30 s) and adjust it back.
    let after = agree(&store, 3, "the shifted clock averaged back in").await;
    for (id, off) in &after {
        assert!(
            (off - before[id]).abs() < 50_000,
            "{id}: the others did not follow the shift ({} → {off})",
            before[id]
        );
    }
    t.ok(&["teardown"]);
}
