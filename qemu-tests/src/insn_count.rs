//! The instruction-counting plugin (`bench/insn_count.c`): what it is told (the window,
//! the parked cores' spin loop, the code ranges by kind of work) and what it reports.

use std::fmt::Write as _;
use std::io;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::build::LoaderImage;

/// Where QEMU's `raspi4b` boot stub parks cores 1–3 until something releases them: QEMU
/// 10.0 `hw/arm/raspi.c` writes `write_smpboot64`'s 11 instructions (44 bytes) at
/// `SMPBOOT_ADDR` 0x300; each core reads its MPIDR, then loops `wfe`; load its release
/// address from the spin table at 0xd8 + 8 × core; `cbz` back (DESIGN.md: "Secondaries spin
/// on 0xe0/0xe8/0xf0"). A core's instructions there are waiting, not work: the plugin adds
/// them up apart. Work a released core does elsewhere counts.
pub const PARKING_STUB: Range<u64> = 0x300..0x32c;

/// The labels of the plugin's split by kind of work, in the order they are tried: a
/// function counts for the first label one of whose patterns its mangled name contains
/// (a crate or module name with its length prefix, as the v0 and legacy manglings spell
/// it); functions no label matches (memcpy, core, the boot flow) count as `other`.
/// One line per label: add one to split by a new kind of work (the plugin takes 15).
pub const CODE_LABELS: &[(&str, &[&str])] = &[
    ("inflate", &["miniz_oxide"]),
    ("sha256", &["4sha2"]),
    // The Rust crate's functions, and its NEON code (C, unmangled `blake3_*` names).
    ("blake3", &["6blake3", "blake3_"]),
    ("usb", &["4dwc2", "3usb"]),
    ("emmc", &["5emmc2", "7storage"]),
];

/// The [`CODE_LABELS`] label of a function, from its mangled name.
pub fn label_of(mangled_name: &str) -> Option<&'static str> {
    CODE_LABELS
        .iter()
        .find(|(_, patterns)| {
            patterns
                .iter()
                .any(|pattern| mangled_name.contains(pattern))
        })
        .map(|(label, _)| *label)
}

