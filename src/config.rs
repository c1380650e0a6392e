//! The TOML configuration of corrald.
//!
//! Parsing is strict: an unknown key or a bad value is an error that names the
//! file and the key's path (`groups.web.stop_timeout`), because a supervisor
//! that silently ignores a misspelt `stop_timout` would kill workers the
//! operator meant to drain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Deserializer};

use crate::audit::AuditConfig;
use crate::journal::StreamPolicy;

/// Where corrald listens and corralctl connects when no socket is named:
/// `/run/corral/corrald.sock` for root, else under `$XDG_RUNTIME_DIR/corral/`,
/// else under a per-user directory in `/tmp`.
pub fn default_socket_path() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/corral/corrald.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("corral/corrald.sock"),
        None => PathBuf::from(format!("/tmp/corral-{uid}/corrald.sock")),
    }
}

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

/// A config error, always naming the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
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
    pub audit: AuditConfig,
    /// Who may send which commands, beyond the socket's file mode.
    pub access: AccessLists,
    /// A group granted the socket (mode 0660 instead of 0600).
    pub socket_group: Option<String>,
    pub groups: BTreeMap<String, GroupConfig>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub working_directory: Option<PathBuf>,
    pub count: u32,
    pub restart: RestartPolicy,
    pub restart_backoff_initial: Duration,
    pub restart_backoff_max: Duration,
    pub start_limit_burst: u32,
    pub start_limit_interval: Duration,
    pub stop_mode: StopMode,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub stop_timeout_action: StopTimeoutAction,
    pub ready_after: Duration,
    pub ready_timeout: Duration,
    pub after: Vec<String>,
    pub max_unavailable: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub scope: ScopeMode,
    /// Resource properties for the group's scopes, in config order of keys.
    pub resources: Vec<crate::systemd::Property>,
    pub stdout: StreamPolicy,
    pub stderr: StreamPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    state_directory: Option<PathBuf>,
    max_frame_size: Option<usize>,
    #[serde(default = "default_scopes")]
    scopes: Scopes,
    #[serde(default = "default_bus")]
    bus: BusChoice,
    slice: Option<String>,
    output_buffer: Option<Scalar>,
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
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    working_directory: Option<PathBuf>,
    #[serde(default = "one")]
    count: u32,
    #[serde(default = "default_restart")]
    restart: RestartPolicy,
    #[serde(default = "ms::<100>", deserialize_with = "duration")]
    restart_backoff_initial: Duration,
    #[serde(default = "ms::<30_000>", deserialize_with = "duration")]
    restart_backoff_max: Duration,
    #[serde(default = "five")]
    start_limit_burst: u32,
    #[serde(default = "ms::<10_000>", deserialize_with = "duration")]
    start_limit_interval: Duration,
    #[serde(default = "default_stop_mode")]
    stop_mode: StopMode,
    #[serde(default = "sigterm", deserialize_with = "signal")]
    stop_signal: Signal,
    #[serde(default = "ms::<10_000>", deserialize_with = "duration")]
    stop_timeout: Duration,
    #[serde(default = "default_timeout_action")]
    stop_timeout_action: StopTimeoutAction,
    #[serde(default = "ms::<1_000>", deserialize_with = "duration")]
    ready_after: Duration,
    #[serde(default = "ms::<60_000>", deserialize_with = "duration")]
    ready_timeout: Duration,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default = "one")]
    max_unavailable: u32,
    user: Option<String>,
    group: Option<String>,
    #[serde(default = "default_scope_mode")]
    scope: ScopeMode,
    #[serde(default)]
    resources: BTreeMap<String, Scalar>,
    #[serde(default = "info", deserialize_with = "priority")]
    stdout_priority: u8,
    #[serde(default = "info", deserialize_with = "priority")]
    stderr_priority: u8,
    #[serde(default = "yes")]
    level_prefix: bool,
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
    crate::journal::parse_priority(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid priority {text:?} (emerg, alert, crit, err, warning, notice, info, debug, or 0 to 7)"
        ))
    })
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

