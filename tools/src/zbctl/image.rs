//! `zbctl image ...`: make (`convert`), look at (`inspect`), check (`verify`) and `sign`
//! `.zi` images, with the loader's own reader (`recovery_proto::image`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ed25519_dalek::{Signer, SigningKey};
use recovery_proto::image::format::{HEADER_SIZE, signed_message};
use recovery_proto::image::{
    Decoder, Image, ImageError, ImageSource, Part, RegionKind, SignatureCheck, Trailer,
};
use serde::Serialize;

use super::image_convert::{self, ConvertArgs};
use super::image_layout::{self, LayoutJson};
use super::key;
use super::status::hex;

/// `zbctl image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Make a `.zi` from a raw disk dump (`--from-disk`) or boot/root tarballs (`-b`, `-r`).
    Convert(Box<ConvertArgs>),
    /// Make a `.zi` of the running unit (its boot partition and its root), and optionally a
    /// recovery stick of it: the golden image to replicate it from.
    Capture(Box<super::capture::CaptureArgs>),
    /// Show header, layout and regions.
    Inspect {
        /// The `.zi` file.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// List every region.
        #[arg(long)]
        regions: bool,
    },
    /// Check every hash (and the signature with a key); the exit code says the outcome.
    Verify(VerifyArgs),
    /// Sign (or re-sign) an image with an ed25519 private key.
    Sign {
        /// The `.zi` file (changed in place: the trailer is appended or replaced).
        file: PathBuf,
        /// Private key file from `zbctl key generate`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

/// Arguments of `image verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The `.zi` file.
    pub file: PathBuf,
    /// Public key (a `.pub` file, 64 hex digits or base64): the image must be signed by it.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
    /// Take the public key from this `zbmanifest.txt` (`public_key=`), as the loader does.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Refuse images older than this version (the state's anti-rollback minimum).
    #[arg(long, value_name = "N")]
    pub min_version: Option<u32>,
}

/// Exit codes of `zbctl image verify` (and of commands refusing an image).
pub mod exit {
    /// The image is good.
    pub const OK: u8 = 0;
    /// Anything else: bad arguments, unreadable file.
    pub const ERROR: u8 = 1;
    /// Header, manifest or size is wrong: truncated, wrong magic, unknown version.
    pub const FORMAT: u8 = 2;
    /// A chunk does not inflate or its SHA-256 does not match.
    pub const PAYLOAD: u8 = 3;
    /// Not signed though a key was given, signed by another key, or a bad signature.
    pub const SIGNATURE: u8 = 4;
    /// Older than the anti-rollback minimum.
    pub const TOO_OLD: u8 = 5;
}

/// An error with a specific exit code (the binary exits with it).
#[derive(Debug)]
pub struct ExitError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

/// The exit code for a reader error.
pub fn exit_code<E>(error: &ImageError<E>) -> u8 {
    match error {
        ImageError::Source { .. } | ImageError::BufferTooSmall { .. } => exit::ERROR,
        ImageError::SignatureRequired
        | ImageError::WrongKey { .. }
        | ImageError::BadPublicKey
        | ImageError::BadSignature { .. }
        | ImageError::Format {
            part: Part::Signature,
            ..
        } => exit::SIGNATURE,
        ImageError::Inflate { .. }
        | ImageError::ChunkLength { .. }
        | ImageError::ChunkHashMismatch { .. } => exit::PAYLOAD,
        _ => exit::FORMAT,
    }
}

/// Turns a reader error into an [`ExitError`] naming the file.
pub fn refuse(path: &Path, error: &ImageError<std::io::Error>) -> anyhow::Error {
    ExitError {
        code: exit_code(error),
        message: format!("{}: {error}", path.display()),
    }
    .into()
}

/// A `.zi` file as the reader's source.
#[derive(Debug)]
pub struct FileSource {
    file: File,
}

impl FileSource {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }

    /// A second handle on the same file.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
        })
    }
}

impl ImageSource for FileSource {
    type Error = std::io::Error;

    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }
}

/// A header and manifest read and checked; owns the manifest buffer.
#[derive(Debug)]
pub struct Opened {
    /// The source.
    pub source: FileSource,
    manifest: Vec<u8>,
    key: Option<[u8; 32]>,
}

/// Manifest buffer the host reader gives itself (the loader's is smaller and documented).
const HOST_MANIFEST_BUFFER: usize = 64 << 20;

