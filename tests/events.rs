//! The cluster's story (issue 11): remove the master client, then kill the leader replica, and
//! read the event log back from every replica and from `tsc events`: both stories are there, in
//! an order consistent with causality.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use time_sync::core::logical::{Causality, Hlc, Stamp};
use time_sync::core::protocol::{Event, EventKind};

fn events_of(v: &Value) -> Vec<(String, Event)> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                serde_json::from_value(e["event"].clone()).unwrap(),
            )
        })
        .collect()
}

fn hlc(s: &Stamp) -> Option<Hlc> {
    s.hlc
}

fn data<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
    e.data.get(key).and_then(|v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_tells_both_stories_in_causal_order_on_every_replica() {
    let t = Tsc::local_synced("10.248.0.0/24", 3, 4, 2);
    let old_master = t.master().expect("a master");
    let (_, store) = t.endpoints().await;
    let epoch_before = store.epoch().await.unwrap();

    // Story 1: the master goes away; its report expires; a new master is elected.
    t.ok(&["clients", "remove", "-c", &old_master]);
    let new_master = wait_for(Duration::from_secs(20), "a new master", || async {
        t.master().filter(|m| *m != old_master)
    })
    .await;
    // Story 2: the leader dies; the others elect; a new epoch.
    t.ok(&["servers", "kill", "-s", "3"]);
    wait_for(Duration::from_secs(20), "a new leader epoch", || async {
        let s = t.servers();
        let rows = s["servers"].as_array().unwrap().clone();
        rows.iter()
            .find(|r| r["role"] == "leader" && r["epoch"].as_u64() > Some(epoch_before))
            .map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The log, as tsc tells it and as each surviving replica serves it.
    let told = t.ok(&["--json", "events"]).json();
    let events = events_of(&told);
    let servers = t.servers();
    for id in [1, 2] {
        let row = servers["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap();
        let addr = row["http"].as_str().unwrap();
        let (code, body) = http(addr, "GET", "/events?count=1000");
        assert_eq!(code, 200, "{body}");
        let served = events_of(&serde_json::from_str(&body).unwrap());
        let ids = |v: &[(String, Event)]| {
            let mut ids: Vec<String> = v.iter().map(|(i, _)| i.clone()).collect();
            ids.sort();
            ids
        };
        let mine = ids(&served);
        assert!(
            ids(&events).iter().all(|i| mine.contains(i)),
            "replica {id} serves the whole log"
        );
    }
    let pos = |pred: &dyn Fn(&Event) -> bool| events.iter().position(|(_, e)| pred(e));

    // Story 1, in order: the old master left, then the new one was elected in its place.
    let left = pos(&|e| {
        e.kind == EventKind::ClientLeft && data(e, "client_id") == Some(old_master.as_str())
    })
    .expect("the old master's leaving");
    let elected = pos(&|e| {
        e.kind == EventKind::MasterElected
            && data(e, "master_id") == Some(new_master.as_str())
            && data(e, "previous") == Some(old_master.as_str())
    })
    .expect("the new master's election, naming the old one");
    assert!(left < elected, "left before the new election");
    // Story 2: an election started after the kill, and a leader took a new epoch after it.
    let new_epoch = pos(&|e| {
        e.kind == EventKind::LeaderElected
            && e.data.get("epoch").and_then(Value::as_u64) > Some(epoch_before)
    })
    .expect("a leader with a new epoch");
    let started = events[..new_epoch]
        .iter()
        .rposition(|(_, e)| e.kind == EventKind::ElectionStarted)
        .expect("an election before the new leader");
    assert!(started < new_epoch);

    // Causality, checked on every event: a cause comes before what it caused, by every clock.
    let mut checked_causes = 0;
    for (id, e) in &events {
        if let Some(c) = &e.cause {
            assert!(
                c.lt < e.stamp.lt,
                "{id}: cause lt {} < {}",
                c.lt,
                e.stamp.lt
            );
            if let (Some(ch), Some(eh)) = (hlc(c), hlc(&e.stamp)) {
                assert!(ch < eh, "{id}: cause hlc {ch} < {eh}");
            }
            checked_causes += 1;
        }
    }
    assert!(
        checked_causes > 5,
        "only {checked_causes} events had a cause"
    );
    // Events ordered by vector clock are ordered the same by HLC and by Lamport.
    let with_vc: Vec<&(String, Event)> = events
        .iter()
        .filter(|(_, e)| e.stamp.vc.is_some())
        .collect();
    let mut ordered = 0;
    for a in &with_vc {
        for b in &with_vc {
            let (va, vb) = (
                a.1.stamp.vc.as_ref().unwrap(),
                b.1.stamp.vc.as_ref().unwrap(),
            );
            if va.compare(vb) == Causality::Before {
                assert!(
                    a.1.stamp.lt < b.1.stamp.lt,
                    "{} before {} by VC, not by Lamport",
                    a.0,
                    b.0
                );
                assert!(
                    hlc(&a.1.stamp) < hlc(&b.1.stamp),
                    "{} before {} by VC, not by HLC",
                    a.0,
                    b.0
                );
                ordered += 1;
            }
        }
    }
    assert!(ordered > 10, "{ordered} ordered pairs");
    // Concurrent elections are reported as such, and only those.
    let reported: BTreeMap<String, Vec<String>> = told["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let others = e["concurrent_with"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (e["id"].as_str().unwrap().to_string(), others)
        })
        .collect();
    let elections: Vec<&(String, Event)> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::ElectionStarted)
        .collect();
    let mut concurrent = 0;
    for a in &elections {
        for b in &elections {
            if a.0 == b.0 || a.1.node == b.1.node {
                continue;
            }
            let c =
                a.1.stamp
                    .vc
                    .as_ref()
                    .unwrap()
                    .compare(b.1.stamp.vc.as_ref().unwrap());
            let said = reported[&a.0].contains(&b.0);
            assert_eq!(
                said,
                c == Causality::Concurrent,
                "{} vs {}: {c:?}",
                a.0,
                b.0
            );
            concurrent += usize::from(said);
        }
    }
    println!(
        "{} events, {checked_causes} with a cause, {ordered} ordered replica pairs, {} concurrent election pairs",
        events.len(),
        concurrent / 2
    );

    // The master's story, for people.
    let story = t.ok(&["events", "--explain-master"]).stdout;
    println!("{story}");
    assert!(story.contains(&format!("Master {new_master}")), "{story}");
    assert!(
        story.contains(&format!("Before it: {old_master} was master")),
        "{story}"
    );
    assert!(story.contains("left at"), "{story}");
    t.ok(&["teardown"]);
}
