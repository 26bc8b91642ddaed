//! A real Linux booted by zboot on QEMU raspi4b: Debian's arm64 kernel with
//! an initramfs that reads `zboot.slot` and confirms the boot with the
//! device's `zbctl mark-good` (docs/linux.md). Skipped, with the reason
//! printed, only when Debian's packages cannot be fetched; CI sets
//! `ZBOOT_REQUIRE_LINUX=1` so that they cannot be skipped there.

// Test helpers outside `#[test]` fns may unwrap too (clippy.toml covers only the fns).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/https.rs"]
mod https;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::zbctl;
use serde_json::Value;
use zboot_qemu_tests::linux::{LinuxFiles, disk_create_arguments, initramfs, require_programs};
use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run};

/// The card's disk id: slot A's root is `PARTUUID=2b0071e5-02`.
const DISK_ID: &str = "2b0071e5";

struct Card {
    dir: tempfile::TempDir,
    image: PathBuf,
    dtb: PathBuf,
}

impl Card {
    /// A card with Debian's kernel and the initramfs in A, B and SAFE;
    /// `extra` adds words to a slot's command line.
    fn new(files: &LinuxFiles, extra: &[(&str, &str)]) -> Self {
        Self::build(files, extra, (None, None), &["A", "B", "SAFE"])
    }

    /// [`Card::new`], and slot A carries `dtb` as its own `dtb.dtb`.
    fn with_slot_a_dtb(files: &LinuxFiles, extra: &[(&str, &str)], dtb: &Path) -> Self {
        Self::build(files, extra, (None, Some(dtb)), &["A", "B", "SAFE"])
    }

    /// A card whose `slots` are filled, the others left empty; slot A's kernel and DTB
    /// can be replaced (`slot_a`).
    fn build(
        files: &LinuxFiles,
        extra: &[(&str, &str)],
        slot_a: (Option<&Path>, Option<&Path>),
        slots: &[&str],
    ) -> Self {
        require_programs().unwrap();
        let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
        let initramfs = initramfs(files).expect("building the initramfs");
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("emmc.img");
        let mut args =
            disk_create_arguments(files, &initramfs, &loader.image, &image, DISK_ID, extra);
        // Each slot is a `--slot S:…` and a `--cmdline S=…` pair.
        let mut index = 0;
        while index + 1 < args.len() {
            let value = &args[index + 1];
            let slot = value.split([':', '=']).next().unwrap_or_default();
            if matches!(args[index].as_str(), "--slot" | "--cmdline") && !slots.contains(&slot) {
                args.drain(index..index + 2);
            } else {
                index += 1;
            }
        }
        let spec = args
            .iter_mut()
            .find(|arg| arg.starts_with("A:kernel="))
            .unwrap();
        if let Some(kernel) = slot_a.0 {
            *spec = spec.replacen(
                &files.kernel.display().to_string(),
                &kernel.display().to_string(),
                1,
            );
        }
        if let Some(dtb) = slot_a.1 {
            *spec = format!("{spec},dtb={}", dtb.display());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        zbctl(&args);
        Self {
            dir,
            image,
            dtb: files.dtb.clone(),
        }
    }

    fn path(&self) -> &str {
        self.image.to_str().unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&zbctl(&["status", "--json", "--image", self.path()])).unwrap()
    }

    /// A release of this card's system, version 2: a card like [`Card::new`]'s whose A has
    /// `extra` on its command line, converted by `zbctl image convert` into a `.zi`. Its A
    /// only, with the kernel gzipped (as `vmlinuz` often is; zboot inflates it): every byte
    /// of the image is read, hashed and written inside the emulated Linux.
    fn release(&self, files: &LinuxFiles, extra: &str) -> PathBuf {
        let kernel = self.dir.path().join("vmlinuz.gz");
        let gzip = std::process::Command::new("gzip")
            .args(["-6", "-n", "-c"])
            .arg(&files.kernel)
            .output()
            .unwrap();
        assert!(gzip.status.success(), "gzip: {gzip:?}");
        std::fs::write(&kernel, gzip.stdout).unwrap();
        let release = Card::build(files, &[("A", extra)], (Some(&kernel), None), &["A"]);
        let zi = self.dir.path().join("release.zi");
        zbctl(&[
            "image",
            "convert",
            "--from-disk",
            release.path(),
            "-o",
            zi.to_str().unwrap(),
            "--name",
            "device-test",
            "--version",
            "2",
        ]);
        zi
    }

