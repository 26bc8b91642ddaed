//! `zbctl image capture`: a `.zi` of the running unit, to replicate a golden unit
//! (docs/bring-your-own-image.md, "Capturing a running unit").
//!
//! The boot partition's files and the running root are read into two tarballs with GNU
//! tar while the system keeps running, then converted as `image convert -b -r` converts
//! tarballs (a stock unit into A/B/SAFE/DATA). The root is walked on its own file system
//! only (`--one-file-system`: /proc, /sys, /dev, /run, the boot partition and any other
//! mount are not entered; their mount points stay, empty), with owners, xattrs and ACLs.
//!
//! The trade-off, chosen over copying the blocks of a frozen file system: each file is read
//! whole and consistent, but not all files at one instant, and a file written during the
//! walk is reported (tar's "file changed as we read it"). Freezing the root instead
//! (`fsfreeze`) gives one instant but stops every writer of the running unit, its logger
//! included, for the whole copy, and copies the free blocks' layout with it. For a golden
//! image, stop the services that write (or capture from a read-only root) and the two agree.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget};

use super::image_convert::{self, ConvertArgs};
use super::usb;

/// Arguments of `image capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The `.zi` to write.
    #[arg(short, long, value_name = "FILE", required_unless_present = "usb")]
    pub output: Option<PathBuf>,
    /// Also make a recovery stick of it on this device (or stick image file), as
    /// `usb create` does.
    #[arg(long, value_name = "DEVICE")]
    pub usb: Option<PathBuf>,
    /// Image name.
    #[arg(long)]
    pub name: String,
    /// Image version, for anti-rollback.
    #[arg(long)]
    pub version: u32,
    /// The mounted boot partition.
    #[arg(long, default_value = "/boot/firmware", value_name = "DIR")]
    pub boot_files: PathBuf,
    /// The root to capture.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Where the tarballs go while the image is made (default: beside --output, else
    /// /var/tmp); it needs room for the root's files twice over.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The zboot.img to embed (default: the workspace's release build).
    #[arg(long, value_name = "FILE")]
    pub loader: Option<PathBuf>,
    /// Sign with this private key.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Size of each root partition in MiB (default: the captured files + 25% + 64 MiB).
    #[arg(long, value_name = "MIB")]
    pub root_mib: Option<u64>,
    /// Size of the DATA partition (K/M/G suffixes).
    #[arg(long, default_value = "256M", value_parser = super::disk_create::parse_size)]
    pub data_size: u64,
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_message(message.to_string());
    bar
}

/// `dir` relative to `root` as tar names members under it (`./var/tmp/x`), if inside.
fn member_of(root: &Path, dir: &Path) -> Option<String> {
    let root = fs::canonicalize(root).ok()?;
    let dir = fs::canonicalize(dir).ok()?;
    let relative = dir.strip_prefix(&root).ok()?;
    Some(format!("./{}", relative.display()))
}

/// Tars the running root; tar's exit status 1 (files changed while read) is a warning.
fn tar_root(root: &Path, exclude: &[String], out: &Path) -> Result<()> {
    let mut command = Command::new("tar");
    command
        .args(["--create", "--file"])
        .arg(out)
        .args([
            "--one-file-system",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "--sparse",
        ])
        // Kernel and runtime trees that may sit on the root's own file system.
        .args([
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "--exclude=./dev/*",
        ])
        .args(["--exclude=./run/*", "--exclude=./tmp/*"]);
    for path in exclude {
        command.arg(format!("--exclude={path}"));
    }
    let output = command
        .arg("-C")
        .arg(root)
        .arg(".")
        .output()
        .context("running tar on the root")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            eprintln!(
                "warning: {}: files changed while they were read (stop the services that \
                 write for a consistent image):\n{}",
                root.display(),
                stderr.trim()
            );
            Ok(())
        }
        _ => bail!(
            "tar of {} failed ({}): {}",
            root.display(),
            output.status,
            stderr.trim()
        ),
    }
}

/// Runs `image capture`.
pub fn capture(args: &CaptureArgs, out: &mut dyn Write) -> Result<()> {
    ensure!(
        args.boot_files.join("config.txt").is_file()
            || super::image_tar::find_any_case(&args.boot_files, "config.txt").is_some(),
        "{}: no config.txt: not the mounted boot partition (give --boot-files)",
        args.boot_files.display()
    );
    let parent = args
        .output
        .as_ref()
        .and_then(|o| o.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty());
    let base = args
        .work_dir
        .clone()
        .or(parent)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let work = tempfile::Builder::new()
        .prefix(".zbctl-capture-")
        .tempdir_in(&base)
        .with_context(|| format!("making a work directory in {}", base.display()))?;
    let (boot_tar, root_tar) = (work.path().join("boot.tar"), work.path().join("root.tar"));

    let bar = spinner("capturing the boot partition");
    image_convert::run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&boot_tar)
            .arg("-C")
            .arg(&args.boot_files)
            .arg("."),
    )?;
    bar.set_message(format!("capturing the root {}", args.root.display()));
    // Never the work directory or the output itself, when they sit on the root.
    let mut exclude: Vec<String> = member_of(&args.root, work.path()).into_iter().collect();
    if let Some(output) = &args.output
        && let Some(dir) = output.parent().and_then(|p| member_of(&args.root, p))
        && let Some(name) = output.file_name()
    {
        exclude.push(format!("{dir}/{}", name.to_string_lossy()));
    }
    tar_root(&args.root, &exclude, &root_tar)?;
    bar.finish_and_clear();
    writeln!(
        out,
        "captured {} ({} bytes) and {} ({} bytes)",
        args.boot_files.display(),
        fs::metadata(&boot_tar)?.len(),
        args.root.display(),
        fs::metadata(&root_tar)?.len()
    )?;

    let zi = args
        .output
        .clone()
        .unwrap_or_else(|| work.path().join("capture.zi"));
    let convert = ConvertArgs {
        from_disk: None,
        boot_tar: Some(boot_tar),
        root_tar: Some(root_tar),
        output: zi.clone(),
        name: Some(args.name.clone()),
        version: Some(args.version),
        chunk_kib: 1024,
        level: 6,
        hash: super::disk_create::HashChoice::Blake3,
        boot_mib: 256,
        root_mib: args.root_mib,
        sign_key: args.sign_key.clone(),
        root_partition: None,
        b_empty: false,
        slot_dtb: None,
        data_size: args.data_size,
        loader: args.loader.clone(),
        safe: None,
        safe_boot: None,
        safe_root: None,
        manifest: None,
        dry_run: false,
    };
    image_convert::convert(&convert, out)?;
    if let Some(device) = &args.usb {
        usb::create(
            &usb::CreateArgs {
                zi,
                output: device.clone(),
                name: None,
                manifest: None,
                size: None,
                force: false,
            },
            out,
        )?;
    }
    Ok(())
}
