//! The `.zi` records byte by byte: header, partition and region entries, signature trailer.
//!
//! Every record has a fixed size; all integers are little-endian; every reserved byte must
//! be zero (a reader of this version refuses anything it does not understand). The table in
//! `docs/image-format.md` is the reference; the offsets below are the code's copy of it.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::digest::Algorithm;

/// The first 8 bytes of every `.zi` file.
pub const MAGIC: [u8; 8] = *b"ZBOOT-ZI";
/// The format version this code writes: every digest in the file (the header's own, the
/// manifest's, each chunk's) is BLAKE3. A reader refuses versions it does not know (a
/// newer writer bumps it for any change an older reader would misread).
pub const FORMAT_VERSION: u16 = 2;
/// The first format version, identical but for SHA-256 digests: still read and written on
/// request (for loaders older than version 2).
pub const FORMAT_VERSION_SHA256: u16 = 1;
/// Size of the header record.
pub const HEADER_SIZE: usize = 256;
/// Size of one partition entry and of one region entry in the manifest.
pub const ENTRY_SIZE: usize = 64;
/// Size of the optional signature trailer at the end of the file.
pub const TRAILER_SIZE: usize = 128;
/// The first 8 bytes of the signature trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"ZBOOTSIG";
/// Signature algorithm 1: ed25519 (RFC 8032, pure, not prehashed).
pub const ALGORITHM_ED25519: u16 = 1;
/// What is signed: this 16-byte prefix, then the 256 header bytes (which carry the format
/// version, so the digest function, and the manifest's digest, which carries every chunk's
/// digest). The prefix keeps a `.zi`
/// signature from ever being valid for another message the same key signs.
pub const SIGNATURE_CONTEXT: [u8; 16] = *b"zboot .zi sig v1";
/// Length of the signed message.
pub const SIGNED_MESSAGE_SIZE: usize = SIGNATURE_CONTEXT.len() + HEADER_SIZE;
/// Largest chunk (uncompressed bytes of one data region): the loader's output buffer size.
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size a header may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Partitions an image may describe.
pub const MAX_PARTITIONS: u32 = 16;
/// Image name bytes in the header (UTF-8, NUL-padded).
pub const NAME_SIZE: usize = 64;
/// Sector size every offset and length is a multiple of.
pub const SECTOR: u64 = 512;

/// Byte offsets in the header.
mod header_at {
    pub const VERSION: usize = 8;
    pub const HEADER_SIZE: usize = 10;
    pub const CHUNK_SIZE: usize = 12;
    pub const PARTITIONS: usize = 16;
    pub const REGIONS: usize = 20;
    pub const DATA_REGIONS: usize = 24;
    pub const RESERVED_28: usize = 28;
    pub const MANIFEST_SIZE: usize = 32;
    pub const PAYLOAD_SIZE: usize = 40;
    pub const CREATED: usize = 48;
    pub const IMAGE_VERSION: usize = 56;
    pub const TABLE: usize = 60;
    pub const RESERVED_61: usize = 61;
    pub const DISK_SIGNATURE: usize = 64;
    pub const RESERVED_68: usize = 68;
    pub const DISK_SIZE: usize = 72;
    pub const NAME: usize = 80;
    pub const MANIFEST_DIGEST: usize = 144;
    pub const RESERVED_176: usize = 176;
    pub const HEADER_DIGEST: usize = 224;
}

/// The partition table kind the image's layout describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// MBR (primary partitions 1–4, logical partitions from 5).
    Mbr,
    /// GPT (reserved: described, not written by this version's tools).
    Gpt,
}

impl TableKind {
    fn code(self) -> u8 {
        match self {
            TableKind::Mbr => 1,
            TableKind::Gpt => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TableKind::Mbr),
            2 => Some(TableKind::Gpt),
            _ => None,
        }
    }
}

