//! `image convert -b boot.tar -r root.tar`: builds the FAT32 boot partition (fatfs) and the
//! ext4 root (`mke2fs -t ext4 -d`) in a scratch directory, and the MBR layout around them:
//! 1 boot (FAT32 LBA, bootable), 2 root A (carried), 3 root B (same size, not carried: an
//! install writes it).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use recovery_proto::image::format::SECTOR;
use recovery_proto::image::{PartitionEntry, Role};

use super::image_convert::{ConvertArgs, SourcePartition, run_tool};

/// Files the boot tarball must hold (paths as in `docs/disk-layout.md`, any case).
pub const REQUIRED_BOOT_FILES: [&str; 4] =
    ["config.txt", "zboot.img", "A/kernel.img", "A/cmdline.txt"];

const MIB: u64 = 1 << 20;
const FIRST_LBA: u64 = 2048;

/// Refuses a tarball with a member that would land outside the directory it is extracted
/// into: an absolute name or a `..` component.
fn check_members(tar: &Path) -> Result<()> {
    let output = Command::new("tar")
        .arg("-tf")
        .arg(tar)
        .output()
        .with_context(|| format!("listing {}", tar.display()))?;
    if !output.status.success() {
        bail!(
            "{}: not a tarball tar can read: {}",
            tar.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    for name in String::from_utf8_lossy(&output.stdout).lines() {
        if name.starts_with('/') || name.split('/').any(|part| part == "..") {
            bail!(
                "{}: member `{name}` has an absolute path or a `..` component; nothing was \
                 extracted",
                tar.display()
            );
        }
    }
    Ok(())
}

fn extract(tar: &Path, into: &Path) -> Result<()> {
    check_members(tar)?;
    fs::create_dir_all(into)?;
    run_tool(
        Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(into)
            .arg("--no-same-owner"),
    )
    .with_context(|| format!("extracting {}", tar.display()))
}

/// Finds `relative` (slash-separated) under `root`, each component matched without case, as
/// FAT does.
pub fn find_any_case(root: &Path, relative: &str) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    for part in relative.split('/') {
        let entry = fs::read_dir(&at)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(part))?;
        at = entry.path();
    }
    Some(at)
}

/// The boot tree: the tarball's top directory, or its `boot/` directory if the files are
/// there (tarballs made with `tar -C / boot`).
fn boot_tree(extracted: &Path, tar: &Path) -> Result<PathBuf> {
    let candidates = [extracted.to_path_buf(), extracted.join("boot")];
    for candidate in &candidates {
        if REQUIRED_BOOT_FILES
            .iter()
            .all(|f| find_any_case(candidate, f).is_some_and(|p| p.is_file()))
        {
            return Ok(candidate.clone());
        }
    }
    let missing: Vec<&str> = REQUIRED_BOOT_FILES
        .iter()
        .copied()
        .filter(|f| find_any_case(extracted, f).is_none())
        .collect();
    bail!(
        "{}: the boot tarball lacks {} (needed at its top level or under boot/: the loader, \
         the firmware config and slot A's kernel and command line, see docs/disk-layout.md)",
        tar.display(),
        missing.join(", ")
    )
}

pub fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += 4096
            + if meta.is_dir() {
                tree_bytes(&entry.path())?
            } else {
                meta.len().div_ceil(4096) * 4096
            };
    }
    Ok(total)
}

fn copy_tree(from: &Path, to: &fatfs::Dir<'_, &mut File>) -> Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| anyhow!("{}: not a UTF-8 name", entry.path().display()))?;
        if entry.file_type()?.is_dir() {
            let dir = to
                .create_dir(name)
                .map_err(|e| anyhow!("FAT: creating {name}: {e}"))?;
            copy_tree(&entry.path(), &dir)?;
        } else {
            let bytes = fs::read(entry.path())?;
            let mut file = to
                .create_file(name)
                .map_err(|e| anyhow!("FAT: creating {name}: {e}"))?;
            file.truncate().map_err(|e| anyhow!("FAT: {name}: {e}"))?;
            file.write_all(&bytes)
                .map_err(|e| anyhow!("FAT: writing {name}: {e}"))?;
        }
    }
    Ok(())
}

/// A FAT32 image of `size` bytes holding the tree at `from`.
pub fn make_fat32(from: &Path, path: &Path, size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_len(size)?;
    let mut file = file;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(512)
            .volume_label(*b"ZBOOT      "),
    )
    .map_err(|e| anyhow!("formatting the FAT32 boot partition: {e}"))?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())
            .map_err(|e| anyhow!("opening the new FAT32 volume: {e}"))?;
        copy_tree(from, &fs.root_dir())?;
        fs.unmount().map_err(|e| anyhow!("FAT: {e}"))?;
    }
    // fatfs 0.3.6 leaves what fsck.fat reports; the disk-create repair fixes it in memory.
    let mut bytes = fs::read(path)?;
    super::fat_fixup::fix_fatfs_volume(&mut bytes)?;
    fs::write(path, &bytes)?;
    let file = File::open(path)?;
    file.sync_all()?;
    Ok(())
}

/// An ext4 image of `size` bytes holding the tree at `from`.
pub fn make_ext4(from: &Path, path: &Path, size: u64) -> Result<()> {
    let _ = fs::remove_file(path);
    run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-d"])
            .arg(from)
            .arg(path)
            .arg(format!("{}k", size / 1024)),
    )
}

