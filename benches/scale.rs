//! Scale benchmark: one ts-server, the machine's RabbitMQ, a private Redis, two lone clients
//! and a swarm (`ts-client --swarm`) making N clients in all, measured against the truth.
//!
//! The two lone clients have the lowest addresses (10.0.0.1, 10.0.0.2), the swarm the rest
//! (from 10.1.0.1), so the first lone client is master and the failover can kill a master
//! process without touching the swarm. Every client shares the host clock, so each report's
//! `true_offset_us` is exact and an error is a client's true offset minus the master's at the
//! same instant (interpolated between the master's reports).
//!
//! After every client is live and within 1 ms of the master, and a settle pause, a steady
//! window of `--duration` seconds measures: reports stored per second and as a share of the
//! reports due (N per report interval), the true errors (median, p99, max), whether the
//! numerically lowest live address is master, the CPU of the server, the broker and Redis (in
//! cores), and the swarm's resident memory. While clients join and converge, a line every 10 s
//! says where the load goes (queue depths, refusals, CPU); after the window, how many clients
//! were ever > 1 ms off, and the five worst. Then the master is killed and `failover_s` is the
//! time until another client is master (TTL 3 s, tick 1 s).
//!
//! Run: `cargo bench --bench scale -- --clients N --duration S` (also `--settle S`,
//! `--probe-max-ms MS` for every client, default 16000; `--connections C` and `--group G` for
//! the swarm). Ends with one line:
//! `scale clients=… reports_per_s=… stored_ratio=… median_us=… p99_us=… max_us=… master_ok=…
//! failover_s=… server_cpu=… broker_cpu=… redis_cpu=… swarm_cpu=… swarm_rss_mb=… swarm_kb_per_client=…`.

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{arg, broker_pid, rss_mb, Cpu, Services};
use time_sync::cache::ReportStore;
use time_sync::core::clock::{Clock, SystemClock};
use time_sync::core::master_election::ip_rank;
use time_sync::core::protocol::Algorithm;
use time_sync::measure::{Stats, TrueOffsets};
use uuid::Uuid;

/// Server TTL: failover in seconds.
const TTL_S: u64 = 3;
/// |error| below which a client counts as converged (µs).
const CONVERGED_US: i64 = 1000;
/// Lone clients, below the swarm.
const LONE: usize = 2;
/// The swarm's first address.
const SWARM_BASE: &str = "10.1.0.1";

/// Every 10 s while clients join and converge: where the load goes and where reports are lost
/// (queue depths, refusals, each process's CPU), so a run that falls short says why.
struct Progress {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    pids: [u32; 4],
    last: (Instant, Cpu, u64, u64),
}

