//! Reads that run while the caller works: [`PendingRead`], from [`Emmc2::start_read`].

use core::fmt;

use super::adma::{self, AdmaTransfer};
use super::registers::Bus;
use super::{BLOCK_SIZE, CardInfo, Direction, Emmc2, Emmc2Error};

/// A read started by [`Emmc2::start_read`]: the controller may be filling the
/// buffer. [`PendingRead::finish`] waits for it (and reads the rest of a long
/// request); dropping it unfinished aborts the transfer (the buffer's content
/// is then unspecified).
pub struct PendingRead<'a, B: Bus> {
    driver: &'a mut Emmc2<B>,
    buffer: &'a mut [u8],
    lba: u64,
    card: CardInfo,
    /// The ADMA2 command moving the buffer's first bytes.
    in_flight: Option<AdmaTransfer>,
    /// Why starting that command failed, for `finish` to retry.
    start_failure: Option<Emmc2Error>,
}

impl<'a, B: Bus> PendingRead<'a, B> {
    /// A read of `buffer` from `lba` (checked by the caller); starts its
    /// first chunk by ADMA2 if it can.
    pub(super) fn new(
        driver: &'a mut Emmc2<B>,
        buffer: &'a mut [u8],
        lba: u64,
        card: CardInfo,
    ) -> Self {
        let mut pending = Self {
            driver,
            buffer,
            lba,
            card,
            in_flight: None,
            start_failure: None,
        };
        if !pending.buffer.is_empty() {
            pending.start();
        }
        pending
    }
}

impl<B: Bus> PendingRead<'_, B> {
    /// Starts the first chunk by ADMA2, if ADMA2 is on and suits the buffer.
    fn start(&mut self) {
        let blocks =
            (self.buffer.len() / BLOCK_SIZE).min(usize::from(adma::MAX_BLOCKS_PER_TRANSFER)) as u16;
        let length = usize::from(blocks) * BLOCK_SIZE;
        let address = self.buffer.as_ptr() as usize;
        let Ok(bus) = self.driver.adma_bus_address(address, length, true) else {
            return;
        };
        match self
            .driver
            .start_adma(&self.card, Direction::Read, self.lba, blocks, address, bus)
        {
            Ok(transfer) => self.in_flight = Some(transfer),
            Err(error) => self.start_failure = Some(error),
        }
    }

    /// Whether the controller is moving data into the buffer now (ADMA2).
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits for the data, reads whatever is left (PIO, or ADMA2 chunk by
    /// chunk), retrying as [`Emmc2::read_blocks`] does.
    pub fn finish(mut self) -> Result<(), Emmc2Error> {
        self.complete()
    }

    fn complete(&mut self) -> Result<(), Emmc2Error> {
        let mut done = 0;
        let mut failure = self.start_failure.take();
        if let Some(transfer) = self.in_flight.take() {
            let bytes = self.buffer.get_mut(..transfer.length).unwrap_or_default();
            match self.driver.complete_adma(&transfer, Some(bytes)) {
                Ok(()) => done = transfer.length,
                Err(error) => failure = Some(error),
            }
        }
        let mut failures = 0;
        if let Some(error) = failure {
            // The first try of the first chunk failed: recover as with_retries
            // does, and let it count.
            self.driver.recover();
            if !error.is_retryable() {
                return Err(error);
            }
            failures = 1;
            self.driver.retries += 1;
        }
        let Some(rest) = self.buffer.get_mut(done..) else {
            return Ok(());
        };
        if rest.is_empty() {
            return Ok(());
        }
        let lba = self.lba + (done / BLOCK_SIZE) as u64;
        let card = self.card;
        self.driver.read_range(&card, lba, rest, failures)
    }
}

impl<B: Bus> Drop for PendingRead<'_, B> {
    fn drop(&mut self) {
        if let Some(transfer) = self.in_flight.take() {
            let bytes = self.buffer.get_mut(..transfer.length).unwrap_or_default();
            self.driver.abort_adma(bytes);
        }
    }
}

impl<B: Bus> fmt::Debug for PendingRead<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRead")
            .field("lba", &self.lba)
            .field("blocks", &(self.buffer.len() / BLOCK_SIZE))
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}