fn mbr(signature: u32, entries: &[(u8, u8, u64, u64)]) -> [u8; 512] {
    let mut sector = [0u8; 512];
    sector[440..444].copy_from_slice(&signature.to_le_bytes());
    for (index, &(status, kind, start, count)) in entries.iter().enumerate() {
        let at = 446 + index * 16;
        sector[at] = status;
        // CHS fields saturated (LBA only), as fdisk does for large disks.
        sector[at + 1..at + 4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        sector[at + 4] = kind;
        sector[at + 5..at + 8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        sector[at + 8..at + 12].copy_from_slice(&(start as u32).to_le_bytes());
        sector[at + 12..at + 16].copy_from_slice(&(count as u32).to_le_bytes());
    }
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// Tarballs of a stock boot partition and root (`Ok(None)`: the boot tarball is in the zboot
/// layout, converted by [`layout_from_tarballs`]).
pub fn stock_from_tarballs(
    boot_tar: &Path,
    root_tar: &Path,
    args: &ConvertArgs,
    scratch: &Path,
) -> Result<Option<super::image_stock::StockInput>> {
    let boot_dir = scratch.join("stock-boot");
    extract(boot_tar, &boot_dir)?;
    let candidates = [
        boot_dir.clone(),
        boot_dir.join("boot/firmware"),
        boot_dir.join("boot"),
    ];
    if candidates
        .iter()
        .any(|c| super::image_stock::is_zboot_tree(c))
    {
        return Ok(None);
    }
    let Some(tree) = candidates
        .iter()
        .find(|c| find_any_case(c, "config.txt").is_some_and(|p| p.is_file()))
    else {
        bail!(
            "{}: the boot tarball holds neither config.txt (a stock Raspberry Pi boot \
             partition) nor zboot.img with A/kernel.img and A/cmdline.txt (the zboot layout), \
             at its top level or under boot/firmware/ or boot/",
            boot_tar.display()
        );
    };
    let root_dir = scratch.join("stock-root");
    extract(root_tar, &root_dir)?;
    Ok(Some(super::image_stock::StockInput {
        boot_dir: tree.clone(),
        boot_origin: boot_tar.display().to_string(),
        root: super::image_stock::RootSource::Tree(root_dir),
        root_origin: root_tar.display().to_string(),
        disk_signature: None,
        boot_bytes: args.boot_mib.max(40) * MIB,
    }))
}

/// Builds the partitions in `scratch` and returns the layout, disk signature and disk size.
pub fn layout_from_tarballs(
    boot_tar: &Path,
    root_tar: &Path,
    args: &ConvertArgs,
    scratch: &Path,
) -> Result<(Vec<SourcePartition>, u32, u64)> {
    let boot_dir = scratch.join("boot");
    let root_dir = scratch.join("root");
    extract(boot_tar, &boot_dir)?;
    let boot_tree = boot_tree(&boot_dir, boot_tar)?;
    extract(root_tar, &root_dir)?;
    let boot_size = args.boot_mib.max(40) * MIB;
    let root_size = match args.root_mib {
        Some(mib) => mib * MIB,
        None => (tree_bytes(&root_dir)? * 5 / 4 + 64 * MIB).div_ceil(4 * MIB) * 4 * MIB,
    };
    let boot_image = scratch.join("boot.fat");
    let root_image = scratch.join("root.ext4");
    make_fat32(&boot_tree, &boot_image, boot_size)
        .with_context(|| format!("{}: building the boot partition", boot_tar.display()))?;
    make_ext4(&root_dir, &root_image, root_size)
        .with_context(|| format!("{}: building the root file system", root_tar.display()))?;

    let mut signature = [0u8; 4];
    getrandom::fill(&mut signature).map_err(|e| anyhow!("random disk signature: {e}"))?;
    let signature = u32::from_le_bytes(signature);
    let boot_sectors = boot_size / SECTOR;
    let root_sectors = root_size / SECTOR;
    let root_a = FIRST_LBA + boot_sectors;
    let root_b = root_a + root_sectors;
    let end = root_b + root_sectors;
    let table = mbr(
        signature,
        &[
            (0x80, 0x0C, FIRST_LBA, boot_sectors),
            (0, 0x83, root_a, root_sectors),
            (0, 0x83, root_b, root_sectors),
        ],
    );
    let table_path = scratch.join("mbr.bin");
    fs::write(&table_path, table)?;
    let entry = |number, role, kind, bootable, start_lba, sectors| PartitionEntry {
        number,
        role,
        kind,
        bootable,
        first_region: 0,
        region_count: 0,
        start_lba,
        sectors,
    };
    let partitions = vec![
        SourcePartition {
            entry: entry(0, Role::Table, 0, false, 0, 1),
            content: Some((table_path, 0)),
        },
        SourcePartition {
            entry: entry(2, Role::RootA, 0x83, false, root_a, root_sectors),
            content: Some((root_image, 0)),
        },
        SourcePartition {
            entry: entry(3, Role::RootB, 0x83, false, root_b, root_sectors),
            content: None,
        },
        SourcePartition {
            entry: entry(1, Role::Boot, 0x0C, true, FIRST_LBA, boot_sectors),
            content: Some((boot_image, 0)),
        },
    ];
    Ok((partitions, signature, end * SECTOR))
}
