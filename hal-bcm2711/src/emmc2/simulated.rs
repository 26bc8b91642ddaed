//! Host tests of the EMMC2 driver against a register-level simulation: an SDHCI
//! controller (SD Host Controller Simplified Specification v3.00, §2.2 and §3.7) with an
//! eMMC device behind it (JESD84-B51), reached through the driver's [`Bus`] seam.
//!
//! It covers what QEMU's eMMC model cannot do: CRC and timeout errors injected in the
//! middle of a transfer, a device that refuses DDR52, data lines that do not work at 8 or
//! 4 bits (the bus test must catch it), and the order of a timing switch: the device
//! answers with a CRC error whenever its timing (HS_TIMING, DDR) and the host's (High
//! Speed Enable, UHS mode) disagree, so a CMD13 sent before the host switched fails.
//!
//! ADMA2 (SDHCI v3.00 §1.13): the controller walks the descriptor table at the ADMA
//! System Address the driver programmed, reading it and the data through a model of
//! the BCM2711 B0's EMMC2 bus view — bus `0xC000_0000 + x` is RAM `x`, for the RAM the
//! test owns, and any other bus address fails with an ADMA Error, as a wrong alias would
//! on the hardware. One block moves per read of the interrupt status, so a transfer is
//! still under way when `start_read` returns. The driver must never move data through
//! the Buffer Data Port during a DMA transfer, use DMA the capabilities do not offer,
//! or write descriptors the spec forbids (the simulation panics).

use std::boxed::Box;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec::Vec;

use super::adma::{AdmaTable, MAX_BLOCKS_PER_TRANSFER, MAX_DESCRIPTOR_BYTES};
use super::card::ext_csd;
use super::registers::{Bus, offset};
use super::{BusWidth, CardType, DmaWindow, Emmc2, Emmc2Error, TRANSFER_RETRIES};

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
const ADMA_ERROR: u32 = 1 << 25;

/// Capabilities (register 040h): high speed (21), 8-bit (18), 3.3 V (24), ADMA2 (19); the
/// base clock comes from the caller.
const CAPABILITIES: u32 = (1 << 21) | (1 << 18) | (1 << 24) | ADMA2_SUPPORT;
const ADMA2_SUPPORT: u32 = 1 << 19;
/// Host Control 1 DMA Select (§2.2.10, bits 4..3): 10b = 32-bit ADMA2.
const DMA_SELECT_MASK: u32 = 0b11 << 3;
const DMA_SELECT_ADMA2_32: u32 = 0b10 << 3;
/// ADMA Error Status (register 054h): the state, and Length Mismatch.
const ADMA_STATE_FETCH_DESCRIPTOR: u8 = 0b01;
const ADMA_STATE_TRANSFER_DATA: u8 = 0b11;
const ADMA_LENGTH_MISMATCH: u8 = 1 << 2;
/// Where RAM `x` appears on the simulated controller's bus (BCM2711 B0, bcm2711.dtsi).
const BUS_RAM_ALIAS: u32 = 0xC000_0000;

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
    /// The ADMA engine reports an ADMA Error at this block (ST_TFR).
    Adma,
    /// The ADMA engine stops at this block without any error: the transfer never
    /// completes.
    AdmaStall,
}

/// RAM the simulated controller reaches: `size` bytes of host memory at `host_base`,
/// seen at bus `BUS_RAM_ALIAS`.
#[derive(Debug, Clone, Copy)]
struct SimRam {
    host_base: usize,
    size: usize,
}

/// The ADMA2 engine's place in the descriptor table.
#[derive(Debug, Default)]
struct AdmaEngine {
    /// Bus address of the next line to fetch.
    next_line: u32,
    /// The line being executed: (bus address, bytes left, End).
    line: Option<(u32, usize, bool)>,
    /// An End line was executed to its last byte.
    ended: bool,
    /// Stopped (an error or a stall): no more progress.
    stopped: bool,
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
    /// The ADMA2 engine, if the data moves by DMA.
    dma: Option<AdmaEngine>,
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
    capabilities: u32,
    adma_address: u32,
    adma_error: u8,
    ram: Option<SimRam>,
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
    /// Bus addresses of the descriptor lines fetched.
    adma_lines: Vec<u32>,
    /// Blocks moved by the ADMA engine.
    adma_blocks: usize,
    /// Data commands issued with DMA Enable.
    adma_commands: usize,
}

