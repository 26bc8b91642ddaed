//! USB recovery: when nothing can boot, reflash the eMMC from a `.zi` image on a USB stick.
//!
//! DESIGN.md, "Recovery": bring the DWC2 host up, find the first mass-storage
//! device behind the hub(s), find the image on its FAT partition, verify it
//! before anything is written (header, manifest, signature when a key is
//! provisioned), stream it onto the eMMC with a journal in two sectors
//! outside the partitions (`recovery_proto::reflash::journal`) so a power
//! cut at any write resumes, write a fresh state, reset. Anything that goes wrong
//! before the first write leaves the eMMC untouched; the loader then waits
//! for a (new) stick and tries again. The ACT LED blinks a code per phase
//! and per error.

use core::fmt;
use core::time::Duration;

use hal_bcm2711::dwc2::Dwc2;
use hal_bcm2711::generic_timer::{self, Deadline, Instant};
use hal_bcm2711::gpio::ActLed;
use hal_bcm2711::usb::mass_storage::{
    Inquiry, MassStorageError, UsbMassStorage, find_first_mass_storage,
};
use recovery_proto::block::{Block, BlockDevice};
use recovery_proto::image::reader::MAX_OUTPUT_BUFFER;
use recovery_proto::image::{Decoder, Progress};
use recovery_proto::manifest::Manifest;
use recovery_proto::reflash::{
    self, Buffers, DataOutcome, FreshState, JOURNAL_LBAS, Pass, Settings, StickImage,
};

use crate::arch::{self, Peripherals};
use crate::layout::{self, LoadArea};
use crate::storage::Disk;

/// The image's name on the stick when `zbmanifest.txt` names none.
pub const DEFAULT_IMAGE_NAME: &str = "ZBOOT.ZI";
/// How long to wait between looks for a stick.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Room for the manifest: 64 bytes per partition and region; 1 MiB holds
/// 16 384 regions, a 16 GiB image in 1 MiB chunks.
const MANIFEST_BUFFER: usize = 1 << 20;

/// ACT LED blink codes: the number of blinks says what the loader is doing
/// or what went wrong (documented in docs/recovery.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlinkCode {
    NoStick = 2,
    NoImage = 3,
    BadImage = 4,
    WriteFailed = 5,
}

/// A USB stick as a block device, adding up the time its reads take.
struct Stick {
    storage: UsbMassStorage<Dwc2>,
    /// Generic-timer ticks spent in reads (the benchmark's USB share).
    read_ticks: u64,
    /// A read failed because the stick was pulled out.
    unplugged: bool,
}

impl Stick {
    /// Runs one read, adding up its time and noting an unplug.
    fn read(
        &mut self,
        work: impl FnOnce(&mut UsbMassStorage<Dwc2>) -> Result<(), MassStorageError>,
    ) -> Result<(), StickError> {
        let start = Instant::now();
        let result = work(&mut self.storage);
        self.read_ticks += Instant::now().ticks().wrapping_sub(start.ticks());
        result.map_err(|error| {
            self.unplugged |= error.is_device_gone();
            StickError::Read(error)
        })
    }
}

/// The eMMC as the reflash's target, adding up the time its writes take.
struct TimedDisk<'d> {
    disk: &'d Disk,
    /// Generic-timer ticks spent in writes (the benchmark's eMMC share).
    write_ticks: u64,
    /// Write commands issued (0: the eMMC is as it was).
    writes: u64,
}

impl TimedDisk<'_> {
    fn timed<R>(&mut self, work: impl FnOnce(&mut &Disk) -> R) -> R {
        self.writes += 1;
        let start = Instant::now();
        let result = work(&mut self.disk);
        self.write_ticks += Instant::now().ticks().wrapping_sub(start.ticks());
        result
    }
}

