//! One worker process: how it is spawned, and the task that owns it until it
//! is reaped.
//!
//! The task is the only place that signals or talks to the process, so a
//! soft stop, a hard stop overtaking it and the process's own death are all
//! seen in one order and every request out to the worker learns its outcome
//! the moment the process exits.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::fanout::{OpEvent, OpSink};
use super::launch::{self, OutputRoute, Stage, REPORT_LEN};
use super::{Msg, SlotKey};
use crate::config::{GroupConfig, StopMode, StopTimeoutAction};
use crate::frame;
use crate::journal::{Origin, Output, Stream};
use crate::proto::{self, worker_request, FailureKind, Status, WorkerEvent};
use crate::systemd::notify::Notifier;

/// The read buffer a worker channel starts with: a worker's messages are a
/// few bytes, and a thousand idle channels should not hold 8 KiB each.
const CHANNEL_BUFFER: usize = 128;

/// Commands to a running worker's task.
pub enum ProcCmd {
    SoftStop(OpSink),
    HardStop(OpSink),
}

/// What the task tells the supervisor.
#[derive(Debug)]
pub enum ProcEvent {
    Ready,
    /// A soft stop ran past its timeout and the group says to leave the
    /// worker running: it is back under normal supervision.
    StopAbandoned,
    Exited {
        description: String,
        clean: bool,
    },
}

pub struct Spawned {
    pub pid: u32,
    pub started_at: SystemTime,
    pub tx: mpsc::UnboundedSender<ProcCmd>,
    /// Present when the process waits in the gate for its placement.
    pub gate: Option<Gate>,
    pub shared: Shared,
}

/// corrald's ends of a worker's descriptors that a later corrald needs, by
/// store name. They stay where the worker's task uses them; an upgrade
/// takes copies with [`export`].
pub type Shared = Vec<(String, FdIdentity)>;

/// A descriptor number and the file it was opened on, so a copy is taken
/// only while the number still means that file.
pub struct FdIdentity {
    raw: RawFd,
    dev: u64,
    ino: u64,
}

impl FdIdentity {
    fn of(fd: BorrowedFd<'_>) -> io::Result<FdIdentity> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        Ok(FdIdentity { raw: fd.as_raw_fd(), dev: st.st_dev, ino: st.st_ino })
    }
}

/// Copies of the shared descriptors that are still open on the same file
/// (a worker whose channel has closed since has nothing left to pass).
pub fn export(shared: &Shared) -> Vec<(String, OwnedFd)> {
    let mut copies = Vec::new();
    for (name, id) in shared {
        let Ok(st) = nix::sys::stat::fstat(id.raw) else { continue };
        if st.st_dev != id.dev || st.st_ino != id.ino {
            continue;
        }
        if let Ok(raw) = nix::fcntl::fcntl(id.raw, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0)) {
            // SAFETY: fcntl just returned this new descriptor, owned by nobody else.
            copies.push((name.clone(), unsafe { OwnedFd::from_raw_fd(raw) }));
        }
    }
    copies
}

/// The parent's end of a worker's gate. The worker has been forked and
/// waits, not yet running its command: [`Gate::open`] lets it exec;
/// dropping the gate makes it exit without ever doing so.
pub struct Gate(OwnedFd);

impl Gate {
    pub fn open(self) {
        // A failed write means the gate process is gone: its exit is
        // reported through the normal path.
        let _ = nix::unistd::write(&self.0, b"g");
    }
}

/// Describes how a process ended, and whether that counts as clean the way
/// systemd counts it (exit 0, or death by SIGHUP, SIGINT, SIGTERM, SIGPIPE).
pub fn describe_exit(status: ExitStatus) -> (String, bool) {
    if let Some(code) = status.code() {
        return (format!("exited {code}"), code == 0);
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(sig) => {
            let clean = matches!(sig, Signal::SIGHUP | Signal::SIGINT | Signal::SIGTERM | Signal::SIGPIPE);
            (format!("killed by {}", sig.as_str()), clean)
        }
        None => ("ended".into(), false),
    }
}

/// Where a worker's descriptors go: its stdout and stderr to the output
/// queue, and all of corrald's ends to the service manager's descriptor
/// store, so that a later corrald can take the worker over.
pub struct Plumbing<'a> {
    pub output: &'a Output,
    /// The slot's count of dropped lines.
    pub dropped: Arc<AtomicU64>,
    pub store: &'a Notifier,
}

