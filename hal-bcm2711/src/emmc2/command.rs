//! SD/eMMC commands: their indices, response types, the SDHCI command word, R1 card status.
//!
//! Command indices, responses and argument formats: SD Physical Layer
//! Simplified Specification (§4.7.4 "Detailed Command Description",
//! Tables 4-19..4-32; §4.9 "Responses"), JEDEC eMMC 5.1 JESD84-B51 (§6.10.4
//! "Detailed command description"). The Command register encoding: SD Host
//! Controller Simplified Specification v3.00 §2.2.5/§2.2.6, including
//! Table 2-9 ("Relation between Parameters and the Name of Response Type"):
//! which responses get the index and CRC checks.

use core::fmt;

use tock_registers::LocalRegisterCopy;
use tock_registers::fields::FieldValue;

use super::registers::TRANSFER_MODE_COMMAND;

/// How the card answers a command, as the SDHCI must be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseType {
    /// No response (CMD0).
    None,
    /// R1, R6, R7: 48 bits, index and CRC checked.
    R1,
    /// R1b: R1 followed by busy on DAT0.
    R1b,
    /// R2: 136 bits (CID, CSD), CRC checked, no index field.
    R2,
    /// R3: 48-bit OCR, neither index nor CRC (both fields are all ones).
    R3,
}

/// The commands zboot sends. SD-only and eMMC-only meanings of the same
/// index are separate variants; application commands (ACMD) are sent after
/// [`Command::AppCmd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// CMD0 GO_IDLE_STATE.
    GoIdleState,
    /// CMD1 SEND_OP_COND (eMMC): R3.
    SendOpCond,
    /// CMD2 ALL_SEND_CID: R2.
    AllSendCid,
    /// CMD3 SEND_RELATIVE_ADDR (SD: the card publishes its RCA): R6.
    SendRelativeAddr,
    /// CMD3 SET_RELATIVE_ADDR (eMMC: the host assigns the RCA): R1.
    SetRelativeAddr,
    /// CMD6 SWITCH_FUNC (SD): R1 + 64-byte status block.
    SwitchFunc,
    /// CMD6 SWITCH (eMMC, writes one EXT_CSD byte): R1b.
    Switch,
    /// CMD7 SELECT/DESELECT_CARD: R1b.
    SelectCard,
    /// CMD8 SEND_IF_COND (SD): R7.
    SendIfCond,
    /// CMD8 SEND_EXT_CSD (eMMC): R1 + 512-byte EXT_CSD.
    SendExtCsd,
    /// CMD9 SEND_CSD: R2.
    SendCsd,
    /// CMD12 STOP_TRANSMISSION: R1b, an abort command.
    StopTransmission,
    /// CMD13 SEND_STATUS: R1.
    SendStatus,
    /// CMD16 SET_BLOCKLEN: R1.
    SetBlocklen,
    /// CMD17 READ_SINGLE_BLOCK: R1 + data.
    ReadSingleBlock,
    /// CMD18 READ_MULTIPLE_BLOCK: R1 + data.
    ReadMultipleBlock,
    /// CMD24 WRITE_BLOCK: R1 + data.
    WriteBlock,
    /// CMD25 WRITE_MULTIPLE_BLOCK: R1 + data.
    WriteMultipleBlock,
    /// CMD55 APP_CMD: R1; the next command is an application command.
    AppCmd,
    /// ACMD6 SET_BUS_WIDTH (SD): R1.
    SetBusWidth,
    /// ACMD41 SD_SEND_OP_COND (SD): R3.
    SdSendOpCond,
}