impl Opened {
    /// Opens and checks `path` (signature too when `key` is given).
    pub fn new(path: &Path, key: Option<[u8; 32]>) -> Result<Self> {
        let mut source = FileSource::open(path)?;
        let size = source.size()?;
        let manifest = vec![
            0u8;
            usize::try_from(size)
                .unwrap_or(usize::MAX)
                .min(HOST_MANIFEST_BUFFER)
        ];
        let mut opened = Self {
            source,
            manifest,
            key,
        };
        opened.image().map_err(|error| refuse(path, &error))?;
        Ok(opened)
    }

    /// The checked image (re-read and re-checked from the file).
    pub fn image(&mut self) -> Result<Image<'_>, ImageError<std::io::Error>> {
        Image::open(&mut self.source, &mut self.manifest, self.key.as_ref())
    }
}

/// Runs `zbctl image ...`.
pub fn run(command: &ImageCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        ImageCommand::Convert(args) => image_convert::convert(args, out),
        ImageCommand::Capture(args) => super::capture::capture(args, out),
        ImageCommand::Inspect {
            file,
            json,
            regions,
        } => inspect(file, *json, *regions, out),
        ImageCommand::Verify(args) => verify(args, out),
        ImageCommand::Sign { file, key } => sign(file, key, out),
    }
}

/// JSON view of an image.
#[derive(Debug, Serialize)]
pub struct ImageView {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: u32,
    /// Format version.
    pub format_version: u16,
    /// Digest function of the header, manifest and chunks: `blake3` (version 2) or
    /// `sha256` (version 1).
    pub hash: String,
    /// Creation time (seconds since 1970 UTC).
    pub created: u64,
    /// Identity (SHA-256 of the header), hex.
    pub id: String,
    /// `unsigned`, `signed (not checked)` or `signed (verified)`.
    pub signature: String,
    /// Signer's public key (hex), if signed.
    pub signer: Option<String>,
    /// Chunk size.
    pub chunk_size: u32,
    /// `mbr` or `gpt`.
    pub table: String,
    /// MBR disk signature, hex.
    pub disk_signature: String,
    /// Least disk size in bytes.
    pub disk_size: u64,
    /// Payload bytes.
    pub payload_size: u64,
    /// File size.
    pub file_size: u64,
    /// Partitions in write order.
    pub partitions: Vec<PartitionView>,
    /// Every region, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<RegionView>>,
    /// Whether a unit reflashed from the image runs zboot (`image inspect` fills it in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zboot_layout: Option<LayoutJson>,
}

/// JSON view of a partition.
#[derive(Debug, Serialize)]
pub struct PartitionView {
    /// Partition number (0 for table sectors).
    pub number: u8,
    /// Role name.
    pub role: String,
    /// MBR type byte.
    pub kind: String,
    /// Bootable flag.
    pub bootable: bool,
    /// First sector.
    pub start_lba: u64,
    /// Sectors.
    pub sectors: u64,
    /// Regions.
    pub regions: u32,
    /// Bytes in data regions.
    pub data_bytes: u64,
    /// Bytes in fill regions.
    pub fill_bytes: u64,
    /// Bytes in skip regions.
    pub skip_bytes: u64,
    /// Stored (compressed) bytes.
    pub stored_bytes: u64,
}

