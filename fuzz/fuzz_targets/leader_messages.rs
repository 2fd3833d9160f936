//! What a client opens: messages from the leader (`ToClient`), Ed25519-signed.
//! Oracles: nothing panics; raw bytes never open (that would be a forgery); a message that
//! opens survives encode → seal → open unchanged.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let common::Rings { server, client } = common::rings();
    let k = &server.leader[0];
    let Some((sealed, bytes)) = common::input(data, &k.kid, |d| k.sign(d)) else {
        return;
    };
    match client.open_from_leader(&bytes) {
        Ok(msg) => {
            assert!(
                sealed,
                "unsealed bytes opened: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            let again = server.seal_to_clients(&msg).unwrap();
            assert_eq!(client.open_from_leader(&again).unwrap(), msg);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
