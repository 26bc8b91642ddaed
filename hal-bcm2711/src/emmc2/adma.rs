//! ADMA2 on EMMC2: the descriptor table, the controller's view of RAM, cache maintenance.
//!
//! **Descriptors** (SD Host Controller Simplified Specification v3.00, §1.13
//! "Advanced DMA", Figure 1-10 "32-bit Address Descriptor Table"): one 64-bit
//! little-endian line per piece of the buffer: attributes in bits 5..0 (Valid,
//! End, Int, then Act in bits 5..4, Act = 10b "Tran": transfer data), the
//! length in bits 31..16, the 32-bit data address in bits 63..32. The engine
//! fetches lines from the ADMA System Address (register 058h) until a line with
//! End. §1.13, "Data Address and Data Length Requirements": addresses are 4-byte
//! units, each line moves "less than 64KB", and the lines add up to the block
//! count times the block size. The table itself sits on a 32-bit boundary
//! (the ADMA System Address register). A length field of 0000h means 65536 bytes in the descriptor
//! table's definition (QEMU `hw/sd/sdhci.c` `sdhci_do_adma` reads it so, Linux
//! `sdhci.c` sets `max_seg_size = 65536` unless a controller has
//! `SDHCI_QUIRK_BROKEN_ADMA_ZEROLEN_DESC`); zboot never relies on it: a line
//! moves at most [`MAX_DESCRIPTOR_BYTES`] (127 blocks), which satisfies both
//! readings. 32-bit descriptors suffice: Linux reports the BCM2711's EMMC2 as
//! "SDHCI controller on fe340000.emmc2 [fe340000.emmc2] using ADMA" on a Pi 4
//! (`sdhci_setup_host` sets `SDHCI_USE_ADMA` only when the Capabilities
//! register (040h) has ADMA2 Support, bit 19, and would say "ADMA 64-bit"
//! for 64-bit descriptors).
//!
//! **Bus addresses.** EMMC2 does not see RAM at the ARM's physical addresses on
//! every BCM2711: Linux `arch/arm/boot/dts/broadcom/bcm2711.dtsi` puts it alone
//! on `emmc2bus` with `dma-ranges = <0x0 0xc0000000 0x0 0x00000000 0x40000000>`
//! (bus `0xC000_0000 + x` is ARM `x`, first GiB only) and says "emmc2 has
//! different DMA constraints based on SoC revisions ... The firmware will find
//! whether the emmc2bus alias is defined, and if so, it'll edit the dma-ranges
//! property". That value is the first revision's (B0); on the C0 revision —
//! every CM4 and Pi 400 (Raspberry Pi firmware issue #1704: "Does all CM4 and
//! Rpi 400 have BCM2711 Stepping C0?" — "Yes") and later Pi 4 B — the firmware
//! writes `<0x0 0x0 0x0 0x0 0xfc000000>`, a 1:1 view of everything below the
//! peripherals (the Linux patch "ARM: dts: bcm2711: Fix DMA constrains for newer
//! BCM2711 boards", 2022, and the Raspberry Pi forum's CM4 recipe give the same
//! value). So the driver assumes neither: the caller gives it a [`DmaWindow`]
//! read from the firmware's `/emmc2bus` `dma-ranges` ([`DmaWindow::from_dma_ranges`]),
//! and a buffer outside that window (on a B0: anything above 1 GiB; on any
//! revision: RAM above 4 GiB, out of reach of 32-bit descriptors) moves by PIO.
//!
//! **Caches** ([`crate::cache`]): the controller does not snoop the A72's
//! caches. Before it reads a buffer (a card write) the buffer's lines and the
//! descriptor table are cleaned to the point of coherency; before it writes
//! one (a card read) the lines are cleaned and invalidated, so no dirty line
//! can be evicted over what the controller stored; after it finished, they are
//! invalidated again, dropping lines the CPU fetched speculatively meanwhile.
//! That last step is only safe on lines the buffer owns whole, so a read by
//! ADMA2 needs a buffer that starts and ends on a cache-line boundary (the
//! reason Linux aligns DMA buffers to `ARCH_DMA_MINALIGN`); other reads move
//! by PIO.

use core::fmt;
use core::hint::spin_loop;
use core::time::Duration;

use tock_registers::interfaces::Readable;

use super::registers::{BLOCK_SIZE_COUNT, Bus, CAPABILITIES_0, INTERRUPT};
use super::{
    BLOCK_SIZE, CardInfo, Command, DataPhase, Direction, Emmc2, Emmc2Error, Emmc2Wait, ErrorStatus,
    READ_TIMEOUT, bit, data_command,
};
use crate::cache;
use crate::generic_timer::Deadline;

