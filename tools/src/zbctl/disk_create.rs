//! `zbctl disk create`: a complete eMMC image per `docs/disk-layout.md`.
//!
//! MBR (primaries 1 boot, 2 root A, 3 root B, 4 extended holding logicals 5 SAFE root and
//! 6 DATA) or, with `--gpt`, a GUID partition table (1 boot, 2 root A, 3 root B, 4 SAFE,
//! 5 DATA; protective MBR, primary and backup headers and entry arrays), a FAT32 boot partition built in memory with `fatfs` and repaired by
//! [`super::fat_fixup`] so `fsck.fat -n` is clean, per-slot boot files with a generated
//! `slot.txt`, the preallocated `ZBSTATE.BIN` initialised by the same code as `init-state`,
//! and ext4 root/data file systems made by `mke2fs` (e2fsprogs) on a scratch file and copied in.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use recovery_proto::manifest::Manifest;
use recovery_proto::partition::gpt::{self, Guid};
use recovery_proto::partition::{Partitions, TableKind, default_root_number};
use recovery_proto::slot_manifest::{Algorithm, SlotManifest};
use recovery_proto::state::{DEFAULT_MAX_BOOT_FAILURE, MAX_BOOT_FAILURE_LIMIT};
use recovery_proto::{BLOCK_SIZE, Slot};
use sha2::{Digest, Sha256};

use super::disk::FileDisk;
use super::init::{InitArgs, init_state};
use super::target::Target;

const SECTOR: u64 = BLOCK_SIZE as u64;
/// Partitions start on 1 MiB boundaries (what fdisk/sfdisk do; eMMC erase groups are at most
/// a few MiB, and 1 MiB keeps ext4 and FAT clusters aligned to flash pages).
const ALIGN: u64 = 2048;
const MIB: u64 = 1 << 20;
/// The file systems' own minimums with some room: FAT32 needs 65525 clusters (≥ 33 MiB with
/// 512-byte clusters, FAT specification "FAT Type Determination"); ext4 refuses very small
/// volumes.
const MIN_BOOT: u64 = 40 * MIB;
const MIN_EXT4: u64 = 4 * MIB;

/// GPT: the backup entry array (128 entries of 128 bytes: 32 sectors) and header at the end.
const GPT_TAIL: u64 = 33;
/// GPT: the primary header and array before the first usable sector.
const GPT_FIRST_USABLE: u64 = 34;

/// Type bytes written into the MBR.
const TYPE_FAT32_LBA: u8 = 0x0C;
const TYPE_LINUX: u8 = 0x83;
const TYPE_EXTENDED_LBA: u8 = 0x0F;

/// `zbctl disk ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DiskCommand {
    /// Build a complete eMMC image: MBR, FAT32 boot with zboot and the slots' boot files,
    /// fresh slot state, ext4 roots A/B/SAFE and DATA.
    Create(Box<CreateArgs>),
}

/// The digest function of what zbctl writes (`--hash`): `slot.txt` format 2 and `.zi`
/// version 2 use BLAKE3; `sha256` writes format/version 1, which loaders from before format
/// 2 read (docs/disk-layout.md, "slot.txt").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HashChoice {
    /// BLAKE3 (`b3sum` prints the same hex).
    #[default]
    Blake3,
    /// SHA-256 (`sha256sum`), for units whose zboot.img predates BLAKE3.
    Sha256,
}

impl HashChoice {
    /// The digest function.
    pub fn algorithm(self) -> Algorithm {
        match self {
            HashChoice::Blake3 => Algorithm::Blake3,
            HashChoice::Sha256 => Algorithm::Sha256,
        }
    }
}

/// Options of `disk create`.
#[derive(Debug, Args)]
// Independent command-line switches (--any-size, --gpt, --count-power-loss, --no-data-fs),
// not a state machine in disguise.
#[allow(clippy::struct_excessive_bools)]
pub struct CreateArgs {
    /// The image file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Image size (K, M, G suffixes, powers of 1024). QEMU's SD card needs a power of two.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Allow a size that is not a power of two (fine for a real eMMC, refused by QEMU).
    #[arg(long)]
    pub any_size: bool,
    /// MBR disk signature (hex, e.g. 1a2b3c4d); default random. Root PARTUUIDs derive from it
    /// (with --gpt: the disk and partition GUIDs are derived from it; random without it).
    #[arg(long, value_name = "HEX", value_parser = parse_disk_id)]
    pub disk_id: Option<u32>,
    /// Write a GUID partition table instead of an MBR: 1 boot, 2 root A, 3 root B, 4 SAFE,
    /// 5 DATA (no logical partitions).
    #[arg(long)]
    pub gpt: bool,
    /// Size of the FAT32 boot partition (1).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub boot_size: u64,
    /// Size of each of the root partitions A (2) and B (3).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub root_size: u64,
    /// Size of the SAFE root partition (5, logical; 4 with --gpt); DATA (6; 5 with --gpt)
    /// gets the rest of the disk.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub safe_size: u64,
    /// The loader binary, written as /zboot.img.
    #[arg(long, value_name = "FILE")]
    pub loader: PathBuf,
    /// Digest function of each slot's slot.txt (sha256: format 1, for older loaders).
    #[arg(long, value_enum, default_value_t = HashChoice::Blake3)]
    pub hash: HashChoice,
    /// Lines appended to the generated /config.txt.
    #[arg(long, value_name = "FILE")]
    pub config_extra: Option<PathBuf>,
    /// The whole /config.txt, instead of the generated one (the stock-image converter's
    /// edit of the user's file, which already holds zboot's lines).
    #[arg(skip)]
    pub config_text: Option<String>,
    /// Files (and subdirectories) copied to the root of the boot partition: start4.elf,
    /// fixup4.dat, the DTBs, overlays/ ...
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// Use this zbmanifest.txt (checked with the loader's parser) instead of generating one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["root_device", "watchdog_timeout"])]
    pub manifest: Option<PathBuf>,
    /// Device the generated manifest names the roots on (root_a=<dev>p2, ...).
    #[arg(long, default_value = "/dev/mmcblk0", value_name = "DEV")]
    pub root_device: String,
    /// max_boot_failure in the manifest and the initial state (1–15).
    #[arg(long, default_value_t = DEFAULT_MAX_BOOT_FAILURE, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_BOOT_FAILURE_LIMIT)))]
    pub max_boot_failure: u8,
    /// count_power_loss in the manifest and the initial state (yes/no).
    #[arg(long, default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    pub count_power_loss: bool,
    /// watchdog_timeout (seconds, 0–15; 0 turns the hang guard off) in the generated
    /// manifest; without it the loader arms the watchdog at its maximum (about 16 s).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=15))]
    pub watchdog_timeout: Option<u8>,
    /// A slot's boot files: `A:kernel=PATH[,initrd=PATH][,dtb=PATH][,cmdline-file=PATH][,version=N]`
    /// (slot A, B or SAFE; repeat per slot). Slots not given stay empty.
    #[arg(long = "slot", value_name = "SLOT:FILES", value_parser = parse_slot_spec)]
    pub slots: Vec<SlotSpec>,
    /// A slot's kernel command line as text: `A=console=ttyAMA0,115200 rootwait` (default
    /// `rootwait`; the loader adds root=, zboot.slot= and zboot.attempt=).
    #[arg(long = "cmdline", value_name = "SLOT=TEXT", value_parser = parse_cmdline_spec)]
    pub cmdlines: Vec<(Slot, String)>,
    /// A root file system: `A=rootfs.ext4` (an ext4 image copied in) or `SAFE=dir/` (turned
    /// into ext4 with `mke2fs -d`). Roots not given get an empty ext4.
    #[arg(long = "root", value_name = "SLOT=PATH", value_parser = parse_root_spec)]
    pub roots: Vec<(Slot, PathBuf)>,
    /// Leave DATA (partition 6; 5 with --gpt) unformatted.
    #[arg(long)]
    pub no_data_fs: bool,
    /// Sign each slot's `slot.txt` with this private key (`zbctl key generate`), writing its
    /// `slot.sig`: a loader built with the public key boots only signed slots
    /// (docs/security.md).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// The image name the slot signatures carry (default: the output file's name without
    /// its extension).
    #[arg(long, value_name = "NAME", requires = "sign_key")]
    pub image_name: Option<String>,
}

