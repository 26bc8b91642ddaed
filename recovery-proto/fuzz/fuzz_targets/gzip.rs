//! Fuzzes the gzip reader of compressed kernels: the header (flags, extra field, name,
//! comment, header CRC), the DEFLATE stream and the trailer's CRC and length checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::gzip;

fuzz_target!(|data: &[u8]| {
    let _ = gzip::is_gzip(data);
    let _ = gzip::header_length(data);
    let mut out = vec![0u8; 256 * 1024];
    if let Ok(length) = gzip::inflate(data, &mut out) {
        assert!(length <= out.len());
    }
});
