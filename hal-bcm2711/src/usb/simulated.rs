//! A simulated bus (a hub with a Bulk-Only SCSI stick behind it) for host tests of enumeration and mass storage.
//!
//! The simulation answers the requests zboot sends the way USB 2.0
//! chapters 9 and 11 and the BBB 1.0 specification say a device must,
//! over a RAM disk, and can inject faults: a unit that is not ready for a
//! while, a stalled CSW, a phase error, a device that stops answering.

use core::time::Duration;
use std::vec::Vec;

use super::enumerate::EnumerationError;
use super::mass_storage::{
    CBW_SIGNATURE, CSW_SIGNATURE, MassStorageError, find_first_mass_storage, opcode,
};
use super::{
    BulkPipe, ControlData, Direction, Endpoint, HostController, HostTimer, SetupPacket, Speed,
    TransferError,
};

const DEVICE_HUB: [u8; 18] = [
    18, 1, 0x10, 0x01, 9, 0, 0, 8, 0x09, 0x04, 0x01, 0x00, 0, 1, 0, 0, 0, 1,
];
const CONFIG_HUB: [u8; 25] = [
    9, 2, 25, 0, 1, 1, 0, 0xe0, 0, // configuration
    9, 4, 0, 0, 1, 9, 0, 0, 0, // interface: hub class
    7, 5, 0x81, 3, 2, 0, 0xff, // interrupt IN
];
const HUB_DESCRIPTOR: [u8; 9] = [9, 0x29, 4, 0, 0, 5, 0, 0, 0xff];
const DEVICE_STICK: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x81, 0x07, 0x55, 0x55, 0x00, 0x01, 1, 2, 3, 1,
];
const CONFIG_STICK: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, // configuration
    9, 4, 0, 0, 2, 8, 6, 0x50, 0, // interface
    7, 5, 0x81, 2, 64, 0, 0, // bulk IN
    7, 5, 0x02, 2, 64, 0, 0, // bulk OUT
];

// Independent switches a test flips, not states of one machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default)]
struct Faults {
    not_ready_commands: u32,
    stall_csw_once: bool,
    phase_error_once: bool,
    dead: bool,
    /// The stick was pulled out and the host noticed on the watched port.
    unplugged: bool,
}

#[derive(Debug)]
struct Sim {
    /// With a hub: stick on hub port 3.
    hub: bool,
    hub_address: u8,
    stick_address: u8,
    stick_reachable_at_zero: bool,
    port_reset_done: bool,
    disk: Vec<u8>,
    /// Data queued for bulk IN (data stage, then CSW).
    pending_in: Vec<Vec<u8>>,
    sense: [u8; 18],
    faults: Faults,
    now: u64,
    transfers: u64,
    recoveries_seen: u32,
    /// What the mass-storage layer asked the host to watch.
    watched: Option<super::HubPort>,
}

impl Sim {
    fn new(hub: bool, blocks: usize) -> Self {
        let disk = (0..blocks * 512).map(|i| (i * 7 + i / 512) as u8).collect();
        Self {
            hub,
            hub_address: 0,
            stick_address: 0,
            stick_reachable_at_zero: !hub,
            port_reset_done: false,
            disk,
            pending_in: Vec::new(),
            sense: [0; 18],
            faults: Faults::default(),
            now: 0,
            transfers: 0,
            recoveries_seen: 0,
            watched: None,
        }
    }

    /// Which simulated device an address reaches: true = stick.
    fn target(&self, address: u8) -> Option<bool> {
        if address == 0 {
            if self.hub && self.hub_address == 0 {
                Some(false)
            } else if self.stick_reachable_at_zero && self.stick_address == 0 {
                Some(true)
            } else {
                None
            }
        } else if address == self.stick_address {
            Some(true)
        } else if self.hub && address == self.hub_address {
            Some(false)
        } else {
            None
        }
    }

    fn csw(tag: u32, residue: u32, status: u8) -> Vec<u8> {
        let mut csw = Vec::with_capacity(13);
        csw.extend_from_slice(&CSW_SIGNATURE.to_le_bytes());
        csw.extend_from_slice(&tag.to_le_bytes());
        csw.extend_from_slice(&residue.to_le_bytes());
        csw.push(status);
        csw
    }

