//! What the card tells about itself: OCR bits, the CSD, the eMMC EXT_CSD, SD switch status.
//!
//! Field positions: SD Physical Layer Simplified Specification §5.1 (OCR,
//! Table 5-1), §5.3.2 (CSD Version 1.0, Table 5-4), §5.3.3 (CSD Version 2.0,
//! Table 5-16), §4.3.10 (Switch Function status, Table 4-13); JEDEC eMMC 5.1
//! JESD84-B51 §7.3 (CSD) and §7.4 (EXT_CSD, Table 49: SEC_COUNT [215:212],
//! DEVICE_TYPE [196], HS_TIMING [185], BUS_WIDTH [183], GENERIC_CMD6_TIME
//! [248]). All decoders are pure and never panic on any input.

use core::fmt;

/// Bytes in one block: the only block length zboot uses (fixed for SDHC,
/// SDXC and sector-mode eMMC, set with CMD16 on the others).
pub const BLOCK_SIZE: usize = 512;

/// OCR bit 31: card power-up status ("busy" bit; 1 = initialisation done).
pub const OCR_POWER_UP_DONE: u32 = 1 << 31;
/// OCR bit 30: Card Capacity Status (SD: SDHC/SDXC) / access mode bit
/// (eMMC: bits 30..29 = 0b10 sector mode).
pub const OCR_CCS: u32 = 1 << 30;
/// OCR bits 23..15: the 2.7-3.6 V window (SD Table 5-1; eMMC "high voltage"
/// range).
pub const OCR_VOLTAGE_2V7_3V6: u32 = 0x00ff_8000;
/// eMMC OCR bits 30..29 = 0b10: sector (block) addressing, the host's
/// answer to a device larger than 2 GB (JESD84-B51 §7.1 Table 46).
pub const EMMC_OCR_SECTOR_MODE: u32 = 0b10 << 29;
/// eMMC OCR access-mode mask (bits 30..29).
pub const EMMC_OCR_ACCESS_MODE_MASK: u32 = 0b11 << 29;

/// The kind of card found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardType {
    /// SD Standard Capacity (CSD 1.0, up to 2 GB): byte addressing.
    SdStandardCapacity,
    /// SD High/Extended Capacity (CSD 2.0: SDHC up to 32 GB, SDXC above):
    /// block addressing.
    SdHighCapacity,
    /// eMMC (JEDEC), sector or byte addressing per its OCR.
    Emmc,
}

impl fmt::Display for CardType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SdStandardCapacity => "SDSC",
            Self::SdHighCapacity => "SDHC/SDXC",
            Self::Emmc => "eMMC",
        })
    }
}

/// Data bus width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BusWidth {
    One = 1,
    Four = 4,
    Eight = 8,
}

/// What `Emmc2::init` found and set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardInfo {
    /// SD or eMMC and its capacity class.
    pub card_type: CardType,
    /// Whether commands take block numbers (SDHC/SDXC, sector-mode eMMC)
    /// rather than byte addresses.
    pub block_addressing: bool,
    /// Relative card address.
    pub rca: u16,
    /// Capacity in 512-byte blocks.
    pub blocks: u64,
    /// Bus width in use.
    pub bus_width: BusWidth,
    /// High-speed timing in use.
    pub high_speed: bool,
    /// eMMC dual data rate at 52 MHz (DDR52) in use: two transfers per clock.
    pub ddr52: bool,
    /// The SD clock the controller produces, in Hz.
    pub clock_hz: u32,
    /// The CID register (manufacturer, product name, serial), bits 127..8
    /// as the controller returns them, shifted back into place.
    pub cid: u128,
    /// eMMC: the size of each of the two boot partitions in bytes (EXT_CSD
    /// BOOT_SIZE_MULT × 128 KiB), 0 when there are none (and on SD).
    pub boot_partition_bytes: u32,
    /// eMMC: the partition EXT_CSD PARTITION_CONFIG selected for access when the
    /// driver found the device (1, 2 boot; 3 RPMB; 4..7 general purpose), from
    /// which it switched to the user area; 0 when the user area was selected.
    pub switched_from_partition: u8,
}

impl CardInfo {
    /// Capacity in bytes.
    pub const fn capacity_bytes(&self) -> u64 {
        self.blocks * BLOCK_SIZE as u64
    }

