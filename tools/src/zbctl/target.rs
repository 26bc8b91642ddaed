//! Where the state lives: a mounted boot directory, a block device or a disk image.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use recovery_proto::State;
use recovery_proto::fat::FatError;
use recovery_proto::locate::{LocateError, STATE_FILE_NAME, STATE_FILE_SIZE, locate_state};
use recovery_proto::store::{LoadReport, RedundantStore};

use super::disk::FileDisk;

/// What `--boot-dir`, `--device` or `--image` named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The FAT boot partition mounted as a directory (e.g. `/boot/firmware`): the state file
    /// is written in place through the file system with `pwrite` + `fdatasync`.
    BootDir(PathBuf),
    /// A block device: a whole disk (MBR) or the boot partition itself.
    Device(PathBuf),
    /// A disk image file (MBR) or a partition image.
    Image(PathBuf),
}

impl Target {
    /// The path given.
    pub fn path(&self) -> &Path {
        match self {
            Target::BootDir(p) | Target::Device(p) | Target::Image(p) => p,
        }
    }

    /// The flag that names this kind of target.
    pub fn flag(&self) -> &'static str {
        match self {
            Target::BootDir(_) => "--boot-dir",
            Target::Device(_) => "--device",
            Target::Image(_) => "--image",
        }
    }
}

/// The opened state: the device and the two LBAs of the copies.
#[derive(Debug)]
pub struct StateTarget {
    /// The device (for `--boot-dir`, the state file itself: copies at LBAs 0 and 1).
    pub disk: FileDisk,
    /// LBAs of copy 0 and copy 1, counted in sectors of [`Self::lbas_of`].
    pub lbas: [u64; 2],
    /// What the LBAs count from: the device or image opened (a partition device counts
    /// from the partition's start, a whole disk or disk image from the disk's), or the
    /// state file itself.
    pub lbas_of: String,
    /// Human description of where the state is.
    pub description: String,
    /// Whether `disk` is a whole disk (a partition table was read), where the reflash
    /// journal lives at LBAs 64-65.
    pub whole_disk: bool,
}

/// Finds `ZBSTATE.BIN` in a mounted boot directory (any case: vfat may show it lower case).
pub fn find_in_dir(dir: &Path) -> Result<Option<PathBuf>> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .eq_ignore_ascii_case(STATE_FILE_NAME)
        {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for reading and writing", path.display()))
}

/// Opens the target and locates the two state sectors.
pub fn open(target: &Target) -> Result<StateTarget> {
    match target {
        Target::BootDir(dir) => {
            let path = find_in_dir(dir)?.ok_or_else(|| {
                anyhow!(
                    "no {STATE_FILE_NAME} in {}: the slot state was never initialised; \
                     `zbctl --boot-dir {} init-state` creates it",
                    dir.display(),
                    dir.display()
                )
            })?;
            let size = fs::metadata(&path)?.len();
            let disk = FileDisk::new(open_rw(&path)?)?;
            if size < u64::from(STATE_FILE_SIZE) {
                bail!(
                    "{} is {size} bytes, expected {STATE_FILE_SIZE} (truncated or not a zboot state \
                     file); `zbctl init-state --force` recreates it",
                    path.display()
                );
            }
            // Prefer the block device under a vfat mount: writing the two sectors there
            // leaves the directory entry alone (a write through vfat updates the file's
            // modification time in it, a metadata write a power cut could tear).
            if let Some(device) = mounted_fat_device(dir)
                && let Ok(mut opened) = open(&Target::Device(device))
            {
                opened.description = format!("{} (via {})", path.display(), opened.description);
                return Ok(opened);
            }
            Ok(StateTarget {
                disk,
                lbas: [0, 1],
                lbas_of: path.display().to_string(),
                description: path.display().to_string(),
                whole_disk: false,
            })
        }
        Target::Device(path) | Target::Image(path) => {
            let mut disk = FileDisk::new(open_rw(path)?)?;
            let location =
                locate_state(&mut disk).map_err(|error| explain_locate(target, &error))?;
            let partition = location.partition.map_or_else(
                || "the partition".to_string(),
                |p| format!("partition {} (PARTUUID {})", p.number, p.partuuid()),
            );
            Ok(StateTarget {
                disk,
                whole_disk: location.partition.is_some(),
                lbas: location.lbas,
                lbas_of: path.display().to_string(),
                description: format!(
                    "{}, {partition}, {STATE_FILE_NAME} at LBA {} and {}",
                    path.display(),
                    location.lbas[0],
                    location.lbas[1]
                ),
            })
        }
    }
}

