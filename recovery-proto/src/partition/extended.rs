//! Logical partitions: the chain of extended boot records (EBRs) inside an MBR extended
//! partition, read over a [`BlockDevice`] with every link checked.
//!
//! Layout (the classic DOS scheme as Linux reads it, `block/partitions/msdos.c`
//! `parse_extended()`): the extended partition's first sector is an EBR, laid out like an MBR
//! (entries at 446, 0x55 0xAA at 510). Its entry 1 describes a logical partition, its start
//! relative to *this EBR*; its entry 2 links to the next EBR, its start relative to the
//! *extended partition's* start (type 0x05/0x0F/0x85), or is empty at the end of the chain.
//! Linux numbers logical partitions from 5 in chain order, so the PARTUUID of the first one
//! on an MBR disk is `<signature>-05`.
//!
//! A chain is untrusted input: it may loop, point outside its container or past the device,
//! or be truncated. All of those are errors naming the EBR; the walk is bounded by
//! [`MAX_LOGICAL`] links, so a hostile table cannot keep the loader reading.

use core::fmt;

use crate::block::{BLOCK_SIZE, Block, BlockDevice};
use crate::partition::gpt::GptError;
use crate::partition::mbr::{EXTENDED, Mbr, MbrError, MbrPartition};

/// Logical partitions (and so EBRs) followed at most; zboot's layout has two.
pub const MAX_LOGICAL: usize = 16;
/// Linux's number of the first logical partition.
pub const FIRST_LOGICAL: u8 = 5;

/// Why the partitions could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionError<E> {
    /// Reading a sector failed.
    Device { lba: u64, error: E },
    /// Sector 0 is not a usable MBR.
    Mbr(MbrError),
    /// The disk is GPT (protective MBR) and its table is unusable.
    Gpt(GptError<E>),
    /// More than one extended partition in the MBR (Linux would follow each; no tool makes it).
    MultipleExtended { first: u8, second: u8 },
    /// An EBR without the 0x55 0xAA signature (a truncated or overwritten chain).
    MissingEbrSignature { ebr_lba: u64, found: [u8; 2] },
    /// A link points outside the extended partition or past the device.
    EbrOutside {
        ebr_lba: u64,
        container_start: u64,
        container_end: u64,
    },
    /// A link whose type is not an extended type.
    BadLinkType { ebr_lba: u64, kind: u8 },
    /// A link back to an EBR already read.
    Loop { ebr_lba: u64 },
    /// More than [`MAX_LOGICAL`] EBRs.
    TooManyLogicals,
    /// A logical partition not strictly inside its container after its EBR, or empty.
    LogicalOutside {
        number: u8,
        start_lba: u64,
        end_lba: u64,
        container_end: u64,
    },
    /// A logical partition's status byte is neither 0x00 nor 0x80.
    BadStatus { number: u8, value: u8 },
    /// Two logical partitions overlap.
    Overlap { first: u8, second: u8 },
}

impl<E: fmt::Debug> core::error::Error for PartitionError<E> {}

impl<E: fmt::Debug> fmt::Display for PartitionError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionError::Device { lba, error } => write!(f, "reading sector {lba}: {error:?}"),
            PartitionError::Mbr(error) => write!(f, "MBR: {error}"),
            PartitionError::Gpt(error) => write!(f, "GPT: {error}"),
            PartitionError::MultipleExtended { first, second } => write!(
                f,
                "partitions {first} and {second} are both extended partitions"
            ),
            PartitionError::MissingEbrSignature { ebr_lba, found } => write!(
                f,
                "extended boot record at sector {ebr_lba}: signature {found:02x?}, expected [55, aa]"
            ),
            PartitionError::EbrOutside {
                ebr_lba,
                container_start,
                container_end,
            } => write!(
                f,
                "extended boot record link to sector {ebr_lba} is outside the extended partition \
                 (sectors {container_start}..{container_end}) or the device"
            ),
            PartitionError::BadLinkType { ebr_lba, kind } => write!(
                f,
                "extended boot record at sector {ebr_lba}: link of type {kind:#04x} is not an extended type"
            ),
            PartitionError::Loop { ebr_lba } => write!(
                f,
                "extended boot record chain loops back to sector {ebr_lba}"
            ),
            PartitionError::TooManyLogicals => {
                write!(f, "more than {MAX_LOGICAL} extended boot records")
            }
            PartitionError::LogicalOutside {
                number,
                start_lba,
                end_lba,
                container_end,
            } => write!(
                f,
                "logical partition {number} (sectors {start_lba}..{end_lba}) is empty or not inside \
                 its extended partition (ending at {container_end}) after its boot record"
            ),
            PartitionError::BadStatus { number, value } => write!(
                f,
                "partition {number}: status byte {value:#04x} is neither 0x00 nor 0x80"
            ),
            PartitionError::Overlap { first, second } => {
                write!(f, "partitions {first} and {second} overlap")
            }
        }
    }
}

