//! The task that owns one worker process until it is reaped: the only
//! place that signals or talks to it, so a soft stop, a hard stop
//! overtaking it and the process's own death are seen in one order.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{pipe, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::config::{GroupConfig, PingConfig, StopMode, StopTimeoutAction};
use crate::frame;
use crate::proto::{self, worker_request, FailureKind, Status, WorkerEvent};
use crate::supervisor::fanout::{OpEvent, OpSink};
use crate::supervisor::fleet::{CheckKind, CheckResult};
use crate::supervisor::launch::{self, Stage, REPORT_LEN};
use crate::supervisor::probe::Probes;
use crate::supervisor::{Msg, SlotKey};

use super::{describe_exit, ProcCmd, ProcEvent};

/// The read buffer a worker channel starts with: a worker's messages are a
/// few bytes, and a thousand idle channels should not hold 8 KiB each.
const CHANNEL_BUFFER: usize = 128;

/// What the task of a process it started itself watches until the exec.
pub(super) struct Start {
    /// The child's failure reports (see [`launch`]); end of file at exec.
    pub(super) reports: pipe::Receiver,
    /// A signal-mode worker counts as ready this long after its exec.
    pub(super) ready_after: Duration,
}

/// How a worker's end is seen: through a pidfd that becomes readable when
/// it exits. A child of this corrald (one it started, or one adopted after
/// an in-place upgrade) is then reaped, which tells how it ended; for a
/// child of an earlier corrald the status went with that corrald.
pub(super) struct Exit {
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
    pid: Pid,
}

