//! The dynamic state an operator can save and load: each group's scale and
//! the workers stopped on purpose. The config says what may run; this says
//! what the operator has since changed, so it survives a restart of corrald.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    pub version: u32,
    pub groups: BTreeMap<String, SavedGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedGroup {
    pub scale: u32,
    #[serde(default)]
    pub stopped_workers: Vec<String>,
}

/// Writes the state so that a reader sees the old file or the new one,
/// never a part: a temporary file beside it, synced, then renamed over it.
pub fn save(path: &Path, state: &SavedState) -> Result<(), String> {
    write_atomically(path, state, true)
}

/// The atomic write behind [`save`]. Without `durable` nothing is synced:
/// for files that only need to survive corrald, not the machine.
pub fn write_atomically<T: serde::Serialize>(path: &Path, state: &T, durable: bool) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("cannot save state to {}: {what}: {e}", path.display());
    if !path.is_absolute() {
        return Err(format!("state path {} must be absolute", path.display()));
    }
    let dir = path.parent().ok_or_else(|| format!("state path {} has no directory", path.display()))?;
    let name = path.file_name().ok_or_else(|| format!("state path {} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let mut text = serde_json::to_vec_pretty(state).map_err(|e| format!("cannot encode state: {e}"))?;
    text.push(b'\n');
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
        file.write_all(&text).map_err(|e| fail("write", e))?;
        if durable {
            file.sync_all().map_err(|e| fail("sync", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| fail("rename", e))?;
        if durable {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("sync directory", e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn load(path: &Path) -> Result<SavedState, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read state from {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a state file's bytes. Errors never quote the file: it may be one
/// the caller could not read themselves.
pub fn parse(text: &[u8]) -> Result<SavedState, String> {
    let state: SavedState = serde_json::from_slice(text).map_err(|e| {
        format!("not a corral state file ({:?} error at line {} column {})", e.classify(), e.line(), e.column())
    })?;
    if state.version != STATE_VERSION {
        return Err(format!(
            "state version {} is not supported (this corrald reads version {STATE_VERSION})",
            state.version
        ));
    }
    Ok(state)
}

/// What a reload (or a state load) changed, for the operator.
#[derive(Debug, Default)]
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
