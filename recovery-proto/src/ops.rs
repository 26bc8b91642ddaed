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

    /// `request-recovery` (or cancel it).
    pub fn request_recovery(&mut self, requested: bool) {
        self.recovery_requested = requested;
    }

    /// USB recovery starts (or resumes) writing the image identified by `image_id`. Returns
    /// the chunk to continue from: 0 for a new image, the journal's next chunk when the same
    /// image was interrupted.
    pub fn start_reflash(&mut self, image_id: [u8; 32]) -> u32 {
        if self.journal.in_progress && self.journal.image_id == image_id {
            return self.journal.next_chunk;
        }
        self.journal = crate::state::Journal {
            in_progress: true,
            image_id,
            next_chunk: 0,
        };
        0
    }

    /// Chunks before `next_chunk` are written and verified.
    pub fn record_reflash_progress(&mut self, next_chunk: u32) {
        self.journal.next_chunk = next_chunk;
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
    fn an_interrupted_reflash_resumes_then_leaves_a_fresh_state() {
        let mut state = State::fresh();
        state.max_boot_failure = 5;
        assert_eq!(state.start_reflash([7; 32]), 0);
        state.record_reflash_progress(12);
        // Power cut: the next boot goes straight back to RECOVERY and resumes at chunk 12.
        let outcome = decide(&state, &Facts::new(ResetReason::PowerOn));
        assert_eq!(outcome.decision, Decision::Recovery);
        let mut state = outcome.state;
        assert_eq!(state.start_reflash([7; 32]), 12);
        assert_eq!(state.start_reflash([8; 32]), 0, "another image starts over");
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
    fn fallback_state_boots_safe_only() {
        let outcome = decide(&State::fallback(), &Facts::new(ResetReason::Unknown));
        assert_eq!(outcome.decision, Decision::Boot(Slot::Safe));
    }
}
