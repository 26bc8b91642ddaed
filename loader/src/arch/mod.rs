//! The CPU side of zboot: entry, exception vectors, MMU, caches and hand-off.
//!
//! This is the only module of the loader allowed to use `unsafe`; everything
//! above it works through the safe functions exported here.

mod exception;
mod mmu;
mod peripherals;
mod sysreg;
#[cfg(feature = "qemu-test")]
pub mod test_support;

use core::arch::global_asm;

global_asm!(include_str!("entry.s"), options(raw));
global_asm!(include_str!("vectors.s"), options(raw));
global_asm!(include_str!("cache.s"), options(raw));

pub use exception::write_raw;
pub use peripherals::reset_now;
pub use peripherals::{Peripherals, take_peripherals};

/// Exception level of the running code (1 or 2; EL3 entry drops to EL2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionLevel {
    El1,
    El2,
    El3,
}

impl ExceptionLevel {
    fn from_number(number: u64) -> Self {
        match number {
            3 => Self::El3,
            2 => Self::El2,
            _ => Self::El1,
        }
    }

    /// The level as the Arm ARM numbers it.
    pub fn number(self) -> u8 {
        match self {
            Self::El1 => 1,
            Self::El2 => 2,
            Self::El3 => 3,
        }
    }
}

/// What the entry code learned before any Rust ran.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// x0 at entry: the DTB address by the arm64 boot protocol, if the boot
    /// loader passed one (QEMU without `-dtb` passes an ATAG pointer).
    pub dtb_address: usize,
    /// The level the boot loader entered zboot at.
    pub entry_level: ExceptionLevel,
    /// The level zboot runs at (EL3 entries are dropped to EL2).
    pub running_level: ExceptionLevel,
}

/// Called by `entry.s` on the boot CPU with a stack, a zeroed `.bss`, FP/SIMD
/// enabled and the MMU off.
#[unsafe(no_mangle)]
extern "C" fn zboot_rust_entry(dtb_address: usize, entry_level: u64) -> ! {
    let running_level = ExceptionLevel::from_number(sysreg::current_el());
    // Caches and the MMU come first: exclusive loads/stores (spin locks,
    // atomics) need Normal cacheable memory on the Cortex-A72, and hashing or
    // inflating with caches off would be tens of times slower.
    mmu::enable(running_level);
    crate::main(BootInfo {
        dtb_address,
        entry_level: ExceptionLevel::from_number(entry_level),
        running_level,
    })
}

/// Stops this CPU for good, in a low-power wait.
pub fn halt() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// A function the benchmark's instruction counter watches for: the count
/// runs from zboot's first instruction up to the first call of this.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn zboot_bench_marker() {
    // SAFETY: an empty asm block with `nomem, nostack` has no effect; it only
    // keeps the compiler from folding this function into its callers.
    unsafe { core::arch::asm!("", options(nomem, nostack, preserves_flags)) };
}

/// The benchmark's marker for the end of a USB reflash (see
/// [`zboot_bench_marker`]).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn zboot_bench_reflash_done() {
    // SAFETY: two `nop`s have no effect; they make this function's code
    // differ from zboot_bench_marker's, so the linker cannot fold the two
    // markers into one address.
    unsafe { core::arch::asm!("nop", "nop", options(nomem, nostack, preserves_flags)) };
}

/// Turns the MMU and the caches off, cleans every cache level to the point of
/// coherency and branches to `entry` with `x0 = argument` at the running EL.
///
/// # Safety
/// `entry` must be the address of code that is valid to execute with the MMU
/// off, expects to be entered this way, and never returns; everything it
/// needs must already be in memory (this function cleans the caches, so data
/// written before the call is visible to it).
pub unsafe fn caches_off_and_jump(entry: usize, argument: usize, level: ExceptionLevel) -> ! {
    unsafe extern "C" {
        fn zboot_caches_off_and_jump(entry: usize, argument: usize, level: u64) -> !;
    }
    // SAFETY: the routine in cache.s uses no stack and no memory, so turning
    // the MMU off under it is sound; the caller guarantees `entry`.
    unsafe { zboot_caches_off_and_jump(entry, argument, u64::from(level.number())) }
}

/// Hands the CPU to a kernel: MMU and caches off (cleaned to the PoC), then
/// `entry` with x0 = `dtb_address`, x1–x3 = 0, at `level`.
///
/// Safe to call because nothing of zboot runs afterwards: whatever `entry`
/// does, no Rust code observes it. The caller's duty is the boot protocol's:
/// a verified image at `entry`, a valid DTB at `dtb_address`.
pub fn enter_kernel(entry: usize, dtb_address: usize, level: ExceptionLevel) -> ! {
    // SAFETY: `entry` is never returned from and zboot's state is not used
    // again, so the jump cannot break any invariant zboot relies on; the
    // routine itself uses no memory while the MMU goes off.
    unsafe { caches_off_and_jump(entry, dtb_address, level) }
}

