//! The device tree the boot loader passed in x0: validated before any use.

use core::fmt;

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};
use hal_bcm2711::emmc2::DmaWindow;
use hal_bcm2711::emmc2::adma::DmaRangesError;

use crate::arch;

/// FDT header magic (Devicetree Specification v0.4, 5.2 "Header").
const FDT_MAGIC: u32 = 0xd00d_feed;
/// The size of the fixed FDT header.
const FDT_HEADER_SIZE: usize = 40;
/// Linux's arm64 boot protocol caps the DTB at 2 MiB
/// (Documentation/arch/arm64/booting.rst, "Setup the device tree").
const FDT_MAX_SIZE: usize = 2 << 20;

/// Why the boot loader's x0 did not give us a usable device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtbProblem {
    /// x0 is not 8-byte aligned, as the boot protocol requires of a DTB.
    Misaligned,
    /// x0 points outside the RAM zboot maps.
    OutsideRam,
    /// No FDT magic at x0 (QEMU without `-dtb` passes ATAGs here).
    BadMagic { found: u32 },
    /// The header's `totalsize` is smaller than a header or above 2 MiB.
    BadSize { total_size: usize },
    /// dtoolkit rejected the blob's structure.
    Invalid(dtoolkit::error::FdtParseError),
    /// zboot's copy area was already in use.
    NoRoom,
}

impl fmt::Display for DtbProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => write!(f, "the address is not 8-byte aligned"),
            Self::OutsideRam => write!(f, "the address is outside RAM"),
            Self::BadMagic { found } => {
                write!(f, "bad magic 0x{found:08x} (expected 0x{FDT_MAGIC:08x})")
            }
            Self::BadSize { total_size } => write!(
                f,
                "header totalsize {total_size} is outside {FDT_HEADER_SIZE}..={FDT_MAX_SIZE} bytes"
            ),
            Self::Invalid(error) => write!(f, "malformed device tree: {error}"),
            Self::NoRoom => write!(f, "no room to keep a copy"),
        }
    }
}

/// Why the firmware's tree says nothing usable about how EMMC2 sees RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaWindowProblem {
    /// There is no usable tree.
    NoTree,
    /// No `emmc2bus` node (by the `emmc2bus` alias the firmware looks for, or at
    /// `/emmc2bus`): QEMU's minimal trees, trees for other boards.
    NoEmmc2Bus,
    /// The node has no `dma-ranges`.
    NoDmaRanges,
    /// `dma-ranges` is there but unusable.
    Unusable(DmaRangesError),
}

impl fmt::Display for DmaWindowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTree => write!(f, "no usable device tree"),
            Self::NoEmmc2Bus => write!(f, "the device tree has no emmc2bus node"),
            Self::NoDmaRanges => write!(f, "the emmc2bus node has no dma-ranges"),
            Self::Unusable(problem) => write!(f, "emmc2bus: {problem}"),
        }
    }
}

/// The boot loader's device tree (zboot's own copy of it), or why there is none.
#[derive(Debug)]
pub struct DeviceTree {
    address: usize,
    fdt: Result<Fdt<'static>, DtbProblem>,
}

impl DeviceTree {
    /// Validates the DTB at `address` (x0 at entry) and copies it into
    /// `buffer`, zboot's own memory: the original may lie where the kernel
    /// is loaded later.
    pub fn from_boot_loader(address: usize, buffer: &'static mut [u8]) -> Self {
        Self {
            address,
            fdt: Self::copy_and_parse(address, buffer),
        }
    }

