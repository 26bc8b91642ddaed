//! What a CM4 would see: the instructions and bytes a QEMU run measured, turned into a
//! modelled time on the board (`cargo xtask bench`; README.md, "What a CM4 would see").
//!
//! The model, per phase (one measured run: a boot to the kernel, a reflash):
//! - I/O time = the bytes each bus moved ÷ its rate, the buses one after the other (zboot
//!   drives one transfer at a time);
//! - CPU time = the critical path's instructions ÷ [`CPU_HZ`], one instruction per cycle.
//!   Core 0 drives the I/O; work handed to cores 1–3 runs beside it, so the critical path
//!   is core 0 or the busiest other core, whichever did more (an ideal split: no core
//!   waits for another);
//! - the phase takes at least max(I/O, CPU) (transfers and computing overlap, as DMA
//!   allows) and at most I/O + CPU (nothing overlaps: today's driver on core 0 waits for
//!   each transfer); the larger of the two terms bounds the phase.

use std::io::{self, Write};

use crate::insn_count::{InsnReport, Split};

/// The CPU clock the model assumes: the CM4's four Cortex-A72 cores run at up to 1.5 GHz
/// (Raspberry Pi CM4 datasheet, features list). The firmware leaves them at 600 MHz; zboot
/// asks the mailbox for the ARM clock's maximum before it hashes and inflates
/// (`loader/src/board.rs`, `raise_arm_clock`).
pub const CPU_HZ: u64 = 1_500_000_000;

/// A bus rate and where the figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// What the rate is, as the table prints it.
    pub label: &'static str,
    /// Bytes per second (decimal megabytes, as the sources give them).
    pub bytes_per_second: u64,
}

/// The eMMC rates the model is run at, one table row each.
///
/// Nominal: JEDEC JESD84-B51 (e•MMC 5.1), the bus speed modes table: High Speed SDR,
/// 0–52 MHz, 52 MB/s on an 8-bit bus; High Speed DDR (DDR52), 0–52 MHz on both clock
/// edges, 104 MB/s on an 8-bit bus; both at 3.3 V or 1.8 V I/O. Linux runs the CM4's eMMC
/// at DDR52 with 3.3 V I/O (DESIGN.md, "Real CM4 notes"), and the CM4
/// datasheet's features list gives a peak eMMC bandwidth of 100 MB/s, which fits DDR52.
///
/// Measured: none. No public measurement of a CM4's own eMMC (8-bit, DDR52) read or write
/// rate was found that says how it was taken. The nearest, raspberrypi/linux issue 3802
/// (the BCM2711's EMMC2 at DDR52, 50 MHz, with an eMMC on a 4-bit SD adapter: 44.45 MB/s
/// buffered reads by `hdparm -t`), is another bus width, so the table stays nominal. Writes
/// are modelled at the bus rate too: a flash chip's own program speed can be lower.
pub const EMMC_RATES: [Rate; 2] = [
    Rate {
        label: "eMMC DDR52 8-bit (nominal)",
        bytes_per_second: 104_000_000,
    },
    Rate {
        label: "eMMC HS SDR 8-bit (nominal)",
        bytes_per_second: 52_000_000,
    },
];

/// The USB stick's rate: USB 2.0 high speed signals at 480 Mbit/s (60 MB/s); bulk
/// transfers carry at most 53.248 MB/s (USB 2.0 specification, table 5-10: 13 packets of
/// 512 bytes per 125 µs microframe); mass-storage sticks and disks read at 30–42 MB/s in
/// practice (electronics.stackexchange.com question 24700, "Why are USB devices slower
/// than 480 MBit/s?", from CNet's routine tests). The model takes 35 MB/s, inside that
/// range. A CM4's stick sits on the DWC2 at high speed (QEMU puts a full-speed hub in front).
pub const USB_RATE: Rate = Rate {
    label: "USB 2.0 high speed, typical stick read",
    bytes_per_second: 35_000_000,
};

/// The bytes a phase moved over each bus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    pub emmc_read: u64,
    pub emmc_written: u64,
    pub usb_read: u64,
}

/// One measured run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub io: Io,
    /// Each vCPU's instructions (the plugin's per-vCPU work, parked cores left out).
    pub per_vcpu: Vec<u64>,
}

/// Which term bounds a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Io,
    Cpu,
}

/// A phase's modelled time at one eMMC rate, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub io_ns: u64,
    pub cpu_ns: u64,
    pub bound: Bound,
    /// max(I/O, CPU): transfers and computing overlap.
    pub overlapped_ns: u64,
    /// I/O + CPU: nothing overlaps.
    pub serial_ns: u64,
}

