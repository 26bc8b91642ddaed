//! The digests zboot checks boot files and image chunks against: SHA-256 or BLAKE3.
//!
//! Format 1 of `slot.txt` and of `.zi` images uses SHA-256; format 2 uses BLAKE3, which is
//! what `zbctl` writes now. The loader reads both, so units whose slots were written by an
//! older `zbctl` keep booting after a loader update.
//!
//! Why BLAKE3: the CM4's Cortex-A72 has no Armv8 cryptography extensions, so SHA-256 runs
//! in software at about 32 instructions per byte, which made hashing most of a verified
//! boot's cost. BLAKE3 hashes four 1 KiB chunks at once in NEON registers (its tree mode
//! lets independent chunks be compressed in parallel), several times cheaper per byte on
//! the same core, with the same 256-bit output and a standard command-line tool (`b3sum`)
//! that prints exactly the hex `slot.txt` holds, as `sha256sum` does for format 1.
//! The measured cost per byte is in `docs/recovery.md` ("Hashing").

use core::fmt;

use sha2::Digest as _;

/// The hash function a format version names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256 (FIPS 180-4): format 1.
    Sha256,
    /// BLAKE3 with its default 32-byte output (the BLAKE3 specification): format 2.
    Blake3,
}

impl Algorithm {
    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> [u8; 32] {
        match self {
            Algorithm::Sha256 => sha2::Sha256::digest(bytes).into(),
            Algorithm::Blake3 => *blake3::hash(bytes).as_bytes(),
        }
    }

    /// A hasher to feed piece by piece (the loader hashes a file while the next piece of
    /// it is read).
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Blake3 => Hasher::Blake3(blake3::Hasher::new()),
        }
    }

    /// The attribute name in `slot.txt` and the label in JSON output: `sha256`, `blake3`.
    pub fn key(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// The command that prints the same hex for a file: `sha256sum`, `b3sum`.
    pub fn tool(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256sum",
            Algorithm::Blake3 => "b3sum",
        }
    }
}

/// The name people read in messages: `SHA-256`, `BLAKE3`.
impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Blake3 => "BLAKE3",
        })
    }
}

/// An incremental digest of either algorithm.
// One per file being loaded, on the loader's stack: the size difference (BLAKE3 keeps a
// stack of chaining values, about 1.7 KiB) costs nothing that matters, and there is no
// allocator to box it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// BLAKE3 state.
    Blake3(blake3::Hasher),
}

impl Hasher {
    /// Adds `bytes`. BLAKE3 hashes whole 1 KiB chunks of a long slice four at a time, so
    /// large pieces cost no more than one call over the whole.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    /// The digest of everything added.
    pub fn finalize(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(hasher) => hasher.finalize().into(),
            Hasher::Blake3(hasher) => *hasher.finalize().as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8; 32]) -> std::string::String {
        use core::fmt::Write as _;
        let mut text = std::string::String::new();
        for byte in bytes {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    // Known answers for "abc": FIPS 180-4's SHA-256 example, and the BLAKE3 reference
    // implementation's output (the same hex `b3sum` prints for a file holding "abc").
    #[test]
    fn known_answers() {
        assert_eq!(
            hex(&Algorithm::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&Algorithm::Blake3.digest(b"abc")),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn pieces_give_the_whole_digest() {
        let bytes: std::vec::Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for algorithm in [Algorithm::Sha256, Algorithm::Blake3] {
            let mut hasher = algorithm.hasher();
            for piece in bytes.chunks(1000 + 24) {
                hasher.update(piece);
            }
            hasher.update(&[]);
            assert_eq!(hasher.finalize(), algorithm.digest(&bytes), "{algorithm}");
        }
    }
}
