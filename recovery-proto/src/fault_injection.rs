//! Fault-injection proof on the host: power cuts at every write of scripted histories.
//!
//! A RAM disk holds the two state copies. Scripts mix loader boots (with watchdog, software,
//! power-on resets and verification failures), `mark-good`, `set-active`, `try`, recovery
//! requests and re-provisioning. Each script is first run clean to count its writes; then for
//! every write index and every way a write can be torn ([`Tear`]) the script is rerun with
//! power cut there, and after power returns the invariants are checked:
//!
//! - the state decodes, or (only if no valid state existed before) falls back to
//!   [`State::fallback`];
//! - the recovered state is exactly the state before the cut write or the one it was writing
//!   (so nothing more permissive than either can appear, and SAFE is never marked bad by the
//!   corruption itself);
//! - on the following boots no bad slot is booted and no slot is booted at its limit.

use std::boxed::Box;
use std::vec::Vec;

use crate::block::{RamDisk, Tear};
use crate::decide::{Decision, Facts, Outcome, decide};
use crate::slot::{ResetReason, Slot, SlotState};
use crate::state::State;
use crate::store::RedundantStore;

const LBAS: [u64; 2] = [3, 4];

#[derive(Clone, Copy, Debug)]
enum Event {
    Provision,
    Boot {
        reset: ResetReason,
        failing: Option<Slot>,
        button: bool,
    },
    MarkGood,
    SetActive(Slot, Option<u32>),
    Try(Slot),
    RequestRecovery(bool),
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn slot(&mut self) -> Slot {
        Slot::ALL[self.below(3) as usize]
    }
}

fn script(seed: u64, len: usize) -> Vec<Event> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut events = std::vec![Event::Provision];
    let mut recovery_requested = false;
    for _ in 0..len {
        let event = match rng.below(100) {
            0..=39 => Event::Boot {
                reset: [
                    ResetReason::Watchdog,
                    ResetReason::Software,
                    ResetReason::PowerOn,
                    ResetReason::Unknown,
                ][rng.below(4) as usize],
                failing: None,
                button: false,
            },
            40..=47 => Event::Boot {
                reset: ResetReason::Watchdog,
                failing: Some(rng.slot()),
                button: false,
            },
            48..=49 => Event::Boot {
                reset: ResetReason::Software,
                failing: None,
                button: true,
            },
            50..=74 => Event::MarkGood,
            75..=81 => {
                Event::SetActive(rng.slot(), (rng.below(2) == 0).then(|| rng.below(4) as u32))
            }
            82..=88 => Event::Try(rng.slot()),
            89..=93 => {
                recovery_requested = !recovery_requested;
                Event::RequestRecovery(recovery_requested)
            }
            94..=95 => Event::Provision,
            _ => Event::Boot {
                reset: ResetReason::Watchdog,
                failing: None,
                button: false,
            },
        };
        events.push(event);
    }
    events
}

/// Where the run stopped: the state readable before the cut write and the one being written.
#[derive(Debug)]
struct Cut {
    before: Option<State>,
    writing: State,
    event: usize,
}

/// The simulated unit: the loader and `zbctl` each read the store fresh, like after a reset.
struct Unit {
    disk: RamDisk,
    /// What a load would return right now (None: no valid copy).
    committed: Option<State>,
    policy_count_power_loss: bool,
}

impl Unit {
    fn load(&mut self) -> (RedundantStore, State, bool) {
        let mut store = RedundantStore::new(LBAS);
        let (state, status) = store.load_or_fallback(&mut self.disk);
        (store, state, status.is_ok())
    }

    fn save(&mut self, store: &mut RedundantStore, state: &State) -> Result<(), Box<Cut>> {
        match store.save(&mut self.disk, state) {
            Ok(_) => {
                self.committed = Some(*state);
                Ok(())
            }
            Err(_) => Err(Box::new(Cut {
                before: self.committed,
                writing: *state,
                event: 0,
            })),
        }
    }

