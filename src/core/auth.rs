//! Message authentication: who may say what, proven on every message.
//!
//! Three kinds of key, each held only by those who must use it:
//!
//! - the **leader key** (Ed25519): the replicas sign everything a leader sends to clients
//!   with it; clients hold only its public half, so no client can make a message that any
//!   client accepts;
//! - the **cluster secret** (HMAC-SHA256): servers (and tsc) derive from it a key per client,
//!   `HMAC(secret, "time-sync client key" ‖ client id)`, and hand each client only its own, so
//!   a client can authenticate its reports, probes and readings as itself and as nobody else;
//! - the **replica key** (HMAC-SHA256): the replicas' control messages.
//!
//! A key is named by its **kid**, 8 hex digits of a SHA-256 hash (of the public key, or of the
//! secret with a domain prefix), so keys can be rotated: a receiver keeps the old and the new
//! key for a grace period and picks by kid.
//!
//! **Sealing** needs no canonical JSON. The sender serializes the message, replaces the final
//! `}` with `,"kid":"<kid>"}`: those exact bytes are what is signed (or MAC'd). It then replaces
//! that final `}` with `,"sig":"<hex>"}` and sends the result. The receiver cuts the `sig`
//! member off the end, checks the signature over what is left, then cuts the `kid` member off
//! too and parses the message. Anything that does not end in exactly that shape is unsigned.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Length of a kid in hex digits.
pub const KID_LEN: usize = 8;
/// Whether `kid` is a well-formed key id: [`KID_LEN`] lowercase hex digits.
pub fn is_kid(kid: &str) -> bool {
    kid.len() == KID_LEN && kid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Length of every secret (leader key seed, cluster secret, replica key, client key), bytes.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a sealed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not signed (no trailing \"kid\" and \"sig\" members)")]
    Unsigned,
    #[error("signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
}

fn kid_of(domain: &[u8], bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(bytes);
    hex::encode(&h.finalize()[..KID_LEN / 2])
}

/// A symmetric key (cluster secret, replica key, client key).
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey {
    pub kid: String,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacKey({})", self.kid)
    }
}

impl MacKey {
    /// A key from its bytes; its kid is derived from them.
    pub fn new(key: [u8; KEY_LEN]) -> Self {
        MacKey {
            kid: kid_of(b"time-sync mac key", &key),
            key,
        }
    }

    /// A key with a given kid (a derived client key carries its secret's).
    pub fn with_kid(kid: String, key: [u8; KEY_LEN]) -> Self {
        MacKey { kid, key }
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The tag of `data`.
    pub fn tag(&self, data: &[u8]) -> Vec<u8> {
        let mut m = self.mac();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    /// Whether `tag` is `data`'s (in constant time).
    pub fn check(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }

    /// Client `id`'s key under this cluster secret; it carries the secret's kid.
    pub fn client_key(&self, id: &Uuid) -> MacKey {
        let mut m = self.mac();
        m.update(b"time-sync client key");
        m.update(id.as_bytes());
        let out = m.finalize().into_bytes();
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&out);
        MacKey::with_kid(self.kid.clone(), key)
    }
}

/// The leader's signing key.
#[derive(Clone)]
pub struct SignKey {
    pub kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignKey({})", self.kid)
    }
}

impl SignKey {
    pub fn from_seed(seed: [u8; KEY_LEN]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        SignKey {
            kid: VerifyKey::new(key.verifying_key()).kid,
            key,
        }
    }

    pub fn seed(&self) -> [u8; KEY_LEN] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> VerifyKey {
        VerifyKey::new(self.key.verifying_key())
    }

    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.key.sign(data).to_bytes().to_vec()
    }
}

/// The public half of a leader key.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey {
    pub kid: String,
    key: VerifyingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({})", self.kid)
    }
}

impl VerifyKey {
    fn new(key: VerifyingKey) -> Self {
        VerifyKey {
            kid: kid_of(b"time-sync leader key", key.as_bytes()),
            key,
        }
    }

