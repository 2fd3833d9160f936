//! What a server opens: reports (`TimeReport`) and requests (`ToServer`) from clients, each
//! HMAC-sealed with the key of the client it names. Inputs asked to be sealed are sealed with
//! the key of client `00000000-0000-0000-0000-000000000001`.
//! Oracles: nothing panics; raw bytes never open; what opens survives a round trip.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use time_sync::core::protocol::{TimeReport, ToServer};

fuzz_target!(|data: &[u8]| {
    let (seal_first, body) = common::split(data);
    let keys = common::keys();
    let server = keys.server_ring();
    let id = uuid::Uuid::from_u128(1);
    let client = keys.client_ring(&id);
    let bytes = if seal_first {
        if !body.ends_with(b"}") {
            return;
        }
        let k = &client.client[0];
        time_sync::core::auth::seal(body, &k.kid, |d| k.tag(d))
    } else {
        body.to_vec()
    };
    if let Ok(r) = server.open_from_client::<TimeReport>(&bytes) {
        assert!(seal_first, "unsealed bytes opened as a report");
        assert_eq!(r.id, id, "a report opened under another client's key");
        let again = client.seal_from_client(&r).unwrap();
        assert_eq!(server.open_from_client::<TimeReport>(&again).unwrap(), r);
    }
    if let Ok(m) = server.open_from_client::<ToServer>(&bytes) {
        assert!(seal_first, "unsealed bytes opened as a request");
        let again = client.seal_from_client(&m).unwrap();
        assert_eq!(server.open_from_client::<ToServer>(&again).unwrap(), m);
    }
});
