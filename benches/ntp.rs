//! How fast one client answers NTP: the real service (`client::ntp::serve`, the socket and a
//! client core behind its lock) on a single-threaded runtime in one thread, and a load generator
//! in another that keeps a window of requests in flight on loopback, from one address, with the
//! rate limit off (a limit would cap any one address far below this).
//!
//! Service time is the reply's transmit minus receive timestamp (the client's clock, µs): the
//! time from taking the datagram off the socket to stamping the reply, lock and decision
//! included. Round trip is what the generator sees, queueing in the window included.
//!
//! Run: `cargo bench --bench ntp` (options: `-- --seconds S --window N`). Ends with one line
//! `ntp answered_per_s=… service_p50_us=… service_p99_us=… rtt_p50_us=… rtt_p99_us=… lost=…`.

#[path = "support.rs"]
mod support;

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time_sync::core::client::ClientCore;
use time_sync::core::clock::{Clock, Discipline, SystemClock, VirtualClock};
use time_sync::core::ntp::{ntp_from_unix_us, unix_us_from_ntp, Packet, PACKET_LEN};
use time_sync::measure::percentile;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn main() {
    let seconds = support::arg("--seconds", 5);
    let window = support::arg("--window", 32) as usize;
    let clock = SystemClock;
    let core = ClientCore::new(
        Uuid::new_v4(),
        "127.0.0.1".parse().unwrap(),
        VirtualClock::new(clock.now_us(), 1_500_000, 12.0),
        Discipline::default(),
        clock.now_us(),
        time_sync::core::logical::DEFAULT_MAX_OFFSET_US,
    );
    let core = Arc::new(Mutex::new(core));
    let shutdown = CancellationToken::new();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = time_sync::client::ntp::bind("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                addr_tx.send(socket.local_addr().unwrap()).unwrap();
                time_sync::client::ntp::serve(socket, core, SystemClock, 0.0, shutdown).await;
            })
        })
    };
    let to = addr_rx.recv().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock.connect(to).unwrap();

    // Requests carry a running number as their transmit timestamp: unique, so none is a replay,
    // and it says when each was sent.
    let base = ntp_from_unix_us(clock.now_us());
    let mut sent_at: Vec<Instant> = Vec::new();
    let send = |sent_at: &mut Vec<Instant>| {
        let n = sent_at.len() as u64;
        let req = Packet {
            version: 4,
            mode: 3,
            transmit_ts: base + n + 1,
            ..Packet::default()
        }
        .encode();
        sent_at.push(Instant::now());
        sock.send(&req).unwrap();
    };
    let (mut service, mut rtt) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 64];
    let mut lost = 0u64;
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let mut measured_from: Option<Instant> = None;
    for _ in 0..window {
        send(&mut sent_at);
    }
    while start.elapsed() < warmup + Duration::from_secs(seconds) {
        match sock.recv(&mut buf) {
            Ok(PACKET_LEN) => {
                let p = Packet::decode(&buf).unwrap();
                let i = (p.origin_ts - base - 1) as usize;
                if start.elapsed() >= warmup {
                    measured_from.get_or_insert_with(Instant::now);
                    let near = clock.now_us();
                    let (rx, tx) = (
                        unix_us_from_ntp(p.receive_ts, near),
                        unix_us_from_ntp(p.transmit_ts, near),
                    );
                    service.push(tx - rx);
                    rtt.push(sent_at[i].elapsed().as_micros() as i64);
                }
            }
            Ok(n) => panic!("a reply of {n} bytes"),
            Err(_) => lost += 1,
        }
        send(&mut sent_at);
    }
    let t0 = measured_from.expect("no reply at all: the service did not answer");
    let elapsed = t0.elapsed().as_secs_f64();
    shutdown.cancel();
    server.join().unwrap();
    let answered = service.len();
    assert!(answered > 0, "nothing was measured");
    let stats = core.lock().unwrap().ntp.expect("the service counts");
    assert_eq!(
        stats.refused(),
        0,
        "every request was well formed: {stats:?}"
    );
    service.sort_unstable();
    rtt.sort_unstable();
    let per_s = answered as f64 / elapsed;
    println!(
        "answered {answered} in {elapsed:.1} s from one address, window {window}; service \
         p50 {} µs p99 {} µs max {} µs; round trip p50 {} µs p99 {} µs; {lost} lost",
        percentile(&service, 0.5),
        percentile(&service, 0.99),
        service.last().unwrap(),
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99)
    );
    println!(
        "ntp answered_per_s={per_s:.0} service_p50_us={} service_p99_us={} rtt_p50_us={} \
         rtt_p99_us={} lost={lost}",
        percentile(&service, 0.5),
        percentile(&service, 0.99),
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99)
    );
}
