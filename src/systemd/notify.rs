//! What corrald tells the service manager that started it (`sd_notify`):
//! when it is ready, reloading or stopping, a one-line status, and the
//! watchdog keep-alive.
//!
//! Outside a `Type=notify` service (no `NOTIFY_SOCKET`) every call is a
//! no-op, so the supervisor calls these unconditionally.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier { inner: None };
        }
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Notifier {
            inner: Some(Arc::new(Inner { ready: AtomicBool::new(false), status: Mutex::new(String::new()), watchdog })),
        }
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
        if self.inner.is_some() && !fds.is_empty() {
            if let Err(e) = sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], fds) {
                tracing::warn!("cannot hand {name} to the service manager's descriptor store: {e}");
            }
        }
    }

    /// Drops descriptors stored under `name`.
    pub fn remove_fds(&self, name: &str) {
        self.send(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
    }
}