impl Command {
    /// The command index sent on the bus.
    pub const fn index(self) -> u8 {
        match self {
            Self::GoIdleState => 0,
            Self::SendOpCond => 1,
            Self::AllSendCid => 2,
            Self::SendRelativeAddr | Self::SetRelativeAddr => 3,
            Self::SwitchFunc | Self::Switch | Self::SetBusWidth => 6,
            Self::SelectCard => 7,
            Self::SendIfCond | Self::SendExtCsd => 8,
            Self::SendCsd => 9,
            Self::StopTransmission => 12,
            Self::SendStatus => 13,
            Self::SetBlocklen => 16,
            Self::ReadSingleBlock => 17,
            Self::ReadMultipleBlock => 18,
            Self::WriteBlock => 24,
            Self::WriteMultipleBlock => 25,
            Self::SdSendOpCond => 41,
            Self::AppCmd => 55,
        }
    }

    /// Whether this is an application command (preceded by CMD55).
    pub const fn is_application(self) -> bool {
        matches!(self, Self::SetBusWidth | Self::SdSendOpCond)
    }

    /// The response the card gives.
    pub const fn response(self) -> ResponseType {
        match self {
            Self::GoIdleState => ResponseType::None,
            Self::SendOpCond | Self::SdSendOpCond => ResponseType::R3,
            Self::AllSendCid | Self::SendCsd => ResponseType::R2,
            Self::Switch | Self::SelectCard | Self::StopTransmission => ResponseType::R1b,
            Self::SendRelativeAddr
            | Self::SetRelativeAddr
            | Self::SwitchFunc
            | Self::SendIfCond
            | Self::SendExtCsd
            | Self::SendStatus
            | Self::SetBlocklen
            | Self::ReadSingleBlock
            | Self::ReadMultipleBlock
            | Self::WriteBlock
            | Self::WriteMultipleBlock
            | Self::AppCmd
            | Self::SetBusWidth => ResponseType::R1,
        }
    }

    /// The specification's name of the command.
    pub const fn name(self) -> &'static str {
        match self {
            Self::GoIdleState => "GO_IDLE_STATE",
            Self::SendOpCond => "SEND_OP_COND",
            Self::AllSendCid => "ALL_SEND_CID",
            Self::SendRelativeAddr => "SEND_RELATIVE_ADDR",
            Self::SetRelativeAddr => "SET_RELATIVE_ADDR",
            Self::SwitchFunc => "SWITCH_FUNC",
            Self::Switch => "SWITCH",
            Self::SelectCard => "SELECT_CARD",
            Self::SendIfCond => "SEND_IF_COND",
            Self::SendExtCsd => "SEND_EXT_CSD",
            Self::SendCsd => "SEND_CSD",
            Self::StopTransmission => "STOP_TRANSMISSION",
            Self::SendStatus => "SEND_STATUS",
            Self::SetBlocklen => "SET_BLOCKLEN",
            Self::ReadSingleBlock => "READ_SINGLE_BLOCK",
            Self::ReadMultipleBlock => "READ_MULTIPLE_BLOCK",
            Self::WriteBlock => "WRITE_BLOCK",
            Self::WriteMultipleBlock => "WRITE_MULTIPLE_BLOCK",
            Self::AppCmd => "APP_CMD",
            Self::SetBusWidth => "SET_BUS_WIDTH",
            Self::SdSendOpCond => "SD_SEND_OP_COND",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.is_application() { "ACMD" } else { "CMD" };
        write!(f, "{prefix}{} {}", self.index(), self.name())
    }
}

/// Direction of a data transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Card to host.
    Read,
    /// Host to card.
    Write,
}

/// The data phase of a command, as the Transfer Mode register describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPhase {
    /// Direction.
    pub direction: Direction,
    /// Number of blocks (1..=65535).
    pub blocks: u16,
    /// Let the controller send CMD12 after the last block (multi-block
    /// transfers only).
    pub auto_cmd12: bool,
    /// The controller moves the data itself (Transfer Mode's DMA Enable,
    /// §2.2.5) as Host Control 1's DMA Select says (zboot: 32-bit ADMA2);
    /// otherwise the driver moves it through the Buffer Data Port.
    pub dma: bool,
}

