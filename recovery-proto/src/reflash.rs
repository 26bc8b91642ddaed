//! Reflashing a disk from a `.zi` image: find it on the stick, verify it, stream it, journal it.
//!
//! The loader's recovery path is this module plus two block devices (the USB stick and the
//! eMMC) and a [`Journal`] kept in the slot state:
//!
//! 1. [`StickImage::open`] finds the image file on the stick's first FAT partition and maps
//!    its clusters to sector runs, so the image can be read at any offset.
//! 2. [`reflash`] opens the image — header, signature (when a key is provisioned) and
//!    manifest — checks that its layout fits the target, and reads every chunk once,
//!    inflating it and checking its SHA-256: only an image that passes all of it is
//!    written. It then records in the journal that this image is being written and streams
//!    every region again: data is inflated and its hash checked again before it is written;
//!    fill regions are written as fill; skip regions (free blocks) are not written at all.
//! 3. After each region outside the boot partition the journal records the next region,
//!    so a reflash cut by power loss resumes where it stopped. The image lists the boot
//!    partition last, and the journal itself lives in the boot partition's state file, so
//!    the journal is not touched while the boot partition is written: a cut there restarts
//!    the boot partition (or, if its state was already overwritten, the whole image).

use core::fmt;

use crate::block::{BLOCK_SIZE, Block, BlockDevice};
use crate::fat::{FatError, RunError, SectorRun, short_name};
use crate::image::{Content, Decoder, Image, ImageError, ImageSource, Progress, Role};
use crate::locate::{self, LocateError};

/// The most sector runs an image file on the stick may have; a file in more pieces is
/// refused (copy it to a freshly formatted stick).
pub const MAX_RUNS: usize = 64;

/// The image file on a recovery stick, readable at any offset.
#[derive(Debug)]
pub struct StickImage<'d, D> {
    device: &'d mut D,
    runs: heapless::Vec<SectorRun, MAX_RUNS>,
    size: u64,
    sector: Block,
    cached: Option<u64>,
}

/// Why the image could not be found on the stick.
#[derive(Debug)]
pub enum StickError<E> {
    /// No FAT partition (or no partition table) on the stick.
    NoFatPartition(LocateError<E>),
    /// The name is not an 8.3 name.
    BadName,
    /// No such file in the root directory.
    NotFound,
    /// The file's cluster chain is broken.
    Chain(FatError<E>),
    /// The file is in more than [`MAX_RUNS`] pieces.
    TooFragmented,
}

impl<E: fmt::Debug> fmt::Display for StickError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFatPartition(error) => write!(f, "no FAT file system on the stick: {error}"),
            Self::BadName => write!(f, "the image name is not an 8.3 file name"),
            Self::NotFound => write!(f, "the image file is not in the stick's root directory"),
            Self::Chain(error) => write!(f, "the image file's cluster chain is broken: {error:?}"),
            Self::TooFragmented => write!(
                f,
                "the image file is in more than {MAX_RUNS} pieces; copy it to a freshly formatted stick"
            ),
        }
    }
}

/// A read of the image file that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StickReadError<E> {
    /// Past the end of the file.
    OutOfRange { offset: u64, length: usize },
    /// The stick failed.
    Device(E),
}

