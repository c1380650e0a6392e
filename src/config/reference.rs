//! Every key of the config file, as operators read it in corral.toml(5):
//! its type, default, bounds and meaning.
//!
//! The manual is rendered from [`KEYS`] alone, and the tests below hold the
//! table to the parser: the keys here are exactly the fields the parser's
//! structs accept, each documented default, written into a file, parses to
//! what leaving the key out does, each documented bound is accepted and the
//! value just past it refused, and each list of choices is the parser's.

/// One key of the file.
pub struct Key {
    /// Its path as errors name it: `limits.max_workers`,
    /// `groups.NAME.count`, `groups.NAME.resources.MemoryMax`.
    pub path: &'static str,
    pub kind: Kind,
    pub default: Default,
    /// The bounds in words; empty when the type is the only bound.
    pub bounds: &'static str,
    /// The lowest and highest values accepted, as TOML, where the bounds
    /// are a range that holds with every other key at its default.
    pub lowest: Option<&'static str>,
    pub highest: Option<&'static str>,
    pub description: &'static str,
}

/// What a key's value is.
pub enum Kind {
    Integer,
    /// Bytes, as a number or with systemd's suffixes ("64K", "1.5G").
    Size,
    /// As humans write it: "250ms", "5s", "1m 30s", "1day".
    Duration,
    Boolean,
    String,
    /// A file system path; a relative one is taken from the config file's
    /// directory.
    Path,
    Integers,
    Strings,
    /// A table of strings by name.
    StringTable,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A syslog priority: a name or 0 to 7.
    Priority,
    /// A signal name, with or without the SIG prefix.
    Signal,
    /// A table of its own (`[limits]`, `[groups.NAME]`): its keys follow.
    Table,
    /// A systemd resource property's value, in systemd's own syntax.
    Resource(&'static str),
}

impl Kind {
    /// As the manual names it.
    pub fn text(&self) -> String {
        match self {
            Kind::Integer => "integer".into(),
            Kind::Size => "size".into(),
            Kind::Duration => "duration".into(),
            Kind::Boolean => "boolean".into(),
            Kind::String => "string".into(),
            Kind::Path => "path".into(),
            Kind::Integers => "array of integers".into(),
            Kind::Strings => "array of strings".into(),
            Kind::StringTable => "table of strings".into(),
            Kind::OneOf(words) => words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" | "),
            Kind::Priority => "priority".into(),
            Kind::Signal => "signal".into(),
            Kind::Table => "table".into(),
            Kind::Resource(syntax) => (*syntax).into(),
        }
    }
}

