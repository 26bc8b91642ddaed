//! The bring-up diagnostics (`diag=yes` in `zbmanifest.txt`, or the `diag` build
//! feature): what a first board needs to tell in one boot (docs/bring-up.md).
//!
//! Printed after the boot medium is open and before the slot decision, then the boot
//! goes on as usual. Reads only: nothing is written to the eMMC or the stick.
//! - the clocks the firmware runs (mailbox `GET_CLOCK_RATE` / `GET_MAX_CLOCK_RATE`);
//! - the eMMC's EXT_CSD fields zboot uses, the bus mode and clock it chose and the
//!   fallbacks it took;
//! - a read speed test: 64 MiB (or the whole card, if smaller) from LBA 0, in MB/s;
//! - the USB devices on the DWC2 port, with their speeds (the whole tree);
//! - the firmware device tree's `/chosen`.

use core::fmt;

use dtoolkit::{Node, Property};
use hal_bcm2711::dwc2::Dwc2;
use hal_bcm2711::generic_timer::Instant;
use hal_bcm2711::mailbox::{ClockId, Mailbox};
use hal_bcm2711::usb::enumerate::{Enumerator, SeenDevice};

use crate::arch::Peripherals;
use crate::dtb::DeviceTree;
use crate::layout::{self, LoadArea};
use crate::storage::Disk;

/// How much the speed test reads.
const SPEED_TEST_BYTES: u64 = 64 << 20;
/// The speed test's buffer, reused for each read: 4 MiB at the start of the load area.
const SPEED_TEST_CHUNK: usize = 4 << 20;
/// The longest `/chosen` value printed in full; longer ones are cut.
const VALUE_LIMIT: usize = 96;

/// Whether the diagnostics run: the build feature, or `diag=yes`.
pub fn wanted(manifest: &recovery_proto::manifest::Manifest<'_>) -> bool {
    cfg!(feature = "diag") || manifest.diag == Some(true)
}

/// Prints every section; each says why when it cannot run.
pub fn run(
    peripherals: &mut Peripherals,
    disk: &Disk,
    device_tree: &DeviceTree,
    area: Option<&mut LoadArea>,
) {
    log::info!("diag: bring-up diagnostics (zbmanifest.txt diag=yes)");
    clocks(&mut peripherals.mailbox);
    emmc(disk);
    match area {
        Some(area) => read_speed(disk, area),
        None => log::warn!("diag: read speed: no RAM for the buffer"),
    }
    usb(peripherals);
    chosen(device_tree);
    log::info!("diag: end");
}

fn clocks(mailbox: &mut Mailbox) {
    for (name, clock) in [
        ("ARM", ClockId::Arm),
        ("core", ClockId::Core),
        ("EMMC2", ClockId::Emmc2),
        ("UART", ClockId::Uart),
        ("SDRAM", ClockId::Sdram),
    ] {
        match (mailbox.clock_rate(clock), mailbox.max_clock_rate(clock)) {
            (Ok(rate), Ok(max)) => log::info!("diag: clock {name}: {rate} Hz (maximum {max} Hz)"),
            (Ok(rate), Err(error)) => {
                log::info!("diag: clock {name}: {rate} Hz (maximum unknown: {error})");
            }
            (Err(error), _) => log::warn!("diag: clock {name}: {error}"),
        }
    }
}

