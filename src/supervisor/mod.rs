//! The supervisor: spawns worker groups, keeps them running by their restart
//! policy, and carries out the commands that reach it from the socket.
//!
//! One actor task owns all supervision state and never waits on a worker:
//! everything that takes time (a drain, a rolling restart, a shutdown) runs
//! as its own orchestration task that asks the actor for quick state changes
//! through a [`Handle`]. So a slow stop in one group never delays a command
//! for another, and a hard stop reaches the workers while a soft stop is
//! still waiting on them.

mod fanout;
mod launch;
mod orchestrate;
mod process;
pub mod runtime;
pub mod state;
mod upgrade;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, GroupConfig, OutputMode, RestartPolicy, ScopeMode};
use crate::journal::Output;
use crate::proto::{self, request::Command, response::Content, FailureKind, Status};
use crate::sanitise::sanitise;
use crate::systemd::notify::Notifier;
use crate::systemd::{self, Placement, Systemd};
use fanout::{OpEvent, OpSink};
use launch::OutputRoute;
use process::{ProcCmd, ProcEvent};

pub use fanout::kind_name;
pub use launch::keep_open_file_limit_for_workers;
pub use upgrade::{handshake_line, HANDSHAKE_ARG};

/// A response on its way to a connection's writer, with the sequence
/// number the connection gave the request it answers (0: a request the
/// connection refused itself, which it does not track).
pub struct Outgoing {
    pub seq: u64,
    pub response: proto::Response,
    /// The response's encoded length, counted once.
    pub len: usize,
}

/// Where the responses to one connection's requests go. Never blocks the
/// sender (the actor must not wait on a client); instead it counts the
/// bytes waiting, so the connection can stop reading a client that does
/// not read its answers.
#[derive(Clone)]
pub struct Replies {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// The receiving end of [`Replies`], for the connection's writer.
pub struct ReplyQueue {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

impl Replies {
    pub fn channel() -> (Replies, ReplyQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (Replies { tx, queued: queued.clone() }, ReplyQueue { rx, queued })
    }

    /// Bytes of responses sent and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn send(&self, seq: u64, response: proto::Response) {
        let len = response.encoded_len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        // A client that hung up no longer wants the answer; the work goes on.
        if self.tx.send(Outgoing { seq, response, len }).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }
}

impl ReplyQueue {
    /// The next response; its bytes no longer count as waiting.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let outgoing = self.rx.recv().await?;
        self.queued.fetch_sub(outgoing.len, Ordering::Relaxed);
        Some(outgoing)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Answers one request: any number of `PROCESSING`, then one final answer.
#[derive(Clone)]
pub struct Reply {
    id: u64,
    seq: u64,
    tx: Replies,
}

impl Reply {
    pub fn new(id: u64, seq: u64, tx: Replies) -> Reply {
        Reply { id, seq, tx }
    }

    fn send(&self, status: Status, message: String, content: Option<Content>) {
        self.tx.send(self.seq, proto::Response { id: self.id, status: status as i32, message, content });
    }

    pub fn processing(&self, message: String, content: Option<Content>) {
        self.send(Status::Processing, message, content)
    }

    pub fn ok(&self, message: String, content: Option<Content>) {
        self.send(Status::Ok, message, content)
    }

    pub fn failure(&self, message: String, content: Option<Content>) {
        self.send(Status::Failure, message, content)
    }
}

/// A worker's place in its group: `web-3` is slot 3 of group `web`. The
/// slot outlives the processes that fill it, so ids stay stable across
/// restarts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub group: String,
    pub index: u32,
}

impl SlotKey {
    pub fn id(&self) -> String {
        format!("{}-{}", self.group, self.index)
    }
}

/// Messages to the supervisor actor.
pub enum Msg {
    Request {
        request: proto::Request,
        reply: Reply,
    },
    Process {
        key: SlotKey,
        generation: u64,
        event: ProcEvent,
    },
    RestartDue {
        key: SlotKey,
        token: u64,
    },
    /// Fork more of the queued workers (see [`Supervisor::fork_queued`]).
    ForkMore,
    /// A gated worker's placement is settled (its gate opened, or dropped
    /// after `PlacementFailed`): one fewer child waits.
    Placed,
    /// Stop these slots, reporting to `op`; slots not running report at once.
    Stop {
        keys: Vec<SlotKey>,
        hard: bool,
        op: OpSink,
    },
    /// Start these slots (creating missing ones); each reports to `waiter`
    /// as finished when ready, or why it is not.
    Start {
        keys: Vec<SlotKey>,
        waiter: OpSink,
    },
    /// systemd would not take a worker into its scope; it was never exec'd.
    PlacementFailed {
        key: SlotKey,
        generation: u64,
        error: String,
    },
    /// Report to `waiter` when these slots are ready, without starting
    /// them: their group starts in its own time (after its dependencies).
    AwaitReady {
        keys: Vec<SlotKey>,
        waiter: OpSink,
    },
    /// A group has been drained for removal by a reload.
    ForgetGroup(String),
    /// The final step of a shutdown: leave the run loop.
    Exit {
        clean: bool,
    },
    /// The service manager restarts corrald: leave the run loop with every
    /// worker running, for the next corrald to adopt.
    Handover,
    /// The new binary passed its check: answer, and let corrald's main
    /// loop stop the socket before the run loop ends.
    UpgradeChecked {
        binary: PathBuf,
        reply: Reply,
    },
    /// The socket is quiet: end the run loop for the upgrade.
    Release,
    /// A state file was read for a `load-state`.
    ApplyState {
        saved: state::SavedState,
        path: PathBuf,
        reply: Reply,
    },
    /// Test builds only: block the run loop for good, so that the service
    /// manager's watchdog can be seen to fire.
    #[cfg(feature = "fault-injection")]
    Wedge,
}

/// The way into the supervisor, for the command socket and for
/// orchestration tasks.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Handle {
    /// Submits a request from a client; responses go to `reply`.
    pub fn request(&self, request: proto::Request, reply: Reply) {
        let _ = self.tx.send(Msg::Request { request, reply });
    }

    pub fn handover(&self) {
        let _ = self.tx.send(Msg::Handover);
    }

    /// Ends the run loop of an upgrade, once the socket is quiet.
    pub fn release(&self) {
        let _ = self.tx.send(Msg::Release);
    }

    #[cfg(feature = "fault-injection")]
    pub fn wedge(&self) {
        let _ = self.tx.send(Msg::Wedge);
    }

    fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Its group waits for the groups it starts after.
    Waiting,
    Starting,
    Ready,
    Stopping,
    Backoff,
    Stopped,
    Failed,
}

impl SlotState {
    fn name(self) -> &'static str {
        match self {
            SlotState::Waiting => "waiting",
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Stopping => "stopping",
            SlotState::Backoff => "backoff",
            SlotState::Stopped => "stopped",
            SlotState::Failed => "failed",
        }
    }
}

struct Proc {
    generation: u64,
    /// With the pid, names the process for good (see runtime.rs).
    start_time: u64,
    /// Why the process was never allowed to run its command, if so.
    placement_error: Option<String>,
    pid: u32,
    started_at: SystemTime,
    started: Instant,
    tx: mpsc::UnboundedSender<ProcCmd>,
    /// corrald's ends of its descriptors that a later corrald needs, by
    /// store name.
    shared: process::Shared,
    /// Its output goes straight to journald (see [`launch`]).
    direct_output: bool,
}

struct Slot {
    state: SlotState,
    proc: Option<Proc>,
    /// Set when the operator (or a scale-down, reload, shutdown) stopped it:
    /// its exit is then not a reason to restart.
    stop_requested: bool,
    restarts: u32,
    /// Exits in a row that came soon after their start; drives the backoff.
    consecutive_failures: u32,
    backoff_token: u64,
    last_exit: String,
    ready_waiters: Vec<OpSink>,
    /// Output lines of this worker dropped because the log queue was full.
    output_dropped: Arc<AtomicU64>,
    /// Waiting in the fork queue: starting, with no process yet.
    queued: bool,
}

impl Slot {
    fn new(state: SlotState) -> Slot {
        Slot {
            state,
            proc: None,
            stop_requested: false,
            restarts: 0,
            consecutive_failures: 0,
            backoff_token: 0,
            last_exit: String::new(),
            ready_waiters: Vec::new(),
            output_dropped: Arc::new(AtomicU64::new(0)),
            queued: false,
        }
    }
}

