//! Fuzzes carrying the firmware's fill-ins into a slot's tree: both blobs are untrusted
//! (the first byte says where the firmware's ends), the slot's buffer has some room, and
//! the result, when the carry succeeds, must still take the `/chosen` edit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::dtb;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (usize::from(cut) * 64).min(rest.len());
    let (firmware, slot) = rest.split_at(cut);
    let mut buffer = slot.to_vec();
    buffer.resize(slot.len() + 512, 0);
    if dtb::carry_firmware_facts(firmware, &mut buffer).is_ok() {
        let _ = dtb::set_chosen(&mut buffer, "console=ttyAMA0", None);
    }
    let mut tight = slot.to_vec();
    let _ = dtb::carry_firmware_facts(firmware, &mut tight);
});
