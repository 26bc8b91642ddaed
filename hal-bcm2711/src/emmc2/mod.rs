//! EMMC2 (SDHCI v3.00) driver: SD and eMMC card initialisation, block reads/writes by ADMA2 or PIO.
//!
//! EMMC2 is the BCM2711's second SD host controller (bus `0x7E34_0000`):
//! the CM4's on-module eMMC, the Pi 4's SD slot. It is a standard SDHCI
//! (SD Host Controller Simplified Specification v3.00) of Broadcom's iProc
//! family, driven by Linux with `drivers/mmc/host/sdhci.c` through
//! `sdhci-iproc.c` (compatible "brcm,bcm2711-emmc2"). Two integration
//! facts come from there: only 32-bit register accesses work (see
//! [`registers`]), and multi-block reads are stopped with Auto CMD12
//! (`SDHCI_QUIRK_MULTIBLOCK_READ_ACMD12`).
//!
//! Card protocol: SD Physical Layer Simplified Specification (SD path) and
//! JEDEC eMMC 5.1 JESD84-B51 (eMMC path). [`Emmc2::init`] tries SD first
//! (CMD0, CMD8, ACMD41) and falls back to eMMC (CMD0, CMD1) when nothing
//! answers CMD55/ACMD41 — an eMMC device ignores ACMD41.
//!
//! **QEMU** (`hw/sd/sdhci.c` + `hw/sd/sd.c`, machine `raspi4b`) emulates
//! EMMC2 as a generic SDHCI v3 (`hw/arm/bcm2838_peripherals.c` sets its
//! capabilities to `0x052134b4`: 52 MHz base clock, high speed, no SDMA, no
//! ADMA2) with an SD card or, in the patched QEMU (`scripts/build-qemu`), its
//! eMMC model on it. The eMMC path follows JESD84-B51 and Linux
//! `drivers/mmc/core/mmc.c` and is unverified until run on a CM4.
//!
//! **Moving data.** Block reads and writes use ADMA2 ([`adma`]: 32-bit
//! descriptors, cache maintenance, the bus address from the firmware's
//! `/emmc2bus` `dma-ranges`) once the caller set it up with
//! [`Emmc2::use_adma`], and PIO through the Buffer Data Port otherwise: when the
//! Capabilities register does not advertise ADMA2, when a buffer lies outside
//! the controller's [`DmaWindow`] or does not suit DMA (a read buffer not in
//! whole cache lines), and for good after the first ADMA failure — an ADMA
//! Error interrupt (Error Interrupt Status bit 9) or an ADMA transfer that never completes:
//! the DAT line is reset, the transfer retried by PIO, and the failure kept
//! for [`Emmc2::take_adma_fallback`], which hands it out once, for the caller
//! to log. The small reads of identification (SD status, EXT_CSD) stay PIO.
//! [`Emmc2::start_read`] starts a read and returns; the data lands while the
//! caller works, and [`PendingRead::finish`] waits for it.
//!
//! What QEMU 10.0.2 does with EMMC2 DMA (`hw/sd/sdhci.c`): Transfer Mode's DMA
//! Enable is dropped unless the capabilities advertise SDMA (bit 22), even for
//! ADMA2, and an ADMA2 transfer is ignored ("ADMA2 not supported") unless they
//! advertise ADMA2 (bit 19) — so with the stock `0x052134b4` the driver stays
//! on PIO. The patched QEMU lets a test set the capabilities
//! (`-global bcm2838-peripherals.emmc2-capareg=...`, docs/bring-up.md). The
//! controller's DMA goes to QEMU's system address space (no "dma" link is set
//! for EMMC2, unlike the DWC2's `gpu_bus_mr`): ARM physical addresses, 1:1,
//! RAM 0..2 GiB and nothing at `0xC000_0000` on the 2 GiB raspi4b — the view a
//! BCM2711 C0 gives, so a tree with the C0 `dma-ranges` works and one with the
//! B0 alias ends in an ADMA error (descriptor fetch from unassigned memory).
//!
//! Every wait is bounded by a [`Deadline`] whose constant cites its source;
//! a failed transfer resets the CMD/DAT lines, stops the card and is retried
//! [`TRANSFER_RETRIES`] times. The pure parts — command encoding
//! ([`command`]), CSD/EXT_CSD decoding ([`card`]), clock dividers
//! ([`clock`]), request splitting ([`request`]) — are host-tested.

pub mod adma;
pub mod card;
pub mod clock;
pub mod command;
mod error;
mod identify;
mod pending;
pub mod registers;
pub mod request;
#[cfg(test)]
mod simulated;

use core::fmt;
use core::hint::spin_loop;
use core::time::Duration;

use tock_registers::fields::Field;
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

use crate::generic_timer::{Deadline, delay};
use crate::mmio::Mmio;

pub use adma::{AdmaFallback, AdmaTable, AdmaUnavailable, DmaWindow, TransferCounts};
pub use card::{BLOCK_SIZE, BusWidth, CardInfo, CardType, RegisterError};
pub use command::{
    CardState, CardStatus, Command, DataPhase, Direction, ErrorStatus, ResponseType,
};
pub use error::{Emmc2Error, Emmc2Wait, Unsupported};
pub use pending::PendingRead;
use registers::{
    AUTO_CMD_ERROR_HOST_CONTROL_2, Bus, CAPABILITIES_0, CLOCK_CONTROL, HOST_CONTROL_1, INTERRUPT,
    PRESENT_STATE, RegisterBlock, Registers, SLOT_STATUS_VERSION,
};
pub use request::MAX_BLOCKS_PER_COMMAND;