    fn scsi(&mut self, cbw: &[u8]) {
        let tag = u32::from_le_bytes([cbw[4], cbw[5], cbw[6], cbw[7]]);
        let length = u32::from_le_bytes([cbw[8], cbw[9], cbw[10], cbw[11]]);
        let cdb = &cbw[15..31];
        let fail = |sim: &mut Self, key: u8, asc: u8, ascq: u8| {
            sim.sense = [0; 18];
            sim.sense[0] = 0x70;
            sim.sense[2] = key;
            sim.sense[7] = 10;
            sim.sense[12] = asc;
            sim.sense[13] = ascq;
            if length > 0 {
                // No data: the device stalls the data stage (BBB §6.7.2).
                sim.pending_in.push(Vec::new());
            }
            sim.pending_in.push(Self::csw(tag, length, 1));
        };
        match cdb[0] {
            opcode::INQUIRY => {
                let mut data = vec![b' '; 36];
                data[0] = 0;
                data[1] = 0x80;
                data[8..12].copy_from_slice(b"SIMU");
                data[16..21].copy_from_slice(b"STICK");
                data[32..36].copy_from_slice(b"1.00");
                self.pending_in.push(data);
                self.pending_in.push(Self::csw(tag, length - 36, 0));
            }
            opcode::TEST_UNIT_READY => {
                if self.faults.not_ready_commands > 0 {
                    self.faults.not_ready_commands -= 1;
                    // NOT READY, LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
                    fail(self, 2, 0x04, 0x01);
                } else {
                    self.pending_in.push(Self::csw(tag, 0, 0));
                }
            }
            opcode::REQUEST_SENSE => {
                self.pending_in.push(self.sense.to_vec());
                self.pending_in.push(Self::csw(tag, length - 18, 0));
            }
            opcode::READ_CAPACITY_10 => {
                let last = (self.disk.len() / 512 - 1) as u32;
                let mut data = last.to_be_bytes().to_vec();
                data.extend_from_slice(&512u32.to_be_bytes());
                self.pending_in.push(data);
                self.pending_in.push(Self::csw(tag, 0, 0));
            }
            opcode::READ_10 => {
                let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as usize;
                let blocks = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
                if self.faults.phase_error_once {
                    self.faults.phase_error_once = false;
                    self.pending_in.push(Self::csw(tag, 0, 2));
                    return;
                }
                let data = self.disk[lba * 512..(lba + blocks) * 512].to_vec();
                self.pending_in.push(data);
                self.pending_in.push(Self::csw(tag, 0, 0));
            }
            _ => fail(self, 5, 0x20, 0), // ILLEGAL REQUEST, INVALID COMMAND
        }
    }
}

impl HostController for Sim {
    fn control_transfer(
        &mut self,
        endpoint: &Endpoint,
        setup: &SetupPacket,
        data: ControlData<'_>,
    ) -> Result<usize, TransferError> {
        self.transfers += 1;
        if self.faults.unplugged && endpoint.device_address == self.stick_address {
            return Err(TransferError::DeviceGone);
        }
        if self.faults.dead {
            return Err(TransferError::TransactionError);
        }
        let Some(stick) = self.target(endpoint.device_address) else {
            return Err(TransferError::TransactionError);
        };
        let reply: Vec<u8> = match (setup.request_type, setup.request, setup.value >> 8) {
            (0x80, 6, 1) => (if stick {
                &DEVICE_STICK[..]
            } else {
                &DEVICE_HUB[..]
            })
            .to_vec(),
            (0x80, 6, 2) => (if stick {
                &CONFIG_STICK[..]
            } else {
                &CONFIG_HUB[..]
            })
            .to_vec(),
            (0xa0, 6, 0x29) if !stick => HUB_DESCRIPTOR.to_vec(),
            (0x00, 5, _) => {
                if stick {
                    self.stick_address = setup.value as u8;
                } else {
                    self.hub_address = setup.value as u8;
                }
                Vec::new()
            }
            (0x00, 9, _) | (0x23, 1, _) => Vec::new(),
            (0x23, 3, _) if !stick => {
                if setup.value == 4 && setup.index == 3 {
                    self.port_reset_done = true;
                    self.stick_reachable_at_zero = true;
                }
                Vec::new()
            }
            (0xa3, 0, _) if !stick => {
                let connected = setup.index == 3;
                let mut status: u16 = u16::from(connected) | (1 << 8);
                let mut change: u16 = 0;
                if connected && self.port_reset_done {
                    status |= 1 << 1;
                    change |= 1 << 4;
                }
                let mut bytes = status.to_le_bytes().to_vec();
                bytes.extend_from_slice(&change.to_le_bytes());
                bytes
            }
            (0x02, 1, _) if stick => Vec::new(), // CLEAR_FEATURE(ENDPOINT_HALT)
            (0x21, 0xff, _) if stick => {
                self.recoveries_seen += 1;
                self.pending_in.clear();
                Vec::new()
            }
            _ => return Err(TransferError::Stall),
        };
        match data {
            ControlData::In(buffer) => {
                let length = reply.len().min(buffer.len());
                buffer[..length].copy_from_slice(&reply[..length]);
                Ok(length)
            }
            ControlData::Out(bytes) => Ok(bytes.len()),
            ControlData::None => Ok(0),
        }
    }

