//! Finding the state file's two sectors: partition table (MBR or GPT) → FAT boot partition →
//! `ZBSTATE.BIN`.
//!
//! The state file is created once by `zbctl init-state` (preallocated, contiguous,
//! [`STATE_FILE_SIZE`] bytes) in the root directory of the FAT boot partition. Copy 0 is its
//! first sector and copy 1 its second. The loader and the tools find these LBAs once and then
//! only ever write those two sectors, never FAT metadata.

use core::fmt;

use crate::block::{BLOCK_SIZE, BlockDevice};
use crate::fat::{Extent, FatError, FatVolume, short_name};
use crate::partition::gpt::{self, Gpt, GptError};
use crate::partition::{MbrError, Partition, PartitionTable};

/// The state file's name in the boot partition's root directory.
pub const STATE_FILE_NAME: &str = "ZBSTATE.BIN";
/// The state file's size: two 512-byte sectors, one per copy.
pub const STATE_FILE_SIZE: u32 = 2 * BLOCK_SIZE as u32;

/// Where the state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLocation {
    /// The partition holding the FAT volume (None: the device is the partition itself).
    pub partition: Option<Partition>,
    /// The FAT volume.
    pub volume: FatVolume,
    /// The state file's extent.
    pub extent: Extent,
    /// LBAs of copy 0 and copy 1.
    pub lbas: [u64; 2],
}

/// Why the state file could not be located.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocateError<E> {
    /// Reading sector 0 failed.
    Device(E),
    /// Sector 0 is neither a FAT boot sector nor a valid MBR.
    PartitionTable(MbrError),
    /// Sector 0 is a protective MBR and the GPT behind it is unusable.
    Gpt(GptError<E>),
    /// No FAT partition in the MBR, or no Microsoft basic data / EFI system partition in
    /// the GPT.
    NoFatPartition,
    /// The FAT volume or the file in it is unusable (partition number, if any).
    Fat {
        partition: Option<u8>,
        error: FatError<E>,
    },
    /// The state file is smaller than two sectors.
    TooSmall { size: u32 },
}

impl<E: fmt::Debug> core::error::Error for LocateError<E> {}

impl<E: fmt::Debug> fmt::Display for LocateError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocateError::Device(e) => write!(f, "reading sector 0: {e:?}"),
            LocateError::PartitionTable(e) => write!(f, "partition table: {e}"),
            LocateError::Gpt(e) => write!(f, "GPT: {e}"),
            LocateError::NoFatPartition => f.write_str(
                "no boot partition in the partition table (MBR: a FAT type; GPT: Microsoft basic \
                 data or EFI system)",
            ),
            LocateError::Fat {
                partition: Some(n),
                error,
            } => {
                write!(f, "partition {n}, {STATE_FILE_NAME}: {error}")
            }
            LocateError::Fat {
                partition: None,
                error,
            } => write!(f, "{STATE_FILE_NAME}: {error}"),
            LocateError::TooSmall { size } => write!(
                f,
                "{STATE_FILE_NAME} is {size} bytes, needs at least {STATE_FILE_SIZE}"
            ),
        }
    }
}

/// Finds the FAT boot volume: `device` is either a whole disk (MBR: the first primary of a
/// FAT type; GPT: the first Microsoft basic data or EFI system partition) or a partition
/// (FAT boot sector at LBA 0).
pub fn find_boot_volume<D: BlockDevice>(
    device: &mut D,
) -> Result<(Option<Partition>, FatVolume), LocateError<D::Error>> {
    let mut sector0 = [0u8; BLOCK_SIZE];
    device
        .read_block(0, &mut sector0)
        .map_err(LocateError::Device)?;
    let blocks = device.block_count();
    // A FAT boot sector first: its boot code area could pass for a partition table.
    if let Ok(volume) = FatVolume::parse::<D::Error>(&sector0, 0, Some(blocks)) {
        return Ok((None, volume));
    }
    let partition = if gpt::is_protective_mbr(&sector0) {
        let table = Gpt::read_after_mbr(device, &sector0).map_err(LocateError::Gpt)?;
        table
            .partitions()
            .iter()
            .find(|p| p.is_boot_type())
            .copied()
            .map(Partition::from)
    } else {
        // Primaries only: the logicals' chain is not needed to find the boot partition, and
        // a damaged chain must not keep the state from being found.
        let table = PartitionTable::parse(&sector0, blocks).map_err(LocateError::PartitionTable)?;
        table.first_fat().map(Partition::from)
    };
    let partition = partition.ok_or(LocateError::NoFatPartition)?;
    let volume =
        FatVolume::open(device, partition.start_lba, Some(partition.sectors)).map_err(|error| {
            LocateError::Fat {
                partition: Some(partition.number),
                error,
            }
        })?;
    Ok((Some(partition), volume))
}

/// Finds the state file and proves it contiguous; returns its two LBAs.
pub fn locate_state<D: BlockDevice>(
    device: &mut D,
) -> Result<StateLocation, LocateError<D::Error>> {
    let (partition, volume) = find_boot_volume(device)?;
    locate_state_in(device, partition, volume)
}

/// [`locate_state`] on a boot volume already found with [`find_boot_volume`] (the loader
/// finds it once and uses it for both the state and the slot files).
pub fn locate_state_in<D: BlockDevice>(
    device: &mut D,
    partition: Option<Partition>,
    volume: FatVolume,
) -> Result<StateLocation, LocateError<D::Error>> {
    let number = partition.map(|p| p.number);
    let name = short_name(STATE_FILE_NAME).unwrap_or([b' '; 11]);
    let extent = volume
        .locate_contiguous(device, &name)
        .map_err(|error| LocateError::Fat {
            partition: number,
            error,
        })?;
    if extent.size < STATE_FILE_SIZE {
        return Err(LocateError::TooSmall { size: extent.size });
    }
    Ok(StateLocation {
        partition,
        volume,
        extent,
        lbas: [extent.first_lba, extent.first_lba + 1],
    })
}
