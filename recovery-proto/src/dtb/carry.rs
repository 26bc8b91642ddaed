//! The firmware's fill-ins, carried into a slot's own device tree.
//!
//! The Raspberry Pi firmware completes the device tree it loads before it starts the
//! kernel (here zboot): the RAM in `/memory`, the DMA windows of `/emmc2bus` and the PCIe
//! bridge for the chip stepping, the Ethernet MAC, the board serial and revision, the
//! random seeds, and the `/chosen` parameters and `/chosen/bootloader` node that the
//! Raspberry Pi documentation lists ("Device Trees, overlays, and parameters", section
//! "Firmware parameters"). A stock DTB shipped in a slot carries placeholders instead
//! (`memory@0 { reg = <0 0 0>; }`, `linux,serial = <0 0>`), and Linux booted with it as
//! it is finds no RAM. [`carry_firmware_facts`] copies each fill-in from the tree the
//! firmware gave zboot into the slot's tree.
//!
//! The rules (docs/disk-layout.md, "A slot's own device tree"):
//! - a property is copied only into a node the slot tree already has, at the same path
//!   (the Ethernet node through the `ethernet0` alias of each tree); the one node created
//!   when missing is `/chosen/bootloader`, which only the firmware writes;
//! - `reg` and `dma-ranges` are raw cells, so they are copied only when the node and its
//!   parent use the same `#address-cells` and `#size-cells` in both trees;
//! - what the firmware's tree does not have is left as the slot tree has it.
//!
//! Overlays (`dtoverlay=`, `dtparam=`) are not carried: the firmware applies them to its
//! own tree, and their effects are edits anywhere in it. A slot tree is used with its
//! overlays already applied (`fdtoverlay` when the image is built).

use core::fmt;

use dtoolkit::fdt::Fdt;
use dtoolkit::fdt_mut::FdtMut;
use dtoolkit::{Node, Property};

use super::{DtbEditError, header_word, whole_tree};

