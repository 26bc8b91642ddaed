//! `slot.txt`: the per-slot manifest of boot files (sizes and digests), parsed without allocation.
//!
//! Format (`docs/disk-layout.md`): `key=value` lines, `#` comments, blank lines and CRLF
//! tolerated. The first non-comment line is `format=2` (or `format=1`), so that a loader
//! refuses a newer format by its number instead of by whatever line it trips over first.
//! Then exactly one `image_version=N` and one `file=NAME size=N blake3=HEX` line per file
//! (attributes in any order); format 1, which older `zbctl` wrote, has `sha256=HEX`
//! instead ([`crate::digest`]). Anything else is an error naming the line: the manifest is what makes the slot's
//! files trustworthy, so nothing in it is guessed or skipped.
//!
//! The same type writes the canonical text ([`fmt::Display`]), so `zbctl` and the loader share
//! one definition of the format.

use core::fmt;

pub use crate::digest::Algorithm;
use crate::fat::short_name;

/// The format `zbctl` writes: BLAKE3 digests.
pub const FORMAT: u32 = 2;
/// The first format, SHA-256 digests: still read, and written on request.
pub const FORMAT_SHA256: u32 = 1;
/// File lines kept; a slot has kernel, initrd, DTB and command line, with room to spare.
pub const MAX_FILES: usize = 8;
/// Files every slot must list: without them there is nothing to boot.
pub const REQUIRED_FILES: [&str; 2] = ["kernel.img", "cmdline.txt"];

/// One listed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotFile<'a> {
    /// The file's name in the slot directory (an 8.3 name, matched without regard to case).
    pub name: &'a str,
    /// Size in bytes as stored (FAT file sizes are 32-bit).
    pub size: u32,
    /// Digest of the bytes as stored, by the manifest's [`SlotManifest::algorithm`].
    pub digest: [u8; 32],
    /// 1-based line it was read from (0 when built in code).
    pub line: u32,
}

/// Why a file read from the slot does not match its manifest line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMismatch {
    /// Another size.
    Size { expected: u32, found: u64 },
    /// Another digest.
    Hash { algorithm: Algorithm },
}

impl fmt::Display for FileMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileMismatch::Size { expected, found } => {
                write!(f, "is {found} bytes, slot.txt says {expected}")
            }
            FileMismatch::Hash { algorithm } => write!(f, "{algorithm} differs from slot.txt"),
        }
    }
}

impl SlotFile<'_> {
    /// Checks the size of a file before reading it (cheap, and bounds the read).
    pub fn check_size(&self, found: u64) -> Result<(), FileMismatch> {
        if found == u64::from(self.size) {
            Ok(())
        } else {
            Err(FileMismatch::Size {
                expected: self.size,
                found,
            })
        }
    }

    /// Checks the size and the digest (by `algorithm`, the manifest's) the loader computed
    /// over the bytes it read.
    pub fn verify(
        &self,
        size: u64,
        algorithm: Algorithm,
        digest: &[u8; 32],
    ) -> Result<(), FileMismatch> {
        self.check_size(size)?;
        if *digest == self.digest {
            Ok(())
        } else {
            Err(FileMismatch::Hash { algorithm })
        }
    }
}

/// A parsed (or to-be-written) slot manifest; names borrow from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotManifest<'a> {
    /// `image_version`: compared with the state's anti-rollback minimum.
    pub image_version: u32,
    algorithm: Algorithm,
    files: heapless::Vec<SlotFile<'a>, MAX_FILES>,
}

