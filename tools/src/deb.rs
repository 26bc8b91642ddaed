//! `cargo xtask deb`: the `zboot` Debian package, for arm64 (the CM4) and amd64
//! (workstations that convert and sign images), built with `dpkg-deb` from a staged tree.
//!
//! `cargo-deb` was not used: it wants its metadata in `Cargo.toml` and builds for one
//! target per run through cargo itself, while this package also carries generated man pages
//! and completions, the systemd units and maintainer scripts, and is built twice (the arm64
//! one with Debian's `gcc-aarch64-linux-gnu` for ring's C). A staged tree and `dpkg-deb`
//! keep every file's place visible here.
//!
//! Contents (Debian Policy: binaries in `/usr/bin`, units in `/lib/systemd/system`, man
//! pages gzip -9n, completions where bash-completion and zsh look, `/etc/default` for the
//! units' settings, a copyright file and a changelog under `/usr/share/doc/zboot`).

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::CommandFactory;

/// A package architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The CM4 (Debian/Raspberry Pi OS arm64).
    Arm64,
    /// A workstation.
    Amd64,
}

impl Arch {
    /// Debian's name.
    pub fn debian(self) -> &'static str {
        match self {
            Self::Arm64 => "arm64",
            Self::Amd64 => "amd64",
        }
    }

    /// Rust's target triple.
    pub fn rust_target(self) -> &'static str {
        match self {
            Self::Arm64 => "aarch64-unknown-linux-gnu",
            Self::Amd64 => "x86_64-unknown-linux-gnu",
        }
    }
}

/// The package's name.
pub const PACKAGE: &str = "zboot";
/// Where the package's maintainer is reached (an address a product replaces with its own:
/// `ZBOOT_DEB_MAINTAINER`).
const DEFAULT_MAINTAINER: &str = "zboot maintainers <maintainers@zboot.invalid>";

/// Builds the package for `arch` into `out_dir`; returns its path.
pub fn build(root: &Path, arch: Arch, out_dir: &Path) -> Result<PathBuf> {
    let binary = build_zbctl(root, arch)?;
    let version = env!("CARGO_PKG_VERSION");
    let stage = out_dir.join(format!("{PACKAGE}_{version}_{}", arch.debian()));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let file = stage.join(path);
        fs::create_dir_all(file.parent().context("a file in a directory")?)?;
        fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/zbctl", &fs::read(&binary)?, 0o755)?;
    for unit in [
        "zboot-mark-good.service",
        "zboot-update.service",
        "zboot-update.timer",
        "zboot-report.service",
        "zboot-report.timer",
    ] {
        let text = fs::read(root.join("tools/systemd").join(unit))?;
        put(&format!("lib/systemd/system/{unit}"), &text, 0o644)?;
    }
    put("etc/default/zboot", DEFAULT_SETTINGS.as_bytes(), 0o644)?;
    for (name, page) in man_pages()? {
        put(
            &format!("usr/share/man/man1/{name}.1.gz"),
            &gzip(&page)?,
            0o644,
        )?;
    }
    let (bash, zsh) = completions()?;
    put("usr/share/bash-completion/completions/zbctl", &bash, 0o644)?;
    put("usr/share/zsh/vendor-completions/_zbctl", &zsh, 0o644)?;
    let doc = format!("usr/share/doc/{PACKAGE}");
    put(&format!("{doc}/copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    put(
        &format!("{doc}/changelog.gz"),
        &gzip(changelog(version).as_bytes())?,
        0o644,
    )?;
    for page in ["update.md", "slot-state.md", "security.md"] {
        put(
            &format!("{doc}/{page}"),
            &fs::read(root.join("docs").join(page))?,
            0o644,
        )?;
    }
    for (script, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        put(&format!("DEBIAN/{script}"), text.as_bytes(), 0o755)?;
    }
    put("DEBIAN/conffiles", b"/etc/default/zboot\n", 0o644)?;
    let control = control(arch, version, &depends(&binary)?, installed_kib(&stage)?);
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    // Directories too: 0755, whatever the umask.
    set_directory_modes(&stage)?;
    let deb = out_dir.join(format!("{PACKAGE}_{version}_{}.deb", arch.debian()));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// `zbctl` built with the `dist` profile (release, stripped) for `arch`; the arm64 build
/// compiles ring's C with Debian's cross gcc and links with it.
fn build_zbctl(root: &Path, arch: Arch) -> Result<PathBuf> {
    let target = arch.rust_target();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(root)
        .args([
            "build",
            "--profile",
            "dist",
            "-p",
            "zboot-tools",
            "--bin",
            "zbctl",
        ])
        .args(["--target", target]);
    if arch == Arch::Arm64 {
        let gcc = "aarch64-linux-gnu-gcc";
        ensure!(
            Command::new(gcc).arg("--version").output().is_ok(),
            "{gcc} not found: the arm64 package needs Debian's gcc-aarch64-linux-gnu \
             (scripts/setup installs it)"
        );
        cargo
            .env("CC_aarch64_unknown_linux_gnu", gcc)
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", gcc);
    }
    run(&mut cargo)?;
    Ok(root.join("target").join(target).join("dist").join("zbctl"))
}

/// A man page per command: `zbctl`, and `zbctl-<sub>[-<subsub>]` for each subcommand.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut command = crate::zbctl::Cli::command();
    command.build();
    let mut pages = Vec::new();
    collect_pages(&command, "zbctl", &mut pages)?;
    Ok(pages)
}

fn collect_pages(
    command: &clap::Command,
    name: &str,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    let named = command
        .clone()
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let mut page = Vec::new();
    clap_mangen::Man::new(named)
        .render(&mut page)
        .with_context(|| format!("the man page of {name}"))?;
    pages.push((name.to_string(), page));
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        collect_pages(sub, &format!("{name}-{}", sub.get_name()), pages)?;
    }
    Ok(())
}

