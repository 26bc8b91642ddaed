//! A real Linux under zboot: Debian's arm64 kernel and BCM2711 DTB, an
//! initramfs that confirms the boot with `zbctl mark-good`, and the
//! comparison with Debian's U-Boot on the same card (docs/linux.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, ensure};

use crate::build::workspace_root;

/// Kernel command-line words every Linux boot needs on QEMU `raspi4b`:
/// the PL011 console, no gating of clocks QEMU does not model, and no probe
/// of the BCM2711 L2 interrupt and I2C controllers QEMU lacks (their drivers
/// wait on hardware that never answers).
pub const KERNEL_COMMAND_LINE: &str = "console=ttyAMA0,115200 clk_ignore_unused \
     initcall_blacklist=brcmstb_l2_driver_init,brcmstb_i2c_driver_init";

/// The environment variable that turns "skip: the Debian packages cannot be
/// fetched" into a failure (CI sets it: there the Linux tests must run).
pub const REQUIRE_VARIABLE: &str = "ZBOOT_REQUIRE_LINUX";

/// What `scripts/fetch-linux` leaves in `target/linux/`.
#[derive(Clone, Debug)]
pub struct LinuxFiles {
    /// `target/linux`.
    pub dir: PathBuf,
    /// Debian's `vmlinuz`: an uncompressed arm64 Image.
    pub kernel: PathBuf,
    /// `bcm2711-rpi-4-b.dtb` without the emmc2 regulator supplies (QEMU has none).
    pub dtb: PathBuf,
    /// `u-boot-rpi`'s `rpi_arm64/u-boot.bin`.
    pub u_boot: PathBuf,
    /// `busybox-static`'s `/bin/busybox`.
    pub busybox: PathBuf,
    /// `modules/lib/modules/<release>`: the kept modules with modules.dep.
    pub modules: PathBuf,
    /// Module names `/init` loads, in order.
    pub modules_to_load: PathBuf,
    /// A Debian arm64 root (`debootstrap --foreign --variant=minbase`), archived with
    /// GNU tar as root with owners, device nodes, xattrs and ACLs
    /// (`scripts/fetch-debian-root`).
    pub debian_root: PathBuf,
    /// `raspi-firmware`'s BCM2711 firmware files (`start4.elf`, `fixup4.dat`, ...), as a
    /// stock boot partition carries them.
    pub firmware: PathBuf,
}

/// Why the Linux files are not there.
#[derive(Debug)]
pub enum Unavailable {
    /// `scripts/fetch-linux` failed (no network, no Debian archive): a reason
    /// to skip, unless [`REQUIRE_VARIABLE`] is set.
    FetchFailed(String),
}

impl LinuxFiles {
    /// The files, fetched by `scripts/fetch-linux` when missing (once per process).
    pub fn get() -> Result<Self, Unavailable> {
        static FILES: OnceLock<Result<LinuxFiles, String>> = OnceLock::new();
        FILES
            .get_or_init(|| Self::fetch().map_err(|error| format!("{error:#}")))
            .clone()
            .map_err(Unavailable::FetchFailed)
    }