struct Group {
    config: Arc<GroupConfig>,
    desired: u32,
    slots: BTreeMap<u32, Slot>,
    waiting: bool,
    failed: Option<String>,
    removing: bool,
    /// Restarts within the start-limit interval.
    recent_restarts: VecDeque<Instant>,
    /// Properties changed at runtime with `limit`; later scopes get them too.
    limits: Vec<crate::systemd::Property>,
}

pub struct Supervisor {
    config: Config,
    /// The service manager, when workers are placed in scopes.
    systemd: Option<Systemd>,
    /// The service manager that runs corrald, if it was started as a
    /// notify service.
    notifier: Notifier,
    output: Output,
    groups: BTreeMap<String, Group>,
    rx: mpsc::UnboundedReceiver<Msg>,
    handle: Handle,
    next_generation: u64,
    shutting_down: bool,
    started: Instant,
    /// The runtime file needs rewriting.
    runtime_dirty: bool,
    /// Where an accepted upgrade is announced to corrald's main loop.
    upgrades: Option<mpsc::UnboundedSender<PathBuf>>,
    upgrading: Option<PathBuf>,
    /// Whether journald's stream socket is there for `output = "journal"`.
    journal_streams: bool,
    /// Slots to fork, in order. Forking is paced so the actor keeps
    /// answering requests while a thousand workers start.
    fork_queue: VecDeque<SlotKey>,
    /// Forked children that wait at their gate for placement; each pins
    /// the pages corrald writes meanwhile, so their number is bounded.
    gated: usize,
    /// A `ForkMore` is on its way.
    fork_more_sent: bool,
}

/// Forks per turn of the actor: a fork of corrald costs a fraction of a
/// millisecond, so a turn stays within a few.
const FORKS_PER_TURN: usize = 16;

/// Children waiting at their gate at once: enough to keep systemd's
/// placement window busy.
const MAX_GATED: usize = 32;

/// Messages handled before the runtime file and the status are brought up
/// to date.
const BATCH: usize = 256;

/// How the run loop ended.
pub enum Ending {
    /// After a soft shutdown; clean when every worker drained.
    Shutdown { clean: bool },
    /// `systemctl restart`: the workers stay for the next corrald.
    Handover,
    /// Replace this corrald with `binary`, passing it the workers'
    /// descriptors (by store name).
    Upgrade { binary: PathBuf, fds: Vec<(String, OwnedFd)> },
}

