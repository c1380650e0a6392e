//! The fleet: every group and slot as plain data, and the rules that move
//! them. It does no I/O: it never forks, signals, sleeps or writes. Each
//! decision returns what the actor must do (fork this slot, stop that
//! process, restart this one after a delay), so the rules are tested here
//! with plain values, and the actor ([`super::Supervisor`]) only carries
//! them out.

mod changes;
mod group;
mod health;
mod report;
mod restart;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{dependency_layers, Config, GroupConfig};
use crate::sanitise::sanitise;
use crate::systemd::PlaceError;
use crate::target::{SlotKey, Target};

pub use changes::{restart_notes, ReloadPlan, ScalePlan};
pub use group::{Group, GroupPhase};
pub use health::{CheckKind, CheckResult, HealthStep};
pub use slot::{Proc, Slot, SlotState};

/// What follows an exit or a failed start.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// It was asked to stop, or corrald or its group is going: it stays
    /// down.
    Stopped,
    /// Its restart policy leaves it down (stopped or failed).
    Down,
    /// A slot of its group hit its start limit, so the group is now
    /// failed, for `reason`; with `start_limit_retry`, a timer reporting
    /// `token` after `delay` starts it again.
    GroupFailed { reason: String, retry: Option<(Duration, u64)> },
    /// Restart it after `delay`: the timer then reports `token`.
    Restart { delay: Duration, token: u64 },
}

impl AfterExit {
    /// What follows, in words, for a record.
    pub fn describe(&self) -> String {
        match self {
            AfterExit::Stopped => "not restarted: it was being stopped".into(),
            AfterExit::Down => "not restarted: its restart policy leaves it down".into(),
            AfterExit::GroupFailed { reason, .. } => format!("not restarted: {reason}"),
            AfterExit::Restart { delay, .. } => format!("restarting in {}", humantime::format_duration(*delay)),
        }
    }
}

/// A slot's process has exited.
#[derive(Debug)]
pub struct Exited<H> {
    pub proc: Proc<H>,
    /// How the exit is shown (also the slot's `last_exit`).
    pub described: String,
    pub next: AfterExit,
}

/// What stopping one slot takes.
pub enum StopStep<'a, H> {
    /// Its process must be told (the slot is now stopping).
    Signal(&'a H),
    /// It was not running: it is stopped now, nothing to drain. Whoever
    /// waited for it to be ready will not see that.
    StoppedNow,
    /// No such slot (any more): nothing to do.
    Absent,
}

/// What starting one slot takes.
#[derive(Debug, PartialEq, Eq)]
pub enum StartStep {
    AlreadyReady,
    /// It is starting (now, or was already): wait for it to be ready.
    Wait,
    Refused(&'static str),
}

/// Whether a slot someone waits for is ready.
#[derive(Debug, PartialEq, Eq)]
pub enum AwaitStep {
    Ready,
    Wait,
    Gone,
}

#[derive(Debug)]
pub struct Fleet<H> {
    groups: BTreeMap<String, Group<H>>,
    /// Slots to fork, in order (the actor paces the forks).
    fork_queue: VecDeque<SlotKey>,
    /// Names the next backoff timer.
    next_token: u64,
    /// A soft shutdown has begun: nothing starts or restarts any more.
    shutting_down: bool,
}

impl<H> Fleet<H> {
    pub fn new(config: &Config) -> Fleet<H> {
        let mut fleet =
            Fleet { groups: BTreeMap::new(), fork_queue: VecDeque::new(), next_token: 0, shutting_down: false };
        for g in config.groups.values() {
            fleet.add_group(g.clone());
        }
        fleet
    }