impl BlockDevice for TimedDisk<'_> {
    type Error = crate::storage::DiskError;

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), Self::Error> {
        self.disk.read_block(lba, buffer)
    }

    fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), Self::Error> {
        self.timed(|disk| disk.write_block(lba, buffer))?;
        #[cfg(feature = "qemu-test")]
        crate::test_hooks::after_emmc_write(lba, 1);
        Ok(())
    }

    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }

    fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), Self::Error> {
        self.disk.read_blocks(lba, buffer)
    }

    fn write_blocks(&mut self, lba: u64, buffer: &[u8]) -> Result<(), Self::Error> {
        self.timed(|disk| disk.write_blocks(lba, buffer))?;
        #[cfg(feature = "qemu-test")]
        crate::test_hooks::after_emmc_write(
            lba,
            (buffer.len() / recovery_proto::BLOCK_SIZE) as u64,
        );
        Ok(())
    }
}

/// A failed stick access.
enum StickError {
    Read(MassStorageError),
    /// Recovery never writes the stick.
    ReadOnly,
}

impl fmt::Debug for StickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(error) => write!(f, "{error}"),
            Self::ReadOnly => write!(f, "the stick is only read"),
        }
    }
}

impl BlockDevice for Stick {
    type Error = StickError;

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), StickError> {
        self.read(|storage| storage.read_blocks(lba, buffer))
    }

    fn write_block(&mut self, _lba: u64, _buffer: &Block) -> Result<(), StickError> {
        Err(StickError::ReadOnly)
    }

    fn block_count(&self) -> u64 {
        self.storage.block_count()
    }

    fn read_blocks(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), StickError> {
        self.read(|storage| storage.read_blocks(lba, buffer))
    }
}

/// Why one recovery attempt ended.
enum Attempt {
    /// Nothing was written; wait for another stick.
    Refused(BlinkCode),
    /// Writing started and failed; the journal holds the position.
    Interrupted,
    /// The stick was pulled out before anything was written.
    Unplugged,
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(code) => write!(f, "refused ({code:?})"),
            Self::Interrupted => write!(f, "interrupted"),
            Self::Unplugged => write!(f, "unplugged"),
        }
    }
}

/// A reflash cut by power loss, as the journal outside the partitions
/// records it: when every region is on the eMMC only the fresh state and the
/// clearing of the journal were left, and they are done here without the
/// stick; otherwise the reflash resumes from the stick (never returns). With
/// no unfinished reflash this costs one read of the journal's two sectors.
pub fn resume_unfinished(peripherals: &mut Peripherals, disk: &Disk, area: Option<&mut LoadArea>) {
    let entry = match reflash::pending(&mut { disk }, JOURNAL_LBAS) {
        Ok(Some(entry)) => entry,
        Ok(None) => return,
        Err(error) => {
            log::warn!(
                "reflash journal at LBAs {}-{}: unreadable ({error}); booting on",
                JOURNAL_LBAS[0],
                JOURNAL_LBAS[1]
            );
            return;
        }
    };
    if entry.all_written() {
        log::warn!(
            "recovery: a reflash was cut after its last region ({} regions): finishing it",
            entry.regions
        );
        match reflash::finish(&mut { disk }, JOURNAL_LBAS) {
            Ok(FreshState::Written([first, second])) => {
                log::info!("recovery: fresh slot state at LBAs {first} and {second}; reflash done");
            }
            Ok(FreshState::NoStateFile) => {
                log::warn!("recovery: the image's boot partition has no ZBSTATE.BIN; reflash done");
            }
            Err(error) => log::error!("recovery: finishing the reflash: {error}"),
        }
        return;
    }
    log::warn!(
        "recovery: a reflash was cut by power loss at region {} of {}: it resumes from the stick",
        entry.next_region,
        entry.regions
    );
    let mut name = [0u8; 12];
    let length = entry.stick_name(&mut name);
    let name = length
        .and_then(|length| core::str::from_utf8(name.get(..length)?).ok())
        .unwrap_or(DEFAULT_IMAGE_NAME);
    // The name and the key the image was checked against when the reflash
    // began: the zbmanifest.txt that named them may be half-written now.
    let manifest = Manifest {
        recovery_image: Some(name),
        public_key: entry.key,
        ..Manifest::default()
    };
    run(peripherals, Some(disk), area, &manifest)
}

