//! Who and where we are: the start-up banner from the CPU, the mailbox and the DTB.

use hal_bcm2711::board_revision::BoardRevision;
use hal_bcm2711::generic_timer;
use hal_bcm2711::mailbox::{ClockId, Mailbox};
use hal_bcm2711::pl011;
use hal_bcm2711::pm::Watchdog;
use recovery_proto::manifest::Manifest;

use crate::arch::{self, BootInfo, Peripherals};
use crate::dtb::DeviceTree;

/// The UART0 reference clock: the firmware's setting as the mailbox reports
/// it, or its documented default when the mailbox does not answer (the
/// warning is printed later, once the console is up).
pub fn uart_clock(mailbox: &mut Mailbox) -> u32 {
    mailbox
        .clock_rate(ClockId::Uart)
        .unwrap_or(pl011::FIRMWARE_DEFAULT_CLOCK_HZ)
}

/// Raises the ARM clock to its maximum before zboot hashes, inflates and copies: the
/// firmware leaves the A72 at a low rate after boot (600 MHz seen on Pi 4 boards; Circle
/// issue 140), and Linux's cpufreq raises it again later. Logs both rates. A mailbox
/// that does not answer leaves the clock as it is. Unverified on a CM4: QEMU answers
/// the same fixed rate for get, max and set.
pub fn raise_arm_clock(mailbox: &mut Mailbox) {
    let (now, max) = match (
        mailbox.clock_rate(ClockId::Arm),
        mailbox.max_clock_rate(ClockId::Arm),
    ) {
        (Ok(now), Ok(max)) => (now, max),
        (Err(error), _) | (_, Err(error)) => {
            log::warn!("ARM clock left as the firmware set it: {error}");
            return;
        }
    };
    if max <= now {
        log::info!("ARM clock {} MHz, its maximum", now / 1_000_000);
        return;
    }
    match mailbox
        .set_clock_rate(ClockId::Arm, max)
        .and_then(|_| mailbox.clock_rate(ClockId::Arm))
    {
        Ok(set) => log::info!(
            "ARM clock raised from {} MHz to {} MHz (maximum {} MHz)",
            now / 1_000_000,
            set / 1_000_000,
            max / 1_000_000
        ),
        Err(error) => log::warn!(
            "ARM clock left at {} MHz (maximum {} MHz): {error}",
            now / 1_000_000,
            max / 1_000_000
        ),
    }
}

/// The least time zboot gives the I/O rail after setting it: Linux `sdhci.c`
/// `sdhci_start_signal_voltage_switch` waits 5 ms after a switch to 3.3 V signalling
/// before it checks the result; the CM4's `sd_io_1v8_reg` says the same
/// (`regulator-settling-time-us = <5000>`).
const IO_RAIL_SETTLE_US: u32 = 5_000;

/// Puts the eMMC I/O rail (`VDD_SD_IO`) at 3.3 V before the card is touched, as Circle
/// does on the Pi 4 and CM4, so the rail and Host Control 2 (which Reset All leaves at
/// 3.3 V signalling) agree. The line comes from the firmware's tree
/// (`recovery_proto::dtb::sd_io_rail`: on the CM4, expander line 4 driven low) and is set
/// through the firmware's GPIO mailbox. Returns whether the rail is now known to be at
/// 3.3 V. When the tree describes no switchable rail, or the firmware refuses, the rail
/// stays as the firmware left it: at the level it just read this eMMC with, so the
/// driver keeps the firmware's signalling. Unverified on a CM4: QEMU's trees describe no
/// rail, and QEMU does not answer the GPIO tags.
pub fn set_sd_io_rail(mailbox: &mut Mailbox, device_tree: &DeviceTree) -> bool {
    let Ok(fdt) = device_tree.fdt() else {
        log::info!("EMMC2 I/O rail: no firmware tree; left as the firmware set it");
        return false;
    };
    let rail = match recovery_proto::dtb::sd_io_rail(fdt.data()) {
        Ok(rail) => rail,
        Err(problem) => {
            log::info!("EMMC2 I/O rail: {problem}; left as the firmware set it");
            return false;
        }
    };
    let level = if rail.high_for_3v3 { "high" } else { "low" };
    match mailbox.set_expander_output(rail.line, rail.high_for_3v3) {
        Ok(()) => {
            let settle = rail.settling_us.max(IO_RAIL_SETTLE_US);
            generic_timer::delay(core::time::Duration::from_micros(u64::from(settle)));
            log::info!(
                "EMMC2 I/O rail: 3.3 V (firmware GPIO expander line {} driven {level}, \
                 {settle} us to settle)",
                rail.line
            );
            true
        }
        Err(error) => {
            log::warn!(
                "EMMC2 I/O rail: could not drive expander line {} {level} for 3.3 V: {error}; \
                 left as the firmware set it",
                rail.line
            );
            false
        }
    }
}

