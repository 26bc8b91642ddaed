//! USB mass storage: Bulk-Only Transport carrying SCSI block commands, and the block reader the recovery flow uses.
//!
//! Transport: USB Mass Storage Class Bulk-Only Transport 1.0 ("BBB"):
//! a 31-byte Command Block Wrapper on bulk OUT (§5.1), the data stage,
//! a 13-byte Command Status Wrapper on bulk IN (§5.2), checked for
//! signature, tag and residue (§6.3). A STALL of the data stage or of the
//! CSW is cleared and the CSW read again (§6.7.2, §6.7.3); a phase error
//! or an invalid CSW ends in reset recovery (§5.3.4: Bulk-Only Mass
//! Storage Reset, then CLEAR_FEATURE(ENDPOINT_HALT) on Bulk-In and
//! Bulk-Out).
//!
//! Commands (opcodes and layouts from SPC-4 and SBC-3): INQUIRY (0x12,
//! SPC-4 §6.6), TEST UNIT READY (0x00, SPC-4 §6.37), REQUEST SENSE (0x03,
//! SPC-4 §6.39, fixed-format sense §4.5.3), READ CAPACITY(10) (0x25, SBC-3
//! §5.16), READ CAPACITY(16) (0x9E/0x10, SBC-3 §5.17), READ(10) (0x28,
//! SBC-3 §5.11), READ(16) (0x88, SBC-3 §5.13).

use core::fmt;
use core::time::Duration;

use super::descriptor::{self, InterfaceInfo};
use super::enumerate::{EnumerationError, Enumerator, FoundDevice};
use super::{
    BulkPipe, ControlData, Direction, Endpoint, HostController, SetupPacket, Speed, TransferError,
    TransferKind,
};

/// The only block size zboot reads (512-byte sectors).
pub const BLOCK_SIZE: usize = 512;
/// Bytes per READ command: 64 KiB (128 blocks); larger reads are split.
pub const MAX_READ_BYTES: usize = 64 * 1024;
/// How long TEST UNIT READY may keep failing while the unit spins up.
pub const UNIT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between TEST UNIT READY attempts.
const UNIT_READY_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts of a READ command before its error is returned (each failed
/// attempt goes through REQUEST SENSE or reset recovery first).
pub const READ_ATTEMPTS: u32 = 3;

/// dCBWSignature "USBC" (BBB §5.1).
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
/// dCSWSignature "USBS" (BBB §5.2).
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
/// CBW length (BBB §5.1).
pub const CBW_LENGTH: usize = 31;
/// CSW length (BBB §5.2).
pub const CSW_LENGTH: usize = 13;

/// SCSI opcodes.
pub mod opcode {
    /// TEST UNIT READY (SPC-4 §6.37).
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE (SPC-4 §6.39).
    pub const REQUEST_SENSE: u8 = 0x03;
    /// INQUIRY (SPC-4 §6.6).
    pub const INQUIRY: u8 = 0x12;
    /// READ CAPACITY(10) (SBC-3 §5.16).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10) (SBC-3 §5.11).
    pub const READ_10: u8 = 0x28;
    /// READ(16) (SBC-3 §5.13).
    pub const READ_16: u8 = 0x88;
    /// SERVICE ACTION IN(16), with service action 0x10 = READ CAPACITY(16)
    /// (SBC-3 §5.17).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
}

/// A Command Block Wrapper (BBB §5.1, Table 5.1).
pub fn command_block_wrapper(
    tag: u32,
    transfer_length: u32,
    direction_in: bool,
    lun: u8,
    command: &[u8],
) -> [u8; CBW_LENGTH] {
    let mut cbw = [0u8; CBW_LENGTH];
    cbw[0..4].copy_from_slice(&CBW_SIGNATURE.to_le_bytes());
    cbw[4..8].copy_from_slice(&tag.to_le_bytes());
    cbw[8..12].copy_from_slice(&transfer_length.to_le_bytes());
    cbw[12] = if direction_in { 0x80 } else { 0 };
    cbw[13] = lun & 0x0f;
    let length = command.len().min(16);
    cbw[14] = length as u8;
    cbw[15..15 + length].copy_from_slice(&command[..length]);
    cbw
}

/// bCSWStatus (BBB §5.2, Table 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    /// Command Passed.
    Passed,
    /// Command Failed (sense data explains).
    Failed,
    /// Phase Error: reset recovery needed.
    PhaseError,
}

