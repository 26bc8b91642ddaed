//! Helpers shared by the `zbctl` integration tests that run the real binary.
#![allow(dead_code, clippy::unwrap_used)]

pub mod metadata;

// Not every test binary runs the disk tools.
#[allow(unused_imports)]
pub use metadata::run;

use std::path::Path;
use std::process::{Command, Output};

/// The `zbctl` under test: the one cargo built, or the command line in
/// `$ZBCTL_UNDER_TEST` (`cargo xtask deb --test`: the packaged arm64 binary under
/// `qemu-aarch64`).
pub fn zbctl_command() -> Command {
    match std::env::var("ZBCTL_UNDER_TEST") {
        Ok(line) if !line.trim().is_empty() => {
            let mut words = line.split_whitespace();
            let mut command = Command::new(words.next().unwrap());
            command.args(words);
            command
        }
        _ => Command::new(env!("CARGO_BIN_EXE_zbctl")),
    }
}

/// Runs the `zbctl` under test.
pub fn zbctl(args: &[&str]) -> Output {
    zbctl_command().args(args).output().unwrap()
}

/// Runs the `zbctl` under test with extra environment variables.
pub fn zbctl_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    zbctl_command()
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

/// The small test disk of the install and update tests ([`create_small_disk`]):
/// boot at 1 MiB, root A at 41 MiB, root B at 73 MiB.
pub const MIB: usize = 1 << 20;
pub const BOOT: std::ops::Range<usize> = MIB..41 * MIB;
pub const ROOT_A: std::ops::Range<usize> = 41 * MIB..73 * MIB;
pub const ROOT_B: std::ops::Range<usize> = 73 * MIB..105 * MIB;

/// `zbctl disk create` of the small test disk (128 MiB: boot 40M, roots
/// 32M, SAFE 8M) at `output`, slot A at version 3 and SAFE holding
/// `kernel`, plus `extra` arguments.
pub fn create_small_disk(output: &Path, loader: &Path, kernel: &Path, extra: &[&str]) {
    let slot_a = format!("A:kernel={},version=3", s(kernel));
    let safe = format!("SAFE:kernel={}", s(kernel));
    let mut args = vec![
        "disk",
        "create",
        "--output",
        s(output),
        "--size",
        "128M",
        "--boot-size",
        "40M",
        "--root-size",
        "32M",
        "--safe-size",
        "8M",
        "--disk-id",
        "1a2b3c4d",
        "--loader",
        s(loader),
        "--slot",
        &slot_a,
        "--slot",
        &safe,
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// `zbctl status --json` of a disk image.
pub fn status(disk: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["--image", s(disk), "status", "--json"])).unwrap()
}

/// A slot's state (`good`, `bad`, ...) in a [`status`].
pub fn slot_state(status: &serde_json::Value, slot: &str) -> String {
    slot_field(status, slot, "state")
        .as_str()
        .unwrap()
        .to_string()
}

/// A field of a slot in a [`status`].
pub fn slot_field(status: &serde_json::Value, slot: &str, field: &str) -> serde_json::Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == slot)
        .unwrap()[field]
        .clone()
}

/// A file of the boot partition (at 1 MiB) of a disk image, read with mtools.
pub fn mtype(disk: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("mtype")
        .args(["-i", &format!("{}@@1M", s(disk)), &format!("::{file}")])
        .output()
        .expect("mtype (run scripts/setup)");
    assert!(out.status.success(), "mtype {file}");
    out.stdout
}

/// Every byte of slot A (its root partition and its files) and everything
/// outside the boot partition and root B of a small test disk is as in
/// `before`.
pub fn assert_active_untouched(before: &[u8], disk: &Path) {
    let after = std::fs::read(disk).unwrap();
    assert_eq!(before.len(), after.len());
    assert!(before[ROOT_A] == after[ROOT_A], "root A changed");
    assert!(before[..BOOT.start] == after[..BOOT.start], "MBR changed");
    assert!(
        before[ROOT_B.end..] == after[ROOT_B.end..],
        "SAFE or DATA changed"
    );
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("before.img");
    std::fs::write(&old, before).unwrap();
    for file in ["A/kernel.img", "A/cmdline.txt", "A/slot.txt", "zboot.img"] {
        assert_eq!(mtype(&old, file), mtype(disk, file), "{file} changed");
    }
}

/// `zbctl image convert` of `dir`'s `boot.tar` and `root.tar` into
/// `dir/name`: an image named `os` at `version`, laid out for the small
/// test disk (40 MiB boot) with a `root_mib` root, in 256 KiB chunks.
pub fn convert_small_image(dir: &Path, name: &str, version: &str, root_mib: &str) {
    convert_small_image_with(dir, name, version, root_mib, &[]);
}

/// [`convert_small_image`] with more `image convert` arguments.
pub fn convert_small_image_with(
    dir: &Path,
    name: &str,
    version: &str,
    root_mib: &str,
    extra: &[&str],
) {
    let (boot, root, output) = (dir.join("boot.tar"), dir.join("root.tar"), dir.join(name));
    let mut args = vec![
        "image",
        "convert",
        "-b",
        s(&boot),
        "-r",
        s(&root),
        "-o",
        s(&output),
        "--name",
        "os",
        "--version",
        version,
        "--boot-mib",
        "40",
        "--root-mib",
        root_mib,
        "--chunk-kib",
        "256",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// Writes every region into a disk file of the image's layout with the loader's reader
/// (skip regions stay zero) — what USB recovery does.
pub fn decode_to_disk(zi: &Path, disk: &Path) {
    let bytes = std::fs::read(zi).unwrap();
    let mut manifest = vec![0u8; 1 << 20];
    let image = recovery_proto::image::Image::open(
        &mut recovery_proto::image::SliceSource(&bytes),
        &mut manifest,
        None,
    )
    .unwrap();
    let mut out = vec![0u8; image.header().chunk_size as usize];
    let mut decoder = Box::new(recovery_proto::image::Decoder::new());
    let mut data = vec![0u8; usize::try_from(image.header().disk_size).unwrap()];
    let mut chunks = image.chunks(0);
    while let Some(chunk) = chunks
        .next_chunk(
            &image,
            &mut recovery_proto::image::SliceSource(&bytes),
            &mut decoder,
            &mut out,
        )
        .unwrap()
    {
        let at = usize::try_from(chunk.layout_lba() * 512).unwrap();
        let len = usize::try_from(chunk.region.length).unwrap();
        match chunk.content {
            recovery_proto::image::Content::Data(bytes) => {
                data[at..at + len].copy_from_slice(bytes);
            }
            recovery_proto::image::Content::Fill(byte) => data[at..at + len].fill(byte),
            recovery_proto::image::Content::Skip => {}
        }
    }
    std::fs::write(disk, data).unwrap();
}
