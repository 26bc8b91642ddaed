//! Partition tables: MBR primaries ([`mbr`]), the logicals of its extended partition
//! ([`extended`]) and GUID partition tables ([`gpt`]), read over the block device by
//! [`Partitions::read`] into one view: partition number → extent, type and PARTUUID.

pub mod extended;
pub mod gpt;
pub mod mbr;

use core::fmt;

use crate::block::{BLOCK_SIZE, BlockDevice};
use crate::slot::Slot;

pub use extended::{MAX_LOGICAL, MbrPartitions, PartitionError};
pub use gpt::{Gpt, GptError, GptPartition, Guid, HeaderCopy, HeaderError};
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
    /// GPT: the entry's unique partition GUID, printed as Linux does
    /// (`block/partitions/efi.c`: `%pUl`, lower case).
    Gpt(Guid),
}

impl fmt::Display for PartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartUuid::Mbr { signature, number } => write!(f, "{signature:08x}-{number:02x}"),
            PartUuid::Gpt(guid) => write!(f, "{guid}"),
        }
    }
}

/// A partition's type: the MBR type byte or the GPT type GUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartitionType {
    /// MBR type byte (0x0C FAT32 LBA, 0x83 Linux, 0x0F extended ...).
    Mbr(u8),
    /// GPT partition type GUID.
    Gpt(Guid),
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionType::Mbr(byte) => write!(f, "{byte:#04x}"),
            PartitionType::Gpt(guid) => write!(f, "{guid}"),
        }
    }
}

/// The form `sfdisk --json` prints types in: `c`, `83`, or the GUID in lower case.
impl fmt::LowerHex for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionType::Mbr(byte) => write!(f, "{byte:x}"),
            PartitionType::Gpt(guid) => write!(f, "{guid}"),
        }
    }
}

/// One partition of an MBR or GPT disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Partition {
    /// Linux's number (MBR: 1–4 primary, 5 and up logical; GPT: entry index + 1).
    pub number: u8,
    /// Its type.
    pub kind: PartitionType,
    /// MBR status 0x80; GPT attribute bit 2 (legacy BIOS bootable).
    pub bootable: bool,
    /// First sector.
    pub start_lba: u64,
    /// Number of sectors.
    pub sectors: u64,
    /// Linux's PARTUUID.
    pub partuuid: PartUuid,
}

impl Partition {
    /// Linux's PARTUUID (`root=PARTUUID=...`).
    pub fn partuuid(&self) -> PartUuid {
        self.partuuid
    }

    /// One past the last sector.
    pub fn end_lba(&self) -> u64 {
        self.start_lba + self.sectors
    }

    /// Whether it may hold the FAT boot partition: an MBR FAT type, or GPT Microsoft basic
    /// data or EFI system (the types the Pi firmware boots from).
    pub fn is_boot_type(&self) -> bool {
        match self.kind {
            PartitionType::Mbr(byte) => FAT_TYPES.contains(&byte),
            PartitionType::Gpt(guid) => guid == gpt::BASIC_DATA || guid == gpt::EFI_SYSTEM,
        }
    }
}

impl From<MbrPartition> for Partition {
    fn from(p: MbrPartition) -> Self {
        Self {
            number: p.number,
            kind: PartitionType::Mbr(p.kind),
            bootable: p.bootable,
            start_lba: p.start_lba,
            sectors: p.sectors,
            partuuid: p.partuuid(),
        }
    }
}

impl From<GptPartition> for Partition {
    fn from(p: GptPartition) -> Self {
        Self {
            number: p.number,
            kind: PartitionType::Gpt(p.kind),
            bootable: p.attributes & (1 << 2) != 0,
            start_lba: p.first_lba,
            sectors: p.sectors(),
            partuuid: PartUuid::Gpt(p.unique),
        }
    }
}

/// A disk's partitions, MBR or GPT.
#[derive(Clone, Debug, PartialEq, Eq)]
// One value per boot on the loader's stack (about 2 KiB for GPT); boxing needs an allocator.
#[allow(clippy::large_enum_variant)]
pub enum Partitions {
    /// An MBR disk, logicals included.
    Mbr(MbrPartitions),
    /// A GPT disk (sector 0 a protective MBR).
    Gpt(Gpt),
}

impl Partitions {
    /// Reads sector 0 and then the GPT (if sector 0 is a protective MBR) or the MBR's
    /// extended partition chain.
    pub fn read<D: BlockDevice>(device: &mut D) -> Result<Self, PartitionError<D::Error>> {
        let mut sector0 = [0u8; BLOCK_SIZE];
        device
            .read_block(0, &mut sector0)
            .map_err(|error| PartitionError::Device { lba: 0, error })?;
        if gpt::is_protective_mbr(&sector0) {
            Gpt::read_after_mbr(device, &sector0)
                .map(Partitions::Gpt)
                .map_err(PartitionError::Gpt)
        } else {
            MbrPartitions::read_after_sector0(device, &sector0).map(Partitions::Mbr)
        }
    }

