//! Standard requests and descriptors (USB 2.0 chapter 9), parsed without trusting any length.

use core::fmt;

use super::SetupPacket;

/// Standard request codes (USB 2.0 Table 9-4).
pub mod request {
    /// GET_STATUS.
    pub const GET_STATUS: u8 = 0;
    /// CLEAR_FEATURE.
    pub const CLEAR_FEATURE: u8 = 1;
    /// SET_FEATURE.
    pub const SET_FEATURE: u8 = 3;
    /// SET_ADDRESS.
    pub const SET_ADDRESS: u8 = 5;
    /// GET_DESCRIPTOR.
    pub const GET_DESCRIPTOR: u8 = 6;
    /// SET_CONFIGURATION.
    pub const SET_CONFIGURATION: u8 = 9;
}

/// Descriptor types (USB 2.0 Table 9-5; hub: Table 11-13).
pub mod descriptor_type {
    /// DEVICE.
    pub const DEVICE: u8 = 1;
    /// CONFIGURATION.
    pub const CONFIGURATION: u8 = 2;
    /// STRING.
    pub const STRING: u8 = 3;
    /// INTERFACE.
    pub const INTERFACE: u8 = 4;
    /// ENDPOINT.
    pub const ENDPOINT: u8 = 5;
    /// Hub descriptor (class-specific, §11.23.2.1).
    pub const HUB: u8 = 0x29;
}

/// ENDPOINT_HALT feature selector (USB 2.0 Table 9-6).
pub const ENDPOINT_HALT: u16 = 0;

/// GET_DESCRIPTOR of a standard descriptor (§9.4.3).
pub const fn get_descriptor(kind: u8, index: u8, language: u16, length: u16) -> SetupPacket {
    SetupPacket {
        request_type: 0x80,
        request: request::GET_DESCRIPTOR,
        value: ((kind as u16) << 8) | index as u16,
        index: language,
        length,
    }
}

/// SET_ADDRESS (§9.4.6).
pub const fn set_address(address: u8) -> SetupPacket {
    SetupPacket {
        request_type: 0x00,
        request: request::SET_ADDRESS,
        value: address as u16,
        index: 0,
        length: 0,
    }
}

/// SET_CONFIGURATION (§9.4.7).
pub const fn set_configuration(value: u8) -> SetupPacket {
    SetupPacket {
        request_type: 0x00,
        request: request::SET_CONFIGURATION,
        value: value as u16,
        index: 0,
        length: 0,
    }
}

/// CLEAR_FEATURE(ENDPOINT_HALT) on endpoint address `endpoint_address`
/// (bit 7 = IN; §9.4.1, Figure 9-2 for wIndex).
pub const fn clear_endpoint_halt(endpoint_address: u8) -> SetupPacket {
    SetupPacket {
        request_type: 0x02,
        request: request::CLEAR_FEATURE,
        value: ENDPOINT_HALT,
        index: endpoint_address as u16,
        length: 0,
    }
}

/// Why descriptor bytes were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    /// Fewer bytes than the descriptor's fixed part.
    Truncated { needed: usize, got: usize },
    /// bDescriptorType is not the one asked for.
    WrongType { expected: u8, found: u8 },
    /// bLength is below the minimum for its type, or runs past the data.
    BadLength { offset: usize, length: u8 },
    /// wTotalLength exceeds what zboot reads.
    ConfigurationTooLong { total: u16, limit: usize },
    /// bMaxPacketSize0 is not one USB 2.0 §9.6.1 allows (8, 16, 32, 64).
    BadMaxPacketSize0 { value: u8 },
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, got } => {
                write!(f, "descriptor truncated ({got} of {needed} bytes)")
            }
            Self::WrongType { expected, found } => {
                write!(
                    f,
                    "descriptor type 0x{found:02x}, expected 0x{expected:02x}"
                )
            }
            Self::BadLength { offset, length } => {
                write!(f, "descriptor at offset {offset} has bad bLength {length}")
            }
            Self::ConfigurationTooLong { total, limit } => {
                write!(f, "configuration of {total} bytes exceeds {limit}")
            }
            Self::BadMaxPacketSize0 { value } => write!(f, "bMaxPacketSize0 {value} invalid"),
        }
    }
}

