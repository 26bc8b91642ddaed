//! USB host protocol above the controller: transfers as a trait, enumeration through hubs, mass storage.
//!
//! The controller driver ([`crate::dwc2`]) implements [`HostController`]:
//! control transfers (SETUP/DATA/STATUS) and bulk transfers to one
//! endpoint at a time, with the data toggle kept in a [`BulkPipe`]. Everything
//! above that is USB protocol and knows no registers:
//!
//! - [`descriptor`]: standard requests and descriptor parsing (USB 2.0
//!   chapter 9), bounded and panic-free on any bytes;
//! - [`hub`]: the hub class (USB 2.0 chapter 11): descriptor, port status,
//!   port power and reset;
//! - [`enumerate`]: addressing and configuring devices, walking hubs to a
//!   bounded depth, finding the first mass-storage interface;
//! - [`mass_storage`]: Bulk-Only Transport (USB Mass Storage Class
//!   Bulk-Only Transport 1.0) carrying SCSI (SPC-4, SBC-3) commands, with
//!   [`mass_storage::UsbMassStorage::read_blocks`] for the recovery flow.
//!
//! The pure parts (encoding, parsing, toggles, splitting) are host-tested;
//! [`mass_storage`] and [`enumerate`] are also tested against a simulated
//! device behind the same trait.

pub mod descriptor;
pub mod enumerate;
pub mod hub;
pub mod mass_storage;
#[cfg(test)]
mod simulated;

use core::fmt;

/// Bus speed of a device or port (USB 2.0 §7.1.5, §11.24.2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speed {
    /// 1.5 Mb/s.
    Low,
    /// 12 Mb/s.
    Full,
    /// 480 Mb/s.
    High,
}

impl fmt::Display for Speed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Low => "low speed",
            Self::Full => "full speed",
            Self::High => "high speed",
        })
    }
}

/// Data direction, as seen from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Host to device.
    Out,
    /// Device to host.
    In,
}

/// The transfer types zboot uses (USB 2.0 §5.4, §5.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferKind {
    /// Control (endpoint 0).
    Control,
    /// Bulk.
    Bulk,
}

/// The data toggle of a pipe (USB 2.0 §8.6): DATA0/DATA1 alternate with
/// every packet the receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    /// DATA0.
    Data0,
    /// DATA1.
    Data1,
}

impl Toggle {
    /// The toggle after `packets` more packets were accepted.
    #[must_use]
    pub const fn after_packets(self, packets: u32) -> Self {
        if packets.is_multiple_of(2) {
            self
        } else {
            match self {
                Self::Data0 => Self::Data1,
                Self::Data1 => Self::Data0,
            }
        }
    }
}

/// Packets needed for `length` bytes at `max_packet_size` (a zero-length
/// transfer is one zero-length packet). `max_packet_size` 0 counts as 1.
pub const fn packet_count(length: usize, max_packet_size: u16) -> u32 {
    let max_packet_size = if max_packet_size == 0 {
        1
    } else {
        max_packet_size as usize
    };
    if length == 0 {
        1
    } else {
        length.div_ceil(max_packet_size) as u32
    }
}

/// Where a full/low-speed device sits behind a high-speed hub: the split
/// transactions its traffic needs go to that hub's transaction translator
/// (USB 2.0 §11.14). The DWC2 driver does not implement splits (see
/// [`TransferError::SplitTransactionsUnsupported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionTranslator {
    /// Address of the high-speed hub.
    pub hub_address: u8,
    /// Its port (1-based) the device hangs on.
    pub port: u8,
}

/// The hub port a device hangs on: what the host asks (GetPortStatus,
/// USB 2.0 §11.24.2.7) to learn whether the device is still attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubPort {
    /// The hub's endpoint 0.
    pub hub: Endpoint,
    /// The port (1-based).
    pub port: u8,
}

