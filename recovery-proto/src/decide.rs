//! The boot decision: a pure function from (state, facts) to (decision, reason, new state).
//!
//! # Rules
//!
//! Every rule below is also written up for operators in `docs/slot-state.md`.
//!
//! 1. **Policy.** `max_boot_failure` (1–15, default 3) and `count_power_loss` (default yes)
//!    live in the state; values from `zbmanifest.txt` passed in [`Facts`] override and are
//!    stored. Lowering the limit clamps every counter to it.
//! 2. **Previous boot.** If the newest history entry is a slot boot still `pending` (user space
//!    never ran `mark-good`), it becomes `failed`: its counter increment stands. Exception:
//!    with `count_power_loss=no` and a power-on reset, it becomes `power-loss-not-counted` and
//!    the increment is undone (the reset reason is only trusted when known; `unknown` counts).
//! 3. **RECOVERY first**, in this order: the recovery button held, user space's
//!    `request-recovery`, a reflash journal left in progress. State is otherwise unchanged.
//! 4. **Candidates**, in order and without repeats: the one-shot slot (cleared by this very
//!    decision, so it is tried once), ACTIVE, BACKUP, SAFE. Each is checked:
//!    - `bad` → skipped;
//!    - A or B with an image version below the minimum (anti-rollback) → skipped, not marked;
//!    - counter at `max_boot_failure` → marked `bad`, skipped;
//!    - its files failed verification this boot ([`SlotFiles::Failed`]), or its signature did
//!      ([`SlotFiles::NotAuthentic`]) → the counter goes up by one at once (no wasted reboot);
//!      at the limit the slot is marked `bad`; skipped;
//!    - its signed `slot.txt` is below the minimum version this boot
//!      ([`SlotFiles::BelowMinimum`]: files copied in by hand) → skipped, not marked, as for
//!      the state's record of its version.
//!
//!    The first candidate that passes is booted; none left → RECOVERY.
//! 5. **Counting.** The booted slot's counter is incremented in the returned state, which the
//!    loader persists *before* hand-off, so a hang is counted. A slot is therefore never booted
//!    with its counter at the limit, and the counter never exceeds the limit.
//! 6. **Fallback.** If ACTIVE ends up `bad`, ACTIVE becomes BACKUP (or SAFE if BACKUP is bad too)
//!    and BACKUP becomes SAFE. A `trial` slot (set by `zbctl set-active`, which makes the old
//!    ACTIVE the BACKUP) therefore rolls back to the previous ACTIVE.
//! 7. **History.** Each boot appends `{boot number, reason, reset reason, pending}`; a RECOVERY
//!    decision identical to the newest entry is not appended again, so a unit stuck in
//!    RECOVERY writes nothing on each retry.
//!
//! # Verification failures in the same boot
//!
//! `decide` never mutates its input. The loader calls it with all slots
//! [`SlotFiles::Unchecked`], persists the result, loads and verifies the chosen slot; if that
//! fails, it calls `decide` again on the *same original state* with that slot's entry set to
//! [`SlotFiles::Failed`], persists the new result (a second write, only on this failure
//! path) and loads the next slot. The counter of the failed slot goes up exactly once.

use core::fmt;

use crate::slot::{BootOutcome, ResetReason, Slot, SlotState};
use crate::state::{HistoryEntry, MAX_BOOT_FAILURE_LIMIT, State};

/// What the loader knows about a slot's boot files this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SlotFiles {
    /// Not loaded yet: assumed loadable.
    #[default]
    Unchecked,
    /// Loaded and verified.
    Verified,
    /// Missing, unreadable or failing verification.
    Failed,
    /// Consistent, but not signed by the key built into the loader (unsigned, signed by
    /// another key, or changed after signing).
    NotAuthentic,
    /// Its `slot.txt` names a version below the state's minimum (anti-rollback at boot).
    BelowMinimum,
}

/// What the loader saw on this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Facts {
    /// Why the chip reset.
    pub reset: ResetReason,
    /// Per-slot file status, indexed by [`Slot::index`].
    pub files: [SlotFiles; 3],
    /// The recovery button (GPIO) is held.
    pub recovery_button: bool,
    /// `max_boot_failure` from `zbmanifest.txt`, if set (ignored unless 1–15).
    pub max_boot_failure: Option<u8>,
    /// `count_power_loss` from `zbmanifest.txt`, if set.
    pub count_power_loss: Option<bool>,
}

