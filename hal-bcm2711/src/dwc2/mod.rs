//! DWC2 USB 2.0 OTG controller in host mode: core reset, root port, channel transfers in buffer DMA mode.
//!
//! The BCM2711's USB-C/CM4 USB 2.0 port is a Synopsys DesignWare Hi-Speed
//! USB 2.0 OTG core ("DWC2", bus `0x7E98_0000`), driven by Linux with
//! `drivers/usb/dwc2` (compatible "brcm,bcm2835-usb"). Register facts come
//! from Linux `drivers/usb/dwc2/hw.h`, the init order from Linux
//! `core.c`/`hcd.c`, and what QEMU emulates from `hw/usb/hcd-dwc2.c`.
//!
//! **Mode of operation.** Buffer DMA ("internal DMA", GHWCFG2.OtgArch = 2),
//! the mode QEMU emulates (it has no FIFO/slave mode: FIFO accesses log
//! "not implemented") and the mode Linux uses on BCM283x/BCM2711. One host
//! channel (0) carries every transfer, one at a time, and the driver polls
//! HCINT (no interrupts). In buffer DMA mode the core retries NAKed bulk
//! and control transactions by itself (QEMU: "for ctrl/bulk, automatically
//! retry on NAK"); the driver's bound on that is the transfer deadline,
//! after which it halts the channel and reports [`TransferError::NakTimeout`].
//!
//! **DMA buffer.** All data goes through one 64-byte aligned, 64 KiB
//! [`DmaBuffer`] the caller provides (a `static` in RAM below 1 GiB): the
//! core needs 4-byte aligned addresses (hw.h: HCDMA "must be DWORD
//! aligned"), IN transfers are programmed as whole packets (Linux
//! `dwc2_hc_start_transfer` rounds IN lengths up to the max packet size),
//! and a private buffer keeps cache-line sharing away from callers' data.
//! Before an OUT its lines are cleaned, around an IN invalidated
//! ([`crate::cache`]). HCDMA holds the *bus* address
//! ([`memory_map::vc_bus_address`]: ARM RAM at `0xC000_0000`); QEMU's
//! raspi peripherals give the DWC2 the GPU bus address space, where RAM is
//! aliased at `0x0`, `0x4000_0000`, `0x8000_0000` and `0xC000_0000`
//! (`hw/arm/bcm2835_peripherals.c`: "RAM is aliased four times ... on the
//! GPU", DWC2 "dma-mr" = `gpu_bus_mr`), so the same address works there.
//!
//! **Unplugged devices.** While a mass-storage device is open the driver
//! knows the hub port it hangs on ([`HostController::watch_attachment`]);
//! a transfer still waiting after [`ATTACHMENT_CHECK_INTERVAL`] asks that
//! hub for the port's status on a second channel (channel 0 keeps the
//! transfer) and ends with [`TransferError::DeviceGone`] once the port is
//! empty or saw a new connection; a root port that loses its connection
//! ends it at once. Real hardware would also halt the channel with XactErr
//! (no device answers the address); QEMU's `hcd-dwc2.c` does nothing at
//! all for a transfer to an address no device has, so without the check
//! the transfer would only end at its deadline (30 s for bulk, then the
//! mass-storage layer's retries and reset recoveries: over two minutes).
//!
//! **Real CM4 facts QEMU ignores.** The USB power domain must be on before
//! the registers answer: [`Dwc2::power_on`] (mailbox SET_POWER_STATE,
//! device 3). The id is Linux `drivers/pmdomain/bcm/raspberrypi-power.c`'s
//! `RPI_OLD_POWER_DOMAIN_USB` = 3, which that driver sends with
//! SET_POWER_STATE for the USB domain; the DT binding's
//! `RPI_POWER_DOMAIN_USB` (`dt-bindings/power/raspberrypi-power.h`, used by
//! bcm2711-rpi.dtsi's `power-domains = <&power RPI_POWER_DOMAIN_USB>`) is 6,
//! an index into the driver's table, not a firmware id. Split transactions
//! (a full/low-speed device behind a high-speed hub) are not implemented:
//! they need HCSPLT (SpltEna, HubAddr, PrtAddr), a start-split and a
//! complete-split per transaction with NYET retries (Linux
//! `hcd_intr.c` `dwc2_hc_nyet_intr`); such devices fail with
//! [`TransferError::SplitTransactionsUnsupported`]. A USB stick on a CM4
//! port or behind a high-speed hub is high speed and needs no splits.

pub mod registers;

use core::fmt;
use core::hint::spin_loop;
use core::mem::offset_of;
use core::time::Duration;

use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

use crate::cache;
use crate::generic_timer::{Deadline, Instant, delay, duration_to_ticks, frequency};
use crate::mailbox::{Mailbox, MailboxError, PowerDevice};
use crate::memory_map;
use crate::mmio::Mmio;
use crate::usb::{
    BulkPipe, ControlData, Direction, Endpoint, HostController, HostTimer, HubPort, SetupPacket,
    Speed, Toggle, TransferError, TransferKind, hub, packet_count,
};
use registers::{
    ChannelRegisters, FIFO_SIZE, GAHBCFG, GHWCFG2, GHWCFG3, GINTSTS, GRSTCTL, GUSBCFG, HCCHAR,
    HCFG, HCTSIZ, HPRT, RegisterBlock,
};

/// Bytes of the driver's DMA buffer: the largest channel transfer zboot
/// programs (Linux's BCM params cap a transfer at 65535 bytes).
pub const DMA_BUFFER_SIZE: usize = 64 * 1024;

/// The DMA buffer the controller reads and writes. 64-byte alignment: a
/// Cortex-A72 cache line, so maintenance never touches other data.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct DmaBuffer {
    bytes: [u8; DMA_BUFFER_SIZE],
    /// The attachment check's own cache line: it runs on a second channel
    /// while a transfer may still own `bytes`.
    watch: [u8; WATCH_BUFFER_SIZE],
}

impl DmaBuffer {
    /// A zeroed buffer, for a `static` initialiser (const-evaluated: it is
    /// never built on the stack, which is why the lint is allowed).
    #[allow(clippy::large_stack_arrays)]
    pub const fn zeroed() -> Self {
        Self {
            bytes: [0; DMA_BUFFER_SIZE],
            watch: [0; WATCH_BUFFER_SIZE],
        }
    }
}

/// Core soft reset and AHB idle: 10 ms each, Linux `core.c`
/// `dwc2_core_reset` (`dwc2_hsotg_wait_bit_clear(..., GRSTCTL_CSFTRST,
/// 10000)` µs, then `GRSTCTL_AHBIDLE` likewise).
pub const CORE_RESET_TIMEOUT: Duration = Duration::from_millis(10);