impl<'d, D: BlockDevice> StickImage<'d, D> {
    /// Finds `name` (8.3, e.g. `ZBOOT.ZI`) in the root of the stick's first FAT partition.
    pub fn open(device: &'d mut D, name: &str) -> Result<Self, StickError<D::Error>> {
        let (_, volume) =
            locate::find_boot_volume(&mut *device).map_err(StickError::NoFatPartition)?;
        let short = short_name(name).ok_or(StickError::BadName)?;
        let entry = volume
            .find_in_root(&mut *device, &short)
            .map_err(|error| match error {
                FatError::NotFound => StickError::NotFound,
                other => StickError::Chain(other),
            })?;
        let mut runs = heapless::Vec::new();
        volume
            .for_each_run(&mut *device, entry.first_cluster, entry.size, |_, run| {
                runs.push(run).map_err(|_| ())
            })
            .map_err(|error| match error {
                RunError::Fat(error) => StickError::Chain(error),
                RunError::Sink(()) => StickError::TooFragmented,
            })?;
        Ok(Self {
            device,
            runs,
            size: u64::from(entry.size),
            sector: [0; BLOCK_SIZE],
            cached: None,
        })
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The device LBA holding byte `offset` of the file.
    fn lba_of(&self, offset: u64) -> Option<u64> {
        let mut sector = offset / BLOCK_SIZE as u64;
        for run in &self.runs {
            if sector < run.sectors {
                return Some(run.lba + sector);
            }
            sector -= run.sectors;
        }
        None
    }
}

impl<D: BlockDevice> ImageSource for StickImage<'_, D> {
    type Error = StickReadError<D::Error>;

    fn size(&mut self) -> Result<u64, Self::Error> {
        Ok(self.size)
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), Self::Error> {
        let length = buffer.len();
        let out_of_range = || StickReadError::OutOfRange { offset, length };
        let end = offset
            .checked_add(buffer.len() as u64)
            .ok_or_else(out_of_range)?;
        if end > self.size {
            return Err(out_of_range());
        }
        let mut done = 0usize;
        while done < buffer.len() {
            let at = offset + done as u64;
            let lba = self.lba_of(at).ok_or_else(out_of_range)?;
            let within = (at % BLOCK_SIZE as u64) as usize;
            let want = buffer.len() - done;
            // Whole sectors straight into the buffer, as one multi-block read where the
            // run allows; partial sectors through the one-sector cache.
            let run_left = self.run_sectors_left(at);
            if within == 0 && want >= BLOCK_SIZE && run_left > 0 {
                let sectors = (want / BLOCK_SIZE).min(run_left as usize);
                let target = buffer
                    .get_mut(done..done + sectors * BLOCK_SIZE)
                    .ok_or_else(out_of_range)?;
                self.device
                    .read_blocks(lba, target)
                    .map_err(StickReadError::Device)?;
                done += sectors * BLOCK_SIZE;
                continue;
            }
            if self.cached != Some(lba) {
                self.device
                    .read_block(lba, &mut self.sector)
                    .map_err(StickReadError::Device)?;
                self.cached = Some(lba);
            }
            let take = (BLOCK_SIZE - within).min(want);
            let source = self
                .sector
                .get(within..within + take)
                .ok_or_else(out_of_range)?;
            buffer
                .get_mut(done..done + take)
                .ok_or_else(out_of_range)?
                .copy_from_slice(source);
            done += take;
        }
        Ok(())
    }
}

impl<D> StickImage<'_, D> {
    /// Sectors left in the run holding byte `offset`, counting its own.
    fn run_sectors_left(&self, offset: u64) -> u64 {
        let mut sector = offset / BLOCK_SIZE as u64;
        for run in &self.runs {
            if sector < run.sectors {
                return run.sectors - sector;
            }
            sector -= run.sectors;
        }
        0
    }
}

/// Where an interrupted reflash is recorded (the slot state's reflash journal).
pub trait Journal {
    /// What recording can fail with.
    type Error: fmt::Debug;

    /// The region to resume `image` from: 0 unless the journal records this very image.
    fn resume_point(&mut self, image: &[u8; 32]) -> u32;

    /// Records that `image` is being written and `next_region` is the first not yet written.
    fn record(&mut self, image: &[u8; 32], next_region: u32) -> Result<(), Self::Error>;
}

