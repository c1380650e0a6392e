//! Descriptors that outlive a corrald: those the service manager passes in
//! (socket activation, the descriptor store) and those an upgrade passes to
//! the binary it execs, with the environment that names them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// The environment variable that passes descriptors across an upgrade's
/// exec, as `fd:name,fd:name`; `HANDOVER_PID_ENV` says for which process.
const HANDOVER_ENV: &str = "CORRAL_HANDOVER_FDS";
const HANDOVER_PID_ENV: &str = "CORRAL_HANDOVER_PID";

/// The service manager's socket activation variables: they describe what
/// it passed to this process, not to the one an upgrade execs.
const LISTEN_ENV: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// The names the listener travels under across an upgrade: not
/// `corral.*`, so the new process takes it for its command socket. One
/// this corrald bound (its file, at the configured path, is the new
/// process's to keep and remove) travels as `OWN_LISTENER`; one the
/// service manager passed, as `ACTIVATED_LISTENER`.
const OWN_LISTENER: &str = "corrald.sock";
const ACTIVATED_LISTENER: &str = "corrald.sock.activated";

/// Where a passed command socket came from, which decides whose its file is.
pub enum PassedSocket {
    /// From the service manager, now or before an upgrade: the socket
    /// unit's file.
    Activated(OwnedFd),
    /// Bound by this corrald before an upgrade exec'd the new binary.
    Own(OwnedFd),
}

/// What the service manager (`LISTEN_FDS` for this pid) or an upgrade's
/// exec (`CORRAL_HANDOVER_PID`) passed to this process.
pub struct Passed {
    /// The command socket of socket activation, or the one an upgrade kept.
    pub socket: Option<PassedSocket>,
    /// The workers' descriptors an earlier corrald left in the descriptor
    /// store or passed across exec, by store name (`corral.*`).
    pub stored: HashMap<String, OwnedFd>,
}

impl Passed {
    /// Takes ownership of the passed descriptors. Only one socket may come
    /// with them: corrald serves one, so more is a unit file mistake.
    pub fn take() -> Result<Passed, String> {
        let mut fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
            .map_err(|e| format!("bad socket activation environment: {e}"))?
            .collect();
        let handed = handed_over()?;
        let handed_over_here = !handed.is_empty();
        fds.extend(handed);
        let mut sockets = Vec::new();
        let mut stored = HashMap::new();
        for (fd, name) in fds {
            // SAFETY: the service manager (LISTEN_PID) or our own exec
            // (CORRAL_HANDOVER_PID) passed this descriptor to this process
            // alone, and nothing else in corrald owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if name.starts_with("corral.") {
                stored.insert(name, fd);
            } else if name == OWN_LISTENER && handed_over_here {
                sockets.push(PassedSocket::Own(fd));
            } else {
                sockets.push(PassedSocket::Activated(fd));
            }
        }
        if sockets.len() > 1 {
            return Err(format!(
                "socket activation passed {} sockets; corrald serves exactly one (one ListenStream=)",
                sockets.len()
            ));
        }
        Ok(Passed { socket: sockets.pop(), stored })
    }
}

/// The descriptors an upgrade's exec left where they were (see
/// `exec_upgrade`), closed on any later exec again. They count only if
/// meant for this very process: a variable inherited by some other
/// program names nothing it holds.
fn handed_over() -> Result<Vec<(i32, String)>, String> {
    if std::env::var(HANDOVER_PID_ENV).ok() != Some(std::process::id().to_string()) {
        return Ok(Vec::new());
    }
    let list = std::env::var(HANDOVER_ENV).unwrap_or_default();
    let mut fds = Vec::new();
    for item in list.split(',').filter(|i| !i.is_empty()) {
        let (fd, name) = item.split_once(':').ok_or_else(|| format!("bad {HANDOVER_ENV} entry {item:?}"))?;
        let fd: i32 = fd.parse().map_err(|_| format!("bad {HANDOVER_ENV} entry {item:?}"))?;
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| format!("{HANDOVER_ENV}: descriptor {fd} is not open: {e}"))?;
        fds.push((fd, name.to_string()));
    }
    Ok(fds)
}

/// Replaces this process with `binary --config <config>`, keeping the
/// listener and the workers' descriptors open where they are and naming
/// them in the environment for it. Returns only on failure, with the
/// errno the log line names.
pub fn exec_upgrade(
    binary: &Path,
    config: &Path,
    (listener, own): (OwnedFd, bool),
    fds: Vec<(String, OwnedFd)>,
) -> Errno {
    let name = if own { OWN_LISTENER } else { ACTIVATED_LISTENER };
    let mut passed = vec![(name.to_string(), listener)];
    passed.extend(fds);
    let mut list = Vec::new();
    for (name, fd) in &passed {
        // Without a fork in between, clearing close-on-exec here is what
        // the exec below sees.
        if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())) {
            return e;
        }
        list.push(format!("{}:{name}", fd.as_raw_fd()));
    }
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .env(HANDOVER_ENV, list.join(","))
        .env(HANDOVER_PID_ENV, std::process::id().to_string());
    for name in LISTEN_ENV {
        command.env_remove(name);
    }
    // From here the descriptors belong to the program exec starts; a
    // failed exec leaves them open until corrald exits.
    for (_, fd) in passed {
        let _ = fd.into_raw_fd();
    }
    let failed = command.exec();
    failed.raw_os_error().map_or(Errno::EINVAL, Errno::from_raw)
}
