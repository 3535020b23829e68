//! Answering for a handler: a route's `timeout` (`504`) and `max_request_body` once the body
//! has grown past it (`413`).
//!
//! The route table decides what applies to a request ([`crate::routes::RequestGuards`]) and
//! gives the request a [`Cutoff`]; the connection wraps the handler's future in [`Guarded`],
//! which answers for the handler as soon as the cutoff trips, dropping the handler's future:
//! - **`max_request_body`**: the request body trips it on the read that takes it past the limit
//!   (the read fails). The handler's answer is replaced by `413` whether it is still running or
//!   has just answered (with the read error, say); on HTTP/1 the connection closes after it.
//!   If the handler had already answered before its body grew too large (its response headers
//!   are gone), the handler sees the read fail and the response goes on as the handler makes
//!   it; the connection is not reused (HTTP/1: hyper closes a connection whose request body was
//!   not read to its end; HTTP/2: the stream's unread rest is reset).
//! - **`timeout`**: the request is put on the watchdog's [`Deadlines`] list, which the sweeper
//!   looks at on each tick (no timer per request: see [`super::watchdog`]); past the deadline it
//!   trips the cutoff, and the handler that has not produced its response headers gets `504`.
//!   The timeout ends with the headers: a streaming response is then bounded by `send_timeout`
//!   (a client that reads nothing) and by nothing else (a handler slow to produce its next chunk
//!   is not timed). Like every watchdog deadline, it fires up to a tick late, never early.
//!
//! A request with neither guard is not wrapped and costs nothing here; a connection whose
//! routes have no `timeout` does not even hold the deadline list.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;

use crate::body::Cutoff;
use crate::handler::{BoxFuture, text};
use crate::routes::{RequestGuards, too_large};

/// The requests with a `timeout` still waiting for their handler's answer, and their deadlines.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    /// (deadline in watchdog milliseconds, the request's cutoff).
    entries: Vec<Option<(u64, Arc<Cutoff>)>>,
    free: Vec<usize>,
    len: usize,
}

impl Deadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a request whose cutoff trips `timeout` from now; returns its slot.
    fn add(&self, timeout: Duration, cutoff: Arc<Cutoff>) -> usize {
        let due = super::watchdog::precise_now_ms()
            .saturating_add(timeout.as_millis().min(u64::MAX as u128) as u64);
        let mut s = self.lock();
        s.len += 1;
        match s.free.pop() {
            Some(i) => {
                s.entries[i] = Some((due, cutoff));
                i
            }
            None => {
                s.entries.push(Some((due, cutoff)));
                s.entries.len() - 1
            }
        }
    }

    fn remove(&self, slot: usize) {
        let mut s = self.lock();
        if s.entries.get_mut(slot).and_then(Option::take).is_some() {
            s.free.push(slot);
            s.len -= 1;
        }
    }

    /// Trip every request past its deadline at `now` (watchdog milliseconds). Both are
    /// truncated to the millisecond, so a deadline is past only when `now` is beyond it.
    pub(super) fn sweep(&self, now: u64) {
        let mut due = Vec::new();
        {
            let mut s = self.lock();
            if s.len == 0 {
                return;
            }
            let Slots { entries, free, len } = &mut *s;
            for (i, e) in entries.iter_mut().enumerate() {
                if e.as_ref().is_some_and(|(at, _)| now > *at)
                    && let Some((_, c)) = e.take()
                {
                    free.push(i);
                    *len -= 1;
                    due.push(c);
                }
            }
        }
        for c in due {
            c.trip(Cutoff::TIMED_OUT);
        }
    }

    /// Requests on the list.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }
}

/// A handler's future, answered for when its request's [`Cutoff`] trips.
pub(crate) struct Guarded {
    fut: Option<BoxFuture>,
    cutoff: Arc<Cutoff>,
    /// Its slot on the deadline list, while on it.
    deadline: Option<(Arc<Deadlines>, usize)>,
    version: http::Version,
    max_body: Option<u64>,
}

