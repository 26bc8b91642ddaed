//! The slot-state model and its fixed 512-byte on-disk record (magic, version, sequence, CRC32).
//!
//! # Record layout (format version 1, all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `ZBST` |
//! | 4 | 2 | format version (1) |
//! | 6 | 2 | record length (512) |
//! | 8 | 4 | sequence number (serial-number arithmetic, RFC 1982) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 1 | ACTIVE slot (0 = A, 1 = B, 2 = SAFE) |
//! | 17 | 1 | BACKUP slot |
//! | 18 | 1 | `max_boot_failure` (1–15) |
//! | 19 | 1 | one-shot slot, 0xFF = none |
//! | 20 | 1 | flags: bit 0 recovery requested, bit 1 count power loss |
//! | 21 | 1 | number of history entries (0–16) |
//! | 22 | 2 | reserved, zero |
//! | 24 | 4 | minimum accepted image version (anti-rollback) |
//! | 28 | 4 | boot counter (number of the last recorded boot) |
//! | 32 | 3 × 16 | slots A, B, SAFE: state, failed boots, 2 reserved, image version, confirmed version, boot number of the last confirmation |
//! | 80 | 48 | reflash journal: flags (bit 0 in progress), 3 reserved, next chunk, 8 reserved, image identity (32 bytes) |
//! | 128 | 16 × 16 | boot history, oldest first: boot number (4), reason (7), reset reason, outcome, 3 reserved |
//! | 384 | 124 | reserved, zero |
//! | 508 | 4 | CRC-32 (IEEE 802.3, as zlib's `crc32`) of bytes 0..508 |
//!
//! Decoding is strict: every enumerated byte must be in range and reserved bytes zero, so a
//! record that passed its CRC but came from a buggy writer is rejected rather than guessed at.

use core::fmt;

use crate::block::{BLOCK_SIZE, Block};
use crate::decide::{Reason, RecoveryCause};
use crate::slot::{BootOutcome, ResetReason, Slot, SlotState};

/// Record magic.
pub const MAGIC: [u8; 4] = *b"ZBST";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Default `max_boot_failure` (DESIGN.md: "default 3").
pub const DEFAULT_MAX_BOOT_FAILURE: u8 = 3;
/// Highest configurable `max_boot_failure` (the counter is kept in 4 bits' range).
pub const MAX_BOOT_FAILURE_LIMIT: u8 = 15;
/// Boots kept in the history.
pub const HISTORY_LEN: usize = 16;

const CRC_OFFSET: usize = BLOCK_SIZE - 4;
const SLOTS_OFFSET: usize = 32;
const SLOT_SIZE: usize = 16;
const JOURNAL_OFFSET: usize = 80;
const HISTORY_OFFSET: usize = 128;
const ENTRY_SIZE: usize = 16;
const RESERVED_TAIL: core::ops::Range<usize> = 384..CRC_OFFSET;
const NO_SLOT: u8 = 0xFF;
const FLAG_RECOVERY_REQUESTED: u8 = 1 << 0;
const FLAG_COUNT_POWER_LOSS: u8 = 1 << 1;

/// Per-slot record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotInfo {
    /// Health.
    pub state: SlotState,
    /// Consecutive boots of this slot not confirmed by user space (incremented before
    /// hand-off, cleared by `mark-good`).
    pub failed: u8,
    /// Version of the image in the slot (set by the updater; 0 = unknown).
    pub image_version: u32,
    /// Image version user space last confirmed with `mark-good`.
    pub confirmed_version: u32,
    /// Boot number of the last confirmation (0 = never).
    pub confirmed_boot: u32,
}

impl SlotInfo {
    /// A freshly provisioned, good slot.
    pub const fn fresh() -> Self {
        Self {
            state: SlotState::Good,
            failed: 0,
            image_version: 0,
            confirmed_version: 0,
            confirmed_boot: 0,
        }
    }
}

/// The reflash journal kept for USB recovery: lets an interrupted reflash resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Journal {
    /// A reflash started and has not finished.
    pub in_progress: bool,
    /// Identity of the image being written (e.g. SHA-256 of its header and manifest).
    pub image_id: [u8; 32],
    /// Chunks written and verified so far, i.e. the index of the next chunk to write.
    pub next_chunk: u32,
}

impl Journal {
    /// No reflash in progress.
    pub const fn idle() -> Self {
        Self {
            in_progress: false,
            image_id: [0; 32],
            next_chunk: 0,
        }
    }
}

