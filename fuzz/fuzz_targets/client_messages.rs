//! What a server opens: reports (`TimeReport`) and requests (`ToServer`) from clients, each
//! HMAC-sealed with the key of the client it names. Inputs asked to be sealed are sealed with
//! the key of client `00000000-0000-0000-0000-000000000001`.
//! Oracles: nothing panics; raw bytes never open; what opens survives a round trip.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use time_sync::core::protocol::{TimeReport, ToServer};

fuzz_target!(|data: &[u8]| {
    let common::Rings { server, client } = common::rings();
    let k = &client.client[0];
    let Some((sealed, bytes)) = common::input(data, &k.kid, |d| k.tag(d)) else {
        return;
    };
    if let Ok(r) = server.open_from_client::<TimeReport>(&bytes) {
        assert!(sealed, "unsealed bytes opened as a report");
        assert_eq!(
            r.id,
            common::CLIENT_ID,
            "a report opened under another client's key"
        );
        let again = client.seal_from_client(&r).unwrap();
        assert_eq!(server.open_from_client::<TimeReport>(&again).unwrap(), r);
    }
    if let Ok(m) = server.open_from_client::<ToServer>(&bytes) {
        assert!(sealed, "unsealed bytes opened as a request");
        let again = client.seal_from_client(&m).unwrap();
        assert_eq!(server.open_from_client::<ToServer>(&again).unwrap(), m);
    }
});
