//! The fleet's metrics: what the actor counts as it goes (exits, restarts,
//! check results, in its own data: a map entry bumped, never a wait), and
//! the whole exposition, read off the fleet when asked.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::fleet::{CheckKind, CheckResult};
use super::Supervisor;
use crate::metrics::{self, Exposition, Type};
use crate::proto;

/// The states a worker is counted in, as listings name them.
const STATES: [&str; 7] = ["waiting", "starting", "ready", "stopping", "backoff", "stopped", "failed"];

/// What the actor counted since corrald started, by group.
#[derive(Default)]
pub(super) struct Counted {
    /// By group and reason (as systemd's `Result=` names them).
    exits: BTreeMap<(String, &'static str), u64>,
    /// Restarts by restart policy, by group and what ended the worker.
    restarts: BTreeMap<(String, &'static str), u64>,
    /// Ping and probe results, by group, check and result.
    checks: BTreeMap<(String, &'static str, &'static str), u64>,
}

impl Counted {
    pub(super) fn exit(&mut self, group: &str, status: Option<ExitStatus>) {
        let reason = match status {
            Some(s) if s.code() == Some(0) => "success",
            Some(s) if s.code().is_some() => "exit-code",
            Some(s) if s.signal().is_some() => "signal",
            _ => "unknown",
        };
        *self.exits.entry((group.to_string(), reason)).or_default() += 1;
    }

    /// A restart scheduled after an exit; `for_health` when a failed check
    /// condemned the worker.
    pub(super) fn restart(&mut self, group: &str, for_health: bool) {
        let reason = if for_health { "health" } else { "exit" };
        *self.restarts.entry((group.to_string(), reason)).or_default() += 1;
    }

    pub(super) fn check(&mut self, group: &str, kind: CheckKind, result: &CheckResult) {
        let result = match result {
            CheckResult::Pass => "pass",
            CheckResult::Fail(_) => "fail",
        };
        *self.checks.entry((group.to_string(), kind.name(), result)).or_default() += 1;
    }
}

impl Supervisor {
    /// The whole exposition: the fleet as it is, what the actor counted,
    /// and the counters of the other layers.
    pub(super) fn metrics(&self) -> String {
        let mut out = Exposition::default();
        out.family("corral_workers", Type::Gauge, None, "Workers by group and state.");
        for group in self.fleet.groups() {
            let mut by_state: BTreeMap<&str, u64> = STATES.iter().map(|s| (*s, 0)).collect();
            for slot in group.slots.values() {
                *by_state.entry(slot.state.name()).or_default() += 1;
            }
            for (state, n) in by_state {
                out.sample("corral_workers", &[("group", group.name()), ("state", state)], n);
            }
        }
        out.family("corral_workers_desired", Type::Gauge, None, "Workers each group is configured or scaled to.");
        for group in self.fleet.groups() {
            out.sample("corral_workers_desired", &[("group", group.name())], group.desired);
        }
        self.usage_metrics(&mut out);
        out.family("corral_worker_exits", Type::Counter, None, "Worker processes that ended, by group and reason.");
        for ((group, reason), n) in &self.counted.exits {
            out.sample("corral_worker_exits_total", &[("group", group), ("reason", reason)], n);
        }
        out.family(
            "corral_worker_restarts",
            Type::Counter,
            None,
            "Restarts by restart policy, by group and what ended the worker (exit, or a failed health check).",
        );
        for ((group, reason), n) in &self.counted.restarts {
            out.sample("corral_worker_restarts_total", &[("group", group), ("reason", reason)], n);
        }
        out.family("corral_health_checks", Type::Counter, None, "Ping and probe results by group, check and result.");
        for ((group, check, result), n) in &self.counted.checks {
            out.sample("corral_health_checks_total", &[("group", group), ("check", check), ("result", result)], n);
        }
        out.family("corral_output_dropped_lines", Type::Counter, None, "Lines of worker output dropped, by reason.");
        for (reason, n) in self.output.dropped_by_reason() {
            out.sample("corral_output_dropped_lines_total", &[("reason", reason)], n);
        }
        out.family("corral_event_subscribers", Type::Gauge, None, "Event subscriptions open.");
        out.sample("corral_event_subscribers", &[], self.events.subscribed());
        out.family("corral_events_dropped", Type::Counter, None, "Events a subscriber did not get, by reason.");
        for (reason, n) in self.events.dropped() {
            out.sample("corral_events_dropped_total", &[("reason", reason.name())], n);
        }
        metrics::render_process(&mut out);
        out.finish()
    }
}

/// The families of each running worker's usage: name, type, unit, help,
/// and its value in a reading (none when the kernel does not say).
type UsageFamily = (&'static str, Type, Option<&'static str>, &'static str, fn(&proto::ResourceUsage) -> Option<f64>);

const USAGE: [UsageFamily; 4] = [
    (
        "corral_worker_cpu_seconds",
        Type::Counter,
        Some("seconds"),
        "CPU time a running worker used, user and system.",
        |u| Some(u.cpu_time_us as f64 / 1e6),
    ),
    ("corral_worker_memory_bytes", Type::Gauge, Some("bytes"), "Memory a running worker uses now.", |u| {
        Some(u.memory_bytes as f64)
    }),
    ("corral_worker_memory_peak_bytes", Type::Gauge, Some("bytes"), "The most memory a running worker used.", |u| {
        u.memory_peak_bytes.map(|b| b as f64)
    }),
    ("corral_worker_tasks", Type::Gauge, None, "Tasks (processes and threads) of a running worker.", |u| {
        u.tasks.map(|t| t as f64)
    }),
];

impl Supervisor {
    /// Each running worker's CPU and memory as the sampler last read them
    /// (`source`: its own cgroup, or /proc of its main process).
    fn usage_metrics(&self, out: &mut Exposition) {
        let workers = self.fleet.workers("", &self.usage()).unwrap_or_default();
        for (name, kind, unit, help, read) in USAGE {
            out.family(name, kind, unit, help);
            let sample = match kind {
                Type::Counter => format!("{name}_total"),
                _ => name.to_string(),
            };
            for worker in &workers {
                let Some(usage) = &worker.usage else { continue };
                let Some(value) = read(usage) else { continue };
                let labels = [
                    ("group", worker.group.as_str()),
                    ("worker", worker.id.as_str()),
                    ("source", usage.source.as_str()),
                ];
                out.sample(&sample, &labels, value);
            }
        }
    }
}

impl super::Handle {
    /// The exposition, as a `Metrics` request on the socket gets it; none
    /// once the actor has stopped.
    pub async fn metrics(&self) -> Option<String> {
        let (replies, mut queue) = super::Replies::channel();
        self.request(super::Request::Metrics, super::Reply::new(1, 1, replies));
        match queue.recv().await?.response.content {
            Some(crate::proto::response::Content::Metrics(metrics)) => Some(metrics.text),
            _ => None,
        }
    }
}
