//! The clients' NTP service against real NTP clients (Debian's `ntpdate -q` and `sntp`) and raw
//! UDP: a cluster's clients answer with their disciplined clocks (the offset a real client reads
//! is the client's true offset from the host clock), with the stratum, reference and leap
//! indicator docs/NTP.md specifies; bad requests get silence and are counted in the reports; an
//! address over its rate gets one `RATE` kiss; a client that is not synchronized says so and
//! real clients refuse it. The Docker runtime's NTP is checked in `tests/tsc.rs`'s flow.

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use time_sync::core::clock::{Clock, SystemClock};
use time_sync::core::ntp::{
    ntp_from_unix_us, unix_us_from_ntp, NtpStats, Packet, KISS_RATE, LOCAL_REFID, LOCAL_STRATUM,
    MAX_REQUEST_LEN, PRECISION, UNSYNCED_STRATUM,
};
use tokio::net::UdpSocket;

/// Local clusters of this file serve NTP on 127.0.0.20:123, 127.0.0.21:123, …: one at a time.
static PORT_123: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Host clock, µs since the Unix epoch.
fn host_us() -> i64 {
    SystemClock.now_us()
}

fn request(version: u8, mode: u8, transmit_ts: u64) -> Vec<u8> {
    Packet {
        version,
        mode,
        poll: 4,
        transmit_ts,
        ..Packet::default()
    }
    .encode()
    .to_vec()
}

/// A socket on loopback address `from`, so that each part of the test has its own rate bucket.
async fn socket(from: &str) -> UdpSocket {
    UdpSocket::bind(format!("{from}:0")).await.unwrap()
}