/// The bash and zsh completions.
pub fn completions() -> Result<(Vec<u8>, Vec<u8>)> {
    let mut command = crate::zbctl::Cli::command();
    let mut bash = Vec::new();
    let mut zsh = Vec::new();
    clap_complete::generate(clap_complete::Shell::Bash, &mut command, "zbctl", &mut bash);
    clap_complete::generate(clap_complete::Shell::Zsh, &mut command, "zbctl", &mut zsh);
    Ok((bash, zsh))
}

/// `gzip -9n`: best compression, no name or time stamp (reproducible; Debian Policy 12.3).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(bytes)?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "gzip failed");
    Ok(output.stdout)
}

/// `Depends:` from the binary's dynamic section: libc6 at the newest GLIBC_ symbol version
/// it uses, libgcc-s1 when it needs libgcc_s (what dpkg-shlibdeps would find for these two).
fn depends(binary: &Path) -> Result<String> {
    let output = Command::new("readelf")
        .args(["--dynamic", "--version-info", "--wide"])
        .arg(binary)
        .output()
        .context("running readelf (binutils)")?;
    ensure!(output.status.success(), "readelf {}", binary.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let mut newest = (2u32, 17u32);
    for word in text.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        if let Some(version) = word.strip_prefix("GLIBC_")
            && let Some((major, minor)) = version.split_once('.')
            && let (Ok(major), Ok(minor)) =
                (major.parse(), minor.split('.').next().unwrap_or("").parse())
        {
            newest = newest.max((major, minor));
        }
    }
    let mut depends = format!("libc6 (>= {}.{})", newest.0, newest.1);
    if text.contains("libgcc_s.so.1") {
        depends.push_str(", libgcc-s1 (>= 4.2)");
    }
    Ok(depends)
}

fn installed_kib(stage: &Path) -> Result<u64> {
    let mut bytes = 0;
    let mut stack = vec![stage.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += entry.metadata()?.len();
            }
        }
    }
    Ok(bytes.div_ceil(1024))
}

