//! Update reports (`report_url=`, docs/update.md "Update reports") against the loopback
//! HTTPS server: what `update apply`, `install` and `mark-good` queue, what `report send`
//! posts, and that a down or silent endpoint never holds up `mark-good`.

use super::{Behaviour, Disk, Server, expect, fixture, https_manifest};
use crate::common::{s, zbctl_env};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use recovery_proto::locate::locate_state;
use recovery_proto::{Facts, RedundantStore, ResetReason, decide};
use zboot_tools::zbctl::disk::FileDisk;

const SERIAL: &str = "10000000c0ffee42";

/// A disk whose manifest points the update endpoint at `/os.zi` on `updates` and
/// `report_url=` at `report_url` (the CA bundle trusts `updates`' certificate).
fn disk_reporting_to(updates: &Server, report_url: &str) -> Disk {
    fixture().disk_in(|dir| {
        let ca = dir.join("ca.pem");
        fs::write(&ca, updates.ca.as_ref().unwrap()).unwrap();
        format!(
            "{}report_url={report_url}\n",
            https_manifest(&updates.url("/os.zi"), &ca)
        )
    })
}

/// A URL on loopback where nothing listens (connections are refused), and its port.
fn dead_url() -> (String, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    (format!("https://localhost:{port}/report"), port)
}

impl Disk {
    fn reports_dir(&self) -> PathBuf {
        self.dir.path().join("reports")
    }

    /// `zbctl --image <disk> --report-dir <queue> <args>` with the device serial set.
    fn zbctl(&self, args: &[&str]) -> Output {
        let reports = self.reports_dir();
        let mut all = vec!["--image", s(&self.path), "--report-dir", s(&reports)];
        all.extend_from_slice(args);
        zbctl_env(
            &all,
            &[("ZBCTL_DEVICE_SERIAL", std::ffi::OsStr::new(SERIAL))],
        )
    }

    /// `zbctl install` of the fixture's version 5 into slot B, as a trial.
    fn install_trial(&self) {
        let lock = self.dir.path().join("update.lock");
        let out = self.zbctl(&["install", "--lock", s(&lock), s(&fixture().path("os.zi"))]);
        expect(&out, 0, &["into slot B"]);
    }

    /// What the loader does on one boot (decide, then persist the state).
    fn loader_boot(&self, reset: ResetReason) {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let mut disk = FileDisk::new(file).unwrap();
        let lbas = locate_state(&mut disk).unwrap().lbas;
        let mut store = RedundantStore::new(lbas);
        let (state, _) = store.load_or_fallback(&mut disk);
        let outcome = decide(&state, &Facts::new(reset));
        store
            .save_if_changed(&mut disk, &state, &outcome.state)
            .unwrap();
    }

    /// The queued records (oldest first) with their attempt counts.
    fn queued(&self) -> Vec<(u64, serde_json::Value)> {
        let Ok(entries) = fs::read_dir(self.reports_dir()) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|file| {
                let queued: serde_json::Value =
                    serde_json::from_slice(&fs::read(file).unwrap()).unwrap();
                (
                    queued["attempts"].as_u64().unwrap(),
                    queued["record"].clone(),
                )
            })
            .collect()
    }

    fn events(&self) -> Vec<String> {
        self.queued()
            .iter()
            .map(|(_, record)| record["event"].as_str().unwrap().to_string())
            .collect()
    }

    fn send(&self, extra: &[&str]) -> Output {
        let mut args = vec!["report", "send"];
        args.extend_from_slice(extra);
        self.zbctl(&args)
    }
}

fn posted(server: &Server) -> Vec<serde_json::Value> {
    server
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|body| serde_json::from_slice(body).unwrap())
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The fields every record has, with the values a record of `event` about slot `slot` has.
fn assert_record(record: &serde_json::Value, event: &str, outcome: &str, slot: &str) {
    assert_eq!(record["format"], 1, "{record}");
    assert_eq!(record["serial"], SERIAL, "{record}");
    assert_eq!(record["event"], event, "{record}");
    assert_eq!(record["outcome"], outcome, "{record}");
    assert_eq!(record["slot"], slot, "{record}");
    assert!(!record["id"].as_str().unwrap().is_empty(), "{record}");
    let time = record["time"].as_u64().unwrap();
    assert!(time <= now() && time + 600 > now(), "{record}");
    for key in ["reason", "image_name", "image_version", "history"] {
        assert!(record.get(key).is_some(), "no {key} in {record}");
    }
}

