//! Requests checked against corrald's bounds before anything else sees
//! them: what a client may name, and how much of it.
//!
//! Everything here comes from whoever can reach the socket. A value that
//! cannot be valid is refused whole, with a message that shows at most a
//! short, escaped prefix of what was sent: the answer goes to a terminal
//! and the refusal to the log.

use crate::config::{check_group_name, Limits};
use crate::proto::request::Command;
use crate::sanitise::excerpt;
use crate::target::{self, Target};

/// The longest target, group name or state name a request may carry.
pub const MAX_NAME: usize = 80;
/// The longest path a request may carry (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// How many properties one `limit` may set, and how long each may be.
pub const MAX_PROPERTIES: usize = 32;
pub const MAX_PROPERTY: usize = 256;

/// What a refusal shows of a value: escaped, and cut to a few dozen chars.
fn shown(value: &str) -> String {
    format!("\"{}\"", excerpt(value, 48))
}

/// What [`Target::parse`] reads: empty or "all", a group name, or a worker
/// id `<group>-<n>`; at most [`MAX_NAME`] bytes of it are looked at.
fn target(value: &str) -> Result<(), String> {
    if value.len() <= MAX_NAME && Target::parse(value).is_ok() {
        return Ok(());
    }
    Err(format!("invalid target {}: {}", shown(value), target::FORMS))
}

fn group_name(value: &str) -> Result<(), String> {
    check_group_name(value).map_err(|_| format!("invalid group name {}", shown(value)))
}

/// A saved state is named by a plain name (kept in the state directory) or,
/// by an admin, an absolute path.
pub fn state_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && !value.starts_with('.')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn path(what: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_PATH {
        return Err(format!("{what} is {} bytes long; the limit is {MAX_PATH}", value.len()));
    }
    if !value.starts_with('/') || value.contains('\0') {
        return Err(format!("{what} {} must be an absolute path", shown(value)));
    }
    Ok(())
}

fn state_path(value: &str) -> Result<(), String> {
    if value.contains('/') {
        return path("state path", value);
    }
    if state_name(value) {
        return Ok(());
    }
    Err(format!(
        "invalid state name {}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with '.' (or an absolute path, for admins)",
        shown(value)
    ))
}

fn count(what: &str, n: u32, limits: &Limits) -> Result<(), String> {
    if n > limits.max_group_workers {
        return Err(format!(
            "{what} {n} is over the limit of {} workers per group (limits.max_group_workers)",
            limits.max_group_workers
        ));
    }
    Ok(())
}

/// Refuses a request no bound allows.
pub fn check(command: &Command, limits: &Limits) -> Result<(), String> {
    match command {
        Command::Status(_)
        | Command::Metrics(_)
        | Command::ReloadConfig(_)
        | Command::Shutdown(_)
        | Command::AuditReopen(_) => Ok(()),
        Command::ListWorkers(r) if r.group.is_empty() => Ok(()),
        Command::ListWorkers(r) => group_name(&r.group),
        Command::Stop(r) => target(&r.target),
        Command::Subscribe(r) => target(&r.target),
        Command::Start(r) => target(&r.target),
        Command::Restart(r) => {
            target(&r.target)?;
            count("max_unavailable", r.max_unavailable, limits)
        }
        Command::Scale(r) => {
            group_name(&r.group)?;
            count("count", r.count, limits)
        }
        Command::Limit(r) => {
            target(&r.target)?;
            if r.properties.len() > MAX_PROPERTIES {
                return Err(format!("{} properties in one request; the limit is {MAX_PROPERTIES}", r.properties.len()));
            }
            match r.properties.iter().find(|p| p.len() > MAX_PROPERTY) {
                Some(p) => Err(format!("property {} is longer than {MAX_PROPERTY} bytes", shown(p))),
                None => Ok(()),
            }
        }
        Command::SaveState(r) => state_path(&r.path),
        Command::LoadState(r) => state_path(&r.path),
        Command::Upgrade(r) if r.binary.is_empty() => Ok(()),
        Command::Upgrade(r) => path("binary", &r.binary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn check(c: Command) -> Result<(), String> {
        super::check(&c, &Limits::default())
    }

    #[test]
    fn counts_over_the_limit_are_refused() {
        let e = check(Command::Scale(proto::Scale { group: "web".into(), count: u32::MAX })).unwrap_err();
        assert!(e.contains("4294967295") && e.contains("limits.max_group_workers"), "{e}");
        assert!(check(Command::Scale(proto::Scale { group: "web".into(), count: 1024 })).is_ok());
    }

    #[test]
    fn targets_and_names_are_refused_escaped_and_cut() {
        let e = check(Command::Stop(proto::Stop { target: "\u{1b}]0;x\u{7}".into(), hard: false })).unwrap_err();
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        let e = check(Command::Stop(proto::Stop { target: "a".repeat(1 << 20), hard: false })).unwrap_err();
        assert!(e.len() < 200 && e.contains("1048576 bytes"), "{e}");
        assert!(check(Command::Stop(proto::Stop { target: "web-3".into(), hard: false })).is_ok());
        assert!(check(Command::ListWorkers(proto::ListWorkers { group: "a/b".into() })).is_err());
    }

    #[test]
    fn targets_and_group_names_follow_the_target_rules() {
        let stop = |t: &str| check(Command::Stop(proto::Stop { target: t.into(), hard: false }));
        for ok in ["", "all", "web", "web-3", "my-web-12", &"a".repeat(64)] {
            assert!(stop(ok).is_ok(), "{ok:?}");
        }
        for bad in ["-3", "web/3", "web-99999999999", &"a".repeat(65)] {
            let e = stop(bad).unwrap_err();
            assert!(e.starts_with("invalid target \"") && e.ends_with(target::FORMS), "{e}");
        }
        let scale = |g: &str| check(Command::Scale(proto::Scale { group: g.into(), count: 1 }));
        assert!(scale("web").is_ok());
        assert_eq!(scale("web-1").unwrap_err(), "invalid group name \"web-1\"");
        assert!(scale("").is_err());
        let list = |g: &str| check(Command::ListWorkers(proto::ListWorkers { group: g.into() }));
        assert!(list("").is_ok() && list("web").is_ok() && list("web-1").is_err());
    }

    #[test]
    fn state_files_are_names_or_absolute_paths() {
        let state = |p: &str| check(Command::SaveState(proto::SaveState { path: p.into() }));
        assert!(state("nightly").is_ok());
        assert!(state("nightly.json").is_ok());
        assert!(state("/var/lib/corral/x").is_ok());
        assert!(state(".hidden").is_err());
        assert!(state("../etc/shadow").is_err());
        assert!(state("").is_err());
        assert!(state(&format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn limit_requests_are_bounded() {
        let props = vec!["MemoryMax=1M".to_string(); 33];
        assert!(check(Command::Limit(proto::Limit { target: "web".into(), properties: props })).is_err());
        let props = vec!["x".repeat(300)];
        assert!(check(Command::Limit(proto::Limit { target: "web".into(), properties: props })).is_err());
    }
}
