//! Where things go in RAM: zboot, the device trees, the kernel, the initrd.
//!
//! ```text
//! 0x0020_0000  zboot.img, .bss, stack           (the linker script caps it)
//! 0x00C0_0000  zboot's copy of the firmware DTB (2 MiB: the boot protocol's DTB limit)
//! 0x00E0_0000  the DTB handed to the kernel     (2 MiB, so it never crosses a 2 MiB block)
//! 0x0100_0000  the kernel: a 2 MiB-aligned base + text_offset, image_size bytes
//!   ...        the initrd, at the next 2 MiB boundary after the kernel's image_size
//!   ...        (top of RAM, down) a staging area for a compressed kernel while it inflates
//! ```
//!
//! The kernel goes low in RAM because kernels without the "place anywhere"
//! flag cannot use memory below their base (booting.rst); the DTB below it
//! is still reachable (the kernel maps it on its own). Everything is checked
//! against the top of the ARM's RAM as the firmware reports it.

use core::fmt;

use crate::arch;

const MIB: usize = 1 << 20;
/// Where the boot loader's DTB is copied before anything else is loaded.
pub const FIRMWARE_DTB: (usize, usize) = (0x00C0_0000, 0x00E0_0000);
/// The start of the area handed over to the kernel: the final DTB first.
pub const LOAD_AREA_START: usize = 0x00E0_0000;
/// The final DTB's place and room.
pub const DTB_ADDRESS: usize = LOAD_AREA_START;
pub const DTB_CAPACITY: usize = 2 * MIB;
/// The kernel's 2 MiB-aligned base.
pub const KERNEL_BASE: usize = 0x0100_0000;
/// Kernel and initrd placement alignment (booting.rst: 2 MiB-aligned base).
pub const ALIGNMENT: usize = 2 * MIB;

/// A placement that does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoesNotFit {
    pub what: &'static str,
    pub start: usize,
    pub length: usize,
    pub limit: usize,
}

impl fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} ({} bytes at 0x{:x}) does not fit below 0x{:x}",
            self.what, self.length, self.start, self.limit
        )
    }
}

/// Rounds `value` up to a multiple of `alignment` (a power of two).
pub const fn align_up(value: usize, alignment: usize) -> usize {
    (value + alignment - 1) & !(alignment - 1)
}

/// The RAM zboot hands over, from [`LOAD_AREA_START`] to the top of RAM.
#[derive(Debug)]
pub struct LoadArea {
    bytes: &'static mut [u8],
}

impl LoadArea {
    /// Takes the area up to `top` (once).
    pub fn take(top: usize) -> Option<Self> {
        arch::take_load_area(top).map(|bytes| Self { bytes })
    }

    /// The first address above the area.
    pub fn top(&self) -> usize {
        LOAD_AREA_START + self.bytes.len()
    }

    fn check(&self, what: &'static str, start: usize, length: usize) -> Result<usize, DoesNotFit> {
        let error = DoesNotFit {
            what,
            start,
            length,
            limit: self.top(),
        };
        let offset = start.checked_sub(LOAD_AREA_START).ok_or(error)?;
        let end = offset.checked_add(length).ok_or(error)?;
        if end > self.bytes.len() {
            return Err(error);
        }
        Ok(offset)
    }

    /// The bytes of `[start, start + length)`.
    pub fn region(
        &mut self,
        what: &'static str,
        start: usize,
        length: usize,
    ) -> Result<&mut [u8], DoesNotFit> {
        let offset = self.check(what, start, length)?;
        Ok(&mut self.bytes[offset..offset + length])
    }

    /// Two disjoint regions at once, `low` entirely below `high`.
    pub fn two_regions(
        &mut self,
        low: (&'static str, usize, usize),
        high: (&'static str, usize, usize),
    ) -> Result<(&mut [u8], &mut [u8]), DoesNotFit> {
        let low_offset = self.check(low.0, low.1, low.2)?;
        let high_offset = self.check(high.0, high.1, high.2)?;
        if low_offset + low.2 > high_offset {
            return Err(DoesNotFit {
                what: low.0,
                start: low.1,
                length: low.2,
                limit: high.1,
            });
        }
        let (below, above) = self.bytes.split_at_mut(high_offset);
        Ok((
            &mut below[low_offset..low_offset + low.2],
            &mut above[..high.2],
        ))
    }
}
