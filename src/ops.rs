//! The operations every trigger shares — restart, shutdown, status — and their results.
//!
//! Whatever asks (a signal, the admin page, the control CLI, a file watcher, the library calls
//! [`restart`], [`shutdown`], [`status`]), the request goes to the supervisor's one state machine,
//! and the answer comes back as an [`OpResult`]: so the admin page, the CLI and a handler all
//! report the same outcome in the same words.
//!
//! Inside a worker the way to the supervisor is one `Link`: made by the worker when it starts
//! serving and passed to whoever asks for operations (the admin routes). The library calls
//! below are meant to work from anywhere in a handler's code, which has no link in hand, so the
//! worker also registers its link here once; that registration is the only process-wide state
//! on this path, and nothing inside apphost reads it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::channel::Op;
use crate::serve::Serving;
use crate::tally::{Counts, HostMetrics, WorkerTally};

pub use crate::channel::{LastRestart, OpError, OpReply, OpResult, RestartOutcome, Status};

/// Something asked of the supervisor through a [`Link`], waiting to go, and where its answer
/// goes.
#[derive(Debug)]
pub(crate) enum Pending {
    /// An operation.
    Op(Op, oneshot::Sender<OpResult>),
    /// The host's metrics (a scrape).
    Metrics(oneshot::Sender<HostMetrics>),
}

/// A worker's handle to its supervisor: asks for operations (relayed over the channel by the
/// worker's loop) and knows the worker's own facts (generation, connections, drain).
#[derive(Clone, Debug)]
pub(crate) struct Link {
    inner: Arc<LinkInner>,
}

#[derive(Debug)]
struct LinkInner {
    requests: mpsc::UnboundedSender<Pending>,
    generation: u64,
    serving: Arc<Serving>,
    /// This worker's request counters, when its config asks for metrics.
    tally: Option<Arc<WorkerTally>>,
}

impl Link {
    /// A link for generation `generation` serving through `serving` (counting its requests in
    /// `tally`, if given), and the queue of what is asked through it (the worker's loop relays
    /// it to the supervisor).
    pub(crate) fn new(
        generation: u64,
        serving: Arc<Serving>,
        tally: Option<Arc<WorkerTally>>,
    ) -> (Link, mpsc::UnboundedReceiver<Pending>) {
        let (requests, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(LinkInner {
            requests,
            generation,
            serving,
            tally,
        });
        (Link { inner }, rx)
    }

    /// This worker's request counters, when its config asks for metrics.
    pub(crate) fn tally(&self) -> Option<&Arc<WorkerTally>> {
        self.inner.tally.as_ref()
    }

    /// This worker's counts since it started, gauges as of now (empty when it does not count).
    pub(crate) fn counts(&self) -> Counts {
        match &self.inner.tally {
            Some(t) => t.snapshot(&self.inner.serving.gauges()),
            None => Counts::default(),
        }
    }

    /// Ask the supervisor for the host's metrics; `None` when it does not answer (gone, or an
    /// older supervisor that does not know the request) within `wait`.
    pub(crate) async fn metrics(&self, wait: std::time::Duration) -> Option<HostMetrics> {
        let (rtx, rrx) = oneshot::channel();
        self.inner.requests.send(Pending::Metrics(rtx)).ok()?;
        tokio::time::timeout(wait, rrx).await.ok()?.ok()
    }

    /// Ask the supervisor for an operation and wait for the answer.
    pub(crate) async fn request(&self, op: Op) -> OpResult {
        let (rtx, rrx) = oneshot::channel();
        self.inner
            .requests
            .send(Pending::Op(op, rtx))
            .map_err(|_| OpError::Unavailable("the worker is stopping".into()))?;
        rrx.await
            .unwrap_or_else(|_| Err(OpError::Unavailable("the supervisor did not answer".into())))
    }

    /// This worker's generation number.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// This worker's serving state (connections, drain).
    pub(crate) fn serving(&self) -> &Arc<Serving> {
        &self.inner.serving
    }

    /// Make this link the one the library calls ([`restart`], [`shutdown`], [`status`]) use.
    /// A worker serves one generation, so the first registration stays.
    pub(crate) fn register_for_library(&self) {
        let _ = LIBRARY_LINK.set(self.clone());
    }
}

/// The link the library calls use (see the module doc).
static LIBRARY_LINK: OnceLock<Link> = OnceLock::new();

async fn request(op: Op) -> OpResult {
    match LIBRARY_LINK.get() {
        Some(link) => link.request(op).await,
        None => Err(OpError::Unavailable(
            "not running inside an apphost worker".into(),
        )),
    }
}

/// Restart the host (graceful or full, as configured), optionally with another executable.
/// Callable from a handler or anywhere in a worker process; waits for the outcome.
pub async fn restart(new_exe: Option<&Path>) -> OpResult {
    let exe = new_exe.map(|p| p.to_string_lossy().into_owned());
    request(Op::Restart {
        exe,
        via: Some("library".into()),
    })
    .await
}

/// Shut the host down: every generation drains, then the supervisor exits 0.
pub async fn shutdown() -> OpResult {
    request(Op::Shutdown).await
}

/// The supervisor's state.
pub async fn status() -> OpResult {
    request(Op::Status).await
}

/// A human summary of a `reopen-logs` answer (the failures themselves are listed apart).
pub(crate) fn describe_reopen(workers: u32, confirmed: u32, files: u32, failed: usize) -> String {
    use crate::clock::plural;
    if workers == 0 {
        return "no worker is running: no access log to reopen".into();
    }
    if files == 0 && failed == 0 {
        return format!(
            "no access log file to reopen (asked {}; stdout and stderr need none)",
            plural(u64::from(workers), "worker")
        );
    }
    let reopened = format!(
        "reopened {} in {} of {}",
        plural(u64::from(files), "access log file"),
        confirmed,
        plural(u64::from(workers), "worker")
    );
    if failed == 0 {
        format!("{reopened}: the renamed files are complete")
    } else {
        format!("{reopened}; {} failed:", plural(failed as u64, "reopen"))
    }
}
