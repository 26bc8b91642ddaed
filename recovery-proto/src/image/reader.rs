//! The streaming `.zi` reader: checks everything it can before the caller writes a byte,
//! then hands out one verified chunk at a time in caller-provided buffers. No allocation.
//!
//! Memory: the manifest buffer (64 bytes per partition and region; the caller says how
//! much it has and a bigger manifest is refused), one output buffer of the image's chunk
//! size (at most [`MAX_CHUNK_SIZE`] = 1 MiB) and a [`Decoder`] (the inflate state and a
//! 16 KiB input buffer, about 27 KiB: put it in a `static` or a `Box`, not on a small stack).

use core::fmt;

use crate::digest::Algorithm;

use ed25519_dalek::{Signature, VerifyingKey};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use super::format::{
    Compression, ENTRY_SIZE, FormatError, HEADER_SIZE, Header, MAX_CHUNK_SIZE, PartitionEntry,
    RegionEntry, RegionKind, Role, SECTOR, TRAILER_SIZE, Trailer, signed_message,
};

/// Bytes the [`Decoder`] reads from the source at a time.
pub const INPUT_BUFFER_SIZE: usize = 16 * 1024;

/// Where the image's bytes come from: a file on the recovery stick's FAT, a host file, a
/// byte slice. Random access, because the signature trailer is at the end and must be
/// checked before anything is written; the chunks themselves are read front to back.
pub trait ImageSource {
    /// What a read can fail with.
    type Error: fmt::Debug;

    /// Total size of the image in bytes.
    fn size(&mut self) -> Result<u64, Self::Error>;

    /// Fills `buffer` from byte `offset`; reading past the end is an error.
    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), Self::Error>;
}

/// A read past the end of a [`SliceSource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBounds;

/// An image held in memory (tests, fuzzing, small images).
#[derive(Clone, Copy, Debug)]
pub struct SliceSource<'a>(pub &'a [u8]);

impl ImageSource for SliceSource<'_> {
    type Error = OutOfBounds;

    fn size(&mut self) -> Result<u64, OutOfBounds> {
        Ok(self.0.len() as u64)
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), OutOfBounds> {
        let start = usize::try_from(offset).map_err(|_| OutOfBounds)?;
        let end = start.checked_add(buffer.len()).ok_or(OutOfBounds)?;
        buffer.copy_from_slice(self.0.get(start..end).ok_or(OutOfBounds)?);
        Ok(())
    }
}

/// The part of the file an error is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The 256-byte header.
    Header,
    /// The partition and region entries.
    Manifest,
    /// The compressed chunks.
    Payload,
    /// The signature trailer.
    Signature,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Manifest => "manifest",
            Part::Payload => "payload",
            Part::Signature => "signature trailer",
        })
    }
}

/// What the signature check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// No trailer, and no key was given.
    Unsigned,
    /// A trailer is present but no key was given: not checked.
    NotChecked { signer: [u8; 32] },
    /// Signed by the given key, and the signature is valid.
    Verified,
}

/// Why an image is refused. Every offset (`at`) is a byte offset in the `.zi` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError<E> {
    /// The source failed.
    Source { at: u64, error: E },
    /// The file ends inside `part`.
    Truncated { part: Part, size: u64, needed: u64 },
    /// Bytes after the last part (neither an unsigned nor a signed image's size).
    TrailingBytes { size: u64, expected: u64 },
    /// A record of `part` is malformed.
    Format {
        part: Part,
        at: u64,
        error: FormatError,
    },
    /// The manifest does not fit the caller's buffer.
    ManifestTooLarge { size: u64, capacity: usize },
    /// The manifest's digest is not the one in the header.
    ManifestHashMismatch { at: u64, algorithm: Algorithm },
    /// A key is provisioned and the image carries no signature.
    SignatureRequired,
    /// Signed by another key than the provisioned one.
    WrongKey { signer: [u8; 32] },
    /// The provisioned key is not a valid ed25519 public key.
    BadPublicKey,
    /// The signature does not verify: header or manifest changed after signing, or forged.
    BadSignature { at: u64 },
    /// The caller's output buffer is smaller than the image's chunk size.
    BufferTooSmall { needed: u64, capacity: usize },
    /// No region with this index.
    NoSuchRegion { index: u32, count: u32 },
    /// The chunk's DEFLATE stream is corrupt.
    Inflate { region: u32, at: u64, status: i8 },
    /// The chunk inflates to another length than its region's.
    ChunkLength {
        region: u32,
        at: u64,
        expected: u64,
        found: u64,
    },
    /// The chunk's digest is not the manifest's.
    ChunkHashMismatch {
        region: u32,
        partition: u8,
        offset: u64,
        at: u64,
        algorithm: Algorithm,
    },
}

