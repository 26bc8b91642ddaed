//! `zbctl install`: writes a `.zi` into the slot an update goes to (the A/B slot that is not
//! ACTIVE) of a disk image or block device, then arms it as a trial.
//!
//! Order (docs/image-format.md, "Installing into a slot"):
//!
//! 1. **Check, write nothing**: header, manifest and signature (with `--pubkey` or the target's
//!    `zbmanifest.txt` `public_key=`), anti-rollback, the image's root size against the slot's
//!    root partition, then one pass over every chunk (inflate + SHA-256) that also unpacks the
//!    image's boot partition into a scratch file. The slot's boot files are taken from it,
//!    their `slot.txt` is generated, and the target's FAT boot partition is edited *in memory*
//!    (the `fatfs` crate, then `fat_fixup`), so a full boot partition is found here too.
//! 2. The slot is marked `bad` in the state (one sector), so an interrupted install leaves
//!    it unbootable and ACTIVE as it was.
//! 3. The image's root partition is streamed into the slot's root partition (each chunk's
//!    SHA-256 checked again as it streams; *skip* regions are not written), then the boot
//!    sectors the FAT edit changed are written; `fdatasync`.
//! 4. The slot's files are read back through the FAT and checked against their `slot.txt`;
//!    only then the slot becomes a `trial` (one sector).

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use recovery_proto::image::format::{MAGIC, SECTOR};
use recovery_proto::image::{
    Content, Decoder, Image, ImageError, ImageSource, PartitionEntry, RegionEntry, RegionKind, Role,
};
use recovery_proto::manifest::Manifest;
use recovery_proto::partition::{Partition, Partitions, SlotRoot};
use recovery_proto::slot_manifest::{Algorithm, SlotManifest};
use recovery_proto::{Slot, State};

use super::disk::{FileDisk, Window};
use super::image::{self, FileSource, mib, refuse};
use super::target::{self, Target};

/// The recovery image's file name on a stick when neither `--name` nor the target's
/// `zbmanifest.txt` `recovery_image=` says otherwise.
pub const DEFAULT_STICK_NAME: &str = "ZBOOT.ZI";

/// The slot files install takes from the image's boot partition, in the order written:
/// (name in the slot directory, names looked for at the boot partition's root when it has no
/// `A/kernel.img`).
pub(crate) const SLOT_FILES: [(&str, &[&str]); 4] = [
    ("kernel.img", &["kernel.img", "kernel8.img"]),
    ("initrd.img", &["initrd.img", "initramfs8"]),
    ("dtb.dtb", &["dtb.dtb", "bcm2711-rpi-cm4.dtb"]),
    ("cmdline.txt", &["cmdline.txt"]),
];

/// Manifest buffer for images read by install and update (64 bytes per entry).
pub const MANIFEST_BUFFER: usize = 16 << 20;

/// Arguments of `zbctl install` (the target is `--image` or `--device`).
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The `.zi`: a file, a USB stick (block device or stick image: the image is a file on
    /// its FAT) or a mounted stick (directory).
    pub source: PathBuf,
    /// The image's file name on a stick (default: `recovery_image=` of the target's
    /// zbmanifest.txt, else ZBOOT.ZI).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Public key (a `.pub` file, 64 hex digits or base64): the image must be signed by it.
    /// Default: `public_key=` of the target's zbmanifest.txt, if any.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
    /// Accept an image older than the state's minimum version, and install over the BACKUP
    /// while ACTIVE is an unconfirmed trial.
    #[arg(long)]
    pub force: bool,
    /// Boot the new slot on the next boot only (like `zbctl try`) instead of making it ACTIVE
    /// as a trial (like `zbctl set-active`).
    #[arg(long)]
    pub once: bool,
    /// Testing: fail after this many bytes of the root partition are written.
    #[arg(long, hide = true, value_name = "BYTES")]
    pub fail_after: Option<u64>,
}

/// What an install did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Bytes written to the slot's root partition (data + fill regions).
    pub root_bytes: u64,
    /// Bytes of boot-partition sectors written (slot files and FAT metadata).
    pub boot_bytes: u64,
    /// Bytes of state sectors written.
    pub state_bytes: u64,
    /// Data + fill bytes of every partition the image carries ("used" bytes).
    pub image_used: u64,
    /// Data + fill bytes of the image's root partition.
    pub image_root_used: u64,
    /// Root data bytes not written (nor downloaded) because the slot already held them
    /// ([`Flow::Stream`]).
    pub reused_bytes: u64,
    /// The slot the image went to.
    pub slot: Option<Slot>,
    /// The image's name (its header).
    pub image_name: String,
    /// The image's version.
    pub image_version: u32,
}

impl InstallReport {
    /// Every byte written to the target.
    pub fn written(&self) -> u64 {
        self.root_bytes + self.boot_bytes + self.state_bytes
    }
}

