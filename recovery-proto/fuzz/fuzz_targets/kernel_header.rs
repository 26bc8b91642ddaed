//! Fuzzes the arm64 Image header check (magic, text offset, image size, flags) with the
//! file size the slot claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::kernel_image::ImageHeader;

fuzz_target!(|data: &[u8]| {
    for file_size in [data.len() as u64, 0, u64::MAX, 64] {
        if let Ok(header) = ImageHeader::parse(data, file_size) {
            let _ = header.footprint(file_size);
        }
    }
});