    pub fn add_group(&mut self, config: GroupConfig) {
        self.groups.insert(config.name.clone(), Group::new(config));
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group<H>> {
        self.groups.values()
    }

    pub fn group(&self, name: &str) -> Option<&Group<H>> {
        self.groups.get(name)
    }

    pub fn group_mut(&mut self, name: &str) -> Option<&mut Group<H>> {
        self.groups.get_mut(name)
    }

    pub fn slot(&self, key: &SlotKey) -> Option<&Slot<H>> {
        self.groups.get(&key.group)?.slots.get(&key.index)
    }

    pub fn slot_mut(&mut self, key: &SlotKey) -> Option<&mut Slot<H>> {
        self.groups.get_mut(&key.group)?.slots.get_mut(&key.index)
    }

    /// The process of a slot, if it is this generation's.
    pub fn proc(&self, key: &SlotKey, generation: u64) -> Option<&Proc<H>> {
        self.slot(key)?.state.proc().filter(|p| p.generation == generation)
    }

    pub fn procs(&self) -> impl Iterator<Item = (SlotKey, &Proc<H>)> {
        self.groups.values().flat_map(|g| g.slots.iter().filter_map(|(i, s)| Some((g.key(*i), s.state.proc()?))))
    }

    /// How many worker processes are running.
    pub fn running(&self) -> usize {
        self.procs().count()
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// From now on nothing starts or restarts; `false` if a shutdown had
    /// already begun.
    pub fn begin_shutdown(&mut self) -> bool {
        !std::mem::replace(&mut self.shutting_down, true)
    }

    /// Starts every waiting group whose dependencies are ready, and the
    /// groups that this makes startable in turn. Returns each started group
    /// with how many workers it queued.
    pub fn start_waiting_groups(&mut self) -> Vec<(String, usize)> {
        let mut started = Vec::new();
        if self.shutting_down {
            return started;
        }
        loop {
            let startable: Vec<String> = self
                .groups
                .values()
                .filter(|g| g.phase == GroupPhase::Waiting)
                .filter(|g| g.config.after.iter().all(|d| self.groups.get(d).map_or(true, Group::ready)))
                .map(|g| g.name().to_string())
                .collect();
            if startable.is_empty() {
                return started;
            }
            for name in startable {
                let Some(group) = self.groups.get_mut(&name) else { continue };
                group.phase = GroupPhase::Active;
                let keys: Vec<SlotKey> = group
                    .slots
                    .iter()
                    .filter(|(_, s)| matches!(s.state, SlotState::Waiting))
                    .map(|(i, _)| group.key(*i))
                    .collect();
                started.push((name, keys.len()));
                for key in keys {
                    self.queue(&key);
                }
            }
        }
    }

    /// Puts a slot in the fork queue: it is starting from now on.
    pub fn queue(&mut self, key: &SlotKey) {
        let Some(slot) = self.slot_mut(key) else { return };
        if matches!(slot.state, SlotState::Queued) {
            return;
        }
        slot.state = SlotState::Queued;
        self.fork_queue.push_back(key.clone());
    }

    /// The next slot to fork, skipping those stopped or removed while they
    /// waited. It stays queued until [`Self::forked`] or
    /// [`Self::fork_failed`].
    pub fn next_to_fork(&mut self) -> Option<SlotKey> {
        while let Some(key) = self.fork_queue.pop_front() {
            if self.slot(&key).is_some_and(|s| matches!(s.state, SlotState::Queued)) {
                return Some(key);
            }
        }
        None
    }

    pub fn fork_queue_len(&self) -> usize {
        self.fork_queue.len()
    }

    pub fn forked(&mut self, key: &SlotKey, proc: Proc<H>) {
        if let Some(slot) = self.slot_mut(key) {
            slot.state = SlotState::Starting(proc);
        }
    }

    /// A fork failed: like a crash at once, except that a failure for want
    /// of resources (`transient`) is corrald's plight, not the worker's, so
    /// it is retried with backoff whatever the policy and never counts
    /// toward the start limit.
    pub fn fork_failed(&mut self, key: &SlotKey, error: String, transient: bool, now: Instant) -> AfterExit {
        let Some(slot) = self.slot_mut(key) else { return AfterExit::Stopped };
        slot.last_exit = format!("failed to start: {error}");
        self.settle(key, false, false, Duration::ZERO, !transient, now)
    }

    /// A worker of an earlier corrald fills this slot: it counts as ready,
    /// and its group as started.
    pub fn adopted(&mut self, key: &SlotKey, proc: Proc<H>) {
        let Some(group) = self.groups.get_mut(&key.group) else { return };
        if group.phase == GroupPhase::Waiting {
            group.phase = GroupPhase::Active;
        }
        if let Some(slot) = group.slots.get_mut(&key.index) {
            slot.state = SlotState::Ready(proc);
        }
    }

    /// The worker said it is ready (or its readiness delay passed); `false`
    /// when that is stale or it was not starting.
    pub fn mark_ready(&mut self, key: &SlotKey, generation: u64) -> bool {
        let Some(slot) = self.slot_mut(key) else { return false };
        if !matches!(&slot.state, SlotState::Starting(p) if p.generation == generation) {
            return false;
        }
        if let Some(p) = slot.take_proc(SlotState::Waiting) {
            slot.state = SlotState::Ready(p);
        }
        true
    }

    /// A soft stop ran past its timeout and the group says to leave the
    /// worker running: it is back under normal supervision, as ready.
    pub fn stop_abandoned(&mut self, key: &SlotKey, generation: u64) {
        let Some(slot) = self.slot_mut(key) else { return };
        if slot.state.proc().is_some_and(|p| p.generation == generation) {
            if let Some(p) = slot.take_proc(SlotState::Waiting) {
                slot.state = SlotState::Ready(p);
            }
        }
    }

    /// Takes in a check result of a slot's process: the one place a
    /// ping's or probe's outcome is recorded, and where it is judged.
    pub fn record_check(
        &mut self,
        key: &SlotKey,
        generation: u64,
        kind: CheckKind,
        result: CheckResult,
        at: std::time::SystemTime,
    ) -> HealthStep {
        let shutting_down = self.shutting_down;
        let Some(group) = self.groups.get_mut(&key.group) else { return HealthStep::Nothing };
        let cfg = &group.config;
        let Some(slot) = group.slots.get_mut(&key.index) else { return HealthStep::Nothing };
        let (proc, stopping, starting) = match &mut slot.state {
            SlotState::Starting(p) => (p, false, true),
            SlotState::Ready(p) => (p, false, false),
            SlotState::Stopping(p) => (p, true, false),
            _ => return HealthStep::Nothing,
        };
        if proc.generation != generation {
            return HealthStep::Nothing;
        }
        let passed = result == CheckResult::Pass;
        let last = match &result {
            CheckResult::Pass => String::new(),
            CheckResult::Fail(why) => why.clone(),
        };
        let failures = proc.health.record(kind, result, at);
        if kind == CheckKind::Readiness {
            return if passed && starting { HealthStep::Ready } else { HealthStep::Nothing };
        }
        if stopping || shutting_down || proc.health.condemned.is_some() {
            return HealthStep::Nothing;
        }
        match health::verdict(cfg, kind, failures, &last) {
            Some(reason) => {
                proc.health.condemned = Some(reason.clone());
                HealthStep::Condemn(reason)
            }
            None => HealthStep::Nothing,
        }
    }

    pub fn set_placement_error(&mut self, key: &SlotKey, generation: u64, error: PlaceError) {
        let Some(slot) = self.slot_mut(key) else { return };
        if let SlotState::Starting(p) | SlotState::Ready(p) | SlotState::Stopping(p) = &mut slot.state {
            if p.generation == generation {
                p.placement_error = Some(error);
            }
        }
    }

    /// A slot's process exited (`clean`: status 0) as `description` says;
    /// `None` if the event is stale.
    pub fn exited(
        &mut self,
        key: &SlotKey,
        generation: u64,
        description: String,
        clean: bool,
        now: Instant,
    ) -> Option<Exited<H>> {
        self.proc(key, generation)?;
        let slot = self.slot_mut(key)?;
        let was_stopping = matches!(slot.state, SlotState::Stopping(_));
        let proc = slot.take_proc(SlotState::Stopped { requested: was_stopping })?;
        let described = match (&proc.placement_error, &proc.health.condemned) {
            (Some(failed), _) => format!("never ran: {}", failed.error),
            (None, Some(why)) => format!("{why}; then {description}"),
            (None, None) => description,
        };
        // Stopped for its health, it failed whatever its status says.
        let clean = clean && proc.health.condemned.is_none();
        slot.last_exit = described.clone();
        let ran_for = now.saturating_duration_since(proc.started);
        // A placement the manager cut short (a re-exec, a bus restart) is
        // like a fork that failed for want of resources: retried whatever
        // the policy, and never counted toward the start limit.
        let lost = proc.placement_error.as_ref().is_some_and(|f| f.lost);
        let next = self.settle(key, was_stopping, clean && !lost, ran_for, !lost, now);
        Some(Exited { proc, described, next })
    }

    /// Decides what follows an exit or a failed start: nothing when it was
    /// asked to stop, otherwise the restart policy with exponential
    /// backoff, bounded by the slot's start limit. `counts`: whether it
    /// counts toward the start limit.
    fn settle(
        &mut self,
        key: &SlotKey,
        was_stopping: bool,
        clean: bool,
        ran_for: Duration,
        counts: bool,
        now: Instant,
    ) -> AfterExit {
        let shutting_down = self.shutting_down;
        let Some(group) = self.groups.get_mut(&key.group) else { return AfterExit::Stopped };
        let cfg = group.config.clone();
        let desired = group.desired;
        let removing = group.phase == GroupPhase::Removing;
        let failed = matches!(group.phase, GroupPhase::Failed { .. });
        let Some(slot) = group.slots.get_mut(&key.index) else { return AfterExit::Stopped };

        if was_stopping || shutting_down || removing {
            slot.state = SlotState::Stopped { requested: was_stopping };
            if key.index > desired {
                group.slots.remove(&key.index);
            }
            self.forget_if_drained(&key.group);
            return AfterExit::Stopped;
        }
        let restart = restart::policy_restarts(cfg.restart, clean);
        if failed || (counts && !restart) {
            slot.state = if clean { SlotState::Stopped { requested: false } } else { SlotState::Failed };
            return AfterExit::Down;
        }
        if counts && !slot.start_limit.admit(&cfg, now) {
            let reason = restart::StartLimit::reason(&cfg, &key.id());
            for s in group.slots.values_mut() {
                if matches!(s.state, SlotState::Backoff { .. } | SlotState::Queued) {
                    s.state = SlotState::Failed;
                }
            }
            if let Some(slot) = group.slots.get_mut(&key.index) {
                slot.state = SlotState::Failed;
            }
            let retry = cfg.start_limit_retry.map(|delay| {
                self.next_token += 1;
                (delay, self.next_token)
            });
            group.phase = GroupPhase::Failed { reason: reason.clone(), retry: retry.map(|(_, token)| token) };
            return AfterExit::GroupFailed { reason, retry };
        }
        slot.consecutive_failures = restart::failures_in_a_row(&cfg, slot.consecutive_failures, ran_for);
        let delay = restart::backoff(&cfg, slot.consecutive_failures);
        self.next_token += 1;
        slot.state = SlotState::Backoff { token: self.next_token };
        AfterExit::Restart { delay, token: self.next_token }
    }

    /// A restart delay has passed: queues the slot if it still waits for
    /// this very timer. Returns whether it did.
    pub fn restart_due(&mut self, key: &SlotKey, token: u64) -> bool {
        if self.shutting_down {
            return false;
        }
        let Some(group) = self.groups.get_mut(&key.group) else { return false };
        if matches!(group.phase, GroupPhase::Failed { .. }) {
            return false;
        }
        let Some(slot) = group.slots.get_mut(&key.index) else { return false };
        if !matches!(slot.state, SlotState::Backoff { token: t } if t == token) {
            return false;
        }
        slot.restarts += 1;
        self.queue(key);
        true
    }

    /// The timed retry of a group failed at its start limit is due: if the
    /// group is still failed by that very failure, it is active again with
    /// every start limit cleared, and each worker its policy would have
    /// restarted is queued (those stopped on request stay stopped).
    /// Returns how many it queued, or `None` if the timer is stale.
    pub fn retry_due(&mut self, name: &str, token: u64) -> Option<usize> {
        if self.shutting_down {
            return None;
        }
        let group = self.groups.get_mut(name)?;
        if !matches!(group.phase, GroupPhase::Failed { retry: Some(t), .. } if t == token) {
            return None;
        }
        group.phase = GroupPhase::Active;
        let policy = group.config.restart;
        let desired = group.desired;
        let mut keys = Vec::new();
        for (index, slot) in group.slots.iter_mut().filter(|(i, _)| **i <= desired) {
            slot.start_limit.clear();
            let restarts = match slot.state {
                SlotState::Failed => restart::policy_restarts(policy, false),
                SlotState::Stopped { requested: false } => restart::policy_restarts(policy, true),
                _ => false,
            };
            if restarts {
                slot.consecutive_failures = 0;
                slot.restarts += 1;
                keys.push(SlotKey::new(name, *index));
            }
        }
        for key in &keys {
            self.queue(key);
        }
        Some(keys.len())
    }

    /// Stops one slot: a running one is now stopping and its process must
    /// be told; one not running (queued, in backoff, failed) is stopped at
    /// once and no restart may follow.
    pub fn stop(&mut self, key: &SlotKey) -> StopStep<'_, H> {
        let Some(group) = self.groups.get_mut(&key.group) else { return StopStep::Absent };
        let desired = group.desired;
        let Some(slot) = group.slots.get_mut(&key.index) else { return StopStep::Absent };
        if let Some(p) = slot.take_proc(SlotState::Waiting) {
            slot.state = SlotState::Stopping(p);
            return match self.slot(key).and_then(|s| s.state.proc()) {
                Some(p) => StopStep::Signal(&p.handle),
                None => StopStep::Absent,
            };
        }
        slot.state = SlotState::Stopped { requested: true };
        if key.index > desired {
            group.slots.remove(&key.index);
        }
        self.forget_if_drained(&key.group);
        StopStep::StoppedNow
    }

    /// Starts one slot (creating it past the group's present slots). An
    /// explicit start is the operator's say-so: it clears a failed group
    /// and does not wait for the groups it starts after.
    pub fn start(&mut self, key: &SlotKey) -> StartStep {
        if self.shutting_down {
            return StartStep::Refused("corrald is shutting down");
        }
        let Some(group) = self.groups.get_mut(&key.group) else { return StartStep::Refused("no such group") };
        if group.phase != GroupPhase::Removing {
            group.phase = GroupPhase::Active;
        }
        let slot = group.slots.entry(key.index).or_insert_with(|| Slot::new(SlotState::Stopped { requested: false }));
        slot.start_limit.clear();
        match slot.state {
            SlotState::Ready(_) => StartStep::AlreadyReady,
            SlotState::Starting(_) | SlotState::Queued => StartStep::Wait,
            SlotState::Stopping(_) => StartStep::Refused("still stopping"),
            SlotState::Waiting | SlotState::Backoff { .. } | SlotState::Stopped { .. } | SlotState::Failed => {
                slot.consecutive_failures = 0;
                self.queue(key);
                StartStep::Wait
            }
        }
    }

    pub fn await_ready(&self, key: &SlotKey) -> AwaitStep {
        match self.slot(key) {
            Some(slot) if slot.state.is_ready() => AwaitStep::Ready,
            Some(_) => AwaitStep::Wait,
            None => AwaitStep::Gone,
        }
    }

    /// A group removed by a reload is forgotten once drained.
    pub fn forget_if_drained(&mut self, name: &str) {
        let drained = self
            .groups
            .get(name)
            .is_some_and(|g| g.phase == GroupPhase::Removing && g.slots.values().all(|s| !s.state.is_running()));
        if drained {
            self.groups.remove(name);
        }
    }

    /// Forgets a group a reload removed, whatever is left of it.
    pub fn forget(&mut self, name: &str) {
        if self.groups.get(name).is_some_and(|g| g.phase == GroupPhase::Removing) {
            self.groups.remove(name);
        }
    }

    /// The slots a target names, or why it names none.
    pub fn resolve(&self, target: &Target) -> Result<Vec<SlotKey>, String> {
        let found = match target {
            Target::All => Some(self.groups.values().flat_map(Group::keys).collect()),
            Target::Group(name) => self.groups.get(name).map(Group::keys),
            Target::Worker(key) => {
                self.groups.get(&key.group).filter(|g| g.slots.contains_key(&key.index)).map(|_| vec![key.clone()])
            }
        };
        found.ok_or_else(|| format!("no group or worker named \"{}\"", sanitise(&target.to_string())))
    }

    /// Splits slots into layers to stop one after another: groups that
    /// start after others stop before them.
    pub fn stop_layers(&self, keys: Vec<SlotKey>) -> Vec<Vec<SlotKey>> {
        let edges = self.groups.values().map(|g| (g.name(), g.config.after.as_slice()));
        let layers = dependency_layers(edges).unwrap_or_default();
        let depth: BTreeMap<&str, usize> =
            layers.iter().enumerate().flat_map(|(d, names)| names.iter().map(move |n| (n.as_str(), d))).collect();
        let max = layers.len().saturating_sub(1);
        let mut out = vec![Vec::new(); max + 1];
        for key in keys {
            let d = depth.get(key.group.as_str()).copied().unwrap_or(0);
            out[max - d].push(key);
        }
        out.retain(|l| !l.is_empty());
        out
    }

    /// How long a stop may take before the workers still out are reported
    /// as timed out: the longest stop timeout involved per layer, plus a
    /// margin for the kill that follows it.
    pub fn stop_timeout(&self, layers: &[Vec<SlotKey>]) -> Duration {
        let per_layer = |keys: &Vec<SlotKey>| {
            keys.iter()
                .filter_map(|k| self.groups.get(&k.group))
                .map(|g| g.config.stop_timeout)
                .max()
                .unwrap_or(Duration::ZERO)
        };
        layers.iter().map(per_layer).sum::<Duration>() + STOP_MARGIN
    }

    /// How long a start may take: the longest ready timeout involved.
    pub fn ready_timeout(&self, keys: &[SlotKey]) -> Duration {
        keys.iter()
            .filter_map(|k| self.groups.get(&k.group))
            .map(|g| g.config.ready_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60))
    }
}

/// Time a stop request allows beyond the stop timeouts, for the kill that
/// follows a timeout.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);