impl Facts {
    /// Facts with a reset reason and nothing else known.
    pub fn new(reset: ResetReason) -> Self {
        Self {
            reset,
            ..Self::default()
        }
    }

    /// The same facts with `slot`'s files marked as failed.
    #[must_use]
    pub fn with_failed(self, slot: Slot) -> Self {
        self.with_files(slot, SlotFiles::Failed)
    }

    /// The same facts with `slot`'s files marked as `files`.
    #[must_use]
    pub fn with_files(mut self, slot: Slot, files: SlotFiles) -> Self {
        if let Some(entry) = self.files.get_mut(slot.index()) {
            *entry = files;
        }
        self
    }

    fn files(self, slot: Slot) -> SlotFiles {
        self.files.get(slot.index()).copied().unwrap_or_default()
    }
}

/// What to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Load and boot this slot.
    Boot(Slot),
    /// Enter USB recovery.
    Recovery,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Boot(slot) => slot.fmt(f),
            Decision::Recovery => f.write_str("RECOVERY"),
        }
    }
}

/// Why a candidate slot was passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Already marked bad.
    Bad,
    /// Its counter reached the limit (`failed` unconfirmed boots): marked bad now.
    LimitReached { failed: u8 },
    /// Its files failed verification; counted, now at `failed`.
    FilesFailed { failed: u8 },
    /// Its image version is below the minimum accepted version.
    BelowMinimumVersion,
    /// Not a candidate (neither one-shot, ACTIVE, BACKUP nor SAFE).
    NotConsidered,
    /// Its signature failed (unsigned, another key, changed); counted, now at `failed`.
    NotAuthentic { failed: u8 },
}

impl Skip {
    fn encode(self) -> [u8; 2] {
        match self {
            Skip::Bad => [0, 0],
            Skip::LimitReached { failed } => [1, failed],
            Skip::FilesFailed { failed } => [2, failed],
            Skip::BelowMinimumVersion => [3, 0],
            Skip::NotConsidered => [4, 0],
            Skip::NotAuthentic { failed } => [5, failed],
        }
    }

    fn decode(kind: u8, failed: u8) -> Option<Skip> {
        Some(match (kind, failed) {
            (0, 0) => Skip::Bad,
            (1, failed) => Skip::LimitReached { failed },
            (2, failed) => Skip::FilesFailed { failed },
            (3, 0) => Skip::BelowMinimumVersion,
            (4, 0) => Skip::NotConsidered,
            (5, failed) => Skip::NotAuthentic { failed },
            _ => return None,
        })
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Bad => f.write_str("bad"),
            Skip::LimitReached { failed } => write!(f, "{failed} failed boots, marked bad"),
            Skip::FilesFailed { failed } => {
                write!(f, "files failed verification (now {failed} failed boots)")
            }
            Skip::BelowMinimumVersion => f.write_str("image version below the minimum"),
            Skip::NotConsidered => f.write_str("not considered"),
            Skip::NotAuthentic { failed } => write!(
                f,
                "not signed by the product key (now {failed} failed boots)"
            ),
        }
    }
}

/// Why RECOVERY was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecoveryCause {
    /// The recovery button was held.
    Button,
    /// User space ran `zbctl request-recovery`.
    Requested,
    /// The reflash journal shows an interrupted reflash.
    ReflashInterrupted,
    /// Every slot was skipped, for these reasons (A, B, SAFE).
    NoBootableSlot { skips: [Skip; 3] },
}

/// The decision with its reason; `Display` gives the line the loader logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The preferred slot (ACTIVE) is fine; `failed` unconfirmed boots so far.
    Preferred { slot: Slot, failed: u8, max: u8 },
    /// The one-shot slot is tried.
    OneShot { slot: Slot, failed: u8, max: u8 },
    /// The first candidate was skipped; `slot` is booted instead.
    Fallback {
        skipped: Slot,
        skip: Skip,
        slot: Slot,
        failed: u8,
        max: u8,
    },
    /// RECOVERY.
    Recovery { cause: RecoveryCause },
}

