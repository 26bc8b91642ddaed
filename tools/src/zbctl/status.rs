//! `zbctl status`: the state for humans and as JSON.

use std::fmt::Write as _;

use recovery_proto::store::{CopyStatus, LoadReport};
use recovery_proto::{Slot, State};
use serde::Serialize;

/// `status --json` output (stable field names; add, never rename).
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Where the state was read.
    pub location: String,
    /// Copy 0 and copy 1.
    pub copies: [CopyJson; 2],
    /// The copy in use.
    pub copy_in_use: usize,
    /// ACTIVE slot name.
    pub active: &'static str,
    /// BACKUP slot name.
    pub backup: &'static str,
    /// Failure limit.
    pub max_boot_failure: u8,
    /// One-shot slot, if armed.
    pub one_shot: Option<&'static str>,
    /// Recovery requested by user space.
    pub recovery_requested: bool,
    /// Count boots ended by power loss.
    pub count_power_loss: bool,
    /// Minimum accepted image version.
    pub min_version: u32,
    /// Number of the last recorded boot.
    pub boot_count: u32,
    /// A, B, SAFE.
    pub slots: Vec<SlotJson>,
    /// The legacy reflash journal in the state record (written by older zboots).
    pub reflash: ReflashJson,
    /// The reflash journal outside the partitions (LBAs 64-65), when the target is a
    /// whole disk: `None` there means no reflash is under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reflash_journal: Option<Option<DiskJournalJson>>,
    /// Recent boots, oldest first.
    pub history: Vec<BootJson>,
}

/// One copy of the record.
#[derive(Debug, Serialize)]
pub struct CopyJson {
    /// LBA of the copy.
    pub lba: u64,
    /// Whether it decodes.
    pub valid: bool,
    /// Its sequence number when valid.
    pub sequence: Option<u32>,
    /// Why not, when invalid.
    pub error: Option<String>,
}

/// One slot.
#[derive(Debug, Serialize)]
pub struct SlotJson {
    /// A, B or SAFE.
    pub name: &'static str,
    /// good, trial or bad.
    pub state: &'static str,
    /// Consecutive unconfirmed boots.
    pub failed_boots: u8,
    /// Image version in the slot.
    pub image_version: u32,
    /// Version user space last confirmed.
    pub confirmed_version: u32,
    /// Boot number of the last confirmation.
    pub confirmed_boot: u32,
    /// The version the slot's `slot.txt` names (what the loader compares with the minimum),
    /// when the boot partition could be read and the slot has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_version: Option<u32>,
    /// The slot's signature: `unsigned`, `signed by key … (name)`, or why it is broken
    /// (checked with the key `slot.sig` names; the loader checks with its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The signer's fingerprint when the signature verifies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// The reflash journal.
#[derive(Debug, Serialize)]
pub struct ReflashJson {
    /// A reflash is in progress.
    pub in_progress: bool,
    /// Image identity (hex).
    pub image_id: String,
    /// Next chunk to write.
    pub next_chunk: u32,
}

/// An unfinished reflash as the journal outside the partitions records it.
#[derive(Debug, Serialize)]
pub struct DiskJournalJson {
    /// Image identity (hex SHA-256 of its header).
    pub image_id: String,
    /// The next region to write.
    pub next_region: u32,
    /// Regions in the image.
    pub regions: u32,
    /// The user's DATA partition the reflash leaves in place: (first LBA, sectors).
    pub kept_data: Option<(u64, u64)>,
}

impl DiskJournalJson {
    /// The JSON view of a journal entry.
    pub fn new(entry: &recovery_proto::reflash::Entry) -> Self {
        Self {
            image_id: hex(&entry.image),
            next_region: entry.next_region,
            regions: entry.regions,
            kept_data: entry
                .kept_data
                .map(|extent| (extent.start_lba, extent.sectors)),
        }
    }
}

/// One recorded boot.
#[derive(Debug, Serialize)]
pub struct BootJson {
    /// Boot number.
    pub boot: u32,
    /// A, B, SAFE or RECOVERY.
    pub decision: String,
    /// Attempt number of the slot (1 = first unconfirmed boot).
    pub attempt: Option<u8>,
    /// The loader's reason text.
    pub reason: String,
    /// Reset reason seen on that boot.
    pub reset: &'static str,
    /// pending, good, failed, power-loss-not-counted or -.
    pub outcome: &'static str,
}

/// Builds the JSON view.
pub fn to_json(
    state: &State,
    report: &LoadReport<std::io::Error>,
    lbas: [u64; 2],
    location: &str,
) -> StatusJson {
    let copy = |index: usize| {
        let status = &report.copies[index.min(1)];
        let lba = lbas[index.min(1)];
        match status {
            CopyStatus::Valid { sequence } => CopyJson {
                lba,
                valid: true,
                sequence: Some(*sequence),
                error: None,
            },
            other => CopyJson {
                lba,
                valid: false,
                sequence: None,
                error: Some(other.to_string()),
            },
        }
    };
    StatusJson {
        location: location.to_string(),
        copies: [copy(0), copy(1)],
        copy_in_use: report.used,
        active: state.active.name(),
        backup: state.backup.name(),
        max_boot_failure: state.max_boot_failure,
        one_shot: state.one_shot.map(Slot::name),
        recovery_requested: state.recovery_requested,
        count_power_loss: state.count_power_loss,
        min_version: state.min_version,
        boot_count: state.boot_count,
        slots: Slot::ALL
            .iter()
            .map(|&slot| {
                let info = state.slot(slot);
                SlotJson {
                    name: slot.name(),
                    state: info.state.name(),
                    failed_boots: info.failed,
                    image_version: info.image_version,
                    confirmed_version: info.confirmed_version,
                    confirmed_boot: info.confirmed_boot,
                    files_version: None,
                    signature: None,
                    signer: None,
                }
            })
            .collect(),
        reflash: ReflashJson {
            in_progress: state.journal.in_progress,
            image_id: state
                .journal
                .image_id
                .iter()
                .fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                }),
            next_chunk: state.journal.next_chunk,
        },
        reflash_journal: None,
        history: history_json(state.history.entries()),
    }
}

