//! What a client opens: messages from the leader (`ToClient`), Ed25519-signed.
//! Oracles: nothing panics; raw bytes never open (that would be a forgery); a message that
//! opens survives encode → seal → open unchanged.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (seal_first, body) = common::split(data);
    let keys = common::keys();
    let server = keys.server_ring();
    let client = keys.client_ring(&uuid::Uuid::nil());
    let bytes = if seal_first {
        if !body.ends_with(b"}") {
            return;
        }
        let k = &server.leader[0];
        time_sync::core::auth::seal(body, &k.kid, |d| k.sign(d))
    } else {
        body.to_vec()
    };
    match client.open_from_leader(&bytes) {
        Ok(msg) => {
            assert!(seal_first, "unsealed bytes opened: {:?}", String::from_utf8_lossy(body));
            let again = server.seal_to_clients(&msg).unwrap();
            assert_eq!(client.open_from_leader(&again).unwrap(), msg);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