    /// [`Card::release`] on a stick made by `zbctl usb create`, as a user would carry it
    /// to a unit.
    fn release_stick(&self, files: &LinuxFiles, extra: &str) -> PathBuf {
        let zi = self.release(files, extra);
        let stick = self.dir.path().join("stick.img");
        zbctl(&[
            "usb",
            "create",
            "--zi",
            zi.to_str().unwrap(),
            "-o",
            stick.to_str().unwrap(),
        ]);
        stick
    }

    /// `image@@offset` of the boot partition (MBR entry 1), for mtools.
    fn mtools_image(&self) -> String {
        let mbr = std::fs::read(&self.image).unwrap();
        let start = u32::from_le_bytes(mbr[454..458].try_into().unwrap());
        format!("{}@@{}", self.path(), u64::from(start) * 512)
    }

    /// Writes `name` into the root of the card's boot partition (mtools).
    fn put_boot_file(&self, name: &str, bytes: &[u8]) {
        let local = self.dir.path().join(name);
        std::fs::write(&local, bytes).unwrap();
        let status = std::process::Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(self.mtools_image())
            .arg(&local)
            .arg(format!("::{name}"))
            .status()
            .expect("running mcopy (mtools)");
        assert!(status.success(), "mcopy {name}");
    }

    fn read_boot_file(&self, name: &str) -> String {
        let output = std::process::Command::new("mtype")
            .arg("-i")
            .arg(self.mtools_image())
            .arg(format!("::{name}"))
            .output()
            .expect("running mtype (mtools)");
        assert!(output.status.success(), "mtype {name}");
        String::from_utf8(output.stdout).unwrap()
    }

    fn failed_boots(&self, name: &str) -> u64 {
        self.status()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|slot| slot["name"] == name)
            .unwrap()["failed_boots"]
            .as_u64()
            .unwrap()
    }

    fn boot(&self) -> Run {
        self.boot_with(&Attached::Nothing)
    }

    /// [`Card::boot`] with a USB device on the DWC2 port.
    fn boot_with(&self, attached: &Attached) -> Run {
        let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
        let mut qemu = Qemu::new(&loader.image);
        if let Attached::Network = attached {
            // QEMU's usb-net (Linux: cdc_ether) on its user-mode network: the guest is
            // 10.0.2.15, the host's loopback is 10.0.2.2. On the root port, no hub between.
            qemu = qemu.extra_args(&[
                "-netdev",
                "user,id=net",
                "-device",
                "usb-net,netdev=net,port=1",
            ]);
        }
        if let Attached::Stick(_) = attached {
            // See `install_from_the_stick`: a kernel oops there hangs `reboot -f`.
            qemu = qemu.stop_at(SD_PROBE_OOPS);
        }
        if let Attached::Stick(stick) = attached {
            // Behind the full-speed hub QEMU chains onto the DWC2's only port (hw/usb/bus.c),
            // as zboot's own USB tests have it: Linux reads it at about 1 MB/s. On the root
            // port at high speed, Linux 6.1's usb-storage oopsed in two of eight boots.
            qemu = qemu.usb_stick(stick);
        }
        let run = qemu
            .dtb(&self.dtb)
            .emmc(&self.image)
            // Linux's sdhci-iproc on QEMU's eMMC model logs "Got data interrupt 0x00000022
            // even though no data operation was in progress" and reads bad data (seen:
            // /init killed by SIGSEGV), a QEMU model problem. Linux runs on the SD model,
            // as on a CM4 Lite; zboot's eMMC path is what the bare-metal scenarios cover.
            .sd_card()
            // Linux under TCG: 10-40 s, and 3-6 min with an install from a stick or the
            // network (Linux moves about 1.4 MB/s to QEMU's SD card); the deadline only
            // catches hangs.
            .timeout(Duration::from_mins(15))
            .run()
            .expect("running QEMU");
        println!("{run}");
        run
    }
}

