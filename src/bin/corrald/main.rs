//! corrald: the supervisor daemon.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use corral::audit::Auditor;
use corral::command::authorise::Policy;
use corral::command::peer::UserNames;
use corral::command::{self, Access, Listener};
use corral::config::Config;
use corral::config::{BusChoice, Scopes};
use corral::journal::{JournalLayer, Output, Sink, JOURNAL_SOCKET};
use corral::proto;
use corral::supervisor::{handshake_line, Ending, Replies, Reply, Supervisor};
use corral::systemd::notify::Notifier;
use corral::systemd::{self, Bus, Systemd};

#[derive(Parser)]
#[command(version, about = "The corral supervisor: runs worker groups and serves the command socket")]
struct Args {
    /// The TOML config to run.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["check_config", "handover_protocol"])]
    config: Option<PathBuf>,
    /// Check a config file, print a summary and exit (0 when valid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Print the hand-over protocol this corrald speaks and exit: what an
    /// upgrade asks of a new binary before it execs it.
    #[arg(long = "handover-protocol", conflicts_with_all = ["config", "check_config"])]
    handover_protocol: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.handover_protocol {
        println!("{}", handshake_line());
        return ExitCode::SUCCESS;
    }
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(c) => {
                let groups: Vec<String> = c.groups.values().map(|g| format!("{} x{}", g.name, g.count)).collect();
                println!("{}: ok; socket {}; groups: {}", path.display(), c.socket.display(), groups.join(", "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corrald: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let path = args.config.expect("clap requires --config without --check-config");
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corrald: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Read before any thread starts: these come from the service manager.
    let (activated, stored) = match passed_descriptors() {
        Ok(passed) => passed,
        Err(e) => {
            eprintln!("corrald: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = Notifier::from_env();
    let output = Output::start(config.output_buffer);
    init_logging(&output);
    raise_fd_limit();
    if output.sink() == Sink::Stderr {
        tracing::info!(
            "no journal at {JOURNAL_SOCKET}: worker output goes to stderr, each line prefixed by its worker"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corrald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config, activated, stored, notifier, output));
    // A user-name lookup stuck in NSS must not keep corrald from exiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// What the service manager passed (`LISTEN_FDS` for this pid): the
/// command socket of socket activation, if any (corrald serves one; more is
/// a unit file mistake), and the workers' descriptors an earlier corrald
/// left in the descriptor store (named `corral.*`).
fn passed_descriptors() -> Result<(Option<OwnedFd>, HashMap<String, OwnedFd>), String> {
    let mut fds: Vec<(i32, String)> =
        sd_notify::listen_fds_with_names().map_err(|e| format!("bad socket activation environment: {e}"))?.collect();
    // An upgrade's exec passes its descriptors where they were (see
    // exec_upgrade); they count only if meant for this very process.
    if std::env::var(HANDOVER_PID_ENV).ok() == Some(std::process::id().to_string()) {
        let list = std::env::var(HANDOVER_ENV).unwrap_or_default();
        for item in list.split(',').filter(|i| !i.is_empty()) {
            let (fd, name) = item.split_once(':').ok_or_else(|| format!("bad {HANDOVER_ENV} entry {item:?}"))?;
            let fd: i32 = fd.parse().map_err(|_| format!("bad {HANDOVER_ENV} entry {item:?}"))?;
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
                .map_err(|e| format!("{HANDOVER_ENV}: descriptor {fd} is not open: {e}"))?;
            fds.push((fd, name.to_string()));
        }
    }
    let mut sockets = Vec::new();
    let mut stored = HashMap::new();
    for (fd, name) in fds {
        // SAFETY: the service manager (LISTEN_PID) or our own exec
        // (CORRAL_HANDOVER_PID) passed this descriptor to this process
        // alone, and nothing else in corrald owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if name.starts_with("corral.") {
            stored.insert(name, fd);
        } else {
            sockets.push(fd);
        }
    }
    if sockets.len() > 1 {
        return Err(format!(
            "socket activation passed {} sockets; corrald serves exactly one (one ListenStream=)",
            sockets.len()
        ));
    }
    Ok((sockets.pop(), stored))
}

/// Raises the soft limit on open descriptors to the hard limit: each
/// worker and each client holds some, and the soft limit systemd leaves
/// (1024) would cap the fleet at a few hundred workers. The hard limit
/// stays what the unit (LimitNOFILE=) or the administrator set. Workers
/// get the limits corrald was started with.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let limits = getrlimit(Resource::RLIMIT_NOFILE);
    if let Ok((soft, hard)) = limits {
        corral::supervisor::keep_open_file_limit_for_workers(soft, hard);
    }
    match limits {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!("open file limit raised from {soft} to {hard}"),
            Err(e) => tracing::warn!("cannot raise the open file limit from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open file limit: {e}"),
    }
}

/// Whether stderr is the journal's stream for this service (systemd sets
/// `JOURNAL_STREAM` to its device and inode), so logs may go natively.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino),
        Err(_) => false,
    }
}

/// Connects to the service manager as the config asks. Without one, corrald
/// runs without scopes and says so once, unless scopes are required.
async fn connect_systemd(
    config: &Config,
) -> Result<Option<(Systemd, tokio::sync::mpsc::UnboundedReceiver<systemd::Event>)>, String> {
    if config.scopes == Scopes::Off {
        tracing::info!("scopes = \"off\": workers run without systemd scopes");
        return Ok(None);
    }
    let bus = match config.bus {
        BusChoice::System => Bus::System,
        BusChoice::User => Bus::User,
        BusChoice::Auto if nix::unistd::geteuid().is_root() => Bus::System,
        BusChoice::Auto => Bus::User,
    };
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        Systemd::connect(bus, config.limits.max_dbus_calls as usize),
    )
    .await
    .unwrap_or_else(|_| Err("no answer from the D-Bus daemon within 15s".into()));
    match connected {
        Ok((sd, events)) => {
            tracing::info!(slice = %config.slice, "placing workers in transient systemd scopes (systemd {})", sd.version());
            Ok(Some((sd, events)))
        }
        Err(e) if config.scopes == Scopes::Required => {
            Err(format!("scopes = \"required\" in {}, but {e}", config.path.display()))
        }
        Err(e) => {
            tracing::warn!(
                "no systemd service manager ({e}): running WITHOUT scopes; workers will not appear as systemd units \
                 and get no resource limits (set scopes = \"required\" to refuse to start instead)"
            );
            Ok(None)
        }
    }
}

/// corrald's own logs: natively to the journal when it runs as a service
/// whose stderr is the journal, else formatted on stderr.
fn init_logging(output: &Output) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if output.sink() == Sink::Journal && stderr_is_journal() {
        tracing_subscriber::registry().with(filter).with(JournalLayer::new(output.clone())).init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}

async fn run(
    config: Config,
    activated: Option<OwnedFd>,
    stored: HashMap<String, OwnedFd>,
    notifier: Notifier,
    output: Output,
) -> ExitCode {
    if let Err(e) = corral::files::private_dir(&config.state_directory, 0o750) {
        eprintln!("corrald: state_directory: {e}");
        return ExitCode::FAILURE;
    }
    // Looked up again for its gid: Config::load found the group, but it can
    // have gone since.
    let socket_group = match config.socket_gid() {
        Ok(gid) => gid,
        Err(e) => {
            eprintln!("corrald: {e}");
            return ExitCode::FAILURE;
        }
    };
    let auditor = if config.audit.text_target.is_some() || config.audit.json_target.is_some() || config.audit.journal {
        match Auditor::open(config.audit.clone()) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                eprintln!("corrald: {}: {e}", config.path.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let listener = match activated {
        Some(fd) => {
            if socket_group.is_some() {
                tracing::warn!("command_socket_group does not apply to a socket-activated socket: set SocketGroup= in corrald.socket");
            }
            Listener::from_activation(fd, &config.socket)
        }
        None => Listener::bind(&config.socket, socket_group),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("corrald: {e}");
            return ExitCode::FAILURE;
        }
    };
    let max_frame = config.max_frame_size;
    let (systemd, mut systemd_events) = match connect_systemd(&config).await {
        Ok(Some((sd, events))) => (Some(sd), Some(events)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("corrald: {e}");
            return ExitCode::FAILURE;
        }
    };
    let policy = Policy::new(config.access.clone(), nix::unistd::geteuid().as_raw());
    let limits = config.limits.clone();
    let manager = systemd.clone();
    let config_path = config.path.clone();
    let mut supervisor = Supervisor::new(config, systemd, notifier.clone(), output.clone());
    supervisor.adopt(stored);
    let handle = supervisor.handle();
    tracing::info!(socket = %listener.path().display(), pid = std::process::id(), "corrald serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let access = Arc::new(Access { policy, auditor: auditor.clone(), names: UserNames::default(), limits });
    let server = tokio::spawn(command::serve(listener, handle.clone(), max_frame, access, stop_rx));

    #[cfg(feature = "fault-injection")]
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Ok(mut usr2) = signal(SignalKind::user_defined2()) {
                while usr2.recv().await.is_some() {
                    handle.wedge();
                }
            }
        });
    }

    let signals = handle.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers; stop corrald with `corralctl shutdown`");
            return;
        };
        // Responses to signal-initiated requests go nowhere but the log.
        let (tx, mut rx) = Replies::channel();
        let command = |c| proto::Request { id: 0, command: Some(c) };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    // `systemctl restart`: the workers stay for the next
                    // corrald (their descriptors are in the store); a plain
                    // stop drains them.
                    if let Some(sd) = &manager {
                        if sd.restart_pending().await {
                            signals.handover();
                            continue;
                        }
                    }
                    signals.request(command(proto::request::Command::Shutdown(proto::Shutdown {})), Reply::new(0, 0, tx.clone()));
                }
                _ = int.recv() => signals.request(command(proto::request::Command::Shutdown(proto::Shutdown {})), Reply::new(0, 0, tx.clone())),
                _ = hup.recv() => {
                    if let Some(auditor) = &auditor {
                        match auditor.reopen().await {
                            Ok(()) => tracing::info!("audit log files reopened"),
                            Err(e) => tracing::error!("{e}"),
                        }
                    }
                    signals.request(command(proto::request::Command::ReloadConfig(proto::ReloadConfig {})), Reply::new(0, 0, tx.clone()));
                }
                Some(event) = async { systemd_events.as_mut()?.recv().await }, if systemd_events.is_some() => {
                    let systemd::Event::RequestStop { unit } = event;
                    match systemd::target_of_scope(&unit) {
                        Some(target) => {
                            tracing::info!(%unit, "systemd asks to stop the scope: draining its workers");
                            let stop = proto::request::Command::Stop(proto::Stop { target, hard: false });
                            signals.request(command(stop), Reply::new(0, 0, tx.clone()));
                        }
                        None => tracing::warn!(%unit, "RequestStop for a unit that is not corral's"),
                    }
                }
                Some(r) = rx.recv() => {
                    if r.response.status() != proto::Status::Processing {
                        tracing::info!("{}", r.response.message);
                    }
                }
            }
        }
    });

    let (upgrade_tx, mut upgrade_rx) = tokio::sync::mpsc::unbounded_channel();
    supervisor.on_upgrade(upgrade_tx);
    let mut run = tokio::spawn(supervisor.run());
    let mut server = Some(server);
    let mut listener = None;
    // An upgrade quiets the socket first (new clients wait in its backlog,
    // requests already sent are answered), then ends the run loop.
    let ending = loop {
        tokio::select! {
            ending = &mut run => break ending.unwrap_or(Ending::Shutdown { clean: false }),
            Some(_) = upgrade_rx.recv(), if server.is_some() => {
                let _ = stop_tx.send(true);
                listener = server.take().expect("checked").await.ok();
                handle.release();
            }
        }
    };
    let _ = stop_tx.send(true);
    if let Some(server) = server.take() {
        listener = server.await.ok();
    }
    output.drain(Duration::from_secs(3)).await;
    if matches!(ending, Ending::Upgrade { .. } | Ending::Handover) {
        // The workers' descriptors must be in the store before whoever
        // takes them over looks.
        let notifier = notifier.clone();
        let _ = tokio::task::spawn_blocking(move || notifier.flush_store(Duration::from_secs(10))).await;
    }
    match ending {
        Ending::Upgrade { binary, fds } => {
            let Some(listener) = listener.map(Listener::into_handover).and_then(Result::ok) else {
                tracing::error!("the command socket is gone; cannot upgrade");
                return ExitCode::FAILURE;
            };
            let err = exec_upgrade(&binary, &config_path, listener, fds);
            tracing::error!(
                "cannot execute {}: {err}; corrald exits and its workers wait to be adopted",
                binary.display()
            );
            output.drain(Duration::from_secs(1)).await;
            ExitCode::FAILURE
        }
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
    }
}

