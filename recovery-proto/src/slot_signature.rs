//! `slot.sig`: the ed25519 signature of a slot's manifest, and the message it signs.
//!
//! `slot.txt` makes a slot's files *consistent* (each file's size and digest); `slot.sig`
//! makes them *authentic*: an ed25519 signature (RFC 8032, pure) by the product's key over
//! a canonical message built from the parsed `slot.txt` and the image's name
//! ([`signed_message`]). The message does not name the slot letter, so the same signed
//! files serve A, B or SAFE. `slot.txt` itself is unchanged by signing, so a loader that
//! does not know `slot.sig` still boots the slot.
//!
//! Format (`docs/disk-layout.md`), `key=value` lines as in `slot.txt`, `format=1` first,
//! each key exactly once:
//!
//! ```text
//! format=1
//! algorithm=ed25519
//! image_name=raspios
//! public_key=<64 hex digits: the signer's key, to name it; the loader checks its own>
//! signature=<128 hex digits>
//! ```
//!
//! The message: [`SIGNATURE_CONTEXT`] (for a format-1, SHA-256 `slot.txt`) or
//! [`SIGNATURE_CONTEXT_BLAKE3`] (format 2), then the image name and a NUL, the image
//! version (u32, little-endian), the number of files (u32 LE), then per file in the order
//! of their lower-case names: the lower-case name and a NUL, the size (u32 LE) and the
//! digest. The context names the digest's hash function, so a signature never vouches
//! for a digest read as another function's. Parsed without allocation; the message is built into a caller's buffer.

use core::fmt;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::digest::Algorithm;
use crate::slot_manifest::{MAX_FILES, SlotManifest};

/// The only format this parser reads and writes.
pub const FORMAT: u32 = 1;
/// The only algorithm: ed25519.
pub const ALGORITHM: &str = "ed25519";
/// Domain separation: this key's signatures over slot manifests cannot be taken for its
/// signatures over anything else (a `.zi` header has its own context).
pub const SIGNATURE_CONTEXT: &[u8] = b"zboot slot manifest signature v1\0";
/// The context of a format-2 `slot.txt`'s message, whose digests are BLAKE3 (the same
/// length as [`SIGNATURE_CONTEXT`]).
pub const SIGNATURE_CONTEXT_BLAKE3: &[u8] = b"zboot slot manifest signature v2\0";
/// The longest image name.
pub const MAX_NAME: usize = 64;
/// The largest `slot.sig` read: its five lines fit in far less.
pub const MAX_SIZE: usize = 1024;
/// The longest signed message: context, name, version, count, and each file's name
/// (an 8.3 name, 12 bytes at most, and its NUL), size and hash.
pub const MAX_MESSAGE: usize =
    SIGNATURE_CONTEXT.len() + MAX_NAME + 1 + 4 + 4 + MAX_FILES * (13 + 4 + 32);

/// A parsed `slot.sig`; the name borrows from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSignature<'a> {
    /// The image's name, covered by the signature.
    pub image_name: &'a str,
    /// The signer's public key as the file names it (not trusted: it says who signed).
    pub public_key: [u8; 32],
    /// The signature.
    pub signature: [u8; 64],
}