/// An image file on a stick's FAT, read through `fatfs`.
struct FatFileSource<'f, 'w> {
    file: fatfs::File<'f, Window<'w>>,
    size: u64,
}

impl ImageSource for FatFileSource<'_, '_> {
    type Error = std::io::Error;

    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(buffer)
    }
}

/// The target disk as install sees it.
#[derive(Debug)]
pub struct TargetDisk {
    file: File,
    boot: Partition,
    root: Partition,
    active_root: Option<Partition>,
    /// The slot the image goes to (the A/B slot that is not ACTIVE).
    pub slot: Slot,
    /// The key images must be signed with (`--pubkey`, else `public_key=`).
    pub key: Option<[u8; 32]>,
    /// `recovery_image=` of the target's zbmanifest.txt.
    pub recovery_name: Option<String>,
    /// The slot state as read.
    pub state: State,
    opened: target::StateTarget,
    store: recovery_proto::store::RedundantStore,
    /// The install has begun writing: the slot was marked `bad` (from then on a failure
    /// leaves it so).
    pub touched: bool,
}

impl TargetDisk {
    /// The number of the target's FAT boot partition (1-based, as in `/dev/mmcblk0p1`).
    pub fn boot_partition_number(&self) -> u32 {
        self.boot.number.into()
    }
}

/// How [`install_from`] reads the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Two passes (a local file or stick): every chunk is verified before the first byte is
    /// written, then the root partition is read again and written.
    VerifyFirst,
    /// One pass in payload order (a download: read once, never stored on the device's disk).
    /// Header, manifest and signature are still checked before the first write; each chunk is
    /// verified as it arrives, so a bad chunk stops the install with the slot marked `bad`.
    /// Root chunks whose SHA-256 the slot already holds are not read at all, which is how a
    /// download interrupted in an earlier run continues where it stopped.
    Stream,
}

/// Runs `zbctl install` holding the default lock (see [`install_locked`]).
pub fn install(target: &Target, args: &InstallArgs, out: &mut dyn Write) -> Result<InstallReport> {
    install_locked(target, args, None, out)
}

/// Runs `zbctl install` holding the lock `zbctl update` takes (`lock`, else its default), so
/// the two never edit the state and the boot partition at the same time.
pub fn install_locked(
    target: &Target,
    args: &InstallArgs,
    lock: Option<&Path>,
    out: &mut dyn Write,
) -> Result<InstallReport> {
    let _lock = super::update::lock(target, lock)?;
    let mut disk = open_target(target, args)?;
    let name = args
        .name
        .clone()
        .or_else(|| disk.recovery_name.clone())
        .unwrap_or_else(|| DEFAULT_STICK_NAME.to_string());
    with_source(&args.source, &name, |source, description| {
        let mut source = DynSource(source);
        let mut manifest_buffer = vec![0u8; MANIFEST_BUFFER];
        let image = open_image(
            &mut source,
            &mut manifest_buffer,
            disk.key.as_ref(),
            description,
        )?;
        // On a running unit the boot partition is mounted (/boot/firmware): freeze it as
        // `update apply` does (docs/update.md, step 4), once the image has been checked and
        // before the first write, then read the partition again as the mount left it.
        let frozen = match target {
            Target::Device(device) => {
                super::update::freeze_boot_mounts(device, disk.boot_partition_number())?
            }
            _ => Vec::new(),
        };
        if !frozen.is_empty() {
            disk = open_target(target, args)?;
            for mount in &frozen {
                writeln!(
                    out,
                    "{} remounted read-only until the reboot: install edits the boot \
                     partition's FAT directly",
                    mount.display()
                )?;
            }
        }
        install_from(
            &mut disk,
            &image,
            &mut source,
            description,
            args,
            Flow::VerifyFirst,
            out,
        )
    })
}

/// Reads and checks the image's header, signature (against `key`) and manifest: the
/// [`Image`] that [`install_from`] installs. Refusals carry their exit code.
pub fn open_image<'m, S: ImageSource<Error = std::io::Error>>(
    source: &mut S,
    manifest_buffer: &'m mut [u8],
    key: Option<&[u8; 32]>,
    what: &str,
) -> Result<Image<'m>> {
    Image::open(source, manifest_buffer, key).map_err(|e| refuse(Path::new(what), &e))
}

/// Any image source whose reads fail with `std::io::Error` (a file, a file on a stick's FAT,
/// an HTTP download).
pub type AnySource<'s> = dyn ImageSource<Error = std::io::Error> + 's;

/// An [`AnySource`] behind a reference, as a sized [`ImageSource`] for the generic reader.
pub struct DynSource<'r, 's>(pub &'r mut AnySource<'s>);

impl std::fmt::Debug for DynSource<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynSource")
    }
}

impl ImageSource for DynSource<'_, '_> {
    type Error = std::io::Error;

