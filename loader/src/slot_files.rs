//! A slot's boot files: found on the boot partition, read into place, verified against `slot.txt`.
//!
//! Every file `slot.txt` lists is checked for size before it is read and for
//! its digest (BLAKE3, or SHA-256 in a format-1 `slot.txt`) after; nothing of a slot is used until all of its files have
//! passed. Gzip kernels are verified as stored, then inflated into place
//! (with the gzip CRC-32 and length checked too).
//!
//! The same code loads a stock layout's kernel, initramfs and command line ([`load_stock`]),
//! which have no `slot.txt` and are only read.

// A `SlotError` carries the file's name inline (no allocator in the loader); it is made
// at most once per slot per boot, so its size costs nothing that matters.
#![allow(clippy::result_large_err)]

use core::fmt;

use recovery_proto::block::BLOCK_SIZE;
use recovery_proto::decide::SlotFiles;
use recovery_proto::gzip::{self, GzipError};
use recovery_proto::kernel_image::{ImageHeader, ImageHeaderError};
use recovery_proto::slot_manifest::{Algorithm, FileMismatch, SlotManifest, SlotManifestError};
use recovery_proto::slot_signature::{self, SlotSignature, SlotSignatureError};
use recovery_proto::{Slot, slot_signature::fingerprint};

use crate::boot_partition::{BootPartition, FileError, FileInfo, LoadStats};
use crate::layout::{self, DoesNotFit, LoadArea};

/// The largest `slot.txt` and `cmdline.txt` zboot reads.
const SMALL_FILE_LIMIT: usize = 4096;

/// The slot manifest's name in each slot directory.
pub const SLOT_MANIFEST: &str = "slot.txt";
/// The manifest's signature beside it (docs/security.md).
const SLOT_SIGNATURE: &str = "slot.sig";
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
    /// A key is built in and the slot has no `slot.sig`.
    Unsigned,
    /// `slot.sig` does not parse, or does not verify with the built-in key.
    Signature(SlotSignatureError),
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
            Self::Unsigned => f.write_str(
                "not signed (no slot.sig), and this zboot boots only slots signed by its \
                 built-in key",
            ),
            Self::Signature(error) => write!(f, "{error}"),
        }
    }
}

/// Whose files are loaded: a slot's (verified against its `slot.txt`) or a stock layout's
/// (named by `config.txt`, with nothing to verify them against).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A zboot slot.
    Slot(Slot),
    /// The kernel of a stock Raspberry Pi layout (docs/bring-your-own-image.md).
    Stock,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Slot(slot) => write!(f, "slot {slot}"),
            Self::Stock => f.write_str("stock layout"),
        }
    }
}

/// A file's name as messages show it (`A/kernel.img`, `kernel8.img`).
pub type FileName = heapless::String<100>;

/// Files that cannot boot: which file and why.
#[derive(Debug)]
pub struct SlotError {
    pub owner: Owner,
    pub file: FileName,
    pub problem: Problem,
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.owner, self.file, self.problem)
    }
}

impl SlotError {
    /// What the boot decision records of this failure (the history's reason).
    pub fn files(&self) -> SlotFiles {
        match self.problem {
            Problem::Rollback { .. } => SlotFiles::BelowMinimum,
            Problem::Unsigned | Problem::Signature(_) => SlotFiles::NotAuthentic,
            _ => SlotFiles::Failed,
        }
    }
}

struct Loader<'p, 'd, 'm> {
    partition: &'p BootPartition<'d>,
    owner: Owner,
    /// Where the files are: the slot's directory, or the stock `os_prefix` directory.
    directory: Option<&'m str>,
    /// What the files must be; `None` for a stock layout.
    manifest: Option<&'m SlotManifest<'m>>,
    report: LoadReport,
}

