//! The TOML configuration of corrald.
//!
//! Parsing is strict: an unknown key or a bad value is an error that names the
//! file and the key's path (`groups.web.stop_timeout`), because a supervisor
//! that silently ignores a misspelt `stop_timout` would kill workers the
//! operator meant to drain.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::sanitise::sanitise;
use crate::systemd::properties;
pub use health::{Check, HealthConfig, PingConfig, ProbeConfig, Trust};

pub mod health;
pub mod reference;

/// The largest config file read: far beyond any real fleet, and it bounds
/// what a wrong path (a log, a device) can make corrald read and parse.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// The longest string the file may give (a command, an argument, an
/// environment entry, a path, a name): PATH_MAX, and a bound on what every
/// worker's start copies.
pub const MAX_STRING: usize = 4096;

/// The most arguments, and the most environment entries, a group may have.
pub const MAX_LIST: usize = 1024;

/// The longest socket path: `sockaddr_un.sun_path` is 108 bytes on Linux,
/// one of them the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Bounds of `start_limit_retry`: a retry sooner than a second would be a
/// crash loop of its own, and a day is longer than anyone waits on purpose.
const START_LIMIT_RETRY_MIN: Duration = Duration::from_secs(1);
const START_LIMIT_RETRY_MAX: Duration = Duration::from_secs(86_400);
/// Reading a thousand workers takes a few milliseconds: more often than
/// this would make the sampler a load of its own.
const USAGE_INTERVAL_MIN: Duration = Duration::from_millis(100);
const USAGE_INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// The PATH a worker gets when its group's environment sets none, as systemd
/// gives services.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The system corrald's socket, as the shipped corrald.socket unit has it.
pub const SYSTEM_SOCKET: &str = "/run/corral/corrald.sock";

/// Where corrald listens and corralctl connects when no socket is named:
/// `/run/corral/corrald.sock` for root, else under `$XDG_RUNTIME_DIR/corral/`,
/// else under a per-user directory in `/tmp`.
pub fn default_socket_path() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("corral/corrald.sock"),
        None => PathBuf::from(format!("/tmp/corral-{uid}/corrald.sock")),
    }
}

/// [`default_socket_path`] in words, for the manuals, which every user reads.
pub const DEFAULT_SOCKET_TEXT: &str = "/run/corral/corrald.sock for root, $XDG_RUNTIME_DIR/corral/corrald.sock \
     for other users (/tmp/corral-UID/corrald.sock without XDG_RUNTIME_DIR)";

/// Where corrald keeps its state when the config names none.
pub fn default_state_directory() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/corral");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("corral");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/corral"),
        None => PathBuf::from(format!("/tmp/corral-{}/state", nix::unistd::geteuid())),
    }
}

/// [`default_state_directory`] in words, for the manuals.
pub const DEFAULT_STATE_DIRECTORY_TEXT: &str = "/var/lib/corral for root, $XDG_STATE_HOME/corral for other \
     users (~/.local/state/corral without XDG_STATE_HOME)";

/// A config error, always naming the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

/// Every part of a message can carry text from the file or its name (a key,
/// a value, a TOML error quoting them), so all of it is escaped here, where
/// no error can miss it.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", sanitise(&self.file.to_string_lossy()), sanitise(&self.message))
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from; `reload` reads it again.
    pub path: PathBuf,
    pub socket: PathBuf,
    pub state_directory: PathBuf,
    pub max_frame_size: usize,
    pub scopes: Scopes,
    pub bus: BusChoice,
    pub slice: String,
    /// Bytes of worker output that may wait for the journal before lines
    /// are dropped.
    pub output_buffer: usize,
    /// How often each worker's CPU and memory are read; `None`: never.
    pub usage_interval: Option<Duration>,
    pub audit: AuditConfig,
    /// Who may send which commands, beyond the socket's file mode.
    pub access: AccessLists,
    /// A group granted the socket (mode 0660 instead of 0600).
    pub socket_group: Option<String>,
    /// Where GET /metrics is served over HTTP; none unless set.
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub groups: BTreeMap<String, GroupConfig>,
}

/// Bounds on everything a client (or a file) can make corrald grow.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Workers in all groups together, however they came to be (config
    /// counts, `scale`, `load-state`). Default 4096; 1 to 65536.
    pub max_workers: u32,
    /// Workers in one group. Default 1024; 1 to 65536.
    pub max_group_workers: u32,
    /// Default 256; 1 to 4096.
    pub max_groups: u32,
    /// Concurrent command-socket connections. Default 256; 8 to 65536.
    pub max_connections: u32,
    /// Concurrent connections of one uid; admin-tier callers are exempt.
    /// Default 32; 1 to 65536.
    pub max_connections_per_uid: u32,
    /// Connections only admin-tier callers may use, so a flood cannot lock
    /// the operator out. Default 16; at least 1 and less than
    /// `max_connections`.
    pub admin_connection_reserve: u32,
    /// Requests of one connection being served at once. Default 64; 1 to
    /// 1024.
    pub max_requests_in_flight: u32,
    /// Response bytes waiting for one connection to read them. Default 4M;
    /// 64K to 1G.
    pub max_queued_response_bytes: usize,
    /// The largest response frame corrald sends. Default 16M; 64K to 16M
    /// (what clients must accept: `ctl::MAX_RESPONSE_FRAME`),
    /// and not less than `max_frame_size`.
    pub max_response_size: usize,
    /// A frame once started must be complete within this. Default 10s;
    /// 100ms to 10min.
    pub frame_timeout: Duration,
    /// The largest state file (and `workers.json`) read. Default 4M; 64K to
    /// 1G.
    pub max_state_file_size: usize,
    /// Bytes of one argument an audit record keeps. Default 256; 32 to 64K.
    pub max_audit_argument: usize,
    /// Calls to systemd (placements, property changes) waiting for their
    /// answer at once, whatever the number of workers starting. The system
    /// bus refuses more than 128 pending replies per connection, and
    /// systemd places scopes no faster with more than a few. Default 8; 1
    /// to 64.
    pub max_dbus_calls: u32,
    /// systemd scopes the fleet may keep live at once: one per group with
    /// `scope = "group"`, one per worker of a group with `scope = "worker"`.
    /// Each carries corrald as its `Controller`, and systemd 252 tracks each
    /// controller with one match rule on its own bus connection, which
    /// dbus-daemon caps at 512 (`max_match_rules_per_connection`): past
    /// about 506 systemd loses the bus (see README, "Scopes"). Default 256,
    /// half the cap, leaving the rest to systemd's other clients; 1 to 500.
    pub max_scopes: u32,
    /// Event subscriptions open at once (`corralctl events`). Default 64;
    /// 1 to 4096.
    pub max_subscribers: u32,
    /// Events waiting for one subscriber to read them (and at most
    /// `events::MAX_QUEUE_BYTES` of them); past it they are dropped and
    /// counted, and the subscriber is told how many. Default 1024; 1 to
    /// 65536.
    pub event_queue: u32,
    /// The latest events kept for a subscription that asks for a replay
    /// (and at most `events::MAX_HISTORY_BYTES` of them): how a client sees
    /// what happened before it could subscribe, the workers adopted on an
    /// upgrade among them. Default 256; 0 (none kept) to 65536.
    pub event_history: u32,
}

/// What `limits.max_audit_argument` is unless the config says otherwise:
/// bytes an audit record keeps of each argument's value.
pub const DEFAULT_MAX_AUDIT_ARGUMENT: usize = 256;

/// The most `limits.max_scopes` may be: under the 506 controlled scopes at
/// which systemd 252 with dbus-daemon's default limits loses the bus.
pub const MAX_SCOPES_CEILING: u32 = 500;

