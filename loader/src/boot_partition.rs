//! The FAT boot partition: names resolved by embedded-sdmmc, file data read by cluster runs.
//!
//! embedded-sdmmc walks directories; for the data, the file's cluster chain is
//! resolved into runs of contiguous sectors and each run is one multi-block
//! read straight into the file's destination, so a contiguous kernel costs a
//! handful of storage commands per MiB instead of one per sector.

use core::fmt;

use embedded_sdmmc::{RawDirectory, RawVolume, TimeSource, Timestamp, VolumeIdx, VolumeManager};
use recovery_proto::block::BLOCK_SIZE;
use recovery_proto::fat::{FatVolume, RunError};

use crate::storage::{Disk, DiskError};

/// The largest piece of a cluster run read at once by [`BootPartition::load_consuming`]:
/// small enough that hashing one piece overlaps reading the next for most of a file, large
/// enough that a piece costs the card a handful of commands (1 MiB: 2048 blocks, one
/// ADMA2 request).
pub const PIECE_BYTES: usize = 1 << 20;

/// zboot never creates or modifies files on FAT, so it needs no clock.
struct NoClock;

impl TimeSource for NoClock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 0,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
        }
    }
}

type Manager<'d> = VolumeManager<&'d Disk, NoClock, 4, 4, 1>;

/// A file found on the boot partition.
#[derive(Clone, Copy, Debug)]
pub struct FileInfo {
    pub size: u32,
    first_cluster: u32,
}

impl FileInfo {
    /// Bytes a load into memory touches: the size rounded up to whole sectors.
    pub fn sectors_bytes(self) -> usize {
        (self.size as usize).div_ceil(BLOCK_SIZE) * BLOCK_SIZE
    }
}

/// What went wrong reaching a file.
#[derive(Debug)]
pub enum FileError {
    /// No such file or directory.
    NotFound,
    /// The FAT library failed (bad directory structure, device error).
    Fat(embedded_sdmmc::Error<DiskError>),
    /// The destination cannot hold the file.
    TooLarge { size: u32, capacity: usize },
    /// The cluster chain does not match the file size, or leaves the volume.
    Chain(recovery_proto::fat::FatError<DiskError>),
    /// A data read failed.
    Read(DiskError),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(f, "not found"),
            Self::Fat(error) => write!(f, "FAT error: {error:?}"),
            Self::TooLarge { size, capacity } => {
                write!(
                    f,
                    "{size} bytes do not fit in the {capacity} bytes available"
                )
            }
            Self::Chain(error) => write!(f, "broken cluster chain: {error:?}"),
            Self::Read(error) => write!(f, "{error}"),
        }
    }
}

/// How a load went, for the storage benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadStats {
    /// Contiguous runs read (one multi-block read each).
    pub runs: u32,
    /// FAT sectors read to resolve the chain.
    pub fat_reads: u32,
    /// Bytes read past the end of the file (sector rounding).
    pub slack_bytes: u32,
    /// Storage commands the load issued (FAT and data reads).
    pub commands: u64,
}

/// The open boot partition.
pub struct BootPartition<'d> {
    disk: &'d Disk,
    manager: Manager<'d>,
    volume: RawVolume,
    fat: FatVolume,
}

impl fmt::Debug for BootPartition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootPartition")
            .field("fat", &self.fat)
            .finish_non_exhaustive()
    }
}

impl<'d> BootPartition<'d> {
    /// Opens the first FAT partition; `fat` is the same volume as
    /// recovery-proto located it (for cluster arithmetic).
    pub fn open(disk: &'d Disk, fat: FatVolume) -> Result<Self, FileError> {
        let manager = VolumeManager::new(disk, NoClock);
        let volume = manager
            .open_raw_volume(VolumeIdx(0))
            .map_err(FileError::Fat)?;
        Ok(Self {
            disk,
            manager,
            volume,
            fat,
        })
    }

    /// Finds `name` in the root directory or in the directory `directory`.
    pub fn find(&self, directory: Option<&str>, name: &str) -> Result<FileInfo, FileError> {
        let root = self
            .manager
            .open_root_dir(self.volume)
            .map_err(FileError::Fat)?;
        let result = match directory {
            None => self.find_in(root, name),
            Some(directory) => match self.manager.open_dir(root, directory) {
                Ok(dir) => {
                    let found = self.find_in(dir, name);
                    let _ = self.manager.close_dir(dir);
                    found
                }
                Err(embedded_sdmmc::Error::NotFound) => Err(FileError::NotFound),
                Err(error) => Err(FileError::Fat(error)),
            },
        };
        let _ = self.manager.close_dir(root);
        result
    }

