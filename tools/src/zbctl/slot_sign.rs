//! Slot signatures on the host side: `slot.sig` written beside each `slot.txt`, carried by
//! install, and described by `status` (docs/security.md).
//!
//! The format and the signed message are `recovery_proto::slot_signature`'s, the same code
//! the loader verifies with.

use std::io::Write;

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::SigningKey;
use recovery_proto::Slot;
use recovery_proto::slot_manifest::{Algorithm, SlotManifest};
use recovery_proto::slot_signature::{self, Fingerprint, SlotSignature};

use super::install::read_fat_file as read;

/// The signature's file name in a slot directory.
pub const FILE: &str = "slot.sig";

/// The text of `slot.sig` for `slot_txt` (the bytes of a `slot.txt`), signed by `key` as
/// image `name`.
pub fn sign_text(slot_txt: &[u8], name: &str, key: &SigningKey) -> Result<String> {
    let manifest = SlotManifest::parse(slot_txt).map_err(|e| anyhow!("slot.txt: {e}"))?;
    let signature =
        SlotSignature::sign(&manifest, name, key).map_err(|e| anyhow!("signing slot.txt: {e}"))?;
    Ok(signature.to_string())
}

/// Signs every slot directory of a boot partition that has a `slot.txt`, writing its
/// `slot.sig`; returns the slots signed with their versions. An image's `A/` without a
/// `slot.txt` (install makes one) first gets the `slot.txt` install would write for
/// `version`, with digests by `algorithm` (the image's), so that install can carry the
/// signature.
pub fn sign_boot_partition<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    name: &str,
    version: u32,
    algorithm: Algorithm,
    key: &SigningKey,
) -> Result<Vec<(Slot, u32)>> {
    let mut signed = Vec::new();
    for slot in Slot::ALL {
        let text = match read(root, &format!("{slot}/slot.txt"))? {
            Some(text) => text,
            None if slot == Slot::A && read(root, "A/kernel.img")?.is_some() => {
                let text = install_slot_txt(root, version, algorithm)?;
                let mut file = root.create_file("A/slot.txt")?;
                file.truncate()?;
                file.write_all(&text)
                    .context("writing /A/slot.txt: the boot partition is full")?;
                text
            }
            None => continue,
        };
        let manifest = SlotManifest::parse(&text).map_err(|e| anyhow!("{slot}/slot.txt: {e}"))?;
        signed.push((slot, manifest.image_version));
        // Already signed so: left as it is (signatures are deterministic, but rewriting the
        // file would still move it on the FAT).
        if signed_as(root, slot, &text, name, &key.verifying_key().to_bytes())? {
            continue;
        }
        let signature = sign_text(&text, name, key).with_context(|| format!("slot {slot}"))?;
        let dir = root.open_dir(slot.name())?;
        let mut file = dir
            .create_file(FILE)
            .with_context(|| format!("creating /{slot}/{FILE}"))?;
        file.truncate()?;
        file.write_all(signature.as_bytes())
            .with_context(|| format!("writing /{slot}/{FILE}: the boot partition is full"))?;
    }
    Ok(signed)
}

/// Whether `slot`'s `slot.sig` signs `slot_txt` as image `name` by the key `public`.
pub fn signed_as<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    slot: Slot,
    slot_txt: &[u8],
    name: &str,
    public: &[u8; 32],
) -> Result<bool> {
    let existing = read(root, &format!("{slot}/{FILE}"))?;
    let wanted = Signed::By {
        signer: fingerprint_of(public),
        image_name: name.to_string(),
    };
    Ok(describe(slot_txt, existing.as_deref()) == wanted)
}

/// The `slot.txt` `zbctl install` generates from an image's `A/` (the same files, in the
/// same order, at the image's version), once the image has it.
fn install_slot_txt<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    version: u32,
    algorithm: Algorithm,
) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    for (name, _) in super::install::SLOT_FILES {
        if let Some(bytes) = read(root, &format!("A/{name}"))? {
            files.push((name, bytes));
        }
    }
    let text =
        super::install::generated_slot_txt(&files, version, algorithm).context("A/slot.txt")?;
    Ok(text.into_bytes())
}

