//! The DWC2 host driver, hub enumeration and USB mass storage on QEMU raspi4b.
//!
//! The `zboot.test=usb` hook (loader/src/test_hooks.rs) brings the DWC2 up,
//! resets the root port, enumerates through the full-speed hub QEMU puts in
//! front of a `usb-storage` device (hw/usb/bus.c adds a `usb-hub` when the
//! DWC2's single port is taken), opens the stick (INQUIRY, TEST UNIT READY,
//! READ CAPACITY(10)) and prints FNV-1a checksums of LBA 0 and LBA 1..=200
//! (READ(10), split into 64 KiB commands). The tests compare them with the
//! image's bytes. Without a stick the hook reports "no USB mass-storage
//! device" within its bounds and the boot goes on (exit status 3: nothing
//! to boot, no card).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run, minimal_dtb};

const BLOCK: u64 = 512;
/// Blocks the hook reads after LBA 0 (`USB_READ_BLOCKS`).
const READ_BLOCKS: u64 = 200;
/// Stick size: 32 MiB.
const STICK_SIZE: u64 = 32 << 20;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Distinct, non-repeating bytes (xorshift64) for the stick's first blocks.
fn head_bytes(length: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A sparse stick image whose first 1 + READ_BLOCKS blocks hold
/// [`head_bytes`].
fn stick_image() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stick.img");
    let head = head_bytes(((1 + READ_BLOCKS) * BLOCK) as usize);
    let mut file = File::create(&path).expect("creating the image");
    file.set_len(STICK_SIZE).expect("sizing the image");
    file.write_all(&head).expect("writing the image head");
    (dir, path, head)
}

fn run_hook(stick: Option<&Path>, extra: &[&str]) -> Run {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the qemu-test loader");
    let mut qemu = Qemu::new(&loader.image)
        .dtb(&minimal_dtb().expect("compiling the DTB"))
        .append("zboot.test=usb")
        .extra_args(extra);
    if let Some(stick) = stick {
        qemu = qemu.usb_stick(stick);
    }
    let run = qemu.run().expect("running QEMU");
    println!("{run}");
    run
}

/// The loader went on after the hook and exited by itself with "nothing
/// to boot" (no card), not by a hang, a reset or a panic.
fn assert_boot_continued(run: &Run) {
    assert!(
        matches!(run.ending, Ending::Exited(3)),
        "the loader went on after the hook and exited with 3: {:?}",
        run.ending
    );
    assert!(!run.console_has("panicked"), "no panic");
}

fn assert_stick_read(run: &Run, head: &[u8], hub_depth: u32) {
    assert_boot_continued(run);
    assert!(
        run.console_has("usb: DWC2 GSNPSID 0x4f54"),
        "a DWC2 core answers at 0xfe980000"
    );
    assert!(
        run.console_has("usb: root port enabled, full speed"),
        "root port reset; QEMU's hub is full speed"
    );
    assert!(
        run.console_has(&format!("({}), {hub_depth} hub(s) deep", "full speed")),
        "the stick found behind {hub_depth} hub(s)"
    );
    // QEMU dev-storage.c: vendor 0x46f4, product 0x0001; INQUIRY from
    // scsi-disk ("QEMU", "QEMU HARDDISK").
    assert!(
        run.console_has("vendor 0x46f4 product 0x0001"),
        "device descriptor of QEMU's usb-storage"
    );
    assert!(
        run.console_has("usb: INQUIRY \"QEMU\" \"QEMU HARDDISK\""),
        "INQUIRY strings"
    );
    assert!(
        run.console_has(&format!(
            "usb: capacity {} blocks of 512 bytes",
            STICK_SIZE / BLOCK
        )),
        "READ CAPACITY(10)"
    );
    let first = fnv1a64(&head[..BLOCK as usize]);
    assert!(
        run.console_has(&format!("usb: LBA 0 fnv1a64 0x{first:016x}")),
        "LBA 0 read correctly"
    );
    let range = fnv1a64(&head[BLOCK as usize..]);
    assert!(
        run.console_has(&format!("usb: LBA 1+{READ_BLOCKS} fnv1a64 0x{range:016x}")),
        "LBA 1..=200 read correctly (two READ(10) commands)"
    );
    assert!(
        run.console_has("usb: read past the end refused"),
        "out-of-range read refused"
    );
    assert!(
        run.console_has("reset recoveries 0, USB transfers "),
        "transfer count, no recoveries on a healthy stick"
    );
    // The toggles come from HCTSIZ.PID as the core left it; QEMU's hcd-dwc2.c updates
    // the PID per packet, so it agrees with the packet count on every transfer.
    assert!(
        run.console_has(", toggle mismatches 0"),
        "HCTSIZ.PID and the packet count agree"
    );
}

#[test]
fn stick_behind_qemus_implicit_hub() {
    let (_dir, path, head) = stick_image();
    let run = run_hook(Some(&path), &[]);
    assert_stick_read(&run, &head, 1);
}

#[test]
fn stick_behind_two_hubs() {
    // An explicit hub on the root port and a second one on its port 1;
    // the stick goes on the second hub's port 1 (QEMU `port=` paths).
    let (_dir, path, head) = stick_image();
    let run = run_hook(
        Some(&path),
        &[
            "-device",
            "usb-hub,port=1",
            "-device",
            "usb-hub,port=1.1",
            "-global",
            "usb-storage.port=1.1.1",
        ],
    );
    assert_stick_read(&run, &head, 2);
}

#[test]
fn no_stick_is_reported_and_the_boot_goes_on() {
    let run = run_hook(None, &[]);
    assert_boot_continued(&run);
    assert!(
        run.console_has("usb: no USB mass-storage device: DWC2: no USB device connected"),
        "a clear message when nothing is attached"
    );
}

#[test]
fn a_keyboard_is_not_mass_storage() {
    // QEMU puts its hub in front of the keyboard too: two devices walked,
    // neither with a Bulk-Only SCSI interface.
    let run = run_hook(None, &["-device", "usb-kbd"]);
    assert_boot_continued(&run);
    assert!(
        run.console_has("usb: no USB mass-storage device (2 device(s), 1 hub(s) enumerated)"),
        "a clear message when no device is mass storage"
    );
}
