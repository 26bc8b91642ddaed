//! `zbctl` end to end: real MBR + FAT disk images made in Rust, the real binary, bytes on disk.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
mod common;

use recovery_proto::locate::locate_state;
use recovery_proto::{
    BLOCK_SIZE, Decision, Facts, RedundantStore, ResetReason, Slot, State, decide,
};
use zboot_tools::zbctl::disk::{FileDisk, Window};

const START: u64 = 2048;

/// A disk image: MBR, one FAT partition (FAT32 unless `fat16`), `files` written, `remove`d after.
fn image(dir: &Path, fat16: bool, files: &[(&str, usize)], remove: &[&str]) -> PathBuf {
    let path = dir.join("disk.img");
    let sectors: u64 = if fat16 { 20_000 } else { 80_000 };
    let file = File::create(&path).unwrap();
    file.set_len((START + sectors + 64) * BLOCK_SIZE as u64)
        .unwrap();
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&0x5eed_cafeu32.to_le_bytes());
    mbr[446] = 0x80;
    mbr[450] = 0x0C;
    mbr[454..458].copy_from_slice(&(START as u32).to_le_bytes());
    mbr[458..462].copy_from_slice(&(sectors as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.write_all_at(&mbr, 0).unwrap();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let window = || (START * BLOCK_SIZE as u64, sectors * BLOCK_SIZE as u64);
    let (start, len) = window();
    let fat_type = if fat16 {
        fatfs::FatType::Fat16
    } else {
        fatfs::FatType::Fat32
    };
    fatfs::format_volume(
        Window::new(&mut file, start, len),
        fatfs::FormatVolumeOptions::new()
            .fat_type(fat_type)
            .bytes_per_cluster(512),
    )
    .unwrap();
    let fs = fatfs::FileSystem::new(Window::new(&mut file, start, len), fatfs::FsOptions::new())
        .unwrap();
    for (name, size) in files {
        let mut f = fs.root_dir().create_file(name).unwrap();
        f.write_all(&vec![0x42; *size]).unwrap();
    }
    for name in remove {
        fs.root_dir().remove(name).unwrap();
    }
    fs.unmount().unwrap();
    path
}

fn zbctl(target: &[&str], args: &[&str]) -> (bool, String, String) {
    let output = common::zbctl_command()
        .args(target)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn ok(target: &[&str], args: &[&str]) -> String {
    let (success, stdout, stderr) = zbctl(target, args);
    assert!(success, "zbctl {args:?} failed: {stderr}");
    stdout
}

fn fails(target: &[&str], args: &[&str]) -> String {
    let (success, stdout, stderr) = zbctl(target, args);
    assert!(!success, "zbctl {args:?} should fail, printed {stdout}");
    stderr
}

fn json(target: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(target, &["status", "--json"])).unwrap()
}

/// Reads both copies straight from the image.
type Decoded = Result<(State, u32), recovery_proto::DecodeError>;

fn copies(path: &Path) -> (Vec<Decoded>, [u64; 2]) {
    let mut disk = FileDisk::new(File::open(path).unwrap()).unwrap();
    let lbas = locate_state(&mut disk).unwrap().lbas;
    let file = File::open(path).unwrap();
    let mut out = Vec::new();
    for lba in lbas {
        let mut block = [0u8; BLOCK_SIZE];
        file.read_exact_at(&mut block, lba * BLOCK_SIZE as u64)
            .unwrap();
        out.push(State::decode(&block));
    }
    (out, lbas)
}

/// What the loader does on one boot; returns the decision and the sectors written.
fn loader_boot(path: &Path, facts: Facts) -> (Decision, usize) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut disk = FileDisk::new(file).unwrap();
    let lbas = locate_state(&mut disk).unwrap().lbas;
    let mut store = RedundantStore::new(lbas);
    let (state, _) = store.load_or_fallback(&mut disk);
    let outcome = decide(&state, &facts);
    store
        .save_if_changed(&mut disk, &state, &outcome.state)
        .unwrap();
    (outcome.decision, disk.writes())
}

fn image_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The LBA a message reports, which must say what it counts from: here the image, from its
/// first sector.
fn reported_lba(out: &str, image: &Path) -> usize {
    let lba = out
        .split("(LBA ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no LBA in {out}"));
    assert!(
        out.contains(&format!("(LBA {lba} of {}, ", image.display())),
        "{out}"
    );
    lba
}