fn emmc(disk: &Disk) {
    disk.inspect(|controller| {
        let Some(card) = controller.card() else {
            log::warn!("diag: EMMC2: no card");
            return;
        };
        log::info!(
            "diag: EMMC2: base clock {} Hz, card clock {} Hz, {}-bit bus, {}, {} V signalling",
            controller.base_clock_hz(),
            card.clock_hz,
            card.bus_width as u8,
            if card.ddr52 {
                "DDR52"
            } else if card.high_speed {
                "SDR high speed"
            } else {
                "SDR legacy speed"
            },
            if controller.signaling_1v8() {
                "1.8"
            } else {
                "3.3"
            }
        );
        let (widths, ddr) = controller.bus_fallbacks();
        log::info!(
            "diag: EMMC2: fallbacks: {widths} bus width(s) refused, DDR52 refused {ddr} time(s); \
             {} commands, {} retries",
            controller.commands_issued(),
            controller.transfer_retries()
        );
        let moved = controller.transfer_counts();
        match (controller.dma_window(), controller.adma_fallback()) {
            (_, Some(fallback)) => log::info!("diag: EMMC2: PIO since {fallback}"),
            (Some(window), None) => log::info!("diag: EMMC2: ADMA2, DMA view {window}"),
            (None, None) => log::info!("diag: EMMC2: PIO (ADMA2 not set up)"),
        }
        log::info!(
            "diag: EMMC2: data moved by ADMA2 in {} command(s), by PIO in {} (+{} for \
             unsuitable buffers)",
            moved.adma,
            moved.pio,
            moved.pio_unsuitable_buffer
        );
        match controller.ext_csd() {
            Some(ext_csd) => log::info!(
                "diag: EXT_CSD: EXT_CSD_REV {}, DEVICE_TYPE {:#04x} (HS26 {}, HS52 {}, DDR52 {}), \
                 SEC_COUNT {}, GENERIC_CMD6_TIME {} ms, PARTITION_CONFIG {:#04x}, \
                 PARTITION_SWITCH_TIME {} ms, boot partitions {} KiB each",
                ext_csd.revision,
                ext_csd.device_type,
                ext_csd.high_speed_26,
                ext_csd.high_speed_52,
                ext_csd.ddr_52,
                ext_csd.sector_count,
                ext_csd.cmd6_time_ms,
                ext_csd.partition_config,
                ext_csd.partition_switch_time_ms,
                ext_csd.boot_partition_bytes >> 10,
            ),
            None => log::info!("diag: EXT_CSD: none (an SD card)"),
        }
    });
}

fn read_speed(disk: &Disk, area: &mut LoadArea) {
    let Ok(buffer) = area.region(
        "diagnostic read buffer",
        layout::LOAD_AREA_START,
        SPEED_TEST_CHUNK,
    ) else {
        log::warn!("diag: read speed: no room for a {SPEED_TEST_CHUNK}-byte buffer");
        return;
    };
    let total = SPEED_TEST_BYTES.min(disk.blocks() * 512);
    let chunk_blocks = (SPEED_TEST_CHUNK / 512) as u64;
    let start = Instant::now();
    let mut lba = 0;
    while lba * 512 < total {
        let blocks = chunk_blocks.min(total / 512 - lba);
        let Some(part) = buffer.get_mut(..(blocks * 512) as usize) else {
            return;
        };
        if let Err(error) = disk.read(lba, part) {
            log::warn!("diag: read speed: {error}");
            return;
        }
        lba += blocks;
    }
    let micros = start.elapsed().as_micros().max(1);
    // Bytes per microsecond is MB/s; one decimal.
    let tenths = u128::from(total) * 10 / micros;
    log::info!(
        "diag: read speed: {} MiB from LBA 0 in {} ms: {}.{} MB/s",
        total >> 20,
        micros / 1000,
        tenths / 10,
        tenths % 10
    );
}

fn usb(peripherals: &mut Peripherals) {
    let Some(mut dwc2) = peripherals.dwc2.take() else {
        log::warn!("diag: USB: the controller is in use");
        return;
    };
    if let Err(error) = Dwc2::power_on(&mut peripherals.mailbox) {
        log::warn!("diag: USB: power domain: {error}");
    }
    match dwc2.init() {
        Err(error) => log::warn!("diag: USB: controller: {error}"),
        Ok(info) => match dwc2.reset_root_port() {
            Err(error) => log::info!(
                "diag: USB: DWC2 {:#010x}, {} channels; root port: {error}",
                info.snpsid,
                info.channels
            ),
            Ok(speed) => {
                log::info!(
                    "diag: USB: DWC2 {:#010x}, {} channels, transfers up to {} bytes, {} packets{}",
                    info.snpsid,
                    info.channels,
                    info.max_transfer_size,
                    info.max_packet_count,
                    if dwc2.phy_was_reset() {
                        "; PHY set to UTMI+ 8-bit"
                    } else {
                        ""
                    }
                );
                log::info!("diag: USB: root port: a {speed} device");
                let mut walk = Enumerator::new();
                walk.on_device = Some(report_device);
                if let Err(error) = walk.walk(&mut dwc2, speed) {
                    log::warn!("diag: USB: {error}");
                }
                log::info!(
                    "diag: USB: {} device(s), {} hub(s)",
                    walk.devices,
                    walk.hubs
                );
            }
        },
    }
    peripherals.dwc2 = Some(dwc2);
}