    fn copy_and_parse(
        address: usize,
        buffer: &'static mut [u8],
    ) -> Result<Fdt<'static>, DtbProblem> {
        if !address.is_multiple_of(8) {
            return Err(DtbProblem::Misaligned);
        }
        let mut header = [0u8; FDT_HEADER_SIZE];
        if !arch::read_boot_data(address, &mut header) {
            return Err(DtbProblem::OutsideRam);
        }
        let word = |offset: usize| {
            header
                .get(offset..offset + 4)
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(0, u32::from_be_bytes)
        };
        let magic = word(0);
        if magic != FDT_MAGIC {
            return Err(DtbProblem::BadMagic { found: magic });
        }
        let total_size = word(4) as usize;
        if !(FDT_HEADER_SIZE..=FDT_MAX_SIZE.min(buffer.len())).contains(&total_size) {
            return Err(DtbProblem::BadSize { total_size });
        }
        let copy = &mut buffer[..total_size];
        if !arch::read_boot_data(address, copy) {
            return Err(DtbProblem::OutsideRam);
        }
        let copy: &'static [u8] = copy;
        Fdt::new(copy).map_err(DtbProblem::Invalid)
    }

    /// A tree that could not be had at all (no buffer for the copy).
    pub fn unavailable(address: usize, problem: DtbProblem) -> Self {
        Self {
            address,
            fdt: Err(problem),
        }
    }

    /// The address the boot loader passed.
    pub fn address(&self) -> usize {
        self.address
    }

    /// The validated tree, or why it is unusable.
    pub fn fdt(&self) -> Result<Fdt<'static>, DtbProblem> {
        self.fdt.clone()
    }

    /// A string property of the node at `path`, if the tree has it.
    fn string(&self, path: &str, property: &str) -> Option<&'static str> {
        let fdt = self.fdt.as_ref().ok()?;
        let node = fdt.find_node(path)?;
        let value = node.property(property)?.value_as::<&str>().ok()?;
        Some(value)
    }

    /// The root `model` property (e.g. "Raspberry Pi 4 Model B").
    pub fn model(&self) -> Option<&'static str> {
        self.string("/", "model")
    }

    /// The Linux names of the UARTs behind the `serial0` and `serial1` aliases, which the
    /// firmware points at the primary (GPIO 14/15) and secondary UART: what
    /// `console=serial0` and `console=serial1` in a `cmdline.txt` mean (the firmware
    /// rewrites them before Linux sees the line; Linux knows no `serial0`).
    pub fn serial_ttys(&self) -> [Option<&'static str>; 2] {
        let tty = |alias: &str| {
            let fdt = self.fdt.as_ref().ok()?;
            let path = self.string("/aliases", alias)?;
            let node = fdt.find_node(path)?;
            // A string list: the first entry is the most specific.
            let list = node.property("compatible")?.value_as::<&str>().ok()?;
            let compatible = list.split('\0').next()?;
            let unit = path.rsplit_once('@').map_or("", |(_, unit)| unit);
            recovery_proto::cmdline::bcm2711_uart_tty(compatible, unit)
        };
        [tty("serial0"), tty("serial1")]
    }

    /// `/chosen/bootargs`, the command line the boot loader passed on.
    pub fn bootargs(&self) -> Option<&'static str> {
        self.string("/chosen", "bootargs")
    }

    /// How EMMC2 sees RAM: the first entry of the `emmc2bus` node's `dma-ranges`
    /// (Linux bcm2711.dtsi puts EMMC2 alone on that bus because the BCM2711's
    /// revisions differ, and the firmware rewrites the property for the chip it
    /// runs on when the `emmc2bus` alias exists; `hal_bcm2711::emmc2::adma`).
    /// Cell counts from the node and its parent, defaulting to 2 address and 1
    /// size cell (Devicetree Specification v0.4 §2.3.5).
    pub fn emmc2_dma_window(&self) -> Result<DmaWindow, DmaWindowProblem> {
        let fdt = self.fdt.as_ref().map_err(|_| DmaWindowProblem::NoTree)?;
        let path = self.string("/aliases", "emmc2bus").unwrap_or("/emmc2bus");
        let node = fdt.find_node(path).ok_or(DmaWindowProblem::NoEmmc2Bus)?;
        let ranges = node
            .property("dma-ranges")
            .ok_or(DmaWindowProblem::NoDmaRanges)?;
        let parent = match path.rsplit_once('/') {
            Some(("", _)) | None => fdt.root(),
            Some((parent, _)) => fdt.find_node(parent).unwrap_or_else(|| fdt.root()),
        };
        DmaWindow::from_dma_ranges(
            ranges.value(),
            cells(node, "#address-cells", 2),
            cells(parent, "#address-cells", 2),
            cells(node, "#size-cells", 1),
        )
        .map_err(DmaWindowProblem::Unusable)
    }
}

/// A node's `#address-cells`/`#size-cells`-style property, or `default`.
fn cells(node: FdtNode<'_>, name: &str, default: u32) -> u32 {
    node.property(name)
        .and_then(|property| property.value_as::<u32>().ok())
        .unwrap_or(default)
}