/// The descriptor store name of one of a worker process's descriptors
/// (`chan`, `out`, `err`); the generation tells processes apart.
pub fn fd_name(generation: u64, what: &str) -> String {
    format!("corral.{generation}.{what}")
}

pub const FD_KINDS: [&str; 3] = ["chan", "out", "err"];

/// Forks and execs one worker. Its task reports to `events` under `key` and
/// `generation`, so events from a replaced process are recognised as stale.
/// With `gated`, the process waits and runs its command only when the
/// returned [`Gate`] is opened.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: &GroupConfig,
    worker_id: &str,
    key: SlotKey,
    generation: u64,
    events: mpsc::UnboundedSender<Msg>,
    gated: bool,
    route: OutputRoute,
    plumbing: Plumbing<'_>,
) -> io::Result<Spawned> {
    let protocol = cfg.stop_mode == StopMode::Protocol;
    let plan = launch::Plan::new(cfg, worker_id, protocol, route)?;
    let forked = launch::fork(&plan, gated, protocol)?;
    let started_at = SystemTime::now();
    let pid = forked.pid;
    let origin =
        Arc::new(Origin { group: cfg.name.clone(), worker_id: worker_id.to_string(), pid, dropped: plumbing.dropped });
    let mut shared = Vec::new();
    // Into the service manager's store, for a corrald that takes over
    // after a crash or restart, and named for an upgrade's copies.
    let mut share = |what: &str, fd: BorrowedFd<'_>| -> io::Result<()> {
        plumbing.store.store_fds(&fd_name(generation, what), &[fd]);
        shared.push((fd_name(generation, what), FdIdentity::of(fd)?));
        Ok(())
    };
    for (fd, stream, policy, what) in
        [(forked.stdout, Stream::Stdout, cfg.stdout(), "out"), (forked.stderr, Stream::Stderr, cfg.stderr(), "err")]
    {
        if let Some(fd) = fd {
            share(what, fd.as_fd())?;
            plumbing.output.pump(pipe::Receiver::from_owned_fd(fd)?, origin.clone(), stream, policy);
        }
    }
    let stream = match forked.channel {
        Some(ours) => {
            share("chan", ours.as_fd())?;
            ours.set_nonblocking(true)?;
            Some(UnixStream::from_std(ours)?)
        }
        None => None,
    };
    let exit = Exit::watch(forked.pidfd, pid)?;
    let start = Start { reports: pipe::Receiver::from_owned_fd(forked.reports)?, ready_after: cfg.ready_after };
    let tx = ProcessTask::start(cfg, worker_id, pid, key, generation, events, exit, stream, Some(start));
    Ok(Spawned { pid, started_at, tx, gate: forked.gate.map(Gate), shared })
}

/// What the task of a process it started itself watches until the exec.
struct Start {
    /// The child's failure reports (see [`launch`]); end of file at exec.
    reports: pipe::Receiver,
    /// A signal-mode worker counts as ready this long after its exec.
    ready_after: Duration,
}

