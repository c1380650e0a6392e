//! What the fleet shows: the service manager's status line, the status
//! and worker listing clients ask for, and the runtime file a later
//! corrald adopts from.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use super::group::GroupPhase;
use super::slot::SlotState;
use super::Fleet;
use crate::config::ScopeMode;
use crate::proto;
use crate::sanitise::sanitise;
use crate::supervisor::runtime::RuntimeWorker;
use crate::target::SlotKey;
use crate::usage::sampler::{Snapshot, Subject, Usage};
use crate::usage::OwnCgroup;

/// The status line for the service manager, and whether startup has
/// settled (every group ready, stopped, failed, or blocked by a failed
/// one): the moment for READY=1.
#[derive(Debug, PartialEq, Eq)]
pub struct FleetLine {
    pub text: String,
    pub settled: bool,
}

impl<H> Fleet<H> {
    /// `scopes`: whether workers are placed in scopes; `dropped`: output
    /// lines dropped so far.
    pub fn line(&self, scopes: bool, dropped: u64) -> FleetLine {
        let (mut desired, mut ready, mut live_scopes) = (0, 0, 0);
        let mut failed = Vec::new();
        let mut settled = true;
        for g in self.groups.values().filter(|g| g.phase != GroupPhase::Removing) {
            desired += g.desired;
            ready += g.ready_workers();
            let running = g.running();
            live_scopes += match g.config.scope {
                ScopeMode::Group => u32::from(running > 0),
                ScopeMode::Worker => running,
            };
            if matches!(g.phase, GroupPhase::Failed { .. }) {
                failed.push(g.name());
            }
            // A group waiting on a failed one will not start by itself.
            let blocked = g
                .config
                .after
                .iter()
                .any(|d| self.groups.get(d).is_some_and(|d| matches!(d.phase, GroupPhase::Failed { .. })));
            settled &= g.settled(blocked);
        }
        let mut text = if self.shutting_down {
            format!("shutting down: {} workers left", self.running())
        } else if scopes {
            let noun = if live_scopes == 1 { "scope" } else { "scopes" };
            format!("{ready}/{desired} workers ready in {live_scopes} {noun}")
        } else {
            format!("{ready}/{desired} workers ready (no scopes)")
        };
        if !failed.is_empty() {
            text.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        if dropped > 0 {
            text.push_str(&format!("; {dropped} output lines dropped"));
        }
        FleetLine { text, settled: settled && !self.shutting_down }
    }

    /// `usage`: the last reading of each worker.
    pub fn group_statuses(&self, usage: &Snapshot) -> Vec<proto::GroupStatus> {
        self.groups
            .values()
            .map(|g| {
                let count = |f: &dyn Fn(&SlotState<H>) -> bool| g.slots.values().filter(|s| f(&s.state)).count() as u32;
                let (state, reason) = g.shown();
                proto::GroupStatus {
                    name: g.name().to_string(),
                    state: state.into(),
                    desired: g.desired,
                    running: g.running(),
                    ready: g.ready_workers(),
                    stopped: count(&|s| matches!(s, SlotState::Stopped { .. })),
                    failed: count(&|s| matches!(s, SlotState::Failed)),
                    reason,
                    usage: group_usage(
                        g.slots.iter().filter_map(|(index, s)| shown_usage(usage, &g.key(*index), &s.state)),
                    ),
                }
            })
            .collect()
    }

    /// Every worker, or one group's (`only`), with its last reading.
    pub fn workers(&self, only: &str, usage: &Snapshot) -> Result<Vec<proto::WorkerInfo>, String> {
        if !only.is_empty() && !self.groups.contains_key(only) {
            return Err(format!("no group named \"{}\"", sanitise(only)));
        }
        let groups = self.groups.values().filter(|g| only.is_empty() || g.name() == only);
        Ok(groups
            .flat_map(|g| {
                g.slots.iter().map(move |(index, s)| {
                    let proc = s.state.proc();
                    proto::WorkerInfo {
                        id: g.key(*index).id(),
                        group: g.name().to_string(),
                        pid: proc.map_or(0, |p| p.pid),
                        state: s.state.name().into(),
                        started_at_ms: proc
                            .and_then(|p| p.started_at.duration_since(UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_millis() as u64),
                        restarts: s.restarts,
                        last_exit: s.last_exit.clone(),
                        output_dropped: s.output_dropped.load(Ordering::Relaxed),
                        health: proc.map(|p| p.health.listed()).unwrap_or_default(),
                        usage: shown_usage(usage, &g.key(*index), &s.state).map(worker_usage),
                    }
                })
            })
            .collect())
    }

    /// The running workers, for the usage sampler: with their own cgroup
    /// when `scopes` places them in one (the scope of a worker scope, the
    /// worker's leaf in a group scope).
    pub fn usage_subjects(&self, scopes: bool) -> Vec<Subject> {
        self.groups
            .values()
            .flat_map(|g| {
                g.slots.iter().filter_map(move |(index, slot)| {
                    let proc = slot.state.proc()?;
                    let key = g.key(*index);
                    let own = scopes.then(|| OwnCgroup {
                        unit: g.scope_unit(*index),
                        leaf: (g.config.scope == ScopeMode::Group).then(|| key.id()),
                    });
                    Some(Subject { key, pid: proc.pid, start_time: proc.start_time, own })
                })
            })
            .collect()
    }

    /// The running workers as the runtime file records them.
    pub fn runtime_workers(&self, scopes: bool) -> Vec<RuntimeWorker> {
        self.groups
            .values()
            .flat_map(|g| {
                g.slots.iter().filter_map(move |(index, slot)| {
                    let proc = slot.state.proc()?;
                    Some(RuntimeWorker {
                        id: g.key(*index).id(),
                        group: g.name().to_string(),
                        index: *index,
                        generation: proc.generation,
                        pid: proc.pid,
                        start_time: proc.start_time,
                        scope: scopes.then(|| g.scope_unit(*index)),
                        direct_output: proc.direct_output,
                    })
                })
            })
            .collect()
    }
}

/// A slot's last reading, if it is of the process the slot holds now.
fn shown_usage<'a, H>(usage: &'a Snapshot, key: &SlotKey, state: &SlotState<H>) -> Option<&'a Usage> {
    let pid = state.proc()?.pid;
    usage.get(key).filter(|u| u.pid == pid)
}