    fn bulk_in(&mut self, pipe: &mut BulkPipe, buffer: &mut [u8]) -> Result<usize, TransferError> {
        self.transfers += 1;
        assert_eq!(pipe.endpoint.direction, Direction::In);
        if self.faults.unplugged {
            return Err(TransferError::DeviceGone);
        }
        if self.faults.dead {
            return Err(TransferError::TransactionError);
        }
        if self.pending_in.len() == 1 && self.faults.stall_csw_once {
            self.faults.stall_csw_once = false;
            return Err(TransferError::Stall);
        }
        if self.pending_in.is_empty() {
            return Err(TransferError::NakTimeout);
        }
        let data = self.pending_in.remove(0);
        if data.is_empty() {
            return Err(TransferError::Stall);
        }
        if data.len() > buffer.len() {
            return Err(TransferError::Babble);
        }
        buffer[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    fn bulk_out(&mut self, pipe: &mut BulkPipe, data: &[u8]) -> Result<(), TransferError> {
        self.transfers += 1;
        assert_eq!(pipe.endpoint.direction, Direction::Out);
        if self.faults.unplugged {
            return Err(TransferError::DeviceGone);
        }
        if self.faults.dead {
            return Err(TransferError::TransactionError);
        }
        assert_eq!(data.len(), 31, "only CBWs go out");
        assert_eq!(&data[0..4], &CBW_SIGNATURE.to_le_bytes());
        self.scsi(data);
        Ok(())
    }

    fn delay(&mut self, duration: Duration) {
        self.now += duration.as_micros() as u64;
    }

    fn start_timer(&mut self, timeout: Duration) -> HostTimer {
        HostTimer {
            expires: self.now + timeout.as_micros() as u64,
        }
    }

    fn expired(&mut self, timer: &HostTimer) -> bool {
        self.now >= timer.expires
    }

    fn watch_attachment(&mut self, port: Option<super::HubPort>) {
        self.watched = port;
    }
}

#[test]
fn stick_behind_a_hub_is_found_and_read() {
    let sim = Sim::new(true, 1024);
    let expected = sim.disk.clone();
    let mut stick = find_first_mass_storage(sim, Speed::Full).expect("stick found");
    assert_eq!(stick.device().hub_depth, 1);
    assert_eq!(stick.device().port, 3);
    assert_eq!(stick.device().control.device_address, 2);
    assert_eq!(stick.device().descriptor.vendor_id, 0x0781);
    assert_eq!(stick.block_count(), 1024);
    assert_eq!(
        super::mass_storage::Inquiry::text(&stick.inquiry().product),
        "STICK"
    );
    // 300 blocks: split into 128 + 128 + 44-block READ(10)s.
    let mut buffer = vec![0u8; 300 * 512];
    stick.read_blocks(5, &mut buffer).expect("read");
    assert_eq!(buffer, expected[5 * 512..305 * 512]);
    assert_eq!(stick.recoveries(), 0);
    assert!(matches!(
        stick.read_blocks(1000, &mut buffer),
        Err(MassStorageError::OutOfRange { .. })
    ));
    assert!(matches!(
        stick.read_blocks(0, &mut buffer[..100]),
        Err(MassStorageError::PartialBlock { length: 100 })
    ));
}

#[test]
fn a_walk_reports_the_hub_and_the_stick_behind_it() {
    use super::enumerate::{Enumerator, SeenDevice};
    static SEEN: std::sync::Mutex<Vec<SeenDevice>> = std::sync::Mutex::new(Vec::new());
    let mut sim = Sim::new(true, 1024);
    let mut walk = Enumerator::new();
    walk.on_device = Some(|device| SEEN.lock().unwrap().push(*device));
    walk.walk(&mut sim, Speed::Full).expect("the walk");
    let seen = SEEN.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].hub && !seen[0].mass_storage);
    assert_eq!((seen[0].address, seen[0].depth, seen[0].port), (1, 0, 0));
    assert!(seen[1].mass_storage && !seen[1].hub);
    assert_eq!((seen[1].address, seen[1].depth, seen[1].port), (2, 1, 3));
    assert_eq!(seen[1].descriptor.vendor_id, 0x0781);
    assert_eq!(seen[1].speed, Speed::Full);
    assert_eq!((walk.devices, walk.hubs), (2, 1));
}