/// Why `slot.sig` is refused, or does not verify. Line numbers are 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotSignatureError {
    /// Larger than [`MAX_SIZE`].
    TooLarge { size: usize },
    /// The line is not valid UTF-8.
    InvalidUtf8 { line: u32 },
    /// The line is not `key=value`.
    MissingEquals { line: u32 },
    /// The first setting is not `format=`.
    FormatNotFirst { line: u32 },
    /// A format this loader does not know.
    UnknownFormat { line: u32 },
    /// An algorithm other than ed25519.
    UnknownAlgorithm { line: u32 },
    /// A key this format does not have.
    UnknownKey { line: u32 },
    /// A key given a second time.
    DuplicateKey { line: u32, key: &'static str },
    /// A key missing (the file is cut short, or was never whole).
    Missing { key: &'static str },
    /// The image name is empty, longer than [`MAX_NAME`], or has control characters.
    BadName { line: u32 },
    /// `public_key=` is not 64 hex digits.
    BadPublicKey { line: u32 },
    /// `signature=` is not 128 hex digits (truncated, too long, or not hex).
    BadSignatureText { line: u32, digits: usize },
    /// The manifest lists more files than a message can hold.
    MessageTooLong,
    /// The built-in key is not a valid ed25519 key.
    BadBuiltInKey,
    /// The signature does not verify with the built-in key. `signed_by_this_key`: whether
    /// the file names that key as its signer (then the files, name or version changed
    /// after signing; else another key signed it, or the file lies).
    DoesNotVerify { signed_by_this_key: bool },
}

impl core::error::Error for SlotSignatureError {}

impl fmt::Display for SlotSignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SlotSignatureError as E;
        match *self {
            E::TooLarge { size } => {
                write!(
                    f,
                    "slot.sig: {size} bytes, more than the {MAX_SIZE} allowed"
                )
            }
            E::InvalidUtf8 { line } => write!(f, "slot.sig line {line}: not valid UTF-8"),
            E::MissingEquals { line } => write!(f, "slot.sig line {line}: expected key=value"),
            E::FormatNotFirst { line } => write!(
                f,
                "slot.sig line {line}: the first setting must be format={FORMAT}"
            ),
            E::UnknownFormat { line } => write!(
                f,
                "slot.sig line {line}: a format this loader does not know (it reads format \
                 {FORMAT})"
            ),
            E::UnknownAlgorithm { line } => write!(
                f,
                "slot.sig line {line}: algorithm is not {ALGORITHM}, the only one zboot checks"
            ),
            E::UnknownKey { line } => write!(
                f,
                "slot.sig line {line}: unknown key (expected format, algorithm, image_name, \
                 public_key, signature)"
            ),
            E::DuplicateKey { line, key } => {
                write!(f, "slot.sig line {line}: {key} given again")
            }
            E::Missing { key } => write!(f, "slot.sig: no {key}= line (cut short?)"),
            E::BadName { line } => write!(
                f,
                "slot.sig line {line}: image_name must be 1 to {MAX_NAME} printable characters"
            ),
            E::BadPublicKey { line } => {
                write!(f, "slot.sig line {line}: public_key is not 64 hex digits")
            }
            E::BadSignatureText { line, digits } => write!(
                f,
                "slot.sig line {line}: signature has {digits} characters, expected 128 hex digits"
            ),
            E::MessageTooLong => f.write_str("slot.sig: the manifest is too long to sign"),
            E::BadBuiltInKey => f.write_str("the key built into zboot is not an ed25519 key"),
            E::DoesNotVerify { signed_by_this_key } => {
                if signed_by_this_key {
                    f.write_str(
                        "slot.sig: the signature does not match the slot's files, name or \
                         version (changed after signing)",
                    )
                } else {
                    f.write_str(
                        "slot.sig: not signed by the key built into zboot (signed by another \
                         key, or changed after signing)",
                    )
                }
            }
        }
    }
}

const KEYS: [&str; 5] = [
    "format",
    "algorithm",
    "image_name",
    "public_key",
    "signature",
];