/// One endpoint of an addressed (or default-address) device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Device address (0 before SET_ADDRESS).
    pub device_address: u8,
    /// The device's speed.
    pub speed: Speed,
    /// Endpoint number (0..=15).
    pub number: u8,
    /// Direction (ignored for control endpoints).
    pub direction: Direction,
    /// Control or bulk.
    pub kind: TransferKind,
    /// wMaxPacketSize (bMaxPacketSize0 for endpoint 0).
    pub max_packet_size: u16,
    /// The high-speed hub translating for a full/low-speed device, if any.
    pub translator: Option<TransactionTranslator>,
}

/// A bulk endpoint and its data toggle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkPipe {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The PID of the next data packet.
    pub toggle: Toggle,
}

impl BulkPipe {
    /// A pipe starting at DATA0, as after SET_CONFIGURATION or
    /// CLEAR_FEATURE(ENDPOINT_HALT) (USB 2.0 §9.4.5, §9.1.1.5).
    pub const fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            toggle: Toggle::Data0,
        }
    }
}

/// An 8-byte SETUP packet (USB 2.0 §9.3, Table 9-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupPacket {
    /// bmRequestType: direction (bit 7), type (6..5), recipient (4..0).
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: bytes in the data stage.
    pub length: u16,
}

impl SetupPacket {
    /// The packet's wire form (little-endian fields).
    pub const fn to_bytes(&self) -> [u8; 8] {
        let value = self.value.to_le_bytes();
        let index = self.index.to_le_bytes();
        let length = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            value[0],
            value[1],
            index[0],
            index[1],
            length[0],
            length[1],
        ]
    }

    /// Whether the data stage goes device to host (bmRequestType bit 7).
    pub const fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// Why a transfer failed; the same for every controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// The endpoint answered STALL (halted, or request not supported).
    Stall,
    /// The device sent more than asked for (babble, or a data stage longer
    /// than wLength).
    Babble,
    /// CRC error, bit-stuff error, false EOP or no response (USB 2.0
    /// §8.5.1, the device stopped answering).
    TransactionError,
    /// A packet came with the wrong DATA0/DATA1 PID.
    DataToggleError,
    /// The transfer did not fit the (micro)frame.
    FrameOverrun,
    /// The controller's DMA hit a bus error (bad buffer address).
    DmaError,
    /// The device kept answering NAK until the deadline.
    NakTimeout,
    /// The controller did not finish the transfer nor report an error in
    /// time.
    Timeout,
    /// The controller halted the channel without saying why.
    HaltedWithoutStatus { hcint: u32 },
    /// The data does not fit the controller's DMA buffer.
    TooLong { length: usize, limit: usize },
    /// The device is full/low speed behind a high-speed hub: its traffic
    /// needs split transactions, which the driver does not do.
    SplitTransactionsUnsupported,
    /// The root port is not enabled (device gone, or not reset yet).
    PortDisabled,
    /// The device was unplugged: the root port lost its connection or the
    /// hub port it hangs on reports no device (or a new connection) while
    /// the transfer waited.
    DeviceGone,
    /// The channel was still enabled and did not halt when asked to: it is not
    /// reprogrammed (the host controller is wedged; a new init resets the core).
    ChannelNotHalted,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stall => f.write_str("endpoint stalled"),
            Self::Babble => f.write_str("babble (device sent too much)"),
            Self::TransactionError => {
                f.write_str("transaction error (CRC/timeout: the device stopped answering)")
            }
            Self::DataToggleError => f.write_str("data toggle error"),
            Self::FrameOverrun => f.write_str("frame overrun"),
            Self::DmaError => f.write_str("DMA (AHB) error"),
            Self::NakTimeout => f.write_str("device kept answering NAK"),
            Self::Timeout => f.write_str("controller timeout"),
            Self::HaltedWithoutStatus { hcint } => {
                write!(f, "channel halted without status (HCINT 0x{hcint:08x})")
            }
            Self::TooLong { length, limit } => {
                write!(
                    f,
                    "transfer of {length} bytes exceeds the {limit}-byte DMA buffer"
                )
            }
            Self::SplitTransactionsUnsupported => f.write_str(
                "a full/low-speed device behind a high-speed hub needs split transactions, which \
                 zboot does not do: use a USB 2.0 (high-speed) stick, or plug it into the board's \
                 port directly",
            ),
            Self::PortDisabled => f.write_str("root port disabled"),
            Self::DeviceGone => f.write_str("the USB device was unplugged"),
            Self::ChannelNotHalted => {
                f.write_str("the host channel did not halt when asked to (not reused)")
            }
        }
    }
}

