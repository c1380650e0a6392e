//! Commands run to their end, bounded: corralctl on a test's socket, as
//! root or as another user, and any other program.

use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;

use super::poll::poll_blocking;
use super::{needs_root, path_str, Corrald, CORRALCTL, PATIENCE};

/// The lines a child prints on stdout, as they come: read on a thread of
/// their own, which ends when the child closes its stdout or the receiver
/// is dropped. Take each with `recv_timeout(PATIENCE)`.
pub fn stdout_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// corralctl on `socket`: its exit code, stdout and stderr.
pub fn corralctl(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_bounded(Command::new(CORRALCTL).arg("--socket").arg(socket).args(args).env_remove("CORRAL_SOCKET"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Corrald {
    /// corralctl on this corrald's socket, as the test's own user: exit
    /// code, stdout, stderr.
    pub fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        corralctl(&self.socket, args)
    }

    /// The config line that grants the outsider's group the socket; the
    /// test's directory is opened for traversal so the outsider can reach it.
    pub fn share_with_outsider(&self) -> String {
        super::chmod(self.dir.path(), 0o755);
        "command_socket_group = \"nogroup\"\n".to_string()
    }

    /// Runs corralctl on this corrald's socket as `uid`/`gid` with no
    /// supplementary groups: whether it exited 0, and its output.
    pub fn ctl_as(&self, (uid, gid): (u32, u32), args: &[&str]) -> (bool, String) {
        needs_root("it runs corralctl as another user");
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let mut all = vec!["--reuid", &uid, "--regid", &gid, "--clear-groups", CORRALCTL, "--socket"];
        let socket = path_str(&self.socket);
        all.push(&socket);
        all.extend_from_slice(args);
        run("setpriv", &all)
    }
}

/// Runs a command to its end: whether it succeeded, and its stdout then stderr.
pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs a command to completion within the test's patience.
pub fn run_bounded(cmd: &mut Command) -> Output {
    let mut child =
        KillOnDrop(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn"));
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    // Read the pipes on threads so a chatty child never blocks on a full pipe.
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut stdout, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut stderr, &mut v).map(|_| v)
    });
    let status = wait_child(&mut child, &format!("{cmd:?}"));
    Output { status, stdout: out.join().unwrap().unwrap(), stderr: err.join().unwrap().unwrap() }
}

/// A child process killed if a test fails while it runs.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits, bounded, for a process to exit; on timeout the test fails and
/// the process is killed with its [`KillOnDrop`].
pub fn wait_child(child: &mut KillOnDrop, what: &str) -> ExitStatus {
    poll_blocking(&format!("{what} to exit"), PATIENCE, || child.0.try_wait().expect("try_wait").ok_or("running"))
}
