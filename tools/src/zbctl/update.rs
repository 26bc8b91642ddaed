//! `zbctl update check|apply`: over-the-air updates from the endpoint named in
//! `zbmanifest.txt` (an HTTPS or, when allowed, HTTP URL; or a USB stick / local file).
//!
//! `check` reads only the remote image's header, signature trailer and manifest (HTTP Range
//! requests) and compares its version with the slot state. `apply` streams the image once,
//! straight into the slot an update goes to (`install::Flow::Stream`: nothing is stored on the
//! device's disk), resuming a broken, stalled or too slow download with a Range request from
//! the first byte of the chunk being read, then arms the slot as a trial like `zbctl install`. docs/update.md is the operator's guide.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use recovery_proto::image::format::HEADER_SIZE;
use recovery_proto::image::{Header, ImageSource};
use recovery_proto::manifest::Manifest;
use recovery_proto::{Slot, SlotState, State};
use sha2::{Digest, Sha256};

use super::install::{self, AnySource, DynSource, Flow, InstallArgs};
use super::target::{self, Target};
use super::{report, report_send};

/// Exit codes of `zbctl update` (besides 2–5, an image refused: see `image::exit`).
pub mod exit {
    /// `check`: a newer image is available. `apply`: it was installed.
    pub const UPDATED: u8 = 0;
    /// Anything else (bad arguments, the manifest, the disk).
    pub const ERROR: u8 = 1;
    /// Nothing to do: the endpoint's image is not newer than ACTIVE, is below the
    /// anti-rollback minimum, or already failed its trial on this unit.
    pub const UP_TO_DATE: u8 = 6;
    /// The endpoint could not be read: unreachable, timeout, HTTP error, TLS, redirect loop,
    /// wrong content type, a download that kept breaking.
    pub const ENDPOINT: u8 = 7;
    /// Another `zbctl update` or `zbctl install` holds the lock.
    pub const BUSY: u8 = 8;
    /// The last update is still an unconfirmed trial (waiting for `zbctl mark-good`), or the
    /// running system was booted from the slot an update would write (`zbctl try`,
    /// `set-active` without a reboot).
    pub const PENDING: u8 = 9;
}

/// The end of an update run that is not a failure of zbctl: printed as is (no "error:"),
/// with its exit code.
#[derive(Debug)]
pub struct Finished {
    /// Process exit code (see [`exit`]).
    pub code: u8,
    /// The one line for the journal.
    pub message: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Finished {}

fn finished(code: u8, message: String) -> anyhow::Error {
    Finished { code, message }.into()
}

fn endpoint_error(message: String) -> anyhow::Error {
    super::image::ExitError {
        code: exit::ENDPOINT,
        message,
    }
    .into()
}

/// `zbctl update` subcommands.
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Is there a newer image at the endpoint? Exit 0: yes; 6: up to date; 7: endpoint
    /// unreadable; 9: the last update is not confirmed yet (docs/update.md).
    Check(UpdateArgs),
    /// Install the endpoint's image into the slot that is not ACTIVE, as a trial.
    Apply(ApplyArgs),
}

/// Options of both subcommands.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Seconds before connecting, a response or any read of the body is given up; also the
    /// window over which --min-speed is measured.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// Bytes per second a download must reach over each --timeout window; a slower one is
    /// cut and resumed (it counts as a failed attempt). 0: no bound.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub min_speed: u64,
    /// Times the read of one chunk is resumed (Range request from the chunk's first byte)
    /// before `apply` gives up; counted again from 0 for each chunk.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,
    /// The lock that keeps two runs (and `zbctl install`) from overlapping (default
    /// /run/zboot-update.lock; with --image, the image file itself).
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

/// Arguments of `update apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: UpdateArgs,
    /// Reboot into the new slot when it is installed.
    #[arg(long)]
    pub reboot: bool,
    /// The reboot command, split at spaces (default: `systemctl reboot`, else `reboot`).
    #[arg(long, value_name = "COMMAND", requires = "reboot")]
    pub reboot_command: Option<String>,
    /// Testing: fail after this many bytes of the root partition are written.
    #[arg(long, hide = true, value_name = "BYTES")]
    pub fail_after: Option<u64>,
}

/// How the endpoint is reached (`endpoint_type=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointKind {
    /// An `https://` URL.
    Https,
    /// An `http://` URL (only with `allow_http=yes`).
    Http,
    /// A path: a USB stick's block device, a stick image, a mounted stick, a `.zi` file.
    Local,
}

/// The update settings of `zbmanifest.txt`.
#[derive(Debug)]
struct Config {
    endpoint: String,
    kind: EndpointKind,
    name: Option<String>,
    recovery_name: Option<String>,
    #[cfg_attr(not(feature = "https"), allow(dead_code))]
    ca_cert: Option<PathBuf>,
    allow_http: bool,
    public_key: Option<[u8; 32]>,
}

impl Config {
    fn from_manifest(manifest: &Manifest<'_>, origin: &str) -> Result<Self> {
        let endpoint = manifest.update_endpoint.ok_or_else(|| {
            anyhow!("{origin}: no update_endpoint= (an https:// URL or a USB device path)")
        })?;
        let lower = endpoint.to_ascii_lowercase();
        let kind = match manifest
            .endpoint_type
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("HTTPS") => EndpointKind::Https,
            Some("HTTP") => EndpointKind::Http,
            Some("USB" | "LOCAL" | "FILE") => EndpointKind::Local,
            None if lower.starts_with("https://") => EndpointKind::Https,
            None if lower.starts_with("http://") => EndpointKind::Http,
            None if endpoint.starts_with('/') => EndpointKind::Local,
            Some(other) => {
                bail!("{origin}: endpoint_type={other}: expected HTTPS, HTTP, USB or LOCAL")
            }
            None => bail!(
                "{origin}: update_endpoint={endpoint}: neither an http(s):// URL nor an absolute \
                 path; say which with endpoint_type="
            ),
        };
        let allow_http = manifest.allow_http.unwrap_or(false);
        match kind {
            EndpointKind::Https if !lower.starts_with("https://") => bail!(
                "{origin}: endpoint_type=HTTPS but update_endpoint={endpoint} is not an https:// URL"
            ),
            EndpointKind::Http if !lower.starts_with("http://") => bail!(
                "{origin}: endpoint_type=HTTP but update_endpoint={endpoint} is not an http:// URL"
            ),
            EndpointKind::Http if !allow_http => bail!(
                "{origin}: update_endpoint={endpoint} is plain HTTP: set allow_http=yes to accept \
                 it, with public_key= (the image's signature is then its only protection)"
            ),
            EndpointKind::Http if manifest.public_key.is_none() => bail!(
                "{origin}: update_endpoint={endpoint} is plain HTTP and no public_key= is set: \
                 anyone on the network path could install an image of their own. allow_http=yes \
                 is only honoured together with public_key= (the release key's 64 hex digits)"
            ),
            EndpointKind::Local if !endpoint.starts_with('/') => {
                bail!("{origin}: endpoint_type=USB/LOCAL needs an absolute path, not {endpoint}")
            }
            _ => {}
        }
        Ok(Self {
            endpoint: endpoint.to_string(),
            kind,
            name: manifest.update_name.map(str::to_string),
            recovery_name: manifest.recovery_image.map(str::to_string),
            ca_cert: manifest.ca_cert.map(PathBuf::from),
            // Plain HTTP (an endpoint, or a redirect to one) only with a key to check.
            allow_http: allow_http && manifest.public_key.is_some(),
            public_key: manifest.public_key,
        })
    }
}

