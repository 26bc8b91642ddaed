//! Fuzzes the hand-off's device-tree edit on any blob a slot's `dtb.dtb` or the firmware
//! could hold: parse, find `/chosen`, replace `bootargs` and the initrd range in a buffer
//! with some room, read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::dtb;

fuzz_target!(|data: &[u8]| {
    let mut buffer = data.to_vec();
    buffer.resize(data.len() + 1024, 0);
    let _ = dtb::set_chosen(
        &mut buffer,
        "console=ttyAMA0 root=PARTUUID=0c0ffee0-02",
        Some((0x1000, 0x2000)),
    );
    let mut tight = data.to_vec();
    let _ = dtb::set_chosen(&mut tight, "", None);
});