/// What a key is when the file leaves it out.
pub enum Default {
    /// This value, as TOML.
    Value(&'static str),
    /// Not set; what that means.
    Unset(&'static str),
    /// It depends on who runs corrald; in words.
    PerUser(&'static str),
    /// The file must give it.
    Required,
}

impl Default {
    /// As the manual shows it.
    pub fn text(&self) -> String {
        match self {
            Default::Value(toml) => (*toml).into(),
            Default::Unset(meaning) => format!("unset ({meaning})"),
            Default::PerUser(text) => (*text).into(),
            Default::Required => "none: required".into(),
        }
    }
}

const fn key(path: &'static str, kind: Kind, default: Default, description: &'static str) -> Key {
    Key { path, kind, default, bounds: "", lowest: None, highest: None, description }
}

/// A key with bounds: in words, then the lowest and highest value as TOML.
const fn ranged(
    path: &'static str,
    kind: Kind,
    default: Default,
    (bounds, lowest, highest): (&'static str, Option<&'static str>, Option<&'static str>),
    description: &'static str,
) -> Key {
    Key { path, kind, default, bounds, lowest, highest, description }
}

use Default::{PerUser, Required, Unset, Value};

/// Every key, in the order of the manual: the top level (the tables
/// `limits` and `groups` last), `[limits]`, then a group's table, its
/// resources, its pings and its probes.
pub const KEYS: &[Key] = &[
    key(
        "socket",
        Kind::Path,
        PerUser(super::DEFAULT_SOCKET_TEXT),
        "The command socket corrald listens on and corralctl connects to. Under systemd socket activation \
         corrald serves the socket it is passed instead.",
    ),
    key(
        "state_directory",
        Kind::Path,
        PerUser(super::DEFAULT_STATE_DIRECTORY_TEXT),
        "Where corrald keeps workers.json (the workers a restarted corrald adopts) and the state files of \
         save-state and load-state (under saved/).",
    ),
    ranged(
        "max_frame_size",
        Kind::Size,
        Value("\"1M\""),
        ("64 to 64M, and not more than limits.max_response_size", Some("64"), None),
        "The largest request frame corrald accepts on the command socket.",
    ),
    key(
        "scopes",
        Kind::OneOf(&["auto", "required", "off"]),
        Value("\"auto\""),
        "Whether workers are placed in systemd scopes: auto, when a service manager answers (otherwise corrald \
         runs without, warning once); required, refusing to start without one; off, never.",
    ),
    key(
        "bus",
        Kind::OneOf(&["auto", "system", "user"]),
        Value("\"auto\""),
        "The D-Bus bus of the service manager: auto is the system bus for root and the user's bus otherwise.",
    ),
    ranged(
        "slice",
        Kind::String,
        Value("\"corral.slice\""),
        ("a slice unit name: ending in .slice, at most 255 characters of A-Z a-z 0-9 - _ . \\", None, None),
        "The slice every worker scope goes under.",
    ),
    ranged(
        "output_buffer",
        Kind::Size,
        Value("\"16M\""),
        ("at least 64K", Some("\"64K\""), None),
        "Bytes of worker output that may wait for the journal; lines beyond it are dropped and counted.",
    ),
    ranged(
        "usage_interval",
        Kind::Duration,
        Value("\"5s\""),
        ("0 (off), or 100ms to 1h", Some("\"100ms\""), Some("\"1h\"")),
        "How often each running worker's CPU, memory and tasks are read (from its own cgroup when it has one, \
         from /proc otherwise) for corralctl workers and status; a worker's CPU percent is over the last \
         interval. 0 turns reading off.",
    ),
    key(
        "audit_logs_target",
        Kind::Path,
        Unset("no text audit log"),
        "The text audit log: one line per privileged request, written before the request runs.",
    ),
    key(
        "audit_logs_json_target",
        Kind::Path,
        Unset("no JSON audit log"),
        "The JSON audit log, one record per line, hash-chained (corralctl audit verify checks it). Must differ \
         from audit_logs_target.",
    ),
    key("audit_journal", Kind::Boolean, Value("true"), "Whether audit records also go to journald."),
    key(
        "audit_sync",
        Kind::Boolean,
        Value("false"),
        "Whether each audit record is fdatasync'ed before its command runs (one sync covers all records \
         written meanwhile).",
    ),
    key(
        "audit_failure",
        Kind::OneOf(&["refuse", "continue"]),
        Value("\"refuse\""),
        "What a record that cannot be written means: refuse, the command is refused; continue, it runs and the \
         loss is logged loudly.",
    ),
    key(
        "command_allowed_uids",
        Kind::Integers,
        Unset("whoever the socket's file mode lets in"),
        "The read tier (status, workers): uids that may use the socket at all.",
    ),
    key(
        "command_allowed_gids",
        Kind::Integers,
        Unset("whoever the socket's file mode lets in"),
        "The read tier, by group: a gid matches the caller's primary or any supplementary group.",
    ),
    key(
        "command_operate_uids",
        Kind::Integers,
        Value("[]"),
        "The operate tier: uids that may stop, start, restart, scale, limit, reload and use named state files.",
    ),
    key("command_operate_gids", Kind::Integers, Value("[]"), "The operate tier, by group."),
    key(
        "command_admin_uids",
        Kind::Integers,
        Value("[]"),
        "The admin tier: uids that may upgrade, use state files at any path, reopen the audit logs and shut \
         corrald down. Root and corrald's own uid are always admin.",
    ),
    key("command_admin_gids", Kind::Integers, Value("[]"), "The admin tier, by group."),
    key(
        "command_socket_group",
        Kind::String,
        Unset("the socket is mode 0600, for its owner alone"),
        "A group granted the socket: mode 0660 instead of 0600. It must exist on the host.",
    ),
    key(
        "metrics_listen",
        Kind::String,
        Unset("no HTTP endpoint (corralctl metrics still answers)"),
        "Where to serve GET /metrics over HTTP, in the OpenMetrics text format: an address (\"127.0.0.1:9464\", \
         \"[::1]:9464\") or a port alone, on 127.0.0.1. Anyone who can connect reads it. Read at start.",
    ),
    key(
        "metrics_listen_public",
        Kind::Boolean,
        Value("false"),
        "Whether metrics_listen may be an address other than loopback: without it such an address is refused, \
         as the metrics tell the fleet's groups and health to whoever connects.",
    ),
    key(
        "limits",
        Kind::Table,
        Value("{}"),
        "Bounds on what clients and files can make corrald grow; each key below has its own default.",
    ),
    ranged(
        "groups",
        Kind::Table,
        Value("{}"),
        ("at most limits.max_groups tables", None, None),
        "The worker groups, one table [groups.NAME] each. A name is 1 to 64 of A-Z a-z 0-9 _ -, does not end in \
         -NUMBER (that is a worker id) and is not \"all\".",
    ),
    ranged(
        "limits.max_workers",
        Kind::Integer,
        Value("4096"),
        ("1 to 65536", Some("1"), Some("65536")),
        "Workers in all groups together, however they came to be: config counts, scale, load-state.",
    ),
    ranged(
        "limits.max_group_workers",
        Kind::Integer,
        Value("1024"),
        ("1 to 65536", Some("1"), Some("65536")),
        "Workers in one group.",
    ),
    ranged("limits.max_groups", Kind::Integer, Value("256"), ("1 to 4096", Some("1"), Some("4096")), "Groups."),
    ranged(
        "limits.max_connections",
        Kind::Integer,
        Value("256"),
        ("8 to 65536, and more than admin_connection_reserve", Some("17"), Some("65536")),
        "Concurrent command-socket connections.",
    ),
    ranged(
        "limits.max_connections_per_uid",
        Kind::Integer,
        Value("32"),
        ("1 to 65536", Some("1"), Some("65536")),
        "Concurrent connections of one uid; admin-tier callers are exempt.",
    ),
    ranged(
        "limits.admin_connection_reserve",
        Kind::Integer,
        Value("16"),
        ("1 to max_connections - 1", Some("1"), Some("255")),
        "Connections only admin-tier callers may use, so a flood cannot lock the operator out.",
    ),
    ranged(
        "limits.max_requests_in_flight",
        Kind::Integer,
        Value("64"),
        ("1 to 1024", Some("1"), Some("1024")),
        "Requests of one connection served at once; beyond them corrald stops reading the connection.",
    ),
    ranged(
        "limits.max_queued_response_bytes",
        Kind::Size,
        Value("\"4M\""),
        ("64K to 1G", Some("\"64K\""), Some("\"1G\"")),
        "Response bytes waiting for one connection to read them; beyond them corrald stops reading it.",
    ),
    ranged(
        "limits.max_response_size",
        Kind::Size,
        Value("\"16M\""),
        ("64K to 16M, and not less than max_frame_size", None, Some("\"16M\"")),
        "The largest response frame corrald sends; 16M is what every client must accept.",
    ),
    ranged(
        "limits.frame_timeout",
        Kind::Duration,
        Value("\"10s\""),
        ("100ms to 10min", Some("\"100ms\""), Some("\"10min\"")),
        "A request frame, once begun, must be complete within this.",
    ),
    ranged(
        "limits.max_state_file_size",
        Kind::Size,
        Value("\"4M\""),
        ("64K to 1G", Some("\"64K\""), Some("\"1G\"")),
        "The largest state file (and workers.json) corrald reads.",
    ),
    ranged(
        "limits.max_audit_argument",
        Kind::Size,
        Value("256"),
        ("32 to 64K", Some("32"), Some("\"64K\"")),
        "Bytes of one argument an audit record keeps; a longer one is cut and its length and SHA-256 recorded.",
    ),
    ranged(
        "limits.max_dbus_calls",
        Kind::Integer,
        Value("8"),
        ("1 to 64", Some("1"), Some("64")),
        "Calls to systemd (placements, property changes) waiting for their answer at once.",
    ),
    ranged(
        "limits.max_scopes",
        Kind::Integer,
        Value("256"),
        ("1 to 500", Some("1"), Some("500")),
        "systemd scopes the fleet keeps live at once: one per group with scope = \"group\", one per worker of a \
         group with scope = \"worker\". Past about 506 scopes with a controller, systemd 252 loses its bus \
         connection.",
    ),
    ranged(
        "limits.max_subscribers",
        Kind::Integer,
        Value("64"),
        ("1 to 4096", Some("1"), Some("4096")),
        "Event subscriptions (corralctl events, Subscribe) open at once; one more is refused.",
    ),
    ranged(
        "limits.event_queue",
        Kind::Integer,
        Value("1024"),
        ("1 to 65536", Some("1"), Some("65536")),
        "Events waiting for one subscriber to read them (and at most 1 MiB of them). Past it events are dropped \
         and counted by reason, and the subscriber is told how many when it reads again.",
    ),
    ranged(
        "limits.event_history",
        Kind::Integer,
        Value("256"),
        ("0 to 65536", Some("0"), Some("65536")),
        "The latest events kept (and at most 1 MiB of them) for a subscription that asks for a replay \
         (corralctl events --replay): how a client sees what happened before it subscribed, such as the workers \
         adopted on an upgrade. 0 keeps none.",
    ),
    key(
        "groups.NAME.command",
        Kind::String,
        Required,
        "The program the workers run: a path (a relative one is taken from the config file's directory) or a \
         bare name looked up in the workers' PATH. It must be an executable file when the config is loaded.",
    ),
    key("groups.NAME.args", Kind::Strings, Value("[]"), "The workers' arguments, after the program."),
    key(
        "groups.NAME.environment",
        Kind::StringTable,
        Value("{}"),
        "Variables the workers get. Their environment is otherwise clean: these, CORRAL_GROUP, CORRAL_WORKER_ID \
         and a PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin unless set here).",
    ),
    key(
        "groups.NAME.working_directory",
        Kind::Path,
        Unset("corrald's own working directory"),
        "The directory the workers start in; it must exist when the config is loaded.",
    ),
    ranged(
        "groups.NAME.count",
        Kind::Integer,
        Value("1"),
        ("0 to limits.max_group_workers", Some("0"), Some("1024")),
        "How many workers the group runs.",
    ),
    key(
        "groups.NAME.restart",
        Kind::OneOf(&["always", "on-failure", "never"]),
        Value("\"on-failure\""),
        "When a worker that exits is started again: always; on-failure, after an exit that is not status 0; never.",
    ),
    ranged(
        "groups.NAME.restart_backoff_initial",
        Kind::Duration,
        Value("\"100ms\""),
        ("more than zero", Some("\"1ms\""), None),
        "The delay before a restart; it doubles on each quick failure.",
    ),
    ranged(
        "groups.NAME.restart_backoff_max",
        Kind::Duration,
        Value("\"30s\""),
        ("not less than restart_backoff_initial", None, None),
        "The most the restart delay grows to; a worker that ran this long starts the count anew.",
    ),
    ranged(
        "groups.NAME.start_limit_burst",
        Kind::Integer,
        Value("5"),
        ("at least 1", Some("1"), None),
        "Restarts of one worker within start_limit_interval past which the group is failed.",
    ),
    key(
        "groups.NAME.start_limit_interval",
        Kind::Duration,
        Value("\"10s\""),
        "The window the start limit counts in, opened at a worker's restart.",
    ),
    ranged(
        "groups.NAME.start_limit_retry",
        Kind::Duration,
        Unset("a failed group waits for corralctl start"),
        ("1s to 1day", Some("\"1s\""), Some("\"1day\"")),
        "How long after its start limit failed it the group starts again by itself.",
    ),
    key(
        "groups.NAME.stop_mode",
        Kind::OneOf(&["protocol", "signal"]),
        Value("\"signal\""),
        "What a soft stop is: protocol, a SoftStop request on the worker channel; signal, stop_signal.",
    ),
    ranged(
        "groups.NAME.stop_signal",
        Kind::Signal,
        Value("\"SIGTERM\""),
        ("not SIGKILL or SIGSTOP, which cannot be caught", None, None),
        "The signal of a soft stop in signal mode.",
    ),
    key(
        "groups.NAME.stop_timeout",
        Kind::Duration,
        Value("\"10s\""),
        "How long a soft stop may take before stop_timeout_action.",
    ),
    key(
        "groups.NAME.stop_timeout_action",
        Kind::OneOf(&["kill", "fail"]),
        Value("\"kill\""),
        "What a soft stop that timed out becomes: kill, SIGKILL and report the worker timed out; fail, report it \
         and leave it running.",
    ),
    key(
        "groups.NAME.ready_after",
        Kind::Duration,
        Value("\"1s\""),
        "In signal mode, a worker is ready once it has run this long.",
    ),
    key(
        "groups.NAME.ready_timeout",
        Kind::Duration,
        Value("\"60s\""),
        "How long a start or restart waits for a worker to be ready.",
    ),
    ranged(
        "groups.NAME.after",
        Kind::Strings,
        Value("[]"),
        ("names of other groups, with no cycle, at most limits.max_groups", None, None),
        "Groups this one starts after (once they are ready) and stops before.",
    ),
    ranged(
        "groups.NAME.max_unavailable",
        Kind::Integer,
        Value("1"),
        ("at least 1", Some("1"), None),
        "In a rolling restart, how many workers may be down at once.",
    ),
    key(
        "groups.NAME.user",
        Kind::String,
        Unset("corrald's own user"),
        "The user the workers run as; it must exist on the host. Its supplementary groups come along.",
    ),
    key(
        "groups.NAME.group",
        Kind::String,
        Unset("the user's primary group, else corrald's"),
        "The group the workers run as; it must exist on the host.",
    ),
    key(
        "groups.NAME.scope",
        Kind::OneOf(&["group", "worker"]),
        Value("\"group\""),
        "How workers map to systemd scopes: group, one corral-NAME.scope with a sub-cgroup per worker; worker, \
         one corral-NAME-N.scope per worker.",
    ),
    key(
        "groups.NAME.resources",
        Kind::Table,
        Value("{}"),
        "Resource properties of the group's scopes, with systemd's names and syntax (the keys below); \
         corralctl limit changes them on live scopes.",
    ),
    ranged(
        "groups.NAME.stdout_priority",
        Kind::Priority,
        Value("\"info\""),
        ("emerg, alert, crit, err, warning, notice, info, debug, or 0 to 7", Some("0"), Some("7")),
        "The syslog priority of the workers' stdout lines.",
    ),
    ranged(
        "groups.NAME.stderr_priority",
        Kind::Priority,
        Value("\"info\""),
        ("emerg, alert, crit, err, warning, notice, info, debug, or 0 to 7", Some("0"), Some("7")),
        "The syslog priority of the workers' stderr lines.",
    ),
    key(
        "groups.NAME.level_prefix",
        Kind::Boolean,
        Value("true"),
        "Whether a leading <N> sets a line's priority, as systemd's SyslogLevelPrefix= does.",
    ),
    key(
        "groups.NAME.output",
        Kind::OneOf(&["corrald", "journal"]),
        Value("\"corrald\""),
        "Where the workers' stdout and stderr go: corrald, which writes each line to journald with corral's \
         fields (a slow journal never blocks a worker: lines that do not fit output_buffer are dropped and \
         counted); journal, journald's stream socket directly, as a service's output.",
    ),
    key(
        "groups.NAME.ping",
        Kind::Table,
        Unset("no pings"),
        "Pings over the worker channel (stop_mode = \"protocol\" only), answered by the worker library with no \
         code of the worker's: one in flight per worker, every interval; a worker that misses `misses` in a row \
         is hung, and is restarted as a crash is (soft stop, then its stop signal, then SIGKILL, each after \
         stop_timeout). A worker draining a soft stop is not pinged.",
    ),
    key(
        "groups.NAME.health",
        Kind::Table,
        Value("{}"),
        "The group's probes, run by corrald off its main loop, one in flight per worker: the tables liveness \
         and readiness, with the keys below (PROBE is liveness or readiness).",
    ),
    key(
        "groups.NAME.resources.MemoryMax",
        Kind::Resource("size or \"infinity\""),
        Unset("systemd's default"),
        "The hard memory limit of each scope.",
    ),
    key(
        "groups.NAME.resources.MemoryHigh",
        Kind::Resource("size or \"infinity\""),
        Unset("systemd's default"),
        "The memory throttling point of each scope.",
    ),
    ranged(
        "groups.NAME.resources.CPUWeight",
        Kind::Resource("integer"),
        Unset("systemd's default"),
        ("1 to 10000", Some("1"), Some("10000")),
        "The scope's share of CPU time against its siblings.",
    ),
    ranged(
        "groups.NAME.resources.CPUQuota",
        Kind::Resource("percentage"),
        Unset("systemd's default"),
        ("a whole percentage, \"1%\" to \"1000000%\"", None, None),
        "CPU time per second the scope may use: \"150%\" is one and a half CPUs.",
    ),
    ranged(
        "groups.NAME.resources.TasksMax",
        Kind::Resource("integer or \"infinity\""),
        Unset("systemd's default"),
        ("at least 1", Some("1"), None),
        "The most tasks (processes and threads) in the scope.",
    ),
    ranged(
        "groups.NAME.resources.IOWeight",
        Kind::Resource("integer"),
        Unset("systemd's default"),
        ("1 to 10000", Some("1"), Some("10000")),
        "The scope's share of block I/O against its siblings.",
    ),
    ranged(
        "groups.NAME.resources.AllowedCPUs",
        Kind::Resource("CPU list"),
        Unset("systemd's default"),
        ("CPU numbers 0 to 8191", None, None),
        "The CPUs the scope may run on, as \"0-3,6\".",
    ),
    ranged(
        "groups.NAME.ping.interval",
        Kind::Duration,
        Value("\"10s\""),
        ("100ms to 1h", Some("\"100ms\""), Some("\"1h\"")),
        "How often a worker is pinged; a ping unanswered by the next one is missed.",
    ),
    ranged(
        "groups.NAME.ping.misses",
        Kind::Integer,
        Value("3"),
        ("1 to 100", Some("1"), Some("100")),
        "Pings missed in a row that make a worker hung.",
    ),
    key(
        "groups.NAME.health.liveness",
        Kind::Table,
        Unset("no liveness probe"),
        "A probe that restarts a worker once it fails failure_threshold times in a row, as a crash is \
         restarted (soft stop first, with stop_timeout).",
    ),
    key(
        "groups.NAME.health.readiness",
        Kind::Table,
        Unset("ready_after says when a worker is ready"),
        "For stop_mode = \"signal\" workers: a worker is ready at the probe's first pass, instead of \
         ready_after; the probe stops once it passed.",
    ),
    ranged(
        "groups.NAME.health.PROBE.exec",
        Kind::Strings,
        Unset("another check"),
        ("an absolute path and at most 63 arguments", None, None),
        "Run this program with these arguments, as the group's user and in the worker's cgroup (its scope or \
         its sub-cgroup of the group's scope); exit status 0 passes. Exactly one of exec, http and tcp.",
    ),
    key(
        "groups.NAME.health.PROBE.http",
        Kind::String,
        Unset("another check"),
        "GET this http:// or https:// URL (HTTP/1.1); a 2xx or 3xx status passes. Over https, the server's \
         certificate must be valid for the URL's host and chain to a CA of the system's store (read once, at the \
         first https probe), or of ca_file when set; a failed handshake fails the probe.",
    ),
    ranged(
        "groups.NAME.health.PROBE.ca_file",
        Kind::Path,
        Unset("the system's CA store"),
        ("a PEM file of at most 1 MiB with at least one certificate", None, None),
        "For an https probe: trust only the CA certificates of this file (read when the config is loaded; a \
         self-signed certificate can be its own), instead of the system's store.",
    ),
    key(
        "groups.NAME.health.PROBE.tcp",
        Kind::String,
        Unset("another check"),
        "Connect to this HOST:PORT; a connection passes.",
    ),
    ranged(
        "groups.NAME.health.PROBE.interval",
        Kind::Duration,
        Value("\"10s\""),
        ("100ms to 1h, and not less than timeout", None, Some("\"1h\"")),
        "From the start of one probe to the start of the next.",
    ),
    ranged(
        "groups.NAME.health.PROBE.timeout",
        Kind::Duration,
        Value("\"1s\""),
        ("10ms up to interval", Some("\"10ms\""), None),
        "A probe not passed within this long fails (an exec probe's process group is killed).",
    ),
    ranged(
        "groups.NAME.health.PROBE.failure_threshold",
        Kind::Integer,
        Value("3"),
        ("1 to 100", Some("1"), Some("100")),
        "Failures in a row that fail a liveness probe.",
    ),
    ranged(
        "groups.NAME.health.PROBE.initial_delay",
        Kind::Duration,
        Value("\"0s\""),
        ("0s to 1h", None, Some("\"1h\"")),
        "How long after the worker's exec the first probe runs.",
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde::de::{Deserialize, Deserializer, Visitor};

    use super::super::{properties, Config, GroupConfig, HealthConfig, PingConfig, ProbeConfig, RawConfig, RawLimits};
    use super::{Default, Kind, KEYS};

    /// The field list serde's derive hands its deserializer: every key the
    /// struct accepts, under its name in the file.
    #[derive(Debug)]
    struct Fields(&'static [&'static str]);

    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl std::error::Error for Fields {}

    impl serde::de::Error for Fields {
        fn custom<T: std::fmt::Display>(_: T) -> Fields {
            Fields(&[])
        }
    }

    /// A deserializer that reads nothing and records the fields asked for.
    struct Recorder;

    impl<'de> Deserializer<'de> for Recorder {
        type Error = Fields;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    fn fields<'de, T: Deserialize<'de>>() -> BTreeSet<&'static str> {
        match T::deserialize(Recorder) {
            Err(Fields(fields)) => fields.iter().copied().collect(),
            Ok(_) => panic!("the recorder yields no value"),
        }
    }

    /// The keys of the table under `prefix`, one level down.
    fn documented(prefix: &str) -> BTreeSet<&'static str> {
        KEYS.iter().filter_map(|k| k.path.strip_prefix(prefix)).filter(|rest| !rest.contains('.')).collect()
    }

    #[test]
    fn the_reference_names_every_key_the_parser_accepts_and_no_other() {
        assert_eq!(documented(""), fields::<RawConfig>(), "top level");
        assert_eq!(documented("limits."), fields::<RawLimits>(), "[limits]");
        assert_eq!(documented("groups.NAME."), fields::<GroupConfig>(), "[groups.NAME]");
        let resources: BTreeSet<&str> = properties::KEYS.iter().copied().collect();
        assert_eq!(documented("groups.NAME.resources."), resources, "[groups.NAME.resources]");
        assert_eq!(documented("groups.NAME.ping."), fields::<PingConfig>(), "[groups.NAME.ping]");
        assert_eq!(documented("groups.NAME.health."), fields::<HealthConfig>(), "[groups.NAME.health]");
        assert_eq!(documented("groups.NAME.health.PROBE."), fields::<ProbeConfig>(), "a probe's table");
        let tables = [
            "",
            "limits.",
            "groups.NAME.",
            "groups.NAME.resources.",
            "groups.NAME.ping.",
            "groups.NAME.health.",
            "groups.NAME.health.PROBE.",
        ];
        for key in KEYS {
            let placed = tables.iter().filter(|t| key.path.strip_prefix(*t).is_some_and(|r| !r.contains('.')));
            assert_eq!(placed.count(), 1, "{} is in no table the parser reads", key.path);
        }
        let paths: BTreeSet<&str> = KEYS.iter().map(|k| k.path).collect();
        assert_eq!(paths.len(), KEYS.len(), "a key is documented twice");
    }

    const GROUP: &str = "[groups.g]\ncommand = \"/bin/true\"\n";

    /// A config with one group, and `key = value` where `path` puts it
    /// (nothing when `value` is `None`).
    fn place(path: &str, value: Option<&str>) -> String {
        let line = |key: &str| value.map(|v| format!("{key} = {v}\n")).unwrap_or_default();
        let parts: Vec<&str> = path.split('.').collect();
        match parts.as_slice() {
            ["groups"] => line("groups"),
            [key] => format!("{}{GROUP}", line(key)),
            ["limits", key] => format!("[limits]\n{}{GROUP}", line(key)),
            ["groups", "NAME", "command"] => format!("[groups.g]\n{}", line("command")),
            ["groups", "NAME", key] => format!("{GROUP}{}", line(key)),
            ["groups", "NAME", "resources", key] => format!("{GROUP}[groups.g.resources]\n{}", line(key)),
            ["groups", "NAME", "ping", key] => {
                format!("{GROUP}stop_mode = \"protocol\"\n[groups.g.ping]\n{}", line(key))
            }
            ["groups", "NAME", "health", key] => format!("{GROUP}[groups.g.health]\n{}", line(key)),
            // Every probe needs one check: another one than the key placed.
            ["groups", "NAME", "health", "PROBE", key] => {
                let check = if *key == "tcp" { "exec = [\"/bin/true\"]" } else { "tcp = \"127.0.0.1:1\"" };
                let check = if matches!(*key, "exec" | "http") && value.is_some() { "" } else { check };
                format!("{GROUP}[groups.g.health.liveness]\n{check}\n{}", line(key))
            }
            _ => panic!("no table for {path}"),
        }
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/corral/corral.toml")).map_err(|e| e.to_string())
    }

    /// `$XDG_RUNTIME_DIR`, `$XDG_STATE_HOME`, `~` and `UID` in a default
    /// written in words, as this process would have them.
    fn expand(text: &str) -> String {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| format!("${name}"));
        text.replace("$XDG_RUNTIME_DIR", &var("XDG_RUNTIME_DIR"))
            .replace("$XDG_STATE_HOME", &var("XDG_STATE_HOME"))
            .replace('~', &var("HOME"))
            .replace("UID", &nix::unistd::geteuid().to_string())
    }

    #[test]
    fn each_documented_default_is_what_leaving_the_key_out_gives() {
        for key in KEYS {
            let omitted = parse(&place(key.path, None));
            match &key.default {
                Default::Value(value) => {
                    let written = parse(&place(key.path, Some(value)));
                    assert!(omitted.is_ok(), "{}: {omitted:?}", key.path);
                    assert_eq!(written, omitted, "{} = {value} is not its default", key.path);
                }
                Default::Unset(_) => assert!(omitted.is_ok(), "{}: {omitted:?}", key.path),
                Default::PerUser(text) => {
                    let config = omitted.unwrap_or_else(|e| panic!("{}: {e}", key.path));
                    let default = match key.path {
                        "socket" => config.socket,
                        "state_directory" => config.state_directory,
                        other => panic!("{other}: no per-user default is known to the test"),
                    };
                    let text = expand(text);
                    assert!(text.contains(&*default.to_string_lossy()), "{}: {default:?} is not in {text:?}", key.path);
                }
                Default::Required => {
                    let err = omitted.err().unwrap_or_else(|| panic!("{} is documented as required", key.path));
                    assert!(err.contains(key.path.rsplit('.').next().unwrap_or_default()), "{}: {err}", key.path);
                }
            }
        }
    }

    /// The value one step past `value` (a TOML literal): one more or less
    /// for a number or a size, a millisecond more or less for a duration.
    fn step(value: &str, up: bool) -> String {
        let delta: i128 = if up { 1 } else { -1 };
        if let Ok(n) = value.parse::<i128>() {
            return (n + delta).to_string();
        }
        let text = value.trim_matches('"');
        if let Ok(bytes) = properties::bytes(text) {
            return (i128::from(bytes) + delta).to_string();
        }
        let duration =
            humantime::parse_duration(text).unwrap_or_else(|e| panic!("{value}: no number, size or duration: {e}"));
        format!("\"{}ms\"", duration.as_millis() as i128 + delta)
    }

    #[test]
    fn each_documented_bound_is_the_parsers() {
        for key in KEYS {
            let name = key.path.rsplit('.').next().unwrap_or_default();
            for (bound, up) in [(key.lowest, false), (key.highest, true)] {
                let Some(bound) = bound else { continue };
                let inside = parse(&place(key.path, Some(bound)));
                assert!(inside.is_ok(), "{} = {bound} is documented as allowed: {inside:?}", key.path);
                let past = step(bound, up);
                let refused = parse(&place(key.path, Some(&past)));
                let err =
                    refused.err().unwrap_or_else(|| panic!("{} = {past} is past its bound but accepted", key.path));
                assert!(err.contains(name), "{} = {past} refused for another reason: {err}", key.path);
            }
            let checked = key.lowest.is_some() || key.highest.is_some();
            assert!(!checked || !key.bounds.is_empty(), "{}: a checked bound needs its words", key.path);
        }
    }

    #[test]
    fn each_list_of_choices_is_the_parsers() {
        for key in KEYS {
            let Kind::OneOf(words) = key.kind else { continue };
            for word in words {
                let chosen = parse(&place(key.path, Some(&format!("\"{word}\""))));
                assert!(chosen.is_ok(), "{} = {word:?}: {chosen:?}", key.path);
            }
            let err = parse(&place(key.path, Some("\"no-such-choice\""))).expect_err(key.path);
            let expected = err.split_once("expected").map(|(_, rest)| rest).unwrap_or_default();
            let named: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            assert_eq!(named, words.to_vec(), "{}: {err}", key.path);
        }
    }
}
