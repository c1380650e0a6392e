//! The real-systemd suite: what corral claims about scopes, slices and
//! resource properties, proven against a real service manager.
//!
//! These tests run inside a container booted with systemd, as a transient
//! service there (`tests/systemd/run-suite` does that); they are ignored by
//! a plain `cargo test`, which has no service manager to ask. They assert
//! what `systemctl` prints, as an operator would read it.

mod common;

use common::*;
use corral::proto::{self, request::Command as Cmd, Status};

const NEEDS_SYSTEMD: &str = "needs a real systemd: tests/systemd/run-suite runs it inside a container";

/// Two units of 200ms in flight in each demo worker.
const UNITS: &[&str] = &["--concurrency", "2", "--unit-ms", "200"];

async fn sorted_pids(c: &Corrald, group: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = c.pids(group).await.into_values().collect();
    pids.sort();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn scopes_hold_the_workers_under_the_slice_with_their_limits() {
    let groups = [
        demo_group(
            "web",
            3,
            UNITS,
            "scope = \"group\"\n[groups.web.resources]\nMemoryMax = \"256M\"\nTasksMax = 64\nCPUWeight = 50\n\
             MemoryHigh = \"200M\"\nCPUQuota = \"150%\"\nIOWeight = 300\nAllowedCPUs = \"0\"\n",
        ),
        demo_group("solo", 2, UNITS, "scope = \"worker\"\n"),
    ]
    .concat();
    let mut c = Corrald::new(&groups);
    c.start();
    c.wait_ready("web", 3).await;
    c.wait_ready("solo", 2).await;
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);

    let web = sorted_pids(&c, "web").await;
    assert_eq!(status_pids("corral-web.scope"), web, "the scope holds exactly the group's workers");
    assert_eq!(show("corral-web.scope", "Slice"), "corral.slice");
    assert_eq!(show("corral-web.scope", "ControlGroup"), "/corral.slice/corral-web.scope");
    assert_eq!(show("corral-web.scope", "MemoryMax"), "268435456");
    assert_eq!(show("corral-web.scope", "TasksMax"), "64");
    assert_eq!(show("corral-web.scope", "CPUWeight"), "50");
    assert_eq!(show("corral-web.scope", "MemoryHigh"), "209715200");
    assert_eq!(show("corral-web.scope", "CPUQuotaPerSecUSec"), "1.500000s");
    assert_eq!(show("corral-web.scope", "IOWeight"), "300");
    assert_eq!(show("corral-web.scope", "AllowedCPUs"), "0");
    assert_eq!(show("corral-web.scope", "Delegate"), "yes");
    assert_eq!(show("corral-web.scope", "ActiveState"), "active");

    let solo = c.pids("solo").await;
    for (id, pid) in &solo {
        let unit = format!("corral-{id}.scope");
        assert_eq!(status_pids(&unit), vec![*pid], "{unit} holds its one worker");
        assert_eq!(show(&unit, "Slice"), "corral.slice");
    }
    let (_, units) = run("systemctl", &["list-units", "--no-legend", "--plain", "corral-*"]);
    assert_eq!(units.lines().count(), 3, "one group scope and two worker scopes: {units}");

    // A shutdown drains the workers and the emptied scopes go away.
    c.shutdown_ok().await;
    let (_, units) = run("systemctl", &["list-units", "--no-legend", "--plain", "corral-*"]);
    assert_eq!(units.trim(), "", "scopes left behind after the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn limit_changes_a_live_scope() {
    let mut c = Corrald::new(&demo_group("web", 2, UNITS, ""));
    c.start();
    c.wait_ready("web", 2).await;
    let (code, text, err) = c.ctl(&["limit", "web", "MemoryMax=64M", "CPUQuota=50%"]);
    assert_eq!(code, Some(0), "{text} {err}");
    assert!(text.contains("corral-web.scope: MemoryMax=67108864 CPUQuotaPerSecUSec=500000"), "{text}");
    assert_eq!(show("corral-web.scope", "MemoryMax"), "67108864");
    assert_eq!(show("corral-web.scope", "CPUQuotaPerSecUSec"), "500ms");

    // Sizes as operators write them besides systemd's own spelling.
    let (code, text, err) = c.ctl(&["limit", "web", "MemoryMax=96m"]);
    assert_eq!(code, Some(0), "{text} {err}");
    assert_eq!(show("corral-web.scope", "MemoryMax"), (96u64 << 20).to_string());

    let (code, text, err) = c.ctl(&["limit", "web", "MemoryMax=lots"]);
    assert_eq!(code, Some(1), "{text} {err}");
    assert!(text.contains("invalid size"), "{text}");

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn an_operator_drop_in_applies_to_the_scope() {
    let dir = std::path::Path::new("/etc/systemd/system/corral-dropped.scope.d");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("50-operator.conf"), "[Scope]\nTasksMax=77\n").unwrap();
    assert!(run("systemctl", &["daemon-reload"]).0);

    let mut c = Corrald::new(&demo_group("dropped", 1, UNITS, ""));
    c.start();
    c.wait_ready("dropped", 1).await;
    assert_eq!(show("corral-dropped.scope", "TasksMax"), "77");
    assert!(show("corral-dropped.scope", "DropInPaths").contains("50-operator.conf"));

    c.shutdown_ok().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn systemctl_stop_of_a_scope_drains_its_group_only() {
    let groups = [demo_group("web", 3, UNITS, ""), demo_group("other", 2, UNITS, "")].concat();
    let mut c = Corrald::new(&groups);
    c.start();
    c.wait_ready("web", 3).await;
    c.wait_ready("other", 2).await;
    c.wait_work("work in flight", |log| log.started.len() >= 10).await;
    let web = sorted_pids(&c, "web").await;
    let other = sorted_pids(&c, "other").await;

    // systemctl stop returns once the scope is empty.
    let (ok, text) = run("systemctl", &["stop", "corral-web.scope"]);
    assert!(ok, "{text}");
    assert!(web.iter().all(|p| !pid_alive(*p)), "web workers outlived the stop");
    let log = c.work_log();
    let web_unfinished: Vec<_> = log.unfinished().into_iter().filter(|u| u.0.starts_with("web-")).collect();
    assert_eq!(web_unfinished, vec![], "the stop was a drain, not a kill");
    assert_eq!(log.exits.iter().filter(|e| e.0.starts_with("web-")).count(), 3);
    // The stop was corrald's soft stop: the workers stay stopped, not restarted.
    let status = c.status().await;
    let web_group = group(&status, "web");
    assert_eq!((web_group.running, web_group.stopped), (0, 3), "{status:?}");
    assert_eq!(group(&status, "other").ready, 2);
    assert_eq!(sorted_pids(&c, "other").await, other);
    assert_eq!(status_pids("corral-other.scope"), other);
    assert!(c.stderr().contains("systemd asks to stop the scope"), "{}", c.stderr());

    c.shutdown_ok().await;
}

/// The next event of a subscription: its worker and kind.
async fn next_event(events: &mut corral::ctl::Client) -> (String, corral::proto::event::Kind) {
    match next_answer(events).await.content {
        Some(proto::response::Content::Event(proto::Event { kind: Some(kind), worker, .. })) => (worker, kind),
        other => panic!("not an event: {other:?}"),
    }
}

/// The events of a worker in a scope: a restarted worker is placed in its
/// group's scope before it is ready, and `systemctl stop` of the scope is a
/// request like a client's, told with systemd's uid and its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn events_tell_a_placement_and_a_stop_through_systemd() {
    use corral::proto::event::Kind;
    let mut c = Corrald::new(&demo_group("web", 2, UNITS, ""));
    c.start();
    c.wait_ready("web", 2).await;
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);
    let mut events = c.client().await;
    events.send(Cmd::Subscribe(proto::Subscribe { target: "web".into(), replay: 0 })).await.expect("subscribe");
    assert_eq!(next_answer(&mut events).await.message, "subscribed");

    let (_, last) = c.call(Cmd::Restart(proto::Restart { target: "web-1".into(), ..Default::default() })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    let mut kinds = Vec::new();
    loop {
        let (worker, kind) = next_event(&mut events).await;
        match kind {
            Kind::Spawned(_) | Kind::Exited(_) => kinds.push(worker),
            Kind::Placed(p) => {
                assert_eq!((worker.as_str(), p.unit.as_str()), ("web-1", "corral-web.scope"), "{p:?}");
                kinds.push("placed".into());
            }
            Kind::Ready(r) => {
                assert_eq!(kinds, ["web-1", "web-1", "placed"], "exited, spawned, placed, then ready");
                assert!(status_pids("corral-web.scope").contains(&r.pid), "{r:?}");
                break;
            }
            Kind::GroupState(_) => {}
            other => panic!("unexpected before web-1 is ready: {other:?}"),
        }
    }

    let (ok, text) = run("systemctl", &["stop", "corral-web.scope"]);
    assert!(ok, "{text}");
    let request = loop {
        if let (_, Kind::Request(r)) = next_event(&mut events).await {
            if r.arguments.iter().any(|a| a == "unit=corral-web.scope") {
                break r;
            }
        }
    };
    assert_eq!((request.command.as_str(), request.uid, request.outcome.as_str()), ("Stop", 0, "ok"), "{request:?}");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn scopes_keep_their_workers_when_corrald_dies_and_a_new_corrald_joins_them() {
    let groups =
        [demo_group("web", 2, UNITS, "scope = \"group\"\n"), demo_group("per", 1, UNITS, "scope = \"worker\"\n")]
            .concat();
    let mut c = Corrald::new(&groups);
    c.start();
    c.wait_ready("web", 2).await;
    c.wait_ready("per", 1).await;
    let web = sorted_pids(&c, "web").await;
    let per = sorted_pids(&c, "per").await;

    let mut first = c.child.take().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(show("corral-web.scope", "ActiveState"), "active");
    assert_eq!(status_pids("corral-web.scope"), web, "the scope kept the workers of a dead corrald");
    assert_eq!(status_pids("corral-per-1.scope"), per);
    assert!(web.iter().chain(&per).all(|p| pid_alive(*p)));

    // A second corrald that does not know the first's workers (no runtime
    // file, so nothing to adopt) meets scopes of the same names. Live ones
    // are joined: its new workers go into them beside the old ones.
    std::fs::remove_file(c.dir.path().join("state/workers.json")).expect("the first corrald's runtime file");
    c.start();
    c.wait_ready("web", 2).await;
    c.wait_ready("per", 1).await;
    let web2 = sorted_pids(&c, "web").await;
    let per2 = sorted_pids(&c, "per").await;
    let mut both: Vec<u32> = web.iter().chain(&web2).copied().collect();
    both.sort();
    assert_eq!(status_pids("corral-web.scope"), both);
    let mut both: Vec<u32> = per.iter().chain(&per2).copied().collect();
    both.sort();
    assert_eq!(status_pids("corral-per-1.scope"), both);
    assert!(c.stderr().contains("existed from an earlier run and was joined"), "{}", c.stderr());

    c.shutdown_ok().await;
    // The first corrald's orphans are the operator's to stop, as any unit.
    assert!(run("systemctl", &["stop", "corral-web.scope", "corral-per-1.scope"]).0);
    assert!(web.iter().chain(&per).all(|p| !pid_alive(*p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_rejected_placement_never_runs_the_worker() {
    // corral refuses bad property values itself (TasksMax = 0 no longer
    // passes --check-config), so the refusal comes from systemd: the
    // scope's slice is masked.
    let slice = "corral-masked.slice";
    assert!(run("systemctl", &["mask", slice]).0);
    let mut c = Corrald::new(&format!("slice = \"{slice}\"\n{}", demo_group("bad", 1, UNITS, "restart = \"never\"\n")));
    c.start();
    let w = c
        .wait_workers("the placement to fail", |w| w.iter().any(|w| w.state == "failed" || w.state == "stopped"))
        .await;
    let last_exit = &w[0].last_exit;
    assert!(last_exit.starts_with("never ran:"), "{last_exit}");
    assert!(last_exit.contains("corral-bad.scope"), "names the unit: {last_exit}");
    assert!(last_exit.contains(slice), "names what systemd refused: {last_exit}");
    assert!(c.work_log().started.is_empty() && !c.log.exists(), "the worker's command ran");
    let (_, units) = run("systemctl", &["list-units", "--no-legend", "--plain", "corral-bad*"]);
    assert_eq!(units.trim(), "");

    c.shutdown_ok().await;
    assert!(run("systemctl", &["unmask", slice]).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn placement_goes_on_after_systemd_re_executes() {
    let mut c = Corrald::new(&demo_group("web", 1, UNITS, "scope = \"worker\"\n"));
    c.start();
    c.wait_ready("web", 1).await;
    assert!(run("systemctl", &["daemon-reexec"]).0);
    let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "web".into(), count: 3 })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}\n{}", c.stderr_tail());
    for (id, pid) in c.pids("web").await {
        assert_eq!(status_pids(&format!("corral-{id}.scope")), vec![pid]);
    }
    c.shutdown_ok().await;
}

/// Watches systemd's job queue until told to stop: the most start jobs of
/// scopes named `prefix*` it saw queued at once. A placement holds its place
/// in corrald's window until its job is done, so no sample can exceed the
/// window while it holds; without one, a burst of starts shows many more.
fn watch_jobs(prefix: &'static str) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<usize>) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let watcher = std::thread::spawn(move || {
        let mut most = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (_, jobs) = run("systemctl", &["list-jobs", "--no-legend", "--plain"]);
            most = most.max(jobs.lines().filter(|l| l.contains(prefix)).count());
        }
        most
    });
    (done, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn placements_in_flight_stay_within_the_window_and_none_is_lost() {
    // A failure here must not leave 200 scopes for the next test.
    struct StopScopes;
    impl Drop for StopScopes {
        fn drop(&mut self) {
            let _ = run("systemctl", &["stop", "corral-many-*.scope"]);
        }
    }
    let _cleanup = StopScopes;
    // 200 workers asked for at once, each in its own scope: without a
    // window every placement would wait on the bus at the same time.
    let mut c = Corrald::new(
        "[groups.many]\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\ncount = 200\nstop_mode = \"signal\"\n\
         ready_after = \"10ms\"\nscope = \"worker\"\nstart_limit_burst = 1\n",
    );
    let (done, watcher) = watch_jobs("corral-many-");
    c.start();
    c.wait_ready("many", 200).await;
    // Signal-mode readiness counts from the fork, so the last placements
    // may still be finishing.
    c.poll("one scope per worker", || async {
        let (_, units) = run("systemctl", &["list-units", "--no-legend", "--plain", "corral-many-*.scope"]);
        if units.lines().count() == 200 {
            Ok(())
        } else {
            Err(units)
        }
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    assert!(most <= 8, "{most} scope start jobs queued at once; limits.max_dbus_calls is 8");
    assert!(!c.stderr().contains("not started"), "{}", c.stderr_tail());
    c.shutdown_ok().await;
}

/// The unified (v2) cgroup hierarchy's mount point: /sys/fs/cgroup on a
/// unified host, /sys/fs/cgroup/unified on a hybrid one.
fn cgroup2_mount() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("a cgroup2 mount")
}

/// The v2 cgroup /proc shows `pid` in.
fn unified_cgroup(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string).unwrap_or_else(|| panic!("{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_group_scope_gives_each_worker_a_leaf_with_its_own_accounting() {
    let mut c = Corrald::new(&demo_group("web", 3, UNITS, "scope = \"group\"\n"));
    c.start();
    c.wait_ready("web", 3).await;
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);
    c.wait_work("work in flight", |log| log.started.len() >= 6).await;

    let scope = show("corral-web.scope", "ControlGroup");
    assert_eq!(scope, "/corral.slice/corral-web.scope");
    let scope_dir = format!("{}{scope}", cgroup2_mount());
    let workers = c.pids("web").await;
    assert_eq!(workers.len(), 3);
    for (id, pid) in &workers {
        assert_eq!(unified_cgroup(*pid), format!("{scope}/{id}"), "{id} is in its own leaf");
        let procs = std::fs::read_to_string(format!("{scope_dir}/{id}/cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid.to_string(), "{id}'s leaf holds just its worker");
        // CPU time is counted per leaf on every cgroup2 host; memory, pids
        // and io where the scope is offered those controllers (a hybrid host
        // keeps them on v1 and offers none).
        let cpu = std::fs::read_to_string(format!("{scope_dir}/{id}/cpu.stat")).unwrap();
        assert!(cpu.lines().any(|l| l.starts_with("usage_usec ")), "{cpu}");
    }
    assert_eq!(std::fs::read_to_string(format!("{scope_dir}/cgroup.procs")).unwrap().trim(), "", "the root is empty");
    let offered = std::fs::read_to_string(format!("{scope_dir}/cgroup.controllers")).unwrap();
    let enabled = std::fs::read_to_string(format!("{scope_dir}/cgroup.subtree_control")).unwrap();
    for controller in
        ["cpu", "io", "memory", "pids"].into_iter().filter(|c| offered.split_whitespace().any(|o| o == *c))
    {
        assert!(enabled.split_whitespace().any(|e| e == controller), "{controller} offered but not enabled: {enabled}");
    }
    if offered.split_whitespace().any(|c| c == "memory") {
        for id in workers.keys() {
            assert!(std::path::Path::new(&format!("{scope_dir}/{id}/memory.current")).exists(), "{id}");
        }
    }
    // An operator sees the leaves under the one unit.
    assert_eq!(status_pids("corral-web.scope"), sorted_pids(&c, "web").await);
    let (_, cgls) = run("systemd-cgls", &["--no-pager", "-u", "corral-web.scope"]);
    for id in workers.keys() {
        let listed = |l: &str| l.trim_start_matches(['├', '└', '─', '│', ' ']).split_whitespace().next() == Some(id);
        assert!(cgls.lines().any(listed), "{id}: {cgls}");
    }

    // Scaling down stops web-2 and web-3 and removes their leaves.
    let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "web".into(), count: 1 })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    // The final answer can come before corrald has handled the exit.
    let scope_dir = scope_dir.as_str();
    c.poll("the leaves of web-2 and web-3 to go", || async move {
        let left: Vec<String> = ["web-2", "web-3"]
            .iter()
            .map(|id| format!("{scope_dir}/{id}"))
            .filter(|leaf| std::path::Path::new(leaf).exists())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?} outlived their workers"))
        }
    })
    .await;
    assert!(std::path::Path::new(&format!("{scope_dir}/web-1")).exists());
    // Scaling up again puts the new worker into a fresh leaf of the live scope.
    let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "web".into(), count: 2 })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    let web2 = c.pids("web").await["web-2"];
    assert_eq!(unified_cgroup(web2), format!("{scope}/web-2"));

    c.shutdown_ok().await;
    assert!(!std::path::Path::new(&scope_dir).exists(), "the scope's cgroup outlived the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn scaling_past_max_scopes_is_refused_and_changes_nothing() {
    let groups = format!(
        "[limits]\nmax_scopes = 3\n{}{}",
        demo_group("per", 2, UNITS, "scope = \"worker\"\n"),
        demo_group("web", 2, UNITS, "")
    );
    let mut c = Corrald::new(&groups);
    c.start();
    c.wait_ready("per", 2).await;
    c.wait_ready("web", 2).await;
    let before = c.pids("per").await;

    let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "per".into(), count: 3 })).await;
    assert_eq!(last.status(), Status::Failure, "{last:?}");
    let text = format!("{last:?}");
    assert!(text.contains("limits.max_scopes") && text.contains("nothing changed"), "{text}");
    assert_eq!(c.pids("per").await, before);
    let (_, units) = run("systemctl", &["list-units", "--no-legend", "--plain", "corral-per-*"]);
    assert_eq!(units.lines().count(), 2, "{units}");
    // A group scope holds any number of workers as one scope.
    let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "web".into(), count: 5 })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");

    c.shutdown_ok().await;
}

