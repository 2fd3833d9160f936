//! What every node reads: its key files. Oracles: nothing panics; keys that parse are written
//! back and parse to the same keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time_sync::core::keyring::{format_keys, parse_keys};
use time_sync::keys::parse_client_keys;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = parse_keys(text) {
        let again = format_keys("fuzz", keys.iter());
        assert_eq!(parse_keys(&again).unwrap(), keys);
    }
    if let Ok(keys) = parse_client_keys(text) {
        assert!(keys.iter().all(|k| !k.kid.is_empty()));
    }
});
