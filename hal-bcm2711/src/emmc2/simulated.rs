//! Host tests of the EMMC2 driver against a register-level simulation: an SDHCI
//! controller (SD Host Controller Simplified Specification v3.00, §2.2 and §3.7) with an
//! eMMC device behind it (JESD84-B51), reached through the driver's [`Bus`] seam.
//!
//! It covers what QEMU's eMMC model cannot do: CRC and timeout errors injected in the
//! middle of a transfer, a device that refuses DDR52, data lines that do not work at 8 or
//! 4 bits (the bus test must catch it), and the order of a timing switch: the device
//! answers with a CRC error whenever its timing (HS_TIMING, DDR) and the host's (High
//! Speed Enable, UHS mode) disagree, so a CMD13 sent before the host switched fails.

use std::cell::RefCell;
use std::vec::Vec;

use super::card::ext_csd;
use super::registers::{Bus, offset};
use super::{BusWidth, CardType, Emmc2, Emmc2Error, TRANSFER_RETRIES};

/// Interrupt status bits (§2.2.17, §2.2.18).
const COMMAND_COMPLETE: u32 = 1 << 0;
const TRANSFER_COMPLETE: u32 = 1 << 1;
const BUFFER_WRITE_READY: u32 = 1 << 4;
const BUFFER_READ_READY: u32 = 1 << 5;
const ERROR_INTERRUPT: u32 = 1 << 15;
const COMMAND_TIMEOUT_ERROR: u32 = 1 << 16;
const COMMAND_CRC_ERROR: u32 = 1 << 17;
const DATA_TIMEOUT_ERROR: u32 = 1 << 20;
const DATA_CRC_ERROR: u32 = 1 << 21;

/// R1 card status bits (JESD84-B51 §6.13).
const READY_FOR_DATA: u32 = 1 << 8;
const SWITCH_ERROR: u32 = 1 << 7;
const STATE_TRANSFER: u32 = 4;
const STATE_STANDBY: u32 = 3;

/// An error to inject: at which command (and block of its data phase), which kind, and
/// how many times before the device behaves again.
#[derive(Clone, Copy, Debug)]
struct Fault {
    command: u32,
    block: usize,
    kind: FaultKind,
    times: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// No response to the command.
    CommandTimeout,
    /// The data block arrives with a bad CRC.
    DataCrc,
    /// The data block never comes (or the device never takes it).
    DataTimeout,
}

/// The data phase under way.
#[derive(Debug)]
struct Transfer {
    read: bool,
    command: u32,
    /// Byte address of the first block in the user area.
    start: usize,
    blocks: usize,
    block: usize,
    /// Words of the current block (read: still to deliver; write: received).
    words: Vec<u32>,
    /// The EXT_CSD (CMD8) instead of the user area.
    ext_csd: bool,
    /// Whether the bytes cross a mismatched bus: the device's width/rate differ from
    /// the host's, or its lines at that width are broken.
    garbled: bool,
}

#[derive(Debug)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "a device's state is its flags"
)]
struct Sim {
    // Controller registers.
    block_size_count: u32,
    argument: u32,
    response: [u32; 4],
    host_control_1: u32,
    clock_control: u32,
    interrupt_status: u32,
    host_control_2: u32,
    // The device.
    storage: Vec<u8>,
    ext_csd: [u8; 512],
    powered_up: bool,
    selected: bool,
    hs_timing: u8,
    bus_width: u8,
    switch_error: bool,
    transfer: Option<Transfer>,
    // Behaviour.
    refuses_ddr: bool,
    broken_widths: Vec<u8>,
    faults: Vec<Fault>,
    // What happened.
    timing_mismatches: u32,
    commands: Vec<u32>,
}

/// A simulated EMMC2 with an eMMC of `blocks` blocks in sector mode.
#[derive(Debug)]
struct SimBus(RefCell<Sim>);

