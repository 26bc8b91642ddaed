//! `zbctl adopt`: a running stock Raspberry Pi OS unit asks to be reflashed into the zboot
//! layout (docs/bring-your-own-image.md, "Adopting a unit in the field").
//!
//! The image is verified first (signature, every chunk, and that it is in the zboot
//! layout); then the boot partition gets, in this order, so that a cut at any point leaves
//! a unit the firmware still boots:
//!
//! 1. `zboot.img`, the image's own loader;
//! 2. `config.stock.txt`, the original `config.txt` (kept if it already exists), which
//!    zboot boots the stock system from while the adoption waits;
//! 3. `zbmanifest.txt` with `adopt=yes`, `adopt_wait=` and the stick's image name and key;
//! 4. `config.txt` last, edited as `image convert` edits it (`kernel=zboot.img` ...):
//!    the switch.
//!
//! At the next boot zboot finds a stock layout with the adoption asked for, waits up to
//! `adopt_wait` seconds for a stick with a good image, and reflashes; without one it boots
//! the stock system, as the firmware would have.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use recovery_proto::image::format::SECTOR;
use recovery_proto::partition::Partitions;

use super::disk::{FileDisk, Window};
use super::image::{Opened, public_key, verify_payload};
use super::image_layout;
use super::image_stock;
use super::target::Target;

/// Options of `zbctl adopt`.
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The image the unit will be reflashed from: the one on the recovery stick.
    #[arg(long, value_name = "FILE")]
    pub zi: PathBuf,
    /// The image must be signed with this ed25519 public key (64 hex digits or base64);
    /// written as `public_key=` so that the reflash demands it too.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
    /// Seconds the next boot waits for the stick before booting the stock system.
    #[arg(long, default_value_t = recovery_proto::manifest::DEFAULT_ADOPT_WAIT,
          value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub wait: u32,
    /// The image's file name on the stick (default ZBOOT.ZI, what `usb create` writes).
    #[arg(long, value_name = "NAME")]
    pub stick_name: Option<String>,
    /// Print what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The boot partition's top-level files, on a mounted directory or inside a disk image.
enum BootFs {
    Dir(PathBuf),
    Image(PathBuf, u64, u64),
}

impl BootFs {
    fn open(target: &Target) -> Result<Self> {
        match target {
            Target::BootDir(dir) => Ok(Self::Dir(dir.clone())),
            Target::Image(path) => {
                let file =
                    fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let table = Partitions::read(&mut FileDisk::new(file)?)
                    .map_err(|e| anyhow!("{}: partition table: {e:?}", path.display()))?;
                let boot = table
                    .iter()
                    .find(recovery_proto::partition::Partition::is_boot_type)
                    .ok_or_else(|| anyhow!("{}: no FAT boot partition", path.display()))?;
                Ok(Self::Image(
                    path.clone(),
                    boot.start_lba * SECTOR,
                    boot.sectors * SECTOR,
                ))
            }
            Target::Device(path) => bail!(
                "{}: adopt writes through the mounted boot partition; give --boot-dir \
                 /boot/firmware (or --image for a disk image)",
                path.display()
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Image(path, ..) => format!("{} (boot partition)", path.display()),
        }
    }

    /// Runs `f` on the FAT volume of an image.
    fn with_fat<T>(
        path: &Path,
        start: u64,
        len: u64,
        f: impl FnOnce(&fatfs::Dir<'_, Window<'_>>) -> Result<T>,
    ) -> Result<T> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        let window = Window::new(&mut file, start, len);
        let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new())
            .map_err(|e| anyhow!("{}: the boot partition: {e}", path.display()))?;
        let result = f(&fs.root_dir());
        fs.unmount()
            .map_err(|e| anyhow!("{}: flushing the boot partition: {e}", path.display()))?;
        result
    }

    /// A top-level file's bytes (any case), or `None`.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Dir(dir) => match super::image_tar::find_any_case(dir, name) {
                Some(path) if path.is_file() => Ok(Some(fs::read(path)?)),
                _ => Ok(None),
            },
            Self::Image(path, start, len) => Self::with_fat(path, *start, *len, |root| {
                for entry in root.iter() {
                    let entry = entry?;
                    if entry.is_file() && entry.file_name().eq_ignore_ascii_case(name) {
                        let mut bytes = Vec::new();
                        entry.to_file().read_to_end(&mut bytes)?;
                        return Ok(Some(bytes));
                    }
                }
                Ok(None)
            }),
        }
    }

    /// Whether a slot directory holds a `slot.txt` (the zboot layout).
    fn has_slot(&self) -> Result<bool> {
        for slot in ["A", "B", "SAFE"] {
            let found = match self {
                Self::Dir(dir) => {
                    super::image_tar::find_any_case(dir, &format!("{slot}/slot.txt")).is_some()
                }
                Self::Image(path, start, len) => Self::with_fat(path, *start, *len, |root| {
                    Ok(root.open_file(&format!("{slot}/slot.txt")).is_ok())
                })?,
            };
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Replaces (or creates) a top-level file; on a mounted directory through a temporary
    /// file, synced, then renamed over the old one.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Self::Dir(dir) => {
                let path =
                    super::image_tar::find_any_case(dir, name).unwrap_or_else(|| dir.join(name));
                let temporary = dir.join(format!("{name}.zbctl-new"));
                let mut file = fs::File::create(&temporary)
                    .with_context(|| format!("creating {}", temporary.display()))?;
                file.write_all(bytes)?;
                file.sync_all()?;
                fs::rename(&temporary, &path)
                    .with_context(|| format!("replacing {}", path.display()))?;
                fs::File::open(dir)?.sync_all()?;
                Ok(())
            }
            Self::Image(path, start, len) => Self::with_fat(path, *start, *len, |root| {
                let mut file = root
                    .create_file(name)
                    .map_err(|e| anyhow!("creating {name}: {e}"))?;
                file.truncate()?;
                file.write_all(bytes)
                    .with_context(|| format!("writing {name}: the boot partition is full?"))?;
                file.flush()?;
                Ok(())
            }),
        }
    }
}

