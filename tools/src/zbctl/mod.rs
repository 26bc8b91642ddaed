//! `zbctl`: the slot-state commands Linux user space (and a host with a disk image) runs.
//!
//! Every command finds the two state sectors (see `recovery_proto::locate`), reads both copies,
//! applies a pure edit from `recovery_proto::ops`, and writes one sector (the older copy) with
//! `fdatasync` — or nothing when the state did not change. Only `init-state` touches the file
//! system, to create the preallocated state file.

pub mod adopt;
pub mod bench;
pub mod capture;
pub mod discover;
pub mod disk;
pub mod disk_create;
pub mod fat_fixup;
pub mod image;
pub mod image_convert;
pub mod image_fs;
pub mod image_layout;
pub mod image_stock;
pub mod image_tar;
pub mod init;
pub mod install;
pub mod key;
pub mod report;
pub mod report_send;
pub mod secure_boot;
pub mod slot_sign;
pub mod status;
pub mod target;
pub mod update;
pub mod usb;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use recovery_proto::{Slot, State};

pub use target::Target;

/// zboot's CLI for Linux user space and hosts.
#[derive(Debug, Parser)]
#[command(name = "zbctl", version, about = "zboot slot state and boot control")]
pub struct Cli {
    /// Where the state is.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Where update reports are queued.
    #[command(flatten)]
    pub reports: ReportArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Exactly one of these names the state's location.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The mounted FAT boot partition (e.g. /boot/firmware).
    #[arg(long, global = true, value_name = "DIR")]
    pub boot_dir: Option<PathBuf>,
    /// A block device: the whole disk (e.g. /dev/mmcblk0) or its boot partition.
    #[arg(long, global = true, value_name = "DEV")]
    pub device: Option<PathBuf>,
    /// A disk image file (MBR with a FAT boot partition).
    #[arg(long, global = true, value_name = "FILE")]
    pub image: Option<PathBuf>,
}

impl TargetArgs {
    /// The one target given.
    pub fn target(&self) -> Result<Target> {
        match (&self.boot_dir, &self.device, &self.image) {
            (Some(dir), None, None) => Ok(Target::BootDir(dir.clone())),
            (None, Some(dev), None) => Ok(Target::Device(dev.clone())),
            (None, None, Some(img)) => Ok(Target::Image(img.clone())),
            // On a running unit: found as a user would (docs/slot-state.md).
            (None, None, None) => discover::find(&discover::Places::system()),
            _ => bail!("give only one of --boot-dir, --device and --image"),
        }
    }
}

/// The update-report queue (docs/update.md, "Update reports").
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The directory update reports are queued in (default: $ZBOOT_REPORT_DIR, else
    /// /var/lib/zboot/reports); used only when zbmanifest.txt has `report_url=`.
    #[arg(long, global = true, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
}

impl ReportArgs {
    /// The queue.
    pub fn queue(&self) -> report::Queue {
        report::Queue::new(self.report_dir.as_deref())
    }
}

/// A slot name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlotArg {
    /// Slot A.
    #[value(name = "A", alias = "a")]
    A,
    /// Slot B.
    #[value(name = "B", alias = "b")]
    B,
    /// The SAFE slot.
    #[value(name = "SAFE", alias = "safe")]
    Safe,
}

impl From<SlotArg> for Slot {
    fn from(value: SlotArg) -> Self {
        match value {
            SlotArg::A => Slot::A,
            SlotArg::B => Slot::B,
            SlotArg::Safe => Slot::Safe,
        }
    }
}

