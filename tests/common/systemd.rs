//! What systemd says about a unit, for the real-systemd suites.

use serde_json::Value;

use super::run;

/// `systemctl show -p PROP --value UNIT`
pub fn show(unit: &str, prop: &str) -> String {
    let (_, text) = run("systemctl", &["show", "-p", prop, "--value", unit]);
    text.trim().to_string()
}

/// The pids `systemctl status` lists in the unit's cgroup tree.
pub fn status_pids(unit: &str) -> Vec<u32> {
    let (_, text) = run("systemctl", &["status", "--no-pager", "-l", unit]);
    let mut pids: Vec<u32> = text
        .lines()
        .filter_map(|l| {
            let tree = l.trim_start().trim_start_matches(['├', '└', '─', '│', ' ']);
            (tree.len() < l.trim_start().len()).then(|| tree.split_whitespace().next()?.parse().ok()).flatten()
        })
        .collect();
    pids.sort();
    pids
}

/// Journal entries as JSON objects, after asking journald to write out
/// everything it has received.
pub fn journal(args: &[&str]) -> Vec<Value> {
    let _ = run("journalctl", &["--sync"]);
    let mut full = vec!["--no-pager", "-o", "json"];
    full.extend_from_slice(args);
    let (ok, out) = run("journalctl", &full);
    assert!(ok, "journalctl failed: {out}");
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Installs the bus policy packaging/install installs, which lets corrald
/// own its name on the system bus, and has the bus read it.
pub fn install_bus_policy() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/org.corral.Corrald.conf");
    std::fs::copy(policy, "/usr/share/dbus-1/system.d/org.corral.Corrald.conf")
        .unwrap_or_else(|e| panic!("{policy}: {e}"));
    let (ok, out) = run("systemctl", &["reload", "dbus.service"]);
    assert!(ok, "systemctl reload dbus.service: {out}");
}
