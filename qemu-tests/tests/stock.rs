//! Bring your own image, end to end on QEMU raspi4b (docs/bring-your-own-image.md): a
//! stock Raspberry Pi OS-style disk made with the standard tools (`sfdisk`, `mkfs.vfat`,
//! `mcopy`, `mke2fs`): a FAT boot partition with Debian's `raspi-firmware` files, Debian's
//! arm64 kernel as `kernel8.img`, the test initramfs as `initramfs8`, and the `config.txt`
//! and `cmdline.txt` Raspberry Pi OS writes (`console=serial0`, `root=PARTUUID=…-02`,
//! `[cm4] otg_mode=1`); and a real Debian root made by `debootstrap` (archived with GNU
//! tar as root). Scenarios:
//! - (a) the disk's dump converted by `zbctl image convert`, put on a stick by
//!   `zbctl usb create`; a blank unit recovers from it and boots Linux from A, then B,
//!   then SAFE;
//! - (b) the partitions' tarballs, converted by an ordinary user: every owner, mode,
//!   device node, link, capability and ACL reaches the eMMC;
//! - (c) `zbctl adopt` on the stock unit, then the reflash from the stick;
//! - (d) zboot on the stock disk boots the stock kernel, as the firmware would.
//!
//! Each asserts on the console and on the eMMC afterwards (partition table, firmware
//! files, `config.txt`, the roots' `/etc/fstab` and metadata, the state).

// Test helpers outside `#[test]` fns may unwrap too (clippy.toml covers only the fns).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../tools/tests/common/metadata.rs"]
mod metadata;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::zbctl;
use metadata::{as_root, run};
use serde_json::Value;
use zboot_qemu_tests::linux::{KERNEL_COMMAND_LINE, LinuxFiles, initramfs, require_programs};
use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run};