/// `zbctl install`: its arguments and the lock it shares with `zbctl update`.
#[derive(Debug, Args)]
pub struct InstallCommand {
    /// What to install, and how.
    #[command(flatten)]
    pub args: install::InstallArgs,
    /// The lock shared with `zbctl update` (default /run/zboot-update.lock; with --image, the
    /// image file itself). Held by another run: exit 8.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show slots, counters, policy and the boot history (why the unit is where it is).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Confirm the running boot: clear its slot's failure counter.
    MarkGood {
        /// The running slot, checked against the state (default: `zboot.slot=` from
        /// /proc/cmdline when working on the running system).
        #[arg(long, value_enum)]
        slot: Option<SlotArg>,
    },
    /// Make a slot ACTIVE (as a trial; the old ACTIVE becomes BACKUP).
    SetActive {
        /// A, B or SAFE.
        #[arg(value_enum)]
        slot: SlotArg,
        /// Image version now in the slot (for anti-rollback and status).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Boot a slot on the next boot only (like the Pi firmware's tryboot).
    Try {
        /// A, B or SAFE.
        #[arg(value_enum)]
        slot: SlotArg,
        /// Image version now in the slot.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Raise the anti-rollback minimum: slots whose signed version is below it no longer
    /// boot, and install and update refuse such images (docs/security.md).
    SetMinimum {
        /// The new minimum image version (never lower than the current one).
        version: u32,
        /// Raise it even above ACTIVE's or SAFE's version (they would no longer boot).
        #[arg(long)]
        force: bool,
    },
    /// Enter USB recovery on the next boot.
    RequestRecovery {
        /// Withdraw the request instead.
        #[arg(long)]
        cancel: bool,
    },
    /// Create the preallocated state file and write a fresh state to both copies.
    InitState(init::InitArgs),
    /// Check a `zbmanifest.txt`: print its settings, warn about unknown keys, fail on bad lines.
    CheckManifest {
        /// The manifest file.
        file: PathBuf,
    },
    /// Disk images: `disk create` builds a complete eMMC image (docs/disk-layout.md).
    #[command(subcommand)]
    Disk(disk_create::DiskCommand),
    /// `.zi` images: convert, inspect, verify, sign (docs/image-format.md).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Signing keys for `.zi` images.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// The CM4's own secure boot below zboot: `secure-boot boot-img` builds the ramdisk the
    /// boot EEPROM verifies (docs/security.md).
    #[command(subcommand)]
    SecureBoot(secure_boot::SecureBootCommand),
    /// Install a `.zi` into the slot that is not ACTIVE (`--image` or `--device`) and arm it
    /// as a trial (docs/image-format.md, "Installing into a slot").
    Install(InstallCommand),
    /// Over-the-air updates from zbmanifest.txt's `update_endpoint` (docs/update.md):
    /// `update check` looks, `update apply` installs into the slot that is not ACTIVE.
    #[command(subcommand)]
    Update(update::UpdateCommand),
    /// Update reports for zbmanifest.txt's `report_url`: `report send` posts the queued ones
    /// (docs/update.md, "Update reports").
    #[command(subcommand)]
    Report(report_send::ReportCommand),
    /// USB recovery sticks: `usb create` makes a stick image holding a `.zi`.
    #[command(subcommand)]
    Usb(usb::UsbCommand),
    /// Ask for a running stock Raspberry Pi OS unit to be reflashed into the zboot layout
    /// from a USB stick at its next boot (it boots as before until the stick comes).
    Adopt(adopt::AdoptArgs),
    /// The `.zi` benchmark (slow; `cargo xtask bench-image` runs it): prints a table.
    #[command(hide = true)]
    Bench {
        /// Scratch directory (about 3 GiB).
        #[arg(long, default_value = "target/bench", value_name = "DIR")]
        work_dir: PathBuf,
    },
}

/// Runs a command, printing to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    if let Command::CheckManifest { file } = &cli.command {
        return check_manifest(file, out);
    }
    if let Command::Disk(disk_create::DiskCommand::Create(args)) = &cli.command {
        return disk_create::create(args, out);
    }
    match &cli.command {
        Command::Image(command) => return image::run(command, out),
        Command::Key(command) => return key::run(command, out),
        Command::SecureBoot(command) => return secure_boot::run(command, out),
        Command::Usb(command) => return usb::run(command, out),
        Command::Bench { work_dir } => return bench::run_image_benchmark(work_dir, out),
        _ => {}
    }
    let target = cli.target.target()?;
    match &cli.command {
        Command::CheckManifest { .. }
        | Command::Disk(_)
        | Command::Image(_)
        | Command::Key(_)
        | Command::SecureBoot(_)
        | Command::Usb(_)
        | Command::Bench { .. } => Ok(()),
        Command::Install(command) => install_command(&target, command, &cli.reports, out),
        Command::Update(command) => update::run(&target, command, &cli.reports.queue(), out),
        Command::Report(command) => report_send::run(&target, &cli.reports.queue(), command, out),
        Command::Adopt(args) => adopt::adopt(&target, args, out),
        Command::InitState(args) => init::init_state(&target, args, out),
        Command::Status { json } => {
            let mut opened = target::open(&target)?;
            let (state, _, report) = target::load(&mut opened)?;
            let mut view = status::to_json(&state, &report, opened.lbas, &opened.description);
            status::add_slot_files(&mut view, |name| update::read_boot_file(&target, name));
            if opened.whole_disk {
                let journal = recovery_proto::reflash::pending(
                    &mut opened.disk,
                    recovery_proto::reflash::JOURNAL_LBAS,
                )
                .context("reading the reflash journal")?;
                view.reflash_journal = Some(journal.as_ref().map(status::DiskJournalJson::new));
            }
            if *json {
                serde_json::to_writer_pretty(&mut *out, &view)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", status::to_text(&view))?;
            }
            Ok(())
        }
        Command::MarkGood { slot } => mark_good(&target, *slot, &cli.reports, out),
        Command::SetActive { slot, version } => edit(&target, out, |state| {
            state.set_active(Slot::from(*slot), *version);
            Ok(format!(
                "slot {} is ACTIVE ({}), BACKUP is {}",
                state.active,
                state.slot(state.active).state,
                state.backup
            ))
        })
        .map(|_| ()),
        Command::Try { slot, version } => edit(&target, out, |state| {
            state.try_once(Slot::from(*slot), *version);
            Ok(format!(
                "slot {} will be tried on the next boot only",
                Slot::from(*slot)
            ))
        })
        .map(|_| ()),
        Command::SetMinimum { version, force } => set_minimum(&target, *version, *force, out),
        Command::RequestRecovery { cancel } => edit(&target, out, |state| {
            state.request_recovery(!cancel);
            Ok(if *cancel {
                "recovery request withdrawn".to_string()
            } else {
                "RECOVERY requested for the next boot".to_string()
            })
        })
        .map(|_| ()),
    }
}

