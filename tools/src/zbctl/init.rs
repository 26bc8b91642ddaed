//! `zbctl init-state`: create the preallocated, contiguous state file and a fresh state.

use std::fs::{File, OpenOptions};
use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use recovery_proto::fat::FatError;
use recovery_proto::locate::{
    LocateError, STATE_FILE_NAME, STATE_FILE_SIZE, find_boot_volume, locate_state,
};
use recovery_proto::state::{DEFAULT_MAX_BOOT_FAILURE, MAX_BOOT_FAILURE_LIMIT};
use recovery_proto::{BLOCK_SIZE, RedundantStore, State};

use super::disk::{FileDisk, Window};
use super::target::{self, Target};

/// Options of `init-state`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replace an existing valid state, or recreate a truncated or fragmented state file.
    #[arg(long)]
    pub force: bool,
    /// Consecutive unconfirmed boots before a slot is abandoned (1–15).
    #[arg(long, default_value_t = DEFAULT_MAX_BOOT_FAILURE, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_BOOT_FAILURE_LIMIT)))]
    pub max_boot_failure: u8,
    /// Whether a boot ended by a power-on reset counts as failed.
    #[arg(long, default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    pub count_power_loss: bool,
    /// Minimum accepted image version for A and B (anti-rollback).
    #[arg(long, default_value_t = 0)]
    pub min_version: u32,
}

fn parse_yes_no(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("expected yes or no, got '{value}'")),
    }
}

/// Runs `init-state`.
pub fn init_state(target: &Target, args: &InitArgs, out: &mut dyn Write) -> Result<()> {
    let mut fresh = State::fresh();
    fresh.max_boot_failure = args.max_boot_failure;
    fresh.count_power_loss = args.count_power_loss;
    fresh.min_version = args.min_version;

    let created = prepare_file(target, args.force)?;
    let mut opened = target::open(target)?;
    let mut store = RedundantStore::new(opened.lbas);
    if let Ok((_, report)) = store.load(&mut opened.disk)
        && !args.force
    {
        let sequence = match report.copies.get(report.used) {
            Some(recovery_proto::store::CopyStatus::Valid { sequence }) => *sequence,
            _ => 0,
        };
        bail!(
            "{} already holds a valid slot state (sequence {sequence}); `--force` would replace it \
             with a fresh one: A active, B backup, all slots good, counters and boot history cleared",
            opened.description
        );
    }
    store
        .format(&mut opened.disk, &fresh)
        .with_context(|| format!("writing both copies to {}", opened.description))?;
    writeln!(
        out,
        "{} {}; fresh state written to both copies (A active, B backup, max_boot_failure {}, count_power_loss {})",
        if created { "created" } else { "reused" },
        opened.description,
        fresh.max_boot_failure,
        if fresh.count_power_loss { "yes" } else { "no" }
    )?;
    Ok(())
}

/// Makes sure a usable state file exists; returns whether it was (re)created.
fn prepare_file(target: &Target, force: bool) -> Result<bool> {
    match target {
        Target::BootDir(dir) => {
            let existing = target::find_in_dir(dir)?;
            if let Some(path) = &existing {
                let size = std::fs::metadata(path)?.len();
                if size == u64::from(STATE_FILE_SIZE) {
                    return Ok(false);
                }
                if !force {
                    bail!(
                        "{} is {size} bytes, expected {STATE_FILE_SIZE}; `--force` would recreate it",
                        path.display()
                    );
                }
            }
            let path = existing.unwrap_or_else(|| dir.join(STATE_FILE_NAME));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&[0; STATE_FILE_SIZE as usize])?;
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Target::Device(path) | Target::Image(path) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut disk = FileDisk::new(file)?;
            match locate_state(&mut disk) {
                Ok(_) => Ok(false),
                Err(LocateError::Fat {
                    error: FatError::NotFound,
                    ..
                }) => {
                    create_in_fat(&mut disk, false)?;
                    check_contiguous(target, &mut disk)?;
                    Ok(true)
                }
                Err(
                    error @ (LocateError::TooSmall { .. }
                    | LocateError::Fat {
                        error:
                            FatError::Fragmented { .. }
                            | FatError::ChainTooShort { .. }
                            | FatError::ChainTooLong { .. },
                        ..
                    }),
                ) => {
                    if !force {
                        return Err(target::explain_locate(target, &error));
                    }
                    create_in_fat(&mut disk, true)?;
                    check_contiguous(target, &mut disk)?;
                    Ok(true)
                }
                Err(error) => Err(target::explain_locate(target, &error)),
            }
        }
    }
}

/// Creates (or recreates) the state file with the `fatfs` crate inside the boot volume.
fn create_in_fat(disk: &mut FileDisk, replace: bool) -> Result<()> {
    let (partition, volume) = find_boot_volume(disk).map_err(|e| anyhow!("{e}"))?;
    let start = partition.map_or(0, |p| p.start_lba) * BLOCK_SIZE as u64;
    let len = u64::from(volume.total_sectors) * BLOCK_SIZE as u64;
    let window = Window::new(disk.file_mut(), start, len);
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new())
        .context("opening the FAT boot volume")?;
    {
        let root = fs.root_dir();
        if replace {
            root.remove(STATE_FILE_NAME)
                .with_context(|| format!("removing the old {STATE_FILE_NAME}"))?;
        }
        let mut file = root
            .create_file(STATE_FILE_NAME)
            .with_context(|| format!("creating {STATE_FILE_NAME}"))?;
        file.truncate()?;
        file.write_all(&[0; STATE_FILE_SIZE as usize])
            .with_context(|| format!("allocating {STATE_FILE_NAME}"))?;
        file.flush()?;
    }
    fs.unmount().context("flushing the FAT boot volume")?;
    disk.file_mut().sync_all()?;
    Ok(())
}

/// Proves the new file contiguous with our own walker (what the loader will check).
fn check_contiguous(target: &Target, disk: &mut FileDisk) -> Result<()> {
    match locate_state(disk) {
        Ok(_) => Ok(()),
        Err(error) => Err(target::explain_locate(target, &error)
            .context(format!("the newly created {STATE_FILE_NAME} is not usable"))),
    }
}
