//! The reflash power-cut sweep: the engine of USB recovery (`recovery_proto::reflash`)
//! writing a real `.zi` (made by `zbctl disk create` + `zbctl image convert`) onto a RAM
//! disk that loses power after a chosen sector write, leaving that sector torn.
//!
//! For every cut point (every [`STEP`]th sector write of a whole reflash, the tear kind
//! rotating through [`TEARS`]):
//! 1. the disk as the cut left it is booted without a stick, as the loader would (the
//!    reflash journal first, then the slot state and the decision): it must either go to
//!    recovery or boot from a disk that is complete, never from a half-written one;
//! 2. the reflash is resumed to its end, as with the stick put back;
//! 3. every sector the image defines is compared with the source disk, the user's DATA
//!    (when the layout keeps it) with what the user had, the slot state must be fresh and
//!    the journal cleared.
//!
//! Scenarios: a blank eMMC; a unit of the same layout whose DATA is kept; a unit of
//! another layout, whose DATA the image moves; a unit whose cut reflash is resumed
//! with a different image; and a unit as Raspberry Pi OS lays it out (`sfdisk`,
//! `mkfs.vfat`, `mke2fs`).
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::sync::OnceLock;

use common::{noise, ok, s};
use recovery_proto::block::{BLOCK_SIZE, BlockDevice, RamDisk, RamDiskError, Tear};
use recovery_proto::image::{Decoder, Image, RegionKind, Role, SliceSource};
use recovery_proto::locate;
use recovery_proto::reflash::{self, Buffers, DataOutcome, JOURNAL_LBAS, Settings};
use recovery_proto::store::RedundantStore;
use recovery_proto::{Decision, Facts, ResetReason, Slot, SlotState, decide};

/// Cut after every STEP-th sector write.
const STEP: usize = 4;
const TEARS: [fn(u64) -> Tear; 4] = [
    |_| Tear::NotWritten,
    |_| Tear::Prefix(200),
    Tear::Garbage,
    |_| Tear::Complete,
];

/// A disk made by `zbctl disk create` (60 MiB, MBR, boot 40 MiB) and its `.zi`.
struct Made {
    disk: Vec<u8>,
    zi: Vec<u8>,
}

fn make(dir: &Path, name: &str, version: u8, safe_mib: u64) -> Made {
    let loader = dir.join(format!("{name}.loader"));
    let kernel = dir.join(format!("{name}.kernel"));
    std::fs::write(&loader, noise(60_000, version)).unwrap();
    // An arm64 Image header (magic at 56) with noise behind it.
    let mut image = noise(40_000, version.wrapping_add(50));
    image[56..60].copy_from_slice(b"ARM\x64");
    std::fs::write(&kernel, image).unwrap();
    let disk = dir.join(format!("{name}.img"));
    let zi = dir.join(format!("{name}.zi"));
    let safe_size = format!("{safe_mib}M");
    let a = format!("A:kernel={},version={version}", s(&kernel));
    let b = format!("B:kernel={},version={version}", s(&kernel));
    let safe = format!("SAFE:kernel={}", s(&kernel));
    ok(&[
        "disk",
        "create",
        "--output",
        s(&disk),
        "--size",
        "60M",
        "--any-size",
        "--boot-size",
        "40M",
        "--root-size",
        "4M",
        "--safe-size",
        &safe_size,
        "--disk-id",
        "5a5a0001",
        "--loader",
        s(&loader),
        "--slot",
        &a,
        "--slot",
        &b,
        "--slot",
        &safe,
    ]);
    ok(&[
        "image",
        "convert",
        "--from-disk",
        s(&disk),
        "-o",
        s(&zi),
        "--name",
        name,
        "--version",
        &version.to_string(),
        "--chunk-kib",
        "64",
    ]);
    Made {
        disk: std::fs::read(&disk).unwrap(),
        zi: std::fs::read(&zi).unwrap(),
    }
}

fn ram_disk(bytes: &[u8]) -> RamDisk {
    RamDisk::from_bytes(bytes)
}

fn block(disk: &mut RamDisk, lba: u64) -> [u8; BLOCK_SIZE] {
    *disk.block_mut(lba).unwrap()
}

