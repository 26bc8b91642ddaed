//! zboot's developer tasks: `cargo xtask <task>` (build, demo, test, bench, ci).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use zboot_qemu_tests::cm4_model::{self, BootReads, Io, Measured, Phase};
use zboot_qemu_tests::insn_count::{
    InsnReport, image_split, plugin_arguments, render_split, render_vcpus, write_code_ranges,
};
use zboot_qemu_tests::{
    Ending, Icount, LoaderBuild, LoaderImage, Qemu, Tools, insn_count_plugin, minimal_dtb,
    workspace_root,
};

/// What a product build prints when it has nothing to boot and waits.
const HALT_TEXT: &str = "waiting (USB recovery";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "zboot developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build zboot.img (raw binary) and zboot.elf (for debugging) into target/zboot/.
    Build {
        /// Build the QEMU test flavour (semihosting exit, `zboot.test=` hooks).
        #[arg(long)]
        test_build: bool,
    },
    /// Build zboot and an eMMC image whose slots A and B fail, and boot it on
    /// QEMU raspi4b until the fallback reaches SAFE; then reflash a blank
    /// (bricked) eMMC from a USB stick and boot A. Every console is shown.
    Demo {
        /// Only boot the loader without a card (the banner, then it waits).
        #[arg(long)]
        no_disk: bool,
        /// Device tree to pass (default: the minimal raspi4b tree, compiled with dtc).
        #[arg(long)]
        dtb: Option<PathBuf>,
        /// Boot without a device tree (x0 then holds no DTB).
        #[arg(long, conflicts_with = "dtb")]
        no_dtb: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Run the whole test suite (host tests and QEMU tests).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Measure zboot: image size and guest instruction counts under QEMU.
    Bench {
        /// Keep QEMU's EMMC2 as stock QEMU has it, without ADMA2, so the storage path and
        /// the reflash move data by PIO (by default EMMC2 advertises ADMA2, as the BCM2711's
        /// does, and the loader uses it through the minimal tree's C0 `emmc2bus` window).
        #[arg(long)]
        pio: bool,
    },
    /// Build the `zboot` Debian package (zbctl, its systemd units, man pages, completions)
    /// into target/zboot/deb/, and check it with lintian when it is installed.
    Deb {
        /// The architectures (default: arm64 and amd64).
        #[arg(long, value_enum)]
        arch: Vec<zboot_tools::deb::Arch>,
        /// Then run the zbctl tests (updates over loopback HTTPS, the state commands) on the
        /// packaged arm64 binary under qemu-aarch64.
        #[arg(long)]
        test: bool,
    },
    /// Fuzz the parsers of untrusted bytes (recovery-proto/fuzz, cargo-fuzz + libFuzzer).
    Fuzz {
        /// Each target for a few seconds on the pinned stable toolchain without a sanitizer
        /// (what CI runs); otherwise a full run on nightly with AddressSanitizer.
        #[arg(long)]
        smoke: bool,
        /// Executions per target for a full run.
        #[arg(long, default_value_t = 10_000_000)]
        runs: u64,
        /// Only these targets (default: every one `cargo fuzz list` names).
        targets: Vec<String>,
    },
    /// Everything CI checks: formatting, lints, the loader build, the tests.
    Ci,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Build { test_build } => build(test_build),
        Task::Demo {
            no_disk,
            dtb,
            no_dtb,
            timeout,
        } => {
            if no_disk {
                demo(dtb, no_dtb, timeout)
            } else {
                fallback_demo(timeout)?;
                recovery_demo(timeout)
            }
        }
        Task::Test { cargo_args } => test(&cargo_args),
        Task::Bench { pio } => bench(pio),
        Task::Deb { arch, test } => deb(&arch, test),
        Task::Fuzz {
            smoke,
            runs,
            targets,
        } => fuzz(smoke, runs, &targets),
        Task::Ci => ci(),
    }
}

