//! The redundant state store: two record copies in two sectors, written alternately.
//!
//! Reading takes the valid copy with the newer sequence number (RFC 1982 serial-number
//! arithmetic, so the 32-bit counter may wrap). Writing always overwrites the *other* copy
//! (the older or invalid one) with sequence + 1, one sector, so a torn write can only damage
//! the copy being replaced: afterwards the store reads either the old state or the new one,
//! never anything else.

use core::fmt;

use crate::block::{BLOCK_SIZE, BlockDevice};
use crate::state::{DecodeError, State};

/// What was found in one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus<E> {
    /// A valid record with this sequence number.
    Valid { sequence: u32 },
    /// The sector was read but does not hold a valid record.
    Invalid(DecodeError),
    /// The sector could not be read.
    ReadFailed(E),
}

/// Both copies as found by [`RedundantStore::load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadReport<E> {
    /// Copy 0 and copy 1.
    pub copies: [CopyStatus<E>; 2],
    /// Which copy the state came from.
    pub used: usize,
}

/// Neither copy holds a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoValidCopy<E> {
    /// Copy 0 and copy 1.
    pub copies: [CopyStatus<E>; 2],
}

impl<E: fmt::Debug> fmt::Display for CopyStatus<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyStatus::Valid { sequence } => write!(f, "valid, sequence {sequence}"),
            CopyStatus::Invalid(error) => write!(f, "invalid: {error}"),
            CopyStatus::ReadFailed(error) => write!(f, "read failed: {error:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for NoValidCopy<E> {}

impl<E: fmt::Debug> fmt::Display for NoValidCopy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = &self.copies;
        write!(f, "no valid state record (copy 0: {a}; copy 1: {b})")
    }
}

/// The newest valid state and how both copies looked, or why none was valid.
pub type LoadResult<E> = Result<(State, LoadReport<E>), NoValidCopy<E>>;

/// How the copies looked when loading with a fallback.
pub type LoadStatus<E> = Result<LoadReport<E>, NoValidCopy<E>>;

/// Whether serial number `a` is newer than `b` (RFC 1982, 32-bit): true when `a - b`
/// (mod 2^32) is in 1..2^31. The undefined case (exactly 2^31 apart) counts as not newer.
pub const fn sequence_newer(a: u32, b: u32) -> bool {
    let distance = a.wrapping_sub(b);
    distance != 0 && distance < 0x8000_0000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Nothing read yet: `save` reads first.
    NotLoaded,
    /// Read, and neither copy was valid.
    NoValidCopy,
    /// The newest valid copy and its sequence number.
    Current { copy: usize, sequence: u32 },
}

/// Two copies of the state record at two fixed LBAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedundantStore {
    lbas: [u64; 2],
    known: Known,
}

/// Which copy a save wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Copy index (0 or 1).
    pub copy: usize,
    /// LBA written.
    pub lba: u64,
    /// Sequence number written.
    pub sequence: u32,
}

impl RedundantStore {
    /// A store whose copies live at `lbas[0]` and `lbas[1]` (two distinct sectors).
    pub const fn new(lbas: [u64; 2]) -> Self {
        Self {
            lbas,
            known: Known::NotLoaded,
        }
    }

    /// The two LBAs.
    pub const fn lbas(&self) -> [u64; 2] {
        self.lbas
    }

    /// Reads both copies and returns the newest valid state.
    pub fn load<D: BlockDevice>(&mut self, device: &mut D) -> LoadResult<D::Error> {
        let mut states = [None, None];
        let [first, second] = self.lbas;
        let mut read = |lba: u64, out: &mut Option<(State, u32)>| {
            let mut block = [0u8; BLOCK_SIZE];
            match device.read_block(lba, &mut block) {
                Err(error) => CopyStatus::ReadFailed(error),
                Ok(()) => match State::decode(&block) {
                    Ok((state, sequence)) => {
                        *out = Some((state, sequence));
                        CopyStatus::Valid { sequence }
                    }
                    Err(error) => CopyStatus::Invalid(error),
                },
            }
        };
        let [slot0, slot1] = &mut states;
        let copies = [read(first, slot0), read(second, slot1)];
        let pick = match states {
            [Some((_, s0)), Some((_, s1))] => usize::from(sequence_newer(s1, s0)),
            [Some(_), None] => 0,
            [None, Some(_)] => 1,
            [None, None] => {
                self.known = Known::NoValidCopy;
                return Err(NoValidCopy { copies });
            }
        };
        let [s0, s1] = states;
        let Some((state, sequence)) = (if pick == 0 { s0 } else { s1 }) else {
            self.known = Known::NoValidCopy;
            return Err(NoValidCopy { copies });
        };
        self.known = Known::Current {
            copy: pick,
            sequence,
        };
        Ok((state, LoadReport { copies, used: pick }))
    }

