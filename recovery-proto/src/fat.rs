//! FAT16/FAT32 boot-sector (BPB) parsing and a FAT-chain walker that proves a file is
//! contiguous and returns its LBAs, so the loader can write the state file's sectors in place
//! without ever touching FAT metadata.
//!
//! Field offsets and formulas follow Microsoft's "FAT: General Overview of On-Disk Format"
//! (fatgen103): `BPB_BytsPerSec` @11, `BPB_SecPerClus` @13, `BPB_RsvdSecCnt` @14,
//! `BPB_NumFATs` @16, `BPB_RootEntCnt` @17, `BPB_TotSec16` @19, `BPB_FATSz16` @22,
//! `BPB_TotSec32` @32, `BPB_FATSz32` @36, `BPB_RootClus` @44; the FAT type is decided by the
//! count of clusters alone (< 4085 FAT12, < 65525 FAT16, else FAT32).

use core::fmt;

use crate::block::{BLOCK_SIZE, Block, BlockDevice};

/// FAT variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    /// 16-bit FAT entries, fixed root directory.
    Fat16,
    /// 28-bit FAT entries, root directory in a cluster chain.
    Fat32,
}

/// Errors of the BPB parser and the walker; `E` is the block device's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatError<E> {
    /// The block device failed.
    Device(E),
    /// Bytes 510–511 are not 0x55 0xAA.
    MissingBootSignature { found: [u8; 2] },
    /// Only 512-byte sectors are supported (our block size).
    UnsupportedSectorSize { bytes_per_sector: u16 },
    /// `BPB_SecPerClus` must be a power of two from 1 to 128.
    BadSectorsPerCluster { value: u8 },
    /// A zero field that must not be zero (`field` names it).
    ZeroField { field: &'static str },
    /// FAT12 volumes are not supported.
    Fat12NotSupported { clusters: u32 },
    /// The metadata is larger than the volume.
    Inconsistent {
        total_sectors: u64,
        metadata_sectors: u64,
    },
    /// The volume is larger than its partition.
    LargerThanPartition {
        total_sectors: u64,
        partition_sectors: u64,
    },
    /// The file is not in the root directory.
    NotFound,
    /// The name is a directory or volume label, not a file.
    NotAFile { attributes: u8 },
    /// The file is empty (has no cluster).
    EmptyFile,
    /// The file's first cluster is out of range.
    BadCluster { cluster: u32 },
    /// The chain is not contiguous: `cluster` is followed by `next`.
    Fragmented { cluster: u32, next: u32 },
    /// The chain ended (or hit a free/bad entry `value`) after `clusters` of `expected`.
    ChainTooShort {
        clusters: u32,
        expected: u32,
        value: u32,
    },
    /// The chain goes on past the file size (`expected` clusters).
    ChainTooLong { expected: u32 },
}

impl<E: fmt::Debug> core::error::Error for FatError<E> {}

impl<E: fmt::Debug> fmt::Display for FatError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatError::Device(e) => write!(f, "block device error: {e:?}"),
            FatError::MissingBootSignature { found } => {
                write!(
                    f,
                    "no FAT boot sector: signature {found:02x?}, expected [55, aa]"
                )
            }
            FatError::UnsupportedSectorSize { bytes_per_sector } => {
                write!(
                    f,
                    "FAT sector size {bytes_per_sector} not supported (only 512)"
                )
            }
            FatError::BadSectorsPerCluster { value } => {
                write!(
                    f,
                    "sectors per cluster {value} is not a power of two up to 128"
                )
            }
            FatError::ZeroField { field } => write!(f, "FAT boot sector field {field} is zero"),
            FatError::Fat12NotSupported { clusters } => {
                write!(f, "FAT12 volume ({clusters} clusters) not supported")
            }
            FatError::Inconsistent {
                total_sectors,
                metadata_sectors,
            } => write!(
                f,
                "FAT metadata ({metadata_sectors} sectors) does not fit the volume ({total_sectors} sectors)"
            ),
            FatError::LargerThanPartition {
                total_sectors,
                partition_sectors,
            } => write!(
                f,
                "FAT volume of {total_sectors} sectors is larger than its partition ({partition_sectors})"
            ),
            FatError::NotFound => f.write_str("file not found in the root directory"),
            FatError::NotAFile { attributes } => {
                write!(f, "not a regular file (attributes {attributes:#04x})")
            }
            FatError::EmptyFile => f.write_str("file is empty (no cluster allocated)"),
            FatError::BadCluster { cluster } => write!(f, "cluster {cluster} is out of range"),
            FatError::Fragmented { cluster, next } => write!(
                f,
                "file is fragmented: cluster {cluster} is followed by cluster {next}, not {}",
                cluster.wrapping_add(1)
            ),
            FatError::ChainTooShort {
                clusters,
                expected,
                value,
            } => write!(
                f,
                "cluster chain ends after {clusters} of {expected} clusters (FAT entry {value:#x})"
            ),
            FatError::ChainTooLong { expected } => {
                write!(
                    f,
                    "cluster chain is longer than the file's {expected} clusters"
                )
            }
        }
    }
}

