//! The EMMC2 SDHCI driver on QEMU raspi4b: SD and eMMC identification, PIO
//! reads and writes in both addressing modes, eMMC boot partitions, and a boot
//! without a card.
//!
//! The `zboot.test=emmc2` hook (loader/src/test_hooks.rs) initialises the
//! card, prints FNV-1a checksums of LBA 0 (CMD17) and LBA 1..=16 (CMD18),
//! writes a pattern to the last nine blocks (CMD24 + CMD25), reads it back,
//! and checks that a read past the end is refused. The tests compare the
//! checksums with the image's bytes and the image afterwards with what
//! should be there. QEMU's `sd.c` makes SD cards up to 2 GiB SDSC (CSD 1.0,
//! byte addressing) and bigger ones SDHC (CSD 2.0, block addressing); its eMMC
//! model (user-creatable in the patched QEMU) answers in byte addressing up to
//! 2 GiB and in sector mode above; image sizes must be powers of two.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zboot_qemu_tests::{Ending, LoaderBuild, LoaderImage, Qemu, Run, emmc2bus_b0_dtb, minimal_dtb};

const BLOCK: u64 = 512;
/// What the hook reads: LBA 0, then this many blocks from LBA 1.
const READ_BLOCKS: u64 = 16;
/// What the hook writes: the last nine blocks.
const WRITTEN_BLOCKS: u64 = 9;

