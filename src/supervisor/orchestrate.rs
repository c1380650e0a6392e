//! Requests that take time, each run as its own task: it asks the
//! supervisor actor for state changes through the [`Handle`] and follows the
//! workers' reports through a [`Fanout`], so the actor never waits.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::actor::{Handle, Orchestration};
use super::fanout::{Fanout, OpEvent};
use super::fleet::ReloadPlan;
use super::Reply;
use crate::proto::FailureKind;
use crate::target::SlotKey;

fn ids(keys: &[SlotKey]) -> Vec<String> {
    keys.iter().map(SlotKey::id).collect()
}

/// Stops slots layer by layer (soft) or all at once (hard). A hard stop that
/// overtakes a layered soft stop fails the layers not yet reached as
/// interrupted rather than reporting them stopped.
async fn stop_layers(handle: &Handle, fan: &mut Fanout, layers: Vec<Vec<SlotKey>>, hard: bool, deadline: Instant) {
    for layer in layers {
        if fan.interrupted() {
            for key in layer {
                fan.fail_unsent(key.id(), FailureKind::Interrupted, "interrupted by a hard stop".into());
            }
            continue;
        }
        let op = fan.track(ids(&layer));
        handle.orchestrate(Orchestration::Stop { keys: layer, hard, op });
        fan.wait(deadline).await;
    }
}

pub fn stop(handle: Handle, reply: Reply, layers: Vec<Vec<SlotKey>>, hard: bool, timeout: Duration, what: String) {
    let layers = if hard { vec![layers.into_iter().flatten().collect()] } else { layers };
    let total = layers.iter().map(Vec::len).sum();
    tokio::spawn(async move {
        let mut fan = Fanout::new(reply, total, if hard { "killed" } else { "stopped" });
        stop_layers(&handle, &mut fan, layers, hard, Instant::now() + timeout).await;
        let verb = if hard { "killed" } else { "stopped" };
        fan.finish(format!("{verb} {what} ({total} workers)"));
    });
}

pub fn start(handle: Handle, reply: Reply, keys: Vec<SlotKey>, ready_timeout: Duration) {
    tokio::spawn(async move {
        let total = keys.len();
        let mut fan = Fanout::new(reply, total, "ready");
        if total > 0 {
            let op = fan.track(ids(&keys));
            handle.orchestrate(Orchestration::Start { keys, waiter: op });
            fan.wait(Instant::now() + ready_timeout).await;
        }
        fan.finish(format!("{total} workers started and ready"));
    });
}

/// Replaces workers `batch` at a time: each batch is soft-stopped, then
/// started again and waited for until ready, before the next batch is
/// touched. A batch that fails ends the restart, leaving the rest alone.
pub fn restart(
    handle: Handle,
    reply: Reply,
    keys: Vec<SlotKey>,
    batch: usize,
    stop_timeout: Duration,
    ready_timeout: Duration,
) {
    tokio::spawn(async move {
        let total = keys.len();
        let mut fan = Fanout::new(reply, total, "replaced and ready");
        let mut chunks = keys.chunks(batch.max(1));
        for chunk in chunks.by_ref() {
            fan.track(ids(chunk));
            let (tx, mut rx) = mpsc::unbounded_channel();
            handle.orchestrate(Orchestration::Stop { keys: chunk.to_vec(), hard: false, op: tx });
            let mut waiting: BTreeSet<String> = ids(chunk).into_iter().collect();
            let mut stopped = Vec::new();
            let deadline = Instant::now() + stop_timeout;
            while !waiting.is_empty() {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = tokio::time::sleep_until(deadline) => None,
                };
                match event {
                    Some(OpEvent::Acked(id)) => fan.record(OpEvent::Acked(id)),
                    Some(OpEvent::Finished(id, Ok(()))) => {
                        waiting.remove(&id);
                        stopped.push(id);
                    }
                    Some(OpEvent::Finished(id, Err(e))) => {
                        waiting.remove(&id);
                        fan.record(OpEvent::Finished(id, Err(e)));
                    }
                    None => {
                        for id in std::mem::take(&mut waiting) {
                            let detail = "did not stop before the request's deadline".to_string();
                            fan.record(OpEvent::Finished(id, Err((FailureKind::TimedOut, detail))));
                        }
                    }
                }
            }
            let restartable: Vec<SlotKey> = chunk.iter().filter(|k| stopped.contains(&k.id())).cloned().collect();
            if !restartable.is_empty() {
                let op = fan.track(ids(&restartable));
                handle.orchestrate(Orchestration::Start { keys: restartable, waiter: op });
                fan.wait(Instant::now() + ready_timeout).await;
            }
            if fan.has_failures() {
                break;
            }
        }
        for key in chunks.flatten() {
            fan.fail_unsent(key.id(), FailureKind::Failed, "not restarted: an earlier batch failed".into());
        }
        fan.finish(format!("{total} workers restarted and ready"));
    });
}

/// Applies a reload or a loaded state: stops what must go, starts what must
/// come and waits for added groups, and finally forgets groups the config
/// no longer has. The returned handle ends when the answer has been given.
pub fn reload(handle: Handle, reply: Reply, plan: ReloadPlan) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ReloadPlan { to_stop, to_start, to_await, removed, summary, stop_timeout, ready_timeout } = plan;
        let mut fan = Fanout::new(reply, to_stop.len() + to_start.len() + to_await.len(), "done");
        if !to_stop.is_empty() {
            stop_layers(&handle, &mut fan, vec![to_stop], false, Instant::now() + stop_timeout).await;
        }
        for name in removed {
            handle.orchestrate(Orchestration::ForgetGroup(name));
        }
        if !to_start.is_empty() || !to_await.is_empty() {
            if !to_start.is_empty() {
                let op = fan.track(ids(&to_start));
                handle.orchestrate(Orchestration::Start { keys: to_start, waiter: op });
            }
            if !to_await.is_empty() {
                let op = fan.track(ids(&to_await));
                handle.orchestrate(Orchestration::AwaitReady { keys: to_await, waiter: op });
            }
            fan.wait(Instant::now() + ready_timeout).await;
        }
        fan.finish(summary.describe());
    })
}

/// Drains every worker, kills whatever would not drain (a supervisor that
/// exits must not leave orphans behind), answers, then ends the run loop.
pub fn shutdown(handle: Handle, reply: Reply, layers: Vec<Vec<SlotKey>>, timeout: Duration, running: usize) {
    let all: Vec<SlotKey> = layers.iter().flatten().cloned().collect();
    let total = all.len();
    tokio::spawn(async move {
        let mut fan = Fanout::new(reply, total, "stopped");
        stop_layers(&handle, &mut fan, layers, false, Instant::now() + timeout).await;
        let clean = !fan.has_failures();
        if !clean {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut left = all.len();
            handle.orchestrate(Orchestration::Stop { keys: all, hard: true, op: tx });
            let deadline = Instant::now() + Duration::from_secs(5);
            while left > 0 {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(OpEvent::Finished(..)) => left -= 1,
                        Some(OpEvent::Acked(_)) => {}
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let drained = match running {
            0 => "no worker was running".to_string(),
            1 => "drained 1 worker".to_string(),
            n => format!("drained {n} workers"),
        };
        fan.finish(format!("{drained}; corrald exits"));
        handle.exit(clean);
    });
}
