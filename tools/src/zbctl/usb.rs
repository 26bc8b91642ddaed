//! `zbctl usb create`: a USB recovery-stick image — an MBR with one FAT32 partition (type
//! 0x0C at 1 MiB) whose root directory holds the `.zi` under an 8.3 name (`ZBOOT.ZI` unless
//! `--name` or `recovery_image=` of `--manifest` says otherwise). `dd` it to a stick; the
//! loader's recovery path and `zbctl install` read it.
//!
//! The volume is made in memory with the `fatfs` crate and repaired with `fat_fixup` (it
//! passes `fsck.fat -n`); in a fresh volume the image is one contiguous cluster run, which the
//! loader's FAT walker proves before the stick image is renamed into place.
//!
//! An image without the zboot layout (`image_layout`: no `zboot.img`, a `config.txt` that does
//! not load it, no `A/`) is refused unless `--force`: the loader's recovery reflashes the whole
//! eMMC from the stick, and the unit would then boot whatever the image holds instead of zboot.

use std::fs::{self, File};
use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, Subcommand};
use recovery_proto::fat::{FatVolume, short_name};
use recovery_proto::image::format::SECTOR;

use super::disk::FileDisk;
use super::disk_create::{boot_cluster_bytes, parse_size};
use super::image::{Opened, mib, verify_payload};
use super::install::DEFAULT_STICK_NAME;

const MIB: u64 = 1 << 20;
/// The FAT partition starts at 1 MiB (sector 2048), like every partition zboot makes.
const FIRST_LBA: u64 = 2048;
/// Smallest stick image: FAT32 needs 65,525 clusters (33 MiB with 512-byte clusters).
const MIN_SIZE: u64 = 64 * MIB;
/// Room left beside the image for the FAT metadata and a spare.
const SLACK: u64 = 16 * MIB;

/// `zbctl usb` subcommands.
#[derive(Debug, Subcommand)]
pub enum UsbCommand {
    /// Make a recovery-stick image (MBR + FAT32) holding a `.zi`.
    Create(CreateArgs),
}

/// Arguments of `usb create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The `.zi` to put on the stick (checked completely first).
    #[arg(long, value_name = "FILE")]
    pub zi: PathBuf,
    /// The stick image to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The image's 8.3 file name in the stick's root directory (default: `recovery_image=`
    /// of --manifest, else ZBOOT.ZI).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The unit's zbmanifest.txt: its `recovery_image=` names the file.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Stick image size (K/M/G suffixes; default: the `.zi` + 16 MiB, at least 64 MiB).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Make the stick even though the image has no zboot layout (a unit reflashed from it
    /// loses zboot).
    #[arg(long)]
    pub force: bool,
}

/// Runs `zbctl usb ...`.
pub fn run(command: &UsbCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        UsbCommand::Create(args) => create(args, out),
    }
}

/// The file name on the stick: `--name`, else the manifest's `recovery_image=`, else the
/// default; an 8.3 name in the root directory (the loader's FAT reader has no long names).
fn stick_name(args: &CreateArgs) -> Result<String> {
    let from_manifest = match &args.manifest {
        Some(path) => {
            let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let manifest = recovery_proto::manifest::Manifest::parse(&bytes)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            manifest.recovery_image.map(str::to_string)
        }
        None => None,
    };
    if let (Some(name), Some(wanted)) = (&args.name, &from_manifest)
        && !name.eq_ignore_ascii_case(wanted.trim_start_matches('/'))
    {
        bail!("--name {name} differs from recovery_image={wanted} in the manifest");
    }
    let name = args
        .name
        .clone()
        .or(from_manifest)
        .unwrap_or_else(|| DEFAULT_STICK_NAME.to_string());
    let name = name.trim_start_matches('/').to_ascii_uppercase();
    ensure!(
        short_name(&name).is_some() && !name.contains('/'),
        "{name}: the recovery image needs an 8.3 name in the stick's root directory \
         (e.g. ZBOOT.ZI)"
    );
    Ok(name)
}