impl<'a> SlotSignature<'a> {
    /// Parses `slot.sig`.
    pub fn parse(input: &'a [u8]) -> Result<Self, SlotSignatureError> {
        use SlotSignatureError as E;
        if input.len() > MAX_SIZE {
            return Err(E::TooLarge { size: input.len() });
        }
        let mut seen = [false; KEYS.len()];
        let mut image_name = None;
        let mut public_key = None;
        let mut signature = None;
        let mut first = true;
        for (index, raw) in input.split(|&byte| byte == b'\n').enumerate() {
            let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = core::str::from_utf8(raw).map_err(|_| E::InvalidUtf8 { line })?;
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (key, value) = text.split_once('=').ok_or(E::MissingEquals { line })?;
            let (key, value) = (key.trim(), value.trim());
            let position = KEYS
                .iter()
                .position(|known| *known == key)
                .ok_or(E::UnknownKey { line })?;
            if first && position != 0 {
                return Err(E::FormatNotFirst { line });
            }
            first = false;
            let slot = seen.get_mut(position).ok_or(E::UnknownKey { line })?;
            if *slot {
                return Err(E::DuplicateKey {
                    line,
                    key: KEYS.get(position).copied().unwrap_or(""),
                });
            }
            *slot = true;
            match position {
                0 if value == "1" => {}
                0 => return Err(E::UnknownFormat { line }),
                1 if value == ALGORITHM => {}
                1 => return Err(E::UnknownAlgorithm { line }),
                2 => {
                    let printable = value.chars().all(|c| !c.is_control());
                    if value.is_empty() || value.len() > MAX_NAME || !printable {
                        return Err(E::BadName { line });
                    }
                    image_name = Some(value);
                }
                3 => public_key = Some(hex::<32>(value).ok_or(E::BadPublicKey { line })?),
                _ => {
                    signature = Some(hex::<64>(value).ok_or(E::BadSignatureText {
                        line,
                        digits: value.len(),
                    })?);
                }
            }
        }
        for (index, key) in KEYS.iter().enumerate() {
            if !seen.get(index).copied().unwrap_or(false) {
                return Err(E::Missing { key });
            }
        }
        Ok(Self {
            image_name: image_name.ok_or(E::Missing { key: "image_name" })?,
            public_key: public_key.ok_or(E::Missing { key: "public_key" })?,
            signature: signature.ok_or(E::Missing { key: "signature" })?,
        })
    }

    /// Checks the signature over `manifest` with `key` (the one built into zboot).
    pub fn verify(
        &self,
        manifest: &SlotManifest<'_>,
        key: &[u8; 32],
    ) -> Result<(), SlotSignatureError> {
        let mut buffer = [0u8; MAX_MESSAGE];
        let message = signed_message(manifest, self.image_name, &mut buffer)?;
        let verifying =
            VerifyingKey::from_bytes(key).map_err(|_| SlotSignatureError::BadBuiltInKey)?;
        verifying
            .verify_strict(message, &Signature::from_bytes(&self.signature))
            .map_err(|_| SlotSignatureError::DoesNotVerify {
                signed_by_this_key: &self.public_key == key,
            })
    }
}

impl<'a> SlotSignature<'a> {
    /// Signs `manifest` as image `image_name` with `key` (the build host's side: `zbctl`
    /// and the tests; the loader only verifies).
    pub fn sign(
        manifest: &SlotManifest<'_>,
        image_name: &'a str,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<Self, SlotSignatureError> {
        use ed25519_dalek::Signer;
        let printable = image_name.chars().all(|c| !c.is_control());
        if image_name.is_empty() || image_name.len() > MAX_NAME || !printable {
            return Err(SlotSignatureError::BadName { line: 0 });
        }
        let mut buffer = [0u8; MAX_MESSAGE];
        let message = signed_message(manifest, image_name, &mut buffer)?;
        Ok(Self {
            image_name,
            public_key: key.verifying_key().to_bytes(),
            signature: key.sign(message).to_bytes(),
        })
    }

    /// The signer's key as [`fingerprint`] names it.
    pub fn signer(&self) -> Fingerprint {
        fingerprint(&self.public_key)
    }
}

/// A public key's short name: the first 8 bytes of its SHA-256, shown as 16 hex digits.
/// `zbctl key generate`, `zbctl status` and the loader's log all name keys so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

/// The [`Fingerprint`] of an ed25519 public key.
pub fn fingerprint(public_key: &[u8; 32]) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(public_key);
    let mut short = [0u8; 8];
    for (to, from) in short.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    Fingerprint(short)
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SlotSignature<'_> {
    /// The canonical text of `slot.sig`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format={FORMAT}")?;
        writeln!(f, "algorithm={ALGORITHM}")?;
        writeln!(f, "image_name={}", self.image_name)?;
        f.write_str("public_key=")?;
        for byte in self.public_key {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("\nsignature=")?;
        for byte in self.signature {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("\n")
    }
}

