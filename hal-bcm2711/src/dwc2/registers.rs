//! The DWC2 (Synopsys DesignWare Hi-Speed USB 2.0 OTG) register blocks used in host mode.
//!
//! Offsets and bit meanings as Linux `drivers/usb/dwc2/hw.h` gives them
//! (the Synopsys databook is not public) and as QEMU `hw/usb/hcd-dwc2.c`
//! with `include/hw/usb/dwc2-regs.h` emulates them. The BCM2711 ARM
//! Peripherals document lists the block ("USB OTG" at bus `0x7E98_0000`)
//! but not its registers. Only the registers zboot's host driver touches
//! have fields; device-mode registers (`0x800..`) are not declared.
//!
//! The controller exposes three groups at fixed offsets from its base:
//! core global registers (`0x000..0x100`), the host periodic TX FIFO size
//! (`0x100`), host registers (`0x400..0x444`), one 0x20-byte block per host
//! channel (`0x500 + 0x20 * n`, up to 16 channels), and the power and clock
//! gating register (`0xE00`).

use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

/// Host channels the register map has room for (`HCCHAR(n)` for n < 16,
/// hw.h `MAX_EPS_CHANNELS`); GHWCFG2 says how many exist.
pub const CHANNEL_SLOTS: usize = 16;

register_bitfields! {
    u32,
    /// 0x008 GAHBCFG: Core AHB Configuration.
    pub GAHBCFG [
        /// GlblIntrMsk: global interrupt enable (zboot polls; left 0).
        GLOBAL_INTERRUPT_ENABLE OFFSET(0) NUMBITS(1) [],
        /// HBstLen: AHB burst type.
        BURST_LENGTH OFFSET(1) NUMBITS(4) [],
        /// DMAEn: the core is a DMA bus master (buffer DMA mode).
        DMA_ENABLE OFFSET(5) NUMBITS(1) []
    ],

    /// 0x00C GUSBCFG: Core USB Configuration.
    pub GUSBCFG [
        /// PHYIf: 16-bit UTMI+ interface.
        PHY_INTERFACE_16BIT OFFSET(3) NUMBITS(1) [],
        /// ULPI_UTMI_Sel: ULPI instead of UTMI+.
        ULPI_UTMI_SELECT OFFSET(4) NUMBITS(1) [],
        /// PHYSel: the full-speed serial transceiver instead of the HS PHY.
        PHY_SELECT OFFSET(6) NUMBITS(1) [],
        /// SRPCap: SRP capable.
        SRP_CAPABLE OFFSET(8) NUMBITS(1) [],
        /// HNPCap: HNP capable.
        HNP_CAPABLE OFFSET(9) NUMBITS(1) [],
        /// ULPIExtVbusDrv: drive VBUS through an external supply (ULPI only).
        ULPI_EXT_VBUS_DRIVE OFFSET(20) NUMBITS(1) [],
        /// TermSelDLPulse: data-line pulsing with TermSel instead of TxValid.
        TERM_SEL_DL_PULSE OFFSET(22) NUMBITS(1) [],
        /// ForceHstMode: force host mode whatever the ID pin says.
        FORCE_HOST_MODE OFFSET(29) NUMBITS(1) [],
        /// ForceDevMode: force device mode.
        FORCE_DEVICE_MODE OFFSET(30) NUMBITS(1) []
    ],

    /// 0x010 GRSTCTL: Core Reset.
    pub GRSTCTL [
        /// CSftRst: core soft reset (self-clearing before core 4.20a).
        CORE_SOFT_RESET OFFSET(0) NUMBITS(1) [],
        /// RxFFlsh: flush the RX FIFO (self-clearing).
        RX_FIFO_FLUSH OFFSET(4) NUMBITS(1) [],
        /// TxFFlsh: flush the TX FIFO(s) selected by TxFNum (self-clearing).
        TX_FIFO_FLUSH OFFSET(5) NUMBITS(1) [],
        /// TxFNum: which TX FIFO to flush; 0x10 = all.
        TX_FIFO_NUMBER OFFSET(6) NUMBITS(5) [],
        /// CSftRstDone: soft reset done (core 4.20a and later).
        CORE_SOFT_RESET_DONE OFFSET(29) NUMBITS(1) [],
        /// DMAReq: a DMA request is in progress.
        DMA_REQUEST OFFSET(30) NUMBITS(1) [],
        /// AHBIdle: the AHB master state machine is idle.
        AHB_IDLE OFFSET(31) NUMBITS(1) []
    ],

    /// 0x014 GINTSTS: Core Interrupt (only polled bits named).
    pub GINTSTS [
        /// CurMod: 1 = host mode.
        CURRENT_MODE_HOST OFFSET(0) NUMBITS(1) [],
        /// PrtInt: a host port status change (see HPRT).
        PORT_INTERRUPT OFFSET(24) NUMBITS(1) [],
        /// HChInt: a host channel interrupt (see HAINT).
        HOST_CHANNEL_INTERRUPT OFFSET(25) NUMBITS(1) []
    ],

    /// 0x024 GRXFSIZ, 0x028 GNPTXFSIZ, 0x100 HPTXFSIZ: FIFO start and depth
    /// in 32-bit words (GRXFSIZ has only the depth, in the low half).
    pub FIFO_SIZE [
        /// Start address (words) of the FIFO in the shared RAM.
        START OFFSET(0) NUMBITS(16) [],
        /// Depth in words.
        DEPTH OFFSET(16) NUMBITS(16) []
    ],

    /// 0x048 GHWCFG2: User Hardware Configuration 2 (read only).
    pub GHWCFG2 [
        /// OtgArch: 0 slave only, 1 external DMA, 2 internal DMA.
        ARCHITECTURE OFFSET(3) NUMBITS(2) [
            SlaveOnly = 0,
            ExternalDma = 1,
            InternalDma = 2
        ],
        /// NumHstChnl: host channels minus one.
        HOST_CHANNELS_MINUS_ONE OFFSET(14) NUMBITS(4) []
    ],

    /// 0x04C GHWCFG3: User Hardware Configuration 3 (read only).
    pub GHWCFG3 [
        /// XferSizeCntrWidth: transfer size counter width minus 11.
        TRANSFER_SIZE_WIDTH OFFSET(0) NUMBITS(4) [],
        /// PktSizeCntrWidth: packet counter width minus 4.
        PACKET_COUNT_WIDTH OFFSET(4) NUMBITS(3) [],
        /// DfifoDepth: total data FIFO RAM in 32-bit words.
        FIFO_DEPTH OFFSET(16) NUMBITS(16) []
    ],

    /// 0x400 HCFG: Host Configuration.
    pub HCFG [
        /// FSLSPclkSel: FS/LS PHY clock; 0 = 30/60 MHz (UTMI+ HS PHY).
        FS_LS_PHY_CLOCK OFFSET(0) NUMBITS(2) [
            Clock30Or60MHz = 0,
            Clock48MHz = 1,
            Clock6MHz = 2
        ],
        /// FSLSSupp: restrict the port to full/low speed.
        FS_LS_ONLY OFFSET(2) NUMBITS(1) []
    ],

    /// 0x408 HFNUM: Host Frame Number / Frame Time Remaining.
    pub HFNUM [
        /// FrNum: (micro)frame number.
        FRAME_NUMBER OFFSET(0) NUMBITS(16) [],
        /// FrRem: frame time remaining.
        FRAME_REMAINING OFFSET(16) NUMBITS(16) []
    ],

    /// 0x440 HPRT: Host Port Control and Status. Four bits are
    /// write-1-to-clear (PrtConnDet, PrtEna, PrtEnChng, PrtOvrCurrChng):
    /// a read-modify-write must write them as 0 (hw.h, and Linux
    /// `dwc2_read_hprt0` masks them for that reason).
    pub HPRT [
        /// PrtConnSts: a device is attached.
        CONNECT_STATUS OFFSET(0) NUMBITS(1) [],
        /// PrtConnDet: connect detected (W1C).
        CONNECT_DETECTED OFFSET(1) NUMBITS(1) [],
        /// PrtEna: port enabled (set by the core after reset; W1C = disable).
        ENABLE OFFSET(2) NUMBITS(1) [],
        /// PrtEnChng: enable changed (W1C).
        ENABLE_CHANGED OFFSET(3) NUMBITS(1) [],
        /// PrtOvrCurrAct: overcurrent.
        OVERCURRENT_ACTIVE OFFSET(4) NUMBITS(1) [],
        /// PrtOvrCurrChng: overcurrent changed (W1C).
        OVERCURRENT_CHANGED OFFSET(5) NUMBITS(1) [],
        /// PrtRes: resume.
        RESUME OFFSET(6) NUMBITS(1) [],
        /// PrtSusp: suspend.
        SUSPEND OFFSET(7) NUMBITS(1) [],
        /// PrtRst: drive reset signalling while set.
        RESET OFFSET(8) NUMBITS(1) [],
        /// PrtLnSts: D+/D- line state.
        LINE_STATUS OFFSET(10) NUMBITS(2) [],
        /// PrtPwr: port power (VBUS).
        POWER OFFSET(12) NUMBITS(1) [],
        /// PrtTstCtl: test control.
        TEST_CONTROL OFFSET(13) NUMBITS(4) [],
        /// PrtSpd: speed of the attached device.
        SPEED OFFSET(17) NUMBITS(2) [
            High = 0,
            Full = 1,
            Low = 2
        ]
    ],

    /// 0x500 + 0x20n HCCHAR: Host Channel Characteristics.
    pub HCCHAR [
        /// MPS: maximum packet size.
        MAX_PACKET_SIZE OFFSET(0) NUMBITS(11) [],
        /// EPNum: endpoint number.
        ENDPOINT_NUMBER OFFSET(11) NUMBITS(4) [],
        /// EPDir: 1 = IN.
        ENDPOINT_DIRECTION_IN OFFSET(15) NUMBITS(1) [],
        /// LSpdDev: the device is low speed (behind a FS root port).
        LOW_SPEED_DEVICE OFFSET(17) NUMBITS(1) [],
        /// EPType.
        ENDPOINT_TYPE OFFSET(18) NUMBITS(2) [
            Control = 0,
            Isochronous = 1,
            Bulk = 2,
            Interrupt = 3
        ],
        /// EC/MC: multi count (transactions per microframe, periodic).
        MULTI_COUNT OFFSET(20) NUMBITS(2) [],
        /// DevAddr: device address.
        DEVICE_ADDRESS OFFSET(22) NUMBITS(7) [],
        /// OddFrm: periodic transfers in odd frames.
        ODD_FRAME OFFSET(29) NUMBITS(1) [],
        /// ChDis: disable (halt) the channel.
        CHANNEL_DISABLE OFFSET(30) NUMBITS(1) [],
        /// ChEna: enable the channel (starts the transfer).
        CHANNEL_ENABLE OFFSET(31) NUMBITS(1) []
    ],

    /// 0x504 + 0x20n HCSPLT: Host Channel Split Control.
    pub HCSPLT [
        /// PrtAddr: hub port of the transaction translator.
        PORT_ADDRESS OFFSET(0) NUMBITS(7) [],
        /// HubAddr: address of the high-speed hub with the TT.
        HUB_ADDRESS OFFSET(7) NUMBITS(7) [],
        /// XactPos: transaction position (isochronous OUT).
        TRANSACTION_POSITION OFFSET(14) NUMBITS(2) [],
        /// CompSplt: do the complete-split.
        COMPLETE_SPLIT OFFSET(16) NUMBITS(1) [],
        /// SpltEna: split transactions enabled.
        SPLIT_ENABLE OFFSET(31) NUMBITS(1) []
    ],

    /// 0x508 + 0x20n HCINT / 0x50C + 0x20n HCINTMSK: Host Channel
    /// Interrupt (write 1 to clear) and its mask.
    pub HCINT [
        /// XferCompl: transfer completed without error.
        TRANSFER_COMPLETE OFFSET(0) NUMBITS(1) [],
        /// ChHltd: the channel halted (end of transfer or error).
        CHANNEL_HALTED OFFSET(1) NUMBITS(1) [],
        /// AHBErr: AHB error during a DMA access.
        AHB_ERROR OFFSET(2) NUMBITS(1) [],
        /// STALL response received.
        STALL OFFSET(3) NUMBITS(1) [],
        /// NAK response received.
        NAK OFFSET(4) NUMBITS(1) [],
        /// ACK response received/transmitted.
        ACK OFFSET(5) NUMBITS(1) [],
        /// NYET response received.
        NYET OFFSET(6) NUMBITS(1) [],
        /// XactErr: transaction error (CRC, timeout, bit stuff, false EOP).
        TRANSACTION_ERROR OFFSET(7) NUMBITS(1) [],
        /// BblErr: babble error.
        BABBLE_ERROR OFFSET(8) NUMBITS(1) [],
        /// FrmOvrun: frame overrun.
        FRAME_OVERRUN OFFSET(9) NUMBITS(1) [],
        /// DataTglErr: data toggle error.
        DATA_TOGGLE_ERROR OFFSET(10) NUMBITS(1) []
    ],

    /// 0x510 + 0x20n HCTSIZ: Host Channel Transfer Size (non-descriptor DMA).
    pub HCTSIZ [
        /// XferSize: bytes to transfer (for IN a multiple of MPS).
        TRANSFER_SIZE OFFSET(0) NUMBITS(19) [],
        /// PktCnt: packets to transfer.
        PACKET_COUNT OFFSET(19) NUMBITS(10) [],
        /// Pid: the PID of the first packet.
        PID OFFSET(29) NUMBITS(2) [
            Data0 = 0,
            Data2 = 1,
            Data1 = 2,
            Setup = 3
        ],
        /// DoPng: do the PING protocol (high-speed OUT).
        DO_PING OFFSET(31) NUMBITS(1) []
    ],

    /// 0xE00 PCGCTL: Power and Clock Gating Control.
    pub PCGCTL [
        /// StopPclk: stop the PHY clock.
        STOP_PHY_CLOCK OFFSET(0) NUMBITS(1) [],
        /// GateHclk: gate the AHB clock.
        GATE_HCLK OFFSET(1) NUMBITS(1) []
    ]
}

