//! Test-build behaviours chosen by `zboot.test=<name>` on the DTB command line.
//!
//! Only in builds with the `qemu-test` feature: the QEMU tests use these to
//! drive paths a healthy boot never takes (a fault, a panic, the MMU-off
//! hand-off, a mailbox that never answers).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, BootInfo};
use crate::board;
use crate::dtb::DeviceTree;

/// Runs the hook the command line asks for, if any.
pub fn run(boot: &BootInfo, device_tree: &DeviceTree) {
    let Some(bootargs) = device_tree.bootargs() else {
        return;
    };
    let Some(hook) = bootargs
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("zboot.test="))
    else {
        return;
    };
    log::info!("test hook `{hook}`");
    match hook {
        "fault" => arch::test_support::read_unmapped(),
        "panic" => panic!("deliberate panic (zboot.test=panic)"),
        "handoff" => arch::test_support::hand_off_to_check(boot.running_level),
        "mailbox-unanswered" => {
            let mut mailbox = arch::test_support::unanswered_mailbox();
            board::report_board_revision(&mut mailbox);
        }
        "emmc2" => emmc2_exercise(device_tree),
        "usb" => usb_exercise(),
        other if other.starts_with("cut-after-lba:") => {
            match other
                .strip_prefix("cut-after-lba:")
                .and_then(|lba| lba.parse::<u64>().ok())
            {
                Some(lba) => CUT_AFTER_LBA.store(lba, Ordering::Relaxed),
                None => log::warn!("test hook `{other}`: not an LBA"),
            }
        }
        other if other.starts_with("payload-cache:") => {
            match other
                .strip_prefix("payload-cache:")
                .and_then(|bytes| bytes.parse::<u64>().ok())
            {
                Some(bytes) => PAYLOAD_CACHE_LIMIT.store(bytes, Ordering::Relaxed),
                None => log::warn!("test hook `{other}`: not a byte count"),
            }
        }
        other => match other.strip_prefix("dtb-at:").and_then(parse_address) {
            // A blob the harness loaded at a fixed address (QEMU itself
            // refuses to pass a broken DTB with -dtb): validate it the way
            // the boot loader's x0 is validated.
            Some(address) => board::report_device_tree(&DeviceTree::from_boot_loader(
                address,
                arch::test_support::dtb_scratch(),
            )),
            None => log::warn!("unknown test hook `{other}`: ignored"),
        },
    }
}

/// `zboot.test=cut-after-lba:N`: the LBA whose write ends the run, as a
/// power cut right after that write would (u64::MAX: none).
static CUT_AFTER_LBA: AtomicU64 = AtomicU64::new(u64::MAX);

