//! Waiting for a condition: the one polling loop of the tests, bounded by a
//! deadline, that fails saying what it waited for and what it last saw.

use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pause between two looks at a condition.
const INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Ok`, for at most `within`. Its `Err` says
/// what it saw instead; the last one is in the failure.
pub async fn poll<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Deadline::after(what, within);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => deadline.check(seen),
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// [`poll`] for a thread that has no runtime to wait on.
#[track_caller]
pub fn poll_blocking<T, E: Display>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Deadline::after(what, within);
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) => deadline.check(seen),
        }
        std::thread::sleep(INTERVAL);
    }
}

struct Deadline<'a> {
    what: &'a str,
    within: Duration,
    at: Instant,
}

impl<'a> Deadline<'a> {
    fn after(what: &'a str, within: Duration) -> Deadline<'a> {
        Deadline { what, within, at: Instant::now() + within }
    }

    /// Fails the test once the deadline has passed, with what was seen last.
    #[track_caller]
    fn check(&self, seen: impl Display) {
        if Instant::now() >= self.at {
            panic!("timed out after {:?} waiting for {}; last seen: {seen}", self.within, self.what);
        }
    }
}

/// A check for a poll: `seen` if `pred` holds of it, else `seen` shown.
pub fn holding<T: Debug>(seen: T, pred: impl Fn(&T) -> bool) -> Result<T, String> {
    if pred(&seen) {
        Ok(seen)
    } else {
        Err(format!("{seen:?}"))
    }
}

/// What a poll saw, shown with the end of a log when it times out: the log
/// is read only then.
pub struct WithLog<'a, E> {
    pub seen: E,
    pub log: &'a Path,
}

impl<E: Display> Display for WithLog<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\ncorrald's log ends:\n{}", self.seen, log_tail(self.log))
    }
}

/// The last 25 lines of a log, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}
