//! The EMMC2 register block: the standard SDHCI register map, seen as 32-bit words.
//!
//! Offsets and bit meanings: SD Host Controller Simplified Specification
//! Version 3.00 (SD Association), §2.2 "SD Host Standard Register" (Table
//! 2-1 "SD Host Controller Register Map"). The BCM2711 ARM Peripherals
//! document does not describe EMMC2; Linux drives it with the generic
//! `drivers/mmc/host/sdhci.c` through `sdhci-iproc.c` (compatible
//! "brcm,bcm2711-emmc2").
//!
//! Every register is declared and accessed as a 32-bit word, so the 8- and
//! 16-bit SDHCI registers appear merged with their neighbours (e.g. Transfer
//! Mode and Command at 0x0C). The iProc/BCM2711 integration only supports
//! 32-bit accesses: the patch adding EMMC2 to Linux says "Except 32 bit only
//! register access no other quirks are known yet", and `sdhci-iproc.c` routes
//! every 8/16-bit access through `sdhci_iproc_readl`/`writel` with shadow
//! registers. A 16-bit write to the Command register would issue the command
//! before Transfer Mode is latched on such a controller; one 32-bit write of
//! both avoids the problem (QEMU's `hw/sd/sdhci.c` also issues the command on
//! a write covering the Command register's upper byte).

use core::marker::PhantomData;

use tock_registers::RegisterLongName;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use crate::mmio::Mmio;