/// A worker process of an earlier corrald, and the descriptors it left in
/// the service manager's store.
pub struct Adoptee {
    pub pid: u32,
    /// Its output goes straight to journald, so no pipes were left.
    pub direct_output: bool,
    pub channel: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Takes over a running worker: watches its exit through a pidfd (see
/// [`Exit::Adopted`] for what is known of it), talks to it over its stored
/// channel and reads its stored output pipes.
pub fn adopt(
    cfg: &GroupConfig,
    worker_id: &str,
    key: SlotKey,
    generation: u64,
    events: mpsc::UnboundedSender<Msg>,
    adoptee: Adoptee,
    plumbing: Plumbing<'_>,
) -> io::Result<(mpsc::UnboundedSender<ProcCmd>, Shared)> {
    let pid = adoptee.pid;
    let mut shared = Vec::new();
    for (fd, what) in [(&adoptee.channel, "chan"), (&adoptee.stdout, "out"), (&adoptee.stderr, "err")] {
        if let Some(fd) = fd {
            shared.push((fd_name(generation, what), FdIdentity::of(fd.as_fd())?));
        }
    }
    let exit = Exit::watch(launch::pidfd_open(pid)?, pid)?;
    let origin =
        Arc::new(Origin { group: cfg.name.clone(), worker_id: worker_id.to_string(), pid, dropped: plumbing.dropped });
    for (fd, stream, policy, what) in [
        (adoptee.stdout, Stream::Stdout, cfg.stdout(), "stdout"),
        (adoptee.stderr, Stream::Stderr, cfg.stderr(), "stderr"),
    ] {
        match fd.map(pipe::Receiver::from_owned_fd).transpose()? {
            Some(pipe) => plumbing.output.pump(pipe, origin.clone(), stream, policy),
            None if adoptee.direct_output => {}
            None => tracing::warn!(
                worker = %worker_id,
                "its {what} pipe did not survive the earlier corrald (no descriptor store): its output is lost, \
                 and it may die of SIGPIPE when it next writes"
            ),
        }
    }
    let stream = match adoptee.channel {
        Some(fd) => {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)?;
            Some(UnixStream::from_std(std)?)
        }
        None => {
            if cfg.stop_mode == StopMode::Protocol {
                tracing::warn!(worker = %worker_id, "its worker channel was lost; it will be stopped with its stop signal");
            }
            None
        }
    };
    let tx = ProcessTask::start(cfg, worker_id, pid, key, generation, events, exit, stream, None);
    Ok((tx, shared))
}

/// How a worker's end is seen: through a pidfd that becomes readable when
/// it exits. A child of this corrald (one it started, or one adopted after
/// an in-place upgrade) is then reaped, which tells how it ended; for a
/// child of an earlier corrald the status went with that corrald.
struct Exit {
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
    pid: Pid,
}

impl Exit {
    fn watch(pidfd: OwnedFd, pid: u32) -> io::Result<Exit> {
        // SAFETY: the AsyncFd owns the pidfd, which stays open until it drops.
        let pidfd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
        Ok(Exit { pidfd, pid: Pid::from_raw(pid as i32) })
    }

    async fn wait(&mut self) -> io::Result<Option<ExitStatus>> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            let mut ready = self.pidfd.readable().await?;
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Some(ExitStatus::from_raw(code << 8))),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(ExitStatus::from_raw(sig as i32))),
                Err(nix::errno::Errno::ECHILD) => return Ok(None),
                // Readable means it has exited; a stop or continue report
                // is not the end.
                _ => ready.clear_ready(),
            }
        }
    }
}

struct ProcessTask {
    worker_id: String,
    pid: Pid,
    stop_mode: StopMode,
    stop_signal: Signal,
    stop_timeout: Duration,
    stop_timeout_action: StopTimeoutAction,
    key: SlotKey,
    generation: u64,
    events: mpsc::UnboundedSender<Msg>,
    command: String,
}

/// The soft stop in progress, if any.
#[derive(Default)]
struct SoftStopState {
    started: bool,
    acked: bool,
    answered_ok: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    ops: Vec<OpSink>,
}

impl ProcessTask {
    /// Spawns the task that owns the process from now on; returns the way
    /// to command it.
    #[allow(clippy::too_many_arguments)]
    fn start(
        cfg: &GroupConfig,
        worker_id: &str,
        pid: u32,
        key: SlotKey,
        generation: u64,
        events: mpsc::UnboundedSender<Msg>,
        exit: Exit,
        stream: Option<UnixStream>,
        start: Option<Start>,
    ) -> mpsc::UnboundedSender<ProcCmd> {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = ProcessTask {
            worker_id: worker_id.to_string(),
            pid: Pid::from_raw(pid as i32),
            stop_mode: cfg.stop_mode,
            stop_signal: cfg.stop_signal,
            stop_timeout: cfg.stop_timeout,
            stop_timeout_action: cfg.stop_timeout_action,
            key,
            generation,
            events,
            command: cfg.command.clone(),
        };
        tokio::spawn(task.run(exit, stream, rx, start));
        tx
    }

    fn report(&self, event: ProcEvent) {
        let _ = self.events.send(Msg::Process { key: self.key.clone(), generation: self.generation, event });
    }

    fn signal_group(&self, sig: Signal) {
        // The negative pid reaches the worker's whole process group; the
        // worker itself is tried too in case it left the group.
        let _ = kill(Pid::from_raw(-self.pid.as_raw()), sig);
        let _ = kill(self.pid, sig);
    }

