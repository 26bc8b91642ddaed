//! Slot selection end to end on QEMU raspi4b: a real eMMC image made by
//! `zbctl disk create`, the real loader, the test kernel standing in for
//! Linux; every scenario asserts on the console and on the state on the
//! image afterwards (read back with `zbctl status --json`).

// Test helpers outside `#[test]` fns may unwrap too (clippy.toml covers only the fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::zbctl;
use serde_json::Value;
use zboot_qemu_tests::linux::LinuxFiles;
use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run, minimal_dtb};

/// A disk id, so PARTUUIDs are known: `5a6b7c8d-02` is slot A's root.
const DISK_ID: &str = "5a6b7c8d";

struct Disk {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Disk {
    fn path(&self) -> &str {
        self.image.to_str().unwrap()
    }

    /// `zbctl status --json` of the image.
    fn status(&self) -> Value {
        serde_json::from_str(&zbctl(&["status", "--json", "--image", self.path()])).unwrap()
    }

    fn slot(&self, name: &str) -> Value {
        self.status()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|slot| slot["name"] == name)
            .unwrap()
            .clone()
    }

    fn failed_boots(&self, name: &str) -> u64 {
        self.slot(name)["failed_boots"].as_u64().unwrap()
    }

    fn mark_good(&self) {
        zbctl(&["mark-good", "--image", self.path()]);
    }

    /// `image@@offset` of the boot partition, for mtools.
    fn mtools_image(&self) -> String {
        let mbr = std::fs::read(&self.image).unwrap();
        let start = u32::from_le_bytes(mbr[454..458].try_into().unwrap());
        format!("{}@@{}", self.path(), u64::from(start) * 512)
    }

    /// Replaces `path` on the boot partition with `bytes`, with mtools.
    fn replace_file(&self, path: &str, bytes: &[u8]) {
        let local = self.dir.path().join("replacement");
        std::fs::write(&local, bytes).unwrap();
        let status = Command::new("mcopy")
            .args(["-o", "-i", &self.mtools_image()])
            .arg(&local)
            .arg(format!("::{path}"))
            .status()
            .expect("running mcopy (mtools; scripts/setup installs it)");
        assert!(status.success(), "mcopy {path}");
    }

    /// Deletes `path` on the boot partition, with mtools.
    fn delete_file(&self, path: &str) {
        let status = Command::new("mdel")
            .args(["-i", &self.mtools_image()])
            .arg(format!("::{path}"))
            .status()
            .unwrap();
        assert!(status.success(), "mdel {path}");
    }

    /// Reads `path` from the boot partition, with mtools.
    fn read_file(&self, path: &str) -> Vec<u8> {
        let output = Command::new("mtype")
            .args(["-i", &self.mtools_image()])
            .arg(format!("::{path}"))
            .output()
            .unwrap();
        assert!(output.status.success(), "mtype {path}");
        output.stdout
    }

    /// The image's bytes, to compare after a boot.
    fn snapshot(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }

    /// Asserts that nothing but the two state sectors differs from `before`:
    /// zboot writes the state and nothing else (no FAT metadata, no slot).
    fn assert_only_state_written(&self, before: &[u8]) {
        let status = self.status();
        let state_lbas: Vec<u64> = status["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|copy| copy["lba"].as_u64().unwrap())
            .collect();
        let after = self.snapshot();
        assert_eq!(before.len(), after.len());
        for (index, (old, new)) in before.chunks(512).zip(after.chunks(512)).enumerate() {
            if old != new {
                assert!(
                    state_lbas.contains(&(index as u64)),
                    "sector {index} changed, and it is not a state copy ({state_lbas:?})"
                );
            }
        }
    }

    fn boot(&self) -> Run {
        self.boot_on(|qemu| qemu)
    }

    /// A boot with the harness adjusted by `adjust` (the card model, say).
    fn boot_on(&self, adjust: impl FnOnce(Qemu) -> Qemu) -> Run {
        self.boot_build(LoaderBuild::QemuTest, adjust)
    }

    /// A boot of `build` with the harness adjusted by `adjust`.
    fn boot_build(&self, build: LoaderBuild, adjust: impl FnOnce(Qemu) -> Qemu) -> Run {
        let loader = LoaderImage::get(build).expect("building the loader");
        let qemu = Qemu::new(&loader.image)
            .dtb(&minimal_dtb().unwrap())
            .emmc(&self.image);
        let run = adjust(qemu).run().expect("running QEMU");
        println!("{run}");
        run
    }
}

/// One slot of a test disk: the test kernel (or `kernel`), `outcome` on
/// its command line.
struct SlotSetup<'a> {
    slot: &'a str,
    outcome: &'a str,
    kernel: Option<&'a Path>,
    initrd: Option<&'a Path>,
    dtb: Option<&'a Path>,
    version: u32,
}

impl<'a> SlotSetup<'a> {
    fn new(slot: &'a str, outcome: &'a str) -> Self {
        Self {
            slot,
            outcome,
            kernel: None,
            initrd: None,
            dtb: None,
            version: 1,
        }
    }
}