register_bitfields! {
    u32,
    /// 0x04: Block Size Register (bits 15..0) and 16-bit Block Count
    /// Register (bits 31..16); spec §2.2.2, §2.2.3.
    pub BLOCK_SIZE_COUNT [
        /// Transfer Block Size: bytes in a block, 1..=2048.
        TRANSFER_BLOCK_SIZE OFFSET(0) NUMBITS(12) [],
        /// SDMA Buffer Boundary (4 KiB << n); unused by PIO.
        SDMA_BUFFER_BOUNDARY OFFSET(12) NUMBITS(3) [],
        /// Blocks Count For Current Transfer; only valid with Block Count
        /// Enable, 0 stops a multi-block transfer at once.
        BLOCK_COUNT OFFSET(16) NUMBITS(16) []
    ],

    /// 0x0C: Transfer Mode Register (bits 15..0) and Command Register
    /// (bits 31..16); spec §2.2.5, §2.2.6. Writing the Command Register's
    /// upper byte issues the command.
    pub TRANSFER_MODE_COMMAND [
        /// DMA Enable.
        DMA_ENABLE OFFSET(0) NUMBITS(1) [],
        /// Block Count Enable.
        BLOCK_COUNT_ENABLE OFFSET(1) NUMBITS(1) [],
        /// Auto CMD Enable: the controller issues CMD12 after the last
        /// block (or CMD23 before the first).
        AUTO_CMD_ENABLE OFFSET(2) NUMBITS(2) [
            Disabled = 0b00,
            AutoCmd12 = 0b01,
            AutoCmd23 = 0b10
        ],
        /// Data Transfer Direction Select.
        DATA_TRANSFER_DIRECTION OFFSET(4) NUMBITS(1) [
            Write = 0,
            Read = 1
        ],
        /// Multi / Single Block Select.
        MULTI_BLOCK OFFSET(5) NUMBITS(1) [],
        /// Response Type Select.
        RESPONSE_TYPE OFFSET(16) NUMBITS(2) [
            NoResponse = 0b00,
            Length136 = 0b01,
            Length48 = 0b10,
            Length48Busy = 0b11
        ],
        /// Command CRC Check Enable.
        COMMAND_CRC_CHECK OFFSET(19) NUMBITS(1) [],
        /// Command Index Check Enable.
        COMMAND_INDEX_CHECK OFFSET(20) NUMBITS(1) [],
        /// Data Present Select: the command uses the DAT lines.
        DATA_PRESENT OFFSET(21) NUMBITS(1) [],
        /// Command Type.
        COMMAND_TYPE OFFSET(22) NUMBITS(2) [
            Normal = 0b00,
            Suspend = 0b01,
            Resume = 0b10,
            Abort = 0b11
        ],
        /// Command Index.
        COMMAND_INDEX OFFSET(24) NUMBITS(6) []
    ],

    /// 0x24: Present State Register; spec §2.2.9.
    pub PRESENT_STATE [
        /// Command Inhibit (CMD): the CMD line is in use.
        COMMAND_INHIBIT_CMD OFFSET(0) NUMBITS(1) [],
        /// Command Inhibit (DAT): the DAT lines are in use (data transfer
        /// or busy signal).
        COMMAND_INHIBIT_DAT OFFSET(1) NUMBITS(1) [],
        /// DAT Line Active.
        DAT_LINE_ACTIVE OFFSET(2) NUMBITS(1) [],
        /// Re-Tuning Request.
        RETUNING_REQUEST OFFSET(3) NUMBITS(1) [],
        /// Write Transfer Active.
        WRITE_TRANSFER_ACTIVE OFFSET(8) NUMBITS(1) [],
        /// Read Transfer Active.
        READ_TRANSFER_ACTIVE OFFSET(9) NUMBITS(1) [],
        /// Buffer Write Enable.
        BUFFER_WRITE_ENABLE OFFSET(10) NUMBITS(1) [],
        /// Buffer Read Enable.
        BUFFER_READ_ENABLE OFFSET(11) NUMBITS(1) [],
        /// Card Inserted.
        CARD_INSERTED OFFSET(16) NUMBITS(1) [],
        /// Card State Stable.
        CARD_STATE_STABLE OFFSET(17) NUMBITS(1) [],
        /// Card Detect Pin Level.
        CARD_DETECT_PIN_LEVEL OFFSET(18) NUMBITS(1) [],
        /// Write Protect Switch Pin Level.
        WRITE_PROTECT_PIN_LEVEL OFFSET(19) NUMBITS(1) [],
        /// DAT[3:0] Line Signal Level (DAT0 low = card busy).
        DAT_LINE_LEVEL OFFSET(20) NUMBITS(4) [],
        /// CMD Line Signal Level.
        CMD_LINE_LEVEL OFFSET(24) NUMBITS(1) []
    ],

    /// 0x28: Host Control 1 (bits 7..0), Power Control (15..8), Block Gap
    /// Control (23..16) and Wakeup Control (31..24); spec §2.2.10-§2.2.13.
    pub HOST_CONTROL_1 [
        /// LED Control.
        LED OFFSET(0) NUMBITS(1) [],
        /// Data Transfer Width: 1-bit or 4-bit mode.
        DATA_TRANSFER_WIDTH_4 OFFSET(1) NUMBITS(1) [],
        /// High Speed Enable: output on the rising SDCLK edge.
        HIGH_SPEED_ENABLE OFFSET(2) NUMBITS(1) [],
        /// DMA Select (§2.2.10): 10b selects 32-bit ADMA2, 11b 64-bit ADMA2;
        /// 01b is reserved since v2.00. Only used while Transfer Mode's DMA
        /// Enable is set.
        DMA_SELECT OFFSET(3) NUMBITS(2) [
            Sdma = 0b00,
            Adma2Address32 = 0b10,
            Adma2Address64 = 0b11
        ],
        /// Extended Data Transfer Width: 8-bit (embedded devices).
        EXTENDED_DATA_WIDTH_8 OFFSET(5) NUMBITS(1) [],
        /// Card Detect Test Level.
        CARD_DETECT_TEST_LEVEL OFFSET(6) NUMBITS(1) [],
        /// Card Detect Signal Selection.
        CARD_DETECT_SIGNAL_SELECTION OFFSET(7) NUMBITS(1) [],
        /// SD Bus Power.
        SD_BUS_POWER OFFSET(8) NUMBITS(1) [],
        /// SD Bus Voltage Select.
        SD_BUS_VOLTAGE OFFSET(9) NUMBITS(3) [
            V1_8 = 0b101,
            V3_0 = 0b110,
            V3_3 = 0b111
        ],
        /// Stop At Block Gap Request.
        STOP_AT_BLOCK_GAP OFFSET(16) NUMBITS(1) [],
        /// Continue Request.
        CONTINUE_REQUEST OFFSET(17) NUMBITS(1) []
    ],

    /// 0x2C: Clock Control (bits 15..0), Timeout Control (19..16) and
    /// Software Reset (26..24); spec §2.2.14-§2.2.16.
    pub CLOCK_CONTROL [
        /// Internal Clock Enable.
        INTERNAL_CLOCK_ENABLE OFFSET(0) NUMBITS(1) [],
        /// Internal Clock Stable.
        INTERNAL_CLOCK_STABLE OFFSET(1) NUMBITS(1) [],
        /// SD Clock Enable.
        SD_CLOCK_ENABLE OFFSET(2) NUMBITS(1) [],
        /// Clock Generator Select (programmable clock mode).
        CLOCK_GENERATOR_SELECT OFFSET(5) NUMBITS(1) [],
        /// Upper Bits of SDCLK Frequency Select (10-bit divided clock mode).
        SDCLK_FREQUENCY_SELECT_UPPER OFFSET(6) NUMBITS(2) [],
        /// SDCLK Frequency Select (lower 8 bits of the divider).
        SDCLK_FREQUENCY_SELECT OFFSET(8) NUMBITS(8) [],
        /// Data Timeout Counter Value: TMCLK x 2^(13 + n), n = 0..=14.
        DATA_TIMEOUT_COUNTER OFFSET(16) NUMBITS(4) [],
        /// Software Reset For All.
        SOFTWARE_RESET_ALL OFFSET(24) NUMBITS(1) [],
        /// Software Reset For CMD Line.
        SOFTWARE_RESET_CMD OFFSET(25) NUMBITS(1) [],
        /// Software Reset For DAT Line.
        SOFTWARE_RESET_DAT OFFSET(26) NUMBITS(1) []
    ],

    /// 0x30 / 0x34 / 0x38: Normal Interrupt (bits 15..0) and Error
    /// Interrupt (bits 31..16) Status, Status Enable and Signal Enable;
    /// spec §2.2.17-§2.2.22. Status bits are write-1-to-clear.
    pub INTERRUPT [
        /// Command Complete.
        COMMAND_COMPLETE OFFSET(0) NUMBITS(1) [],
        /// Transfer Complete (also the end of busy after an R1b command).
        TRANSFER_COMPLETE OFFSET(1) NUMBITS(1) [],
        /// Block Gap Event.
        BLOCK_GAP_EVENT OFFSET(2) NUMBITS(1) [],
        /// DMA Interrupt.
        DMA_INTERRUPT OFFSET(3) NUMBITS(1) [],
        /// Buffer Write Ready.
        BUFFER_WRITE_READY OFFSET(4) NUMBITS(1) [],
        /// Buffer Read Ready.
        BUFFER_READ_READY OFFSET(5) NUMBITS(1) [],
        /// Card Insertion.
        CARD_INSERTION OFFSET(6) NUMBITS(1) [],
        /// Card Removal.
        CARD_REMOVAL OFFSET(7) NUMBITS(1) [],
        /// Card Interrupt.
        CARD_INTERRUPT OFFSET(8) NUMBITS(1) [],
        /// Error Interrupt: some bit of the Error Interrupt Status is set
        /// (read-only; not in the enable registers).
        ERROR_INTERRUPT OFFSET(15) NUMBITS(1) [],
        /// Command Timeout Error: no response within 64 SDCLK cycles.
        COMMAND_TIMEOUT_ERROR OFFSET(16) NUMBITS(1) [],
        /// Command CRC Error.
        COMMAND_CRC_ERROR OFFSET(17) NUMBITS(1) [],
        /// Command End Bit Error.
        COMMAND_END_BIT_ERROR OFFSET(18) NUMBITS(1) [],
        /// Command Index Error.
        COMMAND_INDEX_ERROR OFFSET(19) NUMBITS(1) [],
        /// Data Timeout Error.
        DATA_TIMEOUT_ERROR OFFSET(20) NUMBITS(1) [],
        /// Data CRC Error.
        DATA_CRC_ERROR OFFSET(21) NUMBITS(1) [],
        /// Data End Bit Error.
        DATA_END_BIT_ERROR OFFSET(22) NUMBITS(1) [],
        /// Current Limit Error.
        CURRENT_LIMIT_ERROR OFFSET(23) NUMBITS(1) [],
        /// Auto CMD Error (details in the Auto CMD Error Status).
        AUTO_CMD_ERROR OFFSET(24) NUMBITS(1) [],
        /// ADMA Error.
        ADMA_ERROR OFFSET(25) NUMBITS(1) [],
        /// Tuning Error.
        TUNING_ERROR OFFSET(26) NUMBITS(1) [],
        /// Vendor Specific Error Status.
        VENDOR_ERROR OFFSET(28) NUMBITS(4) []
    ],

    /// 0x3C: Auto CMD Error Status (bits 15..0) and Host Control 2
    /// (bits 31..16); spec §2.2.23, §2.2.24.
    pub AUTO_CMD_ERROR_HOST_CONTROL_2 [
        /// Auto CMD12 Not Executed.
        AUTO_CMD12_NOT_EXECUTED OFFSET(0) NUMBITS(1) [],
        /// Auto CMD Timeout Error.
        AUTO_CMD_TIMEOUT_ERROR OFFSET(1) NUMBITS(1) [],
        /// Auto CMD CRC Error.
        AUTO_CMD_CRC_ERROR OFFSET(2) NUMBITS(1) [],
        /// Auto CMD End Bit Error.
        AUTO_CMD_END_BIT_ERROR OFFSET(3) NUMBITS(1) [],
        /// Auto CMD Index Error.
        AUTO_CMD_INDEX_ERROR OFFSET(4) NUMBITS(1) [],
        /// Command Not Issued By Auto CMD12 Error.
        COMMAND_NOT_ISSUED_BY_AUTO_CMD12 OFFSET(7) NUMBITS(1) [],
        /// UHS Mode Select.
        UHS_MODE_SELECT OFFSET(16) NUMBITS(3) [],
        /// 1.8V Signaling Enable.
        SIGNALING_1_8V_ENABLE OFFSET(19) NUMBITS(1) [],
        /// Driver Strength Select.
        DRIVER_STRENGTH_SELECT OFFSET(20) NUMBITS(2) [],
        /// Execute Tuning.
        EXECUTE_TUNING OFFSET(22) NUMBITS(1) [],
        /// Sampling Clock Select.
        SAMPLING_CLOCK_SELECT OFFSET(23) NUMBITS(1) [],
        /// Asynchronous Interrupt Enable.
        ASYNCHRONOUS_INTERRUPT_ENABLE OFFSET(30) NUMBITS(1) [],
        /// Preset Value Enable.
        PRESET_VALUE_ENABLE OFFSET(31) NUMBITS(1) []
    ],

    /// 0x40: Capabilities Register, bits 31..0; spec §2.2.26.
    pub CAPABILITIES_0 [
        /// Timeout Clock Frequency.
        TIMEOUT_CLOCK_FREQUENCY OFFSET(0) NUMBITS(6) [],
        /// Timeout Clock Unit: 0 kHz, 1 MHz.
        TIMEOUT_CLOCK_UNIT OFFSET(7) NUMBITS(1) [],
        /// Base Clock Frequency For SD Clock, in MHz (8 bits in v3.00, 6 in
        /// v2.00); 0 means "get the information via another method".
        BASE_CLOCK_FREQUENCY OFFSET(8) NUMBITS(8) [],
        /// Max Block Length: 512 << n bytes.
        MAX_BLOCK_LENGTH OFFSET(16) NUMBITS(2) [],
        /// 8-bit Support for Embedded Device.
        EIGHT_BIT_SUPPORT OFFSET(18) NUMBITS(1) [],
        /// ADMA2 Support.
        ADMA2_SUPPORT OFFSET(19) NUMBITS(1) [],
        /// High Speed Support.
        HIGH_SPEED_SUPPORT OFFSET(21) NUMBITS(1) [],
        /// SDMA Support.
        SDMA_SUPPORT OFFSET(22) NUMBITS(1) [],
        /// Suspend/Resume Support.
        SUSPEND_RESUME_SUPPORT OFFSET(23) NUMBITS(1) [],
        /// Voltage Support 3.3V.
        VOLTAGE_SUPPORT_3_3V OFFSET(24) NUMBITS(1) [],
        /// Voltage Support 3.0V.
        VOLTAGE_SUPPORT_3_0V OFFSET(25) NUMBITS(1) [],
        /// Voltage Support 1.8V.
        VOLTAGE_SUPPORT_1_8V OFFSET(26) NUMBITS(1) [],
        /// 64-bit System Bus Support.
        SYSTEM_BUS_64_BIT OFFSET(28) NUMBITS(1) [],
        /// Asynchronous Interrupt Support.
        ASYNCHRONOUS_INTERRUPT OFFSET(29) NUMBITS(1) [],
        /// Slot Type.
        SLOT_TYPE OFFSET(30) NUMBITS(2) []
    ],

    /// 0x54: ADMA Error Status (bits 7..0; the rest reserved).
    /// Valid after an ADMA Error interrupt, until the next transfer.
    pub ADMA_ERROR_STATUS [
        /// ADMA Error State: where the ADMA engine stopped.
        ERROR_STATE OFFSET(0) NUMBITS(2) [
            /// ST_STOP: stopped (the error is in the descriptor before the
            /// one the ADMA System Address points at).
            Stop = 0b00,
            /// ST_FDS: fetching a descriptor.
            FetchDescriptor = 0b01,
            /// ST_TFR: transferring data.
            TransferData = 0b11
        ],
        /// ADMA Length Mismatch Error: the descriptors' total length and
        /// the block count disagree.
        LENGTH_MISMATCH OFFSET(2) NUMBITS(1) []
    ],

    /// 0xFC: Slot Interrupt Status (bits 15..0) and Host Controller
    /// Version (bits 31..16); spec §2.2.34, §2.2.35.
    pub SLOT_STATUS_VERSION [
        /// Interrupt Signal For Each Slot.
        SLOT_INTERRUPT OFFSET(0) NUMBITS(8) [],
        /// Specification Version Number.
        SPECIFICATION_VERSION OFFSET(16) NUMBITS(8) [
            V1_00 = 0x00,
            V2_00 = 0x01,
            V3_00 = 0x02
        ],
        /// Vendor Version Number.
        VENDOR_VERSION OFFSET(24) NUMBITS(8) []
    ]
}

