//! The life of a group beyond one stop: a crash loop that backs off and then
//! gives up, a config reload that adds and removes groups, dynamic state that
//! survives a restart of corrald, and a rolling restart that keeps the group
//! serving.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use corral::proto::{self, request::Command as Cmd, Status};

/// The demo workers here: short units, so that a drain is quick.
const UNITS: &[&str] = &["--unit-ms", "50"];
const DRAIN: &str = "stop_timeout = \"20s\"\n";

/// A crash-looping group whose starts are logged to `starts`.
fn crash_loop_group(starts: &std::path::Path, backoff_max: &str, burst: u32) -> String {
    format!(
        r#"[groups.crashy]
command = "/bin/sh"
args = ["-c", "date +%s%N >> \"$STARTS\"; exit 3"]
environment = {{ STARTS = {:?} }}
restart = "on-failure"
restart_backoff_initial = "100ms"
restart_backoff_max = "{backoff_max}"
start_limit_burst = {burst}
start_limit_interval = "60s"
stop_mode = "signal"
"#,
        path_str(starts)
    )
}

fn read_starts(path: &std::path::Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap_or_else(|e| panic!("bad timestamp {l:?} in {}: {e}", path.display())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_then_fails() {
    let mut c = Corrald::new("");
    let starts = c.dir.path().join("starts");
    c.write_config(&crash_loop_group(&starts, "800ms", 4));
    c.start();

    let g = c.wait_group("crashy", "failed", |g| g.state == "failed").await;
    assert!(g.reason.contains("start limit"), "reason should name the start limit: {g:?}");
    assert_eq!((g.running, g.ready, g.failed), (0, 0, 1), "{g:?}");

    // 1 initial start + 4 restarts, each after a backoff that doubles from
    // 100ms up to the 800ms cap (crash_loop_backoff_is_capped shows the cap
    // holding past that).
    let t = read_starts(&starts);
    assert_eq!(t.len(), 5, "starts (ns): {t:?}");
    let gaps_ms: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect();
    let tolerance_ms = 10.0;
    for (gap, want) in gaps_ms.iter().zip([100.0, 200.0, 400.0, 800.0]) {
        assert!(*gap >= want - tolerance_ms, "gap of {gap:.1}ms, want at least {want}ms; all gaps: {gaps_ms:?}");
    }

    let w = c.workers().await;
    assert_eq!(w.len(), 1, "{w:?}");
    let w = worker(&w, "crashy-1");
    assert_eq!(w.state, "failed", "{w:?}");
    assert_eq!(w.pid, 0, "{w:?}");
    assert_eq!(w.restarts, 4, "{w:?}");
    assert_eq!(w.last_exit, "exited 3", "{w:?}");

    // No start follows the failure. A restart would have come within the
    // capped backoff (800ms); keep watching for longer than that.
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch_until {
        let s = c.status().await;
        assert_eq!(group(&s, "crashy").state, "failed", "{s:?}");
        assert_eq!(read_starts(&starts).len(), 5, "a start after the group failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown_ok().await;
    assert_eq!(read_starts(&starts).len(), 5, "a start after the group failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backoff_is_capped() {
    // With a cap of 200ms the backoffs are 100, 200, 200, 200, 200, 200ms;
    // uncapped they would be 100, 200, 400, 800, 1600, 3200ms.
    let mut c = Corrald::new("");
    let starts = c.dir.path().join("starts");
    c.write_config(&crash_loop_group(&starts, "200ms", 6));
    c.start();
    let g = c.wait_group("crashy", "failed", |g| g.state == "failed").await;
    assert!(g.reason.contains("start limit"), "{g:?}");
    let t = read_starts(&starts);
    assert_eq!(t.len(), 7, "starts (ns): {t:?}");
    let gaps_ms: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect();
    for (gap, want) in gaps_ms.iter().zip([100.0, 200.0, 200.0, 200.0, 200.0, 200.0]) {
        assert!(*gap >= want - 10.0, "gap of {gap:.1}ms, want at least {want}ms; all gaps: {gaps_ms:?}");
    }
    // The cap: the last three backoffs together would be 5600ms uncapped and
    // are 600ms capped; half the uncapped sum leaves seconds of slack for a
    // loaded machine and still tells the two apart.
    let last_three: f64 = gaps_ms[3..].iter().sum();
    assert!(last_three < 2800.0, "backoff not capped at 200ms: gaps {gaps_ms:?}");
    let w = c.workers().await;
    assert_eq!((w[0].state.as_str(), w[0].restarts, w[0].last_exit.as_str()), ("failed", 6, "exited 3"), "{w:?}");
    c.shutdown_ok().await;
    assert_eq!(read_starts(&starts).len(), 7, "a start after the group failed");
}

/// A group failed at its start limit starts again by itself
/// `start_limit_retry` after the failure, and at once on an operator's
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_is_retried_after_start_limit_retry_and_by_an_operator_start() {
    let mut c = Corrald::new("");
    let starts = c.dir.path().join("starts");
    c.write_config(&format!("{}start_limit_retry = \"1s\"\n", crash_loop_group(&starts, "100ms", 1)));
    c.start();
    // The first start and one restart, then the group fails.
    let g = c.wait_group("crashy", "failed", |g| g.state == "failed").await;
    assert!(g.reason.contains("start limit hit: crashy-1 restarted 1 times"), "{g:?}");
    let failed_at = Instant::now();
    c.wait_stderr("the retry", |log| log.contains("starting the group again after its start limit")).await;
    assert!(failed_at.elapsed() >= Duration::from_millis(800), "retried after {:?}", failed_at.elapsed());
    let (starts_path, corrald) = (&starts, &c);
    c.poll("the retry's two starts and the failure again", || async move {
        let s = corrald.status().await;
        let n = read_starts(starts_path).len();
        if n >= 4 && group(&s, "crashy").state == "failed" {
            Ok(())
        } else {
            Err(format!("{n} starts, {:?}", group(&s, "crashy")))
        }
    })
    .await;
    assert!(c.stderr().contains("the group is marked failed and starts again in 1s"), "{}", c.stderr_tail());

    let before = read_starts(&starts).len();
    let (_, last) = c.call(Cmd::Start(proto::Start { target: "crashy".into() })).await;
    assert_eq!(last.status(), Status::Failure, "the worker still crashes: {last:?}");
    assert!(read_starts(&starts).len() > before, "an operator's start ran the worker again");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_readding_a_group_still_draining_keeps_it() {
    // `slow` drains for seconds (a 3s unit in flight); a second reload that
    // puts it back comes while the first one is still draining it.
    let slow = demo_group("slow", 1, &["--unit-ms", "3000"], DRAIN);
    let keep = demo_group("keep", 1, UNITS, DRAIN);
    let mut c = Corrald::new(&[keep.clone(), slow.clone()].concat());
    c.start();
    c.wait_ready("keep", 1).await;
    c.wait_ready("slow", 1).await;
    c.wait_work("a unit in flight in slow-1", |log| log.started.iter().any(|s| s.0 == "slow-1")).await;
    let slow_pid = c.pids("slow").await["slow-1"];

    c.write_config(&keep);
    let mut first = c.client().await;
    let first_id = first.send(Cmd::ReloadConfig(proto::ReloadConfig {})).await.unwrap();
    loop {
        let r = next_answer(&mut first).await;
        assert_eq!((r.id, r.status()), (first_id, Status::Processing), "{r:?}");
        if r.message == "slow-1: acknowledged" {
            break;
        }
    }

    c.write_config(&[keep.clone(), slow.clone()].concat());
    assert!(pid_alive(slow_pid), "precondition: the first reload is still draining slow-1");
    let (_, second) = c.call(Cmd::ReloadConfig(proto::ReloadConfig {})).await;
    assert_eq!(second.status(), Status::Ok, "{second:?}");
    let first_last = final_answer(&mut first).await;
    assert_eq!(first_last.status(), Status::Ok, "{first_last:?}");

    // The config has `slow`: once the old worker has drained, corrald must
    // still have the group and run it.
    let g = c.wait_group("slow", "present and ready", |g| g.ready == 1).await;
    assert_eq!(g.desired, 1, "{g:?}");
    let new_pid = c.pids("slow").await["slow-1"];
    assert!(new_pid != slow_pid && !pid_alive(slow_pid), "old {slow_pid}, new {new_pid}");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_groups_without_touching_unchanged() {
    let keep = demo_group("keep", 2, UNITS, DRAIN);
    let mut c = Corrald::new(&[keep.clone(), demo_group("gone", 1, UNITS, DRAIN)].concat());
    c.start();
    c.wait_ready("keep", 2).await;
    c.wait_ready("gone", 1).await;
    let keep_pids = c.pids("keep").await;
    assert_eq!(keep_pids.len(), 2, "{keep_pids:?}");
    let gone_pid = c.pids("gone").await["gone-1"];

    c.write_config(&[keep.clone(), demo_group("fresh", 2, UNITS, DRAIN)].concat());
    let (progress, last) = c.call(Cmd::ReloadConfig(proto::ReloadConfig {})).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    assert!(progress.iter().all(|r| r.status() == Status::Processing), "{progress:#?}");
    assert!(last.message.contains("added: fresh"), "{}", last.message);
    assert!(last.message.contains("removed: gone"), "{}", last.message);

    // After the answer: `gone` is drained and forgotten, `keep` untouched.
    let s = c.status().await;
    assert!(s.groups.iter().all(|g| g.name != "gone"), "gone still in status: {:?}", s.groups);
    assert!(!pid_alive(gone_pid), "gone-1 (pid {gone_pid}) still alive after the reload answered");
    assert_eq!(c.pids("keep").await, keep_pids, "keep's workers were replaced");
    assert!(keep_pids.values().all(|p| pid_alive(*p)), "keep's workers died: {keep_pids:?}");
    assert!(c.workers().await.iter().all(|w| w.group != "gone"));

    c.wait_ready("fresh", 2).await;
    let s = c.status().await;
    let fresh = group(&s, "fresh");
    assert_eq!((fresh.desired, fresh.running, fresh.ready), (2, 2, 2), "{fresh:?}");
    let keep_status = group(&s, "keep");
    assert_eq!((keep_status.desired, keep_status.ready), (2, 2), "{keep_status:?}");
    let fresh_pids = c.pids("fresh").await;
    assert_eq!(fresh_pids.len(), 2, "{fresh_pids:?}");

    // A broken config is refused with the key and the file named, and
    // nothing changes.
    let broken = keep.replace("count = 2\n", "count = 2\nstop_timout = \"5s\"\n");
    assert_ne!(broken, keep);
    c.write_config(&[broken, demo_group("fresh", 2, UNITS, DRAIN), demo_group("other", 1, UNITS, DRAIN)].concat());
    let (_, last) = c.call(Cmd::ReloadConfig(proto::ReloadConfig {})).await;
    assert_eq!(last.status(), Status::Failure, "{last:?}");
    assert!(last.message.contains("stop_timout"), "{}", last.message);
    assert!(last.message.contains(&path_str(&c.config)), "{}", last.message);
    let s = c.status().await;
    let mut names: Vec<&str> = s.groups.iter().map(|g| g.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["fresh", "keep"], "{:?}", s.groups);
    assert_eq!(c.pids("keep").await, keep_pids);
    assert_eq!(c.pids("fresh").await, fresh_pids);
    assert!(keep_pids.values().chain(fresh_pids.values()).all(|p| pid_alive(*p)));

    c.shutdown_ok().await;
    assert!(keep_pids.values().chain(fresh_pids.values()).all(|p| !pid_alive(*p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_state_restart_load_state_restores_scale_and_stopped_workers() {
    let mut c = Corrald::new(&demo_group("web", 2, UNITS, DRAIN));
    c.start();
    c.wait_ready("web", 2).await;

    let (_, last) = c.call(Cmd::Scale(proto::Scale { group: "web".into(), count: 3 })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    c.wait_ready("web", 3).await;
    let (_, last) = c.call(stop("web-2", false)).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    let w = c.workers().await;
    assert_eq!((worker(&w, "web-2").state.as_str(), worker(&w, "web-2").pid), ("stopped", 0), "{w:?}");

    let state_file = c.dir.path().join("saved-state.json");
    let (_, last) = c.call(Cmd::SaveState(proto::SaveState { path: path_str(&state_file) })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    let text = std::fs::read_to_string(&state_file).expect("state file written");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(json["groups"]["web"]["scale"], 3, "{text}");
    assert_eq!(json["groups"]["web"]["stopped_workers"], serde_json::json!(["web-2"]), "{text}");

    let old_pids: Vec<u32> = c.pids("web").await.into_values().collect();
    c.shutdown_ok().await;
    assert!(old_pids.iter().all(|p| !pid_alive(*p)), "{old_pids:?}");

    // A new corrald on the same config runs the configured 2 workers.
    c.start();
    c.wait_ready("web", 2).await;
    let s = c.status().await;
    assert_eq!(group(&s, "web").desired, 2, "{s:?}");
    let web1_pid = c.pids("web").await["web-1"];

    let (_, last) = c.call(Cmd::LoadState(proto::LoadState { path: path_str(&state_file) })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    // The OK comes once the loaded state is in effect.
    let s = c.status().await;
    let web = group(&s, "web");
    assert_eq!((web.desired, web.running, web.ready), (3, 2, 2), "{web:?}");
    let w = c.workers().await;
    assert_eq!(w.len(), 3, "{w:?}");
    for id in ["web-1", "web-3"] {
        let x = worker(&w, id);
        assert_eq!(x.state, "ready", "{x:?}");
        assert!(x.pid != 0 && pid_alive(x.pid), "{x:?}");
    }
    assert_eq!(worker(&w, "web-1").pid, web1_pid, "web-1 was needlessly replaced");
    let web2 = worker(&w, "web-2");
    assert_eq!((web2.state.as_str(), web2.pid), ("stopped", 0), "{web2:?}");

    // Bad state files are refused, naming the file, and change nothing.
    let missing = c.dir.path().join("no-such-state.json");
    let (_, last) = c.call(Cmd::LoadState(proto::LoadState { path: path_str(&missing) })).await;
    assert_eq!(last.status(), Status::Failure, "{last:?}");
    assert!(last.message.contains(&path_str(&missing)), "{}", last.message);
    let garbage = c.dir.path().join("garbage.json");
    std::fs::write(&garbage, "this is { not a state file\n").unwrap();
    let (_, last) = c.call(Cmd::LoadState(proto::LoadState { path: path_str(&garbage) })).await;
    assert_eq!(last.status(), Status::Failure, "{last:?}");
    assert!(last.message.contains(&path_str(&garbage)), "{}", last.message);
    let s = c.status().await;
    assert_eq!(group(&s, "web").desired, 3, "{s:?}");
    let after: Vec<(String, u32, String)> = c.workers().await.into_iter().map(|w| (w.id, w.pid, w.state)).collect();
    let before: Vec<(String, u32, String)> = w.into_iter().map(|w| (w.id, w.pid, w.state)).collect();
    assert_eq!(after, before);

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_keeps_all_but_one_ready() {
    let mut c = Corrald::new(&demo_group("web", 5, &["--unit-ms", "50", "--ready-delay-ms", "100"], DRAIN));
    c.start();
    c.wait_ready("web", 5).await;
    let old = c.pids("web").await;
    assert_eq!(old.len(), 5, "{old:?}");

    // Samples `web`'s ready count on a connection of its own until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let sampler = {
        let done = done.clone();
        let mut client = c.client().await;
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut first_tx = Some(first_tx);
            while !done.load(Ordering::SeqCst) {
                let r = client.call(Cmd::Status(proto::StatusRequest {}), |_| {}).await.expect("status");
                let Some(proto::response::Content::SupervisorStatus(s)) = r.content else {
                    panic!("status returned {r:?}");
                };
                let web = s.groups.iter().find(|g| g.name == "web").expect("web in status");
                samples.push(web.ready);
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
            }
            samples
        })
    };
    first_rx.await.expect("sampler took a first sample");

    let restart = Cmd::Restart(proto::Restart { target: "web".into(), rolling: true, max_unavailable: 0 });
    let (progress, last) = c.call(restart).await;
    done.store(true, Ordering::SeqCst);
    let samples = sampler.await.expect("sampler");

    assert_eq!(last.status(), Status::Ok, "{last:?}");
    assert!(!progress.is_empty(), "no PROCESSING responses");
    assert!(progress.iter().all(|r| r.status() == Status::Processing && r.id == last.id), "{progress:#?}");
    assert!(samples.len() >= 10, "only {} samples: {samples:?}", samples.len());
    let below: Vec<u32> = samples.iter().copied().filter(|r| *r < 4).collect();
    assert!(below.is_empty(), "more than one worker unavailable at once: {below:?} in {samples:?}");
    // The sampler saw the restart in progress, not just before and after it.
    assert!(samples.contains(&4), "no sample caught a replacement in progress: {samples:?}");

    let s = c.status().await;
    let web = group(&s, "web");
    assert_eq!((web.desired, web.running, web.ready), (5, 5, 5), "{web:?}");
    let new = c.pids("web").await;
    assert_eq!(new.len(), 5, "{new:?}");
    let reused: Vec<&u32> = new.values().filter(|p| old.values().any(|o| o == *p)).collect();
    assert!(reused.is_empty(), "workers not replaced: old {old:?}, new {new:?}");
    assert!(old.values().all(|p| !pid_alive(*p)), "old workers still alive: {old:?}");
    assert!(new.values().all(|p| pid_alive(*p)), "{new:?}");
    assert!(c.workers().await.iter().all(|w| w.state == "ready"));

    c.shutdown_ok().await;
}
