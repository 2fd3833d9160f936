//! NTPv4 (RFC 5905) as a client of the cluster serves it: the 48-byte packet, timestamps, and
//! the decision for each request (answer, Kiss-o'-Death, or silence), with no sockets.
//!
//! A ts-client answers client-mode requests with its **disciplined virtual clock**, so any NTP
//! client (ntpdate, sntp, chrony) can read the cluster's time. What a reply says is given by
//! [`Source`], which the client fills from its own state: synchronized or not (leap indicator 3
//! until it is), its stratum, the reference it follows (the master's address, or `LOCL` for a
//! master that follows no upstream), when it last took a correction, and its real uncertainty to
//! that reference (root delay and dispersion from its probes, not constants).
//!
//! Every request is checked before anything is read into it: length (48 bytes up to
//! [`MAX_REQUEST_LEN`]; extension fields and a MAC are skipped, not interpreted), version 1–4,
//! mode 3 (client), a non-zero transmit timestamp, no replay of a transmit timestamp the same
//! address sent recently, and a per-address rate (a token bucket; over it, a `RATE` kiss, itself
//! limited). A request that fails a check gets no answer and is counted by reason
//! ([`NtpStats`]); nothing here can panic on any input (fuzzed in `fuzz/` and by proptest).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Length of an NTP header (the reply's whole length).
pub const PACKET_LEN: usize = 48;
/// Longest request answered (a header with extension fields and a MAC fits many times over).
pub const MAX_REQUEST_LEN: usize = 1024;
/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;
/// Stratum of a master that follows no NTP upstream: its clock is the cluster's reference,
/// but nothing ties it to UTC, so it claims as little as chrony's `local stratum 10` does.
pub const LOCAL_STRATUM: u8 = 10;
/// Stratum sent while not synchronized (RFC 5905: 16 is "unsynchronized").
pub const UNSYNCED_STRATUM: u8 = 16;
/// Precision advertised: 2^-20 s, about 1 µs (reading the virtual clock takes tens of ns;
/// the socket path dominates).
pub const PRECISION: i8 = -20;
/// Reference id of a master without upstream.
pub const LOCAL_REFID: [u8; 4] = *b"LOCL";
/// The kiss code sent to an address over its rate.
pub const KISS_RATE: [u8; 4] = *b"RATE";
/// Frequency tolerance assumed for dispersion growth (RFC 5905's PHI: 15 ppm).
pub const PHI_PPM: f64 = 15.0;
/// Transmit timestamps remembered per address, to refuse replays.
pub const REPLAY_MEMORY: usize = 8;
/// Addresses tracked by the rate limit and the replay guard before the oldest are forgotten.
pub const MAX_TRACKED: usize = 65_536;
/// Requests an address may send at once before its rate applies (the bucket's depth).
pub const BURST: f64 = 16.0;

/// An NTP timestamp: 32 bits of seconds since 1900 (era 0) and 32 bits of fraction.
pub fn ntp_from_unix_us(us: i64) -> u64 {
    let secs = us.div_euclid(1_000_000) + NTP_UNIX_OFFSET_S;
    let frac = ((us.rem_euclid(1_000_000) as u64) << 32) / 1_000_000;
    ((secs as u64 & 0xffff_ffff) << 32) | frac
}

/// The Unix time (µs, rounded) of NTP timestamp `ts`, taking the era that puts it nearest `near_us`.
pub fn unix_us_from_ntp(ts: u64, near_us: i64) -> i64 {
    let secs = (ts >> 32) as i64;
    // Rounded to the nearest µs, so that a µs time survives the round trip exactly.
    let frac_us = (((ts & 0xffff_ffff) * 1_000_000 + (1 << 31)) >> 32) as i64;
    let era_s = 1i64 << 32;
    let near_s = near_us.div_euclid(1_000_000) + NTP_UNIX_OFFSET_S;
    let era = (near_s - secs + era_s / 2).div_euclid(era_s);
    (secs + era * era_s - NTP_UNIX_OFFSET_S) * 1_000_000 + frac_us
}

