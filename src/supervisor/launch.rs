//! How a worker process comes to be: corrald forks, and the child, running
//! only system calls on values prepared before the fork, sets up its
//! descriptors, waits at its gate until corrald has placed it in its scope,
//! takes the worker's identity and execs the command.
//!
//! Waiting in the forked child, rather than in a gate program it execs,
//! spares every worker an exec of corrald's large binary. The price is that
//! a waiting child pins the pages corrald writes while it waits, which is
//! why the supervisor bounds how many children wait at once.
//!
//! With `output = "journal"`, the child connects its stdout and stderr to
//! journald's stream socket itself, once it is in its scope and has its
//! identity, as systemd does for a service's output: journald then files
//! each line under the worker's own pid, uid and unit, corrald never
//! carries the output, and the output outlives any corrald. Otherwise the
//! output comes to corrald through pipes.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use nix::libc;

use crate::config::{GroupConfig, StreamPolicy};
use crate::worker::{ENV_FD, ENV_GROUP, ENV_WORKER_ID};

/// The descriptor number at which a protocol worker finds its channel.
pub const WORKER_FD: RawFd = 3;

/// Where journald reads service output streams.
pub const JOURNAL_STREAM_SOCKET: &str = "/run/systemd/journal/stdout";

/// Descriptors the child needs are moved at least this high, so that
/// setting up 0 to 3 never overwrites one of them.
const HIGH_FD: RawFd = 10;

/// Journald's stream sockets block a writer only once this much is queued,
/// the size systemd gives its services' streams.
const STREAM_SNDBUF: libc::c_int = 8 * 1024 * 1024;

/// The open-file limit workers start with: the one corrald itself was
/// started with, before it raised its own soft limit to the hard one.
/// Programs that use select() break with descriptors above 1024, which
/// is why systemd, too, gives services a soft limit of 1024.
static WORKER_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// Records the open-file limit corrald was started with, for its workers.
pub fn keep_open_file_limit_for_workers(soft: u64, hard: u64) {
    let _ = WORKER_NOFILE.set(libc::rlimit { rlim_cur: soft, rlim_max: hard });
}

/// What a failure report from the child says went wrong, before its exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Setup = 1,
    Identity = 2,
    Directory = 3,
    Exec = 4,
    /// Not fatal: the child could not reach journald and writes to
    /// /dev/null instead, as systemd's services then do.
    Journal = 5,
}

/// One report from a child: the stage and its errno, five bytes on the
/// report pipe.
pub const REPORT_LEN: usize = 5;

/// Reads the child's reports, as the process task collects them.
pub fn describe_report(bytes: &[u8; REPORT_LEN], program: &str) -> (Stage, String) {
    let errno = nix::errno::Errno::from_raw(i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]));
    let stage = match bytes[0] {
        2 => Stage::Identity,
        3 => Stage::Directory,
        4 => Stage::Exec,
        5 => Stage::Journal,
        _ => Stage::Setup,
    };
    let what = match stage {
        Stage::Setup => "cannot set up its descriptors".to_string(),
        Stage::Identity => "cannot take on its user and groups".to_string(),
        Stage::Directory => "cannot enter its working directory".to_string(),
        Stage::Exec => format!("cannot execute {program}"),
        Stage::Journal => "cannot connect its output to journald; it goes to /dev/null".to_string(),
    };
    (stage, format!("{what}: {}", errno.desc()))
}

/// How a worker's output leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputRoute {
    /// Straight to journald's stream socket.
    Journal,
    /// Through pipes that corrald reads.
    Pipes,
}

/// Everything the child needs, built before the fork so the child
/// allocates nothing.
pub struct Plan {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    dir: Option<CString>,
    /// uid, gid and supplementary groups, as the system calls take them.
    identity: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    route: OutputRoute,
    /// The stream headers for stdout and stderr; one connection serves
    /// both when they are the same.
    headers: [Vec<u8>; 2],
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

/// journald's stream protocol header: identifier, unit (left to journald,
/// which reads it from the cgroup), priority, level prefix, and no
/// forwarding to syslog, kmsg or the console.
fn stream_header(identifier: &str, policy: StreamPolicy) -> Vec<u8> {
    format!("{identifier}\n\n{}\n{}\n0\n0\n0\n", policy.priority, u8::from(policy.level_prefix)).into_bytes()
}

impl Plan {
    pub fn new(cfg: &GroupConfig, worker_id: &str, protocol: bool, route: OutputRoute) -> io::Result<Plan> {
        // Resolved at config load: a spawn never waits on the user database
        // or searches PATH.
        let host = cfg.host.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "group {}: its command and user were never resolved on this host (config not loaded)",
                    cfg.name
                ),
            )
        })?;
        let identity = host
            .identity
            .as_ref()
            .map(|i| (i.uid.as_raw(), i.gid.as_raw(), i.groups.iter().map(|g| g.as_raw()).collect()));
        let path = cstring(host.program.as_os_str().as_bytes(), "the command")?;
        let mut argv = vec![cstring(cfg.command.as_bytes(), "the command")?];
        for a in &cfg.args {
            argv.push(cstring(a.as_bytes(), "an argument")?);
        }
        let mut env: Vec<(&str, &str)> = cfg.environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.retain(|(k, _)| !["PATH", ENV_GROUP, ENV_WORKER_ID, ENV_FD].contains(k));
        env.push(("PATH", cfg.search_path()));
        env.push((ENV_GROUP, &cfg.name));
        env.push((ENV_WORKER_ID, worker_id));
        let fd = WORKER_FD.to_string();
        if protocol {
            env.push((ENV_FD, &fd));
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            envp.push(cstring(format!("{k}={v}").as_bytes(), "an environment variable")?);
        }
        let dir = match &cfg.working_directory {
            Some(d) => Some(cstring(d.as_os_str().as_bytes(), "the working directory")?),
            None => None,
        };
        let headers = [stream_header(worker_id, cfg.stdout()), stream_header(worker_id, cfg.stderr())];
        Ok(Plan { path, argv, envp, dir, identity, route, headers })
    }
}

