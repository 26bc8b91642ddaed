//! Power cuts during a reflash, on QEMU: the run killed at progress lines,
//! and ended by the `cut-after-lba` test hook right after the write of a
//! chosen sector (the partition table, inside DATA, inside the boot
//! partition). After each cut a power-on without the stick must not boot,
//! the reflash must complete with the stick, and the eMMC must then match
//! the golden disk sector for sector.

use std::path::Path;

use serde_json::Value;
use zboot_qemu_tests::{Ending, Run};

use crate::common::zbctl;
use crate::kit::{
    Kit, assert_boots_a, boot, boot_with, differences, inspect_regions, partition_sectors,
    partition_start, path, read_at, resumed_from, write_at,
};

/// The exit status of a run ended by the `cut-after-lba` hook
/// (loader/src/test_hooks.rs, `POWER_CUT_EXIT`).
const POWER_CUT_EXIT: i32 = 9;

/// Boots with the stick and cuts power right after the write that covers
/// `lba` (the `zboot.test=cut-after-lba` hook of the test build).
fn cut_after_write_of(kit: &Kit, emmc: &Path, lba: u64) -> Run {
    let hook = format!("zboot.test=cut-after-lba:{lba}");
    let run = boot_with(emmc, Some(&kit.stick), None, &["-append", &hook]);
    assert_eq!(
        run.ending,
        Ending::Exited(POWER_CUT_EXIT),
        "the run ends at the cut"
    );
    assert!(run.console_has("test hook: power cut after the write of"));
    run
}

/// A power-on without the stick after a cut: the journal sends the unit to
/// recovery, which waits; no slot is chosen, nothing is booted.
fn assert_waits_without_the_stick(emmc: &Path) {
    let run = boot(emmc, None, Some("waiting for a (new) stick"));
    assert_eq!(run.ending, Ending::StopText, "it waits for a stick");
    assert!(run.console_has("recovery: a reflash was cut by power loss at region"));
    assert!(!run.console_has("decision:"), "no slot decision is taken");
    assert!(!run.console_has("test-kernel:"), "nothing boots");
}

/// Puts the stick back: the reflash completes from the journal and every
/// sector it wrote matches the golden disk. Returns the run.
fn complete_with_the_stick(kit: &Kit, emmc: &Path) -> Run {
    let run = boot(emmc, Some(&kit.stick), None);
    assert!(run.console_has("recovery: image written"));
    assert_eq!(run.ending, Ending::GuestReset);
    assert_eq!(
        differences(kit, emmc),
        Vec::<u64>::new(),
        "every sector the image defines matches the golden disk"
    );
    run
}

