//! The 512-byte block-device trait that the HAL, the host tools and the RAM disk implement.

/// Size of one block (sector) in bytes. zboot only deals in 512-byte sectors: the SD/eMMC
/// data transfer unit (SD Physical Layer Simplified Spec, `READ_BL_LEN` = 512 for SDHC/SDXC)
/// and the FAT sector size our formats require.
pub const BLOCK_SIZE: usize = 512;

/// One block's bytes.
pub type Block = [u8; BLOCK_SIZE];

/// A device addressed in 512-byte blocks by logical block address (LBA).
///
/// Implementations must make `write_block` durable (or report an error) before returning:
/// the slot-state store relies on the order of its writes.
pub trait BlockDevice {
    /// What a read or write can fail with.
    type Error: core::fmt::Debug;

    /// Reads block `lba` into `buffer`.
    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), Self::Error>;

    /// Writes `buffer` to block `lba`.
    fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), Self::Error>;

    /// Number of blocks on the device.
    fn block_count(&self) -> u64;

    /// Reads `buffer.len() / 512` consecutive blocks from `lba` (a trailing partial block
    /// is not read). Devices that have a multi-block command override this; the default
    /// reads block by block.
    fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), Self::Error> {
        for (index, chunk) in buffer.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            let mut block = [0u8; BLOCK_SIZE];
            self.read_block(lba + index as u64, &mut block)?;
            chunk.copy_from_slice(&block);
        }
        Ok(())
    }

    /// Writes `buffer.len() / 512` consecutive blocks at `lba` (a trailing partial block is
    /// not written). Devices that have a multi-block command override this.
    fn write_blocks(&mut self, lba: u64, buffer: &[u8]) -> Result<(), Self::Error> {
        for (index, chunk) in buffer.chunks_exact(BLOCK_SIZE).enumerate() {
            let mut block = [0u8; BLOCK_SIZE];
            block.copy_from_slice(chunk);
            self.write_block(lba + index as u64, &block)?;
        }
        Ok(())
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    type Error = D::Error;

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), Self::Error> {
        (**self).read_block(lba, buffer)
    }

    fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), Self::Error> {
        (**self).write_block(lba, buffer)
    }

    fn block_count(&self) -> u64 {
        (**self).block_count()
    }

    fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read_blocks(lba, buffer)
    }

    fn write_blocks(&mut self, lba: u64, buffer: &[u8]) -> Result<(), Self::Error> {
        (**self).write_blocks(lba, buffer)
    }
}

#[cfg(any(test, feature = "std"))]
pub use ram::{RamDisk, RamDiskError, Tear};

#[cfg(any(test, feature = "std"))]
mod ram {
    //! A RAM disk for host tests that can cut power after the N-th write and tear a sector.
    use super::{BLOCK_SIZE, Block, BlockDevice};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::vec::Vec;

