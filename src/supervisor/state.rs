//! The dynamic state an operator can save and load: each group's scale and
//! the workers stopped on purpose. The config says what may run; this says
//! what the operator has since changed, so it survives a restart of corrald.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files;
use crate::sanitise::excerpt;
use crate::target::SlotKey;

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
/// never a part, and never through a planted link (see [`crate::files`]).
pub fn save(path: &Path, state: &SavedState) -> Result<(), String> {
    let mut text = serde_json::to_vec_pretty(state).map_err(|e| format!("cannot encode state: {e}"))?;
    text.push(b'\n');
    files::write_atomically(path, &text, true)
}

/// Reads a state file of at most `max` bytes.
pub fn load(path: &Path, max: usize) -> Result<SavedState, String> {
    let text = files::read_bounded(path, max)?;
    parse(&text).map_err(|e| format!("{}: {e}", files::shown(path)))
}

/// Parses a state file's bytes. Errors never quote the file: it may be one
/// the caller could not read themselves.
pub fn parse(text: &[u8]) -> Result<SavedState, String> {
    let state: SavedState = serde_json::from_slice(text).map_err(|e| {
        format!("not a corral state file ({:?} error at line {} column {})", e.classify(), e.line(), e.column())
    })?;
    check(&state)?;
    Ok(state)
}

/// Whether a saved state is one corrald could have written: its version,
/// group names and worker ids.
pub fn check(state: &SavedState) -> Result<(), String> {
    if state.version != STATE_VERSION {
        return Err(format!(
            "state version {} is not supported (this corrald reads version {STATE_VERSION})",
            state.version
        ));
    }
    for (name, group) in &state.groups {
        if crate::config::check_group_name(name).is_err() {
            return Err(format!("in the state file: {} is not a valid group name", shown(name)));
        }
        for id in &group.stopped_workers {
            if !SlotKey::parse(id).is_some_and(|k| k.group == *name && k.index >= 1) {
                return Err(format!("in the state file: {} is not a worker of group {name}", shown(id)));
            }
        }
    }
    Ok(())
}

/// A value from the file as messages show it: escaped, and short.
fn shown(value: &str) -> String {
    format!("\"{}\"", excerpt(value, 48))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_stopped(id: &str) -> Result<SavedState, String> {
        let text = format!(r#"{{"version": 1, "groups": {{"web": {{"scale": 4, "stopped_workers": ["{id}"]}}}}}}"#);
        parse(text.as_bytes())
    }

    #[test]
    fn stopped_workers_must_be_worker_ids_of_their_own_group() {
        assert_eq!(with_stopped("web-3").unwrap().groups["web"].stopped_workers, ["web-3"]);
        for bad in ["web-+3", "web-0", "web-", "web", "api-1", "web-3x", "web--3"] {
            let why = with_stopped(bad).unwrap_err();
            assert!(why.contains("is not a worker of group web"), "{bad}: {why}");
        }
    }
}