/// Boot-history entries as `status --json` renders them (also the `history` of an update
/// report).
pub fn history_json(entries: &[recovery_proto::state::HistoryEntry]) -> Vec<BootJson> {
    entries
        .iter()
        .map(|entry| BootJson {
            boot: entry.boot,
            decision: entry.reason.decision().to_string(),
            attempt: entry.reason.attempt(),
            reason: entry.reason.to_string(),
            reset: entry.reset.name(),
            outcome: entry.outcome.name(),
        })
        .collect()
}

/// Fills in each slot's `slot.txt` version and signature from the boot partition, with
/// `read` fetching a file of it (`None` when absent); a partition that cannot be read
/// leaves them out.
pub fn add_slot_files(
    view: &mut StatusJson,
    read: impl Fn(&str) -> anyhow::Result<Option<Vec<u8>>>,
) {
    for slot in &mut view.slots {
        let Ok(Some(slot_txt)) = read(&format!("{}/slot.txt", slot.name)) else {
            continue;
        };
        let Ok(manifest) = recovery_proto::slot_manifest::SlotManifest::parse(&slot_txt) else {
            slot.signature = Some("slot.txt does not parse".into());
            continue;
        };
        slot.files_version = Some(manifest.image_version);
        let slot_sig = read(&format!("{}/{}", slot.name, super::slot_sign::FILE))
            .ok()
            .flatten();
        let signed = super::slot_sign::describe(&slot_txt, slot_sig.as_deref());
        if let super::slot_sign::Signed::By { signer, .. } = &signed {
            slot.signer = Some(signer.to_string());
        }
        slot.signature = Some(signed.to_string());
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// The slot table of the human view, and each slot's files.
fn slot_table(out: &mut String, json: &StatusJson) {
    let _ = writeln!(
        out,
        "\nslot  state  failed  version  confirmed  confirmed at boot"
    );
    for slot in &json.slots {
        let _ = writeln!(
            out,
            "{:<5} {:<6} {:>2}/{:<3}  {:<7}  {:<9}  {}",
            slot.name,
            slot.state,
            slot.failed_boots,
            json.max_boot_failure,
            slot.image_version,
            slot.confirmed_version,
            if slot.confirmed_boot == 0 {
                "never".to_string()
            } else {
                format!("#{}", slot.confirmed_boot)
            }
        );
    }
    for slot in &json.slots {
        if let (Some(version), Some(signature)) = (slot.files_version, &slot.signature) {
            let _ = writeln!(
                out,
                "{:<5} files: slot.txt version {version}, {signature}",
                slot.name
            );
        }
    }
}

/// The human view.
pub fn to_text(json: &StatusJson) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "state:     {}", json.location);
    for (index, copy) in json.copies.iter().enumerate() {
        let in_use = if index == json.copy_in_use {
            " (in use)"
        } else {
            ""
        };
        let _ = match (&copy.sequence, &copy.error) {
            (Some(sequence), _) => writeln!(
                out,
                "copy {index}:    LBA {}, sequence {sequence}{in_use}",
                copy.lba
            ),
            (None, error) => writeln!(
                out,
                "copy {index}:    LBA {}, {}",
                copy.lba,
                error.as_deref().unwrap_or("invalid")
            ),
        };
    }
    let _ = writeln!(
        out,
        "active:    {}   backup: {}   one-shot: {}   recovery requested: {}",
        json.active,
        json.backup,
        json.one_shot.unwrap_or("none"),
        yes_no(json.recovery_requested)
    );
    let _ = writeln!(
        out,
        "policy:    max_boot_failure {}, count_power_loss {}, minimum image version {}",
        json.max_boot_failure,
        yes_no(json.count_power_loss),
        json.min_version
    );
    slot_table(&mut out, json);
    match &json.reflash_journal {
        Some(Some(entry)) => {
            let _ = writeln!(
                out,
                "\nreflash:   UNFINISHED (journal at LBAs 64-65): image {}, region {} of {}; \
                 the loader resumes it from a stick",
                entry.image_id, entry.next_region, entry.regions
            );
        }
        Some(None) => {
            let _ = writeln!(
                out,
                "\nreflash:   none under way (journal at LBAs 64-65 empty)"
            );
        }
        None => {}
    }
    if json.reflash.in_progress {
        let _ = writeln!(
            out,
            "\nreflash:   IN PROGRESS, image {}, next chunk {}",
            json.reflash.image_id, json.reflash.next_chunk
        );
    }
    let _ = writeln!(
        out,
        "\nboot history (oldest first, {} boots in total):",
        json.boot_count
    );
    if json.history.is_empty() {
        let _ = writeln!(out, "  (no boot recorded yet)");
    }
    for boot in &json.history {
        let _ = writeln!(
            out,
            "  #{:<5} {:<8} reset {:<8} outcome {:<8} {}",
            boot.boot, boot.decision, boot.reset, boot.outcome, boot.reason
        );
    }
    out
}
