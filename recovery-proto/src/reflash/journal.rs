//! The reflash journal: two sectors outside every partition that say a reflash is under way.
//!
//! A reflash rewrites the partition table and the boot partition, so a journal kept inside
//! them (the slot state) does not exist on a blank eMMC and is overwritten by the image's
//! own state while the boot partition is written. This journal lives in two fixed sectors,
//! [`JOURNAL_LBAS`], in the gap between the partition table and the first partition, which
//! no partition, file system or image region covers. It is the first sector a reflash
//! writes and the last it clears, so from the first write to the end a power-on sees it.
//!
//! The two copies work as the slot-state store does (`store.rs`): each record carries a
//! sequence number and a CRC-32, a write always replaces the older (or invalid) copy, and a
//! read takes the newest valid one, so a torn write leaves either the record before it or
//! the one it was writing.
//!
//! # Record layout (version 1, little-endian)
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `ZBREFLSH` |
//! | 8 | 2 | version (1) |
//! | 10 | 1 | phase: 0 idle (no reflash), 1 writing |
//! | 11 | 1 | flags: bit 0 a DATA extent is kept, bit 1 a signing key is recorded |
//! | 12 | 4 | sequence number (RFC 1982 serial arithmetic) |
//! | 16 | 32 | image identity (SHA-256 of the `.zi` header) |
//! | 48 | 4 | next region to write |
//! | 52 | 4 | regions in the image |
//! | 56 | 8 | kept DATA: first LBA |
//! | 64 | 8 | kept DATA: sectors |
//! | 72 | 32 | the public key the image was verified with |
//! | 104 | 11 | the image's 8.3 name on the stick (space-padded, as in a FAT directory) |
//! | 115 | 393 | reserved, zero |
//! | 508 | 4 | CRC-32 (IEEE) of bytes 0..508 |
//!
//! Clearing writes an idle record over the older copy, then zeroes the newer one and then
//! the other: afterwards both sectors read as zeros, as on a disk that never had a journal,
//! and at every step in between the newest valid copy is either a "writing" record or idle.

use core::fmt;

use crate::block::{BLOCK_SIZE, Block, BlockDevice};
use crate::store::sequence_newer;

/// Where the two copies live: 32 KiB into the disk, after the MBR (LBA 0) or the GPT's
/// primary header and entry array (LBAs 1–33), before the first partition, which standard
/// partitioners align to 1 MiB (LBA 2048) and Raspberry Pi OS images start at 4 MiB.
pub const JOURNAL_LBAS: [u64; 2] = [64, 65];

/// Record magic.
pub const MAGIC: [u8; 8] = *b"ZBREFLSH";
/// The record version this code writes and reads.
pub const VERSION: u16 = 1;

const CRC_OFFSET: usize = BLOCK_SIZE - 4;
const PHASE_IDLE: u8 = 0;
const PHASE_WRITING: u8 = 1;
const FLAG_KEPT: u8 = 1 << 0;
const FLAG_KEY: u8 = 1 << 1;
const NAME_OFFSET: usize = 104;
const NAME_SIZE: usize = 11;
const RESERVED: core::ops::Range<usize> = NAME_OFFSET + NAME_SIZE..CRC_OFFSET;

/// A partition extent (first LBA and length in sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First sector.
    pub start_lba: u64,
    /// Length in sectors.
    pub sectors: u64,
}

/// A reflash under way, as the journal records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The image being written (its [`crate::image::Image::id`]).
    pub image: [u8; 32],
    /// Regions before this one are on the disk.
    pub next_region: u32,
    /// Regions in the image: `next_region == regions` means every region is written and
    /// only the fresh slot state and the clearing of the journal are left.
    pub regions: u32,
    /// The DATA partition that held the user's data when this reflash began and that the
    /// image leaves in place: it is never written. `None` when there was none, or when the
    /// image's DATA is written (this reflash creates or moves it).
    pub kept_data: Option<Extent>,
    /// The key the image's signature was checked against (None: it was not required).
    pub key: Option<[u8; 32]>,
    /// The image's name on the stick, as an 8.3 directory name (all spaces: not recorded).
    pub stick_name: [u8; NAME_SIZE],
}

impl Entry {
    /// Whether every region is written (only the finishing steps are left).
    pub fn all_written(&self) -> bool {
        self.next_region >= self.regions
    }