    /// Reads both copies; if neither is valid, returns [`State::fallback`] (SAFE only).
    pub fn load_or_fallback<D: BlockDevice>(
        &mut self,
        device: &mut D,
    ) -> (State, LoadStatus<D::Error>) {
        match self.load(device) {
            Ok((state, report)) => (state, Ok(report)),
            Err(error) => (State::fallback(), Err(error)),
        }
    }

    /// Writes `state` over the copy that is not the newest valid one: exactly one sector.
    pub fn save<D: BlockDevice>(
        &mut self,
        device: &mut D,
        state: &State,
    ) -> Result<Saved, D::Error> {
        if self.known == Known::NotLoaded {
            // Never guess which copy is safe to overwrite: find out first.
            let _ = self.load(device);
        }
        let (copy, sequence) = match self.known {
            Known::Current { copy, sequence } => (1 - copy, sequence.wrapping_add(1)),
            Known::NotLoaded | Known::NoValidCopy => (0, 1),
        };
        let lba = if copy == 0 {
            self.lbas[0]
        } else {
            self.lbas[1]
        };
        device.write_block(lba, &state.encode(sequence))?;
        self.known = Known::Current { copy, sequence };
        Ok(Saved {
            copy,
            lba,
            sequence,
        })
    }

    /// Saves only if `new` differs from `old`; returns what was written, if anything.
    pub fn save_if_changed<D: BlockDevice>(
        &mut self,
        device: &mut D,
        old: &State,
        new: &State,
    ) -> Result<Option<Saved>, D::Error> {
        if old == new {
            Ok(None)
        } else {
            self.save(device, new).map(Some)
        }
    }

    /// Writes `state` to both copies (provisioning, or replacing a corrupt store): the
    /// non-current copy first, so a cut between the two writes leaves the new state readable.
    pub fn format<D: BlockDevice>(
        &mut self,
        device: &mut D,
        state: &State,
    ) -> Result<(), D::Error> {
        self.save(device, state)?;
        self.save(device, state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{RamDisk, Tear};
    use crate::slot::Slot;

    #[test]
    fn serial_number_arithmetic_wraps() {
        assert!(sequence_newer(1, 0));
        assert!(sequence_newer(0, u32::MAX));
        assert!(!sequence_newer(u32::MAX, 0));
        assert!(!sequence_newer(5, 5));
        assert!(!sequence_newer(0x8000_0000, 0));
        assert!(!sequence_newer(0, 0x8000_0000));
    }

    #[test]
    fn alternates_and_takes_newest_across_wrap() {
        let mut disk = RamDisk::new(8);
        let mut store = RedundantStore::new([2, 5]);
        assert!(store.load(&mut disk).is_err());
        let mut state = State::fresh();
        // Pretend an old store sits just before the wrap.
        disk.write_block(2, &state.encode(u32::MAX - 1)).unwrap();
        let (_, report) = store.load(&mut disk).unwrap();
        assert_eq!(report.used, 0);
        let mut lbas = std::vec::Vec::new();
        for i in 0..4u8 {
            state.min_version = u32::from(i);
            let saved = store.save(&mut disk, &state).unwrap();
            lbas.push((saved.lba, saved.sequence));
            let (loaded, _) = RedundantStore::new([2, 5]).load(&mut disk).unwrap();
            assert_eq!(loaded, state);
        }
        assert_eq!(lbas, [(5, u32::MAX), (2, 0), (5, 1), (2, 2)]);
    }

    #[test]
    fn save_without_load_never_overwrites_the_only_valid_copy() {
        let mut disk = RamDisk::new(4);
        disk.write_block(1, &State::fresh().encode(9)).unwrap();
        let mut store = RedundantStore::new([0, 1]);
        let mut state = State::fresh();
        state.active = Slot::B;
        disk.cut_power_at_write(0, Tear::Garbage(3));
        assert!(store.save(&mut disk, &state).is_err());
        disk.power_on();
        let (loaded, _) = RedundantStore::new([0, 1]).load(&mut disk).unwrap();
        assert_eq!(loaded, State::fresh());
    }

    #[test]
    fn unchanged_state_writes_nothing() {
        let mut disk = RamDisk::new(4);
        let mut store = RedundantStore::new([0, 1]);
        store.format(&mut disk, &State::fresh()).unwrap();
        let before = disk.writes();
        let state = State::fresh();
        assert_eq!(
            store.save_if_changed(&mut disk, &state, &state).unwrap(),
            None
        );
        assert_eq!(disk.writes(), before);
    }
}
