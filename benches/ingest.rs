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
use time_sync::core::keyring::KeyRing;
use time_sync::core::protocol::{TimeReport, REPORTS_QUEUE};

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

/// A simulated client: its id, its address and its key.
type SimClient = (uuid::Uuid, std::net::IpAddr, KeyRing);

/// Publishes `count` reports, round robin over `clients`, each sealed with its client's key.
/// A client's `seq` starts at `first_seq` and grows by one per round, so none is a replay; each
/// client belongs to one flood only, so its reports reach the queue in order.
async fn flood(url: String, clients: &[SimClient], first_seq: u64, count: usize) {
    let conn = lapin::Connection::connect(&url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for n in 0..count {
        let (id, ip, ring) = &clients[n % clients.len()];
        let seq = first_seq + (n / clients.len()) as u64;
        let r = TimeReport {
            true_offset_us: Some(0),
            ..TimeReport::new(*id, *ip, 1_700_000_000_000_000 + n as i64, seq)
        };
        let sealed = ring.seal_from_client(&r).unwrap();
        time_sync::broker::publish_raw(&ch, "", REPORTS_QUEUE, &sealed, None)
            .await
            .unwrap();
    }
    // Publishes are asynchronous: a round trip makes sure everything reached the broker.
    ch.basic_qos(1, Default::default()).await.unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

/// Reads the server's `reports_stored` counter. The stats hash is found once (a SCAN), then
/// read directly: a SCAN per poll, every 20 ms, over the 20,000 keys of this run would load
/// Redis with the benchmark's own polling.
struct StoredCounter {
    store: RedisStore,
    key: Option<String>,
}

impl StoredCounter {
    async fn get(&mut self) -> u64 {
        if self.key.is_none() {
            let stats = self.store.server_stats().await.unwrap_or_default();
            self.key = stats
                .first()
                .map(|(id, _)| format!("{}{id}", time_sync::core::protocol::STATS_KEY_PREFIX));
        }
        let Some(key) = &self.key else { return 0 };
        let n: Option<u64> = redis::cmd("HGET")
            .arg(key)
            .arg("reports_stored")
            .query_async(&mut self.store.connection())
            .await
            .unwrap_or(None);
        n.unwrap_or(0)
    }

    async fn wait(&mut self, target: u64, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let n = self.get().await;
            if n >= target {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < timeout, "server stored only {n} of {target}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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
        "--key-dir",
        &s.server_keys(),
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::main]
async fn main() {
    let o = opts();
    assert!(o.clients >= 2, "--clients N needs N >= 2 (two publishers)");
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
    let clients: Vec<SimClient> = (0..o.clients)
        .map(|i| {
            let id = uuid::Uuid::from_u128(i as u128 + 1);
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).into();
            (id, ip, svc.keys.client_ring(&id))
        })
        .collect();
    // Two publishers, each with half of the clients and half of the reports.
    let (a, b) = clients.split_at(o.clients / 2);
    let half = o.reports / 2;
    // Seqs of the second batch start above every seq of the first.
    let next_seq = (half / a.len().min(b.len()).max(1)) as u64 + 2;
    // Drain: fill first, then start the server.
    let t = Instant::now();
    tokio::join!(
        flood(amqp.clone(), a, 1, half),
        flood(amqp.clone(), b, 1, o.reports - half)
    );
    let fill = t.elapsed();
    println!(
        "  filled queue: {:.0} reports/s published",
        o.reports as f64 / fill.as_secs_f64()
    );
    let args = server_args(&svc, o.workers);
    svc.spawn(env!("CARGO_BIN_EXE_ts-server"), &args);
    // Server start-up (connects) is excluded: time from the first stored report.
    let mut stored = StoredCounter {
        store: store.clone(),
        key: None,
    };
    let t_first = stored.wait(1, Duration::from_secs(30)).await;
    let _ = t_first;
    let t0 = Instant::now();
    let base = stored.get().await;
    let el = stored
        .wait(o.reports as u64, Duration::from_secs(300))
        .await;
    let drain_rate = (o.reports as u64 - base) as f64 / el.max(t0.elapsed()).as_secs_f64();
    println!("  drain: {drain_rate:.0} reports/s stored in Redis");

    // Live: publish while consuming (the reports that follow the first ones).
    let t = Instant::now();
    let before = stored.get().await;
    tokio::join!(
        flood(amqp.clone(), a, next_seq, half),
        flood(amqp.clone(), b, next_seq, o.reports - half)
    );
    stored
        .wait(before + o.reports as u64, Duration::from_secs(300))
        .await;
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