/// The device descriptor (§9.6.1, Table 9-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDescriptor {
    /// bcdUSB.
    pub usb_version: u16,
    /// bDeviceClass (0x09 = hub).
    pub class: u8,
    /// bDeviceSubClass.
    pub subclass: u8,
    /// bDeviceProtocol.
    pub protocol: u8,
    /// bMaxPacketSize0.
    pub max_packet_size0: u8,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// iManufacturer.
    pub manufacturer_index: u8,
    /// iProduct.
    pub product_index: u8,
    /// iSerialNumber.
    pub serial_index: u8,
    /// bNumConfigurations.
    pub configurations: u8,
}

/// bMaxPacketSize0 from the first 8 bytes of a device descriptor
/// (§9.6.1: offset 7; only 8, 16, 32, 64 are valid).
pub fn max_packet_size0(bytes: &[u8]) -> Result<u8, DescriptorError> {
    check_header(bytes, 8, descriptor_type::DEVICE)?;
    let value = bytes[7];
    if matches!(value, 8 | 16 | 32 | 64) {
        Ok(value)
    } else {
        Err(DescriptorError::BadMaxPacketSize0 { value })
    }
}

fn check_header(bytes: &[u8], needed: usize, kind: u8) -> Result<(), DescriptorError> {
    if bytes.len() < needed || bytes.len() < 2 {
        return Err(DescriptorError::Truncated {
            needed,
            got: bytes.len(),
        });
    }
    if bytes[1] != kind {
        return Err(DescriptorError::WrongType {
            expected: kind,
            found: bytes[1],
        });
    }
    Ok(())
}

fn le16(bytes: &[u8], offset: usize) -> u16 {
    match bytes.get(offset..offset + 2) {
        Some(&[low, high]) => u16::from_le_bytes([low, high]),
        _ => 0,
    }
}

impl DeviceDescriptor {
    /// Size of the descriptor.
    pub const LENGTH: usize = 18;

    /// Parses the 18-byte device descriptor.
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        check_header(bytes, Self::LENGTH, descriptor_type::DEVICE)?;
        if usize::from(bytes[0]) < Self::LENGTH {
            return Err(DescriptorError::BadLength {
                offset: 0,
                length: bytes[0],
            });
        }
        let max_packet_size0 = max_packet_size0(bytes)?;
        Ok(Self {
            usb_version: le16(bytes, 2),
            class: bytes[4],
            subclass: bytes[5],
            protocol: bytes[6],
            max_packet_size0,
            vendor_id: le16(bytes, 8),
            product_id: le16(bytes, 10),
            manufacturer_index: bytes[14],
            product_index: bytes[15],
            serial_index: bytes[16],
            configurations: bytes[17],
        })
    }
}

/// Interface class codes zboot looks for (USB-IF class codes; Mass
/// Storage Class Overview 1.4 §2 for subclass/protocol).
pub mod class {
    /// Hub class (USB 2.0 §11.23.1).
    pub const HUB: u8 = 0x09;
    /// Mass storage.
    pub const MASS_STORAGE: u8 = 0x08;
    /// Mass storage subclass: SCSI transparent command set.
    pub const SCSI_TRANSPARENT: u8 = 0x06;
    /// Mass storage protocol: Bulk-Only Transport.
    pub const BULK_ONLY: u8 = 0x50;
}

/// An endpoint descriptor's useful fields (§9.6.6, Table 9-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// bEndpointAddress (bit 7 = IN).
    pub address: u8,
    /// bmAttributes bits 1..0: 0 control, 1 isochronous, 2 bulk, 3 interrupt.
    pub transfer_type: u8,
    /// wMaxPacketSize bits 10..0.
    pub max_packet_size: u16,
}

impl EndpointInfo {
    /// Whether this is a bulk endpoint.
    pub const fn is_bulk(&self) -> bool {
        self.transfer_type == 2
    }
    /// Whether this endpoint is IN.
    pub const fn is_in(&self) -> bool {
        self.address & 0x80 != 0
    }
}

/// Endpoints zboot keeps per interface (a BBB interface has two, a hub one).
pub const MAX_ENDPOINTS: usize = 4;
/// Interfaces zboot keeps per configuration.
pub const MAX_INTERFACES: usize = 4;

/// An interface (alternate setting 0) and its first endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// bInterfaceNumber.
    pub number: u8,
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
    /// Endpoints kept (at most [`MAX_ENDPOINTS`]).
    pub endpoints: [Option<EndpointInfo>; MAX_ENDPOINTS],
}

impl InterfaceInfo {
    /// Whether this is a Bulk-Only SCSI mass-storage interface.
    pub const fn is_bulk_only_scsi(&self) -> bool {
        self.class == class::MASS_STORAGE
            && self.subclass == class::SCSI_TRANSPARENT
            && self.protocol == class::BULK_ONLY
    }