/// Minimum wait after forcing host mode: 25 ms (Linux `core.c`
/// `dwc2_force_mode`: "the databook says to wait at least 25 ms").
pub const FORCE_MODE_DELAY: Duration = Duration::from_millis(25);

/// Bound on GINTSTS.CurMod reaching host mode: 110 ms (Linux `core.c`
/// `dwc2_wait_for_mode`, `timeout = 110` ms).
pub const MODE_CHANGE_TIMEOUT: Duration = Duration::from_millis(110);

/// FIFO flushes: 10 ms, Linux `core.c` `dwc2_flush_tx_fifo` /
/// `dwc2_flush_rx_fifo` (10000 µs bit-clear waits).
pub const FIFO_FLUSH_TIMEOUT: Duration = Duration::from_millis(10);

/// How long a device may take to signal attach after VBUS: TSIGATT, 100 ms
/// (USB 2.0 Table 7-14), plus the port power ramp; 500 ms in all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Attach debounce before resetting a newly connected port: TATTDB, 100 ms
/// (USB 2.0 §7.1.7.3, Table 7-14).
pub const ATTACH_DEBOUNCE: Duration = Duration::from_millis(100);

/// Reset signalling from a root port: TDRSTR, at least 50 ms (USB 2.0
/// §7.1.7.5: "reset ... from a root port ... at least 50 ms").
pub const ROOT_RESET_DURATION: Duration = Duration::from_millis(60);

/// Reset recovery: TRSTRCY, 10 ms before the first request (USB 2.0
/// §7.1.7.5, §9.2.6.2).
pub const RESET_RECOVERY: Duration = Duration::from_millis(10);

/// Bound on PrtEna after the reset ends (the core enables the port once
/// the chirp/speed detection is done; Linux polls HPRT after its 50 ms
/// reset without a fixed bound, 100 ms is generous).
pub const PORT_ENABLE_TIMEOUT: Duration = Duration::from_millis(100);

/// Control transfers: a device completes a standard request within 5 s
/// (USB 2.0 §9.2.6.4 "Standard Device Requests").
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Bulk transfers: no USB bound exists (a device NAKs while busy); 30 s
/// per transfer, the SCSI command timeout Linux `drivers/scsi/sd.h` uses
/// for disks (`SD_TIMEOUT`).
pub const BULK_TIMEOUT: Duration = Duration::from_secs(30);

/// Halting a channel that did not finish: the core halts at the end of the
/// current transaction; 10 ms is many (micro)frames.
pub const CHANNEL_HALT_TIMEOUT: Duration = Duration::from_millis(10);

/// How long a transfer waits before it checks, and then between checks,
/// that its device is still on its hub port (GetPortStatus, USB 2.0
/// §11.24.2.7). Linux learns of an unplug from the hub's status-change
/// endpoint (`hub.c` `hub_irq`, polled every bInterval, 255 ms on QEMU's
/// hub) and then kills the device's transfers; zboot asks the hub on the
/// same scale instead. A transfer that completes sooner sends no request.
pub const ATTACHMENT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Bound on each stage of that GetPortStatus: a hub answers its class
/// requests from its own state at once; 100 ms is many (micro)frames. A
/// hub that does not answer in time proves nothing: the transfer waits on.
pub const ATTACHMENT_CHECK_TIMEOUT: Duration = Duration::from_millis(100);

/// The channel the attachment check uses, while channel 0 still holds the
/// transfer that waits.
const WATCH_CHANNEL: usize = 1;
/// Bytes of the check's DMA area: one cache line, room for one IN packet
/// of a hub's endpoint 0 (bMaxPacketSize0 is at most 64, USB 2.0 §9.6.1).
const WATCH_BUFFER_SIZE: usize = 64;

/// GSNPSID values of DWC2 cores: `0x4F54_xxxx` ("OT2"/"OT3" HS OTG),
/// `0x4F55_xxxx` FS IoT, `0x4F56_xxxx` HS IoT (hw.h `DWC2_OTG_ID`,
/// `DWC2_FS_IOT_ID`, `DWC2_HS_IOT_ID`).
const SNPSID_PRODUCTS: [u32; 3] = [0x4f54_0000, 0x4f55_0000, 0x4f56_0000];
/// Core release 4.20a: from here CSftRst is not self-clearing and
/// CSftRstDone reports the end (hw.h `DWC2_CORE_REV_4_20a`).
const CORE_REVISION_4_20A: u32 = 0x420a;

/// GAHBCFG as Linux programs it on BCM283x (`params.c`
/// `dwc2_set_bcm_params`: `ahbcfg = 0x10`), DMA enable added.
const BCM_AHB_CONFIG: u32 = 0x10;

/// FIFO sizes in 32-bit words, Linux's BCM values (`params.c`:
/// `host_rx_fifo_size = 774`) and its defaults for the TX FIFOs
/// (`host_nperio_tx_fifo_size = 256`, `host_perio_tx_fifo_size = 512`).
pub const RX_FIFO_WORDS: u32 = 774;
/// Non-periodic TX FIFO depth in words.
pub const NON_PERIODIC_TX_FIFO_WORDS: u32 = 256;
/// Periodic TX FIFO depth in words.
pub const PERIODIC_TX_FIFO_WORDS: u32 = 512;

/// The host channel zboot uses for every transfer.
const CHANNEL: usize = 0;

/// HCINT bits (hw.h `HCINTMSK_*`).
const HCINT_TRANSFER_COMPLETE: u32 = 1 << 0;
const HCINT_CHANNEL_HALTED: u32 = 1 << 1;
const HCINT_AHB_ERROR: u32 = 1 << 2;
const HCINT_STALL: u32 = 1 << 3;
const HCINT_NAK: u32 = 1 << 4;
const HCINT_TRANSACTION_ERROR: u32 = 1 << 7;
const HCINT_BABBLE: u32 = 1 << 8;
const HCINT_FRAME_OVERRUN: u32 = 1 << 9;
const HCINT_DATA_TOGGLE_ERROR: u32 = 1 << 10;

/// What a bounded DWC2 wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dwc2Wait {
    /// GRSTCTL.AHBIdle.
    AhbIdle,
    /// GRSTCTL.CSftRst to clear (or CSftRstDone).
    CoreSoftReset,
    /// GINTSTS.CurMod = host.
    HostMode,
    /// GRSTCTL.TxFFlsh to clear.
    TxFifoFlush,
    /// GRSTCTL.RxFFlsh to clear.
    RxFifoFlush,
    /// HPRT.PrtEna after the port reset.
    PortEnable,
}