fn report_device(device: &SeenDevice) {
    let indent = "                ";
    let depth = usize::from(device.depth).min(indent.len() / 2) * 2;
    log::info!(
        "diag: USB: {}address {}, port {}, {}, {:04x}:{:04x}, class {:#04x}{}{}",
        indent.get(..depth).unwrap_or(""),
        device.address,
        device.port,
        device.speed,
        device.descriptor.vendor_id,
        device.descriptor.product_id,
        device.descriptor.class,
        if device.hub { ", hub" } else { "" },
        if device.mass_storage {
            ", mass storage"
        } else {
            ""
        },
    );
}

fn chosen(device_tree: &DeviceTree) {
    let Ok(fdt) = device_tree.fdt() else {
        log::warn!("diag: /chosen: no firmware device tree");
        return;
    };
    let Some(chosen) = fdt.find_node("/chosen") else {
        log::warn!("diag: /chosen: none in the firmware's tree");
        return;
    };
    for property in chosen.properties() {
        log::info!(
            "diag: /chosen/{} = {}",
            property.name(),
            Value(property.value())
        );
    }
    for child in chosen.children() {
        for property in child.properties() {
            log::info!(
                "diag: /chosen/{}/{} = {}",
                child.name(),
                property.name(),
                Value(property.value())
            );
        }
    }
}

/// A property value as dtc would show it: a string when it is printable text, else
/// its cells (or bytes), cut at [`VALUE_LIMIT`] bytes.
struct Value<'a>(&'a [u8]);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        let shown = bytes.get(..VALUE_LIMIT).unwrap_or(bytes);
        let cut = if shown.len() < bytes.len() {
            " …"
        } else {
            ""
        };
        if let Some(text) = bytes
            .strip_suffix(&[0])
            .filter(|text| !text.is_empty())
            .and_then(|text| core::str::from_utf8(text).ok())
            .filter(|text| text.chars().all(|c| !c.is_control() || c == '\0'))
            .filter(|text| text.split('\0').all(|part| !part.is_empty()))
        {
            // A string list (`compatible`): NUL-separated strings.
            f.write_str("\"")?;
            let mut written = 0;
            for (index, part) in text.split('\0').enumerate() {
                if index > 0 {
                    f.write_str("\", \"")?;
                }
                let room = VALUE_LIMIT.saturating_sub(written);
                let part = part.get(..room.min(part.len())).unwrap_or("");
                f.write_str(part)?;
                written += part.len();
            }
            return write!(f, "\"{cut}");
        }
        if bytes.is_empty() {
            return f.write_str("(empty)");
        }
        if bytes.len().is_multiple_of(4) {
            f.write_str("<")?;
            for (index, cell) in shown.chunks_exact(4).enumerate() {
                let word = <[u8; 4]>::try_from(cell).map_or(0, u32::from_be_bytes);
                write!(f, "{}{word:#x}", if index == 0 { "" } else { " " })?;
            }
            write!(f, "{cut}>")
        } else {
            f.write_str("[")?;
            for (index, byte) in shown.iter().enumerate() {
                write!(f, "{}{byte:02x}", if index == 0 { "" } else { " " })?;
            }
            write!(f, "{cut}]")
        }
    }
}
