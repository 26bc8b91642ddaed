//! Property tests of the boot decision and the state record.

use proptest::prelude::*;
use recovery_proto::state::{MAX_BOOT_FAILURE_LIMIT, SlotInfo};
use recovery_proto::{
    BootOutcome, Decision, Facts, ResetReason, Slot, SlotFiles, SlotState, State, decide,
};

fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![Just(Slot::A), Just(Slot::B), Just(Slot::Safe)]
}

fn reset() -> impl Strategy<Value = ResetReason> {
    prop_oneof![
        Just(ResetReason::Unknown),
        Just(ResetReason::PowerOn),
        Just(ResetReason::Watchdog),
        Just(ResetReason::Software)
    ]
}

fn files() -> impl Strategy<Value = SlotFiles> {
    prop_oneof![
        4 => Just(SlotFiles::Unchecked),
        2 => Just(SlotFiles::Verified),
        1 => Just(SlotFiles::Failed)
    ]
}

fn slot_info(max: u8) -> impl Strategy<Value = SlotInfo> {
    (
        prop_oneof![
            Just(SlotState::Good),
            Just(SlotState::Trial),
            Just(SlotState::Bad)
        ],
        0..=max,
        0u32..4,
    )
        .prop_map(|(state, failed, image_version)| SlotInfo {
            state,
            failed,
            image_version,
            confirmed_version: 0,
            confirmed_boot: 0,
        })
}

prop_compose! {
    fn state()(max in 1..=MAX_BOOT_FAILURE_LIMIT)(
        max in Just(max),
        active in slot(),
        backup in slot(),
        one_shot in proptest::option::of(slot()),
        requested in proptest::bool::weighted(0.05),
        count_power_loss in any::<bool>(),
        min_version in 0u32..3,
        slots in [slot_info(max), slot_info(max), slot_info(max)],
    ) -> State {
        let mut state = State::fresh();
        state.max_boot_failure = max;
        state.active = active;
        state.backup = backup;
        state.one_shot = one_shot;
        state.recovery_requested = requested;
        state.count_power_loss = count_power_loss;
        state.min_version = min_version;
        state.slots = slots;
        state
    }
}

prop_compose! {
    fn facts()(
        reset in reset(),
        files in [files(), files(), files()],
        recovery_button in proptest::bool::weighted(0.05),
    ) -> Facts {
        Facts { reset, files, recovery_button, ..Facts::default() }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_boots_a_bad_or_exhausted_slot(state in state(), facts in facts()) {
        let outcome = decide(&state, &facts);
        let max = outcome.state.max_boot_failure;
        for info in &outcome.state.slots {
            prop_assert!(info.failed <= max);
        }
        if let Decision::Boot(slot) = outcome.decision {
            prop_assert_ne!(state.slot(slot).state, SlotState::Bad);
            prop_assert_ne!(outcome.state.slot(slot).state, SlotState::Bad);
            prop_assert!(state.slot(slot).failed < max);
            prop_assert_ne!(facts.files[slot.index()], SlotFiles::Failed);
            prop_assert_eq!(outcome.state.slot(slot).failed, state.slot(slot).failed + 1);
        }
        // Pure and encodable.
        prop_assert_eq!(decide(&state, &facts), outcome);
        let (decoded, _) = State::decode(&outcome.state.encode(1)).unwrap();
        prop_assert_eq!(decoded, outcome.state);
        // SAFE only goes bad through its own counter.
        if outcome.state.slot(Slot::Safe).state == SlotState::Bad
            && state.slot(Slot::Safe).state != SlotState::Bad
        {
            prop_assert_eq!(outcome.state.slot(Slot::Safe).failed, max);
        }
    }

    #[test]
    fn continuous_failures_end_in_recovery(
        state in state(),
        resets in proptest::collection::vec(prop_oneof![Just(ResetReason::Watchdog), Just(ResetReason::Software), Just(ResetReason::Unknown)], 64),
        failing in proptest::collection::vec(proptest::option::of(slot()), 64),
    ) {
        let mut state = state;
        let max = usize::from(state.max_boot_failure);
        let bound = 3 * max + 2;
        let mut reached = None;
        for (boot, (reset, failing)) in resets.iter().zip(&failing).take(bound).enumerate() {
            let mut facts = Facts::new(*reset);
            if let Some(slot) = failing {
                facts = facts.with_failed(*slot);
            }
            let outcome = decide(&state, &facts);
            state = outcome.state;
            if outcome.decision == Decision::Recovery {
                reached = Some(boot);
                break;
            }
        }
        prop_assert!(reached.is_some(), "no RECOVERY within {} boots", bound);
        // Once every slot is bad it stays there (a RECOVERY caused by a one-off verification
        // failure of SAFE below its limit may retry SAFE on the next boot).
        let all_bad = Slot::ALL.iter().all(|s| state.slot(*s).state == SlotState::Bad);
        for reset in resets.iter().take(if all_bad { 4 } else { 0 }) {
            let outcome = decide(&state, &Facts::new(*reset));
            prop_assert_eq!(outcome.decision, Decision::Recovery);
            state = outcome.state;
        }
    }

    #[test]
    fn mark_good_resets_the_counter(state in state(), facts in facts()) {
        let outcome = decide(&state, &facts);
        let mut confirmed = outcome.state;
        match outcome.decision {
            Decision::Boot(slot) => {
                prop_assert_eq!(confirmed.mark_good(None), Ok(slot));
                prop_assert_eq!(confirmed.slot(slot).failed, 0);
                prop_assert_eq!(confirmed.slot(slot).state, SlotState::Good);
                prop_assert_eq!(confirmed.history.last().unwrap().outcome, BootOutcome::Good);
                // The next boot does not count the confirmed one as failed.
                let next = decide(&confirmed, &Facts::new(ResetReason::Software));
                prop_assert_eq!(next.state.history.entries().iter().rev().nth(1).map(|e| e.outcome), Some(BootOutcome::Good));
            }
            Decision::Recovery => prop_assert!(confirmed.mark_good(None).is_err()),
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 512)) {
        let block: [u8; 512] = bytes.try_into().unwrap();
        let _ = State::decode(&block);
    }
}