/// The sectors the image writes, by region: (first LBA, sectors, role).
fn defined_sectors(zi: &[u8]) -> Vec<(u64, u64, Role)> {
    let mut manifest = vec![0u8; 1 << 20];
    let image = Image::open(&mut SliceSource(zi), &mut manifest, None).unwrap();
    image
        .regions()
        .filter(|region| region.kind != RegionKind::Skip)
        .map(|region| {
            let partition = image.partition(region.partition.into()).unwrap();
            (
                partition.start_lba + region.offset / 512,
                region.length / 512,
                partition.role,
            )
        })
        .collect()
}

type Outcome = Result<
    reflash::Summary,
    reflash::ReflashError<recovery_proto::image::reader::OutOfBounds, RamDiskError>,
>;

/// The reflash's work memory, reused from run to run (fresh 1 MiB buffers per run
/// would cost the sweep more in page faults than the reflash itself).
struct Memory {
    manifest: Vec<u8>,
    output: Vec<u8>,
    decoder: Box<Decoder>,
    cache: Vec<u8>,
}

/// The verified-payload cache of the sweep's reflashes: smaller than the sweep's images, so
/// cuts land both where the write pass takes chunks from RAM and where it reads them again.
const CACHE_BYTES: usize = 512 * 1024;

thread_local! {
    static MEMORY: RefCell<Memory> = RefCell::new(Memory {
        manifest: vec![0u8; 1 << 20],
        output: vec![0u8; 1 << 20],
        decoder: Box::new(Decoder::new()),
        cache: vec![0u8; CACHE_BYTES],
    });
}

fn run_reflash(zi: &[u8], disk: &mut RamDisk) -> Outcome {
    MEMORY.with_borrow_mut(|memory| {
        reflash::reflash(
            &mut SliceSource(zi),
            disk,
            &Settings::default(),
            Buffers {
                manifest: &mut memory.manifest,
                output: &mut memory.output,
                decoder: &mut memory.decoder,
                cache: &mut memory.cache,
            },
            |_, _| {},
        )
    })
}

/// What the loader does at power-on without a stick: the journal first (an unfinished
/// reflash goes to recovery; one cut after its last region is finished, on a copy of
/// `disk`), then the slot state and the decision. `None`: recovery (or nothing bootable);
/// else the slot booted and the disk it booted from.
fn boot_without_stick(disk: &mut RamDisk) -> Option<(Slot, Option<RamDisk>)> {
    let mut finished = None;
    match reflash::pending(disk, JOURNAL_LBAS).unwrap() {
        Some(entry) if !entry.all_written() => return None,
        Some(_) => {
            let mut copy = disk.clone();
            reflash::finish(&mut copy, JOURNAL_LBAS).unwrap();
            finished = Some(copy);
        }
        None => {}
    }
    let booted = finished.as_mut().unwrap_or(disk);
    let location = locate::locate_state(booted).ok()?;
    let (state, _) = RedundantStore::new(location.lbas).load_or_fallback(booted);
    match decide(&state, &Facts::new(ResetReason::PowerOn)).decision {
        Decision::Boot(slot) => Some((slot, finished)),
        Decision::Recovery => None,
    }
}

/// One scenario: the target as it starts, the image cut, and the image resumed.
struct Scenario<'a> {
    name: &'a str,
    target: &'a [u8],
    cut: &'a Made,
    resume: &'a Made,
    /// The user's DATA partition, expected kept: (first LBA, sectors).
    kept: Option<(u64, u64)>,
}

#[derive(Default, Debug)]
struct Tally {
    cut_points: usize,
    booted_complete: usize,
    booted_untouched: usize,
    recovery: usize,
}