/// Where a fill-in lives: a path, or a path named by an alias of each tree.
#[derive(Clone, Copy)]
enum At {
    Path(&'static str),
    Alias(&'static str),
}

/// One property the firmware fills in.
struct Fact {
    node: At,
    property: &'static str,
    /// Raw address and size cells, valid only under the same `#address-cells` and
    /// `#size-cells`.
    cells: bool,
    /// `node/property`, for reports.
    label: &'static str,
}

const fn fact(node: At, property: &'static str, cells: bool, label: &'static str) -> Fact {
    Fact {
        node,
        property,
        cells,
        label,
    }
}

/// The properties the firmware fills in (the Raspberry Pi documentation's "Firmware
/// parameters"; `bcm2711.dtsi` for `/emmc2bus` and the PCIe node, whose `dma-ranges` the
/// firmware rewrites on the C0 stepping; `bcm270x-rpi.dtsi` for `/system`).
const FACTS: &[Fact] = &[
    fact(At::Path("/memory"), "reg", true, "/memory/reg"),
    fact(
        At::Path("/emmc2bus"),
        "dma-ranges",
        true,
        "/emmc2bus/dma-ranges",
    ),
    fact(
        At::Path("/scb/pcie@7d500000"),
        "dma-ranges",
        true,
        "/scb/pcie@7d500000/dma-ranges",
    ),
    fact(
        At::Alias("ethernet0"),
        "local-mac-address",
        false,
        "ethernet0/local-mac-address",
    ),
    fact(At::Path("/"), "serial-number", false, "/serial-number"),
    fact(
        At::Path("/system"),
        "linux,serial",
        false,
        "/system/linux,serial",
    ),
    fact(
        At::Path("/system"),
        "linux,revision",
        false,
        "/system/linux,revision",
    ),
    fact(
        At::Path("/chosen"),
        "kaslr-seed",
        false,
        "/chosen/kaslr-seed",
    ),
    fact(At::Path("/chosen"), "rng-seed", false, "/chosen/rng-seed"),
    fact(
        At::Path("/chosen"),
        "overlay_prefix",
        false,
        "/chosen/overlay_prefix",
    ),
    fact(At::Path("/chosen"), "os_prefix", false, "/chosen/os_prefix"),
    fact(
        At::Path("/chosen"),
        "rpi-boardrev-ext",
        false,
        "/chosen/rpi-boardrev-ext",
    ),
    fact(
        At::Path("/chosen"),
        "rpi-country-code",
        false,
        "/chosen/rpi-country-code",
    ),
];

/// The node the firmware writes whole, created in the slot tree when missing.
const BOOTLOADER_PARENT: &str = "/chosen";
const BOOTLOADER_NAME: &str = "bootloader";
const BOOTLOADER: &str = "/chosen/bootloader";

/// The longest node path zboot resolves from an alias.
const PATH_CAPACITY: usize = 128;

/// What [`carry_firmware_facts`] did.
#[derive(Debug, Default)]
pub struct Carried {
    /// Properties copied.
    pub copied: usize,
    /// Whether `/chosen/bootloader` was created in the slot tree.
    pub created_bootloader: bool,
    /// Fill-ins the firmware has but the slot tree has no node for (`node/property`).
    pub no_node: heapless::Vec<&'static str, 16>,
    /// Fill-ins not copied because the trees' cell sizes differ.
    pub cells_differ: heapless::Vec<&'static str, 8>,
}

impl fmt::Display for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} properties copied", self.copied)?;
        if self.created_bootloader {
            write!(f, ", {BOOTLOADER} created")?;
        }
        for (label, list) in [
            ("no node in the slot tree for", &self.no_node[..]),
            ("cell sizes differ for", &self.cells_differ[..]),
        ] {
            if let Some((first, rest)) = list.split_first() {
                write!(f, "; {label} {first}")?;
                for item in rest {
                    write!(f, ", {item}")?;
                }
            }
        }
        Ok(())
    }
}

/// Copies the firmware's fill-ins from `firmware` (a whole blob) into the slot's tree at
/// the start of `slot` (the rest of `slot` is room to grow). See the module comment for
/// the rules. The slot tree is checked as [`super::set_chosen`] checks it; the firmware's
/// tree only has to parse.
pub fn carry_firmware_facts(firmware: &[u8], slot: &mut [u8]) -> Result<Carried, DtbEditError> {
    super::check_layout(slot)?;
    let source = parse(firmware)?;
    parse(slot)?;
    let mut carried = Carried::default();

    for fact in FACTS {
        let Some(from_path) = resolve(source, fact.node) else {
            continue;
        };
        let Some(node) = source.find_node(&from_path) else {
            continue;
        };
        let Some(property) = node.property(fact.property) else {
            continue;
        };
        let value = property.value();
        let to_path = {
            let slot_tree = parse(slot)?;
            match resolve(slot_tree, fact.node) {
                Some(path) if slot_tree.find_node(&path).is_some() => {
                    if fact.cells && !same_cells(source, &from_path, slot_tree, &path) {
                        let _ = carried.cells_differ.push(fact.label);
                        continue;
                    }
                    path
                }
                _ => {
                    let _ = carried.no_node.push(fact.label);
                    continue;
                }
            }
        };
        replace(slot, &to_path, fact.property, value)?;
        carried.copied += 1;
    }

    if let Some(bootloader) = source.find_node(BOOTLOADER) {
        let slot_tree = parse(slot)?;
        if slot_tree.find_node(BOOTLOADER_PARENT).is_some() {
            if slot_tree.find_node(BOOTLOADER).is_none() {
                insert_node(slot, BOOTLOADER_PARENT, BOOTLOADER_NAME)?;
                carried.created_bootloader = true;
            }
            for property in bootloader.properties() {
                replace(slot, BOOTLOADER, property.name(), property.value())?;
                carried.copied += 1;
            }
        } else {
            let _ = carried.no_node.push(BOOTLOADER);
        }
    }
    Ok(carried)
}