/// The image's regions that write something, as (partition number, first
/// LBA, sectors), in write order.
fn written_regions(kit: &Kit) -> Vec<(u64, u64, u64)> {
    let inspect = inspect_regions(kit);
    let partitions = inspect["partitions"].as_array().unwrap();
    let start_of = |number: u64| {
        partitions
            .iter()
            .find(|partition| partition["number"].as_u64() == Some(number))
            .unwrap()["start_lba"]
            .as_u64()
            .unwrap()
    };
    inspect["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|region| region["kind"] != "skip")
        .map(|region| {
            let number = region["partition"].as_u64().unwrap();
            let lba = start_of(number) + region["offset"].as_u64().unwrap() / 512;
            (number, lba, region["length"].as_u64().unwrap() / 512)
        })
        .collect()
}

/// `e2fsck -fn` on partition `number` of `image`: the file system is whole.
fn assert_ext4_clean(image: &Path, number: u64) {
    let start = partition_start(image, number);
    let sectors = partition_sectors(image, number);
    let bytes = std::fs::read(image).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.img");
    std::fs::write(
        &part,
        &bytes[usize::try_from(start * 512).unwrap()
            ..usize::try_from((start + sectors) * 512).unwrap()],
    )
    .unwrap();
    let output = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&part)
        .output()
        .expect("e2fsck (e2fsprogs; scripts/setup installs it)");
    assert!(
        output.status.success(),
        "e2fsck on partition {number}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_reflash_cut_right_after_the_partition_table_completes_and_writes_data() {
    // A blank eMMC: the table is the first region. Before the journal moved
    // out of the partitions, the next run took the DATA partition named by
    // that table for the user's, and never wrote it.
    let kit = Kit::new();
    let emmc = kit.blank_emmc();
    cut_after_write_of(&kit, &emmc, 0);
    assert_ne!(
        read_at(&emmc, 510, 2),
        [0, 0],
        "the cut came after the table was written"
    );
    assert_waits_without_the_stick(&emmc);
    let run = complete_with_the_stick(&kit, &emmc);
    assert!(run.console_has("recovery: the image's DATA partition was written"));
    assert!(!run.console_has("the DATA partition was left in place"));
    assert_ext4_clean(&emmc, 6);
    assert_boots_a(&emmc);
}

#[test]
fn a_reflash_cut_inside_data_completes_and_data_is_whole() {
    let kit = Kit::new();
    let emmc = kit.blank_emmc();
    let data: Vec<_> = written_regions(&kit)
        .into_iter()
        .filter(|&(number, _, _)| number == 6)
        .collect();
    assert!(data.len() > 1, "DATA has several regions: {data:?}");
    let (_, lba, _) = data[data.len() / 2];
    cut_after_write_of(&kit, &emmc, lba);
    assert_waits_without_the_stick(&emmc);
    let run = complete_with_the_stick(&kit, &emmc);
    assert!(resumed_from(&run) > 0, "resumed, not restarted");
    assert!(run.console_has("recovery: the image's DATA partition was written"));
    assert_ext4_clean(&emmc, 6);
    assert_boots_a(&emmc);
}

#[test]
fn a_reflash_cut_inside_the_boot_partition_never_boots_the_half_written_slots() {
    // The cut comes right after the image's own ZBSTATE.BIN is on the eMMC,
    // with more of the boot partition still to write: a valid slot state
    // beside incomplete slot files. The journal, not the state, decides.
    let kit = Kit::new();
    let emmc = kit.blank_emmc();
    let status: Value =
        serde_json::from_str(&zbctl(&["status", "--json", "--image", path(&kit.golden)])).unwrap();
    let state_lba = status["copies"][1]["lba"].as_u64().unwrap();
    let boot: Vec<_> = written_regions(&kit)
        .into_iter()
        .filter(|&(number, _, _)| number == 1)
        .collect();
    let at = boot
        .iter()
        .position(|&(_, lba, sectors)| (lba..lba + sectors).contains(&state_lba))
        .expect("a region holds the state");
    assert!(
        at + 1 < boot.len(),
        "boot regions follow the state's: {boot:?}"
    );
    cut_after_write_of(&kit, &emmc, state_lba);
    let cut: Value =
        serde_json::from_str(&zbctl(&["status", "--json", "--image", path(&emmc)])).unwrap();
    assert_eq!(
        cut["active"], "A",
        "the image's own state is readable: {cut}"
    );
    assert_waits_without_the_stick(&emmc);
    let run = complete_with_the_stick(&kit, &emmc);
    assert!(resumed_from(&run) > 0, "resumed, not restarted");
    assert_boots_a(&emmc);
}

#[test]
fn a_reflash_cut_by_power_loss_resumes_from_the_journal() {
    let kit = Kit::new();
    // A unit with a state file (so the journal has a home) that asks for recovery.
    std::fs::copy(&kit.golden, kit.dir.path().join("emmc.img")).unwrap();
    let emmc = kit.dir.path().join("emmc.img");
    zbctl(&["request-recovery", "--image", path(&emmc)]);
    // The user's data: a marker in the DATA partition's ext4 superblock
    // sector, which the image also carries. Same layout: it must survive.
    let data_lba = partition_start(&emmc, 6);
    let marker = b"zboot user data marker";
    write_at(&emmc, (data_lba + 2) * 512 + 200, marker);
    let run = boot(&emmc, Some(&kit.stick), Some("recovery: 30%"));
    assert_eq!(run.ending, Ending::StopText, "power cut part-way");
    let run = boot(&emmc, Some(&kit.stick), None);
    assert!(run.console_has("recovery: image written"));
    let resumed = resumed_from(&run);
    assert!(resumed > 0, "the second run resumed from region {resumed}");
    assert!(run.console_has("recovery: the DATA partition was left in place"));
    assert_eq!(
        read_at(&emmc, (data_lba + 2) * 512 + 200, marker.len()),
        marker,
        "DATA kept"
    );
    let data_end = data_lba + partition_sectors(&emmc, 6);
    let outside_data: Vec<u64> = differences(&kit, &emmc)
        .into_iter()
        .filter(|lba| !(data_lba..data_end).contains(lba))
        .collect();
    assert_eq!(outside_data, Vec::<u64>::new());
}

#[test]
fn a_reflash_cut_again_and_again_behind_two_hubs_still_completes() {
    // The stick two hubs deep (an explicit hub on the root port, a second on
    // its port 1: QEMU `port=` paths), and the reflash killed at 10 %, then
    // at 50 %, then at 80 %: each restart resumes from the journal.
    let hubs = [
        "-device",
        "usb-hub,port=1",
        "-device",
        "usb-hub,port=1.1",
        "-global",
        "usb-storage.port=1.1.1",
    ];
    let kit = Kit::new();
    std::fs::copy(&kit.golden, kit.dir.path().join("emmc.img")).unwrap();
    let emmc = kit.dir.path().join("emmc.img");
    zbctl(&["request-recovery", "--image", path(&emmc)]);
    for cut in ["recovery: 10%", "recovery: 50%", "recovery: 80%"] {
        let run = boot_with(&emmc, Some(&kit.stick), Some(cut), &hubs);
        assert_eq!(run.ending, Ending::StopText, "power cut at {cut}");
    }
    let run = boot_with(&emmc, Some(&kit.stick), None, &hubs);
    assert!(run.console_has("recovery: image written"));
    assert!(!run.console_has("image written: 0 regions (from 0)"));
    let run = boot(&emmc, None, None);
    assert!(
        run.console_has("zboot.slot=A zboot.attempt=1"),
        "and A boots"
    );
}

/// The random-cut campaign: `ZBOOT_CAMPAIGN_REFLASHES` (default 25)
/// reflashes of a blank eMMC, each killed (SIGKILL, as a power cut) 1 to 3
/// times at random moments of the run, then a power-on without the stick,
/// then completed with the stick, compared sector by sector with the golden
/// disk and booted. About 20 minutes, so not in `cargo xtask test`:
/// `cargo test -p zboot-qemu-tests --test recovery -- --ignored --nocapture
/// random_cut_campaign` (`ZBOOT_CAMPAIGN_SEED` repeats a campaign).
#[test]
#[ignore = "about 20 minutes; run by hand (docs/recovery.md)"]
fn random_cut_campaign() {
    let reflashes: usize = std::env::var("ZBOOT_CAMPAIGN_REFLASHES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("ZBOOT_CAMPAIGN_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("campaign: {reflashes} reflashes, seed {seed}");
    let mut rng = seed | 1;
    let mut next = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below.max(1)
    };
    let kit = Kit::with_payload(12);
    // How long a whole reflash runs here: the kills fall inside it.
    let whole = {
        let emmc = kit.blank_emmc();
        let run = boot(&emmc, Some(&kit.stick), None);
        assert!(run.console_has("recovery: image written"));
        run.wall_time
    };
    let (mut kills, mut mid_write, mut waited, mut finished_without_stick) = (0, 0, 0, 0);
    for reflash in 0..reflashes {
        let emmc = kit.blank_emmc();
        for _ in 0..=next(3) {
            let at = std::time::Duration::from_millis(next(whole.as_millis() as u64));
            let run = zboot_qemu_tests::Qemu::new(
                &zboot_qemu_tests::LoaderImage::get(zboot_qemu_tests::LoaderBuild::QemuTest)
                    .unwrap()
                    .image,
            )
            .dtb(&zboot_qemu_tests::minimal_dtb().unwrap())
            .emmc(&emmc)
            .usb_stick(&kit.stick)
            .timeout(at)
            .run()
            .unwrap();
            kills += 1;
            if run.console_has("recovery: image written") {
                continue;
            }
            if run.console.lines().any(|line| {
                line.contains("recovery: ") && line.contains("% (") && !line.contains("verified")
            }) {
                mid_write += 1;
            }
        }
        // Without the stick: an unfinished reflash waits; one cut after
        // its last region is finished and boots A; nothing else boots.
        let run = boot(&emmc, None, Some("waiting for a (new) stick"));
        if run.ending == Ending::StopText {
            assert!(
                !run.console_has("test-kernel:"),
                "reflash {reflash}: booted"
            );
            waited += 1;
        } else {
            assert!(
                run.console_has("zboot.slot=A"),
                "reflash {reflash}: neither waits nor boots A:\n{run}"
            );
            assert_eq!(
                differences(&kit, &emmc),
                Vec::<u64>::new(),
                "reflash {reflash}"
            );
            finished_without_stick += 1;
            continue;
        }
        let run = boot(&emmc, Some(&kit.stick), None);
        assert!(
            run.console_has("recovery: image written"),
            "reflash {reflash}"
        );
        assert_eq!(
            differences(&kit, &emmc),
            Vec::<u64>::new(),
            "reflash {reflash}: every sector the image defines matches"
        );
        assert_boots_a(&emmc);
        println!(
            "campaign: reflash {reflash} done (resumed from region {})",
            resumed_from(&run)
        );
    }
    println!(
        "campaign: {reflashes} reflashes, {kills} kills ({mid_write} in the write pass), \
         {waited} waited for the stick, {finished_without_stick} finished without it; \
         every one complete and booting A"
    );
}