/// Sends `bytes` to `to`; the answer, if one comes within 300 ms.
async fn ask(s: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<Packet> {
    s.send_to(bytes, to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    assert_eq!(n, 48, "a reply is one NTP header");
    Some(Packet::decode(&buf[..n]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_ntp_clients_read_the_cluster_time() {
    let _port = PORT_123.lock().await;
    let rate = 2.0;
    let t = Tsc::local_synced_with("10.241.0.0/24", 1, 3, 1, |cfg| {
        cfg.client.ntp_listen = Some("0.0.0.0:123".parse().unwrap());
        cfg.client.ntp_rate = rate;
    });
    let (_, store) = t.endpoints().await;
    let reports = ntp_clients_agree(&t, &["ntpdate", "sntp"], LOCAL_STRATUM).await;
    let m = master(&store).await.expect("a master");

    // The fields of a reply, raw: a follower names its master and its measured uncertainty.
    let follower = reports.iter().find(|r| r.report.id != m.id).unwrap();
    let master_report = reports.iter().find(|r| r.report.id == m.id).unwrap();
    let to = SocketAddr::new(follower.report.ip, 123);
    let s = socket("127.0.0.201").await;
    let t1 = host_us();
    let tx = ntp_from_unix_us(t1);
    let p = ask(&s, to, &request(4, 3, tx)).await.expect("an answer");
    let t4 = host_us();
    assert_eq!((p.leap, p.version, p.mode), (0, 4, 4));
    assert_eq!(p.stratum, LOCAL_STRATUM + 1);
    assert_eq!(p.origin_ts, tx, "our transmit timestamp, echoed");
    assert_eq!(p.precision, PRECISION);
    let IpAddr::V4(mip) = m.ip else {
        panic!("IPv4 master")
    };
    assert_eq!(p.reference_id, mip.octets(), "the master's address");
    assert!(p.root_delay > 0, "a measured round trip to the reference");
    assert!(p.root_dispersion > 0, "a bound that grows with age");
    let (t2, t3) = (
        unix_us_from_ntp(p.receive_ts, t1),
        unix_us_from_ntp(p.transmit_ts, t1),
    );
    assert!(t3 >= t2 && unix_us_from_ntp(p.reference_ts, t1) <= t3);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let truth = report_after(&t, follower.report.id, 0)
        .await
        .report
        .true_offset_us
        .unwrap();
    println!(
        "raw v4 request: offset {offset} µs (true {truth}), round trip {} µs, root delay {} µs, \
         root dispersion {} µs",
        (t4 - t1) - (t3 - t2),
        (u64::from(p.root_delay) * 1_000_000) >> 16,
        (u64::from(p.root_dispersion) * 1_000_000) >> 16
    );
    assert!((offset - truth).abs() < 1000);
    // Its root dispersion is its ε, the bound it reports (docs/PROTOCOL.md §15.6), which
    // changes at each correction: compare with the reports around the query.
    let r1 = report_after(&t, follower.report.id, 0).await;
    let r2 = report_after(&t, follower.report.id, r1.report.seq).await;
    let eps: Vec<i64> = [&r1, &r2]
        .iter()
        .map(|r| r.report.max_error_us.expect("a synced follower states ε") as i64)
        .collect();
    let dispersion = ((u64::from(p.root_dispersion) * 1_000_000) >> 16) as i64;
    let (lo, hi) = (eps[0].min(eps[1]), eps[0].max(eps[1]));
    assert!(
        dispersion >= lo / 2 - 16 && dispersion <= 2 * hi + 16,
        "root dispersion {dispersion} µs, ε {eps:?} µs"
    );
    let pm = ask(
        &s,
        SocketAddr::new(master_report.report.ip, 123),
        &request(3, 3, tx + 1),
    )
    .await
    .expect("the master answers");
    assert_eq!((pm.version, pm.stratum), (3, LOCAL_STRATUM));
    assert_eq!((pm.reference_id, pm.root_delay), (LOCAL_REFID, 0));

    // Bad requests: silence, each counted by reason.
    let before = report_after(&t, follower.report.id, 0).await;
    let n0 = before.report.ntp.expect("ntp counters in reports");
    let bad = socket("127.0.0.202").await;
    let mut oversized = request(4, 3, 11);
    oversized.resize(MAX_REQUEST_LEN + 1, 0);
    let cases: [(&str, Vec<u8>); 7] = [
        ("short", vec![0x23; 20]),
        ("empty", vec![]),
        ("oversized", oversized),
        ("version 0", request(0, 3, 12)),
        ("version 7", request(7, 3, 13)),
        ("server mode", request(4, 4, 14)),
        ("zero transmit", request(4, 3, 0)),
    ];
    for (what, bytes) in &cases {
        assert_eq!(ask(&bad, to, bytes).await, None, "{what} gets no answer");
    }
    let control = request(2, 6, 15);
    assert_eq!(ask(&bad, to, &control).await, None, "control mode (6)");
    let once = request(4, 3, 0x1234_5678_9abc_def0);
    assert!(ask(&bad, to, &once).await.is_some());
    assert_eq!(ask(&bad, to, &once).await, None, "a replay gets no answer");

    // Over its rate an address gets its burst, one kiss, then silence.
    let greedy = socket("127.0.0.203").await;
    let mut answers = Vec::new();
    for i in 0..19u64 {
        answers.push(ask(&greedy, to, &request(4, 3, 1000 + i)).await);
    }
    let timed = answers
        .iter()
        .take_while(|a| a.is_some_and(|p| p.stratum != 0))
        .count();
    assert_eq!(timed, 16, "the burst");
    let kiss = answers[16].expect("a kiss");
    assert_eq!(
        (kiss.leap, kiss.stratum, kiss.reference_id),
        (3, 0, KISS_RATE)
    );
    assert_eq!(answers[17..], [None, None], "silence after the kiss");

    let after = wait_for(
        Duration::from_secs(5),
        "the counters in a report",
        || async {
            let r = report_after(&t, follower.report.id, before.report.seq).await;
            let n = r.report.ntp?;
            (n.rate_limited >= n0.rate_limited + 2).then_some(r)
        },
    )
    .await;
    let n = after.report.ntp.unwrap();
    println!("counters: {n:?}");
    let grew = |f: fn(&NtpStats) -> u64, by: u64| f(&n) - f(&n0) >= by;
    assert!(grew(|s| s.short, 2));
    assert!(grew(|s| s.oversized, 1));
    assert!(grew(|s| s.bad_version, 2));
    assert!(grew(|s| s.not_client_mode, 2));
    assert!(grew(|s| s.malformed, 1));
    assert!(grew(|s| s.replayed, 1));
    assert!(grew(|s| s.kissed, 1));
    assert!(grew(|s| s.answered, 17));
    // None of it moved the clock: still synced to the master, no step.
    let m_now = report_after(&t, m.id, 0).await;
    let err = after.report.true_offset_us.unwrap() - m_now.report.true_offset_us.unwrap();
    assert!(err.abs() < 1000, "true error {err} µs");
    assert_eq!(after.report.max_step_us, Some(0));
    let c = t.clients();
    let row = c
        .iter()
        .find(|c| c["id"] == follower.report.id.to_string())
        .unwrap();
    assert_eq!(row["stratum"], LOCAL_STRATUM + 1, "tsc shows the stratum");
}

/// A client without a server never synchronizes: it answers with the alarm and stratum 16,
/// and real NTP clients refuse to take its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynchronized_client_raises_the_alarm() {
    let mut env = TestEnv::new();
    let ip = "127.0.0.9";
    env.client(ip, &["--ntp-listen", &format!("{ip}:123")]);
    let to: SocketAddr = format!("{ip}:123").parse().unwrap();
    let s = socket("127.0.0.204").await;
    let mut n = 0u64;
    let p = wait_for(Duration::from_secs(10), "an answer", || {
        n += 1;
        let s = &s;
        let tx = ntp_from_unix_us(host_us()) + n;
        async move { ask(s, to, &request(4, 3, tx)).await }
    })
    .await;
    assert_eq!((p.leap, p.stratum), (3, UNSYNCED_STRATUM));
    for tool in ["ntpdate", "sntp"] {
        // ntpdig looks at the stratum before the leap indicator: either refuses it.
        let e = ntp_query(tool, ip).expect_err("refused");
        assert!(
            e.contains("stratum too high") || e.contains("leap not in sync"),
            "{tool}: {e}"
        );
    }
}

/// An NTP server that lies: the host's time plus `ahead_us`, claiming stratum 1. The cluster
/// must leave it out while two honest servers agree.
async fn liar(ahead_us: i64) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut buf = [0u8; 1100];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let Some(req) = Packet::decode(&buf[..n]) else {
                continue;
            };
            let now = ntp_from_unix_us(host_us() + ahead_us);
            let reply = Packet {
                leap: 0,
                version: req.version,
                mode: 4,
                stratum: 1,
                precision: -20,
                reference_id: *b"GPS\0",
                reference_ts: now,
                origin_ts: req.transmit_ts,
                receive_ts: now,
                transmit_ts: now,
                ..Packet::default()
            };
            let _ = s.send_to(&reply.encode(), from).await;
        }
    });
    addr
}