/// What a partition is for (from `docs/disk-layout.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// None of the below (e.g. the extended container); never written from the image.
    Other,
    /// The FAT boot partition.
    Boot,
    /// Slot A's root.
    RootA,
    /// Slot B's root.
    RootB,
    /// The SAFE slot's root.
    Safe,
    /// The product's persistent data.
    Data,
    /// Raw sectors of the partition table (the MBR at LBA 0, each EBR): written first by a
    /// full reflash, never by a slot install. Number 0; may appear more than once.
    Table,
}

impl Role {
    /// Every role, in code order.
    pub const ALL: [Role; 7] = [
        Role::Other,
        Role::Boot,
        Role::RootA,
        Role::RootB,
        Role::Safe,
        Role::Data,
        Role::Table,
    ];

    /// The byte stored in a partition entry.
    pub fn code(self) -> u8 {
        match self {
            Role::Other => 0,
            Role::Boot => 1,
            Role::RootA => 2,
            Role::RootB => 3,
            Role::Safe => 4,
            Role::Data => 5,
            Role::Table => 6,
        }
    }

    /// The role of a stored byte.
    pub fn from_code(code: u8) -> Option<Self> {
        Role::ALL.into_iter().find(|role| role.code() == code)
    }

    /// Lower-case name (`boot`, `root-a`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Role::Other => "other",
            Role::Boot => "boot",
            Role::RootA => "root-a",
            Role::RootB => "root-b",
            Role::Safe => "safe",
            Role::Data => "data",
            Role::Table => "table",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a region's bytes are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Bytes stored in the payload (one chunk).
    Data,
    /// Every byte is `fill` (zeros, usually); nothing stored.
    Fill,
    /// Contents do not matter (blocks the file system marks free): not written.
    Skip,
}

impl RegionKind {
    fn code(self) -> u8 {
        match self {
            RegionKind::Data => 1,
            RegionKind::Fill => 2,
            RegionKind::Skip => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RegionKind::Data),
            2 => Some(RegionKind::Fill),
            3 => Some(RegionKind::Skip),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Data => "data",
            RegionKind::Fill => "fill",
            RegionKind::Skip => "skip",
        }
    }
}

/// How a data region's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// As is (`stored size` = `length`).
    Stored,
    /// A raw DEFLATE stream (RFC 1951, no zlib or gzip wrapper).
    Deflate,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::Stored => 0,
            Compression::Deflate => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::Stored),
            1 => Some(Compression::Deflate),
            _ => None,
        }
    }
}

/// The header (256 bytes at offset 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Largest uncompressed data region (power of two, 4 KiB–1 MiB).
    pub chunk_size: u32,
    /// Partition entries in the manifest.
    pub partition_count: u32,
    /// Region entries in the manifest.
    pub region_count: u32,
    /// Region entries of kind data (chunks in the payload).
    pub data_region_count: u32,
    /// Bytes of the manifest (`64 × (partitions + regions)`).
    pub manifest_size: u64,
    /// Bytes of the payload (sum of the chunks' stored sizes).
    pub payload_size: u64,
    /// Creation time, seconds since 1970-01-01 UTC.
    pub created: u64,
    /// The image's version, compared with the state's anti-rollback minimum.
    pub image_version: u32,
    /// The layout's partition table kind.
    pub table: TableKind,
    /// MBR disk signature of the layout (the PARTUUID prefix); 0 for GPT.
    pub disk_signature: u32,
    /// Least device size in bytes the layout needs.
    pub disk_size: u64,
    /// Image name, UTF-8, NUL-padded.
    pub name: [u8; NAME_SIZE],
    /// Digest of the manifest bytes.
    pub manifest_digest: [u8; 32],
    /// The hash function of every digest in the file: BLAKE3 in version 2, SHA-256 in 1.
    pub algorithm: Algorithm,
}

/// One partition of the layout (64 bytes in the manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionEntry {
    /// Linux partition number (MBR: 1–4 primary, 5+ logical).
    pub number: u8,
    /// What it is for.
    pub role: Role,
    /// MBR partition type byte (0x0C FAT32 LBA, 0x83 Linux, 0x0F extended, ...).
    pub kind: u8,
    /// MBR status 0x80.
    pub bootable: bool,
    /// Index of the first region of this partition.
    pub first_region: u32,
    /// Number of regions; they tile the partition from byte 0 to its end.
    pub region_count: u32,
    /// First sector in the layout.
    pub start_lba: u64,
    /// Size in sectors.
    pub sectors: u64,
}

