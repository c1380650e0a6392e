//! The anchor for per-worker scopes: what systemd itself needs to place N
//! running processes in N transient scopes, asked as fast as one bus
//! connection allows with a bounded window of calls in flight.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

use crate::Children;

/// JobRemoved can arrive before the reply that names its job: results wait
/// here for their caller, and callers wait here for their result.
#[derive(Default)]
struct Jobs {
    done: HashMap<String, String>,
    waiting: HashMap<String, oneshot::Sender<String>>,
}

pub async fn raw_scopes(count: usize, window: usize, prefix: &str, timeout: Duration) -> Result<Value, String> {
    let conn = Connection::system().await.map_err(|e| format!("system bus: {e}"))?;
    let manager = ManagerProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| format!("systemd manager: {e}"))?;
    let mut removed = manager.receive_job_removed().await.map_err(|e| format!("JobRemoved: {e}"))?;
    let jobs = Arc::new(Mutex::new(Jobs::default()));
    let sink = jobs.clone();
    tokio::spawn(async move {
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            let (path, result) = (args.job.to_string(), args.result.to_string());
            let mut jobs = sink.lock().expect("jobs lock");
            match jobs.waiting.remove(&path) {
                Some(tx) => {
                    let _ = tx.send(result);
                }
                None => {
                    jobs.done.insert(path, result);
                }
            }
        }
    });

    let mut children = Children(Vec::with_capacity(count));
    for _ in 0..count {
        let child = Command::new("sleep")
            .arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start sleep: {e}"))?;
        children.0.push(child);
    }
    let pids: Vec<u32> = children.0.iter().map(Child::id).collect();

    let slots = Arc::new(Semaphore::new(window.max(1)));
    let started = Instant::now();
    // One budget for the whole run: past systemd's ceiling every call may
    // wait for the bus's reply timeout, and N of them must not add up.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tasks = tokio::task::JoinSet::new();
    let mut skipped = 0usize;
    for (i, pid) in pids.into_iter().enumerate() {
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await else {
            skipped += 1;
            continue;
        };
        let manager = manager.clone();
        let jobs = jobs.clone();
        let unit = format!("{prefix}-{i}.scope");
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout_at(deadline, place(&manager, &jobs, unit, pid)).await;
            outcome.unwrap_or_else(|_| Err(format!("no answer within the run's {timeout:?}")))
        });
    }
    let mut placed = 0usize;
    let mut errors: HashMap<String, usize> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(()) => placed += 1,
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    drop(children);
    Ok(json!({
        "count": count,
        "window": window,
        "placed": placed,
        "not_tried": skipped,
        "ms": elapsed.as_secs_f64() * 1000.0,
        "errors": errors,
    }))
}

async fn place(manager: &ManagerProxy<'_>, jobs: &Mutex<Jobs>, unit: String, pid: u32) -> Result<(), String> {
    let props: Vec<(String, OwnedVariant)> = vec![
        ("Description".into(), OwnedVariant::from(zbus::Str::from("corral benchmark anchor"))),
        ("Slice".into(), OwnedVariant::from(zbus::Str::from("bench.slice"))),
        ("CollectMode".into(), OwnedVariant::from(zbus::Str::from("inactive-or-failed"))),
        ("PIDs".into(), OwnedVariant::try_from(Variant::from(vec![pid])).map_err(|e| e.to_string())?),
        ("Delegate".into(), OwnedVariant::from(true)),
    ];
    let job = manager
        .start_transient_unit(unit, "fail".into(), props, Vec::new())
        .await
        .map_err(|e| match e {
            zbus::Error::MethodError(name, _, _) => name.to_string(),
            other => other.to_string(),
        })?
        .to_string();
    let rx = {
        let mut jobs = jobs.lock().expect("jobs lock");
        if let Some(result) = jobs.done.remove(&job) {
            return job_outcome(&result);
        }
        let (tx, rx) = oneshot::channel();
        jobs.waiting.insert(job, tx);
        rx
    };
    let result = rx.await.map_err(|_| "the bus connection dropped".to_string())?;
    job_outcome(&result)
}

fn job_outcome(result: &str) -> Result<(), String> {
    if result == "done" {
        Ok(())
    } else {
        Err(format!("job result {result}"))
    }
}