/// Descriptor lines in an [`AdmaTable`]: 1 KiB of table, at most
/// [`MAX_TRANSFER_BYTES`] per command.
pub const TABLE_ENTRIES: usize = 128;

/// The most one descriptor line moves: 127 blocks, below the "less than 64KB"
/// of §1.13 ("Data Address and Data Length Requirements"), and a multiple of
/// both the block and the cache-line size.
pub const MAX_DESCRIPTOR_BYTES: usize = 127 * 512;

/// The most one ADMA2 command moves (7.9 MiB); longer requests take several.
pub const MAX_TRANSFER_BYTES: usize = TABLE_ENTRIES * MAX_DESCRIPTOR_BYTES;

/// [`MAX_TRANSFER_BYTES`] in blocks.
pub const MAX_BLOCKS_PER_TRANSFER: u16 = (MAX_TRANSFER_BYTES / 512) as u16;

/// Attribute Valid: the line is to be executed (Figure 1-10).
const ATTRIBUTE_VALID: u64 = 1 << 0;
/// Attribute End: the last line of the table.
const ATTRIBUTE_END: u64 = 1 << 1;
/// Act = 10b, "Tran": transfer the data the line describes.
const ACT_TRANSFER: u64 = 0b10 << 4;

/// The alignment of a data address in a 32-bit descriptor (§1.13: "The
/// minimum unit of address is 4 bytes").
pub const DATA_ADDRESS_ALIGNMENT: usize = 4;

/// A descriptor table in RAM, in whole cache lines (so cleaning it touches
/// nothing else). Give the driver one that lives as long as it does
/// ([`Emmc2::use_adma`]), in RAM its [`DmaWindow`] reaches.
#[repr(C, align(64))]
pub struct AdmaTable {
    lines: [u64; TABLE_ENTRIES],
}

impl AdmaTable {
    /// An empty table (no line valid).
    pub const fn new() -> Self {
        Self {
            lines: [0; TABLE_ENTRIES],
        }
    }

    /// The table's first byte, to give the controller (as a bus address).
    pub fn address(&self) -> usize {
        self.lines.as_ptr() as usize
    }

    /// Line `index` as stored (little-endian on the bus), for tests and dumps.
    pub fn line(&self, index: usize) -> Option<u64> {
        self.lines.get(index).map(|line| u64::from_le(*line))
    }

    /// Describes `length` bytes at bus address `bus` (4-byte aligned): lines of
    /// at most [`MAX_DESCRIPTOR_BYTES`], the last with End. Returns the number of
    /// lines, or `None` if the request does not fit the table (more than
    /// [`MAX_TRANSFER_BYTES`]), is empty, is misaligned, or runs past 4 GiB.
    pub fn describe(&mut self, bus: u32, length: usize) -> Option<usize> {
        let lines = length.div_ceil(MAX_DESCRIPTOR_BYTES);
        let in_reach = u64::from(bus) + length as u64 <= 1 << 32;
        if length == 0
            || lines > TABLE_ENTRIES
            || !in_reach
            || !(bus as usize).is_multiple_of(DATA_ADDRESS_ALIGNMENT)
        {
            return None;
        }
        let mut address = u64::from(bus);
        let mut left = length;
        for (index, line) in self.lines.iter_mut().take(lines).enumerate() {
            let piece = left.min(MAX_DESCRIPTOR_BYTES);
            let end = if index + 1 == lines { ATTRIBUTE_END } else { 0 };
            let value = (address << 32) | ((piece as u64) << 16) | ACT_TRANSFER | end;
            *line = (value | ATTRIBUTE_VALID).to_le();
            address += piece as u64;
            left -= piece;
        }
        // A stale line after End is never fetched; clear it anyway so a dump
        // shows only this transfer.
        if let Some(next) = self.lines.get_mut(lines) {
            *next = 0;
        }
        Some(lines)
    }
}

impl Default for AdmaTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AdmaTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmaTable")
            .field("address", &format_args!("{:#x}", self.address()))
            .finish_non_exhaustive()
    }
}

/// How the controller sees RAM: ARM physical `cpu_start..cpu_start + size`
/// appears at bus `bus_start..`; nothing else is reachable. One entry of a
/// device tree's `dma-ranges` (Devicetree Specification v0.4 §2.3.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaWindow {
    bus_start: u64,
    cpu_start: u64,
    size: u64,
}