    /// Runs one event; returns the boot outcome when it was a boot.
    fn run(&mut self, event: Event) -> Result<Option<Outcome>, Box<Cut>> {
        let (mut store, state, valid) = self.load();
        if valid {
            assert_eq!(
                Some(state),
                self.committed,
                "store returned a state nobody committed"
            );
        } else {
            assert!(
                self.committed.is_none(),
                "a committed state became unreadable"
            );
        }
        match event {
            Event::Provision => {
                let mut fresh = State::fresh();
                fresh.count_power_loss = self.policy_count_power_loss;
                // `RedundantStore::format` is two saves; do them one by one so the
                // bookkeeping of what is committed follows each write.
                self.save(&mut store, &fresh)?;
                self.save(&mut store, &fresh)?;
                Ok(None)
            }
            Event::Boot {
                reset,
                failing,
                button,
            } => {
                let facts = Facts {
                    recovery_button: button,
                    ..Facts::new(reset)
                };
                let mut outcome = decide(&state, &facts);
                check_boot(&state, &outcome);
                if outcome.changed(&state) {
                    self.save(&mut store, &outcome.state)?;
                }
                // The chosen slot's files fail verification: re-decide in the same boot.
                if let (Decision::Boot(slot), Some(bad)) = (outcome.decision, failing)
                    && slot == bad
                {
                    outcome = decide(&state, &facts.with_failed(bad));
                    check_boot(&state, &outcome);
                    if outcome.changed(&state) {
                        self.save(&mut store, &outcome.state)?;
                    }
                }
                Ok(Some(outcome))
            }
            Event::MarkGood | Event::SetActive(..) | Event::Try(_) | Event::RequestRecovery(_) => {
                let mut next = state;
                match event {
                    Event::MarkGood => {
                        let _ = next.mark_good(None);
                    }
                    Event::SetActive(slot, version) => next.set_active(slot, version),
                    Event::Try(slot) => next.try_once(slot, None),
                    Event::RequestRecovery(on) => next.request_recovery(on),
                    _ => {}
                }
                if next != state && valid {
                    self.save(&mut store, &next)?;
                }
                Ok(None)
            }
        }
    }
}

/// Invariants of every single decision.
fn check_boot(before: &State, outcome: &Outcome) {
    let max = outcome.state.max_boot_failure;
    for info in &outcome.state.slots {
        assert!(info.failed <= max, "counter above the limit: {outcome:?}");
    }
    if let Decision::Boot(slot) = outcome.decision {
        assert_ne!(before.slot(slot).state, SlotState::Bad, "booted a bad slot");
        assert_ne!(
            outcome.state.slot(slot).state,
            SlotState::Bad,
            "booted a slot it marked bad"
        );
        assert!(
            outcome.state.slot(slot).failed <= max,
            "booted past the limit"
        );
        // With `count_power_loss=no` a power-on reset undoes the previous attempt first.
        let undone = outcome
            .state
            .history
            .entries()
            .iter()
            .rev()
            .nth(1)
            .is_some_and(|entry| {
                entry.outcome == crate::slot::BootOutcome::PowerLossNotCounted
                    && entry.reason.booted_slot() == Some(slot)
                    && before
                        .history
                        .last()
                        .is_some_and(|last| last.outcome == crate::slot::BootOutcome::Pending)
            });
        let before_count = before
            .slot(slot)
            .failed
            .min(max)
            .saturating_sub(u8::from(undone));
        assert!(
            before_count < max,
            "booted a slot whose counter was at the limit"
        );
    }
    if before.slot(Slot::Safe).state != SlotState::Bad
        && outcome.state.slot(Slot::Safe).state == SlotState::Bad
    {
        // SAFE may only go bad through its own failures, never through a store problem.
        let safe = outcome.state.slot(Slot::Safe);
        assert!(
            safe.failed >= max,
            "SAFE marked bad without reaching the limit"
        );
    }
}

fn new_unit(count_power_loss: bool) -> Unit {
    Unit {
        disk: RamDisk::new(8),
        committed: None,
        policy_count_power_loss: count_power_loss,
    }
}

/// Runs a script clean; returns the number of writes.
fn clean_run(events: &[Event], count_power_loss: bool) -> usize {
    let mut unit = new_unit(count_power_loss);
    for event in events {
        unit.run(*event).unwrap();
    }
    unit.disk.writes()
}

const TEARS: [Tear; 8] = [
    Tear::NotWritten,
    Tear::Prefix(1),
    Tear::Prefix(16),
    Tear::Prefix(100),
    Tear::Prefix(256),
    Tear::Prefix(508),
    Tear::Garbage(0x5eed),
    Tear::Complete,
];

