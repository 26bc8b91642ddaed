//! Builds zboot and runs it on QEMU `raspi4b`: the harness behind the QEMU
//! tests, the demo and the benchmark.
//!
//! A run is one QEMU process with `-semihosting -no-reboot`: the guest ends it
//! by exiting through semihosting (test builds), by resetting the board
//! (QEMU then quits and reports a `SHUTDOWN` event with reason
//! `guest-reset` on QMP), or the harness kills it at its deadline.
#![forbid(unsafe_code)]

mod build;
pub mod cm4_model;
pub mod insn_count;
pub mod linux;
mod qemu;

pub use build::{
    LoaderBuild, LoaderImage, PROVISIONED_BUTTON_GPIO, PROVISIONED_MIN_VERSION,
    PROVISIONED_WATCHDOG_TIMEOUT, Tools, emmc2bus_b0_dtb, insn_count_plugin, minimal_dtb,
    provisioned_key_files, workspace_root,
};
pub use qemu::{EMMC2_ADMA2_CAPABILITIES, EMMC2_ADMA2_VARIABLE, Ending, Icount, Qemu, Run};