    /// A public key from its 32 bytes; `None` unless they are the canonical encoding of a
    /// point that is not of small order (a weak key would verify forged signatures under
    /// lax checks, and never a real one under strict ones).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes)
            .ok()
            .filter(|k| !k.is_weak() && k.to_bytes() == *bytes)
            .map(VerifyKey::new)
    }

    pub fn bytes(&self) -> [u8; KEY_LEN] {
        self.key.to_bytes()
    }

    /// Whether `sig` is a valid signature of `data` (strict: no malleable encodings).
    pub fn check(&self, data: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        self.key.verify_strict(data, &sig).is_ok()
    }
}

/// `body` (a JSON object) sealed under key `kid` with `sign` (which signs the exact bytes it
/// is given).
pub fn seal(body: &[u8], kid: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    debug_assert!(body.ends_with(b"}"));
    let mut signed = body[..body.len() - 1].to_vec();
    signed.extend_from_slice(b",\"kid\":\"");
    signed.extend_from_slice(kid.as_bytes());
    signed.extend_from_slice(b"\"}");
    let sig = hex::encode(sign(&signed));
    let mut out = signed;
    out.pop();
    out.extend_from_slice(b",\"sig\":\"");
    out.extend_from_slice(sig.as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// A sealed message taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsealed {
    /// The message as it was before sealing.
    pub message: Vec<u8>,
    /// The key that sealed it.
    pub kid: String,
    /// The bytes the signature covers.
    pub signed: Vec<u8>,
    pub sig: Vec<u8>,
}

/// Takes a sealed message apart (checks nothing but its shape).
pub fn unseal(bytes: &[u8]) -> Result<Unsealed, AuthError> {
    const SIG: &[u8] = b",\"sig\":\"";
    const KID: &[u8] = b",\"kid\":\"";
    let body = bytes.strip_suffix(b"\"}").ok_or(AuthError::Unsigned)?;
    let at = rfind(body, SIG).ok_or(AuthError::Unsigned)?;
    let sig_hex = &body[at + SIG.len()..];
    // Lowercase only, so that a message has one encoding.
    if !sig_hex
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(AuthError::Unsigned);
    }
    let sig = hex::decode(sig_hex).map_err(|_| AuthError::Unsigned)?;
    // What was signed: everything before `,"sig":"…"`, closed again.
    let mut signed = body[..at].to_vec();
    signed.push(b'}');
    let kid_end = at.checked_sub(1).ok_or(AuthError::Unsigned)?; // the kid's closing quote
    if body.get(kid_end) != Some(&b'"') || kid_end < KID_LEN + KID.len() {
        return Err(AuthError::Unsigned);
    }
    let kid_start = kid_end - KID_LEN;
    if &body[kid_start - KID.len()..kid_start] != KID {
        return Err(AuthError::Unsigned);
    }
    let kid = std::str::from_utf8(&body[kid_start..kid_end])
        .ok()
        .filter(|k| is_kid(k))
        .ok_or(AuthError::Unsigned)?
        .to_string();
    let mut message = body[..kid_start - KID.len()].to_vec();
    message.push(b'}');
    Ok(Unsealed {
        message,
        kid,
        signed,
        sig,
    })
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Whether two secrets (tokens) are equal, compared in constant time for equal lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// New random key material.
pub fn random_key(rng: &mut impl rand::RngCore) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    rng.fill_bytes(&mut k);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leader() -> SignKey {
        SignKey::from_seed([7; KEY_LEN])
    }

    #[test]
    fn seal_and_unseal_round_trip() {
        let k = leader();
        let body = br#"{"v":4,"type":"x","n":1}"#;
        let sealed = seal(body, &k.kid, |d| k.sign(d));
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"v":4,"type":"x","n":1,"kid":""#),
            "{text}"
        );
        assert!(
            serde_json::from_slice::<serde_json::Value>(&sealed).is_ok(),
            "still JSON"
        );
        let u = unseal(&sealed).unwrap();
        assert_eq!(u.message, body);
        assert_eq!(u.kid, k.kid);
        assert!(k.public().check(&u.signed, &u.sig));
    }

    #[test]
    fn tampering_is_caught() {
        let k = leader();
        let sealed = seal(br#"{"t":100}"#, &k.kid, |d| k.sign(d));
        let mut forged = sealed.clone();
        forged[5] = b'9'; // {"t":900…
        let u = unseal(&forged).unwrap();
        assert!(!k.public().check(&u.signed, &u.sig));
        // Another key cannot sign for this one.
        let other = SignKey::from_seed([8; KEY_LEN]);
        let sealed = seal(br#"{"t":100}"#, &k.kid, |d| other.sign(d));
        let u = unseal(&sealed).unwrap();
        assert!(!k.public().check(&u.signed, &u.sig));
    }

    #[test]
    fn unsigned_shapes_are_refused() {
        for bad in [
            &br#"{"t":1}"#[..],
            br#"{"t":1,"sig":"00"}"#,
            br#"{"t":1,"kid":"zzzzzzzz","sig":"00"}"#,
            br#"{"t":1,"kid":"0011223","sig":"00"}"#,
            br#"{"t":1,"kid":"00112233","sig":"0g"}"#,
            br#","sig":""}"#,
            b"",
        ] {
            assert_eq!(
                unseal(bad),
                Err(AuthError::Unsigned),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn client_keys_are_distinct_and_carry_the_secrets_kid() {
        let secret = MacKey::new([1; KEY_LEN]);
        let a = secret.client_key(&Uuid::from_u128(1));
        let b = secret.client_key(&Uuid::from_u128(2));
        assert_ne!(a.bytes(), b.bytes());
        assert_eq!(
            (a.kid.as_str(), b.kid.as_str()),
            (secret.kid.as_str(), secret.kid.as_str())
        );
        let tag = a.tag(b"report");
        assert!(a.check(b"report", &tag));
        assert!(
            !b.check(b"report", &tag),
            "one client cannot speak for another"
        );
        assert_eq!(a.kid.len(), KID_LEN);
    }

    proptest! {
        /// Unsealing never panics, whatever the bytes.
        #[test]
        fn unseal_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = unseal(&bytes);
        }

        /// Any JSON object survives sealing, and any one-byte change to the sealed bytes is
        /// refused (as unsigned, or as a bad signature).
        #[test]
        fn sealed_objects_round_trip_and_resist_flips(
            n in any::<i64>(), s in "[a-z ]{0,20}", flip in 0usize..200, bit in 0u8..8
        ) {
            let body = serde_json::to_vec(&serde_json::json!({"n": n, "s": s})).unwrap();
            let key = MacKey::new([3; KEY_LEN]);
            let sealed = seal(&body, &key.kid, |d| key.tag(d));
            let u = unseal(&sealed).unwrap();
            prop_assert_eq!(&u.message, &body);
            prop_assert!(key.check(&u.signed, &u.sig));
            let mut bad = sealed.clone();
            let i = flip % bad.len();
            bad[i] ^= 1 << bit;
            if let Ok(u) = unseal(&bad) {
                prop_assert!(!(u.kid == key.kid && key.check(&u.signed, &u.sig)),
                    "a flipped byte {} went unnoticed", i);
            }
        }
    }

    #[test]
    fn weak_or_non_canonical_public_keys_are_refused() {
        let identity = {
            let mut b = [0u8; KEY_LEN];
            b[0] = 1; // y = 1: the neutral point, of small order
            b
        };
        assert!(VerifyKey::from_bytes(&identity).is_none());
        // y = p + 1 (2^255 - 18) is y = 1 written non-canonically.
        let mut non_canonical = [0xffu8; KEY_LEN];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(VerifyKey::from_bytes(&non_canonical).is_none());
        let real = SignKey::from_seed([7; KEY_LEN]).public();
        assert!(VerifyKey::from_bytes(&real.bytes()).is_some());
        assert!(is_kid(&real.kid));
        assert!(!is_kid("ABCDEF01") && !is_kid("abc") && !is_kid("abcdef0g"));
    }
}