    /// The stick name as text (`ZBOOT.ZI`), if one was recorded.
    pub fn stick_name(&self, out: &mut [u8; 12]) -> Option<usize> {
        let (base, extension) = self.stick_name.split_at(8);
        let base_len = base.iter().rposition(|&b| b != b' ')? + 1;
        let extension_len = extension
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(0, |at| at + 1);
        let mut length = 0;
        for &byte in base.iter().take(base_len) {
            *out.get_mut(length)? = byte;
            length += 1;
        }
        if extension_len > 0 {
            *out.get_mut(length)? = b'.';
            length += 1;
            for &byte in extension.iter().take(extension_len) {
                *out.get_mut(length)? = byte;
                length += 1;
            }
        }
        // Only printable ASCII is a name: anything else came from a damaged record.
        out.get(..length)?
            .iter()
            .all(u8::is_ascii_graphic)
            .then_some(length)
    }
}

/// What one copy holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// No reflash is under way.
    Idle,
    /// A reflash is under way.
    Writing(Entry),
}

/// Why a sector does not hold a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// All zeros: no record was ever written (or it was cleared).
    Empty,
    /// Not the journal's magic.
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion(u16),
    /// The CRC does not match.
    BadCrc { expected: u32, found: u32 },
    /// A field out of range or a reserved byte not zero (at this offset).
    BadField { at: usize },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty"),
            Self::BadMagic => f.write_str("no journal record"),
            Self::UnsupportedVersion(version) => {
                write!(
                    f,
                    "journal version {version} is not supported (this reader knows {VERSION})"
                )
            }
            Self::BadCrc { expected, found } => {
                write!(
                    f,
                    "CRC mismatch (stored {expected:#010x}, computed {found:#010x})"
                )
            }
            Self::BadField { at } => write!(f, "bad field at byte {at}"),
        }
    }
}

impl Record {
    /// The 512-byte sector for this record with `sequence`.
    pub fn encode(&self, sequence: u32) -> Block {
        let mut block = [0u8; BLOCK_SIZE];
        put(&mut block, 0, &MAGIC);
        put(&mut block, 8, &VERSION.to_le_bytes());
        put(&mut block, 12, &sequence.to_le_bytes());
        if let Record::Writing(entry) = self {
            let mut flags = 0;
            if entry.kept_data.is_some() {
                flags |= FLAG_KEPT;
            }
            if entry.key.is_some() {
                flags |= FLAG_KEY;
            }
            put(&mut block, 10, &[PHASE_WRITING, flags]);
            put(&mut block, 16, &entry.image);
            put(&mut block, 48, &entry.next_region.to_le_bytes());
            put(&mut block, 52, &entry.regions.to_le_bytes());
            if let Some(kept) = entry.kept_data {
                put(&mut block, 56, &kept.start_lba.to_le_bytes());
                put(&mut block, 64, &kept.sectors.to_le_bytes());
            }
            if let Some(key) = entry.key {
                put(&mut block, 72, &key);
            }
            put(&mut block, NAME_OFFSET, &entry.stick_name);
        }
        let crc = crc32fast::hash(block.get(..CRC_OFFSET).unwrap_or_default());
        put(&mut block, CRC_OFFSET, &crc.to_le_bytes());
        block
    }

    /// Decodes a sector: the record and its sequence number.
    pub fn decode(block: &Block) -> Result<(Self, u32), RecordError> {
        if block.iter().all(|&b| b == 0) {
            return Err(RecordError::Empty);
        }
        if block.get(..8) != Some(&MAGIC[..]) {
            return Err(RecordError::BadMagic);
        }
        let expected = u32_at(block, CRC_OFFSET);
        let found = crc32fast::hash(block.get(..CRC_OFFSET).unwrap_or_default());
        if expected != found {
            return Err(RecordError::BadCrc { expected, found });
        }
        let version = u16::from_le_bytes([byte(block, 8), byte(block, 9)]);
        if version != VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        if let Some(at) = RESERVED.clone().find(|&at| byte(block, at) != 0) {
            return Err(RecordError::BadField { at });
        }
        let sequence = u32_at(block, 12);
        let (phase, flags) = (byte(block, 10), byte(block, 11));
        match phase {
            PHASE_IDLE => {
                // An idle record carries nothing else.
                if let Some(at) = (11..12)
                    .chain(16..CRC_OFFSET)
                    .find(|&at| byte(block, at) != 0)
                {
                    return Err(RecordError::BadField { at });
                }
                Ok((Record::Idle, sequence))
            }
            PHASE_WRITING => {
                if flags & !(FLAG_KEPT | FLAG_KEY) != 0 {
                    return Err(RecordError::BadField { at: 11 });
                }
                let next_region = u32_at(block, 48);
                let regions = u32_at(block, 52);
                if next_region > regions {
                    return Err(RecordError::BadField { at: 48 });
                }
                let kept_data = (flags & FLAG_KEPT != 0).then(|| Extent {
                    start_lba: u64_at(block, 56),
                    sectors: u64_at(block, 64),
                });
                if kept_data.is_none() && (56..72).any(|at| byte(block, at) != 0) {
                    return Err(RecordError::BadField { at: 56 });
                }
                let mut key = [0u8; 32];
                key.copy_from_slice(block.get(72..104).unwrap_or(&[0; 32]));
                let key = if flags & FLAG_KEY != 0 {
                    Some(key)
                } else if key != [0; 32] {
                    return Err(RecordError::BadField { at: 72 });
                } else {
                    None
                };
                let mut image = [0u8; 32];
                image.copy_from_slice(block.get(16..48).unwrap_or(&[0; 32]));
                let mut stick_name = [0u8; NAME_SIZE];
                stick_name.copy_from_slice(
                    block
                        .get(NAME_OFFSET..NAME_OFFSET + NAME_SIZE)
                        .unwrap_or(&[0; NAME_SIZE]),
                );
                Ok((
                    Record::Writing(Entry {
                        image,
                        next_region,
                        regions,
                        kept_data,
                        key,
                        stick_name,
                    }),
                    sequence,
                ))
            }
            _ => Err(RecordError::BadField { at: 10 }),
        }
    }
}