    fn size(&mut self) -> std::io::Result<u64> {
        self.0.size()
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(offset, buffer)
    }
}

/// Opens the `.zi` at `source` (a file, a USB stick or stick image holding `name` on its FAT,
/// or a mounted stick directory) and hands it to `use_source` with a description for messages.
pub fn with_source<T>(
    source: &Path,
    name: &str,
    use_source: impl FnOnce(&mut AnySource<'_>, &str) -> Result<T>,
) -> Result<T> {
    if source.is_dir() {
        let path = find_file_in_dir(source, name)?;
        let mut file = FileSource::open(&path)?;
        return use_source(&mut file, &path.display().to_string());
    }
    let mut magic = [0u8; 8];
    let mut file = File::open(source).with_context(|| format!("opening {}", source.display()))?;
    file.read_exact_at(&mut magic, 0)
        .with_context(|| format!("{}: reading its first bytes", source.display()))?;
    if magic == MAGIC {
        let mut file = FileSource::open(source)?;
        return use_source(&mut file, &source.display().to_string());
    }
    // A stick: its FAT (whole device or first FAT partition) holds the image.
    let (start, length) = fat_volume(&file, source)?;
    let fs = fatfs::FileSystem::new(
        Window::new(&mut file, start, length),
        fatfs::FsOptions::new(),
    )
    .with_context(|| format!("{}: opening the FAT file system", source.display()))?;
    let path = name.trim_start_matches('/');
    let image = fs.root_dir().open_file(path).map_err(|_| {
        anyhow!(
            "{}: no {path} on the stick's FAT (the name comes from --name, the target's \
             recovery_image=, or is {DEFAULT_STICK_NAME})",
            source.display()
        )
    })?;
    let size = fs
        .root_dir()
        .iter()
        .flatten()
        .find(|e| e.file_name().eq_ignore_ascii_case(path))
        .map(|e| e.len());
    let mut image = FatFileSource {
        file: image,
        size: 0,
    };
    image.size = match size {
        Some(size) => size,
        None => image.file.seek(SeekFrom::End(0))?,
    };
    let description = format!("{}:{path}", source.display());
    use_source(&mut image, &description)
}

/// Byte range of the FAT volume on a stick or disk (a bare FAT, or the first FAT partition).
pub fn fat_volume(file: &File, source: &Path) -> Result<(u64, u64)> {
    let mut disk = FileDisk::new(file.try_clone()?)?;
    let blocks = recovery_proto::block::BlockDevice::block_count(&disk);
    let (partition, _) = recovery_proto::locate::find_boot_volume(&mut disk).map_err(|e| {
        anyhow!(
            "{}: neither a .zi (magic {:?} at byte 0) nor a stick with a FAT file system: {e}",
            source.display(),
            String::from_utf8_lossy(&MAGIC)
        )
    })?;
    Ok(partition.map_or((0, blocks * SECTOR), |p| {
        (p.start_lba * SECTOR, p.sectors * SECTOR)
    }))
}

/// `name` (a relative path) in a mounted stick directory, each component matched without
/// case, as FAT does.
fn find_file_in_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    super::image_tar::find_any_case(dir, name.trim_start_matches('/'))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{}: no {name} in this directory (the name comes from --name, the target's \
                 recovery_image=, or is {DEFAULT_STICK_NAME})",
                dir.display()
            )
        })
}

/// Reads a file from a FAT volume (`None` if it is not there).
pub(crate) fn read_fat_file<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let Ok(mut file) = dir.open_file(path) else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading {path}"))?;
    Ok(Some(bytes))
}

/// The byte range of the disk's FAT boot partition (`Partitions::boot_partition`, as install
/// and the loader find it).
pub(crate) fn boot_partition_of(file: &File, path: &Path) -> Result<Partition> {
    let partitions = Partitions::read(&mut FileDisk::new(file.try_clone()?)?).map_err(|e| {
        anyhow!(
            "{}: no partition table at sector 0 (byte 0): {e:?}; give the whole disk \
             (e.g. /dev/mmcblk0, not a partition)",
            path.display()
        )
    })?;
    partitions
        .boot_partition()
        .ok_or_else(|| anyhow!("{}: no FAT boot partition", path.display()))
}

/// A file at the root of the FAT in `boot` of the disk `file` (`None` if it is not there).
fn read_boot_partition_file(
    file: &mut File,
    boot: Partition,
    path: &Path,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let fs = fatfs::FileSystem::new(
        Window::new(file, boot.start_lba * SECTOR, boot.sectors * SECTOR),
        fatfs::FsOptions::new(),
    )
    .with_context(|| format!("{}: partition {}: FAT", path.display(), boot.number))?;
    read_fat_file(&fs.root_dir(), name)
        .with_context(|| format!("{}: partition {}", path.display(), boot.number))
}

