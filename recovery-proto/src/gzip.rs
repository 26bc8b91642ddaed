//! Gzip members (RFC 1952) inflated into a caller's buffer, header and trailer checked.
//!
//! Kernels are often shipped gzip-compressed (`Image.gz`); the loader
//! inflates them straight into the kernel's place in RAM. The deflate stream
//! itself is decoded by `miniz_oxide`'s allocation-free core; this module
//! parses the member header (RFC 1952 §2.3: ID1 ID2 CM FLG MTIME XFL OS, then
//! the optional FEXTRA, FNAME, FCOMMENT and FHCRC fields) and checks the
//! trailer (CRC-32 and ISIZE, the length modulo 2^32).

use core::fmt;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

/// Gzip's two magic bytes, ID1 and ID2.
pub const MAGIC: [u8; 2] = [0x1f, 0x8b];
/// CM = 8: deflate, the only method RFC 1952 defines.
const METHOD_DEFLATE: u8 = 8;
const FLAG_HEADER_CRC: u8 = 1 << 1;
const FLAG_EXTRA: u8 = 1 << 2;
const FLAG_NAME: u8 = 1 << 3;
const FLAG_COMMENT: u8 = 1 << 4;
/// FLG bits 5–7 are reserved and must be zero.
const FLAGS_RESERVED: u8 = 0b1110_0000;
/// The fixed part of the header.
const FIXED_HEADER: usize = 10;
/// CRC-32 and ISIZE.
const TRAILER: usize = 8;

/// What was wrong with a gzip member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GzipError {
    /// The data ends inside `part`.
    Truncated { part: &'static str },
    /// The first two bytes are not 1f 8b.
    BadMagic { found: [u8; 2] },
    /// CM is not 8 (deflate).
    UnsupportedMethod { method: u8 },
    /// FLG has reserved bits set.
    ReservedFlags { flags: u8 },
    /// FHCRC does not match the header.
    HeaderCrc { expected: u16, found: u16 },
    /// The deflate stream is corrupt at compressed byte `offset` (from the
    /// start of the member).
    CorruptStream { offset: usize },
    /// The data inflates to more than the `capacity` available.
    OutputTooSmall { capacity: usize },
    /// The trailer's CRC-32 does not match the inflated data.
    CrcMismatch { expected: u32, found: u32 },
    /// The trailer's ISIZE does not match the inflated length.
    SizeMismatch { expected: u32, found: u32 },
}

impl fmt::Display for GzipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { part } => write!(f, "gzip data ends inside the {part}"),
            Self::BadMagic { found } => {
                write!(
                    f,
                    "not gzip: starts {:02x} {:02x}, not 1f 8b",
                    found[0], found[1]
                )
            }
            Self::UnsupportedMethod { method } => {
                write!(f, "gzip compression method {method} is not deflate (8)")
            }
            Self::ReservedFlags { flags } => {
                write!(f, "gzip header flags 0x{flags:02x} use reserved bits")
            }
            Self::HeaderCrc { expected, found } => write!(
                f,
                "gzip header CRC is 0x{found:04x}, the header says 0x{expected:04x}"
            ),
            Self::CorruptStream { offset } => {
                write!(f, "corrupt deflate data near compressed byte {offset}")
            }
            Self::OutputTooSmall { capacity } => {
                write!(f, "inflates to more than the {capacity} bytes available")
            }
            Self::CrcMismatch { expected, found } => write!(
                f,
                "inflated data has CRC-32 0x{found:08x}, the trailer says 0x{expected:08x}"
            ),
            Self::SizeMismatch { expected, found } => write!(
                f,
                "inflated {found} bytes (mod 2^32), the trailer says {expected}"
            ),
        }
    }
}

/// Whether `data` starts like a gzip member.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

fn byte(data: &[u8], at: usize, part: &'static str) -> Result<u8, GzipError> {
    data.get(at).copied().ok_or(GzipError::Truncated { part })
}

