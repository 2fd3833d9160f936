//! The wire protocol: names of queues, exchanges and Redis keys, every message, and the one
//! point where messages are encoded and decoded.
//!
//! Everything that crosses a process boundary is defined here and nowhere else, and every
//! message goes through [`encode`] / [`decode`] so that size limits, version checks and JSON
//! parsing are enforced at one choke point. `docs/PROTOCOL.md` documents this module field by
//! field; keep the two in step.
//!
//! - `names`: queues, exchanges, routing keys, Redis keys.
//! - `messages`: reports, `ToClient`, `ToServer`, and the records kept about clients.
//! - `control`: `ToReplica`, among server replicas, and the replicas' records.
//! - `events`: the events of the cluster's log. Every message carries a [`Stamp`] of the
//!   sender's logical clocks ([`crate::core::logical`]).
//!
//! Every message between nodes is *sealed* ([`crate::core::auth`]): [`encode_sealed`] and
//! [`decode_sealed`] are the choke point for those, [`encode`] / [`decode`] for what is kept
//! in Redis.
//!
//! Times are integers in **microseconds since the Unix epoch** (`*_us`). Microseconds keep every
//! value below 2^53, so a JavaScript or Python client can use plain numbers, and they resolve the
//! sub-millisecond errors this system is measured in.

mod control;
mod events;
mod messages;
mod names;

pub use crate::core::logical::Stamp;
pub use control::*;
pub use events::*;
pub use messages::*;
pub use names::*;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version of the message format. Decoders reject any other value: a newer peer's message is
/// counted as rejected rather than misread.
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest message accepted, in bytes. A report is ~700 bytes; anything this large is abuse.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Largest epoch or counter accepted (2^53): larger ones cannot be real, and every peer,
/// JavaScript and Lua included, can hold them exactly.
pub const MAX_COUNTER: u64 = 1 << 53;

/// Why a message was rejected. Each variant is a counter in the server's stats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("unsupported protocol version {0} (expected {PROTOCOL_VERSION})")]
    Version(u64),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsigned: {0}")]
    Unsigned(String),
    #[error("signed with an unknown key {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("replayed: {0}")]
    Replay(String),
    #[error("reply_to {0:?} is not a client queue")]
    BadReplyTo(String),
}

impl DecodeError {
    /// Every reason, by its counter name.
    pub const KINDS: [&'static str; 8] = [
        "malformed",
        "too_large",
        "bad_version",
        "unsigned",
        "unknown_key",
        "bad_signature",
        "replay",
        "bad_reply_to",
    ];

    /// Short stable name, used as a counter label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::Version(_) => "bad_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Unsigned(_) => "unsigned",
            DecodeError::UnknownKey(_) => "unknown_key",
            DecodeError::BadSignature => "bad_signature",
            DecodeError::Replay(_) => "replay",
            DecodeError::BadReplyTo(_) => "bad_reply_to",
        }
    }
}

impl From<crate::core::auth::AuthError> for DecodeError {
    fn from(e: crate::core::auth::AuthError) -> Self {
        use crate::core::auth::AuthError;
        match e {
            AuthError::Unsigned => DecodeError::Unsigned("no trailing kid and sig".into()),
            AuthError::UnknownKey(k) => DecodeError::UnknownKey(k),
            AuthError::BadSignature => DecodeError::BadSignature,
        }
    }
}

/// Serializes a message as it is (for Redis, and for tests that send what a broken peer
/// would). Infallible for the types in this module.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("protocol messages always serialize")
}

/// Serializes and seals a message under key `kid` ([`crate::core::auth::seal`]).
pub fn encode_sealed<T: Serialize>(
    msg: &T,
    kid: &str,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    crate::core::auth::seal(&encode(msg), kid, sign)
}

/// Parses a message, enforcing the size limit and the version before the schema, so that a
/// newer peer's message is reported as a version mismatch rather than as garbage, then the
/// field ranges.
pub fn decode<T: DeserializeOwned + Checked>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<serde_json::Value>,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match versioned.v.as_ref().and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => return Err(DecodeError::Version(v)),
        None => {
            return Err(DecodeError::Malformed(
                "missing or non-integer field `v`".into(),
            ))
        }
    }
    let msg: T =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    msg.check()?;
    Ok(msg)
}