/// `amount` per `per_second`, in nanoseconds (rounded to nearest).
fn nanoseconds(amount: u64, per_second: u64) -> u64 {
    let per_second = u128::from(per_second.max(1));
    let ns = (u128::from(amount) * 1_000_000_000 + per_second / 2) / per_second;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl Phase {
    /// A phase from the plugin's report.
    pub fn from_report(name: &str, io: Io, report: &InsnReport) -> Self {
        let per_vcpu = if report.per_vcpu.is_empty() {
            vec![report.instructions]
        } else {
            report.per_vcpu.clone()
        };
        Self {
            name: name.to_owned(),
            io,
            per_vcpu,
        }
    }

    /// The instructions on the critical path, and the vCPU that ran them: core 0 (the
    /// I/O driver) or the busiest other core, whichever did more.
    pub fn critical_path(&self) -> (usize, u64) {
        self.per_vcpu
            .iter()
            .copied()
            .enumerate()
            // The first of equals: core 0 when another core did as much.
            .fold(
                (0, 0),
                |best, (vcpu, work)| {
                    if work > best.1 { (vcpu, work) } else { best }
                },
            )
    }

    /// The modelled time with the eMMC at `emmc` and the stick at [`USB_RATE`].
    pub fn estimate(&self, emmc: &Rate) -> Estimate {
        let io_ns = nanoseconds(
            self.io.emmc_read + self.io.emmc_written,
            emmc.bytes_per_second,
        ) + nanoseconds(self.io.usb_read, USB_RATE.bytes_per_second);
        let cpu_ns = nanoseconds(self.critical_path().1, CPU_HZ);
        Estimate {
            io_ns,
            cpu_ns,
            bound: if io_ns >= cpu_ns {
                Bound::Io
            } else {
                Bound::Cpu
            },
            overlapped_ns: io_ns.max(cpu_ns),
            serial_ns: io_ns + cpu_ns,
        }
    }
}

/// Decimal megabytes with two decimals.
pub fn megabytes(bytes: u64) -> String {
    let hundredths = (bytes + 5_000) / 10_000;
    format!("{}.{:02} MB", hundredths / 100, hundredths % 100)
}

/// Milliseconds with one decimal.
fn milliseconds(ns: u64) -> String {
    let tenths = (ns + 50_000) / 100_000;
    format!("{}.{} ms", tenths / 10, tenths % 10)
}

/// Millions of instructions with two decimals.
pub fn millions(count: u64) -> String {
    let hundredths = (count + 5_000) / 10_000;
    format!("{}.{:02} M", hundredths / 100, hundredths % 100)
}

/// Prints the model's assumptions, then each phase: its bytes and critical path, and a row
/// per eMMC rate.
pub fn render(phases: &[Phase], out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "Modelled CM4 time (a model, not a measurement: the bytes and instructions above \
         turned into time; README.md, \"What a CM4 would see\")"
    )?;
    writeln!(
        out,
        "  CPU: critical-path instructions / {}.{} GHz, 1 instruction per cycle (assumed: the \
         CM4's A72 after zboot raises the ARM clock from the firmware's 600 MHz to its maximum)",
        CPU_HZ / 1_000_000_000,
        CPU_HZ / 100_000_000 % 10
    )?;
    writeln!(
        out,
        "  critical path: vCPU 0 (drives the I/O) or the busiest other vCPU, whichever did more"
    )?;
    writeln!(
        out,
        "  I/O: bytes / bus rate: {}; {} at {}/s. No measured CM4 eMMC rate was found: nominal only",
        EMMC_RATES
            .iter()
            .map(|rate| format!("{} {}/s", rate.label, megabytes(rate.bytes_per_second)))
            .collect::<Vec<_>>()
            .join(", "),
        USB_RATE.label,
        megabytes(USB_RATE.bytes_per_second),
    )?;
    writeln!(
        out,
        "  time: at least max(I/O, CPU) (they overlap), at most I/O + CPU (they do not: \
         today's driver waits on core 0); the larger term bounds the phase"
    )?;
    for phase in phases {
        let (vcpu, critical) = phase.critical_path();
        writeln!(
            out,
            "  {}: eMMC read {}, eMMC written {}, USB read {}; critical path {} instructions \
             (vCPU {vcpu})",
            phase.name,
            megabytes(phase.io.emmc_read),
            megabytes(phase.io.emmc_written),
            megabytes(phase.io.usb_read),
            millions(critical),
        )?;
        for rate in &EMMC_RATES {
            let estimate = phase.estimate(rate);
            writeln!(
                out,
                "    {:<30} I/O {:>10}  CPU {:>10}  bound: {:<3}  time {} .. {}",
                rate.label,
                milliseconds(estimate.io_ns),
                milliseconds(estimate.cpu_ns),
                match estimate.bound {
                    Bound::Io => "I/O",
                    Bound::Cpu => "CPU",
                },
                milliseconds(estimate.overlapped_ns),
                milliseconds(estimate.serial_ns),
            )?;
        }
    }
    Ok(())
}