register_structs! {
    /// The SDHCI registers of EMMC2 (bus `0x7E34_0000`), as 32-bit words.
    pub RegisterBlock {
        /// SDMA System Address / Argument 2 (Auto CMD23 argument).
        (0x00 => pub sdma_address_argument_2: ReadWrite<u32>),
        /// Block Size and Block Count.
        (0x04 => pub block_size_count: ReadWrite<u32, BLOCK_SIZE_COUNT::Register>),
        /// Argument 1: the command argument, bits 39..8 of the command.
        (0x08 => pub argument: ReadWrite<u32>),
        /// Transfer Mode and Command.
        (0x0c => pub transfer_mode_command: ReadWrite<u32, TRANSFER_MODE_COMMAND::Register>),
        /// Response registers 0..3: R[39:8] of a 48-bit response in word 0,
        /// R[127:8] of a 136-bit one across all four; the Auto CMD12
        /// response lands in word 3.
        (0x10 => pub response: [ReadOnly<u32>; 4]),
        /// Buffer Data Port: PIO access to the controller's data buffer,
        /// little-endian, first byte in bits 7..0.
        (0x20 => pub buffer_data_port: ReadWrite<u32>),
        /// Present State.
        (0x24 => pub present_state: ReadOnly<u32, PRESENT_STATE::Register>),
        /// Host Control 1, Power Control, Block Gap Control, Wakeup Control.
        (0x28 => pub host_control_1: ReadWrite<u32, HOST_CONTROL_1::Register>),
        /// Clock Control, Timeout Control, Software Reset.
        (0x2c => pub clock_control: ReadWrite<u32, CLOCK_CONTROL::Register>),
        /// Normal and Error Interrupt Status (write 1 to clear).
        (0x30 => pub interrupt_status: ReadWrite<u32, INTERRUPT::Register>),
        /// Normal and Error Interrupt Status Enable: a status bit is only
        /// ever set while enabled here.
        (0x34 => pub interrupt_status_enable: ReadWrite<u32, INTERRUPT::Register>),
        /// Normal and Error Interrupt Signal Enable (zboot polls: all 0).
        (0x38 => pub interrupt_signal_enable: ReadWrite<u32, INTERRUPT::Register>),
        /// Auto CMD Error Status and Host Control 2.
        (0x3c => pub auto_cmd_error_host_control_2:
            ReadWrite<u32, AUTO_CMD_ERROR_HOST_CONTROL_2::Register>),
        /// Capabilities, bits 31..0.
        (0x40 => pub capabilities_0: ReadOnly<u32, CAPABILITIES_0::Register>),
        /// Capabilities, bits 63..32 (UHS modes, tuning, clock multiplier).
        (0x44 => pub capabilities_1: ReadOnly<u32>),
        /// Maximum Current Capabilities.
        (0x48 => pub maximum_current: ReadOnly<u32>),
        (0x4c => _reserved0),
        /// Force Event For Auto CMD Error Status / For Error Interrupt Status.
        (0x50 => pub force_event: ReadWrite<u32>),
        /// ADMA Error Status.
        (0x54 => pub adma_error_status: ReadWrite<u32, ADMA_ERROR_STATUS::Register>),
        /// ADMA System Address, bits 31..0 and 63..32.
        (0x58 => pub adma_system_address: [ReadWrite<u32>; 2]),
        /// Preset Value registers (initialization, default speed, high
        /// speed, SDR12, SDR25, SDR50, SDR104, DDR50; 16 bits each).
        (0x60 => pub preset_value: [ReadOnly<u32>; 4]),
        // 0x70..0xE0 is reserved in the standard map; the legacy BCM2835
        // Arasan block keeps vendor registers there, EMMC2's are not
        // documented and zboot does not touch them.
        (0x70 => _reserved1),
        /// Shared Bus Control (v3.00).
        (0xe0 => pub shared_bus_control: ReadWrite<u32>),
        (0xe4 => _reserved2),
        /// Slot Interrupt Status and Host Controller Version.
        (0xfc => pub slot_status_version: ReadOnly<u32, SLOT_STATUS_VERSION::Register>),
        (0x100 => @END),
    }
}

