//! Update reports (`report_url=`): a JSON record per update step, queued on disk and posted
//! later by `zbctl report send` (`report_send`). docs/update.md, "Update reports".
//!
//! Queuing is local file I/O only, so the commands on the boot path (`mark-good`) and the
//! install steps never wait for the operator's endpoint: a record is written to a temporary
//! file, synced, and renamed into the queue directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use recovery_proto::manifest::Manifest;
use recovery_proto::state::HistoryEntry;
use recovery_proto::{BootOutcome, Reason, Skip, Slot, SlotState, State};
use serde::{Deserialize, Serialize};

use super::status::{self, BootJson};
use super::target::{self, Target};

/// The queue directory when neither `--report-dir` nor [`DIR_ENV`] names one.
pub const DEFAULT_DIR: &str = "/var/lib/zboot/reports";
/// Environment variable naming the queue directory (the units read it from
/// `/etc/default/zboot`).
pub const DIR_ENV: &str = "ZBOOT_REPORT_DIR";
/// Records kept at most; enqueueing another drops the oldest, so a device whose endpoint is
/// gone for good does not fill its disk.
pub const MAX_QUEUED: usize = 100;
/// Boot-history entries a record carries (the newest ones).
pub const HISTORY_ENTRIES: usize = 4;
/// The record format (`format` of each record; raised only for incompatible changes).
pub const FORMAT: u32 = 1;
/// The file holding the boot number of the newest history entry `mark-good` looked at for
/// rollbacks, so that each rollback is reported once.
const MARKER: &str = "last-reported-boot";

/// The update step a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// `update apply` received the image and verified it (or failed to).
    Downloaded,
    /// `update apply` or `install` armed the slot as a trial (or failed to).
    Installed,
    /// `mark-good` ran on a trial boot: the new system reached user space.
    TrialBooted,
    /// `mark-good` confirmed that trial.
    Confirmed,
    /// The loader gave up a slot (its boots never confirmed) and booted another.
    RolledBack,
}

/// One record, as posted (docs/update.md lists the fields; add, never rename).
#[derive(Debug, Serialize)]
pub struct Record {
    /// [`FORMAT`].
    pub format: u32,
    /// Unique per device (the queue file's name): the endpoint drops a record it already has
    /// (a retry after an answer that was lost).
    pub id: String,
    /// The device serial (`update::device_serial`), `None` when there is none.
    pub serial: Option<String>,
    /// The step.
    pub event: Event,
    /// `ok` or `failed`.
    pub outcome: &'static str,
    /// Why it failed, or what happened.
    pub reason: Option<String>,
    /// The slot concerned.
    pub slot: Option<&'static str>,
    /// The image's name, when zbctl knows it (the state records versions, not names).
    pub image_name: Option<String>,
    /// The image's version.
    pub image_version: Option<u32>,
    /// Unix time, seconds.
    pub time: u64,
    /// The newest [`HISTORY_ENTRIES`] boots, oldest first, as `status --json` has them.
    pub history: Vec<BootJson>,
}

impl Record {
    /// A successful `event` of `slot`, with the newest boots of `state`.
    pub fn new(event: Event, slot: Option<Slot>, state: Option<&State>) -> Self {
        let history = state.map_or_else(Vec::new, |state| {
            let entries = state.history.entries();
            status::history_json(&entries[entries.len().saturating_sub(HISTORY_ENTRIES)..])
        });
        Self {
            format: FORMAT,
            id: String::new(),
            serial: super::update::device_serial().ok(),
            event,
            outcome: "ok",
            reason: None,
            slot: slot.map(Slot::name),
            image_name: None,
            image_version: slot.and_then(|slot| state.map(|s| s.slot(slot).image_version)),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            history,
        }
    }

    /// The same record, for a step that failed with `error`.
    #[must_use]
    pub fn failed(mut self, error: &anyhow::Error) -> Self {
        self.outcome = "failed";
        self.reason = Some(format!("{error:#}"));
        self
    }

