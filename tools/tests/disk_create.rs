//! `zbctl disk create` end to end, checked with the real tools: `sfdisk`, `fsck.fat`, mtools,
//! `e2fsck`/`debugfs` (scripts/setup installs fdisk, dosfstools, mtools and e2fsprogs), plus
//! `zbctl status` and the loader's own partition and manifest parsers.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recovery_proto::manifest::Manifest;
use recovery_proto::partition::Partitions;
use recovery_proto::slot_manifest::SlotManifest;
use zboot_tools::zbctl::disk::FileDisk;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (run scripts/setup): {e}"))
}

fn zbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zbctl"))
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Inputs for an image: loader, kernel, initrd, DTB, firmware tree, a root directory and an
/// ext4 root image.
struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let noise = |len: usize, seed: u8| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        };
        fs::write(p.join("zboot.img"), noise(70_000, 1)).unwrap();
        fs::write(p.join("kernel"), noise(300_001, 2)).unwrap();
        fs::write(p.join("initrd"), noise(5000, 3)).unwrap();
        fs::write(p.join("board.dtb"), noise(900, 4)).unwrap();
        fs::create_dir_all(p.join("fw/overlays")).unwrap();
        fs::write(p.join("fw/start4.elf"), noise(4000, 5)).unwrap();
        fs::write(p.join("fw/fixup4.dat"), noise(100, 6)).unwrap();
        fs::write(p.join("fw/overlays/disable-bt.dtbo"), noise(50, 7)).unwrap();
        fs::create_dir_all(p.join("safe-root/etc")).unwrap();
        fs::write(p.join("safe-root/etc/hostname"), "safe\n").unwrap();
        // An ext4 image for root A, made the way a build system would.
        let ext4 = p.join("rootA.ext4");
        File::create(&ext4).unwrap().set_len(8 << 20).unwrap();
        let made = run(
            "mke2fs",
            &[
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "imageA",
                ext4.to_str().unwrap(),
            ],
        );
        assert!(made.status.success(), "{}", text(&made));
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn output(&self) -> PathBuf {
        self.dir.path().join("emmc.img")
    }

    /// The command line the docs show (`docs/disk-layout.md`, "Building a disk image").
    fn create_args(&self) -> Vec<String> {
        [
            "disk",
            "create",
            "--output",
            &self.path("emmc.img"),
            "--size",
            "256M",
            "--disk-id",
            "1a2b3c4d",
            "--loader",
            &self.path("zboot.img"),
            "--firmware-dir",
            &self.path("fw"),
            "--slot",
            &format!(
                "A:kernel={},initrd={},dtb={},version=7",
                self.path("kernel"),
                self.path("initrd"),
                self.path("board.dtb")
            ),
            "--cmdline",
            "A=console=ttyAMA0,115200 rootwait",
            "--slot",
            &format!("SAFE:kernel={}", self.path("kernel")),
            "--root",
            &format!("A={}", self.path("rootA.ext4")),
            "--root",
            &format!("SAFE={}", self.path("safe-root")),
            "--max-boot-failure",
            "4",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }
}

fn create(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    zbctl(&args)
}

/// Copies sectors `[start, start + count)` of the image to their own file.
fn extract(image: &Path, start: u64, count: u64, name: &str) -> PathBuf {
    let path = image.with_file_name(name);
    let source = File::open(image).unwrap();
    let mut bytes = vec![0u8; (count * 512) as usize];
    source.read_exact_at(&mut bytes, start * 512).unwrap();
    fs::write(&path, bytes).unwrap();
    path
}

fn mtype(boot: &Path, file: &str) -> Vec<u8> {
    let out = run(
        "mtype",
        &["-i", boot.to_str().unwrap(), &format!("::{file}")],
    );
    assert!(out.status.success(), "mtype {file}: {}", text(&out));
    out.stdout
}

