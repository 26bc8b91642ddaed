//! `zbctl report send`: posts the queued update reports to `report_url=` over HTTPS, oldest
//! first, with short bounded timeouts; a record that keeps failing is dropped after
//! `--max-attempts`. The transport is `update`'s (ureq with rustls, `ca_cert=` or the system
//! store). docs/update.md, "Update reports".

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

#[cfg(not(feature = "https"))]
use anyhow::anyhow;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::report::{Queue, Queued, Settings};
use super::target::Target;

/// `zbctl report` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Post the queued update reports to zbmanifest.txt's `report_url` (exit 7: the endpoint
    /// could not take them; they stay queued).
    Send(SendArgs),
}

/// Arguments of `report send`.
#[derive(Clone, Debug, Args)]
pub struct SendArgs {
    /// Seconds to connect (and resolve the host) before the endpoint counts as down.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub connect_timeout: u64,
    /// Seconds one record may take in all (connect, send, answer).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
    /// Failed attempts after which a record is dropped (with a warning).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_attempts: u32,
}

impl Default for SendArgs {
    fn default() -> Self {
        Self {
            connect_timeout: 5,
            timeout: 10,
            max_attempts: 10,
        }
    }
}

/// Runs `zbctl report send`.
pub fn run(
    target: &Target,
    queue: &Queue,
    command: &ReportCommand,
    out: &mut dyn Write,
) -> Result<()> {
    let ReportCommand::Send(args) = command;
    let Some(settings) = super::report::settings(target)? else {
        let waiting = queue.queued()?.len();
        writeln!(
            out,
            "no report_url= in zbmanifest.txt: nothing sent ({waiting} records queued in {})",
            queue.dir.display()
        )?;
        return Ok(());
    };
    let summary = send(&settings, queue, args)?;
    writeln!(out, "{}", summary.line)?;
    match summary.failure {
        None => Ok(()),
        Some(message) => Err(super::image::ExitError {
            code: super::update::exit::ENDPOINT,
            message,
        }
        .into()),
    }
}

/// What a send run did.
#[derive(Debug)]
pub struct Summary {
    /// The line for the journal.
    pub line: String,
    /// Why records stay queued (the endpoint could not be reached or refused one).
    pub failure: Option<String>,
}

/// Posts the queued records, oldest first. Another send holding the queue's lock: nothing
/// done. A record answered with 2xx is deleted; any other answer counts an attempt and the
/// run goes on with the next; a failure to reach the endpoint counts an attempt and ends the
/// run (the next records would wait for the same timeout).
pub fn send(settings: &Settings, queue: &Queue, args: &SendArgs) -> Result<Summary> {
    let files = queue.queued()?;
    if files.is_empty() {
        return Ok(Summary {
            line: format!("no update reports queued in {}", queue.dir.display()),
            failure: None,
        });
    }
    let lock = File::open(&queue.dir)
        .with_context(|| format!("opening the report queue {}", queue.dir.display()))?;
    if lock.try_lock().is_err() {
        return Ok(Summary {
            line: format!(
                "another zbctl is sending the reports in {}; nothing done",
                queue.dir.display()
            ),
            failure: None,
        });
    }
    let agent = agent(settings, args)?;
    let mut sent = 0;
    let mut failure = None;
    for file in &files {
        let Some(mut queued) = read(file) else {
            continue;
        };
        let body = serde_json::to_vec(&queued.record)?;
        let (message, reachable) = match post(&agent, &settings.url, &body) {
            Ok(()) => {
                fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
                sent += 1;
                continue;
            }
            Err(failed) => failed,
        };
        queued.attempts = queued.attempts.saturating_add(1);
        if queued.attempts >= args.max_attempts {
            eprintln!(
                "warning: update report {} dropped after {} failed attempts (last: {message})",
                file.display(),
                queued.attempts
            );
            fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
        } else {
            super::report::write_atomically(file, &serde_json::to_vec(&queued)?)?;
        }
        failure = Some(format!(
            "{}: {message} (attempt {} of {})",
            settings.url, queued.attempts, args.max_attempts
        ));
        if !reachable {
            break;
        }
    }
    let waiting = queue.queued()?.len();
    let line = format!(
        "sent {sent} update report{} to {}; {waiting} queued",
        if sent == 1 { "" } else { "s" },
        settings.url
    );
    Ok(Summary {
        line,
        failure: failure.map(|message| format!("{message}; {waiting} update reports queued")),
    })
}

/// A queue file; one that does not parse is dropped with a warning (it would never send).
fn read(file: &Path) -> Option<Queued<serde_json::Value>> {
    let parsed = fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
    match parsed {
        Ok(queued) => Some(queued),
        Err(error) => {
            eprintln!(
                "warning: update report {} dropped: not a queued record ({error})",
                file.display()
            );
            let _ = fs::remove_file(file);
            None
        }
    }
}

/// One `POST`; `Err((why, reachable))`, `reachable` false when no answer came at all.
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(), (String, bool)> {
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|error| (super::update::describe(&error), false))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err((format!("the endpoint answered HTTP {status}"), true))
    }
}

/// The client: `--connect-timeout` to resolve and connect, `--timeout` for the whole
/// exchange, HTTPS only, no redirects (a POST is not replayed elsewhere).
fn agent(settings: &Settings, args: &SendArgs) -> Result<ureq::Agent> {
    let connect = Some(Duration::from_secs(args.connect_timeout.max(1)));
    let builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .https_only(true)
        .max_redirects(0)
        .user_agent(concat!("zbctl/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(connect)
        .timeout_connect(connect)
        .timeout_global(Some(Duration::from_secs(args.timeout.max(1))));
    with_tls(builder, settings)
}

#[cfg(feature = "https")]
fn with_tls(
    builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    settings: &Settings,
) -> Result<ureq::Agent> {
    let tls = super::update::tls_config(settings.ca_cert.as_deref())?;
    Ok(builder.tls_config(tls).build().new_agent())
}

#[cfg(not(feature = "https"))]
fn with_tls(
    _: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    settings: &Settings,
) -> Result<ureq::Agent> {
    Err(anyhow!(
        "report_url={}: this zbctl was built without HTTPS (cargo feature `https`); the \
         reports stay queued",
        settings.url
    ))
}

/// `update apply`'s send at its end: bounded like `report send`, one line on stderr, its
/// result never the update's.
pub fn send_after_update(settings: &Settings, queue: &Queue) {
    match send(settings, queue, &SendArgs::default()) {
        Ok(summary) => {
            eprintln!(
                "zbctl: {}",
                summary.failure.as_deref().unwrap_or(&summary.line)
            );
        }
        Err(error) => eprintln!("zbctl: update reports not sent: {error:#}"),
    }
}
