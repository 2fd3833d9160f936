//! Sync accuracy benchmark: every algorithm against real RabbitMQ, Redis, ts-server and N
//! ts-client processes on this machine, measured against the truth.
//!
//! All clients share the host clock, so each report's `true_offset_us` (clock − host) is exact.
//! A client's error at host instant `h` is its true offset minus the reference's at the same
//! instant, the reference's being interpolated between its own reports. The reference is the
//! master for `master` and `naive`, and the mean of all clients for `berkeley` (which has no
//! master: it converges to the average).
//!
//! Per algorithm: convergence time (the last moment any client was ≥ 1 ms off, before the
//! steady window), the first moment every client was < 100 µs off (`reach_100us_s`) and the
//! last that any was not, before the steady window (`last_over_100us_s`), the largest error
//! while the estimators' windows fill (`settle_max_us`, the 240 s after convergence, as long as
//! the estimator's window), then median / p99 / p99.9 / max |error| over a steady-state
//! window, and the largest step any synced client took. For `master` it then kills the master
//! and reports how long the failover took and the largest step any client took across it.
//! Every report carries the client's own error bound ε (`max_error_us`): the bench gives its
//! median over the steady window (`eps_median_us`) and
//! how often |error| ≤ ε held over the whole run, convergence and failover included
//! (`eps_coverage`, of `eps_samples`, with the largest miss).
//!
//! Run: `cargo bench --bench sync` (options after `--`: `--clients N`, `--steady S` (seconds, or
//! `Ns` / `Nm`), `--settle S` (the pause before the steady window, default 240 s: shorter to
//! measure start-up quickly), `--algorithms master,naive,berkeley`, `--berkeley-interval-ms MS`,
//! `--plot DIR` to write an SVG of every client's error over time per algorithm (and the
//! samples as CSV: `t_s,ip,error_us,eps_us,est_err_us`, the last each client's own estimate
//! error against the reference; the master's rows have no `error_us`), `--stress` to run
//! `stress-ng --cpu 2` beside the cluster for the whole run: the loaded case, `--probe-max-ms
//! MS` for every client's probe ceiling, default 250: the ladder off).

#[path = "support.rs"]
mod support;

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};
use support::Services;
use time_sync::core::clock::{Clock, SystemClock};
use time_sync::core::protocol::Algorithm;
use time_sync::measure::{plot_lines, Stats, TrueOffsets};
use time_sync::runtime::services::Process;
use uuid::Uuid;

/// |error| below which a client counts as converged (µs).
const CONVERGED_US: i64 = 1000;
/// Longest wait for convergence before the steady window starts anyway.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between convergence and the steady window: the probe estimator's window (240 s,
/// `core::clock::estimator::MAX_SPAN_US`) fills first; until then its frequency comes from a
/// shorter span. The largest error in this pause is reported too (`settle_max_us`).
const SETTLE: Duration =
    Duration::from_micros(time_sync::core::clock::estimator::MAX_SPAN_US as u64);
/// Server TTL in the benchmark, so the failover takes seconds.
const TTL_S: u64 = 3;
/// Redis is read this often.
const POLL: Duration = Duration::from_millis(100);

struct Opts {
    clients: usize,
    steady: Duration,
    /// `--settle`: the pause between convergence and the steady window, [`SETTLE`] by default.
    /// A shorter one measures start-up (`reach_100us_s`, `last_over_100us_s`) in a minute, but
    /// the steady figures then come from a window that is not full yet.
    settle: Duration,
    algorithms: Vec<Algorithm>,
    berkeley_interval_ms: u64,
    plot: Option<std::path::PathBuf>,
    stress: bool,
    /// Every client's `--probe-max-ms` (250: the ladder off, the default).
    probe_max_ms: u64,
}

/// `300`, `300s` or `5m`.
fn duration_arg(v: &str) -> Duration {
    let bad = || panic!("--steady and --settle want seconds, Ns or Nm (got {v:?})");
    let (n, unit) = match v.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (v.strip_suffix('s').unwrap_or(v), 1),
    };
    Duration::from_secs(n.parse::<u64>().unwrap_or_else(|_| bad()) * unit)
}