/// How long a software reset may take to self-clear: 100 ms, Linux
/// `drivers/mmc/host/sdhci.c` `sdhci_reset` ("Wait max 100 ms").
pub const RESET_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the internal clock may take to become stable: 150 ms, Linux
/// `sdhci.c` `sdhci_enable_clk` ("Wait max 150 ms").
pub const CLOCK_STABLE_TIMEOUT: Duration = Duration::from_millis(150);

/// Wait after switching bus power and the clock on, before CMD0: the SD
/// Physical Layer (§6.4.1.1 "Power Up Time of Host") asks for the supply
/// ramp plus 1 ms and at least 74 clocks; Linux `drivers/mmc/core/core.c`
/// `mmc_power_up` waits `power_delay_ms`, 10 ms by default.
pub const POWER_UP_DELAY: Duration = Duration::from_millis(10);

/// Software bound on a command's response. The controller itself flags
/// Command Timeout Error after 64 SDCLK cycles without a response (SD Host
/// Controller spec §2.2.19; N_CR max 64 clocks, SD Physical Layer §4.12.4),
/// 160 µs at 400 kHz: this bound only catches a controller that reports
/// nothing at all.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);

/// ACMD41 initialisation: "the card shall complete initialization within
/// 1 second from the first ACMD41" (SD Physical Layer §4.2.3.1).
pub const SD_INIT_TIMEOUT: Duration = Duration::from_secs(1);