/// Where the driver's register accesses go: the EMMC2 block itself ([`Mmio`]), or in
/// host tests a simulated controller that reacts to each access as the hardware would
/// (a command issued on the Command write, the data port popping a word per read).
/// Offsets are those of [`RegisterBlock`]; every access is a whole 32-bit word.
pub trait Bus {
    /// Reads the 32-bit register at `offset`.
    fn read(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write(&self, offset: usize, value: u32);
}

/// Register offsets of [`RegisterBlock`] the driver uses.
pub mod offset {
    pub const BLOCK_SIZE_COUNT: usize = 0x04;
    pub const ARGUMENT: usize = 0x08;
    pub const TRANSFER_MODE_COMMAND: usize = 0x0c;
    pub const RESPONSE: usize = 0x10;
    pub const BUFFER_DATA_PORT: usize = 0x20;
    pub const PRESENT_STATE: usize = 0x24;
    pub const HOST_CONTROL_1: usize = 0x28;
    pub const CLOCK_CONTROL: usize = 0x2c;
    pub const INTERRUPT_STATUS: usize = 0x30;
    pub const INTERRUPT_STATUS_ENABLE: usize = 0x34;
    pub const INTERRUPT_SIGNAL_ENABLE: usize = 0x38;
    pub const AUTO_CMD_ERROR_HOST_CONTROL_2: usize = 0x3c;
    pub const CAPABILITIES_0: usize = 0x40;
    pub const ADMA_ERROR_STATUS: usize = 0x54;
    pub const ADMA_SYSTEM_ADDRESS: usize = 0x58;
    pub const ADMA_SYSTEM_ADDRESS_HIGH: usize = 0x5c;
    pub const SLOT_STATUS_VERSION: usize = 0xfc;
}

impl Bus for Mmio<RegisterBlock> {
    #[inline]
    fn read(&self, offset: usize) -> u32 {
        match offset {
            offset::BLOCK_SIZE_COUNT => self.block_size_count.get(),
            offset::ARGUMENT => self.argument.get(),
            offset::TRANSFER_MODE_COMMAND => self.transfer_mode_command.get(),
            0x10 => self.response[0].get(),
            0x14 => self.response[1].get(),
            0x18 => self.response[2].get(),
            0x1c => self.response[3].get(),
            offset::BUFFER_DATA_PORT => self.buffer_data_port.get(),
            offset::PRESENT_STATE => self.present_state.get(),
            offset::HOST_CONTROL_1 => self.host_control_1.get(),
            offset::CLOCK_CONTROL => self.clock_control.get(),
            offset::INTERRUPT_STATUS => self.interrupt_status.get(),
            offset::INTERRUPT_STATUS_ENABLE => self.interrupt_status_enable.get(),
            offset::INTERRUPT_SIGNAL_ENABLE => self.interrupt_signal_enable.get(),
            offset::AUTO_CMD_ERROR_HOST_CONTROL_2 => self.auto_cmd_error_host_control_2.get(),
            offset::CAPABILITIES_0 => self.capabilities_0.get(),
            offset::ADMA_ERROR_STATUS => self.adma_error_status.get(),
            offset::ADMA_SYSTEM_ADDRESS => self.adma_system_address[0].get(),
            offset::ADMA_SYSTEM_ADDRESS_HIGH => self.adma_system_address[1].get(),
            offset::SLOT_STATUS_VERSION => self.slot_status_version.get(),
            _ => 0,
        }
    }