/// Recovers the board from a USB stick; resets when done, never returns.
pub fn run(
    peripherals: &mut Peripherals,
    disk: Option<&Disk>,
    area: Option<&mut LoadArea>,
    manifest: &Manifest<'_>,
) -> ! {
    let Some(disk) = disk else {
        wait_forever("recovery: no eMMC to write to")
    };
    let Some(area) = area else {
        wait_forever("recovery: no RAM to work in")
    };
    recover(peripherals, disk, area, manifest, None);
    wait_forever("recovery: gave up")
}

/// Recovers the board from a USB stick if one with a good image comes before `wait` is
/// over; resets when done. Returns when the time is over and nothing has been written
/// (the adoption of a stock layout: docs/bring-your-own-image.md). Once a write has
/// happened it never returns: the journal then holds a reflash to finish.
pub fn run_for(
    peripherals: &mut Peripherals,
    disk: &Disk,
    area: &mut LoadArea,
    manifest: &Manifest<'_>,
    wait: Duration,
) {
    recover(
        peripherals,
        disk,
        area,
        manifest,
        Some(Deadline::after(wait)),
    );
}

/// The recovery loop; returns only at `deadline` with nothing written.
#[allow(clippy::too_many_lines)] // one loop over the stick's states reads best whole
fn recover(
    peripherals: &mut Peripherals,
    disk: &Disk,
    area: &mut LoadArea,
    manifest: &Manifest<'_>,
    deadline: Option<Deadline>,
) {
    let name = manifest.recovery_image.unwrap_or(DEFAULT_IMAGE_NAME);
    let key = signing_key(manifest);
    log::warn!(
        "recovery: looking for {name} on a USB stick{}",
        match (key.is_some(), crate::config::PROVISIONED_KEY.is_some()) {
            (true, true) => " (signature required: key built into zboot)",
            (true, false) => " (signature required: key from zbmanifest.txt)",
            _ => "",
        }
    );
    let Some(mut dwc2) = peripherals.dwc2.take() else {
        if deadline.is_some() {
            log::error!("recovery: the USB controller is in use");
            return;
        }
        wait_forever("recovery: the USB controller is in use")
    };
    let mut written = false;
    if let Err(error) = Dwc2::power_on(&mut peripherals.mailbox) {
        log::warn!("recovery: USB power domain: {error}");
    }
    // After a refused image, the same stick is not tried again until it has
    // been taken out: the loader waits for a (new) stick.
    let mut must_remove = false;
    let mut quiet = false;
    loop {
        if !written && deadline.is_some_and(|deadline| deadline.expired()) {
            log::warn!("recovery: no stick with a good image in time; nothing written");
            peripherals.dwc2 = Some(dwc2);
            return;
        }
        if must_remove {
            let (host, present) = stick_present(dwc2);
            dwc2 = host;
            if present {
                generic_timer::delay(POLL_INTERVAL);
                continue;
            }
            must_remove = false;
            log::info!("recovery: stick removed");
        }
        match attempt(
            dwc2,
            disk,
            area,
            name,
            key.as_ref(),
            &peripherals.gpio,
            quiet,
        ) {
            Ok(()) => {
                log::info!("recovery: done; resetting");
                crate::console::flush();
                arch::reset_now();
            }
            Err((host, Attempt::Refused(BlinkCode::NoStick))) => {
                if !quiet {
                    log::warn!("recovery: waiting for a (new) stick");
                    quiet = true;
                }
                dwc2 = host;
                blink(&peripherals.gpio, BlinkCode::NoStick);
            }
            Err((host, Attempt::Refused(code))) => {
                log::warn!(
                    "recovery: nothing written; take the stick out and insert one with a good \
                     image: waiting for a (new) stick"
                );
                dwc2 = host;
                must_remove = true;
                quiet = true;
                blink(&peripherals.gpio, code);
            }
            Err((host, Attempt::Unplugged)) => {
                log::warn!(
                    "recovery: the stick was pulled out: nothing written; waiting for a (new) stick"
                );
                dwc2 = host;
                // Until the port is seen empty, as after a refusal.
                must_remove = true;
                quiet = true;
                blink(&peripherals.gpio, BlinkCode::NoStick);
            }
            Err((host, Attempt::Interrupted)) => {
                log::warn!("recovery: interrupted; trying again (it resumes from the journal)");
                dwc2 = host;
                written = true;
                quiet = false;
                blink(&peripherals.gpio, BlinkCode::WriteFailed);
            }
        }
        generic_timer::delay(POLL_INTERVAL);
    }
}