/// Why `slot.txt` is refused. Line numbers are 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotManifestError {
    /// The line is not valid UTF-8.
    InvalidUtf8 { line: u32 },
    /// The line is not `key=value`.
    MissingEquals { line: u32 },
    /// The first non-comment line is not `format=...`.
    FormatNotFirst { line: u32 },
    /// No `format=` line at all (empty file).
    MissingFormat,
    /// A format this loader does not know.
    UnknownFormat { found: u32 },
    /// A key this format does not have.
    UnknownKey { line: u32 },
    /// A key given a second time.
    DuplicateKey {
        line: u32,
        key: &'static str,
        first_line: u32,
    },
    /// Not a decimal number that fits (`key` or file attribute `size`).
    BadNumber { line: u32, key: &'static str },
    /// No `image_version=` line.
    MissingImageVersion,
    /// The file name is not an 8.3 name.
    BadFileName { line: u32 },
    /// A `file=` line without `size=` or the digest (`blake3=`, `sha256=` in format 1).
    MissingAttribute { line: u32, attribute: &'static str },
    /// A `file=` attribute other than `size` and the format's digest, or one without `=`.
    UnknownAttribute { line: u32, algorithm: Algorithm },
    /// A `file=` attribute given twice on its line.
    DuplicateAttribute { line: u32, attribute: &'static str },
    /// The digest is not 64 hex digits.
    BadHash { line: u32, algorithm: Algorithm },
    /// The same file (any case) listed again.
    DuplicateFile { line: u32, first_line: u32 },
    /// More than [`MAX_FILES`] file lines.
    TooManyFiles { line: u32 },
    /// A file every slot must have is not listed.
    MissingRequiredFile { name: &'static str },
}

impl core::error::Error for SlotManifestError {}

impl fmt::Display for SlotManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SlotManifestError as E;
        match *self {
            E::InvalidUtf8 { line } => write!(f, "slot.txt line {line}: not valid UTF-8"),
            E::MissingEquals { line } => write!(f, "slot.txt line {line}: expected key=value"),
            E::FormatNotFirst { line } => write!(
                f,
                "slot.txt line {line}: the first setting must be format={FORMAT}"
            ),
            E::MissingFormat => write!(f, "slot.txt: empty (no format={FORMAT} line)"),
            E::UnknownFormat { found } => write!(
                f,
                "slot.txt: format {found} is not known to this loader (it reads formats \
                 {FORMAT_SHA256} and {FORMAT})"
            ),
            E::UnknownKey { line } => write!(
                f,
                "slot.txt line {line}: unknown key (expected image_version or file)"
            ),
            E::DuplicateKey {
                line,
                key,
                first_line,
            } => write!(
                f,
                "slot.txt line {line}: {key} given again (first on line {first_line})"
            ),
            E::BadNumber { line, key } => write!(
                f,
                "slot.txt line {line}: {key}: expected a decimal number of at most 32 bits"
            ),
            E::MissingImageVersion => f.write_str("slot.txt: no image_version line"),
            E::BadFileName { line } => {
                write!(f, "slot.txt line {line}: file name is not an 8.3 name")
            }
            E::MissingAttribute { line, attribute } => {
                write!(f, "slot.txt line {line}: file without {attribute}=")
            }
            E::UnknownAttribute { line, algorithm } => write!(
                f,
                "slot.txt line {line}: unknown file attribute (expected size= and {}=)",
                algorithm.key()
            ),
            E::DuplicateAttribute { line, attribute } => {
                write!(f, "slot.txt line {line}: {attribute}= given twice")
            }
            E::BadHash { line, algorithm } => {
                write!(
                    f,
                    "slot.txt line {line}: {}= is not 64 hex digits",
                    algorithm.key()
                )
            }
            E::DuplicateFile { line, first_line } => write!(
                f,
                "slot.txt line {line}: file listed again (first on line {first_line})"
            ),
            E::TooManyFiles { line } => write!(
                f,
                "slot.txt line {line}: more than {MAX_FILES} files listed"
            ),
            E::MissingRequiredFile { name } => {
                write!(f, "slot.txt: required file {name} is not listed")
            }
        }
    }
}

impl<'a> SlotManifest<'a> {
    /// An empty manifest of the current [`FORMAT`] (BLAKE3) to fill with
    /// [`SlotManifest::add_file`] and write with `Display`.
    pub fn new(image_version: u32) -> Self {
        Self::with_algorithm(image_version, Algorithm::Blake3)
    }

    /// An empty manifest whose digests are by `algorithm` (SHA-256: format 1, for loaders
    /// older than format 2).
    pub fn with_algorithm(image_version: u32, algorithm: Algorithm) -> Self {
        Self {
            image_version,
            algorithm,
            files: heapless::Vec::new(),
        }
    }

    /// The hash function of every `file=` line's digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The `format=` number.
    pub fn format(&self) -> u32 {
        match self.algorithm {
            Algorithm::Sha256 => FORMAT_SHA256,
            Algorithm::Blake3 => FORMAT,
        }
    }

    /// Adds a file (for writers) with the digest of its bytes by [`Self::algorithm`]; the
    /// same checks as the parser, `line` 0.
    pub fn add_file(
        &mut self,
        name: &'a str,
        size: u32,
        digest: [u8; 32],
    ) -> Result<(), SlotManifestError> {
        self.push(SlotFile {
            name,
            size,
            digest,
            line: 0,
        })
    }

    fn push(&mut self, file: SlotFile<'a>) -> Result<(), SlotManifestError> {
        let line = file.line;
        if short_name(file.name).is_none() {
            return Err(SlotManifestError::BadFileName { line });
        }
        if let Some(first) = self.file(file.name) {
            return Err(SlotManifestError::DuplicateFile {
                line,
                first_line: first.line,
            });
        }
        self.files
            .push(file)
            .map_err(|_| SlotManifestError::TooManyFiles { line })
    }

    /// The listed files in manifest order.
    pub fn files(&self) -> &[SlotFile<'a>] {
        &self.files
    }

    /// The entry for `name` (case-insensitive, as FAT names are).
    pub fn file(&self, name: &str) -> Option<&SlotFile<'a>> {
        self.files
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Checks that every [`REQUIRED_FILES`] entry is listed.
    pub fn check_required(&self) -> Result<(), SlotManifestError> {
        match REQUIRED_FILES.iter().find(|name| self.file(name).is_none()) {
            Some(name) => Err(SlotManifestError::MissingRequiredFile { name }),
            None => Ok(()),
        }
    }

    /// Parses the file's bytes.
    pub fn parse(input: &'a [u8]) -> Result<Self, SlotManifestError> {
        let mut manifest = SlotManifest::new(0);
        let mut format_line = 0u32;
        let mut version_line = 0u32;
        for (index, raw) in input.split(|&b| b == b'\n').enumerate() {
            let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = core::str::from_utf8(raw)
                .map_err(|_| SlotManifestError::InvalidUtf8 { line })?
                .trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (key, value) = text
                .split_once('=')
                .ok_or(SlotManifestError::MissingEquals { line })?;
            let (key, value) = (key.trim(), value.trim());
            if format_line == 0 {
                if key != "format" {
                    return Err(SlotManifestError::FormatNotFirst { line });
                }
                let found = parse_u32(value).ok_or(SlotManifestError::BadNumber {
                    line,
                    key: "format",
                })?;
                manifest.algorithm = match found {
                    FORMAT_SHA256 => Algorithm::Sha256,
                    FORMAT => Algorithm::Blake3,
                    _ => return Err(SlotManifestError::UnknownFormat { found }),
                };
                format_line = line;
                continue;
            }
            match key {
                "format" => {
                    return Err(SlotManifestError::DuplicateKey {
                        line,
                        key: "format",
                        first_line: format_line,
                    });
                }
                "image_version" => {
                    if version_line != 0 {
                        return Err(SlotManifestError::DuplicateKey {
                            line,
                            key: "image_version",
                            first_line: version_line,
                        });
                    }
                    manifest.image_version =
                        parse_u32(value).ok_or(SlotManifestError::BadNumber {
                            line,
                            key: "image_version",
                        })?;
                    version_line = line;
                }
                "file" => {
                    let file = parse_file_line(value, line, manifest.algorithm)?;
                    manifest.push(file)?;
                }
                _ => return Err(SlotManifestError::UnknownKey { line }),
            }
        }
        if format_line == 0 {
            return Err(SlotManifestError::MissingFormat);
        }
        if version_line == 0 {
            return Err(SlotManifestError::MissingImageVersion);
        }
        manifest.check_required()?;
        Ok(manifest)
    }
}

/// `NAME size=N blake3=HEX` (the value of a `file=` line; `sha256=` in format 1).
fn parse_file_line(
    value: &str,
    line: u32,
    algorithm: Algorithm,
) -> Result<SlotFile<'_>, SlotManifestError> {
    let mut words = value.split_ascii_whitespace();
    let name = words
        .next()
        .ok_or(SlotManifestError::BadFileName { line })?;
    let mut size = None;
    let mut digest = None;
    for word in words {
        let (attribute, value) = word
            .split_once('=')
            .ok_or(SlotManifestError::UnknownAttribute { line, algorithm })?;
        match attribute {
            "size" => {
                if size.is_some() {
                    return Err(SlotManifestError::DuplicateAttribute {
                        line,
                        attribute: "size",
                    });
                }
                size = Some(
                    parse_u32(value).ok_or(SlotManifestError::BadNumber { line, key: "size" })?,
                );
            }
            key if key == algorithm.key() => {
                if digest.is_some() {
                    return Err(SlotManifestError::DuplicateAttribute {
                        line,
                        attribute: algorithm.key(),
                    });
                }
                digest =
                    Some(parse_hash(value).ok_or(SlotManifestError::BadHash { line, algorithm })?);
            }
            _ => return Err(SlotManifestError::UnknownAttribute { line, algorithm }),
        }
    }
    Ok(SlotFile {
        name,
        size: size.ok_or(SlotManifestError::MissingAttribute {
            line,
            attribute: "size",
        })?,
        digest: digest.ok_or(SlotManifestError::MissingAttribute {
            line,
            attribute: algorithm.key(),
        })?,
        line,
    })
}

