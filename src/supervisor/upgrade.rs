//! What a binary must prove before corrald execs it in its own place, as
//! root, with the fleet's descriptors.
//!
//! Three things, in order: nobody but root (or corrald's own user) could
//! have put it there or changed it, along its whole path, as sudo and sshd
//! check their helpers; it is a corrald that speaks the same hand-over
//! protocol (it answers `--handover-protocol`, which `/bin/true` cannot);
//! and it accepts the running config. The path that passed is the one
//! exec'd: it holds no symlink and no directory on it can be changed by
//! another user, so it cannot be swapped in between.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::actor::Orchestration;
use super::{Reply, Supervisor};
use crate::files::shown;
use crate::sanitise;

/// The version of what passes across an upgrade's exec: the environment
/// naming the handed-over descriptors, their names, and workers.json.
pub const HANDOVER_PROTOCOL: u32 = 1;

/// The argument a corrald answers with [`handshake_line`] and exits.
pub const HANDSHAKE_ARG: &str = "--handover-protocol";

/// What a corrald prints for [`HANDSHAKE_ARG`].
pub fn handshake_line() -> String {
    format!("corrald handover-protocol {HANDOVER_PROTOCOL} version {}", env!("CARGO_PKG_VERSION"))
}

impl Supervisor {
    /// Starts an upgrade: the new binary must pass [`preflight`] (off the
    /// actor) before anything is torn down.
    pub(super) fn upgrade(&mut self, binary: &str, reply: Reply) {
        if self.upgrades.is_none() {
            return reply.failure("this corrald cannot be upgraded in place".into(), None);
        }
        if self.upgrading.is_some() {
            return reply.failure("an upgrade is already in progress".into(), None);
        }
        let binary = if binary.is_empty() {
            match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => return reply.failure(format!("cannot find the running binary: {e}"), None),
            }
        } else {
            PathBuf::from(binary)
        };
        let (config, handle) = (self.config.path.clone(), self.handle());
        tokio::spawn(async move {
            match preflight(&binary, &config).await {
                Ok(binary) => handle.orchestrate(Orchestration::UpgradeChecked { binary, reply }),
                Err(why) => reply.failure(format!("upgrade refused, the running corrald stays: {why}"), None),
            }
        });
    }

    /// The binary passed: answer, and tell corrald's main loop, which
    /// quiets the socket and then releases the run loop.
    pub(super) fn upgrade_checked(&mut self, binary: PathBuf, reply: Reply) {
        if self.fleet.shutting_down() {
            return reply.failure("corrald is shutting down".into(), None);
        }
        let workers = self.fleet.running();
        let Some(upgrades) = &self.upgrades else { return };
        tracing::info!(binary = %binary.display(), workers, "upgrading in place");
        reply.ok(format!("upgrading to {}: the socket and {workers} workers carry over", shown(&binary)), None);
        let _ = upgrades.send(binary.clone());
        self.upgrading = Some(binary);
        // The stream ends now, with its final answer, before the socket
        // goes quiet for the exec.
        self.tell_corrald("upgrading");
        self.events.close();
    }
}

/// How long each probe of the new binary may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a probe's output may be; more is not a corrald's answer.
const PROBE_OUTPUT: u64 = 4096;