/// The environment variable that passes descriptors across an upgrade's
/// exec, as `fd:name,fd:name`; `HANDOVER_PID_ENV` says for which process.
const HANDOVER_ENV: &str = "CORRAL_HANDOVER_FDS";
const HANDOVER_PID_ENV: &str = "CORRAL_HANDOVER_PID";

/// Replaces this process with `binary`, keeping the listener and the
/// workers' descriptors open where they are. Returns only on failure.
fn exec_upgrade(binary: &Path, config: &Path, listener: OwnedFd, fds: Vec<(String, OwnedFd)>) -> nix::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut passed = vec![("corrald.sock".to_string(), listener)];
    passed.extend(fds);
    let mut list = Vec::new();
    for (name, fd) in &passed {
        if let Err(e) = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())) {
            return e;
        }
        list.push(format!("{}:{name}", fd.as_raw_fd()));
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| nix::Error::EINVAL);
    let build = || -> Result<(CString, Vec<CString>, Vec<CString>), nix::Error> {
        let path = cstr(binary.as_os_str().as_bytes())?;
        let args = vec![path.clone(), cstr(b"--config")?, cstr(config.as_os_str().as_bytes())?];
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| !matches!(k.to_str(), Some("LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES")))
            .filter(|(k, _)| k != HANDOVER_ENV && k != HANDOVER_PID_ENV)
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        env.push(cstr(format!("{HANDOVER_ENV}={}", list.join(",")).as_bytes())?);
        env.push(cstr(format!("{HANDOVER_PID_ENV}={}", std::process::id()).as_bytes())?);
        Ok((path, args, env))
    };
    let (path, args, env) = match build() {
        Ok(b) => b,
        Err(e) => return e,
    };
    // The descriptors must stay open until exec takes them over.
    std::mem::forget(passed);
    match nix::unistd::execve(&path, &args, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}