#[test]
#[allow(clippy::too_many_lines)] // one image built once (slow), then every tool's view of it
fn image_passes_sfdisk_fsck_mtools_e2fsck_and_zbctl() {
    let inputs = Inputs::new();
    let created = create(&inputs.create_args());
    assert!(created.status.success(), "{}", text(&created));
    let image = inputs.output();
    assert_eq!(fs::metadata(&image).unwrap().len(), 256 << 20);
    let report = text(&created);
    assert!(report.contains("p5 PARTUUID=1a2b3c4d-05"), "{report}");

    // The partition table as sfdisk reads it, and the loader's reader agrees.
    let dump = run("sfdisk", &["--json", image.to_str().unwrap()]);
    assert!(dump.status.success(), "{}", text(&dump));
    let json: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "dos");
    assert_eq!(table["id"], "0x1a2b3c4d");
    let sfdisk: Vec<(u64, u64, String)> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let types: Vec<&str> = sfdisk.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(types, ["c", "83", "83", "f", "83", "83"]);
    assert_eq!(table["partitions"][0]["bootable"], true);
    let mut disk = FileDisk::new(File::open(&image).unwrap()).unwrap();
    let ours = Partitions::read(&mut disk).unwrap();
    for (index, (start, size, kind)) in sfdisk.iter().enumerate() {
        let number = index as u8 + 1;
        let p = ours.partition(number).unwrap();
        assert_eq!(
            (p.start_lba, p.sectors, format!("{:x}", p.kind)),
            (*start, *size, kind.clone()),
            "partition {number}"
        );
    }
    assert_eq!(
        ours.partition(6).unwrap().partuuid().to_string(),
        "1a2b3c4d-06"
    );
    assert_eq!(ours.partition(6).unwrap().end_lba(), 256 * 2048);

    // The boot partition: fsck.fat finds nothing, mtools reads the files back.
    let (boot_start, boot_size) = (sfdisk[0].0, sfdisk[0].1);
    let boot = extract(&image, boot_start, boot_size, "boot.img");
    let fsck = run("fsck.fat", &["-n", boot.to_str().unwrap()]);
    assert!(fsck.status.success(), "fsck.fat -n: {}", text(&fsck));
    let fsck_text = text(&fsck);
    assert!(
        !fsck_text.contains("\n  ") && !fsck_text.to_lowercase().contains("uninitialized"),
        "fsck.fat reported something: {fsck_text}"
    );
    let config = String::from_utf8(mtype(&boot, "/config.txt")).unwrap();
    for line in ["arm_64bit=1", "kernel=zboot.img", "enable_uart=1"] {
        assert!(config.lines().any(|l| l == line), "{config}");
    }
    assert_eq!(
        mtype(&boot, "/zboot.img"),
        fs::read(inputs.path("zboot.img")).unwrap()
    );
    assert_eq!(
        mtype(&boot, "/overlays/disable-bt.dtbo"),
        fs::read(inputs.path("fw/overlays/disable-bt.dtbo")).unwrap()
    );
    let kernel = fs::read(inputs.path("kernel")).unwrap();
    assert_eq!(mtype(&boot, "/A/kernel.img"), kernel);
    assert_eq!(
        mtype(&boot, "/A/cmdline.txt"),
        b"console=ttyAMA0,115200 rootwait\n"
    );
    let listing = run("mdir", &["-b", "-i", boot.to_str().unwrap(), "::/B"]);
    assert!(listing.status.success(), "{}", text(&listing));
    assert!(
        String::from_utf8_lossy(&listing.stdout).trim().is_empty(),
        "B should be empty"
    );

    // slot.txt, with the loader's parser: sizes and hashes of what is on the volume.
    let slot_txt = mtype(&boot, "/A/slot.txt");
    let manifest = SlotManifest::parse(&slot_txt).unwrap();
    assert_eq!(manifest.image_version, 7);
    let names: Vec<&str> = manifest.files().iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        ["kernel.img", "initrd.img", "dtb.dtb", "cmdline.txt"]
    );
    for file in manifest.files() {
        let bytes = mtype(&boot, &format!("/A/{}", file.name));
        let algorithm = manifest.algorithm();
        let hash = algorithm.digest(&bytes);
        assert_eq!(
            file.verify(bytes.len() as u64, algorithm, &hash),
            Ok(()),
            "{}",
            file.name
        );
    }
    let safe_txt = mtype(&boot, "/SAFE/slot.txt");
    let safe = SlotManifest::parse(&safe_txt).unwrap();
    assert_eq!(safe.file("cmdline.txt").unwrap().size, 9); // "rootwait\n"
    let zbmanifest = mtype(&boot, "/zbmanifest.txt");
    let parsed = Manifest::parse(&zbmanifest).unwrap();
    assert_eq!(parsed.root_a, Some("/dev/mmcblk0p2"));
    assert_eq!(parsed.safe_root, Some("/dev/mmcblk0p5"));
    assert_eq!(parsed.max_boot_failure, Some(4));
    assert!(parsed.warnings.is_empty());

    // Every ext4 partition is clean; A is the given image, SAFE holds the given tree.
    for (index, label) in [(1, "imageA"), (2, "rootB"), (4, "rootSAFE"), (5, "data")] {
        let (start, size, _) = sfdisk[index];
        let part = extract(&image, start, size, &format!("p{}.img", index + 1));
        let check = run("e2fsck", &["-n", "-f", part.to_str().unwrap()]);
        assert!(
            check.status.success(),
            "e2fsck p{}: {}",
            index + 1,
            text(&check)
        );
        let label_out = run("e2label", &[part.to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&label_out.stdout).trim(), label);
        if label == "rootSAFE" {
            let cat = run(
                "debugfs",
                &["-R", "cat /etc/hostname", part.to_str().unwrap()],
            );
            assert_eq!(String::from_utf8_lossy(&cat.stdout), "safe\n");
        }
    }

    // zbctl reads the fresh state off the image.
    let status = zbctl(&["--image", image.to_str().unwrap(), "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["active"], "A", "{status}");
    assert_eq!(status["max_boot_failure"], 4, "{status}");
    // The state records the versions the slots' slot.txt name (A: 7; SAFE: the default 0).
    assert_eq!(status["slots"][0]["image_version"], 7, "{status}");
    assert_eq!(status["slots"][0]["files_version"], 7, "{status}");
    assert_eq!(status["slots"][2]["image_version"], 0, "{status}");
}

#[test]
fn defaults_leave_slots_empty_and_data_unformatted_on_request() {
    let inputs = Inputs::new();
    let created = zbctl(&[
        "disk",
        "create",
        "--output",
        &inputs.path("emmc.img"),
        "--loader",
        &inputs.path("zboot.img"),
        "--no-data-fs",
        "--count-power-loss",
        "no",
    ]);
    assert!(created.status.success(), "{}", text(&created));
    let image = inputs.output();
    let mut disk = FileDisk::new(File::open(&image).unwrap()).unwrap();
    let parts = Partitions::read(&mut disk).unwrap();
    let data = parts.partition(6).unwrap();
    let mut block = [0u8; 512];
    File::open(&image)
        .unwrap()
        .read_exact_at(&mut block, (data.start_lba + 2) * 512)
        .unwrap();
    assert_eq!(block, [0; 512], "DATA should be left blank");
    let boot = parts.partition(1).unwrap();
    let boot = extract(&image, boot.start_lba, boot.sectors, "boot.img");
    let fsck = run("fsck.fat", &["-n", boot.to_str().unwrap()]);
    assert!(fsck.status.success(), "{}", text(&fsck));
    assert!(
        String::from_utf8(mtype(&boot, "/zbmanifest.txt"))
            .unwrap()
            .contains("count_power_loss=no")
    );
    let listing = run("mdir", &["-b", "-i", boot.to_str().unwrap(), "::/A"]);
    assert!(String::from_utf8_lossy(&listing.stdout).trim().is_empty());
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let inputs = Inputs::new();
    let base = inputs.create_args();
    let with = |replace: &[(&str, &str)], extra: &[&str]| -> String {
        let mut args = base.clone();
        for (flag, value) in replace {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1] = (*value).to_string();
        }
        args.extend(extra.iter().map(ToString::to_string));
        let out = create(&args);
        assert!(!out.status.success(), "should fail: {replace:?} {extra:?}");
        text(&out)
    };
    assert!(with(&[("--size", "300M")], &[]).contains("not a power of two"));
    assert!(with(&[("--size", "128M")], &[]).contains("do not fit"));
    assert!(with(&[], &["--boot-size", "8M"]).contains("too small"));
    assert!(
        with(&[("--slot", "A:kernel=/nonexistent/kernel")], &[]).contains("/nonexistent/kernel")
    );
    assert!(with(&[("--loader", "/nonexistent/zboot.img")], &[]).contains("--loader"));
    assert!(with(&[("--slot", "C:kernel=k")], &[]).contains("not a slot"));
    assert!(with(&[], &["--cmdline", "B=quiet"]).contains("no --slot B"));
    // An ext4 image larger than its partition; a root that is neither ext4 nor a directory.
    let big = inputs.path("big.ext4");
    File::create(&big).unwrap().set_len(65 << 20).unwrap();
    assert!(with(&[("--root", &format!("A={big}"))], &[]).contains("does not fit"));
    assert!(
        with(&[("--root", &format!("A={}", inputs.path("kernel")))], &[])
            .contains("not an ext2/3/4 image")
    );
    // A kernel larger than the boot partition.
    let huge = inputs.path("huge");
    fs::write(&huge, vec![1u8; 70 << 20]).unwrap();
    assert!(with(&[("--slot", &format!("A:kernel={huge}"))], &[]).contains("--boot-size larger"));
    // A two-line command line; a firmware directory that brings its own config.txt.
    let two = inputs.path("two-lines");
    fs::write(&two, "quiet\nsplash\n").unwrap();
    let cmdline = with(
        &[(
            "--slot",
            &format!("B:kernel={},cmdline-file={two}", inputs.path("kernel")),
        )],
        &[],
    );
    assert!(
        cmdline.contains("control character 0x0a at byte 5"),
        "{cmdline}"
    );
    File::create(inputs.dir.path().join("fw/config.txt"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert!(with(&[], &[]).contains("writes /config.txt itself"));
    fs::remove_file(inputs.dir.path().join("fw/config.txt")).unwrap();
    // A manifest the loader would reject.
    let manifest = inputs.path("bad-manifest.txt");
    fs::write(&manifest, "max_boot_failure=99\n").unwrap();
    assert!(with(&[], &["--manifest", &manifest]).contains("max_boot_failure: 99"));
    assert!(
        !inputs.output().exists(),
        "no image is left behind by refused input"
    );
}

/// The fatfs 0.3.6 defects that `fat_fixup` repairs are real: fsck.fat flags a fresh fatfs
/// volume with a directory, and passes it after the fix.
#[test]
fn fatfs_defects_are_found_by_fsck_and_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = vec![0u8; 40 << 20];
    fatfs::format_volume(
        std::io::Cursor::new(&mut volume),
        fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32),
    )
    .unwrap();
    {
        let fs = fatfs::FileSystem::new(std::io::Cursor::new(&mut volume), fatfs::FsOptions::new())
            .unwrap();
        {
            let sub = fs.root_dir().create_dir("A").unwrap();
            sub.create_dir("deeper").unwrap();
            sub.create_file("kernel.img")
                .unwrap()
                .write_all(b"kernel")
                .unwrap();
        }
        fs.unmount().unwrap();
    }
    let path = dir.path().join("fat.img");
    fs::write(&path, &volume).unwrap();
    let before = run("fsck.fat", &["-n", path.to_str().unwrap()]);
    let report = text(&before);
    assert!(!before.status.success(), "{report}");
    assert!(report.contains("Expected a valid '.' entry"), "{report}");
    assert!(
        report.contains("Free cluster summary uninitialized"),
        "{report}"
    );
    zboot_tools::zbctl::fat_fixup::fix_fatfs_volume(&mut volume).unwrap();
    fs::write(&path, &volume).unwrap();
    let after = run("fsck.fat", &["-n", path.to_str().unwrap()]);
    assert!(after.status.success(), "{}", text(&after));
    let listing = run("mdir", &["-i", path.to_str().unwrap(), "::/A/deeper"]);
    assert!(listing.status.success(), "{}", text(&listing));
}

