//! `zbctl image convert` of stock Raspberry Pi images (`docs/bring-your-own-image.md`): dumps
//! made with `sfdisk`, `mkfs.vfat`, `mtools` and `mke2fs`, and GNU tar tarballs, in the
//! shape Raspberry Pi OS ships; the `.zi` decoded with the loader's reader and its boot
//! partition, slots and roots read back with mtools, `sfdisk --json` and `debugfs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::metadata::{as_root, assert_listing_matches, debugfs_batch, euid};
use common::{decode_to_disk, ok, s, zbctl};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DISK_ID: &str = "5a5a0009";

/// Raspberry Pi OS bookworm's `config.txt` (arm64), with an `include` added.
const CONFIG: &str = "# For more options and information see\n\
# http://rptl.io/configtxt\n\
dtparam=audio=on\n\
camera_auto_detect=1\n\
display_auto_detect=1\n\
\n\
# Automatically load initramfs files, if found\n\
auto_initramfs=1\n\
\n\
dtoverlay=vc4-kms-v3d\n\
max_framebuffers=2\n\
disable_fw_kms_setup=1\n\
arm_64bit=1\n\
disable_overscan=1\n\
arm_boost=1\n\
include extra.txt\n\
\n\
[cm4]\n\
otg_mode=1\n\
\n\
[cm5]\n\
dtoverlay=dwc2,dr_mode=host\n\
\n\
[all]\n";

const CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=5a5a0009-02 \
rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n";

const FSTAB: &str = "proc            /proc           proc    defaults          0       0\n\
PARTUUID=5a5a0009-01  /boot/firmware  vfat    defaults          0       2\n\
PARTUUID=5a5a0009-02  /               ext4    defaults,noatime  0       1\n";

/// The boot files of a stock image, in `dir/boot`.
fn boot_tree(dir: &Path, config: &str) -> PathBuf {
    let boot = dir.join("boot");
    fs::create_dir_all(boot.join("overlays")).unwrap();
    fs::write(boot.join("config.txt"), config).unwrap();
    fs::write(boot.join("extra.txt"), "dtparam=i2c_arm=on\n").unwrap();
    fs::write(boot.join("cmdline.txt"), CMDLINE).unwrap();
    fs::write(boot.join("kernel8.img"), common::noise(300_000, 8)).unwrap();
    fs::write(boot.join("initramfs8"), common::noise(200_000, 9)).unwrap();
    fs::write(boot.join("kernel_2712.img"), common::noise(1000, 10)).unwrap();
    fs::write(boot.join("bcm2711-rpi-cm4.dtb"), common::noise(5000, 11)).unwrap();
    fs::write(boot.join("start4.elf"), common::noise(7000, 12)).unwrap();
    fs::write(boot.join("fixup4.dat"), common::noise(700, 13)).unwrap();
    fs::write(boot.join("overlays/README"), "overlays\n").unwrap();
    fs::write(
        boot.join("overlays/disable-bt.dtbo"),
        common::noise(900, 14),
    )
    .unwrap();
    boot
}

/// The root of a stock image, in `dir/root`.
fn root_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("etc/fstab"), FSTAB).unwrap();
    fs::write(root.join("etc/hostname"), "raspberrypi\n").unwrap();
    fs::write(root.join("usr/bin/tool"), common::noise(50_000, 15)).unwrap();
    root
}

/// A FAT32 image of `tree` (`mkfs.vfat` + `mcopy`), `kib` long.
fn fat_image(tree: &Path, out: &Path, kib: u64) {
    let _ = fs::remove_file(out);
    common::run(
        "mkfs.vfat",
        &["-C", "-F", "32", "-n", "bootfs", s(out), &kib.to_string()],
        None,
    );
    let mut args = vec!["-s", "-i", s(out)];
    let entries: Vec<PathBuf> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let names: Vec<&str> = entries.iter().map(|p| s(p)).collect();
    args.extend(names);
    args.push("::");
    common::run("mcopy", &args, None);
}

