//! Serving until the supervisor's run loop ends, and what an ending that
//! leaves the workers running must do before corrald goes.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use corral::command::{self, Access, Listener};
use corral::journal::Output;
use corral::supervisor::{Ending, Handle, Supervisor};
use corral::systemd::notify::Notifier;

use crate::handover;

/// The command socket's server task, and the switch that stops it.
pub struct Server {
    task: Option<JoinHandle<Listener>>,
    stop: watch::Sender<bool>,
    listener: Option<Listener>,
}

impl Server {
    pub fn start(listener: Listener, handle: Handle, max_frame: usize, access: Arc<Access>) -> Server {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(command::serve(listener, handle, max_frame, access, stopped));
        Server { task: Some(task), stop, listener: None }
    }

    fn serving(&self) -> bool {
        self.task.is_some()
    }

    /// Stops accepting (new clients wait in the backlog) and waits until
    /// the requests already read are answered; the listener stays open.
    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            self.listener = task.await.ok();
        }
    }
}

/// Runs the supervisor until its run loop ends, and stops the server then.
/// An upgrade quiets the socket first (new clients wait in its backlog,
/// requests already sent are answered), then ends the run loop. Gives back
/// the listener, still open, unless the server failed.
pub async fn until_ending(
    mut supervisor: Supervisor,
    mut server: Server,
    handle: &Handle,
) -> (Ending, Option<Listener>) {
    let (upgrade_tx, mut upgrade_rx) = mpsc::unbounded_channel();
    supervisor.on_upgrade(upgrade_tx);
    let mut run = tokio::spawn(supervisor.run());
    let ending = loop {
        tokio::select! {
            ending = &mut run => break ending.unwrap_or(Ending::Shutdown { clean: false }),
            Some(_) = upgrade_rx.recv(), if server.serving() => {
                server.stop().await;
                handle.release();
            }
        }
    };
    server.stop().await;
    (ending, server.listener)
}

/// The workers' descriptors must be in the store before whoever takes them
/// over looks.
pub async fn flush_descriptor_store(notifier: Notifier) {
    let _ = tokio::task::spawn_blocking(move || notifier.flush_store(Duration::from_secs(10))).await;
}

/// Replaces corrald with the upgrade's binary, passing it the listener and
/// the workers' descriptors. Returns only when that failed: corrald exits
/// then, and its workers wait to be adopted.
pub async fn upgrade(
    binary: &Path,
    config: &Path,
    listener: Option<Listener>,
    fds: Vec<(String, std::os::fd::OwnedFd)>,
    output: &Output,
) -> ExitCode {
    let handed = listener.and_then(|l| {
        let own = l.owns_file();
        l.into_handover().ok().map(|fd| (fd, own))
    });
    let Some(listener) = handed else {
        tracing::error!("the command socket is gone; cannot upgrade");
        return ExitCode::FAILURE;
    };
    let err = handover::exec_upgrade(binary, config, listener, fds);
    tracing::error!("cannot execute {}: {err}; corrald exits and its workers wait to be adopted", binary.display());
    output.drain(Duration::from_secs(1)).await;
    ExitCode::FAILURE
}
