//! What the actor tells subscribers: its own events, emitted where the
//! actor carries out what the fleet decided. Emitting never waits (see
//! `crate::events`), so the actor tells as it goes.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

use super::Supervisor;
use crate::proto::{self, event::Kind};
use crate::target::SlotKey;

impl Supervisor {
    /// Tells of an event of one worker.
    pub(super) fn tell(&self, key: &SlotKey, kind: Kind) {
        self.events.emit(&key.group, &key.id(), kind);
    }

    /// Tells of corrald's own life: "starting", "shutting_down",
    /// "restarting", "upgrading".
    pub(super) fn tell_corrald(&self, state: &str) {
        self.events.emit("", "", Kind::Corrald(proto::CorraldState { state: state.into() }));
    }

    /// Tells of every group whose state, as status shows it, changed since
    /// the last time, added and removed groups included.
    pub(super) fn tell_group_states(&mut self) {
        let mut now = BTreeMap::new();
        for group in self.fleet.groups() {
            let (state, reason) = group.shown();
            let name = group.name();
            let from = self.told_states.remove(name).unwrap_or("");
            if from != state {
                let change = proto::GroupStateChanged { from: from.into(), to: state.into(), reason };
                self.events.emit(name, "", Kind::GroupState(change));
            }
            now.insert(name.to_string(), state);
        }
        for (name, from) in std::mem::replace(&mut self.told_states, now) {
            let change = proto::GroupStateChanged { from: from.into(), ..Default::default() };
            self.events.emit(&name, "", Kind::GroupState(change));
        }
    }
}

/// The name of the signal that ended a process, if one did.
pub(super) fn signal_name(status: ExitStatus) -> Option<String> {
    let signal = status.signal()?;
    Some(Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string()))
}
