//! Images without the zboot layout (docs/disk-layout.md): `image inspect` and `image verify`
//! say so, `usb create` refuses them for a recovery stick unless `--force`, `install` warns.
//! The layout-less image is a disk dump made with `sfdisk`, `mkfs.vfat`, `mcopy` and
//! `mke2fs` whose FAT holds `zboot.img` and `A/` (so `image convert --from-disk` carries it
//! over as it is) but a `config.txt` that makes the firmware load `kernel8.img`.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{convert_small_image, create_small_disk, noise, ok, s, tar, zbctl};
use recovery_proto::image::format::{PartitionEntry, RegionKind, Role, TableKind};
use recovery_proto::image::writer::{ImageMeta, ImageWriter, PlannedPartition, PlannedRegion};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

const ZBOOT_LINE: &str = "layout: zboot (zboot.img, config.txt kernel=zboot.img, slots A B SAFE)";
const NO_LAYOUT_LINE: &str = "layout: no zboot layout (config.txt loads kernel8.img; no slot \
     directories B/, SAFE/): a unit reflashed from this image would not run zboot";

/// A small root tree.
fn root_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "unit\n").unwrap();
    fs::write(root.join("etc/blob"), noise(200_000, 3)).unwrap();
    root
}

/// `image convert` of boot/root tarballs: `slots` are the slot directories of the boot tree
/// (A gets a kernel and a command line, the others stay empty).
fn tarball_image(dir: &Path, slots: &[&str]) -> PathBuf {
    let boot = dir.join("boot");
    fs::create_dir_all(&boot).unwrap();
    fs::write(boot.join("config.txt"), "arm_64bit=1\nkernel=zboot.img\n").unwrap();
    fs::write(boot.join("zboot.img"), noise(70_000, 1)).unwrap();
    for slot in slots {
        fs::create_dir_all(boot.join(slot)).unwrap();
    }
    fs::write(boot.join("A/kernel.img"), noise(100_000, 2)).unwrap();
    fs::write(boot.join("A/cmdline.txt"), "console=ttyAMA0 rootwait\n").unwrap();
    let root = root_tree(dir);
    tar(&boot, &dir.join("boot.tar"));
    tar(&root, &dir.join("root.tar"));
    convert_small_image(dir, "zboot.zi", "5", "8");
    dir.join("zboot.zi")
}

/// A disk dump (MBR: FAT32 boot at sector 8192, ext4 root after it) whose FAT holds
/// `zboot.img` and `A/` but a stock `config.txt` (the firmware loads `kernel8.img`), and no
/// `B/` or `SAFE/`; converted as it is.
fn layoutless_image(dir: &Path) -> PathBuf {
    let boot = dir.join("stock-boot");
    fs::create_dir_all(boot.join("A")).unwrap();
    fs::write(boot.join("config.txt"), "arm_64bit=1\n").unwrap();
    fs::write(boot.join("kernel8.img"), noise(120_000, 4)).unwrap();
    fs::write(
        boot.join("cmdline.txt"),
        "console=serial0,115200 rootwait\n",
    )
    .unwrap();
    fs::write(boot.join("zboot.img"), noise(70_000, 1)).unwrap();
    fs::write(boot.join("A/kernel.img"), noise(100_000, 2)).unwrap();
    fs::write(boot.join("A/cmdline.txt"), "console=ttyAMA0 rootwait\n").unwrap();
    let fat = dir.join("boot.fat");
    common::run(
        "mkfs.vfat",
        &["-C", "-F", "32", "-n", "bootfs", s(&fat), "65536"],
        None,
    );
    let entries: Vec<PathBuf> = fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut args = vec!["-s", "-i", s(&fat)];
    args.extend(entries.iter().map(|p| s(p)));
    args.push("::");
    common::run("mcopy", &args, None);
    let root = root_tree(dir);
    let ext4 = dir.join("root.ext4");
    common::run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "rootfs",
            "-d",
            s(&root),
            s(&ext4),
            "16M",
        ],
        None,
    );
    let disk = dir.join("dump.img");
    fs::File::create(&disk)
        .unwrap()
        .set_len((8192 + 131_072 + 32_768 + 2048) * 512)
        .unwrap();
    common::run(
        "sfdisk",
        &["--quiet", s(&disk)],
        Some("label: dos\nlabel-id: 0x5a5a0010\n8192,131072,c\n139264,32768,83\n"),
    );
    let mut bytes = fs::read(&disk).unwrap();
    for (lba, part) in [(8192, &fat), (139_264, &ext4)] {
        let content = fs::read(part).unwrap();
        bytes[lba * 512..lba * 512 + content.len()].copy_from_slice(&content);
    }
    fs::write(&disk, bytes).unwrap();
    let zi = dir.join("stock.zi");
    ok(&[
        "image",
        "convert",
        "--from-disk",
        s(&disk),
        "-o",
        s(&zi),
        "--name",
        "stock",
        "--version",
        "5",
    ]);
    zi
}