/// Which of an operator's changes to a scope outlive the scope, when
/// corrald recreates it (here: every worker of a group scope stopped at
/// once, so the scope empties and goes, then started). README ("Scopes") states the
/// same: drop-ins and `corralctl limit` values are kept; a `systemctl
/// set-property`, with or without --runtime, lasts only as long as the
/// scope it was made on (systemd keeps it with the transient unit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn what_survives_a_scope_recreated_by_corrald() {
    let dir = std::path::Path::new("/etc/systemd/system/corral-kept.scope.d");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("50-operator.conf"), "[Scope]\nTasksMax=77\n").unwrap();
    assert!(run("systemctl", &["daemon-reload"]).0);
    let mut c = Corrald::new(&demo_group("kept", 2, UNITS, ""));
    c.start();
    c.wait_ready("kept", 2).await;
    let (code, text, err) = c.ctl(&["limit", "kept", "CPUWeight=33"]);
    assert_eq!(code, Some(0), "{text} {err}");
    let (ok, text) = run("systemctl", &["set-property", "corral-kept.scope", "MemoryMax=200M"]);
    assert!(ok, "{text}");
    let (ok, text) = run("systemctl", &["set-property", "--runtime", "corral-kept.scope", "IOWeight=44"]);
    assert!(ok, "{text}");
    let seen = || ["TasksMax", "CPUWeight", "MemoryMax", "IOWeight"].map(|p| show("corral-kept.scope", p)).join(" ");
    assert_eq!(seen(), "77 33 209715200 44");
    let first = show("corral-kept.scope", "InvocationID");

    let (code, text, err) = c.ctl(&["stop", "kept"]);
    assert_eq!(code, Some(0), "{text} {err}");
    poll_blocking("the empty scope to go", PATIENCE, || match show("corral-kept.scope", "ActiveState").as_str() {
        "active" => Err("active".to_string()),
        _ => Ok(()),
    });
    let (code, text, err) = c.ctl(&["start", "kept"]);
    assert_eq!(code, Some(0), "{text} {err}");
    c.wait_ready("kept", 2).await;
    assert_ne!(show("corral-kept.scope", "InvocationID"), first, "the scope was recreated");
    assert_eq!(seen(), "77 33 infinity [not set]", "drop-in and limit kept, set-property gone");

    c.shutdown_ok().await;
    std::fs::remove_dir_all(dir).unwrap();
    assert!(run("systemctl", &["daemon-reload"]).0);
}

