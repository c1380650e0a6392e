//! The events stream against a real corrald: what a subscriber sees of a
//! killed worker, of a request and of a reload, what its filter lets
//! through, that one that does not read holds nothing up and is told what
//! it missed, that a replay of any size gets at most its queue, that a
//! shutdown ends the stream with OK, and that
//! `corralctl events --json` prints JSON lines live.

mod common;

use std::process::{Command, Stdio};

use common::*;
use corral::ctl::Client;
use corral::proto::{self, event::Kind, request::Command as Cmd, response::Content, Status};

/// Without scopes whatever the host runs: the events here are the same.
const NO_SCOPES: &str = "scopes = \"off\"\n";

fn subscribe(target: &str) -> Cmd {
    Cmd::Subscribe(proto::Subscribe { target: target.into(), replay: 0 })
}

/// A subscription on a connection of its own, once corrald said
/// "subscribed": nothing emitted after that is missed.
async fn subscribed(c: &Corrald, target: &str) -> Client {
    subscribed_with(c, Cmd::Subscribe(proto::Subscribe { target: target.into(), replay: 0 })).await
}

async fn subscribed_with(c: &Corrald, request: Cmd) -> Client {
    let mut client = c.client().await;
    client.send(request).await.expect("send Subscribe");
    let first = next_answer(&mut client).await;
    assert_eq!((first.status(), first.message.as_str()), (Status::Processing, "subscribed"), "{first:?}");
    client
}

/// The next event of a subscription; fails on its final answer.
async fn next_event(client: &mut Client) -> proto::Event {
    let r = next_answer(client).await;
    match (r.status(), r.content) {
        (Status::Processing, Some(Content::Event(event))) => event,
        (status, content) => panic!("not an event: {status:?} {:?} {content:?}", r.message),
    }
}