/// JSON view of a region.
#[derive(Debug, Serialize)]
pub struct RegionView {
    /// Index.
    pub index: u32,
    /// Partition number.
    pub partition: u8,
    /// `data`, `fill`, `skip`.
    pub kind: String,
    /// Offset in the partition.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Stored bytes.
    pub stored: u32,
    /// Digest of the data by the image's `hash`, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Builds the view.
pub fn view(image: &Image<'_>, file_size: u64, with_regions: bool) -> ImageView {
    let header = image.header();
    let partitions = image
        .partitions()
        .map(|p| {
            let mut view = PartitionView {
                number: p.number,
                role: p.role.to_string(),
                kind: format!("{:#04x}", p.kind),
                bootable: p.bootable,
                start_lba: p.start_lba,
                sectors: p.sectors,
                regions: p.region_count,
                data_bytes: 0,
                fill_bytes: 0,
                skip_bytes: 0,
                stored_bytes: 0,
            };
            for r in
                (p.first_region..p.first_region + p.region_count).filter_map(|i| image.region(i))
            {
                match r.kind {
                    RegionKind::Data => view.data_bytes += r.length,
                    RegionKind::Fill => view.fill_bytes += r.length,
                    RegionKind::Skip => view.skip_bytes += r.length,
                }
                view.stored_bytes += u64::from(r.stored_size);
            }
            view
        })
        .collect();
    let regions = with_regions.then(|| {
        (0..header.region_count)
            .filter_map(|i| Some((i, image.region(i)?)))
            .map(|(index, r)| RegionView {
                index,
                partition: image.partition(r.partition.into()).map_or(0, |p| p.number),
                kind: r.kind.name().to_string(),
                offset: r.offset,
                length: r.length,
                stored: r.stored_size,
                digest: (r.kind == RegionKind::Data).then(|| hex(&r.digest)),
            })
            .collect()
    });
    let (signature, signer) = match image.signature() {
        SignatureCheck::Unsigned => ("unsigned".to_string(), None),
        SignatureCheck::NotChecked { signer } => {
            ("signed (not checked)".to_string(), Some(hex(&signer)))
        }
        SignatureCheck::Verified => ("signed (verified)".to_string(), None),
    };
    ImageView {
        name: header.name().to_string(),
        version: header.image_version,
        format_version: recovery_proto::image::format::algorithm_version(header.algorithm),
        hash: header.algorithm.key().to_string(),
        created: header.created,
        id: hex(&image.id()),
        signature,
        signer,
        chunk_size: header.chunk_size,
        table: format!("{:?}", header.table).to_lowercase(),
        disk_signature: format!("{:08x}", header.disk_signature),
        disk_size: header.disk_size,
        payload_size: header.payload_size,
        file_size,
        partitions,
        regions,
        zboot_layout: None,
    }
}

/// The zboot-layout check of `inspect` and `verify`: the text after `layout: ` and the JSON.
/// Never an error: their exit codes stay the image's.
fn layout_of(opened: &mut Opened, file: &Path) -> (String, LayoutJson) {
    match image_layout::check_opened(opened, file) {
        Ok(layout) => (layout.describe(), layout.json()),
        Err(error) => (
            format!("not checked ({error:#})"),
            LayoutJson {
                ok: false,
                problems: vec![format!("not checked: {error:#}")],
                notes: Vec::new(),
            },
        ),
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    // Tenths of a MiB in integers (no float rounding concerns for display).
    let tenths = bytes * 10 / (1 << 20);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

fn inspect(file: &Path, json: bool, regions: bool, out: &mut dyn Write) -> Result<()> {
    let mut opened = Opened::new(file, None)?;
    let size = opened.source.size()?;
    let mut view = {
        let image = opened.image().map_err(|e| refuse(file, &e))?;
        view(&image, size, regions)
    };
    let (layout, layout_json) = layout_of(&mut opened, file);
    view.zboot_layout = Some(layout_json);
    if json {
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: .zi format {} ({} digests)",
        file.display(),
        view.format_version,
        view.hash
    )?;
    writeln!(out, "  name       {}", view.name)?;
    writeln!(out, "  version    {}", view.version)?;
    writeln!(
        out,
        "  created    {} (seconds since 1970 UTC)",
        view.created
    )?;
    writeln!(out, "  id         {}", view.id)?;
    writeln!(
        out,
        "  signature  {}{}",
        view.signature,
        view.signer
            .as_ref()
            .map(|s| format!(", key {s}"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "  layout     {}, disk signature {}, needs {} ({} bytes)",
        view.table,
        view.disk_signature,
        mib(view.disk_size),
        view.disk_size
    )?;
    writeln!(
        out,
        "  chunks     {} KiB max, payload {}, file {}",
        view.chunk_size / 1024,
        mib(view.payload_size),
        mib(view.file_size)
    )?;
    writeln!(
        out,
        "  {:>3}  {:<7} {:>5} {:>10} {:>10} {:>8} {:>11} {:>11} {:>11} {:>11}",
        "#", "role", "type", "start", "sectors", "regions", "data", "fill", "skip", "stored"
    )?;
    for p in &view.partitions {
        writeln!(
            out,
            "  {:>3}  {:<7} {:>5} {:>10} {:>10} {:>8} {:>11} {:>11} {:>11} {:>11}",
            p.number,
            p.role,
            p.kind,
            p.start_lba,
            p.sectors,
            p.regions,
            mib(p.data_bytes),
            mib(p.fill_bytes),
            mib(p.skip_bytes),
            mib(p.stored_bytes)
        )?;
    }
    for r in view.regions.iter().flatten() {
        writeln!(
            out,
            "  region {:>6} p{} {:<4} offset {:>12} length {:>9} stored {:>9} {}",
            r.index,
            r.partition,
            r.kind,
            r.offset,
            r.length,
            r.stored,
            r.digest.as_deref().unwrap_or("")
        )?;
    }
    writeln!(out, "layout: {layout}")?;
    Ok(())
}

/// The public key from `--pubkey` (file or text) or `--manifest`.
pub fn public_key(pubkey: Option<&str>, manifest: Option<&Path>) -> Result<Option<[u8; 32]>> {
    match (pubkey, manifest) {
        (Some(_), Some(_)) => bail!("give --pubkey or --manifest, not both"),
        (Some(text), None) => key::parse_public(text).map(Some),
        (None, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let manifest = recovery_proto::manifest::Manifest::parse(&bytes)
                .map_err(|error| anyhow!("{}: {error}", path.display()))?;
            Ok(Some(manifest.public_key.ok_or_else(|| {
                anyhow!("{}: no public_key= line", path.display())
            })?))
        }
        (None, None) => Ok(None),
    }
}

/// Reads every region with the loader's reader (every chunk's hash is checked); returns
/// the data bytes.
pub fn verify_payload(opened: &mut Opened, path: &Path) -> Result<u64> {
    let mut decoder = Box::new(Decoder::new());
    let mut source = opened.source.try_clone()?;
    let image = opened.image().map_err(|e| refuse(path, &e))?;
    let mut buffer = vec![0u8; image.header().chunk_size as usize];
    let mut chunks = image.chunks(0);
    let mut data = 0u64;
    while let Some(chunk) = chunks
        .next_chunk(&image, &mut source, &mut decoder, &mut buffer)
        .map_err(|e| refuse(path, &e))?
    {
        if chunk.region.kind == RegionKind::Data {
            data += chunk.region.length;
        }
    }
    Ok(data)
}

/// Refuses an image older than `min` (anti-rollback) with [`exit::TOO_OLD`].
pub fn check_version(path: &Path, version: u32, min: u32) -> Result<()> {
    if version < min {
        return Err(ExitError {
            code: exit::TOO_OLD,
            message: format!(
                "{}: image version {version} is older than the minimum {min} (anti-rollback; \
                 --force on the host overrides)",
                path.display()
            ),
        }
        .into());
    }
    Ok(())
}

fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<()> {
    let key = public_key(args.pubkey.as_deref(), args.manifest.as_deref())?;
    let mut opened = Opened::new(&args.file, key)?;
    let (version, name, signature, algorithm) = {
        let image = opened.image().map_err(|e| refuse(&args.file, &e))?;
        (
            image.header().image_version,
            image.header().name().to_string(),
            image.signature(),
            image.header().algorithm,
        )
    };
    if let Some(min) = args.min_version {
        check_version(&args.file, version, min)?;
    }
    let data = verify_payload(&mut opened, &args.file)?;
    let signature = match signature {
        SignatureCheck::Unsigned => "unsigned".to_string(),
        SignatureCheck::NotChecked { signer } => {
            format!("signed by {} (not checked: no --pubkey)", hex(&signer))
        }
        SignatureCheck::Verified => "signature verified".to_string(),
    };
    writeln!(
        out,
        "{}: ok: {name} version {version}, {} of data, every chunk's {algorithm} matches, \
         {signature}",
        args.file.display(),
        mib(data)
    )?;
    let (layout, _) = layout_of(&mut opened, &args.file);
    writeln!(out, "layout: {layout}")?;
    Ok(())
}

/// Appends (or replaces) the signature trailer.
pub fn sign(path: &Path, key_path: &Path, out: &mut dyn Write) -> Result<()> {
    let signing = key::read_private(key_path)?;
    // The slots inside first: their signatures change the payload, hence the header.
    if image_convert::sign_slots_in_image(path, &signing, out)?.is_some() {
        writeln!(
            out,
            "{}: encoded again with its slots signed",
            path.display()
        )?;
    }
    let (unsigned_size, header) = {
        let mut opened = Opened::new(path, None)?;
        let image = opened.image().map_err(|e| refuse(path, &e))?;
        (image.header().unsigned_size(), image.header().encode())
    };
    sign_with(path, unsigned_size, &header, &signing)?;
    writeln!(
        out,
        "{}: signed with key {}",
        path.display(),
        hex(&signing.verifying_key().to_bytes())
    )?;
    Ok(())
}

/// Writes the trailer for `header` at `unsigned_size` (cutting off any old one).
pub fn sign_with(
    path: &Path,
    unsigned_size: u64,
    header: &[u8; HEADER_SIZE],
    signing: &SigningKey,
) -> Result<()> {
    let trailer = Trailer {
        public_key: signing.verifying_key().to_bytes(),
        signature: signing.sign(&signed_message(header)).to_bytes(),
    };
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    file.set_len(unsigned_size)?;
    file.write_all_at(&trailer.encode(), unsigned_size)?;
    file.sync_all()?;
    Ok(())
}
