//! Building what a QEMU run needs: the loader image, the DTB, the plugin.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail, ensure};
use object::{Object, ObjectSegment, ObjectSymbol};
use sha2::Digest as _;

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where harness outputs go (`target/zboot`).
fn output_dir() -> Result<PathBuf> {
    let dir = workspace_root().join("target").join("zboot");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Which loader build to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoaderBuild {
    /// The product: what goes on a CM4.
    Release,
    /// The product plus the `qemu-test` feature: semihosting exit codes and
    /// `zboot.test=` hooks read from the DTB command line.
    QemuTest,
    /// The QEMU test build with the build-time settings a product sets
    /// (docs/recovery.md): the test signing key built in
    /// ([`provisioned_key_files`]) and a recovery button on GPIO
    /// [`PROVISIONED_BUTTON_GPIO`], active high.
    QemuTestProvisioned,
    /// Not a loader: the tests' stand-in for Linux (`qemu-tests/test-kernel`),
    /// an arm64 Image that reports what zboot handed it and resets.
    TestKernel,
}

impl LoaderBuild {
    fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::QemuTest => "qemu-test",
            Self::QemuTestProvisioned => "qemu-test-provisioned",
            Self::TestKernel => "test-kernel",
        }
    }

    /// Cargo package and binary name.
    fn package_and_binary(self) -> (&'static str, &'static str) {
        match self {
            Self::Release | Self::QemuTest | Self::QemuTestProvisioned => ("zboot-loader", "zboot"),
            Self::TestKernel => ("zboot-test-kernel", "test-kernel"),
        }
    }
}

/// A built loader: the ELF (for symbols and debugging) and the raw image.
#[derive(Clone, Debug)]
pub struct LoaderImage {
    pub elf: PathBuf,
    pub image: PathBuf,
    /// The address the image is linked and loaded at (`_start`).
    pub load_address: u64,
    symbols: HashMap<String, u64>,
}

impl LoaderImage {
    /// The address of a global symbol of the loader.
    pub fn symbol(&self, name: &str) -> Result<u64> {
        self.symbols
            .get(name)
            .copied()
            .with_context(|| format!("symbol `{name}` not found in {}", self.elf.display()))
    }

    /// Every function of the loader with its address range, `(start, end,
    /// mangled name)`, from the ELF's symbol table (for split counts).
    pub fn functions(&self) -> Result<Vec<(u64, u64, String)>> {
        let data =
            std::fs::read(&self.elf).with_context(|| format!("reading {}", self.elf.display()))?;
        let file = object::File::parse(&*data)
            .with_context(|| format!("parsing {}", self.elf.display()))?;
        Ok(file
            .symbols()
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.size() > 0)
            .filter_map(|symbol| {
                let name = symbol.name().ok()?.to_owned();
                Some((symbol.address(), symbol.address() + symbol.size(), name))
            })
            .collect())
    }

    /// The size of `zboot.img` in bytes.
    pub fn image_size(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.image)
            .with_context(|| format!("reading {}", self.image.display()))?
            .len())
    }

    /// Builds the loader (once per process and flavour; later calls reuse it).
    pub fn get(build: LoaderBuild) -> Result<Self> {
        static BUILT: OnceLock<Mutex<HashMap<LoaderBuild, LoaderImage>>> = OnceLock::new();
        let mut images = BUILT
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .map_err(|_| anyhow::anyhow!("loader build lock poisoned"))?;
        if let Some(image) = images.get(&build) {
            return Ok(image.clone());
        }
        let image = Self::build(build)?;
        images.insert(build, image.clone());
        Ok(image)
    }

    fn build(build: LoaderBuild) -> Result<Self> {
        let root = workspace_root();
        // A target directory of its own: the loader can then be built while
        // an outer `cargo test` holds the workspace's build directory.
        // The provisioned build differs only in build-time environment
        // settings; its own directory keeps the two from rebuilding each
        // other.
        let target_dir = root.join("target").join(match build {
            LoaderBuild::QemuTestProvisioned => "loader-provisioned",
            _ => "loader",
        });
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--package",
                build.package_and_binary().0,
            ])
            .args(["--target", "aarch64-unknown-none"])
            .arg("--target-dir")
            .arg(&target_dir)
            // The outer cargo's settings for host builds must not leak in.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET");
        // The release build takes the product's build-time settings from the
        // environment (docs/recovery.md); test builds set their own.
        if build != LoaderBuild::Release {
            command
                .env_remove("ZBOOT_PUBLIC_KEY")
                .env_remove("ZBOOT_RECOVERY_BUTTON")
                .env_remove("ZBOOT_SETTINGS")
                .env_remove("ZBOOT_MIN_VERSION");
        }
        match build {
            LoaderBuild::QemuTest => {
                command.args(["--features", "qemu-test"]);
            }
            LoaderBuild::QemuTestProvisioned => {
                let (_, public) = provisioned_key_files()?;
                command
                    .args(["--features", "qemu-test"])
                    .env("ZBOOT_PUBLIC_KEY", public)
                    .env("ZBOOT_SETTINGS", provisioned_settings_file()?)
                    .env("ZBOOT_MIN_VERSION", PROVISIONED_MIN_VERSION.to_string())
                    .env(
                        "ZBOOT_RECOVERY_BUTTON",
                        format!("{PROVISIONED_BUTTON_GPIO},active-high"),
                    );
            }
            LoaderBuild::Release | LoaderBuild::TestKernel => {}
        }
        let status = command
            .status()
            .context("running cargo to build the loader")?;
        ensure!(
            status.success(),
            "building {} failed: {status}",
            build.name()
        );

        let built_elf = target_dir
            .join("aarch64-unknown-none")
            .join("release")
            .join(build.package_and_binary().1);
        let out = output_dir()?;
        let stem = match build {
            LoaderBuild::TestKernel => "test-kernel".to_owned(),
            _ => format!("zboot-{}", build.name()),
        };
        let elf = out.join(format!("{stem}.elf"));
        let image = out.join(format!("{stem}.img"));
        std::fs::copy(&built_elf, &elf)
            .with_context(|| format!("copying {} to {}", built_elf.display(), elf.display()))?;
        let (load_address, symbols) = flatten_elf(&elf, &image)?;
        Ok(Self {
            elf,
            image,
            load_address,
            symbols,
        })
    }
}