    #[inline]
    fn write(&self, offset: usize, value: u32) {
        match offset {
            offset::BLOCK_SIZE_COUNT => self.block_size_count.set(value),
            offset::ARGUMENT => self.argument.set(value),
            offset::TRANSFER_MODE_COMMAND => self.transfer_mode_command.set(value),
            offset::BUFFER_DATA_PORT => self.buffer_data_port.set(value),
            offset::HOST_CONTROL_1 => self.host_control_1.set(value),
            offset::CLOCK_CONTROL => self.clock_control.set(value),
            offset::INTERRUPT_STATUS => self.interrupt_status.set(value),
            offset::INTERRUPT_STATUS_ENABLE => self.interrupt_status_enable.set(value),
            offset::INTERRUPT_SIGNAL_ENABLE => self.interrupt_signal_enable.set(value),
            offset::AUTO_CMD_ERROR_HOST_CONTROL_2 => self.auto_cmd_error_host_control_2.set(value),
            offset::ADMA_SYSTEM_ADDRESS => self.adma_system_address[0].set(value),
            offset::ADMA_SYSTEM_ADDRESS_HIGH => self.adma_system_address[1].set(value),
            _ => {}
        }
    }
}

/// One register of a [`Bus`], with tock-registers' field interface.
pub struct Reg<'a, B, R: RegisterLongName = ()> {
    bus: &'a B,
    offset: usize,
    _register: PhantomData<R>,
}

