//! corrald's metrics in the OpenMetrics text format: the counters that
//! layers outside the actor keep (requests, latencies, audit records,
//! placements), and the writer every family is rendered with.
//!
//! The counters are process-wide atomics, as a Prometheus client's default
//! registry is: they are facts of the one corrald process, and any layer
//! (the socket, the audit trail, a placement task) counts into them without
//! waiting and without being handed a registry. What the actor knows (the
//! fleet, exits, restarts, checks) stays in its own data and is rendered
//! from there on request.
//!
//! The format is written here rather than by a crate: the exposition is a
//! snapshot taken when asked (most families are read off the fleet as it
//! is), which `prometheus-client` would only take through a custom
//! collector per family, and the format's rules that matter (names,
//! `_total`, `# EOF`, label escaping, cumulative buckets) fit in this file,
//! held to a real parser by the tests.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The content type of the exposition, for HTTP.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A family's type, as its `# TYPE` line names it.
#[derive(Clone, Copy)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// The exposition being written: families one after the other, each whole.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family. A counter's samples get `_total` (see [`sample`]);
    /// `unit`, when given, must end `name` (OpenMetrics requires it).
    ///
    /// [`sample`]: Exposition::sample
    pub fn family(&mut self, name: &str, kind: Type, unit: Option<&str>, help: &str) {
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
        if let Some(unit) = unit {
            let _ = writeln!(self.text, "# UNIT {name} {unit}");
        }
        let _ = writeln!(self.text, "# HELP {name} {}", escape(help, false));
    }

    /// One sample: `name` is the family's with its suffix (`_total`,
    /// `_bucket`, ...).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(value, true));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A histogram's samples, its buckets cumulative as the format wants.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&histogram.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let le = format!("{bound:?}");
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, cumulative);
        }
        let count = cumulative + histogram.over.load(Ordering::Relaxed);
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_le, count);
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }

    /// The exposition, ended as the format requires.
    pub fn finish(mut self) -> String {
        self.text.push_str("# EOF\n");
        self.text
    }
}