/// A kernel oops in the stick's own driver, on the SCSI completion path of usb-storage's
/// thread (see `install_from_the_stick`).
const SD_PROBE_OOPS: &str = "usb_stor_control_thread+";

/// What is on the DWC2 port during a boot.
enum Attached<'a> {
    Nothing,
    /// A USB stick holding this image, where Linux's dwc2 and usb-storage find it as
    /// `/dev/sda`.
    Stick(&'a Path),
    /// A USB network adapter.
    Network,
}

/// The `zboot-linux: slot=…` line of `/init`.
fn linux_slot_line(run: &Run) -> &str {
    run.console
        .lines()
        .find(|line| line.starts_with("zboot-linux: slot="))
        .unwrap_or_else(|| panic!("Linux did not report its slot:\n{}", run.console))
}

#[test]
fn debian_linux_boots_from_slot_a_and_marks_it_good() {
    let Some(files) = LinuxFiles::or_skip("debian_linux_boots_from_slot_a_and_marks_it_good")
    else {
        return;
    };
    let card = Card::new(&files, &[]);
    let run = card.boot();
    assert!(run.console_has("decision: "), "zboot's decision is logged");
    assert!(run.console_has("handing off: kernel at 0x1000000"));
    assert!(
        run.console_has("Booting Linux on physical CPU"),
        "the kernel started"
    );
    let line = linux_slot_line(&run);
    assert!(
        line.starts_with("zboot-linux: slot=A attempt=1 root=/dev/mmcblk"),
        "{line}"
    );
    assert!(
        line.contains("p2 boot=/dev/mmcblk"),
        "A's root is partition 2: {line}"
    );
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-02")));
    assert!(run.console_has("zboot-linux: root file system mounted"));
    assert!(
        run.console_has("zboot-linux: mark-good: slot A confirmed good"),
        "zbctl on the device cleared the counter"
    );
    assert!(run.console_has("zboot-linux: mark-good OK"));
    assert_eq!(run.ending, Ending::GuestReset, "reboot -f resets the board");
    assert_eq!(card.failed_boots("A"), 0, "cleared by Linux user space");
}

/// Slot A ships Debian's own BCM2711 DTB, as a distribution kernel package installs it:
/// `memory@0 { reg = <0 0 0>; }`, no serial, no `/chosen/bootloader`. zboot carries the
/// firmware's fill-ins (QEMU's RAM, the stand-ins of the firmware tree) into it, and
/// the real kernel boots on it and confirms the slot.
#[test]
fn debian_linux_boots_on_the_stock_dtb_shipped_in_the_slot() {
    let Some(files) =
        LinuxFiles::or_skip("debian_linux_boots_on_the_stock_dtb_shipped_in_the_slot")
    else {
        return;
    };
    // The DTB as shipped, minus the emmc2 regulator supplies QEMU cannot model
    // (fetch-linux); its /memory is still the placeholder.
    let memory = std::process::Command::new("fdtget")
        .args(["-t", "x"])
        .arg(&files.dtb)
        .args(["/memory@0", "reg"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&memory.stdout).trim(),
        "0 0 0",
        "the shipped DTB has no RAM of its own"
    );
    // QEMU disables the nodes of its tree that raspi4b does not model (hw/arm/raspi4b.c
    // warns "bcm2711 dtc: … has been disabled"); the slot's copy gets the same, else
    // Linux waits on hardware that is not there. fdtput fails on a missing path.
    let dir = tempfile::tempdir().unwrap();
    let slot_dtb = dir.path().join("dtb.dtb");
    std::fs::copy(&files.dtb, &slot_dtb).unwrap();
    for node in [
        "/scb/pcie@7d500000",
        "/scb/ethernet@7d580000",
        "/soc/rng@7e104000",
        "/soc/avs-monitor@7d5d2000/thermal",
    ] {
        let status = std::process::Command::new("fdtput")
            .args(["-t", "s"])
            .arg(&slot_dtb)
            .args([node, "status", "disabled"])
            .status()
            .unwrap();
        assert!(status.success(), "{node} in the shipped DTB");
    }
    let card = Card::with_slot_a_dtb(&files, &[], &slot_dtb);
    let run = card.boot();
    assert!(
        run.console_has("slot device tree: from the firmware's tree: "),
        "zboot carried the fill-ins"
    );
    assert!(run.console_has("Booting Linux on physical CPU"));
    assert!(
        run.console_has("Machine model: Raspberry Pi 4 Model B"),
        "Linux runs on the slot's tree"
    );
    // QEMU's firmware tree describes 960 MiB at 0 (0x3c000000): the placeholder's RAM is
    // none, so this figure came from the carry.
    assert!(
        run.console_has("K/983040K available"),
        "Linux sees the firmware's RAM"
    );
    let line = linux_slot_line(&run);
    assert!(line.starts_with("zboot-linux: slot=A attempt=1 "), "{line}");
    assert!(run.console_has("zboot-linux: mark-good: slot A confirmed good"));
    assert_eq!(card.failed_boots("A"), 0, "cleared by Linux user space");
}

