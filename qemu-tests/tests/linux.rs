//! A real Linux booted by zboot on QEMU raspi4b: Debian's arm64 kernel with
//! an initramfs that reads `zboot.slot` and confirms the boot with the
//! device's `zbctl mark-good` (docs/linux.md). Skipped, with the reason
//! printed, only when Debian's packages cannot be fetched; CI sets
//! `ZBOOT_REQUIRE_LINUX=1` so that they cannot be skipped there.

// Test helpers outside `#[test]` fns may unwrap too (clippy.toml covers only the fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::zbctl;
use serde_json::Value;
use zboot_qemu_tests::linux::{LinuxFiles, disk_create_arguments, initramfs, require_programs};
use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run};

/// The card's disk id: slot A's root is `PARTUUID=2b0071e5-02`.
const DISK_ID: &str = "2b0071e5";

struct Card {
    _dir: tempfile::TempDir,
    image: PathBuf,
    dtb: PathBuf,
}

impl Card {
    /// A card with Debian's kernel and the initramfs in A, B and SAFE;
    /// `extra` adds words to a slot's command line.
    fn new(files: &LinuxFiles, extra: &[(&str, &str)]) -> Self {
        Self::with_slot_a_dtb(files, extra, None)
    }

    /// [`Card::new`], and slot A carries `dtb` as its own `dtb.dtb`.
    fn with_slot_a_dtb(
        files: &LinuxFiles,
        extra: &[(&str, &str)],
        dtb: Option<&std::path::Path>,
    ) -> Self {
        require_programs().unwrap();
        let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
        let initramfs = initramfs(files).expect("building the initramfs");
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("emmc.img");
        let mut args =
            disk_create_arguments(files, &initramfs, &loader.image, &image, DISK_ID, extra);
        if let Some(dtb) = dtb {
            let spec = args
                .iter_mut()
                .find(|arg| arg.starts_with("A:kernel="))
                .unwrap();
            *spec = format!("{spec},dtb={}", dtb.display());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        zbctl(&args);
        Self {
            _dir: dir,
            image,
            dtb: files.dtb.clone(),
        }
    }

    fn path(&self) -> &str {
        self.image.to_str().unwrap()
    }

    fn failed_boots(&self, name: &str) -> u64 {
        let status: Value =
            serde_json::from_str(&zbctl(&["status", "--json", "--image", self.path()])).unwrap();
        status["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|slot| slot["name"] == name)
            .unwrap()["failed_boots"]
            .as_u64()
            .unwrap()
    }

    fn boot(&self) -> Run {
        let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
        let run = Qemu::new(&loader.image)
            .dtb(&self.dtb)
            .emmc(&self.image)
            // Linux's sdhci-iproc on QEMU's eMMC model logs "Got data interrupt 0x00000022
            // even though no data operation was in progress" and reads bad data (seen:
            // /init killed by SIGSEGV), a QEMU model problem. Linux runs on the SD model,
            // as on a CM4 Lite; zboot's eMMC path is what the bare-metal scenarios cover.
            .sd_card()
            // Linux under TCG: 10-40 s; the deadline only catches hangs.
            .timeout(Duration::from_mins(3))
            .run()
            .expect("running QEMU");
        println!("{run}");
        run
    }
}

/// The `zboot-linux: slot=…` line of `/init`.
fn linux_slot_line(run: &Run) -> &str {
    run.console
        .lines()
        .find(|line| line.starts_with("zboot-linux: slot="))
        .unwrap_or_else(|| panic!("Linux did not report its slot:\n{}", run.console))
}

#[test]
fn debian_linux_boots_from_slot_a_and_marks_it_good() {
    let Some(files) = LinuxFiles::or_skip("debian_linux_boots_from_slot_a_and_marks_it_good")
    else {
        return;
    };
    let card = Card::new(&files, &[]);
    let run = card.boot();
    assert!(run.console_has("decision: "), "zboot's decision is logged");
    assert!(run.console_has("handing off: kernel at 0x1000000"));
    assert!(
        run.console_has("Booting Linux on physical CPU"),
        "the kernel started"
    );
    let line = linux_slot_line(&run);
    assert!(
        line.starts_with("zboot-linux: slot=A attempt=1 root=/dev/mmcblk"),
        "{line}"
    );
    assert!(
        line.contains("p2 boot=/dev/mmcblk"),
        "A's root is partition 2: {line}"
    );
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-02")));
    assert!(run.console_has("zboot-linux: root file system mounted"));
    assert!(
        run.console_has("zboot-linux: mark-good: slot A confirmed good"),
        "zbctl on the device cleared the counter"
    );
    assert!(run.console_has("zboot-linux: mark-good OK"));
    assert_eq!(run.ending, Ending::GuestReset, "reboot -f resets the board");
    assert_eq!(card.failed_boots("A"), 0, "cleared by Linux user space");
}

/// Slot A ships Debian's own BCM2711 DTB, as a distribution kernel package installs it:
/// `memory@0 { reg = <0 0 0>; }`, no serial, no `/chosen/bootloader`. zboot carries the
/// firmware's fill-ins (QEMU's RAM, the stand-ins of the firmware tree) into it, and
/// the real kernel boots on it and confirms the slot.
#[test]
fn debian_linux_boots_on_the_stock_dtb_shipped_in_the_slot() {
    let Some(files) =
        LinuxFiles::or_skip("debian_linux_boots_on_the_stock_dtb_shipped_in_the_slot")
    else {
        return;
    };
    // The DTB as shipped, minus the emmc2 regulator supplies QEMU cannot model
    // (fetch-linux); its /memory is still the placeholder.
    let memory = std::process::Command::new("fdtget")
        .args(["-t", "x"])
        .arg(&files.dtb)
        .args(["/memory@0", "reg"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&memory.stdout).trim(),
        "0 0 0",
        "the shipped DTB has no RAM of its own"
    );
    // QEMU disables the nodes of its tree that raspi4b does not model (hw/arm/raspi4b.c
    // warns "bcm2711 dtc: … has been disabled"); the slot's copy gets the same, else
    // Linux waits on hardware that is not there. fdtput fails on a missing path.
    let dir = tempfile::tempdir().unwrap();
    let slot_dtb = dir.path().join("dtb.dtb");
    std::fs::copy(&files.dtb, &slot_dtb).unwrap();
    for node in [
        "/scb/pcie@7d500000",
        "/scb/ethernet@7d580000",
        "/soc/rng@7e104000",
        "/soc/avs-monitor@7d5d2000/thermal",
    ] {
        let status = std::process::Command::new("fdtput")
            .args(["-t", "s"])
            .arg(&slot_dtb)
            .args([node, "status", "disabled"])
            .status()
            .unwrap();
        assert!(status.success(), "{node} in the shipped DTB");
    }
    let card = Card::with_slot_a_dtb(&files, &[], Some(&slot_dtb));
    let run = card.boot();
    assert!(
        run.console_has("slot device tree: from the firmware's tree: "),
        "zboot carried the fill-ins"
    );
    assert!(run.console_has("Booting Linux on physical CPU"));
    assert!(
        run.console_has("Machine model: Raspberry Pi 4 Model B"),
        "Linux runs on the slot's tree"
    );
    // QEMU's firmware tree describes 960 MiB at 0 (0x3c000000): the placeholder's RAM is
    // none, so this figure came from the carry.
    assert!(
        run.console_has("K/983040K available"),
        "Linux sees the firmware's RAM"
    );
    let line = linux_slot_line(&run);
    assert!(line.starts_with("zboot-linux: slot=A attempt=1 "), "{line}");
    assert!(run.console_has("zboot-linux: mark-good: slot A confirmed good"));
    assert_eq!(card.failed_boots("A"), 0, "cleared by Linux user space");
}

#[test]
fn a_panicking_linux_in_a_is_tried_three_times_then_b_boots_and_marks_good() {
    let Some(files) = LinuxFiles::or_skip(
        "a_panicking_linux_in_a_is_tried_three_times_then_b_boots_and_marks_good",
    ) else {
        return;
    };
    // zbtest=panic: A's /init crashes the kernel (sysrq c) once its modules
    // are in; with panic=-1 the kernel resets at once through bcm2835_wdt.
    let card = Card::new(&files, &[("A", "zbtest=panic")]);
    for attempt in 1..=3_u32 {
        let run = card.boot();
        let line = linux_slot_line(&run);
        assert!(
            line.starts_with(&format!("zboot-linux: slot=A attempt={attempt} ")),
            "{line}"
        );
        assert!(
            run.console_has("Kernel panic - not syncing"),
            "A's kernel panics"
        );
        assert!(!run.console_has("zboot-linux: mark-good"));
        // A panic with panic=-1 resets the board: QEMU reports a guest reset.
        assert_eq!(run.ending, Ending::GuestReset);
        assert_eq!(card.failed_boots("A"), u64::from(attempt));
    }
    let run = card.boot();
    assert!(run.console_has("decision: "), "zboot logs why it left A");
    let line = linux_slot_line(&run);
    assert!(
        line.starts_with("zboot-linux: slot=B attempt=1 root=/dev/mmcblk"),
        "A used its 3 attempts: {line}"
    );
    assert!(line.contains("p3 boot="), "B's root is partition 3: {line}");
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-03")));
    assert!(run.console_has("zboot-linux: mark-good: slot B confirmed good"));
    assert_eq!(card.failed_boots("B"), 0, "B confirmed by Linux user space");
    assert_eq!(card.failed_boots("A"), 3, "A stays abandoned");
}

/// The U-Boot comparison (`cargo xtask bench` prints the same table); slow,
/// so only on request: `cargo test -p zboot-qemu-tests --test linux --
/// --ignored --nocapture compare_with_u_boot`.
#[test]
#[ignore = "a benchmark: four Linux boots, minutes under TCG"]
fn compare_with_u_boot() {
    if LinuxFiles::or_skip("compare_with_u_boot").is_none() {
        return;
    }
    let mut out = Vec::new();
    zboot_qemu_tests::linux::compare_with_u_boot(&mut out, &|args| Ok(zbctl(args))).unwrap();
    println!("{}", String::from_utf8(out).unwrap());
}
