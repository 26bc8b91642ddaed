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
mod boot_partition;
mod config;
mod console;
mod diag;
mod dtb;
mod handoff;
mod layout;
mod medium;
mod panic;
mod recovery;
mod selection;
mod slot_files;
mod stock;
mod storage;
#[cfg(feature = "qemu-test")]
mod test_hooks;

use arch::BootInfo;
use hal_bcm2711::gpio::ActLed;
use recovery_proto::Decision;

use crate::dtb::{DeviceTree, DtbProblem};

/// The boot flow, entered by `arch` with the MMU and caches on.
// One step after the other, as DESIGN.md's boot flow lists them; each step is a call.
#[allow(clippy::too_many_lines)]
fn main(boot: BootInfo) -> ! {
    let mut peripherals = arch::take_peripherals();

    // 1. Console and logging, at the UART clock the firmware set. The PL011 is
    // routed to GPIO 14/15 first: on a CM4 (and a Pi 4) the firmware gives those
    // pins to the mini UART unless config.txt has `dtoverlay=disable-bt`
    // (bcm2711-rpi-cm4.dts; the Raspberry Pi UART documentation), so without this
    // zboot's log would go to the Bluetooth pins. Linux muxes the pins again from
    // its device tree when its UART driver probes.
    peripherals.gpio.route_uart0_to_gpio14_15();
    let uart_clock = board::uart_clock(&mut peripherals.mailbox);
    console::init(peripherals.uart.take(), uart_clock);
    // The ACT LED stays on while zboot runs: a board that stops with it lit
    // stopped in zboot, not in the firmware or the kernel.
    ActLed::new(&peripherals.gpio).on();

    // 2. Who and where we are; keep a copy of the boot loader's DTB.
    let device_tree = match arch::take_firmware_dtb_region() {
        Some(buffer) => DeviceTree::from_boot_loader(boot.dtb_address, buffer),
        None => DeviceTree::unavailable(boot.dtb_address, DtbProblem::NoRoom),
    };
    board::print_banner(&boot, &mut peripherals, &device_tree);

    #[cfg(feature = "qemu-test")]
    test_hooks::run(&boot, &device_tree);

    arch::zboot_bench_marker();
    // Before any hashing, inflating or PIO.
    board::raise_arm_clock(&mut peripherals.mailbox);
    let recovery_button = board::recovery_button_held(&peripherals.gpio);
    // `console=serial0`/`serial1` in a cmdline.txt name these (docs/linux.md).
    let serial_ttys = device_tree.serial_ttys();
    log::info!(
        "serial0 = {}, serial1 = {}",
        serial_ttys[0].unwrap_or("(unknown: left as written)"),
        serial_ttys[1].unwrap_or("(unknown: left as written)")
    );

    // 3. The boot medium: EMMC2, its partitions and the FAT boot partition.
    let Some(disk) = medium::open_disk(&mut peripherals, &device_tree) else {
        nothing_to_boot("no usable boot medium");
    };
    let mut area = layout::LoadArea::take(board::ram_top(&mut peripherals.mailbox));
    // A reflash cut by power loss is finished, or resumed from the stick,
    // before anything on the half-written disk is trusted.
    recovery::resume_unfinished(&mut peripherals, &disk, area.as_mut());
    let Some(medium) = medium::Medium::open(&disk) else {
        // A blank or broken eMMC: a bricked unit. Reflash it.
        log::error!("the boot medium has no usable boot partition: USB recovery");
        recovery::run(
            &mut peripherals,
            Some(&disk),
            area.as_mut(),
            &recovery_proto::manifest::Manifest::default(),
        );
    };

    // 4. Slot state and policy; the decision is persisted before loading.
    let mut manifest_buffer = [0u8; medium::MANIFEST_LIMIT];
    let manifest = medium.manifest(&mut manifest_buffer);
    if diag::wanted(&manifest) {
        diag::run(&mut peripherals, &disk, &device_tree, area.as_mut());
    }
    let reset = selection::reset_reason(peripherals.watchdog.reset_reason());
    let mut selector = selection::Selector::new(
        &disk,
        medium.state_lbas(),
        &manifest,
        reset,
        recovery_button,
    );
    let Some(mut area) = area else {
        nothing_to_boot("no RAM to load a kernel into");
    };

    // A stock Raspberry Pi layout (no slot state, no slot directories): boot it as the
    // firmware would have; only if that fails does the usual path (recovery) follow.
    if medium.state_lbas().is_none() && stock::is_stock_layout(medium.partition()) {
        if config::PROVISIONED_KEY.is_some() {
            // Nothing of a stock layout is signed: a product build does not boot one.
            log::error!(
                "stock layout: not booted, since this zboot boots only slots signed by its \
                 built-in key (docs/security.md); USB recovery"
            );
            recovery::run(&mut peripherals, Some(&disk), Some(&mut area), &manifest);
        }
        if manifest.adopt == Some(true) {
            // `zbctl adopt` asked for the reflash into the zboot layout.
            let wait = manifest
                .adopt_wait
                .unwrap_or(recovery_proto::manifest::DEFAULT_ADOPT_WAIT);
            log::warn!(
                "stock layout: adoption requested (zbmanifest.txt adopt=yes): USB recovery \
                 for up to {wait} s, then the stock system"
            );
            let wait = core::time::Duration::from_secs(u64::from(wait));
            recovery::run_for(&mut peripherals, &disk, &mut area, &manifest, wait);
        }
        boot_stock(
            &medium,
            &mut area,
            &device_tree,
            serial_ttys,
            boot.running_level,
        );
    }

    // 5. Load and verify the chosen slot; a slot that fails falls back at once.
    loop {
        let outcome = selector.decide();
        let slot = match outcome.decision {
            Decision::Boot(slot) => slot,
            Decision::Recovery => {
                recovery::run(&mut peripherals, Some(&disk), Some(&mut area), &manifest)
            }
        };
        let attempt = outcome.reason.attempt().unwrap_or(1);
        // The state's minimum, raised to the build's floor: the state is not signed.
        // (`MIN_VERSION` is 0 unless the build sets ZBOOT_MIN_VERSION.)
        #[allow(clippy::unnecessary_min_or_max)]
        let minimum = selector.state().min_version.max(config::MIN_VERSION);
        let loaded = match slot_files::load(
            medium.partition(),
            slot,
            &mut area,
            minimum,
            config::PROVISIONED_KEY.as_ref(),
        ) {
            Ok(loaded) => loaded,
            Err(error) => {
                log::error!("{error}; falling back");
                selector.slot_files(slot, error.files());
                continue;
            }
        };
        medium::report_load(&disk, slot, &loaded);

        // 6. The command line and the device tree.
        let mut line_buffer = [0u8; recovery_proto::cmdline::COMMAND_LINE_SIZE];
        let bootargs = match medium.bootargs(
            slot,
            attempt,
            &manifest,
            &loaded,
            serial_ttys,
            device_tree.bootargs(),
            &mut line_buffer,
        ) {
            Ok(line) => line,
            Err(error) => {
                log::error!("slot {slot}: {error}; falling back");
                selector.slot_files(slot, recovery_proto::decide::SlotFiles::Failed);
                continue;
            }
        };
        log::info!("slot {slot}: command line: {bootargs}");
        let dtb = match handoff::prepare_device_tree(
            &mut area,
            &loaded,
            device_tree.fdt().ok(),
            bootargs,
        ) {
            Ok(address) => address,
            Err(error) => {
                log::error!("slot {slot}: device tree: {error}; falling back");
                selector.slot_files(slot, recovery_proto::decide::SlotFiles::Failed);
                continue;
            }
        };

        // 7. The optional hang guard, then 8. the hand-off.
        board::arm_hang_guard(&peripherals.watchdog, &manifest);
        handoff::jump(&loaded, dtb, boot.running_level);
    }
}

