//! The measuring clients of the benchmark suite (tests/bench/run): each
//! subcommand runs one measurement and prints its result as one JSON line
//! on stdout, for tests/bench/inside.py to collect.
//!
//! Built as a Cargo example so that `cargo test --all-targets` compiles it
//! (it cannot rot) while it never becomes an installed binary of the package.

mod dbus;
mod fork;
mod mutations;
mod socket;

use std::path::PathBuf;
use std::process::{Child, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Kills and reaps the processes a measurement started, on every way out,
/// so a failed run leaves no scope behind with a live process in it.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Parser)]
#[command(name = "corral-bench")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Places COUNT running processes in transient scopes with concurrent
    /// StartTransientUnit calls on one bus connection, WINDOW in flight;
    /// times from the first call until every job has finished.
    RawScopes {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Unit names are PREFIX-<n>.scope.
        #[arg(long, default_value = "bench-raw")]
        prefix: String,
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Forks and execs COUNT workers, each with a worker channel, and times
    /// until every one has sent READY on it.
    ForkReady {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        worker: PathBuf,
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Arguments for the worker (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// CLIENTS connections each sending status requests back to back for
    /// SECONDS; latency percentiles and requests per second.
    StatusLoad {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Lists the workers REPEAT times, one request at a time.
    ListWorkers {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Sends one request and times it from the write of its frame to its
    /// final answer; with --probe, a second connection sends status
    /// requests back to back meanwhile and reports their worst latency.
    Request {
        #[arg(long)]
        socket: PathBuf,
        #[command(subcommand)]
        op: socket::Op,
        #[arg(long)]
        probe: bool,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Audited no-op mutations (a start of a worker that is ready) back to
    /// back from CLIENTS connections for SECONDS.
    Mutations {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<Value, String> = runtime.block_on(async move {
        match args.command {
            Cmd::RawScopes { count, window, prefix, timeout_s } => {
                dbus::raw_scopes(count, window, &prefix, Duration::from_secs(timeout_s)).await
            }
            Cmd::ForkReady { count, worker, timeout_s, args } => {
                fork::fork_ready(count, &worker, &args, Duration::from_secs(timeout_s)).await
            }
            Cmd::StatusLoad { socket, clients, seconds } => {
                socket::status_load(&socket, clients, Duration::from_secs_f64(seconds)).await
            }
            Cmd::ListWorkers { socket, repeat } => socket::list_workers(&socket, repeat).await,
            Cmd::Request { socket, op, probe, timeout_s } => {
                socket::request(&socket, op, probe, Duration::from_secs(timeout_s)).await
            }
            Cmd::Mutations { socket, target, clients, seconds } => {
                mutations::run(&socket, &target, clients, Duration::from_secs_f64(seconds)).await
            }
        }
    });
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The q-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
