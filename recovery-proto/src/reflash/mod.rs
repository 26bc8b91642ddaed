//! Reflashing a disk from a `.zi` image: find it on the stick, verify it, stream it, journal it.
//!
//! The loader's recovery path is this module plus two block devices (the USB stick and the
//! eMMC):
//!
//! 1. [`StickImage::open`] finds the image file on the stick's first FAT partition and maps
//!    its clusters to sector runs, so the image can be read at any offset.
//! 2. [`reflash`] opens the image (header, signature when a key is provisioned, manifest),
//!    checks that its layout fits the target and leaves the journal's sectors alone, and
//!    reads every chunk once, inflating it and checking its digest: only an image that
//!    passes all of it is written. What it reads of the payload is kept in RAM
//!    ([`cache`]), as far as [`Buffers::cache`] holds it.
//! 3. The first write is the [`journal`] record "this image is being written", in two
//!    sectors outside every partition, so the record exists on a blank eMMC and survives
//!    the rewrite of the partition table and of the boot partition. It also fixes, once,
//!    whether the target's DATA partition holds the user's data to keep (see [`reflash`]).
//! 4. Every region is written (data inflated from the verified payload in RAM, or read and
//!    digest-checked again when it did not fit there; fill as fill; skip regions not at
//!    all); after each region that wrote anything the journal records the
//!    next one, so a reflash cut by power loss resumes there.
//! 5. [`finish`]: a fresh slot state in the new boot partition's `ZBSTATE.BIN`, then the
//!    journal is cleared. Until that clear, every power-on sees the reflash as unfinished
//!    ([`pending`]) and goes back to recovery, so no slot of a half-written image boots, and
//!    the image's own `ZBSTATE.BIN` (written with the boot partition) is never acted on
//!    before the boot partition is whole.

pub mod cache;
pub mod journal;
mod stick;

use core::fmt;

use crate::block::{BLOCK_SIZE, BlockDevice};
use crate::image::{
    Check, Content, Decoder, Image, ImageError, ImageSource, Progress, RegionKind, Role,
};
use crate::locate::{self, LocateError};
use crate::partition::Partitions;
use crate::state::State;
use crate::store::RedundantStore;

pub use journal::{DiskJournal, Entry, Extent, JOURNAL_LBAS};
pub use stick::{MAX_RUNS, StickError, StickImage, StickReadError};

/// The memory a reflash works in (large: the loader takes it from its load area).
#[derive(Debug)]
pub struct Buffers<'b> {
    /// Holds the manifest (64 bytes per partition and region).
    pub manifest: &'b mut [u8],
    /// One uncompressed region (the image's chunk size, at most 1 MiB).
    pub output: &'b mut [u8],
    /// The inflater's state.
    pub decoder: &'b mut Decoder,
    /// Keeps the payload the verify pass read, so the write pass neither reads the stick
    /// nor hashes again what fits ([`cache`]); may be empty.
    pub cache: &'b mut [u8],
}

/// What the caller decides about a reflash.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'k> {
    /// With a key, the image must carry a valid signature by it.
    pub key: Option<&'k [u8; 32]>,
    /// The image's 8.3 directory name on the stick (`ZBOOT   ZI `), recorded in the journal
    /// so a resume after a power cut looks for the same file.
    pub stick_name: [u8; 11],
    /// Where the journal lives (normally [`JOURNAL_LBAS`]).
    pub journal_lbas: [u64; 2],
}

impl Default for Settings<'_> {
    fn default() -> Self {
        Self {
            key: None,
            stick_name: *b"ZBOOT   ZI ",
            journal_lbas: JOURNAL_LBAS,
        }
    }
}

/// What became of the target's DATA partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// The image has no DATA partition.
    NotInImage,
    /// The user's DATA partition was in the image's place when this reflash began: it was
    /// left as it is (the image's DATA content is not written).
    Kept(Extent),
    /// The image's DATA content was written: the target had no DATA partition in that place
    /// when the reflash began (blank, another layout, or a partition an unfinished reflash
    /// had created).
    Written,
}

/// What became of the slot state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshState {
    /// A fresh state (all slots good, ACTIVE = A) was written at these LBAs.
    Written([u64; 2]),
    /// The image's boot partition has no usable `ZBSTATE.BIN`: the disk holds the image
    /// exactly, without zboot's slot state.
    NoStateFile,
}

/// What a finished reflash did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The image's identity (SHA-256 of its header).
    pub image: [u8; 32],
    /// The region the write started from (non-zero when resumed).
    pub resumed_from: u32,
    /// Regions in the image.
    pub regions: u32,
    /// Bytes written to the target (data and fill) by this run.
    pub bytes_written: u64,
    /// Bytes of skip regions, not written, in this run.
    pub bytes_skipped: u64,
    /// Bytes of the kept DATA partition not written, in this run.
    pub bytes_kept: u64,
    /// Payload bytes the write pass took from RAM, verified by the verify pass: neither read
    /// from the stick nor hashed again.
    pub payload_from_memory: u64,
    /// Payload bytes the write pass read from the stick again (they did not fit in the
    /// cache), each chunk checked against its digest again.
    pub payload_read_again: u64,
    /// The DATA partition's fate (decided when the reflash began, kept across resumes).
    pub data: DataOutcome,
    /// The slot state written at the end.
    pub state: FreshState,
}

