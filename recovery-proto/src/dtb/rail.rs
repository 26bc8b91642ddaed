//! The eMMC I/O voltage rail, as the firmware's device tree describes it.
//!
//! On the CM4 and the Pi 4 the EMMC2 I/O rail (`VDD_SD_IO`) is switched between 3.3 V and
//! 1.8 V by line 4 of the GPIO expander the firmware owns. Linux finds it through the
//! tree: the EMMC2 node (`/emmc2bus/mmc@7e340000`, `bcm2711.dtsi`) has `vqmmc-supply`
//! pointing at `sd_io_1v8_reg`, a `regulator-gpio` (`bcm2711-rpi-cm4.dts`,
//! `bcm2711-rpi-4-b.dts`: `gpios = <&expgpio 4 GPIO_ACTIVE_HIGH>`, `states = <1800000 1>,
//! <3300000 0>`, `regulator-settling-time-us = <5000>`), whose controller is the
//! `raspberrypi,firmware-gpio` node. [`sd_io_rail`] reads the same chain and says which
//! expander line to drive, and to which level, for 3.3 V (bindings:
//! `regulator/gpio-regulator.yaml`, `gpio/gpio.txt` flag bit 0 = active low).

use core::fmt;

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};

/// The EMMC2 controller's node in `bcm2711.dtsi`.
const EMMC2: &str = "/emmc2bus/mmc@7e340000";
/// The microvolts of the 3.3 V state.
const MICROVOLTS_3V3: u32 = 3_300_000;
/// How deep zboot looks for the regulator's node.
const MAX_DEPTH: usize = 8;

/// How to put the rail at 3.3 V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRail {
    /// The firmware GPIO expander's line (0..8; the firmware calls it 128 + line).
    pub line: u32,
    /// The level to drive on that line for 3.3 V.
    pub high_for_3v3: bool,
    /// How long the rail takes to settle after a change, in microseconds
    /// (`regulator-settling-time-us`; 0 when the tree does not say).
    pub settling_us: u32,
}

/// Why the tree describes no rail zboot can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RailProblem {
    /// The tree does not parse.
    Invalid,
    /// No EMMC2 node, or it has no `vqmmc-supply`: a fixed rail (QEMU's trees, boards
    /// without the switch).
    NotDescribed,
    /// `vqmmc-supply` names no node.
    DanglingSupply { phandle: u32 },
    /// The supply is not a `regulator-gpio` on the firmware's expander (what is wrong).
    Unsupported(&'static str),
}

impl fmt::Display for RailProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => write!(f, "the firmware's device tree does not parse"),
            Self::NotDescribed => write!(
                f,
                "the firmware's tree gives {EMMC2} no vqmmc-supply (a fixed rail)"
            ),
            Self::DanglingSupply { phandle } => {
                write!(
                    f,
                    "{EMMC2} vqmmc-supply names phandle {phandle}, no such node"
                )
            }
            Self::Unsupported(why) => write!(f, "{EMMC2} vqmmc-supply: {why}"),
        }
    }
}

/// The rail of the firmware's tree `blob` (its header's `totalsize` long or longer).
pub fn sd_io_rail(blob: &[u8]) -> Result<IoRail, RailProblem> {
    let tree = Fdt::new(super::whole_tree(blob).ok_or(RailProblem::Invalid)?)
        .map_err(|_| RailProblem::Invalid)?;
    let emmc2 = tree.find_node(EMMC2).ok_or(RailProblem::NotDescribed)?;
    let supply = emmc2
        .property("vqmmc-supply")
        .ok_or(RailProblem::NotDescribed)?
        .value_as::<u32>()
        .map_err(|_| RailProblem::Unsupported("not one phandle"))?;
    let regulator = by_phandle(tree.root(), supply, 0)
        .ok_or(RailProblem::DanglingSupply { phandle: supply })?;
    if !compatible(regulator, "regulator-gpio") {
        return Err(RailProblem::Unsupported("not a regulator-gpio"));
    }
    let gpio = |index| cell_at(regulator, "gpios", index);
    let [Some(controller), Some(line), Some(flags)] = [0, 1, 2].map(gpio) else {
        return Err(RailProblem::Unsupported(
            "gpios is not one <controller line flags> entry",
        ));
    };
    if byte_length(regulator, "gpios") != 12 {
        return Err(RailProblem::Unsupported(
            "gpios is not one <controller line flags> entry",
        ));
    }
    let expander = by_phandle(tree.root(), controller, 0)
        .ok_or(RailProblem::Unsupported("its GPIO controller is missing"))?;
    if !compatible(expander, "raspberrypi,firmware-gpio") {
        return Err(RailProblem::Unsupported(
            "its GPIO is not on the firmware's expander",
        ));
    }
    if line >= 8 {
        return Err(RailProblem::Unsupported("the expander has 8 lines"));
    }
    let state = |index| cell_at(regulator, "states", index);
    let value = (0..byte_length(regulator, "states") / 8)
        .find(|&pair| state(2 * pair) == Some(MICROVOLTS_3V3))
        .and_then(|pair| state(2 * pair + 1))
        .ok_or(RailProblem::Unsupported("no 3300000 µV state"))?;
    let active_low = flags & 1 != 0;
    let settling_us = regulator
        .property("regulator-settling-time-us")
        .and_then(|p| p.value_as::<u32>().ok())
        .unwrap_or(0);
    Ok(IoRail {
        line,
        high_for_3v3: (value & 1 != 0) != active_low,
        settling_us,
    })
}