#[test]
fn a_panicking_linux_in_a_is_tried_three_times_then_b_boots_and_marks_good() {
    let Some(files) = LinuxFiles::or_skip(
        "a_panicking_linux_in_a_is_tried_three_times_then_b_boots_and_marks_good",
    ) else {
        return;
    };
    // zbtest=panic: A's /init crashes the kernel (sysrq c) once its modules
    // are in; with panic=-1 the kernel resets at once through bcm2835_wdt.
    let card = Card::new(&files, &[("A", "zbtest=panic")]);
    for attempt in 1..=3_u32 {
        let run = card.boot();
        let line = linux_slot_line(&run);
        assert!(
            line.starts_with(&format!("zboot-linux: slot=A attempt={attempt} ")),
            "{line}"
        );
        assert!(
            run.console_has("Kernel panic - not syncing"),
            "A's kernel panics"
        );
        assert!(!run.console_has("zboot-linux: mark-good"));
        // A panic with panic=-1 resets the board: QEMU reports a guest reset.
        assert_eq!(run.ending, Ending::GuestReset);
        assert_eq!(card.failed_boots("A"), u64::from(attempt));
    }
    let run = card.boot();
    assert!(run.console_has("decision: "), "zboot logs why it left A");
    let line = linux_slot_line(&run);
    assert!(
        line.starts_with("zboot-linux: slot=B attempt=1 root=/dev/mmcblk"),
        "A used its 3 attempts: {line}"
    );
    assert!(line.contains("p3 boot="), "B's root is partition 3: {line}");
    assert!(run.console_has(&format!("root=PARTUUID={DISK_ID}-03")));
    assert!(run.console_has("zboot-linux: mark-good: slot B confirmed good"));
    assert_eq!(card.failed_boots("B"), 0, "B confirmed by Linux user space");
    assert_eq!(card.failed_boots("A"), 3, "A stays abandoned");
}

/// The `zboot-linux: <prefix>: ` lines of `/init`, without the prefix.
fn guest_lines<'a>(run: &'a Run, prefix: &str) -> Vec<&'a str> {
    let prefix = format!("zboot-linux: {prefix}: ");
    run.console
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