/// A checked CSW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandStatusWrapper {
    /// dCSWDataResidue.
    pub residue: u32,
    /// bCSWStatus.
    pub status: CommandStatus,
}

/// Why a CSW is not valid or not meaningful (BBB §6.3.1, §6.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CswError {
    /// Not 13 bytes.
    Length { got: usize },
    /// Wrong dCSWSignature.
    Signature { found: u32 },
    /// dCSWTag differs from the CBW's.
    Tag { expected: u32, found: u32 },
    /// bCSWStatus above 2.
    Status { found: u8 },
    /// Residue larger than the transfer length.
    Residue { residue: u32, length: u32 },
}

fn le32(bytes: &[u8], offset: usize) -> u32 {
    match bytes.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn be32(bytes: &[u8], offset: usize) -> u32 {
    match bytes.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Checks a CSW against the CBW's tag and transfer length.
pub fn parse_csw(
    bytes: &[u8],
    tag: u32,
    transfer_length: u32,
) -> Result<CommandStatusWrapper, CswError> {
    if bytes.len() != CSW_LENGTH {
        return Err(CswError::Length { got: bytes.len() });
    }
    let signature = le32(bytes, 0);
    if signature != CSW_SIGNATURE {
        return Err(CswError::Signature { found: signature });
    }
    let found = le32(bytes, 4);
    if found != tag {
        return Err(CswError::Tag {
            expected: tag,
            found,
        });
    }
    let residue = le32(bytes, 8);
    let status = match bytes[12] {
        0 => CommandStatus::Passed,
        1 => CommandStatus::Failed,
        2 => CommandStatus::PhaseError,
        found => return Err(CswError::Status { found }),
    };
    if status != CommandStatus::PhaseError && residue > transfer_length {
        return Err(CswError::Residue {
            residue,
            length: transfer_length,
        });
    }
    Ok(CommandStatusWrapper { residue, status })
}

/// Sense data's key, ASC and ASCQ (SPC-4 §4.5.3 fixed format: byte 2 bits
/// 3..0, bytes 12, 13; descriptor format §4.5.2: bytes 1, 2, 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// SENSE KEY (2 = NOT READY, 3 = MEDIUM ERROR, 6 = UNIT ATTENTION, ...).
    pub key: u8,
    /// ADDITIONAL SENSE CODE.
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER.
    pub ascq: u8,
}

impl Sense {
    /// Decodes fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        match bytes.first().map(|code| code & 0x7f) {
            Some(0x70 | 0x71) if bytes.len() >= 14 => Some(Self {
                key: bytes[2] & 0x0f,
                asc: bytes[12],
                ascq: bytes[13],
            }),
            Some(0x72 | 0x73) if bytes.len() >= 4 => Some(Self {
                key: bytes[1] & 0x0f,
                asc: bytes[2],
                ascq: bytes[3],
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sense key 0x{:x}, ASC/ASCQ 0x{:02x}/0x{:02x}",
            self.key, self.asc, self.ascq
        )
    }
}

/// Standard INQUIRY data's identification (SPC-4 §6.6.2, Table 142).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inquiry {
    /// PERIPHERAL DEVICE TYPE (0 = direct access block device).
    pub device_type: u8,
    /// RMB: removable medium.
    pub removable: bool,
    /// T10 VENDOR IDENTIFICATION (bytes 8..16, ASCII).
    pub vendor: [u8; 8],
    /// PRODUCT IDENTIFICATION (bytes 16..32).
    pub product: [u8; 16],
    /// PRODUCT REVISION LEVEL (bytes 32..36).
    pub revision: [u8; 4],
}