/// DWC2 controller errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dwc2Error {
    /// The USB power domain could not be switched on.
    Power(MailboxError),
    /// GSNPSID is not a DWC2 core's (power domain off, wrong address).
    NotDwc2 { snpsid: u32 },
    /// The core was synthesised without internal DMA (GHWCFG2.OtgArch).
    NoInternalDma { architecture: u32 },
    /// The FIFOs zboot programs do not fit the core's FIFO RAM.
    FifoRamTooSmall {
        needed_words: u32,
        available_words: u32,
    },
    /// The DMA buffer is not reachable through the bus alias (above 1 GiB).
    DmaBufferUnreachable { address: usize },
    /// A bounded wait ran out.
    Timeout(Dwc2Wait),
    /// Nothing is attached to the root port.
    NoDeviceConnected,
    /// The port reports overcurrent.
    Overcurrent,
}

impl fmt::Display for Dwc2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Power(error) => write!(f, "DWC2: USB power domain: {error:?}"),
            Self::NotDwc2 { snpsid } => {
                write!(f, "DWC2: GSNPSID 0x{snpsid:08x} is not a DWC2 core")
            }
            Self::NoInternalDma { architecture } => {
                write!(f, "DWC2: no internal DMA (GHWCFG2.OtgArch {architecture})")
            }
            Self::FifoRamTooSmall {
                needed_words,
                available_words,
            } => write!(
                f,
                "DWC2: FIFOs need {needed_words} words, core has {available_words}"
            ),
            Self::DmaBufferUnreachable { address } => {
                write!(
                    f,
                    "DWC2: DMA buffer at 0x{address:x} is above the 1 GiB bus window"
                )
            }
            Self::Timeout(what) => write!(f, "DWC2: timeout waiting for {what:?}"),
            Self::NoDeviceConnected => {
                f.write_str("DWC2: no USB device connected to the root port")
            }
            Self::Overcurrent => f.write_str("DWC2: root port overcurrent"),
        }
    }
}

/// What the core reported at init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// GSNPSID (product and core release).
    pub snpsid: u32,
    /// Host channels (GHWCFG2.NumHstChnl + 1).
    pub channels: u32,
    /// Largest bytes per channel transfer (GHWCFG3.XferSizeCntrWidth).
    pub max_transfer_size: u32,
    /// Largest packets per channel transfer (GHWCFG3.PktSizeCntrWidth).
    pub max_packet_count: u32,
}

/// The transfer-size cap Linux applies on the BCM283x/BCM2711 DWC2
/// (`dwc2_set_bcm_params` in drivers/usb/dwc2/params.c: `max_transfer_size =
/// 65535`), whatever GHWCFG3 advertises.
pub const BCM_MAX_TRANSFER_SIZE: u32 = 65_535;

/// The packet-count cap of the same function (`max_packet_count = 511`).
pub const BCM_MAX_PACKET_COUNT: u32 = 511;

impl ControllerInfo {
    /// What the core can do by GHWCFG3's counter widths (`XferSizeCntrWidth` + 11 and
    /// `PktSizeCntrWidth` + 4 bits; the register is read as Linux `dwc2_get_hwparams`
    /// reads it), within the BCM caps above. Pure.
    pub const fn from_counter_widths(
        snpsid: u32,
        channels: u32,
        transfer_width: u32,
        packet_width: u32,
    ) -> Self {
        let transfer = (1u32
            << if transfer_width < 19 {
                transfer_width
            } else {
                19
            })
            - 1;
        let packets = (1u32 << if packet_width < 10 { packet_width } else { 10 }) - 1;
        Self {
            snpsid,
            channels,
            max_transfer_size: if transfer < BCM_MAX_TRANSFER_SIZE {
                transfer
            } else {
                BCM_MAX_TRANSFER_SIZE
            },
            max_packet_count: if packets < BCM_MAX_PACKET_COUNT {
                packets
            } else {
                BCM_MAX_PACKET_COUNT
            },
        }
    }
}

/// GUSBCFG with the BCM2711's PHY selected: the high-speed UTMI+ PHY (PHYSel 0,
/// ULPI_UTMI_Sel 0) with an 8-bit interface (PHYIf 0), and neither ULPIExtVbusDrv nor
/// TermSelDLPulse. Linux programs the same for BCM (`dwc2_set_bcm_params`:
/// `phy_type = DWC2_PHY_TYPE_PARAM_UTMI`, `phy_utmi_width = 8`; `dwc2_hs_phy_init` and
/// `dwc2_core_init` clear the other bits), as does Circle's `dwhcidevice.cpp`. Pure.
pub const fn gusbcfg_with_bcm_phy(gusbcfg: u32) -> u32 {
    gusbcfg
        & !(GUSBCFG::PHY_INTERFACE_16BIT::SET.value
            | GUSBCFG::ULPI_UTMI_SELECT::SET.value
            | GUSBCFG::PHY_SELECT::SET.value
            | GUSBCFG::ULPI_EXT_VBUS_DRIVE::SET.value
            | GUSBCFG::TERM_SEL_DL_PULSE::SET.value)
}

/// The largest bytes one channel transfer may carry at `max_packet_size`:
/// within the transfer-size counter, the packet counter and the DMA
/// buffer, and a whole number of packets so only the last chunk of a bulk
/// transfer can be short. Pure.
pub const fn chunk_limit(info: &ControllerInfo, max_packet_size: u16) -> usize {
    let max_packet_size = if max_packet_size == 0 {
        1
    } else {
        max_packet_size as usize
    };
    let mut limit = info.max_transfer_size as usize;
    let by_packets = info.max_packet_count as usize * max_packet_size;
    if by_packets < limit {
        limit = by_packets;
    }
    if DMA_BUFFER_SIZE < limit {
        limit = DMA_BUFFER_SIZE;
    }
    let whole = limit / max_packet_size * max_packet_size;
    if whole == 0 { max_packet_size } else { whole }
}

/// The outcome a halted channel's HCINT reports (hw.h bit meanings; the
/// order puts the most specific error first). Pure.
pub fn decode_halt(hcint: u32) -> Result<(), TransferError> {
    if hcint & HCINT_AHB_ERROR != 0 {
        Err(TransferError::DmaError)
    } else if hcint & HCINT_STALL != 0 {
        Err(TransferError::Stall)
    } else if hcint & HCINT_BABBLE != 0 {
        Err(TransferError::Babble)
    } else if hcint & HCINT_TRANSACTION_ERROR != 0 {
        Err(TransferError::TransactionError)
    } else if hcint & HCINT_DATA_TOGGLE_ERROR != 0 {
        Err(TransferError::DataToggleError)
    } else if hcint & HCINT_FRAME_OVERRUN != 0 {
        Err(TransferError::FrameOverrun)
    } else if hcint & HCINT_TRANSFER_COMPLETE != 0 {
        Ok(())
    } else {
        Err(TransferError::HaltedWithoutStatus { hcint })
    }
}

/// HPRT with the write-1-to-clear bits zeroed, for read-modify-write
/// (writing PrtEna as 1 would *disable* the port). Pure.
pub const fn hprt_preserving(hprt: u32) -> u32 {
    // PrtConnDet (1), PrtEna (2), PrtEnChng (3), PrtOvrCurrChng (5).
    hprt & !((1 << 1) | (1 << 2) | (1 << 3) | (1 << 5))
}

