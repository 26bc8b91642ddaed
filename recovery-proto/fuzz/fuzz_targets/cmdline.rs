//! Fuzzes the command-line builder: a slot's `cmdline.txt` (any bytes) checked and joined
//! with zboot's own words into a bounded buffer; the result must fit and stay one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::Slot;
use recovery_proto::cmdline::{self, BootArgs};

fuzz_target!(|data: &[u8]| {
    let (control, line) = match data.split_first() {
        Some((&control, rest)) => (control, rest),
        None => return,
    };
    let _ = cmdline::check_line(line);
    let args = BootArgs {
        root_partuuid: "0c0ffee0-02",
        slot: Slot::ALL[usize::from(control % 3)],
        attempt: control >> 4,
        panic_seconds: (control & 8 != 0).then_some(1),
        serial: [Some("ttyS0"), (control & 4 != 0).then_some("ttyAMA0")],
        // The same bytes as the firmware's bootargs too: words of both lines meet.
        firmware: (control & 2 != 0)
            .then(|| core::str::from_utf8(line).ok())
            .flatten(),
    };
    let mut out = [0u8; 512];
    if let Ok(built) = cmdline::build(line, &args, &mut out) {
        assert!(!built.contains('\n'));
        assert!(built.contains("zboot.slot="));
    }
});