/// A duration in NTP short format (16.16 seconds), saturating.
pub fn ntp_short_from_us(us: i64) -> u32 {
    let us = u128::from(us.max(0) as u64);
    ((us << 16) / 1_000_000).min(u128::from(u32::MAX)) as u32
}

/// The fields of an NTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    pub leap: u8,
    pub version: u8,
    pub mode: u8,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: u32,
    pub root_dispersion: u32,
    pub reference_id: [u8; 4],
    pub reference_ts: u64,
    pub origin_ts: u64,
    pub receive_ts: u64,
    pub transmit_ts: u64,
}

impl Packet {
    /// The header's 48 bytes.
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0] = (self.leap & 3) << 6 | (self.version & 7) << 3 | (self.mode & 7);
        b[1] = self.stratum;
        b[2] = self.poll as u8;
        b[3] = self.precision as u8;
        b[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        b[12..16].copy_from_slice(&self.reference_id);
        b[16..24].copy_from_slice(&self.reference_ts.to_be_bytes());
        b[24..32].copy_from_slice(&self.origin_ts.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive_ts.to_be_bytes());
        b[40..48].copy_from_slice(&self.transmit_ts.to_be_bytes());
        b
    }

    /// The header of `bytes` (its first 48), or `None` if it is shorter.
    pub fn decode(bytes: &[u8]) -> Option<Packet> {
        let b: &[u8; PACKET_LEN] = bytes.get(..PACKET_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(Packet {
            leap: b[0] >> 6,
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            poll: b[2] as i8,
            precision: b[3] as i8,
            root_delay: u32_at(4),
            root_dispersion: u32_at(8),
            reference_id: [b[12], b[13], b[14], b[15]],
            reference_ts: u64_at(16),
            origin_ts: u64_at(24),
            receive_ts: u64_at(32),
            transmit_ts: u64_at(40),
        })
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Under 48 bytes.
    Short,
    /// Over [`MAX_REQUEST_LEN`] bytes.
    Oversized,
    /// Version 0 or above 4.
    BadVersion,
    /// Not mode 3 (client): server, broadcast, control (6) and private (7) modes included.
    NotClientMode,
    /// A zero transmit timestamp: nothing to echo as the origin.
    Malformed,
    /// The transmit timestamp this address sent recently.
    Replayed,
    /// Over its rate, and already kissed in this burst.
    RateLimited,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Short => "short",
            Refusal::Oversized => "oversized",
            Refusal::BadVersion => "bad_version",
            Refusal::NotClientMode => "not_client_mode",
            Refusal::Malformed => "malformed",
            Refusal::Replayed => "replayed",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// What the service did, by outcome: in every report (`ntp`) and the client's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtpStats {
    /// Requests answered with the time.
    pub answered: u64,
    /// `RATE` kisses sent.
    pub kissed: u64,
    pub short: u64,
    pub oversized: u64,
    pub bad_version: u64,
    pub not_client_mode: u64,
    pub malformed: u64,
    pub replayed: u64,
    pub rate_limited: u64,
}

impl NtpStats {
    fn count(&mut self, r: Refusal) {
        let c = match r {
            Refusal::Short => &mut self.short,
            Refusal::Oversized => &mut self.oversized,
            Refusal::BadVersion => &mut self.bad_version,
            Refusal::NotClientMode => &mut self.not_client_mode,
            Refusal::Malformed => &mut self.malformed,
            Refusal::Replayed => &mut self.replayed,
            Refusal::RateLimited => &mut self.rate_limited,
        };
        *c += 1;
    }

    /// Every counter, by its name in reports.
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("ntp.answered", self.answered),
            ("ntp.kissed", self.kissed),
            ("ntp.short", self.short),
            ("ntp.oversized", self.oversized),
            ("ntp.bad_version", self.bad_version),
            ("ntp.not_client_mode", self.not_client_mode),
            ("ntp.malformed", self.malformed),
            ("ntp.replayed", self.replayed),
            ("ntp.rate_limited", self.rate_limited),
        ]
    }

    /// Requests that got no answer.
    pub fn refused(&self) -> u64 {
        self.fields()[2..]
            .iter()
            .fold(0, |a, (_, n)| a.saturating_add(*n))
    }
}

