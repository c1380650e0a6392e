//! The audit trail of the command socket: who asked for what, when, from
//! where, and whether it worked.
//!
//! Every privileged request yields a record before it runs (result
//! `accepted`, or `denied` when refused) and a second one with the same
//! session and request id when it completes (`ok` or `failed`). Records go
//! to a text log, a JSON log (hash-chained, see [`chain`]) and the journal,
//! each optional. The file sinks are written, and with `audit_sync` synced,
//! before the command is let through: if they cannot be, the command is
//! refused (fail closed) unless the config says `audit_failure = "continue"`.
//! The journal never holds a command up; what it misses is counted.

pub mod chain;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::json;

use crate::journal::{Entry, Output, Source};
use crate::sanitise::sanitise;

/// The version of the JSON record layout (docs/audit-schema.md).
pub const SCHEMA_VERSION: u32 = 1;

/// The journal `MESSAGE_ID` of every audit record (see
/// packaging/corral-audit.catalog).
pub const MESSAGE_ID: &str = "b3891562deb34c898eedc0ab0982389d";

/// Who sent a request, from the socket's peer credentials. A field that
/// could not be established for certain is `None`, never a guess.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
    pub user: Option<String>,
    pub comm: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed and about to run.
    Accepted,
    /// Refused before anything ran.
    Denied,
    Ok,
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Denied => "denied",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }

    /// notice for what went as asked, warning for what did not.
    fn priority(self) -> u8 {
        match self {
            Outcome::Accepted | Outcome::Ok => 5,
            Outcome::Denied | Outcome::Failed => 4,
        }
    }
}

/// One audit record, before rendering.
#[derive(Clone, Debug)]
pub struct Record {
    pub session: u64,
    pub request_id: u64,
    pub group: Option<String>,
    pub worker: Option<String>,
    /// The request's name, e.g. `Stop`.
    pub command: String,
    /// `name=value` pairs as sent.
    pub arguments: Vec<String>,
    pub actor: Actor,
    pub socket: String,
    pub result: Outcome,
    pub reason: String,
}

fn or_dash(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => sanitise(v),
        _ => "-".into(),
    }
}

impl Record {
    /// The text layout: `[session req group worker]\tAUDIT\tCommand(args)`
    /// then `key=value` fields, tab separated, always the same fields
    /// (`-` when absent). Inside the brackets spaces and brackets are
    /// escaped too, so the four slots stay four.
    pub fn text_line(&self, at: &str) -> String {
        let slot = |v: Option<&str>| or_dash(v).replace(' ', "\\x20").replace('[', "\\x5b").replace(']', "\\x5d");
        let args: Vec<String> = self.arguments.iter().map(|a| sanitise(a)).collect();
        let pid = self.actor.pid.map(|p| p.to_string());
        format!(
            "[{} {} {} {}]\tAUDIT\t{}({})\tat={at}\tactor_uid={}\tactor_gid={}\tactor_pid={}\tactor_user={}\tactor_comm={}\tsocket={}\tresult={}\treason={}",
            self.session,
            self.request_id,
            slot(self.group.as_deref()),
            slot(self.worker.as_deref()),
            sanitise(&self.command),
            args.join(", "),
            self.actor.uid,
            self.actor.gid,
            or_dash(pid.as_deref()),
            or_dash(self.actor.user.as_deref()),
            or_dash(self.actor.comm.as_deref()),
            or_dash(Some(&self.socket)),
            self.result.name(),
            or_dash(Some(&self.reason)),
        )
    }

    /// The JSON object (docs/audit-schema.md), without the chain link.
    pub fn json(&self, at: &str) -> serde_json::Value {
        let text = |v: &Option<String>| v.as_deref().map(sanitise);
        json!({
            "schema_version": SCHEMA_VERSION,
            "record": "audit",
            "timestamp": at,
            "session": self.session,
            "request_id": self.request_id,
            "group": text(&self.group),
            "worker": text(&self.worker),
            "command": sanitise(&self.command),
            "arguments": self.arguments.iter().map(|a| sanitise(a)).collect::<Vec<_>>(),
            "actor": {
                "uid": self.actor.uid,
                "gid": self.actor.gid,
                "pid": self.actor.pid,
                "user": text(&self.actor.user),
                "comm": text(&self.actor.comm),
            },
            "socket": sanitise(&self.socket),
            "result": self.result.name(),
            "reason": sanitise(&self.reason),
        })
    }