/// A stock dump as Raspberry Pi OS lays it out: boot (FAT32, 64 MiB at sector 8192) and one
/// ext4 root (48 MiB) after it; `table` is `dos` or `gpt`. `extra` adds partitions after
/// the root (sfdisk lines) whose contents are `extra_fs`.
fn stock_dump(dir: &Path, table: &str, config: &str, extra: &[&[u8]]) -> PathBuf {
    let boot = boot_tree(dir, config);
    let root = root_tree(dir);
    let boot_img = dir.join("boot.fat");
    fat_image(&boot, &boot_img, 64 * 1024);
    let root_img = dir.join("root.ext4");
    let _ = fs::remove_file(&root_img);
    common::run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "rootfs",
            "-d",
            s(&root),
            s(&root_img),
            "48M",
        ],
        None,
    );
    let disk = dir.join(format!("stock-{table}.img"));
    let sectors = 8192 + 131_072 + 98_304 + 8192 * extra.len() as u64 + 2048;
    fs::File::create(&disk)
        .unwrap()
        .set_len(sectors * 512)
        .unwrap();
    let (fat, linux) = if table == "gpt" {
        (
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        )
    } else {
        ("c", "83")
    };
    let mut script = format!(
        "label: {table}\n{}8192,131072,{fat}\n139264,98304,{linux}\n",
        if table == "dos" {
            format!("label-id: 0x{DISK_ID}\n")
        } else {
            String::new()
        }
    );
    for (i, _) in extra.iter().enumerate() {
        writeln!(script, "{},8192,{linux}", 237_568 + 8192 * i).unwrap();
    }
    common::run("sfdisk", &["--quiet", s(&disk)], Some(&script));
    let mut image = fs::read(&disk).unwrap();
    let mut place = |start: usize, bytes: &[u8]| {
        image[start * 512..start * 512 + bytes.len()].copy_from_slice(bytes);
    };
    place(8192, &fs::read(&boot_img).unwrap());
    place(139_264, &fs::read(&root_img).unwrap());
    for (i, bytes) in extra.iter().enumerate() {
        place(237_568 + 8192 * i, bytes);
    }
    fs::write(&disk, image).unwrap();
    disk
}

fn loader(dir: &Path) -> PathBuf {
    let path = dir.join("zboot.img");
    fs::write(&path, common::noise(4096, 1)).unwrap();
    path
}

