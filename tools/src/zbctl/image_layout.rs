//! Whether a `.zi` describes a disk in the zboot layout (`docs/disk-layout.md`): its boot
//! partition holds `zboot.img`, a `config.txt` that makes a CM4's firmware load it, and the
//! slot directories. An image can describe any MBR disk (a stock Raspberry Pi OS dump carried
//! over as it was, say); a unit reflashed from one without the layout loses zboot and boots
//! whatever the image holds.
//!
//! The boot partition (role `boot`, else the first FAT partition) is inflated with the
//! loader's reader (every chunk's SHA-256 checked) into memory, or a scratch file when it is
//! large, and its FAT is read through the `fatfs` crate behind a reader that refuses writes.

use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use recovery_proto::config_txt::{BootFiles, CM4, Filters, Reader};
use recovery_proto::image::{Content, Decoder, Image, ImageSource, PartitionEntry, Role};
use recovery_proto::partition::FAT_TYPES;
use serde::Serialize;

use super::image::{Opened, refuse};

/// The loader's file name on the boot partition (what `config.txt`'s `kernel=` must name).
pub const LOADER: &str = "zboot.img";
/// The firmware's configuration file.
const CONFIG: &str = "config.txt";
/// The slot directories, in the order they are reported.
const SLOT_DIRS: [&str; 3] = ["A", "B", "SAFE"];
/// Boot partitions up to this size are inflated into memory, larger ones into a scratch file.
const IN_MEMORY: u64 = 512 << 20;

/// What an image's boot partition holds of the zboot layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZbootLayout {
    /// Why a unit reflashed from the image would not run zboot (empty: the zboot layout).
    pub problems: Vec<String>,
    /// What is missing without costing zboot: the `B/` and `SAFE/` directories (those slots
    /// stay empty, and fail the loader's verification, until an install writes them).
    pub notes: Vec<String>,
    /// The kernel file a CM4's firmware loads according to `config.txt`, if there is one.
    pub kernel: Option<String>,
    /// The slot directories present (`A`, `B`, `SAFE`).
    pub slots: Vec<&'static str>,
    /// The image's `zboot.img` (`zbctl adopt` installs it on a stock unit).
    pub loader: Option<Vec<u8>>,
}

/// The `zboot_layout` field of `image inspect --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutJson {
    /// No problems: a unit reflashed from the image runs zboot.
    pub ok: bool,
    /// [`ZbootLayout::problems`] (or why the layout could not be checked).
    pub problems: Vec<String>,
    /// [`ZbootLayout::notes`].
    pub notes: Vec<String>,
}

impl ZbootLayout {
    /// The layout is zboot's: a unit reflashed from the image runs zboot.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// An image that has no boot partition to look at.
    fn problem(text: &str) -> Self {
        Self {
            problems: vec![text.to_string()],
            ..Self::default()
        }
    }

    /// The problems and notes, for messages: `no zboot.img, config.txt loads kernel8.img`
    /// (notes after a `; `).
    pub fn summary(&self) -> String {
        let mut text = self.problems.join(", ");
        if !self.notes.is_empty() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&self.notes.join(", "));
        }
        text
    }

    /// The text after `layout: ` in `image inspect` and `image verify`.
    pub fn describe(&self) -> String {
        if !self.ok() {
            return format!(
                "no zboot layout ({}): a unit reflashed from this image would not run zboot",
                self.summary()
            );
        }
        let slots = format!(
            "{} {}",
            if self.slots.len() == 1 {
                "slot"
            } else {
                "slots"
            },
            self.slots.join(" ")
        );
        let notes = if self.notes.is_empty() {
            String::new()
        } else {
            format!(
                "; {}: those slots stay empty until an install writes them",
                self.notes.join(", ")
            )
        };
        format!(
            "zboot ({LOADER}, {CONFIG} kernel={}, {slots}{notes})",
            self.kernel.as_deref().unwrap_or(LOADER)
        )
    }

    /// The JSON view.
    pub fn json(&self) -> LayoutJson {
        LayoutJson {
            ok: self.ok(),
            problems: self.problems.clone(),
            notes: self.notes.clone(),
        }
    }
}

/// The image's boot partition: the one with role `boot`, else the first FAT partition.
pub fn boot_partition(image: &Image<'_>) -> Option<(u32, PartitionEntry)> {
    image.partition_with_role(Role::Boot).or_else(|| {
        (0..image.header().partition_count)
            .filter_map(|index| Some((index, image.partition(index)?)))
            .find(|(_, p)| p.role != Role::Table && FAT_TYPES.contains(&p.kind))
    })
}

