//! Enumeration: address and configure each device, walk hubs to a bounded depth, find the first mass-storage interface.
//!
//! Per device (USB 2.0 §9.1.2 "Bus Enumeration"): an 8-byte
//! GET_DESCRIPTOR(device) at address 0 learns bMaxPacketSize0, SET_ADDRESS
//! gives the next free address, then the full device descriptor, the
//! configuration (header first for wTotalLength, then all of it, bounded
//! by [`CONFIGURATION_LIMIT`]) and SET_CONFIGURATION. A hub (§11.23,
//! §11.24) gets its ports powered, waits bPwrOn2PwrGood, and every
//! connected port is reset and its device enumerated the same way, at
//! most [`MAX_HUB_DEPTH`] hubs deep (USB 2.0 allows 5 tiers of hubs,
//! §4.1.1; zboot needs QEMU's one and a real board's one or two).

use core::fmt;
use core::time::Duration;

use super::descriptor::{
    self, ConfigurationInfo, DescriptorError, DeviceDescriptor, InterfaceInfo, descriptor_type,
};
use super::hub::{self, HubDescriptor, PortStatus, feature};
use super::{
    ControlData, Direction, Endpoint, HostController, HubPort, Speed, TransactionTranslator,
    TransferError, TransferKind,
};

/// Hubs below the root port zboot walks through.
pub const MAX_HUB_DEPTH: u8 = 3;
/// Largest configuration descriptor set zboot reads.
pub const CONFIGURATION_LIMIT: usize = 512;
/// SET_ADDRESS recovery: 2 ms before the new address is used (USB 2.0
/// §9.2.6.3).
pub const SET_ADDRESS_RECOVERY: Duration = Duration::from_millis(2);
/// Device attach after port power: TSIGATT 100 ms (USB 2.0 Table 7-14).
pub const ATTACH_SIGNAL_TIME: Duration = Duration::from_millis(100);
/// Attach debounce: TATTDB 100 ms (USB 2.0 §7.1.7.3).
pub const ATTACH_DEBOUNCE: Duration = Duration::from_millis(100);
/// Bound on a hub's port reset: the hub drives reset 10–20 ms (TDRST,
/// USB 2.0 §7.1.7.5, §11.5.1.5); 500 ms covers slow hubs (Linux
/// `hub.c` `HUB_RESET_TIMEOUT` is 800 ms with retries).
pub const HUB_PORT_RESET_TIMEOUT: Duration = Duration::from_millis(500);
/// Reset recovery: TRSTRCY 10 ms (USB 2.0 §7.1.7.5).
pub const RESET_RECOVERY: Duration = Duration::from_millis(10);
/// Pause between port status polls.
const PORT_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The enumeration step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// GET_DESCRIPTOR(device, 8) at address 0.
    DeviceDescriptorHead,
    /// SET_ADDRESS.
    SetAddress,
    /// GET_DESCRIPTOR(device, 18).
    DeviceDescriptor,
    /// GET_DESCRIPTOR(configuration).
    Configuration,
    /// SET_CONFIGURATION.
    SetConfiguration,
    /// GetHubDescriptor.
    HubDescriptor,
    /// SetPortFeature(PORT_POWER).
    HubPortPower,
    /// GetPortStatus / ClearPortFeature.
    HubPortStatus,
    /// SetPortFeature(PORT_RESET) and its completion.
    HubPortReset,
}

/// Why no mass-storage device came out of enumeration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnumerationError {
    /// Every device answered, none has a Bulk-Only SCSI interface.
    NoMassStorage { devices: u8, hubs: u8 },
    /// A transfer failed (the device stopped answering, stalled, ...).
    Transfer { step: Step, error: TransferError },
    /// A descriptor was malformed.
    Descriptor { step: Step, error: DescriptorError },
    /// A hub port did not finish its reset in time.
    HubPortResetTimeout { hub_address: u8, port: u8 },
    /// A hub port stayed disabled after its reset.
    HubPortNotEnabled { hub_address: u8, port: u8 },
    /// More than 127 devices (addresses exhausted).
    AddressesExhausted,
}