/// Entry `index` (0–3) of a boot record: (status, type, relative start, sectors).
fn entry(sector: &Block, index: usize) -> (u8, u8, u64, u64) {
    let at = 446 + index * 16;
    let byte = |offset: usize| sector.get(at + offset).copied().unwrap_or(0);
    let le32 = |offset: usize| {
        u64::from(u32::from_le_bytes([
            byte(offset),
            byte(offset + 1),
            byte(offset + 2),
            byte(offset + 3),
        ]))
    };
    (byte(0), byte(4), le32(8), le32(12))
}

/// Follows the EBR chain of `container` (an extended partition of `mbr`'s disk) and returns
/// the logical partitions, numbered from [`FIRST_LOGICAL`].
pub fn read_logicals<D: BlockDevice>(
    device: &mut D,
    container: &MbrPartition,
    disk_signature: u32,
) -> Result<heapless::Vec<MbrPartition, MAX_LOGICAL>, PartitionError<D::Error>> {
    let container_start = container.start_lba;
    let container_end = container.end_lba().min(device.block_count());
    let mut logicals: heapless::Vec<MbrPartition, MAX_LOGICAL> = heapless::Vec::new();
    let mut visited: heapless::Vec<u64, MAX_LOGICAL> = heapless::Vec::new();
    let mut ebr_lba = container_start;
    let mut sector = [0u8; BLOCK_SIZE];
    loop {
        if ebr_lba < container_start || ebr_lba >= container_end {
            return Err(PartitionError::EbrOutside {
                ebr_lba,
                container_start,
                container_end,
            });
        }
        if visited.contains(&ebr_lba) {
            return Err(PartitionError::Loop { ebr_lba });
        }
        visited
            .push(ebr_lba)
            .map_err(|_| PartitionError::TooManyLogicals)?;
        device
            .read_block(ebr_lba, &mut sector)
            .map_err(|error| PartitionError::Device {
                lba: ebr_lba,
                error,
            })?;
        let found = [
            sector.get(510).copied().unwrap_or(0),
            sector.get(511).copied().unwrap_or(0),
        ];
        if found != [0x55, 0xAA] {
            return Err(PartitionError::MissingEbrSignature { ebr_lba, found });
        }
        let (status, kind, relative, sectors) = entry(&sector, 0);
        // An empty first entry is skipped without taking a number, as Linux does.
        if kind != 0 && sectors != 0 {
            let number = FIRST_LOGICAL + logicals.len() as u8;
            if status != 0x00 && status != 0x80 {
                return Err(PartitionError::BadStatus {
                    number,
                    value: status,
                });
            }
            let start_lba = ebr_lba + relative;
            let end_lba = start_lba + sectors;
            if relative == 0 || end_lba > container_end {
                return Err(PartitionError::LogicalOutside {
                    number,
                    start_lba,
                    end_lba,
                    container_end,
                });
            }
            let logical = MbrPartition {
                number,
                kind,
                bootable: status == 0x80,
                start_lba,
                sectors,
                disk_signature,
            };
            if let Some(other) = logicals
                .iter()
                .find(|p| p.start_lba < end_lba && start_lba < p.end_lba())
            {
                return Err(PartitionError::Overlap {
                    first: other.number,
                    second: number,
                });
            }
            logicals
                .push(logical)
                .map_err(|_| PartitionError::TooManyLogicals)?;
        }
        let (_, link_kind, link_relative, link_sectors) = entry(&sector, 1);
        if link_kind == 0 || link_sectors == 0 {
            return Ok(logicals);
        }
        if !EXTENDED.contains(&link_kind) {
            return Err(PartitionError::BadLinkType {
                ebr_lba,
                kind: link_kind,
            });
        }
        ebr_lba = container_start + link_relative;
    }
}

/// An MBR disk's partitions: the primaries and the logicals of its extended partition
/// ([`super::Partitions`] is the view over MBR and GPT disks alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrPartitions {
    /// Sector 0.
    pub mbr: Mbr,
    logicals: heapless::Vec<MbrPartition, MAX_LOGICAL>,
}

impl MbrPartitions {
    /// Reads sector 0 and, if there is an extended partition, its EBR chain.
    pub fn read<D: BlockDevice>(device: &mut D) -> Result<Self, PartitionError<D::Error>> {
        let mut sector0 = [0u8; BLOCK_SIZE];
        device
            .read_block(0, &mut sector0)
            .map_err(|error| PartitionError::Device { lba: 0, error })?;
        Self::read_after_sector0(device, &sector0)
    }

