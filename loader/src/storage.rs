//! The boot medium (EMMC2) as a block device for the FAT library and the state store.
//!
//! Two views of the same card: recovery-proto's [`BlockDevice`](recovery_proto::BlockDevice)
//! sees every sector as it is, and reads the partition table (MBR or GPT) itself;
//! embedded-sdmmc's `BlockDevice`, through which [`crate::boot_partition`] walks directories,
//! sees sector 0 replaced by a synthetic MBR once [`Disk::present_boot_partition`] has named
//! the boot partition: one FAT32 (LBA) entry covering exactly that partition. embedded-sdmmc
//! only understands MBR partition tables (its `open_raw_volume` reads the four primary
//! entries), so this is how it opens the FAT volume of a GPT disk; on an MBR disk it makes
//! it open the partition recovery-proto chose, not whatever entry 0 holds. The synthetic
//! sector exists only in that view: it is never written, and a write to sector 0 through the
//! view is refused (embedded-sdmmc never writes it; zboot opens FAT read-only).

use core::cell::{Cell, RefCell};
use core::fmt;

use hal_bcm2711::emmc2::{Emmc2, Emmc2Error, TransferCounts};
use recovery_proto::block::{BLOCK_SIZE, Block};

/// The card on EMMC2 with read/write accounting for the benchmark.
#[derive(Debug)]
pub struct Disk {
    controller: RefCell<Emmc2>,
    blocks: u64,
    counters: RefCell<Counters>,
    /// The boot partition as (start LBA, sectors) for embedded-sdmmc's view.
    boot_partition: Cell<Option<(u32, u32)>>,
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
    pub cause: DiskFault,
}

/// Why a transfer failed.
#[derive(Clone, Copy, Debug)]
pub enum DiskFault {
    /// The controller or the card reported an error.
    Controller(Emmc2Error),
    /// A write to sector 0 through embedded-sdmmc's view, where sector 0 is the synthetic MBR.
    SyntheticSector,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} block(s) at LBA {} failed: ",
            if self.write { "write" } else { "read" },
            self.blocks,
            self.lba,
        )?;
        match self.cause {
            DiskFault::Controller(error) => write!(f, "{error}"),
            DiskFault::SyntheticSector => {
                f.write_str("sector 0 is a read-only synthetic MBR in the FAT library's view")
            }
        }
    }
}

/// The boot partition cannot be described by an MBR entry (32-bit start and size).
#[derive(Clone, Copy, Debug)]
pub struct BeyondMbrRange {
    pub start_lba: u64,
    pub sectors: u64,
}

impl fmt::Display for BeyondMbrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boot partition at LBA {} ({} sectors) is beyond the 32-bit sector numbers the FAT \
             library reads",
            self.start_lba, self.sectors
        )
    }
}

/// Sector 0 as embedded-sdmmc sees it: an MBR whose entry 0 is the boot partition (active,
/// type 0x0C FAT32 LBA, CHS fields "beyond CHS" as LBA-only tools write them).
fn synthetic_mbr(start_lba: u32, sectors: u32) -> Block {
    let mut sector = [0u8; BLOCK_SIZE];
    let entry = [0x80, 0xFE, 0xFF, 0xFF, 0x0C, 0xFE, 0xFF, 0xFF];
    for (offset, byte) in entry
        .into_iter()
        .chain(start_lba.to_le_bytes())
        .chain(sectors.to_le_bytes())
        .enumerate()
    {
        if let Some(slot) = sector.get_mut(446 + offset) {
            *slot = byte;
        }
    }
    if let Some(signature) = sector.get_mut(510..512) {
        signature.copy_from_slice(&[0x55, 0xAA]);
    }
    sector
}

impl core::error::Error for DiskError {}

impl Disk {
    /// Wraps an initialised controller whose card holds `blocks` blocks.
    pub fn new(controller: Emmc2, blocks: u64) -> Self {
        Self {
            controller: RefCell::new(controller),
            blocks,
            counters: RefCell::default(),
            boot_partition: Cell::new(None),
        }
    }