#[test]
fn init_boot_mark_good_try_set_active_on_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), false, &[("config.txt", 300)], &[]);
    let target = ["--image", path.to_str().unwrap()];

    let out = ok(&target, &["init-state"]);
    assert!(out.starts_with("created"), "{out}");
    let (both, lbas) = copies(&path);
    assert_eq!(lbas[1], lbas[0] + 1);
    assert_eq!(both[0].as_ref().unwrap().0, State::fresh());
    assert_eq!(both[1].as_ref().unwrap().0, State::fresh());

    let status = json(&target);
    assert_eq!(status["active"], "A");
    assert_eq!(status["backup"], "B");
    assert_eq!(status["slots"][0]["failed_boots"], 0);
    assert_eq!(status["copies"][0]["valid"], true);

    let err = fails(&target, &["init-state"]);
    assert!(
        err.contains("already holds a valid slot state") && err.contains("--force"),
        "{err}"
    );
    let err = fails(&target, &["mark-good"]);
    assert!(err.contains("no boot recorded"), "{err}");

    // A loader boot writes exactly one sector.
    assert_eq!(
        loader_boot(&path, Facts::new(ResetReason::PowerOn)),
        (Decision::Boot(Slot::A), 1)
    );
    let status = json(&target);
    assert_eq!(status["slots"][0]["failed_boots"], 1);
    assert_eq!(status["history"][0]["outcome"], "pending");
    assert_eq!(
        status["history"][0]["reason"],
        "slot A: 0 failed boots of 3, booting A"
    );

    let before = image_bytes(&path);
    let out = ok(&target, &["mark-good"]);
    assert!(out.contains("slot A confirmed good; wrote copy"), "{out}");
    let lba = reported_lba(&out, &path);
    let after = image_bytes(&path);
    // Exactly one sector changed.
    let changed: Vec<usize> = (0..before.len() / BLOCK_SIZE)
        .filter(|i| {
            before[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]
                != after[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]
        })
        .collect();
    assert_eq!(changed.len(), 1);
    assert!(lbas.contains(&(changed[0] as u64)));
    assert_eq!(changed[0], lba, "the sector the message named");
    let newest = copies(&path)
        .0
        .into_iter()
        .flatten()
        .max_by_key(|(_, seq)| *seq)
        .unwrap()
        .0;
    assert_eq!(newest.slot(Slot::A).failed, 0);

    let out = ok(&target, &["mark-good"]);
    assert!(out.contains("nothing written"), "{out}");
    assert_eq!(image_bytes(&path), after);

    ok(&target, &["try", "B"]);
    assert_eq!(json(&target)["one_shot"], "B");
    assert_eq!(
        loader_boot(&path, Facts::new(ResetReason::Software)).0,
        Decision::Boot(Slot::B)
    );
    // Not confirmed: the next boot is back on A, and status says why B was left.
    assert_eq!(
        loader_boot(&path, Facts::new(ResetReason::Watchdog)).0,
        Decision::Boot(Slot::A)
    );
    let status = json(&target);
    assert_eq!(status["history"][1]["decision"], "B");
    assert_eq!(status["history"][1]["outcome"], "failed");
    assert_eq!(status["slots"][1]["failed_boots"], 1);

    let out = ok(&target, &["set-active", "b", "--version", "7"]);
    assert!(
        out.contains("slot B is ACTIVE (trial), BACKUP is A"),
        "{out}"
    );
    let status = json(&target);
    assert_eq!(
        (status["active"].as_str(), status["backup"].as_str()),
        (Some("B"), Some("A"))
    );
    assert_eq!(status["slots"][1]["image_version"], 7);

    ok(&target, &["request-recovery"]);
    assert_eq!(json(&target)["recovery_requested"], true);
    assert_eq!(
        loader_boot(&path, Facts::new(ResetReason::Software)).0,
        Decision::Recovery
    );
    ok(&target, &["request-recovery", "--cancel"]);
    let text = ok(&target, &["status"]);
    assert!(
        text.contains("recovery requested by user space, entering RECOVERY"),
        "{text}"
    );
    assert!(text.contains("active:    B   backup: A"), "{text}");
}

#[test]
fn a_corrupt_copy_falls_back_and_two_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), false, &[], &[]);
    let target = ["--image", path.to_str().unwrap()];
    ok(&target, &["init-state"]);
    loader_boot(&path, Facts::new(ResetReason::PowerOn));
    let status = json(&target);
    let in_use = status["copy_in_use"].as_u64().unwrap() as usize;
    let lba = status["copies"][in_use]["lba"].as_u64().unwrap();
    // Tear the newest copy: the older one (before the boot) is used.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xAB; 100], lba * BLOCK_SIZE as u64 + 200)
        .unwrap();
    let status = json(&target);
    assert_eq!(status["copy_in_use"].as_u64().unwrap() as usize, 1 - in_use);
    assert!(
        status["copies"][in_use]["error"]
            .as_str()
            .unwrap()
            .contains("CRC32 mismatch")
    );
    assert_eq!(status["slots"][0]["failed_boots"], 0);
    // A write goes over the torn copy, never over the good one.
    ok(&target, &["try", "B"]);
    let status = json(&target);
    assert_eq!(status["copy_in_use"].as_u64().unwrap() as usize, in_use);
    assert_eq!(status["copies"][0]["valid"], true);
    assert_eq!(status["copies"][1]["valid"], true);

    // Both copies gone: a clear error, and --force repairs.
    let (_, lbas) = copies(&path);
    for lba in lbas {
        file.write_all_at(&[0u8; BLOCK_SIZE], lba * BLOCK_SIZE as u64)
            .unwrap();
    }
    let err = fails(&target, &["status"]);
    assert!(
        err.contains("no valid slot state")
            && err.contains("blank")
            && err.contains("init-state --force"),
        "{err}"
    );
    let err = fails(&target, &["mark-good"]);
    assert!(err.contains("no valid slot state"), "{err}");
    let out = ok(
        &target,
        &[
            "init-state",
            "--force",
            "--max-boot-failure",
            "5",
            "--count-power-loss",
            "no",
        ],
    );
    assert!(out.starts_with("reused"), "{out}");
    let status = json(&target);
    assert_eq!(status["max_boot_failure"], 5);
    assert_eq!(status["count_power_loss"], false);
}

