//! `zbctl image` and `zbctl key` end to end: real tarballs, real mke2fs/fatfs file systems,
//! the real binary; images decoded with the loader's reader and checked with fsck.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{decode_to_disk, ok, s, zbctl};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use recovery_proto::image::format::HEADER_SIZE;
use recovery_proto::image::{Image, Role, SliceSource};

fn fails(args: &[&str], code: i32, needle: &str) {
    let out = zbctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "zbctl {args:?}: {stderr}");
    assert!(stderr.contains(needle), "zbctl {args:?}: {stderr}");
}

/// A boot tree (the required files plus a nested directory) and a small root tree.
fn tarballs(dir: &Path, with_kernel: bool) -> (PathBuf, PathBuf) {
    let boot = dir.join("boot");
    fs::create_dir_all(boot.join("A")).unwrap();
    fs::create_dir_all(boot.join("overlays")).unwrap();
    fs::write(boot.join("config.txt"), "arm_64bit=1\nkernel=zboot.img\n").unwrap();
    fs::write(boot.join("zboot.img"), vec![0x5a; 70_000]).unwrap();
    fs::write(boot.join("overlays/x.dtbo"), b"overlay").unwrap();
    if with_kernel {
        fs::write(boot.join("A/kernel.img"), b"kernel ".repeat(50_000)).unwrap();
    }
    fs::write(boot.join("A/cmdline.txt"), "console=ttyAMA0\n").unwrap();
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::write(root.join("etc/hostname"), "zboot\n").unwrap();
    for i in 0..20 {
        fs::write(
            root.join(format!("usr/lib/f{i}")),
            format!("file {i} ").repeat(10_000 + i * 1000),
        )
        .unwrap();
    }
    let boot_tar = dir.join(if with_kernel {
        "boot.tar"
    } else {
        "bad-boot.tar"
    });
    let root_tar = dir.join("root.tar");
    for (tarball, tree) in [(&boot_tar, &boot), (&root_tar, &root)] {
        common::tar(tree, tarball);
    }
    (boot_tar, root_tar)
}

/// One image from tarballs, made once for all tests (mke2fs + compression take a while).
fn sample() -> &'static (tempfile::TempDir, PathBuf) {
    static SAMPLE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (boot, root) = tarballs(dir.path(), true);
        let zi = dir.path().join("sample.zi");
        ok(&[
            "image",
            "convert",
            "-b",
            s(&boot),
            "-r",
            s(&root),
            "-o",
            s(&zi),
            "--name",
            "sample",
            "--version",
            "5",
            "--boot-mib",
            "40",
            "--root-mib",
            "24",
            "--chunk-kib",
            "256",
        ]);
        (dir, zi)
    })
}

fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::copy(&sample().1, &path).unwrap();
    (dir, path)
}