/// The DWC2 host controller.
#[derive(Debug)]
pub struct Dwc2 {
    registers: Mmio<RegisterBlock>,
    dma: &'static mut DmaBuffer,
    dma_bus_address: u32,
    info: Option<ControllerInfo>,
    root_speed: Option<Speed>,
    transfers: u64,
    watched: Option<HubPort>,
    phy_reset: bool,
    /// HCTSIZ.PID as the core left it at the last halt.
    last_pid: u32,
    toggle_mismatches: u64,
}

impl Dwc2 {
    /// Switches the USB power domain on through the firmware (real CM4:
    /// the core's registers do not respond before). QEMU's mailbox accepts
    /// the call and the DWC2 is always powered there.
    pub fn power_on(mailbox: &mut Mailbox) -> Result<(), Dwc2Error> {
        mailbox
            .set_power_state(PowerDevice::UsbHcd, true, true)
            .map_err(Dwc2Error::Power)
    }

    /// The driver for the DWC2 at `base` using `dma` for every transfer.
    ///
    /// # Safety
    ///
    /// `base` is the DWC2 register block ([`memory_map::DWC2`]), mapped as
    /// Device memory for the program's life, and this driver is its only
    /// user while it lives (it owns the host channels and the port).
    pub unsafe fn new(base: usize, dma: &'static mut DmaBuffer) -> Self {
        // SAFETY: the caller's contract: `base` is the DWC2 block, mapped,
        // and used only through this driver.
        let registers = unsafe { Mmio::new(base) };
        Self {
            registers,
            dma,
            dma_bus_address: 0,
            info: None,
            root_speed: None,
            transfers: 0,
            watched: None,
            phy_reset: false,
            last_pid: 0,
            toggle_mismatches: 0,
        }
    }

    /// Channel transfers started since creation (each stage of a control
    /// transfer counts).
    pub fn transfers(&self) -> u64 {
        self.transfers
    }

    /// What init found, once it ran.
    pub fn info(&self) -> Option<ControllerInfo> {
        self.info
    }

    /// Resets the core and brings it up as a host with the root port
    /// powered: identification, soft reset, forced host mode, AHB/DMA
    /// configuration, FIFO sizes and flushes, host configuration, port
    /// power (the order of Linux `dwc2_core_init` + `dwc2_core_host_init`).
    pub fn init(&mut self) -> Result<ControllerInfo, Dwc2Error> {
        let address = self.dma.bytes.as_ptr() as usize;
        self.dma_bus_address = memory_map::vc_bus_address(address, size_of::<DmaBuffer>())
            .ok_or(Dwc2Error::DmaBufferUnreachable { address })?;

        let regs = &self.registers;
        let snpsid = regs.gsnpsid.get();
        if !SNPSID_PRODUCTS.contains(&(snpsid & 0xffff_0000)) {
            return Err(Dwc2Error::NotDwc2 { snpsid });
        }
        let architecture = regs.ghwcfg2.read(GHWCFG2::ARCHITECTURE);
        if architecture != GHWCFG2::ARCHITECTURE::Value::InternalDma as u32 {
            return Err(Dwc2Error::NoInternalDma { architecture });
        }

        self.core_soft_reset(snpsid)?;
        // The PHY: UTMI+ 8-bit, as Linux selects it on BCM. A PHY change takes
        // effect through another core soft reset (Linux `dwc2_hs_phy_init`:
        // "if (usbcfg != usbcfg_old) ... dwc2_core_reset"). Unverified on a CM4:
        // QEMU's hcd-dwc2.c keeps GUSBCFG as written and models no PHY.
        let regs = &self.registers;
        let usbcfg = regs.gusbcfg.get();
        let wanted = gusbcfg_with_bcm_phy(usbcfg);
        self.phy_reset = wanted != usbcfg;
        if self.phy_reset {
            regs.gusbcfg.set(wanted);
            self.core_soft_reset(snpsid)?;
        }
        let regs = &self.registers;

        // Host only: no SRP/HNP, forced host mode (the CM4 port is a host
        // port with otg_mode=0; the ID pin is not trusted).
        regs.gusbcfg.modify(
            GUSBCFG::SRP_CAPABLE::CLEAR
                + GUSBCFG::HNP_CAPABLE::CLEAR
                + GUSBCFG::FORCE_DEVICE_MODE::CLEAR
                + GUSBCFG::FORCE_HOST_MODE::SET,
        );
        delay(FORCE_MODE_DELAY);
        wait_until(MODE_CHANGE_TIMEOUT, Dwc2Wait::HostMode, || {
            regs.gintsts.is_set(GINTSTS::CURRENT_MODE_HOST)
        })?;

        // Buffer DMA, polled: global interrupt mask left off, all core
        // interrupts masked.
        regs.gintmsk.set(0);
        regs.gahbcfg
            .set(BCM_AHB_CONFIG | GAHBCFG::DMA_ENABLE::SET.value);

        // FIFOs: RX, then non-periodic TX, then periodic TX, back to back.
        let available_words = regs.ghwcfg3.read(GHWCFG3::FIFO_DEPTH);
        let needed_words = RX_FIFO_WORDS + NON_PERIODIC_TX_FIFO_WORDS + PERIODIC_TX_FIFO_WORDS;
        if needed_words > available_words {
            return Err(Dwc2Error::FifoRamTooSmall {
                needed_words,
                available_words,
            });
        }
        regs.grxfsiz.set(RX_FIFO_WORDS);
        regs.gnptxfsiz.write(
            FIFO_SIZE::START.val(RX_FIFO_WORDS) + FIFO_SIZE::DEPTH.val(NON_PERIODIC_TX_FIFO_WORDS),
        );
        regs.hptxfsiz.write(
            FIFO_SIZE::START.val(RX_FIFO_WORDS + NON_PERIODIC_TX_FIFO_WORDS)
                + FIFO_SIZE::DEPTH.val(PERIODIC_TX_FIFO_WORDS),
        );
        // Flush all TX FIFOs (TxFNum 0x10) and the RX FIFO (Linux
        // dwc2_flush_tx_fifo(hsotg, 0x10), dwc2_flush_rx_fifo).
        regs.grstctl
            .write(GRSTCTL::TX_FIFO_FLUSH::SET + GRSTCTL::TX_FIFO_NUMBER.val(0x10));
        wait_until(FIFO_FLUSH_TIMEOUT, Dwc2Wait::TxFifoFlush, || {
            !regs.grstctl.is_set(GRSTCTL::TX_FIFO_FLUSH)
        })?;
        regs.grstctl.write(GRSTCTL::RX_FIFO_FLUSH::SET);
        wait_until(FIFO_FLUSH_TIMEOUT, Dwc2Wait::RxFifoFlush, || {
            !regs.grstctl.is_set(GRSTCTL::RX_FIFO_FLUSH)
        })?;

        // Host: PHY clock running (PCGCTL 0), FS/LS PHY clock for the
        // UTMI+ high-speed PHY (Linux dwc2_init_fs_ls_pclk_sel: 30/60 MHz).
        regs.pcgctl.set(0);
        regs.hcfg
            .modify(HCFG::FS_LS_PHY_CLOCK::Clock30Or60MHz + HCFG::FS_LS_ONLY::CLEAR);
        for channel in [CHANNEL, WATCH_CHANNEL] {
            let channel = &regs.channels[channel];
            channel.hcint.set(u32::MAX);
            channel.hcintmsk.set(HCINT_CHANNEL_HALTED | HCINT_AHB_ERROR);
        }

        // Port power on (VBUS), preserving the W1C bits.
        let hprt = hprt_preserving(regs.hprt.get());
        regs.hprt.set(hprt | HPRT::POWER::SET.value);

        let info = ControllerInfo::from_counter_widths(
            snpsid,
            regs.ghwcfg2.read(GHWCFG2::HOST_CHANNELS_MINUS_ONE) + 1,
            regs.ghwcfg3.read(GHWCFG3::TRANSFER_SIZE_WIDTH) + 11,
            regs.ghwcfg3.read(GHWCFG3::PACKET_COUNT_WIDTH) + 4,
        );
        self.info = Some(info);
        Ok(info)
    }