impl fmt::Display for EnumerationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMassStorage { devices, hubs } => write!(
                f,
                "no USB mass-storage device ({devices} device(s), {hubs} hub(s) enumerated)"
            ),
            Self::Transfer { step, error } => write!(f, "USB {step:?}: {error}"),
            Self::Descriptor { step, error } => write!(f, "USB {step:?}: {error}"),
            Self::HubPortResetTimeout { hub_address, port } => {
                write!(f, "hub {hub_address} port {port}: reset did not complete")
            }
            Self::HubPortNotEnabled { hub_address, port } => {
                write!(f, "hub {hub_address} port {port}: not enabled after reset")
            }
            Self::AddressesExhausted => f.write_str("USB addresses exhausted"),
        }
    }
}

/// The mass-storage device found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundDevice {
    /// Its endpoint 0 (address, speed, bMaxPacketSize0, translator).
    pub control: Endpoint,
    /// Its device descriptor.
    pub descriptor: DeviceDescriptor,
    /// The Bulk-Only SCSI interface.
    pub interface: InterfaceInfo,
    /// Hubs between the root port and the device.
    pub hub_depth: u8,
    /// The hub port it hangs on (0 = the root port).
    pub port: u8,
    /// That hub and port (`None` on the root port): where an unplug shows.
    pub parent: Option<HubPort>,
}

/// A device the walk addressed and configured (for diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenDevice {
    /// Its USB address.
    pub address: u8,
    /// Hubs between the root port and the device.
    pub depth: u8,
    /// The hub port it hangs on (0 = the root port).
    pub port: u8,
    /// Its speed.
    pub speed: Speed,
    /// Its device descriptor.
    pub descriptor: DeviceDescriptor,
    /// Whether it has a Bulk-Only SCSI interface.
    pub mass_storage: bool,
    /// Whether it is a hub.
    pub hub: bool,
}

/// Walks the bus from the root port; keeps the count of what it saw.
#[derive(Debug, Default)]
pub struct Enumerator {
    next_address: u8,
    /// Devices addressed so far (hubs included).
    pub devices: u8,
    /// Hubs configured so far.
    pub hubs: u8,
    last_error: Option<EnumerationError>,
    /// Called with each device configured, in walk order.
    pub on_device: Option<fn(&SeenDevice)>,
    /// Walk the whole tree instead of stopping at the first mass-storage device.
    walk_all: bool,
}

impl Enumerator {
    /// A walk that hands out addresses from 1.
    pub const fn new() -> Self {
        Self {
            next_address: 1,
            devices: 0,
            hubs: 0,
            last_error: None,
            on_device: None,
            walk_all: false,
        }
    }

    /// Enumerates everything behind the root port (reset, at `speed`), calling
    /// [`Enumerator::on_device`] for each device, without stopping at mass storage.
    /// Devices that fail are skipped; returns the last failure, if any.
    pub fn walk<H: HostController>(
        &mut self,
        host: &mut H,
        speed: Speed,
    ) -> Result<(), EnumerationError> {
        self.walk_all = true;
        self.enumerate(host, speed, None, 0, None)?;
        self.last_error.map_or(Ok(()), Err)
    }

