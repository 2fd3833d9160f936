//! docs/PROTOCOL.md is enough to write a compatible client: `examples/python_client.py` was
//! written from the document alone, and here it joins a real cluster beside `ts-client`, once as
//! a follower and once as the master.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn python() -> String {
    let ok = Command::new("python3")
        .args(["-c", "import pika"])
        .status()
        .map(|s| s.success());
    assert!(
        ok.unwrap_or(false),
        "python3 with pika is required (scripts/setup.sh installs it)"
    );
    "python3".into()
}

fn spawn_py(env: &TestEnv, ip: &str, id: uuid::Uuid, secs: u32) -> std::process::Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    Command::new(python())
        .args([
            script,
            "--amqp-url",
            &env.vhost.url(),
            "--ip",
            ip,
            "--id",
            &id.to_string(),
        ])
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

    // 2. Python master: a fresh server state with only the Python client, then a Rust follower.
    env.procs[rust_idx].kill();
    env.redis.restart().unwrap();
    let store = env.store().await;
    let py_id = uuid::Uuid::new_v4();
    let py = spawn_py(&env, "127.0.0.2", py_id, 15);
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
