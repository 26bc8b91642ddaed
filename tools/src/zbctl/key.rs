//! `zbctl key generate`: ed25519 signing keys for `.zi` images, and reading key files.
//!
//! Files: the private key is the 32-byte ed25519 seed as 64 hex digits and a newline (mode
//! 0600); the public key is 64 hex digits, the form `zbmanifest.txt`'s `public_key=` takes.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use ed25519_dalek::SigningKey;

use super::status::hex;

/// `zbctl key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new key pair: `<NAME>.key` (private, mode 0600) and `<NAME>.pub`.
    Generate {
        /// Path prefix of the two files (e.g. `keys/release`).
        #[arg(short, long, value_name = "NAME")]
        output: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `zbctl key ...`.
pub fn run(command: &KeyCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        KeyCommand::Generate { output, force } => generate(output, *force, out),
    }
}

fn with_extension(prefix: &Path, extension: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

fn generate(prefix: &Path, force: bool, out: &mut dyn Write) -> Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let private = with_extension(prefix, "key");
    let public = with_extension(prefix, "pub");
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(&private)
        .with_context(|| format!("creating {} (--force overwrites)", private.display()))?;
    // `mode` applies only on creation: make an overwritten file private too.
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    writeln!(file, "{}", hex(&seed))?;
    file.sync_all()?;
    let public_hex = hex(&key.verifying_key().to_bytes());
    std::fs::write(&public, format!("{public_hex}\n"))
        .with_context(|| format!("writing {}", public.display()))?;
    writeln!(
        out,
        "private key {} (keep it secret), public key {} (fingerprint {})\nbuild it into zboot: \
         ZBOOT_PUBLIC_KEY={} cargo xtask build\nor provision it in zbmanifest.txt:\n\
         public_key={public_hex}",
        private.display(),
        public.display(),
        super::slot_sign::fingerprint_of(&key.verifying_key().to_bytes()),
        public.display()
    )?;
    Ok(())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads a private key file.
pub fn read_private(path: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let seed: [u8; 32] = unhex(text.trim())
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            anyhow!(
                "{}: not a zbctl private key (64 hex digits)",
                path.display()
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key from a file or given inline: 64 hex digits or base64 (as `public_key=`).
pub fn parse_public(text: &str) -> Result<[u8; 32]> {
    let content = match std::fs::read_to_string(text) {
        Ok(content) => content,
        Err(_) if Path::new(text).exists() => bail!("cannot read {text}"),
        Err(_) => text.to_string(),
    };
    let line = format!("public_key={}\n", content.trim());
    let manifest = recovery_proto::manifest::Manifest::parse(line.as_bytes())
        .map_err(|e| anyhow!("public key {text:?}: {e}"))?;
    manifest
        .public_key
        .ok_or_else(|| anyhow!("public key {text:?}: not 64 hex digits or base64"))
}