fn convert_args<'a>(input: &'a [&'a str], out: &'a str, loader: &'a str) -> Vec<&'a str> {
    let mut args = vec!["image", "convert"];
    args.extend_from_slice(input);
    args.extend_from_slice(&[
        "-o",
        out,
        "--name",
        "raspios",
        "--version",
        "3",
        "--loader",
        loader,
        "--data-size",
        "8M",
        "--chunk-kib",
        "256",
    ]);
    args
}

/// The partitions of a disk image as `sfdisk --json` reads them: (number, start, size, type).
fn sfdisk(disk: &Path) -> (String, Vec<(u64, u64, String)>) {
    let out = Command::new("sfdisk")
        .args(["--json", s(disk)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = &json["partitiontable"];
    let parts = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (table["id"].as_str().unwrap_or("").to_string(), parts)
}

/// A file of the ext4 root at `start` sectors, read with debugfs.
fn debugfs_cat(disk: &Path, start: u64, sectors: u64, file: &str) -> String {
    let bytes = fs::read(disk).unwrap();
    let part = disk.with_extension(format!("p{start}"));
    fs::write(
        &part,
        &bytes[usize::try_from(start * 512).unwrap()
            ..usize::try_from((start + sectors) * 512).unwrap()],
    )
    .unwrap();
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}"), s(&part)])
        .output()
        .unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-n", "-f", s(&part)])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck of the root at {start}: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    fs::remove_file(&part).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn text(disk: &Path, file: &str) -> String {
    String::from_utf8(common::mtype(disk, file)).unwrap()
}

fn mdir(disk: &Path) -> String {
    let out = Command::new("mdir")
        .args(["-b", "-i", &format!("{}@@1M", s(disk)), "::"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().to_lowercase()
}

/// The checks every converted stock image passes; returns the disk signature.
fn check_converted(dir: &Path, zi: &Path, boot: &Path, b_copy: bool) -> String {
    let disk = dir.join("decoded.img");
    decode_to_disk(zi, &disk);
    let (id, parts) = sfdisk(&disk);
    let types: Vec<&str> = parts.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(types, ["c", "83", "83", "f", "83", "83"], "{parts:?}");
    let signature = id.trim_start_matches("0x").to_string();

    // config.txt: every user setting kept, zboot's lines closing it.
    let config = text(&disk, "config.txt");
    for kept in [
        "dtparam=audio=on",
        "dtoverlay=vc4-kms-v3d",
        "arm_boost=1",
        "include extra.txt",
        "[cm5]\ndtoverlay=dwc2,dr_mode=host",
    ] {
        assert!(config.contains(kept), "{kept} lost:\n{config}");
    }
    assert!(config.contains("# zboot: otg_mode=1"), "{config}");
    assert!(config.contains("# zboot: auto_initramfs=1"), "{config}");
    assert!(
        config.ends_with("[all]\n# zboot (zbctl image convert): the firmware loads zboot, which boots the slots\nkernel=zboot.img\narm_64bit=1\nenable_uart=1\n"),
        "{config}"
    );
    assert_eq!(text(&disk, "extra.txt"), "dtparam=i2c_arm=on\n");

    // The firmware's files stay; the kernel, initramfs and cmdline.txt moved into the slots.
    let top = mdir(&disk);
    for name in [
        "start4.elf",
        "fixup4.dat",
        "bcm2711-rpi-cm4.dtb",
        "kernel_2712.img",
        "zboot.img",
    ] {
        assert!(top.contains(name), "{name} missing: {top}");
    }
    for name in ["kernel8.img", "initramfs8", "cmdline.txt"] {
        assert!(
            !top.contains(&format!("::/{name}")),
            "{name} still at the top: {top}"
        );
    }
    assert_eq!(common::mtype(&disk, "overlays/README"), b"overlays\n");
    let slots: &[&str] = if b_copy {
        &["A", "B", "SAFE"]
    } else {
        &["A", "SAFE"]
    };
    for slot in slots {
        assert_eq!(
            common::mtype(&disk, &format!("{slot}/kernel.img")),
            fs::read(boot.join("kernel8.img")).unwrap()
        );
        assert_eq!(
            common::mtype(&disk, &format!("{slot}/initrd.img")),
            fs::read(boot.join("initramfs8")).unwrap()
        );
        assert_eq!(
            text(&disk, &format!("{slot}/cmdline.txt")),
            "console=serial0,115200 console=tty1 rootfstype=ext4 fsck.repair=yes rootwait quiet\n"
        );
        assert!(text(&disk, &format!("{slot}/slot.txt")).contains("image_version=3"));
    }

    // The roots: fstab names / as /dev/root and the boot partition of this disk.
    let mut roots = vec![(parts[1].0, parts[1].1), (parts[4].0, parts[4].1)];
    if b_copy {
        roots.push((parts[2].0, parts[2].1));
    }
    for (start, size) in roots {
        let fstab = debugfs_cat(&disk, start, size, "/etc/fstab");
        assert_eq!(
            fstab,
            format!(
                "proc            /proc           proc    defaults          0       0\n\
                 PARTUUID={signature}-01  /boot/firmware  vfat    defaults          0       2\n\
                 /dev/root  /               ext4    defaults,noatime  0       1\n"
            )
        );
        assert_eq!(
            debugfs_cat(&disk, start, size, "/etc/hostname"),
            "raspberrypi\n"
        );
    }
    if !b_copy {
        let (start, size) = (parts[2].0, parts[2].1);
        assert_eq!(
            debugfs_cat(&disk, start, size, "/etc/hostname"),
            "",
            "B is empty"
        );
    }

    // The slot state is fresh and every slot it holds is bootable.
    let status = common::status(&disk);
    assert_eq!(common::slot_state(&status, "A"), "good", "{status}");
    signature
}

#[test]
fn a_stock_mbr_dump_becomes_an_a_b_safe_data_image() {
    let dir = tempfile::tempdir().unwrap();
    let dump = stock_dump(dir.path(), "dos", CONFIG, &[]);
    let zi = dir.path().join("out.zi");
    let loader = loader(dir.path());

    // --dry-run: every change printed, nothing written.
    let input = ["--from-disk", s(&dump)];
    let mut args = convert_args(&input, s(&zi), s(&loader));
    args.push("--dry-run");
    let out = zbctl(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    for line in [
        "config.txt line 8: `auto_initramfs=1` commented out",
        "config.txt line 19: `otg_mode=1` commented out",
        "kernel8.img: moved into the slots A, B and SAFE",
        "initramfs8: moved into the slots",
        "dropped `root=PARTUUID=5a5a0009-02`",
        "/etc/fstab: `PARTUUID=5a5a0009-02` on / → `/dev/root`",
        "--dry-run: nothing written",
    ] {
        assert!(stdout.contains(line), "`{line}` not in:\n{stdout}");
    }
    assert!(
        stderr.contains("warning: config.txt line 19: `otg_mode=1` removed"),
        "{stderr}"
    );
    assert!(stderr.contains("first-boot script"), "{stderr}");
    assert!(!zi.exists());
    assert_eq!(
        debugfs_cat(&dump, 139_264, 98_304, "/etc/fstab"),
        FSTAB,
        "the dump is never written"
    );

    ok(&convert_args(&input, s(&zi), s(&loader)));
    let signature = check_converted(dir.path(), &zi, &dir.path().join("boot"), true);
    assert_eq!(signature, DISK_ID, "an MBR dump keeps its disk signature");
    let inspect = ok(&["image", "inspect", s(&zi)]);
    assert!(inspect.contains("raspios"), "{inspect}");
}

#[test]
fn a_stock_gpt_dump_and_an_empty_b() {
    let dir = tempfile::tempdir().unwrap();
    let dump = stock_dump(dir.path(), "gpt", CONFIG, &[]);
    let zi = dir.path().join("out.zi");
    let loader = loader(dir.path());
    let input = ["--from-disk", s(&dump), "--b-empty"];
    ok(&convert_args(&input, s(&zi), s(&loader)));
    let signature = check_converted(dir.path(), &zi, &dir.path().join("boot"), false);
    assert_ne!(signature, "00000000");
}

#[test]
fn stock_tarballs_become_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let boot = boot_tree(dir.path(), CONFIG);
    let root = root_tree(dir.path());
    let (boot_tar, root_tar) = (dir.path().join("boot.tar"), dir.path().join("root.tar"));
    common::tar(&boot, &boot_tar);
    common::tar(&root, &root_tar);
    // The root compressed, as tarballs often travel: decompressed before mke2fs reads it.
    common::run("gzip", &["-n", s(&root_tar)], None);
    let root_tgz = dir.path().join("root.tar.gz");
    let zi = dir.path().join("out.zi");
    let loader = loader(dir.path());
    let input = [
        "-b",
        s(&boot_tar),
        "-r",
        s(&root_tgz),
        "--boot-mib",
        "64",
        "--root-mib",
        "40",
    ];
    ok(&convert_args(&input, s(&zi), s(&loader)));
    check_converted(dir.path(), &zi, &boot, true);
}

fn refused(args: &[&str], needles: &[&str], output: &Path) {
    let out = zbctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(!output.exists(), "nothing is written");
}

#[test]
fn bad_stock_inputs_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let zi = dir.path().join("out.zi");
    let loader = loader(dir.path());

    // Several candidate roots.
    let second = dir.path().join("second.ext4");
    common::run(
        "mke2fs",
        &["-q", "-F", "-t", "ext4", s(&second), "4M"],
        None,
    );
    let two = stock_dump(dir.path(), "dos", CONFIG, &[&fs::read(&second).unwrap()]);
    let input = ["--from-disk", s(&two)];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &[
            "several candidate root partitions (2, 3)",
            "--root-partition",
        ],
        &zi,
    );
    // ... and the choice of one works.
    let input = ["--from-disk", s(&two), "--root-partition", "2", "--dry-run"];
    ok(&convert_args(&input, s(&zi), s(&loader)));

    // A root zboot does not know.
    let mut xfs = vec![0u8; 8192 * 512];
    xfs[..4].copy_from_slice(b"XFSB");
    let sub = dir.path().join("xfs");
    fs::create_dir(&sub).unwrap();
    let dump = stock_dump(&sub, "dos", CONFIG, &[&xfs]);
    let input = ["--from-disk", s(&dump), "--root-partition", "3"];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &["--root-partition 3 holds xfs"],
        &zi,
    );

    // kernel= naming a file that is not there.
    let sub = dir.path().join("kernel");
    fs::create_dir(&sub).unwrap();
    let dump = stock_dump(&sub, "dos", &format!("{CONFIG}kernel=vmlinuz-6.1\n"), &[]);
    let input = ["--from-disk", s(&dump)];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &[
            "partition 1: config.txt names the kernel `vmlinuz-6.1`, which is not in the boot partition",
        ],
        &zi,
    );

    // A root too big for the slot.
    let input = [
        "--from-disk",
        s(&two),
        "--root-partition",
        "2",
        "--root-mib",
        "8",
    ];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &["the root file system is 48 MiB, more than the slot's 8 MiB"],
        &zi,
    );
}

