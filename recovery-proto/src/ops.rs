//! What user space does to the state (`zbctl mark-good`, `set-active`, `try`, ...): pure edits.

use core::fmt;

use crate::slot::{BootOutcome, Slot, SlotState};
use crate::state::State;

/// Why a user-space operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpError {
    /// No boot is recorded in the history (the loader has not booted since provisioning).
    NoBootRecorded,
    /// The newest recorded boot is RECOVERY, not a slot.
    LastBootWasRecovery,
    /// The newest recorded boot already ended (`failed` or not counted): the history does not
    /// describe the running system.
    LastBootEnded { boot: u32, outcome: BootOutcome },
    /// The running slot (from `zboot.slot=`) is not the one the state recorded.
    SlotMismatch { running: Slot, recorded: Slot },
    /// An install may not write the ACTIVE slot (or SAFE, which only recovery writes).
    NotInstallable { slot: Slot, active: Slot },
    /// ACTIVE is a trial nobody confirmed: the BACKUP holds the last confirmed system, and
    /// installing over it would leave nothing known-good to roll back to.
    ActiveUnconfirmed { active: Slot, backup: Slot },
    /// The anti-rollback minimum only goes up.
    MinimumLowered { current: u32, asked: u32 },
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::NoBootRecorded => f.write_str("no boot recorded in the slot state yet"),
            OpError::LastBootWasRecovery => f.write_str("the last recorded boot was RECOVERY"),
            OpError::LastBootEnded { boot, outcome } => {
                write!(
                    f,
                    "the last recorded boot (#{boot}) already ended as {outcome}"
                )
            }
            OpError::SlotMismatch { running, recorded } => write!(
                f,
                "running slot {running} but the state recorded a boot of slot {recorded}"
            ),
            OpError::NotInstallable { slot, active } => write!(
                f,
                "slot {slot} cannot be installed into (ACTIVE is {active}; only the A/B slot \
                 that is not ACTIVE is written)"
            ),
            OpError::ActiveUnconfirmed { active, backup } => write!(
                f,
                "ACTIVE slot {active} is a trial not confirmed yet, and BACKUP {backup} holds the \
                 last confirmed system: boot {active} and run `zbctl mark-good`, or go back with \
                 `zbctl set-active {backup}`"
            ),
            OpError::MinimumLowered { current, asked } => write!(
                f,
                "the minimum image version only goes up: it is {current}, {asked} would lower it"
            ),
        }
    }
}

impl State {
    /// `mark-good`: the running boot is healthy. Clears its slot's counter, makes a `trial`
    /// (or re-armed) slot `good`, records the confirmed version and the boot's outcome.
    /// ACTIVE is left alone (a one-shot try is not made permanent; `set-active` does that).
    /// Returns the confirmed slot; the state is unchanged if it was already confirmed.
    pub fn mark_good(&mut self, running: Option<Slot>) -> Result<Slot, OpError> {
        let last = *self.history.last().ok_or(OpError::NoBootRecorded)?;
        let slot = last
            .reason
            .booted_slot()
            .ok_or(OpError::LastBootWasRecovery)?;
        if let Some(running) = running
            && running != slot
        {
            return Err(OpError::SlotMismatch {
                running,
                recorded: slot,
            });
        }
        if !matches!(last.outcome, BootOutcome::Pending | BootOutcome::Good) {
            return Err(OpError::LastBootEnded {
                boot: last.boot,
                outcome: last.outcome,
            });
        }
        let info = self.slot_mut(slot);
        info.failed = 0;
        info.state = SlotState::Good;
        info.confirmed_version = info.image_version;
        info.confirmed_boot = last.boot;
        if let Some(entry) = self.history.last_mut() {
            entry.outcome = BootOutcome::Good;
        }
        Ok(slot)
    }

    /// `set-active X`: boot X from now on as a `trial` with a clean counter; the old ACTIVE
    /// becomes BACKUP (so a failing trial rolls back to it). `version`, if given, is the
    /// image version now in X. Setting SAFE active keeps BACKUP.
    pub fn set_active(&mut self, slot: Slot, version: Option<u32>) {
        if slot != self.active && slot != Slot::Safe {
            self.backup = self.active;
        }
        if self.backup == slot {
            self.backup = Slot::Safe;
        }
        self.active = slot;
        self.rearm(slot, version);
    }