/// `set-minimum`: refuses a minimum that ACTIVE's or SAFE's files are below (they would no
/// longer boot) unless forced, then raises it.
fn set_minimum(target: &Target, version: u32, force: bool, out: &mut dyn Write) -> Result<()> {
    let files_version = |slot: Slot| -> Option<u32> {
        let text = update::read_boot_file(target, &format!("{slot}/slot.txt"))
            .ok()
            .flatten()?;
        recovery_proto::slot_manifest::SlotManifest::parse(&text)
            .ok()
            .map(|manifest| manifest.image_version)
    };
    let active = {
        let mut opened = target::open(target)?;
        target::load(&mut opened)?.0.active
    };
    for (what, found) in [
        ("ACTIVE", files_version(active)),
        ("SAFE", files_version(Slot::Safe)),
    ] {
        if let Some(found) = found
            && found < version
            && !force
        {
            bail!(
                "{what}'s slot.txt says version {found}, below {version}: it would no longer \
                 boot (install a newer image first, or --force)"
            );
        }
    }
    edit(target, out, |state| {
        state
            .raise_minimum(version)
            .context("set-minimum refused")?;
        Ok(format!("minimum image version now {version}"))
    })
    .map(|_| ())
}

/// `mark-good`: confirms the running boot, then queues its update reports (after the state
/// is on the medium, and local files only: never a wait for the network).
fn mark_good(
    target: &Target,
    slot: Option<SlotArg>,
    reports: &ReportArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let running = match slot {
        Some(slot) => Some(Slot::from(slot)),
        None if !matches!(target, Target::Image(_)) => running_slot_from_cmdline(),
        None => None,
    };
    let mut confirming = None;
    let state = edit(target, out, |state| {
        confirming = report::Confirming::of(state);
        let slot = state.mark_good(running).context("mark-good refused")?;
        Ok(format!("slot {slot} confirmed good"))
    })?;
    if let Some(confirming) = confirming {
        report::after_mark_good(target, &reports.queue(), confirming, &state);
    }
    Ok(())
}

/// `zbctl install`, and its `installed` report when zbmanifest.txt has `report_url=` (one
/// that is not https:// is refused before anything is written).
fn install_command(
    target: &Target,
    command: &InstallCommand,
    reports: &ReportArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let settings = report::settings(target)?;
    let result = install::install_locked(target, &command.args, command.lock.as_deref(), out);
    if settings.is_some() {
        report::enqueue_all(&reports.queue(), vec![installed_record(target, &result)]);
    }
    result.map(|_| ())
}