    fn journal_entry(&self, at: &str) -> Entry {
        let opt = |v: &Option<String>| v.as_deref().map(sanitise).unwrap_or_default();
        let mut fields = vec![
            ("MESSAGE_ID", MESSAGE_ID.to_string()),
            ("CORRAL_AUDIT_TIMESTAMP", at.to_string()),
            ("CORRAL_AUDIT_SESSION", self.session.to_string()),
            ("CORRAL_AUDIT_REQUEST_ID", self.request_id.to_string()),
            ("CORRAL_AUDIT_COMMAND", sanitise(&self.command)),
            ("CORRAL_AUDIT_ARGUMENTS", self.arguments.iter().map(|a| sanitise(a)).collect::<Vec<_>>().join(", ")),
            ("CORRAL_AUDIT_ACTOR_UID", self.actor.uid.to_string()),
            ("CORRAL_AUDIT_ACTOR_GID", self.actor.gid.to_string()),
            ("CORRAL_AUDIT_SOCKET", sanitise(&self.socket)),
            ("CORRAL_AUDIT_RESULT", self.result.name().to_string()),
            ("CORRAL_AUDIT_REASON", sanitise(&self.reason)),
        ];
        let optional = [
            ("CORRAL_AUDIT_GROUP", opt(&self.group)),
            ("CORRAL_AUDIT_WORKER", opt(&self.worker)),
            ("CORRAL_AUDIT_ACTOR_PID", self.actor.pid.map(|p| p.to_string()).unwrap_or_default()),
            ("CORRAL_AUDIT_ACTOR_USER", opt(&self.actor.user)),
            ("CORRAL_AUDIT_ACTOR_COMM", opt(&self.actor.comm)),
        ];
        fields.extend(optional.into_iter().filter(|(_, v)| !v.is_empty()));
        Entry {
            priority: self.result.priority(),
            message: self.text_line(at).replace('\t', " ").into_bytes(),
            source: Source::Corrald(fields),
        }
    }
}

/// Where records go and what a failure to write them means.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditConfig {
    pub text_target: Option<PathBuf>,
    pub json_target: Option<PathBuf>,
    pub journal: bool,
    /// fdatasync each record before the command runs.
    pub sync: bool,
    /// Log a sink failure and let the command run anyway.
    pub continue_on_failure: bool,
}

/// An append-only audit file: created 0640 (and missing directories
/// 0750), whatever the umask.
struct FileSink {
    key: &'static str,
    path: PathBuf,
    file: File,
}

impl FileSink {
    fn open(key: &'static str, path: &Path) -> io::Result<FileSink> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dirs(parent)?;
        }
        // Never through a symlink someone planted where the log goes.
        let file = crate::files::open_append(path, 0o640)?;
        // The umask may have narrowed a new file; never touch the mode of
        // something that is not a plain file (/dev/null, /dev/full).
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o7777 != 0o640 {
            file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        }
        Ok(FileSink { key, path: path.to_path_buf(), file })
    }

    fn append(&mut self, line: &str, sync: bool) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let result = self.file.write_all(&bytes).and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        result.map_err(|e| format!("cannot write the audit log {} ({}): {e}", self.path.display(), self.key))
    }
}

/// Creates the missing directories of `dir` with mode 0750.
fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

struct Files {
    text: Option<FileSink>,
    json: Option<FileSink>,
    /// SHA-256 of the last JSON line written: the next record's link.
    last_hash: String,
}

/// The audit trail. Writing blocks (file I/O): call [`Auditor::write`]
/// off the async runtime's worker threads.
pub struct Auditor {
    config: AuditConfig,
    files: Mutex<Files>,
    journal: Option<Output>,
    journal_missed: AtomicU64,
}