/// Escapes text for a label value (`\`, `"` and newlines) or a help line
/// (`\` and newlines).
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// The upper bounds of every histogram's buckets, in seconds: from a
/// request the actor answers at once to a placement waiting on a busy
/// service manager.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Durations counted into fixed buckets, without a lock.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    /// Those over the last bound.
    over: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub const fn empty() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            over: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        match BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The commands of the protocol, as requests are counted by them (the
/// names audit records give them).
pub const COMMANDS: [&str; 16] = [
    "Status",
    "Metrics",
    "ListWorkers",
    "Subscribe",
    "Stop",
    "Start",
    "Restart",
    "Scale",
    "Limit",
    "ReloadConfig",
    "SaveState",
    "LoadState",
    "Shutdown",
    "AuditReopen",
    "Upgrade",
    "Other",
];

/// How a request ended: answered OK, answered with a failure, refused by
/// the allow-list, refused by the bounds.
pub const RESULTS: [&str; 4] = ["ok", "failed", "denied", "refused"];

/// Requests by command and result.
static REQUESTS: [[AtomicU64; RESULTS.len()]; COMMANDS.len()] =
    [const { [const { AtomicU64::new(0) }; RESULTS.len()] }; COMMANDS.len()];

/// From a request's arrival to its final answer, by command (a
/// subscription's lasts as long as it does and is left out).
static REQUEST_SECONDS: [Histogram; COMMANDS.len()] = [const { Histogram::empty() }; COMMANDS.len()];

/// From a worker's fork to systemd's taking it into its scope.
pub static PLACEMENT_SECONDS: Histogram = Histogram::empty();

/// The results an audit record is written with.
pub const AUDIT_RESULTS: [&str; 4] = ["accepted", "denied", "ok", "failed"];

static AUDIT_RECORDS: [AtomicU64; AUDIT_RESULTS.len()] = [const { AtomicU64::new(0) }; AUDIT_RESULTS.len()];
static AUDIT_FAILURES: AtomicU64 = AtomicU64::new(0);
static AUDIT_JOURNAL_MISSED: AtomicU64 = AtomicU64::new(0);

fn command_index(command: &str) -> usize {
    COMMANDS.iter().position(|c| *c == command).unwrap_or(COMMANDS.len() - 1)
}

/// Counts one request's end; `took` is its time to the final answer, when
/// it ran.
pub fn count_request(command: &str, result: &str, took: Option<Duration>) {
    let i = command_index(command);
    let r = RESULTS.iter().position(|x| *x == result).unwrap_or(1);
    REQUESTS[i][r].fetch_add(1, Ordering::Relaxed);
    if let Some(took) = took.filter(|_| command != "Subscribe") {
        REQUEST_SECONDS[i].observe(took);
    }
}

/// Counts an audit record written with `result` (one of [`AUDIT_RESULTS`]),
/// or, when `written` is false, a write that failed.
pub fn count_audit(result: &str, written: bool) {
    if !written {
        AUDIT_FAILURES.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(i) = AUDIT_RESULTS.iter().position(|x| *x == result) {
        AUDIT_RECORDS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts audit records the journal did not get.
pub fn count_audit_journal_missed(missed: u64) {
    AUDIT_JOURNAL_MISSED.fetch_add(missed, Ordering::Relaxed);
}

/// The families of the socket layer and the audit trail.
pub fn render_process(out: &mut Exposition) {
    out.family("corral_requests", Type::Counter, None, "Requests on the command socket by command and result.");
    for (command, results) in COMMANDS.iter().zip(&REQUESTS) {
        for (result, n) in RESULTS.iter().zip(results) {
            out.sample("corral_requests_total", &[("command", command), ("result", result)], n.load(Ordering::Relaxed));
        }
    }
    out.family(
        "corral_request_duration_seconds",
        Type::Histogram,
        Some("seconds"),
        "Time from a request's arrival to its final answer, by command.",
    );
    for (command, histogram) in COMMANDS.iter().zip(&REQUEST_SECONDS) {
        if *command != "Subscribe" {
            out.histogram("corral_request_duration_seconds", &[("command", command)], histogram);
        }
    }
    out.family(
        "corral_placement_duration_seconds",
        Type::Histogram,
        Some("seconds"),
        "Time systemd took to take a forked worker into its scope.",
    );
    out.histogram("corral_placement_duration_seconds", &[], &PLACEMENT_SECONDS);
    out.family("corral_audit_records", Type::Counter, None, "Audit records written, by result.");
    for (result, n) in AUDIT_RESULTS.iter().zip(&AUDIT_RECORDS) {
        out.sample("corral_audit_records_total", &[("result", result)], n.load(Ordering::Relaxed));
    }
    out.family("corral_audit_write_failures", Type::Counter, None, "Audit records that could not be written.");
    out.sample("corral_audit_write_failures_total", &[], AUDIT_FAILURES.load(Ordering::Relaxed));
    out.family("corral_audit_journal_missed", Type::Counter, None, "Audit records the journal did not get.");
    out.sample("corral_audit_journal_missed_total", &[], AUDIT_JOURNAL_MISSED.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.family("x", Type::Gauge, None, "a \\ help\nline");
        out.sample("x", &[("group", "a\"b\\c\nd")], 1);
        assert_eq!(
            out.finish(),
            "# TYPE x gauge\n# HELP x a \\\\ help\\nline\nx{group=\"a\\\"b\\\\c\\nd\"} 1\n# EOF\n"
        );
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_inf() {
        let h = Histogram::empty();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let mut out = Exposition::default();
        out.histogram("h", &[], &h);
        let text = out.finish();
        assert!(text.contains("h_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"0.025\"} 2\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"10.0\"} 2\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"+Inf\"} 3\nh_sum 60.0205\nh_count 3\n"), "{text}");
    }
}