    /// Enumerates the device just reset on the root port (at `speed`) and
    /// everything behind it, returning the first mass-storage device.
    /// Devices that fail are skipped; if none is found, the last failure
    /// is returned (or [`EnumerationError::NoMassStorage`]).
    pub fn find_mass_storage<H: HostController>(
        &mut self,
        host: &mut H,
        speed: Speed,
    ) -> Result<FoundDevice, EnumerationError> {
        match self.enumerate(host, speed, None, 0, None) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(self.last_error.unwrap_or(EnumerationError::NoMassStorage {
                devices: self.devices,
                hubs: self.hubs,
            })),
            Err(error) => Err(error),
        }
    }

    fn enumerate<H: HostController>(
        &mut self,
        host: &mut H,
        speed: Speed,
        translator: Option<TransactionTranslator>,
        depth: u8,
        parent: Option<HubPort>,
    ) -> Result<Option<FoundDevice>, EnumerationError> {
        let transfer = |step| move |error| EnumerationError::Transfer { step, error };
        let malformed = |step| move |error| EnumerationError::Descriptor { step, error };
        // Default pipe: 64 bytes for high speed, 8 otherwise until the
        // descriptor says (USB 2.0 §5.5.3).
        let mut control = Endpoint {
            device_address: 0,
            speed,
            number: 0,
            direction: Direction::Out,
            kind: TransferKind::Control,
            max_packet_size: if speed == Speed::High { 64 } else { 8 },
            translator,
        };
        let mut bytes = [0u8; CONFIGURATION_LIMIT];
        let head = descriptor::get_descriptor(descriptor_type::DEVICE, 0, 0, 8);
        let got = host
            .control_transfer(&control, &head, ControlData::In(&mut bytes[..8]))
            .map_err(transfer(Step::DeviceDescriptorHead))?;
        let max_packet_size0 = descriptor::max_packet_size0(&bytes[..got])
            .map_err(malformed(Step::DeviceDescriptorHead))?;

        if self.next_address > 127 {
            return Err(EnumerationError::AddressesExhausted);
        }
        let address = self.next_address;
        self.next_address += 1;
        control.max_packet_size = u16::from(max_packet_size0);
        host.control_transfer(
            &control,
            &descriptor::set_address(address),
            ControlData::None,
        )
        .map_err(transfer(Step::SetAddress))?;
        host.delay(SET_ADDRESS_RECOVERY);
        control.device_address = address;
        self.devices += 1;

        let full = descriptor::get_descriptor(descriptor_type::DEVICE, 0, 0, 18);
        let got = host
            .control_transfer(&control, &full, ControlData::In(&mut bytes[..18]))
            .map_err(transfer(Step::DeviceDescriptor))?;
        let device =
            DeviceDescriptor::parse(&bytes[..got]).map_err(malformed(Step::DeviceDescriptor))?;

        let header = descriptor::get_descriptor(descriptor_type::CONFIGURATION, 0, 0, 9);
        let got = host
            .control_transfer(&control, &header, ControlData::In(&mut bytes[..9]))
            .map_err(transfer(Step::Configuration))?;
        let total = descriptor::configuration_total_length(&bytes[..got])
            .map_err(malformed(Step::Configuration))?;
        if usize::from(total) > CONFIGURATION_LIMIT {
            return Err(EnumerationError::Descriptor {
                step: Step::Configuration,
                error: DescriptorError::ConfigurationTooLong {
                    total,
                    limit: CONFIGURATION_LIMIT,
                },
            });
        }
        let whole = descriptor::get_descriptor(descriptor_type::CONFIGURATION, 0, 0, total);
        let got = host
            .control_transfer(
                &control,
                &whole,
                ControlData::In(&mut bytes[..usize::from(total)]),
            )
            .map_err(transfer(Step::Configuration))?;
        let configuration =
            ConfigurationInfo::parse(&bytes[..got]).map_err(malformed(Step::Configuration))?;
        host.control_transfer(
            &control,
            &descriptor::set_configuration(configuration.value),
            ControlData::None,
        )
        .map_err(transfer(Step::SetConfiguration))?;

        let is_hub = device.class == descriptor::class::HUB || configuration.has_hub_interface();
        let mass_storage = configuration.mass_storage_interface();
        if let Some(report) = self.on_device {
            report(&SeenDevice {
                address,
                depth,
                port: parent.map_or(0, |parent| parent.port),
                speed,
                descriptor: device,
                mass_storage: mass_storage.is_some(),
                hub: is_hub,
            });
        }
        if let (Some(interface), false) = (mass_storage, self.walk_all) {
            return Ok(Some(FoundDevice {
                control,
                descriptor: device,
                interface,
                hub_depth: depth,
                port: parent.map_or(0, |parent| parent.port),
                parent,
            }));
        }
        if is_hub && depth < MAX_HUB_DEPTH {
            self.hubs += 1;
            return self.walk_hub(host, &control, depth);
        }
        Ok(None)
    }

    fn walk_hub<H: HostController>(
        &mut self,
        host: &mut H,
        hub_control: &Endpoint,
        depth: u8,
    ) -> Result<Option<FoundDevice>, EnumerationError> {
        let transfer = |step| move |error| EnumerationError::Transfer { step, error };
        let hub_address = hub_control.device_address;
        let mut bytes = [0u8; 16];
        let got = host
            .control_transfer(
                hub_control,
                &hub::get_hub_descriptor(bytes.len() as u16),
                ControlData::In(&mut bytes),
            )
            .map_err(transfer(Step::HubDescriptor))?;
        let hub =
            HubDescriptor::parse(&bytes[..got]).map_err(|error| EnumerationError::Descriptor {
                step: Step::HubDescriptor,
                error,
            })?;
        let ports = hub.ports.min(hub::MAX_PORTS);
        for port in 1..=ports {
            host.control_transfer(
                hub_control,
                &hub::set_port_feature(port, feature::PORT_POWER),
                ControlData::None,
            )
            .map_err(transfer(Step::HubPortPower))?;
        }
        // bPwrOn2PwrGood, then time for devices to signal attach.
        host.delay(Duration::from_millis(u64::from(hub.power_on_to_good_ms)));
        host.delay(ATTACH_SIGNAL_TIME);

        for port in 1..=ports {
            let status = port_status(host, hub_control, port)?;
            if !status.connected() {
                continue;
            }
            host.control_transfer(
                hub_control,
                &hub::clear_port_feature(port, feature::C_PORT_CONNECTION),
                ControlData::None,
            )
            .map_err(transfer(Step::HubPortStatus))?;
            host.delay(ATTACH_DEBOUNCE);
            let status = match reset_hub_port(host, hub_control, port) {
                Ok(status) => status,
                Err(error) => {
                    self.last_error = Some(error);
                    continue;
                }
            };
            let speed = status.speed();
            // Full/low-speed devices below a high-speed hub go through
            // that hub's transaction translator (USB 2.0 §11.14); deeper
            // full-speed hubs keep the translator of the nearest one.
            let translator = if hub_control.speed == Speed::High && speed != Speed::High {
                Some(TransactionTranslator { hub_address, port })
            } else {
                hub_control.translator
            };
            let parent = HubPort {
                hub: *hub_control,
                port,
            };
            match self.enumerate(host, speed, translator, depth + 1, Some(parent)) {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(error) => self.last_error = Some(error),
            }
        }
        Ok(None)
    }
}