const DISK_ID: &str = "5a5a0009";
/// The stock root partition: Debian's slimmed minbase root takes about 150 MiB of it.
const ROOT_MIB: u64 = 256;

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The stock disk: boot (FAT32, 192 MiB at sector 8192) and an ext4 root ([`ROOT_MIB`]);
/// beside it, `boot.tar` and `root.tar` of the same partitions, made with GNU tar as root.
fn stock_disk(dir: &Path, files: &LinuxFiles, initramfs: &Path) -> PathBuf {
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("overlays")).unwrap();
    // Raspberry Pi OS bookworm's config.txt (arm64), as its image ships.
    std::fs::write(
        boot.join("config.txt"),
        "dtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\nauto_initramfs=1\n\
         dtoverlay=vc4-kms-v3d\nmax_framebuffers=2\ndisable_fw_kms_setup=1\narm_64bit=1\n\
         disable_overscan=1\narm_boost=1\n\n[cm4]\notg_mode=1\n\n[cm5]\n\
         dtoverlay=dwc2,dr_mode=host\n\n[all]\n",
    )
    .unwrap();
    // Its cmdline.txt, plus the words QEMU's raspi4b needs (linux::KERNEL_COMMAND_LINE
    // without its console, which stays the stock `serial0`). The serial console comes
    // last, so that /dev/console, where the test's /init writes, is the serial port.
    let qemu_words = KERNEL_COMMAND_LINE.trim_start_matches("console=ttyAMA0,115200 ");
    std::fs::write(
        boot.join("cmdline.txt"),
        format!(
            "console=tty1 console=serial0,115200 root=PARTUUID={DISK_ID}-02 rootfstype=ext4 \
             fsck.repair=yes rootwait {qemu_words}\n"
        ),
    )
    .unwrap();
    // A gzip-compressed Image, which the firmware and zboot both take as kernel8.img.
    let gzip = Command::new("gzip")
        .args(["-6", "-n", "-c", path(&files.kernel)])
        .output()
        .unwrap();
    assert!(gzip.status.success());
    std::fs::write(boot.join("kernel8.img"), gzip.stdout).unwrap();
    std::fs::copy(initramfs, boot.join("initramfs8")).unwrap();
    std::fs::copy(&files.dtb, boot.join("bcm2711-rpi-4-b.dtb")).unwrap();
    std::fs::write(boot.join("overlays/README"), "overlays\n").unwrap();
    for entry in std::fs::read_dir(&files.firmware).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), boot.join(entry.file_name())).unwrap();
    }
    let fat = dir.join("boot.fat");
    run(
        "mkfs.vfat",
        &["-C", "-F", "32", "-n", "bootfs", path(&fat), "196608"],
        None,
    );
    let entries: Vec<PathBuf> = std::fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut args = vec!["-s", "-i", path(&fat)];
    args.extend(entries.iter().map(|p| path(p)));
    args.push("::");
    run("mcopy", &args, None);

    // The root: Debian's, as debootstrap made it (scripts/fetch-debian-root), with what
    // Raspberry Pi OS adds that matters here: its fstab and hostname, a `pi` home,
    // iputils-ping's file capability (a stand-in binary, as setcap in its postinst) and
    // systemd-tmpfiles' ACLs on the journal directory. Extracted, edited and archived
    // again with GNU tar as root (`root.tar`, scenario (b)), and made into the dump's
    // ext4 by `mke2fs -d` from the tree.
    let fstab = format!(
        "proc            /proc           proc    defaults          0       0\n\
         PARTUUID={DISK_ID}-01  /boot/firmware  vfat    defaults          0       2\n\
         PARTUUID={DISK_ID}-02  /               ext4    defaults,noatime  0       1\n"
    );
    std::fs::write(dir.join("fstab"), fstab).unwrap();
    as_root(&format!(
        "cd {dir}
         mkdir root; cd root
         tar -xp --xattrs --xattrs-include='*' --acls --numeric-owner -f {debian}
         cp ../fstab etc/fstab
         echo raspberrypi > etc/hostname
         mkdir -p home/pi; chown 1000:1000 home/pi; chmod 750 home/pi
         cp usr/bin/true usr/bin/ping; setcap cap_net_raw+ep usr/bin/ping
         mkdir -p var/log/journal; setfacl -m g:adm:r-x -m d:g:adm:r-x var/log/journal
         cd ..
         tar --xattrs --xattrs-include='*' --acls --numeric-owner -cpf root.tar -C root .
         tar -cf boot.tar -C boot .
         mke2fs -q -F -t ext4 -L rootfs -d root root.ext4 {ROOT_MIB}M
         rm -rf root
         chmod 0644 root.tar boot.tar root.ext4",
        dir = path(dir),
        debian = path(&files.debian_root),
    ));
    let ext4 = dir.join("root.ext4");

    let disk = dir.join("stock.img");
    let root_sectors = ROOT_MIB << 11;
    std::fs::File::create(&disk)
        .unwrap()
        .set_len((8192 + 393_216 + root_sectors) * 512)
        .unwrap();
    run(
        "sfdisk",
        &["--quiet", path(&disk)],
        Some(&format!(
            "label: dos\nlabel-id: 0x{DISK_ID}\n8192,393216,c\n401408,{root_sectors},83\n"
        )),
    );
    let mut image = std::fs::read(&disk).unwrap();
    for (sector, part) in [(8192usize, &fat), (401_408, &ext4)] {
        let bytes = std::fs::read(part).unwrap();
        image[sector * 512..sector * 512 + bytes.len()].copy_from_slice(&bytes);
    }
    std::fs::write(&disk, image).unwrap();
    disk
}