/// The memory a reflash works in (large: the loader takes it from its load area).
#[derive(Debug)]
pub struct Buffers<'b> {
    /// Holds the manifest (64 bytes per partition and region).
    pub manifest: &'b mut [u8],
    /// One uncompressed region (the image's chunk size, at most 1 MiB).
    pub output: &'b mut [u8],
    /// The inflater's state.
    pub decoder: &'b mut Decoder,
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
    /// Bytes written to the target (data and fill).
    pub bytes_written: u64,
    /// Bytes of skip regions, not written.
    pub bytes_skipped: u64,
    /// Bytes of the DATA partition left as they were (see [`Preserve`]).
    pub bytes_kept: u64,
}

/// A partition of the target to leave alone: the product's DATA partition
/// when the image puts it exactly where it already is (same start and size),
/// so a reflash does not wipe the user's data. With another layout the
/// image's DATA content is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preserve {
    /// First sector of the target's DATA partition.
    pub start_lba: u64,
    /// Its length in sectors.
    pub sectors: u64,
}

/// Why a reflash stopped.
#[derive(Debug)]
pub enum ReflashError<S, T, J> {
    /// The image is unusable: nothing was written if this happened before the first region.
    Image(ImageError<S>),
    /// The image's layout needs a larger target.
    TargetTooSmall {
        needed_blocks: u64,
        target_blocks: u64,
    },
    /// A data region's length is not whole sectors.
    UnalignedRegion { region: u32, length: u64 },
    /// Writing the target failed at `lba`.
    Write { lba: u64, error: T },
    /// The journal could not be recorded.
    Journal(J),
}

impl<S: fmt::Debug, T: fmt::Debug, J: fmt::Debug> fmt::Display for ReflashError<S, T, J> {
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
            Self::Write { lba, error } => write!(f, "writing LBA {lba} failed: {error:?}"),
            Self::Journal(error) => write!(f, "recording the reflash journal failed: {error:?}"),
        }
    }
}

/// What [`reflash`] returns.
pub type ReflashResult<S, T, J> = Result<
    Summary,
    ReflashError<<S as ImageSource>::Error, <T as BlockDevice>::Error, <J as Journal>::Error>,
>;

/// Which of the two passes over the image a [`reflash`] progress report is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Reading and checking every chunk; nothing is written yet.
    Verify,
    /// Writing (the regions before [`Summary::resumed_from`] are not reported).
    Write,
}

/// Writes the image from `source` onto `target` (see the module docs), calling `progress`
/// after each region of each pass. With `key`, the image must carry a valid signature by
/// that key.
pub fn reflash<S: ImageSource, T: BlockDevice, J: Journal>(
    source: &mut S,
    target: &mut T,
    key: Option<&[u8; 32]>,
    preserve: Option<Preserve>,
    journal: &mut J,
    buffers: Buffers<'_>,
    mut progress: impl FnMut(Pass, Progress),
) -> ReflashResult<S, T, J> {
    let Buffers {
        manifest,
        output,
        decoder,
    } = buffers;
    let image = Image::open(source, manifest, key).map_err(ReflashError::Image)?;
    let target_blocks = target.block_count();
    let needed_blocks = image.header().disk_size / BLOCK_SIZE as u64;
    if needed_blocks > target_blocks {
        return Err(ReflashError::TargetTooSmall {
            needed_blocks,
            target_blocks,
        });
    }
    // Every chunk is read, inflated and hash-checked once before the first
    // write, so a damaged or tampered image leaves the target untouched (the
    // price: the stick is read twice).
    let mut check = image.chunks(0);
    while check
        .next_chunk(&image, source, decoder, output)
        .map_err(ReflashError::Image)?
        .is_some()
    {
        progress(Pass::Verify, check.progress(&image));
    }
    let id = image.id();
    let resumed_from = journal.resume_point(&id).min(image.header().region_count);
    journal
        .record(&id, resumed_from)
        .map_err(ReflashError::Journal)?;

    let mut summary = Summary {
        image: id,
        resumed_from,
        regions: image.header().region_count,
        bytes_written: 0,
        bytes_skipped: 0,
        bytes_kept: 0,
    };
    let mut chunks = image.chunks(resumed_from);
    while let Some(chunk) = chunks
        .next_chunk(&image, source, decoder, output)
        .map_err(ReflashError::Image)?
    {
        let lba = chunk.layout_lba();
        let length = chunk.region.length;
        if length % BLOCK_SIZE as u64 != 0 {
            return Err(ReflashError::UnalignedRegion {
                region: chunk.index,
                length,
            });
        }
        let kept = chunk.partition.role == Role::Data
            && preserve.is_some_and(|keep| {
                keep.start_lba == chunk.partition.start_lba
                    && keep.sectors == chunk.partition.sectors
            });
        let role = chunk.partition.role;
        let content = if kept { Content::Skip } else { chunk.content };
        if kept {
            summary.bytes_kept += length;
        }
        match content {
            Content::Data(bytes) => {
                target
                    .write_blocks(lba, bytes)
                    .map_err(|error| ReflashError::Write { lba, error })?;
                summary.bytes_written += length;
            }
            Content::Fill(value) => {
                write_fill(target, lba, length, value, output)?;
                summary.bytes_written += length;
            }
            Content::Skip if kept => {}
            Content::Skip => summary.bytes_skipped += length,
        }
        if role != Role::Boot {
            journal
                .record(&id, chunks.next_index())
                .map_err(ReflashError::Journal)?;
        }
        progress(Pass::Write, chunks.progress(&image));
    }
    Ok(summary)
}