/// CMD1 initialisation: 1 s, as Linux `drivers/mmc/core/mmc_ops.c`
/// `mmc_send_op_cond` (JESD84-B51 §6.4.3 leaves the busy time to the
/// device and the host's patience).
pub const EMMC_INIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between two ACMD41/CMD1 polls while the card powers up.
pub const OP_COND_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Read access: 100 ms per block ("the host should use a fixed timeout of
/// 100 ms" for SDHC/SDXC, and SDSC's computed value is capped at 100 ms;
/// SD Physical Layer §4.6.2.1 "Read"). Used for eMMC too, whose read access
/// time (JESD84-B51: N_AC from TAAC/NSAC) is far below this.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// Write busy per block on SDSC/SDHC: 250 ms (SD Physical Layer §4.6.2.2
/// "Write").
pub const SD_WRITE_TIMEOUT: Duration = Duration::from_millis(250);

/// Write busy per block on SDXC: 500 ms (SD Physical Layer §4.6.2.2).
pub const SDXC_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Write busy on eMMC: JESD84-B51 gives no fixed figure (CSD R2W_FACTOR
/// times the read access time); Linux `drivers/mmc/core/block.c` bounds
/// busy waits with `MMC_BLK_TIMEOUT_MS`, 10 s.
pub const EMMC_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// CMD6 SWITCH busy when the EXT_CSD gives no GENERIC_CMD6_TIME: 500 ms,
/// Linux `drivers/mmc/core/mmc.c` `DEFAULT_CMD6_TIMEOUT_MS`.
pub const DEFAULT_CMD6_TIMEOUT: Duration = Duration::from_millis(500);

/// Times a failed transfer is retried (after resetting the CMD/DAT lines)
/// before its error is returned.
pub const TRANSFER_RETRIES: u32 = 3;

/// SDHC/SDXC boundary: capacities above 32 GB are SDXC (SD Physical Layer
/// §1.3), with the longer write timeout.
const SDHC_MAX_BLOCKS: u64 = 32 * 1024 * 1024 * 1024 / BLOCK_SIZE as u64;

/// The interrupt status bits enabled (0x34): all normal events except Card
/// Interrupt (SDIO), and all errors the standard defines (bits 26..16). A
/// status bit is only ever set while enabled (§2.2.20).
const INTERRUPTS_ENABLED: u32 = 0x07ff_00ff;

/// Error Interrupt Status bits (31..16) of the combined word.
const ERROR_BITS: u32 = 0xffff_0000;

/// Data Timeout Counter Value: the maximum (TMCLK x 2^27); the software
/// deadlines are tighter anyway.
const DATA_TIMEOUT_COUNTER_MAX: u32 = 0xe;

/// The bit(s) of a register field in place.
const fn bit<R: tock_registers::RegisterLongName>(field: Field<u32, R>) -> u32 {
    field.mask << field.shift
}

/// The SDHCI software resets (§2.2.16). Issued one at a time: QEMU acts
/// only on a single reset bit per write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    All,
    CommandLine,
    DataLine,
}

/// The EMMC2 driver, on the hardware block (`B` = [`Mmio`]) or, in host tests, on a
/// simulated controller ([`registers::Bus`]).
pub struct Emmc2<B: Bus = Mmio<RegisterBlock>> {
    bus: B,
    card: Option<CardInfo>,
    ext_csd: Option<card::ExtCsd>,
    base_clock_hz: u32,
    ten_bit_divider: bool,
    max_bus_width: BusWidth,
    ddr52_allowed: bool,
    io_rail_at_3v3: bool,
    cmd6_timeout: Duration,
    commands: u64,
    retries: u64,
    bus_width_fallbacks: u32,
    ddr52_fallbacks: u32,
    dma: Option<adma::Dma>,
    adma_fallback: adma::FallbackReport,
    /// The ADMA Error Status seen with the last ADMA Error interrupt.
    last_adma_error: u8,
    counts: TransferCounts,
}

impl Emmc2 {
    /// A driver for the SDHCI at `base` (normally
    /// [`crate::memory_map::EMMC2`]). Touches no register.
    ///
    /// # Safety
    ///
    /// As [`Mmio::new`], and the caller is the only user of the controller
    /// while this value exists (commands and the data port are stateful).
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded to the caller (this function's contract).
        Self::on_bus(unsafe { Mmio::new(base) })
    }
}

impl<B: Bus> Emmc2<B> {
    /// The bus the driver's register accesses go to.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// The registers, on this driver's bus.
    #[inline]
    fn registers(&self) -> Registers<'_, B> {
        Registers::on(&self.bus)
    }

    /// A driver whose register accesses go to `bus`. Touches no register.
    pub const fn on_bus(bus: B) -> Self {
        Self {
            bus,
            card: None,
            ext_csd: None,
            base_clock_hz: 0,
            ten_bit_divider: true,
            max_bus_width: BusWidth::Eight,
            ddr52_allowed: true,
            io_rail_at_3v3: false,
            cmd6_timeout: DEFAULT_CMD6_TIMEOUT,
            commands: 0,
            retries: 0,
            bus_width_fallbacks: 0,
            ddr52_fallbacks: 0,
            dma: None,
            adma_fallback: adma::FallbackReport::None,
            last_adma_error: 0,
            counts: TransferCounts {
                adma: 0,
                pio: 0,
                pio_unsuitable_buffer: 0,
            },
        }
    }

    /// How the block transfers so far moved their data.
    pub fn transfer_counts(&self) -> TransferCounts {
        self.counts
    }

    /// Allows or forbids eMMC DDR52 (default allowed: the EMMC2 of the BCM2711
    /// does DDR at 3.3 V, `MMC_CAP_3_3V_DDR` in Linux `sdhci-iproc.c`). Takes
    /// effect at the next [`Emmc2::init`]; SDR high speed is used instead.
    pub fn set_ddr52_allowed(&mut self, allowed: bool) {
        self.ddr52_allowed = allowed;
    }

    /// Says that the I/O rail (`VDD_SD_IO`) was just set to 3.3 V: the next
    /// [`Emmc2::init`] then signals at 3.3 V (Host Control 2's 1.8 V Signaling
    /// Enable clear), so the rail and the host agree. Otherwise the driver keeps
    /// the signalling the firmware left, which matched the rail it booted with.
    pub fn set_io_rail_at_3v3(&mut self, at_3v3: bool) {
        self.io_rail_at_3v3 = at_3v3;
    }

    /// Whether Host Control 2 selects 1.8 V signalling (SD Host Controller spec
    /// §2.2.24, bit 3).
    pub fn signaling_1v8(&self) -> bool {
        self.registers()
            .auto_cmd_error_host_control_2
            .is_set(AUTO_CMD_ERROR_HOST_CONTROL_2::SIGNALING_1_8V_ENABLE)
    }

    /// Bus widths that failed their switch or bus test in the last
    /// [`Emmc2::init`] (8 → 4 → 1 fallbacks), and whether DDR52 failed and fell
    /// back to SDR (0 or 1).
    pub fn bus_fallbacks(&self) -> (u32, u32) {
        (self.bus_width_fallbacks, self.ddr52_fallbacks)
    }

    /// Limits the eMMC bus width (default 8 bits, the CM4's wiring; SD
    /// cards always use 4). Takes effect at the next [`Emmc2::init`].
    pub fn set_max_bus_width(&mut self, width: BusWidth) {
        self.max_bus_width = width;
    }

    /// The card found by the last successful [`Emmc2::init`].
    pub fn card(&self) -> Option<&CardInfo> {
        self.card.as_ref()
    }

    /// The eMMC's EXT_CSD fields as read at the last [`Emmc2::init`] (`None` for SD).
    pub fn ext_csd(&self) -> Option<&card::ExtCsd> {
        self.ext_csd.as_ref()
    }

    /// The controller's base clock in Hz (from the mailbox or the capabilities).
    pub fn base_clock_hz(&self) -> u32 {
        self.base_clock_hz
    }

    /// Capacity in 512-byte blocks (0 before `init`).
    pub fn capacity_blocks(&self) -> u64 {
        self.card.map_or(0, |card| card.blocks)
    }

    /// Commands sent to the card so far (each CMD55 of an ACMD counts, and
    /// so does the controller's Auto CMD12).
    pub fn commands_issued(&self) -> u64 {
        self.commands
    }

    /// Transfers retried after an error so far.
    pub fn transfer_retries(&self) -> u64 {
        self.retries
    }

    /// The Present State register (diagnostics: 0x01FF_0000 is "card
    /// inserted, stable, lines high, idle").
    pub fn present_state(&self) -> u32 {
        self.registers().present_state.get()
    }

    /// The Host Controller Version's specification number (0 = 1.00,
    /// 1 = 2.00, 2 = 3.00).
    pub fn specification_version(&self) -> u8 {
        self.registers()
            .slot_status_version
            .read(SLOT_STATUS_VERSION::SPECIFICATION_VERSION) as u8
    }

    /// The base clock from the Capabilities register in Hz (0 if the
    /// controller does not say).
    pub fn capabilities_base_clock_hz(&self) -> u32 {
        let mut mhz = self
            .registers()
            .capabilities_0
            .read(CAPABILITIES_0::BASE_CLOCK_FREQUENCY);
        if self.specification_version() < 2 {
            // Before v3.00 the field is 6 bits wide (bits 13..8).
            mhz &= 0x3f;
        }
        mhz * 1_000_000
    }

    /// Resets the controller, powers the bus, identifies the card (SD, else
    /// eMMC) and brings it to the transfer state at its fastest supported
    /// non-UHS speed and widest bus.
    ///
    /// `base_clock_hz` is the controller's input clock: the mailbox's
    /// `ClockId::Emmc2` rate. With 0 the Capabilities register's base clock
    /// field is used (QEMU: 52 MHz; on the BCM2711 Linux had to stop trusting
    /// it, see `SDHCI_QUIRK_CAP_CLOCK_BASE_BROKEN` history in
    /// `sdhci-iproc.c`, so pass the mailbox's value on hardware).
    pub fn init(&mut self, base_clock_hz: u32) -> Result<CardInfo, Emmc2Error> {
        self.card = None;
        self.ext_csd = None;
        self.bus_width_fallbacks = 0;
        self.ddr52_fallbacks = 0;
        self.ten_bit_divider = self.specification_version() >= 2;
        self.base_clock_hz = if base_clock_hz != 0 {
            base_clock_hz
        } else {
            self.capabilities_base_clock_hz()
        };
        if self.base_clock_hz == 0 {
            return Err(Emmc2Error::NoBaseClock);
        }
        self.reset_controller()?;
        self.power_on()?;
        self.set_clock(clock::IDENTIFICATION_HZ)?;
        delay(POWER_UP_DELAY);
        let card = match self.identify_sd()? {
            Some(card) => card,
            None => self.identify_emmc()?,
        };
        self.card = Some(card);
        Ok(card)
    }

    /// Reads `buffer.len() / 512` blocks from `lba` (CMD17 for one block,
    /// CMD18 with Auto CMD12 for more; requests above 65535 blocks, or
    /// [`adma::MAX_BLOCKS_PER_TRANSFER`] with ADMA2, are split). Each command is
    /// retried [`TRANSFER_RETRIES`] times on errors.
    pub fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), Emmc2Error> {
        // SAFETY: the pending read is finished right here, never leaked.
        unsafe { self.start_read(lba, buffer) }?.finish()
    }

    /// Starts reading `buffer.len() / 512` blocks from `lba` and returns while
    /// the controller moves them (ADMA2; the first
    /// [`adma::MAX_BLOCKS_PER_TRANSFER`] blocks of a longer request): the caller
    /// works meanwhile and calls [`PendingRead::finish`], which waits for the
    /// data, reads the rest and retries as [`Emmc2::read_blocks`] does. Without
    /// ADMA2 for this buffer nothing starts here and `finish` reads by PIO.
    /// Errors here are the request's own (not initialised, out of range, not
    /// whole blocks); the transfer's come from `finish`.
    ///
    /// [`Emmc2::read_blocks_during`] is the safe form.
    ///
    /// # Safety
    ///
    /// The returned [`PendingRead`] must be finished or dropped — not leaked
    /// (`core::mem::forget`, a reference cycle, a `ManuallyDrop` never
    /// dropped): while it lives the controller may write `buffer` at any
    /// moment, and only `finish` or its `Drop` (which aborts the transfer) end
    /// that. A leaked one would let the controller write memory whose borrow
    /// has ended.
    pub unsafe fn start_read<'a>(
        &'a mut self,
        lba: u64,
        buffer: &'a mut [u8],
    ) -> Result<PendingRead<'a, B>, Emmc2Error> {
        let card = self.card.ok_or(Emmc2Error::NotInitialised)?;
        request::check_request(lba, buffer.len(), card.blocks)?;
        Ok(PendingRead::new(self, buffer, lba, card))
    }

    /// Reads like [`Emmc2::read_blocks`], running `work` while the controller
    /// moves the data (ADMA2; with PIO, `work` runs before the read). `work`
    /// runs whatever the outcome.
    pub fn read_blocks_during<R>(
        &mut self,
        lba: u64,
        buffer: &mut [u8],
        work: impl FnOnce() -> R,
    ) -> (Result<(), Emmc2Error>, R) {
        // SAFETY: the pending read is finished below, or dropped on unwinding;
        // it is never leaked.
        match unsafe { self.start_read(lba, buffer) } {
            Ok(pending) => {
                let result = work();
                (pending.finish(), result)
            }
            Err(error) => (Err(error), work()),
        }
    }

    /// Writes `data` (a whole number of blocks) from `lba` (CMD24 for one
    /// block, CMD25 with Auto CMD12 for more), then waits until the card has
    /// finished programming (Transfer Complete marks the end of busy on
    /// DAT0; CMD13 confirms the transfer state). Retried like reads.
    pub fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), Emmc2Error> {
        let card = self.card.ok_or(Emmc2Error::NotInitialised)?;
        let count = request::check_request(lba, data.len(), card.blocks)?;
        for chunk in request::split_request(lba, count, self.max_chunk_blocks()) {
            let length = usize::from(chunk.blocks) * BLOCK_SIZE;
            let Some(bytes) = data.get(chunk.byte_offset..chunk.byte_offset + length) else {
                return Err(Emmc2Error::BufferLength { length: data.len() });
            };
            self.with_retries(0, |driver| {
                driver.write_chunk(&card, chunk.lba, chunk.blocks, bytes)
            })?;
        }
        Ok(())
    }

    /// Programs the SD clock to at most `target_hz` (§3.2.3 "SD Clock
    /// Frequency Change Sequence": stop SDCLK, set the divider with the
    /// internal clock on, wait for it to be stable, start SDCLK). Returns
    /// the frequency reached.
    fn set_clock(&mut self, target_hz: u32) -> Result<u32, Emmc2Error> {
        use CLOCK_CONTROL as CC;
        let divider = clock::divider(self.base_clock_hz, target_hz, self.ten_bit_divider).ok_or(
            Emmc2Error::ClockUnreachable {
                base_clock_hz: self.base_clock_hz,
                target_hz,
            },
        )?;
        let registers = self.registers();
        registers.clock_control.modify(CC::SD_CLOCK_ENABLE::CLEAR);
        registers.clock_control.modify(
            CC::SDCLK_FREQUENCY_SELECT.val(u32::from(divider.lower))
                + CC::SDCLK_FREQUENCY_SELECT_UPPER.val(u32::from(divider.upper))
                + CC::CLOCK_GENERATOR_SELECT::CLEAR
                + CC::INTERNAL_CLOCK_ENABLE::SET,
        );
        let deadline = Deadline::after(CLOCK_STABLE_TIMEOUT);
        while !registers.clock_control.is_set(CC::INTERNAL_CLOCK_STABLE) {
            if deadline.expired() {
                return Err(Emmc2Error::Timeout {
                    awaiting: Emmc2Wait::InternalClockStable,
                    command: None,
                });
            }
            spin_loop();
        }
        registers.clock_control.modify(CC::SD_CLOCK_ENABLE::SET);
        Ok(divider.actual_hz)
    }

    fn software_reset(&mut self, reset: Reset) -> Result<(), Emmc2Error> {
        use CLOCK_CONTROL as CC;
        let field = match reset {
            Reset::All => CC::SOFTWARE_RESET_ALL,
            Reset::CommandLine => CC::SOFTWARE_RESET_CMD,
            Reset::DataLine => CC::SOFTWARE_RESET_DAT,
        };
        let registers = self.registers();
        registers.clock_control.modify(field.val(1));
        let deadline = Deadline::after(RESET_TIMEOUT);
        while registers.clock_control.read(field) != 0 {
            if deadline.expired() {
                return Err(Emmc2Error::Timeout {
                    awaiting: Emmc2Wait::SoftwareReset,
                    command: None,
                });
            }
            spin_loop();
        }
        Ok(())
    }

    /// Error recovery after a failed command (§3.10 "Error Recovery"):
    /// reset the CMD line, and the DAT line when data or busy was involved.
    /// A failed reset is not reported: the command's own error is the one
    /// that matters, and the next command will time out if the lines stay
    /// stuck.
    fn reset_lines(&mut self, data: bool) {
        let _ = self.software_reset(Reset::CommandLine);
        if data {
            let _ = self.software_reset(Reset::DataLine);
        }
    }

    // ----- transfers ------------------------------------------------------

    /// Runs `attempt` until it succeeds, fails for good, or has failed
    /// [`TRANSFER_RETRIES`] times after the first try (`failures` tries already
    /// failed before this call, e.g. a read started by [`Emmc2::start_read`]).
    fn with_retries(
        &mut self,
        mut failures: u32,
        mut attempt: impl FnMut(&mut Self) -> Result<(), Emmc2Error>,
    ) -> Result<(), Emmc2Error> {
        loop {
            match attempt(self) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    self.recover();
                    if !error.is_retryable() || failures >= TRANSFER_RETRIES {
                        return Err(error);
                    }
                    failures += 1;
                    self.retries += 1;
                }
            }
        }
    }

    /// Brings the card back to the transfer state after a failed transfer:
    /// CMD/DAT line resets, CMD12 if the card is still sending or
    /// receiving, then CMD13 until it leaves programming (bounded). Errors
    /// are ignored: the retry (or the caller) sees what is still wrong.
    fn recover(&mut self) {
        self.reset_lines(true);
        let Some(card) = self.card else {
            return;
        };
        if let Ok(status) = self.send_status(card.rca)
            && matches!(
                status.state(),
                CardState::SendingData | CardState::ReceiveData
            )
        {
            let _ = self.command_with_busy(Command::StopTransmission, 0, self.write_timeout());
        }
        let _ = self.wait_card_ready(card.rca);
    }

    /// Reads `buffer` (whole blocks) from `lba`, a command per chunk, each with
    /// retries; `failures` tries of the first chunk already failed.
    fn read_range(
        &mut self,
        card: &CardInfo,
        lba: u64,
        buffer: &mut [u8],
        mut failures: u32,
    ) -> Result<(), Emmc2Error> {
        let count = (buffer.len() / BLOCK_SIZE) as u64;
        for chunk in request::split_request(lba, count, self.max_chunk_blocks()) {
            let length = usize::from(chunk.blocks) * BLOCK_SIZE;
            let Some(bytes) = buffer.get_mut(chunk.byte_offset..chunk.byte_offset + length) else {
                return Err(Emmc2Error::BufferLength {
                    length: buffer.len(),
                });
            };
            self.with_retries(failures, |driver| {
                driver.read_chunk(card, chunk.lba, chunk.blocks, bytes)
            })?;
            failures = 0;
        }
        Ok(())
    }

    /// The most blocks one command carries: the Block Count register's limit,
    /// or what one descriptor table describes once ADMA2 is set up.
    fn max_chunk_blocks(&self) -> u16 {
        if self.dma.is_some() {
            adma::MAX_BLOCKS_PER_TRANSFER
        } else {
            MAX_BLOCKS_PER_COMMAND
        }
    }

    /// One try at reading a chunk: by ADMA2 if it is on and suits the buffer,
    /// else by PIO.
    fn read_chunk(
        &mut self,
        card: &CardInfo,
        lba: u64,
        blocks: u16,
        bytes: &mut [u8],
    ) -> Result<(), Emmc2Error> {
        if let Some(bus) = self.choose_adma(bytes.as_ptr() as usize, bytes.len(), true) {
            let transfer = self.start_adma(
                card,
                Direction::Read,
                lba,
                blocks,
                bytes.as_ptr() as usize,
                bus,
            )?;
            return self.complete_adma(&transfer, Some(bytes));
        }
        let address = Self::address(card, lba, blocks)?;
        let command = data_command(Direction::Read, blocks);
        self.read_data_command(command, address, bytes, READ_TIMEOUT)?;
        if blocks > 1 {
            // The controller's Auto CMD12.
            self.commands += 1;
        }
        Ok(())
    }

    /// One try at writing a chunk, by ADMA2 or PIO as [`Self::read_chunk`]
    /// chooses, then CMD13 until the card has programmed it.
    fn write_chunk(
        &mut self,
        card: &CardInfo,
        lba: u64,
        blocks: u16,
        bytes: &[u8],
    ) -> Result<(), Emmc2Error> {
        if let Some(bus) = self.choose_adma(bytes.as_ptr() as usize, bytes.len(), false) {
            let transfer = self.start_adma(
                card,
                Direction::Write,
                lba,
                blocks,
                bytes.as_ptr() as usize,
                bus,
            )?;
            self.complete_adma(&transfer, None)?;
            return self.wait_card_ready(card.rca);
        }
        let address = Self::address(card, lba, blocks)?;
        let command = data_command(Direction::Write, blocks);
        let timeout = self.write_timeout();
        let phase = DataPhase {
            direction: Direction::Write,
            blocks,
            auto_cmd12: true,
            dma: false,
        };
        self.issue(command, address, Some(phase), BLOCK_SIZE as u16, timeout)?;
        for block in bytes.chunks_exact(BLOCK_SIZE) {
            self.wait_interrupt(
                bit(INTERRUPT::BUFFER_WRITE_READY),
                Emmc2Wait::BufferWriteReady,
                timeout,
                command,
                true,
            )?;
            let registers = self.registers();
            let port = &registers.buffer_data_port;
            if let Some(words) = aligned_words(block) {
                for &word in words {
                    port.set(u32::from_le(word));
                }
            } else {
                for word in block.chunks_exact(4) {
                    port.set(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
                }
            }
        }
        // Transfer Complete follows the card's busy after the last block
        // (and after Auto CMD12's busy).
        self.wait_interrupt(
            bit(INTERRUPT::TRANSFER_COMPLETE),
            Emmc2Wait::TransferComplete,
            timeout,
            command,
            true,
        )?;
        if blocks > 1 {
            self.commands += 1;
        }
        self.wait_card_ready(card.rca)
    }

    fn address(card: &CardInfo, lba: u64, blocks: u16) -> Result<u32, Emmc2Error> {
        request::card_address(lba, card.block_addressing).ok_or(Emmc2Error::OutOfRange {
            lba,
            count: u64::from(blocks),
            capacity: card.blocks,
        })
    }

    fn write_timeout(&self) -> Duration {
        match self.card {
            Some(CardInfo {
                card_type: CardType::Emmc,
                ..
            }) => EMMC_WRITE_TIMEOUT,
            Some(card) if card.blocks > SDHC_MAX_BLOCKS => SDXC_WRITE_TIMEOUT,
            Some(_) => SD_WRITE_TIMEOUT,
            // Before identification: the largest SD figure.
            None => SDXC_WRITE_TIMEOUT,
        }
    }

    /// CMD13 until the card is in the transfer state with READY_FOR_DATA,
    /// bounded by the write timeout (SD Physical Layer §4.3.4: programming
    /// ends within the write busy time).
    fn wait_card_ready(&mut self, rca: u16) -> Result<(), Emmc2Error> {
        let deadline = Deadline::after(self.write_timeout());
        loop {
            let status = self.send_status(rca)?;
            if status.errors() != 0 {
                return Err(Emmc2Error::CardStatus {
                    command: Command::SendStatus,
                    status,
                });
            }
            if status.ready_in_transfer_state() {
                return Ok(());
            }
            if deadline.expired() {
                return Err(Emmc2Error::Timeout {
                    awaiting: Emmc2Wait::CardProgramming,
                    command: Some(Command::SendStatus),
                });
            }
            delay(Duration::from_micros(100));
        }
    }

    fn send_status(&mut self, rca: u16) -> Result<CardStatus, Emmc2Error> {
        let response = self.issue(
            Command::SendStatus,
            u32::from(rca) << 16,
            None,
            0,
            COMMAND_TIMEOUT,
        )?;
        Ok(CardStatus(response[0]))
    }

    /// Issues a read command with a data phase of `bytes.len()` bytes (one
    /// block if shorter than 512, e.g. the 64-byte SD switch status) and
    /// moves the data through the Buffer Data Port.
    fn read_data_command(
        &mut self,
        command: Command,
        argument: u32,
        bytes: &mut [u8],
        timeout: Duration,
    ) -> Result<(), Emmc2Error> {
        let block_size = bytes.len().min(BLOCK_SIZE);
        if block_size == 0
            || !bytes.len().is_multiple_of(block_size)
            || !block_size.is_multiple_of(4)
        {
            return Err(Emmc2Error::BufferLength {
                length: bytes.len(),
            });
        }
        let blocks =
            u16::try_from(bytes.len() / block_size).map_err(|_| Emmc2Error::BufferLength {
                length: bytes.len(),
            })?;
        let phase = DataPhase {
            direction: Direction::Read,
            blocks,
            auto_cmd12: true,
            dma: false,
        };
        self.issue(command, argument, Some(phase), block_size as u16, timeout)?;
        for block in bytes.chunks_exact_mut(block_size) {
            self.wait_interrupt(
                bit(INTERRUPT::BUFFER_READ_READY),
                Emmc2Wait::BufferReadReady,
                timeout,
                command,
                true,
            )?;
            let registers = self.registers();
            let port = &registers.buffer_data_port;
            if let Some(words) = aligned_words_mut(block) {
                for word in words {
                    *word = port.get().to_le();
                }
            } else {
                for word in block.chunks_exact_mut(4) {
                    word.copy_from_slice(&port.get().to_le_bytes());
                }
            }
        }
        self.wait_interrupt(
            bit(INTERRUPT::TRANSFER_COMPLETE),
            Emmc2Wait::TransferComplete,
            timeout,
            command,
            true,
        )?;
        Ok(())
    }

    // ----- commands -------------------------------------------------------

    /// Sends a command without data; R1b commands wait for the end of busy
    /// with the write timeout.
    fn command(&mut self, command: Command, argument: u32) -> Result<[u32; 4], Emmc2Error> {
        let busy = self.write_timeout();
        self.issue(command, argument, None, 0, busy)
    }

    fn command_with_busy(
        &mut self,
        command: Command,
        argument: u32,
        busy: Duration,
    ) -> Result<[u32; 4], Emmc2Error> {
        self.issue(command, argument, None, 0, busy)
    }

    /// CMD55 (addressed to `rca`) then the application command.
    fn app_command(
        &mut self,
        command: Command,
        argument: u32,
        rca: u16,
    ) -> Result<[u32; 4], Emmc2Error> {
        self.command(Command::AppCmd, u32::from(rca) << 16)?;
        self.command(command, argument)
    }

    /// Issues one command (§3.7.1.1 "Issuing an SD Command"): wait for the
    /// CMD line (and the DAT line if data or busy is involved), clear the
    /// status, program block size/count, argument, then Transfer Mode +
    /// Command in one 32-bit write; wait for Command Complete; for R1b wait
    /// for Transfer Complete (end of busy) within `busy_timeout`. Returns
    /// the four Response registers. R1 error bits fail the command (except
    /// on CMD12, whose OUT_OF_RANGE after reading the last block is
    /// expected).
    fn issue(
        &mut self,
        command: Command,
        argument: u32,
        data: Option<DataPhase>,
        block_size: u16,
        busy_timeout: Duration,
    ) -> Result<[u32; 4], Emmc2Error> {
        self.issue_with(command, argument, data, block_size, None, busy_timeout)
    }

    /// [`Self::issue`], and for an ADMA2 data phase (`adma_table`: the
    /// descriptor table's bus address) the ADMA System Address (register 058h, the
    /// upper half 0: 32-bit descriptors) and Host Control 1's DMA Select
    /// (§2.2.10: 32-bit ADMA2), once the DAT line is free and before the
    /// command starts the engine (§1.13: "Writing Command register triggers
    /// off ADMA2 transfer").
    fn issue_with(
        &mut self,
        command: Command,
        argument: u32,
        data: Option<DataPhase>,
        block_size: u16,
        adma_table: Option<u32>,
        busy_timeout: Duration,
    ) -> Result<[u32; 4], Emmc2Error> {
        use registers::BLOCK_SIZE_COUNT as BSC;
        let uses_dat = data.is_some()
            || (command.response() == ResponseType::R1b && command != Command::StopTransmission);
        self.wait_present_clear(
            bit(PRESENT_STATE::COMMAND_INHIBIT_CMD),
            Emmc2Wait::CommandLineFree,
            COMMAND_TIMEOUT,
            command,
        )?;
        if uses_dat {
            self.wait_present_clear(
                bit(PRESENT_STATE::COMMAND_INHIBIT_DAT),
                Emmc2Wait::DataLineFree,
                busy_timeout,
                command,
            )?;
        }
        let registers = self.registers();
        registers.interrupt_status.set(u32::MAX);
        if let Some(table) = adma_table {
            registers.adma_system_address.set(table);
            registers.adma_system_address_high.set(0);
            registers
                .host_control_1
                .modify(HOST_CONTROL_1::DMA_SELECT::Adma2Address32);
        }
        if let Some(phase) = data {
            registers.block_size_count.write(
                BSC::TRANSFER_BLOCK_SIZE.val(u32::from(block_size))
                    + BSC::BLOCK_COUNT.val(u32::from(phase.blocks)),
            );
        }
        registers.argument.set(argument);
        registers
            .transfer_mode_command
            .set(command::command_word(command, data));
        self.commands += 1;

        self.wait_interrupt(
            bit(INTERRUPT::COMMAND_COMPLETE),
            Emmc2Wait::CommandComplete,
            COMMAND_TIMEOUT,
            command,
            data.is_some(),
        )?;
        let response = [
            self.registers().response[0].get(),
            self.registers().response[1].get(),
            self.registers().response[2].get(),
            self.registers().response[3].get(),
        ];
        if command.response() == ResponseType::R1b && data.is_none() {
            self.wait_interrupt(
                bit(INTERRUPT::TRANSFER_COMPLETE),
                Emmc2Wait::TransferComplete,
                busy_timeout,
                command,
                true,
            )?;
        }
        let has_card_status = matches!(command.response(), ResponseType::R1 | ResponseType::R1b)
            && !matches!(
                command,
                Command::SendRelativeAddr | Command::SendIfCond | Command::StopTransmission
            );
        if has_card_status {
            let status = CardStatus(response[0]);
            if status.errors() != 0 {
                if data.is_some() {
                    // The data phase may still be pending: clear it.
                    self.reset_lines(true);
                }
                return Err(Emmc2Error::CardStatus { command, status });
            }
        }
        Ok(response)
    }

    fn wait_present_clear(
        &mut self,
        mask: u32,
        awaiting: Emmc2Wait,
        timeout: Duration,
        command: Command,
    ) -> Result<(), Emmc2Error> {
        let deadline = Deadline::after(timeout);
        while self.registers().present_state.get() & mask != 0 {
            if deadline.expired() {
                self.reset_lines(true);
                return Err(Emmc2Error::Timeout {
                    awaiting,
                    command: Some(command),
                });
            }
            spin_loop();
        }
        Ok(())
    }

    /// Waits until one of `mask`'s interrupt status bits is set and
    /// acknowledges it; or an error bit: see [`Self::poll_interrupt`].
    fn wait_interrupt(
        &mut self,
        mask: u32,
        awaiting: Emmc2Wait,
        timeout: Duration,
        command: Command,
        data: bool,
    ) -> Result<u32, Emmc2Error> {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(status) = self.poll_interrupt(mask, command, data)? {
                return Ok(status);
            }
            if deadline.expired() {
                self.reset_lines(data);
                return Err(Emmc2Error::Timeout {
                    awaiting,
                    command: Some(command),
                });
            }
            spin_loop();
        }
    }
}