/// A scenario's start: the Linux files (`None`: skipped, see [`LinuxFiles::or_skip`]), a
/// scratch directory and the stock disk in it.
fn stock_unit(test: &str) -> Option<(LinuxFiles, tempfile::TempDir, PathBuf)> {
    let files = LinuxFiles::or_skip(test)?;
    require_programs().unwrap();
    let initramfs = initramfs(&files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = stock_disk(dir.path(), &files, &initramfs);
    Some((files, dir, disk))
}

fn boot(emmc: &Path, stick: Option<&Path>, dtb: &Path) -> Run {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
    let mut qemu = Qemu::new(&loader.image)
        .dtb(dtb)
        .emmc(emmc)
        // Linux boots here too: the SD model, as tests/linux.rs explains.
        .sd_card()
        // A guard, not a measure: a reflash writes the Debian root three times through
        // PIO, about three minutes of emulation on a loaded two-core host.
        .timeout(Duration::from_mins(8));
    if let Some(stick) = stick {
        qemu = qemu.usb_stick(stick);
    }
    let run = qemu.run().unwrap();
    println!("{run}");
    run
}

/// A bricked unit (a blank 1 GiB eMMC in `dir`) recovers from `stick`: the reflash
/// completes and the board resets. Returns the eMMC image.
fn recover_blank_unit(dir: &Path, stick: &Path, files: &LinuxFiles) -> PathBuf {
    let emmc = dir.join("emmc.img");
    std::fs::File::create(&emmc)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let run = boot(&emmc, Some(stick), &files.dtb);
    assert!(
        run.console_has("recovery: image written"),
        "the reflash completes"
    );
    assert_eq!(run.ending, Ending::GuestReset);
    emmc
}

fn status(emmc: &Path) -> Value {
    serde_json::from_str(&zbctl(&["status", "--json", "--image", path(emmc)])).unwrap()
}

fn slot_field(status: &Value, slot: &str, field: &str) -> Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == slot)
        .unwrap()[field]
        .clone()
}

