//! Fuzzes the state-record decoder and the redundant store over two arbitrary sectors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::{BLOCK_SIZE, State};

fuzz_target!(|data: &[u8]| {
    let mut block = [0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    block[..n].copy_from_slice(&data[..n]);
    if let Ok((state, sequence)) = State::decode(&block) {
        // Whatever decodes must re-encode to the same bytes (the format is canonical).
        assert_eq!(state.encode(sequence), block);
    }
});
