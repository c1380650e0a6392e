//! corralctl's command line, its socket and its exit statuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use clap_complete::engine::ArgValueCandidates;

use super::complete;
use crate::config;

/// A final FAILURE, or a broken audit chain.
pub const EXIT_FAILURE: u8 = 1;
/// The command line was wrong.
pub const EXIT_USAGE: u8 = 2;
/// No final answer came, or it could not be written out.
pub const EXIT_NO_ANSWER: u8 = 3;

/// Every exit status corralctl has, with what it means, for its manual.
pub const EXIT_STATUSES: [(u8, &str); 4] = [
    (0, "corrald answered OK (for audit verify: the chain is intact)."),
    (EXIT_FAILURE, "corrald answered FAILURE; for audit verify, the chain is broken or the file unreadable."),
    (EXIT_USAGE, "The command line was wrong (an unknown option, a missing argument, a path that cannot be sent)."),
    (
        EXIT_NO_ANSWER,
        "No final answer came: corrald unreachable or not answering within --timeout, the connection lost, \
         a protocol error; or the answer could not be written to standard output.",
    ),
];

/// The environment variable naming the socket when --socket is not given.
/// Read by hand because clap's `env` feature is not enabled.
pub const SOCKET_ENV: &str = "CORRAL_SOCKET";

/// The environment variable that turns a corralctl run into a completion
/// request from the shell. corralctl's own name keeps it from firing on a
/// variable some other tool left set.
pub const COMPLETE_ENV: &str = "CORRALCTL_COMPLETE";

#[derive(Parser)]
#[command(name = "corralctl", version, about = "Control corrald, the corral process supervisor")]
pub struct Cli {
    // Listed after a subcommand's own options in its help.
    #[arg(long, global = true, value_name = "PATH", help = socket_help(), display_order = 100)]
    pub socket: Option<PathBuf>,
    /// Print every response, PROCESSING ones included, as one JSON object per line
    #[arg(long, global = true, display_order = 101)]
    pub json: bool,
    /// Give up when corrald has not begun to answer within this time (e.g. 10s)
    /// [default: 5s for status and workers, 30s for the rest]
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration, display_order = 102)]
    pub timeout: Option<Duration>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Show corrald and its groups, with what their workers use together
    Status,
    /// Print the fleet's metrics in the OpenMetrics text format
    Metrics,
    /// List workers: state, restarts, and what each uses (CPU, memory, tasks)
    Workers {
        /// Only the workers of this group
        #[arg(long, value_name = "GROUP", add = ArgValueCandidates::new(complete::groups))]
        group: Option<String>,
    },
    /// Stop workers (they stay stopped until started)
    Stop {
        /// A group, a worker id like web-3, or "all" (the default)
        #[arg(add = ArgValueCandidates::new(complete::targets))]
        target: Option<String>,
        /// SIGKILL at once, overtaking any soft stop in progress
        #[arg(long)]
        hard: bool,
    },
    /// Start stopped workers
    Start {
        /// A group, a worker id like web-3, or "all"
        #[arg(add = ArgValueCandidates::new(complete::targets))]
        target: String,
    },
    /// Replace workers with fresh processes
    Restart {
        /// A group, a worker id like web-3, or "all"
        #[arg(add = ArgValueCandidates::new(complete::targets))]
        target: String,
        /// Replace a few at a time, each replacement ready before the next old worker stops
        #[arg(long)]
        rolling: bool,
        /// With --rolling: how many workers may be down at once (default: the group's setting)
        #[arg(long, value_name = "N", requires = "rolling")]
        max_unavailable: Option<u32>,
    },
    /// Set the number of workers of a group
    Scale {
        /// The group
        #[arg(add = ArgValueCandidates::new(complete::groups))]
        group: String,
        /// Its number of workers from now on
        count: u32,
    },
    /// Change resource limits of live scopes (as systemctl set-property --runtime)
    Limit {
        /// A group, or a worker id like web-3
        #[arg(add = ArgValueCandidates::new(complete::groups_and_workers))]
        target: String,
        /// Properties such as MemoryMax=64M CPUQuota=50% TasksMax=32
        #[arg(required = true, value_name = "KEY=VALUE")]
        properties: Vec<String>,
    },
    /// Re-read corrald's configuration file
    Reload,
    /// Save corrald's state (scales, stopped workers), written by corrald
    SaveState {
        /// A name, kept in corrald's state directory; or (admins only) a path
        #[arg(value_name = "NAME|PATH")]
        path: PathBuf,
    },
    /// Load corrald's state, read by corrald
    LoadState {
        /// A name saved earlier; or (admins only) a path
        #[arg(value_name = "NAME|PATH")]
        path: PathBuf,
    },
    /// Stop every worker softly, then stop corrald
    Shutdown,
    /// The audit trail
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Follow corrald's events live, one line each (JSON lines with --json), until Ctrl-C or corrald stops
    Events {
        /// Only this group's or worker's events (and corrald-wide ones)
        #[arg(add = ArgValueCandidates::new(complete::groups_and_workers))]
        target: Option<String>,
        /// First print up to N of the latest events corrald kept (limits.event_history), such as the workers adopted on an upgrade
        #[arg(long, value_name = "N", default_value_t = 0)]
        replay: u32,
    },
    /// Watch groups and workers live, full screen, and stop, restart or scale them with keys
    Top {
        /// Print the table once and exit (without a terminal it is printed every interval)
        #[arg(long)]
        once: bool,
        /// How often the listing is read, besides after each event
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1s")]
        interval: Duration,
    },
    /// Replace the running corrald in place; workers and the socket carry over
    Upgrade {
        /// The new corrald binary (default: the one running)
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Make corrald reopen its audit log files (after logrotate moved them)
    Reopen,
    /// Check a JSON audit log's hash chain, locally (no corrald needed)
    Verify {
        /// A JSON audit log (audit_logs_json_target)
        file: PathBuf,
    },
}

/// The socket's help as the user running corralctl sees it: the default
/// is theirs.
fn socket_help() -> String {
    format!("Path of corrald's command socket [env: {SOCKET_ENV}] [default: {}]", default_socket().display())
}

/// The same help for a manual, which every user reads: each default.
pub fn socket_help_for_everyone() -> String {
    format!(
        "Path of corrald's command socket [env: {SOCKET_ENV}] [default: {}; for other users, {} when \
         their own is absent]",
        config::DEFAULT_SOCKET_TEXT,
        config::SYSTEM_SOCKET
    )
}

/// The socket corralctl talks to: --socket, else $CORRAL_SOCKET when set
/// and not empty, else the default. Completion asks the same one.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(default_socket)
}

/// A user's own corrald listens on their default socket, but an operator
/// whose group the system corrald's socket admits (the package's
/// `corral-ops`) means that one when they have no corrald of their own: so
/// the user's socket when it exists, else the system's when it exists.
fn default_socket() -> PathBuf {
    prefer_existing(config::default_socket_path(), Path::new(config::SYSTEM_SOCKET))
}

fn prefer_existing(own: PathBuf, system: &Path) -> PathBuf {
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    if !exists(&own) && exists(system) {
        system.to_path_buf()
    } else {
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_own_socket_wins_and_the_system_one_is_taken_only_when_theirs_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own.sock");
        let system = dir.path().join("system.sock");
        assert_eq!(prefer_existing(own.clone(), &system), own, "neither exists: the user's, so errors name it");
        std::fs::write(&system, "").unwrap();
        assert_eq!(prefer_existing(own.clone(), &system), system);
        std::fs::write(&own, "").unwrap();
        assert_eq!(prefer_existing(own.clone(), &system), own);
    }
}