impl<E: fmt::Debug> fmt::Display for ImageError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Source { at, error } => write!(f, "reading at offset {at}: {error:?}"),
            ImageError::Truncated { part, size, needed } => write!(
                f,
                "truncated image: the file ends at {size} bytes inside the {part}, which needs \
                 {needed} bytes"
            ),
            ImageError::TrailingBytes { size, expected } => write!(
                f,
                "{size} bytes, expected {expected} (unsigned) or {} (signed): trailing bytes \
                 or a damaged signature trailer",
                expected + TRAILER_SIZE as u64
            ),
            ImageError::Format { part, at, error } => match error {
                FormatError::BadField { field, value, .. } => {
                    write!(f, "{part}: {field} = {value} at offset {at} is not valid")
                }
                FormatError::ReservedNotZero { .. } => {
                    write!(f, "{part}: reserved byte at offset {at} is not zero")
                }
                other => write!(f, "{part} at offset {at}: {other}"),
            },
            ImageError::ManifestTooLarge { size, capacity } => write!(
                f,
                "manifest of {size} bytes does not fit the reader's {capacity}-byte buffer \
                 (too many regions: use a larger chunk size)"
            ),
            ImageError::ManifestHashMismatch { at, algorithm } => write!(
                f,
                "manifest at offset {at}: {algorithm} mismatch with the header (corrupt manifest)"
            ),
            ImageError::SignatureRequired => f.write_str(
                "the image is not signed, but a public key is provisioned: unsigned images \
                 are refused",
            ),
            ImageError::WrongKey { signer } => {
                write!(f, "signed by another key (")?;
                for byte in signer.iter().take(8) {
                    write!(f, "{byte:02x}")?;
                }
                f.write_str("...) than the provisioned one")
            }
            ImageError::BadPublicKey => f.write_str("the provisioned public key is not valid"),
            ImageError::BadSignature { at } => write!(
                f,
                "signature at offset {at} does not verify: the image was changed after signing"
            ),
            ImageError::BufferTooSmall { needed, capacity } => write!(
                f,
                "chunks of {needed} bytes do not fit the {capacity}-byte output buffer"
            ),
            ImageError::NoSuchRegion { index, count } => {
                write!(f, "region {index} does not exist ({count} regions)")
            }
            ImageError::Inflate { region, at, status } => write!(
                f,
                "payload: chunk of region {region} at offset {at} does not inflate (status {status})"
            ),
            ImageError::ChunkLength {
                region,
                at,
                expected,
                found,
            } => write!(
                f,
                "payload: chunk of region {region} at offset {at} inflates to {found} bytes, \
                 expected {expected}"
            ),
            ImageError::ChunkHashMismatch {
                region,
                partition,
                offset,
                at,
                algorithm,
            } => write!(
                f,
                "payload: chunk of region {region} (partition {partition}, offset {offset}) at \
                 file offset {at}: {algorithm} mismatch"
            ),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for ImageError<E> {}

impl<E> ImageError<E> {
    /// Whether the source failed (as opposed to the image being bad).
    pub fn is_source_error(&self) -> bool {
        matches!(self, ImageError::Source { .. })
    }
}