/// Runs `zbctl update ...`; `apply` queues its update reports in `reports` when
/// zbmanifest.txt has `report_url=` (docs/update.md, "Update reports").
pub fn run(
    target: &Target,
    command: &UpdateCommand,
    reports: &report::Queue,
    out: &mut dyn Write,
) -> Result<()> {
    let (common, apply) = match command {
        UpdateCommand::Check(common) => (common, None),
        UpdateCommand::Apply(args) => (&args.common, Some(args)),
    };
    let _lock = lock(target, common.lock.as_deref())?;
    let (manifest_bytes, origin) = read_target_manifest(target)?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|e| anyhow!("{origin}: {e}"))?;
    let config = Config::from_manifest(&manifest, &origin)?;
    let report_settings = report::settings_of(&manifest).map_err(|e| anyhow!("{origin}: {e}"))?;
    let interactive = std::io::stderr().is_terminal();
    // The image and slot, once known: what a failure's report names.
    let subject = RefCell::new(None);
    let report = |outcome: &Result<Outcome>, received: Option<u64>| {
        if let (Some(_), Some(settings)) = (apply, &report_settings) {
            report_apply(target, reports, settings, outcome, received, &subject);
        }
    };
    // Set once the install marked the slot `bad`: from then on a failure leaves it so.
    let written = Cell::new(false);
    let slot_note = |written: &Cell<bool>| {
        if written.get() {
            "; the slot being written stays marked bad, ACTIVE is untouched"
        } else {
            "; nothing was written"
        }
    };
    match config.kind {
        EndpointKind::Local => {
            let name = config
                .name
                .clone()
                .or_else(|| config.recovery_name.clone())
                .unwrap_or_else(|| install::DEFAULT_STICK_NAME.to_string());
            let outcome =
                install::with_source(Path::new(&config.endpoint), &name, |source, what| {
                    process(
                        target,
                        &config,
                        source,
                        what,
                        apply,
                        interactive,
                        (&written, &subject),
                        out,
                    )
                })
                .map_err(|error| {
                    if error.is::<Finished>() {
                        error
                    } else {
                        with_note(&error, slot_note(&written))
                    }
                });
            report(&outcome, None);
            conclude(&outcome?, None, out)
        }
        EndpointKind::Https | EndpointKind::Http => {
            let resolved = agent(&config, common).and_then(|agent| {
                let url = resolve_image_url(&agent, &config)?;
                Ok((agent, url))
            });
            let (agent, url) = match resolved {
                Ok(resolved) => resolved,
                Err(error) => {
                    let failed = Err(error);
                    report(&failed, None);
                    return failed.map(|_: Outcome| ());
                }
            };
            let mut source = HttpSource::new(agent, url.clone(), common, interactive);
            let result = source.start().and_then(|()| {
                process(
                    target,
                    &config,
                    &mut source,
                    &url,
                    apply,
                    interactive,
                    (&written, &subject),
                    out,
                )
            });
            source.finish();
            let outcome = match (result, source.failure.take()) {
                (Ok(outcome), _) => Ok(outcome),
                (Err(error), _) if error.is::<Finished>() => Err(error),
                (Err(_), Some(failure)) => Err(endpoint_error(format!(
                    "{url}: {failure}{}",
                    slot_note(&written)
                ))),
                (Err(error), None) => Err(with_note(&error, slot_note(&written))),
            };
            report(&outcome, Some(source.received));
            conclude(&outcome?, Some(source.received), out)
        }
    }
}

/// The image and the slot a run is about, once its header has been read.
type Subject = RefCell<Option<(String, u32, Slot)>>;

/// Queues the reports of an `apply` run and sends the queue (bounded; its result is not the
/// run's): `downloaded` and `installed` when it installed; when it failed, `downloaded`
/// (the endpoint or the image was refused, exit 2-5 and 7) or `installed` (anything else)
/// with the error. Runs that end without a failure (up to date, busy, pending) report
/// nothing.
fn report_apply(
    target: &Target,
    queue: &report::Queue,
    settings: &report::Settings,
    outcome: &Result<Outcome>,
    received: Option<u64>,
    subject: &Subject,
) {
    use report::{Event, Record};
    let state = report::current_state(target);
    let subject = subject.borrow().clone();
    let record = |event| {
        if let Some((name, version, slot)) = &subject {
            return Record::new(event, Some(*slot), state.as_ref()).image(name, *version);
        }
        // Before the header was read: the slot an update goes to, no image.
        let slot = state.as_ref().map(State::install_slot);
        let mut record = Record::new(event, slot, state.as_ref());
        record.image_version = None;
        record
    };
    let records = match outcome {
        Ok(outcome) => vec![
            match received {
                Some(bytes) => record(Event::Downloaded).because(format!("{bytes} bytes received")),
                None => record(Event::Downloaded),
            },
            record(Event::Installed).because(outcome.line.clone()),
        ],
        Err(error) if error.is::<Finished>() => return,
        Err(error) => {
            let refused = error
                .downcast_ref::<super::image::ExitError>()
                .is_some_and(|e| (2..=5).contains(&e.code) || e.code == exit::ENDPOINT);
            let event = if refused {
                Event::Downloaded
            } else {
                Event::Installed
            };
            vec![record(event).failed(error)]
        }
    };
    report::enqueue_all(queue, records);
    report_send::send_after_update(settings, queue);
}

/// `error` with `note` appended, keeping an image refusal's exit code.
fn with_note(error: &anyhow::Error, note: &str) -> anyhow::Error {
    match error.downcast_ref::<super::image::ExitError>() {
        Some(refusal) => super::image::ExitError {
            code: refusal.code,
            message: format!("{}{note}", refusal.message),
        }
        .into(),
        None => anyhow!("{error:#}{note}"),
    }
}

