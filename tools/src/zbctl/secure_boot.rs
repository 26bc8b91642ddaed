//! `zbctl secure-boot boot-img`: the ramdisk the CM4's boot EEPROM verifies (docs/security.md).
//!
//! With the CM4's own secure boot on (a customer key's hash in OTP, or `SIGNED_BOOT=1` in the
//! EEPROM config while testing), the bootloader loads only `boot.img`, a FAT file system
//! image without a partition table, after checking it against `boot.sig`, and reads every
//! later file (`config.txt`, `start4.elf`, the kernel) from inside it (Raspberry Pi's
//! bootloader documentation, `boot_ramdisk`; usbboot `docs/secure-boot.md`). For zboot that
//! ramdisk holds the firmware, `config.txt`, `cmdline.txt`, the device trees and overlays,
//! and `zboot.img`; the slots, `zbmanifest.txt` and the slot state stay on the eMMC's boot
//! partition, where zboot verifies the slots itself. The RSA signature (`boot.sig`) is left
//! to Raspberry Pi's `rpi-eeprom-digest`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};

use super::disk::Window;
use super::image_convert::run_tool;

/// The largest `boot.img` every CM4 bootloader since the 2021-10-27 release reads whole
/// (its release notes; later releases take 128 MB, earlier ones truncated at 64 MB).
pub const MAX_BOOT_IMG: u64 = 96 << 20;

/// `zbctl secure-boot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecureBootCommand {
    /// Build the `boot.img` ramdisk (firmware, config.txt, cmdline.txt, device trees,
    /// overlays, zboot.img) from a boot partition, for `rpi-eeprom-digest` to sign.
    BootImg(BootImgArgs),
}

/// Arguments of `secure-boot boot-img`.
#[derive(Debug, Args)]
pub struct BootImgArgs {
    /// The boot partition: a disk image (its FAT boot partition is used) or a directory
    /// (a mounted boot partition such as /boot/firmware, or a staging tree).
    #[arg(long, value_name = "DISK|DIR")]
    pub from: PathBuf,
    /// The ramdisk to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// Runs `zbctl secure-boot ...`.
pub fn run(command: &SecureBootCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        SecureBootCommand::BootImg(args) => boot_img(args, out),
    }
}

/// What goes into the ramdisk: the firmware's own files. Slot directories, zboot's
/// settings and state, and any other firmware's files stay outside.
fn belongs(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("overlays/") {
        return !rest.is_empty();
    }
    if lower.contains('/') {
        return false;
    }
    let extension = Path::new(&lower)
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or("");
    matches!(lower.as_str(), "config.txt" | "cmdline.txt" | "zboot.img")
        || matches!(
            (extension, lower.get(..6)),
            ("elf", Some("start4")) | ("dat", Some("fixup4"))
        )
        || (extension == "dtb" && lower.starts_with("bcm2711-"))
}

/// Every file of the boot partition at `from`, with its path (`/`-separated).
fn collect(from: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    if from.is_dir() {
        collect_dir(from, "", &mut files)?;
        return Ok(files);
    }
    let mut file = fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let boot = super::install::boot_partition_of(&file, from)?;
    let fs = fatfs::FileSystem::new(
        Window::new(&mut file, boot.start_lba * 512, boot.sectors * 512),
        fatfs::FsOptions::new(),
    )
    .with_context(|| format!("{}: partition {}: FAT", from.display(), boot.number))?;
    collect_fat(&fs.root_dir(), "", &mut files)?;
    Ok(files)
}

fn collect_dir(dir: &Path, prefix: &str, files: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            collect_dir(&entry.path(), &format!("{name}/"), files)?;
        } else {
            let bytes = fs::read(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            files.push((name, bytes));
        }
    }
    Ok(())
}

fn collect_fat<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    prefix: &str,
    files: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let path = format!("{prefix}{name}");
        if entry.is_dir() {
            collect_fat(&entry.to_dir(), &format!("{path}/"), files)?;
        } else {
            let mut bytes = Vec::new();
            entry
                .to_file()
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {path}"))?;
            files.push((path, bytes));
        }
    }
    Ok(())
}

