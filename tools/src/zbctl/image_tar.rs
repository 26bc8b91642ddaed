//! `image convert -b boot.tar -r root.tar`: builds the FAT32 boot partition (fatfs) and the
//! ext4 root (`mke2fs -t ext4 -d`) in a scratch directory, and the MBR layout around them:
//! 1 boot (FAT32 LBA, bootable), 2 root A (carried), 3 root B (same size, not carried: an
//! install writes it).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
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

/// mke2fs's version, from `mke2fs -V` (`mke2fs 1.47.0 (5-Feb-2023)`).
fn mke2fs_version() -> Option<(u32, u32, u32)> {
    let output = Command::new("mke2fs").arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The bytes a tarball's members take (`tar -tv` sizes, each rounded up to 4 KiB, plus an
/// inode's worth per member), for sizing the file system.
pub fn tarball_bytes(tar: &Path) -> Result<u64> {
    let output = Command::new("tar")
        .arg("-tvf")
        .arg(tar)
        .output()
        .with_context(|| format!("listing {}", tar.display()))?;
    ensure!(
        output.status.success(),
        "{}: tar cannot list it: {}",
        tar.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let mut total = 0u64;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // `-rw-r--r-- root/root 1234 2024-01-01 00:00 ./path`; devices show `8,0`.
        let size = line
            .split_whitespace()
            .nth(2)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0);
        total += size.div_ceil(4096) * 4096 + 4096;
    }
    Ok(total)
}

/// The default size of a root made from a tarball: its members, a quarter more, and 64 MiB.
pub fn default_root_bytes(tar: &Path) -> Result<u64> {
    Ok((tarball_bytes(tar)? * 5 / 4 + 64 * MIB).div_ceil(4 * MIB) * 4 * MIB)
}

/// The POSIX ACL xattrs of `system.posix_acl_access`/`_default` in Linux's binary form
/// (`include/uapi/linux/posix_acl_xattr.h`: a version-2 header, then per entry a 16-bit
/// tag, 16-bit permissions and 32-bit id) from GNU tar's text form (`SCHILY.acl.access`:
/// `user::rw-` lines). Only numeric qualifiers can be carried; a name is refused.
fn acl_from_text(text: &str) -> Result<Vec<u8>, String> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for entry in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let fields: Vec<&str> = entry.split(':').collect();
        let (tag, qualifier, perms) = match fields.as_slice() {
            [tag, qualifier, perms, ..] => (*tag, *qualifier, *perms),
            _ => return Err(format!("`{entry}` is not an ACL entry")),
        };
        let named = !qualifier.is_empty();
        let tag = match (tag, named) {
            ("user" | "u", false) => 0x01,
            ("user" | "u", true) => 0x02,
            ("group" | "g", false) => 0x04,
            ("group" | "g", true) => 0x08,
            ("mask" | "m", _) => 0x10,
            ("other" | "o", _) => 0x20,
            _ => return Err(format!("`{entry}`: unknown ACL tag")),
        };
        let id = if named {
            qualifier.parse::<u32>().map_err(|_| {
                format!(
                    "`{entry}` names `{qualifier}`, not a number; make the tarball with \
                     --xattrs --xattrs-include='*' so that the ACL is stored with numeric ids"
                )
            })?
        } else {
            u32::MAX
        };
        let perm = perms
            .chars()
            .zip([4u16, 2, 1])
            .map(|(c, bit)| if c == '-' { 0 } else { bit })
            .sum::<u16>();
        out.extend_from_slice(&u16::to_le_bytes(tag));
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// The records of a PAX extended header: `LEN key=value\n`, where LEN counts the whole
/// record (POSIX.1-2001 `pax`, "extended header"); values may be binary.
fn pax_records(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let length: usize = std::str::from_utf8(rest.get(..space)?).ok()?.parse().ok()?;
        let record = rest.get(space + 1..length)?;
        let record = record.strip_suffix(b"\n")?;
        let equals = record.iter().position(|&b| b == b'=')?;
        let key = String::from_utf8(record.get(..equals)?.to_vec()).ok()?;
        records.push((key, record.get(equals + 1..)?.to_vec()));
        rest = rest.get(length..)?;
    }
    Some(records)
}

/// A member's ACL: (path in the file system, xattr name, value, the member's whole mode
/// with its file type when known). With an ACL, the mode's group bits are the ACL's mask,
/// which the tarball's header carries and the file system must keep.
type Acl = (String, String, Vec<u8>, Option<u32>);