/// The 32-bit value written to Transfer Mode + Command (offset 0x0C) to
/// issue `command`, with `data` describing its data phase if it has one.
///
/// Response type, index check and CRC check follow SD Host Controller spec
/// Table 2-9: R2 checks CRC only, R3 checks neither, R1/R1b/R6/R7 both.
/// CMD12 is marked as an Abort command (§2.2.6 "Command Type"). Multi-block
/// mode is selected for every transfer of more than one block, and for
/// CMD18/CMD25 even with one (they are open-ended on the card side).
pub fn command_word(command: Command, data: Option<DataPhase>) -> u32 {
    use TRANSFER_MODE_COMMAND as TM;
    let mut word = LocalRegisterCopy::<u32, TM::Register>::new(0);
    word.modify(TM::COMMAND_INDEX.val(u32::from(command.index())));
    let response: FieldValue<u32, TM::Register> = match command.response() {
        ResponseType::None => TM::RESPONSE_TYPE::NoResponse,
        ResponseType::R1 => {
            TM::RESPONSE_TYPE::Length48 + TM::COMMAND_CRC_CHECK::SET + TM::COMMAND_INDEX_CHECK::SET
        }
        ResponseType::R1b => {
            TM::RESPONSE_TYPE::Length48Busy
                + TM::COMMAND_CRC_CHECK::SET
                + TM::COMMAND_INDEX_CHECK::SET
        }
        ResponseType::R2 => TM::RESPONSE_TYPE::Length136 + TM::COMMAND_CRC_CHECK::SET,
        ResponseType::R3 => TM::RESPONSE_TYPE::Length48,
    };
    word.modify(response);
    if command == Command::StopTransmission {
        word.modify(TM::COMMAND_TYPE::Abort);
    }
    if let Some(data) = data {
        word.modify(TM::DATA_PRESENT::SET + TM::BLOCK_COUNT_ENABLE::SET);
        if data.dma {
            word.modify(TM::DMA_ENABLE::SET);
        }
        word.modify(match data.direction {
            Direction::Read => TM::DATA_TRANSFER_DIRECTION::Read,
            Direction::Write => TM::DATA_TRANSFER_DIRECTION::Write,
        });
        let multi = data.blocks > 1
            || matches!(
                command,
                Command::ReadMultipleBlock | Command::WriteMultipleBlock
            );
        if multi {
            word.modify(TM::MULTI_BLOCK::SET);
            if data.auto_cmd12 {
                word.modify(TM::AUTO_CMD_ENABLE::AutoCmd12);
            }
        }
    }
    word.get()
}

/// The card's state, from bits 12..9 of the R1 card status (SD Physical
/// Layer Table 4-42 / JESD84-B51 §6.13 "Device status").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardState {
    Idle,
    Ready,
    Identification,
    StandBy,
    Transfer,
    SendingData,
    ReceiveData,
    Programming,
    Disconnect,
    /// 9 (eMMC: bus test), 10 (eMMC: sleep) or reserved values.
    Other(u8),
}

/// An R1 card status word (SD Physical Layer §4.10.1 Table 4-42;
/// JESD84-B51 §6.13 Table 68).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CardStatus(pub u32);