/// A file of the FAT boot partition of the whole disk (or disk image) at `path`, e.g.
/// `zbmanifest.txt` or `A/slot.txt` (`None` if it is not there).
pub fn read_boot_file(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let boot = boot_partition_of(&file, path)?;
    read_boot_partition_file(&mut file, boot, path, name)
}

fn resolve_root(
    partitions: &Partitions,
    slot: Slot,
    value: Option<&str>,
    target: &Target,
) -> Result<Partition> {
    let path = target.path().display();
    let root = partitions
        .slot_root(slot, value)
        .map_err(|e| anyhow!("{path}: zbmanifest.txt: root of slot {slot}: {e}"))?;
    let found = match root {
        SlotRoot::Number(number) => partitions.partition(number),
        SlotRoot::PartUuid(uuid) => partitions.find_partuuid(uuid),
    };
    found.ok_or_else(|| anyhow!("{path}: slot {slot}'s root partition ({root:?}) does not exist"))
}

/// Opens the whole disk, its manifest and state, and checks that an install may start.
pub fn open_target(target: &Target, args: &InstallArgs) -> Result<TargetDisk> {
    let path = match target {
        Target::Image(path) | Target::Device(path) => path,
        Target::BootDir(_) => bail!(
            "install writes a root partition: give the whole disk with --device /dev/mmcblk0 \
             or --image disk.img, not --boot-dir"
        ),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for reading and writing", path.display()))?;
    let partitions = Partitions::read(&mut FileDisk::new(file.try_clone()?)?).map_err(|e| {
        anyhow!(
            "{}: no partition table at sector 0 (byte 0): {e:?}; install needs the whole disk \
             (e.g. /dev/mmcblk0, not a partition)",
            path.display()
        )
    })?;
    let boot = boot_partition_of(&file, path)?;
    let manifest_bytes =
        read_boot_partition_file(&mut file, boot, path, "zbmanifest.txt")?.unwrap_or_default();
    let manifest = Manifest::parse(&manifest_bytes)
        .map_err(|e| anyhow!("{}: zbmanifest.txt: {e}", path.display()))?;
    let key = match &args.pubkey {
        Some(text) => Some(super::key::parse_public(text)?),
        None => manifest.public_key,
    };
    let mut opened = target::open(target)?;
    let (state, store, _) = target::load(&mut opened)?;
    let slot = state.install_slot();
    if matches!(target, Target::Device(_))
        && let Some(running) = super::running_slot_from_cmdline()
        && running == slot
    {
        return Err(image::ExitError {
            code: super::update::exit::PENDING,
            message: format!(
                "{}: slot {slot} is the one an install goes to, but the running system was \
                 booted from it (zboot.slot={slot} in {}): writing it would overwrite the \
                 mounted root file system. ACTIVE is {} (after `zbctl try` or `zbctl \
                 set-active` without a reboot?): reboot into slot {} first; nothing written",
                path.display(),
                super::cmdline_path().display(),
                state.active,
                state.active
            ),
        }
        .into());
    }
    let mut check = state;
    check
        .begin_install(slot, args.force)
        .with_context(|| format!("{}: install refused", path.display()))?;
    let root_value = |slot| match slot {
        Slot::A => manifest.root_a,
        Slot::B => manifest.root_b,
        Slot::Safe => manifest.safe_root,
    };
    let root = resolve_root(&partitions, slot, root_value(slot), target)?;
    let active_root =
        resolve_root(&partitions, state.active, root_value(state.active), target).ok();
    ensure!(
        root.number != boot.number && active_root.is_none_or(|a| a.number != root.number),
        "{}: slot {slot}'s root is partition {}, which is the boot partition or ACTIVE's root",
        path.display(),
        root.number
    );
    Ok(TargetDisk {
        file,
        boot,
        root,
        active_root,
        slot,
        key,
        recovery_name: manifest.recovery_image.map(str::to_string),
        state,
        opened,
        store,
        touched: false,
    })
}

/// The slot's files, taken from the image's boot partition (see the module docs for the
/// rule), with their generated `slot.txt` last, and the image's `A/slot.sig` when it signs
/// that `slot.txt` (by `key`, the target's, when it has one). The generated `slot.txt` has
/// the format of the image's own `A/slot.txt`, else `algorithm`'s (the `.zi`'s).
fn slot_files(
    boot: &File,
    version: u32,
    algorithm: Algorithm,
    key: Option<&[u8; 32]>,
    what: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut boot = boot.try_clone()?;
    let fs = fatfs::FileSystem::new(&mut boot, fatfs::FsOptions::new())
        .with_context(|| format!("{what}: the image's boot partition is not a FAT volume"))?;
    let root = fs.root_dir();
    let from_a = read_fat_file(&root, "A/kernel.img")?.is_some();
    let mut files = Vec::new();
    for (name, root_names) in SLOT_FILES {
        let found = if from_a {
            read_fat_file(&root, &format!("A/{name}"))?
        } else {
            let mut found = None;
            for candidate in root_names {
                if let Some(bytes) = read_fat_file(&root, candidate)? {
                    found = Some(bytes);
                    break;
                }
            }
            found
        };
        if let Some(bytes) = found {
            files.push((name, bytes));
        }
    }
    let place = if from_a {
        "A/"
    } else {
        "the root directory of"
    };
    for required in recovery_proto::slot_manifest::REQUIRED_FILES {
        ensure!(
            files.iter().any(|(n, _)| *n == required),
            "{what}: the image's boot partition has no {required} in {place} its boot \
             partition (install takes A/kernel.img, or kernel.img/kernel8.img at the root)"
        );
    }
    if let Some((_, cmdline)) = files.iter().find(|(n, _)| *n == "cmdline.txt") {
        recovery_proto::cmdline::check_line(cmdline)
            .map_err(|e| anyhow!("{what}: the image's cmdline.txt: {e}"))?;
    }
    // The image's own slot.txt, if it has one, must describe the files it ships with; the
    // generated one keeps its format (an image made for loaders older than BLAKE3 stays
    // SHA-256), else the .zi's digest function decides.
    let mut algorithm = algorithm;
    if from_a && let Some(text) = read_fat_file(&root, "A/slot.txt")? {
        let shipped = SlotManifest::parse(&text)
            .map_err(|e| anyhow!("{what}: the image's A/slot.txt: {e}"))?;
        algorithm = shipped.algorithm();
        for listed in shipped.files() {
            let (_, bytes) = files
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(listed.name))
                .ok_or_else(|| {
                    anyhow!(
                        "{what}: the image's A/slot.txt lists {}, which install does not carry",
                        listed.name
                    )
                })?;
            listed
                .verify(bytes.len() as u64, algorithm, &algorithm.digest(bytes))
                .map_err(|e| anyhow!("{what}: the image's A/{}: {e:?}", listed.name))?;
        }
    }
    let text = generated_slot_txt(&files, version, algorithm)?;
    // The signature travels with the files: an install on the device needs no private key.
    let image_sig = if from_a {
        read_fat_file(&root, &format!("A/{}", super::slot_sign::FILE))?
    } else {
        None
    };
    match super::slot_sign::carried(image_sig.as_deref(), text.as_bytes(), key, what)? {
        Some(signature) => files.push((super::slot_sign::FILE, signature)),
        None if key.is_none() => {}
        None => eprintln!(
            "warning: {what}: the image's slot is not signed (no A/slot.sig): a zboot built \
             with a key will not boot it (docs/security.md)"
        ),
    }
    files.push(("slot.txt", text.into_bytes()));
    Ok(files)
}

