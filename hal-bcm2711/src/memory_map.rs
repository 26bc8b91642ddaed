//! ARM physical base addresses of the BCM2711 blocks zboot uses (low-peripheral mode).
//!
//! The BCM2711 has three address views (BCM2711 ARM Peripherals, §1.2
//! "Address map"): the ARM's 35-bit physical space, the VideoCore/legacy bus
//! (`0x7Exx_xxxx` peripherals, what datasheets and device trees list), and
//! the DMA view of RAM. In the default *low-peripheral* mode the firmware
//! leaves the ARM in, the main peripherals appear at `0xFC00_0000`
//! (`arm = bus - 0x7C00_0000 + 0xFC00_0000`), confirmed by the `ranges` of
//! the `soc` node in Linux `arch/arm/boot/dts/broadcom/bcm2711.dtsi`:
//! `<0x7e000000 0x0 0xfe000000 0x01800000>`,
//! `<0x7c000000 0x0 0xfc000000 0x02000000>` and the ARM-local block
//! `<0x40000000 0x0 0xff800000 0x00800000>`.
//!
//! Each block's bus address (from `bcm283x.dtsi`/`bcm2711.dtsi`) is noted
//! next to it.

/// Start of the main peripheral window (bus `0x7C00_0000`).
pub const PERIPHERAL_WINDOW_BASE: usize = 0xFC00_0000;
/// End (exclusive) of the main peripheral window; the ARM-local block follows.
pub const PERIPHERAL_WINDOW_END: usize = 0xFF80_0000;

/// The ARM-local block (local interrupt controller, GIC-400 at offset `0x4_1000`).
/// BCM2711-only (the BCM2835 has no such block at this address).
pub const ARM_LOCAL_BASE: usize = 0xFF80_0000;
/// Size of the ARM-local block (`0x0080_0000`, bcm2711.dtsi `ranges`).
pub const ARM_LOCAL_SIZE: usize = 0x0080_0000;

/// The legacy (BCM283x-compatible) peripherals, bus `0x7E00_0000`.
pub const LEGACY_PERIPHERAL_BASE: usize = 0xFE00_0000;

/// System Timer, bus `0x7E00_3000` (BCM2711 ARM Peripherals §10.2).
pub const SYSTEM_TIMER: usize = 0xFE00_3000;

/// ARM-side VideoCore mailbox registers, bus `0x7E00_B880`
/// (`mailbox@7e00b880` in bcm283x.dtsi; offsets in Linux
/// `drivers/mailbox/bcm2835-mailbox.c`).
pub const MAILBOX: usize = 0xFE00_B880;

/// Power Management block: reset control and watchdog, bus `0x7E10_0000`
/// (`watchdog@7e100000` in bcm2711.dtsi).
pub const PM: usize = 0xFE10_0000;

/// GPIO, bus `0x7E20_0000` (BCM2711 ARM Peripherals §5.2).
pub const GPIO: usize = 0xFE20_0000;

/// PL011 UART0, bus `0x7E20_1000` (BCM2711 ARM Peripherals §11.5).
pub const PL011_UART0: usize = 0xFE20_1000;

/// Legacy Arasan SDHCI ("EMMC"), bus `0x7E30_0000` (`mmc@7e300000` in
/// bcm283x.dtsi). QEMU's `-drive if=sd` lands here.
pub const LEGACY_SDHCI: usize = 0xFE30_0000;

/// EMMC2 (the CM4's eMMC / the Pi 4 SD slot), bus `0x7E34_0000`. BCM2711-only
/// (`emmc2: mmc@7e340000` in bcm2711.dtsi).
pub const EMMC2: usize = 0xFE34_0000;

/// DWC2 USB 2.0 OTG controller, bus `0x7E98_0000` (`usb@7e980000` in
/// bcm283x.dtsi).
pub const DWC2: usize = 0xFE98_0000;

/// Where RAM appears to the VideoCore and to bus masters (DMA, mailbox
/// buffers): ARM physical `0..1 GiB` is seen at bus `0xC000_0000..`
/// (bcm2711.dtsi `dma-ranges = <0xc0000000 0x0 0x00000000 0x40000000>`:
/// "Emulate a contiguous 30-bit address range for DMA"). The `0xC` alias is
/// the uncached ("direct") one.
pub const VC_BUS_RAM_ALIAS: u32 = 0xC000_0000;
/// Size of the RAM a bus master reaches through [`VC_BUS_RAM_ALIAS`]: only
/// the first GiB of ARM physical memory.
pub const VC_BUS_RAM_WINDOW: usize = 0x4000_0000;

/// The bus address a DMA master or the VideoCore must be given for the ARM
/// physical range `arm_physical..arm_physical + length`, or `None` if any
/// part of it lies outside the first GiB (not reachable through the alias).
pub const fn vc_bus_address(arm_physical: usize, length: usize) -> Option<u32> {
    let Some(end) = arm_physical.checked_add(length) else {
        return None;
    };
    if end > VC_BUS_RAM_WINDOW {
        return None;
    }
    // Fits: arm_physical < 2^30, so the OR cannot overlap the alias bits.
    Some(VC_BUS_RAM_ALIAS | arm_physical as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_inside_the_peripheral_window() {
        for base in [
            SYSTEM_TIMER,
            MAILBOX,
            PM,
            GPIO,
            PL011_UART0,
            LEGACY_SDHCI,
            EMMC2,
            DWC2,
        ] {
            assert!((PERIPHERAL_WINDOW_BASE..PERIPHERAL_WINDOW_END).contains(&base));
            assert!(base >= LEGACY_PERIPHERAL_BASE);
        }
        assert_eq!(PERIPHERAL_WINDOW_END, ARM_LOCAL_BASE);
    }

    #[test]
    fn bus_address_of_low_ram() {
        assert_eq!(vc_bus_address(0x8_0000, 256), Some(0xC008_0000));
        assert_eq!(vc_bus_address(0, 0), Some(0xC000_0000));
        assert_eq!(vc_bus_address(0x3FFF_FF00, 0x100), Some(0xFFFF_FF00));
    }

    #[test]
    fn bus_address_rejects_ram_above_one_gib() {
        assert_eq!(vc_bus_address(0x3FFF_FF00, 0x101), None);
        assert_eq!(vc_bus_address(0x4000_0000, 1), None);
        assert_eq!(vc_bus_address(usize::MAX, 2), None);
    }
}