impl Inquiry {
    /// Bytes requested (the standard data's first 36 bytes).
    pub const LENGTH: usize = 36;

    /// Parses the first 36 bytes of standard INQUIRY data.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LENGTH {
            return None;
        }
        let mut inquiry = Self {
            device_type: bytes[0] & 0x1f,
            removable: bytes[1] & 0x80 != 0,
            vendor: [0; 8],
            product: [0; 16],
            revision: [0; 4],
        };
        inquiry.vendor.copy_from_slice(&bytes[8..16]);
        inquiry.product.copy_from_slice(&bytes[16..32]);
        inquiry.revision.copy_from_slice(&bytes[32..36]);
        Some(inquiry)
    }

    /// A field as trimmed printable ASCII.
    pub fn text(field: &[u8]) -> &str {
        let end = field
            .iter()
            .rposition(|&byte| byte != b' ' && byte != 0)
            .map_or(0, |last| last + 1);
        let trimmed = &field[..end];
        if trimmed.iter().all(|byte| (0x20..0x7f).contains(byte)) {
            core::str::from_utf8(trimmed).unwrap_or("?")
        } else {
            "?"
        }
    }
}

/// READ CAPACITY(10) data: returned last LBA and block length (SBC-3
/// §5.16.2, big-endian). `None` if short.
pub fn parse_read_capacity_10(bytes: &[u8]) -> Option<(u32, u32)> {
    (bytes.len() >= 8).then(|| (be32(bytes, 0), be32(bytes, 4)))
}

/// READ CAPACITY(16) data: last LBA (u64) and block length (SBC-3 §5.17.2).
pub fn parse_read_capacity_16(bytes: &[u8]) -> Option<(u64, u32)> {
    if bytes.len() < 12 {
        return None;
    }
    let last = (u64::from(be32(bytes, 0)) << 32) | u64::from(be32(bytes, 4));
    Some((last, be32(bytes, 8)))
}

/// The READ command for `blocks` blocks at `lba`: READ(10) when both fit
/// its 32-bit LBA / 16-bit length, else READ(16). Returns the CDB and its
/// length.
pub fn read_command(lba: u64, blocks: u32) -> ([u8; 16], usize) {
    let mut cdb = [0u8; 16];
    if let (Ok(lba32), Ok(blocks16)) = (u32::try_from(lba), u16::try_from(blocks))
        && u64::from(lba32) + u64::from(blocks16) <= u64::from(u32::MAX) + 1
    {
        cdb[0] = opcode::READ_10;
        cdb[2..6].copy_from_slice(&lba32.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks16.to_be_bytes());
        (cdb, 10)
    } else {
        cdb[0] = opcode::READ_16;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        (cdb, 16)
    }
}

/// What the mass-storage layer was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Sending the CBW.
    Command,
    /// The data stage.
    Data,
    /// Reading the CSW.
    Status,
    /// Reset recovery.
    ResetRecovery,
}

/// Mass-storage errors the recovery flow reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MassStorageError {
    /// Enumeration found no usable device (or it failed).
    Enumeration(EnumerationError),
    /// A transfer failed in a BBB phase.
    Transfer { phase: Phase, error: TransferError },
    /// The CSW was invalid (reset recovery was done).
    InvalidCsw(CswError),
    /// The device reported a phase error (reset recovery was done).
    PhaseError { opcode: u8 },
    /// The command failed; the sense data says why (if it could be read).
    CheckCondition { opcode: u8, sense: Option<Sense> },
    /// TEST UNIT READY kept failing.
    NotReady { sense: Option<Sense> },
    /// A reply was too short to parse.
    ShortReply { opcode: u8, got: usize },
    /// The device's blocks are not 512 bytes.
    UnsupportedBlockSize { block_size: u32 },
    /// The read is outside the device or not a whole number of blocks.
    OutOfRange {
        lba: u64,
        blocks: u64,
        capacity: u64,
    },
    /// The buffer is not a whole number of 512-byte blocks.
    PartialBlock { length: usize },
}