/// A signal to a whole group's scope ends every worker at once, 10 of them
/// against a start limit of 5: that is one restart of each worker, not a
/// crash loop. Both SIGKILL and SIGTERM (on which the demo workers drain
/// and exit 0) end with all 10 running again in the scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_signal_to_a_group_scope_restarts_every_worker_and_never_fails_the_group() {
    let extra = "restart = \"always\"\nstart_limit_burst = 5\nstart_limit_interval = \"10s\"\n";
    let mut c = Corrald::new(&demo_group("web", 10, UNITS, extra));
    c.start();
    c.wait_ready("web", 10).await;
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);

    for signal in ["SIGKILL", "SIGTERM"] {
        let before = sorted_pids(&c, "web").await;
        assert_eq!(before.len(), 10);
        // systemd 252 on a hybrid host signals every process of the scope
        // and may still exit non-zero ("Failed to send signal SIGKILL to
        // auxiliary processes: No such device"): the workers' exits are
        // what count.
        run("systemctl", &["kill", "-s", signal, "corral-web.scope"]);
        let before = &before;
        let c = &c;
        let after = c
            .poll(&format!("10 new workers after {signal} to the scope"), || async move {
                let s = c.status().await;
                let web = group(&s, "web");
                assert_ne!(web.state, "failed", "{signal} to the scope failed the group: {web:?}\n{}", c.stderr_tail());
                let pids = sorted_pids(c, "web").await;
                let fresh = pids.len() == 10 && pids.iter().all(|p| !before.contains(p));
                if web.ready == 10 && fresh {
                    Ok(pids)
                } else {
                    Err(format!("{web:?}: {pids:?}"))
                }
            })
            .await;
        assert!(before.iter().all(|p| !pid_alive(*p)), "{signal}: a worker outlived the signal");
        assert_eq!(show("corral-web.scope", "ActiveState"), "active");
        assert_eq!(status_pids("corral-web.scope"), after, "after {signal} the scope holds the new workers");
    }
    let workers = c.workers().await;
    assert!(workers.iter().all(|w| w.restarts == 2 && w.state == "ready"), "{workers:?}");
    c.shutdown_ok().await;
}

