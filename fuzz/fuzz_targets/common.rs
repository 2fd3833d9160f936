//! What every target shares: one set of cluster keys (and the key rings made from them) for the
//! whole run, and the rule by which an input chooses between raw bytes and a message sealed
//! with the right key.
//!
//! Random bytes almost never carry a valid signature, so on their own they would only exercise
//! the seal parser. An input whose first byte is even is taken as raw bytes off the wire; one
//! whose first byte is odd is taken as a message body that the target seals with the real key
//! first, so the fuzzer also reaches the schema, version and range checks behind the signature.

use std::sync::OnceLock;
use time_sync::core::keyring::KeyRing;
use time_sync::keys::ClusterKeys;
use uuid::Uuid;

/// The servers' ring, and the ring of client [`CLIENT_ID`].
pub struct Rings {
    pub server: KeyRing,
    pub client: KeyRing,
}

/// The client whose key seals the client messages the targets make.
pub const CLIENT_ID: Uuid = Uuid::from_u128(1);

/// Made once: deriving keys for every input would be most of the work.
pub fn rings() -> &'static Rings {
    static RINGS: OnceLock<Rings> = OnceLock::new();
    RINGS.get_or_init(|| {
        let keys = ClusterKeys::generate("fuzz-operator-token");
        Rings {
            server: keys.server_ring(),
            client: keys.client_ring(&CLIENT_ID),
        }
    })
}

/// The bytes to open, and whether they were sealed here: the input raw (first byte even), or
/// the rest sealed under `kid` by `sign` (first byte odd); `None` for a body that cannot be a
/// JSON object (sealing appends to its closing brace).
pub fn input(
    data: &[u8],
    kid: &str,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Option<(bool, Vec<u8>)> {
    match data.split_first() {
        Some((flag, body)) if flag & 1 == 1 => body
            .ends_with(b"}")
            .then(|| (true, time_sync::core::auth::seal(body, kid, sign))),
        Some((_, body)) => Some((false, body.to_vec())),
        None => Some((false, Vec::new())),
    }
}