/// Logs the board revision, or why the mailbox could not tell it.
pub fn report_board_revision(mailbox: &mut Mailbox) {
    match mailbox.board_revision() {
        Ok(code) => match BoardRevision::new(code) {
            Some(revision) => {
                log::info!("board revision 0x{code:08x}: {revision}");
                if !revision.is_bcm2711() {
                    log::warn!("this is not a BCM2711 board; zboot targets the CM4 / Pi 4");
                }
            }
            None => log::warn!("board revision 0x{code:08x}: old-style code, not a BCM2711 board"),
        },
        Err(error) => log::warn!(
            "board revision unknown: {error} (mailbox at 0x{:08x})",
            mailbox_address(mailbox)
        ),
    }
}

fn mailbox_address(mailbox: &Mailbox) -> usize {
    mailbox.base_address()
}

/// Prints the banner: version, exception level, board, memory, clocks, DTB.
pub fn print_banner(boot: &BootInfo, peripherals: &mut Peripherals, device_tree: &DeviceTree) {
    let mailbox = &mut peripherals.mailbox;
    log::info!(
        "zboot {} ({} build), running at EL{} (entered at EL{})",
        env!("CARGO_PKG_VERSION"),
        if cfg!(feature = "qemu-test") {
            "QEMU test"
        } else {
            "release"
        },
        boot.running_level.number(),
        boot.entry_level.number(),
    );
    match crate::config::PROVISIONED_KEY {
        Some(key) => log::info!(
            "verified boot: slots boot only when signed by the built-in key {} (slot.sig), \
             version {} or later",
            recovery_proto::slot_signature::fingerprint(&key),
            crate::config::MIN_VERSION
        ),
        None => log::info!(
            "integrity only: no key built in; slots are checked against slot.txt, not for \
             a signature"
        ),
    }
    let (mmu, dcache) = arch::mmu_and_dcache_enabled(boot.running_level);
    log::info!(
        "MMU {}, D-cache {}; generic timer {} Hz",
        if mmu { "on" } else { "off" },
        if dcache { "on" } else { "off" },
        generic_timer::frequency(),
    );
    report_board_revision(mailbox);
    match mailbox.board_serial() {
        Ok(serial) => log::info!("board serial 0x{serial:016x}"),
        Err(error) => log::warn!("board serial unknown: {error}"),
    }
    match mailbox.arm_memory() {
        Ok(memory) => log::info!(
            "ARM memory 0x{:08x}+0x{:08x} ({} MiB)",
            memory.base,
            memory.size,
            memory.size >> 20
        ),
        Err(error) => log::warn!("ARM memory unknown: {error}"),
    }
    for (name, clock) in [
        ("UART", ClockId::Uart),
        ("ARM", ClockId::Arm),
        ("EMMC2", ClockId::Emmc2),
    ] {
        match mailbox.clock_rate(clock) {
            Ok(rate) => log::info!("{name} clock {rate} Hz"),
            Err(error) => log::warn!("{name} clock unknown: {error}"),
        }
    }
    log::info!("reset reason: {:?}", peripherals.watchdog.reset_reason());
    report_device_tree(device_tree);
}

