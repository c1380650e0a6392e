//! The command socket: binding it safely, framing, the caller's identity,
//! authorisation and audit, then handing each request to the supervisor.
//!
//! Every connection is its own task with its own writer, so one client that
//! sends garbage, stops reading, or waits on a slow user-name lookup never
//! delays another. A request passes, in this order: the allow-list (refused
//! and audited as `denied`), the audit record (a privileged request runs only
//! once its record is written), the supervisor. Its final answer passes the
//! audit again on the way out (`ok` or `failed`).

pub mod authorise;
pub mod peer;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use nix::fcntl::{Flock, FlockArg};
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::audit::{Actor, Auditor, Outcome, Record};
use crate::frame;
use crate::proto::{self, request::Command, response::Content, Status};
use crate::supervisor::{Handle, Reply};
use authorise::{Described, Policy};
use peer::{Peer, UserNames};

/// What every connection checks before a request reaches the supervisor.
pub struct Access {
    pub policy: Policy,
    pub auditor: Option<Arc<Auditor>>,
    pub names: UserNames,
}

/// Why the socket could not be bound. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another corrald is serving on {0} (its lock {1} is held); refusing to take over its socket")]
    Locked(PathBuf, PathBuf),
    #[error("another process is serving on {0}; refusing to replace a live socket")]
    Live(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("cannot serve the socket passed by the service manager: {0}")]
    Activation(String),
    #[error("cannot bind {path}: {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: io::Error },
}

/// A bound command socket. The lock file beside it is held for the life of
/// the listener, so a second corrald on the same path fails at once instead
/// of unlinking a socket that is in use.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    /// Identifies the socket file we created, so we only ever unlink our own;
    /// none for a socket the service manager handed us, which is its to keep.
    inode: Option<u64>,
    _lock: Option<Flock<File>>,
}