/// A CPU hog on both cores (`stress-ng --cpu 2`), for the loaded case; its output goes to
/// `target/stress-ng.log`.
fn stress() -> Process {
    let log = concat!(env!("CARGO_MANIFEST_DIR"), "/target/stress-ng.log");
    let args = ["--cpu", "2", "--quiet"].map(String::from);
    Process::spawn(
        "stress-ng",
        Path::new("stress-ng"),
        &args,
        &[],
        Path::new(log),
    )
    .unwrap_or_else(|e| panic!("--stress needs stress-ng ({e}); scripts/setup.sh installs it"))
}

fn opts() -> Opts {
    let mut o = Opts {
        clients: 16,
        steady: Duration::from_secs(30),
        settle: SETTLE,
        algorithms: vec![Algorithm::Master, Algorithm::Naive, Algorithm::Berkeley],
        berkeley_interval_ms: 5000,
        plot: None,
        stress: false,
        probe_max_ms: 250,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = |i: usize| args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--clients" => o.clients = val(i).parse().expect("--clients N"),
            "--steady" => o.steady = duration_arg(&val(i)),
            "--settle" => o.settle = duration_arg(&val(i)),
            "--stress" => {
                o.stress = true;
                i += 1;
                continue;
            }
            "--berkeley-interval-ms" => o.berkeley_interval_ms = val(i).parse().expect("ms"),
            "--probe-max-ms" => o.probe_max_ms = val(i).parse().expect("--probe-max-ms MS"),
            "--plot" => o.plot = Some(val(i).into()),
            "--algorithms" => {
                o.algorithms = val(i)
                    .split(',')
                    .map(|a| match a {
                        "master" => Algorithm::Master,
                        "naive" => Algorithm::Naive,
                        "berkeley" => Algorithm::Berkeley,
                        other => panic!("unknown algorithm {other}"),
                    })
                    .collect()
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

struct Outcome {
    line: String,
}

async fn run(alg: Algorithm, o: &Opts, seed: u64) -> Outcome {
    let mut svc = Services::start(&format!("ts-bench-sync-{}", alg.as_str()));
    let store = svc.store().await;
    let amqp = svc.amqp_url();
    let server_args = svc.server_args(
        TTL_S,
        &[
            "--algorithm",
            alg.as_str(),
            "--berkeley-interval-ms",
            &o.berkeley_interval_ms.to_string(),
        ],
    );
    svc.spawn(env!("CARGO_BIN_EXE_ts-server"), &server_args);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let t0 = SystemClock.now_us();
    let started = Instant::now();
    let mut procs = Vec::new();
    for i in 0..o.clients {
        let id = Uuid::from_u128(0x7500 + i as u128);
        let args: Vec<String> = vec![
            "--amqp-url".into(),
            amqp.clone(),
            "--id".into(),
            id.to_string(),
            "--ip".into(),
            format!("127.0.0.{}", 10 + i),
            "--skew".into(),
            "3600".into(),
            "--seed".into(),
            (seed * 1000 + i as u64).to_string(),
            "--drift-ppm".into(),
            format!("{:.1}", rng.gen_range(-50.0..50.0)),
            "--no-log-file".into(),
            "--probe-max-ms".into(),
            o.probe_max_ms.to_string(),
            "--key-dir".into(),
            svc.client_keys(id),
        ];
        procs.push((id, svc.spawn(env!("CARGO_BIN_EXE_ts-client"), &args)));
    }
    let mut series = TrueOffsets::default();
    // Converge.
    while started.elapsed() < CONVERGE_TIMEOUT && !series.converged(alg, o.clients, CONVERGED_US, 3)
    {
        series.poll(&store).await;
        tokio::time::sleep(POLL).await;
    }
    let settle_until = Instant::now() + o.settle;
    while Instant::now() < settle_until {
        series.poll(&store).await;
        tokio::time::sleep(POLL).await;
    }
    // Steady window.
    let steady_from = SystemClock.now_us();
    let steady_until = Instant::now() + o.steady;
    while Instant::now() < steady_until {
        series.poll(&store).await;
        tokio::time::sleep(POLL).await;
    }
    let steady_to = SystemClock.now_us();
    let errs = series.errors(alg);
    let secs = |h: i64| format!("{:.1}", (h - t0) as f64 / 1e6);
    let converge_at = errs
        .iter()
        .filter(|(_, h, e)| *h < steady_from && e.abs() >= CONVERGED_US)
        .map(|(_, h, _)| *h)
        .max()
        .unwrap_or(t0);
    let reach_100us =
        reached(&errs, 100, expected(alg, o.clients)).map_or("none".to_string(), secs);
    // And the last moment before the steady window that any client was ≥ 100 µs off: after
    // it, every clock stayed within 100 µs.
    let last_over_100us = errs
        .iter()
        .filter(|(_, h, e)| *h < steady_from && e.abs() >= 100)
        .map(|(_, h, _)| *h)
        .max()
        .map_or("none".to_string(), secs);
    let still_off = errs
        .iter()
        .any(|(_, h, e)| *h >= steady_from && *h <= steady_to && e.abs() >= CONVERGED_US);
    let converge_s = if still_off {
        "none".to_string()
    } else {
        secs(converge_at)
    };
    let steady = Stats::of(
        errs.iter()
            .filter(|(_, h, _)| *h >= steady_from && *h <= steady_to)
            .map(|(_, _, e)| *e),
    );
    if steady.samples == 0 {
        let logs = svc.keep_logs();
        panic!(
            "{}: no error measured in the steady window (did the nodes start? their output is in {})",
            alg.as_str(),
            logs.display()
        );
    }
    let max_step = series.max_step.values().copied().max().unwrap_or(0);
    let settle_max = errs
        .iter()
        .filter(|(_, h, _)| *h > converge_at && *h < steady_from)
        .map(|(_, _, e)| e.abs())
        .max()
        .unwrap_or(0);
    // ε: its median over the steady window, and how often it held, from the first report that
    // had one (convergence included; the failover's are added below).
    let in_steady: Vec<(Uuid, i64, i64)> = errs
        .iter()
        .copied()
        .filter(|(_, h, _)| *h >= steady_from && *h <= steady_to)
        .collect();
    let eps_steady = Stats::of(series.bounds_of(&in_steady));
    let mut line = format!(
        "algorithm={} clients={} stress={} converge_s={converge_s} reach_100us_s={reach_100us} last_over_100us_s={last_over_100us} median_us={} p99_us={} p999_us={} max_us={} max_step_us={max_step} samples={} settle_max_us={settle_max} eps_median_us={}",
        alg.as_str(),
        o.clients,
        u8::from(o.stress),
        steady.median_us,
        steady.p99_us,
        steady.p999_us,
        steady.max_us,
        steady.samples,
        if eps_steady.samples == 0 {
            "none".to_string()
        } else {
            eps_steady.median_us.to_string()
        },
    );
    // Failover: kill the master; a new one takes over once the old one's key expires.
    if alg == Algorithm::Master {
        let old = series.masters.last().map(|(_, id)| *id);
        if let Some((_, idx)) = procs.iter().find(|(id, _)| Some(*id) == old) {
            let killed = Instant::now();
            let killed_us = SystemClock.now_us();
            svc.kill(*idx);
            let steps_before = series.max_step.clone();
            let mut failover = None;
            while killed.elapsed() < Duration::from_secs(TTL_S + 15) {
                series.poll(&store).await;
                if failover.is_none() && series.masters.last().map(|(_, id)| *id) != old {
                    failover = Some(killed.elapsed());
                }
                if failover.is_some_and(|f| killed.elapsed() > f + Duration::from_secs(10)) {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            let step = series
                .max_step
                .iter()
                .filter(|(id, s)| Some(**id) != old && steps_before.get(id) != Some(s))
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0);
            let after: Vec<i64> = series
                .errors(alg)
                .iter()
                .filter(|(id, h, _)| Some(*id) != old && *h > killed_us)
                .map(|(_, _, e)| e.abs())
                .collect();
            line.push_str(&format!(
                " failover_s={} failover_max_step_us={step} failover_max_us={}",
                failover.map_or("none".into(), |f| format!("{:.1}", f.as_secs_f64())),
                after.iter().max().copied().unwrap_or(0),
            ));
        }
    }
    if alg != Algorithm::Berkeley {
        let c = series.coverage(&series.errors(alg));
        line.push_str(&format!(
            " eps_coverage={} eps_samples={} eps_worst_miss_us={}",
            c.ratio(),
            c.bounded,
            c.worst_miss_us.max(0)
        ));
    }
    if let Some(dir) = &o.plot {
        std::fs::create_dir_all(dir).unwrap();
        // From convergence on: the initial hour-sized errors would flatten everything else.
        let plotted = plot_lines(&series, alg, t0, converge_at);
        let path = dir.join(format!("sync-{}.svg", alg.as_str()));
        let title = format!(
            "{} algorithm, {} clients: error vs reference",
            alg.as_str(),
            o.clients
        );
        std::fs::write(
            &path,
            time_sync::measure::plot::svg(&title, "error", &plotted),
        )
        .unwrap();
        println!("  wrote {}", path.display());
        // The same points as numbers, for a closer look: every error sample, its client and ε.
        let mut csv = String::from("t_s,ip,error_us,eps_us,est_err_us\n");
        // Read again: the failover's samples came after `errs`. The master's rows too (not
        // under `berkeley`, where every client has an error), with no error (it is the
        // reference) but its own estimate's error: what every follower inherits.
        let mut rows: Vec<(Uuid, i64, Option<i64>)> = series
            .errors(alg)
            .into_iter()
            .map(|(id, h, e)| (id, h, Some(e)))
            .collect();
        rows.extend(
            series
                .estimate_errors
                .keys()
                .filter(|&&(id, h)| alg != Algorithm::Berkeley && series.master_at(h) == Some(id))
                .map(|&(id, h)| (id, h, None)),
        );
        rows.sort_by_key(|&(_, h, _)| h);
        for (id, h, e) in rows {
            let ip = series
                .ips
                .get(&id)
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            let eps = series.bounds.get(&(id, h)).map(u64::to_string);
            let est = series.estimate_errors.get(&(id, h)).map(i64::to_string);
            let t = (h - t0) as f64 / 1e6;
            csv.push_str(&format!(
                "{t:.3},{ip},{},{},{}\n",
                e.map(|e| e.to_string()).unwrap_or_default(),
                eps.unwrap_or_default(),
                est.unwrap_or_default()
            ));
        }
        let path = path.with_extension("csv");
        std::fs::write(&path, csv).unwrap();
        println!("  wrote {}", path.display());
    }
    println!("  {line}");
    Outcome { line }
}

/// Clients whose errors are measured: all but the master, except under `berkeley`.
fn expected(alg: Algorithm, clients: usize) -> usize {
    if alg == Algorithm::Berkeley {
        clients
    } else {
        clients - 1
    }
}

/// The first host time at which the latest error of each of `clients` clients was below
/// `bound_us`.
fn reached(errs: &[(Uuid, i64, i64)], bound_us: i64, clients: usize) -> Option<i64> {
    let mut latest = std::collections::HashMap::new();
    for (id, h, e) in errs {
        latest.insert(*id, e.abs());
        if latest.len() >= clients && latest.values().all(|e| *e < bound_us) {
            return Some(*h);
        }
    }
    None
}

#[tokio::main]
async fn main() {
    let o = opts();
    println!(
        "sync: {} clients (±1 h skew, ±50 ppm drift), steady window {}s, berkeley interval {} ms{}",
        o.clients,
        o.steady.as_secs(),
        o.berkeley_interval_ms,
        if o.stress {
            ", stress-ng --cpu 2 beside"
        } else {
            ""
        }
    );
    let mut stress = o.stress.then(stress);
    let mut lines = Vec::new();
    for (i, alg) in o.algorithms.iter().enumerate() {
        println!("running {}...", alg.as_str());
        lines.push(run(*alg, &o, 42 + i as u64).await.line);
    }
    // SIGTERM, so that stress-ng stops its workers too.
    if let Some(p) = stress.as_mut() {
        p.terminate(Duration::from_secs(5));
    }
    println!();
    for l in lines {
        println!("{l}");
    }
}
