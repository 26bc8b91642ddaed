//! The `.zi` benchmark (`cargo xtask bench-image` calls [`run_image_benchmark`]): a 1 GiB zboot
//! disk about 30 % used (a copy of part of `/usr/share` as root A's ext4, `mke2fs -d`; the FAT
//! boot partition from `zbctl disk create`), then, in one run and on the same bytes:
//!
//! * `zbctl image convert --from-disk` against `gzip -6` of the whole disk (wall time, size);
//! * decoding: inflate + SHA-256 of every chunk + writing the disk to a file, against
//!   `zcat | sha256sum` (and `zcat > file`);
//! * `zbctl install` of the image into slot B of a copy of the disk: bytes written against
//!   the image's used bytes (data + fill) and the disk size.
//!
//! Every tool runs in this process (the library functions behind the CLI) except gzip/zcat.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use recovery_proto::image::{Content, Decoder};

use super::image::{FileSource, Opened};
use super::image_convert::run_tool;
use super::install::InstallReport;
use super::{Cli, Target};

const MIB: u64 = 1 << 20;

/// Sizes of a benchmark run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Disk size in MiB (power of two).
    pub disk_mib: u64,
    /// Boot, root (A and B each) and SAFE partition sizes in MiB.
    pub partitions_mib: (u64, u64, u64),
    /// Bytes of files copied from `tree_source` into root A.
    pub tree_bytes: u64,
    /// Where the file tree comes from.
    pub tree_source: &'static str,
}

impl BenchConfig {
    /// The documented benchmark: 1 GiB, 64 MiB boot, 448 MiB roots, 32 MiB SAFE, 288 MiB of
    /// `/usr/share` in root A (about 30 % of the disk in use).
    pub const STANDARD: Self = Self {
        disk_mib: 1024,
        partitions_mib: (64, 448, 32),
        tree_bytes: 288 * MIB,
        tree_source: "/usr/share",
    };

    /// A small run for the smoke test.
    pub const SMOKE: Self = Self {
        disk_mib: 128,
        partitions_mib: (40, 32, 8),
        tree_bytes: 6 * MIB,
        tree_source: "/usr/share",
    };
}

/// Runs the standard benchmark in `work_dir` (about 3 GiB of scratch space) and prints the
/// table to `out`.
pub fn run_image_benchmark(work_dir: &Path, out: &mut dyn Write) -> Result<()> {
    run_with(work_dir, BenchConfig::STANDARD, out)
}

/// Copies regular files from `from` (sorted, depth first) into `to` until `budget` bytes.
fn copy_tree(from: &Path, to: &Path, budget: &mut u64) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(()); // unreadable directories are skipped
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    fs::create_dir_all(to)?;
    for entry in entries {
        if *budget == 0 {
            break;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, budget)?;
        } else if kind.is_file() {
            let Ok(size) = entry.metadata().map(|m| m.len()) else {
                continue;
            };
            if size > *budget || fs::copy(entry.path(), &target).is_err() {
                continue;
            }
            *budget -= size;
        }
    }
    Ok(())
}

/// Deterministic bytes that compress like code (a mix of repeats and noise).
fn pseudo_binary(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if i % 16 < 10 {
                (i / 64) as u8
            } else {
                state as u8
            }
        })
        .collect()
}

fn zbctl(args: &[&str], out: &mut dyn Write) -> Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("zbctl").chain(args.iter().copied()))
        .with_context(|| format!("zbctl {args:?}"))?;
    super::run(&cli, out).with_context(|| format!("zbctl {}", args.join(" ")))
}

fn timed<T>(work: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = work()?;
    Ok((value, started.elapsed()))
}

fn shell(script: &str) -> Result<Duration> {
    let ((), took) = timed(|| {
        run_tool(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null()),
        )
    })?;
    Ok(took)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{}: not UTF-8", path.display()))
}