fn sweep(scenario: &Scenario<'_>) -> Tally {
    let defined = defined_sectors(&scenario.resume.zi);
    let source = &scenario.resume.disk;
    // A disk booted after a cut holds the image that was cut, if it is complete.
    let cut_defined = defined_sectors(&scenario.cut.zi);
    let cut_state_lbas = locate::locate_state(&mut ram_disk(&scenario.cut.disk))
        .unwrap()
        .lbas;
    let total = {
        let mut disk = ram_disk(scenario.target);
        run_reflash(&scenario.cut.zi, &mut disk).unwrap();
        disk.writes()
    };
    let state_lbas = locate::locate_state(&mut ram_disk(source)).unwrap().lbas;
    let pristine = ram_disk(scenario.target);
    let mut tally = Tally::default();
    for cut in (0..total).step_by(STEP) {
        let tear = TEARS[(cut / STEP) % TEARS.len()](cut as u64 + 1);
        let mut disk = pristine.clone();
        disk.cut_power_at_write(cut, tear);
        assert!(
            run_reflash(&scenario.cut.zi, &mut disk).is_err(),
            "{}: cut at write {cut} did not stop the reflash",
            scenario.name
        );
        disk.power_on();

        // 1. A power-on without the stick.
        match boot_without_stick(&mut disk) {
            None => tally.recovery += 1,
            Some((slot, finished)) => {
                let mut booted = finished.unwrap_or_else(|| disk.clone());
                let complete = matches_image(
                    &mut booted,
                    &scenario.cut.disk,
                    &cut_defined,
                    &cut_state_lbas,
                    scenario.kept,
                );
                let untouched = (0..booted.block_count())
                    .filter(|lba| !JOURNAL_LBAS.contains(lba))
                    .all(|lba| block(&mut booted, lba) == *block_of(scenario.target, lba));
                assert!(
                    complete || untouched,
                    "{}: cut at write {cut} ({tear:?}): slot {slot} booted from a half-written disk",
                    scenario.name
                );
                if complete {
                    tally.booted_complete += 1;
                } else {
                    tally.booted_untouched += 1;
                }
            }
        }

        // 2. The stick again: the reflash resumes (the resume image may differ).
        let unfinished = reflash::pending(&mut disk, JOURNAL_LBAS).unwrap().is_some();
        let summary = run_reflash(&scenario.resume.zi, &mut disk).unwrap_or_else(|error| {
            panic!("{}: cut at write {cut}: resume: {error}", scenario.name)
        });
        // A cut inside the journal's clear left a finished disk: its DATA is the user's.
        if let (Some((start, sectors)), true) = (scenario.kept, unfinished) {
            assert_eq!(
                summary.data,
                DataOutcome::Kept(reflash::Extent {
                    start_lba: start,
                    sectors
                }),
                "{}: cut at write {cut} ({tear:?})",
                scenario.name
            );
        } else if unfinished {
            assert_eq!(
                summary.data,
                DataOutcome::Written,
                "{}: cut at write {cut} ({tear:?})",
                scenario.name
            );
        }

        // 3. Every sector as the image says.
        check_resumed(
            scenario,
            &mut disk,
            &defined,
            &state_lbas,
            &format!("cut at write {cut} ({tear:?})"),
        );
        tally.cut_points += 1;
    }
    assert!(tally.cut_points * STEP >= total);
    println!("{}: {total} writes per reflash, {tally:?}", scenario.name);
    tally
}

/// After a resumed reflash: every sector the image defines as the source has it, the
/// user's DATA as it was, a fresh slot state, the journal cleared.
fn check_resumed(
    scenario: &Scenario<'_>,
    disk: &mut RamDisk,
    defined: &[(u64, u64, Role)],
    state_lbas: &[u64; 2],
    cut: &str,
) {
    assert!(
        matches_image(
            disk,
            &scenario.resume.disk,
            defined,
            state_lbas,
            scenario.kept
        ),
        "{}: {cut}: the resumed disk differs from the image",
        scenario.name
    );
    if let Some((start, sectors)) = scenario.kept {
        for lba in start..start + sectors {
            assert_eq!(
                block(disk, lba),
                *block_of(scenario.target, lba),
                "{}: {cut}: the user's DATA at LBA {lba} changed",
                scenario.name
            );
        }
    }
    let (state, _) = RedundantStore::new(*state_lbas).load(disk).unwrap();
    assert_eq!(
        (state.active, state.slots.map(|slot| slot.state)),
        (Slot::A, [SlotState::Good; 3]),
        "{}: {cut}: not a fresh state",
        scenario.name
    );
    assert_eq!(reflash::pending(disk, JOURNAL_LBAS).unwrap(), None);
    for lba in JOURNAL_LBAS {
        assert_eq!(block(disk, lba), [0; BLOCK_SIZE], "journal not cleared");
    }
}

fn block_of(bytes: &[u8], lba: u64) -> &[u8; BLOCK_SIZE] {
    let at = usize::try_from(lba).unwrap() * BLOCK_SIZE;
    bytes[at..at + BLOCK_SIZE].try_into().unwrap()
}

