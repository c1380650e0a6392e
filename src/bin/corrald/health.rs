//! Restarts corrald decides on by itself, for a worker its pings found
//! hung or its liveness probe unhealthy, put on the audit trail as a
//! client's restart is: an `accepted` record before the stop begins, then
//! the outcome once the process has exited, with corrald as the actor.

use std::collections::HashMap;
use std::sync::Arc;

use corral::audit::{Actor, ActorKind, Auditor, Record, RecordResult};
use corral::supervisor::{HealthNotice, NoticeStage, Supervisor};
use tokio::sync::mpsc;

/// Has the supervisor's restarts for health audited, when there is an
/// audit trail; without one they go ahead with only the log to tell.
pub fn record_restarts(supervisor: &mut Supervisor, auditor: Option<Arc<Auditor>>) {
    let Some(auditor) = auditor else { return };
    let (tx, mut notices) = mpsc::unbounded_channel();
    supervisor.on_health(tx);
    tokio::spawn(async move {
        // Each restart's number, by worker: its records' request id.
        let mut numbers: HashMap<String, u64> = HashMap::new();
        let mut last = 0u64;
        while let Some(notice) = notices.recv().await {
            let HealthNotice { group, worker, pid, reason, stage } = notice;
            let mut record = Record {
                session: 0,
                request_id: 0,
                group: Some(group),
                worker: Some(worker.clone()),
                command: "Restart".into(),
                arguments: vec![format!("target={worker}"), format!("pid={pid}")],
                actor: Actor { kind: ActorKind::Corrald, pid: Some(std::process::id()), ..Actor::default() },
                socket: String::new(),
                result: RecordResult::Accepted,
                reason: reason.clone(),
            };
            match stage {
                NoticeStage::Condemned(condemnation) => {
                    last += 1;
                    numbers.insert(worker.clone(), last);
                    record.request_id = last;
                    // Written before the stop begins; a record that cannot be
                    // written does not keep a hung worker running.
                    if let Err(e) = auditor.write(record).await {
                        tracing::error!(worker = %worker, "AUDIT RECORD LOST: the restart of a worker for its health is not recorded, and goes ahead: {e}");
                    }
                    condemnation.carry_out();
                }
                NoticeStage::Exited { how } => {
                    record.request_id = numbers.remove(&worker).unwrap_or_default();
                    record.result = RecordResult::Ok;
                    record.reason = format!("{reason}; {how}");
                    if let Err(e) = auditor.write(record).await {
                        tracing::error!(worker = %worker, "the outcome of a restart for health could not be audited: {e}");
                    }
                }
            }
        }
    });
}