impl Auditor {
    /// Opens the configured files; an unusable path is an error naming
    /// its config key.
    pub fn open(config: AuditConfig, output: Option<Output>) -> Result<Auditor, String> {
        let open = |key: &'static str, path: &Option<PathBuf>| -> Result<Option<FileSink>, String> {
            path.as_ref()
                .map(|p| FileSink::open(key, p).map_err(|e| format!("{key}: cannot open {}: {e}", p.display())))
                .transpose()
        };
        let text = open("audit_logs_target", &config.text_target)?;
        let json = open("audit_logs_json_target", &config.json_target)?;
        let mut files = Files { text, json, last_hash: chain::GENESIS.to_string() };
        if let Some(json) = &mut files.json {
            let last = chain::last_line_hash(&json.path).map_err(|e| format!("audit_logs_json_target: {e}"))?;
            match last {
                Some(hash) => files.last_hash = hash,
                None => {
                    let anchor = chain::anchor(
                        &humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                        chain::GENESIS,
                        "new file",
                    );
                    json.append(&anchor, config.sync)?;
                    files.last_hash = chain::hash(&anchor);
                }
            }
        }
        let journal = if config.journal { output } else { None };
        Ok(Auditor { config, files: Mutex::new(files), journal, journal_missed: AtomicU64::new(0) })
    }

    /// Writes one record to every sink. An error names the file sink that
    /// failed; with `audit_failure = "continue"` it is logged instead.
    pub fn write(&self, record: &Record) -> Result<(), String> {
        let at = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let result = self.write_files(record, &at);
        if let Some(output) = &self.journal {
            if output.sink() != crate::journal::Sink::Journal || !output.own(record.journal_entry(&at)) {
                self.journal_missed.fetch_add(1, Ordering::Relaxed);
            }
        }
        match result {
            Err(e) if self.config.continue_on_failure => {
                tracing::error!("AUDIT RECORD LOST, command allowed anyway (audit_failure = \"continue\"): {e}");
                Ok(())
            }
            other => other,
        }
    }

    fn write_files(&self, record: &Record, at: &str) -> Result<(), String> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let files = &mut *files;
        if let Some(text) = &mut files.text {
            text.append(&record.text_line(at), self.config.sync)?;
        }
        if let Some(json) = &mut files.json {
            let line = chain::link(record.json(at), &files.last_hash);
            json.append(&line, self.config.sync)?;
            files.last_hash = chain::hash(&line);
        }
        Ok(())
    }

    /// Reopens the files at their configured paths (after logrotate moved
    /// them). A new JSON file starts with an anchor linking to the last
    /// record of the old one.
    pub fn reopen(&self) -> Result<(), String> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.config.text_target {
            files.text = Some(
                FileSink::open("audit_logs_target", path)
                    .map_err(|e| format!("audit_logs_target: cannot reopen {}: {e}", path.display()))?,
            );
        }
        if let Some(path) = &self.config.json_target {
            let mut json = FileSink::open("audit_logs_json_target", path)
                .map_err(|e| format!("audit_logs_json_target: cannot reopen {}: {e}", path.display()))?;
            match chain::last_line_hash(path).map_err(|e| format!("audit_logs_json_target: {e}"))? {
                Some(hash) => files.last_hash = hash,
                None => {
                    let at = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                    let anchor = chain::anchor(&at, &files.last_hash, "reopened");
                    json.append(&anchor, self.config.sync)?;
                    files.last_hash = chain::hash(&anchor);
                }
            }
            files.json = Some(json);
        }
        Ok(())
    }

    /// Records the journal did not get (no journal, or its queue full).
    pub fn journal_missed(&self) -> u64 {
        self.journal_missed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitise::{sanitise, sanitise_bytes};
    use proptest::prelude::*;

    /// Text built from the characters that break logs and terminals, mixed
    /// with ordinary ones.
    fn hostile() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "\t",
            "\n",
            "\r",
            "\r\n",
            "\u{1b}[2J",
            "\u{1b}]0;title\u{7}",
            "\u{9b}31m",
            "\u{202e}",
            "\u{2066}",
            "\u{200f}",
            "\u{0}",
            "\u{7f}",
            "\u{85}",
            "\\",
            " ",
            "]",
            "[",
            "=",
            "\"",
            "web",
            "ü",
            "漢",
        ]);
        prop::collection::vec(pieces, 0..12).prop_map(|p| p.concat())
    }

    fn record(group: String, worker: String, args: Vec<String>, user: String, comm: String, reason: String) -> Record {
        Record {
            session: 7,
            request_id: 42,
            group: Some(group),
            worker: Some(worker),
            command: "Stop".into(),
            arguments: args,
            actor: Actor { uid: 1000, gid: 1000, pid: Some(4242), user: Some(user), comm: Some(comm) },
            socket: "/run/corral/corrald.sock".into(),
            result: Outcome::Denied,
            reason,
        }
    }

    proptest! {
        #[test]
        fn hostile_text_never_breaks_a_record(
            group in hostile(), worker in hostile(), args in prop::collection::vec(hostile(), 0..4),
            user in hostile(), comm in hostile(), reason in hostile(),
            raw in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut args = args;
            args.push(sanitise_bytes(&raw));
            let r = record(group.clone(), worker, args.clone(), user.clone(), comm, reason.clone());
            let line = r.text_line("2026-11-23T12:00:00.000000Z");
            prop_assert!(!line.contains(['\n', '\r', '\u{1b}', '\u{9b}', '\u{202e}', '\u{0}']), "{line:?}");
            prop_assert_eq!(line.split('\t').count(), 12, "{:?}", line);
            let slots = line.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(s, _)| s.split(' ').count());
            prop_assert_eq!(slots, Some(4), "{:?}", line);

            let json = chain::link(r.json("2026-11-23T12:00:00.000000Z"), chain::GENESIS);
            prop_assert!(!json.contains('\n'));
            let back: serde_json::Value = serde_json::from_str(&json).unwrap();
            let (reason, group, user) = (sanitise(&reason), sanitise(&group), sanitise(&user));
            prop_assert_eq!(back["reason"].as_str(), Some(reason.as_str()));
            prop_assert_eq!(back["group"].as_str(), Some(group.as_str()));
            prop_assert_eq!(back["actor"]["user"].as_str(), Some(user.as_str()));
            let sent_args: Vec<String> = args.iter().map(|a| sanitise(a)).collect();
            prop_assert_eq!(back["arguments"].as_array().unwrap().len(), sent_args.len());
            for (got, want) in back["arguments"].as_array().unwrap().iter().zip(&sent_args) {
                prop_assert_eq!(got.as_str(), Some(want.as_str()));
            }
        }
    }
}
