//! The drain as application code sees it: [`draining`], a future that resolves when this worker
//! begins draining, so a WebSocket handler can say goodbye (close frame 1001) and a server-sent
//! events stream can end with a `retry:` hint while the client still has a new worker to go to.
//!
//! One flag and one [`Notify`] for the process: a worker is one generation, and it drains once.
//! The worker sets the flag ([`begin`]) right after its connections start draining (accept loops
//! stopped, HTTP/1 responses carrying `Connection: close`); waiters are woken then, and a future
//! made later resolves at its first poll. Nothing on the request path reads it.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

static DRAINING: AtomicBool = AtomicBool::new(false);
static DRAIN_STARTED: Notify = Notify::const_new();

/// Resolves when this worker begins draining: a restart has a new generation ready (or the
/// host is shutting down), this worker has stopped accepting, and it finishes what it has within
/// `shutdown_timeout` (upgraded connections the application leaves open are closed by the host
/// at `stream_grace`, when configured). Resolves at once if the drain has already begun.
///
/// Usable from any task of the worker, any number of times (each call is its own future, cheap
/// to make and to drop): race it with a WebSocket's next message or an event stream's next event
/// (`tokio::select!`), end the stream gracefully, and the client reconnects to the new worker.
///
/// Outside a worker (a unit test calling a handler, a `check`, a program that never started
/// one) nothing ever drains, so it never resolves: use it in a `select!` with the work it
/// interrupts, not alone.
pub async fn draining() {
    let mut notified = pin!(DRAIN_STARTED.notified());
    // Registered before the flag is read: a drain starting between the two is not missed.
    notified.as_mut().enable();
    if DRAINING.load(Ordering::Acquire) {
        return;
    }
    notified.await;
}

/// This worker has begun draining: wake every [`draining`] future, now and to come.
pub(crate) fn begin() {
    DRAINING.store(true, Ordering::Release);
    DRAIN_STARTED.notify_waiters();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The only test touching the process-wide flag (it stays set for the test binary's life).
    #[tokio::test]
    async fn waiters_are_woken_at_the_drain_and_later_ones_resolve_at_once() {
        let waiter = tokio::spawn(draining());
        tokio::task::yield_now().await;
        let early = tokio::time::timeout(Duration::from_millis(50), draining()).await;
        assert!(early.is_err(), "resolved before the drain");
        begin();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter was not woken")
            .unwrap();
        tokio::time::timeout(Duration::from_millis(100), draining())
            .await
            .expect("a future made after the drain did not resolve at once");
    }
}
