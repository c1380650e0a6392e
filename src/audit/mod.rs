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

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

/// What `max_audit_argument` is unless the config says otherwise: bytes
/// kept of each argument's value.
pub const DEFAULT_MAX_ARGUMENT: usize = 256;

/// Arguments a record keeps; the rest are counted.
pub const MAX_ARGUMENTS: usize = 32;

/// Bytes kept of the command, group, worker, socket and the actor's user
/// and process names. Group names and worker ids are far shorter; only a
/// request naming something that does not exist can reach this.
pub const MAX_FIELD: usize = 256;

/// Bytes kept of the reason: room for a long answer (a reload listing many
/// groups), not for one that echoes a huge request.
pub const MAX_REASON: usize = 2048;

/// An argument's name (what precedes its first `=`) is kept whole when it is
/// at most this long; otherwise the whole argument counts as its value.
const MAX_ARGUMENT_NAME: usize = 64;

/// The most bytes one rendered record takes, as a text line or a JSON line
/// with its chain link, however large the request behind it was
/// (docs/audit-schema.md). Worst case: every kept byte a control character,
/// which the sanitiser turns into four (`\x01`) and JSON into five.
pub fn max_record_len(max_argument: usize) -> usize {
    40 * 1024 + 160 * max_argument
}

/// Starts every marker the record itself adds: the escape of U+2026 (`…`),
/// which the sanitiser never produces since it leaves that character alone,
/// so no caller can forge a marker.
const MARKER: &str = "\\u{2026}";

/// `text` sanitised; over `max` bytes, cut at a character boundary and
/// marked with the full length and digest, so whoever holds the value can
/// tell it is the one that was sent.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return sanitise(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{MARKER}[truncated: {} bytes, sha256 {}]", sanitise(&text[..cut]), text.len(), chain::hash(text))
}

/// A `name=value` argument with its value bounded.
fn bounded_argument(argument: &str, max_value: usize) -> String {
    let name_end = argument.bytes().take(MAX_ARGUMENT_NAME + 1).position(|b| b == b'=').map_or(0, |i| i + 1);
    let (name, value) = argument.split_at(name_end);
    sanitise(name) + &bounded(value, max_value)
}

fn or_dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

/// A record as every sink shows it: each field a caller can influence
/// sanitised and bounded. Text, JSON and journal all render from this, so
/// none can show more, or less, than the others.
pub struct Shown<'a> {
    record: &'a Record,
    group: Option<String>,
    worker: Option<String>,
    command: String,
    arguments: Vec<String>,
    user: Option<String>,
    comm: Option<String>,
    socket: String,
    reason: String,
}

impl Record {
    /// Keeps at most `max_argument` bytes of each argument's value and
    /// [`MAX_ARGUMENTS`] arguments, [`MAX_FIELD`] bytes of the other names
    /// and [`MAX_REASON`] of the reason.
    pub fn shown(&self, max_argument: usize) -> Shown<'_> {
        let field = |v: &str| bounded(v, MAX_FIELD);
        let mut arguments: Vec<String> =
            self.arguments.iter().take(MAX_ARGUMENTS).map(|a| bounded_argument(a, max_argument)).collect();
        if self.arguments.len() > MAX_ARGUMENTS {
            arguments.push(format!("{MARKER}[{} more arguments]", self.arguments.len() - MAX_ARGUMENTS));
        }
        Shown {
            record: self,
            group: self.group.as_deref().map(field),
            worker: self.worker.as_deref().map(field),
            command: field(&self.command),
            arguments,
            user: self.actor.user.as_deref().map(field),
            comm: self.actor.comm.as_deref().map(field),
            socket: field(&self.socket),
            reason: bounded(&self.reason, MAX_REASON),
        }
    }
}

