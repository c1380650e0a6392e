//! Taking over the workers an earlier corrald left running (after a crash,
//! or a restart that kept them), with the descriptors it left in the
//! service manager's store.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::SystemTime;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::fleet::{GroupPhase, Proc, SlotState};
use super::runtime::{self, RuntimeWorker};
use super::{process, ProcIo, Supervisor};
use crate::proto::{self, event::Kind};
use crate::target::SlotKey;

impl Supervisor {
    /// A worker is adopted only if its pid still names the same process
    /// (start time) and, with scopes, it is still in the scope its slot
    /// belongs in. Slots left empty in groups that were running start at
    /// once; the rest start with their groups.
    pub fn adopt(&mut self, mut stored: HashMap<String, OwnedFd>) {
        let path = runtime::path(&self.config.state_directory);
        let limits = self.config.limits.clone();
        let mut adopted = 0;
        let left = runtime::load(&path, limits.max_state_file_size);
        if let Some(shape) = left.fleet {
            match self.fleet.restore(shape, &left.configured, &limits, self.systemd.is_some()) {
                Ok(()) => tracing::info!("kept the scales and stopped workers an earlier corrald left"),
                Err(why) => tracing::warn!("{why}: the config's counts stand"),
            }
        }
        for (n, w) in left.workers.into_iter().enumerate() {
            if n >= limits.max_workers as usize || w.index > limits.max_group_workers {
                tracing::warn!(worker = %w.id, pid = w.pid, "beyond corrald's worker limits; not adopted");
                continue;
            }
            let mut take = |what: &str| stored.remove(&process::fd_name(w.generation, what));
            let adoptee = process::Adoptee {
                pid: w.pid,
                direct_output: w.direct_output,
                channel: take("chan"),
                stdout: take("out"),
                stderr: take("err"),
            };
            if self.adopt_one(&w, adoptee) {
                adopted += 1;
            } else {
                for what in process::FD_KINDS {
                    self.notifier.remove_fds(&process::fd_name(w.generation, what));
                }
            }
        }
        for name in stored.keys() {
            self.notifier.remove_fds(name);
        }
        if adopted > 0 {
            tracing::info!(workers = adopted, "adopted the workers of an earlier corrald");
        }
        let missing: Vec<SlotKey> = self
            .fleet
            .groups()
            .filter(|g| g.phase != GroupPhase::Waiting)
            .flat_map(|g| g.slots.iter().filter(|(_, s)| matches!(s.state, SlotState::Waiting)).map(|(i, _)| g.key(*i)))
            .collect();
        for key in missing {
            self.fleet.queue(&key);
        }
        self.runtime_dirty = true;
    }

    /// Adopts one worker, or says why not (and stops it if it must not run
    /// unsupervised); `false` when not adopted.
    fn adopt_one(&mut self, w: &RuntimeWorker, adoptee: process::Adoptee) -> bool {
        let signal = |sig: Signal| {
            let _ = kill(Pid::from_raw(w.pid as i32), sig);
        };
        if crate::procfs::start_time(w.pid) != Some(w.start_time) {
            tracing::info!(worker = %w.id, pid = w.pid, "gone while corrald was down; its slot starts anew");
            return false;
        }
        let key = SlotKey::new(&w.group, w.index);
        let Some(group) = self.fleet.group(&w.group) else {
            tracing::warn!(worker = %w.id, pid = w.pid, "its group is no longer configured: stopping it");
            signal(Signal::SIGTERM);
            return false;
        };
        // The scope checked is the one this worker's slot must be in, not
        // whatever the file names.
        if let Some(file_scope) = &w.scope {
            let scope = group.scope_unit(w.index);
            if *file_scope != scope || !crate::procfs::in_unit(w.pid, &scope) {
                tracing::warn!(worker = %w.id, pid = w.pid, "not in the scope its slot belongs in; not adopted");
                return false;
            }
        }
        let config = group.config.clone();
        let Some(slot) = group.slots.get(&w.index).filter(|s| !s.state.is_running()) else {
            tracing::warn!(worker = %w.id, pid = w.pid, "beyond its group's count: stopping it");
            signal(config.stop_signal);
            return false;
        };
        let plumbing = process::Plumbing {
            output: &self.output,
            dropped: slot.output_dropped.clone(),
            store: &self.notifier,
            scoped: self.systemd.is_some(),
        };
        let events = self.handle.tx.clone();
        match process::adopt(&config, &w.id, key.clone(), w.generation, events, adoptee, plumbing) {
            Ok((tx, shared)) => {
                let proc = Proc {
                    generation: w.generation,
                    pid: w.pid,
                    start_time: w.start_time,
                    started_at: crate::procfs::started_at(w.start_time).unwrap_or_else(SystemTime::now),
                    direct_output: w.direct_output,
                    started: Instant::now(),
                    placement_error: None,
                    health: Default::default(),
                    handle: ProcIo { tx, shared },
                };
                self.fleet.adopted(&key, proc);
                // What a forked worker's start tells, so a subscriber
                // follows an adopted one the same way.
                self.tell(&key, Kind::Spawned(proto::WorkerSpawned { pid: w.pid, adopted: true }));
                if let Some(unit) = &w.scope {
                    self.tell(&key, Kind::Placed(proto::WorkerPlaced { pid: w.pid, unit: unit.clone() }));
                }
                self.tell(&key, Kind::Ready(proto::WorkerReady { pid: w.pid }));
                self.next_generation = self.next_generation.max(w.generation + 1);
                true
            }
            Err(e) => {
                tracing::warn!(worker = %w.id, pid = w.pid, "cannot adopt it ({e}): stopping it");
                signal(config.stop_signal);
                false
            }
        }
    }
}
