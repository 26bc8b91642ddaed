//! Finding the slot state on a running unit when no `--boot-dir`, `--device` or `--image`
//! is given, the way a user would look for it:
//!
//! 1. on a system zboot booted (`zboot.slot=` in `/proc/cmdline`), the disk that `root=`
//!    names (`root=PARTUUID=…` through `/dev/disk/by-partuuid`, or `root=/dev/mmcblk0p2`):
//!    zboot wrote that `root=` itself, for a root on the disk whose boot partition holds
//!    the state. Without udev (an initramfs, a busybox system) there is no
//!    `/dev/disk/by-partuuid`: then each whole disk's partition table is read for the
//!    PARTUUID, as the kernel itself resolves `root=PARTUUID=` (mainline's partition uevent
//!    carries `PARTN` but no PARTUUID, so sysfs alone cannot name it);
//! 2. else the FAT file system mounted on `/boot/firmware` (Raspberry Pi OS, Debian), then
//!    on `/boot`.
//!
//! The parent disk of a partition comes from sysfs: `/sys/class/block/<part>` links into
//! the disk's directory, and a partition has a `partition` attribute (Linux
//! `Documentation/ABI/stable/sysfs-block`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::Target;

/// Where discovery looks; [`Places::system`] on a unit, a scratch tree in tests.
#[derive(Clone, Debug)]
pub struct Places {
    /// The kernel command line's text.
    pub cmdline: String,
    /// `/dev/disk/by-partuuid`.
    pub by_partuuid: PathBuf,
    /// `/sys/class/block`.
    pub sys_block: PathBuf,
    /// `/dev`, where a disk's node is.
    pub dev: PathBuf,
    /// `/proc/self/mounts`' text.
    pub mounts: String,
}

impl Places {
    /// The running system's.
    pub fn system() -> Self {
        Self {
            cmdline: std::fs::read_to_string(super::cmdline_path()).unwrap_or_default(),
            by_partuuid: "/dev/disk/by-partuuid".into(),
            sys_block: "/sys/class/block".into(),
            dev: "/dev".into(),
            mounts: std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
        }
    }
}

/// Finds the state's place, or says where it looked.
pub fn find(places: &Places) -> Result<Target> {
    let words = || places.cmdline.split_whitespace();
    let root = words().find_map(|word| word.strip_prefix("root="));
    let booted_by_zboot = words().any(|word| word.starts_with("zboot.slot="));
    let mut tried = Vec::new();
    if !booted_by_zboot {
        tried.push("no zboot.slot= in the kernel command line".into());
    } else if let Some(root) = root {
        match disk_of(places, root) {
            Ok(disk) => return Ok(Target::Device(disk)),
            Err(why) => tried.push(format!("root={root} in the kernel command line: {why}")),
        }
    } else {
        tried.push("no root= in the kernel command line".into());
    }
    for mount_point in ["/boot/firmware", "/boot"] {
        let vfat = places.mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next(), fields.next(), fields.next());
            point == Some(mount_point) && kind == Some("vfat")
        });
        if vfat {
            return Ok(Target::BootDir(mount_point.into()));
        }
        tried.push(format!("no FAT file system mounted on {mount_point}"));
    }
    bail!(
        "cannot find the slot state ({}): say where it is with --boot-dir /boot/firmware, \
         --device /dev/mmcblk0 or --image disk.img",
        tried.join("; ")
    )
}

/// The whole disk holding the partition `root=` names.
fn disk_of(places: &Places, root: &str) -> Result<PathBuf, String> {
    let partition = if let Some(uuid) = root.strip_prefix("PARTUUID=") {
        let link = places.by_partuuid.join(uuid.to_ascii_lowercase());
        let node = match std::fs::canonicalize(&link) {
            Ok(node) => node,
            Err(error) => {
                return disk_with_partuuid(places, uuid).ok_or_else(|| {
                    format!(
                        "{}: {error}, and no disk in {} has a partition with that PARTUUID",
                        link.display(),
                        places.sys_block.display()
                    )
                });
            }
        };
        node.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{} has no name", node.display()))?
    } else if let Some(node) = root.strip_prefix("/dev/") {
        node.to_owned()
    } else {
        return Err("neither PARTUUID=… nor /dev/…".into());
    };
    let entry = places.sys_block.join(&partition);
    if !entry.join("partition").exists() {
        return Err(format!(
            "{partition} is not a partition ({} has no partition attribute)",
            entry.display()
        ));
    }
    let resolved =
        std::fs::canonicalize(&entry).map_err(|error| format!("{}: {error}", entry.display()))?;
    let disk = resolved
        .parent()
        .and_then(Path::file_name)
        .ok_or_else(|| format!("{} has no parent disk", resolved.display()))?;
    Ok(places.dev.join(disk))
}

