//! Ingest benchmark: how many reports per second one ts-server (4 workers) stores in Redis.
//!
//! Real RabbitMQ (must run on 127.0.0.1:5672; a fresh vhost is made and removed), a private
//! `redis-server`, and the release `ts-server` binary. First each component alone, to say where
//! the ceiling is:
//! - **broker alone**: a queue of reports drained by consumers that only acknowledge;
//! - **redis alone**: the server's store script called directly, as the workers call it;
//!
//! then the server, with the CPU each process used (cores):
//! - **drain**: the queue is filled with reports from many simulated clients first, then the
//!   server starts; reports stored / time to store them all. The server's own speed.
//! - **live**: publishers flood while the server consumes, all on this machine's two cores.
//!
//! - **latency**: publish → delivery of single messages, one at a time, through the reports
//!   queue as declared, and (on a cluster) through a transient classic queue as `ts.rpc` is.
//!
//! `-- --queue-type quorum` runs all of it on a RabbitMQ cluster of three local nodes of its own
//! (as `tsc bootstrap --brokers 3` makes; `--brokers 1`: one node of its own) with the reports
//! queue a quorum queue: the cost of a replicated queue that writes every message, transient or
//! not, to its Raft log. CPU figures for the broker are then the nodes' sum.
//!
//! Run: `cargo bench --bench ingest` (options: `-- --reports N --clients N --workers N
//! --queue-type classic|quorum --brokers 1|3`).

#[path = "support.rs"]
mod support;

use futures_util::StreamExt;
use std::time::{Duration, Instant};
use support::{Cpu, Services};
use time_sync::broker::QueueType;
use time_sync::cache::RedisStore;
use time_sync::cache::{ReportStore, Stored};
use time_sync::core::keyring::KeyRing;
use time_sync::core::protocol::{StoredReport, TimeReport, REPORTS_QUEUE};

