//! Fuzzes the `.zi` reader: header, trailer and manifest checks, then every region's
//! inflate + hash, with and without a key. It must never panic or read past its buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::image::{Decoder, Image, SliceSource};

fuzz_target!(|data: &[u8]| {
    let mut manifest = [0u8; 16 * 1024];
    let mut out = vec![0u8; 64 * 1024];
    let mut decoder = Box::new(Decoder::new());
    for key in [None, Some([7u8; 32])] {
        let Ok(image) = Image::open(&mut SliceSource(data), &mut manifest, key.as_ref()) else {
            continue;
        };
        let mut chunks = image.chunks(0);
        while let Ok(Some(_)) =
            chunks.next_chunk(&image, &mut SliceSource(data), &mut decoder, &mut out)
        {}
    }
});