fn disk(slots: &[SlotSetup<'_>]) -> Disk {
    disk_with(slots, &[])
}

/// [`disk`] of `size` (`zbctl disk create --size`).
fn disk_sized(slots: &[SlotSetup<'_>], size: &str) -> Disk {
    disk_built(slots, &[], size)
}

/// [`disk`] with more `zbctl disk create` arguments.
fn disk_with(slots: &[SlotSetup<'_>], extra: &[&str]) -> Disk {
    disk_built(slots, extra, "256M")
}

fn disk_built(slots: &[SlotSetup<'_>], extra: &[&str], size: &str) -> Disk {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
    let kernel = LoaderImage::get(LoaderBuild::TestKernel).expect("building the test kernel");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("emmc.img");
    let mut args: Vec<String> = vec![
        "disk".into(),
        "create".into(),
        "--output".into(),
        image.display().to_string(),
        "--size".into(),
        size.into(),
        "--disk-id".into(),
        DISK_ID.into(),
        "--loader".into(),
        loader.image.display().to_string(),
    ];
    for setup in slots {
        let mut spec = format!(
            "{}:kernel={},version={}",
            setup.slot,
            setup.kernel.unwrap_or(&kernel.image).display(),
            setup.version
        );
        if let Some(initrd) = setup.initrd {
            let _ = write!(spec, ",initrd={}", initrd.display());
        }
        if let Some(dtb) = setup.dtb {
            let _ = write!(spec, ",dtb={}", dtb.display());
        }
        args.push("--slot".into());
        args.push(spec);
        args.push("--cmdline".into());
        args.push(format!(
            "{}=console=ttyAMA0 zbtest={}",
            setup.slot, setup.outcome
        ));
    }
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    zbctl(&args);
    Disk { dir, image }
}

fn all_good() -> Disk {
    disk(&[
        SlotSetup::new("A", "good"),
        SlotSetup::new("B", "good"),
        SlotSetup::new("SAFE", "good"),
    ])
}

/// The slot and attempt the test kernel was told.
fn booted(run: &Run) -> (String, u32) {
    let line = run
        .console
        .lines()
        .find(|line| line.starts_with("test-kernel: bootargs: "))
        .unwrap_or_else(|| panic!("the test kernel did not run:\n{}", run.console));
    let word = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    (word("zboot.slot="), word("zboot.attempt=").parse().unwrap())
}

#[test]
fn slot_a_boots_with_its_root_and_attempt_and_mark_good_clears_the_counter() {
    let disk = all_good();
    let before = disk.snapshot();
    let run = disk.boot();
    disk.assert_only_state_written(&before);
    assert_eq!(run.ending, Ending::GuestReset, "the test kernel resets");
    assert_eq!(booted(&run), ("A".into(), 1));
    assert!(run.console_has(&format!(
        "root=PARTUUID={DISK_ID}-02 zboot.slot=A zboot.attempt=1"
    )));
    assert!(run.console_has("test-kernel: entered at EL2 at 0x1000000, MMU off, D-cache off"));
    assert!(run.console_has("x1-x3 zero"));
    assert!(
        run.console_has("console=ttyAMA0 zbtest=good"),
        "the slot's cmdline.txt is kept"
    );
    assert!(
        run.console_has("slot state saved"),
        "one state write before hand-off"
    );
    // On the disk: the attempt was counted before the hand-off.
    assert_eq!(disk.failed_boots("A"), 1);
    assert_eq!(disk.status()["history"][0]["decision"], "A");
    disk.mark_good();
    assert_eq!(disk.failed_boots("A"), 0);
    // The next boot is attempt 1 again.
    let run = disk.boot();
    assert_eq!(booted(&run), ("A".into(), 1));
}

/// The CM4's card: QEMU's eMMC model (every scenario's default), whose EXT_CSD
/// (patched) offers DDR52. zboot runs CMD1, reads the EXT_CSD, switches high speed (the
/// host's timing before CMD13), the 8-bit bus (tested by reading the EXT_CSD again) and
/// DDR52, then boots A, in byte and in block addressing.
#[test]
fn on_the_emmc_model_a_boots_over_an_8_bit_ddr52_bus_in_byte_and_block_addressing() {
    for (size, addressing) in [("256M", "byte"), ("4G", "block")] {
        let disk = disk_sized(
            &[
                SlotSetup::new("A", "good"),
                SlotSetup::new("B", "good"),
                SlotSetup::new("SAFE", "good"),
            ],
            size,
        );
        let before = disk.snapshot();
        let run = disk.boot();
        assert!(run.console_has("EMMC2: eMMC card"), "the eMMC path ran");
        assert!(
            run.console_has(&format!(
                "{addressing} addressing, 8-bit bus, 50000000 Hz DDR52"
            )),
            "{size}: 8-bit DDR52 at the 50 MHz the 700 MHz base clock allows"
        );
        assert_eq!(run.ending, Ending::GuestReset, "the test kernel resets");
        assert_eq!(booted(&run), ("A".into(), 1));
        // Over the DDR bus: the attempt was counted on the card, nothing else written.
        disk.assert_only_state_written(&before);
        assert_eq!(disk.failed_boots("A"), 1);
    }
}

/// With ADMA2 advertised, as the real EMMC2 does (the patched QEMU's capabilities
/// property), zboot loads the slot by ADMA2 over the minimal tree's 1:1 DMA view and
/// writes the state; the kernel it hands over is the verified one.
#[test]
fn with_adma2_a_boots_from_data_moved_by_adma2() {
    let disk = all_good();
    let before = disk.snapshot();
    let run = disk.boot_on(Qemu::emmc2_adma2);
    assert!(run.console_has("EMMC2: ADMA2 (DMA view: ARM 0x0..0xfc000000 at bus 0x0)"));
    assert!(!run.console_has("ADMA2 failed"), "no ADMA error");
    let moved = run
        .console
        .lines()
        .find_map(|line| {
            let rest = line.split("EMMC2: data moved by ADMA2 in ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no transfer counts:\n{}", run.console));
    assert!(moved > 0, "the slot's files came by ADMA2");
    assert_eq!(booted(&run), ("A".into(), 1));
    disk.assert_only_state_written(&before);
    assert_eq!(disk.failed_boots("A"), 1);
}

/// A CM4 Lite has no eMMC: its card is an SD card in the carrier's slot. The same
/// disk boots A there too (CMD8/ACMD41, 4-bit bus), and the attempt is counted on it.
#[test]
fn on_an_sd_card_as_on_a_cm4_lite_a_boots() {
    let disk = all_good();
    let before = disk.snapshot();
    let run = disk.boot_on(Qemu::sd_card);
    assert!(run.console_has("EMMC2: SDSC card"), "the SD path ran");
    assert!(run.console_has("byte addressing, 4-bit bus, 50000000 Hz high speed"));
    assert_eq!(booted(&run), ("A".into(), 1));
    disk.assert_only_state_written(&before);
    assert_eq!(disk.failed_boots("A"), 1);
}

/// The firmware's `/chosen/bootargs` (here QEMU's `-append`) reach the kernel ahead of
/// the slot's line, without the firmware's `root=`, `initrd=` and what the slot sets.
#[test]
fn the_firmware_parameters_go_ahead_of_the_slot_line_without_its_root_and_initrd() {
    let disk = all_good();
    let run = disk.boot_on(|qemu| {
        qemu.append(
            "coherent_pool=1M 8250.nr_uarts=1 console=ttyS0,115200 root=/dev/mmcblk0p7 \
             initrd=0x2e000000,0x1000 rootwait",
        )
    });
    assert_eq!(booted(&run), ("A".into(), 1));
    assert!(
        run.console_has(&format!(
            "test-kernel: bootargs: coherent_pool=1M 8250.nr_uarts=1 rootwait \
             console=ttyAMA0 zbtest=good root=PARTUUID={DISK_ID}-02 zboot.slot=A zboot.attempt=1"
        )),
        "the firmware's parameters first, then the slot's line and zboot's words"
    );
}

#[test]
fn three_failed_boots_of_a_fall_back_to_b_then_safe() {
    let disk = disk(&[
        SlotSetup::new("A", "bad"),
        SlotSetup::new("B", "bad"),
        SlotSetup::new("SAFE", "good"),
    ]);
    for attempt in 1..=3 {
        let run = disk.boot();
        assert_eq!(booted(&run), ("A".into(), attempt));
        assert_eq!(disk.failed_boots("A"), u64::from(attempt));
    }
    let run = disk.boot();
    assert_eq!(booted(&run), ("B".into(), 1), "A used its 3 attempts");
    assert_eq!(disk.slot("A")["state"], "bad");
    assert!(run.console_has("decision: "), "the decision is logged");
    for attempt in 2..=3 {
        let run = disk.boot();
        assert_eq!(booted(&run), ("B".into(), attempt));
    }
    let run = disk.boot();
    assert_eq!(booted(&run), ("SAFE".into(), 1), "A and B exhausted");
    assert_eq!(disk.slot("B")["state"], "bad");
    assert!(
        run.console_has(&format!("root=PARTUUID={DISK_ID}-05")),
        "SAFE's root is the first logical partition"
    );
}

#[test]
fn a_kernel_that_fails_verification_falls_back_in_the_same_boot() {
    let disk = all_good();
    let mut kernel = disk.read_file("A/kernel.img");
    kernel[100] ^= 0xff;
    disk.replace_file("A/kernel.img", &kernel);
    let before = disk.snapshot();
    let run = disk.boot();
    disk.assert_only_state_written(&before);
    assert!(
        run.console_has("slot A: A/kernel.img: BLAKE3 differs from slot.txt; falling back"),
        "names the slot, the file and the problem"
    );
    assert_eq!(
        booted(&run),
        ("B".into(), 1),
        "B boots without a wasted reboot"
    );
    assert_eq!(disk.failed_boots("A"), 1, "A's failure is counted");
    assert_eq!(disk.failed_boots("B"), 1);
}

/// A unit whose slots were written before BLAKE3 (`slot.txt` format 1, SHA-256) keeps
/// booting them after its zboot.img is updated; a damaged file is still caught, by SHA-256.
#[test]
fn a_format_1_slot_txt_with_sha256_digests_still_boots() {
    use recovery_proto::slot_manifest::{Algorithm, SlotManifest};
    let disk = all_good();
    let names = ["kernel.img", "cmdline.txt"];
    let files: Vec<(&str, Vec<u8>)> = names
        .into_iter()
        .map(|name| (name, disk.read_file(&format!("A/{name}"))))
        .collect();
    let mut manifest = SlotManifest::with_algorithm(0, Algorithm::Sha256);
    for (name, bytes) in &files {
        let digest = Algorithm::Sha256.digest(bytes);
        manifest
            .add_file(name, u32::try_from(bytes.len()).unwrap(), digest)
            .unwrap();
    }
    let text = manifest.to_string();
    assert!(text.starts_with("format=1\n"), "{text}");
    disk.replace_file("A/slot.txt", text.as_bytes());
    let run = disk.boot();
    assert!(
        run.console_has("A/kernel.img: ") && run.console_has("bytes, SHA-256 OK"),
        "checked by SHA-256:\n{}",
        run.console
    );
    assert_eq!(booted(&run), ("A".into(), 1));
    assert_eq!(
        disk.read_file("A/slot.txt"),
        text.as_bytes(),
        "left as it was"
    );
    disk.mark_good();
    assert_eq!(disk.failed_boots("A"), 0);

    // The same slot with its kernel damaged: the format-1 digest catches it.
    let mut kernel = disk.read_file("A/kernel.img");
    kernel[100] ^= 0xff;
    disk.replace_file("A/kernel.img", &kernel);
    let run = disk.boot();
    assert!(
        run.console_has("slot A: A/kernel.img: SHA-256 differs from slot.txt; falling back"),
        "{}",
        run.console
    );
    assert_eq!(booted(&run).0, "B");
    assert_eq!(disk.failed_boots("A"), 1);
}

#[test]
fn a_missing_kernel_falls_back_in_the_same_boot() {
    let disk = all_good();
    disk.delete_file("A/kernel.img");
    let run = disk.boot();
    assert!(run.console_has("slot A: A/kernel.img: not found; falling back"));
    assert_eq!(booted(&run), ("B".into(), 1));
    assert_eq!(disk.failed_boots("A"), 1);
}

#[test]
fn a_gzip_kernel_and_an_initrd_are_handed_over() {
    let kernel = LoaderImage::get(LoaderBuild::TestKernel).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("kernel.img.gz");
    let status = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(&kernel.image)
        .stdout(std::fs::File::create(&gz).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let initrd = dir.path().join("initrd.img");
    // Three of the loader's 1 MiB read pieces and a part sector: its digest is taken piece
    // by piece while the next piece is read, and must not take in the sector slack.
    let initrd_len = 2_621_447u32;
    let initrd_bytes: Vec<u8> = (0..initrd_len).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&initrd, &initrd_bytes).unwrap();
    let disk = disk(&[
        SlotSetup {
            kernel: Some(&gz),
            initrd: Some(&initrd),
            ..SlotSetup::new("A", "good")
        },
        SlotSetup::new("B", "good"),
        SlotSetup::new("SAFE", "good"),
    ]);
    let run = disk.boot();
    assert_eq!(booted(&run), ("A".into(), 1));
    assert!(
        run.console_has(&format!("A/initrd.img: {initrd_len} bytes, BLAKE3 OK")),
        "{}",
        run.console
    );
    assert!(
        run.console_has("kernel inflated from"),
        "gzip kernel inflated"
    );
    let checksum = initrd_bytes.iter().fold(0u32, |sum, &b| {
        sum.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    assert!(
        run.console_has(&format!("({initrd_len} bytes, checksum 0x{checksum:08x})")),
        "the kernel sees the initrd intact"
    );
}

#[test]
fn one_corrupt_state_copy_is_survived_and_two_leave_only_safe() {
    let disk = all_good();
    let status = disk.status();
    let lbas: Vec<u64> = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|copy| copy["lba"].as_u64().unwrap())
        .collect();
    let in_use = usize::try_from(status["copy_in_use"].as_u64().unwrap()).unwrap();
    let corrupt = |lba: u64| {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.image)
            .unwrap();
        file.seek(SeekFrom::Start(lba * 512 + 20)).unwrap();
        file.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    };
    corrupt(lbas[in_use]);
    let run = disk.boot();
    assert_eq!(booted(&run).0, "A", "the other copy carries the state");
    corrupt(lbas[0]);
    corrupt(lbas[1]);
    let run = disk.boot();
    assert!(run.console_has("no valid copy"), "says the state is gone");
    assert_eq!(booted(&run).0, "SAFE", "with no state only SAFE may boot");
}

#[test]
fn a_garbage_manifest_is_reported_and_the_defaults_used() {
    let disk = all_good();
    disk.replace_file(
        "zbmanifest.txt",
        b"max_boot_failure=banana\n\x01\x02garbage without equals\n",
    );
    let run = disk.boot();
    assert!(
        run.console_has("zbmanifest.txt line 1: max_boot_failure: expected a decimal number"),
        "the error names the file, the line and the problem"
    );
    assert!(run.console_has("using the defaults"));
    assert_eq!(booted(&run).0, "A");
}

/// `diag=yes`: one boot prints what a first board needs (clocks, EXT_CSD, bus, a read
/// speed, the USB tree, the firmware's /chosen), then boots as usual. It reads only:
/// the disk changes by the state write alone, the stick not at all.
#[test]
fn diag_prints_the_bring_up_report_and_boots_on() {
    let disk = all_good();
    disk.replace_file("zbmanifest.txt", b"diag=yes\n");
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    let stick_bytes: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&stick, &stick_bytes).unwrap();
    let before = disk.snapshot();
    let run = disk.boot_on(|qemu| {
        qemu.usb_stick(&stick)
            .append("coherent_pool=1M 8250.nr_uarts=1")
            .extra_args(&["-device", "usb-kbd"])
            .timeout(std::time::Duration::from_mins(3))
    });
    for line in [
        "diag: clock ARM: 700000000 Hz (maximum 700000000 Hz)",
        "diag: clock EMMC2: ",
        "diag: EMMC2: base clock ",
        "8-bit bus, DDR52, 3.3 V signalling",
        "diag: EMMC2: fallbacks: 0 bus width(s) refused, DDR52 refused 0 time(s)",
        "diag: EXT_CSD: EXT_CSD_REV ",
        "DEVICE_TYPE 0x07 (HS26 true, HS52 true, DDR52 true)",
        "SEC_COUNT ",
        "diag: read speed: 64 MiB from LBA 0 in ",
        "diag: USB: root port: a ",
        "diag: USB: DWC2 0x4f54",
        ", mass storage",
        ", hub",
        "diag: /chosen/bootloader/build-timestamp = <0x6720f3a1>",
        "diag: /chosen/bootargs = \"coherent_pool=1M 8250.nr_uarts=1\"",
        "diag: /chosen/bootloader/partition = <0x0>",
        "diag: USB:   address 3, port 2, full speed, 46f4:0001, class 0x00, mass storage",
        "diag: end",
    ] {
        assert!(run.console_has(line), "diag printed {line:?}");
    }
    // The keyboard is walked too: the whole tree, not just the first stick.
    assert!(run.console_has("device(s), 1 hub(s)"), "the tree's totals");
    assert_eq!(booted(&run), ("A".into(), 1), "the boot goes on");
    disk.assert_only_state_written(&before);
    assert_eq!(
        std::fs::read(&stick).unwrap(),
        stick_bytes,
        "the stick is read-only"
    );
}

#[test]
fn try_b_once_then_back_to_a() {
    let disk = all_good();
    zbctl(&["try", "B", "--image", disk.path()]);
    let run = disk.boot();
    assert_eq!(booted(&run).0, "B", "the one-shot try");
    let run = disk.boot();
    assert_eq!(booted(&run).0, "A", "one shot only");
}

#[test]
fn a_trial_update_that_fails_rolls_back_to_the_previous_active() {
    // A is the confirmed system; an update put a kernel that fails into B.
    let disk = disk(&[
        SlotSetup::new("A", "good"),
        SlotSetup::new("B", "bad"),
        SlotSetup::new("SAFE", "good"),
    ]);
    assert_eq!(booted(&disk.boot()).0, "A");
    disk.mark_good();
    zbctl(&["set-active", "B", "--version", "2", "--image", disk.path()]);
    assert_eq!(disk.slot("B")["state"], "trial");
    assert_eq!(disk.status()["active"], "B");
    for attempt in 1..=3 {
        let run = disk.boot();
        assert_eq!(
            booted(&run),
            ("B".into(), attempt),
            "the trial gets its attempts"
        );
    }
    let run = disk.boot();
    assert_eq!(
        booted(&run).0,
        "A",
        "the failed trial rolls back to the previous ACTIVE"
    );
    let status = disk.status();
    assert_eq!(status["active"], "A", "A is ACTIVE again");
    assert_eq!(disk.slot("B")["state"], "bad");
    assert_eq!(disk.failed_boots("A"), 1, "A's boot is counted as usual");
}

#[test]
fn a_kernel_that_is_not_an_arm64_image_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("kernel.img");
    std::fs::write(&bogus, vec![0x5a; 70_000]).unwrap();
    let disk = disk(&[
        SlotSetup {
            kernel: Some(&bogus),
            ..SlotSetup::new("A", "good")
        },
        SlotSetup::new("B", "good"),
        SlotSetup::new("SAFE", "good"),
    ]);
    let run = disk.boot();
    assert!(
        run.console_has("slot A: A/kernel.img: no arm64 Image magic at offset 56"),
        "names the slot, the file and the problem"
    );
    assert_eq!(booted(&run), ("B".into(), 1));
    assert_eq!(disk.failed_boots("A"), 1);
}

/// [`all_good`], but slot A carries `dts` compiled by dtc as its `dtb.dtb`.
fn disk_with_slot_a_dtb(dts: &str) -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("slot-a.dts");
    std::fs::write(&source, dts).unwrap();
    let dtb = dir.path().join("slot-a.dtb");
    let status = Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&dtb)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    disk(&[
        SlotSetup {
            dtb: Some(&dtb),
            ..SlotSetup::new("A", "good")
        },
        SlotSetup::new("B", "good"),
        SlotSetup::new("SAFE", "good"),
    ])
}

/// Slot A carries `dts` as its DTB, which zboot refuses with `reason`: B boots, and A's
/// failure is counted on the disk.
fn assert_slot_a_dtb_falls_back(dts: &str, reason: &str) {
    let disk = disk_with_slot_a_dtb(dts);
    let run = disk.boot();
    assert!(
        run.console_has(&format!("slot A: device tree: {reason}")),
        "names the slot and the problem"
    );
    assert_eq!(booted(&run), ("B".into(), 1));
    assert_eq!(disk.failed_boots("A"), 1);
}

#[test]
fn a_slot_device_tree_without_chosen_falls_back() {
    assert_slot_a_dtb_falls_back(
        "/dts-v1/;\n/ {\n\tmodel = \"no chosen\";\n\t#address-cells = <2>;\n\t#size-cells = <1>;\n};\n",
        "the device tree has no /chosen node; falling back",
    );
}

/// A slot DTB as the distributions ship it: `/memory` with `reg = <0 0 0>`, for the
/// firmware to fill in, which it does only for the tree it loads itself. zboot carries
/// the fill-ins over from the firmware's tree (here QEMU's, with its RAM and the stand-in
/// serial and `/chosen/bootloader` of `raspi4b-minimal.dts`), and the slot boots.
#[test]
fn a_stock_slot_device_tree_receives_the_firmware_fill_ins() {
    let disk = disk_with_slot_a_dtb(
        "/dts-v1/;\n/ {\n\tmodel = \"stock\";\n\t#address-cells = <2>;\n\t#size-cells = <1>;\n\
         \tchosen {\n\t};\n\tmemory@0 {\n\t\tdevice_type = \"memory\";\n\
         \t\treg = <0x0 0x0 0x0>;\n\t};\n};\n",
    );
    let run = disk.boot();
    assert!(
        run.console_has(
            "slot device tree: from the firmware's tree: 5 properties copied, \
             /chosen/bootloader created"
        ),
        "the memory, the serial and the bootloader node's three properties"
    );
    assert_eq!(booted(&run), ("A".into(), 1));
    assert!(
        run.console_has("test-kernel: model: stock"),
        "the slot's own tree"
    );
    let memory = run
        .console
        .lines()
        .find_map(|line| line.strip_prefix("test-kernel: memory: 0x0 + "))
        .unwrap_or_else(|| panic!("no memory line:\n{}", run.console));
    assert!(
        u64::from_str_radix(memory.trim().trim_start_matches("0x"), 16).unwrap() >= 256 << 20,
        "the firmware's RAM, not the placeholder: {memory}"
    );
    assert!(run.console_has("test-kernel: serial-number: 10000000c0ffee01"));
    assert!(run.console_has("test-kernel: bootloader build-timestamp: 0x6720f3a1"));
    // On the disk: A's attempt counted, the history names A.
    assert_eq!(disk.failed_boots("A"), 1);
    assert_eq!(disk.status()["history"][0]["decision"], "A");
}

/// A slot DTB with no `/memory` node at all: nothing to carry the RAM into, and Linux
/// would find none. The slot falls back.
#[test]
fn a_slot_device_tree_without_memory_falls_back() {
    assert_slot_a_dtb_falls_back(
        "/dts-v1/;\n/ {\n\tmodel = \"no memory\";\n\t#address-cells = <2>;\n\
         \t#size-cells = <1>;\n\tchosen {\n\t};\n};\n",
        "the device tree's /memory describes no RAM",
    );
}

/// Debian's device tree for the CM4 on its IO board, standing in for the firmware's:
/// zboot finds the eMMC I/O rail switch through `vqmmc-supply` (the firmware GPIO
/// expander's line 4, low for 3.3 V) and asks the firmware to drive it. QEMU does not
/// implement the GPIO tags, so zboot says so, leaves the rail as the firmware set it,
/// signals at 3.3 V as the firmware did, and boots A. On the default tree (no
/// `vqmmc-supply`, a fixed rail) it says that instead.
#[test]
fn the_cm4_trees_io_rail_is_driven_through_the_firmware() {
    let Some(files) = LinuxFiles::or_skip("the_cm4_trees_io_rail_is_driven_through_the_firmware")
    else {
        return;
    };
    let cm4 = walk(&files.dir.join("root/usr/lib"))
        .into_iter()
        .find(|path| path.ends_with("broadcom/bcm2711-rpi-cm4-io.dtb"))
        .expect("Debian's linux-image ships bcm2711-rpi-cm4-io.dtb");
    let disk = all_good();
    let run = disk.boot_on(|qemu| qemu.dtb(&cm4));
    assert!(
        run.console_has("EMMC2 I/O rail: could not drive expander line 4 low for 3.3 V: mailbox: "),
        "the CM4 tree's rail found and asked for"
    );
    assert!(run.console_has("EMMC2: 3.3 V signalling (Host Control 2)"));
    assert_eq!(booted(&run), ("A".into(), 1));
    assert_eq!(disk.status()["history"][0]["decision"], "A");

    let run = disk.boot();
    assert!(run.console_has(
        "EMMC2 I/O rail: the firmware's tree gives /emmc2bus/mmc@7e340000 no vqmmc-supply"
    ));
    assert!(run.console_has("EMMC2: 3.3 V signalling (Host Control 2)"));
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A GPT disk (`zbctl disk create --gpt`, the same slots as [`all_good`]) and what
/// disk create reported (each partition's PARTUUID).
fn gpt_disk() -> (Disk, String) {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
    let kernel = LoaderImage::get(LoaderBuild::TestKernel).expect("building the test kernel");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("emmc.img");
    let mut args: Vec<String> = [
        "disk",
        "create",
        "--gpt",
        "--output",
        image.to_str().unwrap(),
        "--size",
        "256M",
        "--disk-id",
        DISK_ID,
        "--loader",
        loader.image.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    for slot in ["A", "B", "SAFE"] {
        args.push("--slot".into());
        args.push(format!(
            "{slot}:kernel={},version=1",
            kernel.image.display()
        ));
        args.push("--cmdline".into());
        args.push(format!("{slot}=console=ttyAMA0 zbtest=good"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = zbctl(&args);
    (Disk { dir, image }, report)
}

#[test]
fn gpt_disk_boots_slot_a_by_its_guid_and_falls_back_to_the_backup_header() {
    let (disk, report) = gpt_disk();
    let partuuid = |number: u8| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("p{number} PARTUUID=")))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no p{number} in {report}"))
            .to_owned()
    };
    let root_a = partuuid(2);
    assert_eq!(root_a.len(), 36, "a GUID: {root_a}");
    let before = disk.snapshot();
    let run = disk.boot();
    disk.assert_only_state_written(&before);
    assert!(run.console_has("partition table: GPT"));
    assert_eq!(booted(&run), ("A".into(), 1));
    assert!(run.console_has(&format!(
        "root=PARTUUID={root_a} zboot.slot=A zboot.attempt=1"
    )));
    assert_eq!(
        disk.failed_boots("A"),
        1,
        "the attempt is counted on the disk"
    );

    // The primary header damaged (its "my LBA" field): the backup at the last LBA is used.
    let mut bytes = disk.snapshot();
    bytes[512 + 24] ^= 0xFF;
    std::fs::write(&disk.image, &bytes).unwrap();
    let run = disk.boot();
    assert!(
        run.console_has("GPT: primary header unusable (GPT header at LBA 1: header CRC32"),
        "the console says why"
    );
    assert!(run.console_has("using the backup header at LBA 524287"));
    assert_eq!(booted(&run), ("A".into(), 2));
    assert!(run.console_has(&format!("root=PARTUUID={root_a} zboot.slot=A")));
    assert_eq!(disk.failed_boots("A"), 2);
    assert_eq!(
        &disk.snapshot()[512..1024],
        &bytes[512..1024],
        "zboot never repairs the table"
    );
}

#[test]
fn an_initrd_too_large_for_ram_falls_back_before_reading_it() {
    const SIZE: u32 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0x42u8; 4096]).unwrap();
    let disk = disk(&[
        SlotSetup {
            initrd: Some(&initrd),
            ..SlotSetup::new("A", "good")
        },
        SlotSetup::new("B", "good"),
        SlotSetup::new("SAFE", "good"),
    ]);
    // Make A's initrd claim 1 GiB, more than the 960 MiB the firmware gives
    // the ARM: in slot.txt, and in its FAT directory entry (DIR_FileSize,
    // bytes 28-31 of the 32-byte entry whose name is "INITRD  IMG").
    let manifest = String::from_utf8(disk.read_file("A/slot.txt")).unwrap();
    let manifest = manifest.replace(
        "file=initrd.img size=4096 ",
        &format!("file=initrd.img size={SIZE} "),
    );
    assert!(manifest.contains(&format!("size={SIZE}")), "{manifest}");
    disk.replace_file("A/slot.txt", manifest.as_bytes());
    let mut image = std::fs::read(&disk.image).unwrap();
    let entry = image
        .windows(11)
        .position(|name| name == b"INITRD  IMG")
        .expect("A's initrd directory entry");
    image[entry + 28..entry + 32].copy_from_slice(&SIZE.to_le_bytes());
    std::fs::write(&disk.image, &image).unwrap();

    let run = disk.boot();
    assert!(
        run.console_has("slot A: A/initrd.img: the initrd (1073741824 bytes at 0x"),
        "names the slot, the file and the size"
    );
    assert!(run.console_has("does not fit below 0x3c000000; falling back"));
    assert_eq!(booted(&run), ("B".into(), 1));
    assert_eq!(disk.failed_boots("A"), 1);
}

/// The watchdog time left that the test kernel read from PM_WDOG at its start.
fn watchdog_left_ms(run: &Run) -> Option<u64> {
    run.console.lines().find_map(|line| {
        line.strip_prefix("test-kernel: watchdog armed: ")?
            .strip_suffix(" ms left")?
            .parse()
            .ok()
    })
}

#[test]
fn the_hang_guard_is_armed_at_the_hand_off_by_default_and_off_with_zero() {
    // No watchdog_timeout in zbmanifest.txt: the default, the PM watchdog's
    // maximum (0xfffff ticks of 16 µs, 15.99 s), read back from PM_WDOG by the
    // kernel zboot hands over to.
    let disk = all_good();
    let run = disk.boot();
    assert!(run.console_has("hang guard: watchdog armed for 15999 ms"));
    let left = watchdog_left_ms(&run).expect("the kernel finds the watchdog armed");
    assert!((10_000..=15_999).contains(&left), "{left} ms left");
    assert!(
        run.console_has("zboot.slot=A zboot.attempt=1 panic=1"),
        "a panic reboots at once"
    );
    assert_eq!(disk.failed_boots("A"), 1);

    let off = disk_with(
        &[SlotSetup::new("A", "good"), SlotSetup::new("SAFE", "good")],
        &["--watchdog-timeout", "0"],
    );
    let run = off.boot();
    assert!(run.console_has("hang guard off (watchdog_timeout=0)"));
    assert!(run.console_has("test-kernel: watchdog not armed"));
    assert!(!run.console_has("panic=1"));
}

#[test]
fn a_kernel_that_hangs_is_reset_by_the_watchdog_and_falls_back_after_three() {
    // The patched QEMU counts the PM watchdog down as the chip does
    // (scripts/build-qemu); a 2 s hang guard keeps the test short.
    let disk = disk_with(
        &[
            SlotSetup::new("A", "hang"),
            SlotSetup::new("B", "good"),
            SlotSetup::new("SAFE", "good"),
        ],
        &["--watchdog-timeout", "2"],
    );
    for attempt in 1..=3 {
        let run = disk.boot();
        assert_eq!(booted(&run), ("A".into(), attempt));
        assert!(run.console_has("test-kernel: hanging as asked"));
        assert!(run.console_has("hang guard: watchdog armed for 2000 ms"));
        assert_eq!(
            run.ending,
            Ending::GuestReset,
            "the watchdog resets the hung kernel"
        );
        assert_eq!(disk.failed_boots("A"), u64::from(attempt));
    }
    let run = disk.boot();
    assert_eq!(
        booted(&run),
        ("B".into(), 1),
        "the hang counted three times"
    );
    assert_eq!(disk.slot("A")["state"], "bad");
}

// Verified boot (docs/security.md): a loader with the test key built in
// (`LoaderBuild::QemuTestProvisioned`) boots only slots whose slot.txt that key signed.

/// The test key built into the provisioned loader: (private key file, fingerprint).
fn test_key() -> (PathBuf, String) {
    let (private, _) = zboot_qemu_tests::provisioned_key_files().unwrap();
    let key = zboot_tools::zbctl::key::read_private(&private).unwrap();
    let fingerprint =
        zboot_tools::zbctl::slot_sign::fingerprint_of(&key.verifying_key().to_bytes());
    (private, fingerprint.to_string())
}

/// A disk whose three slots the test key signed (as image `product`), at `version`.
fn signed_disk(version: u32) -> Disk {
    let (key, _) = test_key();
    let setup = |slot| SlotSetup {
        version,
        ..SlotSetup::new(slot, "good")
    };
    disk_with(
        &[setup("A"), setup("B"), setup("SAFE")],
        &[
            "--sign-key",
            key.to_str().unwrap(),
            "--image-name",
            "product",
        ],
    )
}

/// How a slot's files are rewritten by hand (someone with write access to the boot
/// partition): its signature after the change.
enum Resign<'k> {
    /// slot.sig left as it was.
    Keep,
    /// slot.sig deleted.
    Remove,
    /// slot.sig made with this private key file.
    With(&'k Path),
    /// slot.sig replaced by these bytes.
    Bytes(Vec<u8>),
}

impl Disk {
    fn boot_provisioned(&self) -> Run {
        self.boot_build(LoaderBuild::QemuTestProvisioned, |qemu| qemu)
    }

    /// Rewrites `slot`'s kernel (when given) and command line with a `slot.txt` that
    /// matches them at `version`: consistent files, as an attacker would leave them.
    fn forge(
        &self,
        slot: &str,
        kernel: Option<&[u8]>,
        cmdline: &str,
        version: u32,
        resign: Resign<'_>,
    ) {
        if let Some(kernel) = kernel {
            self.replace_file(&format!("{slot}/kernel.img"), kernel);
        }
        self.replace_file(&format!("{slot}/cmdline.txt"), cmdline.as_bytes());
        let mut manifest = recovery_proto::slot_manifest::SlotManifest::new(version);
        let files: Vec<(&str, Vec<u8>)> = ["kernel.img", "cmdline.txt"]
            .into_iter()
            .map(|name| (name, self.read_file(&format!("{slot}/{name}"))))
            .collect();
        for (name, bytes) in &files {
            let size = u32::try_from(bytes.len()).unwrap();
            let digest = manifest.algorithm().digest(bytes);
            manifest.add_file(name, size, digest).unwrap();
        }
        let slot_txt = manifest.to_string();
        self.replace_file(&format!("{slot}/slot.txt"), slot_txt.as_bytes());
        let path = format!("{slot}/slot.sig");
        match resign {
            Resign::Keep => {}
            Resign::Remove => self.delete_file(&path),
            Resign::With(key) => {
                let key = zboot_tools::zbctl::key::read_private(key).unwrap();
                let text =
                    zboot_tools::zbctl::slot_sign::sign_text(slot_txt.as_bytes(), "product", &key)
                        .unwrap();
                self.replace_file(&path, text.as_bytes());
            }
            Resign::Bytes(bytes) => self.replace_file(&path, &bytes),
        }
    }

    /// The newest boot's reason in the history.
    fn last_reason(&self) -> String {
        let status = self.status();
        let history = status["history"].as_array().unwrap();
        history.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// What a RECOVERY entered because no slot was left prints, when no stick is in.
const WAITING: &str = "waiting for a (new) stick";

#[test]
fn verified_boot_boots_a_signed_slot_and_names_the_mode() {
    let (_, fingerprint) = test_key();
    let disk = signed_disk(1);
    let before = disk.snapshot();
    let run = disk.boot_provisioned();
    disk.assert_only_state_written(&before);
    assert_eq!(run.ending, Ending::GuestReset, "the test kernel resets");
    assert_eq!(booted(&run), ("A".into(), 1));
    assert!(run.console_has(&format!(
        "verified boot: slots boot only when signed by the built-in key {fingerprint} \
         (slot.sig), version {} or later",
        zboot_qemu_tests::PROVISIONED_MIN_VERSION
    )));
    assert!(run.console_has(&format!(
        "slot A: slot.sig: product version 1 signed by key {fingerprint} (built in): \
         signature OK"
    )));
    let status = disk.status();
    let slot_a = &status["slots"][0];
    assert_eq!(slot_a["signer"], fingerprint.as_str(), "{status}");

    // A loader without a key: integrity only, slot.sig never read.
    let run = disk.boot();
    assert!(run.console_has("integrity only: no key built in"));
    assert!(!run.console_has("slot.sig"), "{}", run.console);
    assert_eq!(booted(&run).0, "A");
}

#[test]
fn verified_boot_refuses_replaced_files_init_sh_and_another_key() {
    let disk = signed_disk(1);
    let kernel = LoaderImage::get(LoaderBuild::TestKernel).unwrap();
    let mut other_kernel = std::fs::read(&kernel.image).unwrap();
    other_kernel.extend_from_slice(&[0x5a; 4096]);
    // A: the classic, init=/bin/sh on a consistent slot.txt; the old slot.sig stays.
    disk.forge(
        "A",
        None,
        "console=ttyAMA0 zbtest=good init=/bin/sh\n",
        1,
        Resign::Keep,
    );
    // B: kernel and slot.txt replaced, hash-consistent, unsigned.
    disk.forge(
        "B",
        Some(&other_kernel),
        "console=ttyAMA0 zbtest=good\n",
        1,
        Resign::Remove,
    );
    let before = disk.snapshot();
    let run = disk.boot_provisioned();
    disk.assert_only_state_written(&before);
    assert!(run.console_has(
        "slot A: A/slot.sig: slot.sig: the signature does not match the slot's files, name or \
         version (changed after signing); falling back"
    ));
    assert!(run.console_has(
        "slot B: B/slot.sig: not signed (no slot.sig), and this zboot boots only slots signed \
         by its built-in key; falling back"
    ));
    assert_eq!(booted(&run).0, "SAFE", "the untouched, signed SAFE boots");
    assert!(
        !run.console_has("init=/bin/sh"),
        "the forged line never reached a kernel"
    );
    assert_eq!(disk.failed_boots("A"), 1, "counted like a hash mismatch");
    assert_eq!(disk.failed_boots("B"), 1);
    // The history names the first slot passed over (A; B's reason is in the log).
    assert!(
        disk.last_reason().starts_with(
            "slot A: not signed by the product key (now 1 failed boots); falling back to slot \
             SAFE"
        ),
        "{}",
        disk.last_reason()
    );

    // SAFE re-signed by another key as well: nothing is left, RECOVERY waits.
    let other = disk.dir.path().join("other");
    zbctl(&["key", "generate", "--output", other.to_str().unwrap()]);
    disk.forge(
        "SAFE",
        Some(&other_kernel),
        "console=ttyAMA0 zbtest=good\n",
        1,
        Resign::With(&other.with_extension("key")),
    );
    let run = disk.boot_build(LoaderBuild::QemuTestProvisioned, |qemu| {
        qemu.stop_at(WAITING)
    });
    assert_eq!(run.ending, Ending::StopText, "RECOVERY waits for a stick");
    assert!(run.console_has(
        "slot SAFE: SAFE/slot.sig: slot.sig: not signed by the key built into zboot (signed by \
         another key, or changed after signing)"
    ));
    assert!(!run.console_has("test-kernel:"), "no kernel ran");
    // SAFE's first boot above was never confirmed: this refusal is its second failure.
    assert!(
        disk.last_reason().starts_with("no bootable slot (A: ")
            && disk
                .last_reason()
                .contains("SAFE: not signed by the product key (now 2 failed boots)"),
        "{}",
        disk.last_reason()
    );
}

#[test]
fn verified_boot_refuses_bad_signature_files_with_their_reason() {
    let disk = signed_disk(1);
    let sig = String::from_utf8(disk.read_file("A/slot.sig")).unwrap();
    let cmdline = "console=ttyAMA0 zbtest=good\n";
    // Truncated in the middle of the signature line: its newline and 39 digits gone.
    let truncated = sig.as_bytes()[..sig.len() - 40].to_vec();
    let digits = 128 - 39;
    disk.forge("A", None, cmdline, 1, Resign::Bytes(truncated));
    // Another algorithm.
    let rsa = sig.replace("algorithm=ed25519", "algorithm=rsa2048");
    disk.forge("B", None, cmdline, 1, Resign::Bytes(rsa.into_bytes()));
    // Too long: padded with comment lines past the 1024 bytes read.
    let long = format!("{sig}{}", "# padding\n".repeat(120));
    let long_size = long.len();
    disk.forge("SAFE", None, cmdline, 1, Resign::Bytes(long.into_bytes()));
    let before = disk.snapshot();
    let run = disk.boot_build(LoaderBuild::QemuTestProvisioned, |qemu| {
        qemu.stop_at(WAITING)
    });
    disk.assert_only_state_written(&before);
    assert_eq!(run.ending, Ending::StopText);
    assert!(run.console_has(&format!(
        "slot A: A/slot.sig: slot.sig line 5: signature has {digits} characters, expected 128 \
         hex digits"
    )));
    assert!(run.console_has(
        "slot B: B/slot.sig: slot.sig line 2: algorithm is not ed25519, the only one zboot checks"
    ));
    assert!(run.console_has(&format!(
        "slot SAFE: SAFE/slot.sig: slot.sig: {long_size} bytes, more than the 1024 allowed"
    )));
    assert!(!run.console_has("test-kernel:"), "no kernel ran");
}

#[test]
fn verified_boot_refuses_a_downgraded_slot_once_the_minimum_moved() {
    let (key, _) = test_key();
    let disk = signed_disk(1);
    let cmdline = "console=ttyAMA0 zbtest=good\n";
    // Keep A's signed version 1 files, as an attacker would from an old release.
    let old: Vec<(String, Vec<u8>)> = ["slot.txt", "slot.sig"]
        .iter()
        .map(|name| ((*name).to_owned(), disk.read_file(&format!("A/{name}"))))
        .collect();
    // Version 2 everywhere (an update, which records the version in the state), then the
    // minimum moves to 2.
    for slot in ["A", "B", "SAFE"] {
        disk.forge(slot, None, cmdline, 2, Resign::With(&key));
    }
    for slot in ["B", "A"] {
        zbctl(&["set-active", slot, "--version", "2", "--image", disk.path()]);
    }
    let refused = zbctl_error(&["set-minimum", "3", "--image", disk.path()]);
    assert!(
        refused.contains("ACTIVE's slot.txt says version 2, below 3"),
        "{refused}"
    );
    zbctl(&["set-minimum", "2", "--image", disk.path()]);
    let lowered = zbctl_error(&["set-minimum", "1", "--image", disk.path()]);
    assert!(lowered.contains("only goes up: it is 2"), "{lowered}");
    assert_eq!(disk.status()["min_version"], 2);
    // The old, validly signed version 1 copied back into A.
    for (name, bytes) in &old {
        disk.replace_file(&format!("A/{name}"), bytes);
    }
    disk.forge("A", None, cmdline, 1, Resign::Keep);
    let before = disk.snapshot();
    let run = disk.boot_provisioned();
    disk.assert_only_state_written(&before);
    assert!(run.console_has("slot A: slot.sig: product version 1 signed by key"));
    assert!(run.console_has(
        "slot A: A/slot.txt: image version 1 is below the minimum accepted version 2; falling back"
    ));
    assert_eq!(booted(&run), ("B".into(), 1));
    assert_eq!(disk.failed_boots("A"), 0, "passed over, not counted");
    assert!(
        disk.last_reason()
            .starts_with("slot A: image version below the minimum; falling back to slot B"),
        "{}",
        disk.last_reason()
    );

    // The state is not signed: whoever lowers its minimum still meets the build's floor.
    let floor = zboot_qemu_tests::PROVISIONED_MIN_VERSION;
    let disk = signed_disk(floor);
    assert_eq!(disk.status()["min_version"], 0);
    disk.forge("A", None, cmdline, floor - 1, Resign::With(&key));
    let run = disk.boot_provisioned();
    assert!(run.console_has(&format!(
        "slot A: A/slot.txt: image version {} is below the minimum accepted version {floor}",
        floor - 1
    )));
    assert_eq!(booted(&run), ("B".into(), 1));
}

#[test]
fn verified_boot_an_install_carries_the_signature_and_b_boots() {
    let (key, fingerprint) = test_key();
    let disk = signed_disk(1);
    // The release: a disk of version 2 converted into a signed .zi.
    let release = signed_disk(2);
    let zi = disk.dir.path().join("release.zi");
    zbctl(&[
        "image",
        "convert",
        "--from-disk",
        release.path(),
        "-o",
        zi.to_str().unwrap(),
        "--name",
        "product",
        "--version",
        "2",
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    zbctl(&["install", "--image", disk.path(), zi.to_str().unwrap()]);
    assert_eq!(
        disk.read_file("B/slot.sig"),
        release.read_file("A/slot.sig")
    );
    let run = disk.boot_provisioned();
    assert!(run.console_has(&format!(
        "slot B: slot.sig: product version 2 signed by key {fingerprint} (built in): \
         signature OK"
    )));
    assert_eq!(booted(&run), ("B".into(), 1), "the trial boots");
}

#[test]
fn verified_boot_takes_the_guarded_settings_from_its_build_only() {
    let (key, _) = test_key();
    let dir = tempfile::tempdir().unwrap();
    // What someone with write access to the boot partition would put there: slot A's
    // signed kernel on B's root, no hang guard, recovery from another file. root_b names
    // the default, and max_boot_failure is not guarded.
    let manifest = dir.path().join("zbmanifest.txt");
    std::fs::write(
        &manifest,
        "root_a=/dev/mmcblk0p3\nroot_b=/dev/mmcblk0p3\nwatchdog_timeout=0\n\
         recovery_image=other.zi\nmax_boot_failure=4\n",
    )
    .unwrap();
    let disk = disk_with(
        &[
            SlotSetup::new("A", "good"),
            SlotSetup::new("B", "good"),
            SlotSetup::new("SAFE", "good"),
        ],
        &[
            "--manifest",
            manifest.to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    let before = disk.snapshot();
    let run = disk.boot_provisioned();
    disk.assert_only_state_written(&before);
    for key in ["root_a", "watchdog_timeout", "recovery_image"] {
        assert!(
            run.console_has(&format!(
                "zbmanifest.txt: {key}= ignored: with a built-in key, zboot takes {key} from \
                 its build only (ZBOOT_SETTINGS)"
            )),
            "{key}"
        );
    }
    assert!(
        !run.console_has("root_b= ignored"),
        "the default is no change"
    );
    assert!(
        run.console_has(&format!(
            "root=PARTUUID={DISK_ID}-02 zboot.slot=A zboot.attempt=1 panic=1"
        )),
        "A on its own root, panic reboots"
    );
    let timeout_ms = u64::from(zboot_qemu_tests::PROVISIONED_WATCHDOG_TIMEOUT) * 1000;
    assert!(run.console_has(&format!("hang guard: watchdog armed for {timeout_ms} ms")));
    let left = watchdog_left_ms(&run).expect("the kernel finds the watchdog armed");
    assert!(left <= timeout_ms, "{left} ms left");
    assert_eq!(disk.status()["max_boot_failure"], 4, "not guarded: taken");

    // The same disk on a loader without a key takes the file as it is.
    let run = disk.boot();
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-03 zboot.slot=A")));
    assert!(run.console_has("hang guard off (watchdog_timeout=0)"));
}

/// zbctl's error for `args` (which must fail).
fn zbctl_error(args: &[&str]) -> String {
    let cli = <zboot_tools::zbctl::Cli as clap::Parser>::try_parse_from(
        std::iter::once("zbctl").chain(args.iter().copied()),
    )
    .unwrap();
    let mut out = Vec::new();
    match zboot_tools::zbctl::run(&cli, &mut out) {
        Ok(()) => panic!("zbctl {args:?} succeeded"),
        Err(error) => format!("{error:#}"),
    }
}