/// One region of a partition (64 bytes in the manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionEntry {
    /// Data, fill or skip.
    pub kind: RegionKind,
    /// Storage of a data region (`Stored` for fill and skip).
    pub compression: Compression,
    /// The byte of a fill region (0 otherwise).
    pub fill: u8,
    /// Index of the partition entry this region belongs to.
    pub partition: u8,
    /// Bytes in the payload (data only; 0 otherwise).
    pub stored_size: u32,
    /// Byte offset in the partition (multiple of 512).
    pub offset: u64,
    /// Uncompressed bytes (multiple of 512; data: at most the chunk size).
    pub length: u64,
    /// Offset of the stored bytes from the start of the payload (data only; 0 otherwise).
    pub payload_offset: u64,
    /// Digest of the uncompressed bytes by the header's algorithm (data only; zeros
    /// otherwise).
    pub digest: [u8; 32],
}

/// The signature trailer (128 bytes at the end of a signed file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The signer's ed25519 public key (informational: the loader checks against its own).
    pub public_key: [u8; 32],
    /// The ed25519 signature of [`signed_message`].
    pub signature: [u8; 64],
}

/// Why a record is not acceptable. Offsets are from the start of the record's bytes as
/// given; the reader adds the record's file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Not a `.zi` file.
    BadMagic { found: [u8; 8] },
    /// A format version this reader does not know (a newer zbctl made it).
    UnsupportedVersion { found: u16, supported: u16 },
    /// The header's own digest does not match (corrupt header).
    HeaderHashMismatch { algorithm: Algorithm },
    /// A reserved byte is not zero.
    ReservedNotZero { at: usize },
    /// A field has a value this version does not accept.
    BadField {
        at: usize,
        field: &'static str,
        value: u64,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::BadMagic { found } => write!(
                f,
                "not a .zi image: magic {found:02x?}, expected \"ZBOOT-ZI\""
            ),
            FormatError::UnsupportedVersion { found, supported } => write!(
                f,
                ".zi format version {found} is not supported (this reader knows versions \
                 {FORMAT_VERSION_SHA256} to {supported}); use a zboot/zbctl that reads it, or \
                 rebuild the image"
            ),
            FormatError::HeaderHashMismatch { algorithm } => {
                write!(f, "header {algorithm} mismatch (corrupt header)")
            }
            FormatError::ReservedNotZero { at } => {
                write!(f, "reserved byte at offset {at} is not zero")
            }
            FormatError::BadField { at, field, value } => {
                write!(f, "{field} = {value} at offset {at} is not valid")
            }
        }
    }
}

impl core::error::Error for FormatError {}