/// Writes `length` bytes of `value` at `lba` with multi-block writes of
/// `scratch` (the region buffer, free between regions): a fill region of
/// zeros costs a handful of commands instead of one per sector.
fn write_fill<T: BlockDevice, S, J>(
    target: &mut T,
    lba: u64,
    length: u64,
    value: u8,
    scratch: &mut [u8],
) -> Result<(), ReflashError<S, T::Error, J>> {
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
    use crate::block::{RamDisk, RamDiskError, Tear};
    use crate::image::writer::tests::{key, sample_image, sign};
    use crate::image::{ImageError, SliceSource};

    /// A journal in memory; `fail_at` makes the n-th record fail.
    #[derive(Default)]
    struct MemoryJournal {
        entry: Option<([u8; 32], u32)>,
        records: usize,
    }

    impl Journal for MemoryJournal {
        type Error = ();

        fn resume_point(&mut self, image: &[u8; 32]) -> u32 {
            match self.entry {
                Some((id, next)) if id == *image => next,
                _ => 0,
            }
        }

        fn record(&mut self, image: &[u8; 32], next_region: u32) -> Result<(), ()> {
            self.entry = Some((*image, next_region));
            self.records += 1;
            Ok(())
        }
    }

    type Outcome =
        Result<Summary, ReflashError<crate::image::reader::OutOfBounds, RamDiskError, ()>>;

    fn run(
        image: &[u8],
        disk: &mut RamDisk,
        journal: &mut MemoryJournal,
        key: Option<&[u8; 32]>,
    ) -> Outcome {
        run_with_progress(image, disk, journal, key, |_, _| {})
    }

    /// [`run`], reporting progress to `progress`.
    fn run_with_progress(
        image: &[u8],
        disk: &mut RamDisk,
        journal: &mut MemoryJournal,
        key: Option<&[u8; 32]>,
        progress: impl FnMut(Pass, Progress),
    ) -> Outcome {
        let mut manifest = vec![0u8; 64 * 1024];
        let mut output = vec![0u8; 1 << 20];
        let mut decoder = Box::new(Decoder::new());
        reflash(
            &mut SliceSource(image),
            disk,
            key,
            None,
            journal,
            Buffers {
                manifest: &mut manifest,
                output: &mut output,
                decoder: &mut decoder,
            },
            progress,
        )
    }

    /// The disk as the sample image describes it (its partition at LBA 2048).
    fn expected() -> RamDisk {
        let mut disk = RamDisk::new(4096);
        run(
            &sample_image(),
            &mut disk,
            &mut MemoryJournal::default(),
            None,
        )
        .unwrap();
        disk
    }

    fn same(a: &mut RamDisk, b: &mut RamDisk) -> bool {
        (0..a.block_count()).all(|lba| a.block_mut(lba).map(|x| *x) == b.block_mut(lba).map(|x| *x))
    }

    #[test]
    fn writes_data_and_fill_and_skips_free_space() {
        let image = sample_image();
        let mut disk = RamDisk::new(4096);
        // Mark the skipped region: a reflash must leave it alone.
        for lba in 2048 + 64..2048 + 128 {
            disk.block_mut(lba).unwrap().fill(0xee);
        }
        let mut journal = MemoryJournal::default();
        let summary = run(&image, &mut disk, &mut journal, None).unwrap();
        assert_eq!(summary.bytes_written, 32768, "20 KiB data + 12 KiB fill");
        assert_eq!(summary.bytes_skipped, 32768);
        assert_eq!(summary.resumed_from, 0);
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
        assert_eq!(journal.entry.map(|(_, next)| next), Some(summary.regions));
    }

    #[test]
    fn progress_reports_the_whole_verify_pass_before_the_first_write() {
        let mut reports = Vec::new();
        let summary = run_with_progress(
            &sample_image(),
            &mut RamDisk::new(4096),
            &mut MemoryJournal::default(),
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
        let error = run(&tampered, &mut disk, &mut MemoryJournal::default(), None).unwrap_err();
        assert!(matches!(error, ReflashError::Image(_)), "{error:?}");
        assert_eq!(
            disk.writes(),
            0,
            "a tampered chunk is found before anything is written"
        );
        let error = run(
            &tampered[..300],
            &mut disk,
            &mut MemoryJournal::default(),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(error, ReflashError::Image(ImageError::Truncated { .. })),
            "{error:?}"
        );
        assert_eq!(disk.writes(), 0, "a truncated image writes nothing");

        let unsigned = sample_image();
        let error = run(
            &unsigned,
            &mut disk,
            &mut MemoryJournal::default(),
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
        assert!(
            run(
                &signed,
                &mut disk,
                &mut MemoryJournal::default(),
                Some(&wrong)
            )
            .is_err()
        );
        assert_eq!(
            disk.writes(),
            0,
            "a signature by another key writes nothing"
        );
        let good = key().verifying_key().to_bytes();
        run(
            &signed,
            &mut disk,
            &mut MemoryJournal::default(),
            Some(&good),
        )
        .unwrap();
    }

    #[test]
    fn a_target_too_small_is_refused_before_writing() {
        let mut disk = RamDisk::new(2048);
        let error = run(
            &sample_image(),
            &mut disk,
            &mut MemoryJournal::default(),
            None,
        )
        .unwrap_err();
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
        assert_eq!(disk.writes(), 0);
    }

    #[test]
    fn power_cut_at_every_write_resumes_to_the_same_disk() {
        let image = sample_image();
        let mut reference = expected();
        let total = {
            let mut disk = RamDisk::new(4096);
            run(&image, &mut disk, &mut MemoryJournal::default(), None).unwrap();
            disk.writes()
        };
        let mut checked = 0;
        for cut in 0..total {
            for tear in [
                Tear::NotWritten,
                Tear::Prefix(100),
                Tear::Garbage(cut as u64),
                Tear::Complete,
            ] {
                let mut disk = RamDisk::new(4096);
                let mut journal = MemoryJournal::default();
                disk.cut_power_at_write(cut, tear);
                assert!(
                    run(&image, &mut disk, &mut journal, None).is_err(),
                    "cut {cut}"
                );
                disk.power_on();
                let resumed = run(&image, &mut disk, &mut journal, None).unwrap();
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
        let mut journal = MemoryJournal {
            entry: Some(([1; 32], 5)),
            records: 0,
        };
        let mut disk = RamDisk::new(4096);
        let summary = run(&image, &mut disk, &mut journal, None).unwrap();
        assert_eq!(summary.resumed_from, 0);
        assert!(same(&mut disk, &mut expected()));
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
        let mut manifest = vec![0u8; 64 * 1024];
        let mut output = vec![0u8; 1 << 20];
        let mut decoder = Box::new(Decoder::new());
        reflash(
            &mut file,
            &mut disk,
            None,
            None,
            &mut MemoryJournal::default(),
            Buffers {
                manifest: &mut manifest,
                output: &mut output,
                decoder: &mut decoder,
            },
            |_, _| {},
        )
        .unwrap();
        assert!(same(&mut disk, &mut expected()));
        assert!(matches!(
            StickImage::open(&mut stick, "OTHER.ZI"),
            Err(StickError::NotFound)
        ));
    }

    #[test]
    fn records_are_one_per_region_outside_the_boot_partition() {
        let mut journal = MemoryJournal::default();
        let mut disk = RamDisk::new(4096);
        let summary = run(&sample_image(), &mut disk, &mut journal, None).unwrap();
        // The start record plus one per region (the sample has no boot partition).
        assert_eq!(journal.records, 1 + summary.regions as usize);
    }

    /// The sample image with its partition given the DATA role.
    fn data_image() -> Vec<u8> {
        use crate::image::writer::{
            ImageMeta, ImageWriter, PlannedPartition, encode_chunk, split_data,
        };
        use crate::image::{PartitionEntry, TableKind};
        let content = vec![0x5au8; 8192];
        let partition = PlannedPartition {
            entry: PartitionEntry {
                number: 6,
                role: Role::Data,
                kind: 0x83,
                bootable: false,
                first_region: 0,
                region_count: 0,
                start_lba: 2048,
                sectors: 16,
            },
            regions: split_data(0, 8192, 8192),
        };
        let meta = ImageMeta {
            name: "data".into(),
            version: 1,
            created: 0,
            chunk_size: 8192,
            table: TableKind::Mbr,
            disk_signature: 1,
            disk_size: (2048 + 16) * 512,
        };
        let mut writer =
            ImageWriter::new(std::io::Cursor::new(Vec::new()), meta, vec![partition]).unwrap();
        for (_, offset, length) in writer.data_regions() {
            let data = &content[offset as usize..(offset + length) as usize];
            writer.push_chunk(&encode_chunk(data, 6)).unwrap();
        }
        writer.finish().unwrap().0.into_inner()
    }

    #[test]
    fn the_data_partition_is_kept_when_the_layout_is_unchanged() {
        let image = data_image();
        let run_with = |preserve: Option<Preserve>| {
            let mut disk = RamDisk::new(4096);
            disk.block_mut(2048).unwrap().fill(0x11); // the user's data
            let mut manifest = vec![0u8; 64 * 1024];
            let mut output = vec![0u8; 1 << 20];
            let mut decoder = Box::new(Decoder::new());
            let summary = reflash(
                &mut SliceSource(&image),
                &mut disk,
                None,
                preserve,
                &mut MemoryJournal::default(),
                Buffers {
                    manifest: &mut manifest,
                    output: &mut output,
                    decoder: &mut decoder,
                },
                |_, _| {},
            )
            .unwrap();
            (summary, disk.block_mut(2048).unwrap()[0])
        };
        let (kept, byte) = run_with(Some(Preserve {
            start_lba: 2048,
            sectors: 16,
        }));
        assert_eq!(
            (kept.bytes_kept, kept.bytes_written, byte),
            (8192, 0, 0x11),
            "same layout: kept"
        );
        let (moved, byte) = run_with(Some(Preserve {
            start_lba: 4000,
            sectors: 16,
        }));
        assert_eq!(
            (moved.bytes_kept, moved.bytes_written, byte),
            (0, 8192, 0x5a),
            "moved: rewritten"
        );
        let (none, byte) = run_with(None);
        assert_eq!((none.bytes_kept, byte), (0, 0x5a));
    }
}