/// Decodes every region of `zi` into `disk` (the layout's offsets): what a reflash does.
fn decode_to_file(zi: &Path, disk: &Path) -> Result<u64> {
    let mut opened = Opened::new(zi, None)?;
    let mut source = FileSource::open(zi)?;
    let image = opened.image().map_err(|e| super::image::refuse(zi, &e))?;
    let file = File::create(disk)?;
    file.set_len(image.header().disk_size)?;
    let mut decoder = Box::new(Decoder::new());
    let mut buffer = vec![0u8; image.header().chunk_size as usize];
    let mut chunks = image.chunks(0);
    let mut written = 0;
    let zeros = vec![0u8; usize::try_from(MIB)?];
    while let Some(chunk) = chunks
        .next_chunk(&image, &mut source, &mut decoder, &mut buffer)
        .map_err(|e| super::image::refuse(zi, &e))?
    {
        let at = chunk.layout_lba() * 512;
        match chunk.content {
            Content::Data(bytes) => {
                file.write_all_at(bytes, at)?;
                written += bytes.len() as u64;
            }
            Content::Fill(byte) => {
                let piece = if byte == 0 {
                    zeros.clone()
                } else {
                    vec![byte; zeros.len()]
                };
                let mut done = 0;
                while done < chunk.region.length {
                    let n = (chunk.region.length - done).min(MIB);
                    file.write_all_at(&piece[..usize::try_from(n)?], at + done)?;
                    done += n;
                }
                written += chunk.region.length;
            }
            Content::Skip => {}
        }
    }
    file.sync_all()?;
    Ok(written)
}

fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn megabytes(bytes: u64) -> String {
    // Tenths of a megabyte in integers.
    let tenths = bytes / 100_000;
    format!("{}.{} MB", tenths / 10, tenths % 10)
}

