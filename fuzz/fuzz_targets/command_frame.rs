//! Bytes as a client writes them to the command socket, taken the way
//! `command::connection` takes them: frames cut by the socket's codec, each
//! decoded as a `Request`, checked against the bounds and the tiers,
//! described for the audit, and rendered as the audit record a refused
//! request gets (the record carries every field a client controls). Whatever arrives, nothing panics, every record is one
//! line of fourteen fields, its JSON parses back, and its size stays within
//! the bound the audit schema states.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_util::codec::Decoder;

use corral::audit::{self, Actor, Record, RecordResult};
use corral::command::authorise::{self, Policy, Tier};
use corral::command::peer::Peer;
use corral::command::validate;
use corral::config::{AccessLists, Limits, DEFAULT_MAX_AUDIT_ARGUMENT};
use corral::frame;
use corral::proto::{request::Command, Request};

const AT: &str = "2026-11-23T12:00:00.000000Z";

fuzz_target!(|data: &[u8]| {
    let mut codec = frame::codec(frame::MAX_COMMAND_FRAME);
    let mut buffer = BytesMut::from(data);
    // A codec error (a length over the maximum) closes the connection; so
    // does the end of the stream, inside a frame or not.
    while let Ok(Some(body)) = codec.decode(&mut buffer) {
        assert!(body.len() <= frame::MAX_COMMAND_FRAME);
        let Ok(request) = Request::decode(body) else { return };
        serve(&request);
    }
    let _ = codec.decode_eof(&mut buffer);
});

/// What `connection` does with a decoded request before the supervisor
/// sees it, step for step.
fn serve(request: &Request) {
    let Some(command) = &request.command else { return };
    let limits = Limits::default();
    if let Err(why) = validate::check(command, &limits) {
        // A refusal echoes at most a short, escaped part of what was sent.
        assert!(why.len() <= 1024, "a refusal of {} bytes", why.len());
        assert!(!why.chars().any(char::is_control), "{why:?}");
    }
    let described = authorise::describe(command);
    let outsider = Peer { uid: 1000, gid: 1000, groups: vec![100], pid: Some(4242), comm: None };
    let policy = Policy::new(AccessLists { operate_uids: vec![1000], ..AccessLists::default() }, 0);
    if let Ok(tier) = policy.check(&outsider, &described) {
        assert!(tier >= described.tier);
        assert!(tier < Tier::Admin, "the operate tier got admin");
    }
    audit(request.id, command);
}

/// The record of a request, as every sink renders it.
fn audit(id: u64, command: &Command) {
    let described = authorise::describe(command);
    let reason = format!("cannot {}: {}", described.command, described.arguments.join(" "));
    let record = Record {
        session: 1,
        request_id: id,
        group: described.group,
        worker: described.worker,
        command: described.command.to_string(),
        arguments: described.arguments,
        actor: Actor {
            uid: Some(1000),
            gid: Some(1000),
            pid: Some(4242),
            user: Some("fuzz".into()),
            comm: Some("fuzz".into()),
            ..Actor::default()
        },
        socket: "/run/corral/corrald.sock".into(),
        result: RecordResult::Denied,
        reason,
    };
    let shown = record.shown(DEFAULT_MAX_AUDIT_ARGUMENT);
    let bound = audit::max_record_len(DEFAULT_MAX_AUDIT_ARGUMENT);

    let line = shown.text_line(AT);
    assert!(line.len() <= bound, "a text record of {} bytes", line.len());
    assert!(!line.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']), "{line:?}");
    assert_eq!(line.split('\t').count(), 14, "{line:?}");
    let slots = line.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(s, _)| s.split(' ').count());
    assert_eq!(slots, Some(4), "{line:?}");

    // As the writer renders it, with its chain link.
    let json = shown.json_line(AT, &"0".repeat(64));
    assert!(json.len() <= bound, "a JSON record of {} bytes", json.len());
    let back: serde_json::Value = serde_json::from_str(&json).expect("a record's JSON parses");
    assert_eq!(back["request_id"].as_u64(), Some(id));
    let arguments = back["arguments"].as_array().expect("arguments are a list");
    assert!(arguments.len() <= audit::MAX_ARGUMENTS + 1);
}
