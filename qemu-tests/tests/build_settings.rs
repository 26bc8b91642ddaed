//! The loader's build-time settings (`ZBOOT_PUBLIC_KEY`,
//! `ZBOOT_RECOVERY_BUTTON`, docs/recovery.md): a bad value stops the build
//! with a message that names the setting and what is wrong with it.

use std::process::Command;

use zboot_qemu_tests::workspace_root;

/// `cargo check`s the loader with `settings`; returns (success, stderr).
fn check(settings: &[(&str, &str)]) -> (bool, String) {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["check", "--package", "zboot-loader"])
        .args(["--target", "aarch64-unknown-none"])
        .arg("--target-dir")
        .arg(root.join("target").join("loader-settings"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("ZBOOT_PUBLIC_KEY")
        .env_remove("ZBOOT_RECOVERY_BUTTON")
        .env_remove("ZBOOT_SETTINGS")
        .env_remove("ZBOOT_MIN_VERSION");
    for (name, value) in settings {
        command.env(name, value);
    }
    let output = command.output().expect("running cargo check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_build_time_settings_stop_the_build_and_say_why() {
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "not a key\n").unwrap();
    let key_path = key_file.path().to_str().unwrap();
    let cases = [
        (
            "ZBOOT_PUBLIC_KEY",
            "/nonexistent/release.pub",
            "ZBOOT_PUBLIC_KEY: /nonexistent/release.pub is neither 64 hex digits nor a readable key file",
        ),
        (
            "ZBOOT_PUBLIC_KEY",
            key_path,
            "ZBOOT_PUBLIC_KEY: a public key is 64 hex digits (32 bytes)",
        ),
        (
            "ZBOOT_RECOVERY_BUTTON",
            "58",
            "ZBOOT_RECOVERY_BUTTON: \"58\": the GPIO must be 0..=57",
        ),
        (
            "ZBOOT_RECOVERY_BUTTON",
            "14",
            "ZBOOT_RECOVERY_BUTTON: GPIO 14 is the console's TXD",
        ),
        (
            "ZBOOT_RECOVERY_BUTTON",
            "26,active-sideways",
            "polarity \"active-sideways\" is neither active-low nor active-high",
        ),
    ];
    for (name, value, expected) in cases {
        let (success, stderr) = check(&[(name, value)]);
        assert!(!success, "{name}={value} must stop the build");
        assert!(
            stderr.contains(expected),
            "{name}={value}: expected \"{expected}\" in:\n{stderr}"
        );
    }
    // ZBOOT_SETTINGS: only with a key, only the guarded keys, only what parses.
    let hex = "ab".repeat(32);
    let settings = tempfile::NamedTempFile::new().unwrap();
    let settings_path = settings.path().to_str().unwrap();
    for (text, key, expected) in [
        (
            "watchdog_timeout=10\n",
            None,
            "ZBOOT_SETTINGS: only a loader with a key (ZBOOT_PUBLIC_KEY) takes settings",
        ),
        (
            "watchdog_timeout=10\nmax_boot_failure=4\n",
            Some(hex.as_str()),
            "line 2: max_boot_failure is not a setting the build fixes",
        ),
        (
            "watchdog_timeout=99\n",
            Some(hex.as_str()),
            "ZBOOT_SETTINGS (",
        ),
    ] {
        std::fs::write(settings.path(), text).unwrap();
        let mut settings = vec![("ZBOOT_SETTINGS", settings_path)];
        if let Some(key) = key {
            settings.push(("ZBOOT_PUBLIC_KEY", key));
        }
        let (success, stderr) = check(&settings);
        assert!(!success, "{text:?} must stop the build");
        assert!(
            stderr.contains(expected),
            "{text:?}: expected \"{expected}\" in:\n{stderr}"
        );
    }
    let (success, stderr) = check(&[("ZBOOT_MIN_VERSION", "3")]);
    assert!(
        !success && stderr.contains("set ZBOOT_PUBLIC_KEY too"),
        "{stderr}"
    );
    let (success, stderr) = check(&[("ZBOOT_PUBLIC_KEY", &hex), ("ZBOOT_MIN_VERSION", "v3")]);
    assert!(
        !success && stderr.contains("\"v3\" is not a version"),
        "{stderr}"
    );
    // And good values build.
    std::fs::write(
        settings.path(),
        "watchdog_timeout=10\nroot_a=/dev/mmcblk0p2\n",
    )
    .unwrap();
    let (success, stderr) = check(&[
        ("ZBOOT_PUBLIC_KEY", &hex),
        ("ZBOOT_RECOVERY_BUTTON", "GPIO26,active-low"),
        ("ZBOOT_SETTINGS", settings_path),
        ("ZBOOT_MIN_VERSION", "3"),
    ]);
    assert!(success, "good settings build:\n{stderr}");
}
