//! The loader's foundation on QEMU raspi4b: banner, device tree handling,
//! fault reports, panics, the MMU-off hand-off path and bounded mailbox waits.

use std::path::{Path, PathBuf};

use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run, minimal_dtb};

/// The test build's exit status when it has nothing to boot (no card here).
const NOTHING_TO_BOOT: i32 = 3;

fn test_loader() -> LoaderImage {
    LoaderImage::get(LoaderBuild::QemuTest).expect("building the qemu-test loader")
}

fn run(qemu: &Qemu) -> Run {
    let run = qemu.run().expect("running QEMU");
    // Shown when a test fails (cargo test captures it otherwise).
    println!("{run}");
    run
}

fn boot(append: Option<&str>) -> Run {
    let loader = test_loader();
    let mut qemu = Qemu::new(&loader.image).dtb(&minimal_dtb().expect("compiling the DTB"));
    if let Some(append) = append {
        qemu = qemu.append(append);
    }
    run(&qemu)
}

/// Writes a copy of the minimal DTB with `edit` applied, for bad-input tests.
fn edited_dtb(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let mut bytes = std::fs::read(minimal_dtb().expect("compiling the DTB")).expect("reading DTB");
    edit(&mut bytes);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("writing DTB");
    (dir, path)
}

fn boot_with_dtb(dtb: Option<&Path>) -> Run {
    let loader = test_loader();
    let mut qemu = Qemu::new(&loader.image);
    if let Some(dtb) = dtb {
        qemu = qemu.dtb(dtb);
    }
    run(&qemu)
}

#[test]
fn banner_reports_version_level_board_memory_and_model() {
    let run = boot(None);
    assert_eq!(
        run.ending,
        Ending::Exited(NOTHING_TO_BOOT),
        "no card: nothing to boot"
    );
    assert!(
        run.console_has("no usable boot medium; waiting"),
        "says why it waits"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        run.console_has(&format!("zboot {version}")),
        "version in the banner"
    );
    assert!(
        run.console_has("running at EL2 (entered at EL2)"),
        "exception level"
    );
    // QEMU's raspi4b answers the mailbox as a Pi 4 Model B rev 1.5 with 2 GiB.
    assert!(
        run.console_has("board revision 0x00b03115"),
        "board revision from the mailbox"
    );
    assert!(
        run.console_has("Pi 4 Model B rev 1.5, 2 GiB"),
        "decoded revision"
    );
    assert!(
        run.console_has("board serial 0x"),
        "serial from the mailbox"
    );
    assert!(
        run.console_has("ARM memory 0x00000000+"),
        "ARM memory from the mailbox"
    );
    assert!(
        run.console_has("generic timer 62500000 Hz"),
        "CNTFRQ as QEMU programs it"
    );
    assert!(
        run.console_has("device tree: \"Raspberry Pi 4 Model B (zboot QEMU tree)\""),
        "the DTB model string"
    );
    assert!(
        run.console_has("MMU on"),
        "the MMU and caches are reported on"
    );
    // QEMU's property channel answers 700 MHz for the ARM clock's rate and maximum
    // alike (bcm2835_property.c), so zboot leaves it: the raise itself needs a board.
    assert!(
        run.console_has("ARM clock 700 MHz, its maximum"),
        "the ARM clock and its maximum are asked for"
    );
}

#[test]
fn missing_device_tree_is_reported_and_boot_continues() {
    // Without -dtb QEMU passes an ATAG list in x0.
    let run = boot_with_dtb(None);
    assert_eq!(run.ending, Ending::Exited(NOTHING_TO_BOOT));
    assert!(
        run.console_has("no usable device tree at 0x"),
        "warning names the address"
    );
    assert!(run.console_has("bad magic"), "warning names the problem");
    assert!(
        run.console_has("board revision 0x00b03115"),
        "the banner still completes"
    );
}

/// Where the bad-input tests place a broken DTB: QEMU refuses to pass one
/// with `-dtb`, so it is loaded as a blob and validated by the
/// `zboot.test=dtb-at:` hook through the same code that checks x0.
const BLOB_ADDRESS: u64 = 0x1000_0000;

