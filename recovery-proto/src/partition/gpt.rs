//! GUID partition tables: protective MBR, primary or backup header, entry array.
//!
//! Layout (UEFI Specification 2.x, §5.2.3 "Protective MBR", §5.3.2 "GPT Header",
//! §5.3.3 "GPT Partition Entry Array"), all integers little-endian:
//!
//! - LBA 0: a protective MBR whose entry of type 0xEE starts at LBA 1.
//! - LBA 1: the primary header: "EFI PART" (0), revision (8, 0x0001_0000 for 1.0), header
//!   size (12), header CRC32 over `header size` bytes with this field zeroed (16), reserved
//!   (20), my LBA (24), alternate LBA (32), first (40) and last (48) usable LBA, disk GUID
//!   (56), entry array LBA (72), entry count (80), entry size (84, 128 × 2^n), entry array
//!   CRC32 (88).
//! - The entry array (usually LBA 2–33): per entry the type GUID (0, all zero = unused),
//!   unique GUID (16), first (32) and last (40, inclusive) LBA, attributes (48), name (56,
//!   36 UTF-16LE units).
//! - The last LBA: the backup header, its own entry array just before it.
//!
//! Everything on the disk is untrusted: each header is checked field by field (the
//! spec's validation rules in §5.3.2, plus the bounds zboot needs to read with fixed
//! memory), and when the primary fails the backup at the device's last LBA is tried, the
//! way firmware and Linux recover from a damaged start of the disk. [`Gpt::source`] says
//! which copy was used and [`Gpt::primary_fault`] why the primary was not.
//!
//! Partition numbers follow Linux (`block/partitions/efi.c`): entry index + 1, unused
//! entries keep their number, so a table with a hole still names `p3` as entry 3.
//! The PARTUUID is the entry's unique GUID as Linux prints it (`%pUl`): lower-case, the
//! first three groups byte-swapped from their little-endian storage.

use core::fmt;

use crate::block::{BLOCK_SIZE, Block, BlockDevice};

/// "EFI PART", the header signature.
pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// Revision 1.0, the only major revision defined.
pub const REVISION_1_0: u32 = 0x0001_0000;
/// The header's size in revision 1.0 (the rest of its sector is reserved, zero).
pub const HEADER_SIZE: u32 = 92;
/// The entry size every tool writes (the spec allows 128 × 2^n).
pub const ENTRY_SIZE: u32 = 128;
/// Entries in the arrays tools write: the spec's minimum array of 16 KiB.
pub const DEFAULT_ENTRY_COUNT: u32 = 128;
/// Entries read at most: a larger array is refused rather than read without bound (1024
/// entries of 128 bytes are 256 sectors).
pub const MAX_ENTRIES: u32 = 1024;
/// Used partitions kept at most (zboot's layout has five).
pub const MAX_GPT_PARTITIONS: usize = 16;
/// MBR type of the protective entry.
pub const PROTECTIVE_TYPE: u8 = 0xEE;

/// A GUID as it is stored on the disk (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// All zero: the type of an unused entry.
    pub const ZERO: Self = Self([0; 16]);

    /// The GUID written `data1-data2-data3-data4[0..2]-data4[2..8]`.
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        let a = data1.to_le_bytes();
        let b = data2.to_le_bytes();
        let c = data3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], data4[0], data4[1], data4[2], data4[3],
            data4[4], data4[5], data4[6], data4[7],
        ])
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    /// Linux's `%pUl` form: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Text order of the stored bytes: the first three fields are little-endian.
        const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
        for (position, &index) in ORDER.iter().enumerate() {
            if matches!(position, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{:02x}", self.0.get(index).copied().unwrap_or(0))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Microsoft basic data (FAT, NTFS): what the Pi firmware looks for as a boot partition.
pub const BASIC_DATA: Guid = Guid::from_fields(
    0xEBD0_A0A2,
    0xB9E5,
    0x4433,
    [0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7],
);
/// EFI system partition (§5.3.3, Table 5-7); the firmware boots from it too.
pub const EFI_SYSTEM: Guid = Guid::from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// Linux file system data (the Discoverable Partitions Specification's generic type).
pub const LINUX_FILESYSTEM: Guid = Guid::from_fields(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// One used entry of the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GptPartition {
    /// Linux's number: entry index + 1.
    pub number: u8,
    /// Partition type GUID.
    pub kind: Guid,
    /// Unique partition GUID: the PARTUUID.
    pub unique: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive, as stored).
    pub last_lba: u64,
    /// Attribute bits (bit 2: legacy BIOS bootable).
    pub attributes: u64,
    /// The name as stored: 36 UTF-16 code units, NUL-padded.
    pub name: [u16; 36],
}

impl GptPartition {
    /// Number of sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }

    /// The name up to its first NUL; unpaired surrogates read as U+FFFD.
    pub fn name_chars(&self) -> impl Iterator<Item = char> + '_ {
        let units = self.name.iter().copied().take_while(|&unit| unit != 0);
        char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    /// Whether the Pi firmware would take it for its boot partition.
    pub fn is_boot_type(&self) -> bool {
        self.kind == BASIC_DATA || self.kind == EFI_SYSTEM
    }
}

/// Which of the two headers a table was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCopy {
    /// At LBA 1.
    Primary,
    /// At the device's last LBA.
    Backup,
}