impl Shown<'_> {
    /// The text layout: `[session req group worker]\tAUDIT\tCommand(args)`
    /// then `key=value` fields, tab separated, always the same fields
    /// (`-` when absent). Inside the brackets spaces and brackets are
    /// escaped too, so the four slots stay four.
    pub fn text_line(&self, at: &str) -> String {
        let slot = |v: &Option<String>| {
            or_dash(v.as_deref()).replace(' ', "\\x20").replace('[', "\\x5b").replace(']', "\\x5d")
        };
        let r = self.record;
        let pid = r.actor.pid.map(|p| p.to_string());
        format!(
            "[{} {} {} {}]\tAUDIT\t{}({})\tat={at}\tactor_uid={}\tactor_gid={}\tactor_pid={}\tactor_user={}\tactor_comm={}\tsocket={}\tresult={}\treason={}",
            r.session,
            r.request_id,
            slot(&self.group),
            slot(&self.worker),
            self.command,
            self.arguments.join(", "),
            r.actor.uid,
            r.actor.gid,
            or_dash(pid.as_deref()),
            or_dash(self.user.as_deref()),
            or_dash(self.comm.as_deref()),
            or_dash(Some(&self.socket)),
            r.result.name(),
            or_dash(Some(&self.reason)),
        )
    }

    /// The JSON object (docs/audit-schema.md), without the chain link.
    pub fn json(&self, at: &str) -> serde_json::Value {
        let r = self.record;
        json!({
            "schema_version": SCHEMA_VERSION,
            "record": "audit",
            "timestamp": at,
            "session": r.session,
            "request_id": r.request_id,
            "group": self.group,
            "worker": self.worker,
            "command": self.command,
            "arguments": self.arguments,
            "actor": {
                "uid": r.actor.uid,
                "gid": r.actor.gid,
                "pid": r.actor.pid,
                "user": self.user,
                "comm": self.comm,
            },
            "socket": self.socket,
            "result": r.result.name(),
            "reason": self.reason,
        })
    }

    fn journal_entry(&self, at: &str) -> Entry {
        let r = self.record;
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut fields = vec![
            ("MESSAGE_ID", MESSAGE_ID.to_string()),
            ("CORRAL_AUDIT_TIMESTAMP", at.to_string()),
            ("CORRAL_AUDIT_SESSION", r.session.to_string()),
            ("CORRAL_AUDIT_REQUEST_ID", r.request_id.to_string()),
            ("CORRAL_AUDIT_COMMAND", self.command.clone()),
            ("CORRAL_AUDIT_ARGUMENTS", self.arguments.join(", ")),
            ("CORRAL_AUDIT_ACTOR_UID", r.actor.uid.to_string()),
            ("CORRAL_AUDIT_ACTOR_GID", r.actor.gid.to_string()),
            ("CORRAL_AUDIT_SOCKET", self.socket.clone()),
            ("CORRAL_AUDIT_RESULT", r.result.name().to_string()),
            ("CORRAL_AUDIT_REASON", self.reason.clone()),
        ];
        let optional = [
            ("CORRAL_AUDIT_GROUP", opt(&self.group)),
            ("CORRAL_AUDIT_WORKER", opt(&self.worker)),
            ("CORRAL_AUDIT_ACTOR_PID", r.actor.pid.map(|p| p.to_string()).unwrap_or_default()),
            ("CORRAL_AUDIT_ACTOR_USER", opt(&self.user)),
            ("CORRAL_AUDIT_ACTOR_COMM", opt(&self.comm)),
        ];
        fields.extend(optional.into_iter().filter(|(_, v)| !v.is_empty()));
        Entry {
            priority: r.result.priority(),
            message: self.text_line(at).replace('\t', " ").into_bytes(),
            source: Source::Corrald(fields),
        }
    }
}

