//! A node's keys, and the four ways a message is sealed and opened with them.
//!
//! | from → to | key | held by |
//! | --- | --- | --- |
//! | leader → clients (`ToClient`) | leader key, Ed25519 | replicas sign; everyone verifies |
//! | client → servers (reports, `ToServer`) | the client's own key, HMAC | that client; servers derive it from the cluster secret |
//! | replica → replicas (`ToReplica`) | replica key, HMAC | replicas |
//! | operator → replicas (HTTP) | operator token | tsc, the dashboard, replicas |
//!
//! Every list of keys is in order of preference: the first seals, all of them open (an old key
//! stays in the list during a rotation's grace period). Keys are found by the kid a sealed
//! message names, so opening costs one verification whatever the list holds.

use super::auth::{AuthError, MacKey, SignKey, Unsealed, VerifyKey, KEY_LEN};
use super::protocol::{
    decode_sealed, encode_sealed, DecodeError, TimeReport, ToClient, ToReplica, ToServer,
};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

/// Messages a client sends, and so seals with its own key.
pub trait FromClient: Serialize + DeserializeOwned + super::protocol::Checked {
    /// The client it says it is from.
    fn client_id(&self) -> Uuid;
}

impl FromClient for TimeReport {
    fn client_id(&self) -> Uuid {
        self.id
    }
}

impl FromClient for ToServer {
    fn client_id(&self) -> Uuid {
        ToServer::client_id(self)
    }
}

/// A key that this node does not have was needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {0} key")]
pub struct MissingKey(pub &'static str);

/// What one node holds.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    /// The leader's signing keys (servers only); the first signs.
    pub leader: Vec<SignKey>,
    /// Public leader keys accepted (everyone).
    pub leader_public: Vec<VerifyKey>,
    /// Replica keys (servers only); the first seals.
    pub replica: Vec<MacKey>,
    /// Cluster secrets the client keys derive from (servers and tsc); the first is current.
    pub cluster: Vec<MacKey>,
    /// This client's own keys (a client only); the first seals.
    pub client: Vec<MacKey>,
    /// Operator tokens accepted (servers) or used (tsc: the first).
    pub operator: Vec<String>,
    /// A swarm's clients and each one's own keys, preferred first (a swarm only).
    pub swarm: Vec<(Uuid, Vec<MacKey>)>,
}

fn first<'a, T>(keys: &'a [T], what: &'static str) -> Result<&'a T, MissingKey> {
    keys.first().ok_or(MissingKey(what))
}

fn by_kid<'a, T>(
    keys: &'a [T],
    kid: &str,
    kid_of: impl Fn(&T) -> &str,
) -> Result<&'a T, AuthError> {
    keys.iter()
        .find(|k| kid_of(k) == kid)
        .ok_or_else(|| AuthError::UnknownKey(kid.to_string()))
}

impl KeyRing {
    /// Checks that a server has what it needs: a leader key, a replica key, a cluster secret.
    pub fn check_server(&self) -> Result<(), MissingKey> {
        first(&self.leader, "leader")?;
        first(&self.replica, "replica")?;
        first(&self.cluster, "cluster")?;
        Ok(())
    }

    /// Checks that a client has what it needs: its own key and the leader's public key.
    pub fn check_client(&self) -> Result<(), MissingKey> {
        first(&self.client, "client")?;
        first(&self.leader_public, "leader public")?;
        Ok(())
    }

    /// Checks that a swarm has what it needs: its clients' keys and the leader's public key.
    pub fn check_swarm(&self) -> Result<(), MissingKey> {
        self.swarm
            .iter()
            .all(|(_, keys)| !keys.is_empty())
            .then_some(())
            .filter(|_| !self.swarm.is_empty())
            .ok_or(MissingKey("swarm client"))?;
        first(&self.leader_public, "leader public")?;
        Ok(())
    }

    /// A message from swarm client `i` (its place in [`KeyRing::swarm`]), sealed with that
    /// client's own key, exactly as the client would seal it alone.
    pub fn seal_from_member<T: FromClient>(
        &self,
        i: usize,
        msg: &T,
    ) -> Result<Vec<u8>, MissingKey> {
        let (_, keys) = self.swarm.get(i).ok_or(MissingKey("swarm client"))?;
        let k = first(keys, "swarm client")?;
        Ok(encode_sealed(msg, &k.kid, |d| k.tag(d)))
    }

