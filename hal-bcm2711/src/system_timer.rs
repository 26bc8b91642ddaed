//! BCM2711 System Timer: the 1 MHz free-running 64-bit counter (CLO/CHI).
//!
//! BCM2711 ARM Peripherals §10 "System Timer": four 32-bit compare channels
//! and one 64-bit free-running counter at 1 MHz, read as two 32-bit halves.
//! zboot uses it only as a second, firmware-independent clock (boot-time
//! stamps comparable with the VideoCore's own); the compare channels are left
//! alone because the VideoCore firmware uses some of them.

use tock_registers::interfaces::Readable;
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use crate::mmio::Mmio;

/// The counter increments at 1 MHz (BCM2711 ARM Peripherals §10.1).
pub const COUNTER_FREQUENCY_HZ: u64 = 1_000_000;

register_bitfields! {
    u32,
    /// System Timer Control/Status.
    pub CS [
        /// System Timer Match 3. Write a one to clear.
        M3 OFFSET(3) NUMBITS(1) [],
        /// System Timer Match 2. Write a one to clear.
        M2 OFFSET(2) NUMBITS(1) [],
        /// System Timer Match 1. Write a one to clear.
        M1 OFFSET(1) NUMBITS(1) [],
        /// System Timer Match 0. Write a one to clear.
        M0 OFFSET(0) NUMBITS(1) []
    ]
}

register_structs! {
    /// System Timer registers (BCM2711 ARM Peripherals §10.2).
    pub RegisterBlock {
        /// System Timer Control/Status.
        (0x00 => pub cs: ReadWrite<u32, CS::Register>),
        /// System Timer Counter Lower 32 bits.
        (0x04 => pub clo: ReadOnly<u32>),
        /// System Timer Counter Higher 32 bits.
        (0x08 => pub chi: ReadOnly<u32>),
        /// System Timer Compare 0..3.
        (0x0c => pub compare: [ReadWrite<u32>; 4]),
        (0x1c => @END),
    }
}

/// Reads a 64-bit counter exposed as two 32-bit halves without tearing.
///
/// Reads high, low, high. If the high half did not change, the pair is
/// consistent. If it did, the low half wrapped between the reads: the second
/// high value goes with a fresh low read (the low half needs 2^32 µs, over
/// 71 minutes, to wrap again, so one retry suffices).
pub fn read_split_counter(mut high: impl FnMut() -> u32, mut low: impl FnMut() -> u32) -> u64 {
    let high_before = high();
    let low_value = low();
    let high_after = high();
    if high_before == high_after {
        (u64::from(high_before) << 32) | u64::from(low_value)
    } else {
        (u64::from(high_after) << 32) | u64::from(low())
    }
}

/// The System Timer.
pub struct SystemTimer {
    registers: Mmio<RegisterBlock>,
}

impl SystemTimer {
    /// A driver for the System Timer at `base` (normally
    /// [`crate::memory_map::SYSTEM_TIMER`]).
    ///
    /// # Safety
    ///
    /// As [`Mmio::new`]: `base` is the mapped System Timer for the rest of
    /// the program. The driver only reads, so several instances may coexist.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded to the caller (this function's contract).
        let registers = unsafe { Mmio::new(base) };
        Self { registers }
    }

    /// Microseconds since the counter started (the SoC came out of reset).
    pub fn now_micros(&self) -> u64 {
        read_split_counter(|| self.registers.chi.get(), || self.registers.clo.get())
    }

    /// The time since the counter started.
    pub fn uptime(&self) -> core::time::Duration {
        core::time::Duration::from_micros(self.now_micros())
    }
}

impl core::fmt::Debug for SystemTimer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SystemTimer")
            .field("registers", &self.registers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::read_split_counter;

    /// Replays a scripted sequence of register values.
    fn script(values: &[u32]) -> impl FnMut() -> u32 + '_ {
        let mut next = values.iter();
        move || {
            *next
                .next()
                .expect("the reader read more often than scripted")
        }
    }

    #[test]
    fn stable_high_half() {
        assert_eq!(
            read_split_counter(script(&[7, 7]), script(&[0x1234])),
            0x7_0000_1234
        );
    }

    #[test]
    fn low_half_wraps_between_reads() {
        // high=1, then low reads 0xFFFF_FFFF just before the carry, high=2:
        // the fresh low read (0x5) belongs with high=2.
        let value = read_split_counter(script(&[1, 2]), script(&[0xFFFF_FFFF, 0x5]));
        assert_eq!(value, 0x2_0000_0005);
    }

    #[test]
    fn wrap_after_low_read_is_not_torn() {
        // high=1, low=0x0000_0002 (already wrapped), high=2: must not give
        // 0x1_0000_0002 (71 minutes in the past).
        let value = read_split_counter(script(&[1, 2]), script(&[0x2, 0x3]));
        assert_eq!(value, 0x2_0000_0003);
    }
}