impl<B: Bus> Emmc2<B> {
    /// One look at the interrupt status: `Some` (acknowledged) if one of
    /// `mask`'s bits is set; an error if an error bit is: then the errors (with
    /// the Auto CMD Error Status, and the ADMA Error Status kept for
    /// [`AdmaFallback`]) are returned, cleared, and the CMD line — and the DAT
    /// line if `data` — reset.
    fn poll_interrupt(
        &mut self,
        mask: u32,
        command: Command,
        data: bool,
    ) -> Result<Option<u32>, Emmc2Error> {
        let status = self.registers().interrupt_status.get();
        if status & (ERROR_BITS | bit(INTERRUPT::ERROR_INTERRUPT)) != 0 {
            let auto_cmd = if status & bit(INTERRUPT::AUTO_CMD_ERROR) != 0 {
                (self.registers().auto_cmd_error_host_control_2.get() & 0xffff) as u16
            } else {
                0
            };
            if status & bit(INTERRUPT::ADMA_ERROR) != 0 {
                // Read before the DAT line reset, which may clear it.
                self.last_adma_error = self.registers().adma_error_status.get() as u8;
            }
            self.registers().interrupt_status.set(status);
            self.reset_lines(data);
            return Err(Emmc2Error::CommandFailed {
                command,
                status: ErrorStatus {
                    error: (status >> 16) as u16,
                    auto_cmd,
                },
            });
        }
        if status & mask != 0 {
            // Acknowledge what was awaited (write 1 to clear, SD Host
            // Controller Spec §2.2.17), so no caller has to.
            self.registers().interrupt_status.set(status & mask);
            return Ok(Some(status));
        }
        Ok(None)
    }
}