/// The files a boot read from the eMMC and the total it read, from the loader's console.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootReads {
    /// Each file the loader loaded (`A/kernel.img`, ...) with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// Every block read since power-on, in bytes: files, FAT, partition table, state.
    pub total: u64,
}

impl BootReads {
    /// Parses the loader's load reports: a line per file, `<owner>: <path>: <N> bytes, ...`,
    /// and the slot's summary, `... <N> blocks read since power-on`. `None` without a
    /// summary (the boot did not reach it).
    pub fn parse(console: &str) -> Option<Self> {
        let mut reads = Self::default();
        let mut blocks = None;
        for line in console.lines() {
            if let Some(before) = line.strip_suffix(" blocks read since power-on") {
                blocks = before
                    .rsplit(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|number| number.parse::<u64>().ok());
            } else if let Some((before, _)) = line.split_once(" bytes, ")
                && let Some((before, size)) = before.rsplit_once(": ")
                && let Some((_, path)) = before.rsplit_once(": ")
                && let Ok(size) = size.parse()
            {
                reads.files.push((path.to_owned(), size));
            }
        }
        reads.total = blocks? * 512;
        Some(reads)
    }

    /// The bytes read that were not a loaded file's (FAT, partition table, state, manifest,
    /// and the rest of each file's last sector).
    pub fn other(&self) -> u64 {
        self.total
            .saturating_sub(self.files.iter().map(|(_, size)| size).sum())
    }
}

/// The bytes a USB stick sent before the plugin's report, from QEMU's
/// `usb_msd_cmd_submit` trace events (`-trace enable=usb_msd_cmd_submit`): each
/// Bulk-Only command's data-transfer length where its CBW flags say device-to-host
/// (bit 7; USB Mass Storage Class Bulk-Only Transport, 5.1). `None` without any event.
pub fn usb_bytes_read(log: &str) -> Option<u64> {
    let mut total = None;
    for line in log.lines() {
        if line.starts_with("zboot-insn-count: ") {
            break;
        }
        let Some(rest) = line.strip_prefix("usb_msd_cmd_submit ") else {
            continue;
        };
        let value = |name: &str| {
            rest.split(", ")
                .find_map(|field| field.strip_prefix(name))
                .map(str::trim)
        };
        let flags = u32::from_str_radix(value("flags ")?.trim_start_matches("0x"), 16).ok()?;
        let length: u64 = value("data-len ")?.parse().ok()?;
        let sum = total.get_or_insert(0);
        if flags & 0x80 != 0 {
            *sum += length;
        }
    }
    total
}

/// The targets with what the bench measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// zboot's instructions over U-Boot's for the same real-kernel boot (`-icount` work).
    pub u_boot_ratio: Option<f64>,
    /// Instructions per MiB written by the USB reflash.
    pub reflash_per_mib: Option<u64>,
    /// zboot.img's size in bytes.
    pub image_bytes: Option<u64>,
    /// Instructions from entry to the kernel with a 16 MiB initrd (`-icount` work).
    pub storage_path: Option<u64>,
    /// The splits by function that say where a missed target's instructions go (for the
    /// image, its bytes by crate).
    pub image_split: Split,
    pub boot_split: Split,
    pub reflash_split: Split,
    pub storage_split: Split,
}

/// One target's line: what, measured, limit, pass/fail; and where the instructions go.
struct Row<'s> {
    what: &'static str,
    /// What the split divides: instructions, or the image's bytes.
    unit: &'static str,
    measured: Option<String>,
    limit: String,
    pass: Option<bool>,
    split: &'s Split,
}