impl fmt::Display for HeaderCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Backup => "backup",
        })
    }
}

/// Why one header (with its entry array) is unusable; `lba` is the header's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The first 8 bytes are not "EFI PART".
    BadSignature { lba: u64, found: [u8; 8] },
    /// A major revision other than 1.
    UnsupportedRevision { lba: u64, found: u32 },
    /// Header size below 92 or beyond its sector.
    BadHeaderSize { lba: u64, size: u32 },
    /// The header CRC32 does not match its bytes.
    HeaderCrcMismatch { expected: u32, found: u32, lba: u64 },
    /// "My LBA" is not where the header was read from.
    WrongMyLba { lba: u64, found: u64 },
    /// The usable range is empty, covers a header or leaves the device.
    BadUsableRange {
        lba: u64,
        first_usable: u64,
        last_usable: u64,
        device_blocks: u64,
    },
    /// Entry size not 128, 256 or 512 bytes.
    BadEntrySize { lba: u64, size: u32 },
    /// No entries, or more than [`MAX_ENTRIES`].
    BadEntryCount { lba: u64, count: u32 },
    /// The entry array overlaps a header or the usable range, or leaves the device.
    EntryArrayOutside {
        lba: u64,
        array_lba: u64,
        array_sectors: u64,
        device_blocks: u64,
    },
    /// The entry array's CRC32 does not match its bytes.
    EntryArrayCrcMismatch { expected: u32, found: u32, lba: u64 },
    /// A used entry that ends before it starts or lies outside the usable range.
    EntryOutside {
        number: u32,
        first_lba: u64,
        last_lba: u64,
        first_usable: u64,
        last_usable: u64,
    },
    /// Two used entries overlap.
    Overlap { first: u8, second: u8 },
    /// More than [`MAX_GPT_PARTITIONS`] used entries, or one numbered above 255.
    TooManyPartitions { number: u32 },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::BadSignature { lba, found } => write!(
                f,
                "GPT header at LBA {lba}: signature {found:02x?} is not \"EFI PART\""
            ),
            HeaderError::UnsupportedRevision { lba, found } => write!(
                f,
                "GPT header at LBA {lba}: revision {found:#010x}, expected major revision 1"
            ),
            HeaderError::BadHeaderSize { lba, size } => write!(
                f,
                "GPT header at LBA {lba}: header size {size} is outside {HEADER_SIZE}..={BLOCK_SIZE}"
            ),
            HeaderError::HeaderCrcMismatch {
                expected,
                found,
                lba,
            } => write!(
                f,
                "GPT header at LBA {lba}: header CRC32 {found:#010x}, stored {expected:#010x}"
            ),
            HeaderError::WrongMyLba { lba, found } => {
                write!(f, "GPT header at LBA {lba} says it is at LBA {found}")
            }
            HeaderError::BadUsableRange {
                lba,
                first_usable,
                last_usable,
                device_blocks,
            } => write!(
                f,
                "GPT header at LBA {lba}: usable LBAs {first_usable}..={last_usable} do not fit \
                 between the headers of a {device_blocks}-sector device"
            ),
            HeaderError::BadEntrySize { lba, size } => write!(
                f,
                "GPT header at LBA {lba}: entry size {size} is not 128, 256 or 512"
            ),
            HeaderError::BadEntryCount { lba, count } => write!(
                f,
                "GPT header at LBA {lba}: {count} entries, expected 1..={MAX_ENTRIES}"
            ),
            HeaderError::EntryArrayOutside {
                lba,
                array_lba,
                array_sectors,
                device_blocks,
            } => write!(
                f,
                "GPT header at LBA {lba}: entry array at LBA {array_lba} ({array_sectors} \
                 sectors) overlaps a header or the usable range, or leaves the \
                 {device_blocks}-sector device"
            ),
            HeaderError::EntryArrayCrcMismatch {
                expected,
                found,
                lba,
            } => write!(
                f,
                "GPT header at LBA {lba}: entry array CRC32 {found:#010x}, stored {expected:#010x}"
            ),
            HeaderError::EntryOutside {
                number,
                first_lba,
                last_lba,
                first_usable,
                last_usable,
            } => write!(
                f,
                "GPT partition {number}: LBAs {first_lba}..={last_lba} are not a range inside the \
                 usable LBAs {first_usable}..={last_usable}"
            ),
            HeaderError::Overlap { first, second } => {
                write!(f, "GPT partitions {first} and {second} overlap")
            }
            HeaderError::TooManyPartitions { number } => write!(
                f,
                "GPT partition {number}: more than {MAX_GPT_PARTITIONS} used entries, or \
                 numbered beyond 255"
            ),
        }
    }
}