impl<'a, B: Bus, R: RegisterLongName> Reg<'a, B, R> {
    const fn at(bus: &'a B, offset: usize) -> Self {
        Self {
            bus,
            offset,
            _register: PhantomData,
        }
    }
}

impl<B: Bus, R: RegisterLongName> Readable for Reg<'_, B, R> {
    type T = u32;
    type R = R;

    #[inline]
    fn get(&self) -> u32 {
        self.bus.read(self.offset)
    }
}

impl<B: Bus, R: RegisterLongName> Writeable for Reg<'_, B, R> {
    type T = u32;
    type R = R;

    #[inline]
    fn set(&self, value: u32) {
        self.bus.write(self.offset, value);
    }
}

/// The registers the driver uses, named as in [`RegisterBlock`], on a [`Bus`].
pub struct Registers<'a, B> {
    pub block_size_count: Reg<'a, B, BLOCK_SIZE_COUNT::Register>,
    pub argument: Reg<'a, B>,
    pub transfer_mode_command: Reg<'a, B, TRANSFER_MODE_COMMAND::Register>,
    pub response: [Reg<'a, B>; 4],
    pub buffer_data_port: Reg<'a, B>,
    pub present_state: Reg<'a, B, PRESENT_STATE::Register>,
    pub host_control_1: Reg<'a, B, HOST_CONTROL_1::Register>,
    pub clock_control: Reg<'a, B, CLOCK_CONTROL::Register>,
    pub interrupt_status: Reg<'a, B, INTERRUPT::Register>,
    pub interrupt_status_enable: Reg<'a, B, INTERRUPT::Register>,
    pub interrupt_signal_enable: Reg<'a, B, INTERRUPT::Register>,
    pub auto_cmd_error_host_control_2: Reg<'a, B, AUTO_CMD_ERROR_HOST_CONTROL_2::Register>,
    pub capabilities_0: Reg<'a, B, CAPABILITIES_0::Register>,
    pub adma_error_status: Reg<'a, B, ADMA_ERROR_STATUS::Register>,
    pub adma_system_address: Reg<'a, B>,
    pub adma_system_address_high: Reg<'a, B>,
    pub slot_status_version: Reg<'a, B, SLOT_STATUS_VERSION::Register>,
}

