//! The restart rules: whether an exit is restarted, after how long, and
//! when a crash loop ends in the group's failed state.

use std::collections::VecDeque;
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

/// A group's restarts within its start-limit interval.
#[derive(Debug, Default)]
pub struct StartLimit {
    recent: VecDeque<Instant>,
}

impl StartLimit {
    /// Counts a restart at `now` if the group has one left in its interval;
    /// `false` when the limit is hit (nothing is counted then).
    pub fn admit(&mut self, cfg: &GroupConfig, now: Instant) -> bool {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > cfg.start_limit_interval) {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= cfg.start_limit_burst {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// An operator's start forgives the past.
    pub fn clear(&mut self) {
        self.recent.clear();
    }

    /// Why the group failed, for status and the log.
    pub fn reason(cfg: &GroupConfig) -> String {
        format!(
            "start limit hit: {} restarts within {}",
            cfg.start_limit_burst,
            humantime::format_duration(cfg.start_limit_interval)
        )
    }
}