impl Supervisor {
    pub fn new(config: Config, systemd: Option<Systemd>, notifier: Notifier, output: Output) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let groups = BTreeMap::new();
        let mut sup = Supervisor {
            config: config.clone(),
            systemd,
            notifier,
            output,
            groups,
            rx,
            handle: Handle { tx },
            next_generation: 1,
            shutting_down: false,
            started: Instant::now(),
            runtime_dirty: false,
            upgrades: None,
            upgrading: None,
            journal_streams: false,
            fork_queue: VecDeque::new(),
            gated: 0,
            fork_more_sent: false,
        };
        sup.journal_streams = std::path::Path::new(launch::JOURNAL_STREAM_SOCKET).exists();
        let wanted: Vec<&str> =
            config.groups.values().filter(|g| g.output == OutputMode::Journal).map(|g| g.name.as_str()).collect();
        if !wanted.is_empty() && !sup.journal_streams {
            tracing::warn!(
                groups = %wanted.join(", "),
                "output = \"journal\", but journald's stream socket {} is not there: corrald carries their output",
                launch::JOURNAL_STREAM_SOCKET
            );
        }
        for g in config.groups.values() {
            sup.add_group(g.clone());
        }
        sup
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Accepted upgrades are sent here (the new binary's path); without a
    /// receiver, upgrades are refused.
    pub fn on_upgrade(&mut self, tx: mpsc::UnboundedSender<PathBuf>) {
        self.upgrades = Some(tx);
    }

    /// Starts the groups whose dependencies allow it, then serves until a
    /// shutdown completes. Returns whether every worker drained cleanly.
    pub async fn run(mut self) -> Ending {
        self.start_waiting_groups();
        // The keep-alive comes from this loop, so a wedged loop misses it.
        let mut watchdog = self.notifier.watchdog_interval().map(tokio::time::interval);
        let mut quiet = false;
        loop {
            self.fork_queued();
            // Only a batch that changed something is worth a look over the
            // whole fleet and a rewrite of the runtime file.
            if !quiet {
                self.persist();
                self.announce();
            }
            let mut msg = tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => msg,
                    None => return Ending::Shutdown { clean: false },
                },
                _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                    self.notifier.watchdog();
                    continue;
                }
            };
            // What is already waiting is handled in one batch: a thousand
            // workers exiting at once cost one rewrite, not a thousand.
            quiet = true;
            let mut handled = 0;
            loop {
                quiet &= matches!(&msg, Msg::Request { request, .. } if read_only(request));
                if let Some(ending) = self.on_message(msg) {
                    return ending;
                }
                handled += 1;
                if handled == BATCH {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(next) => msg = next,
                    Err(_) => break,
                }
            }
        }
    }

    /// Handles one message; `Some` when the run loop ends.
    fn on_message(&mut self, msg: Msg) -> Option<Ending> {
        match msg {
            Msg::Request { request, reply } => self.on_request(request, reply),
            Msg::Process { key, generation, event } => self.on_process_event(key, generation, event),
            Msg::RestartDue { key, token } => self.on_restart_due(key, token),
            Msg::ForkMore => self.fork_more_sent = false,
            Msg::Placed => self.gated = self.gated.saturating_sub(1),
            Msg::Stop { keys, hard, op } => self.stop_slots(keys, hard, op),
            Msg::Start { keys, waiter } => self.start_slots(keys, waiter),
            Msg::AwaitReady { keys, waiter } => {
                for key in keys {
                    match self.slot_mut(&key) {
                        Some(slot) if slot.state == SlotState::Ready => {
                            let _ = waiter.send(OpEvent::Finished(key.id(), Ok(())));
                        }
                        Some(slot) => slot.ready_waiters.push(waiter.clone()),
                        None => {
                            let why = "removed before it was ready".to_string();
                            let _ = waiter.send(OpEvent::Finished(key.id(), Err((FailureKind::Failed, why))));
                        }
                    }
                }
            }
            Msg::PlacementFailed { key, generation, error } => {
                tracing::error!(worker = %key.id(), "not started: {error}");
                if let Some(proc) = self.slot_mut(&key).and_then(|s| s.proc.as_mut()) {
                    if proc.generation == generation {
                        proc.placement_error = Some(error);
                    }
                }
            }
            Msg::ForgetGroup(name) => {
                if self.groups.get(&name).is_some_and(|g| g.removing) {
                    self.groups.remove(&name);
                }
            }
            // The runtime file is made current before corrald leaves.
            Msg::Exit { clean } => {
                self.persist();
                return Some(Ending::Shutdown { clean });
            }
            Msg::Handover => {
                self.persist();
                self.notifier.stopping();
                tracing::info!(workers = self.running(), "restart: leaving the workers running for the next corrald");
                return Some(Ending::Handover);
            }
            Msg::UpgradeChecked { binary, reply } => self.upgrade_checked(binary, reply),
            Msg::ApplyState { saved, path, reply } => {
                if self.shutting_down {
                    reply.failure("corrald is shutting down".into(), None);
                } else {
                    self.apply_state(saved, &path, reply);
                }
            }
            Msg::Release => {
                if let Some(binary) = self.upgrading.take() {
                    let fds = self
                        .groups
                        .values_mut()
                        .flat_map(|g| g.slots.values_mut())
                        .filter_map(|s| s.proc.as_ref())
                        .flat_map(|p| process::export(&p.shared))
                        .collect();
                    self.persist();
                    return Some(Ending::Upgrade { binary, fds });
                }
            }
            #[cfg(feature = "fault-injection")]
            Msg::Wedge => {
                tracing::warn!("fault injection: the run loop blocks for good");
                loop {
                    std::thread::park();
                }
            }
        }
        None
    }

    /// Starts an upgrade: the new binary must pass [`upgrade::preflight`]
    /// before anything is torn down.
    fn upgrade(&mut self, binary: &str, reply: Reply) {
        if self.upgrades.is_none() {
            reply.failure("this corrald cannot be upgraded in place".into(), None);
            return;
        }
        if self.upgrading.is_some() {
            reply.failure("an upgrade is already in progress".into(), None);
            return;
        }
        let binary = if binary.is_empty() {
            match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    reply.failure(format!("cannot find the running binary: {e}"), None);
                    return;
                }
            }
        } else {
            PathBuf::from(binary)
        };
        let (config, handle) = (self.config.path.clone(), self.handle());
        tokio::spawn(async move {
            match upgrade::preflight(&binary, &config).await {
                Ok(binary) => handle.send(Msg::UpgradeChecked { binary, reply }),
                Err(why) => reply.failure(format!("upgrade refused, the running corrald stays: {why}"), None),
            }
        });
    }

    fn upgrade_checked(&mut self, binary: PathBuf, reply: Reply) {
        if self.shutting_down {
            reply.failure("corrald is shutting down".into(), None);
            return;
        }
        let workers = self.running();
        let Some(upgrades) = &self.upgrades else { return };
        tracing::info!(binary = %binary.display(), workers, "upgrading in place");
        let shown = crate::files::shown(&binary);
        reply.ok(format!("upgrading to {shown}: the socket and {workers} workers carry over"), None);
        let _ = upgrades.send(binary.clone());
        self.upgrading = Some(binary);
    }

    /// How many worker processes are running.
    fn running(&self) -> usize {
        self.groups.values().flat_map(|g| g.slots.values()).filter(|s| s.proc.is_some()).count()
    }

    /// Rewrites the runtime file when the set of worker processes changed.
    fn persist(&mut self) {
        if !std::mem::take(&mut self.runtime_dirty) {
            return;
        }
        let scopes = self.systemd.is_some();
        let workers = self
            .groups
            .iter()
            .flat_map(|(name, g)| {
                g.slots.iter().filter_map(move |(index, slot)| {
                    let proc = slot.proc.as_ref()?;
                    let key = SlotKey { group: name.clone(), index: *index };
                    Some(runtime::RuntimeWorker {
                        id: key.id(),
                        group: name.clone(),
                        index: *index,
                        generation: proc.generation,
                        pid: proc.pid,
                        start_time: proc.start_time,
                        scope: scopes.then(|| scope_unit(&g.config, &key)),
                        direct_output: proc.direct_output,
                    })
                })
            })
            .collect();
        runtime::save(&runtime::path(&self.config.state_directory), workers);
    }

    /// Takes over the workers an earlier corrald left running (after a
    /// crash, or a restart that kept them), with the descriptors it left in
    /// the service manager's store. A worker is adopted only if its pid
    /// still names the same process (start time) and, with scopes, it is
    /// still in its scope. Slots left empty are started by [`Self::run`].
    pub fn adopt(&mut self, mut stored: HashMap<String, OwnedFd>) {
        let path = runtime::path(&self.config.state_directory);
        let mut adopted = 0;
        let limits = self.config.limits.clone();
        for (n, w) in runtime::load(&path, limits.max_state_file_size).into_iter().enumerate() {
            if n >= limits.max_workers as usize || w.index > limits.max_group_workers {
                tracing::warn!(worker = %w.id, pid = w.pid, "beyond corrald's worker limits; not adopted");
                continue;
            }
            let mut take = |what: &str| stored.remove(&process::fd_name(w.generation, what));
            let adoptee = process::Adoptee {
                pid: w.pid,
                direct_output: w.direct_output,
                channel: take("chan"),
                stdout: take("out"),
                stderr: take("err"),
            };
            let forget = |sup: &Supervisor| {
                for what in process::FD_KINDS {
                    sup.notifier.remove_fds(&process::fd_name(w.generation, what));
                }
            };
            if crate::procfs::start_time(w.pid) != Some(w.start_time) {
                tracing::info!(worker = %w.id, pid = w.pid, "gone while corrald was down; its slot starts anew");
                forget(self);
                continue;
            }
            // The scope checked is the one this worker's slot must be in,
            // not whatever the file names.
            if let (Some(file_scope), Some(group)) = (&w.scope, self.groups.get(&w.group)) {
                let key = SlotKey { group: w.group.clone(), index: w.index };
                let scope = scope_unit(&group.config, &key);
                if *file_scope != scope || !crate::procfs::in_unit(w.pid, &scope) {
                    tracing::warn!(worker = %w.id, pid = w.pid, "not in the scope its slot belongs in; not adopted");
                    forget(self);
                    continue;
                }
            }
            let events = self.handle.tx.clone();
            let Some(group) = self.groups.get_mut(&w.group) else {
                tracing::warn!(worker = %w.id, pid = w.pid, "its group is no longer configured: stopping it");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid as i32), nix::sys::signal::SIGTERM);
                forget(self);
                continue;
            };
            let Some(slot) = group.slots.get_mut(&w.index).filter(|s| s.proc.is_none()) else {
                tracing::warn!(worker = %w.id, pid = w.pid, "beyond its group's count: stopping it");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid as i32), group.config.stop_signal);
                forget(self);
                continue;
            };
            let key = SlotKey { group: w.group.clone(), index: w.index };
            let plumbing =
                process::Plumbing { output: &self.output, dropped: slot.output_dropped.clone(), store: &self.notifier };
            match process::adopt(&group.config, &w.id, key, w.generation, events, adoptee, plumbing) {
                Ok((tx, shared)) => {
                    slot.proc = Some(Proc {
                        generation: w.generation,
                        start_time: w.start_time,
                        placement_error: None,
                        pid: w.pid,
                        started_at: crate::procfs::started_at(w.start_time).unwrap_or_else(SystemTime::now),
                        started: Instant::now(),
                        tx,
                        shared,
                        direct_output: w.direct_output,
                    });
                    slot.state = SlotState::Ready;
                    group.waiting = false;
                    self.next_generation = self.next_generation.max(w.generation + 1);
                    adopted += 1;
                }
                Err(e) => {
                    tracing::warn!(worker = %w.id, pid = w.pid, "cannot adopt it ({e}): stopping it");
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid as i32), group.config.stop_signal);
                    forget(self);
                }
            }
        }
        for name in stored.keys() {
            self.notifier.remove_fds(name);
        }
        if adopted > 0 {
            tracing::info!(workers = adopted, "adopted the workers of an earlier corrald");
        }
        // Groups that were running start their missing workers at once.
        let missing: Vec<SlotKey> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.waiting)
            .flat_map(|(name, g)| {
                g.slots
                    .iter()
                    .filter(|(_, s)| s.proc.is_none() && s.state == SlotState::Waiting)
                    .map(|(i, _)| SlotKey { group: name.clone(), index: *i })
            })
            .collect();
        for key in missing {
            self.spawn_slot(&key);
        }
        self.runtime_dirty = true;
    }

    /// Tells the service manager how the fleet is: READY once every group
    /// has settled after startup, and a one-line status.
    fn announce(&self) {
        let mut desired = 0;
        let mut ready = 0;
        let mut scopes = 0;
        let mut failed = Vec::new();
        let mut settled = true;
        for (name, g) in &self.groups {
            if g.removing {
                continue;
            }
            desired += g.desired;
            let group_ready = g.slots.values().filter(|s| s.state == SlotState::Ready).count() as u32;
            ready += group_ready;
            let running = g.slots.values().filter(|s| s.proc.is_some()).count() as u32;
            scopes += match g.config.scope {
                ScopeMode::Group => u32::from(running > 0),
                ScopeMode::Worker => running,
            };
            if g.failed.is_some() {
                failed.push(name.as_str());
                continue;
            }
            // A group waiting on a failed one will not start by itself.
            let blocked =
                g.waiting && g.config.after.iter().any(|d| self.groups.get(d).is_some_and(|d| d.failed.is_some()));
            let group_settled = blocked
                || (!g.waiting
                    && g.slots.values().all(|s| {
                        s.stop_requested || matches!(s.state, SlotState::Ready | SlotState::Stopped | SlotState::Failed)
                    }));
            settled &= group_settled;
        }
        let mut status = if self.shutting_down {
            format!("shutting down: {} workers left", self.running())
        } else if self.systemd.is_some() {
            format!("{ready}/{desired} workers ready in {scopes} {}", if scopes == 1 { "scope" } else { "scopes" })
        } else {
            format!("{ready}/{desired} workers ready (no scopes)")
        };
        if !failed.is_empty() {
            status.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        let dropped = self.output.dropped();
        if dropped > 0 {
            status.push_str(&format!("; {dropped} output lines dropped"));
        }
        self.notifier.status(&status);
        if settled && !self.shutting_down {
            self.notifier.ready();
        }
    }

    fn add_group(&mut self, config: GroupConfig) {
        let desired = config.count;
        let slots = (1..=desired).map(|i| (i, Slot::new(SlotState::Waiting))).collect();
        self.groups.insert(
            config.name.clone(),
            Group {
                config: Arc::new(config),
                desired,
                slots,
                waiting: true,
                failed: None,
                removing: false,
                recent_restarts: VecDeque::new(),
                limits: Vec::new(),
            },
        );
    }

    fn slot_mut(&mut self, key: &SlotKey) -> Option<&mut Slot> {
        self.groups.get_mut(&key.group)?.slots.get_mut(&key.index)
    }

    /// A group is ready when it has started and every worker meant to run
    /// is ready: the condition for the groups that start after it.
    fn group_ready(&self, name: &str) -> bool {
        self.groups.get(name).is_some_and(|g| {
            !g.waiting
                && g.failed.is_none()
                && g.slots
                    .values()
                    .all(|s| s.stop_requested || matches!(s.state, SlotState::Ready | SlotState::Stopped))
        })
    }

    fn start_waiting_groups(&mut self) {
        if self.shutting_down {
            return;
        }
        loop {
            let startable: Vec<String> = self
                .groups
                .iter()
                .filter(|(_, g)| g.waiting && !g.removing && g.config.after.iter().all(|d| self.group_ready(d)))
                .map(|(n, _)| n.clone())
                .collect();
            if startable.is_empty() {
                return;
            }
            for name in startable {
                let group = self.groups.get_mut(&name).expect("listed above");
                group.waiting = false;
                let keys: Vec<SlotKey> = group
                    .slots
                    .iter()
                    .filter(|(_, s)| s.state == SlotState::Waiting)
                    .map(|(i, _)| SlotKey { group: name.clone(), index: *i })
                    .collect();
                tracing::info!(group = %name, workers = keys.len(), "starting group");
                for key in keys {
                    self.spawn_slot(&key);
                }
            }
        }
    }

    /// Queues a slot's process to be forked (see [`Self::fork_queued`]); it
    /// is starting from now on.
    fn spawn_slot(&mut self, key: &SlotKey) {
        let Some(slot) = self.slot_mut(key) else { return };
        slot.stop_requested = false;
        slot.state = SlotState::Starting;
        if !std::mem::replace(&mut slot.queued, true) {
            self.fork_queue.push_back(key.clone());
        }
    }

    /// Forks queued slots, a few per turn and no more than [`MAX_GATED`]
    /// waiting at their gates, and asks for another turn while some are
    /// left: requests in between are answered at once.
    fn fork_queued(&mut self) {
        let mut forked = 0;
        while forked < FORKS_PER_TURN && !self.fork_queue.is_empty() {
            if self.systemd.is_some() && self.gated >= MAX_GATED {
                // `Placed` brings the next turn.
                return;
            }
            let key = self.fork_queue.pop_front().expect("not empty");
            match self.slot_mut(&key) {
                Some(slot) if slot.queued => slot.queued = false,
                // Stopped or removed while it waited.
                _ => continue,
            }
            self.fork_slot(&key);
            forked += 1;
        }
        if !self.fork_queue.is_empty() && !self.fork_more_sent {
            self.fork_more_sent = true;
            self.handle.send(Msg::ForkMore);
        }
    }

    /// Forks a process for a slot. A failure to start counts as an exit, so
    /// the restart policy and its backoff apply to it as to a crash.
    fn fork_slot(&mut self, key: &SlotKey) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let events = self.handle.tx.clone();
        let Some(group) = self.groups.get_mut(&key.group) else { return };
        let config = group.config.clone();
        let route = if config.output == OutputMode::Journal && self.journal_streams {
            OutputRoute::Journal
        } else {
            OutputRoute::Pipes
        };
        let Some(slot) = group.slots.get_mut(&key.index) else { return };
        let gated = self.systemd.is_some();
        let plumbing =
            process::Plumbing { output: &self.output, dropped: slot.output_dropped.clone(), store: &self.notifier };
        match process::spawn(&config, &key.id(), key.clone(), generation, events, gated, route, plumbing) {
            Ok(spawned) => {
                tracing::debug!(worker = %key.id(), pid = spawned.pid, "spawned");
                if let (Some(gate), Some(sd)) = (spawned.gate, &self.systemd) {
                    let placement = Placement {
                        unit: scope_unit(&config, key),
                        description: match config.scope {
                            ScopeMode::Group => format!("corral worker group {}", key.group),
                            ScopeMode::Worker => format!("corral worker {}", key.id()),
                        },
                        slice: self.config.slice.clone(),
                        leaf: (config.scope == ScopeMode::Group).then(|| key.id()),
                        properties: merged(&config.resources, &group.limits),
                    };
                    self.gated += 1;
                    let (sd, tx, key, pid) = (sd.clone(), self.handle.tx.clone(), key.clone(), spawned.pid);
                    tokio::spawn(async move {
                        match sd.place(pid, &placement).await {
                            Ok(note) => {
                                if let Some(note) = note {
                                    tracing::info!(worker = %key.id(), "{note}");
                                }
                                gate.open();
                            }
                            Err(error) => {
                                drop(gate);
                                let _ = tx.send(Msg::PlacementFailed { key, generation, error });
                            }
                        }
                        let _ = tx.send(Msg::Placed);
                    });
                }
                slot.proc = Some(Proc {
                    generation,
                    start_time: crate::procfs::start_time(spawned.pid).unwrap_or(0),
                    placement_error: None,
                    pid: spawned.pid,
                    started_at: spawned.started_at,
                    started: Instant::now(),
                    tx: spawned.tx,
                    shared: spawned.shared,
                    direct_output: route == OutputRoute::Journal,
                });
                slot.state = SlotState::Starting;
                self.runtime_dirty = true;
            }
            Err(e) => {
                tracing::warn!(worker = %key.id(), command = %config.command, "failed to start: {e}");
                slot.last_exit = format!("failed to start: {e}");
                // Out of descriptors, processes or memory is corrald's
                // plight, not the worker's: it is retried with backoff but
                // never counts toward the start limit, so a passing flood
                // cannot fail a group for good.
                let transient = matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::EAGAIN | nix::libc::ENOMEM)
                );
                self.after_exit(key, false, Duration::ZERO, !transient);
            }
        }
    }

    fn mark_ready(&mut self, key: &SlotKey) {
        let Some(slot) = self.slot_mut(key) else { return };
        let Some(pid) = slot.proc.as_ref().map(|p| p.pid) else { return };
        if slot.state != SlotState::Starting {
            return;
        }
        slot.state = SlotState::Ready;
        for w in slot.ready_waiters.drain(..) {
            let _ = w.send(OpEvent::Finished(key.id(), Ok(())));
        }
        tracing::debug!(worker = %key.id(), pid, "ready");
        self.start_waiting_groups();
    }

    fn on_process_event(&mut self, key: SlotKey, generation: u64, event: ProcEvent) {
        let Some(slot) = self.slot_mut(&key) else { return };
        if slot.proc.as_ref().map(|p| p.generation) != Some(generation) {
            return;
        }
        match event {
            ProcEvent::Ready => self.mark_ready(&key),
            ProcEvent::StopAbandoned => {
                slot.stop_requested = false;
                slot.state = SlotState::Ready;
            }
            ProcEvent::Exited { description, clean } => {
                let proc = slot.proc.take().expect("generation matched");
                // In a shutdown the manager empties the store itself when
                // corrald stops; a removal each would only hold it up.
                if !self.shutting_down {
                    for (name, _) in &proc.shared {
                        self.notifier.remove_fds(name);
                    }
                }
                self.runtime_dirty = true;
                if let (Some(sd), Some(group)) = (&self.systemd, self.groups.get(&key.group)) {
                    if group.config.scope == ScopeMode::Group {
                        sd.release_leaf(&scope_unit(&group.config, &key), &key.id());
                    }
                }
                let Some(slot) = self.slot_mut(&key) else { return };
                let ran_for = proc.started.elapsed();
                tracing::info!(worker = %key.id(), pid = proc.pid, "{description}");
                let description = match proc.placement_error {
                    Some(error) => format!("never ran: {error}"),
                    None => description,
                };
                slot.last_exit = description.clone();
                for w in slot.ready_waiters.drain(..) {
                    let detail = format!("{description} before it was ready");
                    let _ = w.send(OpEvent::Finished(key.id(), Err((FailureKind::Failed, detail))));
                }
                self.after_exit(&key, clean, ran_for, true);
            }
        }
    }

    /// Decides what follows an exit (or a failed start): nothing when it was
    /// asked to stop, otherwise the restart policy with exponential backoff,
    /// bounded by the group's start limit.
    fn after_exit(&mut self, key: &SlotKey, clean: bool, ran_for: Duration, counts: bool) {
        let shutting_down = self.shutting_down;
        let Some(group) = self.groups.get_mut(&key.group) else { return };
        let cfg = group.config.clone();
        let desired = group.desired;
        let removing = group.removing;
        let group_failed = group.failed.is_some();
        let Some(slot) = group.slots.get_mut(&key.index) else { return };

        if slot.stop_requested || shutting_down || removing {
            slot.state = SlotState::Stopped;
            if key.index > desired {
                group.slots.remove(&key.index);
            }
            self.after_stop_changes(&key.group);
            return;
        }
        let restart = match cfg.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Never => false,
        };
        // A start that failed for want of resources is retried whatever the
        // policy: the worker never ran.
        if group_failed || (counts && !restart) {
            slot.state = if clean { SlotState::Stopped } else { SlotState::Failed };
            return;
        }
        let now = Instant::now();
        while group.recent_restarts.front().is_some_and(|t| now.duration_since(*t) > cfg.start_limit_interval) {
            group.recent_restarts.pop_front();
        }
        if counts && group.recent_restarts.len() as u32 >= cfg.start_limit_burst {
            let reason = format!(
                "start limit hit: {} restarts within {}",
                cfg.start_limit_burst,
                humantime::format_duration(cfg.start_limit_interval)
            );
            tracing::error!(group = %key.group, "{reason}; the group is marked failed");
            group.failed = Some(reason);
            for s in group.slots.values_mut() {
                if matches!(s.state, SlotState::Backoff | SlotState::Starting) && s.proc.is_none() {
                    s.state = SlotState::Failed;
                }
            }
            if let Some(slot) = group.slots.get_mut(&key.index) {
                slot.state = SlotState::Failed;
            }
            return;
        }
        if counts {
            group.recent_restarts.push_back(now);
        }
        slot.consecutive_failures =
            if ran_for >= cfg.restart_backoff_max { 1 } else { slot.consecutive_failures.saturating_add(1) };
        let exponent = slot.consecutive_failures.saturating_sub(1).min(20);
        let delay = cfg.restart_backoff_initial.saturating_mul(1u32 << exponent).min(cfg.restart_backoff_max);
        slot.state = SlotState::Backoff;
        slot.backoff_token += 1;
        let token = slot.backoff_token;
        tracing::info!(worker = %key.id(), "restarting in {}", humantime::format_duration(delay));
        let tx = self.handle.tx.clone();
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Msg::RestartDue { key, token });
        });
    }

    /// A stop can make a group that others wait on ready (all its remaining
    /// workers ready), and can finish a group's removal.
    fn after_stop_changes(&mut self, group: &str) {
        self.start_waiting_groups();
        let drained = self.groups.get(group).is_some_and(|g| g.removing && g.slots.values().all(|s| s.proc.is_none()));
        if drained {
            self.groups.remove(group);
        }
    }

    fn on_restart_due(&mut self, key: SlotKey, token: u64) {
        let Some(group) = self.groups.get_mut(&key.group) else { return };
        if group.failed.is_some() || self.shutting_down {
            return;
        }
        let Some(slot) = group.slots.get_mut(&key.index) else { return };
        if slot.state != SlotState::Backoff || slot.backoff_token != token {
            return;
        }
        slot.restarts += 1;
        self.spawn_slot(&key);
    }

    fn stop_slots(&mut self, keys: Vec<SlotKey>, hard: bool, op: OpSink) {
        for key in keys {
            let id = key.id();
            let Some(group) = self.groups.get_mut(&key.group) else {
                let _ = op.send(OpEvent::Finished(id, Ok(())));
                continue;
            };
            let desired = group.desired;
            let Some(slot) = group.slots.get_mut(&key.index) else {
                let _ = op.send(OpEvent::Finished(id, Ok(())));
                continue;
            };
            slot.stop_requested = true;
            match &slot.proc {
                Some(proc) => {
                    slot.state = SlotState::Stopping;
                    let cmd = if hard { ProcCmd::HardStop(op.clone()) } else { ProcCmd::SoftStop(op.clone()) };
                    if proc.tx.send(cmd).is_err() {
                        let _ = op.send(OpEvent::Finished(id, Err((FailureKind::Died, "worker task is gone".into()))));
                    }
                }
                None => {
                    // Not running (queued, backoff, failed, never started):
                    // nothing to drain, and no restart may follow.
                    slot.state = SlotState::Stopped;
                    slot.queued = false;
                    slot.backoff_token += 1;
                    for w in slot.ready_waiters.drain(..) {
                        let detail = "stopped before it was ready".to_string();
                        let _ = w.send(OpEvent::Finished(id.clone(), Err((FailureKind::Failed, detail))));
                    }
                    if key.index > desired {
                        group.slots.remove(&key.index);
                    }
                    let _ = op.send(OpEvent::Finished(id, Ok(())));
                    self.after_stop_changes(&key.group);
                }
            }
        }
    }

    fn start_slots(&mut self, keys: Vec<SlotKey>, waiter: OpSink) {
        let refuse = |id: String, why: &str| {
            let _ = waiter.send(OpEvent::Finished(id, Err((FailureKind::Failed, why.to_string()))));
        };
        for key in keys {
            let id = key.id();
            if self.shutting_down {
                refuse(id, "corrald is shutting down");
                continue;
            }
            let Some(group) = self.groups.get_mut(&key.group) else {
                refuse(id, "no such group");
                continue;
            };
            // An explicit start is the operator's say-so: it clears a
            // failed group and does not wait for the groups it starts after.
            group.failed = None;
            group.waiting = false;
            group.recent_restarts.clear();
            let slot = group.slots.entry(key.index).or_insert_with(|| Slot::new(SlotState::Stopped));
            match (&slot.proc, slot.state) {
                (Some(_), SlotState::Ready) => {
                    let _ = waiter.send(OpEvent::Finished(id, Ok(())));
                }
                (Some(_), SlotState::Starting) => slot.ready_waiters.push(waiter.clone()),
                (Some(_), _) => refuse(id, "still stopping"),
                (None, _) if slot.queued => slot.ready_waiters.push(waiter.clone()),
                (None, _) => {
                    slot.ready_waiters.push(waiter.clone());
                    slot.consecutive_failures = 0;
                    slot.backoff_token += 1;
                    self.spawn_slot(&key);
                }
            }
        }
    }

    /// Resolves a target: empty for all groups, a group name, or a worker id.
    fn resolve(&self, target: &str) -> Result<Vec<SlotKey>, String> {
        let keys_of = |name: &str, g: &Group| -> Vec<SlotKey> {
            g.slots.keys().map(|i| SlotKey { group: name.to_string(), index: *i }).collect()
        };
        if target.is_empty() || target == "all" {
            return Ok(self.groups.iter().flat_map(|(n, g)| keys_of(n, g)).collect());
        }
        if let Some(g) = self.groups.get(target) {
            return Ok(keys_of(target, g));
        }
        if let Some((group, index)) = target.rsplit_once('-') {
            if let (Some(g), Ok(index)) = (self.groups.get(group), index.parse::<u32>()) {
                if g.slots.contains_key(&index) {
                    return Ok(vec![SlotKey { group: group.to_string(), index }]);
                }
            }
        }
        Err(format!("no group or worker named \"{}\"", sanitise(target)))
    }

    fn on_request(&mut self, request: proto::Request, reply: Reply) {
        let Some(command) = request.command else {
            reply.failure("unknown or missing command".into(), None);
            return;
        };
        if self.shutting_down && !matches!(command, Command::Status(_) | Command::ListWorkers(_) | Command::Stop(_)) {
            reply.failure("corrald is shutting down".into(), None);
            return;
        }
        match command {
            Command::Status(_) => reply.ok(String::new(), Some(Content::SupervisorStatus(self.status()))),
            Command::ListWorkers(req) => match self.workers(&req.group) {
                Ok(mut list) => {
                    // A big fleet's listing comes in parts, so no one answer
                    // outgrows what a client must accept; the final one
                    // carries the last part.
                    let mut parts: Vec<Vec<proto::WorkerInfo>> = Vec::new();
                    while list.workers.len() > WORKERS_PER_RESPONSE {
                        let rest = list.workers.split_off(WORKERS_PER_RESPONSE);
                        parts.push(std::mem::replace(&mut list.workers, rest));
                    }
                    for workers in parts {
                        reply.processing(String::new(), Some(Content::Workers(proto::WorkerList { workers })));
                    }
                    reply.ok(String::new(), Some(Content::Workers(list)))
                }
                Err(e) => reply.failure(e, None),
            },
            Command::Stop(req) => match self.resolve(&req.target) {
                Ok(keys) => {
                    let layers =
                        if req.target.is_empty() || req.target == "all" { self.stop_layers(keys) } else { vec![keys] };
                    let timeout = self.request_timeout(&layers);
                    orchestrate::stop(self.handle(), reply, layers, req.hard, timeout, describe_target(&req.target));
                }
                Err(e) => reply.failure(e, None),
            },
            Command::Start(req) => match self.resolve(&req.target) {
                Ok(keys) => {
                    let keys: Vec<SlotKey> = keys.into_iter().filter(|k| self.slot_is_down(k)).collect();
                    let timeout = self.ready_timeout(&keys);
                    orchestrate::start(self.handle(), reply, keys, timeout);
                }
                Err(e) => reply.failure(e, None),
            },
            Command::Restart(req) => match self.resolve(&req.target) {
                Ok(keys) => {
                    let batch = if req.rolling {
                        match req.max_unavailable {
                            0 => keys
                                .first()
                                .and_then(|k| self.groups.get(&k.group))
                                .map(|g| g.config.max_unavailable)
                                .unwrap_or(1),
                            n => n,
                        }
                    } else {
                        keys.len().max(1) as u32
                    };
                    let stop_timeout = self.request_timeout(std::slice::from_ref(&keys));
                    let ready_timeout = self.ready_timeout(&keys);
                    orchestrate::restart(self.handle(), reply, keys, batch as usize, stop_timeout, ready_timeout);
                }
                Err(e) => reply.failure(e, None),
            },
            Command::Scale(req) => self.scale(&req.group, req.count, reply),
            Command::ReloadConfig(_) => self.reload(reply),
            Command::SaveState(req) => {
                let state = self.dynamic_state();
                let path = match self.state_file(&req.path) {
                    Ok(path) => path,
                    Err(e) => return reply.failure(e, None),
                };
                tokio::spawn(async move {
                    let shown = crate::files::shown(&path);
                    match tokio::task::spawn_blocking(move || state::save(&path, &state)).await {
                        Ok(Ok(())) => reply.ok(format!("state saved to {shown}"), None),
                        Ok(Err(e)) => reply.failure(e, None),
                        Err(e) => reply.failure(format!("saving state failed: {e}"), None),
                    }
                });
            }
            Command::LoadState(req) => {
                let path = match self.state_file(&req.path) {
                    Ok(path) => path,
                    Err(e) => return reply.failure(e, None),
                };
                // Read off the actor: the file may be slow or large.
                let (handle, max) = (self.handle(), self.config.limits.max_state_file_size);
                tokio::spawn(async move {
                    let read = {
                        let path = path.clone();
                        tokio::task::spawn_blocking(move || state::load(&path, max)).await
                    };
                    match read {
                        Ok(Ok(saved)) => handle.send(Msg::ApplyState { saved, path, reply }),
                        Ok(Err(e)) => reply.failure(e, None),
                        Err(e) => reply.failure(format!("loading state failed: {e}"), None),
                    }
                });
            }
            Command::Shutdown(_) => self.shutdown(reply),
            Command::Limit(req) => self.limit(&req.target, &req.properties, reply),
            // The audit trail belongs to the command socket, which answers this itself.
            Command::AuditReopen(_) => reply.failure("audit reopen is served by the command socket".into(), None),
            Command::Upgrade(req) => self.upgrade(&req.binary, reply),
        }
    }

    /// Changes resource properties of live scopes at runtime and reports
    /// what systemd shows afterwards. Later scopes of the group get them too.
    fn limit(&mut self, target: &str, assignments: &[String], reply: Reply) {
        let Some(sd) = self.systemd.clone() else {
            reply.failure("scopes are not active (no systemd service manager): there is nothing to limit".into(), None);
            return;
        };
        let mut props = Vec::new();
        for a in assignments {
            let parsed = a
                .split_once('=')
                .ok_or_else(|| format!("{a:?} is not KEY=VALUE"))
                .and_then(|(k, v)| systemd::properties::parse(k.trim(), v));
            match parsed {
                Ok(p) => props.push(p),
                Err(e) => return reply.failure(e, None),
            }
        }
        if props.is_empty() {
            return reply.failure("name at least one KEY=VALUE".into(), None);
        }
        let keys = match self.resolve(target) {
            Ok(keys) if !target.is_empty() => keys,
            Ok(_) => return reply.failure("name a group or a worker to limit".into(), None),
            Err(e) => return reply.failure(e, None),
        };
        let mut units: Vec<String> = Vec::new();
        for key in &keys {
            let Some(group) = self.groups.get_mut(&key.group) else { continue };
            for p in &props {
                group.limits.retain(|l| l.dbus_name != p.dbus_name);
                group.limits.push(p.clone());
            }
            let unit = match group.config.scope {
                ScopeMode::Group => systemd::scope_name(&key.group, None),
                ScopeMode::Worker => systemd::scope_name(&key.group, Some(key.index)),
            };
            let running = group.slots.get(&key.index).is_some_and(|s| s.proc.is_some());
            if running && !units.contains(&unit) {
                units.push(unit);
            }
        }
        tokio::spawn(async move {
            let mut lines = Vec::new();
            for unit in &units {
                match sd.set_properties(unit, &props).await {
                    Ok(shown) => {
                        let values: Vec<String> = shown.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        lines.push(format!("{unit}: {}", values.join(" ")));
                    }
                    Err(e) => return reply.failure(e, None),
                }
            }
            if lines.is_empty() {
                reply.ok("no live scope to change; the limits apply to scopes created from now on".into(), None);
            } else {
                reply.ok(lines.join("\n"), None);
            }
        });
    }

    fn slot_is_down(&self, key: &SlotKey) -> bool {
        self.groups.get(&key.group).and_then(|g| g.slots.get(&key.index)).is_some_and(|s| s.proc.is_none())
    }

    /// Begins the soft shutdown: no more starts or restarts, every worker
    /// drained in reverse start order, then the run loop ends.
    fn shutdown(&mut self, reply: Reply) {
        if self.shutting_down {
            reply.failure("a shutdown is already in progress".into(), None);
            return;
        }
        self.shutting_down = true;
        self.notifier.stopping();
        tracing::info!("soft shutdown: draining every worker");
        let keys = self.resolve("").unwrap_or_default();
        let layers = self.stop_layers(keys);
        let timeout = self.request_timeout(&layers);
        orchestrate::shutdown(self.handle(), reply, layers, timeout, self.running());
    }

    /// Splits slots into layers to stop one after another: groups that
    /// start after others stop before them.
    fn stop_layers(&self, keys: Vec<SlotKey>) -> Vec<Vec<SlotKey>> {
        let order = self.config_order();
        let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
        for name in &order {
            let d = self.groups[name]
                .config
                .after
                .iter()
                .filter_map(|dep| depth.get(dep.as_str()))
                .map(|d| d + 1)
                .max()
                .unwrap_or(0);
            depth.insert(name, d);
        }
        let max = depth.values().copied().max().unwrap_or(0);
        let mut layers = vec![Vec::new(); max + 1];
        for key in keys {
            let d = depth.get(key.group.as_str()).copied().unwrap_or(0);
            layers[max - d].push(key);
        }
        layers.retain(|l| !l.is_empty());
        layers
    }

    /// Groups in dependency order (dependencies first).
    fn config_order(&self) -> Vec<String> {
        let mut done: Vec<String> = Vec::new();
        while done.len() < self.groups.len() {
            let before = done.len();
            for (name, g) in &self.groups {
                if !done.contains(name)
                    && g.config.after.iter().all(|d| done.contains(d) || !self.groups.contains_key(d))
                {
                    done.push(name.clone());
                }
            }
            if done.len() == before {
                break;
            }
        }
        done
    }

    /// How long a stop request may take before the workers still out are
    /// reported as timed out: the longest stop timeout involved per layer,
    /// plus a margin for the kill that follows it.
    fn request_timeout(&self, layers: &[Vec<SlotKey>]) -> Duration {
        let per_layer = |keys: &Vec<SlotKey>| {
            keys.iter()
                .filter_map(|k| self.groups.get(&k.group))
                .map(|g| g.config.stop_timeout)
                .max()
                .unwrap_or(Duration::ZERO)
        };
        layers.iter().map(per_layer).sum::<Duration>() + Duration::from_secs(5)
    }

    fn ready_timeout(&self, keys: &[SlotKey]) -> Duration {
        keys.iter()
            .filter_map(|k| self.groups.get(&k.group))
            .map(|g| g.config.ready_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Whether the fleet, with each group's count as `desired` says (given
    /// the group's name and its present count), would keep more scopes live
    /// than `limits.max_scopes` allows; the reason if so.
    fn over_max_scopes(&self, desired: impl Fn(&str, u32) -> u32) -> Option<String> {
        self.systemd.as_ref()?;
        let groups = self.groups.iter().filter(|(_, g)| !g.removing);
        let scopes = crate::config::live_scopes(groups.map(|(n, g)| (g.config.scope, desired(n, g.desired))));
        let max = self.config.limits.max_scopes;
        (scopes > u64::from(max)).then(|| {
            format!(
                "the fleet would keep {scopes} systemd scopes live, over the limit of {max} (limits.max_scopes; \
                 scope = \"group\" keeps a group in one scope)"
            )
        })
    }

    fn scale(&mut self, name: &str, count: u32, reply: Reply) {
        let limits = &self.config.limits;
        if count > limits.max_group_workers {
            let why = format!(
                "cannot scale to {count}: the limit is {} workers per group (limits.max_group_workers)",
                limits.max_group_workers
            );
            return reply.failure(why, None);
        }
        let others: u64 = self
            .groups
            .iter()
            .filter(|(n, g)| n.as_str() != name && !g.removing)
            .map(|(_, g)| u64::from(g.desired))
            .sum();
        if others + u64::from(count) > u64::from(limits.max_workers) {
            let why = format!(
                "cannot scale {name} to {count}: the fleet would have {} workers, over the limit of {} \
                 (limits.max_workers)",
                others + u64::from(count),
                limits.max_workers
            );
            return reply.failure(why, None);
        }
        if let Some(why) = self.over_max_scopes(|n, desired| if n == name { count } else { desired }) {
            return reply.failure(format!("cannot scale {name} to {count}: {why}; nothing changed"), None);
        }
        let Some(group) = self.groups.get_mut(name) else {
            reply.failure(format!("no group named {}", sanitise(name)), None);
            return;
        };
        let old = group.desired;
        group.desired = count;
        let ready_timeout = group.config.ready_timeout;
        let stop_timeout = group.config.stop_timeout + Duration::from_secs(5);
        let key = |index| SlotKey { group: name.to_string(), index };
        if count >= old {
            let keys: Vec<SlotKey> = (old + 1..=count).map(key).collect();
            if group.waiting {
                for k in &keys {
                    group.slots.insert(k.index, Slot::new(SlotState::Waiting));
                }
                reply.ok(format!("{name} scaled to {count}; it waits for the groups it starts after"), None);
                return;
            }
            orchestrate::start(self.handle(), reply, keys, ready_timeout);
        } else {
            let surplus: Vec<SlotKey> = group.slots.keys().filter(|i| **i > count).map(|i| key(*i)).collect();
            orchestrate::stop(self.handle(), reply, vec![surplus], false, stop_timeout, format!("{name} scaled down"));
        }
    }

    fn reload(&mut self, reply: Reply) {
        self.notifier.reloading();
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                reply.failure(format!("reload refused, nothing changed: {e}"), None);
                self.notifier.reloaded();
                return;
            }
        };
        let mut to_stop: Vec<SlotKey> = Vec::new();
        let mut to_start: Vec<SlotKey> = Vec::new();
        let mut to_await: Vec<SlotKey> = Vec::new();
        let mut summary = state::ReloadSummary::default();
        for (name, group) in self.groups.iter_mut() {
            if !new.groups.contains_key(name) && !group.removing {
                group.removing = true;
                summary.removed.push(name.clone());
                to_stop.extend(group.slots.keys().map(|i| SlotKey { group: name.clone(), index: *i }));
            }
        }
        for (name, cfg) in &new.groups {
            match self.groups.get_mut(name) {
                None => {
                    summary.added.push(name.clone());
                    self.add_group(cfg.clone());
                    to_await.extend((1..=cfg.count).map(|index| SlotKey { group: name.clone(), index }));
                }
                Some(group) => {
                    let mut same_but_count = cfg.clone();
                    same_but_count.count = group.config.count;
                    // A group still draining from an earlier reload's
                    // removal is back: it is replaced, like a changed one.
                    let returning = std::mem::take(&mut group.removing);
                    if *group.config == *cfg && !returning {
                        summary.unchanged.push(name.clone());
                    } else if *group.config == same_but_count && !returning {
                        summary.scaled.push(name.clone());
                        let old = group.desired;
                        group.config = Arc::new(cfg.clone());
                        group.desired = cfg.count;
                        let key = |index| SlotKey { group: name.clone(), index };
                        to_stop.extend(group.slots.keys().filter(|i| **i > cfg.count).map(|i| key(*i)));
                        to_start.extend((old + 1..=cfg.count).map(key));
                    } else {
                        summary.changed.push(name.clone());
                        let keys: Vec<SlotKey> =
                            group.slots.keys().map(|i| SlotKey { group: name.clone(), index: *i }).collect();
                        group.config = Arc::new(cfg.clone());
                        group.desired = cfg.count;
                        // Changed groups are replaced: their workers stop and
                        // new ones start with the new settings.
                        to_stop.extend(keys.iter().cloned());
                        to_start.extend((1..=cfg.count).map(|index| SlotKey { group: name.clone(), index }));
                    }
                }
            }
        }
        if new.audit != self.config.audit
            || new.access != self.config.access
            || new.socket_group != self.config.socket_group
        {
            summary.notes.push("audit and access settings take effect when corrald restarts".into());
        }
        if new.limits != self.config.limits || new.max_frame_size != self.config.max_frame_size {
            summary
                .notes
                .push("worker limits apply now; connection, frame and response limits when corrald restarts".into());
        }
        if new.socket != self.config.socket {
            summary
                .notes
                .push(format!("the socket path change to {} takes effect when corrald restarts", new.socket.display()));
        }
        let ready_timeout = self.ready_timeout(&[to_start.as_slice(), to_await.as_slice()].concat());
        let stop_timeout = self.request_timeout(std::slice::from_ref(&to_stop));
        self.config = Config { socket: self.config.socket.clone(), ..new };
        tracing::info!("reload: {}", summary.describe());
        let removed = summary.removed.clone();
        let plan = orchestrate::ReloadPlan { to_stop, to_start, to_await, removed, summary };
        let done = orchestrate::reload(self.handle(), reply, plan, stop_timeout, ready_timeout);
        let notifier = self.notifier.clone();
        tokio::spawn(async move {
            let _ = done.await;
            notifier.reloaded();
        });
        self.start_waiting_groups();
    }

    /// Where a state file named in a request lives: a plain name in the
    /// `saved` directory under the state directory (the only form below
    /// the admin tier), a path as given.
    fn state_file(&self, name: &str) -> Result<PathBuf, String> {
        if name.contains('/') {
            let path = PathBuf::from(name);
            return if path.is_absolute() { Ok(path) } else { Err("a state path must be absolute".into()) };
        }
        let dir = self.config.state_directory.join("saved");
        crate::files::private_dir(&dir, 0o700)?;
        Ok(dir.join(name))
    }

    fn dynamic_state(&self) -> state::SavedState {
        state::SavedState {
            version: state::STATE_VERSION,
            groups: self
                .groups
                .iter()
                .filter(|(_, g)| !g.removing)
                .map(|(name, g)| {
                    let stopped = g
                        .slots
                        .iter()
                        .filter(|(i, s)| **i <= g.desired && s.stop_requested && s.proc.is_none())
                        .map(|(i, _)| SlotKey { group: name.clone(), index: *i }.id())
                        .collect();
                    (name.clone(), state::SavedGroup { scale: g.desired, stopped_workers: stopped })
                })
                .collect(),
        }
    }

    fn apply_state(&mut self, saved: state::SavedState, path: &std::path::Path, reply: Reply) {
        let shown = crate::files::shown(path);
        let limits = &self.config.limits;
        if let Some((name, g)) = saved.groups.iter().find(|(_, g)| g.scale > limits.max_group_workers) {
            let why = format!(
                "{shown}: group {name} is scaled to {}, over the limit of {} workers per group \
                 (limits.max_group_workers); nothing changed",
                g.scale, limits.max_group_workers
            );
            return reply.failure(why, None);
        }
        let total: u64 = self
            .groups
            .iter()
            .filter(|(_, g)| !g.removing)
            .map(|(name, g)| u64::from(saved.groups.get(name).map_or(g.desired, |s| s.scale)))
            .sum();
        if total > u64::from(limits.max_workers) {
            let why = format!(
                "{shown} would make {total} workers, over the limit of {} (limits.max_workers); nothing changed",
                limits.max_workers
            );
            return reply.failure(why, None);
        }
        if let Some(why) = self.over_max_scopes(|n, desired| saved.groups.get(n).map_or(desired, |s| s.scale)) {
            return reply.failure(format!("{shown}: {why}; nothing changed"), None);
        }
        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        let mut unknown = Vec::new();
        for (name, sg) in saved.groups {
            let Some(group) = self.groups.get_mut(&name) else {
                unknown.push(name);
                continue;
            };
            group.desired = sg.scale;
            let stopped: Vec<u32> = sg
                .stopped_workers
                .iter()
                .filter_map(|id| id.strip_prefix(&format!("{name}-")).and_then(|n| n.parse().ok()))
                .collect();
            for (index, slot) in &group.slots {
                let key = SlotKey { group: name.clone(), index: *index };
                let should_run = *index <= sg.scale && !stopped.contains(index);
                let stopped_already = slot.stop_requested && slot.proc.is_none();
                if !should_run && !stopped_already {
                    to_stop.push(key);
                } else if should_run && slot.proc.is_none() && !group.waiting {
                    to_start.push(key);
                }
            }
            for index in 1..=sg.scale {
                if !group.slots.contains_key(&index) && !stopped.contains(&index) {
                    if group.waiting {
                        group.slots.insert(index, Slot::new(SlotState::Waiting));
                    } else {
                        to_start.push(SlotKey { group: name.clone(), index });
                    }
                }
            }
        }
        let mut summary = state::ReloadSummary::default();
        if !unknown.is_empty() {
            summary.notes.push(format!("groups not in the config were ignored: {}", unknown.join(", ")));
        }
        summary.notes.push(format!("state loaded from {shown}"));
        let ready_timeout = self.ready_timeout(&to_start);
        let stop_timeout = self.request_timeout(std::slice::from_ref(&to_stop));
        let plan = orchestrate::ReloadPlan { to_stop, to_start, to_await: Vec::new(), removed: Vec::new(), summary };
        orchestrate::reload(self.handle(), reply, plan, stop_timeout, ready_timeout);
    }

    fn status(&self) -> proto::SupervisorStatus {
        let groups = self
            .groups
            .iter()
            .map(|(name, g)| {
                let count = |f: &dyn Fn(&Slot) -> bool| g.slots.values().filter(|s| f(s)).count() as u32;
                let running = count(&|s| s.proc.is_some());
                let state = if g.removing {
                    "stopping"
                } else if g.failed.is_some() {
                    "failed"
                } else if g.waiting {
                    "waiting"
                } else if running == 0 && g.slots.values().any(|s| s.state == SlotState::Backoff) {
                    "restarting"
                } else if running == 0 && g.desired > 0 {
                    "stopped"
                } else {
                    "running"
                };
                let reason = match (&g.failed, g.waiting) {
                    (Some(r), _) => r.clone(),
                    (None, true) => format!("waiting for {}", g.config.after.join(", ")),
                    _ => String::new(),
                };
                proto::GroupStatus {
                    name: name.clone(),
                    state: state.into(),
                    desired: g.desired,
                    running,
                    ready: count(&|s| s.state == SlotState::Ready),
                    stopped: count(&|s| s.state == SlotState::Stopped),
                    failed: count(&|s| s.state == SlotState::Failed),
                    reason,
                }
            })
            .collect();
        proto::SupervisorStatus {
            pid: std::process::id(),
            config_path: self.config.path.display().to_string(),
            socket_path: self.config.socket.display().to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            groups,
            scopes_active: self.systemd.is_some(),
            version: env!("CARGO_PKG_VERSION").into(),
            output_sink: self.output.sink().name().into(),
            output_dropped: self.output.dropped(),
            // Filled in by the command socket, which owns the audit trail.
            audit_journal_missed: 0,
        }
    }

    fn workers(&self, only: &str) -> Result<proto::WorkerList, String> {
        if !only.is_empty() && !self.groups.contains_key(only) {
            return Err(format!("no group named \"{}\"", sanitise(only)));
        }
        let workers = self
            .groups
            .iter()
            .filter(|(name, _)| only.is_empty() || name.as_str() == only)
            .flat_map(|(name, g)| {
                g.slots.iter().map(move |(index, s)| proto::WorkerInfo {
                    id: SlotKey { group: name.clone(), index: *index }.id(),
                    group: name.clone(),
                    pid: s.proc.as_ref().map(|p| p.pid).unwrap_or(0),
                    state: s.state.name().into(),
                    started_at_ms: s
                        .proc
                        .as_ref()
                        .and_then(|p| p.started_at.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    output_dropped: s.output_dropped.load(Ordering::Relaxed),
                })
            })
            .collect();
        Ok(proto::WorkerList { workers })
    }
}