/// `zboot.test=payload-cache:N`: at most N bytes of RAM keep the reflash's verified
/// payload (u64::MAX: all the loader has), so a QEMU test can make the write pass read
/// the stick again, as an image larger than a unit's RAM does.
static PAYLOAD_CACHE_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// The `payload-cache` hook's bound on the reflash's payload cache, in bytes.
pub fn payload_cache_limit() -> usize {
    usize::try_from(PAYLOAD_CACHE_LIMIT.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
}

/// Exit status of a run ended by `cut-after-lba` (the QEMU tests match it).
pub const POWER_CUT_EXIT: u32 = 9;

/// Called after every eMMC write of a reflash: with `cut-after-lba:N`, the
/// write of `blocks` blocks at `lba` that covers N ends the run at once,
/// leaving the disk file exactly as a power cut after that write would.
pub fn after_emmc_write(lba: u64, blocks: u64) {
    let cut = CUT_AFTER_LBA.load(Ordering::Relaxed);
    if (lba..lba.saturating_add(blocks)).contains(&cut) {
        log::warn!("test hook: power cut after the write of {blocks} blocks at LBA {lba}");
        crate::console::flush();
        arch::qemu_exit(POWER_CUT_EXIT);
    }
}

/// Blocks read by the `emmc2` hook after LBA 0 (from LBA 1), with CMD18.
const EMMC2_READ_BLOCKS: usize = 16;
/// Blocks the `emmc2` hook writes at the end of the card: one with CMD24 at
/// `capacity - 9`, then eight with CMD25 at `capacity - 8`.
const EMMC2_WRITE_BLOCKS: usize = 8;
const BLOCK: usize = hal_bcm2711::emmc2::BLOCK_SIZE;

/// The byte the `emmc2` hook writes at offset `index` of block `lba`
/// (qemu-tests/tests/emmc2.rs computes the same).
fn emmc2_pattern_byte(lba: u64, index: usize) -> u8 {
    (lba as u8)
        .wrapping_mul(37)
        .wrapping_add((index as u8).wrapping_mul(11))
        ^ ((index >> 8) as u8)
}

/// 64-bit FNV-1a, the checksum the `emmc2` hook prints for what it read.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `zboot.test=emmc2`: initialises the card on EMMC2, reads LBA 0 (CMD17)
/// and LBA 1.. (CMD18, started with `read_blocks_during` while LBA 0's
/// checksum is computed) and prints their checksums, writes a pattern to the
/// last blocks (CMD24 + CMD25), reads it back and compares, checks that a
/// read past the end is refused, and prints the command count and how the
/// data moved (ADMA2 as the boot flow sets it up, `medium::use_adma`, or
/// PIO). Failures are logged; the boot goes on.
///
/// The base clock is left to the Capabilities register (argument 0): the
/// hook has no mailbox (single owner, held by `main`). QEMU's
/// capabilities say 52 MHz; the real boot flow passes the mailbox's
/// `ClockId::Emmc2` rate.
fn emmc2_exercise(device_tree: &DeviceTree) {
    let mut emmc2 = arch::test_support::emmc2();
    crate::medium::use_adma(
        &mut emmc2,
        arch::test_support::emmc2_adma_table(),
        device_tree,
    );
    log::info!(
        "emmc2: present state 0x{:08x}, SDHCI specification version {}",
        emmc2.present_state(),
        emmc2.specification_version()
    );
    let card = match emmc2.init(0) {
        Ok(card) => card,
        Err(error) => {
            log::warn!("emmc2: init failed: {error}");
            log::info!("emmc2: commands issued {}", emmc2.commands_issued());
            return;
        }
    };
    log::info!("emmc2: {card}");
    if let Err(error) = emmc2_read_and_write(&mut emmc2, card.blocks) {
        log::warn!("emmc2: {error}");
    }
    if let Some(fallback) = emmc2.take_adma_fallback() {
        log::warn!("{fallback}");
    }
    let counts = emmc2.transfer_counts();
    log::info!(
        "emmc2: commands issued {}, transfer retries {}",
        emmc2.commands_issued(),
        emmc2.transfer_retries()
    );
    log::info!(
        "emmc2: data moved by ADMA2 in {} command(s), by PIO in {} (+{} for unsuitable buffers)",
        counts.adma,
        counts.pio,
        counts.pio_unsuitable_buffer
    );
}

/// Bytes in whole cache lines (64 bytes on the Cortex-A72), so reads into them
/// can go by ADMA2.
#[repr(C, align(64))]
struct CacheLines<const N: usize>([u8; N]);

fn emmc2_read_and_write(
    emmc2: &mut hal_bcm2711::emmc2::Emmc2,
    capacity: u64,
) -> Result<(), hal_bcm2711::emmc2::Emmc2Error> {
    let mut first = CacheLines([0u8; BLOCK]);
    emmc2.read_blocks(0, &mut first.0)?;
    let mut range = CacheLines([0u8; EMMC2_READ_BLOCKS * BLOCK]);
    let (result, first_hash) = emmc2.read_blocks_during(1, &mut range.0, || fnv1a64(&first.0));
    log::info!("emmc2: LBA 0 fnv1a64 0x{first_hash:016x}");
    result?;
    let range = &mut range.0;
    log::info!(
        "emmc2: LBA 1+{EMMC2_READ_BLOCKS} fnv1a64 0x{:016x}",
        fnv1a64(range)
    );

    let single_lba = capacity - EMMC2_WRITE_BLOCKS as u64 - 1;
    let mut pattern = CacheLines([0u8; (EMMC2_WRITE_BLOCKS + 1) * BLOCK]);
    let pattern = &mut pattern.0;
    for (offset, byte) in pattern.iter_mut().enumerate() {
        *byte = emmc2_pattern_byte(single_lba + (offset / BLOCK) as u64, offset % BLOCK);
    }
    emmc2.write_blocks(single_lba, &pattern[..BLOCK])?;
    emmc2.write_blocks(single_lba + 1, &pattern[BLOCK..])?;
    let mut back = CacheLines([0u8; (EMMC2_WRITE_BLOCKS + 1) * BLOCK]);
    let back = &mut back.0;
    emmc2.read_blocks(single_lba, back)?;
    log::info!(
        "emmc2: wrote LBA {single_lba}+{}, read back: {}",
        EMMC2_WRITE_BLOCKS + 1,
        if back == pattern {
            "verified"
        } else {
            "MISMATCH"
        }
    );

    match emmc2.read_blocks(capacity - 1, &mut range[..2 * BLOCK]) {
        Err(error) => log::info!("emmc2: read past the end refused: {error}"),
        Ok(()) => log::warn!("emmc2: read past the end was not refused"),
    }
    Ok(())
}

/// Blocks the `usb` hook reads from LBA 1 (more than one 64 KiB READ, so
/// the request is split; qemu-tests/tests/usb.rs writes them).
const USB_READ_BLOCKS: usize = 200;

/// `zboot.test=usb`: brings the DWC2 up as a host, resets the root port,
/// enumerates through the hub(s) in front of the device, opens the first
/// mass-storage device, prints its identity and capacity, reads LBA 0 and
/// LBA 1..=200 and prints their FNV-1a checksums and the transfer count.
/// Failures (no device, no mass storage, a device that stops answering)
/// are logged and the boot goes on.
///
/// The USB power domain is not switched on here: the hook has no mailbox
/// (single owner, held by `main`) and QEMU's DWC2 is always powered. The
/// recovery flow calls `Dwc2::power_on(&mut mailbox)` first on a CM4.
fn usb_exercise() {
    use hal_bcm2711::usb::mass_storage::{Inquiry, find_first_mass_storage};
    let mut dwc2 = arch::test_support::dwc2();
    let info = match dwc2.init() {
        Ok(info) => info,
        Err(error) => {
            log::warn!("usb: controller init failed: {error}");
            return;
        }
    };
    log::info!(
        "usb: DWC2 GSNPSID 0x{:08x}, {} host channels, HPRT 0x{:08x}",
        info.snpsid,
        info.channels,
        dwc2.port_status()
    );
    let speed = match dwc2.reset_root_port() {
        Ok(speed) => speed,
        Err(error) => {
            log::warn!("usb: no USB mass-storage device: {error}");
            return;
        }
    };
    log::info!("usb: root port enabled, {speed}");
    let mut stick = match find_first_mass_storage(dwc2, speed) {
        Ok(stick) => stick,
        Err((dwc2, error)) => {
            log::warn!("usb: {error}");
            log::info!("usb: transfers {}", dwc2.transfers());
            return;
        }
    };
    let device = *stick.device();
    log::info!(
        "usb: mass storage at address {} ({}), {} hub(s) deep on port {}, vendor 0x{:04x} product 0x{:04x}",
        device.control.device_address,
        device.control.speed,
        device.hub_depth,
        device.port,
        device.descriptor.vendor_id,
        device.descriptor.product_id
    );
    let inquiry = *stick.inquiry();
    log::info!(
        "usb: INQUIRY \"{}\" \"{}\" \"{}\"",
        Inquiry::text(&inquiry.vendor),
        Inquiry::text(&inquiry.product),
        Inquiry::text(&inquiry.revision)
    );
    log::info!(
        "usb: capacity {} blocks of {} bytes",
        stick.block_count(),
        stick.block_size()
    );
    let mut first = [0u8; BLOCK];
    match stick.read_blocks(0, &mut first) {
        Ok(()) => log::info!("usb: LBA 0 fnv1a64 0x{:016x}", fnv1a64(&first)),
        Err(error) => log::warn!("usb: reading LBA 0: {error}"),
    }
    let range = &mut arch::test_support::usb_read_buffer()[..USB_READ_BLOCKS * BLOCK];
    match stick.read_blocks(1, range) {
        Ok(()) => log::info!(
            "usb: LBA 1+{USB_READ_BLOCKS} fnv1a64 0x{:016x}",
            fnv1a64(range)
        ),
        Err(error) => log::warn!("usb: reading LBA 1+{USB_READ_BLOCKS}: {error}"),
    }
    match stick.read_blocks(stick.block_count(), &mut first) {
        Err(error) => log::info!("usb: read past the end refused: {error}"),
        Ok(()) => log::warn!("usb: read past the end was not refused"),
    }
    log::info!(
        "usb: SCSI commands {}, reset recoveries {}, USB transfers {}, toggle mismatches {}",
        stick.commands(),
        stick.recoveries(),
        stick.host().transfers(),
        stick.host().toggle_mismatches()
    );
}

fn parse_address(text: &str) -> Option<usize> {
    usize::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}
