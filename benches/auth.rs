//! What authentication costs per message: signing and verifying leader messages (Ed25519),
//! sealing and opening client reports (HMAC-SHA256 with a derived key), opening control
//! messages; each through the real encode/decode path, on this machine's one core.
//!
//! Run: `cargo bench --bench auth` (option: `-- --iterations N`). Ends with one line
//! `auth sign_us=… verify_us=… report_seal_us=… report_open_us=… control_open_us=… …`.

use std::hint::black_box;
use std::time::Instant;
use time_sync::core::logical::{Hlc, Stamp};
use time_sync::core::protocol::{
    Algorithm, Heartbeat, MasterUpdate, ReplicaRole, TimeReport, ToClient, ToReplica,
    PROTOCOL_VERSION,
};
use time_sync::keys::ClusterKeys;
use uuid::Uuid;

fn iterations() -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Mean µs per call of `f` over `n` calls.
fn time<T>(n: u32, mut f: impl FnMut() -> T) -> f64 {
    for _ in 0..n / 10 {
        black_box(f());
    }
    let t = Instant::now();
    for _ in 0..n {
        black_box(f());
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let n = iterations();
    let keys = ClusterKeys::generate("token");
    let server = keys.server_ring();
    let id = Uuid::new_v4();
    let client = keys.client_ring(&id);
    let stamp = Stamp {
        lt: 123_456,
        hlc: Some(Hlc {
            us: 1_796_000_000_000_000,
            c: 3,
        }),
        vc: None,
    };
    let update = ToClient::MasterUpdate(MasterUpdate {
        v: PROTOCOL_VERSION,
        server_id: Uuid::new_v4(),
        epoch: 7,
        seq: 1_000,
        master_id: Uuid::new_v4(),
        master_ip: "10.251.0.20".parse().unwrap(),
        master_time_us: 1_796_000_000_000_000,
        server_time_us: 1_796_000_000_000_000,
        algorithm: Algorithm::Master,
        master_ref_offset_us: Some(-1234),
        master_ref_freq_ppm: Some(12.5),
        master_stratum: Some(10),
        master_ref_error_us: None,
        stamp: stamp.clone(),
    });
    let report = TimeReport {
        master_id: Some(Uuid::new_v4()),
        master_time_us: Some(1_796_000_000_000_000),
        true_offset_us: Some(-12),
        ref_offset_us: Some(-230),
        ref_freq_ppm: Some(-3.2),
        max_step_us: Some(0),
        ref_server_id: Some(Uuid::new_v4()),
        epoch: Some(7),
        stale_epoch_msgs: Some(0),
        rejected_msgs: Some(0),
        boot_us: 1_795_999_000_000_000,
        stamp: stamp.clone(),
        ..TimeReport::new(
            id,
            "10.251.0.21".parse().unwrap(),
            1_796_000_000_000_000,
            42,
        )
    };
    let heartbeat = ToReplica::Heartbeat(Heartbeat {
        v: PROTOCOL_VERSION,
        from: 2,
        priority: 0,
        role: ReplicaRole::Follower,
        epoch: 7,
        leader: Some(3),
        stamp,
    });
    let sealed_update = server.seal_to_clients(&update).unwrap();
    let sealed_report = client.seal_from_client(&report).unwrap();
    let sealed_control = server.seal_control(&heartbeat).unwrap();
    assert_eq!(client.open_from_leader(&sealed_update).unwrap(), update);
    assert_eq!(
        server
            .open_from_client::<TimeReport>(&sealed_report)
            .unwrap(),
        report
    );

    let plain_us = time(n, || {
        time_sync::core::protocol::decode::<ToClient>(&time_sync::core::protocol::encode(&update))
    });
    let sign = time(n, || server.seal_to_clients(&update).unwrap());
    let verify = time(n, || client.open_from_leader(&sealed_update).unwrap());
    let report_seal = time(n, || client.seal_from_client(&report).unwrap());
    let report_open = time(n, || {
        server
            .open_from_client::<TimeReport>(&sealed_report)
            .unwrap()
    });
    let control_open = time(n, || server.open_control(&sealed_control).unwrap());
    println!("auth: {n} iterations of each, one core");
    println!("  encode+decode, unsealed update:       {plain_us:8.2} µs");
    println!(
        "  seal a leader message (Ed25519 sign): {sign:8.2} µs   ({} bytes)",
        sealed_update.len()
    );
    println!("  open a leader message (verify):       {verify:8.2} µs");
    println!(
        "  seal a report (HMAC):                 {report_seal:8.2} µs   ({} bytes)",
        sealed_report.len()
    );
    println!("  open a report (derive key + HMAC):    {report_open:8.2} µs");
    println!("  open a control message (HMAC):        {control_open:8.2} µs");
    println!(
        "auth sign_us={sign:.2} verify_us={verify:.2} report_seal_us={report_seal:.2} report_open_us={report_open:.2} control_open_us={control_open:.2} unsealed_roundtrip_us={plain_us:.2} update_bytes={} report_bytes={}",
        sealed_update.len(),
        sealed_report.len()
    );
}