struct Opts {
    reports: usize,
    clients: usize,
    workers: usize,
    queue_type: QueueType,
    /// Nodes of the benchmark's own RabbitMQ under `--queue-type quorum`.
    brokers: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        reports: 200_000,
        clients: 10_000,
        workers: 4,
        queue_type: QueueType::Classic,
        brokers: 3,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = || args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--reports" => o.reports = val().expect("--reports N"),
            "--clients" => o.clients = val().expect("--clients N"),
            "--workers" => o.workers = val().expect("--workers N"),
            "--brokers" => o.brokers = val().expect("--brokers N"),
            "--queue-type" => {
                o.queue_type = match args.get(i + 1).map(String::as_str) {
                    Some("classic") => QueueType::Classic,
                    Some("quorum") => QueueType::Quorum,
                    other => panic!("--queue-type classic|quorum (got {other:?})"),
                }
            }
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
async fn flood(url: String, queue: &str, clients: &[SimClient], first_seq: u64, count: usize) {
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
        time_sync::broker::publish_raw(&ch, "", queue, &sealed, None)
            .await
            .unwrap();
    }
    // Publishes are asynchronous: a round trip makes sure everything reached the broker.
    ch.basic_qos(1, Default::default()).await.unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

/// Reports per batch in the components-alone phases: the server's default prefetch, so a
/// batch is what one worker stores at once.
const BATCH: usize = 256;

/// The broker alone: fills `queue` with `count` reports, then drains it with `workers`
/// consumers that do nothing but acknowledge (one `multiple` ack per batch, as the server's
/// workers do). Returns reports/s and the CPU (cores) of the broker and of the consumers
/// (this process: lapin) while draining.
async fn broker_alone(
    svc: &Services,
    kind: QueueType,
    clients: &[SimClient],
    count: usize,
    workers: usize,
) -> (f64, f64, f64) {
    let url = &svc.amqp_url();
    let queue = "ts-bench-broker-alone";
    let conn = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Declared as the reports queue is.
    time_sync::broker::declare_replicated_queue(&ch, queue, kind)
        .await
        .unwrap();
    flood(url.to_string(), queue, clients, 1, count).await;
    // The broker's nodes, and this process (the consumers).
    let broker = svc.broker_pids();
    let pids: Vec<u32> = broker.iter().copied().chain([std::process::id()]).collect();
    let cpu0 = Cpu::read(&pids);
    let t = Instant::now();
    // Workers share the count; the last report delivered stops the clock.
    let delivered = std::sync::atomic::AtomicUsize::new(0);
    let finished = std::sync::OnceLock::new();
    let drains = (0..workers).map(|w| {
        let (conn, delivered, finished) = (&conn, &delivered, &finished);
        async move {
            let ch = conn.create_channel().await.unwrap();
            let no_ack = std::env::var("NOACK").is_ok();
            if !no_ack {
                ch.basic_qos(BATCH as u16, Default::default())
                    .await
                    .unwrap();
            }
            let mut consumer = ch
                .basic_consume(
                    queue.into(),
                    format!("drain-{w}").as_str().into(),
                    lapin::options::BasicConsumeOptions {
                        no_ack,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .unwrap();
            let mut n = 0;
            loop {
                let next = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await;
                let Ok(Some(Ok(d))) = next else {
                    if delivered.load(std::sync::atomic::Ordering::Relaxed) >= count {
                        break;
                    }
                    continue;
                };
                n += 1;
                let total = delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if total == count {
                    let _ = finished.set(Instant::now());
                }
                if n % BATCH == 0 {
                    d.acker
                        .ack(lapin::options::BasicAckOptions { multiple: true })
                        .await
                        .unwrap();
                }
                if total >= count {
                    break;
                }
            }
            let _ = ch.close(200, "".into()).await;
        }
    });
    futures_util::future::join_all(drains).await;
    let rate = count as f64 / (*finished.get().expect("all delivered") - t).as_secs_f64();
    let cpu = Cpu::read(&pids).since(&cpu0);
    ch.queue_delete(queue.into(), Default::default())
        .await
        .unwrap();
    conn.close(200, "".into()).await.unwrap();
    let (nodes, consumers) = cpu.split_at(broker.len());
    (rate, nodes.iter().sum(), consumers[0])
}

/// Messages timed one at a time in [`latency`].
const LATENCY_SAMPLES: usize = 2000;

/// Publish → delivery time of single messages through a fresh queue `name` (declared by
/// `declare`, deleted after): one message in flight at a time, each sent when the previous
/// one arrived, [`LATENCY_SAMPLES`] of them; (median, p99) in µs. One process publishes and
/// consumes, on one connection each, so one clock times both ends.
async fn latency<F, Fut>(url: &str, name: &str, declare: F) -> (u64, u64)
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (pc, cc) = (
        lapin::Connection::connect(url, Default::default())
            .await
            .unwrap(),
        lapin::Connection::connect(url, Default::default())
            .await
            .unwrap(),
    );
    let (pch, cch) = (
        pc.create_channel().await.unwrap(),
        cc.create_channel().await.unwrap(),
    );
    declare(pch.clone()).await;
    let mut consumer = time_sync::broker::consume_no_ack(&cch, name, "latency")
        .await
        .unwrap();
    let body = [0u8; 400]; // about a report's size
    let mut us: Vec<u64> = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES + 100 {
        let t = Instant::now();
        time_sync::broker::publish_raw(&pch, "", name, &body, None)
            .await
            .unwrap();
        consumer.next().await.expect("a delivery").unwrap();
        us.push(t.elapsed().as_micros() as u64);
    }
    // The first hundred warm the path up.
    let mut us = us.split_off(100);
    us.sort_unstable();
    pch.queue_delete(name.into(), Default::default())
        .await
        .unwrap();
    let _ = pc.close(200, "".into()).await;
    let _ = cc.close(200, "".into()).await;
    (us[us.len() / 2], us[us.len() * 99 / 100])
}

/// Redis alone: `count` reports stored through the server's own store script, in batches of
/// [`BATCH`] from `workers` concurrent tasks (as the server's workers call it). Clients here
/// are others than the runs' (ids above theirs), and the database is emptied after. Returns
/// reports/s and Redis's CPU (cores).
async fn redis_alone(
    store: &RedisStore,
    pid: u32,
    clients: usize,
    count: usize,
    workers: usize,
) -> (f64, f64) {
    let batches: Vec<Vec<StoredReport>> = (0..count)
        .map(|n| {
            let c = n % clients;
            let id = uuid::Uuid::from_u128((1u128 << 64) + c as u128);
            let ip = std::net::Ipv4Addr::from(0x0b00_0000 + c as u32).into();
            let report = TimeReport {
                true_offset_us: Some(0),
                ..TimeReport::new(id, ip, 1_700_000_000_000_000, 1 + (n / clients) as u64)
            };
            StoredReport {
                report,
                received_at_us: 1_700_000_000_000_000,
            }
        })
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[StoredReport]>::to_vec)
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let cpu0 = Cpu::read(&[pid]);
    let t = Instant::now();
    // Batches are taken in order, so a client's reports reach Redis in seq order (a client's
    // next report is `clients` reports, many batches, later).
    let tasks = (0..workers).map(|_| async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(batch) = batches.get(i) else { break };
            let out = store
                .store_reports(batch, Duration::from_secs(60))
                .await
                .unwrap();
            assert!(
                out.iter().all(|o| *o != Stored::Replay),
                "a replay in the Redis-alone phase"
            );
        }
    });
    futures_util::future::join_all(tasks).await;
    let rate = count as f64 / t.elapsed().as_secs_f64();
    let cpu = Cpu::read(&[pid]).since(&cpu0)[0];
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut store.connection())
        .await
        .unwrap();
    (rate, cpu)
}