fn mtype_bytes(emmc: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("mtype")
        .args(["-i", &format!("{}@@1M", path(emmc)), &format!("::{file}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "mtype {file}");
    out.stdout
}

fn mtype(emmc: &Path, file: &str) -> String {
    String::from_utf8(mtype_bytes(emmc, file)).unwrap()
}

/// Partition `number` of `emmc`, copied out to a file of its own (removed by the caller).
fn partition_image(emmc: &Path, number: u64) -> PathBuf {
    let out = Command::new("sfdisk")
        .args(["--json", path(emmc)])
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let part = &table["partitiontable"]["partitions"][usize::try_from(number - 1).unwrap()];
    let (start, size) = (
        part["start"].as_u64().unwrap(),
        part["size"].as_u64().unwrap(),
    );
    // Only the partition's bytes are read, not the whole eMMC.
    let mut card = std::fs::File::open(emmc).unwrap();
    std::io::Seek::seek(&mut card, std::io::SeekFrom::Start(start * 512)).unwrap();
    let scratch = emmc.with_extension(format!("p{number}"));
    let mut out = std::fs::File::create(&scratch).unwrap();
    let copied = std::io::copy(&mut std::io::Read::take(card, size * 512), &mut out).unwrap();
    assert_eq!(
        copied,
        size * 512,
        "partition {number} lies within the image"
    );
    scratch
}

/// A file of the ext4 partition `number`, read with debugfs.
fn root_file(emmc: &Path, number: u64, file: &str) -> String {
    let scratch = partition_image(emmc, number);
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}"), path(&scratch)])
        .output()
        .unwrap();
    std::fs::remove_file(&scratch).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// `PRETTY_NAME` of the Debian root's os-release, as Linux's /init prints it from the
/// mounted slot root.
fn root_system(files: &LinuxFiles) -> String {
    let out = Command::new("tar")
        .args(["-xOf", path(&files.debian_root), "./usr/lib/os-release"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .unwrap();
    format!("zboot-linux: root system: {}", line.trim_matches('"'))
}

/// Replaces a slot's kernel with bytes whose hash no longer matches its slot.txt.
fn break_kernel(emmc: &Path, slot: &str, scratch: &Path) {
    let junk = scratch.join("junk.img");
    std::fs::write(&junk, b"not the kernel slot.txt names").unwrap();
    run(
        "mcopy",
        &[
            "-o",
            "-i",
            &format!("{}@@1M", path(emmc)),
            path(&junk),
            &format!("::{slot}/kernel.img"),
        ],
        None,
    );
}

fn linux_confirmed(run: &Run, slot: &str) {
    assert!(
        run.console_has("Booting Linux on physical CPU"),
        "the kernel started"
    );
    assert!(
        run.console_has(&format!(
            "zboot-linux: mark-good: slot {slot} confirmed good"
        )),
        "Linux in {slot} confirmed its boot"
    );
    assert_eq!(run.ending, Ending::GuestReset, "reboot -f resets the board");
}

/// `image convert` of the stock disk `dump` (with the product's `zbmanifest.txt`, also
/// returned) and `usb create` of a stick from it: (manifest, `.zi`, stick, convert's report).
///
/// The hang guard is off in the manifest: Debian's kernel under TCG on a busy two-core
/// host can take longer than the watchdog's 16 s to load bcm2835_wdt (the hang guard has
/// its own scenarios in slots.rs).
fn convert_to_stick(dir: &Path, dump: &Path) -> (PathBuf, PathBuf, PathBuf, String) {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
    let manifest = dir.join("zbmanifest.txt");
    std::fs::write(&manifest, "max_boot_failure=3\nwatchdog_timeout=0\n").unwrap();
    let zi = dir.join("raspios.zi");
    let report = zbctl(&[
        "image",
        "convert",
        "--manifest",
        path(&manifest),
        "--from-disk",
        path(dump),
        "-o",
        path(&zi),
        "--name",
        "raspios",
        "--version",
        "1",
        "--loader",
        path(&loader.image),
        "--data-size",
        "16M",
    ]);
    let stick = dir.join("stick.img");
    zbctl(&["usb", "create", "--zi", path(&zi), "-o", path(&stick)]);
    (manifest, zi, stick, report)
}

/// The disk signature in the MBR (bytes 440-443, little-endian), as PARTUUIDs spell it.
fn disk_id(emmc: &Path) -> String {
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(&mut std::fs::File::open(emmc).unwrap(), &mut mbr).unwrap();
    format!(
        "{:08x}",
        u32::from_le_bytes(mbr[440..444].try_into().unwrap())
    )
}

/// The eMMC after the reflash: zboot's layout around the stock system, whose disk
/// signature is `disk_id`.
fn assert_zboot_layout(emmc: &Path, manifest: &Path, files: &LinuxFiles, disk_id: &str) {
    let out = Command::new("sfdisk")
        .args(["--json", path(emmc)])
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let types: Vec<&str> = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["c", "83", "83", "f", "83", "83"]);
    assert_eq!(
        mtype(emmc, "zbmanifest.txt"),
        std::fs::read_to_string(manifest).unwrap(),
        "the shipped manifest"
    );
    for firmware in ["start4.elf", "fixup4.dat"] {
        assert!(
            mtype_bytes(emmc, firmware) == std::fs::read(files.firmware.join(firmware)).unwrap(),
            "{firmware} kept for the firmware"
        );
    }
    let config = mtype(emmc, "config.txt");
    assert!(config.contains("[cm4]\n# zboot: otg_mode=1\n"), "{config}");
    assert!(
        config.ends_with("kernel=zboot.img\narm_64bit=1\nenable_uart=1\n"),
        "{config}"
    );
    for number in [2, 3, 5] {
        let fstab = root_file(emmc, number, "/etc/fstab");
        assert!(
            fstab.contains("/dev/root  /               ext4"),
            "partition {number}: {fstab}"
        );
        assert!(
            fstab.contains(&format!("PARTUUID={disk_id}-01  /boot/firmware")),
            "{fstab}"
        );
    }
}

#[test]
fn a_stock_dump_converted_recovers_a_blank_unit_which_boots_linux_from_a_then_b_then_safe() {
    let Some((files, dir, dump)) = stock_unit(
        "a_stock_dump_converted_recovers_a_blank_unit_which_boots_linux_from_a_then_b_then_safe",
    ) else {
        return;
    };

    let (manifest, _, stick, report) = convert_to_stick(dir.path(), &dump);
    assert!(report.contains("`otg_mode=1` commented out"), "{report}");

    let emmc = recover_blank_unit(dir.path(), &stick, &files);

    assert_zboot_layout(&emmc, &manifest, &files, DISK_ID);

    // A boots the stock kernel and initramfs, with the stock command line: serial0 is
    // the PL011 on QEMU's tree, ttyAMA0.
    let run = boot(&emmc, None, &files.dtb);
    assert!(run.console_has("serial0 = ttyAMA0"), "the alias is read");
    assert!(
        run.console_has(
            "slot A: command line: console=tty1 console=ttyAMA0,115200 rootfstype=ext4 \
             fsck.repair=yes rootwait"
        ),
        "console=serial0 translated, root= replaced"
    );
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-02 zboot.slot=A")));
    assert!(
        run.console_has(&root_system(&files)),
        "the Debian root, mounted"
    );
    linux_confirmed(&run, "A");
    assert_eq!(slot_field(&status(&emmc), "A", "failed_boots"), 0);

    // A broken: B, a copy of the same system, boots in the same power-on.
    break_kernel(&emmc, "A", dir.path());
    let run = boot(&emmc, None, &files.dtb);
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-03 zboot.slot=B")));
    linux_confirmed(&run, "B");

    // B broken too: SAFE, the same system again, on partition 5.
    break_kernel(&emmc, "B", dir.path());
    let run = boot(&emmc, None, &files.dtb);
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-05 zboot.slot=SAFE")));
    assert!(
        run.console_has(&root_system(&files)),
        "SAFE's copy of the root"
    );
    linux_confirmed(&run, "SAFE");
    let status = status(&emmc);
    assert_eq!(slot_field(&status, "A", "failed_boots"), 2, "{status}");
    assert_eq!(slot_field(&status, "B", "failed_boots"), 1, "{status}");
    assert_eq!(slot_field(&status, "SAFE", "failed_boots"), 0, "{status}");
    let decisions: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["A", "B", "SAFE"], "{status}");
}

#[test]
fn zboot_on_a_stock_disk_boots_the_stock_kernel_as_the_firmware_would() {
    let Some((files, dir, disk)) =
        stock_unit("zboot_on_a_stock_disk_boots_the_stock_kernel_as_the_firmware_would")
    else {
        return;
    };
    let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
    // What a user does by hand: zboot.img copied in, config.txt pointed at it.
    let fat = format!("{}@@4M", path(&disk));
    let config = dir.path().join("config.txt");
    let out = Command::new("mtype")
        .args(["-i", &fat, "::config.txt"])
        .output()
        .unwrap();
    let mut text = String::from_utf8(out.stdout).unwrap();
    text.push_str("kernel=zboot.img\n");
    std::fs::write(&config, text).unwrap();
    run(
        "mcopy",
        &["-o", "-i", &fat, path(&config), "::config.txt"],
        None,
    );
    run(
        "mcopy",
        &["-i", &fat, path(&loader.image), "::zboot.img"],
        None,
    );
    // QEMU's SD card wants a power-of-two size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let before = std::fs::read(&disk).unwrap();

    let run = boot(&disk, None, &files.dtb);
    assert!(run.console_has("stock layout: no slot state and no slot directories"));
    assert!(run.console_has(
        "stock layout (config.txt): kernel kernel8.img, initramfs initramfs8, command line cmdline.txt"
    ));
    assert!(run.console_has("stock layout: kernel8.img: "), "loaded");
    assert!(run.console_has("not verified (no slot.txt)"));
    assert!(run.console_has(&format!(
        "stock layout: command line: console=tty1 console=ttyAMA0,115200 root=PARTUUID={DISK_ID}-02"
    )));
    assert!(
        !run.console_has("hang guard: watchdog armed"),
        "no boot counting"
    );
    // The stock kernel ran the stock initramfs with the stock command line: no zboot.slot.
    assert!(run.console_has(&format!(
        "zboot-linux: init started: kernel {}, slot=none attempt=none root=PARTUUID={DISK_ID}-02",
        files.release()
    )));
    assert!(
        run.console_has(&root_system(&files)),
        "the stock root, mounted"
    );
    assert!(!run.console_has("USB recovery"), "no recovery wait");
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "zboot wrote nothing to a stock disk"
    );

    // A loader with a key built in boots nothing unsigned: it waits for a stick instead.
    let provisioned = LoaderImage::get(LoaderBuild::QemuTestProvisioned).unwrap();
    let run = Qemu::new(&provisioned.image)
        .dtb(&files.dtb)
        .emmc(&disk)
        .sd_card()
        .stop_at("waiting for a (new) stick")
        .run()
        .unwrap();
    println!("{run}");
    assert_eq!(run.ending, Ending::StopText);
    assert!(run.console_has(
        "stock layout: not booted, since this zboot boots only slots signed by its built-in key"
    ));
    assert!(
        !run.console_has("kernel8.img: "),
        "the stock kernel is not even read"
    );
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "nothing written to the stock disk"
    );
}

#[test]
fn an_adopted_stock_unit_boots_its_system_until_the_stick_comes_then_is_reflashed() {
    let Some((files, dir, unit)) = stock_unit(
        "an_adopted_stock_unit_boots_its_system_until_the_stick_comes_then_is_reflashed",
    ) else {
        return;
    };
    let (manifest, zi, stick, _) = convert_to_stick(dir.path(), &unit);
    // The unit's eMMC is larger than its stock partitions (QEMU wants a power of two).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&unit)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();

    // On the running unit: zbctl adopt (here on its disk image).
    let report = zbctl(&[
        "--image",
        path(&unit),
        "adopt",
        "--zi",
        path(&zi),
        "--wait",
        "3",
    ]);
    assert!(report.contains("adopt_wait=3"), "{report}");
    let adopted = std::fs::read(&unit).unwrap();

    // No stick: zboot waits 3 s, then boots the stock system as the firmware would.
    let run = boot(&unit, None, &files.dtb);
    assert!(run.console_has("stock layout: adoption requested (zbmanifest.txt adopt=yes)"));
    assert!(run.console_has("recovery: no stick with a good image in time; nothing written"));
    assert!(run.console_has("stock layout (config.stock.txt): kernel kernel8.img"));
    assert!(run.console_has("zboot-linux: init started: kernel"));
    assert!(
        run.console_has("slot=none attempt=none"),
        "the stock command line"
    );
    assert!(
        std::fs::read(&unit).unwrap() == adopted,
        "nothing written without a stick"
    );

    // With the stick: the reflash into the zboot layout, then Linux from A.
    let run = boot(&unit, Some(&stick), &files.dtb);
    assert!(run.console_has("stock layout: adoption requested"));
    assert!(
        run.console_has("recovery: image written"),
        "the reflash completes"
    );
    assert_eq!(run.ending, Ending::GuestReset);
    assert_zboot_layout(&unit, &manifest, &files, DISK_ID);
    let run = boot(&unit, None, &files.dtb);
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-02 zboot.slot=A")));
    linux_confirmed(&run, "A");
}

/// The host `zbctl` binary, built beside this test by `cargo test` (the workspace's
/// default members include zboot-tools): scenario (b) runs it as another user.
fn zbctl_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("zbctl");
    assert!(
        binary.is_file(),
        "{} is missing: run the suite with `cargo xtask test` (or `cargo build -p zboot-tools`)",
        binary.display()
    );
    binary
}