/// One `--slot` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Which slot.
    pub slot: Slot,
    /// `kernel=`.
    pub kernel: PathBuf,
    /// `initrd=`.
    pub initrd: Option<PathBuf>,
    /// `dtb=`.
    pub dtb: Option<PathBuf>,
    /// `cmdline-file=`.
    pub cmdline_file: Option<PathBuf>,
    /// `version=` (the slot image's version, default 0).
    pub version: u32,
}

/// Parses `256M`, `1G`, `512K`, `4096` (bytes); K/M/G are powers of 1024, `MiB` spellings too.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" | "KB" => 10,
        "M" | "MIB" | "MB" => 20,
        "G" | "GIB" | "GB" => 30,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (use K, M or G)")),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 256M"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_disk_id(text: &str) -> Result<u32, String> {
    let hex = text.trim_start_matches("0x");
    u32::from_str_radix(hex, 16).map_err(|_| format!("'{text}' is not 8 hex digits"))
}

fn parse_yes_no(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("expected yes or no, got '{value}'")),
    }
}

fn parse_slot_name(name: &str) -> Result<Slot, String> {
    Slot::from_name(name).ok_or_else(|| format!("'{name}' is not a slot (A, B or SAFE)"))
}

/// `A:kernel=PATH,initrd=PATH,dtb=PATH,cmdline-file=PATH,version=N`.
pub fn parse_slot_spec(text: &str) -> Result<SlotSpec, String> {
    let (slot, files) = text
        .split_once(':')
        .ok_or_else(|| format!("'{text}': expected SLOT:kernel=PATH[,...]"))?;
    let slot = parse_slot_name(slot)?;
    let mut spec = SlotSpec {
        slot,
        kernel: PathBuf::new(),
        initrd: None,
        dtb: None,
        cmdline_file: None,
        version: 0,
    };
    for item in files.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}': expected key=value"))?;
        ensure_nonempty(key, value)?;
        match key {
            "kernel" => spec.kernel = PathBuf::from(value),
            "initrd" => spec.initrd = Some(PathBuf::from(value)),
            "dtb" => spec.dtb = Some(PathBuf::from(value)),
            "cmdline-file" => spec.cmdline_file = Some(PathBuf::from(value)),
            "version" => {
                spec.version = value
                    .parse()
                    .map_err(|_| format!("version '{value}' is not a 32-bit number"))?;
            }
            _ => {
                return Err(format!(
                    "unknown slot file '{key}' (kernel, initrd, dtb, cmdline-file, version)"
                ));
            }
        }
    }
    if spec.kernel.as_os_str().is_empty() {
        return Err(format!("slot {slot}: kernel=PATH is required"));
    }
    Ok(spec)
}

/// The boot partition's cluster size: the largest up to 4 KiB that still
/// leaves FAT32 its minimum of 65,525 clusters (Microsoft FAT specification,
/// "FAT type determination"). Bigger clusters mean fewer FAT sectors to read
/// per MiB of kernel: 512-byte clusters cost the loader one FAT read per
/// 64 KiB loaded, 4 KiB clusters one per 512 KiB.
pub fn boot_cluster_bytes(partition_bytes: u64) -> u32 {
    const FAT32_MIN_CLUSTERS: u64 = 65_525;
    // Room for the reserved sectors and both FATs, generously.
    let data_bytes = partition_bytes - partition_bytes / 64;
    [4096u32, 2048, 1024]
        .into_iter()
        .find(|&cluster| data_bytes / u64::from(cluster) > FAT32_MIN_CLUSTERS)
        .unwrap_or(512)
}

fn ensure_nonempty(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{key}= needs a value"))
    } else {
        Ok(())
    }
}