fn put(block: &mut Block, at: usize, bytes: &[u8]) {
    if let Some(target) = block.get_mut(at..at + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

fn byte(block: &Block, at: usize) -> u8 {
    block.get(at).copied().unwrap_or(0)
}

fn u32_at(block: &Block, at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(block.get(at..at + 4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(bytes)
}

fn u64_at(block: &Block, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(block.get(at..at + 8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(bytes)
}

/// The newest valid copy, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Newest {
    copy: usize,
    sequence: u32,
    record: Record,
}

/// The journal's two copies on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskJournal {
    lbas: [u64; 2],
    newest: Option<Newest>,
    loaded: bool,
}

impl Default for DiskJournal {
    fn default() -> Self {
        Self::new(JOURNAL_LBAS)
    }
}

impl DiskJournal {
    /// A journal whose copies live at `lbas` (two distinct sectors).
    pub const fn new(lbas: [u64; 2]) -> Self {
        Self {
            lbas,
            newest: None,
            loaded: false,
        }
    }

    /// The two LBAs.
    pub const fn lbas(&self) -> [u64; 2] {
        self.lbas
    }

    /// Reads both copies: the reflash under way, if the newest valid copy says so.
    pub fn load<D: BlockDevice>(&mut self, device: &mut D) -> Result<Option<Entry>, D::Error> {
        let mut found: [Option<(Record, u32)>; 2] = [None, None];
        for (slot, &lba) in found.iter_mut().zip(self.lbas.iter()) {
            let mut block = [0u8; BLOCK_SIZE];
            device.read_block(lba, &mut block)?;
            *slot = Record::decode(&block).ok();
        }
        let newest = match found {
            [Some((a, sa)), Some((b, sb))] => Some(if sequence_newer(sb, sa) {
                (1, sb, b)
            } else {
                (0, sa, a)
            }),
            [Some((a, sa)), None] => Some((0, sa, a)),
            [None, Some((b, sb))] => Some((1, sb, b)),
            [None, None] => None,
        };
        self.newest = newest.map(|(copy, sequence, record)| Newest {
            copy,
            sequence,
            record,
        });
        self.loaded = true;
        Ok(self.current())
    }

    /// The reflash under way as last loaded or recorded.
    pub fn current(&self) -> Option<Entry> {
        match self.newest {
            Some(Newest {
                record: Record::Writing(entry),
                ..
            }) => Some(entry),
            _ => None,
        }
    }

    /// Writes `record` over the older copy (one sector).
    fn write<D: BlockDevice>(&mut self, device: &mut D, record: Record) -> Result<(), D::Error> {
        if !self.loaded {
            // Never guess which copy is safe to overwrite.
            self.load(device)?;
        }
        let (copy, sequence) = match self.newest {
            Some(newest) => (1 - newest.copy, newest.sequence.wrapping_add(1)),
            None => (0, 1),
        };
        let lba = self.lbas.get(copy).copied().unwrap_or(self.lbas[0]);
        device.write_block(lba, &record.encode(sequence))?;
        self.newest = Some(Newest {
            copy,
            sequence,
            record,
        });
        Ok(())
    }

    /// Records `entry` (one sector write).
    pub fn record<D: BlockDevice>(
        &mut self,
        device: &mut D,
        entry: &Entry,
    ) -> Result<(), D::Error> {
        self.write(device, Record::Writing(*entry))
    }

    /// Ends the reflash: an idle record over the older copy, then both sectors zeroed
    /// (newest first), so the journal reads as never written. Three sector writes.
    pub fn clear<D: BlockDevice>(&mut self, device: &mut D) -> Result<(), D::Error> {
        self.write(device, Record::Idle)?;
        let copy = self.newest.map_or(0, |newest| newest.copy);
        let zero = [0u8; BLOCK_SIZE];
        let [first, second] = if copy == 0 {
            self.lbas
        } else {
            [self.lbas[1], self.lbas[0]]
        };
        // The other copy (a "writing" record) goes first: the idle copy stays the newest
        // valid one until it, too, is zeroed, and then nothing valid is left.
        device.write_block(second, &zero)?;
        device.write_block(first, &zero)?;
        self.newest = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{RamDisk, Tear};

    fn entry(next: u32) -> Entry {
        Entry {
            image: [7; 32],
            next_region: next,
            regions: 10,
            kept_data: Some(Extent {
                start_lba: 4096,
                sectors: 100,
            }),
            key: Some([3; 32]),
            stick_name: *b"ZBOOT   ZI ",
        }
    }

    #[test]
    fn records_round_trip() {
        for record in [
            Record::Idle,
            Record::Writing(entry(4)),
            Record::Writing(Entry {
                kept_data: None,
                key: None,
                ..entry(0)
            }),
        ] {
            assert_eq!(Record::decode(&record.encode(9)), Ok((record, 9)));
        }
        let mut name = [0u8; 12];
        let length = entry(0).stick_name(&mut name).unwrap();
        assert_eq!(&name[..length], b"ZBOOT.ZI");
    }

    #[test]
    fn damaged_records_are_refused_with_the_reason() {
        assert_eq!(Record::decode(&[0; BLOCK_SIZE]), Err(RecordError::Empty));
        let good = Record::Writing(entry(4)).encode(1);
        let mut bad = good;
        bad[50] ^= 1;
        assert!(matches!(
            Record::decode(&bad),
            Err(RecordError::BadCrc { .. })
        ));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(Record::decode(&bad), Err(RecordError::BadMagic));
        // A field out of range, with a correct CRC: next region past the count.
        let mut bad = good;
        bad[48..52].copy_from_slice(&11u32.to_le_bytes());
        let crc = crc32fast::hash(&bad[..CRC_OFFSET]);
        bad[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Record::decode(&bad), Err(RecordError::BadField { at: 48 }));
        let mut bad = good;
        bad[200] = 1;
        let crc = crc32fast::hash(&bad[..CRC_OFFSET]);
        bad[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Record::decode(&bad), Err(RecordError::BadField { at: 200 }));
    }

    #[test]
    fn the_newest_copy_wins_and_a_clear_leaves_zeros() {
        let mut disk = RamDisk::new(128);
        let mut journal = DiskJournal::default();
        assert_eq!(journal.load(&mut disk), Ok(None));
        for next in 0..5 {
            journal.record(&mut disk, &entry(next)).unwrap();
            let mut again = DiskJournal::default();
            assert_eq!(again.load(&mut disk), Ok(Some(entry(next))));
        }
        journal.clear(&mut disk).unwrap();
        for lba in JOURNAL_LBAS {
            assert!(disk.block_mut(lba).unwrap().iter().all(|&b| b == 0));
        }
        assert_eq!(DiskJournal::default().load(&mut disk), Ok(None));
    }

    #[test]
    fn a_cut_at_any_journal_write_leaves_the_old_or_the_new_record() {
        // A history: two progress records, then a clear (three writes). After a cut at
        // any of its writes, torn any way, the journal reads as the record before that
        // write or the one after it; a clear never brings back an older position.
        let script = |journal: &mut DiskJournal, disk: &mut RamDisk| -> Result<(), ()> {
            journal.record(disk, &entry(1)).map_err(|_| ())?;
            journal.record(disk, &entry(2)).map_err(|_| ())?;
            journal.clear(disk).map_err(|_| ())
        };
        let total = {
            let mut disk = RamDisk::new(128);
            script(&mut DiskJournal::default(), &mut disk).unwrap();
            disk.writes()
        };
        assert_eq!(total, 5);
        // What a reader may see after each write completes: None, 1, 2, idle, idle, none.
        let after: [Option<u32>; 6] = [None, Some(1), Some(2), None, None, None];
        for cut in 0..total {
            for tear in [
                Tear::NotWritten,
                Tear::Prefix(100),
                Tear::Garbage(cut as u64 + 5),
                Tear::Complete,
            ] {
                let mut disk = RamDisk::new(128);
                disk.cut_power_at_write(cut, tear);
                assert!(script(&mut DiskJournal::default(), &mut disk).is_err());
                disk.power_on();
                let seen = DiskJournal::default()
                    .load(&mut disk)
                    .unwrap()
                    .map(|e| e.next_region);
                assert!(
                    seen == after[cut] || seen == after[cut + 1],
                    "cut at write {cut} ({tear:?}): {seen:?}"
                );
            }
        }
    }
}