    /// What the write that loses power leaves in its sector.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Tear {
        /// Power went before the write started: the sector keeps its old bytes.
        NotWritten,
        /// The first `n` bytes are new, the rest old (a partly programmed sector).
        Prefix(usize),
        /// The sector holds noise (an interrupted program/erase cycle), from this seed.
        Garbage(u64),
        /// The write completed and power went right after it.
        Complete,
    }

    /// Errors of the RAM disk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RamDiskError {
        /// The LBA is past the end of the disk.
        OutOfRange { lba: u64, blocks: u64 },
        /// Power is cut: nothing is read or written until [`RamDisk::power_on`].
        PowerCut,
    }

    /// A RAM-backed block device with an optional scheduled power cut.
    ///
    /// The blocks are a shared, read-only base (zeros, or the bytes it was made from)
    /// plus the blocks changed since: a clone costs what was changed, so a sweep can
    /// start every run from the same large disk.
    #[derive(Clone, Debug)]
    pub struct RamDisk {
        count: usize,
        base: Option<Arc<Vec<Block>>>,
        changed: BTreeMap<usize, Block>,
        writes: usize,
        cut: Option<(usize, Tear)>,
        powered: bool,
    }

    impl RamDisk {
        /// A zero-filled disk of `blocks` blocks.
        pub fn new(blocks: usize) -> Self {
            Self {
                count: blocks,
                base: None,
                changed: BTreeMap::new(),
                writes: 0,
                cut: None,
                powered: true,
            }
        }

        /// A disk holding `bytes` (a trailing partial block is dropped).
        pub fn from_bytes(bytes: &[u8]) -> Self {
            let blocks: Vec<Block> = bytes
                .chunks_exact(BLOCK_SIZE)
                .map(|chunk| {
                    let mut block = [0u8; BLOCK_SIZE];
                    block.copy_from_slice(chunk);
                    block
                })
                .collect();
            Self {
                count: blocks.len(),
                base: Some(Arc::new(blocks)),
                ..Self::new(0)
            }
        }

        /// Cuts power during write number `index` (0-based, counted from now), leaving
        /// its sector as `tear` says.
        pub fn cut_power_at_write(&mut self, index: usize, tear: Tear) {
            self.cut = Some((self.writes + index, tear));
        }

        /// Restores power and cancels any scheduled cut.
        pub fn power_on(&mut self) {
            self.powered = true;
            self.cut = None;
        }

        /// Whether power is on.
        pub fn is_powered(&self) -> bool {
            self.powered
        }

        /// Writes that completed or were cut so far.
        pub fn writes(&self) -> usize {
            self.writes
        }

        /// Direct access to a block's bytes (for corrupting it in tests).
        pub fn block_mut(&mut self, lba: u64) -> Option<&mut Block> {
            let index = usize::try_from(lba).ok().filter(|&i| i < self.count)?;
            let base = &self.base;
            Some(
                self.changed
                    .entry(index)
                    .or_insert_with(|| Self::base_block(base.as_ref(), index)),
            )
        }

        /// Block `index` as the base holds it.
        fn base_block(base: Option<&Arc<Vec<Block>>>, index: usize) -> Block {
            base.and_then(|blocks| blocks.get(index).copied())
                .unwrap_or([0; BLOCK_SIZE])
        }

        fn index(&self, lba: u64) -> Result<usize, RamDiskError> {
            usize::try_from(lba)
                .ok()
                .filter(|&i| i < self.count)
                .ok_or(RamDiskError::OutOfRange {
                    lba,
                    blocks: self.block_count(),
                })
        }
    }

    /// A xorshift64 step: deterministic noise without a dependency.
    fn next_noise(state: &mut u64) -> u8 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 24) as u8
    }

    impl BlockDevice for RamDisk {
        type Error = RamDiskError;

        fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), RamDiskError> {
            if !self.powered {
                return Err(RamDiskError::PowerCut);
            }
            let index = self.index(lba)?;
            match self.changed.get(&index) {
                Some(block) => buffer.copy_from_slice(block),
                None => buffer.copy_from_slice(&Self::base_block(self.base.as_ref(), index)),
            }
            Ok(())
        }

        fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), RamDiskError> {
            if !self.powered {
                return Err(RamDiskError::PowerCut);
            }
            let index = self.index(lba)?;
            let number = self.writes;
            self.writes += 1;
            let base = &self.base;
            let block = self
                .changed
                .entry(index)
                .or_insert_with(|| Self::base_block(base.as_ref(), index));
            match self.cut {
                Some((at, tear)) if at == number => {
                    match tear {
                        Tear::NotWritten => {}
                        Tear::Prefix(n) => {
                            let n = n.min(BLOCK_SIZE);
                            if let (Some(dst), Some(src)) = (block.get_mut(..n), buffer.get(..n)) {
                                dst.copy_from_slice(src);
                            }
                        }
                        Tear::Garbage(seed) => {
                            let mut state = seed | 1;
                            for byte in block.iter_mut() {
                                *byte = next_noise(&mut state);
                            }
                        }
                        Tear::Complete => block.copy_from_slice(buffer),
                    }
                    self.powered = false;
                    Err(RamDiskError::PowerCut)
                }
                _ => {
                    block.copy_from_slice(buffer);
                    Ok(())
                }
            }
        }

        fn block_count(&self) -> u64 {
            self.count as u64
        }
    }
}