/// The key recovery images must be signed with: the one built into the
/// loader (`ZBOOT_PUBLIC_KEY`) wins, since `zbmanifest.txt` sits on the very
/// eMMC a recovery overwrites and a blank or damaged eMMC has none; without
/// one, `public_key=` from `zbmanifest.txt`; else none (unsigned images).
fn signing_key(manifest: &Manifest<'_>) -> Option<[u8; 32]> {
    match (crate::config::PROVISIONED_KEY, manifest.public_key) {
        (Some(built_in), Some(other)) if built_in != other => {
            log::warn!(
                "recovery: zbmanifest.txt's public_key differs from the key built into zboot; \
                 the built-in key is used"
            );
            Some(built_in)
        }
        (Some(built_in), _) => Some(built_in),
        (None, from_manifest) => from_manifest,
    }
}

/// Whether a mass-storage device is attached (used to notice a removal).
fn stick_present(mut dwc2: Dwc2) -> (Dwc2, bool) {
    if dwc2.init().is_err() {
        return (dwc2, false);
    }
    let Ok(speed) = dwc2.reset_root_port() else {
        return (dwc2, false);
    };
    match find_first_mass_storage(dwc2, speed) {
        Ok(storage) => (storage.into_host(), true),
        Err((host, _)) => (host, false),
    }
}

fn attempt(
    mut dwc2: Dwc2,
    disk: &Disk,
    area: &mut LoadArea,
    name: &str,
    key: Option<&[u8; 32]>,
    gpio: &hal_bcm2711::gpio::Gpio,
    quiet: bool,
) -> Result<(), (Dwc2, Attempt)> {
    let refused = |code| Attempt::Refused(code);
    if let Err(error) = dwc2.init() {
        log::error!("recovery: USB controller: {error}");
        return Err((dwc2, refused(BlinkCode::NoStick)));
    }
    if dwc2.phy_was_reset() && !quiet {
        log::info!("recovery: USB PHY set to UTMI+ 8-bit; the core was reset again");
    }
    let speed = match dwc2.reset_root_port() {
        Ok(speed) => speed,
        Err(error) => {
            if !quiet {
                log::warn!("recovery: no USB stick ({error})");
                if matches!(error, hal_bcm2711::dwc2::Dwc2Error::NoDeviceConnected) {
                    // Raspberry Pi OS sets `otg_mode=1` under [cm4]: the firmware then
                    // routes the CM4's USB 2.0 port to the XHCI controller, and the DWC2
                    // root port stays empty (config.txt documentation, otg_mode).
                    log::warn!(
                        "recovery: if a stick is plugged in, check config.txt for \
                         `otg_mode=1`: it gives the USB port to the XHCI controller, which \
                         zboot does not drive (zbctl image convert removes it)"
                    );
                }
            }
            return Err((dwc2, refused(BlinkCode::NoStick)));
        }
    };
    let storage = match find_first_mass_storage(dwc2, speed) {
        Ok(storage) => storage,
        Err((host, error)) => {
            if !quiet {
                log::warn!("recovery: no USB mass-storage device ({error})");
            }
            return Err((host, refused(BlinkCode::NoStick)));
        }
    };
    let inquiry = *storage.inquiry();
    log::info!(
        "recovery: stick \"{} {}\", {} blocks",
        Inquiry::text(&inquiry.vendor),
        Inquiry::text(&inquiry.product),
        storage.block_count()
    );
    let mut stick = Stick {
        storage,
        read_ticks: 0,
        unplugged: false,
    };
    let outcome = match write_image(&mut stick, disk, area, name, key, gpio) {
        Err(Attempt::Refused(_)) if stick.unplugged => Err(Attempt::Unplugged),
        Err(Attempt::Interrupted) if stick.unplugged => {
            log::warn!(
                "recovery: the stick was pulled out; insert it (or a new one): the reflash \
                 resumes from the journal"
            );
            Err(Attempt::Interrupted)
        }
        other => other,
    };
    let host = stick.storage.into_host();
    outcome.map_err(|attempt| (host, attempt))
}

