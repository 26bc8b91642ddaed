//! The few system register accesses zboot needs, by exception level.

use super::ExceptionLevel;

macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading this system register has no side effects and is
        // permitted at the level zboot runs at.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags))
        };
        value
    }};
}

pub(super) fn current_el() -> u64 {
    (read_sysreg!("CurrentEL") >> 2) & 0b11
}

pub(super) fn sctlr(level: ExceptionLevel) -> u64 {
    if level == ExceptionLevel::El1 {
        read_sysreg!("sctlr_el1")
    } else {
        read_sysreg!("sctlr_el2")
    }
}

/// The syndrome, link and fault address registers of the running level.
pub(super) struct FaultRegisters {
    pub esr: u64,
    pub elr: u64,
    pub far: u64,
    pub spsr: u64,
}

pub(super) fn fault_registers(level: ExceptionLevel) -> FaultRegisters {
    match level {
        ExceptionLevel::El1 => FaultRegisters {
            esr: read_sysreg!("esr_el1"),
            elr: read_sysreg!("elr_el1"),
            far: read_sysreg!("far_el1"),
            spsr: read_sysreg!("spsr_el1"),
        },
        _ => FaultRegisters {
            esr: read_sysreg!("esr_el2"),
            elr: read_sysreg!("elr_el2"),
            far: read_sysreg!("far_el2"),
            spsr: read_sysreg!("spsr_el2"),
        },
    }
}