/// The byte the hook writes at `index` of block `lba`
/// (`emmc2_pattern_byte` in loader/src/test_hooks.rs).
fn pattern_byte(lba: u64, index: usize) -> u8 {
    (lba as u8)
        .wrapping_mul(37)
        .wrapping_add((index as u8).wrapping_mul(11))
        ^ ((index >> 8) as u8)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Distinct, non-repeating bytes for the image's first blocks (xorshift64).
fn head_bytes(length: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The card model and, for eMMC, its boot partitions: (bytes each, PARTITION_CONFIG).
#[derive(Clone, Copy)]
enum Model {
    Sd,
    Emmc { boot: Option<(u64, u8)> },
}

impl Model {
    /// Where the user area starts in the backing file: QEMU keeps boot0 and boot1
    /// ahead of it.
    fn user_offset(self) -> u64 {
        match self {
            Self::Emmc {
                boot: Some((bytes, _)),
            } => 2 * bytes,
            _ => 0,
        }
    }
}

/// A sparse card image of `size` bytes (QEMU wants a power of two, boot partitions
/// included) whose user area's first 1 + READ_BLOCKS blocks hold [`head_bytes`],
/// after the model's boot partitions (zeros); returns its directory, path and those
/// bytes.
fn card_image(size: u64, model: Model) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("card.img");
    let head = head_bytes(((1 + READ_BLOCKS) * BLOCK) as usize);
    let mut file = File::create(&path).expect("creating the image");
    file.set_len(size).expect("sizing the image");
    file.seek(SeekFrom::Start(model.user_offset()))
        .expect("seeking");
    file.write_all(&head).expect("writing the image head");
    (dir, path, head)
}

fn read_at(path: &Path, offset: u64, length: u64) -> Vec<u8> {
    let mut file = File::open(path).expect("opening the image");
    file.seek(SeekFrom::Start(offset)).expect("seeking");
    let mut bytes = vec![0; length as usize];
    file.read_exact(&mut bytes).expect("reading the image");
    bytes
}

fn run_hook(card: Option<(&Path, Model)>) -> Run {
    run_hook_on(card, |qemu| qemu)
}

/// [`run_hook`] with the QEMU invocation adjusted (ADMA2, another DTB).
fn run_hook_on(card: Option<(&Path, Model)>, adjust: impl FnOnce(Qemu) -> Qemu) -> Run {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the qemu-test loader");
    let mut qemu = Qemu::new(&loader.image)
        .dtb(&minimal_dtb().expect("compiling the DTB"))
        .append("zboot.test=emmc2")
        // A card without partitions is a bricked unit: the loader then waits
        // for a recovery stick.
        .stop_at("recovery: waiting for a (new) stick");
    if let Some((card, model)) = card {
        qemu = qemu.emmc(card);
        qemu = match model {
            Model::Sd => qemu.sd_card(),
            Model::Emmc {
                boot: Some((bytes, config)),
            } => qemu.emmc_boot_partitions(bytes, config),
            Model::Emmc { boot: None } => qemu,
        };
    }
    let run = adjust(qemu).run().expect("running QEMU");
    println!("{run}");
    run
}

/// The run went on after the hook (to "nothing to boot", 3, without a card;
/// to waiting for a recovery stick with a card that has no partitions), not
/// a hang, a reset or a crash.
fn assert_ran_to_the_end(run: &Run) {
    assert!(
        matches!(run.ending, Ending::Exited(0 | 3) | Ending::StopText),
        "the loader went on after the hook and exited: {:?}",
        run.ending
    );
    assert!(!run.console_has("panicked"), "no panic");
}

/// Boots with a card of `size` bytes and checks console and image: `bus` is how the
/// card line ends after the addressing ("4-bit bus", "8-bit bus, … DDR52").
fn exercise_card(size: u64, model: Model, card_type: &str, addressing: &str, bus: &str) -> Run {
    let run = exercise_card_on(size, model, card_type, addressing, bus, |qemu| qemu);
    assert!(
        run.console_has("transfer retries 0"),
        "no retries on a healthy card"
    );
    run
}

/// [`exercise_card`] with the QEMU invocation adjusted.
fn exercise_card_on(
    size: u64,
    model: Model,
    card_type: &str,
    addressing: &str,
    bus: &str,
    adjust: impl FnOnce(Qemu) -> Qemu,
) -> Run {
    let (_dir, path, head) = card_image(size, model);
    let user = model.user_offset();
    let user_size = size - user;
    let run = run_hook_on(Some((&path, model)), adjust);
    assert_ran_to_the_end(&run);

    // QEMU's EMMC2 with a card: inserted, stable, lines high, idle.
    assert!(
        run.console_has("emmc2: present state 0x01ff0000, SDHCI specification version 2"),
        "card present on EMMC2 (0xfe340000), SDHCI v3.00"
    );
    let blocks = user_size / BLOCK;
    // The product name: "QEMU!" on SD, "QEMU!!" on eMMC.
    let description = format!("emmc2: {card_type} card \"QEMU!");
    assert!(run.console_has(&description), "card type: {description}");
    assert!(
        run.console_has(&format!(
            "{blocks} blocks ({} MiB), {addressing} addressing, {bus}",
            user_size >> 20
        )),
        "capacity and bus"
    );
    let first = fnv1a64(&head[..BLOCK as usize]);
    assert!(
        run.console_has(&format!("emmc2: LBA 0 fnv1a64 0x{first:016x}")),
        "LBA 0 read correctly (CMD17)"
    );
    let range = fnv1a64(&head[BLOCK as usize..]);
    assert!(
        run.console_has(&format!(
            "emmc2: LBA 1+{READ_BLOCKS} fnv1a64 0x{range:016x}"
        )),
        "LBA 1..=16 read correctly (CMD18 + Auto CMD12)"
    );
    let written_lba = blocks - WRITTEN_BLOCKS;
    assert!(
        run.console_has(&format!(
            "emmc2: wrote LBA {written_lba}+{WRITTEN_BLOCKS}, read back: verified"
        )),
        "write (CMD24 + CMD25) read back"
    );
    assert!(
        run.console_has("emmc2: read past the end refused: EMMC2: blocks"),
        "out-of-range read refused"
    );
    assert!(run.console_has("emmc2: commands issued "), "command count");

    // The image: the pattern at the written blocks ...
    let tail = read_at(&path, user + written_lba * BLOCK, WRITTEN_BLOCKS * BLOCK);
    let expected: Vec<u8> = (0..(WRITTEN_BLOCKS * BLOCK) as usize)
        .map(|offset| {
            pattern_byte(
                written_lba + (offset as u64) / BLOCK,
                offset % BLOCK as usize,
            )
        })
        .collect();
    assert!(
        tail == expected,
        "the pattern is in the last {WRITTEN_BLOCKS} blocks"
    );
    // ... the head untouched, and the size unchanged ...
    assert_eq!(
        read_at(&path, user, head.len() as u64),
        head,
        "head unchanged"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("metadata").len(),
        size,
        "size unchanged"
    );
    // ... the boot partitions untouched (still zeros) ...
    if user != 0 {
        assert!(
            read_at(&path, 0, user).iter().all(|&byte| byte == 0),
            "boot0 and boot1 untouched"
        );
    }
    // ... and nothing else written: the rest still reads as zeros, checked
    // in full for small images and through the file's allocation (sparse:
    // any write allocates) for big ones.
    if user_size <= 256 << 20 {
        let middle_start = head.len() as u64;
        let middle = read_at(
            &path,
            user + middle_start,
            written_lba * BLOCK - middle_start,
        );
        assert!(middle.iter().all(|&byte| byte == 0), "nothing else written");
    } else {
        let allocated = std::fs::metadata(&path).expect("metadata").blocks() * 512;
        assert!(
            allocated <= 1 << 20,
            "nothing else written: {allocated} bytes allocated in the sparse image"
        );
        let before = read_at(&path, user + written_lba * BLOCK - (1 << 20), 1 << 20);
        assert!(
            before.iter().all(|&byte| byte == 0),
            "blocks before the pattern untouched"
        );
    }
    run
}

#[test]
fn sdsc_card_byte_addressing() {
    // 64 MiB: SDSC (CSD 1.0), byte addresses in CMD17/18/24/25.
    exercise_card(64 << 20, Model::Sd, "SDSC", "byte", "4-bit bus");
}

#[test]
fn sdhc_card_block_addressing() {
    // 4 GiB (sparse): SDHC (CSD 2.0, OCR CCS), block addresses.
    exercise_card(4 << 30, Model::Sd, "SDHC/SDXC", "block", "4-bit bus");
}

/// The CM4's device: eMMC over the 8-bit DDR52 bus, byte addressing at 64 MiB and
/// sector mode at 4 GiB.
#[test]
fn emmc_byte_and_block_addressing() {
    for (size, addressing) in [(64 << 20, "byte"), (4 << 30, "block")] {
        let run = exercise_card(
            size,
            Model::Emmc { boot: None },
            "eMMC",
            addressing,
            "8-bit bus",
        );
        assert!(run.console_has(" Hz DDR52\n"), "DDR52, no boot partitions");
    }
}

/// eMMC with two 1 MiB boot partitions, and PARTITION_CONFIG leaving boot partition
/// 1 selected for access (boot enable 1, BOOT_ACK: 0x49), as a boot ROM may: the
/// driver switches to the user area (CMD6 PARTITION_CONFIG 0x48), reads and writes
/// only there, and the boot partitions stay as they were.
#[test]
fn emmc_boot_partitions_are_left_alone_and_the_user_area_selected() {
    let model = Model::Emmc {
        boot: Some((1 << 20, 0x49)),
    };
    let run = exercise_card(64 << 20, model, "eMMC", "byte", "8-bit bus");
    assert!(run.console_has(
        " Hz DDR52, boot partitions 2 × 1024 KiB, switched to the user area from partition 1"
    ));
    // The user area selected already (boot enable only, access 0): nothing to switch.
    let model = Model::Emmc {
        boot: Some((1 << 20, 0x08)),
    };
    let run = exercise_card(64 << 20, model, "eMMC", "byte", "8-bit bus");
    assert!(run.console_has(" Hz DDR52, boot partitions 2 × 1024 KiB\n"));
}

/// ADMA2 as on a CM4: EMMC2 advertises it (the patched QEMU's capabilities property)
/// and the tree gives the C0's 1:1 DMA view, which QEMU's EMMC2 serves. The hook's
/// reads and writes (the multi-block read started with `read_blocks_during`) and the
/// boot flow's partition reads move by ADMA2, with the same data and no fallback.
#[test]
fn with_adma2_advertised_the_data_moves_by_adma2() {
    for (size, addressing) in [(64 << 20, "byte"), (4 << 30, "block")] {
        let run = exercise_card_on(
            size,
            Model::Emmc { boot: None },
            "eMMC",
            addressing,
            "8-bit bus",
            Qemu::emmc2_adma2,
        );
        assert_eq!(
            run.console
                .matches("EMMC2: ADMA2 (DMA view: ARM 0x0..0xfc000000 at bus 0x0)")
                .count(),
            2,
            "the hook's driver and the boot flow's use ADMA2"
        );
        // Five transfers: LBA 0, LBA 1+16, the two writes, the read-back. The read past
        // the end is refused before any command.
        assert!(
            run.console_has("emmc2: data moved by ADMA2 in 5 command(s), by PIO in 0 (+0 for unsuitable buffers)"),
            "every hook transfer by ADMA2"
        );
        assert!(!run.console_has("ADMA2 failed"), "no ADMA error");
        assert!(
            run.console_has("transfer retries 0"),
            "no retries on a healthy card"
        );
        assert!(!run.console_has("never completed"), "no ADMA timeout");
    }
}

/// The tree gives the B0's view (bus 0xC000_0000 is RAM 0) where QEMU's EMMC2 sees
/// RAM 1:1 with nothing at 0xC000_0000: the wrong alias for this machine. The first
/// ADMA2 transfer fails with an ADMA Error (fetching the descriptor), is retried by
/// PIO, and the failure is logged once per driver; the data is right regardless.
#[test]
fn adma2_over_a_wrong_dma_view_falls_back_to_pio_once_with_right_data() {
    let b0 = emmc2bus_b0_dtb().expect("compiling the B0 tree");
    let run = exercise_card_on(
        64 << 20,
        Model::Emmc { boot: None },
        "eMMC",
        "byte",
        "8-bit bus",
        |qemu| qemu.emmc2_adma2().dtb(&b0),
    );
    assert!(run.console_has("EMMC2: ADMA2 (DMA view: ARM 0x0..0x40000000 at bus 0xc0000000)"));
    let failures = run
        .console
        .matches("EMMC2: ADMA2 failed on CMD17 READ_SINGLE_BLOCK")
        .count();
    assert_eq!(
        failures, 2,
        "logged once by the hook and once by the boot flow (each driver's first read)"
    );
    assert!(
        run.console_has(
            "(ADMA error status 0x01: fetching a descriptor (ST_FDS)); PIO from now on"
        )
    );
    assert!(
        run.console_has(
            "emmc2: data moved by ADMA2 in 1 command(s), by PIO in 5 (+0 for unsuitable buffers)"
        ),
        "PIO after the first failure, its retry included"
    );
    assert!(
        run.console_has("transfer retries 1"),
        "the failed read was retried (by PIO)"
    );
}

#[test]
fn no_card_is_reported_and_the_boot_goes_on() {
    let run = run_hook(None);
    assert_ran_to_the_end(&run);
    assert!(
        run.console_has("emmc2: init failed: EMMC2: no card"),
        "a clear no-card message"
    );
    assert!(!run.console_has("emmc2: LBA 0"), "nothing read");
}