/// The length in bytes of a property's value, 0 when absent.
fn byte_length(node: FdtNode<'_>, name: &str) -> usize {
    node.property(name)
        .map_or(0, |property| property.value().len())
}

/// Cell `index` (big-endian u32) of a property's value.
fn cell_at(node: FdtNode<'_>, name: &str, index: usize) -> Option<u32> {
    let property = node.property(name)?;
    let bytes: [u8; 4] = property
        .value()
        .get(index * 4..index * 4 + 4)?
        .try_into()
        .ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn compatible(node: FdtNode<'_>, name: &str) -> bool {
    node.property("compatible").is_some_and(|property| {
        property
            .value()
            .split(|&byte| byte == 0)
            .any(|entry| entry == name.as_bytes())
    })
}

/// The node whose `phandle` is `phandle`, depth first under `node`.
fn by_phandle(node: FdtNode<'_>, phandle: u32, depth: usize) -> Option<FdtNode<'_>> {
    let own = node
        .property("phandle")
        .and_then(|p| p.value_as::<u32>().ok());
    if own == Some(phandle) {
        return Some(node);
    }
    if depth >= MAX_DEPTH {
        return None;
    }
    node.children()
        .find_map(|child| by_phandle(child, phandle, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtb::tests::compiled;

    /// The chain as `bcm2711-rpi-cm4.dts` has it, with `supply`, `gpios` and `states`
    /// replaceable.
    fn board(supply: &str, gpios: &str, states: &str, controller: &str) -> std::vec::Vec<u8> {
        compiled(&std::format!(
            "/dts-v1/;\n/ {{ #address-cells = <2>; #size-cells = <1>;\n\
             soc {{ firmware {{ expgpio: gpio {{ compatible = \"{controller}\"; \
             gpio-controller; #gpio-cells = <2>; }}; }}; }};\n\
             emmc2bus {{ #address-cells = <2>; #size-cells = <1>;\n\
             mmc@7e340000 {{ {supply} }}; }};\n\
             sd_io_1v8_reg: sd_io_1v8_reg {{ compatible = \"regulator-gpio\"; \
             regulator-settling-time-us = <5000>; gpios = {gpios}; states = {states}; }};\n}};"
        ))
    }

    const CM4_SUPPLY: &str = "vqmmc-supply = <&sd_io_1v8_reg>;";
    const CM4_GPIOS: &str = "<&expgpio 4 0>";
    const CM4_STATES: &str = "<1800000 0x1>, <3300000 0x0>";
    const FIRMWARE_GPIO: &str = "raspberrypi,firmware-gpio";

    #[test]
    fn the_cm4_rail_is_expander_line_4_low_for_3v3() {
        let tree = board(CM4_SUPPLY, CM4_GPIOS, CM4_STATES, FIRMWARE_GPIO);
        assert_eq!(
            sd_io_rail(&tree),
            Ok(IoRail {
                line: 4,
                high_for_3v3: false,
                settling_us: 5000
            })
        );
    }

    #[test]
    fn an_active_low_line_inverts_the_level() {
        let tree = board(CM4_SUPPLY, "<&expgpio 4 1>", CM4_STATES, FIRMWARE_GPIO);
        assert!(sd_io_rail(&tree).unwrap().high_for_3v3);
        let tree = board(
            CM4_SUPPLY,
            CM4_GPIOS,
            "<3300000 0x1>, <1800000 0x0>",
            FIRMWARE_GPIO,
        );
        assert!(sd_io_rail(&tree).unwrap().high_for_3v3);
    }

    #[test]
    fn what_zboot_cannot_drive_is_named() {
        let no_supply = board("", CM4_GPIOS, CM4_STATES, FIRMWARE_GPIO);
        assert_eq!(sd_io_rail(&no_supply), Err(RailProblem::NotDescribed));
        let dangling = board("vqmmc-supply = <77>;", CM4_GPIOS, CM4_STATES, FIRMWARE_GPIO);
        assert_eq!(
            sd_io_rail(&dangling),
            Err(RailProblem::DanglingSupply { phandle: 77 })
        );
        let soc_gpio = board(CM4_SUPPLY, CM4_GPIOS, CM4_STATES, "brcm,bcm2711-gpio");
        assert!(matches!(
            sd_io_rail(&soc_gpio),
            Err(RailProblem::Unsupported(why)) if why.contains("expander")
        ));
        let no_3v3 = board(CM4_SUPPLY, CM4_GPIOS, "<1800000 0x1>", FIRMWARE_GPIO);
        assert!(matches!(
            sd_io_rail(&no_3v3),
            Err(RailProblem::Unsupported(why)) if why.contains("3300000")
        ));
        let two_lines = board(
            CM4_SUPPLY,
            "<&expgpio 4 0>, <&expgpio 5 0>",
            CM4_STATES,
            FIRMWARE_GPIO,
        );
        assert!(matches!(
            sd_io_rail(&two_lines),
            Err(RailProblem::Unsupported(_))
        ));
        let line_9 = board(CM4_SUPPLY, "<&expgpio 9 0>", CM4_STATES, FIRMWARE_GPIO);
        assert!(matches!(
            sd_io_rail(&line_9),
            Err(RailProblem::Unsupported(_))
        ));
        assert_eq!(sd_io_rail(&[]), Err(RailProblem::Invalid));
        assert_eq!(sd_io_rail(&no_supply[..40]), Err(RailProblem::Invalid));
        let message = std::format!("{}", RailProblem::NotDescribed);
        assert!(message.contains("vqmmc-supply"), "{message}");
    }
}