impl Reason {
    /// The decision this reason explains.
    pub fn decision(&self) -> Decision {
        match *self {
            Reason::Preferred { slot, .. }
            | Reason::OneShot { slot, .. }
            | Reason::Fallback { slot, .. } => Decision::Boot(slot),
            Reason::Recovery { .. } => Decision::Recovery,
        }
    }

    /// The slot booted, if any.
    pub fn booted_slot(&self) -> Option<Slot> {
        match self.decision() {
            Decision::Boot(slot) => Some(slot),
            Decision::Recovery => None,
        }
    }

    /// The attempt number of this boot of its slot (1 = first unconfirmed boot).
    pub fn attempt(&self) -> Option<u8> {
        match *self {
            Reason::Preferred { failed, .. }
            | Reason::OneShot { failed, .. }
            | Reason::Fallback { failed, .. } => Some(failed.saturating_add(1)),
            Reason::Recovery { .. } => None,
        }
    }

    /// Seven record bytes: kind, then kind-specific fields.
    pub(crate) fn encode(self) -> [u8; 7] {
        match self {
            Reason::Preferred { slot, failed, max } => [0, slot as u8, failed, max, 0, 0, 0],
            Reason::OneShot { slot, failed, max } => [1, slot as u8, failed, max, 0, 0, 0],
            Reason::Fallback {
                skipped,
                skip,
                slot,
                failed,
                max,
            } => {
                let [kind, count] = skip.encode();
                [2, slot as u8, failed, max, skipped as u8, kind, count]
            }
            Reason::Recovery { cause } => match cause {
                RecoveryCause::Button => [3, 0, 0, 0, 0, 0, 0],
                RecoveryCause::Requested => [4, 0, 0, 0, 0, 0, 0],
                RecoveryCause::ReflashInterrupted => [5, 0, 0, 0, 0, 0, 0],
                RecoveryCause::NoBootableSlot {
                    skips: [a, b, safe],
                } => {
                    let ([ka, ca], [kb, cb], [ks, cs]) = (a.encode(), b.encode(), safe.encode());
                    [6, ka, ca, kb, cb, ks, cs]
                }
            },
        }
    }

    pub(crate) fn decode(bytes: [u8; 7]) -> Option<Reason> {
        let [kind, p1, p2, p3, p4, p5, p6] = bytes;
        let max_ok = (1..=MAX_BOOT_FAILURE_LIMIT).contains(&p3) && p2 < p3;
        let zero_tail = p4 == 0 && p5 == 0 && p6 == 0;
        Some(match kind {
            0 if max_ok && zero_tail => Reason::Preferred {
                slot: Slot::from_u8(p1)?,
                failed: p2,
                max: p3,
            },
            1 if max_ok && zero_tail => Reason::OneShot {
                slot: Slot::from_u8(p1)?,
                failed: p2,
                max: p3,
            },
            2 if max_ok => Reason::Fallback {
                skipped: Slot::from_u8(p4)?,
                skip: Skip::decode(p5, p6)?,
                slot: Slot::from_u8(p1)?,
                failed: p2,
                max: p3,
            },
            3..=5 if p1 == 0 && p2 == 0 && p3 == 0 && zero_tail => Reason::Recovery {
                cause: match kind {
                    3 => RecoveryCause::Button,
                    4 => RecoveryCause::Requested,
                    _ => RecoveryCause::ReflashInterrupted,
                },
            },
            6 => Reason::Recovery {
                cause: RecoveryCause::NoBootableSlot {
                    skips: [
                        Skip::decode(p1, p2)?,
                        Skip::decode(p3, p4)?,
                        Skip::decode(p5, p6)?,
                    ],
                },
            },
            _ => return None,
        })
    }
}