    /// The CID's manufacturer ID (bits 127..120).
    pub const fn manufacturer_id(&self) -> u8 {
        (self.cid >> 120) as u8
    }

    /// The CID's product name: 5 ASCII characters on SD (bits 103..64),
    /// 6 on eMMC (bits 103..56).
    pub fn product_name(&self) -> [u8; 6] {
        let bytes = self.cid.to_be_bytes();
        let mut name = [b' '; 6];
        let length = if self.card_type == CardType::Emmc {
            6
        } else {
            5
        };
        for (slot, &byte) in name.iter_mut().zip(&bytes[3..3 + length]) {
            *slot = if byte.is_ascii_graphic() { byte } else { b'?' };
        }
        name
    }
}

impl fmt::Display for CardInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.product_name();
        let name = core::str::from_utf8(&name).unwrap_or("?");
        write!(
            f,
            "{} card \"{}\" (manufacturer {:#04x}), RCA {:#06x}, {} blocks ({} MiB), {} addressing, {}-bit bus, {} Hz{}",
            self.card_type,
            name.trim_end(),
            self.manufacturer_id(),
            self.rca,
            self.blocks,
            self.capacity_bytes() >> 20,
            if self.block_addressing {
                "block"
            } else {
                "byte"
            },
            self.bus_width as u8,
            self.clock_hz,
            if self.ddr52 {
                " DDR52"
            } else if self.high_speed {
                " high speed"
            } else {
                ""
            },
        )?;
        if self.boot_partition_bytes != 0 {
            write!(
                f,
                ", boot partitions 2 × {} KiB",
                self.boot_partition_bytes >> 10
            )?;
        }
        if self.switched_from_partition != 0 {
            write!(
                f,
                ", switched to the user area from partition {}",
                self.switched_from_partition
            )?;
        }
        Ok(())
    }
}

/// Why a CSD or EXT_CSD could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// CSD_STRUCTURE (bits 127..126) is not one this driver knows (SD:
    /// 0b10 is SDUC, CSD 3.0; 0b11 reserved).
    UnknownCsdStructure(u8),
    /// The register describes a capacity of 0 blocks.
    ZeroCapacity,
}

/// Rebuilds a 136-bit R2 response (CID/CSD) from the four Response
/// registers: the controller stores response bits 127..8 (the CRC7 and end
/// bit are dropped) in RESPONSE[119:0] (SD Host Controller spec §2.2.7,
/// Table 2-11), so the register contents are shifted left by 8 and the
/// CRC byte reads 0.
pub const fn r2_from_registers(response: [u32; 4]) -> u128 {
    let raw = (response[0] as u128)
        | ((response[1] as u128) << 32)
        | ((response[2] as u128) << 64)
        | ((response[3] as u128) << 96);
    raw << 8
}

/// Bits `high..=low` of a 128-bit register.
const fn bits(register: u128, high: u32, low: u32) -> u32 {
    ((register >> low) & ((1u128 << (high - low + 1)) - 1)) as u32
}

/// A decoded CSD, as much as zboot needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Csd {
    /// CSD_STRUCTURE [127:126].
    pub structure: u8,
    /// Capacity in 512-byte blocks, from C_SIZE (for an eMMC larger than
    /// 2 GB this is not meaningful: the EXT_CSD's SEC_COUNT is).
    pub blocks: u64,
    /// CCC [95:84]: card command classes supported.
    pub command_classes: u16,
    /// eMMC SPEC_VERS [125:122] (system specification version; 4 and up
    /// have an EXT_CSD). Meaningless on SD (reserved bits).
    pub emmc_spec_version: u8,
}

impl Csd {
    /// Command class 10 ("switch"): CMD6 SWITCH_FUNC is supported.
    pub const fn supports_switch(&self) -> bool {
        self.command_classes & (1 << 10) != 0
    }
}