    /// Every partition that holds data, in Linux's numbering order (MBR: without the
    /// extended container).
    pub fn iter(&self) -> impl Iterator<Item = Partition> + '_ {
        let (mbr, gpt) = match self {
            Partitions::Mbr(mbr) => (Some(mbr), None),
            Partitions::Gpt(gpt) => (None, Some(gpt)),
        };
        let mbr = mbr
            .into_iter()
            .flat_map(MbrPartitions::iter)
            .map(Partition::from);
        let gpt = gpt
            .into_iter()
            .flat_map(|gpt| gpt.partitions().iter().copied())
            .map(Partition::from);
        mbr.chain(gpt)
    }

    /// Partition `number` as Linux numbers it (an MBR's extended container included).
    pub fn partition(&self, number: u8) -> Option<Partition> {
        match self {
            Partitions::Mbr(mbr) => mbr.partition(number).map(Partition::from),
            Partitions::Gpt(gpt) => gpt.partition(number).map(Partition::from),
        }
    }

    /// The boot partition: MBR, the first primary of a FAT type; GPT, the first Microsoft
    /// basic data or EFI system partition.
    pub fn boot_partition(&self) -> Option<Partition> {
        match self {
            Partitions::Mbr(mbr) => mbr
                .mbr
                .partitions()
                .find(|p| FAT_TYPES.contains(&p.kind))
                .map(Partition::from),
            Partitions::Gpt(gpt) => gpt
                .partitions()
                .iter()
                .find(|p| p.is_boot_type())
                .copied()
                .map(Partition::from),
        }
    }

    /// The MBR view, on an MBR disk.
    pub fn mbr(&self) -> Option<&MbrPartitions> {
        match self {
            Partitions::Mbr(mbr) => Some(mbr),
            Partitions::Gpt(_) => None,
        }
    }

    /// The GPT, on a GPT disk (which header was used: [`Gpt::source`]).
    pub fn gpt(&self) -> Option<&Gpt> {
        match self {
            Partitions::Mbr(_) => None,
            Partitions::Gpt(gpt) => Some(gpt),
        }
    }

    /// Which kind of table it is.
    pub fn kind(&self) -> TableKind {
        match self {
            Partitions::Mbr(_) => TableKind::Mbr,
            Partitions::Gpt(_) => TableKind::Gpt,
        }
    }

    /// The partition whose PARTUUID is `text` (either case).
    pub fn find_partuuid(&self, text: &str) -> Option<Partition> {
        let mut buffer = heapless::String::<40>::new();
        self.iter().find(|p| {
            buffer.clear();
            fmt::write(&mut buffer, format_args!("{}", p.partuuid)).is_ok()
                && buffer.eq_ignore_ascii_case(text)
        })
    }

    /// Which partition is `slot`'s root on this disk ([`slot_root_on`] with this table's
    /// defaults).
    pub fn slot_root<'m>(
        &self,
        slot: Slot,
        manifest_value: Option<&'m str>,
    ) -> Result<SlotRoot<'m>, BadRootSpec> {
        slot_root_on(self.kind(), slot, manifest_value)
    }
}

/// MBR or GPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// A classic MBR (with logicals in an extended partition).
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "MBR",
            TableKind::Gpt => "GPT",
        })
    }
}

/// Sector 0 parsed as an MBR (primaries only; [`Partitions::read`] reads logicals and GPT).
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

/// The root partition number of each slot on an MBR disk when the manifest does not name
/// one (`docs/disk-layout.md`: A = 2, B = 3, SAFE = 5, the first logical partition).
pub const fn default_root_partition(slot: Slot) -> u8 {
    match slot {
        Slot::A => 2,
        Slot::B => 3,
        Slot::Safe => 5,
    }
}

