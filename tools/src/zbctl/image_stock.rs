//! `image convert` of a stock Raspberry Pi OS or Debian raspi image into the zboot layout
//! (`docs/bring-your-own-image.md`).
//!
//! A stock image is a FAT boot partition holding `config.txt` and a kernel, and one ext4
//! root. The conversion:
//!
//! 1. reads `config.txt` as the firmware would on a CM4 ([`recovery_proto::config_txt`]) to
//!    find the kernel, the initramfs and the command-line file;
//! 2. edits `config.txt` (and the files it includes): the lines naming the kernel or an
//!    initramfs and `otg_mode=1` are commented out, and a closing `[all]` block adds
//!    `kernel=zboot.img`, `arm_64bit=1` and `enable_uart=1`; every other setting stays;
//! 3. moves the kernel, the initramfs and `cmdline.txt` into the slots (`root=` and the
//!    words zboot writes itself are dropped from the line);
//! 4. rewrites the root's `/etc/fstab` so it holds in every slot;
//! 5. lays out A (the stock root), B (a copy, or empty), SAFE (the same system) and DATA
//!    with `disk create`, whose disk the caller then turns into a `.zi`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use recovery_proto::Slot;
use recovery_proto::config_txt::{self, BootFiles, Entry, Filters, Reader};
use recovery_proto::image::format::SECTOR;
use recovery_proto::partition::{Partition, PartitionType, Partitions};

use super::disk::{FileDisk, Window};
use super::disk_create::{CreateArgs, SlotSpec};
use super::image_convert::run_tool;
use super::image_fs::{self, FsKind};
use super::image_tar::find_any_case;

const MIB: u64 = 1 << 20;

/// What the stock input is made of, staged in the scratch directory.
#[derive(Debug)]
pub struct StockInput {
    /// The boot partition's files.
    pub boot_dir: PathBuf,
    /// Where they came from, for messages (`stock.img partition 1`, `boot.tar`).
    pub boot_origin: String,
    /// The root: an ext2/3/4 image (a dump's partition) or a directory (a tarball).
    pub root: RootSource,
    /// Where it came from, for messages.
    pub root_origin: String,
    /// The stock disk signature (MBR dumps), kept so `PARTUUID=<id>-01` stays right.
    pub disk_signature: Option<u32>,
    /// The stock boot partition's size.
    pub boot_bytes: u64,
}

/// A stock root file system.
#[derive(Debug)]
pub enum RootSource {
    /// An ext2/3/4 image file (copied out of a dump, or made from a tarball with every
    /// member's metadata: `image_tar::ext4_from_tarball`).
    Image(PathBuf),
}

/// Options of the stock conversion (from `image convert`'s arguments).
#[derive(Clone, Debug)]
pub struct StockOptions {
    /// The loader to embed.
    pub loader: PathBuf,
    /// Leave B empty instead of copying A.
    pub b_empty: bool,
    /// A DTB from the boot partition to make each slot's `dtb.dtb`.
    pub slot_dtb: Option<String>,
    /// Size of DATA.
    pub data_bytes: u64,
    /// Size of each root partition (default: the stock root's).
    pub root_bytes: Option<u64>,
    /// The image version, written into each `slot.txt`.
    pub version: u32,
    /// The `zbmanifest.txt` to ship instead of the generated one.
    pub manifest: Option<PathBuf>,
    /// The slots' `slot.txt` digest function.
    pub hash: super::disk_create::HashChoice,
}

/// What the conversion will do, printed before anything is written.
#[derive(Debug)]
pub struct Plan {
    /// One line per change.
    pub changes: Vec<String>,
    /// Warnings (also in `changes`, marked).
    pub warnings: Vec<String>,
    /// New contents of config files, by path relative to the boot partition.
    pub config_files: BTreeMap<String, String>,
    /// Boot-partition files that move into the slots (removed from the top level).
    pub moved: Vec<PathBuf>,
    /// The slot's kernel, initramfs and DTB.
    pub kernel: PathBuf,
    /// The initramfs, when the stock image loads one.
    pub initramfs: Option<PathBuf>,
    /// The slot DTB, when asked for.
    pub dtb: Option<PathBuf>,
    /// The slot's command line.
    pub cmdline: String,
}

