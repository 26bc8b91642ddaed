//! Device-tree edits for the hand-off: `/chosen/bootargs` and the initrd range.
//!
//! Linux `Documentation/arch/arm64/booting.rst` passes the command line and
//! the initrd in `/chosen` (`bootargs`, `linux,initrd-start`,
//! `linux,initrd-end`). The tree comes from the firmware or from a slot, so
//! it is untrusted input: every failure is an error, never a panic.

use core::fmt;

use dtoolkit::fdt_mut::FdtMut;
use dtoolkit::{Node, Property};

mod carry;
mod rail;
pub use carry::{Carried, carry_firmware_facts};
pub use rail::{IoRail, RailProblem, sd_io_rail};

/// Why `/chosen` could not be set.
#[derive(Debug)]
pub enum DtbEditError {
    /// The blob does not parse as a flattened device tree.
    Invalid(dtoolkit::error::FdtParseError),
    /// The tree has no `/chosen` node for the command line.
    NoChosen,
    /// The properties do not fit in the blob's buffer.
    NoRoom(dtoolkit::error::FdtMutError),
    /// Read back, `/chosen/bootargs` is not what was written.
    NotWritten,
    /// The strings block is not a run of NUL-terminated UTF-8 strings (at this offset of
    /// the blob).
    BadStrings { at: usize },
    /// The blocks are not structure then strings inside `totalsize`, as dtc writes them.
    Layout,
    /// The structure block's tokens are broken (at this offset of the blob).
    Structure { at: usize },
    /// A node added to the tree does not fit in the blob's buffer.
    Full,
}

impl fmt::Display for DtbEditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(error) => write!(f, "malformed device tree: {error}"),
            Self::NoChosen => write!(f, "the device tree has no /chosen node"),
            Self::NoRoom(error) => write!(f, "cannot edit /chosen: {error}"),
            Self::NotWritten => write!(f, "/chosen/bootargs reads back differently"),
            Self::Layout => write!(
                f,
                "malformed device tree: the structure and strings blocks are not in dtc's order \
                 inside the blob"
            ),
            Self::Structure { at } => {
                write!(f, "malformed device tree: bad structure token at byte {at}")
            }
            Self::Full => write!(f, "the device tree's buffer has no room for a new node"),
            Self::BadStrings { at } => write!(
                f,
                "malformed device tree: the strings block holds no string at byte {at}"
            ),
        }
    }
}

/// Sets `/chosen/bootargs` to `bootargs` and the initrd range (`start`,
/// `end`) or removes it, in the device tree at the start of `buffer` (the
/// rest of `buffer` is room to grow), and reads the command line back.
pub fn set_chosen(
    buffer: &mut [u8],
    bootargs: &str,
    initrd: Option<(u64, u64)>,
) -> Result<(), DtbEditError> {
    check_layout(buffer)?;
    let mut fdt = FdtMut::from_slice(buffer).map_err(DtbEditError::Invalid)?;
    let mut chosen = fdt.find_node_mut("/chosen").ok_or(DtbEditError::NoChosen)?;
    chosen.remove_property("bootargs");
    chosen
        .add_property("bootargs", bootargs)
        .map_err(DtbEditError::NoRoom)?;
    chosen.remove_property("linux,initrd-start");
    chosen.remove_property("linux,initrd-end");
    if let Some((start, end)) = initrd {
        chosen
            .add_property("linux,initrd-start", start)
            .map_err(DtbEditError::NoRoom)?;
        chosen
            .add_property("linux,initrd-end", end)
            .map_err(DtbEditError::NoRoom)?;
    }
    // Read back what the kernel will see.
    let check = fdt.as_read_only();
    let written = check.find_node("/chosen").and_then(|node| {
        node.property("bootargs")
            .and_then(|p| p.value_as::<&str>().ok())
    });
    if written == Some(bootargs) {
        Ok(())
    } else {
        Err(DtbEditError::NotWritten)
    }
}