#[test]
fn missing_fragmented_and_truncated_state_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), false, &[("config.txt", 10)], &[]);
    let target = ["--image", path.to_str().unwrap()];
    let err = fails(&target, &["status"]);
    assert!(
        err.contains("no ZBSTATE.BIN in the FAT boot partition 1") && err.contains("init-state"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = image(
        dir.path(),
        true,
        &[("A.TXT", 512), ("B.TXT", 512), ("ZBSTATE.BIN", 1024)],
        &["A.TXT"],
    );
    // ZBSTATE.BIN was written after both: contiguous. Make a fragmented one by hand instead:
    // remove it and let fatfs reuse A.TXT's hole.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    {
        let fs = fatfs::FileSystem::new(
            Window::new(
                &mut file,
                START * BLOCK_SIZE as u64,
                20_000 * BLOCK_SIZE as u64,
            ),
            fatfs::FsOptions::new(),
        )
        .unwrap();
        fs.root_dir().remove("ZBSTATE.BIN").unwrap();
        let mut f = fs.root_dir().create_file("ZBSTATE.BIN").unwrap();
        f.write_all(&[0; 1024]).unwrap();
        drop(f);
        fs.unmount().unwrap();
    }
    let target = ["--image", path.to_str().unwrap()];
    let err = fails(&target, &["status"]);
    assert!(
        err.contains("fragmented") && err.contains("cluster"),
        "{err}"
    );
    let err = fails(&target, &["init-state"]);
    assert!(
        err.contains("fragmented") && err.contains("--force"),
        "{err}"
    );

    // --boot-dir: a truncated file.
    let boot = tempfile::tempdir().unwrap();
    std::fs::write(boot.path().join("zbstate.bin"), [0u8; 100]).unwrap();
    let target = ["--boot-dir", boot.path().to_str().unwrap()];
    let err = fails(&target, &["status"]);
    assert!(err.contains("is 100 bytes, expected 1024"), "{err}");
    let err = fails(&target, &["init-state"]);
    assert!(err.contains("--force"), "{err}");
    ok(&target, &["init-state", "--force"]);
    assert_eq!(json(&target)["active"], "A");
}

#[test]
fn boot_dir_writes_the_file_in_place() {
    let boot = tempfile::tempdir().unwrap();
    let target = ["--boot-dir", boot.path().to_str().unwrap()];
    let err = fails(&target, &["status"]);
    assert!(
        err.contains("no ZBSTATE.BIN") && err.contains("init-state"),
        "{err}"
    );
    ok(&target, &["init-state"]);
    let state_file = boot.path().join("ZBSTATE.BIN");
    assert_eq!(std::fs::metadata(&state_file).unwrap().len(), 1024);
    // A loader boot on the file's two sectors.
    let mut disk = FileDisk::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&state_file)
            .unwrap(),
    )
    .unwrap();
    let mut store = RedundantStore::new([0, 1]);
    let (state, _) = store.load(&mut disk).unwrap();
    let outcome = decide(&state, &Facts::new(ResetReason::Watchdog));
    store.save(&mut disk, &outcome.state).unwrap();
    let out = ok(&target, &["mark-good", "--slot", "A"]);
    assert!(out.contains("slot A confirmed good"), "{out}");
    let err = fails(&target, &["mark-good", "--slot", "B"]);
    assert!(
        err.contains("running slot B but the state recorded a boot of slot A"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&state_file).unwrap().len(), 1024);
}

#[test]
fn target_flags_and_manifest_check() {
    let err = fails(&[], &["status"]);
    assert!(
        err.contains("--boot-dir") && err.contains("--image"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("zbmanifest.txt");
    std::fs::write(
        &manifest,
        "# zboot\r\nroot_a=PARTUUID=5eedcafe-02\r\nmax_boot_failure=4\r\nfoo=bar\r\n",
    )
    .unwrap();
    let out = ok(&[], &["check-manifest", manifest.to_str().unwrap()]);
    assert!(out.contains("line 4: unknown key 'foo' ignored"), "{out}");
    assert!(out.contains("max_boot_failure = 4"), "{out}");
    std::fs::write(&manifest, "root_a=x\nmax_boot_failure=99\n").unwrap();
    let err = fails(&[], &["check-manifest", manifest.to_str().unwrap()]);
    assert!(
        err.contains("line 2: max_boot_failure: 99 is outside 1..=15"),
        "{err}"
    );
}