/// The lock `zbctl update` and `zbctl install` share when no `--lock` is given.
pub const DEFAULT_LOCK: &str = "/run/zboot-update.lock";

/// Holds the lock that `zbctl update` and `zbctl install` share (`flock`, released when the
/// process ends, even when killed): `explicit`, else [`DEFAULT_LOCK`], else for `--image` the
/// image file itself (a host user may not write `/run`). Held: [`exit::BUSY`].
pub fn lock(target: &Target, explicit: Option<&Path>) -> Result<File> {
    let (path, file) = match (explicit, target) {
        (None, Target::Image(image)) => (
            image.clone(),
            File::open(image).with_context(|| format!("opening {}", image.display()))?,
        ),
        (path, _) => {
            let path = path.map_or_else(|| PathBuf::from(DEFAULT_LOCK), Path::to_path_buf);
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("creating the lock file {}", path.display()))?;
            (path, file)
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(finished(
            exit::BUSY,
            format!(
                "another zbctl update or install is running (it holds {}); nothing done",
                path.display()
            ),
        )),
        Err(fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The target's `zbmanifest.txt` (missing = empty) and a description of where it is.
fn read_target_manifest(target: &Target) -> Result<(Vec<u8>, String)> {
    let bytes = read_boot_file(target, "zbmanifest.txt")?.unwrap_or_default();
    let origin = match target {
        Target::BootDir(dir) => format!("{}/zbmanifest.txt", dir.display()),
        Target::Image(path) | Target::Device(path) => {
            format!("{}: zbmanifest.txt", path.display())
        }
    };
    Ok((bytes, origin))
}

/// A file of the target's FAT boot partition (`None` if it is not there).
pub(crate) fn read_boot_file(target: &Target, name: &str) -> Result<Option<Vec<u8>>> {
    match target {
        Target::BootDir(dir) => match super::image_tar::find_any_case(dir, name) {
            Some(path) => Ok(Some(
                fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )),
            None => Ok(None),
        },
        Target::Image(path) | Target::Device(path) => install::read_boot_file(path, name),
    }
}

/// The state, with ACTIVE's image version taken from its `slot.txt` when the state does not
/// know it (0: a unit provisioned by `disk create` or `init-state`, never updated).
fn installed_state(target: &Target) -> Result<State> {
    let mut state = {
        let mut opened = target::open(target)?;
        target::load(&mut opened)?.0
    };
    let active = state.active;
    if state.slot(active).image_version == 0
        && let Some(text) = read_boot_file(target, &format!("{}/slot.txt", active.name()))?
        && let Ok(manifest) = recovery_proto::slot_manifest::SlotManifest::parse(&text)
    {
        state.slots[active.index()].image_version = manifest.image_version;
    }
    Ok(state)
}

/// What the state says about an image of `version`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Install(Slot),
    Skip(u8, String),
}

fn decide(state: &State, version: u32) -> Verdict {
    let active = state.slot(state.active);
    let slot = state.install_slot();
    let backup = state.slot(slot);
    if version < state.min_version {
        return Verdict::Skip(
            exit::UP_TO_DATE,
            format!(
                "version {version} is older than the anti-rollback minimum {}",
                state.min_version
            ),
        );
    }
    if version <= active.image_version {
        return Verdict::Skip(
            exit::UP_TO_DATE,
            format!(
                "up to date: slot {} (ACTIVE, {}) has version {}",
                state.active, active.state, active.image_version
            ),
        );
    }
    if backup.state == SlotState::Bad && backup.image_version == version {
        return Verdict::Skip(
            exit::UP_TO_DATE,
            format!(
                "version {version} already failed its trial in slot {slot} on this unit: not \
                 installed again (publish a newer version)"
            ),
        );
    }
    if active.state == SlotState::Trial {
        return Verdict::Skip(
            exit::PENDING,
            format!(
                "slot {} (ACTIVE, version {}) is a trial not yet confirmed by `zbctl mark-good`: \
                 version {version} waits (slot {slot} is the fallback)",
                state.active, active.image_version
            ),
        );
    }
    Verdict::Install(slot)
}

/// Reads the image's header (and signature, manifest), decides, and for `apply` installs
/// (`written` is set once the install has marked the slot `bad`).
#[allow(clippy::too_many_arguments, clippy::too_many_lines)] // one run, top to bottom
fn process(
    target: &Target,
    config: &Config,
    source: &mut AnySource<'_>,
    what: &str,
    apply: Option<&ApplyArgs>,
    interactive: bool,
    (written, subject): (&Cell<bool>, &Subject),
    out: &mut dyn Write,
) -> Result<Outcome> {
    let state = installed_state(target)?;
    let mut source = DynSource(source);
    let mut manifest_buffer = vec![0u8; install::MANIFEST_BUFFER];
    let image = install::open_image(
        &mut source,
        &mut manifest_buffer,
        config.public_key.as_ref(),
        what,
    )?;
    let (name, version) = (
        image.header().name().to_string(),
        image.header().image_version,
    );
    let slot = match decide(&state, version) {
        Verdict::Skip(code, why) => {
            return Err(finished(
                code,
                format!("{what}: {name} version {version}: {why}"),
            ));
        }
        Verdict::Install(slot) => slot,
    };
    subject.replace(Some((name.clone(), version, slot)));
    let Some(args) = apply else {
        return Ok(Outcome {
            line: format!(
                "update available: {name} version {version} at {what} (ACTIVE slot {} has version \
                 {}; `zbctl update apply` installs it into slot {slot})",
                state.active,
                state.slot(state.active).image_version
            ),
            reboot: None,
        });
    };
    let whole_disk;
    let target = match target {
        Target::BootDir(dir) => {
            whole_disk = Target::Device(whole_disk_of(dir)?);
            &whole_disk
        }
        other => other,
    };
    let install_args = InstallArgs {
        source: PathBuf::from(what),
        name: None,
        pubkey: None,
        force: false,
        once: false,
        fail_after: args.fail_after,
    };
    // The running system booted from the slot to be written: exit 9 like a pending trial.
    let open_target = || {
        install::open_target(target, &install_args).map_err(|error| {
            match error.downcast_ref::<super::image::ExitError>() {
                Some(refusal) if refusal.code == exit::PENDING => {
                    finished(exit::PENDING, refusal.message.clone())
                }
                _ => error,
            }
        })
    };
    let mut disk = open_target()?;
    if disk.slot != slot {
        bail!(
            "the state changed since it was read (install slot {} then {slot})",
            disk.slot
        );
    }
    if disk.key != config.public_key {
        bail!("public_key= of the boot partition's zbmanifest.txt changed while reading it");
    }
    let frozen = match target {
        Target::Device(device) => freeze_boot_mounts(device, disk.boot_partition_number())?,
        _ => Vec::new(),
    };
    if !frozen.is_empty() {
        // Read the partition again now that the mount has written out what it held.
        disk = open_target()?;
    }
    let mut details: Vec<u8> = Vec::new();
    let result = install::install_from(
        &mut disk,
        &image,
        &mut source,
        what,
        &install_args,
        Flow::Stream,
        &mut details,
    );
    written.set(disk.touched);
    let report = result?;
    if interactive {
        out.write_all(&details)?;
    }
    let frozen_note = if frozen.is_empty() || args.reboot {
        String::new()
    } else {
        format!(
            " ({} stays read-only until then)",
            frozen
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(Outcome {
        line: format!(
            "installed {name} version {version} from {what} into slot {slot} as a trial; {}; {} \
             of root written, {} already in place",
            if args.reboot {
                "rebooting into it".to_string()
            } else {
                format!("it starts on the next reboot{frozen_note}")
            },
            super::image::mib(report.root_bytes),
            super::image::mib(report.reused_bytes),
        ),
        reboot: args
            .reboot
            .then(|| args.reboot_command.clone().unwrap_or_default()),
    })
}

/// How a run ended well: its journal line, and the reboot to do (`Some("")`: the default).
struct Outcome {
    line: String,
    reboot: Option<String>,
}

/// Prints the outcome line (with what the download cost) and reboots if asked.
fn conclude(outcome: &Outcome, downloaded: Option<u64>, out: &mut dyn Write) -> Result<()> {
    match downloaded {
        Some(bytes) if bytes < 1 << 20 => {
            writeln!(out, "{}; {bytes} bytes downloaded", outcome.line)?;
        }
        Some(bytes) => writeln!(
            out,
            "{}; {} downloaded",
            outcome.line,
            super::image::mib(bytes)
        )?,
        None => writeln!(out, "{}", outcome.line)?,
    }
    out.flush()?;
    match outcome.reboot.as_deref() {
        Some("") => reboot(None),
        Some(command) => reboot(Some(command)),
        None => Ok(()),
    }
}

/// Remounts read-only every mount of the disk's boot partition, before install edits that
/// partition's FAT directly on the block device: the kernel's vfat keeps its own copy of the
/// FAT and directories and would write stale sectors back over the new slot's files (or have
/// unwritten ones that the direct edit would overwrite). `mount -o remount,ro` writes out what
/// it holds; nothing is written through it afterwards, until the reboot that starts the new
/// slot. Returns the mount points.
pub(crate) fn freeze_boot_mounts(disk: &Path, partition: u32) -> Result<Vec<PathBuf>> {
    let Some(device) = partition_device(disk, partition)? else {
        // A disk image file: its partitions are not block devices of their own.
        return Ok(Vec::new());
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo (is the boot partition mounted?)")?;
    let mounts = target::mounts_of_device(&mountinfo, device.1);
    let name = device.0.display();
    for mount in &mounts {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(mount)
            .status();
        match status {
            Ok(status) if status.success() => {}
            other => bail!(
                "the boot partition {name} is mounted at {} and could not be remounted \
                 read-only ({}); its FAT is edited directly, which a read-write vfat mount \
                 would undo: close files open for writing there, or unmount it; nothing written",
                mount.display(),
                match other {
                    Ok(status) => status.to_string(),
                    Err(error) => error.to_string(),
                }
            ),
        }
    }
    Ok(mounts)
}

/// The block device of partition `number` of `disk` and its `major:minor` (`st_rdev`), found
/// through the canonical path (a `/dev/disk/by-id/…` link or any other spelling works) and
/// sysfs; `None` when `disk` is not a block device (a disk image file). A block device whose
/// partition cannot be found is an error: its mounts could not be found either.
fn partition_device(disk: &Path, number: u32) -> Result<Option<(PathBuf, (u32, u32))>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let canonical =
        fs::canonicalize(disk).with_context(|| format!("resolving {}", disk.display()))?;
    let metadata = fs::metadata(&canonical).with_context(|| format!("{}", canonical.display()))?;
    if !metadata.file_type().is_block_device() {
        return Ok(None);
    }
    let unknown = |why: String| {
        anyhow!(
            "{}: cannot tell whether its boot partition (number {number}) is mounted ({why}); \
             its FAT is edited directly, which a read-write vfat mount would undo; nothing \
             written",
            disk.display()
        )
    };
    let (major, minor) = target::dev_numbers(metadata.rdev());
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    let entries = fs::read_dir(&sys).map_err(|e| unknown(format!("{}: {e}", sys.display())))?;
    let name = entries
        .flatten()
        .find(|entry| {
            fs::read_to_string(entry.path().join("partition"))
                .is_ok_and(|n| n.trim() == number.to_string())
        })
        .map(|entry| entry.file_name())
        .ok_or_else(|| unknown(format!("no partition {number} under {}", sys.display())))?;
    let node = Path::new("/dev").join(&name);
    let part = fs::metadata(&node).map_err(|e| unknown(format!("{}: {e}", node.display())))?;
    if !part.file_type().is_block_device() {
        return Err(unknown(format!("{} is not a block device", node.display())));
    }
    Ok(Some((node, target::dev_numbers(part.rdev()))))
}

/// The whole disk under the FAT file system mounted at `dir` (e.g. `/dev/mmcblk0` for a
/// mount of `/dev/mmcblk0p1`), from mountinfo and sysfs (a partition's sysfs directory sits
/// in its disk's, see the kernel's Documentation/ABI/stable/sysfs-block).
fn whole_disk_of(dir: &Path) -> Result<PathBuf> {
    let partition = target::mounted_fat_device(dir).ok_or_else(|| {
        anyhow!(
            "{}: not a mounted FAT file system; `update apply` writes a root partition: give \
             the whole disk with --device /dev/mmcblk0",
            dir.display()
        )
    })?;
    let name = partition
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: no device name", partition.display()))?;
    let sys = fs::canonicalize(Path::new("/sys/class/block").join(name))
        .with_context(|| format!("/sys/class/block/{name}"))?;
    let disk = sys
        .parent()
        .filter(|_| sys.join("partition").exists())
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a partition of a disk", partition.display()))?;
    Ok(Path::new("/dev").join(disk))
}

fn reboot(command: Option<&str>) -> Result<()> {
    let candidates: Vec<Vec<String>> = match command {
        Some(command) => vec![command.split_whitespace().map(str::to_string).collect()],
        None => vec![
            vec!["systemctl".to_string(), "reboot".to_string()],
            vec!["reboot".to_string()],
        ],
    };
    let mut tried = Vec::new();
    for words in candidates {
        let Some((program, arguments)) = words.split_first() else {
            continue;
        };
        match Command::new(program).args(arguments).status() {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => tried.push(format!("`{}`: {status}", words.join(" "))),
            Err(error) => tried.push(format!("`{}`: {error}", words.join(" "))),
        }
    }
    bail!(
        "installed, but the reboot failed ({}); the new slot starts on the next reboot",
        tried.join("; ")
    )
}

/// The HTTP client: bounded timeouts, at most [`MAX_REDIRECTS`] redirects, HTTPS only unless
/// `allow_http=yes`, TLS roots from `ca_cert=` or the system store.
fn agent(config: &Config, common: &UpdateArgs) -> Result<ureq::Agent> {
    let timeout = Some(Duration::from_secs(common.timeout.max(1)));
    let builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .https_only(!config.allow_http)
        .max_redirects(MAX_REDIRECTS)
        .user_agent(concat!("zbctl/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(timeout)
        .timeout_connect(timeout)
        .timeout_send_request(timeout)
        .timeout_recv_response(timeout)
        .timeout_per_read(timeout);
    #[cfg(feature = "https")]
    let builder = builder.tls_config(tls_config(config.ca_cert.as_deref())?);
    #[cfg(not(feature = "https"))]
    if config.kind == EndpointKind::Https {
        bail!(
            "{}: this zbctl was built without HTTPS (cargo feature `https`); use an http:// \
             endpoint with allow_http=yes, or a USB/LOCAL one",
            config.endpoint
        );
    }
    Ok(builder.build().new_agent())
}

/// Redirects followed (a CDN or object store may redirect once or twice; more is a loop).
const MAX_REDIRECTS: u32 = 5;

/// TLS for the update endpoint and the report endpoint (`report_send`): the roots from
/// `ca_cert` (a PEM bundle), else the system store.
#[cfg(feature = "https")]
pub(crate) fn tls_config(ca_cert: Option<&Path>) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
    let certs: Vec<Certificate<'static>> = if let Some(path) = ca_cert {
        let pem = fs::read(path)
            .with_context(|| format!("ca_cert={}: reading the CA bundle", path.display()))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(cert) =
                item.map_err(|e| anyhow!("ca_cert={}: not a PEM bundle: {e}", path.display()))?
            {
                certs.push(cert);
            }
        }
        if certs.is_empty() {
            bail!(
                "ca_cert={}: no CERTIFICATE in this PEM file",
                path.display()
            );
        }
        certs
    } else {
        let found = rustls_native_certs::load_native_certs();
        let certs: Vec<_> = found
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        if certs.is_empty() {
            bail!(
                "no CA certificates in the system store (/etc/ssl/certs; SSL_CERT_FILE): install \
                 the ca-certificates package or set ca_cert= in zbmanifest.txt{}",
                found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        certs
    };
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .build())
}

/// The image's URL: `update_endpoint` + `/` + `update_name`; an endpoint ending in `.zi`; or
/// else the `latest` pointer file (the endpoint itself, or `latest` in it when it ends in `/`).
fn resolve_image_url(agent: &ureq::Agent, config: &Config) -> Result<String> {
    let endpoint = &config.endpoint;
    if let Some(name) = &config.name {
        return Ok(join_url(endpoint.trim_end_matches('/'), name));
    }
    if endpoint.to_ascii_lowercase().ends_with(".zi") {
        return Ok(endpoint.clone());
    }
    let pointer = if endpoint.ends_with('/') {
        format!("{endpoint}latest")
    } else {
        endpoint.clone()
    };
    let text = fetch_small(agent, &pointer)?;
    let latest = parse_latest(&text).map_err(|e| endpoint_error(format!("{pointer}: {e}")))?;
    let image = latest.image;
    if let Some(percent) = latest.rollout {
        let serial = device_serial()?;
        let bucket = rollout_bucket(&serial, image);
        if bucket >= percent {
            return Err(Finished {
                code: exit::UP_TO_DATE,
                message: format!(
                    "{pointer}: {image} is rolling out to {percent}% of devices, and this one \
                     (serial {serial}, bucket {bucket} of 0-99) is not among them yet"
                ),
            }
            .into());
        }
    }
    if image.contains("://") {
        return Ok(image.to_string());
    }
    let base = pointer
        .rsplit_once('/')
        .map_or(pointer.as_str(), |(b, _)| b);
    Ok(join_url(base, image))
}

fn join_url(base: &str, name: &str) -> String {
    format!("{base}/{}", name.trim_start_matches('/'))
}

/// The `latest` pointer file.
#[derive(Debug, PartialEq, Eq)]
struct Latest<'t> {
    /// `image=`: the `.zi` (relative to the pointer's URL, or absolute).
    image: &'t str,
    /// `rollout=`: the percentage of devices that take it (docs/update.md).
    rollout: Option<u8>,
}

/// The `latest` pointer file: `key=value` lines, `#` comments; `image=` names the `.zi`,
/// `rollout=NN` (0 to 100) stages it. Unknown keys are ignored.
fn parse_latest(text: &str) -> Result<Latest<'_>, String> {
    let mut image = None;
    let mut rollout = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "image" => image = Some(value.trim()),
            "rollout" => {
                let value = value.trim();
                let percent = value
                    .parse::<u8>()
                    .ok()
                    .filter(|percent| *percent <= 100)
                    .ok_or_else(|| {
                        format!(
                            "line {}: rollout={value} is not a percentage (a whole number from 0 \
                             to 100)",
                            index + 1
                        )
                    })?;
                rollout = Some(percent);
            }
            _ => {}
        }
    }
    let image = image
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "not a latest pointer file: no image=<file name or URL> line".to_string())?;
    Ok(Latest { image, rollout })
}

