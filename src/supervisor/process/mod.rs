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
use std::time::SystemTime;

use nix::sys::signal::Signal;
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::fanout::OpSink;
use super::fleet::{CheckKind, CheckResult};
use super::launch::{self, OutputRoute};
use super::{Msg, SlotKey};
use crate::config::{GroupConfig, StopMode};
use crate::journal::{Origin, Output, Stream};
use crate::systemd::notify::Notifier;
use task::{Exit, ProcessTask, Start};

mod task;

/// Commands to a running worker's task.
pub enum ProcCmd {
    SoftStop(OpSink),
    HardStop(OpSink),
    /// Stop it for its health, to be restarted: a soft stop, then its stop
    /// signal, then SIGKILL, each after its stop timeout, whatever
    /// `stop_timeout_action` says.
    Condemn,
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
        /// Known only for corrald's own children.
        status: Option<ExitStatus>,
    },
    /// A ping or a probe had this result.
    Check {
        kind: CheckKind,
        result: CheckResult,
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
    /// The worker is placed in a scope (its exec probes join its cgroup).
    pub scoped: bool,
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
    let tx =
        ProcessTask::start(cfg, worker_id, pid, key, generation, events, exit, stream, Some(start), plumbing.scoped);
    Ok(Spawned { pid, started_at, tx, gate: forked.gate.map(Gate), shared })
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
    let tx = ProcessTask::start(cfg, worker_id, pid, key, generation, events, exit, stream, None, plumbing.scoped);
    Ok((tx, shared))
}