impl MassStorageError {
    /// Whether the device was unplugged ([`TransferError::DeviceGone`]):
    /// nothing more can be read from it; a new device must be enumerated.
    pub const fn is_device_gone(&self) -> bool {
        matches!(
            self,
            Self::Transfer {
                error: TransferError::DeviceGone,
                ..
            }
        )
    }
}

impl fmt::Display for MassStorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Enumeration(error @ EnumerationError::NoMassStorage { .. }) => {
                write!(f, "{error}")
            }
            Self::Enumeration(error) => {
                write!(f, "no USB mass-storage device: enumeration failed: {error}")
            }
            Self::Transfer { phase, error } => write!(f, "mass storage {phase:?} phase: {error}"),
            Self::InvalidCsw(error) => write!(f, "invalid CSW ({error:?}); reset recovery done"),
            Self::PhaseError { opcode } => {
                write!(f, "phase error on SCSI 0x{opcode:02x}; reset recovery done")
            }
            Self::CheckCondition {
                opcode,
                sense: Some(sense),
            } => write!(f, "SCSI 0x{opcode:02x} failed: {sense}"),
            Self::CheckCondition {
                opcode,
                sense: None,
            } => {
                write!(f, "SCSI 0x{opcode:02x} failed (no sense data)")
            }
            Self::NotReady { sense: Some(sense) } => write!(f, "unit not ready: {sense}"),
            Self::NotReady { sense: None } => f.write_str("unit not ready"),
            Self::ShortReply { opcode, got } => {
                write!(f, "SCSI 0x{opcode:02x} returned only {got} bytes")
            }
            Self::UnsupportedBlockSize { block_size } => {
                write!(f, "block size {block_size} unsupported (only 512)")
            }
            Self::OutOfRange {
                lba,
                blocks,
                capacity,
            } => write!(
                f,
                "read of {blocks} block(s) at LBA {lba} outside {capacity} blocks"
            ),
            Self::PartialBlock { length } => {
                write!(f, "buffer of {length} bytes is not whole 512-byte blocks")
            }
        }
    }
}

/// Bulk-Only Mass Storage Reset (BBB §3.1): class request to the interface.
pub const fn bulk_only_reset(interface: u8) -> SetupPacket {
    SetupPacket {
        request_type: 0x21,
        request: 0xff,
        value: 0,
        index: interface as u16,
        length: 0,
    }
}

/// A USB mass-storage device (LUN 0) ready for block reads.
#[derive(Debug)]
pub struct UsbMassStorage<H: HostController> {
    host: H,
    device: FoundDevice,
    bulk_in: BulkPipe,
    bulk_out: BulkPipe,
    tag: u32,
    blocks: u64,
    inquiry: Inquiry,
    commands: u64,
    recoveries: u32,
}

/// Enumerates from the root port (just reset, at `root_speed`) and opens
/// the first Bulk-Only SCSI device found: INQUIRY, TEST UNIT READY until
/// ready (bounded), READ CAPACITY. Every step is bounded; failures name
/// what failed ([`MassStorageError::Enumeration`] with
/// [`EnumerationError::NoMassStorage`] when nothing suitable is attached).
pub fn find_first_mass_storage<H: HostController>(
    mut host: H,
    root_speed: Speed,
) -> Result<UsbMassStorage<H>, (H, MassStorageError)> {
    let mut enumerator = Enumerator::new();
    match enumerator.find_mass_storage(&mut host, root_speed) {
        Ok(device) => UsbMassStorage::open(host, device),
        Err(error) => Err((host, MassStorageError::Enumeration(error))),
    }
}

fn bulk_pipe(device: &FoundDevice, interface: &InterfaceInfo, direction_in: bool) -> BulkPipe {
    let info = interface.bulk_endpoint(direction_in);
    BulkPipe::new(Endpoint {
        number: info.map_or(0, |endpoint| endpoint.address & 0x0f),
        direction: if direction_in {
            Direction::In
        } else {
            Direction::Out
        },
        kind: TransferKind::Bulk,
        max_packet_size: info.map_or(64, |endpoint| endpoint.max_packet_size),
        ..device.control
    })
}