    /// `try X`: boot X on the next boot only (re-armed as a `trial` with a clean counter if
    /// it was bad). If it is not confirmed, the boot after falls back to ACTIVE.
    pub fn try_once(&mut self, slot: Slot, version: Option<u32>) {
        self.one_shot = Some(slot);
        self.rearm(slot, version);
    }

    /// `set-minimum N`: from now on the loader boots no A/B slot whose (signed) version is
    /// below `version`, and install and update refuse such images. Never lowered.
    pub fn raise_minimum(&mut self, version: u32) -> Result<(), OpError> {
        if version < self.min_version {
            return Err(OpError::MinimumLowered {
                current: self.min_version,
                asked: version,
            });
        }
        self.min_version = version;
        Ok(())
    }

    /// `request-recovery` (or cancel it).
    pub fn request_recovery(&mut self, requested: bool) {
        self.recovery_requested = requested;
    }

    /// The reflash finished: a fresh state (all slots good, A active, journal idle) that keeps
    /// the policy, the anti-rollback minimum, the boot counter and the history.
    pub fn finish_reflash(&mut self) {
        let mut fresh = State::fresh();
        fresh.max_boot_failure = self.max_boot_failure;
        fresh.count_power_loss = self.count_power_loss;
        fresh.min_version = self.min_version;
        fresh.boot_count = self.boot_count;
        fresh.history = self.history;
        *self = fresh;
    }

    /// The slot an update goes to: the A/B slot that is not ACTIVE (BACKUP, unless a
    /// fallback made SAFE the BACKUP; with SAFE active, BACKUP if it is A or B, else A).
    pub fn install_slot(&self) -> Slot {
        match (self.active, self.backup) {
            (Slot::A, _) | (Slot::Safe, Slot::B) => Slot::B,
            (Slot::B | Slot::Safe, _) => Slot::A,
        }
    }

    /// An install into `slot` starts: the slot is marked `bad` (never booted, not a one-shot)
    /// *before* its first byte is written, so an interrupted install leaves it unbootable and
    /// ACTIVE untouched. `force` allows installing over the BACKUP while ACTIVE is an
    /// unconfirmed trial.
    pub fn begin_install(&mut self, slot: Slot, force: bool) -> Result<(), OpError> {
        if slot == Slot::Safe || slot == self.active {
            return Err(OpError::NotInstallable {
                slot,
                active: self.active,
            });
        }
        if !force && self.slot(self.active).state == SlotState::Trial {
            return Err(OpError::ActiveUnconfirmed {
                active: self.active,
                backup: slot,
            });
        }
        if self.one_shot == Some(slot) {
            self.one_shot = None;
        }
        let info = self.slot_mut(slot);
        info.state = SlotState::Bad;
        info.failed = 0;
        Ok(())
    }

    /// The install into `slot` is complete and verified: it becomes a `trial` with a clean
    /// counter and `version`. With `once`, it is booted on the next boot only (like `try`:
    /// ACTIVE stays, `set-active` makes it permanent after `mark-good`); otherwise it becomes
    /// ACTIVE (like `set-active`: the old ACTIVE becomes BACKUP, so a trial that fails
    /// `max_boot_failure` boots rolls back to it).
    pub fn start_trial(&mut self, slot: Slot, version: u32, once: bool) {
        if once {
            self.try_once(slot, Some(version));
        } else {
            self.set_active(slot, Some(version));
        }
    }

    fn rearm(&mut self, slot: Slot, version: Option<u32>) {
        let info = self.slot_mut(slot);
        info.failed = 0;
        if info.state == SlotState::Bad || version.is_some() {
            info.state = SlotState::Trial;
        }
        if let Some(version) = version {
            info.image_version = version;
        }
    }
}