/// Little-endian field access over a fixed record (`get` keeps it panic-free).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.0.get(at..at + N) {
            out.copy_from_slice(src);
        }
        out
    }
    fn u8(&self, at: usize) -> u8 {
        self.0.get(at).copied().unwrap_or(0)
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.array(at))
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }
    fn zeros(&self, at: usize, len: usize) -> Result<(), FormatError> {
        match self.0.get(at..at + len) {
            Some(bytes) => match bytes.iter().position(|&b| b != 0) {
                Some(i) => Err(FormatError::ReservedNotZero { at: at + i }),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }
}

fn put(buffer: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buffer.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn bad(at: usize, field: &'static str, value: u64) -> FormatError {
    FormatError::BadField { at, field, value }
}

/// SHA-256 of `bytes` (the image's identity in the reflash journal, whatever its version).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The digest function of format `version`, if this reader knows it.
pub fn version_algorithm(version: u16) -> Option<Algorithm> {
    match version {
        FORMAT_VERSION_SHA256 => Some(Algorithm::Sha256),
        FORMAT_VERSION => Some(Algorithm::Blake3),
        _ => None,
    }
}

/// The format version whose digests are by `algorithm`.
pub fn algorithm_version(algorithm: Algorithm) -> u16 {
    match algorithm {
        Algorithm::Sha256 => FORMAT_VERSION_SHA256,
        Algorithm::Blake3 => FORMAT_VERSION,
    }
}

impl Header {
    /// Decodes and checks the header: magic, version, its own hash, reserved bytes, ranges.
    /// The checks are ordered so that the most telling error wins (a newer format's header
    /// reports the version, not a hash mismatch).
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Result<Self, FormatError> {
        use header_at as at;
        let f = Fields(bytes);
        let magic: [u8; 8] = f.array(0);
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = f.u16(at::VERSION);
        let algorithm = version_algorithm(version).ok_or(FormatError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        })?;
        let stored_hash: [u8; 32] = f.array(at::HEADER_DIGEST);
        if algorithm.digest(bytes.get(..at::HEADER_DIGEST).unwrap_or_default()) != stored_hash {
            return Err(FormatError::HeaderHashMismatch { algorithm });
        }
        let header_size = f.u16(at::HEADER_SIZE);
        if usize::from(header_size) != HEADER_SIZE {
            return Err(bad(at::HEADER_SIZE, "header size", header_size.into()));
        }
        f.zeros(at::RESERVED_28, 4)?;
        f.zeros(at::RESERVED_61, 3)?;
        f.zeros(at::RESERVED_68, 4)?;
        f.zeros(at::RESERVED_176, at::HEADER_DIGEST - at::RESERVED_176)?;
        let chunk_size = f.u32(at::CHUNK_SIZE);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(bad(at::CHUNK_SIZE, "chunk size", chunk_size.into()));
        }
        let partition_count = f.u32(at::PARTITIONS);
        if partition_count == 0 || partition_count > MAX_PARTITIONS {
            return Err(bad(
                at::PARTITIONS,
                "partition count",
                partition_count.into(),
            ));
        }
        let region_count = f.u32(at::REGIONS);
        let data_region_count = f.u32(at::DATA_REGIONS);
        if data_region_count > region_count {
            return Err(bad(
                at::DATA_REGIONS,
                "data region count",
                data_region_count.into(),
            ));
        }
        let manifest_size = f.u64(at::MANIFEST_SIZE);
        let expected = (u64::from(partition_count) + u64::from(region_count)) * ENTRY_SIZE as u64;
        if manifest_size != expected {
            return Err(bad(at::MANIFEST_SIZE, "manifest size", manifest_size));
        }
        let payload_size = f.u64(at::PAYLOAD_SIZE);
        // Each chunk stores at most its length plus DEFLATE's worst-case overhead; checked
        // per region later, here only so that sizes cannot overflow.
        if payload_size > u64::from(data_region_count) * u64::from(MAX_CHUNK_SIZE) * 2 {
            return Err(bad(at::PAYLOAD_SIZE, "payload size", payload_size));
        }
        let table = f.u8(at::TABLE);
        let table = TableKind::from_code(table)
            .ok_or_else(|| bad(at::TABLE, "partition table kind", table.into()))?;
        let disk_size = f.u64(at::DISK_SIZE);
        if disk_size == 0 || disk_size % SECTOR != 0 {
            return Err(bad(at::DISK_SIZE, "disk size", disk_size));
        }
        let name: [u8; NAME_SIZE] = f.array(at::NAME);
        let name_len = name.iter().position(|&b| b == 0).unwrap_or(NAME_SIZE);
        let (text, padding) = name.split_at(name_len);
        if name_len == 0 || core::str::from_utf8(text).is_err() || padding.iter().any(|&b| b != 0) {
            return Err(bad(
                at::NAME,
                "image name (UTF-8, NUL-padded)",
                name_len as u64,
            ));
        }
        Ok(Header {
            chunk_size,
            partition_count,
            region_count,
            data_region_count,
            manifest_size,
            payload_size,
            created: f.u64(at::CREATED),
            image_version: f.u32(at::IMAGE_VERSION),
            table,
            disk_signature: f.u32(at::DISK_SIGNATURE),
            disk_size,
            name,
            manifest_digest: f.array(at::MANIFEST_DIGEST),
            algorithm,
        })
    }

    /// Encodes the header with its own digest.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        use header_at as at;
        let mut b = [0u8; HEADER_SIZE];
        put(&mut b, 0, &MAGIC);
        put(
            &mut b,
            at::VERSION,
            &algorithm_version(self.algorithm).to_le_bytes(),
        );
        put(&mut b, at::HEADER_SIZE, &(HEADER_SIZE as u16).to_le_bytes());
        put(&mut b, at::CHUNK_SIZE, &self.chunk_size.to_le_bytes());
        put(&mut b, at::PARTITIONS, &self.partition_count.to_le_bytes());
        put(&mut b, at::REGIONS, &self.region_count.to_le_bytes());
        put(
            &mut b,
            at::DATA_REGIONS,
            &self.data_region_count.to_le_bytes(),
        );
        put(&mut b, at::MANIFEST_SIZE, &self.manifest_size.to_le_bytes());
        put(&mut b, at::PAYLOAD_SIZE, &self.payload_size.to_le_bytes());
        put(&mut b, at::CREATED, &self.created.to_le_bytes());
        put(&mut b, at::IMAGE_VERSION, &self.image_version.to_le_bytes());
        put(&mut b, at::TABLE, &[self.table.code()]);
        put(
            &mut b,
            at::DISK_SIGNATURE,
            &self.disk_signature.to_le_bytes(),
        );
        put(&mut b, at::DISK_SIZE, &self.disk_size.to_le_bytes());
        put(&mut b, at::NAME, &self.name);
        put(&mut b, at::MANIFEST_DIGEST, &self.manifest_digest);
        let hash = self
            .algorithm
            .digest(b.get(..at::HEADER_DIGEST).unwrap_or_default());
        put(&mut b, at::HEADER_DIGEST, &hash);
        b
    }

    /// The name as text (the decoder checked it is UTF-8).
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_SIZE);
        core::str::from_utf8(self.name.get(..len).unwrap_or_default()).unwrap_or("")
    }

    /// A name field from text: at most 64 bytes, cut at a character boundary.
    pub fn name_field(name: &str) -> [u8; NAME_SIZE] {
        let mut field = [0u8; NAME_SIZE];
        let mut len = name.len().min(NAME_SIZE);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        put(
            &mut field,
            0,
            name.as_bytes().get(..len).unwrap_or_default(),
        );
        field
    }

    /// Offset of the manifest in the file.
    pub fn manifest_offset(&self) -> u64 {
        HEADER_SIZE as u64
    }

    /// Offset of the payload (the first chunk) in the file.
    pub fn payload_offset(&self) -> u64 {
        HEADER_SIZE as u64 + self.manifest_size
    }

    /// File size without a signature trailer.
    pub fn unsigned_size(&self) -> u64 {
        self.payload_offset() + self.payload_size
    }
}

