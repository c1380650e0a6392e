//! `corralctl upgrade`: corrald replaces itself in place (exec), passing the
//! socket and the workers' descriptors, without systemd. The real-systemd
//! suite covers the service side.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use corral::ctl::Client;
use corral::proto::{self, request::Command as Cmd, Status};

fn web() -> String {
    demo_group("web", 3, &["--concurrency", "2", "--unit-ms", "300"], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_the_socket_the_workers_and_every_response() {
    let mut c = Corrald::new(&web());
    c.start();
    c.wait_ready("web", 3).await;
    let before = c.pids("web").await;
    let old = c.status().await;

    // A client asking for status in a tight loop, a new connection each time.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let looping = {
        let (socket, stop, answered, failed) = (c.socket.clone(), stop.clone(), answered.clone(), failed.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let mut client = Client::connect(&socket).await?;
                    client.call(Cmd::Status(proto::StatusRequest {}), |_| {}).await
                }
                .await;
                match result {
                    Ok(r) if r.status() == Status::Ok => answered.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };

    let (code, out, err) = c.ctl(&["upgrade"]);
    assert_eq!(code, Some(0), "{out}{err}\n{}", c.stderr_tail());
    assert!(out.contains("upgrading to"), "{out}{err}");
    // The new corrald says so when it has taken the workers over.
    c.wait_stderr("a new corrald to adopt the workers", |log| {
        log.contains("adopted the workers of an earlier corrald")
    })
    .await;
    let new = c.status().await;
    let seen_before = answered.load(Ordering::Relaxed);
    // Let the loop run against the new corrald too.
    while answered.load(Ordering::Relaxed) < seen_before + 20 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let errors = looping.await.unwrap();
    assert!(errors.is_empty(), "refused or lost: {errors:?}\n{}", c.stderr_tail());
    assert_eq!(new.pid, old.pid, "replaced in place: same pid");
    assert_eq!(c.pids("web").await, before, "no worker was restarted");

    // The worker channels came across: a soft stop drains every unit of work.
    let (_, last) = c.call(stop_all()).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    let work = c.work_log();
    assert!(work.unfinished().is_empty(), "{:?}", work.unfinished());
    assert_eq!(work.exits.len(), 3);

    // The new corrald serves the socket as its own: at the configured path,
    // under its lock (a second corrald is refused), and it removes the file
    // when it exits.
    assert!(!c.stderr().contains("serving the socket systemd passed"), "{}", c.stderr_tail());
    let second = std::process::Command::new(CORRALD).arg("--config").arg(&c.config).output().unwrap();
    let refusal = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && refusal.contains("lock"), "{refusal}");
    c.shutdown_ok().await;
    assert!(!c.socket.exists(), "the socket file went with the corrald that owned it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_that_fails_its_check_is_refused_and_nothing_changes() {
    let mut c = Corrald::new(&web());
    c.start();
    c.wait_ready("web", 3).await;
    let before = c.pids("web").await;
    let old = c.status().await;
    let (code, out, err) = c.ctl(&["upgrade", "--binary", "/bin/false"]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(out.contains("upgrade refused, the running corrald stays"), "{out}{err}");
    let now = c.status().await;
    assert_eq!(now.pid, old.pid);
    assert!(now.uptime_ms >= old.uptime_ms, "the same corrald still serves");
    assert_eq!(c.pids("web").await, before);
    c.shutdown_ok().await;
}

fn stop_all() -> Cmd {
    stop("", false)
}