/// A `.zi` whose only partition is a Linux one (made with the image writer).
fn fatless_image(dir: &Path) -> PathBuf {
    let path = dir.join("nofat.zi");
    let entry = PartitionEntry {
        number: 1,
        role: Role::RootA,
        kind: 0x83,
        bootable: false,
        first_region: 0,
        region_count: 0,
        start_lba: 2048,
        sectors: 2048,
    };
    let plan = vec![PlannedPartition {
        entry,
        regions: vec![PlannedRegion {
            kind: RegionKind::Fill,
            fill: 0,
            offset: 0,
            length: 2048 * 512,
        }],
    }];
    let meta = ImageMeta {
        name: "nofat".into(),
        version: 1,
        created: 0,
        chunk_size: 4096,
        table: TableKind::Mbr,
        disk_signature: 0x5a5a_0011,
        disk_size: 4096 * 512,
        algorithm: recovery_proto::slot_manifest::Algorithm::Blake3,
    };
    let writer = ImageWriter::new(fs::File::create(&path).unwrap(), meta, plan).unwrap();
    writer.finish().unwrap();
    path
}

/// The images, made once: (scratch directory, zboot image, layout-less image).
fn images() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static IMAGES: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let zboot_dir = dir.path().join("zboot");
        let stock_dir = dir.path().join("stock");
        fs::create_dir_all(&zboot_dir).unwrap();
        fs::create_dir_all(&stock_dir).unwrap();
        let zboot = tarball_image(&zboot_dir, &["A", "B", "SAFE"]);
        let plain = layoutless_image(&stock_dir);
        (dir, zboot, plain)
    })
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn inspect_json(zi: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["image", "inspect", "--json", s(zi)])).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_zboot_image_is_reported_as_zboot_and_makes_a_stick() {
    let (_, zboot, _) = images();
    let text = ok(&["image", "inspect", s(zboot)]);
    assert!(has_line(&text, ZBOOT_LINE), "{text}");
    assert_eq!(
        inspect_json(zboot)["zboot_layout"],
        serde_json::json!({"ok": true, "problems": [], "notes": []})
    );
    let text = ok(&["image", "verify", s(zboot)]);
    assert!(has_line(&text, ZBOOT_LINE), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    let out = zbctl(&["usb", "create", "--zi", s(zboot), "-o", s(&stick)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(stick.exists());
}

#[test]
fn an_image_with_slot_a_only_is_zboot_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let zi = tarball_image(dir.path(), &["A"]);
    let line = "layout: zboot (zboot.img, config.txt kernel=zboot.img, slot A; no slot \
                directories B/, SAFE/: those slots stay empty until an install writes them)";
    let text = ok(&["image", "inspect", s(&zi)]);
    assert!(has_line(&text, line), "{text}");
    assert_eq!(
        inspect_json(&zi)["zboot_layout"],
        serde_json::json!({
            "ok": true,
            "problems": [],
            "notes": ["no slot directories B/, SAFE/"],
        })
    );
    let stick = dir.path().join("stick.img");
    ok(&["usb", "create", "--zi", s(&zi), "-o", s(&stick)]);
}

#[test]
fn inspect_and_verify_name_what_a_layoutless_image_lacks() {
    let (_, _, plain) = images();
    let text = ok(&["image", "inspect", s(plain)]);
    assert!(has_line(&text, NO_LAYOUT_LINE), "{text}");
    let text = ok(&["image", "inspect", "--regions", s(plain)]);
    assert!(has_line(&text, NO_LAYOUT_LINE), "{text}");
    assert_eq!(
        inspect_json(plain)["zboot_layout"],
        serde_json::json!({
            "ok": false,
            "problems": ["config.txt loads kernel8.img"],
            "notes": ["no slot directories B/, SAFE/"],
        })
    );
    // The exit code stays the image's: verify passes.
    let out = zbctl(&["image", "verify", s(plain)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("every chunk's BLAKE3 matches"),
        "{text}"
    );
    assert!(has_line(&text, NO_LAYOUT_LINE), "{text}");
}

#[test]
fn usb_create_refuses_a_layoutless_image_unless_forced() {
    let (_, _, plain) = images();
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    let out = zbctl(&["usb", "create", "--zi", s(plain), "-o", s(&stick)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected = format!(
        "zbctl: error: {}: no zboot layout (config.txt loads kernel8.img; no slot directories \
         B/, SAFE/): a unit reflashed from this recovery stick would lose zboot and boot \
         whatever the image holds (the firmware would load kernel8.img), without zboot's A/B \
         slots, rollback or USB recovery. Nothing written. Make the image from a disk in the \
         zboot layout (docs/disk-layout.md), or give --force to make the stick anyway\n",
        s(plain)
    );
    assert_eq!(stderr(&out), expected);
    assert!(out.stdout.is_empty());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );

    let out = zbctl(&[
        "usb",
        "create",
        "--zi",
        s(plain),
        "-o",
        s(&stick),
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = format!(
        "warning: {}: no zboot layout (config.txt loads kernel8.img; no slot directories B/, \
         SAFE/): a unit reflashed from this recovery stick would lose zboot and boot whatever \
         the image holds (the firmware would load kernel8.img), without zboot's A/B slots, \
         rollback or USB recovery; making the stick anyway (--force)\n",
        s(plain)
    );
    assert_eq!(stderr(&out), warning);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/ZBOOT.ZI"));
    assert!(stick.exists());
}

#[test]
fn an_image_without_a_fat_partition_has_no_zboot_layout() {
    let dir = tempfile::tempdir().unwrap();
    let zi = fatless_image(dir.path());
    let text = ok(&["image", "inspect", s(&zi)]);
    assert!(
        has_line(
            &text,
            "layout: no zboot layout (no FAT boot partition): a unit reflashed from this \
             image would not run zboot"
        ),
        "{text}"
    );
    assert_eq!(
        inspect_json(&zi)["zboot_layout"],
        serde_json::json!({"ok": false, "problems": ["no FAT boot partition"], "notes": []})
    );
    let stick = dir.path().join("stick.img");
    let out = zbctl(&["usb", "create", "--zi", s(&zi), "-o", s(&stick)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no zboot layout (no FAT boot partition): a unit reflashed"),
        "{}",
        stderr(&out)
    );
    assert!(!stick.exists());
}

#[test]
fn install_warns_about_a_layoutless_image_and_installs_it() {
    let (_, zboot, plain) = images();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("zboot.img"), noise(70_000, 1)).unwrap();
    fs::write(p.join("kernel"), noise(100_001, 5)).unwrap();
    let disk = p.join("disk.img");
    create_small_disk(&disk, &p.join("zboot.img"), &p.join("kernel"), &[]);

    let out = zbctl(&["--image", s(&disk), "install", s(plain)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = format!(
        "warning: {}: no zboot layout (config.txt loads kernel8.img; no slot directories B/, \
         SAFE/): install takes only slot B's files and root file system from it, so this unit \
         keeps its zboot, but a unit reflashed from this image (e.g. from a recovery stick) \
         would not run zboot\n",
        s(plain)
    );
    assert_eq!(stderr(&out), warning);
    assert!(String::from_utf8_lossy(&out.stdout).contains("installed stock version 5"));
    // The unit's own zboot layout is untouched.
    assert_eq!(common::mtype(&disk, "zboot.img"), noise(70_000, 1));
    assert!(
        String::from_utf8(common::mtype(&disk, "config.txt"))
            .unwrap()
            .contains("kernel=zboot.img")
    );

    // A zboot image installs without a word on stderr.
    let disk = p.join("disk2.img");
    create_small_disk(&disk, &p.join("zboot.img"), &p.join("kernel"), &[]);
    let out = zbctl(&["--image", s(&disk), "install", s(zboot)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}
