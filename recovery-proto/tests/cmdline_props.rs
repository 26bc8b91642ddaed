//! Property tests of the kernel command-line builder and the slot-manifest parser.

use proptest::prelude::*;
use recovery_proto::Slot;
use recovery_proto::cmdline::{self, BootArgs, CmdlineError, MAX_LENGTH};
use recovery_proto::slot_manifest::SlotManifest;

/// Words a real `cmdline.txt` holds, including the ones zboot owns and quoted values.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("root=/dev/mmcblk0p2".to_string()),
        Just("root=PARTUUID=deadbeef-03".to_string()),
        Just("\"root=a b\"".to_string()),
        Just("zboot.slot=B".to_string()),
        Just("zboot.attempt=9".to_string()),
        Just("zboot.attempt".to_string()),
        Just("rootwait".to_string()),
        Just("rootfstype=ext4".to_string()),
        Just("panic=5".to_string()),
        Just("dyndbg=\"file root=x +p\"".to_string()),
        Just("--".to_string()),
        "[a-z.]{1,8}(=[a-z0-9,]{0,6})?",
    ]
}

fn line() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (word(), prop_oneof![Just(" "), Just("  "), Just("\t")]),
            0..20,
        ),
        prop_oneof![Just(""), Just("\n"), Just("\r\n")],
    )
        .prop_map(|(words, end)| {
            let mut line: String = words.into_iter().map(|(w, sep)| w + sep).collect();
            line.push_str(end);
            line
        })
}

fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![Just(Slot::A), Just(Slot::B), Just(Slot::Safe)]
}

proptest! {
    #[test]
    fn one_root_and_the_zboot_words_last(
        input in line(),
        slot in slot(),
        attempt in 1u8..=15,
        panic in prop::option::of(0u32..100),
    ) {
        let args = BootArgs { root_partuuid: "1a2b3c4d-05", slot, attempt, panic_seconds: panic, serial: [None, None], firmware: None };
        let mut out = [0u8; 4096];
        let built = cmdline::build(input.as_bytes(), &args, &mut out).unwrap();
        prop_assert!(built.len() <= MAX_LENGTH);
        // Kernel parameters end at the first `--`; the rest is init's, left as it was.
        let words: Vec<&str> = cmdline::words(built).collect();
        let kernel: Vec<&str> = words.iter().copied().take_while(|w| *w != "--").collect();
        let count = |key: &str| kernel.iter().filter(|w| cmdline::key(w) == key).count();
        prop_assert_eq!(count("root"), 1);
        prop_assert_eq!(count("zboot.slot"), 1);
        prop_assert_eq!(count("zboot.attempt"), 1);
        let expected_tail = [
            "root=PARTUUID=1a2b3c4d-05".to_string(),
            format!("zboot.slot={}", slot.name()),
            format!("zboot.attempt={attempt}"),
        ];
        let had_panic = cmdline::words(input.trim_end())
            .take_while(|w| *w != "--")
            .any(|w| cmdline::key(w) == "panic");
        let tail_len = if panic.is_some() && !had_panic { 4 } else { 3 };
        let input_panics = cmdline::words(input.trim_end())
            .take_while(|w| *w != "--")
            .filter(|w| cmdline::key(w) == "panic")
            .count();
        prop_assert_eq!(count("panic"), input_panics + tail_len - 3);
        let tail = &kernel[kernel.len() - tail_len..];
        prop_assert_eq!(&tail[..3], &expected_tail[..]);
        if tail_len == 4 {
            prop_assert_eq!(tail[3].to_string(), format!("panic={}", panic.unwrap()));
        }
        if !input.contains("--") {
            let last = kernel.last().copied().unwrap_or_default();
            prop_assert!(built.ends_with(last));
        }
        // Idempotent (when no panic= was added, which would move before zboot's words).
        if tail_len == 3 {
            let mut again = [0u8; 4096];
            prop_assert_eq!(cmdline::build(built.as_bytes(), &args, &mut again).unwrap(), built);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), size in 0usize..400) {
        let args = BootArgs { root_partuuid: "1a2b3c4d-02", slot: Slot::B, attempt: 1, panic_seconds: Some(1), serial: [None, None], firmware: None };
        let mut out = vec![0u8; size];
        match cmdline::build(&bytes, &args, &mut out) {
            Ok(line) => prop_assert!(line.len() <= size),
            Err(CmdlineError::TooLong { length, max }) => prop_assert!(length > max),
            Err(_) => {}
        }
    }

    #[test]
    fn slot_manifest_never_panics_and_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(manifest) = SlotManifest::parse(&bytes) {
            let text = manifest.to_string();
            let again = SlotManifest::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(again.image_version, manifest.image_version);
        }
    }
}
