//! Each synchronization algorithm converges against a real RabbitMQ and Redis, with real
//! ts-server and drifting ts-client processes, measured against the truth (the shared host
//! clock). The bounds are loose enough for a loaded CI machine; the sync benchmark measures the
//! real figures.

mod common;

use common::*;
use std::time::{Duration, Instant};
use time_sync::core::protocol::Algorithm;
use time_sync::measure::{Stats, TrueOffsets};

/// Starts a server with `algorithm` and four clients with different drifts, waits until every
/// client is within `bound_us` of the reference, then measures for `window`. The services stay
/// up until the returned [`TestEnv`] is dropped.
async fn converge(
    algorithm: Algorithm,
    extra: &[&str],
    bound_us: i64,
    window: Duration,
) -> (Stats, TrueOffsets, TestEnv, time_sync::cache::RedisStore) {
    let mut env = TestEnv::new();
    let store = env.store().await;
    let mut args = vec!["--algorithm", algorithm.as_str()];
    args.extend_from_slice(extra);
    env.server(10, &args);
    for (ip, drift) in [
        ("127.0.0.3", "-30"),
        ("127.0.0.4", "25"),
        ("127.0.0.5", "40"),
        ("127.0.0.6", "-45"),
    ] {
        env.client(ip, &["--drift-ppm", drift]);
    }
    let mut series = TrueOffsets::default();
    let started = Instant::now();
    // Poll until the latest error of every client is inside the bound.
    while !series.converged(algorithm, 4, bound_us, 1) {
        series.poll(&store).await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} did not converge: {:?}",
            algorithm.as_str(),
            series.errors(algorithm).last()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} converged after {:?}",
        algorithm.as_str(),
        started.elapsed()
    );
    let from = time_sync::core::clock::Clock::now_us(&time_sync::core::clock::SystemClock);
    let until = Instant::now() + window;
    while Instant::now() < until {
        series.poll(&store).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = Stats::of(
        series
            .errors(algorithm)
            .into_iter()
            .filter(|(_, h, _)| *h >= from)
            .map(|(_, _, e)| e),
    );
    println!("{}: {stats:?}", algorithm.as_str());
    assert!(stats.samples >= 10, "measured too little: {stats:?}");
    for p in env.procs.iter_mut() {
        assert!(p.is_running(), "{} survived", p.name);
    }
    (stats, series, env, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_algorithm_converges_within_a_millisecond() {
    let (stats, series, _env, _) =
        converge(Algorithm::Master, &[], 1000, Duration::from_secs(8)).await;
    assert!(stats.max_us < 1000, "{stats:?}");
    let steps = series.max_step.values().copied().max().unwrap_or(0);
    assert_eq!(steps, 0, "no synced client stepped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berkeley_converges_to_the_average() {
    let (stats, _, _env, store) = converge(
        Algorithm::Berkeley,
        &["--berkeley-interval-ms", "2000"],
        1000,
        Duration::from_secs(8),
    )
    .await;
    assert!(stats.max_us < 2000, "{stats:?}");
    // Every round is in the event log, with the adjustment each client was sent.
    let rounds: Vec<_> = store
        .events(None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.kind == time_sync::core::protocol::EventKind::BerkeleyRound)
        .collect();
    assert!(rounds.len() >= 3, "{} berkeley_round events", rounds.len());
    for (id, e) in &rounds {
        let adjusted = e.data["adjustments"].as_object().unwrap();
        assert_eq!(
            adjusted.len() as u64,
            e.data["readings"].as_u64().unwrap(),
            "{id}: one adjustment per reading: {:?}",
            e.data
        );
        let max = adjusted.values().map(|a| a.as_i64().unwrap().abs()).max();
        assert_eq!(e.data["max_adjust_us"].as_i64(), max, "{id}");
        assert_eq!(e.data["adjustments_omitted"], 0, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_follows_the_master_but_a_report_behind() {
    // The seed's behaviour: every client steps to the master's last *reported* time, so it
    // stays behind by that report's age (up to a report interval plus a tick).
    let (stats, series, _env, _) =
        converge(Algorithm::Naive, &[], 2_100_000, Duration::from_secs(6)).await;
    assert!(stats.max_us < 2_100_000, "{stats:?}");
    assert!(
        stats.median_us > 1000,
        "naive is expected to be far worse than master: {stats:?}"
    );
    assert!(
        series.max_step.values().any(|s| *s > 0),
        "naive keeps stepping"
    );
}
