//! `zbctl update check|apply`: over-the-air updates from the endpoint named in
//! `zbmanifest.txt` (an HTTPS or, when allowed, HTTP URL; or a USB stick / local file).
//!
//! `check` reads only the remote image's header, signature trailer and manifest (HTTP Range
//! requests) and compares its version with the slot state. `apply` streams the image once,
//! straight into the slot an update goes to (`install::Flow::Stream`: nothing is stored on the
//! device's disk), resuming a broken download with a Range request from the byte it reached,
//! then arms the slot as a trial like `zbctl install`. docs/update.md is the operator's guide.

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use recovery_proto::image::format::HEADER_SIZE;
use recovery_proto::image::{Header, Image, ImageSource};
use recovery_proto::manifest::Manifest;
use recovery_proto::{Slot, SlotState, State};

use super::install::{self, AnySource, DynSource, Flow, InstallArgs};
use super::target::{self, Target};

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
    /// Another `zbctl update` holds the lock.
    pub const BUSY: u8 = 8;
    /// The last update is still an unconfirmed trial (waiting for `zbctl mark-good`).
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
    /// Seconds before connecting, a response or any read of the body is given up.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// Times a broken download is resumed (Range request from the byte reached) before
    /// `apply` gives up.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,
    /// The lock that keeps two runs from overlapping.
    #[arg(long, default_value = "/run/zboot-update.lock", value_name = "FILE")]
    pub lock: PathBuf,
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
                 it (the image's signature, public_key=, is then its only protection)"
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
            allow_http,
            public_key: manifest.public_key,
        })
    }
}

/// Runs `zbctl update ...`.
pub fn run(target: &Target, command: &UpdateCommand, out: &mut dyn Write) -> Result<()> {
    let (common, apply) = match command {
        UpdateCommand::Check(common) => (common, None),
        UpdateCommand::Apply(args) => (&args.common, Some(args)),
    };
    let _lock = lock(&common.lock)?;
    let (manifest_bytes, origin) = read_target_manifest(target)?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|e| anyhow!("{origin}: {e}"))?;
    let config = Config::from_manifest(&manifest, &origin)?;
    let interactive = std::io::stderr().is_terminal();
    match config.kind {
        EndpointKind::Local => {
            let name = config
                .name
                .clone()
                .or_else(|| config.recovery_name.clone())
                .unwrap_or_else(|| install::DEFAULT_STICK_NAME.to_string());
            let outcome =
                install::with_source(Path::new(&config.endpoint), &name, |source, what| {
                    process(target, &config, source, what, apply, interactive, out)
                })?;
            conclude(&outcome, None, out)
        }
        EndpointKind::Https | EndpointKind::Http => {
            let agent = agent(&config, common)?;
            let url = resolve_image_url(&agent, &config)?;
            let mut source = HttpSource::new(agent, url.clone(), common.retries, interactive);
            let result = source.start().and_then(|()| {
                process(target, &config, &mut source, &url, apply, interactive, out)
            });
            source.finish();
            match (result, source.failure.take()) {
                (Ok(outcome), _) => conclude(&outcome, Some(source.received), out),
                (Err(error), Some(failure)) if !error.is::<Finished>() => {
                    let slot_note = if source.payload_started {
                        "; the slot being written stays marked bad, ACTIVE is untouched"
                    } else {
                        "; nothing was written"
                    };
                    Err(endpoint_error(format!("{url}: {failure}{slot_note}")))
                }
                (Err(error), _) if source.payload_started && !error.is::<Finished>() => {
                    Err(with_note(
                        &error,
                        "; the slot being written stays marked bad, ACTIVE is untouched",
                    ))
                }
                (Err(error), _) => Err(error),
            }
        }
    }
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