/// Decodes an SD card's CSD (full 128-bit value as [`r2_from_registers`]
/// returns it).
///
/// - Version 1.0 (SDSC, §5.3.2): capacity = (C_SIZE + 1) x 2^(C_SIZE_MULT +
///   2) x 2^READ_BL_LEN bytes, with C_SIZE [73:62], C_SIZE_MULT [49:47],
///   READ_BL_LEN [83:80].
/// - Version 2.0 (SDHC/SDXC, §5.3.3): capacity = (C_SIZE + 1) x 512 KiB,
///   with C_SIZE [69:48].
pub fn decode_sd_csd(csd: u128) -> Result<Csd, RegisterError> {
    let structure = bits(csd, 127, 126) as u8;
    let command_classes = bits(csd, 95, 84) as u16;
    let blocks = match structure {
        0 => csd_v1_blocks(csd),
        1 => (u64::from(bits(csd, 69, 48)) + 1) * 1024,
        other => return Err(RegisterError::UnknownCsdStructure(other)),
    };
    if blocks == 0 {
        return Err(RegisterError::ZeroCapacity);
    }
    Ok(Csd {
        structure,
        blocks,
        command_classes,
        emmc_spec_version: 0,
    })
}

/// Decodes an eMMC's CSD (JESD84-B51 §7.3): the C_SIZE/C_SIZE_MULT/
/// READ_BL_LEN capacity uses the same fields and formula as SD CSD 1.0 and
/// is only valid up to 2 GB; bigger devices report C_SIZE 0xFFF and put
/// the capacity in EXT_CSD SEC_COUNT. CSD_STRUCTURE 0..=3 are all valid.
pub fn decode_emmc_csd(csd: u128) -> Csd {
    Csd {
        structure: bits(csd, 127, 126) as u8,
        blocks: csd_v1_blocks(csd),
        command_classes: bits(csd, 95, 84) as u16,
        emmc_spec_version: bits(csd, 125, 122) as u8,
    }
}

fn csd_v1_blocks(csd: u128) -> u64 {
    let c_size = u64::from(bits(csd, 73, 62));
    let c_size_mult = bits(csd, 49, 47);
    let read_bl_len = bits(csd, 83, 80);
    // (C_SIZE + 1) << (C_SIZE_MULT + 2 + READ_BL_LEN) bytes; the exponent
    // is at most 7 + 2 + 15 = 24, the product at most 2^36: no overflow.
    let bytes = (c_size + 1) << (c_size_mult + 2 + read_bl_len);
    bytes / BLOCK_SIZE as u64
}

/// EXT_CSD byte offsets (JESD84-B51 §7.4, Table 49).
pub mod ext_csd {
    /// BUS_WIDTH [183] (write-only through CMD6): 0 1-bit, 1 4-bit, 2
    /// 8-bit (SDR); 5 4-bit, 6 8-bit (DDR).
    pub const BUS_WIDTH: u8 = 183;

    /// The BUS_WIDTH value for `width` at single data rate.
    pub const fn bus_width_sdr(width: super::BusWidth) -> u8 {
        match width {
            super::BusWidth::One => 0,
            super::BusWidth::Four => 1,
            super::BusWidth::Eight => 2,
        }
    }

    /// The BUS_WIDTH value for `width` at dual data rate (1-bit has none: 0).
    pub const fn bus_width_ddr(width: super::BusWidth) -> u8 {
        match width {
            super::BusWidth::One => 0,
            super::BusWidth::Four => 5,
            super::BusWidth::Eight => 6,
        }
    }
    /// HS_TIMING [185]: 0 backwards compatible, 1 high speed.
    pub const HS_TIMING: u8 = 185;
    /// PARTITION_CONFIG [179]: bit 6 BOOT_ACK, bits 5..3 BOOT_PARTITION_ENABLE,
    /// bits 2..0 PARTITION_ACCESS (0 user area, 1/2 boot, 3 RPMB, 4..7 general
    /// purpose); JESD84-B51 §7.4.69.
    pub const PARTITION_CONFIG: u8 = 179;
    /// PARTITION_CONFIG's PARTITION_ACCESS bits.
    pub const PARTITION_ACCESS_MASK: u8 = 0b111;
    /// PARTITION_SWITCH_TIME [199]: the CMD6 busy limit of a PARTITION_CONFIG
    /// switch, in 10 ms units (Linux `card->ext_csd.part_time`).
    pub const PARTITION_SWITCH_TIME: usize = 199;
    /// BOOT_SIZE_MULT [226]: each boot partition's size in 128 KiB units.
    pub const BOOT_SIZE_MULT: usize = 226;
    /// EXT_CSD_REV [192].
    pub const EXT_CSD_REV: usize = 192;
    /// DEVICE_TYPE [196]: bit 0 HS 26 MHz, bit 1 HS 52 MHz, bit 2 DDR 52 MHz
    /// at 1.8 V or 3 V I/O.
    pub const DEVICE_TYPE: usize = 196;
    /// SEC_COUNT [215:212], little-endian: capacity in 512-byte sectors.
    pub const SEC_COUNT: usize = 212;
    /// GENERIC_CMD6_TIME [248]: the CMD6 busy limit, in 10 ms units.
    pub const GENERIC_CMD6_TIME: usize = 248;
}