/// corrald's side of a freshly forked worker.
pub struct Forked {
    pub pid: u32,
    /// Readable once the process has exited.
    pub pidfd: OwnedFd,
    /// Writing a byte here lets the child go on to exec; closing it
    /// without makes the child exit without running anything.
    pub gate: Option<OwnedFd>,
    /// The child's failure reports; end of file once it has exec'd.
    pub reports: OwnedFd,
    pub channel: Option<UnixStream>,
    /// With [`OutputRoute::Pipes`]: the read ends of stdout and stderr.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The descriptor numbers the child works with.
struct ChildFds {
    null: RawFd,
    gate: Option<RawFd>,
    report: RawFd,
    channel: Option<RawFd>,
    stdout: Option<RawFd>,
    stderr: Option<RawFd>,
}

/// /dev/null, opened once: the child's stdin, and its output when
/// journald cannot be reached.
fn dev_null() -> io::Result<RawFd> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let fd = high(file.into())?;
    Ok(NULL.get_or_init(|| fd).as_raw_fd())
}

/// Moves a descriptor to [`HIGH_FD`] or above (close-on-exec, like all of
/// corrald's).
fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= HIGH_FD {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD))?;
    // SAFETY: fcntl just returned this new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((high(read)?, high(write)?))
}

/// Forks a worker as `plan` says. With `gated`, it waits for [`Forked::gate`]
/// before anything of the worker's runs.
pub fn fork(plan: &Plan, gated: bool, protocol: bool) -> io::Result<Forked> {
    let null = dev_null()?;
    let gate = if gated { Some(pipe()?) } else { None };
    let (report_read, report_write) = pipe()?;
    let channel = if protocol {
        let (ours, theirs) = UnixStream::pair()?;
        Some((ours, high(theirs.into())?))
    } else {
        None
    };
    let (stdout, stderr) = match plan.route {
        OutputRoute::Pipes => (Some(pipe()?), Some(pipe()?)),
        OutputRoute::Journal => (None, None),
    };
    let fds = ChildFds {
        null,
        gate: gate.as_ref().map(|(read, _)| read.as_raw_fd()),
        report: report_write.as_raw_fd(),
        channel: channel.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
        stdout: stdout.as_ref().map(|(_, write)| write.as_raw_fd()),
        stderr: stderr.as_ref().map(|(_, write)| write.as_raw_fd()),
    };
    let argv = pointers(&plan.argv);
    let envp = pointers(&plan.envp);
    let journal = JournalAddress::new();
    let nofile = WORKER_NOFILE.get().copied();
    // SAFETY: fork in a threaded process: the child runs only `child`,
    // which makes async-signal-safe system calls on memory prepared above
    // and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { child(plan, &fds, &argv, &envp, &journal, nofile) }
    }
    let pidfd = match pidfd_open(pid as u32) {
        Ok(fd) => fd,
        Err(err) => {
            // Without a pidfd its end could not be watched: it must not run.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Err(err);
        }
    };
    Ok(Forked {
        pid: pid as u32,
        pidfd,
        gate: gate.map(|(_, write)| write),
        reports: report_read,
        channel: channel.map(|(ours, _)| ours),
        stdout: stdout.map(|(read, _)| read),
        stderr: stderr.map(|(read, _)| read),
    })
}

