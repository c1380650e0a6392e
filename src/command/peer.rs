//! Who is on the other end of a connection: the kernel's peer credentials
//! (uid, gid, pid), the process name, and the user name.
//!
//! The pid the kernel reports is that of the process that connected, but
//! by the time `/proc/<pid>/comm` is read that process may have exited and
//! the pid gone to a stranger. With `SO_PEERPIDFD` (Linux 6.5) a pidfd pins
//! the real peer: if it is still alive after comm was read, the pid cannot
//! have been reused. Without it, the process start time is read before and
//! after comm, and must be unchanged and not later than the accept. When
//! neither holds, comm is left out: an absent field, never a wrong one.
//!
//! User names come from NSS, which may hang (SSSD, LDAP): lookups run on
//! the blocking pool with a timeout, through a small cache, and only for
//! requests that are audited, so a status request never waits on one.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::net::UnixStream;

use crate::procfs::start_time;

/// Linux's option numbers; libc does not export them for every target yet.
const SO_PEERPIDFD: nix::libc::c_int = 77;
const SO_PEERGROUPS: nix::libc::c_int = 59;

/// How long a user-name lookup may take before the name is left out.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups at connect time (SO_PEERGROUPS); empty when the
    /// kernel cannot say, which only ever takes access away.
    pub groups: Vec<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// Reads the peer of a freshly accepted connection.
pub fn identify(stream: &UnixStream) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
    let comm = pid.and_then(|pid| comm_of(stream.as_raw_fd(), pid));
    let groups = peer_groups(stream.as_raw_fd());
    Ok(Peer { uid: cred.uid(), gid: cred.gid(), groups, pid, comm })
}

/// The peer's supplementary groups as they were when it connected.
fn peer_groups(socket: RawFd) -> Vec<u32> {
    // Linux caps a process at 65536 groups; ask for a size that covers
    // common cases, then once more with the size the kernel reports.
    let mut groups: Vec<nix::libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<nix::libc::gid_t>()) as nix::libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the buffer,
        // which is that long, and updates `len`.
        let rc = unsafe {
            nix::libc::getsockopt(socket, nix::libc::SOL_SOCKET, SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        let count = len as usize / std::mem::size_of::<nix::libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(nix::libc::ERANGE) || count > 65536 {
            return Vec::new();
        }
        groups.resize(count, 0);
    }
    Vec::new()
}

fn comm_of(socket: RawFd, pid: u32) -> Option<String> {
    match peer_pidfd(socket) {
        Some(pidfd) => {
            let comm = read_comm(pid)?;
            pidfd_alive(&pidfd).then_some(comm)
        }
        None => {
            let accepted = boot_ticks()?;
            let before = start_time(pid)?;
            let comm = read_comm(pid)?;
            let after = start_time(pid)?;
            (before == after && before <= accepted).then_some(comm)
        }
    }
}

fn peer_pidfd(socket: RawFd) -> Option<OwnedFd> {
    let mut fd: nix::libc::c_int = -1;
    let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket,
            nix::libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut nix::libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor we now own.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process the pidfd pins has not exited: a pidfd turns
/// readable when its process exits, before the pid can be reaped and
/// reused. (rustix's signals exclude 0, the other way to ask.)
fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(0))
}

fn read_comm(pid: u32) -> Option<String> {
    let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    Some(String::from_utf8_lossy(comm).into_owned())
}

/// Now, in the clock ticks /proc/<pid>/stat counts start times in.
fn boot_ticks() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let hz = u64::try_from(hz).ok()?;
    Some(now.tv_sec() as u64 * hz + now.tv_nsec() as u64 * hz / 1_000_000_000)
}

/// User names by uid, looked up off the event loop, 16 at most remembered.
#[derive(Clone)]
pub struct UserNames {
    cache: Arc<Mutex<LruCache<u32, Option<String>>>>,
}

impl Default for UserNames {
    fn default() -> Self {
        UserNames { cache: Arc::new(Mutex::new(LruCache::new(NonZeroUsize::new(16).expect("16 > 0")))) }
    }
}

impl UserNames {
    /// The name of `uid`, or None when it has none or the lookup did not
    /// answer within the timeout (not cached then, so it is tried again).
    pub async fn name(&self, uid: u32) -> Option<String> {
        if let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) {
            return hit.clone();
        }
        let lookup = tokio::task::spawn_blocking(move || lookup(uid));
        match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(Ok(name))) => {
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(uid, name.clone());
                name
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(uid, "user name lookup failed: {e}");
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!(uid, "user name lookup took over {LOOKUP_TIMEOUT:?}; the audit record leaves it out");
                None
            }
        }
    }
}

fn lookup(uid: u32) -> Result<Option<String>, nix::Error> {
    #[cfg(feature = "fault-injection")]
    if std::env::var_os("CORRAL_FAULT_HANG_USER_LOOKUP").is_some() {
        // Test builds only: stands in for a wedged NSS backend.
        std::thread::sleep(Duration::from_secs(3600));
    }
    Ok(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?.map(|u| u.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_is_alive_until_its_process_exits() {
        let own = rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty()).unwrap();
        assert!(pidfd_alive(&own));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        child.wait().unwrap();
        assert!(!pidfd_alive(&pidfd));
    }
}
