//! The fleet's rules on plain values: no process, no timer, no sleep. Time
//! is an `Instant` each call is given, so a test says exactly when each
//! exit happens.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::*;
use crate::config::{Config, Limits};
use crate::supervisor::state::{SavedGroup, SavedState, STATE_VERSION};
use crate::usage::sampler::{Snapshot, Usage};
use crate::usage::{OwnCgroup, Reading, Source};

fn config(text: &str) -> Config {
    Config::parse(text, Path::new("/etc/corral/corral.toml")).expect("a valid config")
}

fn fleet(text: &str) -> Fleet<()> {
    Fleet::new(&config(text))
}

fn key(id: &str) -> SlotKey {
    SlotKey::parse(id).expect("a worker id")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Forks every queued slot, as the actor would, each as generation `gen`
/// onwards started at `at`; returns the generations by worker id.
fn fork_all(fleet: &mut Fleet<()>, at: Instant, first_gen: u64) -> Vec<(SlotKey, u64)> {
    let mut forked = Vec::new();
    let mut generation = first_gen;
    while let Some(k) = fleet.next_to_fork() {
        let proc = Proc {
            generation,
            pid: 1000 + generation as u32,
            start_time: 0,
            started_at: SystemTime::UNIX_EPOCH,
            direct_output: false,
            started: at,
            placement_error: None,
            health: Default::default(),
            handle: (),
        };
        fleet.forked(&k, proc);
        forked.push((k, generation));
        generation += 1;
    }
    forked
}

fn state(fleet: &Fleet<()>, id: &str) -> &'static str {
    fleet.slot(&key(id)).expect("the slot exists").state.name()
}

fn shown(fleet: &Fleet<()>, group: &str) -> &'static str {
    fleet.group(group).expect("the group exists").shown().0
}

/// One worker crashing again and again, each time 10 ms after its start,
/// with the restart every delay asks for: the delays it is given.
fn crash_loop(text: &str, crashes: usize) -> (Fleet<()>, Vec<AfterExit>) {
    let mut f = fleet(text);
    f.start_waiting_groups();
    let mut now = Instant::now();
    let mut nexts = Vec::new();
    let mut generation = 1;
    for _ in 0..crashes {
        let forked = fork_all(&mut f, now, generation);
        let (k, g) = forked.first().cloned().expect("a slot to fork");
        generation = g + 1;
        now += ms(10);
        let exited = f.exited(&k, g, "exited with status 1".into(), false, now).expect("a live process");
        if let AfterExit::Restart { delay, token } = exited.next {
            now += delay;
            assert!(f.restart_due(&k, token), "the timer's token restarts it");
        }
        nexts.push(exited.next);
    }
    (f, nexts)
}