/// A directory entry of interest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// 8.3 name as stored (space padded).
    pub name: [u8; 11],
    /// Attribute byte.
    pub attributes: u8,
    /// First cluster.
    pub first_cluster: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A contiguous file's place on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Device LBA of the file's first byte.
    pub first_lba: u64,
    /// Sectors covered by the file's size (rounded up).
    pub sectors: u64,
    /// First cluster.
    pub first_cluster: u32,
    /// Clusters in the chain.
    pub clusters: u32,
    /// File size in bytes.
    pub size: u32,
}

/// Sectors of a file that lie next to each other on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRun {
    /// Device LBA of the run's first sector.
    pub lba: u64,
    /// Length in sectors.
    pub sectors: u64,
}

/// Why [`FatVolume::for_each_run`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunError<E, S> {
    /// The chain or the device failed.
    Fat(FatError<E>),
    /// The sink refused a run.
    Sink(S),
}

/// A FAT16/FAT32 volume starting at `base_lba` of a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatVolume {
    /// Device LBA of the boot sector.
    pub base_lba: u64,
    /// FAT16 or FAT32.
    pub fat_type: FatType,
    /// Sectors per cluster.
    pub sectors_per_cluster: u32,
    /// Reserved sectors before the first FAT.
    pub reserved_sectors: u32,
    /// Number of FATs.
    pub fat_count: u32,
    /// Sectors per FAT.
    pub fat_sectors: u32,
    /// Sectors of the fixed root directory (FAT16; 0 on FAT32).
    pub root_dir_sectors: u32,
    /// First cluster of the root directory (FAT32).
    pub root_cluster: u32,
    /// Volume-relative first sector of cluster 2.
    pub first_data_sector: u32,
    /// Number of data clusters (valid clusters are `2..cluster_count + 2`).
    pub cluster_count: u32,
    /// Total sectors of the volume.
    pub total_sectors: u32,
}

fn le16(b: &Block, at: usize) -> u16 {
    u16::from_le_bytes([
        b.get(at).copied().unwrap_or(0),
        b.get(at + 1).copied().unwrap_or(0),
    ])
}

fn le32(b: &Block, at: usize) -> u32 {
    u32::from(le16(b, at)) | (u32::from(le16(b, at + 2)) << 16)
}

/// Turns `NAME.EXT` into the padded, upper-case 11-byte 8.3 form; `None` if it does not fit.
pub fn short_name(name: &str) -> Option<[u8; 11]> {
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    if stem.is_empty() || stem.len() > 8 || ext.len() > 3 || ext.contains('.') {
        return None;
    }
    let mut out = [b' '; 11];
    let fields = stem.bytes().zip(0..8).chain(ext.bytes().zip(8..11));
    for (c, at) in fields {
        if !c.is_ascii_graphic() || b"\"*+,/:;<=>?[\\]|".contains(&c) {
            return None;
        }
        if let Some(dst) = out.get_mut(at) {
            *dst = c.to_ascii_uppercase();
        }
    }
    Some(out)
}

const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;