impl<'a, B: Bus> Registers<'a, B> {
    /// The driver's registers on `bus`.
    #[inline]
    pub const fn on(bus: &'a B) -> Self {
        Self {
            block_size_count: Reg::at(bus, offset::BLOCK_SIZE_COUNT),
            argument: Reg::at(bus, offset::ARGUMENT),
            transfer_mode_command: Reg::at(bus, offset::TRANSFER_MODE_COMMAND),
            response: [
                Reg::at(bus, offset::RESPONSE),
                Reg::at(bus, offset::RESPONSE + 4),
                Reg::at(bus, offset::RESPONSE + 8),
                Reg::at(bus, offset::RESPONSE + 12),
            ],
            buffer_data_port: Reg::at(bus, offset::BUFFER_DATA_PORT),
            present_state: Reg::at(bus, offset::PRESENT_STATE),
            host_control_1: Reg::at(bus, offset::HOST_CONTROL_1),
            clock_control: Reg::at(bus, offset::CLOCK_CONTROL),
            interrupt_status: Reg::at(bus, offset::INTERRUPT_STATUS),
            interrupt_status_enable: Reg::at(bus, offset::INTERRUPT_STATUS_ENABLE),
            interrupt_signal_enable: Reg::at(bus, offset::INTERRUPT_SIGNAL_ENABLE),
            auto_cmd_error_host_control_2: Reg::at(bus, offset::AUTO_CMD_ERROR_HOST_CONTROL_2),
            capabilities_0: Reg::at(bus, offset::CAPABILITIES_0),
            adma_error_status: Reg::at(bus, offset::ADMA_ERROR_STATUS),
            adma_system_address: Reg::at(bus, offset::ADMA_SYSTEM_ADDRESS),
            adma_system_address_high: Reg::at(bus, offset::ADMA_SYSTEM_ADDRESS_HIGH),
            slot_status_version: Reg::at(bus, offset::SLOT_STATUS_VERSION),
        }
    }
}

impl<B, R: RegisterLongName> core::fmt::Debug for Reg<'_, B, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Reg({:#04x})", self.offset)
    }
}

impl<B> core::fmt::Debug for Registers<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Registers")
    }
}
