//! A slot's boot files: found on the boot partition, read into place, verified against `slot.txt`.
//!
//! Every file `slot.txt` lists is checked for size before it is read and for
//! its SHA-256 after; nothing of a slot is used until all of its files have
//! passed. Gzip kernels are verified as stored, then inflated into place
//! (with the gzip CRC-32 and length checked too).

use core::fmt;

use recovery_proto::Slot;
use recovery_proto::block::BLOCK_SIZE;
use recovery_proto::gzip::{self, GzipError};
use recovery_proto::kernel_image::{ImageHeader, ImageHeaderError};
use recovery_proto::slot_manifest::{FileMismatch, SlotManifest, SlotManifestError};
use sha2::{Digest, Sha256};

use crate::boot_partition::{BootPartition, FileError, FileInfo, LoadStats};
use crate::layout::{self, DoesNotFit, LoadArea};

/// The largest `slot.txt` and `cmdline.txt` zboot reads.
const SMALL_FILE_LIMIT: usize = 4096;

/// The slot manifest's name in each slot directory.
pub const SLOT_MANIFEST: &str = "slot.txt";
const KERNEL: &str = "kernel.img";
const INITRD: &str = "initrd.img";
const DTB: &str = "dtb.dtb";
const CMDLINE: &str = "cmdline.txt";

/// A slot whose files are in place and verified.
#[derive(Debug)]
pub struct LoadedSlot {
    /// The kernel's first instruction (base + text_offset).
    pub kernel_entry: usize,
    /// `[start, end)` of the initrd, if the slot has one.
    pub initrd: Option<(usize, usize)>,
    /// Length of the slot's own DTB at [`layout::DTB_ADDRESS`], if it has one.
    pub dtb_length: Option<usize>,
    /// `cmdline.txt` as stored.
    pub cmdline: heapless::Vec<u8, SMALL_FILE_LIMIT>,
    /// `slot.txt`'s `image_version`.
    pub image_version: u32,
    /// What loading cost.
    pub report: LoadReport,
}

/// Totals for the storage benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadReport {
    /// Bytes of file data loaded.
    pub bytes: u64,
    /// Sector rounding read past the ends of files.
    pub slack_bytes: u64,
    /// Contiguous runs read.
    pub runs: u32,
    /// FAT sectors read for the chains.
    pub fat_reads: u32,
}

impl LoadReport {
    fn add(&mut self, size: u32, stats: LoadStats) {
        self.bytes += u64::from(size);
        self.slack_bytes += u64::from(stats.slack_bytes);
        self.runs += stats.runs;
        self.fat_reads += stats.fat_reads;
    }
}

/// What is wrong with one of the slot's files.
#[derive(Debug)]
pub enum Problem {
    /// Reading it failed (or it is absent).
    File(FileError),
    /// It differs from `slot.txt`.
    Mismatch(FileMismatch),
    /// `slot.txt` does not parse or lacks a required file.
    Manifest(SlotManifestError),
    /// The kernel is not an arm64 Image.
    KernelHeader(ImageHeaderError),
    /// The gzip kernel does not inflate.
    Gzip(GzipError),
    /// It does not fit in RAM where it must go.
    Placement(DoesNotFit),
    /// The file is not listed in `slot.txt`.
    NotListed,
    /// `slot.txt` or `cmdline.txt` is larger than zboot reads.
    TooLarge { size: u32, limit: usize },
    /// The image is older than the state's anti-rollback minimum.
    Rollback { image_version: u32, minimum: u32 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(error) => write!(f, "{error}"),
            Self::Mismatch(mismatch) => write!(f, "{mismatch}"),
            Self::NotListed => write!(f, "not listed in slot.txt"),
            Self::Manifest(error) => write!(f, "{error}"),
            Self::KernelHeader(error) => write!(f, "{error}"),
            Self::Gzip(error) => write!(f, "{error}"),
            Self::Placement(error) => write!(f, "{error}"),
            Self::TooLarge { size, limit } => {
                write!(f, "{size} bytes is more than the {limit} zboot reads")
            }
            Self::Rollback {
                image_version,
                minimum,
            } => write!(
                f,
                "image version {image_version} is below the minimum accepted version {minimum}"
            ),
        }
    }
}

/// A slot that cannot boot: which file and why.
#[derive(Debug)]
pub struct SlotError {
    pub slot: Slot,
    pub file: &'static str,
    pub problem: Problem,
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slot {}: {}/{}: {}",
            self.slot, self.slot, self.file, self.problem
        )
    }
}