/// The message an ed25519 signature of this image signs.
pub fn signed_message(header: &[u8; HEADER_SIZE]) -> [u8; SIGNED_MESSAGE_SIZE] {
    let mut message = [0u8; SIGNED_MESSAGE_SIZE];
    put(&mut message, 0, &SIGNATURE_CONTEXT);
    put(&mut message, SIGNATURE_CONTEXT.len(), header);
    message
}

impl PartitionEntry {
    /// Decodes one entry; `bytes` is the 64-byte record.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let f = Fields(bytes);
        let number = f.u8(0);
        let role = f.u8(1);
        let role = Role::from_code(role).ok_or_else(|| bad(1, "partition role", role.into()))?;
        if (number == 0) != (role == Role::Table) {
            return Err(bad(
                0,
                "partition number (0 exactly for table sectors)",
                number.into(),
            ));
        }
        let flags = f.u8(3);
        if flags & !1 != 0 {
            return Err(bad(3, "partition flags", flags.into()));
        }
        f.zeros(12, 4)?;
        f.zeros(32, 32)?;
        let start_lba = f.u64(16);
        let sectors = f.u64(24);
        if sectors == 0
            || start_lba
                .checked_add(sectors)
                .is_none_or(|end| end > u64::MAX / SECTOR)
        {
            return Err(bad(24, "partition sectors", sectors));
        }
        Ok(Self {
            number,
            role,
            kind: f.u8(2),
            bootable: flags & 1 != 0,
            first_region: f.u32(4),
            region_count: f.u32(8),
            start_lba,
            sectors,
        })
    }

    /// Encodes one entry.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        put(
            &mut b,
            0,
            &[
                self.number,
                self.role.code(),
                self.kind,
                u8::from(self.bootable),
            ],
        );
        put(&mut b, 4, &self.first_region.to_le_bytes());
        put(&mut b, 8, &self.region_count.to_le_bytes());
        put(&mut b, 16, &self.start_lba.to_le_bytes());
        put(&mut b, 24, &self.sectors.to_le_bytes());
        b
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }
}