    /// Bulk transfers after which HCTSIZ.PID and the count of packets disagreed on the
    /// next data toggle (the PID is used; see [`saved_toggle`]).
    pub fn toggle_mismatches(&self) -> u64 {
        self.toggle_mismatches
    }

    /// The endpoint's next data toggle after a bulk transfer: from HCTSIZ.PID
    /// ([`saved_toggle`]), counting a disagreement with `counted` (the toggle the
    /// number of packets gives).
    fn next_toggle(&mut self, counted: Toggle) -> Toggle {
        let saved = saved_toggle(self.last_pid);
        if saved != counted {
            self.toggle_mismatches += 1;
        }
        saved
    }

    /// Whether the last [`Dwc2::init`] changed the PHY selection in GUSBCFG (and so
    /// soft-reset the core a second time).
    pub fn phy_was_reset(&self) -> bool {
        self.phy_reset
    }

    /// Core soft reset (Linux `dwc2_core_reset`): AHB idle first so no DMA is cut
    /// mid-burst, then the reset, then idle again.
    fn core_soft_reset(&self, snpsid: u32) -> Result<(), Dwc2Error> {
        let regs = &self.registers;
        wait_until(CORE_RESET_TIMEOUT, Dwc2Wait::AhbIdle, || {
            regs.grstctl.is_set(GRSTCTL::AHB_IDLE)
        })?;
        regs.grstctl.modify(GRSTCTL::CORE_SOFT_RESET::SET);
        if snpsid & 0xffff < CORE_REVISION_4_20A {
            wait_until(CORE_RESET_TIMEOUT, Dwc2Wait::CoreSoftReset, || {
                !regs.grstctl.is_set(GRSTCTL::CORE_SOFT_RESET)
            })?;
        } else {
            wait_until(CORE_RESET_TIMEOUT, Dwc2Wait::CoreSoftReset, || {
                regs.grstctl.is_set(GRSTCTL::CORE_SOFT_RESET_DONE)
            })?;
            regs.grstctl
                .modify(GRSTCTL::CORE_SOFT_RESET::CLEAR + GRSTCTL::CORE_SOFT_RESET_DONE::SET);
        }
        wait_until(CORE_RESET_TIMEOUT, Dwc2Wait::AhbIdle, || {
            regs.grstctl.is_set(GRSTCTL::AHB_IDLE)
        })
    }

    /// Waits for a device on the root port, debounces, resets the port
    /// (≥ 50 ms), waits for the core to enable it and returns the speed it
    /// detected. [`Dwc2Error::NoDeviceConnected`] after [`CONNECT_TIMEOUT`].
    pub fn reset_root_port(&mut self) -> Result<Speed, Dwc2Error> {
        let regs = &self.registers;
        let connect = Deadline::after(CONNECT_TIMEOUT);
        while !regs.hprt.is_set(HPRT::CONNECT_STATUS) {
            if connect.expired() {
                return Err(Dwc2Error::NoDeviceConnected);
            }
            spin_loop();
        }
        delay(ATTACH_DEBOUNCE);
        if regs.hprt.is_set(HPRT::OVERCURRENT_ACTIVE) {
            return Err(Dwc2Error::Overcurrent);
        }
        let hprt = hprt_preserving(regs.hprt.get());
        regs.hprt.set(hprt | HPRT::RESET::SET.value);
        delay(ROOT_RESET_DURATION);
        let hprt = hprt_preserving(regs.hprt.get());
        regs.hprt.set(hprt & !HPRT::RESET::SET.value);
        wait_until(PORT_ENABLE_TIMEOUT, Dwc2Wait::PortEnable, || {
            regs.hprt.is_set(HPRT::ENABLE)
        })?;
        delay(RESET_RECOVERY);
        // Acknowledge the change bits (W1C) now that they are handled.
        let hprt = regs.hprt.get();
        regs.hprt.set(
            hprt_preserving(hprt)
                | HPRT::CONNECT_DETECTED::SET.value
                | HPRT::ENABLE_CHANGED::SET.value,
        );
        let speed = match regs.hprt.read_as_enum(HPRT::SPEED) {
            Some(HPRT::SPEED::Value::High) => Speed::High,
            Some(HPRT::SPEED::Value::Low) => Speed::Low,
            _ => Speed::Full,
        };
        self.root_speed = Some(speed);
        Ok(speed)
    }

    /// Raw HPRT, for diagnostics.
    pub fn port_status(&self) -> u32 {
        self.registers.hprt.get()
    }