/// How many scopes groups of these modes and worker counts keep live.
pub fn live_scopes(groups: impl IntoIterator<Item = (ScopeMode, u32)>) -> u64 {
    groups
        .into_iter()
        .map(|(mode, count)| match mode {
            ScopeMode::Group => u64::from(count.min(1)),
            ScopeMode::Worker => u64::from(count),
        })
        .sum()
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_workers: 4096,
            max_group_workers: 1024,
            max_groups: 256,
            max_connections: 256,
            max_connections_per_uid: 32,
            admin_connection_reserve: 16,
            max_requests_in_flight: 64,
            max_queued_response_bytes: 4 << 20,
            max_response_size: 16 << 20,
            frame_timeout: Duration::from_secs(10),
            max_state_file_size: 4 << 20,
            max_audit_argument: DEFAULT_MAX_AUDIT_ARGUMENT,
            max_dbus_calls: 8,
            max_scopes: 256,
            max_subscribers: 64,
            event_queue: 1024,
            event_history: 256,
        }
    }
}

/// Who may use the command socket, tier by tier. The checking lives in
/// `command::authorise`; this is only what the operator wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLists {
    /// May connect at all (the read tier: status, workers). `None`: whoever
    /// the socket's file mode lets in.
    pub allowed_uids: Option<Vec<u32>>,
    pub allowed_gids: Option<Vec<u32>>,
    /// May change the fleet (the operate tier).
    pub operate_uids: Vec<u32>,
    pub operate_gids: Vec<u32>,
    /// May do what amounts to root (the admin tier).
    pub admin_uids: Vec<u32>,
    pub admin_gids: Vec<u32>,
}

/// Where audit records go and what a failure to write them means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub text_target: Option<PathBuf>,
    pub json_target: Option<PathBuf>,
    pub journal: bool,
    /// fdatasync each record before the command runs.
    pub sync: bool,
    /// Log a sink failure and let the command run anyway.
    pub continue_on_failure: bool,
    /// Bytes kept of each argument's value (see `audit::Record::shown`).
    pub max_argument: usize,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            text_target: None,
            json_target: None,
            journal: false,
            sync: false,
            continue_on_failure: false,
            max_argument: DEFAULT_MAX_AUDIT_ARGUMENT,
        }
    }
}

/// Whether workers are placed in systemd scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scopes {
    /// When a service manager answers; otherwise run without, warning once.
    Auto,
    /// Refuse to start without a service manager.
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusChoice {
    /// The system bus for root, the user's bus otherwise.
    Auto,
    System,
    User,
}

/// How a group's workers map to scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeMode {
    /// One scope, `corral-<group>.scope`, for all the group's workers.
    Group,
    /// One scope per worker, `corral-<group>-<n>.scope`.
    Worker,
}

/// Where a group's workers' stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutputMode {
    /// corrald reads them and writes each line to journald with its own
    /// fields (`CORRAL_WORKER_ID`, ...); a slow journal never blocks a
    /// worker: lines that do not fit the queue are dropped and counted.
    #[default]
    Corrald,
    /// The worker writes to journald's stream socket itself, as a service
    /// with `StandardOutput=journal` does: journald's own speed and
    /// attribution (`_PID`, `_SYSTEMD_UNIT`), but no corral fields, and a
    /// stuck journald blocks the worker as it blocks services.
    Journal,
}

/// How a worker's stream becomes log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPolicy {
    pub priority: u8,
    /// Honour a leading `<N>` as the line's priority, as systemd's
    /// `SyslogLevelPrefix=` does.
    pub level_prefix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopMode {
    /// A soft stop is a `SoftStop` request on the worker channel.
    Protocol,
    /// A soft stop is the group's stop signal.
    Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopTimeoutAction {
    /// SIGKILL the worker and report it as timed out.
    Kill,
    /// Report the worker as timed out and leave it running.
    Fail,
}

/// One `[groups.<name>]` table: read from the file as it is (unknown keys
/// refused), then completed by [`Config::parse`] (the name, paths made
/// absolute) and [`Config::load`] (`host`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The table's key.
    #[serde(skip)]
    pub name: String,
    /// A path (absolute once parsed) or a bare name looked up in PATH.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Absolute once parsed.
    pub working_directory: Option<PathBuf>,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
    #[serde(default = "ms::<100>", deserialize_with = "duration")]
    pub restart_backoff_initial: Duration,
    #[serde(default = "ms::<30_000>", deserialize_with = "duration")]
    pub restart_backoff_max: Duration,
    #[serde(default = "five")]
    pub start_limit_burst: u32,
    #[serde(default = "ms::<10_000>", deserialize_with = "duration")]
    pub start_limit_interval: Duration,
    /// How long after its start limit failed it the group starts again by
    /// itself; `None`: it waits for an operator, as a unit does in systemd.
    #[serde(default, deserialize_with = "some_duration")]
    pub start_limit_retry: Option<Duration>,
    #[serde(default = "default_stop_mode")]
    pub stop_mode: StopMode,
    #[serde(default = "sigterm", deserialize_with = "signal")]
    pub stop_signal: Signal,
    #[serde(default = "ms::<10_000>", deserialize_with = "duration")]
    pub stop_timeout: Duration,
    #[serde(default = "default_timeout_action")]
    pub stop_timeout_action: StopTimeoutAction,
    #[serde(default = "ms::<1_000>", deserialize_with = "duration")]
    pub ready_after: Duration,
    #[serde(default = "ms::<60_000>", deserialize_with = "duration")]
    pub ready_timeout: Duration,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default = "one")]
    pub max_unavailable: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    #[serde(default = "default_scope_mode")]
    pub scope: ScopeMode,
    /// Resource properties for the group's scopes, in the order of their
    /// names.
    #[serde(default, deserialize_with = "resources")]
    pub resources: Vec<properties::Property>,
    #[serde(default = "info", deserialize_with = "priority")]
    pub stdout_priority: u8,
    #[serde(default = "info", deserialize_with = "priority")]
    pub stderr_priority: u8,
    #[serde(default = "yes")]
    pub level_prefix: bool,
    #[serde(default)]
    pub output: OutputMode,
    /// Pings over the worker channel; off unless the table is there.
    pub ping: Option<PingConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    /// What [`Config::load`] found on this host for the group, so that no
    /// spawn waits on the user database or searches PATH. `None` after
    /// [`Config::parse`] alone: such a group's workers cannot be started.
    #[serde(skip)]
    pub host: Option<HostFacts>,
}

/// A group's command and identity as this host resolves them.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// The file the workers exec.
    pub program: PathBuf,
    /// Who the workers run as; none when the group names no user or group.
    pub identity: Option<Identity>,
}

/// A worker's uid, gid and supplementary groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

impl GroupConfig {
    /// How the workers' stdout becomes log lines.
    pub fn stdout(&self) -> StreamPolicy {
        StreamPolicy { priority: self.stdout_priority, level_prefix: self.level_prefix }
    }

    /// How the workers' stderr becomes log lines.
    pub fn stderr(&self) -> StreamPolicy {
        StreamPolicy { priority: self.stderr_priority, level_prefix: self.level_prefix }
    }

    /// The PATH the group's workers get, and so where a bare command name is
    /// looked up: the group's own, else [`DEFAULT_PATH`].
    pub fn search_path(&self) -> &str {
        self.environment.get("PATH").map_or(DEFAULT_PATH, String::as_str)
    }
}

/// Where `metrics_listen` says to serve: a port alone is on the loopback
/// address. The endpoint has no access control (it is not the command
/// socket, whose peer credentials say who asks), so an address others can
/// reach is refused unless `metrics_listen_public` says it is meant.
fn metrics_address(text: &str, public: bool) -> Result<SocketAddr, String> {
    let address = match text.parse::<u16>() {
        Ok(port) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        Err(_) => text.parse::<SocketAddr>().map_err(|_| {
            format!("key `metrics_listen`: {text:?} is not an address (\"127.0.0.1:9464\", \"[::1]:9464\") or a port")
        })?,
    };
    if !address.ip().is_loopback() && !public {
        return Err(format!(
            "key `metrics_listen`: {address} is not a loopback address; the metrics tell the fleet's internals to \
             whoever connects, so set metrics_listen_public = true to serve them there"
        ));
    }
    Ok(address)
}