/// Why a `dma-ranges` property gives no usable window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaRangesError {
    /// An address or size takes more than two cells (or none).
    CellCount {
        address_cells: u32,
        parent_address_cells: u32,
        size_cells: u32,
    },
    /// The value is not a whole number of (bus, parent, size) entries.
    Length { bytes: usize },
    /// The first entry's size is 0.
    EmptyWindow,
}

impl fmt::Display for DmaRangesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CellCount {
                address_cells,
                parent_address_cells,
                size_cells,
            } => write!(
                f,
                "dma-ranges with {address_cells}/{parent_address_cells}/{size_cells} cells \
                 (bus/parent/size): only 1 or 2 each are supported"
            ),
            Self::Length { bytes } => {
                write!(f, "dma-ranges is {bytes} bytes: not whole entries")
            }
            Self::EmptyWindow => write!(f, "dma-ranges gives a window of 0 bytes"),
        }
    }
}

impl DmaWindow {
    /// BCM2711 B0 (the first Pi 4 B boards): bus `0xC000_0000` is ARM 0, for
    /// 1 GiB (Linux bcm2711.dtsi `emmc2bus` `dma-ranges`, unedited).
    pub const BCM2711_B0: Self = Self::new(0xC000_0000, 0, 0x4000_0000);

    /// BCM2711 C0 (every CM4): bus = ARM physical below the peripherals at
    /// `0xFC00_0000` (what the firmware writes into `emmc2bus` `dma-ranges`).
    pub const BCM2711_C0: Self = Self::new(0, 0, 0xFC00_0000);

    /// ARM physical `cpu_start..cpu_start + size` at bus `bus_start..`.
    pub const fn new(bus_start: u64, cpu_start: u64, size: u64) -> Self {
        Self {
            bus_start,
            cpu_start,
            size,
        }
    }

    /// The first bus address of the window.
    pub const fn bus_start(&self) -> u64 {
        self.bus_start
    }

    /// The ARM physical address the window starts at.
    pub const fn cpu_start(&self) -> u64 {
        self.cpu_start
    }

    /// The window's size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The bus address of ARM physical `cpu..cpu + length`, if the whole range
    /// is inside the window and below 4 GiB on the bus (32-bit descriptors).
    pub fn bus_address(&self, cpu: usize, length: usize) -> Option<u32> {
        let offset = (cpu as u64).checked_sub(self.cpu_start)?;
        let end = offset.checked_add(length as u64)?;
        if end > self.size {
            return None;
        }
        let bus = self.bus_start.checked_add(offset)?;
        let bus_end = bus.checked_add(length as u64)?;
        (bus_end <= 1 << 32).then_some(bus as u32)
    }

    /// The first entry of a `dma-ranges` value (big-endian cells): bus address
    /// in `address_cells` (the bus node's `#address-cells`), parent (ARM)
    /// address in `parent_address_cells` (its parent's), size in `size_cells`
    /// (the bus node's `#size-cells`), Devicetree Specification v0.4 §2.3.9.
    /// An empty value means "the same addresses on both sides": a 1:1 window
    /// over the 32-bit space. Later entries are ignored: the BCM2711's trees
    /// have one.
    pub fn from_dma_ranges(
        value: &[u8],
        address_cells: u32,
        parent_address_cells: u32,
        size_cells: u32,
    ) -> Result<Self, DmaRangesError> {
        let cells_ok = |cells: u32| (1..=2).contains(&cells);
        if !(cells_ok(address_cells) && cells_ok(parent_address_cells) && cells_ok(size_cells)) {
            return Err(DmaRangesError::CellCount {
                address_cells,
                parent_address_cells,
                size_cells,
            });
        }
        if value.is_empty() {
            return Ok(Self::new(0, 0, 1 << 32));
        }
        let entry = 4 * (address_cells + parent_address_cells + size_cells) as usize;
        if !value.len().is_multiple_of(entry) {
            return Err(DmaRangesError::Length { bytes: value.len() });
        }
        let mut cells = value
            .chunks_exact(4)
            .map(|cell| u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]));
        let mut number = |count: u32| {
            (0..count).fold(0u64, |accumulated, _| {
                (accumulated << 32) | u64::from(cells.next().unwrap_or(0))
            })
        };
        let bus_start = number(address_cells);
        let cpu_start = number(parent_address_cells);
        let size = number(size_cells);
        if size == 0 {
            return Err(DmaRangesError::EmptyWindow);
        }
        Ok(Self::new(bus_start, cpu_start, size))
    }
}