/// Opens a sealed message: takes the seal off, decodes the message ([`decode`]), and only
/// then asks `verify` whether its signature is good (the key may depend on who the message
/// says it is from). Nothing of the message may be acted on before this returns `Ok`.
pub fn decode_sealed<T: DeserializeOwned + Checked>(
    bytes: &[u8],
    verify: impl FnOnce(&T, &crate::core::auth::Unsealed) -> Result<(), crate::core::auth::AuthError>,
) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let unsealed = match crate::core::auth::unseal(bytes) {
        Ok(u) => u,
        // A message of another version or no JSON at all is reported as what it is.
        Err(e) => {
            decode::<T>(bytes)?;
            return Err(e.into());
        }
    };
    let msg = decode::<T>(&unsealed.message)?;
    verify(&msg, &unsealed)?;
    Ok(msg)
}

/// Largest magnitude accepted for any time or offset field (µs): 2^53, about 285 years. Beyond
/// it a value is not a clock reading, and sums and differences of a few accepted values can
/// never overflow, so no arithmetic on received times needs to be checked.
pub const MAX_TIME_US: i64 = 1 << 53;

/// Field ranges a message must respect beyond its schema.
pub trait Checked {
    fn check(&self) -> Result<(), DecodeError>;
}

fn times(fields: &[(&str, Option<i64>)]) -> Result<(), DecodeError> {
    for (name, v) in fields {
        if v.is_some_and(|v| !(-MAX_TIME_US..=MAX_TIME_US).contains(&v)) {
            return Err(DecodeError::Malformed(format!("`{name}` out of range")));
        }
    }
    Ok(())
}

fn counters(fields: &[(&str, u64)]) -> Result<(), DecodeError> {
    for (name, v) in fields {
        if *v > MAX_COUNTER {
            return Err(DecodeError::Malformed(format!("`{name}` above 2^53")));
        }
    }
    Ok(())
}

/// Longest `reference` of a report (an IPv6 address with a port fits).
pub const MAX_REFERENCE: usize = 64;

fn stratum(name: &str, v: Option<u8>) -> Result<(), DecodeError> {
    match v {
        Some(s) if s > crate::core::ntp::UNSYNCED_STRATUM => {
            Err(DecodeError::Malformed(format!("`{name}` above 16")))
        }
        _ => Ok(()),
    }
}

fn freq(name: &str, v: Option<f64>) -> Result<(), DecodeError> {
    match v {
        Some(f) if !(f.is_finite() && f.abs() <= 1e6) => {
            Err(DecodeError::Malformed(format!("`{name}` out of range")))
        }
        _ => Ok(()),
    }
}

impl Checked for Stamp {
    fn check(&self) -> Result<(), DecodeError> {
        counters(&[("stamp.lt", self.lt)])?;
        if let Some(h) = self.hlc {
            times(&[("stamp.hlc.us", Some(h.us))])?;
        }
        if let Some(vc) = &self.vc {
            if vc.len() > crate::core::logical::MAX_VC_ENTRIES {
                return Err(DecodeError::Malformed(
                    "`stamp.vc` has too many entries".into(),
                ));
            }
            for (id, n) in vc.entries() {
                counters(&[("stamp.vc replica", id), ("stamp.vc counter", n)])?;
            }
        }
        Ok(())
    }
}

impl Checked for Event {
    fn check(&self) -> Result<(), DecodeError> {
        self.stamp.check()?;
        if let Some(c) = &self.cause {
            c.check()?;
        }
        if self.text.len() > MAX_EVENT_TEXT || self.node.len() > MAX_EVENT_TEXT {
            return Err(DecodeError::Malformed("event text too long".into()));
        }
        Ok(())
    }
}

impl Checked for TimeReport {
    fn check(&self) -> Result<(), DecodeError> {
        times(&[
            ("time_us", Some(self.time_us)),
            ("master_time_us", self.master_time_us),
            ("true_offset_us", self.true_offset_us),
            ("ref_offset_us", self.ref_offset_us),
            ("max_step_us", self.max_step_us),
            ("boot_us", Some(self.boot_us)),
        ])?;
        counters(&[
            ("seq", self.seq),
            ("epoch", self.epoch.unwrap_or(0)),
            ("ref_error_us", self.ref_error_us.unwrap_or(0)),
            ("max_error_us", self.max_error_us.unwrap_or(0)),
        ])?;
        freq("ref_freq_ppm", self.ref_freq_ppm)?;
        self.stamp.check()?;
        if self.events.len() > MAX_REPORT_EVENTS {
            return Err(DecodeError::Malformed("too many events".into()));
        }
        stratum("stratum", self.stratum)?;
        if self
            .reference
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REFERENCE)
        {
            return Err(DecodeError::Malformed("`reference` too long".into()));
        }
        if let Some(n) = &self.ntp {
            counters(&n.fields())?;
        }
        if self.upstreams.len() > crate::core::upstream::MAX_UPSTREAMS {
            return Err(DecodeError::Malformed("too many upstreams".into()));
        }
        for u in &self.upstreams {
            if u.addr.len() > crate::core::upstream::MAX_ADDR_LEN {
                return Err(DecodeError::Malformed("`upstreams.addr` too long".into()));
            }
            stratum("upstreams.stratum", u.stratum)?;
            times(&[
                ("upstreams.offset_us", u.offset_us),
                ("upstreams.delay_us", u.delay_us),
            ])?;
            if u.delay_us.is_some_and(|d| d < 0) {
                return Err(DecodeError::Malformed(
                    "`upstreams.delay_us` negative".into(),
                ));
            }
        }
        self.events.iter().try_for_each(Checked::check)
    }
}

