//! docs/PROTOCOL.md is enough to write a compatible client: `examples/python_client.py` was
//! written from the document alone, and here it joins a real cluster beside `ts-client`, once as
//! a follower and once as the master, as the confined client broker user, refusing forgeries.
//! Its self-test reproduces every sealed example of the document byte for byte.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn python() -> String {
    let ok = Command::new("python3")
        .args(["-c", "import pika, cryptography"])
        .status()
        .map(|s| s.success());
    assert!(
        ok.unwrap_or(false),
        "python3 with pika and cryptography is required (scripts/setup.sh installs them)"
    );
    "python3".into()
}

/// The Python client as the confined client user, its id read from its key directory's
/// `client.id`, its broker URL from the environment (no secret on a command line).
fn spawn_py(env: &TestEnv, ip: &str, id: uuid::Uuid, secs: u32) -> std::process::Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    let url = env
        .vhost
        .role_url(time_sync::runtime::services::BrokerRole::Client)
        .unwrap();
    Command::new(python())
        .env("TS_AMQP_URL", url)
        .args([script, "--ip", ip, "--key-dir"])
        .arg(env.client_keys(id))
        .args([
            "--initial-offset-ms",
            "500000",
            "--duration",
            &secs.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(env.path().join(format!("py-{ip}.err"))).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn python_client_reproduces_every_sealed_example_of_the_document() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    let out = Command::new(python())
        .args([script, "--self-test"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("self-test passed"), "{text}");
    println!("{}", text.trim());
}

/// Publishes two forged `master_update`s that would move every follower an hour ahead: one
/// signed by another cluster's leader key, one not signed at all.
async fn forge_updates(env: &TestEnv) -> (lapin::Connection, lapin::Channel) {
    use time_sync::core::protocol::{self, Algorithm, MasterUpdate, ToClient, PROTOCOL_VERSION};
    let now = time_sync::core::clock::Clock::now_us(&time_sync::core::clock::SystemClock);
    let update = ToClient::MasterUpdate(MasterUpdate {
        v: PROTOCOL_VERSION,
        server_id: uuid::Uuid::new_v4(),
        epoch: 1,
        seq: 1,
        master_id: uuid::Uuid::new_v4(),
        master_ip: "10.0.0.1".parse().unwrap(),
        master_time_us: now + 3_600_000_000,
        server_time_us: now,
        algorithm: Algorithm::Naive,
        master_ref_offset_us: None,
        master_ref_freq_ppm: None,
        master_stratum: Some(10),
        master_ref_error_us: None,
        stamp: Default::default(),
    });
    let other = ClusterKeys::generate("another cluster").server_ring();
    let conn = lapin::Connection::connect(&env.vhost.url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for m in [
        other.seal_to_clients(&update).unwrap(),
        protocol::encode(&update),
    ] {
        time_sync::broker::publish_raw(&ch, protocol::UPDATES_EXCHANGE, "", &m, None)
            .await
            .unwrap();
    }
    (conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_follows_a_rust_master_and_leads_rust_followers() {
    let mut env = TestEnv::new();
    let store = env.store().await;
    env.server(60, &[]);
    // 1. Rust master (lowest IP), Python follower.
    let (rust_idx, rust_id) = env.client("127.0.0.5", &[]);
    let py_id = uuid::Uuid::new_v4();
    let py = spawn_py(&env, "127.0.0.9", py_id, 12);
    let m = wait_for(
        Duration::from_secs(20),
        "the Rust client as master",
        || async { master(&store).await.filter(|m| m.id == rust_id) },
    )
    .await;
    let spread = wait_for(
        Duration::from_secs(20),
        "Python follower within 5 ms",
        || async { spread_us(&live(&store).await, &m, 2).filter(|s| *s < 5_000) },
    )
    .await;
    println!("python follower: |error| {spread} µs");
    // A forged update (+1 h) signed with a leader key of another cluster, and one unsigned:
    // the Python client refuses both, by reason, and its clock stays with the master.
    let _attacker = forge_updates(&env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spread = spread_us(&live(&store).await, &m, 2).expect("both clients report");
    assert!(spread < 5_000, "after the forgeries: |error| {spread} µs");
    let out = py.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["master_id"], rust_id.to_string());
    assert!(
        summary["updates_applied"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    let why = &summary["rejected_by_reason"];
    assert_eq!(
        why["unknown_key"], 1,
        "the other cluster's signature: {summary}"
    );
    assert_eq!(why["unsigned"], 1, "the unsigned update: {summary}");

    // 2. Python master: a fresh server state with only the Python client, then a Rust follower.
    env.procs[rust_idx].kill();
    env.redis.restart().unwrap();
    let store = env.store().await;
    let py_id = uuid::Uuid::new_v4();
    // It runs 30 s: long enough to stay the live master until the follower is checked, even
    // when electing it took a while (with 15 s the check timed out once under the full suite's
    // load, the likely reason; not shown).
    let py = spawn_py(&env, "127.0.0.2", py_id, 30);
    let m = wait_for(
        Duration::from_secs(20),
        "the Python client as master",
        || async { master(&store).await.filter(|m| m.id == py_id) },
    )
    .await;
    env.client("127.0.0.6", &[]);
    let spread = wait_for(
        Duration::from_secs(20),
        "Rust follower within 5 ms",
        || async { spread_us(&live(&store).await, &m, 2).filter(|s| *s < 5_000) },
    )
    .await;
    println!("rust follower of a python master: |error| {spread} µs");
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
}