    async fn run(
        self,
        mut exit: Exit,
        stream: Option<UnixStream>,
        mut rx: mpsc::UnboundedReceiver<ProcCmd>,
        start: Option<Start>,
    ) {
        let (mut reader, mut writer) = match stream {
            Some(s) => {
                let (r, w) = s.into_split();
                (
                    // Idle channels are the rule: buffers start small and
                    // grow with what a worker actually sends.
                    Some(FramedRead::with_capacity(r, frame::codec(frame::MAX_WORKER_FRAME), CHANNEL_BUFFER)),
                    Some(w),
                )
            }
            None => (None, None),
        };
        let mut soft = SoftStopState::default();
        let mut hard_ops: Vec<OpSink> = Vec::new();
        let mut killed = false;
        let mut next_request_id = 1u64;
        let mut soft_request_id = 0u64;
        let (mut reports, ready_after) = match start {
            Some(s) => (Some(Reports::new(s.reports)), Some(s.ready_after)),
            None => (None, None),
        };
        // Why it never ran its command, when the child said so.
        let mut failed_start: Option<String> = None;
        let mut ready_at: Option<Instant> = None;

        let status = loop {
            tokio::select! {
                status = exit.wait() => break status,
                report = async { reports.as_mut().unwrap().next().await }, if reports.is_some() => match report {
                    Some(bytes) => {
                        let (stage, text) = launch::describe_report(&bytes, &self.command);
                        if stage == Stage::Journal {
                            tracing::warn!(worker = %self.worker_id, "{text}");
                        } else {
                            failed_start = Some(text);
                        }
                    }
                    None => {
                        reports = None;
                        // The exec happened (or the child is gone, which
                        // the exit says): a signal-mode worker's wait for
                        // readiness starts now, not while it was placed.
                        if self.stop_mode == StopMode::Signal && failed_start.is_none() {
                            ready_at = ready_after.map(|after| Instant::now() + after);
                        }
                    }
                },
                _ = sleep_until_opt(ready_at), if ready_at.is_some() => {
                    ready_at = None;
                    self.report(ProcEvent::Ready);
                }
                frame = async { reader.as_mut().unwrap().next().await }, if reader.is_some() => {
                    match frame {
                        Some(Ok(bytes)) => match proto::WorkerResponse::decode(bytes) {
                            Ok(resp) => self.on_worker_message(resp, soft_request_id, &mut soft),
                            Err(e) => {
                                tracing::warn!(worker = %self.worker_id, "undecodable message on the worker channel: {e}; closing it");
                                reader = None;
                            }
                        },
                        Some(Err(e)) => {
                            tracing::warn!(worker = %self.worker_id, "worker channel failed: {e}; closing it");
                            reader = None;
                        }
                        None => reader = None,
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(ProcCmd::SoftStop(op)) => {
                        if killed {
                            // Already being killed: the outcome comes with the exit.
                            soft.ops.push(op);
                            continue;
                        }
                        if soft.acked {
                            let _ = op.send(OpEvent::Acked(self.worker_id.clone()));
                        }
                        soft.ops.push(op);
                        if soft.started {
                            continue;
                        }
                        soft.started = true;
                        soft.deadline = Some(Instant::now() + self.stop_timeout);
                        let sent = match (self.stop_mode, writer.as_mut()) {
                            (StopMode::Protocol, Some(w)) => {
                                soft_request_id = next_request_id;
                                next_request_id += 1;
                                let req = proto::WorkerRequest {
                                    id: soft_request_id,
                                    command: Some(worker_request::Command::SoftStop(proto::SoftStop {})),
                                };
                                w.write_all(&frame::encode_with_length(&req)).await.is_ok()
                            }
                            _ => false,
                        };
                        if !sent {
                            // Signal mode, or a protocol worker whose channel
                            // is gone: the stop signal is all that is left,
                            // and corrald acknowledges on the worker's behalf.
                            let _ = kill(self.pid, self.stop_signal);
                            soft.acked = true;
                            for op in &soft.ops {
                                let _ = op.send(OpEvent::Acked(self.worker_id.clone()));
                            }
                        }
                    }
                    Some(ProcCmd::HardStop(op)) => {
                        let _ = op.send(OpEvent::Acked(self.worker_id.clone()));
                        hard_ops.push(op);
                        killed = true;
                        self.signal_group(Signal::SIGKILL);
                    }
                    None => {}
                },
                _ = sleep_until_opt(soft.deadline), if soft.deadline.is_some() && !soft.timed_out => {
                    soft.timed_out = true;
                    match self.stop_timeout_action {
                        StopTimeoutAction::Kill => {
                            killed = true;
                            self.signal_group(Signal::SIGKILL);
                        }
                        StopTimeoutAction::Fail => {
                            let detail = format!(
                                "did not finish within its stop timeout of {}; left running",
                                humantime::format_duration(self.stop_timeout)
                            );
                            for op in soft.ops.drain(..) {
                                let _ = op.send(OpEvent::Finished(self.worker_id.clone(), Err((FailureKind::TimedOut, detail.clone()))));
                            }
                            soft = SoftStopState::default();
                            self.report(ProcEvent::StopAbandoned);
                        }
                    }
                }
            }
        };

        // Its last answers may still be unread when the exit is seen first;
        // for an adopted worker, whose exit status is unknown, they are all
        // that tells a drained worker from a dead one. Its end is closed, so
        // this ends at once unless a child of it still holds the channel.
        if let Some(reader) = reader.as_mut() {
            let drain = async {
                while let Some(Ok(bytes)) = reader.next().await {
                    if let Ok(resp) = proto::WorkerResponse::decode(bytes) {
                        self.on_worker_message(resp, soft_request_id, &mut soft);
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        }

        let (description, clean) = match status {
            Ok(Some(status)) => match failed_start {
                Some(why) => (format!("failed to start: {why}"), false),
                None => describe_exit(status),
            },
            Ok(None) => ("exited (status unknown: adopted from an earlier corrald)".to_string(), false),
            Err(e) => (format!("lost: {e}"), false),
        };
        let outcome = if soft.timed_out {
            Err((
                FailureKind::TimedOut,
                format!(
                    "did not finish within its stop timeout of {}; killed",
                    humantime::format_duration(self.stop_timeout)
                ),
            ))
        } else if !hard_ops.is_empty() {
            Err((FailureKind::Interrupted, "interrupted by a hard stop".to_string()))
        } else if soft.answered_ok || clean {
            Ok(())
        } else {
            Err((FailureKind::Died, description.clone()))
        };
        // The supervisor hears of the exit before any request does: a
        // client answered "stopped" may send its next request at once, and
        // that request must find the slot empty, not a process task gone.
        self.report(ProcEvent::Exited { description, clean });
        for op in soft.ops {
            let _ = op.send(OpEvent::Finished(self.worker_id.clone(), outcome.clone()));
        }
        for op in hard_ops {
            let _ = op.send(OpEvent::Finished(self.worker_id.clone(), Ok(())));
        }
    }

    fn on_worker_message(&self, resp: proto::WorkerResponse, soft_request_id: u64, soft: &mut SoftStopState) {
        if resp.id == 0 {
            if resp.event() == WorkerEvent::Ready {
                self.report(ProcEvent::Ready);
            }
            return;
        }
        if resp.id != soft_request_id || !soft.started {
            return;
        }
        match resp.status() {
            Status::Processing => {
                if !soft.acked {
                    soft.acked = true;
                    for op in &soft.ops {
                        let _ = op.send(OpEvent::Acked(self.worker_id.clone()));
                    }
                }
            }
            Status::Ok => soft.answered_ok = true,
            Status::Failure => {
                let detail = format!("worker refused the soft stop: {}", resp.message);
                for op in soft.ops.drain(..) {
                    let _ =
                        op.send(OpEvent::Finished(self.worker_id.clone(), Err((FailureKind::Failed, detail.clone()))));
                }
                *soft = SoftStopState::default();
                self.report(ProcEvent::StopAbandoned);
            }
            Status::Unspecified => {}
        }
    }
}

/// The child's failure reports, read whole however the bytes arrive.
struct Reports {
    pipe: pipe::Receiver,
    buf: [u8; REPORT_LEN],
    filled: usize,
}

impl Reports {
    fn new(pipe: pipe::Receiver) -> Reports {
        Reports { pipe, buf: [0; REPORT_LEN], filled: 0 }
    }

    /// The next report; none at end of file. Cancel-safe: a partial report
    /// stays in the buffer.
    async fn next(&mut self) -> Option<[u8; REPORT_LEN]> {
        while self.filled < REPORT_LEN {
            match self.pipe.read(&mut self.buf[self.filled..]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.filled += n,
            }
        }
        self.filled = 0;
        Some(self.buf)
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
