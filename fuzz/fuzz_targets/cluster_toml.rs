//! What tsc reads: `cluster.toml`. Oracles: nothing panics; every error is one line naming the
//! file; a configuration that loads survives save → load unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use time_sync::runtime::cluster::ClusterConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let home = Path::new("/nonexistent-fuzz-home");
    match ClusterConfig::parse(text, home) {
        Ok(cfg) => {
            let again = toml::to_string(&cfg).unwrap();
            assert_eq!(ClusterConfig::parse(&again, home).unwrap(), cfg);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "a multi-line error: {msg}");
            assert!(
                msg.contains("cluster.toml"),
                "an error that names no file: {msg}"
            );
        }
    }
});