impl<H: HostController> UsbMassStorage<H> {
    /// Opens LUN 0 of `device` (found by enumeration). While it is open,
    /// the host watches the hub port the device hangs on
    /// ([`HostController::watch_attachment`]), so an unplugged stick ends
    /// the transfer under way with [`TransferError::DeviceGone`].
    pub fn open(mut host: H, device: FoundDevice) -> Result<Self, (H, MassStorageError)> {
        host.watch_attachment(device.parent);
        let mut storage = Self {
            host,
            bulk_in: bulk_pipe(&device, &device.interface, true),
            bulk_out: bulk_pipe(&device, &device.interface, false),
            device,
            tag: 0,
            blocks: 0,
            inquiry: Inquiry {
                device_type: 0,
                removable: false,
                vendor: [0; 8],
                product: [0; 16],
                revision: [0; 4],
            },
            commands: 0,
            recoveries: 0,
        };
        match storage.identify() {
            Ok(()) => Ok(storage),
            Err(error) => Err((storage.into_host(), error)),
        }
    }

    fn identify(&mut self) -> Result<(), MassStorageError> {
        let mut inquiry = [0u8; 6];
        inquiry[0] = opcode::INQUIRY;
        inquiry[4] = Inquiry::LENGTH as u8;
        let mut data = [0u8; Inquiry::LENGTH];
        let got = self.command_in(&inquiry, &mut data)?;
        self.inquiry = Inquiry::parse(&data[..got]).ok_or(MassStorageError::ShortReply {
            opcode: opcode::INQUIRY,
            got,
        })?;

        let timer = self.host.start_timer(UNIT_READY_TIMEOUT);
        loop {
            match self.command(&[opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0], None) {
                Ok(_) => break,
                Err(MassStorageError::CheckCondition { sense, .. }) => {
                    if self.host.expired(&timer) {
                        return Err(MassStorageError::NotReady { sense });
                    }
                    self.host.delay(UNIT_READY_INTERVAL);
                }
                Err(error) => return Err(error),
            }
        }

        let mut capacity = [0u8; 8];
        let got = self.command_in(
            &[opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &mut capacity,
        )?;
        let (last, block_size) =
            parse_read_capacity_10(&capacity[..got]).ok_or(MassStorageError::ShortReply {
                opcode: opcode::READ_CAPACITY_10,
                got,
            })?;
        let (last, block_size) = if last == u32::MAX {
            let mut cdb = [0u8; 16];
            cdb[0] = opcode::SERVICE_ACTION_IN_16;
            cdb[1] = 0x10;
            cdb[13] = 32;
            let mut data = [0u8; 32];
            let got = self.command_in(&cdb, &mut data)?;
            parse_read_capacity_16(&data[..got]).ok_or(MassStorageError::ShortReply {
                opcode: opcode::SERVICE_ACTION_IN_16,
                got,
            })?
        } else {
            (u64::from(last), block_size)
        };
        if block_size as usize != BLOCK_SIZE {
            return Err(MassStorageError::UnsupportedBlockSize { block_size });
        }
        self.blocks = last + 1;
        Ok(())
    }

    /// Blocks on the device (READ CAPACITY's last LBA + 1).
    pub fn block_count(&self) -> u64 {
        self.blocks
    }

    /// Block size in bytes: always [`BLOCK_SIZE`] (others are refused at open).
    pub fn block_size(&self) -> usize {
        BLOCK_SIZE
    }

    /// The INQUIRY identification.
    pub fn inquiry(&self) -> &Inquiry {
        &self.inquiry
    }

    /// The device as enumerated (address, speed, descriptor, hub depth).
    pub fn device(&self) -> &FoundDevice {
        &self.device
    }

    /// SCSI commands sent so far (REQUEST SENSE included).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// Reset recoveries done so far.
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// The host controller (for its counters).
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host controller, mutable (host tests inject faults through it).
    #[cfg(test)]
    pub(crate) fn host_mut_for_tests(&mut self) -> &mut H {
        &mut self.host
    }

    /// Gives the host controller back (no longer watching the device's port).
    pub fn into_host(self) -> H {
        let mut host = self.host;
        host.watch_attachment(None);
        host
    }

    /// Reads whole 512-byte blocks from `lba` into `buffer` (its length a
    /// multiple of 512), at most [`MAX_READ_BYTES`] per command, each
    /// command tried [`READ_ATTEMPTS`] times.
    pub fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), MassStorageError> {
        if !buffer.len().is_multiple_of(BLOCK_SIZE) {
            return Err(MassStorageError::PartialBlock {
                length: buffer.len(),
            });
        }
        let blocks = (buffer.len() / BLOCK_SIZE) as u64;
        if lba.checked_add(blocks).is_none_or(|end| end > self.blocks) {
            return Err(MassStorageError::OutOfRange {
                lba,
                blocks,
                capacity: self.blocks,
            });
        }
        for (index, piece) in buffer.chunks_mut(MAX_READ_BYTES).enumerate() {
            let start = lba + (index * (MAX_READ_BYTES / BLOCK_SIZE)) as u64;
            let count = (piece.len() / BLOCK_SIZE) as u32;
            let (cdb, length) = read_command(start, count);
            let mut attempt = 1;
            loop {
                match self.command_in(&cdb[..length], piece) {
                    Ok(got) if got == piece.len() => break,
                    Ok(got) => {
                        if attempt >= READ_ATTEMPTS {
                            return Err(MassStorageError::ShortReply {
                                opcode: cdb[0],
                                got,
                            });
                        }
                    }
                    // An unplugged stick answers no retry.
                    Err(error) => {
                        if attempt >= READ_ATTEMPTS || error.is_device_gone() {
                            return Err(error);
                        }
                    }
                }
                attempt += 1;
            }
        }
        Ok(())
    }

