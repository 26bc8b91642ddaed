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
#[cfg(not(feature = "qemu-test"))]
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

/// Turns the MMU and the caches off, cleans every cache level to the point of
/// coherency and branches to `entry` with `x0 = argument` at the running EL.
///
/// # Safety
/// `entry` must be the address of code that is valid to execute with the MMU
/// off, expects to be entered this way, and never returns; everything it
/// needs must already be in memory (this function cleans the caches, so data
/// written before the call is visible to it).
// Used by the kernel hand-off; until the storage path lands only the
// `zboot.test=handoff` check calls it.
#[cfg_attr(not(feature = "qemu-test"), allow(dead_code))]
pub unsafe fn caches_off_and_jump(entry: usize, argument: usize, level: ExceptionLevel) -> ! {
    unsafe extern "C" {
        fn zboot_caches_off_and_jump(entry: usize, argument: usize, level: u64) -> !;
    }
    // SAFETY: the routine in cache.s uses no stack and no memory, so turning
    // the MMU off under it is sound; the caller guarantees `entry`.
    unsafe { zboot_caches_off_and_jump(entry, argument, u64::from(level.number())) }
}

/// Whether the MMU and data cache are on at the running level.
pub fn mmu_and_dcache_enabled(level: ExceptionLevel) -> (bool, bool) {
    let sctlr = sysreg::sctlr(level);
    (sctlr & 1 != 0, sctlr & (1 << 2) != 0)
}

/// Reads `len` bytes at physical address `address` if they lie in RAM that
/// the identity map covers, for data handed over by the boot loader (the
/// DTB).
pub fn boot_data(address: usize, len: usize) -> Option<&'static [u8]> {
    let end = address.checked_add(len)?;
    if !mmu::is_normal_ram(address, end) {
        return None;
    }
    // SAFETY: the range lies in RAM that is identity-mapped as Normal memory
    // for the whole program; zboot never writes the boot loader's data, so
    // a shared 'static view of it is sound.
    Some(unsafe { core::slice::from_raw_parts(address as *const u8, len) })
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