/// Whether the MMU and data cache are on at the running level.
pub fn mmu_and_dcache_enabled(level: ExceptionLevel) -> (bool, bool) {
    let sctlr = sysreg::sctlr(level);
    (sctlr & 1 != 0, sctlr & (1 << 2) != 0)
}

/// Copies `destination.len()` bytes from physical address `address` if
/// they lie in RAM the identity map covers (data the boot loader left for us:
/// the DTB). Returns false, copying nothing, otherwise. No reference to that
/// memory outlives the call.
pub fn read_boot_data(address: usize, destination: &mut [u8]) -> bool {
    let Some(end) = address.checked_add(destination.len()) else {
        return false;
    };
    let overlaps = |(start, stop): (usize, usize)| address < stop && start < end;
    let image = (
        core::ptr::addr_of!(linker::__image_start) as usize,
        core::ptr::addr_of!(linker::__image_end) as usize,
    );
    let firmware_dtb = crate::layout::FIRMWARE_DTB;
    let load_area = (crate::layout::LOAD_AREA_START, usize::MAX);
    // SAFETY: single CPU, no interrupts; the flags are only written by take_region.
    let (firmware_dtb_taken, load_area_taken) = unsafe {
        (
            (&raw const FIRMWARE_DTB_TAKEN).read_volatile(),
            (&raw const LOAD_AREA_TAKEN).read_volatile(),
        )
    };
    if !mmu::is_normal_ram(address, end)
        || overlaps(image)
        || (firmware_dtb_taken && overlaps(firmware_dtb))
        || (load_area_taken && overlaps(load_area))
    {
        return false;
    }
    // SAFETY: the source range is identity-mapped Normal RAM (checked
    // above) that no Rust reference covers: it is outside zboot's image
    // (statics, stack) and outside every region handed out so far, and the
    // destination is a distinct Rust object.
    unsafe {
        core::ptr::copy(
            address as *const u8,
            destination.as_mut_ptr(),
            destination.len(),
        );
    }
    true
}

/// Hands out a fixed RAM region outside zboot's image, once.
fn take_region(taken: *mut bool, start: usize, end: usize) -> Option<&'static mut [u8]> {
    let image_end = core::ptr::addr_of!(linker::__image_end) as usize;
    // SAFETY: single CPU, no interrupts: the flag is only touched here.
    if unsafe { taken.read_volatile() } || start < image_end || !mmu::is_normal_ram(start, end) {
        return None;
    }
    // SAFETY: as above.
    unsafe { taken.write_volatile(true) };
    // SAFETY: [start, end) is identity-mapped Normal RAM above zboot's
    // image (checked), handed out once (the flag), so this is the only
    // reference to it for the rest of the program.
    Some(unsafe { core::slice::from_raw_parts_mut(start as *mut u8, end - start) })
}

/// The 2 MiB region that holds zboot's copy of the boot loader's DTB
/// ([`crate::layout::FIRMWARE_DTB`]); `None` on the second call.
pub fn take_firmware_dtb_region() -> Option<&'static mut [u8]> {
    let (start, end) = crate::layout::FIRMWARE_DTB;
    take_region(&raw mut FIRMWARE_DTB_TAKEN, start, end)
}

static mut FIRMWARE_DTB_TAKEN: bool = false;
static mut LOAD_AREA_TAKEN: bool = false;

/// RAM from [`crate::layout::LOAD_AREA_START`] to `top`: where the kernel,
/// initrd and final DTB are placed; `None` on the second call or if `top`
/// is not mapped RAM.
pub fn take_load_area(top: usize) -> Option<&'static mut [u8]> {
    take_region(
        &raw mut LOAD_AREA_TAKEN,
        crate::layout::LOAD_AREA_START,
        top,
    )
}

mod linker {
    //! Symbols the linker script defines.
    unsafe extern "C" {
        /// zboot's first byte (`linker/zboot.ld`).
        pub static __image_start: u8;
        /// The end of everything the loaded image uses: file, `.bss`, stack.
        pub static __image_end: u8;
    }
}

/// Exit QEMU (test builds run with `-semihosting`) with `code` as its status.
#[cfg(feature = "qemu-test")]
pub fn qemu_exit(code: u32) -> ! {
    // Arm semihosting SYS_EXIT (operation 0x18) with the AArch64 parameter
    // block {ADP_Stopped_ApplicationExit = 0x20026, exit code}; HLT #0xF000
    // is the A64 semihosting trap (Arm "Semihosting for AArch32 and AArch64").
    let block: [u64; 2] = [0x2_0026, u64::from(code)];
    // SAFETY: the semihosting call only reads the two-word block, which lives
    // on our stack for the duration of the call.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("x0") 0x18_u64,
            in("x1") block.as_ptr(),
            options(nostack, readonly)
        );
    }
    halt()
}