fn read<S: ImageSource>(
    source: &mut S,
    at: u64,
    buffer: &mut [u8],
) -> Result<(), ImageError<S::Error>> {
    source
        .read_exact_at(at, buffer)
        .map_err(|error| ImageError::Source { at, error })
}

/// A header and manifest that passed every check: hashes, signature (when a key was given),
/// and the layout rules (regions tile their partitions, chunks follow each other in the
/// payload, partitions with content do not overlap and fit the declared disk size).
#[derive(Debug)]
pub struct Image<'m> {
    header: Header,
    id: [u8; 32],
    manifest: &'m [u8],
    signature: SignatureCheck,
}

impl<'m> Image<'m> {
    /// Reads and checks header, signature trailer and manifest. With `key`, the image must be
    /// signed by that ed25519 public key. Nothing is written; call this before touching the
    /// target. The manifest is kept in `manifest_buffer`.
    pub fn open<S: ImageSource>(
        source: &mut S,
        manifest_buffer: &'m mut [u8],
        key: Option<&[u8; 32]>,
    ) -> Result<Self, ImageError<S::Error>> {
        let size = source
            .size()
            .map_err(|error| ImageError::Source { at: 0, error })?;
        if size < HEADER_SIZE as u64 {
            return Err(ImageError::Truncated {
                part: Part::Header,
                size,
                needed: HEADER_SIZE as u64,
            });
        }
        let mut header_bytes = [0u8; HEADER_SIZE];
        read(source, 0, &mut header_bytes)?;
        let header = Header::decode(&header_bytes).map_err(|error| ImageError::Format {
            part: Part::Header,
            at: format_offset(&error),
            error,
        })?;
        let payload_at = header.payload_offset();
        let unsigned = header.unsigned_size();
        for (part, needed) in [(Part::Manifest, payload_at), (Part::Payload, unsigned)] {
            if size < needed {
                return Err(ImageError::Truncated { part, size, needed });
            }
        }
        let signed = unsigned + TRAILER_SIZE as u64;
        let signature = if size == unsigned {
            if key.is_some() {
                return Err(ImageError::SignatureRequired);
            }
            SignatureCheck::Unsigned
        } else if size == signed {
            let mut bytes = [0u8; TRAILER_SIZE];
            read(source, unsigned, &mut bytes)?;
            let trailer = Trailer::decode(&bytes).map_err(|error| ImageError::Format {
                part: Part::Signature,
                at: unsigned + format_offset(&error),
                error,
            })?;
            match key {
                None => SignatureCheck::NotChecked {
                    signer: trailer.public_key,
                },
                Some(key) => {
                    verify_signature(&header_bytes, &trailer, key, unsigned)?;
                    SignatureCheck::Verified
                }
            }
        } else if size < signed && key.is_some() {
            return Err(ImageError::Truncated {
                part: Part::Signature,
                size,
                needed: signed,
            });
        } else {
            return Err(ImageError::TrailingBytes {
                size,
                expected: unsigned,
            });
        };

        let capacity = manifest_buffer.len();
        let manifest = usize::try_from(header.manifest_size)
            .ok()
            .and_then(|len| manifest_buffer.get_mut(..len))
            .ok_or(ImageError::ManifestTooLarge {
                size: header.manifest_size,
                capacity,
            })?;
        let manifest_at = header.manifest_offset();
        read(source, manifest_at, manifest)?;
        if header.algorithm.digest(manifest) != header.manifest_digest {
            return Err(ImageError::ManifestHashMismatch {
                at: manifest_at,
                algorithm: header.algorithm,
            });
        }
        check_layout(&header, manifest).map_err(|error| ImageError::Format {
            part: Part::Manifest,
            at: manifest_at + format_offset(&error),
            error,
        })?;
        Ok(Self {
            id: super::format::sha256(&header_bytes),
            header,
            manifest,
            signature,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The image's identity for the reflash journal: SHA-256 of the header (which binds the
    /// manifest and so every chunk).
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// What the signature check found.
    pub fn signature(&self) -> SignatureCheck {
        self.signature
    }

    /// Partition entry `index`.
    pub fn partition(&self, index: u32) -> Option<PartitionEntry> {
        let at = usize::try_from(index).ok()?.checked_mul(ENTRY_SIZE)?;
        PartitionEntry::decode(self.manifest.get(at..at + ENTRY_SIZE)?).ok()
    }

    /// The partition entries in order (the order their content is written in).
    pub fn partitions(&self) -> impl Iterator<Item = PartitionEntry> + '_ {
        (0..self.header.partition_count).filter_map(|i| self.partition(i))
    }

    /// The (first) partition with `role`, with its index.
    pub fn partition_with_role(&self, role: Role) -> Option<(u32, PartitionEntry)> {
        (0..self.header.partition_count)
            .filter_map(|i| Some((i, self.partition(i)?)))
            .find(|(_, p)| p.role == role)
    }

    /// Region entry `index` (0-based over the whole manifest).
    pub fn region(&self, index: u32) -> Option<RegionEntry> {
        let entry = usize::try_from(self.header.partition_count)
            .ok()?
            .checked_add(usize::try_from(index).ok()?)?;
        let at = entry.checked_mul(ENTRY_SIZE)?;
        RegionEntry::decode(
            self.manifest.get(at..at + ENTRY_SIZE)?,
            self.header.chunk_size,
        )
        .ok()
    }

    /// All region entries in order.
    pub fn regions(&self) -> impl Iterator<Item = RegionEntry> + '_ {
        (0..self.header.region_count).filter_map(|i| self.region(i))
    }

    /// A cursor over the regions from `first` (0 for a new write, the journal's next chunk
    /// to resume).
    pub fn chunks(&self, first: u32) -> Chunks {
        let first = first.min(self.header.region_count);
        let (mut bytes, mut payload) = (0, 0);
        for region in (0..first).filter_map(|i| self.region(i)) {
            bytes += region.length;
            payload += u64::from(region.stored_size);
        }
        Chunks {
            next: first,
            bytes_done: bytes,
            payload_done: payload,
        }
    }

    /// Totals for progress: uncompressed bytes of all regions, and the payload size.
    pub fn totals(&self) -> (u64, u64) {
        let bytes = self.regions().map(|r| r.length).sum();
        (bytes, self.header.payload_size)
    }

    /// Reads region `index`: for data, inflates its chunk into `out` and checks its digest
    /// before returning it.
    pub fn read_region<'o, S: ImageSource>(
        &self,
        source: &mut S,
        index: u32,
        decoder: &mut Decoder,
        out: &'o mut [u8],
    ) -> Result<Chunk<'o>, ImageError<S::Error>> {
        self.read_region_checking(source, index, decoder, out, Check::Digest)
    }

    /// [`Image::read_region`], with the digest check left out when `check` says the
    /// caller already checked these stored bytes (and holds them where nothing changes
    /// them: a reflash's verified payload in RAM). Inflating is still checked for length.
    pub fn read_region_checking<'o, S: ImageSource>(
        &self,
        source: &mut S,
        index: u32,
        decoder: &mut Decoder,
        out: &'o mut [u8],
        check: Check,
    ) -> Result<Chunk<'o>, ImageError<S::Error>> {
        let count = self.header.region_count;
        let region = self
            .region(index)
            .ok_or(ImageError::NoSuchRegion { index, count })?;
        let partition = self
            .partition(region.partition.into())
            .ok_or(ImageError::NoSuchRegion { index, count })?;
        let content = match region.kind {
            RegionKind::Fill => Content::Fill(region.fill),
            RegionKind::Skip => Content::Skip,
            RegionKind::Data => {
                let capacity = out.len();
                let out = usize::try_from(region.length)
                    .ok()
                    .and_then(|len| out.get_mut(..len))
                    .ok_or(ImageError::BufferTooSmall {
                        needed: u64::from(self.header.chunk_size),
                        capacity,
                    })?;
                let at = self.header.payload_offset() + region.payload_offset;
                match region.compression {
                    Compression::Stored => {
                        decoder.timed(|profile| &mut profile.reading, |_| read(source, at, out))?;
                    }
                    Compression::Deflate => decoder.timed(
                        |profile| &mut profile.inflating,
                        |decoder| decoder.inflate(source, at, index, &region, out),
                    )?,
                }
                let algorithm = self.header.algorithm;
                if check == Check::Digest
                    && decoder.timed(|profile| &mut profile.hashing, |_| algorithm.digest(out))
                        != region.digest
                {
                    return Err(ImageError::ChunkHashMismatch {
                        region: index,
                        partition: partition.number,
                        offset: region.offset,
                        at,
                        algorithm,
                    });
                }
                Content::Data(out)
            }
        };
        Ok(Chunk {
            index,
            partition,
            region,
            content,
        })
    }
}

