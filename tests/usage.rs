//! Each worker's CPU, memory and tasks as a real corrald reads them, and as
//! `corralctl workers` and `status` show them. Without scopes the figures
//! come from /proc; the real-systemd suite (tests/systemd.rs) shows them
//! from a scope's cgroup.

mod common;

use common::*;
use corral::proto;

const MIB: u64 = 1 << 20;

/// Readings every 200 ms, no scopes: a worker holding 64 MiB and burning
/// half a CPU, and one idling beside it.
fn hog_and_idle() -> String {
    [
        "scopes = \"off\"\nusage_interval = \"200ms\"\n".to_string(),
        demo_group("hog", 1, &["--hold-memory", "64", "--burn-cpu", "50"], ""),
        demo_group("idle", 1, &[], ""),
    ]
    .concat()
}

/// The listing once each worker has had two readings (so a CPU percent).
async fn read_twice(c: &Corrald) -> Vec<proto::WorkerInfo> {
    c.poll("two readings of every worker", || async {
        holding(c.workers().await, |w| w.iter().all(|w| w.usage.as_ref().is_some_and(|u| u.cpu_percent.is_some())))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_holds_memory_and_burns_cpu_shows_it_read_from_proc() {
    let mut c = Corrald::new(&hog_and_idle());
    c.start();
    c.wait_ready("hog", 1).await;
    c.wait_ready("idle", 1).await;
    let workers = read_twice(&c).await;
    let hog = worker(&workers, "hog-1").usage.clone().unwrap();
    let idle = worker(&workers, "idle-1").usage.clone().unwrap();
    assert_eq!((hog.source.as_str(), idle.source.as_str()), ("proc", "proc"));
    assert!(hog.memory_bytes >= 64 * MIB, "{hog:?}");
    assert!(hog.memory_peak_bytes.unwrap() >= hog.memory_bytes, "{hog:?}");
    assert!(hog.memory_bytes >= idle.memory_bytes + 60 * MIB, "{hog:?} {idle:?}");
    // Half a CPU asked for; a busy shared machine may give it less.
    let busy = hog.cpu_percent.unwrap();
    assert!((10.0..=110.0).contains(&busy), "{hog:?}");
    assert!(idle.cpu_percent.unwrap() < busy, "{hog:?} {idle:?}");
    assert!(hog.cpu_time_us > 0 && hog.tasks.unwrap() >= 2, "the burning thread besides the main one: {hog:?}");

    // CPU time only grows: a later reading of the same process.
    let before = hog.cpu_time_us;
    c.poll("the hog's CPU time to grow", || async {
        let now = worker(&c.workers().await, "hog-1").usage.clone().unwrap();
        holding(now.cpu_time_us, |t| *t > before)
    })
    .await;

    let status = c.status().await;
    let sum = group(&status, "hog").usage.clone().unwrap();
    assert_eq!((sum.workers, sum.source.as_str()), (1, "proc"));
    assert!(sum.memory_bytes >= 64 * MIB, "{sum:?}");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corralctl_shows_the_figures_in_human_units_and_in_json() {
    let mut c = Corrald::new(&hog_and_idle());
    c.start();
    c.wait_ready("hog", 1).await;
    read_twice(&c).await;

    let (code, text, err) = c.ctl(&["workers", "--group", "hog"]);
    assert_eq!(code, Some(0), "{text}{err}");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split("  ").map(str::trim).filter(|h| !h.is_empty()).collect();
    for column in ["CPU", "CPU TIME", "MEM", "PEAK", "TASKS", "SOURCE"] {
        assert!(header.contains(&column), "{column} in {header:?}");
    }
    let row = lines.next().unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(cells.contains(&"proc"), "{row}");
    assert!(cells.iter().any(|c| c.ends_with('%') && c.trim_end_matches('%').parse::<f64>().is_ok()), "{row}");
    // 64 MiB held, and the runtime's own: between 64.0M and 1023.9M.
    assert!(
        cells.iter().any(|c| c.ends_with('M') && c.trim_end_matches('M').parse::<f64>().is_ok_and(|m| m >= 64.0)),
        "{row}"
    );
    assert!(cells.iter().any(|c| c.ends_with('s') && c.trim_end_matches('s').parse::<f64>().is_ok()), "{row}");

    let (code, text, err) = c.ctl(&["--json", "workers", "--group", "hog"]);
    assert_eq!(code, Some(0), "{text}{err}");
    let answer: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let usage = &answer["workers"][0]["usage"];
    assert_eq!(usage["source"], "proc", "{answer}");
    assert!(usage["memory_bytes"].as_u64().unwrap() >= 64 * MIB, "{answer}");
    assert!(usage["memory_peak_bytes"].as_u64().is_some() && usage["tasks"].as_u64().is_some(), "{answer}");
    assert!(usage["cpu_percent"].as_f64().is_some() && usage["cpu_time_us"].as_u64().is_some(), "{answer}");

    let (code, text, err) = c.ctl(&["status"]);
    assert_eq!(code, Some(0), "{text}{err}");
    let hog = text.lines().find(|l| l.starts_with("hog ")).unwrap_or_else(|| panic!("{text}"));
    assert!(hog.split_whitespace().any(|c| c.ends_with('M')), "the group's memory: {text}");
    let (_, text, _) = c.ctl(&["--json", "status"]);
    let answer: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let hog = answer["supervisor"]["groups"].as_array().unwrap().iter().find(|g| g["name"] == "hog").unwrap();
    assert_eq!(hog["usage"]["workers"], 1, "{answer}");
    c.shutdown_ok().await;
}

/// A cgroup of the test's own making, removed (after its process) on drop.
struct TestCgroup {
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where this process is in a hierarchy: `id:controllers:path` of
/// /proc/self/cgroup, the line whose controllers hold `controller` (the
/// unified one's are empty).
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

/// The kernel's own files, read as corrald reads them: a process in a
/// cgroup of its own (made here, named like a scope) is read from that
/// cgroup, on a hybrid host from the v1 controllers (memory, cpuacct,
/// pids), on a cgroup2 host from the unified hierarchy. No systemd is
/// needed: the real-systemd suite's container cannot show the v1 case,
/// as its systemd gets the host's v1 controllers read-only.
#[test]
fn a_process_in_a_cgroup_of_its_own_is_read_from_the_kernels_cgroup_files() {
    needs_root("it makes cgroups");
    let mounts = corral::usage::Mounts::find();
    let unit = format!("corral-usage-test-{}.scope", std::process::id());
    // v1 has no rule against processes beside child cgroups: the test's
    // cgroup goes under this process's own. cgroup2 has, so there it is
    // a sibling of this process's cgroup, which has the controllers its
    // parent enables (the root enables them for itself when asked).
    let mut dirs = Vec::new();
    let v1 = [("memory", &mounts.memory), ("cpuacct", &mounts.cpuacct), ("pids", &mounts.pids)];
    if v1.iter().all(|(_, m)| m.is_some()) {
        for (controller, mount) in v1 {
            let mount = mount.as_ref().unwrap();
            let below = own_path(controller).unwrap_or_else(|| panic!("no {controller} line in /proc/self/cgroup"));
            dirs.push(mount.dir.join(below.trim_start_matches('/')).join(&unit));
        }
    } else {
        let mount = mounts.unified.as_ref().expect("a cgroup2 hierarchy where v1 has no memory, cpuacct or pids");
        let own = own_path("").expect("a unified line in /proc/self/cgroup");
        let parent = std::path::Path::new(&own).parent().unwrap_or(std::path::Path::new("/")).to_path_buf();
        let parent_dir = mount.dir.join(parent.strip_prefix("/").unwrap());
        let enabled = std::fs::read_to_string(parent_dir.join("cgroup.subtree_control")).unwrap();
        if !(enabled.contains("memory") && enabled.contains("pids")) {
            std::fs::write(parent_dir.join("cgroup.subtree_control"), "+memory +pids")
                .unwrap_or_else(|e| panic!("enabling memory and pids in {}: {e}", parent_dir.display()));
        }
        dirs.push(parent_dir.join(&unit));
    }
    let cgroup = TestCgroup { dirs };
    for dir in &cgroup.dirs {
        std::fs::create_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    // The shell joins the cgroups, then becomes the worker: every page it
    // takes is charged there (v1 does not move charges with a process).
    let joins: String = cgroup.dirs.iter().map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display())).collect();
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("{joins}exec {DEMO} --hold-memory 48 --burn-cpu 20")])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let own = corral::usage::OwnCgroup { unit: unit.clone(), leaf: None };
    let reading = poll_blocking("the worker's 48 MiB in its cgroup", PATIENCE, || {
        let start = corral::procfs::start_time(pid).ok_or("no start time")?;
        let reading = corral::usage::read(pid, start, Some(&own), &mounts, corral::usage::clock_ticks());
        holding(reading, |r| r.as_ref().is_some_and(|r| r.memory >= 48 * MIB && r.cpu_us > 0))
    })
    .unwrap();
    assert_eq!(reading.source, corral::usage::Source::Cgroup, "{reading:?}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads: u64 = status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap();
    // The cgroup holds this one process: its tasks are its threads (a
    // runtime thread may come or go between the two looks).
    assert!(reading.tasks.is_some_and(|t| t.abs_diff(threads) <= 2), "{reading:?}, Threads: {threads}");
    assert!(reading.memory_peak.map_or(true, |p| p >= reading.memory), "{reading:?}");
    drop(child);
    poll_blocking("the worker to leave its cgroup", PATIENCE, || {
        let procs = std::fs::read_to_string(cgroup.dirs[0].join("cgroup.procs")).unwrap_or_default();
        holding(procs, |p| p.trim().is_empty())
    });
}