impl FatVolume {
    /// Parses the boot sector of a volume at `base_lba`; `partition_sectors` (if known) bounds it.
    pub fn parse<E>(
        boot: &Block,
        base_lba: u64,
        partition_sectors: Option<u64>,
    ) -> Result<Self, FatError<E>> {
        let found = [
            boot.get(510).copied().unwrap_or(0),
            boot.get(511).copied().unwrap_or(0),
        ];
        if found != [0x55, 0xAA] {
            return Err(FatError::MissingBootSignature { found });
        }
        let bytes_per_sector = le16(boot, 11);
        if usize::from(bytes_per_sector) != BLOCK_SIZE {
            return Err(FatError::UnsupportedSectorSize { bytes_per_sector });
        }
        let spc = boot.get(13).copied().unwrap_or(0);
        if !spc.is_power_of_two() {
            return Err(FatError::BadSectorsPerCluster { value: spc });
        }
        let reserved_sectors = u32::from(le16(boot, 14));
        let fat_count = u32::from(boot.get(16).copied().unwrap_or(0));
        let root_entries = u32::from(le16(boot, 17));
        let total16 = u32::from(le16(boot, 19));
        let fat16_size = u32::from(le16(boot, 22));
        let total_sectors = if total16 != 0 {
            total16
        } else {
            le32(boot, 32)
        };
        let fat_sectors = if fat16_size != 0 {
            fat16_size
        } else {
            le32(boot, 36)
        };
        for (field, value) in [
            ("BPB_RsvdSecCnt", reserved_sectors),
            ("BPB_NumFATs", fat_count),
            ("BPB_TotSec", total_sectors),
            ("BPB_FATSz", fat_sectors),
        ] {
            if value == 0 {
                return Err(FatError::ZeroField { field });
            }
        }
        let root_dir_sectors = (root_entries * 32).div_ceil(BLOCK_SIZE as u32);
        let metadata = u64::from(reserved_sectors)
            + u64::from(fat_count) * u64::from(fat_sectors)
            + u64::from(root_dir_sectors);
        if metadata >= u64::from(total_sectors) {
            return Err(FatError::Inconsistent {
                total_sectors: total_sectors.into(),
                metadata_sectors: metadata,
            });
        }
        if let Some(partition_sectors) = partition_sectors
            && u64::from(total_sectors) > partition_sectors
        {
            return Err(FatError::LargerThanPartition {
                total_sectors: total_sectors.into(),
                partition_sectors,
            });
        }
        // metadata < total_sectors <= u32::MAX, so it fits.
        let first_data_sector = metadata as u32;
        let cluster_count = (total_sectors - first_data_sector) / u32::from(spc);
        let fat_type = if cluster_count < 4085 {
            return Err(FatError::Fat12NotSupported {
                clusters: cluster_count,
            });
        } else if cluster_count < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        let volume = Self {
            base_lba,
            fat_type,
            sectors_per_cluster: u32::from(spc),
            reserved_sectors,
            fat_count,
            fat_sectors,
            root_dir_sectors,
            root_cluster: if fat_type == FatType::Fat32 {
                le32(boot, 44)
            } else {
                0
            },
            first_data_sector,
            cluster_count,
            total_sectors,
        };
        // The FAT must be large enough to hold an entry for every cluster.
        let entry_bytes = if fat_type == FatType::Fat32 { 4 } else { 2 };
        if u64::from(cluster_count + 2) * entry_bytes > u64::from(fat_sectors) * BLOCK_SIZE as u64 {
            return Err(FatError::Inconsistent {
                total_sectors: total_sectors.into(),
                metadata_sectors: metadata,
            });
        }
        if fat_type == FatType::Fat32 && !volume.valid_cluster(volume.root_cluster) {
            return Err(FatError::BadCluster {
                cluster: volume.root_cluster,
            });
        }
        Ok(volume)
    }

    /// Reads and parses the boot sector at `base_lba`.
    pub fn open<D: BlockDevice>(
        device: &mut D,
        base_lba: u64,
        partition_sectors: Option<u64>,
    ) -> Result<Self, FatError<D::Error>> {
        let mut boot = [0u8; BLOCK_SIZE];
        device
            .read_block(base_lba, &mut boot)
            .map_err(FatError::Device)?;
        Self::parse(&boot, base_lba, partition_sectors)
    }