// --- reading the inputs -------------------------------------------------------------------

/// What a partition holds, by magic numbers (for choosing the root and for messages).
fn fs_name(file: &mut File, part: &Partition) -> Result<&'static str> {
    let size = part.sectors * SECTOR;
    let mut window = Window::new(file, part.start_lba * SECTOR, size);
    if image_fs::detect(&mut window, size)? == FsKind::Ext {
        return Ok("ext4");
    }
    let mut probe = |at: u64, len: usize| -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        if at + len as u64 > size {
            return Ok(bytes);
        }
        window.seek(SeekFrom::Start(at))?;
        window.read_exact(&mut bytes)?;
        Ok(bytes)
    };
    Ok(if probe(0x10040, 8)? == b"_BHRfS_M" {
        "btrfs"
    } else if probe(0, 4)? == b"XFSB" {
        "xfs"
    } else if probe(1024, 4)? == 0xF2F5_2010u32.to_le_bytes() {
        "f2fs"
    } else if probe(4086, 10)? == b"SWAPSPACE2" {
        "swap"
    } else if probe(0, 4)? == b"hsqs" {
        "squashfs"
    } else if image_fs::detect(&mut Window::new(file, part.start_lba * SECTOR, size), size)?
        == FsKind::Fat
    {
        "FAT"
    } else {
        "an unknown file system"
    })
}

fn is_container(part: &Partition) -> bool {
    matches!(part.kind, PartitionType::Mbr(0x05 | 0x0F | 0x85))
}

/// Copies a FAT directory's files and subdirectories into `into`.
fn copy_fat_dir<T: fatfs::ReadWriteSeek>(dir: &fatfs::Dir<'_, T>, into: &Path) -> Result<()> {
    fs::create_dir_all(into)?;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| anyhow!("reading a directory: {e}"))?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let target = into.join(&name);
        if entry.is_dir() {
            copy_fat_dir(&entry.to_dir(), &target)?;
        } else {
            let mut bytes = Vec::new();
            entry
                .to_file()
                .read_to_end(&mut bytes)
                .map_err(|e| anyhow!("reading {name}: {e}"))?;
            fs::write(&target, bytes)?;
        }
    }
    Ok(())
}

/// Copies every file of a FAT partition into `into`.
fn copy_fat(file: &mut File, part: &Partition, into: &Path) -> Result<()> {
    let window = Window::new(file, part.start_lba * SECTOR, part.sectors * SECTOR);
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new())
        .map_err(|e| anyhow!("reading its FAT file system: {e}"))?;
    copy_fat_dir(&fs.root_dir(), into)
}

/// Whether a boot tree is meant to be in the zboot layout (carried over as before, and
/// checked for its required files there): `zboot.img` and a slot directory `A/`. A stock
/// tree with only `zboot.img` added is still stock.
pub fn is_zboot_tree(dir: &Path) -> bool {
    find_any_case(dir, "zboot.img").is_some_and(|p| p.is_file())
        && find_any_case(dir, "A").is_some_and(|p| p.is_dir())
}

/// Whether a boot tree looks stock: `config.txt` and a kernel the firmware would load.
fn is_stock_tree(dir: &Path) -> bool {
    find_any_case(dir, "config.txt").is_some()
}