/// The length of the member header at the start of `data` (where the
/// deflate stream begins).
pub fn header_length(data: &[u8]) -> Result<usize, GzipError> {
    let magic = [byte(data, 0, "header")?, byte(data, 1, "header")?];
    if magic != MAGIC {
        return Err(GzipError::BadMagic { found: magic });
    }
    let method = byte(data, 2, "header")?;
    if method != METHOD_DEFLATE {
        return Err(GzipError::UnsupportedMethod { method });
    }
    let flags = byte(data, 3, "header")?;
    if flags & FLAGS_RESERVED != 0 {
        return Err(GzipError::ReservedFlags { flags });
    }
    if data.len() < FIXED_HEADER {
        return Err(GzipError::Truncated { part: "header" });
    }
    let mut at = FIXED_HEADER;
    if flags & FLAG_EXTRA != 0 {
        let length = u16::from_le_bytes([
            byte(data, at, "extra field")?,
            byte(data, at + 1, "extra field")?,
        ]);
        at += 2 + usize::from(length);
        if at > data.len() {
            return Err(GzipError::Truncated {
                part: "extra field",
            });
        }
    }
    for (flag, part) in [(FLAG_NAME, "file name"), (FLAG_COMMENT, "comment")] {
        if flags & flag != 0 {
            let rest = data.get(at..).ok_or(GzipError::Truncated { part })?;
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(GzipError::Truncated { part })?;
            at += end + 1;
        }
    }
    if flags & FLAG_HEADER_CRC != 0 {
        let expected = u16::from_le_bytes([
            byte(data, at, "header CRC")?,
            byte(data, at + 1, "header CRC")?,
        ]);
        let header = data
            .get(..at)
            .ok_or(GzipError::Truncated { part: "header" })?;
        // FHCRC: the two least significant bytes of the header's CRC-32.
        let found = crc32fast::hash(header) as u16;
        if found != expected {
            return Err(GzipError::HeaderCrc { expected, found });
        }
        at += 2;
    }
    Ok(at)
}

