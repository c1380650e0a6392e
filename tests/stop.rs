//! Soft and hard stops fanned out to many workers: progress, the one final
//! answer, drains that finish every unit of work, and the failures a client
//! must be told about.

mod common;

use common::*;
use corral::proto::{FailureKind, Status};

/// Three units of 300ms in flight in each worker, so that a stop always
/// meets work to drain.
const UNITS: &[&str] = &["--concurrency", "3", "--unit-ms", "300"];
const DRAIN: &str = "stop_timeout = \"20s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_stop_of_30_workers_drains_every_unit_then_answers_ok() {
    let mut c = Corrald::new(
        &[demo_group("a", 10, UNITS, DRAIN), demo_group("b", 10, UNITS, DRAIN), demo_group("c", 10, UNITS, DRAIN)]
            .concat(),
    );
    c.start();
    for g in ["a", "b", "c"] {
        c.wait_ready(g, 10).await;
    }
    // Every worker must have work in flight when the stop arrives.
    c.wait_work("work in flight everywhere", |log| log.started.len() >= 90).await;
    let pids: Vec<u32> = c.workers().await.iter().map(|w| w.pid).collect();
    assert_eq!(pids.len(), 30);

    let (progress, last) = c.call(stop("", false)).await;

    assert_eq!(last.status(), Status::Ok, "{last:?}");
    assert!(progress.iter().all(|r| r.status() == Status::Processing));
    // Each worker acknowledges and then finishes: 60 progress responses.
    assert_eq!(progress.len(), 60, "{progress:#?}");
    let acked = progress.iter().filter(|r| r.message.ends_with("acknowledged")).count();
    assert_eq!(acked, 30);
    // The final OK came after every worker exited.
    let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(alive.is_empty(), "still alive after the final OK: {alive:?}");
    let log = c.work_log();
    assert!(log.started.len() >= 90);
    assert_eq!(log.unfinished(), vec![], "units started but not completed");
    assert_eq!(log.exits.len(), 30, "every worker logged a clean exit");

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_stop_overtakes_a_soft_stop() {
    // Units of 20 s: the soft stop cannot finish before the hard stop comes.
    let mut c = Corrald::new(&demo_group("slow", 4, &["--unit-ms", "20000"], "stop_timeout = \"60s\"\n"));
    c.start();
    c.wait_ready("slow", 4).await;
    c.wait_work("a unit in flight in each worker", |log| log.started.len() >= 4).await;
    let pids: Vec<u32> = c.pids("slow").await.into_values().collect();

    let mut soft = c.client().await;
    let soft_id = soft.send(stop("slow", false)).await.unwrap();
    acknowledged(&mut soft, soft_id, 4).await;

    let (_, hard_last) = c.call(stop("slow", true)).await;
    assert_eq!(hard_last.status(), Status::Ok, "{hard_last:?}");
    let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(alive.is_empty(), "alive after the hard stop answered: {alive:?}");

    let soft_last = final_answer(&mut soft).await;
    assert_eq!(soft_last.status(), Status::Failure, "{soft_last:?}");
    let failures = final_failures(&soft_last);
    let mut names: Vec<&str> = failures.iter().map(|f| f.worker.as_str()).collect();
    names.sort();
    assert_eq!(names, ["slow-1", "slow-2", "slow-3", "slow-4"]);
    assert!(failures.iter().all(|f| f.kind() == FailureKind::Interrupted), "{failures:?}");
    assert!(soft_last.message.contains("interrupted"), "{}", soft_last.message);
    // The hard stop did not let the units finish.
    assert!(!c.work_log().unfinished().is_empty());

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_the_soft_stop_times_out() {
    let groups = "\
[groups.deaf]
command = \"{demo}\"
args = [\"--ignore-stop\", \"--log\", \"{log}\"]
stop_mode = \"protocol\"
stop_timeout = \"300ms\"
stop_timeout_action = \"kill\"
[groups.stubborn]
command = \"{demo}\"
args = [\"--ignore-stop\", \"--log\", \"{log}\"]
stop_mode = \"protocol\"
stop_timeout = \"300ms\"
stop_timeout_action = \"fail\"
";
    let mut c = Corrald::new(groups);
    c.start();
    c.wait_ready("deaf", 1).await;
    c.wait_ready("stubborn", 1).await;
    let deaf = c.pids("deaf").await["deaf-1"];
    let stubborn = c.pids("stubborn").await["stubborn-1"];

    let (progress, last) = c.call(stop("deaf", false)).await;
    assert!(progress.iter().any(|r| r.message.ends_with("acknowledged")));
    assert_eq!(last.status(), Status::Failure);
    let f = final_failures(&last);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].worker, "deaf-1");
    assert_eq!(f[0].kind(), FailureKind::TimedOut);
    assert!(f[0].detail.contains("killed"), "{}", f[0].detail);
    assert!(!pid_alive(deaf), "escalation must kill the worker");

    let (_, last) = c.call(stop("stubborn", false)).await;
    assert_eq!(last.status(), Status::Failure);
    let f = final_failures(&last);
    assert_eq!(f[0].worker, "stubborn-1");
    assert_eq!(f[0].kind(), FailureKind::TimedOut);
    assert!(f[0].detail.contains("left running"), "{}", f[0].detail);
    assert!(pid_alive(stubborn), "without escalation the worker is left running");
    let w = c.workers().await;
    let w = worker(&w, "stubborn-1");
    assert_eq!((w.pid, w.state.as_str()), (stubborn, "ready"));

    // The shutdown kills what would not drain, and says it was not clean.
    let (_, last) = c.call(corral::proto::request::Command::Shutdown(corral::proto::Shutdown {})).await;
    assert_eq!(last.status(), Status::Failure);
    assert_eq!(c.wait_exit(), Some(1));
    assert!(!pid_alive(stubborn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_soft_stop_is_reported_as_died() {
    let mut c = Corrald::new(&demo_group("w", 3, &["--unit-ms", "5000"], "stop_timeout = \"30s\"\n"));
    c.start();
    c.wait_ready("w", 3).await;
    c.wait_work("units in flight", |log| log.started.len() >= 3).await;
    let pids = c.pids("w").await;

    let mut client = c.client().await;
    let id = client.send(stop("w", false)).await.unwrap();
    acknowledged(&mut client, id, 3).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids["w-2"] as i32), nix::sys::signal::Signal::SIGKILL).unwrap();

    let last = final_answer(&mut client).await;
    assert_eq!(last.status(), Status::Failure, "{last:?}");
    let f = final_failures(&last);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].worker, "w-2");
    assert_eq!(f[0].kind(), FailureKind::Died);
    assert!(f[0].detail.contains("SIGKILL"), "{}", f[0].detail);
    // The other two drained their units and exited.
    assert!(pids.values().all(|p| !pid_alive(*p)));
    let log = c.work_log();
    let unfinished: Vec<_> = log.unfinished().into_iter().map(|u| u.0).collect();
    assert!(unfinished.iter().all(|w| w == "w-2"), "{unfinished:?}");

    c.shutdown_ok().await;
}