fn parse_cmdline_spec(text: &str) -> Result<(Slot, String), String> {
    let (slot, line) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': expected SLOT=TEXT"))?;
    Ok((parse_slot_name(slot)?, line.to_string()))
}

fn parse_root_spec(text: &str) -> Result<(Slot, PathBuf), String> {
    let (slot, path) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': expected SLOT=PATH"))?;
    ensure_nonempty("root", path)?;
    Ok((parse_slot_name(slot)?, PathBuf::from(path)))
}

/// One partition's place, in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub sectors: u64,
}

impl Extent {
    fn end(self) -> u64 {
        self.start + self.sectors
    }

    fn bytes(self) -> u64 {
        self.sectors * SECTOR
    }
}

/// Where everything goes (`docs/disk-layout.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// MBR (with the extended container) or GPT (`extended` and `second_ebr` then unused, 0).
    pub table: TableKind,
    /// 1: FAT32 boot.
    pub boot: Extent,
    /// 2: root A.
    pub root_a: Extent,
    /// 3: root B.
    pub root_b: Extent,
    /// MBR 4: the extended container (to the end of the disk).
    pub extended: Extent,
    /// SAFE root (MBR 5, logical, its EBR the container's first sector; GPT 4).
    pub safe: Extent,
    /// Sector of the second EBR.
    pub second_ebr: u64,
    /// DATA (MBR 6, logical; GPT 5), the rest (GPT: up to the backup entry array).
    pub data: Extent,
}

fn align_up(sector: u64) -> u64 {
    sector.div_ceil(ALIGN) * ALIGN
}

impl Layout {
    /// Lays the partitions out on an MBR disk of `size` bytes.
    pub fn compute(size: u64, boot: u64, root: u64, safe: u64) -> Result<Self> {
        Self::compute_for(TableKind::Mbr, size, boot, root, safe)
    }

    /// Lays the partitions out on a `table` disk of `size` bytes.
    pub fn compute_for(
        table: TableKind,
        size: u64,
        boot: u64,
        root: u64,
        safe: u64,
    ) -> Result<Self> {
        for (name, bytes, min) in [
            ("--boot-size", boot, MIN_BOOT),
            ("--root-size", root, MIN_EXT4),
            ("--safe-size", safe, MIN_EXT4),
        ] {
            ensure!(
                bytes.is_multiple_of(SECTOR),
                "{name} {bytes} is not a multiple of {SECTOR} bytes"
            );
            ensure!(
                bytes >= min,
                "{name} {} is too small: at least {} MiB",
                human(bytes),
                min / MIB
            );
        }
        let total = size / SECTOR;
        let boot = Extent {
            start: ALIGN,
            sectors: boot / SECTOR,
        };
        let root_a = Extent {
            start: align_up(boot.end()),
            sectors: root / SECTOR,
        };
        let root_b = Extent {
            start: align_up(root_a.end()),
            sectors: root / SECTOR,
        };
        let extended_start = align_up(root_b.end());
        // GPT: SAFE follows B directly; the backup entry array and header take the end.
        let (safe_start, tail) = match table {
            TableKind::Mbr => (extended_start + ALIGN, 0),
            TableKind::Gpt => (extended_start, GPT_TAIL),
        };
        let safe = Extent {
            start: safe_start,
            sectors: safe / SECTOR,
        };
        let second_ebr = align_up(safe.end());
        let data_start = match table {
            TableKind::Mbr => second_ebr + ALIGN,
            TableKind::Gpt => second_ebr,
        };
        let needed = data_start + MIN_EXT4 / SECTOR + tail;
        ensure!(
            needed <= total,
            "the partitions do not fit in --size {}: boot {} + 2 × root {} + SAFE {} + DATA at least {} \
             with 1 MiB alignment need {}; make --size larger or the partitions smaller",
            human(size),
            human(boot.bytes()),
            human(root),
            human(safe.bytes()),
            human(MIN_EXT4),
            human(needed * SECTOR)
        );
        if table == TableKind::Gpt {
            return Ok(Self {
                table,
                boot,
                root_a,
                root_b,
                extended: Extent {
                    start: 0,
                    sectors: 0,
                },
                safe,
                second_ebr: 0,
                data: Extent {
                    start: data_start,
                    sectors: total - GPT_TAIL - data_start,
                },
            });
        }
        // 32-bit LBA fields of the MBR.
        ensure!(
            u32::try_from(total).is_ok(),
            "--size {} is past the MBR's 2 TiB limit",
            human(size)
        );
        Ok(Self {
            table,
            boot,
            root_a,
            root_b,
            extended: Extent {
                start: extended_start,
                sectors: total - extended_start,
            },
            safe,
            second_ebr,
            data: Extent {
                start: data_start,
                sectors: total - data_start,
            },
        })
    }

    /// Partition numbers of SAFE and DATA.
    pub fn safe_and_data_numbers(&self) -> (u8, u8) {
        match self.table {
            TableKind::Mbr => (5, 6),
            TableKind::Gpt => (4, 5),
        }
    }

    /// The extent of `slot`'s root.
    fn root(&self, slot: Slot) -> Extent {
        match slot {
            Slot::A => self.root_a,
            Slot::B => self.root_b,
            Slot::Safe => self.safe,
        }
    }
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// A 16-byte partition entry. CHS fields hold the "beyond CHS" marker (0xFE 0xFF 0xFF) that
/// LBA-only tools write; Linux and the Pi firmware read only the LBA fields.
fn entry(status: u8, kind: u8, start: u64, sectors: u64) -> Result<[u8; 16]> {
    let mut e = [0u8; 16];
    e[0] = status;
    e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[4] = kind;
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&u32::try_from(start)?.to_le_bytes());
    e[12..16].copy_from_slice(&u32::try_from(sectors)?.to_le_bytes());
    Ok(e)
}