    /// A message from the leader to clients, signed.
    pub fn seal_to_clients(&self, msg: &ToClient) -> Result<Vec<u8>, MissingKey> {
        let k = first(&self.leader, "leader")?;
        Ok(encode_sealed(msg, &k.kid, |d| k.sign(d)))
    }

    /// A message from the leader, if a leader key signed it.
    pub fn open_from_leader(&self, bytes: &[u8]) -> Result<ToClient, DecodeError> {
        decode_sealed(bytes, |_: &ToClient, u: &Unsealed| {
            let k = by_kid(&self.leader_public, &u.kid, |k| &k.kid)?;
            check(k.check(&u.signed, &u.sig))
        })
    }

    /// A message from this client, sealed with its own key.
    pub fn seal_from_client<T: FromClient>(&self, msg: &T) -> Result<Vec<u8>, MissingKey> {
        let k = first(&self.client, "client")?;
        Ok(encode_sealed(msg, &k.kid, |d| k.tag(d)))
    }

    /// A message from a client, if sealed with the key of the client it says it is from.
    pub fn open_from_client<T: FromClient>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        decode_sealed(bytes, |msg: &T, u: &Unsealed| {
            let secret = by_kid(&self.cluster, &u.kid, |k| &k.kid)?;
            check(secret.client_key(&msg.client_id()).check(&u.signed, &u.sig))
        })
    }

    /// A control message, sealed with the replica key.
    pub fn seal_control(&self, msg: &ToReplica) -> Result<Vec<u8>, MissingKey> {
        let k = first(&self.replica, "replica")?;
        Ok(encode_sealed(msg, &k.kid, |d| k.tag(d)))
    }

    /// A control message, if a replica key sealed it.
    pub fn open_control(&self, bytes: &[u8]) -> Result<ToReplica, DecodeError> {
        decode_sealed(bytes, |_: &ToReplica, u: &Unsealed| {
            let k = by_kid(&self.replica, &u.kid, |k| &k.kid)?;
            check(k.check(&u.signed, &u.sig))
        })
    }

    /// Whether `token` is an operator token (compared in constant time).
    pub fn is_operator(&self, token: &str) -> bool {
        self.operator
            .iter()
            .fold(false, |ok, t| ok | crate::core::auth::same_secret(t, token))
    }

    /// Client `id`'s keys, as tsc hands them to it: one per cluster secret, current first.
    pub fn client_keys(&self, id: &Uuid) -> Vec<MacKey> {
        self.cluster.iter().map(|s| s.client_key(id)).collect()
    }
}

fn check(ok: bool) -> Result<(), AuthError> {
    ok.then_some(()).ok_or(AuthError::BadSignature)
}

/// Keys from a key file: one hex key per line; blank lines and `#` comments are skipped.
pub fn parse_keys(text: &str) -> Result<Vec<[u8; KEY_LEN]>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let bytes = hex::decode(l).map_err(|e| format!("not a hex key: {e}"))?;
            <[u8; KEY_LEN]>::try_from(bytes.as_slice())
                .map_err(|_| format!("a key is {KEY_LEN} bytes, got {}", bytes.len()))
        })
        .collect()
}

