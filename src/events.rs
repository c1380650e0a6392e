//! What happens in corrald, for subscribers: one broadcaster that every
//! layer emits into (the supervisor, the socket layer with the outcome of
//! audited requests, the output writer), and a bounded queue per
//! subscriber.
//!
//! Emitting never waits and never allocates for a subscriber beyond its
//! bound: an event goes into each matching subscriber's queue if there is
//! room, and is dropped and counted otherwise. A subscriber that catches up
//! is told first how many it missed (a `Lagged` event). So a subscriber
//! that does not read costs corrald at most its queue, never its pace.
//!
//! The latest events are also kept, bounded, for a subscriber that asks
//! for them: what happens before anyone can subscribe (the workers
//! adopted on an upgrade, corrald starting) would otherwise reach no one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::Notify;

use crate::proto::{self, event::Kind};
use crate::target::Target;

/// Bytes of events one subscriber's queue holds at most, whatever their
/// number: events carry text from requests (a `limit`'s properties), so a
/// count alone would not bound the memory.
pub const MAX_QUEUE_BYTES: usize = 1 << 20;

/// Bytes of past events kept for replay, whatever their number, for the
/// same reason.
pub const MAX_HISTORY_BYTES: usize = 1 << 20;

/// Why an event did not reach a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's queue was full: it did not read in time.
    QueueFull,
    /// The subscriber went away with events still queued for it.
    Unsubscribed,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::Unsubscribed];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Unsubscribed => "unsubscribed",
        }
    }
}

/// The broadcaster. Cheap to clone: every clone emits to the same
/// subscribers.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    /// Read without the lock, so emitting with nobody listening and no
    /// history kept costs one atomic load.
    count: AtomicUsize,
    max_subscribers: usize,
    queue: usize,
    /// Locked only with `subscribers` held, so that a new subscriber's
    /// replay and its live events neither overlap nor leave a gap.
    history: Mutex<History>,
    history_len: usize,
    closed: AtomicBool,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

struct Subscriber {
    filter: Target,
    holder: Holder,
    queue: Mutex<Queue>,
    wake: Notify,
}

/// The latest events, oldest first, and their encoded size.
#[derive(Default)]
struct History {
    events: VecDeque<proto::Event>,
    bytes: usize,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<proto::Event>,
    /// Their encoded size.
    bytes: usize,
    /// Dropped since the subscriber last took an event.
    missed: u64,
    closed: bool,
}

/// Who holds a subscription: places are shared out so that one user of
/// the read tier cannot take them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub uid: u32,
    pub admin: bool,
}

/// The last quarter of the places is kept for admins (as
/// `admin_connection_reserve` keeps connections), and one other user may
/// hold an eighth of them (at least one).
fn shares(max: usize) -> (usize, usize) {
    let reserve = max / 4;
    (max - reserve, (max / 8).max(1))
}

/// One subscriber's end: its events in order, `None` once corrald closed
/// the broadcaster and everything queued was taken.
pub struct Subscription {
    subscriber: Arc<Subscriber>,
    events: Events,
}

impl Events {
    /// A broadcaster for at most `max_subscribers` subscribers, each with
    /// room for `queue` events, that keeps the latest `history` events.
    pub fn new(max_subscribers: usize, queue: usize, history: usize) -> Events {
        Events {
            inner: Arc::new(Inner {
                subscribers: Mutex::new(Vec::new()),
                count: AtomicUsize::new(0),
                max_subscribers,
                queue: queue.max(1),
                history: Mutex::default(),
                history_len: history,
                closed: AtomicBool::new(false),
                dropped: Default::default(),
            }),
        }
    }

    fn subscribers(&self) -> MutexGuard<'_, Vec<Arc<Subscriber>>> {
        self.inner.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anyone listens: emitters with costly events ask first.
    pub fn listened(&self) -> bool {
        self.subscribed() > 0
    }