/// The file's top level. Each key here, in [`RawLimits`] and in
/// [`GroupConfig`] is documented in [`reference::KEYS`], which corral.toml(5)
/// is rendered from; its tests fail on a key missing there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    state_directory: Option<PathBuf>,
    max_frame_size: Option<Scalar>,
    #[serde(default = "default_scopes")]
    scopes: Scopes,
    #[serde(default = "default_bus")]
    bus: BusChoice,
    slice: Option<String>,
    output_buffer: Option<Scalar>,
    #[serde(default, deserialize_with = "some_duration")]
    usage_interval: Option<Duration>,
    audit_logs_target: Option<PathBuf>,
    audit_logs_json_target: Option<PathBuf>,
    #[serde(default = "yes")]
    audit_journal: bool,
    #[serde(default)]
    audit_sync: bool,
    #[serde(default = "default_audit_failure")]
    audit_failure: AuditFailure,
    command_allowed_uids: Option<Vec<u32>>,
    command_allowed_gids: Option<Vec<u32>>,
    #[serde(default)]
    command_operate_uids: Vec<u32>,
    #[serde(default)]
    command_operate_gids: Vec<u32>,
    #[serde(default)]
    command_admin_uids: Vec<u32>,
    #[serde(default)]
    command_admin_gids: Vec<u32>,
    command_socket_group: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default)]
    metrics_listen_public: bool,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    groups: BTreeMap<String, GroupConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_workers: Option<u32>,
    max_group_workers: Option<u32>,
    max_groups: Option<u32>,
    max_connections: Option<u32>,
    max_connections_per_uid: Option<u32>,
    admin_connection_reserve: Option<u32>,
    max_requests_in_flight: Option<u32>,
    max_queued_response_bytes: Option<Scalar>,
    max_response_size: Option<Scalar>,
    #[serde(default, deserialize_with = "some_duration")]
    frame_timeout: Option<Duration>,
    max_state_file_size: Option<Scalar>,
    max_audit_argument: Option<Scalar>,
    max_dbus_calls: Option<u32>,
    max_scopes: Option<u32>,
    max_subscribers: Option<u32>,
    event_queue: Option<u32>,
    event_history: Option<u32>,
}

impl RawLimits {
    /// Fills in defaults and checks ranges; an error is a whole message
    /// naming the key.
    fn resolve(self, max_frame_size: usize) -> Result<Limits, String> {
        let d = Limits::default();
        let max_connections = count("max_connections", self.max_connections, d.max_connections, 8..=65536)?;
        let max_response_size =
            size("limits.max_response_size", self.max_response_size, d.max_response_size, 64 << 10..=16 << 20)?;
        if max_response_size < max_frame_size {
            return Err(format!(
                "key `limits.max_response_size`: {max_response_size} bytes is less than max_frame_size \
                 ({max_frame_size} bytes): a response must be able to carry what a request can"
            ));
        }
        let frame_timeout = self.frame_timeout.unwrap_or(d.frame_timeout);
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&frame_timeout) {
            return Err(format!(
                "key `limits.frame_timeout`: {} is out of range (100ms to 10min)",
                humantime::format_duration(frame_timeout)
            ));
        }
        Ok(Limits {
            max_workers: count("max_workers", self.max_workers, d.max_workers, 1..=65536)?,
            max_group_workers: count("max_group_workers", self.max_group_workers, d.max_group_workers, 1..=65536)?,
            max_groups: count("max_groups", self.max_groups, d.max_groups, 1..=4096)?,
            max_connections,
            max_connections_per_uid: count(
                "max_connections_per_uid",
                self.max_connections_per_uid,
                d.max_connections_per_uid,
                1..=65536,
            )?,
            admin_connection_reserve: count(
                "admin_connection_reserve",
                self.admin_connection_reserve,
                d.admin_connection_reserve,
                1..=max_connections - 1,
            )
            .map_err(|m| format!("{m}; it must be less than max_connections ({max_connections})"))?,
            max_requests_in_flight: count(
                "max_requests_in_flight",
                self.max_requests_in_flight,
                d.max_requests_in_flight,
                1..=1024,
            )?,
            max_queued_response_bytes: size(
                "limits.max_queued_response_bytes",
                self.max_queued_response_bytes,
                d.max_queued_response_bytes,
                64 << 10..=1 << 30,
            )?,
            max_response_size,
            frame_timeout,
            max_state_file_size: size(
                "limits.max_state_file_size",
                self.max_state_file_size,
                d.max_state_file_size,
                64 << 10..=1 << 30,
            )?,
            max_audit_argument: size(
                "limits.max_audit_argument",
                self.max_audit_argument,
                d.max_audit_argument,
                32..=64 << 10,
            )?,
            max_dbus_calls: count("max_dbus_calls", self.max_dbus_calls, d.max_dbus_calls, 1..=64)?,
            max_scopes: count("max_scopes", self.max_scopes, d.max_scopes, 1..=MAX_SCOPES_CEILING).map_err(|m| {
                format!("{m}; past about 506 scopes with a Controller systemd 252 loses its bus connection")
            })?,
            max_subscribers: count("max_subscribers", self.max_subscribers, d.max_subscribers, 1..=4096)?,
            event_queue: count("event_queue", self.event_queue, d.event_queue, 1..=65536)?,
            event_history: count("event_history", self.event_history, d.event_history, 0..=65536)?,
        })
    }
}

/// A `limits` count, or its default.
fn count(key: &str, value: Option<u32>, default: u32, range: RangeInclusive<u32>) -> Result<u32, String> {
    let n = value.unwrap_or(default);
    if !range.contains(&n) {
        return Err(format!("key `limits.{key}`: {n} is out of range ({} to {})", range.start(), range.end()));
    }
    Ok(n)
}

/// A `limits` size, written as bytes or with systemd's suffixes, or its
/// default.
fn size(key: &str, value: Option<Scalar>, default: usize, range: RangeInclusive<usize>) -> Result<usize, String> {
    let n = match value {
        None => return Ok(default),
        Some(Scalar::Number(n)) => n,
        Some(Scalar::Text(t)) => properties::bytes(&t).map_err(|m| format!("key `{key}`: {m}"))?,
    };
    match usize::try_from(n) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "key `{key}`: {n} bytes is out of range ({} to {})",
            size_text(*range.start()),
            size_text(*range.end())
        )),
    }
}

/// A size the way the file may write it: "64K" when exact, else bytes.
fn size_text(n: usize) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// `[groups.<name>.resources]`: each property converted to systemd's terms
/// as it is read, so an error names its key.
fn resources<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<properties::Property>, D::Error> {
    struct Table;
    impl<'de> Visitor<'de> for Table {
        type Value = Vec<properties::Property>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut by_name = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                let property = map.next_value_seed(Resource(&name))?;
                by_name.insert(name, property);
            }
            Ok(by_name.into_values().collect())
        }
    }
    d.deserialize_map(Table)
}

/// One resource property's value, parsed under its name.
struct Resource<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Resource<'_> {
    type Value = properties::Property;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<properties::Property, D::Error> {
        let text = match Scalar::deserialize(d)? {
            Scalar::Number(n) => n.to_string(),
            Scalar::Text(t) => t,
        };
        properties::parse(self.0, &text).map_err(serde::de::Error::custom)
    }
}

/// A resource value, written as a string ("512M") or a bare number (100).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Number(u64),
    Text(String),
}

/// What a failure to write an audit record means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum AuditFailure {
    /// The command is refused (fail closed).
    Refuse,
    /// The command runs; the loss is logged loudly.
    Continue,
}

fn default_audit_failure() -> AuditFailure {
    AuditFailure::Refuse
}

fn default_scopes() -> Scopes {
    Scopes::Auto
}
fn default_bus() -> BusChoice {
    BusChoice::Auto
}
fn default_scope_mode() -> ScopeMode {
    ScopeMode::Group
}

fn one() -> u32 {
    1
}
fn five() -> u32 {
    5
}
fn ms<const N: u64>() -> Duration {
    Duration::from_millis(N)
}
fn default_restart() -> RestartPolicy {
    RestartPolicy::OnFailure
}
fn default_stop_mode() -> StopMode {
    StopMode::Signal
}
fn sigterm() -> Signal {
    Signal::SIGTERM
}
fn default_timeout_action() -> StopTimeoutAction {
    StopTimeoutAction::Kill
}

fn info() -> u8 {
    6
}
fn yes() -> bool {
    true
}