/// Inflates the gzip member in `data` into `out`, checking the header, the
/// deflate stream and the trailer; returns the inflated length.
pub fn inflate(data: &[u8], out: &mut [u8]) -> Result<usize, GzipError> {
    let start = header_length(data)?;
    let stream = data
        .get(start..)
        .ok_or(GzipError::Truncated { part: "header" })?;
    let mut decompressor = DecompressorOxide::new();
    // The whole output buffer is available at once, so no wrapping window.
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, consumed, written) = decompress(&mut decompressor, stream, out, 0, flags);
    match status {
        TINFLStatus::Done => {}
        TINFLStatus::HasMoreOutput => {
            return Err(GzipError::OutputTooSmall {
                capacity: out.len(),
            });
        }
        TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
            return Err(GzipError::Truncated {
                part: "deflate stream",
            });
        }
        _ => {
            return Err(GzipError::CorruptStream {
                offset: start + consumed,
            });
        }
    }
    let trailer_at = start + consumed;
    let trailer = data
        .get(trailer_at..trailer_at + TRAILER)
        .ok_or(GzipError::Truncated { part: "trailer" })?;
    let word = |at: usize| {
        u32::from_le_bytes([
            trailer.get(at).copied().unwrap_or(0),
            trailer.get(at + 1).copied().unwrap_or(0),
            trailer.get(at + 2).copied().unwrap_or(0),
            trailer.get(at + 3).copied().unwrap_or(0),
        ])
    };
    let inflated = out.get(..written).ok_or(GzipError::OutputTooSmall {
        capacity: out.len(),
    })?;
    let found_crc = crc32fast::hash(inflated);
    if found_crc != word(0) {
        return Err(GzipError::CrcMismatch {
            expected: word(0),
            found: found_crc,
        });
    }
    // ISIZE is the input size modulo 2^32 (RFC 1952 §2.3.1).
    let found_size = written as u32;
    if found_size != word(4) {
        return Err(GzipError::SizeMismatch {
            expected: word(4),
            found: found_size,
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// A gzip member made with the `flate2`-free route: miniz_oxide's
    /// deflate plus a hand-built header and trailer (so tests can also
    /// build members with optional fields).
    fn gzip(payload: &[u8], flags: u8, extras: &[u8]) -> Vec<u8> {
        let mut member = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
        member.extend_from_slice(extras);
        if flags & FLAG_HEADER_CRC != 0 {
            let crc = crc32fast::hash(&member) as u16;
            member.write_all(&crc.to_le_bytes()).unwrap();
        }
        member.extend(miniz_oxide::deflate::compress_to_vec(payload, 6));
        member
            .write_all(&crc32fast::hash(payload).to_le_bytes())
            .unwrap();
        member
            .write_all(&(payload.len() as u32).to_le_bytes())
            .unwrap();
        member
    }

    fn payload() -> Vec<u8> {
        (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn inflates_a_plain_member() {
        let data = payload();
        let member = gzip(&data, 0, &[]);
        let mut out = vec![0u8; data.len()];
        assert_eq!(inflate(&member, &mut out), Ok(data.len()));
        assert_eq!(out, data);
    }

    #[test]
    fn skips_optional_header_fields_and_checks_the_header_crc() {
        let data = payload();
        let mut extras = vec![3, 0, b'x', b'y', b'z'];
        extras.extend_from_slice(b"Image\0built by CI\0");
        let member = gzip(
            &data,
            FLAG_EXTRA | FLAG_NAME | FLAG_COMMENT | FLAG_HEADER_CRC,
            &extras,
        );
        let mut out = vec![0u8; data.len() + 100];
        assert_eq!(inflate(&member, &mut out), Ok(data.len()));
        let mut bad = member.clone();
        bad[12] ^= 1; // inside the extra field: the header CRC no longer matches
        assert!(matches!(
            inflate(&bad, &mut out),
            Err(GzipError::HeaderCrc { .. })
        ));
    }

    #[test]
    fn rejects_bad_headers() {
        let mut out = [0u8; 16];
        assert_eq!(
            inflate(b"\x1f\x8c", &mut out),
            Err(GzipError::BadMagic {
                found: [0x1f, 0x8c]
            })
        );
        assert_eq!(
            inflate(b"\x1f\x8b\x07\0", &mut out),
            Err(GzipError::UnsupportedMethod { method: 7 })
        );
        assert_eq!(
            inflate(b"\x1f\x8b\x08\x20", &mut out),
            Err(GzipError::ReservedFlags { flags: 0x20 })
        );
        assert_eq!(
            inflate(b"\x1f\x8b\x08\x00\0\0", &mut out),
            Err(GzipError::Truncated { part: "header" })
        );
        assert_eq!(
            inflate(b"\x1f\x8b\x08\x08\0\0\0\0\0\x03name-without-end", &mut out),
            Err(GzipError::Truncated { part: "file name" })
        );
    }

    #[test]
    fn detects_corruption_truncation_and_small_buffers() {
        let data = payload();
        let member = gzip(&data, 0, &[]);
        let mut out = vec![0u8; data.len()];

        let mut crc = member.clone();
        let at = crc.len() - 8;
        crc[at] ^= 0xff;
        assert!(matches!(
            inflate(&crc, &mut out),
            Err(GzipError::CrcMismatch { .. })
        ));

        let mut size = member.clone();
        let at = size.len() - 1;
        size[at] ^= 0x01;
        assert!(matches!(
            inflate(&size, &mut out),
            Err(GzipError::SizeMismatch { .. })
        ));

        assert_eq!(
            inflate(&member[..member.len() - 3], &mut out),
            Err(GzipError::Truncated { part: "trailer" })
        );
        assert_eq!(
            inflate(&member[..member.len() / 2], &mut out),
            Err(GzipError::Truncated {
                part: "deflate stream"
            })
        );

        let mut small = vec![0u8; data.len() - 1];
        assert_eq!(
            inflate(&member, &mut small),
            Err(GzipError::OutputTooSmall {
                capacity: data.len() - 1
            })
        );

        // A flipped bit in the deflate data is caught by the stream or the CRC.
        let mut flipped = member.clone();
        flipped[40] ^= 0x10;
        assert!(inflate(&flipped, &mut out).is_err());
    }
}