/// Boots `card` with `stick` once: Linux in A installs the stick's release into B (from
/// `zbtest=install` on A's command line) with the packaged `zbctl`, which finds the disk by
/// itself. Returns the run after checking the console and that B is now the trial.
fn install_from_the_stick(card: &Card, stick: &Path) -> Run {
    // Debian's 6.1 kernel can oops while usb-storage completes a command of the SCSI scan
    // of QEMU's stick (seen in sd_done and in scsi_complete, with the stick on the root
    // port). Nothing of zboot's is involved and the stick never appears, so that boot is
    // repeated on the card as it was before it, at most twice.
    let before = card.dir.path().join("before-install.img");
    std::fs::copy(&card.image, &before).unwrap();
    let mut run = card.boot_with(&Attached::Stick(stick));
    for _ in 0..2 {
        if !run.console_has(SD_PROBE_OOPS) {
            break;
        }
        println!("Linux oopsed in usb-storage binding the stick: repeating the boot");
        std::fs::copy(&before, &card.image).unwrap();
        run = card.boot_with(&Attached::Stick(stick));
    }
    assert!(
        !run.console_has(SD_PROBE_OOPS),
        "three kernel oopses in a row"
    );
    let line = linux_slot_line(&run);
    assert!(line.starts_with("zboot-linux: slot=A attempt=1 "), "{line}");
    assert!(run.console_has("zboot-linux: mark-good OK"));
    let install = guest_lines(&run, "install");
    let expected = [
        "/boot/firmware remounted read-only until the reboot",
        "installed device-test version 2 from /dev/sda:ZBOOT.ZI into slot B: root partition 3 \
         (PARTUUID 2b0071e5-03), files in /B/ (kernel.img, initrd.img, cmdline.txt, slot.txt)",
        "slot B is trial: ACTIVE from the next boot; unconfirmed after 3 boots it rolls back to A",
        "exit 0",
    ];
    for needle in expected {
        assert!(
            install.iter().any(|line| line.starts_with(needle)),
            "{needle:?} in {install:#?}"
        );
    }
    assert_eq!(run.ending, Ending::GuestReset, "/init rebooted");
    let status = card.status();
    assert_eq!(status["active"], "B", "{status:#}");
    assert_eq!(status["backup"], "A");
    let b = slot_status(&status, "B");
    assert_eq!(b["state"], "trial", "{b:#}");
    assert_eq!(b["image_version"], 2);
    assert_eq!(b["files_version"], 2);
    run
}

fn slot_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|slot| slot["name"] == name)
        .unwrap()
}

/// Scenario 3a of the device side (docs/linux.md): inside the Linux zboot booted from A,
/// the packaged `zbctl` installs a release from a USB stick into B; zboot boots B as the
/// trial, Linux confirms it, and A is kept as BACKUP.
#[test]
fn inside_linux_an_install_from_a_stick_boots_as_a_trial_and_is_confirmed() {
    let Some(files) = LinuxFiles::or_skip(
        "inside_linux_an_install_from_a_stick_boots_as_a_trial_and_is_confirmed",
    ) else {
        return;
    };
    let card = Card::new(&files, &[("A", "zbtest=install")]);
    let stick = card.release_stick(&files, "");
    install_from_the_stick(&card, &stick);

    // The stick is gone; zboot starts the trial and Linux confirms it.
    let run = card.boot();
    assert!(run.console_has("decision: slot B: 0 failed boots of 3, booting B"));
    let line = linux_slot_line(&run);
    assert!(line.starts_with("zboot-linux: slot=B attempt=1 "), "{line}");
    assert!(line.contains("p3 boot="), "B's root is partition 3: {line}");
    assert!(run.console_has("zboot-linux: mark-good: slot B confirmed good"));
    // What the user sees on the unit: B confirmed and ACTIVE, A its BACKUP, the history.
    let status = guest_lines(&run, "status");
    for needle in [
        "active:    B   backup: A",
        "B     good    0/3    2        2          #2",
        "A     good    0/3    1        1          #1",
        "B     files: slot.txt version 2, unsigned",
        "  #1     A        reset power-on outcome good     slot A: 0 failed boots of 3",
        "  #2     B        reset power-on outcome good     slot B: 0 failed boots of 3",
    ] {
        assert!(
            status.iter().any(|line| line.starts_with(needle)),
            "{needle:?} in {status:#?}"
        );
    }
    // And on the card afterwards.
    let status = card.status();
    assert_eq!(status["active"], "B");
    assert_eq!(status["backup"], "A");
    let b = slot_status(&status, "B");
    assert_eq!(
        (&b["state"], &b["confirmed_version"], &b["failed_boots"]),
        (&Value::from("good"), &Value::from(2), &Value::from(0)),
        "{b:#}"
    );
    assert_eq!(slot_status(&status, "A")["state"], "good");
    let decisions: Vec<&Value> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["decision"])
        .collect();
    assert_eq!(decisions, ["A", "B"]);
}

