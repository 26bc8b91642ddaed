//! `zbctl install` end to end: a disk from `zbctl disk create`, a `.zi` from `zbctl image
//! convert`, the real binary; the disk's bytes are compared before and after, the slot's files
//! read with mtools, the boot partition checked with `fsck.fat -n`.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    BOOT, ROOT_B, assert_active_untouched, cmdline_file, compare_root_with_image,
    convert_small_image, convert_small_image_with, create_small_disk, mtype, noise, ok, s,
    slot_field, slot_state, status, tar, zbctl, zbctl_env,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn fails(args: &[&str], code: i32, needles: &[&str]) -> String {
    let out = zbctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "zbctl {args:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "zbctl {args:?}: {stderr}");
    }
    stderr
}

/// Inputs made once: a fresh disk, an image of version 5 (root 24 MiB), one whose root is
/// 48 MiB (larger than the disk's 32 MiB root partitions), and a key pair.
struct Fixture {
    dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("zboot.img"), noise(70_000, 1)).unwrap();
        fs::write(p.join("kernel"), noise(300_001, 2)).unwrap();
        ok(&["key", "generate", "-o", s(&p.join("release"))]);
        let public = fs::read_to_string(p.join("release.pub")).unwrap();
        fs::write(
            p.join("signed-manifest.txt"),
            format!(
                "root_a=/dev/mmcblk0p2\nroot_b=/dev/mmcblk0p3\nsafe_root=/dev/mmcblk0p5\n\
                 public_key={}\n",
                public.trim()
            ),
        )
        .unwrap();
        let manifest = p.join("signed-manifest.txt");
        for (name, extra) in [
            ("disk.img", vec![]),
            ("signed-disk.img", vec!["--manifest", s(&manifest)]),
        ] {
            create_small_disk(
                &p.join(name),
                &p.join("zboot.img"),
                &p.join("kernel"),
                &extra,
            );
        }
        let boot = p.join("boot");
        fs::create_dir_all(boot.join("A")).unwrap();
        fs::write(boot.join("config.txt"), "arm_64bit=1\nkernel=zboot.img\n").unwrap();
        fs::write(boot.join("zboot.img"), noise(70_000, 1)).unwrap();
        fs::write(boot.join("A/kernel.img"), noise(200_000, 9)).unwrap();
        fs::write(boot.join("A/initrd.img"), noise(30_000, 10)).unwrap();
        fs::write(boot.join("A/cmdline.txt"), "console=ttyAMA0 rootwait\n").unwrap();
        let root = p.join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "new\n").unwrap();
        fs::write(root.join("etc/blob"), noise(3 << 20, 11)).unwrap();
        tar(&boot, &p.join("boot.tar"));
        tar(&root, &p.join("root.tar"));
        for (name, root_mib) in [("os.zi", "24"), ("big.zi", "48")] {
            convert_small_image(p, name, "5", root_mib);
        }
        Fixture { dir }
    })
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A private copy of a fixture file.
    fn copy(&self, name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs::copy(self.path(name), &path).unwrap();
        (dir, path)
    }
}