/// The `slot.txt` install writes for `files` (in their order) at `version`, checked with
/// the loader's parser.
pub(crate) fn generated_slot_txt(
    files: &[(&str, Vec<u8>)],
    version: u32,
    algorithm: Algorithm,
) -> Result<String> {
    let mut manifest = SlotManifest::with_algorithm(version, algorithm);
    for (name, bytes) in files {
        let size = u32::try_from(bytes.len()).map_err(|_| anyhow!("{name}: larger than 4 GiB"))?;
        manifest
            .add_file(name, size, algorithm.digest(bytes))
            .map_err(|e| anyhow!("slot.txt: {e}"))?;
    }
    let text = manifest.to_string();
    SlotManifest::parse(text.as_bytes()).map_err(|e| anyhow!("slot.txt: {e}"))?;
    Ok(text)
}

/// The target's boot partition with `slot`'s directory replaced by `files`, edited in
/// memory: returns the changed sectors as (byte offset in the partition, bytes) runs.
fn edit_boot(
    file: &File,
    boot: Partition,
    slot: Slot,
    files: &[(&str, Vec<u8>)],
) -> Result<Vec<(u64, Vec<u8>)>> {
    let size = usize::try_from(boot.sectors * SECTOR)?;
    let mut old = vec![0u8; size];
    file.read_exact_at(&mut old, boot.start_lba * SECTOR)
        .context("reading the boot partition")?;
    let mut new = old.clone();
    let fat32 = {
        let fs = fatfs::FileSystem::new(Cursor::new(&mut new), fatfs::FsOptions::new())
            .context("the boot partition is not a FAT volume")?;
        replace_slot_dir(&fs.root_dir(), slot, files)?;
        let fat32 = fs.fat_type() == fatfs::FatType::Fat32;
        fs.unmount().context("flushing the boot partition")?;
        fat32
    };
    if fat32 {
        super::fat_fixup::fix_fatfs_volume(&mut new)?;
    }
    let sector = SECTOR as usize;
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (index, (a, b)) in old.chunks(sector).zip(new.chunks(sector)).enumerate() {
        if a == b {
            continue;
        }
        let at = (index * sector) as u64;
        match runs.last_mut() {
            Some((start, bytes)) if *start + bytes.len() as u64 == at => bytes.extend(b),
            _ => runs.push((at, b.to_vec())),
        }
    }
    Ok(runs)
}

