//! Requests checked against corrald's bounds before anything else sees
//! them: what a client may name, and how much of it.
//!
//! Everything here comes from whoever can reach the socket. A value that
//! cannot be valid is refused whole, with a message that shows at most a
//! short, escaped prefix of what was sent: the answer goes to a terminal
//! and the refusal to the log.

use crate::config::Limits;
use crate::proto::request::Command;
use crate::sanitise::excerpt;

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

fn group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Empty or "all", a group name, or a worker id `<group>-<n>`.
fn target(value: &str) -> Result<(), String> {
    if value.is_empty() || value == "all" || (value.len() <= MAX_NAME && group_name(value)) {
        return Ok(());
    }
    Err(format!("invalid target {}: name all, a group, or a worker id such as web-3", shown(value)))
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
        Command::Status(_) | Command::ReloadConfig(_) | Command::Shutdown(_) | Command::AuditReopen(_) => Ok(()),
        Command::ListWorkers(r) if r.group.is_empty() || group_name(&r.group) => Ok(()),
        Command::ListWorkers(r) => Err(format!("invalid group name {}", shown(&r.group))),
        Command::Stop(r) => target(&r.target),
        Command::Start(r) => target(&r.target),
        Command::Restart(r) => {
            target(&r.target)?;
            count("max_unavailable", r.max_unavailable, limits)
        }
        Command::Scale(r) => {
            if !group_name(&r.group) {
                return Err(format!("invalid group name {}", shown(&r.group)));
            }
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