/// One recorded boot decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistoryEntry {
    /// Boot number (the state's boot counter when it was recorded).
    pub boot: u32,
    /// The decision and why.
    pub reason: Reason,
    /// Reset reason the loader saw on this boot.
    pub reset: ResetReason,
    /// What became of it.
    pub outcome: BootOutcome,
}

impl HistoryEntry {
    const EMPTY: HistoryEntry = HistoryEntry {
        boot: 0,
        reason: Reason::Recovery {
            cause: RecoveryCause::Button,
        },
        reset: ResetReason::Unknown,
        outcome: BootOutcome::NotApplicable,
    };
}

/// The last [`HISTORY_LEN`] boots, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct History {
    entries: [HistoryEntry; HISTORY_LEN],
    len: u8,
}

impl History {
    /// No boots recorded.
    pub const fn new() -> Self {
        Self {
            entries: [HistoryEntry::EMPTY; HISTORY_LEN],
            len: 0,
        }
    }

    /// Recorded boots, oldest first.
    pub fn entries(&self) -> &[HistoryEntry] {
        self.entries.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The newest entry.
    pub fn last(&self) -> Option<&HistoryEntry> {
        self.entries().last()
    }

    /// The newest entry, mutable.
    pub fn last_mut(&mut self) -> Option<&mut HistoryEntry> {
        let len = usize::from(self.len);
        self.entries.get_mut(..len).and_then(|e| e.last_mut())
    }

    /// Appends, dropping the oldest entry when full.
    pub fn push(&mut self, entry: HistoryEntry) {
        if usize::from(self.len) == HISTORY_LEN {
            self.entries.rotate_left(1);
            if let Some(last) = self.entries.last_mut() {
                *last = entry;
            }
        } else if let Some(slot) = self.entries.get_mut(usize::from(self.len)) {
            *slot = entry;
            self.len += 1;
        }
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// The whole slot state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The slot booted normally.
    pub active: Slot,
    /// Where ACTIVE falls back to (then SAFE, then RECOVERY).
    pub backup: Slot,
    /// Consecutive unconfirmed boots after which a slot is abandoned (1–15).
    pub max_boot_failure: u8,
    /// Boot this slot on the next boot only (like the Pi firmware's `tryboot`).
    pub one_shot: Option<Slot>,
    /// User space asked for RECOVERY on the next boot.
    pub recovery_requested: bool,
    /// Whether a boot that ended in a power-on reset counts as failed.
    pub count_power_loss: bool,
    /// Lowest image version A and B may carry (anti-rollback; SAFE is exempt).
    pub min_version: u32,
    /// Number of the last recorded boot.
    pub boot_count: u32,
    /// Per-slot records, indexed by [`Slot::index`].
    pub slots: [SlotInfo; 3],
    /// Reflash journal for USB recovery.
    pub journal: Journal,
    /// Recent boots.
    pub history: History,
}

impl State {
    /// A freshly provisioned unit: all slots good, A active, B backup.
    pub const fn fresh() -> Self {
        Self {
            active: Slot::A,
            backup: Slot::B,
            max_boot_failure: DEFAULT_MAX_BOOT_FAILURE,
            one_shot: None,
            recovery_requested: false,
            count_power_loss: true,
            min_version: 0,
            boot_count: 0,
            slots: [SlotInfo::fresh(); 3],
            journal: Journal::idle(),
            history: History::new(),
        }
    }

    /// What the loader uses when neither copy decodes: SAFE only. A and B are marked bad
    /// (nothing is known about them, so trusting them would be more permissive than any
    /// state ever written); SAFE keeps a clean counter, and RECOVERY follows if it fails.
    pub fn fallback() -> Self {
        let mut state = Self::fresh();
        state.active = Slot::Safe;
        state.backup = Slot::Safe;
        state.slot_mut(Slot::A).state = SlotState::Bad;
        state.slot_mut(Slot::B).state = SlotState::Bad;
        state
    }

    /// The record of `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotInfo {
        let [a, b, safe] = &self.slots;
        match slot {
            Slot::A => a,
            Slot::B => b,
            Slot::Safe => safe,
        }
    }

    /// The record of `slot`, mutable.
    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotInfo {
        let [a, b, safe] = &mut self.slots;
        match slot {
            Slot::A => a,
            Slot::B => b,
            Slot::Safe => safe,
        }
    }

    /// Encodes into one sector with the given sequence number.
    pub fn encode(&self, sequence: u32) -> Block {
        let mut b = [0u8; BLOCK_SIZE];
        put(&mut b, 0, &MAGIC);
        put(&mut b, 4, &FORMAT_VERSION.to_le_bytes());
        put(&mut b, 6, &(BLOCK_SIZE as u16).to_le_bytes());
        put(&mut b, 8, &sequence.to_le_bytes());
        let mut flags = 0;
        if self.recovery_requested {
            flags |= FLAG_RECOVERY_REQUESTED;
        }
        if self.count_power_loss {
            flags |= FLAG_COUNT_POWER_LOSS;
        }
        put(
            &mut b,
            16,
            &[
                self.active as u8,
                self.backup as u8,
                self.max_boot_failure,
                self.one_shot.map_or(NO_SLOT, |s| s as u8),
                flags,
                self.history.len,
            ],
        );
        put(&mut b, 24, &self.min_version.to_le_bytes());
        put(&mut b, 28, &self.boot_count.to_le_bytes());
        for (i, info) in self.slots.iter().enumerate() {
            let at = SLOTS_OFFSET + i * SLOT_SIZE;
            put(&mut b, at, &[info.state as u8, info.failed]);
            put(&mut b, at + 4, &info.image_version.to_le_bytes());
            put(&mut b, at + 8, &info.confirmed_version.to_le_bytes());
            put(&mut b, at + 12, &info.confirmed_boot.to_le_bytes());
        }
        put(
            &mut b,
            JOURNAL_OFFSET,
            &[u8::from(self.journal.in_progress)],
        );
        put(
            &mut b,
            JOURNAL_OFFSET + 4,
            &self.journal.next_chunk.to_le_bytes(),
        );
        put(&mut b, JOURNAL_OFFSET + 16, &self.journal.image_id);
        for (i, entry) in self.history.entries().iter().enumerate() {
            let at = HISTORY_OFFSET + i * ENTRY_SIZE;
            put(&mut b, at, &entry.boot.to_le_bytes());
            put(&mut b, at + 4, &entry.reason.encode());
            put(&mut b, at + 11, &[entry.reset as u8, entry.outcome as u8]);
        }
        let crc = crc32fast::hash(b.get(..CRC_OFFSET).unwrap_or(&[]));
        put(&mut b, CRC_OFFSET, &crc.to_le_bytes());
        b
    }

    /// Decodes one sector, returning the state and its sequence number.
    pub fn decode(b: &Block) -> Result<(State, u32), DecodeError> {
        if b.iter().all(|&x| x == 0) || b.iter().all(|&x| x == 0xFF) {
            return Err(DecodeError::Erased);
        }
        let magic = [byte(b, 0), byte(b, 1), byte(b, 2), byte(b, 3)];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([byte(b, 4), byte(b, 5)]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let length = u16::from_le_bytes([byte(b, 6), byte(b, 7)]);
        if usize::from(length) != BLOCK_SIZE {
            return Err(DecodeError::BadLength { found: length });
        }
        let expected = u32_at(b, CRC_OFFSET);
        let found = crc32fast::hash(b.get(..CRC_OFFSET).unwrap_or(&[]));
        if expected != found {
            return Err(DecodeError::ChecksumMismatch { expected, found });
        }
        let sequence = u32_at(b, 8);
        for (field, range) in [
            ("header reserved", 12..16),
            ("global reserved", 22..24),
            ("tail reserved", RESERVED_TAIL),
        ] {
            if nonzero(b, range.clone()) {
                return Err(DecodeError::BadField {
                    field,
                    value: u32::from(byte(b, range.start)),
                });
            }
        }
        let slot_field = |field: &'static str, value: u8| {
            Slot::from_u8(value).ok_or(DecodeError::BadField {
                field,
                value: u32::from(value),
            })
        };
        let active = slot_field("active slot", byte(b, 16))?;
        let backup = slot_field("backup slot", byte(b, 17))?;
        let max_boot_failure = byte(b, 18);
        if !(1..=MAX_BOOT_FAILURE_LIMIT).contains(&max_boot_failure) {
            return Err(DecodeError::BadField {
                field: "max_boot_failure",
                value: u32::from(max_boot_failure),
            });
        }
        let one_shot = match byte(b, 19) {
            NO_SLOT => None,
            value => Some(slot_field("one-shot slot", value)?),
        };
        let flags = byte(b, 20);
        if flags & !(FLAG_RECOVERY_REQUESTED | FLAG_COUNT_POWER_LOSS) != 0 {
            return Err(DecodeError::BadField {
                field: "flags",
                value: u32::from(flags),
            });
        }
        let history_len = byte(b, 21);
        if usize::from(history_len) > HISTORY_LEN {
            return Err(DecodeError::BadField {
                field: "history length",
                value: u32::from(history_len),
            });
        }
        let slots = decode_slots(b)?;
        let journal = decode_journal(b)?;
        let history = decode_history(b, history_len)?;
        let state = State {
            active,
            backup,
            max_boot_failure,
            one_shot,
            recovery_requested: flags & FLAG_RECOVERY_REQUESTED != 0,
            count_power_loss: flags & FLAG_COUNT_POWER_LOSS != 0,
            min_version: u32_at(b, 24),
            boot_count: u32_at(b, 28),
            slots,
            journal,
            history,
        };
        Ok((state, sequence))
    }
}

impl Default for State {
    fn default() -> Self {
        Self::fresh()
    }
}

/// Why a sector is not a valid state record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// All zero or all 0xFF: never written (or erased).
    Erased,
    /// The first four bytes are not `ZBST`.
    BadMagic { found: [u8; 4] },
    /// Written by a format version this code does not know.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The record length field is not 512.
    BadLength { found: u16 },
    /// The CRC32 stored in the record (`expected`) does not match the bytes (`found`):
    /// typically a torn write.
    ChecksumMismatch { expected: u32, found: u32 },
    /// A field holds a value out of its range.
    BadField { field: &'static str, value: u32 },
}

impl core::error::Error for DecodeError {}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Erased => f.write_str("sector is blank (never written)"),
            DecodeError::BadMagic { found } => {
                write!(f, "bad magic {found:02x?} (expected \"ZBST\")")
            }
            DecodeError::UnsupportedVersion { found, supported } => {
                write!(
                    f,
                    "format version {found} not supported (this build reads {supported})"
                )
            }
            DecodeError::BadLength { found } => {
                write!(f, "record length {found}, expected {BLOCK_SIZE}")
            }
            DecodeError::ChecksumMismatch { expected, found } => {
                write!(
                    f,
                    "CRC32 mismatch: record says {expected:#010x}, bytes give {found:#010x} (torn or corrupt write)"
                )
            }
            DecodeError::BadField { field, value } => {
                write!(f, "field '{field}' has invalid value {value:#x}")
            }
        }
    }
}