impl SimBus {
    fn new(blocks: usize) -> Self {
        let storage = (0..blocks * 512)
            .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 9) as u8)
            .collect();
        let mut ext_csd = [0u8; 512];
        ext_csd[212..216].copy_from_slice(&(blocks as u32).to_le_bytes());
        // DEVICE_TYPE: HS26, HS52, DDR52 at 3 V; EXT_CSD_REV 8 (eMMC 5.1).
        ext_csd[196] = 0b111;
        ext_csd[192] = 8;
        Self(RefCell::new(Sim {
            block_size_count: 0,
            argument: 0,
            response: [0; 4],
            host_control_1: 0,
            clock_control: 0,
            interrupt_status: 0,
            host_control_2: 0,
            storage,
            ext_csd,
            powered_up: false,
            selected: false,
            hs_timing: 0,
            bus_width: 0,
            switch_error: false,
            transfer: None,
            refuses_ddr: false,
            broken_widths: Vec::new(),
            faults: Vec::new(),
            timing_mismatches: 0,
            commands: Vec::new(),
        }))
    }

    fn fault(self, command: u32, block: usize, kind: FaultKind, times: u32) -> Self {
        self.0.borrow_mut().faults.push(Fault {
            command,
            block,
            kind,
            times,
        });
        self
    }
}

impl Sim {
    /// The host's bus width from Host Control 1 (§2.2.11: bit 5 8-bit, bit 1 4-bit).
    fn host_width(&self) -> u8 {
        if self.host_control_1 & (1 << 5) != 0 {
            8
        } else if self.host_control_1 & (1 << 1) != 0 {
            4
        } else {
            1
        }
    }

    fn host_high_speed(&self) -> bool {
        self.host_control_1 & (1 << 2) != 0
    }

    fn host_ddr(&self) -> bool {
        (self.host_control_2 >> 16) & 0b111 == 0b100
    }

    /// The device's width and rate from BUS_WIDTH (0/1/2 SDR, 5/6 DDR).
    fn device_width(&self) -> (u8, bool) {
        match self.bus_width {
            1 => (4, false),
            2 => (8, false),
            5 => (4, true),
            6 => (8, true),
            _ => (1, false),
        }
    }

    /// Whether the command line works: the device's timing is the host's.
    fn timing_agrees(&self) -> bool {
        let (_, ddr) = self.device_width();
        (self.hs_timing == 1) == self.host_high_speed() && (!ddr || self.host_ddr())
    }

    /// Whether data crosses the bus intact.
    fn data_agrees(&self) -> bool {
        let (width, ddr) = self.device_width();
        self.timing_agrees()
            && width == self.host_width()
            && ddr == self.host_ddr()
            && !self.broken_widths.contains(&width)
    }

    fn status(&mut self) -> u32 {
        let state = if self.selected {
            STATE_TRANSFER
        } else {
            STATE_STANDBY
        };
        let mut status = (state << 9) | READY_FOR_DATA;
        if std::mem::take(&mut self.switch_error) {
            status |= SWITCH_ERROR;
        }
        status
    }

    /// A fault due now for `command` at `block`, used up by one.
    fn take_fault(&mut self, command: u32, block: usize, kinds: &[FaultKind]) -> Option<FaultKind> {
        let fault = self.faults.iter_mut().find(|fault| {
            fault.command == command
                && fault.block == block
                && fault.times > 0
                && kinds.contains(&fault.kind)
        })?;
        fault.times -= 1;
        Some(fault.kind)
    }

    fn error(&mut self, bits: u32) {
        self.interrupt_status |= ERROR_INTERRUPT | bits;
    }

