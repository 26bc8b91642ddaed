//! The recovery scenarios' kit: a golden disk made by `zbctl disk create`,
//! its `.zi` and a stick made by `zbctl usb create`; QEMU runs on an eMMC
//! image; comparisons of the eMMC with the golden disk.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use zboot_qemu_tests::{LoaderBuild, LoaderImage, Qemu, Run, minimal_dtb};

use crate::common::zbctl;

pub fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A work directory with a golden disk, its `.zi`, and a stick holding it.
pub struct Kit {
    pub dir: tempfile::TempDir,
    pub golden: PathBuf,
    pub zi: PathBuf,
    pub stick: PathBuf,
}

impl Kit {
    pub fn new() -> Self {
        Self::with_root_b(None)
    }

    /// A kit whose image also carries `megabytes` of file data in root B
    /// (text: it compresses well, but every byte is inflated and hashed),
    /// so that each pass over the image lasts long enough (over a second
    /// under TCG) for a QMP command triggered by a progress line to land
    /// inside it: QMP reaches a single-threaded TCG guest up to ~100 ms late.
    pub fn with_payload(megabytes: usize) -> Self {
        Self::with_root_b(Some(megabytes))
    }

    /// A kit whose slots are signed by the test key built into
    /// [`LoaderBuild::QemuTestProvisioned`] (as image `os`); the `.zi` itself is not
    /// signed.
    pub fn signed() -> Self {
        Self::built(None, true)
    }

    pub fn with_root_b(payload_megabytes: Option<usize>) -> Self {
        Self::built(payload_megabytes, false)
    }

    fn built(payload_megabytes: Option<usize>, signed: bool) -> Self {
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
        if let Some(megabytes) = payload_megabytes {
            let root = dir.path().join("root-b");
            std::fs::create_dir(&root).unwrap();
            let text = (0..megabytes * 1024 * 1024 / 32).fold(String::new(), |mut text, line| {
                let _ = writeln!(text, "zboot payload line {line:>12}");
                text
            });
            std::fs::write(root.join("payload.txt"), text).unwrap();
            args.push("--root".into());
            args.push(format!("B={}/", root.display()));
        }
        if signed {
            let (key, _) = zboot_qemu_tests::provisioned_key_files().unwrap();
            args.extend([
                "--sign-key".into(),
                key.display().to_string(),
                "--image-name".into(),
                "os".into(),
            ]);
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
        Self {
            dir,
            golden,
            zi,
            stick,
        }
    }

    /// A blank eMMC the size of the golden one: a bricked unit.
    pub fn blank_emmc(&self) -> PathBuf {
        let emmc = self.dir.path().join("emmc.img");
        let file = std::fs::File::create(&emmc).unwrap();
        file.set_len(std::fs::metadata(&self.golden).unwrap().len())
            .unwrap();
        emmc
    }

    /// A QEMU run of the loader on `emmc` with the first stick on port 1 of
    /// an explicit hub (id `stick`) and the second one's drive declared.
    pub fn qemu_for_pulling(&self, emmc: &Path) -> Qemu {
        let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
        // Its own file: QEMU locks each image it opens.
        let second_stick = self.dir.path().join("second-stick.img");
        std::fs::copy(&self.stick, &second_stick).unwrap();
        let first = format!("if=none,id=first,format=raw,file={}", path(&self.stick));
        let second = format!("if=none,id=second,format=raw,file={}", path(&second_stick));
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

pub fn boot(emmc: &Path, stick: Option<&Path>, stop_at: Option<&str>) -> Run {
    boot_with(emmc, stick, stop_at, &[])
}

pub fn boot_with(emmc: &Path, stick: Option<&Path>, stop_at: Option<&str>, extra: &[&str]) -> Run {
    boot_build(LoaderBuild::QemuTest, emmc, stick, stop_at, extra)
}

pub fn boot_build(
    build: LoaderBuild,
    emmc: &Path,
    stick: Option<&Path>,
    stop_at: Option<&str>,
    extra: &[&str],
) -> Run {
    let loader = LoaderImage::get(build).unwrap();
    let mut qemu = Qemu::new(&loader.image)
        .dtb(&minimal_dtb().unwrap())
        .emmc(emmc)
        .extra_args(extra);
    if let Some(stick) = stick {
        qemu = qemu.usb_stick(stick);
    }
    if let Some(text) = stop_at {
        qemu = qemu.stop_at(text);
    }
    let run = qemu.run().unwrap();
    println!("{run}");
    run
}

/// `zbctl image inspect --json --regions` of the kit's image.
pub fn inspect_regions(kit: &Kit) -> Value {
    serde_json::from_str(&zbctl(&[
        "image",
        "inspect",
        "--json",
        "--regions",
        path(&kit.zi),
    ]))
    .unwrap()
}

/// Sectors of `emmc` that differ from the golden disk, outside the two
/// state sectors (which recovery rewrites with a fresh state) and outside
/// the image's skip regions (free space, not written).
pub fn differences(kit: &Kit, emmc: &Path) -> Vec<u64> {
    let inspect = inspect_regions(kit);
    let status: Value =
        serde_json::from_str(&zbctl(&["status", "--json", "--image", path(emmc)])).unwrap();
    let state: Vec<u64> = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["lba"].as_u64().unwrap())
        .collect();
    // Regions name their partition by number (tables are number 0 and
    // never skipped).
    let start_of = |number: u64| {
        inspect["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|partition| partition["number"].as_u64() == Some(number))
            .unwrap()["start_lba"]
            .as_u64()
            .unwrap()
    };
    let mut skipped = Vec::new();
    for region in inspect["regions"].as_array().unwrap() {
        if region["kind"] == "skip" {
            let first = start_of(region["partition"].as_u64().unwrap())
                + region["offset"].as_u64().unwrap() / 512;
            let count = region["length"].as_u64().unwrap() / 512;
            skipped.push(first..first + count);
        }
    }
    assert!(!skipped.is_empty(), "the image has free space to skip");
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

/// The region a completed reflash resumed from ("image written: N regions
/// (from K)").
pub fn resumed_from(run: &Run) -> u32 {
    run.console
        .lines()
        .find_map(|line| line.split("(from ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|number| number.parse().ok())
        .unwrap()
}

/// `sfdisk --json` of an image.
pub fn partition_table(image: &Path) -> Value {
    let output = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .expect("running sfdisk (fdisk; scripts/setup installs it)");
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

pub fn partition_field(image: &Path, number: u64, field: &str) -> u64 {
    let table = partition_table(image);
    let suffix = number.to_string();
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|partition| partition["node"].as_str().unwrap().ends_with(&suffix))
        .unwrap()[field]
        .as_u64()
        .unwrap()
}

pub fn partition_start(image: &Path, number: u64) -> u64 {
    partition_field(image, number, "start")
}

pub fn partition_sectors(image: &Path, number: u64) -> u64 {
    partition_field(image, number, "size")
}

pub fn write_at(image: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
}

pub fn read_at(image: &Path, offset: u64, length: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(image).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut bytes = vec![0; length];
    file.read_exact(&mut bytes).unwrap();
    bytes
}

/// The next power-on boots A from the reflashed eMMC.
pub fn assert_boots_a(emmc: &Path) {
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