#[test]
fn bad_stock_tarballs_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let zi = dir.path().join("out.zi");
    let loader = loader(dir.path());
    let sub = dir.path();
    // No kernel at all (no kernel=, no kernel8.img).
    let boot = boot_tree(sub, CONFIG);
    fs::remove_file(boot.join("kernel8.img")).unwrap();
    let root = root_tree(sub);
    let (boot_tar, root_tar) = (sub.join("boot.tar"), sub.join("root.tar"));
    common::tar(&boot, &boot_tar);
    common::tar(&root, &root_tar);
    let input = ["-b", s(&boot_tar), "-r", s(&root_tar)];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &["no kernel in the boot partition", "kernel8.img"],
        &zi,
    );

    // A tarball member with an absolute path, or with `..`.
    let outside = dir.path().join("outside.txt");
    fs::write(&outside, "x").unwrap();
    let absolute = sub.join("absolute.tar");
    common::run("tar", &["-cPf", s(&absolute), s(&outside)], None);
    let input = ["-b", s(&boot_tar), "-r", s(&absolute)];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &[
            "absolute.tar: member `/",
            "absolute path or a `..` component",
        ],
        &zi,
    );
    let dotdot = sub.join("dotdot.tar");
    common::run(
        "tar",
        &[
            "-cf",
            s(&dotdot),
            "-C",
            s(&boot),
            "--transform",
            "s,^,../,",
            "config.txt",
        ],
        None,
    );
    let input = ["-b", s(&dotdot), "-r", s(&root_tar)];
    refused(
        &convert_args(&input, s(&zi), s(&loader)),
        &["member `../config.txt`"],
        &zi,
    );
}

