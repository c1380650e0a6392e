//! What a worker uses of the machine: CPU time, memory (now and at its
//! peak) and tasks, read from the worker's own cgroup when it has one, from
//! /proc otherwise; and the [`sampler`] thread that reads every worker at
//! an interval, off the supervisor's actor.
//!
//! Every file read here belongs to a process that may be gone, or to a
//! kernel that lays things out differently: each is read with a bound, and
//! anything unexpected makes a figure unknown, never an error.

pub mod sampler;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::procfs;

/// The most read of any one file: the largest read here (/proc/<pid>/status,
/// a hybrid host's /proc/<pid>/cgroup) is a few KiB.
const MAX_FILE: u64 = 16 << 10;

/// Where figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The worker's own cgroup: everything its processes use, children
    /// included, as the kernel accounts it.
    Cgroup,
    /// /proc of the worker's main process alone.
    Proc,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Cgroup => "cgroup",
            Source::Proc => "proc",
        }
    }
}

/// One reading of a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub source: Source,
    /// CPU time used so far, in microseconds.
    pub cpu_us: u64,
    pub memory: u64,
    pub memory_peak: Option<u64>,
    pub tasks: Option<u64>,
}

/// Which cgroup is a worker's own: the scope `unit`, at its root when the
/// scope is the worker's alone, or in its `leaf` when the worker shares a
/// group scope. A process elsewhere in a hierarchy (the scope's root on a
/// v1 hierarchy, where only the unified one has leaves) shares that cgroup
/// with others, and its figures there are not the worker's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnCgroup {
    pub unit: String,
    pub leaf: Option<String>,
}

/// Where this host mounts its cgroup hierarchies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The cgroup2 (unified) hierarchy: /sys/fs/cgroup, or
    /// /sys/fs/cgroup/unified on a hybrid host.
    pub unified: Option<Mount>,
    /// v1 hierarchies by controller.
    pub memory: Option<Mount>,
    pub cpuacct: Option<Mount>,
    pub pids: Option<Mount>,
}

/// A mounted hierarchy: its directory, and the cgroup its root shows (`/`
/// unless only a subtree is mounted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub dir: PathBuf,
    pub root: String,
}

impl Mount {
    /// The directory of the cgroup /proc/<pid>/cgroup names `path`.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let below = if self.root == "/" { path } else { path.strip_prefix(self.root.as_str())? };
        let below = below.trim_start_matches('/');
        if below.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if below.is_empty() { self.dir.clone() } else { self.dir.join(below) })
    }
}

impl Mounts {
    /// This host's hierarchies, from /proc/self/mountinfo.
    pub fn find() -> Mounts {
        read_bounded(Path::new("/proc/self/mountinfo"), 1 << 20).map(|t| parse_mountinfo(&t)).unwrap_or_default()
    }
}

