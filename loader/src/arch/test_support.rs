//! CPU-level actions for the QEMU tests' `zboot.test=` hooks (test builds only).

use core::fmt::Write;

use hal_bcm2711::emmc2::{AdmaTable, Emmc2};
use hal_bcm2711::mailbox::Mailbox;
use hal_bcm2711::memory_map;

use super::{ExceptionLevel, qemu_exit, write_raw};

/// An address the identity map leaves unmapped (beyond 8 GiB).
const UNMAPPED: usize = 0x40_0000_0000;

/// Reads an unmapped address: a level 1 translation fault, reported by the
/// exception vectors.
pub fn read_unmapped() {
    // SAFETY: the read faults before it can observe anything; the exception
    // handler reports and resets, so no code runs after it.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    write_raw(format_args!(
        "read 0x{value:x} from an unmapped address?\r\n"
    ));
}

/// A mailbox driver pointed at a peripheral-window address where nothing
/// answers, to show the property calls time out instead of hanging.
pub fn unanswered_mailbox() -> Mailbox {
    // The BCM2711 "dbus" block: QEMU maps it as an unimplemented device
    // (reads return 0, writes are ignored), so a mailbox there never answers.
    // SAFETY: the address is in the Device-mapped peripheral window for the
    // program's life; the driver only reads and writes 32-bit registers of
    // a block nothing else uses.
    unsafe { Mailbox::new(0xFE90_0000) }
}

/// The EMMC2 driver for the `emmc2` test hook.
///
/// Test builds only: the normal boot flow will own EMMC2 through its
/// storage module; the hook runs before that and never at the same time.
pub fn emmc2() -> Emmc2 {
    // SAFETY: EMMC2 is the BCM2711 SDHCI at this address, in the
    // Device-mapped peripheral window for the program's life; the test hook
    // is the controller's only user while the returned driver lives (the
    // boot flow has not touched EMMC2 when hooks run).
    unsafe { Emmc2::new(memory_map::EMMC2) }
}

/// The descriptor table of the `emmc2` hook's driver; `None` on the second call.
pub fn emmc2_adma_table() -> Option<&'static mut AdmaTable> {
    static mut TABLE: AdmaTable = AdmaTable::new();
    static mut TAKEN: bool = false;
    // SAFETY: single CPU, no interrupts: the flag is only touched here.
    if unsafe { (&raw const TAKEN).read_volatile() } {
        return None;
    }
    // SAFETY: as above.
    unsafe { (&raw mut TAKEN).write_volatile(true) };
    // SAFETY: handed out once (the flag), so this is the only reference.
    Some(unsafe { &mut *core::ptr::addr_of_mut!(TABLE) })
}

/// QEMU exit statuses of the hand-off check.
const EXIT_PASSED: u32 = 0;
const EXIT_FAILED: u32 = 1;

const PATTERN_WORDS: usize = 1024;
static mut PATTERN: [u64; PATTERN_WORDS] = [0; PATTERN_WORDS];
const PATTERN_ARGUMENT: usize = 0x5a5a_0001;

