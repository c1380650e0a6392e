use std::time::Duration;

use super::sampler::percent;
use super::*;

const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
39 33 0:34 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
40 33 0:35 / /sys/fs/cgroup/pids rw,nosuid shared:17 - cgroup cgroup rw,pids
";

fn mount(dir: &str) -> Option<Mount> {
    Some(Mount { dir: PathBuf::from(dir), root: "/".into() })
}

#[test]
fn mountinfo_gives_the_unified_and_each_v1_hierarchy() {
    assert_eq!(
        parse_mountinfo(HYBRID_MOUNTINFO),
        Mounts {
            unified: mount("/sys/fs/cgroup/unified"),
            memory: mount("/sys/fs/cgroup/memory"),
            cpuacct: mount("/sys/fs/cgroup/cpu,cpuacct"),
            pids: mount("/sys/fs/cgroup/pids"),
        }
    );
    let v2 = "28 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
    assert_eq!(parse_mountinfo(v2), Mounts { unified: mount("/sys/fs/cgroup"), ..Mounts::default() });
    assert_eq!(parse_mountinfo("garbage\n- -\n1 2 - cgroup2\n\n"), Mounts::default());
}

fn own(unit: &str, leaf: Option<&str>) -> OwnCgroup {
    OwnCgroup { unit: unit.into(), leaf: leaf.map(Into::into) }
}

fn dir(path: &str, v1: bool) -> Option<Dir> {
    Some(Dir { path: PathBuf::from(path), v1 })
}

#[test]
fn on_cgroup_v2_a_worker_scope_is_read_in_the_unified_hierarchy() {
    let mounts = Mounts { unified: mount("/sys/fs/cgroup"), ..Mounts::default() };
    let text = "0::/corral.slice/corral-web-3.scope\n";
    let scope = "/sys/fs/cgroup/corral.slice/corral-web-3.scope";
    assert_eq!(
        cgroup_dirs(text, &own("corral-web-3.scope", None), &mounts),
        CgroupDirs { memory: dir(scope, false), cpu: dir(scope, false), pids: Some(PathBuf::from(scope)) }
    );
    let leaf = "0::/corral.slice/corral-web.scope/web-3\n";
    let dirs = cgroup_dirs(leaf, &own("corral-web.scope", Some("web-3")), &mounts);
    assert_eq!(dirs.memory, dir("/sys/fs/cgroup/corral.slice/corral-web.scope/web-3", false));
}

#[test]
fn on_a_hybrid_host_each_controller_is_read_in_its_v1_hierarchy() {
    let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
    let text = "12:pids:/corral.slice/corral-web-3.scope\n\
                11:memory:/corral.slice/corral-web-3.scope\n\
                4:cpu,cpuacct:/corral.slice/corral-web-3.scope\n\
                1:name=systemd:/corral.slice/corral-web-3.scope\n\
                0::/corral.slice/corral-web-3.scope\n";
    assert_eq!(
        cgroup_dirs(text, &own("corral-web-3.scope", None), &mounts),
        CgroupDirs {
            memory: dir("/sys/fs/cgroup/memory/corral.slice/corral-web-3.scope", true),
            cpu: dir("/sys/fs/cgroup/cpu,cpuacct/corral.slice/corral-web-3.scope", true),
            pids: Some(PathBuf::from("/sys/fs/cgroup/pids/corral.slice/corral-web-3.scope")),
        }
    );
}

#[test]
fn a_cgroup_the_worker_shares_is_not_its_own() {
    let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
    // A group scope on a hybrid host: v1 hierarchies have no leaves, so
    // the worker sits in the scope's root with its siblings.
    let text = "12:pids:/corral.slice/corral-web.scope\n\
                11:memory:/corral.slice/corral-web.scope\n\
                4:cpu,cpuacct:/corral.slice/corral-web.scope\n\
                0::/corral.slice/corral-web.scope/web-3\n";
    let dirs = cgroup_dirs(text, &own("corral-web.scope", Some("web-3")), &mounts);
    assert_eq!(dirs, CgroupDirs::default());
    // Memory accounting off: the memory hierarchy leaves it in the root.
    let text = "11:memory:/\n4:cpu,cpuacct:/corral.slice/corral-web-3.scope\n0::/corral.slice/corral-web-3.scope\n";
    let dirs = cgroup_dirs(text, &own("corral-web-3.scope", None), &mounts);
    assert_eq!(dirs.memory, None);
    assert!(read_cgroup(&dirs).is_none());
    let elsewhere = "0::/system.slice/other.service\n";
    assert_eq!(cgroup_dirs(elsewhere, &own("corral-web-3.scope", None), &mounts), CgroupDirs::default());
}

#[test]
fn odd_cgroup_paths_lead_nowhere() {
    let mounts = Mounts { unified: mount("/sys/fs/cgroup"), ..Mounts::default() };
    let text = "0::/corral-web-3.scope/../../etc\ngarbage\n::\n0:\n";
    assert_eq!(cgroup_dirs(text, &own("corral-web-3.scope", Some("../../etc")), &mounts), CgroupDirs::default());
    let sub = Mount { dir: PathBuf::from("/sys/fs/cgroup"), root: "/machine.slice".into() };
    assert_eq!(sub.dir_of("/machine.slice/a.scope"), Some(PathBuf::from("/sys/fs/cgroup/a.scope")));
    assert_eq!(sub.dir_of("/other.slice/a.scope"), None);
}