/// The read or write command for `blocks` blocks (CMD17/18, CMD24/25).
fn data_command(direction: Direction, blocks: u16) -> Command {
    match (direction, blocks) {
        (Direction::Read, 1) => Command::ReadSingleBlock,
        (Direction::Read, _) => Command::ReadMultipleBlock,
        (Direction::Write, 1) => Command::WriteBlock,
        (Direction::Write, _) => Command::WriteMultipleBlock,
    }
}

impl<B: Bus + fmt::Debug> fmt::Debug for Emmc2<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emmc2")
            .field("bus", &self.bus)
            .field("card", &self.card)
            .field("commands", &self.commands)
            .field("adma", &self.adma_active())
            .finish_non_exhaustive()
    }
}

/// `bytes` as 32-bit words, if it starts on a word boundary and is a whole
/// number of words. The PIO loops then move a word per load or store:
/// `aarch64-unknown-none` builds with strict alignment, so words assembled
/// from bytes cost four byte accesses and three ORs each (12 instructions
/// a word instead of 5, measured on the reflash benchmark).
fn aligned_words(bytes: &[u8]) -> Option<&[u32]> {
    // SAFETY: any four bytes are a valid `u32`; `align_to` returns only the
    // aligned middle part of `bytes`, which it borrows.
    let (head, words, tail) = unsafe { bytes.align_to::<u32>() };
    (head.is_empty() && tail.is_empty()).then_some(words)
}