#[test]
fn unit_becoming_ready_is_waited_for_with_sense() {
    let mut sim = Sim::new(false, 64);
    sim.faults.not_ready_commands = 3;
    let stick = find_first_mass_storage(sim, Speed::High).expect("ready after retries");
    assert_eq!(stick.device().hub_depth, 0);
    assert_eq!(stick.block_count(), 64);

    let mut never = Sim::new(false, 64);
    never.faults.not_ready_commands = u32::MAX;
    match find_first_mass_storage(never, Speed::High) {
        Err((_, MassStorageError::NotReady { sense: Some(sense) })) => {
            assert_eq!((sense.key, sense.asc, sense.ascq), (2, 4, 1));
        }
        other => panic!(
            "expected NotReady with sense, got {:?}",
            other.err().map(|e| e.1)
        ),
    }
}

#[test]
fn stalled_csw_is_cleared_and_phase_error_recovers() {
    let sim = Sim::new(false, 64);
    let expected = sim.disk.clone();
    let mut stick = find_first_mass_storage(sim, Speed::High).expect("stick found");
    let mut buffer = vec![0u8; 512];

    stick.host_mut_for_tests().faults.stall_csw_once = true;
    stick
        .read_blocks(2, &mut buffer)
        .expect("CSW re-read after clear halt");
    assert_eq!(buffer, expected[1024..1536]);

    stick.host_mut_for_tests().faults.phase_error_once = true;
    stick
        .read_blocks(3, &mut buffer)
        .expect("retried after reset recovery");
    assert_eq!(buffer, expected[1536..2048]);
    assert_eq!(stick.recoveries(), 1);
    assert_eq!(stick.host().recoveries_seen, 1);
}

#[test]
fn a_device_that_stops_answering_fails_cleanly() {
    let sim = Sim::new(false, 64);
    let mut stick = find_first_mass_storage(sim, Speed::High).expect("stick found");
    stick.host_mut_for_tests().faults.dead = true;
    let mut buffer = vec![0u8; 512];
    assert_eq!(
        stick.read_blocks(0, &mut buffer),
        Err(MassStorageError::Transfer {
            phase: super::mass_storage::Phase::Command,
            error: TransferError::TransactionError
        })
    );
}

#[test]
fn an_unplugged_stick_fails_at_once_without_retries_or_reset_recovery() {
    let sim = Sim::new(true, 64);
    let mut stick = find_first_mass_storage(sim, Speed::Full).expect("stick found");
    // While open, the host watches the hub port the stick hangs on.
    let watched = stick.host().watched.expect("a watched port");
    assert_eq!(watched.port, 3);
    assert_eq!(watched.hub.device_address, stick.host().hub_address);
    assert_eq!(stick.device().parent, Some(watched));

    stick.host_mut_for_tests().faults.unplugged = true;
    let before = stick.host().transfers;
    let mut buffer = vec![0u8; 512];
    let error = stick.read_blocks(0, &mut buffer).expect_err("unplugged");
    assert_eq!(
        error,
        MassStorageError::Transfer {
            phase: super::mass_storage::Phase::Command,
            error: TransferError::DeviceGone
        }
    );
    assert!(error.is_device_gone());
    assert_eq!(stick.host().transfers - before, 1, "one CBW, no retries");
    assert_eq!(stick.recoveries(), 0, "no reset recovery of a gone device");
    let host = stick.into_host();
    assert_eq!(host.watched, None, "nothing watched once closed");
}

