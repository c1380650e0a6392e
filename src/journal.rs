//! Log lines to the journal: what workers print, and corrald's own logs.
//!
//! Lines are written with journald's native protocol, so each carries
//! structured fields (`CORRAL_WORKER_ID`, a priority, the worker's pid as
//! `SYSLOG_PID` and `OBJECT_PID`, which makes journald file the line under
//! the worker's scope for `journalctl -u`). Without a journal they go to
//! corrald's stderr, prefixed with the worker.
//!
//! Nothing here may block a worker or the supervisor when journald is slow
//! or stuck: a worker's pipe is always read, lines wait in a queue bounded
//! in bytes, one dedicated thread does the blocking sends, and a line that
//! does not fit in the queue is dropped and counted (per worker, and in
//! total), as is one that neither the journal nor stderr took. The journal crates for `log` and `tracing` send from the caller's
//! thread and block it once journald's socket queue is full, and cannot set
//! another process's `SYSLOG_PID`; hence this module.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::config::StreamPolicy;
use crate::events::Events;
use crate::proto::{self, event::Kind};

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Longer lines are split, as journald's stream reader does at its default
/// `LineMax=`.
pub const MAX_LINE: usize = 48 * 1024;

/// What one read of a worker's pipe takes at most.
const READ_CHUNK: usize = 64 * 1024;

/// Room kept for corrald's own log lines, apart from the workers' budget,
/// so a flood of worker output cannot crowd out the supervisor's messages.
const OWN_BUDGET: usize = 1024 * 1024;

/// One field in journald's native protocol: `NAME=value\n`, or for a
/// value holding a newline `NAME\n`, its length as 64-bit little endian,
/// the value, `\n`.
pub fn field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Where lines end up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

impl Sink {
    pub fn name(self) -> &'static str {
        match self {
            Sink::Journal => "journal",
            Sink::Stderr => "stderr",
        }
    }
}