fn partition_file(disk: &Path, start_lba: u64, sectors: u64, out: &Path) {
    let bytes = fs::read(disk).unwrap();
    let at = usize::try_from(start_lba * 512).unwrap();
    let len = usize::try_from(sectors * 512).unwrap();
    fs::write(out, &bytes[at..at + len]).unwrap();
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario: make, inspect, decode, fsck, convert back
fn tarballs_make_an_image_whose_file_systems_check_clean() {
    let (_, zi) = sample();
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["image", "inspect", "--json", s(zi)])).unwrap();
    assert_eq!(json["name"], "sample");
    assert_eq!(json["version"], 5);
    let roles: Vec<&str> = json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["table", "root-a", "root-b", "boot"],
        "boot written last"
    );
    let boot = &json["partitions"][3];
    assert!(
        boot["skip_bytes"].as_u64().unwrap() > 30 << 20,
        "free FAT clusters are skipped: {boot}"
    );
    assert!(ok(&["image", "verify", s(zi)]).contains("every chunk's BLAKE3 matches"));

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    decode_to_disk(zi, &disk);
    let partitions = json["partitions"].as_array().unwrap();
    let find = |role: &str| {
        let p = partitions.iter().find(|p| p["role"] == role).unwrap();
        (
            p["start_lba"].as_u64().unwrap(),
            p["sectors"].as_u64().unwrap(),
        )
    };
    let (start, sectors) = find("boot");
    let fat = dir.path().join("boot.fat");
    partition_file(&disk, start, sectors, &fat);
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&fat)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck.fat: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let (start, sectors) = find("root-a");
    let ext4 = dir.path().join("root.ext4");
    partition_file(&disk, start, sectors, &ext4);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&ext4)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /usr/lib/f3"])
        .arg(&ext4)
        .output()
        .unwrap();
    assert_eq!(cat.stdout, "file 3 ".repeat(13_000).as_bytes());

    // The decoded disk is a dd image: converting it again carries the same layout.
    let again = dir.path().join("again.zi");
    ok(&[
        "image",
        "convert",
        "--from-disk",
        s(&disk),
        "-o",
        s(&again),
        "--name",
        "again",
        "--version",
        "6",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["image", "inspect", "--json", s(&again)])).unwrap();
    let roles: Vec<&str> = json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["table", "root-a", "root-b", "boot"]);
    ok(&["image", "verify", s(&again)]);
    let redisk = dir.path().join("redisk.img");
    decode_to_disk(&again, &redisk);
    let (start, sectors) = find("root-a");
    let ext4 = dir.path().join("root2.ext4");
    partition_file(&redisk, start, sectors, &ext4);
    assert!(
        Command::new("e2fsck")
            .arg("-fn")
            .arg(&ext4)
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn truncated_wrong_magic_and_newer_version_exit_2() {
    let (_dir, zi) = copy_of("t.zi");
    let bytes = fs::read(&zi).unwrap();
    fs::write(&zi, &bytes[..bytes.len() - 1000]).unwrap();
    fails(&["image", "verify", s(&zi)], 2, "truncated image");
    fs::write(&zi, &bytes[..100]).unwrap();
    fails(&["image", "verify", s(&zi)], 2, "inside the header");
    let mut magic = bytes.clone();
    magic[0] = b'X';
    fs::write(&zi, &magic).unwrap();
    fails(&["image", "verify", s(&zi)], 2, "not a .zi image");
    let mut newer = bytes.clone();
    newer[8] = 3;
    fs::write(&zi, &newer).unwrap();
    fails(
        &["image", "inspect", s(&zi)],
        2,
        "format version 3 is not supported",
    );
}

/// `--hash sha256` makes a version-1 image (SHA-256 digests) for units whose loader predates
/// BLAKE3; the default is version 2 (BLAKE3). Both verify, and say which.
#[test]
fn hash_sha256_makes_a_version_1_image_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    tarballs(dir.path(), true);
    common::convert_small_image_with(dir.path(), "old.zi", "1", "24", &["--hash", "sha256"]);
    let zi = dir.path().join("old.zi");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["image", "inspect", "--json", s(&zi)])).unwrap();
    assert_eq!(
        (json["format_version"].as_u64(), json["hash"].as_str()),
        (Some(1), Some("sha256"))
    );
    assert!(ok(&["image", "verify", s(&zi)]).contains("every chunk's SHA-256 matches"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["image", "inspect", "--json", s(&sample().1)])).unwrap();
    assert_eq!(
        (json["format_version"].as_u64(), json["hash"].as_str()),
        (Some(2), Some("blake3"))
    );
    // A chunk's digest is what the standard tool prints for its bytes.
    let regions: serde_json::Value = serde_json::from_str(&ok(&[
        "image",
        "inspect",
        "--json",
        "--regions",
        s(&sample().1),
    ]))
    .unwrap();
    assert!(
        regions["regions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|region| region["digest"].as_str().is_some_and(|hex| hex.len() == 64)),
        "{regions}"
    );
}

#[test]
fn a_corrupt_chunk_exits_3_naming_the_region() {
    let (_dir, zi) = copy_of("c.zi");
    let mut bytes = fs::read(&zi).unwrap();
    let mut manifest = vec![0u8; 1 << 20];
    let (at, index) = {
        let image = Image::open(&mut SliceSource(&bytes), &mut manifest, None).unwrap();
        let index = (0..image.header().region_count)
            .find(|&i| image.region(i).unwrap().stored_size > 1000)
            .unwrap();
        let region = image.region(index).unwrap();
        (
            image.header().payload_offset() + region.payload_offset + 500,
            index,
        )
    };
    bytes[usize::try_from(at).unwrap()] ^= 0x55;
    fs::write(&zi, &bytes).unwrap();
    fails(
        &["image", "verify", s(&zi)],
        3,
        &format!("chunk of region {index}"),
    );
}