fn port_status<H: HostController>(
    host: &mut H,
    hub_control: &Endpoint,
    port: u8,
) -> Result<PortStatus, EnumerationError> {
    let mut bytes = [0u8; 4];
    let got = host
        .control_transfer(
            hub_control,
            &hub::get_port_status(port),
            ControlData::In(&mut bytes),
        )
        .map_err(|error| EnumerationError::Transfer {
            step: Step::HubPortStatus,
            error,
        })?;
    PortStatus::parse(&bytes[..got]).ok_or(EnumerationError::Descriptor {
        step: Step::HubPortStatus,
        error: DescriptorError::Truncated { needed: 4, got },
    })
}

/// SetPortFeature(PORT_RESET), poll until C_PORT_RESET, clear it, check
/// the port is enabled, wait reset recovery.
fn reset_hub_port<H: HostController>(
    host: &mut H,
    hub_control: &Endpoint,
    port: u8,
) -> Result<PortStatus, EnumerationError> {
    let hub_address = hub_control.device_address;
    host.control_transfer(
        hub_control,
        &hub::set_port_feature(port, feature::PORT_RESET),
        ControlData::None,
    )
    .map_err(|error| EnumerationError::Transfer {
        step: Step::HubPortReset,
        error,
    })?;
    let timer = host.start_timer(HUB_PORT_RESET_TIMEOUT);
    let status = loop {
        host.delay(PORT_POLL_INTERVAL);
        let status = port_status(host, hub_control, port)?;
        if status.reset_changed() && !status.resetting() {
            break status;
        }
        if host.expired(&timer) {
            return Err(EnumerationError::HubPortResetTimeout { hub_address, port });
        }
    };
    host.control_transfer(
        hub_control,
        &hub::clear_port_feature(port, feature::C_PORT_RESET),
        ControlData::None,
    )
    .map_err(|error| EnumerationError::Transfer {
        step: Step::HubPortReset,
        error,
    })?;
    if !status.enabled() {
        return Err(EnumerationError::HubPortNotEnabled { hub_address, port });
    }
    host.delay(RESET_RECOVERY);
    Ok(status)
}
