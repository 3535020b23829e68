//! `max_connections`: one server's cap on the connections it holds open in one worker.
//!
//! At the cap the server's accept loops stop calling `accept`: new connections wait in the
//! kernel's listen queue (nothing is refused, nothing is accepted and then closed), and the
//! loops are woken when a connection of that server closes. A connection holds its [`Permit`]
//! in its [`super::watchdog::ConnState`], which lives as long as anything of the connection
//! does: its task, a response still being written, and an upgraded connection (a WebSocket,
//! whose I/O keeps the state), so upgraded and HTTP/2 connections count like any other.
//!
//! The log says when the cap is reached, once, and once again when it has cleared: when an
//! accept loop under the cap finds nobody waiting in the queue. A server that stays saturated
//! (a connection closes, a waiting one takes its place) writes nothing more.
//!
//! The cap is per worker generation: during a restart the draining generation's connections do
//! not count against the new one's (else the new generation would accept nothing until the old
//! one's keep-alive clients left, up to `shutdown_timeout`), so for that while the host may hold
//! up to twice the cap.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// One server's connection cap, shared by its listeners' accept loops.
#[derive(Debug)]
pub(crate) struct ConnLimit {
    /// The server's name, for the log.
    server: String,
    max: usize,
    live: AtomicUsize,
    /// Accept loops parked at the cap.
    parked: Mutex<Vec<Waker>>,
    /// The cap was reached and has not cleared yet (logged once each way).
    at_cap: AtomicBool,
}

/// A connection's place under its server's cap; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Permit(Arc<ConnLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.0.live.fetch_sub(1, Ordering::AcqRel);
        if before >= self.0.max {
            self.0.wake_parked();
        }
    }
}

impl ConnLimit {
    /// A cap of `max` connections (at least 1) for server `server`.
    pub(crate) fn new(server: &str, max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            server: server.to_string(),
            max: max.max(1),
            live: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
            at_cap: AtomicBool::new(false),
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn wake_parked(&self) {
        let parked = std::mem::take(&mut *self.lock());
        for w in parked {
            w.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a place, or `Pending` at the cap (the task is woken when a place frees).
    pub(crate) fn poll_acquire(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if let Some(p) = self.try_acquire() {
            return Poll::Ready(p);
        }
        // Parked before looking again, so a place freed in between wakes this task.
        {
            let mut parked = self.lock();
            if !parked.iter().any(|w| w.will_wake(cx.waker())) {
                parked.push(cx.waker().clone());
            }
        }
        if let Some(p) = self.try_acquire() {
            return Poll::Ready(p);
        }
        if !self.at_cap.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                server = %self.server,
                max_connections = self.max,
                "max_connections reached: new connections wait in the listen queue"
            );
        }
        Poll::Pending
    }

    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    /// An accept loop under the cap found the queue empty: if the cap had been reached, it has
    /// cleared (every connection that waited was taken).
    pub(crate) fn queue_empty(&self) {
        if self.at_cap.load(Ordering::Relaxed) && self.at_cap.swap(false, Ordering::AcqRel) {
            tracing::info!(
                server = %self.server,
                connections = self.live.load(Ordering::Relaxed),
                "below max_connections again: no connection waits"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn at_the_cap_acquire_parks_and_a_freed_place_wakes_it() {
        let limit = ConnLimit::new("s", 2);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let a = match limit.poll_acquire(&mut cx) {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("pending under the cap"),
        };
        let _b = match limit.poll_acquire(&mut cx) {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("pending under the cap"),
        };
        assert!(limit.poll_acquire(&mut cx).is_pending());
        assert!(limit.poll_acquire(&mut cx).is_pending());
        assert_eq!(limit.live(), 2);
        assert!(limit.at_cap.load(Ordering::SeqCst));
        drop(a);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(limit.live(), 1);
        assert!(limit.poll_acquire(&mut cx).is_ready());
        // Still at the cap until an accept finds the queue empty.
        assert!(limit.at_cap.load(Ordering::SeqCst));
        limit.queue_empty();
        assert!(!limit.at_cap.load(Ordering::SeqCst));
    }
}