/// A plain tar of `tar`: itself, or decompressed into `scratch` when it is gzip, xz, zstd
/// or bzip2 (by its magic number), with the matching tool.
fn plain_tarball(tar: &Path, scratch: &Path) -> Result<PathBuf> {
    let mut file = File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let mut magic = [0u8; 6];
    let read = file.read(&mut magic)?;
    let head = magic.get(..read).unwrap_or_default();
    let tool = [
        (&[0x1f, 0x8b][..], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0][..], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd][..], "zstd"),
        (&b"BZh"[..], "bzip2"),
    ]
    .iter()
    .find(|(m, _)| head.starts_with(m))
    .map(|(_, tool)| *tool);
    let Some(tool) = tool else {
        return Ok(tar.to_path_buf());
    };
    let plain = scratch.join("root-plain.tar");
    let output = File::create(&plain)?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(tar)
        .stdout(output)
        .status()
        .with_context(|| format!("{}: running {tool} to decompress it", tar.display()))?;
    ensure!(
        status.success(),
        "{}: {tool} -dc failed ({status})",
        tar.display()
    );
    Ok(plain)
}

/// The POSIX ACLs of a plain tarball's members (`tar` names it in messages), from their PAX records: the binary
/// `SCHILY.xattr.system.posix_acl_*` that `tar --xattrs` stores, else the text
/// `SCHILY.acl.access`/`.default` of `tar --acls`.
fn tarball_acls(plain: &Path, tar: &Path) -> Result<Vec<Acl>> {
    let file = File::open(plain)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut acls = Vec::new();
    // Raw: the PAX headers ('x') come as entries of their own, parsed here by their record
    // lengths (a binary ACL value may hold a newline, which the crate's own parser splits
    // at), and apply to the member that follows.
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    let mut long_name: Option<String> = None;
    let entries = archive
        .entries()
        .with_context(|| format!("reading {}", tar.display()))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.with_context(|| format!("reading {}", tar.display()))?;
        let mut data = Vec::new();
        match entry.header().entry_type() {
            tar::EntryType::XHeader => {
                entry.read_to_end(&mut data)?;
                pending.extend(
                    pax_records(&data)
                        .ok_or_else(|| anyhow!("{}: a malformed PAX header", tar.display()))?,
                );
                continue;
            }
            tar::EntryType::GNULongName => {
                entry.read_to_end(&mut data)?;
                let name = String::from_utf8_lossy(&data);
                long_name = Some(name.trim_end_matches('\0').to_string());
                continue;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::GNULongLink => {
                std::io::copy(&mut entry, &mut std::io::sink())?;
                continue;
            }
            _ => {}
        }
        let records = std::mem::take(&mut pending);
        let name = records
            .iter()
            .find(|(key, _)| key == "path")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .or(long_name.take())
            .unwrap_or(entry.path()?.to_string_lossy().into_owned());
        let path = format!("/{}", name.trim_start_matches("./").trim_end_matches('/'));
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Some(0o100_000),
            tar::EntryType::Directory => Some(0o040_000),
            _ => None,
        };
        let mode = kind.and_then(|kind| Some(kind | (entry.header().mode().ok()? & 0o7777)));
        let mut text: Vec<(String, String)> = Vec::new();
        for (key, value) in records {
            if let Some(xattr) = key.strip_prefix("SCHILY.xattr.")
                && xattr.starts_with("system.posix_acl_")
            {
                acls.push((path.clone(), xattr.to_string(), value, mode));
            } else if let Some(kind) = key.strip_prefix("SCHILY.acl.") {
                let xattr = format!("system.posix_acl_{kind}");
                text.push((xattr, String::from_utf8_lossy(&value).into_owned()));
            }
        }
        for (xattr, value) in text {
            if acls.iter().any(|(p, x, _, _)| *p == path && *x == xattr) {
                continue;
            }
            let bytes = acl_from_text(&value)
                .map_err(|why| anyhow!("{}: member `{name}`: ACL {why}", tar.display()))?;
            acls.push((path.clone(), xattr, bytes, mode));
        }
        std::io::copy(&mut entry, &mut std::io::sink())?;
    }
    Ok(acls)
}

/// Sets the ACLs mke2fs did not carry, with `debugfs ea_set` (which stores Linux's binary
/// form in ext4's own), and reads each back.
fn apply_acls(image: &Path, acls: &[Acl], scratch: &Path) -> Result<()> {
    if acls.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    for (index, (path, xattr, value, mode)) in acls.iter().enumerate() {
        let file = scratch.join(format!("acl-{index}"));
        fs::write(&file, value)?;
        writeln!(script, "ea_set -f {} \"{path}\" {xattr}", file.display())?;
        if let Some(mode) = mode {
            writeln!(script, "sif \"{path}\" mode 0{mode:o}")?;
        }
    }
    let script_path = scratch.join("acls.debugfs");
    fs::write(&script_path, script)?;
    run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(image),
    )
    .with_context(|| format!("{}: setting the tarball's ACLs", image.display()))?;
    for (path, xattr, _, _) in acls {
        let output = Command::new("debugfs")
            .arg("-R")
            .arg(format!("ea_get \"{path}\" {xattr}"))
            .arg(image)
            .output()?;
        ensure!(
            output.status.success() && !output.stdout.is_empty(),
            "{}: the ACL {xattr} of {path} did not read back",
            image.display()
        );
    }
    Ok(())
}

