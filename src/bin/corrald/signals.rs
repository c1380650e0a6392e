//! Signals and the service manager's stop requests, turned into the
//! requests a client would send, so they take the same path through the
//! supervisor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use corral::audit::{Actor, ActorKind, Auditor, Record, RecordResult};
use corral::command::authorise;
use corral::events::Events;
use corral::proto::{self, event::Kind, request::Command};
use corral::supervisor::{Handle, Outgoing, Replies, Reply, Request};
use corral::systemd::{self, Systemd};

/// Answers, for as long as corrald runs: SIGTERM (a shutdown, or a
/// handover when systemd is restarting corrald), SIGINT (a shutdown),
/// SIGHUP (audit files reopened, config reloaded) and systemd's
/// `RequestStop` for one of corral's scopes (a soft stop of its target).
pub fn answer(
    handle: Handle,
    manager: Option<Systemd>,
    auditor: Option<Arc<Auditor>>,
    mut events: Option<UnboundedReceiver<systemd::Event>>,
    told: Events,
) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers; stop corrald with `corralctl shutdown`");
            return;
        };
        // Responses to signal-initiated requests go nowhere but the log
        // (and, for a stop systemd asked for, its audit record).
        let (tx, mut rx) = Replies::channel();
        let ask = |request| handle.request(request, Reply::new(0, 0, tx.clone()));
        let mut scope_stops = ScopeStops {
            handle: handle.clone(),
            manager: manager.clone(),
            auditor: auditor.clone(),
            events: told,
            replies: tx.clone(),
            started: 0,
            draining: HashMap::new(),
            pending: Arc::default(),
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if restart_pending(&manager).await {
                        handle.handover();
                    } else {
                        ask(Request::Shutdown);
                    }
                }
                _ = int.recv() => ask(Request::Shutdown),
                _ = hup.recv() => {
                    reopen_audit_files(&auditor).await;
                    ask(Request::ReloadConfig);
                }
                Some(event) = async { events.as_mut()?.recv().await }, if events.is_some() => {
                    let systemd::Event::RequestStop { unit, sender } = event;
                    scope_stops.start(unit, sender);
                }
                Some(r) = rx.recv() => {
                    if r.response.status() != proto::Status::Processing {
                        tracing::info!("{}", r.response.message);
                        scope_stops.finish(&r);
                    }
                }
            }
        }
    });
}

/// Whether SIGTERM comes from `systemctl restart`: then the workers stay
/// for the next corrald (their descriptors are in the store); a plain stop
/// drains them.
async fn restart_pending(manager: &Option<Systemd>) -> bool {
    match manager {
        Some(sd) => sd.restart_pending().await,
        None => false,
    }
}