fn nonzero(b: &Block, range: core::ops::Range<usize>) -> bool {
    b.get(range).is_some_and(|s| s.iter().any(|&x| x != 0))
}

fn decode_slots(b: &Block) -> Result<[SlotInfo; 3], DecodeError> {
    let mut slots = [SlotInfo::fresh(); 3];
    for (i, info) in slots.iter_mut().enumerate() {
        let at = SLOTS_OFFSET + i * SLOT_SIZE;
        let state = byte(b, at);
        info.state = SlotState::from_u8(state).ok_or(DecodeError::BadField {
            field: "slot state",
            value: u32::from(state),
        })?;
        info.failed = byte(b, at + 1);
        if info.failed > MAX_BOOT_FAILURE_LIMIT {
            return Err(DecodeError::BadField {
                field: "failed boots",
                value: u32::from(info.failed),
            });
        }
        if nonzero(b, at + 2..at + 4) {
            return Err(DecodeError::BadField {
                field: "slot reserved",
                value: u32::from(byte(b, at + 2)),
            });
        }
        info.image_version = u32_at(b, at + 4);
        info.confirmed_version = u32_at(b, at + 8);
        info.confirmed_boot = u32_at(b, at + 12);
    }
    Ok(slots)
}

fn decode_journal(b: &Block) -> Result<Journal, DecodeError> {
    let journal_flags = byte(b, JOURNAL_OFFSET);
    if journal_flags > 1
        || nonzero(b, JOURNAL_OFFSET + 1..JOURNAL_OFFSET + 4)
        || nonzero(b, JOURNAL_OFFSET + 8..JOURNAL_OFFSET + 16)
    {
        return Err(DecodeError::BadField {
            field: "journal flags",
            value: u32::from(journal_flags),
        });
    }
    let mut image_id = [0u8; 32];
    if let Some(src) = b.get(JOURNAL_OFFSET + 16..JOURNAL_OFFSET + 48) {
        image_id.copy_from_slice(src);
    }
    Ok(Journal {
        in_progress: journal_flags == 1,
        image_id,
        next_chunk: u32_at(b, JOURNAL_OFFSET + 4),
    })
}