fn set_directory_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

fn control(arch: Arch, version: &str, depends: &str, kib: u64) -> String {
    let maintainer =
        std::env::var("ZBOOT_DEB_MAINTAINER").unwrap_or_else(|_| DEFAULT_MAINTAINER.into());
    let mut text = String::new();
    let _ = write!(
        text,
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {kib}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: A/B/SAFE boot control for zboot on the Raspberry Pi CM4\n \
         zbctl reads and changes the slot state of zboot, the A/B/SAFE boot stage of\n \
         Compute Module 4 products: it confirms a boot, installs and signs images,\n \
         fetches updates over HTTPS and shows why the unit booted what it booted.\n \
         .\n \
         The package enables zboot-mark-good.service, which confirms each healthy\n \
         boot, zboot-update.timer, which installs updates as trials, and\n \
         zboot-report.timer, which sends the queued update reports; none is started\n \
         at installation.\n",
        arch.debian()
    );
    text
}

fn changelog(version: &str) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask deb from the \
         zboot workspace.\n\n -- {}  Thu, 01 Jan 2026 00:00:00 +0000\n",
        std::env::var("ZBOOT_DEB_MAINTAINER").unwrap_or_else(|_| DEFAULT_MAINTAINER.into())
    )
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// `/etc/default/zboot`: the units' settings on this unit (zboot's own are in
/// `zbmanifest.txt` on the boot partition).
const DEFAULT_SETTINGS: &str = "\
# Settings of zboot's systemd units on this system (zboot-mark-good.service,
# zboot-update.service). zboot's own settings are in zbmanifest.txt on the boot
# partition; see /usr/share/doc/zboot/update.md.

# Where the FAT boot partition is mounted (the units also need it mounted there:
# change their RequiresMountsFor= with `systemctl edit` when it is elsewhere).
ZBOOT_BOOT_DIR=/boot/firmware

# More arguments for `zbctl update apply`, e.g. --timeout 60 --retries 5.
ZBOOT_UPDATE_ARGS=

# Where update reports (zbmanifest.txt's report_url=) are queued; empty: the default,
# /var/lib/zboot/reports. A directory on a partition both slots mount (DATA) keeps the
# records of one slot for the other after an update's reboot.
ZBOOT_REPORT_DIR=
";

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zboot

Files: *
Copyright: 2026 zboot developers
License: MIT or Apache-2.0
 Licensed under either of the Apache License, Version 2.0 (on Debian systems in
 /usr/share/common-licenses/Apache-2.0) or the MIT license, at your option.
 .
 Permission is hereby granted, free of charge, to any person obtaining a copy of
 this software and associated documentation files (the \"Software\"), to deal in
 the Software without restriction, including without limitation the rights to
 use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of
 the Software, and to permit persons to whom the Software is furnished to do so,
 subject to the following conditions: the above copyright notice and this
 permission notice shall be included in all copies or substantial portions of
 the Software. THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND.
";

/// Enables the units on install (as debhelper's dh_installsystemd would: through
/// deb-systemd-helper, which records the enablement for purge), never starts them: the
/// update service may reboot. Warns when the boot partition is not where the units expect.
const POSTINST: &str = r#"#!/bin/sh
set -e

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ]; then
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        for unit in zboot-mark-good.service zboot-update.timer zboot-report.timer; do
            if deb-systemd-helper --quiet was-enabled "$unit"; then
                deb-systemd-helper enable "$unit" >/dev/null || true
            else
                deb-systemd-helper update-state "$unit" >/dev/null || true
                if [ -z "$2" ]; then
                    deb-systemd-helper enable "$unit" >/dev/null || true
                fi
            fi
        done
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    dir=/boot/firmware
    if [ -r /etc/default/zboot ]; then
        . /etc/default/zboot
        dir=${ZBOOT_BOOT_DIR:-/boot/firmware}
    fi
    if [ ! -d "$dir" ] || ! grep -qs " $dir vfat " /proc/self/mounts; then
        echo "zboot: no FAT boot partition mounted on $dir, where zboot-mark-good.service and zboot-update.service expect it (set ZBOOT_BOOT_DIR in /etc/default/zboot)" >&2
    fi