/// The offset a record error points at (relative to the record).
fn format_offset(error: &FormatError) -> u64 {
    match error {
        FormatError::ReservedNotZero { at } | FormatError::BadField { at, .. } => *at as u64,
        FormatError::UnsupportedVersion { .. } => 8,
        FormatError::HeaderHashMismatch { .. } => 224,
        FormatError::BadMagic { .. } => 0,
    }
}

fn verify_signature<E>(
    header: &[u8; HEADER_SIZE],
    trailer: &Trailer,
    key: &[u8; 32],
    at: u64,
) -> Result<(), ImageError<E>> {
    if trailer.public_key != *key {
        return Err(ImageError::WrongKey {
            signer: trailer.public_key,
        });
    }
    let key = VerifyingKey::from_bytes(key).map_err(|_| ImageError::BadPublicKey)?;
    let signature = Signature::from_bytes(&trailer.signature);
    key.verify_strict(&signed_message(header), &signature)
        .map_err(|_| ImageError::BadSignature { at: at + 48 })
}

/// The layout rules; returns the offset in the manifest of the offending field.
fn check_layout(header: &Header, manifest: &[u8]) -> Result<(), FormatError> {
    let entry = |index: u64| -> (u64, &[u8]) {
        let at = index * ENTRY_SIZE as u64;
        let bytes = usize::try_from(at)
            .ok()
            .and_then(|at| manifest.get(at..at + ENTRY_SIZE))
            .unwrap_or_default();
        (at, bytes)
    };
    let bad = |at: u64, field: &'static str, value: u64| FormatError::BadField {
        at: at as usize,
        field,
        value,
    };
    let partitions = u64::from(header.partition_count);
    let mut next_region = 0u64;
    let mut next_payload = 0u64;
    let mut data_regions = 0u64;
    for index in 0..partitions {
        let (at, bytes) = entry(index);
        let partition = PartitionEntry::decode(bytes).map_err(|e| e_at(e, at))?;
        if u64::from(partition.first_region) != next_region {
            return Err(bad(
                at + 4,
                "first region (regions are in partition order)",
                partition.first_region.into(),
            ));
        }
        let end_lba = partition.start_lba + partition.sectors;
        if end_lba * SECTOR > header.disk_size {
            return Err(bad(at + 24, "partition end (past the disk size)", end_lba));
        }
        if !matches!(partition.role, Role::Other | Role::Table)
            && (0..index).any(|other| {
                PartitionEntry::decode(entry(other).1).is_ok_and(|o| o.role == partition.role)
            })
        {
            return Err(bad(
                at + 1,
                "partition role (given twice)",
                partition.role.code().into(),
            ));
        }
        if partition.region_count > 0 {
            let overlaps = (0..index).any(|other| {
                PartitionEntry::decode(entry(other).1).is_ok_and(|o| {
                    o.region_count > 0
                        && o.start_lba < end_lba
                        && partition.start_lba < o.start_lba + o.sectors
                })
            });
            if overlaps {
                return Err(bad(
                    at + 16,
                    "partition start (overlaps another)",
                    partition.start_lba,
                ));
            }
        }
        check_regions(
            header,
            manifest,
            (index, &partition, at),
            next_region,
            (&mut next_payload, &mut data_regions),
        )?;
        next_region += u64::from(partition.region_count);
    }
    if next_region != u64::from(header.region_count) {
        return Err(bad(
            0,
            "region count (not every region has a partition)",
            next_region,
        ));
    }
    if data_regions != u64::from(header.data_region_count) || next_payload != header.payload_size {
        return Err(bad(
            0,
            "payload size (the chunks' stored sizes do not add up to it)",
            next_payload,
        ));
    }
    Ok(())
}

