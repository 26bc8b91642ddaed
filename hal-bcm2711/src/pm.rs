//! Power Management block: the watchdog, full-chip reset, and the reset-status register.
//!
//! The BCM2711 ARM Peripherals document does not describe this block; every
//! fact here comes from Linux `drivers/watchdog/bcm2835_wdt.c` (registers
//! RSTC +0x1c, RSTS +0x20, WDOG +0x24; password `0x5a00_0000` in bits 31..24
//! of every write; WDOG time field `0x000f_ffff`; RSTC WRCFG field bits 5..4
//! with "full reset" `0x20`; "stop" writes `0x102`; `SECS_TO_WDOG_TICKS(x) =
//! x << 16`, i.e. 65536 ticks per second, ~15.3 µs per tick; restart uses a
//! 10-tick timeout), and the RSTS status bits from
//! barebox `include/soc/bcm283x/wdt.h` (`PM_RSTS_HAD*_SET`) with their
//! decoding order from barebox `arch/arm/boards/raspberry-pi/rpi-common.c`.
//!
//! Stock QEMU 10 `raspi4b` resets the machine at once on a write arming RSTC
//! and never counts down; the tests run a patched QEMU (`scripts/build-qemu`)
//! whose watchdog counts WDOG's 16 µs ticks down as the chip does and sets
//! RSTS.HADWRF on the reset it causes. RSTS reads 0x1000 at QEMU's power-on.

use core::time::Duration;

use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::ReadWrite;

use crate::mmio::Mmio;

/// Watchdog ticks per second (`SECS_TO_WDOG_TICKS(x) = x << 16`).
pub const WATCHDOG_TICKS_PER_SECOND: u64 = 1 << 16;

/// The largest WDOG time value (`PM_WDOG_TIME_SET`, 20 bits).
pub const WATCHDOG_MAX_TICKS: u32 = 0x000f_ffff;

/// The longest watchdog timeout: `0xf_ffff` ticks, just under 16 s.
pub const WATCHDOG_MAX_TIMEOUT: Duration = watchdog_ticks_to_duration(WATCHDOG_MAX_TICKS);

/// The write password every PM register write carries in bits 31..24
/// (`PM_PASSWORD`).
pub const PASSWORD: u32 = 0x5a00_0000;

/// The RSTC value (with the password) Linux writes to stop the watchdog
/// (`PM_RSTC_RESET`): WRCFG cleared.
const RSTC_STOP: u32 = 0x0000_0102;

/// Ticks before the reset [`Watchdog::reset_now`] requests: 10 (~150 µs),
/// as Linux `__bcm2835_restart`.
const RESET_NOW_TICKS: u32 = 10;

register_bitfields! {
    u32,
    /// Reset control (PM_RSTC).
    pub RSTC [
        /// Write password: writes without it are ignored.
        PASSWD OFFSET(24) NUMBITS(8) [Password = 0x5a],
        /// Watchdog reset configuration: what the countdown reaching zero does.
        WRCFG OFFSET(4) NUMBITS(2) [
            NoReset = 0b00,
            FullReset = 0b10
        ]
    ],

    /// Reset status (PM_RSTS). The HAD* bits record the cause of the last
    /// reset; the Raspberry Pi firmware also stores a boot partition number
    /// in bits 0, 2, 4, 6, 8 and 10 (Linux bcm2835_wdt.c).
    pub RSTS [
        /// Write password.
        PASSWD OFFSET(24) NUMBITS(8) [Password = 0x5a],
        /// Had power-on reset.
        HADPOR OFFSET(12) NUMBITS(1) [],
        /// Had software hard reset.
        HADSRH OFFSET(10) NUMBITS(1) [],
        /// Had software full reset.
        HADSRF OFFSET(9) NUMBITS(1) [],
        /// Had software quick reset.
        HADSRQ OFFSET(8) NUMBITS(1) [],
        /// Had watchdog hard reset.
        HADWRH OFFSET(6) NUMBITS(1) [],
        /// Had watchdog full reset.
        HADWRF OFFSET(5) NUMBITS(1) [],
        /// Had watchdog quick reset.
        HADWRQ OFFSET(4) NUMBITS(1) [],
        /// Had debugger hard reset.
        HADDRH OFFSET(2) NUMBITS(1) [],
        /// Had debugger full reset.
        HADDRF OFFSET(1) NUMBITS(1) [],
        /// Had debugger quick reset.
        HADDRQ OFFSET(0) NUMBITS(1) []
    ],

    /// Watchdog countdown (PM_WDOG).
    pub WDOG [
        /// Write password.
        PASSWD OFFSET(24) NUMBITS(8) [Password = 0x5a],
        /// Ticks left before the configured reset.
        TIME OFFSET(0) NUMBITS(20) []
    ]
}