/// One worker process, as its lines are labelled.
pub struct Origin {
    pub group: String,
    pub worker_id: String,
    pub pid: u32,
    /// Lines of this worker dropped because the queue was full or no sink
    /// took them; kept by the worker's slot across restarts.
    pub dropped: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One journal entry on its way out.
pub struct Entry {
    pub priority: u8,
    pub message: Vec<u8>,
    pub source: Source,
}

/// Who a line is from. A worker's fields are derived from its origin when
/// the line is written, so a queued line costs little more than its text.
pub enum Source {
    Worker(Arc<Origin>, Stream),
    /// corrald itself, with further fields (names upper case, as journald
    /// requires).
    Corrald(Vec<(&'static str, String)>),
}

impl Entry {
    /// What a queued entry counts against its budget: roughly the memory
    /// it holds.
    fn cost(&self) -> usize {
        let fields = match &self.source {
            Source::Worker(..) => 0,
            Source::Corrald(fields) => fields.iter().map(|(k, v)| k.len() + v.len() + 16).sum(),
        };
        self.message.len() + fields + 48
    }

    /// The entry in journald's native protocol (see [`field`]).
    fn encode(&self, buf: &mut Vec<u8>) {
        buf.clear();
        field(buf, "PRIORITY", &[b'0' + self.priority.min(7)]);
        field(buf, "MESSAGE", &self.message);
        match &self.source {
            Source::Worker(origin, stream) => {
                let pid = origin.pid.to_string();
                field(buf, "SYSLOG_IDENTIFIER", origin.group.as_bytes());
                field(buf, "SYSLOG_PID", pid.as_bytes());
                field(buf, "OBJECT_PID", pid.as_bytes());
                field(buf, "CORRAL_GROUP", origin.group.as_bytes());
                field(buf, "CORRAL_WORKER_ID", origin.worker_id.as_bytes());
                field(buf, "CORRAL_STREAM", if *stream == Stream::Stdout { b"stdout" } else { b"stderr" });
            }
            Source::Corrald(fields) => {
                field(buf, "SYSLOG_IDENTIFIER", b"corrald");
                for (name, value) in fields {
                    field(buf, name, value.as_bytes());
                }
            }
        }
    }

    fn write_stderr(&self, out: &mut impl Write) -> io::Result<()> {
        let prefix = match &self.source {
            Source::Worker(origin, _) => format!("{}[{}]: ", origin.worker_id, origin.pid),
            Source::Corrald(_) => "corrald: ".to_string(),
        };
        let mut line = Vec::with_capacity(prefix.len() + self.message.len() + 1);
        line.extend_from_slice(prefix.as_bytes());
        line.extend_from_slice(&self.message);
        line.push(b'\n');
        out.write_all(&line)
    }
}

enum Item {
    Entry(Entry, Budget),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone, Copy)]
enum Budget {
    Workers,
    Own,
}

struct Shared {
    tx: mpsc::Sender<Item>,
    sink: Sink,
    limit: usize,
    queued: AtomicUsize,
    queued_own: AtomicUsize,
    dropped: AtomicU64,
    /// Of those, the lines neither the journal nor stderr took.
    unwritable: AtomicU64,
    pumps: AtomicUsize,
    idle: Notify,
    /// Where drops are told, once corrald has its broadcaster.
    events: OnceLock<Events>,
}

impl Shared {
    fn count_dropped(&self, origin: &Origin) {
        origin.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn counter(&self, budget: Budget) -> (&AtomicUsize, usize) {
        match budget {
            Budget::Workers => (&self.queued, self.limit),
            Budget::Own => (&self.queued_own, OWN_BUDGET),
        }
    }
}

/// The way into the output queue. Cheap to clone.
#[derive(Clone)]
pub struct Output {
    shared: Arc<Shared>,
}

impl Output {
    /// Starts the writer thread. Lines go to the journal when its socket
    /// answers, else to stderr. `limit` bounds the bytes of worker output
    /// waiting to be written.
    pub fn start(limit: usize) -> Output {
        let journal = connect_journal().ok();
        let sink = if journal.is_some() { Sink::Journal } else { Sink::Stderr };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tx,
            sink,
            limit,
            queued: AtomicUsize::new(0),
            queued_own: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            unwritable: AtomicU64::new(0),
            pumps: AtomicUsize::new(0),
            idle: Notify::new(),
            events: OnceLock::new(),
        });
        let writer = Writer {
            shared: shared.clone(),
            journal,
            retry_at: None,
            reported_dropped: 0,
            told_dropped: 0,
            unwritten: 0,
        };
        std::thread::Builder::new()
            .name("corral-output".into())
            .spawn(move || writer.run(rx))
            .expect("spawning the output thread");
        Output { shared }
    }

    /// Tells `events` of dropped lines from now on, as the log is told:
    /// counted, once the queue has room again.
    pub fn tell(&self, events: Events) {
        let _ = self.shared.events.set(events);
    }

    pub fn sink(&self) -> Sink {
        self.shared.sink
    }

    /// Lines of worker output dropped since corrald started: those the
    /// queue had no room for, and those neither the journal nor stderr took.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Those lines by why: the queue was full, or no sink took them.
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 2] {
        let unwritable = self.shared.unwritable.load(Ordering::Relaxed);
        [("queue_full", self.dropped().saturating_sub(unwritable)), ("unwritable", unwritable)]
    }