fn decode_history(b: &Block, len: u8) -> Result<History, DecodeError> {
    let mut history = History::new();
    // Unused entries must be zero: the format is canonical (decode then encode gives the same
    // bytes), so a record from a buggy writer is not half-trusted. Found by the fuzzer.
    let unused =
        HISTORY_OFFSET + usize::from(len) * ENTRY_SIZE..HISTORY_OFFSET + HISTORY_LEN * ENTRY_SIZE;
    if nonzero(b, unused.clone()) {
        return Err(DecodeError::BadField {
            field: "unused history entry",
            value: u32::from(
                b.get(unused)
                    .and_then(|s| s.iter().copied().find(|&x| x != 0))
                    .unwrap_or(0),
            ),
        });
    }
    for i in 0..usize::from(len) {
        let at = HISTORY_OFFSET + i * ENTRY_SIZE;
        let mut reason = [0u8; 7];
        if let Some(src) = b.get(at + 4..at + 11) {
            reason.copy_from_slice(src);
        }
        let reason = Reason::decode(reason).ok_or(DecodeError::BadField {
            field: "history reason",
            value: u32::from(reason[0]),
        })?;
        let reset = ResetReason::from_u8(byte(b, at + 11)).ok_or(DecodeError::BadField {
            field: "history reset reason",
            value: u32::from(byte(b, at + 11)),
        })?;
        let outcome = BootOutcome::from_u8(byte(b, at + 12)).ok_or(DecodeError::BadField {
            field: "history outcome",
            value: u32::from(byte(b, at + 12)),
        })?;
        if nonzero(b, at + 13..at + 16) {
            return Err(DecodeError::BadField {
                field: "history reserved",
                value: u32::from(byte(b, at + 13)),
            });
        }
        history.push(HistoryEntry {
            boot: u32_at(b, at),
            reason,
            reset,
            outcome,
        });
    }
    Ok(history)
}

