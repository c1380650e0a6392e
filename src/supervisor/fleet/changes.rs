//! Changes to the fleet's shape: scale, reload, and a loaded state. Each
//! is checked against the bounds first (nothing changes when one is over)
//! and returns the plan of stops and starts that carries it out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::group::{Group, GroupPhase};
use super::slot::{Slot, SlotState};
use super::{Fleet, STOP_MARGIN};
use crate::config::{live_scopes, Config, Limits};
use crate::sanitise::sanitise;
use crate::supervisor::state::{SavedGroup, SavedState, STATE_VERSION};
use crate::target::SlotKey;

/// What a scale does.
#[derive(Debug, PartialEq, Eq)]
pub enum ScalePlan {
    /// Start these new slots, waiting up to `ready_timeout`.
    Start { keys: Vec<SlotKey>, ready_timeout: Duration },
    /// The group has not started: its new slots wait with it.
    Waits,
    /// Stop the slots past the new count.
    Stop { keys: Vec<SlotKey>, stop_timeout: Duration },
}

/// What a reload (or a loaded state) changes.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    pub to_stop: Vec<SlotKey>,
    /// Slots to start at once.
    pub to_start: Vec<SlotKey>,
    /// Slots of added groups: they start in dependency order by themselves;
    /// the reload waits until they are ready.
    pub to_await: Vec<SlotKey>,
    /// Groups to forget once drained.
    pub removed: Vec<String>,
    pub summary: ReloadSummary,
    pub stop_timeout: Duration,
    pub ready_timeout: Duration,
}

/// What a reload (or a state load) changed, for the operator.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub scaled: Vec<String>,
    pub unchanged: Vec<String>,
    pub notes: Vec<String>,
}

impl ReloadSummary {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (label, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
            ("rescaled", &self.scaled),
            ("unchanged", &self.unchanged),
        ] {
            if !names.is_empty() {
                parts.push(format!("{label}: {}", names.join(", ")));
            }
        }
        parts.extend(self.notes.iter().cloned());
        if parts.is_empty() {
            "nothing to change".into()
        } else {
            parts.join("; ")
        }
    }
}

/// What of a new config waits for corrald's next start.
pub fn restart_notes(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    if new.audit != old.audit || new.access != old.access || new.socket_group != old.socket_group {
        notes.push("audit and access settings take effect when corrald restarts".into());
    }
    if new.limits != old.limits || new.max_frame_size != old.max_frame_size {
        notes.push("worker limits apply now; connection, frame and response limits when corrald restarts".into());
    }
    if new.socket != old.socket {
        notes.push(format!("the socket path change to {} takes effect when corrald restarts", new.socket.display()));
    }
    notes
}

impl<H> Fleet<H> {
    /// Whether the fleet, with each group's count as `desired` says (given
    /// the group's name and its present count), would keep more scopes live
    /// than `limits.max_scopes` allows; the reason if so.
    fn over_max_scopes(&self, limits: &Limits, desired: impl Fn(&str, u32) -> u32) -> Option<String> {
        let groups = self.groups.values().filter(|g| g.phase != GroupPhase::Removing);
        let scopes = live_scopes(groups.map(|g| (g.config.scope, desired(g.name(), g.desired))));
        let max = limits.max_scopes;
        (scopes > u64::from(max)).then(|| {
            format!(
                "the fleet would keep {scopes} systemd scopes live, over the limit of {max} (limits.max_scopes; \
                 scope = \"group\" keeps a group in one scope)"
            )
        })
    }