fn boot_record(disk_id: Option<u32>, entries: &[[u8; 16]]) -> [u8; BLOCK_SIZE] {
    let mut sector = [0u8; BLOCK_SIZE];
    if let Some(id) = disk_id {
        sector[440..444].copy_from_slice(&id.to_le_bytes());
    }
    for (i, e) in entries.iter().enumerate() {
        sector[446 + i * 16..462 + i * 16].copy_from_slice(e);
    }
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// Writes the MBR and the two EBRs. EBR links follow the classic DOS scheme that Linux and
/// sfdisk read: entry 1 = the logical (start relative to its EBR), entry 2 = the next EBR
/// (start relative to the extended partition, size up to the end of the next logical).
fn write_partition_table(file: &File, layout: &Layout, disk_id: u32) -> Result<()> {
    let mbr = boot_record(
        Some(disk_id),
        &[
            entry(0x80, TYPE_FAT32_LBA, layout.boot.start, layout.boot.sectors)?,
            entry(0, TYPE_LINUX, layout.root_a.start, layout.root_a.sectors)?,
            entry(0, TYPE_LINUX, layout.root_b.start, layout.root_b.sectors)?,
            entry(
                0,
                TYPE_EXTENDED_LBA,
                layout.extended.start,
                layout.extended.sectors,
            )?,
        ],
    );
    let first_ebr = boot_record(
        None,
        &[
            entry(
                0,
                TYPE_LINUX,
                layout.safe.start - layout.extended.start,
                layout.safe.sectors,
            )?,
            entry(
                0,
                TYPE_EXTENDED_LBA,
                layout.second_ebr - layout.extended.start,
                layout.data.end() - layout.second_ebr,
            )?,
        ],
    );
    let second_ebr = boot_record(
        None,
        &[entry(
            0,
            TYPE_LINUX,
            layout.data.start - layout.second_ebr,
            layout.data.sectors,
        )?],
    );
    for (lba, sector) in [
        (0, mbr),
        (layout.extended.start, first_ebr),
        (layout.second_ebr, second_ebr),
    ] {
        file.write_all_at(&sector, lba * SECTOR)?;
    }
    Ok(())
}

/// The GUIDs of a GPT disk: the disk's, then partitions 1–5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptIds {
    /// The disk GUID.
    pub disk: Guid,
    /// Unique GUIDs (PARTUUIDs) of partitions 1–5.
    pub partitions: [Guid; 5],
}

/// Marks 16 bytes as an RFC 4122 version-4 (random) GUID: version nibble in the high half of
/// the third field (little-endian on disk: byte 7), variant 0b10 in byte 8.
fn as_v4(mut bytes: [u8; 16]) -> Guid {
    bytes[7] = (bytes[7] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    Guid(bytes)
}

impl GptIds {
    /// From the OS random source.
    fn random() -> Result<Self> {
        let next = || -> Result<Guid> {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| anyhow!("random GUID: {e}"))?;
            Ok(as_v4(bytes))
        };
        Ok(Self {
            disk: next()?,
            partitions: [next()?, next()?, next()?, next()?, next()?],
        })
    }

    /// Reproducible from `--disk-id`: GUID n (0 = the disk, 1–5 the partitions) is the first
    /// 16 bytes of SHA-256("zboot disk create GPT", disk id as 4 little-endian bytes, n),
    /// marked as version 4 so that tools treat it as an ordinary random GUID.
    pub fn derived(disk_id: u32) -> Self {
        let guid = |n: u8| {
            let digest = Sha256::new()
                .chain_update(b"zboot disk create GPT")
                .chain_update(disk_id.to_le_bytes())
                .chain_update([n])
                .finalize();
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            as_v4(bytes)
        };
        Self {
            disk: guid(0),
            partitions: [guid(1), guid(2), guid(3), guid(4), guid(5)],
        }
    }
}

/// Writes the protective MBR, the primary header and entry array at LBAs 1 and 2–33 and
/// their backups at the end (UEFI specification §5.3: the backup array right before the
/// backup header at the last LBA).
fn write_gpt(file: &File, layout: &Layout, total: u64, ids: &GptIds) -> Result<()> {
    let parts = [
        (gpt::BASIC_DATA, layout.boot, "boot"),
        (gpt::LINUX_FILESYSTEM, layout.root_a, "rootA"),
        (gpt::LINUX_FILESYSTEM, layout.root_b, "rootB"),
        (gpt::LINUX_FILESYSTEM, layout.safe, "rootSAFE"),
        (gpt::LINUX_FILESYSTEM, layout.data, "data"),
    ];
    let count = gpt::DEFAULT_ENTRY_COUNT;
    let mut array = vec![0u8; count as usize * gpt::ENTRY_SIZE as usize];
    for ((index, (kind, extent, name)), unique) in parts.iter().enumerate().zip(ids.partitions) {
        let entry = gpt::encode_entry(*kind, unique, extent.start, extent.end() - 1, name);
        array[index * 128..(index + 1) * 128].copy_from_slice(&entry);
    }
    let array_crc = crc32fast::hash(&array);
    let array_sectors = array.len() as u64 / SECTOR;
    let last = total - 1;
    file.write_all_at(&gpt::protective_mbr(total), 0)?;
    for (my_lba, alternate_lba, entry_array_lba) in [(1, last, 2), (last, 1, last - array_sectors)]
    {
        let header = gpt::encode_header(&gpt::HeaderFields {
            my_lba,
            alternate_lba,
            first_usable_lba: GPT_FIRST_USABLE,
            last_usable_lba: total - GPT_TAIL - 1,
            disk_guid: ids.disk,
            entry_array_lba,
            entry_count: count,
            entry_array_crc: array_crc,
        });
        file.write_all_at(&array, entry_array_lba * SECTOR)?;
        file.write_all_at(&header, my_lba * SECTOR)?;
    }
    Ok(())
}

/// A file to put in a slot directory.
struct SlotFileSource {
    name: &'static str,
    bytes: Vec<u8>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("{what}: reading {}", path.display()))
}