impl Progress {
    async fn new(amqp: &str, pids: [u32; 4], store: &time_sync::cache::RedisStore) -> Progress {
        let conn = lapin::Connection::connect(amqp, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let counts = Self::counts(store).await;
        Progress {
            _conn: conn,
            ch,
            pids,
            last: (Instant::now(), Cpu::read(&pids), counts.0, counts.1),
        }
    }

    /// (reports stored, probes answered).
    async fn counts(store: &time_sync::cache::RedisStore) -> (u64, u64) {
        (
            store.stat_total("reports_stored").await.unwrap_or(0),
            store.stat_total("probes_answered").await.unwrap_or(0),
        )
    }

    /// Messages waiting in `queue` (a passive declare answers the count).
    async fn depth(&self, queue: &str) -> u32 {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.ch
            .queue_declare(queue.into(), passive, Default::default())
            .await
            .map_or(0, |q| q.message_count())
    }

    async fn print(&mut self, t0: Instant, store: &time_sync::cache::RedisStore, ttl: Duration) {
        if self.last.0.elapsed() < Duration::from_secs(10) {
            return;
        }
        let dt = self.last.0.elapsed().as_secs_f64();
        let (stored, probes) = Self::counts(store).await;
        let cpu = Cpu::read(&self.pids);
        let used = cpu.since(&self.last.1);
        let live = store.live_count(ttl).await.unwrap_or(0);
        let replays = store.stat_total("rejected_replay").await.unwrap_or(0);
        println!(
            "  {:.0} s: live {live}, stored {:.0}/s, probes answered {:.0}/s, queued reports {} probes {}, refused as out of order {replays}; CPU server {:.2} broker {:.2} redis {:.2} swarm {:.2}",
            t0.elapsed().as_secs_f64(),
            stored.saturating_sub(self.last.2) as f64 / dt,
            probes.saturating_sub(self.last.3) as f64 / dt,
            self.depth(time_sync::core::protocol::REPORTS_QUEUE).await,
            self.depth(time_sync::core::protocol::RPC_QUEUE).await,
            used[0],
            used[1],
            used[2],
            used[3],
        );
        self.last = (Instant::now(), cpu, stored, probes);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = arg("--clients", 1000) as usize;
    let duration = Duration::from_secs(arg("--duration", 60));
    let settle = Duration::from_secs(arg("--settle", 30));
    let probe_max = arg("--probe-max-ms", 16_000).to_string();
    let connections = arg("--connections", 4).to_string();
    let group = arg("--group", 100).to_string();
    assert!(n > LONE, "--clients must be above {LONE}");
    let mut svc = Services::start("ts-bench-scale");
    let store = svc.store().await;
    let amqp = svc.amqp_url();
    let server_args = svc.server_args(TTL_S, &[]);
    let server = svc.spawn(env!("CARGO_BIN_EXE_ts-server"), &server_args);
    let common = |key_dir: String| -> Vec<String> {
        [
            "--amqp-url",
            &amqp,
            "--no-log-file",
            "--skew",
            "3600",
            "--drift-ppm",
            "50",
            "--probe-max-ms",
            &probe_max,
            "--key-dir",
            &key_dir,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut lone = Vec::new();
    for i in 0..LONE {
        let id = Uuid::from_u128(0x5ca1e + i as u128);
        let mut args = common(svc.client_keys(id));
        args.extend([
            "--id".into(),
            id.to_string(),
            "--ip".into(),
            format!("10.0.0.{}", i + 1),
            "--seed".into(),
            i.to_string(),
        ]);
        lone.push((id, svc.spawn(env!("CARGO_BIN_EXE_ts-client"), &args)));
    }
    let swarm_ids: Vec<Uuid> = (0..n - LONE)
        .map(|i| Uuid::from_u128(0x5a_0000_0000 + i as u128))
        .collect();
    let swarm_keys = svc.dir().join("keys").join("swarm");
    time_sync::keys::write_ring(&swarm_keys, &svc.keys.swarm_ring(&swarm_ids)).unwrap();
    let mut args = common(swarm_keys.display().to_string());
    args.extend(
        [
            "--swarm",
            &(n - LONE).to_string(),
            "--swarm-ip-base",
            SWARM_BASE,
            "--swarm-connections",
            &connections,
            "--swarm-group",
            &group,
            "--seed",
            "42",
        ]
        .map(String::from),
    );
    let t0 = Instant::now();
    let swarm = svc.spawn(env!("CARGO_BIN_EXE_ts-client"), &args);
    let swarm_pid = svc.procs[swarm].pid();
    let server_pid = svc.procs[server].pid();
    let broker = broker_pid().expect("the machine's RabbitMQ (beam.smp) runs");
    let redis_pid = svc.redis.pid().expect("the bench's redis-server runs");
    let pids = [server_pid, broker, redis_pid, swarm_pid];
    let mut progress = Progress::new(&amqp, pids, &store).await;
    // Everyone live, then everyone within 1 ms.
    let ttl = Duration::from_secs(TTL_S);
    let join_by = Instant::now() + Duration::from_secs(60 + n as u64 / 100);
    while store.live_count(ttl).await.unwrap_or(0) < n {
        progress.print(t0, &store, ttl).await;
        assert!(
            Instant::now() < join_by,
            "only {} of {n} clients live after {:?} (logs: {})",
            store.live_count(ttl).await.unwrap_or(0),
            t0.elapsed(),
            svc.keep_logs().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let live_s = t0.elapsed().as_secs_f64();
    let mut series = TrueOffsets::default();
    let converge_by = Instant::now() + Duration::from_secs(120);
    while !series.converged(Algorithm::Master, n, CONVERGED_US, 2) && Instant::now() < converge_by {
        series.poll(&store).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress.print(t0, &store, ttl).await;
    }
    let converged_s = t0.elapsed().as_secs_f64();
    let settle_until = Instant::now() + settle;
    while Instant::now() < settle_until {
        series.poll(&store).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The steady window.
    let stored_before = store.stat_total("reports_stored").await.unwrap();
    let cpu_before = Cpu::read(&pids);
    let from = SystemClock.now_us();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        series.poll(&store).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let to = SystemClock.now_us();
    let cpu = Cpu::read(&pids).since(&cpu_before);
    let stored = store.stat_total("reports_stored").await.unwrap() - stored_before;
    let window_s = (to - from) as f64 / 1e6;
    let reports_per_s = stored as f64 / window_s;
    let stored_ratio = reports_per_s / n as f64;
    let errs = Stats::of(
        series
            .errors(Algorithm::Master)
            .into_iter()
            .filter(|(_, h, _)| *h >= from && *h <= to)
            .map(|(_, _, e)| e),
    );
    // Who the large errors belong to: a few clients, or the crowd?
    let mut worst: std::collections::HashMap<Uuid, (i64, usize, i64, i64)> = Default::default();
    for (id, h, e) in series.errors(Algorithm::Master) {
        if h < from || h > to {
            continue;
        }
        let w = worst.entry(id).or_insert((0, 0, e, e));
        w.0 = w.0.max(e.abs());
        w.1 += usize::from(e.abs() > CONVERGED_US);
        w.3 = e;
    }
    let mut worst: Vec<_> = worst.into_iter().collect();
    worst.sort_by_key(|(_, w)| -w.0);
    println!(
        "  clients with an error above {CONVERGED_US} µs in the window: {}",
        worst.iter().filter(|(_, w)| w.1 > 0).count()
    );
    for (id, (max, over, first, last)) in worst.iter().take(5) {
        println!("    {id}: max {max} µs, {over} samples above, first {first} µs, last {last} µs");
    }
    let rss = rss_mb(swarm_pid);
    let live = store.live_after(None, 1).await.unwrap();
    let master = store.master().await.unwrap().expect("a master");
    let master_ok = live
        .first()
        .is_some_and(|l| l.report.id == master.id && ip_rank(&l.report.ip) == ip_rank(&master.ip));
    // Failover: kill the master's process; time until another client is master.
    let failover = match lone.iter().find(|(id, _)| *id == master.id) {
        Some((_, idx)) => {
            let killed = Instant::now();
            svc.kill(*idx);
            let mut took = None;
            while killed.elapsed() < Duration::from_secs(TTL_S + 20) {
                if let Ok(Some(m)) = store.master().await {
                    if m.id != master.id {
                        took = Some(killed.elapsed());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            took.map_or("none".into(), |t| format!("{:.1}", t.as_secs_f64()))
        }
        None => "none".into(),
    };
    println!(
        "  live after {live_s:.1} s, converged after {converged_s:.1} s, steady window {window_s:.0} s, {} error samples",
        errs.samples
    );
    println!(
        "scale clients={n} reports_per_s={reports_per_s:.0} stored_ratio={stored_ratio:.4} median_us={} p99_us={} max_us={} master_ok={master_ok} failover_s={failover} server_cpu={:.2} broker_cpu={:.2} redis_cpu={:.2} swarm_cpu={:.2} swarm_rss_mb={rss:.0} swarm_kb_per_client={:.1}",
        errs.median_us,
        errs.p99_us,
        errs.max_us,
        cpu[0],
        cpu[1],
        cpu[2],
        cpu[3],
        rss * 1024.0 / (n - LONE) as f64,
    );
}
