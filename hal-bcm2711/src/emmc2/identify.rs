//! Card identification: SD (SD Physical Layer §4.2) and eMMC (JESD84-B51 §6.4) bring-up.
//!
//! From the controller reset to a selected card at its fastest supported
//! non-UHS timing and widest working bus: what [`Emmc2::init`] runs. The
//! commands go through the transfer engine in the parent module.

use core::time::Duration;

use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

use super::registers::{
    AUTO_CMD_ERROR_HOST_CONTROL_2, Bus, CAPABILITIES_0, CLOCK_CONTROL, HOST_CONTROL_1,
};
use super::{
    BLOCK_SIZE, BusWidth, CardInfo, CardType, Command, DATA_TIMEOUT_COUNTER_MAX, EMMC_INIT_TIMEOUT,
    Emmc2, Emmc2Error, Emmc2Wait, INTERRUPTS_ENABLED, OP_COND_POLL_INTERVAL, READ_TIMEOUT,
    RegisterError, Reset, SD_INIT_TIMEOUT, Unsupported, card, clock,
};
use crate::generic_timer::{Deadline, delay};

/// CMD8 argument: VHS 0b0001 (2.7-3.6 V) and check pattern 0xAA (SD
/// Physical Layer §4.3.13, Table 4-18).
const SD_IF_COND_ARGUMENT: u32 = 0x1aa;

/// ACMD6 argument for a 4-bit bus (SD Physical Layer §4.7.4, "ACMD6":
/// bus width [1:0] = 0b10).
const SD_BUS_WIDTH_4: u32 = 0b10;

/// The RCA zboot assigns to an eMMC with CMD3 (any non-zero value; Linux
/// uses 1 as well).
pub(super) const EMMC_RCA: u16 = 1;

/// Host Control 2 UHS Mode Select values (SD Host Controller spec §2.2.24;
/// Linux `sdhci.h` `SDHCI_CTRL_UHS_SDR12` and `SDHCI_CTRL_UHS_DDR50`).
const UHS_MODE_SDR: u32 = 0b000;
const UHS_MODE_DDR50: u32 = 0b100;

impl<B: Bus> Emmc2<B> {
    pub(super) fn reset_controller(&mut self) -> Result<(), Emmc2Error> {
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
    pub(super) fn power_on(&mut self) -> Result<(), Emmc2Error> {
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
    pub(super) fn identify_sd(&mut self) -> Result<Option<CardInfo>, Emmc2Error> {
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
    pub(super) fn identify_emmc(&mut self) -> Result<CardInfo, Emmc2Error> {
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
}