    /// The same record with a reason.
    #[must_use]
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The same record naming the image.
    #[must_use]
    pub fn image(mut self, name: &str, version: u32) -> Self {
        self.image_name = Some(name.to_string());
        self.image_version = Some(version);
        self
    }
}

/// A queue file: the record and how often sending it failed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Queued<R> {
    /// Failed attempts so far.
    pub attempts: u32,
    /// The record as it is posted.
    pub record: R,
}

/// Where reports go: the endpoint and the CA bundle its certificate is checked against.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `report_url=` (an `https://` URL).
    pub url: String,
    /// `ca_cert=` (shared with the update endpoint).
    pub ca_cert: Option<PathBuf>,
}

/// The report settings of a parsed `zbmanifest.txt`: `None` without `report_url=`; a URL
/// that is not `https://` is refused with its line (the records name the device and its
/// boot history).
pub fn settings_of(manifest: &Manifest<'_>) -> Result<Option<Settings>> {
    let Some(url) = manifest.report_url else {
        return Ok(None);
    };
    let scheme_ok = url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        && url.len() > 8;
    if !scheme_ok {
        bail!(
            "zbmanifest.txt line {}: report_url={url}: only an https:// URL is accepted (the \
             reports carry the device's serial and boot history)",
            manifest.report_url_line
        );
    }
    Ok(Some(Settings {
        url: url.to_string(),
        ca_cert: manifest.ca_cert.map(PathBuf::from),
    }))
}

/// The report settings of the target's `zbmanifest.txt` (missing: none).
pub fn settings(target: &Target) -> Result<Option<Settings>> {
    let bytes = super::update::read_boot_file(target, "zbmanifest.txt")?.unwrap_or_default();
    let manifest = Manifest::parse(&bytes)?;
    settings_of(&manifest)
}

/// The queue directory.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Where the record files are.
    pub dir: PathBuf,
}

impl Queue {
    /// `explicit` (`--report-dir`), else `$ZBOOT_REPORT_DIR`, else [`DEFAULT_DIR`].
    pub fn new(explicit: Option<&Path>) -> Self {
        let dir = explicit.map_or_else(
            || match std::env::var_os(DIR_ENV) {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => PathBuf::from(DEFAULT_DIR),
            },
            Path::to_path_buf,
        );
        Self { dir }
    }

    /// Writes `record` into the queue atomically (temporary file, sync, rename, directory
    /// sync); drops the oldest records beyond [`MAX_QUEUED`]. Returns the file.
    pub fn enqueue(&self, mut record: Record) -> Result<PathBuf> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the report queue {}", self.dir.display()))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Names sort oldest first: the time, then this process's sequence.
        let stem = format!(
            "{nanos:020}-{}-{:04}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        record.id.clone_from(&stem);
        let path = self.dir.join(format!("{stem}.json"));
        write_atomically(
            &path,
            &serde_json::to_vec(&Queued {
                attempts: 0,
                record,
            })?,
        )?;
        let queued = self.queued()?;
        for old in queued.iter().take(queued.len().saturating_sub(MAX_QUEUED)) {
            if fs::remove_file(old).is_ok() {
                eprintln!(
                    "warning: report queue {}: more than {MAX_QUEUED} records, dropped the \
                     oldest ({})",
                    self.dir.display(),
                    old.display()
                );
            }
        }
        Ok(path)
    }

    /// The queued record files, oldest first (a missing directory is an empty queue).
    pub fn queued(&self) -> Result<Vec<PathBuf>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", self.dir.display()));
            }
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "json")
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn marker(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join(MARKER))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn set_marker(&self, boot: u32) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the report queue {}", self.dir.display()))?;
        write_atomically(&self.dir.join(MARKER), format!("{boot}\n").as_bytes())
    }
}

/// `bytes` into `path` through a temporary file in the same directory, synced and renamed:
/// a power cut leaves the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file =
        File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))?;
    // The rename itself is durable once the directory is synced.
    File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

