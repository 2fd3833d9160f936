//! What every target shares: one set of cluster keys for the whole run, and the rule by which
//! an input chooses between raw bytes and a message sealed with the right key.
//!
//! Random bytes almost never carry a valid signature, so on their own they would only exercise
//! the seal parser. An input whose first byte is even is taken as raw bytes off the wire; one
//! whose first byte is odd is taken as a message body that the target seals with the real key
//! first, so the fuzzer also reaches the schema, version and range checks behind the signature.

use std::sync::OnceLock;
use time_sync::keys::ClusterKeys;

pub fn keys() -> &'static ClusterKeys {
    static KEYS: OnceLock<ClusterKeys> = OnceLock::new();
    KEYS.get_or_init(|| ClusterKeys::generate("fuzz-operator-token"))
}

/// (whether to seal the rest first, the rest).
pub fn split(data: &[u8]) -> (bool, &[u8]) {
    match data.split_first() {
        Some((flag, rest)) => (flag & 1 == 1, rest),
        None => (false, data),
    }
}