/// Whether every sector the image defines is as on `source` (the state sectors hold a
/// fresh state instead; a kept DATA partition holds the user's data instead).
fn matches_image(
    disk: &mut RamDisk,
    source: &[u8],
    defined: &[(u64, u64, Role)],
    state_lbas: &[u64; 2],
    kept: Option<(u64, u64)>,
) -> bool {
    defined.iter().all(|&(first, sectors, role)| {
        if role == Role::Data && kept.is_some() {
            return true;
        }
        (first..first + sectors)
            .filter(|lba| !state_lbas.contains(lba))
            .all(|lba| block(disk, lba) == *block_of(source, lba))
    })
}

/// `unit` with a marker written over its DATA partition's sectors (the user's data).
fn with_user_data(unit: &[u8], start: u64, sectors: u64) -> Vec<u8> {
    let mut bytes = unit.to_vec();
    let from = usize::try_from(start).unwrap() * BLOCK_SIZE;
    let to = from + usize::try_from(sectors).unwrap() * BLOCK_SIZE;
    for (i, byte) in bytes[from..to].iter_mut().enumerate() {
        *byte = (i % 251) as u8 ^ 0xa5;
    }
    bytes
}

/// DATA's extent on a disk made by [`make`] (partition 6).
fn data_extent(disk: &[u8]) -> (u64, u64) {
    let mut disk = ram_disk(disk);
    let partitions = recovery_proto::partition::Partitions::read(&mut disk).unwrap();
    let data = partitions.partition(6).unwrap();
    (data.start_lba, data.sectors)
}

/// A unit as Raspberry Pi OS lays it out, made by the standard tools: an MBR from
/// `sfdisk` with a FAT32 boot partition at 4 MiB (`mkfs.vfat`, holding `config.txt`,
/// `cmdline.txt` and a kernel) and one ext4 root (`mke2fs`) to the end; `bytes` long.
fn stock_unit(dir: &Path, bytes: usize) -> Vec<u8> {
    let run = common::run;
    let disk = dir.join("stock.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(bytes as u64)
        .unwrap();
    // Raspberry Pi OS images: the boot partition at sector 8192, the root after it.
    run(
        "sfdisk",
        &["--quiet", s(&disk)],
        Some("label: dos\nlabel-id: 0x5a5a0009\n8192,81920,c\n90112,,83\n"),
    );
    let boot = dir.join("stock-boot.img");
    run(
        "mkfs.vfat",
        &["-C", "-F", "32", "-n", "bootfs", s(&boot), "40960"],
        None,
    );
    for (name, text) in [
        ("config.txt", "[all]\nenable_uart=1\n[cm4]\notg_mode=1\n"),
        (
            "cmdline.txt",
            "console=serial0,115200 root=PARTUUID=5a5a0009-02 rootwait\n",
        ),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        run(
            "mcopy",
            &["-i", s(&boot), s(&file), &format!("::{name}")],
            None,
        );
    }
    let kernel = dir.join("kernel8.img");
    std::fs::write(&kernel, noise(40_000, 9)).unwrap();
    run(
        "mcopy",
        &["-i", s(&boot), s(&kernel), "::kernel8.img"],
        None,
    );
    let root = dir.join("stock-root.img");
    let root_bytes = bytes - 90_112 * BLOCK_SIZE;
    run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "rootfs",
            s(&root),
            &format!("{}k", root_bytes / 1024),
        ],
        None,
    );
    let mut image = std::fs::read(&disk).unwrap();
    for (start, part) in [(8192, &boot), (90_112, &root)] {
        let part = std::fs::read(part).unwrap();
        image[start * BLOCK_SIZE..start * BLOCK_SIZE + part.len()].copy_from_slice(&part);
    }
    image
}

/// The disks and images of the scenarios, made once.
struct Fixtures {
    _dir: tempfile::TempDir,
    image: Made,
    switched: Made,
    blank: Vec<u8>,
    unit: Vec<u8>,
    moved: Vec<u8>,
    stock: Vec<u8>,
    data: (u64, u64),
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let image = make(dir.path(), "new", 2, 4);
        let same_layout = make(dir.path(), "old", 1, 4);
        let other_layout = make(dir.path(), "other", 1, 5);
        let switched = make(dir.path(), "switched", 3, 4);
        let data = data_extent(&image.disk);
        assert_eq!(data, data_extent(&same_layout.disk));
        assert_ne!(data, data_extent(&other_layout.disk));
        let blank = vec![0u8; image.disk.len()];
        let unit = with_user_data(&same_layout.disk, data.0, data.1);
        let moved = {
            let (start, sectors) = data_extent(&other_layout.disk);
            with_user_data(&other_layout.disk, start, sectors)
        };
        let stock = stock_unit(dir.path(), image.disk.len());
        Fixtures {
            _dir: dir,
            stock,
            image,
            switched,
            blank,
            unit,
            moved,
            data,
        }
    })
}