/// The tree at the start of `blob`, its header's `totalsize` long.
fn parse(blob: &[u8]) -> Result<Fdt<'_>, DtbEditError> {
    Fdt::new(whole_tree(blob).unwrap_or(blob)).map_err(DtbEditError::Invalid)
}

/// The path of `at` in `tree`: the path itself, or the alias's value.
fn resolve(tree: Fdt<'_>, at: At) -> Option<heapless::String<PATH_CAPACITY>> {
    let path = match at {
        At::Path(path) => path,
        At::Alias(alias) => tree
            .find_node("/aliases")?
            .property(alias)?
            .value_as::<&str>()
            .ok()?,
    };
    if !path.starts_with('/') {
        return None;
    }
    heapless::String::try_from(path).ok()
}

/// A node's `#address-cells` and `#size-cells` (Devicetree Specification v0.4 §2.3.5:
/// 2 and 1 when absent).
fn cells_of(tree: Fdt<'_>, path: &str) -> Option<(u32, u32)> {
    let node = tree.find_node(path)?;
    let read = |name: &str, default: u32| {
        node.property(name)
            .map_or(Some(default), |p| p.value_as::<u32>().ok())
    };
    Some((read("#address-cells", 2)?, read("#size-cells", 1)?))
}

/// Whether the node at each path and its parent use the same cell sizes in both trees.
fn same_cells(a: Fdt<'_>, a_path: &str, b: Fdt<'_>, b_path: &str) -> bool {
    let parent = |path: &str| -> heapless::String<PATH_CAPACITY> {
        let cut = path.rfind('/').unwrap_or(0);
        let parent = path
            .get(..cut)
            .filter(|parent| !parent.is_empty())
            .unwrap_or("/");
        heapless::String::try_from(parent).unwrap_or_default()
    };
    let both = |a_at: &str, b_at: &str| matches!((cells_of(a, a_at), cells_of(b, b_at)), (Some(x), Some(y)) if x == y);
    both(a_path, b_path) && both(&parent(a_path), &parent(b_path))
}

/// Sets `property` of the node at `path` in the slot tree to `value`.
fn replace(slot: &mut [u8], path: &str, property: &str, value: &[u8]) -> Result<(), DtbEditError> {
    let mut fdt = FdtMut::from_slice(slot).map_err(DtbEditError::Invalid)?;
    let mut node = fdt.find_node_mut(path).ok_or(DtbEditError::NotWritten)?;
    node.remove_property(property);
    node.add_property(property, value)
        .map_err(DtbEditError::NoRoom)?;
    Ok(())
}