/// Checks `binary` and returns the path to exec.
pub async fn preflight(binary: &Path, config: &Path) -> Result<PathBuf, String> {
    let path = trusted_path(binary)?;
    let (ok, out, err) = probe(&path, &[std::ffi::OsStr::new(HANDSHAKE_ARG)]).await?;
    let answer = out.lines().next().unwrap_or("");
    let protocol = answer.strip_prefix("corrald handover-protocol ").and_then(|rest| rest.split(' ').next());
    match protocol.map(str::parse::<u32>) {
        Some(Ok(HANDOVER_PROTOCOL)) if ok => {}
        Some(Ok(other)) => {
            return Err(format!(
                "{} speaks hand-over protocol {other}; this corrald speaks {HANDOVER_PROTOCOL}",
                shown(&path)
            ))
        }
        _ => {
            return Err(format!(
                "{} is not a corrald: it did not answer {HANDSHAKE_ARG} ({}{})",
                shown(&path),
                if ok { "exit 0" } else { "failed" },
                excerpt(&out, &err)
            ))
        }
    }
    let config_arg = config.as_os_str();
    let (ok, out, err) = probe(&path, &[std::ffi::OsStr::new("--check-config"), config_arg]).await?;
    if !ok {
        return Err(format!("{} --check-config {} failed{}", shown(&path), shown(config), excerpt(&out, &err)));
    }
    Ok(path)
}

/// Resolves `binary` and checks the file and every directory above it:
/// owned by root or corrald's user, and writable by no one else. A
/// directory others may write is accepted only with the sticky bit and a
/// root owner (like /tmp), where others cannot rename or remove what is not
/// theirs.
pub fn trusted_path(binary: &Path) -> Result<PathBuf, String> {
    let path = std::fs::canonicalize(binary).map_err(|e| format!("cannot resolve {}: {e}", shown(binary)))?;
    let me = nix::unistd::geteuid().as_raw();
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot inspect {}: {e}", shown(&path)))?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", shown(&path)));
    }
    let owned = |uid: u32| uid == 0 || uid == me;
    if !owned(meta.uid()) || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must belong to root (or uid {me}) and be writable by no one else (it is uid {}, mode {:04o})",
            shown(&path),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", shown(dir)))?;
        let shared = meta.mode() & 0o022 != 0;
        let sticky_root = meta.mode() & 0o1000 != 0 && meta.uid() == 0;
        if !owned(meta.uid()) || (shared && !sticky_root) {
            return Err(format!(
                "{} is in {}, which another user could change (uid {}, mode {:04o})",
                shown(&path),
                shown(dir),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(path)
}

/// Runs the binary with `args`, bounded in time and output: whether it
/// exited 0, and the start of what it printed.
async fn probe(path: &Path, args: &[&std::ffi::OsStr]) -> Result<(bool, String, String), String> {
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", shown(path)))?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(PROBE_OUTPUT).read_to_end(&mut out).await;
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(PROBE_OUTPUT).read_to_end(&mut err).await;
        }
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok((Ok(status), out, err)) => Ok((
            status.success(),
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )),
        Ok((Err(e), _, _)) => Err(format!("{} could not be waited for: {e}", shown(path))),
        Err(_) => Err(format!("{} did not finish within {}s", shown(path), PROBE_TIMEOUT.as_secs())),
    }
}

/// A probe's output for a message: escaped, and its first few hundred chars.
fn excerpt(out: &str, err: &str) -> String {
    let text = if err.trim().is_empty() { out.trim() } else { err.trim() };
    if text.is_empty() {
        return String::new();
    }
    format!(": {}", sanitise::excerpt(text, 300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_binary_others_could_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("corrald");
        std::fs::copy("/bin/true", &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        trusted_path(&bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(trusted_path(&bin).unwrap_err().contains("writable by no one else"));
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(trusted_path(&bin).unwrap_err().contains("which another user could change"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        // Sticky, but the tempdir's owner is the test's user: accepted
        // only when that is root.
        assert_eq!(trusted_path(&bin).is_ok(), nix::unistd::geteuid().is_root());
    }

    #[test]
    fn the_handshake_names_the_protocol() {
        assert!(handshake_line().starts_with(&format!("corrald handover-protocol {HANDOVER_PROTOCOL} ")));
    }

    #[tokio::test]
    async fn a_binary_that_only_exits_0_is_not_a_corrald() {
        let e = preflight(Path::new("/bin/true"), Path::new("/nonexistent.toml")).await.unwrap_err();
        assert!(e.contains("is not a corrald"), "{e}");
    }
}