/// The `installed` record of a `zbctl install` run.
fn installed_record(target: &Target, result: &Result<install::InstallReport>) -> report::Record {
    let state = report::current_state(target);
    match result {
        Ok(installed) => {
            report::Record::new(report::Event::Installed, installed.slot, state.as_ref())
                .image(&installed.image_name, installed.image_version)
                .because("zbctl install")
        }
        Err(error) => {
            report::Record::new(report::Event::Installed, None, state.as_ref()).failed(error)
        }
    }
}

/// Reads the state, applies `change`, writes one sector if anything changed (synced before
/// this returns); returns the new state.
fn edit(
    target: &Target,
    out: &mut dyn Write,
    change: impl FnOnce(&mut State) -> Result<String>,
) -> Result<State> {
    let mut opened = target::open(target)?;
    let (old, mut store, _) = target::load(&mut opened)?;
    let mut new = old;
    let message = change(&mut new)?;
    match store
        .save_if_changed(&mut opened.disk, &old, &new)
        .with_context(|| format!("writing the slot state to {}", opened.description))?
    {
        Some(saved) => writeln!(
            out,
            "{message}; wrote copy {} (LBA {} of {}, sequence {})",
            saved.copy, saved.lba, opened.lbas_of, saved.sequence
        )?,
        None => writeln!(out, "{message}; state unchanged, nothing written")?,
    }
    Ok(new)
}

/// `check-manifest`: parse with the loader's own parser.
fn check_manifest(file: &std::path::Path, out: &mut dyn Write) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let manifest = recovery_proto::manifest::Manifest::parse(&bytes)
        .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
    for warning in &manifest.warnings {
        writeln!(out, "warning: {}: {warning}", file.display())?;
    }
    if manifest.warnings_dropped > 0 {
        writeln!(
            out,
            "warning: {} more unknown keys",
            manifest.warnings_dropped
        )?;
    }
    let key = manifest.public_key.map(|k| status::hex(&k));
    report::settings_of(&manifest)
        .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
    writeln!(out, "{}: ok", file.display())?;
    for (name, value) in [
        ("root_a", manifest.root_a.map(str::to_string)),
        ("root_b", manifest.root_b.map(str::to_string)),
        ("safe_root", manifest.safe_root.map(str::to_string)),
        (
            "max_boot_failure",
            manifest.max_boot_failure.map(|v| v.to_string()),
        ),
        (
            "count_power_loss",
            manifest.count_power_loss.map(|v| v.to_string()),
        ),
        (
            "watchdog_timeout",
            manifest.watchdog_timeout.map(|v| v.to_string()),
        ),
        (
            "recovery_image",
            manifest.recovery_image.map(str::to_string),
        ),
        ("public_key", key),
        (
            "update_endpoint",
            manifest.update_endpoint.map(str::to_string),
        ),
        ("endpoint_type", manifest.endpoint_type.map(str::to_string)),
        ("update_name", manifest.update_name.map(str::to_string)),
        ("ca_cert", manifest.ca_cert.map(str::to_string)),
        ("allow_http", manifest.allow_http.map(|v| v.to_string())),
        ("report_url", manifest.report_url.map(str::to_string)),
    ] {
        if let Some(value) = value {
            writeln!(out, "  {name} = {value}")?;
        }
    }
    Ok(())
}

/// Environment variable naming another file to read instead of `/proc/cmdline` (tests).
pub const CMDLINE_ENV: &str = "ZBCTL_PROC_CMDLINE";

/// The kernel command line's file: `/proc/cmdline`, or `$ZBCTL_PROC_CMDLINE` (tests).
pub fn cmdline_path() -> PathBuf {
    std::env::var_os(CMDLINE_ENV).map_or_else(|| "/proc/cmdline".into(), Into::into)
}

/// `zboot.slot=` from the kernel command line, if present: the slot the running system
/// was booted from.
pub fn running_slot_from_cmdline() -> Option<Slot> {
    let cmdline = std::fs::read_to_string(cmdline_path()).ok()?;
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("zboot.slot="))
        .and_then(Slot::from_name)
}