/// Why a disk's GPT could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptError<E> {
    /// Reading a sector failed (not taken for corruption: no fallback to the backup).
    Device { lba: u64, error: E },
    /// Sector 0 has no 0x55 0xAA signature or no 0xEE entry starting at LBA 1.
    NotProtective,
    /// Too small to hold a protective MBR, two headers and two entry arrays.
    DeviceTooSmall { device_blocks: u64 },
    /// Both headers are unusable.
    BothHeadersBad {
        primary: HeaderError,
        backup: HeaderError,
    },
}

impl<E: fmt::Debug> core::error::Error for GptError<E> {}

impl<E: fmt::Debug> fmt::Display for GptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::Device { lba, error } => write!(f, "reading sector {lba}: {error:?}"),
            GptError::NotProtective => f.write_str(
                "sector 0 is not a protective MBR (no 0xEE entry at LBA 1 with signature 55 aa)",
            ),
            GptError::DeviceTooSmall { device_blocks } => {
                write!(f, "a {device_blocks}-sector device cannot hold a GPT")
            }
            GptError::BothHeadersBad { primary, backup } => {
                write!(f, "no usable GPT header: {primary}; {backup}")
            }
        }
    }
}

/// A GPT read from a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// The disk GUID.
    pub disk_guid: Guid,
    /// The header used.
    pub source: HeaderCopy,
    /// Why the primary header was refused, when the backup was used.
    pub primary_fault: Option<HeaderError>,
    /// The LBA of the header used.
    pub header_lba: u64,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA (inclusive).
    pub last_usable_lba: u64,
    partitions: heapless::Vec<GptPartition, MAX_GPT_PARTITIONS>,
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|slice| slice.try_into().ok())
        .unwrap_or([0; N])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(field(bytes, at))
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(field(bytes, at))
}

/// Whether sector 0 is a protective MBR: boot signature and an 0xEE entry starting at
/// LBA 1 (other entries beside it, a "hybrid MBR", are tolerated as Linux does).
pub fn is_protective_mbr(sector0: &Block) -> bool {
    if field::<2>(sector0, 510) != [0x55, 0xAA] {
        return false;
    }
    (0..4).any(|index| {
        let at = 446 + index * 16;
        sector0.get(at + 4) == Some(&PROTECTIVE_TYPE) && le32(sector0, at + 8) == 1
    })
}

/// The header fields zboot uses, after the header-level checks.
struct Header {
    disk_guid: Guid,
    first_usable: u64,
    last_usable: u64,
    array_lba: u64,
    count: u32,
    entry_size: u32,
    array_crc: u32,
}

fn parse_header(sector: &Block, lba: u64, device_blocks: u64) -> Result<Header, HeaderError> {
    let found: [u8; 8] = field(sector, 0);
    if found != SIGNATURE {
        return Err(HeaderError::BadSignature { lba, found });
    }
    let revision = le32(sector, 8);
    if revision >> 16 != REVISION_1_0 >> 16 {
        return Err(HeaderError::UnsupportedRevision {
            lba,
            found: revision,
        });
    }
    let size = le32(sector, 12);
    if size < HEADER_SIZE || size as usize > BLOCK_SIZE {
        return Err(HeaderError::BadHeaderSize { lba, size });
    }
    let expected = le32(sector, 16);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(sector.get(..16).unwrap_or_default());
    hasher.update(&[0; 4]);
    hasher.update(sector.get(20..size as usize).unwrap_or_default());
    let found = hasher.finalize();
    if found != expected {
        return Err(HeaderError::HeaderCrcMismatch {
            expected,
            found,
            lba,
        });
    }
    let my_lba = le64(sector, 24);
    if my_lba != lba {
        return Err(HeaderError::WrongMyLba { lba, found: my_lba });
    }
    let first_usable = le64(sector, 40);
    let last_usable = le64(sector, 48);
    // Usable space lies strictly between the two headers (LBA 1 and the last LBA).
    if first_usable < 2 || first_usable > last_usable || last_usable >= device_blocks - 1 {
        return Err(HeaderError::BadUsableRange {
            lba,
            first_usable,
            last_usable,
            device_blocks,
        });
    }
    let entry_size = le32(sector, 84);
    if !matches!(entry_size, 128 | 256 | 512) {
        return Err(HeaderError::BadEntrySize {
            lba,
            size: entry_size,
        });
    }
    let count = le32(sector, 80);
    if count == 0 || count > MAX_ENTRIES {
        return Err(HeaderError::BadEntryCount { lba, count });
    }
    let array_lba = le64(sector, 72);
    let array_sectors = (u64::from(count) * u64::from(entry_size)).div_ceil(BLOCK_SIZE as u64);
    let array_end = array_lba.saturating_add(array_sectors);
    let outside = array_lba < 2
        || array_end > device_blocks - 1
        || (array_lba <= last_usable && first_usable < array_end)
        || (array_lba <= lba && lba < array_end);
    if outside {
        return Err(HeaderError::EntryArrayOutside {
            lba,
            array_lba,
            array_sectors,
            device_blocks,
        });
    }
    Ok(Header {
        disk_guid: Guid(field(sector, 56)),
        first_usable,
        last_usable,
        array_lba,
        count,
        entry_size,
        array_crc: le32(sector, 88),
    })
}

