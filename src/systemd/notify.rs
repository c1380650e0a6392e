//! What corrald tells the service manager that started it (`sd_notify`):
//! when it is ready, reloading or stopping, a one-line status, and the
//! watchdog keep-alive.
//!
//! Outside a `Type=notify` service (no `NOTIFY_SOCKET`) every call is a
//! no-op, so the supervisor calls these unconditionally.
//!
//! Descriptor store traffic goes through a thread of its own: systemd 252
//! compares each stored descriptor with every one it holds, so with
//! thousands stored it reads its notify socket slowly, and a send to a
//! full socket blocks. The supervisor must never wait on that.
//!
//! The store is used only where the unit has one: `$FDSTORE` says so from
//! systemd 254 on; before that (systemd 252 sets no `$FDSTORE`) the unit's
//! `FileDescriptorStoreMax=` is asked over D-Bus and passed to
//! [`Notifier::use_store`]. Without a store the manager would log a refusal
//! for every descriptor.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    ready: AtomicBool,
    status: Mutex<String>,
    watchdog: Option<Duration>,
    /// `$FDSTORE`, the store's size, when the manager set it.
    store_size: Option<u64>,
    /// Whether descriptors go to the store: until told otherwise, yes.
    storing: AtomicBool,
    /// To the store thread, in order: a removal never overtakes its store.
    store: mpsc::Sender<StoreOp>,
}

enum StoreOp {
    Add(String, Vec<OwnedFd>),
    Remove(String),
    /// Answered once everything queued before it has been sent.
    Flush(mpsc::Sender<()>),
}

/// Sends descriptor store operations as the manager takes them.
fn store_thread(ops: mpsc::Receiver<StoreOp>) {
    for op in ops {
        if let StoreOp::Flush(done) = &op {
            let _ = done.send(());
            continue;
        }
        let result = match &op {
            StoreOp::Add(name, fds) => {
                let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
                sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &fds)
            }
            StoreOp::Remove(name) => sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]),
            StoreOp::Flush(_) => Ok(()),
        };
        if let Err(e) = result {
            let name = match &op {
                StoreOp::Add(name, _) | StoreOp::Remove(name) => name.as_str(),
                StoreOp::Flush(_) => "",
            };
            tracing::warn!("the service manager's descriptor store did not take {name}: {e}");
        }
    }
}

impl Inner {
    fn queue(&self, op: StoreOp) {
        // Without the thread the operation is lost, as said at start.
        let _ = self.store.send(op);
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier { inner: None };
        }
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let store_size = std::env::var("FDSTORE").ok().and_then(|v| v.trim().parse().ok());
        let (store, ops) = mpsc::channel();
        if let Err(e) = std::thread::Builder::new().name("corral-fdstore".into()).spawn(move || store_thread(ops)) {
            tracing::warn!("cannot start the descriptor store thread ({e}): workers' descriptors are not stored");
        }
        Notifier {
            inner: Some(Arc::new(Inner {
                ready: AtomicBool::new(false),
                status: Mutex::new(String::new()),
                watchdog,
                store_size,
                storing: AtomicBool::new(store_size != Some(0)),
                store,
            })),
        }
    }

    /// Whether a service manager started corrald (`NOTIFY_SOCKET`).
    pub fn under_service_manager(&self) -> bool {
        self.inner.is_some()
    }

    /// The descriptor store's size as the manager gave it in `$FDSTORE`.
    pub fn store_size(&self) -> Option<u64> {
        self.inner.as_ref()?.store_size
    }

    /// The unit's descriptor store holds `size` descriptors (0: it has none,
    /// and nothing is sent to it).
    pub fn use_store(&self, size: u64) {
        if let Some(inner) = &self.inner {
            inner.storing.store(size > 0, Ordering::Release);
        }
    }

    fn storing(&self) -> Option<&Inner> {
        self.inner.as_deref().filter(|i| i.storing.load(Ordering::Acquire))
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier { inner: None }
    }

    /// How often to send the watchdog keep-alive: half the manager's
    /// timeout, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.inner.as_ref()?.watchdog.map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState]) {
        if self.inner.is_some() {
            if let Err(e) = sd_notify::notify(states) {
                tracing::warn!("cannot notify the service manager: {e}");
            }
        }
    }

    /// Startup is complete. Sent once; later calls do nothing.
    pub fn ready(&self) {
        if let Some(inner) = &self.inner {
            if !inner.ready.swap(true, Ordering::AcqRel) {
                self.send(&[NotifyState::Ready]);
            }
        }
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
    }

    /// A reload is over. Says READY only once startup had been announced:
    /// a reload during startup must not end it early.
    pub fn reloaded(&self) {
        if self.inner.as_ref().is_some_and(|i| i.ready.load(Ordering::Acquire)) {
            self.send(&[NotifyState::Ready]);
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Sets the status line `systemctl status` shows; unchanged text is not
    /// sent again.
    pub fn status(&self, text: &str) {
        let Some(inner) = &self.inner else { return };
        {
            let mut last = inner.status.lock().unwrap_or_else(|e| e.into_inner());
            if *last == text {
                return;
            }
            text.clone_into(&mut last);
        }
        self.send(&[NotifyState::Status(text)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Hands descriptors to the service manager's store under `name`, so
    /// they outlive this corrald and come back to the next one in
    /// `LISTEN_FDS` (the unit needs `FileDescriptorStoreMax=`).
    pub fn store_fds(&self, name: &str, fds: &[BorrowedFd<'_>]) {
        let Some(inner) = self.storing() else { return };
        if fds.is_empty() {
            return;
        }
        // Copies, since the store thread sends them later; they close once sent.
        let copies: Result<Vec<OwnedFd>, _> = fds.iter().map(|fd| fd.try_clone_to_owned()).collect();
        match copies {
            Ok(copies) => inner.queue(StoreOp::Add(name.to_string(), copies)),
            Err(e) => tracing::warn!("cannot hand {name} to the service manager's descriptor store: {e}"),
        }
    }

    /// Waits, at most `timeout`, until every store operation queued so far
    /// has been sent: before corrald leaves its workers to a successor.
    pub fn flush_store(&self, timeout: Duration) {
        let Some(inner) = self.storing() else { return };
        let (done, wait) = mpsc::channel();
        inner.queue(StoreOp::Flush(done));
        if wait.recv_timeout(timeout).is_err() {
            tracing::warn!(
                "the service manager's descriptor store is behind: some workers' descriptors may not be kept"
            );
        }
    }

    /// Drops descriptors stored under `name`.
    pub fn remove_fds(&self, name: &str) {
        if let Some(inner) = self.storing() {
            inner.queue(StoreOp::Remove(name.to_string()));
        }
    }
}
