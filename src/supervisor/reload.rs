//! Reload and load-state: the new config (or saved state) is read off the
//! actor, the fleet works out the difference, and an orchestration stops
//! and starts what it must.

use std::path::Path;

use super::actor::Orchestration;
use super::fleet::restart_notes;
use super::{orchestrate, Reply, Supervisor};
use crate::config::Config;
use crate::proto;

impl Supervisor {
    /// Reads the config file off the actor: it may be slow (NSS lookups
    /// for users and groups, PATH searches), and the actor never blocks.
    pub(super) fn reload(&mut self, reply: Reply) {
        self.notifier.reloading();
        let (path, handle) = (self.config.path.clone(), self.handle());
        tokio::spawn(async move {
            let loaded = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
                Ok(loaded) => loaded.map_err(|e| e.to_string()),
                Err(e) => Err(format!("reading the config failed: {e}")),
            };
            handle.orchestrate(Orchestration::Reloaded { loaded: Box::new(loaded), reply });
        });
    }

    pub(super) fn reloaded(&mut self, loaded: Result<Config, String>, reply: Reply) {
        let refused = match loaded {
            Err(e) => Some(format!("reload refused, nothing changed: {e}")),
            Ok(_) if self.fleet.shutting_down() => Some("corrald is shutting down".to_string()),
            Ok(new) => {
                self.apply_config(new, reply);
                return;
            }
        };
        if let Some(why) = refused {
            reply.failure(why, None);
            self.notifier.reloaded();
        }
    }

    fn apply_config(&mut self, new: Config, reply: Reply) {
        let mut plan = self.fleet.reload(&new);
        plan.summary.notes.extend(restart_notes(&self.config, &new));
        if new.usage_interval != self.config.usage_interval {
            // The old sampler's thread ends with its channel.
            self.usage = super::start_sampler(new.usage_interval);
            self.runtime_dirty = true;
        }
        // The socket path takes effect only when corrald restarts.
        self.config = Config { socket: self.config.socket.clone(), ..new };
        tracing::info!("reload: {}", plan.summary.describe());
        let s = &plan.summary;
        let reloaded = proto::ConfigReloaded {
            added: s.added.clone(),
            removed: s.removed.clone(),
            changed: s.changed.clone(),
            scaled: s.scaled.clone(),
        };
        self.events.emit("", "", proto::event::Kind::Reloaded(reloaded));
        let done = orchestrate::reload(self.handle(), reply, plan);
        let notifier = self.notifier.clone();
        tokio::spawn(async move {
            let _ = done.await;
            notifier.reloaded();
        });
        self.start_waiting_groups();
    }

    pub(super) fn apply_state(&mut self, saved: super::state::SavedState, path: &Path, reply: Reply) {
        if self.fleet.shutting_down() {
            return reply.failure("corrald is shutting down".into(), None);
        }
        let shown = crate::files::shown(path);
        let scopes = self.systemd.is_some();
        match self.fleet.apply_state(saved, &shown, &self.config.limits, scopes) {
            Ok(plan) => {
                orchestrate::reload(self.handle(), reply, plan);
            }
            Err(why) => reply.failure(why, None),
        }
    }
}