    /// A command with a data-in stage into `data`; returns bytes received.
    fn command_in(&mut self, cdb: &[u8], data: &mut [u8]) -> Result<usize, MassStorageError> {
        self.command(cdb, Some(data))
    }

    /// One BBB command; on CHECK CONDITION, REQUEST SENSE is sent and its
    /// sense data returned in the error.
    fn command(&mut self, cdb: &[u8], data: Option<&mut [u8]>) -> Result<usize, MassStorageError> {
        match self.transport(cdb, data) {
            Err(MassStorageError::CheckCondition { opcode, .. }) => {
                let mut sense = [0u8; 18];
                let request = [opcode::REQUEST_SENSE, 0, 0, 0, sense.len() as u8, 0];
                let sense = match self.transport(&request, Some(&mut sense)) {
                    Ok(got) => Sense::parse(sense.get(..got).unwrap_or(&[])),
                    Err(_) => None,
                };
                Err(MassStorageError::CheckCondition { opcode, sense })
            }
            other => other,
        }
    }

    /// CBW, data, CSW (BBB §5), with the host error handling of §6.7.
    fn transport(
        &mut self,
        cdb: &[u8],
        data: Option<&mut [u8]>,
    ) -> Result<usize, MassStorageError> {
        let opcode = cdb.first().copied().unwrap_or(0);
        self.tag = self.tag.wrapping_add(1);
        let tag = self.tag;
        self.commands += 1;
        let length = data.as_ref().map_or(0, |data| data.len());
        let cbw = command_block_wrapper(tag, length as u32, data.is_some(), 0, cdb);
        if let Err(error) = self.host.bulk_out(&mut self.bulk_out, &cbw) {
            // A CBW the device refuses: reset recovery (§5.3.4).
            self.reset_recovery_unless_gone(error);
            return Err(MassStorageError::Transfer {
                phase: Phase::Command,
                error,
            });
        }
        let mut received = 0;
        if let Some(data) = data {
            match self.host.bulk_in(&mut self.bulk_in, data) {
                Ok(got) => received = got,
                // §6.7.2: a STALLed data stage: clear it, then read the CSW.
                Err(TransferError::Stall) => {
                    self.clear_halt_in()
                        .map_err(|error| MassStorageError::Transfer {
                            phase: Phase::Data,
                            error,
                        })?;
                }
                Err(error) => {
                    self.reset_recovery_unless_gone(error);
                    return Err(MassStorageError::Transfer {
                        phase: Phase::Data,
                        error,
                    });
                }
            }
        }
        let csw = self.read_csw(tag, length as u32)?;
        match csw.status {
            CommandStatus::Passed => Ok(received),
            CommandStatus::Failed => Err(MassStorageError::CheckCondition {
                opcode,
                sense: None,
            }),
            CommandStatus::PhaseError => {
                self.reset_recovery();
                Err(MassStorageError::PhaseError { opcode })
            }
        }
    }