fn parse_entry(bytes: &[u8], number: u32) -> Option<(u32, GptPartition)> {
    let kind = Guid(field(bytes, 0));
    if kind.is_zero() {
        return None;
    }
    let mut name = [0u16; 36];
    for (index, unit) in name.iter_mut().enumerate() {
        *unit = u16::from_le_bytes(field(bytes, 56 + 2 * index));
    }
    Some((
        number,
        GptPartition {
            number: u8::try_from(number).unwrap_or(0),
            kind,
            unique: Guid(field(bytes, 16)),
            first_lba: le64(bytes, 32),
            last_lba: le64(bytes, 40),
            attributes: le64(bytes, 48),
            name,
        },
    ))
}

/// Checks one used entry against the header and the entries before it.
fn admit(
    header: &Header,
    found: &[GptPartition],
    number: u32,
    entry: &GptPartition,
) -> Result<(), HeaderError> {
    if entry.first_lba > entry.last_lba
        || entry.first_lba < header.first_usable
        || entry.last_lba > header.last_usable
    {
        return Err(HeaderError::EntryOutside {
            number,
            first_lba: entry.first_lba,
            last_lba: entry.last_lba,
            first_usable: header.first_usable,
            last_usable: header.last_usable,
        });
    }
    if number > 255 || found.len() >= MAX_GPT_PARTITIONS {
        return Err(HeaderError::TooManyPartitions { number });
    }
    if let Some(other) = found
        .iter()
        .find(|p| p.first_lba <= entry.last_lba && entry.first_lba <= p.last_lba)
    {
        return Err(HeaderError::Overlap {
            first: other.number,
            second: entry.number,
        });
    }
    Ok(())
}

/// Reads the header at `lba` and its entries: a table, or a fault in them (inner), or a
/// device error (outer).
fn read_copy<D: BlockDevice>(
    device: &mut D,
    lba: u64,
    source: HeaderCopy,
) -> Result<Result<Gpt, HeaderError>, GptError<D::Error>> {
    let device_blocks = device.block_count();
    let mut sector = [0u8; BLOCK_SIZE];
    if let Err(error) = device.read_block(lba, &mut sector) {
        return Err(GptError::Device { lba, error });
    }
    let header = match parse_header(&sector, lba, device_blocks) {
        Ok(header) => header,
        Err(fault) => return Ok(Err(fault)),
    };
    let mut partitions: heapless::Vec<GptPartition, MAX_GPT_PARTITIONS> = heapless::Vec::new();
    // Entry faults are reported only once the CRC says the bytes are the ones written.
    let mut fault = None;
    let mut hasher = crc32fast::Hasher::new();
    let entry_size = header.entry_size as usize;
    let per_sector = BLOCK_SIZE / entry_size;
    let mut index = 0u32;
    let mut array_lba = header.array_lba;
    while index < header.count {
        if let Err(error) = device.read_block(array_lba, &mut sector) {
            return Err(GptError::Device {
                lba: array_lba,
                error,
            });
        }
        for slot in 0..per_sector {
            if index >= header.count {
                break;
            }
            let bytes = sector
                .get(slot * entry_size..(slot + 1) * entry_size)
                .unwrap_or_default();
            hasher.update(bytes);
            index += 1;
            if fault.is_some() {
                continue;
            }
            if let Some((number, entry)) = parse_entry(bytes, index) {
                match admit(&header, &partitions, number, &entry) {
                    Ok(()) => {
                        // `admit` checked there is room.
                        let _ = partitions.push(entry);
                    }
                    Err(error) => fault = Some(error),
                }
            }
        }
        array_lba += 1;
    }
    let found = hasher.finalize();
    if found != header.array_crc {
        return Ok(Err(HeaderError::EntryArrayCrcMismatch {
            expected: header.array_crc,
            found,
            lba,
        }));
    }
    if let Some(fault) = fault {
        return Ok(Err(fault));
    }
    Ok(Ok(Gpt {
        disk_guid: header.disk_guid,
        source,
        primary_fault: None,
        header_lba: lba,
        first_usable_lba: header.first_usable,
        last_usable_lba: header.last_usable,
        partitions,
    }))
}