/// Group names become worker ids (`<group>-<n>`) and, later, unit names, so
/// they are kept to characters every one of those accepts, and must not end
/// in `-<digits>`, which would make `web-1` both a group and a worker id.
fn check_group_name(name: &str) -> Result<(), String> {
    let valid_chars = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with('-');
    if !valid_chars {
        return Err(format!(
            "group name {name:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-', not starting with '-'"
        ));
    }
    if let Some((_, tail)) = name.rsplit_once('-') {
        if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("group name {name:?} must not end in -<number>: that is the form of a worker id"));
        }
    }
    Ok(())
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors
    /// relative paths.
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

        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let absolute = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let mut groups = BTreeMap::new();
        for (name, g) in raw.groups {
            let key = |k: &str| format!("groups.{name}.{k}");
            check_group_name(&name).map_err(|m| err(format!("key `groups.{name}`: {m}")))?;
            if g.command.is_empty() {
                return Err(err(format!("key `{}`: must not be empty", key("command"))));
            }
            if g.restart_backoff_initial.is_zero() {
                return Err(err(format!("key `{}`: must be greater than zero", key("restart_backoff_initial"))));
            }
            if g.restart_backoff_max < g.restart_backoff_initial {
                return Err(err(format!(
                    "key `{}`: must not be less than restart_backoff_initial",
                    key("restart_backoff_max")
                )));
            }
            if g.start_limit_burst == 0 {
                return Err(err(format!("key `{}`: must be at least 1", key("start_limit_burst"))));
            }
            if g.max_unavailable == 0 {
                return Err(err(format!("key `{}`: must be at least 1", key("max_unavailable"))));
            }
            for var in g.environment.keys() {
                if var.is_empty() || var.contains('=') || var.contains('\0') {
                    return Err(err(format!("key `{}`: invalid variable name {var:?}", key("environment"))));
                }
            }
            let mut resources = Vec::new();
            for (k, v) in &g.resources {
                let text = match v {
                    Scalar::Number(n) => n.to_string(),
                    Scalar::Text(t) => t.clone(),
                };
                let prop = crate::systemd::properties::parse(k, &text)
                    .map_err(|m| err(format!("key `{}`: {m}", key(&format!("resources.{k}")))))?;
                resources.push(prop);
            }
            // A command with a slash is a path (relative ones are taken from
            // the config file's directory); a bare name is looked up in PATH.
            let command = if g.command.contains('/') {
                absolute(PathBuf::from(&g.command)).to_string_lossy().into_owned()
            } else {
                g.command
            };
            groups.insert(
                name.clone(),
                GroupConfig {
                    name: name.clone(),
                    command,
                    args: g.args,
                    environment: g.environment,
                    working_directory: g.working_directory.map(absolute),
                    count: g.count,
                    restart: g.restart,
                    restart_backoff_initial: g.restart_backoff_initial,
                    restart_backoff_max: g.restart_backoff_max,
                    start_limit_burst: g.start_limit_burst,
                    start_limit_interval: g.start_limit_interval,
                    stop_mode: g.stop_mode,
                    stop_signal: g.stop_signal,
                    stop_timeout: g.stop_timeout,
                    stop_timeout_action: g.stop_timeout_action,
                    ready_after: g.ready_after,
                    ready_timeout: g.ready_timeout,
                    after: g.after,
                    max_unavailable: g.max_unavailable,
                    user: g.user,
                    group: g.group,
                    scope: g.scope,
                    resources,
                    stdout: StreamPolicy { priority: g.stdout_priority, level_prefix: g.level_prefix },
                    stderr: StreamPolicy { priority: g.stderr_priority, level_prefix: g.level_prefix },
                },
            );
        }
        for g in groups.values() {
            for dep in &g.after {
                if !groups.contains_key(dep) {
                    return Err(err(format!("key `groups.{}.after`: no group named {dep:?}", g.name)));
                }
            }
        }
        if let Some(cycle) = find_cycle(&groups) {
            return Err(err(format!("key `groups.{cycle}.after`: groups start after each other in a cycle")));
        }

        let max_frame_size = raw.max_frame_size.unwrap_or(crate::frame::MAX_COMMAND_FRAME);
        if !(64..=64 * 1024 * 1024).contains(&max_frame_size) {
            return Err(err("key `max_frame_size`: must be between 64 and 67108864 bytes".into()));
        }
        let slice = raw.slice.unwrap_or_else(|| "corral.slice".into());
        let slice_ok = slice.len() > 6
            && slice.ends_with(".slice")
            && slice.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '\\'));
        if !slice_ok {
            return Err(err(format!("key `slice`: {slice:?} is not a slice unit name (e.g. \"corral.slice\")")));
        }
        let output_buffer = match raw.output_buffer {
            None => 16 * 1024 * 1024,
            Some(Scalar::Number(n)) => n,
            Some(Scalar::Text(t)) => {
                crate::systemd::properties::bytes(&t).map_err(|m| err(format!("key `output_buffer`: {m}")))?
            }
        };
        if output_buffer < 64 * 1024 {
            return Err(err("key `output_buffer`: must be at least 64K".into()));
        }
        if let Some(name) = &raw.command_socket_group {
            if name.is_empty() {
                return Err(err("key `command_socket_group`: must not be empty".into()));
            }
        }
        let audit = AuditConfig {
            text_target: raw.audit_logs_target.map(absolute),
            json_target: raw.audit_logs_json_target.map(absolute),
            journal: raw.audit_journal,
            sync: raw.audit_sync,
            continue_on_failure: raw.audit_failure == AuditFailure::Continue,
            max_argument: crate::audit::DEFAULT_MAX_ARGUMENT,
        };
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
            output_buffer: usize::try_from(output_buffer).unwrap_or(usize::MAX),
            scopes: raw.scopes,
            bus: raw.bus,
            slice,
            socket: raw.socket.map(absolute).unwrap_or_else(default_socket_path),
            state_directory: raw.state_directory.map(absolute).unwrap_or_else(default_state_directory),
            max_frame_size,
            groups,
        })
    }

    /// Group names in an order where every group comes after the groups it
    /// starts after.
    pub fn start_order(&self) -> Vec<String> {
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        while order.len() < self.groups.len() {
            for g in self.groups.values() {
                if !done.contains(&g.name) && g.after.iter().all(|d| done.contains(d)) {
                    done.insert(g.name.clone());
                    order.push(g.name.clone());
                }
            }
        }
        order
    }
}

/// Returns a group on a cycle of `after` edges, if there is one.
fn find_cycle(groups: &BTreeMap<String, GroupConfig>) -> Option<String> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = done.len();
        for g in groups.values() {
            if !done.contains(g.name.as_str()) && g.after.iter().all(|d| done.contains(d.as_str())) {
                done.insert(&g.name);
            }
        }
        if done.len() == groups.len() {
            return None;
        }
        if done.len() == before {
            return groups.keys().find(|n| !done.contains(n.as_str())).cloned();
        }
    }
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
    fn bad_value_names_key_path() {
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nstop_timeout = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.stop_timeout`"), "{e}");
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nrestart = \"sometimes\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.restart`"), "{e}");
        let e = parse("[groups.web]\ncommand = \"/bin/true\"\nstop_signal = \"SIGNOPE\"\n").unwrap_err();
        assert!(e.to_string().contains("key `groups.web.stop_signal`"), "{e}");
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
        let order = c.start_order();
        assert_eq!(order.last().unwrap(), "api");
    }
}
