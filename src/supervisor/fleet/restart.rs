//! The restart rules: whether an exit is restarted, after how long, and
//! when a crash loop ends in the group's failed state.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{GroupConfig, RestartPolicy};

/// Whether the policy restarts an exit that was `clean` (status 0).
pub fn policy_restarts(policy: RestartPolicy, clean: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !clean,
        RestartPolicy::Never => false,
    }
}

/// The delay before restart number `consecutive_failures` (1 for the
/// first) of a slot: doubling from `restart_backoff_initial`, capped at
/// `restart_backoff_max`.
pub fn backoff(cfg: &GroupConfig, consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(20);
    cfg.restart_backoff_initial.saturating_mul(1u32 << exponent).min(cfg.restart_backoff_max)
}

/// The count of failures in a row after an exit: a process that ran at
/// least as long as the longest backoff starts the count anew.
pub fn failures_in_a_row(cfg: &GroupConfig, before: u32, ran_for: Duration) -> u32 {
    if ran_for >= cfg.restart_backoff_max {
        1
    } else {
        before.saturating_add(1)
    }
}

/// One slot's restarts in its current start-limit window, counted as
/// systemd counts a unit's starts (`StartLimitBurst=` within
/// `StartLimitIntervalSec=`): a window opens at the first restart and
/// counts until the interval has passed since then, when the next restart
/// opens a new one. Per slot, so that a whole group that exits at once (a
/// signal to its scope) is one restart of each worker, not a crash loop.
#[derive(Debug, Default)]
pub struct StartLimit {
    window: Option<(Instant, u32)>,
}

impl StartLimit {
    /// Counts a restart at `now`; `false` when it is one more than the
    /// window allows.
    pub fn admit(&mut self, cfg: &GroupConfig, now: Instant) -> bool {
        let count = match self.window {
            Some((opened, count)) if now.saturating_duration_since(opened) <= cfg.start_limit_interval => {
                count.saturating_add(1)
            }
            _ => {
                self.window = Some((now, 1));
                return true;
            }
        };
        self.window = self.window.map(|(opened, _)| (opened, count));
        count <= cfg.start_limit_burst
    }

    /// An operator's start, or a timed retry, forgives the past.
    pub fn clear(&mut self) {
        self.window = None;
    }

    /// Why the group failed, for status and the log.
    pub fn reason(cfg: &GroupConfig, worker: &str) -> String {
        format!(
            "start limit hit: {worker} restarted {} times within {}",
            cfg.start_limit_burst,
            humantime::format_duration(cfg.start_limit_interval)
        )
    }
}