/// Scenario 3b: the same install, of a release whose kernel panics. zboot tries B up to
/// `max_boot_failure` times, then rolls back to A, and the status and history say why.
#[test]
fn inside_linux_an_install_whose_kernel_panics_is_tried_three_times_then_a_is_back() {
    let Some(files) = LinuxFiles::or_skip(
        "inside_linux_an_install_whose_kernel_panics_is_tried_three_times_then_a_is_back",
    ) else {
        return;
    };
    let card = Card::new(&files, &[("A", "zbtest=install")]);
    let stick = card.release_stick(&files, "zbtest=panic");
    install_from_the_stick(&card, &stick);
    for attempt in 1..=3_u32 {
        let run = card.boot();
        let line = linux_slot_line(&run);
        assert!(
            line.starts_with(&format!("zboot-linux: slot=B attempt={attempt} ")),
            "{line}"
        );
        assert!(run.console_has("Kernel panic - not syncing"));
        assert!(!run.console_has("zboot-linux: mark-good"));
        assert_eq!(run.ending, Ending::GuestReset);
        assert_eq!(card.failed_boots("B"), u64::from(attempt));
    }
    // The fifth boot: B used its attempts, zboot rolls back to A and says why.
    let run = card.boot();
    assert!(run.console_has(
        "decision: slot B: 3 failed boots, marked bad; falling back to slot A: 0 failed boots \
         of 3, booting A"
    ));
    let line = linux_slot_line(&run);
    assert!(
        line.starts_with("zboot-linux: slot=A attempt=1 "),
        "rolled back: {line}"
    );
    assert!(run.console_has("zboot-linux: mark-good: slot A confirmed good"));
    assert!(run.console_has("zboot-linux: no USB stick: nothing to install"));
    let status = guest_lines(&run, "status");
    for needle in [
        "active:    A   backup: SAFE",
        "A     good    0/3    1        1          #5",
        "B     bad     3/3    2        0          never",
        "  #2     B        reset power-on outcome failed   slot B: 0 failed boots of 3",
        "  #4     B        reset power-on outcome failed   slot B: 2 failed boots of 3",
        "  #5     A        reset power-on outcome good     slot B: 3 failed boots, marked bad; \
         falling back to slot A",
    ] {
        assert!(
            status.iter().any(|line| line.starts_with(needle)),
            "{needle:?} in {status:#?}"
        );
    }
    let status = card.status();
    assert_eq!(status["active"], "A", "{status:#}");
    let b = slot_status(&status, "B");
    assert_eq!(
        (&b["state"], &b["failed_boots"], &b["confirmed_version"]),
        (&Value::from("bad"), &Value::from(3), &Value::from(0)),
        "{b:#}"
    );
    let history: Vec<(String, String)> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["decision"].as_str().unwrap().to_owned(),
                entry["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("A", "good"),
        ("B", "failed"),
        ("B", "failed"),
        ("B", "failed"),
        ("A", "good"),
    ]
    .map(|(slot, outcome)| (slot.to_owned(), outcome.to_owned()));
    assert_eq!(history, expected);
}

