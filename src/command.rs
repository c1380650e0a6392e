//! The command socket: binding it safely, framing, and handing each decoded
//! request to the supervisor.
//!
//! Every connection is its own task with its own writer, so one client that
//! sends garbage, or stops reading, never delays another.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use nix::fcntl::{Flock, FlockArg};
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::frame;
use crate::proto::{self, Status};
use crate::supervisor::{Handle, Reply};

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
    pub fn bind(path: &Path) -> Result<Listener, BindError> {
        let io_err = |what: &'static str| move |source| BindError::Io { path: path.to_path_buf(), what, source };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)
                .map_err(io_err("create parent directory"))?;
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
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod"))?;
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
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(inode) = self.inode else { return };
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Serves the socket until `stop` turns true, then gives every connection a
/// moment to write out what is queued for it.
pub async fn serve(listener: Listener, handle: Handle, max_frame: usize, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut next_session = 1u64;
    loop {
        tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let session = next_session;
                    next_session += 1;
                    connections.spawn(connection(stream, session, handle.clone(), max_frame, stop.clone()));
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
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(2), drain).await.is_err() {
        tracing::warn!("some clients did not take their last responses in time");
    }
}

async fn connection(
    stream: UnixStream,
    session: u64,
    handle: Handle,
    max_frame: usize,
    mut stop: watch::Receiver<bool>,
) {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, frame::codec(max_frame));
    let mut writer = FramedWrite::new(write, frame::codec(max_frame));
    let (tx, mut rx) = mpsc::unbounded_channel::<proto::Response>();

    let writer_task = tokio::spawn(async move {
        while let Some(response) = rx.recv().await {
            if writer.send(frame::encode(&response)).await.is_err() {
                break;
            }
        }
    });

    let failure =
        |id: u64, message: String| proto::Response { id, status: Status::Failure as i32, message, content: None };
    loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            _ = stop.changed() => break,
        };
        match frame {
            None => break,
            Some(Ok(bytes)) => match proto::Request::decode(bytes) {
                Ok(request) if request.command.is_none() => {
                    let _ = tx.send(failure(request.id, "unknown or missing command".into()));
                }
                Ok(request) => {
                    tracing::trace!(session, id = request.id, "request");
                    handle.request(request.clone(), Reply::new(request.id, tx.clone()));
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
                tracing::debug!(session, "{what}");
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