/// Plain decimal digits only (no sign, no spaces), fitting in 32 bits.
fn parse_u32(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_hash(value: &str) -> Option<[u8; 32]> {
    if value.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(value.as_bytes().chunks_exact(2)) {
        let text = core::str::from_utf8(pair).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// The canonical text: what `zbctl disk create` writes and [`SlotManifest::parse`] reads back.
impl fmt::Display for SlotManifest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format={}", self.format())?;
        writeln!(f, "image_version={}", self.image_version)?;
        for file in &self.files {
            write!(
                f,
                "file={} size={} {}=",
                file.name,
                file.size,
                self.algorithm.key()
            )?;
            for byte in file.digest {
                write!(f, "{byte:02x}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn text(lines: &[&str]) -> std::string::String {
        lines.join("\n")
    }

    fn good() -> std::string::String {
        text(&[
            "# slot A",
            "format=1",
            "image_version=7",
            &std::format!("file=kernel.img size=31457792 sha256={HASH}"),
            &std::format!("file = cmdline.txt  sha256={} size=57", HASH.to_uppercase()),
            "",
        ])
    }

    #[test]
    fn parses_and_looks_up_files() {
        let input = good().replace('\n', "\r\n");
        let m = SlotManifest::parse(input.as_bytes()).unwrap();
        assert_eq!(m.image_version, 7);
        assert_eq!(m.files().len(), 2);
        let kernel = m.file("KERNEL.IMG").unwrap();
        assert_eq!(
            (kernel.size, kernel.line, kernel.digest[0]),
            (31_457_792, 4, 0x9f)
        );
        let cmdline = m.file("cmdline.txt").unwrap();
        assert_eq!(cmdline.digest, kernel.digest);
        assert_eq!(cmdline.check_size(57), Ok(()));
        assert_eq!(
            cmdline.verify(58, Algorithm::Sha256, &cmdline.digest),
            Err(FileMismatch::Size {
                expected: 57,
                found: 58
            })
        );
        assert_eq!(
            cmdline.verify(57, Algorithm::Sha256, &[0; 32]),
            Err(FileMismatch::Hash {
                algorithm: Algorithm::Sha256
            })
        );
        assert_eq!(
            cmdline.verify(57, Algorithm::Sha256, &kernel.digest),
            Ok(())
        );
        assert_eq!(m.algorithm(), Algorithm::Sha256);
        assert!(m.file("initrd.img").is_none());
    }

    #[test]
    fn writer_round_trips() {
        let mut m = SlotManifest::new(42);
        m.add_file("kernel.img", 10, [0xab; 32]).unwrap();
        m.add_file("initrd.img", 0, [0; 32]).unwrap();
        m.add_file("cmdline.txt", 3, [1; 32]).unwrap();
        assert_eq!(
            m.add_file("Kernel.IMG", 1, [0; 32]),
            Err(SlotManifestError::DuplicateFile {
                line: 0,
                first_line: 0
            })
        );
        assert_eq!(
            m.add_file("a/b.img", 1, [0; 32]),
            Err(SlotManifestError::BadFileName { line: 0 })
        );
        let written = m.to_string();
        assert!(
            written.starts_with("format=2\nimage_version=42\nfile=kernel.img size=10 blake3=abab")
        );
        let parsed = SlotManifest::parse(written.as_bytes()).unwrap();
        assert_eq!(parsed.image_version, 42);
        assert_eq!(parsed.algorithm(), Algorithm::Blake3);
        assert_eq!(parsed.files().len(), 3);
        for (a, b) in parsed.files().iter().zip(m.files()) {
            assert_eq!((a.name, a.size, a.digest), (b.name, b.size, b.digest));
        }
        // Format 1 (SHA-256) is still written on request and read back.
        let mut old = SlotManifest::with_algorithm(3, Algorithm::Sha256);
        old.add_file("kernel.img", 10, [0xcd; 32]).unwrap();
        old.add_file("cmdline.txt", 3, [1; 32]).unwrap();
        let written = old.to_string();
        assert!(
            written.starts_with("format=1\nimage_version=3\nfile=kernel.img size=10 sha256=cdcd")
        );
        let parsed = SlotManifest::parse(written.as_bytes()).unwrap();
        assert_eq!(parsed.algorithm(), Algorithm::Sha256);
        assert_eq!(parsed.file("kernel.img").unwrap().digest, [0xcd; 32]);
    }

    #[test]
    fn format_2_takes_blake3_and_refuses_sha256() {
        let k = std::format!("file=kernel.img size=1 blake3={HASH}");
        let c = std::format!("file=cmdline.txt size=1 blake3={HASH}");
        let input = text(&["format=2", "image_version=1", &k, &c]);
        let m = SlotManifest::parse(input.as_bytes()).unwrap();
        assert_eq!(m.algorithm(), Algorithm::Blake3);
        assert_eq!(m.file("kernel.img").unwrap().digest[0], 0x9f);
        assert_eq!(
            m.file("kernel.img")
                .unwrap()
                .verify(1, Algorithm::Blake3, &[0; 32])
                .unwrap_err()
                .to_string(),
            "BLAKE3 differs from slot.txt"
        );
        let old = std::format!("file=kernel.img size=1 sha256={HASH}");
        let error = SlotManifest::parse(text(&["format=2", "image_version=1", &old]).as_bytes())
            .unwrap_err();
        assert_eq!(
            error,
            SlotManifestError::UnknownAttribute {
                line: 3,
                algorithm: Algorithm::Blake3
            }
        );
        assert_eq!(
            error.to_string(),
            "slot.txt line 3: unknown file attribute (expected size= and blake3=)"
        );
        assert_eq!(
            SlotManifest::parse(b"format=2\nfile=kernel.img size=1 blake3=ab").unwrap_err(),
            SlotManifestError::BadHash {
                line: 2,
                algorithm: Algorithm::Blake3
            }
        );
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table of cases, one line each before rustfmt
    fn errors_name_the_line_and_the_problem() {
        use SlotManifestError as E;
        let k = std::format!("file=kernel.img size=1 sha256={HASH}");
        let c = std::format!("file=cmdline.txt size=1 sha256={HASH}");
        let cases: std::vec::Vec<(std::string::String, E)> = std::vec![
            (text(&[""]), E::MissingFormat),
            (text(&["# only", ""]), E::MissingFormat),
            (text(&["image_version=1"]), E::FormatNotFirst { line: 1 }),
            (
                text(&["format=3", "whatever"]),
                E::UnknownFormat { found: 3 }
            ),
            (
                text(&["format=one"]),
                E::BadNumber {
                    line: 1,
                    key: "format"
                }
            ),
            (
                text(&["format=1", "", "image_version=x"]),
                E::BadNumber {
                    line: 3,
                    key: "image_version"
                }
            ),
            (
                text(&["format=1", "image_version=99999999999"]),
                E::BadNumber {
                    line: 2,
                    key: "image_version"
                }
            ),
            (
                text(&["format=1", "image_version=1", "image_version=2"]),
                E::DuplicateKey {
                    line: 3,
                    key: "image_version",
                    first_line: 2
                }
            ),
            (
                text(&["# c", "format=1", "format=1"]),
                E::DuplicateKey {
                    line: 3,
                    key: "format",
                    first_line: 2
                }
            ),
            (
                text(&["format=1", "colour=blue"]),
                E::UnknownKey { line: 2 }
            ),
            (
                text(&["format=1", "no equals"]),
                E::MissingEquals { line: 2 }
            ),
            (text(&["format=1", &k, &c]), E::MissingImageVersion),
            (
                text(&["format=1", "image_version=1", &k]),
                E::MissingRequiredFile {
                    name: "cmdline.txt"
                }
            ),
            (
                text(&["format=1", "image_version=1", &c]),
                E::MissingRequiredFile { name: "kernel.img" }
            ),
            (
                text(&["format=1", &k, &k]),
                E::DuplicateFile {
                    line: 3,
                    first_line: 2
                }
            ),
            (
                text(&["format=1", "file=kernel.img size=1 sha256=abc"]),
                E::BadHash {
                    line: 2,
                    algorithm: Algorithm::Sha256
                }
            ),
            (
                text(&[
                    "format=1",
                    &std::format!("file=kernel.img size=1 sha256={}", HASH.replace('9', "g"))
                ]),
                E::BadHash {
                    line: 2,
                    algorithm: Algorithm::Sha256
                }
            ),
            (
                text(&[
                    "format=1",
                    &std::format!("file=kernel.img size=-1 sha256={HASH}")
                ]),
                E::BadNumber {
                    line: 2,
                    key: "size"
                }
            ),
            (
                text(&["format=1", "file=kernel.img size=1"]),
                E::MissingAttribute {
                    line: 2,
                    attribute: "sha256"
                }
            ),
            (
                text(&["format=1", &std::format!("file=kernel.img sha256={HASH}")]),
                E::MissingAttribute {
                    line: 2,
                    attribute: "size"
                }
            ),
            (
                text(&["format=1", "file=kernel.img size=1 size=2"]),
                E::DuplicateAttribute {
                    line: 2,
                    attribute: "size"
                }
            ),
            (
                text(&["format=1", "file=kernel.img mode=1"]),
                E::UnknownAttribute {
                    line: 2,
                    algorithm: Algorithm::Sha256
                }
            ),
            (
                text(&["format=1", "file=kernel.img 1"]),
                E::UnknownAttribute {
                    line: 2,
                    algorithm: Algorithm::Sha256
                }
            ),
            (text(&["format=1", "file="]), E::BadFileName { line: 2 }),
            (
                text(&[
                    "format=1",
                    &std::format!("file=toolongname.img size=1 sha256={HASH}")
                ]),
                E::BadFileName { line: 2 }
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                SlotManifest::parse(input.as_bytes()),
                Err(expected),
                "{input:?}"
            );
        }
        assert_eq!(
            SlotManifest::parse(b"format=1\n\xff").unwrap_err(),
            E::InvalidUtf8 { line: 2 }
        );
        let mut many = std::string::String::new();
        for i in 0..9 {
            many += "file=f";
            many += &i.to_string();
            many += ".img size=1 sha256=";
            many += HASH;
            many += "\n";
        }
        assert_eq!(
            SlotManifest::parse(std::format!("format=1\n{many}").as_bytes()).unwrap_err(),
            E::TooManyFiles { line: 10 }
        );
        assert_eq!(
            E::BadHash {
                line: 4,
                algorithm: Algorithm::Sha256
            }
            .to_string(),
            "slot.txt line 4: sha256= is not 64 hex digits"
        );
        assert_eq!(
            E::MissingRequiredFile { name: "kernel.img" }.to_string(),
            "slot.txt: required file kernel.img is not listed"
        );
    }

    #[test]
    fn parses_the_good_example() {
        assert!(SlotManifest::parse(good().as_bytes()).is_ok());
    }
}