/// Why a reflash stopped.
#[derive(Debug)]
pub enum ReflashError<S, T> {
    /// The image is unusable: nothing was written if this happened before the first region.
    Image(ImageError<S>),
    /// The image's layout needs a larger target.
    TargetTooSmall {
        needed_blocks: u64,
        target_blocks: u64,
    },
    /// A region's length is not whole sectors.
    UnalignedRegion { region: u32, length: u64 },
    /// A region would overwrite the reflash journal's sectors.
    JournalOverlap {
        region: u32,
        partition: u8,
        lba: u64,
        sectors: u64,
    },
    /// Reading the target failed at `lba`.
    Read { lba: u64, error: T },
    /// Writing the target failed at `lba`.
    Write { lba: u64, error: T },
}

impl<S: fmt::Debug, T: fmt::Debug> fmt::Display for ReflashError<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(error) => write!(f, "{error}"),
            Self::TargetTooSmall {
                needed_blocks,
                target_blocks,
            } => write!(
                f,
                "the image needs {needed_blocks} blocks; the target has {target_blocks}"
            ),
            Self::UnalignedRegion { region, length } => {
                write!(f, "region {region} is {length} bytes, not whole sectors")
            }
            Self::JournalOverlap {
                region,
                partition,
                lba,
                sectors,
            } => write!(
                f,
                "region {region} (partition {partition}, {sectors} sectors at LBA {lba}) covers \
                 the reflash journal at LBAs {}-{}: the image's partitions must start at LBA \
                 2048 or later",
                JOURNAL_LBAS[0], JOURNAL_LBAS[1]
            ),
            Self::Read { lba, error } => write!(f, "reading LBA {lba} failed: {error:?}"),
            Self::Write { lba, error } => write!(f, "writing LBA {lba} failed: {error:?}"),
        }
    }
}

impl<S, T> ReflashError<S, T> {
    /// Whether the error came before anything was written (the image or the target was
    /// refused): the target is exactly as it was.
    pub fn nothing_written(&self) -> bool {
        matches!(
            self,
            Self::TargetTooSmall { .. }
                | Self::UnalignedRegion { .. }
                | Self::JournalOverlap { .. }
        )
    }
}

/// What [`reflash`] returns.
pub type ReflashResult<S, T> =
    Result<Summary, ReflashError<<S as ImageSource>::Error, <T as BlockDevice>::Error>>;

/// Which of the two passes over the image a [`reflash`] progress report is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Reading and checking every chunk; nothing is written yet.
    Verify,
    /// Writing (the regions before [`Summary::resumed_from`] are not reported).
    Write,
}

/// The reflash left unfinished on `target`, if its journal records one.
pub fn pending<T: BlockDevice>(target: &mut T, lbas: [u64; 2]) -> Result<Option<Entry>, T::Error> {
    DiskJournal::new(lbas).load(target)
}

/// Writes the image from `source` onto `target` (see the module docs), calling `progress`
/// after each region of each pass.
///
/// **The DATA rule.** The image's DATA partition is not written when the target's DATA
/// partition (the same partition number) already sits exactly where the image puts it
/// (same first LBA, same size) *and holds the user's data*. Which is the case is decided
/// once, when this image's reflash begins, and recorded in the journal: a resume uses the
/// recorded decision rather than the partition table it finds, which by then is the
/// image's own (so a DATA partition this reflash created and had not yet written is never
/// mistaken for user data). A reflash that begins over another image's unfinished one
/// inherits that one's record of the user's DATA.
pub fn reflash<S: ImageSource, T: BlockDevice>(
    source: &mut S,
    target: &mut T,
    settings: &Settings<'_>,
    buffers: Buffers<'_>,
    mut progress: impl FnMut(Pass, Progress),
) -> ReflashResult<S, T> {
    let Buffers {
        manifest,
        output,
        decoder,
        cache,
    } = buffers;
    let image = Image::open(source, manifest, settings.key).map_err(ReflashError::Image)?;
    let target_blocks = target.block_count();
    let needed_blocks = image.header().disk_size / BLOCK_SIZE as u64;
    if needed_blocks > target_blocks {
        return Err(ReflashError::TargetTooSmall {
            needed_blocks,
            target_blocks,
        });
    }
    check_regions(&image, settings.journal_lbas)?;
    // Every chunk is read, inflated and hash-checked once before the first write, so a
    // damaged or tampered image leaves the target untouched. What the pass reads of the
    // payload stays in `cache` (as far as it holds it) for the write pass.
    let payload_at = image.header().payload_offset();
    let mut source =
        cache::PayloadCache::new(source, cache, payload_at, image.header().payload_size);
    verify_all(&image, &mut source, decoder, output, &mut progress)?;
    source.stop_filling();

    // The state before this run's first write: its policy, anti-rollback minimum and
    // history carry over into the fresh state (on a resume past the boot partition it
    // is the image's own).
    let previous = read_state(target);
    let mut journal = DiskJournal::new(settings.journal_lbas);
    let mut entry = begin(&image, target, &mut journal, settings)?;
    let resumed_from = entry.next_region;
    let regions = entry.regions;
    let image_data = image.partition_with_role(Role::Data);

    let mut summary = Summary {
        image: entry.image,
        resumed_from,
        regions,
        bytes_written: 0,
        bytes_skipped: 0,
        bytes_kept: 0,
        payload_from_memory: 0,
        payload_read_again: 0,
        data: match (image_data, entry.kept_data) {
            (None, _) => DataOutcome::NotInImage,
            (Some(_), Some(extent)) => DataOutcome::Kept(extent),
            (Some(_), None) => DataOutcome::Written,
        },
        state: FreshState::NoStateFile,
    };
    let mut chunks = image.chunks(resumed_from);
    loop {
        let check = check_for(&image, &source, chunks.next_index());
        let Some(chunk) = chunks
            .next_chunk_checking(&image, &mut source, decoder, output, check)
            .map_err(ReflashError::Image)?
        else {
            break;
        };
        if chunk.region.kind == RegionKind::Data {
            let stored = u64::from(chunk.region.stored_size);
            if check == Check::AlreadyVerified {
                summary.payload_from_memory += stored;
            } else {
                summary.payload_read_again += stored;
            }
        }
        let lba = chunk.layout_lba();
        let length = chunk.region.length;
        let kept = chunk.partition.role == Role::Data
            && entry.kept_data.is_some_and(|keep| {
                keep.start_lba == chunk.partition.start_lba
                    && keep.sectors == chunk.partition.sectors
            });
        let wrote = match chunk.content {
            _ if kept => {
                summary.bytes_kept += length;
                false
            }
            Content::Data(bytes) => {
                target
                    .write_blocks(lba, bytes)
                    .map_err(|error| ReflashError::Write { lba, error })?;
                summary.bytes_written += length;
                true
            }
            Content::Fill(value) => {
                write_fill(target, lba, length, value, output)?;
                summary.bytes_written += length;
                true
            }
            Content::Skip => {
                summary.bytes_skipped += length;
                false
            }
        };
        entry.next_region = chunks.next_index();
        // Regions that wrote nothing cost nothing to redo: no record for them, except
        // the last, which says every region is on the disk.
        if wrote || entry.all_written() {
            record(&mut journal, target, &entry)?;
        }
        progress(Pass::Write, chunks.progress(&image));
    }
    summary.state = finish_with(target, &mut journal, previous.as_ref())?;
    Ok(summary)
}