/// The device's place in a staged rollout of `image`: 0 to 99, stable for the pair, and
/// spread evenly over a fleet. The first 8 bytes (big-endian) of SHA-256 of
/// `zboot rollout v1`, NUL, the serial, NUL, the image's name, modulo 100; by hand:
/// `printf 'zboot rollout v1\0%s\0%s' SERIAL IMAGE | sha256sum`.
pub fn rollout_bucket(serial: &str, image: &str) -> u8 {
    let mut hash = Sha256::new();
    hash.update(b"zboot rollout v1\0");
    hash.update(serial.as_bytes());
    hash.update(b"\0");
    hash.update(image.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u8::try_from(u64::from_be_bytes(first) % 100).unwrap_or(0)
}

/// The device's serial number: `$ZBCTL_DEVICE_SERIAL` (tests), else the firmware's
/// `/serial-number` in the device tree (the CM4's board serial), else `Serial` in
/// `/proc/cpuinfo`, else `/etc/machine-id`.
pub(crate) fn device_serial() -> Result<String> {
    if let Ok(serial) = std::env::var("ZBCTL_DEVICE_SERIAL")
        && !serial.trim().is_empty()
    {
        return Ok(serial.trim().to_string());
    }
    for path in [
        "/sys/firmware/devicetree/base/serial-number",
        "/proc/device-tree/serial-number",
    ] {
        if let Ok(bytes) = fs::read(path) {
            let serial = String::from_utf8_lossy(&bytes)
                .trim_matches(char::from(0))
                .trim()
                .to_string();
            if !serial.is_empty() {
                return Ok(serial);
            }
        }
    }
    if let Ok(cpuinfo) = fs::read_to_string("/proc/cpuinfo")
        && let Some(serial) = cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "Serial").then(|| value.trim().to_string())
        })
    {
        return Ok(serial);
    }
    match fs::read_to_string("/etc/machine-id") {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => bail!(
            "a staged rollout needs this device's serial number, and there is none (no \
             serial-number in the device tree, no Serial in /proc/cpuinfo, no /etc/machine-id)"
        ),
    }
}