/// Each scenario sweeps some 2,400 to 3,100 cut points; the four together more than
/// 10,000 (the count is asserted per scenario so that the total holds).
fn sweep_at_least(scenario: &Scenario<'_>, cut_points: usize) {
    let tally = sweep(scenario);
    assert!(
        tally.recovery > 0,
        "{}: no cut left the reflash unfinished",
        scenario.name
    );
    assert!(
        tally.cut_points >= cut_points,
        "{}: only {} cut points",
        scenario.name,
        tally.cut_points
    );
}

#[test]
fn a_reflash_onto_a_blank_emmc_cut_at_every_4th_write() {
    let f = fixtures();
    sweep_at_least(
        &Scenario {
            name: "blank eMMC",
            target: &f.blank,
            cut: &f.image,
            resume: &f.image,
            kept: None,
        },
        3000,
    );
}

#[test]
fn a_reflash_keeping_the_users_data_cut_at_every_4th_write() {
    let f = fixtures();
    sweep_at_least(
        &Scenario {
            name: "same layout, DATA kept",
            target: &f.unit,
            cut: &f.image,
            resume: &f.image,
            kept: Some(f.data),
        },
        2400,
    );
}

#[test]
fn a_reflash_moving_the_data_partition_cut_at_every_4th_write() {
    let f = fixtures();
    sweep_at_least(
        &Scenario {
            name: "another layout, DATA moved",
            target: &f.moved,
            cut: &f.image,
            resume: &f.image,
            kept: None,
        },
        3000,
    );
}

#[test]
fn a_stock_raspberry_pi_os_unit_reflashed_into_the_zboot_layout_cut_at_every_4th_write() {
    // A field unit as Raspberry Pi OS ships (sfdisk + mkfs.vfat + mke2fs): no DATA
    // partition, so the image's DATA is written; its old boot partition holds no slot
    // state, so a cut before the end never boots anything.
    let f = fixtures();
    sweep_at_least(
        &Scenario {
            name: "stock Raspberry Pi OS unit",
            target: &f.stock,
            cut: &f.image,
            resume: &f.image,
            kept: None,
        },
        3000,
    );
}

#[test]
fn a_cut_reflash_resumed_with_another_image_keeps_the_users_data() {
    let f = fixtures();
    sweep_at_least(
        &Scenario {
            name: "DATA kept, resumed with another image",
            target: &f.unit,
            cut: &f.image,
            resume: &f.switched,
            kept: Some(f.data),
        },
        2400,
    );
}

#[test]
fn zbctl_status_shows_an_unfinished_reflash_from_the_journal() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.img");
    // A reflash of the image onto the unit, cut half-way through its writes.
    let mut disk = ram_disk(&f.unit);
    disk.cut_power_at_write(5_000, Tear::Complete);
    assert!(run_reflash(&f.image.zi, &mut disk).is_err());
    disk.power_on();
    let entry = reflash::pending(&mut disk, JOURNAL_LBAS).unwrap().unwrap();
    let mut bytes = Vec::with_capacity(f.unit.len());
    for lba in 0..disk.block_count() {
        bytes.extend_from_slice(&block(&mut disk, lba));
    }
    std::fs::write(&path, &bytes).unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&ok(&["--image", s(&path), "status", "--json"])).unwrap();
    let journal = &status["reflash_journal"];
    assert_eq!(journal["next_region"], entry.next_region, "{status}");
    assert_eq!(journal["regions"], entry.regions);
    assert_eq!(
        journal["kept_data"][0], f.data.0,
        "the user's DATA is recorded as kept"
    );
    let text = ok(&["--image", s(&path), "status"]);
    assert!(
        text.contains("reflash:   UNFINISHED (journal at LBAs 64-65)"),
        "{text}"
    );
    // The untouched unit: no reflash under way.
    std::fs::write(&path, &f.unit).unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&ok(&["--image", s(&path), "status", "--json"])).unwrap();
    assert!(status["reflash_journal"].is_null(), "{status}");
    assert!(status.as_object().unwrap().contains_key("reflash_journal"));
}