/// Writes the plugin's `ranges=` file: every loader function [`label_of`] labels, as
/// `START END LABEL` lines.
pub fn write_code_ranges(loader: &LoaderImage, path: &Path) -> Result<()> {
    let mut text = String::new();
    for (start, end, name) in loader.functions()? {
        if let Some(label) = label_of(&name) {
            let _ = writeln!(text, "{start:x} {end:x} {label}");
        }
    }
    ensure!(!text.is_empty(), "no loader function was labelled");
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The crate a function's mangled name says it belongs to: the first path segment of a
/// legacy-mangled name (`_ZN<length><crate>...`); for a trait impl, `<T as Trait>`
/// (`_$LT$`), the first segment of T's path, references and slices stripped. Other names
/// (v0 `_R` manglings, assembly) give `None`.
pub fn crate_of(mangled_name: &str) -> Option<&str> {
    let rest = mangled_name.strip_prefix("_ZN")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let length: usize = rest.get(..digits)?.parse().ok()?;
    let segment = rest.get(digits..digits + length)?;
    let Some(inner) = segment.strip_prefix("_$LT$") else {
        return Some(segment);
    };
    // The implementing type: up to ` as ` (an inherent `<T>` impl has none).
    let mut self_type = inner.split("$u20$as$u20$").next()?;
    // `&T`, `&mut T`, `[T]`, `*const T` before the path.
    for prefix in ["$RF$", "mut$u20$", "$u5b$", "$BP$", "const$u20$"] {
        self_type = self_type.strip_prefix(prefix).unwrap_or(self_type);
    }
    // A path names its crate first; a bare name (a generic `T`, a primitive) none.
    self_type
        .split_once("..")
        .map(|(krate, _)| krate)
        .filter(|krate| !krate.is_empty())
}

/// Where zboot.img's bytes go: its functions' code by crate ([`crate_of`]; `other` for
/// names it cannot place), then its read-only data and initialised data as one entry
/// each, largest first. `.bss` and the stack take no room in the image.
pub fn image_split(loader: &LoaderImage) -> Result<Split> {
    use object::{Object, ObjectSection};
    let mut split: Split = Vec::new();
    let mut add = |name: &str, bytes: u64| {
        if let Some(entry) = split.iter_mut().find(|(known, _)| known == name) {
            entry.1 += bytes;
        } else {
            split.push((name.to_owned(), bytes));
        }
    };
    for (start, end, name) in loader.functions()? {
        add(crate_of(&name).unwrap_or("other"), end - start);
    }
    let data =
        std::fs::read(&loader.elf).with_context(|| format!("reading {}", loader.elf.display()))?;
    let file =
        object::File::parse(&*data).with_context(|| format!("parsing {}", loader.elf.display()))?;
    for (section, label) in [(".rodata", "(read-only data)"), (".data", "(data)")] {
        if let Some(found) = file.section_by_name(section) {
            add(label, found.size());
        }
    }
    split.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok(split)
}

/// The plugin's arguments: count from `start` to `end` on every vCPU, leave the
/// [`PARKING_STUB`] out, and split by the `ranges` file when one is given.
pub fn plugin_arguments(start: u64, end: u64, ranges: Option<&Path>) -> String {
    let mut arguments = format!(
        "start=0x{start:x},end=0x{end:x},park=0x{:x}-0x{:x}",
        PARKING_STUB.start, PARKING_STUB.end
    );
    if let Some(ranges) = ranges {
        let _ = write!(arguments, ",ranges={}", ranges.display());
    }
    arguments
}

/// Instructions per label, in the plugin's order (`other` last).
pub type Split = Vec<(String, u64)>;

/// What the plugin reported for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InsnReport {
    /// The work of every vCPU between the markers (`instructions=`).
    pub instructions: u64,
    /// Each vCPU's work, by vCPU index (vCPU 0 exact, the others to within a block).
    pub per_vcpu: Vec<u64>,
    /// Instructions the cores spent parked in the [`PARKING_STUB`] (all vCPUs).
    pub parked: u64,
    /// The work by label, summed over the vCPUs (empty without `ranges=`).
    pub split: Split,
    /// The work by label of each vCPU but 0 that did any.
    pub split_per_vcpu: Vec<(usize, Split)>,
}

impl InsnReport {
    /// The report in a QEMU log, once complete (the plugin prints its `zboot-insn-vcpus:`
    /// line last); `None` before that, or if the end marker was never reached.
    pub fn parse(log: &str) -> Option<Self> {
        let mut report = Self::default();
        let mut counted = false;
        for line in log.lines() {
            if let Some(rest) = line.strip_prefix("zboot-insn-count: ") {
                if rest.contains("end=unreached") {
                    return None;
                }
                report.instructions = field(rest, "instructions")?;
                counted = true;
            } else if let Some(rest) = line.strip_prefix("zboot-insn-split-vcpu") {
                let (vcpu, rest) = rest.split_once(':')?;
                report
                    .split_per_vcpu
                    .push((vcpu.parse().ok()?, in_label_order(&parse_split(rest)?)));
            } else if let Some(rest) = line.strip_prefix("zboot-insn-split:") {
                report.split = in_label_order(&parse_split(rest)?);
            } else if let Some(rest) = line.strip_prefix("zboot-insn-vcpus:") {
                for (name, count) in parse_split(rest)? {
                    if name == "parked" {
                        report.parked = count;
                    } else {
                        let vcpu: usize = name.strip_prefix("vcpu")?.parse().ok()?;
                        if report.per_vcpu.len() <= vcpu {
                            report.per_vcpu.resize(vcpu + 1, 0);
                        }
                        report.per_vcpu[vcpu] = count;
                    }
                }
                return counted.then_some(report);
            }
        }
        None
    }

