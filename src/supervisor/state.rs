//! The dynamic state an operator can save and load: each group's scale and
//! the workers stopped on purpose. The config says what may run; this says
//! what the operator has since changed, so it survives a restart of corrald.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files;
use crate::sanitise::excerpt;

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
            let index = id.strip_prefix(name.as_str()).and_then(|rest| rest.strip_prefix('-'));
            if !index.and_then(|i| i.parse::<u32>().ok()).is_some_and(|i| i >= 1) {
                return Err(format!("in the state file: {} is not a worker of group {name}", shown(id)));
            }
        }
    }
    Ok(state)
}

/// A value from the file as messages show it: escaped, and short.
fn shown(value: &str) -> String {
    format!("\"{}\"", excerpt(value, 48))
}