/// Checks the `.zi` at `path` (header and manifest as `image inspect` reads them; the boot
/// partition's chunks are inflated and their hashes checked).
pub fn check_file(path: &Path) -> Result<ZbootLayout> {
    let mut opened = Opened::new(path, None)?;
    check_opened(&mut opened, path)
}

/// Checks an image already opened (with or without a key).
pub fn check_opened(opened: &mut Opened, path: &Path) -> Result<ZbootLayout> {
    let mut source = opened.source.try_clone()?;
    let image = opened.image().map_err(|e| refuse(path, &e))?;
    check_image(&image, &mut source, path)
}

/// Checks `image`, reading its boot partition's chunks from `source`; `path` names it in
/// errors.
pub fn check_image<S: ImageSource<Error = io::Error>>(
    image: &Image<'_>,
    source: &mut S,
    path: &Path,
) -> Result<ZbootLayout> {
    let Some((_, entry)) = boot_partition(image) else {
        return Ok(ZbootLayout::problem("no FAT boot partition"));
    };
    if entry.region_count == 0 {
        return Ok(ZbootLayout::problem(
            "the boot partition's content is not carried",
        ));
    }
    let size = entry.size();
    if size <= IN_MEMORY {
        let mut volume = Cursor::new(vec![0u8; usize::try_from(size)?]);
        decode_into(image, source, entry, path, &mut volume)?;
        check_volume(volume)
    } else {
        let mut volume =
            tempfile::tempfile().context("a scratch file for the image's boot partition")?;
        volume.set_len(size)?;
        decode_into(image, source, entry, path, &mut volume)?;
        check_volume(volume)
    }
}

/// Writes `entry`'s regions into `out` (zeroed, `entry.size()` bytes): data and non-zero
/// fill; skip regions (free clusters) stay zero.
pub(crate) fn decode_into<S: ImageSource<Error = io::Error>, W: Write + Seek>(
    image: &Image<'_>,
    source: &mut S,
    entry: PartitionEntry,
    path: &Path,
    out: &mut W,
) -> Result<()> {
    let mut decoder = Box::new(Decoder::new());
    let mut buffer = vec![0u8; image.header().chunk_size as usize];
    for index in entry.first_region..entry.first_region + entry.region_count {
        let chunk = image
            .read_region(source, index, &mut decoder, &mut buffer)
            .map_err(|e| refuse(path, &e))?;
        let (offset, length) = (chunk.region.offset, chunk.region.length);
        if offset + length > entry.size() {
            return Err(anyhow!(
                "{}: region {index} ends past its partition",
                path.display()
            ));
        }
        match chunk.content {
            Content::Data(bytes) => {
                out.seek(SeekFrom::Start(offset))?;
                out.write_all(bytes)?;
            }
            Content::Fill(byte) if byte != 0 => {
                let piece = vec![byte; usize::try_from(length.min(1 << 20))?];
                out.seek(SeekFrom::Start(offset))?;
                let mut left = length;
                while left > 0 {
                    let n = usize::try_from(left.min(piece.len() as u64))?;
                    out.write_all(piece.get(..n).unwrap_or_default())?;
                    left -= n as u64;
                }
            }
            Content::Fill(_) | Content::Skip => {}
        }
    }
    Ok(())
}

/// A volume `fatfs` may read but not change.
struct ReadOnly<T>(T);

impl<T: Read> Read for ReadOnly<T> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.0.read(buffer)
    }
}

impl<T: Seek> Seek for ReadOnly<T> {
    fn seek(&mut self, position: SeekFrom) -> io::Result<u64> {
        self.0.seek(position)
    }
}