/// The big-endian header word at byte `at` of a blob (Devicetree Specification v0.4
/// §5.2: `totalsize` at 4, `off_dt_struct` 8, `off_dt_strings` 12, `off_mem_rsvmap` 16,
/// `size_dt_strings` 32, `size_dt_struct` 36).
fn header_word(blob: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = blob.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

/// The tree at the start of `region`, its header's `totalsize` long; `None` when the
/// header is cut short or `totalsize` runs past `region`.
fn whole_tree(region: &[u8]) -> Option<&[u8]> {
    region.get(..header_word(region, 4)?)
}

/// Checks the layout dtoolkit 0.4's edits assume and its parse does not check
/// (Devicetree Specification v0.4 §5.2, header fields big-endian: `totalsize` at byte 4,
/// `off_dt_struct` 8, `off_dt_strings` 12, `size_dt_strings` 32, `size_dt_struct` 36):
/// the structure block, then the strings block, both inside `totalsize`, and the strings
/// block only NUL-terminated UTF-8 strings. dtc lays every blob out this way. The edits
/// scan the whole strings block and grow the structure block into the strings block's
/// place, and panic (or assert) otherwise: found by the `dtb_edit` fuzz target.
fn check_layout(blob: &[u8]) -> Result<(), DtbEditError> {
    let field = |at: usize| header_word(blob, at);
    let (Some(total), Some(off_struct), Some(off_strings), Some(size_strings), Some(size_struct)) =
        (field(4), field(8), field(12), field(32), field(36))
    else {
        // Too short for a header: the parse reports it.
        return Ok(());
    };
    let struct_end = off_struct.checked_add(size_struct);
    let strings_end = off_strings.checked_add(size_strings);
    let in_order = matches!((struct_end, strings_end),
        (Some(struct_end), Some(strings_end))
            if struct_end <= off_strings && strings_end <= total && total <= blob.len());
    if !in_order {
        return Err(DtbEditError::Layout);
    }
    check_structure(blob, off_struct, off_struct + size_struct, size_strings)?;
    let block = blob
        .get(off_strings..off_strings + size_strings)
        .unwrap_or_default();
    let mut at = 0;
    while at < block.len() {
        let rest = block.get(at..).unwrap_or_default();
        let Some(length) = rest.iter().position(|&byte| byte == 0) else {
            return Err(DtbEditError::BadStrings {
                at: off_strings + at,
            });
        };
        if core::str::from_utf8(rest.get(..length).unwrap_or_default()).is_err() {
            return Err(DtbEditError::BadStrings {
                at: off_strings + at,
            });
        }
        at += length + 1;
    }
    Ok(())
}

/// Walks the structure block token by token (Devicetree Specification v0.4 §5.4:
/// `FDT_BEGIN_NODE` 1 + NUL-terminated name, `FDT_END_NODE` 2, `FDT_PROP` 3 + length +
/// name offset + value, `FDT_NOP` 4, `FDT_END` 9, each padded to 4 bytes): the nodes
/// nest, every token lies inside the block, every property name is inside the strings
/// block, and `FDT_END` closes the root. dtoolkit's edits compute offsets from these
/// tokens and assume they stay inside the block's declared size.
fn check_structure(
    blob: &[u8],
    start: usize,
    end: usize,
    size_strings: usize,
) -> Result<(), DtbEditError> {
    let word = |at: usize| -> Result<u32, DtbEditError> {
        if at.checked_add(4).is_none_or(|next| next > end) {
            return Err(DtbEditError::Structure { at });
        }
        let bytes: [u8; 4] = blob
            .get(at..at + 4)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(DtbEditError::Structure { at })?;
        Ok(u32::from_be_bytes(bytes))
    };
    let padded = |length: usize| length.checked_add(3).map(|length| length & !3);
    let mut at = start;
    let mut depth = 0usize;
    let mut seen_root = false;
    loop {
        let token = word(at)?;
        let next = at + 4;
        at = match token {
            1 => {
                if depth == 0 && seen_root {
                    return Err(DtbEditError::Structure { at });
                }
                seen_root = true;
                depth += 1;
                let name = blob.get(next..end).unwrap_or_default();
                let length = name
                    .iter()
                    .position(|&byte| byte == 0)
                    .ok_or(DtbEditError::Structure { at })?;
                next + padded(length + 1).ok_or(DtbEditError::Structure { at })?
            }
            2 => {
                depth = depth.checked_sub(1).ok_or(DtbEditError::Structure { at })?;
                next
            }
            3 => {
                let length =
                    usize::try_from(word(next)?).map_err(|_| DtbEditError::Structure { at })?;
                let name =
                    usize::try_from(word(next + 4)?).map_err(|_| DtbEditError::Structure { at })?;
                if depth == 0 || name >= size_strings {
                    return Err(DtbEditError::Structure { at });
                }
                padded(length)
                    .and_then(|length| (next + 8).checked_add(length))
                    .filter(|&after| after <= end)
                    .ok_or(DtbEditError::Structure { at })?
            }
            4 => next,
            9 if depth == 0 && seen_root => return Ok(()),
            _ => return Err(DtbEditError::Structure { at }),
        };
    }
}

/// Whether the device tree at the start of `region` (its header's `totalsize` long)
/// describes some RAM: a `/memory` node (`memory@…` too) whose `reg` has a non-zero size.
/// Stock Raspberry Pi DTBs carry `memory@0 { reg = <0 0 0>; }` and rely on the firmware to
/// fill it in, which it does only for the tree it loads itself; Linux booted with such a
/// tree finds no RAM. A tree that does not parse describes none.
#[must_use]
pub fn describes_memory(region: &[u8]) -> bool {
    let Some(tree) = whole_tree(region) else {
        return false;
    };
    let Ok(fdt) = dtoolkit::fdt::Fdt::new(tree) else {
        return false;
    };
    let Ok(memory) = fdt.memory() else {
        return false;
    };
    let Ok(Some(mut regs)) = (*memory).reg() else {
        return false;
    };
    regs.any(|reg| reg.size::<u64>().is_ok_and(|size| size > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What dtc makes of `input` converted from format `from` to `to` ("dts", "dtb").
    pub(super) fn dtc(from: &str, to: &str, input: &[u8]) -> std::vec::Vec<u8> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("dtc")
            .args(["-q", "-I", from, "-O", to])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("dtc (scripts/setup installs it)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "dtc refuses the {from} input");
        out.stdout
    }

    /// dtc's blob of `source`, padded as a DTB area is.
    pub(super) fn compiled(source: &str) -> std::vec::Vec<u8> {
        let mut blob = dtc("dts", "dtb", source.as_bytes());
        blob.resize(blob.len() + 4096, 0);
        blob
    }

    #[test]
    fn a_tree_describes_memory_only_with_a_non_zero_reg() {
        let with = |memory: &str| {
            std::format!(
                "/dts-v1/;\n/ {{ #address-cells = <2>; #size-cells = <1>; chosen {{ }}; {memory} }};"
            )
        };
        let filled = compiled(&with(
            "memory@0 { device_type = \"memory\"; reg = <0 0 0x3c000000>; };",
        ));
        assert!(describes_memory(&filled));
        let empty = compiled(&with(
            "memory@0 { device_type = \"memory\"; reg = <0 0 0>; };",
        ));
        assert!(!describes_memory(&empty), "the stock DTB's reg = <0 0 0>");
        assert!(!describes_memory(&compiled(&with(""))), "no /memory");
        assert!(
            !describes_memory(&filled[..filled.len() / 2 - 2048]),
            "cut short"
        );
        assert!(!describes_memory(&[]));
    }

    /// A tree with `/chosen` whose strings block is `names` (dtc's layout: header, the
    /// memory reservation terminator, the structure block, then the strings).
    fn tree(names: &[u8]) -> std::vec::Vec<u8> {
        let mut structure = std::vec::Vec::new();
        let word =
            |out: &mut std::vec::Vec<u8>, value: u32| out.extend_from_slice(&value.to_be_bytes());
        word(&mut structure, 1); // FDT_BEGIN_NODE ""
        word(&mut structure, 0);
        word(&mut structure, 1); // FDT_BEGIN_NODE "chosen"
        structure.extend_from_slice(b"chosen\0\0");
        word(&mut structure, 2); // FDT_END_NODE
        word(&mut structure, 2);
        word(&mut structure, 9); // FDT_END
        let off_rsv = 40;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + structure.len();
        let total = off_strings + names.len();
        let mut blob = std::vec::Vec::new();
        for value in [
            0xd00d_feed,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            names.len(),
            structure.len(),
        ] {
            word(&mut blob, value as u32);
        }
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&structure);
        blob.extend_from_slice(names);
        blob
    }

    #[test]
    fn bootargs_and_initrd_are_set() {
        let mut buffer = tree(b"model\0");
        buffer.resize(buffer.len() + 512, 0);
        set_chosen(&mut buffer, "console=ttyAMA0", Some((0x100, 0x200))).unwrap();
        set_chosen(&mut buffer, "quiet", None).unwrap();
    }

    #[test]
    fn a_strings_block_without_its_last_nul_is_an_error_not_a_panic() {
        let mut buffer = tree(b"model\0compat");
        buffer.resize(buffer.len() + 512, 0);
        assert!(matches!(
            set_chosen(&mut buffer, "console=ttyAMA0", None),
            Err(DtbEditError::BadStrings { .. })
        ));
        let mut buffer = tree(b"mo\xffdel\0");
        buffer.resize(buffer.len() + 512, 0);
        assert!(matches!(
            set_chosen(&mut buffer, "console=ttyAMA0", None),
            Err(DtbEditError::BadStrings { .. })
        ));
    }
}