/// Bytes of the `latest` pointer file read at most.
const MAX_POINTER_SIZE: u64 = 4096;

fn fetch_small(agent: &ureq::Agent, url: &str) -> Result<String> {
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| endpoint_error(format!("{url}: {}", describe(&e))))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(endpoint_error(format!("{url}: {}", status_text(status))));
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_POINTER_SIZE)
        .read_to_string()
        .map_err(|e| {
            endpoint_error(format!(
                "{url}: reading the pointer file (at most {MAX_POINTER_SIZE} bytes): {}",
                describe(&e)
            ))
        })
}

fn status_text(status: u16) -> String {
    match status {
        404 | 410 => format!("not found (HTTP {status})"),
        401 | 403 => format!("access denied (HTTP {status})"),
        _ => format!("HTTP {status}"),
    }
}

/// A ureq error as an operator reads it.
pub(crate) fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(what) => format!("timed out ({what})"),
        ureq::Error::TooManyRedirects => {
            format!("more than {MAX_REDIRECTS} redirects (a redirect loop?)")
        }
        ureq::Error::RequireHttpsOnly(url) => {
            format!("redirected to plain HTTP ({url}); allowed only with allow_http=yes")
        }
        ureq::Error::ConnectionFailed => "connection refused or failed (server down?)".to_string(),
        ureq::Error::HostNotFound => "host not found (DNS)".to_string(),
        ureq::Error::Io(io) => describe_io(io),
        other => other.to_string(),
    }
}