fi

exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e

if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop zboot-update.timer zboot-report.timer >/dev/null 2>&1 || true
fi

exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e

if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper mask zboot-mark-good.service zboot-update.timer zboot-report.timer >/dev/null || true
fi
if [ "$1" = "purge" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper purge zboot-mark-good.service zboot-update.timer zboot-report.timer >/dev/null || true
    deb-systemd-helper unmask zboot-mark-good.service zboot-update.timer zboot-report.timer >/dev/null || true
fi

exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a maintainer script with `deb-systemd-helper`, `deb-systemd-invoke` and
    /// `systemctl` replaced by stubs that log their arguments; returns (log, stderr).
    fn run_script(script: &str, args: &[&str], default_file: Option<&str>) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        for tool in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
            let stub = dir.path().join(tool);
            fs::write(
                &stub,
                format!(
                    "#!/bin/sh\necho \"{tool} $*\" >> {}\n[ \"$2\" = was-enabled ] && exit 1\nexit 0\n",
                    log.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The script's /etc/default/zboot, when given, through a copy that reads it from here.
        let text = match default_file {
            Some(settings) => {
                let file = dir.path().join("default");
                fs::write(&file, settings).unwrap();
                script.replace("/etc/default/zboot", file.to_str().unwrap())
            }
            None => script.replace("/etc/default/zboot", "/nonexistent/zboot-default"),
        };
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("sh")
            .arg("-c")
            .arg(&text)
            .arg("script")
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        (
            fs::read_to_string(&log).unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    #[test]
    fn postinst_enables_the_units_starts_nothing_and_names_the_path_it_expected() {
        let (calls, stderr) = run_script(POSTINST, &["configure", ""], None);
        for unit in [
            "zboot-mark-good.service",
            "zboot-update.timer",
            "zboot-report.timer",
        ] {
            assert!(
                calls.contains(&format!("deb-systemd-helper enable {unit}")),
                "{calls}"
            );
        }
        assert!(!calls.contains("start"), "nothing started: {calls}");
        // The services run from their timers (the update service may reboot).
        assert!(!calls.contains("zboot-update.service"), "{calls}");
        assert!(!calls.contains("zboot-report.service"), "{calls}");
        // This build host has no FAT file system on /boot/firmware.
        assert!(
            stderr.contains("no FAT boot partition mounted on /boot/firmware"),
            "{stderr}"
        );
        // Another place, from /etc/default/zboot: named in the warning.
        let (_, stderr) = run_script(
            POSTINST,
            &["configure", ""],
            Some("ZBOOT_BOOT_DIR=/srv/boot-partition\n"),
        );
        assert!(
            stderr.contains("no FAT boot partition mounted on /srv/boot-partition"),
            "{stderr}"
        );
        // An upgrade from a version where the admin disabled the timer leaves it so.
        let (calls, _) = run_script(POSTINST, &["configure", "0.0.9"], None);
        assert!(!calls.contains("deb-systemd-helper enable"), "{calls}");
        assert!(
            calls.contains("deb-systemd-helper update-state zboot-update.timer"),
            "{calls}"
        );
    }

    #[test]
    fn removal_stops_the_timer_and_purge_forgets_the_units() {
        let (calls, _) = run_script(PRERM, &["remove"], None);
        if Path::new("/run/systemd/system").exists() {
            assert!(
                calls.contains("deb-systemd-invoke stop zboot-update.timer zboot-report.timer"),
                "{calls}"
            );
        }
        let (calls, _) = run_script(POSTRM, &["purge"], None);
        assert!(
            calls.contains(
                "deb-systemd-helper purge zboot-mark-good.service zboot-update.timer \
                 zboot-report.timer"
            ),
            "{calls}"
        );
    }
}