impl Gpt {
    /// Reads sector 0 (which must be a protective MBR), then the primary header and its
    /// entries, or the backup's if the primary is unusable.
    pub fn read<D: BlockDevice>(device: &mut D) -> Result<Self, GptError<D::Error>> {
        let mut sector0 = [0u8; BLOCK_SIZE];
        device
            .read_block(0, &mut sector0)
            .map_err(|error| GptError::Device { lba: 0, error })?;
        Self::read_after_mbr(device, &sector0)
    }

    /// [`Gpt::read`] with sector 0 already read.
    pub fn read_after_mbr<D: BlockDevice>(
        device: &mut D,
        sector0: &Block,
    ) -> Result<Self, GptError<D::Error>> {
        if !is_protective_mbr(sector0) {
            return Err(GptError::NotProtective);
        }
        let device_blocks = device.block_count();
        // MBR, two headers, two one-sector entry arrays, one usable sector.
        if device_blocks < 6 {
            return Err(GptError::DeviceTooSmall { device_blocks });
        }
        let primary = match read_copy(device, 1, HeaderCopy::Primary)? {
            Ok(gpt) => return Ok(gpt),
            Err(fault) => fault,
        };
        match read_copy(device, device_blocks - 1, HeaderCopy::Backup)? {
            Ok(gpt) => Ok(Self {
                primary_fault: Some(primary),
                ..gpt
            }),
            Err(backup) => Err(GptError::BothHeadersBad { primary, backup }),
        }
    }

    /// Used entries in array order.
    pub fn partitions(&self) -> &[GptPartition] {
        &self.partitions
    }

    /// Partition `number` (entry index + 1).
    pub fn partition(&self, number: u8) -> Option<GptPartition> {
        self.partitions.iter().find(|p| p.number == number).copied()
    }
}

