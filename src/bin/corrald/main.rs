//! corrald: the supervisor daemon.
//!
//! `main` and `run` name its steps in the order they must happen; each
//! step lives in the module of its concern.

mod handover;
mod health;
mod metrics;
mod serve;
mod signals;
mod startup;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use corral::cli::corrald::Args;
use corral::config::Config;
use corral::journal::Output;
use corral::supervisor::{handshake_line, Ending, Supervisor};
use corral::systemd::notify::Notifier;

use handover::Passed;
use serve::Server;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.handover_protocol {
        println!("{}", handshake_line());
        return ExitCode::SUCCESS;
    }
    if let Some(path) = args.check_config {
        return or_refusal(check_config(&path));
    }
    let path = args.config.expect("clap requires --config without --check-config");
    or_refusal(daemon(&path))
}

/// `--check-config`: what an upgrade asks of a new binary, and what an
/// administrator runs before a reload.
fn check_config(path: &Path) -> Result<ExitCode, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let groups: Vec<String> = config.groups.values().map(|g| format!("{} x{}", g.name, g.count)).collect();
    println!("{}: ok; socket {}; groups: {}", path.display(), config.socket.display(), groups.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Why corrald will not run goes to stderr: its logging may not be set up
/// yet, and whoever started it reads stderr.
fn or_refusal(result: Result<ExitCode, String>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("corrald: {e}");
        ExitCode::FAILURE
    })
}

/// The process around the runtime: the steps before it, in the order they
/// must run, and the runtime's end.
fn daemon(path: &Path) -> Result<ExitCode, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    // Taken, and closed on exec, before any thread starts (the notifier and
    // the output start some): these come from the service manager or an
    // upgrade, for this process alone.
    let passed = Passed::take()?;
    let notifier = Notifier::from_env();
    let output = Output::start(config.output_buffer);
    startup::init_logging(&output);
    startup::raise_fd_limit();
    startup::say_where_worker_output_goes(&output);
    let runtime = startup::runtime()?;
    let code = runtime.block_on(async { or_refusal(run(config, passed, notifier, output).await) });
    // A user-name lookup stuck in NSS must not keep corrald from exiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

/// corrald on its runtime: everything serving needs, the audit trail before
/// the socket serves anything; then serving until the supervisor's run
/// loop ends, and leaving as the ending says.
async fn run(config: Config, passed: Passed, notifier: Notifier, output: Output) -> Result<ExitCode, String> {
    startup::state_directory(&config)?;
    let socket_group = startup::socket_group(&config)?;
    let auditor = startup::open_audit_trail(&config)?;
    let listener = startup::command_socket(&config, passed.socket, socket_group)?;
    let (systemd, systemd_events) = startup::connect_systemd(&config).await?.unzip();
    startup::descriptor_store(&notifier, systemd.as_ref()).await;
    let (config_path, max_frame, metrics_listen) = (config.path.clone(), config.max_frame_size, config.metrics_listen);
    let access = startup::access(&config, auditor.clone());
    let mut supervisor = Supervisor::new(config, systemd.clone(), notifier.clone(), output.clone());
    let access = access(supervisor.events());
    supervisor.adopt(passed.stored);
    health::record_restarts(&mut supervisor, auditor.clone());
    let handle = supervisor.handle();
    tracing::info!(socket = %listener.path().display(), pid = std::process::id(), "corrald serving");
    let server = Server::start(listener, handle.clone(), max_frame, access);
    if let Some(address) = metrics_listen {
        metrics::serve(address, handle.clone()).await;
    }
    #[cfg(feature = "fault-injection")]
    signals::wedge_on_sigusr2(handle.clone());
    signals::answer(handle.clone(), systemd, auditor, systemd_events, supervisor.events());
    let (ending, listener) = serve::until_ending(supervisor, server, &handle).await;
    if matches!(ending, Ending::Upgrade { .. } | Ending::Handover) {
        output.flush(Duration::from_secs(3)).await;
        serve::flush_descriptor_store(notifier).await;
    } else {
        output.drain(Duration::from_secs(3)).await;
    }
    Ok(match ending {
        Ending::Upgrade { binary, fds } => serve::upgrade(&binary, &config_path, listener, fds, &output).await,
        Ending::Handover => {
            tracing::info!("corrald exits; its workers run on");
            ExitCode::SUCCESS
        }
        Ending::Shutdown { clean } => {
            drop(listener);
            tracing::info!("corrald exits");
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    })
}