fn fsck_boot(disk: &Path) {
    let bytes = fs::read(disk).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot.fat");
    fs::write(&boot, &bytes[BOOT]).unwrap();
    let out = Command::new("fsck.fat")
        .args(["-n", s(&boot)])
        .output()
        .expect("fsck.fat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The image's root regions (data and fill) are in root B, byte for byte.
fn assert_root_b_is_image(zi: &Path, disk: &Path) {
    let compared = compare_root_with_image(
        &fs::read(disk).unwrap(),
        ROOT_B.start,
        &fs::read(zi).unwrap(),
    );
    assert!(compared > 3 << 20, "{compared}");
}

#[test]
fn installs_into_b_as_a_trial_and_leaves_a_alone() {
    let f = fixture();
    let (_dir, disk) = f.copy("disk.img");
    let before = fs::read(&disk).unwrap();
    let report = ok(&["--image", s(&disk), "install", s(&f.path("os.zi"))]);
    assert!(report.contains("into slot B"), "{report}");
    assert!(report.contains("bytes written by install"), "{report}");
    assert!(report.contains("image used bytes"), "{report}");
    let json = status(&disk);
    assert_eq!(json["active"], "B");
    assert_eq!(json["backup"], "A");
    assert_eq!(slot_state(&json, "B"), "trial");
    assert_eq!(slot_state(&json, "A"), "good");
    assert_active_untouched(&before, &disk);
    assert_root_b_is_image(&f.path("os.zi"), &disk);
    fsck_boot(&disk);
    // B's files are the image's A/ files, with a slot.txt the loader's parser accepts.
    let boot = f.path("boot");
    for file in ["kernel.img", "initrd.img", "cmdline.txt"] {
        assert_eq!(
            mtype(&disk, &format!("B/{file}")),
            fs::read(boot.join("A").join(file)).unwrap()
        );
    }
    let slot_txt = mtype(&disk, "B/slot.txt");
    let manifest = recovery_proto::slot_manifest::SlotManifest::parse(&slot_txt).unwrap();
    assert_eq!(manifest.image_version, 5);
    assert_eq!(manifest.files().len(), 3);
    assert_eq!(
        manifest.algorithm(),
        recovery_proto::slot_manifest::Algorithm::Blake3,
        "a version-2 image installs a format-2 slot.txt"
    );
    // A second install before B is confirmed would overwrite A, the last good system.
    fails(
        &["--image", s(&disk), "install", s(&f.path("os.zi"))],
        1,
        &["not confirmed"],
    );
}

/// An image made for units whose loader predates BLAKE3 (`--hash sha256`, `.zi` version 1,
/// no `A/slot.txt` of its own) installs a format-1 `slot.txt` such a loader reads.
#[test]
fn a_version_1_image_installs_a_format_1_slot_txt() {
    use recovery_proto::slot_manifest::{Algorithm, SlotManifest};
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    for tarball in ["boot.tar", "root.tar"] {
        fs::copy(f.path(tarball), dir.path().join(tarball)).unwrap();
    }
    convert_small_image_with(dir.path(), "old.zi", "5", "24", &["--hash", "sha256"]);
    let (_disk_dir, disk) = f.copy("disk.img");
    ok(&[
        "--image",
        s(&disk),
        "install",
        s(&dir.path().join("old.zi")),
    ]);
    let slot_txt = mtype(&disk, "B/slot.txt");
    assert!(
        slot_txt.starts_with(b"format=1\n"),
        "{}",
        String::from_utf8_lossy(&slot_txt)
    );
    let manifest = SlotManifest::parse(&slot_txt).unwrap();
    assert_eq!(manifest.algorithm(), Algorithm::Sha256);
    for file in manifest.files() {
        let bytes = mtype(&disk, &format!("B/{}", file.name));
        assert_eq!(
            file.verify(
                bytes.len() as u64,
                Algorithm::Sha256,
                &Algorithm::Sha256.digest(&bytes)
            ),
            Ok(()),
            "{}",
            file.name
        );
    }
}

#[test]
fn once_installs_a_one_shot_from_a_stick_and_a_mounted_directory() {
    let f = fixture();
    let (dir, disk) = f.copy("disk.img");
    let stick = dir.path().join("stick.img");
    ok(&[
        "usb",
        "create",
        "--zi",
        s(&f.path("os.zi")),
        "-o",
        s(&stick),
    ]);
    let report = ok(&["--image", s(&disk), "install", "--once", s(&stick)]);
    assert!(report.contains("stick.img:ZBOOT.ZI"), "{report}");
    let json = status(&disk);
    assert_eq!(json["active"], "A");
    assert_eq!(json["one_shot"], "B");
    assert_eq!(slot_state(&json, "B"), "trial");
    // A mounted stick: the name is matched without case, as on FAT.
    let mounted = dir.path().join("mnt");
    fs::create_dir(&mounted).unwrap();
    fs::copy(f.path("os.zi"), mounted.join("zboot.zi")).unwrap();
    let report = ok(&["--image", s(&disk), "install", "--once", s(&mounted)]);
    assert!(report.contains("zboot.zi"), "{report}");
    assert_root_b_is_image(&f.path("os.zi"), &disk);
}

#[test]
fn tampered_image_is_refused_with_nothing_written() {
    let f = fixture();
    let (dir, disk) = f.copy("disk.img");
    let before = fs::read(&disk).unwrap();
    let zi = dir.path().join("tampered.zi");
    let mut bytes = fs::read(f.path("os.zi")).unwrap();
    let at = bytes.len() - 1000; // inside the last chunk (the boot partition)
    bytes[at] ^= 0x40;
    fs::write(&zi, &bytes).unwrap();
    let error = fails(&["--image", s(&disk), "install", s(&zi)], 3, &["payload"]);
    assert!(error.contains("offset"), "{error}");
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
    // A header byte: refused at once, naming the part and offset.
    bytes[at] ^= 0x40;
    bytes[100] ^= 1;
    fs::write(&zi, &bytes).unwrap();
    fails(
        &["--image", s(&disk), "install", s(&zi)],
        2,
        &["header", "offset 224"],
    );
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
}

#[test]
fn image_larger_than_the_slot_partition_is_refused() {
    let f = fixture();
    let (_dir, disk) = f.copy("disk.img");
    let before = fs::read(&disk).unwrap();
    fails(
        &["--image", s(&disk), "install", s(&f.path("big.zi"))],
        1,
        &["50331648 bytes", "33554432 bytes", "root partition 3"],
    );
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
}

#[test]
fn provisioned_key_refuses_unsigned_and_accepts_signed() {
    let f = fixture();
    let (dir, disk) = f.copy("signed-disk.img");
    let before = fs::read(&disk).unwrap();
    fails(
        &["--image", s(&disk), "install", s(&f.path("os.zi"))],
        4,
        &["not signed"],
    );
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
    let signed = dir.path().join("signed.zi");
    fs::copy(f.path("os.zi"), &signed).unwrap();
    ok(&[
        "image",
        "sign",
        s(&signed),
        "--key",
        s(&f.path("release.key")),
    ]);
    ok(&["--image", s(&disk), "install", s(&signed)]);
    assert_eq!(slot_state(&status(&disk), "B"), "trial");
    // --pubkey on a disk without a provisioned key: the same rule.
    let (_other, plain) = f.copy("disk.img");
    fails(
        &[
            "--image",
            s(&plain),
            "install",
            "--pubkey",
            s(&f.path("release.pub")),
            s(&f.path("os.zi")),
        ],
        4,
        &["not signed"],
    );
}

/// The fingerprint zbctl and the loader name a `.pub` file's key by.
fn fingerprint(public: &Path) -> String {
    let text = fs::read_to_string(public).unwrap();
    let bytes: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&text.trim()[i..i + 2], 16).unwrap())
        .collect();
    recovery_proto::slot_signature::fingerprint(&bytes.try_into().unwrap()).to_string()
}