/// Where records go and what a failure to write them means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub text_target: Option<PathBuf>,
    pub json_target: Option<PathBuf>,
    pub journal: bool,
    /// fdatasync each record before the command runs.
    pub sync: bool,
    /// Log a sink failure and let the command run anyway.
    pub continue_on_failure: bool,
    /// Bytes kept of each argument's value (see [`Record::shown`]).
    pub max_argument: usize,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            text_target: None,
            json_target: None,
            journal: false,
            sync: false,
            continue_on_failure: false,
            max_argument: DEFAULT_MAX_ARGUMENT,
        }
    }
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
        let file = OpenOptions::new().append(true).create(true).mode(0o640).open(path)?;
        // The umask may have narrowed a new file; never touch the mode of
        // something that is not a plain file (a FIFO, /dev/...).
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
        let shown = record.shown(self.config.max_argument);
        let result = self.write_files(&shown, &at);
        if let Some(output) = &self.journal {
            if output.sink() != crate::journal::Sink::Journal || !output.own(shown.journal_entry(&at)) {
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

    fn write_files(&self, record: &Shown, at: &str) -> Result<(), String> {
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

    const AT: &str = "2026-11-23T12:00:00.000000Z";

    /// Pieces of text that break logs and terminals, hide in them, or try to
    /// pass for what the record adds itself, mixed with ordinary ones.
    const PIECES: &[&str] = &[
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
        "\u{2028}",
        "\u{2029}",
        "\u{200b}",
        "\u{200c}",
        "\u{200d}",
        "\u{2060}",
        "\u{feff}",
        "\u{180e}",
        "\u{ad}",
        "\u{e0041}",
        "\u{fe0f}",
        "\u{a0}",
        "\u{3000}",
        "\u{0}",
        "\u{7f}",
        "\u{85}",
        "\\",
        "\\u{2026}[truncated: 9 bytes, sha256 00]",
        "…",
        " ",
        "]",
        "[",
        "=",
        "\"",
        "web",
        "ü",
        "漢",
    ];

    /// Characters no rendered record may hold raw.
    const FORBIDDEN: &[char] = &[
        '\n',
        '\r',
        '\u{1b}',
        '\u{9b}',
        '\u{202e}',
        '\u{0}',
        '\u{85}',
        '\u{2028}',
        '\u{2029}',
        '\u{200b}',
        '\u{200d}',
        '\u{2060}',
        '\u{feff}',
        '\u{180e}',
        '\u{ad}',
        '\u{e0041}',
        '\u{fe0f}',
        '\u{a0}',
        '\u{3000}',
    ];

    fn hostile() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..12).prop_map(|p| p.concat())
    }

    /// Mostly short text, now and then one piece repeated into hundreds of
    /// kilobytes.
    fn huge() -> impl Strategy<Value = String> {
        prop_oneof![
            7 => hostile(),
            1 => (prop::sample::select(PIECES), 0..60_000usize).prop_map(|(p, n)| p.repeat(n)),
        ]
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

    /// The text line's layout holds: one line, twelve fields, four slots.
    fn check_layout(line: &str) -> Result<(), TestCaseError> {
        prop_assert!(!line.contains(FORBIDDEN), "{line:?}");
        prop_assert_eq!(line.split('\t').count(), 12, "{:?}", line);
        let slots = line.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(s, _)| s.split(' ').count());
        prop_assert_eq!(slots, Some(4), "{:?}", line);
        Ok(())
    }

    /// Markers the record added: a `\u{2026}` that is not the tail of an
    /// escaped backslash.
    fn markers(text: &str) -> usize {
        let mut count = 0;
        let mut rest = text;
        while let Some(at) = rest.find('\\') {
            rest = &rest[at..];
            if rest.starts_with(MARKER) {
                count += 1;
            }
            rest = rest.get(2..).unwrap_or_default();
        }
        count
    }

    fn journal_len(entry: &Entry) -> usize {
        let Source::Corrald(fields) = &entry.source else { panic!("an audit entry is corrald's own") };
        entry.message.len() + fields.iter().map(|(k, v)| k.len() + 1 + v.len()).sum::<usize>()
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
            let shown = r.shown(DEFAULT_MAX_ARGUMENT);
            let line = shown.text_line(AT);
            check_layout(&line)?;
            // Nothing here is long enough to be cut, so a marker could only
            // be forged.
            prop_assert_eq!(markers(&line), 0, "{:?}", line);

            let json = chain::link(shown.json(AT), chain::GENESIS);
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn a_record_stays_bounded_however_large_its_request(
            group in huge(), worker in huge(), command in huge(), args in prop::collection::vec(huge(), 0..48),
            user in huge(), comm in huge(), socket in huge(), reason in huge(),
            max_argument in prop::sample::select(vec![0usize, 1, 7, DEFAULT_MAX_ARGUMENT, 4096]),
        ) {
            let mut r = record(group, worker, args, user, comm, reason);
            r.command = command;
            r.socket = socket;
            let shown = r.shown(max_argument);
            let bound = max_record_len(max_argument);
            let line = shown.text_line(AT);
            check_layout(&line)?;
            prop_assert!(line.len() <= bound, "text: {} > {bound}", line.len());
            let json = chain::link(shown.json(AT), chain::GENESIS);
            prop_assert!(json.len() <= bound, "JSON: {} > {bound}", json.len());
            let journal = journal_len(&shown.journal_entry(AT));
            prop_assert!(journal <= 2 * bound, "journal: {journal} > 2 * {bound}");
        }
    }

    #[test]
    fn the_worst_record_is_within_the_stated_bound() {
        // Every kept byte a control character, every field and argument
        // just past its limit, and a length that takes twenty digits.
        let control = |n: usize| "\u{1}".repeat(n + 1);
        let mut r = record(
            control(MAX_FIELD),
            control(MAX_FIELD),
            vec![format!("{}={}", control(MAX_ARGUMENT_NAME - 1), control(DEFAULT_MAX_ARGUMENT)); 40],
            control(MAX_FIELD),
            control(MAX_FIELD),
            control(MAX_REASON),
        );
        r.command = control(MAX_FIELD);
        r.socket = control(MAX_FIELD);
        r.session = u64::MAX;
        r.request_id = u64::MAX;
        r.actor = Actor { uid: u32::MAX, gid: u32::MAX, pid: Some(u32::MAX), ..r.actor };
        let shown = r.shown(DEFAULT_MAX_ARGUMENT);
        let bound = max_record_len(DEFAULT_MAX_ARGUMENT);
        let (text, json) = (shown.text_line(AT), chain::link(shown.json(AT), chain::GENESIS));
        assert!(text.len() <= bound && json.len() <= bound, "text {}, JSON {}, bound {bound}", text.len(), json.len());
        // The bound is not loose by much: the JSON of the worst case fills
        // most of it.
        assert!(json.len() > bound * 3 / 4, "JSON {} of {bound}", json.len());
        assert!(journal_len(&shown.journal_entry(AT)) <= 2 * bound);
    }

    #[test]
    fn a_long_value_is_cut_at_a_character_and_marked_with_its_length_and_digest() {
        let value = "a".repeat(1024 * 1024);
        let mut r = record(
            "web".into(),
            "web-1".into(),
            vec![format!("target={value}"), "hard=false".into()],
            "root".into(),
            "corralctl".into(),
            String::new(),
        );
        let shown = r.shown(DEFAULT_MAX_ARGUMENT);
        let want = format!(
            "target={}\\u{{2026}}[truncated: 1048576 bytes, sha256 {}]",
            "a".repeat(DEFAULT_MAX_ARGUMENT),
            chain::hash(&value)
        );
        assert_eq!(shown.arguments, [want.as_str(), "hard=false"]);

        // 'é' is two bytes: a cut inside it keeps the whole character out.
        r.arguments = vec!["target=aé".into()];
        assert_eq!(
            r.shown(2).arguments[0],
            format!("target=a\\u{{2026}}[truncated: 3 bytes, sha256 {}]", chain::hash("aé"))
        );
        // A name longer than names are counts as value.
        r.arguments = vec![format!("{}=x", "n".repeat(100))];
        assert!(
            r.shown(8).arguments[0].starts_with("nnnnnnnn\\u{2026}[truncated: 102 bytes,"),
            "{:?}",
            r.shown(8).arguments
        );
        // A value that only looks cut shows its backslash doubled.
        r.arguments = vec!["target=web\\u{2026}[truncated: 9 bytes, sha256 00]".into()];
        assert_eq!(r.shown(DEFAULT_MAX_ARGUMENT).arguments[0], "target=web\\\\u{2026}[truncated: 9 bytes, sha256 00]");
    }

    #[test]
    fn arguments_past_the_limit_are_counted_and_other_fields_cut() {
        let args = (0..40).map(|i| format!("MemoryMax={i}M")).collect();
        let mut r = record("g".repeat(5000), "web-1".into(), args, "root".into(), "corralctl".into(), "x".repeat(9000));
        r.worker = None;
        let shown = r.shown(DEFAULT_MAX_ARGUMENT);
        assert_eq!(shown.arguments.len(), MAX_ARGUMENTS + 1);
        assert_eq!(shown.arguments[MAX_ARGUMENTS - 1], "MemoryMax=31M");
        assert_eq!(shown.arguments[MAX_ARGUMENTS], "\\u{2026}[8 more arguments]");
        let group = shown.group.as_deref().unwrap();
        assert!(
            group.starts_with(&"g".repeat(MAX_FIELD)) && group.contains("[truncated: 5000 bytes, sha256 "),
            "{group}"
        );
        assert!(shown.reason.starts_with(&"x".repeat(MAX_REASON)) && shown.reason.contains("[truncated: 9000 bytes"));
        assert_eq!(shown.worker, None);
        let line = shown.text_line(AT);
        check_layout(&line).unwrap();
        assert!(line.contains("\\u{2026}\\x5btruncated:\\x205000\\x20bytes,\\x20sha256\\x20"), "{line}");
    }

    #[test]
    fn a_megabyte_request_writes_a_bounded_trail() {
        let dir = tempfile::tempdir().unwrap();
        let (text, json) = (dir.path().join("audit.log"), dir.path().join("audit.jsonl"));
        let config =
            AuditConfig { text_target: Some(text.clone()), json_target: Some(json.clone()), ..Default::default() };
        assert_eq!(config.max_argument, DEFAULT_MAX_ARGUMENT);
        let auditor = Auditor::open(config, None).unwrap();
        // As the command socket describes `Stop` with a 1 MB target.
        let target = "\u{1}".repeat(1024 * 1024);
        let r = record(
            target.clone(),
            target.clone(),
            vec![format!("target={target}"), "hard=false".into()],
            "root".into(),
            "corralctl".into(),
            format!("no group named {target:?}"),
        );
        auditor.write(&r).unwrap();
        let written = std::fs::metadata(&text).unwrap().len() + std::fs::metadata(&json).unwrap().len();
        assert!(written <= 2 * max_record_len(DEFAULT_MAX_ARGUMENT) as u64, "{written} bytes for one record");
        assert_eq!(chain::verify(&json), Ok(1));
    }
}