impl Checked for ToClient {
    fn check(&self) -> Result<(), DecodeError> {
        counters(&[("epoch", self.epoch())])?;
        self.stamp().check()?;
        match self {
            ToClient::MasterUpdate(u) => {
                times(&[
                    ("master_time_us", Some(u.master_time_us)),
                    ("server_time_us", Some(u.server_time_us)),
                    ("master_ref_offset_us", u.master_ref_offset_us),
                ])?;
                counters(&[
                    ("seq", u.seq),
                    ("master_ref_error_us", u.master_ref_error_us.unwrap_or(0)),
                ])?;
                stratum("master_stratum", u.master_stratum)?;
                freq("master_ref_freq_ppm", u.master_ref_freq_ppm)
            }
            ToClient::ProbeReply(r) => {
                counters(&[("seq", r.seq)])?;
                times(&[
                    ("t1_us", Some(r.t1_us)),
                    ("t2_us", Some(r.t2_us)),
                    ("t3_us", Some(r.t3_us)),
                ])
            }
            ToClient::BerkeleyPoll(p) => counters(&[("round", p.round)]),
            ToClient::BerkeleyAdjust(a) => {
                counters(&[("round", a.round)])?;
                times(&[("adjust_us", Some(a.adjust_us))])
            }
            ToClient::SetTime(t) => match t.change {
                TimeChange::Absolute { time_us } => times(&[("time_us", Some(time_us))]),
                TimeChange::Shift { shift_us } => times(&[("shift_us", Some(shift_us))]),
            },
        }
    }
}

impl Checked for ToServer {
    fn check(&self) -> Result<(), DecodeError> {
        self.stamp().check()?;
        match self {
            ToServer::Probe(p) => {
                counters(&[("seq", p.seq)])?;
                times(&[("t1_us", Some(p.t1_us))])
            }
            ToServer::BerkeleyReading(r) => {
                counters(&[("epoch", r.epoch), ("round", r.round)])?;
                times(&[
                    ("time_us", Some(r.time_us)),
                    ("ref_offset_us", r.ref_offset_us),
                ])
            }
        }
    }
}