register_structs! {
    /// The reset/watchdog part of the PM block at bus `0x7E10_0000`.
    pub RegisterBlock {
        /// Power-domain registers, not used by zboot.
        (0x00 => _reserved0),
        /// Reset control.
        (0x1c => pub rstc: ReadWrite<u32, RSTC::Register>),
        /// Reset status.
        (0x20 => pub rsts: ReadWrite<u32, RSTS::Register>),
        /// Watchdog countdown.
        (0x24 => pub wdog: ReadWrite<u32, WDOG::Register>),
        (0x28 => @END),
    }
}

/// PM driver errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmError {
    /// The watchdog counts at most [`WATCHDOG_MAX_TIMEOUT`], at least one
    /// tick (~15 µs).
    TimeoutOutOfRange { requested: Duration, max: Duration },
}

impl core::fmt::Display for PmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TimeoutOutOfRange { requested, max } => {
                write!(
                    f,
                    "watchdog: timeout {requested:?} outside 1 tick..={max:?}"
                )
            }
        }
    }
}

/// Why the SoC last reset, decoded from `PM_RSTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// Power-on reset (HADPOR).
    PowerOn,
    /// A debugger reset (HADDR*).
    Debugger,
    /// A watchdog reset (HADWR*). This includes *every* deliberate reboot:
    /// Linux `reboot` and [`Watchdog::reset_now`] both reset through the
    /// watchdog, so a hang caught by the watchdog and a requested reboot
    /// look the same here. Boot counting must not rely on this.
    Watchdog,
    /// A software reset (HADSR*).
    Software,
    /// No cause bit set (the firmware may have cleared it).
    Unknown,
}

impl ResetReason {
    /// Decodes a `PM_RSTS` value, in barebox's order: power-on, debugger,
    /// watchdog, software.
    ///
    /// Caveat: the firmware's boot-partition bits (0, 2, 4, 6, 8, 10) overlap
    /// HADDRQ, HADDRH, HADWRQ, HADWRH, HADSRQ and HADSRH. A value that
    /// carries a partition number (after `reboot N`) decodes as a debugger,
    /// watchdog or software reset; only HADPOR (bit 12) is unambiguous. The
    /// firmware also reports the value it saw in the DTB it passes on
    /// (`/chosen/pm_rsts`, read by barebox `rpi_decode_pm_rsts`), which is
    /// the better source once the loader parses the DTB: feed it here.
    pub const fn from_rsts(rsts: u32) -> Self {
        const POWER_ON: u32 = 1 << 12;
        const DEBUGGER: u32 = 0b111;
        const WATCHDOG: u32 = 0b111 << 4;
        const SOFTWARE: u32 = 0b111 << 8;
        if rsts & POWER_ON != 0 {
            Self::PowerOn
        } else if rsts & DEBUGGER != 0 {
            Self::Debugger
        } else if rsts & WATCHDOG != 0 {
            Self::Watchdog
        } else if rsts & SOFTWARE != 0 {
            Self::Software
        } else {
            Self::Unknown
        }
    }
}

/// The `PM_RSTS` bits that hold the boot partition: 0, 2, 4, 6, 8 and 10 (the
/// complement of Linux's `PM_RSTS_PARTITION_CLR`, `0xffff_faaa`).
pub const RSTS_PARTITION_MASK: u32 = 0x0000_0555;

/// The `PM_RSTS` value to write before a reset: the live value with the partition
/// field cleared (partition 0, the normal boot) and the password in the top byte.
/// Linux `__bcm2835_restart` does the same, so stale partition bits left by an
/// earlier writer never send the firmware to another partition, or to halt
/// (partition 63, `0x555`).
pub const fn rsts_for_normal_boot(rsts: u32) -> u32 {
    (rsts & !RSTS_PARTITION_MASK & 0x00ff_ffff) | PASSWORD
}

