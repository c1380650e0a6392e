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
//! The journal gets the record before the command is let through too, and a
//! journald that is slow to take it slows the commands down rather than
//! lose it; only what an absent or failing journal misses is lost, and
//! counted ([`journal`]).
//!
//! One thread writes every record, in batches: see [`Auditor`].

mod append;
pub mod chain;
pub mod journal;

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::config::AuditConfig;
use crate::sanitise::sanitise;
use append::Appender;
use journal::Journal;

/// The version of the JSON record layout (docs/audit-schema.md).
pub const SCHEMA_VERSION: u32 = 2;

/// The journal `MESSAGE_ID` of every audit record (see
/// packaging/corral-audit.catalog).
pub const MESSAGE_ID: &str = "b3891562deb34c898eedc0ab0982389d";

/// Who sent a request: a client of the command socket, from the socket's
/// peer credentials, or systemd, from what the bus says of the sender of a
/// scope's `RequestStop`. A field that could not be established for
/// certain is `None`, never a guess.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<u32>,
    pub user: Option<String>,
    pub comm: Option<String>,
    /// The sender's unique name on the bus (systemd's).
    pub bus_name: Option<String>,
}

/// Where a request came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActorKind {
    /// A client of the command socket.
    #[default]
    Client,
    /// systemd: `systemctl stop` of one of corral's scopes, or of the slice
    /// that holds them, reaches corrald as the scope's `RequestStop`.
    Systemd,
    /// corrald itself: the restart of a worker its pings found hung or its
    /// liveness probe unhealthy.
    Corrald,
}

impl ActorKind {
    pub fn name(self) -> &'static str {
        match self {
            ActorKind::Client => "client",
            ActorKind::Systemd => "systemd",
            ActorKind::Corrald => "corrald",
        }
    }
}

/// A record's `result`: where the audited request stands. A request that
/// runs has two records, `accepted` before and `ok` or `failed` after; a
/// refused one has one, `denied`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordResult {
    /// Allowed and about to run.
    Accepted,
    /// Refused before anything ran.
    Denied,
    /// Ran, and its final answer was OK.
    Ok,
    /// Ran, and its final answer was a failure.
    Failed,
}