fn build(test_build: bool) -> Result<()> {
    let flavour = if test_build {
        LoaderBuild::QemuTest
    } else {
        LoaderBuild::Release
    };
    let loader = LoaderImage::get(flavour)?;
    println!(
        "zboot.img: {} ({} bytes)",
        loader.image.display(),
        loader.image_size()?
    );
    println!("zboot.elf: {}", loader.elf.display());
    println!("load address: 0x{:x}", loader.load_address);
    if !test_build {
        for (variable, unset) in [
            (
                "ZBOOT_PUBLIC_KEY",
                "none (integrity only: unsigned slots boot, unsigned recovery images are \
                 accepted unless zbmanifest.txt has public_key=)",
            ),
            ("ZBOOT_RECOVERY_BUTTON", "none"),
            (
                "ZBOOT_SETTINGS",
                "none (the guarded settings take their defaults)",
            ),
            ("ZBOOT_MIN_VERSION", "none (the slot state's minimum only)"),
        ] {
            let value = std::env::var(variable).unwrap_or_default();
            println!(
                "{variable}: {}",
                if value.trim().is_empty() {
                    unset
                } else {
                    value.trim()
                }
            );
        }
    }
    Ok(())
}

fn demo(dtb: Option<PathBuf>, no_dtb: bool, timeout: u64) -> Result<()> {
    let loader = LoaderImage::get(LoaderBuild::Release)?;
    let mut qemu = Qemu::new(&loader.image)
        .echo(true)
        .stop_at(HALT_TEXT)
        .timeout(Duration::from_secs(timeout));
    if !no_dtb {
        let dtb = match dtb {
            Some(dtb) => dtb,
            None => minimal_dtb()?,
        };
        qemu = qemu.dtb(&dtb);
    }
    println!("--- zboot on QEMU raspi4b ({}) ---", loader.image.display());
    let run = qemu.run()?;
    println!(
        "--- QEMU run ended: {:?} after {:.1} s ---",
        run.ending,
        run.wall_time.as_secs_f64()
    );
    match run.ending {
        Ending::StopText => Ok(()),
        Ending::TimedOut => bail!("zboot did not reach `{HALT_TEXT}` within {timeout} s"),
        other => bail!(
            "unexpected end of the demo run: {other:?}\n{}",
            run.qemu_log
        ),
    }
}

