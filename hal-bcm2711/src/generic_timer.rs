//! ARM generic timer: monotonic instants, deadlines and busy-wait delays.
//!
//! The count is `CNTPCT_EL0`, its rate `CNTFRQ_EL0` (Arm Architecture
//! Reference Manual DDI 0487, chapter "The Generic Timer in AArch64 state"). The rate is read, never assumed: the Pi 4/CM4 firmware
//! programs 54 MHz (the crystal), QEMU `raspi4b` reports 62.5 MHz. The count
//! is 64 bits wide and does not wrap in the life of a boot.
//!
//! Every hardware wait in this crate is a [`Deadline`]; the conversions
//! between ticks and [`Duration`] are pure functions, tested on the host.

use core::num::NonZeroU64;
use core::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Counter rate used if `CNTFRQ_EL0` reads 0 (it is only a record written by
/// boot firmware, not a hardware property): 54 MHz, the BCM2711 crystal the
/// Pi 4/CM4 firmware programs. A wrong guess only scales timeouts.
pub const FALLBACK_FREQUENCY_HZ: NonZeroU64 = NonZeroU64::new(54_000_000).expect("non-zero");

/// The counter rate in Hz, from `CNTFRQ_EL0` (bits 31..0 hold the
/// frequency, the upper half is RES0; Arm ARM, `CNTFRQ_EL0` description).
pub fn frequency() -> NonZeroU64 {
    NonZeroU64::new(read_cntfrq() & 0xFFFF_FFFF).unwrap_or(FALLBACK_FREQUENCY_HZ)
}

/// Converts counter ticks at `frequency` Hz to a duration (rounded down).
pub const fn ticks_to_duration(ticks: u64, frequency: NonZeroU64) -> Duration {
    let frequency = frequency.get();
    let seconds = ticks / frequency;
    let remainder = (ticks % frequency) as u128;
    // remainder < frequency, so the nanoseconds are < 1e9 and fit a u32.
    let nanos = (remainder * NANOS_PER_SECOND / frequency as u128) as u32;
    Duration::new(seconds, nanos)
}

/// Converts a duration to counter ticks at `frequency` Hz, rounded *up* so a
/// deadline is never shorter than asked, saturating at `u64::MAX`.
pub const fn duration_to_ticks(duration: Duration, frequency: NonZeroU64) -> u64 {
    let total_nanos = duration.as_nanos();
    let frequency = frequency.get() as u128;
    // total_nanos < 2^94 and frequency < 2^64: the product fits a u128 only
    // if we split whole seconds from the fraction first.
    let seconds = total_nanos / NANOS_PER_SECOND;
    let nanos = total_nanos % NANOS_PER_SECOND;
    let whole = seconds.saturating_mul(frequency);
    let fraction = (nanos * frequency).div_ceil(NANOS_PER_SECOND);
    let ticks = whole.saturating_add(fraction);
    if ticks > u64::MAX as u128 {
        u64::MAX
    } else {
        ticks as u64
    }
}

/// A reading of the physical counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    ticks: u64,
}

impl Instant {
    /// The current counter value.
    pub fn now() -> Self {
        Self {
            ticks: read_cntpct(),
        }
    }

    /// An instant from a raw counter value (for tests and for reports that
    /// carry raw ticks).
    pub const fn from_ticks(ticks: u64) -> Self {
        Self { ticks }
    }

    /// The raw counter value.
    pub const fn ticks(self) -> u64 {
        self.ticks
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub const fn duration_since(self, earlier: Self, frequency: NonZeroU64) -> Duration {
        ticks_to_duration(self.ticks.saturating_sub(earlier.ticks), frequency)
    }

    /// Time elapsed since `self`.
    pub fn elapsed(self) -> Duration {
        Self::now().duration_since(self, frequency())
    }
}

/// A point in time after which a wait gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self::at_offset(Instant::now(), timeout, frequency())
    }

    /// The deadline `timeout` after `start` at a counter rate of `frequency`
    /// (pure; [`Deadline::after`] uses the live counter).
    pub const fn at_offset(start: Instant, timeout: Duration, frequency: NonZeroU64) -> Self {
        let ticks = start
            .ticks
            .saturating_add(duration_to_ticks(timeout, frequency));
        Self {
            at: Instant::from_ticks(ticks),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.expired_at(Instant::now())
    }

    /// Whether the deadline has passed at `now` (pure).
    pub const fn expired_at(&self, now: Instant) -> bool {
        now.ticks >= self.at.ticks
    }

    /// Time left before the deadline (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.at.duration_since(Instant::now(), frequency())
    }
}

/// Busy-waits for at least `duration`.
pub fn delay(duration: Duration) {
    let deadline = Deadline::after(duration);
    while !deadline.expired() {
        core::hint::spin_loop();
    }
}

#[cfg(target_arch = "aarch64")]
fn read_cntpct() -> u64 {
    use aarch64_cpu::asm::barrier;
    use aarch64_cpu::registers::CNTPCT_EL0;
    use tock_registers::interfaces::Readable;
    // Reads of CNTPCT_EL0 can occur speculatively and out of order with
    // respect to other instructions (Arm ARM, Generic Timer chapter, "The
    // physical counter"); the ISB keeps a deadline check after the MMIO read
    // it follows.
    barrier::isb(barrier::SY);
    CNTPCT_EL0.get()
}