fn plural(count: u8) -> &'static str {
    if count == 1 { "" } else { "s" }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Preferred { slot, failed, max } => {
                write!(
                    f,
                    "slot {slot}: {failed} failed boot{} of {max}, booting {slot}",
                    plural(failed)
                )
            }
            Reason::OneShot { slot, failed, max } => write!(
                f,
                "one-shot try of slot {slot}: {failed} failed boot{} of {max}, booting {slot}",
                plural(failed)
            ),
            Reason::Fallback {
                skipped,
                skip,
                slot,
                failed,
                max,
            } => write!(
                f,
                "slot {skipped}: {skip}; falling back to slot {slot}: \
                 {failed} failed boot{} of {max}, booting {slot}",
                plural(failed)
            ),
            Reason::Recovery { cause } => match cause {
                RecoveryCause::Button => f.write_str("recovery button held, entering RECOVERY"),
                RecoveryCause::Requested => {
                    f.write_str("recovery requested by user space, entering RECOVERY")
                }
                RecoveryCause::ReflashInterrupted => {
                    f.write_str("reflash journal shows an interrupted reflash, entering RECOVERY")
                }
                RecoveryCause::NoBootableSlot {
                    skips: [a, b, safe],
                } => write!(
                    f,
                    "no bootable slot (A: {a}; B: {b}; SAFE: {safe}), entering RECOVERY"
                ),
            },
        }
    }
}

/// The result of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// What to boot.
    pub decision: Decision,
    /// Why; log it with `{}`.
    pub reason: Reason,
    /// The state to persist before hand-off (equal to the input when nothing changed).
    pub state: State,
}

impl Outcome {
    /// Whether the new state differs from `old` (i.e. a write is needed).
    pub fn changed(&self, old: &State) -> bool {
        self.state != *old
    }
}

/// Decides what to boot. Pure: see the module docs for the rules.
pub fn decide(state: &State, facts: &Facts) -> Outcome {
    let mut next = *state;

    apply_policy_and_previous_boot(&mut next, *facts);
    let max = next.max_boot_failure;

    // Rule 3: RECOVERY triggers.
    let cause = if facts.recovery_button {
        Some(RecoveryCause::Button)
    } else if next.recovery_requested {
        Some(RecoveryCause::Requested)
    } else if next.journal.in_progress {
        Some(RecoveryCause::ReflashInterrupted)
    } else {
        None
    };
    if let Some(cause) = cause {
        return recovery(next, cause, facts.reset);
    }

    // Rule 4: candidates.
    let one_shot = next.one_shot.take();
    let candidates = [
        one_shot,
        Some(next.active),
        Some(next.backup),
        Some(Slot::Safe),
    ];
    let mut skips = [Skip::NotConsidered; 3];
    let mut first_skip = None;
    let mut chosen = None;
    for (position, slot) in candidates.into_iter().enumerate() {
        let Some(slot) = slot else { continue };
        if candidates
            .iter()
            .take(position)
            .any(|earlier| *earlier == Some(slot))
        {
            continue;
        }
        match check(&mut next, slot, *facts, max) {
            Ok(failed) => {
                chosen = Some((slot, failed));
                break;
            }
            Err(skip) => {
                if let Some(entry) = skips.get_mut(slot.index()) {
                    *entry = skip;
                }
                first_skip.get_or_insert((slot, skip));
            }
        }
    }

    fall_back(&mut next);

    let Some((slot, failed)) = chosen else {
        // Report every slot, not only the candidates, so the log says why each is out.
        for (skip, slot) in skips.iter_mut().zip(Slot::ALL) {
            if *skip == Skip::NotConsidered && next.slot(slot).state == SlotState::Bad {
                *skip = Skip::Bad;
            }
        }
        return recovery(next, RecoveryCause::NoBootableSlot { skips }, facts.reset);
    };
    let reason = match first_skip {
        Some((skipped, skip)) => Reason::Fallback {
            skipped,
            skip,
            slot,
            failed,
            max,
        },
        None if one_shot == Some(slot) => Reason::OneShot { slot, failed, max },
        None => Reason::Preferred { slot, failed, max },
    };

    // Rules 5 and 7: count the attempt and record it.
    next.slot_mut(slot).failed = failed + 1;
    next.boot_count = next.boot_count.wrapping_add(1);
    next.history.push(HistoryEntry {
        boot: next.boot_count,
        reason,
        reset: facts.reset,
        outcome: BootOutcome::Pending,
    });
    Outcome {
        decision: Decision::Boot(slot),
        reason,
        state: next,
    }
}

