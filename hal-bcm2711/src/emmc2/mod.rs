//! EMMC2 (SDHCI v3.00) driver: SD and eMMC card initialisation and PIO block reads/writes.
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
//! EMMC2 as a generic SDHCI v3 (capabilities `0x052134b4`: 52 MHz base
//! clock, high speed, no DMA) and only an SD card on it (`-device sd-card`;
//! its `emmc` device is not user-creatable), so the QEMU tests cover the SD
//! path, SDSC byte addressing and SDHC block addressing. The eMMC path
//! follows JESD84-B51 and Linux `drivers/mmc/core/mmc.c` and is unverified
//! until run on a CM4.
//!
//! Data moves by PIO through the Buffer Data Port: simple, no cache or
//! bus-address handling, and identical on QEMU and hardware. SDMA/ADMA2
//! (the real EMMC2 has ADMA2; QEMU's capabilities disable DMA) can come
//! later if load times need it.
//!
//! Every wait is bounded by a [`Deadline`] whose constant cites its source;
//! a failed transfer resets the CMD/DAT lines, stops the card and is retried
//! [`TRANSFER_RETRIES`] times. The pure parts — command encoding
//! ([`command`]), CSD/EXT_CSD decoding ([`card`]), clock dividers
//! ([`clock`]), request splitting ([`request`]) — are host-tested.

pub mod card;
pub mod clock;
pub mod command;
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

pub use card::{BLOCK_SIZE, BusWidth, CardInfo, CardType, RegisterError};
pub use command::{
    CardState, CardStatus, Command, DataPhase, Direction, ErrorStatus, ResponseType,
};
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

/// CMD8 argument: VHS 0b0001 (2.7-3.6 V) and check pattern 0xAA (SD
/// Physical Layer §4.3.13, Table 4-18).
const SD_IF_COND_ARGUMENT: u32 = 0x1aa;

/// ACMD6 argument for a 4-bit bus (SD Physical Layer §4.7.4, "ACMD6":
/// bus width [1:0] = 0b10).
const SD_BUS_WIDTH_4: u32 = 0b10;

/// The RCA zboot assigns to an eMMC with CMD3 (any non-zero value; Linux
/// uses 1 as well).
const EMMC_RCA: u16 = 1;

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

/// What a bounded EMMC2 wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emmc2Wait {
    /// A software reset bit to self-clear.
    SoftwareReset,
    /// Clock Control: Internal Clock Stable.
    InternalClockStable,
    /// Present State: Command Inhibit (CMD) clear.
    CommandLineFree,
    /// Present State: Command Inhibit (DAT) clear (end of busy).
    DataLineFree,
    /// Command Complete.
    CommandComplete,
    /// Transfer Complete (end of a data transfer or of R1b busy).
    TransferComplete,
    /// Buffer Read Ready.
    BufferReadReady,
    /// Buffer Write Ready.
    BufferWriteReady,
    /// The card's power-up (OCR busy bit) after ACMD41/CMD1.
    CardPowerUp,
    /// The card back in the transfer state after programming (CMD13).
    CardProgramming,
}

/// Why a card cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// CMD8's echo differs from what was sent: the card does not accept
    /// 2.7-3.6 V or garbled the check pattern.
    InterfaceCondition { echo: u32 },
    /// The CSD or EXT_CSD cannot be used.
    Register(RegisterError),
    /// An eMMC older than version 4 (no EXT_CSD).
    EmmcVersion { spec_version: u8 },
    /// The EXT_CSD read after switching bus width/timing differs from the
    /// one read before: the wider bus does not work.
    BusTestFailed,
}

/// EMMC2 driver errors; command failures name the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emmc2Error {
    /// No card answered (no response to CMD55/ACMD41 nor to CMD1), or the
    /// controller refused bus power with no card detected.
    NoCard,
    /// `read_blocks`/`write_blocks` before a successful `init`.
    NotInitialised,
    /// Neither the caller nor the capabilities register gave a base clock.
    NoBaseClock,
    /// No divider brings the base clock down to the target.
    ClockUnreachable { base_clock_hz: u32, target_hz: u32 },
    /// A bounded wait ran out.
    Timeout {
        awaiting: Emmc2Wait,
        command: Option<Command>,
    },
    /// The controller reported errors for a command or its data.
    CommandFailed {
        command: Command,
        status: ErrorStatus,
    },
    /// The card's R1 status carries error bits.
    CardStatus {
        command: Command,
        status: CardStatus,
    },
    /// The card is of a kind or state this driver does not handle.
    UnsupportedCard { reason: Unsupported },
    /// The request reaches past the end of the card.
    OutOfRange { lba: u64, count: u64, capacity: u64 },
    /// The buffer length is not a multiple of 512 bytes.
    BufferLength { length: usize },
}