/// Reads the server's `reports_stored` and `rejected_replay` counters: the reports it handled.
/// A report refused as a replay here is one that reached Redis after a later one of the same
/// client (competing workers: one held its batch while others stored the client's next
/// report); Redis kept the later one, as it should, so it counts as handled, and the run says
/// how many there were. The stats hash is found once (a SCAN), then read directly: a SCAN per
/// poll, every 20 ms, over the 20,000 keys of this run would load Redis with the benchmark's
/// own polling.
struct StoredCounter {
    store: RedisStore,
    key: Option<String>,
}

impl StoredCounter {
    /// Reports handled: stored, and refused as out of order.
    async fn get(&mut self) -> u64 {
        let (stored, late) = self.counts().await;
        stored + late
    }

    /// (stored, refused as out of order).
    async fn counts(&mut self) -> (u64, u64) {
        if self.key.is_none() {
            let stats = self.store.server_stats().await.unwrap_or_default();
            self.key = stats
                .first()
                .map(|(id, _)| format!("{}{id}", time_sync::core::protocol::STATS_KEY_PREFIX));
        }
        let Some(key) = &self.key else { return (0, 0) };
        let n: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(key)
            .arg("reports_stored")
            .arg("rejected_replay")
            .query_async(&mut self.store.connection())
            .await
            .unwrap_or_default();
        let at = |i: usize| n.get(i).copied().flatten().unwrap_or(0);
        (at(0), at(1))
    }

