//! The classic MBR: disk signature and four primary partition entries.
//!
//! Layout (the IBM PC MBR as documented e.g. in the UEFI specification, "Legacy Master Boot
//! Record"): disk signature at 440 (4 bytes), partition entries at 446 (4 × 16 bytes: status,
//! CHS start, type, CHS end, start LBA, sector count), boot signature 0x55 0xAA at 510.

use core::fmt;

use crate::block::Block;
use crate::partition::PartUuid;

const SIGNATURE_OFFSET: usize = 440;
const TABLE_OFFSET: usize = 446;
const ENTRY_SIZE: usize = 16;
/// Protective MBR type of a GPT disk.
const GPT_PROTECTIVE: u8 = 0xEE;
/// Extended partition containers (CHS, LBA, Linux), followed by [`super::extended`].
pub(crate) const EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];

/// One partition: primary (1–4) or logical (5 and up, see [`super::extended`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MbrPartition {
    /// Linux's number: 1–4 primary, 5 and up logical.
    pub number: u8,
    /// Type byte (0x0C = FAT32 LBA, 0x83 = Linux, ...).
    pub kind: u8,
    /// Status byte 0x80.
    pub bootable: bool,
    /// First sector.
    pub start_lba: u64,
    /// Number of sectors.
    pub sectors: u64,
    /// Disk signature, for the PARTUUID.
    pub disk_signature: u32,
}

impl MbrPartition {
    /// Linux's PARTUUID, e.g. `1234abcd-02`.
    pub fn partuuid(&self) -> PartUuid {
        PartUuid::Mbr {
            signature: self.disk_signature,
            number: self.number,
        }
    }

    /// One past the last sector.
    pub fn end_lba(&self) -> u64 {
        self.start_lba + self.sectors
    }

    /// Whether this is an extended-partition container (its logical partitions are read by
    /// [`super::Partitions::read`]).
    pub fn is_extended(&self) -> bool {
        EXTENDED.contains(&self.kind)
    }
}

/// A parsed MBR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mbr {
    /// Disk signature (offset 440).
    pub disk_signature: u32,
    entries: [Option<MbrPartition>; 4],
}

/// Why sector 0 is not a usable MBR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MbrError {
    /// Bytes 510–511 are not 0x55 0xAA.
    MissingBootSignature { found: [u8; 2] },
    /// A protective MBR (type 0xEE entry): the disk is GPT; [`super::Partitions::read`]
    /// reads it when the entry starts at LBA 1.
    GptNotSupported,
    /// A status byte other than 0x00 or 0x80.
    BadStatus { number: u8, value: u8 },
    /// A used entry starting at sector 0 or with zero sectors.
    EmptyOrAtZero {
        number: u8,
        start_lba: u64,
        sectors: u64,
    },
    /// The partition ends past the device.
    PastDeviceEnd {
        number: u8,
        end_lba: u64,
        device_blocks: u64,
    },
    /// Two partitions overlap.
    Overlap { first: u8, second: u8 },
}

impl core::error::Error for MbrError {}

impl fmt::Display for MbrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MbrError::MissingBootSignature { found } => {
                write!(f, "no MBR: boot signature {found:02x?}, expected [55, aa]")
            }
            MbrError::GptNotSupported => f.write_str(
                "protective MBR (type 0xEE): a GPT disk, read as one only when that entry \
                     starts at LBA 1",
            ),
            MbrError::BadStatus { number, value } => {
                write!(
                    f,
                    "partition {number}: status byte {value:#04x} is neither 0x00 nor 0x80"
                )
            }
            MbrError::EmptyOrAtZero {
                number,
                start_lba,
                sectors,
            } => write!(
                f,
                "partition {number}: start LBA {start_lba}, {sectors} sectors is not a valid extent"
            ),
            MbrError::PastDeviceEnd {
                number,
                end_lba,
                device_blocks,
            } => write!(
                f,
                "partition {number} ends at sector {end_lba}, past the device's {device_blocks} sectors"
            ),
            MbrError::Overlap { first, second } => {
                write!(f, "partitions {first} and {second} overlap")
            }
        }
    }
}

fn le32(b: &Block, at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    if let Some(src) = b.get(at..at + 4) {
        bytes.copy_from_slice(src);
    }
    u32::from_le_bytes(bytes)
}

