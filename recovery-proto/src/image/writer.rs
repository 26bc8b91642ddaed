//! Building `.zi` files on the host (feature `std`).
//!
//! The caller plans the regions of each partition first (which byte ranges are data, fill or
//! skip), so the manifest's size is known; [`ImageWriter::new`] then leaves room for header
//! and manifest, the chunks are appended in region order as they are compressed (in
//! parallel, by the caller), and [`ImageWriter::finish`] writes manifest and header last.

use std::io::{self, Seek, SeekFrom, Write};
use std::string::String;
use std::vec::Vec;

use super::format::{
    Compression, ENTRY_SIZE, HEADER_SIZE, Header, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, PartitionEntry,
    RegionEntry, RegionKind, SECTOR, TableKind,
};
use crate::digest::Algorithm;

/// What the header says besides sizes and hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMeta {
    /// Image name (at most 64 bytes are kept).
    pub name: String,
    /// Image version (anti-rollback).
    pub version: u32,
    /// Creation time, seconds since 1970 UTC.
    pub created: u64,
    /// Chunk size (power of two, 4 KiB–1 MiB).
    pub chunk_size: u32,
    /// Table kind of the layout.
    pub table: TableKind,
    /// MBR disk signature of the layout.
    pub disk_signature: u32,
    /// Least device size in bytes.
    pub disk_size: u64,
    /// The digest function (BLAKE3: format version 2; SHA-256: version 1). The chunks
    /// pushed must have been encoded with the same one.
    pub algorithm: Algorithm,
}

/// One planned region: its kind and byte range in the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedRegion {
    /// Data, fill or skip.
    pub kind: RegionKind,
    /// Fill byte (fill regions).
    pub fill: u8,
    /// Byte offset in the partition.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

/// One partition and its planned regions (tiling it, or empty when its content is not
/// carried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPartition {
    /// The entry; `first_region` and `region_count` are filled in by the writer.
    pub entry: PartitionEntry,
    /// Its regions in offset order.
    pub regions: Vec<PlannedRegion>,
}

/// One compressed chunk, ready to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    /// Uncompressed length.
    pub length: u64,
    /// How `stored` is encoded.
    pub compression: Compression,
    /// The bytes that go into the payload.
    pub stored: Vec<u8>,
    /// Digest of the uncompressed bytes.
    pub digest: [u8; 32],
    /// The function of `digest`.
    pub algorithm: Algorithm,
}

/// Compresses one chunk with raw DEFLATE at `level` (0–10); stores it as is when that is not
/// smaller. `algorithm` is the image's digest function.
pub fn encode_chunk(data: &[u8], level: u8, algorithm: Algorithm) -> EncodedChunk {
    let compressed = miniz_oxide::deflate::compress_to_vec(data, level);
    let (compression, stored) = if compressed.len() < data.len() {
        (Compression::Deflate, compressed)
    } else {
        (Compression::Stored, data.to_vec())
    };
    EncodedChunk {
        length: data.len() as u64,
        compression,
        stored,
        digest: algorithm.digest(data),
        algorithm,
    }
}

/// Splits `[offset, offset + length)` into data regions of at most `chunk_size` bytes,
/// aligned to `chunk_size` boundaries of the partition (so that equal content in two images
/// makes equal chunks).
pub fn split_data(offset: u64, length: u64, chunk_size: u32) -> Vec<PlannedRegion> {
    let chunk = u64::from(chunk_size);
    let mut regions = Vec::new();
    let mut at = offset;
    let end = offset + length;
    while at < end {
        let next = ((at / chunk) + 1) * chunk;
        let stop = next.min(end);
        regions.push(PlannedRegion {
            kind: RegionKind::Data,
            fill: 0,
            offset: at,
            length: stop - at,
        });
        at = stop;
    }
    regions
}

/// Why a plan or a chunk is refused (a bug in the caller, reported rather than written).
fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Writes one `.zi` file.
#[derive(Debug)]
pub struct ImageWriter<W: Write + Seek> {
    out: W,
    meta: ImageMeta,
    partitions: Vec<PartitionEntry>,
    regions: Vec<RegionEntry>,
    data: Vec<usize>,
    next_data: usize,
    payload: u64,
    start: u64,
}