impl RecordResult {
    pub fn name(self) -> &'static str {
        match self {
            RecordResult::Accepted => "accepted",
            RecordResult::Denied => "denied",
            RecordResult::Ok => "ok",
            RecordResult::Failed => "failed",
        }
    }

    /// notice for what went as asked, warning for what did not.
    fn priority(self) -> u8 {
        match self {
            RecordResult::Accepted | RecordResult::Ok => 5,
            RecordResult::Denied | RecordResult::Failed => 4,
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
    pub result: RecordResult,
    pub reason: String,
}

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
    bus_name: Option<String>,
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
            bus_name: self.actor.bus_name.as_deref().map(field),
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
        let number = |n: Option<u32>| n.map(|n| n.to_string());
        let (uid, gid, pid) = (number(r.actor.uid), number(r.actor.gid), number(r.actor.pid));
        format!(
            "[{} {} {} {}]\tAUDIT\t{}({})\tat={at}\tactor_kind={}\tactor_uid={}\tactor_gid={}\tactor_pid={}\tactor_user={}\tactor_comm={}\tactor_bus_name={}\tsocket={}\tresult={}\treason={}",
            r.session,
            r.request_id,
            slot(&self.group),
            slot(&self.worker),
            self.command,
            self.arguments.join(", "),
            r.actor.kind.name(),
            or_dash(uid.as_deref()),
            or_dash(gid.as_deref()),
            or_dash(pid.as_deref()),
            or_dash(self.user.as_deref()),
            or_dash(self.comm.as_deref()),
            or_dash(self.bus_name.as_deref()),
            or_dash(Some(&self.socket)),
            r.result.name(),
            or_dash(Some(&self.reason)),
        )
    }

    /// The JSON line (docs/audit-schema.md) with its link to the line
    /// before, whose hash is `prev`. Serialised straight from the fields
    /// (no intermediate map), keys in the order a map would sort them, so
    /// the line is the one [`Shown::json`] and [`chain::link`] give.
    pub fn json_line(&self, at: &str, prev: &str) -> String {
        let r = self.record;
        let line = JsonLine {
            actor: JsonActor {
                bus_name: self.bus_name.as_deref(),
                comm: self.comm.as_deref(),
                gid: r.actor.gid,
                kind: r.actor.kind.name(),
                pid: r.actor.pid,
                uid: r.actor.uid,
                user: self.user.as_deref(),
            },
            arguments: &self.arguments,
            command: &self.command,
            group: self.group.as_deref(),
            prev_sha256: prev,
            reason: &self.reason,
            record: "audit",
            request_id: r.request_id,
            result: r.result.name(),
            schema_version: SCHEMA_VERSION,
            session: r.session,
            socket: &self.socket,
            timestamp: at,
            worker: self.worker.as_deref(),
        };
        serde_json::to_string(&line).expect("a record always serialises")
    }

    /// The JSON object without the chain link, as the schema describes it:
    /// the reference the writer's [`Shown::json_line`] is checked against.
    #[cfg(test)]
    pub fn json(&self, at: &str) -> serde_json::Value {
        let r = self.record;
        serde_json::json!({
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
                "kind": r.actor.kind.name(),
                "uid": r.actor.uid,
                "gid": r.actor.gid,
                "pid": r.actor.pid,
                "user": self.user,
                "comm": self.comm,
                "bus_name": self.bus_name,
            },
            "socket": self.socket,
            "result": r.result.name(),
            "reason": self.reason,
        })
    }

    /// The record as one native-protocol journal entry: the fields every
    /// record has, then those it has a value for.
    fn journal_entry(&self, at: &str) -> Vec<u8> {
        let r = self.record;
        let always = [
            ("PRIORITY", r.result.priority().to_string()),
            ("MESSAGE", self.text_line(at).replace('\t', " ")),
            ("SYSLOG_IDENTIFIER", "corrald".to_string()),
            ("MESSAGE_ID", MESSAGE_ID.to_string()),
            ("CORRAL_AUDIT_TIMESTAMP", at.to_string()),
            ("CORRAL_AUDIT_SESSION", r.session.to_string()),
            ("CORRAL_AUDIT_REQUEST_ID", r.request_id.to_string()),
            ("CORRAL_AUDIT_COMMAND", self.command.clone()),
            ("CORRAL_AUDIT_ARGUMENTS", self.arguments.join(", ")),
            ("CORRAL_AUDIT_ACTOR_KIND", r.actor.kind.name().to_string()),
            ("CORRAL_AUDIT_SOCKET", self.socket.clone()),
            ("CORRAL_AUDIT_RESULT", r.result.name().to_string()),
            ("CORRAL_AUDIT_REASON", self.reason.clone()),
        ];
        let optional = [
            ("CORRAL_AUDIT_GROUP", self.group.clone()),
            ("CORRAL_AUDIT_WORKER", self.worker.clone()),
            ("CORRAL_AUDIT_ACTOR_UID", r.actor.uid.map(|u| u.to_string())),
            ("CORRAL_AUDIT_ACTOR_GID", r.actor.gid.map(|g| g.to_string())),
            ("CORRAL_AUDIT_ACTOR_PID", r.actor.pid.map(|p| p.to_string())),
            ("CORRAL_AUDIT_ACTOR_USER", self.user.clone()),
            ("CORRAL_AUDIT_ACTOR_COMM", self.comm.clone()),
            ("CORRAL_AUDIT_ACTOR_BUS_NAME", self.bus_name.clone()),
        ];
        let present = optional.into_iter().filter_map(|(k, v)| Some((k, v.filter(|v| !v.is_empty())?)));
        let mut entry = Vec::new();
        for (name, value) in always.into_iter().chain(present) {
            crate::journal::field(&mut entry, name, value.as_bytes());
        }
        entry
    }
}

/// A JSON record's fields in sorted order (see [`Shown::json_line`]).
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    actor: JsonActor<'a>,
    arguments: &'a [String],
    command: &'a str,
    group: Option<&'a str>,
    prev_sha256: &'a str,
    reason: &'a str,
    record: &'static str,
    request_id: u64,
    result: &'static str,
    schema_version: u32,
    session: u64,
    socket: &'a str,
    timestamp: &'a str,
    worker: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct JsonActor<'a> {
    bus_name: Option<&'a str>,
    comm: Option<&'a str>,
    gid: Option<u32>,
    kind: &'static str,
    pid: Option<u32>,
    uid: Option<u32>,
    user: Option<&'a str>,
}

