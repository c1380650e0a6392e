//! One worker process: how it is spawned, and the task that owns it until it
//! is reaped.
//!
//! The task is the only place that signals or talks to the process, so a
//! soft stop, a hard stop overtaking it and the process's own death are all
//! seen in one order and every request out to the worker learns its outcome
//! the moment the process exits.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};
use prost::Message;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::fanout::{OpEvent, OpSink};
use super::{Msg, SlotKey};
use crate::config::{GroupConfig, StopMode, StopTimeoutAction};
use crate::frame;
use crate::journal::{Origin, Output, Stream};
use crate::proto::{self, worker_request, FailureKind, Status, WorkerEvent};
use crate::systemd::notify::Notifier;

/// The descriptor number at which a protocol worker finds its channel.
const WORKER_FD: i32 = 3;

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
    pub keep: Kept,
}

/// Copies of corrald's ends of a worker's descriptors, by store name, to
/// pass to a new corrald on an upgrade.
pub type Kept = Vec<(String, OwnedFd)>;

/// The first argument that makes corrald act as the exec gate.
pub const GATE_ARG: &str = "--corral-exec-gate";

/// The parent's end of a worker's gate. The worker has been forked and sits
/// in corrald's own gate code, not yet running its command: [`Gate::open`]
/// lets it exec; dropping the gate makes it exit without ever doing so.
pub struct Gate(OwnedFd);

impl Gate {
    pub fn open(self) {
        // A failed write means the gate process is gone: its exit is
        // reported through the normal path.
        let _ = nix::unistd::write(&self.0, b"g");
    }
}

/// The exec gate: the child half of [`Gate`], run by corrald's binary when
/// started with [`GATE_ARG`]. It blocks until corrald has confirmed the
/// worker's placement in its scope, so no worker code ever runs outside it.
/// Arguments: the descriptor to wait on, then the command and its arguments.
pub fn run_gate(args: &[std::ffi::OsString]) -> ! {
    use std::os::unix::ffi::OsStrExt;
    let fail = |msg: String| -> ! {
        eprintln!("corral gate: {msg}");
        std::process::exit(126)
    };
    let (Some(fd), Some(command)) = (args.first(), args.get(1)) else {
        fail("usage: --corral-exec-gate FD COMMAND [ARGS...]".into())
    };
    let fd: i32 = fd.to_str().and_then(|f| f.parse().ok()).unwrap_or_else(|| fail(format!("bad descriptor {fd:?}")));
    let mut byte = [0u8; 1];
    let got = loop {
        match nix::unistd::read(fd, &mut byte) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let _ = nix::unistd::close(fd);
    if got != Ok(1) {
        // corrald could not place us (or went away): never run the command.
        std::process::exit(1);
    }
    let cstrings: Result<Vec<std::ffi::CString>, _> =
        args[1..].iter().map(|a| std::ffi::CString::new(a.as_bytes())).collect();
    let argv = cstrings.unwrap_or_else(|_| fail("an argument contains a NUL byte".into()));
    let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    eprintln!("corral: cannot execute {}: {err}", command.to_string_lossy());
    std::process::exit(127)
}

/// Identity a worker runs as, resolved before fork so the child only makes
/// system calls.
struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

fn credentials(cfg: &GroupConfig) -> io::Result<Option<Credentials>> {
    if cfg.user.is_none() && cfg.group.is_none() {
        return Ok(None);
    }
    let not_found =
        |what: &str, name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?}"));
    let user = match &cfg.user {
        Some(name) => Some(nix::unistd::User::from_name(name)?.ok_or_else(|| not_found("user", name))?),
        None => None,
    };
    let gid = match &cfg.group {
        Some(name) => nix::unistd::Group::from_name(name)?.ok_or_else(|| not_found("group", name))?.gid,
        None => user.as_ref().map(|u| u.gid).unwrap_or_else(nix::unistd::getegid),
    };
    let (uid, groups) = match &user {
        Some(u) => {
            let cname = std::ffi::CString::new(u.name.clone())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
            (u.uid, nix::unistd::getgrouplist(&cname, gid)?)
        }
        None => (nix::unistd::geteuid(), vec![gid]),
    };
    Ok(Some(Credentials { uid, gid, groups }))
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

/// When a process with this start time (clock ticks since boot) started.
pub fn started_at(start_time: u64) -> Option<SystemTime> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
    let ago = (uptime - start_time as f64 / hz).max(0.0);
    SystemTime::now().checked_sub(Duration::from_secs_f64(ago))
}

