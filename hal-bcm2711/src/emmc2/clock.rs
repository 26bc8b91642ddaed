//! SD clock divider selection (SD Host Controller Simplified Specification v3.00 §2.2.14).
//!
//! Version 3.00 controllers use the *10-bit divided clock mode*: SDCLK =
//! base / (2 x N) with N = 1..=1023, and N = 0 selecting the base clock
//! itself. Version 1.00/2.00 controllers only divide by powers of two:
//! an 8-bit field whose single set bit selects base / (2 x value), 0 again
//! meaning the base clock. Both never exceed the requested frequency: the
//! card's limit (400 kHz during identification, 25/50 MHz for SD default/
//! high speed, 26/52 MHz for eMMC) is a maximum.

/// The identification-mode clock: at most 400 kHz (SD Physical Layer §6.4.1
/// "Power Up", fOD; JESD84-B51 §10.5 fOD max 400 kHz).
pub const IDENTIFICATION_HZ: u32 = 400_000;
/// SD Default Speed: up to 25 MHz (SD Physical Layer §6.6.1).
pub const SD_DEFAULT_SPEED_HZ: u32 = 25_000_000;
/// SD High Speed: up to 50 MHz (SD Physical Layer §6.6.2).
pub const SD_HIGH_SPEED_HZ: u32 = 50_000_000;
/// eMMC backwards-compatible timing: up to 26 MHz (JESD84-B51 §10.5.1).
pub const EMMC_LEGACY_HZ: u32 = 26_000_000;
/// eMMC High Speed SDR: up to 52 MHz (JESD84-B51 §10.5.2).
pub const EMMC_HIGH_SPEED_HZ: u32 = 52_000_000;

/// A clock divider as the Clock Control register takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockDivider {
    /// SDCLK Frequency Select (bits 15..8 of Clock Control).
    pub lower: u8,
    /// Upper Bits of SDCLK Frequency Select (bits 7..6); 0 before v3.00.
    pub upper: u8,
    /// The resulting SD clock in Hz.
    pub actual_hz: u32,
}

/// The divider giving the fastest SD clock not above `target_hz` from a
/// `base_hz` base clock. `ten_bit` selects the v3.00 10-bit divided mode
/// (otherwise power-of-two dividers up to 256). `None` if `target_hz` is 0
/// or even the largest divider leaves the clock above `target_hz`.
pub const fn divider(base_hz: u32, target_hz: u32, ten_bit: bool) -> Option<ClockDivider> {
    if target_hz == 0 || base_hz == 0 {
        return None;
    }
    if base_hz <= target_hz {
        return Some(ClockDivider {
            lower: 0,
            upper: 0,
            actual_hz: base_hz,
        });
    }
    if ten_bit {
        // Smallest N with base / (2N) <= target: N = ceil(base / (2 target)).
        let n = (base_hz as u64).div_ceil(2 * target_hz as u64);
        if n > 0x3ff {
            return None;
        }
        Some(ClockDivider {
            lower: (n & 0xff) as u8,
            upper: (n >> 8) as u8,
            actual_hz: (base_hz as u64 / (2 * n)) as u32,
        })
    } else {
        // Power-of-two: field value v (one bit set) divides by 2v.
        let mut value: u32 = 1;
        while value <= 0x80 {
            let actual = base_hz / (2 * value);
            if actual <= target_hz {
                return Some(ClockDivider {
                    lower: value as u8,
                    upper: 0,
                    actual_hz: actual,
                });
            }
            value <<= 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_bit_dividers_for_a_100_mhz_base() {
        // The Pi 4 / CM4 firmware's usual EMMC2 clock.
        let base = 100_000_000;
        assert_eq!(
            divider(base, IDENTIFICATION_HZ, true),
            Some(ClockDivider {
                lower: 125,
                upper: 0,
                actual_hz: 400_000
            })
        );
        assert_eq!(
            divider(base, SD_DEFAULT_SPEED_HZ, true),
            Some(ClockDivider {
                lower: 2,
                upper: 0,
                actual_hz: 25_000_000
            })
        );
        assert_eq!(
            divider(base, SD_HIGH_SPEED_HZ, true),
            Some(ClockDivider {
                lower: 1,
                upper: 0,
                actual_hz: 50_000_000
            })
        );
        // 52 MHz is not reachable: 50 MHz (N = 1) is the fastest below it.
        assert_eq!(
            divider(base, EMMC_HIGH_SPEED_HZ, true).map(|d| d.actual_hz),
            Some(50_000_000)
        );
    }

    #[test]
    fn ten_bit_divider_uses_the_upper_bits() {
        // 750 MHz base to 400 kHz: N = ceil(937.5) = 938 = 0x3AA.
        let divider = divider(750_000_000, IDENTIFICATION_HZ, true).unwrap();
        assert_eq!((divider.upper, divider.lower), (0x3, 0xaa));
        assert_eq!(divider.actual_hz, 399_786);
        assert!(divider.actual_hz <= IDENTIFICATION_HZ);
    }

    #[test]
    fn never_above_the_target() {
        for base in [
            41_666_666,
            52_000_000,
            100_000_000,
            200_000_000,
            250_000_000,
        ] {
            for target in [
                IDENTIFICATION_HZ,
                SD_DEFAULT_SPEED_HZ,
                SD_HIGH_SPEED_HZ,
                EMMC_HIGH_SPEED_HZ,
            ] {
                let divider = divider(base, target, true).unwrap();
                assert!(
                    divider.actual_hz <= target,
                    "{base} -> {target}: {divider:?}"
                );
                // Power-of-two dividers stop at 256: some targets are out
                // of reach, the others must still not be exceeded.
                if let Some(divider) = super::divider(base, target, false) {
                    assert!(
                        divider.actual_hz <= target,
                        "{base} -> {target}: {divider:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn base_at_or_below_target_is_undivided() {
        assert_eq!(
            divider(52_000_000, SD_HIGH_SPEED_HZ * 2, true).map(|d| d.lower),
            Some(0)
        );
        assert_eq!(
            divider(25_000_000, SD_DEFAULT_SPEED_HZ, false).map(|d| d.actual_hz),
            Some(25_000_000)
        );
    }

    #[test]
    fn power_of_two_dividers() {
        // 52 MHz (QEMU's capabilities base clock) to 400 kHz: /256 = 203 kHz
        // (field 0x80) is the first not above 400 kHz after /128 = 406 kHz.
        assert_eq!(
            divider(52_000_000, IDENTIFICATION_HZ, false),
            Some(ClockDivider {
                lower: 0x80,
                upper: 0,
                actual_hz: 203_125
            })
        );
        // 52 MHz / 2 = 26 MHz is above 25 MHz: / 4.
        assert_eq!(
            divider(52_000_000, SD_DEFAULT_SPEED_HZ, false).map(|d| d.lower),
            Some(0x02)
        );
    }

    #[test]
    fn unreachable_or_zero() {
        assert_eq!(divider(1_000_000_000, 100_000, true), None);
        assert_eq!(divider(500_000_000, 100_000, false), None);
        assert_eq!(divider(100_000_000, 0, true), None);
        assert_eq!(divider(0, 400_000, true), None);
    }
}