fn describe_io(io: &std::io::Error) -> String {
    #[cfg(feature = "https")]
    if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return format!("TLS: {tls}");
    }
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused (server down?): {io}")
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => format!("timed out: {io}"),
        _ => io.to_string(),
    }
}

/// Bytes skipped by reading on when a read lands a little ahead of the open stream (cheaper
/// than a new request).
const SKIP_AHEAD: u64 = 1 << 20;

/// What a failed request or read means.
struct Failure {
    message: String,
    /// A broken connection or a timeout: a new Range request may get further.
    retry: bool,
}

/// The remote `.zi`, read with HTTP Range requests (RFC 9110 §14): small bounded ranges for
/// the header, manifest and signature trailer (kept in memory, each read once), one
/// open-ended range from the first payload byte on, and a new range from the start of the
/// chunk being read when the stream breaks or is too slow.
struct HttpSource {
    agent: ureq::Agent,
    url: String,
    size: u64,
    /// `ETag` (else `Last-Modified`) of the first response: a resumed range must come from the
    /// same file.
    validator: Option<String>,
    payload_at: u64,
    /// Where the payload ends (the signature trailer, if any, starts).
    payload_end: u64,
    cache: Vec<(u64, Vec<u8>)>,
    stream: Option<(u64, ureq::BodyReader<'static>)>,
    retries: u32,
    /// `--min-speed` over windows of `window`.
    min_speed: u64,
    window: Duration,
    /// Start of the current window of the open stream, and the bytes received in it.
    window_start: (Instant, u64),
    bar: Option<ProgressBar>,
    interactive: bool,
    payload_started: bool,
    failure: Option<String>,
    /// Body bytes received.
    received: u64,
}

impl HttpSource {
    fn new(agent: ureq::Agent, url: String, common: &UpdateArgs, interactive: bool) -> Self {
        Self {
            agent,
            url,
            size: 0,
            validator: None,
            payload_at: u64::MAX,
            payload_end: u64::MAX,
            cache: Vec::new(),
            stream: None,
            retries: common.retries,
            min_speed: common.min_speed,
            window: Duration::from_secs(common.timeout.max(1)),
            window_start: (Instant::now(), 0),
            bar: None,
            interactive,
            payload_started: false,
            failure: None,
            received: 0,
        }
    }

    /// Reads the header (first request: the size, the validator, that ranges work).
    fn start(&mut self) -> Result<()> {
        let mut header = vec![0u8; HEADER_SIZE];
        let (total, mut reader) = self
            .request(0, Some(HEADER_SIZE as u64 - 1))
            .map_err(|f| self.fail(f.message))?;
        self.size = total;
        let have = usize::try_from(total.min(HEADER_SIZE as u64)).unwrap_or(HEADER_SIZE);
        header.truncate(have);
        reader
            .read_exact(&mut header)
            .map_err(|e| self.fail(format!("reading the image header: {}", describe_io(&e))))?;
        self.received += header.len() as u64;
        if let Ok(bytes) = <&[u8; HEADER_SIZE]>::try_from(header.as_slice())
            && let Ok(decoded) = Header::decode(bytes)
        {
            self.payload_at = decoded.payload_offset();
            self.payload_end = decoded.unsigned_size();
        }
        self.cache.push((0, header));
        Ok(())
    }