/// What this node says about its time in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Following its reference within the discipline's bound (else leap indicator 3).
    pub synced: bool,
    pub stratum: u8,
    pub reference_id: [u8; 4],
    /// When the clock last took a correction (its own time, µs since the Unix epoch).
    pub reference_us: i64,
    /// Round trip to the reference (µs).
    pub root_delay_us: i64,
    /// Bound on the error to the reference (µs).
    pub root_dispersion_us: i64,
}

impl Source {
    /// Whether replies carry the alarm: not synchronized, or a chain too long to be a source.
    pub fn alarm(&self) -> bool {
        !self.synced || self.stratum >= UNSYNCED_STRATUM
    }

    /// The stratum a reply carries: [`UNSYNCED_STRATUM`] with the alarm.
    pub fn served_stratum(&self) -> u8 {
        if self.alarm() {
            UNSYNCED_STRATUM
        } else {
            self.stratum
        }
    }
}

/// The reference id of a follower: its master's IPv4 address (RFC 5905, stratum ≥ 2). For an
/// IPv6 master RFC 5905 takes four bytes of the address's MD5; its first four bytes do the same
/// job here (naming the source to loop detection) without a hash.
pub fn refid_of(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[0], o[1], o[2], o[3]]
        }
    }
}

/// What to send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The time.
    Time([u8; PACKET_LEN]),
    /// A Kiss-o'-Death (`RATE`).
    Kiss([u8; PACKET_LEN]),
}

/// A token bucket per address, filling at `rate` per second up to [`BURST`].
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_us: i64,
    kissed: bool,
}

/// The per-request decision, with the memory it needs (rate buckets, recent transmit
/// timestamps) and the counters.
#[derive(Debug)]
pub struct Responder {
    /// Requests per second per address; 0: no limit.
    rate: f64,
    buckets: HashMap<IpAddr, Bucket>,
    recent: HashMap<IpAddr, VecDeque<u64>>,
    pub stats: NtpStats,
}

impl Responder {
    pub fn new(rate: f64) -> Responder {
        Responder {
            rate,
            buckets: HashMap::new(),
            recent: HashMap::new(),
            stats: NtpStats::default(),
        }
    }

    /// Decides on request `bytes` from `from`, received at `receive_us` (this clock); the
    /// answer's transmit timestamp is read from `transmit_us` last of all. `Err`: no answer,
    /// and why (counted in [`Responder::stats`]).
    pub fn handle(
        &mut self,
        bytes: &[u8],
        from: IpAddr,
        receive_us: i64,
        source: &Source,
        transmit_us: impl FnOnce() -> i64,
    ) -> Result<Answer, Refusal> {
        match self.decide(bytes, from, receive_us) {
            Err(r) => {
                self.stats.count(r);
                Err(r)
            }
            Ok((req, kiss)) => {
                let mut p = Packet {
                    leap: if source.alarm() { 3 } else { 0 },
                    version: req.version,
                    mode: 4,
                    stratum: source.served_stratum(),
                    poll: req.poll,
                    precision: PRECISION,
                    root_delay: ntp_short_from_us(source.root_delay_us),
                    root_dispersion: ntp_short_from_us(source.root_dispersion_us),
                    reference_id: source.reference_id,
                    reference_ts: ntp_from_unix_us(source.reference_us),
                    origin_ts: req.transmit_ts,
                    receive_ts: ntp_from_unix_us(receive_us),
                    transmit_ts: 0,
                };
                if kiss {
                    // RFC 5905 §7.4: stratum 0, the code as the reference id, leap 3.
                    p.leap = 3;
                    p.stratum = 0;
                    p.reference_id = KISS_RATE;
                    self.stats.kissed += 1;
                } else {
                    self.stats.answered += 1;
                }
                p.transmit_ts = ntp_from_unix_us(transmit_us());
                Ok(if kiss {
                    Answer::Kiss(p.encode())
                } else {
                    Answer::Time(p.encode())
                })
            }
        }
    }