/// `work/root.tar` (GNU tar, as root, with xattrs and ACLs) of `root` with what a Debian
/// root holds that an ordinary user cannot make by extracting it; `work/boot.tar` of `boot`.
fn make_metadata_tarballs(work: &Path, boot: &Path, root: &Path) {
    as_root(&format!(
        "cd {root}
         mkdir -p usr/sbin dev run home/pi srv/shared
         printf x > usr/sbin/unix_chkpwd; chown 0:42 usr/sbin/unix_chkpwd; chmod 2755 usr/sbin/unix_chkpwd
         printf y > usr/bin/passwd; chmod 4755 usr/bin/passwd
         cp /bin/true usr/bin/ping; setcap cap_net_raw+ep usr/bin/ping
         mknod dev/console c 5 1; chmod 600 dev/console
         mknod dev/sda b 8 0; chown 0:6 dev/sda; chmod 660 dev/sda
         mkfifo run/initctl
         ln -s usr/bin bin
         printf z > usr/bin/a; ln usr/bin/a usr/bin/b
         chown 1000:1000 home/pi; chmod 750 home/pi; chmod 1777 srv
         printf acl > srv/acl.txt; setfacl -m u:1000:rw srv/acl.txt
         setfacl -d -m g:100:rx srv/shared
         cd {work}
         tar --xattrs --xattrs-include='*' --acls --numeric-owner -cpf root.tar -C {root} .
         tar -cf boot.tar -C {boot} .
         chmod 0755 {work}; chmod 0644 root.tar boot.tar",
        root = s(root),
        work = s(work),
        boot = s(boot),
    ));
}