/// Runs zbctl (the same library code as the binary) and returns its output.
fn zbctl(args: &[&str]) -> Result<String> {
    let cli = zboot_tools::zbctl::Cli::try_parse_from(
        std::iter::once("zbctl").chain(args.iter().copied()),
    )
    .map_err(|error| anyhow::anyhow!("zbctl {args:?}: {error}"))?;
    let mut out = Vec::new();
    zboot_tools::zbctl::run(&cli, &mut out).with_context(|| format!("zbctl {args:?}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// An eMMC image made by `zbctl disk create` whose slots hold the QEMU tests'
/// stand-in kernel, each told by its command line how its boot should end.
fn demo_disk(
    dir: &std::path::Path,
    slots: &[(&str, &str)],
    initrd: Option<&std::path::Path>,
) -> Result<PathBuf> {
    let loader = LoaderImage::get(LoaderBuild::Release)?;
    let kernel = LoaderImage::get(LoaderBuild::TestKernel)?;
    std::fs::create_dir_all(dir)?;
    let image = dir.join("emmc.img");
    let _ = std::fs::remove_file(&image);
    let mut args: Vec<String> = vec![
        "disk".into(),
        "create".into(),
        "--output".into(),
        image.display().to_string(),
        "--size".into(),
        "1G".into(),
        // A boot partition big enough for 4 KiB FAT32 clusters.
        "--boot-size".into(),
        "512M".into(),
        "--loader".into(),
        loader.image.display().to_string(),
    ];
    for (slot, outcome) in slots {
        let mut spec = format!("{slot}:kernel={},version=1", kernel.image.display());
        if let Some(initrd) = initrd {
            spec.push_str(",initrd=");
            spec.push_str(&initrd.display().to_string());
        }
        args.extend(["--slot".into(), spec]);
        args.extend([
            "--cmdline".into(),
            format!("{slot}=console=ttyAMA0 zbtest={outcome}"),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    zbctl(&args)?;
    Ok(image)
}

/// A good eMMC image (all slots boot), its `.zi` and a recovery stick
/// holding it, in `dir`: (disk, image, stick).
fn recovery_inputs(dir: &std::path::Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let golden = demo_disk(dir, &[("A", "good"), ("B", "good"), ("SAFE", "good")], None)?;
    let zi = dir.join("os.zi");
    let stick = dir.join("stick.img");
    let text = |path: &std::path::Path| path.display().to_string();
    zbctl(&[
        "image",
        "convert",
        "--from-disk",
        &text(&golden),
        "-o",
        &text(&zi),
        "--name",
        "os",
        "--version",
        "1",
    ])?;
    zbctl(&["usb", "create", "--zi", &text(&zi), "-o", &text(&stick)])?;
    Ok((golden, zi, stick))
}

/// What the reflash bench measured.
struct ReflashResult {
    phase: Phase,
    per_mib_written: u64,
    split: Vec<(String, u64)>,
}

/// USB recovery of a blank eMMC from a stick: instructions from entry to the
/// end of the reflash, per MiB written, and bytes written against the
/// image's used bytes; the bytes read from the stick (QEMU's usb-storage trace).
fn reflash_bench(
    loader: &LoaderImage,
    plugin: &std::path::Path,
    dtb: &std::path::Path,
    adma2: bool,
) -> Result<ReflashResult> {
    let dir = workspace_root()
        .join("target")
        .join("zboot")
        .join("bench-reflash");
    let (golden, zi, stick) = recovery_inputs(&dir)?;
    let text = |path: &std::path::Path| path.display().to_string();
    let emmc = dir.join("blank.img");
    std::fs::File::create(&emmc)?.set_len(std::fs::metadata(&golden)?.len())?;
    let start = loader.symbol("_start")?;
    let end = loader.symbol("zboot_bench_reflash_done")?;
    let ranges = dir.join("code-ranges.txt");
    write_code_ranges(loader, &ranges)?;
    let mut qemu = Qemu::new(&loader.image);
    if adma2 {
        qemu = qemu.emmc2_adma2();
    }
    let run = qemu
        .dtb(dtb)
        .emmc(&emmc)
        .usb_stick(&stick)
        .plugin(plugin, &plugin_arguments(start, end, Some(&ranges)))
        // Every SCSI command's data length: the bytes the stick sent.
        .extra_args(&["-trace", "enable=usb_msd_cmd_submit"])
        .icount(Icount::Work)
        .timeout(Duration::from_mins(10))
        .run()?;
    let count = run
        .instruction_count()
        .with_context(|| format!("no count ({:?}):\n{}", run.ending, run.console))?;
    let written_line = run
        .console
        .lines()
        .find(|line| line.contains("recovery: image written"))
        .context("the reflash did not complete")?;
    let written: u64 = written_line
        .split(", ")
        .find_map(|part| part.strip_suffix(" bytes written"))
        .and_then(|number| number.parse().ok())
        .context("no byte count")?;
    let image_size = std::fs::metadata(&zi)?.len();
    ensure!(
        end != loader.symbol("zboot_bench_marker")?,
        "the two benchmark markers were folded into one address"
    );
    println!(
        "USB recovery (a blank {} MiB eMMC from a .zi of a zbctl disk create image, stick behind QEMU's hub)",
        std::fs::metadata(&golden)?.len() >> 20
    );
    println!("  .zi size:                                   {image_size:>10} bytes");
    let inspect: serde_json::Value = serde_json::from_str(&zbctl(&[
        "image",
        "inspect",
        "--json",
        "--regions",
        &text(&zi),
    ])?)?;
    let bytes_of = |field: &str| -> u64 {
        inspect["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|partition| partition[field].as_u64())
            .sum()
    };
    let (data, fill) = (bytes_of("data_bytes"), bytes_of("fill_bytes"));
    println!(
        "  image used bytes (data + fill):             {:>10} bytes ({data} data, {fill} fill; {} free, skipped)",
        data + fill,
        bytes_of("skip_bytes"),
    );
    ensure!(data > 0, "the image inspection reported no data bytes");
    println!(
        "  bytes written to the eMMC (data + fill):    {written:>10} bytes of {} on the disk",
        std::fs::metadata(&golden)?.len()
    );
    print_data_path(&run.console)?;
    println!("  entry -> reflash done, icount work          {count:>10} instructions");
    let per_mib_written = count * (1 << 20) / written.max(1);
    println!(
        "  per MiB written:                            {per_mib_written:>10} instructions (verify pass + write pass)",
    );
    let report = run
        .insn_report()
        .with_context(|| format!("the plugin's report is incomplete:\n{}", run.qemu_log))?;
    print_split(&report, count, written)?;
    let stick_read = stick_bytes(&run.qemu_log, image_size)?;
    Ok(ReflashResult {
        phase: Phase::from_report(
            "USB reflash",
            Io {
                emmc_written: written,
                usb_read: stick_read,
                ..Io::default()
            },
            &report,
        ),
        per_mib_written,
        split: report.split,
    })
}

/// The bytes the stick sent before the end marker (QEMU's usb-storage trace), printed
/// against the image's size.
fn stick_bytes(qemu_log: &str, image_size: u64) -> Result<u64> {
    let stick_read = cm4_model::usb_bytes_read(qemu_log)
        .context("QEMU traced no usb-storage command before the end marker")?;
    // The verify pass reads every chunk from the stick; the write pass only what the
    // loader's payload cache did not hold.
    ensure!(
        stick_read >= image_size,
        "the stick sent {stick_read} bytes, less than the {image_size}-byte image"
    );
    println!(
        "  bytes read from the stick (QEMU's usb-storage trace): {stick_read} ({}.{:02} x the .zi: \
         the verify pass reads it, the write pass what RAM did not hold)",
        stick_read / image_size.max(1),
        stick_read * 100 / image_size.max(1) % 100
    );
    Ok(stick_read)
}

/// Prints how EMMC2 moved data (the loader's `EMMC2: ADMA2 (...)` or `EMMC2: PIO (...)`
/// line) and, after a reflash, where its write pass took the payload from.
fn print_data_path(console: &str) -> Result<()> {
    let mode = console
        .lines()
        .find_map(|line| {
            line.split_once("EMMC2: ")
                .map(|(_, mode)| mode)
                .filter(|mode| mode.starts_with("ADMA2") || mode.starts_with("PIO"))
        })
        .context("the loader did not log how EMMC2 moves data")?;
    println!("  EMMC2 data path (the loader's log): {mode}");
    if let Some(line) = console.lines().find_map(|line| {
        line.split_once("recovery: write pass: ")
            .map(|(_, rest)| rest)
    }) {
        println!("  write pass: {line}");
    }
    Ok(())
}

/// Prints the plugin's split of the reflash's instructions by where they ran.
fn print_split(report: &InsnReport, count: u64, written: u64) -> Result<()> {
    check_split(report, count)?;
    println!("  where those instructions ran (vCPU 0, by the function they lie in):");
    render_split(
        &mut std::io::stdout(),
        &report.split,
        Some(("written", written)),
    )?;
    render_vcpus(&mut std::io::stdout(), "", report)?;
    Ok(())
}

/// The plugin adds whole blocks, the count corrects for where the markers sit in
/// theirs: the split and the count agree to within a block.
fn check_split(report: &InsnReport, count: u64) -> Result<()> {
    ensure!(!report.split.is_empty(), "the plugin printed no split");
    let sum: u64 = report.split.iter().map(|(_, count)| count).sum();
    ensure!(
        sum.abs_diff(count) < 1000,
        "the split ({sum}) does not add up to the count ({count})"
    );
    Ok(())
}

fn fallback_demo(timeout: u64) -> Result<()> {
    let dir = workspace_root().join("target").join("zboot").join("demo");
    let image = demo_disk(&dir, &[("A", "bad"), ("B", "bad"), ("SAFE", "good")], None)?;
    let loader = LoaderImage::get(LoaderBuild::Release)?;
    let dtb = minimal_dtb()?;
    println!("zboot demo: slots A and B hold kernels whose boots fail (they reset before");
    println!(
        "user space would run `zbctl mark-good`); SAFE's boots succeed. max_boot_failure = 3."
    );
    println!("eMMC image: {}\n", image.display());
    for boot in 1..=8 {
        println!("=== power-on {boot} ===");
        let run = Qemu::new(&loader.image)
            .dtb(&dtb)
            .emmc(&image)
            .echo(true)
            .stop_at(HALT_TEXT)
            .timeout(Duration::from_secs(timeout))
            .run()?;
        let status = zbctl(&["status", "--image", image.to_str().context("image path")?])?;
        println!(
            "--- zbctl status after power-on {boot} ({:?}) ---\n{status}",
            run.ending
        );
        ensure!(
            run.ending == Ending::GuestReset,
            "boot {boot} did not end in a reset"
        );
        if run.console.contains("zboot.slot=SAFE") {
            println!("SAFE booted after A and B used their attempts: the fallback is complete.");
            return Ok(());
        }
    }
    bail!("SAFE was not reached in 8 boots")
}

/// The second act: a bricked unit (blank eMMC) is reflashed from a USB
/// stick, resets, and boots A.
fn recovery_demo(timeout: u64) -> Result<()> {
    let dir = workspace_root()
        .join("target")
        .join("zboot")
        .join("demo-recovery");
    let (golden, _, stick) = recovery_inputs(&dir)?;
    let text = |path: &std::path::Path| path.display().to_string();
    let emmc = dir.join("bricked.img");
    std::fs::File::create(&emmc)?.set_len(std::fs::metadata(&golden)?.len())?;
    let loader = LoaderImage::get(LoaderBuild::Release)?;
    let dtb = minimal_dtb()?;
    println!();
    println!("zboot demo, part 2: a bricked unit. Its eMMC is blank (all zeros); a USB stick");
    println!("made with `zbctl image convert` + `zbctl usb create` holds the image.");
    println!(
        "eMMC image: {}, stick: {}\n",
        emmc.display(),
        stick.display()
    );
    println!("=== power-on with the stick ===");
    let run = Qemu::new(&loader.image)
        .dtb(&dtb)
        .emmc(&emmc)
        .usb_stick(&stick)
        .echo(true)
        .timeout(Duration::from_secs(timeout.max(300)))
        .run()?;
    ensure!(
        run.ending == Ending::GuestReset && run.console.contains("recovery: image written"),
        "the reflash did not complete ({:?})",
        run.ending
    );
    println!("=== power-on without the stick ===");
    let run = Qemu::new(&loader.image)
        .dtb(&dtb)
        .emmc(&emmc)
        .echo(true)
        .timeout(Duration::from_secs(timeout))
        .run()?;
    let status = zbctl(&["status", "--image", &text(&emmc)])?;
    println!("--- zbctl status ---\n{status}");
    ensure!(
        run.console.contains("zboot.slot=A"),
        "A did not boot after the reflash"
    );
    println!("The unit was reflashed from the stick and boots A: recovery is complete.");
    Ok(())
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn run_checked(mut command: Command, what: &str) -> Result<()> {
    eprintln!("==> {what}");
    let status = command
        .status()
        .with_context(|| format!("starting: {what}"))?;
    ensure!(status.success(), "{what}: failed ({status})");
    Ok(())
}

fn test(cargo_args: &[String]) -> Result<()> {
    Tools::qemu()?;
    for program in ["dtc", "cc"] {
        Tools::require(program)?;
    }
    let mut command = cargo();
    // The default members: every crate but the loader, which only builds
    // for aarch64-unknown-none (the QEMU tests build it themselves).
    command.arg("test").args(cargo_args);
    run_checked(command, "cargo test")
}

fn bench(pio: bool) -> Result<()> {
    let loader = LoaderImage::get(LoaderBuild::Release)?;
    let plugin = insn_count_plugin()?;
    let dtb = minimal_dtb()?;
    let start = loader.symbol("_start")?;
    let end = loader.symbol("zboot_bench_marker")?;
    let arguments = plugin_arguments(start, end, None);

    println!("zboot benchmark (QEMU raspi4b, vCPU 0, release build)");
    println!(
        "  zboot.img size:                         {:>10} bytes",
        loader.image_size()?
    );
    banner_bench(&loader, &plugin, &dtb, &arguments)?;
    println!("  (icount realtime - work = instructions spent waiting on timers/devices)");
    println!(
        "  (every vCPU's work counts; the parked cores' spin in QEMU's boot stub at \
         0x{:x}..0x{:x} is left out: with cores 1-3 parked the figures are vCPU 0's)",
        zboot_qemu_tests::insn_count::PARKING_STUB.start,
        zboot_qemu_tests::insn_count::PARKING_STUB.end
    );
    // Each part reports what it could measure; one that fails does not hide the others,
    // and the bench fails at the end when a figure is missing.
    let mut measured = Measured {
        image_bytes: Some(loader.image_size()?),
        image_split: image_split(&loader)?,
        ..Measured::default()
    };
    println!(
        "  zboot.img by crate (code; data apart): {}",
        measured
            .image_split
            .iter()
            .take(8)
            .map(|(name, bytes)| format!("{name} {bytes}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut phases = Vec::new();
    let mut failures = Vec::new();
    let adma2 = !pio;
    match storage_bench(&loader, &plugin, &dtb, adma2) {
        Ok(result) => {
            measured.storage_path = Some(result.instructions);
            measured.storage_split = result.split;
            phases.push(result.phase);
        }
        Err(error) => failures.push(format!("storage path: {error:#}")),
    }
    match reflash_bench(&loader, &plugin, &dtb, adma2) {
        Ok(result) => {
            measured.reflash_per_mib = Some(result.per_mib_written);
            measured.reflash_split = result.split;
            phases.push(result.phase);
        }
        Err(error) => failures.push(format!("USB reflash: {error:#}")),
    }
    println!();
    println!("zboot against U-Boot: the same Debian kernel, initramfs and card (docs/linux.md)");
    match zboot_qemu_tests::linux::compare_with_u_boot(&mut std::io::stdout(), &|args| zbctl(args))
    {
        Ok(comparison) => {
            measured.u_boot_ratio = Some(comparison.ratio());
            measured
                .boot_split
                .clone_from(&comparison.zboot.report.split);
            phases.splice(0..0, boot_phases(&comparison));
        }
        Err(error) => failures.push(format!("zboot against U-Boot: {error:#}")),
    }
    let mut out = std::io::stdout();
    println!();
    cm4_model::render(&phases, &mut out)?;
    println!();
    let missing = cm4_model::render_targets(&measured, &mut out)?;
    for failure in &failures {
        println!("NOT MEASURED: {failure}");
    }
    ensure!(
        failures.is_empty() && missing.is_empty(),
        "the bench could not measure: {}",
        failures
            .iter()
            .map(String::as_str)
            .chain(missing.iter().copied())
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

/// Entry to the banner's end, with no card: TCG, icount work and icount realtime.
fn banner_bench(
    loader: &LoaderImage,
    plugin: &std::path::Path,
    dtb: &std::path::Path,
    arguments: &str,
) -> Result<()> {
    let modes: [(&str, Option<Icount>); 3] = [
        ("entry -> banner done, TCG", None),
        ("entry -> banner done, icount work", Some(Icount::Work)),
        (
            "entry -> banner done, icount realtime",
            Some(Icount::Realtime),
        ),
    ];
    for (label, icount) in modes {
        let mut qemu = Qemu::new(&loader.image)
            .dtb(dtb)
            .plugin(plugin, arguments)
            .stop_at(HALT_TEXT)
            .timeout(Duration::from_mins(2));
        if let Some(mode) = icount {
            qemu = qemu.icount(mode);
        }
        let run = qemu.run()?;
        let count = run.instruction_count().with_context(|| {
            format!(
                "the plugin printed no count ({:?}); QEMU log:\n{}",
                run.ending, run.qemu_log
            )
        })?;
        println!("  {label:<40} {count:>10} instructions");
    }
    Ok(())
}

/// The real-kernel boot's phases: zboot's (the bytes from its console), and U-Boot's
/// beside it (its bytes from the card's trace: its console says less).
fn boot_phases(comparison: &zboot_qemu_tests::linux::UBootComparison) -> [Phase; 2] {
    [
        Phase::from_report(
            "real-kernel boot (zboot, Debian's kernel + initramfs)",
            Io {
                emmc_read: comparison.zboot_reads.total,
                ..Io::default()
            },
            &comparison.zboot.report,
        ),
        Phase::from_report(
            "real-kernel boot (U-Boot, for comparison)",
            Io {
                emmc_read: comparison.u_boot.blocks_read * 512,
                ..Io::default()
            },
            &comparison.u_boot.report,
        ),
    ]
}

/// What the storage bench measured.
struct StorageResult {
    phase: Phase,
    /// Every vCPU's instructions from entry to the kernel (icount work).
    instructions: u64,
    split: Vec<(String, u64)>,
}

/// Boots slot A (the stand-in kernel plus a 16 MiB initrd) and reports the
/// storage path's cost: instructions from entry to the kernel's first
/// instruction, and storage commands per MiB for the large file.
fn storage_bench(
    loader: &LoaderImage,
    plugin: &std::path::Path,
    dtb: &std::path::Path,
    adma2: bool,
) -> Result<StorageResult> {
    const INITRD_MIB: usize = 16;
    const KERNEL_ENTRY: u64 = 0x100_0000;
    let dir = workspace_root().join("target").join("zboot").join("bench");
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.img");
    // Incompressible-looking bytes (an LCG), like a real initramfs.
    let mut seed = 0x2545_f491_u32;
    let bytes: Vec<u8> = (0..INITRD_MIB << 20)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 24) as u8
        })
        .collect();
    std::fs::write(&initrd, bytes)?;
    let image = demo_disk(
        &dir,
        &[("A", "good"), ("B", "good"), ("SAFE", "good")],
        Some(&initrd),
    )?;
    let start = loader.symbol("_start")?;
    let ranges = dir.join("code-ranges.txt");
    write_code_ranges(loader, &ranges)?;
    println!("storage path (slot A: stand-in kernel + {INITRD_MIB} MiB initrd on the EMMC2 card)");
    let mut console = String::new();
    let mut report = InsnReport::default();
    for (label, mode) in [("TCG", None), ("icount work", Some(Icount::Work))] {
        // The split comes from the exact (icount) run.
        let arguments = plugin_arguments(start, KERNEL_ENTRY, mode.map(|_| ranges.as_path()));
        let mut qemu = Qemu::new(&loader.image)
            .dtb(dtb)
            .emmc(&image)
            .plugin(plugin, &arguments)
            .timeout(Duration::from_mins(5));
        if let Some(mode) = mode {
            qemu = qemu.icount(mode);
        }
        if adma2 {
            qemu = qemu.emmc2_adma2();
        }
        let run = qemu.run()?;
        let count = run
            .instruction_count()
            .with_context(|| format!("no count ({:?}):\n{}", run.ending, run.console))?;
        println!("  entry -> kernel entry, {label:<27} {count:>10} instructions");
        report = run
            .insn_report()
            .with_context(|| format!("the plugin's report is incomplete:\n{}", run.qemu_log))?;
        console = run.console;
    }
    print_data_path(&console)?;
    for file in ["kernel.img", "initrd.img"] {
        let line = console
            .lines()
            .find(|line| line.contains(&format!("A/{file}:")))
            .with_context(|| format!("no load report for {file}"))?;
        let summary = ["BLAKE3 OK; ", "SHA-256 OK; "]
            .iter()
            .find_map(|check| line.split_once(check))
            .map_or(line, |(_, rest)| rest);
        println!("  {file:<12} {summary}");
    }
    let reads = BootReads::parse(&console).with_context(|| {
        format!("the console has no load report (\"blocks read since power-on\"):\n{console}")
    })?;
    check_split(&report, report.instructions)?;
    println!(
        "  where those instructions ran (icount work, every vCPU, by the function they lie in):"
    );
    render_split(
        &mut std::io::stdout(),
        &report.split,
        Some(("read", reads.total)),
    )?;
    render_vcpus(&mut std::io::stdout(), "", &report)?;
    println!(
        "  read from the card (the loader's console): {} bytes, {} of them the slot's files",
        reads.total,
        reads.total - reads.other()
    );
    Ok(StorageResult {
        phase: Phase::from_report(
            "storage path (stand-in kernel + 16 MiB initrd)",
            Io {
                emmc_read: reads.total,
                ..Io::default()
            },
            &report,
        ),
        instructions: report.instructions,
        split: report.split,
    })
}

/// Seconds each target runs in a smoke run.
const FUZZ_SMOKE_SECONDS: u32 = 3;

fn fuzz(smoke: bool, runs: u64, targets: &[String]) -> Result<()> {
    let dir = workspace_root().join("recovery-proto/fuzz");
    // cargo-fuzz through the rustup proxy: `+nightly` for full runs; the smoke run uses the
    // toolchain rust-toolchain.toml pins (sanitizers need nightly, coverage does not).
    let fuzz_command = || {
        let mut command = Command::new("cargo");
        if !smoke {
            command.arg("+nightly");
        }
        command.arg("fuzz").current_dir(&dir);
        command
    };
    let targets = if targets.is_empty() {
        let output = fuzz_command()
            .arg("list")
            .output()
            .context("running cargo fuzz list (scripts/setup installs cargo-fuzz)")?;
        ensure!(
            output.status.success(),
            "cargo fuzz list: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)?
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        targets.to_vec()
    };
    ensure!(!targets.is_empty(), "no fuzz targets");
    for target in &targets {
        // New inputs go to a scratch corpus: the repository keeps only the seeds.
        let scratch = tempfile::tempdir()?;
        let mut command = fuzz_command();
        command.arg("run");
        if smoke {
            command.args(["--sanitizer", "none"]);
        }
        command.arg(target).arg(scratch.path());
        let seeds = dir.join("corpus").join(target);
        if seeds.is_dir() {
            command.arg(seeds);
        }
        command.arg("--");
        if smoke {
            command.arg(format!("-max_total_time={FUZZ_SMOKE_SECONDS}"));
        } else {
            command.arg(format!("-runs={runs}"));
        }
        run_checked(command, &format!("fuzz {target}"))?;
    }
    Ok(())
}

fn deb(arches: &[zboot_tools::deb::Arch], test: bool) -> Result<()> {
    use zboot_tools::deb::Arch;
    let root = workspace_root();
    let out = root.join("target").join("zboot").join("deb");
    std::fs::create_dir_all(&out)?;
    let arches = if arches.is_empty() {
        vec![Arch::Arm64, Arch::Amd64]
    } else {
        arches.to_vec()
    };
    for arch in arches {
        let deb = zboot_tools::deb::build(&root, arch, &out)?;
        println!("{}", deb.display());
        if Command::new("lintian").arg("--version").output().is_ok() {
            let mut lintian = Command::new("lintian");
            lintian.args(["--fail-on", "error"]);
            lintian.arg(&deb);
            run_checked(lintian, "lintian")?;
        } else {
            println!("lintian not installed: package not checked (scripts/setup installs it)");
        }
        if test && arch == Arch::Arm64 {
            test_shipped_binary(&deb)?;
        }
    }
    Ok(())
}

/// The zbctl tests that cover TLS, resume, refusal and the state commands, run on the
/// arm64 binary as the package ships it, under Debian's qemu-user.
fn test_shipped_binary(deb: &std::path::Path) -> Result<()> {
    let unpacked = deb.with_extension("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    let mut extract = Command::new("dpkg-deb");
    extract.arg("--extract").arg(deb).arg(&unpacked);
    run_checked(extract, "dpkg-deb --extract")?;
    let binary = unpacked.join("usr/bin/zbctl");
    let under_test = format!(
        "qemu-aarch64 -L /usr/aarch64-linux-gnu {}",
        binary.display()
    );
    let mut version = Command::new("sh");
    version.args(["-c", &format!("{under_test} --version")]);
    run_checked(version, "the packaged zbctl under qemu-aarch64")?;
    let mut tests = cargo();
    tests
        .args([
            "test",
            "-p",
            "zboot-tools",
            "--test",
            "update",
            "--test",
            "zbctl",
        ])
        .env("ZBCTL_UNDER_TEST", &under_test);
    run_checked(tests, "zbctl tests on the packaged arm64 binary")
}

fn ci() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run_checked(fmt, "cargo fmt --all --check")?;

    let mut clippy_host = cargo();
    clippy_host.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    run_checked(clippy_host, "cargo clippy (host crates)")?;

    for features in [None, Some("qemu-test")] {
        let mut clippy_loader = cargo();
        clippy_loader.args([
            "clippy",
            "--package",
            "zboot-loader",
            "--target",
            "aarch64-unknown-none",
        ]);
        clippy_loader.args(["--package", "hal-bcm2711", "--package", "recovery-proto"]);
        clippy_loader.args(["--package", "zboot-test-kernel"]);
        if let Some(features) = features {
            clippy_loader.args(["--features", &format!("zboot-loader/{features}")]);
        }
        clippy_loader.args(["--", "-D", "warnings"]);
        run_checked(clippy_loader, "cargo clippy (aarch64-unknown-none)")?;
    }

    let mut loader = cargo();
    loader.args(["build", "--release", "--package", "zboot-loader"]);
    loader.args(["--target", "aarch64-unknown-none"]);
    run_checked(loader, "loader build for aarch64-unknown-none")?;

    fuzz(true, 0, &[])?;

    test(&[])?;

    // The packages, lintian, and the shipped arm64 binary's tests under qemu-aarch64.
    deb(&[], true)
}