    fn issue(&mut self, word: u32) {
        let index = (word >> 24) & 0x3f;
        let data = word & (1 << 21) != 0;
        let multi = word & (1 << 5) != 0;
        let read = word & (1 << 4) != 0;
        let argument = self.argument;
        self.commands.push(index);
        if self
            .take_fault(index, 0, &[FaultKind::CommandTimeout])
            .is_some()
        {
            self.error(COMMAND_TIMEOUT_ERROR);
            return;
        }
        // Commands an eMMC does not answer: SD's CMD8 (no data), CMD55, ACMD41.
        let answers = match index {
            8 => data,
            55 | 41 => false,
            _ => true,
        };
        if !answers {
            self.error(COMMAND_TIMEOUT_ERROR);
            return;
        }
        // CMD0, CMD1 and the identification commands run at the legacy timing the
        // device starts with; past that, a timing mismatch garbles the response.
        if index != 0 && !self.timing_agrees() {
            self.timing_mismatches += 1;
            self.error(COMMAND_CRC_ERROR);
            return;
        }
        self.response = [0; 4];
        match index {
            0 => {
                self.selected = false;
                self.hs_timing = 0;
                self.bus_width = 0;
            }
            1 => {
                // OCR: powered up, sector mode, 2.7-3.6 V.
                self.powered_up = true;
                self.response[0] = (1 << 31) | (0b10 << 29) | 0x00ff_8000;
            }
            2 | 9 => {
                // CID / CSD as R[127:8]; the CSD's SPEC_VERS (bits 125..122) is 4.
                let register: u128 = if index == 9 { 4 << 122 } else { 0x15 << 120 };
                let raw = register >> 8;
                for (word, slot) in self.response.iter_mut().enumerate() {
                    *slot = (raw >> (32 * word)) as u32;
                }
            }
            7 => {
                self.selected = true;
                self.response[0] = self.status();
                self.interrupt_status |= TRANSFER_COMPLETE;
            }
            6 => {
                let index = ((argument >> 16) & 0xff) as u8;
                let value = ((argument >> 8) & 0xff) as u8;
                if index == ext_csd::BUS_WIDTH && value >= 5 && self.refuses_ddr {
                    self.switch_error = true;
                } else if index == ext_csd::BUS_WIDTH {
                    self.bus_width = value;
                } else if index == ext_csd::HS_TIMING {
                    self.hs_timing = value;
                } else if let Some(byte) = self.ext_csd.get_mut(usize::from(index)) {
                    *byte = value;
                }
                self.response[0] = self.status();
                self.interrupt_status |= TRANSFER_COMPLETE;
            }
            12 => {
                self.transfer = None;
                self.response[0] = self.status();
                self.interrupt_status |= TRANSFER_COMPLETE;
            }
            8 | 17 | 18 | 24 | 25 => {
                self.response[0] = self.status();
                let blocks = if multi {
                    (self.block_size_count >> 16) as usize
                } else {
                    1
                };
                self.transfer = Some(Transfer {
                    read,
                    command: index,
                    start: argument as usize * 512,
                    blocks,
                    block: 0,
                    words: Vec::new(),
                    ext_csd: index == 8,
                    garbled: !self.data_agrees(),
                });
                self.interrupt_status |= COMMAND_COMPLETE;
                self.next_block();
                return;
            }
            _ => self.response[0] = self.status(),
        }
        self.interrupt_status |= COMMAND_COMPLETE;
    }

    /// Readies the next block of the transfer, or completes it.
    fn next_block(&mut self) {
        let Some(mut transfer) = self.transfer.take() else {
            return;
        };
        if transfer.block == transfer.blocks {
            self.interrupt_status |= TRANSFER_COMPLETE;
            return;
        }
        let fault = self.take_fault(
            transfer.command,
            transfer.block,
            &[FaultKind::DataCrc, FaultKind::DataTimeout],
        );
        match fault {
            Some(FaultKind::DataCrc) => return self.error(DATA_CRC_ERROR),
            Some(_) => return self.error(DATA_TIMEOUT_ERROR),
            None => {}
        }
        if transfer.read {
            let bytes: Vec<u8> = if transfer.ext_csd {
                self.ext_csd.to_vec()
            } else {
                let at = transfer.start + transfer.block * 512;
                self.storage[at..at + 512].to_vec()
            };
            transfer.words = bytes
                .chunks_exact(4)
                .rev()
                .map(|word| {
                    let value = u32::from_le_bytes(word.try_into().unwrap());
                    if transfer.garbled {
                        value.rotate_left(3) ^ 0x5a5a_5a5a
                    } else {
                        value
                    }
                })
                .collect();
            self.interrupt_status |= BUFFER_READ_READY;
        } else {
            transfer.words.clear();
            self.interrupt_status |= BUFFER_WRITE_READY;
        }
        self.transfer = Some(transfer);
    }