/// The whole disk whose partition table (MBR or GPT) holds a partition with PARTUUID
/// `uuid`: the disks are the entries of `/sys/class/block` without a `partition` attribute.
/// Disks that cannot be opened or hold no table are passed over.
fn disk_with_partuuid(places: &Places, uuid: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(&places.sys_block)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| !entry.path().join("partition").exists())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| places.dev.join(name))
        .find(|disk| {
            let Ok(file) = std::fs::File::open(disk) else {
                return false;
            };
            let Ok(mut device) = super::disk::FileDisk::new(file) else {
                return false;
            };
            recovery_proto::partition::Partitions::read(&mut device)
                .is_ok_and(|partitions| partitions.find_partuuid(uuid).is_some())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree shaped like a CM4's: mmcblk0 with partitions 1 and 2.
    fn tree(cmdline: &str, mounts: &str) -> (tempfile::TempDir, Places) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let devices = root.join("sys/devices/platform/emmc2bus/mmc0/mmcblk0");
        let sys_block = root.join("sys/class/block");
        let by_partuuid = root.join("dev/disk/by-partuuid");
        std::fs::create_dir_all(&sys_block).unwrap();
        std::fs::create_dir_all(&by_partuuid).unwrap();
        std::fs::create_dir_all(devices.join("mmcblk0p1")).unwrap();
        std::fs::create_dir_all(devices.join("mmcblk0p2")).unwrap();
        std::fs::write(devices.join("mmcblk0p1/partition"), "1\n").unwrap();
        std::fs::write(devices.join("mmcblk0p2/partition"), "2\n").unwrap();
        for name in ["mmcblk0", "mmcblk0p1", "mmcblk0p2"] {
            let target = if name == "mmcblk0" {
                devices.clone()
            } else {
                devices.join(name)
            };
            std::os::unix::fs::symlink(target, sys_block.join(name)).unwrap();
            std::fs::write(root.join("dev").join(name), "").unwrap();
        }
        std::os::unix::fs::symlink(root.join("dev/mmcblk0p2"), by_partuuid.join("5a6b7c8d-02"))
            .unwrap();
        let places = Places {
            cmdline: cmdline.into(),
            by_partuuid,
            sys_block,
            dev: root.join("dev"),
            mounts: mounts.into(),
        };
        (dir, places)
    }

    /// A 4 MiB disk whose MBR (disk signature `signature`) holds a FAT partition 1 and a
    /// Linux partition 2.
    fn mbr_disk(signature: u32) -> Vec<u8> {
        let mut disk = vec![0u8; 4 << 20];
        disk[440..444].copy_from_slice(&signature.to_le_bytes());
        for (index, (kind, start, sectors)) in [(0x0c_u8, 2048_u32, 2048_u32), (0x83, 4096, 4096)]
            .into_iter()
            .enumerate()
        {
            let entry = &mut disk[446 + 16 * index..462 + 16 * index];
            entry[4] = kind;
            entry[8..12].copy_from_slice(&start.to_le_bytes());
            entry[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        disk[510] = 0x55;
        disk[511] = 0xaa;
        disk
    }

    #[test]
    fn the_root_partitions_disk_then_the_mounted_boot_partition() {
        let (dir, places) = tree(
            "console=ttyAMA0 root=PARTUUID=5A6B7C8D-02 zboot.slot=A zboot.attempt=1",
            "",
        );
        let dev = dir.path().join("dev/mmcblk0");
        assert_eq!(find(&places).unwrap(), Target::Device(dev.clone()));
        let (_dir, places) = tree("root=/dev/mmcblk0p2 rootwait zboot.slot=B", "");
        assert!(matches!(find(&places).unwrap(), Target::Device(d) if d.ends_with("dev/mmcblk0")));

        // No /dev/disk/by-partuuid (no udev): the disks' partition tables are read.
        let (dir, places) = tree("root=PARTUUID=5a6b7c8d-02 zboot.slot=A", "");
        std::fs::remove_dir_all(&places.by_partuuid).unwrap();
        let error = find(&places).unwrap_err().to_string();
        assert!(
            error.contains("no disk in") && error.contains("has a partition with that PARTUUID"),
            "{error}"
        );
        let disk = dir.path().join("dev/mmcblk0");
        std::fs::write(&disk, mbr_disk(0x5a6b_7c8d)).unwrap();
        assert_eq!(find(&places).unwrap(), Target::Device(disk.clone()));
        std::fs::write(&disk, mbr_disk(0x1111_2222)).unwrap();
        assert!(find(&places).is_err(), "another disk signature");

        // No usable root=: the FAT mounted on /boot/firmware, then /boot.
        let mounts = "/dev/mmcblk0p2 / ext4 rw 0 0\n/dev/mmcblk0p1 /boot/firmware vfat rw 0 0\n";
        let (_dir, places) = tree("root=PARTUUID=00000000-09 zboot.slot=A", mounts);
        assert_eq!(
            find(&places).unwrap(),
            Target::BootDir("/boot/firmware".into())
        );
        let (_dir, places) = tree("", "/dev/sda1 /boot vfat rw 0 0\n");
        assert_eq!(find(&places).unwrap(), Target::BootDir("/boot".into()));
        // A system zboot did not boot (a workstation): its root disk is not looked at.
        let (_dir, places) = tree("root=/dev/mmcblk0p2", "");
        let error = find(&places).unwrap_err().to_string();
        assert!(
            error.contains("no zboot.slot= in the kernel command line"),
            "{error}"
        );

        // Nothing: the error says where it looked and how to say it.
        let (_dir, places) = tree(
            "root=/dev/mmcblk0 quiet zboot.slot=A",
            "/dev/sda1 /boot ext4 rw 0 0\n",
        );
        let error = find(&places).unwrap_err().to_string();
        for needle in [
            "root=/dev/mmcblk0 in the kernel command line: mmcblk0 is not a partition",
            "no FAT file system mounted on /boot/firmware",
            "no FAT file system mounted on /boot",
            "--boot-dir /boot/firmware",
        ] {
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }
}