#[test]
fn gpt_image_passes_sfdisk_sgdisk_fsck_and_our_reader() {
    let inputs = Inputs::new();
    let mut args = inputs.create_args();
    args.push("--gpt".into());
    let created = create(&args);
    assert!(created.status.success(), "{}", text(&created));
    let image = inputs.output();
    let report = text(&created);
    assert!(report.contains("GPT disk"), "{report}");

    // sgdisk's full check: headers, CRCs, backup, overlaps (scripts/setup installs gdisk).
    let verify = run("sgdisk", &["-v", image.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains("No problems found"),
        "sgdisk -v: {}",
        text(&verify)
    );

    // sfdisk's view: label, types, GUIDs; the loader's reader agrees on every partition.
    let dump = run("sfdisk", &["--json", image.to_str().unwrap()]);
    assert!(dump.status.success(), "{}", text(&dump));
    let json: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let listed = table["partitions"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    let mut disk = FileDisk::new(File::open(&image).unwrap()).unwrap();
    let ours = Partitions::read(&mut disk).unwrap();
    let gpt = ours.gpt().expect("a GPT");
    assert_eq!(gpt.primary_fault, None);
    assert_eq!(
        table["id"].as_str().unwrap().to_lowercase(),
        gpt.disk_guid.to_string()
    );
    let basic_data = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
    let linux = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    for (index, p) in listed.iter().enumerate() {
        let number = index as u8 + 1;
        let mine = ours.partition(number).unwrap();
        assert_eq!(
            (
                mine.start_lba,
                mine.sectors,
                format!("{:x}", mine.kind),
                mine.partuuid().to_string()
            ),
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_lowercase(),
                p["uuid"].as_str().unwrap().to_lowercase()
            ),
            "partition {number}"
        );
        let expected_type = if number == 1 { basic_data } else { linux };
        assert_eq!(format!("{:x}", mine.kind), expected_type);
    }
    assert_eq!(listed[3]["name"], "rootSAFE");
    // Reproducible from --disk-id: the report names the same PARTUUIDs.
    let safe = ours.partition(4).unwrap().partuuid().to_string();
    assert!(report.contains(&format!("p4 PARTUUID={safe}")), "{report}");
    assert!(report.contains("root SAFE"), "{report}");

    // The backup header alone still gives the same table.
    let mut damaged = fs::read(&image).unwrap();
    damaged[512..1024].fill(0);
    let damaged_path = image.with_file_name("damaged.img");
    fs::write(&damaged_path, &damaged).unwrap();
    let mut disk = FileDisk::new(File::open(&damaged_path).unwrap()).unwrap();
    let from_backup = Partitions::read(&mut disk).unwrap();
    assert_eq!(
        from_backup.gpt().unwrap().source,
        recovery_proto::partition::HeaderCopy::Backup
    );
    assert_eq!(
        from_backup.iter().collect::<Vec<_>>(),
        ours.iter().collect::<Vec<_>>()
    );
    fs::remove_file(&damaged_path).unwrap();

    // FAT boot partition clean; the manifest names SAFE as partition 4.
    let boot = ours.partition(1).unwrap();
    let boot = extract(&image, boot.start_lba, boot.sectors, "boot.img");
    let fsck = run("fsck.fat", &["-n", boot.to_str().unwrap()]);
    assert!(fsck.status.success(), "fsck.fat -n: {}", text(&fsck));
    let zbmanifest = mtype(&boot, "/zbmanifest.txt");
    let parsed = Manifest::parse(&zbmanifest).unwrap();
    assert_eq!(parsed.root_a, Some("/dev/mmcblk0p2"));
    assert_eq!(parsed.safe_root, Some("/dev/mmcblk0p4"));
    for (number, label) in [(4, "rootSAFE"), (5, "data")] {
        let p = ours.partition(number).unwrap();
        let part = extract(&image, p.start_lba, p.sectors, &format!("p{number}.img"));
        let check = run("e2fsck", &["-n", "-f", part.to_str().unwrap()]);
        assert!(check.status.success(), "e2fsck p{number}: {}", text(&check));
        let label_out = run("e2label", &[part.to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&label_out.stdout).trim(), label);
    }

    // zbctl finds the state through the GPT.
    let status = zbctl(&["--image", image.to_str().unwrap(), "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
}

#[test]
fn secure_boot_boot_img_takes_the_firmware_and_leaves_the_slots() {
    let inputs = Inputs::new();
    // Another board's firmware on the same partition stays out of the ramdisk.
    fs::write(inputs.dir.path().join("fw/bootcode.bin"), b"pre-2711").unwrap();
    let created = create(&inputs.create_args());
    assert!(created.status.success(), "{}", text(&created));
    let ramdisk = inputs.dir.path().join("boot.img");
    let made = zbctl(&[
        "secure-boot",
        "boot-img",
        "--from",
        inputs.output().to_str().unwrap(),
        "-o",
        ramdisk.to_str().unwrap(),
    ]);
    let report = text(&made);
    assert!(made.status.success(), "{report}");
    assert!(report.contains("rpi-eeprom-digest -i"), "{report}");
    assert!(
        report.contains("left on the eMMC boot partition")
            && report.contains("A/slot.txt")
            && report.contains("bootcode.bin")
            && report.contains("zbmanifest.txt"),
        "{report}"
    );
    // A FAT file system without a partition table, as the bootloader reads it.
    let checked = run("fsck.fat", &["-n", ramdisk.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked));
    let listing = run("mdir", &["-/", "-b", "-i", ramdisk.to_str().unwrap(), "::"]);
    let listing = String::from_utf8_lossy(&listing.stdout).to_lowercase();
    for inside in [
        "::/config.txt",
        "::/zboot.img",
        "::/start4.elf",
        "::/fixup4.dat",
        "::/overlays/disable-bt.dtbo",
    ] {
        assert!(listing.contains(inside), "{inside} missing:\n{listing}");
    }
    for outside in ["::/a/", "::/safe/", "::/zbmanifest.txt", "::/bootcode.bin"] {
        assert!(!listing.contains(outside), "{outside} inside:\n{listing}");
    }
    let zboot = run("mtype", &["-i", ramdisk.to_str().unwrap(), "::zboot.img"]);
    assert_eq!(
        zboot.stdout,
        fs::read(inputs.dir.path().join("zboot.img")).unwrap()
    );

    // A tree without the firmware: refused, nothing written.
    let tree = inputs.dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("config.txt"), "kernel=zboot.img\n").unwrap();
    fs::write(tree.join("zboot.img"), b"loader").unwrap();
    let other = inputs.dir.path().join("other.img");
    let refused = zbctl(&[
        "secure-boot",
        "boot-img",
        "--from",
        tree.to_str().unwrap(),
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("no start4.elf on the boot partition"),
        "{}",
        text(&refused)
    );
    assert!(!other.exists());
}
