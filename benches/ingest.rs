//! Ingest benchmark: how many reports per second one ts-server (4 workers) stores in Redis.
//!
//! Real RabbitMQ (must run on 127.0.0.1:5672; a fresh vhost is made and removed), a private
//! `redis-server`, and the release `ts-server` binary. Two figures:
//! - **drain**: the queue is filled with reports from many simulated clients first, then the
//!   server starts; reports stored / time to store them all. The server's own speed.
//! - **live**: publishers flood while the server consumes, all on this machine's two cores.
//!
//! Run: `cargo bench --bench ingest` (options: `-- --reports N --clients N --workers N`).

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};
use support::Services;
use time_sync::cache::RedisStore;
use time_sync::core::protocol::{self, TimeReport, REPORTS_QUEUE};

struct Opts {
    reports: usize,
    clients: usize,
    workers: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        reports: 200_000,
        clients: 10_000,
        workers: 4,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = || args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--reports" => o.reports = val().expect("--reports N"),
            "--clients" => o.clients = val().expect("--clients N"),
            "--workers" => o.workers = val().expect("--workers N"),
            _ => {} // cargo passes --bench
        }
        i += 1;
    }
    o
}

async fn flood(url: String, first: usize, count: usize, clients: usize) {
    let conn = lapin::Connection::connect(&url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let ids: Vec<uuid::Uuid> = (0..clients)
        .map(|i| uuid::Uuid::from_u128(i as u128 + 1))
        .collect();
    for n in first..first + count {
        let c = n % clients;
        let r = TimeReport {
            true_offset_us: Some(0),
            ..TimeReport::new(
                ids[c],
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + c as u32)),
                1_700_000_000_000_000 + n as i64,
                (n / clients) as u64 + 1,
            )
        };
        time_sync::broker::publish_raw(&ch, "", REPORTS_QUEUE, &protocol::encode(&r), None)
            .await
            .unwrap();
    }
    // Publishes are asynchronous: a round trip makes sure everything reached the broker.
    ch.basic_qos(1, Default::default()).await.unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

async fn stored(store: &RedisStore) -> u64 {
    store.stat_total("reports_stored").await.unwrap_or(0)
}

async fn wait_stored(store: &RedisStore, target: u64, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    while stored(store).await < target {
        assert!(
            t0.elapsed() < timeout,
            "server stored only {} of {target}",
            stored(store).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

fn server_args(s: &Services, workers: usize) -> Vec<String> {
    [
        "--amqp-url",
        &s.amqp_url(),
        "--redis-url",
        &s.redis_url(),
        "--no-log-file",
        "--tick-ms",
        "20",
        "--workers",
        &workers.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::main]
async fn main() {
    let o = opts();
    let mut svc = Services::start("ts-bench-ingest");
    let amqp = svc.amqp_url();
    let store = svc.store().await;
    // The queue must exist before the flood: the server declares it.
    {
        let conn = lapin::Connection::connect(&amqp, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        time_sync::broker::declare_reports_queue(&ch).await.unwrap();
        conn.close(200, "".into()).await.unwrap();
    }

    println!(
        "ingest: {} reports from {} simulated clients, ts-server --workers {}",
        o.reports, o.clients, o.workers
    );
    // Drain: fill first, then start the server.
    let t = Instant::now();
    let half = o.reports / 2;
    tokio::join!(
        flood(amqp.clone(), 0, half, o.clients),
        flood(amqp.clone(), half, o.reports - half, o.clients)
    );
    let fill = t.elapsed();
    println!(
        "  filled queue: {:.0} reports/s published",
        o.reports as f64 / fill.as_secs_f64()
    );
    let args = server_args(&svc, o.workers);
    svc.spawn(env!("CARGO_BIN_EXE_ts-server"), &args);
    // Server start-up (connects) is excluded: time from the first stored report.
    let t_first = wait_stored(&store, 1, Duration::from_secs(30)).await;
    let _ = t_first;
    let t0 = Instant::now();
    let base = stored(&store).await;
    let el = wait_stored(&store, o.reports as u64, Duration::from_secs(300)).await;
    let drain_rate = (o.reports as u64 - base) as f64 / el.max(t0.elapsed()).as_secs_f64();
    println!("  drain: {drain_rate:.0} reports/s stored in Redis");

    // Live: publish while consuming.
    let t = Instant::now();
    let before = stored(&store).await;
    tokio::join!(
        flood(amqp.clone(), 0, half, o.clients),
        flood(amqp.clone(), half, o.reports - half, o.clients)
    );
    wait_stored(&store, before + o.reports as u64, Duration::from_secs(300)).await;
    let live_rate = o.reports as f64 / t.elapsed().as_secs_f64();
    println!(
        "  live:  {live_rate:.0} reports/s published and stored (publishers on the same 2 cores)"
    );
    let mut conn = store.connection();
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    println!("  redis keys: {keys} (one per simulated client, plus master and stats)");
    println!(
        "ingest drain_per_s={drain_rate:.0} live_per_s={live_rate:.0} workers={} reports={}",
        o.workers, o.reports
    );
}