    /// The files, or `None` after printing why the caller (a test) is skipped.
    ///
    /// # Panics
    /// Instead of skipping, when [`REQUIRE_VARIABLE`] is set.
    pub fn or_skip(test: &str) -> Option<Self> {
        match Self::get() {
            Ok(files) => Some(files),
            Err(Unavailable::FetchFailed(reason)) => {
                assert!(
                    std::env::var_os(REQUIRE_VARIABLE).is_none(),
                    "{REQUIRE_VARIABLE} is set but the Linux files cannot be fetched: {reason}"
                );
                // Straight to the process's stderr: the test harness
                // captures print!/eprint! of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: Debian's kernel/busybox/U-Boot packages cannot be fetched \
                     (scripts/fetch-linux): {reason}"
                );
                None
            }
        }
    }

    fn fetch() -> Result<Self> {
        let root = workspace_root();
        let dir = root.join("target").join("linux");
        // Always: it returns at once when what is there matches what it fetches (its
        // module list included), without the network.
        let output = Command::new(root.join("scripts").join("fetch-linux"))
            .output()
            .context("running scripts/fetch-linux")?;
        ensure!(
            output.status.success(),
            "scripts/fetch-linux failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let modules_root = dir.join("modules").join("lib").join("modules");
        let modules = std::fs::read_dir(&modules_root)
            .with_context(|| format!("reading {}", modules_root.display()))?
            .next()
            .context("no kernel release under target/linux/modules")??
            .path();
        let files = Self {
            kernel: dir.join("Image"),
            dtb: dir.join("bcm2711-rpi-4-b-qemu.dtb"),
            u_boot: dir.join("u-boot.bin"),
            busybox: dir.join("busybox"),
            modules_to_load: dir.join("modules.load"),
            modules,
            debian_root: dir.join("debian-root.tar"),
            firmware: dir.join("firmware"),
            dir,
        };
        for file in [
            &files.kernel,
            &files.dtb,
            &files.u_boot,
            &files.busybox,
            &files.debian_root,
            &files.firmware.join("start4.elf"),
        ] {
            ensure!(
                file.is_file(),
                "{} is missing: run scripts/fetch-linux --force",
                file.display()
            );
        }
        Ok(files)
    }

    /// The kernel release (`6.1.0-…-arm64`).
    pub fn release(&self) -> String {
        self.modules
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// `zbctl` for the device: the binary the arm64 Debian package ships (`cargo xtask deb`,
/// docs/update.md), HTTPS included: the `dist` profile for `aarch64-unknown-linux-gnu`,
/// ring's C compiled and the binary linked by Debian's `gcc-aarch64-linux-gnu`. It is
/// dynamically linked against glibc; the initramfs carries the libraries it needs from the
/// Debian arm64 root ([`LinuxFiles::debian_root`]). Built once per process.
pub fn device_zbctl() -> Result<PathBuf> {
    static ZBCTL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ZBCTL
        .get_or_init(|| build_device_zbctl().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

const DEVICE_TARGET: &str = "aarch64-unknown-linux-gnu";
/// The cross compiler and linker, as `tools/src/deb.rs` uses them.
const DEVICE_GCC: &str = "aarch64-linux-gnu-gcc";

fn build_device_zbctl() -> Result<PathBuf> {
    let root = workspace_root();
    // Its own target directory, like the loader: an outer `cargo test` holds
    // the workspace's.
    let target_dir = root.join("target").join("device");
    ensure!(
        Command::new(DEVICE_GCC).arg("--version").output().is_ok(),
        "{DEVICE_GCC} not found: the device zbctl needs Debian's gcc-aarch64-linux-gnu \
         (scripts/setup installs it)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--profile", "dist", "--package", "zboot-tools"])
        .args(["--bin", "zbctl", "--target", DEVICE_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CC_aarch64_unknown_linux_gnu", DEVICE_GCC)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", DEVICE_GCC)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("running cargo to build zbctl for the device")?;
    ensure!(
        status.success(),
        "building zbctl for {DEVICE_TARGET} failed: {status} (rustup target add {DEVICE_TARGET})"
    );
    Ok(target_dir.join(DEVICE_TARGET).join("dist").join("zbctl"))
}

/// The shared objects the device zbctl loads (its `DT_NEEDED`, and the dynamic loader its
/// `PT_INTERP` names, `/lib/ld-linux-aarch64.so.1`), as Debian's libc6 and libgcc-s1
/// install them under `/usr/lib/aarch64-linux-gnu`.
const DEVICE_LIBRARIES: [&str; 4] = [
    "ld-linux-aarch64.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
];

/// [`DEVICE_LIBRARIES`] taken out of the Debian arm64 root's tarball: (name, bytes).
fn device_libraries(files: &LinuxFiles) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let dir = tempfile::tempdir()?;
    let members: Vec<String> = DEVICE_LIBRARIES
        .iter()
        .map(|name| format!("./usr/lib/aarch64-linux-gnu/{name}"))
        .collect();
    let output = Command::new("tar")
        .arg("-xf")
        .arg(&files.debian_root)
        .arg("-C")
        .arg(dir.path())
        .args(&members)
        .output()
        .context("running tar")?;
    ensure!(
        output.status.success(),
        "taking {} out of {} failed: {}",
        members.join(" "),
        files.debian_root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut libraries = Vec::new();
    for (name, member) in DEVICE_LIBRARIES.iter().zip(&members) {
        let path = dir.path().join(member);
        // A symbolic link would be followed on the host's file system, not the root's.
        ensure!(
            std::fs::symlink_metadata(&path)?.is_file(),
            "{member} in {} is not a regular file",
            files.debian_root.display()
        );
        libraries.push((*name, read(&path)?));
    }
    Ok(libraries)
}

/// The initramfs (`target/linux/initramfs.cpio.gz`): busybox, the modules,
/// the device zbctl with its libraries and `qemu-tests/linux/init`. Built once per process.
pub fn initramfs(files: &LinuxFiles) -> Result<PathBuf> {
    static INITRAMFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INITRAMFS
        .get_or_init(|| build_initramfs(files).map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_initramfs(files: &LinuxFiles) -> Result<PathBuf> {
    let zbctl = device_zbctl()?;
    let init = workspace_root()
        .join("qemu-tests")
        .join("linux")
        .join("init");
    let mut archive = Cpio::default();
    for dir in [
        "bin", "dev", "etc", "lib", "mnt", "proc", "sys", "tmp", "sbin", "usr",
    ] {
        archive.directory(dir);
    }
    archive.device("dev/console", 0o020_600, 5, 1);
    archive.file("init", 0o755, &read(&init)?);
    archive.file("bin/busybox", 0o755, &read(&files.busybox)?);
    archive.symlink("bin/sh", "busybox");
    archive.file("bin/zbctl", 0o755, &read(&zbctl)?);
    // In /lib: the loader's path, and a directory glibc's loader searches without a cache.
    for (name, bytes) in device_libraries(files)? {
        archive.file(&format!("lib/{name}"), 0o755, &bytes);
    }
    archive.file("etc/modules.load", 0o644, &read(&files.modules_to_load)?);
    archive.directory("lib/modules");
    archive.tree(&files.modules, &format!("lib/modules/{}", files.release()))?;
    let cpio = archive.finish();

    let output = files.dir.join("initramfs.cpio.gz");
    let mut gzip = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&output)?)
        .spawn()
        .context("running gzip")?;
    gzip.stdin
        .take()
        .context("gzip stdin")?
        .write_all(&cpio)
        .context("feeding gzip")?;
    let status = gzip.wait()?;
    ensure!(status.success(), "gzip failed: {status}");
    Ok(output)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A cpio archive in the "newc" format the kernel unpacks
/// (`Documentation/driver-api/early-userspace/buffer-format.rst`): a
/// 110-byte ASCII header, the NUL-terminated name and the data, each padded
/// to 4 bytes; the last entry is `TRAILER!!!`.
#[derive(Debug, Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, device: (u32, u32), data: &[u8]) {
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040_000 == 0o040_000 { 2 } else { 1 },
            0, // mtime: reproducible archives
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,        // devmajor
            0,        // devminor
            device.0, // rdevmajor
            device.1, // rdevminor
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn directory(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | permissions, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120_777, (0, 0), target.as_bytes());
    }

    fn device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, mode, (major, minor), &[]);
    }

    /// Adds `source`'s files and directories under `name`, in sorted order.
    fn tree(&mut self, source: &Path, name: &str) -> Result<()> {
        self.directory(name);
        let mut entries = std::fs::read_dir(source)
            .with_context(|| format!("reading {}", source.display()))?
            .collect::<std::io::Result<Vec<_>>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let child = format!("{name}/{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                self.tree(&entry.path(), &child)?;
            } else {
                self.file(&child, 0o644, &read(&entry.path())?);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.next_inode = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// The `zbctl disk create` arguments for a card whose slots all hold Debian's
/// kernel and the initramfs, with `extra_command_line[slot]` appended to
/// that slot's command line. The DTB is not a slot file: Debian's has an
/// empty `/memory` node that the boot firmware (here QEMU, from `-dtb`)
/// fills in, so the kernel gets the firmware's tree, completed by zboot.
pub fn disk_create_arguments(
    files: &LinuxFiles,
    initramfs: &Path,
    loader: &Path,
    output: &Path,
    disk_id: &str,
    extra_command_line: &[(&str, &str)],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "disk",
        "create",
        "--output",
        &output.display().to_string(),
        // Three slots of a 32 MiB kernel and its initramfs need a larger
        // boot partition than the default 64 MiB.
        "--size",
        "512M",
        "--boot-size",
        "192M",
        "--disk-id",
        disk_id,
        "--loader",
        &loader.display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    for slot in ["A", "B", "SAFE"] {
        args.push("--slot".into());
        args.push(format!(
            "{slot}:kernel={},initrd={},version=1",
            files.kernel.display(),
            initramfs.display()
        ));
        let extra = extra_command_line
            .iter()
            .find(|(name, _)| *name == slot)
            .map_or("", |(_, words)| words);
        args.push("--cmdline".into());
        args.push(
            format!("{slot}={KERNEL_COMMAND_LINE} panic=-1 {extra}")
                .trim_end()
                .to_owned(),
        );
    }
    args
}

/// Fails unless the prerequisite programs exist.
pub fn require_programs() -> Result<()> {
    crate::Tools::qemu()?;
    for program in ["gzip", "mke2fs"] {
        crate::Tools::require(program)?;
    }
    Ok(())
}

/// Where both boot stages hand over: zboot's kernel base, and the address
/// the U-Boot script loads the Image to (`booti` runs it in place there:
/// 2 MiB-aligned, text_offset 0).
const KERNEL_ENTRY: u64 = 0x100_0000;
/// Where QEMU puts a raw (headerless) arm64 image given with `-kernel`, as
/// the Pi firmware does `kernel8.img`; U-Boot's rpi_arm64 `CONFIG_TEXT_BASE`.
const U_BOOT_ENTRY: u64 = 0x8_0000;
/// The partition-1 PARTUUID's disk id of the benchmark card.
const BENCH_DISK_ID: &str = "b3c4d5e6";

/// Debian's U-Boot with its built-in default environment edited in place
/// (same-length byte replacements, no CRC covers it): no boot delay, no
/// PCI/USB scan before booting, and `bootcmd` loading `boot.scr` from the
/// card (U-Boot's device 1, EMMC2) instead of scanning every device.
/// Without this it waits 2 s for a key, scans PCIe and USB, and would read
/// `uboot.env` only from device 0, the legacy SDHCI that has no card.
fn configured_u_boot(files: &LinuxFiles, output: &Path) -> Result<()> {
    let mut bytes = read(&files.u_boot)?;
    let edits: [(&[u8], &[u8]); 4] = [
        (b"bootdelay=2\0", b"bootdelay=0\0"),
        (
            b"preboot=pci enum; usb start;\0",
            b"preboot=                    \0",
        ),
        (
            b"bootcmd=run distro_bootcmd\0",
            b"bootcmd=run dhcpuboot     \0",
        ),
        (
            b"dhcpuboot=usb start; dhcp u-boot.uimg; bootm\0",
            // `source` runs the script at U-Boot's load address, 0x1000000.
            b"dhcpuboot=load mmc 1 1000000 boot.scr;source\0",
        ),
    ];
    for (from, to) in edits {
        ensure!(from.len() == to.len(), "edit changes the length");
        let at = bytes
            .windows(from.len())
            .position(|window| window == from)
            .with_context(|| {
                format!(
                    "{} has no `{}` in its default environment (another U-Boot version?)",
                    files.u_boot.display(),
                    String::from_utf8_lossy(from)
                )
            })?;
        bytes[at..at + to.len()].copy_from_slice(to);
    }
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))
}

/// `boot.scr`: what zboot does for slot A, as U-Boot commands (made with
/// `mkimage -T script` from u-boot-tools).
fn boot_script(dir: &Path, command_line: &str) -> Result<PathBuf> {
    crate::Tools::require("mkimage")?;
    let source = dir.join("boot.cmd");
    std::fs::write(
        &source,
        format!(
            "load mmc 1:1 0x{KERNEL_ENTRY:x} A/kernel.img\n\
             load mmc 1:1 0x3200000 A/initrd.img\n\
             setenv bootargs \"{command_line}\"\n\
             booti 0x{KERNEL_ENTRY:x} 0x3200000:${{filesize}} ${{fdt_addr}}\n"
        ),
    )?;
    let script = dir.join("boot.scr");
    let output = Command::new("mkimage")
        .args([
            "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-d",
        ])
        .arg(&source)
        .arg(&script)
        .output()
        .context("running mkimage (u-boot-tools)")?;
    ensure!(
        output.status.success(),
        "mkimage failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(script)
}

/// One benchmark run's numbers, from entry to the kernel's first instruction.
#[derive(Clone, Debug, Default)]
pub struct BootCost {
    /// Instructions every vCPU executed, the parked cores' spin left out (the
    /// `insn_count` plugin).
    pub instructions: u64,
    /// SD commands the card received (QEMU trace events
    /// `sdcard_normal_command` + `sdcard_app_command`).
    pub sd_commands: u64,
    /// 512-byte blocks the card sent (`sdcard_read_block`).
    pub blocks_read: u64,
    /// The plugin's whole report: per vCPU, and by function when asked.
    pub report: crate::insn_count::InsnReport,
    /// What the boot stage printed.
    pub console: String,
}

/// Runs QEMU until `end` is first executed, with the plugin and SD tracing
/// writing in order to one log file (so the events are cut at the kernel
/// entry). Not the harness's [`crate::Qemu`]: that one has no `-trace`.
fn measure(
    kernel: &Path,
    dtb: &Path,
    card: &Path,
    (start, ranges): (u64, Option<&Path>),
    icount: bool,
    scratch: &Path,
) -> Result<BootCost> {
    let plugin = crate::insn_count_plugin()?;
    let log = scratch.join("qemu.log");
    let console = scratch.join("console.log");
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new(crate::Tools::qemu()?);
    command
        .args([
            "-M",
            "raspi4b",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-dtb")
        .arg(dtb)
        .arg("-drive")
        .arg(format!(
            "if=none,id=card,format=raw,file={}",
            card.display()
        ))
        .args(["-device", "sd-card,drive=card,bus=/generic-sdhci/sd-bus"])
        .arg("-plugin")
        .arg(format!(
            "{},{}",
            plugin.display(),
            crate::insn_count::plugin_arguments(start, KERNEL_ENTRY, ranges)
        ))
        .args(["-d", "plugin", "-D"])
        .arg(&log);
    for event in [
        "sdcard_normal_command",
        "sdcard_app_command",
        "sdcard_read_block",
    ] {
        command.arg("-trace").arg(format!("enable={event}"));
    }
    if icount {
        command.args(["-icount", "shift=10,sleep=off"]);
    } else {
        command.args(["-accel", "tcg,thread=single"]);
    }
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting qemu-system-aarch64")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(10);
    let result = loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(mut cost) = parse_cost(&text) {
            cost.console = std::fs::read_to_string(&console).unwrap_or_default();
            break Ok(cost);
        }
        if child.try_wait()?.is_some() || std::time::Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the kernel entry 0x{KERNEL_ENTRY:x} was not reached; console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            ));
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The cost up to the plugin's report, once the whole report is in `log`.
fn parse_cost(log: &str) -> Option<BootCost> {
    let report = crate::insn_count::InsnReport::parse(log)?;
    let mut cost = BootCost::default();
    for line in log.lines() {
        if line.starts_with("sdcard_normal_command") || line.starts_with("sdcard_app_command") {
            cost.sd_commands += 1;
        } else if line.starts_with("sdcard_read_block") {
            cost.blocks_read += 1;
        } else if line.starts_with("zboot-insn-count: ") {
            break;
        }
    }
    cost.instructions = report.instructions;
    cost.report = report;
    Some(cost)
}

#[allow(clippy::cast_precision_loss)] // ratios of counts far below 2^52
fn ratio(zboot: u64, u_boot: u64) -> String {
    if u_boot == 0 {
        return "-".into();
    }
    format!("{:.3}", zboot as f64 / u_boot as f64)
}

/// What [`compare_with_u_boot`] measured, for the model and the targets.
#[derive(Clone, Debug)]
pub struct UBootComparison {
    /// zboot's `-icount shift=10` run, split by function.
    pub zboot: BootCost,
    /// U-Boot's `-icount shift=10` run.
    pub u_boot: BootCost,
    /// What zboot read from the card, from its console.
    pub zboot_reads: crate::cm4_model::BootReads,
}

impl UBootComparison {
    /// zboot's instructions over U-Boot's (`-icount shift=10`).
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    pub fn ratio(&self) -> f64 {
        self.zboot.instructions as f64 / self.u_boot.instructions.max(1) as f64
    }
}

/// zboot against Debian's U-Boot on the same card, booting the same Debian
/// kernel and initramfs (docs/linux.md): instructions from each one's entry
/// to the kernel's first instruction (plain TCG and `-icount shift=10`), SD
/// commands and blocks read, image sizes, and the zboot/U-Boot ratios; then
/// zboot's instructions by function and what it read from the card.
/// `zbctl` runs zbctl with the given arguments (the caller owns the tool).
///
/// # Errors
/// When the Debian packages cannot be fetched or a run fails.
pub fn compare_with_u_boot(
    out: &mut dyn Write,
    zbctl: &dyn Fn(&[&str]) -> Result<String>,
) -> Result<UBootComparison> {
    let files = LinuxFiles::get().map_err(|Unavailable::FetchFailed(reason)| {
        anyhow::anyhow!("the Debian packages cannot be fetched: {reason}")
    })?;
    require_programs()?;
    let loader = crate::LoaderImage::get(crate::LoaderBuild::Release)?;
    let initramfs = initramfs(&files)?;
    let dir = files.dir.join("bench");
    std::fs::create_dir_all(&dir)?;
    let card = dir.join("card.img");
    let args = disk_create_arguments(&files, &initramfs, &loader.image, &card, BENCH_DISK_ID, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    zbctl(&args)?;
    // The same words zboot hands slot A's kernel (zboot adds the last three).
    let command_line = format!(
        "{KERNEL_COMMAND_LINE} panic=-1 root=PARTUUID={BENCH_DISK_ID}-02 zboot.slot=A zboot.attempt=1"
    );
    let script = boot_script(&dir, &command_line)?;
    let status = Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(format!("{}@@{}", card.display(), 2048 * 512))
        .arg(&script)
        .arg("::boot.scr")
        .status()
        .context("running mcopy (mtools)")?;
    ensure!(status.success(), "mcopy boot.scr: {status}");
    let u_boot = dir.join("u-boot.bin");
    configured_u_boot(&files, &u_boot)?;

    // Each run gets a fresh copy of the card: zboot writes its state.
    let run = |kernel: &Path, start: (u64, Option<&Path>), icount: bool| -> Result<BootCost> {
        let copy = dir.join("run.img");
        std::fs::copy(&card, &copy)?;
        measure(kernel, &files.dtb, &copy, start, icount, &dir)
    };
    let zboot_start = loader.symbol("_start")?;
    let ranges = dir.join("code-ranges.txt");
    crate::insn_count::write_code_ranges(&loader, &ranges)?;
    let zboot_tcg = run(&loader.image, (zboot_start, None), false)?;
    let zboot_work = run(&loader.image, (zboot_start, Some(&ranges)), true)?;
    let u_boot_tcg = run(&u_boot, (U_BOOT_ENTRY, None), false)?;
    let u_boot_work = run(&u_boot, (U_BOOT_ENTRY, None), true)?;

    let zboot_size = loader.image_size()?;
    let u_boot_size = std::fs::metadata(&u_boot)?.len();
    let kernel_size = std::fs::metadata(&files.kernel)?.len();
    let initramfs_size = std::fs::metadata(&initramfs)?.len();
    writeln!(
        out,
        "zboot vs U-Boot (QEMU raspi4b, vCPU 0, entry -> kernel entry 0x{KERNEL_ENTRY:x}; \
         Debian {} Image {kernel_size} bytes + initramfs {initramfs_size} bytes from the EMMC2 card)",
        files.release()
    )?;
    writeln!(
        out,
        "  {:<34} {:>15} {:>15} {:>8}",
        "", "zboot", "U-Boot", "ratio"
    )?;
    let rows = [
        ("image size (bytes)", zboot_size, u_boot_size),
        (
            "instructions, TCG",
            zboot_tcg.instructions,
            u_boot_tcg.instructions,
        ),
        (
            "instructions, icount shift=10",
            zboot_work.instructions,
            u_boot_work.instructions,
        ),
        (
            "SD commands (CMD + ACMD)",
            zboot_work.sd_commands,
            u_boot_work.sd_commands,
        ),
        (
            "SD blocks read",
            zboot_work.blocks_read,
            u_boot_work.blocks_read,
        ),
    ];
    for (label, zboot, u_boot) in rows {
        writeln!(
            out,
            "  {label:<34} {zboot:>15} {u_boot:>15} {:>8}",
            ratio(zboot, u_boot)
        )?;
    }
    writeln!(
        out,
        "  (zboot's entry 0x{zboot_start:x}, U-Boot's 0x{U_BOOT_ENTRY:x}. Not identical work: \
         zboot also reads and writes the slot state and checks the digest (BLAKE3) of every slot file; \
         U-Boot runs its driver model, draws its console on the framebuffer too and verifies \
         nothing.)"
    )?;
    let zboot_reads = report_zboot_work(out, &zboot_work, &u_boot_work)?;
    Ok(UBootComparison {
        zboot: zboot_work,
        u_boot: u_boot_work,
        zboot_reads,
    })
}

/// Prints where zboot's instructions ran (by function and vCPU; U-Boot's vCPUs too) and
/// what zboot read from the card, from its console.
fn report_zboot_work(
    out: &mut dyn Write,
    zboot_work: &BootCost,
    u_boot_work: &BootCost,
) -> Result<crate::cm4_model::BootReads> {
    let zboot_reads =
        crate::cm4_model::BootReads::parse(&zboot_work.console).with_context(|| {
            format!(
                "zboot's console has no load report (\"blocks read since power-on\"):\n{}",
                zboot_work.console
            )
        })?;
    let split_sum: u64 = zboot_work.report.split.iter().map(|(_, count)| count).sum();
    // The plugin adds whole blocks, the count corrects for where the markers sit in
    // theirs: the two agree to within a block.
    ensure!(
        split_sum.abs_diff(zboot_work.instructions) < 1000,
        "zboot's split ({split_sum}) does not add up to its count ({})",
        zboot_work.instructions
    );
    writeln!(
        out,
        "  where zboot's instructions ran (icount shift=10, every vCPU, by the function they lie in):"
    )?;
    crate::insn_count::render_split(
        out,
        &zboot_work.report.split,
        Some(("read", zboot_reads.total)),
    )?;
    crate::insn_count::render_vcpus(out, "zboot ", &zboot_work.report)?;
    crate::insn_count::render_vcpus(out, "U-Boot ", &u_boot_work.report)?;
    let files: Vec<String> = zboot_reads
        .files
        .iter()
        .map(|(name, bytes)| format!("{name} {bytes}"))
        .collect();
    writeln!(
        out,
        "  zboot read from the card (its console): {} bytes: {}; other (partition table, FAT, \
         state, manifest, sector slack) {}",
        zboot_reads.total,
        files.join(", "),
        zboot_reads.other()
    )?;
    Ok(zboot_reads)
}