    /// Queues an entry unless its budget is spent; returns whether it was.
    fn push(&self, entry: Entry, budget: Budget) -> bool {
        let cost = entry.cost();
        let (queued, limit) = self.shared.counter(budget);
        if queued.fetch_add(cost, Ordering::AcqRel) + cost > limit {
            queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        if self.shared.tx.send(Item::Entry(entry, budget)).is_err() {
            queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Queues one of corrald's own entries; false when its budget is spent.
    pub fn own(&self, entry: Entry) -> bool {
        self.push(entry, Budget::Own)
    }

    /// Reads a worker's stdout or stderr until it closes, turning it into
    /// lines. Reading never waits on the journal.
    pub fn pump(
        &self,
        reader: tokio::net::unix::pipe::Receiver,
        origin: Arc<Origin>,
        stream: Stream,
        policy: StreamPolicy,
    ) {
        self.shared.pumps.fetch_add(1, Ordering::AcqRel);
        let output = self.clone();
        tokio::spawn(async move {
            output.read_lines(reader, origin, stream, policy).await;
            if output.shared.pumps.fetch_sub(1, Ordering::AcqRel) == 1 {
                output.shared.idle.notify_waiters();
            }
        });
    }

    async fn read_lines(
        &self,
        reader: tokio::net::unix::pipe::Receiver,
        origin: Arc<Origin>,
        stream: Stream,
        p: StreamPolicy,
    ) {
        let mut line: Vec<u8> = Vec::new();
        loop {
            if reader.readable().await.is_err() {
                break;
            }
            // The buffer lives on the stack of one poll, not in the task:
            // a thousand quiet workers hold no read buffers.
            let mut buf = [0u8; READ_CHUNK];
            let n = match reader.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            let mut rest = &buf[..n];
            while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
                line.extend_from_slice(&rest[..pos]);
                self.worker_line(std::mem::take(&mut line), &origin, stream, p);
                rest = &rest[pos + 1..];
            }
            line.extend_from_slice(rest);
            while line.len() >= MAX_LINE {
                let tail = line.split_off(MAX_LINE);
                self.worker_line(std::mem::replace(&mut line, tail), &origin, stream, p);
            }
        }
        if !line.is_empty() {
            self.worker_line(line, &origin, stream, p);
        }
    }

    fn worker_line(&self, mut text: Vec<u8>, origin: &Arc<Origin>, stream: Stream, policy: StreamPolicy) {
        let mut priority = policy.priority;
        if policy.level_prefix
            && text.len() >= 3
            && text[0] == b'<'
            && text[2] == b'>'
            && (b'0'..=b'7').contains(&text[1])
        {
            priority = text[1] - b'0';
            text.drain(..3);
        }
        let entry = Entry { priority, message: text, source: Source::Worker(origin.clone(), stream) };
        if !self.push(entry, Budget::Workers) {
            self.shared.count_dropped(origin);
        }
    }

    /// Waits, at most `timeout`, until every worker stream has closed and
    /// everything queued has been written: the last thing before an exit
    /// that stopped the workers.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.pumps.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        self.flush_until(deadline).await;
    }

    /// Waits, at most `timeout`, until everything queued has been written,
    /// without waiting for the streams: for a hand-over or an upgrade,
    /// where the workers run on and their streams never close (what is
    /// still in their pipes is read by the next corrald).
    pub async fn flush(&self, timeout: Duration) {
        self.flush_until(tokio::time::Instant::now() + timeout).await;
    }

    async fn flush_until(&self, deadline: tokio::time::Instant) {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(Item::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout_at(deadline, rx).await;
        }
    }
}

fn connect_journal() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(JOURNAL_SOCKET)?;
    Ok(socket)
}

