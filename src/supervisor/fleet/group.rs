//! A group: its config, its slots, and the one state it is in.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::slot::{Slot, SlotState};
use crate::config::{GroupConfig, ScopeMode};
use crate::systemd::{self, Property};
use crate::target::SlotKey;

/// Where a group is in its life. One enum, so that which of "failed",
/// "waiting" and "being removed" wins is decided here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupPhase {
    /// Waits for the groups it starts after to be ready.
    Waiting,
    Active,
    /// A slot hit its start limit, for `reason`: no restarts until an
    /// operator starts it, or until the timer `retry` names (with
    /// `start_limit_retry`) starts it again.
    Failed {
        reason: String,
        retry: Option<u64>,
    },
    /// A reload removed it: it drains, then is forgotten.
    Removing,
}

#[derive(Debug)]
pub struct Group<H> {
    pub config: Arc<GroupConfig>,
    /// How many workers it should have (its count, or a later scale).
    pub desired: u32,
    /// By index; slots past `desired` exist only while they stop.
    pub slots: BTreeMap<u32, Slot<H>>,
    pub phase: GroupPhase,
    /// Properties changed at runtime with `limit`; later scopes get them too.
    pub limits: Vec<Property>,
}

impl<H> Group<H> {
    pub fn new(config: GroupConfig) -> Group<H> {
        let desired = config.count;
        Group {
            config: Arc::new(config),
            desired,
            slots: (1..=desired).map(|i| (i, Slot::new(SlotState::Waiting))).collect(),
            phase: GroupPhase::Waiting,
            limits: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn key(&self, index: u32) -> SlotKey {
        SlotKey::new(&self.config.name, index)
    }

    pub fn keys(&self) -> Vec<SlotKey> {
        self.slots.keys().map(|i| self.key(*i)).collect()
    }

    /// The systemd scope a worker of this group is placed in: the group's
    /// own, or one per worker. The only place a scope is named.
    pub fn scope_unit(&self, index: u32) -> String {
        match self.config.scope {
            ScopeMode::Group => systemd::scope_name(&self.config.name, None),
            ScopeMode::Worker => systemd::scope_name(&self.config.name, Some(index)),
        }
    }

    /// The group's configured properties with its runtime changes over them.
    pub fn properties(&self) -> Vec<Property> {
        let runtime = &self.limits;
        let mut out: Vec<Property> = self
            .config
            .resources
            .iter()
            .filter(|c| !runtime.iter().any(|r| r.dbus_name == c.dbus_name))
            .cloned()
            .collect();
        out.extend(runtime.iter().cloned());
        out
    }

    pub fn running(&self) -> u32 {
        self.slots.values().filter(|s| s.state.is_running()).count() as u32
    }

    pub fn ready_workers(&self) -> u32 {
        self.slots.values().filter(|s| s.state.is_ready()).count() as u32
    }

    /// Ready for the groups that start after it: started, not failed, and
    /// every worker meant to run is ready.
    pub fn ready(&self) -> bool {
        self.phase == GroupPhase::Active && self.slots.values().all(|s| s.state.settled())
    }

    /// Settled after startup, for READY=1: every worker ready or stopped,
    /// or the group will not start by itself (`blocked`: it waits on a
    /// failed group).
    pub fn settled(&self, blocked: bool) -> bool {
        match self.phase {
            GroupPhase::Waiting => blocked,
            GroupPhase::Failed { .. } | GroupPhase::Removing => true,
            GroupPhase::Active => self.slots.values().all(|s| {
                matches!(
                    s.state,
                    SlotState::Ready(_) | SlotState::Stopped { .. } | SlotState::Failed | SlotState::Stopping(_)
                )
            }),
        }
    }

    /// The state clients see, and why where there is a reason.
    pub fn shown(&self) -> (&'static str, String) {
        // A queued slot is on its way to running: a group whose workers
        // wait their turn to fork is starting, not stopped.
        let running =
            self.slots.values().filter(|s| matches!(s.state, SlotState::Queued) || s.state.is_running()).count();
        match &self.phase {
            GroupPhase::Removing => ("stopping", String::new()),
            GroupPhase::Failed { reason, .. } => ("failed", reason.clone()),
            GroupPhase::Waiting => ("waiting", format!("waiting for {}", self.config.after.join(", "))),
            GroupPhase::Active
                if running == 0 && self.slots.values().any(|s| matches!(s.state, SlotState::Backoff { .. })) =>
            {
                ("restarting", String::new())
            }
            GroupPhase::Active if running == 0 && self.desired > 0 => ("stopped", String::new()),
            GroupPhase::Active => ("running", String::new()),
        }
    }
}