impl Emmc2Error {
    /// Whether the error means "nothing answered this command".
    pub const fn is_no_response(&self) -> bool {
        match self {
            Self::CommandFailed { status, .. } => status.is_command_timeout(),
            Self::Timeout { awaiting, .. } => matches!(awaiting, Emmc2Wait::CommandComplete),
            _ => false,
        }
    }

    /// Whether retrying the transfer may help (bus and card errors), as
    /// opposed to errors in the request itself or the card's identity.
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::CommandFailed { .. } | Self::CardStatus { .. }
        )
    }
}

impl fmt::Display for Emmc2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCard => write!(f, "EMMC2: no card (nothing answered CMD55/ACMD41 or CMD1)"),
            Self::NotInitialised => write!(f, "EMMC2: card not initialised"),
            Self::NoBaseClock => write!(
                f,
                "EMMC2: base clock unknown (mailbox and capabilities give 0)"
            ),
            Self::ClockUnreachable {
                base_clock_hz,
                target_hz,
            } => write!(
                f,
                "EMMC2: no divider brings {base_clock_hz} Hz down to {target_hz} Hz"
            ),
            Self::Timeout {
                awaiting,
                command: Some(command),
            } => write!(f, "EMMC2: timed out waiting for {awaiting:?} ({command})"),
            Self::Timeout {
                awaiting,
                command: None,
            } => write!(f, "EMMC2: timed out waiting for {awaiting:?}"),
            Self::CommandFailed { command, status } => {
                write!(f, "EMMC2: {command} failed: {status}")
            }
            Self::CardStatus { command, status } => {
                write!(f, "EMMC2: {command}: card status {status}")
            }
            Self::UnsupportedCard { reason } => write!(f, "EMMC2: unsupported card: {reason:?}"),
            Self::OutOfRange {
                lba,
                count,
                capacity,
            } => write!(
                f,
                "EMMC2: blocks {lba}+{count} are beyond the card's {capacity} blocks"
            ),
            Self::BufferLength { length } => {
                write!(
                    f,
                    "EMMC2: {length} bytes is not a whole number of 512-byte blocks"
                )
            }
        }
    }
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
}