/// The output thread: the only place that may block on journald.
struct Writer {
    shared: Arc<Shared>,
    journal: Option<UnixDatagram>,
    /// When to try the journal again after it failed.
    retry_at: Option<Instant>,
    reported_dropped: u64,
    /// Dropped lines subscribers were told of.
    told_dropped: u64,
    /// Worker lines neither the journal nor stderr took, not yet reported.
    unwritten: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Item>) {
        let mut buf = Vec::with_capacity(4096);
        while let Ok(item) = rx.recv() {
            match item {
                Item::Entry(entry, budget) => {
                    if let (false, Source::Worker(origin, _)) = (self.write(&entry, &mut buf), &entry.source) {
                        self.shared.count_dropped(origin);
                        self.shared.unwritable.fetch_add(1, Ordering::Relaxed);
                        self.unwritten += 1;
                    }
                    self.shared.counter(budget).0.fetch_sub(entry.cost(), Ordering::AcqRel);
                }
                Item::Flush(done) => {
                    let _ = done.send(());
                }
            }
            self.report_drops(&mut buf);
        }
    }

    /// Writes the entry to the journal, or else to stderr; false when
    /// neither took it (journald stopped, and stderr is its stream).
    fn write(&mut self, entry: &Entry, buf: &mut Vec<u8>) -> bool {
        if self.journal.is_none() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            self.retry_at = None;
            self.journal = connect_journal().ok();
            if self.journal.is_none() {
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        if let Some(journal) = &self.journal {
            entry.encode(buf);
            match journal.send(buf) {
                Ok(_) => return true,
                Err(e) => {
                    let _ = writeln!(
                        io::stderr(),
                        "corrald: cannot write to the journal ({e}); writing log lines to stderr until it answers again"
                    );
                    self.journal = None;
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        entry.write_stderr(&mut io::stderr().lock()).is_ok()
    }

    /// Once the queue has room again after drops, says how many were lost
    /// and why; tried again until a sink takes the report.
    fn report_drops(&mut self, buf: &mut Vec<u8>) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped == self.reported_dropped || self.shared.queued.load(Ordering::Acquire) > self.shared.limit / 2 {
            return;
        }
        let lost = dropped - self.reported_dropped;
        let why = match self.unwritten {
            0 => format!("the log queue ({} bytes) was full", self.shared.limit),
            n if n == lost => "neither the journal nor stderr took them".to_string(),
            n => format!(
                "{n} of them neither the journal nor stderr took, the rest did not fit the log queue ({} bytes)",
                self.shared.limit
            ),
        };
        let entry = Entry {
            priority: 4,
            message: format!("{lost} lines of worker output dropped: {why} ({dropped} since start)").into_bytes(),
            source: Source::Corrald(vec![("CORRAL_DROPPED", lost.to_string())]),
        };
        // Told once, whether or not a sink takes the log line.
        if let (Some(events), true) = (self.shared.events.get(), dropped > self.told_dropped) {
            let lines = dropped - self.told_dropped;
            events.emit("", "", Kind::OutputDropped(proto::OutputDropped { lines, total: dropped }));
            self.told_dropped = dropped;
        }
        if self.write(&entry, buf) {
            self.reported_dropped = dropped;
            self.unwritten = 0;
        }
    }
}

/// corrald's own `tracing` events as journal entries, through the same
/// non-blocking queue.
pub struct JournalLayer {
    output: Output,
}

impl JournalLayer {
    pub fn new(output: Output) -> JournalLayer {
        JournalLayer { output }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut visitor = EventText::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        let priority = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        let mut fields = vec![("TARGET", meta.target().to_string())];
        if let Some(worker) = visitor.worker {
            fields.push(("CORRAL_WORKER_ID", worker));
        }
        if let Some(group) = visitor.group {
            fields.push(("CORRAL_GROUP", group));
        }
        let mut message = visitor.message;
        if !visitor.rest.is_empty() {
            message.push_str(&visitor.rest);
        }
        self.output.own(Entry { priority, message: message.into_bytes(), source: Source::Corrald(fields) });
    }
}

/// The message of an event, with its other fields appended as `key=value`
/// as the terminal format shows them.
#[derive(Default)]
struct EventText {
    message: String,
    rest: String,
    worker: Option<String>,
    group: Option<String>,
}

impl tracing::field::Visit for EventText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        match field.name() {
            "message" => self.message = value.to_string(),
            name => {
                let _ = write!(self.rest, " {name}={value}");
                match name {
                    "worker" => self.worker = Some(value.to_string()),
                    "group" => self.group = Some(value.to_string()),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_newlines_use_the_length_prefixed_form() {
        let entry = Entry {
            priority: 6,
            message: b"two\nlines".to_vec(),
            source: Source::Corrald(vec![("CORRAL_GROUP", "web".into())]),
        };
        let mut buf = Vec::new();
        entry.encode(&mut buf);
        let mut expected = b"PRIORITY=6\nMESSAGE\n".to_vec();
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(b"two\nlines\nSYSLOG_IDENTIFIER=corrald\nCORRAL_GROUP=web\n");
        assert_eq!(buf, expected);
    }
}
