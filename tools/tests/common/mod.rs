//! Helpers shared by the `zbctl` integration tests that run the real binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built `zbctl` binary.
pub fn zbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zbctl"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `zbctl`, asserts success (showing its stderr otherwise), returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = zbctl(args);
    assert!(
        out.status.success(),
        "zbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A path as an argument.
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