fn put_bytes(buffer: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(target) = buffer.get_mut(at..at + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

/// Header fields for [`encode_header`] (what a writer chooses; the CRC is computed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    /// Where this header goes.
    pub my_lba: u64,
    /// Where the other header goes.
    pub alternate_lba: u64,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA (inclusive).
    pub last_usable_lba: u64,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// Where this header's entry array starts.
    pub entry_array_lba: u64,
    /// Entries in the array.
    pub entry_count: u32,
    /// CRC32 of the entry array (`entry_count` × [`ENTRY_SIZE`] bytes).
    pub entry_array_crc: u32,
}

/// A revision 1.0 header sector with its CRC.
pub fn encode_header(fields: &HeaderFields) -> Block {
    let mut sector = [0u8; BLOCK_SIZE];
    let mut put = |at: usize, bytes: &[u8]| put_bytes(&mut sector, at, bytes);
    put(0, &SIGNATURE);
    put(8, &REVISION_1_0.to_le_bytes());
    put(12, &HEADER_SIZE.to_le_bytes());
    put(24, &fields.my_lba.to_le_bytes());
    put(32, &fields.alternate_lba.to_le_bytes());
    put(40, &fields.first_usable_lba.to_le_bytes());
    put(48, &fields.last_usable_lba.to_le_bytes());
    put(56, &fields.disk_guid.0);
    put(72, &fields.entry_array_lba.to_le_bytes());
    put(80, &fields.entry_count.to_le_bytes());
    put(84, &ENTRY_SIZE.to_le_bytes());
    put(88, &fields.entry_array_crc.to_le_bytes());
    let crc = crc32fast::hash(sector.get(..HEADER_SIZE as usize).unwrap_or_default());
    put_bytes(&mut sector, 16, &crc.to_le_bytes());
    sector
}

/// A 128-byte entry; a name longer than 36 UTF-16 units is cut.
pub fn encode_entry(
    kind: Guid,
    unique: Guid,
    first_lba: u64,
    last_lba: u64,
    name: &str,
) -> [u8; 128] {
    let mut entry = [0u8; 128];
    let mut put = |at: usize, bytes: &[u8]| put_bytes(&mut entry, at, bytes);
    put(0, &kind.0);
    put(16, &unique.0);
    put(32, &first_lba.to_le_bytes());
    put(40, &last_lba.to_le_bytes());
    for (index, unit) in name.encode_utf16().take(36).enumerate() {
        put(56 + 2 * index, &unit.to_le_bytes());
    }
    entry
}

/// The protective MBR of a `device_blocks`-sector GPT disk (§5.2.3: one 0xEE entry from
/// LBA 1 over the rest of the disk, at most 0xFFFF_FFFF sectors).
pub fn protective_mbr(device_blocks: u64) -> Block {
    let mut sector = [0u8; BLOCK_SIZE];
    let sectors = u32::try_from(device_blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    let mut put = |at: usize, bytes: &[u8]| put_bytes(&mut sector, at, bytes);
    // CHS start 0/0/2 (LBA 1), CHS end "beyond CHS".
    put(
        446,
        &[0x00, 0x00, 0x02, 0x00, PROTECTIVE_TYPE, 0xFF, 0xFF, 0xFF],
    );
    put(454, &1u32.to_le_bytes());
    put(458, &sectors.to_le_bytes());
    put(510, &[0x55, 0xAA]);
    sector
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::RamDisk;
    use std::string::{String, ToString};
    use std::vec::Vec;

    const BLOCKS: u64 = 4096;

    fn unique(n: u8) -> Guid {
        Guid::from_fields(
            0x1122_3300 | u32::from(n),
            0x4455,
            0x6677,
            [0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, n],
        )
    }

    /// Writes a GPT with `entries` (index → entry) and `count` array entries.
    fn write(disk: &mut RamDisk, count: u32, entries: &[(usize, [u8; 128])]) {
        let blocks = disk.block_count();
        let array_sectors = (u64::from(count) * 128).div_ceil(512);
        let mut array = std::vec![0u8; (array_sectors * 512) as usize];
        for (index, entry) in entries {
            array[index * 128..(index + 1) * 128].copy_from_slice(entry);
        }
        let crc = crc32fast::hash(&array[..count as usize * 128]);
        let disk_guid = Guid::from_fields(0xD15C, 1, 2, [3; 8]);
        let first_usable = 2 + array_sectors;
        let last_usable = blocks - 2 - array_sectors;
        *disk.block_mut(0).unwrap() = protective_mbr(blocks);
        for (my, other, array_lba) in [
            (1, blocks - 1, 2),
            (blocks - 1, 1, blocks - 1 - array_sectors),
        ] {
            let header = encode_header(&HeaderFields {
                my_lba: my,
                alternate_lba: other,
                first_usable_lba: first_usable,
                last_usable_lba: last_usable,
                disk_guid,
                entry_array_lba: array_lba,
                entry_count: count,
                entry_array_crc: crc,
            });
            *disk.block_mut(my).unwrap() = header;
            for (i, chunk) in array.chunks(512).enumerate() {
                disk.block_mut(array_lba + i as u64)
                    .unwrap()
                    .copy_from_slice(chunk);
            }
        }
    }

    fn standard() -> RamDisk {
        let mut disk = RamDisk::new(BLOCKS as usize);
        write(
            &mut disk,
            DEFAULT_ENTRY_COUNT,
            &[
                (0, encode_entry(BASIC_DATA, unique(1), 2048, 2559, "boot")),
                (
                    1,
                    encode_entry(LINUX_FILESYSTEM, unique(2), 2560, 3071, "rootA"),
                ),
                // Entry 3 unused: entry 4 is still partition 4.
                (
                    3,
                    encode_entry(LINUX_FILESYSTEM, unique(4), 3072, 4000, "safé"),
                ),
            ],
        );
        disk
    }

    /// Rewrites the header at `lba` after `edit`, with a correct header CRC.
    fn edit_header(disk: &mut RamDisk, lba: u64, edit: impl FnOnce(&mut Block)) {
        let sector = disk.block_mut(lba).unwrap();
        edit(sector);
        sector[16..20].fill(0);
        let crc = crc32fast::hash(&sector[..92]);
        sector[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn reads_partitions_numbered_by_entry_index() {
        let gpt = Gpt::read(&mut standard()).unwrap();
        assert_eq!(gpt.source, HeaderCopy::Primary);
        assert_eq!(gpt.primary_fault, None);
        let numbers: Vec<u8> = gpt.partitions().iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 4]);
        let boot = gpt.partition(1).unwrap();
        assert!(boot.is_boot_type());
        assert_eq!((boot.first_lba, boot.sectors()), (2048, 512));
        assert_eq!(boot.name_chars().collect::<String>(), "boot");
        assert_eq!(
            gpt.partition(4).unwrap().name_chars().collect::<String>(),
            "safé"
        );
        assert_eq!(gpt.partition(3), None);
        assert_eq!((gpt.first_usable_lba, gpt.last_usable_lba), (34, 4062));
    }

    #[test]
    fn guids_print_like_linux() {
        assert_eq!(
            BASIC_DATA.to_string(),
            "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
        );
        // Stored bytes, as `hexdump` of an entry shows them.
        assert_eq!(
            &EFI_SYSTEM.0[..4],
            &[0x28, 0x73, 0x2A, 0xC1],
            "first field little-endian"
        );
        assert_eq!(
            unique(2).to_string(),
            "11223302-4455-6677-8899-aabbccddee02"
        );
    }

    #[test]
    fn falls_back_to_the_backup_header() {
        let mut disk = standard();
        disk.block_mut(1).unwrap()[100] ^= 1; // reserved bytes beyond the CRC: harmless
        assert_eq!(Gpt::read(&mut disk).unwrap().source, HeaderCopy::Primary);
        disk.block_mut(1).unwrap()[40] ^= 1;
        let gpt = Gpt::read(&mut disk).unwrap();
        assert_eq!(gpt.source, HeaderCopy::Backup);
        assert_eq!(gpt.header_lba, BLOCKS - 1);
        assert!(matches!(
            gpt.primary_fault,
            Some(HeaderError::HeaderCrcMismatch { lba: 1, .. })
        ));
        assert_eq!(gpt.partitions().len(), 3);
        // The primary entry array damaged instead (header intact).
        let mut disk = standard();
        disk.block_mut(2).unwrap()[0] ^= 0xFF;
        let gpt = Gpt::read(&mut disk).unwrap();
        assert!(matches!(
            gpt.primary_fault,
            Some(HeaderError::EntryArrayCrcMismatch { lba: 1, .. })
        ));
        // A zeroed start of the disk but for the protective MBR: backup only.
        let mut disk = standard();
        for lba in 1..34 {
            *disk.block_mut(lba).unwrap() = [0; 512];
        }
        let gpt = Gpt::read(&mut disk).unwrap();
        assert_eq!(
            gpt.primary_fault,
            Some(HeaderError::BadSignature {
                lba: 1,
                found: [0; 8]
            })
        );
        assert_eq!(gpt.partition(2).unwrap().unique, unique(2));
    }

    #[test]
    fn both_headers_bad_names_both() {
        let mut disk = standard();
        disk.block_mut(1).unwrap()[16] ^= 1;
        disk.block_mut(BLOCKS - 1).unwrap()[0] = b'X';
        match Gpt::read(&mut disk) {
            Err(GptError::BothHeadersBad {
                primary: HeaderError::HeaderCrcMismatch { lba: 1, .. },
                backup: HeaderError::BadSignature { lba, .. },
            }) => assert_eq!(lba, BLOCKS - 1),
            other => panic!("{other:?}"),
        }
    }

    /// Applies `edit` to both headers (CRCs fixed up) and returns the primary's fault.
    fn fault_of(edit: impl Fn(&mut Block) + Copy) -> HeaderError {
        let mut disk = standard();
        edit_header(&mut disk, 1, edit);
        edit_header(&mut disk, BLOCKS - 1, edit);
        match Gpt::read(&mut disk) {
            Err(GptError::BothHeadersBad { primary, .. }) => primary,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_headers_are_refused_with_data() {
        let set32 = |at: usize, v: u32| {
            move |s: &mut Block| s[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        let set64 = |at: usize, v: u64| {
            move |s: &mut Block| s[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        assert_eq!(
            fault_of(set32(84, 0)),
            HeaderError::BadEntrySize { lba: 1, size: 0 }
        );
        assert_eq!(
            fault_of(set32(84, 0x8000_0000)),
            HeaderError::BadEntrySize {
                lba: 1,
                size: 0x8000_0000
            }
        );
        assert_eq!(
            fault_of(set32(80, u32::MAX)),
            HeaderError::BadEntryCount {
                lba: 1,
                count: u32::MAX
            }
        );
        assert_eq!(
            fault_of(set32(80, 0)),
            HeaderError::BadEntryCount { lba: 1, count: 0 }
        );
        assert_eq!(
            fault_of(set32(12, 4096)),
            HeaderError::BadHeaderSize { lba: 1, size: 4096 }
        );
        assert_eq!(
            fault_of(set32(8, 0x0002_0000)),
            HeaderError::UnsupportedRevision {
                lba: 1,
                found: 0x0002_0000
            }
        );
        assert_eq!(
            fault_of(set64(48, BLOCKS + 10)),
            HeaderError::BadUsableRange {
                lba: 1,
                first_usable: 34,
                last_usable: BLOCKS + 10,
                device_blocks: BLOCKS
            }
        );
        assert_eq!(
            fault_of(set64(72, u64::MAX - 1)),
            HeaderError::EntryArrayOutside {
                lba: 1,
                array_lba: u64::MAX - 1,
                array_sectors: 32,
                device_blocks: BLOCKS
            }
        );
        // The array inside the usable range.
        assert!(matches!(
            fault_of(set64(72, 100)),
            HeaderError::EntryArrayOutside { array_lba: 100, .. }
        ));
        assert_eq!(
            fault_of(set64(24, 7)),
            HeaderError::WrongMyLba { lba: 1, found: 7 }
        );
    }

    #[test]
    fn hostile_entries_are_refused_with_data() {
        let check = |entries: &[(usize, [u8; 128])]| {
            let mut disk = RamDisk::new(BLOCKS as usize);
            write(&mut disk, DEFAULT_ENTRY_COUNT, entries);
            match Gpt::read(&mut disk) {
                Err(GptError::BothHeadersBad { primary, backup }) => {
                    assert_eq!(
                        core::mem::discriminant(&primary),
                        core::mem::discriminant(&backup)
                    );
                    primary
                }
                other => panic!("{other:?}"),
            }
        };
        let entry =
            |n: u8, first: u64, last: u64| encode_entry(BASIC_DATA, unique(n), first, last, "");
        assert_eq!(
            check(&[(0, entry(1, 100, BLOCKS))]),
            HeaderError::EntryOutside {
                number: 1,
                first_lba: 100,
                last_lba: BLOCKS,
                first_usable: 34,
                last_usable: 4062
            }
        );
        assert!(matches!(
            check(&[(0, entry(1, 500, 400))]),
            HeaderError::EntryOutside { number: 1, .. }
        ));
        assert!(matches!(
            check(&[(2, entry(3, 10, 400))]),
            HeaderError::EntryOutside { number: 3, .. }
        ));
        assert_eq!(
            check(&[(0, entry(1, 100, 200)), (5, entry(6, 200, 300))]),
            HeaderError::Overlap {
                first: 1,
                second: 6
            }
        );
        let many: Vec<(usize, [u8; 128])> = (0..17)
            .map(|i| {
                (
                    i,
                    entry(i as u8 + 1, 100 + i as u64 * 10, 105 + i as u64 * 10),
                )
            })
            .collect();
        assert_eq!(check(&many), HeaderError::TooManyPartitions { number: 17 });
        let mut disk = RamDisk::new(BLOCKS as usize);
        write(&mut disk, 300, &[(299, entry(44, 100, 200))]);
        match Gpt::read(&mut disk) {
            Err(GptError::BothHeadersBad { primary, .. }) => {
                assert_eq!(primary, HeaderError::TooManyPartitions { number: 300 });
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sector0_must_be_protective() {
        let mut disk = standard();
        disk.block_mut(0).unwrap()[454] = 2; // 0xEE entry not at LBA 1
        assert_eq!(Gpt::read(&mut disk), Err(GptError::NotProtective));
        let mut tiny = RamDisk::new(5);
        *tiny.block_mut(0).unwrap() = protective_mbr(5);
        assert_eq!(
            Gpt::read(&mut tiny),
            Err(GptError::DeviceTooSmall { device_blocks: 5 })
        );
    }

    #[test]
    fn odd_entry_sizes_and_counts_are_read() {
        // 4 entries of 128 bytes: one sector; CRC over exactly 512 bytes.
        let mut disk = RamDisk::new(BLOCKS as usize);
        write(
            &mut disk,
            5,
            &[(4, encode_entry(BASIC_DATA, unique(5), 100, 200, "x"))],
        );
        let gpt = Gpt::read(&mut disk).unwrap();
        assert_eq!(gpt.partition(5).unwrap().first_lba, 100);
    }

    /// Fails reads of one LBA.
    struct Unreadable(RamDisk, u64);

    impl BlockDevice for Unreadable {
        type Error = &'static str;
        fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), Self::Error> {
            if lba == self.1 {
                return Err("read error");
            }
            self.0.read_block(lba, buffer).map_err(|_| "ram")
        }
        fn write_block(&mut self, _: u64, _: &Block) -> Result<(), Self::Error> {
            Err("read-only")
        }
        fn block_count(&self) -> u64 {
            self.0.block_count()
        }
    }

    #[test]
    fn device_errors_are_not_taken_for_corruption() {
        for lba in [0, 1, 5, BLOCKS - 1] {
            let mut disk = standard();
            if lba == BLOCKS - 1 {
                disk.block_mut(1).unwrap()[40] ^= 1;
            }
            assert_eq!(
                Gpt::read(&mut Unreadable(disk, lba)),
                Err(GptError::Device {
                    lba,
                    error: "read error"
                })
            );
        }
    }
}
