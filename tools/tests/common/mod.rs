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

/// Runs the built `zbctl` binary with extra environment variables.
pub fn zbctl_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zbctl"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A file holding `cmdline` in `dir`, for `ZBCTL_PROC_CMDLINE` (the kernel command line
/// zbctl reads instead of /proc/cmdline).
pub fn cmdline_file(dir: &Path, cmdline: &str) -> std::path::PathBuf {
    let path = dir.join(format!("cmdline-{}", cmdline.len()));
    std::fs::write(&path, format!("{cmdline}\n")).unwrap();
    path
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

/// Tars the contents of `tree` into `out` (plain tar, as `image convert`
/// takes it).
pub fn tar(tree: &Path, out: &Path) {
    let status = Command::new("tar")
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

/// `len` bytes that do not compress well, different per `seed` (stand-in
/// loaders, kernels and root files).
pub fn noise(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7919) >> 3) as u8 ^ seed.wrapping_mul(i as u8))
        .collect()
}

/// Checks that the image's root regions (data and fill) are in `disk` from
/// byte `root_start` on, byte for byte; returns how many bytes it compared.
pub fn compare_root_with_image(disk: &[u8], root_start: usize, image_bytes: &[u8]) -> usize {
    use recovery_proto::image::{Content, Decoder, Image, Role, SliceSource};
    let mut manifest = vec![0u8; 1 << 20];
    let image = Image::open(&mut SliceSource(image_bytes), &mut manifest, None).unwrap();
    let (root, _) = image.partition_with_role(Role::RootA).unwrap();
    let mut out = vec![0u8; image.header().chunk_size as usize];
    let mut decoder = Box::new(Decoder::new());
    let mut chunks = image.chunks(0);
    let mut compared = 0;
    while let Some(chunk) = chunks
        .next_chunk(
            &image,
            &mut SliceSource(image_bytes),
            &mut decoder,
            &mut out,
        )
        .unwrap()
    {
        if u32::from(chunk.region.partition) != root {
            continue;
        }
        let at = root_start + usize::try_from(chunk.region.offset).unwrap();
        let len = usize::try_from(chunk.region.length).unwrap();
        match chunk.content {
            Content::Data(bytes) => assert!(disk[at..at + len] == *bytes, "data at {at}"),
            Content::Fill(byte) => assert!(disk[at..at + len].iter().all(|&b| b == byte)),
            Content::Skip => continue,
        }
        compared += len;
    }
    compared
}
