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
    /// LBAs of copy 0 and copy 1.
    pub lbas: [u64; 2],
    /// Human description of where the state is.
    pub description: String,
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
                description: path.display().to_string(),
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
                lbas: location.lbas,
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

/// Parses mountinfo text: the last mount at `dir` (later mounts hide earlier ones) whose
/// root is `/`, type vfat or msdos, and source a `/dev/` node.
pub fn fat_source_in_mountinfo(mountinfo: &str, dir: &Path) -> Option<PathBuf> {
    let unescape = |field: &str| {
        field
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\")
    };
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point)) = (left.get(3), left.get(4)) else {
            continue;
        };
        let (Some(fs_type), Some(source)) = (right.first(), right.get(1)) else {
            continue;
        };
        if Path::new(&unescape(mount_point)) != dir {
            continue;
        }
        found =
            (*root == "/" && matches!(*fs_type, "vfat" | "msdos") && source.starts_with("/dev/"))
                .then(|| PathBuf::from(unescape(source)));
    }
    found
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
    }
}