/// How many workers one listing response carries at most: a few dozen KiB.
const WORKERS_PER_RESPONSE: usize = 256;

/// The scope a worker of this group is placed in.
/// Requests that only read the supervisor's state.
fn read_only(request: &proto::Request) -> bool {
    matches!(request.command, Some(Command::Status(_) | Command::ListWorkers(_)))
}

fn scope_unit(config: &GroupConfig, key: &SlotKey) -> String {
    match config.scope {
        ScopeMode::Group => systemd::scope_name(&key.group, None),
        ScopeMode::Worker => systemd::scope_name(&key.group, Some(key.index)),
    }
}

/// The group's configured properties with its runtime changes over them.
fn merged(configured: &[systemd::Property], runtime: &[systemd::Property]) -> Vec<systemd::Property> {
    let mut out: Vec<systemd::Property> =
        configured.iter().filter(|c| !runtime.iter().any(|r| r.dbus_name == c.dbus_name)).cloned().collect();
    out.extend(runtime.iter().cloned());
    out
}

fn describe_target(target: &str) -> String {
    if target.is_empty() || target == "all" {
        "all workers".into()
    } else {
        target.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More requests waiting at once than the actor takes in one batch:
    /// every one is still answered, once.
    #[tokio::test]
    async fn every_waiting_request_is_answered_across_batches() {
        let config = Config::parse("", std::path::Path::new("/nonexistent/corral.toml")).expect("an empty config");
        let supervisor = Supervisor::new(config, None, Notifier::none(), Output::start(1 << 20));
        let handle = supervisor.handle();
        let (replies, mut queue) = Replies::channel();
        let asked = 2 * BATCH as u64 + 1;
        for id in 1..=asked {
            let request = proto::Request { id, command: Some(Command::Status(proto::StatusRequest {})) };
            handle.request(request, Reply::new(id, id, replies.clone()));
        }
        let run = tokio::spawn(supervisor.run());
        let mut answered = std::collections::BTreeSet::new();
        while (answered.len() as u64) < asked {
            let out = tokio::time::timeout(Duration::from_secs(10), queue.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {asked} requests never answered", asked - answered.len() as u64))
                .expect("the queue stays open");
            assert_eq!(out.response.status(), Status::Ok, "{:?}", out.response);
            assert!(answered.insert(out.response.id), "{} answered twice", out.response.id);
        }
        run.abort();
    }
}
