//! Partition tables: MBR primaries ([`mbr`]) and the logicals of its extended partition
//! ([`extended`], read over the block device by [`Partitions::read`]); GPT will slot in beside
//! them as a further table kind of [`PartitionTable`].

pub mod extended;
pub mod mbr;

use core::fmt;

use crate::slot::Slot;

pub use extended::{MAX_LOGICAL, PartitionError, Partitions};
pub use mbr::{Mbr, MbrError, MbrPartition};

/// Partition type bytes of FAT file systems in an MBR (the Pi boot partition is 0x0C).
/// Values from the commonly documented MBR partition type list (e.g. Linux `fdisk -l` types).
pub const FAT_TYPES: [u8; 6] = [0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E];

/// Linux's PARTUUID of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartUuid {
    /// MBR: disk signature and partition number, printed `xxxxxxxx-NN` as Linux does
    /// (`block/partitions/msdos.c`: `"%08x-%02x"`).
    Mbr { signature: u32, number: u8 },
}

impl fmt::Display for PartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartUuid::Mbr { signature, number } => write!(f, "{signature:08x}-{number:02x}"),
        }
    }
}

/// A parsed partition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionTable {
    /// A classic MBR with up to four primary partitions.
    Mbr(Mbr),
}

impl PartitionTable {
    /// Parses sector 0 of a device with `device_blocks` blocks.
    pub fn parse(sector0: &crate::Block, device_blocks: u64) -> Result<Self, MbrError> {
        Mbr::parse(sector0, device_blocks).map(PartitionTable::Mbr)
    }

    /// The first partition holding a FAT file system type.
    pub fn first_fat(&self) -> Option<MbrPartition> {
        match self {
            PartitionTable::Mbr(mbr) => mbr.partitions().find(|p| FAT_TYPES.contains(&p.kind)),
        }
    }
}

/// A slot's root partition as `zbmanifest.txt` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRoot<'a> {
    /// A partition number on the boot disk (from `/dev/mmcblk0p2`, or the default).
    Number(u8),
    /// `PARTUUID=...` given verbatim: passed to the kernel as it is.
    PartUuid(&'a str),
}

/// The root partition number of each slot when the manifest does not name one
/// (`docs/disk-layout.md`: A = 2, B = 3, SAFE = 5, the first logical partition).
pub const fn default_root_partition(slot: Slot) -> u8 {
    match slot {
        Slot::A => 2,
        Slot::B => 3,
        Slot::Safe => 5,
    }
}

/// A manifest root value that is neither a device path ending in a partition number nor
/// `PARTUUID=<hex and dashes>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRootSpec;

impl fmt::Display for BadRootSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "expected a device path ending in a partition number (/dev/mmcblk0p2) or PARTUUID=...",
        )
    }
}

/// The partition number at the end of a device path: `/dev/mmcblk0p2` → 2,
/// `/dev/sda5` → 5 (1–255; `None` without a trailing number).
pub fn partition_number_of_device(path: &str) -> Option<u8> {
    let digits = path.len() - path.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number: u8 = path.get(path.len() - digits..)?.parse().ok()?;
    // `mmcblk0` alone is the whole disk: the digits after `mmcblk` name the card, not a
    // partition, which always follows a `p` on such devices.
    let stem = path.get(..path.len() - digits)?;
    if stem.ends_with("mmcblk") || stem.ends_with("nvme") || number == 0 {
        return None;
    }
    Some(number)
}

/// Which partition is `slot`'s root: the manifest's `root_a`/`root_b`/`safe_root` value if
/// given, else [`default_root_partition`].
pub fn slot_root(slot: Slot, manifest_value: Option<&str>) -> Result<SlotRoot<'_>, BadRootSpec> {
    let Some(value) = manifest_value.map(str::trim) else {
        return Ok(SlotRoot::Number(default_root_partition(slot)));
    };
    if let Some(uuid) = value.strip_prefix("PARTUUID=") {
        return if !uuid.is_empty() && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            Ok(SlotRoot::PartUuid(uuid))
        } else {
            Err(BadRootSpec)
        };
    }
    partition_number_of_device(value)
        .map(SlotRoot::Number)
        .ok_or(BadRootSpec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths_to_partition_numbers() {
        assert_eq!(partition_number_of_device("/dev/mmcblk0p2"), Some(2));
        assert_eq!(partition_number_of_device("/dev/mmcblk1p12"), Some(12));
        assert_eq!(partition_number_of_device("/dev/sda5"), Some(5));
        assert_eq!(partition_number_of_device("/dev/mmcblk0"), None);
        assert_eq!(partition_number_of_device("/dev/nvme0n1p3"), Some(3));
        assert_eq!(partition_number_of_device("/dev/sda"), None);
        assert_eq!(partition_number_of_device("/dev/sda0"), None);
        assert_eq!(partition_number_of_device("/dev/sda999"), None);
        assert_eq!(partition_number_of_device(""), None);
    }

    #[test]
    fn slot_roots_with_defaults() {
        assert_eq!(slot_root(Slot::A, None), Ok(SlotRoot::Number(2)));
        assert_eq!(slot_root(Slot::B, None), Ok(SlotRoot::Number(3)));
        assert_eq!(slot_root(Slot::Safe, None), Ok(SlotRoot::Number(5)));
        assert_eq!(
            slot_root(Slot::Safe, Some("/dev/mmcblk0p6")),
            Ok(SlotRoot::Number(6))
        );
        assert_eq!(
            slot_root(Slot::A, Some("PARTUUID=1234abcd-02")),
            Ok(SlotRoot::PartUuid("1234abcd-02"))
        );
        assert_eq!(slot_root(Slot::A, Some("PARTUUID=x y")), Err(BadRootSpec));
        assert_eq!(slot_root(Slot::A, Some("/dev/mmcblk0")), Err(BadRootSpec));
    }

    #[test]
    fn partuuid_format() {
        use std::string::ToString;
        let id = PartUuid::Mbr {
            signature: 0x0000_beef,
            number: 5,
        };
        assert_eq!(id.to_string(), "0000beef-05");
    }
}