    /// The first bulk endpoint in `direction_in`'s direction.
    pub fn bulk_endpoint(&self, direction_in: bool) -> Option<EndpointInfo> {
        self.endpoints
            .iter()
            .flatten()
            .find(|endpoint| endpoint.is_bulk() && endpoint.is_in() == direction_in)
            .copied()
    }
}

/// The parts of a configuration descriptor set zboot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigurationInfo {
    /// bConfigurationValue, for SET_CONFIGURATION.
    pub value: u8,
    /// wTotalLength.
    pub total_length: u16,
    /// Interfaces (alternate setting 0 only), at most [`MAX_INTERFACES`].
    pub interfaces: [Option<InterfaceInfo>; MAX_INTERFACES],
}

/// wTotalLength from the 9-byte configuration descriptor header.
pub fn configuration_total_length(bytes: &[u8]) -> Result<u16, DescriptorError> {
    check_header(bytes, 9, descriptor_type::CONFIGURATION)?;
    Ok(le16(bytes, 2))
}

impl ConfigurationInfo {
    /// Parses a whole configuration (configuration, interface, endpoint
    /// and class descriptors, §9.6.3). Each descriptor's bLength is
    /// checked against its type's minimum and the remaining bytes; unknown
    /// descriptors are skipped by their bLength.
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        check_header(bytes, 9, descriptor_type::CONFIGURATION)?;
        let total = usize::from(le16(bytes, 2)).min(bytes.len());
        let mut info = Self {
            value: bytes[5],
            total_length: le16(bytes, 2),
            interfaces: [None; MAX_INTERFACES],
        };
        let mut offset = 0;
        let mut current: Option<usize> = None;
        let mut interface_count = 0;
        while offset + 2 <= total {
            let length = bytes[offset];
            let kind = bytes[offset + 1];
            let minimum = match kind {
                descriptor_type::CONFIGURATION | descriptor_type::INTERFACE => 9,
                descriptor_type::ENDPOINT => 7,
                _ => 2,
            };
            if usize::from(length) < minimum || offset + usize::from(length) > total {
                return Err(DescriptorError::BadLength { offset, length });
            }
            let descriptor = &bytes[offset..offset + usize::from(length)];
            match kind {
                descriptor_type::INTERFACE => {
                    current = None;
                    // Alternate settings other than 0 are not used.
                    if descriptor[3] == 0 && interface_count < MAX_INTERFACES {
                        info.interfaces[interface_count] = Some(InterfaceInfo {
                            number: descriptor[2],
                            class: descriptor[5],
                            subclass: descriptor[6],
                            protocol: descriptor[7],
                            endpoints: [None; MAX_ENDPOINTS],
                        });
                        current = Some(interface_count);
                        interface_count += 1;
                    }
                }
                descriptor_type::ENDPOINT => {
                    if let Some(Some(interface)) = current.map(|index| &mut info.interfaces[index])
                        && let Some(slot) =
                            interface.endpoints.iter_mut().find(|slot| slot.is_none())
                    {
                        *slot = Some(EndpointInfo {
                            address: descriptor[2],
                            transfer_type: descriptor[3] & 0b11,
                            max_packet_size: le16(descriptor, 4) & 0x7ff,
                        });
                    }
                }
                _ => {}
            }
            offset += usize::from(length);
        }
        Ok(info)
    }

    /// The first Bulk-Only SCSI interface with both bulk endpoints.
    pub fn mass_storage_interface(&self) -> Option<InterfaceInfo> {
        self.interfaces.iter().flatten().copied().find(|interface| {
            interface.is_bulk_only_scsi()
                && interface.bulk_endpoint(true).is_some()
                && interface.bulk_endpoint(false).is_some()
        })
    }

    /// Whether an interface is of the hub class.
    pub fn has_hub_interface(&self) -> bool {
        self.interfaces
            .iter()
            .flatten()
            .any(|interface| interface.class == class::HUB)
    }
}