/// Cuts power at write `at` with `tear`, then checks recovery and runs the rest of the script.
fn cut_run(events: &[Event], count_power_loss: bool, at: usize, tear: Tear) {
    let mut unit = new_unit(count_power_loss);
    unit.disk.cut_power_at_write(at, tear);
    let mut cut = None;
    for (index, event) in events.iter().enumerate() {
        match unit.run(*event) {
            Ok(_) => {}
            Err(mut c) => {
                c.event = index;
                cut = Some(c);
                break;
            }
        }
    }
    let cut = cut.unwrap_or_else(|| panic!("write {at} was never reached"));
    unit.disk.power_on();
    let mut store = RedundantStore::new(LBAS);
    let recovered = store.load(&mut unit.disk).ok().map(|(state, _)| state);
    match (recovered, cut.before) {
        (Some(state), before) => {
            assert!(
                Some(state) == before || state == cut.writing,
                "write {at} ({tear:?}) in event {}: recovered state is neither the old nor the new one",
                cut.event
            );
            match tear {
                Tear::NotWritten if before.is_some() => assert_eq!(
                    Some(state),
                    before,
                    "write {at}, event {} {:?}",
                    cut.event,
                    &events[..=cut.event]
                ),
                Tear::Complete => assert_eq!(
                    state,
                    cut.writing,
                    "write {at}, event {} {:?}",
                    cut.event,
                    events.get(cut.event)
                ),
                _ => {}
            }
        }
        (None, None) => {}
        (None, Some(_)) => panic!("write {at} ({tear:?}): a torn write lost the only valid state"),
    }
    unit.committed = recovered;
    // Power returns: the loader boots with a power-on reset, then the script goes on.
    unit.run(Event::Boot {
        reset: ResetReason::PowerOn,
        failing: None,
        button: false,
    })
    .unwrap();
    for event in events.iter().skip(cut.event + 1) {
        unit.run(*event).unwrap();
    }
}

#[test]
fn every_power_cut_in_every_script_keeps_the_invariants() {
    let mut fault_points = 0usize;
    let mut writes_total = 0usize;
    for seed in 0..72u64 {
        let count_power_loss = seed % 4 != 3;
        let events = script(seed, 32);
        let writes = clean_run(&events, count_power_loss);
        writes_total += writes;
        for at in 0..writes {
            for tear in TEARS {
                cut_run(&events, count_power_loss, at, tear);
                fault_points += 1;
            }
        }
    }
    std::eprintln!(
        "fault injection: {fault_points} power-cut points checked over {writes_total} writes"
    );
    assert!(fault_points >= 10_000, "only {fault_points} fault points");
}

#[test]
fn a_normal_boot_writes_exactly_one_sector_and_an_idle_one_none() {
    let mut unit = new_unit(true);
    unit.run(Event::Provision).unwrap();
    let before = unit.disk.writes();
    unit.run(Event::Boot {
        reset: ResetReason::Watchdog,
        failing: None,
        button: false,
    })
    .unwrap();
    assert_eq!(unit.disk.writes() - before, 1, "boot");
    unit.run(Event::MarkGood).unwrap();
    assert_eq!(unit.disk.writes() - before, 2, "mark-good");
    unit.run(Event::MarkGood).unwrap();
    assert_eq!(
        unit.disk.writes() - before,
        2,
        "a repeated mark-good writes nothing"
    );
    unit.run(Event::RequestRecovery(true)).unwrap();
    unit.run(Event::Boot {
        reset: ResetReason::Watchdog,
        failing: None,
        button: false,
    })
    .unwrap();
    let stuck = unit.disk.writes();
    unit.run(Event::Boot {
        reset: ResetReason::Watchdog,
        failing: None,
        button: false,
    })
    .unwrap();
    assert_eq!(
        unit.disk.writes(),
        stuck,
        "a repeated RECOVERY decision writes nothing"
    );
}

#[test]
fn bit_rot_in_either_copy_never_panics_or_boots_a_bad_slot() {
    let mut points = 0usize;
    for seed in 0..8u64 {
        let events = script(seed, 24);
        let mut unit = new_unit(true);
        let mut rng = Rng(seed + 11);
        for event in &events {
            unit.run(*event).unwrap();
            for _ in 0..8 {
                let mut disk = unit.disk.clone();
                let lba = LBAS[rng.below(2) as usize];
                let bit = rng.below(512 * 8) as usize;
                disk.block_mut(lba).unwrap()[bit / 8] ^= 1 << (bit % 8);
                if rng.below(4) == 0 {
                    let other = if lba == LBAS[0] { LBAS[1] } else { LBAS[0] };
                    disk.block_mut(other).unwrap()[bit / 8] ^= 1 << (bit % 8);
                }
                let (state, _) = RedundantStore::new(LBAS).load_or_fallback(&mut disk);
                let outcome = decide(&state, &Facts::new(ResetReason::PowerOn));
                check_boot(&state, &outcome);
                points += 1;
            }
        }
    }
    std::eprintln!("bit rot: {points} corrupted stores checked");
}
