//! Carrying out what the fleet makes of a worker's pings and probes: the
//! journal hears of every failure, a starting worker that passed its
//! readiness probe is ready, and a hung or unhealthy one is stopped to be
//! restarted. Whoever keeps the record of such restarts (corrald's audit
//! trail) is told through [`HealthNotice`]s, before the stop begins.

use std::time::SystemTime;

use tokio::sync::mpsc;

use super::fleet::{CheckKind, CheckResult, HealthStep};
use super::process::{ProcCmd, ProcEvent};
use super::Supervisor;
use crate::proto::{self, event::Kind};
use crate::target::SlotKey;

/// A restart corrald decided on by itself, for its record.
pub struct HealthNotice {
    pub group: String,
    pub worker: String,
    pub pid: u32,
    /// Why, e.g. "hung: missed 3 pings in a row (one every 1s)".
    pub reason: String,
    pub stage: NoticeStage,
}

pub enum NoticeStage {
    /// About to be stopped: [`Condemnation::carry_out`] starts the stop,
    /// once the decision is on record.
    Condemned(Condemnation),
    /// The process has exited, as `how` says (with what follows).
    Exited { how: String },
}

/// The stop of a condemned worker, waiting to begin.
pub struct Condemnation(mpsc::UnboundedSender<ProcCmd>);

impl Condemnation {
    pub fn carry_out(self) {
        // A task already gone means the process has exited: nothing to stop.
        let _ = self.0.send(ProcCmd::Condemn);
    }
}

impl Supervisor {
    /// Where notices of restarts for health go; without a receiver they
    /// are carried out at once, with only the log to tell.
    pub fn on_health(&mut self, tx: mpsc::UnboundedSender<HealthNotice>) {
        self.health_notices = Some(tx);
    }

    /// A ping's or probe's result for the process `generation` of `key`.
    pub(super) fn on_check(&mut self, key: SlotKey, generation: u64, kind: CheckKind, result: CheckResult) {
        let failed = match &result {
            CheckResult::Fail(why) => Some(why.clone()),
            CheckResult::Pass => None,
        };
        let in_a_row = |fleet: &super::fleet::Fleet<super::ProcIo>| {
            let proc = fleet.proc(&key, generation)?;
            Some(proc.health.checks.iter().find(|c| c.kind == kind).map_or(0, |c| c.consecutive_failures))
        };
        let before = in_a_row(&self.fleet).unwrap_or_default();
        if self.fleet.proc(&key, generation).is_some() {
            self.counted.check(&key.group, kind, &result);
        }
        let step = self.fleet.record_check(&key, generation, kind, result, SystemTime::now());
        let Some(after) = in_a_row(&self.fleet) else { return };
        let Some(proc) = self.fleet.proc(&key, generation) else { return };
        let pid = proc.pid;
        let change = |passed: bool, message: String| proto::HealthChanged {
            check: kind.name().into(),
            passed,
            consecutive_failures: after,
            message,
            restart_reason: match &step {
                HealthStep::Condemn(reason) => reason.clone(),
                _ => String::new(),
            },
        };
        match &failed {
            Some(why) => self.tell(&key, Kind::Health(change(false, why.clone()))),
            None if before > 0 => {
                self.tell(&key, Kind::Health(change(true, format!("passes again after {before} failures"))))
            }
            None => {}
        }
        match failed {
            // A worker not ready yet is what a readiness probe expects to
            // find for a while.
            Some(why) if kind == CheckKind::Readiness => {
                tracing::debug!(group = %key.group, worker = %key, pid, "readiness check failed ({after} in a row): {why}")
            }
            Some(why) => {
                tracing::warn!(group = %key.group, worker = %key, pid, "{} check failed ({after} in a row): {why}", kind.name())
            }
            None if before > 0 => {
                tracing::info!(group = %key.group, worker = %key, pid, "{} check passes again after {before} failures", kind.name())
            }
            None => {}
        }
        match step {
            HealthStep::Nothing => {}
            HealthStep::Ready => self.on_process_event(key, generation, ProcEvent::Ready),
            HealthStep::Condemn(reason) => {
                tracing::error!(group = %key.group, worker = %key, pid, "{reason}: restarting it (soft stop first)");
                let condemnation = Condemnation(proc.handle.tx.clone());
                let notice = HealthNotice {
                    group: key.group.clone(),
                    worker: key.id(),
                    pid,
                    reason,
                    stage: NoticeStage::Condemned(condemnation),
                };
                self.notify_health(notice);
            }
        }
    }

    /// Tells the record keeper; with none (or one gone), a condemned
    /// worker's stop begins at once.
    pub(super) fn notify_health(&self, notice: HealthNotice) {
        let unsent = match &self.health_notices {
            Some(tx) => match tx.send(notice) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => notice,
        };
        if let NoticeStage::Condemned(condemnation) = unsent.stage {
            condemnation.carry_out();
        }
    }
}