/// Boots a stock layout (docs/bring-your-own-image.md); returns only when it cannot.
fn boot_stock(
    medium: &medium::Medium<'_>,
    area: &mut layout::LoadArea,
    device_tree: &DeviceTree,
    serial_ttys: [Option<&str>; 2],
    level: arch::ExceptionLevel,
) {
    log::warn!(
        "stock layout: no slot state and no slot directories; booting what the firmware \
         would boot (files not verified, no boot counting)"
    );
    let loaded = match stock::load(medium.partition(), area) {
        Ok(loaded) => loaded,
        Err(error) => {
            log::error!("stock layout: {error}");
            return;
        }
    };
    let mut line_buffer = [0u8; recovery_proto::cmdline::COMMAND_LINE_SIZE];
    let bootargs = match recovery_proto::cmdline::build_stock(
        &loaded.cmdline,
        &serial_ttys,
        device_tree.bootargs(),
        &mut line_buffer,
    ) {
        Ok(line) => line,
        Err(error) => {
            log::error!("stock layout: command line: {error}");
            return;
        }
    };
    log::info!("stock layout: command line: {bootargs}");
    match handoff::prepare_device_tree(area, &loaded, device_tree.fdt().ok(), bootargs) {
        Ok(dtb) => handoff::jump(&loaded, dtb, level),
        Err(error) => log::error!("stock layout: device tree: {error}"),
    }
}

/// Nothing can be booted and nothing can be recovered (no card to write to,
/// no RAM): say why and wait; test builds end the QEMU run.
fn nothing_to_boot(why: &str) -> ! {
    log::error!("{why}; waiting");
    console::flush();
    #[cfg(feature = "qemu-test")]
    arch::qemu_exit(3);
    #[cfg(not(feature = "qemu-test"))]
    arch::halt()
}
