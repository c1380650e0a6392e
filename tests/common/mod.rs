//! Shared harness for the integration tests: runs a real corrald on a
//! private socket and config in a temporary directory, and talks to it with
//! the same client library corralctl uses.
#![allow(dead_code)]

mod answers;
mod corrald;
mod ctl;
mod frames;
mod poll;
mod systemd;
mod tmux;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use corral::proto::{self, request::Command as Cmd, response::Content};

// Each test file uses its own part of the harness.
#[allow(unused_imports)]
pub use {answers::*, corrald::*, ctl::*, frames::*, poll::*, systemd::*, tmux::*};

pub const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");
pub const CORRALCTL: &str = env!("CARGO_BIN_EXE_corralctl");
pub const DEMO: &str = env!("CARGO_BIN_EXE_corral-demo-worker");

/// How long any wait in a test may take before the test fails. Generous:
/// these are bounds on broken behaviour, not timing claims.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The uid and gid of the outside caller in tests of who may do what:
/// nobody and nogroup on Debian.
pub const OUTSIDER: (u32, u32) = (65534, 65534);

/// The first call of a test that needs root: fails at once, saying `why`.
#[track_caller]
pub fn needs_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: {why}. The README's test command (tests/run-all) runs it as root, as CI does."
    );
}

pub fn pid_alive(pid: u32) -> bool {
    // A reaped pid is gone; a zombie would still answer kill(0), so check /proc state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok()?;
                Some(ppid == parent)
            }) == Some(true)
        })
        .collect()
}

pub fn stop(target: &str, hard: bool) -> Cmd {
    Cmd::Stop(proto::Stop { target: target.into(), hard })
}

pub fn final_failures(resp: &proto::Response) -> Vec<proto::WorkerFailure> {
    match &resp.content {
        Some(Content::Outcome(o)) => o.failures.clone(),
        _ => Vec::new(),
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A file's permission bits, setuid, setgid and sticky included; a link's
/// own, never its target's.
pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// The lines of a file; none if it does not exist yet.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

/// The records of a JSON-lines file, such as the JSON audit log.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}
