//! The boot medium (EMMC2) as a block device for the FAT library and the state store.

use core::cell::RefCell;
use core::fmt;

use hal_bcm2711::emmc2::{Emmc2, Emmc2Error};
use recovery_proto::block::{BLOCK_SIZE, Block};

/// The card on EMMC2 with read/write accounting for the benchmark.
#[derive(Debug)]
pub struct Disk {
    controller: RefCell<Emmc2>,
    blocks: u64,
    counters: RefCell<Counters>,
}

/// What the storage path did, for the log and the benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub blocks_read: u64,
    pub blocks_written: u64,
}

/// A failed transfer, with where it was going.
#[derive(Clone, Copy, Debug)]
pub struct DiskError {
    pub lba: u64,
    pub blocks: u64,
    pub write: bool,
    pub cause: Emmc2Error,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} block(s) at LBA {} failed: {}",
            if self.write { "write" } else { "read" },
            self.blocks,
            self.lba,
            self.cause
        )
    }
}

impl core::error::Error for DiskError {}

impl Disk {
    /// Wraps an initialised controller whose card holds `blocks` blocks.
    pub fn new(controller: Emmc2, blocks: u64) -> Self {
        Self {
            controller: RefCell::new(controller),
            blocks,
            counters: RefCell::default(),
        }
    }

    /// The card's size in 512-byte blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Storage commands issued so far (the controller's count).
    pub fn commands(&self) -> u64 {
        self.controller.borrow().commands_issued()
    }

    /// Block counts so far.
    pub fn counters(&self) -> Counters {
        *self.counters.borrow()
    }

    /// Reads `buffer.len() / 512` blocks from `lba` (multi-block commands).
    pub fn read(&self, lba: u64, buffer: &mut [u8]) -> Result<(), DiskError> {
        let blocks = (buffer.len() / BLOCK_SIZE) as u64;
        self.controller
            .borrow_mut()
            .read_blocks(lba, buffer)
            .map_err(|cause| DiskError {
                lba,
                blocks,
                write: false,
                cause,
            })?;
        self.counters.borrow_mut().blocks_read += blocks;
        Ok(())
    }

    /// Writes `buffer.len() / 512` blocks at `lba`.
    pub fn write(&self, lba: u64, buffer: &[u8]) -> Result<(), DiskError> {
        let blocks = (buffer.len() / BLOCK_SIZE) as u64;
        self.controller
            .borrow_mut()
            .write_blocks(lba, buffer)
            .map_err(|cause| DiskError {
                lba,
                blocks,
                write: true,
                cause,
            })?;
        self.counters.borrow_mut().blocks_written += blocks;
        Ok(())
    }
}

impl recovery_proto::BlockDevice for &Disk {
    type Error = DiskError;

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), Self::Error> {
        self.read(lba, buffer)
    }

    fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), Self::Error> {
        self.write(lba, buffer)
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }
}

impl embedded_sdmmc::BlockDevice for &Disk {
    type Error = DiskError;

    fn read(
        &self,
        blocks: &mut [embedded_sdmmc::Block],
        start: embedded_sdmmc::BlockIdx,
    ) -> Result<(), Self::Error> {
        for (index, block) in blocks.iter_mut().enumerate() {
            Disk::read(self, u64::from(start.0) + index as u64, &mut block.contents)?;
        }
        Ok(())
    }

    fn write(
        &self,
        blocks: &[embedded_sdmmc::Block],
        start: embedded_sdmmc::BlockIdx,
    ) -> Result<(), Self::Error> {
        for (index, block) in blocks.iter().enumerate() {
            Disk::write(self, u64::from(start.0) + index as u64, &block.contents)?;
        }
        Ok(())
    }

    fn num_blocks(&self) -> Result<embedded_sdmmc::BlockCount, Self::Error> {
        Ok(embedded_sdmmc::BlockCount(
            u32::try_from(self.blocks).unwrap_or(u32::MAX),
        ))
    }
}