    /// [`MbrPartitions::read`] with sector 0 already read.
    pub fn read_after_sector0<D: BlockDevice>(
        device: &mut D,
        sector0: &Block,
    ) -> Result<Self, PartitionError<D::Error>> {
        let mbr = Mbr::parse(sector0, device.block_count()).map_err(PartitionError::Mbr)?;
        let mut extended = mbr.partitions().filter(MbrPartition::is_extended);
        let container = extended.next();
        if let (Some(first), Some(second)) = (container, extended.next()) {
            return Err(PartitionError::MultipleExtended {
                first: first.number,
                second: second.number,
            });
        }
        let logicals = match container {
            Some(container) => read_logicals(device, &container, mbr.disk_signature)?,
            None => heapless::Vec::new(),
        };
        Ok(Self { mbr, logicals })
    }

    /// Every partition that holds data (primaries except the extended container, then the
    /// logicals), in Linux's numbering order.
    pub fn iter(&self) -> impl Iterator<Item = MbrPartition> + '_ {
        self.mbr
            .partitions()
            .filter(|p| !p.is_extended())
            .chain(self.logicals.iter().copied())
    }

    /// The logical partitions (numbers from 5).
    pub fn logicals(&self) -> &[MbrPartition] {
        &self.logicals
    }

    /// Partition `number` as Linux numbers it (1–4 primary, 5 and up logical).
    pub fn partition(&self, number: u8) -> Option<MbrPartition> {
        if number < FIRST_LOGICAL {
            self.mbr.partition(number)
        } else {
            self.logicals.iter().find(|p| p.number == number).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The MBR reader's own tests; `super::super::Partitions` adds GPT on top.
    use super::MbrPartitions as Partitions;
    use crate::block::RamDisk;
    use std::string::ToString;

    const DISK: u64 = 10_000;
    const EXT_START: u64 = 4000;
    const EXT_SECTORS: u64 = 6000;

    fn put(sector: &mut Block, index: usize, status: u8, kind: u8, start: u64, count: u64) {
        let at = 446 + index * 16;
        sector[at] = status;
        sector[at + 4] = kind;
        sector[at + 8..at + 12].copy_from_slice(&(start as u32).to_le_bytes());
        sector[at + 12..at + 16].copy_from_slice(&(count as u32).to_le_bytes());
    }

    fn signed() -> Block {
        let mut s = [0u8; 512];
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    /// MBR: 1 FAT, 2 Linux, 4 extended; EBRs at 4000 (logical 5 at +2048, 1000 sectors) and
    /// 7048 (logical 6 at +2048, to the end).
    fn disk() -> RamDisk {
        let mut disk = RamDisk::new(DISK as usize);
        let mut mbr = signed();
        mbr[440..444].copy_from_slice(&0x1a2b_3c4du32.to_le_bytes());
        put(&mut mbr, 0, 0x80, 0x0C, 2048, 1000);
        put(&mut mbr, 1, 0, 0x83, 3048, 952);
        put(&mut mbr, 3, 0, 0x0F, EXT_START, EXT_SECTORS);
        *disk.block_mut(0).unwrap() = mbr;
        let mut ebr = signed();
        put(&mut ebr, 0, 0, 0x83, 2048, 1000);
        put(&mut ebr, 1, 0, 0x05, 3048, 2952);
        *disk.block_mut(EXT_START).unwrap() = ebr;
        let mut ebr = signed();
        put(&mut ebr, 0, 0, 0x83, 2048, 904);
        *disk.block_mut(EXT_START + 3048).unwrap() = ebr;
        disk
    }

    fn link(disk: &mut RamDisk, ebr_lba: u64, kind: u8, relative: u64) {
        put(disk.block_mut(ebr_lba).unwrap(), 1, 0, kind, relative, 1);
    }

    #[test]
    fn reads_logicals_numbered_from_five() {
        let mut d = disk();
        let parts = Partitions::read(&mut d).unwrap();
        let numbers: std::vec::Vec<u8> = parts.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 5, 6]);
        let safe = parts.partition(5).unwrap();
        assert_eq!(
            (safe.start_lba, safe.sectors, safe.kind),
            (6048, 1000, 0x83)
        );
        assert_eq!(safe.partuuid().to_string(), "1a2b3c4d-05");
        let data = parts.partition(6).unwrap();
        assert_eq!((data.start_lba, data.end_lba()), (9096, 10_000));
        assert!(parts.partition(4).unwrap().is_extended());
        assert_eq!(parts.partition(7), None);
        assert_eq!(parts.logicals().len(), 2);
    }

    #[test]
    fn no_extended_partition_means_no_logicals() {
        let mut d = disk();
        d.block_mut(0).unwrap()[446 + 48 + 4] = 0;
        let parts = Partitions::read(&mut d).unwrap();
        assert_eq!(parts.iter().count(), 2);
    }

    #[test]
    fn hostile_chains_are_refused() {
        // A link back to the first EBR.
        let mut d = disk();
        link(&mut d, EXT_START + 3048, 0x05, 0);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::Loop { ebr_lba: EXT_START })
        );
        // A link to itself.
        let mut d = disk();
        link(&mut d, EXT_START + 3048, 0x05, 3048);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::Loop {
                ebr_lba: EXT_START + 3048
            })
        );
        // A link past the container (and the device).
        let mut d = disk();
        link(&mut d, EXT_START + 3048, 0x05, 0xFFFF_FFF0);
        assert!(matches!(
            Partitions::read(&mut d),
            Err(PartitionError::EbrOutside {
                container_end: 10_000,
                ..
            })
        ));
        // A link of a data type.
        let mut d = disk();
        link(&mut d, EXT_START + 3048, 0x83, 10);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::BadLinkType {
                ebr_lba: EXT_START + 3048,
                kind: 0x83
            })
        );
        // A truncated chain: the second EBR was never written.
        let mut d = disk();
        *d.block_mut(EXT_START + 3048).unwrap() = [0; 512];
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::MissingEbrSignature {
                ebr_lba: EXT_START + 3048,
                found: [0, 0]
            })
        );
        // A logical running past its container; one starting on its own EBR.
        let mut d = disk();
        put(
            d.block_mut(EXT_START + 3048).unwrap(),
            0,
            0,
            0x83,
            2048,
            905,
        );
        assert!(matches!(
            Partitions::read(&mut d),
            Err(PartitionError::LogicalOutside {
                number: 6,
                end_lba: 10_001,
                ..
            })
        ));
        let mut d = disk();
        put(d.block_mut(EXT_START).unwrap(), 0, 0, 0x83, 0, 10);
        assert!(matches!(
            Partitions::read(&mut d),
            Err(PartitionError::LogicalOutside { number: 5, .. })
        ));
        // Overlapping logicals; a bad status byte.
        let mut d = disk();
        put(d.block_mut(EXT_START + 3048).unwrap(), 0, 0, 0x83, 1, 10);
        link(&mut d, EXT_START + 3048, 0x05, 100);
        assert!(matches!(
            Partitions::read(&mut d),
            Err(PartitionError::MissingEbrSignature { .. })
        ));
        let mut d = disk();
        put(d.block_mut(EXT_START + 3048).unwrap(), 0, 0, 0x83, 1, 10);
        put(d.block_mut(EXT_START).unwrap(), 0, 0, 0x83, 2048, 2000);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::Overlap {
                first: 5,
                second: 6
            })
        );
        let mut d = disk();
        put(d.block_mut(EXT_START).unwrap(), 0, 0x7f, 0x83, 2048, 1000);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::BadStatus {
                number: 5,
                value: 0x7f
            })
        );
        // Two extended containers.
        let mut d = disk();
        put(d.block_mut(0).unwrap(), 2, 0, 0x05, 3999, 1);
        put(d.block_mut(0).unwrap(), 1, 0, 0x83, 3048, 900);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::MultipleExtended {
                first: 3,
                second: 4
            })
        );
    }

    #[test]
    fn long_chains_are_bounded() {
        // 20 EBRs, each with a one-sector logical, each linking to the next.
        let mut d = disk();
        for i in 0..20u64 {
            let mut ebr = signed();
            put(&mut ebr, 0, 0, 0x83, 1, 1);
            put(&mut ebr, 1, 0, 0x05, (i + 1) * 2, 2);
            *d.block_mut(EXT_START + i * 2).unwrap() = ebr;
        }
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::TooManyLogicals)
        );
    }

    #[test]
    fn empty_first_entries_take_no_number() {
        let mut d = disk();
        put(d.block_mut(EXT_START).unwrap(), 0, 0, 0, 0, 0);
        let parts = Partitions::read(&mut d).unwrap();
        assert_eq!(parts.partition(5).unwrap().start_lba, 9096);
    }

    #[test]
    fn device_errors_name_the_sector() {
        let mut d = disk();
        d.cut_power_at_write(0, crate::block::Tear::Complete);
        let _ = d.write_block(1, &[0; 512]);
        assert_eq!(
            Partitions::read(&mut d),
            Err(PartitionError::Device {
                lba: 0,
                error: crate::block::RamDiskError::PowerCut
            })
        );
    }
}