/// The verify pass: every chunk read, inflated and checked, before anything is written.
fn verify_all<S: ImageSource, E>(
    image: &Image<'_>,
    source: &mut S,
    decoder: &mut Decoder,
    output: &mut [u8],
    progress: &mut impl FnMut(Pass, Progress),
) -> Result<(), ReflashError<S::Error, E>> {
    let mut chunks = image.chunks(0);
    while chunks
        .next_chunk(image, source, decoder, output)
        .map_err(ReflashError::Image)?
        .is_some()
    {
        progress(Pass::Verify, chunks.progress(image));
    }
    Ok(())
}

/// How the write pass checks region `index`: a data chunk whose stored bytes the verify
/// pass left in RAM is not checked again (those are the bytes it checked, and RAM does not
/// change under the loader); any other is read and checked against its digest again.
fn check_for<S: ImageSource>(
    image: &Image<'_>,
    source: &cache::PayloadCache<'_, S>,
    index: u32,
) -> Check {
    let payload_at = image.header().payload_offset();
    let held = image.region(index).is_some_and(|region| {
        region.kind == RegionKind::Data
            && source.holds(
                payload_at + region.payload_offset,
                u64::from(region.stored_size),
            )
    });
    if held {
        Check::AlreadyVerified
    } else {
        Check::Digest
    }
}

/// Ends a reflash whose regions are all written (the journal says so): a fresh slot state
/// in the new boot partition, then the journal cleared. The loader calls this at power-on
/// when a cut came after the last region, so the stick is not needed again for it.
pub fn finish<T: BlockDevice>(
    target: &mut T,
    lbas: [u64; 2],
) -> Result<FreshState, ReflashError<core::convert::Infallible, T::Error>> {
    let mut journal = DiskJournal::new(lbas);
    journal.load(target).map_err(|error| ReflashError::Read {
        lba: lbas[0],
        error,
    })?;
    finish_with(target, &mut journal, None)
}

/// Reads the journal and records, as the reflash's first write, where this run starts and
/// which DATA partition holds the user's data (the DATA rule of [`reflash`]).
fn begin<S, T: BlockDevice>(
    image: &Image<'_>,
    target: &mut T,
    journal: &mut DiskJournal,
    settings: &Settings<'_>,
) -> Result<Entry, ReflashError<S, T::Error>> {
    let id = image.id();
    let regions = image.header().region_count;
    let lba = settings.journal_lbas[0];
    let current = journal
        .load(target)
        .map_err(|error| ReflashError::Read { lba, error })?;
    let image_data = image
        .partition_with_role(Role::Data)
        .map(|(_, partition)| partition);
    let (next_region, kept_data) = match current {
        Some(entry) if entry.image == id && entry.regions == regions => {
            (entry.next_region, entry.kept_data)
        }
        other => {
            let user_data = match other {
                // Another image's reflash was cut: only what it kept is still user data.
                Some(entry) => entry.kept_data,
                None => image_data.and_then(|data| existing_partition(target, data.number)),
            };
            let kept = user_data.filter(|extent| {
                image_data.is_some_and(|data| {
                    data.start_lba == extent.start_lba && data.sectors == extent.sectors
                })
            });
            (0, kept)
        }
    };
    let entry = Entry {
        image: id,
        next_region,
        regions,
        kept_data,
        key: settings.key.copied(),
        stick_name: settings.stick_name,
    };
    record(journal, target, &entry)?;
    Ok(entry)
}

/// Records `entry` in the journal (one sector).
fn record<S, T: BlockDevice>(
    journal: &mut DiskJournal,
    target: &mut T,
    entry: &Entry,
) -> Result<(), ReflashError<S, T::Error>> {
    let lba = journal.lbas()[0];
    journal
        .record(target, entry)
        .map_err(|error| ReflashError::Write { lba, error })
}

