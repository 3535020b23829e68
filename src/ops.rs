//! The operations every trigger shares — restart, shutdown, status — and their results.
//!
//! Whatever asks (a signal, the admin page, the control CLI, a file watcher, the library calls
//! [`restart`], [`shutdown`], [`status`]), the request goes to the supervisor's one state machine,
//! and the answer comes back as an [`OpResult`]: so the admin page, the CLI and a handler all
//! report the same outcome in the same words.
//!
//! Inside a worker the way to the supervisor is one [`Link`]: made by the worker when it starts
//! serving and passed to whoever asks for operations (the admin routes). The library calls
//! below are meant to work from anywhere in a handler's code, which has no link in hand, so the
//! worker also registers its link here once; that registration is the only process-wide state
//! on this path, and nothing inside apphost reads it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::channel::Op;
use crate::serve::Serving;

pub use crate::channel::{LastRestart, OpError, OpReply, OpResult, RestartOutcome, Status};

/// An operation waiting to go to the supervisor, and where its answer goes.
pub(crate) type Pending = (Op, oneshot::Sender<OpResult>);

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
}

impl Link {
    /// A link for generation `generation` serving through `serving`, and the queue of the
    /// operations asked through it (the worker's loop relays them to the supervisor).
    pub(crate) fn new(
        generation: u64,
        serving: Arc<Serving>,
    ) -> (Link, mpsc::UnboundedReceiver<Pending>) {
        let (requests, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(LinkInner {
            requests,
            generation,
            serving,
        });
        (Link { inner }, rx)
    }

    /// Ask the supervisor for an operation and wait for the answer.
    pub(crate) async fn request(&self, op: Op) -> OpResult {
        let (rtx, rrx) = oneshot::channel();
        self.inner
            .requests
            .send((op, rtx))
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