#[test]
fn a_root_tarball_made_as_root_keeps_every_owner_mode_node_xattr_and_acl_converted_as_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let boot = boot_tree(work, CONFIG);
    let root = root_tree(work);
    make_metadata_tarballs(work, &boot, &root);
    let out_dir = work.join("out");
    fs::create_dir(&out_dir).unwrap();
    fs::set_permissions(
        &out_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let loader = loader(work);
    let zi = out_dir.join("out.zi");
    let (boot_tar, root_tar) = (work.join("boot.tar"), work.join("root.tar"));
    let input = [
        "-b",
        s(&boot_tar),
        "-r",
        s(&root_tar),
        "--boot-mib",
        "64",
        "--root-mib",
        "40",
    ];
    let args = convert_args(&input, s(&zi), s(&loader));
    // An ordinary user converts: nobody, when the test runs as root.
    let mut command = if euid() == "0" {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(env!("CARGO_BIN_EXE_zbctl"));
        command
    } else {
        Command::new(env!("CARGO_BIN_EXE_zbctl"))
    };
    let out = command.args(&args[..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let disk = work.join("decoded.img");
    decode_to_disk(&zi, &disk);
    let (_, parts) = sfdisk(&disk);
    let bytes = fs::read(&disk).unwrap();
    let (start, size) = (parts[1].0 as usize * 512, parts[1].1 as usize * 512);
    let root_a = work.join("root-a.ext4");
    fs::write(&root_a, &bytes[start..start + size]).unwrap();

    assert_listing_matches(&work.join("root.tar"), &root_a);

    // xattrs and ACLs.
    let answers = debugfs_batch(
        &root_a,
        &[
            "ea_list /usr/bin/ping".into(),
            "ea_list /srv/acl.txt".into(),
            "ea_list /srv/shared".into(),
        ],
    );
    assert!(
        answers[0].contains("security.capability (20)"),
        "{}",
        answers[0]
    );
    assert!(
        answers[1].contains("system.posix_acl_access"),
        "{}",
        answers[1]
    );
    assert!(
        answers[2].contains("system.posix_acl_default"),
        "{}",
        answers[2]
    );
    // ext4's ACL form (a version-1 header, then tag, permissions and, for named entries,
    // the id, little-endian): user 1000 rw- on the file, group 100 r-x by default on the
    // directory.
    assert!(
        answers[1].contains("02 00 06 00 e8 03 00 00"),
        "{}",
        answers[1]
    );
    assert!(
        answers[2].contains("08 00 05 00 64 00 00 00"),
        "{}",
        answers[2]
    );
    // The fstab rewrite kept its owner and mode.
    let fstab = debugfs_batch(&root_a, &["cat /etc/fstab".into()]);
    assert!(fstab[0].contains("/dev/root  /"), "{}", fstab[0]);
}

fn mtype_at(disk: &Path, offset: &str, file: &str) -> Option<Vec<u8>> {
    let out = Command::new("mtype")
        .args([
            "-i",
            &format!("{}@@{offset}", s(disk)),
            &format!("::{file}"),
        ])
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

#[test]
fn adopt_prepares_a_stock_unit_for_its_reflash_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let dump = stock_dump(dir.path(), "dos", CONFIG, &[]);
    let loader = loader(dir.path());
    let zi = dir.path().join("out.zi");
    ok(&convert_args(
        &["--from-disk", s(&dump)],
        s(&zi),
        s(&loader),
    ));
    let unit = dir.path().join("unit.img");
    fs::copy(&dump, &unit).unwrap();

    // --dry-run writes nothing.
    let before = fs::read(&unit).unwrap();
    let report = ok(&["--image", s(&unit), "adopt", "--zi", s(&zi), "--dry-run"]);
    assert!(report.contains("`otg_mode=1` commented out"), "{report}");
    assert!(fs::read(&unit).unwrap() == before, "--dry-run wrote");

    let report = ok(&["--image", s(&unit), "adopt", "--zi", s(&zi), "--wait", "30"]);
    assert!(report.contains("adopt_wait=30"), "{report}");
    let file = |name: &str| mtype_at(&unit, "4M", name);
    assert_eq!(
        file("zboot.img").unwrap(),
        fs::read(&loader).unwrap(),
        "the image's loader"
    );
    assert_eq!(
        file("config.stock.txt").unwrap(),
        CONFIG.as_bytes(),
        "the stock config kept"
    );
    let config = String::from_utf8(file("config.txt").unwrap()).unwrap();
    assert!(config.contains("[cm4]\n# zboot: otg_mode=1\n"), "{config}");
    assert!(
        config.ends_with(
            "[all]\n# zboot (zbctl adopt): the firmware loads zboot, which boots the slots\n\
             kernel=zboot.img\narm_64bit=1\nenable_uart=1\n"
        ),
        "{config}"
    );
    let manifest = String::from_utf8(file("zbmanifest.txt").unwrap()).unwrap();
    assert!(
        manifest.contains("adopt=yes\nadopt_wait=30\n"),
        "{manifest}"
    );
    // The stock files are untouched: the unit still boots its system until the stick comes.
    assert_eq!(
        file("kernel8.img").unwrap(),
        fs::read(dir.path().join("boot/kernel8.img")).unwrap()
    );
    assert_eq!(file("cmdline.txt").unwrap(), CMDLINE.as_bytes());
    // The boot partition checks clean after the edit.
    let boot_part = dir.path().join("boot-part.fat");
    fs::write(
        &boot_part,
        &fs::read(&unit).unwrap()[8192 * 512..(8192 + 131_072) * 512],
    )
    .unwrap();
    let fsck = Command::new("fsck.fat")
        .args(["-n", s(&boot_part)])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    // A second run rebuilds config.txt from config.stock.txt: the same result.
    ok(&["--image", s(&unit), "adopt", "--zi", s(&zi), "--wait", "30"]);
    assert_eq!(
        String::from_utf8(file("config.txt").unwrap()).unwrap(),
        config
    );

    // Refused, with nothing written: a unit already in the zboot layout ...
    let zboot_unit = dir.path().join("zboot.img.disk");
    decode_to_disk(&zi, &zboot_unit);
    let out = zbctl(&["--image", s(&zboot_unit), "adopt", "--zi", s(&zi)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in the zboot layout"));
    // ... and an image that fails its check.
    let bad = dir.path().join("bad.zi");
    let mut bytes = fs::read(&zi).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0xff;
    fs::write(&bad, bytes).unwrap();
    let fresh = dir.path().join("fresh.img");
    fs::copy(&dump, &fresh).unwrap();
    let out = zbctl(&["--image", s(&fresh), "adopt", "--zi", s(&bad)]);
    assert!(!out.status.success(), "a corrupt image is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("region"),
        "the error names the damaged region: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read(&fresh).unwrap() == fs::read(&dump).unwrap(),
        "nothing written"
    );
}

#[test]
fn capture_makes_an_image_of_a_running_unit_and_its_recovery_stick() {
    let dir = tempfile::tempdir().unwrap();
    let boot = boot_tree(dir.path(), CONFIG);
    let root = root_tree(dir.path());
    // What a running root holds that must not go into the image.
    fs::create_dir_all(root.join("proc/1")).unwrap();
    fs::write(root.join("proc/cpuinfo"), "processor: 0\n").unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::write(root.join("tmp/scratch"), "x").unwrap();
    let loader = loader(dir.path());
    let zi = dir.path().join("golden.zi");
    let stick = dir.path().join("stick.img");
    let report = ok(&[
        "image",
        "capture",
        "-o",
        s(&zi),
        "--usb",
        s(&stick),
        "--name",
        "raspios",
        "--version",
        "3",
        "--boot-files",
        s(&boot),
        "--root",
        s(&root),
        "--loader",
        s(&loader),
        "--root-mib",
        "40",
        "--data-size",
        "8M",
    ]);
    assert!(report.contains("captured"), "{report}");
    assert!(report.contains("recovery stick"), "{report}");
    check_converted(dir.path(), &zi, &boot, true);
    // The stick holds the image, byte for byte.
    let on_stick = Command::new("mtype")
        .args(["-i", &format!("{}@@1M", s(&stick)), "::ZBOOT.ZI"])
        .output()
        .unwrap();
    assert!(
        on_stick.stdout == fs::read(&zi).unwrap(),
        "the stick's ZBOOT.ZI"
    );
    // /proc and /tmp are kept as empty directories.
    let disk = dir.path().join("decoded.img");
    let (_, parts) = sfdisk(&disk);
    let bytes = fs::read(&disk).unwrap();
    let root_a = dir.path().join("root-a.ext4");
    let (start, size) = (parts[1].0 as usize * 512, parts[1].1 as usize * 512);
    fs::write(&root_a, &bytes[start..start + size]).unwrap();
    let listing = debugfs_batch(&root_a, &["ls -p /proc".into(), "ls -p /tmp".into()]);
    assert!(
        !listing[0].contains("cpuinfo") && !listing[0].contains("/1/"),
        "{}",
        listing[0]
    );
    assert!(!listing[1].contains("scratch"), "{}", listing[1]);
    assert!(
        listing[0].contains("/.."),
        "/proc itself is there: {}",
        listing[0]
    );
}

#[test]
fn safe_can_come_from_a_second_stock_image() {
    let dir = tempfile::tempdir().unwrap();
    let dump = stock_dump(dir.path(), "dos", CONFIG, &[]);
    let safe_dir = dir.path().join("safe");
    fs::create_dir(&safe_dir).unwrap();
    let safe = stock_dump(&safe_dir, "dos", CONFIG, &[]);
    // SAFE's own kernel.
    let safe_kernel = safe_dir.join("safe-kernel");
    fs::write(&safe_kernel, common::noise(123_456, 42)).unwrap();
    common::run(
        "mcopy",
        &[
            "-o",
            "-i",
            &format!("{}@@4M", s(&safe)),
            s(&safe_kernel),
            "::kernel8.img",
        ],
        None,
    );
    let zi = dir.path().join("out.zi");
    let loader = loader(dir.path());
    let report = ok(&convert_args(
        &["--from-disk", s(&dump), "--safe", s(&safe)],
        s(&zi),
        s(&loader),
    ));
    assert!(report.contains("5 SAFE = "), "{report}");
    assert!(report.contains("SAFE: /etc/fstab"), "{report}");
    let disk = dir.path().join("decoded.img");
    decode_to_disk(&zi, &disk);
    assert_eq!(
        common::mtype(&disk, "SAFE/kernel.img"),
        fs::read(&safe_kernel).unwrap(),
        "SAFE boots its own kernel"
    );
    assert_eq!(
        common::mtype(&disk, "A/kernel.img"),
        fs::read(dir.path().join("boot/kernel8.img")).unwrap()
    );
    let (_, parts) = sfdisk(&disk);
    let fstab = debugfs_cat(&disk, parts[4].0, parts[4].1, "/etc/fstab");
    assert!(fstab.contains("/dev/root  /"), "{fstab}");
}