/// The data stage of a control transfer.
#[derive(Debug)]
pub enum ControlData<'a> {
    /// No data stage.
    None,
    /// Device to host into this buffer (its length is wLength).
    In(&'a mut [u8]),
    /// Host to device from this buffer.
    Out(&'a [u8]),
}

/// What a USB host controller provides to the protocol layers: one
/// transfer at a time, every wait bounded by the implementation.
pub trait HostController {
    /// A control transfer to endpoint 0 of `endpoint.device_address`:
    /// SETUP, the optional data stage, STATUS. Returns the bytes of the
    /// data stage transferred (less than asked for on a short IN).
    fn control_transfer(
        &mut self,
        endpoint: &Endpoint,
        setup: &SetupPacket,
        data: ControlData<'_>,
    ) -> Result<usize, TransferError>;

    /// A bulk IN transfer into `buffer`; ends early on a short packet.
    /// Returns the bytes received and advances the pipe's toggle.
    fn bulk_in(&mut self, pipe: &mut BulkPipe, buffer: &mut [u8]) -> Result<usize, TransferError>;

    /// A bulk OUT transfer of `data`; advances the pipe's toggle.
    fn bulk_out(&mut self, pipe: &mut BulkPipe, data: &[u8]) -> Result<(), TransferError>;

    /// Busy-waits at least `duration` (bus timing the protocol needs:
    /// reset recovery, SET_ADDRESS recovery, hub power-good).
    fn delay(&mut self, duration: core::time::Duration);

    /// Whether `deadline_after(timeout)` style waits may continue: a new
    /// deadline `timeout` from now, checked with [`HostTimer::expired`].
    fn start_timer(&mut self, timeout: core::time::Duration) -> HostTimer;

    /// Whether a timer from [`HostController::start_timer`] ran out.
    fn expired(&mut self, timer: &HostTimer) -> bool;

    /// Tells the controller which hub port the device it now talks to
    /// hangs on (`None`: the root port, or nothing to watch). A controller
    /// that can may check that port while a transfer waits and end the
    /// transfer with [`TransferError::DeviceGone`] once the device is
    /// unplugged, instead of waiting out the transfer's deadline.
    fn watch_attachment(&mut self, port: Option<HubPort>) {
        let _ = port;
    }
}

/// An opaque deadline handed out by a [`HostController`] (the generic
/// timer on the board, a simulated clock in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTimer {
    /// Implementation-defined expiry value.
    pub expires: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggles_alternate_per_packet() {
        assert_eq!(Toggle::Data0.after_packets(0), Toggle::Data0);
        assert_eq!(Toggle::Data0.after_packets(1), Toggle::Data1);
        assert_eq!(Toggle::Data1.after_packets(3), Toggle::Data0);
        assert_eq!(Toggle::Data1.after_packets(128), Toggle::Data1);
    }

    #[test]
    fn packets_round_up_and_zero_is_one() {
        assert_eq!(packet_count(0, 64), 1);
        assert_eq!(packet_count(1, 64), 1);
        assert_eq!(packet_count(64, 64), 1);
        assert_eq!(packet_count(65, 64), 2);
        assert_eq!(packet_count(65_024, 512), 127);
        assert_eq!(packet_count(65_535, 512), 128);
        assert_eq!(packet_count(3, 0), 3);
    }

    #[test]
    fn setup_packet_wire_form() {
        // GET_DESCRIPTOR(device, 18): USB 2.0 Table 9-3/9-4.
        let setup = SetupPacket {
            request_type: 0x80,
            request: 6,
            value: 0x0100,
            index: 0,
            length: 18,
        };
        assert_eq!(setup.to_bytes(), [0x80, 6, 0, 1, 0, 0, 18, 0]);
        assert!(setup.is_in());
    }
}