    fn read_csw(
        &mut self,
        tag: u32,
        length: u32,
    ) -> Result<CommandStatusWrapper, MassStorageError> {
        let mut bytes = [0u8; CSW_LENGTH];
        let mut got = self.host.bulk_in(&mut self.bulk_in, &mut bytes);
        if got == Err(TransferError::Stall) {
            // §6.7.2/§6.7.3: clear the halt and try the CSW once more.
            if let Err(error) = self.clear_halt_in() {
                self.reset_recovery_unless_gone(error);
                return Err(MassStorageError::Transfer {
                    phase: Phase::Status,
                    error,
                });
            }
            got = self.host.bulk_in(&mut self.bulk_in, &mut bytes);
        }
        let got = match got {
            Ok(got) => got,
            Err(error) => {
                self.reset_recovery_unless_gone(error);
                return Err(MassStorageError::Transfer {
                    phase: Phase::Status,
                    error,
                });
            }
        };
        parse_csw(&bytes[..got], tag, length).map_err(|error| {
            self.reset_recovery();
            MassStorageError::InvalidCsw(error)
        })
    }

    fn clear_halt(&mut self, direction_in: bool) -> Result<(), TransferError> {
        let pipe = if direction_in {
            &mut self.bulk_in
        } else {
            &mut self.bulk_out
        };
        let address = pipe.endpoint.number | if direction_in { 0x80 } else { 0 };
        self.host.control_transfer(
            &self.device.control,
            &descriptor::clear_endpoint_halt(address),
            ControlData::None,
        )?;
        // The device resets its toggle to DATA0 (USB 2.0 §9.4.5).
        pipe.toggle = super::Toggle::Data0;
        Ok(())
    }

    fn clear_halt_in(&mut self) -> Result<(), TransferError> {
        self.clear_halt(true)
    }

    /// Reset recovery after `error`, unless the device was unplugged: there
    /// is nobody to reset, and each request would only fail the same way.
    fn reset_recovery_unless_gone(&mut self, error: TransferError) {
        if error != TransferError::DeviceGone {
            self.reset_recovery();
        }
    }