    fn read_port(&mut self) -> u32 {
        let Some(transfer) = self.transfer.as_mut() else {
            return 0;
        };
        let word = transfer.words.pop().unwrap_or(0);
        if transfer.words.is_empty() {
            transfer.block += 1;
            self.next_block();
        }
        word
    }

    fn write_port(&mut self, value: u32) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.words.push(value);
        if transfer.words.len() == 128 {
            if !transfer.garbled {
                let at = transfer.start + transfer.block * 512;
                for (index, word) in transfer.words.iter().enumerate() {
                    self.storage[at + index * 4..at + index * 4 + 4]
                        .copy_from_slice(&word.to_le_bytes());
                }
            }
            transfer.block += 1;
            self.next_block();
        }
    }
}

impl Bus for SimBus {
    fn read(&self, offset: usize) -> u32 {
        let mut sim = self.0.borrow_mut();
        match offset {
            offset::BLOCK_SIZE_COUNT => sim.block_size_count,
            offset::ARGUMENT => sim.argument,
            0x10 => sim.response[0],
            0x14 => sim.response[1],
            0x18 => sim.response[2],
            0x1c => sim.response[3],
            offset::BUFFER_DATA_PORT => sim.read_port(),
            // Card inserted, stable, detect pin high, DAT and CMD lines high; never
            // inhibited (the simulated device answers at once).
            offset::PRESENT_STATE => 0x01ff_0000,
            offset::HOST_CONTROL_1 => sim.host_control_1,
            offset::CLOCK_CONTROL => sim.clock_control,
            offset::INTERRUPT_STATUS => sim.interrupt_status,
            offset::AUTO_CMD_ERROR_HOST_CONTROL_2 => sim.host_control_2,
            // High speed, 8-bit, 3.3 V; the base clock comes from the caller.
            offset::CAPABILITIES_0 => (1 << 21) | (1 << 18) | (1 << 24),
            // Specification version 3.00.
            offset::SLOT_STATUS_VERSION => 2 << 16,
            _ => 0,
        }
    }

    fn write(&self, offset: usize, value: u32) {
        let mut sim = self.0.borrow_mut();
        match offset {
            offset::BLOCK_SIZE_COUNT => sim.block_size_count = value,
            offset::ARGUMENT => sim.argument = value,
            offset::TRANSFER_MODE_COMMAND => sim.issue(value),
            offset::BUFFER_DATA_PORT => sim.write_port(value),
            offset::HOST_CONTROL_1 => sim.host_control_1 = value,
            offset::CLOCK_CONTROL => {
                if value & (1 << 24) != 0 {
                    // Reset All (§2.2.15): the host's registers to their defaults.
                    sim.host_control_1 = 0;
                    sim.host_control_2 = 0;
                    sim.interrupt_status = 0;
                    sim.transfer = None;
                }
                if value & (1 << 26) != 0 {
                    sim.transfer = None;
                }
                // The reset bits self-clear; the internal clock is stable at once.
                let mut kept = value & !(0b111 << 24);
                if kept & 1 != 0 {
                    kept |= 1 << 1;
                }
                sim.clock_control = kept;
            }
            offset::INTERRUPT_STATUS => sim.interrupt_status &= !value,
            offset::AUTO_CMD_ERROR_HOST_CONTROL_2 => sim.host_control_2 = value & 0xffff_0000,
            _ => {}
        }
    }
}

/// The EMMC2 base clock the firmware reports on a CM4 (mailbox clock 12).
const BASE_CLOCK_HZ: u32 = 100_000_000;

fn driver(bus: SimBus) -> Emmc2<SimBus> {
    Emmc2::on_bus(bus)
}

fn sim(driver: &Emmc2<SimBus>) -> std::cell::Ref<'_, Sim> {
    driver.bus().0.borrow()
}