    /// vCPU 0's work.
    pub fn vcpu0(&self) -> u64 {
        self.per_vcpu.first().copied().unwrap_or(self.instructions)
    }

    /// The busiest vCPU other than 0, with its work (`None` when no other did any).
    pub fn busiest_other(&self) -> Option<(usize, u64)> {
        self.per_vcpu
            .iter()
            .copied()
            .enumerate()
            .skip(1)
            .filter(|&(_, work)| work > 0)
            .max_by_key(|&(_, work)| work)
    }
}

/// Prints a split by function, a line per label: its instructions, per MiB of
/// `per_mib.1` bytes (`per_mib.0` names them: "written", "loaded") when given, and its
/// share of the split's sum.
pub fn render_split(
    out: &mut dyn io::Write,
    split: &Split,
    per_mib: Option<(&str, u64)>,
) -> io::Result<()> {
    let sum: u64 = split.iter().map(|(_, count)| count).sum();
    for (name, instructions) in split {
        let per = per_mib.map_or_else(String::new, |(what, bytes)| {
            format!(
                " {:>10} per MiB {what}",
                instructions * (1 << 20) / bytes.max(1)
            )
        });
        writeln!(
            out,
            "    {name:<10} {instructions:>12} instructions{per} {:>3}.{} %",
            instructions * 100 / sum.max(1),
            instructions * 1000 / sum.max(1) % 10
        )?;
    }
    Ok(())
}