impl<W: Write + Seek> ImageWriter<W> {
    /// Checks the plan and positions `out` at the payload.
    pub fn new(mut out: W, meta: ImageMeta, plan: Vec<PlannedPartition>) -> io::Result<Self> {
        if !meta.chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&meta.chunk_size)
        {
            return Err(invalid(std::format!(
                "chunk size {} is not a power of two in 4 KiB..=1 MiB",
                meta.chunk_size
            )));
        }
        let mut partitions = Vec::new();
        let mut regions = Vec::new();
        let mut data = Vec::new();
        for (index, mut planned) in plan.into_iter().enumerate() {
            planned.entry.first_region = regions.len() as u32;
            planned.entry.region_count = planned.regions.len() as u32;
            let mut at = 0;
            for region in &planned.regions {
                if region.offset != at
                    || region.length == 0
                    || region.length % SECTOR != 0
                    || (region.kind == RegionKind::Data
                        && region.length > u64::from(meta.chunk_size))
                {
                    return Err(invalid(std::format!(
                        "partition {}: region at {} of {} bytes does not continue at {at} \
                         or has a bad length",
                        planned.entry.number,
                        region.offset,
                        region.length
                    )));
                }
                at = region.offset + region.length;
                if region.kind == RegionKind::Data {
                    data.push(regions.len());
                }
                regions.push(RegionEntry {
                    kind: region.kind,
                    compression: Compression::Stored,
                    fill: if region.kind == RegionKind::Fill {
                        region.fill
                    } else {
                        0
                    },
                    partition: index as u8,
                    stored_size: 0,
                    offset: region.offset,
                    length: region.length,
                    payload_offset: 0,
                    digest: [0; 32],
                });
            }
            if !planned.regions.is_empty() && at != planned.entry.size() {
                return Err(invalid(std::format!(
                    "partition {}: regions end at {at}, the partition at {}",
                    planned.entry.number,
                    planned.entry.size()
                )));
            }
            partitions.push(planned.entry);
        }
        let manifest = (partitions.len() + regions.len()) * ENTRY_SIZE;
        let start = out.stream_position()?;
        out.write_all(&std::vec![0u8; HEADER_SIZE + manifest])?;
        Ok(Self {
            out,
            meta,
            partitions,
            regions,
            data,
            next_data: 0,
            payload: 0,
            start,
        })
    }

    /// The data regions in the order their chunks must be pushed: (partition index, byte
    /// offset in the partition, length).
    pub fn data_regions(&self) -> Vec<(u8, u64, u64)> {
        self.data
            .iter()
            .filter_map(|&i| self.regions.get(i))
            .map(|r| (r.partition, r.offset, r.length))
            .collect()
    }

    /// Appends the next data region's chunk.
    pub fn push_chunk(&mut self, chunk: &EncodedChunk) -> io::Result<()> {
        let index = *self
            .data
            .get(self.next_data)
            .ok_or_else(|| invalid("more chunks than data regions".into()))?;
        let Some(region) = self.regions.get_mut(index) else {
            return Err(invalid("region index".into()));
        };
        if chunk.length != region.length {
            return Err(invalid(std::format!(
                "chunk of {} bytes for a region of {}",
                chunk.length,
                region.length
            )));
        }
        region.compression = chunk.compression;
        region.stored_size = u32::try_from(chunk.stored.len())
            .map_err(|_| invalid("chunk larger than 4 GiB".into()))?;
        region.payload_offset = self.payload;
        if chunk.algorithm != self.meta.algorithm {
            return Err(invalid(std::format!(
                "a {} chunk for a {} image",
                chunk.algorithm,
                self.meta.algorithm
            )));
        }
        region.digest = chunk.digest;
        self.out.write_all(&chunk.stored)?;
        self.payload += chunk.stored.len() as u64;
        self.next_data += 1;
        Ok(())
    }

    /// Writes manifest and header; returns the output and the header.
    pub fn finish(mut self) -> io::Result<(W, Header)> {
        if self.next_data != self.data.len() {
            return Err(invalid(std::format!(
                "{} of {} chunks written",
                self.next_data,
                self.data.len()
            )));
        }
        let mut manifest = Vec::with_capacity((self.partitions.len() + self.regions.len()) * 64);
        for partition in &self.partitions {
            manifest.extend_from_slice(&partition.encode());
        }
        for region in &self.regions {
            manifest.extend_from_slice(&region.encode());
        }
        let header = Header {
            chunk_size: self.meta.chunk_size,
            partition_count: self.partitions.len() as u32,
            region_count: self.regions.len() as u32,
            data_region_count: self.data.len() as u32,
            manifest_size: manifest.len() as u64,
            payload_size: self.payload,
            created: self.meta.created,
            image_version: self.meta.version,
            table: self.meta.table,
            disk_signature: self.meta.disk_signature,
            disk_size: self.meta.disk_size,
            name: Header::name_field(&self.meta.name),
            manifest_digest: self.meta.algorithm.digest(&manifest),
            algorithm: self.meta.algorithm,
        };
        self.out.seek(SeekFrom::Start(self.start))?;
        self.out.write_all(&header.encode())?;
        self.out.write_all(&manifest)?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok((self.out, header))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::format::{FormatError, Role, TRAILER_SIZE, Trailer, signed_message};
    use crate::image::reader::{
        Content, Decoder, Image, ImageError, Part, SignatureCheck, SliceSource,
    };
    use ed25519_dalek::{Signer, SigningKey};
    use std::boxed::Box;
    use std::io::Cursor;
    use std::vec;

    pub(crate) const CHUNK: u32 = 8192;

    /// A partition of 64 KiB: 20 KiB of text-like data, 12 KiB zeros (fill), 32 KiB free.
    pub(crate) fn sample_image() -> Vec<u8> {
        sample_image_with(Algorithm::Blake3)
    }

    /// [`sample_image`] with its digests by `algorithm` (SHA-256: a format-1 image).
    pub(crate) fn sample_image_with(algorithm: Algorithm) -> Vec<u8> {
        sample_image_where(algorithm, false)
    }

    /// [`sample_image_with`], with the first chunk's digest damaged when `wrong_digest`.
    fn sample_image_where(algorithm: Algorithm, wrong_digest: bool) -> Vec<u8> {
        let mut content = vec![0u8; 65536];
        for (i, byte) in content.iter_mut().take(20480).enumerate() {
            *byte = b"zboot image test data "[i % 22] ^ (i / 4096) as u8;
        }
        let mut regions = split_data(0, 20480, CHUNK);
        regions.push(PlannedRegion {
            kind: RegionKind::Fill,
            fill: 0,
            offset: 20480,
            length: 12288,
        });
        regions.push(PlannedRegion {
            kind: RegionKind::Skip,
            fill: 0,
            offset: 32768,
            length: 32768,
        });
        let table = PlannedPartition {
            entry: PartitionEntry {
                number: 2,
                role: Role::RootA,
                kind: 0x83,
                bootable: false,
                first_region: 0,
                region_count: 0,
                start_lba: 2048,
                sectors: 128,
            },
            regions,
        };
        let meta = ImageMeta {
            name: "sample".into(),
            version: 3,
            created: 1_700_000_000,
            chunk_size: CHUNK,
            table: TableKind::Mbr,
            disk_signature: 0xabcd_0001,
            disk_size: (2048 + 128) * 512,
            algorithm,
        };
        let mut writer = ImageWriter::new(Cursor::new(Vec::new()), meta, vec![table]).unwrap();
        for (_, offset, length) in writer.data_regions() {
            let data = &content[offset as usize..(offset + length) as usize];
            let mut chunk = encode_chunk(data, 6, algorithm);
            if wrong_digest && offset == 0 {
                chunk.digest[0] ^= 1;
            }
            writer.push_chunk(&chunk).unwrap();
        }
        writer.finish().unwrap().0.into_inner()
    }

    pub(crate) fn sign(image: &mut Vec<u8>, key: &SigningKey) {
        let header: [u8; HEADER_SIZE] = image[..HEADER_SIZE].try_into().unwrap();
        let trailer = Trailer {
            public_key: key.verifying_key().to_bytes(),
            signature: key.sign(&signed_message(&header)).to_bytes(),
        };
        image.extend_from_slice(&trailer.encode());
    }

    pub(crate) fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    type Result<'a> =
        core::result::Result<Image<'a>, ImageError<crate::image::reader::OutOfBounds>>;

    fn open<'m>(bytes: &[u8], manifest: &'m mut [u8], key: Option<&[u8; 32]>) -> Result<'m> {
        Image::open(&mut SliceSource(bytes), manifest, key)
    }

    /// Decodes every region, returning the partition content (skip regions left as 0xEE).
    fn decode_all(
        bytes: &[u8],
    ) -> core::result::Result<Vec<u8>, ImageError<crate::image::reader::OutOfBounds>> {
        let mut manifest = [0u8; 4096];
        let image = open(bytes, &mut manifest, None)?;
        let mut decoder = Box::new(Decoder::new());
        let mut out = vec![0u8; CHUNK as usize];
        let mut disk = vec![0xEEu8; 65536];
        let mut chunks = image.chunks(0);
        let mut source = SliceSource(bytes);
        while let Some(chunk) = chunks.next_chunk(&image, &mut source, &mut decoder, &mut out)? {
            let at = chunk.region.offset as usize;
            let len = chunk.region.length as usize;
            match chunk.content {
                Content::Data(data) => disk[at..at + len].copy_from_slice(data),
                Content::Fill(byte) => disk[at..at + len].fill(byte),
                Content::Skip => {}
            }
        }
        assert_eq!(chunks.progress(&image).bytes_done, 65536);
        Ok(disk)
    }

    /// The `.zi` reader's fuzz seed is the sample image (a data, a fill and a skip region):
    /// the committed seed must match it (`ZBOOT_WRITE_FUZZ_SEEDS=1` rewrites it).
    #[test]
    fn the_zi_fuzz_seed_is_the_sample_image() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/zi_reader/seed-sample"
        );
        let image = sample_image();
        if std::env::var_os("ZBOOT_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &image).unwrap();
        }
        assert_eq!(
            std::fs::read(path).expect("the committed seed"),
            image,
            "the seed is stale: rerun with ZBOOT_WRITE_FUZZ_SEEDS=1"
        );
    }

    #[test]
    fn roundtrip_restores_data_and_fill_and_skips_free_space() {
        let bytes = sample_image();
        let disk = decode_all(&bytes).unwrap();
        assert_eq!(disk[0], b'z');
        assert_eq!(disk[20479], b"zboot image test data "[20479 % 22] ^ 4);
        assert!(disk[20480..32768].iter().all(|&b| b == 0));
        assert!(
            disk[32768..].iter().all(|&b| b == 0xEE),
            "skip is not written"
        );
        let mut manifest = [0u8; 4096];
        let image = open(&bytes, &mut manifest, None).unwrap();
        assert_eq!(image.header().name(), "sample");
        assert_eq!(image.signature(), SignatureCheck::Unsigned);
        assert_eq!(image.header().region_count, 5);
        assert!(image.header().payload_size < 20480, "compressed");
    }

    /// A clock that advances one tick per reading.
    fn counting_clock() -> u64 {
        static TICKS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        TICKS.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_decoder_with_a_clock_splits_its_time_and_one_without_costs_nothing() {
        let bytes = sample_image();
        let mut manifest = [0u8; 4096];
        let image = open(&bytes, &mut manifest, None).unwrap();
        let mut out = vec![0u8; CHUNK as usize];
        for (mut decoder, profiled) in [
            (Box::new(Decoder::with_clock(counting_clock)), true),
            (Box::new(Decoder::new()), false),
        ] {
            let mut chunks = image.chunks(0);
            let mut source = SliceSource(&bytes);
            let mut data_chunks = 0;
            while let Some(chunk) = chunks
                .next_chunk(&image, &mut source, &mut decoder, &mut out)
                .unwrap()
            {
                data_chunks += u64::from(matches!(chunk.content, Content::Data(_)));
            }
            let profile = decoder.profile();
            if profiled {
                // Each timed step reads the clock twice: at least one tick each.
                assert!(profile.hashing >= data_chunks, "{profile:?}");
                assert!(profile.inflating >= data_chunks, "{profile:?}");
                assert!(profile.reading >= data_chunks, "{profile:?}");
                // The reads inside inflate moved out of `inflating`: no wrap-around.
                assert!(profile.inflating < 1 << 32, "{profile:?}");
            } else {
                assert_eq!(profile, crate::image::DecodeProfile::default());
            }
        }
    }

    #[test]
    fn signed_image_verifies_and_unsigned_or_other_key_is_refused() {
        let public = key().verifying_key().to_bytes();
        let mut bytes = sample_image();
        let mut manifest = [0u8; 4096];
        assert_eq!(
            open(&bytes, &mut manifest, Some(&public)).unwrap_err(),
            ImageError::SignatureRequired
        );
        sign(&mut bytes, &key());
        let image = open(&bytes, &mut manifest, Some(&public)).unwrap();
        assert_eq!(image.signature(), SignatureCheck::Verified);
        let image = open(&bytes, &mut manifest, None).unwrap();
        assert_eq!(
            image.signature(),
            SignatureCheck::NotChecked { signer: public }
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        assert!(matches!(
            open(&bytes, &mut manifest, Some(&other)),
            Err(ImageError::WrongKey { .. })
        ));
        let mut forged = bytes.clone();
        let at = forged.len() - TRAILER_SIZE + 50;
        forged[at] ^= 1;
        assert!(matches!(
            open(&forged, &mut manifest, Some(&public)),
            Err(ImageError::BadSignature { .. })
        ));
    }

    #[test]
    fn truncation_is_named_by_part() {
        let bytes = sample_image();
        let mut manifest = [0u8; 4096];
        let cases = [
            (100, Part::Header),
            (300, Part::Manifest),
            (bytes.len() - 1, Part::Payload),
        ];
        for (len, part) in cases {
            match open(&bytes[..len], &mut manifest, None) {
                Err(ImageError::Truncated { part: found, .. }) => assert_eq!(found, part),
                other => panic!("{len}: {other:?}"),
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            open(&long, &mut manifest, None),
            Err(ImageError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn wrong_magic_and_newer_version_are_clear() {
        let mut bytes = sample_image();
        let mut manifest = [0u8; 4096];
        bytes[0] = b'Y';
        let error = open(&bytes, &mut manifest, None).unwrap_err();
        assert!(matches!(
            error,
            ImageError::Format {
                part: Part::Header,
                at: 0,
                error: FormatError::BadMagic { .. }
            }
        ));
        let mut bytes = sample_image();
        bytes[8] = 3;
        let error = open(&bytes, &mut manifest, None).unwrap_err();
        assert!(std::format!("{error}").contains("format version 3 is not supported"));
    }

    #[test]
    fn a_format_1_image_with_sha256_digests_is_still_read() {
        let old = sample_image_with(Algorithm::Sha256);
        assert_eq!(old[8], 1, "format version 1");
        assert_eq!(
            decode_all(&old).unwrap(),
            decode_all(&sample_image()).unwrap()
        );
        let mut manifest = [0u8; 4096];
        assert_eq!(
            open(&old, &mut manifest, None).unwrap().header().algorithm,
            Algorithm::Sha256
        );
        // A chunk is checked by its image's function, and the message names it.
        for (algorithm, name) in [
            (Algorithm::Sha256, "SHA-256"),
            (Algorithm::Blake3, "BLAKE3"),
        ] {
            let error = decode_all(&sample_image_where(algorithm, true)).unwrap_err();
            assert!(
                matches!(error, ImageError::ChunkHashMismatch { region: 0, .. }),
                "{error:?}"
            );
            assert!(
                std::format!("{error}").ends_with(&std::format!("{name} mismatch")),
                "{error}"
            );
        }
        // A version-1 header that claims version 2 fails its own (now BLAKE3) check.
        let mut relabelled = old;
        relabelled[8] = 2;
        assert!(matches!(
            open(&relabelled, &mut manifest, None).unwrap_err(),
            ImageError::Format {
                error: FormatError::HeaderHashMismatch {
                    algorithm: Algorithm::Blake3
                },
                ..
            }
        ));
    }

    #[test]
    fn manifest_corruption_and_small_buffers_are_refused() {
        let mut bytes = sample_image();
        bytes[HEADER_SIZE + 70] ^= 1;
        let mut manifest = [0u8; 4096];
        assert!(matches!(
            open(&bytes, &mut manifest, None),
            Err(ImageError::ManifestHashMismatch {
                at: 256,
                algorithm: Algorithm::Blake3
            })
        ));
        let bytes = sample_image();
        let mut small = [0u8; 64];
        assert!(matches!(
            open(&bytes, &mut small, None),
            Err(ImageError::ManifestTooLarge { .. })
        ));
    }

    #[test]
    fn chunk_hash_mismatch_names_the_region_before_it_is_handed_out() {
        let mut bytes = sample_image();
        let mut manifest = [0u8; 4096];
        let payload = {
            let image = open(&bytes, &mut manifest, None).unwrap();
            image.header().payload_offset() as usize
        };
        // The second chunk's payload: flip a byte inside its deflate stream.
        let second = {
            let image = open(&bytes, &mut manifest, None).unwrap();
            image.region(1).unwrap()
        };
        let at = payload + second.payload_offset as usize + second.stored_size as usize / 2;
        bytes[at] ^= 0x10;
        match decode_all(&bytes) {
            Err(
                ImageError::ChunkHashMismatch { region: 1, .. }
                | ImageError::Inflate { region: 1, .. }
                | ImageError::ChunkLength { region: 1, .. },
            ) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resumes_from_a_region_index() {
        let bytes = sample_image();
        let mut manifest = [0u8; 4096];
        let image = open(&bytes, &mut manifest, None).unwrap();
        let mut chunks = image.chunks(2);
        let progress = chunks.progress(&image);
        assert_eq!(progress.bytes_done, 16384);
        let mut decoder = Box::new(Decoder::new());
        let mut out = vec![0u8; CHUNK as usize];
        let chunk = chunks
            .next_chunk(&image, &mut SliceSource(&bytes), &mut decoder, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!((chunk.index, chunk.region.offset), (2, 16384));
        assert_eq!(chunk.layout_lba(), 2048 + 32);
        assert_eq!(chunks.next_index(), 3);
    }
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any single byte changed anywhere in a signed image is caught (signature, header,
        /// manifest or chunk hash), except a flip that only touches the padding bits after a
        /// DEFLATE stream's last block: those carry no data, so the chunk still decodes to the
        /// signed bytes, which is checked here instead.
        #[test]
        fn any_byte_flip_in_a_signed_image_is_rejected(at in 0usize..1_000_000, bits in 1u8..=255) {
            let mut bytes = sample_image();
            sign(&mut bytes, &key());
            let original = decode_all(&bytes).unwrap();
            let at = at % bytes.len();
            bytes[at] ^= bits;
            let public = key().verifying_key().to_bytes();
            let mut manifest = [0u8; 4096];
            let refused = open(&bytes, &mut manifest, Some(&public)).is_err()
                || match decode_all(&bytes) {
                    Err(_) => true,
                    Ok(decoded) => {
                        proptest::prop_assert_eq!(&decoded, &original, "flip at {} changed data", at);
                        true
                    }
                };
            proptest::prop_assert!(refused, "flip at {} accepted", at);
        }
    }
}