fn mbr(signature: u32, start: u64, sectors: u64) -> Result<[u8; 512]> {
    let mut sector = [0u8; 512];
    sector[440..444].copy_from_slice(&signature.to_le_bytes());
    let entry = &mut sector[446..462];
    // CHS fields saturated: LBA addressing only, as fdisk writes for large disks.
    entry[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[4] = 0x0C;
    entry[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&u32::try_from(start)?.to_le_bytes());
    entry[12..16].copy_from_slice(
        &u32::try_from(sectors)
            .map_err(|_| anyhow!("the stick is larger than MBR's 2 TiB"))?
            .to_le_bytes(),
    );
    sector[510] = 0x55;
    sector[511] = 0xAA;
    Ok(sector)
}

/// Refuses an image without the zboot layout (`image_layout`) unless `--force`: the loader's
/// recovery reflashes the whole eMMC from the stick, zboot's own boot partition included.
fn check_layout(opened: &mut Opened, args: &CreateArgs) -> Result<()> {
    let layout = super::image_layout::check_opened(opened, &args.zi)?;
    if layout.ok() {
        return Ok(());
    }
    let loads = match layout.kernel.as_deref() {
        Some(kernel) if !kernel.eq_ignore_ascii_case(super::image_layout::LOADER) => {
            format!(" (the firmware would load {kernel})")
        }
        _ => String::new(),
    };
    let consequence = format!(
        "a unit reflashed from this recovery stick would lose zboot and boot whatever the \
         image holds{loads}, without zboot's A/B slots, rollback or USB recovery"
    );
    if args.force {
        eprintln!(
            "warning: {}: no zboot layout ({}): {consequence}; making the stick anyway (--force)",
            args.zi.display(),
            layout.summary()
        );
        return Ok(());
    }
    bail!(
        "{}: no zboot layout ({}): {consequence}. Nothing written. Make the image from a disk \
         in the zboot layout (docs/disk-layout.md), or give --force to make the stick anyway",
        args.zi.display(),
        layout.summary()
    )
}

/// Runs `usb create`.
pub fn create(args: &CreateArgs, out: &mut dyn Write) -> Result<()> {
    let name = stick_name(args)?;
    let mut opened = Opened::new(&args.zi, None)?;
    let (id, version, image_name) = {
        let image = opened
            .image()
            .map_err(|e| super::image::refuse(&args.zi, &e))?;
        (
            image.id(),
            image.header().image_version,
            image.header().name().to_string(),
        )
    };
    verify_payload(&mut opened, &args.zi)?;
    check_layout(&mut opened, args)?;
    let zi_size = fs::metadata(&args.zi)?.len();
    let size = args
        .size
        .unwrap_or_else(|| ((zi_size + SLACK).div_ceil(MIB) * MIB).max(MIN_SIZE));
    ensure!(
        size.is_multiple_of(MIB) && size >= MIN_SIZE,
        "--size must be a whole number of MiB, at least 64 MiB"
    );
    let volume_bytes = size - FIRST_LBA * SECTOR;
    let cluster = boot_cluster_bytes(volume_bytes);
    ensure!(
        zi_size + volume_bytes / 64 + u64::from(cluster) < volume_bytes,
        "{}: {} does not fit a {} stick image (make --size larger)",
        args.zi.display(),
        mib(zi_size),
        mib(size)
    );
    // The volume id follows from the image, so the same .zi makes the same stick.
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    let mut volume = vec![0u8; usize::try_from(volume_bytes)?];
    fatfs::format_volume(
        Cursor::new(&mut volume),
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(cluster)
            .volume_id(volume_id)
            .volume_label(*b"ZBOOTRECOV "),
    )
    .context("formatting the stick's FAT32")?;
    {
        let fs = fatfs::FileSystem::new(Cursor::new(&mut volume), fatfs::FsOptions::new())
            .context("opening the new FAT32")?;
        let mut file = fs.root_dir().create_file(&name)?;
        file.truncate()?;
        let mut source =
            File::open(&args.zi).with_context(|| format!("opening {}", args.zi.display()))?;
        std::io::copy(&mut source, &mut file).context("copying the image onto the FAT")?;
        drop(file);
        fs.unmount().context("flushing the FAT")?;
    }
    super::fat_fixup::fix_fatfs_volume(&mut volume)?;

    // A stick itself (/dev/sdX): the image is made beside, then written to its start (the
    // partition covers the image's size, not the whole stick).
    let device = fs::metadata(&args.output)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let scratch = tempfile::tempdir()?;
    let partial = if device {
        scratch.path().join("stick.img")
    } else {
        args.output.with_extension("img.partial")
    };
    let result = write_stick(&partial, size, volume_id, &volume, &name);
    if let Err(error) = result {
        let _ = fs::remove_file(&partial);
        return Err(error);
    }
    if device {
        let mut target = fs::OpenOptions::new()
            .write(true)
            .open(&args.output)
            .with_context(|| format!("opening {} for writing", args.output.display()))?;
        std::io::copy(&mut File::open(&partial)?, &mut target)
            .with_context(|| format!("writing {}", args.output.display()))?;
        target.sync_all()?;
    } else {
        fs::rename(&partial, &args.output)
            .with_context(|| format!("renaming to {}", args.output.display()))?;
    }
    writeln!(
        out,
        "{}: recovery stick, {} ({size} bytes): MBR, partition 1 FAT32 at LBA {FIRST_LBA} \
         ({} clusters of {cluster} bytes), /{name} = {} ({image_name} version {version}, \
         {zi_size} bytes, contiguous)",
        args.output.display(),
        mib(size),
        volume_bytes / u64::from(cluster),
        args.zi.display()
    )?;
    Ok(())
}

fn write_stick(path: &Path, size: u64, signature: u32, volume: &[u8], name: &str) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)?;
    file.write_all_at(&mbr(signature, FIRST_LBA, volume.len() as u64 / SECTOR)?, 0)?;
    // Zero MiB blocks are left as holes (the file is sparse and reads as zeros).
    let base = FIRST_LBA * SECTOR;
    for (index, block) in volume.chunks(usize::try_from(MIB)?).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, base + index as u64 * MIB)?;
        }
    }
    file.sync_all()?;
    // What the loader does on the stick: find the file by its 8.3 name, prove it contiguous.
    let mut disk = FileDisk::new(File::open(path)?)?;
    let short = short_name(name).ok_or_else(|| anyhow!("{name}: not an 8.3 name"))?;
    FatVolume::open(&mut disk, FIRST_LBA, Some(volume.len() as u64 / SECTOR))
        .and_then(|fat| fat.locate_contiguous(&mut disk, &short))
        .map_err(|e| anyhow!("{}: the loader would not find /{name}: {e}", path.display()))?;
    Ok(())
}