/// Empties (or creates) `/<slot>/` and writes `files` into it.
fn replace_slot_dir<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    slot: Slot,
    files: &[(&str, Vec<u8>)],
) -> Result<()> {
    {
        let dir = match root.open_dir(slot.name()) {
            Ok(dir) => dir,
            Err(_) => root
                .create_dir(slot.name())
                .with_context(|| format!("creating /{slot}/ on the boot partition"))?,
        };
        let stale: Vec<(String, bool)> = dir
            .iter()
            .flatten()
            .filter(|e| e.file_name() != "." && e.file_name() != "..")
            .map(|e| (e.file_name(), e.is_dir()))
            .collect();
        for (name, is_dir) in stale {
            ensure!(
                !is_dir,
                "/{slot}/{name} on the boot partition is a directory: install only replaces files"
            );
            dir.remove(&name)
                .with_context(|| format!("removing /{slot}/{name}"))?;
        }
        for (name, bytes) in files {
            let mut out = dir
                .create_file(name)
                .with_context(|| format!("creating /{slot}/{name}"))?;
            out.truncate()?;
            out.write_all(bytes).with_context(|| {
                format!(
                    "writing /{slot}/{name} ({} bytes): the boot partition is full",
                    bytes.len()
                )
            })?;
        }
    }
    Ok(())
}

/// The image's root partition (root A, else root B, with content) and boot partition.
fn image_partitions(image: &Image<'_>, what: &str) -> Result<((u32, PartitionEntry), u32)> {
    let carried = |role| {
        image
            .partition_with_role(role)
            .filter(|(_, p)| p.region_count > 0)
    };
    let root = carried(Role::RootA)
        .or_else(|| carried(Role::RootB))
        .ok_or_else(|| anyhow!("{what}: the image carries no root file system (root-a)"))?;
    let (boot, _) = carried(Role::Boot)
        .ok_or_else(|| anyhow!("{what}: the image carries no boot partition"))?;
    Ok((root, boot))
}

fn used_bytes(image: &Image<'_>, partition: Option<u32>) -> u64 {
    image
        .regions()
        .filter(|r| partition.is_none_or(|p| u32::from(r.partition) == p))
        .filter(|r| r.kind != RegionKind::Skip)
        .map(|r| r.length)
        .sum()
}

/// Reads the state again and refuses unless it is still `disk.state` (what this install read
/// or wrote last): otherwise a state command that does not take the lock (`set-active`,
/// `try`, `mark-good`…) ran meanwhile, and what this install would write would undo it.
fn check_state_unchanged(disk: &mut TargetDisk, when: &str) -> Result<()> {
    let found = disk
        .store
        .load(&mut disk.opened.disk)
        .map(|(state, _)| state);
    if found.as_ref().ok() != Some(&disk.state) {
        let slot = disk.slot;
        bail!(
            "the slot state in {} changed while installing ({when}): another zbctl command \
             edited it meanwhile; install refused, the state is left as that command wrote it{}",
            disk.opened.description,
            if disk.touched {
                format!(" (slot {slot} was written and stays marked bad)")
            } else {
                "; nothing written".to_string()
            }
        );
    }
    Ok(())
}

/// Marks the slot `bad` in the state before its first byte is written.
fn mark_bad(disk: &mut TargetDisk, force: bool, report: &mut InstallReport) -> Result<()> {
    check_state_unchanged(disk, "before the first write")?;
    disk.touched = true;
    let mut bad = disk.state;
    bad.begin_install(disk.slot, force)?;
    if disk
        .store
        .save_if_changed(&mut disk.opened.disk, &disk.state, &bad)?
        .is_some()
    {
        report.state_bytes += SECTOR;
    }
    disk.state = bad;
    Ok(())
}

/// Whether the target already holds `region`'s content at `at` (its digest, by the image's
/// `algorithm`, matches).
fn holds(
    file: &File,
    at: u64,
    region: &RegionEntry,
    algorithm: Algorithm,
    buffer: &mut [u8],
) -> bool {
    let Some(bytes) = usize::try_from(region.length)
        .ok()
        .and_then(|length| buffer.get_mut(..length))
    else {
        return false;
    };
    file.read_exact_at(bytes, at).is_ok() && algorithm.digest(bytes) == region.digest
}

