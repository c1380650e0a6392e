//! The steps before corrald serves: its own logs and limits, the runtime,
//! then what serving needs (state directory, audit trail, command socket,
//! the service manager). Each fails with the line corrald prints before
//! exiting.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Gid;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::UnboundedReceiver;

use corral::audit::Auditor;
use corral::command::authorise::Policy;
use corral::command::peer::UserNames;
use corral::command::{Access, Listener};
use corral::config::{BusChoice, Config, Scopes};
use corral::events::Events;
use corral::journal::{JournalLayer, Output, Sink, JOURNAL_SOCKET};
use corral::systemd::notify::Notifier;
use corral::systemd::{self, Bus, Systemd};

use crate::handover::PassedSocket;

/// corrald's own logs: natively to the journal when it runs as a service
/// whose stderr is the journal, else formatted on stderr.
pub fn init_logging(output: &Output) {
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

/// Raises the soft limit on open descriptors to the hard limit: each
/// worker and each client holds some, and the soft limit systemd leaves
/// (1024) would cap the fleet at a few hundred workers. The hard limit
/// stays what the unit (LimitNOFILE=) or the administrator set. Workers
/// get the limits corrald was started with.
pub fn raise_fd_limit() {
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

/// Says once, at start, that worker output goes to stderr: whoever reads
/// it there should know the journal was not found, not that it is empty.
pub fn say_where_worker_output_goes(output: &Output) {
    if output.sink() == Sink::Stderr {
        tracing::info!(
            "no journal at {JOURNAL_SOCKET}: worker output goes to stderr, each line prefixed by its worker"
        );
    }
}

/// The runtime corrald serves on: two threads, whatever the machine, as
/// what blocks (journal, audit sinks, descriptor store) has threads of its
/// own.
pub fn runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The state directory, private to corrald, before anything is adopted
/// from it or saved in it.
pub fn state_directory(config: &Config) -> Result<(), String> {
    corral::files::private_dir(&config.state_directory, 0o750).map_err(|e| format!("state_directory: {e}"))
}

/// The group the command socket is given. Looked up again for its gid:
/// Config::load found the group, but it can have gone since.
pub fn socket_group(config: &Config) -> Result<Option<Gid>, String> {
    config.socket_gid().map_err(|e| e.to_string())
}

/// The audit sinks the config asks for, opened before anything is served:
/// no privileged command may run without its record.
pub fn open_audit_trail(config: &Config) -> Result<Option<Arc<Auditor>>, String> {
    let audit = &config.audit;
    if audit.text_target.is_none() && audit.json_target.is_none() && !audit.journal {
        return Ok(None);
    }
    Auditor::open(audit.clone()).map(|a| Some(Arc::new(a))).map_err(|e| format!("{}: {e}", config.path.display()))
}

/// The command socket: the one socket activation passed, served as it is
/// (its file and group are the socket unit's), or one corrald binds itself.
pub fn command_socket(config: &Config, passed: Option<PassedSocket>, group: Option<Gid>) -> Result<Listener, String> {
    let listener = match passed {
        Some(PassedSocket::Activated(fd)) => {
            if group.is_some() {
                tracing::warn!("command_socket_group does not apply to a socket-activated socket: set SocketGroup= in corrald.socket");
            }
            Listener::from_activation(fd, &config.socket)
        }
        Some(PassedSocket::Own(fd)) => Listener::from_predecessor(fd, &config.socket),
        None => Listener::bind(&config.socket, group),
    };
    listener.map_err(|e| e.to_string())
}

/// Connects to the service manager as the config asks. Without one, corrald
/// runs without scopes and says so once, unless scopes are required.
pub async fn connect_systemd(config: &Config) -> Result<Option<(Systemd, UnboundedReceiver<systemd::Event>)>, String> {
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
    let connected =
        tokio::time::timeout(Duration::from_secs(15), Systemd::connect(bus, config.limits.max_dbus_calls as usize))
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

/// Whether the service manager keeps the workers' descriptors for the next
/// corrald: `$FDSTORE` says so (systemd 254 on), else the unit's
/// `FileDescriptorStoreMax=` is asked. Said once when it does not; when
/// nobody can tell, the store is tried.
pub async fn descriptor_store(notifier: &Notifier, systemd: Option<&Systemd>) {
    if !notifier.under_service_manager() {
        return;
    }
    let size = match (notifier.store_size(), systemd) {
        (Some(size), _) => Some(size),
        (None, Some(sd)) => sd.descriptor_store_max().await,
        (None, None) => None,
    };
    match size {
        Some(0) => {
            notifier.use_store(0);
            tracing::warn!(
                "the service has no descriptor store (FileDescriptorStoreMax=0): a corrald restarted after a crash \
                 or by `systemctl restart` adopts the running workers without their channels and output pipes \
                 (soft stops fall back to the stop signal, output is lost); the shipped unit sets \
                 FileDescriptorStoreMax="
            );
        }
        Some(size) => {
            notifier.use_store(size);
            tracing::debug!("the service's descriptor store holds {size} descriptors");
        }
        None => tracing::debug!("cannot tell whether the service has a descriptor store; using it"),
    }
}

/// Who may do what on the command socket, and what is recorded: corrald's
/// own user is an admin like root. Completed with the supervisor's events
/// broadcaster, once there is a supervisor.
pub fn access(config: &Config, auditor: Option<Arc<Auditor>>) -> impl FnOnce(Events) -> Arc<Access> {
    let policy = Policy::new(config.access.clone(), nix::unistd::geteuid().as_raw());
    let limits = config.limits.clone();
    move |events| Arc::new(Access { policy, auditor, names: UserNames::default(), limits, events })
}