/// Key files' text: one hex key per line, under a comment.
pub fn format_keys<'a>(comment: &str, keys: impl IntoIterator<Item = &'a [u8; KEY_LEN]>) -> String {
    let mut out = format!("# {comment}\n");
    for k in keys {
        out.push_str(&hex::encode(k));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::{
        Election, ProbeReply, Stamp, TimeReport, ToReplica, PROTOCOL_VERSION,
    };

    fn server() -> KeyRing {
        let leader = SignKey::from_seed([1; KEY_LEN]);
        KeyRing {
            leader_public: vec![leader.public()],
            leader: vec![leader],
            replica: vec![MacKey::new([2; KEY_LEN])],
            cluster: vec![MacKey::new([3; KEY_LEN])],
            client: vec![],
            operator: vec!["secret-token".into()],
            swarm: vec![],
        }
    }

    fn client(of: &KeyRing, id: Uuid) -> KeyRing {
        KeyRing {
            leader_public: of.leader_public.clone(),
            client: of.client_keys(&id),
            ..KeyRing::default()
        }
    }

    fn reply() -> ToClient {
        ToClient::ProbeReply(ProbeReply {
            v: PROTOCOL_VERSION,
            server_id: Uuid::from_u128(9),
            epoch: 3,
            client_id: Uuid::from_u128(1),
            seq: 1,
            t1_us: 1,
            t2_us: 2,
            t3_us: 3,
            stamp: Stamp::default(),
        })
    }

    #[test]
    fn leader_messages_open_only_with_the_leaders_signature() {
        let s = server();
        let c = client(&s, Uuid::from_u128(1));
        c.check_client().unwrap();
        s.check_server().unwrap();
        let sealed = s.seal_to_clients(&reply()).unwrap();
        assert_eq!(c.open_from_leader(&sealed).unwrap(), reply());
        // A client cannot sign: it has no leader key; its own key does not pass for one.
        assert_eq!(c.seal_to_clients(&reply()), Err(MissingKey("leader")));
        let forged = encode_sealed(&reply(), &s.leader[0].kid, |d| c.client[0].tag(d));
        assert_eq!(
            c.open_from_leader(&forged).unwrap_err().kind(),
            "bad_signature"
        );
        // Unsigned, and signed by a key nobody knows.
        let plain = crate::core::protocol::encode(&reply());
        assert_eq!(c.open_from_leader(&plain).unwrap_err().kind(), "unsigned");
        let stranger = SignKey::from_seed([9; KEY_LEN]);
        let other = encode_sealed(&reply(), &stranger.kid, |d| stranger.sign(d));
        assert_eq!(
            c.open_from_leader(&other).unwrap_err().kind(),
            "unknown_key"
        );
    }

    #[test]
    fn a_client_can_report_only_as_itself() {
        let s = server();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let ca = client(&s, a);
        let mine = TimeReport::new(a, "10.0.0.1".parse().unwrap(), 5, 1);
        let sealed = ca.seal_from_client(&mine).unwrap();
        assert_eq!(s.open_from_client::<TimeReport>(&sealed).unwrap(), mine);
        // Client a claiming to be b.
        let forged = ca
            .seal_from_client(&TimeReport::new(b, "10.0.0.2".parse().unwrap(), 5, 1))
            .unwrap();
        let e = s.open_from_client::<TimeReport>(&forged).unwrap_err();
        assert_eq!(e.kind(), "bad_signature");
    }

    #[test]
    fn control_messages_need_the_replica_key() {
        let s = server();
        let m = ToReplica::Election(Election {
            v: PROTOCOL_VERSION,
            from: 2,
            priority: 0,
            stamp: Stamp::default(),
        });
        let sealed = s.seal_control(&m).unwrap();
        assert_eq!(s.open_control(&sealed).unwrap(), m);
        let c = client(&s, Uuid::from_u128(1));
        assert!(c.seal_control(&m).is_err(), "clients hold no replica key");
        let forged = encode_sealed(&m, &s.replica[0].kid, |d| c.client[0].tag(d));
        assert_eq!(s.open_control(&forged).unwrap_err().kind(), "bad_signature");
    }

    #[test]
    fn during_a_rotation_both_keys_open_and_the_new_one_seals() {
        let mut s = server();
        let id = Uuid::from_u128(1);
        let old_client = client(&s, id);
        s.cluster.insert(0, MacKey::new([4; KEY_LEN]));
        let new_client = client(&s, id);
        assert_ne!(old_client.client[0].kid, new_client.client[0].kid);
        for c in [&old_client, &new_client] {
            let r = TimeReport::new(id, "10.0.0.1".parse().unwrap(), 5, 1);
            assert!(s
                .open_from_client::<TimeReport>(&c.seal_from_client(&r).unwrap())
                .is_ok());
        }
    }

    #[test]
    fn operator_tokens_and_key_files() {
        let s = server();
        assert!(s.is_operator("secret-token"));
        assert!(!s.is_operator("secret-tokeN"));
        assert!(!s.is_operator(""));
        let text = format_keys("test", [&[5u8; KEY_LEN], &[6u8; KEY_LEN]]);
        assert_eq!(
            parse_keys(&text).unwrap(),
            vec![[5u8; KEY_LEN], [6u8; KEY_LEN]]
        );
        assert!(parse_keys("zz").is_err());
        assert!(parse_keys("00ff").unwrap_err().contains("32 bytes"));
    }

    mod decoders {
        use super::*;
        use crate::core::protocol::{encode, Algorithm, MasterUpdate, Probe};
        use proptest::prelude::*;

        fn update(seq: u64, master_time_us: i64) -> ToClient {
            ToClient::MasterUpdate(MasterUpdate {
                v: PROTOCOL_VERSION,
                server_id: Uuid::from_u128(9),
                epoch: 4,
                seq,
                master_id: Uuid::from_u128(1),
                master_ip: "10.0.0.1".parse().unwrap(),
                master_time_us,
                server_time_us: master_time_us,
                algorithm: Algorithm::Master,
                master_ref_offset_us: Some(-3),
                master_ref_freq_ppm: Some(1.5),
                master_stratum: Some(10),
                master_ref_error_us: None,
                stamp: Stamp::default(),
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// No decoder panics on any bytes, and none accepts bytes nobody sealed.
            #[test]
            fn arbitrary_bytes_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
                let s = server();
                let c = client(&s, Uuid::from_u128(1));
                prop_assert!(c.open_from_leader(&bytes).is_err());
                prop_assert!(s.open_from_client::<TimeReport>(&bytes).is_err());
                prop_assert!(s.open_from_client::<ToServer>(&bytes).is_err());
                prop_assert!(s.open_control(&bytes).is_err());
            }

            /// Arbitrary text, JSON-looking or not, is refused without panic too.
            #[test]
            fn arbitrary_text_is_refused_without_panic(text in "\\PC{0,300}") {
                let s = server();
                let c = client(&s, Uuid::from_u128(1));
                prop_assert!(c.open_from_leader(text.as_bytes()).is_err());
                prop_assert!(s.open_from_client::<TimeReport>(text.as_bytes()).is_err());
                prop_assert!(s.open_control(text.as_bytes()).is_err());
            }

            /// A sealed message with any one byte changed is refused or, if the change was
            /// within what the seal covers and left it valid (impossible with a real key), at
            /// least never decodes to a different message.
            #[test]
            fn a_changed_byte_never_passes(seq in 0u64..1000, t in 0i64..(1 << 50), at in 0usize..1000, to in any::<u8>()) {
                let s = server();
                let c = client(&s, Uuid::from_u128(1));
                let original = update(seq, t);
                let mut sealed = s.seal_to_clients(&original).unwrap();
                let i = at % sealed.len();
                if sealed[i] == to {
                    return Ok(());
                }
                sealed[i] = to;
                if let Ok(m) = c.open_from_leader(&sealed) {
                    prop_assert_eq!(m, original);
                }
                let mut report = TimeReport::new(Uuid::from_u128(1), "10.0.0.1".parse().unwrap(), t, seq);
                report.boot_us = t;
                let mut sealed = c.seal_from_client(&report).unwrap();
                let i = at % sealed.len();
                if sealed[i] != to {
                    sealed[i] = to;
                    if let Ok(r) = s.open_from_client::<TimeReport>(&sealed) {
                        prop_assert_eq!(r, report);
                    }
                }
            }

            /// Well-formed but unsealed messages of every kind are refused as unsigned.
            #[test]
            fn unsealed_well_formed_messages_are_unsigned(seq in 0u64..1000, t in 0i64..(1 << 50)) {
                let s = server();
                let c = client(&s, Uuid::from_u128(1));
                let e = c.open_from_leader(&encode(&update(seq, t))).unwrap_err();
                prop_assert_eq!(e.kind(), "unsigned");
                let p = ToServer::Probe(Probe {
                    v: PROTOCOL_VERSION,
                    id: Uuid::from_u128(1),
                    seq,
                    t1_us: t,
                    stamp: Stamp::default(),
                });
                prop_assert_eq!(s.open_from_client::<ToServer>(&encode(&p)).unwrap_err().kind(), "unsigned");
            }
        }
    }
}
