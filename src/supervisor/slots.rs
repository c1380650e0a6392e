//! Carrying out the fleet's decisions about slots: forks (paced), their
//! placement in scopes, the events of worker processes, restarts after
//! their delay, and the stops and starts orchestrations ask for.

use tokio::time::Instant;

use super::actor::{Msg, Placement, Timer};
use super::events::signal_name;
use super::fanout::{OpEvent, OpSink};
use super::fleet::{AfterExit, Exited, Proc, StartStep, StopStep};
use super::health::{HealthNotice, NoticeStage};
use super::launch::OutputRoute;
use super::process::{self, ProcCmd, ProcEvent};
use super::{ProcIo, Supervisor};
use crate::config::{OutputMode, ScopeMode};
use crate::proto::{self, event::Kind, FailureKind};
use crate::systemd;
use crate::target::SlotKey;

/// Forks per turn of the actor: a fork of corrald costs a fraction of a
/// millisecond, so a turn stays within a few.
const FORKS_PER_TURN: usize = 16;

/// Children waiting at their gate at once: enough to keep systemd's
/// placement window busy.
const MAX_GATED: usize = 32;

impl Supervisor {
    /// Starts the groups whose dependencies are now ready.
    pub(super) fn start_waiting_groups(&mut self) {
        for (group, workers) in self.fleet.start_waiting_groups() {
            tracing::info!(%group, workers, "starting group");
        }
    }

    /// Forks queued slots, a few per turn and no more than [`MAX_GATED`]
    /// waiting at their gates, and asks for another turn while some are
    /// left: requests in between are answered at once.
    pub(super) fn fork_queued(&mut self) {
        let mut forked = 0;
        while forked < FORKS_PER_TURN {
            if self.systemd.is_some() && self.gated >= MAX_GATED {
                // `Placement::Settled` brings the next turn.
                return;
            }
            let Some(key) = self.fleet.next_to_fork() else { break };
            self.fork_slot(&key);
            forked += 1;
        }
        if self.fleet.fork_queue_len() > 0 && !self.fork_more_sent {
            self.fork_more_sent = true;
            self.handle.send(Msg::Timer(Timer::ForkMore));
        }
    }

