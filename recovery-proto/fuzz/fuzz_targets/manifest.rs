//! Fuzzes the `zbmanifest.txt` parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        if let Some(max) = manifest.max_boot_failure {
            assert!((1..=15).contains(&max));
        }
    }
});