#[test]
fn a_healthy_emmc_runs_8_bit_ddr52_and_round_trips_data() {
    let mut emmc = driver(SimBus::new(4096));
    let card = emmc.init(BASE_CLOCK_HZ).unwrap();
    assert_eq!(card.card_type, CardType::Emmc);
    assert!(card.block_addressing);
    assert_eq!(card.bus_width, BusWidth::Eight);
    assert!(card.high_speed && card.ddr52, "{card}");
    assert_eq!(card.clock_hz, 50_000_000);
    assert_eq!(emmc.bus_fallbacks(), (0, 0));
    assert_eq!(
        sim(&emmc).timing_mismatches,
        0,
        "the host switched its timing before every CMD13"
    );
    let expected = sim(&emmc).storage[512 * 10..512 * 20].to_vec();
    let mut buffer = vec![0u8; 512 * 10];
    emmc.read_blocks(10, &mut buffer).unwrap();
    assert_eq!(buffer, expected);
    let pattern: Vec<u8> = (0..512 * 3u32).map(|i| (i % 7) as u8).collect();
    emmc.write_blocks(100, &pattern).unwrap();
    assert_eq!(sim(&emmc).storage[512 * 100..512 * 103], pattern[..]);
    assert_eq!(emmc.transfer_retries(), 0);
}

#[test]
fn a_device_that_refuses_ddr_stays_at_sdr_high_speed() {
    let bus = SimBus::new(4096);
    bus.0.borrow_mut().refuses_ddr = true;
    let mut emmc = driver(bus);
    let card = emmc.init(BASE_CLOCK_HZ).unwrap();
    assert_eq!(card.bus_width, BusWidth::Eight);
    assert!(card.high_speed && !card.ddr52, "{card}");
    assert_eq!(emmc.bus_fallbacks(), (0, 1), "one DDR52 fallback");
    assert!(!sim(&emmc).host_ddr(), "the host went back to SDR too");
    let mut buffer = vec![0u8; 512 * 4];
    emmc.read_blocks(0, &mut buffer).unwrap();
    assert_eq!(buffer, sim(&emmc).storage[..512 * 4]);
}

#[test]
fn broken_data_lines_fail_the_bus_test_and_the_width_falls_back() {
    // DAT4..7 not connected: the 8-bit bus test reads garbage, 4 bits work (with DDR).
    let bus = SimBus::new(4096);
    bus.0.borrow_mut().broken_widths = vec![8];
    let mut emmc = driver(bus);
    let card = emmc.init(BASE_CLOCK_HZ).unwrap();
    assert_eq!(card.bus_width, BusWidth::Four);
    assert!(card.ddr52, "DDR52 over 4 bits: {card}");
    assert_eq!(emmc.bus_fallbacks(), (1, 0));
    let mut buffer = vec![0u8; 512 * 2];
    emmc.read_blocks(7, &mut buffer).unwrap();
    assert_eq!(buffer, sim(&emmc).storage[512 * 7..512 * 9]);

    // Only DAT0 works: one bit, no DDR (there is none at one bit).
    let bus = SimBus::new(4096);
    bus.0.borrow_mut().broken_widths = vec![8, 4];
    let mut emmc = driver(bus);
    let card = emmc.init(BASE_CLOCK_HZ).unwrap();
    assert_eq!(card.bus_width, BusWidth::One);
    assert!(!card.ddr52);
    assert_eq!(emmc.bus_fallbacks(), (2, 0));
    emmc.read_blocks(7, &mut buffer).unwrap();
    assert_eq!(buffer, sim(&emmc).storage[512 * 7..512 * 9]);
}

#[test]
fn a_crc_error_in_the_middle_of_a_read_is_retried() {
    // Block 3 of an 8-block CMD18 arrives with a bad CRC, once.
    let mut emmc = driver(SimBus::new(4096).fault(18, 3, FaultKind::DataCrc, 1));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let mut buffer = vec![0u8; 512 * 8];
    emmc.read_blocks(40, &mut buffer).unwrap();
    assert_eq!(buffer, sim(&emmc).storage[512 * 40..512 * 48]);
    assert_eq!(emmc.transfer_retries(), 1);
}