impl RegionEntry {
    /// Decodes one entry; `bytes` is the 64-byte record. Checks that need the other
    /// entries (tiling, payload order) are the reader's.
    pub fn decode(bytes: &[u8], chunk_size: u32) -> Result<Self, FormatError> {
        let f = Fields(bytes);
        let kind = f.u8(0);
        let kind = RegionKind::from_code(kind).ok_or_else(|| bad(0, "region kind", kind.into()))?;
        let compression = f.u8(1);
        let compression = Compression::from_code(compression)
            .ok_or_else(|| bad(1, "compression", compression.into()))?;
        let fill = f.u8(2);
        let stored_size = f.u32(4);
        let offset = f.u64(8);
        let length = f.u64(16);
        let payload_offset = f.u64(24);
        let digest: [u8; 32] = f.array(32);
        if offset % SECTOR != 0 {
            return Err(bad(8, "region offset", offset));
        }
        if length == 0 || length % SECTOR != 0 {
            return Err(bad(16, "region length", length));
        }
        match kind {
            RegionKind::Data => {
                if length > u64::from(chunk_size) {
                    return Err(bad(16, "data region length", length));
                }
                let stored_ok = match compression {
                    Compression::Stored => u64::from(stored_size) == length,
                    // DEFLATE never needs more than its stored-block overhead (5 bytes per
                    // 65535) over the input; 2× is a generous bound that cannot overflow.
                    Compression::Deflate => {
                        stored_size != 0 && u64::from(stored_size) <= 2 * length + 64
                    }
                };
                if !stored_ok {
                    return Err(bad(4, "stored size", stored_size.into()));
                }
                if fill != 0 {
                    return Err(bad(2, "fill byte of a data region", fill.into()));
                }
            }
            RegionKind::Fill | RegionKind::Skip => {
                if compression != Compression::Stored {
                    return Err(bad(1, "compression of a fill/skip region", 1));
                }
                if kind == RegionKind::Skip && fill != 0 {
                    return Err(bad(2, "fill byte of a skip region", fill.into()));
                }
                if stored_size != 0 {
                    return Err(bad(4, "stored size", stored_size.into()));
                }
                if payload_offset != 0 {
                    return Err(bad(24, "payload offset", payload_offset));
                }
                f.zeros(32, 32)?;
            }
        }
        Ok(Self {
            kind,
            compression,
            fill,
            partition: f.u8(3),
            stored_size,
            offset,
            length,
            payload_offset,
            digest,
        })
    }

    /// Encodes one entry.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        put(
            &mut b,
            0,
            &[
                self.kind.code(),
                self.compression.code(),
                self.fill,
                self.partition,
            ],
        );
        put(&mut b, 4, &self.stored_size.to_le_bytes());
        put(&mut b, 8, &self.offset.to_le_bytes());
        put(&mut b, 16, &self.length.to_le_bytes());
        put(&mut b, 24, &self.payload_offset.to_le_bytes());
        put(&mut b, 32, &self.digest);
        b
    }

    /// One past the region's last byte in its partition.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

