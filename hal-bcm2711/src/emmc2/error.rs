//! What the EMMC2 driver reports: errors, the waits that ran out, unusable cards.

use core::fmt;

use super::{CardStatus, Command, ErrorStatus, RegisterError};

/// What a bounded EMMC2 wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emmc2Wait {
    /// A software reset bit to self-clear.
    SoftwareReset,
    /// Clock Control: Internal Clock Stable.
    InternalClockStable,
    /// Present State: Command Inhibit (CMD) clear.
    CommandLineFree,
    /// Present State: Command Inhibit (DAT) clear (end of busy).
    DataLineFree,
    /// Command Complete.
    CommandComplete,
    /// Transfer Complete (end of a data transfer or of R1b busy).
    TransferComplete,
    /// Buffer Read Ready.
    BufferReadReady,
    /// Buffer Write Ready.
    BufferWriteReady,
    /// The card's power-up (OCR busy bit) after ACMD41/CMD1.
    CardPowerUp,
    /// The card back in the transfer state after programming (CMD13).
    CardProgramming,
}

/// Why a card cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// CMD8's echo differs from what was sent: the card does not accept
    /// 2.7-3.6 V or garbled the check pattern.
    InterfaceCondition { echo: u32 },
    /// The CSD or EXT_CSD cannot be used.
    Register(RegisterError),
    /// An eMMC older than version 4 (no EXT_CSD).
    EmmcVersion { spec_version: u8 },
    /// The EXT_CSD read after switching bus width/timing differs from the
    /// one read before: the wider bus does not work.
    BusTestFailed,
}

/// EMMC2 driver errors; command failures name the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emmc2Error {
    /// No card answered (no response to CMD55/ACMD41 nor to CMD1), or the
    /// controller refused bus power with no card detected.
    NoCard,
    /// `read_blocks`/`write_blocks` before a successful `init`.
    NotInitialised,
    /// Neither the caller nor the capabilities register gave a base clock.
    NoBaseClock,
    /// No divider brings the base clock down to the target.
    ClockUnreachable { base_clock_hz: u32, target_hz: u32 },
    /// A bounded wait ran out.
    Timeout {
        awaiting: Emmc2Wait,
        command: Option<Command>,
    },
    /// The controller reported errors for a command or its data.
    CommandFailed {
        command: Command,
        status: ErrorStatus,
    },
    /// The card's R1 status carries error bits.
    CardStatus {
        command: Command,
        status: CardStatus,
    },
    /// The card is of a kind or state this driver does not handle.
    UnsupportedCard { reason: Unsupported },
    /// The request reaches past the end of the card.
    OutOfRange { lba: u64, count: u64, capacity: u64 },
    /// The buffer length is not a multiple of 512 bytes.
    BufferLength { length: usize },
}

impl Emmc2Error {
    /// Whether the error means "nothing answered this command".
    pub const fn is_no_response(&self) -> bool {
        match self {
            Self::CommandFailed { status, .. } => status.is_command_timeout(),
            Self::Timeout { awaiting, .. } => matches!(awaiting, Emmc2Wait::CommandComplete),
            _ => false,
        }
    }

    /// Whether retrying the transfer may help (bus and card errors), as
    /// opposed to errors in the request itself or the card's identity.
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::CommandFailed { .. } | Self::CardStatus { .. }
        )
    }
}

impl fmt::Display for Emmc2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCard => write!(f, "EMMC2: no card (nothing answered CMD55/ACMD41 or CMD1)"),
            Self::NotInitialised => write!(f, "EMMC2: card not initialised"),
            Self::NoBaseClock => write!(
                f,
                "EMMC2: base clock unknown (mailbox and capabilities give 0)"
            ),
            Self::ClockUnreachable {
                base_clock_hz,
                target_hz,
            } => write!(
                f,
                "EMMC2: no divider brings {base_clock_hz} Hz down to {target_hz} Hz"
            ),
            Self::Timeout {
                awaiting,
                command: Some(command),
            } => write!(f, "EMMC2: timed out waiting for {awaiting:?} ({command})"),
            Self::Timeout {
                awaiting,
                command: None,
            } => write!(f, "EMMC2: timed out waiting for {awaiting:?}"),
            Self::CommandFailed { command, status } => {
                write!(f, "EMMC2: {command} failed: {status}")
            }
            Self::CardStatus { command, status } => {
                write!(f, "EMMC2: {command}: card status {status}")
            }
            Self::UnsupportedCard { reason } => write!(f, "EMMC2: unsupported card: {reason:?}"),
            Self::OutOfRange {
                lba,
                count,
                capacity,
            } => write!(
                f,
                "EMMC2: blocks {lba}+{count} are beyond the card's {capacity} blocks"
            ),
            Self::BufferLength { length } => {
                write!(
                    f,
                    "EMMC2: {length} bytes is not a whole number of 512-byte blocks"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::string::ToString;

    #[test]
    fn errors_name_the_command_and_status() {
        let failed = Emmc2Error::CommandFailed {
            command: Command::ReadMultipleBlock,
            status: ErrorStatus {
                error: 0x0020,
                auto_cmd: 0,
            },
        };
        assert_eq!(
            failed.to_string(),
            "EMMC2: CMD18 READ_MULTIPLE_BLOCK failed: error status 0x0020 (data CRC)"
        );
        assert!(failed.is_retryable());
        assert!(!failed.is_no_response());
        let timeout = Emmc2Error::Timeout {
            awaiting: Emmc2Wait::BufferReadReady,
            command: Some(Command::ReadSingleBlock),
        };
        assert_eq!(
            timeout.to_string(),
            "EMMC2: timed out waiting for BufferReadReady (CMD17 READ_SINGLE_BLOCK)"
        );
        let status = Emmc2Error::CardStatus {
            command: Command::WriteBlock,
            status: CardStatus(0x0400_0900),
        };
        assert_eq!(
            status.to_string(),
            "EMMC2: CMD24 WRITE_BLOCK: card status 0x04000900 (state Transfer, WP_VIOLATION, READY_FOR_DATA)"
        );
    }

    #[test]
    fn no_response_is_recognised() {
        let silent = Emmc2Error::CommandFailed {
            command: Command::AppCmd,
            status: ErrorStatus {
                error: ErrorStatus::COMMAND_TIMEOUT,
                auto_cmd: 0,
            },
        };
        assert!(silent.is_no_response());
        let silent_controller = Emmc2Error::Timeout {
            awaiting: Emmc2Wait::CommandComplete,
            command: Some(Command::SendOpCond),
        };
        assert!(silent_controller.is_no_response());
        assert!(!Emmc2Error::NoCard.is_retryable());
        let out_of_range = Emmc2Error::OutOfRange {
            lba: 10,
            count: 2,
            capacity: 11,
        };
        assert!(!out_of_range.is_retryable());
        assert_eq!(
            out_of_range.to_string(),
            "EMMC2: blocks 10+2 are beyond the card's 11 blocks"
        );
    }
}