    /// Reset recovery (BBB §5.3.4): Bulk-Only Mass Storage Reset, then
    /// clear HALT on Bulk-In and Bulk-Out. Errors here are not reported
    /// separately: the command's own error already says what failed, and
    /// the next command will fail the same way if the device is gone.
    fn reset_recovery(&mut self) {
        self.recoveries += 1;
        let reset = bulk_only_reset(self.device.interface.number);
        let reset = self
            .host
            .control_transfer(&self.device.control, &reset, ControlData::None);
        if reset == Err(TransferError::DeviceGone) {
            return;
        }
        if self.clear_halt(true) == Err(TransferError::DeviceGone) {
            return;
        }
        let _ = self.clear_halt(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbw_layout() {
        let cbw = command_block_wrapper(
            7,
            512,
            true,
            0,
            &[opcode::READ_10, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        );
        assert_eq!(&cbw[0..4], b"USBC");
        assert_eq!(&cbw[4..8], &7u32.to_le_bytes());
        assert_eq!(&cbw[8..12], &512u32.to_le_bytes());
        assert_eq!(cbw[12], 0x80);
        assert_eq!(cbw[14], 10);
        assert_eq!(cbw[15], 0x28);
        assert_eq!(cbw[20], 1);
    }

    fn csw(tag: u32, residue: u32, status: u8) -> [u8; 13] {
        let mut bytes = [0u8; 13];
        bytes[0..4].copy_from_slice(b"USBS");
        bytes[4..8].copy_from_slice(&tag.to_le_bytes());
        bytes[8..12].copy_from_slice(&residue.to_le_bytes());
        bytes[12] = status;
        bytes
    }

    #[test]
    fn csw_checks() {
        assert_eq!(
            parse_csw(&csw(3, 0, 0), 3, 512),
            Ok(CommandStatusWrapper {
                residue: 0,
                status: CommandStatus::Passed
            })
        );
        assert_eq!(
            parse_csw(&csw(3, 0, 0), 4, 512),
            Err(CswError::Tag {
                expected: 4,
                found: 3
            })
        );
        assert_eq!(
            parse_csw(&csw(3, 600, 1), 3, 512),
            Err(CswError::Residue {
                residue: 600,
                length: 512
            })
        );
        assert_eq!(
            parse_csw(&csw(3, 0, 5), 3, 0),
            Err(CswError::Status { found: 5 })
        );
        assert_eq!(
            parse_csw(&csw(3, 0, 2), 3, 0).map(|csw| csw.status),
            Ok(CommandStatus::PhaseError)
        );
        assert_eq!(
            parse_csw(&csw(3, 0, 0)[..12], 3, 0),
            Err(CswError::Length { got: 12 })
        );
        let mut bad = csw(3, 0, 0);
        bad[0] = b'X';
        assert!(matches!(
            parse_csw(&bad, 3, 0),
            Err(CswError::Signature { .. })
        ));
    }

    #[test]
    fn sense_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x02;
        fixed[12] = 0x3a;
        assert_eq!(
            Sense::parse(&fixed),
            Some(Sense {
                key: 2,
                asc: 0x3a,
                ascq: 0
            })
        );
        assert_eq!(
            Sense::parse(&[0x72, 0x06, 0x28, 0x00]),
            Some(Sense {
                key: 6,
                asc: 0x28,
                ascq: 0
            })
        );
        assert_eq!(Sense::parse(&fixed[..10]), None);
        assert_eq!(Sense::parse(&[]), None);
    }

    #[test]
    fn inquiry_and_capacity() {
        let mut data = [b' '; 36];
        data[0] = 0;
        data[1] = 0x80;
        data[8..12].copy_from_slice(b"QEMU");
        data[16..26].copy_from_slice(b"QEMU HARDD");
        let inquiry = Inquiry::parse(&data).expect("36 bytes");
        assert!(inquiry.removable);
        assert_eq!(Inquiry::text(&inquiry.vendor), "QEMU");
        assert_eq!(Inquiry::text(&inquiry.product), "QEMU HARDD");
        assert_eq!(Inquiry::parse(&data[..35]), None);
        assert_eq!(
            parse_read_capacity_10(&[0, 1, 0xff, 0xff, 0, 0, 2, 0]),
            Some((0x1ffff, 512))
        );
        assert_eq!(parse_read_capacity_10(&[0; 7]), None);
        let mut long = [0u8; 32];
        long[3] = 1;
        long[7] = 5;
        long[10] = 2;
        assert_eq!(parse_read_capacity_16(&long), Some(((1 << 32) | 5, 512)));
    }

    #[test]
    fn read_commands_pick_the_smallest_form() {
        let (cdb, length) = read_command(0x0102_0304, 128);
        assert_eq!(length, 10);
        assert_eq!(&cdb[..10], &[0x28, 0, 1, 2, 3, 4, 0, 0, 128, 0]);
        let (cdb, length) = read_command(1 << 32, 1);
        assert_eq!(length, 16);
        assert_eq!(cdb[0], 0x88);
        assert_eq!(&cdb[2..10], &(1u64 << 32).to_be_bytes());
        assert_eq!(&cdb[10..14], &1u32.to_be_bytes());
        // Ends past 2^32 blocks: READ(16).
        assert_eq!(read_command(u64::from(u32::MAX), 2).1, 16);
    }
}
