//! `zbctl usb create` end to end: the stick image is checked with `sfdisk`, `fsck.fat -n` and
//! mtools (scripts/setup installs them), and its file is the `.zi`, byte for byte.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ok, s, zbctl};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (run scripts/setup): {e}"))
}

/// A small `.zi` from tarballs.
fn small_image(dir: &Path) -> std::path::PathBuf {
    let boot = dir.join("boot");
    fs::create_dir_all(boot.join("A")).unwrap();
    fs::write(boot.join("config.txt"), "arm_64bit=1\nkernel=zboot.img\n").unwrap();
    fs::write(boot.join("zboot.img"), vec![7u8; 50_000]).unwrap();
    fs::write(boot.join("A/kernel.img"), b"kernel".repeat(20_000)).unwrap();
    fs::write(boot.join("A/cmdline.txt"), "rootwait\n").unwrap();
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "stick\n").unwrap();
    for (tree, tarball) in [(&boot, "boot.tar"), (&root, "root.tar")] {
        common::tar(tree, &dir.join(tarball));
    }
    let zi = dir.join("os.zi");
    ok(&[
        "image",
        "convert",
        "-b",
        s(&dir.join("boot.tar")),
        "-r",
        s(&dir.join("root.tar")),
        "-o",
        s(&zi),
        "--name",
        "os",
        "--version",
        "4",
        "--boot-mib",
        "40",
        "--root-mib",
        "8",
    ]);
    zi
}

#[test]
fn stick_is_mbr_fat32_holding_the_image_and_passes_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let zi = small_image(dir.path());
    let stick = dir.path().join("stick.img");
    let report = ok(&["usb", "create", "--zi", s(&zi), "-o", s(&stick)]);
    assert!(report.contains("/ZBOOT.ZI"), "{report}");
    assert_eq!(fs::metadata(&stick).unwrap().len(), 64 << 20);

    let dump = tool("sfdisk", &["--json", s(&stick)]);
    assert!(dump.status.success());
    let json: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let partitions = json["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1);
    assert_eq!(partitions[0]["type"], "c");
    assert_eq!(partitions[0]["start"], 2048);

    let bytes = fs::read(&stick).unwrap();
    let volume = dir.path().join("volume.fat");
    fs::write(&volume, &bytes[1 << 20..]).unwrap();
    let fsck = tool("fsck.fat", &["-n", s(&volume)]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let mtype = tool(
        "mtype",
        &["-i", &format!("{}@@1M", s(&stick)), "::ZBOOT.ZI"],
    );
    assert!(mtype.status.success());
    assert!(
        mtype.stdout == fs::read(&zi).unwrap(),
        "the stick's file differs"
    );
    // The same image makes the same stick (volume id from the image, no clock in the FAT
    // besides fatfs's timestamps, which are not compared here).
    assert_eq!(&bytes[440..444], &bytes[(1 << 20) + 67..(1 << 20) + 71]);
}

#[test]
fn name_follows_the_manifest_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let zi = small_image(dir.path());
    let manifest = dir.path().join("zbmanifest.txt");
    fs::write(&manifest, "recovery_image=fleet.zi\n").unwrap();
    let stick = dir.path().join("stick.img");
    ok(&[
        "usb",
        "create",
        "--zi",
        s(&zi),
        "-o",
        s(&stick),
        "--manifest",
        s(&manifest),
        "--size",
        "80M",
    ]);
    let listing = tool("mdir", &["-b", "-i", &format!("{}@@1M", s(&stick)), "::"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("FLEET.ZI"), "{listing}");
    assert_eq!(fs::metadata(&stick).unwrap().len(), 80 << 20);

    let out = zbctl(&[
        "usb",
        "create",
        "--zi",
        s(&zi),
        "-o",
        s(&dir.path().join("x.img")),
        "--name",
        "a-long-name.image",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("8.3 name"));
    // A damaged image never reaches a stick. Sixteen bytes of the last chunk's compressed
    // stream: one flipped bit can land where it changes nothing the chunk's SHA-256 covers
    // (seen: a Huffman code length of a symbol the block never uses; the inflated bytes,
    // which are what is hashed and written, stay exact).
    let mut bytes = fs::read(&zi).unwrap();
    let at = bytes.len() - 500;
    for byte in &mut bytes[at..at + 16] {
        *byte ^= 0xff;
    }
    let bad = dir.path().join("bad.zi");
    fs::write(&bad, &bytes).unwrap();
    let out = zbctl(&[
        "usb",
        "create",
        "--zi",
        s(&bad),
        "-o",
        s(&dir.path().join("bad.img")),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!dir.path().join("bad.img").exists());
}