fn boot_with_blob(blob: &Path) -> Run {
    let loader = test_loader();
    let qemu = Qemu::new(&loader.image)
        .dtb(&minimal_dtb().expect("compiling the DTB"))
        .append(&format!("zboot.test=dtb-at:0x{BLOB_ADDRESS:x}"))
        .load_blob(blob, BLOB_ADDRESS);
    run(&qemu)
}

#[test]
fn device_tree_with_a_bad_size_is_rejected() {
    let (_dir, dtb) = edited_dtb("bad-size.dtb", |bytes| {
        // totalsize (big-endian word at offset 4) beyond the 2 MiB limit.
        bytes[4..8].copy_from_slice(&0x0100_0000_u32.to_be_bytes());
    });
    let run = boot_with_blob(&dtb);
    assert_eq!(run.ending, Ending::Exited(NOTHING_TO_BOOT));
    assert!(
        run.console_has(
            "no usable device tree at 0x10000000: header totalsize 16777216 is outside"
        ),
        "names the address and the bad size"
    );
}

#[test]
fn device_tree_with_a_corrupt_structure_is_rejected() {
    let (_dir, dtb) = edited_dtb("bad-structure.dtb", |bytes| {
        // off_dt_struct (word at offset 8): the first token must be
        // FDT_BEGIN_NODE (1); make it an invalid token.
        let offset = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        bytes[offset..offset + 4].copy_from_slice(&0x0000_0077_u32.to_be_bytes());
    });
    let run = boot_with_blob(&dtb);
    assert_eq!(run.ending, Ending::Exited(NOTHING_TO_BOOT));
    assert!(
        run.console_has("no usable device tree at 0x10000000: malformed device tree"),
        "names the address and the problem"
    );
}

#[test]
fn device_tree_blob_check_accepts_a_good_tree() {
    // The control for the two tests above: the same path accepts the
    // unedited tree.
    let (_dir, dtb) = edited_dtb("good.dtb", |_| {});
    let run = boot_with_blob(&dtb);
    assert_eq!(run.ending, Ending::Exited(NOTHING_TO_BOOT));
    assert!(
        run.console_has("device tree: \"Raspberry Pi 4 Model B (zboot QEMU tree)\" at 0x10000000")
    );
}

#[test]
fn data_abort_prints_a_fault_report_and_resets() {
    let run = boot(Some("zboot.test=fault"));
    assert_eq!(run.ending, Ending::GuestReset, "a fault resets the board");
    assert!(run.console_has("unexpected exception at EL2 (synchronous, current EL)"));
    assert!(run.console_has("exception class 0x25: data abort"));
    assert!(run.console_has("translation fault (level 1), on a read"));
    assert!(
        run.console_has("FAR  0x0000004000000000"),
        "the faulting address"
    );
    assert!(run.console_has("ELR  0x"), "the faulting instruction");
    assert!(run.console_has("x0  0x"), "the general registers");
    assert!(run.console_has("x28 0x"), "all of them");
    assert!(run.console_has("resetting the board"));
}

#[test]
fn panic_reports_and_exits_with_failure() {
    let run = boot(Some("zboot.test=panic"));
    assert_eq!(
        run.ending,
        Ending::Exited(101),
        "a panic fails the QEMU run"
    );
    assert!(run.console_has("zboot: panic: "), "the panic is reported");
    assert!(
        run.console_has("deliberate panic (zboot.test=panic)"),
        "with its message"
    );
}

#[test]
fn mmu_off_hand_off_leaves_memory_coherent() {
    let run = boot(Some("zboot.test=handoff"));
    assert!(
        run.console_has("hand-off check: MMU off, D-cache off, pattern intact"),
        "the pattern written with caches on is in memory after the hand-off"
    );
    assert_eq!(run.ending, Ending::Exited(0));
}

#[test]
fn unanswered_mailbox_times_out_and_boot_continues() {
    let run = boot(Some("zboot.test=mailbox-unanswered"));
    assert_eq!(
        run.ending,
        Ending::Exited(NOTHING_TO_BOOT),
        "the loader goes on after the timeout"
    );
    assert!(
        run.console_has(
            "board revision unknown: mailbox: timed out waiting for Reply (mailbox at 0xfe900000)"
        ),
        "the warning names what was awaited and where"
    );
    assert!(run.console_has("test hook `mailbox-unanswered`"));
}
