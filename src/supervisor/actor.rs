//! The actor: the messages it takes, the handle that sends them, and the
//! run loop that takes them in batches and carries out what the fleet
//! decides.

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::fanout::{OpEvent, OpSink};
use super::fleet::{AwaitStep, CheckKind};
use super::process::ProcEvent;
use super::requests::Request;
use super::state::SavedState;
use super::{process, Ending, Reply, Supervisor};
use crate::config::Config;
use crate::proto::{self, event::Kind, FailureKind};
use crate::systemd::PlaceError;
use crate::target::SlotKey;

/// Messages to the supervisor actor, by who sends them.
pub enum Msg {
    /// A client's request, from the command socket.
    Request { request: Request, reply: Reply },
    /// From a worker's process task.
    Process { key: SlotKey, generation: u64, event: ProcEvent },
    /// From a placement task.
    Placement(Placement),
    /// From a timer, or the actor's own pacing.
    Timer(Timer),
    /// From an orchestration task (a request that takes time).
    Orchestrate(Orchestration),
    /// corrald's own life: leaving the run loop.
    Lifecycle(Lifecycle),
}

pub enum Placement {
    /// A gated worker's placement is settled (its gate opened, or dropped
    /// after a failure): one fewer child waits.
    Settled,
    /// systemd did not take a worker into its scope; it was never exec'd.
    Failed { key: SlotKey, generation: u64, error: PlaceError },
}

pub enum Timer {
    RestartDue {
        key: SlotKey,
        token: u64,
    },
    /// A group failed at its start limit is due to start again
    /// (`start_limit_retry`); `token` names the failure it retries.
    RetryDue {
        group: String,
        token: u64,
    },
    /// Fork more of the queued workers (see [`Supervisor::fork_queued`]).
    ForkMore,
}

pub enum Orchestration {
    /// Stop these slots, reporting to `op`; slots not running report at once.
    Stop { keys: Vec<SlotKey>, hard: bool, op: OpSink },
    /// Start these slots (creating missing ones); each reports to `waiter`
    /// as finished when ready, or why it is not.
    Start { keys: Vec<SlotKey>, waiter: OpSink },
    /// Report to `waiter` when these slots are ready, without starting
    /// them: their group starts in its own time (after its dependencies).
    AwaitReady { keys: Vec<SlotKey>, waiter: OpSink },
    /// A group has been drained for removal by a reload.
    ForgetGroup(String),
    /// The config file was read (off the actor) for a reload. Boxed: a
    /// config is large, and every message is as large as the largest.
    Reloaded { loaded: Box<Result<Config, String>>, reply: Reply },
    /// A state file was read (off the actor) for a `load-state`.
    ApplyState { saved: SavedState, path: PathBuf, reply: Reply },
    /// The new binary passed its check: answer, and let corrald's main
    /// loop stop the socket before the run loop ends.
    UpgradeChecked { binary: PathBuf, reply: Reply },
}

pub enum Lifecycle {
    /// The final step of a shutdown: leave the run loop.
    Exit { clean: bool },
    /// The service manager restarts corrald: leave the run loop with every
    /// worker running, for the next corrald to adopt.
    Handover,
    /// The socket is quiet: end the run loop for the upgrade.
    Release,
    /// Test builds only: block the run loop for good, so that the service
    /// manager's watchdog can be seen to fire.
    #[cfg(feature = "fault-injection")]
    Wedge,
}

/// The way into the supervisor, for the command socket and for
/// orchestration tasks.
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
}

impl Handle {
    /// Submits a request from a client; responses go to `reply`.
    pub fn request(&self, request: Request, reply: Reply) {
        self.send(Msg::Request { request, reply });
    }

    pub fn handover(&self) {
        self.send(Msg::Lifecycle(Lifecycle::Handover));
    }

    /// Ends the run loop of an upgrade, once the socket is quiet.
    pub fn release(&self) {
        self.send(Msg::Lifecycle(Lifecycle::Release));
    }

    #[cfg(feature = "fault-injection")]
    pub fn wedge(&self) {
        self.send(Msg::Lifecycle(Lifecycle::Wedge));
    }

    pub(super) fn orchestrate(&self, what: Orchestration) {
        self.send(Msg::Orchestrate(what));
    }

    pub(super) fn exit(&self, clean: bool) {
        self.send(Msg::Lifecycle(Lifecycle::Exit { clean }));
    }

    pub(super) fn send(&self, msg: Msg) {
        // Only a supervisor that has ended drops its receiver, and then
        // nothing is left to tell.
        let _ = self.tx.send(msg);
    }
}