impl Checked for ToReplica {
    fn check(&self) -> Result<(), DecodeError> {
        self.stamp().check()?;
        let (epoch, ids) = match self {
            ToReplica::Election(m) => (0, [m.from, m.priority]),
            ToReplica::Answer(m) => (0, [m.from, m.priority]),
            ToReplica::Coordinator(m) => (m.epoch, [m.from, m.priority]),
            ToReplica::Heartbeat(m) => {
                counters(&[("leader", m.leader.unwrap_or(0))])?;
                (m.epoch, [m.from, m.priority])
            }
            ToReplica::Resign(m) => (m.epoch, [m.from, 0]),
        };
        counters(&[("epoch", epoch), ("from", ids[0]), ("priority", ids[1])])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn report() -> TimeReport {
        TimeReport {
            v: PROTOCOL_VERSION,
            id: Uuid::from_u128(7),
            ip: "10.0.0.7".parse().unwrap(),
            time_us: 1_700_000_000_000_000,
            seq: 3,
            master_id: None,
            master_time_us: None,
            true_offset_us: Some(-12),
            ..TimeReport::new(Uuid::from_u128(7), "10.0.0.7".parse().unwrap(), 0, 0)
        }
    }

    #[test]
    fn report_round_trips() {
        let r = report();
        assert_eq!(decode::<TimeReport>(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn rejects_garbage_with_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "malformed"),
            (b"\x80\x03}q", "malformed"),
            (b"[1,2]", "malformed"),
            (b"{\"v\":1,\"id\":1}", "bad_version"),
            (b"{\"v\":\"1\"}", "malformed"),
            (b"{\"v\":6,\"id\":\"nope\"}", "malformed"),
            (b"{\"v\":5,\"id\":\"nope\"}", "bad_version"),
            (b"{\"v\":4,\"id\":\"nope\"}", "bad_version"),
        ];
        for (bytes, kind) in cases {
            let err = decode::<TimeReport>(bytes).unwrap_err();
            assert_eq!(err.kind(), *kind, "{bytes:?}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_fields_and_bad_ip() {
        let mut v = serde_json::to_value(report()).unwrap();
        v["ip"] = "10.0.0.300".into();
        let err = decode::<TimeReport>(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(err.kind(), "malformed");
        let mut v = serde_json::to_value(report()).unwrap();
        v["extra"] = 1.into();
        assert!(decode::<TimeReport>(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn tagged_messages_round_trip_and_reject_unknown_fields() {
        let m = ToClient::ProbeReply(ProbeReply {
            v: PROTOCOL_VERSION,
            stamp: Stamp::default(),
            server_id: Uuid::from_u128(1),
            epoch: 1,
            client_id: Uuid::from_u128(2),
            seq: 4,
            t1_us: 1,
            t2_us: 2,
            t3_us: 3,
        });
        let bytes = encode(&m);
        assert!(String::from_utf8_lossy(&bytes).contains("\"type\":\"probe_reply\""));
        assert_eq!(decode::<ToClient>(&bytes).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["surprise"] = 1.into();
        assert!(decode::<ToClient>(&serde_json::to_vec(&v).unwrap()).is_err());
        v.as_object_mut().unwrap().remove("surprise");
        v["type"] = "nonsense".into();
        assert_eq!(
            decode::<ToClient>(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .kind(),
            "malformed"
        );
        let p = ToServer::Probe(Probe {
            v: PROTOCOL_VERSION,
            stamp: Stamp::default(),
            id: Uuid::from_u128(2),
            seq: 1,
            t1_us: 5,
        });
        assert_eq!(decode::<ToServer>(&encode(&p)).unwrap(), p);
    }

    #[test]
    fn rejects_times_out_of_range() {
        let mut r = report();
        r.time_us = i64::MAX;
        assert_eq!(
            decode::<TimeReport>(&encode(&r)).unwrap_err().kind(),
            "malformed"
        );
        let mut r = report();
        r.ref_freq_ppm = Some(1e300);
        assert!(decode::<TimeReport>(&encode(&r)).is_err());
        let adj = ToClient::BerkeleyAdjust(BerkeleyAdjust {
            v: PROTOCOL_VERSION,
            stamp: Stamp::default(),
            server_id: Uuid::from_u128(1),
            epoch: 1,
            client_id: Uuid::from_u128(2),
            round: 1,
            adjust_us: i64::MIN,
            outlier: false,
        });
        assert!(decode::<ToClient>(&encode(&adj)).is_err());
    }

    #[test]
    fn control_messages_round_trip_and_carry_their_sender() {
        let msgs = [
            ToReplica::Election(Election {
                v: PROTOCOL_VERSION,
                stamp: Stamp::default(),
                from: 10,
                priority: 2,
            }),
            ToReplica::Answer(Answer {
                v: PROTOCOL_VERSION,
                stamp: Stamp::default(),
                from: 11,
                priority: 0,
            }),
            ToReplica::Coordinator(Coordinator {
                v: PROTOCOL_VERSION,
                stamp: Stamp::default(),
                from: 12,
                priority: 0,
                epoch: 9,
            }),
            ToReplica::Heartbeat(Heartbeat {
                v: PROTOCOL_VERSION,
                stamp: Stamp::default(),
                from: 13,
                priority: 0,
                role: ReplicaRole::Leader,
                epoch: 9,
                leader: Some(13),
            }),
            ToReplica::Resign(Resign {
                v: PROTOCOL_VERSION,
                stamp: Stamp::default(),
                from: 14,
                epoch: 9,
            }),
        ];
        for (i, m) in msgs.iter().enumerate() {
            let back: ToReplica = decode(&encode(m)).unwrap();
            assert_eq!(&back, m);
            assert_eq!(back.from(), 10 + i as u64);
        }
        let json = String::from_utf8(encode(&msgs[3])).unwrap();
        assert!(
            json.contains(r#""type":"heartbeat""#) && json.contains(r#""role":"leader""#),
            "{json}"
        );
        assert!(
            decode::<ToReplica>(br#"{"v":3,"type":"election","from":-1,"priority":0}"#).is_err()
        );
        assert!(decode::<ToReplica>(br#"{"v":3,"type":"coup","from":1}"#).is_err());
    }

    #[test]
    fn rejects_oversized() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode::<TimeReport>(&big).unwrap_err().kind(), "too_large");
    }

    #[test]
    fn optional_diagnostic_may_be_absent() {
        let mut v = serde_json::to_value(report()).unwrap();
        v.as_object_mut().unwrap().remove("true_offset_us");
        let r: TimeReport = decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(r.true_offset_us, None);
    }
}
