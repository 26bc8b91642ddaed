//! `zbctl image convert`: a `.zi` from a raw eMMC dump or from boot/root tarballs.
//!
//! Sparse by construction: each partition is read in chunk-size windows of 4 KiB units; a
//! unit the file system marks free is *skip* (never stored, never written), an all-zero
//! unit in use is *fill* (written as zeros, never stored), the rest is *data* (deflated in
//! parallel). Short zero runs between data stay inside the data chunk (they compress to a few
//! bytes and would otherwise cost a 64-byte region entry each).

use std::fs::{self, File};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use recovery_proto::Slot;
use recovery_proto::image::format::SECTOR;
use recovery_proto::image::writer::{
    ImageMeta, ImageWriter, PlannedPartition, PlannedRegion, encode_chunk,
};
use recovery_proto::image::{Header, PartitionEntry, RegionKind, Role, TableKind};
use recovery_proto::partition::{FAT_TYPES, Partitions};

use super::disk::{FileDisk, Window};
use super::disk_create::HashChoice;
use super::image::sign_with;
use super::image_fs;
use super::image_stock;
use super::key;

/// Arguments of `image convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A raw dump of a zboot disk (`dd if=/dev/mmcblk0 of=dd.img`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["boot_tar", "root_tar"])]
    pub from_disk: Option<PathBuf>,
    /// Tarball of the boot partition's files (config.txt, zboot.img, A/kernel.img, ...).
    #[arg(short = 'b', long, value_name = "TAR", requires = "root_tar")]
    pub boot_tar: Option<PathBuf>,
    /// Tarball of the root file system.
    #[arg(short = 'r', long, value_name = "TAR", requires = "boot_tar")]
    pub root_tar: Option<PathBuf>,
    /// The `.zi` to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Image name (asked for when missing and stdin is a terminal).
    #[arg(long)]
    pub name: Option<String>,
    /// Image version, for anti-rollback (asked for when missing and stdin is a terminal).
    #[arg(long)]
    pub version: Option<u32>,
    /// Largest chunk in KiB (power of two, 4–1024; the loader's buffer is 1 MiB).
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pub chunk_kib: u32,
    /// DEFLATE level 0–10.
    #[arg(long, default_value_t = 6)]
    pub level: u8,
    /// Digest function of the image's chunks and of the slot.txt it generates (sha256:
    /// .zi version 1 and slot.txt format 1, for units whose zboot.img predates BLAKE3).
    #[arg(long, value_enum, default_value_t = HashChoice::Blake3)]
    pub hash: HashChoice,
    /// Boot partition size in MiB (tarballs).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub boot_mib: u64,
    /// Root partition size in MiB (tarballs; default: the tree's size + 25% + 64 MiB).
    #[arg(long, value_name = "MIB")]
    pub root_mib: Option<u64>,
    /// Sign with this private key (`zbctl key generate`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Stock images: the root partition's number, when the dump has several ext4 ones.
    #[arg(long, value_name = "N")]
    pub root_partition: Option<u8>,
    /// Stock images: leave root B empty (an update fills it) instead of a copy of A.
    #[arg(long)]
    pub b_empty: bool,
    /// Stock images: a DTB of the boot partition to ship in each slot as dtb.dtb (default:
    /// none; zboot hands Linux the firmware's tree, with the config.txt overlays applied).
    #[arg(long, value_name = "NAME")]
    pub slot_dtb: Option<String>,
    /// Stock images: size of the DATA partition added after SAFE (K/M/G suffixes).
    #[arg(long, default_value = "256M", value_parser = super::disk_create::parse_size)]
    pub data_size: u64,
    /// Stock images: the zboot.img to embed (default: the workspace's release build).
    #[arg(long, value_name = "FILE")]
    pub loader: Option<PathBuf>,
    /// Stock images: SAFE's system from a second stock dump (default: the same system as A).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["safe_boot", "safe_root"])]
    pub safe: Option<PathBuf>,
    /// Stock images: SAFE's boot files from a tarball (with --safe-root).
    #[arg(long, value_name = "TAR", requires = "safe_root")]
    pub safe_boot: Option<PathBuf>,
    /// Stock images: SAFE's root from a tarball (with --safe-boot).
    #[arg(long, value_name = "TAR", requires = "safe_boot")]
    pub safe_root: Option<PathBuf>,
    /// Stock images: the zbmanifest.txt to ship (policy and update settings, checked with the
    /// loader's parser; default: the one disk create generates).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print the changes a stock image needs and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where a partition's bytes are.