impl fmt::Display for DmaWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ARM {:#x}..{:#x} at bus {:#x}",
            self.cpu_start,
            self.cpu_start.saturating_add(self.size),
            self.bus_start
        )
    }
}

/// The ADMA Error Status register (054h) after an ADMA Error.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdmaErrorStatus(pub u8);

impl AdmaErrorStatus {
    /// ADMA Length Mismatch Error.
    pub const LENGTH_MISMATCH: u8 = 1 << 2;

    /// Where the engine stopped (the ADMA Error State field).
    pub const fn state(self) -> &'static str {
        match self.0 & 0b11 {
            0b00 => "stopped (ST_STOP)",
            0b01 => "fetching a descriptor (ST_FDS)",
            0b11 => "transferring data (ST_TFR)",
            _ => "reserved state 10b",
        }
    }
}

impl fmt::Debug for AdmaErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdmaErrorStatus({:#04x})", self.0)
    }
}

impl fmt::Display for AdmaErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ADMA error status {:#04x}: {}", self.0, self.state())?;
        if self.0 & Self::LENGTH_MISMATCH != 0 {
            write!(f, ", length mismatch")?;
        }
        Ok(())
    }
}

/// Why [`Emmc2::use_adma`] left the driver on PIO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmaUnavailable {
    /// The controller predates ADMA2 (SDHCI v2.00 introduced it).
    SpecificationVersion { version: u8 },
    /// The Capabilities register does not advertise ADMA2 (Capabilities register 040h, bit 19):
    /// QEMU's raspi4b EMMC2 (`0x052134b4`) unless told otherwise.
    NotAdvertised { capabilities: u32 },
    /// The descriptor table lies outside the window the controller reaches.
    TableUnreachable { address: usize, window: DmaWindow },
}

impl fmt::Display for AdmaUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpecificationVersion { version } => write!(
                f,
                "SDHCI specification version {version} has no ADMA2 (2.00 and later)"
            ),
            Self::NotAdvertised { capabilities } => write!(
                f,
                "capabilities {capabilities:#010x} do not advertise ADMA2 (bit 19)"
            ),
            Self::TableUnreachable { address, window } => write!(
                f,
                "the descriptor table at {address:#x} is outside the controller's window ({window})"
            ),
        }
    }
}

/// The ADMA error that switched a driver to PIO for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmaFallback {
    /// The command whose data phase failed.
    pub command: Command,
    /// What went wrong: the controller's error status (with ADMA Error set),
    /// or `None` when the transfer never completed (a timeout).
    pub status: Option<ErrorStatus>,
    /// The ADMA Error Status register at the time.
    pub adma_status: AdmaErrorStatus,
}

impl fmt::Display for AdmaFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "EMMC2: ADMA2 failed on {}: {status}", self.command)?,
            None => write!(
                f,
                "EMMC2: ADMA2 transfer of {} never completed",
                self.command
            )?,
        }
        write!(
            f,
            " ({}); PIO from now on, the transfer is retried by PIO",
            self.adma_status
        )
    }
}

/// What moved how, for the log and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// Commands whose data moved by ADMA2.
    pub adma: u64,
    /// Block transfers by PIO because ADMA2 is off (not advertised, not set
    /// up, or switched off after an error).
    pub pio: u64,
    /// Block transfers by PIO because the buffer did not suit ADMA2 (outside
    /// the window, or a read buffer not in whole cache lines).
    pub pio_unsuitable_buffer: u64,
}

/// Whether a buffer at `address` of `length` bytes suits ADMA2 in the
/// direction given (`device_writes`: a card read): whole cache lines for a
/// read (see the module docs), 4-byte aligned for a write. The window is
/// checked separately.
pub(super) fn buffer_suits(address: usize, length: usize, device_writes: bool) -> bool {
    let alignment = if device_writes {
        cache::dcache_line_size()
    } else {
        DATA_ADDRESS_ALIGNMENT
    };
    address.is_multiple_of(alignment) && length.is_multiple_of(alignment)
}

/// Before the controller fetches the table and reads `address..+length` (a card
/// write): both cleaned to the point of coherency.
pub(super) fn before_device_reads(table: &AdmaTable, address: usize, length: usize) {
    cache::clean_range(table.address(), size_of::<AdmaTable>());
    cache::clean_range(address, length);
}