impl core::error::Error for OpError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Decision, Facts, decide};
    use crate::slot::ResetReason;

    #[test]
    fn a_legacy_reflash_journal_enters_recovery_then_a_fresh_state_clears_it() {
        // Loaders before the journal moved out of the state (reflash/journal.rs) kept it
        // here; such a state still sends the unit to RECOVERY.
        let mut state = State::fresh();
        state.max_boot_failure = 5;
        state.journal = crate::state::Journal {
            in_progress: true,
            image_id: [7; 32],
            next_chunk: 12,
        };
        let outcome = decide(&state, &Facts::new(ResetReason::PowerOn));
        assert_eq!(outcome.decision, Decision::Recovery);
        let mut state = outcome.state;
        state.finish_reflash();
        assert!(!state.journal.in_progress);
        assert_eq!(state.max_boot_failure, 5);
        assert_eq!(
            decide(&state, &Facts::new(ResetReason::Software)).decision,
            Decision::Boot(Slot::A)
        );
    }

    #[test]
    fn update_flow_trial_confirmed() {
        let mut state = State::fresh();
        state.set_active(Slot::B, Some(2));
        let outcome = decide(&state, &Facts::new(ResetReason::Software));
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        state = outcome.state;
        assert_eq!(state.mark_good(Some(Slot::B)), Ok(Slot::B));
        assert_eq!(state.slot(Slot::B).state, SlotState::Good);
        assert_eq!(state.slot(Slot::B).confirmed_version, 2);
        assert_eq!((state.active, state.backup), (Slot::B, Slot::A));
    }

    #[test]
    fn install_marks_bad_first_then_trial_rolls_back() {
        let mut state = State::fresh();
        assert_eq!(state.install_slot(), Slot::B);
        assert_eq!(
            state.begin_install(Slot::A, false),
            Err(OpError::NotInstallable {
                slot: Slot::A,
                active: Slot::A
            })
        );
        assert!(state.begin_install(Slot::Safe, false).is_err());
        state.try_once(Slot::B, None);
        state.begin_install(Slot::B, false).unwrap();
        assert_eq!(state.slot(Slot::B).state, SlotState::Bad);
        assert_eq!(
            state.one_shot, None,
            "a pending one-shot of the slot is dropped"
        );
        // Interrupted here: A boots, B is never tried.
        for _ in 0..5 {
            let outcome = decide(&state, &Facts::new(ResetReason::Watchdog));
            assert_eq!(outcome.decision, Decision::Boot(Slot::A));
            state = outcome.state;
            state.mark_good(Some(Slot::A)).unwrap();
        }
        state.start_trial(Slot::B, 9, false);
        assert_eq!((state.active, state.backup), (Slot::B, Slot::A));
        assert_eq!(state.slot(Slot::B).state, SlotState::Trial);
        assert_eq!(state.slot(Slot::B).image_version, 9);
        // A second install before B is confirmed would overwrite the last good system.
        assert_eq!(
            state.clone().begin_install(state.install_slot(), false),
            Err(OpError::ActiveUnconfirmed {
                active: Slot::B,
                backup: Slot::A
            })
        );
        for _ in 0..3 {
            let outcome = decide(&state, &Facts::new(ResetReason::Watchdog));
            assert_eq!(outcome.decision, Decision::Boot(Slot::B));
            state = outcome.state;
        }
        let outcome = decide(&state, &Facts::new(ResetReason::Watchdog));
        assert_eq!(outcome.decision, Decision::Boot(Slot::A), "rolled back");
    }

    #[test]
    fn install_as_one_shot_keeps_active() {
        let mut state = State::fresh();
        state.begin_install(Slot::B, false).unwrap();
        state.start_trial(Slot::B, 3, true);
        assert_eq!((state.active, state.one_shot), (Slot::A, Some(Slot::B)));
        let outcome = decide(&state, &Facts::new(ResetReason::Software));
        assert_eq!(outcome.decision, Decision::Boot(Slot::B));
        let outcome = decide(&outcome.state, &Facts::new(ResetReason::Watchdog));
        assert_eq!(outcome.decision, Decision::Boot(Slot::A));
        // SAFE active after a double fallback: the update goes to an A/B slot.
        let mut fallen = State::fresh();
        fallen.active = Slot::Safe;
        fallen.backup = Slot::Safe;
        assert_eq!(fallen.install_slot(), Slot::A);
    }

    #[test]
    fn fallback_state_boots_safe_only() {
        let outcome = decide(&State::fallback(), &Facts::new(ResetReason::Unknown));
        assert_eq!(outcome.decision, Decision::Boot(Slot::Safe));
    }
}