impl Loader<'_, '_, '_> {
    fn fail(&self, file: &str, problem: Problem) -> SlotError {
        let mut name = FileName::new();
        if let Some(directory) = self.directory {
            let _ = name.push_str(directory);
            let _ = name.push('/');
        }
        let _ = name.push_str(file);
        SlotError {
            owner: self.owner,
            file: name,
            problem,
        }
    }

    fn find(&self, name: &str) -> Result<FileInfo, SlotError> {
        self.partition
            .find(self.directory, name)
            .map_err(|error| self.fail(name, Problem::File(error)))
    }

    /// Reads `file` into `destination` and checks it against `slot.txt` (a stock layout's
    /// files are only read).
    fn load_verified(
        &mut self,
        name: &str,
        file: FileInfo,
        destination: &mut [u8],
    ) -> Result<(), SlotError> {
        let listed = match self.manifest {
            Some(manifest) => Some(
                manifest
                    .file(name)
                    .ok_or_else(|| self.fail(name, Problem::NotListed))?,
            ),
            None => None,
        };
        if let Some(listed) = &listed {
            listed
                .check_size(u64::from(file.size))
                .map_err(|mismatch| self.fail(name, Problem::Mismatch(mismatch)))?;
        }
        // The file is hashed piece by piece while the next piece is read.
        let mut hasher = self.manifest.map(|manifest| manifest.algorithm().hasher());
        let stats = self
            .partition
            .load_consuming(file, destination, |piece| {
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(piece);
                }
            })
            .map_err(|error| self.fail(name, Problem::File(error)))?;
        self.report.add(file.size, stats);
        let check = if let (Some(listed), Some(manifest), Some(hasher)) =
            (&listed, self.manifest, hasher)
        {
            let algorithm = manifest.algorithm();
            let digest = hasher.finalize();
            listed
                .verify(u64::from(file.size), algorithm, &digest)
                .map_err(|mismatch| self.fail(name, Problem::Mismatch(mismatch)))?;
            match algorithm {
                Algorithm::Sha256 => "SHA-256 OK",
                Algorithm::Blake3 => "BLAKE3 OK",
            }
        } else {
            "not verified (no slot.txt)"
        };
        // Commands per MiB, in hundredths (no floating point in the log).
        let per_mib = (stats.commands * 100 * (1 << 20)) / u64::from(file.size.max(1));
        log::info!(
            "{}: {}{}{name}: {} bytes, {check}; {} run(s), {} FAT sector(s), {} storage \
             commands ({}.{:02} per MiB), {} bytes read past the end",
            self.owner,
            self.directory.unwrap_or(""),
            if self.directory.is_some() { "/" } else { "" },
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

    /// Reads `cmdline.txt` (or the stock one) into a small buffer.
    fn load_cmdline(
        &mut self,
        name: &str,
    ) -> Result<heapless::Vec<u8, SMALL_FILE_LIMIT>, SlotError> {
        let cmdline_file = self.find(name)?;
        if cmdline_file.sectors_bytes() > SMALL_FILE_LIMIT {
            return Err(self.fail(
                name,
                Problem::TooLarge {
                    size: cmdline_file.size,
                    limit: SMALL_FILE_LIMIT,
                },
            ));
        }
        let mut cmdline_buffer = [0u8; SMALL_FILE_LIMIT];
        self.load_verified(name, cmdline_file, &mut cmdline_buffer)?;
        let mut cmdline = heapless::Vec::new();
        let _ = cmdline.extend_from_slice(&cmdline_buffer[..cmdline_file.size as usize]);
        Ok(cmdline)
    }

    /// Reads the initrd right after the kernel's footprint.
    fn load_initrd(
        &mut self,
        name: &str,
        kernel_end: usize,
        area: &mut LoadArea,
    ) -> Result<(usize, usize), SlotError> {
        let file = self.find(name)?;
        let start = layout::align_up(kernel_end, layout::ALIGNMENT);
        let destination = area
            .region("initrd", start, file.sectors_bytes())
            .map_err(|error| self.fail(name, Problem::Placement(error)))?;
        self.load_verified(name, file, destination)?;
        Ok((start, start + file.size as usize))
    }
}

/// The files of a stock layout, as `config.txt` names them (docs/bring-your-own-image.md).
#[derive(Debug)]
pub struct StockFiles<'n> {
    /// The `os_prefix` directory, if any.
    pub directory: Option<&'n str>,
    /// The kernel (`kernel8.img`).
    pub kernel: &'n str,
    /// The initramfs (`initramfs8`), if the firmware would load one.
    pub initrd: Option<&'n str>,
    /// The command line (`cmdline.txt`).
    pub cmdline: &'n str,
}

/// Loads a stock layout's kernel, initramfs and command line into `area`, unverified.
pub fn load_stock(
    partition: &BootPartition<'_>,
    files: &StockFiles<'_>,
    area: &mut LoadArea,
) -> Result<LoadedSlot, SlotError> {
    let mut loader = Loader {
        partition,
        owner: Owner::Stock,
        directory: files.directory,
        manifest: None,
        report: LoadReport::default(),
    };
    let cmdline = loader.load_cmdline(files.cmdline)?;
    let kernel_file = loader.find(files.kernel)?;
    let (kernel_entry, kernel_end) = load_kernel(&mut loader, files.kernel, kernel_file, area)?;
    let initrd = match files.initrd {
        Some(name) => Some(loader.load_initrd(name, kernel_end, area)?),
        None => None,
    };
    Ok(LoadedSlot {
        kernel_entry,
        initrd,
        dtb_length: None,
        cmdline,
        image_version: 0,
        report: loader.report,
    })
}