/// Before the controller writes `address..+length` (a card read): the table
/// cleaned, the buffer cleaned and invalidated.
pub(super) fn before_device_writes(table: &AdmaTable, address: usize, length: usize) {
    cache::clean_range(table.address(), size_of::<AdmaTable>());
    cache::clean_invalidate_range(address, length);
}

/// After the controller wrote `buffer` (or stopped writing it): its lines
/// invalidated, so the CPU reads what is in RAM.
pub(super) fn after_device_writes(buffer: &mut [u8]) {
    // SAFETY: the buffer holds bytes (every bit pattern valid), consists of
    // whole cache lines (`buffer_suits` admitted it), and is exclusively
    // borrowed for the transfer: the CPU has not written it since
    // `before_device_writes` cleaned it, so no CPU write is lost; the `&mut`
    // borrow is not read across the call.
    unsafe { cache::invalidate_range(buffer.as_mut_ptr() as usize, buffer.len()) };
}

// ----- the driver's ADMA2 side --------------------------------------------------

/// ADMA2 as [`Emmc2::use_adma`] set it up.
pub(super) struct Dma {
    table: &'static mut AdmaTable,
    /// The table's bus address.
    table_bus: u32,
    window: DmaWindow,
    /// Cleared for good by the first ADMA failure.
    active: bool,
}

/// Why a block transfer moves by PIO.
#[derive(Clone, Copy, Debug)]
pub(super) enum PioReason {
    /// ADMA2 is not set up, or was switched off by a failure.
    AdmaOff,
    /// The buffer is outside the window or not in whole cache lines (a read).
    UnsuitableBuffer,
}

/// An ADMA2 command under way: what finishing it needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct AdmaTransfer {
    command: Command,
    blocks: u16,
    /// Bytes the descriptors describe.
    pub(super) length: usize,
    /// The bound on each block (renewed while the transfer progresses).
    per_block: Duration,
}

/// The ADMA failure that switched a driver to PIO, and whether the caller has
/// had it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) enum FallbackReport {
    /// ADMA2 never failed.
    #[default]
    None,
    /// It failed; [`Emmc2::take_adma_fallback`] has not handed it out yet.
    Pending(AdmaFallback),
    /// Handed out.
    Reported(AdmaFallback),
}

impl<B: Bus> Emmc2<B> {
    /// Moves block data by ADMA2 from now on, with `table` as the descriptor
    /// table and `window` as the controller's view of RAM (the firmware's
    /// `/emmc2bus` `dma-ranges`, [`DmaWindow::from_dma_ranges`]; the BCM2711's
    /// revisions differ, see the [module docs](self)). Refused — the driver
    /// stays on PIO — when the controller predates SDHCI v2.00, when its
    /// Capabilities register (040h) does not advertise ADMA2 in bit 19 (QEMU's
    /// raspi4b by default), or when the table is outside the window. Takes
    /// effect at the next transfer; may be called before or after
    /// [`Emmc2::init`].
    pub fn use_adma(
        &mut self,
        table: &'static mut AdmaTable,
        window: DmaWindow,
    ) -> Result<(), AdmaUnavailable> {
        let version = self.specification_version();
        if version < 1 {
            return Err(AdmaUnavailable::SpecificationVersion { version });
        }
        let capabilities = self.registers().capabilities_0.get();
        if capabilities & bit(CAPABILITIES_0::ADMA2_SUPPORT) == 0 {
            return Err(AdmaUnavailable::NotAdvertised { capabilities });
        }
        let address = table.address();
        let table_bus = window
            .bus_address(address, size_of::<AdmaTable>())
            .ok_or(AdmaUnavailable::TableUnreachable { address, window })?;
        self.dma = Some(Dma {
            table,
            table_bus,
            window,
            active: true,
        });
        Ok(())
    }

    /// Whether block transfers use ADMA2 (set up and not switched off by a failure).
    pub fn adma_active(&self) -> bool {
        self.dma.as_ref().is_some_and(|dma| dma.active)
    }

    /// The controller's view of RAM given to [`Emmc2::use_adma`].
    pub fn dma_window(&self) -> Option<DmaWindow> {
        self.dma.as_ref().map(|dma| dma.window)
    }

    /// The ADMA failure that switched the driver to PIO, handed out once (the
    /// driver has no log: the caller logs it); `None` before, and after.
    pub fn take_adma_fallback(&mut self) -> Option<AdmaFallback> {
        let FallbackReport::Pending(fallback) = self.adma_fallback else {
            return None;
        };
        self.adma_fallback = FallbackReport::Reported(fallback);
        Some(fallback)
    }

