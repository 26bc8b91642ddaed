//! Partition tables: MBR today (primary partitions); GPT and extended partitions will slot in
//! beside it as further table kinds of [`PartitionTable`].

pub mod mbr;

use core::fmt;

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