/// The same on a GPT disk, which has no logicals: A = 2, B = 3, SAFE = 4.
pub const fn default_gpt_root_partition(slot: Slot) -> u8 {
    match slot {
        Slot::A => 2,
        Slot::B => 3,
        Slot::Safe => 4,
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

/// Which partition is `slot`'s root on an MBR disk: the manifest's `root_a`/`root_b`/
/// `safe_root` value if given, else [`default_root_partition`].
pub fn slot_root(slot: Slot, manifest_value: Option<&str>) -> Result<SlotRoot<'_>, BadRootSpec> {
    slot_root_on(TableKind::Mbr, slot, manifest_value)
}

/// The root partition number of `slot` on a `table` disk when the manifest names none.
pub const fn default_root_number(table: TableKind, slot: Slot) -> u8 {
    match table {
        TableKind::Mbr => default_root_partition(slot),
        TableKind::Gpt => default_gpt_root_partition(slot),
    }
}

/// Which partition is `slot`'s root on a `table` disk: the manifest's value if given, else
/// [`default_root_number`].
pub fn slot_root_on(
    table: TableKind,
    slot: Slot,
    manifest_value: Option<&str>,
) -> Result<SlotRoot<'_>, BadRootSpec> {
    let Some(value) = manifest_value.map(str::trim) else {
        return Ok(SlotRoot::Number(default_root_number(table, slot)));
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
    use std::format;

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

    /// A GPT disk: 1 basic data, 2 and 3 Linux, 4 Linux (SAFE); the protective MBR and both
    /// headers written with `gpt`'s encoders.
    fn gpt_disk() -> crate::block::RamDisk {
        use gpt::{BASIC_DATA, HeaderFields, LINUX_FILESYSTEM, encode_entry, encode_header};
        let blocks = 8192u64;
        let mut disk = crate::block::RamDisk::new(blocks as usize);
        let guid = |n: u8| Guid::from_fields(0xA000_0000 + u32::from(n), 0xB1, 0xC2, [n; 8]);
        let mut array = std::vec![0u8; 128 * 128];
        for (index, (kind, first, last)) in [
            (BASIC_DATA, 2048, 4095),
            (LINUX_FILESYSTEM, 4096, 5119),
            (LINUX_FILESYSTEM, 5120, 6143),
            (LINUX_FILESYSTEM, 6144, 7167),
        ]
        .into_iter()
        .enumerate()
        {
            let entry = encode_entry(kind, guid(index as u8 + 1), first, last, "p");
            array[index * 128..(index + 1) * 128].copy_from_slice(&entry);
        }
        let crc = crc32fast::hash(&array);
        *disk.block_mut(0).unwrap() = gpt::protective_mbr(blocks);
        for (my, other, at) in [(1, blocks - 1, 2), (blocks - 1, 1, blocks - 33)] {
            *disk.block_mut(my).unwrap() = encode_header(&HeaderFields {
                my_lba: my,
                alternate_lba: other,
                first_usable_lba: 34,
                last_usable_lba: blocks - 34,
                disk_guid: guid(0),
                entry_array_lba: at,
                entry_count: 128,
                entry_array_crc: crc,
            });
            for (i, chunk) in array.chunks(512).enumerate() {
                disk.block_mut(at + i as u64)
                    .unwrap()
                    .copy_from_slice(chunk);
            }
        }
        disk
    }

    #[test]
    fn gpt_disks_behind_the_common_api() {
        use std::string::ToString;
        let mut disk = gpt_disk();
        let parts = Partitions::read(&mut disk).unwrap();
        assert_eq!(parts.kind(), TableKind::Gpt);
        let boot = parts.boot_partition().unwrap();
        assert_eq!((boot.number, boot.start_lba, boot.sectors), (1, 2048, 2048));
        assert!(boot.is_boot_type());
        assert_eq!(
            format!("{:x}", boot.kind),
            "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
        );
        let safe = parts.partition(4).unwrap();
        assert_eq!(
            safe.partuuid().to_string(),
            "a0000004-00b1-00c2-0404-040404040404"
        );
        assert_eq!(
            parts.find_partuuid("A0000004-00B1-00C2-0404-040404040404"),
            Some(safe)
        );
        assert_eq!(parts.iter().count(), 4);
        assert_eq!(parts.slot_root(Slot::Safe, None), Ok(SlotRoot::Number(4)));
        assert_eq!(parts.slot_root(Slot::B, None), Ok(SlotRoot::Number(3)));
        // The same through a damaged primary header: the backup is used.
        disk.block_mut(1).unwrap()[30] ^= 0x40;
        let parts = Partitions::read(&mut disk).unwrap();
        assert_eq!(parts.gpt().unwrap().source, HeaderCopy::Backup);
        assert_eq!(parts.partition(4), Some(safe));
        // Both headers damaged: the error names both.
        disk.block_mut(8191).unwrap()[30] ^= 0x40;
        assert!(matches!(
            Partitions::read(&mut disk),
            Err(PartitionError::Gpt(GptError::BothHeadersBad { .. }))
        ));
    }

    #[test]
    fn mbr_disks_behind_the_common_api() {
        let mut disk = crate::block::RamDisk::new(4096);
        let sector = disk.block_mut(0).unwrap();
        sector[440..444].copy_from_slice(&0x0bad_cafeu32.to_le_bytes());
        sector[446] = 0x80;
        sector[450] = 0x0C;
        sector[454..458].copy_from_slice(&2048u32.to_le_bytes());
        sector[458..462].copy_from_slice(&1024u32.to_le_bytes());
        sector[510..512].copy_from_slice(&[0x55, 0xAA]);
        let parts = Partitions::read(&mut disk).unwrap();
        assert_eq!(parts.kind(), TableKind::Mbr);
        let boot = parts.boot_partition().unwrap();
        assert_eq!(boot.kind, PartitionType::Mbr(0x0C));
        assert!(boot.bootable && boot.is_boot_type());
        assert_eq!(format!("{:x}", boot.kind), "c");
        assert_eq!(parts.find_partuuid("0BADCAFE-01"), Some(boot));
        assert_eq!(parts.slot_root(Slot::Safe, None), Ok(SlotRoot::Number(5)));
        assert!(parts.mbr().is_some() && parts.gpt().is_none());
    }

    #[test]
    fn partuuid_format() {
        use std::string::ToString;
        let id = PartUuid::Mbr {
            signature: 0x0000_beef,
            number: 5,
        };
        assert_eq!(id.to_string(), "0000beef-05");
        let id = PartUuid::Gpt(gpt::BASIC_DATA);
        assert_eq!(id.to_string(), "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7");
    }
}