/// Holds the lock file (`flock`, released when the process ends, even when killed).
fn lock(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("creating the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(finished(
            exit::BUSY,
            format!(
                "another zbctl update is running (it holds {}); nothing done",
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
fn read_boot_file(target: &Target, name: &str) -> Result<Option<Vec<u8>>> {
    match target {
        Target::BootDir(dir) => match super::image_tar::find_any_case(dir, name) {
            Some(path) => Ok(Some(
                fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )),
            None => Ok(None),
        },
        Target::Image(path) | Target::Device(path) => {
            let mut file =
                File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let (start, length) = install::fat_volume(&file, path)?;
            let fs = fatfs::FileSystem::new(
                super::disk::Window::new(&mut file, start, length),
                fatfs::FsOptions::new(),
            )
            .with_context(|| format!("{}: the boot partition's FAT", path.display()))?;
            let Ok(mut found) = fs.root_dir().open_file(name) else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            found
                .read_to_end(&mut bytes)
                .with_context(|| format!("{}: reading {name}", path.display()))?;
            Ok(Some(bytes))
        }
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

/// Reads the image's header (and signature, manifest), decides, and for `apply` installs.
fn process(
    target: &Target,
    config: &Config,
    source: &mut AnySource<'_>,
    what: &str,
    apply: Option<&ApplyArgs>,
    interactive: bool,
    out: &mut dyn Write,
) -> Result<Outcome> {
    let state = installed_state(target)?;
    let (name, version) = {
        let mut manifest = vec![0u8; 16 << 20];
        let mut source = DynSource(source);
        let image = Image::open(&mut source, &mut manifest, config.public_key.as_ref())
            .map_err(|e| super::image::refuse(Path::new(what), &e))?;
        let header = image.header();
        (header.name().to_string(), header.image_version)
    };
    let slot = match decide(&state, version) {
        Verdict::Skip(code, why) => {
            return Err(finished(
                code,
                format!("{what}: {name} version {version}: {why}"),
            ));
        }
        Verdict::Install(slot) => slot,
    };
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
    let mut disk = install::open_target(target, &install_args)?;
    let frozen = match target {
        Target::Device(device) => freeze_boot_mounts(device, disk.boot_partition_number())?,
        _ => Vec::new(),
    };
    if !frozen.is_empty() {
        // Read the partition again now that the mount has written out what it held.
        disk = install::open_target(target, &install_args)?;
    }
    let mut details: Vec<u8> = Vec::new();
    let report = install::install_from(
        &mut disk,
        &mut DynSource(source),
        what,
        &install_args,
        Flow::Stream,
        &mut details,
    )?;
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
fn freeze_boot_mounts(disk: &Path, partition: u32) -> Result<Vec<PathBuf>> {
    let name = disk.to_string_lossy();
    let device = if name.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{name}p{partition}")
    } else {
        format!("{name}{partition}")
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = mounts_of(&mountinfo, Path::new(&device));
    for mount in &mounts {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(mount)
            .status();
        match status {
            Ok(status) if status.success() => {}
            other => bail!(
                "the boot partition {device} is mounted at {} and could not be remounted \
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

/// Mount points of vfat/msdos file systems whose source is `device`, from mountinfo text
/// (format: proc(5)).
fn mounts_of(mountinfo: &str, device: &Path) -> Vec<PathBuf> {
    let unescape = |field: &str| {
        field
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\")
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let (fs_type, source) = (right.next()?, right.next()?);
            (matches!(fs_type, "vfat" | "msdos") && Path::new(&unescape(source)) == device)
                .then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
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
    let builder = builder.tls_config(tls_config(config)?);
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

#[cfg(feature = "https")]
fn tls_config(config: &Config) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
    let certs: Vec<Certificate<'static>> = if let Some(path) = &config.ca_cert {
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
    let image = parse_latest(&text).map_err(|e| endpoint_error(format!("{pointer}: {e}")))?;
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

/// The `latest` pointer file: `key=value` lines, `#` comments; `image=` names the `.zi`
/// (relative to the pointer's URL, or absolute). Unknown keys are ignored.
fn parse_latest(text: &str) -> Result<&str, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            l.split_once('=')
                .filter(|(k, _)| k.trim() == "image")
                .map(|(_, v)| v.trim())
        })
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "not a latest pointer file: no image=<file name or URL> line".to_string())
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
fn describe(error: &ureq::Error) -> String {
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
/// the header, trailer and manifest (kept in memory, so `apply` reads them once), one
/// open-ended range from the first payload byte on, and a new range from the byte reached when
/// the stream breaks.
struct HttpSource {
    agent: ureq::Agent,
    url: String,
    size: u64,
    /// `ETag` (else `Last-Modified`) of the first response: a resumed range must come from the
    /// same file.
    validator: Option<String>,
    payload_at: u64,
    cache: Vec<(u64, Vec<u8>)>,
    stream: Option<(u64, ureq::BodyReader<'static>)>,
    retries: u32,
    bar: Option<ProgressBar>,
    interactive: bool,
    payload_started: bool,
    failure: Option<String>,
    /// Body bytes received.
    received: u64,
}

impl HttpSource {
    fn new(agent: ureq::Agent, url: String, retries: u32, interactive: bool) -> Self {
        Self {
            agent,
            url,
            size: 0,
            validator: None,
            payload_at: u64::MAX,
            cache: Vec::new(),
            stream: None,
            retries,
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
        let payload = offset >= self.payload_at;
        if !payload {
            // Header, manifest, trailer: exactly the bytes asked for, kept.
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
        }
        let Some((at, reader)) = &mut self.stream else {
            return Err(Failure {
                message: "no stream".into(),
                retry: true,
            });
        };
        let broken = |e: std::io::Error| Failure {
            message: describe_io(&e),
            retry: true,
        };
        let skip = offset - *at;
        if skip > 0 {
            let copied = std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())
                .map_err(broken)?;
            *at += copied;
            self.received += copied;
            if copied < skip {
                return Err(Failure {
                    message: "the connection closed early".into(),
                    retry: true,
                });
            }
        }
        let mut filled = 0;
        while filled < buffer.len() {
            match reader.read(&mut buffer[filled..]) {
                Ok(0) => {
                    return Err(Failure {
                        message: format!(
                            "the connection closed early (body cut at byte {})",
                            *at + filled as u64
                        ),
                        retry: true,
                    });
                }
                Ok(n) => {
                    filled += n;
                    self.received += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(broken(e)),
            }
        }
        *at += filled as u64;
        Ok(())
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
            parse_latest("# fleet\nversion=7\nimage = os-7.zi\n"),
            Ok("os-7.zi")
        );
        assert!(parse_latest("os-7.zi\n").is_err());
        assert!(parse_latest("image=\n").is_err());
    }

    #[test]
    fn boot_partition_mounts_are_found() {
        let mountinfo = "\
22 1 179:2 / / rw,relatime shared:1 - ext4 /dev/mmcblk0p2 rw
30 22 179:1 / /boot/firmware rw,relatime shared:2 - vfat /dev/mmcblk0p1 rw,fmask=0022
31 22 179:1 / /mnt/my\\040boot rw - vfat /dev/mmcblk0p1 rw
32 22 7:0 / /mnt/other rw - vfat /dev/mmcblk1p1 rw
";
        assert_eq!(
            mounts_of(mountinfo, Path::new("/dev/mmcblk0p1")),
            [
                PathBuf::from("/boot/firmware"),
                PathBuf::from("/mnt/my boot")
            ]
        );
        assert!(mounts_of(mountinfo, Path::new("/dev/mmcblk0p2")).is_empty());
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