    /// The request, and whether it earns a kiss instead of the time.
    fn decide(
        &mut self,
        bytes: &[u8],
        from: IpAddr,
        now_us: i64,
    ) -> Result<(Packet, bool), Refusal> {
        if bytes.len() > MAX_REQUEST_LEN {
            return Err(Refusal::Oversized);
        }
        let req = Packet::decode(bytes).ok_or(Refusal::Short)?;
        if !(1..=4).contains(&req.version) {
            return Err(Refusal::BadVersion);
        }
        // Version 1 had no modes: its client requests carry 0.
        let client = req.mode == 3 || (req.version == 1 && req.mode == 0);
        if !client {
            return Err(Refusal::NotClientMode);
        }
        if req.transmit_ts == 0 {
            return Err(Refusal::Malformed);
        }
        if self.replayed(from, req.transmit_ts) {
            return Err(Refusal::Replayed);
        }
        match self.within_rate(from, now_us) {
            Some(true) => Ok((req, false)),
            Some(false) => Ok((req, true)),
            None => Err(Refusal::RateLimited),
        }
    }

    /// Whether `from` sent transmit timestamp `ts` recently (remembering it if not).
    fn replayed(&mut self, from: IpAddr, ts: u64) -> bool {
        if self.recent.len() >= MAX_TRACKED && !self.recent.contains_key(&from) {
            self.recent.clear();
        }
        let seen = self.recent.entry(from).or_default();
        if seen.contains(&ts) {
            return true;
        }
        if seen.len() == REPLAY_MEMORY {
            seen.pop_front();
        }
        seen.push_back(ts);
        false
    }

    /// `Some(true)`: within the rate; `Some(false)`: over it, kiss (once per excess burst);
    /// `None`: over it and already kissed.
    fn within_rate(&mut self, from: IpAddr, now_us: i64) -> Option<bool> {
        if self.rate <= 0.0 {
            return Some(true);
        }
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&from) {
            // Forget the addresses whose buckets are full again: they lose nothing.
            let rate = self.rate;
            self.buckets
                .retain(|_, b| b.tokens + (now_us - b.at_us).max(0) as f64 * 1e-6 * rate < BURST);
            if self.buckets.len() >= MAX_TRACKED {
                self.buckets.clear();
            }
        }
        let b = self.buckets.entry(from).or_insert(Bucket {
            tokens: BURST,
            at_us: now_us,
            kissed: false,
        });
        let elapsed = (now_us - b.at_us).max(0) as f64 * 1e-6;
        b.tokens = (b.tokens + elapsed * self.rate).min(BURST);
        b.at_us = now_us;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.kissed = false;
            return Some(true);
        }
        if b.kissed {
            return None;
        }
        b.kissed = true;
        Some(false)
    }
}