fn write_image(
    stick: &mut Stick,
    disk: &Disk,
    area: &mut LoadArea,
    name: &str,
    key: Option<&[u8; 32]>,
    gpio: &hal_bcm2711::gpio::Gpio,
) -> Result<(), Attempt> {
    let began = Instant::now();
    let stick_ticks_before = stick.read_ticks;
    let mut file = StickImage::open(stick, name).map_err(|error| {
        log::error!("recovery: {name}: {error}");
        Attempt::Refused(BlinkCode::NoImage)
    })?;
    log::info!("recovery: {name}: {} bytes", file.len());

    // Work memory from the load area: the manifest, one region, and the rest of RAM for
    // the verified payload (each byte read from the stick and hashed once when it fits:
    // docs/recovery.md, "Each byte hashed once").
    let start = layout::KERNEL_BASE;
    let work_start = start + MANIFEST_BUFFER;
    let work = area.top().saturating_sub(work_start);
    let (manifest, work) = area
        .two_regions(
            ("image manifest", start, MANIFEST_BUFFER),
            ("image region and payload cache", work_start, work),
        )
        .map_err(|error| {
            log::error!("recovery: {error}");
            Attempt::Refused(BlinkCode::BadImage)
        })?;
    if work.len() < MAX_OUTPUT_BUFFER {
        log::error!(
            "recovery: {} bytes of RAM above the manifest, a region needs {MAX_OUTPUT_BUFFER}",
            work.len()
        );
        return Err(Attempt::Refused(BlinkCode::BadImage));
    }
    let (output, cache) = work.split_at_mut(MAX_OUTPUT_BUFFER);
    #[cfg(feature = "qemu-test")]
    let cache = {
        let limit = crate::test_hooks::payload_cache_limit().min(cache.len());
        &mut cache[..limit]
    };
    log::info!(
        "recovery: {} MiB of RAM keep the verified payload between the passes",
        cache.len() >> 20
    );
    let mut decoder = Decoder::with_clock(|| Instant::now().ticks());
    let mut report = ProgressReport {
        led: ActLed::new(gpio),
        pass: Pass::Verify,
        began,
        last_percent: u64::MAX,
    };
    let mut target = TimedDisk {
        disk,
        write_ticks: 0,
        writes: 0,
    };
    let defaults = Settings::default();
    let settings = Settings {
        key,
        stick_name: recovery_proto::fat::short_name(name).unwrap_or(defaults.stick_name),
        ..defaults
    };
    let result = reflash::reflash(
        &mut file,
        &mut target,
        &settings,
        Buffers {
            manifest,
            output,
            decoder: &mut decoder,
            cache,
        },
        |pass, progress| report.update(pass, progress),
    );
    match result {
        Ok(summary) => {
            report_time_split(
                Instant::now().ticks().wrapping_sub(began.ticks()),
                stick.read_ticks - stick_ticks_before,
                target.write_ticks,
                decoder.profile(),
            );
            report_written(&summary);
            arch::zboot_bench_reflash_done();
            Ok(())
        }
        Err(error) => {
            log::error!("recovery: {error}");
            // Errors from opening and checking the image (format, signature,
            // size, layout, the verify pass) come before the first write; a
            // failure while writing leaves the journal's position in place.
            if target.writes == 0 {
                Err(Attempt::Refused(BlinkCode::BadImage))
            } else {
                Err(Attempt::Interrupted)
            }
        }
    }
}

/// Progress on the console every 10 % of each pass, and on the ACT LED.
struct ProgressReport<'g> {
    led: ActLed<'g>,
    pass: Pass,
    /// When the current pass began (for its rate).
    began: Instant,
    last_percent: u64,
}

