//! [`Guard`], a connection's task as the [watchdog](super) sees it: the connection's future, run
//! until it ends or the sweeper kills it, and its registry entry, left when the guard drops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{ConnState, KILLED, Registration};

pin_project_lite::pin_project! {
    /// One connection's task: runs the connection future until it ends or the sweeper kills it,
    /// and leaves the registry when dropped. (A plain struct rather than an `async fn`, so the
    /// spawned future is no bigger than the connection's own: tokio copies it when spawning.)
    pub struct Guard<F> {
        #[pin]
        fut: F,
        state: Arc<ConnState>,
        registered: Option<Waker>,
        reg: Registration,
    }
}

impl<F: Future<Output = ()>> Guard<F> {
    /// Guard `fut`, the connection registered as `state` / `reg`.
    pub(crate) fn new(state: Arc<ConnState>, reg: Registration, fut: F) -> Guard<F> {
        Guard {
            fut,
            state,
            registered: None,
            reg,
        }
    }
}

impl<F: Future<Output = ()>> Future for Guard<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.state.flag(KILLED) {
            return Poll::Ready(());
        }
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let w = cx.waker().clone();
            *this.state.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            *this.registered = Some(w);
            // Killed between the check above and the waker being stored: the wake was missed.
            if this.state.flag(KILLED) {
                return Poll::Ready(());
            }
        }
        this.fut.poll(cx)
    }
}