    /// The ADMA failure that switched the driver to PIO, if any (diagnostics).
    pub fn adma_fallback(&self) -> Option<AdmaFallback> {
        match self.adma_fallback {
            FallbackReport::None => None,
            FallbackReport::Pending(fallback) | FallbackReport::Reported(fallback) => {
                Some(fallback)
            }
        }
    }

    /// The bus address to give the controller for `length` bytes at ARM
    /// physical `address` (identity-mapped), if ADMA2 is on and suits the
    /// buffer (`device_writes`: a card read); otherwise why the data moves by
    /// PIO.
    pub(super) fn adma_bus_address(
        &self,
        address: usize,
        length: usize,
        device_writes: bool,
    ) -> Result<u32, PioReason> {
        let dma = self
            .dma
            .as_ref()
            .filter(|dma| dma.active)
            .ok_or(PioReason::AdmaOff)?;
        dma.window
            .bus_address(address, length)
            .filter(|_| buffer_suits(address, length, device_writes))
            .ok_or(PioReason::UnsuitableBuffer)
    }

    /// [`Self::adma_bus_address`] for a transfer about to run: counts PIO
    /// choices in [`TransferCounts`] (ADMA2 ones count when they start).
    pub(super) fn choose_adma(
        &mut self,
        address: usize,
        length: usize,
        device_writes: bool,
    ) -> Option<u32> {
        match self.adma_bus_address(address, length, device_writes) {
            Ok(bus) => Some(bus),
            Err(PioReason::AdmaOff) => {
                self.counts.pio += 1;
                None
            }
            Err(PioReason::UnsuitableBuffer) => {
                self.counts.pio_unsuitable_buffer += 1;
                None
            }
        }
    }

    /// Describes the buffer (`blocks` blocks at ARM `address`, bus `bus`) in the
    /// descriptor table, does the cache maintenance for `direction`, points the
    /// controller at the table and issues the read or write command; returns
    /// once the card answered (Command Complete), with the data moving.
    pub(super) fn start_adma(
        &mut self,
        card: &CardInfo,
        direction: Direction,
        lba: u64,
        blocks: u16,
        address: usize,
        bus: u32,
    ) -> Result<AdmaTransfer, Emmc2Error> {
        let card_address = Self::address(card, lba, blocks)?;
        let command = data_command(direction, blocks);
        let length = usize::from(blocks) * BLOCK_SIZE;
        let per_block = match direction {
            Direction::Read => READ_TIMEOUT,
            Direction::Write => self.write_timeout(),
        };
        let Some(dma) = self.dma.as_mut() else {
            return Err(Emmc2Error::NotInitialised);
        };
        if dma.table.describe(bus, length).is_none() {
            return Err(Emmc2Error::BufferLength { length });
        }
        match direction {
            Direction::Write => before_device_reads(dma.table, address, length),
            Direction::Read => before_device_writes(dma.table, address, length),
        }
        let table_bus = dma.table_bus;
        let phase = DataPhase {
            direction,
            blocks,
            auto_cmd12: true,
            dma: true,
        };
        self.counts.adma += 1;
        match self.issue_with(
            command,
            card_address,
            Some(phase),
            BLOCK_SIZE as u16,
            Some(table_bus),
            per_block,
        ) {
            Ok(_) => Ok(AdmaTransfer {
                command,
                blocks,
                length,
                per_block,
            }),
            Err(error) => {
                self.note_adma_failure(command, &error);
                Err(error)
            }
        }
    }

    /// Waits until the controller has moved all of `transfer` (Transfer
    /// Complete; after a write, also the card's busy and Auto CMD12's), then
    /// invalidates `read_into`'s cache lines (also after a failure: the
    /// controller may have written part of it).
    pub(super) fn complete_adma(
        &mut self,
        transfer: &AdmaTransfer,
        read_into: Option<&mut [u8]>,
    ) -> Result<(), Emmc2Error> {
        let result = self.wait_adma_transfer(transfer);
        if let Some(bytes) = read_into {
            after_device_writes(bytes);
        }
        match result {
            Ok(()) => {
                if transfer.blocks > 1 {
                    // The controller's Auto CMD12.
                    self.commands += 1;
                }
                Ok(())
            }
            Err(error) => {
                self.note_adma_failure(transfer.command, &error);
                Err(error)
            }
        }
    }