/// The cgroup mounts of a mountinfo text: `ID PARENT MAJ:MIN ROOT MOUNTPOINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`. The first mount of
/// each hierarchy counts.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let Some((head, tail)) = line.split_once(" - ") else { continue };
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        let (Some(root), Some(dir), Some(fstype)) = (head.get(3), head.get(4), tail.first()) else { continue };
        let mount = Mount { dir: PathBuf::from(dir), root: (*root).to_string() };
        match *fstype {
            "cgroup2" => {
                mounts.unified.get_or_insert(mount);
            }
            "cgroup" => {
                let options: Vec<&str> = tail.get(2).map(|o| o.split(',').collect()).unwrap_or_default();
                for (controller, slot) in
                    [("memory", &mut mounts.memory), ("cpuacct", &mut mounts.cpuacct), ("pids", &mut mounts.pids)]
                {
                    if options.contains(&controller) && slot.is_none() {
                        *slot = Some(mount.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// The directories of a process's own cgroups, by what they account.
#[derive(Debug, Default, PartialEq, Eq)]
struct CgroupDirs {
    memory: Option<Dir>,
    cpu: Option<Dir>,
    pids: Option<PathBuf>,
}

/// A cgroup directory, and whether its files are v1's or v2's.
#[derive(Debug, PartialEq, Eq)]
struct Dir {
    path: PathBuf,
    v1: bool,
}

/// Where a process's memory, CPU and task figures are, from the text of
/// its /proc/<pid>/cgroup: a v1 hierarchy of the controller if the host
/// mounts one (it then owns the controller), the unified one otherwise;
/// and only where that cgroup is the worker's own.
fn cgroup_dirs(cgroups: &str, own: &OwnCgroup, mounts: &Mounts) -> CgroupDirs {
    let mut dirs = CgroupDirs::default();
    let (mut v1_memory, mut v1_cpu, mut v1_pids) = (false, false, false);
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let ours =
            procfs::unit_places(line, &own.unit).next().is_some_and(|p| p.below == own.leaf.as_deref().unwrap_or(""));
        let in_mount = |mount: &Option<Mount>| if ours { mount.as_ref().and_then(|m| m.dir_of(path)) } else { None };
        if id == "0" && controllers.is_empty() {
            let dir = in_mount(&mounts.unified);
            if !v1_memory {
                dirs.memory = dir.clone().map(|path| Dir { path, v1: false });
            }
            if !v1_cpu {
                dirs.cpu = dir.clone().map(|path| Dir { path, v1: false });
            }
            if !v1_pids {
                dirs.pids = dir;
            }
            continue;
        }
        let named: Vec<&str> = controllers.split(',').collect();
        if named.contains(&"memory") && mounts.memory.is_some() {
            v1_memory = true;
            dirs.memory = in_mount(&mounts.memory).map(|path| Dir { path, v1: true });
        }
        if named.contains(&"cpuacct") && mounts.cpuacct.is_some() {
            v1_cpu = true;
            dirs.cpu = in_mount(&mounts.cpuacct).map(|path| Dir { path, v1: true });
        }
        if named.contains(&"pids") && mounts.pids.is_some() {
            v1_pids = true;
            dirs.pids = in_mount(&mounts.pids);
        }
    }
    dirs
}

/// Reads a worker: from its own cgroup when it has one with memory and CPU
/// accounting, from /proc otherwise. `None` when the process is gone or is
/// no longer the one started at `start_time` (its pid reused).
pub fn read(pid: u32, start_time: u64, own: Option<&OwnCgroup>, mounts: &Mounts, hz: u64) -> Option<Reading> {
    let stat = read_bounded(Path::new(&format!("/proc/{pid}/stat")), MAX_FILE)?;
    let stat = parse_stat(&stat)?;
    if stat.start_time != start_time {
        return None;
    }
    if let Some(own) = own {
        let cgroups = read_bounded(Path::new(&format!("/proc/{pid}/cgroup")), MAX_FILE)?;
        if let Some(reading) = read_cgroup(&cgroup_dirs(&cgroups, own, mounts)) {
            return Some(reading);
        }
    }
    let status = read_bounded(Path::new(&format!("/proc/{pid}/status")), MAX_FILE);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    Some(Reading {
        source: Source::Proc,
        cpu_us: stat.cpu_ticks.checked_mul(1_000_000)? / hz.max(1),
        memory: stat.resident_pages.checked_mul(page)?,
        memory_peak: status.as_deref().and_then(parse_status_hwm),
        tasks: Some(stat.threads),
    })
}

fn read_cgroup(dirs: &CgroupDirs) -> Option<Reading> {
    let (memory, cpu) = (dirs.memory.as_ref()?, dirs.cpu.as_ref()?);
    let number = |dir: &Path, file: &str| read_bounded(&dir.join(file), MAX_FILE).as_deref().and_then(parse_number);
    let (current, peak) = if memory.v1 {
        ("memory.usage_in_bytes", "memory.max_usage_in_bytes")
    } else {
        ("memory.current", "memory.peak")
    };
    let cpu_us = if cpu.v1 {
        number(&cpu.path, "cpuacct.usage")? / 1000
    } else {
        parse_cpu_stat(&read_bounded(&cpu.path.join("cpu.stat"), MAX_FILE)?)?
    };
    Some(Reading {
        source: Source::Cgroup,
        cpu_us,
        memory: number(&memory.path, current)?,
        memory_peak: number(&memory.path, peak),
        tasks: dirs.pids.as_deref().and_then(|dir| number(dir, "pids.current")),
    })
}

/// What /proc/<pid>/stat says that is read here.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    pub start_time: u64,
    /// The resident set, in pages.
    pub resident_pages: u64,
}

/// Fields after the `)` that ends comm (which may hold anything, `)`
/// included): state is the first, utime the 12th, stime the 13th,
/// num_threads the 18th, starttime the 20th, rss the 22nd. One file gives
/// all but the peak: a reading of a thousand workers costs two opens each.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(11)?.checked_add(field(12)?)?,
        threads: field(17)?,
        start_time: field(19)?,
        resident_pages: field(21)?,
    })
}

/// The peak resident set (`VmHWM:  1234 kB`) of /proc/<pid>/status, in bytes.
pub fn parse_status_hwm(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(())?;
    kib.checked_mul(1024)
}

/// `usage_usec` of a cgroup2 cpu.stat.
pub fn parse_cpu_stat(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|n| n.trim().parse().ok())
}

/// A file holding one number (memory.current, pids.current, cpuacct.usage);
/// "max" and anything else is no number.
pub fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A file's text, reading at most `max` bytes; `None` when it cannot be read.
fn read_bounded(path: &Path, max: u64) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(max).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Clock ticks per second, for /proc's CPU times.
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|&n| n > 0).map_or(100, |n| n as u64)
}

#[cfg(test)]
mod tests;