/// `tar -tv` of `tar`'s `member`: "<type> <permission bits, octal> <uid>:<gid>", as the
/// test's /init prints it with `stat -c '%F %a %u:%g'`.
fn listed(tar: &Path, member: &str) -> String {
    let (kind, bits, owner, ..) = metadata::tar_listing(tar)
        .into_iter()
        .find(|entry| entry.4 == member)
        .unwrap_or_else(|| panic!("{member} is not in {}", tar.display()));
    let kind = match kind {
        '-' => "regular file",
        'c' => "character special file",
        other => panic!("{member}: tar type {other}"),
    };
    format!("{kind} {bits:o} {}", owner.replace('/', ":"))
}

#[test]
fn stock_tarballs_made_as_root_and_converted_by_a_user_keep_every_owner_mode_and_node() {
    // The stock disk's partitions as tarballs, made with GNU tar as root, beside it.
    let Some((files, dir, _)) = stock_unit(
        "stock_tarballs_made_as_root_and_converted_by_a_user_keep_every_owner_mode_and_node",
    ) else {
        return;
    };
    let loader = LoaderImage::get(LoaderBuild::QemuTest).unwrap();
    let (boot_tar, root_tar) = (dir.path().join("boot.tar"), dir.path().join("root.tar"));

    // An ordinary user converts them: nobody, when the test runs as root.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for (folder, mode) in [(dir.path(), 0o755), (out_dir.as_path(), 0o777)] {
        std::fs::set_permissions(folder, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
    }
    let manifest = dir.path().join("zbmanifest.txt");
    std::fs::write(&manifest, "max_boot_failure=3\nwatchdog_timeout=0\n").unwrap();
    let zi = out_dir.join("raspios.zi");
    let mut command = if metadata::euid() == "0" {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(zbctl_binary());
        command
    } else {
        Command::new(zbctl_binary())
    };
    let out = command
        .args([
            "image",
            "convert",
            "-b",
            path(&boot_tar),
            "-r",
            path(&root_tar),
        ])
        .args(["--root-mib", &ROOT_MIB.to_string(), "--boot-mib", "192"])
        .args([
            "--manifest",
            path(&manifest),
            "--loader",
            path(&loader.image),
        ])
        .args(["--name", "raspios", "--version", "1", "--data-size", "16M"])
        .args(["-o", path(&zi)])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("`otg_mode=1` commented out"), "{report}");
    let stick = dir.path().join("stick.img");
    zbctl(&["usb", "create", "--zi", path(&zi), "-o", path(&stick)]);

    // A blank unit recovers from the stick, then boots A.
    let emmc = recover_blank_unit(dir.path(), &stick, &files);
    // Tarballs carry no disk signature: the converter made one.
    let disk_id = disk_id(&emmc);
    assert_ne!(disk_id, DISK_ID);
    assert_zboot_layout(&emmc, &manifest, &files, &disk_id);
    let run = boot(&emmc, None, &files.dtb);
    assert!(run.console_has(&format!("root=PARTUUID={disk_id}-02 zboot.slot=A")));
    assert!(run.console_has(&root_system(&files)));
    // Linux reads the tarball's owner and mode of a setgid file and a device node.
    for member in ["/usr/sbin/unix_chkpwd", "/dev/console"] {
        let line = format!("zboot-linux: root: {member} {}", listed(&root_tar, member));
        assert!(run.console_has(&line), "{line}");
    }
    linux_confirmed(&run, "A");

    // On the eMMC, A and B hold every member with the tarball's type, mode, owner,
    // device numbers and links; the capability and the ACLs are there too.
    for number in [2, 3] {
        let image = partition_image(&emmc, number);
        metadata::assert_listing_matches(&root_tar, &image);
        let answers = metadata::debugfs_batch(
            &image,
            &[
                "ea_list /usr/bin/ping".into(),
                "ea_list /var/log/journal".into(),
            ],
        );
        assert!(
            answers[0].contains("security.capability (20)"),
            "{}",
            answers[0]
        );
        for acl in ["system.posix_acl_access", "system.posix_acl_default"] {
            assert!(answers[1].contains(acl), "{}", answers[1]);
        }
        std::fs::remove_file(&image).unwrap();
    }
}
