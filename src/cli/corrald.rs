//! corrald's command line.

use std::path::PathBuf;

use clap::Parser;

/// Named after the package, as before the definition moved here: `corrald
/// --version` says "corral 0.1.0"; the man page renames it.
#[derive(Parser)]
#[command(version, about = "The corral supervisor: runs worker groups and serves the command socket")]
pub struct Args {
    /// The TOML config to run.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["check_config", "handover_protocol"])]
    pub config: Option<PathBuf>,
    /// Check a config file, print a summary and exit (0 when valid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// Print the hand-over protocol this corrald speaks and exit: what an
    /// upgrade asks of a new binary before it execs it.
    #[arg(long = "handover-protocol", conflicts_with_all = ["config", "check_config"])]
    pub handover_protocol: bool,
}