fn pattern_word(index: usize) -> u64 {
    (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x7a62_6f6f_7400_0000
}

/// Writes a pattern with the caches on, then leaves through the same
/// MMU-off path a kernel hand-off takes, into [`check_after_hand_off`].
/// (QEMU models no caches, so on QEMU this proves the sequence runs and
/// delivers its argument with translation and caching off; on a board it
/// also proves the clean to the point of coherency.)
pub fn hand_off_to_check(level: ExceptionLevel) -> ! {
    let pattern = &raw mut PATTERN;
    for index in 0..PATTERN_WORDS {
        // SAFETY: single CPU; nothing else references PATTERN.
        unsafe { (*pattern)[index] = pattern_word(index) };
    }
    crate::console::flush();
    // SAFETY: check_after_hand_off is an `extern "C"` function that never
    // returns and needs only the stack, which stays valid with the MMU off.
    unsafe {
        super::caches_off_and_jump(
            check_after_hand_off as *const () as usize,
            PATTERN_ARGUMENT,
            level,
        )
    }
}

extern "C" fn check_after_hand_off(argument: usize) -> ! {
    let level = ExceptionLevel::from_number(super::sysreg::current_el());
    let (mmu, dcache) = super::mmu_and_dcache_enabled(level);
    let pattern = &raw const PATTERN;
    let mut intact = true;
    for index in 0..PATTERN_WORDS {
        // SAFETY: PATTERN is a static; with the MMU off the read goes to
        // memory at the same (identity) address.
        let word = unsafe { core::ptr::read_volatile(&raw const (*pattern)[index]) };
        intact &= word == pattern_word(index);
    }
    let ok = !mmu && !dcache && intact && argument == PATTERN_ARGUMENT;
    // SAFETY: as in write_raw: the UART is mapped (and reachable with the
    // MMU off); only this CPU runs.
    let mut uart = unsafe { hal_bcm2711::pl011::Pl011Uart::new(memory_map::PL011_UART0) };
    let _ = write!(
        uart,
        "hand-off check: MMU {}, D-cache {}, pattern {}, argument 0x{argument:x}\r\n",
        if mmu { "on" } else { "off" },
        if dcache { "on" } else { "off" },
        if intact { "intact" } else { "CORRUPT" },
    );
    qemu_exit(if ok { EXIT_PASSED } else { EXIT_FAILED })
}

/// A second DTB copy area for the `dtb-at:` hook (the boot DTB's area is
/// taken at start-up): 64 KiB of `.bss`, handed out once.
pub fn dtb_scratch() -> &'static mut [u8] {
    static mut SCRATCH: [u8; 64 * 1024] = [0; 64 * 1024];
    static mut TAKEN: bool = false;
    let taken = &raw mut TAKEN;
    // SAFETY: single CPU; the flag is only touched here.
    assert!(!unsafe { taken.read_volatile() }, "DTB scratch taken twice");
    // SAFETY: as above.
    unsafe { taken.write_volatile(true) };
    // SAFETY: handed out once (the flag), so this is the only reference.
    unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH) }
}

/// The DWC2 USB host driver for the `usb` test hook, with its DMA buffer.
///
/// Test builds only: the recovery flow will own the DWC2 and its buffer;
/// the hook runs before that and at most once (the buffer is handed out
/// once, like the DTB scratch area).
pub fn dwc2() -> hal_bcm2711::dwc2::Dwc2 {
    use hal_bcm2711::dwc2::{DmaBuffer, Dwc2};
    static mut BUFFER: DmaBuffer = DmaBuffer::zeroed();
    static mut TAKEN: bool = false;
    let taken = &raw mut TAKEN;
    // SAFETY: single CPU; the flag is only touched here.
    let already = unsafe { taken.read_volatile() };
    assert!(!already, "DWC2 DMA buffer taken twice");
    // SAFETY: as above.
    unsafe { taken.write_volatile(true) };
    // SAFETY: handed out once (the flag), so this is the only reference;
    // the buffer is in .bss, inside the first GiB the DWC2's DMA reaches.
    let buffer = unsafe { &mut *core::ptr::addr_of_mut!(BUFFER) };
    // SAFETY: the DWC2 is at this address, in the Device-mapped peripheral
    // window for the program's life; the test hook is its only user while
    // the returned driver lives (the boot flow never touches USB).
    unsafe { Dwc2::new(memory_map::DWC2, buffer) }
}

/// 128 KiB of `.bss` for the `usb` hook's multi-block read, handed out once.
pub fn usb_read_buffer() -> &'static mut [u8] {
    static mut BUFFER: [u8; 128 * 1024] = [0; 128 * 1024];
    static mut TAKEN: bool = false;
    let taken = &raw mut TAKEN;
    // SAFETY: single CPU; the flag is only touched here.
    let already = unsafe { taken.read_volatile() };
    assert!(!already, "USB read buffer taken twice");
    // SAFETY: as above.
    unsafe { taken.write_volatile(true) };
    // SAFETY: handed out once (the flag), so this is the only reference.
    unsafe { &mut *core::ptr::addr_of_mut!(BUFFER) }
}