impl CardStatus {
    /// OUT_OF_RANGE: the argument was out of the card's range.
    pub const OUT_OF_RANGE: u32 = 1 << 31;
    /// ADDRESS_ERROR: a misaligned address.
    pub const ADDRESS_ERROR: u32 = 1 << 30;
    /// BLOCK_LEN_ERROR.
    pub const BLOCK_LEN_ERROR: u32 = 1 << 29;
    /// ERASE_SEQ_ERROR.
    pub const ERASE_SEQ_ERROR: u32 = 1 << 28;
    /// ERASE_PARAM.
    pub const ERASE_PARAM: u32 = 1 << 27;
    /// WP_VIOLATION: write to a protected block.
    pub const WP_VIOLATION: u32 = 1 << 26;
    /// LOCK_UNLOCK_FAILED.
    pub const LOCK_UNLOCK_FAILED: u32 = 1 << 24;
    /// COM_CRC_ERROR: the *previous* command's CRC check failed.
    pub const COM_CRC_ERROR: u32 = 1 << 23;
    /// ILLEGAL_COMMAND: the *previous* command was not legal in the state.
    pub const ILLEGAL_COMMAND: u32 = 1 << 22;
    /// CARD_ECC_FAILED.
    pub const CARD_ECC_FAILED: u32 = 1 << 21;
    /// CC_ERROR: internal card controller error.
    pub const CC_ERROR: u32 = 1 << 20;
    /// ERROR: general or unknown error.
    pub const ERROR: u32 = 1 << 19;
    /// CSD_OVERWRITE (SD) / CID/CSD_OVERWRITE (eMMC).
    pub const CSD_OVERWRITE: u32 = 1 << 16;
    /// READY_FOR_DATA: the buffer is empty (the card accepts data).
    pub const READY_FOR_DATA: u32 = 1 << 8;
    /// SWITCH_ERROR (eMMC; reserved, 0, on SD): CMD6 was refused.
    pub const SWITCH_ERROR: u32 = 1 << 7;
    /// APP_CMD: the card expects an application command.
    pub const APP_CMD: u32 = 1 << 5;

    /// The error bits that fail the command they answer. COM_CRC_ERROR and
    /// ILLEGAL_COMMAND are left out: both report on the command *before*
    /// this one (the spec's "clear condition B"; an illegal command gets no
    /// response), which already failed visibly — e.g. the CMD8 an SD 1.x
    /// card refuses shows up as ILLEGAL_COMMAND in the next R1.
    pub const ERROR_MASK: u32 = Self::OUT_OF_RANGE
        | Self::ADDRESS_ERROR
        | Self::BLOCK_LEN_ERROR
        | Self::ERASE_SEQ_ERROR
        | Self::ERASE_PARAM
        | Self::WP_VIOLATION
        | Self::LOCK_UNLOCK_FAILED
        | Self::CARD_ECC_FAILED
        | Self::CC_ERROR
        | Self::ERROR
        | Self::CSD_OVERWRITE
        | Self::SWITCH_ERROR;

    /// The error bits set in this status (0 if none).
    pub const fn errors(self) -> u32 {
        self.0 & Self::ERROR_MASK
    }

    /// The CURRENT_STATE field.
    pub const fn state(self) -> CardState {
        match (self.0 >> 9) & 0xf {
            0 => CardState::Idle,
            1 => CardState::Ready,
            2 => CardState::Identification,
            3 => CardState::StandBy,
            4 => CardState::Transfer,
            5 => CardState::SendingData,
            6 => CardState::ReceiveData,
            7 => CardState::Programming,
            8 => CardState::Disconnect,
            other => CardState::Other(other as u8),
        }
    }

    /// Whether the card is in the transfer state with an empty buffer:
    /// programming has finished and it accepts the next command.
    pub const fn ready_in_transfer_state(self) -> bool {
        matches!(self.state(), CardState::Transfer) && self.0 & Self::READY_FOR_DATA != 0
    }
}

impl fmt::Debug for CardStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardStatus({:#010x})", self.0)
    }
}