/// The regions of partition `index` (entry at manifest offset `at`): they tile it, belong to
/// it, and their chunks follow each other in the payload.
fn check_regions(
    header: &Header,
    manifest: &[u8],
    (index, partition, at): (u64, &PartitionEntry, u64),
    next_region: u64,
    (next_payload, data_regions): (&mut u64, &mut u64),
) -> Result<(), FormatError> {
    let partitions = u64::from(header.partition_count);
    let entry = |index: u64| -> (u64, &[u8]) {
        let at = index * ENTRY_SIZE as u64;
        let bytes = usize::try_from(at)
            .ok()
            .and_then(|at| manifest.get(at..at + ENTRY_SIZE))
            .unwrap_or_default();
        (at, bytes)
    };
    let bad = |at: u64, field: &'static str, value: u64| FormatError::BadField {
        at: at as usize,
        field,
        value,
    };
    let mut offset = 0u64;
    for region_index in next_region..next_region + u64::from(partition.region_count) {
        if region_index >= u64::from(header.region_count) {
            return Err(bad(
                at + 8,
                "region count (past the manifest)",
                partition.region_count.into(),
            ));
        }
        let (region_at, bytes) = entry(partitions + region_index);
        let region =
            RegionEntry::decode(bytes, header.chunk_size).map_err(|e| e_at(e, region_at))?;
        if u64::from(region.partition) != index {
            return Err(bad(
                region_at + 3,
                "region's partition",
                region.partition.into(),
            ));
        }
        if region.offset != offset {
            return Err(bad(
                region_at + 8,
                "region offset (regions must tile the partition)",
                region.offset,
            ));
        }
        offset = region.end();
        if offset > partition.size() {
            return Err(bad(
                region_at + 16,
                "region length (past the partition end)",
                region.length,
            ));
        }
        if region.kind == RegionKind::Data {
            if region.payload_offset != *next_payload {
                return Err(bad(
                    region_at + 24,
                    "payload offset (chunks must follow each other)",
                    region.payload_offset,
                ));
            }
            *next_payload += u64::from(region.stored_size);
            *data_regions += 1;
        }
    }
    if partition.region_count > 0 && offset != partition.size() {
        return Err(bad(
            at + 24,
            "partition size (its regions end elsewhere)",
            partition.sectors,
        ));
    }
    Ok(())
}

