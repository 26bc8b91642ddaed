//! zboot on a stock Raspberry Pi layout: boot what the firmware would have booted.
//!
//! A unit running Raspberry Pi OS whose `config.txt` was pointed at `zboot.img` (by hand,
//! or by `zbctl adopt` before its reflash) has no slot state and no slot directories. zboot
//! must not leave it worse off than the firmware would: it reads `config.txt` as the
//! firmware does on a CM4 ([`recovery_proto::config_txt`]), loads the kernel, initramfs
//! and command line it names, and hands over with the firmware's device tree
//! (docs/bring-your-own-image.md, "zboot on a stock layout").
//!
//! - `config.stock.txt`, when present, is the stock configuration (`zbctl adopt` keeps the
//!   original there); otherwise `config.txt`, where any `kernel=` naming `zboot.img` is
//!   zboot's own line and skipped.
//! - `include` is followed one level deep.
//! - The files are not verified: a stock layout has no `slot.txt`. The command line is
//!   passed as written (its `root=` is the stock one), with `console=serial0`/`serial1`
//!   translated as the firmware does. No slot state is written and the hang guard is not
//!   armed (a stock system does not confirm its boots).

// Errors carry names inline (no allocator) and are made at most once per boot.
#![allow(clippy::result_large_err)]

use core::fmt;

use recovery_proto::config_txt::{self, BootFiles, Entry, Filters, Reader, Value};

use crate::boot_partition::{BootPartition, FileError};
use crate::layout::LoadArea;
use crate::slot_files::{self, LoadedSlot, SlotError, StockFiles};

/// The largest `config.txt` (or included file) zboot reads.
const CONFIG_LIMIT: usize = 8192;

/// Why a stock layout could not be booted.
#[derive(Debug)]
pub enum StockError {
    /// `config.txt` (or an included file) cannot be read.
    Config { file: Value, error: FileError },
    /// A config file is larger than zboot reads.
    TooLarge { file: Value },
    /// A config file is not UTF-8 text.
    NotText { file: Value },
    /// A name zboot cannot open (a path more than one directory deep).
    Path { what: &'static str, path: Value },
    /// The kernel, initramfs and command line are in different directories.
    Directories { path: Value },
    /// A file could not be loaded.
    Load(SlotError),
}

impl fmt::Display for StockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { file, error } => write!(f, "{file}: {error}"),
            Self::TooLarge { file } => {
                write!(
                    f,
                    "{file}: larger than the {CONFIG_LIMIT} bytes zboot reads"
                )
            }
            Self::NotText { file } => write!(f, "{file}: not UTF-8 text"),
            Self::Path { what, path } => write!(
                f,
                "config.txt names the {what} `{path}`, more than one directory deep, which \
                 zboot cannot open"
            ),
            Self::Directories { path } => write!(
                f,
                "`{path}` is not in the kernel's directory; zboot loads a stock layout's files \
                 from one directory"
            ),
            Self::Load(error) => write!(f, "{error}"),
        }
    }
}

/// Whether the boot partition holds a stock layout: no slot has a `slot.txt`.
pub fn is_stock_layout(partition: &BootPartition<'_>) -> bool {
    ["A", "B", "SAFE"].iter().all(|slot| {
        partition
            .find(Some(slot), slot_files::SLOT_MANIFEST)
            .is_err()
    })
}

fn value(text: &str) -> Value {
    let mut out = Value::new();
    let _ = out.push_str(
        text.get(..text.len().min(config_txt::LINE_LIMIT))
            .unwrap_or(""),
    );
    out
}

fn is_zboot(name: &str) -> bool {
    name.trim_start_matches('/')
        .eq_ignore_ascii_case("zboot.img")
}

