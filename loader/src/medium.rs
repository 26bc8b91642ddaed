//! The boot medium: the EMMC2 card, its partitions, the boot partition and what is on it.

use core::fmt::{self, Write};

use hal_bcm2711::emmc2::{AdmaTable, Emmc2};
use hal_bcm2711::mailbox::ClockId;
use recovery_proto::Slot;
use recovery_proto::cmdline::{self, BootArgs, CmdlineError};
use recovery_proto::locate;
use recovery_proto::manifest::Manifest;
use recovery_proto::partition::{BadRootSpec, HeaderCopy, Partitions, SlotRoot};

use crate::arch::Peripherals;
use crate::board;
use crate::boot_partition::BootPartition;
use crate::dtb::DeviceTree;
use crate::slot_files::LoadedSlot;
use crate::storage::Disk;

/// The largest `zbmanifest.txt` zboot reads.
pub const MANIFEST_LIMIT: usize = 4096;
const MANIFEST_NAME: &str = "zbmanifest.txt";

/// Brings up EMMC2 and the card on it, with the I/O rail at 3.3 V where the firmware's
/// tree says how (`board::set_sd_io_rail`), moving data by ADMA2 where the controller and
/// the tree allow it ([`use_adma`]).
pub fn open_disk(peripherals: &mut Peripherals, device_tree: &DeviceTree) -> Option<Disk> {
    let rail_at_3v3 = board::set_sd_io_rail(&mut peripherals.mailbox, device_tree);
    let base_clock = match peripherals.mailbox.clock_rate(ClockId::Emmc2) {
        Ok(rate) => rate,
        Err(error) => {
            log::warn!("EMMC2 clock unknown ({error}); using the controller's own figure");
            0
        }
    };
    let mut controller = peripherals.emmc2.take()?;
    controller.set_io_rail_at_3v3(rail_at_3v3);
    use_adma(
        &mut controller,
        peripherals.emmc2_adma_table.take(),
        device_tree,
    );
    match controller.init(base_clock) {
        Ok(card) => {
            log::info!("EMMC2: {card}");
            log::info!(
                "EMMC2: {} V signalling (Host Control 2)",
                if controller.signaling_1v8() {
                    "1.8"
                } else {
                    "3.3"
                }
            );
            Some(Disk::new(controller, card.blocks))
        }
        Err(error) => {
            log::error!("{error}");
            None
        }
    }
}

/// Lets `controller` move block data by ADMA2, with `table` as its descriptor table and
/// the firmware tree's `emmc2bus` `dma-ranges` as its view of RAM (which differs between
/// BCM2711 revisions: `hal_bcm2711::emmc2::adma`). Without a window from the tree, or a
/// controller that does not offer ADMA2 (QEMU's raspi4b by default), it stays on PIO.
/// Logs which.
pub fn use_adma(
    controller: &mut Emmc2,
    table: Option<&'static mut AdmaTable>,
    device_tree: &DeviceTree,
) {
    let Some(table) = table else {
        log::warn!("EMMC2: PIO (the ADMA2 descriptor table is already taken)");
        return;
    };
    let window = match device_tree.emmc2_dma_window() {
        Ok(window) => window,
        Err(problem) => {
            log::info!("EMMC2: PIO ({problem}: how EMMC2 sees RAM is unknown)");
            return;
        }
    };
    match controller.use_adma(table, window) {
        Ok(()) => log::info!("EMMC2: ADMA2 (DMA view: {window})"),
        Err(reason) => log::info!("EMMC2: PIO ({reason})"),
    }
}

/// The opened boot medium.
pub struct Medium<'d> {
    partitions: Partitions,
    boot: BootPartition<'d>,
    state_lbas: Option<[u64; 2]>,
}

impl fmt::Debug for Medium<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Medium")
            .field("state_lbas", &self.state_lbas)
            .finish_non_exhaustive()
    }
}

impl<'d> Medium<'d> {
    /// Reads the partition table, opens the FAT boot partition and finds
    /// the state file; logs what is wrong with each.
    pub fn open(disk: &'d Disk) -> Option<Self> {
        let partitions = match Partitions::read(&mut { disk }) {
            Ok(partitions) => partitions,
            Err(error) => {
                log::error!("partition table: {error}");
                return None;
            }
        };
        if let Some(gpt) = partitions.gpt() {
            log::info!("partition table: GPT, disk GUID {}", gpt.disk_guid);
            if let (HeaderCopy::Backup, Some(fault)) = (gpt.source, gpt.primary_fault) {
                log::warn!(
                    "GPT: primary header unusable ({fault}); using the backup header at LBA {}",
                    gpt.header_lba
                );
            }
        }
        let (boot_partition, fat) = match locate::find_boot_volume(&mut { disk }) {
            Ok(found) => found,
            Err(error) => {
                log::error!("boot partition: {error}");
                return None;
            }
        };
        if let Some(partition) = boot_partition {
            log::info!(
                "boot partition: #{} at LBA {} ({} sectors, PARTUUID {})",
                partition.number,
                partition.start_lba,
                partition.sectors,
                partition.partuuid()
            );
            // The FAT library reads MBRs only: show it this partition as entry 0 of one.
            if let Err(error) = disk.present_boot_partition(partition.start_lba, partition.sectors)
            {
                log::error!("{error}");
                return None;
            }
        }
        let boot = match BootPartition::open(disk, fat) {
            Ok(boot) => boot,
            Err(error) => {
                log::error!("boot partition: {error}");
                return None;
            }
        };
        let state_lbas = match locate::locate_state_in(&mut { disk }, boot_partition, fat) {
            Ok(location) => Some(location.lbas),
            Err(error) => {
                log::error!("state file {}: {error}", locate::STATE_FILE_NAME);
                None
            }
        };
        Some(Self {
            partitions,
            boot,
            state_lbas,
        })
    }