#[cfg(target_arch = "aarch64")]
fn read_cntfrq() -> u64 {
    use aarch64_cpu::registers::CNTFRQ_EL0;
    use tock_registers::interfaces::Readable;
    CNTFRQ_EL0.get()
}

/// Host builds (the crate's unit tests, host lint runs) have no generic
/// timer: a virtual counter stands in that runs at [`HOST_FREQUENCY_HZ`] and
/// advances one tick on every read, so every bounded wait still ends after a
/// bounded number of polls, whatever the host is doing.
#[cfg(not(target_arch = "aarch64"))]
pub const HOST_FREQUENCY_HZ: u64 = 1_000_000;

#[cfg(not(target_arch = "aarch64"))]
static HOST_TICKS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[cfg(not(target_arch = "aarch64"))]
fn read_cntpct() -> u64 {
    HOST_TICKS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) + 1
}

#[cfg(not(target_arch = "aarch64"))]
fn read_cntfrq() -> u64 {
    HOST_FREQUENCY_HZ
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: NonZeroU64 = NonZeroU64::new(62_500_000).unwrap();
    const PI4: NonZeroU64 = NonZeroU64::new(54_000_000).unwrap();

    #[test]
    fn ticks_to_duration_at_known_rates() {
        assert_eq!(ticks_to_duration(62_500_000, QEMU), Duration::from_secs(1));
        assert_eq!(ticks_to_duration(54_000, PI4), Duration::from_millis(1));
        assert_eq!(ticks_to_duration(1, QEMU), Duration::from_nanos(16));
        assert_eq!(ticks_to_duration(0, PI4), Duration::ZERO);
        // One tick at 54 MHz is 18.5 ns: rounded down.
        assert_eq!(ticks_to_duration(1, PI4), Duration::from_nanos(18));
    }

    #[test]
    fn duration_to_ticks_rounds_up() {
        assert_eq!(duration_to_ticks(Duration::from_secs(1), PI4), 54_000_000);
        assert_eq!(duration_to_ticks(Duration::from_micros(1), PI4), 54);
        assert_eq!(duration_to_ticks(Duration::from_nanos(1), PI4), 1);
        assert_eq!(duration_to_ticks(Duration::from_nanos(17), QEMU), 2);
        assert_eq!(duration_to_ticks(Duration::ZERO, QEMU), 0);
    }

    #[test]
    fn duration_to_ticks_saturates() {
        assert_eq!(duration_to_ticks(Duration::MAX, PI4), u64::MAX);
        let huge = NonZeroU64::new(u64::MAX).unwrap();
        assert_eq!(duration_to_ticks(Duration::from_secs(2), huge), u64::MAX);
    }

    #[test]
    fn round_trip_never_shortens() {
        for nanos in [1, 17, 999, 1_000, 123_456_789, 5_000_000_000] {
            let duration = Duration::from_nanos(nanos);
            for frequency in [QEMU, PI4, NonZeroU64::new(1_000_000).unwrap()] {
                let back = ticks_to_duration(duration_to_ticks(duration, frequency), frequency);
                assert!(back >= duration, "{duration:?} came back as {back:?}");
            }
        }
    }

    #[test]
    fn deadline_expires_at_the_offset() {
        let start = Instant::from_ticks(1_000);
        let deadline = Deadline::at_offset(start, Duration::from_micros(10), QEMU);
        assert!(!deadline.expired_at(Instant::from_ticks(1_000)));
        assert!(!deadline.expired_at(Instant::from_ticks(1_624)));
        assert!(deadline.expired_at(Instant::from_ticks(1_625)));
        let far = Deadline::at_offset(Instant::from_ticks(u64::MAX - 1), Duration::MAX, QEMU);
        assert!(!far.expired_at(Instant::from_ticks(u64::MAX - 1)));
    }

    #[test]
    fn duration_since_saturates() {
        let early = Instant::from_ticks(10);
        let late = Instant::from_ticks(62_500_010);
        assert_eq!(late.duration_since(early, QEMU), Duration::from_secs(1));
        assert_eq!(early.duration_since(late, QEMU), Duration::ZERO);
    }

    #[cfg(not(target_arch = "aarch64"))]
    #[test]
    fn host_deadlines_end_after_a_bounded_number_of_polls() {
        assert_eq!(frequency().get(), HOST_FREQUENCY_HZ);
        let deadline = Deadline::after(Duration::from_millis(10));
        let mut polls = 0u64;
        while !deadline.expired() {
            polls += 1;
            assert!(polls <= 20_000, "the virtual counter must advance");
        }
        assert!(
            polls >= 4_000,
            "a 10 ms deadline is about 10 000 ticks away ({polls} polls)"
        );
        let before = Instant::now();
        delay(Duration::from_micros(100));
        assert!(before.elapsed() >= Duration::from_micros(100));
    }
}