    /// One channel transfer of `length` bytes through the DMA buffer
    /// (data already in it for OUT). Returns the bytes transferred.
    fn channel_transfer(
        &mut self,
        endpoint: &Endpoint,
        direction: Direction,
        pid: HCTSIZ::PID::Value,
        length: usize,
        deadline: Deadline,
    ) -> Result<usize, TransferError> {
        if !self.registers.hprt.is_set(HPRT::ENABLE) {
            return Err(TransferError::PortDisabled);
        }
        // A full/low-speed device behind a high-speed hub needs splits.
        if endpoint.translator.is_some() && self.root_speed == Some(Speed::High) {
            return Err(TransferError::SplitTransactionsUnsupported);
        }
        let max_packet_size = endpoint.max_packet_size.max(1);
        let packets = packet_count(length, max_packet_size);
        // IN transfers are programmed as whole packets (Linux
        // dwc2_hc_start_transfer); the DMA buffer has room for them.
        let programmed = match direction {
            Direction::In => packets as usize * max_packet_size as usize,
            Direction::Out => length,
        };
        if programmed > DMA_BUFFER_SIZE {
            return Err(TransferError::TooLong {
                length,
                limit: DMA_BUFFER_SIZE,
            });
        }
        let buffer = self.dma.bytes.as_ptr() as usize;
        match direction {
            Direction::Out => cache::clean_range(buffer, length),
            // No dirty line may be written back over the device's data.
            Direction::In => cache::clean_invalidate_range(buffer, programmed),
        }

        self.transfers += 1;
        let regs = &self.registers;
        let channel = &regs.channels[CHANNEL];
        let watch = &mut self.dma.watch;
        let watch_bus_address = self.dma_bus_address + offset_of!(DmaBuffer, watch) as u32;
        let watched = self.watched.filter(|_| {
            self.info
                .is_some_and(|info| info.channels as usize > WATCH_CHANNEL)
        });
        let mut next_check = Deadline::after(ATTACHMENT_CHECK_INTERVAL);
        let hcint = run_stage(
            channel,
            endpoint,
            direction,
            pid,
            programmed,
            packets,
            self.dma_bus_address,
            deadline,
            || {
                // The root port lost its device (or hub): QEMU hcd-dwc2.c
                // `dwc2_detach` clears HPRT.PrtConnSts and PrtEna.
                let hprt = regs.hprt.extract();
                if !hprt.is_set(HPRT::CONNECT_STATUS) || !hprt.is_set(HPRT::ENABLE) {
                    return true;
                }
                let Some(port) = watched else { return false };
                if !next_check.expired() {
                    return false;
                }
                let status = hub_port_status(regs, watch, watch_bus_address, &port);
                next_check = Deadline::after(ATTACHMENT_CHECK_INTERVAL);
                // No device, a disabled port, or a connection change since
                // enumeration cleared it (unplugged and maybe replugged:
                // then at address 0, not the one addressed): gone.
                status.is_some_and(|status| {
                    !status.connected() || !status.enabled() || status.connection_changed()
                })
            },
        )?;
        channel.hcint.set(u32::MAX);
        decode_halt(hcint)?;
        self.last_pid = channel.hctsiz.read(HCTSIZ::PID);
        Ok(match direction {
            Direction::Out => length,
            Direction::In => {
                let remaining = channel.hctsiz.read(HCTSIZ::TRANSFER_SIZE) as usize;
                let received = programmed.saturating_sub(remaining);
                // SAFETY: the DMA buffer holds plain bytes the CPU has not
                // written since the clean+invalidate above; no reference
                // into it is live across the call.
                unsafe { cache::invalidate_range(buffer, programmed) };
                received
            }
        })
    }

    /// Moves `length` bytes of an IN result out of the DMA buffer.
    fn copy_out(&self, into: &mut [u8], length: usize) {
        let length = length.min(into.len());
        if let (Some(into), Some(from)) = (into.get_mut(..length), self.dma.bytes.get(..length)) {
            into.copy_from_slice(from);
        }
    }

    fn chunk_for(&self, max_packet_size: u16) -> usize {
        match &self.info {
            Some(info) => chunk_limit(info, max_packet_size),
            None => usize::from(max_packet_size.max(1)),
        }
    }
}

/// The data toggle for an endpoint's next transfer from the HCTSIZ.PID field the core
/// updated as packets went through (Linux `dwc2_save_data_toggle`: DATA0 stays DATA0,
/// anything else is DATA1). After a short or failed transfer it is the core's word, not
/// a count of what was asked. Pure.
pub const fn saved_toggle(pid: u32) -> Toggle {
    if pid == HCTSIZ::PID::Value::Data0 as u32 {
        Toggle::Data0
    } else {
        Toggle::Data1
    }
}

/// Maps a pipe toggle to the HCTSIZ PID.
fn toggle_pid(toggle: Toggle) -> HCTSIZ::PID::Value {
    match toggle {
        Toggle::Data0 => HCTSIZ::PID::Value::Data0,
        Toggle::Data1 => HCTSIZ::PID::Value::Data1,
    }
}

impl HostController for Dwc2 {
    fn control_transfer(
        &mut self,
        endpoint: &Endpoint,
        setup: &SetupPacket,
        data: ControlData<'_>,
    ) -> Result<usize, TransferError> {
        let deadline = Deadline::after(CONTROL_TIMEOUT);
        let control = Endpoint {
            kind: TransferKind::Control,
            number: 0,
            ..*endpoint
        };
        // SETUP stage: 8 bytes, PID SETUP (USB 2.0 §8.5.3).
        self.dma.bytes[..8].copy_from_slice(&setup.to_bytes());
        self.channel_transfer(
            &control,
            Direction::Out,
            HCTSIZ::PID::Value::Setup,
            8,
            deadline,
        )?;
        // DATA stage starts with DATA1; STATUS is DATA1 in the other
        // direction (§8.5.3).
        let (transferred, status_direction) = match data {
            ControlData::None => (0, Direction::In),
            ControlData::In(buffer) => {
                let received = self.channel_transfer(
                    &control,
                    Direction::In,
                    HCTSIZ::PID::Value::Data1,
                    buffer.len(),
                    deadline,
                )?;
                if received > buffer.len() {
                    return Err(TransferError::Babble);
                }
                self.copy_out(buffer, received);
                (received, Direction::Out)
            }
            ControlData::Out(bytes) => {
                if bytes.len() > DMA_BUFFER_SIZE {
                    return Err(TransferError::TooLong {
                        length: bytes.len(),
                        limit: DMA_BUFFER_SIZE,
                    });
                }
                self.dma.bytes[..bytes.len()].copy_from_slice(bytes);
                let sent = self.channel_transfer(
                    &control,
                    Direction::Out,
                    HCTSIZ::PID::Value::Data1,
                    bytes.len(),
                    deadline,
                )?;
                (sent, Direction::In)
            }
        };
        self.channel_transfer(
            &control,
            status_direction,
            HCTSIZ::PID::Value::Data1,
            0,
            deadline,
        )?;
        Ok(transferred)
    }