#[test]
fn image_sign_signs_the_slot_inside_and_install_carries_it() {
    let f = fixture();
    let (dir, disk) = f.copy("signed-disk.img");
    let signed = dir.path().join("signed.zi");
    fs::copy(f.path("os.zi"), &signed).unwrap();
    let key = f.path("release.key");
    let out = ok(&["image", "sign", s(&signed), "--key", s(&key)]);
    assert!(out.contains("encoded again with its slots signed"), "{out}");
    assert!(
        out.contains("slot A: slot.txt version 5 signed as os"),
        "{out}"
    );
    ok(&[
        "image",
        "verify",
        s(&signed),
        "--pubkey",
        s(&f.path("release.pub")),
    ]);
    // Signing again finds the slots signed: only the header is signed.
    let before = fs::read(&signed).unwrap();
    let again = ok(&["image", "sign", s(&signed), "--key", s(&key)]);
    assert!(!again.contains("encoded again"), "{again}");
    assert!(
        fs::read(&signed).unwrap() == before,
        "re-signed without a change"
    );

    let report = ok(&["--image", s(&disk), "install", s(&signed)]);
    assert!(report.contains("into slot B"), "{report}");
    let json = status(&disk);
    let expected = fingerprint(&f.path("release.pub"));
    assert_eq!(slot_field(&json, "B", "signer"), expected.as_str());
    assert_eq!(slot_field(&json, "B", "files_version"), 5);
    assert_eq!(
        slot_field(&json, "B", "signature"),
        format!("signed by key {expected} (os)").as_str()
    );
    // The carried file is the image's, byte for byte, and signs what install wrote.
    let sig = String::from_utf8(mtype(&disk, "B/slot.sig")).unwrap();
    assert!(
        sig.starts_with("format=1\nalgorithm=ed25519\nimage_name=os\n"),
        "{sig}"
    );
    let text = ok(&["--image", s(&disk), "status"]);
    assert!(
        text.contains(&format!(
            "B     files: slot.txt version 5, signed by key {expected} (os)"
        )),
        "{text}"
    );
    // Slot A of the disk was made unsigned: status says so.
    assert_eq!(slot_field(&json, "A", "signature"), "unsigned");
    fsck_boot(&disk);
}