#[test]
fn v2_files_are_read_as_the_kernel_writes_them() {
    let cpu = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n";
    assert_eq!(parse_cpu_stat(cpu), Some(1_234_567));
    assert_eq!(parse_cpu_stat("user_usec 5\n"), None);
    assert_eq!(parse_cpu_stat("usage_usec lots\n"), None);
    assert_eq!(parse_number("50462720\n"), Some(50_462_720));
    assert_eq!(parse_number("max\n"), None);
    assert_eq!(parse_number(""), None);
    assert_eq!(parse_number("-1\n"), None);
}

#[test]
fn a_cgroup_directory_is_read_whole_or_not_at_all() {
    let v2 = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(v2.path().join(name), text).unwrap();
    write("memory.current", "50462720\n");
    write("memory.peak", "60000000\n");
    write("cpu.stat", "usage_usec 2500000\nuser_usec 2000000\n");
    write("pids.current", "3\n");
    let dirs = |v1| CgroupDirs {
        memory: Some(Dir { path: v2.path().into(), v1 }),
        cpu: Some(Dir { path: v2.path().into(), v1 }),
        pids: Some(v2.path().into()),
    };
    assert_eq!(
        read_cgroup(&dirs(false)),
        Some(Reading {
            source: Source::Cgroup,
            cpu_us: 2_500_000,
            memory: 50_462_720,
            memory_peak: Some(60_000_000),
            tasks: Some(3)
        })
    );
    write("memory.usage_in_bytes", "4096\n");
    write("cpuacct.usage", "7000000000\n");
    let v1 = read_cgroup(&dirs(true)).unwrap();
    assert_eq!((v1.cpu_us, v1.memory, v1.memory_peak, v1.tasks), (7_000_000, 4096, None, Some(3)));
    write("memory.current", "garbage");
    assert_eq!(read_cgroup(&dirs(false)), None);
    std::fs::remove_file(v2.path().join("cpuacct.usage")).unwrap();
    assert_eq!(read_cgroup(&dirs(true)), None);
}

#[test]
fn proc_files_are_read_past_an_odd_command_name() {
    let stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 3 1 20 0 7 0 123456 1000000 250 \
                18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
    assert_eq!(parse_stat(stat), Some(Stat { cpu_ticks: 300, threads: 7, start_time: 123456, resident_pages: 250 }));
    assert_eq!(parse_stat("4242 (a) S 1 2 3\n"), None);
    assert_eq!(parse_stat("no parenthesis at all"), None);
    assert_eq!(parse_stat(""), None);
    let short = "4242 (a) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 3 1 20 0 7 0 123456 1000000\n";
    assert_eq!(parse_stat(short), None);
    let negative = stat.replace(" 250 18446744073709551615", " -250 18446744073709551615");
    assert_eq!(parse_stat(&negative), None);
    let status = "Name:\tworker\nVmPeak:\t  20000 kB\nVmHWM:\t    4096 kB\nVmRSS:\t    2048 kB\n";
    assert_eq!(parse_status_hwm(status), Some(4096 * 1024));
    assert_eq!(parse_status_hwm("VmHWM:\t4096 pages\n"), None);
    assert_eq!(parse_status_hwm("VmHWM:\n"), None);
    assert_eq!(parse_status_hwm("Name:\tkthread\n"), None);
}

#[test]
fn this_process_reads_from_proc_and_a_gone_or_reused_pid_reads_as_nothing() {
    let pid = std::process::id();
    let start = crate::procfs::start_time(pid).unwrap();
    let mounts = Mounts::find();
    let reading = read(pid, start, None, &mounts, clock_ticks()).unwrap();
    assert_eq!(reading.source, Source::Proc);
    assert!(reading.memory > 0 && reading.memory_peak.unwrap() >= reading.memory, "{reading:?}");
    assert!(reading.tasks.unwrap() >= 1);
    assert_eq!(read(pid, start + 1, None, &mounts, clock_ticks()), None);
    assert_eq!(read(u32::MAX, start, None, &mounts, clock_ticks()), None);
    // A unit it is not in: /proc it is.
    let elsewhere = own("corral-no-such-unit.scope", None);
    assert_eq!(read(pid, start, Some(&elsewhere), &mounts, clock_ticks()).unwrap().source, Source::Proc);
}

#[test]
fn cpu_percent_is_time_used_over_time_passed() {
    assert_eq!(percent(1_000_000, 1_500_000, Duration::from_secs(1)), Some(50.0));
    assert_eq!(percent(0, 4_000_000, Duration::from_secs(2)), Some(200.0));
    assert_eq!(percent(2_000, 1_000, Duration::from_secs(1)), None);
    assert_eq!(percent(0, 1_000, Duration::ZERO), None);
}

/// Waits up to 10 s for the sampler's latest snapshot to satisfy `pred`.
fn latest_where(sampler: &sampler::Sampler, pred: impl Fn(&sampler::Snapshot) -> bool) -> sampler::Snapshot {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let latest = sampler.latest();
        if pred(&latest) {
            return (*latest).clone();
        }
        assert!(std::time::Instant::now() < deadline, "the sampler never showed it; last: {latest:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_sampler_reads_its_subjects_each_tick_and_forgets_those_taken_away() {
    let sampler = sampler::Sampler::start(Duration::from_millis(50)).unwrap();
    let pid = std::process::id();
    let key = crate::target::SlotKey::new("me", 1);
    let start_time = crate::procfs::start_time(pid).unwrap();
    sampler.set_subjects(vec![sampler::Subject { key: key.clone(), pid, start_time, own: None }]);
    let seen = latest_where(&sampler, |s| s.get(&key).is_some_and(|u| u.cpu_percent.is_some()));
    assert_eq!((seen[&key].pid, seen[&key].reading.source), (pid, Source::Proc));
    sampler.set_subjects(Vec::new());
    latest_where(&sampler, |s| s.is_empty());
}
