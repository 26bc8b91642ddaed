//! Links the loader with `linker/zboot.ld` when building for the bare-metal
//! target, and turns the build-time settings into constants
//! (`$OUT_DIR/build_config.rs`, read by `src/config.rs`).
//!
//! Settings (docs/recovery.md, "Build-time settings"):
//! - `ZBOOT_PUBLIC_KEY`: the ed25519 public key recovery images must be
//!   signed with, as 64 hex digits or the path of a `.pub` file from
//!   `zbctl key generate`. Unset: no key is built in.
//! - `ZBOOT_RECOVERY_BUTTON`: the recovery button's GPIO and polarity,
//!   `<gpio>` or `<gpio>,active-low` / `<gpio>,active-high` (default
//!   active-low: a button to ground with the SoC's pull-up). Unset: no button.
//! - `ZBOOT_SETTINGS`: the path of a `zbmanifest.txt`-format file with the settings a
//!   loader with a key takes from its build only (`root_a`, `root_b`, `safe_root`,
//!   `watchdog_timeout`, `recovery_image`; docs/security.md). Needs `ZBOOT_PUBLIC_KEY`.
//! - `ZBOOT_MIN_VERSION`: an anti-rollback floor built in (a u32): no slot whose signed
//!   version is below it boots, whatever the slot state says. Needs `ZBOOT_PUBLIC_KEY`.
//!
//! A bad value stops the build with a message naming the setting.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let script = Path::new(&manifest_dir).join("../linker/zboot.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    println!("cargo::rerun-if-changed=src/arch/entry.s");
    println!("cargo::rerun-if-changed=src/arch/vectors.s");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo::rustc-link-arg-bins=-T{}", script.display());
        println!("cargo::rustc-link-arg-bins=--no-dynamic-linker");
    }

    let config = match build_config() {
        Ok(config) => config,
        Err(message) => {
            // `cargo::error` stops the build and shows the message as is.
            println!("cargo::error={message}");
            return;
        }
    };
    let out_dir = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    let path = Path::new(&out_dir).join("build_config.rs");
    if let Err(error) = std::fs::write(&path, config) {
        println!("cargo::error=writing {}: {error}", path.display());
    }
}

fn build_config() -> Result<String, String> {
    println!("cargo::rerun-if-env-changed=ZBOOT_PUBLIC_KEY");
    println!("cargo::rerun-if-env-changed=ZBOOT_RECOVERY_BUTTON");
    println!("cargo::rerun-if-env-changed=ZBOOT_SETTINGS");
    println!("cargo::rerun-if-env-changed=ZBOOT_MIN_VERSION");
    let mut out = String::new();

    let key = match std::env::var("ZBOOT_PUBLIC_KEY") {
        Ok(value) if !value.trim().is_empty() => Some(public_key(value.trim())?),
        _ => None,
    };
    match key {
        Some(bytes) => {
            let list = bytes.iter().fold(String::new(), |mut list, byte| {
                let _ = write!(list, "0x{byte:02x}, ");
                list
            });
            let _ = writeln!(
                out,
                "pub const PROVISIONED_KEY: Option<[u8; 32]> = Some([{list}]);"
            );
        }
        None => {
            let _ = writeln!(out, "pub const PROVISIONED_KEY: Option<[u8; 32]> = None;");
        }
    }

    let button = match std::env::var("ZBOOT_RECOVERY_BUTTON") {
        Ok(value) if !value.trim().is_empty() => Some(recovery_button(value.trim())?),
        _ => None,
    };
    match button {
        Some((pin, active_high)) => {
            let _ = writeln!(
                out,
                "pub const RECOVERY_BUTTON: Option<(u8, bool)> = Some(({pin}, {active_high}));"
            );
        }
        None => {
            let _ = writeln!(out, "pub const RECOVERY_BUTTON: Option<(u8, bool)> = None;");
        }
    }
    let settings = match std::env::var("ZBOOT_SETTINGS") {
        Ok(value) if !value.trim().is_empty() => {
            if key.is_none() {
                return Err(
                    "ZBOOT_SETTINGS: only a loader with a key (ZBOOT_PUBLIC_KEY) takes settings \
                     from its build"
                        .into(),
                );
            }
            settings(value.trim())?
        }
        _ => Vec::new(),
    };
    let _ = writeln!(out, "pub const BUILT_IN_SETTINGS: &[u8] = &{settings:?};");
    let min_version = match std::env::var("ZBOOT_MIN_VERSION") {
        Ok(value) if !value.trim().is_empty() => {
            if key.is_none() {
                return Err(
                    "ZBOOT_MIN_VERSION: a floor only means something for signed slots: set \
                     ZBOOT_PUBLIC_KEY too"
                        .into(),
                );
            }
            value.trim().parse::<u32>().map_err(|_| {
                format!(
                    "ZBOOT_MIN_VERSION: \"{}\" is not a version (0 to 4294967295)",
                    value.trim()
                )
            })?
        }
        _ => 0,
    };
    let _ = writeln!(out, "pub const MIN_VERSION: u32 = {min_version};");
    Ok(out)
}