    /// Sets a group's count; `scopes`: whether workers are placed in scopes
    /// (the scope bound counts then).
    pub fn scale(&mut self, name: &str, count: u32, limits: &Limits, scopes: bool) -> Result<ScalePlan, String> {
        if count > limits.max_group_workers {
            return Err(format!(
                "cannot scale to {count}: the limit is {} workers per group (limits.max_group_workers)",
                limits.max_group_workers
            ));
        }
        let others: u64 = self
            .groups
            .values()
            .filter(|g| g.name() != name && g.phase != GroupPhase::Removing)
            .map(|g| u64::from(g.desired))
            .sum();
        if others + u64::from(count) > u64::from(limits.max_workers) {
            return Err(format!(
                "cannot scale {name} to {count}: the fleet would have {} workers, over the limit of {} \
                 (limits.max_workers)",
                others + u64::from(count),
                limits.max_workers
            ));
        }
        if scopes {
            if let Some(why) = self.over_max_scopes(limits, |n, desired| if n == name { count } else { desired }) {
                return Err(format!("cannot scale {name} to {count}: {why}; nothing changed"));
            }
        }
        let Some(group) = self.groups.get_mut(name) else {
            return Err(format!("no group named {}", sanitise(name)));
        };
        let old = std::mem::replace(&mut group.desired, count);
        if count < old {
            let keys = group.slots.keys().filter(|i| **i > count).map(|i| group.key(*i)).collect();
            return Ok(ScalePlan::Stop { keys, stop_timeout: group.config.stop_timeout + STOP_MARGIN });
        }
        if group.phase == GroupPhase::Waiting {
            for index in old + 1..=count {
                group.slots.insert(index, Slot::new(SlotState::Waiting));
            }
            return Ok(ScalePlan::Waits);
        }
        let keys = (old + 1..=count).map(|i| group.key(i)).collect();
        Ok(ScalePlan::Start { keys, ready_timeout: group.config.ready_timeout })
    }

    /// Takes a new config's groups: added groups wait for their turn,
    /// removed ones drain, changed ones are replaced, and ones whose count
    /// alone changed are scaled.
    pub fn reload(&mut self, new: &Config) -> ReloadPlan {
        let mut plan = ReloadPlan::default();
        for (name, group) in self.groups.iter_mut() {
            if !new.groups.contains_key(name) && group.phase != GroupPhase::Removing {
                group.phase = GroupPhase::Removing;
                plan.summary.removed.push(name.clone());
                plan.to_stop.extend(group.keys());
            }
        }
        for (name, cfg) in &new.groups {
            let Some(group) = self.groups.get_mut(name) else {
                plan.summary.added.push(name.clone());
                self.add_group(cfg.clone());
                plan.to_await.extend((1..=cfg.count).map(|index| SlotKey::new(name, index)));
                continue;
            };
            let mut same_but_count = cfg.clone();
            same_but_count.count = group.config.count;
            // A group still draining from an earlier reload's removal is
            // back: it is replaced, like a changed one.
            let returning = group.phase == GroupPhase::Removing;
            if returning {
                group.phase = GroupPhase::Active;
            }
            if *group.config == *cfg && !returning {
                plan.summary.unchanged.push(name.clone());
            } else if *group.config == same_but_count && !returning {
                plan.summary.scaled.push(name.clone());
                let old = group.desired;
                group.config = Arc::new(cfg.clone());
                group.desired = cfg.count;
                plan.to_stop.extend(group.slots.keys().filter(|i| **i > cfg.count).map(|i| group.key(*i)));
                plan.to_start.extend((old + 1..=cfg.count).map(|i| group.key(i)));
            } else {
                plan.summary.changed.push(name.clone());
                plan.to_stop.extend(group.keys());
                group.config = Arc::new(cfg.clone());
                group.desired = cfg.count;
                plan.to_start.extend((1..=cfg.count).map(|i| group.key(i)));
            }
        }
        plan.removed = plan.summary.removed.clone();
        plan.ready_timeout = self.ready_timeout(&[plan.to_start.as_slice(), plan.to_await.as_slice()].concat());
        plan.stop_timeout = self.stop_timeout(std::slice::from_ref(&plan.to_stop));
        plan
    }

    /// The scales and stopped workers a saved state keeps.
    pub fn saved_state(&self) -> SavedState {
        let groups = self
            .groups
            .values()
            .filter(|g| g.phase != GroupPhase::Removing)
            .map(|g| {
                let stopped = g
                    .slots
                    .iter()
                    .filter(|(i, s)| **i <= g.desired && s.state.stopped_on_request())
                    .map(|(i, _)| g.key(*i).id())
                    .collect();
                (g.name().to_string(), SavedGroup { scale: g.desired, stopped_workers: stopped })
            })
            .collect();
        SavedState { version: STATE_VERSION, groups }
    }

