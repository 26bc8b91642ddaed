//! zboot: the A/B/SAFE boot stage for the Raspberry Pi CM4.
//!
//! `main` follows the boot flow of the design (DESIGN.md, "Boot flow"); each
//! step is a call into the module that owns it. The CPU-level work before
//! `main` (entry at EL3/EL2/EL1, FP/SIMD, `.bss`, stack, MMU and caches)
//! lives in [`arch`].
#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod arch;
mod board;
mod console;
mod dtb;
mod panic;
#[cfg(feature = "qemu-test")]
mod test_hooks;

use arch::BootInfo;
use hal_bcm2711::gpio::ActLed;

/// The boot flow, entered by `arch` with the MMU and caches on.
fn main(boot: BootInfo) -> ! {
    let mut peripherals = arch::take_peripherals();

    // 1. Console and logging, at the UART clock the firmware set.
    let uart_clock = board::uart_clock(&mut peripherals.mailbox);
    console::init(peripherals.uart.take(), uart_clock);
    // The ACT LED stays on while zboot runs: a board that stops with it lit
    // stopped in zboot, not in the firmware or the kernel.
    ActLed::new(&peripherals.gpio).on();

    // 2. Who and where we are: the banner.
    let device_tree = dtb::DeviceTree::from_boot_loader(boot.dtb_address);
    board::print_banner(&boot, &mut peripherals, &device_tree);

    #[cfg(feature = "qemu-test")]
    test_hooks::run(&boot, &device_tree);

    arch::zboot_bench_marker();

    // The storage path (EMMC2, slot state, kernel hand-off) comes next; until
    // it exists this build has nothing to boot and says so.
    log::warn!("no boot medium support in this build: halting");
    finish()
}

/// Ends a run that has nothing left to do: test builds exit QEMU with
/// success, real boards wait (a reset would only loop).
fn finish() -> ! {
    #[cfg(feature = "qemu-test")]
    arch::qemu_exit(0);
    #[cfg(not(feature = "qemu-test"))]
    arch::halt()
}
