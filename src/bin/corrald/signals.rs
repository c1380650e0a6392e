//! Signals and the service manager's stop requests, turned into the
//! requests a client would send, so they take the same path through the
//! supervisor.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use corral::audit::Auditor;
use corral::proto;
use corral::supervisor::{Handle, Replies, Reply, Request};
use corral::systemd::{self, Systemd};

/// Answers, for as long as corrald runs: SIGTERM (a shutdown, or a
/// handover when systemd is restarting corrald), SIGINT (a shutdown),
/// SIGHUP (audit files reopened, config reloaded) and systemd's
/// `RequestStop` for one of corral's scopes (a soft stop of its target).
pub fn answer(
    handle: Handle,
    manager: Option<Systemd>,
    auditor: Option<Arc<Auditor>>,
    mut events: Option<UnboundedReceiver<systemd::Event>>,
) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers; stop corrald with `corralctl shutdown`");
            return;
        };
        // Responses to signal-initiated requests go nowhere but the log.
        let (tx, mut rx) = Replies::channel();
        let ask = |request| handle.request(request, Reply::new(0, 0, tx.clone()));
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if restart_pending(&manager).await {
                        handle.handover();
                    } else {
                        ask(Request::Shutdown);
                    }
                }
                _ = int.recv() => ask(Request::Shutdown),
                _ = hup.recv() => {
                    reopen_audit_files(&auditor).await;
                    ask(Request::ReloadConfig);
                }
                Some(event) = async { events.as_mut()?.recv().await }, if events.is_some() => {
                    if let Some(stop) = scope_stop(event) {
                        ask(stop);
                    }
                }
                Some(r) = rx.recv() => {
                    if r.response.status() != proto::Status::Processing {
                        tracing::info!("{}", r.response.message);
                    }
                }
            }
        }
    });
}

/// Whether SIGTERM comes from `systemctl restart`: then the workers stay
/// for the next corrald (their descriptors are in the store); a plain stop
/// drains them.
async fn restart_pending(manager: &Option<Systemd>) -> bool {
    match manager {
        Some(sd) => sd.restart_pending().await,
        None => false,
    }
}

/// SIGHUP reopens the audit files too, as `corralctl audit reopen` does
/// after a rotation, for whoever rotates them with a signal.
async fn reopen_audit_files(auditor: &Option<Arc<Auditor>>) {
    if let Some(auditor) = auditor {
        match auditor.reopen().await {
            Ok(()) => tracing::info!("audit log files reopened"),
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// `systemctl stop` of a corral scope: the soft stop of the group or worker
/// it holds, as a client would ask.
fn scope_stop(event: systemd::Event) -> Option<Request> {
    let systemd::Event::RequestStop { unit } = event;
    match systemd::target_of_scope(&unit) {
        Some(target) => {
            tracing::info!(%unit, "systemd asks to stop the scope: draining its workers");
            Some(Request::Stop(proto::Stop { target: target.wire(), hard: false }))
        }
        None => {
            tracing::warn!(%unit, "RequestStop for a unit that is not corral's");
            None
        }
    }
}

/// Test builds only: SIGUSR2 wedges the supervisor's run loop, so the
/// real-systemd suite can watch the watchdog fire.
#[cfg(feature = "fault-injection")]
pub fn wedge_on_sigusr2(handle: Handle) {
    tokio::spawn(async move {
        if let Ok(mut usr2) = signal(SignalKind::user_defined2()) {
            while usr2.recv().await.is_some() {
                handle.wedge();
            }
        }
    });
}