/// Reads one config file into `buffer`.
fn read_config<'b>(
    partition: &BootPartition<'_>,
    name: &str,
    buffer: &'b mut [u8; CONFIG_LIMIT],
) -> Result<&'b str, StockError> {
    let file = partition
        .find(None, name)
        .map_err(|error| StockError::Config {
            file: value(name),
            error,
        })?;
    if file.sectors_bytes() > CONFIG_LIMIT {
        return Err(StockError::TooLarge { file: value(name) });
    }
    let bytes = partition
        .read_small(None, name, buffer)
        .map_err(|error| StockError::Config {
            file: value(name),
            error,
        })?;
    core::str::from_utf8(bytes).map_err(|_| StockError::NotText { file: value(name) })
}

/// Feeds a config file's lines to `boot`; returns the first `include` it names (followed
/// by the caller, one level deep).
fn apply(text: &str, filters: &mut Filters, boot: &mut BootFiles, nested: bool) -> Option<Value> {
    let mut include = None;
    for line in Reader::new(text, &config_txt::CM4, filters) {
        match line.entry {
            Entry::Setting {
                key: "kernel",
                value: name,
            } if is_zboot(name) => {}
            Entry::Include(name) if line.active => {
                if nested || include.is_some() {
                    log::warn!("stock layout: include {name} not followed (one level, one file)");
                } else {
                    include = Some(value(name));
                }
            }
            _ => boot.apply(&line),
        }
    }
    include
}

/// Splits an OS file's path into the directory (`os_prefix`) and the name.
fn split<'p>(
    what: &'static str,
    path: &'p Value,
) -> Result<(Option<&'p str>, &'p str), StockError> {
    match path.split_once('/') {
        None => Ok((None, path.as_str())),
        Some((directory, name)) if !name.contains('/') => Ok((Some(directory), name)),
        Some(_) => Err(StockError::Path {
            what,
            path: path.clone(),
        }),
    }
}

/// The stock layout's kernel, initramfs and command line, loaded into `area`.
pub fn load(partition: &BootPartition<'_>, area: &mut LoadArea) -> Result<LoadedSlot, StockError> {
    let mut buffer = [0u8; CONFIG_LIMIT];
    let name = if partition.find(None, "config.stock.txt").is_ok() {
        "config.stock.txt"
    } else {
        "config.txt"
    };
    let text = read_config(partition, name, &mut buffer)?;
    let mut filters = Filters::default();
    let mut boot = BootFiles::default();
    if let Some(include) = apply(text, &mut filters, &mut boot, false) {
        let mut nested = [0u8; CONFIG_LIMIT];
        let text = read_config(partition, &include, &mut nested)?;
        apply(text, &mut filters, &mut boot, true);
    }
    let path = |what: &'static str, name: &str| {
        boot.path(name).ok_or(StockError::Path {
            what,
            path: value(name),
        })
    };
    let kernel = path("kernel", &boot.kernel_name())?;
    let initrd = match boot.initramfs_names() {
        Some(names) => {
            let first = names.split(',').next().unwrap_or("");
            if names.contains(',') {
                log::warn!("stock layout: initramfs {names}: only {first} is loaded");
            }
            Some(path("initramfs", first)?)
        }
        None => None,
    };
    let cmdline = path("command line", &boot.cmdline_name())?;
    log::info!(
        "stock layout ({name}): kernel {kernel}, initramfs {}, command line {cmdline}",
        initrd.as_deref().unwrap_or("none")
    );
    let (directory, kernel_name) = split("kernel", &kernel)?;
    let same_directory = |what: &'static str, path: &'_ Value| -> Result<(), StockError> {
        if split(what, path)?.0 == directory {
            Ok(())
        } else {
            Err(StockError::Directories { path: path.clone() })
        }
    };
    let initrd_name = match &initrd {
        Some(path) => {
            same_directory("initramfs", path)?;
            Some(split("initramfs", path)?.1)
        }
        None => None,
    };
    same_directory("command line", &cmdline)?;
    let (_, cmdline_name) = split("command line", &cmdline)?;
    let files = StockFiles {
        directory,
        kernel: kernel_name,
        initrd: initrd_name,
        cmdline: cmdline_name,
    };
    slot_files::load_stock(partition, &files, area).map_err(StockError::Load)
}
