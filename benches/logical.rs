//! What logical time costs: stamping a message (Lamport + HLC, and a replica's vector clock),
//! taking in a received stamp, and how fast the event log takes events (a private Redis, the
//! real `XADD … MAXLEN ~` path).
//!
//! Run: `cargo bench --bench logical` (options: `-- --iterations N --events N`). Ends with one
//! line `logical stamp_ns=… observe_ns=… replica_stamp_ns=… replica_observe_ns=… events_per_s=…`.

#[path = "support.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;
use time_sync::core::logical::{NodeClocks, DEFAULT_MAX_OFFSET_US};
use time_sync::core::protocol::{Event, EventKind};

/// Mean ns per call of `f` over `n` calls.
fn time<T>(n: u64, mut f: impl FnMut(u64) -> T) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        black_box(f(i));
    }
    t.elapsed().as_secs_f64() * 1e9 / n as f64
}

#[tokio::main]
async fn main() {
    let n = support::arg("--iterations", 2_000_000);
    let events = support::arg("--events", 100_000);
    let pt = 1_796_000_000_000_000i64;
    let mut node = NodeClocks::new(DEFAULT_MAX_OFFSET_US);
    let stamp_ns = time(n, |i| node.tick(Some(pt + i as i64 / 4)));
    let mut peer = NodeClocks::new(DEFAULT_MAX_OFFSET_US);
    let remote = peer.tick(Some(pt));
    let observe_ns = time(n, |i| node.observe(&remote, Some(pt + i as i64 / 4)));
    // A replica of a three-replica group: its vector clock has three entries.
    let mut r1 = NodeClocks::replica(1, DEFAULT_MAX_OFFSET_US);
    let mut r2 = NodeClocks::replica(2, DEFAULT_MAX_OFFSET_US);
    let mut r3 = NodeClocks::replica(3, DEFAULT_MAX_OFFSET_US);
    let s2 = r2.tick(Some(pt));
    let s3 = r3.tick(Some(pt));
    r1.observe(&s2, Some(pt));
    r1.observe(&s3, Some(pt));
    let replica_stamp_ns = time(n / 4, |i| r1.tick(Some(pt + i as i64)));
    let replica_observe_ns = time(n / 4, |i| r1.observe(&s2, Some(pt + i as i64)));

    // The event log: a private Redis, batches of 256 as a replica writes them.
    let svc = support::Services::start("ts-bench-logical");
    let store = svc.store().await;
    let event = |i: u64| Event {
        kind: EventKind::ClientJoined,
        node: "server-1".into(),
        stamp: r1.tick(Some(pt + i as i64)),
        cause: None,
        text: format!("client {i} joined"),
        data: Default::default(),
    };
    let batch: Vec<Event> = (0..256).map(event).collect();
    let t = Instant::now();
    let mut written = 0;
    while written < events {
        store.append_events(&batch, 10_000).await.unwrap();
        written += batch.len() as u64;
    }
    let per_s = written as f64 / t.elapsed().as_secs_f64();
    let kept = store.events(None, 20_000).await.unwrap().len();

    println!("logical: {n} stamps, {written} events appended (log capped at ~10,000; {kept} kept)");
    println!("  stamp a message (Lamport + HLC):       {stamp_ns:7.1} ns");
    println!("  take in a received stamp:              {observe_ns:7.1} ns");
    println!("  replica stamp (+ 3-entry vector):      {replica_stamp_ns:7.1} ns");
    println!("  replica receipt (+ vector merge):      {replica_observe_ns:7.1} ns");
    println!("  event log appends:                     {per_s:7.0} events/s");
    println!(
        "logical stamp_ns={stamp_ns:.1} observe_ns={observe_ns:.1} replica_stamp_ns={replica_stamp_ns:.1} replica_observe_ns={replica_observe_ns:.1} events_per_s={per_s:.0} events={written}"
    );
}
