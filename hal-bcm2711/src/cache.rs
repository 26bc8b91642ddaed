//! Data-cache maintenance by virtual address, for buffers shared with bus masters.
//!
//! The VideoCore (mailbox buffers) and the DMA masters (EMMC2 ADMA, DWC2) do
//! not snoop the Cortex-A72 caches. Before a device reads a buffer the CPU
//! wrote, its lines are *cleaned* to the point of coherency; after a device
//! wrote a buffer, its lines are *invalidated* so the CPU reads RAM. Each
//! operation ends with `dsb sy`, so it is complete before the MMIO write
//! that starts the device, or before the CPU reads the data.
//!
//! Instructions: `dc cvac`, `dc ivac`, `dc civac` (Arm ARM DDI 0487, "Data
//! cache maintenance instructions"), applied to every line of the range; the
//! line size is the smallest data cache line, `4 << CTR_EL0.DminLine` bytes
//! (`CTR_EL0`, bits 19..16: log2 of the number of 4-byte words) — 64 bytes
//! on the Cortex-A72 (Cortex-A72 TRM, `CTR_EL0` reset value `0x8444_C004`).
//!
//! With the MMU off every data access is Device-nGnRnE and uncached, and the
//! operations are harmless. On non-aarch64 hosts they do nothing, so code
//! that calls them can be unit-tested.

/// The smallest data-cache line size in bytes encoded in a `CTR_EL0` value.
pub const fn dcache_line_size_from_ctr(ctr_el0: u64) -> usize {
    let dminline = (ctr_el0 >> 16) & 0xf;
    4 << dminline
}

/// The first line-aligned address and the end of the last line covering
/// `start..start + length`, for a power-of-two `line` size.
/// `length == 0` covers nothing. The end saturates: a range reaching into
/// the last line of the address space stops before that line (no buffer
/// lives there on the BCM2711).
pub const fn line_span(start: usize, length: usize, line: usize) -> (usize, usize) {
    let first = start & !(line - 1);
    if length == 0 {
        return (first, first);
    }
    let end = start.saturating_add(length);
    let last_end = match end.checked_add(line - 1) {
        Some(rounded) => rounded & !(line - 1),
        None => usize::MAX & !(line - 1),
    };
    (first, last_end)
}

/// The smallest data-cache line size of this CPU in bytes.
pub fn dcache_line_size() -> usize {
    dcache_line_size_from_ctr(read_ctr_el0())
}

/// Writes back dirty lines of `address..address + length` to RAM (the point
/// of coherency), keeping them cached. Use before a device reads the buffer.
pub fn clean_range(address: usize, length: usize) {
    for_each_line(address, length, |line| {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `dc cvac` only writes back a line's dirty data; it changes
        // no value as seen by any observer. An unmapped address faults (a
        // reported exception), it does not corrupt memory.
        unsafe {
            core::arch::asm!("dc cvac, {}", in(reg) line, options(nostack, preserves_flags));
        }
        #[cfg(not(target_arch = "aarch64"))]
        let _ = line;
    });
    data_synchronization_barrier();
}

/// Writes back and then drops the lines of `address..address + length`: the
/// next CPU read comes from RAM. Use after a device wrote the buffer when
/// the CPU may also have written it, or before handing a buffer to a device
/// that will write it.
///
/// Safe because no CPU write is lost: a value changes only if a device wrote
/// RAM, and letting a device write memory is the caller's (unsafe) step.
pub fn clean_invalidate_range(address: usize, length: usize) {
    for_each_line(address, length, |line| {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `dc civac` writes back dirty data before dropping the
        // line, so no CPU write is lost; see `clean_range` for faults.
        unsafe {
            core::arch::asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags));
        }
        #[cfg(not(target_arch = "aarch64"))]
        let _ = line;
    });
    data_synchronization_barrier();
}