    /// Forks a process for a slot and, with scopes, starts its placement.
    fn fork_slot(&mut self, key: &SlotKey) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let Some(group) = self.fleet.group(&key.group) else { return };
        let Some(slot) = group.slots.get(&key.index) else { return };
        let config = group.config.clone();
        let route = if config.output == OutputMode::Journal && self.journal_streams {
            OutputRoute::Journal
        } else {
            OutputRoute::Pipes
        };
        let plumbing = process::Plumbing {
            output: &self.output,
            dropped: slot.output_dropped.clone(),
            store: &self.notifier,
            scoped: self.systemd.is_some(),
        };
        let events = self.handle.tx.clone();
        let gated = self.systemd.is_some();
        let spawned = match process::spawn(&config, &key.id(), key.clone(), generation, events, gated, route, plumbing)
        {
            Ok(spawned) => spawned,
            Err(e) => {
                tracing::warn!(worker = %key, command = %config.command, "failed to start: {e}");
                self.tell(key, Kind::Failed(proto::WorkerFailed { reason: format!("failed to start: {e}") }));
                // Out of descriptors, processes or memory is corrald's
                // plight, not the worker's (see `Fleet::fork_failed`).
                let transient = matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::EAGAIN | nix::libc::ENOMEM)
                );
                let next = self.fleet.fork_failed(key, e.to_string(), transient, Instant::now());
                self.after_exit(key, next);
                return;
            }
        };
        tracing::debug!(worker = %key, pid = spawned.pid, "spawned");
        self.tell(key, Kind::Spawned(proto::WorkerSpawned { pid: spawned.pid, adopted: false }));
        if let (Some(gate), Some(sd)) = (spawned.gate, &self.systemd) {
            let placement = systemd::Placement {
                unit: group.scope_unit(key.index),
                description: match config.scope {
                    ScopeMode::Group => format!("corral worker group {}", key.group),
                    ScopeMode::Worker => format!("corral worker {key}"),
                },
                slice: self.config.slice.clone(),
                leaf: (config.scope == ScopeMode::Group).then(|| key.id()),
                properties: group.properties(),
            };
            self.gated += 1;
            let (sd, handle, key, pid) = (sd.clone(), self.handle.clone(), key.clone(), spawned.pid);
            let events = self.events.clone();
            tokio::spawn(async move {
                let asked = std::time::Instant::now();
                match sd.place(pid, &placement).await {
                    Ok(note) => {
                        crate::metrics::PLACEMENT_SECONDS.observe(asked.elapsed());
                        if let Some(note) = note {
                            tracing::info!(worker = %key, "{note}");
                        }
                        let placed = proto::WorkerPlaced { pid, unit: placement.unit.clone() };
                        events.emit(&key.group, &key.id(), Kind::Placed(placed));
                        gate.open();
                    }
                    Err(error) => {
                        drop(gate);
                        handle.send(Msg::Placement(Placement::Failed { key, generation, error }));
                    }
                }
                handle.send(Msg::Placement(Placement::Settled));
            });
        }
        let proc = Proc {
            generation,
            pid: spawned.pid,
            start_time: crate::procfs::start_time(spawned.pid).unwrap_or(0),
            started_at: spawned.started_at,
            direct_output: route == OutputRoute::Journal,
            started: Instant::now(),
            placement_error: None,
            health: Default::default(),
            handle: ProcIo { tx: spawned.tx, shared: spawned.shared },
        };
        self.fleet.forked(key, proc);
        self.runtime_dirty = true;
    }

    pub(super) fn on_process_event(&mut self, key: SlotKey, generation: u64, event: ProcEvent) {
        match event {
            ProcEvent::Ready => {
                let Some(pid) = self.fleet.proc(&key, generation).map(|p| p.pid) else { return };
                if self.fleet.mark_ready(&key, generation) {
                    // Told before the waiting requests hear it, so that their
                    // answers, and their events, come after it.
                    self.tell(&key, Kind::Ready(proto::WorkerReady { pid }));
                    self.finish_waiters(&key, Ok(()));
                    tracing::debug!(worker = %key, pid, "ready");
                    self.start_waiting_groups();
                }
            }
            ProcEvent::StopAbandoned => self.fleet.stop_abandoned(&key, generation),
            ProcEvent::Check { kind, result } => self.on_check(key, generation, kind, result),
            ProcEvent::Exited { description, clean, status } => {
                let pid = self.fleet.proc(&key, generation).map(|p| p.pid);
                let Some(pid) = pid else { return };
                tracing::info!(worker = %key, pid, "{description}");
                let exited = proto::WorkerExited {
                    pid,
                    description: description.clone(),
                    code: status.and_then(|s| s.code()),
                    signal: status.and_then(signal_name).unwrap_or_default(),
                };
                self.tell(&key, Kind::Exited(exited));
                self.counted.exit(&key.group, status);
                let Some(Exited { proc, described, next }) =
                    self.fleet.exited(&key, generation, description, clean, Instant::now())
                else {
                    return;
                };
                // In a shutdown the manager empties the store itself when
                // corrald stops; a removal each would only hold it up.
                if !self.fleet.shutting_down() {
                    for (name, _) in &proc.handle.shared {
                        self.notifier.remove_fds(name);
                    }
                }
                self.runtime_dirty = true;
                self.release_leaf(&key);
                self.finish_waiters(&key, Err(format!("{described} before it was ready")));
                if let AfterExit::Restart { .. } = next {
                    self.counted.restart(&key.group, proc.health.condemned.is_some());
                }
                if let Some(reason) = proc.health.condemned {
                    let how = format!("{described}; {}", next.describe());
                    let stage = NoticeStage::Exited { how };
                    self.notify_health(HealthNotice { group: key.group.clone(), worker: key.id(), pid, reason, stage });
                }
                self.after_exit(&key, next);
            }
        }
    }

    /// A group scope's leaf sub-cgroup of an exited worker goes with it.
    fn release_leaf(&self, key: &SlotKey) {
        let (Some(sd), Some(group)) = (&self.systemd, self.fleet.group(&key.group)) else { return };
        if group.config.scope == ScopeMode::Group {
            sd.release_leaf(&group.scope_unit(key.index), &key.id());
        }
    }

    /// Carries out what follows an exit: a restart timer, a log line, the
    /// timer of a failed group's retry.
    fn after_exit(&mut self, key: &SlotKey, next: AfterExit) {
        match next {
            AfterExit::Stopped => self.start_waiting_groups(),
            AfterExit::Down => {}
            AfterExit::GroupFailed { reason, retry: None } => {
                tracing::error!(group = %key.group, "{reason}; the group is marked failed");
                self.tell(key, Kind::Failed(proto::WorkerFailed { reason }));
            }
            AfterExit::GroupFailed { reason, retry: Some((delay, token)) } => {
                self.tell(key, Kind::Failed(proto::WorkerFailed { reason: reason.clone() }));
                let after = humantime::format_duration(delay);
                tracing::error!(group = %key.group, "{reason}; the group is marked failed and starts again in {after}");
                let (handle, group) = (self.handle.clone(), key.group.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    handle.send(Msg::Timer(Timer::RetryDue { group, token }));
                });
            }
            AfterExit::Restart { delay, token } => {
                tracing::info!(worker = %key, "restarting in {}", humantime::format_duration(delay));
                let delay_ms = delay.as_millis() as u64;
                self.tell(key, Kind::RestartScheduled(proto::RestartScheduled { delay_ms }));
                let (handle, key) = (self.handle.clone(), key.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    handle.send(Msg::Timer(Timer::RestartDue { key, token }));
                });
            }
        }
    }

    /// Tells whoever waits for a slot to be ready how that ended.
    fn finish_waiters(&mut self, key: &SlotKey, result: Result<(), String>) {
        for waiter in self.waiters.remove(key).unwrap_or_default() {
            let result = result.clone().map_err(|detail| (FailureKind::Failed, detail));
            let _ = waiter.send(OpEvent::Finished(key.id(), result));
        }
    }

    pub(super) fn stop_slots(&mut self, keys: Vec<SlotKey>, hard: bool, op: OpSink) {
        for key in keys {
            let id = key.id();
            match self.fleet.stop(&key) {
                StopStep::Signal(io) => {
                    let cmd = if hard { ProcCmd::HardStop(op.clone()) } else { ProcCmd::SoftStop(op.clone()) };
                    if io.tx.send(cmd).is_err() {
                        let _ = op.send(OpEvent::Finished(id, Err((FailureKind::Died, "worker task is gone".into()))));
                    }
                }
                StopStep::StoppedNow => {
                    self.finish_waiters(&key, Err("stopped before it was ready".into()));
                    let _ = op.send(OpEvent::Finished(id, Ok(())));
                    self.start_waiting_groups();
                }
                StopStep::Absent => {
                    let _ = op.send(OpEvent::Finished(id, Ok(())));
                }
            }
        }
    }

    pub(super) fn start_slots(&mut self, keys: Vec<SlotKey>, waiter: OpSink) {
        for key in keys {
            match self.fleet.start(&key) {
                StartStep::AlreadyReady => {
                    let _ = waiter.send(OpEvent::Finished(key.id(), Ok(())));
                }
                StartStep::Wait => self.waiters.entry(key).or_default().push(waiter.clone()),
                StartStep::Refused(why) => {
                    let _ = waiter.send(OpEvent::Finished(key.id(), Err((FailureKind::Failed, why.to_string()))));
                }
            }
        }
    }
}