#[test]
fn nothing_usable_is_a_clear_error() {
    let mut sim = Sim::new(true, 64);
    sim.faults.dead = true;
    match find_first_mass_storage(sim, Speed::Full) {
        Err((_, MassStorageError::Enumeration(EnumerationError::Transfer { .. }))) => {}
        other => panic!(
            "expected a transfer error, got {:?}",
            other.err().map(|e| e.1)
        ),
    }
}

/// Records a [`HostController`]'s answers as the USB fuzz target's input reads them
/// (`recovery-proto/fuzz/fuzz_targets/usb_stick.rs`): per transfer an outcome byte
/// (0 = success, 0xf0.. = an error), then for an IN data stage a length byte (0xff: the
/// whole buffer) and the bytes.
#[derive(Debug)]
struct Recorder<H> {
    inner: H,
    transcript: Vec<u8>,
}

impl<H> Recorder<H> {
    fn outcome<T>(&mut self, result: &Result<T, TransferError>) {
        self.transcript.push(match result {
            Ok(_) => 0,
            Err(TransferError::Stall) => 0xf0,
            Err(TransferError::Babble) => 0xf1,
            Err(TransferError::NakTimeout) => 0xf4,
            Err(TransferError::Timeout) => 0xf5,
            Err(TransferError::DeviceGone) => 0xf6,
            Err(_) => 0xf2,
        });
    }

    fn data(&mut self, received: &[u8], capacity: usize) {
        let length = if received.len() == capacity && capacity >= 0xff {
            0xff
        } else {
            u8::try_from(received.len()).expect("a short IN of under 255 bytes")
        };
        self.transcript.push(length);
        self.transcript.extend_from_slice(received);
    }
}

impl<H: HostController> HostController for Recorder<H> {
    fn control_transfer(
        &mut self,
        endpoint: &Endpoint,
        setup: &SetupPacket,
        data: ControlData<'_>,
    ) -> Result<usize, TransferError> {
        match data {
            ControlData::In(buffer) => {
                let result = self
                    .inner
                    .control_transfer(endpoint, setup, ControlData::In(buffer));
                self.outcome(&result);
                if let Ok(length) = result {
                    self.data(&buffer[..length], buffer.len());
                }
                result
            }
            other => {
                let result = self.inner.control_transfer(endpoint, setup, other);
                self.outcome(&result);
                result
            }
        }
    }

    fn bulk_in(&mut self, pipe: &mut BulkPipe, buffer: &mut [u8]) -> Result<usize, TransferError> {
        let result = self.inner.bulk_in(pipe, buffer);
        self.outcome(&result);
        if let Ok(length) = result {
            self.data(&buffer[..length], buffer.len());
        }
        result
    }

    fn bulk_out(&mut self, pipe: &mut BulkPipe, data: &[u8]) -> Result<(), TransferError> {
        let result = self.inner.bulk_out(pipe, data);
        self.outcome(&result);
        result
    }

    fn delay(&mut self, duration: Duration) {
        self.inner.delay(duration);
    }

    fn start_timer(&mut self, timeout: Duration) -> HostTimer {
        self.inner.start_timer(timeout)
    }

    fn expired(&mut self, timer: &HostTimer) -> bool {
        self.inner.expired(timer)
    }
}

/// The USB fuzz target's seed is what this simulated hub and stick answer to enumeration,
/// the mass-storage bring-up and three 8-block reads: the committed seed must match it
/// (`ZBOOT_WRITE_FUZZ_SEEDS=1` rewrites it).
#[test]
fn the_usb_fuzz_seed_is_the_simulated_sticks_transcript() {
    let recorder = Recorder {
        inner: Sim::new(true, 1024),
        transcript: Vec::new(),
    };
    let mut stick = find_first_mass_storage(recorder, Speed::Full).expect("stick found");
    let mut buffer = std::vec![0u8; 4096];
    for lba in [0, 1, 63] {
        stick.read_blocks(lba, &mut buffer).expect("read");
    }
    // Byte 0 selects the speed in the fuzz target (0: full speed).
    let mut seed = std::vec![0u8];
    seed.extend_from_slice(&stick.into_host().transcript);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../recovery-proto/fuzz/corpus/usb_stick/seed-hub-and-stick"
    );
    if std::env::var_os("ZBOOT_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, &seed).unwrap();
    }
    assert_eq!(
        std::fs::read(path).expect("the committed seed"),
        seed,
        "the seed is stale: rerun with ZBOOT_WRITE_FUZZ_SEEDS=1"
    );
}
