//! The facts a later corrald needs to find this one's workers again: which
//! process fills which slot, its start time (so a reused pid is never taken
//! for the worker), and its scope. Rewritten atomically after every change,
//! in the state directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default)]
pub struct Runtime {
    pub version: u32,
    pub workers: Vec<RuntimeWorker>,
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
}

pub fn path(state_directory: &Path) -> PathBuf {
    state_directory.join("workers.json")
}

/// The last corrald's workers; none when there is no file (a clean exit
/// leaves an empty list) or it cannot be read, which is said.
pub fn load(path: &Path) -> Vec<RuntimeWorker> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; no workers are adopted", path.display());
            return Vec::new();
        }
    };
    match parse(&text) {
        Ok(workers) => workers,
        Err(e) => {
            tracing::warn!("{}: {e}; no workers are adopted", path.display());
            Vec::new()
        }
    }
}

/// Parses a runtime file's bytes.
pub fn parse(text: &[u8]) -> Result<Vec<RuntimeWorker>, String> {
    match serde_json::from_slice::<Runtime>(text) {
        Ok(r) if r.version == VERSION => Ok(r.workers),
        Ok(r) => Err(format!("version {} is not {VERSION}", r.version)),
        Err(e) => Err(format!("not a corral runtime file ({e})")),
    }
}

/// Not synced: it must survive corrald, and workers do not survive the
/// machine.
pub fn save(path: &Path, workers: Vec<RuntimeWorker>) {
    if let Err(e) = super::state::write_atomically(path, &Runtime { version: VERSION, workers }, false) {
        tracing::warn!("{e}: a restarted corrald could not adopt the workers");
    }
}
