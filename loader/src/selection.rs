//! Choosing what to boot: the slot state, the manifest's policy, the decision, persisted first.
//!
//! The decision is written to the state sectors *before* the slot's files are
//! read, so an attempt counts even if loading or the kernel hangs. A slot
//! whose files fail verification is marked at once and the decision re-run
//! on the original state: the failed slot's counter goes up exactly once and
//! the next candidate boots in the same power cycle (a second sector write,
//! only on that path).

use recovery_proto::decide::SlotFiles;
use recovery_proto::manifest::Manifest;
use recovery_proto::store::RedundantStore;
use recovery_proto::{Facts, Outcome, ResetReason, Slot, State, decide};

use crate::storage::Disk;

/// The state and the facts of this boot, and where the state lives.
#[derive(Debug)]
pub struct Selector<'d> {
    disk: &'d Disk,
    /// `None` when the state file could not be found: nothing can be persisted.
    store: Option<RedundantStore>,
    /// The state as read at power-on (decisions are always taken from it).
    original: State,
    /// What is on the disk now.
    saved: State,
    facts: Facts,
}

/// Maps the PM block's reset cause onto the policy's.
pub fn reset_reason(reason: hal_bcm2711::pm::ResetReason) -> ResetReason {
    use hal_bcm2711::pm::ResetReason as Pm;
    match reason {
        Pm::PowerOn => ResetReason::PowerOn,
        Pm::Watchdog => ResetReason::Watchdog,
        Pm::Software => ResetReason::Software,
        Pm::Debugger | Pm::Unknown => ResetReason::Unknown,
    }
}

impl<'d> Selector<'d> {
    /// Reads the state from the two sectors at `lbas` (or, with `None`, uses
    /// the SAFE-only fallback because there is no state file); a held
    /// recovery button makes the decision RECOVERY.
    pub fn new(
        disk: &'d Disk,
        lbas: Option<[u64; 2]>,
        manifest: &Manifest<'_>,
        reset: ResetReason,
        recovery_button: bool,
    ) -> Self {
        let mut facts = Facts::new(reset);
        facts.recovery_button = recovery_button;
        facts.max_boot_failure = manifest.max_boot_failure;
        facts.count_power_loss = manifest.count_power_loss;
        let Some(lbas) = lbas else {
            let state = State::fallback();
            return Self {
                disk,
                store: None,
                original: state,
                saved: state,
                facts,
            };
        };
        let mut store = RedundantStore::new(lbas);
        let (state, status) = store.load_or_fallback(&mut { disk });
        match status {
            Ok(report) => {
                let [first, second] = report.copies;
                log::info!(
                    "slot state: copy {} used (LBAs {} and {}: {first}, {second})",
                    report.used,
                    lbas[0],
                    lbas[1]
                );
            }
            Err(error) => log::error!(
                "slot state: no valid copy at LBAs {} and {} ({error}): only SAFE may boot",
                lbas[0],
                lbas[1]
            ),
        }
        Self {
            disk,
            store: Some(store),
            original: state,
            saved: state,
            facts,
        }
    }

    /// The state as read at power-on.
    pub fn state(&self) -> &State {
        &self.original
    }

    /// Decides on the current facts, logs why, and persists the result.
    pub fn decide(&mut self) -> Outcome {
        let outcome = decide(&self.original, &self.facts);
        log::info!("decision: {}", outcome.reason);
        match &mut self.store {
            Some(store) => {
                match store.save_if_changed(&mut { self.disk }, &self.saved, &outcome.state) {
                    Ok(Some(saved)) => {
                        log::info!(
                            "slot state saved: copy {} at LBA {} (sequence {})",
                            saved.copy,
                            saved.lba,
                            saved.sequence
                        );
                        self.saved = outcome.state;
                    }
                    Ok(None) => log::info!("slot state unchanged: nothing written"),
                    Err(error) => log::error!("slot state NOT saved: {error}"),
                }
            }
            None => log::warn!("no state file: this attempt is not recorded"),
        }
        outcome
    }

    /// Records that `slot`'s files failed (`files` says how); the next [`Self::decide`]
    /// passes it over.
    pub fn slot_files(&mut self, slot: Slot, files: SlotFiles) {
        self.facts = self.facts.with_files(slot, files);
    }
}