impl<T> Write for ReadOnly<T> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the boot partition is read only here",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks a FAT volume (a boot partition from its first byte): what it holds of the zboot
/// layout. Not a FAT volume at all is a problem, not an error.
pub fn check_volume<T: Read + Seek>(mut volume: T) -> Result<ZbootLayout> {
    volume.seek(SeekFrom::Start(0))?;
    let Ok(fs) = fatfs::FileSystem::new(ReadOnly(volume), fatfs::FsOptions::new()) else {
        return Ok(ZbootLayout::problem(
            "the boot partition holds no FAT file system",
        ));
    };
    let root = fs.root_dir();
    let entries = root
        .iter()
        .collect::<io::Result<Vec<_>>>()
        .context("reading the boot partition's root directory")?;
    let find = |name: &str, dir: bool| {
        entries.iter().find(|e| {
            e.is_dir() == dir
                && (e.file_name().eq_ignore_ascii_case(name)
                    || e.short_file_name().eq_ignore_ascii_case(name))
        })
    };
    let mut layout = ZbootLayout::default();
    match find(LOADER, false) {
        None => layout.problems.push(format!("no {LOADER}")),
        Some(entry) => {
            let mut bytes = Vec::new();
            entry
                .to_file()
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading the boot partition's {LOADER}"))?;
            layout.loader = Some(bytes);
        }
    }
    match find(CONFIG, false) {
        None => layout.problems.push(format!("no {CONFIG}")),
        Some(entry) => {
            let mut bytes = Vec::new();
            entry
                .to_file()
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading the boot partition's {CONFIG}"))?;
            let kernel = kernel_loaded(&String::from_utf8_lossy(&bytes));
            if !kernel.eq_ignore_ascii_case(LOADER) {
                layout.problems.push(format!("{CONFIG} loads {kernel}"));
            }
            layout.kernel = Some(kernel);
        }
    }
    let (present, missing): (Vec<&'static str>, Vec<&'static str>) = SLOT_DIRS
        .iter()
        .copied()
        .partition(|slot| find(slot, true).is_some());
    layout.slots = present;
    if !missing.is_empty() {
        let dirs: Vec<String> = missing.iter().map(|slot| format!("{slot}/")).collect();
        let text = if dirs.len() == 1 {
            format!("no slot directory {}", dirs.join(""))
        } else {
            format!("no slot directories {}", dirs.join(", "))
        };
        // Without A/ nothing boots (the stock conversion and the tarballs put the system
        // there); B/ and SAFE/ are created by the install that fills them.
        if missing.contains(&"A") {
            layout.problems.push(text);
        } else {
            layout.notes.push(text);
        }
    }
    Ok(layout)
}

/// The file a CM4's firmware loads as the kernel under `text` (a `config.txt`; `include`
/// lines are not followed): `kernel=`, else the `arm_64bit` default, with `os_prefix`.
fn kernel_loaded(text: &str) -> String {
    let mut filters = Filters::default();
    let mut files = BootFiles::default();
    for line in Reader::new(text, &CM4, &mut filters) {
        files.apply(&line);
    }
    let name = files.kernel_name();
    let path = files.path(&name).unwrap_or(name);
    path.trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_txt_kernel_as_a_cm4_firmware_reads_it() {
        assert_eq!(kernel_loaded("arm_64bit=1\n"), "kernel8.img");
        assert_eq!(kernel_loaded(""), "kernel7l.img");
        assert_eq!(
            kernel_loaded("arm_64bit=1\nkernel=/zboot.img\r\n"),
            "zboot.img"
        );
        assert_eq!(
            kernel_loaded("kernel=zboot.img\n[pi5]\nkernel=other.img\n"),
            "zboot.img"
        );
        assert_eq!(
            kernel_loaded("kernel=zboot.img\n[cm4]\nkernel=kernel8.img\n"),
            "kernel8.img"
        );
        assert_eq!(
            kernel_loaded("os_prefix=os1/\nkernel=zboot.img\n"),
            "os1/zboot.img"
        );
    }

    #[test]
    fn describe_says_what_is_missing() {
        let mut layout = ZbootLayout {
            kernel: Some("zboot.img".into()),
            slots: vec!["A", "B", "SAFE"],
            ..ZbootLayout::default()
        };
        assert_eq!(
            layout.describe(),
            "zboot (zboot.img, config.txt kernel=zboot.img, slots A B SAFE)"
        );
        layout.slots = vec!["A"];
        layout.notes = vec!["no slot directories B/, SAFE/".into()];
        assert_eq!(
            layout.describe(),
            "zboot (zboot.img, config.txt kernel=zboot.img, slot A; no slot directories B/, \
             SAFE/: those slots stay empty until an install writes them)"
        );
        layout.problems = vec!["no zboot.img".into(), "config.txt loads kernel8.img".into()];
        assert_eq!(
            layout.describe(),
            "no zboot layout (no zboot.img, config.txt loads kernel8.img; no slot directories \
             B/, SAFE/): a unit reflashed from this image would not run zboot"
        );
        assert_eq!(
            ZbootLayout::problem("no FAT boot partition").describe(),
            "no zboot layout (no FAT boot partition): a unit reflashed from this image would \
             not run zboot"
        );
    }

    #[test]
    fn a_volume_that_is_not_fat_is_a_problem() {
        let layout = check_volume(Cursor::new(vec![0u8; 1 << 20])).unwrap();
        assert_eq!(
            layout.problems,
            ["the boot partition holds no FAT file system"]
        );
    }
}