fn set_header_word(blob: &mut [u8], at: usize, value: usize) -> Result<(), DtbEditError> {
    let value = u32::try_from(value).map_err(|_| DtbEditError::Layout)?;
    blob.get_mut(at..at + 4)
        .ok_or(DtbEditError::Layout)?
        .copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Adds an empty child `name` as the last child of the node at `parent` (each path
/// component matched by its full name, or without the unit address when the component
/// has none), in a blob laid out as [`super::check_layout`] accepts: the structure block
/// grows in place and the strings block moves up (Devicetree Specification v0.4 §5.4).
fn insert_node(blob: &mut [u8], parent: &str, name: &str) -> Result<(), DtbEditError> {
    let field = |at| header_word(blob, at).ok_or(DtbEditError::Layout);
    let (total, off_struct, off_strings, off_reserved, size_struct) =
        (field(4)?, field(8)?, field(12)?, field(16)?, field(36)?);
    if off_reserved > off_struct {
        return Err(DtbEditError::Layout);
    }
    let at = node_end(blob, off_struct, off_struct + size_struct, parent)
        .ok_or(DtbEditError::NoChosen)?;
    let padded_name = (name.len() + 1 + 3) & !3;
    let grow = 4 + padded_name + 4;
    if total + grow > blob.len() {
        return Err(DtbEditError::Full);
    }
    let mut node: heapless::Vec<u8, 72> = heapless::Vec::new();
    let mut push = |bytes: &[u8]| {
        node.extend_from_slice(bytes)
            .map_err(|_| DtbEditError::Full)
    };
    push(&1u32.to_be_bytes())?;
    push(name.as_bytes())?;
    push([0; 4].get(..padded_name - name.len()).unwrap_or_default())?;
    push(&2u32.to_be_bytes())?;
    blob.copy_within(at..total, at + grow);
    blob.get_mut(at..at + grow)
        .ok_or(DtbEditError::Full)?
        .copy_from_slice(&node);
    set_header_word(blob, 4, total + grow)?;
    set_header_word(blob, 12, off_strings + grow)?;
    set_header_word(blob, 36, size_struct + grow)?;
    Ok(())
}

/// The offset of the `FDT_END_NODE` token that closes the node at `path`, walking the
/// structure block between `start` and `end` (already checked by `check_structure`).
fn node_end(blob: &[u8], start: usize, end: usize, path: &str) -> Option<usize> {
    let components: heapless::Vec<&str, 8> = path.split('/').filter(|c| !c.is_empty()).collect();
    let matches = |want: &str, name: &str| {
        if want.contains('@') {
            want == name
        } else {
            name.split('@').next() == Some(want)
        }
    };
    let word = |at: usize| -> Option<u32> {
        let bytes: [u8; 4] = blob.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    };
    // The root is at depth 1; component i is matched at depth i + 2.
    let target = components.len() + 1;
    let mut depth = 0;
    let mut found = 0;
    let mut at = start;
    while at < end {
        let next = at + 4;
        match word(at)? {
            1 => {
                depth += 1;
                let rest = blob.get(next..end)?;
                let length = rest.iter().position(|&byte| byte == 0)?;
                let name = core::str::from_utf8(rest.get(..length)?).ok()?;
                if depth == 1 {
                    found = 1;
                } else if found == depth - 1
                    && components
                        .get(depth - 2)
                        .is_some_and(|want| matches(want, name))
                {
                    found = depth;
                }
                at = next + ((length + 1 + 3) & !3);
            }
            2 => {
                if depth == found {
                    if found == target {
                        return Some(at);
                    }
                    found -= 1;
                }
                depth = depth.checked_sub(1)?;
                at = next;
            }
            3 => {
                let length = usize::try_from(word(next)?).ok()?;
                at = next + 8 + ((length + 3) & !3);
            }
            4 => at = next,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtb::tests::{compiled, dtc};

    /// A tree shaped like the one the firmware hands a CM4 kernel, filled in.
    const FIRMWARE: &str = r#"/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <1>;
    model = "firmware";
    serial-number = "10000000abcdef01";
    aliases { ethernet0 = "/scb/ethernet@7d580000"; };
    chosen {
        bootargs = "coherent_pool=1M 8250.nr_uarts=1";
        kaslr-seed = <0x11111111 0x22222222>;
        rng-seed = [01 02 03 04 05 06 07 08];
        os_prefix = "";
        bootloader {
            build-timestamp = <0x65a0b1c2>;
            boot-mode = <1>;
            partition = <0>;
        };
    };
    memory@0 { device_type = "memory"; reg = <0 0 0x3b400000 0 0x40000000 0xbc000000>; };
    emmc2bus { #address-cells = <2>; #size-cells = <1>; dma-ranges = <0 0xc0000000 0 0 0xfc000000>; };
    scb {
        #address-cells = <2>; #size-cells = <2>;
        pcie@7d500000 { #address-cells = <3>; #size-cells = <2>;
            dma-ranges = <0x02000000 0x0 0x0 0x0 0x0 0x1 0x0>; };
        ethernet@7d580000 { local-mac-address = [dc a6 32 01 02 03]; };
    };
    system { linux,serial = <0x10000000 0xabcdef01>; linux,revision = <0xb03141>; };
};
"#;

    /// A stock DTB as a distribution ships it: placeholders where the firmware fills in.
    const STOCK: &str = r#"/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <1>;
    model = "slot";
    aliases { ethernet0 = "/scb/ethernet@7d580000"; serial0 = "/soc/serial@7e201000"; };
    chosen { stdout-path = "serial0:115200n8"; };
    memory@0 { device_type = "memory"; reg = <0 0 0>; };
    emmc2bus { #address-cells = <2>; #size-cells = <1>; dma-ranges = <0 0xc0000000 0 0 0x40000000>;
        mmc@7e340000 { status = "okay"; }; };
    scb {
        #address-cells = <2>; #size-cells = <2>;
        pcie@7d500000 { #address-cells = <3>; #size-cells = <2>;
            dma-ranges = <0x02000000 0x0 0x0 0x0 0x0 0x0 0xc0000000>; };
        ethernet@7d580000 { local-mac-address = [00 00 00 00 00 00]; phy-mode = "rgmii-rxid"; };
    };
    system { linux,serial = <0 0>; linux,revision = <0>; };
    soc { serial@7e201000 { status = "okay"; }; };
};
"#;

    fn value(blob: &[u8], path: &str, property: &str) -> Option<std::vec::Vec<u8>> {
        let tree = parse(blob).unwrap();
        let node = tree.find_node(path)?;
        let property = node.property(property)?;
        Some(property.value().to_vec())
    }

    /// dtc's reading of the blob as source: a standard tool accepts the result.
    fn decompiled(blob: &[u8]) -> std::string::String {
        std::string::String::from_utf8(dtc("dtb", "dts", whole_tree(blob).unwrap())).unwrap()
    }

    #[test]
    fn a_stock_tree_receives_every_fill_in() {
        let firmware = compiled(FIRMWARE);
        let mut slot = compiled(STOCK);
        let carried = carry_firmware_facts(&firmware, &mut slot).unwrap();
        assert!(carried.created_bootloader);
        assert!(carried.no_node.is_empty(), "{carried}");
        assert!(carried.cells_differ.is_empty(), "{carried}");
        // memory, emmc2bus, pcie, mac, serial-number, 2 × system, kaslr, rng, os_prefix,
        // and the three bootloader properties.
        assert_eq!(carried.copied, 13, "{carried}");
        for (path, property) in [
            ("/memory", "reg"),
            ("/emmc2bus", "dma-ranges"),
            ("/scb/pcie@7d500000", "dma-ranges"),
            ("/scb/ethernet@7d580000", "local-mac-address"),
            ("/", "serial-number"),
            ("/system", "linux,serial"),
            ("/system", "linux,revision"),
            ("/chosen", "kaslr-seed"),
            ("/chosen", "rng-seed"),
            ("/chosen", "os_prefix"),
            ("/chosen/bootloader", "build-timestamp"),
            ("/chosen/bootloader", "boot-mode"),
        ] {
            assert_eq!(
                value(&slot, path, property),
                value(&firmware, path, property),
                "{path} {property}"
            );
        }
        // The slot's own properties stay, the firmware's bootargs are not carried here.
        assert_eq!(value(&slot, "/", "model"), Some(b"slot\0".to_vec()));
        assert_eq!(value(&slot, "/chosen", "bootargs"), None);
        assert!(value(&slot, "/chosen", "stdout-path").is_some());
        assert!(value(&slot, "/scb/ethernet@7d580000", "phy-mode").is_some());
        assert!(crate::dtb::describes_memory(&slot));
        let source = decompiled(&slot);
        assert!(source.contains("bootloader {"), "{source}");
        // Then `/chosen` is set as for any tree.
        crate::dtb::set_chosen(&mut slot, "console=ttyS0", Some((0x100, 0x200))).unwrap();
        decompiled(&slot);
    }

    #[test]
    fn carrying_twice_changes_nothing_more() {
        let firmware = compiled(FIRMWARE);
        let mut slot = compiled(STOCK);
        carry_firmware_facts(&firmware, &mut slot).unwrap();
        let once = slot.clone();
        let carried = carry_firmware_facts(&firmware, &mut slot).unwrap();
        assert!(!carried.created_bootloader, "one /chosen/bootloader only");
        assert_eq!(decompiled(&once), decompiled(&slot));
    }

    #[test]
    fn raw_cells_are_not_copied_across_different_cell_sizes() {
        let firmware = compiled(FIRMWARE);
        let mut slot = compiled(
            &STOCK
                .replacen("#size-cells = <1>;", "#size-cells = <2>;", 1)
                .replace("reg = <0 0 0>", "reg = <0 0 0 0>"),
        );
        let carried = carry_firmware_facts(&firmware, &mut slot).unwrap();
        assert_eq!(
            &carried.cells_differ[..],
            ["/memory/reg", "/emmc2bus/dma-ranges"],
            "the root's cells differ, and /emmc2bus is under the root"
        );
        assert_eq!(value(&slot, "/memory", "reg"), Some([0u8; 16].to_vec()));
        assert!(
            !crate::dtb::describes_memory(&slot),
            "refused later, as before"
        );
        assert!(std::format!("{carried}").contains("cell sizes differ for /memory/reg"));
    }

    #[test]
    fn fill_ins_without_a_node_are_named() {
        let firmware = compiled(FIRMWARE);
        let mut slot = compiled(
            "/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <1>; chosen { }; \
             memory@0 { device_type = \"memory\"; reg = <0 0 0>; }; };",
        );
        let carried = carry_firmware_facts(&firmware, &mut slot).unwrap();
        assert_eq!(
            &carried.no_node[..],
            [
                "/emmc2bus/dma-ranges",
                "/scb/pcie@7d500000/dma-ranges",
                "ethernet0/local-mac-address",
                "/system/linux,serial",
                "/system/linux,revision",
            ]
        );
        assert!(crate::dtb::describes_memory(&slot));
        decompiled(&slot);
    }

    #[test]
    fn a_tree_without_chosen_gets_no_bootloader_node() {
        let firmware = compiled(FIRMWARE);
        let mut slot = compiled(
            "/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <1>; \
             memory@0 { device_type = \"memory\"; reg = <0 0 0>; }; };",
        );
        let carried = carry_firmware_facts(&firmware, &mut slot).unwrap();
        assert!(carried.no_node.contains(&"/chosen/bootloader"), "{carried}");
        assert!(carried.no_node.contains(&"/chosen/kaslr-seed"), "{carried}");
    }

    #[test]
    fn no_room_is_an_error_not_a_panic() {
        let firmware = compiled(FIRMWARE);
        let mut slot = compiled(STOCK);
        let total = header_word(&slot, 4).unwrap();
        for room in [0, 8, 24, 64] {
            let mut tight = slot[..total + room].to_vec();
            assert!(
                carry_firmware_facts(&firmware, &mut tight).is_err(),
                "{room}"
            );
        }
        carry_firmware_facts(&firmware, &mut slot).unwrap();
    }

    #[test]
    fn nodes_are_found_with_and_without_unit_addresses() {
        let blob = compiled(STOCK);
        let start = header_word(&blob, 8).unwrap();
        let end = start + header_word(&blob, 36).unwrap();
        let end_of = |path| node_end(&blob, start, end, path);
        assert_eq!(end_of("/memory"), end_of("/memory@0"));
        assert!(end_of("/memory@1").is_none());
        assert!(end_of("/scb/pcie").is_some());
        assert!(end_of("/soc/serial@7e201000").is_some());
        assert!(end_of("/pcie@7d500000").is_none(), "not at the root");
        assert!(end_of("/").unwrap() < end);
    }
}