/// Rules 1 and 2: policy overrides, then the outcome of the previous boot.
fn apply_policy_and_previous_boot(next: &mut State, facts: Facts) {
    // Rule 1: policy from the manifest.
    if let Some(max) = facts
        .max_boot_failure
        .filter(|m| (1..=MAX_BOOT_FAILURE_LIMIT).contains(m))
    {
        next.max_boot_failure = max;
    }
    if let Some(count) = facts.count_power_loss {
        next.count_power_loss = count;
    }
    let max = next.max_boot_failure;
    for info in &mut next.slots {
        info.failed = info.failed.min(max);
    }

    // Rule 2: what became of the previous boot.
    let count_power_loss = next.count_power_loss;
    let mut undo = None;
    if let Some(last) = next.history.last_mut()
        && last.outcome == BootOutcome::Pending
        && let Some(slot) = last.reason.booted_slot()
    {
        if facts.reset == ResetReason::PowerOn && !count_power_loss {
            last.outcome = BootOutcome::PowerLossNotCounted;
            undo = Some(slot);
        } else {
            last.outcome = BootOutcome::Failed;
        }
    }
    if let Some(slot) = undo {
        let info = next.slot_mut(slot);
        info.failed = info.failed.saturating_sub(1);
    }
}

/// Rule 6: ACTIVE falls back to BACKUP, then SAFE; BACKUP to SAFE.
fn fall_back(next: &mut State) {
    if next.slot(next.active).state == SlotState::Bad {
        next.active = if next.slot(next.backup).state == SlotState::Bad {
            Slot::Safe
        } else {
            next.backup
        };
        next.backup = Slot::Safe;
    }
    if next.slot(next.backup).state == SlotState::Bad {
        next.backup = Slot::Safe;
    }
}

/// Checks one candidate; on success returns its counter before this attempt.
fn check(next: &mut State, slot: Slot, facts: Facts, max: u8) -> Result<u8, Skip> {
    let min_version = next.min_version;
    let info = next.slot_mut(slot);
    if info.state == SlotState::Bad {
        return Err(Skip::Bad);
    }
    if slot != Slot::Safe && info.image_version < min_version {
        return Err(Skip::BelowMinimumVersion);
    }
    if info.failed >= max {
        info.state = SlotState::Bad;
        return Err(Skip::LimitReached {
            failed: info.failed,
        });
    }
    let files = facts.files(slot);
    match files {
        SlotFiles::Failed | SlotFiles::NotAuthentic => {
            info.failed += 1;
            if info.failed >= max {
                info.state = SlotState::Bad;
            }
            let failed = info.failed;
            return Err(if files == SlotFiles::Failed {
                Skip::FilesFailed { failed }
            } else {
                Skip::NotAuthentic { failed }
            });
        }
        SlotFiles::BelowMinimum => return Err(Skip::BelowMinimumVersion),
        SlotFiles::Unchecked | SlotFiles::Verified => {}
    }
    Ok(info.failed)
}

