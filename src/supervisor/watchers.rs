//! The supervisor's file watch: restart by itself when the executable is replaced or the config
//! file edited (see [`crate::watch`] for how a change is detected and settled).
//!
//! A settled change is checked before anything is stopped or started: a replaced executable must
//! pass [`super::exe::check`], and a preflight run `EXE check [-c CONFIG]` (through the
//! supervisor, which reaps every child) must exit 0 within [`crate::watch::PREFLIGHT_TIMEOUT`].
//! A change that fails is logged with the reason (for a config error: file, line, column) and
//! nothing else happens. A change that passes asks for a restart like any other trigger; if a
//! restart is already under way, the watcher waits for it to end and asks again, so a change is
//! never lost.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::events::{Event, Reply};
use crate::channel::Op;
use crate::ops::OpError;
use crate::watch::FileWatch;

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchSpec {
    /// The executable path recorded at start, if `watch.executable`.
    pub exe: Option<PathBuf>,
    /// The config file, if `watch.config` (never for the embedded default).
    pub config: Option<PathBuf>,
    /// `watch.settle`.
    pub settle: Duration,
}

/// Start the watch task; abort the returned handle to stop it.
pub(crate) fn spawn(
    spec: WatchSpec,
    events: mpsc::UnboundedSender<Event>,
) -> Option<tokio::task::AbortHandle> {
    let files: Vec<PathBuf> = spec.exe.iter().chain(spec.config.iter()).cloned().collect();
    if files.is_empty() {
        return None;
    }
    let mut watch = match FileWatch::new(&files) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch {files:?}: {e}; changes will not restart by themselves");
            return None;
        }
    };
    tracing::info!(files = ?files, "watching for changes");
    let task = tokio::spawn(async move {
        while let Some(changed) = watch.next_settled(spec.settle).await {
            let exe_changed = spec.exe.as_ref().is_some_and(|e| changed.contains(e));
            let what = if exe_changed { "executable" } else { "config" };
            let path = if exe_changed {
                spec.exe.clone()
            } else {
                spec.config.clone()
            };
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            tracing::info!("{what} {path} changed; checking it");
            if exe_changed
                && let Some(exe) = &spec.exe
                && let Err(why) = super::exe::check(exe)
            {
                tracing::warn!("new executable refused: {why}; still serving the old one");
                continue;
            }
            let (tx, rx) = oneshot::channel();
            if events.send(Event::Preflight(tx)).is_err() {
                return;
            }
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    tracing::warn!("{what} change refused: {why}; still serving the old one");
                    continue;
                }
                Err(_) => return,
            }
            ask_restart(&events, what).await;
        }
    });
    Some(task.abort_handle())
}

async fn ask_restart(events: &mpsc::UnboundedSender<Event>, what: &'static str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (tx, rx) = oneshot::channel();
        let op = Op::Restart {
            exe: None,
            via: Some("watch".into()),
        };
        if events
            .send(Event::Op(op, Reply::Watcher { tx, what }))
            .is_err()
        {
            return;
        }
        match rx.await {
            Ok(Ok(_)) => {
                log_outcome(what, &Ok(()));
                return;
            }
            Ok(Err(OpError::Busy(_))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => {
                log_outcome(what, &Err(e));
                return;
            }
            Err(_) => return,
        }
    }
}

/// Log how a restart asked for by the watch ended (also by a re-executed supervisor, for the
/// watch of its previous image).
pub(crate) fn log_outcome(what: &str, r: &Result<(), OpError>) {
    match r {
        Ok(()) => tracing::info!("restarted after the {what} change"),
        Err(e) => tracing::warn!("restart after the {what} change failed: {e}"),
    }
}
