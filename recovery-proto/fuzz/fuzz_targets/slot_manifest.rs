//! Fuzzes the `slot.txt` parser: never panics; what it accepts writes back to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::slot_manifest::SlotManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = SlotManifest::parse(data) {
        assert!(manifest.check_required().is_ok());
        let written = manifest.to_string();
        let again = SlotManifest::parse(written.as_bytes()).expect("canonical text parses");
        assert_eq!(again.image_version, manifest.image_version);
        assert_eq!(again.files().len(), manifest.files().len());
    }
});