/// The files of one slot directory, `slot.txt` included.
fn slot_files(
    spec: &SlotSpec,
    cmdline: Option<&String>,
    signing: Option<(&str, &ed25519_dalek::SigningKey)>,
    algorithm: Algorithm,
) -> Result<Vec<SlotFileSource>> {
    let slot = spec.slot;
    let mut files = vec![SlotFileSource {
        name: "kernel.img",
        bytes: read(&spec.kernel, &format!("slot {slot} kernel"))?,
    }];
    if let Some(path) = &spec.initrd {
        files.push(SlotFileSource {
            name: "initrd.img",
            bytes: read(path, &format!("slot {slot} initrd"))?,
        });
    }
    if let Some(path) = &spec.dtb {
        files.push(SlotFileSource {
            name: "dtb.dtb",
            bytes: read(path, &format!("slot {slot} dtb"))?,
        });
    }
    let cmdline = match (&spec.cmdline_file, cmdline) {
        (Some(_), Some(_)) => bail!("slot {slot}: give cmdline-file= or --cmdline, not both"),
        (Some(path), None) => read(path, &format!("slot {slot} cmdline-file"))?,
        (None, Some(text)) => format!("{text}\n").into_bytes(),
        (None, None) => b"rootwait\n".to_vec(),
    };
    // The loader's own check: one line, no control characters, balanced quotes.
    recovery_proto::cmdline::check_line(&cmdline)
        .map_err(|e| anyhow!("slot {slot} command line: {e}"))?;
    files.push(SlotFileSource {
        name: "cmdline.txt",
        bytes: cmdline,
    });
    let mut manifest = SlotManifest::with_algorithm(spec.version, algorithm);
    for file in &files {
        let size = u32::try_from(file.bytes.len())
            .map_err(|_| anyhow!("slot {slot} {}: larger than 4 GiB", file.name))?;
        manifest
            .add_file(file.name, size, algorithm.digest(&file.bytes))
            .map_err(|e| anyhow!("slot {slot}: {e}"))?;
    }
    let text = manifest.to_string();
    // What the loader will parse must parse.
    SlotManifest::parse(text.as_bytes()).map_err(|e| anyhow!("slot {slot}: {e}"))?;
    if let Some((name, key)) = signing {
        let signature = super::slot_sign::sign_text(text.as_bytes(), name, key)
            .with_context(|| format!("slot {slot}"))?;
        files.push(SlotFileSource {
            name: super::slot_sign::FILE,
            bytes: signature.into_bytes(),
        });
    }
    files.push(SlotFileSource {
        name: "slot.txt",
        bytes: text.into_bytes(),
    });
    Ok(files)
}

fn manifest_text(args: &CreateArgs) -> Result<Vec<u8>> {
    let bytes = if let Some(path) = &args.manifest {
        read(path, "--manifest")?
    } else {
        {
            let device = &args.root_device;
            let table = if args.gpt {
                TableKind::Gpt
            } else {
                TableKind::Mbr
            };
            let part = |slot| format!("{device}p{}", default_root_number(table, slot));
            let mut text = format!(
                "# zbmanifest.txt written by zbctl disk create (docs/slot-state.md)\n\
                 root_dev={device}\nroot_a={}\nroot_b={}\nsafe_root={}\n\
                 max_boot_failure={}\ncount_power_loss={}\n",
                part(Slot::A),
                part(Slot::B),
                part(Slot::Safe),
                args.max_boot_failure,
                if args.count_power_loss { "yes" } else { "no" },
            );
            if let Some(seconds) = args.watchdog_timeout {
                writeln!(text, "watchdog_timeout={seconds}")?;
            }
            text.into_bytes()
        }
    };
    {
        let manifest = Manifest::parse(&bytes).map_err(|e| anyhow!("{e}"))?;
        for (slot, value) in [
            (Slot::A, manifest.root_a),
            (Slot::B, manifest.root_b),
            (Slot::Safe, manifest.safe_root),
        ] {
            recovery_proto::partition::slot_root(slot, value)
                .map_err(|e| anyhow!("zbmanifest.txt: root of slot {slot}: {e}"))?;
        }
    }
    Ok(bytes)
}

fn config_text(args: &CreateArgs) -> Result<Vec<u8>> {
    if let Some(text) = &args.config_text {
        return Ok(text.clone().into_bytes());
    }
    let mut text =
        b"# written by zbctl disk create\narm_64bit=1\nkernel=zboot.img\nenable_uart=1\n".to_vec();
    if let Some(path) = &args.config_extra {
        text.extend(read(path, "--config-extra")?);
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
    }
    Ok(text)
}

type FatFs<'a> = fatfs::FileSystem<Cursor<&'a mut Vec<u8>>>;
type FatDir<'a, 'b> = fatfs::Dir<'b, Cursor<&'a mut Vec<u8>>>;

fn write_file(dir: &FatDir<'_, '_>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut file = dir
        .create_file(name)
        .with_context(|| format!("creating {name} on the boot partition"))?;
    file.truncate()?;
    file.write_all(bytes).with_context(|| {
        format!(
            "writing {name} ({} bytes): the boot partition is full; make --boot-size larger",
            bytes.len()
        )
    })?;
    Ok(())
}