    /// Makes embedded-sdmmc's view show a synthetic MBR whose one entry is this partition
    /// (see the module docs).
    pub fn present_boot_partition(
        &self,
        start_lba: u64,
        sectors: u64,
    ) -> Result<(), BeyondMbrRange> {
        match (u32::try_from(start_lba), u32::try_from(sectors)) {
            (Ok(start), Ok(count)) => {
                self.boot_partition.set(Some((start, count)));
                Ok(())
            }
            _ => Err(BeyondMbrRange { start_lba, sectors }),
        }
    }

    /// The card's size in 512-byte blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Runs `look` on the controller (diagnostics: the card, its EXT_CSD, the bus).
    pub fn inspect<R>(&self, look: impl FnOnce(&Emmc2) -> R) -> R {
        look(&self.controller.borrow())
    }

    /// How the controller moved block data so far (ADMA2 or PIO).
    pub fn transfer_counts(&self) -> TransferCounts {
        self.controller.borrow().transfer_counts()
    }

    /// Storage commands issued so far (the controller's count).
    pub fn commands(&self) -> u64 {
        self.controller.borrow().commands_issued()
    }

    /// Block counts so far.
    pub fn counters(&self) -> Counters {
        *self.counters.borrow()
    }

    /// Logs, once, the ADMA2 failure that switched the controller to PIO (the
    /// transfer itself was retried by PIO).
    fn log_adma_fallback(&self) {
        if let Some(fallback) = self.controller.borrow_mut().take_adma_fallback() {
            log::warn!("{fallback}");
        }
    }

    /// Reads `buffer.len() / 512` blocks from `lba` (multi-block commands; ADMA2 when
    /// the controller uses it and the buffer suits it, else PIO).
    pub fn read(&self, lba: u64, buffer: &mut [u8]) -> Result<(), DiskError> {
        self.read_during(lba, buffer, || {})
    }

    /// [`Disk::read`], running `work` while the controller moves the data (with ADMA2 the
    /// two overlap on hardware; with PIO `work` runs first). `work` runs whatever the
    /// outcome of the read.
    pub fn read_during(
        &self,
        lba: u64,
        buffer: &mut [u8],
        work: impl FnOnce(),
    ) -> Result<(), DiskError> {
        let blocks = (buffer.len() / BLOCK_SIZE) as u64;
        let (result, ()) = self
            .controller
            .borrow_mut()
            .read_blocks_during(lba, buffer, work);
        self.log_adma_fallback();
        result.map_err(|cause| DiskError {
            lba,
            blocks,
            write: false,
            cause: DiskFault::Controller(cause),
        })?;
        self.counters.borrow_mut().blocks_read += blocks;
        Ok(())
    }

    /// Writes `buffer.len() / 512` blocks at `lba`.
    pub fn write(&self, lba: u64, buffer: &[u8]) -> Result<(), DiskError> {
        let blocks = (buffer.len() / BLOCK_SIZE) as u64;
        let result = self.controller.borrow_mut().write_blocks(lba, buffer);
        self.log_adma_fallback();
        result.map_err(|cause| DiskError {
            lba,
            blocks,
            write: true,
            cause: DiskFault::Controller(cause),
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

    // Multi-block commands (CMD18/CMD25) for whole regions: a reflash writes
    // up to 1 MiB per call.
    fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), Self::Error> {
        self.read(lba, buffer)
    }

    fn write_blocks(&mut self, lba: u64, buffer: &[u8]) -> Result<(), Self::Error> {
        self.write(lba, buffer)
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
            let lba = u64::from(start.0) + index as u64;
            match (lba, self.boot_partition.get()) {
                (0, Some((start_lba, sectors))) => {
                    block.contents = synthetic_mbr(start_lba, sectors);
                }
                _ => Disk::read(self, lba, &mut block.contents)?,
            }
        }
        Ok(())
    }

    fn write(
        &self,
        blocks: &[embedded_sdmmc::Block],
        start: embedded_sdmmc::BlockIdx,
    ) -> Result<(), Self::Error> {
        if start.0 == 0 && !blocks.is_empty() && self.boot_partition.get().is_some() {
            return Err(DiskError {
                lba: 0,
                blocks: blocks.len() as u64,
                write: true,
                cause: DiskFault::SyntheticSector,
            });
        }
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