#[test]
fn reports_of_an_update_and_its_confirmed_trial_reach_the_endpoint() {
    let f = fixture();
    let server = Server::start(
        vec![
            ("/os.zi", f.bytes("os.zi"), Behaviour::Normal),
            ("/report", Vec::new(), Behaviour::Collect),
        ],
        Some("localhost"),
    );
    let disk = disk_reporting_to(&server, &server.url("/report"));
    let lock = disk.dir.path().join("update.lock");
    let out = disk.zbctl(&["update", "apply", "--lock", s(&lock)]);
    expect(
        &out,
        0,
        &["installed os version 5", "sent 2 update reports"],
    );
    // apply sent its own records at its end: nothing left queued.
    assert!(disk.queued().is_empty(), "{:?}", disk.queued());
    let records = posted(&server);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_record(&records[0], "downloaded", "ok", "B");
    assert_record(&records[1], "installed", "ok", "B");
    for record in &records {
        assert_eq!(record["image_name"], "os");
        assert_eq!(record["image_version"], 5);
    }
    assert!(
        records[1]["reason"]
            .as_str()
            .unwrap()
            .contains("into slot B as a trial"),
        "{}",
        records[1]
    );
    assert_ne!(records[0]["id"], records[1]["id"]);

    // The trial boots; mark-good confirms it and only queues (no connection at all).
    disk.loader_boot(ResetReason::Software);
    let connections = server.connections.load(Ordering::SeqCst);
    let out = disk.zbctl(&["mark-good"]);
    expect(&out, 0, &["slot B confirmed good"]);
    assert_eq!(server.connections.load(Ordering::SeqCst), connections);
    assert_eq!(disk.slot_state("B"), "good");
    assert_eq!(disk.events(), ["trial_booted", "confirmed"]);
    // A second mark-good of the same boot queues nothing more.
    disk.zbctl(&["mark-good"]);
    assert_eq!(disk.queued().len(), 2);

    expect(&disk.send(&[]), 0, &["sent 2 update reports"]);
    assert!(disk.queued().is_empty());
    let records = posted(&server);
    assert_eq!(records.len(), 4);
    assert_record(&records[2], "trial_booted", "ok", "B");
    assert_record(&records[3], "confirmed", "ok", "B");
    assert_eq!(records[3]["image_version"], 5);
    // The history as `status --json` renders it, the newest boot last.
    let history = records[3]["history"].as_array().unwrap();
    let status = disk.status();
    assert_eq!(history.last(), status["history"].as_array().unwrap().last());
    assert_eq!(history.last().unwrap()["decision"], "B");
    assert_eq!(history.last().unwrap()["outcome"], "good");
    assert!(
        records[2]["reason"].as_str().unwrap().contains("booting B"),
        "{}",
        records[2]
    );
}

#[test]
fn a_failed_update_is_reported_with_its_reason() {
    let server = Server::start(
        vec![
            ("/os.zi", Vec::new(), Behaviour::NotFound),
            ("/report", Vec::new(), Behaviour::Collect),
        ],
        Some("localhost"),
    );
    let disk = disk_reporting_to(&server, &server.url("/report"));
    let lock = disk.dir.path().join("update.lock");
    let out = disk.zbctl(&["update", "apply", "--lock", s(&lock)]);
    expect(&out, 7, &["not found"]);
    let records = posted(&server);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_record(&records[0], "downloaded", "failed", "B");
    assert!(records[0]["image_name"].is_null() && records[0]["image_version"].is_null());
    let reason = records[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not found") && reason.contains("nothing was written"),
        "{reason}"
    );
}

#[test]
fn records_wait_in_the_queue_while_the_endpoint_is_down() {
    let (url, port) = dead_url();
    let updates = Server::start(vec![], Some("localhost"));
    let disk = disk_reporting_to(&updates, &url);
    disk.install_trial();
    assert_eq!(disk.events(), ["installed"]);
    let (_, record) = &disk.queued()[0];
    assert_record(record, "installed", "ok", "B");
    assert_eq!(record["image_name"], "os");

    let out = disk.send(&["--connect-timeout", "2", "--timeout", "4"]);
    expect(
        &out,
        7,
        &[
            "connection refused",
            "attempt 1 of 10",
            "1 update reports queued",
        ],
    );
    let queued = disk.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0, 1, "the attempt is counted in the file");
    assert_eq!(queued[0].1, *record, "the record itself is unchanged");

    // The endpoint comes up (with a certificate of its own: the CA bundle follows it).
    let endpoint = Server::start_on(
        port,
        vec![("/report", Vec::new(), Behaviour::Collect)],
        Some("localhost"),
    );
    fs::write(
        disk.dir.path().join("ca.pem"),
        endpoint.ca.as_ref().unwrap(),
    )
    .unwrap();
    expect(&disk.send(&[]), 0, &["sent 1 update report to"]);
    assert!(disk.queued().is_empty());
    assert_eq!(posted(&endpoint), std::slice::from_ref(record));
}

