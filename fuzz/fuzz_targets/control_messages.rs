//! What a replica opens: control messages (`ToReplica`), HMAC-sealed with the replica key.
//! Oracles: nothing panics; raw bytes never open; what opens survives a round trip.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = &common::rings().server;
    let k = &ring.replica[0];
    let Some((sealed, bytes)) = common::input(data, &k.kid, |d| k.tag(d)) else {
        return;
    };
    if let Ok(m) = ring.open_control(&bytes) {
        assert!(sealed, "unsealed bytes opened as a control message");
        let again = ring.seal_control(&m).unwrap();
        assert_eq!(ring.open_control(&again).unwrap(), m);
    }
});
