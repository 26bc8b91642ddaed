//! USB recovery when the stick is pulled out part-way, on QEMU raspi4b.
//!
//! The stick sits behind an explicit `usb-hub` (as on a CM4 IO board, whose
//! USB port goes through a hub), so pulling it out is a hub port change.
//! The harness pulls it with QMP when the console shows a text: `stop` (QEMU
//! drains its block requests, so no USB packet is in flight: hcd-dwc2.c's
//! `dwc2_child_detach` does not cancel one, and a later transfer on its
//! channel would trip `usb_packet_setup`'s in-flight assertion), then
//! `device_del`, then `cont`. A second stick, its `-drive` declared up
//! front, is plugged into the same port with `device_add` later.
//! Each scenario asserts on the console and on the eMMC image.

// Test helpers outside `#[test]` fns may unwrap too (clippy.toml covers only the fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::zbctl;
use serde_json::Value;
use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run, minimal_dtb};

/// QMP: pause the guest (and drain I/O), pull the stick, resume.
const PULL_STICK: [&str; 3] = [
    r#"{"execute":"stop"}"#,
    r#"{"execute":"device_del","arguments":{"id":"stick"}}"#,
    r#"{"execute":"cont"}"#,
];
/// QMP: plug the second stick into the port the first one left.
const PLUG_SECOND_STICK: &str = r#"{"execute":"device_add","arguments":{"driver":"usb-storage","id":"second-stick","drive":"second","port":"1.1"}}"#;

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A work directory with a golden disk, its `.zi`, and two sticks holding it.
struct Kit {
    dir: tempfile::TempDir,
    golden: PathBuf,
    zi: PathBuf,
    stick: PathBuf,
    second_stick: PathBuf,
}

impl Kit {
    fn new() -> Self {
        let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
        let kernel = LoaderImage::get(LoaderBuild::TestKernel).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let golden = dir.path().join("golden.img");
        let mut args = vec![
            "disk".to_owned(),
            "create".into(),
            "--output".into(),
            path(&golden).into(),
            "--size".into(),
            "256M".into(),
            "--disk-id".into(),
            "0c0ffee0".into(),
            "--loader".into(),
            loader.image.display().to_string(),
        ];
        for slot in ["A", "B", "SAFE"] {
            args.push("--slot".into());
            args.push(format!(
                "{slot}:kernel={},version=1",
                kernel.image.display()
            ));
            args.push("--cmdline".into());
            args.push(format!("{slot}=console=ttyAMA0 zbtest=good"));
        }
        zbctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let zi = dir.path().join("os.zi");
        zbctl(&[
            "image",
            "convert",
            "--from-disk",
            path(&golden),
            "-o",
            path(&zi),
            "--name",
            "os",
            "--version",
            "1",
        ]);
        let stick = dir.path().join("stick.img");
        zbctl(&["usb", "create", "--zi", path(&zi), "-o", path(&stick)]);
        // Its own file: QEMU locks each image it opens.
        let second_stick = dir.path().join("second-stick.img");
        std::fs::copy(&stick, &second_stick).unwrap();
        Self {
            dir,
            golden,
            zi,
            stick,
            second_stick,
        }
    }

    /// A blank eMMC the size of the golden one: a bricked unit.
    fn blank_emmc(&self) -> PathBuf {
        let emmc = self.dir.path().join("emmc.img");
        let file = std::fs::File::create(&emmc).unwrap();
        file.set_len(std::fs::metadata(&self.golden).unwrap().len())
            .unwrap();
        emmc
    }

    /// A QEMU run of the loader on `emmc` with the first stick on port 1 of
    /// an explicit hub (id `stick`) and the second one's drive declared.
    fn qemu(&self, emmc: &Path) -> Qemu {
        let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
        let first = format!("if=none,id=first,format=raw,file={}", path(&self.stick));
        let second = format!(
            "if=none,id=second,format=raw,file={}",
            path(&self.second_stick)
        );
        Qemu::new(&loader.image)
            .dtb(&minimal_dtb().unwrap())
            .emmc(emmc)
            .extra_args(&[
                "-device",
                "usb-hub,port=1",
                "-drive",
                &first,
                "-device",
                "usb-storage,id=stick,drive=first,port=1.1",
                "-drive",
                &second,
            ])
    }
}

/// `qemu` with the stick pulled when the console shows `text`.
fn pull_stick_at(qemu: Qemu, text: &str) -> Qemu {
    let [stop, delete, resume] = PULL_STICK;
    qemu.qmp_when(text, stop)
        .qmp_when("", delete)
        .qmp_when("", resume)
}

fn finish(qemu: &Qemu) -> Run {
    let run = qemu.run().unwrap();
    println!("{run}");
    assert!(
        !run.qemu_log.contains("QMP error reply"),
        "every QMP command was accepted"
    );
    run
}