impl ProgressReport<'_> {
    fn update(&mut self, pass: Pass, progress: Progress) {
        if pass != self.pass {
            self.pass = pass;
            self.began = Instant::now();
            self.last_percent = u64::MAX;
        }
        let percent = u64::from(progress.next_region) * 100 / u64::from(progress.regions.max(1));
        // Toggling per region while writing; every other region while
        // only reading, so the two passes look different.
        let toggle = match pass {
            Pass::Verify => progress.next_region / 2,
            Pass::Write => progress.next_region,
        };
        self.led.set(toggle.is_multiple_of(2));
        if percent / 10 != self.last_percent / 10 {
            self.last_percent = percent;
            let milliseconds = self.began.elapsed().as_millis().max(1) as u64;
            // The write pass keeps its wording ("recovery: 30%"); the
            // verify pass says what it does.
            log::info!(
                "recovery: {}{}% ({} MiB of the disk done, {} KiB/s)",
                match pass {
                    Pass::Verify => "verified ",
                    Pass::Write => "",
                },
                percent / 10 * 10,
                progress.bytes_done >> 20,
                progress.bytes_done * 1000 / 1024 / milliseconds
            );
        }
    }
}

/// What the reflash wrote, skipped and kept.
fn report_written(summary: &reflash::Summary) {
    log::info!(
        "recovery: image written: {} regions (from {}), {} bytes written, {} bytes of free space skipped",
        summary.regions,
        summary.resumed_from,
        summary.bytes_written,
        summary.bytes_skipped
    );
    log::info!(
        "recovery: write pass: {} payload bytes from RAM (read and hashed once), {} read \
         and checked again",
        summary.payload_from_memory,
        summary.payload_read_again
    );
    match summary.data {
        DataOutcome::Kept(extent) => log::info!(
            "recovery: the DATA partition was left in place ({} sectors at LBA {}: the user's \
             data when the reflash began; {} bytes of the image's DATA not written)",
            extent.sectors,
            extent.start_lba,
            summary.bytes_kept
        ),
        DataOutcome::Written => log::info!(
            "recovery: the image's DATA partition was written (no DATA partition of the \
             user's was in its place when the reflash began)"
        ),
        DataOutcome::NotInImage => {}
    }
    match summary.state {
        FreshState::Written([first, second]) => {
            log::info!("recovery: fresh slot state at LBAs {first} and {second}");
        }
        FreshState::NoStateFile => log::warn!(
            "recovery: the image's boot partition has no ZBSTATE.BIN: no slot state written"
        ),
    }
}

/// Where the reflash's time went, in generic-timer ticks (the benchmark
/// turns them into guest instructions under `-icount`; on a CM4 they are
/// 54 MHz ticks). USB counts every stick read, inflate and hash the
/// decoder's own work, eMMC the writes; "other" is the rest (FAT mapping,
/// the journal's sector writes, progress, copying).
fn report_time_split(
    total: u64,
    usb: u64,
    emmc: u64,
    decode: recovery_proto::image::DecodeProfile,
) {
    let other = total
        .saturating_sub(usb)
        .saturating_sub(emmc)
        .saturating_sub(decode.inflating)
        .saturating_sub(decode.hashing);
    log::info!(
        "recovery: time split (timer ticks at {} Hz): total {total}, USB read {usb}, \
         inflate {}, hash {}, eMMC write {emmc}, other {other}",
        generic_timer::frequency(),
        decode.inflating,
        decode.hashing,
    );
}

fn blink(gpio: &hal_bcm2711::gpio::Gpio, code: BlinkCode) {
    let led = ActLed::new(gpio);
    for _ in 0..code as u32 {
        led.on();
        generic_timer::delay(Duration::from_millis(200));
        led.off();
        generic_timer::delay(Duration::from_millis(200));
    }
}

fn wait_forever(why: &str) -> ! {
    log::error!("{why}; waiting");
    crate::console::flush();
    arch::halt()
}