/// Field 22 of /proc/<pid>/stat: the process's start time in clock ticks
/// since boot, which with the pid names one process for good (parsed after
/// the `)` that ends comm, which may hold spaces).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Forks and execs one worker. Its task reports to `events` under `key` and
/// `generation`, so events from a replaced process are recognised as stale.
/// With `gated`, the process starts in the exec gate and runs its command
/// only when the returned [`Gate`] is opened.
pub fn spawn(
    cfg: &GroupConfig,
    worker_id: &str,
    key: SlotKey,
    generation: u64,
    events: mpsc::UnboundedSender<Msg>,
    gated: bool,
    plumbing: Plumbing<'_>,
) -> io::Result<Spawned> {
    let (mut cmd, gate) = if gated {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Far from the low numbers the worker channel is moved to.
        let high = nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: fcntl just returned this new descriptor, owned by nobody else.
        let high = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) };
        drop(read);
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg(GATE_ARG).arg(high.as_raw_fd().to_string()).arg(&cfg.command);
        (cmd, Some((high, write)))
    } else {
        (tokio::process::Command::new(&cfg.command), None)
    };
    let gate_fd = gate.as_ref().map(|(read, _)| read.as_raw_fd());
    cmd.args(&cfg.args)
        .env_clear()
        .envs(&cfg.environment)
        // The PATH `Config::check_host` found the command in.
        .env("PATH", cfg.search_path())
        .env("CORRAL_GROUP", &cfg.name)
        .env("CORRAL_WORKER_ID", worker_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at corrald's terminal is corrald's
        // to handle (as a soft shutdown), and a hard stop can kill the
        // worker's children with it.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &cfg.working_directory {
        cmd.current_dir(dir);
    }
    let channel = match cfg.stop_mode {
        StopMode::Protocol => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            cmd.env("CORRAL_WORKER_FD", WORKER_FD.to_string());
            Some((ours, OwnedFd::from(theirs)))
        }
        StopMode::Signal => None,
    };
    let creds = credentials(cfg)?;
    let child_fd = channel.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (fcntl, dup2, setgroups, setgid, setuid)
    // on values prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = gate_fd {
                clear_cloexec(fd)?;
            }
            if let Some(fd) = child_fd {
                if fd == WORKER_FD {
                    clear_cloexec(fd)?;
                } else if libc_dup2(fd, WORKER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(c) = &creds {
                nix::unistd::setgroups(&c.groups)?;
                nix::unistd::setgid(c.gid)?;
                nix::unistd::setuid(c.uid)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let gate = gate.map(|(read, write)| {
        drop(read);
        Gate(write)
    });
    let pid = child.id().ok_or_else(|| io::Error::other("worker exited before its pid was read"))?;
    let origin =
        Arc::new(Origin { group: cfg.name.clone(), worker_id: worker_id.to_string(), pid, dropped: plumbing.dropped });
    let mut keep = Vec::new();
    // Into the service manager's store, and a copy kept for an upgrade.
    let mut hand_over = |what: &str, fd: BorrowedFd<'_>| -> io::Result<()> {
        plumbing.store.store_fds(&fd_name(generation, what), &[fd]);
        keep.push((fd_name(generation, what), fd.try_clone_to_owned()?));
        Ok(())
    };
    if let Some(stdout) = child.stdout.take() {
        hand_over("out", stdout.as_fd())?;
        plumbing.output.pump(stdout, origin.clone(), Stream::Stdout, cfg.stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        hand_over("err", stderr.as_fd())?;
        plumbing.output.pump(stderr, origin, Stream::Stderr, cfg.stderr);
    }
    let started_at = SystemTime::now();
    let stream = match channel {
        Some((ours, theirs)) => {
            drop(theirs);
            hand_over("chan", ours.as_fd())?;
            ours.set_nonblocking(true)?;
            Some(UnixStream::from_std(ours)?)
        }
        None => None,
    };
    let tx = ProcessTask::start(cfg, worker_id, pid, key, generation, events, Exit::Child(child), stream);
    Ok(Spawned { pid, started_at, tx, gate, keep })
}

/// A worker process of an earlier corrald, and the descriptors it left in
/// the service manager's store.
pub struct Adoptee {
    pub pid: u32,
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
) -> io::Result<(mpsc::UnboundedSender<ProcCmd>, Kept)> {
    let pid = adoptee.pid;
    let mut keep = Vec::new();
    for (fd, what) in [(&adoptee.channel, "chan"), (&adoptee.stdout, "out"), (&adoptee.stderr, "err")] {
        if let Some(fd) = fd {
            keep.push((fd_name(generation, what), fd.try_clone()?));
        }
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as nix::libc::pid_t, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; we own it.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
    // SAFETY: the AsyncFd owns the pidfd, which stays open until it drops.
    let pidfd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
    let exit = Exit::Adopted(pidfd, Pid::from_raw(pid as i32));
    let origin =
        Arc::new(Origin { group: cfg.name.clone(), worker_id: worker_id.to_string(), pid, dropped: plumbing.dropped });
    for (fd, stream, policy, what) in
        [(adoptee.stdout, Stream::Stdout, cfg.stdout, "stdout"), (adoptee.stderr, Stream::Stderr, cfg.stderr, "stderr")]
    {
        match fd.map(tokio::net::unix::pipe::Receiver::from_owned_fd).transpose()? {
            Some(pipe) => plumbing.output.pump(pipe, origin.clone(), stream, policy),
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
    let tx = ProcessTask::start(cfg, worker_id, pid, key, generation, events, exit, stream);
    Ok((tx, keep))
}

/// How a worker's end is seen: as our child (with its exit status), or,
/// for an adopted one, through a pidfd that becomes readable when it exits.
enum Exit {
    Child(Child),
    Adopted(tokio::io::unix::AsyncFd<OwnedFd>, Pid),
}

impl Exit {
    async fn wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Exit::Child(child) => child.wait().await.map(Some),
            Exit::Adopted(pidfd, pid) => {
                let _ = pidfd.readable().await?;
                // Still our child after an in-place upgrade: reap it, and
                // learn how it ended. Otherwise its parent was the earlier
                // corrald, and the status went with it.
                match nix::sys::wait::waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => Ok(Some(ExitStatus::from_raw(code << 8))),
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => Ok(Some(ExitStatus::from_raw(sig as i32))),
                    _ => Ok(None),
                }
            }
        }
    }
}

fn clear_cloexec(fd: i32) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    let mut flags = nix::fcntl::FdFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::FdFlag::FD_CLOEXEC);
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// dup2 through nix's safe wrapper would take ownership semantics we do not
/// want in the child; this is the plain call.
fn libc_dup2(old: i32, new: i32) -> i32 {
    // SAFETY: dup2 on plain descriptor numbers has no memory effects.
    unsafe { nix::libc::dup2(old, new) }
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
        };
        tokio::spawn(task.run(exit, stream, rx));
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

    async fn run(self, mut exit: Exit, stream: Option<UnixStream>, mut rx: mpsc::UnboundedReceiver<ProcCmd>) {
        let (mut reader, mut writer) = match stream {
            Some(s) => {
                let (r, w) = s.into_split();
                (
                    Some(FramedRead::new(r, frame::codec(frame::MAX_WORKER_FRAME))),
                    Some(FramedWrite::new(w, frame::codec(frame::MAX_WORKER_FRAME))),
                )
            }
            None => (None, None),
        };
        let mut soft = SoftStopState::default();
        let mut hard_ops: Vec<OpSink> = Vec::new();
        let mut killed = false;
        let mut next_request_id = 1u64;
        let mut soft_request_id = 0u64;

        let status = loop {
            tokio::select! {
                status = exit.wait() => break status,
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
                                w.send(frame::encode(&req)).await.is_ok()
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
            Ok(Some(status)) => describe_exit(status),
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
        for op in soft.ops {
            let _ = op.send(OpEvent::Finished(self.worker_id.clone(), outcome.clone()));
        }
        for op in hard_ops {
            let _ = op.send(OpEvent::Finished(self.worker_id.clone(), Ok(())));
        }
        self.report(ProcEvent::Exited { description, clean });
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