/// Makes a record-relative error offset absolute in the manifest.
fn e_at(error: FormatError, base: u64) -> FormatError {
    match error {
        FormatError::ReservedNotZero { at } => FormatError::ReservedNotZero {
            at: at + base as usize,
        },
        FormatError::BadField { at, field, value } => FormatError::BadField {
            at: at + base as usize,
            field,
            value,
        },
        other => other,
    }
}

/// Where a [`Decoder`] with a clock spent its time, in the clock's ticks
/// (the loader's benchmark splits a reflash into these and the block I/O).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeProfile {
    /// Reading chunk bytes from the source (stored chunks and DEFLATE input).
    pub reading: u64,
    /// Inflating, not counting the reads it waited for.
    pub inflating: u64,
    /// Computing chunk digests.
    pub hashing: u64,
}

/// The inflate state and input buffer, reused for every chunk.
pub struct Decoder {
    inflate: DecompressorOxide,
    input: [u8; INPUT_BUFFER_SIZE],
    /// A free-running counter to profile with, if any.
    clock: Option<fn() -> u64>,
    profile: DecodeProfile,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Decoder")
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        Self {
            inflate: DecompressorOxide::new(),
            input: [0; INPUT_BUFFER_SIZE],
            clock: None,
            profile: DecodeProfile::default(),
        }
    }

    /// A fresh decoder that adds up, by `clock` (any free-running counter),
    /// the time spent reading, inflating and hashing ([`Decoder::profile`]).
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self {
            clock: Some(clock),
            ..Self::new()
        }
    }

    /// The time spent so far (all zero without a clock).
    pub fn profile(&self) -> DecodeProfile {
        self.profile
    }

    fn now(&self) -> u64 {
        self.clock.map_or(0, |clock| clock())
    }

    /// Runs `work`, adding its duration to the field `pick` chooses.
    fn timed<R>(
        &mut self,
        pick: fn(&mut DecodeProfile) -> &mut u64,
        work: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let start = self.now();
        let result = work(self);
        let elapsed = self.now().wrapping_sub(start);
        // Wrapping: `inflate` moves its reads' time out of `inflating`
        // before this adds the whole call back.
        let total = pick(&mut self.profile);
        *total = total.wrapping_add(elapsed);
        result
    }

    /// Inflates the raw DEFLATE stream of `region`'s chunk at file offset `at` into `out`
    /// (exactly the region's length), reading the source piece by piece.
    fn inflate<S: ImageSource>(
        &mut self,
        source: &mut S,
        at: u64,
        index: u32,
        region: &RegionEntry,
        out: &mut [u8],
    ) -> Result<(), ImageError<S::Error>> {
        self.inflate.init();
        let mut remaining = u64::from(region.stored_size);
        let mut read_at = at;
        let (mut start, mut end) = (0usize, 0usize);
        let mut out_pos = 0usize;
        let inflate_error = |status: i8| ImageError::Inflate {
            region: index,
            at,
            status,
        };
        loop {
            if start == end && remaining > 0 {
                let n = usize::try_from(remaining)
                    .unwrap_or(INPUT_BUFFER_SIZE)
                    .min(INPUT_BUFFER_SIZE);
                // The read's time moves from inflating to reading.
                let read_started = self.now();
                let buffer = self.input.get_mut(..n).unwrap_or_default();
                read(source, read_at, buffer)?;
                let elapsed = self.now().wrapping_sub(read_started);
                self.profile.reading = self.profile.reading.wrapping_add(elapsed);
                self.profile.inflating = self.profile.inflating.wrapping_sub(elapsed);
                read_at += n as u64;
                remaining -= n as u64;
                (start, end) = (0, n);
            }
            let more = if remaining > 0 {
                inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
            } else {
                0
            };
            let input = self.input.get(start..end).unwrap_or_default();
            let (status, consumed, produced) = decompress(
                &mut self.inflate,
                input,
                out,
                out_pos,
                more | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
            );
            start += consumed;
            out_pos += produced;
            match status {
                TINFLStatus::Done => {
                    if out_pos != out.len() || start != end || remaining != 0 {
                        return Err(ImageError::ChunkLength {
                            region: index,
                            at,
                            expected: region.length,
                            found: out_pos as u64,
                        });
                    }
                    return Ok(());
                }
                TINFLStatus::NeedsMoreInput if remaining > 0 || start < end => {}
                TINFLStatus::HasMoreOutput => {
                    return Err(ImageError::ChunkLength {
                        region: index,
                        at,
                        expected: region.length,
                        found: out_pos as u64 + 1,
                    });
                }
                other => return Err(inflate_error(other as i8)),
            }
            if start < end && consumed == 0 && produced == 0 {
                return Err(inflate_error(TINFLStatus::FailedCannotMakeProgress as i8));
            }
        }
    }
}