/// The largest shares of a split, for a missed target's line.
fn largest_shares(split: &Split) -> String {
    let total: u64 = split.iter().map(|(_, count)| count).sum();
    let mut shares: Vec<&(String, u64)> = split.iter().filter(|(_, count)| *count > 0).collect();
    shares.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    shares
        .iter()
        .take(3)
        .map(|(label, count)| format!("{label} {} %", count * 100 / total.max(1)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the targets with the measured value and pass/fail beside each; returns the
/// targets that could not be measured (the bench then fails).
pub fn render_targets(measured: &Measured, out: &mut dyn Write) -> io::Result<Vec<&'static str>> {
    const RATIO: f64 = 1.5;
    const PER_MIB: u64 = 1_500_000;
    const IMAGE: u64 = 192 * 1024;
    const STORAGE: u64 = 150_000_000;
    let rows = [
        Row {
            what: "real-kernel boot, zboot / U-Boot instructions",
            unit: "instructions",
            measured: measured.u_boot_ratio.map(|ratio| format!("{ratio:.3}")),
            limit: format!("<= {RATIO}"),
            pass: measured.u_boot_ratio.map(|ratio| ratio <= RATIO),
            split: &measured.boot_split,
        },
        Row {
            what: "reflash, instructions per MiB written",
            unit: "instructions",
            measured: measured.reflash_per_mib.map(millions),
            limit: format!("<= {}", millions(PER_MIB)),
            pass: measured.reflash_per_mib.map(|count| count <= PER_MIB),
            split: &measured.reflash_split,
        },
        Row {
            what: "zboot.img size",
            unit: "bytes",
            measured: measured
                .image_bytes
                .map(|bytes| format!("{bytes} B ({} KiB)", bytes.div_ceil(1024))),
            limit: format!("<= {} KiB", IMAGE / 1024),
            pass: measured.image_bytes.map(|bytes| bytes <= IMAGE),
            split: &measured.image_split,
        },
        Row {
            what: "storage path, 16 MiB initrd, instructions",
            unit: "instructions",
            measured: measured.storage_path.map(millions),
            limit: format!("<= {}", millions(STORAGE)),
            pass: measured.storage_path.map(|count| count <= STORAGE),
            split: &measured.storage_split,
        },
    ];
    writeln!(out, "Targets (issue 15)")?;
    let mut missing = Vec::new();
    for row in rows {
        let verdict = match row.pass {
            Some(true) => "pass".to_owned(),
            Some(false) if !row.split.is_empty() => {
                format!("FAIL (most {}: {})", row.unit, largest_shares(row.split))
            }
            Some(false) => "FAIL".to_owned(),
            None => {
                missing.push(row.what);
                "NOT MEASURED".to_owned()
            }
        };
        writeln!(
            out,
            "  {:<46} {:>18}  target {:<12} {verdict}",
            row.what,
            row.measured.as_deref().unwrap_or("-"),
            row.limit,
        )?;
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(io: Io, per_vcpu: &[u64]) -> Phase {
        Phase {
            name: "test".into(),
            io,
            per_vcpu: per_vcpu.to_vec(),
        }
    }

    #[test]
    fn io_time_is_bytes_over_the_rate() {
        // 104 MB at DDR52's 104 MB/s: one second; 35 MB from the stick: another.
        let estimate = phase(
            Io {
                emmc_read: 52_000_000,
                emmc_written: 52_000_000,
                usb_read: 35_000_000,
            },
            &[0],
        )
        .estimate(&EMMC_RATES[0]);
        assert_eq!(estimate.io_ns, 2_000_000_000);
        assert_eq!(estimate.bound, Bound::Io);
        // Half the rate: twice the eMMC time.
        let slower = phase(
            Io {
                emmc_read: 104_000_000,
                ..Io::default()
            },
            &[0],
        )
        .estimate(&EMMC_RATES[1]);
        assert_eq!(slower.io_ns, 2_000_000_000);
    }

    #[test]
    fn cpu_time_is_the_critical_path_over_the_clock() {
        // 3 M instructions at 1.5 GHz: 2 ms; no I/O: the CPU bounds it.
        let estimate = phase(Io::default(), &[3_000_000]).estimate(&EMMC_RATES[0]);
        assert_eq!(estimate.cpu_ns, 2_000_000);
        assert_eq!(estimate.bound, Bound::Cpu);
        assert_eq!(estimate.overlapped_ns, 2_000_000);
        assert_eq!(estimate.serial_ns, 2_000_000);
    }

    #[test]
    fn the_critical_path_is_core_0_or_the_busiest_other_core() {
        assert_eq!(
            phase(Io::default(), &[900, 0, 0, 0]).critical_path(),
            (0, 900)
        );
        // Hashing moved to cores 1-3: core 2 carries the most.
        assert_eq!(
            phase(Io::default(), &[400, 300, 700, 100]).critical_path(),
            (2, 700)
        );
        assert_eq!(phase(Io::default(), &[500, 500]).critical_path(), (0, 500));
    }

    #[test]
    fn overlap_takes_the_larger_term_and_serial_their_sum() {
        // 10.4 MB at 104 MB/s = 100 ms; 30 M instructions at 1.5 GHz = 20 ms.
        let estimate = phase(
            Io {
                emmc_read: 10_400_000,
                ..Io::default()
            },
            &[30_000_000],
        )
        .estimate(&EMMC_RATES[0]);
        assert_eq!(estimate.io_ns, 100_000_000);
        assert_eq!(estimate.cpu_ns, 20_000_000);
        assert_eq!(estimate.overlapped_ns, 100_000_000);
        assert_eq!(estimate.serial_ns, 120_000_000);
        assert_eq!(estimate.bound, Bound::Io);
    }

    #[test]
    fn the_printed_table_carries_the_estimates() {
        let mut out = Vec::new();
        render(
            &[phase(
                Io {
                    emmc_read: 10_400_000,
                    ..Io::default()
                },
                &[30_000_000, 0, 0, 0],
            )],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("1.5 GHz"), "{text}");
        assert!(text.contains("eMMC read 10.40 MB"), "{text}");
        assert!(
            text.contains("critical path 30.00 M instructions (vCPU 0)"),
            "{text}"
        );
        assert!(
            text.contains("I/O   100.0 ms  CPU    20.0 ms  bound: I/O  time 100.0 ms .. 120.0 ms"),
            "{text}"
        );
        // The SDR row: twice the I/O time.
        assert!(text.contains("I/O   200.0 ms"), "{text}");
    }

    #[test]
    fn boot_reads_come_from_the_load_reports() {
        let console = "\
[INFO] slot A: A/kernel.img: 1048576 bytes, BLAKE3 OK; 1 run(s), 3 FAT sector(s), 9 storage commands (9.00 per MiB), 0 bytes read past the end
[INFO] slot A: A/initrd.img: 4096 bytes, SHA-256 OK; 1 run(s), 1 FAT sector(s), 1 storage commands (256.00 per MiB), 0 bytes read past the end
[INFO] slot A: image version 1: 1052672 bytes loaded and verified in 2 runs (4 FAT sectors, 0 bytes of sector slack); 40 storage commands, 2100 blocks read since power-on
";
        let reads = BootReads::parse(console).unwrap();
        assert_eq!(
            reads.files,
            [
                ("A/kernel.img".to_owned(), 1_048_576),
                ("A/initrd.img".to_owned(), 4096)
            ]
        );
        assert_eq!(reads.total, 2100 * 512);
        assert_eq!(reads.other(), 2100 * 512 - 1_052_672);
        assert_eq!(BootReads::parse("no summary here"), None);
    }

    #[test]
    fn stick_reads_come_from_the_trace_up_to_the_report() {
        let log = "\
usb_msd_cmd_submit lun 0, tag 0x1, flags 0x00000080, len 10, data-len 512
usb_msd_cmd_submit lun 0, tag 0x2, flags 0x00000000, len 6, data-len 0
usb_msd_cmd_submit lun 0, tag 0x3, flags 0x00000080, len 10, data-len 65536
zboot-insn-count: start=0x0 end=0x10 instructions=5
usb_msd_cmd_submit lun 0, tag 0x4, flags 0x00000080, len 10, data-len 65536
";
        assert_eq!(usb_bytes_read(log), Some(66_048));
        assert_eq!(usb_bytes_read("zboot-insn-count: start=0x0 end=0x10"), None);
    }

    #[test]
    fn targets_pass_fail_and_unmeasured() {
        let measured = Measured {
            u_boot_ratio: Some(1.2),
            reflash_per_mib: Some(2_000_000),
            image_bytes: Some(192 * 1024),
            storage_path: None,
            reflash_split: vec![
                ("inflate".into(), 30),
                ("sha256".into(), 60),
                ("other".into(), 10),
            ],
            ..Measured::default()
        };
        let mut out = Vec::new();
        let missing = render_targets(&measured, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(missing, ["storage path, 16 MiB initrd, instructions"]);
        let line = |what: &str| {
            text.lines()
                .find(|line| line.contains(what))
                .unwrap()
                .to_owned()
        };
        assert!(line("U-Boot").ends_with("pass"), "{text}");
        assert!(
            line("per MiB")
                .contains("FAIL (most instructions: sha256 60 %, inflate 30 %, other 10 %)"),
            "{text}"
        );
        assert!(line("zboot.img").ends_with("pass"), "{text}");
        let too_big = Measured {
            image_bytes: Some(300 * 1024),
            image_split: vec![("zboot".into(), 3), ("recovery_proto".into(), 1)],
            ..Measured::default()
        };
        let mut out = Vec::new();
        render_targets(&too_big, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL (most bytes: zboot 75 %, recovery_proto 25 %)"),
            "{text}"
        );
        assert!(line("storage path").ends_with("NOT MEASURED"), "{text}");
    }
}