    /// Ends an ADMA2 read nobody waits for any more: the DAT line reset stops
    /// the engine (Linux `sdhci.c` ends failed data transfers, DMA included,
    /// with `SDHCI_RESET_DATA`), the card is brought back to the transfer
    /// state, and `read_into`'s lines are invalidated.
    pub(super) fn abort_adma(&mut self, read_into: &mut [u8]) {
        self.recover();
        after_device_writes(read_into);
    }

    /// Transfer Complete for an ADMA2 command. The bound is per block, as for
    /// PIO ([`READ_TIMEOUT`], the write timeouts): it starts again whenever the
    /// transfer shows progress — Block Count counts down after each block
    /// (§2.2.3) and the ADMA System Address moves on with each descriptor
    /// (register 058h) — so a long transfer is not cut short and a stuck one ends
    /// within one block's bound.
    fn wait_adma_transfer(&mut self, transfer: &AdmaTransfer) -> Result<(), Emmc2Error> {
        let mut deadline = Deadline::after(transfer.per_block);
        let mut progress = self.adma_progress();
        loop {
            if self
                .poll_interrupt(bit(INTERRUPT::TRANSFER_COMPLETE), transfer.command, true)?
                .is_some()
            {
                return Ok(());
            }
            let now = self.adma_progress();
            if now != progress {
                progress = now;
                deadline = Deadline::after(transfer.per_block);
            } else if deadline.expired() {
                self.reset_lines(true);
                return Err(Emmc2Error::Timeout {
                    awaiting: Emmc2Wait::TransferComplete,
                    command: Some(transfer.command),
                });
            }
            spin_loop();
        }
    }

    /// Block Count and the ADMA System Address: both move while ADMA2 works.
    fn adma_progress(&self) -> (u32, u32) {
        let registers = self.registers();
        (
            registers
                .block_size_count
                .read(BLOCK_SIZE_COUNT::BLOCK_COUNT),
            registers.adma_system_address.get(),
        )
    }