/// Queues `records` when `settings` (the target's `report_url=`) are set; a failure is a
/// warning, never an error of the step reported.
pub fn enqueue_all(queue: &Queue, records: Vec<Record>) {
    for record in records {
        let event = record.event;
        if let Err(error) = queue.enqueue(record) {
            eprintln!("warning: update report ({event:?}) not queued: {error:#}");
        }
    }
}

/// The state as it is now, for a record's history (`None` when it cannot be read).
pub fn current_state(target: &Target) -> Option<State> {
    let mut opened = target::open(target).ok()?;
    target::load(&mut opened).ok().map(|loaded| loaded.0)
}

/// What `mark-good` found before confirming: the slot booted and whether it was a trial.
#[derive(Clone, Copy, Debug)]
pub struct Confirming {
    /// The slot booted (the newest history entry's).
    pub slot: Slot,
    /// It was a trial (`set-active`, an install) or a one-shot (`try`).
    pub trial: bool,
}

impl Confirming {
    /// What `state` (before `mark-good`) says about the boot being confirmed.
    pub fn of(state: &State) -> Option<Self> {
        let last = state.history.last()?;
        let slot = last.reason.booted_slot()?;
        Some(Self {
            slot,
            trial: state.slot(slot).state == SlotState::Trial
                || matches!(last.reason, Reason::OneShot { .. }),
        })
    }
}

/// After `mark-good` wrote and synced `state`: queues `trial_booted` and `confirmed` when the
/// boot was a trial, and `rolled_back` for each slot the loader gave up since the last
/// `mark-good` that looked. Only local files are written; problems are warnings.
pub fn after_mark_good(target: &Target, queue: &Queue, confirmed: Confirming, state: &State) {
    match settings(target) {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(error) => {
            eprintln!("warning: no update report queued: {error:#}");
            return;
        }
    }
    let mut records = Vec::new();
    let entries = state.history.entries();
    for (entry, slot) in given_up(entries, queue.marker()) {
        records.push(
            Record::new(Event::RolledBack, Some(slot), Some(state))
                .because(format!("boot #{}: {}", entry.boot, entry.reason)),
        );
        if let Some(record) = records.last_mut() {
            record.outcome = "failed";
        }
    }
    if confirmed.trial {
        let booted = entries.last().map(|entry| entry.reason.to_string());
        let mut record = Record::new(Event::TrialBooted, Some(confirmed.slot), Some(state));
        record.reason = booted;
        records.push(record);
        records.push(Record::new(
            Event::Confirmed,
            Some(confirmed.slot),
            Some(state),
        ));
    }
    enqueue_all(queue, records);
    if let Some(last) = entries.last()
        && let Err(error) = queue.set_marker(last.boot)
    {
        eprintln!("warning: update reports: {error:#}");
    }
}

