//! What a client serving NTP reads from anyone: UDP datagrams. The input is a sequence of
//! datagrams (each: one byte for the source address, one for the time step, two for the length,
//! then the bytes) fed to one responder with a rate limit, so replays, rates and kisses are
//! reached too. Oracles: nothing panics; every request is counted exactly once; an answer is a
//! 48-byte server (or kiss) reply of the request's version that echoes its transmit timestamp.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use time_sync::core::ntp::{Answer, Packet, Responder, Source};

const T0: i64 = 1_796_184_725_017_278;

fuzz_target!(|data: &[u8]| {
    let source = Source {
        synced: data.first().is_some_and(|b| b & 1 == 1),
        stratum: 11,
        reference_id: [10, 0, 0, 2],
        reference_us: T0 - 1_000_000,
        root_delay_us: 300,
        root_dispersion_us: 160,
    };
    let mut r = Responder::new(4.0);
    let mut now = T0;
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 4 {
        let from = IpAddr::from([10, 0, 0, rest[0] % 4]);
        now += i64::from(rest[1]) * 10_000;
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let bytes = &rest[4..4 + len];
        rest = &rest[4 + len..];
        let before = r.stats.answered + r.stats.kissed + r.stats.refused();
        let answer = r.handle(bytes, from, now, &source, || now + 3);
        assert_eq!(
            r.stats.answered + r.stats.kissed + r.stats.refused(),
            before + 1
        );
        if let Ok(Answer::Time(b) | Answer::Kiss(b)) = answer {
            let req = Packet::decode(bytes).expect("answered requests have a header");
            let p = Packet::decode(&b).unwrap();
            assert_eq!((p.mode, p.version, p.origin_ts), (4, req.version, req.transmit_ts));
        }
    }
});