/// SIGHUP reopens the audit files too, as `corralctl audit reopen` does
/// after a rotation, for whoever rotates them with a signal.
async fn reopen_audit_files(auditor: &Option<Arc<Auditor>>) {
    if let Some(auditor) = auditor {
        match auditor.reopen().await {
            Ok(()) => tracing::info!("audit log files reopened"),
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// `systemctl stop` of a corral scope (or of the slice that holds them):
/// the soft stop of the group or worker it holds, as a client would ask,
/// audited as a client's stop is, with systemd as its actor.
struct ScopeStops {
    handle: Handle,
    manager: Option<Systemd>,
    auditor: Option<Arc<Auditor>>,
    /// Where the outcome of each stop is told, as a client's is.
    events: Events,
    replies: Replies,
    /// Stops started since corrald started: the last one's number is its
    /// records' request id and the `seq` its answers come back with.
    started: u64,
    /// The scope of each stop still running, by its number: a second
    /// request for one (after a reconnect, corrald takes every stop job of
    /// its scopes for a request it may have missed) is not a second stop.
    draining: HashMap<u64, String>,
    /// The records and events of stops still running, by their number,
    /// waiting for their outcome.
    pending: Arc<Mutex<HashMap<u64, Started>>>,
}

/// A stop systemd asked for, as its outcome is audited and told.
struct Started {
    record: Option<Record>,
    event: proto::RequestDone,
    group: String,
    worker: String,
}

impl ScopeStops {
    fn start(&mut self, unit: String, sender: String) {
        let Some(target) = systemd::target_of_scope(&unit) else {
            tracing::warn!(%unit, "RequestStop for a unit that is not corral's");
            return;
        };
        if self.draining.values().any(|u| *u == unit) {
            tracing::debug!(%unit, "systemd asks again to stop a scope corrald is draining");
            return;
        }
        tracing::info!(%unit, "systemd asks to stop the scope: draining its workers");
        self.started += 1;
        let seq = self.started;
        self.draining.insert(seq, unit.clone());
        let stop = proto::Stop { target: target.wire(), hard: false };
        let (handle, replies, pending) = (self.handle.clone(), self.replies.clone(), self.pending.clone());
        let (manager, auditor) = (self.manager.clone(), self.auditor.clone());
        tokio::spawn(async move {
            let record = accepted(seq, &unit, &stop, systemd_actor(&manager, sender).await);
            let event = proto::RequestDone {
                command: record.command.clone(),
                arguments: record.arguments.clone(),
                // Only the owner of systemd's bus name is heard, and
                // that is PID 1, root, when the bus did not say.
                uid: record.actor.uid.unwrap_or(0),
                ..Default::default()
            };
            let (group, worker) = (record.group.clone().unwrap_or_default(), record.worker.clone().unwrap_or_default());
            let mut started = Started { record: None, event, group, worker };
            if let Some(auditor) = auditor {
                match auditor.write(record.clone()).await {
                    Ok(()) => started.record = Some(record),
                    // Refusing would not keep the scope: systemd stops it
                    // anyway, with SIGKILL once TimeoutStopSec is over.
                    Err(e) => tracing::error!(
                        %unit,
                        "AUDIT RECORD LOST: the stop systemd asked for is not recorded, and drains the workers anyway: {e}"
                    ),
                }
            }
            pending.lock().unwrap_or_else(|e| e.into_inner()).insert(seq, started);
            handle.request(Request::Stop(stop), Reply::new(seq, seq, replies));
        });
    }

    /// Records the outcome of a stop systemd asked for once its final
    /// answer comes; any other answer is not one of these.
    fn finish(&mut self, answer: &Outgoing) {
        self.draining.remove(&answer.seq);
        let Some(started) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&answer.seq) else { return };
        let ok = answer.response.status() == proto::Status::Ok;
        let message = answer.response.message.clone();
        let outcome = if ok { "ok" } else { "failed" }.to_string();
        let event = proto::RequestDone { outcome, message: message.clone(), ..started.event };
        self.events.emit(&started.group, &started.worker, Kind::Request(event));
        let (Some(auditor), Some(mut record)) = (self.auditor.clone(), started.record) else { return };
        record.result = if ok { RecordResult::Ok } else { RecordResult::Failed };
        record.reason = message;
        tokio::spawn(async move {
            if let Err(e) = auditor.write(record).await {
                tracing::error!("the outcome of a stop systemd asked for could not be audited: {e}");
            }
        });
    }
}

/// The record of a stop systemd asked for, before it runs: named as a
/// client's stop of the same target is, plus the scope it came through.
/// Session 0 is no connection of the command socket (those count from 1).
fn accepted(seq: u64, unit: &str, stop: &proto::Stop, actor: Actor) -> Record {
    let described = authorise::describe(&Command::Stop(stop.clone()));
    let mut arguments = described.arguments;
    arguments.push(format!("unit={unit}"));
    Record {
        session: 0,
        request_id: seq,
        group: described.group,
        worker: described.worker,
        command: described.command.to_string(),
        arguments,
        actor,
        socket: String::new(),
        result: RecordResult::Accepted,
        reason: String::new(),
    }
}

/// systemd as the actor of a stop: what the bus says of the signal's
/// sender. Who asked systemd for the stop job, the signal does not say.
async fn systemd_actor(manager: &Option<Systemd>, sender: String) -> Actor {
    let credentials = match manager {
        Some(sd) => sd.credentials(&sender).await.unwrap_or_else(|e| {
            tracing::warn!("the audit record of systemd's stop request leaves out its sender's credentials: {e}");
            systemd::Credentials::default()
        }),
        None => systemd::Credentials::default(),
    };
    Actor {
        kind: ActorKind::Systemd,
        uid: credentials.uid,
        gid: credentials.gid,
        pid: credentials.pid,
        user: None,
        comm: None,
        bus_name: Some(sender),
    }
}

/// Test builds only: SIGUSR2 wedges the supervisor's run loop, so the
/// real-systemd suite can watch the watchdog fire.
#[cfg(feature = "fault-injection")]
pub fn wedge_on_sigusr2(handle: Handle) {
    tokio::spawn(async move {
        if let Ok(mut usr2) = signal(SignalKind::user_defined2()) {
            while usr2.recv().await.is_some() {
                handle.wedge();
            }
        }
    });
}