    /// The FAT boot partition.
    pub fn partition(&self) -> &BootPartition<'d> {
        &self.boot
    }

    /// Where the two state copies live, if the state file was found.
    pub fn state_lbas(&self) -> Option<[u64; 2]> {
        self.state_lbas
    }

    /// `zbmanifest.txt`, parsed; problems are logged and the defaults used.
    pub fn manifest<'b>(&self, buffer: &'b mut [u8; MANIFEST_LIMIT]) -> Manifest<'b> {
        let mut manifest = self.read_manifest(buffer);
        if crate::config::PROVISIONED_KEY.is_some() {
            // A loader with a key takes the guarded settings from its build only
            // (recovery_proto::manifest::GUARDED_KEYS; docs/security.md).
            let trusted = Manifest::parse(crate::config::BUILT_IN_SETTINGS).unwrap_or_default();
            for key in manifest.guard(&trusted, self.partitions.kind()) {
                log::warn!(
                    "{MANIFEST_NAME}: {key}= ignored: with a built-in key, zboot takes {key} \
                     from its build only (ZBOOT_SETTINGS)"
                );
            }
        }
        manifest
    }

    fn read_manifest<'b>(&self, buffer: &'b mut [u8; MANIFEST_LIMIT]) -> Manifest<'b> {
        let bytes = match self.boot.read_small(None, MANIFEST_NAME, buffer) {
            Ok(bytes) => bytes,
            Err(error) => {
                log::warn!("{MANIFEST_NAME}: {error}; using the defaults");
                return Manifest::default();
            }
        };
        match Manifest::parse(bytes) {
            Ok(manifest) => {
                for warning in &manifest.warnings {
                    log::warn!("{MANIFEST_NAME}: {warning}");
                }
                manifest
            }
            Err(error) => {
                // The error names the file and the line itself.
                log::error!("{error}; using the defaults");
                Manifest::default()
            }
        }
    }

    /// The kernel command line for `slot`: the firmware's parameters (`firmware`, its
    /// `/chosen/bootargs`; `recovery_proto::cmdline`), then its `cmdline.txt` with zboot's
    /// `root=PARTUUID=…`, `zboot.slot=` and `zboot.attempt=`.
    #[allow(clippy::too_many_arguments)]
    pub fn bootargs<'o>(
        &self,
        slot: Slot,
        attempt: u8,
        manifest: &Manifest<'_>,
        loaded: &LoadedSlot,
        serial: [Option<&str>; 2],
        firmware: Option<&str>,
        out: &'o mut [u8],
    ) -> Result<&'o str, BootArgsError> {
        let spec = match slot {
            Slot::A => manifest.root_a,
            Slot::B => manifest.root_b,
            Slot::Safe => manifest.safe_root,
        };
        let mut uuid = heapless::String::<40>::new();
        match self
            .partitions
            .slot_root(slot, spec)
            .map_err(BootArgsError::RootSpec)?
        {
            SlotRoot::Number(number) => {
                let found = self
                    .partitions
                    .partition(number)
                    .ok_or(BootArgsError::NoPartition { number })?;
                let _ = write!(uuid, "{}", found.partuuid());
            }
            SlotRoot::PartUuid(given) => {
                let _ = uuid.push_str(given);
            }
        }
        // With the hang guard on (the default), a kernel panic reboots at
        // once rather than waiting for the watchdog (docs/slot-state.md).
        let panic_seconds = (manifest.watchdog_timeout != Some(0)).then_some(1);
        let args = BootArgs {
            root_partuuid: &uuid,
            slot,
            attempt,
            panic_seconds,
            serial,
            firmware,
        };
        cmdline::build(&loaded.cmdline, &args, out).map_err(BootArgsError::Cmdline)
    }
}

/// Why no command line could be made for a slot.
#[derive(Debug)]
pub enum BootArgsError {
    /// The manifest's root for the slot is not a partition path or PARTUUID.
    RootSpec(BadRootSpec),
    /// The slot's root partition does not exist on the disk.
    NoPartition { number: u8 },
    /// `cmdline.txt` is unusable.
    Cmdline(CmdlineError),
}

impl fmt::Display for BootArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RootSpec(error) => write!(f, "root partition in zbmanifest.txt: {error}"),
            Self::NoPartition { number } => {
                write!(f, "root partition {number} does not exist on the disk")
            }
            Self::Cmdline(error) => write!(f, "cmdline.txt: {error}"),
        }
    }
}

/// Logs what loading a slot cost, for the storage benchmark.
pub fn report_load(disk: &Disk, slot: Slot, loaded: &LoadedSlot) {
    let report = loaded.report;
    let counters = disk.counters();
    log::info!(
        "slot {slot}: image version {}: {} bytes loaded and verified in {} runs ({} FAT sectors, \
         {} bytes of sector slack); {} storage commands, {} blocks read since power-on",
        loaded.image_version,
        report.bytes,
        report.runs,
        report.fat_reads,
        report.slack_bytes,
        disk.commands(),
        counters.blocks_read,
    );
    let moved = disk.transfer_counts();
    log::info!(
        "EMMC2: data moved by ADMA2 in {} command(s), by PIO in {} (+{} for unsuitable buffers)",
        moved.adma,
        moved.pio,
        moved.pio_unsuitable_buffer
    );
}
