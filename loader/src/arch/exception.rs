//! Fault reports: every exception is fatal; print what happened and reset.

use core::fmt::{self, Write};

use hal_bcm2711::{memory_map, pl011::Pl011Uart};

use super::{ExceptionLevel, sysreg};

/// The registers `vectors.s` saves: x0..x30, then the interrupted SP.
#[repr(C)]
pub(super) struct TrapFrame {
    x: [u64; 31],
    sp: u64,
}

/// Writes to the console without the logger's lock, for fault and panic
/// paths that may run while the lock is held or before it exists.
pub fn write_raw(args: fmt::Arguments<'_>) {
    // SAFETY: PL011_UART0 is the UART0 register block, identity-mapped as
    // Device memory (or reached with the MMU off) for the program's life.
    // Sharing it with the logger's instance is acceptable in these paths:
    // at worst characters of two messages interleave.
    let mut uart = unsafe { Pl011Uart::new(memory_map::PL011_UART0) };
    let _ = uart.write_fmt(args);
    let _ = uart.flush();
}

/// Set while a fault report is being printed, so a fault inside the report
/// resets at once instead of recursing. Plain volatile accesses, not atomics:
/// this may run with the MMU off, where exclusive accesses are not reliable.
static mut REPORTING: bool = false;

const KINDS: [&str; 16] = [
    "synchronous, current EL with SP0",
    "IRQ, current EL with SP0",
    "FIQ, current EL with SP0",
    "SError, current EL with SP0",
    "synchronous, current EL",
    "IRQ, current EL",
    "FIQ, current EL",
    "SError, current EL",
    "synchronous, lower EL (AArch64)",
    "IRQ, lower EL (AArch64)",
    "FIQ, lower EL (AArch64)",
    "SError, lower EL (AArch64)",
    "synchronous, lower EL (AArch32)",
    "IRQ, lower EL (AArch32)",
    "FIQ, lower EL (AArch32)",
    "SError, lower EL (AArch32)",
];

/// Names of ESR_ELx.EC values (Arm ARM D24.2.40, "ESR_EL2, Exception Syndrome
/// Register (EL2)").
fn exception_class_name(class: u64) -> &'static str {
    match class {
        0x00 => "unknown reason",
        0x01 => "trapped WFI/WFE",
        0x07 => "trapped SVE/SIMD/FP access",
        0x0e => "illegal execution state",
        0x15 => "SVC from AArch64",
        0x16 => "HVC from AArch64",
        0x17 => "SMC from AArch64",
        0x18 => "trapped MSR/MRS/system instruction",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError interrupt",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "reserved or unexpected class",
    }
}

/// Names of the fault status code of instruction and data aborts (ISS
/// bits 5:0, IFSC/DFSC).
fn fault_status_name(status: u64) -> &'static str {
    match status {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x09..=0x0b => "access flag fault",
        0x0d..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        0x30 => "TLB conflict abort",
        _ => "other fault status",
    }
}

struct Report<'a> {
    frame: &'a TrapFrame,
    kind: u64,
    level: ExceptionLevel,
    registers: sysreg::FaultRegisters,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = KINDS
            .get(self.kind as usize)
            .copied()
            .unwrap_or("unknown vector");
        let esr = self.registers.esr;
        let class = (esr >> 26) & 0x3f;
        writeln!(
            f,
            "\r\n*** zboot: unexpected exception at EL{} ({kind})\r",
            self.level.number()
        )?;
        writeln!(
            f,
            "    exception class 0x{class:02x}: {}\r",
            exception_class_name(class)
        )?;
        if matches!(class, 0x20 | 0x21 | 0x24 | 0x25) {
            let status = esr & 0x3f;
            let write = class >= 0x24 && esr & (1 << 6) != 0;
            let access = if class >= 0x24 {
                if write { ", on a write" } else { ", on a read" }
            } else {
                ""
            };
            write!(
                f,
                "    fault status 0x{status:02x}: {}",
                fault_status_name(status)
            )?;
            // Address size, translation, access flag and permission faults
            // carry the table level in their low two bits.
            if matches!(status, 0x00..=0x0f) {
                write!(f, " (level {})", status & 0b11)?;
            }
            writeln!(f, "{access}\r")?;
        }
        writeln!(f, "    ESR  0x{esr:016x}\r")?;
        writeln!(
            f,
            "    ELR  0x{:016x}  (faulting instruction)\r",
            self.registers.elr
        )?;
        writeln!(
            f,
            "    FAR  0x{:016x}  (faulting address)\r",
            self.registers.far
        )?;
        writeln!(
            f,
            "    SPSR 0x{:016x}  SP 0x{:016x}\r",
            self.registers.spsr, self.frame.sp
        )?;
        for (row, pair) in self.frame.x.chunks(4).enumerate() {
            write!(f, "   ")?;
            for (column, value) in pair.iter().enumerate() {
                let index = row * 4 + column;
                write!(f, " x{index:<2} 0x{value:016x}")?;
            }
            writeln!(f, "\r")?;
        }
        Ok(())
    }
}

/// Entered from `vectors.s` with the saved registers; never returns.
#[unsafe(no_mangle)]
extern "C" fn zboot_exception(frame: &TrapFrame, kind: u64) -> ! {
    let reporting = &raw mut REPORTING;
    // SAFETY: single CPU, no interrupts: nothing else accesses the flag
    // concurrently; volatile keeps the check and the store in order.
    let nested = unsafe { core::ptr::read_volatile(reporting) };
    if !nested {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(reporting, true) };
        let level = ExceptionLevel::from_number(sysreg::current_el());
        let report = Report {
            frame,
            kind,
            level,
            registers: sysreg::fault_registers(level),
        };
        write_raw(format_args!("{report}"));
    }
    write_raw(format_args!("*** zboot: resetting the board\r\n"));
    super::peripherals::reset_now()
}