/// What to write for one region.
#[derive(Debug)]
pub enum Content<'o> {
    /// These verified bytes.
    Data(&'o [u8]),
    /// `region.length` bytes of this value.
    Fill(u8),
    /// Nothing (free blocks).
    Skip,
}

/// One region, ready to write.
#[derive(Debug)]
pub struct Chunk<'o> {
    /// Region index (the reflash journal's chunk number).
    pub index: u32,
    /// Its partition in the image's layout.
    pub partition: PartitionEntry,
    /// The region entry.
    pub region: RegionEntry,
    /// What to write.
    pub content: Content<'o>,
}

impl Chunk<'_> {
    /// Target LBA in the image's own layout (`partition.start_lba + offset / 512`); a writer
    /// into another layout adds its partition's start to `region.offset` instead.
    pub fn layout_lba(&self) -> u64 {
        self.partition.start_lba + self.region.offset / SECTOR
    }
}

/// Progress through the regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The next region to read (= regions done).
    pub next_region: u32,
    /// Regions in the image.
    pub regions: u32,
    /// Uncompressed bytes of the regions done.
    pub bytes_done: u64,
    /// Payload bytes read so far.
    pub payload_done: u64,
}

/// A cursor over the regions in order (see [`Image::chunks`]).
#[derive(Clone, Copy, Debug)]
pub struct Chunks {
    next: u32,
    bytes_done: u64,
    payload_done: u64,
}