struct Loader<'p, 'd> {
    partition: &'p BootPartition<'d>,
    slot: Slot,
    report: LoadReport,
}

impl Loader<'_, '_> {
    fn fail(&self, file: &'static str, problem: Problem) -> SlotError {
        SlotError {
            slot: self.slot,
            file,
            problem,
        }
    }

    fn find(&self, name: &'static str) -> Result<FileInfo, SlotError> {
        self.partition
            .find(Some(self.slot.name()), name)
            .map_err(|error| self.fail(name, Problem::File(error)))
    }

    /// Reads `file` into `destination` and checks it against `slot.txt`.
    fn load_verified(
        &mut self,
        name: &'static str,
        file: FileInfo,
        manifest: &SlotManifest<'_>,
        destination: &mut [u8],
    ) -> Result<(), SlotError> {
        let listed = manifest
            .file(name)
            .ok_or_else(|| self.fail(name, Problem::NotListed))?;
        listed
            .check_size(u64::from(file.size))
            .map_err(|mismatch| self.fail(name, Problem::Mismatch(mismatch)))?;
        let stats = self
            .partition
            .load(file, destination)
            .map_err(|error| self.fail(name, Problem::File(error)))?;
        self.report.add(file.size, stats);
        let digest: [u8; 32] = Sha256::digest(&destination[..file.size as usize]).into();
        listed
            .verify(u64::from(file.size), &digest)
            .map_err(|mismatch| self.fail(name, Problem::Mismatch(mismatch)))?;
        // Commands per MiB, in hundredths (no floating point in the log).
        let per_mib = (stats.commands * 100 * (1 << 20)) / u64::from(file.size.max(1));
        log::info!(
            "slot {}: {}/{name}: {} bytes, SHA-256 OK; {} run(s), {} FAT sector(s), {} storage \
             commands ({}.{:02} per MiB), {} bytes read past the end",
            self.slot,
            self.slot,
            file.size,
            stats.runs,
            stats.fat_reads,
            stats.commands,
            per_mib / 100,
            per_mib % 100,
            stats.slack_bytes,
        );
        Ok(())
    }
}

/// Loads and verifies `slot`'s files into `area`; `minimum_version` is the
/// state's anti-rollback floor.
pub fn load(
    partition: &BootPartition<'_>,
    slot: Slot,
    area: &mut LoadArea,
    minimum_version: u32,
) -> Result<LoadedSlot, SlotError> {
    let mut loader = Loader {
        partition,
        slot,
        report: LoadReport::default(),
    };

    // slot.txt: what every other file must be.
    let mut manifest_buffer = [0u8; SMALL_FILE_LIMIT];
    let manifest_file = loader.find(SLOT_MANIFEST)?;
    if manifest_file.sectors_bytes() > SMALL_FILE_LIMIT {
        return Err(loader.fail(
            SLOT_MANIFEST,
            Problem::TooLarge {
                size: manifest_file.size,
                limit: SMALL_FILE_LIMIT,
            },
        ));
    }
    let stats = partition
        .load(manifest_file, &mut manifest_buffer)
        .map_err(|error| loader.fail(SLOT_MANIFEST, Problem::File(error)))?;
    loader.report.add(manifest_file.size, stats);
    let manifest_bytes = &manifest_buffer[..manifest_file.size as usize];
    let manifest = SlotManifest::parse(manifest_bytes)
        .and_then(|manifest| manifest.check_required().map(|()| manifest))
        .map_err(|error| loader.fail(SLOT_MANIFEST, Problem::Manifest(error)))?;
    if manifest.image_version < minimum_version {
        return Err(loader.fail(
            SLOT_MANIFEST,
            Problem::Rollback {
                image_version: manifest.image_version,
                minimum: minimum_version,
            },
        ));
    }

    // cmdline.txt
    let cmdline_file = loader.find(CMDLINE)?;
    if cmdline_file.sectors_bytes() > SMALL_FILE_LIMIT {
        return Err(loader.fail(
            CMDLINE,
            Problem::TooLarge {
                size: cmdline_file.size,
                limit: SMALL_FILE_LIMIT,
            },
        ));
    }
    let mut cmdline_buffer = [0u8; SMALL_FILE_LIMIT];
    loader.load_verified(CMDLINE, cmdline_file, &manifest, &mut cmdline_buffer)?;
    let mut cmdline = heapless::Vec::new();
    let _ = cmdline.extend_from_slice(&cmdline_buffer[..cmdline_file.size as usize]);

    // kernel.img
    let kernel_file = loader.find(KERNEL)?;
    let (kernel_entry, kernel_end) = load_kernel(&mut loader, kernel_file, &manifest, area)?;

    // initrd.img, when slot.txt lists one.
    let initrd = if manifest.file(INITRD).is_some() {
        let file = loader.find(INITRD)?;
        let start = layout::align_up(kernel_end, layout::ALIGNMENT);
        let destination = area
            .region("initrd", start, file.sectors_bytes())
            .map_err(|error| loader.fail(INITRD, Problem::Placement(error)))?;
        loader.load_verified(INITRD, file, &manifest, destination)?;
        Some((start, start + file.size as usize))
    } else {
        None
    };

    // dtb.dtb, when slot.txt lists one: straight into the hand-off DTB's place.
    let dtb_length = if manifest.file(DTB).is_some() {
        let file = loader.find(DTB)?;
        let destination = area
            .region("device tree", layout::DTB_ADDRESS, layout::DTB_CAPACITY)
            .map_err(|error| loader.fail(DTB, Problem::Placement(error)))?;
        if file.sectors_bytes() > destination.len() {
            return Err(loader.fail(
                DTB,
                Problem::TooLarge {
                    size: file.size,
                    limit: layout::DTB_CAPACITY,
                },
            ));
        }
        loader.load_verified(DTB, file, &manifest, destination)?;
        Some(file.size as usize)
    } else {
        None
    };

    Ok(LoadedSlot {
        kernel_entry,
        initrd,
        dtb_length,
        cmdline,
        image_version: manifest.image_version,
        report: loader.report,
    })
}