/// Host Control 2 UHS Mode Select values (SD Host Controller spec §2.2.24;
/// Linux `sdhci.h` `SDHCI_CTRL_UHS_SDR12` and `SDHCI_CTRL_UHS_DDR50`).
const UHS_MODE_SDR: u32 = 0b000;
const UHS_MODE_DDR50: u32 = 0b100;

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
        }
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
    /// CMD18 with Auto CMD12 for more; requests above 65535 blocks are
    /// split). Each command is retried [`TRANSFER_RETRIES`] times on errors.
    pub fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), Emmc2Error> {
        let card = self.card.ok_or(Emmc2Error::NotInitialised)?;
        let count = request::check_request(lba, buffer.len(), card.blocks)?;
        for chunk in request::split_request(lba, count, MAX_BLOCKS_PER_COMMAND) {
            let length = usize::from(chunk.blocks) * BLOCK_SIZE;
            let Some(bytes) = buffer.get_mut(chunk.byte_offset..chunk.byte_offset + length) else {
                return Err(Emmc2Error::BufferLength {
                    length: buffer.len(),
                });
            };
            self.with_retries(|driver| driver.read_chunk(&card, chunk.lba, chunk.blocks, bytes))?;
        }
        Ok(())
    }

    /// Writes `data` (a whole number of blocks) from `lba` (CMD24 for one
    /// block, CMD25 with Auto CMD12 for more), then waits until the card has
    /// finished programming (Transfer Complete marks the end of busy on
    /// DAT0; CMD13 confirms the transfer state). Retried like reads.
    pub fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), Emmc2Error> {
        let card = self.card.ok_or(Emmc2Error::NotInitialised)?;
        let count = request::check_request(lba, data.len(), card.blocks)?;
        for chunk in request::split_request(lba, count, MAX_BLOCKS_PER_COMMAND) {
            let length = usize::from(chunk.blocks) * BLOCK_SIZE;
            let Some(bytes) = data.get(chunk.byte_offset..chunk.byte_offset + length) else {
                return Err(Emmc2Error::BufferLength { length: data.len() });
            };
            self.with_retries(|driver| driver.write_chunk(&card, chunk.lba, chunk.blocks, bytes))?;
        }
        Ok(())
    }

    // ----- initialisation -------------------------------------------------

    fn reset_controller(&mut self) -> Result<(), Emmc2Error> {
        // Reset All clears Host Control 2, so 3.3 V signalling. That is right once
        // the rail was set to 3.3 V (`set_io_rail_at_3v3`); otherwise keep the
        // signalling the firmware chose: it booted from this device with the rail
        // as it is.
        let signaling_1v8 = self.signaling_1v8();
        self.software_reset(Reset::All)?;
        if signaling_1v8 && !self.io_rail_at_3v3 {
            self.registers()
                .auto_cmd_error_host_control_2
                .modify(AUTO_CMD_ERROR_HOST_CONTROL_2::SIGNALING_1_8V_ENABLE::SET);
        }
        let registers = self.registers();
        registers.interrupt_signal_enable.set(0);
        registers.interrupt_status_enable.set(INTERRUPTS_ENABLED);
        registers.interrupt_status.set(u32::MAX);
        registers
            .clock_control
            .modify(CLOCK_CONTROL::DATA_TIMEOUT_COUNTER.val(DATA_TIMEOUT_COUNTER_MAX));
        Ok(())
    }

    /// Selects 3.3 V and switches bus power on (§3.3 "SD Bus Power
    /// Control"). A controller that sees no card keeps SD Bus Power clear
    /// (§2.2.11); the card-detect line may be unwired (the CM4's eMMC:
    /// `broken-cd` in Linux's bcm2711-rpi-cm4.dts), so a refusal is retried
    /// once with card detection forced through the test level (§2.2.10
    /// bits 7..6) before it counts as "no card".
    fn power_on(&mut self) -> Result<(), Emmc2Error> {
        use HOST_CONTROL_1 as HC;
        let registers = self.registers();
        registers
            .host_control_1
            .write(HC::SD_BUS_VOLTAGE::V3_3 + HC::SD_BUS_POWER::SET);
        if registers.host_control_1.is_set(HC::SD_BUS_POWER) {
            return Ok(());
        }
        registers.host_control_1.write(
            HC::CARD_DETECT_SIGNAL_SELECTION::SET
                + HC::CARD_DETECT_TEST_LEVEL::SET
                + HC::SD_BUS_VOLTAGE::V3_3
                + HC::SD_BUS_POWER::SET,
        );
        if registers.host_control_1.is_set(HC::SD_BUS_POWER) {
            Ok(())
        } else {
            Err(Emmc2Error::NoCard)
        }
    }

    /// SD initialisation (SD Physical Layer §4.2 "Card Identification
    /// Mode", Figure 4-2). `Ok(None)` when no SD card answers ACMD41 (try
    /// eMMC).
    fn identify_sd(&mut self) -> Result<Option<CardInfo>, Emmc2Error> {
        self.command(Command::GoIdleState, 0)?;
        // CMD8: only version 2.00+ cards answer; they echo the argument.
        let version_2 = match self.command(Command::SendIfCond, SD_IF_COND_ARGUMENT) {
            Ok(response) => {
                let echo = response[0] & 0xfff;
                if echo != SD_IF_COND_ARGUMENT {
                    return Err(Emmc2Error::UnsupportedCard {
                        reason: Unsupported::InterfaceCondition { echo },
                    });
                }
                true
            }
            Err(error) if error.is_no_response() => false,
            Err(error) => return Err(error),
        };
        // ACMD41 with HCS (host supports high capacity) if the card is 2.00+.
        let argument = card::OCR_VOLTAGE_2V7_3V6 | if version_2 { card::OCR_CCS } else { 0 };
        let deadline = Deadline::after(SD_INIT_TIMEOUT);
        let mut first = true;
        let ocr = loop {
            match self.app_command(Command::SdSendOpCond, argument, 0) {
                Ok(response) if response[0] & card::OCR_POWER_UP_DONE != 0 => break response[0],
                Ok(_) => {}
                Err(error) if first && error.is_no_response() => return Ok(None),
                Err(error) => return Err(error),
            }
            first = false;
            if deadline.expired() {
                return Err(Emmc2Error::Timeout {
                    awaiting: Emmc2Wait::CardPowerUp,
                    command: Some(Command::SdSendOpCond),
                });
            }
            delay(OP_COND_POLL_INTERVAL);
        };
        let block_addressing = version_2 && ocr & card::OCR_CCS != 0;

        let cid = card::r2_from_registers(self.command(Command::AllSendCid, 0)?);
        let rca = (self.command(Command::SendRelativeAddr, 0)?[0] >> 16) as u16;
        let csd_raw =
            card::r2_from_registers(self.command(Command::SendCsd, u32::from(rca) << 16)?);
        let csd = card::decode_sd_csd(csd_raw).map_err(|error| Emmc2Error::UnsupportedCard {
            reason: Unsupported::Register(error),
        })?;
        let card_type = if block_addressing {
            CardType::SdHighCapacity
        } else {
            CardType::SdStandardCapacity
        };
        self.command(Command::SelectCard, u32::from(rca) << 16)?;
        self.app_command(Command::SetBusWidth, SD_BUS_WIDTH_4, rca)?;
        self.registers().host_control_1.modify(
            HOST_CONTROL_1::DATA_TRANSFER_WIDTH_4::SET
                + HOST_CONTROL_1::EXTENDED_DATA_WIDTH_8::CLEAR,
        );
        if !block_addressing {
            // SDSC: the block length is settable and must be 512 for
            // zboot's transfers (SDHC/SDXC fix it at 512).
            self.command(Command::SetBlocklen, BLOCK_SIZE as u32)?;
        }

        // High speed (SD Physical Layer §4.3.10): CMD6 needs command class
        // 10 and a host that can drive 50 MHz.
        let mut high_speed = false;
        if csd.supports_switch()
            && self
                .registers()
                .capabilities_0
                .is_set(CAPABILITIES_0::HIGH_SPEED_SUPPORT)
        {
            let mut status = [0u8; 64];
            self.read_data_command(
                Command::SwitchFunc,
                card::SD_SWITCH_HIGH_SPEED,
                &mut status,
                READ_TIMEOUT,
            )?;
            high_speed = card::sd_switch_group1_result(&status) == Some(1);
        }
        let clock_hz = if high_speed {
            self.registers()
                .host_control_1
                .modify(HOST_CONTROL_1::HIGH_SPEED_ENABLE::SET);
            self.set_clock(clock::SD_HIGH_SPEED_HZ)?
        } else {
            self.set_clock(clock::SD_DEFAULT_SPEED_HZ)?
        };
        Ok(Some(CardInfo {
            card_type,
            block_addressing,
            rca,
            blocks: csd.blocks,
            bus_width: BusWidth::Four,
            high_speed,
            ddr52: false,
            clock_hz,
            cid,
            boot_partition_bytes: 0,
            switched_from_partition: 0,
        }))
    }

    /// eMMC initialisation (JESD84-B51 §6.4 "Device identification mode",
    /// and the order of Linux `drivers/mmc/core/mmc.c` `mmc_init_card`).
    /// Unverified on hardware: QEMU has no eMMC on this bus.
    fn identify_emmc(&mut self) -> Result<CardInfo, Emmc2Error> {
        self.software_reset(Reset::CommandLine)?;
        self.command(Command::GoIdleState, 0)?;
        // CMD1 with the 2.7-3.6 V window and sector mode: the device answers
        // busy until powered up, then with its access mode.
        let argument = card::OCR_VOLTAGE_2V7_3V6 | card::EMMC_OCR_SECTOR_MODE;
        let deadline = Deadline::after(EMMC_INIT_TIMEOUT);
        let mut first = true;
        let ocr = loop {
            match self.command(Command::SendOpCond, argument) {
                Ok(response) if response[0] & card::OCR_POWER_UP_DONE != 0 => break response[0],
                Ok(_) => {}
                Err(error) if first && error.is_no_response() => return Err(Emmc2Error::NoCard),
                Err(error) => return Err(error),
            }
            first = false;
            if deadline.expired() {
                return Err(Emmc2Error::Timeout {
                    awaiting: Emmc2Wait::CardPowerUp,
                    command: Some(Command::SendOpCond),
                });
            }
            delay(OP_COND_POLL_INTERVAL);
        };
        let block_addressing = ocr & card::EMMC_OCR_ACCESS_MODE_MASK == card::EMMC_OCR_SECTOR_MODE;

        let cid = card::r2_from_registers(self.command(Command::AllSendCid, 0)?);
        let rca = EMMC_RCA;
        self.command(Command::SetRelativeAddr, u32::from(rca) << 16)?;
        let csd = card::decode_emmc_csd(card::r2_from_registers(
            self.command(Command::SendCsd, u32::from(rca) << 16)?,
        ));
        if csd.emmc_spec_version < 4 {
            return Err(Emmc2Error::UnsupportedCard {
                reason: Unsupported::EmmcVersion {
                    spec_version: csd.emmc_spec_version,
                },
            });
        }
        self.command(Command::SelectCard, u32::from(rca) << 16)?;
        self.set_clock(clock::EMMC_LEGACY_HZ)?;

        let mut ext_csd_bytes = [0u8; BLOCK_SIZE];
        self.read_data_command(Command::SendExtCsd, 0, &mut ext_csd_bytes, READ_TIMEOUT)?;
        let ext_csd = card::decode_ext_csd(&ext_csd_bytes).ok_or(Emmc2Error::UnsupportedCard {
            reason: Unsupported::Register(RegisterError::ZeroCapacity),
        })?;
        if ext_csd.cmd6_time_ms != 0 {
            self.cmd6_timeout = Duration::from_millis(u64::from(ext_csd.cmd6_time_ms));
        }
        self.ext_csd = Some(ext_csd);
        let blocks = if block_addressing {
            u64::from(ext_csd.sector_count)
        } else {
            csd.blocks
        };
        if blocks == 0 {
            return Err(Emmc2Error::UnsupportedCard {
                reason: Unsupported::Register(RegisterError::ZeroCapacity),
            });
        }

        let (bus_width, high_speed, ddr52, clock_hz) = self.emmc_bus_setup(&ext_csd)?;
        let switched_from_partition = self.select_user_area(&ext_csd)?;
        if !block_addressing {
            self.command(Command::SetBlocklen, BLOCK_SIZE as u32)?;
        }
        Ok(CardInfo {
            card_type: CardType::Emmc,
            block_addressing,
            rca,
            blocks,
            bus_width,
            high_speed,
            ddr52,
            clock_hz,
            cid,
            boot_partition_bytes: ext_csd.boot_partition_bytes,
            switched_from_partition,
        })
    }

    /// Selects the user area for reads and writes when PARTITION_CONFIG left a boot,
    /// RPMB or general-purpose partition selected (a boot ROM or an earlier stage may
    /// leave it so): CMD6 PARTITION_CONFIG with PARTITION_ACCESS 0 and the boot
    /// enable and acknowledge bits kept, within PARTITION_SWITCH_TIME (Linux
    /// `mmc_blk_part_switch`; JESD84-B51 §7.4.69). Returns the partition found
    /// selected (0: the user area, nothing done).
    fn select_user_area(&mut self, ext_csd: &card::ExtCsd) -> Result<u8, Emmc2Error> {
        use card::ext_csd::{PARTITION_ACCESS_MASK, PARTITION_CONFIG};
        let selected = ext_csd.partition_config & PARTITION_ACCESS_MASK;
        if selected == 0 {
            return Ok(0);
        }
        let part_time = Duration::from_millis(u64::from(ext_csd.partition_switch_time_ms));
        self.emmc_switch_within(
            PARTITION_CONFIG,
            ext_csd.partition_config & !PARTITION_ACCESS_MASK,
            self.cmd6_timeout.max(part_time),
            |_| {},
        )?;
        Ok(selected)
    }

    /// Sets up the eMMC bus in Linux's order (`drivers/mmc/core/mmc.c`
    /// `mmc_select_timing`): high-speed timing first, then the widest bus that
    /// passes its test (8, then 4 bits, else 1: `mmc_select_bus_width`), then
    /// DDR52 when the device offers it (`mmc_select_hs_ddr`), with SDR high
    /// speed as the fallback. Returns (width, high speed, DDR52, clock).
    fn emmc_bus_setup(
        &mut self,
        ext_csd: &card::ExtCsd,
    ) -> Result<(BusWidth, bool, bool, u32), Emmc2Error> {
        use HOST_CONTROL_1 as HC;
        // High-speed SDR timing (HS_TIMING = 1) if device and host have it. The
        // host switches its timing after the CMD6 busy and before CMD13 reads the
        // status, and back if the status shows an error (Linux `__mmc_switch`);
        // the clock is raised once the switch is confirmed (`mmc_set_bus_speed`).
        let host_high_speed = self
            .registers()
            .capabilities_0
            .is_set(CAPABILITIES_0::HIGH_SPEED_SUPPORT);
        let mut high_speed = host_high_speed && (ext_csd.high_speed_52 || ext_csd.high_speed_26);
        if high_speed {
            let switched = self.emmc_switch_with(card::ext_csd::HS_TIMING, 1, |driver| {
                driver
                    .registers()
                    .host_control_1
                    .modify(HC::HIGH_SPEED_ENABLE::SET);
            });
            if switched.is_err() {
                self.registers()
                    .host_control_1
                    .modify(HC::HIGH_SPEED_ENABLE::CLEAR);
                high_speed = false;
            }
        }
        let clock_hz = self.set_clock(if high_speed && ext_csd.high_speed_52 {
            clock::EMMC_HIGH_SPEED_HZ
        } else {
            clock::EMMC_LEGACY_HZ
        })?;

        // Bus width: the widest that switches and then passes the bus test.
        let mut bus_width = BusWidth::One;
        for width in [BusWidth::Eight, BusWidth::Four] {
            if (width as u8) > (self.max_bus_width as u8) {
                continue;
            }
            if self
                .emmc_switch(
                    card::ext_csd::BUS_WIDTH,
                    card::ext_csd::bus_width_sdr(width),
                )
                .is_ok()
            {
                self.set_host_bus_width(width);
                if self.emmc_bus_test(ext_csd) {
                    bus_width = width;
                    break;
                }
            }
            self.bus_width_fallbacks += 1;
        }
        if bus_width == BusWidth::One {
            // Every wider bus failed (or none was allowed): back to one bit.
            self.set_host_bus_width(BusWidth::One);
            if self.max_bus_width != BusWidth::One {
                self.emmc_switch(card::ext_csd::BUS_WIDTH, 0)?;
            }
            if (high_speed || self.max_bus_width != BusWidth::One) && !self.emmc_bus_test(ext_csd) {
                return Err(Emmc2Error::UnsupportedCard {
                    reason: Unsupported::BusTestFailed,
                });
            }
        }

        // DDR52 at 3.3 V I/O: sdhci-iproc gives the BCM2711's EMMC2
        // MMC_CAP_3_3V_DDR, and EXT_CSD DEVICE_TYPE bit 2 is "DDR 52 MHz, 1.8 V or
        // 3 V I/O". CMD6 BUS_WIDTH 5/6 (4/8-bit DDR); the host switches Host
        // Control 2's UHS mode to DDR50 before CMD13 (Linux `mmc_select_hs_ddr`,
        // `sdhci_set_uhs_signaling`), and the bus is tested again. Any failure goes
        // back to SDR high speed at the same width.
        let mut ddr = false;
        if self.ddr52_allowed && high_speed && ext_csd.ddr_52 && bus_width != BusWidth::One {
            let switched = self.emmc_switch_with(
                card::ext_csd::BUS_WIDTH,
                card::ext_csd::bus_width_ddr(bus_width),
                |driver| driver.set_uhs_mode(UHS_MODE_DDR50),
            );
            ddr = switched.is_ok() && self.emmc_bus_test(ext_csd);
            if !ddr {
                self.ddr52_fallbacks += 1;
                self.set_uhs_mode(UHS_MODE_SDR);
                self.emmc_switch(
                    card::ext_csd::BUS_WIDTH,
                    card::ext_csd::bus_width_sdr(bus_width),
                )?;
                if !self.emmc_bus_test(ext_csd) {
                    return Err(Emmc2Error::UnsupportedCard {
                        reason: Unsupported::BusTestFailed,
                    });
                }
            }
        }
        Ok((bus_width, high_speed, ddr, clock_hz))
    }

    /// Host Control 1's data width bits for `width`.
    fn set_host_bus_width(&mut self, width: BusWidth) {
        use HOST_CONTROL_1 as HC;
        let fields = match width {
            BusWidth::Eight => HC::EXTENDED_DATA_WIDTH_8::SET + HC::DATA_TRANSFER_WIDTH_4::CLEAR,
            BusWidth::Four => HC::EXTENDED_DATA_WIDTH_8::CLEAR + HC::DATA_TRANSFER_WIDTH_4::SET,
            BusWidth::One => HC::EXTENDED_DATA_WIDTH_8::CLEAR + HC::DATA_TRANSFER_WIDTH_4::CLEAR,
        };
        self.registers().host_control_1.modify(fields);
    }

    /// Host Control 2's UHS Mode Select (SD Host Controller spec §2.2.24).
    fn set_uhs_mode(&mut self, mode: u32) {
        self.registers()
            .auto_cmd_error_host_control_2
            .modify(AUTO_CMD_ERROR_HOST_CONTROL_2::UHS_MODE_SELECT.val(mode));
    }

    /// The bus test the Linux way for hosts without CMD19/CMD14
    /// (`mmc_compare_ext_csds`): read the EXT_CSD again over the bus as it is
    /// now and compare read-only fields with the first read.
    fn emmc_bus_test(&mut self, ext_csd: &card::ExtCsd) -> bool {
        let mut again = [0u8; BLOCK_SIZE];
        if self
            .read_data_command(Command::SendExtCsd, 0, &mut again, READ_TIMEOUT)
            .is_err()
        {
            self.reset_lines(true);
            return false;
        }
        card::decode_ext_csd(&again).is_some_and(|second| {
            second.sector_count == ext_csd.sector_count
                && second.high_speed_52 == ext_csd.high_speed_52
                && second.ddr_52 == ext_csd.ddr_52
                && second.revision == ext_csd.revision
        })
    }

    /// CMD6 SWITCH writing one EXT_CSD byte, then CMD13 to see whether the
    /// device accepted it (SWITCH_ERROR; JESD84-B51 §6.6.1 "Command sets and
    /// extended settings").
    fn emmc_switch(&mut self, index: u8, value: u8) -> Result<(), Emmc2Error> {
        self.emmc_switch_with(index, value, |_| {})
    }

    /// [`Self::emmc_switch`] with `host_change` applied between the CMD6 busy
    /// and the CMD13: the timing a switch changes must be the host's too before
    /// the status is read (Linux `__mmc_switch`).
    fn emmc_switch_with(
        &mut self,
        index: u8,
        value: u8,
        host_change: impl FnOnce(&mut Self),
    ) -> Result<(), Emmc2Error> {
        self.emmc_switch_within(index, value, self.cmd6_timeout, host_change)
    }

    /// [`Self::emmc_switch_with`] with the CMD6 busy bounded by `timeout` instead of
    /// GENERIC_CMD6_TIME (a PARTITION_CONFIG switch has its own limit).
    fn emmc_switch_within(
        &mut self,
        index: u8,
        value: u8,
        timeout: Duration,
        host_change: impl FnOnce(&mut Self),
    ) -> Result<(), Emmc2Error> {
        self.command_with_busy(
            Command::Switch,
            card::emmc_switch_argument(index, value),
            timeout,
        )?;
        host_change(self);
        let status = self.send_status(EMMC_RCA)?;
        if status.errors() != 0 {
            return Err(Emmc2Error::CardStatus {
                command: Command::Switch,
                status,
            });
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

    fn with_retries(
        &mut self,
        mut attempt: impl FnMut(&mut Self) -> Result<(), Emmc2Error>,
    ) -> Result<(), Emmc2Error> {
        let mut failures = 0;
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

    fn read_chunk(
        &mut self,
        card: &CardInfo,
        lba: u64,
        blocks: u16,
        bytes: &mut [u8],
    ) -> Result<(), Emmc2Error> {
        let address = Self::address(card, lba, blocks)?;
        let command = if blocks == 1 {
            Command::ReadSingleBlock
        } else {
            Command::ReadMultipleBlock
        };
        self.read_data_command(command, address, bytes, READ_TIMEOUT)?;
        if blocks > 1 {
            // The controller's Auto CMD12.
            self.commands += 1;
        }
        Ok(())
    }

    fn write_chunk(
        &mut self,
        card: &CardInfo,
        lba: u64,
        blocks: u16,
        bytes: &[u8],
    ) -> Result<(), Emmc2Error> {
        let address = Self::address(card, lba, blocks)?;
        let command = if blocks == 1 {
            Command::WriteBlock
        } else {
            Command::WriteMultipleBlock
        };
        let timeout = self.write_timeout();
        let phase = DataPhase {
            direction: Direction::Write,
            blocks,
            auto_cmd12: true,
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
    /// acknowledges it; or an error bit: then the errors (and the Auto CMD
    /// Error Status) are returned, cleared, and the CMD line — and the DAT
    /// line if `data` — reset.
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
            let status = self.registers().interrupt_status.get();
            if status & (ERROR_BITS | bit(INTERRUPT::ERROR_INTERRUPT)) != 0 {
                let auto_cmd = if status & bit(INTERRUPT::AUTO_CMD_ERROR) != 0 {
                    (self.registers().auto_cmd_error_host_control_2.get() & 0xffff) as u16
                } else {
                    0
                };
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

impl<B: Bus + fmt::Debug> fmt::Debug for Emmc2<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emmc2")
            .field("bus", &self.bus)
            .field("card", &self.card)
            .field("commands", &self.commands)
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

    extern crate std;
    use std::string::ToString;

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
    fn errors_name_the_command_and_status() {
        let failed = Emmc2Error::CommandFailed {
            command: Command::ReadMultipleBlock,
            status: ErrorStatus {
                error: 0x0020,
                auto_cmd: 0,
            },
        };
        assert_eq!(
            failed.to_string(),
            "EMMC2: CMD18 READ_MULTIPLE_BLOCK failed: error status 0x0020 (data CRC)"
        );
        assert!(failed.is_retryable());
        assert!(!failed.is_no_response());
        let timeout = Emmc2Error::Timeout {
            awaiting: Emmc2Wait::BufferReadReady,
            command: Some(Command::ReadSingleBlock),
        };
        assert_eq!(
            timeout.to_string(),
            "EMMC2: timed out waiting for BufferReadReady (CMD17 READ_SINGLE_BLOCK)"
        );
        let status = Emmc2Error::CardStatus {
            command: Command::WriteBlock,
            status: CardStatus(0x0400_0900),
        };
        assert_eq!(
            status.to_string(),
            "EMMC2: CMD24 WRITE_BLOCK: card status 0x04000900 (state Transfer, WP_VIOLATION, READY_FOR_DATA)"
        );
    }

    #[test]
    fn no_response_is_recognised() {
        let silent = Emmc2Error::CommandFailed {
            command: Command::AppCmd,
            status: ErrorStatus {
                error: ErrorStatus::COMMAND_TIMEOUT,
                auto_cmd: 0,
            },
        };
        assert!(silent.is_no_response());
        let silent_controller = Emmc2Error::Timeout {
            awaiting: Emmc2Wait::CommandComplete,
            command: Some(Command::SendOpCond),
        };
        assert!(silent_controller.is_no_response());
        assert!(!Emmc2Error::NoCard.is_retryable());
        let out_of_range = Emmc2Error::OutOfRange {
            lba: 10,
            count: 2,
            capacity: 11,
        };
        assert!(!out_of_range.is_retryable());
        assert_eq!(
            out_of_range.to_string(),
            "EMMC2: blocks 10+2 are beyond the card's 11 blocks"
        );
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