/// A descriptor that becomes readable when process `pid` exits, whoever
/// its parent is.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // No pid 0 or past i32: the kernel's answer to those, without asking it.
    let pid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
    let pid = pid.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?)
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// journald's stream socket address, built before the fork.
struct JournalAddress {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl JournalAddress {
    fn new() -> JournalAddress {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = OsStr::new(JOURNAL_STREAM_SOCKET).as_bytes();
        for (dst, src) in addr.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
        JournalAddress { addr, len }
    }
}

/// The forked child. Only async-signal-safe calls from here on: no
/// allocation, no locks, no panics.
unsafe fn child(
    plan: &Plan,
    fds: &ChildFds,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    journal: &JournalAddress,
    nofile: Option<libc::rlimit>,
) -> ! {
    let mut report_fd = fds.report;
    let fail = |report_fd: RawFd, stage: Stage| -> ! {
        report(report_fd, stage);
        libc::_exit(127)
    };
    // A new program expects an empty signal mask and default dispositions;
    // corrald ignores SIGPIPE, which exec would otherwise pass on.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    if let Some(limit) = &nofile {
        libc::setrlimit(libc::RLIMIT_NOFILE, limit);
    }
    // Its own process group: a Ctrl-C at corrald's terminal is corrald's to
    // handle, and a hard stop can kill the worker's children with it.
    if libc::setpgid(0, 0) < 0 || libc::dup2(fds.null, 0) < 0 {
        fail(report_fd, Stage::Setup);
    }
    if let Some(fd) = fds.channel {
        if libc::dup2(fd, WORKER_FD) < 0 {
            fail(report_fd, Stage::Setup);
        }
    }
    if let (Some(out), Some(err)) = (fds.stdout, fds.stderr) {
        if libc::dup2(out, 1) < 0 || libc::dup2(err, 2) < 0 {
            fail(report_fd, Stage::Setup);
        }
    }
    // Everything else the fork copied goes now, before the wait: other
    // workers' gates, reports and channels among it. A gate's write end
    // held by a waiting sibling would keep a dropped gate from closing.
    let base = if fds.channel.is_some() { WORKER_FD + 1 } else { WORKER_FD };
    let (gate_fd, kept_report, null_fd) = (base, base + 1, base + 2);
    let moved = fds.gate.map_or(0, |g| libc::dup3(g, gate_fd, libc::O_CLOEXEC))
        | libc::dup3(fds.report, kept_report, libc::O_CLOEXEC)
        | libc::dup3(fds.null, null_fd, libc::O_CLOEXEC);
    if moved < 0 {
        fail(report_fd, Stage::Setup);
    }
    report_fd = kept_report;
    libc::syscall(libc::SYS_close_range, (base + 3) as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint);
    if fds.gate.is_some() {
        let mut byte = 0u8;
        let got = loop {
            let n = libc::read(gate_fd, (&mut byte as *mut u8).cast(), 1);
            if n < 0 && nix::errno::Errno::last_raw() == libc::EINTR {
                continue;
            }
            break n;
        };
        if got != 1 {
            // corrald could not place it, or went away: never run the command.
            libc::_exit(1);
        }
        libc::close(gate_fd);
    }
    if let Some((uid, gid, groups)) = &plan.identity {
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0 || libc::setgid(*gid) < 0 || libc::setuid(*uid) < 0 {
            fail(report_fd, Stage::Identity);
        }
    }
    if let Some(dir) = &plan.dir {
        if libc::chdir(dir.as_ptr()) < 0 {
            fail(report_fd, Stage::Directory);
        }
    }
    if plan.route == OutputRoute::Journal {
        let out = connect_stream(journal, &plan.headers[0]);
        let err = if plan.headers[1] == plan.headers[0] { Some(1) } else { connect_stream(journal, &plan.headers[1]) };
        if out.is_none() || err.is_none() {
            report(report_fd, Stage::Journal);
        }
        for (fd, target) in [(out, 1), (err, 2)] {
            let source = fd.unwrap_or(null_fd);
            if source != target && libc::dup2(source, target) < 0 {
                fail(report_fd, Stage::Setup);
            }
        }
        for fd in [out, err].into_iter().flatten() {
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(report_fd, Stage::Exec)
}

/// One connection to journald's stream socket, its header sent; none if
/// journald cannot be reached. In the child: system calls only. A stdout
/// that already holds the connection lends it to stderr (descriptor 1).
unsafe fn connect_stream(journal: &JournalAddress, header: &[u8]) -> Option<RawFd> {
    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return None;
    }
    let addr = (&journal.addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
    let mut written = 0;
    let ok = libc::connect(fd, addr, journal.len) == 0 && {
        libc::shutdown(fd, libc::SHUT_RD);
        let size = STREAM_SNDBUF;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        while written < header.len() {
            let n = libc::write(fd, header[written..].as_ptr().cast(), header.len() - written);
            if n < 0 && nix::errno::Errno::last_raw() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            written += n as usize;
        }
        written == header.len()
    };
    if ok {
        Some(fd)
    } else {
        libc::close(fd);
        None
    }
}

/// Tells corrald what failed. In the child: one write, no allocation.
unsafe fn report(fd: RawFd, stage: Stage) {
    let errno = nix::errno::Errno::last_raw();
    let e = errno.to_le_bytes();
    let bytes = [stage as u8, e[0], e[1], e[2], e[3]];
    libc::write(fd, bytes.as_ptr().cast(), bytes.len());
}