/// The image's `zboot.img`, once the image is checked as the reflash will check it
/// (signature, every chunk) and found in the zboot layout. Nothing is written for an image
/// the reflash would refuse.
fn verified_loader(args: &AdoptArgs) -> Result<Vec<u8>> {
    let key = public_key(args.pubkey.as_deref(), None)?;
    let mut opened = Opened::new(&args.zi, key)?;
    verify_payload(&mut opened, &args.zi)?;
    let layout = image_layout::check_opened(&mut opened, &args.zi)?;
    ensure!(
        layout.ok(),
        "{}: no zboot layout ({}): a unit reflashed from it would not run zboot; nothing written",
        args.zi.display(),
        layout.summary()
    );
    layout
        .loader
        .clone()
        .ok_or_else(|| anyhow!("{}: no zboot.img in the image", args.zi.display()))
}

/// The `zbmanifest.txt` that asks for the adoption (checked with the loader's parser).
fn manifest_text(args: &AdoptArgs) -> Result<String> {
    let mut manifest = format!(
        "# zbmanifest.txt written by zbctl adopt (docs/bring-your-own-image.md)\n\
         adopt=yes\nadopt_wait={}\n",
        args.wait
    );
    if let Some(name) = &args.stick_name {
        writeln!(manifest, "recovery_image={name}")?;
    }
    if let Some(key) = &args.pubkey {
        writeln!(manifest, "public_key={key}")?;
    }
    recovery_proto::manifest::Manifest::parse(manifest.as_bytes())
        .map_err(|e| anyhow!("the zbmanifest.txt to write: {e}"))?;
    Ok(manifest)
}

/// Runs `zbctl adopt`.
pub fn adopt(target: &Target, args: &AdoptArgs, out: &mut dyn Write) -> Result<()> {
    let loader = verified_loader(args)?;
    let boot = BootFs::open(target)?;
    let place = boot.describe();
    ensure!(
        !boot.has_slot()?,
        "{place}: already in the zboot layout (a slot has its slot.txt); nothing to adopt"
    );
    let original = boot
        .read("config.txt")?
        .ok_or_else(|| anyhow!("{place}: no config.txt: not a Raspberry Pi boot partition"))?;
    let stock = match boot.read("config.stock.txt")? {
        Some(kept) => kept,
        None => original.clone(),
    };

    // config.txt and what it includes, edited as `image convert` edits them.
    let stage = tempfile::tempdir()?;
    fs::write(stage.path().join("config.txt"), &stock)?;
    let (mut changes, mut warnings) = (Vec::new(), Vec::new());
    let mut stage_includes = Vec::new();
    for line in String::from_utf8_lossy(&stock).lines() {
        if let recovery_proto::config_txt::Entry::Include(name) =
            recovery_proto::config_txt::parse_line(line)
            && let Some(bytes) = boot.read(name)?
        {
            fs::write(stage.path().join(name), bytes)?;
            stage_includes.push(name.to_string());
        }
    }
    let (mut config_files, files) =
        image_stock::read_configs(stage.path(), &place, &mut changes, &mut warnings)?;
    changes.push(image_stock::close_config(
        &mut config_files,
        &files,
        "zbctl adopt",
    ));
    let manifest = manifest_text(args)?;

    writeln!(
        out,
        "{place}: adopting into the zboot layout of {}",
        args.zi.display()
    )?;
    writeln!(out, "  zboot.img: {} bytes, from the image", loader.len())?;
    writeln!(
        out,
        "  config.stock.txt: the stock config.txt, booted while waiting"
    )?;
    writeln!(
        out,
        "  zbmanifest.txt: adopt=yes, adopt_wait={}{}",
        args.wait,
        args.stick_name
            .as_ref()
            .map_or(String::new(), |n| format!(", recovery_image={n}"))
    )?;
    for change in &changes {
        writeln!(out, "  {change}")?;
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if args.dry_run {
        writeln!(out, "--dry-run: nothing written")?;
        return Ok(());
    }
    boot.write("zboot.img", &loader)?;
    if boot.read("config.stock.txt")?.is_none() {
        boot.write("config.stock.txt", &original)?;
    }
    boot.write("zbmanifest.txt", manifest.as_bytes())?;
    for name in &stage_includes {
        if let Some(text) = config_files.get(name) {
            boot.write(name, text.as_bytes())?;
        }
    }
    let config = config_files
        .get("config.txt")
        .ok_or_else(|| anyhow!("config.txt was not edited"))?;
    boot.write("config.txt", config.as_bytes())?;
    writeln!(
        out,
        "done: at the next boot zboot waits up to {} s for a USB stick holding {} and \
         reflashes this unit into A/B/SAFE/DATA (its partitions are replaced by the image's); \
         without a stick it boots this system as before",
        args.wait,
        args.stick_name.as_deref().unwrap_or("ZBOOT.ZI")
    )?;
    Ok(())
}