fn boot_img(args: &BootImgArgs, out: &mut dyn Write) -> Result<()> {
    let all = collect(&args.from)?;
    let (inside, outside): (Vec<_>, Vec<_>) = all.into_iter().partition(|(path, _)| belongs(path));
    for required in ["config.txt", "zboot.img", "start4.elf", "fixup4.dat"] {
        ensure!(
            inside
                .iter()
                .any(|(path, _)| path.eq_ignore_ascii_case(required)),
            "{}: no {required} on the boot partition: the ramdisk would not start zboot",
            args.from.display()
        );
    }
    let config = inside
        .iter()
        .find(|(path, _)| path.eq_ignore_ascii_case("config.txt"))
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    if !config
        .lines()
        .any(|line| line.trim().eq_ignore_ascii_case("kernel=zboot.img"))
    {
        eprintln!(
            "warning: {}: config.txt has no kernel=zboot.img: the firmware in the ramdisk would \
             not start zboot",
            args.from.display()
        );
    }
    let content: u64 = inside.iter().map(|(_, bytes)| bytes.len() as u64).sum();
    // Room for the FAT, directories and cluster rounding; a whole number of MiB.
    let size = (content + content / 8 + (2 << 20)).div_ceil(1 << 20) << 20;
    if size > MAX_BOOT_IMG {
        bail!(
            "the ramdisk would be {size} bytes, more than the {MAX_BOOT_IMG} every CM4 \
             bootloader since 2021-10-27 reads: leave large files (initramfs, other kernels) out \
             of the boot partition's root"
        );
    }
    // The FAT is made by dosfstools and filled by mtools: `fatfs` (0.3) writes a
    // long-name entry in front of a new directory's `.` and `..`, and zbctl's repair of
    // that (fat_fixup) knows FAT32 only, while a ramdisk this small is FAT12 or FAT16.
    let staging = tempfile::tempdir().context("a staging directory for the ramdisk")?;
    for (path, bytes) in &inside {
        let file = staging.path().join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&file, bytes)?;
    }
    let partial = args.output.with_extension("img.partial");
    let _ = fs::remove_file(&partial);
    let built = (|| -> Result<()> {
        run_tool(
            Command::new("mkfs.fat")
                .args(["-C", "-n", "ZBOOT-RD"])
                .arg(&partial)
                .arg((size >> 10).to_string()),
        )?;
        let mut copy = Command::new("mcopy");
        copy.args(["-s", "-i"]).arg(&partial);
        for entry in fs::read_dir(staging.path())? {
            copy.arg(entry?.path());
        }
        copy.arg("::");
        run_tool(&mut copy)?;
        fs::rename(&partial, &args.output)
            .with_context(|| format!("renaming to {}", args.output.display()))
    })();
    if let Err(error) = built {
        let _ = fs::remove_file(&partial);
        return Err(error.context("making the ramdisk (dosfstools and mtools: scripts/setup)"));
    }
    writeln!(
        out,
        "{}: {size} bytes, {} files ({content} bytes): {}",
        args.output.display(),
        inside.len(),
        inside
            .iter()
            .map(|(path, _)| path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let left: Vec<&str> = outside.iter().map(|(path, _)| path.as_str()).collect();
    writeln!(
        out,
        "left on the eMMC boot partition (zboot reads and verifies them): {}",
        if left.is_empty() {
            "nothing".to_string()
        } else {
            left.join(", ")
        }
    )?;
    writeln!(
        out,
        "sign it with Raspberry Pi's tool (docs/security.md): rpi-eeprom-digest -i {} -o \
         boot.sig -k private.pem",
        args.output.display()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramdisk_takes_the_firmware_and_leaves_the_slots() {
        for inside in [
            "config.txt",
            "CMDLINE.TXT",
            "zboot.img",
            "start4.elf",
            "start4x.elf",
            "fixup4.dat",
            "bcm2711-rpi-cm4.dtb",
            "overlays/dwc2.dtbo",
            "overlays/README",
        ] {
            assert!(belongs(inside), "{inside}");
        }
        for outside in [
            "A/kernel.img",
            "SAFE/slot.txt",
            "zbmanifest.txt",
            "zboot.state",
            "boot.img",
            "boot.sig",
            "kernel8.img",
            "start.elf",
            "bootcode.bin",
            "bcm2710-rpi-3-b.dtb",
            "overlays/",
        ] {
            assert!(!belongs(outside), "{outside}");
        }
    }
}
