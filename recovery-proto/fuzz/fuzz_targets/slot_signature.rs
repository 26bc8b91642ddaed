//! Fuzzes `slot.sig`: the parser on any bytes a slot directory could hold, and the
//! verification of what parses against a fixed manifest and key (never a panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::slot_manifest::SlotManifest;
use recovery_proto::slot_signature::SlotSignature;

const MANIFEST: &[u8] = b"format=1\nimage_version=7\n\
    file=kernel.img size=100 sha256=0101010101010101010101010101010101010101010101010101010101010101\n\
    file=cmdline.txt size=20 sha256=0202020202020202020202020202020202020202020202020202020202020202\n";

fuzz_target!(|data: &[u8]| {
    if let Ok(signature) = SlotSignature::parse(data) {
        let manifest = SlotManifest::parse(MANIFEST).expect("the fixed manifest parses");
        let _ = signature.verify(&manifest, &signature.public_key);
        let _ = signature.verify(&manifest, &[0x11; 32]);
        // What parses prints back to text that parses to the same.
        let text = signature.to_string();
        assert_eq!(SlotSignature::parse(text.as_bytes()), Ok(signature));
    }
});