    /// Switches to PIO for good if `error` is an ADMA failure: an ADMA Error
    /// interrupt, or a transfer that never completed. Other errors (CRC, data
    /// timeout, card status) are the card's or the bus's, and ADMA2 stays on.
    fn note_adma_failure(&mut self, command: Command, error: &Emmc2Error) {
        let status = match *error {
            Emmc2Error::CommandFailed { status, .. } if status.error & ErrorStatus::ADMA != 0 => {
                Some(status)
            }
            Emmc2Error::Timeout {
                awaiting: Emmc2Wait::TransferComplete,
                ..
            } => None,
            _ => return,
        };
        if let Some(dma) = self.dma.as_mut().filter(|dma| dma.active) {
            dma.active = false;
            self.adma_fallback = FallbackReport::Pending(AdmaFallback {
                command,
                status,
                adma_status: AdmaErrorStatus(self.last_adma_error),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::string::ToString;

    /// A line's (address, length, attributes) per Figure 1-10.
    fn fields(line: u64) -> (u32, u16, u8) {
        (
            (line >> 32) as u32,
            (line >> 16) as u16,
            (line & 0x3f) as u8,
        )
    }

    #[test]
    fn one_line_for_a_small_transfer() {
        let mut table = AdmaTable::new();
        assert_eq!(table.describe(0xC010_0000, 4096), Some(1));
        // Valid | End | Act = Tran.
        assert_eq!(fields(table.line(0).unwrap()), (0xC010_0000, 4096, 0x23));
        assert_eq!(table.line(1), Some(0));
    }

    #[test]
    fn long_transfers_take_several_lines_that_add_up() {
        let mut table = AdmaTable::new();
        let length = 3 * MAX_DESCRIPTOR_BYTES + 1024;
        assert_eq!(table.describe(0x1000, length), Some(4));
        let mut expected_address = 0x1000u32;
        let mut total = 0usize;
        for index in 0..4 {
            let (address, piece, attributes) = fields(table.line(index).unwrap());
            assert_eq!(address, expected_address);
            assert!(usize::from(piece) <= MAX_DESCRIPTOR_BYTES && piece != 0);
            let end = if index == 3 { 0x02 } else { 0 };
            assert_eq!(attributes, 0x21 | end, "line {index}");
            expected_address += u32::from(piece);
            total += usize::from(piece);
        }
        assert_eq!(total, length);
    }

    #[test]
    fn the_whole_table_and_no_more() {
        let mut table = AdmaTable::new();
        assert_eq!(table.describe(0, MAX_TRANSFER_BYTES), Some(TABLE_ENTRIES));
        assert_eq!(MAX_BLOCKS_PER_TRANSFER, 16256);
        assert_eq!(table.describe(0, MAX_TRANSFER_BYTES + 512), None);
        assert_eq!(table.describe(0, 0), None);
        assert_eq!(table.describe(2, 512), None, "misaligned");
        assert_eq!(table.describe(0xFFFF_FE00, 1024), None, "past 4 GiB");
        assert_eq!(table.describe(0xFFFF_FE00, 512), Some(1));
    }

    #[test]
    fn bcm2711_windows() {
        let b0 = DmaWindow::BCM2711_B0;
        assert_eq!(b0.bus_address(0x20_0000, 512), Some(0xC020_0000));
        assert_eq!(b0.bus_address(0x3FFF_FE00, 512), Some(0xFFFF_FE00));
        assert_eq!(b0.bus_address(0x3FFF_FE00, 1024), None, "crosses 1 GiB");
        assert_eq!(b0.bus_address(0x4000_0000, 512), None, "above 1 GiB");
        let c0 = DmaWindow::BCM2711_C0;
        assert_eq!(c0.bus_address(0x20_0000, 512), Some(0x20_0000));
        assert_eq!(c0.bus_address(0x8000_0000, 512), Some(0x8000_0000));
        assert_eq!(
            c0.bus_address(0xFBFF_FE00, 1024),
            None,
            "into the peripherals"
        );
        assert_eq!(c0.bus_address(0x1_0000_0000, 512), None, "RAM above 4 GiB");
    }

    #[test]
    fn windows_from_the_bcm2711_trees() {
        let cells = |values: &[u32]| -> Vec<u8> {
            values.iter().flat_map(|cell| cell.to_be_bytes()).collect()
        };
        // bcm2711.dtsi: <0x0 0xc0000000  0x0 0x00000000  0x40000000>, cells 2/2/1.
        let b0 = cells(&[0, 0xc000_0000, 0, 0, 0x4000_0000]);
        assert_eq!(
            DmaWindow::from_dma_ranges(&b0, 2, 2, 1),
            Ok(DmaWindow::BCM2711_B0)
        );
        // The firmware's edit on C0: <0x0 0x0  0x0 0x0  0xfc000000>.
        let c0 = cells(&[0, 0, 0, 0, 0xfc00_0000]);
        assert_eq!(
            DmaWindow::from_dma_ranges(&c0, 2, 2, 1),
            Ok(DmaWindow::BCM2711_C0)
        );
        // Two entries: the first counts.
        let two = cells(&[0, 0xc000_0000, 0, 0, 0x4000_0000, 0, 0, 0, 0, 0x1000]);
        assert_eq!(
            DmaWindow::from_dma_ranges(&two, 2, 2, 1),
            Ok(DmaWindow::BCM2711_B0)
        );
        assert_eq!(
            DmaWindow::from_dma_ranges(&[], 2, 2, 1),
            Ok(DmaWindow::new(0, 0, 1 << 32))
        );
        assert_eq!(
            DmaWindow::from_dma_ranges(&b0[..16], 2, 2, 1),
            Err(DmaRangesError::Length { bytes: 16 })
        );
        assert!(matches!(
            DmaWindow::from_dma_ranges(&b0, 3, 2, 1),
            Err(DmaRangesError::CellCount { .. })
        ));
        assert_eq!(
            DmaWindow::from_dma_ranges(&cells(&[0, 0, 0, 0, 0]), 2, 2, 1),
            Err(DmaRangesError::EmptyWindow)
        );
        assert_eq!(
            DmaWindow::BCM2711_B0.to_string(),
            "ARM 0x0..0x40000000 at bus 0xc0000000"
        );
    }

    #[test]
    fn read_buffers_need_whole_cache_lines() {
        assert!(buffer_suits(0x1000, 512, true));
        assert!(!buffer_suits(0x1004, 512, true), "shares a line");
        assert!(buffer_suits(0x1004, 512, false), "a write only needs words");
        assert!(!buffer_suits(0x1002, 512, false));
    }

    #[test]
    fn error_status_names_the_state() {
        assert_eq!(
            AdmaErrorStatus(0x01).to_string(),
            "ADMA error status 0x01: fetching a descriptor (ST_FDS)"
        );
        assert_eq!(
            AdmaErrorStatus(0x07).to_string(),
            "ADMA error status 0x07: transferring data (ST_TFR), length mismatch"
        );
    }
}
