//! Running the standard disk tools, and comparing a root tarball's metadata with an ext4
//! image made from it: owners, modes, device nodes, symlinks and hard links, read back
//! with `debugfs`. Shared by the host tests (tools/tests, through `common`) and the QEMU
//! scenarios (qemu-tests/tests/stock.rs, which include this file by path).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The effective user id (`id -u`).
pub fn euid() -> String {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs a shell script as root, or under fakeroot for an ordinary user (which records the
/// owners, device nodes and xattrs it fakes into the tarball the script makes).
pub fn as_root(script: &str) {
    let mut command = if euid() == "0" {
        Command::new("sh")
    } else {
        let mut command = Command::new("fakeroot");
        command.arg("sh");
        command
    };
    let out = command.args(["-e", "-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `tar -tv --numeric-owner` line: (type, permission bits, uid/gid, size or device,
/// name, link target).
pub fn tar_listing(tar: &Path) -> Vec<(char, u32, String, String, String, Option<String>)> {
    let out = Command::new("tar")
        .args(["-tv", "--numeric-owner", "-f", s(tar)])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mode = fields[0].as_bytes();
            let mut bits = 0u32;
            for (i, &c) in mode[1..10].iter().enumerate() {
                let bit = 1 << (8 - i);
                match c {
                    b'r' | b'w' | b'x' => bits |= bit,
                    b's' => bits |= bit | if i == 2 { 0o4000 } else { 0o2000 },
                    b'S' => bits |= if i == 2 { 0o4000 } else { 0o2000 },
                    b't' => bits |= bit | 0o1000,
                    b'T' => bits |= 0o1000,
                    _ => {}
                }
            }
            let rest = fields[5..].join(" ");
            let (name, target) = match rest.split_once(" -> ").or(rest.split_once(" link to ")) {
                Some((name, target)) => (name.to_string(), Some(target.to_string())),
                None => (rest, None),
            };
            let name = format!("/{}", name.trim_start_matches("./").trim_end_matches('/'));
            (
                mode[0] as char,
                bits,
                fields[1].to_string(),
                fields[2].to_string(),
                name,
                target,
            )
        })
        .collect()
}

/// `debugfs` on an ext4 image with one request per line; the answers in order.
pub fn debugfs_batch(image: &Path, requests: &[String]) -> Vec<String> {
    let script = image.with_extension("debugfs");
    fs::write(&script, requests.join("\n") + "\n").unwrap();
    let out = Command::new("debugfs")
        .args(["-f", s(&script), s(image)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("debugfs: ")
        .skip(1)
        .map(str::to_string)
        .collect()
}

pub fn field<'t>(stat: &'t str, name: &str) -> &'t str {
    let at = stat
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {stat}"))
        + name.len();
    stat[at..].split_whitespace().next().unwrap()
}

/// Every member of the tarball, as `tar -tv` lists it, is in the ext4 image with the same
/// type, permission bits, owner, device numbers and link target.
pub fn assert_listing_matches(tar: &Path, root_a: &Path) {
    let listing = tar_listing(tar);
    assert!(listing.len() > 20, "{listing:?}");
    let requests: Vec<String> = listing
        .iter()
        .map(|(_, _, _, _, name, _)| format!("stat \"{}\"", if name == "/" { "/" } else { name }))
        .collect();
    let answers = debugfs_batch(root_a, &requests);
    assert_eq!(answers.len(), listing.len());
    let mut inode_of = std::collections::HashMap::new();
    for ((kind, bits, owner, size, name, target), stat) in listing.iter().zip(&answers) {
        let expected_type = match kind {
            '-' | 'h' => "regular",
            'd' => "directory",
            'l' => "symlink",
            'c' => "character",
            'b' => "block",
            'p' => "FIFO",
            other => panic!("{name}: tar type {other}"),
        };
        assert_eq!(field(stat, "Type:"), expected_type, "{name}: {stat}");
        let mode = u32::from_str_radix(field(stat, "Mode:"), 8).unwrap();
        assert_eq!(mode & 0o7777, *bits, "{name}: mode");
        assert_eq!(
            format!("{}/{}", field(stat, "User:"), field(stat, "Group:")),
            *owner,
            "{name}: owner"
        );
        if matches!(kind, 'c' | 'b') {
            let (major, minor) = size.split_once(',').unwrap();
            let numbers = field(stat, "Device major/minor number:");
            let (dmaj, dmin) = numbers.split_once(':').unwrap();
            assert_eq!(
                (
                    u32::from_str_radix(dmaj, 16).unwrap(),
                    u32::from_str_radix(dmin, 16).unwrap()
                ),
                (major.parse().unwrap(), minor.parse().unwrap()),
                "{name}: device"
            );
        }
        if *kind == 'l' {
            assert!(
                stat.contains(&format!("Fast link dest: \"{}\"", target.as_ref().unwrap())),
                "{name}: {stat}"
            );
        }
        inode_of.insert(name.clone(), field(stat, "Inode:").to_string());
        if *kind == 'h' {
            let target = format!("/{}", target.as_ref().unwrap().trim_start_matches("./"));
            assert_eq!(
                inode_of[name], inode_of[&target],
                "{name} is a hard link to {target}"
            );
        }
    }
    assert!(
        listing.iter().any(|l| l.0 == 'c'),
        "the listing has device nodes"
    );
}

/// Runs a standard tool (sfdisk, mkfs.vfat, mcopy, ...) with `input` on its stdin; fails
/// the test with its stderr.
pub fn run(program: &str, args: &[&str], input: Option<&str>) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{program} (scripts/setup installs it): {error}"));
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