/// Logs the device tree's model, or why the tree is unusable.
pub fn report_device_tree(device_tree: &DeviceTree) {
    match device_tree.fdt() {
        Ok(_) => match device_tree.model() {
            Some(model) => log::info!("device tree: \"{model}\" at 0x{:x}", device_tree.address()),
            None => log::info!("device tree at 0x{:x} has no model", device_tree.address()),
        },
        Err(problem) => log::warn!(
            "no usable device tree at 0x{:x}: {problem}; continuing without one",
            device_tree.address()
        ),
    }
}

/// The top of the ARM's low RAM as the firmware reports it (QEMU: 960 MiB),
/// or a conservative 512 MiB if the mailbox does not answer.
pub fn ram_top(mailbox: &mut Mailbox) -> usize {
    const FALLBACK: usize = 512 << 20;
    match mailbox.arm_memory() {
        Ok(memory) => (memory.base as usize).saturating_add(memory.size as usize),
        Err(error) => {
            log::warn!("ARM memory unknown ({error}); assuming 0x{FALLBACK:x}");
            FALLBACK
        }
    }
}

/// The hang guard, on by default: the PM watchdog armed just before the
/// hand-off, at its maximum (about 16 s: 0xfffff ticks of 16 µs, Linux
/// `bcm2835_wdt.c` `PM_WDOG_TIME_SET`) unless `zbmanifest.txt` sets
/// `watchdog_timeout=<seconds>` (0 turns it off). A kernel that hangs
/// before the OS takes the watchdog over (`bcm2835_wdt` finds it running at
/// probe and keeps it fed until user space opens it) resets the board, and
/// the attempt, already counted before the hand-off, stands as failed.
pub fn arm_hang_guard(watchdog: &Watchdog, manifest: &Manifest<'_>) {
    let timeout = match manifest.watchdog_timeout {
        Some(0) => {
            log::warn!("hang guard off (watchdog_timeout=0): a hung kernel is never reset");
            return;
        }
        Some(seconds) => core::time::Duration::from_secs(u64::from(seconds)),
        None => hal_bcm2711::pm::WATCHDOG_MAX_TIMEOUT,
    };
    match watchdog.arm(timeout) {
        Ok(()) => log::info!("hang guard: watchdog armed for {} ms", timeout.as_millis()),
        Err(error) => log::warn!("hang guard not armed: {error}"),
    }
}

/// Whether the recovery button (`ZBOOT_RECOVERY_BUTTON` at build time) is
/// held at power-on. Sampled five times 10 ms apart and only "held" if
/// every sample says so: contact bounce lasts a few milliseconds, and a
/// glitch on the line must not start a reflash.
pub fn recovery_button_held(gpio: &hal_bcm2711::gpio::Gpio) -> bool {
    const SAMPLES: u32 = 5;
    const SAMPLE_INTERVAL: core::time::Duration = core::time::Duration::from_millis(10);
    let Some((number, active_high)) = crate::config::RECOVERY_BUTTON else {
        return false;
    };
    let Ok(pin) = hal_bcm2711::gpio::Pin::new(number) else {
        log::warn!("recovery button: GPIO {number} does not exist; ignored");
        return false;
    };
    let button = hal_bcm2711::gpio::Button::new(gpio, pin, active_high);
    generic_timer::delay(hal_bcm2711::gpio::Button::SETTLE);
    let mut held = true;
    for sample in 0..SAMPLES {
        if sample > 0 {
            generic_timer::delay(SAMPLE_INTERVAL);
        }
        held &= button.is_pressed();
    }
    log::info!(
        "recovery button on GPIO {number} (active {}): {}",
        if active_high { "high" } else { "low" },
        if held {
            "held: USB recovery requested"
        } else {
            "not held"
        }
    );
    held
}
