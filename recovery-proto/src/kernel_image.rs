//! The arm64 Linux `Image` header: where a kernel wants to be placed and how much room it needs.
//!
//! Layout (Linux `Documentation/arch/arm64/booting.rst`, "Call the kernel image"), 64 bytes,
//! little endian: `code0` u32, `code1` u32, `text_offset` u64 at 8, `image_size` u64 at 16,
//! `flags` u64 at 24, three reserved u64, `magic` = "ARM\x64" at 56, `res5` u32 at 60.
//! When `image_size` is zero (kernels before 3.17) `text_offset` is to be taken as 0x80000.
//! Flags: bit 0 = big-endian kernel; bits 1–2 = page size; bit 3 = may be placed anywhere
//! (otherwise as close to the base of DRAM as possible).

use core::fmt;

/// The header's length.
pub const HEADER_SIZE: usize = 64;
/// "ARM\x64", little endian.
pub const MAGIC: u32 = 0x644d_5241;
/// The text offset of kernels whose header has no image size.
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// Kernels are placed at a 2 MiB-aligned base plus `text_offset`.
pub const BASE_ALIGNMENT: u64 = 2 << 20;

/// A parsed `Image` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the image from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes from the image's start that the kernel uses (file, `.bss` and early tables); 0 if
    /// the header does not say.
    pub image_size: u64,
    /// The flags word.
    pub flags: u64,
}

/// Why bytes are not a bootable arm64 `Image`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageHeaderError {
    /// Fewer than 64 bytes.
    Truncated { length: usize },
    /// No "ARM\x64" at offset 56.
    BadMagic { found: u32 },
    /// Flag bit 0: a big-endian kernel, which zboot (little endian) cannot enter.
    BigEndian,
    /// `text_offset` is not below 2 MiB or not 4 KiB aligned.
    BadTextOffset { text_offset: u64 },
    /// `image_size` is smaller than the file itself.
    ImageSizeTooSmall { image_size: u64, file_size: u64 },
}

impl fmt::Display for ImageHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { length } => {
                write!(
                    f,
                    "{length} bytes is too short for an arm64 Image header (64)"
                )
            }
            Self::BadMagic { found } => write!(
                f,
                "no arm64 Image magic at offset 56 (found 0x{found:08x}, expected 0x{MAGIC:08x})"
            ),
            Self::BigEndian => write!(f, "the kernel is big-endian"),
            Self::BadTextOffset { text_offset } => {
                write!(
                    f,
                    "text_offset 0x{text_offset:x} is not a 4 KiB-aligned offset below 2 MiB"
                )
            }
            Self::ImageSizeTooSmall {
                image_size,
                file_size,
            } => write!(
                f,
                "image_size {image_size} is smaller than the {file_size}-byte image file"
            ),
        }
    }
}

fn le64(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    if let Some(field) = data.get(at..at + 8) {
        bytes.copy_from_slice(field);
    }
    u64::from_le_bytes(bytes)
}

impl ImageHeader {
    /// Parses and checks the header at the start of `data`; `file_size` is the length of the
    /// whole (uncompressed) image.
    pub fn parse(data: &[u8], file_size: u64) -> Result<Self, ImageHeaderError> {
        if data.len() < HEADER_SIZE {
            return Err(ImageHeaderError::Truncated { length: data.len() });
        }
        let magic = le64(data, 56) as u32;
        if magic != MAGIC {
            return Err(ImageHeaderError::BadMagic { found: magic });
        }
        let image_size = le64(data, 16);
        let flags = if image_size == 0 { 0 } else { le64(data, 24) };
        let text_offset = if image_size == 0 {
            LEGACY_TEXT_OFFSET
        } else {
            le64(data, 8)
        };
        if flags & 1 != 0 {
            return Err(ImageHeaderError::BigEndian);
        }
        if text_offset >= BASE_ALIGNMENT || text_offset % 4096 != 0 {
            return Err(ImageHeaderError::BadTextOffset { text_offset });
        }
        if image_size != 0 && image_size < file_size {
            return Err(ImageHeaderError::ImageSizeTooSmall {
                image_size,
                file_size,
            });
        }
        Ok(Self {
            text_offset,
            image_size,
            flags,
        })
    }

    /// The bytes the kernel occupies from its load address: `image_size`, or the file size
    /// when the header does not say.
    pub fn footprint(&self, file_size: u64) -> u64 {
        if self.image_size == 0 {
            file_size
        } else {
            self.image_size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        bytes[8..16].copy_from_slice(&text_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&image_size.to_le_bytes());
        bytes[24..32].copy_from_slice(&flags.to_le_bytes());
        bytes[56..60].copy_from_slice(b"ARM\x64");
        bytes
    }

    #[test]
    fn parses_a_modern_header() {
        let parsed = ImageHeader::parse(&header(0, 40 << 20, 0xa), 30 << 20).unwrap();
        assert_eq!(
            parsed,
            ImageHeader {
                text_offset: 0,
                image_size: 40 << 20,
                flags: 0xa
            }
        );
        assert_eq!(parsed.footprint(30 << 20), 40 << 20);
    }

    #[test]
    fn legacy_headers_use_the_old_text_offset() {
        let parsed = ImageHeader::parse(&header(0x1234, 0, 0xff), 8 << 20).unwrap();
        assert_eq!(parsed.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(parsed.footprint(8 << 20), 8 << 20);
    }

    #[test]
    fn rejects_what_cannot_boot() {
        assert_eq!(
            ImageHeader::parse(&[0; 10], 10),
            Err(ImageHeaderError::Truncated { length: 10 })
        );
        let mut bad = header(0, 1 << 20, 0);
        bad[56] = b'X';
        assert!(matches!(
            ImageHeader::parse(&bad, 100),
            Err(ImageHeaderError::BadMagic { .. })
        ));
        assert_eq!(
            ImageHeader::parse(&header(0, 1 << 20, 1), 100),
            Err(ImageHeaderError::BigEndian)
        );
        assert_eq!(
            ImageHeader::parse(&header(2 << 20, 1 << 20, 0), 100),
            Err(ImageHeaderError::BadTextOffset {
                text_offset: 2 << 20
            })
        );
        assert_eq!(
            ImageHeader::parse(&header(0, 100, 0), 4096),
            Err(ImageHeaderError::ImageSizeTooSmall {
                image_size: 100,
                file_size: 4096
            })
        );
    }
}
