//! The `.zi` image: a chunked, sparse, optionally signed disk image that the loader streams
//! from a USB stick onto the eMMC, and `zbctl` makes, checks and installs.
//!
//! Layout (byte by byte in `docs/image-format.md`):
//!
//! ```text
//! header (256 B) | manifest: partitions + regions (64 B each) | chunks | [signature (128 B)]
//! ```
//!
//! The header carries the manifest's SHA-256 and its own; every data region carries the
//! SHA-256 of its uncompressed bytes; the ed25519 signature covers the header. So one
//! signature check plus the hashes binds every byte written.
//!
//! [`reader`] is `no_std` without allocation (the loader's path); [`writer`] (feature `std`)
//! builds images for `zbctl`.

pub mod format;
pub mod reader;
#[cfg(any(test, feature = "std"))]
pub mod writer;

pub use format::{
    Compression, FORMAT_VERSION, FormatError, Header, MAX_CHUNK_SIZE, PartitionEntry, RegionEntry,
    RegionKind, Role, TableKind, Trailer,
};
pub use reader::{
    Check, Chunk, Chunks, Content, DecodeProfile, Decoder, Image, ImageError, ImageSource, Part,
    Progress, SignatureCheck, SliceSource,
};
