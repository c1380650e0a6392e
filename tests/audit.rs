//! The audit trail of the command socket, as the files on disk and the
//! clients show it. (The journal sink and a non-root caller are proven in
//! the real-systemd suite, tests/service.rs.)

mod common;

use std::path::{Path, PathBuf};

use common::*;
use corral::proto::{self, request::Command as Cmd, Status};

fn web(count: u32) -> String {
    demo_group("web", count, &[], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_before_and_after_a_command_in_both_files() {
    let mut c = Corrald::new("");
    let text = c.dir.path().join("audit/new/corral.log");
    let json = c.dir.path().join("audit/new/corral.jsonl");
    c.write_config(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\naudit_sync = true\n{}",
        web(2)
    ));
    c.start();
    c.wait_ready("web", 2).await;
    let (code, out, err) = c.ctl(&["stop", "web-1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // Without a journal (as on the CI host) both records are counted as
    // missed by it, and the command ran all the same.
    let status = c.status().await;
    let missed = if status.output_sink == "journal" { 0 } else { 2 };
    assert_eq!(status.audit_journal_missed, missed, "{status:?}");

    let text_lines = lines(&text);
    assert_eq!(text_lines.len(), 2, "accepted, then ok; status is not audited: {text_lines:?}");
    let uid = nix::unistd::getuid().as_raw();
    // [session request group worker]: corralctl's request is its id 1.
    assert!(text_lines[0].contains(" 1 web web-1]\tAUDIT\tStop(target=web-1, hard=false)\tat="), "{}", text_lines[0]);
    assert!(text_lines[0].contains(&format!("\tactor_uid={uid}\t")), "{}", text_lines[0]);
    assert!(text_lines[0].contains("\tactor_comm=corralctl\t"), "{}", text_lines[0]);
    assert!(text_lines[0].ends_with("\tresult=accepted\treason=-"), "{}", text_lines[0]);
    let slots = |l: &str| l.split(']').next().unwrap().to_string();
    assert_eq!(slots(&text_lines[1]), slots(&text_lines[0]), "the outcome links to its request");
    assert!(text_lines[1].contains("\tresult=ok\t"), "{}", text_lines[1]);

    let records = json_lines(&json);
    assert_eq!(records.len(), 3, "anchor, accepted, ok: {records:?}");
    assert_eq!(records[0]["record"], "anchor");
    assert_eq!(records[1]["result"], "accepted");
    assert_eq!(records[1]["actor"]["comm"], "corralctl");
    assert_eq!(records[1]["actor"]["uid"], uid);
    assert_eq!(records[1]["schema_version"], 2);
    assert_eq!(records[1]["actor"]["kind"], "client");
    assert_eq!(records[2]["session"], records[1]["session"]);
    assert_eq!(records[2]["request_id"], 1);
    assert_eq!(records[2]["result"], "ok");

    for (path, want) in [(&text, 0o640), (&json, 0o640), (&text.parent().unwrap().to_path_buf(), 0o750)] {
        assert_eq!(mode(path), want, "{}", path.display());
    }
    assert_eq!(mode(&c.dir.path().join("audit")), 0o750, "every directory created is 0750");

    // logrotate moves the files away; reopen starts new ones, 0640, and the
    // new JSON file's anchor links to the old file's last record.
    let (old_text, old_json) = (text.with_extension("log.1"), json.with_extension("jsonl.1"));
    std::fs::rename(&text, &old_text).unwrap();
    std::fs::rename(&json, &old_json).unwrap();
    let (code, out, err) = c.ctl(&["audit", "reopen"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(mode(&text), 0o640);
    assert_eq!(mode(&json), 0o640);
    let new = json_lines(&json);
    assert_eq!(new[0]["record"], "anchor");
    let old_last = lines(&old_json).pop().unwrap();
    assert_eq!(new[0]["prev_sha256"], corral::audit::chain::hash(&old_last));
    assert_eq!(new[1]["command"], "AuditReopen", "the reopen itself is audited in the new file: {new:?}");
    for file in [&old_json, &json] {
        let (ok, out) = run(CORRALCTL, &["audit", "verify", file.to_str().unwrap()]);
        assert!(ok && out.contains("intact"), "{out}");
    }
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_outside_the_allow_list_is_refused_and_audited_as_denied() {
    needs_root("the refused caller is another user");
    let mut c = Corrald::new("");
    let text = c.dir.path().join("audit.log");
    let json = c.dir.path().join("audit.jsonl");
    let (outsider, _) = OUTSIDER;
    let listed = outsider - 1;
    c.write_config(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\ncommand_allowed_uids = [{listed}]\n{}{}",
        c.share_with_outsider(),
        web(2)
    ));
    c.start();
    let (ok, out) = c.ctl_as(OUTSIDER, &["workers"]);
    assert!(!ok, "even a listing is refused: {out}");
    assert!(out.contains("not in command_allowed_uids"), "{out}");
    // The workers, seen from outside: corrald's children.
    let children = || {
        let mut pids = children_of(c.pid());
        pids.sort();
        pids
    };
    let before = children();
    assert_eq!(before.len(), 2, "{before:?}");
    let (ok, out) = c.ctl_as(OUTSIDER, &["stop", "web"]);
    assert!(!ok);
    assert!(out.contains("FAILURE: denied: uid 65534"), "{out}");
    let text_lines = lines(&text);
    assert_eq!(text_lines.len(), 2, "{text_lines:?}");
    assert!(text_lines[1].contains("AUDIT\tStop(target=web, hard=false)"), "{}", text_lines[1]);
    assert!(text_lines[1].contains("\tactor_uid=65534\t"), "{}", text_lines[1]);
    assert!(text_lines[1].contains("\tresult=denied\treason=uid "), "{}", text_lines[1]);
    let records = json_lines(&json);
    assert_eq!(records.last().unwrap()["result"], "denied");
    assert_eq!(children(), before, "the refused stop must not have touched the workers");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_that_cannot_be_written_refuses_the_command_and_touches_nothing() {
    let mut c = Corrald::new(&format!("audit_logs_target = \"/dev/full\"\n{}", web(2)));
    c.start();
    c.wait_ready("web", 2).await;
    let before = c.pids("web").await;
    let (_, last) = c.call(stop("web", true)).await;
    assert_eq!(last.status(), Status::Failure);
    assert!(last.message.contains("/dev/full (audit_logs_target)"), "names the sink: {last:?}");
    assert!(last.message.contains("nothing was done"), "{last:?}");
    assert_eq!(c.pids("web").await, before, "the hard stop must not have run");
    for pid in before.values() {
        assert!(pid_alive(*pid));
    }
    assert_eq!(c.status().await.groups[0].ready, 2, "status requests are still served");
    assert_eq!(mode(Path::new("/dev/full")) & 0o777, 0o666, "a device's mode is never changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audit_failure_continue_the_command_runs_anyway() {
    let mut c = Corrald::new(&format!("audit_logs_target = \"/dev/full\"\naudit_failure = \"continue\"\n{}", web(2)));
    c.start();
    c.wait_ready("web", 2).await;
    let (_, last) = c.call(stop("web-1", false)).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    assert_eq!(c.pids("web").await.len(), 1, "web-1 was stopped");
    assert!(c.stderr().contains("AUDIT RECORD LOST"), "the loss is logged loudly: {}", c.stderr_tail());
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (the README's test command, tests/run-all, sets it)"
)]
async fn a_hanging_user_name_lookup_does_not_delay_another_clients_status() {
    let mut c = Corrald::new(&web(2));
    c.env.push(("CORRAL_FAULT_HANG_USER_LOOKUP".into(), "1".into()));
    c.start();
    c.wait_ready("web", 2).await;
    // A privileged request needs the caller's user name for its record;
    // the (injected) NSS backend never answers.
    let mut slow = c.client().await;
    let audited =
        tokio::spawn(
            async move { slow.call(Cmd::Scale(proto::Scale { group: "web".into(), count: 2 }), |_| {}).await },
        );
    let status = c.status().await;
    assert_eq!(status.groups[0].ready, 2);
    assert!(!audited.is_finished(), "the audited request was answered before the lookup could time out");
    let answer = audited.await.unwrap().unwrap();
    assert_eq!(answer.status(), Status::Ok, "after the lookup timed out, the record is written without the name");
}

#[tokio::test]
async fn verify_names_the_record_after_an_edit_a_deletion_and_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let config = corral::config::AuditConfig { json_target: Some(path.clone()), ..Default::default() };
    let auditor = corral::audit::Auditor::open(config).unwrap();
    for id in 1..=5 {
        let record = corral::audit::Record {
            session: 1,
            request_id: id,
            group: Some("web".into()),
            worker: None,
            command: "Stop".into(),
            arguments: vec!["target=web".into()],
            actor: corral::audit::Actor { uid: Some(0), gid: Some(0), pid: Some(1), ..corral::audit::Actor::default() },
            socket: "/run/corral/corrald.sock".into(),
            result: corral::audit::RecordResult::Accepted,
            reason: String::new(),
        };
        auditor.write(record).await.unwrap();
    }
    let good = lines(&path);
    let check = |lines: &[String]| {
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        run(CORRALCTL, &["audit", "verify", path.to_str().unwrap()])
    };
    let (ok, out) = check(&good);
    assert!(ok && out.contains("intact, 5 records"), "{out}");

    let mut edited = good.clone();
    edited[2] = edited[2].replace("target=web", "target=db");
    let (ok, out) = check(&edited);
    assert!(!ok && out.contains("line 4 (request 3)"), "an edit of line 3 shows at line 4: {out}");

    let mut deleted = good.clone();
    deleted.remove(2);
    let (ok, out) = check(&deleted);
    assert!(!ok && out.contains("line 3 (request 3)"), "{out}");

    let mut swapped = good.clone();
    swapped.swap(2, 3);
    let (ok, out) = check(&swapped);
    assert!(!ok && out.contains("line 3 (request 3)"), "{out}");
}

/// `(session, request_id, result)` of every audit record, in file order.
fn json_trail(path: &Path) -> Vec<(u64, u64, String)> {
    json_lines(path)
        .iter()
        .filter(|r| r["record"] == "audit")
        .map(|r| {
            (r["session"].as_u64().unwrap(), r["request_id"].as_u64().unwrap(), r["result"].as_str().unwrap().into())
        })
        .collect()
}

fn text_trail(path: &Path) -> Vec<(u64, u64, String)> {
    lines(path)
        .iter()
        .map(|l| {
            let mut slots = l.trim_start_matches('[').split(' ');
            let session = slots.next().unwrap().parse().unwrap();
            let request = slots.next().unwrap().parse().unwrap();
            let result = l.split('\t').find_map(|f| f.strip_prefix("result=")).unwrap();
            (session, request, result.to_string())
        })
        .collect()
}

/// corrald with `count` ready web workers and both audit files, synced;
/// with fault injection each batch of records is written `slow_ms` late.
/// Returns corrald, the text log and the JSON log.
async fn slowly_audited_web(count: u32, slow_ms: u32) -> (Corrald, PathBuf, PathBuf) {
    let mut c = Corrald::new("");
    let (text, json) = (c.dir.path().join("audit.log"), c.dir.path().join("audit.jsonl"));
    c.write_config(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\naudit_sync = true\n{}",
        web(count)
    ));
    c.env.push(("CORRAL_FAULT_SLOW_AUDIT_MS".into(), slow_ms.to_string()));
    c.start();
    c.wait_ready("web", count).await;
    (c, text, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_many_concurrent_clients_every_answered_command_has_its_records_in_both_files_in_order() {
    // With fault injection every batch waits first, as on a slow disk: an
    // answer sent before its record was written would show.
    let (mut c, text, json) = slowly_audited_web(2, 20).await;
    const CLIENTS: u64 = 32;
    const EACH: u64 = 20;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut client = c.client().await;
        clients.spawn(async move {
            let mut answered = 0;
            for _ in 0..EACH {
                let start = Cmd::Start(proto::Start { target: "web-1".into() });
                let last = client.call(start, |_| {}).await.unwrap();
                assert_eq!(last.status(), Status::Ok, "{last:?}");
                answered += 1;
            }
            answered
        });
    }
    let answered: u64 = clients.join_all().await.into_iter().sum();
    assert_eq!(answered, CLIENTS * EACH);

    // Read as soon as the last answer came: each answer went out after its
    // outcome record was written.
    let trail = json_trail(&json);
    assert_eq!(trail.len() as u64, 2 * CLIENTS * EACH, "an accepted and an ok record per command");
    assert_eq!(text_trail(&text), trail, "both files hold the same records in the same order");
    assert_eq!(corral::audit::chain::verify(&json), Ok(trail.len()));
    let mut sessions: std::collections::BTreeMap<u64, Vec<(u64, String)>> = Default::default();
    for (session, request, result) in trail {
        sessions.entry(session).or_default().push((request, result));
    }
    assert_eq!(sessions.len() as u64, CLIENTS);
    let want: Vec<(u64, String)> =
        (1..=EACH).flat_map(|id| [(id, "accepted".to_string()), (id, "ok".to_string())]).collect();
    for (session, records) in &sessions {
        assert_eq!(records, &want, "session {session}: each request accepted, then ok, in the order sent");
    }
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (the README's test command, tests/run-all, sets it)"
)]
async fn no_stop_takes_effect_before_its_record_is_in_both_files() {
    let (mut c, text, json) = slowly_audited_web(8, 100).await;
    // The first effect of a soft stop that anyone can see: the worker logs
    // its exit. Whenever one shows, its stop's record must already be in
    // both files.
    let (log, text_path, json_path) = (c.log.clone(), text.clone(), json.clone());
    let watcher = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 8 {
            assert!(std::time::Instant::now() < deadline, "only {seen:?} exited");
            for worker in
                lines(&log).iter().filter_map(|l| l.strip_prefix("exit ")?.split(' ').next().map(String::from))
            {
                if !seen.insert(worker.clone()) {
                    continue;
                }
                let accepted = format!("\tAUDIT\tStop(target={worker}, hard=false)\t");
                assert!(
                    lines(&text_path).iter().any(|l| l.contains(&accepted) && l.ends_with("result=accepted\treason=-")),
                    "{worker} exited before its stop was in the text log"
                );
                let in_json = json_lines(&json_path)
                    .iter()
                    .any(|r| r["arguments"][0] == format!("target={worker}") && r["result"] == "accepted");
                assert!(in_json, "{worker} exited before its stop was in the JSON log");
            }
            std::thread::yield_now();
        }
    });
    let mut stops = tokio::task::JoinSet::new();
    for i in 1..=8 {
        let mut client = c.client().await;
        stops.spawn(async move { client.call(stop(&format!("web-{i}"), false), |_| {}).await.unwrap() });
    }
    for last in stops.join_all().await {
        assert_eq!(last.status(), Status::Ok, "{last:?}");
    }
    watcher.join().unwrap();
    c.shutdown_ok().await;
}
