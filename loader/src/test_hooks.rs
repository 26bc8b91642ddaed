//! Test-build behaviours chosen by `zboot.test=<name>` on the DTB command line.
//!
//! Only in builds with the `qemu-test` feature: the QEMU tests use these to
//! drive paths a healthy boot never takes (a fault, a panic, the MMU-off
//! hand-off, a mailbox that never answers).

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
        other => match other.strip_prefix("dtb-at:").and_then(parse_address) {
            // A blob the harness loaded at a fixed address (QEMU itself
            // refuses to pass a broken DTB with -dtb): validate it the way
            // the boot loader's x0 is validated.
            Some(address) => board::report_device_tree(&DeviceTree::from_boot_loader(address)),
            None => log::warn!("unknown test hook `{other}`: ignored"),
        },
    }
}

fn parse_address(text: &str) -> Option<usize> {
    usize::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}