#[test]
fn a_silent_endpoint_bounds_report_send_and_never_reaches_mark_good() {
    let server = Server::start(
        vec![("/report", Vec::new(), Behaviour::Stall)],
        Some("localhost"),
    );
    let disk = disk_reporting_to(&server, &server.url("/report"));
    disk.install_trial();
    disk.loader_boot(ResetReason::Software);
    let started = Instant::now();
    expect(&disk.zbctl(&["mark-good"]), 0, &["slot B confirmed good"]);
    let mark_good = started.elapsed();
    assert_eq!(disk.slot_state("B"), "good", "the state was written");
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        0,
        "mark-good opened a connection"
    );
    assert!(
        mark_good < Duration::from_secs(10),
        "mark-good took {mark_good:?}"
    );
    assert_eq!(disk.events(), ["installed", "trial_booted", "confirmed"]);

    // The endpoint accepts and never answers: one record's --timeout, then the run ends.
    let started = Instant::now();
    let out = disk.send(&["--connect-timeout", "2", "--timeout", "2"]);
    let took = started.elapsed();
    expect(&out, 7, &["timed out", "3 update reports queued"]);
    assert!(took < Duration::from_secs(15), "report send took {took:?}");
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    let attempts: Vec<u64> = disk.queued().iter().map(|(a, _)| *a).collect();
    assert_eq!(
        attempts,
        [1, 0, 0],
        "only the record tried counts an attempt"
    );
}

#[test]
fn a_record_is_dropped_after_its_last_attempt() {
    let (url, _) = dead_url();
    let updates = Server::start(vec![], Some("localhost"));
    let disk = disk_reporting_to(&updates, &url);
    disk.install_trial();
    for attempt in 1..3 {
        expect(
            &disk.send(&["--max-attempts", "3"]),
            7,
            &["connection refused"],
        );
        assert_eq!(disk.queued()[0].0, attempt);
    }
    let out = disk.send(&["--max-attempts", "3"]);
    expect(
        &out,
        7,
        &["dropped after 3 failed attempts", "0 update reports queued"],
    );
    assert!(disk.queued().is_empty());
    expect(&disk.send(&[]), 0, &["no update reports queued"]);
}

#[test]
fn a_report_url_that_is_not_https_is_refused_with_its_line() {
    let updates = Server::start(vec![], Some("localhost"));
    let disk = disk_reporting_to(&updates, "http://localhost:9/report");
    // The manifest: update_endpoint, endpoint_type, ca_cert, then report_url on line 4.
    let needle = "line 4: report_url=http://localhost:9/report: only an https:// URL";
    let lock = disk.dir.path().join("update.lock");
    expect(
        &disk.zbctl(&["update", "check", "--lock", s(&lock)]),
        1,
        &[needle],
    );
    let image = fixture().path("os.zi");
    let install = ["install", "--lock", s(&lock), s(&image)];
    expect(&disk.zbctl(&install), 1, &[needle]);
    assert!(disk.unchanged(), "install wrote");
    expect(&disk.send(&[]), 1, &[needle]);
    let manifest = disk.dir.path().join("zbmanifest.txt");
    fs::write(
        &manifest,
        crate::common::mtype(&disk.path, "zbmanifest.txt"),
    )
    .unwrap();
    expect(
        &crate::common::zbctl(&["check-manifest", s(&manifest)]),
        1,
        &[needle],
    );
    // mark-good confirms all the same, with a warning, and queues nothing.
    disk.loader_boot(ResetReason::PowerOn);
    expect(
        &disk.zbctl(&["mark-good"]),
        0,
        &[
            "slot A confirmed good",
            "warning: no update report queued",
            needle,
        ],
    );
    assert_eq!(disk.slot_state("A"), "good");
    assert!(!Path::new(&disk.reports_dir()).exists());
}

#[test]
fn a_rollback_is_reported_once() {
    let (url, _) = dead_url();
    let updates = Server::start(vec![], Some("localhost"));
    let disk = disk_reporting_to(&updates, &url);
    disk.install_trial();
    // B never confirms: three boots, then the loader gives it up and boots A.
    for _ in 0..4 {
        disk.loader_boot(ResetReason::Watchdog);
    }
    assert_eq!(disk.status()["active"], "A");
    expect(&disk.zbctl(&["mark-good"]), 0, &["slot A confirmed good"]);
    assert_eq!(disk.events(), ["installed", "rolled_back"]);
    let (_, record) = &disk.queued()[1];
    assert_record(record, "rolled_back", "failed", "B");
    assert_eq!(record["image_version"], 5);
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("booting A"), "{reason}");
    let history = record["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[2]["decision"], "B");
    assert_eq!(history[2]["outcome"], "failed");
    // Once: not again for the same boot, nor on the next ones.
    disk.zbctl(&["mark-good"]);
    disk.loader_boot(ResetReason::Software);
    expect(&disk.zbctl(&["mark-good"]), 0, &["slot A confirmed good"]);
    assert_eq!(disk.events(), ["installed", "rolled_back"]);
}