/// The EXT_CSD fields zboot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtCsd {
    /// SEC_COUNT: capacity in 512-byte sectors.
    pub sector_count: u32,
    /// DEVICE_TYPE bit 1: high-speed SDR at 52 MHz.
    pub high_speed_52: bool,
    /// DEVICE_TYPE bit 0: high-speed SDR at 26 MHz.
    pub high_speed_26: bool,
    /// DEVICE_TYPE bit 2: high-speed DDR at 52 MHz, 1.8 V or 3 V I/O.
    pub ddr_52: bool,
    /// GENERIC_CMD6_TIME in milliseconds (0: not given).
    pub cmd6_time_ms: u32,
    /// EXT_CSD_REV.
    pub revision: u8,
    /// DEVICE_TYPE as read (the bits above, raw).
    pub device_type: u8,
    /// PARTITION_CONFIG as found.
    pub partition_config: u8,
    /// PARTITION_SWITCH_TIME in milliseconds (0: not given).
    pub partition_switch_time_ms: u32,
    /// Each boot partition's size in bytes (BOOT_SIZE_MULT × 128 KiB).
    pub boot_partition_bytes: u32,
}

/// Decodes the 512-byte EXT_CSD. `None` if `bytes` is shorter than 512.
pub fn decode_ext_csd(bytes: &[u8]) -> Option<ExtCsd> {
    let bytes = bytes.get(..512)?;
    let sec_count = bytes.get(ext_csd::SEC_COUNT..ext_csd::SEC_COUNT + 4)?;
    let device_type = bytes[ext_csd::DEVICE_TYPE];
    Some(ExtCsd {
        sector_count: u32::from_le_bytes([sec_count[0], sec_count[1], sec_count[2], sec_count[3]]),
        high_speed_52: device_type & 0b10 != 0,
        high_speed_26: device_type & 0b01 != 0,
        ddr_52: device_type & 0b100 != 0,
        cmd6_time_ms: u32::from(bytes[ext_csd::GENERIC_CMD6_TIME]) * 10,
        revision: bytes[ext_csd::EXT_CSD_REV],
        device_type,
        partition_config: bytes[usize::from(ext_csd::PARTITION_CONFIG)],
        partition_switch_time_ms: u32::from(bytes[ext_csd::PARTITION_SWITCH_TIME]) * 10,
        boot_partition_bytes: u32::from(bytes[ext_csd::BOOT_SIZE_MULT]) << 17,
    })
}

/// The CMD6 SWITCH argument that writes `value` into EXT_CSD byte `index`
/// (JESD84-B51 §6.10.4, Table 32 "EXT_CSD access mode": Access [25:24] =
/// 0b11 "Write Byte", Index [23:16], Value [15:8], Cmd Set [2:0] = 0).
pub const fn emmc_switch_argument(index: u8, value: u8) -> u32 {
    (0b11 << 24) | ((index as u32) << 16) | ((value as u32) << 8)
}

/// The SD CMD6 SWITCH_FUNC argument that switches function group 1 (access
/// mode) to function 1 (High Speed / SDR25) and leaves groups 2-6
/// unchanged (SD Physical Layer §4.3.10: mode bit 31 = 1 "switch", 0xF =
/// "no influence").
pub const SD_SWITCH_HIGH_SPEED: u32 = 0x80ff_fff1;