/// Loads and verifies `slot`'s files into `area`; `minimum_version` is the
/// state's anti-rollback floor; with `key` (built into zboot), `slot.txt` must carry
/// that key's signature (`slot.sig`) before anything it lists is read.
pub fn load(
    partition: &BootPartition<'_>,
    slot: Slot,
    area: &mut LoadArea,
    minimum_version: u32,
    key: Option<&[u8; 32]>,
) -> Result<LoadedSlot, SlotError> {
    let mut loader = Loader {
        partition,
        owner: Owner::Slot(slot),
        directory: Some(slot.name()),
        manifest: None,
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
    // Authenticity first: the version compared next is the signed one.
    if let Some(key) = key {
        check_signature(&mut loader, &manifest, key)?;
    }
    if manifest.image_version < minimum_version {
        return Err(loader.fail(
            SLOT_MANIFEST,
            Problem::Rollback {
                image_version: manifest.image_version,
                minimum: minimum_version,
            },
        ));
    }
    let mut loader = Loader {
        manifest: Some(&manifest),
        ..loader
    };

    let cmdline = loader.load_cmdline(CMDLINE)?;

    // kernel.img
    let kernel_file = loader.find(KERNEL)?;
    let (kernel_entry, kernel_end) = load_kernel(&mut loader, KERNEL, kernel_file, area)?;

    // initrd.img, when slot.txt lists one.
    let initrd = if manifest.file(INITRD).is_some() {
        Some(loader.load_initrd(INITRD, kernel_end, area)?)
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
        loader.load_verified(DTB, file, destination)?;
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

/// Reads `slot.sig` and checks it over `manifest` with the built-in `key`.
fn check_signature(
    loader: &mut Loader<'_, '_, '_>,
    manifest: &SlotManifest<'_>,
    key: &[u8; 32],
) -> Result<(), SlotError> {
    let file = match loader.partition.find(loader.directory, SLOT_SIGNATURE) {
        Ok(file) => file,
        Err(FileError::NotFound) => return Err(loader.fail(SLOT_SIGNATURE, Problem::Unsigned)),
        Err(error) => return Err(loader.fail(SLOT_SIGNATURE, Problem::File(error))),
    };
    let signature_error =
        |loader: &Loader<'_, '_, '_>, error| loader.fail(SLOT_SIGNATURE, Problem::Signature(error));
    let size = file.size as usize;
    if size > slot_signature::MAX_SIZE {
        return Err(signature_error(
            loader,
            SlotSignatureError::TooLarge { size },
        ));
    }
    let mut buffer = [0u8; slot_signature::MAX_SIZE];
    let stats = loader
        .partition
        .load(file, &mut buffer)
        .map_err(|error| loader.fail(SLOT_SIGNATURE, Problem::File(error)))?;
    loader.report.add(file.size, stats);
    let signature = SlotSignature::parse(&buffer[..size])
        .and_then(|signature| signature.verify(manifest, key).map(|()| signature))
        .map_err(|error| signature_error(loader, error))?;
    log::info!(
        "{}: slot.sig: {} version {} signed by key {} (built in): signature OK",
        loader.owner,
        signature.image_name,
        manifest.image_version,
        fingerprint(key)
    );
    Ok(())
}

/// Places the kernel: a raw Image is read straight to its address; a gzip
/// one is read to a staging area at the top of RAM, verified, and inflated
/// into place. Returns the entry address and the end of its footprint.
fn load_kernel(
    loader: &mut Loader<'_, '_, '_>,
    name: &str,
    file: FileInfo,
    area: &mut LoadArea,
) -> Result<(usize, usize), SlotError> {
    let first = loader
        .partition
        .first_sector(file)
        .map_err(|error| loader.fail(name, Problem::File(error)))?;
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
            .map_err(|error| loader.fail(name, Problem::Placement(error)))?;
        loader.load_verified(name, file, compressed)?;
        let inflated = gzip::inflate(&compressed[..file.size as usize], destination)
            .map_err(|error| loader.fail(name, Problem::Gzip(error)))?;
        let header = ImageHeader::parse(destination, inflated as u64)
            .map_err(|error| loader.fail(name, Problem::KernelHeader(error)))?;
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
            "{}: kernel inflated from {} to {inflated} bytes, gzip CRC-32 and length OK",
            loader.owner,
            file.size
        );
        Ok((base + offset, base + offset + footprint))
    } else {
        let header = ImageHeader::parse(&first, u64::from(file.size))
            .map_err(|error| loader.fail(name, Problem::KernelHeader(error)))?;
        let offset = header.text_offset as usize;
        let footprint = header.footprint(u64::from(file.size)) as usize;
        let length = footprint.max(file.sectors_bytes());
        let destination = area
            .region("kernel", base + offset, length)
            .map_err(|error| loader.fail(name, Problem::Placement(error)))?;
        loader.load_verified(name, file, destination)?;
        Ok((base + offset, base + offset + footprint))
    }
}