#[test]
fn a_signature_that_does_not_sign_what_install_writes_is_refused() {
    let f = fixture();
    let (dir, disk) = f.copy("disk.img");
    // Version 5 in the image, but its A/slot.txt signed at version 4.
    let boot = dir.path().join("boot");
    let root = dir.path().join("root");
    for tree in ["boot", "root"] {
        Command::new("cp")
            .args(["-a", s(&f.path(tree)), s(&dir.path().join(tree))])
            .status()
            .unwrap();
    }
    let mut manifest = recovery_proto::slot_manifest::SlotManifest::new(4);
    let contents: Vec<(&str, Vec<u8>)> = ["kernel.img", "initrd.img", "cmdline.txt"]
        .iter()
        .map(|name| (*name, fs::read(boot.join("A").join(name)).unwrap()))
        .collect();
    for (name, bytes) in &contents {
        let size = u32::try_from(bytes.len()).unwrap();
        let digest = manifest.algorithm().digest(bytes);
        manifest.add_file(name, size, digest).unwrap();
    }
    let slot_txt = manifest.to_string();
    fs::write(boot.join("A/slot.txt"), slot_txt).unwrap();
    tar(&boot, &dir.path().join("boot.tar"));
    tar(&root, &dir.path().join("root.tar"));
    convert_small_image_with(
        dir.path(),
        "v.zi",
        "5",
        "24",
        &["--sign-key", s(&f.path("release.key"))],
    );
    let before = fs::read(&disk).unwrap();
    fails(
        &["--image", s(&disk), "install", s(&dir.path().join("v.zi"))],
        1,
        &["A/slot.sig does not sign the slot install writes (version 5"],
    );
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
}

#[test]
fn disk_create_signs_its_slots_and_status_sees_a_change() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("signed.img");
    create_small_disk(
        &disk,
        &f.path("zboot.img"),
        &f.path("kernel"),
        &[
            "--sign-key",
            s(&f.path("release.key")),
            "--image-name",
            "product",
        ],
    );
    let expected = fingerprint(&f.path("release.pub"));
    let json = status(&disk);
    for slot in ["A", "SAFE"] {
        assert_eq!(
            slot_field(&json, slot, "signer"),
            expected.as_str(),
            "{slot}"
        );
    }
    assert_eq!(slot_field(&json, "A", "files_version"), 3);
    assert!(slot_field(&json, "B", "signature").is_null());
    // A slot.txt changed after signing (its version raised) no longer verifies.
    let changed = String::from_utf8(mtype(&disk, "A/slot.txt"))
        .unwrap()
        .replace("image_version=3", "image_version=9");
    let file = dir.path().join("slot.txt");
    fs::write(&file, changed).unwrap();
    let status_out = Command::new("mcopy")
        .args([
            "-o",
            "-i",
            &format!("{}@@1M", s(&disk)),
            s(&file),
            "::A/slot.txt",
        ])
        .status()
        .unwrap();
    assert!(status_out.success());
    let json = status(&disk);
    let signature = slot_field(&json, "A", "signature");
    assert!(
        signature
            .as_str()
            .unwrap()
            .starts_with("signature broken: slot.sig: the signature does not match"),
        "{signature}"
    );
    assert!(slot_field(&json, "A", "signer").is_null());
}