/// Events up to and including the first that `last` accepts.
async fn events_until(client: &mut Client, last: impl Fn(&proto::Event) -> bool) -> Vec<proto::Event> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(client).await;
        let done = last(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// Events until each of `wanted` has matched one. A request's event comes
/// as its answer goes out, which may be before the events of the workers it
/// changed (those come from the supervisor, the answer from the workers'
/// own tasks), so a test waits for all it expects, in whatever order.
async fn events_until_all(client: &mut Client, wanted: &[&dyn Fn(&proto::Event) -> bool]) -> Vec<proto::Event> {
    let mut seen: Vec<proto::Event> = Vec::new();
    while !wanted.iter().all(|w| seen.iter().any(w)) {
        seen.push(next_event(client).await);
    }
    seen
}

fn kind(event: &proto::Event) -> &Kind {
    event.kind.as_ref().expect("every event has a kind")
}

fn is_request(event: &proto::Event, command: &str) -> bool {
    matches!(kind(event), Kind::Request(r) if r.command == command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_seen_exiting_scheduled_spawned_and_ready_in_order() {
    let mut c = Corrald::new(&format!(
        "{NO_SCOPES}{}",
        demo_group("web", 2, &[], "restart = \"always\"\nrestart_backoff_initial = \"150ms\"\n")
    ));
    c.start();
    c.wait_ready("web", 2).await;
    let old = c.pids("web").await["web-1"];
    let mut events = subscribed(&c, "web-1").await;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let seen = events_until(&mut events, |e| matches!(kind(e), Kind::Ready(_))).await;
    let kinds: Vec<&Kind> = seen.iter().map(kind).collect();
    let [Kind::Exited(exited), Kind::RestartScheduled(scheduled), Kind::Spawned(spawned), Kind::Ready(ready)] =
        kinds.as_slice()
    else {
        panic!("want exited, restart scheduled, spawned, ready; saw {seen:?}");
    };
    assert_eq!((exited.pid, exited.signal.as_str(), exited.code), (old, "SIGKILL", None), "{exited:?}");
    assert_eq!(exited.description, "killed by SIGKILL");
    assert_eq!(scheduled.delay_ms, 150);
    assert!(!spawned.adopted && spawned.pid != old, "{spawned:?}");
    assert_eq!(ready.pid, spawned.pid);
    assert!(seen.iter().all(|e| e.group == "web" && e.worker == "web-1" && e.time_ms > 0), "{seen:?}");
    assert_eq!(c.pids("web").await["web-1"], spawned.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_lets_through_its_group_and_a_request_names_its_caller() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}{}", demo_group("a", 1, &[], ""), demo_group("b", 1, &[], "")));
    c.start();
    c.wait_ready("a", 1).await;
    c.wait_ready("b", 1).await;
    let mut events = subscribed(&c, "b").await;

    // a's restart is over, its events all emitted, before b's begins.
    for target in ["a-1", "b-1"] {
        let (_, last) = c.call(Cmd::Restart(proto::Restart { target: target.into(), ..Default::default() })).await;
        assert_eq!(last.status(), Status::Ok, "{last:?}");
    }
    let seen = events_until_all(
        &mut events,
        &[
            &|e| is_request(e, "Restart"),
            &|e| matches!(kind(e), Kind::Exited(_)),
            &|e| matches!(kind(e), Kind::Spawned(_)),
            &|e| matches!(kind(e), Kind::Ready(_)),
        ],
    )
    .await;
    assert!(seen.iter().all(|e| e.group == "b"), "only b's events pass the filter: {seen:?}");
    let done = seen.iter().find(|e| is_request(e, "Restart")).unwrap();
    let Kind::Request(request) = kind(done) else { unreachable!() };
    assert_eq!(done.worker, "b-1");
    assert_eq!(request.uid, nix::unistd::geteuid().as_raw(), "{request:?}");
    assert_eq!(request.outcome, "ok", "{request:?}");
    assert!(request.arguments.contains(&"target=b-1".to_string()), "{request:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_shows_the_groups_it_added_and_removed() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}{}", demo_group("a", 1, &[], ""), demo_group("b", 1, &[], "")));
    c.start();
    c.wait_ready("a", 1).await;
    let mut events = subscribed(&c, "").await;

    c.write_config(&format!("{NO_SCOPES}{}{}", demo_group("b", 1, &[], ""), demo_group("c", 1, &[], "")));
    let (_, last) = c.call(Cmd::ReloadConfig(proto::ReloadConfig {})).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");

    let seen = events_until_all(
        &mut events,
        &[
            &|e| is_request(e, "ReloadConfig"),
            &|e| matches!(kind(e), Kind::Reloaded(_)),
            &|e| e.group == "c" && matches!(kind(e), Kind::GroupState(s) if s.to == "running"),
            &|e| e.group == "a" && matches!(kind(e), Kind::GroupState(s) if s.to.is_empty()),
        ],
    )
    .await;
    let reloaded = seen
        .iter()
        .find_map(|e| match kind(e) {
            Kind::Reloaded(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no reload event among {seen:?}"));
    assert_eq!(
        (reloaded.added.as_slice(), reloaded.removed.as_slice()),
        (&["c".to_string()][..], &["a".to_string()][..])
    );
    assert!(reloaded.changed.is_empty(), "{reloaded:?}");
    let states: Vec<(&str, &str, &str)> = seen
        .iter()
        .filter_map(|e| match kind(e) {
            Kind::GroupState(s) => Some((e.group.as_str(), s.from.as_str(), s.to.as_str())),
            _ => None,
        })
        .collect();
    assert!(states.contains(&("c", "", "running")), "c appears: {states:?}");
    assert!(states.iter().any(|&(g, _, to)| g == "a" && to.is_empty()), "a goes: {states:?}");
}

/// A subscriber that does not read: corrald answers others and stops a
/// worker all the same, the events that do not fit its queue are dropped,
/// and once it reads it is told exactly how many, between what it got
/// before the gap and after. Then a shutdown ends the stream with OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_holds_nothing_up_and_is_told_what_it_missed() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}[limits]\nevent_queue = 4\n{}", demo_group("w", 1, &[], "")));
    c.start();
    c.wait_ready("w", 1).await;
    let mut stuck = subscribed(&c, "w-1").await;

    // Each of these is refused (no scopes) after it is accepted: one
    // request event each, of some 8 KiB, so that a few dozen fill what the
    // socket and corrald's answer queue hold before the subscription's own
    // queue of 4.
    const FLOOD: u64 = 300;
    let properties: Vec<String> = (0..32).map(|n| format!("X{n}={}", "v".repeat(240))).collect();
    let mut client = c.client().await;
    for _ in 0..FLOOD {
        let limit = Cmd::Limit(proto::Limit { target: "w-1".into(), properties: properties.clone() });
        let last = client.call(limit, |_| {}).await.expect("limit");
        assert_eq!(last.status(), Status::Failure, "{last:?}");
    }
    let status = tokio::time::timeout(PATIENCE, c.status()).await.expect("status answers while a subscriber is stuck");
    assert_eq!(group(&status, "w").ready, 1, "{status:?}");
    let (_, stopped) = tokio::time::timeout(PATIENCE, c.call(stop("w-1", false))).await.expect("a stop is not held up");
    assert_eq!(stopped.status(), Status::Ok, "{stopped:?}");
    // The stop adds w-1's exit and the stop's own request event.
    let emitted = FLOOD + 2;

    let (mut delivered, mut dropped, mut gaps) = (0, 0, Vec::new());
    while delivered + dropped < emitted {
        let event = next_event(&mut stuck).await;
        match kind(&event) {
            Kind::Lagged(l) => {
                gaps.push(delivered);
                dropped += l.dropped;
            }
            Kind::Request(_) | Kind::Exited(_) => delivered += 1,
            other => panic!("w-1 had no other event: {other:?}"),
        }
    }
    assert_eq!(delivered + dropped, emitted, "each event arrives or is counted, once");
    assert!(dropped > 0 && !gaps.is_empty(), "a subscriber that did not read lost events: {delivered} arrived");
    assert!(gaps[0] >= 4, "the queue's 4 events came before the gap: {gaps:?}");
    let status = c.status().await;
    assert_eq!(status.subscribers, 1, "{status:?}");
    assert_eq!(status.events_dropped.get("queue_full"), Some(&dropped), "counted by reason: {status:?}");

    c.call(Cmd::Shutdown(proto::Shutdown {})).await;
    let corrald = next_event(&mut stuck).await;
    assert!(matches!(kind(&corrald), Kind::Corrald(s) if s.state == "shutting_down"), "{corrald:?}");
    let last = final_answer(&mut stuck).await;
    assert_eq!(last.status(), Status::Ok, "the stream ends with OK: {last:?}");
    assert_eq!(c.wait_exit(), Some(0), "{}", c.stderr_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_ends_the_stream_with_ok_and_the_new_corrald_serves_subscriptions() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}", demo_group("web", 1, &[], "")));
    c.start();
    c.wait_ready("web", 1).await;
    let pid = c.pids("web").await["web-1"];
    let mut events = subscribed(&c, "").await;
    let (code, out, err) = c.ctl(&["upgrade"]);
    assert_eq!(code, Some(0), "{out}{err}\n{}", c.stderr_tail());
    let upgrading = next_event(&mut events).await;
    assert!(matches!(kind(&upgrading), Kind::Corrald(s) if s.state == "upgrading"), "{upgrading:?}");
    let last = final_answer(&mut events).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    // The same process, its workers taken over before it served the
    // socket: a subscription that asks for a replay is told of the
    // adoption, then sees the worker that ran before the upgrade exit.
    c.wait_stderr("the new corrald to adopt the worker", |log| {
        log.contains("adopted the workers of an earlier corrald")
    })
    .await;
    let mut again = subscribed_with(&c, Cmd::Subscribe(proto::Subscribe { target: "web-1".into(), replay: 16 })).await;
    let replayed = events_until(&mut again, |e| matches!(kind(e), Kind::Corrald(s) if s.state == "starting")).await;
    assert!(replayed.iter().all(|e| e.replayed), "{replayed:?}");
    let adopted = replayed.iter().find_map(|e| match kind(e) {
        Kind::Spawned(s) if e.worker == "web-1" => Some(*s),
        _ => None,
    });
    assert_eq!(adopted, Some(proto::WorkerSpawned { pid, adopted: true }), "{replayed:?}");
    // Then ready, as a forked worker would be (no scope here, so no placed).
    let web1: Vec<&Kind> = replayed.iter().filter(|e| e.worker == "web-1").map(kind).collect();
    assert!(matches!(web1.as_slice(), [Kind::Spawned(_), Kind::Ready(r)] if r.pid == pid), "{replayed:?}");
    let (_, stopped) = c.call(stop("web-1", false)).await;
    assert_eq!(stopped.status(), Status::Ok, "{stopped:?}");
    events_until_all(
        &mut again,
        &[&|e| is_request(e, "Stop"), &|e| matches!(kind(e), Kind::Exited(x) if x.pid == pid)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_bounded() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}[limits]\nmax_subscribers = 1\n"));
    c.start();
    let _first = subscribed(&c, "").await;
    let (_, refused) = c.call(subscribe("")).await;
    assert_eq!(refused.status(), Status::Failure, "{refused:?}");
    assert!(refused.message.contains("limits.max_subscribers"), "{refused:?}");
    let (_, bad) = c.call(subscribe("no/such")).await;
    assert_eq!(bad.status(), Status::Failure, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_any_size_gets_at_most_the_subscriber_s_queue() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}[limits]\nevent_queue = 2\n{}", demo_group("web", 3, &[], "")));
    c.start();
    c.wait_ready("web", 3).await;
    // Three spawned and three ready were kept; the queue holds two.
    let mut greedy =
        subscribed_with(&c, Cmd::Subscribe(proto::Subscribe { target: String::new(), replay: u32::MAX })).await;
    let (_, stopped) = c.call(stop("web-1", false)).await;
    assert_eq!(stopped.status(), Status::Ok, "{stopped:?}");
    let first = [next_event(&mut greedy).await, next_event(&mut greedy).await];
    assert!(first.iter().all(|e| e.replayed), "{first:?}");
    let after = next_event(&mut greedy).await;
    assert!(!after.replayed, "a third replayed event past a queue of 2: {after:?}");
    assert!(c.status().await.groups.iter().any(|g| g.name == "web"), "corrald answers after the replay");
}

/// Lines of a child's stdout as they come, each within the test's patience.
fn line_reader(stdout: std::process::ChildStdout) -> impl FnMut() -> String {
    let rx = stdout_lines(stdout);
    move || rx.recv_timeout(PATIENCE).expect("a line from corralctl events in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corralctl_events_json_prints_json_lines_live_and_ends_with_the_final_answer() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}", demo_group("web", 1, &[], "")));
    c.start();
    c.wait_ready("web", 1).await;
    let mut events = KillOnDrop(
        Command::new(CORRALCTL)
            .args(["--socket", &path_str(&c.socket), "events", "web", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn corralctl events"),
    );
    let mut line = line_reader(events.0.stdout.take().unwrap());
    let parse = |l: &str| -> serde_json::Value { serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")) };
    let first = parse(&line());
    assert_eq!((first["status"].as_str(), first["message"].as_str()), (Some("PROCESSING"), Some("subscribed")));

    let (_, last) = c.call(Cmd::Restart(proto::Restart { target: "web-1".into(), ..Default::default() })).await;
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    let mut kinds = Vec::new();
    while !["exited", "spawned", "ready", "request"].iter().all(|want| kinds.contains(&want.to_string())) {
        let json = parse(&line());
        let event = &json["event"];
        assert_eq!(event["group"], "web", "{json}");
        assert!(event["time_ms"].as_u64().is_some_and(|t| t > 0), "{json}");
        let kind = event["kind"].as_str().unwrap_or_else(|| panic!("no kind: {json}")).to_string();
        if kind == "request" {
            assert_eq!((event["command"].as_str(), event["outcome"].as_str()), (Some("Restart"), Some("ok")), "{json}");
            assert_eq!(event["uid"].as_u64(), Some(u64::from(nix::unistd::geteuid().as_raw())), "{json}");
        }
        if kind == "ready" {
            assert!(event["pid"].as_u64().is_some_and(|p| p > 0), "{json}");
        }
        kinds.push(kind);
    }

    c.call(Cmd::Shutdown(proto::Shutdown {})).await;
    let last = loop {
        let json = parse(&line());
        if json["status"] != "PROCESSING" {
            break json;
        }
    };
    assert_eq!(last["status"], "OK", "{last}");
    assert!(wait_child(&mut events, "corralctl events").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_corralctl_events_cleanly() {
    let mut c = Corrald::new(NO_SCOPES);
    c.start();
    let mut events = KillOnDrop(
        Command::new(CORRALCTL)
            .args(["--socket", &path_str(&c.socket), "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corralctl events"),
    );
    let mut line = line_reader(events.0.stdout.take().unwrap());
    assert_eq!(line(), "subscribed");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(events.0.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_child(&mut events, "corralctl events after SIGINT");
    assert!(status.success(), "{status:?}");
    // corrald is none the worse: the subscription is gone, a new one fits.
    let _again = subscribed(&c, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_s_missed_pings_are_told_in_a_row_up_to_its_restart() {
    let ping = "stop_timeout = \"1s\"\n[groups.w.ping]\ninterval = \"200ms\"\nmisses = 3\n";
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}", demo_group("w", 1, &["--hang-after-ms", "3000"], ping)));
    c.start();
    c.wait_ready("w", 1).await;
    let mut client = subscribed(&c, "w").await;

    let seen = events_until(&mut client, |e| matches!(kind(e), Kind::Health(h) if !h.restart_reason.is_empty())).await;
    let health: Vec<&proto::HealthChanged> =
        seen.iter().filter_map(|e| if let Kind::Health(h) = kind(e) { Some(h) } else { None }).collect();
    let in_a_row: Vec<u32> = health.iter().map(|h| h.consecutive_failures).collect();
    assert_eq!(in_a_row, [1, 2, 3], "{health:#?}");
    for h in &health {
        assert_eq!((h.check.as_str(), h.passed), ("ping", false), "{h:?}");
        assert!(!h.message.is_empty(), "a failure says why: {h:?}");
    }
    assert!(health[2].restart_reason.starts_with("hung: missed 3 pings in a row"), "{:?}", health[2]);
    let last = seen.last().unwrap();
    assert_eq!((last.group.as_str(), last.worker.as_str()), ("w", "w-1"));

    // Then the restart, as any: exited, scheduled, a new process.
    events_until(&mut client, |e| matches!(kind(e), Kind::Spawned(_))).await;
}
