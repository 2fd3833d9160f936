//! What a replica opens: control messages (`ToReplica`), HMAC-sealed with the replica key.
//! Oracles: nothing panics; raw bytes never open; what opens survives a round trip.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (seal_first, body) = common::split(data);
    let ring = common::keys().server_ring();
    let bytes = if seal_first {
        if !body.ends_with(b"}") {
            return;
        }
        let k = &ring.replica[0];
        time_sync::core::auth::seal(body, &k.kid, |d| k.tag(d))
    } else {
        body.to_vec()
    };
    if let Ok(m) = ring.open_control(&bytes) {
        assert!(seal_first, "unsealed bytes opened as a control message");
        let again = ring.seal_control(&m).unwrap();
        assert_eq!(ring.open_control(&again).unwrap(), m);
    }
});