#[test]
fn older_image_is_refused_unless_forced() {
    let f = fixture();
    let (_dir, disk) = f.copy("disk.img");
    ok(&[
        "--image",
        s(&disk),
        "init-state",
        "--force",
        "--min-version",
        "6",
    ]);
    let before = fs::read(&disk).unwrap();
    fails(
        &["--image", s(&disk), "install", s(&f.path("os.zi"))],
        5,
        &["older than the minimum 6"],
    );
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
    ok(&[
        "--image",
        s(&disk),
        "install",
        "--force",
        s(&f.path("os.zi")),
    ]);
    assert_eq!(slot_state(&status(&disk), "B"), "trial");
}

#[test]
fn interrupted_install_leaves_b_not_bootable_and_a_active() {
    let f = fixture();
    let (_dir, disk) = f.copy("disk.img");
    let before = fs::read(&disk).unwrap();
    fails(
        &[
            "--image",
            s(&disk),
            "install",
            "--fail-after",
            "1000000",
            s(&f.path("os.zi")),
        ],
        1,
        &["injected failure"],
    );
    let json = status(&disk);
    assert_eq!(json["active"], "A");
    assert_eq!(slot_state(&json, "B"), "bad");
    assert_eq!(slot_state(&json, "A"), "good");
    assert_active_untouched(&before, &disk);
    // The next try completes.
    ok(&["--image", s(&disk), "install", s(&f.path("os.zi"))]);
    assert_eq!(slot_state(&status(&disk), "B"), "trial");
}

#[test]
fn the_running_slot_is_never_written() {
    let f = fixture();
    let (dir, disk) = f.copy("disk.img");
    let zi = f.path("os.zi");
    let on_device = |cmdline: &str, extra: &[&str]| {
        let cmdline = cmdline_file(dir.path(), cmdline);
        let mut args = vec!["--device", s(&disk), "install"];
        args.extend_from_slice(extra);
        args.push(s(&zi));
        zbctl_env(&args, &[("ZBCTL_PROC_CMDLINE", cmdline.as_os_str())])
    };
    // `zbctl try B` and a reboot: ACTIVE is A, the system runs from B, which install picks.
    ok(&["--image", s(&disk), "try", "B"]);
    let before = fs::read(&disk).unwrap();
    let out = on_device("console=ttyAMA0 zboot.slot=B zboot.attempt=1", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("booted from it"), "{stderr}");
    assert!(stderr.contains("nothing written"), "{stderr}");
    assert!(
        fs::read(&disk).unwrap() == before,
        "the running slot was written"
    );
    // `zbctl set-active B` without a reboot: the system still runs from A, which install now
    // picks; --force (install over a trial's fallback) does not override this.
    ok(&["--image", s(&disk), "set-active", "B"]);
    let before = fs::read(&disk).unwrap();
    let out = on_device("console=ttyAMA0 zboot.slot=A", &["--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("slot A"), "{stderr}");
    assert!(
        fs::read(&disk).unwrap() == before,
        "the running slot was written"
    );
    // After the reboot into B, A may be written.
    let out = on_device("console=ttyAMA0 zboot.slot=B", &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(slot_state(&status(&disk), "A"), "trial");
}

#[test]
fn install_takes_the_update_lock() {
    let f = fixture();
    let (dir, disk) = f.copy("disk.img");
    let before = fs::read(&disk).unwrap();
    let lock_path = dir.path().join("update.lock");
    let lock = fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let out = zbctl(&[
        "--image",
        s(&disk),
        "install",
        "--lock",
        s(&lock_path),
        s(&f.path("os.zi")),
    ]);
    assert_eq!(out.status.code(), Some(8));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("another zbctl update or install is running"),
        "{stdout}"
    );
    assert!(fs::read(&disk).unwrap() == before, "the disk was written");
    drop(lock);
    ok(&[
        "--image",
        s(&disk),
        "install",
        "--lock",
        s(&lock_path),
        s(&f.path("os.zi")),
    ]);
    assert_eq!(slot_state(&status(&disk), "B"), "trial");
}