/// Scenario 3c: an update over the network. QEMU's raspi4b has no Ethernet, but its DWC2
/// port takes QEMU's usb-net, which Linux drives with cdc_ether; QEMU's user-mode network
/// carries the guest's TCP to an HTTPS server on the host. Inside Linux booted from A, a
/// bare `zbctl update apply` follows the `latest` pointer of `zbmanifest.txt`'s endpoint,
/// checks the server against `ca_cert=`, installs the release into B as a trial and posts
/// its update reports; zboot then boots B and Linux confirms it.
#[test]
fn inside_linux_an_update_over_the_network_boots_as_a_trial_and_is_confirmed() {
    let Some(files) = LinuxFiles::or_skip(
        "inside_linux_an_update_over_the_network_boots_as_a_trial_and_is_confirmed",
    ) else {
        return;
    };
    // The board has no clock; the certificate check needs today's date.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let card = Card::new(
        &files,
        &[("A", &format!("zbtest=update zbtest.time={now}"))],
    );
    let zi = card.release(&files, "");
    let server = https::FileServer::start(
        [
            ("/latest".to_owned(), b"image=release.zi\n".to_vec()),
            ("/release.zi".to_owned(), std::fs::read(&zi).unwrap()),
        ]
        .into(),
    );
    let manifest = format!(
        "{}\nupdate_endpoint={}\nca_cert=/boot/firmware/ca.pem\nreport_url={}\n",
        card.read_boot_file("zbmanifest.txt").trim_end(),
        server.guest_url("/latest"),
        server.guest_url("/report"),
    );
    card.put_boot_file("zbmanifest.txt", manifest.as_bytes());
    card.put_boot_file("ca.pem", server.ca_pem.as_bytes());

    let run = card.boot_with(&Attached::Network);
    let line = linux_slot_line(&run);
    assert!(line.starts_with("zboot-linux: slot=A attempt=1 "), "{line}");
    assert!(
        run.console_has("zboot-linux: network: eth0 (cdc_ether), 10.0.2.15/24 via 10.0.2.2"),
        "Linux drives QEMU's usb-net"
    );
    let update = guest_lines(&run, "update");
    let expected = [
        format!(
            "installed device-test version 2 from {} into slot B as a trial",
            server.guest_url("/release.zi")
        ),
        "exit 0".to_owned(),
    ];
    for needle in &expected {
        assert!(
            update.iter().any(|line| line.starts_with(needle.as_str())),
            "{needle:?} in {update:#?}"
        );
    }
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.first().map(String::as_str), Some("GET /latest"));
    assert!(
        requests.iter().any(|request| request == "GET /release.zi"),
        "{requests:?}"
    );
    // The reports reached the endpoint, as JSON records naming the step.
    let events: Vec<(String, Value)> = server
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|(path, body)| (path.clone(), serde_json::from_slice(body).unwrap()))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|(path, record)| {
            assert_eq!(path, "/report");
            assert_eq!(record["slot"], "B", "{record:#}");
            assert_eq!(record["image_version"], 2, "{record:#}");
            assert_eq!(record["outcome"], "ok", "{record:#}");
            record["event"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["downloaded", "installed"], "{events:#?}");
    let status = card.status();
    assert_eq!(status["active"], "B", "{status:#}");
    assert_eq!(slot_status(&status, "B")["state"], "trial");

    let run = card.boot();
    let line = linux_slot_line(&run);
    assert!(line.starts_with("zboot-linux: slot=B attempt=1 "), "{line}");
    assert!(run.console_has("zboot-linux: mark-good: slot B confirmed good"));
    let status = card.status();
    let b = slot_status(&status, "B");
    assert_eq!(
        (&b["state"], &b["confirmed_version"]),
        (&Value::from("good"), &Value::from(2)),
        "{b:#}"
    );
    assert_eq!(status["backup"], "A");
}

/// The U-Boot comparison (`cargo xtask bench` prints the same table); slow,
/// so only on request: `cargo test -p zboot-qemu-tests --test linux --
/// --ignored --nocapture compare_with_u_boot`.
#[test]
#[ignore = "a benchmark: four Linux boots, minutes under TCG"]
fn compare_with_u_boot() {
    if LinuxFiles::or_skip("compare_with_u_boot").is_none() {
        return;
    }
    let mut out = Vec::new();
    zboot_qemu_tests::linux::compare_with_u_boot(&mut out, &|args| Ok(zbctl(args))).unwrap();
    println!("{}", String::from_utf8(out).unwrap());
}