    fn valid_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster - 2 < self.cluster_count
    }

    /// Device LBA of the first sector of `cluster`.
    pub fn cluster_lba(&self, cluster: u32) -> Option<u64> {
        self.valid_cluster(cluster).then(|| {
            self.base_lba
                + u64::from(self.first_data_sector)
                + u64::from(cluster - 2) * u64::from(self.sectors_per_cluster)
        })
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u32 {
        self.sectors_per_cluster * BLOCK_SIZE as u32
    }

    /// The FAT entry of `cluster` (from the first FAT), masked to 28 bits on FAT32.
    pub fn fat_entry<D: BlockDevice>(
        &self,
        device: &mut D,
        cluster: u32,
    ) -> Result<u32, FatError<D::Error>> {
        self.cached_fat_entry(device, cluster, &mut None, &mut 0)
    }

    fn is_end_of_chain(&self, value: u32) -> bool {
        match self.fat_type {
            FatType::Fat32 => value >= 0x0FFF_FFF8,
            FatType::Fat16 => value >= 0xFFF8,
        }
    }

    /// Finds `name` (11-byte 8.3 form, see [`short_name`]) in the root directory. Long-name,
    /// deleted and volume-label entries are skipped.
    pub fn find_in_root<D: BlockDevice>(
        &self,
        device: &mut D,
        name: &[u8; 11],
    ) -> Result<DirEntry, FatError<D::Error>> {
        let mut sector = [0u8; BLOCK_SIZE];
        match self.fat_type {
            FatType::Fat16 => {
                let start =
                    self.base_lba + u64::from(self.first_data_sector - self.root_dir_sectors);
                for i in 0..u64::from(self.root_dir_sectors) {
                    device
                        .read_block(start + i, &mut sector)
                        .map_err(FatError::Device)?;
                    match scan(&sector, name) {
                        Scan::Found(entry) => return Ok(entry),
                        Scan::End => return Err(FatError::NotFound),
                        Scan::More => {}
                    }
                }
                Err(FatError::NotFound)
            }
            FatType::Fat32 => {
                let mut cluster = self.root_cluster;
                // Bounded by the cluster count, so a looping chain cannot hang us.
                for _ in 0..self.cluster_count {
                    let lba = self
                        .cluster_lba(cluster)
                        .ok_or(FatError::BadCluster { cluster })?;
                    for i in 0..u64::from(self.sectors_per_cluster) {
                        device
                            .read_block(lba + i, &mut sector)
                            .map_err(FatError::Device)?;
                        match scan(&sector, name) {
                            Scan::Found(entry) => return Ok(entry),
                            Scan::End => return Err(FatError::NotFound),
                            Scan::More => {}
                        }
                    }
                    let next = self.fat_entry(device, cluster)?;
                    if self.is_end_of_chain(next) {
                        break;
                    }
                    cluster = next;
                }
                Err(FatError::NotFound)
            }
        }
    }

    /// Proves `entry`'s cluster chain is contiguous and exactly as long as its size needs.
    pub fn contiguous_extent<D: BlockDevice>(
        &self,
        device: &mut D,
        entry: &DirEntry,
    ) -> Result<Extent, FatError<D::Error>> {
        if entry.attributes & (ATTR_DIRECTORY | ATTR_VOLUME_ID) != 0 {
            return Err(FatError::NotAFile {
                attributes: entry.attributes,
            });
        }
        if entry.size == 0 || entry.first_cluster == 0 {
            return Err(FatError::EmptyFile);
        }
        let first_lba = self
            .cluster_lba(entry.first_cluster)
            .ok_or(FatError::BadCluster {
                cluster: entry.first_cluster,
            })?;
        let expected = entry.size.div_ceil(self.cluster_bytes());
        let mut cluster = entry.first_cluster;
        for walked in 1..=expected {
            let next = self.fat_entry(device, cluster)?;
            if walked == expected {
                if !self.is_end_of_chain(next) {
                    return Err(FatError::ChainTooLong { expected });
                }
                break;
            }
            if self.is_end_of_chain(next) || next < 2 || !self.valid_cluster(next) {
                return Err(FatError::ChainTooShort {
                    clusters: walked,
                    expected,
                    value: next,
                });
            }
            if next != cluster + 1 {
                return Err(FatError::Fragmented { cluster, next });
            }
            cluster = next;
        }
        Ok(Extent {
            first_lba,
            sectors: u64::from(entry.size.div_ceil(BLOCK_SIZE as u32)),
            first_cluster: entry.first_cluster,
            clusters: expected,
            size: entry.size,
        })
    }

    /// Walks the cluster chain of a file of `size` bytes starting at `first_cluster` and hands
    /// `sink` each maximal run of physically contiguous sectors, in file order, the last run
    /// trimmed to the sectors `size` needs. This is what fast file loading is built on: one
    /// multi-block read per run instead of one read per sector.
    ///
    /// FAT sectors are cached across consecutive entries, so a contiguous file costs one FAT
    /// read per 128 (FAT32) or 256 (FAT16) clusters. The walk is bounded by the size: a chain
    /// that loops, ends early, runs past the size or leaves the volume is an error. Returns the
    /// number of FAT sectors read.
    pub fn for_each_run<D: BlockDevice, S>(
        &self,
        device: &mut D,
        first_cluster: u32,
        size: u32,
        mut sink: impl FnMut(&mut D, SectorRun) -> Result<(), S>,
    ) -> Result<u32, RunError<D::Error, S>> {
        if size == 0 {
            return Ok(0);
        }
        let expected = size.div_ceil(self.cluster_bytes());
        let mut sectors_left = u64::from(size.div_ceil(BLOCK_SIZE as u32));
        let per_cluster = u64::from(self.sectors_per_cluster);
        let mut fat_cache: Option<(u64, Block)> = None;
        let mut fat_reads = 0;
        let mut cluster = first_cluster;
        let mut run = SectorRun {
            lba: self
                .cluster_lba(cluster)
                .ok_or(RunError::Fat(FatError::BadCluster { cluster }))?,
            sectors: 0,
        };
        for walked in 1..=expected {
            let lba = self
                .cluster_lba(cluster)
                .ok_or(RunError::Fat(FatError::BadCluster { cluster }))?;
            let take = per_cluster.min(sectors_left);
            if lba != run.lba + run.sectors {
                sink(device, run).map_err(RunError::Sink)?;
                run = SectorRun { lba, sectors: 0 };
            }
            run.sectors += take;
            sectors_left -= take;

            let next = self
                .cached_fat_entry(device, cluster, &mut fat_cache, &mut fat_reads)
                .map_err(RunError::Fat)?;
            if walked == expected {
                if !self.is_end_of_chain(next) {
                    return Err(RunError::Fat(FatError::ChainTooLong { expected }));
                }
                break;
            }
            if self.is_end_of_chain(next) || !self.valid_cluster(next) {
                return Err(RunError::Fat(FatError::ChainTooShort {
                    clusters: walked,
                    expected,
                    value: next,
                }));
            }
            cluster = next;
        }
        sink(device, run).map_err(RunError::Sink)?;
        Ok(fat_reads)
    }

    fn cached_fat_entry<D: BlockDevice>(
        &self,
        device: &mut D,
        cluster: u32,
        cache: &mut Option<(u64, Block)>,
        reads: &mut u32,
    ) -> Result<u32, FatError<D::Error>> {
        if !self.valid_cluster(cluster) {
            return Err(FatError::BadCluster { cluster });
        }
        let width: u64 = if self.fat_type == FatType::Fat32 {
            4
        } else {
            2
        };
        let offset = u64::from(cluster) * width;
        let lba = self.base_lba + u64::from(self.reserved_sectors) + offset / BLOCK_SIZE as u64;
        let within = (offset % BLOCK_SIZE as u64) as usize;
        let sector = match cache {
            Some((cached, sector)) if *cached == lba => sector,
            _ => {
                let mut sector = [0u8; BLOCK_SIZE];
                device
                    .read_block(lba, &mut sector)
                    .map_err(FatError::Device)?;
                *reads += 1;
                &mut cache.insert((lba, sector)).1
            }
        };
        Ok(match self.fat_type {
            FatType::Fat32 => le32(sector, within) & 0x0FFF_FFFF,
            FatType::Fat16 => u32::from(le16(sector, within)),
        })
    }

    /// [`Self::find_in_root`] then [`Self::contiguous_extent`].
    pub fn locate_contiguous<D: BlockDevice>(
        &self,
        device: &mut D,
        name: &[u8; 11],
    ) -> Result<Extent, FatError<D::Error>> {
        let entry = self.find_in_root(device, name)?;
        self.contiguous_extent(device, &entry)
    }
}

enum Scan {
    Found(DirEntry),
    End,
    More,
}

fn scan(sector: &Block, name: &[u8; 11]) -> Scan {
    for raw in sector.chunks_exact(32) {
        let first = raw.first().copied().unwrap_or(0);
        if first == 0x00 {
            return Scan::End;
        }
        let attributes = raw.get(11).copied().unwrap_or(0);
        if first == 0xE5 || attributes & ATTR_LONG_NAME == ATTR_LONG_NAME {
            continue;
        }
        if raw.get(..11) == Some(name.as_slice()) && attributes & ATTR_VOLUME_ID == 0 {
            let field = |at: usize| u32::from(raw.get(at).copied().unwrap_or(0));
            return Scan::Found(DirEntry {
                name: *name,
                attributes,
                first_cluster: (field(21) << 24 | field(20) << 16) | field(27) << 8 | field(26),
                size: field(31) << 24 | field(30) << 16 | field(29) << 8 | field(28),
            });
        }
    }
    Scan::More
}