/// The `ZBOOT_SETTINGS` file, checked: it parses, and sets only guarded keys.
fn settings(path: &str) -> Result<Vec<u8>, String> {
    println!("cargo::rerun-if-changed={path}");
    let bytes =
        std::fs::read(path).map_err(|error| format!("ZBOOT_SETTINGS: reading {path}: {error}"))?;
    let parsed = recovery_proto::manifest::Manifest::parse(&bytes)
        .map_err(|error| format!("ZBOOT_SETTINGS ({path}): {error}"))?;
    if let Some(warning) = parsed.warnings.first() {
        return Err(format!("ZBOOT_SETTINGS ({path}): {warning}"));
    }
    drop(parsed);
    let guarded = recovery_proto::manifest::GUARDED_KEYS;
    for (index, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(key, _)| key.trim());
        if !guarded.contains(&key) {
            return Err(format!(
                "ZBOOT_SETTINGS ({path}) line {}: {key} is not a setting the build fixes \
                 ({}); keep it in zbmanifest.txt",
                index + 1,
                guarded.join(", ")
            ));
        }
    }
    Ok(bytes)
}

/// 64 hex digits, given directly or as the first line of a file.
fn public_key(value: &str) -> Result<[u8; 32], String> {
    let text = if value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        value.to_owned()
    } else {
        println!("cargo::rerun-if-changed={value}");
        let contents = std::fs::read_to_string(value).map_err(|error| {
            format!("ZBOOT_PUBLIC_KEY: {value} is neither 64 hex digits nor a readable key file: {error}")
        })?;
        contents.lines().next().unwrap_or("").trim().to_owned()
    };
    if text.len() != 64 {
        return Err(format!(
            "ZBOOT_PUBLIC_KEY: a public key is 64 hex digits (32 bytes), {value} holds {} characters",
            text.len()
        ));
    }
    let mut key = [0u8; 32];
    for (index, byte) in key.iter_mut().enumerate() {
        let digits = text.get(index * 2..index * 2 + 2).unwrap_or("");
        *byte = u8::from_str_radix(digits, 16).map_err(|_| {
            format!(
                "ZBOOT_PUBLIC_KEY: \"{digits}\" at character {} of {value} is not hex",
                index * 2 + 1
            )
        })?;
    }
    Ok(key)
}

/// `<gpio>[,active-low|active-high]` -> (pin, active high).
fn recovery_button(value: &str) -> Result<(u8, bool), String> {
    // GPIOs 0..=57 exist on the BCM2711 (ARM Peripherals §5.1); 14/15 carry
    // the console and 42 the ACT LED (hal-bcm2711 gpio.rs).
    const RESERVED: [(u8, &str); 3] = [
        (14, "the console's TXD"),
        (15, "the console's RXD"),
        (42, "the ACT LED"),
    ];
    let (pin, polarity) = value.split_once(',').unwrap_or((value, "active-low"));
    let pin = pin.trim();
    let pin = pin
        .strip_prefix("GPIO")
        .or_else(|| pin.strip_prefix("gpio"))
        .unwrap_or(pin);
    let pin: u8 =
        pin.parse().ok().filter(|pin| *pin <= 57).ok_or_else(|| {
            format!("ZBOOT_RECOVERY_BUTTON: \"{value}\": the GPIO must be 0..=57")
        })?;
    if let Some((_, what)) = RESERVED.iter().find(|(reserved, _)| *reserved == pin) {
        return Err(format!(
            "ZBOOT_RECOVERY_BUTTON: GPIO {pin} is {what}; choose another pin"
        ));
    }
    let active_high = match polarity.trim() {
        "active-low" => false,
        "active-high" => true,
        other => {
            return Err(format!(
                "ZBOOT_RECOVERY_BUTTON: polarity \"{other}\" is neither active-low nor active-high"
            ));
        }
    };
    Ok((pin, active_high))
}
