//! The hub class (USB 2.0 chapter 11): hub descriptor, port features and port status.

use super::SetupPacket;
use super::descriptor::{DescriptorError, descriptor_type, request};

/// Port feature selectors (USB 2.0 Table 11-17).
pub mod feature {
    /// PORT_RESET.
    pub const PORT_RESET: u16 = 4;
    /// PORT_POWER.
    pub const PORT_POWER: u16 = 8;
    /// C_PORT_CONNECTION.
    pub const C_PORT_CONNECTION: u16 = 16;
    /// C_PORT_ENABLE.
    pub const C_PORT_ENABLE: u16 = 17;
    /// C_PORT_RESET.
    pub const C_PORT_RESET: u16 = 20;
}

/// Ports zboot handles per hub (the descriptor's bitmaps allow 255).
pub const MAX_PORTS: u8 = 15;

/// GetHubDescriptor (§11.24.2.5): class request to the device.
pub const fn get_hub_descriptor(length: u16) -> SetupPacket {
    SetupPacket {
        request_type: 0xa0,
        request: request::GET_DESCRIPTOR,
        value: (descriptor_type::HUB as u16) << 8,
        index: 0,
        length,
    }
}

/// SetPortFeature (§11.24.2.13).
pub const fn set_port_feature(port: u8, feature: u16) -> SetupPacket {
    SetupPacket {
        request_type: 0x23,
        request: request::SET_FEATURE,
        value: feature,
        index: port as u16,
        length: 0,
    }
}

/// ClearPortFeature (§11.24.2.2).
pub const fn clear_port_feature(port: u8, feature: u16) -> SetupPacket {
    SetupPacket {
        request_type: 0x23,
        request: request::CLEAR_FEATURE,
        value: feature,
        index: port as u16,
        length: 0,
    }
}

/// GetPortStatus (§11.24.2.7): 4 bytes, wPortStatus then wPortChange.
pub const fn get_port_status(port: u8) -> SetupPacket {
    SetupPacket {
        request_type: 0xa3,
        request: request::GET_STATUS,
        value: 0,
        index: port as u16,
        length: 4,
    }
}

/// The hub descriptor's useful fields (§11.23.2.1, Table 11-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubDescriptor {
    /// bNbrPorts.
    pub ports: u8,
    /// wHubCharacteristics.
    pub characteristics: u16,
    /// bPwrOn2PwrGood in milliseconds (the field counts 2 ms units).
    pub power_on_to_good_ms: u16,
}

impl HubDescriptor {
    /// Parses the first 7 bytes (the fixed part).
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        if bytes.len() < 7 {
            return Err(DescriptorError::Truncated {
                needed: 7,
                got: bytes.len(),
            });
        }
        if bytes[1] != descriptor_type::HUB {
            return Err(DescriptorError::WrongType {
                expected: descriptor_type::HUB,
                found: bytes[1],
            });
        }
        Ok(Self {
            ports: bytes[2],
            characteristics: u16::from_le_bytes([bytes[3], bytes[4]]),
            power_on_to_good_ms: u16::from(bytes[5]) * 2,
        })
    }
}

/// wPortStatus and wPortChange (§11.24.2.7.1, .2; Tables 11-21, 11-22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStatus {
    /// wPortStatus.
    pub status: u16,
    /// wPortChange.
    pub change: u16,
}

impl PortStatus {
    /// From the 4 bytes of GetPortStatus.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [s0, s1, c0, c1, ..] => Some(Self {
                status: u16::from_le_bytes([*s0, *s1]),
                change: u16::from_le_bytes([*c0, *c1]),
            }),
            _ => None,
        }
    }
    /// PORT_CONNECTION (bit 0).
    pub const fn connected(&self) -> bool {
        self.status & 1 != 0
    }
    /// PORT_ENABLE (bit 1).
    pub const fn enabled(&self) -> bool {
        self.status & (1 << 1) != 0
    }
    /// PORT_OVER_CURRENT (bit 3).
    pub const fn overcurrent(&self) -> bool {
        self.status & (1 << 3) != 0
    }
    /// PORT_RESET (bit 4): reset signalling in progress.
    pub const fn resetting(&self) -> bool {
        self.status & (1 << 4) != 0
    }
    /// C_PORT_RESET (change bit 4): the reset finished.
    pub const fn reset_changed(&self) -> bool {
        self.change & (1 << 4) != 0
    }
    /// C_PORT_CONNECTION (change bit 0): a device came or went since the
    /// bit was last cleared.
    pub const fn connection_changed(&self) -> bool {
        self.change & 1 != 0
    }
    /// The attached device's speed: PORT_LOW_SPEED (bit 9),
    /// PORT_HIGH_SPEED (bit 10), else full speed.
    pub const fn speed(&self) -> super::Speed {
        if self.status & (1 << 9) != 0 {
            super::Speed::Low
        } else if self.status & (1 << 10) != 0 {
            super::Speed::High
        } else {
            super::Speed::Full
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usb::Speed;

    #[test]
    fn hub_descriptor_of_qemu_usb_hub() {
        // QEMU dev-hub.c: 8 ports, bPwrOn2PwrGood 0xff... any value works.
        let bytes = [
            0x0b, 0x29, 8, 0x0a, 0x00, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff,
        ];
        let hub = HubDescriptor::parse(&bytes).expect("valid");
        assert_eq!(hub.ports, 8);
        assert_eq!(hub.power_on_to_good_ms, 2);
        assert!(HubDescriptor::parse(&bytes[..6]).is_err());
    }

    #[test]
    fn port_status_bits() {
        let status = PortStatus::parse(&[0x03, 0x01, 0x10, 0x00]).expect("4 bytes");
        assert!(status.connected() && status.enabled() && status.reset_changed());
        assert!(!status.resetting());
        assert_eq!(status.speed(), Speed::Full);
        let low = PortStatus::parse(&[0x01, 0x02, 0, 0]).expect("4 bytes");
        assert_eq!(low.speed(), Speed::Low);
        let high = PortStatus::parse(&[0x01, 0x04, 0, 0]).expect("4 bytes");
        assert_eq!(high.speed(), Speed::High);
        assert_eq!(PortStatus::parse(&[1, 2, 3]), None);
    }

    #[test]
    fn class_requests() {
        assert_eq!(
            set_port_feature(2, feature::PORT_RESET).to_bytes(),
            [0x23, 3, 4, 0, 2, 0, 0, 0]
        );
        assert_eq!(get_port_status(1).to_bytes(), [0xa3, 0, 0, 0, 1, 0, 4, 0]);
        assert_eq!(
            get_hub_descriptor(71).to_bytes(),
            [0xa0, 6, 0, 0x29, 0, 0, 71, 0]
        );
    }
}