/// Syslog priorities by name ("warning") or number (4).
fn priority<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let text = match Scalar::deserialize(d)? {
        Scalar::Number(n) => n.to_string(),
        Scalar::Text(t) => t,
    };
    parse_priority(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid priority {text:?} (emerg, alert, crit, err, warning, notice, info, debug, or 0 to 7)"
        ))
    })
}

/// Syslog priorities by name, as `journalctl -p` and systemd's
/// `SyslogLevel=` spell them.
const PRIORITY_NAMES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// Parses a priority name ("warning") or number ("4").
pub fn parse_priority(text: &str) -> Option<u8> {
    match text.parse::<u8>() {
        Ok(n) if n <= 7 => Some(n),
        Ok(_) => None,
        Err(_) => PRIORITY_NAMES.iter().position(|n| *n == text).map(|p| p as u8),
    }
}

/// [`duration`] for a key that may be left out.
fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Durations as humans write them: "250ms", "5s", "1m 30s".
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e} (e.g. \"250ms\", \"5s\")")))
}

/// Signals by name, with or without the SIG prefix.
fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
    let text = String::deserialize(d)?;
    parse_signal(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown signal {text:?} (e.g. \"SIGTERM\")")))
}

pub fn parse_signal(text: &str) -> Option<Signal> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse().ok()
}

pub use crate::target::check_group_name;

/// The checks of one group that need nothing but the file. Errors are whole
/// messages naming the key.
fn check_group(name: &str, g: &GroupConfig, limits: &Limits) -> Result<(), String> {
    let key = |k: &str| format!("groups.{name}.{k}");
    if g.command.is_empty() {
        return Err(format!("key `{}`: must not be empty", key("command")));
    }
    if g.count > limits.max_group_workers {
        return Err(format!(
            "key `{}`: {} is more than max_group_workers ({}); `limits.max_group_workers` raises it",
            key("count"),
            g.count,
            limits.max_group_workers
        ));
    }
    if g.args.len() > MAX_LIST {
        return Err(format!("key `{}`: {} arguments, more than {MAX_LIST}", key("args"), g.args.len()));
    }
    for (i, arg) in g.args.iter().enumerate() {
        check_text(&key(&format!("args[{i}]")), arg.as_bytes())?;
    }
    if g.environment.len() > MAX_LIST {
        return Err(format!("key `{}`: {} variables, more than {MAX_LIST}", key("environment"), g.environment.len()));
    }
    for (var, value) in &g.environment {
        if var.is_empty() || var.contains('=') {
            return Err(format!("key `{}`: invalid variable name {var:?}", key("environment")));
        }
        check_text(&key("environment"), var.as_bytes())?;
        check_text(&key(&format!("environment.{var}")), value.as_bytes())?;
    }
    for (k, id) in [("user", &g.user), ("group", &g.group)] {
        if let Some(id) = id {
            if id.is_empty() {
                return Err(format!("key `{}`: must not be empty", key(k)));
            }
            check_text(&key(k), id.as_bytes())?;
        }
    }
    if g.after.len() > limits.max_groups as usize {
        return Err(format!(
            "key `{}`: {} entries, more than max_groups ({})",
            key("after"),
            g.after.len(),
            limits.max_groups
        ));
    }
    if matches!(g.stop_signal, Signal::SIGKILL | Signal::SIGSTOP) {
        return Err(format!(
            "key `{}`: {} cannot be caught, so a soft stop would be a kill or a freeze (SIGKILL is what \
             stop_timeout_action = \"kill\" sends once the soft stop has had its time)",
            key("stop_signal"),
            g.stop_signal
        ));
    }
    if g.restart_backoff_initial.is_zero() {
        return Err(format!("key `{}`: must be greater than zero", key("restart_backoff_initial")));
    }
    if g.restart_backoff_max < g.restart_backoff_initial {
        return Err(format!("key `{}`: must not be less than restart_backoff_initial", key("restart_backoff_max")));
    }
    if g.start_limit_burst == 0 {
        return Err(format!("key `{}`: must be at least 1", key("start_limit_burst")));
    }
    if let Some(retry) = g.start_limit_retry {
        if !(START_LIMIT_RETRY_MIN..=START_LIMIT_RETRY_MAX).contains(&retry) {
            return Err(format!(
                "key `{}`: {} is out of range (1s to 1day)",
                key("start_limit_retry"),
                humantime::format_duration(retry)
            ));
        }
    }
    if g.max_unavailable == 0 {
        return Err(format!("key `{}`: must be at least 1", key("max_unavailable")));
    }
    Ok(())
}

/// Strings the file gives end up in argv, environ and system calls, which
/// end a string at its first NUL: one inside would silently cut it.
fn check_text(key: &str, text: &[u8]) -> Result<(), String> {
    if text.len() > MAX_STRING {
        return Err(format!("key `{key}`: {} bytes long, more than {MAX_STRING}", text.len()));
    }
    if text.contains(&0) {
        return Err(format!("key `{key}`: contains a NUL byte"));
    }
    Ok(())
}

fn check_socket_path(socket: &Path) -> Result<(), String> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "key `socket`: {} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            socket.display()
        ));
    }
    check_text("socket", socket.as_os_str().as_bytes())
}

/// An error from the user database is an error too: a group that cannot be
/// looked up now cannot be relied on at a worker's start either.
fn lookup_group(name: &str) -> Result<Gid, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("no group named {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

/// Finds the file a worker's exec would run: a path as it is, a bare name
/// the way execvp searches the worker's PATH (an empty entry or a relative
/// one is taken from the working directory the worker starts in).
fn find_command(g: &GroupConfig) -> Result<PathBuf, String> {
    if g.command.contains('/') {
        let path = PathBuf::from(&g.command);
        return executable(&path).map(|()| path);
    }
    let here = g.working_directory.clone().unwrap_or_default();
    for dir in g.search_path().split(':') {
        let path = here.join(dir).join(&g.command);
        if executable(&path).is_ok() {
            return Ok(path);
        }
    }
    Err(format!("no executable {:?} in the workers' PATH ({})", g.command, g.search_path()))
}

/// Looks up who a group's workers run as: the user's uid, the group (the
/// named one, else the user's primary one) and the user's supplementary
/// groups. None when the group names neither user nor group.
fn resolve_identity(g: &GroupConfig) -> Result<Option<Identity>, String> {
    if g.user.is_none() && g.group.is_none() {
        return Ok(None);
    }
    let user = match &g.user {
        Some(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Some(user),
            Ok(None) => return Err(format!("no user named {name:?} on this host")),
            Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
        },
        None => None,
    };
    let gid = match &g.group {
        Some(name) => lookup_group(name)?,
        None => user.as_ref().map_or_else(nix::unistd::getegid, |u| u.gid),
    };
    let (uid, groups) = match &user {
        Some(u) => {
            let name =
                std::ffi::CString::new(u.name.clone()).map_err(|_| format!("user name {:?} holds NUL", u.name))?;
            let groups = nix::unistd::getgrouplist(&name, gid)
                .map_err(|e| format!("cannot list the groups of user {:?}: {e}", u.name))?;
            (u.uid, groups)
        }
        None => (nix::unistd::geteuid(), vec![gid]),
    };
    Ok(Some(Identity { uid, gid, groups }))
}

/// A regular file this process may execute; for root that is any file
/// with an execute bit.
fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("{} is not executable: {}", path.display(), e.desc()))
}