register_structs! {
    /// One host channel's registers (`0x500 + 0x20 * n`).
    pub ChannelRegisters {
        /// HCCHAR: characteristics; ChEna starts the transfer.
        (0x00 => pub hcchar: ReadWrite<u32, HCCHAR::Register>),
        /// HCSPLT: split control.
        (0x04 => pub hcsplt: ReadWrite<u32, HCSPLT::Register>),
        /// HCINT: interrupt status (write 1 to clear).
        (0x08 => pub hcint: ReadWrite<u32, HCINT::Register>),
        /// HCINTMSK: interrupt mask.
        (0x0c => pub hcintmsk: ReadWrite<u32, HCINT::Register>),
        /// HCTSIZ: transfer size, packet count, PID.
        (0x10 => pub hctsiz: ReadWrite<u32, HCTSIZ::Register>),
        /// HCDMA: DMA address (a bus address; 4-byte aligned).
        (0x14 => pub hcdma: ReadWrite<u32>),
        (0x18 => _reserved),
        /// HCDMAB: current buffer address (descriptor DMA; read only).
        (0x1c => pub hcdmab: ReadOnly<u32>),
        (0x20 => @END),
    }
}

register_structs! {
    /// The DWC2 registers zboot uses, from the controller base (bus
    /// `0x7E98_0000`, ARM `0xFE98_0000`).
    pub RegisterBlock {
        /// GOTGCTL: OTG control and status.
        (0x000 => pub gotgctl: ReadWrite<u32>),
        /// GOTGINT: OTG interrupt.
        (0x004 => pub gotgint: ReadWrite<u32>),
        /// GAHBCFG: AHB configuration.
        (0x008 => pub gahbcfg: ReadWrite<u32, GAHBCFG::Register>),
        /// GUSBCFG: USB configuration.
        (0x00c => pub gusbcfg: ReadWrite<u32, GUSBCFG::Register>),
        /// GRSTCTL: reset control.
        (0x010 => pub grstctl: ReadWrite<u32, GRSTCTL::Register>),
        /// GINTSTS: interrupt status.
        (0x014 => pub gintsts: ReadWrite<u32, GINTSTS::Register>),
        /// GINTMSK: interrupt mask.
        (0x018 => pub gintmsk: ReadWrite<u32>),
        /// GRXSTSR: receive status debug read (slave mode).
        (0x01c => pub grxstsr: ReadOnly<u32>),
        /// GRXSTSP: receive status read and pop (slave mode).
        (0x020 => pub grxstsp: ReadOnly<u32>),
        /// GRXFSIZ: receive FIFO depth.
        (0x024 => pub grxfsiz: ReadWrite<u32, FIFO_SIZE::Register>),
        /// GNPTXFSIZ: non-periodic transmit FIFO start and depth.
        (0x028 => pub gnptxfsiz: ReadWrite<u32, FIFO_SIZE::Register>),
        /// GNPTXSTS: non-periodic transmit FIFO/queue status.
        (0x02c => pub gnptxsts: ReadOnly<u32>),
        /// GI2CCTL.
        (0x030 => pub gi2cctl: ReadWrite<u32>),
        /// GPVNDCTL: PHY vendor control.
        (0x034 => pub gpvndctl: ReadWrite<u32>),
        /// GGPIO.
        (0x038 => pub ggpio: ReadWrite<u32>),
        /// GUID: user ID.
        (0x03c => pub guid: ReadWrite<u32>),
        /// GSNPSID: Synopsys ID, `0x4F54_xxxx` ("OT") + core release.
        (0x040 => pub gsnpsid: ReadOnly<u32>),
        /// GHWCFG1: endpoint directions (device mode).
        (0x044 => pub ghwcfg1: ReadOnly<u32>),
        /// GHWCFG2: architecture, channel count.
        (0x048 => pub ghwcfg2: ReadOnly<u32, GHWCFG2::Register>),
        /// GHWCFG3: counter widths, FIFO RAM depth.
        (0x04c => pub ghwcfg3: ReadOnly<u32, GHWCFG3::Register>),
        /// GHWCFG4.
        (0x050 => pub ghwcfg4: ReadOnly<u32>),
        (0x054 => _reserved_global),
        /// HPTXFSIZ: host periodic transmit FIFO start and depth.
        (0x100 => pub hptxfsiz: ReadWrite<u32, FIFO_SIZE::Register>),
        (0x104 => _reserved_device_fifos),
        /// HCFG: host configuration.
        (0x400 => pub hcfg: ReadWrite<u32, HCFG::Register>),
        /// HFIR: host frame interval.
        (0x404 => pub hfir: ReadWrite<u32>),
        /// HFNUM: frame number and time remaining.
        (0x408 => pub hfnum: ReadOnly<u32, HFNUM::Register>),
        (0x40c => _reserved_host_0),
        /// HPTXSTS: periodic transmit FIFO/queue status.
        (0x410 => pub hptxsts: ReadOnly<u32>),
        /// HAINT: one bit per channel with a pending interrupt.
        (0x414 => pub haint: ReadOnly<u32>),
        /// HAINTMSK: channel interrupt mask.
        (0x418 => pub haintmsk: ReadWrite<u32>),
        (0x41c => _reserved_host_1),
        /// HPRT: host port control and status (four W1C bits).
        (0x440 => pub hprt: ReadWrite<u32, HPRT::Register>),
        (0x444 => _reserved_host_2),
        /// The host channels.
        (0x500 => pub channels: [ChannelRegisters; CHANNEL_SLOTS]),
        (0x700 => _reserved_device),
        /// PCGCTL: power and clock gating.
        (0xe00 => pub pcgctl: ReadWrite<u32, PCGCTL::Register>),
        (0xe04 => @END),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn offsets_match_hw_h() {
        assert_eq!(offset_of!(RegisterBlock, gsnpsid), 0x040);
        assert_eq!(offset_of!(RegisterBlock, ghwcfg3), 0x04c);
        assert_eq!(offset_of!(RegisterBlock, hprt), 0x440);
        assert_eq!(offset_of!(RegisterBlock, channels), 0x500);
        assert_eq!(size_of::<ChannelRegisters>(), 0x20);
        assert_eq!(offset_of!(ChannelRegisters, hcdma), 0x14);
        assert_eq!(offset_of!(RegisterBlock, pcgctl), 0xe00);
    }
}