fn delays(nexts: &[AfterExit]) -> Vec<Duration> {
    nexts
        .iter()
        .filter_map(|n| match n {
            AfterExit::Restart { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect()
}

const LOOPING: &str = "[groups.w]\ncommand = \"w\"\nrestart = \"always\"\nrestart_backoff_initial = \"100ms\"\n\
                       restart_backoff_max = \"1s\"\nstart_limit_burst = 100\n";

#[test]
fn backoff_doubles_from_the_initial_delay_up_to_its_cap() {
    let (_, nexts) = crash_loop(LOOPING, 7);
    assert_eq!(delays(&nexts), [100, 200, 400, 800, 1000, 1000, 1000].map(ms));
}

#[test]
fn a_worker_that_ran_past_the_longest_backoff_starts_the_count_anew() {
    let mut f = fleet(LOOPING);
    f.start_waiting_groups();
    let start = Instant::now();
    let (k, g) = fork_all(&mut f, start, 1)[0].clone();
    let first = f.exited(&k, g, "crashed".into(), false, start + ms(10)).unwrap().next;
    let AfterExit::Restart { token, .. } = first else { panic!("{first:?}") };
    f.restart_due(&k, token);
    let (k, g) = fork_all(&mut f, start, 2)[0].clone();
    let second = f.exited(&k, g, "crashed".into(), false, start + ms(20)).unwrap().next;
    assert!(matches!(second, AfterExit::Restart { delay, .. } if delay == ms(200)), "{second:?}");
    let AfterExit::Restart { token, .. } = second else { unreachable!() };
    f.restart_due(&k, token);
    let long_ago = start + ms(30);
    let (k, g) = fork_all(&mut f, long_ago, 3)[0].clone();
    let third = f.exited(&k, g, "crashed".into(), false, long_ago + Duration::from_secs(1)).unwrap().next;
    assert!(matches!(third, AfterExit::Restart { delay, .. } if delay == ms(100)), "{third:?}");
}

/// The limit is a slot's own: slot 2's crash does not count toward slot
/// 1's, which fails the group at its fourth restart within the interval.
#[test]
fn a_slot_past_its_start_limit_fails_the_group_and_an_operator_start_clears_it() {
    let text = "[groups.w]\ncommand = \"w\"\ncount = 2\nrestart = \"always\"\nstart_limit_burst = 3\n\
                start_limit_interval = \"10s\"\nrestart_backoff_initial = \"1ms\"\nrestart_backoff_max = \"1ms\"\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let now = Instant::now();
    let forked = fork_all(&mut f, now, 1);
    let (w1, g1) = forked[0].clone();
    let (w2, g2) = forked[1].clone();
    // Slot 2 crashes once and waits out its backoff while slot 1 loops.
    let AfterExit::Restart { token: t2, .. } = f.exited(&w2, g2, "crashed".into(), false, now).unwrap().next else {
        panic!("the first crash restarts")
    };
    let mut generation = 10;
    for n in 0..3 {
        let next = f.exited(&w1, generation_of(&f, &w1).unwrap_or(g1), "crashed".into(), false, now).unwrap().next;
        let AfterExit::Restart { token, .. } = next else { panic!("crash {n} restarts: {next:?}") };
        assert!(f.restart_due(&w1, token));
        fork_all(&mut f, now, generation);
        generation += 10;
    }
    let last = f.exited(&w1, generation_of(&f, &w1).unwrap(), "crashed".into(), false, now).unwrap().next;
    let reason = "start limit hit: w-1 restarted 3 times within 10s".to_string();
    assert_eq!(last, AfterExit::GroupFailed { reason: reason.clone(), retry: None });
    assert_eq!(f.group("w").unwrap().phase, GroupPhase::Failed { reason: reason.clone(), retry: None });
    assert_eq!((state(&f, "w-1"), state(&f, "w-2")), ("failed", "failed"), "the slot in backoff fails too");
    assert!(!f.restart_due(&w2, t2), "a failed group restarts nothing");
    assert_eq!(f.group("w").unwrap().shown(), ("failed", reason));

    assert_eq!(f.start(&w1), StartStep::Wait, "an operator's start clears the failure");
    assert_eq!(f.group("w").unwrap().phase, GroupPhase::Active);
    assert_eq!(state(&f, "w-1"), "starting");
    let (k, g) = fork_all(&mut f, now, 100)[0].clone();
    let next = f.exited(&k, g, "crashed".into(), false, now).unwrap().next;
    assert!(matches!(next, AfterExit::Restart { .. }), "the limit counts anew: {next:?}");
}

/// A signal to a group's scope ends every worker at once (those that drain
/// exit 0): that is one restart of each, however many workers there are
/// beside the burst, and again each time.
#[test]
fn a_whole_group_exiting_at_once_is_one_restart_of_each_worker() {
    let text = "[groups.web]\ncommand = \"w\"\ncount = 10\nrestart = \"always\"\nstart_limit_burst = 5\n\
                start_limit_interval = \"10s\"\nrestart_backoff_initial = \"1ms\"\nrestart_backoff_max = \"1ms\"\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let mut now = Instant::now();
    let mut generation = 1;
    for round in 0..5 {
        let forked = fork_all(&mut f, now, generation);
        assert_eq!(forked.len(), 10, "round {round}");
        generation += 10;
        now += ms(100);
        for (n, (k, g)) in forked.into_iter().enumerate() {
            let clean = n % 2 == 0;
            let next = f.exited(&k, g, "signalled".into(), clean, now).unwrap().next;
            let AfterExit::Restart { token, .. } = next else { panic!("round {round}, {k}: {next:?}") };
            assert!(f.restart_due(&k, token));
        }
    }
    assert_eq!(shown(&f, "web"), "running");
    let forked = fork_all(&mut f, now, generation);
    let (k, g) = forked[3].clone();
    let next = f.exited(&k, g, "signalled".into(), false, now).unwrap().next;
    let reason = "start limit hit: web-4 restarted 5 times within 10s".to_string();
    assert_eq!(next, AfterExit::GroupFailed { reason, retry: None }, "the sixth restart of one slot");
}

/// systemd's window: it opens at a restart and counts until the interval
/// has passed since then; the next restart opens a new one. Clean exits
/// count under `always` (each is a start), and are never restarted, so
/// never counted, under `on-failure`.
#[test]
fn the_start_limit_window_opens_at_a_restart_and_counts_until_the_interval_passes() {
    let exits = |policy: &str, at_ms: &[(u64, bool)]| {
        let text = format!(
            "[groups.w]\ncommand = \"w\"\nrestart = \"{policy}\"\nstart_limit_burst = 2\n\
             start_limit_interval = \"1s\"\nrestart_backoff_initial = \"1ms\"\nrestart_backoff_max = \"1ms\"\n"
        );
        let mut f = fleet(&text);
        f.start_waiting_groups();
        let start = Instant::now();
        let mut nexts = Vec::new();
        for (generation, (at, clean)) in at_ms.iter().enumerate() {
            let forked = fork_all(&mut f, start, generation as u64 + 1);
            let Some((k, g)) = forked.first().cloned() else { break };
            let next = f.exited(&k, g, "exited".into(), *clean, start + ms(*at)).unwrap().next;
            if let AfterExit::Restart { token, .. } = &next {
                assert!(f.restart_due(&k, *token));
            }
            nexts.push(match next {
                AfterExit::Restart { .. } => "restart",
                AfterExit::GroupFailed { .. } => "failed",
                AfterExit::Down => "down",
                AfterExit::Stopped => "stopped",
            });
        }
        nexts
    };
    let crashes = |at: &[u64]| at.iter().map(|t| (*t, false)).collect::<Vec<_>>();
    assert_eq!(exits("always", &crashes(&[0, 500, 900])), ["restart", "restart", "failed"]);
    assert_eq!(exits("always", &crashes(&[0, 900, 1100, 1500])), ["restart", "restart", "restart", "restart"]);
    assert_eq!(
        exits("always", &crashes(&[0, 900, 1100, 1500, 2000])),
        ["restart"; 4].into_iter().chain(["failed"]).collect::<Vec<_>>()
    );
    assert_eq!(exits("always", &[(0, true), (10, true), (20, true)]), ["restart", "restart", "failed"]);
    assert_eq!(exits("on-failure", &[(0, false), (10, false), (20, true)]), ["restart", "restart", "down"]);
}

#[test]
fn a_timed_retry_starts_a_failed_group_again_with_its_limits_cleared() {
    let text = "[groups.w]\ncommand = \"w\"\ncount = 4\nrestart = \"on-failure\"\nstart_limit_burst = 1\n\
                start_limit_interval = \"10s\"\nstart_limit_retry = \"1min\"\nrestart_backoff_initial = \"1ms\"\n\
                restart_backoff_max = \"1ms\"\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let now = Instant::now();
    let forked = fork_all(&mut f, now, 1);
    let gen_of = |id: &str| forked.iter().find(|(k, _)| k.id() == id).map(|(k, g)| (k.clone(), *g)).unwrap();
    // w-4 is stopped by an operator, w-3 ends cleanly (on-failure leaves
    // it), w-1 crashes twice: the second crash is past its limit.
    let (w4, g4) = gen_of("w-4");
    assert!(matches!(f.stop(&w4), StopStep::Signal(())));
    assert_eq!(f.exited(&w4, g4, "stopped".into(), true, now).unwrap().next, AfterExit::Stopped);
    let (w3, g3) = gen_of("w-3");
    assert_eq!(f.exited(&w3, g3, "exited 0".into(), true, now).unwrap().next, AfterExit::Down);
    let (w1, g1) = gen_of("w-1");
    let AfterExit::Restart { token, .. } = f.exited(&w1, g1, "crashed".into(), false, now).unwrap().next else {
        panic!("the first crash restarts")
    };
    assert!(f.restart_due(&w1, token));
    let (_, g) = fork_all(&mut f, now, 10)[0].clone();
    let next = f.exited(&w1, g, "crashed".into(), false, now).unwrap().next;
    let AfterExit::GroupFailed { reason, retry: Some((delay, token)) } = next else { panic!("{next:?}") };
    assert_eq!(delay, Duration::from_secs(60));
    assert_eq!(reason, "start limit hit: w-1 restarted 1 times within 10s");
    // w-2 still runs in the failed group, and then crashes: no restart.
    let (w2, g2) = gen_of("w-2");
    assert_eq!(f.exited(&w2, g2, "crashed".into(), false, now).unwrap().next, AfterExit::Down);

    assert_eq!(f.retry_due("w", token + 1), None, "another failure's timer");
    assert_eq!(f.retry_due("w", token), Some(2), "w-1 and w-2: the crashed ones");
    assert_eq!(f.group("w").unwrap().phase, GroupPhase::Active);
    let states: Vec<_> = ["w-1", "w-2", "w-3", "w-4"].iter().map(|id| state(&f, id)).collect();
    assert_eq!(states, ["starting", "starting", "stopped", "stopped"]);
    assert!(f.slot(&w4).unwrap().state.stopped_on_request(), "an operator's stop holds");
    assert_eq!(f.retry_due("w", token), None, "a retry happens once");
    let (k, g) = fork_all(&mut f, now, 20)[0].clone();
    let next = f.exited(&k, g, "crashed".into(), false, now).unwrap().next;
    let AfterExit::Restart { token, .. } = next else { panic!("the limit counts anew: {next:?}") };
    assert!(f.restart_due(&k, token));
    let (k, g) = fork_all(&mut f, now, 30)[0].clone();
    let next = f.exited(&k, g, "crashed".into(), false, now).unwrap().next;
    let AfterExit::GroupFailed { retry: Some((_, again)), .. } = next else { panic!("{next:?}") };
    assert_eq!(f.start(&key("w-1")), StartStep::Wait, "an operator starts it first");
    assert_eq!(f.retry_due("w", again), None, "the retry of a failure already cleared");

    // Under always, a clean exit in the failed group would have been
    // restarted: the retry starts it.
    let text = text.replace("on-failure", "always").replace("count = 4", "count = 2");
    let mut f = fleet(&text);
    f.start_waiting_groups();
    let forked = fork_all(&mut f, now, 1);
    let (w1, g1) = forked[0].clone();
    let AfterExit::Restart { token, .. } = f.exited(&w1, g1, "crashed".into(), false, now).unwrap().next else {
        panic!("restarts")
    };
    assert!(f.restart_due(&w1, token));
    let (_, g) = fork_all(&mut f, now, 10)[0].clone();
    let AfterExit::GroupFailed { retry: Some((_, token)), .. } =
        f.exited(&w1, g, "crashed".into(), false, now).unwrap().next
    else {
        panic!("fails")
    };
    let (w2, g2) = forked[1].clone();
    assert_eq!(f.exited(&w2, g2, "exited 0".into(), true, now).unwrap().next, AfterExit::Down);
    assert_eq!(f.retry_due("w", token), Some(2));
    assert!(f.shutting_down() || f.begin_shutdown());
    assert_eq!(f.retry_due("w", token), None, "nothing starts in a shutdown");
}

fn generation_of(f: &Fleet<()>, k: &SlotKey) -> Option<u64> {
    f.slot(k)?.state.proc().map(|p| p.generation)
}

#[test]
fn restarts_spread_wider_than_the_interval_never_hit_the_limit() {
    let text = "[groups.w]\ncommand = \"w\"\nrestart = \"always\"\nstart_limit_burst = 2\n\
                start_limit_interval = \"1s\"\nrestart_backoff_max = \"100ms\"\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let mut now = Instant::now();
    for generation in 1..=10 {
        let (k, g) = fork_all(&mut f, now, generation)[0].clone();
        now += ms(600);
        let next = f.exited(&k, g, "crashed".into(), false, now).unwrap().next;
        let AfterExit::Restart { token, .. } = next else { panic!("exit {generation}: {next:?}") };
        assert!(f.restart_due(&k, token));
    }
}

/// The policy's answer for each (policy, clean exit) pair, and the state
/// the slot is left in when it is not restarted.
#[test]
fn each_policy_restarts_what_it_says() {
    let cases = [
        ("always", true, "backoff"),
        ("always", false, "backoff"),
        ("on-failure", true, "stopped"),
        ("on-failure", false, "backoff"),
        ("never", true, "stopped"),
        ("never", false, "failed"),
    ];
    for (policy, clean, expected) in cases {
        let mut f = fleet(&format!("[groups.w]\ncommand = \"w\"\nrestart = \"{policy}\"\n"));
        f.start_waiting_groups();
        let now = Instant::now();
        let (k, g) = fork_all(&mut f, now, 1)[0].clone();
        let next = f.exited(&k, g, "exited".into(), clean, now).unwrap().next;
        assert_eq!(state(&f, "w-1"), expected, "{policy}, clean {clean}: {next:?}");
        assert_eq!(matches!(next, AfterExit::Restart { .. }), expected == "backoff", "{policy}, clean {clean}");
        assert!(!f.slot(&k).unwrap().state.stopped_on_request(), "nobody asked it to stop");
    }
}

#[test]
fn a_fork_that_failed_for_want_of_resources_is_retried_whatever_the_policy_and_not_counted() {
    let text = "[groups.w]\ncommand = \"w\"\nrestart = \"never\"\nstart_limit_burst = 1\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let now = Instant::now();
    for _ in 0..5 {
        let k = f.next_to_fork().expect("queued");
        let next = f.fork_failed(&k, "Too many open files".into(), true, now);
        let AfterExit::Restart { token, .. } = next else { panic!("{next:?}") };
        assert!(f.restart_due(&k, token));
    }
    assert_eq!(f.slot(&key("w-1")).unwrap().last_exit, "failed to start: Too many open files");
    let k = f.next_to_fork().unwrap();
    assert_eq!(f.fork_failed(&k, "No such file".into(), false, now), AfterExit::Down, "never: a real failure ends it");
    assert_eq!(state(&f, "w-1"), "failed");
}

/// A placement the manager cut short (a re-exec, a bus restart) is
/// systemd's plight, like a fork out of descriptors; one it refused is the
/// worker's failure.
#[test]
fn a_placement_cut_short_is_retried_whatever_the_policy_and_not_counted() {
    let text = "[groups.w]\ncommand = \"w\"\nrestart = \"never\"\nstart_limit_burst = 1\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let now = Instant::now();
    let lost = |lost| PlaceError { error: "corral-w.scope: StartTransientUnit failed: NoReply".into(), lost };
    for generation in 1..=3 {
        let (k, g) = fork_all(&mut f, now, generation)[0].clone();
        f.set_placement_error(&k, g, lost(true));
        let exited = f.exited(&k, g, "exited 1".into(), false, now).unwrap();
        assert_eq!(exited.described, "never ran: corral-w.scope: StartTransientUnit failed: NoReply");
        let AfterExit::Restart { token, .. } = exited.next else { panic!("{:?}", exited.next) };
        assert!(f.restart_due(&k, token));
    }
    let (k, g) = fork_all(&mut f, now, 4)[0].clone();
    f.set_placement_error(&k, g, lost(false));
    assert_eq!(f.exited(&k, g, "exited 1".into(), false, now).unwrap().next, AfterExit::Down, "refused: never");
    assert_eq!(state(&f, "w-1"), "failed");
    assert_eq!(shown(&f, "w"), "stopped", "the group never hit its limit");
}

#[test]
fn a_stopped_worker_is_never_restarted_and_a_queued_one_never_forked() {
    let mut f = fleet("[groups.w]\ncommand = \"w\"\ncount = 2\nrestart = \"always\"\n");
    f.start_waiting_groups();
    let now = Instant::now();
    let (w1, g1) = {
        let k = f.next_to_fork().unwrap();
        let forked = Proc {
            generation: 1,
            pid: 1,
            start_time: 0,
            started_at: SystemTime::UNIX_EPOCH,
            direct_output: false,
            started: now,
            placement_error: None,
            health: Default::default(),
            handle: (),
        };
        f.forked(&k, forked);
        (k, 1)
    };
    assert!(matches!(f.stop(&w1), StopStep::Signal(())));
    assert_eq!(state(&f, "w-1"), "stopping");
    assert!(matches!(f.stop(&key("w-2")), StopStep::StoppedNow), "w-2 was only queued");
    assert_eq!(f.next_to_fork(), None, "a stopped slot leaves the fork queue");
    let exited = f.exited(&w1, g1, "exited with status 0".into(), true, now).unwrap();
    assert_eq!(exited.next, AfterExit::Stopped);
    assert!(f.slot(&w1).unwrap().state.stopped_on_request());
    assert!(matches!(f.stop(&key("w-9")), StopStep::Absent));
    assert_eq!(f.saved_state().groups["w"].stopped_workers, ["w-1", "w-2"]);
}

#[test]
fn stale_events_change_nothing() {
    let mut f = fleet("[groups.w]\ncommand = \"w\"\nrestart = \"always\"\n");
    f.start_waiting_groups();
    let now = Instant::now();
    let (k, g) = fork_all(&mut f, now, 7)[0].clone();
    assert!(!f.mark_ready(&k, g + 1), "another generation's readiness");
    assert!(f.exited(&k, g - 1, "old".into(), false, now).is_none(), "another generation's exit");
    assert!(f.mark_ready(&k, g));
    assert!(!f.mark_ready(&k, g), "ready once");
    let AfterExit::Restart { token, .. } = f.exited(&k, g, "crashed".into(), false, now).unwrap().next else {
        panic!("restarts")
    };
    assert!(!f.restart_due(&k, token + 1), "another timer");
    assert!(f.restart_due(&k, token));
    assert!(!f.restart_due(&k, token), "a timer fires once");
}

const LAYERED: &str = "[groups.db]\ncommand = \"d\"\n[groups.cache]\ncommand = \"c\"\nafter = [\"db\"]\n\
                       [groups.web]\ncommand = \"w\"\ncount = 2\nafter = [\"db\", \"cache\"]\n\
                       [groups.tool]\ncommand = \"t\"\n";

#[test]
fn groups_start_when_what_they_start_after_is_ready_and_stop_in_reverse() {
    let mut f = fleet(LAYERED);
    let now = Instant::now();
    assert_eq!(f.start_waiting_groups(), [("db".to_string(), 1), ("tool".to_string(), 1)]);
    assert_eq!(shown(&f, "cache"), "waiting");
    let forked = fork_all(&mut f, now, 1);
    assert_eq!(f.start_waiting_groups(), [], "db is not ready yet");
    let (db, g) = forked.iter().find(|(k, _)| k.group == "db").cloned().unwrap();
    assert!(f.mark_ready(&db, g));
    assert_eq!(f.start_waiting_groups(), [("cache".to_string(), 1)]);
    let (cache, g) = fork_all(&mut f, now, 10)[0].clone();
    assert!(f.mark_ready(&cache, g));
    assert_eq!(f.start_waiting_groups(), [("web".to_string(), 2)]);

    let all = f.resolve(&Target::All).unwrap();
    let layers: Vec<Vec<String>> =
        f.stop_layers(all).into_iter().map(|l| l.into_iter().map(|k| k.id()).collect()).collect();
    assert_eq!(layers, [vec!["web-1", "web-2"], vec!["cache-1"], vec!["db-1", "tool-1"]]);
}

#[test]
fn a_group_waiting_on_a_failed_one_counts_as_settled_for_ready() {
    let text = "[groups.db]\ncommand = \"d\"\nrestart = \"always\"\nstart_limit_burst = 1\n\
                [groups.web]\ncommand = \"w\"\nafter = [\"db\"]\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let now = Instant::now();
    let (db, g) = fork_all(&mut f, now, 1)[0].clone();
    assert!(!f.line(false, 0).settled, "db is starting");
    let AfterExit::Restart { token, .. } = f.exited(&db, g, "crashed".into(), false, now).unwrap().next else {
        panic!("the first crash is within the limit")
    };
    assert!(f.restart_due(&db, token));
    let (db, g) = fork_all(&mut f, now, 2)[0].clone();
    assert!(matches!(f.exited(&db, g, "crashed".into(), false, now).unwrap().next, AfterExit::GroupFailed { .. }));
    let line = f.line(true, 3);
    assert!(line.settled, "web will not start by itself: {line:?}");
    assert_eq!(line.text, "0/2 workers ready in 0 scopes; failed: db; 3 output lines dropped");
}

#[test]
fn targets_resolve_to_existing_slots_only() {
    let f = fleet(LAYERED);
    let ids = |t: &str| f.resolve(&Target::parse(t).unwrap()).map(|ks| ks.iter().map(SlotKey::id).collect::<Vec<_>>());
    assert_eq!(ids("all").unwrap().len(), 5);
    assert_eq!(ids("").unwrap().len(), 5);
    assert_eq!(ids("web").unwrap(), ["web-1", "web-2"]);
    assert_eq!(ids("web-2").unwrap(), ["web-2"]);
    assert_eq!(ids("web-3").unwrap_err(), "no group or worker named \"web-3\"");
    assert_eq!(ids("nosuch").unwrap_err(), "no group or worker named \"nosuch\"");
    assert_eq!(ids("nosuch-1").unwrap_err(), "no group or worker named \"nosuch-1\"");
}

#[test]
fn timeouts_add_up_per_layer_and_take_the_longest_ready_timeout() {
    let text = "[groups.a]\ncommand = \"a\"\nstop_timeout = \"2s\"\nready_timeout = \"3s\"\n\
                [groups.b]\ncommand = \"b\"\nstop_timeout = \"4s\"\nready_timeout = \"9s\"\nafter = [\"a\"]\n";
    let f = fleet(text);
    let layers = f.stop_layers(f.resolve(&Target::All).unwrap());
    assert_eq!(f.stop_timeout(&layers), Duration::from_secs(2 + 4) + STOP_MARGIN);
    assert_eq!(f.stop_timeout(&[layers.concat()]), Duration::from_secs(4) + STOP_MARGIN);
    assert_eq!(f.ready_timeout(&layers.concat()), Duration::from_secs(9));
    assert_eq!(f.ready_timeout(&[]), Duration::from_secs(60));
}

/// The state clients see for a group, for each mix of its slots.
#[test]
fn the_group_state_shown_follows_its_phase_then_its_slots() {
    let text = "[groups.w]\ncommand = \"w\"\ncount = 2\nrestart = \"on-failure\"\n\
                [groups.late]\ncommand = \"l\"\nafter = [\"w\"]\n";
    let mut f = fleet(text);
    assert_eq!(f.group("late").unwrap().shown(), ("waiting", "waiting for w".to_string()));
    f.start_waiting_groups();
    assert_eq!(shown(&f, "w"), "running", "starting counts as running");
    let now = Instant::now();
    let forked = fork_all(&mut f, now, 1);
    let (w1, g1) = forked.iter().find(|(k, _)| k.id() == "w-1").cloned().unwrap();
    let (w2, g2) = forked.iter().find(|(k, _)| k.id() == "w-2").cloned().unwrap();
    assert!(f.exited(&w1, g1, "crashed".into(), false, now).is_some());
    assert_eq!(shown(&f, "w"), "running", "one of two in backoff");
    assert!(f.exited(&w2, g2, "crashed".into(), false, now).is_some());
    assert_eq!(shown(&f, "w"), "restarting", "every worker in backoff");
    let mut f = fleet(text);
    f.start_waiting_groups();
    for (k, g) in fork_all(&mut f, now, 1) {
        if k.group == "w" {
            f.exited(&k, g, "exited with status 0".into(), true, now);
        }
    }
    assert_eq!(shown(&f, "w"), "stopped", "clean exits under on-failure");
    let statuses = f.group_statuses(&Default::default());
    let w = statuses.iter().find(|s| s.name == "w").unwrap();
    assert_eq!((w.desired, w.running, w.ready, w.stopped, w.failed), (2, 0, 0, 2, 0));
    f.reload(&config("[groups.late]\ncommand = \"l\"\nafter = []\n"));
    assert_eq!(shown(&f, "w"), "stopping", "removed by a reload");
    f.forget("w");
    assert!(f.group("w").is_none());
}

#[test]
fn a_reload_sorts_groups_into_added_removed_changed_rescaled_and_unchanged() {
    let old = "[groups.same]\ncommand = \"s\"\n[groups.grow]\ncommand = \"g\"\ncount = 1\n\
               [groups.shrink]\ncommand = \"k\"\ncount = 3\n[groups.edit]\ncommand = \"e\"\ncount = 2\n\
               [groups.gone]\ncommand = \"x\"\n";
    let new = "[groups.same]\ncommand = \"s\"\n[groups.grow]\ncommand = \"g\"\ncount = 3\n\
               [groups.shrink]\ncommand = \"k\"\ncount = 1\n[groups.edit]\ncommand = \"e2\"\ncount = 1\n\
               [groups.fresh]\ncommand = \"f\"\ncount = 2\n";
    let mut f = fleet(old);
    f.start_waiting_groups();
    let plan = f.reload(&config(new));
    let ids = |keys: &[SlotKey]| keys.iter().map(SlotKey::id).collect::<Vec<_>>();
    assert_eq!(plan.summary.added, ["fresh"]);
    assert_eq!(plan.summary.removed, ["gone"]);
    assert_eq!(plan.summary.changed, ["edit"]);
    assert_eq!(plan.summary.scaled, ["grow", "shrink"]);
    assert_eq!(plan.summary.unchanged, ["same"]);
    assert_eq!(ids(&plan.to_stop), ["gone-1", "edit-1", "edit-2", "shrink-2", "shrink-3"]);
    assert_eq!(ids(&plan.to_start), ["edit-1", "grow-2", "grow-3"]);
    assert_eq!(ids(&plan.to_await), ["fresh-1", "fresh-2"]);
    assert_eq!(plan.removed, ["gone"]);
    assert_eq!(f.group("edit").unwrap().config.command, "e2");
    assert_eq!(shown(&f, "fresh"), "waiting", "an added group starts in its own time");

    let back = f.reload(&config(old));
    assert!(back.summary.changed.contains(&"gone".to_string()), "a group back while draining is replaced");
    assert_eq!(f.group("gone").unwrap().phase, GroupPhase::Active);
    assert_eq!(f.reload(&config(old)).summary.describe(), "unchanged: edit, gone, grow, same, shrink");
}

#[test]
fn restart_notes_name_what_waits_for_a_restart() {
    let old = config("socket = \"/run/a.sock\"\n");
    assert!(restart_notes(&old, &old).is_empty());
    let new = config("socket = \"/run/b.sock\"\n[limits]\nmax_workers = 10\n");
    assert_eq!(
        restart_notes(&old, &new),
        [
            "worker limits apply now; connection, frame and response limits when corrald restarts",
            "the socket path change to /run/b.sock takes effect when corrald restarts",
        ]
    );
}

#[test]
fn scaling_checks_every_bound_before_it_changes_anything() {
    let text = "[groups.w]\ncommand = \"w\"\ncount = 2\nscope = \"worker\"\n[groups.o]\ncommand = \"o\"\ncount = 3\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let limits = Limits { max_workers: 10, max_group_workers: 8, max_scopes: 6, ..Limits::default() };
    let refused = |f: &mut Fleet<()>, n, scopes| f.scale("w", n, &limits, scopes).unwrap_err();
    assert_eq!(
        refused(&mut f, 9, false),
        "cannot scale to 9: the limit is 8 workers per group (limits.max_group_workers)"
    );
    assert!(refused(&mut f, 8, false).starts_with("cannot scale w to 8: the fleet would have 11 workers"));
    assert!(refused(&mut f, 7, true).contains("would keep 8 systemd scopes live, over the limit of 6"));
    assert_eq!(f.group("w").unwrap().desired, 2, "nothing changed");
    assert_eq!(f.scale("nope", 1, &limits, false).unwrap_err(), "no group named nope");

    let ids = |keys: &[SlotKey]| keys.iter().map(SlotKey::id).collect::<Vec<_>>();
    let Ok(ScalePlan::Start { keys, .. }) = f.scale("w", 4, &limits, false) else { panic!("scale up") };
    assert_eq!(ids(&keys), ["w-3", "w-4"]);
    let Ok(ScalePlan::Stop { keys, .. }) = f.scale("w", 1, &limits, false) else { panic!("scale down") };
    assert_eq!(ids(&keys), ["w-2"], "slots 3 and 4 were never started");
}

#[test]
fn a_waiting_group_scales_without_starting() {
    let mut f = fleet("[groups.a]\ncommand = \"a\"\n[groups.b]\ncommand = \"b\"\nafter = [\"a\"]\n");
    f.start_waiting_groups();
    assert_eq!(f.scale("b", 3, &Limits::default(), false), Ok(ScalePlan::Waits));
    assert_eq!(state(&f, "b-3"), "waiting");
}

#[test]
fn a_loaded_state_sets_scales_and_keeps_stopped_workers_stopped() {
    let mut f = fleet("[groups.w]\ncommand = \"w\"\ncount = 3\n");
    f.start_waiting_groups();
    fork_all(&mut f, Instant::now(), 1);
    let groups = [
        ("w".to_string(), SavedGroup { scale: 4, stopped_workers: vec!["w-2".into()] }),
        ("other".to_string(), SavedGroup { scale: 1, stopped_workers: vec![] }),
    ];
    let saved = SavedState { version: STATE_VERSION, groups: groups.into_iter().collect() };
    let plan = f.apply_state(saved, "\"s.json\"", &Limits::default(), false).unwrap();
    let ids = |keys: &[SlotKey]| keys.iter().map(SlotKey::id).collect::<Vec<_>>();
    assert_eq!(ids(&plan.to_stop), ["w-2"]);
    assert_eq!(ids(&plan.to_start), ["w-4"]);
    assert_eq!(plan.summary.describe(), "groups not in the config were ignored: other; state loaded from \"s.json\"");

    let over = SavedState {
        version: STATE_VERSION,
        groups: [("w".to_string(), SavedGroup { scale: 5000, stopped_workers: vec![] })].into_iter().collect(),
    };
    let why = f.apply_state(over, "\"s.json\"", &Limits::default(), false).unwrap_err();
    assert!(why.ends_with("(limits.max_group_workers); nothing changed"), "{why}");
    assert_eq!(f.group("w").unwrap().desired, 4);
}

#[test]
fn a_restored_shape_keeps_scales_and_stopped_workers_unless_the_config_changed_the_count() {
    let text = "[groups.web]\ncommand = \"w\"\ncount = 2\n[groups.jobs]\ncommand = \"j\"\ncount = 2\n\
                [groups.edited]\ncommand = \"e\"\ncount = 4\n";
    let mut f = fleet(text);
    let shape = SavedState {
        version: STATE_VERSION,
        groups: [
            ("web".to_string(), SavedGroup { scale: 2, stopped_workers: vec!["web-2".into()] }),
            ("jobs".to_string(), SavedGroup { scale: 3, stopped_workers: vec![] }),
            ("edited".to_string(), SavedGroup { scale: 1, stopped_workers: vec!["edited-1".into()] }),
            ("gone".to_string(), SavedGroup { scale: 5, stopped_workers: vec![] }),
        ]
        .into_iter()
        .collect(),
    };
    let configured = [("web", 2), ("jobs", 2), ("edited", 2), ("gone", 5)].map(|(n, c)| (n.to_string(), c)).into();
    f.restore(shape, &configured, &Limits::default(), false).unwrap();
    assert_eq!(f.group("jobs").unwrap().desired, 3, "a scale outlives corrald");
    assert_eq!(state(&f, "web-2"), "stopped", "so does a stop");
    assert!(f.slot(&key("web-2")).unwrap().state.stopped_on_request());
    assert_eq!(f.group("edited").unwrap().desired, 4, "the config changed this count: it wins");
    assert_eq!(state(&f, "edited-1"), "waiting");
    f.start_waiting_groups();
    let queued: Vec<String> = std::iter::from_fn(|| f.next_to_fork()).map(|k| k.id()).collect();
    assert_eq!(queued, ["edited-1", "edited-2", "edited-3", "edited-4", "jobs-1", "jobs-2", "jobs-3", "web-1"]);

    let over = SavedState {
        version: STATE_VERSION,
        groups: [("web".to_string(), SavedGroup { scale: 5000, stopped_workers: vec![] })].into_iter().collect(),
    };
    let mut f = fleet(text);
    let configured = [("web".to_string(), 2)].into();
    assert!(f.restore(over, &configured, &Limits::default(), false).unwrap_err().contains("max_group_workers"));
    assert_eq!(f.group("web").unwrap().desired, 2);
}

const CHECKED: &str = "[groups.w]\ncommand = \"w\"\nstop_mode = \"protocol\"\nrestart = \"on-failure\"\n\
                       [groups.w.ping]\ninterval = \"1s\"\nmisses = 3\n\
                       [groups.w.health.liveness]\ntcp = \"127.0.0.1:1\"\nfailure_threshold = 2\n";

fn missed() -> CheckResult {
    CheckResult::Fail("missed a ping".into())
}

/// A fleet with one forked worker of CHECKED, ready.
fn checked() -> (Fleet<()>, SlotKey, u64) {
    let mut f = fleet(CHECKED);
    f.start_waiting_groups();
    let (k, g) = fork_all(&mut f, Instant::now(), 1)[0].clone();
    assert!(f.mark_ready(&k, g));
    (f, k, g)
}

#[test]
fn a_worker_is_hung_at_its_group_s_misses_in_a_row_and_an_answer_starts_the_count_anew() {
    let (mut f, k, g) = checked();
    let at = SystemTime::now();
    assert_eq!(f.record_check(&k, g, CheckKind::Ping, missed(), at), HealthStep::Nothing);
    assert_eq!(f.record_check(&k, g, CheckKind::Ping, missed(), at), HealthStep::Nothing);
    assert_eq!(f.record_check(&k, g, CheckKind::Ping, CheckResult::Pass, at), HealthStep::Nothing);
    assert_eq!(f.record_check(&k, g, CheckKind::Ping, missed(), at), HealthStep::Nothing);
    assert_eq!(f.record_check(&k, g, CheckKind::Ping, missed(), at), HealthStep::Nothing);
    let step = f.record_check(&k, g, CheckKind::Ping, missed(), at);
    assert_eq!(step, HealthStep::Condemn("hung: missed 3 pings in a row (one every 1s)".into()));
    assert_eq!(f.record_check(&k, g, CheckKind::Ping, missed(), at), HealthStep::Nothing, "condemned once");
    let listed = &f.workers("", &Snapshot::new()).unwrap()[0].health;
    assert_eq!((listed[0].kind.as_str(), listed[0].consecutive_failures), ("ping", 4));
}

#[test]
fn a_condemned_worker_is_restarted_by_its_policy_as_a_failure() {
    let (mut f, k, g) = checked();
    let at = SystemTime::now();
    f.record_check(&k, g, CheckKind::Liveness, CheckResult::Fail("connect: refused".into()), at);
    let step = f.record_check(&k, g, CheckKind::Liveness, CheckResult::Fail("connect: refused".into()), at);
    assert_eq!(step, HealthStep::Condemn("unhealthy: liveness probe failed 2 times in a row: connect: refused".into()));
    // Its stop signal ends it cleanly, but it was stopped for its health.
    let exited = f.exited(&k, g, "killed by SIGTERM".into(), true, Instant::now()).expect("a live process");
    assert!(matches!(exited.next, AfterExit::Restart { .. }), "{:?}", exited.next);
    assert!(exited.described.starts_with("unhealthy: liveness probe failed"), "{}", exited.described);
    assert!(exited.described.ends_with("; then killed by SIGTERM"), "{}", exited.described);
}

#[test]
fn a_worker_being_stopped_or_of_an_older_generation_is_not_judged() {
    let (mut f, k, g) = checked();
    let at = SystemTime::now();
    assert_eq!(f.record_check(&k, g + 1, CheckKind::Ping, missed(), at), HealthStep::Nothing);
    assert!(matches!(f.stop(&k), StopStep::Signal(_)));
    for _ in 0..10 {
        assert_eq!(f.record_check(&k, g, CheckKind::Ping, missed(), at), HealthStep::Nothing, "draining");
    }
    let exited = f.exited(&k, g, "exited 0".into(), true, Instant::now()).expect("a live process");
    assert_eq!(exited.next, AfterExit::Stopped);
}

#[test]
fn a_readiness_pass_readies_a_starting_worker_only() {
    let text = "[groups.w]\ncommand = \"w\"\n[groups.w.health.readiness]\ntcp = \"127.0.0.1:1\"\n";
    let mut f = fleet(text);
    f.start_waiting_groups();
    let (k, g) = fork_all(&mut f, Instant::now(), 1)[0].clone();
    let at = SystemTime::now();
    let failed = CheckResult::Fail("connect: refused".into());
    for _ in 0..5 {
        assert_eq!(f.record_check(&k, g, CheckKind::Readiness, failed.clone(), at), HealthStep::Nothing);
    }
    assert_eq!(f.record_check(&k, g, CheckKind::Readiness, CheckResult::Pass, at), HealthStep::Ready);
    assert!(f.mark_ready(&k, g));
    assert_eq!(f.record_check(&k, g, CheckKind::Readiness, CheckResult::Pass, at), HealthStep::Nothing);
}

fn reading(pid: u32, cpu_percent: Option<f64>, memory: u64, tasks: Option<u64>) -> Usage {
    let source = if tasks.is_some() { Source::Cgroup } else { Source::Proc };
    let reading = Reading { source, cpu_us: 1_000_000, memory, memory_peak: Some(memory * 2), tasks };
    Usage { pid, reading, cpu_percent }
}

#[test]
fn a_reading_is_shown_only_for_the_process_it_was_read_of_and_a_group_sums_them() {
    let mut f = fleet("[groups.w]\ncommand = \"w\"\ncount = 3\n[groups.v]\ncommand = \"v\"\n");
    f.start_waiting_groups();
    let forked = fork_all(&mut f, Instant::now(), 1);
    let pid = |id: &str| 1000 + forked.iter().find(|(k, _)| *k == key(id)).unwrap().1 as u32;
    let usage: Snapshot = [
        (key("w-1"), reading(pid("w-1"), Some(12.5), 1 << 20, Some(2))),
        (key("w-2"), reading(pid("w-2"), None, 2 << 20, Some(3))),
        // The reading of a process the slot no longer holds.
        (key("w-3"), reading(pid("w-3") + 100, Some(50.0), 4 << 20, Some(1))),
        (key("v-1"), reading(pid("v-1"), Some(1.0), 1 << 20, None)),
    ]
    .into_iter()
    .collect();
    let workers = f.workers("w", &usage).unwrap();
    let shown: Vec<Option<u64>> = workers.iter().map(|w| w.usage.as_ref().map(|u| u.memory_bytes)).collect();
    assert_eq!(shown, [Some(1 << 20), Some(2 << 20), None]);
    let w1 = workers[0].usage.clone().unwrap();
    assert_eq!(
        (w1.source.as_str(), w1.cpu_percent, w1.memory_peak_bytes, w1.tasks),
        ("cgroup", Some(12.5), Some(2 << 20), Some(2))
    );
    let statuses = f.group_statuses(&usage);
    let w = statuses.iter().find(|g| g.name == "w").unwrap().usage.clone().unwrap();
    // A percent one worker lacks leaves the sum unknown, not too low.
    assert_eq!(
        (w.workers, w.memory_bytes, w.cpu_percent, w.tasks, w.memory_peak_bytes),
        (2, 3 << 20, None, Some(5), None)
    );
    assert_eq!(w.cpu_time_us, 2_000_000);
    let v = statuses.iter().find(|g| g.name == "v").unwrap().usage.clone().unwrap();
    assert_eq!((v.source.as_str(), v.tasks), ("proc", None));
    assert!(f.group_statuses(&Snapshot::new()).iter().all(|g| g.usage.is_none()));
}

#[test]
fn the_sampler_is_given_each_running_worker_with_its_own_cgroup() {
    let mut f = fleet("[groups.w]\ncommand = \"w\"\ncount = 2\n[groups.v]\ncommand = \"v\"\nscope = \"worker\"\n");
    f.start_waiting_groups();
    fork_all(&mut f, Instant::now(), 1);
    let subjects = f.usage_subjects(true);
    let own: Vec<(String, Option<OwnCgroup>)> = subjects.iter().map(|s| (s.key.id(), s.own.clone())).collect();
    let cgroup = |unit: &str, leaf: Option<&str>| Some(OwnCgroup { unit: unit.into(), leaf: leaf.map(Into::into) });
    assert_eq!(
        own,
        [
            ("v-1".to_string(), cgroup("corral-v-1.scope", None)),
            ("w-1".to_string(), cgroup("corral-w.scope", Some("w-1"))),
            ("w-2".to_string(), cgroup("corral-w.scope", Some("w-2"))),
        ]
    );
    assert!(f.usage_subjects(false).iter().all(|s| s.own.is_none()));
}