    fn find_in(&self, directory: RawDirectory, name: &str) -> Result<FileInfo, FileError> {
        let entry = match self.manager.find_directory_entry(directory, name) {
            Ok(entry) => entry,
            // Not an 8.3 name (`zbmanifest.txt`), or stored under a long
            // name only: match the long file names.
            Err(embedded_sdmmc::Error::NotFound | embedded_sdmmc::Error::FilenameError(_)) => {
                self.find_long_name(directory, name)?
            }
            Err(error) => return Err(FileError::Fat(error)),
        };
        if entry.attributes.is_directory() {
            return Err(FileError::NotFound);
        }
        // embedded-sdmmc keeps the first cluster private; read it from the
        // directory entry it found (FAT spec: DIR_FstClusHI at byte 20,
        // DIR_FstClusLO at byte 26 of the 32-byte entry).
        let mut sector = [0u8; BLOCK_SIZE];
        self.disk
            .read(u64::from(entry.entry_block.0), &mut sector)
            .map_err(FileError::Read)?;
        let at = entry.entry_offset as usize;
        let field = |offset: usize| {
            sector.get(at + offset..at + offset + 2).map_or(0, |bytes| {
                u32::from(u16::from_le_bytes([bytes[0], bytes[1]]))
            })
        };
        let first_cluster = (field(20) << 16) | field(26);
        Ok(FileInfo {
            size: entry.size,
            first_cluster,
        })
    }

    fn find_long_name(
        &self,
        directory: RawDirectory,
        name: &str,
    ) -> Result<embedded_sdmmc::DirEntry, FileError> {
        // VFAT long names are at most 255 UTF-16 units; zboot's names are short.
        let mut storage = [0u8; 256];
        let mut names = embedded_sdmmc::LfnBuffer::new(&mut storage);
        let mut found = None;
        self.manager
            .iterate_dir_lfn(directory, &mut names, |entry, long_name| {
                if long_name.is_some_and(|long| long.eq_ignore_ascii_case(name)) {
                    found = Some(entry.clone());
                    core::ops::ControlFlow::Break(())
                } else {
                    core::ops::ControlFlow::Continue(())
                }
            })
            .map_err(FileError::Fat)?;
        found.ok_or(FileError::NotFound)
    }

    /// Reads the whole file into the start of `destination`, which must hold
    /// its size rounded up to whole sectors; one multi-block read per run.
    pub fn load(&self, file: FileInfo, destination: &mut [u8]) -> Result<LoadStats, FileError> {
        self.load_consuming(file, destination, |_| {})
    }

    /// [`BootPartition::load`], handing the file's bytes to `consume` in order as they
    /// arrive (each of the file's bytes once, the sector slack after its end never): a
    /// piece is consumed while the next piece's read is in flight, so on hardware hashing
    /// overlaps the transfer. Runs are read in pieces of at most [`PIECE_BYTES`].
    pub fn load_consuming(
        &self,
        file: FileInfo,
        destination: &mut [u8],
        mut consume: impl FnMut(&[u8]),
    ) -> Result<LoadStats, FileError> {
        let needed = file.sectors_bytes();
        let capacity = destination.len();
        let destination = destination.get_mut(..needed).ok_or(FileError::TooLarge {
            size: file.size,
            capacity,
        })?;
        let mut stats = LoadStats {
            slack_bytes: (needed - file.size as usize) as u32,
            ..LoadStats::default()
        };
        let mut offset = 0usize;
        // The file's bytes handed to `consume` so far.
        let mut consumed = 0usize;
        let size = file.size as usize;
        let commands_before = self.disk.commands();
        let mut disk = self.disk;
        let fat_reads = self
            .fat
            .for_each_run(&mut disk, file.first_cluster, file.size, |disk, run| {
                let end = offset + run.sectors as usize * BLOCK_SIZE;
                let mut lba = run.lba;
                while offset < end {
                    let length = (end - offset).min(PIECE_BYTES);
                    let (done, rest) = destination.split_at_mut(offset);
                    let piece = rest.get_mut(..length).ok_or(None)?;
                    let ready = done.get(consumed..offset.min(size)).unwrap_or_default();
                    disk.read_during(lba, piece, || consume(ready))
                        .map_err(Some)?;
                    consumed = consumed.max(offset.min(size));
                    offset += length;
                    lba += (length / BLOCK_SIZE) as u64;
                }
                stats.runs += 1;
                Ok::<(), Option<DiskError>>(())
            })
            .map_err(|error| match error {
                RunError::Fat(error) => FileError::Chain(error),
                RunError::Sink(Some(error)) => FileError::Read(error),
                RunError::Sink(None) => FileError::TooLarge {
                    size: file.size,
                    capacity: needed,
                },
            })?;
        consume(destination.get(consumed..size).unwrap_or_default());
        stats.fat_reads = fat_reads;
        stats.commands = self.disk.commands() - commands_before;
        Ok(stats)
    }

    /// The file's first sector (to look at a header before placing the file).
    pub fn first_sector(&self, file: FileInfo) -> Result<[u8; BLOCK_SIZE], FileError> {
        let lba = self
            .fat
            .cluster_lba(file.first_cluster)
            .ok_or(FileError::Chain(
                recovery_proto::fat::FatError::BadCluster {
                    cluster: file.first_cluster,
                },
            ))?;
        let mut sector = [0u8; BLOCK_SIZE];
        self.disk.read(lba, &mut sector).map_err(FileError::Read)?;
        Ok(sector)
    }

    /// Reads a small file (a manifest, a command line) into `buffer` and
    /// returns its bytes.
    pub fn read_small<'b>(
        &self,
        directory: Option<&str>,
        name: &str,
        buffer: &'b mut [u8],
    ) -> Result<&'b [u8], FileError> {
        let file = self.find(directory, name)?;
        self.load(file, buffer)?;
        Ok(buffer.get(..file.size as usize).unwrap_or_default())
    }
}
