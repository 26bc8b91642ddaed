//! Identity-mapped stage 1 translation: RAM Normal write-back, MMIO Device-nGnRE.
//!
//! One level 1 table (1 GiB blocks, 39-bit VA, 4 KiB granule) and one level 2
//! table (2 MiB blocks) for the top gigabyte of the 32-bit space, where RAM
//! ends at 0xFC00_0000 and the peripherals begin (BCM2711 ARM Peripherals,
//! section 1.2.4 "ARM physical addresses", low-peripheral mode).
//!
//! | range                       | mapped as                                 |
//! |-----------------------------|-------------------------------------------|
//! | 0x0_0000_0000-0x0_FC00_0000 | Normal, write-back, inner shareable        |
//! | 0x0_FC00_0000-0x1_0000_0000 | Device-nGnRE, execute-never (peripherals)  |
//! | 0x1_0000_0000-0x2_0000_0000 | Normal (RAM above 4 GiB on 8 GiB CM4s)     |
//! | everything else             | unmapped: any access is a translation fault |

use super::ExceptionLevel;

const ENTRIES: usize = 512;
const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// Where RAM ends and the peripheral window starts in the low 4 GiB.
const PERIPHERAL_START: u64 = 0xFC00_0000;
/// End of the identity map's RAM above 4 GiB (8 GiB CM4 modules).
const HIGH_RAM_END: u64 = 8 * GIB;

// Descriptor bits (Arm ARM D8.3, VMSAv8-64 translation table format).
const VALID: u64 = 1 << 0;
const TABLE: u64 = 1 << 1; // at levels 0-2: next-level table
const BLOCK: u64 = 0; // at levels 1-2, with VALID: a block
const ATTR_INDEX_NORMAL: u64 = 0 << 2; // MAIR attribute 0
const ATTR_INDEX_DEVICE: u64 = 1 << 2; // MAIR attribute 1
const INNER_SHAREABLE: u64 = 0b11 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const EL2_EXECUTE_NEVER: u64 = 1 << 54; // XN in the EL2 regime
const EL1_EXECUTE_NEVER: u64 = (1 << 54) | (1 << 53); // UXN | PXN in EL1&0

/// MAIR: attribute 0 = Normal, inner/outer write-back non-transient
/// read/write-allocate (0xFF); attribute 1 = Device-nGnRE (0x04).
const MAIR: u64 = 0x04_FF;

/// TCR fields shared by both regimes: T0SZ = 25 = 0x19 (39-bit VA), IRGN0/ORGN0 =
/// write-back write-allocate, SH0 = inner shareable, TG0 = 4 KiB.
const TCR_COMMON: u64 = 0x19 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12);
/// TCR_EL2 (non-VHE): RES1 bits 31 and 23, PS = 0b001 (36-bit PA).
const TCR_EL2: u64 = TCR_COMMON | (1 << 31) | (1 << 23) | (0b001 << 16);
/// TCR_EL1: EPD1 (no TTBR1 walks), IPS = 0b001 (36-bit PA).
const TCR_EL1: u64 = TCR_COMMON | (1 << 23) | (0b001 << 32);

/// SCTLR bits: M (MMU), C (data cache), I (instruction cache).
const SCTLR_M: u64 = 1 << 0;
const SCTLR_A: u64 = 1 << 1;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_I: u64 = 1 << 12;

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

static mut LEVEL1: Table = Table([0; ENTRIES]);
static mut LEVEL2_TOP_GIB: Table = Table([0; ENTRIES]);

fn normal_block(address: u64) -> u64 {
    address | VALID | BLOCK | ATTR_INDEX_NORMAL | INNER_SHAREABLE | ACCESS_FLAG
}

fn device_block(address: u64, level: ExceptionLevel) -> u64 {
    let execute_never = match level {
        ExceptionLevel::El1 => EL1_EXECUTE_NEVER,
        _ => EL2_EXECUTE_NEVER,
    };
    address | VALID | BLOCK | ATTR_INDEX_DEVICE | ACCESS_FLAG | execute_never
}

/// Whether `[start, end)` lies entirely in memory mapped as Normal RAM.
pub(super) fn is_normal_ram(start: usize, end: usize) -> bool {
    let (start, end) = (start as u64, end as u64);
    start <= end && (end <= PERIPHERAL_START || (start >= 4 * GIB && end <= HIGH_RAM_END))
}

/// Builds the tables and turns on translation and both caches.
pub(super) fn enable(level: ExceptionLevel) {
    let level1 = &raw mut LEVEL1;
    let level2 = &raw mut LEVEL2_TOP_GIB;
    // SAFETY: runs once, on the boot CPU, before anything else can reference
    // the tables; no other reference to them exists.
    let (level1, level2) = unsafe { (&mut (*level1).0, &mut (*level2).0) };

    for (index, entry) in level2.iter_mut().enumerate() {
        let address = 3 * GIB + index as u64 * MIB2;
        *entry = if address < PERIPHERAL_START {
            normal_block(address)
        } else {
            device_block(address, level)
        };
    }
    for (index, entry) in level1.iter_mut().enumerate() {
        let address = index as u64 * GIB;
        *entry = match index {
            0..=2 => normal_block(address),
            3 => level2.as_ptr() as u64 | VALID | TABLE,
            _ if address < HIGH_RAM_END => normal_block(address),
            _ => 0,
        };
    }
    let ttbr = level1.as_ptr() as u64;

    // SAFETY: the tables identity-map the running code, its data and stack
    // with the same attributes the code assumes, so enabling translation does
    // not change what any address means; the barriers order the table writes
    // before the walker can use them (Arm ARM D8.2.7, "Translation table
    // maintenance") and the ISB synchronises the SCTLR change.
    unsafe {
        match level {
            ExceptionLevel::El1 => core::arch::asm!(
                "dsb ishst",
                "msr mair_el1, {mair}",
                "msr tcr_el1, {tcr}",
                "msr ttbr0_el1, {ttbr}",
                "isb",
                "tlbi vmalle1",
                "dsb ish",
                "isb",
                "mrs {tmp}, sctlr_el1",
                "orr {tmp}, {tmp}, {set}",
                "bic {tmp}, {tmp}, {clear}",
                "msr sctlr_el1, {tmp}",
                "isb",
                mair = in(reg) MAIR,
                tcr = in(reg) TCR_EL1,
                ttbr = in(reg) ttbr,
                set = in(reg) SCTLR_M | SCTLR_C | SCTLR_I,
                clear = in(reg) SCTLR_A,
                tmp = out(reg) _,
                options(nostack),
            ),
            _ => core::arch::asm!(
                "dsb ishst",
                "msr mair_el2, {mair}",
                "msr tcr_el2, {tcr}",
                "msr ttbr0_el2, {ttbr}",
                "isb",
                "tlbi alle2",
                "dsb ish",
                "isb",
                "mrs {tmp}, sctlr_el2",
                "orr {tmp}, {tmp}, {set}",
                "bic {tmp}, {tmp}, {clear}",
                "msr sctlr_el2, {tmp}",
                "isb",
                mair = in(reg) MAIR,
                tcr = in(reg) TCR_EL2,
                ttbr = in(reg) ttbr,
                set = in(reg) SCTLR_M | SCTLR_C | SCTLR_I,
                clear = in(reg) SCTLR_A,
                tmp = out(reg) _,
                options(nostack),
            ),
        }
    }
}
