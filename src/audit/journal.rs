//! The audit trail's own way into journald: a blocking datagram socket,
//! used only from the audit writer thread.
//!
//! Worker output goes through [`crate::journal::Output`], whose bounded
//! queue drops what does not fit: right for output, wrong for audit
//! records, which must not be lost under a burst the file sinks absorb. Here
//! a full journald socket makes the writer wait (and with it the commands
//! whose records come next), so the burst slows down instead of losing
//! records. Only a journald that is absent, refuses, or does not take a
//! record within [`SEND_TIMEOUT`] costs records, and those are counted.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// How long one record may wait for room in journald's socket before the
/// journal counts as failing. journald that is alive drains its socket far
/// faster; one that stalls this long would otherwise hold up every
/// privileged command.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failure, how long until the socket is tried again; what comes
/// meanwhile is counted as missed without waiting. Doubled after each
/// failure in a row up to [`MAX_RETRY`], so a journald that is hung rather
/// than gone holds commands up for one [`SEND_TIMEOUT`] now and then, not
/// every second.
const RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

pub struct Journal {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    retry_at: Option<Instant>,
    retry: Duration,
}

impl Journal {
    /// journald's socket, at [`crate::journal::JOURNAL_SOCKET`].
    pub fn system() -> Journal {
        Journal::at(Path::new(crate::journal::JOURNAL_SOCKET))
    }

    /// A native-protocol socket at `path`.
    pub fn at(path: &Path) -> Journal {
        let mut journal = Journal { path: path.to_path_buf(), socket: None, retry_at: None, retry: RETRY };
        journal.connect();
        journal
    }

    fn connect(&mut self) {
        let connected = UnixDatagram::unbound().and_then(|s| {
            s.connect(&self.path)?;
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(s)
        });
        match connected {
            Ok(socket) => {
                self.socket = Some(socket);
                self.retry_at = None;
            }
            Err(_) => self.back_off(),
        }
    }

    fn back_off(&mut self) {
        self.socket = None;
        self.retry_at = Some(Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// Sends one entry, waiting while journald's socket is full. False when
    /// the journal is absent or failing: the entry is lost.
    pub fn send(&mut self, entry: &[u8]) -> bool {
        if self.socket.is_none() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            self.connect();
        }
        let Some(socket) = &self.socket else { return false };
        let sent = match socket.send(entry) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => send_as_memfd(socket, entry),
            other => other.map(drop),
        };
        match sent {
            Ok(()) => {
                self.retry = RETRY;
                true
            }
            Err(e) => {
                tracing::error!("audit records cannot be written to the journal ({e}); counting them as missed");
                self.back_off();
                false
            }
        }
    }
}

/// An entry too large for one datagram goes as a sealed memfd, as
/// sd_journal_sendv does: journald reads entries of up to 768 MiB that way.
fn send_as_memfd(socket: &UnixDatagram, entry: &[u8]) -> io::Result<()> {
    let fd = memfd_create(c"corral-audit", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(entry)?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    let fds = [file.as_raw_fd()];
    sendmsg::<()>(socket.as_raw_fd(), &[], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSliceMut, Read, Seek, SeekFrom};
    use std::os::fd::{FromRawFd, OwnedFd};

    use nix::sys::socket::{recvmsg, ControlMessageOwned};

    /// Reads one entry as journald would: the datagram, or the memfd it
    /// carries.
    fn receive(server: &UnixDatagram) -> Vec<u8> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(server.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        let len = msg.bytes;
        let fd = msg.cmsgs().unwrap().find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        });
        match fd {
            Some(fd) => {
                // journald refuses a memfd its sender could still change.
                let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS).unwrap());
                let all =
                    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
                assert!(seals.contains(all), "{seals:?}");
                // SAFETY: the descriptor was just received and is ours alone.
                let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                // The sender's offset is shared; journald maps the file instead.
                file.seek(SeekFrom::Start(0)).unwrap();
                let mut entry = Vec::new();
                file.read_to_end(&mut entry).unwrap();
                entry
            }
            None => buf[..len].to_vec(),
        }
    }

    #[test]
    fn a_burst_far_larger_than_the_socket_buffer_arrives_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut journal = Journal::at(&path);
        const N: usize = 20_000;
        let sender =
            std::thread::spawn(move || (0..N).all(|i| journal.send(format!("MESSAGE=record {i}\n").as_bytes())));
        for i in 0..N {
            assert_eq!(receive(&server), format!("MESSAGE=record {i}\n").into_bytes());
        }
        assert!(sender.join().unwrap(), "every send reported success");
    }

    #[test]
    fn an_entry_larger_than_a_datagram_goes_as_a_sealed_memfd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut journal = Journal::at(&path);
        let mut entry = Vec::new();
        crate::journal::field(&mut entry, "MESSAGE", &vec![b'x'; 4 * 1024 * 1024]);
        assert!(journal.send(&entry));
        let got = receive(&server);
        assert!(got == entry, "{} bytes received of {}", got.len(), entry.len());
    }

    #[test]
    fn without_a_listener_entries_are_reported_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::at(&dir.path().join("nobody"));
        assert!(!journal.send(b"MESSAGE=lost\n"));
    }
}