/// The boots, newer than `marker` (the newest boot looked at before; `None`: only the newest
/// boot is looked at), on which a slot was given up: the loader passed over A or B for good
/// (its counter reached the limit, or its files or signature failed the last time allowed),
/// or a one-shot try ended without `mark-good`. A marker above every entry means the state
/// was created again: it is ignored.
pub fn given_up(entries: &[HistoryEntry], marker: Option<u32>) -> Vec<(HistoryEntry, Slot)> {
    let newest = entries.last().map_or(0, |entry| entry.boot);
    let first = match marker {
        Some(marker) if marker <= newest => marker.saturating_add(1),
        _ => newest,
    };
    entries
        .iter()
        .filter(|entry| entry.boot >= first)
        .filter_map(|entry| match entry.reason {
            Reason::Fallback {
                skipped, skip, max, ..
            } if skipped != Slot::Safe => {
                let abandoned = match skip {
                    Skip::LimitReached { .. } => true,
                    Skip::FilesFailed { failed } | Skip::NotAuthentic { failed } => failed >= max,
                    _ => false,
                };
                abandoned.then_some((*entry, skipped))
            }
            Reason::OneShot { slot, .. } if entry.outcome == BootOutcome::Failed => {
                Some((*entry, slot))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use recovery_proto::{Facts, ResetReason, decide};

    fn boot(state: &mut State, reset: ResetReason) {
        *state = decide(state, &Facts::new(reset)).state;
    }

    #[test]
    fn a_trial_that_never_confirms_is_given_up_once() {
        let mut state = State::fresh();
        boot(&mut state, ResetReason::PowerOn);
        state.mark_good(None).unwrap();
        state.start_trial(Slot::B, 7, false);
        for _ in 0..3 {
            boot(&mut state, ResetReason::Watchdog);
        }
        assert!(given_up(state.history.entries(), None).is_empty());
        // The fourth boot finds B at the limit and falls back to A.
        boot(&mut state, ResetReason::Watchdog);
        assert_eq!(state.active, Slot::A);
        let found = given_up(state.history.entries(), None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, Slot::B);
        let newest = state.history.last().unwrap().boot;
        assert!(given_up(state.history.entries(), Some(newest)).is_empty());
        // Looked at up to the boot before: the fallback is still new.
        assert_eq!(given_up(state.history.entries(), Some(newest - 1)).len(), 1);
        // A marker from a state since created again is ignored.
        assert_eq!(
            given_up(state.history.entries(), Some(newest + 50)).len(),
            1
        );
        state.mark_good(None).unwrap();
        boot(&mut state, ResetReason::Software);
        assert!(given_up(state.history.entries(), Some(newest)).is_empty());
    }

    #[test]
    fn a_failed_one_shot_is_given_up() {
        let mut state = State::fresh();
        state.try_once(Slot::B, Some(4));
        boot(&mut state, ResetReason::PowerOn);
        boot(&mut state, ResetReason::Watchdog);
        let found = given_up(state.history.entries(), Some(0));
        assert_eq!(found.iter().map(|f| f.1).collect::<Vec<_>>(), [Slot::B]);
    }

    #[test]
    fn the_queue_keeps_the_newest_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(Some(&dir.path().join("reports")));
        assert!(queue.queued().unwrap().is_empty(), "no directory yet");
        for version in 0..MAX_QUEUED as u32 + 5 {
            queue
                .enqueue(Record::new(Event::Installed, Some(Slot::B), None).image("os", version))
                .unwrap();
        }
        let files = queue.queued().unwrap();
        assert_eq!(files.len(), MAX_QUEUED);
        let versions: Vec<u64> = files
            .iter()
            .map(|file| {
                let queued: Queued<serde_json::Value> =
                    serde_json::from_slice(&fs::read(file).unwrap()).unwrap();
                assert_eq!(queued.attempts, 0);
                assert_eq!(
                    queued.record["id"].as_str().unwrap(),
                    file.file_stem().unwrap().to_str().unwrap()
                );
                queued.record["image_version"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(versions, (5..MAX_QUEUED as u64 + 5).collect::<Vec<_>>());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&queue.dir).unwrap().count(), MAX_QUEUED);
    }

    #[test]
    fn report_urls_must_be_https() {
        let ok = Manifest::parse(b"report_url=HTTPS://ops.example.invalid/r\n").unwrap();
        assert_eq!(
            settings_of(&ok).unwrap().unwrap().url,
            "HTTPS://ops.example.invalid/r"
        );
        for text in [
            "# x\nreport_url=http://ops.example.invalid/r\n",
            "# x\nreport_url=ops.example.invalid\n",
            "# x\nreport_url=https://\n",
        ] {
            let manifest = Manifest::parse(text.as_bytes()).unwrap();
            let error = settings_of(&manifest).unwrap_err().to_string();
            assert!(
                error.starts_with("zbmanifest.txt line 2: report_url=") && error.contains("https"),
                "{error}"
            );
        }
        assert!(
            settings_of(&Manifest::parse(b"diag=no\n").unwrap())
                .unwrap()
                .is_none()
        );
    }
}