impl fmt::Display for CardStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u32, &str); 15] = [
            (CardStatus::OUT_OF_RANGE, "OUT_OF_RANGE"),
            (CardStatus::ADDRESS_ERROR, "ADDRESS_ERROR"),
            (CardStatus::BLOCK_LEN_ERROR, "BLOCK_LEN_ERROR"),
            (CardStatus::ERASE_SEQ_ERROR, "ERASE_SEQ_ERROR"),
            (CardStatus::ERASE_PARAM, "ERASE_PARAM"),
            (CardStatus::WP_VIOLATION, "WP_VIOLATION"),
            (CardStatus::LOCK_UNLOCK_FAILED, "LOCK_UNLOCK_FAILED"),
            (CardStatus::COM_CRC_ERROR, "COM_CRC_ERROR"),
            (CardStatus::ILLEGAL_COMMAND, "ILLEGAL_COMMAND"),
            (CardStatus::CARD_ECC_FAILED, "CARD_ECC_FAILED"),
            (CardStatus::CC_ERROR, "CC_ERROR"),
            (CardStatus::ERROR, "ERROR"),
            (CardStatus::CSD_OVERWRITE, "CSD_OVERWRITE"),
            (CardStatus::SWITCH_ERROR, "SWITCH_ERROR"),
            (CardStatus::READY_FOR_DATA, "READY_FOR_DATA"),
        ];
        write!(f, "{:#010x} (state {:?}", self.0, self.state())?;
        for (bit, name) in NAMES {
            if self.0 & bit != 0 {
                write!(f, ", {name}")?;
            }
        }
        write!(f, ")")
    }
}

/// The Error Interrupt Status bits of a failed command or transfer (bits
/// 31..16 of the interrupt status word, shifted down; SD Host Controller
/// spec §2.2.19), with the Auto CMD Error Status when bit 8 (Auto CMD
/// Error) is set.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ErrorStatus {
    /// Error Interrupt Status (16 bits).
    pub error: u16,
    /// Auto CMD Error Status (16 bits), 0 unless Auto CMD Error is set.
    pub auto_cmd: u16,
}

impl ErrorStatus {
    /// Command Timeout Error: nothing answered.
    pub const COMMAND_TIMEOUT: u16 = 1 << 0;
    /// Data Timeout Error.
    pub const DATA_TIMEOUT: u16 = 1 << 4;
    /// ADMA Error (Error Interrupt Status bit 9): the engine could not fetch a descriptor or
    /// move data, or the descriptors and the block count disagree.
    pub const ADMA: u16 = 1 << 9;

    /// Whether the only problem is that no response came (the card is
    /// absent or does not know the command).
    pub const fn is_command_timeout(self) -> bool {
        self.error & Self::COMMAND_TIMEOUT != 0
    }
}