#[test]
fn a_data_timeout_in_the_middle_of_a_write_is_retried_and_the_data_lands() {
    let mut emmc = driver(SimBus::new(4096).fault(25, 2, FaultKind::DataTimeout, 2));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let pattern: Vec<u8> = (0..512 * 6u32).map(|i| (i % 251) as u8).collect();
    emmc.write_blocks(200, &pattern).unwrap();
    assert_eq!(sim(&emmc).storage[512 * 200..512 * 206], pattern[..]);
    assert_eq!(emmc.transfer_retries(), 2);
}

#[test]
fn errors_that_persist_are_reported_with_the_command_after_the_retries() {
    let faults = TRANSFER_RETRIES + 1;
    let mut emmc = driver(SimBus::new(4096).fault(18, 1, FaultKind::DataCrc, faults));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let mut buffer = vec![0u8; 512 * 4];
    let error = emmc.read_blocks(0, &mut buffer).unwrap_err();
    assert!(
        matches!(error, Emmc2Error::CommandFailed { status, .. } if status.error & (1 << 5) != 0),
        "{error:?}"
    );
    let message = std::format!("{error}");
    assert!(message.contains("CMD18"), "{message}");
    assert_eq!(emmc.transfer_retries(), u64::from(TRANSFER_RETRIES));
    // The device is usable again once the faults are spent.
    emmc.read_blocks(0, &mut buffer).unwrap();

    let mut emmc = driver(SimBus::new(4096).fault(17, 0, FaultKind::CommandTimeout, faults));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let error = emmc.read_blocks(9, &mut buffer[..512]).unwrap_err();
    assert!(
        matches!(error, Emmc2Error::CommandFailed { status, .. } if status.error & 1 != 0),
        "a command timeout: {error:?}"
    );
    assert!(std::format!("{error}").contains("CMD17"), "{error}");
}

#[test]
fn the_simulation_catches_a_status_read_before_the_host_switched_timing() {
    // The negative control of the order check: CMD6 HS_TIMING=1, then CMD13 with the
    // host still at legacy timing answers with a CRC error, as on the bus.
    let bus = SimBus::new(64);
    let word = |index: u32, response: u32| (index << 24) | (response << 16);
    bus.write(offset::ARGUMENT, 0);
    bus.write(offset::TRANSFER_MODE_COMMAND, word(1, 0b10));
    bus.write(offset::ARGUMENT, 1 << 16);
    bus.write(offset::TRANSFER_MODE_COMMAND, word(7, 0b11));
    bus.write(offset::INTERRUPT_STATUS, u32::MAX);
    let switch = (0b11 << 24) | (u32::from(ext_csd::HS_TIMING) << 16) | (1 << 8);
    bus.write(offset::ARGUMENT, switch);
    bus.write(offset::TRANSFER_MODE_COMMAND, word(6, 0b11));
    assert_eq!(bus.read(offset::INTERRUPT_STATUS) & ERROR_INTERRUPT, 0);
    bus.write(offset::INTERRUPT_STATUS, u32::MAX);
    bus.write(offset::ARGUMENT, 1 << 16);
    bus.write(offset::TRANSFER_MODE_COMMAND, word(13, 0b10));
    assert_ne!(
        bus.read(offset::INTERRUPT_STATUS) & COMMAND_CRC_ERROR,
        0,
        "CMD13 at the wrong timing"
    );
    assert_eq!(bus.0.borrow().timing_mismatches, 1);
    // With the host at high speed, the same CMD13 is answered.
    bus.write(offset::INTERRUPT_STATUS, u32::MAX);
    bus.write(offset::HOST_CONTROL_1, 1 << 2);
    bus.write(offset::TRANSFER_MODE_COMMAND, word(13, 0b10));
    assert_eq!(
        bus.read(offset::INTERRUPT_STATUS),
        COMMAND_COMPLETE,
        "answered at the agreed timing"
    );
}