/// The boot partition number the firmware reads from `PM_RSTS`: bits 0, 2, 4,
/// 6, 8, 10 hold partition bits 0..5 (Linux `bcm2835_wdt.c`; partition 63,
/// `0x555`, tells the firmware to halt). Not used by zboot yet; kept for a
/// future "reboot into partition N".
pub const fn boot_partition(rsts: u32) -> u8 {
    let mut partition = 0;
    let mut bit = 0;
    while bit < 6 {
        partition |= ((rsts >> (2 * bit)) & 1) << bit;
        bit += 1;
    }
    partition as u8
}

/// The `PM_RSTS` bits that encode `partition` (0..=63; higher bits ignored).
pub const fn boot_partition_bits(partition: u8) -> u32 {
    let mut bits = 0;
    let mut bit = 0;
    while bit < 6 {
        bits |= ((partition as u32 >> bit) & 1) << (2 * bit);
        bit += 1;
    }
    bits
}

/// The WDOG tick count for `timeout`, rounded up (a watchdog never fires
/// earlier than asked).
pub const fn watchdog_ticks(timeout: Duration) -> Result<u32, PmError> {
    let error = PmError::TimeoutOutOfRange {
        requested: timeout,
        max: WATCHDOG_MAX_TIMEOUT,
    };
    let ticks = (timeout.as_nanos() * WATCHDOG_TICKS_PER_SECOND as u128).div_ceil(1_000_000_000);
    if ticks == 0 || ticks > WATCHDOG_MAX_TICKS as u128 {
        return Err(error);
    }
    Ok(ticks as u32)
}

/// The duration of `ticks` watchdog ticks (rounded down).
pub const fn watchdog_ticks_to_duration(ticks: u32) -> Duration {
    let nanos = ticks as u64 * 1_000_000_000 / WATCHDOG_TICKS_PER_SECOND;
    Duration::from_nanos(nanos)
}

/// The PM watchdog and reset controller.
pub struct Watchdog {
    registers: Mmio<RegisterBlock>,
}

impl Watchdog {
    /// A driver for the PM block at `base` (normally
    /// [`crate::memory_map::PM`]).
    ///
    /// # Safety
    ///
    /// As [`Mmio::new`]. `arm` and `disarm` read-modify-write RSTC: no two
    /// instances may do so at once (single core, or a lock).
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded to the caller (this function's contract).
        let registers = unsafe { Mmio::new(base) };
        Self { registers }
    }

    /// Starts (or restarts) the countdown: a full reset after `timeout`
    /// unless re-armed or disarmed. Linux's `bcm2835_wdt` notices the armed
    /// watchdog (RSTC.WRCFG = full reset) at probe and keeps feeding it.
    pub fn arm(&self, timeout: Duration) -> Result<(), PmError> {
        let ticks = watchdog_ticks(timeout)?;
        self.registers
            .wdog
            .write(WDOG::PASSWD::Password + WDOG::TIME.val(ticks));
        self.registers
            .rstc
            .modify(RSTC::PASSWD::Password + RSTC::WRCFG::FullReset);
        Ok(())
    }

    /// Stops the countdown (Linux `bcm2835_wdt_stop` writes `0x102` to RSTC:
    /// WRCFG cleared).
    pub fn disarm(&self) {
        self.registers.rstc.set(PASSWORD | RSTC_STOP);
    }

    /// Whether a countdown would reset the chip (RSTC.WRCFG = full reset).
    pub fn is_armed(&self) -> bool {
        self.registers.rstc.matches_all(RSTC::WRCFG::FullReset)
    }

    /// Time left before the watchdog resets the chip (meaningful when armed).
    pub fn time_left(&self) -> Duration {
        watchdog_ticks_to_duration(self.registers.wdog.read(WDOG::TIME))
    }

    /// Resets the whole chip now into the normal boot: the partition field of
    /// `PM_RSTS` cleared ([`rsts_for_normal_boot`]), then a 10-tick countdown with
    /// full reset, then wait (about 150 µs). Linux `__bcm2835_restart` does the same
    /// three writes in this order.
    pub fn reset_now(&self) -> ! {
        let rsts = self.registers.rsts.get();
        self.registers.rsts.set(rsts_for_normal_boot(rsts));
        self.registers
            .wdog
            .write(WDOG::PASSWD::Password + WDOG::TIME.val(RESET_NOW_TICKS));
        self.registers
            .rstc
            .modify(RSTC::PASSWD::Password + RSTC::WRCFG::FullReset);
        loop {
            wait_for_event();
        }
    }

