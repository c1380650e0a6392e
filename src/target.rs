//! What a request acts on: every worker, one group, or one worker.
//!
//! The wire carries a target as text (`""` or `"all"`, `web`, `web-3`). It
//! is parsed here once, into [`Target`], and every layer (validation,
//! authorisation and its audit record, the supervisor, corralctl) works on
//! the parsed value. The form is unambiguous because a group name never
//! ends in `-<number>` ([`check_group_name`]), so `web-3` is always slot 3
//! of group `web`.

use std::fmt;

/// A worker's place in its group: `web-3` is slot 3 of group `web`. The
/// slot outlives the processes that fill it, so ids stay stable across
/// restarts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub group: String,
    pub index: u32,
}

impl SlotKey {
    pub fn new(group: &str, index: u32) -> SlotKey {
        SlotKey { group: group.to_string(), index }
    }

    /// The worker id: `<group>-<index>`.
    pub fn id(&self) -> String {
        self.to_string()
    }

    /// Reads a worker id; `None` for anything else (a group name included).
    pub fn parse(id: &str) -> Option<SlotKey> {
        let (group, index) = id.rsplit_once('-')?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || check_group_name(group).is_err() {
            return None;
        }
        Some(SlotKey { group: group.to_string(), index: index.parse().ok()? })
    }
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.group, self.index)
    }
}

/// What a target may be, as a refusal tells whoever sent another.
pub const FORMS: &str = "name all, a group, or a worker id such as web-3";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    All,
    Group(String),
    Worker(SlotKey),
}

impl Target {
    /// Parses the wire form: empty or `all`, a worker id, or a group name.
    /// The error says what a target may be, without quoting the input (the
    /// caller shows it, escaped, if it wants).
    pub fn parse(text: &str) -> Result<Target, String> {
        if text.is_empty() || text == "all" {
            return Ok(Target::All);
        }
        if let Some(key) = SlotKey::parse(text) {
            return Ok(Target::Worker(key));
        }
        check_group_name(text).map_err(|_| FORMS.to_string())?;
        Ok(Target::Group(text.to_string()))
    }

    /// The group this target lies in, if it is narrower than everything.
    pub fn group(&self) -> Option<&str> {
        match self {
            Target::All => None,
            Target::Group(group) => Some(group),
            Target::Worker(key) => Some(&key.group),
        }
    }

    /// The worker this target names, if it names one.
    pub fn worker(&self) -> Option<&SlotKey> {
        match self {
            Target::Worker(key) => Some(key),
            _ => None,
        }
    }

    /// The wire form: everything is the empty target.
    pub fn wire(&self) -> String {
        match self {
            Target::All => String::new(),
            other => other.to_string(),
        }
    }
}

/// `all`, the group name, or the worker id: how people write it.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Group(group) => f.write_str(group),
            Target::Worker(key) => key.fmt(f),
        }
    }
}

/// The longest group name: it becomes part of unit names and worker ids.
pub const MAX_GROUP_NAME: usize = 64;

/// Group names become worker ids (`<group>-<n>`) and unit names, so they
/// are kept to characters every one of those accepts, and must not end in
/// `-<digits>`, which would make `web-1` both a group and a worker id.
/// `all` names every worker, so no group may take it.
pub fn check_group_name(name: &str) -> Result<(), String> {
    if name == "all" {
        return Err("group name \"all\" is reserved: it names every worker".into());
    }
    let valid_chars = !name.is_empty()
        && name.len() <= MAX_GROUP_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    if !valid_chars {
        return Err(format!(
            "group name {name:?} must be 1 to {MAX_GROUP_NAME} characters of A-Z, a-z, 0-9, '_' and '-', \
             not starting with '-'"
        ));
    }
    if let Some((_, tail)) = name.rsplit_once('-') {
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("group name {name:?} must not end in -<number>: that is the form of a worker id"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_to_one_kind() {
        assert_eq!(Target::parse("").unwrap(), Target::All);
        assert_eq!(Target::parse("all").unwrap(), Target::All);
        assert_eq!(Target::parse("web").unwrap(), Target::Group("web".into()));
        assert_eq!(Target::parse("web-3").unwrap(), Target::Worker(SlotKey::new("web", 3)));
        assert_eq!(Target::parse("my-web-12").unwrap(), Target::Worker(SlotKey::new("my-web", 12)));
        assert_eq!(Target::parse("web-x").unwrap(), Target::Group("web-x".into()));
    }

    #[test]
    fn what_is_no_target_is_refused() {
        for bad in ["-3", "web/3", "web 3", "we\u{1b}b", "-web", "web-99999999999"] {
            assert!(Target::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Target::parse(&"a".repeat(MAX_GROUP_NAME + 1)).is_err());
        assert!(Target::parse(&"a".repeat(MAX_GROUP_NAME)).is_ok());
        assert!(check_group_name("all").is_err(), "all is every worker, never a group");
    }

    #[test]
    fn wire_and_display_round_trip() {
        for text in ["all", "web", "web-3"] {
            let target = Target::parse(text).unwrap();
            assert_eq!(target.to_string(), text);
            assert_eq!(Target::parse(&target.wire()).unwrap(), target);
        }
        assert_eq!(Target::All.wire(), "");
        assert_eq!(Target::parse("web-3").unwrap().group(), Some("web"));
    }
}