/// [`aligned_words`] for a buffer to fill.
fn aligned_words_mut(bytes: &mut [u8]) -> Option<&mut [u32]> {
    // SAFETY: as in `aligned_words`; any `u32` written is valid as bytes.
    let (head, words, tail) = unsafe { bytes.align_to_mut::<u32>() };
    (head.is_empty() && tail.is_empty()).then_some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_words_only_for_word_aligned_whole_words() {
        #[repr(align(4))]
        struct Aligned([u8; 12]);
        let mut buffer = Aligned([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let words = aligned_words(&buffer.0[..8]).unwrap();
        assert_eq!(u32::from_le(words[0]), 0x0403_0201);
        assert_eq!(u32::from_le(words[1]), 0x0807_0605);
        assert!(aligned_words(&buffer.0[1..9]).is_none(), "misaligned");
        assert!(aligned_words(&buffer.0[..6]).is_none(), "not whole words");
        let words = aligned_words_mut(&mut buffer.0[4..12]).unwrap();
        words[0] = 0xa0b0_c0d0_u32.to_le();
        assert_eq!(buffer.0[4..8], [0xd0, 0xc0, 0xb0, 0xa0]);
        assert!(aligned_words_mut(&mut buffer.0[2..10]).is_none());
    }

    #[test]
    fn interrupt_enables_cover_what_the_driver_waits_for() {
        for field in [
            INTERRUPT::COMMAND_COMPLETE,
            INTERRUPT::TRANSFER_COMPLETE,
            INTERRUPT::BUFFER_READ_READY,
            INTERRUPT::BUFFER_WRITE_READY,
            INTERRUPT::COMMAND_TIMEOUT_ERROR,
            INTERRUPT::DATA_CRC_ERROR,
            INTERRUPT::AUTO_CMD_ERROR,
        ] {
            let bit = bit(field);
            assert_ne!(INTERRUPTS_ENABLED & bit, 0, "{bit:#x}");
        }
        assert_eq!(INTERRUPTS_ENABLED & (bit(INTERRUPT::CARD_INTERRUPT)), 0);
    }
}