/// Every live client's true offset to the host clock (the host clock is chronyd's, so this is
/// each client's error to the upstream's time), with its report.
async fn true_offsets(store: &time_sync::cache::RedisStore) -> Vec<(String, i64)> {
    live(store)
        .await
        .into_iter()
        .filter_map(|r| Some((r.report.ip.to_string(), r.report.true_offset_us?)))
        .collect()
}

fn worst(offsets: &[(String, i64)]) -> i64 {
    offsets
        .iter()
        .map(|(_, o)| o.abs())
        .max()
        .unwrap_or(i64::MAX)
}

/// A cluster started an hour off, with two honest NTP servers and a liar as upstreams, ends on
/// the servers' time (this host's clock): every client within 1 ms 30 s after bootstrap, then
/// within 200 µs; the liar is a falseticker; the master serves stratum 4 (chronyd's 3 + 1) and
/// its followers 5. A master change keeps the cluster there. When the upstreams stop agreeing
/// (one honest server gone, the liar left), the master runs free: no step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_follows_its_ntp_upstreams_and_ignores_a_liar() {
    let _port = PORT_123.lock().await;
    let dir = tempdir::Dir::new("ts-ntp-upstream");
    let a = Chrony::start(dir.path(), "chrony-a", "127.0.0.1", 3);
    let b = Chrony::start(dir.path(), "chrony-b", "127.0.0.1", 3);
    let lie = liar(5_000_000).await;
    let t = Tsc::new("local", "10.242.0.0/24");
    let upstreams = vec![a.addr.clone(), lie.clone(), b.addr.clone()];
    let ups = upstreams.clone();
    t.edit_config(move |c| {
        c.client.skew = 3600.0;
        c.client.ntp_upstream = ups;
        c.client.ntp_listen = Some("0.0.0.0:123".parse().unwrap());
    });
    let started = std::time::Instant::now();
    t.ok(&["bootstrap", "-s", "1", "-c", "3", "-w", "1"]);
    let (_, store) = t.endpoints().await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(started.elapsed())).await;
    let at_30 = true_offsets(&store).await;
    println!("30 s after bootstrap, true offsets to chronyd's clock: {at_30:?}");
    assert_eq!(at_30.len(), 3);
    assert!(worst(&at_30) < 1000, "{at_30:?}");
    let settled = wait_for(
        Duration::from_secs(30),
        "every client within 200 µs",
        || async {
            let o = true_offsets(&store).await;
            (o.len() == 3 && worst(&o) < 200).then_some(o)
        },
    )
    .await;
    println!(
        "within 200 µs after {:.1} s: {settled:?}",
        started.elapsed().as_secs_f64()
    );

    // The master names its upstream; the liar is a falseticker; strata as NTP expects.
    let m = master(&store).await.unwrap();
    let mr = report_after(&t, m.id, 0).await.report;
    let state = |addr: &str| {
        mr.upstreams
            .iter()
            .find(|u| u.addr == addr)
            .map(|u| u.state)
            .unwrap()
    };
    use time_sync::core::upstream::State;
    assert_eq!(state(&lie), State::Falseticker, "{:?}", mr.upstreams);
    assert!(matches!(state(&a.addr), State::Selected | State::Candidate));
    assert!(matches!(state(&b.addr), State::Selected | State::Candidate));
    assert!(upstreams.contains(mr.reference.as_ref().unwrap()));
    assert_eq!(mr.stratum, Some(4));
    let mip = m.ip.to_string();
    assert_eq!(ntp_query("ntpdate", &mip).unwrap().stratum, 4);
    let st = t.ok(&["status"]).stdout;
    assert!(st.contains("Time:     NTP upstream 127.0.0.1:"), "{st}");
    let follower = live(&store)
        .await
        .into_iter()
        .find(|r| r.report.id != m.id)
        .unwrap();
    assert_eq!(follower.report.stratum, Some(5), "{:?}", follower.report);
    let f = ntp_query("ntpdate", &follower.report.ip.to_string()).unwrap();
    assert_eq!(f.stratum, 5);
    assert!(f.offset_us.abs() < 1000, "{f:?}");

    // A master change: the next master takes the upstreams over; nobody leaves 1 ms.
    t.ok(&["clients", "remove", "-c", &m.id.to_string()]);
    let changed = std::time::Instant::now();
    let mut worst_during = 0;
    let new = loop {
        let o = true_offsets(&store).await;
        worst_during = worst_during.max(worst(&o));
        if let Some(n) = master(&store).await.filter(|n| n.id != m.id) {
            if changed.elapsed() > Duration::from_secs(8) {
                break n;
            }
        }
        assert!(changed.elapsed() < Duration::from_secs(30), "no new master");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("master change: worst true offset {worst_during} µs meanwhile");
    assert!(worst_during < 1000);
    let o = wait_for(Duration::from_secs(30), "within 200 µs again", || async {
        let o = true_offsets(&store).await;
        (o.len() == 2 && worst(&o) < 200).then_some(o)
    })
    .await;
    println!("after the change: {o:?}");
    let nr = report_after(&t, new.id, 0).await.report;
    assert!(upstreams.contains(nr.reference.as_ref().unwrap()), "{nr:?}");

    // One honest server gone: the liar and the other disagree, nothing is selected, the master
    // runs free on its last frequency. No step, and the clocks stay close.
    let seq = report_after(&t, new.id, 0).await.report.seq;
    let steps_before: Vec<(uuid::Uuid, Option<i64>)> = live(&store)
        .await
        .into_iter()
        .map(|r| (r.report.id, r.report.max_step_us))
        .collect();
    drop(a);
    let free = wait_for(Duration::from_secs(20), "no upstream selected", || async {
        let r = report_after(&t, new.id, seq).await.report;
        (r.reference.as_deref() == Some("LOCL")).then_some(r)
    })
    .await;
    println!("running free: {:?}", free.upstreams);
    assert!(free.upstreams.iter().all(|u| u.state != State::Selected));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = true_offsets(&store).await;
    assert!(worst(&o) < 1000, "{o:?}");
    for (id, before) in steps_before {
        let now = report_after(&t, id, 0).await.report.max_step_us;
        assert_eq!(now, before, "client {id} stepped while the master ran free");
    }
    drop(b);
}