impl Guarded {
    /// Guard `fut` with `guards`, whose cutoff is `cutoff`; `deadlines` is the watchdog's list,
    /// for a route with a `timeout`.
    pub(crate) fn new(
        fut: BoxFuture,
        guards: RequestGuards,
        cutoff: Arc<Cutoff>,
        deadlines: Option<&Arc<Deadlines>>,
        version: http::Version,
    ) -> Guarded {
        let deadline = match (guards.timeout, deadlines) {
            (Some(t), Some(d)) => Some((d.clone(), d.add(t, cutoff.clone()))),
            _ => None,
        };
        Guarded {
            fut: Some(fut),
            cutoff,
            deadline,
            version,
            max_body: guards.max_body,
        }
    }

    /// Answer for the handler (its future is dropped) if the cutoff has tripped.
    fn tripped(&mut self) -> Option<GuardedAnswer> {
        let answer = if self.cutoff.is(Cutoff::TOO_LARGE) {
            (too_large(self.max_body.unwrap_or(0), self.version), true)
        } else if self.cutoff.is(Cutoff::TIMED_OUT) {
            let msg =
                "504 gateway timeout: the handler did not answer within the route's timeout\n";
            (text(StatusCode::GATEWAY_TIMEOUT, msg), false)
        } else {
            return None;
        };
        self.fut = None;
        self.leave_deadlines();
        Some(answer)
    }

    fn leave_deadlines(&mut self) {
        if let Some((d, slot)) = self.deadline.take() {
            d.remove(slot);
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.leave_deadlines();
    }
}

/// What a [`Guarded`] future gives: the answer, and whether the HTTP/1 connection must close
/// after it (a `413`: the body is left unread).
pub(crate) type GuardedAnswer = (crate::Response, bool);

impl Future for Guarded {
    type Output = GuardedAnswer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<GuardedAnswer> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Pending;
        };
        let answered = fut.as_mut().poll(cx);
        // The body grew too large while the handler read it: 413, whether the handler answered
        // (maybe with the read error) or not.
        if this.cutoff.is(Cutoff::TOO_LARGE)
            && let Some(a) = this.tripped()
        {
            return Poll::Ready(a);
        }
        if let Poll::Ready(resp) = answered {
            this.fut = None;
            this.leave_deadlines();
            return Poll::Ready((resp, false));
        }
        this.cutoff.register(cx.waker());
        // Looked at after the waker is stored: a trip in between is not missed.
        match this.tripped() {
            Some(a) => Poll::Ready(a),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;

    fn never() -> BoxFuture {
        Box::pin(std::future::pending())
    }

    fn guards(timeout: Duration) -> RequestGuards {
        RequestGuards {
            timeout: Some(timeout),
            cutoff: None,
            max_body: None,
        }
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_504_and_leaves_the_list() {
        let deadlines = Arc::new(Deadlines::default());
        let g = Guarded::new(
            never(),
            guards(Duration::from_millis(50)),
            Arc::default(),
            Some(&deadlines),
            http::Version::HTTP_11,
        );
        assert_eq!(deadlines.len(), 1);
        let sweeper = {
            let d = deadlines.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    d.sweep(super::super::watchdog::precise_now_ms());
                }
            })
        };
        let start = std::time::Instant::now();
        let (resp, close) = g.await;
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!close);
        assert_eq!(deadlines.len(), 0);
        sweeper.abort();
    }

    #[tokio::test]
    async fn an_answer_in_time_leaves_the_list_and_a_dropped_request_too() {
        let deadlines = Arc::new(Deadlines::default());
        let fast: BoxFuture = Box::pin(async { crate::Response::new(Body::from("ok")) });
        let t = Duration::from_secs(60);
        let v = http::Version::HTTP_11;
        let g = Guarded::new(fast, guards(t), Arc::default(), Some(&deadlines), v);
        let (resp, _) = g.await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(deadlines.len(), 0);
        let g = Guarded::new(never(), guards(t), Arc::default(), Some(&deadlines), v);
        assert_eq!(deadlines.len(), 1);
        drop(g);
        assert_eq!(deadlines.len(), 0);
    }
}
