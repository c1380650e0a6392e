//! Who may send which commands, and how a request is named in its audit
//! record.
//!
//! Three tiers, each a superset of the one before:
//! - read: status, the worker list and the events stream;
//! - operate: changes to the fleet within what the config allows (stop,
//!   start, restart, scale, limit, reload, state files by name in the
//!   state directory);
//! - admin: what amounts to root (upgrade to another binary, state files at
//!   any path, audit reopen, shutdown of corrald itself).
//!
//! uid 0 and the uid corrald runs as are always admin: they own corrald's
//! process already, so no list could take anything from them, and a
//! config mistake must not lock the operator out of their own daemon.
//! Everyone else gets the highest tier a list grants them by uid, primary
//! gid or supplementary group, and nothing without one.

use std::fmt;

use super::peer::Peer;
use crate::config::AccessLists;
use crate::proto::request::Command;
use crate::target::{SlotKey, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Read,
    Operate,
    Admin,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Read => "read",
            Tier::Operate => "operate",
            Tier::Admin => "admin",
        }
    }

    /// The config keys that grant this tier, for refusals to point at.
    fn keys(self) -> &'static str {
        match self {
            Tier::Read => "command_allowed_uids / command_allowed_gids",
            Tier::Operate => "command_operate_uids / command_operate_gids",
            Tier::Admin => "command_admin_uids / command_admin_gids",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The access lists with the uid corrald runs as.
#[derive(Clone, Debug)]
pub struct Policy {
    lists: AccessLists,
    owner: u32,
}

impl Policy {
    pub fn new(lists: AccessLists, owner: u32) -> Policy {
        Policy { lists, owner }
    }

    /// The caller's tier, or why it may not use the socket at all.
    pub fn tier(&self, peer: &Peer) -> Result<Tier, String> {
        if peer.uid == 0 || peer.uid == self.owner {
            return Ok(Tier::Admin);
        }
        let listed = |uids: &[u32], gids: &[u32]| {
            uids.contains(&peer.uid) || gids.contains(&peer.gid) || peer.groups.iter().any(|g| gids.contains(g))
        };
        let l = &self.lists;
        if listed(&l.admin_uids, &l.admin_gids) {
            return Ok(Tier::Admin);
        }
        if listed(&l.operate_uids, &l.operate_gids) {
            return Ok(Tier::Operate);
        }
        let open = l.allowed_uids.is_none() && l.allowed_gids.is_none();
        let allowed = listed(l.allowed_uids.as_deref().unwrap_or(&[]), l.allowed_gids.as_deref().unwrap_or(&[]));
        if open || allowed {
            Ok(Tier::Read)
        } else {
            Err(format!(
                "uid {} (gid {}) is not in command_allowed_uids or command_allowed_gids (nor a higher tier's list)",
                peer.uid, peer.gid
            ))
        }
    }

    /// Lets `peer` send `command`, or says why not.
    pub fn check(&self, peer: &Peer, described: &Described) -> Result<Tier, String> {
        let tier = self.tier(peer)?;
        if tier < described.tier {
            return Err(format!(
                "uid {} has the {tier} tier; {} needs {} ({})",
                peer.uid,
                described.what(),
                described.tier,
                described.tier.keys()
            ));
        }
        Ok(tier)
    }
}

/// A request as its audit record names it.
pub struct Described {
    /// Changes state: audited before it runs.
    pub privileged: bool,
    /// The lowest tier that may send it.
    pub tier: Tier,
    pub command: &'static str,
    pub arguments: Vec<String>,
    pub group: Option<String>,
    pub worker: Option<String>,
}

impl Described {
    fn what(&self) -> String {
        match self.command {
            "SaveState" | "LoadState" if self.tier == Tier::Admin => format!("{} with a path", self.command),
            command => command.to_string(),
        }
    }
}

/// The group and worker a target names, as [`Target::parse`] reads it. One
/// that does not parse (validation refuses it, and the refusal's record
/// keeps it among the arguments) names neither.
fn target(target: &str) -> (Option<String>, Option<String>) {
    match Target::parse(target) {
        Ok(t) => (t.group().map(str::to_string), t.worker().map(SlotKey::id)),
        Err(_) => (None, None),
    }
}

/// A state file named by a plain name lives in the state directory; a path
/// can be anywhere root can write, so only an admin may give one.
fn state_tier(path: &str) -> Tier {
    if path.contains('/') {
        Tier::Admin
    } else {
        Tier::Operate
    }
}

pub fn describe(command: &Command) -> Described {
    let d = |tier: Tier, command, arguments: Vec<String>, (group, worker)| Described {
        privileged: tier > Tier::Read,
        tier,
        command,
        arguments,
        group,
        worker,
    };
    use Tier::{Admin, Operate, Read};
    match command {
        Command::Status(_) => d(Read, "Status", vec![], (None, None)),
        Command::Metrics(_) => d(Read, "Metrics", vec![], (None, None)),
        Command::ListWorkers(r) => d(Read, "ListWorkers", vec![format!("group={}", r.group)], (None, None)),
        Command::Subscribe(r) => d(Read, "Subscribe", vec![format!("target={}", r.target)], target(&r.target)),
        Command::Stop(r) => {
            d(Operate, "Stop", vec![format!("target={}", r.target), format!("hard={}", r.hard)], target(&r.target))
        }
        Command::Start(r) => d(Operate, "Start", vec![format!("target={}", r.target)], target(&r.target)),
        Command::Restart(r) => d(
            Operate,
            "Restart",
            vec![
                format!("target={}", r.target),
                format!("rolling={}", r.rolling),
                format!("max_unavailable={}", r.max_unavailable),
            ],
            target(&r.target),
        ),
        Command::Scale(r) => d(
            Operate,
            "Scale",
            vec![format!("group={}", r.group), format!("count={}", r.count)],
            (Some(r.group.clone()), None),
        ),
        Command::Limit(r) => {
            let mut args = vec![format!("target={}", r.target)];
            args.extend(r.properties.iter().cloned());
            d(Operate, "Limit", args, target(&r.target))
        }
        Command::ReloadConfig(_) => d(Operate, "ReloadConfig", vec![], (None, None)),
        Command::SaveState(r) => d(state_tier(&r.path), "SaveState", vec![format!("path={}", r.path)], (None, None)),
        Command::LoadState(r) => d(state_tier(&r.path), "LoadState", vec![format!("path={}", r.path)], (None, None)),
        Command::Shutdown(_) => d(Admin, "Shutdown", vec![], (None, None)),
        Command::AuditReopen(_) => d(Admin, "AuditReopen", vec![], (None, None)),
        Command::Upgrade(r) => d(Admin, "Upgrade", vec![format!("binary={}", r.binary)], (None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer { uid, gid, groups: groups.to_vec(), pid: None, comm: None }
    }

    fn lists() -> AccessLists {
        AccessLists {
            allowed_uids: Some(vec![1000]),
            allowed_gids: Some(vec![50]),
            operate_uids: vec![1001],
            operate_gids: vec![60],
            admin_uids: vec![1002],
            admin_gids: vec![70],
        }
    }

    #[test]
    fn tiers_come_from_uid_primary_gid_or_supplementary_group() {
        let p = Policy::new(lists(), 0);
        assert_eq!(p.tier(&peer(1000, 1000, &[])), Ok(Tier::Read));
        assert_eq!(p.tier(&peer(2000, 50, &[])), Ok(Tier::Read));
        assert_eq!(p.tier(&peer(2000, 2000, &[50])), Ok(Tier::Read));
        assert_eq!(p.tier(&peer(1001, 1001, &[])), Ok(Tier::Operate));
        assert_eq!(p.tier(&peer(2000, 2000, &[3, 60])), Ok(Tier::Operate));
        assert_eq!(p.tier(&peer(2000, 70, &[])), Ok(Tier::Admin));
        assert!(p.tier(&peer(2000, 2000, &[1, 2])).unwrap_err().contains("uid 2000"));
    }

    #[test]
    fn root_and_the_owner_are_admin_whatever_the_lists_say() {
        let p = Policy::new(lists(), 4242);
        assert_eq!(p.tier(&peer(0, 0, &[])), Ok(Tier::Admin));
        assert_eq!(p.tier(&peer(4242, 4242, &[])), Ok(Tier::Admin));
    }

    #[test]
    fn without_allow_lists_anyone_the_socket_admits_may_read_only() {
        let p = Policy::new(AccessLists::default(), 0);
        assert_eq!(p.tier(&peer(1000, 1000, &[])), Ok(Tier::Read));
        let stop = describe(&Command::Stop(proto::Stop { target: String::new(), hard: false }));
        let why = p.check(&peer(1000, 1000, &[]), &stop).unwrap_err();
        assert!(why.contains("Stop needs operate") && why.contains("command_operate_uids"), "{why}");
    }

    #[test]
    fn each_command_needs_its_tier() {
        let tier = |c: Command| describe(&c).tier;
        assert_eq!(tier(Command::Status(proto::StatusRequest {})), Tier::Read);
        assert_eq!(tier(Command::Metrics(proto::Metrics {})), Tier::Read);
        assert_eq!(tier(Command::Subscribe(proto::Subscribe { target: "web".into(), replay: 0 })), Tier::Read);
        assert_eq!(tier(Command::Scale(proto::Scale { group: "web".into(), count: 3 })), Tier::Operate);
        assert_eq!(tier(Command::SaveState(proto::SaveState { path: "nightly".into() })), Tier::Operate);
        assert_eq!(tier(Command::SaveState(proto::SaveState { path: "/root/x".into() })), Tier::Admin);
        assert_eq!(tier(Command::LoadState(proto::LoadState { path: "../x".into() })), Tier::Admin);
        assert_eq!(tier(Command::Upgrade(proto::Upgrade { binary: String::new() })), Tier::Admin);
        assert_eq!(tier(Command::Shutdown(proto::Shutdown {})), Tier::Admin);
        assert_eq!(tier(Command::AuditReopen(proto::AuditReopen {})), Tier::Admin);
    }

    #[test]
    fn targets_split_into_group_and_worker() {
        assert_eq!(target("web-3"), (Some("web".into()), Some("web-3".into())));
        assert_eq!(target("web"), (Some("web".into()), None));
        assert_eq!(target("all"), (None, None));
        assert_eq!(target(""), (None, None));
        assert_eq!(target("my-web-12"), (Some("my-web".into()), Some("my-web-12".into())));
        for refused in ["a/b", "-3", "web-99999999999", "\u{1b}]0;x\u{7}"] {
            assert_eq!(target(refused), (None, None), "{refused:?}");
        }
    }
}