fn finish_with<S, T: BlockDevice>(
    target: &mut T,
    journal: &mut DiskJournal,
    previous: Option<&State>,
) -> Result<FreshState, ReflashError<S, T::Error>> {
    let location = locate::locate_state(target);
    let state = match location {
        Ok(location) => {
            let mut store = RedundantStore::new(location.lbas);
            let mut fresh = previous
                .copied()
                .unwrap_or_else(|| store.load_or_fallback(target).0);
            fresh.finish_reflash();
            store
                .format(target, &fresh)
                .map_err(|error| ReflashError::Write {
                    lba: location.lbas[0],
                    error,
                })?;
            FreshState::Written(location.lbas)
        }
        Err(LocateError::Device(error)) => return Err(ReflashError::Read { lba: 0, error }),
        Err(_) => FreshState::NoStateFile,
    };
    let lbas = journal.lbas();
    journal.clear(target).map_err(|error| ReflashError::Write {
        lba: lbas[0],
        error,
    })?;
    Ok(state)
}

/// The valid slot state on `target` as it is now, if there is one.
fn read_state<T: BlockDevice>(target: &mut T) -> Option<State> {
    let location = locate::locate_state(target).ok()?;
    RedundantStore::new(location.lbas)
        .load(target)
        .ok()
        .map(|(state, _)| state)
}

/// The target's partition `number` as its table says now.
fn existing_partition<T: BlockDevice>(target: &mut T, number: u8) -> Option<Extent> {
    let partition = Partitions::read(target).ok()?.partition(number)?;
    Some(Extent {
        start_lba: partition.start_lba,
        sectors: partition.sectors,
    })
}

/// Refuses, before anything is written, regions that are not whole sectors or that would
/// write over the journal.
fn check_regions<S, T>(image: &Image<'_>, journal: [u64; 2]) -> Result<(), ReflashError<S, T>> {
    for index in 0..image.header().region_count {
        let Some(region) = image.region(index) else {
            continue;
        };
        if region.length % BLOCK_SIZE as u64 != 0 {
            return Err(ReflashError::UnalignedRegion {
                region: index,
                length: region.length,
            });
        }
        if region.kind == RegionKind::Skip {
            continue;
        }
        let Some(partition) = image.partition(region.partition.into()) else {
            continue;
        };
        let lba = partition.start_lba + region.offset / BLOCK_SIZE as u64;
        let sectors = region.length / BLOCK_SIZE as u64;
        if journal
            .iter()
            .any(|&at| (lba..lba.saturating_add(sectors)).contains(&at))
        {
            return Err(ReflashError::JournalOverlap {
                region: index,
                partition: partition.number,
                lba,
                sectors,
            });
        }
    }
    Ok(())
}