/// Decodes a string descriptor (§9.6.7: UTF-16LE) into ASCII, replacing
/// other characters with '?'; returns the bytes written to `out`.
pub fn string_to_ascii(bytes: &[u8], out: &mut [u8]) -> usize {
    if bytes.len() < 2 || bytes[1] != descriptor_type::STRING {
        return 0;
    }
    let length = usize::from(bytes[0]).min(bytes.len());
    let units = bytes.get(2..length).unwrap_or(&[]).chunks_exact(2);
    let mut written = 0;
    for (unit, slot) in units.zip(out.iter_mut()) {
        let code = u16::from_le_bytes([unit[0], unit[1]]);
        *slot = if (0x20..0x7f).contains(&code) {
            code as u8
        } else {
            b'?'
        };
        written += 1;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU usb-storage's full-speed descriptors (dev-storage.c layout:
    /// one interface, class 8/6/0x50, bulk IN 0x81 and OUT 0x02).
    const STORAGE_CONFIG: [u8; 32] = [
        9, 2, 32, 0, 1, 1, 0, 0xc0, 50, // configuration
        9, 4, 0, 0, 2, 8, 6, 0x50, 0, // interface
        7, 5, 0x81, 2, 64, 0, 0, // bulk IN
        7, 5, 0x02, 2, 64, 0, 0, // bulk OUT
    ];

    #[test]
    fn device_descriptor_fields() {
        let bytes = [
            18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x46, 0x04, 0x01, 0x00, 0, 0, 1, 2, 3, 1,
        ];
        let device = DeviceDescriptor::parse(&bytes).expect("valid");
        assert_eq!(device.max_packet_size0, 64);
        assert_eq!(device.vendor_id, 0x0446);
        assert_eq!(device.product_id, 1);
        assert_eq!(device.product_index, 2);
        assert_eq!(max_packet_size0(&bytes[..8]), Ok(64));
    }

    #[test]
    fn device_descriptor_refusals() {
        assert_eq!(
            DeviceDescriptor::parse(&[18, 1, 0]),
            Err(DescriptorError::Truncated { needed: 18, got: 3 })
        );
        let mut bytes = [0u8; 18];
        bytes[0] = 18;
        bytes[1] = 2;
        assert_eq!(
            DeviceDescriptor::parse(&bytes),
            Err(DescriptorError::WrongType {
                expected: 1,
                found: 2
            })
        );
        bytes[1] = 1;
        bytes[7] = 7;
        assert_eq!(
            DeviceDescriptor::parse(&bytes),
            Err(DescriptorError::BadMaxPacketSize0 { value: 7 })
        );
    }

    #[test]
    fn configuration_with_mass_storage() {
        assert_eq!(configuration_total_length(&STORAGE_CONFIG), Ok(32));
        let config = ConfigurationInfo::parse(&STORAGE_CONFIG).expect("valid");
        assert_eq!(config.value, 1);
        let interface = config.mass_storage_interface().expect("found");
        assert_eq!(interface.bulk_endpoint(true).map(|e| e.address), Some(0x81));
        assert_eq!(
            interface.bulk_endpoint(false).map(|e| e.address),
            Some(0x02)
        );
        assert!(!config.has_hub_interface());
    }

    #[test]
    fn configuration_lengths_are_never_trusted() {
        let mut bad = STORAGE_CONFIG;
        bad[9] = 0; // zero bLength would loop forever if trusted
        assert_eq!(
            ConfigurationInfo::parse(&bad),
            Err(DescriptorError::BadLength {
                offset: 9,
                length: 0
            })
        );
        let mut long = STORAGE_CONFIG;
        long[18] = 40; // endpoint running past the end
        assert!(matches!(
            ConfigurationInfo::parse(&long),
            Err(DescriptorError::BadLength { offset: 18, .. })
        ));
        // wTotalLength larger than the bytes read: parse what is there.
        let mut short_total = STORAGE_CONFIG;
        short_total[2] = 200;
        assert!(ConfigurationInfo::parse(&short_total).is_ok());
        // Every truncation of a valid set parses or fails cleanly.
        for end in 0..STORAGE_CONFIG.len() {
            let _ = ConfigurationInfo::parse(&STORAGE_CONFIG[..end]);
        }
    }

    #[test]
    fn strings_become_ascii() {
        let bytes = [10, 3, b'Q', 0, b'E', 0, b'M', 0, 0xe9, 0];
        let mut out = [0u8; 8];
        let length = string_to_ascii(&bytes, &mut out);
        assert_eq!(&out[..length], b"QEM?");
        assert_eq!(string_to_ascii(&[2, 4], &mut out), 0);
    }

    #[test]
    fn request_encodings() {
        assert_eq!(set_address(5).to_bytes(), [0, 5, 5, 0, 0, 0, 0, 0]);
        assert_eq!(
            clear_endpoint_halt(0x81).to_bytes(),
            [0x02, 1, 0, 0, 0x81, 0, 0, 0]
        );
        assert_eq!(
            get_descriptor(descriptor_type::CONFIGURATION, 0, 0, 9).to_bytes(),
            [0x80, 6, 0, 2, 0, 0, 9, 0]
        );
    }
}
