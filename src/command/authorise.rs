//! Who may send commands, and which commands are privileged (audited).

use super::peer::Peer;
use crate::proto::request::Command;

/// The config's allow-lists. With neither set, the socket's file mode is
/// the only gate (0600: its owner; 0660: the granted group too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub uids: Option<Vec<u32>>,
    pub gids: Option<Vec<u32>>,
}

impl Policy {
    /// Root gets no exception: with lists set it must be on one of them.
    /// The gid checked is the peer's primary one, as the kernel reports it.
    pub fn check(&self, peer: &Peer) -> Result<(), String> {
        if self.uids.is_none() && self.gids.is_none() {
            return Ok(());
        }
        let uid_ok = self.uids.as_ref().is_some_and(|l| l.contains(&peer.uid));
        let gid_ok = self.gids.as_ref().is_some_and(|l| l.contains(&peer.gid));
        if uid_ok || gid_ok {
            Ok(())
        } else {
            Err(format!("uid {} (gid {}) is not in command_allowed_uids or command_allowed_gids", peer.uid, peer.gid))
        }
    }
}

/// A request as its audit record names it.
pub struct Described {
    /// Changes state: audited before it runs.
    pub privileged: bool,
    pub command: &'static str,
    pub arguments: Vec<String>,
    pub group: Option<String>,
    pub worker: Option<String>,
}

/// A target is all workers (empty or "all"), a worker id (`web-3`: group
/// names never end in `-<number>`), or a group.
fn target(target: &str) -> (Option<String>, Option<String>) {
    if target.is_empty() || target == "all" {
        return (None, None);
    }
    match target.rsplit_once('-') {
        Some((group, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(group.to_string()), Some(target.to_string()))
        }
        _ => (Some(target.to_string()), None),
    }
}

pub fn describe(command: &Command) -> Described {
    let d = |privileged, command, arguments: Vec<String>, (group, worker)| Described {
        privileged,
        command,
        arguments,
        group,
        worker,
    };
    match command {
        Command::Status(_) => d(false, "Status", vec![], (None, None)),
        Command::ListWorkers(r) => d(false, "ListWorkers", vec![format!("group={}", r.group)], (None, None)),
        Command::Stop(r) => {
            d(true, "Stop", vec![format!("target={}", r.target), format!("hard={}", r.hard)], target(&r.target))
        }
        Command::Start(r) => d(true, "Start", vec![format!("target={}", r.target)], target(&r.target)),
        Command::Restart(r) => d(
            true,
            "Restart",
            vec![
                format!("target={}", r.target),
                format!("rolling={}", r.rolling),
                format!("max_unavailable={}", r.max_unavailable),
            ],
            target(&r.target),
        ),
        Command::Scale(r) => d(
            true,
            "Scale",
            vec![format!("group={}", r.group), format!("count={}", r.count)],
            (Some(r.group.clone()), None),
        ),
        Command::Limit(r) => {
            let mut args = vec![format!("target={}", r.target)];
            args.extend(r.properties.iter().cloned());
            d(true, "Limit", args, target(&r.target))
        }
        Command::ReloadConfig(_) => d(true, "ReloadConfig", vec![], (None, None)),
        Command::SaveState(r) => d(true, "SaveState", vec![format!("path={}", r.path)], (None, None)),
        Command::LoadState(r) => d(true, "LoadState", vec![format!("path={}", r.path)], (None, None)),
        Command::Shutdown(_) => d(true, "Shutdown", vec![], (None, None)),
        Command::AuditReopen(_) => d(true, "AuditReopen", vec![], (None, None)),
        Command::Upgrade(r) => d(true, "Upgrade", vec![format!("binary={}", r.binary)], (None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { uid, gid, pid: None, comm: None }
    }

    #[test]
    fn lists_admit_by_uid_or_primary_gid_and_root_only_when_listed() {
        assert!(Policy::default().check(&peer(0, 0)).is_ok());
        let p = Policy { uids: Some(vec![1000]), gids: Some(vec![50]) };
        assert!(p.check(&peer(1000, 1000)).is_ok());
        assert!(p.check(&peer(1001, 50)).is_ok());
        assert!(p.check(&peer(0, 0)).unwrap_err().contains("uid 0"));
    }

    #[test]
    fn targets_split_into_group_and_worker() {
        assert_eq!(target("web-3"), (Some("web".into()), Some("web-3".into())));
        assert_eq!(target("web"), (Some("web".into()), None));
        assert_eq!(target("all"), (None, None));
    }
}