/// An append-only audit file: created 0640 (and missing directories
/// 0750), whatever the umask. Each batch is in it whole or not at all
/// ([`append`]).
struct FileSink {
    key: &'static str,
    path: PathBuf,
    out: Appender<File>,
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
        if meta.is_file() {
            let whole = append::whole_length(&file)?;
            if whole < meta.len() {
                file.set_len(whole)?;
                tracing::warn!(
                    "the audit log {} ({key}) ended in a torn record, {} bytes after its last whole line (a write \
                     cut off part way); cut it off so that the next record starts on a line of its own",
                    path.display(),
                    meta.len() - whole
                );
            }
        }
        Ok(FileSink { key, path: path.to_path_buf(), out: Appender::new(file) })
    }

    fn failed(&self, e: io::Error) -> String {
        format!("cannot write the audit log {} ({}): {e}", self.path.display(), self.key)
    }

    /// Writes whole lines (each ending in a newline); after a failure the
    /// file holds nothing of the batch.
    fn write(&mut self, lines: &[u8]) -> Result<(), String> {
        self.out.append(lines).map_err(|e| self.failed(e))
    }

    fn sync(&mut self) -> Result<(), String> {
        self.out.file.sync_data().map_err(|e| self.failed(e))
    }

    /// Takes the batch back out of the file.
    fn take_back(&mut self) -> Result<(), String> {
        self.out.undo().map_err(|e| {
            format!(
                "cannot take refused records back out of the audit log {} ({}): {e}; nothing more is written to \
                 it until that succeeds",
                self.path.display(),
                self.key
            )
        })
    }

    /// Adds the outcomes of a refused batch the file took: written and
    /// synced, or else the batch is taken back out.
    fn add_outcomes(&mut self, lines: &[u8], sync: bool) -> Result<(), String> {
        self.write(lines)?;
        if sync {
            if let Err(e) = self.sync() {
                return Err(match self.take_back() {
                    Ok(()) => e,
                    Err(cut) => format!("{e}; {cut}"),
                });
            }
        }
        Ok(())
    }

    /// One line, synced with `sync`: the anchors, outside any batch.
    fn append(&mut self, line: &str, sync: bool) -> Result<(), String> {
        self.out.begin();
        self.write(format!("{line}\n").as_bytes())?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }
}

/// A file to sync, and where its first failure goes.
type ToSync<'a> = (&'a mut Option<FileSink>, &'a mut Option<String>);

fn sync_one((sink, error): ToSync) {
    if let (Some(sink), None) = (sink, &error) {
        *error = sink.sync().err();
    }
}

