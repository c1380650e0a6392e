//! The rules of health checks: what a ping or probe result does to a
//! worker. A run of missed pings makes it hung and a run of failed
//! liveness probes unhealthy, and either has it restarted as a crash is;
//! a readiness probe's pass makes a starting worker ready. A worker
//! draining a stop is never judged: it is on its way out already.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::GroupConfig;
use crate::proto;

/// Which check a result is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Ping,
    Liveness,
    Readiness,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Ping => "ping",
            CheckKind::Liveness => "liveness",
            CheckKind::Readiness => "readiness",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Pass,
    Fail(String),
}

/// The latest of one check of a process.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub kind: CheckKind,
    pub last_result: CheckResult,
    pub last_at: SystemTime,
    pub consecutive_failures: u32,
}

/// A process's health as its checks found it.
#[derive(Debug, Default)]
pub struct Health {
    /// At most one record per kind, in the order they first reported.
    pub checks: Vec<CheckRecord>,
    /// Why it is being restarted for its health, once it is.
    pub condemned: Option<String>,
}

impl Health {
    /// Takes a result in; returns the failures in a row it makes.
    pub fn record(&mut self, kind: CheckKind, result: CheckResult, at: SystemTime) -> u32 {
        let index = match self.checks.iter().position(|c| c.kind == kind) {
            Some(i) => i,
            None => {
                self.checks.push(CheckRecord {
                    kind,
                    last_result: CheckResult::Pass,
                    last_at: at,
                    consecutive_failures: 0,
                });
                self.checks.len() - 1
            }
        };
        let record = &mut self.checks[index];
        record.consecutive_failures = match result {
            CheckResult::Pass => 0,
            CheckResult::Fail(_) => record.consecutive_failures.saturating_add(1),
        };
        record.last_result = result;
        record.last_at = at;
        record.consecutive_failures
    }

    /// As the worker listing shows it.
    pub fn listed(&self) -> Vec<proto::HealthCheck> {
        self.checks
            .iter()
            .map(|c| proto::HealthCheck {
                kind: c.kind.name().into(),
                last_result: match &c.last_result {
                    CheckResult::Pass => "ok".into(),
                    CheckResult::Fail(why) => why.clone(),
                },
                last_at_ms: c.last_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                consecutive_failures: c.consecutive_failures,
            })
            .collect()
    }
}

/// What a check result asks of the actor.
#[derive(Debug, PartialEq, Eq)]
pub enum HealthStep {
    Nothing,
    /// A starting worker passed its readiness probe.
    Ready,
    /// Restart it, soft stop first, for this reason (the first time only).
    Condemn(String),
}

/// Whether `failures` in a row of a `kind` check condemn a worker of
/// `cfg`'s group, and why.
pub fn verdict(cfg: &GroupConfig, kind: CheckKind, failures: u32, last: &str) -> Option<String> {
    match kind {
        CheckKind::Ping => {
            let ping = cfg.ping.as_ref()?;
            (failures >= ping.misses).then(|| {
                format!(
                    "hung: missed {failures} pings in a row (one every {})",
                    humantime::format_duration(ping.interval)
                )
            })
        }
        CheckKind::Liveness => {
            let probe = cfg.health.liveness.as_ref()?;
            (failures >= probe.failure_threshold)
                .then(|| format!("unhealthy: liveness probe failed {failures} times in a row: {last}"))
        }
        CheckKind::Readiness => None,
    }
}