/// Whether reading a chunk checks its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Against the manifest's digest (always, unless the caller verified these bytes).
    Digest,
    /// Not again: the caller verified the same stored bytes and kept them unchanged.
    AlreadyVerified,
}

impl Chunks {
    /// Reads, inflates and verifies the next region; `None` after the last.
    pub fn next_chunk<'o, S: ImageSource>(
        &mut self,
        image: &Image<'_>,
        source: &mut S,
        decoder: &mut Decoder,
        out: &'o mut [u8],
    ) -> Result<Option<Chunk<'o>>, ImageError<S::Error>> {
        self.next_chunk_checking(image, source, decoder, out, Check::Digest)
    }

    /// [`Chunks::next_chunk`] with the digest check as `check` says
    /// ([`Image::read_region_checking`]).
    pub fn next_chunk_checking<'o, S: ImageSource>(
        &mut self,
        image: &Image<'_>,
        source: &mut S,
        decoder: &mut Decoder,
        out: &'o mut [u8],
        check: Check,
    ) -> Result<Option<Chunk<'o>>, ImageError<S::Error>> {
        if self.next >= image.header.region_count {
            return Ok(None);
        }
        let chunk = image.read_region_checking(source, self.next, decoder, out, check)?;
        self.next += 1;
        self.bytes_done += chunk.region.length;
        self.payload_done += u64::from(chunk.region.stored_size);
        Ok(Some(chunk))
    }

    /// Where the cursor is.
    pub fn progress(&self, image: &Image<'_>) -> Progress {
        Progress {
            next_region: self.next,
            regions: image.header.region_count,
            bytes_done: self.bytes_done,
            payload_done: self.payload_done,
        }
    }

    /// The next region index (store it in the reflash journal after writing a chunk).
    pub fn next_index(&self) -> u32 {
        self.next
    }
}

/// The largest manifest buffer the loader needs for images of `regions` regions and
/// `partitions` partitions.
pub const fn manifest_bytes(partitions: u32, regions: u32) -> usize {
    (partitions as usize + regions as usize) * ENTRY_SIZE
}

/// The output buffer every image can be read with.
pub const MAX_OUTPUT_BUFFER: usize = MAX_CHUNK_SIZE as usize;