    /// Whether a saved state's scales fit today's bounds (`shown`: its
    /// file, as messages name it); the reason if not.
    fn check_scales(&self, saved: &SavedState, shown: &str, limits: &Limits, scopes: bool) -> Result<(), String> {
        if let Some((name, g)) = saved.groups.iter().find(|(_, g)| g.scale > limits.max_group_workers) {
            return Err(format!(
                "{shown}: group {name} is scaled to {}, over the limit of {} workers per group \
                 (limits.max_group_workers); nothing changed",
                g.scale, limits.max_group_workers
            ));
        }
        let scale_of = |g: &Group<H>| saved.groups.get(g.name()).map_or(g.desired, |s| s.scale);
        let live = self.groups.values().filter(|g| g.phase != GroupPhase::Removing);
        let total: u64 = live.map(|g| u64::from(scale_of(g))).sum();
        if total > u64::from(limits.max_workers) {
            return Err(format!(
                "{shown} would make {total} workers, over the limit of {} (limits.max_workers); nothing changed",
                limits.max_workers
            ));
        }
        if scopes {
            if let Some(why) =
                self.over_max_scopes(limits, |n, desired| saved.groups.get(n).map_or(desired, |s| s.scale))
            {
                return Err(format!("{shown}: {why}; nothing changed"));
            }
        }
        Ok(())
    }

    /// Takes back the shape an earlier corrald left in its runtime file
    /// (scales, workers stopped on request), before its workers are
    /// adopted: a restart or a crash of corrald changes neither. A group
    /// whose count in the config differs from `configured` (the count the
    /// shape was made under) starts as the config now says, as do groups
    /// the shape does not name; a shape over today's bounds is not taken.
    pub fn restore(
        &mut self,
        mut saved: SavedState,
        configured: &BTreeMap<String, u32>,
        limits: &Limits,
        scopes: bool,
    ) -> Result<(), String> {
        saved
            .groups
            .retain(|name, _| self.groups.get(name).is_some_and(|g| configured.get(name) == Some(&g.config.count)));
        self.check_scales(&saved, "the runtime file", limits, scopes)?;
        for (name, sg) in saved.groups {
            let Some(group) = self.groups.get_mut(&name) else { continue };
            group.desired = sg.scale;
            group.slots.retain(|i, _| *i <= sg.scale);
            for index in 1..=sg.scale {
                group.slots.entry(index).or_insert_with(|| Slot::new(SlotState::Waiting));
            }
            for key in sg.stopped_workers.iter().filter_map(|id| SlotKey::parse(id)).filter(|k| k.group == name) {
                if let Some(slot) = group.slots.get_mut(&key.index) {
                    slot.state = SlotState::Stopped { requested: true };
                }
            }
        }
        Ok(())
    }

    /// Applies a saved state (`shown`: its file, as messages name it):
    /// scales, and which workers run. Groups the config lacks are ignored.
    pub fn apply_state(
        &mut self,
        saved: SavedState,
        shown: &str,
        limits: &Limits,
        scopes: bool,
    ) -> Result<ReloadPlan, String> {
        self.check_scales(&saved, shown, limits, scopes)?;
        let mut plan = ReloadPlan::default();
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
                .filter_map(|id| SlotKey::parse(id).filter(|k| k.group == name).map(|k| k.index))
                .collect();
            let waiting = group.phase == GroupPhase::Waiting;
            for (index, slot) in &group.slots {
                let should_run = *index <= sg.scale && !stopped.contains(index);
                if !should_run && !slot.state.stopped_on_request() {
                    plan.to_stop.push(group.key(*index));
                } else if should_run && !slot.state.is_running() && !waiting {
                    plan.to_start.push(group.key(*index));
                }
            }
            for index in 1..=sg.scale {
                if !group.slots.contains_key(&index) && !stopped.contains(&index) {
                    if waiting {
                        group.slots.insert(index, Slot::new(SlotState::Waiting));
                    } else {
                        plan.to_start.push(group.key(index));
                    }
                }
            }
        }
        if !unknown.is_empty() {
            plan.summary.notes.push(format!("groups not in the config were ignored: {}", unknown.join(", ")));
        }
        plan.summary.notes.push(format!("state loaded from {shown}"));
        plan.ready_timeout = self.ready_timeout(&plan.to_start);
        plan.stop_timeout = self.stop_timeout(std::slice::from_ref(&plan.to_stop));
        Ok(plan)
    }
}