/// The message a slot's signature signs (see the module comment), built in `buffer`.
pub fn signed_message<'b>(
    manifest: &SlotManifest<'_>,
    image_name: &str,
    buffer: &'b mut [u8; MAX_MESSAGE],
) -> Result<&'b [u8], SlotSignatureError> {
    let mut files: heapless::Vec<_, MAX_FILES> = manifest.files().iter().collect();
    files.sort_unstable_by(|a, b| {
        let a = a.name.bytes().map(|byte| byte.to_ascii_lowercase());
        let b = b.name.bytes().map(|byte| byte.to_ascii_lowercase());
        a.cmp(b)
    });
    let mut out = Writer { buffer, at: 0 };
    out.put(match manifest.algorithm() {
        Algorithm::Sha256 => SIGNATURE_CONTEXT,
        Algorithm::Blake3 => SIGNATURE_CONTEXT_BLAKE3,
    })?;
    out.put(image_name.as_bytes())?;
    out.put(&[0])?;
    out.put(&manifest.image_version.to_le_bytes())?;
    out.put(&u32::try_from(files.len()).unwrap_or(u32::MAX).to_le_bytes())?;
    for file in files {
        for byte in file.name.bytes() {
            out.put(&[byte.to_ascii_lowercase()])?;
        }
        out.put(&[0])?;
        out.put(&file.size.to_le_bytes())?;
        out.put(&file.digest)?;
    }
    let Writer { buffer, at } = out;
    buffer.get(..at).ok_or(SlotSignatureError::MessageTooLong)
}

struct Writer<'b> {
    buffer: &'b mut [u8; MAX_MESSAGE],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SlotSignatureError> {
        let end = self.at + bytes.len();
        self.buffer
            .get_mut(self.at..end)
            .ok_or(SlotSignatureError::MessageTooLong)?
            .copy_from_slice(bytes);
        self.at = end;
        Ok(())
    }
}