/// Writes `length` bytes of `value` at `lba` with multi-block writes of
/// `scratch` (the region buffer, free between regions): a fill region of
/// zeros costs a handful of commands instead of one per sector.
fn write_fill<T: BlockDevice, S>(
    target: &mut T,
    lba: u64,
    length: u64,
    value: u8,
    scratch: &mut [u8],
) -> Result<(), ReflashError<S, T::Error>> {
    let span = scratch.len() / BLOCK_SIZE * BLOCK_SIZE;
    let mut single = [value; BLOCK_SIZE];
    let buffer: &mut [u8] = match scratch.get_mut(..span) {
        Some(buffer) if span > 0 => buffer,
        _ => &mut single,
    };
    buffer.fill(value);
    let mut done = 0u64;
    while done < length {
        let take = (length - done).min(buffer.len() as u64) as usize;
        let at = lba + done / BLOCK_SIZE as u64;
        target
            .write_blocks(at, buffer.get(..take).unwrap_or_default())
            .map_err(|error| ReflashError::Write { lba: at, error })?;
        done += take as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::block::{Block, RamDisk, RamDiskError, Tear};
    use crate::digest::Algorithm;
    use crate::image::writer::tests::{key, sample_image, sign};
    use crate::image::{ImageError, SliceSource};

    type Outcome = Result<Summary, ReflashError<crate::image::reader::OutOfBounds, RamDiskError>>;

    fn run(image: &[u8], disk: &mut RamDisk, key: Option<&[u8; 32]>) -> Outcome {
        run_with_progress(image, disk, key, |_, _| {})
    }

    /// [`run`], reporting progress to `progress`.
    fn run_with_progress(
        image: &[u8],
        disk: &mut RamDisk,
        key: Option<&[u8; 32]>,
        progress: impl FnMut(Pass, Progress),
    ) -> Outcome {
        reflash_from(&mut SliceSource(image), disk, key, progress)
    }

    /// A reflash of any source onto any target, with fresh buffers (a payload cache that
    /// holds the tests' small images whole).
    fn reflash_from<S: ImageSource, T: BlockDevice>(
        source: &mut S,
        target: &mut T,
        key: Option<&[u8; 32]>,
        progress: impl FnMut(Pass, Progress),
    ) -> ReflashResult<S, T> {
        reflash_cached(source, target, key, 4 << 20, progress)
    }

    /// [`reflash_from`] with a payload cache of `cache_bytes`.
    fn reflash_cached<S: ImageSource, T: BlockDevice>(
        source: &mut S,
        target: &mut T,
        key: Option<&[u8; 32]>,
        cache_bytes: usize,
        progress: impl FnMut(Pass, Progress),
    ) -> ReflashResult<S, T> {
        let mut manifest = vec![0u8; 64 * 1024];
        let mut output = vec![0u8; 1 << 20];
        let mut cache = vec![0u8; cache_bytes];
        let mut decoder = Box::new(Decoder::new());
        reflash(
            source,
            target,
            &Settings {
                key,
                ..Settings::default()
            },
            Buffers {
                manifest: &mut manifest,
                output: &mut output,
                decoder: &mut decoder,
                cache: &mut cache,
            },
            progress,
        )
    }

    /// A stick whose bytes become `changed` once `switched` is set (as a stick swapped or
    /// rewritten between the two passes, or a hostile device, would).
    struct Changing<'a> {
        bytes: &'a [u8],
        changed: Vec<u8>,
        switched: &'a core::cell::Cell<bool>,
        payload_read: u64,
        payload_at: u64,
    }

    impl ImageSource for Changing<'_> {
        type Error = crate::image::reader::OutOfBounds;
        fn size(&mut self) -> Result<u64, Self::Error> {
            Ok(self.bytes.len() as u64)
        }
        fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), Self::Error> {
            if offset >= self.payload_at {
                self.payload_read += buffer.len() as u64;
            }
            let from = if self.switched.get() {
                &self.changed
            } else {
                self.bytes
            };
            SliceSource(from).read_exact_at(offset, buffer)
        }
    }

    /// `image` with a byte of its last data chunk's stored bytes flipped, and the payload's
    /// file offset.
    fn with_last_chunk_changed(image: &[u8]) -> (Vec<u8>, u64) {
        let mut manifest = vec![0u8; 64 * 1024];
        let opened = Image::open(&mut SliceSource(image), &mut manifest, None).unwrap();
        let payload_at = opened.header().payload_offset();
        let last = (0..opened.header().region_count)
            .filter_map(|index| opened.region(index))
            .rfind(|region| region.kind == RegionKind::Data)
            .unwrap();
        let at = payload_at + last.payload_offset + u64::from(last.stored_size) / 2;
        let mut changed = image.to_vec();
        changed[at as usize] ^= 0x10;
        (changed, payload_at)
    }

    /// Reflashes `image` from a stick that changes to `changed` after the verify pass's last
    /// chunk, with a payload cache of `cache_bytes`.
    fn reflash_changing(
        image: &[u8],
        changed: Vec<u8>,
        payload_at: u64,
        cache_bytes: usize,
        disk: &mut RamDisk,
    ) -> (Outcome, u64) {
        let switched = core::cell::Cell::new(false);
        let mut stick = Changing {
            bytes: image,
            changed,
            switched: &switched,
            payload_read: 0,
            payload_at,
        };
        let outcome = reflash_cached(&mut stick, disk, None, cache_bytes, |pass, progress| {
            if pass == Pass::Verify && progress.next_region == progress.regions {
                switched.set(true);
            }
        });
        (outcome, stick.payload_read)
    }

    #[test]
    fn each_payload_byte_is_read_and_hashed_once_when_the_cache_holds_it() {
        let image = sample_image();
        let mut manifest = vec![0u8; 64 * 1024];
        let header = *Image::open(&mut SliceSource(&image), &mut manifest, None)
            .unwrap()
            .header();
        let mut disk = RamDisk::new(4096);
        let (outcome, payload_read) = reflash_changing(
            &image,
            image.clone(),
            header.payload_offset(),
            4 << 20,
            &mut disk,
        );
        let summary = outcome.unwrap();
        assert_eq!(payload_read, header.payload_size, "the payload read once");
        assert_eq!(summary.payload_from_memory, header.payload_size);
        assert_eq!(summary.payload_read_again, 0);
        assert!(same(&mut disk, &mut expected(&image)));
        // Without a cache: read (and hashed) twice, as before the cache.
        let mut disk = RamDisk::new(4096);
        let (outcome, payload_read) =
            reflash_changing(&image, image.clone(), header.payload_offset(), 0, &mut disk);
        let summary = outcome.unwrap();
        assert_eq!(payload_read, 2 * header.payload_size);
        assert_eq!(summary.payload_read_again, header.payload_size);
        assert!(same(&mut disk, &mut expected(&image)));
    }

    #[test]
    fn a_stick_that_changes_between_the_passes_cannot_change_what_is_written() {
        let image = sample_image();
        let (changed, payload_at) = with_last_chunk_changed(&image);
        // With the payload held in RAM, the write pass reads nothing from the stick: the
        // verified bytes are what is written, whatever the stick holds now.
        let mut disk = RamDisk::new(4096);
        let (outcome, _) =
            reflash_changing(&image, changed.clone(), payload_at, 4 << 20, &mut disk);
        assert_eq!(outcome.unwrap().payload_read_again, 0);
        assert!(same(&mut disk, &mut expected(&image)));

        // Without the cache, the changed chunk is read again and its digest catches it
        // before it is written; the journal keeps the reflash resumable.
        let mut disk = RamDisk::new(4096);
        let (outcome, _) = reflash_changing(&image, changed, payload_at, 0, &mut disk);
        let error = outcome.unwrap_err();
        assert!(
            matches!(
                error,
                ReflashError::Image(
                    ImageError::ChunkHashMismatch { .. }
                        | ImageError::Inflate { .. }
                        | ImageError::ChunkLength { .. }
                )
            ),
            "{error:?}"
        );
        assert!(
            journal_entry(&mut disk).is_some(),
            "resumable from the journal"
        );
    }

    /// The disk as `image` describes it.
    fn expected(image: &[u8]) -> RamDisk {
        let mut disk = RamDisk::new(4096);
        run(image, &mut disk, None).unwrap();
        disk
    }

    fn same(a: &mut RamDisk, b: &mut RamDisk) -> bool {
        (0..a.block_count()).all(|lba| a.block_mut(lba).map(|x| *x) == b.block_mut(lba).map(|x| *x))
    }

    fn journal_entry(disk: &mut RamDisk) -> Option<Entry> {
        pending(disk, JOURNAL_LBAS).unwrap()
    }

    /// A block device that notes the LBA of every sector written.
    struct Recording<'d> {
        disk: &'d mut RamDisk,
        written: Vec<u64>,
    }

    impl BlockDevice for Recording<'_> {
        type Error = RamDiskError;

        fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), RamDiskError> {
            self.disk.read_block(lba, buffer)
        }

        fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), RamDiskError> {
            self.written.push(lba);
            self.disk.write_block(lba, buffer)
        }

        fn block_count(&self) -> u64 {
            self.disk.block_count()
        }
    }

    #[test]
    fn writes_data_and_fill_and_skips_free_space() {
        let image = sample_image();
        let mut disk = RamDisk::new(4096);
        // Mark the skipped region: a reflash must leave it alone.
        for lba in 2048 + 64..2048 + 128 {
            disk.block_mut(lba).unwrap().fill(0xee);
        }
        let summary = run(&image, &mut disk, None).unwrap();
        assert_eq!(summary.bytes_written, 32768, "20 KiB data + 12 KiB fill");
        assert_eq!(summary.bytes_skipped, 32768);
        assert_eq!(summary.resumed_from, 0);
        assert_eq!(summary.data, DataOutcome::NotInImage);
        assert_eq!(
            summary.state,
            FreshState::NoStateFile,
            "the sample has no boot partition"
        );
        assert_eq!(disk.block_mut(2048).unwrap()[..5], *b"zboot");
        assert!(
            disk.block_mut(2048 + 40).unwrap().iter().all(|&b| b == 0),
            "fill"
        );
        assert!(
            disk.block_mut(2048 + 64)
                .unwrap()
                .iter()
                .all(|&b| b == 0xee),
            "skip"
        );
        assert_eq!(
            journal_entry(&mut disk),
            None,
            "the journal is cleared at the end"
        );
        for lba in JOURNAL_LBAS {
            assert!(disk.block_mut(lba).unwrap().iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn the_journal_is_the_first_write_and_the_last() {
        let image = sample_image();
        let mut disk = RamDisk::new(4096);
        let mut recording = Recording {
            disk: &mut disk,
            written: Vec::new(),
        };
        let summary =
            reflash_from(&mut SliceSource(&image), &mut recording, None, |_, _| {}).unwrap();
        let written = recording.written;
        assert!(JOURNAL_LBAS.contains(&written[0]), "first: {written:?}");
        assert!(
            written[written.len() - 3..]
                .iter()
                .all(|lba| JOURNAL_LBAS.contains(lba)),
            "the clear is the last three writes: {written:?}"
        );
        // The start record, one per region that wrote something (3 data, 1 fill), one
        // for the last region (a skip: "every region written"), and the clear's three.
        let journal_writes = written
            .iter()
            .filter(|lba| JOURNAL_LBAS.contains(lba))
            .count();
        assert_eq!(journal_writes, 1 + 4 + 1 + 3, "{written:?}");
        assert_eq!(summary.regions, 5);
    }

    #[test]
    fn progress_reports_the_whole_verify_pass_before_the_first_write() {
        let mut reports = Vec::new();
        let summary = run_with_progress(
            &sample_image(),
            &mut RamDisk::new(4096),
            None,
            |pass, progress: Progress| reports.push((pass, progress.next_region)),
        )
        .unwrap();
        let regions = summary.regions;
        let expected: Vec<(Pass, u32)> = (1..=regions)
            .map(|next| (Pass::Verify, next))
            .chain((1..=regions).map(|next| (Pass::Write, next)))
            .collect();
        assert_eq!(reports, expected);
    }

    #[test]
    fn nothing_is_written_when_the_image_is_bad() {
        let mut tampered = sample_image();
        let last = tampered.len() - 10;
        tampered[last] ^= 0x40; // inside the last chunk: its hash fails
        let mut disk = RamDisk::new(4096);
        let error = run(&tampered, &mut disk, None).unwrap_err();
        assert!(matches!(error, ReflashError::Image(_)), "{error:?}");
        assert_eq!(
            disk.writes(),
            0,
            "a tampered chunk is found before anything is written"
        );
        let error = run(&tampered[..300], &mut disk, None).unwrap_err();
        assert!(
            matches!(error, ReflashError::Image(ImageError::Truncated { .. })),
            "{error:?}"
        );
        assert_eq!(disk.writes(), 0, "a truncated image writes nothing");

        let unsigned = sample_image();
        let error = run(
            &unsigned,
            &mut disk,
            Some(&key().verifying_key().to_bytes()),
        )
        .unwrap_err();
        assert!(
            matches!(error, ReflashError::Image(ImageError::SignatureRequired)),
            "{error:?}"
        );
        assert_eq!(
            disk.writes(),
            0,
            "an unsigned image writes nothing when a key is provisioned"
        );

        let mut signed = sample_image();
        sign(&mut signed, &key());
        let wrong = ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes();
        assert!(run(&signed, &mut disk, Some(&wrong)).is_err());
        assert_eq!(
            disk.writes(),
            0,
            "a signature by another key writes nothing"
        );
        let good = key().verifying_key().to_bytes();
        run(&signed, &mut disk, Some(&good)).unwrap();
    }

    #[test]
    fn a_target_too_small_is_refused_before_writing() {
        let mut disk = RamDisk::new(2048);
        let error = run(&sample_image(), &mut disk, None).unwrap_err();
        assert!(
            matches!(
                error,
                ReflashError::TargetTooSmall {
                    target_blocks: 2048,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.nothing_written());
        assert_eq!(disk.writes(), 0);
    }

    #[test]
    fn an_image_over_the_journal_sectors_is_refused_before_writing() {
        let image = single_partition_image(Role::RootA, 2, 60, 0x11);
        let mut disk = RamDisk::new(4096);
        let error = run(&image, &mut disk, None).unwrap_err();
        assert!(
            matches!(
                error,
                ReflashError::JournalOverlap {
                    partition: 2,
                    lba: 60,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.nothing_written());
        assert_eq!(disk.writes(), 0);
        let text = std::format!("{error}");
        assert!(text.contains("LBAs 64-65"), "{text}");
    }

    #[test]
    fn power_cut_at_every_write_resumes_to_the_same_disk() {
        let image = sample_image();
        let mut reference = expected(&image);
        let total = reference.writes();
        let mut checked = 0;
        for cut in 0..total {
            for tear in [
                Tear::NotWritten,
                Tear::Prefix(100),
                Tear::Garbage(cut as u64),
                Tear::Complete,
            ] {
                let mut disk = RamDisk::new(4096);
                disk.cut_power_at_write(cut, tear);
                assert!(run(&image, &mut disk, None).is_err(), "cut {cut}");
                disk.power_on();
                // Until the journal is cleared a power-on sees an unfinished reflash;
                // after the clear began the disk already is the image.
                if journal_entry(&mut disk).is_none() {
                    assert!(
                        cut == 0 || same(&mut disk, &mut reference) || cut + 3 >= total,
                        "cut at write {cut} ({tear:?}): no journal on an unfinished disk"
                    );
                }
                let resumed = run(&image, &mut disk, None).unwrap();
                assert!(resumed.resumed_from <= resumed.regions);
                assert!(
                    same(&mut disk, &mut reference),
                    "cut at write {cut} ({tear:?})"
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * total && total > 0);
    }

    #[test]
    fn the_journal_of_another_image_is_ignored() {
        let image = sample_image();
        let mut disk = RamDisk::new(4096);
        let mut journal = DiskJournal::default();
        journal
            .record(
                &mut disk,
                &Entry {
                    image: [1; 32],
                    next_region: 3,
                    regions: 4,
                    kept_data: None,
                    key: None,
                    stick_name: *b"ZBOOT   ZI ",
                },
            )
            .unwrap();
        let summary = run(&image, &mut disk, None).unwrap();
        assert_eq!(summary.resumed_from, 0);
        assert!(same(&mut disk, &mut expected(&image)));
    }

    #[test]
    fn a_cut_after_the_last_region_is_finished_without_the_stick() {
        let image = sample_image();
        let mut reference = expected(&image);
        let total = reference.writes();
        // The write before the clear is the record "every region written".
        let mut disk = RamDisk::new(4096);
        disk.cut_power_at_write(total - 4, Tear::Complete);
        assert!(run(&image, &mut disk, None).is_err());
        disk.power_on();
        let entry = journal_entry(&mut disk).unwrap();
        assert!(entry.all_written(), "{entry:?}");
        assert_eq!(
            finish(&mut disk, JOURNAL_LBAS).unwrap(),
            FreshState::NoStateFile
        );
        assert_eq!(journal_entry(&mut disk), None);
        assert!(same(&mut disk, &mut reference));
    }

    #[test]
    fn the_image_is_found_and_read_from_a_stick() {
        use std::io::{Cursor, Write};
        let image = sample_image();
        let mut bytes = vec![0u8; 40_000 * BLOCK_SIZE];
        fatfs::format_volume(
            Cursor::new(&mut bytes[..]),
            fatfs::FormatVolumeOptions::new().bytes_per_cluster(1024),
        )
        .unwrap();
        {
            let fs = fatfs::FileSystem::new(Cursor::new(&mut bytes[..]), fatfs::FsOptions::new())
                .unwrap();
            fs.root_dir()
                .create_file("ZBOOT.ZI")
                .unwrap()
                .write_all(&image)
                .unwrap();
            fs.unmount().unwrap();
        }
        let mut stick = RamDisk::new(40_000);
        for (lba, block) in bytes.chunks(BLOCK_SIZE).enumerate() {
            stick.block_mut(lba as u64).unwrap().copy_from_slice(block);
        }
        let mut file = StickImage::open(&mut stick, "ZBOOT.ZI").unwrap();
        assert_eq!(file.len(), image.len() as u64);
        let mut back = vec![0u8; image.len()];
        file.read_exact_at(0, &mut back).unwrap();
        assert_eq!(back, image);
        // An unaligned read across sector boundaries (the sample image is small).
        let (from, to) = (333, image.len() - 7);
        let mut middle = vec![0u8; to - from];
        file.read_exact_at(from as u64, &mut middle).unwrap();
        assert_eq!(middle[..], image[from..to]);
        assert!(
            file.read_exact_at(image.len() as u64 - 1, &mut [0; 2])
                .is_err()
        );

        let mut disk = RamDisk::new(4096);
        reflash_from(&mut file, &mut disk, None, |_, _| {}).unwrap();
        assert!(same(&mut disk, &mut expected(&image)));
        assert!(matches!(
            StickImage::open(&mut stick, "OTHER.ZI"),
            Err(StickError::NotFound)
        ));
    }

    /// An image of one partition (`number`, `role`) of 16 sectors at `start_lba`, all
    /// `byte`, behind an MBR sector (the table, written first) that declares it.
    fn single_partition_image(role: Role, number: u8, start_lba: u64, byte: u8) -> Vec<u8> {
        use crate::image::writer::{
            ImageMeta, ImageWriter, PlannedPartition, encode_chunk, split_data,
        };
        use crate::image::{PartitionEntry, TableKind};
        let content = vec![byte; 8192];
        let mbr = mbr_with(number, start_lba, 16);
        let entry = |number, role, kind, start_lba, sectors| PartitionEntry {
            number,
            role,
            kind,
            bootable: false,
            first_region: 0,
            region_count: 0,
            start_lba,
            sectors,
        };
        let partitions = vec![
            PlannedPartition {
                entry: entry(0, Role::Table, 0, 0, 1),
                regions: split_data(0, 512, 8192),
            },
            PlannedPartition {
                entry: entry(number, role, 0x83, start_lba, 16),
                regions: split_data(0, 8192, 8192),
            },
        ];
        let meta = ImageMeta {
            name: "data".into(),
            version: 1,
            created: 0,
            chunk_size: 8192,
            table: TableKind::Mbr,
            disk_signature: 0x0dda_7a00,
            disk_size: (start_lba + 16) * 512,
            algorithm: Algorithm::Blake3,
        };
        let mut writer =
            ImageWriter::new(std::io::Cursor::new(Vec::new()), meta, partitions).unwrap();
        for (partition, offset, length) in writer.data_regions() {
            let source: &[u8] = if partition == 0 { &mbr } else { &content };
            let data = &source[offset as usize..(offset + length) as usize];
            writer
                .push_chunk(&encode_chunk(data, 6, Algorithm::Blake3))
                .unwrap();
        }
        writer.finish().unwrap().0.into_inner()
    }

    /// An MBR sector with primary partition `number` (1–4) at `start_lba`.
    fn mbr_with(number: u8, start_lba: u64, sectors: u64) -> Vec<u8> {
        let mut mbr = vec![0u8; 512];
        mbr[440..444].copy_from_slice(&0x0dda_7a00u32.to_le_bytes());
        let at = 446 + 16 * usize::from(number - 1);
        mbr[at + 4] = 0x83;
        mbr[at + 8..at + 12].copy_from_slice(&(start_lba as u32).to_le_bytes());
        mbr[at + 12..at + 16].copy_from_slice(&(sectors as u32).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr
    }

    /// A target whose table already has DATA (partition 2) at `start_lba`, holding 0x11.
    fn unit_with_data(start_lba: u64) -> RamDisk {
        let mut disk = RamDisk::new(4096);
        disk.block_mut(0)
            .unwrap()
            .copy_from_slice(&mbr_with(2, start_lba, 16));
        for lba in start_lba..start_lba + 16 {
            disk.block_mut(lba).unwrap().fill(0x11);
        }
        disk
    }

    #[test]
    fn the_users_data_partition_is_kept_when_the_layout_leaves_it_in_place() {
        let image = single_partition_image(Role::Data, 2, 2048, 0x5a);
        let mut disk = unit_with_data(2048);
        let summary = run(&image, &mut disk, None).unwrap();
        let extent = Extent {
            start_lba: 2048,
            sectors: 16,
        };
        assert_eq!(summary.data, DataOutcome::Kept(extent));
        assert_eq!(
            (summary.bytes_kept, disk.block_mut(2050).unwrap()[0]),
            (8192, 0x11)
        );

        let mut moved = unit_with_data(3000);
        let summary = run(&image, &mut moved, None).unwrap();
        assert_eq!(summary.data, DataOutcome::Written, "moved: rewritten");
        assert_eq!(moved.block_mut(2050).unwrap()[0], 0x5a);
    }

    #[test]
    fn a_data_partition_this_reflash_created_is_written_after_a_cut() {
        // The defect this journal fixes: on a blank target, a cut after the partition
        // table was written left a table naming DATA; the next run took it for the
        // user's and never wrote it. Cut at every write, torn every way.
        let image = single_partition_image(Role::Data, 2, 2048, 0x5a);
        let mut reference = expected(&image);
        let total = reference.writes();
        for cut in 0..total {
            for tear in [
                Tear::NotWritten,
                Tear::Prefix(64),
                Tear::Garbage(9),
                Tear::Complete,
            ] {
                let mut disk = RamDisk::new(4096);
                disk.cut_power_at_write(cut, tear);
                assert!(run(&image, &mut disk, None).is_err());
                disk.power_on();
                let unfinished = journal_entry(&mut disk).is_some();
                let summary = run(&image, &mut disk, None).unwrap();
                assert!(
                    same(&mut disk, &mut reference),
                    "cut at write {cut} ({tear:?}): {summary:?}"
                );
                // Once the journal is cleared the reflash is complete and its DATA is
                // the user's; before, it is this reflash's own and gets written.
                if unfinished {
                    assert_eq!(
                        summary.data,
                        DataOutcome::Written,
                        "cut at write {cut} ({tear:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_users_data_survives_a_cut_at_every_write_and_a_change_of_image() {
        let image = single_partition_image(Role::Data, 2, 2048, 0x5a);
        let other = single_partition_image(Role::Data, 2, 2048, 0x6b);
        let total = {
            let mut disk = unit_with_data(2048);
            run(&image, &mut disk, None).unwrap();
            disk.writes()
        };
        for cut in 0..total {
            for tear in [Tear::NotWritten, Tear::Garbage(3), Tear::Complete] {
                for resume_with in [&image, &other] {
                    let mut disk = unit_with_data(2048);
                    disk.cut_power_at_write(cut, tear);
                    assert!(run(&image, &mut disk, None).is_err());
                    disk.power_on();
                    let summary = run(resume_with, &mut disk, None).unwrap();
                    assert!(
                        (2048..2064).all(|lba| disk
                            .block_mut(lba)
                            .unwrap()
                            .iter()
                            .all(|&b| b == 0x11)),
                        "cut at write {cut} ({tear:?}): the user's DATA was written: {summary:?}"
                    );
                }
            }
        }
    }
}
