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