/// A simulated EMMC2 with an eMMC of `blocks` blocks in sector mode (shared, so a test
/// can watch it while a pending read holds the driver).
#[derive(Debug)]
struct SimBus(Rc<RefCell<Sim>>);

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
        Self(Rc::new(RefCell::new(Sim {
            block_size_count: 0,
            argument: 0,
            response: [0; 4],
            host_control_1: 0,
            clock_control: 0,
            interrupt_status: 0,
            host_control_2: 0,
            capabilities: CAPABILITIES,
            adma_address: 0,
            adma_error: 0,
            ram: None,
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
            adma_lines: Vec::new(),
            adma_blocks: 0,
            adma_commands: 0,
        })))
    }

    /// Gives the controller `size` bytes of host memory at `host_base` as its RAM.
    fn with_ram(self, host_base: usize, size: usize) -> Self {
        self.0.borrow_mut().ram = Some(SimRam { host_base, size });
        self
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
            8 | 17 | 18 | 24 | 25 => return self.start_data(index, word),
            _ => self.response[0] = self.status(),
        }
        self.interrupt_status |= COMMAND_COMPLETE;
    }

    /// A read or write command: the data phase starts (by PIO, or by ADMA2 with DMA
    /// Enable in the command word).
    fn start_data(&mut self, index: u32, word: u32) {
        let multi = word & (1 << 5) != 0;
        let read = word & (1 << 4) != 0;
        let argument = self.argument;
        self.response[0] = self.status();
        let blocks = if multi {
            (self.block_size_count >> 16) as usize
        } else {
            1
        };
        let dma = word & 1 != 0;
        if dma {
            assert_ne!(
                self.capabilities & ADMA2_SUPPORT,
                0,
                "DMA Enable, but the capabilities offer no ADMA2"
            );
            assert_eq!(
                self.host_control_1 & DMA_SELECT_MASK,
                DMA_SELECT_ADMA2_32,
                "DMA Enable without 32-bit ADMA2 selected"
            );
            self.adma_commands += 1;
            self.adma_error = 0;
        }
        self.transfer = Some(Transfer {
            read,
            command: index,
            start: argument as usize * 512,
            blocks,
            block: 0,
            words: Vec::new(),
            ext_csd: index == 8,
            garbled: !self.data_agrees(),
            dma: dma.then(|| AdmaEngine {
                next_line: self.adma_address,
                ..AdmaEngine::default()
            }),
        });
        self.interrupt_status |= COMMAND_COMPLETE;
        if !dma {
            self.next_block();
        }
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
            let bytes = self.block_from_card(&transfer);
            transfer.words = bytes
                .chunks_exact(4)
                .rev()
                .map(|word| u32::from_le_bytes(word.try_into().unwrap()))
                .collect();
            self.interrupt_status |= BUFFER_READ_READY;
        } else {
            transfer.words.clear();
            self.interrupt_status |= BUFFER_WRITE_READY;
        }
        self.transfer = Some(transfer);
    }

    /// The bytes of the transfer's current block as they reach the host (garbled by a
    /// mismatched bus).
    fn block_from_card(&self, transfer: &Transfer) -> Vec<u8> {
        let bytes: Vec<u8> = if transfer.ext_csd {
            self.ext_csd.to_vec()
        } else {
            let at = transfer.start + transfer.block * 512;
            self.storage[at..at + 512].to_vec()
        };
        if !transfer.garbled {
            return bytes;
        }
        bytes
            .chunks_exact(4)
            .flat_map(|word| {
                let value = u32::from_le_bytes(word.try_into().unwrap());
                (value.rotate_left(3) ^ 0x5a5a_5a5a).to_le_bytes()
            })
            .collect()
    }

    /// Host memory for `length` bytes at bus address `bus`, if the bus maps it to RAM.
    fn translate(&self, bus: u32, length: usize) -> Option<*mut u8> {
        let ram = self.ram?;
        let offset = bus.checked_sub(BUS_RAM_ALIAS)? as usize;
        (offset + length <= ram.size)
            .then(|| std::ptr::with_exposed_provenance_mut::<u8>(ram.host_base + offset))
    }

    /// Stops the ADMA engine with an ADMA Error in `state`.
    fn adma_fail(&mut self, state: u8) {
        if let Some(engine) = self.transfer.as_mut().and_then(|t| t.dma.as_mut()) {
            engine.stopped = true;
        }
        self.adma_error = state;
        self.error(ADMA_ERROR);
    }

    /// Fetches the next descriptor line (§1.13); `false` after an ADMA Error.
    fn adma_fetch(&mut self) -> bool {
        let engine = self.transfer.as_mut().unwrap().dma.as_mut().unwrap();
        let at = engine.next_line;
        let Some(host) = self.translate(at, 8) else {
            self.adma_fail(ADMA_STATE_FETCH_DESCRIPTOR);
            return false;
        };
        let mut bytes = [0u8; 8];
        // SAFETY: `host` is inside the RAM the test lent the simulated
        // controller (checked by `translate`), a leaked allocation that
        // outlives it; the driver gave the controller this table for the
        // transfer, as it would real DMA.
        unsafe { std::ptr::copy_nonoverlapping(host, bytes.as_mut_ptr(), 8) };
        let value = u64::from_le_bytes(bytes);
        self.adma_lines.push(at);
        let attributes = value & 0x3f;
        if attributes & 1 == 0 {
            self.adma_fail(ADMA_STATE_FETCH_DESCRIPTOR);
            return false;
        }
        assert_eq!(
            (attributes >> 4) & 0b11,
            0b10,
            "zboot writes Tran lines only (line at {at:#x}: {value:#018x})"
        );
        let length = ((value >> 16) & 0xffff) as usize;
        let address = (value >> 32) as u32;
        assert!(
            length > 0 && length <= MAX_DESCRIPTOR_BYTES,
            "line length {length}: zboot never uses 0 (= 65536)"
        );
        assert_eq!(address % 4, 0, "a data address is a multiple of 4 (§1.13)");
        let engine = self.transfer.as_mut().unwrap().dma.as_mut().unwrap();
        engine.next_line = at + 8;
        engine.line = Some((address, length, attributes & 0b10 != 0));
        true
    }

    /// Lets the ADMA engine move one block (or finish the transfer).
    fn adma_step(&mut self) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let Some(engine) = transfer.dma.as_ref() else {
            return;
        };
        if engine.stopped || self.interrupt_status & ERROR_INTERRUPT != 0 {
            return;
        }
        let (command, block, blocks, read) = (
            transfer.command,
            transfer.block,
            transfer.blocks,
            transfer.read,
        );
        if block == blocks {
            // All blocks moved: the descriptors must end here, exactly (§1.13).
            let exact = engine.ended && engine.line.is_none_or(|(_, left, _)| left == 0);
            if !exact {
                return self.adma_fail(ADMA_STATE_TRANSFER_DATA | ADMA_LENGTH_MISMATCH);
            }
            self.transfer = None;
            self.interrupt_status |= TRANSFER_COMPLETE;
            return;
        }
        let kinds = [
            FaultKind::DataCrc,
            FaultKind::DataTimeout,
            FaultKind::Adma,
            FaultKind::AdmaStall,
        ];
        match self.take_fault(command, block, &kinds) {
            Some(FaultKind::DataCrc) => return self.error(DATA_CRC_ERROR),
            Some(FaultKind::DataTimeout) => return self.error(DATA_TIMEOUT_ERROR),
            Some(FaultKind::Adma) => return self.adma_fail(ADMA_STATE_TRANSFER_DATA),
            Some(_) => {
                if let Some(engine) = self.transfer.as_mut().and_then(|t| t.dma.as_mut()) {
                    engine.stopped = true;
                }
                return;
            }
            None => {}
        }
        let mut data = if read {
            let transfer = self.transfer.as_ref().unwrap();
            self.block_from_card(transfer)
        } else {
            vec![0u8; 512]
        };
        let mut done = 0;
        while done < 512 {
            let engine = self.transfer.as_mut().unwrap().dma.as_mut().unwrap();
            let line = match engine.line {
                Some(line) if line.1 > 0 => line,
                _ => {
                    if engine.ended {
                        // Blocks left after the End line.
                        return self.adma_fail(ADMA_STATE_TRANSFER_DATA | ADMA_LENGTH_MISMATCH);
                    }
                    if !self.adma_fetch() {
                        return;
                    }
                    continue;
                }
            };
            let (address, left, end) = line;
            let piece = left.min(512 - done);
            let Some(host) = self.translate(address, piece) else {
                return self.adma_fail(ADMA_STATE_TRANSFER_DATA);
            };
            // SAFETY: as for the descriptor: RAM the test lent the controller, and a
            // buffer the driver handed over for this transfer.
            unsafe {
                if read {
                    std::ptr::copy_nonoverlapping(data[done..].as_ptr(), host, piece);
                } else {
                    std::ptr::copy_nonoverlapping(host, data[done..].as_mut_ptr(), piece);
                }
            }
            let engine = self.transfer.as_mut().unwrap().dma.as_mut().unwrap();
            let left = left - piece;
            engine.line = Some((address + piece as u32, left, end));
            engine.ended = end && left == 0;
            done += piece;
        }
        let transfer = self.transfer.as_mut().unwrap();
        if !read && !transfer.garbled && !transfer.ext_csd {
            let at = transfer.start + transfer.block * 512;
            self.storage[at..at + 512].copy_from_slice(&data);
        }
        let transfer = self.transfer.as_mut().unwrap();
        transfer.block += 1;
        self.adma_blocks += 1;
        // Block Count counts down after each block (§2.2.3).
        self.block_size_count -= 1 << 16;
    }

    fn read_port(&mut self) -> u32 {
        let Some(transfer) = self.transfer.as_mut() else {
            return 0;
        };
        assert!(transfer.dma.is_none(), "Buffer Data Port read during DMA");
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
        assert!(transfer.dma.is_none(), "Buffer Data Port write during DMA");
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
            offset::INTERRUPT_STATUS => {
                sim.adma_step();
                sim.interrupt_status
            }
            offset::AUTO_CMD_ERROR_HOST_CONTROL_2 => sim.host_control_2,
            offset::CAPABILITIES_0 => sim.capabilities,
            offset::ADMA_ERROR_STATUS => u32::from(sim.adma_error),
            offset::ADMA_SYSTEM_ADDRESS => sim.adma_address,
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
            offset::ADMA_SYSTEM_ADDRESS => sim.adma_address = value,
            offset::ADMA_SYSTEM_ADDRESS_HIGH => assert_eq!(value, 0, "32-bit descriptors"),
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

// ----- ADMA2 -------------------------------------------------------------------

/// Memory lent to the simulated controller: the descriptor table, then `N` bytes for
/// buffers. Page-aligned, so buffers at multiples of 64 are in whole cache lines.
#[repr(C, align(4096))]
struct Arena<const N: usize> {
    table: AdmaTable,
    ram: [u8; N],
}

/// 1 MiB of buffers: enough for every test but the longest read.
const ARENA_BYTES: usize = 1 << 20;

/// A leaked arena (it must outlive the driver that holds its table) and its place in
/// host memory.
fn arena<const N: usize>() -> (&'static mut AdmaTable, &'static mut [u8; N], usize, usize) {
    // SAFETY: all zeroes is a valid `Arena` (integers and bytes).
    let arena: &'static mut Arena<N> = Box::leak(unsafe { Box::new_zeroed().assume_init() });
    let base = std::ptr::from_mut(arena).expose_provenance();
    let Arena { table, ram } = arena;
    (table, ram, base, size_of::<Arena<N>>())
}

/// An initialised eMMC of `blocks` blocks behind a controller that reaches the returned
/// RAM at bus 0xC000_0000, and the driver, set up for ADMA2 with `bus_alias` as the
/// window's bus address (0xC000_0000 is right; anything else is a wrong alias).
fn adma_machine<const N: usize>(
    blocks: usize,
    bus_alias: u64,
    bus: impl FnOnce(SimBus) -> SimBus,
) -> (Emmc2<SimBus>, &'static mut [u8; N]) {
    let (table, ram, base, size) = arena::<N>();
    let mut emmc = driver(bus(SimBus::new(blocks).with_ram(base, size)));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let window = DmaWindow::new(bus_alias, base as u64, size as u64);
    emmc.use_adma(table, window).unwrap();
    (emmc, ram)
}

fn right_alias<const N: usize>(blocks: usize) -> (Emmc2<SimBus>, &'static mut [u8; N]) {
    adma_machine(blocks, u64::from(BUS_RAM_ALIAS), |bus| bus)
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn adma_reads_and_writes_land_as_pio_ones_do() {
    let (mut emmc, ram) = right_alias::<ARENA_BYTES>(4096);
    assert!(emmc.adma_active());
    // The same card read by PIO, for comparison.
    let mut pio = driver(SimBus::new(4096));
    pio.init(BASE_CLOCK_HZ).unwrap();
    let mut by_pio = vec![0u8; 512 * 40];
    pio.read_blocks(10, &mut by_pio).unwrap();

    emmc.read_blocks(10, &mut ram[..512 * 40]).unwrap();
    assert_eq!(ram[..512 * 40], by_pio[..]);
    emmc.read_blocks(7, &mut ram[4096..4096 + 512]).unwrap();
    assert_eq!(ram[4096..4096 + 512], sim(&emmc).storage[512 * 7..512 * 8]);

    let data = pattern(512 * 24, 5);
    ram[..data.len()].copy_from_slice(&data);
    emmc.write_blocks(300, &ram[..512 * 24]).unwrap();
    emmc.write_blocks(400, &ram[..512]).unwrap();
    pio.write_blocks(300, &data).unwrap();
    assert_eq!(sim(&emmc).storage[512 * 300..512 * 324], data[..]);
    assert_eq!(sim(&emmc).storage[512 * 400..512 * 401], data[..512]);
    assert_eq!(
        sim(&emmc).storage[512 * 300..512 * 324],
        sim(&pio).storage[512 * 300..512 * 324]
    );

    let counts = emmc.transfer_counts();
    assert_eq!(
        (counts.adma, counts.pio, counts.pio_unsuitable_buffer),
        (4, 0, 0)
    );
    assert_eq!(sim(&emmc).adma_commands, 4);
    assert_eq!(sim(&emmc).adma_blocks, 40 + 1 + 24 + 1);
    assert_eq!(emmc.take_adma_fallback(), None);
    assert_eq!(emmc.transfer_retries(), 0);
}

#[test]
fn a_descriptor_table_of_several_lines() {
    let (mut emmc, ram) = right_alias::<ARENA_BYTES>(4096);
    // 300 blocks: three lines of up to 127 blocks.
    let blocks = 300;
    emmc.read_blocks(100, &mut ram[..512 * blocks]).unwrap();
    assert_eq!(
        ram[..512 * blocks],
        sim(&emmc).storage[512 * 100..512 * (100 + blocks)]
    );
    let table_bus = {
        let lines = &sim(&emmc).adma_lines;
        assert_eq!(lines.len(), 3, "{lines:x?}");
        assert_eq!([lines[1] - lines[0], lines[2] - lines[1]], [8, 8]);
        lines[0]
    };
    // The table is the arena's first bytes: bus 0xC000_0000.
    assert_eq!(table_bus, BUS_RAM_ALIAS);

    let data = pattern(512 * blocks, 9);
    ram[..data.len()].copy_from_slice(&data);
    emmc.write_blocks(1000, &ram[..512 * blocks]).unwrap();
    assert_eq!(
        sim(&emmc).storage[512 * 1000..512 * (1000 + blocks)],
        data[..]
    );
    assert_eq!(sim(&emmc).adma_lines.len(), 6);
    assert_eq!(emmc.transfer_counts().adma, 2);
}

#[test]
fn a_read_longer_than_one_table_takes_several_commands() {
    const BYTES: usize = 512 * (MAX_BLOCKS_PER_TRANSFER as usize + 100);
    let (mut emmc, ram) = right_alias::<BYTES>(20_000);
    emmc.read_blocks(5, &mut ram[..]).unwrap();
    assert_eq!(ram[..], sim(&emmc).storage[512 * 5..512 * 5 + BYTES]);
    assert_eq!(sim(&emmc).adma_commands, 2);
    assert_eq!(sim(&emmc).adma_lines.len(), 128 + 1);
}

#[test]
fn the_wrong_bus_alias_ends_in_an_adma_error_and_pio_from_then_on() {
    // The window says bus 0x4000_0000 where the controller sees RAM at 0xC000_0000:
    // the table fetch fails (ST_FDS), the read is retried by PIO, and the fallback is
    // handed out once.
    let (mut emmc, ram) = adma_machine::<ARENA_BYTES>(4096, 0x4000_0000, |bus| bus);
    emmc.read_blocks(20, &mut ram[..512 * 8]).unwrap();
    assert_eq!(ram[..512 * 8], sim(&emmc).storage[512 * 20..512 * 28]);
    assert!(!emmc.adma_active());
    let fallback = emmc
        .take_adma_fallback()
        .expect("the ADMA failure is reported");
    assert_eq!(fallback.command, super::Command::ReadMultipleBlock);
    assert_eq!(fallback.adma_status.0 & 0b11, ADMA_STATE_FETCH_DESCRIPTOR);
    assert!(
        fallback
            .status
            .is_some_and(|status| status.error & super::ErrorStatus::ADMA != 0)
    );
    let message = std::format!("{fallback}");
    assert!(
        message.contains("CMD18") && message.contains("PIO from now on"),
        "{message}"
    );
    assert_eq!(emmc.take_adma_fallback(), None, "reported once");
    assert_eq!(emmc.adma_fallback(), Some(fallback));

    // Writes go by PIO now, and land.
    let data = pattern(512 * 3, 1);
    ram[..data.len()].copy_from_slice(&data);
    emmc.write_blocks(50, &ram[..data.len()]).unwrap();
    assert_eq!(sim(&emmc).storage[512 * 50..512 * 53], data[..]);
    assert_eq!(sim(&emmc).adma_commands, 1, "no ADMA after the failure");
    assert_eq!(emmc.take_adma_fallback(), None);
    let counts = emmc.transfer_counts();
    assert_eq!((counts.adma, counts.pio), (1, 2));
}

#[test]
fn an_adma_error_in_a_write_falls_back_to_pio_and_the_data_lands() {
    let (mut emmc, ram) =
        right_alias_with::<ARENA_BYTES>(|bus| bus.fault(25, 2, FaultKind::Adma, 1));
    let data = pattern(512 * 6, 3);
    ram[..data.len()].copy_from_slice(&data);
    emmc.write_blocks(200, &ram[..data.len()]).unwrap();
    assert_eq!(sim(&emmc).storage[512 * 200..512 * 206], data[..]);
    let fallback = emmc.take_adma_fallback().unwrap();
    assert_eq!(fallback.command, super::Command::WriteMultipleBlock);
    assert_eq!(fallback.adma_status.0, ADMA_STATE_TRANSFER_DATA);
    assert_eq!(emmc.transfer_retries(), 1);
    assert!(!emmc.adma_active());
}

fn right_alias_with<const N: usize>(
    bus: impl FnOnce(SimBus) -> SimBus,
) -> (Emmc2<SimBus>, &'static mut [u8; N]) {
    adma_machine(4096, u64::from(BUS_RAM_ALIAS), bus)
}

#[test]
fn an_adma_transfer_that_never_completes_falls_back_to_pio() {
    let (mut emmc, ram) =
        right_alias_with::<ARENA_BYTES>(|bus| bus.fault(18, 3, FaultKind::AdmaStall, 1));
    emmc.read_blocks(30, &mut ram[..512 * 8]).unwrap();
    assert_eq!(ram[..512 * 8], sim(&emmc).storage[512 * 30..512 * 38]);
    let fallback = emmc.take_adma_fallback().unwrap();
    assert_eq!(fallback.status, None, "a timeout, not an error interrupt");
    assert!(!emmc.adma_active());
}

#[test]
fn a_crc_error_during_adma_is_retried_by_adma() {
    let (mut emmc, ram) =
        right_alias_with::<ARENA_BYTES>(|bus| bus.fault(18, 2, FaultKind::DataCrc, 1));
    emmc.read_blocks(40, &mut ram[..512 * 8]).unwrap();
    assert_eq!(ram[..512 * 8], sim(&emmc).storage[512 * 40..512 * 48]);
    assert_eq!(emmc.transfer_retries(), 1);
    assert!(
        emmc.adma_active(),
        "a card error is no reason to leave ADMA2"
    );
    assert_eq!(emmc.take_adma_fallback(), None);
    assert_eq!(sim(&emmc).adma_commands, 2);
}

#[test]
fn buffers_the_controller_cannot_reach_or_that_share_cache_lines_move_by_pio() {
    let (table, ram, base, size) = arena::<ARENA_BYTES>();
    let mut emmc = driver(SimBus::new(4096).with_ram(base, size));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    // The window covers the table and the first 64 KiB of buffers only, as the B0's
    // first GiB does.
    let window = DmaWindow::new(
        u64::from(BUS_RAM_ALIAS),
        base as u64,
        (size_of::<AdmaTable>() + 64 * 1024) as u64,
    );
    emmc.use_adma(table, window).unwrap();

    let far = 128 * 1024;
    emmc.read_blocks(3, &mut ram[far..far + 1024]).unwrap();
    assert_eq!(ram[far..far + 1024], sim(&emmc).storage[512 * 3..512 * 5]);
    // Straddles the window's end.
    let edge = 64 * 1024 - 512;
    emmc.read_blocks(3, &mut ram[edge..edge + 1024]).unwrap();
    assert_eq!(ram[edge..edge + 1024], sim(&emmc).storage[512 * 3..512 * 5]);
    // A read buffer that shares cache lines with other data.
    emmc.read_blocks(6, &mut ram[4..4 + 512]).unwrap();
    assert_eq!(ram[4..4 + 512], sim(&emmc).storage[512 * 6..512 * 7]);
    assert_eq!(sim(&emmc).adma_commands, 0);
    assert_eq!(emmc.transfer_counts().pio_unsuitable_buffer, 3);

    // A write from a word-aligned buffer inside the window goes by ADMA2.
    let data = pattern(512, 7);
    ram[4..4 + 512].copy_from_slice(&data);
    emmc.write_blocks(9, &ram[4..4 + 512]).unwrap();
    assert_eq!(sim(&emmc).storage[512 * 9..512 * 10], data[..]);
    // A whole-line read inside the window too.
    emmc.read_blocks(9, &mut ram[1024..1536]).unwrap();
    assert_eq!(ram[1024..1536], data[..]);
    assert_eq!(sim(&emmc).adma_commands, 2);
    assert!(emmc.adma_active());
}

#[test]
fn capabilities_without_adma2_keep_the_driver_on_pio() {
    let (table, ram, base, size) = arena::<ARENA_BYTES>();
    let bus = SimBus::new(4096).with_ram(base, size);
    bus.0.borrow_mut().capabilities &= !ADMA2_SUPPORT;
    let mut emmc = driver(bus);
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let window = DmaWindow::new(u64::from(BUS_RAM_ALIAS), base as u64, size as u64);
    assert!(matches!(
        emmc.use_adma(table, window),
        Err(super::AdmaUnavailable::NotAdvertised { .. })
    ));
    emmc.read_blocks(1, &mut ram[..2048]).unwrap();
    assert_eq!(ram[..2048], sim(&emmc).storage[512..512 * 5]);
    assert_eq!(emmc.transfer_counts().pio, 1);
    // (The simulation panics on DMA Enable without ADMA2 advertised.)
}

#[test]
fn a_table_outside_the_window_is_refused() {
    let (table, _ram, base, size) = arena::<ARENA_BYTES>();
    let mut emmc = driver(SimBus::new(64).with_ram(base, size));
    // A window that starts after the table.
    let window = DmaWindow::new(
        u64::from(BUS_RAM_ALIAS),
        (base + size_of::<AdmaTable>()) as u64,
        4096,
    );
    assert!(matches!(
        emmc.use_adma(table, window),
        Err(super::AdmaUnavailable::TableUnreachable { .. })
    ));
    assert!(!emmc.adma_active());
}

#[test]
fn a_pending_read_lands_while_the_caller_works() {
    let (mut emmc, ram) = right_alias::<ARENA_BYTES>(4096);
    let watch = Rc::clone(&emmc.bus().0);
    let expected = watch.borrow().storage[512 * 64..512 * 128].to_vec();
    // SAFETY: finished below, not leaked.
    let pending = unsafe { emmc.start_read(64, &mut ram[..512 * 64]) }.unwrap();
    assert!(pending.in_flight());
    let moved = watch.borrow().adma_blocks;
    assert!(
        moved < 64,
        "the data is still moving ({moved} blocks so far)"
    );
    // The caller's work: here, looking at the card's other blocks.
    let other = watch.borrow().storage[..512].to_vec();
    assert_eq!(other.len(), 512);
    pending.finish().unwrap();
    assert_eq!(ram[..512 * 64], expected[..]);

    // The safe form.
    let (result, worked) =
        emmc.read_blocks_during(128, &mut ram[..512 * 16], || watch.borrow().adma_blocks);
    result.unwrap();
    assert!(worked < 64 + 16, "work ran during the transfer");
    assert_eq!(
        ram[..512 * 16],
        watch.borrow().storage[512 * 128..512 * 144]
    );
}

#[test]
fn a_pending_read_dropped_unfinished_is_aborted_and_the_card_stays_usable() {
    let (mut emmc, ram) = right_alias::<ARENA_BYTES>(4096);
    let watch = Rc::clone(&emmc.bus().0);
    {
        // SAFETY: dropped at the end of this block, not leaked.
        let pending = unsafe { emmc.start_read(0, &mut ram[..512 * 32]) }.unwrap();
        assert!(pending.in_flight());
    }
    assert!(
        watch.borrow().transfer.is_none(),
        "the DAT line reset ended it"
    );
    assert!(watch.borrow().adma_blocks < 32);
    emmc.read_blocks(200, &mut ram[..512 * 4]).unwrap();
    assert_eq!(ram[..512 * 4], watch.borrow().storage[512 * 200..512 * 204]);
    assert!(emmc.adma_active(), "an abort is not an ADMA failure");
}

#[test]
fn a_pending_read_without_adma_reads_by_pio_in_finish() {
    let mut emmc = driver(SimBus::new(4096));
    emmc.init(BASE_CLOCK_HZ).unwrap();
    let mut buffer = vec![0u8; 512 * 3];
    // SAFETY: finished below.
    let pending = unsafe { emmc.start_read(9, &mut buffer) }.unwrap();
    assert!(!pending.in_flight());
    pending.finish().unwrap();
    assert_eq!(buffer, sim(&emmc).storage[512 * 9..512 * 12]);
    // Request errors come from start_read itself.
    // SAFETY: never created.
    let error = unsafe { emmc.start_read(4095, &mut buffer) }.unwrap_err();
    assert!(matches!(error, Emmc2Error::OutOfRange { .. }), "{error:?}");
}