impl Trailer {
    /// Decodes the trailer.
    pub fn decode(bytes: &[u8; TRAILER_SIZE]) -> Result<Self, FormatError> {
        let f = Fields(bytes);
        let magic: [u8; 8] = f.array(0);
        if magic != TRAILER_MAGIC {
            return Err(bad(0, "signature trailer magic", u64::from_le_bytes(magic)));
        }
        let version = f.u16(8);
        if version != 1 {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: 1,
            });
        }
        let algorithm = f.u16(10);
        if algorithm != ALGORITHM_ED25519 {
            return Err(bad(10, "signature algorithm", algorithm.into()));
        }
        f.zeros(12, 4)?;
        f.zeros(112, 16)?;
        Ok(Self {
            public_key: f.array(16),
            signature: f.array(48),
        })
    }

    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        put(&mut b, 0, &TRAILER_MAGIC);
        put(&mut b, 8, &1u16.to_le_bytes());
        put(&mut b, 10, &ALGORITHM_ED25519.to_le_bytes());
        put(&mut b, 16, &self.public_key);
        put(&mut b, 48, &self.signature);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header() -> Header {
        Header {
            chunk_size: 65536,
            partition_count: 1,
            region_count: 2,
            data_region_count: 1,
            manifest_size: 3 * 64,
            payload_size: 100,
            created: 1_700_000_000,
            image_version: 7,
            table: TableKind::Mbr,
            disk_signature: 0x1234_abcd,
            disk_size: 1 << 20,
            name: Header::name_field("demo"),
            manifest_digest: [9; 32],
            algorithm: Algorithm::Blake3,
        }
    }

    #[test]
    fn header_roundtrip_and_checks() {
        let h = header();
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Ok(h));
        assert_eq!(h.name(), "demo");

        let mut b = bytes;
        b[0] = b'X';
        assert!(matches!(
            Header::decode(&b),
            Err(FormatError::BadMagic { .. })
        ));
        let mut b = bytes;
        b[8] = 3;
        assert_eq!(
            Header::decode(&b),
            Err(FormatError::UnsupportedVersion {
                found: 3,
                supported: 2
            })
        );
        let mut b = bytes;
        b[100] ^= 1;
        assert_eq!(
            Header::decode(&b),
            Err(FormatError::HeaderHashMismatch {
                algorithm: Algorithm::Blake3
            })
        );
    }

    #[test]
    fn header_ranges_are_checked_even_with_a_good_hash() {
        let mut h = header();
        h.chunk_size = 3000;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(FormatError::BadField {
                field: "chunk size",
                ..
            })
        ));
        let mut h = header();
        h.manifest_size += 1;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(FormatError::BadField {
                field: "manifest size",
                ..
            })
        ));
    }

    #[test]
    fn name_field_cuts_at_a_char_boundary() {
        let long = "é".repeat(40);
        let field = Header::name_field(&long);
        let h = Header {
            name: field,
            ..header()
        };
        assert_eq!(h.name().len(), 64);
        assert_eq!(Header::decode(&h.encode()).unwrap().name(), h.name());
    }

    #[test]
    fn entries_roundtrip() {
        let p = PartitionEntry {
            number: 2,
            role: Role::RootA,
            kind: 0x83,
            bootable: false,
            first_region: 3,
            region_count: 4,
            start_lba: 2048,
            sectors: 4096,
        };
        assert_eq!(PartitionEntry::decode(&p.encode()), Ok(p));
        let r = RegionEntry {
            kind: RegionKind::Data,
            compression: Compression::Deflate,
            fill: 0,
            partition: 1,
            stored_size: 100,
            offset: 4096,
            length: 8192,
            payload_offset: 77,
            digest: [3; 32],
        };
        assert_eq!(RegionEntry::decode(&r.encode(), 65536), Ok(r));
        assert!(
            RegionEntry::decode(&r.encode(), 4096).is_err(),
            "longer than a chunk"
        );
        let t = Trailer {
            public_key: [1; 32],
            signature: [2; 64],
        };
        assert_eq!(Trailer::decode(&t.encode()), Ok(t));
    }
}