fn recovery(mut next: State, cause: RecoveryCause, reset: ResetReason) -> Outcome {
    let reason = Reason::Recovery { cause };
    let repeat = next
        .history
        .last()
        .is_some_and(|last| last.reason == reason && last.outcome == BootOutcome::NotApplicable);
    if !repeat {
        next.boot_count = next.boot_count.wrapping_add(1);
        next.history.push(HistoryEntry {
            boot: next.boot_count,
            reason,
            reset,
            outcome: BootOutcome::NotApplicable,
        });
    }
    Outcome {
        decision: Decision::Recovery,
        reason,
        state: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn boot(state: &mut State, facts: Facts) -> Outcome {
        let outcome = decide(state, &facts);
        *state = outcome.state;
        outcome
    }

    fn watchdog() -> Facts {
        Facts::new(ResetReason::Watchdog)
    }

    #[test]
    fn counts_before_hand_off_and_mark_good_clears() {
        let mut state = State::fresh();
        let outcome = boot(&mut state, watchdog());
        assert_eq!(outcome.decision, Decision::Boot(Slot::A));
        assert_eq!(
            outcome.reason.to_string(),
            "slot A: 0 failed boots of 3, booting A"
        );
        assert_eq!(state.slot(Slot::A).failed, 1);
        assert_eq!(state.mark_good(Some(Slot::A)), Ok(Slot::A));
        assert_eq!(state.slot(Slot::A).failed, 0);
        let confirmed = state;
        assert_eq!(state.mark_good(None), Ok(Slot::A));
        assert_eq!(state, confirmed, "a second mark-good changes nothing");
        boot(&mut state, watchdog());
        assert_eq!(state.history.entries()[0].outcome, BootOutcome::Good);
    }

    #[test]
    fn falls_back_a_b_safe_recovery() {
        use Decision::{Boot, Recovery};
        let mut state = State::fresh();
        let mut seen = std::vec::Vec::new();
        for _ in 0..12 {
            let outcome = boot(&mut state, watchdog());
            seen.push(outcome.decision);
        }
        assert_eq!(
            seen,
            [
                Boot(Slot::A),
                Boot(Slot::A),
                Boot(Slot::A),
                Boot(Slot::B),
                Boot(Slot::B),
                Boot(Slot::B),
                Boot(Slot::Safe),
                Boot(Slot::Safe),
                Boot(Slot::Safe),
                Recovery,
                Recovery,
                Recovery
            ]
        );
        let fourth = state.history.entries()[3];
        assert_eq!(
            fourth.reason.to_string(),
            "slot A: 3 failed boots, marked bad; falling back to slot B: 0 failed boots of 3, booting B"
        );
        assert_eq!(
            state.history.entries()[9].reason.to_string(),
            "no bootable slot (A: bad; B: bad; SAFE: 3 failed boots, marked bad), entering RECOVERY"
        );
        assert_eq!(
            state.history.last().unwrap().reason.to_string(),
            "no bootable slot (A: bad; B: bad; SAFE: bad), entering RECOVERY"
        );
        // Repeated identical RECOVERY decisions do not grow the history.
        assert_eq!(state.history.entries().len(), 11);
        let again = decide(&state, &watchdog());
        assert!(!again.changed(&state));
    }

    #[test]
    fn verification_failure_counts_at_once_and_redecides_in_the_same_boot() {
        let state = State::fresh();
        let first = decide(&state, &watchdog());
        assert_eq!(first.decision, Decision::Boot(Slot::A));
        let second = decide(&state, &watchdog().with_failed(Slot::A));
        assert_eq!(second.decision, Decision::Boot(Slot::B));
        assert_eq!(second.state.slot(Slot::A).failed, 1);
        assert_eq!(second.state.slot(Slot::B).failed, 1);
        assert_eq!(
            second.reason.to_string(),
            "slot A: files failed verification (now 1 failed boots); falling back to slot B: 0 failed boots of 3, booting B"
        );
        // At the limit the slot is marked bad without another reboot.
        let mut state = State::fresh();
        state.slot_mut(Slot::A).failed = 2;
        let outcome = decide(&state, &watchdog().with_failed(Slot::A));
        assert_eq!(outcome.state.slot(Slot::A).state, SlotState::Bad);
        assert_eq!(outcome.state.active, Slot::B);
    }

    #[test]
    fn an_unauthentic_slot_counts_and_a_downgraded_one_is_passed_over() {
        let state = State::fresh();
        let outcome = decide(
            &state,
            &watchdog().with_files(Slot::A, SlotFiles::NotAuthentic),
        );
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        assert_eq!(outcome.state.slot(Slot::A).failed, 1);
        assert_eq!(
            outcome.reason.to_string(),
            "slot A: not signed by the product key (now 1 failed boots); falling back to slot B: 0 failed boots of 3, booting B"
        );
        // The history keeps the reason: the record round-trips.
        let entry = *outcome.state.history.last().unwrap();
        let (decoded, _) = State::decode(&outcome.state.encode(1)).unwrap();
        assert_eq!(*decoded.history.last().unwrap(), entry);

        // Files below the minimum: skipped, not counted, not marked.
        let outcome = decide(
            &state,
            &watchdog().with_files(Slot::A, SlotFiles::BelowMinimum),
        );
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        assert_eq!(outcome.state.slot(Slot::A).failed, 0);
        assert_eq!(outcome.state.slot(Slot::A).state, state.slot(Slot::A).state);
        assert!(
            outcome
                .reason
                .to_string()
                .starts_with("slot A: image version below the minimum; falling back to slot B")
        );

        // At the limit an unauthentic slot is marked bad like any failing one.
        let mut state = State::fresh();
        state.slot_mut(Slot::A).failed = 2;
        let outcome = decide(
            &state,
            &watchdog().with_files(Slot::A, SlotFiles::NotAuthentic),
        );
        assert_eq!(outcome.state.slot(Slot::A).state, SlotState::Bad);
    }

    #[test]
    fn one_shot_is_tried_once() {
        let mut state = State::fresh();
        state.try_once(Slot::B, None);
        let outcome = boot(&mut state, watchdog());
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        assert!(matches!(outcome.reason, Reason::OneShot { .. }));
        assert_eq!(state.one_shot, None);
        let outcome = boot(&mut state, watchdog());
        assert_eq!(outcome.decision, Decision::Boot(Slot::A));
        assert_eq!(state.history.entries()[0].outcome, BootOutcome::Failed);
        assert_eq!(state.slot(Slot::B).failed, 1);
    }

    #[test]
    fn failed_trial_rolls_back_to_previous_active() {
        let mut state = State::fresh();
        state.set_active(Slot::B, Some(2));
        assert_eq!((state.active, state.backup), (Slot::B, Slot::A));
        for _ in 0..3 {
            assert_eq!(
                boot(&mut state, watchdog()).decision,
                Decision::Boot(Slot::B)
            );
        }
        let outcome = boot(&mut state, watchdog());
        assert_eq!(outcome.decision, Decision::Boot(Slot::A));
        assert_eq!((state.active, state.backup), (Slot::A, Slot::Safe));
        assert_eq!(state.slot(Slot::B).state, SlotState::Bad);
    }

    #[test]
    fn power_loss_not_counted_when_configured() {
        let mut state = State::fresh();
        state.count_power_loss = false;
        boot(&mut state, watchdog());
        for _ in 0..10 {
            let outcome = boot(&mut state, Facts::new(ResetReason::PowerOn));
            assert_eq!(outcome.decision, Decision::Boot(Slot::A));
        }
        assert_eq!(state.slot(Slot::A).failed, 1);
        assert_eq!(
            state.history.entries()[0].outcome,
            BootOutcome::PowerLossNotCounted
        );
        // Unknown reset reasons still count.
        boot(&mut state, Facts::new(ResetReason::Unknown));
        assert_eq!(state.slot(Slot::A).failed, 2);
    }

    #[test]
    fn recovery_triggers_and_anti_rollback() {
        let state = State::fresh();
        let facts = Facts {
            recovery_button: true,
            ..watchdog()
        };
        assert_eq!(decide(&state, &facts).decision, Decision::Recovery);
        let mut requested = State::fresh();
        requested.request_recovery(true);
        assert_eq!(decide(&requested, &watchdog()).decision, Decision::Recovery);
        let mut old = State::fresh();
        old.min_version = 5;
        old.slot_mut(Slot::B).image_version = 5;
        let outcome = decide(&old, &watchdog());
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        assert_eq!(outcome.state.slot(Slot::A).state, SlotState::Good);
    }

    #[test]
    fn manifest_policy_overrides_and_clamps() {
        let mut state = State::fresh();
        state.slot_mut(Slot::A).failed = 2;
        let facts = Facts {
            max_boot_failure: Some(1),
            ..watchdog()
        };
        let outcome = decide(&state, &facts);
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        assert_eq!(outcome.state.max_boot_failure, 1);
        let ignored = Facts {
            max_boot_failure: Some(16),
            ..watchdog()
        };
        assert_eq!(decide(&state, &ignored).state.max_boot_failure, 3);
    }

    #[test]
    fn reasons_roundtrip_through_bytes() {
        let reasons = [
            Reason::Preferred {
                slot: Slot::A,
                failed: 2,
                max: 3,
            },
            Reason::OneShot {
                slot: Slot::B,
                failed: 0,
                max: 15,
            },
            Reason::Fallback {
                skipped: Slot::A,
                skip: Skip::FilesFailed { failed: 1 },
                slot: Slot::Safe,
                failed: 0,
                max: 3,
            },
            Reason::Recovery {
                cause: RecoveryCause::ReflashInterrupted,
            },
            Reason::Recovery {
                cause: RecoveryCause::NoBootableSlot {
                    skips: [
                        Skip::Bad,
                        Skip::BelowMinimumVersion,
                        Skip::LimitReached { failed: 3 },
                    ],
                },
            },
        ];
        for reason in reasons {
            assert_eq!(Reason::decode(reason.encode()), Some(reason));
        }
    }
}