/// The function group 1 result of an SD CMD6 status block: bits 379..376
/// of the 512-bit status, which arrives most significant byte first, so
/// byte 16's low nibble (§4.3.10.4, Table 4-13). 0xF means the switch
/// failed. `None` if the block is shorter than 64 bytes.
pub fn sd_switch_group1_result(status: &[u8]) -> Option<u8> {
    if status.len() < 64 {
        return None;
    }
    status.get(16).map(|byte| byte & 0x0f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a CSD with `fields` (high, low, value) set.
    fn csd_with(fields: &[(u32, u32, u128)]) -> u128 {
        let mut csd = 0u128;
        for &(high, low, value) in fields {
            let width = high - low + 1;
            assert!(value < (1u128 << width));
            csd |= value << low;
        }
        csd
    }

    #[test]
    fn decodes_a_csd_v1_sdsc() {
        // 64 MiB: C_SIZE 255, C_SIZE_MULT 7, READ_BL_LEN 9
        // (256 x 512 x 512 bytes) — what QEMU's sd.c builds for 64 MiB.
        let csd = csd_with(&[(73, 62, 255), (49, 47, 7), (83, 80, 9), (95, 84, 0x5f5)]);
        let decoded = decode_sd_csd(csd).unwrap();
        assert_eq!(decoded.structure, 0);
        assert_eq!(decoded.blocks, 64 * 1024 * 1024 / 512);
        assert!(decoded.supports_switch());
        // 2 GB: C_SIZE 4095, C_SIZE_MULT 7, READ_BL_LEN 10.
        let big = csd_with(&[(73, 62, 4095), (49, 47, 7), (83, 80, 10)]);
        assert_eq!(
            decode_sd_csd(big).unwrap().blocks,
            2 * 1024 * 1024 * 1024 / 512
        );
    }

    #[test]
    fn decodes_a_csd_v2_sdhc() {
        // 4 GiB: C_SIZE = 4 GiB / 512 KiB - 1 = 8191.
        let csd = csd_with(&[(127, 126, 1), (69, 48, 8191), (95, 84, 0x5b5)]);
        let decoded = decode_sd_csd(csd).unwrap();
        assert_eq!(decoded.structure, 1);
        assert_eq!(decoded.blocks, 4 * 1024 * 1024 * 2);
        // The largest SDXC: C_SIZE 0x3F_FFFF -> 2 TiB.
        let max = csd_with(&[(127, 126, 1), (69, 48, 0x3f_ffff)]);
        assert_eq!(decode_sd_csd(max).unwrap().blocks, 1u64 << 32);
    }

    #[test]
    fn rejects_unknown_csd_structures() {
        let sduc = csd_with(&[(127, 126, 2)]);
        assert_eq!(
            decode_sd_csd(sduc),
            Err(RegisterError::UnknownCsdStructure(2))
        );
    }

    #[test]
    fn decodes_an_emmc_csd() {
        let csd = csd_with(&[
            (127, 126, 3),
            (125, 122, 4),
            (73, 62, 0xfff),
            (49, 47, 7),
            (83, 80, 9),
        ]);
        let decoded = decode_emmc_csd(csd);
        assert_eq!(decoded.emmc_spec_version, 4);
        assert_eq!(decoded.structure, 3);
        // 0xFFF marks "see SEC_COUNT": the formula gives 1 GiB here.
        assert_eq!(decoded.blocks, 4096 * 512 * 512 / 512);
    }

    #[test]
    fn rebuilds_r2_from_the_response_registers() {
        // QEMU's layout (hw/sd/sdhci.c sdhci_send_command): word 3 holds
        // response bytes 0..2 in bits 23..0, word 0 bytes 11..14 (here
        // byte n has the value n + 1).
        let response = [0x0c0d_0e0f, 0x0809_0a0b, 0x0405_0607, 0x0001_0203];
        let r2 = r2_from_registers(response);
        assert_eq!(
            r2.to_be_bytes(),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0]
        );
        assert_eq!(r2 >> 120, 0x01);
        assert_eq!(r2 & 0xff, 0);
    }

    #[test]
    fn decodes_ext_csd() {
        let mut bytes = [0u8; 512];
        // 32 GB CM4 eMMC-like: SEC_COUNT 0x03A3E000 sectors.
        bytes[212..216].copy_from_slice(&0x03a3_e000u32.to_le_bytes());
        bytes[196] = 0x57; // HS200/HS400/DDR plus HS52 and HS26.
        bytes[248] = 5;
        bytes[192] = 8;
        let decoded = decode_ext_csd(&bytes).unwrap();
        assert_eq!(decoded.sector_count, 0x03a3_e000);
        assert!(decoded.high_speed_52 && decoded.high_speed_26);
        assert!(decoded.ddr_52, "0x57 has bit 2, DDR52 at 1.8/3 V");
        assert_eq!(decoded.cmd6_time_ms, 50);
        assert_eq!(decoded.revision, 8);
        assert_eq!(decode_ext_csd(&bytes[..511]), None);
        // QEMU's unpatched model: HS26 and HS52 only.
        bytes[196] = 0b11;
        assert!(!decode_ext_csd(&bytes).unwrap().ddr_52);
    }

    #[test]
    fn partition_config_and_boot_partitions_are_decoded() {
        let mut bytes = [0u8; 512];
        bytes[212] = 1;
        bytes[179] = 0b0100_1001; // BOOT_ACK, boot partition 1 enabled, boot 1 selected.
        bytes[199] = 3;
        bytes[226] = 8; // 8 × 128 KiB = 1 MiB each.
        let decoded = decode_ext_csd(&bytes).unwrap();
        assert_eq!(decoded.partition_config & ext_csd::PARTITION_ACCESS_MASK, 1);
        assert_eq!(decoded.partition_switch_time_ms, 30);
        assert_eq!(decoded.boot_partition_bytes, 1 << 20);
        // Back to the user area, the boot settings kept: 0x03B3_4800.
        assert_eq!(
            emmc_switch_argument(
                ext_csd::PARTITION_CONFIG,
                decoded.partition_config & !ext_csd::PARTITION_ACCESS_MASK
            ),
            0x03b3_4800
        );
    }

    #[test]
    fn bus_width_values_for_sdr_and_ddr() {
        // JESD84-B51 EXT_CSD BUS_WIDTH [183].
        assert_eq!(ext_csd::bus_width_sdr(BusWidth::Eight), 2);
        assert_eq!(ext_csd::bus_width_sdr(BusWidth::Four), 1);
        assert_eq!(ext_csd::bus_width_sdr(BusWidth::One), 0);
        assert_eq!(ext_csd::bus_width_ddr(BusWidth::Eight), 6);
        assert_eq!(ext_csd::bus_width_ddr(BusWidth::Four), 5);
        // BUS_WIDTH = 6 (8-bit DDR): 0x03B7_0600.
        assert_eq!(
            emmc_switch_argument(ext_csd::BUS_WIDTH, ext_csd::bus_width_ddr(BusWidth::Eight)),
            0x03b7_0600
        );
    }

    #[test]
    fn builds_switch_arguments() {
        // BUS_WIDTH = 2 (8-bit): 0x03B7_0200.
        assert_eq!(emmc_switch_argument(ext_csd::BUS_WIDTH, 2), 0x03b7_0200);
        // HS_TIMING = 1: 0x03B9_0100.
        assert_eq!(emmc_switch_argument(ext_csd::HS_TIMING, 1), 0x03b9_0100);
    }

    #[test]
    fn reads_the_sd_switch_result() {
        let mut status = [0u8; 64];
        status[16] = 0x01;
        assert_eq!(sd_switch_group1_result(&status), Some(1));
        status[16] = 0xff;
        assert_eq!(sd_switch_group1_result(&status), Some(0xf));
        assert_eq!(sd_switch_group1_result(&status[..63]), None);
    }

    #[test]
    fn describes_a_card() {
        extern crate std;
        use std::string::ToString;
        // QEMU's CID: MID 0xAA, OID "XY", PNM "QEMU!".
        let mut cid = [0u8; 16];
        cid[0] = 0xaa;
        cid[1..3].copy_from_slice(b"XY");
        cid[3..8].copy_from_slice(b"QEMU!");
        let info = CardInfo {
            card_type: CardType::SdStandardCapacity,
            block_addressing: false,
            rca: 0x4567,
            blocks: 131_072,
            bus_width: BusWidth::Four,
            high_speed: true,
            ddr52: false,
            clock_hz: 50_000_000,
            cid: u128::from_be_bytes(cid),
            boot_partition_bytes: 0,
            switched_from_partition: 0,
        };
        assert_eq!(&info.product_name(), b"QEMU! ");
        assert_eq!(info.capacity_bytes(), 64 << 20);
        assert_eq!(
            info.to_string(),
            "SDSC card \"QEMU!\" (manufacturer 0xaa), RCA 0x4567, 131072 blocks (64 MiB), \
             byte addressing, 4-bit bus, 50000000 Hz high speed"
        );
    }
}