    fn bulk_in(&mut self, pipe: &mut BulkPipe, buffer: &mut [u8]) -> Result<usize, TransferError> {
        let max_packet_size = pipe.endpoint.max_packet_size.max(1);
        let chunk = self.chunk_for(max_packet_size);
        let endpoint = pipe.endpoint;
        let mut done = 0;
        loop {
            let want = (buffer.len() - done).min(chunk);
            let deadline = Deadline::after(BULK_TIMEOUT);
            let received = self.channel_transfer(
                &endpoint,
                Direction::In,
                toggle_pid(pipe.toggle),
                want,
                deadline,
            )?;
            pipe.toggle = self.next_toggle(
                pipe.toggle
                    .after_packets(packet_count(received, max_packet_size)),
            );
            if received > want {
                return Err(TransferError::Babble);
            }
            if let Some(into) = buffer.get_mut(done..done + received) {
                self.copy_out(into, received);
            }
            done += received;
            // A short packet ends the transfer (USB 2.0 §5.8.3).
            if received < want || done >= buffer.len() {
                return Ok(done);
            }
        }
    }

    fn bulk_out(&mut self, pipe: &mut BulkPipe, data: &[u8]) -> Result<(), TransferError> {
        let max_packet_size = pipe.endpoint.max_packet_size.max(1);
        let chunk = self.chunk_for(max_packet_size);
        let endpoint = pipe.endpoint;
        let mut chunks = data.chunks(chunk).peekable();
        if chunks.peek().is_none() {
            // A zero-length OUT.
            let deadline = Deadline::after(BULK_TIMEOUT);
            self.channel_transfer(
                &endpoint,
                Direction::Out,
                toggle_pid(pipe.toggle),
                0,
                deadline,
            )?;
            pipe.toggle = self.next_toggle(pipe.toggle.after_packets(1));
            return Ok(());
        }
        for piece in chunks {
            self.dma.bytes[..piece.len()].copy_from_slice(piece);
            let deadline = Deadline::after(BULK_TIMEOUT);
            self.channel_transfer(
                &endpoint,
                Direction::Out,
                toggle_pid(pipe.toggle),
                piece.len(),
                deadline,
            )?;
            pipe.toggle = self.next_toggle(
                pipe.toggle
                    .after_packets(packet_count(piece.len(), max_packet_size)),
            );
        }
        Ok(())
    }

    fn delay(&mut self, duration: Duration) {
        delay(duration);
    }

    fn start_timer(&mut self, timeout: Duration) -> HostTimer {
        let now = Instant::now().ticks();
        HostTimer {
            expires: now.saturating_add(duration_to_ticks(timeout, frequency())),
        }
    }

    fn expired(&mut self, timer: &HostTimer) -> bool {
        Instant::now().ticks() >= timer.expires
    }

    fn watch_attachment(&mut self, port: Option<HubPort>) {
        self.watched = port;
    }
}

/// Programs `channel` for one transfer stage of `programmed` bytes in
/// `packets` packets at bus address `bus_address`, enables it and waits
/// until the core halts it. Returns HCINT at the halt. When `deadline`
/// passes, or `gone` (polled while waiting) says the device was unplugged,
/// the channel is halted and the error returned.
#[allow(clippy::too_many_arguments)] // One stage's whole programming, as HCCHAR/HCTSIZ/HCDMA take it.
fn run_stage(
    channel: &ChannelRegisters,
    endpoint: &Endpoint,
    direction: Direction,
    pid: HCTSIZ::PID::Value,
    programmed: usize,
    packets: u32,
    bus_address: u32,
    deadline: Deadline,
    mut gone: impl FnMut() -> bool,
) -> Result<u32, TransferError> {
    // A channel is reprogrammed only once it has halted: a stage that timed out
    // may have left it enabled if the halt it asked for never came. Linux waits for
    // ChHltd before it frees a channel (`dwc2_hc_halt`, `dwc2_release_channel`).
    if channel.hcchar.is_set(HCCHAR::CHANNEL_ENABLE) && !halt_channel(channel) {
        return Err(TransferError::ChannelNotHalted);
    }
    channel.hcint.set(u32::MAX);
    channel.hcsplt.set(0);
    channel.hctsiz.write(
        HCTSIZ::TRANSFER_SIZE.val(programmed as u32)
            + HCTSIZ::PACKET_COUNT.val(packets)
            + HCTSIZ::PID.val(pid as u32),
    );
    channel.hcdma.set(bus_address);
    let endpoint_type = match endpoint.kind {
        TransferKind::Control => HCCHAR::ENDPOINT_TYPE::Control,
        TransferKind::Bulk => HCCHAR::ENDPOINT_TYPE::Bulk,
    };
    channel.hcchar.write(
        HCCHAR::MAX_PACKET_SIZE.val(u32::from(endpoint.max_packet_size.max(1)))
            + HCCHAR::ENDPOINT_NUMBER.val(u32::from(endpoint.number))
            + HCCHAR::ENDPOINT_DIRECTION_IN.val(u32::from(direction == Direction::In))
            + HCCHAR::LOW_SPEED_DEVICE.val(u32::from(endpoint.speed == Speed::Low))
            + endpoint_type
            + HCCHAR::MULTI_COUNT.val(1)
            + HCCHAR::DEVICE_ADDRESS.val(u32::from(endpoint.device_address))
            + HCCHAR::CHANNEL_ENABLE::SET,
    );
    loop {
        let hcint = channel.hcint.get();
        if hcint & HCINT_CHANNEL_HALTED != 0 {
            return Ok(hcint);
        }
        // QEMU hcd-dwc2.c `dwc2_enable_chan` does nothing at all when no
        // device answers the address (`dwc2_find_device` returns NULL):
        // no halt, no error bit, so an unplugged device is only noticed by
        // `gone` (real hardware halts with XactErr after three tries).
        let unplugged = gone();
        if unplugged || deadline.expired() {
            // Ask the core to halt the channel, then report. If the halt does not
            // come, the next stage asks again before it reprograms the channel.
            halt_channel(channel);
            return Err(if unplugged {
                TransferError::DeviceGone
            } else if hcint & HCINT_NAK != 0 {
                TransferError::NakTimeout
            } else {
                TransferError::Timeout
            });
        }
        spin_loop();
    }
}

/// Asks the core to halt `channel` (ChEna and ChDis set together, DWC2 databook
/// "Halting a Channel"; Linux `dwc2_hc_halt`) and waits [`CHANNEL_HALT_TIMEOUT`] for
/// ChHltd. Clears HCINT. Whether the channel halted.
fn halt_channel(channel: &ChannelRegisters) -> bool {
    channel
        .hcchar
        .modify(HCCHAR::CHANNEL_ENABLE::SET + HCCHAR::CHANNEL_DISABLE::SET);
    let halt = Deadline::after(CHANNEL_HALT_TIMEOUT);
    let mut halted = channel.hcint.get() & HCINT_CHANNEL_HALTED != 0;
    while !halted && !halt.expired() {
        spin_loop();
        halted = channel.hcint.get() & HCINT_CHANNEL_HALTED != 0;
    }
    channel.hcint.set(u32::MAX);
    halted || !channel.hcchar.is_set(HCCHAR::CHANNEL_ENABLE)
}

