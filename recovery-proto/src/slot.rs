//! Slots, their health, and the reset reasons and outcomes recorded per boot.

use core::fmt;

/// A bootable slot. RECOVERY is not a slot but the last action ([`crate::decide::Decision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Slot {
    /// Root filesystem A with its boot files.
    A = 0,
    /// Root filesystem B with its boot files.
    B = 1,
    /// The small golden system, the last slot before RECOVERY.
    Safe = 2,
}

impl Slot {
    /// All slots in record order.
    pub const ALL: [Slot; 3] = [Slot::A, Slot::B, Slot::Safe];

    /// Position in per-slot arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Decodes the record byte.
    pub const fn from_u8(value: u8) -> Option<Slot> {
        match value {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            2 => Some(Slot::Safe),
            _ => None,
        }
    }

    /// The name used on the console, in `zboot.slot=` and by `zbctl`.
    pub const fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
            Slot::Safe => "SAFE",
        }
    }

    /// Parses `A`, `B` or `SAFE` (any case).
    pub fn from_name(name: &str) -> Option<Slot> {
        Slot::ALL
            .into_iter()
            .find(|slot| slot.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Health of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SlotState {
    /// Booted and confirmed by user space (or freshly provisioned).
    Good = 0,
    /// Newly written by an updater, not confirmed yet; fails back to BACKUP.
    Trial = 1,
    /// Abandoned: reached `max_boot_failure` or failed verification at the limit.
    /// Never booted again until `zbctl set-active`/`try` re-arms it.
    Bad = 2,
}

impl SlotState {
    /// Decodes the record byte.
    pub const fn from_u8(value: u8) -> Option<SlotState> {
        match value {
            0 => Some(SlotState::Good),
            1 => Some(SlotState::Trial),
            2 => Some(SlotState::Bad),
            _ => None,
        }
    }

    /// Lower-case name for `zbctl status`.
    pub const fn name(self) -> &'static str {
        match self {
            SlotState::Good => "good",
            SlotState::Trial => "trial",
            SlotState::Bad => "bad",
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the chip last reset, as the loader read it from the PM block (BCM2711 `PM_RSTS`;
/// the HAL decodes the bits, following Linux `drivers/watchdog/bcm2835_wdt.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ResetReason {
    /// Not known (e.g. QEMU, or bits the HAL does not recognise).
    #[default]
    Unknown = 0,
    /// Power-on reset: the supply went away (power loss or first power-up).
    PowerOn = 1,
    /// The PM watchdog expired (hang guard).
    Watchdog = 2,
    /// A software-requested reset (`reboot`, a kernel panic with `panic=N`).
    Software = 3,
}

impl ResetReason {
    /// Decodes the record byte.
    pub const fn from_u8(value: u8) -> Option<ResetReason> {
        match value {
            0 => Some(ResetReason::Unknown),
            1 => Some(ResetReason::PowerOn),
            2 => Some(ResetReason::Watchdog),
            3 => Some(ResetReason::Software),
            _ => None,
        }
    }

    /// Lower-case name for logs and `zbctl status`.
    pub const fn name(self) -> &'static str {
        match self {
            ResetReason::Unknown => "unknown",
            ResetReason::PowerOn => "power-on",
            ResetReason::Watchdog => "watchdog",
            ResetReason::Software => "software",
        }
    }
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of a recorded boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BootOutcome {
    /// Handed off; user space has not confirmed yet (or this is the running boot).
    Pending = 0,
    /// User space ran `zbctl mark-good`.
    Good = 1,
    /// The next boot started without a confirmation: counted as a failure.
    Failed = 2,
    /// Ended by a power-on reset with `count_power_loss=no`: not counted.
    PowerLossNotCounted = 3,
    /// Nothing to confirm (a RECOVERY decision).
    NotApplicable = 4,
}

impl BootOutcome {
    /// Decodes the record byte.
    pub const fn from_u8(value: u8) -> Option<BootOutcome> {
        match value {
            0 => Some(BootOutcome::Pending),
            1 => Some(BootOutcome::Good),
            2 => Some(BootOutcome::Failed),
            3 => Some(BootOutcome::PowerLossNotCounted),
            4 => Some(BootOutcome::NotApplicable),
            _ => None,
        }
    }

    /// Lower-case name for `zbctl status`.
    pub const fn name(self) -> &'static str {
        match self {
            BootOutcome::Pending => "pending",
            BootOutcome::Good => "good",
            BootOutcome::Failed => "failed",
            BootOutcome::PowerLossNotCounted => "power-loss-not-counted",
            BootOutcome::NotApplicable => "-",
        }
    }
}

impl fmt::Display for BootOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