impl Listener {
    /// Binds `path` with mode 0600 from the first moment it exists: the
    /// socket is created inside a private 0700 directory, restricted, then
    /// renamed into place. The parent directory is created 0750 if missing.
    /// With `group`, that group is granted the socket (0660) and, if we
    /// create it, the directory.
    pub fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> Result<Listener, BindError> {
        let io_err = |what: &'static str| move |source| BindError::Io { path: path.to_path_buf(), what, source };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)
                .map_err(io_err("create parent directory"))?;
            if group.is_some() {
                nix::unistd::chown(parent, None, group)
                    .map_err(|e| io_err("give the parent directory to command_socket_group")(e.into()))?;
            }
        }
        let lock_path = lock_path(path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open lock file"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|_| BindError::Locked(path.to_path_buf(), lock_path.clone()))?;

        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(BindError::Live(path.to_path_buf()));
                }
                tracing::info!(path = %path.display(), "replacing a stale socket nobody listens on");
            }
            Ok(_) => return Err(BindError::NotSocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect existing path")(e)),
        }

        let private = parent.join(format!(".corrald-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(io_err("create private directory"))?;
        let staged = private.join("sock");
        let result = (|| {
            let std_listener = std::os::unix::net::UnixListener::bind(&staged).map_err(io_err("bind"))?;
            let mode = match group {
                Some(gid) => {
                    nix::unistd::chown(&staged, None, Some(gid))
                        .map_err(|e| io_err("give the socket to command_socket_group")(e.into()))?;
                    0o660
                }
                None => 0o600,
            };
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).map_err(io_err("chmod"))?;
            std::fs::rename(&staged, path).map_err(io_err("move into place"))?;
            Ok(std_listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let std_listener = result?;
        let inode = std::fs::symlink_metadata(path).map_err(io_err("inspect bound socket"))?.ino();
        std_listener.set_nonblocking(true).map_err(io_err("set non-blocking"))?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err("register"))?;
        Ok(Listener { listener, path: path.to_path_buf(), inode: Some(inode), _lock: Some(lock) })
    }

    /// Serves the socket the service manager passed (socket activation):
    /// it must be a listening unix stream socket. Nothing is created, locked
    /// or unlinked; the socket unit owns the file.
    pub fn from_activation(fd: OwnedFd, configured: &Path) -> Result<Listener, BindError> {
        use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
        let bad = |what: String| BindError::Activation(what);
        let kind = getsockopt(&fd, sockopt::SockType).map_err(|e| bad(format!("not a socket: {e}")))?;
        let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| bad(format!("not a socket: {e}")))?;
        let addr: UnixAddr = getsockname(fd.as_raw_fd()).map_err(|e| bad(format!("not a unix socket: {e}")))?;
        if kind != SockType::Stream || !listening {
            return Err(bad("it is not a listening stream socket (the socket unit needs ListenStream=)".into()));
        }
        let path = addr.path().map(Path::to_path_buf).ok_or_else(|| bad("it has no file system path".into()))?;
        if path != configured {
            tracing::warn!(
                passed = %path.display(),
                configured = %configured.display(),
                "serving the socket systemd passed, not the configured path; corralctl needs --socket"
            );
        }
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        let io_err = |what: &'static str, source| BindError::Io { path: path.clone(), what, source };
        std_listener.set_nonblocking(true).map_err(|e| io_err("set non-blocking", e))?;
        let listener = UnixListener::from_std(std_listener).map_err(|e| io_err("register", e))?;
        Ok(Listener { listener, path, inode: None, _lock: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket itself, to pass to a new corrald across exec;
    /// the file is not unlinked.
    pub fn into_handover(mut self) -> io::Result<OwnedFd> {
        self.inode = None;
        self.listener.as_fd().try_clone_to_owned()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(inode) = self.inode else { return };
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn reopen_audit(auditor: &Option<Arc<Auditor>>, reply: Reply) {
    let Some(auditor) = auditor.clone() else {
        reply.ok("no audit log files are configured".into(), None);
        return;
    };
    match tokio::task::spawn_blocking(move || auditor.reopen()).await {
        Ok(Ok(())) => reply.ok("audit log files reopened".into(), None),
        Ok(Err(e)) => reply.failure(e, None),
        Err(e) => reply.failure(format!("reopening the audit logs failed: {e}"), None),
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Serves the socket until `stop` turns true, then gives every connection a
/// moment to finish what it was sent and write out its answers. New
/// connections meanwhile wait in the socket's backlog. Returns the
/// listener, still open, for an upgrade to pass on.
pub async fn serve(
    listener: Listener,
    handle: Handle,
    max_frame: usize,
    access: Arc<Access>,
    mut stop: watch::Receiver<bool>,
) -> Listener {
    let socket = listener.path().display().to_string();
    let mut connections = JoinSet::new();
    let mut next_session = 1u64;
    loop {
        tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let session = next_session;
                    next_session += 1;
                    let peer = match peer::identify(&stream) {
                        Ok(peer) => peer,
                        Err(e) => {
                            tracing::warn!(session, "cannot read the peer's credentials ({e}); closing the connection");
                            continue;
                        }
                    };
                    let ctx = Session { id: session, peer, socket: socket.clone(), access: access.clone(), user: None };
                    connections.spawn(connection(stream, ctx, handle.clone(), max_frame, stop.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: log, and keep serving the clients we have.
                    tracing::warn!("accept on the command socket failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(2), drain).await.is_err() {
        tracing::warn!("some clients did not take their last responses in time");
    }
    listener
}

/// One connection's caller and what it may do.
struct Session {
    id: u64,
    peer: Peer,
    socket: String,
    access: Arc<Access>,
    /// The caller's user name, once looked up: Some(None) when it has none
    /// or the lookup did not answer.
    user: Option<Option<String>>,
}

/// Audited requests still running, by request id, waiting for their final
/// answer to be recorded.
type Pending = Arc<Mutex<HashMap<u64, VecDeque<Record>>>>;

impl Session {
    async fn actor(&mut self) -> Actor {
        if self.user.is_none() {
            self.user = Some(self.access.names.name(self.peer.uid).await);
        }
        Actor {
            uid: self.peer.uid,
            gid: self.peer.gid,
            pid: self.peer.pid,
            user: self.user.clone().flatten(),
            comm: self.peer.comm.clone(),
        }
    }

    async fn record(&mut self, request_id: u64, d: &Described, result: Outcome, reason: String) -> Record {
        Record {
            session: self.id,
            request_id,
            group: d.group.clone(),
            worker: d.worker.clone(),
            command: d.command.to_string(),
            arguments: d.arguments.clone(),
            actor: self.actor().await,
            socket: self.socket.clone(),
            result,
            reason,
        }
    }

    /// Lets a request through, or says why not. A privileged one is
    /// audited before it is let through; with `pending`, its final answer
    /// will be audited too.
    async fn admit(&mut self, id: u64, command: &Command, pending: &Pending) -> Result<(), String> {
        let described = authorise::describe(command);
        if let Err(why) = self.access.policy.check(&self.peer) {
            tracing::warn!(session = self.id, uid = self.peer.uid, "request refused: {why}");
            if let Some(auditor) = self.access.auditor.clone() {
                let record = self.record(id, &described, Outcome::Denied, why.clone()).await;
                if let Err(e) = write_record(auditor, record).await {
                    tracing::error!("the refusal could not be audited: {e}");
                }
            }
            return Err(format!("denied: {why}"));
        }
        if !described.privileged {
            return Ok(());
        }
        let Some(auditor) = self.access.auditor.clone() else { return Ok(()) };
        let record = self.record(id, &described, Outcome::Accepted, String::new()).await;
        write_record(auditor, record.clone())
            .await
            .map_err(|e| format!("refused, nothing was done: the audit record could not be written: {e}"))?;
        pending.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().push_back(record);
        Ok(())
    }
}

/// Writes a record off the async threads: file I/O may block.
async fn write_record(auditor: Arc<Auditor>, record: Record) -> Result<(), String> {
    tokio::task::spawn_blocking(move || auditor.write(&record))
        .await
        .unwrap_or_else(|e| Err(format!("the audit writer failed: {e}")))
}

/// Records the outcome of an audited request as its final answer goes out.
async fn audit_final(auditor: &Option<Arc<Auditor>>, pending: &Pending, response: &proto::Response) {
    if response.status() == Status::Processing {
        return;
    }
    let started = pending.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&response.id).and_then(VecDeque::pop_front);
    let (Some(auditor), Some(mut record)) = (auditor.clone(), started) else { return };
    record.result = if response.status() == Status::Ok { Outcome::Ok } else { Outcome::Failed };
    record.reason = response.message.clone();
    if let Err(e) = write_record(auditor, record).await {
        tracing::error!("the outcome of request {} could not be audited: {e}", response.id);
    }
}

async fn connection(
    stream: UnixStream,
    mut session: Session,
    handle: Handle,
    max_frame: usize,
    mut stop: watch::Receiver<bool>,
) {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, frame::codec(max_frame));
    let mut writer = FramedWrite::new(write, frame::codec(max_frame));
    let (tx, mut rx) = mpsc::unbounded_channel::<proto::Response>();
    let pending: Pending = Arc::default();

    let auditor = session.access.auditor.clone();
    let writer_pending = pending.clone();
    // A client that hangs up does not end the work it asked for, nor its
    // audit: outcomes are still recorded after the connection is gone.
    let writer_task = tokio::spawn(async move {
        let mut connected = true;
        while let Some(mut response) = rx.recv().await {
            audit_final(&auditor, &writer_pending, &response).await;
            if let (Some(Content::SupervisorStatus(status)), Some(auditor)) = (&mut response.content, &auditor) {
                status.audit_journal_missed = auditor.journal_missed();
            }
            if connected && writer.send(frame::encode(&response)).await.is_err() {
                connected = false;
            }
        }
    });
    let session_id = session.id;

    let failure =
        |id: u64, message: String| proto::Response { id, status: Status::Failure as i32, message, content: None };
    loop {
        // Once stopping, a request the client already sent is still served;
        // a connection quiet for a moment is closed.
        let frame = if *stop.borrow() {
            match tokio::time::timeout(std::time::Duration::from_millis(200), reader.next()).await {
                Ok(frame) => frame,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                frame = reader.next() => frame,
                _ = stop.changed() => continue,
            }
        };
        match frame {
            None => break,
            Some(Ok(bytes)) => match proto::Request::decode(bytes) {
                Ok(request) if request.command.is_none() => {
                    let _ = tx.send(failure(request.id, "unknown or missing command".into()));
                }
                Ok(request) => {
                    tracing::trace!(session = session_id, id = request.id, "request");
                    let command = request.command.as_ref().expect("checked above");
                    if let Err(why) = session.admit(request.id, command, &pending).await {
                        let _ = tx.send(failure(request.id, why));
                        continue;
                    }
                    let reply = Reply::new(request.id, tx.clone());
                    match command {
                        Command::AuditReopen(_) => reopen_audit(&session.access.auditor, reply).await,
                        _ => handle.request(request, reply),
                    }
                }
                Err(e) => {
                    let _ = tx.send(failure(0, format!("undecodable request: {e}; closing the connection")));
                    break;
                }
            },
            Some(Err(e)) => {
                // The codec fails in two ways: a length over the maximum
                // (InvalidData), or the stream ending inside a frame.
                let what = if e.kind() == io::ErrorKind::InvalidData {
                    format!("bad frame: {e} (the maximum is {max_frame} bytes)")
                } else {
                    "truncated frame (the connection ended inside it)".to_string()
                };
                tracing::debug!(session = session_id, "{what}");
                let _ = tx.send(failure(0, format!("{what}; closing the connection")));
                break;
            }
        }
    }
    // Responses to requests still in flight keep flowing until the
    // supervisor drops its senders; then the writer ends and the socket closes.
    drop(tx);
    let _ = writer_task.await;
}
