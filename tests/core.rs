//! ts-server and ts-client as real processes against a real RabbitMQ and Redis.

mod common;

use common::*;
use std::time::{Duration, Instant};
use time_sync::core::protocol::{self, TimeReport, REPORTS_QUEUE};

/// Clocks must agree with the master within this bound (µs) once converged. Measured spreads on
/// this machine are quoted in README; the bound leaves room for a loaded CI box.
const SYNC_BOUND_US: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowest_ip_becomes_master_and_clocks_converge() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(60, &[]);
    let ips = ["127.0.0.20", "127.0.0.3", "127.0.0.12", "127.0.0.100"];
    let mut ids = Vec::new();
    for ip in ips {
        ids.push(env.client(ip, &[]).1);
    }
    let expected = ids[1];
    let m = wait_for(Duration::from_secs(20), "a master", || async {
        master(&store).await
    })
    .await;
    assert_eq!(
        m.id, expected,
        "127.0.0.3 is the lowest IP (numerically, not as text)"
    );
    let started = Instant::now();
    let spread = wait_for(
        Duration::from_secs(40),
        "clocks within the bound",
        || async {
            let r = live(&store).await;
            spread_us(&r, &m, ips.len()).filter(|s| *s < SYNC_BOUND_US)
        },
    )
    .await;
    println!(
        "converged: spread {spread} µs after {:?}",
        started.elapsed()
    );
    // Stays converged: sample for a few seconds.
    let mut worst = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = live(&store).await;
        let s = spread_us(&r, &m, ips.len()).expect("all clients follow the master");
        worst = worst.max(s);
    }
    println!("steady-state worst spread over 5 s: {worst} µs");
    assert!(worst < SYNC_BOUND_US, "spread {worst} µs");
    // Every follower states ε, its own bound on its error to the master, and it holds: the
    // true error (all clients share this host's clock) is within it. Until a follower's probes
    // span 8 s its frequency is unmeasured and ε counts 500 ppm for it (around a millisecond,
    // up and down with each correction); then it falls below 1 ms and stays there.
    wait_for(
        Duration::from_secs(30),
        "every follower stating a frequency and ε < 1 ms",
        || async {
            let r = live(&store).await;
            let stated = r
                .iter()
                .filter(|f| f.report.id != m.id)
                .filter(|f| f.report.ref_freq_ppm.is_some())
                .filter(|f| f.report.max_error_us.is_some_and(|e| e < 1000))
                .count();
            (stated + 1 == ips.len()).then_some(())
        },
    )
    .await;
    let (mut held, mut bounded) = (0, 0);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = live(&store).await;
        let mt = r.iter().find(|r| r.report.id == m.id).unwrap();
        assert_eq!(mt.report.max_error_us, Some(0), "the master's ε is 0");
        for f in r.iter().filter(|r| r.report.id != m.id) {
            let eps = f.report.max_error_us.expect("a synced follower states ε") as i64;
            assert!(eps > 0 && eps < 1000, "ε {eps} µs");
            let err = f.report.true_offset_us.unwrap() - mt.report.true_offset_us.unwrap();
            bounded += 1;
            held += usize::from(err.abs() <= eps + 50);
            println!("follower {}: true error {err} µs, ε {eps} µs", f.report.ip);
        }
    }
    // The two reports were taken up to a second apart: 50 µs for the master's drift meanwhile.
    assert!(
        held + 1 >= bounded,
        "ε held for {held} of {bounded} samples"
    );
    // The master reports itself as master (the seed's master said None).
    let r = live(&store).await;
    let mr = r.iter().find(|r| r.report.id == expected).unwrap();
    assert_eq!(mr.report.master_id, Some(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_master_replaced_after_ttl() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    let ttl = 2;
    env.server(ttl, &[]);
    let (first, first_id) = env.client("127.0.0.2", &[]);
    let (_, second_id) = env.client("127.0.0.4", &[]);
    env.client("127.0.0.9", &[]);
    wait_for(Duration::from_secs(20), "first master", || async {
        master(&store).await.filter(|m| m.id == first_id)
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        "every client following",
        || async {
            let r = live(&store).await;
            (r.len() == 3 && r.iter().all(|r| r.report.master_id == Some(first_id))).then_some(())
        },
    )
    .await;
    env.procs[first].kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(ttl + 10), "a new master", || async {
        master(&store).await.filter(|m| m.id == second_id)
    })
    .await;
    let failover = killed.elapsed();
    println!("failover: new master elected {failover:?} after the old one died (TTL {ttl} s)");
    assert!(
        failover >= Duration::from_secs(ttl - 1),
        "not replaced before its TTL ran out"
    );
    wait_for(
        Duration::from_secs(10),
        "survivors following the new master",
        || async {
            let r = live(&store).await;
            (r.len() == 2 && r.iter().all(|r| r.report.master_id == Some(second_id))).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_flood_rejected_counted_and_sync_continues() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(60, &[]);
    let (_, a) = env.client("127.0.0.5", &[]);
    env.client("127.0.0.6", &[]);
    wait_for(Duration::from_secs(20), "a master", || async {
        master(&store).await
    })
    .await;

    let conn = lapin::Connection::connect(&env.vhost.url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let good = TimeReport::new(uuid::Uuid::new_v4(), "127.0.0.77".parse().unwrap(), 0, 1);
    let mut wrong_version = serde_json::to_value(&good).unwrap();
    wrong_version["v"] = 99.into();
    // Well formed, but sealed with another client's key: the cluster secret derives a key per
    // client id, so one client cannot report as another.
    let impostor = env.keys.client_ring(&uuid::Uuid::new_v4());
    let forged = protocol::encode_sealed(&good, &impostor.client[0].kid, |d| {
        impostor.client[0].tag(d)
    });
    let kinds: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"\x80\x02}q\x00(U\x02idq\x01".to_vec(), // a pickle, as the seed sent
        format!("{{\"v\":{}}}", protocol::PROTOCOL_VERSION).into_bytes(), // right version, missing fields
        serde_json::to_vec(&wrong_version).unwrap(),
        vec![b'{'; protocol::MAX_MESSAGE_BYTES + 10],
        protocol::encode(&good), // well formed, unsigned
        forged,
    ];
    let per_kind = 400;
    for _ in 0..per_kind {
        for k in &kinds {
            time_sync::broker::publish_raw(&ch, "", REPORTS_QUEUE, k, None)
                .await
                .unwrap();
        }
    }
    let total = (per_kind * kinds.len()) as u64;
    let counted = wait_for(
        Duration::from_secs(30),
        "every bad message counted",
        || async {
            let mut n = 0;
            for k in [
                "malformed",
                "too_large",
                "bad_version",
                "unsigned",
                "bad_signature",
            ] {
                n += stat(&store, &format!("rejected_{k}")).await;
            }
            (n >= total).then_some(n)
        },
    )
    .await;
    assert_eq!(counted, total, "each bad message counted exactly once");
    assert_eq!(stat(&store, "rejected_too_large").await, per_kind as u64);
    assert_eq!(stat(&store, "rejected_unsigned").await, per_kind as u64);
    assert_eq!(
        stat(&store, "rejected_bad_signature").await,
        per_kind as u64
    );
    assert_eq!(stat(&store, "rejected_bad_version").await, per_kind as u64);
    // Nothing was requeued: the reports queue drains.
    wait_for(
        Duration::from_secs(10),
        "an empty reports queue",
        || async {
            env.queues()
                .iter()
                .any(|(q, n, _)| q == REPORTS_QUEUE && *n == 0)
                .then_some(())
        },
    )
    .await;
    // Sync continued: the server is alive and fresh reports keep arriving.
    assert!(env.procs[0].is_running(), "server survived the flood");
    let seq_now = live(&store)
        .await
        .iter()
        .find(|r| r.report.id == a)
        .map(|r| r.report.seq)
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "fresh reports after the flood",
        || async {
            let r = live(&store).await;
            r.iter()
                .find(|r| r.report.id == a)
                .filter(|r| r.report.seq >= seq_now + 2)
                .map(|_| ())
        },
    )
    .await;
    // Clients reject bad updates on their own queues the same way, and keep following.
    let (_, follower) = {
        let r = live(&store).await;
        let m = master(&store).await.unwrap();
        let f = r.iter().find(|r| r.report.id != m.id).unwrap().report.id;
        (m.id, f)
    };
    let flog = env.path().join("clients").join(follower.to_string());
    let applied = |text: &str| {
        text.lines()
            .filter(|l| l.contains("slewing toward master") || l.contains("stepped clock"))
            .count()
    };
    let applied_before = applied(&std::fs::read_to_string(&flog).unwrap());
    for k in &kinds {
        for _ in 0..20 {
            time_sync::broker::publish_raw(
                &ch,
                time_sync::core::protocol::UPDATES_EXCHANGE,
                "",
                k,
                None,
            )
            .await
            .unwrap();
        }
    }
    wait_for(
        Duration::from_secs(15),
        "client rejecting bad updates and applying good ones",
        || async {
            let text = std::fs::read_to_string(&flog).unwrap();
            (text.contains("rejected message") && applied(&text) >= applied_before + 2)
                .then_some(())
        },
    )
    .await;
    assert!(
        env.procs.iter_mut().all(|p| p.is_running()),
        "every process survived"
    );

    let log = std::fs::read_to_string(env.path().join("server").join("server-1.json")).unwrap();
    assert!(
        log.contains("rejected message"),
        "rejections are logged with a reason"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("rejected message"))
            .count()
            < 200,
        "rejection logging is rate-limited"
    );
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_redis_restart() {
    let mut env = TestEnv::new();
    env.server(60, &[]);
    let (_, a) = env.client("127.0.0.5", &[]);
    env.client("127.0.0.6", &[]);
    {
        let store = env.store().await;
        wait_for(Duration::from_secs(20), "a master", || async {
            master(&store).await
        })
        .await;
    }
    env.redis.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.redis.restart().unwrap();
    let store = env.store().await;
    // Redis came back empty: the server must store reports and elect again by itself.
    let m = wait_for(
        Duration::from_secs(20),
        "a master after the restart",
        || async { master(&store).await },
    )
    .await;
    assert_eq!(m.id, a);
    wait_for(
        Duration::from_secs(20),
        "both clients live again",
        || async { (live(&store).await.len() == 2).then_some(()) },
    )
    .await;
    for p in env.procs.iter_mut() {
        assert!(p.is_running(), "{} survived", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_leaves_no_client_queue() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    let server = env.server(60, &[]);
    let (client, _) = env.client("127.0.0.5", &[]);
    wait_for(Duration::from_secs(20), "a master", || async {
        master(&store).await
    })
    .await;
    assert_eq!(client_queues(&env.queues()), 1, "the client's own queue");
    let st = env.procs[client].terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "client exit status {st:?}");
    let st = env.procs[server].terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "server exit status {st:?}");
    let queues = env.queues();
    let mut names: Vec<&str> = queues.iter().map(|(q, _, _)| q.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [REPORTS_QUEUE, time_sync::core::protocol::RPC_QUEUE],
        "only the durable queues remain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_services_with_growing_backoff() {
    let env = TestEnv::new();
    let dead = free_port();
    let mut client = spawn(
        "ts-client",
        CLIENT_BIN,
        &[
            "--amqp-url".into(),
            format!("amqp://guest:guest@127.0.0.1:{dead}/%2f"),
            "--ip".into(),
            "127.0.0.8".into(),
            "--no-log-file".into(),
            "--key-dir".into(),
            env.client_keys(uuid::Uuid::new_v4()).display().to_string(),
        ],
        &env.path().join("client.out"),
    );
    let mut server = spawn(
        "ts-server",
        SERVER_BIN,
        &[
            "--amqp-url".into(),
            env.vhost.url(),
            "--redis-url".into(),
            format!("redis://127.0.0.1:{dead}/0"),
            "--no-log-file".into(),
            "--key-dir".into(),
            env.server_keys().display().to_string(),
        ],
        &env.path().join("server.out"),
    );
    let client_out = env.path().join("client.out");
    let server_out = env.path().join("server.out");
    wait_for(
        Duration::from_secs(15),
        "two growing retries from each",
        || async {
            let c = std::fs::read_to_string(&client_out).unwrap_or_default();
            let s = std::fs::read_to_string(&server_out).unwrap_or_default();
            let want1 = format!("Failed connecting to 127.0.0.1:{dead}, retrying in 1s");
            let want2 = format!("Failed connecting to 127.0.0.1:{dead}, retrying in 2s");
            (c.contains(&want1) && c.contains(&want2) && s.contains(&want1) && s.contains(&want2))
                .then_some(())
        },
    )
    .await;
    assert!(
        client.is_running() && server.is_running(),
        "they keep trying"
    );
    let exited = |p: &mut Process| p.terminate(Duration::from_secs(5)).map(|s| s.success());
    assert_eq!(exited(&mut client), Some(true));
    assert_eq!(exited(&mut server), Some(true));
}

#[test]
fn bad_flags_get_one_line_and_nonzero_exit() {
    let cases: &[(&str, &[&str], &str)] = &[
        (CLIENT_BIN, &["--skew", "-5"], "skew must be"),
        (CLIENT_BIN, &["--amqp-url", "http://x"], "amqp://"),
        (CLIENT_BIN, &["--ip", "10.0.0.300"], "invalid value"),
        (SERVER_BIN, &["--workers", "0"], "workers must be"),
        (SERVER_BIN, &["--ttl", "0"], "ttl must be"),
        (SERVER_BIN, &["--redis-url", "localhost"], "redis://"),
        // No keys, no start: nobody runs an unauthenticated node by mistake.
        (
            CLIENT_BIN,
            &["--key-dir", "/nonexistent", "--no-log-file"],
            "no client id",
        ),
        (
            CLIENT_BIN,
            &[
                "--key-dir",
                "/nonexistent",
                "--id",
                "6f1e1c52-54f4-4d5c-9a43-bb8f7d3a1e10",
                "--no-log-file",
            ],
            "no client key",
        ),
        (
            SERVER_BIN,
            &["--key-dir", "/nonexistent", "--no-log-file"],
            "no leader key",
        ),
    ];
    for (bin, args, needle) in cases {
        let out = std::process::Command::new(bin)
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.trim().lines().count() <= 3,
            "{args:?}: short error expected, got:\n{err}"
        );
    }
}