#[derive(Clone, Debug)]
pub struct SourcePartition {
    /// The layout entry.
    pub entry: PartitionEntry,
    /// File and byte offset of its content; `None` = not carried.
    pub content: Option<(PathBuf, u64)>,
}

/// Sizes of a converted image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Bytes in data regions.
    pub data: u64,
    /// Bytes in fill regions.
    pub fill: u64,
    /// Bytes in skip regions.
    pub skip: u64,
    /// Stored payload bytes.
    pub payload: u64,
}

const UNIT: u64 = 4096;
/// Zero runs shorter than this between data stay data.
const MIN_HOLE: u64 = 64 * 1024;

/// Plans the regions of `size` bytes at `base` in `file` (see the module docs).
#[allow(clippy::too_many_lines)] // one pass over the windows reads best whole
pub fn plan_regions(file: &File, base: u64, size: u64, chunk: u32) -> Result<Vec<PlannedRegion>> {
    let mut view = file.try_clone()?;
    let free = image_fs::free_map(&mut Window::new(&mut view, base, size), size)?;
    let chunk = u64::from(chunk);
    let mut regions: Vec<PlannedRegion> = Vec::new();
    let mut push = |kind: RegionKind, offset: u64, length: u64| {
        if let Some(last) = regions.last_mut()
            && last.kind == kind
            && kind != RegionKind::Data
            && last.offset + last.length == offset
        {
            last.length += length;
            return;
        }
        regions.push(PlannedRegion {
            kind,
            fill: 0,
            offset,
            length,
        });
    };
    let mut buffer = vec![0u8; usize::try_from(chunk)?];
    let is_free = |from: u64, len: u64| {
        free.as_ref().is_some_and(|map| {
            map.get(usize::try_from(from / SECTOR).unwrap_or(usize::MAX)..)
                .and_then(|rest| rest.get(..usize::try_from(len / SECTOR).unwrap_or(0)))
                .is_some_and(|s| s.iter().all(|&f| f))
        })
    };
    let mut window = 0;
    while window < size {
        let length = chunk.min(size - window);
        if is_free(window, length) {
            push(RegionKind::Skip, window, length);
            window += length;
            continue;
        }
        let bytes = buffer
            .get_mut(..usize::try_from(length)?)
            .ok_or_else(|| anyhow!("window"))?;
        file.read_exact_at(bytes, base + window)
            .with_context(|| format!("reading at byte {}", base + window))?;
        // Per unit: (offset, length, free, zero).
        let units: Vec<(u64, u64, bool, bool)> = (0..length.div_ceil(UNIT))
            .map(|i| {
                let at = i * UNIT;
                let len = UNIT.min(length - at);
                let slice = bytes
                    .get(usize::try_from(at).unwrap_or(0)..usize::try_from(at + len).unwrap_or(0))
                    .unwrap_or_default();
                (
                    window + at,
                    len,
                    is_free(window + at, len),
                    slice.iter().all(|&b| b == 0),
                )
            })
            .collect();
        // Data = used and non-zero; free non-zero = skip; zero = hole (fill or skip).
        let class = |u: &(u64, u64, bool, bool)| match (u.2, u.3) {
            (_, true) => 0u8,    // zero
            (true, false) => 1,  // free, stale bytes
            (false, false) => 2, // data
        };
        let mut classes: Vec<u8> = units.iter().map(class).collect();
        // Absorb short zero holes between data units into data.
        let mut i = 0;
        while i < classes.len() {
            if classes.get(i) == Some(&0) {
                let start = i;
                while classes.get(i) == Some(&0) {
                    i += 1;
                }
                let hole = (i - start) as u64 * UNIT;
                let between =
                    start > 0 && classes.get(start - 1) == Some(&2) && classes.get(i) == Some(&2);
                if between && hole < MIN_HOLE {
                    for c in classes.get_mut(start..i).unwrap_or_default() {
                        *c = 2;
                    }
                }
            } else {
                i += 1;
            }
        }
        let mut data_start: Option<u64> = None;
        for (unit, class) in units.iter().zip(&classes) {
            let (offset, len, free, _) = *unit;
            if *class == 2 {
                data_start.get_or_insert(offset);
                continue;
            }
            if let Some(start) = data_start.take() {
                push(RegionKind::Data, start, offset - start);
            }
            let kind = if free {
                RegionKind::Skip
            } else {
                RegionKind::Fill
            };
            push(kind, offset, len);
        }
        if let Some(start) = data_start {
            push(RegionKind::Data, start, window + length - start);
        }
        window += length;
    }
    Ok(regions)
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Writes a `.zi` of `partitions` (in write order) to `output` (via a temporary file, so a
/// failure leaves nothing behind).
pub fn build(
    partitions: &[SourcePartition],
    meta: ImageMeta,
    level: u8,
    output: &Path,
) -> Result<(Header, ConvertStats)> {
    let mut plan = Vec::new();
    let mut files = Vec::new();
    let mut stats = ConvertStats::default();
    for partition in partitions {
        let regions = if let Some((path, offset)) = &partition.content {
            {
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let regions = plan_regions(&file, *offset, partition.entry.size(), meta.chunk_size)
                    .with_context(|| {
                        format!(
                            "{}: partition {} at byte {offset}",
                            path.display(),
                            partition.entry.number
                        )
                    })?;
                files.push(Some((file, *offset)));
                regions
            }
        } else {
            files.push(None);
            Vec::new()
        };
        for r in &regions {
            match r.kind {
                RegionKind::Data => stats.data += r.length,
                RegionKind::Fill => stats.fill += r.length,
                RegionKind::Skip => stats.skip += r.length,
            }
        }
        plan.push(PlannedPartition {
            entry: partition.entry,
            regions,
        });
    }
    let temporary = output.with_extension("zi.partial");
    let out =
        File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    let algorithm = meta.algorithm;
    let result = (|| -> Result<Header> {
        let mut writer = ImageWriter::new(std::io::BufWriter::new(out), meta, plan)?;
        let regions = writer.data_regions();
        let bar = progress_bar(stats.data);
        // Batches keep memory bounded (a few chunks per core) while rayon compresses.
        let batch = rayon::current_num_threads() * 4;
        for group in regions.chunks(batch) {
            let encoded: Vec<_> = group
                .par_iter()
                .map(|&(partition, offset, length)| -> Result<_> {
                    let (file, base) =
                        files
                            .get(usize::from(partition))
                            .and_then(Option::as_ref)
                            .ok_or_else(|| anyhow!("partition {partition} has no source"))?;
                    let mut data = vec![0u8; usize::try_from(length)?];
                    file.read_exact_at(&mut data, base + offset)?;
                    Ok(encode_chunk(&data, level, algorithm))
                })
                .collect();
            for chunk in encoded {
                let chunk = chunk?;
                writer.push_chunk(&chunk)?;
                bar.inc(chunk.length);
            }
        }
        bar.finish_and_clear();
        let (out, header) = writer.finish()?;
        out.into_inner()
            .map_err(|e| anyhow!("writing: {e}"))?
            .sync_all()?;
        Ok(header)
    })();
    match result {
        Ok(header) => {
            fs::rename(&temporary, output)
                .with_context(|| format!("renaming to {}", output.display()))?;
            stats.payload = header.payload_size;
            Ok((header, stats))
        }
        Err(error) => {
            let _ = fs::remove_file(&temporary);
            Err(error)
        }
    }
}

/// Roles of a zboot disk's partitions by number (docs/disk-layout.md defaults).
fn role_of(number: u8, kind: u8, first_fat: Option<u8>) -> Role {
    match number {
        n if Some(n) == first_fat && FAT_TYPES.contains(&kind) => Role::Boot,
        2 => Role::RootA,
        3 => Role::RootB,
        5 => Role::Safe,
        6 => Role::Data,
        _ => Role::Other,
    }
}

/// Write order: table sectors, roots, SAFE, data, others, boot last (it holds zboot).
fn write_rank(role: Role) -> u8 {
    match role {
        Role::Table => 0,
        Role::RootA => 1,
        Role::RootB => 2,
        Role::Safe => 3,
        Role::Data => 4,
        Role::Other => 5,
        Role::Boot => 6,
    }
}

fn table_sector(lba: u64) -> PartitionEntry {
    PartitionEntry {
        number: 0,
        role: Role::Table,
        kind: 0,
        bootable: false,
        first_region: 0,
        region_count: 0,
        start_lba: lba,
        sectors: 1,
    }
}

/// The layout of a dd image: its table sectors and partitions.
pub fn disk_layout(path: &Path) -> Result<(Vec<SourcePartition>, u32, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut disk = FileDisk::new(file.try_clone()?)?;
    let table = Partitions::read(&mut disk).map_err(|error| {
        anyhow!(
            "{}: no recognizable partition table at sector 0 (byte 0): {error:?}; \
             --from-disk needs a whole-disk dump with an MBR (dd if=/dev/mmcblk0)",
            path.display()
        )
    })?;
    // The .zi format describes MBR tables (type bytes, EBR sectors); GPT dumps are refused.
    let Some(partitions) = table.mbr() else {
        bail!(
            "{}: a GPT disk; --from-disk converts MBR dumps only",
            path.display()
        );
    };
    let first_fat = partitions
        .iter()
        .find(|p| FAT_TYPES.contains(&p.kind))
        .map(|p| p.number);
    let content = |lba: u64| Some((path.to_path_buf(), lba * SECTOR));
    let mut list = vec![SourcePartition {
        entry: table_sector(0),
        content: content(0),
    }];
    // EBRs: the container's first sector, then each link (entry 2) relative to the container.
    if let Some(container) = partitions
        .mbr
        .partitions()
        .find(recovery_proto::partition::MbrPartition::is_extended)
    {
        let mut ebr = container.start_lba;
        for _ in 0..recovery_proto::partition::MAX_LOGICAL {
            list.push(SourcePartition {
                entry: table_sector(ebr),
                content: content(ebr),
            });
            let mut sector = [0u8; 512];
            file.read_exact_at(&mut sector, ebr * SECTOR)?;
            let link = |at: usize| {
                u64::from(u32::from_le_bytes(
                    sector[462 + at..466 + at].try_into().unwrap_or([0; 4]),
                ))
            };
            let (relative, count) = (link(8), link(12));
            if sector[466] == 0 || count == 0 {
                break;
            }
            ebr = container.start_lba + relative;
        }
        list.push(SourcePartition {
            entry: PartitionEntry {
                number: container.number,
                role: Role::Other,
                kind: container.kind,
                bootable: container.bootable,
                first_region: 0,
                region_count: 0,
                start_lba: container.start_lba,
                sectors: container.sectors,
            },
            content: None,
        });
    }
    for p in partitions.iter() {
        list.push(SourcePartition {
            entry: PartitionEntry {
                number: p.number,
                role: role_of(p.number, p.kind, first_fat),
                kind: p.kind,
                bootable: p.bootable,
                first_region: 0,
                region_count: 0,
                start_lba: p.start_lba,
                sectors: p.sectors,
            },
            content: content(p.start_lba),
        });
    }
    list.sort_by_key(|p| (write_rank(p.entry.role), p.entry.start_lba));
    Ok((list, partitions.mbr.disk_signature, size / SECTOR * SECTOR))
}

fn now() -> u64 {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return epoch;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ask(prompt: &str) -> Result<String> {
    eprint!("{prompt}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn name_and_version(args: &ConvertArgs) -> Result<(String, u32)> {
    let tty = std::io::stdin().is_terminal();
    let name = match &args.name {
        Some(name) => name.clone(),
        None if tty => ask("image name")?,
        None => bail!("give the image name with --name"),
    };
    if name.is_empty() || name.len() > 64 {
        bail!("the image name must be 1 to 64 bytes");
    }
    let version = match args.version {
        Some(version) => version,
        None if tty => ask("image version (a number, for anti-rollback)")?
            .parse()
            .context("the version must be a number")?,
        None => bail!("give the image version with --version"),
    };
    Ok((name, version))
}

/// Runs `image convert`.
pub fn convert(args: &ConvertArgs, out: &mut dyn Write) -> Result<()> {
    let chunk_size = args
        .chunk_kib
        .checked_mul(1024)
        .filter(|c| c.is_power_of_two() && (4096..=1 << 20).contains(c))
        .ok_or_else(|| anyhow!("--chunk-kib must be a power of two from 4 to 1024"))?;
    if args.level > 10 {
        bail!("--level must be 0 to 10");
    }
    let signing = args
        .sign_key
        .as_deref()
        .map(key::read_private)
        .transpose()?;
    let (name, version) = name_and_version(args)?;
    let scratch = tempfile::Builder::new()
        .prefix(".zbctl-convert-")
        .tempdir_in(
            args.output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("making a scratch directory beside --output")?;
    let stock = match (&args.from_disk, &args.boot_tar, &args.root_tar) {
        (Some(disk), None, None) => {
            image_stock::from_disk(disk, scratch.path(), args.root_partition)?
        }
        (None, Some(boot), Some(root)) => super::image_tar::stock_from_tarballs(
            boot,
            root,
            (args.boot_mib, args.root_mib),
            scratch.path(),
        )?,
        _ => bail!("give --from-disk dd.img, or -b boot.tar -r root.tar"),
    };
    let (partitions, disk_signature, disk_size) = match stock {
        Some(input) => {
            let Some(disk) = convert_stock(&input, args, version, scratch.path(), out)? else {
                return Ok(());
            };
            disk_layout(&disk)?
        }
        None if args.dry_run => {
            writeln!(out, "already in the zboot layout: carried over as it is")?;
            return Ok(());
        }
        None => match (&args.from_disk, &args.boot_tar, &args.root_tar) {
            (Some(disk), None, None) => disk_layout(disk)?,
            (None, Some(boot), Some(root)) => {
                super::image_tar::layout_from_tarballs(boot, root, args, scratch.path())?
            }
            _ => bail!("give --from-disk dd.img, or -b boot.tar -r root.tar"),
        },
    };
    let meta = ImageMeta {
        name,
        version,
        created: now(),
        chunk_size,
        table: TableKind::Mbr,
        disk_signature,
        disk_size,
        algorithm: args.hash.algorithm(),
    };
    let partitions = match &signing {
        Some(key) => sign_slots(partitions, &meta, key, scratch.path(), out)?,
        None => partitions,
    };
    let (header, stats) = build(&partitions, meta, args.level, &args.output)?;
    if let Some(signing) = &signing {
        sign_with(
            &args.output,
            header.unsigned_size(),
            &header.encode(),
            signing,
        )?;
    }
    warn_layout(&args.output);
    let size = fs::metadata(&args.output)?.len();
    writeln!(
        out,
        "{}: {} version {}, {} partitions, data {} MiB, fill {} MiB, skip {} MiB, file {} bytes{}",
        args.output.display(),
        header.name(),
        header.image_version,
        header.partition_count,
        stats.data >> 20,
        stats.fill >> 20,
        stats.skip >> 20,
        size,
        if signing.is_some() { ", signed" } else { "" }
    )?;
    Ok(())
}

/// Signs each slot of the image's boot partition (`slot.sig` beside each `slot.txt`), on a
/// copy in `scratch`: the input stays as it was. Returns the partitions with the boot
/// partition's content taken from the copy.
fn sign_slots(
    mut partitions: Vec<SourcePartition>,
    meta: &ImageMeta,
    key: &ed25519_dalek::SigningKey,
    scratch: &Path,
    out: &mut dyn Write,
) -> Result<Vec<SourcePartition>> {
    let (name, version) = (meta.name.as_str(), meta.version);
    let Some(boot) = partitions
        .iter_mut()
        .find(|p| p.entry.role == Role::Boot && p.content.is_some())
    else {
        bail!("--sign-key: the image has no boot partition whose slots could be signed");
    };
    let Some((path, offset)) = boot.content.clone() else {
        bail!("--sign-key: the boot partition is not carried");
    };
    let mut bytes = vec![0u8; usize::try_from(boot.entry.size())?];
    File::open(&path)
        .and_then(|file| file.read_exact_at(&mut bytes, offset))
        .with_context(|| format!("reading the boot partition of {}", path.display()))?;
    let (signed, fat32) = {
        let fs = fatfs::FileSystem::new(std::io::Cursor::new(&mut bytes), fatfs::FsOptions::new())
            .context("--sign-key: the boot partition is not a FAT volume")?;
        let signed = super::slot_sign::sign_boot_partition(
            &fs.root_dir(),
            name,
            version,
            meta.algorithm,
            key,
        )?;
        let fat32 = fs.fat_type() == fatfs::FatType::Fat32;
        fs.unmount().context("flushing the boot partition")?;
        (signed, fat32)
    };
    if fat32 {
        super::fat_fixup::fix_fatfs_volume(&mut bytes)?;
    }
    if signed.is_empty() {
        eprintln!(
            "warning: the boot partition has no slot to sign (no A/kernel.img, no X/slot.txt): \
             a zboot built with a key will not boot what install writes from this image"
        );
        return Ok(partitions);
    }
    for (slot, slot_version) in &signed {
        writeln!(
            out,
            "slot {slot}: slot.txt version {slot_version} signed as {name} by key {}",
            super::slot_sign::fingerprint_of(&key.verifying_key().to_bytes())
        )?;
        if *slot == Slot::A && *slot_version != version {
            eprintln!(
                "warning: A/slot.txt says version {slot_version}, the image {version}: `zbctl \
                 install` writes version {version} and cannot carry this signature"
            );
        }
    }
    let copy = scratch.join("boot-signed.img");
    fs::write(&copy, &bytes).with_context(|| format!("writing {}", copy.display()))?;
    boot.content = Some((copy, 0));
    Ok(partitions)
}

/// `image sign`'s first step: makes sure every slot in the image's boot partition carries
/// `key`'s signature for the image's name. When one does not, the image is decoded to
/// scratch files beside it, its slots signed, and it is encoded again with the same name,
/// version, creation time, chunk size and disk identity (the payload changes, so its
/// header does too). Returns the (new) header when it rebuilt the image, `None` when every
/// slot was signed already.
pub fn sign_slots_in_image(
    path: &Path,
    key: &ed25519_dalek::SigningKey,
    out: &mut dyn Write,
) -> Result<Option<Header>> {
    use super::image::{Opened, refuse};

    let mut opened = Opened::new(path, None)?;
    let mut source = opened.source.try_clone()?;
    let image = opened.image().map_err(|e| refuse(path, &e))?;
    let header = *image.header();
    let name = header.name().to_string();
    let entries: Vec<PartitionEntry> = (0..header.partition_count)
        .map(|index| {
            image
                .partition(index)
                .ok_or_else(|| anyhow!("{}: partition entry {index}", path.display()))
        })
        .collect::<Result<_>>()?;
    let scratch = tempfile::Builder::new()
        .prefix(".zbctl-sign-")
        .tempdir_in(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("making a scratch directory beside the image")?;
    let mut decode = |entry: &PartitionEntry| -> Result<PathBuf> {
        let file_path = scratch.path().join(format!("partition-{}", entry.number));
        let mut file = File::create(&file_path)?;
        file.set_len(entry.size())?;
        super::image_layout::decode_into(&image, &mut source, *entry, path, &mut file)?;
        Ok(file_path)
    };
    let boot = entries
        .iter()
        .find(|entry| entry.role == Role::Boot && entry.region_count > 0)
        .ok_or_else(|| {
            anyhow!(
                "{}: no boot partition whose slots could be signed",
                path.display()
            )
        })?;
    let boot_path = decode(boot)?;
    let public = key.verifying_key().to_bytes();
    if slots_signed_by(&boot_path, &name, &public)? {
        return Ok(None);
    }
    ensure!(
        header.table == TableKind::Mbr,
        "{}: re-signing the slots of a GPT image is not supported: convert it again with \
         --sign-key",
        path.display()
    );
    let mut partitions = Vec::new();
    for entry in &entries {
        let content = if entry.number == boot.number {
            Some((boot_path.clone(), 0))
        } else if entry.region_count > 0 {
            Some((decode(entry)?, 0))
        } else {
            None
        };
        partitions.push(SourcePartition {
            entry: *entry,
            content,
        });
    }
    let meta = ImageMeta {
        name,
        version: header.image_version,
        created: header.created,
        chunk_size: header.chunk_size,
        table: header.table,
        disk_signature: header.disk_signature,
        disk_size: header.disk_size,
        algorithm: header.algorithm,
    };
    let partitions = sign_slots(partitions, &meta, key, scratch.path(), out)?;
    let (header, _) = build(&partitions, meta, 6, path)?;
    Ok(Some(header))
}

/// Whether every slot of the boot partition in `path` that has a `slot.txt` carries a
/// signature by `public` for image `name`, and `A/` has its `slot.txt` (true, with a
/// warning, when there is no slot at all).
fn slots_signed_by(path: &Path, name: &str, public: &[u8; 32]) -> Result<bool> {
    let mut file = File::open(path)?;
    let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())
        .context("the image's boot partition is not a FAT volume")?;
    let root = fs.root_dir();
    let mut any = false;
    for slot in Slot::ALL {
        let read = |file: &str| super::install::read_fat_file(&root, &format!("{slot}/{file}"));
        let Some(slot_txt) = read("slot.txt")? else {
            if slot == Slot::A && read("kernel.img")?.is_some() {
                // Signing adds the slot.txt install writes.
                return Ok(false);
            }
            continue;
        };
        any = true;
        if !super::slot_sign::signed_as(&root, slot, &slot_txt, name, public)? {
            return Ok(false);
        }
    }
    if !any {
        eprintln!(
            "warning: the image's boot partition has no slot to sign (no A/kernel.img, no \
             X/slot.txt): a zboot built with a key will not boot what install writes from it"
        );
    }
    Ok(true)
}

/// An image carried over as it was may still lack what a unit needs to run zboot: says so.
fn warn_layout(output: &Path) {
    match super::image_layout::check_file(output) {
        Ok(layout) if !layout.ok() => eprintln!(
            "warning: {}: no zboot layout ({}): a unit reflashed from this image would not run \
             zboot",
            output.display(),
            layout.summary()
        ),
        Ok(_) => {}
        Err(error) => eprintln!(
            "warning: {}: layout not checked: {error:#}",
            output.display()
        ),
    }
}

/// The workspace's release build of the loader.
fn default_loader() -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/aarch64-unknown-none/release/zboot.img");
    ensure!(
        path.is_file(),
        "no --loader given and {} is not built (cargo xtask build-loader)",
        path.display()
    );
    Ok(path)
}

/// A stock image's conversion up to the zboot disk (`None` after `--dry-run`).
fn convert_stock(
    input: &image_stock::StockInput,
    args: &ConvertArgs,
    version: u32,
    scratch: &Path,
    out: &mut dyn Write,
) -> Result<Option<PathBuf>> {
    let options = image_stock::StockOptions {
        loader: match &args.loader {
            Some(path) => path.clone(),
            None if args.dry_run => PathBuf::new(),
            None => default_loader()?,
        },
        b_empty: args.b_empty,
        slot_dtb: args.slot_dtb.clone(),
        data_bytes: args.data_size,
        root_bytes: args.root_mib.map(|mib| mib << 20),
        version,
        manifest: args.manifest.clone(),
        hash: args.hash,
    };
    let plan = image_stock::plan(input, &options)?;
    // SAFE: a system of its own (--safe, --safe-boot/--safe-root), else the same one.
    let safe_scratch = scratch.join("safe");
    fs::create_dir_all(&safe_scratch)?;
    let safe_input = match (&args.safe, &args.safe_boot, &args.safe_root) {
        (Some(dump), None, None) => Some(image_stock::from_disk(dump, &safe_scratch, None)?),
        (None, Some(boot), Some(root)) => Some(super::image_tar::stock_from_tarballs(
            boot,
            root,
            (args.boot_mib, None),
            &safe_scratch,
        )?),
        _ => None,
    };
    let safe_input = match safe_input {
        Some(Some(safe)) => Some(safe),
        Some(None) => bail!("--safe: not a stock image (it is in the zboot layout already)"),
        None => None,
    };
    let safe_plan = match &safe_input {
        Some(safe) => Some(image_stock::plan(safe, &options)?),
        None => None,
    };
    let signature = if let Some(signature) = input.disk_signature {
        signature
    } else {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(|e| anyhow!("random disk signature: {e}"))?;
        u32::from_le_bytes(bytes).max(1)
    };
    let fstab = image_stock::fix_root_fstab(&input.root, signature, scratch, args.dry_run)?;
    let mut layout = vec![format!(
        "layout: 1 boot (FAT32), 2 root A = {}, 3 root B = {}, 5 SAFE = {}, 6 DATA ({} MiB, \
         empty ext4); MBR disk signature {signature:08x}",
        input.root_origin,
        if args.b_empty { "empty" } else { "a copy of A" },
        safe_input
            .as_ref()
            .map_or("the same system".to_string(), |safe| safe
                .root_origin
                .clone()),
        args.data_size >> 20
    )];
    layout.extend(fstab);
    if let (Some(safe), Some(safe_plan)) = (&safe_input, &safe_plan) {
        for change in
            image_stock::fix_root_fstab(&safe.root, signature, &safe_scratch, args.dry_run)?
        {
            layout.push(format!("SAFE: {change}"));
        }
        layout.push(format!(
            "SAFE: kernel {}, command line: {}",
            safe_plan.kernel.display(),
            safe_plan.cmdline
        ));
    }
    image_stock::print_plan(&plan, &layout, out)?;
    if args.dry_run {
        writeln!(out, "--dry-run: nothing written")?;
        return Ok(None);
    }
    let safe = safe_input.as_ref().zip(safe_plan.as_ref());
    image_stock::build_disk(input, &plan, safe, &options, signature, scratch).map(Some)
}

/// Runs a command, failing with its stderr.
pub fn run_tool(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_marks_zeros_fill_and_keeps_small_holes_in_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.img");
        let mut bytes = vec![0u8; 4 << 20];
        bytes[..8192].fill(1); // data
        bytes[16384..20480].fill(2); // 8 KiB hole before it: absorbed
        bytes[(2 << 20)..(2 << 20) + 512].fill(3);
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let regions = plan_regions(&file, 0, 4 << 20, 1 << 20).unwrap();
        let kinds: Vec<_> = regions
            .iter()
            .map(|r| (r.kind, r.offset, r.length))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (RegionKind::Data, 0, 20480),
                (RegionKind::Fill, 20480, (2 << 20) - 20480),
                (RegionKind::Data, 2 << 20, 4096),
                (RegionKind::Fill, (2 << 20) + 4096, (2 << 20) - 4096),
            ]
        );
    }
}
