//! What systemd says about a unit, for the real-systemd suites.

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