/// Drops the lines of `address..address + length` without writing them
/// back, so the CPU next reads what a device put in RAM. Use after a device
/// wrote the buffer.
///
/// Lines only partly inside the range (at either end) are cleaned and
/// invalidated instead, so bytes outside the range never lose a CPU write.
///
/// # Safety
///
/// Discarding dirty lines inside the range throws away CPU writes to it. The
/// caller guarantees the range holds only plain data whose every bit pattern
/// is valid (bytes, integers) that the CPU has not written since it last
/// cleaned the range, or whose CPU writes it means to discard, and that no
/// reference into the range is used across the call with an assumption about
/// its contents.
pub unsafe fn invalidate_range(address: usize, length: usize) {
    let line_size = dcache_line_size();
    let (first, end) = line_span(address, length, line_size);
    let range_end = address.saturating_add(length);
    let mut line = first;
    while line < end {
        let whole_line_inside = line >= address && line.saturating_add(line_size) <= range_end;
        #[cfg(target_arch = "aarch64")]
        // SAFETY: whole lines inside the range may lose CPU writes, which
        // this function's contract allows; partial lines are cleaned first
        // (`dc civac`) so neighbouring data keeps its writes.
        unsafe {
            if whole_line_inside {
                core::arch::asm!("dc ivac, {}", in(reg) line, options(nostack, preserves_flags));
            } else {
                core::arch::asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags));
            }
        }
        #[cfg(not(target_arch = "aarch64"))]
        let _ = whole_line_inside;
        line += line_size;
    }
    data_synchronization_barrier();
}

fn for_each_line(address: usize, length: usize, mut operation: impl FnMut(usize)) {
    let line_size = dcache_line_size();
    let (first, end) = line_span(address, length, line_size);
    let mut line = first;
    while line < end {
        operation(line);
        line += line_size;
    }
}

/// `dsb sy`: waits until the maintenance above is complete for every
/// observer, before any later memory access or MMIO write.
fn data_synchronization_barrier() {
    #[cfg(target_arch = "aarch64")]
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}

#[cfg(target_arch = "aarch64")]
fn read_ctr_el0() -> u64 {
    let value: u64;
    // SAFETY: reading CTR_EL0 has no side effects and is permitted at EL1
    // and EL2 (and at EL0 unless SCTLR_EL1.UCT traps it, not our case).
    unsafe {
        core::arch::asm!("mrs {}, ctr_el0", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Host stand-in so callers compile and run in unit tests: the operations
/// are no-ops there, and the Cortex-A72 value keeps the line walk realistic.
#[cfg(not(target_arch = "aarch64"))]
fn read_ctr_el0() -> u64 {
    0x8444_C004
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cortex_a72_line_size() {
        assert_eq!(dcache_line_size_from_ctr(0x8444_C004), 64);
        // DminLine = 3: 8 words.
        assert_eq!(dcache_line_size_from_ctr(0x0003_0000), 32);
    }

    #[test]
    fn span_rounds_out_to_whole_lines() {
        assert_eq!(line_span(0x1000, 64, 64), (0x1000, 0x1040));
        assert_eq!(line_span(0x1001, 64, 64), (0x1000, 0x1080));
        assert_eq!(line_span(0x103f, 1, 64), (0x1000, 0x1040));
        assert_eq!(line_span(0x1040, 0, 64), (0x1040, 0x1040));
        assert_eq!(line_span(0x1000, 0x1000, 64), (0x1000, 0x2000));
    }

    #[test]
    fn host_operations_are_harmless() {
        let mut buffer = [0xa5u8; 200];
        let address = buffer.as_mut_ptr() as usize;
        clean_range(address, buffer.len());
        clean_invalidate_range(address, buffer.len());
        // SAFETY: a host no-op; the buffer holds plain bytes.
        unsafe { invalidate_range(address, buffer.len()) };
        assert!(buffer.iter().all(|&byte| byte == 0xa5));
    }
}