    fn fail(&mut self, message: String) -> anyhow::Error {
        self.failure = Some(message.clone());
        anyhow!(message)
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// `GET` with `Range: bytes=start-[end]`; checks the answer is that range of the same file.
    fn request(
        &mut self,
        start: u64,
        end: Option<u64>,
    ) -> Result<(u64, ureq::BodyReader<'static>), Failure> {
        let range = match end {
            Some(end) => format!("bytes={start}-{end}"),
            None => format!("bytes={start}-"),
        };
        let fatal = |message: String| Failure {
            message,
            retry: false,
        };
        let response = self
            .agent
            .get(&self.url)
            .header("Range", &range)
            .header("Accept-Encoding", "identity")
            .call()
            .map_err(|e| Failure {
                retry: !matches!(
                    e,
                    ureq::Error::TooManyRedirects | ureq::Error::RequireHttpsOnly(_)
                ) && !describe(&e).starts_with("TLS"),
                message: describe(&e),
            })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match status {
            206 => {}
            200 => {
                return Err(fatal(format!(
                    "the server ignored `Range: {range}` (answered 200 with the whole file); \
                     zbctl update needs byte-range support (RFC 9110 §14), which static servers, \
                     CDNs and object stores provide"
                )));
            }
            416 => {
                return Err(fatal(
                    "the file is empty (HTTP 416 for the first bytes)".into(),
                ));
            }
            500..=599 => {
                return Err(Failure {
                    message: format!("server error (HTTP {status})"),
                    retry: true,
                });
            }
            _ => return Err(fatal(status_text(status))),
        }
        check_content(header("content-type"), header("content-encoding")).map_err(fatal)?;
        let content_range = header("content-range").unwrap_or_default();
        let Some((first, total)) = parse_content_range(&content_range) else {
            return Err(fatal(format!(
                "HTTP 206 without a usable Content-Range ({content_range:?})"
            )));
        };
        if first != start {
            return Err(fatal(format!(
                "asked for bytes from {start}, the server sent from {first}"
            )));
        }
        let validator = header("etag").or_else(|| header("last-modified"));
        if self.size != 0 {
            if let (Some(old), None) = (&self.validator, &validator) {
                return Err(fatal(format!(
                    "the file changed on the server during the download (it had ETag or \
                     Last-Modified {old}, the resumed answer has none)"
                )));
            }
            if total != self.size {
                return Err(fatal(format!(
                    "the file changed on the server during the download (size {} then {total})",
                    self.size
                )));
            }
            if let (Some(old), Some(new)) = (&self.validator, &validator)
                && old != new
            {
                return Err(fatal(format!(
                    "the file changed on the server during the download (ETag {old} then {new})"
                )));
            }
        } else {
            self.validator = validator;
        }
        let reader = response
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .reader();
        Ok((total, reader))
    }

    fn read_inner(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), String> {
        let length = buffer.len() as u64;
        let end = offset
            .checked_add(length)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| format!("read of {length} bytes at {offset} beyond the file's end"))?;
        for (at, bytes) in &self.cache {
            if offset >= *at && end <= *at + bytes.len() as u64 {
                let from = usize::try_from(offset - at).map_err(|e| e.to_string())?;
                buffer.copy_from_slice(&bytes[from..from + buffer.len()]);
                return Ok(());
            }
        }
        let payload = offset >= self.payload_at && offset < self.payload_end;
        if !payload {
            // Header, manifest, signature trailer: exactly the bytes asked for, kept.
            let (_, mut reader) = self.request(offset, Some(end - 1)).map_err(|f| f.message)?;
            reader.read_exact(buffer).map_err(|e| describe_io(&e))?;
            self.received += length;
            self.cache.push((offset, buffer.to_vec()));
            return Ok(());
        }
        if !self.payload_started {
            self.payload_started = true;
            self.bar = Some(progress_bar(self.size, self.interactive));
        }
        let mut attempt = 0;
        loop {
            match self.read_stream(offset, buffer) {
                Ok(()) => {
                    if let Some(bar) = &self.bar {
                        bar.set_position(end);
                    }
                    return Ok(());
                }
                Err(failure) if failure.retry && attempt < self.retries => {
                    attempt += 1;
                    self.stream = None;
                    let wait = Duration::from_millis(500 << attempt.min(5));
                    let message = format!(
                        "{}: {} at byte {offset} of {}; resuming with a Range request in {:.1} s \
                         (attempt {attempt} of {})",
                        self.url,
                        failure.message,
                        self.size,
                        wait.as_secs_f64(),
                        self.retries
                    );
                    match &self.bar {
                        Some(bar) if self.interactive => bar.println(message),
                        _ => eprintln!("zbctl: {message}"),
                    }
                    std::thread::sleep(wait);
                }
                Err(failure) => {
                    self.stream = None;
                    return Err(if failure.retry {
                        format!(
                            "{} at byte {offset} of {}, after {attempt} resumed attempts",
                            failure.message, self.size
                        )
                    } else {
                        failure.message
                    });
                }
            }
        }
    }

    /// Reads from the open stream, or opens one at `offset` (to the end of the file).
    fn read_stream(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), Failure> {
        let usable =
            matches!(&self.stream, Some((at, _)) if *at <= offset && offset - at <= SKIP_AHEAD);
        if !usable {
            self.stream = None;
            let (_, reader) = self.request(offset, None)?;
            self.stream = Some((offset, reader));
            self.window_start = (Instant::now(), 0);
        }
        let skip = match &self.stream {
            Some((at, _)) => offset - at,
            None => 0,
        };
        let mut scratch = vec![0u8; usize::try_from(skip.min(64 << 10)).unwrap_or(64 << 10)];
        let mut skipped = 0;
        while skipped < skip {
            let want = usize::try_from((skip - skipped).min(scratch.len() as u64)).unwrap_or(0);
            skipped += self.read_some(&mut scratch[..want])? as u64;
        }
        let mut filled = 0;
        while filled < buffer.len() {
            filled += self.read_some(&mut buffer[filled..])?;
        }
        Ok(())
    }

    /// One read from the open stream (at least one byte), with the speed bound: fewer than
    /// `min_speed` bytes per second over a window of `--timeout` seconds is a failure (retried
    /// like a broken connection), so a server that drips bytes cannot hold a run forever.
    fn read_some(&mut self, buffer: &mut [u8]) -> Result<usize, Failure> {
        let Some((at, reader)) = &mut self.stream else {
            return Err(Failure {
                message: "no stream".into(),
                retry: true,
            });
        };
        let n = loop {
            match reader.read(buffer) {
                Ok(0) => {
                    return Err(Failure {
                        message: format!("the connection closed early (body cut at byte {at})"),
                        retry: true,
                    });
                }
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Failure {
                        message: describe_io(&e),
                        retry: true,
                    });
                }
            }
        };
        *at += n as u64;
        self.received += n as u64;
        let (start, bytes) = &mut self.window_start;
        *bytes += n as u64;
        let elapsed = start.elapsed();
        if elapsed >= self.window {
            let needed = self.min_speed.saturating_mul(self.window.as_secs());
            if *bytes < needed {
                return Err(Failure {
                    message: format!(
                        "too slow: {bytes} bytes in {:.1} s, below --min-speed {} bytes/s",
                        elapsed.as_secs_f64(),
                        self.min_speed
                    ),
                    retry: true,
                });
            }
            *start = Instant::now();
            *bytes = 0;
        }
        Ok(n)
    }
}

