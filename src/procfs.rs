//! What /proc says about a process: when it started, and which unit's
//! cgroup it is in.

use std::io;
use std::time::{Duration, SystemTime};

/// Field 22 of /proc/<pid>/stat: the process's start time in clock ticks
/// since boot, which with the pid names one process for good (parsed after
/// the `)` that ends comm, which may hold spaces).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// When a process with this start time (clock ticks since boot) started.
pub fn started_at(start_time: u64) -> Option<SystemTime> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
    let ago = (uptime - start_time as f64 / hz).max(0.0);
    SystemTime::now().checked_sub(Duration::from_secs_f64(ago))
}

/// The text of /proc/<pid>/cgroup: one `id:controllers:path` line per
/// hierarchy.
pub fn cgroups(pid: u32) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
}

/// Whether /proc shows `pid` in `unit`: in the unit's cgroup or anywhere
/// below it (a leaf of a group scope), by [`unit_places`]. A process that
/// is gone is in no unit.
pub fn in_unit(pid: u32, unit: &str) -> bool {
    cgroups(pid).is_ok_and(|text| unit_places(&text, unit).next().is_some())
}

/// Where one line of /proc/<pid>/cgroup puts a process within a unit.
#[derive(Debug, PartialEq, Eq)]
pub struct UnitPlace<'a> {
    /// The unit's own cgroup: the path up to and including its name.
    pub unit_path: &'a str,
    /// Where below that the process is: empty at the unit's root, the
    /// leaf's name (`web-3`) in a leaf of a group scope.
    pub below: &'a str,
}

/// The one rule for "is this process in that unit": a line's cgroup path
/// has the unit's name as a whole component (`corral-web.scope` is not in
/// `corral-web2.scope`). The first such component is the unit: systemd
/// names a unit's cgroup after the unit, and whatever lies below a
/// delegated unit is the delegate's to name. Each hierarchy's line (the
/// unified one, and on a hybrid host the v1 ones) is a place of its own.
pub fn unit_places<'a>(cgroups: &'a str, unit: &'a str) -> impl Iterator<Item = UnitPlace<'a>> + 'a {
    cgroups.lines().filter_map(move |line| {
        let path = line.splitn(3, ':').nth(2)?;
        let mut start = 0;
        for component in path.split('/') {
            let end = start + component.len();
            if component == unit {
                let below = path[end..].strip_prefix('/').unwrap_or_default();
                return Some(UnitPlace { unit_path: &path[..end], below });
            }
            start = end + 1;
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places<'a>(text: &'a str, unit: &'a str) -> Vec<(&'a str, &'a str)> {
        unit_places(text, unit).map(|p| (p.unit_path, p.below)).collect()
    }

    #[test]
    fn a_unified_hierarchy_shows_the_unit_and_the_leaf() {
        let text = "0::/corral.slice/corral-web.scope/web-3\n";
        assert_eq!(places(text, "corral-web.scope"), [("/corral.slice/corral-web.scope", "web-3")]);
        assert_eq!(places(text, "corral.slice"), [("/corral.slice", "corral-web.scope/web-3")]);
        let root = "0::/corral.slice/corral-web-3.scope\n";
        assert_eq!(places(root, "corral-web-3.scope"), [("/corral.slice/corral-web-3.scope", "")]);
        assert_eq!(places("0::/corral-web.scope", "corral-web.scope"), [("/corral-web.scope", "")]);
    }

    #[test]
    fn a_hybrid_host_gives_a_place_per_hierarchy_that_has_the_unit() {
        let text = "12:pids:/corral.slice/corral-web.scope\n\
                    11:memory:/\n\
                    4:cpu,cpuacct:/corral.slice\n\
                    1:name=systemd:/corral.slice/corral-web.scope/web-3\n\
                    0::/corral.slice/corral-web.scope/web-3\n";
        assert_eq!(
            places(text, "corral-web.scope"),
            [
                ("/corral.slice/corral-web.scope", ""),
                ("/corral.slice/corral-web.scope", "web-3"),
                ("/corral.slice/corral-web.scope", "web-3"),
            ]
        );
        assert!(places(text, "corral-api.scope").is_empty());
    }

    #[test]
    fn a_name_is_matched_whole_never_as_a_prefix_or_suffix() {
        let text = "0::/corral.slice/corral-web2.scope\n1:name=systemd:/corral.slice/xcorral-web.scope/web-3\n";
        assert!(places(text, "corral-web.scope").is_empty());
        assert!(places("0::/corral.slice/corral-web.scope/web-3", "corral-web").is_empty());
        assert!(places("0::/corral.slice/corral-web.scope/web-3", "corral-web-3.scope").is_empty());
        assert!(places("0::/corral.slice/corral-web-3.scope", "corral-web.scope").is_empty());
    }

    #[test]
    fn the_topmost_component_is_the_unit_and_what_a_delegate_names_below_it_is_not() {
        let text = "0::/corral.slice/corral-web.scope/web-3/corral-web.scope\n";
        assert_eq!(places(text, "corral-web.scope"), [("/corral.slice/corral-web.scope", "web-3/corral-web.scope")]);
    }

    #[test]
    fn lines_without_a_path_are_no_place() {
        assert!(places("garbage\n\n0:\n", "corral-web.scope").is_empty());
        assert!(places("", "corral-web.scope").is_empty());
    }

    #[test]
    fn this_process_is_in_its_own_cgroup_and_not_in_a_unit_it_is_not_in() {
        let pid = std::process::id();
        let text = cgroups(pid).unwrap();
        let unit = text.lines().find_map(|l| l.rsplit('/').next().filter(|c| !c.is_empty()));
        if let Some(unit) = unit {
            assert!(in_unit(pid, unit), "{text}");
        }
        assert!(!in_unit(pid, "corral-no-such-unit.scope"));
        assert!(start_time(pid).is_some());
        assert!(started_at(start_time(pid).unwrap()).is_some_and(|t| t <= SystemTime::now()));
    }
}