/// An ext4 image of `size` bytes holding a root tarball with every bit of its metadata:
/// owners, modes (setuid included), symlinks, hard links, device nodes, xattrs such as
/// `security.capability`, and ACLs.
///
/// mke2fs from e2fsprogs 1.47.1 on reads the tarball itself (`-d root.tar`, through
/// libarchive), whoever runs it; the POSIX ACLs, which libarchive keeps apart from the
/// xattrs, are then set from the members' PAX records with debugfs. A compressed tarball
/// is decompressed into `scratch` first. An older mke2fs needs the tree extracted, which keeps
/// owners and device nodes only when run as root: then tar extracts with
/// `--same-owner --xattrs --acls` and `mke2fs -d` copies the tree. Without either,
/// converting is refused rather than losing metadata.
pub fn ext4_from_tarball(tar: &Path, image: &Path, size: u64, scratch: &Path) -> Result<()> {
    check_members(tar)?;
    let _ = fs::remove_file(image);
    let reads_tarballs = mke2fs_version().is_some_and(|v| v >= (1, 47, 1));
    let (source, acls) = if reads_tarballs {
        let plain = plain_tarball(tar, scratch)?;
        let acls = tarball_acls(&plain, tar)?;
        (plain, acls)
    } else {
        // The effective user, from `id -u` (the tools crate binds no libc).
        let euid = Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .map_or_else(String::new, |o| {
                String::from_utf8_lossy(&o.stdout).trim().to_string()
            });
        ensure!(
            euid == "0",
            "{}: keeping the root's owners, device nodes and xattrs without root needs \
             e2fsprogs 1.47.1 or later (mke2fs -d reads the tarball itself; found {}); on \
             Debian bookworm: apt install -t bookworm-backports e2fsprogs libarchive13 \
             (scripts/setup does it), or run the conversion as root",
            tar.display(),
            mke2fs_version().map_or("no mke2fs".into(), |(a, b, c)| format!(
                "mke2fs {a}.{b}.{c}"
            ))
        );
        let tree = scratch.join("root-tree");
        fs::create_dir_all(&tree)?;
        run_tool(
            Command::new("tar")
                .args(["-xpf"])
                .arg(tar)
                .arg("-C")
                .arg(&tree)
                .args([
                    "--same-owner",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--acls",
                ]),
        )
        .with_context(|| format!("extracting {}", tar.display()))?;
        (tree, Vec::new())
    };
    let result = run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-d"])
            .arg(&source)
            .arg(image)
            .arg(format!("{}k", size / 1024)),
    );
    if reads_tarballs {
        if source != tar {
            let _ = fs::remove_file(&source);
        }
    } else {
        let _ = fs::remove_dir_all(&source);
    }
    result.with_context(|| format!("{}: building the root file system", tar.display()))?;
    // libarchive hands mke2fs the xattrs but not the ACLs (it parses them apart).
    apply_acls(image, &acls, scratch)?;
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
    (boot_mib, root_mib): (u64, Option<u64>),
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
    let root_image = scratch.join("stock-root.ext4");
    let root_size = match root_mib {
        Some(mib) => mib * MIB,
        None => default_root_bytes(root_tar)?,
    };
    let needed = tarball_bytes(root_tar)?;
    ensure!(
        root_size >= needed,
        "{}: the root file system is {} MiB, more than the slot's {} MiB (--root-mib)",
        root_tar.display(),
        needed.div_ceil(MIB),
        root_size / MIB
    );
    ext4_from_tarball(root_tar, &root_image, root_size, scratch)?;
    Ok(Some(super::image_stock::StockInput {
        boot_dir: tree.clone(),
        boot_origin: boot_tar.display().to_string(),
        root: super::image_stock::RootSource::Image(root_image),
        root_origin: root_tar.display().to_string(),
        disk_signature: None,
        boot_bytes: boot_mib.max(40) * MIB,
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
    extract(boot_tar, &boot_dir)?;
    let boot_tree = boot_tree(&boot_dir, boot_tar)?;
    let boot_size = args.boot_mib.max(40) * MIB;
    let root_size = match args.root_mib {
        Some(mib) => mib * MIB,
        None => default_root_bytes(root_tar)?,
    };
    let boot_image = scratch.join("boot.fat");
    let root_image = scratch.join("root.ext4");
    make_fat32(&boot_tree, &boot_image, boot_size)
        .with_context(|| format!("{}: building the boot partition", boot_tar.display()))?;
    ext4_from_tarball(root_tar, &root_image, root_size, scratch)?;

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