    /// The raw `PM_RSTS` value.
    pub fn reset_status(&self) -> u32 {
        self.registers.rsts.get()
    }

    /// The last reset's cause according to the live `PM_RSTS` (see the caveats
    /// on [`ResetReason::from_rsts`]).
    pub fn reset_reason(&self) -> ResetReason {
        ResetReason::from_rsts(self.reset_status())
    }
}

impl core::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Watchdog")
            .field("registers", &self.registers)
            .finish()
    }
}

fn wait_for_event() {
    #[cfg(target_arch = "aarch64")]
    aarch64_cpu::asm::wfe();
    #[cfg(not(target_arch = "aarch64"))]
    core::hint::spin_loop();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_sixty_five_thousand_per_second() {
        assert_eq!(watchdog_ticks(Duration::from_secs(1)), Ok(65_536));
        assert_eq!(watchdog_ticks(Duration::from_secs(15)), Ok(983_040));
        assert_eq!(watchdog_ticks(Duration::from_micros(10)), Ok(1));
        assert_eq!(watchdog_ticks(Duration::from_micros(153)), Ok(11));
    }

    #[test]
    fn timeout_range() {
        assert_eq!(watchdog_ticks(WATCHDOG_MAX_TIMEOUT), Ok(WATCHDOG_MAX_TICKS));
        assert!(WATCHDOG_MAX_TIMEOUT > Duration::from_millis(15_999));
        assert!(WATCHDOG_MAX_TIMEOUT < Duration::from_secs(16));
        let max = WATCHDOG_MAX_TIMEOUT;
        let sixteen = Duration::from_secs(16);
        assert_eq!(
            watchdog_ticks(sixteen),
            Err(PmError::TimeoutOutOfRange {
                requested: sixteen,
                max
            })
        );
        assert_eq!(
            watchdog_ticks(Duration::ZERO),
            Err(PmError::TimeoutOutOfRange {
                requested: Duration::ZERO,
                max
            })
        );
    }

    #[test]
    fn reset_reason_decoding() {
        assert_eq!(ResetReason::from_rsts(0x1000), ResetReason::PowerOn);
        assert_eq!(ResetReason::from_rsts(0x1020), ResetReason::PowerOn);
        assert_eq!(ResetReason::from_rsts(0x0020), ResetReason::Watchdog);
        assert_eq!(ResetReason::from_rsts(0x0040), ResetReason::Watchdog);
        assert_eq!(ResetReason::from_rsts(0x0200), ResetReason::Software);
        assert_eq!(ResetReason::from_rsts(0x0002), ResetReason::Debugger);
        assert_eq!(ResetReason::from_rsts(0), ResetReason::Unknown);
        // Password bits are not causes.
        assert_eq!(ResetReason::from_rsts(0x5a00_0000), ResetReason::Unknown);
    }

    #[test]
    fn a_reset_clears_the_partition_field_and_keeps_the_rest() {
        // Halt (partition 63) with HADPOR set: only HADPOR stays.
        assert_eq!(rsts_for_normal_boot(0x0000_1555), 0x5a00_1000);
        // Partition 5 with HADWRF (bit 5) and HADPOR: those stay. (The partition bits
        // are the even HAD*Q/HAD*H bits, which the firmware reuses.)
        let rsts = boot_partition_bits(5) | 0x1020;
        assert_eq!(boot_partition(rsts), 5);
        assert_eq!(rsts_for_normal_boot(rsts), 0x5a00_1020);
        assert_eq!(boot_partition(rsts_for_normal_boot(rsts)), 0);
        // A read that carries something in the password byte cannot spoil the password.
        assert_eq!(rsts_for_normal_boot(0xff00_0002), 0x5a00_0002);
    }

    #[test]
    fn boot_partition_round_trip() {
        assert_eq!(boot_partition_bits(63), 0x555);
        assert_eq!(boot_partition(0x555), 63);
        assert_eq!(boot_partition(0x1000 | 0x020), 0);
        for partition in 0..64 {
            assert_eq!(boot_partition(boot_partition_bits(partition)), partition);
        }
    }
}