impl Exit {
    pub(super) fn watch(pidfd: OwnedFd, pid: u32) -> io::Result<Exit> {
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

/// corrald's writing half of a worker channel. tokio's write half shuts
/// the socket down for writing when dropped, and a shutdown is not this
/// descriptor's alone: it ends the socket for every copy, the descriptor
/// store's included, so a worker whose corrald exited for a restart would
/// read end of file and a successor could never reach it. Dropped, this
/// only closes corrald's descriptor.
struct ChannelWriter(Option<OwnedWriteHalf>);

impl ChannelWriter {
    async fn send(&mut self, bytes: &[u8]) -> bool {
        match self.0.as_mut() {
            Some(w) => w.write_all(bytes).await.is_ok(),
            None => false,
        }
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.forget();
        }
    }
}

pub(super) struct ProcessTask {
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
    ping: Option<PingConfig>,
    probes: Option<Probes>,
}

/// The pings of a worker once it said it is ready: one in flight at a
/// time, each due an interval after the last.
struct Pinging {
    next: Instant,
    outstanding: Option<u64>,
}

impl Pinging {
    fn new(interval: Duration) -> Pinging {
        Pinging { next: Instant::now() + interval, outstanding: None }
    }
}

/// Aborts the probe task of a process when the process task ends.
struct ProbeTask(tokio::task::JoinHandle<()>);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The soft stop in progress, if any.
#[derive(Default)]
struct SoftStopState {
    started: bool,
    acked: bool,
    answered_ok: bool,
    /// The stop signal was sent (signal mode, or no channel to ask over).
    signalled: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    /// Stopped for its health: escalates to the stop signal, then SIGKILL.
    condemned: bool,
    ops: Vec<OpSink>,
}

impl ProcessTask {
    /// Spawns the task that owns the process from now on; returns the way
    /// to command it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        cfg: &GroupConfig,
        worker_id: &str,
        pid: u32,
        key: SlotKey,
        generation: u64,
        events: mpsc::UnboundedSender<Msg>,
        exit: Exit,
        stream: Option<UnixStream>,
        start: Option<Start>,
        scoped: bool,
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
            ping: cfg.ping.clone().filter(|_| cfg.stop_mode == StopMode::Protocol),
            probes: Probes::of(cfg, worker_id, scoped),
        };
        tokio::spawn(task.run(exit, stream, rx, start));
        tx
    }

    /// Asks the worker to stop softly: request `id` over its channel, or
    /// its stop signal in signal mode or when the channel is gone. Returns
    /// whether it was the signal.
    async fn ask_to_stop(&self, writer: &mut ChannelWriter, id: u64) -> bool {
        let sent = match self.stop_mode {
            StopMode::Protocol => {
                let req =
                    proto::WorkerRequest { id, command: Some(worker_request::Command::SoftStop(proto::SoftStop {})) };
                writer.send(&frame::encode_with_length(&req)).await
            }
            StopMode::Signal => false,
        };
        if !sent {
            let _ = kill(self.pid, self.stop_signal);
        }
        !sent
    }

    /// Starts the worker's probes, if its group has any; they stop when
    /// the returned task is dropped.
    fn start_probes(&self) -> Option<ProbeTask> {
        let probes = self.probes.clone()?;
        let (events, key, generation) = (self.events.clone(), self.key.clone(), self.generation);
        let pid = self.pid.as_raw() as u32;
        Some(ProbeTask(tokio::spawn(probes.run(pid, move |kind, result| {
            let event = ProcEvent::Check { kind, result };
            let _ = events.send(Msg::Process { key: key.clone(), generation, event });
        }))))
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
                    ChannelWriter(Some(w)),
                )
            }
            None => (None, ChannelWriter(None)),
        };
        let mut soft = SoftStopState::default();
        let mut hard_ops: Vec<OpSink> = Vec::new();
        let mut killed = false;
        let mut next_request_id = 1u64;
        let mut soft_request_id = 0u64;
        // An adopted worker is past its exec and its readiness already.
        let adopted = start.is_none();
        let mut probes = if adopted { self.start_probes() } else { None };
        let mut pinging = self.ping.as_ref().filter(|_| adopted).map(|p| Pinging::new(p.interval));
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
                        if failed_start.is_none() {
                            let probed = self.probes.as_ref().is_some_and(Probes::has_readiness);
                            if self.stop_mode == StopMode::Signal && !probed {
                                ready_at = ready_after.map(|after| Instant::now() + after);
                            }
                            probes = self.start_probes();
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
                            Ok(resp) => {
                                if resp.id == 0 && resp.event() == WorkerEvent::Ready {
                                    if let (None, Some(ping)) = (&pinging, &self.ping) {
                                        pinging = Some(Pinging::new(ping.interval));
                                    }
                                }
                                if let Some(p) = pinging.as_mut().filter(|p| resp.id != 0 && p.outstanding == Some(resp.id)) {
                                    p.outstanding = None;
                                    self.report(ProcEvent::Check { kind: CheckKind::Ping, result: CheckResult::Pass });
                                }
                                self.on_worker_message(resp, soft_request_id, &mut soft);
                            }
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
                        soft_request_id = next_request_id;
                        next_request_id += 1;
                        if self.ask_to_stop(&mut writer, soft_request_id).await {
                            // Signal mode, or a protocol worker whose channel
                            // is gone: the stop signal is all that is left,
                            // and corrald acknowledges on the worker's behalf.
                            soft.signalled = true;
                            soft.acked = true;
                            for op in &soft.ops {
                                let _ = op.send(OpEvent::Acked(self.worker_id.clone()));
                            }
                        }
                    }
                    Some(ProcCmd::Condemn) => {
                        soft.condemned = true;
                        if killed || soft.started {
                            // Already on its way out: the deadline escalates.
                            continue;
                        }
                        soft.started = true;
                        soft.deadline = Some(Instant::now() + self.stop_timeout);
                        soft_request_id = next_request_id;
                        next_request_id += 1;
                        soft.signalled = self.ask_to_stop(&mut writer, soft_request_id).await;
                    }
                    Some(ProcCmd::HardStop(op)) => {
                        let _ = op.send(OpEvent::Acked(self.worker_id.clone()));
                        hard_ops.push(op);
                        killed = true;
                        self.signal_group(Signal::SIGKILL);
                    }
                    None => {}
                },
                _ = sleep_until_opt(pinging.as_ref().map(|p| p.next)), if pinging.is_some() => {
                    let (Some(p), Some(ping)) = (pinging.as_mut(), &self.ping) else { continue };
                    p.next = Instant::now() + ping.interval;
                    if soft.started {
                        // Draining (or being stopped for its health): a
                        // worker busy finishing its work is not judged.
                        p.outstanding = None;
                        continue;
                    }
                    if p.outstanding.is_some() {
                        // Still unanswered: a miss, and no second ping.
                        self.report(ProcEvent::Check { kind: CheckKind::Ping, result: CheckResult::Fail("missed a ping".into()) });
                        continue;
                    }
                    let id = next_request_id;
                    next_request_id += 1;
                    let req = proto::WorkerRequest { id, command: Some(worker_request::Command::Ping(proto::Ping {})) };
                    if reader.is_some() && writer.send(&frame::encode_with_length(&req)).await {
                        p.outstanding = Some(id);
                    } else {
                        self.report(ProcEvent::Check { kind: CheckKind::Ping, result: CheckResult::Fail("the worker channel is closed".into()) });
                    }
                }
                _ = sleep_until_opt(soft.deadline), if soft.deadline.is_some() && !soft.timed_out => {
                    if soft.condemned {
                        if soft.signalled {
                            soft.timed_out = true;
                            killed = true;
                            self.signal_group(Signal::SIGKILL);
                        } else {
                            let _ = kill(self.pid, self.stop_signal);
                            soft.signalled = true;
                            soft.deadline = Some(Instant::now() + self.stop_timeout);
                        }
                        continue;
                    }
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

        drop(probes);
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

        let exit_status = status.as_ref().ok().copied().flatten();
        let (description, clean) = match status {
            Ok(Some(status)) => match failed_start {
                Some(why) => (format!("failed to start: {why}"), false),
                None => describe_exit(status),
            },
            Ok(None) => adopted_exit(&soft, killed),
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
        self.report(ProcEvent::Exited { description, clean, status: exit_status });
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
            Status::Failure if soft.condemned => {
                // Refused, but it is stopped for its health all the same:
                // on to its stop signal.
                if !soft.signalled {
                    let _ = kill(self.pid, self.stop_signal);
                    soft.signalled = true;
                    soft.deadline = Some(Instant::now() + self.stop_timeout);
                }
            }
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

/// How a worker of an earlier corrald ended, whose exit status went with
/// that corrald: a soft stop it answered OK before exiting drained it, and
/// one that exits after its stop signal within the stop timeout stopped as
/// systemd counts a scope's stop. Anything else is an unexplained end.
fn adopted_exit(soft: &SoftStopState, killed: bool) -> (String, bool) {
    const UNKNOWN: &str = "exit status unknown: adopted from an earlier corrald";
    if soft.answered_ok {
        (format!("drained: answered its soft stop OK, then exited ({UNKNOWN})"), true)
    } else if soft.signalled && !killed && !soft.timed_out {
        (format!("exited after its stop signal ({UNKNOWN})"), true)
    } else if soft.started && !soft.signalled {
        (format!("exited without answering its soft stop ({UNKNOWN})"), false)
    } else {
        (format!("exited ({UNKNOWN})"), false)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn soft(f: impl FnOnce(&mut SoftStopState)) -> SoftStopState {
        let mut s = SoftStopState { started: true, ..SoftStopState::default() };
        f(&mut s);
        s
    }

    #[test]
    fn an_adopted_worker_that_answered_ok_drained_whatever_its_unknown_status() {
        let (text, clean) = adopted_exit(&soft(|s| s.answered_ok = true), false);
        assert!(clean);
        assert!(text.starts_with("drained: answered its soft stop OK"), "{text}");
    }

    #[test]
    fn an_adopted_worker_that_exits_after_its_stop_signal_in_time_stopped_cleanly() {
        assert!(adopted_exit(&soft(|s| s.signalled = true), false).1);
        assert!(!adopted_exit(&soft(|s| s.signalled = true), true).1, "a hard stop overtook it");
        let late = soft(|s| {
            s.signalled = true;
            s.timed_out = true;
        });
        assert!(!adopted_exit(&late, true).1, "killed at its stop timeout");
    }

    #[test]
    fn an_adopted_worker_that_exits_unasked_or_without_answering_is_an_unexplained_end() {
        let (text, clean) = adopted_exit(&soft(|_| {}), false);
        assert!(!clean);
        assert!(text.starts_with("exited without answering its soft stop"), "{text}");
        let (text, clean) = adopted_exit(&SoftStopState::default(), false);
        assert!(!clean);
        assert!(text.starts_with("exited (exit status unknown"), "{text}");
    }
}