/// GetPortStatus of `port` on the watch channel, through the watch DMA
/// area; `None` when the hub does not answer in time (nothing concluded).
fn hub_port_status(
    regs: &RegisterBlock,
    watch: &mut [u8; WATCH_BUFFER_SIZE],
    bus_address: u32,
    port: &HubPort,
) -> Option<hub::PortStatus> {
    let channel = &regs.channels[WATCH_CHANNEL];
    let hub = Endpoint {
        kind: TransferKind::Control,
        number: 0,
        ..port.hub
    };
    let max_packet_size = hub.max_packet_size.max(1);
    let buffer = watch.as_ptr() as usize;
    let stage = |direction, pid, programmed: usize, packets| {
        let deadline = Deadline::after(ATTACHMENT_CHECK_TIMEOUT);
        run_stage(
            channel,
            &hub,
            direction,
            pid,
            programmed,
            packets,
            bus_address,
            deadline,
            || false,
        )
        .ok()
        .and_then(|hcint| decode_halt(hcint).ok())
    };
    // SETUP (USB 2.0 §8.5.3), then 4 bytes IN with DATA1, then a
    // zero-length STATUS OUT with DATA1.
    let setup = hub::get_port_status(port.port).to_bytes();
    watch[..setup.len()].copy_from_slice(&setup);
    cache::clean_range(buffer, setup.len());
    stage(Direction::Out, HCTSIZ::PID::Value::Setup, setup.len(), 1)?;
    let programmed = usize::from(max_packet_size);
    if programmed > WATCH_BUFFER_SIZE {
        return None;
    }
    cache::clean_invalidate_range(buffer, programmed);
    stage(Direction::In, HCTSIZ::PID::Value::Data1, programmed, 1)?;
    let remaining = channel.hctsiz.read(HCTSIZ::TRANSFER_SIZE) as usize;
    // SAFETY: the watch area holds plain bytes the CPU has not written
    // since the clean+invalidate above; `watch` is read only after the
    // call, with no assumption about what it held before.
    unsafe { cache::invalidate_range(buffer, programmed) };
    let received = programmed.saturating_sub(remaining);
    let status = hub::PortStatus::parse(watch.get(..received)?)?;
    stage(Direction::Out, HCTSIZ::PID::Value::Data1, 0, 1)?;
    Some(status)
}

/// Polls `done` until it holds or `timeout` passes.
fn wait_until(
    timeout: Duration,
    what: Dwc2Wait,
    mut done: impl FnMut() -> bool,
) -> Result<(), Dwc2Error> {
    let deadline = Deadline::after(timeout);
    loop {
        if done() {
            return Ok(());
        }
        if deadline.expired() {
            // One last look: the wait may have been pre-empted past its end.
            return if done() {
                Ok(())
            } else {
                Err(Dwc2Error::Timeout(what))
            };
        }
        spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // QEMU's GHWCFG3 (hcd-dwc2.c): 15-bit size and 8-bit packet counters.
    const QEMU: ControllerInfo = ControllerInfo::from_counter_widths(0x4f54_294a, 8, 15, 8);
    // The widest counters GHWCFG3 can encode: 19 and 10 bits.
    const BCM2711: ControllerInfo = ControllerInfo::from_counter_widths(0x4f54_280a, 8, 19, 10);

    #[test]
    fn the_saved_toggle_is_data0_only_for_data0() {
        assert_eq!(saved_toggle(0), Toggle::Data0);
        assert_eq!(saved_toggle(2), Toggle::Data1);
        assert_eq!(saved_toggle(1), Toggle::Data1, "DATA2");
        assert_eq!(saved_toggle(3), Toggle::Data1, "MDATA/SETUP");
    }

    #[test]
    fn the_phy_is_utmi_8_bit_without_ulpi_vbus_or_dl_pulse() {
        // Every PHY bit set, plus force-host and SRP: only the PHY bits go.
        let all = (1 << 3) | (1 << 4) | (1 << 6) | (1 << 20) | (1 << 22);
        let others = (1 << 29) | (1 << 8) | 0x7; // ForceHstMode, SRPCap, TOutCal
        assert_eq!(gusbcfg_with_bcm_phy(all | others), others);
        // Already right: unchanged, so no second core reset.
        assert_eq!(gusbcfg_with_bcm_phy(others), others);
    }

    #[test]
    fn the_counters_are_capped_as_linux_caps_them_on_bcm() {
        assert_eq!(QEMU.max_transfer_size, (1 << 15) - 1);
        assert_eq!(QEMU.max_packet_count, 255);
        assert_eq!(BCM2711.max_transfer_size, 65_535);
        assert_eq!(BCM2711.max_packet_count, 511);
    }

    #[test]
    fn chunks_are_whole_packets_within_every_counter() {
        // QEMU's GHWCFG3: 255 packets of 64 bytes bound a FS transfer.
        assert_eq!(chunk_limit(&QEMU, 64), 255 * 64);
        // 15-bit size counter at HS: 32767 rounded down to 512s.
        assert_eq!(chunk_limit(&QEMU, 512), 32_256);
        // The BCM cap: 65,535 bytes rounded down to whole 512-byte packets, never
        // the 65,536 of the DMA buffer.
        assert_eq!(chunk_limit(&BCM2711, 512), 65_024);
        assert!(chunk_limit(&BCM2711, 512) < DMA_BUFFER_SIZE);
        // Full speed: 511 packets of 64 bytes bound it.
        assert_eq!(chunk_limit(&BCM2711, 64), 511 * 64);
        // A zero max packet size counts as 1: the packet counter bounds it.
        assert_eq!(chunk_limit(&BCM2711, 0), 511);
    }

    #[test]
    fn halt_status_decoding() {
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED | HCINT_TRANSFER_COMPLETE),
            Ok(())
        );
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED | HCINT_STALL),
            Err(TransferError::Stall)
        );
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED | HCINT_NAK | HCINT_TRANSACTION_ERROR),
            Err(TransferError::TransactionError)
        );
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED | HCINT_BABBLE | HCINT_TRANSFER_COMPLETE),
            Err(TransferError::Babble)
        );
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED | HCINT_AHB_ERROR),
            Err(TransferError::DmaError)
        );
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED | HCINT_DATA_TOGGLE_ERROR),
            Err(TransferError::DataToggleError)
        );
        assert_eq!(
            decode_halt(HCINT_CHANNEL_HALTED),
            Err(TransferError::HaltedWithoutStatus { hcint: 2 })
        );
    }

    #[test]
    fn hprt_read_modify_write_never_clears_enable() {
        // Connected, enabled, changes pending, powered, full speed.
        let hprt = 0b1 | 0b10 | 0b100 | 0b1000 | (1 << 12) | (1 << 17);
        assert_eq!(hprt_preserving(hprt), 0b1 | (1 << 12) | (1 << 17));
    }
}