/// The block device of a vfat/msdos file system mounted (whole) at `dir`, if any, from
/// `/proc/self/mountinfo` (format: proc(5)).
pub fn mounted_fat_device(dir: &Path) -> Option<PathBuf> {
    let dir = fs::canonicalize(dir).ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    fat_source_in_mountinfo(&mountinfo, &dir)
}

/// One line of `/proc/self/mountinfo` (proc(5)), octal escapes in paths undone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Field 3, `major:minor` of the mounted device (`st_dev` of its files).
    pub device: (u32, u32),
    /// Field 4: the directory of the file system mounted here (`/` for a whole one).
    pub root: PathBuf,
    /// Field 5: the mount point.
    pub mount_point: PathBuf,
    /// The file system type (after the ` - ` separator).
    pub fs_type: String,
    /// The mount source as the kernel spells it (e.g. `/dev/mmcblk0p1`).
    pub source: String,
}

/// Parses mountinfo text (format: proc(5)); lines that do not parse are skipped.
pub fn parse_mountinfo(mountinfo: &str) -> Vec<Mount> {
    let unescape = |field: &str| {
        field
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let (major, minor) = left.get(2)?.split_once(':')?;
            Some(Mount {
                device: (major.parse().ok()?, minor.parse().ok()?),
                root: PathBuf::from(unescape(left.get(3)?)),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fs_type: right.next()?.to_string(),
                source: unescape(right.next()?),
            })
        })
        .collect()
}

/// The source of the last mount at `dir` (later mounts hide earlier ones) if it is a whole
/// (root `/`) vfat or msdos file system on a `/dev/` node.
pub fn fat_source_in_mountinfo(mountinfo: &str, dir: &Path) -> Option<PathBuf> {
    let last = parse_mountinfo(mountinfo)
        .into_iter()
        .rfind(|m| m.mount_point == dir)?;
    (last.root == Path::new("/")
        && matches!(last.fs_type.as_str(), "vfat" | "msdos")
        && last.source.starts_with("/dev/"))
    .then(|| PathBuf::from(last.source))
}

/// Mount points of the file systems on the device numbered `device` (`major:minor`, as
/// `st_rdev` of its node), whatever the mount source is spelled like.
pub fn mounts_of_device(mountinfo: &str, device: (u32, u32)) -> Vec<PathBuf> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| m.device == device)
        .map(|m| m.mount_point)
        .collect()
}

/// `major:minor` of a Linux `dev_t` (glibc's `gnu_dev_major`/`gnu_dev_minor` encoding, which
/// is what `st_rdev` holds: 12 bits of major and 20 of minor, split around the low byte).
pub fn dev_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x00ff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

/// Turns a locate error into an operator-facing message with the way out.
pub fn explain_locate(target: &Target, error: &LocateError<std::io::Error>) -> anyhow::Error {
    let path = target.path().display();
    let flag = target.flag();
    match error {
        LocateError::Fat {
            error: FatError::NotFound,
            partition,
        } => anyhow!(
            "no {STATE_FILE_NAME} in the FAT boot partition{} of {path}: the slot state was never \
             initialised; `zbctl {flag} {path} init-state` creates it",
            partition.map(|n| format!(" {n}")).unwrap_or_default()
        ),
        LocateError::Fat {
            error:
                error @ (FatError::Fragmented { .. }
                | FatError::ChainTooShort { .. }
                | FatError::ChainTooLong { .. }),
            partition,
        } => anyhow!(
            "{path}: partition {}: {STATE_FILE_NAME} cannot be used: {error}; the loader only \
             writes a contiguous state file; `zbctl {flag} {path} init-state --force` recreates it \
             (this needs enough contiguous free space)",
            partition.map_or_else(|| "-".to_string(), |n| n.to_string())
        ),
        LocateError::TooSmall { .. } => anyhow!(
            "{path}: {error} (truncated); `zbctl {flag} {path} init-state --force` recreates it"
        ),
        other => anyhow!("{path}: {other}"),
    }
}

