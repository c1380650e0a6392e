//! What the actor tells others about the fleet: the service manager
//! (status line, READY), clients (status), and a later corrald (the
//! runtime file).

use super::runtime::{self, Runtime};
use super::Supervisor;
use crate::proto;

impl Supervisor {
    /// Tells the service manager how the fleet is: READY once every group
    /// has settled after startup, and a one-line status.
    pub(super) fn announce(&self) {
        let line = self.fleet.line(self.systemd.is_some(), self.output.dropped());
        self.notifier.status(&line.text);
        if line.settled {
            self.notifier.ready();
        }
    }

    /// Has the runtime file rewritten when the fleet changed (on the
    /// writer's thread): its workers, and its shape unless corrald is
    /// shutting down, after which the next start is the config's.
    pub(super) fn persist(&mut self) {
        if std::mem::take(&mut self.runtime_dirty) {
            if let Some(sampler) = &self.usage {
                sampler.set_subjects(self.fleet.usage_subjects(self.systemd.is_some()));
            }
            self.runtime_file.write(Runtime {
                version: runtime::VERSION,
                workers: self.fleet.runtime_workers(self.systemd.is_some()),
                fleet: (!self.fleet.shutting_down()).then(|| self.fleet.saved_state()),
                configured: self.config.groups.values().map(|g| (g.name.clone(), g.count)).collect(),
            });
        }
    }

    /// Makes the runtime file current, on disk, before corrald leaves its
    /// workers or exits: a write queued earlier counts too.
    pub(super) fn persist_now(&mut self) {
        self.persist();
        self.runtime_file.flush();
    }

    pub(super) fn status(&self) -> proto::SupervisorStatus {
        proto::SupervisorStatus {
            pid: std::process::id(),
            config_path: self.config.path.display().to_string(),
            socket_path: self.config.socket.display().to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            groups: self.fleet.group_statuses(&self.usage()),
            scopes_active: self.systemd.is_some(),
            version: env!("CARGO_PKG_VERSION").into(),
            output_sink: self.output.sink().name().into(),
            output_dropped: self.output.dropped(),
            // Filled in by the command socket, which owns the audit trail.
            audit_journal_missed: 0,
            subscribers: self.events.subscribed() as u32,
            events_dropped: self.events.dropped().into_iter().map(|(r, n)| (r.name().to_string(), n)).collect(),
        }
    }
}