/// Places the kernel: a raw Image is read straight to its address; a gzip
/// one is read to a staging area at the top of RAM, verified, and inflated
/// into place. Returns the entry address and the end of its footprint.
fn load_kernel(
    loader: &mut Loader<'_, '_>,
    file: FileInfo,
    manifest: &SlotManifest<'_>,
    area: &mut LoadArea,
) -> Result<(usize, usize), SlotError> {
    let first = loader
        .partition
        .first_sector(file)
        .map_err(|error| loader.fail(KERNEL, Problem::File(error)))?;
    let base = layout::KERNEL_BASE;
    if gzip::is_gzip(&first) {
        let staging_length = file.sectors_bytes();
        let top = area.top();
        let staging = (top.saturating_sub(staging_length)) & !(BLOCK_SIZE - 1);
        if staging <= base {
            return Err(loader.fail(
                KERNEL,
                Problem::Placement(DoesNotFit {
                    what: "compressed kernel",
                    start: staging,
                    length: staging_length,
                    limit: top,
                }),
            ));
        }
        let room = staging - base;
        let (destination, compressed) = area
            .two_regions(
                ("kernel", base, room),
                ("compressed kernel", staging, staging_length),
            )
            .map_err(|error| loader.fail(KERNEL, Problem::Placement(error)))?;
        loader.load_verified(KERNEL, file, manifest, compressed)?;
        let inflated = gzip::inflate(&compressed[..file.size as usize], destination)
            .map_err(|error| loader.fail(KERNEL, Problem::Gzip(error)))?;
        let header = ImageHeader::parse(destination, inflated as u64)
            .map_err(|error| loader.fail(KERNEL, Problem::KernelHeader(error)))?;
        let offset = header.text_offset as usize;
        let footprint = header.footprint(inflated as u64) as usize;
        if offset + footprint > room {
            return Err(loader.fail(
                KERNEL,
                Problem::Placement(DoesNotFit {
                    what: "kernel",
                    start: base + offset,
                    length: footprint,
                    limit: staging,
                }),
            ));
        }
        if offset != 0 {
            destination.copy_within(0..inflated, offset);
        }
        log::info!(
            "slot {}: kernel inflated from {} to {inflated} bytes, gzip CRC-32 and length OK",
            loader.slot,
            file.size
        );
        Ok((base + offset, base + offset + footprint))
    } else {
        let header = ImageHeader::parse(&first, u64::from(file.size))
            .map_err(|error| loader.fail(KERNEL, Problem::KernelHeader(error)))?;
        let offset = header.text_offset as usize;
        let footprint = header.footprint(u64::from(file.size)) as usize;
        let length = footprint.max(file.sectors_bytes());
        let destination = area
            .region("kernel", base + offset, length)
            .map_err(|error| loader.fail(KERNEL, Problem::Placement(error)))?;
        loader.load_verified(KERNEL, file, manifest, destination)?;
        Ok((base + offset, base + offset + footprint))
    }
}