/// Runs the benchmark with `config` in `work_dir` and prints the table.
#[allow(clippy::too_many_lines)] // one measured sequence, printed as one table
pub fn run_with(work_dir: &Path, config: BenchConfig, out: &mut dyn Write) -> Result<()> {
    fs::create_dir_all(work_dir)?;
    let work = tempfile::tempdir_in(work_dir)?;
    let dir = work.path();
    let mut sink = Vec::new();

    // The disk: root A holds a real file tree.
    let tree = dir.join("tree");
    let mut budget = config.tree_bytes;
    copy_tree(
        Path::new(config.tree_source),
        &tree.join(config.tree_source.trim_start_matches('/')),
        &mut budget,
    )?;
    let copied = config.tree_bytes - budget;
    ensure!(
        copied > config.tree_bytes / 2,
        "{}: only {copied} bytes of files to copy",
        config.tree_source
    );
    let loader = dir.join("zboot.img");
    fs::write(&loader, pseudo_binary(96 * 1024, 1))?;
    let kernel = dir.join("kernel.img");
    fs::write(&kernel, pseudo_binary(usize::try_from(8 * MIB)?, 2))?;
    let disk = dir.join("disk.img");
    let (boot, root, safe) = config.partitions_mib;
    zbctl(
        &[
            "disk",
            "create",
            "--output",
            path_str(&disk)?,
            "--size",
            &format!("{}M", config.disk_mib),
            "--boot-size",
            &format!("{boot}M"),
            "--root-size",
            &format!("{root}M"),
            "--safe-size",
            &format!("{safe}M"),
            "--disk-id",
            "5eed0001",
            "--loader",
            path_str(&loader)?,
            "--slot",
            &format!("A:kernel={},version=1", path_str(&kernel)?),
            "--slot",
            &format!("SAFE:kernel={}", path_str(&kernel)?),
            "--root",
            &format!("A={}", path_str(&tree)?),
        ],
        &mut sink,
    )?;
    fs::remove_dir_all(&tree)?;
    let disk_size = fs::metadata(&disk)?.len();

    // Convert vs gzip -6.
    let zi = dir.join("disk.zi");
    let ((), convert_time) = timed(|| {
        zbctl(
            &[
                "image",
                "convert",
                "--from-disk",
                path_str(&disk)?,
                "-o",
                path_str(&zi)?,
                "--name",
                "bench",
                "--version",
                "2",
            ],
            &mut sink,
        )
    })?;
    let gz = dir.join("disk.img.gz");
    let gzip_time = shell(&format!(
        "gzip -6 -c '{}' > '{}'",
        path_str(&disk)?,
        path_str(&gz)?
    ))?;
    let (zi_size, gz_size) = (fs::metadata(&zi)?.len(), fs::metadata(&gz)?.len());

    // Decode: inflate + SHA-256 + write, vs zcat | sha256sum and zcat > file.
    let decoded = dir.join("decoded.img");
    let (written_by_decode, decode_time) = timed(|| decode_to_file(&zi, &decoded))?;
    fs::remove_file(&decoded)?;
    let zcat_hash_time = shell(&format!(
        "zcat '{}' | sha256sum > /dev/null",
        path_str(&gz)?
    ))?;
    let zcat_file_time = shell(&format!(
        "zcat '{}' > '{}'",
        path_str(&gz)?,
        path_str(&decoded)?
    ))?;
    fs::remove_file(&decoded)?;
    fs::remove_file(&gz)?;

    // Install into slot B of a copy of the disk (A active, as disk create leaves it).
    let target = dir.join("target.img");
    fs::copy(&disk, &target)?;
    let install_args = super::install::InstallArgs {
        source: zi.clone(),
        name: None,
        pubkey: None,
        force: false,
        once: false,
        fail_after: None,
    };
    let (report, install_time): (InstallReport, _) = timed(|| {
        super::install::install(&Target::Image(target.clone()), &install_args, &mut sink)
    })?;
    if report.root_bytes == 0 {
        bail!("install wrote no root bytes");
    }

    let header = format!(
        "| {:<48} | {:>10} | {:>26} |",
        "step", "wall time", "size / bytes"
    );
    writeln!(
        out,
        "zboot .zi benchmark: {} MiB disk, {} of files from {} in root A ({} threads)",
        config.disk_mib,
        megabytes(copied),
        config.tree_source,
        rayon::current_num_threads()
    )?;
    writeln!(out, "{header}")?;
    writeln!(out, "|{:-<50}|{:->12}|{:->28}|", "", ":", ":")?;
    let mut row = |step: &str, time: Option<Duration>, size: String| {
        writeln!(
            out,
            "| {step:<48} | {:>10} | {size:>26} |",
            time.map(secs).unwrap_or_default()
        )
    };
    row(
        "zbctl image convert --from-disk (level 6)",
        Some(convert_time),
        megabytes(zi_size),
    )?;
    row(
        "gzip -6 of the whole disk",
        Some(gzip_time),
        megabytes(gz_size),
    )?;
    row(
        "decode .zi: inflate + SHA-256 + write to a file",
        Some(decode_time),
        format!("{} written", megabytes(written_by_decode)),
    )?;
    row(
        "zcat | sha256sum > /dev/null",
        Some(zcat_hash_time),
        String::new(),
    )?;
    row(
        "zcat > file",
        Some(zcat_file_time),
        format!("{} written", megabytes(disk_size)),
    )?;
    row(
        "zbctl install into slot B (verify pass + write)",
        Some(install_time),
        format!("{} written", megabytes(report.written())),
    )?;
    row(
        "  image used bytes (data + fill), all / root",
        None,
        format!(
            "{} / {}",
            megabytes(report.image_used),
            megabytes(report.image_root_used)
        ),
    )?;
    row("  disk size", None, megabytes(disk_size))?;
    drop(work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_run_prints_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        run_with(dir.path(), BenchConfig::SMOKE, &mut out).unwrap();
        let table = String::from_utf8(out).unwrap();
        for row in [
            "zbctl image convert",
            "gzip -6",
            "decode .zi",
            "zcat | sha256sum",
            "zbctl install",
            "image used bytes",
        ] {
            assert!(table.contains(row), "{table}");
        }
    }
}
