//! The image file on a recovery stick: found in the root of its first FAT partition, read at any offset.

use core::fmt;

use crate::block::{BLOCK_SIZE, Block, BlockDevice};
use crate::fat::{FatError, RunError, SectorRun, short_name};
use crate::image::ImageSource;
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