/// Whether each worker is in its own scope, as /proc says.
fn in_their_scopes(pids: &std::collections::BTreeMap<String, u32>) -> Result<(), String> {
    let astray: Vec<String> = pids
        .iter()
        .filter(|(id, pid)| !unified_cgroup(**pid).ends_with(&format!("/corral-{id}.scope")))
        .map(|(id, pid)| format!("{id} (pid {pid}) in {}", unified_cgroup(*pid)))
        .collect();
    if astray.is_empty() {
        Ok(())
    } else {
        Err(astray.join(", "))
    }
}

/// How many scopes named `prefix*` have a cgroup under corral.slice.
fn scopes_made(prefix: &str) -> usize {
    let slice = format!("{}/corral.slice", cgroup2_mount());
    let Ok(entries) = std::fs::read_dir(slice) else { return 0 };
    entries.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count()
}

/// Lines of corrald's log that show a placement's exchange with systemd
/// cut short: retried, confirmed from /proc, or failed.
fn interrupted_placements(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("trying again in") || l.contains("after the D-Bus exchange failed") || l.contains("not started")
        })
        .count()
}

/// `systemctl daemon-reexec` while placements are in flight: the calls it
/// cuts short are retried once /proc and the unit say what became of them,
/// and no worker counts it as a failure. Each round scales a group of
/// worker scopes from 0 to 100 and re-executes the manager once systemd
/// shows one of their start jobs, until a round's log shows a placement
/// interrupted (at most 10 rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn placements_cut_short_by_daemon_reexec_are_retried_and_never_count() {
    struct StopScopes;
    impl Drop for StopScopes {
        fn drop(&mut self) {
            let _ = run("systemctl", &["stop", "corral-re-*.scope"]);
        }
    }
    let _cleanup = StopScopes;
    let mut c = Corrald::new(
        "[groups.re]\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\ncount = 0\nstop_mode = \"signal\"\n\
         ready_after = \"10ms\"\nscope = \"worker\"\nrestart = \"always\"\nstart_limit_burst = 1\n",
    );
    c.start();
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);
    let mut interrupted = 0;
    for round in 1..=10 {
        let seen_before = interrupted_placements(&c.stderr());
        let mut client = c.client().await;
        let scale = tokio::spawn(async move {
            let cmd = Cmd::Scale(proto::Scale { group: "re".into(), count: 100 });
            tokio::time::timeout(PATIENCE * 2, client.call(cmd, |_| {})).await
        });
        // Some scopes made and not all: placements are in flight. The whole
        // scale may also finish between two looks; the round then tries again.
        while !scale.is_finished() {
            let made = scopes_made("corral-re-");
            if (1..100).contains(&made) {
                assert!(run("systemctl", &["daemon-reexec"]).0, "round {round}");
                break;
            }
            tokio::task::yield_now().await;
        }
        let last = scale.await.unwrap().expect("the scale's answer in time").expect("the scale's answer");
        interrupted = interrupted_placements(&c.stderr()) - seen_before;
        assert_eq!(last.status(), Status::Ok, "round {round}: {last:?}\n{}", c.stderr_tail());
        if interrupted > 0 {
            break;
        }
        let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "re".into(), count: 0 })).await;
        assert_eq!(last.status(), Status::Ok, "round {round}: {last:?}");
    }
    assert!(interrupted > 0, "no daemon-reexec in 10 rounds cut a placement short:\n{}", c.stderr_tail());

    let log = c.stderr();
    assert!(!log.contains("not started"), "a placement failed:\n{}", c.stderr_tail());
    let s = c.status().await;
    let re = group(&s, "re");
    assert_eq!((re.state.as_str(), re.ready), ("running", 100), "{re:?}");
    let workers = c.workers().await;
    let counted: Vec<_> = workers.iter().filter(|w| w.restarts != 0 || !w.last_exit.is_empty()).collect();
    assert!(counted.is_empty(), "workers that counted the re-exec as a failure: {counted:?}");
    let pids = c.pids("re").await;
    assert_eq!(pids.len(), 100);
    c.poll("every worker in its own scope", || async { in_their_scopes(&pids) }).await;
    c.shutdown_ok().await;
}