fn put(b: &mut Block, at: usize, bytes: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn byte(b: &Block, at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn u32_at(b: &Block, at: usize) -> u32 {
    u32::from_le_bytes([
        byte(b, at),
        byte(b, at + 1),
        byte(b, at + 2),
        byte(b, at + 3),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Skip;

    fn sample() -> State {
        let mut state = State::fresh();
        state.active = Slot::B;
        state.backup = Slot::A;
        state.one_shot = Some(Slot::Safe);
        state.slot_mut(Slot::B).failed = 2;
        state.slot_mut(Slot::A).state = SlotState::Trial;
        state.journal.image_id[31] = 7;
        state.journal.next_chunk = 99;
        for boot in 1..=20 {
            state.history.push(HistoryEntry {
                boot,
                reason: Reason::Fallback {
                    skipped: Slot::A,
                    skip: Skip::LimitReached { failed: 3 },
                    slot: Slot::B,
                    failed: 1,
                    max: 3,
                },
                reset: ResetReason::Watchdog,
                outcome: BootOutcome::Failed,
            });
        }
        state
    }

    #[test]
    fn roundtrip() {
        for state in [State::fresh(), State::fallback(), sample()] {
            let block = state.encode(0xFFFF_FFFF);
            assert_eq!(State::decode(&block), Ok((state, 0xFFFF_FFFF)));
        }
        assert_eq!(sample().history.entries().len(), HISTORY_LEN);
        assert_eq!(sample().history.entries()[0].boot, 5);
    }

    #[test]
    fn rejects_every_single_bit_flip() {
        let block = sample().encode(7);
        for bit in 0..BLOCK_SIZE * 8 {
            let mut bad = block;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(State::decode(&bad).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn errors_carry_data() {
        assert_eq!(State::decode(&[0; BLOCK_SIZE]), Err(DecodeError::Erased));
        assert_eq!(State::decode(&[0xFF; BLOCK_SIZE]), Err(DecodeError::Erased));
        let mut block = State::fresh().encode(1);
        block[100] ^= 0x55;
        assert!(matches!(
            State::decode(&block),
            Err(DecodeError::ChecksumMismatch { .. })
        ));
        let mut block = State::fresh().encode(1);
        block[0] = b'X';
        assert_eq!(
            State::decode(&block),
            Err(DecodeError::BadMagic { found: *b"XBST" })
        );
        // Garbage in an unused history entry (fuzzer regression), CRC fixed up.
        let mut block = State::fresh().encode(1);
        block[HISTORY_OFFSET + 5 * ENTRY_SIZE + 3] = 202;
        let crc = crc32fast::hash(&block[..CRC_OFFSET]);
        block[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            State::decode(&block),
            Err(DecodeError::BadField {
                field: "unused history entry",
                value: 202
            })
        );
        // A CRC-valid record with an out-of-range field (a buggy writer).
        let mut block = State::fresh().encode(1);
        block[18] = 0;
        let crc = crc32fast::hash(&block[..CRC_OFFSET]);
        block[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            State::decode(&block),
            Err(DecodeError::BadField {
                field: "max_boot_failure",
                value: 0
            })
        );
    }
}