/// The recovery button's GPIO in [`LoaderBuild::QemuTestProvisioned`]. QEMU
/// models no input pins: a test "holds" it by having QEMU's `loader` device
/// write the pin's bit to `GPSET0` at reset, which sets its `GPLEV0` level
/// (hw/gpio/bcm2838_gpio.c updates the level for any pin).
pub const PROVISIONED_BUTTON_GPIO: u8 = 26;

/// The test signing key pair built into [`LoaderBuild::QemuTestProvisioned`],
/// in `zbctl key generate`'s file formats: (`.key`, `.pub`) under
/// `target/zboot`. A fixed seed: a test key, signing nothing real.
pub fn provisioned_key_files() -> Result<(PathBuf, PathBuf)> {
    static FILES: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    FILES
        .get_or_init(|| write_provisioned_key_files().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The hang guard's timeout [`LoaderBuild::QemuTestProvisioned`] takes from its build
/// (`ZBOOT_SETTINGS`), whatever `zbmanifest.txt` says.
pub const PROVISIONED_WATCHDOG_TIMEOUT: u8 = 10;

/// The anti-rollback floor built into [`LoaderBuild::QemuTestProvisioned`]
/// (`ZBOOT_MIN_VERSION`).
pub const PROVISIONED_MIN_VERSION: u32 = 1;

/// The `ZBOOT_SETTINGS` file of [`LoaderBuild::QemuTestProvisioned`].
fn provisioned_settings_file() -> Result<PathBuf> {
    let file = output_dir()?.join("provisioned-settings.txt");
    let text = format!(
        "# zboot test build: the settings a loader with a key takes from its build\n\
         watchdog_timeout={PROVISIONED_WATCHDOG_TIMEOUT}\n"
    );
    write_if_changed(&file, &text)?;
    Ok(file)
}

/// Writes `text` to `file` unless it holds it already (tests run in parallel: no reader
/// sees a half-written file).
fn write_if_changed(file: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(file).ok().as_deref() != Some(text) {
        let mut partial = file.as_os_str().to_owned();
        partial.push(format!(".{}.partial", std::process::id()));
        let partial = PathBuf::from(partial);
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", partial.display()))?;
        std::fs::rename(&partial, file)
            .with_context(|| format!("renaming to {}", file.display()))?;
    }
    Ok(())
}

fn write_provisioned_key_files() -> Result<(PathBuf, PathBuf)> {
    const TEST_SEED: [u8; 32] = *b"zboot test key; never a product.";
    let hex = |bytes: &[u8]| {
        bytes.iter().fold(String::new(), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
    };
    let public = ed25519_dalek::SigningKey::from_bytes(&TEST_SEED)
        .verifying_key()
        .to_bytes();
    let dir = output_dir()?;
    let key_file = dir.join("provisioned-test.key");
    let public_file = dir.join("provisioned-test.pub");
    for (file, text) in [
        (&key_file, format!("{}\n", hex(&TEST_SEED))),
        (&public_file, format!("{}\n", hex(&public))),
    ] {
        write_if_changed(file, &text)?;
    }
    Ok((key_file, public_file))
}

/// Writes the loadable bytes of `elf` as a flat binary (what the firmware
/// loads) and returns the load address and the symbol table.
fn flatten_elf(elf: &Path, image: &Path) -> Result<(u64, HashMap<String, u64>)> {
    let data = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", elf.display()))?;
    let mut pieces = Vec::new();
    for segment in file.segments() {
        let bytes = segment.data().context("reading a loadable segment")?;
        if !bytes.is_empty() {
            pieces.push((segment.address(), bytes));
        }
    }
    ensure!(
        !pieces.is_empty(),
        "{} has no loadable bytes",
        elf.display()
    );
    pieces.sort_by_key(|(address, _)| *address);
    let base = pieces[0].0;
    let mut flat = Vec::new();
    for (address, bytes) in pieces {
        let offset = usize::try_from(address - base)?;
        if flat.len() < offset {
            flat.resize(offset, 0);
        }
        ensure!(
            flat.len() == offset,
            "overlapping segments in {}",
            elf.display()
        );
        flat.extend_from_slice(bytes);
    }
    std::fs::write(image, &flat).with_context(|| format!("writing {}", image.display()))?;

    let symbols = file
        .symbols()
        .filter_map(|symbol| Some((symbol.name().ok()?.to_owned(), symbol.address())))
        .collect::<HashMap<_, _>>();
    let entry = symbols
        .get("_start")
        .copied()
        .context("no `_start` symbol")?;
    ensure!(
        entry == base,
        "`_start` (0x{entry:x}) is not the image's first byte (0x{base:x})"
    );
    Ok((base, symbols))
}

/// External programs the harness needs, with what to do when one is missing.
#[derive(Debug)]
pub struct Tools;

impl Tools {
    /// The `qemu-system-aarch64` the tests run: `$ZBOOT_QEMU` if set, else the patched
    /// build `scripts/build-qemu` caches (its PM watchdog counts down instead of
    /// resetting at once, and its eMMC card model can be plugged into EMMC2). The
    /// cache directory is named after the script's SHA-256, as the script names it.
    pub fn qemu() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os("ZBOOT_QEMU") {
            return Ok(PathBuf::from(path));
        }
        let script = workspace_root().join("scripts/build-qemu");
        let bytes =
            std::fs::read(&script).with_context(|| format!("reading {}", script.display()))?;
        let digest = sha2::Sha256::digest(&bytes);
        let key = digest.iter().take(6).fold(String::new(), |mut key, byte| {
            let _ = write!(key, "{byte:02x}");
            key
        });
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .context("neither XDG_CACHE_HOME nor HOME is set")?;
        let binary = cache
            .join("zboot")
            .join(format!("qemu-10.0.2-{key}"))
            .join("bin/qemu-system-aarch64");
        ensure!(
            binary.is_file(),
            "the patched QEMU is not built ({} is missing); run `scripts/setup` (it runs \
             scripts/build-qemu) or set ZBOOT_QEMU",
            binary.display()
        );
        Ok(binary)
    }

    /// Fails with the setup hint if a program is not installed.
    pub fn require(program: &str) -> Result<()> {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        });
        if !found {
            bail!(
                "`{program}` is not installed; run `scripts/setup` (installs QEMU >= 9, dtc and \
                 the other tools the tests need)"
            );
        }
        Ok(())
    }
}

