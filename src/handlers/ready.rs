//! The `ready` handler: readiness, for load balancers and Kubernetes' `readinessProbe`. It
//! answers `200 ready` while the host serves, and `503 shutting down` from the moment a shutdown
//! begins (through `shutdown_delay` and the drain). Before its start-up is done a worker answers
//! `503 starting`; outside requests never see that, since a worker accepts only once its
//! start-up checks have passed (they wait in the listening socket's queue meanwhile). `health`
//! is liveness: `200` for as long as the worker runs.
//!
//! The state is one [`Readiness`] per worker process, set by the worker: a worker started while
//! another generation serves begins as serving (the host is ready; a probe that reaches the new
//! worker early must not take the host out of rotation), the first one begins as starting. A
//! graceful restart's drain leaves it serving (the host still serves, through the new
//! generation); only a shutdown turns it to going away. No params.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::StatusCode;

use super::{MethodPolicy, Respond, text_ok};
use crate::body::Body;
use crate::config::Params;
use crate::handler::{BoxFuture, Factory, Handler, text};

/// What a worker's `ready` routes answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyState {
    /// No generation has reported ready: `503 starting`.
    Starting = 0,
    /// The host serves: `200 ready`.
    Serving = 1,
    /// A shutdown has begun: `503 shutting down`.
    GoingAway = 2,
}

/// One worker's readiness, shared by its `ready` routes.
#[derive(Debug, Default)]
pub(crate) struct Readiness(AtomicU8);

impl Readiness {
    /// A readiness starting in `state`.
    pub(crate) fn new(state: ReadyState) -> Arc<Readiness> {
        Arc::new(Readiness(AtomicU8::new(state as u8)))
    }

    /// Where it is.
    pub(crate) fn get(&self) -> ReadyState {
        match self.0.load(Ordering::Relaxed) {
            0 => ReadyState::Starting,
            1 => ReadyState::Serving,
            _ => ReadyState::GoingAway,
        }
    }

    /// Serving, unless a shutdown has begun (going away is never undone).
    pub(crate) fn serving(&self) {
        let _ = self.0.compare_exchange(
            ReadyState::Starting as u8,
            ReadyState::Serving as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A shutdown has begun.
    pub(crate) fn going_away(&self) {
        self.0.store(ReadyState::GoingAway as u8, Ordering::Relaxed);
    }
}

/// Answers from a worker's [`Readiness`].
pub(crate) struct Ready(pub(crate) Arc<Readiness>);

impl Respond for Ready {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        let r = match self.0.get() {
            ReadyState::Serving => text_ok(&parts.method, Bytes::from_static(b"ready\n")),
            state => {
                let why: &'static [u8] = if state == ReadyState::Starting {
                    b"starting\n"
                } else {
                    b"shutting down\n"
                };
                let body = if parts.method == http::Method::HEAD {
                    Body::empty()
                } else {
                    Body::from(Bytes::from_static(why))
                };
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        };
        Box::pin(std::future::ready(r))
    }
}

/// The `ready` factory answering from `state` (a worker registers its own over the default).
pub(crate) fn factory(state: Arc<Readiness>) -> Factory {
    Arc::new(move |params: &Params| {
        params.deny_unknown(&[])?;
        let h: Arc<dyn Handler> = Arc::new(super::Builtin::new(
            Ready(state.clone()),
            MethodPolicy::from_params(params),
        ));
        Ok(h)
    })
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::handlers::test_util::*;
    use crate::handlers::{Builtin, MethodPolicy};

    async fn answer(state: &Arc<Readiness>, method: Method) -> (StatusCode, Bytes) {
        let h = Builtin::new(Ready(state.clone()), MethodPolicy::GetHead);
        let r = h.handle(req(method, "/ready")).await;
        (r.status(), body(r).await)
    }

    #[tokio::test]
    async fn follows_the_worker_state() {
        let s = Readiness::new(ReadyState::Starting);
        assert_eq!(
            answer(&s, Method::GET).await,
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::from("starting\n"))
        );
        s.serving();
        assert_eq!(
            answer(&s, Method::GET).await,
            (StatusCode::OK, Bytes::from("ready\n"))
        );
        s.going_away();
        assert_eq!(
            answer(&s, Method::GET).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from("shutting down\n")
            )
        );
        assert_eq!(
            answer(&s, Method::HEAD).await,
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
        );
        // Going away is never undone.
        s.serving();
        assert_eq!(s.get(), ReadyState::GoingAway);
    }
}