    /// Waits until `target` reports are handled; fails (keeping the server's log) if the count
    /// stands still for `stall`.
    async fn wait(&mut self, target: u64, stall: Duration, svc: &mut Services) -> Duration {
        let t0 = Instant::now();
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            let n = self.get().await;
            if n >= target {
                return t0.elapsed();
            }
            if n != last {
                (last, moved) = (n, Instant::now());
            }
            if moved.elapsed() > stall {
                panic!(
                    "server handled only {n} of {target}; logs kept in {}",
                    svc.keep_logs().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let o = opts();
    assert!(o.clients >= 2, "--clients N needs N >= 2 (two publishers)");
    let kind = o.queue_type;
    let mut svc = match kind {
        QueueType::Classic => Services::start("ts-bench-ingest"),
        QueueType::Quorum => Services::start_cluster("ts-bench-ingest", o.brokers).await,
    };
    let amqp = svc.amqp_url();
    let store = svc.store().await;
    println!(
        "ingest: {} reports from {} simulated clients, ts-server --workers {}, reports queue {kind} ({})",
        o.reports,
        o.clients,
        o.workers,
        match kind {
            QueueType::Classic => "the machine's broker".to_string(),
            QueueType::Quorum => format!("{} local node(s) of its own", o.brokers),
        }
    );
    // Latency first, on a quiet broker: the reports queue's kind, then (a cluster) a
    // transient classic queue, as `ts.rpc` is there.
    let (lat_p50, lat_p99) = latency(&amqp, "ts-bench-latency", |ch| async move {
        time_sync::broker::declare_replicated_queue(&ch, "ts-bench-latency", kind)
            .await
            .unwrap();
    })
    .await;
    println!("  latency: publish → delivery through a {kind} queue, median {lat_p50} µs, p99 {lat_p99} µs");
    let mut summary_latency =
        format!("latency_{kind}_p50_us={lat_p50} latency_{kind}_p99_us={lat_p99}");
    if kind == QueueType::Quorum {
        let name = "ts-bench-latency-transient";
        let (p50, p99) = latency(&amqp, name, |ch| async move {
            time_sync::broker::declare_queue(&ch, name, false, Default::default())
                .await
                .unwrap();
        })
        .await;
        println!("  latency: publish → delivery through a transient classic queue (ts.rpc's kind here), median {p50} µs, p99 {p99} µs");
        summary_latency +=
            &format!(" latency_transient_p50_us={p50} latency_transient_p99_us={p99}");
    }
    // The queue must exist before the flood: the server declares it.
    {
        let conn = lapin::Connection::connect(&amqp, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        time_sync::broker::declare_reports_queue(&ch, kind)
            .await
            .unwrap();
        conn.close(200, "".into()).await.unwrap();
    }

    let clients: Vec<SimClient> = (0..o.clients)
        .map(|i| {
            let id = uuid::Uuid::from_u128(i as u128 + 1);
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).into();
            (id, ip, svc.keys.client_ring(&id))
        })
        .collect();
    // Each component alone first: how fast can RabbitMQ deliver, and Redis store, with
    // nothing else running?
    let (broker_rate, broker_cpu, consumer_cpu) =
        broker_alone(&svc, kind, &clients, o.reports, o.workers).await;
    println!(
        "  broker alone: {broker_rate:.0} reports/s delivered and acked; CPU (cores) broker {broker_cpu:.2}, consumers {consumer_cpu:.2}"
    );
    let redis_pid = svc.redis.pid().expect("the private redis-server runs");
    let (redis_rate, redis_cpu) =
        redis_alone(&store, redis_pid, o.clients, o.reports, o.workers).await;
    println!("  redis alone:  {redis_rate:.0} reports/s stored by the store script; Redis CPU {redis_cpu:.2} cores");
    if std::env::var("ALONE_ONLY").is_ok() {
        return;
    }
    // Two publishers, each with half of the clients and half of the reports.
    let (a, b) = clients.split_at(o.clients / 2);
    let half = o.reports / 2;
    // Seqs of the second batch start above every seq of the first.
    let next_seq = (half / a.len().min(b.len()).max(1)) as u64 + 2;
    // Drain: fill first, then start the server.
    let t = Instant::now();
    tokio::join!(
        flood(amqp.clone(), REPORTS_QUEUE, a, 1, half),
        flood(amqp.clone(), REPORTS_QUEUE, b, 1, o.reports - half)
    );
    let fill = t.elapsed();
    println!(
        "  filled queue: {:.0} reports/s published",
        o.reports as f64 / fill.as_secs_f64()
    );
    let workers = o.workers.to_string();
    let args = svc.server_args(
        60,
        &[
            "--tick-ms",
            "20",
            "--workers",
            &workers,
            "--queue-type",
            kind.as_str(),
        ],
    );
    let server = svc.spawn(env!("CARGO_BIN_EXE_ts-server"), &args);
    let broker = svc.broker_pids();
    let pids: Vec<u32> = [svc.procs[server].pid()]
        .into_iter()
        .chain(broker.iter().copied())
        .chain([redis_pid])
        .collect();
    println!("  ts-server pid {} (for `perf record -p`)", pids[0]);
    // Server start-up (connects) is excluded: time from the first stored report.
    let mut stored = StoredCounter {
        store: store.clone(),
        key: None,
    };
    let t_first = stored.wait(1, Duration::from_secs(30), &mut svc).await;
    let _ = t_first;
    let t0 = Instant::now();
    let cpu_before = Cpu::read(&pids);
    let base = stored.get().await;
    let el = stored
        .wait(o.reports as u64, Duration::from_secs(15), &mut svc)
        .await;
    let drain_rate = (o.reports as u64 - base) as f64 / el.max(t0.elapsed()).as_secs_f64();
    let cpu = Cpu::read(&pids).since(&cpu_before);
    // Server, the broker's nodes together, Redis.
    let cpu = [
        cpu[0],
        cpu[1..=broker.len()].iter().sum(),
        cpu[broker.len() + 1],
    ];
    println!(
        "  drain: {drain_rate:.0} reports/s stored in Redis; CPU (cores) server {:.2}, broker {:.2}, redis {:.2}",
        cpu[0], cpu[1], cpu[2]
    );

    // Live: publish while consuming (the reports that follow the first ones).
    let t = Instant::now();
    let before = stored.get().await;
    tokio::join!(
        flood(amqp.clone(), REPORTS_QUEUE, a, next_seq, half),
        flood(amqp.clone(), REPORTS_QUEUE, b, next_seq, o.reports - half)
    );
    stored
        .wait(before + o.reports as u64, Duration::from_secs(15), &mut svc)
        .await;
    let live_rate = o.reports as f64 / t.elapsed().as_secs_f64();
    println!(
        "  live:  {live_rate:.0} reports/s published and stored (publishers on the same 2 cores)"
    );
    let mut conn = store.connection();
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    println!("  redis keys: {keys} (a report and an order key per simulated client, the live index, stats)");
    let (_, late) = stored.counts().await;
    println!("  out of order: {late} reports reached Redis after a later one of their client (refused, counted)");
    println!(
        "ingest queue_type={kind} brokers={} drain_per_s={drain_rate:.0} live_per_s={live_rate:.0} {summary_latency} workers={} reports={} drain_server_cpu={:.2} drain_broker_cpu={:.2} drain_redis_cpu={:.2} broker_alone_per_s={broker_rate:.0} broker_alone_cpu={broker_cpu:.2} redis_alone_per_s={redis_rate:.0} redis_alone_cpu={redis_cpu:.2} out_of_order={late}",
        if kind == QueueType::Quorum { o.brokers } else { 1 },
        o.workers, o.reports, cpu[0], cpu[1], cpu[2]
    );
}