/// Loads the state, or explains why there is none and what `--force` would do.
pub fn load(
    target: &mut StateTarget,
) -> Result<(State, RedundantStore, LoadReport<std::io::Error>)> {
    let mut store = RedundantStore::new(target.lbas);
    match store.load(&mut target.disk) {
        Ok((state, report)) => Ok((state, store, report)),
        Err(none) => {
            let [a, b] = &none.copies;
            bail!(
                "no valid slot state in {}: copy 0 (LBA {}): {a}; copy 1 (LBA {}): {b}. \
                 The loader boots SAFE only until this is fixed. `zbctl init-state --force` writes a \
                 fresh state (A active, B backup, all slots good, history cleared) to both copies",
                target.description,
                target.lbas[0],
                target.lbas[1]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_vfat_device_under_a_mount_point() {
        let mountinfo = "\
22 1 179:2 / / rw,relatime shared:1 - ext4 /dev/mmcblk0p2 rw
30 22 179:1 / /boot/firmware rw,relatime shared:2 - vfat /dev/mmcblk0p1 rw,fmask=0022
31 22 179:1 /sub /mnt/bind rw shared:2 - vfat /dev/mmcblk0p1 rw
32 22 7:0 / /mnt/my\\040boot rw - msdos /dev/loop0 rw
33 22 0:40 / /tmp rw - tmpfs tmpfs rw
";
        let find = |dir: &str| fat_source_in_mountinfo(mountinfo, Path::new(dir));
        assert_eq!(
            find("/boot/firmware"),
            Some(PathBuf::from("/dev/mmcblk0p1"))
        );
        assert_eq!(find("/mnt/my boot"), Some(PathBuf::from("/dev/loop0")));
        assert_eq!(find("/mnt/bind"), None, "a bind mount of a subdirectory");
        assert_eq!(find("/tmp"), None);
        assert_eq!(find("/"), None);
        let parsed = parse_mountinfo(mountinfo);
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[1].device, (179, 1));
        assert_eq!(parsed[3].mount_point, Path::new("/mnt/my boot"));
    }

    #[test]
    fn mounts_are_matched_by_device_number_not_by_name() {
        // The same partition mounted under two spellings of its source, and another disk.
        let mountinfo = "\
22 1 179:2 / / rw,relatime shared:1 - ext4 /dev/root rw
30 22 179:1 / /boot/firmware rw,relatime shared:2 - vfat /dev/mmcblk0p1 rw,fmask=0022
31 22 179:1 / /mnt/my\\040boot rw - vfat /dev/disk/by-id/mmc-card-part1 rw
32 22 179:33 / /mnt/other rw - vfat /dev/mmcblk1p1 rw
";
        assert_eq!(
            mounts_of_device(mountinfo, (179, 1)),
            [
                PathBuf::from("/boot/firmware"),
                PathBuf::from("/mnt/my boot")
            ]
        );
        assert_eq!(mounts_of_device(mountinfo, (179, 2)), [PathBuf::from("/")]);
        assert!(mounts_of_device(mountinfo, (8, 1)).is_empty());
    }

    #[test]
    fn dev_t_is_decoded_as_glibc_does() {
        // makedev(179, 1), makedev(8, 17), makedev(259, 1048575) (a large minor).
        assert_eq!(dev_numbers(0xb301), (179, 1));
        assert_eq!(dev_numbers(0x0811), (8, 17));
        assert_eq!(dev_numbers(0xfff1_03ff), (259, 0xf_ffff));
    }
}