/// Installs `image` (opened from `source` by [`open_image`] with `disk`'s key) into `disk`'s
/// slot (see the module docs; `flow` says whether the chunks are verified in a pass of their
/// own first).
#[allow(clippy::too_many_lines)] // the install sequence reads best in one place
pub fn install_from<S: ImageSource<Error = std::io::Error>>(
    disk: &mut TargetDisk,
    image: &Image<'_>,
    source: &mut S,
    what: &str,
    args: &InstallArgs,
    flow: Flow,
    out: &mut dyn Write,
) -> Result<InstallReport> {
    let started = Instant::now();
    let slot = disk.slot;
    let what_path = PathBuf::from(what);
    let header = *image.header();
    if !args.force {
        image::check_version(&what_path, header.image_version, disk.state.min_version)?;
    }
    let ((root_index, root_entry), boot_index) = image_partitions(image, what)?;
    let target_root = disk.root.sectors * SECTOR;
    ensure!(
        root_entry.size() <= target_root,
        "{what}: the image's {} partition (number {}) is {} bytes ({}), larger than slot {slot}'s \
         root partition {} on the target: {target_root} bytes ({})",
        root_entry.role,
        root_entry.number,
        root_entry.size(),
        mib(root_entry.size()),
        disk.root.number,
        mib(target_root)
    );

    let boot_entry = image
        .partition(boot_index)
        .ok_or_else(|| anyhow!("{what}: boot partition entry"))?;
    let scratch = tempfile::tempfile().context("a scratch file for the image's boot partition")?;
    scratch.set_len(boot_entry.size())?;
    let mut decoder = Box::new(Decoder::new());
    let mut buffer = vec![0u8; header.chunk_size as usize];
    let mut report = InstallReport {
        image_used: used_bytes(image, None),
        image_root_used: used_bytes(image, Some(root_index)),
        slot: Some(disk.slot),
        image_name: image.header().name().to_string(),
        image_version: image.header().image_version,
        ..InstallReport::default()
    };
    let base = disk.root.start_lba * SECTOR;
    let write_root = |disk: &mut TargetDisk,
                      report: &mut InstallReport,
                      chunk: &recovery_proto::image::Chunk<'_>|
     -> Result<()> {
        if let Some(limit) = args.fail_after
            && report.root_bytes >= limit
        {
            bail!(
                "injected failure after {} bytes of slot {slot}'s root (--fail-after)",
                report.root_bytes
            );
        }
        report.root_bytes += write_content(
            &disk.file,
            base + chunk.region.offset,
            chunk.region.length,
            &chunk.content,
        )?;
        Ok(())
    };

    let (files, boot_runs) = match flow {
        Flow::VerifyFirst => {
            // Pass 1: every chunk verified; the image's boot partition unpacked to a scratch
            // file.
            let mut chunks = image.chunks(0);
            while let Some(chunk) = chunks
                .next_chunk(image, source, &mut decoder, &mut buffer)
                .map_err(|e| refuse(&what_path, &e))?
            {
                if u32::from(chunk.region.partition) == boot_index {
                    write_content(
                        &scratch,
                        chunk.region.offset,
                        chunk.region.length,
                        &chunk.content,
                    )?;
                }
            }
            let files = slot_files(
                &scratch,
                header.image_version,
                header.algorithm,
                disk.key.as_ref(),
                what,
            )?;
            warn_layout(&scratch, what, slot);
            let boot_runs = edit_boot(&disk.file, disk.boot, slot, &files)
                .with_context(|| format!("slot {slot}'s files on the target's boot partition"))?;

            // From here on the target is written. The slot is unbootable until the end.
            mark_bad(disk, args.force, &mut report)?;
            for index in root_entry.first_region..root_entry.first_region + root_entry.region_count
            {
                let chunk = image
                    .read_region(source, index, &mut decoder, &mut buffer)
                    .map_err(|e: ImageError<_>| refuse(&what_path, &e))?;
                if !matches!(chunk.content, Content::Skip) {
                    write_root(disk, &mut report, &chunk)?;
                }
            }
            (files, boot_runs)
        }
        Flow::Stream => {
            // One pass in payload order. The slot is unbootable from here to the end.
            mark_bad(disk, args.force, &mut report)?;
            let mut disk_buffer = vec![0u8; header.chunk_size as usize];
            for index in 0..header.region_count {
                let region = image
                    .region(index)
                    .ok_or_else(|| anyhow!("{what}: region {index}"))?;
                let partition = u32::from(region.partition);
                let is_root = partition == root_index;
                if !is_root && partition != boot_index || region.kind == RegionKind::Skip {
                    continue;
                }
                if is_root
                    && region.kind == RegionKind::Data
                    && holds(
                        &disk.file,
                        base + region.offset,
                        &region,
                        image.header().algorithm,
                        &mut disk_buffer,
                    )
                {
                    report.reused_bytes += region.length;
                    continue;
                }
                let chunk = image
                    .read_region(source, index, &mut decoder, &mut buffer)
                    .map_err(|e: ImageError<_>| refuse(&what_path, &e))?;
                if is_root {
                    write_root(disk, &mut report, &chunk)?;
                } else {
                    write_content(
                        &scratch,
                        chunk.region.offset,
                        chunk.region.length,
                        &chunk.content,
                    )?;
                }
            }
            let files = slot_files(
                &scratch,
                header.image_version,
                header.algorithm,
                disk.key.as_ref(),
                what,
            )?;
            warn_layout(&scratch, what, slot);
            let boot_runs = edit_boot(&disk.file, disk.boot, slot, &files)
                .with_context(|| format!("slot {slot}'s files on the target's boot partition"))?;
            (files, boot_runs)
        }
    };
    drop(scratch);

    disk.file.sync_data()?;
    let boot_base = disk.boot.start_lba * SECTOR;
    for (at, bytes) in &boot_runs {
        disk.file.write_all_at(bytes, boot_base + at)?;
        report.boot_bytes += bytes.len() as u64;
    }
    disk.file.sync_data()?;
    check_written(&mut disk.file, disk.boot, slot, &files)?;

    check_state_unchanged(disk, "before arming the trial")?;
    let mut trial = disk.state;
    trial.start_trial(slot, header.image_version, args.once);
    if disk
        .store
        .save_if_changed(&mut disk.opened.disk, &disk.state, &trial)?
        .is_some()
    {
        report.state_bytes += SECTOR;
    }
    disk.state = trial;

    let root = disk.root;
    writeln!(
        out,
        "installed {} version {} from {what} into slot {slot}: root partition {} (PARTUUID {}), \
         files in /{slot}/ ({})",
        header.name(),
        header.image_version,
        root.number,
        root.partuuid(),
        files.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )?;
    writeln!(
        out,
        "slot {slot} is {}: {}",
        trial.slot(slot).state,
        if args.once {
            format!(
                "booted on the next boot only; after `zbctl mark-good`, `zbctl set-active {slot}` \
                 keeps it"
            )
        } else {
            format!(
                "ACTIVE from the next boot; unconfirmed after {} boots it rolls back to {}",
                trial.max_boot_failure, trial.backup
            )
        }
    )?;
    if let Some(active) = disk.active_root {
        writeln!(
            out,
            "slot {} (ACTIVE until now, root partition {}) was not written",
            if args.once {
                trial.active
            } else {
                trial.backup
            },
            active.number
        )?;
    }
    writeln!(
        out,
        "bytes written by install: {} ({} root, {} boot partition, {} state); image used bytes \
         (data + fill): {} of root, {} in all; {:.1} s",
        report.written(),
        report.root_bytes,
        report.boot_bytes,
        report.state_bytes,
        report.image_root_used,
        report.image_used,
        started.elapsed().as_secs_f64()
    )?;
    Ok(report)
}