/// Copies a directory tree (regular files and directories) into the FAT volume.
fn copy_tree(source: &Path, dir: &FatDir<'_, '_>, depth: usize) -> Result<()> {
    ensure!(
        depth < 6,
        "{}: nested too deeply for the boot partition",
        source.display()
    );
    let mut entries: Vec<_> = fs::read_dir(source)
        .with_context(|| format!("reading {}", source.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| anyhow!("{}: not a UTF-8 name", entry.path().display()))?;
        let kind = entry.file_type()?;
        if depth == 0
            && ["config.txt", "zboot.img", "zbmanifest.txt", "zbstate.bin"]
                .contains(&name.to_ascii_lowercase().as_str())
        {
            bail!(
                "{}: disk create writes /{name} itself (use --config-extra, --loader or --manifest)",
                entry.path().display()
            );
        }
        if kind.is_dir() {
            let sub = dir.create_dir(name)?;
            copy_tree(&entry.path(), &sub, depth + 1)?;
        } else if kind.is_file() {
            write_file(dir, name, &read(&entry.path(), "--firmware-dir")?)?;
        } else {
            bail!(
                "{}: only regular files and directories can go on the boot partition",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// Builds the whole boot partition in memory.
fn boot_partition(args: &CreateArgs, layout: &Layout, disk_id: u32) -> Result<Vec<u8>> {
    let loader = read(&args.loader, "--loader")?;
    let manifest = manifest_text(args)?;
    let config = config_text(args)?;
    let signing = args
        .sign_key
        .as_deref()
        .map(super::key::read_private)
        .transpose()?;
    let image_name = match &args.image_name {
        Some(name) => name.clone(),
        None => args
            .output
            .file_stem()
            .map_or_else(|| "zboot".to_string(), |s| s.to_string_lossy().into_owned()),
    };
    let mut slots = Vec::new();
    for spec in &args.slots {
        ensure!(
            slots.iter().all(|(s, _)| *s != spec.slot),
            "--slot {} given twice",
            spec.slot
        );
        let cmdline = args
            .cmdlines
            .iter()
            .find(|(s, _)| *s == spec.slot)
            .map(|(_, t)| t);
        let signing = signing.as_ref().map(|key| (image_name.as_str(), key));
        slots.push((
            spec.slot,
            slot_files(spec, cmdline, signing, args.hash.algorithm())?,
        ));
    }
    if let Some((slot, _)) = args
        .cmdlines
        .iter()
        .find(|(s, _)| !args.slots.iter().any(|spec| spec.slot == *s))
    {
        bail!("--cmdline {slot}=... given but no --slot {slot}:kernel=...");
    }

    let bytes = usize::try_from(layout.boot.bytes())?;
    let mut volume = vec![0u8; bytes];
    fatfs::format_volume(
        Cursor::new(&mut volume),
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(boot_cluster_bytes(layout.boot.bytes()))
            .volume_id(disk_id)
            .volume_label(*b"BOOT       "),
    )
    .context("formatting the boot partition")?;
    {
        let fs: FatFs<'_> =
            fatfs::FileSystem::new(Cursor::new(&mut volume), fatfs::FsOptions::new())
                .context("opening the new boot partition")?;
        fill_boot(&fs, args, &config, &loader, &manifest, &slots)?;
        fs.unmount().context("flushing the boot partition")?;
    }
    super::fat_fixup::fix_fatfs_volume(&mut volume)?;
    Ok(volume)
}

type SlotSources = Vec<(Slot, Vec<SlotFileSource>)>;

fn fill_boot(
    fs: &FatFs<'_>,
    args: &CreateArgs,
    config: &[u8],
    loader: &[u8],
    manifest: &[u8],
    slots: &SlotSources,
) -> Result<()> {
    {
        let root = fs.root_dir();
        write_file(&root, "config.txt", config)?;
        // First of the big files, so it lands low and is contiguous in the fresh volume.
        write_file(
            &root,
            recovery_proto::locate::STATE_FILE_NAME,
            &[0; recovery_proto::locate::STATE_FILE_SIZE as usize],
        )?;
        write_file(&root, "zboot.img", loader)?;
        write_file(&root, "zbmanifest.txt", manifest)?;
        if let Some(dir) = &args.firmware_dir {
            copy_tree(dir, &root, 0)?;
        }
        for slot in Slot::ALL {
            let dir = root.create_dir(slot.name())?;
            if let Some((_, files)) = slots.iter().find(|(s, _)| *s == slot) {
                for file in files {
                    write_file(&dir, file.name, &file.bytes)
                        .with_context(|| format!("slot {slot}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes `bytes` at `offset`, skipping zero MiB-blocks (the image is sparse and zero).
pub fn write_sparse(file: &File, offset: u64, source: &mut dyn Read, limit: u64) -> Result<u64> {
    let mut buffer = vec![0u8; MIB as usize];
    let mut written = 0u64;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            let n = source.read(&mut buffer[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(written);
        }
        ensure!(
            written + filled as u64 <= limit,
            "does not fit: more than {limit} bytes"
        );
        let chunk = &buffer[..filled];
        if chunk.iter().any(|&b| b != 0) {
            file.write_all_at(chunk, offset + written)?;
        }
        written += filled as u64;
    }
}

/// ext4's superblock magic 0xEF53 at byte 1024 + 56.
fn is_ext_image(path: &Path) -> Result<bool> {
    let file = File::open(path)?;
    let mut magic = [0u8; 2];
    Ok(file.read_exact_at(&mut magic, 1024 + 56).is_ok() && magic == [0x53, 0xEF])
}

/// Makes an ext2/3/4 file system of `extent`'s size with `mke2fs` (from `dir` if given) and
/// copies it into the image.
fn make_ext4(
    image: &File,
    place: &Scratch,
    extent: Extent,
    label: &str,
    dir: Option<&Path>,
) -> Result<()> {
    // Next to the output, not in /tmp: a root partition may not fit in a RAM-backed /tmp.
    let scratch = place.path(label);
    let _remove = RemoveOnDrop(&scratch);
    File::create(&scratch)
        .with_context(|| format!("creating {}", scratch.display()))?
        .set_len(extent.bytes())?;
    let mut command = Command::new("mke2fs");
    command.args(["-q", "-F", "-t", "ext4", "-L", label]);
    if let Some(dir) = dir {
        command.arg("-d").arg(dir);
    }
    command.arg(&scratch);
    let output = command
        .output()
        .map_err(|e| anyhow!("running mke2fs (e2fsprogs; scripts/setup installs it): {e}"))?;
    ensure!(
        output.status.success(),
        "mke2fs for {label} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let mut source = File::open(&scratch)?;
    write_sparse(image, extent.start * SECTOR, &mut source, extent.bytes())?;
    Ok(())
}

/// Where scratch file systems are made: beside the output image.
struct Scratch(PathBuf);

impl Scratch {
    fn new(output: &Path) -> Self {
        let name = output
            .file_name()
            .map_or_else(|| "disk".to_string(), |n| n.to_string_lossy().into_owned());
        let dir = output.parent().unwrap_or(Path::new("."));
        Self(dir.join(format!(".{name}.{}", std::process::id())))
    }

    fn path(&self, label: &str) -> PathBuf {
        let mut path = self.0.clone().into_os_string();
        path.push(format!(".{label}.tmp"));
        PathBuf::from(path)
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Checks a `--root` source before anything is written.
fn check_root_source(slot: Slot, path: &Path, extent: Extent) -> Result<()> {
    let metadata = fs::metadata(path).with_context(|| {
        format!(
            "--root {slot}={}: no such file or directory",
            path.display()
        )
    })?;
    if metadata.is_dir() {
        return Ok(());
    }
    ensure!(
        metadata.len() <= extent.bytes(),
        "--root {slot}={}: {} does not fit in the {} partition (--root-size/--safe-size)",
        path.display(),
        human(metadata.len()),
        human(extent.bytes())
    );
    ensure!(
        is_ext_image(path)?,
        "--root {slot}={}: not an ext2/3/4 image (no superblock magic) nor a directory",
        path.display()
    );
    Ok(())
}

fn root_fs(
    image: &File,
    place: &Scratch,
    slot: Slot,
    extent: Extent,
    source: Option<&PathBuf>,
) -> Result<()> {
    let label = format!("root{}", slot.name());
    match source {
        None => make_ext4(image, place, extent, &label, None),
        Some(path) if path.is_dir() => make_ext4(image, place, extent, &label, Some(path))
            .with_context(|| format!("--root {slot}={}", path.display())),
        Some(path) => {
            let mut source = File::open(path)?;
            write_sparse(image, extent.start * SECTOR, &mut source, extent.bytes())
                .with_context(|| format!("--root {slot}={}", path.display()))?;
            Ok(())
        }
    }
}

fn random_disk_id() -> Result<u32> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("random disk id: {e}"))?;
    // 0 reads as "no signature" to some tools.
    Ok(u32::from_le_bytes(bytes).max(1))
}

/// Runs `disk create`.
pub fn create(args: &CreateArgs, out: &mut dyn Write) -> Result<()> {
    if !args.size.is_power_of_two() && !args.any_size {
        bail!(
            "--size {} is not a power of two, which QEMU's SD card emulation requires; \
             pass --any-size for a real eMMC",
            human(args.size)
        );
    }
    let table = if args.gpt {
        TableKind::Gpt
    } else {
        TableKind::Mbr
    };
    let layout = Layout::compute_for(
        table,
        args.size,
        args.boot_size,
        args.root_size,
        args.safe_size,
    )?;
    for (slot, path) in &args.roots {
        ensure!(
            args.roots.iter().filter(|(s, _)| s == slot).count() == 1,
            "--root {slot}= given twice"
        );
        check_root_source(*slot, path, layout.root(*slot))?;
    }
    let disk_id = match args.disk_id {
        Some(id) => id,
        None => random_disk_id()?,
    };
    let gpt_ids = match (args.gpt, args.disk_id) {
        (false, _) => None,
        (true, Some(id)) => Some(GptIds::derived(id)),
        (true, None) => Some(GptIds::random()?),
    };
    let boot = boot_partition(args, &layout, disk_id)?;
    let parts = match write_image(args, &layout, disk_id, gpt_ids.as_ref(), &boot) {
        Ok(parts) => parts,
        Err(error) => {
            // Half an image would only be mistaken for a good one later.
            let _ = fs::remove_file(&args.output);
            return Err(error);
        }
    };
    report(args, &parts, disk_id, out)
}

/// Writes the table, the file systems and the slot state; returns the table as read back.
fn write_image(
    args: &CreateArgs,
    layout: &Layout,
    disk_id: u32,
    gpt_ids: Option<&GptIds>,
    boot: &[u8],
) -> Result<Partitions> {
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    image.set_len(args.size)?;
    match gpt_ids {
        Some(ids) => write_gpt(&image, layout, args.size / SECTOR, ids)?,
        None => write_partition_table(&image, layout, disk_id)?,
    }
    write_sparse(
        &image,
        layout.boot.start * SECTOR,
        &mut &boot[..],
        layout.boot.bytes(),
    )?;
    let place = Scratch::new(&args.output);
    for slot in Slot::ALL {
        let source = args.roots.iter().find(|(s, _)| *s == slot).map(|(_, p)| p);
        root_fs(&image, &place, slot, layout.root(slot), source)?;
    }
    if !args.no_data_fs {
        make_ext4(&image, &place, layout.data, "data", None)?;
    }
    image.sync_all()?;

    // The loader's own partition reader must see what we meant to write.
    let mut disk = FileDisk::new(File::open(&args.output)?)?;
    let parts = Partitions::read(&mut disk).map_err(|e| anyhow!("{e}"))?;
    let (safe, data) = layout.safe_and_data_numbers();
    ensure!(
        parts.kind() == layout.table
            && parts.partition(safe).map(|p| p.start_lba) == Some(layout.safe.start)
            && parts.partition(data).map(|p| (p.start_lba, p.sectors))
                == Some((layout.data.start, layout.data.sectors))
            && parts.gpt().is_none_or(|g| g.primary_fault.is_none()),
        "the written partition table does not read back as laid out"
    );

    // init-state's own message is replaced by the summary in `report`.
    let mut log = Vec::new();
    init_state(
        &Target::Image(args.output.clone()),
        &InitArgs {
            force: false,
            max_boot_failure: args.max_boot_failure,
            count_power_loss: args.count_power_loss,
            min_version: 0,
        },
        &mut log,
    )
    .context("initialising the slot state")?;
    // The state records each slot's version as slot.txt names it (`status`, anti-rollback).
    if args.slots.iter().any(|spec| spec.version != 0) {
        super::edit(&Target::Image(args.output.clone()), &mut log, |state| {
            for spec in &args.slots {
                state.slot_mut(spec.slot).image_version = spec.version;
            }
            Ok(String::new())
        })
        .context("recording the slots' versions in the slot state")?;
    }
    Ok(parts)
}

fn report(args: &CreateArgs, parts: &Partitions, disk_id: u32, out: &mut dyn Write) -> Result<()> {
    match parts.gpt() {
        Some(table) => writeln!(
            out,
            "{}: {} GPT disk {} (FAT volume id {disk_id:08x})",
            args.output.display(),
            human(args.size),
            table.disk_guid
        )?,
        None => writeln!(
            out,
            "{}: {} MBR disk {disk_id:08x}",
            args.output.display(),
            human(args.size)
        )?,
    }
    let safe = default_root_number(parts.kind(), Slot::Safe);
    for part in parts.iter() {
        let what = match part.number {
            1 => "boot (FAT32)".to_string(),
            2 => format!("root A{}", describe_root(args, Slot::A)),
            3 => format!("root B{}", describe_root(args, Slot::B)),
            n if n == safe => format!("root SAFE{}", describe_root(args, Slot::Safe)),
            _ if args.no_data_fs => "DATA (unformatted)".to_string(),
            _ => "DATA (ext4)".to_string(),
        };
        writeln!(
            out,
            "  p{} PARTUUID={} start {} size {}: {what}",
            part.number,
            part.partuuid(),
            part.start_lba,
            human(part.sectors * SECTOR)
        )?;
    }
    for slot in Slot::ALL {
        match args.slots.iter().find(|s| s.slot == slot) {
            Some(spec) => writeln!(out, "  /{slot}/ image_version {}", spec.version)?,
            None => writeln!(out, "  /{slot}/ empty")?,
        }
    }
    writeln!(
        out,
        "  /ZBSTATE.BIN: fresh slot state (A active, B backup, max_boot_failure {}, count_power_loss {})",
        args.max_boot_failure,
        if args.count_power_loss { "yes" } else { "no" }
    )?;
    Ok(())
}

fn describe_root(args: &CreateArgs, slot: Slot) -> String {
    match args.roots.iter().find(|(s, _)| *s == slot) {
        Some((_, path)) => format!(" (ext4 from {})", path.display()),
        None => " (empty ext4)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_specs_parse() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        let spec = parse_slot_spec("b:kernel=k.img,initrd=i,dtb=d.dtb,version=7").unwrap();
        assert_eq!(
            (spec.slot, spec.version, spec.initrd),
            (Slot::B, 7, Some(PathBuf::from("i")))
        );
        assert!(
            parse_slot_spec("A:initrd=i")
                .unwrap_err()
                .contains("kernel=PATH is required")
        );
        assert!(parse_slot_spec("C:kernel=k").is_err());
        assert!(
            parse_slot_spec("A:kernel=k,foo=1")
                .unwrap_err()
                .contains("unknown slot file")
        );
        assert_eq!(
            parse_cmdline_spec("SAFE=console=ttyAMA0,115200 quiet"),
            Ok((Slot::Safe, "console=ttyAMA0,115200 quiet".to_string()))
        );
        assert_eq!(parse_disk_id("0x1A2B3C4D"), Ok(0x1a2b_3c4d));
    }

    #[test]
    fn default_layout_fits_256m() {
        let l = Layout::compute(256 * MIB, 64 * MIB, 64 * MIB, 32 * MIB).unwrap();
        assert_eq!(l.boot.start, 2048);
        assert_eq!(l.root_a.start, 2048 + 131_072);
        assert_eq!(l.extended.start, l.root_b.end());
        assert_eq!(l.safe.start, l.extended.start + 2048);
        assert_eq!(l.data.end(), 256 * 2048);
        assert_eq!(l.extended.end(), l.data.end());
        let error = Layout::compute(128 * MIB, 64 * MIB, 64 * MIB, 32 * MIB).unwrap_err();
        assert!(error.to_string().contains("do not fit"), "{error}");
        assert!(Layout::compute(256 * MIB, 8 * MIB, 64 * MIB, 32 * MIB).is_err());
    }

    #[test]
    fn gpt_layout_has_no_container_and_leaves_the_tail() {
        let l =
            Layout::compute_for(TableKind::Gpt, 256 * MIB, 64 * MIB, 64 * MIB, 32 * MIB).unwrap();
        assert_eq!(l.safe.start, l.root_b.end());
        assert_eq!(l.data.start, l.safe.end());
        assert_eq!(l.data.end(), 256 * 2048 - 33);
        assert_eq!(l.safe_and_data_numbers(), (4, 5));
    }

    #[test]
    fn derived_guids_are_stable_version_4() {
        let ids = GptIds::derived(0x1a2b_3c4d);
        assert_eq!(ids, GptIds::derived(0x1a2b_3c4d));
        assert_ne!(
            ids.partitions[1],
            GptIds::derived(0x1a2b_3c4e).partitions[1]
        );
        for guid in std::iter::once(ids.disk).chain(ids.partitions) {
            let text = guid.to_string();
            assert_eq!(text.as_bytes()[14], b'4', "{text}");
            assert!(
                matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
                "{text}"
            );
        }
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::boot_cluster_bytes;

    #[test]
    fn boot_clusters_are_as_large_as_fat32_allows() {
        const MIB: u64 = 1 << 20;
        assert_eq!(boot_cluster_bytes(64 * MIB), 512);
        assert_eq!(boot_cluster_bytes(128 * MIB), 1024);
        assert_eq!(boot_cluster_bytes(256 * MIB), 2048);
        assert_eq!(boot_cluster_bytes(512 * MIB), 4096);
        assert_eq!(boot_cluster_bytes(4096 * MIB), 4096);
        // Every choice leaves FAT32 its minimum cluster count.
        for size in [64, 100, 130, 200, 270, 300, 1000] {
            let bytes = size * MIB;
            assert!(
                bytes * 63 / 64 / u64::from(boot_cluster_bytes(bytes)) > 65_525,
                "{size} MiB"
            );
        }
    }
}