impl Config {
    /// Reads a config file and checks it against this host: what `parse`
    /// checks, and that its users, groups, commands and directories exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: path.to_path_buf(), message };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let too_large = || err(format!("the file is larger than {MAX_CONFIG_FILE} bytes, the most a config may be"));
        if file.metadata().map_err(|e| err(format!("cannot read: {e}")))?.len() > MAX_CONFIG_FILE {
            return Err(too_large());
        }
        // The size can change after the check, and a pipe has none.
        let mut text = String::new();
        file.take(MAX_CONFIG_FILE + 1).read_to_string(&mut text).map_err(|e| err(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_CONFIG_FILE {
            return Err(too_large());
        }
        let mut config = Config::parse(&text, path)?;
        // Named as the caller named it, like the errors of parse.
        config.resolve_host().map_err(|e| err(e.message))?;
        Ok(config)
    }

    /// Parses config text; `path` names the file in errors and anchors
    /// relative paths. Everything that needs no look at the host is checked
    /// here, and nothing here touches the filesystem or the user database.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: path.to_path_buf(), message };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let location = inner
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            let message = inner.message().trim_end().to_string();
            if key.is_empty() || key == "." {
                err(format!("{message}{location}"))
            } else {
                err(format!("key `{key}`: {message}{location}"))
            }
        })?;

        let max_frame_size =
            size("max_frame_size", raw.max_frame_size, crate::frame::MAX_COMMAND_FRAME, 64..=64 << 20).map_err(err)?;
        let limits = raw.limits.resolve(max_frame_size).map_err(err)?;
        if raw.groups.len() > limits.max_groups as usize {
            return Err(err(format!(
                "key `groups`: {} groups is more than max_groups ({}); `limits.max_groups` raises it",
                raw.groups.len(),
                limits.max_groups
            )));
        }

        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let absolute = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let mut groups = BTreeMap::new();
        for (name, mut g) in raw.groups {
            let key = |k: &str| format!("groups.{name}.{k}");
            check_group_name(&name).map_err(|m| err(format!("key `groups.{name}`: {m}")))?;
            check_group(&name, &g, &limits).map_err(err)?;
            health::check(&name, &mut g, &base).map_err(err)?;
            // A command with a slash is a path (relative ones are taken from
            // the config file's directory); a bare name is looked up in PATH.
            if g.command.contains('/') {
                g.command = absolute(PathBuf::from(&g.command)).to_string_lossy().into_owned();
            }
            check_text(&key("command"), g.command.as_bytes()).map_err(err)?;
            g.working_directory = g.working_directory.map(absolute);
            if let Some(dir) = &g.working_directory {
                check_text(&key("working_directory"), dir.as_os_str().as_bytes()).map_err(err)?;
            }
            g.name.clone_from(&name);
            groups.insert(name, g);
        }
        let workers: u64 = groups.values().map(|g| u64::from(g.count)).sum();
        if workers > u64::from(limits.max_workers) {
            return Err(err(format!(
                "key `limits.max_workers`: the groups' counts add up to {workers} workers, more than max_workers \
                 ({}); raise it or lower a count",
                limits.max_workers
            )));
        }
        let scopes = live_scopes(groups.values().map(|g| (g.scope, g.count)));
        if raw.scopes != Scopes::Off && scopes > u64::from(limits.max_scopes) {
            let per_worker: Vec<&str> = groups
                .values()
                .filter(|g| g.scope == ScopeMode::Worker && g.count > 0)
                .map(|g| g.name.as_str())
                .collect();
            return Err(err(format!(
                "key `limits.max_scopes`: the groups would keep {scopes} systemd scopes live, more than max_scopes \
                 ({}); every worker of a group with scope = \"worker\" has a scope of its own ({}). Set scope = \
                 \"group\" on the large groups (one scope for the group, a sub-cgroup with its own accounting per \
                 worker), or lower a count",
                limits.max_scopes,
                if per_worker.is_empty() {
                    "none here".to_string()
                } else {
                    format!("groups {}", per_worker.join(", "))
                }
            )));
        }
        for g in groups.values() {
            for dep in &g.after {
                if !groups.contains_key(dep) {
                    return Err(err(format!("key `groups.{}.after`: no group named {dep:?}", g.name)));
                }
            }
        }
        let edges = groups.values().map(|g| (g.name.as_str(), g.after.as_slice()));
        if let Err(cycle) = dependency_layers(edges) {
            return Err(err(format!("key `groups.{cycle}.after`: groups start after each other in a cycle")));
        }

        let slice = raw.slice.unwrap_or_else(|| "corral.slice".into());
        let slice_ok = slice.len() > 6
            && slice.len() <= 255
            && slice.ends_with(".slice")
            && slice.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '\\'));
        if !slice_ok {
            return Err(err(format!("key `slice`: {slice:?} is not a slice unit name (e.g. \"corral.slice\")")));
        }
        let output_buffer = size("output_buffer", raw.output_buffer, 16 << 20, 64 << 10..=usize::MAX).map_err(err)?;
        let usage_interval = match raw.usage_interval.unwrap_or(Duration::from_secs(5)) {
            Duration::ZERO => None,
            every if (USAGE_INTERVAL_MIN..=USAGE_INTERVAL_MAX).contains(&every) => Some(every),
            every => {
                return Err(err(format!(
                    "key `usage_interval`: {} is out of range (0 for off, or 100ms to 1h)",
                    humantime::format_duration(every)
                )))
            }
        };
        if let Some(name) = &raw.command_socket_group {
            if name.is_empty() {
                return Err(err("key `command_socket_group`: must not be empty".into()));
            }
            check_text("command_socket_group", name.as_bytes()).map_err(err)?;
        }
        let metrics_listen = raw
            .metrics_listen
            .map(|address| metrics_address(&address, raw.metrics_listen_public))
            .transpose()
            .map_err(err)?;
        let socket = raw.socket.map(absolute).unwrap_or_else(default_socket_path);
        check_socket_path(&socket).map_err(err)?;
        let state_directory = raw.state_directory.map(absolute).unwrap_or_else(default_state_directory);
        check_text("state_directory", state_directory.as_os_str().as_bytes()).map_err(err)?;
        let audit = AuditConfig {
            text_target: raw.audit_logs_target.map(absolute),
            json_target: raw.audit_logs_json_target.map(absolute),
            journal: raw.audit_journal,
            sync: raw.audit_sync,
            continue_on_failure: raw.audit_failure == AuditFailure::Continue,
            max_argument: limits.max_audit_argument,
        };
        for (key, target) in [("audit_logs_target", &audit.text_target), ("audit_logs_json_target", &audit.json_target)]
        {
            if let Some(target) = target {
                check_text(key, target.as_os_str().as_bytes()).map_err(err)?;
            }
        }
        if audit.text_target.is_some() && audit.text_target == audit.json_target {
            return Err(err("key `audit_logs_json_target`: must differ from audit_logs_target".into()));
        }
        Ok(Config {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            audit,
            access: AccessLists {
                allowed_uids: raw.command_allowed_uids,
                allowed_gids: raw.command_allowed_gids,
                operate_uids: raw.command_operate_uids,
                operate_gids: raw.command_operate_gids,
                admin_uids: raw.command_admin_uids,
                admin_gids: raw.command_admin_gids,
            },
            socket_group: raw.command_socket_group,
            metrics_listen,
            output_buffer,
            usage_interval,
            scopes: raw.scopes,
            bus: raw.bus,
            slice,
            socket,
            state_directory,
            max_frame_size,
            limits,
            groups,
        })
    }

    /// Checks what only this host can answer, so that `--check-config`,
    /// startup and reload refuse a config whose workers could never start:
    /// users and groups exist, commands are executable files (bare names
    /// found in the workers' PATH), working directories are directories, and
    /// `command_socket_group` names a group. What it finds is kept in each
    /// group's [`HostFacts`], so a spawn makes no such lookups.
    pub fn resolve_host(&mut self) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError { file: self.path.clone(), message };
        self.socket_gid()?;
        for g in self.groups.values_mut() {
            let key = |k: &str| format!("groups.{}.{k}", g.name);
            let identity = resolve_identity(g).map_err(|m| {
                let k = if m.contains("group named") { "group" } else { "user" };
                err(format!("key `{}`: {m}", key(k)))
            })?;
            if let Some(dir) = &g.working_directory {
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(err(format!(
                            "key `{}`: {} is not a directory",
                            key("working_directory"),
                            dir.display()
                        )))
                    }
                    Err(e) => return Err(err(format!("key `{}`: {}: {e}", key("working_directory"), dir.display()))),
                }
            }
            let program = find_command(g).map_err(|m| err(format!("key `{}`: {m}", key("command"))))?;
            for (which, probe) in [("liveness", &g.health.liveness), ("readiness", &g.health.readiness)] {
                if let Some(program) = probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|argv| argv.first()) {
                    executable(Path::new(program))
                        .map_err(|m| err(format!("key `{}`: {m}", key(&format!("health.{which}.exec")))))?;
                }
            }
            g.host = Some(HostFacts { program, identity });
        }
        Ok(())
    }

    /// The group `command_socket_group` names, looked up on this host.
    pub fn socket_gid(&self) -> Result<Option<Gid>, ConfigError> {
        let Some(name) = &self.socket_group else { return Ok(None) };
        lookup_group(name)
            .map(Some)
            .map_err(|m| ConfigError { file: self.path.clone(), message: format!("key `command_socket_group`: {m}") })
    }
}