impl fmt::Debug for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ErrorStatus {{ error: {:#06x}, auto_cmd: {:#06x} }}",
            self.error, self.auto_cmd
        )
    }
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 11] = [
            "command timeout",
            "command CRC",
            "command end bit",
            "command index",
            "data timeout",
            "data CRC",
            "data end bit",
            "current limit",
            "Auto CMD",
            "ADMA",
            "tuning",
        ];
        write!(f, "error status {:#06x}", self.error)?;
        let mut separator = " (";
        for (bit, name) in NAMES.iter().enumerate() {
            if self.error & (1 << bit) != 0 {
                write!(f, "{separator}{name}")?;
                separator = ", ";
            }
        }
        if self.error & 0xf000 != 0 {
            write!(f, "{separator}vendor {:#x}", self.error >> 12)?;
            separator = ", ";
        }
        if separator == ", " {
            write!(f, ")")?;
        }
        if self.auto_cmd != 0 {
            write!(f, ", Auto CMD error status {:#06x}", self.auto_cmd)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_without_data() {
        // CMD0: index 0, no response.
        assert_eq!(command_word(Command::GoIdleState, None), 0);
        // CMD8 SEND_IF_COND: index 8, 48-bit, CRC + index check.
        assert_eq!(command_word(Command::SendIfCond, None), 0x081a_0000);
        // ACMD41: index 41, 48-bit, no checks (R3).
        assert_eq!(command_word(Command::SdSendOpCond, None), 0x2902_0000);
        // CMD2: index 2, 136-bit, CRC check only (R2).
        assert_eq!(command_word(Command::AllSendCid, None), 0x0209_0000);
        // CMD7: R1b, 48-bit with busy.
        assert_eq!(command_word(Command::SelectCard, None), 0x071b_0000);
        // CMD12: R1b and command type Abort.
        assert_eq!(command_word(Command::StopTransmission, None), 0x0cdb_0000);
    }

    #[test]
    fn encodes_data_commands() {
        let single_read = DataPhase {
            direction: Direction::Read,
            blocks: 1,
            auto_cmd12: true,
            dma: false,
        };
        // CMD17: data present, block count enable, read, single block (the
        // Auto CMD12 request is ignored for one block).
        assert_eq!(
            command_word(Command::ReadSingleBlock, Some(single_read)),
            0x113a_0012
        );
        let multi_read = DataPhase {
            blocks: 16,
            ..single_read
        };
        // CMD18: + multi-block + Auto CMD12.
        assert_eq!(
            command_word(Command::ReadMultipleBlock, Some(multi_read)),
            0x123a_0036
        );
        let multi_write = DataPhase {
            direction: Direction::Write,
            blocks: 8,
            auto_cmd12: true,
            dma: false,
        };
        assert_eq!(
            command_word(Command::WriteMultipleBlock, Some(multi_write)),
            0x193a_0026
        );
        let no_auto = DataPhase {
            auto_cmd12: false,
            ..multi_write
        };
        assert_eq!(
            command_word(Command::WriteMultipleBlock, Some(no_auto)),
            0x193a_0022
        );
        // ADMA2: + DMA Enable (bit 0).
        let dma_read = DataPhase {
            dma: true,
            ..multi_read
        };
        assert_eq!(
            command_word(Command::ReadMultipleBlock, Some(dma_read)),
            0x123a_0037
        );
    }

    #[test]
    fn command_names() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            Command::ReadMultipleBlock.to_string(),
            "CMD18 READ_MULTIPLE_BLOCK"
        );
        assert_eq!(Command::SdSendOpCond.to_string(), "ACMD41 SD_SEND_OP_COND");
        assert_eq!(Command::SetBusWidth.to_string(), "ACMD6 SET_BUS_WIDTH");
        assert_eq!(Command::Switch.to_string(), "CMD6 SWITCH");
    }

    #[test]
    fn decodes_card_status() {
        // Transfer state, ready for data: what CMD13 returns when idle.
        let ready = CardStatus(0x0000_0900);
        assert_eq!(ready.state(), CardState::Transfer);
        assert!(ready.ready_in_transfer_state());
        assert_eq!(ready.errors(), 0);
        // Programming.
        let busy = CardStatus(0x0000_0e00);
        assert_eq!(busy.state(), CardState::Programming);
        assert!(!busy.ready_in_transfer_state());
        // OUT_OF_RANGE and ADDRESS_ERROR are errors; ILLEGAL_COMMAND and
        // COM_CRC_ERROR (about the previous command) and APP_CMD are not.
        let bad = CardStatus(0xc000_0900);
        assert_eq!(
            bad.errors(),
            CardStatus::OUT_OF_RANGE | CardStatus::ADDRESS_ERROR
        );
        assert_eq!(CardStatus(0x00c0_0920).errors(), 0);
        // eMMC SWITCH_ERROR.
        assert_eq!(CardStatus(0x0000_0980).errors(), CardStatus::SWITCH_ERROR);
        assert_eq!(CardStatus(0x0000_1400).state(), CardState::Other(10));
    }

    #[test]
    fn formats_statuses() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            CardStatus(0x8000_0900).to_string(),
            "0x80000900 (state Transfer, OUT_OF_RANGE, READY_FOR_DATA)"
        );
        let status = ErrorStatus {
            error: 0x0011,
            auto_cmd: 0,
        };
        assert_eq!(
            status.to_string(),
            "error status 0x0011 (command timeout, data timeout)"
        );
        assert!(status.is_command_timeout());
        let auto = ErrorStatus {
            error: 0x0100,
            auto_cmd: 0x0002,
        };
        assert_eq!(
            auto.to_string(),
            "error status 0x0100 (Auto CMD), Auto CMD error status 0x0002"
        );
    }
}