/// `N` bytes from exactly `2 × N` hex digits.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = core::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const MANIFEST: &[u8] = b"format=1\nimage_version=7\n\
        file=kernel.img size=100 sha256=0101010101010101010101010101010101010101010101010101010101010101\n\
        file=cmdline.txt size=20 sha256=0202020202020202020202020202020202020202020202020202020202020202\n";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// `slot.sig` for `manifest` signed by `signer`.
    fn signed(manifest: &SlotManifest<'_>, name: &str, signer: &SigningKey) -> std::string::String {
        std::format!("{}", SlotSignature::sign(manifest, name, signer).unwrap())
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_change_does_not() {
        let manifest = SlotManifest::parse(MANIFEST).unwrap();
        let key = key();
        let public = key.verifying_key().to_bytes();
        let text = signed(&manifest, "raspios", &key);
        let signature = SlotSignature::parse(text.as_bytes()).unwrap();
        assert_eq!(signature.image_name, "raspios");
        signature.verify(&manifest, &public).unwrap();

        // Another version, file hash, size, or name: refused.
        for changed in [
            &MANIFEST[..].replace_bytes(b"image_version=7", b"image_version=6"),
            &MANIFEST[..].replace_bytes(b"size=100", b"size=101"),
            &MANIFEST[..].replace_bytes(b"sha256=0202", b"sha256=0203"),
            &[
                MANIFEST,
                b"file=initrd.img size=1 sha256=0303030303030303030303030303030303030303030303030303030303030303\n",
            ]
            .concat(),
        ] {
            let other = SlotManifest::parse(changed).unwrap();
            assert_eq!(
                signature.verify(&other, &public),
                Err(SlotSignatureError::DoesNotVerify {
                    signed_by_this_key: true
                })
            );
        }
        // Another image name in slot.sig.
        let renamed = text.replace("image_name=raspios", "image_name=raspio5");
        let renamed = SlotSignature::parse(renamed.as_bytes()).unwrap();
        assert!(renamed.verify(&manifest, &public).is_err());
        // The order of file lines and the case of names do not matter.
        let reordered = b"format=1\nimage_version=7\n\
            file=CMDLINE.TXT size=20 sha256=0202020202020202020202020202020202020202020202020202020202020202\n\
            file=kernel.img size=100 sha256=0101010101010101010101010101010101010101010101010101010101010101\n";
        signature
            .verify(&SlotManifest::parse(reordered).unwrap(), &public)
            .unwrap();
    }

    #[test]
    fn a_slot_signed_by_another_key_is_named_so() {
        let manifest = SlotManifest::parse(MANIFEST).unwrap();
        let other = SigningKey::from_bytes(&[8; 32]);
        let text = signed(&manifest, "raspios", &other);
        let signature = SlotSignature::parse(text.as_bytes()).unwrap();
        let error = signature
            .verify(&manifest, &key().verifying_key().to_bytes())
            .unwrap_err();
        assert_eq!(
            error,
            SlotSignatureError::DoesNotVerify {
                signed_by_this_key: false
            }
        );
        assert!(std::format!("{error}").contains("not signed by the key built into zboot"));
    }

    #[test]
    fn bad_signature_files_are_refused_with_their_reason() {
        let manifest = SlotManifest::parse(MANIFEST).unwrap();
        let good = signed(&manifest, "raspios", &key());
        let line_of = |key: &str| good.lines().find(|line| line.starts_with(key)).unwrap();
        let sig_line = line_of("signature=");
        let cases: [(std::string::String, SlotSignatureError); 9] = [
            (
                good.replace(sig_line, &sig_line[..sig_line.len() - 2]),
                SlotSignatureError::BadSignatureText {
                    line: 5,
                    digits: 126,
                },
            ),
            (
                good.replace(sig_line, &std::format!("{sig_line}00")),
                SlotSignatureError::BadSignatureText {
                    line: 5,
                    digits: 130,
                },
            ),
            (
                good.replace("algorithm=ed25519", "algorithm=rsa2048"),
                SlotSignatureError::UnknownAlgorithm { line: 2 },
            ),
            (
                good.replace("format=1", "format=2"),
                SlotSignatureError::UnknownFormat { line: 1 },
            ),
            (
                good.lines()
                    .take(4)
                    .collect::<std::vec::Vec<_>>()
                    .join("\n"),
                SlotSignatureError::Missing { key: "signature" },
            ),
            (
                std::format!("{good}{sig_line}\n"),
                SlotSignatureError::DuplicateKey {
                    line: 6,
                    key: "signature",
                },
            ),
            (
                good.replace("format=1\n", ""),
                SlotSignatureError::FormatNotFirst { line: 1 },
            ),
            (
                good.replace("image_name=raspios", "image_name="),
                SlotSignatureError::BadName { line: 3 },
            ),
            (
                std::format!("{good}{}", "#".repeat(MAX_SIZE)),
                SlotSignatureError::TooLarge {
                    size: good.len() + MAX_SIZE,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                SlotSignature::parse(text.as_bytes()),
                Err(expected),
                "{text}"
            );
            let message = std::format!("{expected}");
            assert!(message.starts_with("slot.sig"), "{message}");
        }
        assert!(matches!(
            SlotSignature::parse(b"\xff"),
            Err(SlotSignatureError::InvalidUtf8 { line: 1 })
        ));
    }

    #[test]
    fn the_message_is_bounded_for_the_largest_manifest() {
        let mut manifest = SlotManifest::new(u32::MAX);
        for index in 0..MAX_FILES {
            let name = [
                "AAAAAAA1.TXT",
                "AAAAAAA2.TXT",
                "AAAAAAA3.TXT",
                "AAAAAAA4.TXT",
                "AAAAAAA5.TXT",
                "AAAAAAA6.TXT",
                "AAAAAAA7.TXT",
                "AAAAAAA8.TXT",
            ][index];
            manifest.add_file(name, u32::MAX, [0xff; 32]).unwrap();
        }
        let mut buffer = [0u8; MAX_MESSAGE];
        let name = "n".repeat(MAX_NAME);
        let message = signed_message(&manifest, &name, &mut buffer).unwrap();
        assert_eq!(message.len(), MAX_MESSAGE);
    }

    trait ReplaceBytes {
        fn replace_bytes(&self, from: &[u8], to: &[u8]) -> std::vec::Vec<u8>;
    }

    impl ReplaceBytes for [u8] {
        fn replace_bytes(&self, from: &[u8], to: &[u8]) -> std::vec::Vec<u8> {
            let at = self
                .windows(from.len())
                .position(|window| window == from)
                .unwrap();
            [&self[..at], to, &self[at + from.len()..]].concat()
        }
    }
}