/// Groups in layers by their `after` edges: layer 0 starts after nothing,
/// and every other group is one layer past the deepest group it starts
/// after. The one walk over the dependencies: config validation uses it to
/// find a cycle (the `Err` names a group on one, or after one), and the supervisor to
/// start groups in order and to stop them in reverse. An edge to a group
/// not among `groups` is ignored: a group removed by a reload no longer
/// holds anyone back.
pub fn dependency_layers<'a>(
    groups: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Result<Vec<Vec<String>>, String> {
    let groups: BTreeMap<&str, &[String]> = groups.into_iter().collect();
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    while depth.len() < groups.len() {
        let before = depth.len();
        for (name, after) in &groups {
            if depth.contains_key(name) {
                continue;
            }
            let known = after.iter().filter(|d| groups.contains_key(d.as_str()));
            let deps: Option<Vec<usize>> = known.map(|d| depth.get(d.as_str()).copied()).collect();
            if let Some(deps) = deps {
                depth.insert(name, deps.into_iter().map(|d| d + 1).max().unwrap_or(0));
            }
        }
        if depth.len() == before {
            let stuck = groups.keys().find(|n| !depth.contains_key(*n)).expect("some group is left");
            return Err(stuck.to_string());
        }
    }
    let mut layers = vec![Vec::new(); depth.values().max().map_or(0, |d| d + 1)];
    for (name, d) in depth {
        layers[d].push(name.to_string());
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/corral/test.toml"))
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nstop_timout = \"5s\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("/etc/corral/test.toml: "), "{text}");
        assert!(text.contains("stop_timout"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn priorities_parse_by_name_and_number() {
        assert_eq!(parse_priority("warning"), Some(4));
        assert_eq!(parse_priority("3"), Some(3));
        assert_eq!(parse_priority("8"), None);
        assert_eq!(parse_priority("warn"), None);
    }

    #[test]
    fn bad_value_names_key_path() {
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nstop_timeout = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.stop_timeout`"), "{e}");
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nrestart = \"sometimes\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.restart`"), "{e}");
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nstop_signal = \"SIGNOPE\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.stop_signal`"), "{e}");
    }

    #[test]
    fn a_start_limit_retry_is_off_unless_set_and_bounded() {
        let group = |extra: &str| parse(&format!("[groups.web]\ncommand = \"x\"\n{extra}"));
        assert_eq!(group("").unwrap().groups["web"].start_limit_retry, None);
        let set = group("start_limit_retry = \"5min\"\n").unwrap();
        assert_eq!(set.groups["web"].start_limit_retry, Some(Duration::from_secs(300)));
        for bad in ["500ms", "2days"] {
            let e = group(&format!("start_limit_retry = \"{bad}\"\n")).unwrap_err();
            assert!(
                e.to_string().contains("key `groups.web.start_limit_retry`") && e.to_string().contains("out of range"),
                "{e}"
            );
        }
    }

    #[test]
    fn after_must_name_a_group_and_not_cycle() {
        let e = parse("[groups.a]\ncommand = \"x\"\nafter = [\"b\"]\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.a.after`: no group named \"b\""), "{e}");
        let e = parse("[groups.a]\ncommand = \"x\"\nafter = [\"b\"]\n[groups.b]\ncommand = \"x\"\nafter = [\"a\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn resources_are_checked_and_converted() {
        let c = parse("[groups.web]\ncommand = \"x\"\nscope = \"worker\"\n[groups.web.resources]\nMemoryMax = \"64M\"\nCPUWeight = 50\n").unwrap();
        let web = &c.groups["web"];
        assert_eq!(web.scope, ScopeMode::Worker);
        let names: Vec<&str> = web.resources.iter().map(|p| p.dbus_name).collect();
        assert_eq!(names, ["CPUWeight", "MemoryMax"]);
        let e = parse("[groups.web]\ncommand = \"x\"\n[groups.web.resources]\nMemoryMax = \"lots\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.resources.MemoryMax`"), "{e}");
        let e = parse("slice = \"corral\"\n").unwrap_err();
        assert!(e.to_string().contains("key `slice`"), "{e}");
        assert_eq!(parse("").unwrap().slice, "corral.slice");
    }

    #[test]
    fn group_names_cannot_look_like_worker_ids() {
        let e = parse("[groups.web-1]\ncommand = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("worker id"), "{e}");
        let e = parse("[groups.\"a b\"]\ncommand = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.a b`"), "{e}");
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse("socket = \"run/s.sock\"\n[groups.web]\ncommand = \"bin/w\"\nargs = [\"-v\"]\n[groups.db]\ncommand = \"sleep\"\n[groups.api]\ncommand = \"x\"\nafter = [\"db\", \"web\"]\n").unwrap();
        assert_eq!(c.socket, PathBuf::from("/etc/corral/run/s.sock"));
        let web = &c.groups["web"];
        assert_eq!(web.command, "/etc/corral/bin/w");
        assert_eq!(web.count, 1);
        assert_eq!(web.restart, RestartPolicy::OnFailure);
        assert_eq!(web.stop_signal, Signal::SIGTERM);
        assert_eq!(c.groups["db"].command, "sleep");
        let edges = c.groups.values().map(|g| (g.name.as_str(), g.after.as_slice()));
        let layers = dependency_layers(edges).unwrap();
        assert_eq!(layers, vec![vec!["db".to_string(), "web".into()], vec!["api".into()]]);
    }

    #[test]
    fn dependency_layers_put_each_group_past_its_deepest_dependency() {
        let v = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<String>>();
        let (none, db, cache, api) = (v(&[]), v(&["db"]), v(&["db"]), v(&["cache", "db", "gone"]));
        let edges =
            [("api", api.as_slice()), ("cache", cache.as_slice()), ("db", none.as_slice()), ("web", db.as_slice())];
        let layers = dependency_layers(edges).unwrap();
        assert_eq!(layers, vec![v(&["db"]), v(&["cache", "web"]), v(&["api"])]);
        assert_eq!(dependency_layers([]).unwrap(), Vec::<Vec<String>>::new());
        let (a, b) = (v(&["b"]), v(&["a"]));
        let cycle = dependency_layers([("a", a.as_slice()), ("b", b.as_slice()), ("c", none.as_slice())]);
        assert_eq!(cycle.unwrap_err(), "a");
    }

    /// Asserts that `text` is refused with a message naming the file and `key`.
    #[track_caller]
    fn refused(text: &str, key: &str) -> String {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.starts_with("/etc/corral/test.toml: "), "{e}");
        assert!(e.contains(&format!("key `{key}`")), "wanted key `{key}`: {e}");
        e
    }

    #[test]
    fn limits_default_and_take_sizes_and_durations() {
        assert_eq!(parse("").unwrap().limits, Limits::default());
        let c = parse(
            "[limits]\nmax_workers = 10\nmax_queued_response_bytes = \"8M\"\nmax_response_size = 2097152\n\
             frame_timeout = \"2s\"\nmax_audit_argument = \"1K\"\nadmin_connection_reserve = 255\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_workers, 10);
        assert_eq!(c.limits.max_queued_response_bytes, 8 << 20);
        assert_eq!(c.limits.max_response_size, 2 << 20);
        assert_eq!(c.limits.frame_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_audit_argument, 1024);
        assert_eq!(c.limits.admin_connection_reserve, 255);
        assert_eq!(c.limits.max_group_workers, 1024);
    }

    #[test]
    fn usage_interval_zero_turns_readings_off_and_others_are_bounded() {
        assert_eq!(parse("").unwrap().usage_interval, Some(Duration::from_secs(5)));
        assert_eq!(parse("usage_interval = \"0s\"").unwrap().usage_interval, None);
        assert_eq!(parse("usage_interval = \"250ms\"").unwrap().usage_interval, Some(Duration::from_millis(250)));
        for text in ["usage_interval = \"50ms\"", "usage_interval = \"2h\"", "usage_interval = \"often\""] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("usage_interval"), "{text}: {e}");
        }
    }

    /// Every size key takes systemd's spellings and the ones operators
    /// write besides (`64k`, `4MiB`), in powers of 1024, and a bad one is
    /// refused naming its key.
    #[test]
    fn every_size_key_takes_the_same_spellings() {
        let c = parse(
            "output_buffer = \"64k\"\nmax_frame_size = \"1MiB\"\n[limits]\nmax_state_file_size = \"4m\"\n\
             max_queued_response_bytes = \"1.5M\"\nmax_response_size = \"2 M\"\n",
        )
        .unwrap();
        assert_eq!(c.output_buffer, 64 << 10);
        assert_eq!(c.max_frame_size, 1 << 20);
        assert_eq!(c.limits.max_state_file_size, 4 << 20);
        assert_eq!(c.limits.max_queued_response_bytes, 3 << 19);
        assert_eq!(c.limits.max_response_size, 2 << 20);
        for (text, key) in [
            ("output_buffer = \"63k\"", "output_buffer"),
            ("output_buffer = \"64x\"", "output_buffer"),
            ("max_frame_size = \"65M\"", "max_frame_size"),
            ("max_frame_size = 63", "max_frame_size"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("key `{key}`")), "{text}: {e}");
        }
    }

    #[test]
    fn limits_out_of_range_name_the_key() {
        let cases = [
            ("max_workers = 0", "limits.max_workers", "1 to 65536"),
            ("max_workers = 65537", "limits.max_workers", "1 to 65536"),
            ("max_workers = 5000000000", "limits.max_workers", ""),
            ("max_workers = -1", "limits.max_workers", ""),
            ("max_group_workers = 0", "limits.max_group_workers", "1 to 65536"),
            ("max_groups = 4097", "limits.max_groups", "1 to 4096"),
            ("max_connections = 7", "limits.max_connections", "8 to 65536"),
            ("max_connections_per_uid = 0", "limits.max_connections_per_uid", "1 to 65536"),
            ("admin_connection_reserve = 0", "limits.admin_connection_reserve", "less than max_connections (256)"),
            ("admin_connection_reserve = 256", "limits.admin_connection_reserve", "less than max_connections (256)"),
            ("max_connections = 8", "limits.admin_connection_reserve", "less than max_connections (8)"),
            ("max_requests_in_flight = 1025", "limits.max_requests_in_flight", "1 to 1024"),
            ("max_queued_response_bytes = \"2G\"", "limits.max_queued_response_bytes", "64K to 1G"),
            ("max_response_size = \"1K\"", "limits.max_response_size", "64K to 16M"),
            ("max_response_size = \"17M\"", "limits.max_response_size", "64K to 16M"),
            ("max_response_size = \"64K\"", "limits.max_response_size", "less than max_frame_size"),
            ("max_state_file_size = \"infinity\"", "limits.max_state_file_size", "64K to 1G"),
            ("max_state_file_size = \"4Q\"", "limits.max_state_file_size", "suffix"),
            ("max_audit_argument = 31", "limits.max_audit_argument", "32 to 64K"),
            ("frame_timeout = \"50ms\"", "limits.frame_timeout", "100ms to 10min"),
            ("frame_timeout = \"11min\"", "limits.frame_timeout", "100ms to 10min"),
            ("frame_timeout = \"soon\"", "limits.frame_timeout", "invalid duration"),
            ("max_wokers = 1", "limits.max_wokers", "unknown field"),
        ];
        for (line, key, detail) in cases {
            let e = refused(&format!("[limits]\n{line}\n"), key);
            assert!(e.contains(detail), "{line}: {e}");
        }
    }

    #[test]
    fn counts_are_bounded_by_the_limits() {
        let e = refused("[groups.web]\ncommand = \"x\"\ncount = 1025\n", "groups.web.count");
        assert!(e.contains("max_group_workers (1024)") && e.contains("`limits.max_group_workers`"), "{e}");
        parse("[limits]\nmax_group_workers = 2000\n[groups.web]\ncommand = \"x\"\ncount = 1025\n").unwrap();
        let two = "[groups.a]\ncommand = \"x\"\ncount = 6\n[groups.b]\ncommand = \"x\"\ncount = 5\n";
        let e = refused(&format!("[limits]\nmax_workers = 10\n{two}"), "limits.max_workers");
        assert!(e.contains("add up to 11 workers"), "{e}");
        parse(&format!("[limits]\nmax_workers = 11\n{two}")).unwrap();
        let e = refused(&format!("[limits]\nmax_groups = 1\n{two}"), "groups");
        assert!(e.contains("2 groups") && e.contains("`limits.max_groups`"), "{e}");
        let e = refused(
            "[limits]\nmax_groups = 2\n[groups.a]\ncommand = \"x\"\n\
             [groups.b]\ncommand = \"x\"\nafter = [\"a\", \"a\", \"a\"]\n",
            "groups.b.after",
        );
        assert!(e.contains("3 entries, more than max_groups (2)"), "{e}");
    }

    #[test]
    fn strings_and_lists_from_the_file_are_bounded() {
        let long = "x".repeat(MAX_STRING + 1);
        let e = refused(&format!("[groups.web]\ncommand = \"x\"\nargs = [\"{long}\"]\n"), "groups.web.args[0]");
        assert!(e.contains("4097 bytes long, more than 4096"), "{e}");
        refused(&format!("[groups.web]\ncommand = \"{long}\"\n"), "groups.web.command");
        refused(&format!("[groups.web]\ncommand = \"x\"\nuser = \"{long}\"\n"), "groups.web.user");
        refused(&format!("[groups.web]\ncommand = \"x\"\ngroup = \"{long}\"\n"), "groups.web.group");
        refused(
            &format!("[groups.web]\ncommand = \"x\"\nworking_directory = \"/{long}\"\n"),
            "groups.web.working_directory",
        );
        refused(
            &format!("[groups.web]\ncommand = \"x\"\nenvironment = {{ A = \"{long}\" }}\n"),
            "groups.web.environment.A",
        );
        refused(
            &format!("[groups.web]\ncommand = \"x\"\nenvironment = {{ {long} = \"a\" }}\n"),
            "groups.web.environment",
        );
        let args = vec!["\"a\""; MAX_LIST + 1].join(", ");
        let e = refused(&format!("[groups.web]\ncommand = \"x\"\nargs = [{args}]\n"), "groups.web.args");
        assert!(e.contains("1025 arguments"), "{e}");
        let vars: Vec<String> = (0..=MAX_LIST).map(|i| format!("V{i} = \"a\"")).collect();
        let e = refused(
            &format!("[groups.web]\ncommand = \"x\"\nenvironment = {{ {} }}\n", vars.join(", ")),
            "groups.web.environment",
        );
        assert!(e.contains("1025 variables"), "{e}");
        refused("[groups.web]\ncommand = \"x\"\nuser = \"\"\n", "groups.web.user");
    }

    #[test]
    fn nul_bytes_are_refused_where_a_system_call_would_cut_them() {
        let cases = [
            ("command = \"/bin/tr\\u0000ue\"", "groups.web.command"),
            ("command = \"x\"\nargs = [\"ok\", \"a\\u0000b\"]", "groups.web.args[1]"),
            ("command = \"x\"\nenvironment = { \"A\\u0000B\" = \"1\" }", "groups.web.environment"),
            ("command = \"x\"\nenvironment = { A = \"1\\u0000\" }", "groups.web.environment.A"),
            ("command = \"x\"\nuser = \"ro\\u0000ot\"", "groups.web.user"),
            ("command = \"x\"\ngroup = \"ro\\u0000ot\"", "groups.web.group"),
            ("command = \"x\"\nworking_directory = \"/tmp\\u0000/x\"", "groups.web.working_directory"),
        ];
        for (lines, key) in cases {
            let e = refused(&format!("[groups.web]\n{lines}\n"), key);
            assert!(e.contains("NUL byte") || e.contains("invalid variable name"), "{lines}: {e}");
        }
        refused("socket = \"/run/a\\u0000b.sock\"\n", "socket");
    }

    #[test]
    fn socket_path_must_fit_sun_path() {
        let fits = format!("/{}", "s".repeat(MAX_SOCKET_PATH - 1));
        assert_eq!(parse(&format!("socket = \"{fits}\"\n")).unwrap().socket.as_os_str().len(), 107);
        let e = refused(&format!("socket = \"{fits}s\"\n"), "socket");
        assert!(e.contains("108 bytes long") && e.contains("at most 107"), "{e}");
    }

    #[test]
    fn uncatchable_stop_signals_are_refused() {
        for signal in ["SIGKILL", "KILL", "sigstop"] {
            let e = refused(
                &format!("[groups.web]\ncommand = \"x\"\nstop_signal = \"{signal}\"\n"),
                "groups.web.stop_signal",
            );
            assert!(e.contains("cannot be caught"), "{e}");
        }
        parse("[groups.web]\ncommand = \"x\"\nstop_signal = \"SIGINT\"\n").unwrap();
    }

    #[test]
    fn messages_carry_no_raw_control_characters() {
        for text in [
            "[groups.\"\\u001b[31mred\"]\ncommand = \"x\"\n",
            "\"\\u001b]0;title\\u0007\" = 1\n",
            "[groups.web]\ncommand = \"x\"\n\"\\u009b31m\" = 1\n",
            "[groups.web]\ncommand = \"x\"\n[groups.web.resources]\n\"Memory\\u202eMax\" = 1\n",
            "[limits]\nmax_state_file_size = \"1\\u001b[2J\"\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.chars().any(|c| c.is_control() || c == '\u{202e}'), "{e:?}");
            assert!(["x1b", "u{1b}", "u{9b}", "u{202e}"].iter().any(|escaped| e.contains(escaped)), "{e:?}");
        }
        let e = refused("[groups.web]\ncommand = \"x\"\nstop_timeout = \"soon\"\n", "groups.web.stop_timeout");
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    /// Loads `text` from a file in a fresh directory, as `--check-config`
    /// does.
    fn load(text: &str) -> (tempfile::TempDir, PathBuf, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, text).unwrap();
        let result = Config::load(&path);
        (dir, path, result)
    }

    #[track_caller]
    #[test]
    fn metrics_listen_is_loopback_unless_said_otherwise() {
        let c = parse("metrics_listen = \"9464\"\n").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let c = parse("metrics_listen = \"[::1]:9464\"\n").unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:9464".parse().unwrap()));
        assert_eq!(parse("").unwrap().metrics_listen, None);
        let e = parse("metrics_listen = \"0.0.0.0:9464\"\n").unwrap_err();
        assert!(e.to_string().contains("metrics_listen_public"), "{e}");
        let c = parse("metrics_listen = \"0.0.0.0:9464\"\nmetrics_listen_public = true\n").unwrap();
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9464".parse().unwrap()));
        let e = parse("metrics_listen = \"localhost:x\"\n").unwrap_err();
        assert!(e.to_string().contains("key `metrics_listen`"), "{e}");
    }

    fn load_refused(text: &str, key: &str) -> String {
        let (_dir, path, result) = load(text);
        let e = result.unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(e.contains(&format!("key `{key}`")), "wanted key `{key}`: {e}");
        e
    }

    #[test]
    fn users_and_groups_must_exist_on_this_host() {
        let (_dir, _, result) = load("[groups.web]\ncommand = \"/bin/true\"\nuser = \"root\"\ngroup = \"root\"\n");
        result.unwrap();
        let e = load_refused(
            "[groups.web]\ncommand = \"/bin/true\"\nuser = \"corral-no-such-user-xyz\"\n",
            "groups.web.user",
        );
        assert!(e.contains("no user named \"corral-no-such-user-xyz\""), "{e}");
        let e = load_refused(
            "[groups.web]\ncommand = \"/bin/true\"\ngroup = \"corral-no-such-group-xyz\"\n",
            "groups.web.group",
        );
        assert!(e.contains("no group named \"corral-no-such-group-xyz\""), "{e}");
        let e = load_refused("command_socket_group = \"corral-no-such-group-xyz\"\n", "command_socket_group");
        assert!(e.contains("no group named"), "{e}");
        let (_dir, _, result) = load("command_socket_group = \"root\"\n");
        assert_eq!(result.unwrap().socket_gid().unwrap(), Some(Gid::from_raw(0)));
    }

    #[test]
    fn commands_must_be_executable_files() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, _, result) = load("[groups.web]\ncommand = \"/bin/true\"\n[groups.db]\ncommand = \"sleep\"\n");
        result.unwrap();
        let e = load_refused("[groups.web]\ncommand = \"/corral/no/such/command\"\n", "groups.web.command");
        assert!(e.contains("/corral/no/such/command: No such file"), "{e}");
        let e = load_refused("[groups.web]\ncommand = \"/tmp\"\n", "groups.web.command");
        assert!(e.contains("/tmp is not a regular file"), "{e}");
        let e = load_refused("[groups.web]\ncommand = \"corral-no-such-command\"\n", "groups.web.command");
        assert!(e.contains(&format!("no executable \"corral-no-such-command\" in the workers' PATH ({DEFAULT_PATH})")));

        // Relative to the config's directory; an x bit makes it runnable.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("worker");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, "[groups.web]\ncommand = \"worker\"\n[groups.rel]\ncommand = \"./worker\"\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("key `groups.rel.command`") && e.contains("is not executable"), "{e}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o744)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("key `groups.web.command`: no executable \"worker\""), "{e}");

        // A bare name is looked up in the PATH the worker will get.
        let with_path = format!(
            "[groups.web]\ncommand = \"worker\"\nenvironment = {{ PATH = \"/corral/none:{}\" }}\n",
            dir.path().display()
        );
        std::fs::write(&path, with_path).unwrap();
        Config::load(&path).unwrap();
        std::fs::write(&path, "[groups.web]\ncommand = \"worker\"\nenvironment = { PATH = \":/corral/none\" }\n")
            .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("key `groups.web.command`"), "an empty entry is corrald's directory, not the config's: {e}");
        let wd = format!(
            "[groups.web]\ncommand = \"worker\"\nworking_directory = \"{}\"\n\
             environment = {{ PATH = \":/corral/none\" }}\n",
            dir.path().display()
        );
        std::fs::write(&path, wd).unwrap();
        Config::load(&path).unwrap();
    }

    #[test]
    fn only_a_loaded_config_says_what_its_workers_exec_and_as_whom() {
        let text = "[groups.web]\ncommand = \"/bin/true\"\n[groups.db]\ncommand = \"true\"\nuser = \"root\"\n";
        assert!(parse(text).unwrap().groups.values().all(|g| g.host.is_none()));
        let (_dir, _, result) = load(text);
        let config = result.unwrap();
        let web = config.groups["web"].host.as_ref().unwrap();
        assert_eq!((web.program.as_path(), &web.identity), (Path::new("/bin/true"), &None));
        let db = config.groups["db"].host.as_ref().unwrap();
        assert!(db.program.ends_with("true"));
        assert_eq!(db.identity.as_ref().map(|i| i.uid), Some(Uid::from_raw(0)));
    }

    #[test]
    fn working_directory_must_be_a_directory() {
        let e = load_refused(
            "[groups.web]\ncommand = \"/bin/true\"\nworking_directory = \"/corral/no/such/dir\"\n",
            "groups.web.working_directory",
        );
        assert!(e.contains("No such file"), "{e}");
        let e = load_refused(
            "[groups.web]\ncommand = \"/bin/true\"\nworking_directory = \"/bin/true\"\n",
            "groups.web.working_directory",
        );
        assert!(e.contains("/bin/true is not a directory"), "{e}");
    }

    #[test]
    fn a_file_too_large_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        // Sparse: refused on its size, never read.
        std::fs::File::create(&path).unwrap().set_len(64 << 30).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())) && e.contains("larger than 1048576 bytes"), "{e}");
        let padding = format!("# {}\n", "x".repeat(MAX_CONFIG_FILE as usize));
        std::fs::write(&path, padding).unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("larger than 1048576 bytes"));
    }
}