/// Prints each vCPU's work (`who` begins the line: "zboot ", or nothing) and the parked
/// cores' spin left out, then the split of each vCPU but 0 that did work.
pub fn render_vcpus(out: &mut dyn io::Write, who: &str, report: &InsnReport) -> io::Result<()> {
    let vcpus: Vec<String> = report
        .per_vcpu
        .iter()
        .enumerate()
        .map(|(vcpu, work)| format!("vCPU {vcpu} {work}"))
        .collect();
    writeln!(
        out,
        "  {who}per vCPU: {}; left out: {} instructions of parked cores spinning in QEMU's boot stub",
        vcpus.join(", "),
        report.parked
    )?;
    for (vcpu, split) in &report.split_per_vcpu {
        writeln!(out, "  vCPU {vcpu}'s work by function:")?;
        render_split(out, split, None)?;
    }
    Ok(())
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn parse_split(text: &str) -> Option<Split> {
    text.split_whitespace()
        .map(|word| {
            let (name, count) = word.split_once('=')?;
            Some((name.to_owned(), count.parse().ok()?))
        })
        .collect()
}

/// A split in [`CODE_LABELS`] order, every label present (0 for one no function had:
/// blake3 before zboot hashes with it), labels it does not know next, `other` last. The
/// plugin numbers labels in the order the ranges file first names them.
fn in_label_order(split: &[(String, u64)]) -> Split {
    let count_of = |label: &str| {
        split
            .iter()
            .find(|(name, _)| name == label)
            .map_or(0, |(_, count)| *count)
    };
    let mut ordered: Split = CODE_LABELS
        .iter()
        .map(|(label, _)| ((*label).to_owned(), count_of(label)))
        .collect();
    ordered.extend(
        split
            .iter()
            .filter(|(name, _)| {
                name != "other" && !CODE_LABELS.iter().any(|(label, _)| label == name)
            })
            .cloned(),
    );
    ordered.push(("other".to_owned(), count_of("other")));
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
sdcard_read_block addr 0x0 size 0x200
zboot-insn-count: start=0x200000 end=0x1000000 instructions=1500
zboot-insn-split: usb=0 emmc=300 sha256=700 inflate=100 other=400
zboot-insn-split-vcpu2: inflate=0 sha256=500 usb=0 emmc=0 other=20
zboot-insn-vcpus: vcpu0=980 vcpu1=0 vcpu2=520 vcpu3=0 parked=123456
";

    #[test]
    fn a_complete_report_is_read() {
        let report = InsnReport::parse(LOG).unwrap();
        assert_eq!(report.instructions, 1500);
        assert_eq!(report.per_vcpu, [980, 0, 520, 0]);
        assert_eq!(report.parked, 123_456);
        // In CODE_LABELS order, blake3 (no function of it yet) at 0, other last.
        let names: Vec<&str> = report.split.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["inflate", "sha256", "blake3", "usb", "emmc", "other"]
        );
        assert_eq!(report.split[1], ("sha256".to_owned(), 700));
        assert_eq!(report.split[2], ("blake3".to_owned(), 0));
        assert_eq!(report.split[5], ("other".to_owned(), 400));
        assert_eq!(report.split_per_vcpu[0].0, 2);
        assert_eq!(report.vcpu0(), 980);
        assert_eq!(report.busiest_other(), Some((2, 520)));
    }

    #[test]
    fn a_report_is_complete_only_with_its_last_line() {
        let partial = &LOG[..LOG.find("zboot-insn-vcpus").unwrap()];
        assert_eq!(InsnReport::parse(partial), None);
        assert_eq!(
            InsnReport::parse(
                "zboot-insn-count: start=0x0 end=unreached instructions=5\n\
                 zboot-insn-vcpus: vcpu0=5 parked=0\n"
            ),
            None
        );
    }

    #[test]
    fn parked_cores_make_no_busiest_other() {
        let report =
            InsnReport::parse("zboot-insn-count: start=0x0 end=0x10 instructions=7\nzboot-insn-vcpus: vcpu0=7 vcpu1=0 vcpu2=0 vcpu3=0 parked=99\n")
                .unwrap();
        assert_eq!(report.busiest_other(), None);
        assert!(report.split.is_empty());
    }

    #[test]
    fn functions_are_labelled_by_crate_and_module() {
        assert_eq!(
            label_of("_ZN11miniz_oxide7inflate4core10decompress17h0E"),
            Some("inflate")
        );
        assert_eq!(label_of("_ZN4sha26sha2568compress17h1E"), Some("sha256"));
        assert_eq!(
            label_of("_ZN6blake36portable14compress_in_place17h2E"),
            Some("blake3")
        );
        assert_eq!(
            label_of("_ZN11hal_bcm27115emmc29Emmc2Host4read17h3E"),
            Some("emmc")
        );
        assert_eq!(
            label_of("_ZN11hal_bcm27114dwc24Dwc24poll17h4E"),
            Some("usb")
        );
        assert_eq!(label_of("memcpy"), None);
    }

    #[test]
    fn functions_are_placed_in_their_crate() {
        assert_eq!(
            crate_of("_ZN5zboot4main17h09abcf68db18481fE"),
            Some("zboot")
        );
        assert_eq!(
            crate_of("_ZN14recovery_proto6locate12locate_state17h5639186e634e3573E"),
            Some("recovery_proto")
        );
        // <&T as core::fmt::Display>::fmt: core's blanket impl, T generic.
        assert_eq!(
            crate_of("_ZN44_$LT$$RF$T$u20$as$u20$core..fmt..Display$GT$3fmt17h0E"),
            None
        );
        assert_eq!(
            crate_of(
                "_ZN67_$LT$hal_bcm2711..emmc2..Emmc2Error$u20$as$u20$core..fmt..Debug$GT$3fmt17h1E"
            ),
            Some("hal_bcm2711")
        );
        assert_eq!(crate_of("_RNvNtCsbcsGJ9IzBgZ_4core3fmt5write"), None);
        assert_eq!(crate_of("memcpy"), None);
    }

    #[test]
    fn arguments_name_the_parking_stub() {
        assert_eq!(
            plugin_arguments(0x20_0000, 0x100_0000, Some(Path::new("/tmp/r.txt"))),
            "start=0x200000,end=0x1000000,park=0x300-0x32c,ranges=/tmp/r.txt"
        );
    }
}