/// A ping's or liveness probe's result: at most it condemns a worker,
/// which changes nothing shown until the worker exits, so a thousand
/// workers' pings do not each cost a look over the whole fleet.
fn routine_check(msg: &Msg) -> bool {
    matches!(msg, Msg::Process { event: ProcEvent::Check { kind, .. }, .. } if *kind != CheckKind::Readiness)
}

/// Messages handled before the runtime file and the status are brought up
/// to date.
pub(super) const BATCH: usize = 256;

impl Supervisor {
    /// Starts the groups whose dependencies allow it, then serves until a
    /// shutdown, a hand-over or an upgrade ends the loop.
    pub async fn run(mut self) -> Ending {
        self.tell_corrald("starting");
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
                self.tell_group_states();
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
                quiet &= matches!(&msg, Msg::Request { request, .. } if request.read_only()) || routine_check(&msg);
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
        // What an operator or an orchestration changes is the fleet's
        // shape, which the runtime file keeps for a restarted corrald.
        if matches!(&msg, Msg::Orchestrate(_)) || matches!(&msg, Msg::Request { request, .. } if !request.read_only()) {
            self.runtime_dirty = true;
        }
        match msg {
            Msg::Request { request, reply } => self.on_request(request, reply),
            Msg::Process { key, generation, event } => self.on_process_event(key, generation, event),
            Msg::Placement(Placement::Settled) => self.gated = self.gated.saturating_sub(1),
            Msg::Placement(Placement::Failed { key, generation, error }) => {
                self.tell(&key, Kind::Failed(proto::WorkerFailed { reason: error.error.clone() }));
                if error.lost {
                    tracing::warn!(worker = %key, "not started: {}; not counted toward the start limit", error.error);
                } else {
                    tracing::error!(worker = %key, "not started: {}", error.error);
                }
                self.fleet.set_placement_error(&key, generation, error);
            }
            Msg::Timer(Timer::RestartDue { key, token }) => {
                self.fleet.restart_due(&key, token);
            }
            Msg::Timer(Timer::RetryDue { group, token }) => {
                if let Some(workers) = self.fleet.retry_due(&group, token) {
                    tracing::info!(%group, workers, "starting the group again after its start limit (start_limit_retry)");
                }
            }
            Msg::Timer(Timer::ForkMore) => self.fork_more_sent = false,
            Msg::Orchestrate(what) => self.on_orchestration(what),
            Msg::Lifecycle(what) => return self.on_lifecycle(what),
        }
        None
    }

    fn on_orchestration(&mut self, what: Orchestration) {
        match what {
            Orchestration::Stop { keys, hard, op } => self.stop_slots(keys, hard, op),
            Orchestration::Start { keys, waiter } => self.start_slots(keys, waiter),
            Orchestration::AwaitReady { keys, waiter } => {
                for key in keys {
                    match self.fleet.await_ready(&key) {
                        AwaitStep::Ready => {
                            let _ = waiter.send(OpEvent::Finished(key.id(), Ok(())));
                        }
                        AwaitStep::Wait => self.waiters.entry(key).or_default().push(waiter.clone()),
                        AwaitStep::Gone => {
                            let why = "removed before it was ready".to_string();
                            let _ = waiter.send(OpEvent::Finished(key.id(), Err((FailureKind::Failed, why))));
                        }
                    }
                }
            }
            Orchestration::ForgetGroup(name) => self.fleet.forget(&name),
            Orchestration::Reloaded { loaded, reply } => self.reloaded(*loaded, reply),
            Orchestration::ApplyState { saved, path, reply } => self.apply_state(saved, &path, reply),
            Orchestration::UpgradeChecked { binary, reply } => self.upgrade_checked(binary, reply),
        }
    }

    fn on_lifecycle(&mut self, what: Lifecycle) -> Option<Ending> {
        match what {
            // The runtime file is made current before corrald leaves.
            Lifecycle::Exit { clean } => {
                self.persist_now();
                // The last word on the groups, drained, before the stream ends.
                self.tell_group_states();
                self.events.close();
                Some(Ending::Shutdown { clean })
            }
            Lifecycle::Handover => {
                self.tell_corrald("restarting");
                self.events.close();
                self.persist_now();
                self.notifier.stopping();
                let workers = self.fleet.running();
                tracing::info!(workers, "restart: leaving the workers running for the next corrald");
                Some(Ending::Handover)
            }
            Lifecycle::Release => {
                let binary = self.upgrading.take()?;
                let fds = self.fleet.procs().flat_map(|(_, p)| process::export(&p.handle.shared)).collect();
                self.persist_now();
                Some(Ending::Upgrade { binary, fds })
            }
            #[cfg(feature = "fault-injection")]
            Lifecycle::Wedge => {
                tracing::warn!("fault injection: the run loop blocks for good");
                loop {
                    std::thread::park();
                }
            }
        }
    }
}