/// Root dispersion of a clock whose error bound was `bound_us` when last measured, `age_us`
/// ago: it grows at [`PHI_PPM`] since.
pub fn dispersion_us(bound_us: i64, age_us: i64) -> i64 {
    bound_us.max(0) + (age_us.max(0) as f64 * PHI_PPM * 1e-6).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_796_184_725_017_278;

    fn request(version: u8, mode: u8, transmit_ts: u64) -> [u8; PACKET_LEN] {
        Packet {
            version,
            mode,
            transmit_ts,
            poll: 6,
            ..Packet::default()
        }
        .encode()
    }

    fn source() -> Source {
        Source {
            synced: true,
            stratum: 11,
            reference_id: [127, 0, 0, 20],
            reference_us: T0 - 500_000,
            root_delay_us: 180,
            root_dispersion_us: 95,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn timestamps_round_trip_to_the_microsecond() {
        for us in [0, 1, 999_999, T0, -5_000_001, 4_102_444_800_000_000] {
            let back = unix_us_from_ntp(ntp_from_unix_us(us), us + 3_600_000_000);
            assert_eq!(back, us);
        }
        // 1970-01-01 is 2208988800 s after the NTP epoch.
        assert_eq!(ntp_from_unix_us(0) >> 32, 2_208_988_800);
        assert_eq!(ntp_from_unix_us(500_000) & 0xffff_ffff, 1 << 31);
        assert_eq!(ntp_short_from_us(1_000_000), 1 << 16);
        assert_eq!(ntp_short_from_us(-3), 0);
        assert_eq!(ntp_short_from_us(i64::MAX), u32::MAX);
        assert_eq!(
            ntp_short_from_us(1 << 48),
            u32::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn a_client_request_gets_the_time() {
        let mut r = Responder::new(0.0);
        let req = request(4, 3, 0xdead_beef_0000_0001);
        let Ok(Answer::Time(b)) = r.handle(&req, ip("127.0.0.1"), T0, &source(), || T0 + 7) else {
            panic!("no answer")
        };
        let p = Packet::decode(&b).unwrap();
        assert_eq!((p.leap, p.version, p.mode, p.stratum), (0, 4, 4, 11));
        assert_eq!(
            p.origin_ts, 0xdead_beef_0000_0001,
            "the request's transmit, echoed"
        );
        assert_eq!(unix_us_from_ntp(p.receive_ts, T0), T0);
        assert_eq!(unix_us_from_ntp(p.transmit_ts, T0), T0 + 7);
        assert_eq!(p.reference_id, [127, 0, 0, 20]);
        assert_eq!(p.root_delay, ntp_short_from_us(180));
        assert_eq!(p.precision, PRECISION);
        assert_eq!(p.poll, 6);
        assert_eq!(r.stats.answered, 1);
        // Not synchronized: alarm, stratum 16.
        let unsynced = Source {
            synced: false,
            ..source()
        };
        let req = request(3, 3, 2);
        let Ok(Answer::Time(b)) = r.handle(&req, ip("127.0.0.1"), T0, &unsynced, || T0) else {
            panic!("no answer")
        };
        let p = Packet::decode(&b).unwrap();
        assert_eq!((p.leap, p.version, p.stratum), (3, 3, UNSYNCED_STRATUM));
    }

    #[test]
    fn bad_requests_get_silence_and_are_counted() {
        let mut r = Responder::new(0.0);
        let from = ip("10.0.0.9");
        let mut long = request(4, 3, 5).to_vec();
        long.resize(MAX_REQUEST_LEN + 1, 0);
        let cases: Vec<(Vec<u8>, Refusal)> = vec![
            (vec![0x23; 47], Refusal::Short),
            (vec![], Refusal::Short),
            (long, Refusal::Oversized),
            (request(0, 3, 5).to_vec(), Refusal::BadVersion),
            (request(5, 3, 5).to_vec(), Refusal::BadVersion),
            (request(4, 4, 5).to_vec(), Refusal::NotClientMode),
            (request(4, 6, 5).to_vec(), Refusal::NotClientMode),
            (request(2, 0, 5).to_vec(), Refusal::NotClientMode),
            (request(4, 3, 0).to_vec(), Refusal::Malformed),
        ];
        for (bytes, why) in &cases {
            let before = r.stats;
            assert_eq!(
                r.handle(bytes, from, T0, &source(), || T0),
                Err(*why),
                "{why:?}"
            );
            let mut want = before;
            want.count(*why);
            assert_eq!(r.stats, want, "{why:?}");
        }
        // A MAC or extension fields after the header are skipped; version 1 mode 0 is a client.
        let mut with_mac = request(4, 3, 6).to_vec();
        with_mac.extend([0u8; 20]);
        assert!(r.handle(&with_mac, from, T0, &source(), || T0).is_ok());
        assert!(r
            .handle(&request(1, 0, 7), from, T0, &source(), || T0)
            .is_ok());
        assert_eq!(r.stats.refused(), cases.len() as u64);
    }

    #[test]
    fn a_replayed_request_is_not_answered_twice() {
        let mut r = Responder::new(0.0);
        let req = request(4, 3, 42);
        assert!(r.handle(&req, ip("10.0.0.1"), T0, &source(), || T0).is_ok());
        assert_eq!(
            r.handle(&req, ip("10.0.0.1"), T0 + 1, &source(), || T0),
            Err(Refusal::Replayed)
        );
        assert_eq!(r.stats.replayed, 1);
        // Another address may send the same bytes (two clients can pick the same timestamp).
        assert!(r.handle(&req, ip("10.0.0.2"), T0, &source(), || T0).is_ok());
    }

    #[test]
    fn over_its_rate_an_address_is_kissed_once_then_ignored_until_it_slows_down() {
        let rate = 2.0;
        let mut r = Responder::new(rate);
        let from = ip("10.0.0.3");
        let mut ts = 1u64;
        let mut send = |r: &mut Responder, at: i64| {
            ts += 1;
            r.handle(&request(4, 3, ts), from, at, &source(), || at)
        };
        for _ in 0..BURST as usize {
            assert!(matches!(send(&mut r, T0), Ok(Answer::Time(_))));
        }
        let Ok(Answer::Kiss(k)) = send(&mut r, T0) else {
            panic!("no kiss")
        };
        let k = Packet::decode(&k).unwrap();
        assert_eq!((k.leap, k.stratum, k.reference_id), (3, 0, KISS_RATE));
        assert_eq!(send(&mut r, T0), Err(Refusal::RateLimited));
        assert_eq!(
            send(&mut r, T0 + 100_000),
            Err(Refusal::RateLimited),
            "0.2 tokens: still over"
        );
        assert!(matches!(send(&mut r, T0 + 600_000), Ok(Answer::Time(_))));
        assert_eq!((r.stats.kissed, r.stats.rate_limited), (1, 2));
        // Another address has its own bucket.
        let other = r.handle(&request(4, 3, 999), ip("10.0.0.4"), T0, &source(), || T0);
        assert!(matches!(other, Ok(Answer::Time(_))));
    }

    #[test]
    fn dispersion_grows_at_phi() {
        assert_eq!(dispersion_us(100, 0), 100);
        assert_eq!(dispersion_us(100, 10_000_000), 250);
        assert_eq!(dispersion_us(-5, -1), 0);
    }

    proptest! {
        /// No input panics; an answer is always 48 bytes, echoes the request's transmit
        /// timestamp and is a server (or kiss) reply of the request's version.
        #[test]
        fn any_bytes_are_answered_well_or_not_at_all(bytes in proptest::collection::vec(any::<u8>(), 0..1100), rate in 0.0f64..50.0) {
            let mut r = Responder::new(rate);
            let n = r.stats.answered + r.stats.kissed + r.stats.refused();
            let a = r.handle(&bytes, ip("10.9.9.9"), T0, &source(), || T0 + 1);
            let total = r.stats.answered + r.stats.kissed + r.stats.refused();
            prop_assert_eq!(total, n + 1, "every request is counted once");
            if let Ok(Answer::Time(b) | Answer::Kiss(b)) = a {
                let req = Packet::decode(&bytes).unwrap();
                let p = Packet::decode(&b).unwrap();
                prop_assert_eq!(p.mode, 4);
                prop_assert_eq!(p.version, req.version);
                prop_assert_eq!(p.origin_ts, req.transmit_ts);
            }
        }

        #[test]
        fn headers_round_trip(b in proptest::array::uniform32(any::<u8>()), c in proptest::array::uniform16(any::<u8>())) {
            let mut bytes = [0u8; PACKET_LEN];
            bytes[..32].copy_from_slice(&b);
            bytes[32..].copy_from_slice(&c);
            let p = Packet::decode(&bytes).unwrap();
            prop_assert_eq!(p.encode(), bytes);
        }
    }
}