/// What a slot directory's signature says, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signed {
    /// No `slot.sig`.
    Unsigned,
    /// `slot.sig` verifies with the key it names over this `slot.txt`.
    By {
        /// The signer's fingerprint.
        signer: Fingerprint,
        /// The image name it signs.
        image_name: String,
    },
    /// `slot.sig` is there but does not parse, or does not verify with the key it names.
    Broken(String),
}

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsigned => f.write_str("unsigned"),
            Self::By { signer, image_name } => {
                write!(f, "signed by key {signer} ({image_name})")
            }
            Self::Broken(why) => write!(f, "signature broken: {why}"),
        }
    }
}

/// Checks `slot.sig` (if any) against `slot_txt` with the key it names itself: the public
/// key is only trusted to say who signed; the loader checks its own.
pub fn describe(slot_txt: &[u8], slot_sig: Option<&[u8]>) -> Signed {
    let Some(slot_sig) = slot_sig else {
        return Signed::Unsigned;
    };
    let manifest = match SlotManifest::parse(slot_txt) {
        Ok(manifest) => manifest,
        Err(error) => return Signed::Broken(format!("slot.txt: {error}")),
    };
    match SlotSignature::parse(slot_sig) {
        Ok(signature) => match signature.verify(&manifest, &signature.public_key) {
            Ok(()) => Signed::By {
                signer: signature.signer(),
                image_name: signature.image_name.to_string(),
            },
            Err(error) => Signed::Broken(error.to_string()),
        },
        Err(error) => Signed::Broken(error.to_string()),
    }
}

/// The signature to carry with a slot `install` writes: the image's `A/slot.sig`, checked
/// against the `slot.txt` install generates. With `key` (the target's), the signer must be
/// that key. `None` when the image's slot is unsigned.
pub fn carried(
    image_sig: Option<&[u8]>,
    generated_slot_txt: &[u8],
    key: Option<&[u8; 32]>,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    let Some(image_sig) = image_sig else {
        return Ok(None);
    };
    let manifest = SlotManifest::parse(generated_slot_txt).map_err(|e| anyhow!("slot.txt: {e}"))?;
    let signature =
        SlotSignature::parse(image_sig).map_err(|e| anyhow!("{what}: the image's A/{e}"))?;
    let check_with = key.copied().unwrap_or(signature.public_key);
    signature.verify(&manifest, &check_with).map_err(|e| {
        anyhow!(
            "{what}: the image's A/slot.sig does not sign the slot install writes (version \
             {}, the files as the image has them): {e}",
            manifest.image_version
        )
    })?;
    Ok(Some(image_sig.to_vec()))
}

/// A key's fingerprint, for messages.
pub fn fingerprint_of(key: &[u8; 32]) -> Fingerprint {
    slot_signature::fingerprint(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT_TXT: &[u8] = b"format=1\nimage_version=3\n\
        file=kernel.img size=4 sha256=0101010101010101010101010101010101010101010101010101010101010101\n\
        file=cmdline.txt size=9 sha256=0202020202020202020202020202020202020202020202020202020202020202\n";

    #[test]
    fn a_signed_slot_is_described_and_carried_and_a_changed_one_is_not() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let sig = sign_text(SLOT_TXT, "product", &key).unwrap();
        let public = key.verifying_key().to_bytes();
        assert_eq!(
            describe(SLOT_TXT, Some(sig.as_bytes())),
            Signed::By {
                signer: fingerprint_of(&public),
                image_name: "product".into()
            }
        );
        assert_eq!(describe(SLOT_TXT, None), Signed::Unsigned);
        let changed = String::from_utf8(SLOT_TXT.to_vec())
            .unwrap()
            .replace("image_version=3", "image_version=4");
        assert!(matches!(
            describe(changed.as_bytes(), Some(sig.as_bytes())),
            Signed::Broken(_)
        ));
        // Carried when it signs what install writes, with or without the target's key.
        assert!(
            carried(Some(sig.as_bytes()), SLOT_TXT, Some(&public), "x")
                .unwrap()
                .is_some()
        );
        assert!(
            carried(Some(sig.as_bytes()), SLOT_TXT, None, "x")
                .unwrap()
                .is_some()
        );
        assert!(
            carried(None, SLOT_TXT, Some(&public), "x")
                .unwrap()
                .is_none()
        );
        // Refused when install's slot.txt differs, or the target wants another key.
        let error = carried(Some(sig.as_bytes()), changed.as_bytes(), None, "x").unwrap_err();
        assert!(error.to_string().contains("version 4"), "{error}");
        let other_public = other.verifying_key().to_bytes();
        assert!(carried(Some(sig.as_bytes()), SLOT_TXT, Some(&other_public), "x").is_err());
    }
}