#[test]
fn keys_sign_verify_and_tampering_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("release");
    let printed = ok(&["key", "generate", "-o", s(&prefix)]);
    assert!(printed.contains("public_key="));
    let private = dir.path().join("release.key");
    let public = dir.path().join("release.pub");
    assert_eq!(
        fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_z, zi) = copy_of("s.zi");
    fails(
        &["image", "verify", s(&zi), "--pubkey", s(&public)],
        4,
        "not signed",
    );
    let signed = ok(&["image", "sign", s(&zi), "--key", s(&private)]);
    assert!(
        signed.contains("encoded again with its slots signed"),
        "{signed}"
    );
    let signed_size = fs::metadata(&zi).unwrap().len();
    ok(&["image", "verify", s(&zi), "--pubkey", s(&public)]);
    // Provisioned in zbmanifest.txt, as the loader reads it.
    let manifest = dir.path().join("zbmanifest.txt");
    fs::write(
        &manifest,
        format!("public_key={}", fs::read_to_string(&public).unwrap().trim()),
    )
    .unwrap();
    assert!(
        ok(&["image", "verify", s(&zi), "--manifest", s(&manifest)]).contains("signature verified")
    );
    // Re-signing replaces the trailer (the slots are signed already: nothing else moves).
    let again = ok(&["image", "sign", s(&zi), "--key", s(&private)]);
    assert!(!again.contains("encoded again"), "{again}");
    assert_eq!(fs::metadata(&zi).unwrap().len(), signed_size);
    let other = dir.path().join("other");
    ok(&["key", "generate", "-o", s(&other)]);
    fails(
        &[
            "image",
            "verify",
            s(&zi),
            "--pubkey",
            s(&dir.path().join("other.pub")),
        ],
        4,
        "another key",
    );
    // A header byte changed after signing (the name): the header hash is recomputed by a
    // forger, so only the signature catches it.
    let mut bytes = fs::read(&zi).unwrap();
    let mut header: [u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().unwrap();
    let mut decoded = recovery_proto::image::Header::decode(&header).unwrap();
    decoded.image_version = 99;
    header = decoded.encode();
    bytes[..HEADER_SIZE].copy_from_slice(&header);
    fs::write(&zi, &bytes).unwrap();
    fails(
        &["image", "verify", s(&zi), "--pubkey", s(&public)],
        4,
        "does not verify",
    );
}

#[test]
fn anti_rollback_exits_5() {
    let (_, zi) = sample();
    fails(
        &["image", "verify", s(zi), "--min-version", "6"],
        5,
        "older than the minimum 6",
    );
    ok(&["image", "verify", s(zi), "--min-version", "5"]);
}

#[test]
fn bad_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.img");
    fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let out = dir.path().join("x.zi");
    fails(
        &[
            "image",
            "convert",
            "--from-disk",
            s(&blank),
            "-o",
            s(&out),
            "--name",
            "x",
            "--version",
            "1",
        ],
        1,
        "no recognizable partition table",
    );
    assert!(!out.exists(), "nothing written");
    let (boot, root) = tarballs(dir.path(), false);
    fails(
        &[
            "image",
            "convert",
            "-b",
            s(&boot),
            "-r",
            s(&root),
            "-o",
            s(&out),
            "--name",
            "x",
            "--version",
            "1",
        ],
        1,
        "lacks A/kernel.img",
    );
    assert!(!out.exists(), "nothing written");
    fails(
        &["image", "convert", "--from-disk", s(&blank), "-o", s(&out)],
        1,
        "--name",
    );
}

#[test]
fn image_roles_cover_the_layout() {
    // The table kinds are listed in the doc in this order.
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        ["other", "boot", "root-a", "root-b", "safe", "data", "table"]
    );
}