impl Mbr {
    /// Parses sector 0, checking every used entry against `device_blocks`.
    pub fn parse(sector: &Block, device_blocks: u64) -> Result<Self, MbrError> {
        let found = [
            sector.get(510).copied().unwrap_or(0),
            sector.get(511).copied().unwrap_or(0),
        ];
        if found != [0x55, 0xAA] {
            return Err(MbrError::MissingBootSignature { found });
        }
        let disk_signature = le32(sector, SIGNATURE_OFFSET);
        let mut entries = [None; 4];
        for (index, entry) in entries.iter_mut().enumerate() {
            let at = TABLE_OFFSET + index * ENTRY_SIZE;
            let number = index as u8 + 1;
            let status = sector.get(at).copied().unwrap_or(0);
            let kind = sector.get(at + 4).copied().unwrap_or(0);
            if kind == 0 {
                continue;
            }
            if kind == GPT_PROTECTIVE {
                return Err(MbrError::GptNotSupported);
            }
            if status != 0x00 && status != 0x80 {
                return Err(MbrError::BadStatus {
                    number,
                    value: status,
                });
            }
            let start_lba = u64::from(le32(sector, at + 8));
            let sectors = u64::from(le32(sector, at + 12));
            if start_lba == 0 || sectors == 0 {
                return Err(MbrError::EmptyOrAtZero {
                    number,
                    start_lba,
                    sectors,
                });
            }
            if start_lba + sectors > device_blocks {
                return Err(MbrError::PastDeviceEnd {
                    number,
                    end_lba: start_lba + sectors,
                    device_blocks,
                });
            }
            *entry = Some(MbrPartition {
                number,
                kind,
                bootable: status == 0x80,
                start_lba,
                sectors,
                disk_signature,
            });
        }
        for (i, a) in entries.iter().enumerate() {
            for b in entries.iter().skip(i + 1) {
                if let (Some(a), Some(b)) = (a, b)
                    && a.start_lba < b.end_lba()
                    && b.start_lba < a.end_lba()
                {
                    return Err(MbrError::Overlap {
                        first: a.number,
                        second: b.number,
                    });
                }
            }
        }
        Ok(Self {
            disk_signature,
            entries,
        })
    }

    /// Used partitions in table order.
    pub fn partitions(&self) -> impl Iterator<Item = MbrPartition> + '_ {
        self.entries.iter().flatten().copied()
    }

    /// Partition `number` (1–4).
    pub fn partition(&self, number: u8) -> Option<MbrPartition> {
        self.partitions().find(|p| p.number == number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn entry(sector: &mut Block, index: usize, status: u8, kind: u8, start: u32, count: u32) {
        let at = TABLE_OFFSET + index * ENTRY_SIZE;
        sector[at] = status;
        sector[at + 4] = kind;
        sector[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        sector[at + 12..at + 16].copy_from_slice(&count.to_le_bytes());
    }

    fn disk() -> Block {
        let mut sector = [0u8; 512];
        sector[440..444].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
        entry(&mut sector, 0, 0x80, 0x0C, 2048, 100_000);
        entry(&mut sector, 1, 0x00, 0x83, 102_048, 50_000);
        sector
    }

    #[test]
    fn parses_primary_partitions_and_partuuid() {
        let mbr = Mbr::parse(&disk(), 200_000).unwrap();
        let boot = mbr.partition(1).unwrap();
        assert!(boot.bootable);
        assert_eq!(
            (boot.start_lba, boot.sectors, boot.kind),
            (2048, 100_000, 0x0C)
        );
        assert_eq!(
            mbr.partition(2).unwrap().partuuid().to_string(),
            "1234abcd-02"
        );
        assert_eq!(mbr.partitions().count(), 2);
    }

    #[test]
    fn rejects_bad_tables_with_data() {
        let mut s = disk();
        s[511] = 0;
        assert_eq!(
            Mbr::parse(&s, 200_000),
            Err(MbrError::MissingBootSignature { found: [0x55, 0] })
        );
        assert_eq!(
            Mbr::parse(&disk(), 150_000),
            Err(MbrError::PastDeviceEnd {
                number: 2,
                end_lba: 152_048,
                device_blocks: 150_000
            })
        );
        let mut s = disk();
        entry(&mut s, 2, 0, 0x83, 3000, 10);
        assert_eq!(
            Mbr::parse(&s, 200_000),
            Err(MbrError::Overlap {
                first: 1,
                second: 3
            })
        );
        let mut s = disk();
        entry(&mut s, 3, 0x12, 0x83, 190_000, 10);
        assert_eq!(
            Mbr::parse(&s, 200_000),
            Err(MbrError::BadStatus {
                number: 4,
                value: 0x12
            })
        );
        let mut s = disk();
        entry(&mut s, 0, 0, 0xEE, 1, 199_999);
        assert_eq!(Mbr::parse(&s, 200_000), Err(MbrError::GptNotSupported));
    }
}