/// The next power-on boots A from the reflashed eMMC.
fn assert_boots_a(emmc: &Path) {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
    let run = Qemu::new(&loader.image)
        .dtb(&minimal_dtb().unwrap())
        .emmc(emmc)
        .run()
        .unwrap();
    println!("{run}");
    assert!(
        run.console_has("test-kernel: bootargs: console=ttyAMA0 zbtest=good root=PARTUUID=0c0ffee0-02 zboot.slot=A zboot.attempt=1"),
        "A boots"
    );
}

/// Sectors of `emmc` that differ from the golden disk, outside the two
/// state sectors (recovery writes a fresh state) and outside the image's
/// skip regions (free space, not written).
fn differences(kit: &Kit, emmc: &Path) -> Vec<u64> {
    let inspect: Value = serde_json::from_str(&zbctl(&[
        "image",
        "inspect",
        "--json",
        "--regions",
        path(&kit.zi),
    ]))
    .unwrap();
    let status: Value =
        serde_json::from_str(&zbctl(&["status", "--json", "--image", path(emmc)])).unwrap();
    let state: Vec<u64> = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|copy| copy["lba"].as_u64().unwrap())
        .collect();
    let mut skipped = Vec::new();
    for partition in inspect["partitions"].as_array().unwrap() {
        let start = partition["start_lba"].as_u64().unwrap();
        for region in partition["regions"].as_array().into_iter().flatten() {
            if region["kind"] == "skip" {
                let first = start + region["offset"].as_u64().unwrap() / 512;
                let count = region["length"].as_u64().unwrap() / 512;
                skipped.push(first..first + count);
            }
        }
    }
    let golden = std::fs::read(&kit.golden).unwrap();
    let written = std::fs::read(emmc).unwrap();
    golden
        .chunks(512)
        .zip(written.chunks(512))
        .enumerate()
        .map(|(lba, pair)| (lba as u64, pair))
        .filter(|(lba, (a, b))| {
            a != b && !state.contains(lba) && !skipped.iter().any(|range| range.contains(lba))
        })
        .map(|(lba, _)| lba)
        .collect()
}

#[test]
fn a_stick_pulled_before_the_first_write_leaves_the_emmc_untouched_and_a_new_one_recovers() {
    let kit = Kit::new();
    let emmc = kit.blank_emmc();
    let before = std::fs::read(&emmc).unwrap();
    // The image is being read for verification (nothing is written before
    // all of it has been checked): pull the stick in the middle of it.
    let found = "recovery: verified 10%";
    let run = finish(&pull_stick_at(kit.qemu(&emmc), found).stop_at("recovery: stick removed"));
    assert_eq!(run.ending, Ending::StopText, "it waits for a stick");
    assert!(
        run.console_has("the USB device was unplugged"),
        "the failed read says why"
    );
    assert!(run.console_has("recovery: the stick was pulled out: nothing written"));
    assert!(
        !run.console_has("recovery: verified 100%"),
        "pulled during the verify pass"
    );
    assert!(!run.console_has("recovery: 0%"), "no region was written");
    assert_eq!(
        std::fs::read(&emmc).unwrap(),
        before,
        "the eMMC is byte-identical"
    );

    // Again, and this time a new stick goes in once the loader has seen
    // the port empty: it recovers the unit, which then boots A.
    let run = finish(
        &pull_stick_at(kit.qemu(&emmc), found)
            .qmp_when("recovery: stick removed", PLUG_SECOND_STICK),
    );
    assert!(run.console_has("the USB device was unplugged"));
    assert!(run.console_has("recovery: image written"));
    assert_eq!(run.ending, Ending::GuestReset, "and resets");
    assert_eq!(differences(&kit, &emmc), Vec::<u64>::new());
    assert_boots_a(&emmc);
}

#[test]
fn a_stick_pulled_while_writing_waits_and_a_new_one_resumes_from_the_journal() {
    let kit = Kit::new();
    // A unit with a state file (the journal's home) that asks for recovery.
    let emmc = kit.dir.path().join("emmc.img");
    std::fs::copy(&kit.golden, &emmc).unwrap();
    zbctl(&["request-recovery", "--image", path(&emmc)]);
    let run = finish(
        &pull_stick_at(kit.qemu(&emmc), "recovery: 30%")
            .qmp_when("recovery: waiting for a (new) stick", PLUG_SECOND_STICK),
    );
    assert!(
        run.console_has("the USB device was unplugged"),
        "the failed read says why"
    );
    assert!(run.console_has("recovery: the stick was pulled out; insert it"));
    assert!(run.console_has("recovery: interrupted"));
    assert!(run.console_has("recovery: waiting for a (new) stick"));
    assert!(run.console_has("recovery: image written"));
    assert_eq!(run.ending, Ending::GuestReset, "and resets");
    let resumed = run
        .console
        .lines()
        .find_map(|line| line.split("(from ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|number| number.parse::<u32>().ok())
        .unwrap();
    assert!(resumed > 0, "the new stick resumed from region {resumed}");
    assert_eq!(
        differences(&kit, &emmc),
        Vec::<u64>::new(),
        "every written sector matches the image"
    );
    assert_boots_a(&emmc);
}