fn worker_usage(u: &Usage) -> proto::ResourceUsage {
    let r = &u.reading;
    proto::ResourceUsage {
        source: r.source.name().into(),
        cpu_percent: u.cpu_percent,
        cpu_time_us: r.cpu_us,
        memory_bytes: r.memory,
        memory_peak_bytes: r.memory_peak,
        tasks: r.tasks,
        workers: 1,
    }
}

/// The sums over a group's readings; a figure some worker lacks is left
/// out of the sum rather than undercounted, and no reading gives none.
fn group_usage<'a>(readings: impl Iterator<Item = &'a Usage>) -> Option<proto::ResourceUsage> {
    let mut sum: Option<proto::ResourceUsage> = None;
    for u in readings {
        let w = worker_usage(u);
        let Some(s) = sum.as_mut() else {
            sum = Some(proto::ResourceUsage { memory_peak_bytes: None, ..w });
            continue;
        };
        if s.source != w.source {
            s.source = "mixed".into();
        }
        s.cpu_percent = s.cpu_percent.zip(w.cpu_percent).map(|(a, b)| a + b);
        s.cpu_time_us = s.cpu_time_us.saturating_add(w.cpu_time_us);
        s.memory_bytes = s.memory_bytes.saturating_add(w.memory_bytes);
        s.tasks = s.tasks.zip(w.tasks).map(|(a, b)| a.saturating_add(b));
        s.workers += 1;
    }
    sum
}