/// The minimal raspi4b device tree (`qemu-tests/dts/raspi4b-minimal.dts`),
/// compiled with `dtc` once per process.
pub fn minimal_dtb() -> Result<PathBuf> {
    static DTB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DTB.get_or_init(|| compile_dts("raspi4b-minimal").map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The minimal tree with the BCM2711 B0's `emmc2bus` `dma-ranges` (bus `0xC000_0000`
/// is RAM 0: `qemu-tests/dts/raspi4b-emmc2bus-b0.dts`), which QEMU's EMMC2 does not
/// serve (its DMA sees RAM 1:1, as a C0's does): ADMA2 fails and zboot falls back to PIO.
pub fn emmc2bus_b0_dtb() -> Result<PathBuf> {
    static DTB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DTB.get_or_init(|| compile_dts("raspi4b-emmc2bus-b0").map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn compile_dts(name: &str) -> Result<PathBuf> {
    Tools::require("dtc")?;
    let source = workspace_root()
        .join("qemu-tests")
        .join("dts")
        .join(format!("{name}.dts"));
    let output = output_dir()?.join(format!("{name}.dtb"));
    let status = Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&output)
        .arg(&source)
        .status()
        .context("running dtc")?;
    ensure!(
        status.success(),
        "dtc failed on {}: {status}",
        source.display()
    );
    Ok(output)
}

/// The instruction-counting TCG plugin (`bench/insn_count.c`), compiled with
/// the system C compiler once per process.
pub fn insn_count_plugin() -> Result<PathBuf> {
    static PLUGIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| build_plugin().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_plugin() -> Result<PathBuf> {
    Tools::require("cc")?;
    let source = workspace_root().join("bench").join("insn_count.c");
    let output = output_dir()?.join("insn_count.so");
    let status = Command::new("cc")
        .args([
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
        ])
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .status()
        .context("running cc")?;
    ensure!(
        status.success(),
        "compiling {} failed: {status}",
        source.display()
    );
    Ok(output)
}