/// The stock root: the one ext2/3/4 partition besides the boot one, or `--root-partition`.
fn choose_root(
    file: &mut File,
    path: &Path,
    parts: &[Partition],
    boot_number: u8,
    root_number: Option<u8>,
) -> Result<Partition> {
    let mut candidates = Vec::new();
    let mut others = Vec::new();
    for part in parts.iter().filter(|p| p.number != boot_number) {
        let name = fs_name(file, part)?;
        if name == "ext4" {
            candidates.push(*part);
        } else {
            others.push(format!("partition {} holds {name}", part.number));
        }
    }
    let root = match root_number {
        Some(n) => {
            let part = parts.iter().find(|p| p.number == n).ok_or_else(|| {
                anyhow!(
                    "{}: --root-partition {n}: no such partition",
                    path.display()
                )
            })?;
            let name = fs_name(file, part)?;
            ensure!(
                name == "ext4",
                "{}: --root-partition {n} holds {name}; zboot's slots are ext2/3/4 file systems",
                path.display()
            );
            *part
        }
        None => match candidates.as_slice() {
            [one] => *one,
            [] => bail!(
                "{}: no ext2/3/4 root partition ({}); zboot's slots are ext2/3/4 file systems",
                path.display(),
                if others.is_empty() {
                    "no partition besides the boot one".to_string()
                } else {
                    others.join(", ")
                }
            ),
            many => bail!(
                "{}: several candidate root partitions ({}); choose one with --root-partition N",
                path.display(),
                many.iter()
                    .map(|p| p.number.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    Ok(root)
}

/// Reads a stock dump (MBR or GPT). `Ok(None)`: the dump is in the zboot layout.
pub fn from_disk(
    path: &Path,
    scratch: &Path,
    root_number: Option<u8>,
) -> Result<Option<StockInput>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let table = Partitions::read(&mut FileDisk::new(file.try_clone()?)?).map_err(|error| {
        anyhow!(
            "{}: no recognizable partition table at sector 0: {error:?}; --from-disk needs a \
             whole-disk dump (dd if=/dev/mmcblk0)",
            path.display()
        )
    })?;
    let parts: Vec<Partition> = table.iter().filter(|p| !is_container(p)).collect();
    // The boot partition: the first FAT one holding config.txt (the firmware's choice is
    // the first FAT partition; a dump with config.txt elsewhere is not a stock image).
    let mut boot = None;
    for part in parts.iter().filter(|p| p.is_boot_type()) {
        let size = part.sectors * SECTOR;
        let mut window = Window::new(&mut file, part.start_lba * SECTOR, size);
        if image_fs::detect(&mut window, size)? != FsKind::Fat {
            continue;
        }
        let dir = scratch.join("stock-boot");
        let _ = fs::remove_dir_all(&dir);
        copy_fat(&mut file, part, &dir)
            .with_context(|| format!("{}: partition {}", path.display(), part.number))?;
        boot = Some((*part, dir));
        break;
    }
    let Some((boot_part, boot_dir)) = boot else {
        bail!(
            "{}: no FAT boot partition (the firmware boots from the first FAT partition)",
            path.display()
        );
    };
    if is_zboot_tree(&boot_dir) {
        if table.gpt().is_some() {
            bail!(
                "{}: a GPT disk in the zboot layout; the .zi format carries MBR layouts only \
                 (convert the stock image, or make the disk with disk create without --gpt)",
                path.display()
            );
        }
        return Ok(None);
    }
    ensure!(
        is_stock_tree(&boot_dir),
        "{}: partition {} (FAT) holds no config.txt: neither a stock Raspberry Pi image nor \
         a zboot disk",
        path.display(),
        boot_part.number
    );
    let root = choose_root(&mut file, path, &parts, boot_part.number, root_number)?;
    // The root's bytes, to a file of its own (the fstab edit writes into it).
    let root_image = scratch.join("stock-root.ext4");
    let out = File::create(&root_image)?;
    out.set_len(root.sectors * SECTOR)?;
    super::disk_create::write_sparse(
        &out,
        0,
        &mut Window::new(&mut file, root.start_lba * SECTOR, root.sectors * SECTOR),
        root.sectors * SECTOR,
    )
    .with_context(|| format!("{}: copying partition {}", path.display(), root.number))?;
    Ok(Some(StockInput {
        boot_dir,
        boot_origin: format!("{} partition {}", path.display(), boot_part.number),
        root: RootSource::Image(root_image),
        root_origin: format!("{} partition {}", path.display(), root.number),
        disk_signature: table.mbr().map(|m| m.mbr.disk_signature),
        boot_bytes: boot_part.sectors * SECTOR,
    }))
}

// --- the plan -----------------------------------------------------------------------------

/// Words of `cmdline.txt` that zboot writes itself or that cannot hold in an A/B layout.
fn cmdline_for_slots(
    text: &str,
    origin: &str,
    plan_warnings: &mut Vec<String>,
    changes: &mut Vec<String>,
) -> Result<String> {
    let line = recovery_proto::cmdline::check_line(text.as_bytes())
        .map_err(|e| anyhow!("{origin}: {e}"))?;
    let mut kept = Vec::new();
    let mut after_dashes = false;
    for word in recovery_proto::cmdline::words(line) {
        if word == "--" {
            after_dashes = true;
        }
        let key = recovery_proto::cmdline::key(word);
        if !after_dashes && recovery_proto::cmdline::OWNED_KEYS.contains(&key) {
            changes.push(format!(
                "{origin}: dropped `{word}` (zboot names the slot's root itself)"
            ));
            continue;
        }
        if !after_dashes && key == "init" && word.contains("raspberrypi-sys-mods/firstboot") {
            let warning = format!(
                "{origin}: dropped `{word}`: Raspberry Pi OS's first-boot script grows the root \
                 partition to the end of the disk, which the A/B layout does not allow"
            );
            plan_warnings.push(warning.clone());
            changes.push(warning);
            continue;
        }
        kept.push(word);
    }
    Ok(kept.join(" "))
}

/// Edits one config file: comments out lines naming the kernel or an initramfs and
/// `otg_mode=1`, wherever they apply on a CM4.
fn edit_config(
    name: &str,
    text: &str,
    filters: &mut Filters,
    boot: &mut BootFiles,
    includes: &mut Vec<String>,
    changes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    for line in Reader::new(text, &config_txt::CM4, filters) {
        boot.apply(&line);
        let comment = |why: &str, changes: &mut Vec<String>| {
            changes.push(format!(
                "{name} line {}: `{}` commented out: {why}",
                line.number,
                line.raw.trim()
            ));
            format!("# zboot: {}", line.raw)
        };
        let new = match line.entry {
            Entry::Include(file) if line.active => {
                includes.push(file.to_string());
                line.raw.to_string()
            }
            Entry::Setting { key: "kernel", .. } if line.active => comment(
                "the firmware loads zboot, which boots the slot's kernel",
                changes,
            ),
            Entry::Setting {
                key: "ramfsfile" | "auto_initramfs",
                ..
            }
            | Entry::Initramfs { .. }
                if line.active =>
            {
                comment("the slot's initramfs is loaded by zboot", changes)
            }
            Entry::Setting {
                key: "otg_mode",
                value,
            } if value.trim() != "0" => {
                let warning = format!(
                    "{name} line {}: `otg_mode={value}` removed: it hands the USB port to the \
                     XHCI controller, and zboot's USB recovery drives the DWC2 controller",
                    line.number
                );
                warnings.push(warning);
                comment("it would disable USB recovery", changes)
            }
            _ => line.raw.to_string(),
        };
        out.push_str(&new);
        out.push('\n');
    }
    out
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}

/// Reads `config.txt` and the files it includes, editing each; returns the edited texts
/// and the settings naming the OS files.
pub fn read_configs(
    dir: &Path,
    origin: &str,
    changes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(BTreeMap<String, String>, BootFiles)> {
    let mut config_files = BTreeMap::new();
    let mut filters = Filters::default();
    let mut boot = BootFiles::default();
    // config.txt and its includes, in the order the firmware reads them.
    let mut queue = vec!["config.txt".to_string()];
    let mut seen = 0;
    while let Some(name) = queue.pop() {
        seen += 1;
        ensure!(
            seen <= 16,
            "{origin}: more than 16 config files through include"
        );
        let path = find_any_case(dir, &name).ok_or_else(|| {
            anyhow!("{origin}: {name} (named by include) is not in the boot partition")
        })?;
        let text = read_text(&path)?;
        let mut includes = Vec::new();
        let edited = edit_config(
            &name,
            &text,
            &mut filters,
            &mut boot,
            &mut includes,
            changes,
            warnings,
        );
        let relative = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        config_files.insert(relative, edited);
        // An include's lines stand where it is; read them next (after this file: the
        // settings zboot follows rarely sit in includes, and a later line wins either way).
        for include in includes.into_iter().rev() {
            queue.push(include);
        }
    }

    Ok((config_files, boot))
}

/// Closes `config.txt` with zboot's own lines under `[all]`, so they win over anything
/// above them (a later setting replaces an earlier one); `by` names the tool in the
/// comment. With `os_prefix` the kernel is named `/zboot.img`, which bypasses the prefix
/// (`boot.adoc`). Returns the change, for the list printed.
pub fn close_config(
    config_files: &mut BTreeMap<String, String>,
    boot: &BootFiles,
    by: &str,
) -> String {
    let kernel_line = if boot.os_prefix.is_empty() {
        "zboot.img"
    } else {
        "/zboot.img"
    };
    let main = config_files.entry("config.txt".into()).or_default();
    let _ = write!(
        main,
        "\n[all]\n# zboot ({by}): the firmware loads zboot, which boots the slots\n\
         kernel={kernel_line}\narm_64bit=1\nenable_uart=1\n"
    );
    format!(
        "config.txt: added under a closing [all]: kernel={kernel_line}, arm_64bit=1, enable_uart=1"
    )
}

/// Reads the stock boot tree and decides what the conversion does.
pub fn plan(input: &StockInput, options: &StockOptions) -> Result<Plan> {
    let dir = &input.boot_dir;
    let origin = &input.boot_origin;
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let (mut config_files, boot) = read_configs(dir, origin, &mut changes, &mut warnings)?;
    let find =
        |what: &str, name: &str| -> Result<PathBuf> {
            let path = boot
                .path(name)
                .ok_or_else(|| anyhow!("{origin}: {what} name too long"))?;
            find_any_case(dir, &path).filter(|p| p.is_file()).ok_or_else(|| {
            anyhow!(
                "{origin}: config.txt names {what} `{path}`, which is not in the boot partition"
            )
        })
        };
    let kernel_name = boot.kernel_name();
    let kernel = match find("the kernel", &kernel_name) {
        Ok(path) => path,
        Err(error) if boot.kernel.is_none() => {
            return Err(error.context(format!(
                "{origin}: no kernel in the boot partition (without kernel=, a 64-bit CM4 \
                 loads kernel8.img)"
            )));
        }
        Err(error) => return Err(error),
    };
    let initramfs = boot
        .initramfs_names()
        .map(|names| {
            ensure!(
                !names.contains(','),
                "{origin}: config.txt loads several initramfs files ({names}); zboot's slots hold one"
            );
            find("the initramfs", &names)
        })
        .transpose()?;
    let cmdline_path = find("the command line", &boot.cmdline_name())?;
    let cmdline = cmdline_for_slots(
        &read_text(&cmdline_path)?,
        &format!("{origin}: {}", boot.cmdline_name()),
        &mut warnings,
        &mut changes,
    )?;
    let dtb = options
        .slot_dtb
        .as_deref()
        .map(|name| find("--slot-dtb", name))
        .transpose()?;

    changes.push(close_config(
        &mut config_files,
        &boot,
        "zbctl image convert",
    ));
    let mut moved = vec![kernel.clone(), cmdline_path.clone()];
    moved.extend(initramfs.clone());
    for path in &moved {
        changes.push(format!(
            "{}: moved into the slots A, {}SAFE",
            path.strip_prefix(dir).unwrap_or(path).display(),
            if options.b_empty { "" } else { "B and " }
        ));
    }
    changes.push(format!("slot command line: {cmdline}"));
    if let Some(dtb) = &dtb {
        changes.push(format!(
            "{}: copied into the slots as dtb.dtb (the firmware's config.txt overlays are not applied to it)",
            dtb.strip_prefix(dir).unwrap_or(dtb).display()
        ));
    }
    let _ = options.version;
    Ok(Plan {
        changes,
        warnings,
        config_files,
        moved,
        kernel,
        initramfs,
        dtb,
        cmdline,
    })
}

// --- fstab ----------------------------------------------------------------------------------

/// Rewrites `/etc/fstab`: `/` becomes `/dev/root` (the kernel's name for the root it was
/// given, right in every slot), and the boot partition's line names partition 1 of the new
/// disk. Returns the new text and one line per change.
pub fn rewrite_fstab(text: &str, disk_signature: u32) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut changes = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if trimmed.starts_with('#') || fields.len() < 2 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (device, mount) = (fields[0], fields[1]);
        let new_device = match mount {
            "/" if device != "/dev/root" => Some("/dev/root".to_string()),
            "/boot/firmware" | "/boot" if fields.get(2).is_some_and(|t| t.contains("fat")) => {
                let new = format!("PARTUUID={disk_signature:08x}-01");
                (device != new).then_some(new)
            }
            _ => None,
        };
        match new_device {
            Some(new) => {
                let rest = trimmed[device.len()..].to_string();
                changes.push(format!("/etc/fstab: `{device}` on {mount} → `{new}`"));
                out.push_str(&new);
                out.push_str(&rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    (out, changes)
}

/// Reads a file out of an ext image with `debugfs` (`None` when it is not there).
fn debugfs_cat(image: &Path, path: &str) -> Result<Option<String>> {
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .context("running debugfs (e2fsprogs)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("File not found") {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Replaces a regular file's contents inside an ext image, keeping its owner and mode.
fn debugfs_replace(image: &Path, path: &str, contents: &str, scratch: &Path) -> Result<()> {
    let stat = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()?;
    let stat = String::from_utf8_lossy(&stat.stdout).into_owned();
    let field = |name: &str| -> Option<String> {
        let at = stat.find(name)? + name.len();
        stat[at..].split_whitespace().next().map(str::to_string)
    };
    let (uid, gid, mode) = (
        field("User:").unwrap_or_else(|| "0".into()),
        field("Group:").unwrap_or_else(|| "0".into()),
        field("Mode:").unwrap_or_else(|| "0644".into()),
    );
    let staged = scratch.join("fstab.new");
    fs::write(&staged, contents)?;
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let commands = format!(
        "rm {path}\ncd {parent}\nwrite {} {name}\nsif {path} uid {uid}\nsif {path} gid {gid}\nsif {path} mode 0100{}\n",
        staged.display(),
        mode.trim_start_matches('0').trim_start_matches("100")
    );
    let script = scratch.join("debugfs.cmd");
    fs::write(&script, commands)?;
    run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(image),
    )
    .with_context(|| format!("{}: replacing {path}", image.display()))?;
    ensure!(
        debugfs_cat(image, path)?.as_deref() == Some(contents),
        "{}: {path} does not read back as written",
        image.display()
    );
    Ok(())
}

/// Rewrites the root's fstab (image or tree); returns the changes.
pub fn fix_root_fstab(
    root: &RootSource,
    disk_signature: u32,
    scratch: &Path,
    dry_run: bool,
) -> Result<Vec<String>> {
    match root {
        RootSource::Image(image) => {
            let Some(text) = debugfs_cat(image, "/etc/fstab")? else {
                return Ok(vec![
                    "/etc/fstab: none in the root; nothing to rewrite".into(),
                ]);
            };
            let (new, changes) = rewrite_fstab(&text, disk_signature);
            if new != text && !dry_run {
                debugfs_replace(image, "/etc/fstab", &new, scratch)?;
            }
            Ok(changes)
        }
    }
}

// --- the zboot disk -----------------------------------------------------------------------

fn ext_size(image: &Path) -> Result<u64> {
    let output = Command::new("dumpe2fs").arg("-h").arg(image).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    match (value("Block count:"), value("Block size:")) {
        (Some(count), Some(size)) => Ok(count * size),
        _ => bail!("{}: dumpe2fs cannot read the file system", image.display()),
    }
}

/// The boot partition's files for `disk create`: the stock ones minus `config.txt` (returned
/// edited, for disk create to write) and the files moved into the slots; edited includes
/// replace theirs.
fn stage_boot_files(input: &StockInput, plan: &Plan, scratch: &Path) -> Result<(PathBuf, String)> {
    let firmware = scratch.join("firmware");
    let _ = fs::remove_dir_all(&firmware);
    copy_dir(&input.boot_dir, &firmware)?;
    for path in &plan.moved {
        let relative = path.strip_prefix(&input.boot_dir).unwrap_or(path);
        let _ = fs::remove_file(firmware.join(relative));
    }
    let mut config = String::new();
    for (relative, text) in &plan.config_files {
        if relative.eq_ignore_ascii_case("config.txt") {
            let _ = fs::remove_file(firmware.join(relative));
            config.clone_from(text);
        } else {
            fs::write(firmware.join(relative), text)?;
        }
    }

    Ok((firmware, config))
}

/// The boot partition's size: the stock one, grown when the slots' copies of the kernel
/// and initramfs would not fit beside the firmware's files (a third of the volume kept free
/// for updates).
fn boot_partition_bytes(input: &StockInput, plan: &Plan, safe_plan: &Plan) -> Result<u64> {
    let slot_files = |plan: &Plan| -> u64 {
        [
            Some(&plan.kernel),
            plan.initramfs.as_ref(),
            plan.dtb.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| fs::metadata(path).map_or(0, |m| m.len()))
        .sum()
    };
    let needed = (super::image_tar::tree_bytes(&input.boot_dir)?
        + 2 * slot_files(plan)
        + slot_files(safe_plan))
        * 3
        / 2;
    Ok(input.boot_bytes.max(needed).max(64 * MIB).div_ceil(MIB) * MIB)
}

/// Lays out the zboot disk in `scratch` and returns its path.
pub fn build_disk(
    input: &StockInput,
    plan: &Plan,
    safe: Option<(&StockInput, &Plan)>,
    options: &StockOptions,
    disk_signature: u32,
    scratch: &Path,
) -> Result<PathBuf> {
    let (firmware, config) = stage_boot_files(input, plan, scratch)?;
    let spec = |slot: Slot, plan: &Plan| -> Result<SlotSpec> {
        let slot_dir = scratch.join(format!("slot-{}", slot.name()));
        fs::create_dir_all(&slot_dir)?;
        let cmdline_file = slot_dir.join("cmdline.txt");
        fs::write(&cmdline_file, format!("{}\n", plan.cmdline))?;
        Ok(SlotSpec {
            slot,
            kernel: plan.kernel.clone(),
            initrd: plan.initramfs.clone(),
            dtb: plan.dtb.clone(),
            cmdline_file: Some(cmdline_file),
            version: options.version,
        })
    };
    let safe_plan = safe.map_or(plan, |(_, plan)| plan);
    let mut slots = vec![spec(Slot::A, plan)?, spec(Slot::Safe, safe_plan)?];
    if !options.b_empty {
        slots.push(spec(Slot::B, plan)?);
    }

    // (the smallest slot that holds the root, the default slot size)
    let (root_image, fs_bytes, default_bytes) = match &input.root {
        RootSource::Image(image) => {
            let fs_bytes = ext_size(image)?;
            let file_bytes = fs::metadata(image)?.len();
            (image.clone(), fs_bytes, fs_bytes.max(file_bytes))
        }
    };
    let root_bytes = options
        .root_bytes
        .unwrap_or(default_bytes.div_ceil(MIB) * MIB);
    ensure!(
        root_bytes >= fs_bytes,
        "{}: the root file system is {} MiB, more than the slot's {} MiB (--root-size)",
        input.root_origin,
        fs_bytes.div_ceil(MIB),
        root_bytes / MIB
    );
    if let RootSource::Image(image) = &input.root
        && fs::metadata(image)?.len() > root_bytes
    {
        // The partition was larger than its file system: the tail is not carried.
        fs::OpenOptions::new()
            .write(true)
            .open(image)?
            .set_len(root_bytes)?;
    }
    let boot_bytes = boot_partition_bytes(input, plan, safe_plan)?;
    // SAFE's root: its own system's, at its own size; else A's again.
    let (safe_image, safe_bytes) = match safe {
        Some((safe, _)) => {
            let RootSource::Image(image) = &safe.root;
            let bytes = ext_size(image)?.max(fs::metadata(image)?.len());
            (image.clone(), bytes.div_ceil(MIB) * MIB)
        }
        None => (root_image.clone(), root_bytes),
    };
    // 1 MiB before boot, the extended container's two EBRs with 1 MiB each, then DATA.
    let size = MIB + boot_bytes + 2 * root_bytes + MIB + safe_bytes + MIB + options.data_bytes;
    let disk = scratch.join("zboot-disk.img");
    let mut roots = vec![(Slot::A, root_image.clone()), (Slot::Safe, safe_image)];
    if !options.b_empty {
        roots.push((Slot::B, root_image));
    }
    let args = CreateArgs {
        output: disk.clone(),
        size,
        any_size: true,
        disk_id: Some(disk_signature),
        gpt: false,
        boot_size: boot_bytes,
        root_size: root_bytes,
        safe_size: safe_bytes,
        loader: options.loader.clone(),
        hash: options.hash,
        config_extra: None,
        config_text: Some(config),
        firmware_dir: Some(firmware),
        manifest: options.manifest.clone(),
        root_device: "/dev/mmcblk0".into(),
        max_boot_failure: recovery_proto::state::DEFAULT_MAX_BOOT_FAILURE,
        count_power_loss: true,
        watchdog_timeout: None,
        slots,
        cmdlines: Vec::new(),
        roots,
        no_data_fs: false,
        sign_key: None,
        image_name: None,
    };
    let mut log = Vec::new();
    super::disk_create::create(&args, &mut log).context("laying out the zboot disk")?;
    Ok(disk)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
        } else {
            bail!(
                "{}: only regular files and directories can go on the boot partition",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// Prints the plan.
pub fn print_plan(plan: &Plan, extra: &[String], out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "stock image: the changes made to reach the zboot layout"
    )?;
    for change in plan.changes.iter().chain(extra) {
        writeln!(out, "  {change}")?;
    }
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_root_and_boot_lines_hold_in_every_slot() {
        let stock = "proc            /proc           proc    defaults          0       0\n\
                     PARTUUID=4a3e915f-01  /boot/firmware  vfat    defaults          0       2\n\
                     PARTUUID=4a3e915f-02  /               ext4    defaults,noatime  0       1\n\
                     # a comment\n";
        let (new, changes) = rewrite_fstab(stock, 0x1a2b_3c4d);
        assert_eq!(
            new,
            "proc            /proc           proc    defaults          0       0\n\
             PARTUUID=1a2b3c4d-01  /boot/firmware  vfat    defaults          0       2\n\
             /dev/root  /               ext4    defaults,noatime  0       1\n\
             # a comment\n"
        );
        assert_eq!(changes.len(), 2);
        let (again, none) = rewrite_fstab(&new, 0x1a2b_3c4d);
        assert_eq!(again, new);
        assert!(none.is_empty(), "a second pass changes nothing");
    }

    #[test]
    fn the_slot_command_line_drops_root_and_the_first_boot_resize() {
        let (mut warnings, mut changes) = (Vec::new(), Vec::new());
        let line = cmdline_for_slots(
            "console=serial0,115200 console=tty1 root=PARTUUID=4a3e915f-02 rootfstype=ext4 \
             fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
            "cmdline.txt",
            &mut warnings,
            &mut changes,
        )
        .unwrap();
        assert_eq!(
            line,
            "console=serial0,115200 console=tty1 rootfstype=ext4 fsck.repair=yes rootwait quiet"
        );
        assert_eq!(warnings.len(), 1);
        assert_eq!(changes.len(), 2);
    }
}
