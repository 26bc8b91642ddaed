//! The hand-off to Linux: the device tree completed, then MMU and caches off and a jump.
//!
//! Linux `Documentation/arch/arm64/booting.rst`: x0 = the DTB's physical
//! address, x1–x3 = 0, MMU off, D-cache off with the image cleaned to the
//! PoC, interrupts masked, at EL2 (preferred) or EL1. The DTB's
//! `/chosen/bootargs` carries the command line and `linux,initrd-start` /
//! `linux,initrd-end` the initrd.

use core::fmt;

use dtoolkit::fdt::Fdt;

use crate::arch::{self, ExceptionLevel};
use crate::layout::{self, DoesNotFit, LoadArea};
use crate::slot_files::LoadedSlot;

/// Why the device tree for the kernel could not be made.
#[derive(Debug)]
pub enum DtbError {
    /// Neither the slot nor the boot loader gave a usable device tree.
    None,
    /// The tree does not parse, has no `/chosen`, or has no room.
    Edit(recovery_proto::dtb::DtbEditError),
    /// The DTB area is outside RAM.
    Placement(DoesNotFit),
    /// The tree's `/memory` describes no RAM (missing, or `reg` sizes all zero).
    NoMemory,
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(
                f,
                "no device tree: the slot has no dtb.dtb and the boot loader passed none"
            ),
            Self::Edit(error) => write!(f, "{error}"),
            Self::Placement(error) => write!(f, "{error}"),
            Self::NoMemory => write!(
                f,
                "the device tree's /memory describes no RAM (a stock DTB's reg = <0 0 0>, which \
                 the firmware fills in only for the DTB it loads itself)"
            ),
        }
    }
}

/// Completes the DTB at [`layout::DTB_ADDRESS`]: the slot's own, with the
/// firmware's fill-ins carried over from the boot loader's tree (`firmware`), or a
/// copy of the boot loader's tree; then `bootargs` and the initrd range.
/// Returns the DTB's address.
pub fn prepare_device_tree(
    area: &mut LoadArea,
    slot: &LoadedSlot,
    firmware: Option<Fdt<'static>>,
    bootargs: &str,
) -> Result<usize, DtbError> {
    let region = area
        .region("device tree", layout::DTB_ADDRESS, layout::DTB_CAPACITY)
        .map_err(DtbError::Placement)?;
    if slot.dtb_length.is_none() {
        let source = firmware.ok_or(DtbError::None)?.data();
        let Some(destination) = region.get_mut(..source.len()) else {
            return Err(DtbError::Placement(DoesNotFit {
                what: "device tree",
                start: layout::DTB_ADDRESS,
                length: source.len(),
                limit: layout::DTB_ADDRESS + layout::DTB_CAPACITY,
            }));
        };
        destination.copy_from_slice(source);
    } else if let Some(firmware) = firmware {
        // A slot's own tree: the firmware filled in only the tree it loaded itself
        // (recovery_proto::dtb::carry_firmware_facts; docs/disk-layout.md).
        let carried = recovery_proto::dtb::carry_firmware_facts(firmware.data(), region)
            .map_err(DtbError::Edit)?;
        log::info!("slot device tree: from the firmware's tree: {carried}");
    } else {
        log::warn!("slot device tree: the firmware passed no tree; nothing carried into it");
    }
    let initrd = slot.initrd.map(|(start, end)| (start as u64, end as u64));
    recovery_proto::dtb::set_chosen(region, bootargs, initrd).map_err(DtbError::Edit)?;
    // Linux would find no RAM in it and stop before its console is up.
    if !recovery_proto::dtb::describes_memory(region) {
        return Err(DtbError::NoMemory);
    }
    Ok(layout::DTB_ADDRESS)
}

/// Leaves zboot for the kernel. Nothing after this runs.
pub fn jump(slot: &LoadedSlot, dtb_address: usize, level: ExceptionLevel) -> ! {
    log::info!(
        "handing off: kernel at 0x{:x}, DTB at 0x{dtb_address:x}, EL{}",
        slot.kernel_entry,
        level.number()
    );
    crate::console::flush();
    arch::enter_kernel(slot.kernel_entry, dtb_address, level)
}