/// Warns (on stderr) when the image's boot partition (unpacked in `scratch`) is not in the
/// zboot layout: install takes only the slot's files and root from it, so the target keeps
/// its zboot, but the image is not one to reflash a unit from.
fn warn_layout(scratch: &File, what: &str, slot: Slot) {
    match super::image_layout::check_volume(scratch) {
        Ok(layout) if !layout.ok() => eprintln!(
            "warning: {what}: no zboot layout ({}): install takes only slot {slot}'s files and \
             root file system from it, so this unit keeps its zboot, but a unit reflashed from \
             this image (e.g. from a recovery stick) would not run zboot",
            layout.summary()
        ),
        Ok(_) => {}
        Err(error) => eprintln!("warning: {what}: zboot layout not checked: {error:#}"),
    }
}

/// Writes a region's content at byte `at` of `file`; returns the bytes written.
fn write_content(file: &File, at: u64, length: u64, content: &Content<'_>) -> Result<u64> {
    match content {
        Content::Data(bytes) => {
            file.write_all_at(bytes, at)?;
            Ok(bytes.len() as u64)
        }
        Content::Fill(byte) => {
            let piece = vec![*byte; usize::try_from(length.min(1 << 20))?];
            let mut done = 0;
            while done < length {
                let n = (length - done).min(piece.len() as u64);
                file.write_all_at(&piece[..usize::try_from(n)?], at + done)?;
                done += n;
            }
            Ok(length)
        }
        Content::Skip => Ok(0),
    }
}

/// Reads the slot's files back through the FAT and compares them with what was meant.
fn check_written(
    file: &mut File,
    boot: Partition,
    slot: Slot,
    files: &[(&str, Vec<u8>)],
) -> Result<()> {
    let fs = fatfs::FileSystem::new(
        Window::new(file, boot.start_lba * SECTOR, boot.sectors * SECTOR),
        fatfs::FsOptions::new(),
    )
    .context("reading the boot partition back")?;
    for (name, bytes) in files {
        let found = read_fat_file(&fs.root_dir(), &format!("{}/{name}", slot.name()))?;
        ensure!(
            found.as_deref() == Some(bytes.as_slice()),
            "/{slot}/{name} reads back different from what was written: slot {slot} stays bad"
        );
    }
    Ok(())
}