    /// Subscriptions open now.
    pub fn subscribed(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Adds a subscriber for the events `filter` lets through, its queue
    /// holding first the latest `replay` of them from the history (as
    /// many as fit), or says why not.
    pub fn subscribe(&self, filter: Target, holder: Holder, replay: usize) -> Result<Subscription, String> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err("corrald is stopping: no new subscriptions".into());
        }
        let mut subscribers = self.subscribers();
        let max = self.inner.max_subscribers;
        if subscribers.len() >= max {
            return Err(format!(
                "{} subscriptions are open, the most corrald serves (limits.max_subscribers)",
                subscribers.len()
            ));
        }
        if !holder.admin {
            let (open_to_all, per_user) = shares(max);
            if subscribers.len() >= open_to_all {
                return Err(format!(
                    "{} of {max} subscriptions are open; the rest are kept for admins (limits.max_subscribers)",
                    subscribers.len()
                ));
            }
            let own = subscribers.iter().filter(|s| s.holder.uid == holder.uid).count();
            if own >= per_user {
                return Err(format!(
                    "uid {} holds {own} subscriptions, the most one user may (an eighth of limits.max_subscribers)",
                    holder.uid
                ));
            }
        }
        let subscriber = Arc::new(Subscriber { filter, holder, queue: Mutex::default(), wake: Notify::new() });
        if replay > 0 {
            self.replay(&subscriber, replay);
        }
        subscribers.push(subscriber.clone());
        self.inner.count.store(subscribers.len(), Ordering::Relaxed);
        Ok(Subscription { subscriber, events: self.clone() })
    }

    /// Queues for a new subscriber the latest `count` events of the
    /// history that it wants and that fit in its queue, oldest first.
    /// Called with the subscribers locked.
    fn replay(&self, subscriber: &Subscriber, count: usize) {
        let history = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
        let count = count.min(self.inner.queue);
        let mut queue = subscriber.lock();
        for event in history.events.iter().rev().filter(|e| subscriber.wants(e)) {
            let event = proto::Event { replayed: true, ..event.clone() };
            let size = event.encoded_len();
            if queue.events.len() == count || queue.bytes + size > MAX_QUEUE_BYTES {
                break;
            }
            queue.bytes += size;
            queue.events.push_front(event);
        }
    }

    /// Keeps `event` in the history, the oldest going past its bounds.
    /// Called with the subscribers locked.
    fn remember(&self, event: &proto::Event, size: usize) {
        let mut history = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
        history.events.push_back(event.clone());
        history.bytes += size;
        while history.events.len() > self.inner.history_len || history.bytes > MAX_HISTORY_BYTES {
            let Some(old) = history.events.pop_front() else { break };
            history.bytes -= old.encoded_len();
        }
    }

    /// Keeps `kind` in the history and hands it to every subscriber whose
    /// filter lets it through. `group` and `worker` are empty for
    /// corrald-wide events.
    pub fn emit(&self, group: &str, worker: &str, kind: Kind) {
        if self.inner.history_len == 0 && !self.listened() {
            return;
        }
        let event = proto::Event {
            time_ms: now_ms(),
            group: group.to_string(),
            worker: worker.to_string(),
            replayed: false,
            kind: Some(kind),
        };
        let size = event.encoded_len();
        let subscribers = self.subscribers();
        if self.inner.history_len > 0 {
            self.remember(&event, size);
        }
        for subscriber in subscribers.iter() {
            if !subscriber.wants(&event) {
                continue;
            }
            let mut queue = subscriber.lock();
            if queue.events.len() >= self.inner.queue || queue.bytes + size > MAX_QUEUE_BYTES {
                queue.missed += 1;
                self.count_dropped(DropReason::QueueFull, 1);
                continue;
            }
            // The gap is told where it was: after what was queued before
            // it, before this event. Its one extra place keeps the bound.
            if queue.missed > 0 {
                let dropped = std::mem::take(&mut queue.missed);
                queue.events.push_back(lagged(dropped));
            }
            queue.bytes += size;
            queue.events.push_back(event.clone());
            drop(queue);
            subscriber.wake.notify_one();
        }
    }

    /// Ends every subscription once its queue is taken; no new ones are
    /// accepted.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for subscriber in self.subscribers().iter() {
            subscriber.lock().closed = true;
            subscriber.wake.notify_one();
        }
    }

    /// Events dropped since corrald started, by reason.
    pub fn dropped(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|&r| (r, self.inner.dropped[r as usize].load(Ordering::Relaxed))).collect()
    }

    fn count_dropped(&self, reason: DropReason, n: u64) {
        self.inner.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The event that tells a subscriber how many it missed.
fn lagged(dropped: u64) -> proto::Event {
    proto::Event { time_ms: now_ms(), kind: Some(Kind::Lagged(proto::Lagged { dropped })), ..Default::default() }
}

impl Subscriber {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Corrald-wide events reach every subscriber; a group's reach those of
    /// the group; a worker's those of the group and of the worker.
    fn wants(&self, event: &proto::Event) -> bool {
        if event.group.is_empty() {
            return true;
        }
        match &self.filter {
            Target::All => true,
            Target::Group(group) => &event.group == group,
            Target::Worker(key) => event.worker == key.id(),
        }
    }
}

impl Subscription {
    /// The next event: a `Lagged` one first when some were dropped since
    /// the last.
    pub async fn next(&mut self) -> Option<proto::Event> {
        loop {
            let notified = self.subscriber.wake.notified();
            {
                let mut queue = self.subscriber.lock();
                if let Some(event) = queue.events.pop_front() {
                    if !matches!(event.kind, Some(Kind::Lagged(_))) {
                        queue.bytes -= event.encoded_len();
                    }
                    return Some(event);
                }
                if queue.missed > 0 {
                    return Some(lagged(std::mem::take(&mut queue.missed)));
                }
                if queue.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let left = self.subscriber.lock().events.iter().filter(|e| !matches!(e.kind, Some(Kind::Lagged(_)))).count();
        self.events.count_dropped(DropReason::Unsubscribed, left as u64);
        let mut subscribers = self.events.subscribers();
        subscribers.retain(|s| !Arc::ptr_eq(s, &self.subscriber));
        self.events.inner.count.store(subscribers.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::SlotKey;

    fn ready(pid: u32) -> Kind {
        Kind::Ready(proto::WorkerReady { pid })
    }

    fn pid(event: &proto::Event) -> u32 {
        match event.kind {
            Some(Kind::Ready(proto::WorkerReady { pid })) => pid,
            ref other => panic!("not a ready event: {other:?}"),
        }
    }

    fn dropped(event: &proto::Event) -> u64 {
        match event.kind {
            Some(Kind::Lagged(proto::Lagged { dropped })) => dropped,
            ref other => panic!("not a lagged event: {other:?}"),
        }
    }

    /// Polls once: the tests emit before they take, so nothing waits.
    fn take(sub: &mut Subscription) -> Option<proto::Event> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::future::Future::poll(std::pin::pin!(sub.next()), &mut cx) {
            std::task::Poll::Ready(event) => event,
            std::task::Poll::Pending => panic!("no event was ready"),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_subscriber_is_told_first() {
        let events = Events::new(4, 3, 0);
        let mut sub = events.subscribe(Target::All, ADMIN, 0).unwrap();
        for n in 0..10 {
            events.emit("web", "web-0", ready(n));
        }
        assert_eq!(events.dropped()[0], (DropReason::QueueFull, 7));
        // What was queued before the gap, the gap, what came after it.
        assert_eq!(pid(&take(&mut sub).unwrap()), 0);
        events.emit("web", "web-0", ready(10));
        assert_eq!(pid(&take(&mut sub).unwrap()), 1);
        assert_eq!(pid(&take(&mut sub).unwrap()), 2);
        assert_eq!(dropped(&take(&mut sub).unwrap()), 7);
        assert_eq!(pid(&take(&mut sub).unwrap()), 10);
        // A gap at the end is told once the queue is empty.
        for n in 11..15 {
            events.emit("web", "web-0", ready(n));
        }
        assert_eq!((11..14).map(|_| pid(&take(&mut sub).unwrap())).collect::<Vec<_>>(), [11, 12, 13]);
        assert_eq!(dropped(&take(&mut sub).unwrap()), 1);
        assert_eq!(events.dropped()[0], (DropReason::QueueFull, 8));
        events.close();
        assert!(take(&mut sub).is_none());
    }

    #[test]
    fn a_queue_holds_a_bounded_number_of_bytes_whatever_the_count() {
        let events = Events::new(1, 1 << 16, 0);
        let mut sub = events.subscribe(Target::All, ADMIN, 0).unwrap();
        let big = || Kind::Failed(proto::WorkerFailed { reason: "x".repeat(64 << 10) });
        for _ in 0..32 {
            events.emit("web", "web-0", big());
        }
        // 15 of 64 KiB and a little fit in 1 MiB.
        assert_eq!(events.dropped()[0], (DropReason::QueueFull, 17));
        for _ in 0..15 {
            assert!(matches!(take(&mut sub).unwrap().kind, Some(Kind::Failed(_))));
        }
        assert_eq!(dropped(&take(&mut sub).unwrap()), 17);
        // What was taken no longer counts: as many fit again.
        for _ in 0..15 {
            events.emit("web", "web-0", big());
        }
        assert_eq!(events.dropped()[0], (DropReason::QueueFull, 17));
    }

    const ADMIN: Holder = Holder { uid: 0, admin: true };

    #[test]
    fn readers_leave_a_quarter_to_admins_and_one_reader_an_eighth_to_the_others() {
        let events = Events::new(16, 8, 0);
        let reader = |uid| Holder { uid, admin: false };
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(events.subscribe(Target::All, reader(1000), 0).unwrap());
        }
        let greedy = events.subscribe(Target::All, reader(1000), 0).err().unwrap();
        assert!(greedy.contains("uid 1000 holds 2 subscriptions"), "{greedy}");
        for uid in 1001..1006 {
            for _ in 0..2 {
                held.push(events.subscribe(Target::All, reader(uid), 0).unwrap());
            }
        }
        let late = events.subscribe(Target::All, reader(2000), 0).err().unwrap();
        assert!(late.contains("12 of 16 subscriptions are open; the rest are kept for admins"), "{late}");
        for _ in 0..4 {
            held.push(events.subscribe(Target::All, ADMIN, 0).unwrap());
        }
        assert!(events.subscribe(Target::All, ADMIN, 0).err().unwrap().contains("16 subscriptions are open"));
        held.truncate(1);
        assert!(events.subscribe(Target::All, reader(1000), 0).is_ok());
    }

    #[test]
    fn subscribers_are_bounded_and_a_gone_one_frees_its_place() {
        let events = Events::new(2, 8, 0);
        let first = events.subscribe(Target::All, ADMIN, 0).unwrap();
        let _second = events.subscribe(Target::All, ADMIN, 0).unwrap();
        let refused = events.subscribe(Target::All, ADMIN, 0).err().unwrap();
        assert!(refused.contains("limits.max_subscribers"), "{refused}");
        events.emit("", "", ready(1));
        drop(first);
        assert_eq!(events.dropped()[1], (DropReason::Unsubscribed, 1));
        assert!(events.subscribe(Target::All, ADMIN, 0).is_ok());
    }

    #[test]
    fn a_slow_subscriber_costs_another_nothing() {
        let events = Events::new(2, 1, 0);
        let _slow = events.subscribe(Target::All, ADMIN, 0).unwrap();
        let mut quick = events.subscribe(Target::All, ADMIN, 0).unwrap();
        for n in 0..5 {
            events.emit("web", "web-0", ready(n));
            assert_eq!(pid(&take(&mut quick).unwrap()), n);
        }
        assert_eq!(events.dropped()[0], (DropReason::QueueFull, 4));
    }

    #[test]
    fn filters_let_through_their_target_and_corrald_wide_events() {
        let events = Events::new(4, 16, 0);
        let mut group = events.subscribe(Target::Group("web".into()), ADMIN, 0).unwrap();
        let mut worker = events.subscribe(Target::Worker(SlotKey::new("web", 1)), ADMIN, 0).unwrap();
        events.emit("web", "web-0", ready(1));
        events.emit("web", "web-1", ready(2));
        events.emit("db", "db-1", ready(3));
        events.emit("web", "", Kind::GroupState(proto::GroupStateChanged::default()));
        events.emit("", "", ready(4));
        // Filtered out events are not drops.
        assert_eq!(events.dropped()[0], (DropReason::QueueFull, 0));
        events.close();
        let seen = |sub: &mut Subscription| {
            let mut kinds = Vec::new();
            while let Some(e) = take(sub) {
                kinds.push(format!("{}/{}", e.group, e.worker));
            }
            kinds
        };
        assert_eq!(seen(&mut group), ["web/web-0", "web/web-1", "web/", "/"]);
        assert_eq!(seen(&mut worker), ["web/web-1", "/"]);
    }

    #[test]
    fn a_replay_is_the_latest_wanted_events_oldest_first_then_live_ones_without_a_gap() {
        let events = Events::new(4, 16, 8);
        for n in 0..12 {
            events.emit(if n % 2 == 0 { "web" } else { "db" }, "", ready(n));
        }
        // The history kept the last 8 (4 to 11); the web ones of those are
        // 4, 6, 8, 10, and three were asked for.
        let mut web = events.subscribe(Target::Group("web".into()), ADMIN, 3).unwrap();
        events.emit("web", "web-0", ready(12));
        let seen: Vec<_> = (0..4).map(|_| take(&mut web).unwrap()).collect();
        assert_eq!(seen.iter().map(pid).collect::<Vec<_>>(), [6, 8, 10, 12]);
        assert_eq!(seen.iter().map(|e| e.replayed).collect::<Vec<_>>(), [true, true, true, false]);
        // Without a replay, only what comes after.
        let mut live = events.subscribe(Target::All, ADMIN, 0).unwrap();
        events.emit("db", "", ready(13));
        assert_eq!(pid(&take(&mut live).unwrap()), 13);
    }

    #[test]
    fn a_replay_fits_the_subscriber_s_queue_and_the_history_its_bytes() {
        let events = Events::new(4, 2, 1000);
        for n in 0..5 {
            events.emit("web", "web-0", ready(n));
        }
        let mut sub = events.subscribe(Target::All, ADMIN, 100).unwrap();
        assert_eq!([pid(&take(&mut sub).unwrap()), pid(&take(&mut sub).unwrap())], [3, 4]);
        let big = || Kind::Failed(proto::WorkerFailed { reason: "x".repeat(64 << 10) });
        for _ in 0..40 {
            events.emit("web", "web-0", big());
        }
        let history = events.inner.history.lock().unwrap();
        assert!(history.bytes <= MAX_HISTORY_BYTES && history.events.len() == 15, "{}", history.events.len());
        assert_eq!(history.bytes, history.events.iter().map(|e| e.encoded_len()).sum::<usize>());
    }

    #[test]
    fn nothing_is_subscribed_after_close() {
        let events = Events::new(4, 4, 0);
        events.close();
        assert!(events.subscribe(Target::All, ADMIN, 0).is_err());
    }
}