/// Refuses a body that is not the image's bytes: a document (an error page, a captive portal)
/// or an encoded body (byte ranges would be of the encoding).
fn check_content(kind: Option<String>, encoding: Option<String>) -> Result<(), String> {
    if let Some(kind) = kind {
        let mime = kind
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime.starts_with("text/") || mime.contains("json") || mime.contains("xml") {
            return Err(format!(
                "Content-Type {kind}: a document, not a .zi image (an error page or a captive \
                 portal?); serve .zi files as application/octet-stream"
            ));
        }
    }
    if let Some(encoding) = encoding
        && !encoding.eq_ignore_ascii_case("identity")
    {
        return Err(format!(
            "Content-Encoding {encoding}: byte ranges of an encoded body are not the image's; \
             serve .zi files without compression"
        ));
    }
    Ok(())
}

/// `Content-Range: bytes first-last/complete-length` (RFC 9110 §14.4): (first, complete
/// length); `None` for an unknown length (`*`) or anything malformed.
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (span, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last) = (
        first.trim().parse::<u64>().ok()?,
        last.trim().parse::<u64>().ok()?,
    );
    let total = total.trim().parse::<u64>().ok()?;
    (first <= last && last < total).then_some((first, total))
}

impl ImageSource for HttpSource {
    type Error = std::io::Error;

    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        self.read_inner(offset, buffer).map_err(|message| {
            self.failure = Some(message.clone());
            std::io::Error::other(message)
        })
    }
}

/// A byte bar on a terminal; nothing otherwise (the timer's journal gets one line at the end).
fn progress_bar(total: u64, interactive: bool) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "downloading [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_pointer_names_the_image() {
        assert_eq!(
            parse_latest("# fleet\nversion=7\nimage = os-7.zi\n").map(|l| l.image),
            Ok("os-7.zi")
        );
        assert!(parse_latest("os-7.zi\n").is_err());
        assert!(parse_latest("image=\n").is_err());
    }

    #[test]
    fn rollout_percentages_and_their_boundaries() {
        for (text, rollout) in [
            ("image=os.zi\nrollout=0\n", Some(0)),
            ("image=os.zi\nrollout = 100\n", Some(100)),
            ("image=os.zi\nrollout=37\n", Some(37)),
            ("image=os.zi\n", None),
        ] {
            assert_eq!(parse_latest(text).unwrap().rollout, rollout, "{text}");
        }
        for (text, line) in [
            ("image=os.zi\nrollout=101\n", 2),
            ("# staged\nimage=os.zi\n\nrollout=-1\n", 4),
            ("rollout=50%\nimage=os.zi\n", 1),
            ("image=os.zi\nrollout=\n", 2),
        ] {
            let error = parse_latest(text).unwrap_err();
            assert!(
                error.starts_with(&format!("line {line}: rollout=")) && error.contains("0 to 100"),
                "{text:?}: {error}"
            );
        }
        // Stable, and different per image; spread evenly over a fleet.
        assert_eq!(
            rollout_bucket("10000000abcdef01", "os-7.zi"),
            rollout_bucket("10000000abcdef01", "os-7.zi")
        );
        let buckets: Vec<u8> = (0..10_000)
            .map(|serial| rollout_bucket(&format!("{serial:016x}"), "os-7.zi"))
            .collect();
        assert!(buckets.iter().all(|bucket| *bucket < 100));
        let taken = |percent: u8| buckets.iter().filter(|b| **b < percent).count();
        assert_eq!(taken(0), 0, "rollout=0 takes no device");
        assert_eq!(taken(100), 10_000, "rollout=100 takes every device");
        let twenty = taken(20);
        assert!(
            (1_800..=2_200).contains(&twenty),
            "rollout=20 took {twenty} of 10000"
        );
        let moved = (0..1_000)
            .filter(|serial| {
                let serial = format!("{serial:016x}");
                rollout_bucket(&serial, "os-7.zi") != rollout_bucket(&serial, "os-8.zi")
            })
            .count();
        assert!(
            moved > 900,
            "each release draws its own canaries ({moved} of 1000 moved)"
        );
        // The bucket as docs/update.md computes it by hand (sha256sum of the same bytes).
        let digest = Sha256::digest(b"zboot rollout v1\0SERIAL\0os.zi");
        let first = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(u64::from(rollout_bucket("SERIAL", "os.zi")), first % 100);
    }

    #[test]
    fn a_disk_image_file_has_no_partition_devices_to_freeze() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let image = dir.path().join("disk.img");
        fs::write(&image, [0u8; 512]).unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("by-id-link");
        std::os::unix::fs::symlink(&image, &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(partition_device(&image, 1), Ok(None)));
        assert!(matches!(partition_device(&link, 1), Ok(None)));
        assert!(partition_device(&dir.path().join("missing"), 1).is_err());
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        assert_eq!(
            parse_content_range("bytes 0-255/6308129"),
            Some((0, 6_308_129))
        );
        assert_eq!(parse_content_range("bytes 42-42/43"), Some((42, 43)));
        assert_eq!(parse_content_range("bytes 0-255/*"), None);
        assert_eq!(parse_content_range("bytes 10-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn decisions_follow_the_state() {
        let mut state = State::fresh();
        state.slots[Slot::A.index()].image_version = 5;
        assert_eq!(decide(&state, 6), Verdict::Install(Slot::B));
        assert!(matches!(
            decide(&state, 5),
            Verdict::Skip(exit::UP_TO_DATE, _)
        ));
        state.min_version = 8;
        assert!(matches!(
            decide(&state, 6),
            Verdict::Skip(exit::UP_TO_DATE, _)
        ));
        state.min_version = 0;
        state.slots[Slot::B.index()].state = SlotState::Bad;
        state.slots[Slot::B.index()].image_version = 6;
        assert!(matches!(
            decide(&state, 6),
            Verdict::Skip(exit::UP_TO_DATE, _)
        ));
        assert_eq!(decide(&state, 7), Verdict::Install(Slot::B));
        state.slots[Slot::A.index()].state = SlotState::Trial;
        assert!(matches!(decide(&state, 7), Verdict::Skip(exit::PENDING, _)));
    }
}
