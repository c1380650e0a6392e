//! The facts a later corrald needs to find this one's workers again: which
//! process fills which slot, its start time (so a reused pid is never taken
//! for the worker), and its scope; and the fleet's shape as operators left
//! it (scales, workers stopped on request), so that a restart or a crash
//! keeps it as systemd keeps a unit's state across its own re-exec.
//! Rewritten atomically after every change, in the state directory; a
//! clean shutdown leaves no workers and no shape, and the next start is
//! the config's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::state::{self, SavedState};
use crate::files;
use crate::sanitise::sanitise;
use crate::target::SlotKey;

pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default)]
pub struct Runtime {
    pub version: u32,
    pub workers: Vec<RuntimeWorker>,
    /// Scales and stopped workers; absent after a clean shutdown (and in
    /// files of corralds before it was kept).
    #[serde(default)]
    pub fleet: Option<SavedState>,
    /// Each group's count in the config the shape was made under: a group
    /// whose count the config has changed since starts as the config says.
    #[serde(default)]
    pub configured: BTreeMap<String, u32>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct RuntimeWorker {
    pub id: String,
    pub group: String,
    pub index: u32,
    /// Names the worker's descriptors in the service manager's store.
    pub generation: u64,
    pub pid: u32,
    pub start_time: u64,
    pub scope: Option<String>,
    /// Its output goes straight to journald: no pipes to take over.
    #[serde(default)]
    pub direct_output: bool,
}

pub fn path(state_directory: &Path) -> PathBuf {
    state_directory.join("workers.json")
}

/// What the last corrald left: none when there is no file (a clean exit
/// leaves an empty one) or it cannot be read, which is said.
pub fn load(path: &Path, max: usize) -> Runtime {
    if !path.exists() {
        return Runtime::default();
    }
    let text = match files::read_bounded(path, max) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{e}; no workers are adopted");
            return Runtime::default();
        }
    };
    match parse(&text) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!("{}: {e}; no workers are adopted", path.display());
            Runtime::default()
        }
    }
}

/// Parses a runtime file's bytes, refusing the whole file if any entry is
/// not one corrald could have written: a worker is signalled by its pid
/// only if everything about it adds up.
pub fn parse(text: &[u8]) -> Result<Runtime, String> {
    let runtime = match serde_json::from_slice::<Runtime>(text) {
        Ok(r) if r.version == VERSION => r,
        Ok(r) => return Err(format!("version {} is not {VERSION}", r.version)),
        Err(e) => {
            return Err(format!(
                "not a corral runtime file ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        }
    };
    for w in &runtime.workers {
        let consistent = crate::config::check_group_name(&w.group).is_ok()
            && w.index >= 1
            && w.id == SlotKey::new(&w.group, w.index).id()
            && w.pid > 1
            && i32::try_from(w.pid).is_ok()
            && w.scope.as_ref().map_or(true, |s| crate::systemd::target_of_scope(s).is_some());
        if !consistent {
            return Err(format!("entry {:?} is not a worker corrald could have written", sanitise(&w.id)));
        }
    }
    if let Some(fleet) = &runtime.fleet {
        state::check(fleet)?;
    }
    Ok(runtime)
}

/// Writes the runtime file on a thread of its own, so the actor never
/// waits on the disk. Writes queued meanwhile collapse into the newest:
/// only the last state of the fleet matters.
pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    path: PathBuf,
}

enum Job {
    Write(Runtime),
    /// Answered once everything queued before it is on disk.
    Flush(mpsc::Sender<()>),
}

impl Writer {
    pub fn start(path: PathBuf) -> Writer {
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let spawned =
            std::thread::Builder::new().name("corral-runtime".into()).spawn(move || write_jobs(&thread_path, rx));
        match spawned {
            Ok(_) => Writer { tx: Some(tx), path },
            Err(e) => {
                tracing::warn!("cannot start the thread that writes {}: {e}; corrald writes it itself", path.display());
                Writer { tx: None, path }
            }
        }
    }

    pub fn write(&self, runtime: Runtime) {
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(Job::Write(runtime))) = tx.send(Job::Write(runtime)) {
                    save(&self.path, &runtime);
                }
            }
            None => save(&self.path, &runtime),
        }
    }

    /// Waits until every write queued so far is on disk: for the moment
    /// corrald leaves its workers to another, or exits.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = mpsc::channel();
        if tx.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

fn write_jobs(path: &Path, rx: mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let mut newest = None;
        let mut flushes = Vec::new();
        for job in std::iter::once(job).chain(rx.try_iter()) {
            match job {
                Job::Write(runtime) => newest = Some(runtime),
                Job::Flush(done) => flushes.push(done),
            }
        }
        if let Some(runtime) = newest {
            save(path, &runtime);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Not synced: it must survive corrald, and workers do not survive the
/// machine.
fn save(path: &Path, runtime: &Runtime) {
    let written = serde_json::to_vec(runtime)
        .map_err(|e| format!("cannot encode {}: {e}", path.display()))
        .and_then(|text| files::write_atomically(path, &text, false));
    if let Err(e) = written {
        tracing::warn!("{e}: a restarted corrald could not adopt the workers");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pid: u32) -> RuntimeWorker {
        RuntimeWorker {
            id: "web-1".into(),
            group: "web".into(),
            index: 1,
            generation: u64::from(pid),
            pid,
            start_time: 1,
            scope: None,
            direct_output: false,
        }
    }

    /// What the writer's thread was last given is on disk once `flush`
    /// returns, whatever it skipped on the way.
    #[test]
    fn a_flush_returns_once_the_newest_write_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.json");
        let writer = Writer::start(path.clone());
        let runtime = |workers| Runtime { version: VERSION, workers, ..Runtime::default() };
        for pid in 1..=50 {
            writer.write(runtime(vec![worker(pid)]));
        }
        writer.flush();
        let on_disk = parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk.workers.iter().map(|w| w.pid).collect::<Vec<_>>(), [50]);
        writer.write(runtime(Vec::new()));
        writer.flush();
        assert!(load(&path, 1 << 20).workers.is_empty(), "an empty fleet is written too");
    }
}