/// Syncs both files at once: the file system can commit the two in one
/// journal transaction, and a batch waits for one sync, not two in a row.
/// The text file is synced through a duplicate of its descriptor on a
/// short-lived thread; without one, the two are synced in turn.
fn sync_both(text: ToSync, json: ToSync) {
    let duplicate = match (&text, &json) {
        ((Some(t), None), (Some(_), None)) => t.out.file.try_clone().ok(),
        _ => None,
    };
    let helper = duplicate.and_then(|file| {
        std::thread::Builder::new().name("corral-audit-sync".into()).spawn(move || file.sync_data()).ok()
    });
    let Some(helper) = helper else {
        sync_one(text);
        sync_one(json);
        return;
    };
    sync_one(json);
    let synced = helper.join().unwrap_or_else(|_| Err(io::Error::other("the sync thread failed")));
    if let (Some(sink), Err(e)) = (text.0, synced) {
        *text.1 = Some(sink.failed(e));
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

/// Records that may wait for the audit writer at once; a command whose
/// record finds the queue full waits (without holding a runtime thread)
/// for room. Each connection has at most two records on their way (its
/// request's, and an earlier request's outcome), so `limits.max_connections`
/// bounds the queue well before this does.
pub const QUEUE: usize = 1024;

/// Bytes of rendered lines held before they are written out; one sync still
/// covers the whole batch.
const WRITE_CHUNK: usize = 1 << 20;

/// Requests whose fields hold more than this many bytes are rendered on a
/// blocking thread: their record is bounded, but digesting what was cut
/// reads all of it.
const RENDER_INLINE: usize = 64 * 1024;

type Done = oneshot::Sender<Result<(), String>>;

enum Job {
    Write(Rendered, oneshot::Sender<Written>),
    Reopen(Done),
}

/// A batch's answer to one of its commands, with the record's buffers
/// handed back: the thread that allocated them frees them, which glibc's
/// allocator does without taking another thread's arena lock.
struct Written {
    result: Result<(), String>,
    _rendered: Rendered,
}

/// A record as each configured sink takes it, rendered by the caller, so
/// the writer thread only links, writes and syncs.
struct Rendered {
    text: Option<String>,
    json: Option<chain::Unlinked>,
    journal: Option<Vec<u8>>,
    /// An `accepted` record itself, for the `failed` outcome the writer
    /// adds if its command is refused.
    accepted: Option<Box<Record>>,
}

/// Which sinks a record is rendered for.
#[derive(Clone, Copy)]
struct Sinks {
    text: bool,
    json: bool,
    journal: bool,
    max_argument: usize,
}

impl Sinks {
    fn render(self, record: &Record) -> Rendered {
        let at = now();
        let shown = record.shown(self.max_argument);
        Rendered {
            text: self.text.then(|| shown.text_line(&at) + "\n"),
            json: self.json.then(|| chain::Unlinked::new(shown.json_line(&at, chain::GENESIS))),
            journal: self.journal.then(|| shown.journal_entry(&at)),
            accepted: None,
        }
    }

    /// Renders `record`, keeping it along if it is an `accepted` one.
    fn render_owned(self, record: Record) -> Rendered {
        let mut rendered = self.render(&record);
        if record.result == RecordResult::Accepted {
            rendered.accepted = Some(Box::new(record));
        }
        rendered
    }
}

/// The answer to a privileged request whose record could not be written.
pub fn refusal(error: &str) -> String {
    format!("refused, nothing was done: the audit record could not be written: {error}")
}

impl Record {
    /// Bytes of the fields a caller controls, before any bound.
    fn raw_len(&self) -> usize {
        let optional = [&self.group, &self.worker, &self.actor.user, &self.actor.comm, &self.actor.bus_name];
        self.command.len()
            + self.socket.len()
            + self.reason.len()
            + self.arguments.iter().map(String::len).sum::<usize>()
            + optional.iter().filter_map(|v| v.as_ref()).map(String::len).sum::<usize>()
    }
}

/// The audit trail. One thread, `corral-audit`, writes every record:
/// whatever queued while it wrote and synced the last batch goes out as the
/// next, with one write and one fdatasync per file, and each command waits
/// for the sync that covers its record (group commit).
pub struct Auditor {
    sinks: Sinks,
    jobs: mpsc::Sender<Job>,
    journal_missed: Arc<AtomicU64>,
}

impl Auditor {
    /// Opens the configured files and starts the writer; an unusable path
    /// is an error naming its config key.
    pub fn open(config: AuditConfig) -> Result<Auditor, String> {
        let journal_missed = Arc::new(AtomicU64::new(0));
        let sinks = Sinks {
            text: config.text_target.is_some(),
            json: config.json_target.is_some(),
            journal: config.journal,
            max_argument: config.max_argument,
        };
        let mut writer = Writer {
            sinks,
            config,
            text: None,
            json: None,
            last_hash: chain::GENESIS.to_string(),
            journal: None,
            journal_missed: journal_missed.clone(),
            batch: Batch::default(),
        };
        writer.open_files(Opening::Start)?;
        writer.journal = writer.config.journal.then(Journal::system);
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("corral-audit".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Auditor { sinks, jobs, journal_missed })
    }

    /// Writes one record to every sink, and returns once it is written (and
    /// with `audit_sync`, synced). An error names the file sink that failed;
    /// with `audit_failure = "continue"` it is logged instead. An
    /// `accepted` record that fails is followed by a `failed` one, with
    /// [`refusal`] as its reason, in every sink that took it.
    pub async fn write(&self, record: Record) -> Result<(), String> {
        let result = record.result.name();
        let written = self.write_record(record).await;
        crate::metrics::count_audit(result, written.is_ok());
        written
    }

    async fn write_record(&self, record: Record) -> Result<(), String> {
        let sinks = self.sinks;
        let rendered = if record.raw_len() <= RENDER_INLINE {
            sinks.render_owned(record)
        } else {
            tokio::task::spawn_blocking(move || sinks.render_owned(record))
                .await
                .map_err(|e| format!("rendering the audit record failed: {e}"))?
        };
        self.ask(|done| Job::Write(rendered, done)).await?.result
    }

    /// Reopens the files at their configured paths (after logrotate moved
    /// them), after every record queued before. A new JSON file starts with
    /// an anchor linking to the last record of the old one.
    pub async fn reopen(&self) -> Result<(), String> {
        self.ask(Job::Reopen).await?
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, String> {
        let (done, answer) = oneshot::channel();
        let gone = || "the audit writer has stopped".to_string();
        self.jobs.send(job(done)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Records the journal did not get (no journal, or it failed).
    pub fn journal_missed(&self) -> u64 {
        self.journal_missed.load(Ordering::Relaxed)
    }
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The `corral-audit` thread: the only place audit files and the audit
/// journal socket are written.
struct Writer {
    sinks: Sinks,
    config: AuditConfig,
    text: Option<FileSink>,
    json: Option<FileSink>,
    /// SHA-256 of the last JSON line written: the next record's link.
    last_hash: String,
    journal: Option<Journal>,
    journal_missed: Arc<AtomicU64>,
    /// Kept from batch to batch for its buffers.
    batch: Batch,
}

/// One batch on its way to the files: rendered lines not yet written, and
/// the first failure of each file.
#[derive(Default)]
struct Batch {
    text: Vec<u8>,
    json: Vec<u8>,
    /// The chain's last link once `json` is written.
    json_hash: String,
    text_error: Option<String>,
    json_error: Option<String>,
}

impl Batch {
    /// Adds a record's lines, its JSON line linked to the one before.
    fn add(&mut self, record: &Rendered) {
        if let Some(line) = &record.text {
            self.text.extend_from_slice(line.as_bytes());
        }
        if let Some(unlinked) = &record.json {
            let start = self.json.len();
            unlinked.link_into(&self.json_hash, &mut self.json);
            self.json_hash = chain::hash(&self.json[start..]);
            self.json.push(b'\n');
        }
    }
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut waiting = Vec::new();
        let mut batch = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            waiting.push(first);
            while let Ok(job) = queue.try_recv() {
                waiting.push(job);
            }
            for job in waiting.drain(..) {
                match job {
                    Job::Write(record, done) => batch.push((record, done)),
                    Job::Reopen(done) => {
                        self.commit(&mut batch);
                        let _ = done.send(self.open_files(Opening::Reopen));
                    }
                }
            }
            self.commit(&mut batch);
        }
    }

    /// Writes the records of a batch in order, syncs each file once, sends
    /// the journal entries, then lets every command of the batch go. A file
    /// that fails gets nothing of the batch (see [`Writer::refuse`]).
    fn commit(&mut self, records: &mut Vec<(Rendered, oneshot::Sender<Written>)>) {
        if records.is_empty() {
            return;
        }
        // Test builds only: a slow disk, so a test can tell a command that
        // waited for its record from one that did not.
        #[cfg(feature = "fault-injection")]
        if let Some(ms) = std::env::var("CORRAL_FAULT_SLOW_AUDIT_MS").ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut batch = std::mem::take(&mut self.batch);
        let chain_start = self.last_hash.clone();
        batch.json_hash.clone_from(&chain_start);
        for sink in [&mut self.text, &mut self.json].into_iter().flatten() {
            sink.out.begin();
        }
        for (record, _) in records.iter() {
            batch.add(record);
            if batch.text.len() + batch.json.len() >= WRITE_CHUNK {
                self.write_out(&mut batch);
            }
        }
        self.write_out(&mut batch);
        if self.config.sync {
            sync_both((&mut self.text, &mut batch.text_error), (&mut self.json, &mut batch.json_error));
        }
        for (sink, error) in [(&mut self.text, &batch.text_error), (&mut self.json, &batch.json_error)] {
            if let (Some(sink), Some(_)) = (sink, error) {
                if let Err(e) = sink.take_back() {
                    tracing::error!("{e}");
                }
            }
        }
        self.last_hash = if batch.json_error.is_none() { batch.json_hash.clone() } else { chain_start };
        let (result, outcomes) = match batch.text_error.clone().or(batch.json_error.clone()) {
            Some(e) if self.config.continue_on_failure => {
                tracing::error!(
                    "AUDIT RECORD LOST: {} records not written, their commands allowed anyway (audit_failure = \"continue\"): {e}",
                    records.len()
                );
                (Ok(()), Vec::new())
            }
            Some(e) => {
                let outcomes = self.refuse(records, &mut batch, &e);
                (Err(e), outcomes)
            }
            None => (Ok(()), Vec::new()),
        };
        if let Some(journal) = &mut self.journal {
            let entries = records.iter().map(|(r, _)| r).chain(&outcomes).filter_map(|r| r.journal.as_ref());
            let missed = entries.filter(|e| !journal.send(e)).count();
            self.journal_missed.fetch_add(missed as u64, Ordering::Relaxed);
            crate::metrics::count_audit_journal_missed(missed as u64);
        }
        batch.text_error = None;
        batch.json_error = None;
        self.batch = batch;
        for (rendered, done) in records.drain(..) {
            let _ = done.send(Written { result: result.clone(), _rendered: rendered });
        }
    }

    /// The batch's commands are refused, for `error`. A file that took the
    /// batch gets a `failed` outcome for each `accepted` record in it, or,
    /// if it cannot take those, nothing of the batch either; a file that
    /// failed has nothing of it already. So wherever a refused command's
    /// acceptance is, its outcome is too. Returns the outcomes, for the
    /// journal.
    fn refuse(
        &mut self,
        records: &mut [(Rendered, oneshot::Sender<Written>)],
        batch: &mut Batch,
        error: &str,
    ) -> Vec<Rendered> {
        let reason = refusal(error);
        let sinks = self.sinks;
        let outcomes: Vec<Rendered> = records
            .iter_mut()
            .filter_map(|(r, _)| r.accepted.as_mut())
            .map(|record| {
                record.result = RecordResult::Failed;
                record.reason.clone_from(&reason);
                sinks.render(record)
            })
            .collect();
        let chain_start = self.last_hash.clone();
        batch.json_hash.clone_from(&chain_start);
        for outcome in &outcomes {
            batch.add(outcome);
        }
        let sync = self.config.sync;
        if let (Some(text), None) = (&mut self.text, &batch.text_error) {
            if let Err(e) = text.add_outcomes(&batch.text, sync) {
                tracing::error!("the refused records were taken back out: {e}");
            }
        }
        if let (Some(json), None) = (&mut self.json, &batch.json_error) {
            match json.add_outcomes(&batch.json, sync) {
                Ok(()) => self.last_hash.clone_from(&batch.json_hash),
                Err(e) => {
                    tracing::error!("the refused records were taken back out: {e}");
                    self.last_hash = chain_start;
                }
            }
        }
        batch.text.clear();
        batch.json.clear();
        outcomes
    }

    /// Writes what the batch holds so far. After a failed write a file gets
    /// nothing more of the batch.
    fn write_out(&mut self, batch: &mut Batch) {
        if let (Some(text), None) = (&mut self.text, &batch.text_error) {
            batch.text_error = text.write(&batch.text).err();
        }
        if let (Some(json), None) = (&mut self.json, &batch.json_error) {
            batch.json_error = json.write(&batch.json).err();
        }
        batch.text.clear();
        batch.json.clear();
    }

    /// Opens the configured files at their paths, at start or again after
    /// logrotate moved them: the one place both happen, so the checks and
    /// errors are the same. A JSON file with no record yet starts with an
    /// anchor linking to the last record written (the genesis at start).
    /// Each file replaces the one before as soon as it is open, so a
    /// failure keeps what was opened before it.
    fn open_files(&mut self, opening: Opening) -> Result<(), String> {
        let (verb, anchor_reason) = match opening {
            Opening::Start => ("open", "new file"),
            Opening::Reopen => ("reopen", "reopened"),
        };
        if let Some(path) = &self.config.text_target {
            self.text = Some(
                FileSink::open("audit_logs_target", path)
                    .map_err(|e| format!("audit_logs_target: cannot {verb} {}: {e}", path.display()))?,
            );
        }
        if let Some(path) = &self.config.json_target {
            let mut json = FileSink::open("audit_logs_json_target", path)
                .map_err(|e| format!("audit_logs_json_target: cannot {verb} {}: {e}", path.display()))?;
            match chain::last_line_hash(path).map_err(|e| format!("audit_logs_json_target: {e}"))? {
                Some(hash) => self.last_hash = hash,
                None => {
                    let anchor = chain::anchor(&now(), &self.last_hash, anchor_reason);
                    json.append(&anchor, self.config.sync)?;
                    self.last_hash = chain::hash(&anchor);
                }
            }
            self.json = Some(json);
        }
        Ok(())
    }
}

/// When [`Writer::open_files`] runs: at start, or for `audit-reopen`.
#[derive(Clone, Copy)]
enum Opening {
    Start,
    Reopen,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_AUDIT_ARGUMENT;
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
        "\"prev_sha256\":\"",
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
            actor: Actor {
                kind: ActorKind::Client,
                uid: Some(1000),
                gid: Some(1000),
                pid: Some(4242),
                user: Some(user),
                comm: Some(comm),
                bus_name: None,
            },
            socket: "/run/corral/corrald.sock".into(),
            result: RecordResult::Denied,
            reason,
        }
    }

    /// The text line's layout holds: one line, fourteen fields, four slots.
    fn check_layout(line: &str) -> Result<(), TestCaseError> {
        prop_assert!(!line.contains(FORBIDDEN), "{line:?}");
        prop_assert_eq!(line.split('\t').count(), 14, "{:?}", line);
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
            let shown = r.shown(DEFAULT_MAX_AUDIT_ARGUMENT);
            let line = shown.text_line(AT);
            check_layout(&line)?;
            // Nothing here is long enough to be cut, so a marker could only
            // be forged.
            prop_assert_eq!(markers(&line), 0, "{:?}", line);

            let json = chain::link(shown.json(AT), chain::GENESIS);
            prop_assert!(!json.contains('\n'));
            // Rendered first and linked later, as the writer thread does,
            // the line is the same.
            let prev = chain::hash(&line);
            let reference = chain::link(shown.json(AT), &prev);
            prop_assert_eq!(&shown.json_line(AT, &prev), &reference);
            let mut linked = Vec::new();
            chain::Unlinked::new(shown.json_line(AT, chain::GENESIS)).link_into(&prev, &mut linked);
            prop_assert_eq!(String::from_utf8(linked).unwrap(), reference);
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
            max_argument in prop::sample::select(vec![0usize, 1, 7, DEFAULT_MAX_AUDIT_ARGUMENT, 4096]),
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
            let journal = shown.journal_entry(AT).len();
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
            vec![format!("{}={}", control(MAX_ARGUMENT_NAME - 1), control(DEFAULT_MAX_AUDIT_ARGUMENT)); 40],
            control(MAX_FIELD),
            control(MAX_FIELD),
            control(MAX_REASON),
        );
        r.command = control(MAX_FIELD);
        r.socket = control(MAX_FIELD);
        r.session = u64::MAX;
        r.request_id = u64::MAX;
        r.actor = Actor {
            kind: ActorKind::Systemd,
            uid: Some(u32::MAX),
            gid: Some(u32::MAX),
            pid: Some(u32::MAX),
            bus_name: Some(control(MAX_FIELD)),
            ..r.actor
        };
        let shown = r.shown(DEFAULT_MAX_AUDIT_ARGUMENT);
        let bound = max_record_len(DEFAULT_MAX_AUDIT_ARGUMENT);
        let (text, json) = (shown.text_line(AT), chain::link(shown.json(AT), chain::GENESIS));
        assert!(text.len() <= bound && json.len() <= bound, "text {}, JSON {}, bound {bound}", text.len(), json.len());
        // The bound is not loose by much: the JSON of the worst case fills
        // most of it.
        assert!(json.len() > bound * 3 / 4, "JSON {} of {bound}", json.len());
        assert!(shown.journal_entry(AT).len() <= 2 * bound);
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
        let shown = r.shown(DEFAULT_MAX_AUDIT_ARGUMENT);
        let want = format!(
            "target={}\\u{{2026}}[truncated: 1048576 bytes, sha256 {}]",
            "a".repeat(DEFAULT_MAX_AUDIT_ARGUMENT),
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
        assert_eq!(
            r.shown(DEFAULT_MAX_AUDIT_ARGUMENT).arguments[0],
            "target=web\\\\u{2026}[truncated: 9 bytes, sha256 00]"
        );
    }

    #[test]
    fn arguments_past_the_limit_are_counted_and_other_fields_cut() {
        let args = (0..40).map(|i| format!("MemoryMax={i}M")).collect();
        let mut r = record("g".repeat(5000), "web-1".into(), args, "root".into(), "corralctl".into(), "x".repeat(9000));
        r.worker = None;
        let shown = r.shown(DEFAULT_MAX_AUDIT_ARGUMENT);
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
    fn a_stop_through_systemd_names_systemd_in_every_sink_and_leaves_out_what_the_bus_did_not_say() {
        let mut r = record(
            "web".into(),
            "web-3".into(),
            vec!["target=web-3".into()],
            String::new(),
            String::new(),
            String::new(),
        );
        r.session = 0;
        r.socket = String::new();
        r.actor = Actor {
            kind: ActorKind::Systemd,
            uid: Some(0),
            gid: None,
            pid: Some(1),
            user: None,
            comm: None,
            bus_name: Some(":1.0".into()),
        };
        let shown = r.shown(DEFAULT_MAX_AUDIT_ARGUMENT);
        let line = shown.text_line(AT);
        check_layout(&line).unwrap();
        assert!(
            line.contains("\tactor_kind=systemd\tactor_uid=0\tactor_gid=-\tactor_pid=1\tactor_user=-\tactor_comm=-\tactor_bus_name=:1.0\tsocket=-\t"),
            "{line}"
        );
        let json: serde_json::Value = serde_json::from_str(&shown.json_line(AT, chain::GENESIS)).unwrap();
        assert_eq!(json["actor"]["kind"], "systemd");
        assert_eq!(json["actor"]["bus_name"], ":1.0");
        assert_eq!((json["actor"]["uid"].as_u64(), json["actor"]["gid"].is_null()), (Some(0), true));
        assert_eq!(shown.json_line(AT, chain::GENESIS), chain::link(shown.json(AT), chain::GENESIS));
        let entry = String::from_utf8(shown.journal_entry(AT)).unwrap();
        for field in
            ["CORRAL_AUDIT_ACTOR_KIND=systemd\n", "CORRAL_AUDIT_ACTOR_BUS_NAME=:1.0\n", "CORRAL_AUDIT_ACTOR_UID=0\n"]
        {
            assert!(entry.contains(field), "{field} in {entry}");
        }
        assert!(!entry.contains("CORRAL_AUDIT_ACTOR_GID"), "the bus gave no group: {entry}");
    }

    #[tokio::test]
    async fn a_megabyte_request_writes_a_bounded_trail() {
        let dir = tempfile::tempdir().unwrap();
        let (text, json) = (dir.path().join("audit.log"), dir.path().join("audit.jsonl"));
        let config =
            AuditConfig { text_target: Some(text.clone()), json_target: Some(json.clone()), ..Default::default() };
        assert_eq!(config.max_argument, DEFAULT_MAX_AUDIT_ARGUMENT);
        let auditor = Auditor::open(config).unwrap();
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
        auditor.write(r).await.unwrap();
        let written = std::fs::metadata(&text).unwrap().len() + std::fs::metadata(&json).unwrap().len();
        assert!(written <= 2 * max_record_len(DEFAULT_MAX_AUDIT_ARGUMENT) as u64, "{written} bytes for one record");
        assert_eq!(chain::verify(&json), Ok(1));
    }

    #[tokio::test]
    async fn a_refused_command_has_its_outcome_wherever_its_acceptance_is() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("audit.jsonl");
        let config = AuditConfig {
            text_target: Some("/dev/full".into()),
            json_target: Some(json.clone()),
            sync: true,
            ..Default::default()
        };
        let auditor = Auditor::open(config).unwrap();
        let mut r = record("web".into(), "web-1".into(), vec![], "root".into(), "corralctl".into(), String::new());
        r.result = RecordResult::Accepted;
        let e = auditor.write(r.clone()).await.unwrap_err();
        assert!(e.contains("/dev/full (audit_logs_target)"), "{e}");
        let records: Vec<serde_json::Value> =
            std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let results: Vec<&str> = records.iter().filter_map(|r| r["result"].as_str()).collect();
        assert_eq!(results, ["accepted", "failed"]);
        assert_eq!(records[2]["reason"].as_str(), Some(refusal(&e).as_str()), "the reason is the answer");
        assert_eq!((records[2]["session"].as_u64(), records[2]["request_id"].as_u64()), (Some(7), Some(42)));
        assert_eq!(chain::verify(&json), Ok(2));

        // A refusal is its own outcome, and an outcome has none.
        for result in [RecordResult::Denied, RecordResult::Ok] {
            r.result = result;
            assert!(auditor.write(r.clone()).await.is_err());
        }
        assert_eq!(chain::verify(&json), Ok(4));
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_when_the_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (text, json) = (dir.path().join("audit.log"), dir.path().join("audit.jsonl"));
        let config =
            AuditConfig { text_target: Some(text.clone()), json_target: Some(json.clone()), ..Default::default() };
        let r = record("web".into(), "web-1".into(), vec![], "root".into(), "corralctl".into(), String::new());
        Auditor::open(config.clone()).unwrap().write(r.clone()).await.unwrap();
        let whole = (std::fs::read(&text).unwrap(), std::fs::read(&json).unwrap());
        for (path, content) in [(&text, &whole.0), (&json, &whole.1)] {
            let mut torn = content.clone();
            torn.extend_from_slice(&content[..40]);
            std::fs::write(path, torn).unwrap();
        }

        let auditor = Auditor::open(config).unwrap();
        assert_eq!((std::fs::read(&text).unwrap(), std::fs::read(&json).unwrap()), whole);
        auditor.write(r).await.unwrap();
        assert_eq!(chain::verify(&json), Ok(2));
        assert!(std::fs::read_to_string(&text).unwrap().lines().all(|l| l.split('\t').count() == 14));
    }
}
