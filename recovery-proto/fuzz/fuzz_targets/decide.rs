//! Fuzzes the decision function on every state that decodes: it must keep its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::{BLOCK_SIZE, Decision, Facts, ResetReason, SlotState, State, decide};

fuzz_target!(|data: &[u8]| {
    let mut block = [0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    block[..n].copy_from_slice(&data[..n]);
    let Ok((state, _)) = State::decode(&block) else {
        return;
    };
    let flags = data.get(BLOCK_SIZE).copied().unwrap_or(0);
    let mut facts = Facts::new(ResetReason::from_u8(flags & 3).unwrap_or_default());
    facts.recovery_button = flags & 4 != 0;
    let outcome = decide(&state, &facts);
    if let Decision::Boot(slot) = outcome.decision {
        assert_ne!(state.slot(slot).state, SlotState::Bad);
    }
    for info in &outcome.state.slots {
        assert!(info.failed <= outcome.state.max_boot_failure);
    }
});