/// Whoever owns `name` on the system bus, by `busctl status`: its pid.
fn bus_owner(name: &str) -> Result<u32, String> {
    let (ok, out) = run("busctl", &["--system", "status", name]);
    if !ok {
        return Err(out);
    }
    out.lines().find_map(|l| l.strip_prefix("PID=")?.trim().parse().ok()).ok_or(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn systemctl_stop_of_a_scope_is_still_a_drain_after_the_bus_restarts() {
    install_bus_policy();
    let mut c = Corrald::new(&demo_group("bus", 3, UNITS, "scope = \"worker\"\n"));
    c.start();
    c.wait_ready("bus", 3).await;
    c.wait_work("bus-3 at work", |log| log.started.iter().any(|u| u.0 == "bus-3")).await;
    let bus3 = c.pids("bus").await["bus-3"];

    assert!(run("systemctl", &["restart", "dbus.service"]).0);
    // The scope's controller is corrald again once it is back on the bus.
    let pid = c.pid();
    c.poll("corrald to be back on the bus as corral-bus-3.scope's controller", || async move {
        let controller = show("corral-bus-3.scope", "Controller");
        match bus_owner(&controller) {
            Ok(owner) if owner == pid => Ok(()),
            other => Err(format!("Controller={controller}: {other:?}")),
        }
    })
    .await;

    // Before, systemd sent RequestStop to a name nobody had, waited its
    // TimeoutStopSec (90s) and killed the worker.
    let began = std::time::Instant::now();
    let (ok, text) = run("timeout", &["120", "systemctl", "stop", "corral-bus-3.scope"]);
    let took = began.elapsed();
    assert!(ok, "{text}");
    assert!(took < PATIENCE, "systemctl stop took {took:?}\n{}", c.stderr_tail());
    assert!(!pid_alive(bus3), "bus-3 outlived the stop");
    let log = c.work_log();
    let unfinished: Vec<_> = log.unfinished().into_iter().filter(|u| u.0 == "bus-3").collect();
    assert_eq!(unfinished, vec![], "the stop was a drain, not a kill");
    assert!(log.exits.iter().any(|e| e.1 == bus3), "bus-3 exited on its own: {log:?}");
    // A soft stop: bus-3 stays stopped, not restarted as a crash.
    let workers = c.workers().await;
    assert_eq!(worker(&workers, "bus-3").state, "stopped", "{workers:?}");
    let status = c.status().await;
    let g = group(&status, "bus");
    assert_eq!((g.running, g.stopped), (2, 1), "{status:?}");
    let (_, scope_log) = run("journalctl", &["--no-pager", "-o", "cat", "-u", "corral-bus-3.scope"]);
    assert!(!scope_log.contains("timeout") && !scope_log.contains("Killing"), "{scope_log}");
    // Placement still works on the new connection.
    let (_, last) = c.call(Cmd::Start(proto::Start { target: "bus-3".into() })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}\n{}", c.stderr_tail());
    let bus3 = c.pids("bus").await["bus-3"];
    assert_eq!(status_pids("corral-bus-3.scope"), vec![bus3]);

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn stops_through_systemd_are_audited_with_systemd_as_the_actor() {
    let mut c = Corrald::new("");
    let (text, json) = (c.dir.path().join("audit.log"), c.dir.path().join("audit.jsonl"));
    c.write_config(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\n{}{}",
        demo_group("aud", 2, UNITS, ""),
        demo_group("audw", 1, UNITS, "scope = \"worker\"\n")
    ));
    c.start();
    c.wait_ready("aud", 2).await;
    c.wait_ready("audw", 1).await;

    // Any client of the bus may send a signal that looks like systemd's;
    // one from nobody stops nothing and is no record, and a flood of them
    // (checked one at a time through a bounded queue) leaves corrald as
    // it was.
    let (uid, gid) = (format!("--reuid={}", OUTSIDER.0), format!("--regid={}", OUTSIDER.1));
    let forged = "busctl --system emit /org/freedesktop/systemd1/unit/corral_2daud_2escope \
                  org.freedesktop.systemd1.Scope RequestStop";
    let flood = format!("for i in $(seq 500); do {forged} & done; wait");
    let args = [uid.as_str(), gid.as_str(), "--clear-groups", "bash", "-c", flood.as_str()];
    let (ok, out) = run("setpriv", &args);
    assert!(ok, "{out}");
    c.wait_stderr("the forged RequestStop to be ignored", |log| log.contains("which is not systemd")).await;
    c.assert_alive();
    assert_eq!(group(&c.status().await, "aud").ready, 2);

    assert!(run("systemctl", &["stop", "corral-aud.scope"]).0);
    assert!(run("systemctl", &["stop", "corral.slice"]).0);
    let status = c.status().await;
    assert_eq!((group(&status, "aud").stopped, group(&status, "audw").stopped), (2, 1), "{status:?}");

    // Each stop: accepted before it ran, then its outcome, in every sink.
    let wanted = [
        ("aud", "-", "Stop(target=aud, hard=false, unit=corral-aud.scope)"),
        ("audw", "audw-1", "Stop(target=audw-1, hard=false, unit=corral-audw-1.scope)"),
    ];
    let text = text.as_path();
    let lines = c
        .poll("both stops and their outcomes in the text log", || async move {
            holding(lines(text), |l| l.iter().filter(|l| l.contains("\tresult=ok\t")).count() == 2)
        })
        .await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for (group, worker, command) in wanted {
        let ours: Vec<&String> = lines.iter().filter(|l| l.contains(&format!(" {group} {worker}]\t"))).collect();
        assert_eq!(ours.len(), 2, "{lines:#?}");
        for (line, result) in ours.iter().zip(["accepted", "ok"]) {
            assert!(line.starts_with("[0 "), "no connection of the socket: {line}");
            assert!(line.contains(&format!("\tAUDIT\t{command}\t")), "{line}");
            assert!(line.contains("\tactor_kind=systemd\tactor_uid=0\tactor_gid=0\tactor_pid=1\t"), "{line}");
            assert!(line.contains("\tactor_bus_name=:1."), "{line}");
            assert!(line.contains(&format!("\tresult={result}\t")), "{line}");
        }
    }

    let records: Vec<_> = json_lines(&json).into_iter().filter(|r| r["record"] == "audit").collect();
    assert_eq!(records.len(), 4, "{records:#?}");
    for r in &records {
        assert_eq!(r["actor"]["kind"], "systemd", "{r}");
        assert_eq!((r["actor"]["uid"].as_u64(), r["actor"]["pid"].as_u64()), (Some(0), Some(1)), "{r}");
        assert!(r["actor"]["bus_name"].as_str().is_some_and(|n| n.starts_with(":1.")), "{r}");
        assert_eq!(r["command"], "Stop", "{r}");
    }

    // "Who stopped my workers?", asked of the journal.
    let message_id = format!("MESSAGE_ID={}", corral::audit::MESSAGE_ID);
    let corrald = format!("_PID={}", c.pid());
    for (group, _, _) in wanted {
        let group = format!("CORRAL_AUDIT_GROUP={group}");
        let filters = [message_id.as_str(), corrald.as_str(), "CORRAL_AUDIT_ACTOR_KIND=systemd", group.as_str()];
        let entries =
            c.poll("the records in the journal", || async { holding(journal(&filters), |e| e.len() == 2) }).await;
        let results: Vec<&str> = entries.iter().filter_map(|e| e["CORRAL_AUDIT_RESULT"].as_str()).collect();
        assert_eq!(results, ["accepted", "ok"], "{entries:?}");
        for e in &entries {
            assert_eq!(e["CORRAL_AUDIT_ACTOR_PID"], "1", "{e}");
            assert_eq!(e["CORRAL_AUDIT_ACTOR_UID"], "0", "{e}");
            assert_eq!(e["CORRAL_AUDIT_COMMAND"], "Stop", "{e}");
        }
    }

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_stop_asked_for_while_corrald_is_off_the_bus_is_a_drain_once_it_is_back() {
    install_bus_policy();
    let mut c = Corrald::new(&demo_group("gap", 2, UNITS, "scope = \"worker\"\n"));
    c.env.push(("CORRAL_FAULT_RECONNECT_DELAY_MS".into(), "3000".into()));
    c.start();
    c.wait_ready("gap", 2).await;
    c.wait_work("gap-2 at work", |log| log.started.iter().any(|u| u.0 == "gap-2")).await;
    let gap2 = c.pids("gap").await["gap-2"];

    // systemd is back on the bus and corrald not yet: its RequestStop goes
    // to a name nobody owns.
    assert!(run("systemctl", &["restart", "dbus.service"]).0);
    c.poll("systemd back on the bus, corrald not", || async {
        match (bus_owner("org.freedesktop.systemd1"), bus_owner("org.corral.Corrald")) {
            (Ok(_), Err(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let began = std::time::Instant::now();
    let (ok, text) = run("timeout", &["120", "systemctl", "stop", "corral-gap-2.scope"]);
    let took = began.elapsed();
    assert!(ok, "{text}");
    assert!(took < PATIENCE, "systemctl stop took {took:?}\n{}", c.stderr_tail());
    assert!(!pid_alive(gap2));
    let log = c.work_log();
    let unfinished: Vec<_> = log.unfinished().into_iter().filter(|u| u.0 == "gap-2").collect();
    assert_eq!(unfinished, vec![], "the stop was a drain, not a kill");
    let workers = c.workers().await;
    assert_eq!(worker(&workers, "gap-2").state, "stopped", "{workers:?}");
    assert_eq!(worker(&workers, "gap-1").state, "ready", "{workers:?}");

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn an_exec_probe_runs_in_its_worker_s_cgroup_as_its_user() {
    needs_root("the probe runs as the group's user, nobody");
    let mut c = Corrald::new("");
    let shared = c.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    chmod(c.dir.path(), 0o755);
    let script = c.dir.path().join("probe.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$(id -u) $(grep '^0::' /proc/self/cgroup | cut -c4-)\" >>{}/runs\nexit 1\n",
            shared.display()
        ),
    )
    .unwrap();
    chmod(&script, 0o755);
    // No work log: nobody could not write it.
    c.write_config(&format!(
        "[groups.p]\ncommand = \"{{demo}}\"\ncount = 2\nuser = \"nobody\"\nscope = \"group\"\n\
         [groups.p.health.liveness]\nexec = [\"{}\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         failure_threshold = 100\n",
        script.display()
    ));
    c.start();
    c.wait_ready("p", 2).await;
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);
    let listed = c
        .wait_workers("2 failed probes of each worker", |ws| {
            ws.iter().all(|w| w.health.iter().any(|h| h.kind == "liveness" && h.consecutive_failures >= 2))
        })
        .await;
    let runs = std::fs::read_to_string(shared.join("runs")).unwrap();
    for w in &listed {
        let leaf = format!("/corral.slice/corral-p.scope/{}", w.id);
        assert_eq!(unified_cgroup(w.pid), leaf);
        assert!(runs.lines().any(|l| l == format!("65534 {leaf}")), "a probe as nobody in {leaf}: {runs}");
    }
    assert!(runs.lines().all(|l| l.starts_with("65534 /corral.slice/corral-p.scope/p-")), "{runs}");
    c.shutdown_ok().await;
}

/// A figure systemd shows for a unit: `None` for `[not set]`, systemd's
/// word for a figure it does not account.
fn shown_number(unit: &str, prop: &str) -> Option<u64> {
    let text = show(unit, prop);
    match text.parse() {
        Ok(n) => Some(n),
        Err(_) if text == "[not set]" => None,
        Err(_) => panic!("{prop} of {unit} is {text:?}"),
    }
}

/// corrald reads a worker in its own scope as systemd accounts the scope:
/// from the scope's cgroup, agreeing with systemd's MemoryCurrent and
/// TasksCurrent, where systemd has memory accounting; where it has none
/// (a container whose v1 controllers are the host's, mounted read-only, as
/// on hybrid hosts: the worker sits in their root cgroup with everything
/// else), from /proc, never from a cgroup that is not the worker's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_worker_in_its_own_scope_is_read_as_systemd_accounts_its_scope() {
    // MemoryMax has systemd account the scope's memory wherever it can,
    // whatever its defaults.
    let groups = [
        "usage_interval = \"200ms\"\n".to_string(),
        demo_group(
            "hog",
            1,
            &["--hold-memory", "64", "--burn-cpu", "30"],
            "scope = \"worker\"\n[groups.hog.resources]\nMemoryMax = \"1G\"\n",
        ),
    ]
    .concat();
    let mut c = Corrald::new(&groups);
    c.start();
    c.wait_ready("hog", 1).await;
    assert!(c.status().await.scopes_active, "{}", NEEDS_SYSTEMD);
    let unit = "corral-hog-1.scope";
    const MIB: u64 = 1 << 20;
    // The reading is of a moment before systemd's: with a steady 64 MiB
    // they agree within 4 MiB; tasks come and go (the runtime's blocking
    // threads), so both are compared at a moment they agree on.
    let (usage, accounted) = c
        .poll("corrald's reading to agree with what systemd accounts", || async {
            let workers = c.workers().await;
            let Some(usage) = worker(&workers, "hog-1").usage.clone() else { return Err("no reading yet".into()) };
            let (memory, tasks) = (shown_number(unit, "MemoryCurrent"), shown_number(unit, "TasksCurrent"));
            let agree = match memory {
                Some(memory) => usage.memory_bytes.abs_diff(memory) <= 4 * MIB && usage.tasks == tasks,
                None => true,
            };
            if agree && usage.cpu_percent.is_some() {
                Ok((usage, memory))
            } else {
                Err(format!("{usage:?}, MemoryCurrent={memory:?}, TasksCurrent={tasks:?}"))
            }
        })
        .await;
    assert!(usage.memory_bytes >= 64 * MIB, "{usage:?}");
    assert!(usage.memory_peak_bytes.is_some_and(|p| p >= usage.memory_bytes), "{usage:?}");
    assert!(usage.cpu_time_us > 0, "{usage:?}");
    let expected = if accounted.is_some() { "cgroup" } else { "proc" };
    assert_eq!(usage.source, expected, "{usage:?}, MemoryCurrent={accounted:?}");
    if let Some(cpu_ns) = shown_number(unit, "CPUUsageNSec") {
        assert!(usage.cpu_time_us * 1000 <= cpu_ns, "{usage:?}, CPUUsageNSec={cpu_ns}");
    }
    eprintln!("{unit}: read from {expected}; {usage:?}, MemoryCurrent={accounted:?}");

    let (code, text, err) = c.ctl(&["workers"]);
    assert_eq!(code, Some(0), "{text}{err}");
    let row = text.lines().find(|l| l.starts_with("hog-1 ")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.split_whitespace().any(|c| c == expected), "{text}");

    // The metrics name the same source, and count the placement's time.
    let (code, metrics, err) = c.ctl(&["metrics"]);
    assert_eq!(code, Some(0), "{err}");
    let value =
        |series: &str| metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok());
    let memory = format!("corral_worker_memory_bytes{{group=\"hog\",worker=\"hog-1\",source=\"{expected}\"}}");
    assert!(value(&memory).is_some_and(|m| m >= (64 * MIB) as f64), "{metrics}");
    assert_eq!(value("corral_placement_duration_seconds_count"), Some(1.0), "{metrics}");
    c.shutdown_ok().await;
}

/// `corralctl top` following a worker shows the lines corrald wrote to the
/// journal for it, read with journalctl, below its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn top_following_a_worker_shows_its_journal_lines() {
    let mut c = Corrald::new(&demo_group("web", 2, &["--say", "hello from a worker"], ""));
    c.start();
    c.wait_ready("web", 2).await;
    let tmux = Tmux::start(c.dir.path(), 80, 24, &format!("{CORRALCTL} --socket {} top", path_str(&c.socket)));
    tmux.screen_until("top to show web-2", |s| s.contains("events live") && s.contains("web-2"));
    tmux.keys(&["Down", "Down", "f"]);
    let screen = tmux.screen_until("web-2's journal line", |s| {
        s.contains("following web-2") && s.contains("journal: hello from a worker")
    });
    assert_eq!(screen.matches("web-2 journal: hello from a worker").count(), 1, "web-2's line alone:\n{screen}");
    tmux.keys(&["q"]);
    c.shutdown_ok().await;
}
