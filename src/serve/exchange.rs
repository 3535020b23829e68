//! One request as serving sees it ([`Exchange`]), and the [`Observer`] told about each request
//! once, when it has finished. This is the one point where requests are recorded: the access
//! log and the metrics (`crate::observe`, a layer above this one) implement [`Observer`] and are
//! handed down to each listener's [`super::Endpoint`]; serving never imports them.
//!
//! # When a request has finished
//! A request has finished when the last byte of its response has been *written to the socket*
//! (DESIGN property 4), not when hyper dropped its body (which only means the last chunk was
//! queued, possibly megabytes before a slow client reads it). So:
//! 1. [`Recording::start`] takes the request's facts when its head arrives (method, target,
//!    version, the client as the connection reports it in [`ClientAddr`] — the proxied client
//!    with the PROXY protocol — and what the observer wants from the headers);
//! 2. the response's status is noted when the handler answers, and its body bytes are counted
//!    as hyper takes them ([`super::progress::TrackedBody`]);
//! 3. when the body ends (hyper drops it), the recording moves to its connection's
//!    [`Unflushed`] list, and the next flush of the connection's I/O that completes
//!    ([`super::progress::TrackedIo`]) finishes it: hyper writes out everything it holds before it
//!    flushes, so by then the response's last byte is on the socket ([`Outcome::Written`]).
//!    For HTTP/2 the body ends in its stream's task and is written by the connection's task; a
//!    flush completing in that gap finishes the stream a moment early (its frames are queued in
//!    h2, with window granted, and go out with the connection's next write).
//!
//! A request also finishes, exactly once, when it cannot get that far: a connection that closes
//! with a response not yet written (the client left, or `send_timeout` / `shutdown_timeout` cut
//! it) finishes its recordings as [`Outcome::Cut`] when its state is dropped; a request whose
//! client left before the handler answered finishes as [`Outcome::Abandoned`] (logged with
//! status 499, nginx's "client closed request"). Each is finished by `Drop` if nothing else
//! finished it first, so no path loses or doubles one.
//!
//! Cost: nothing at all for a listener without an observer (one `Option` test per request, one
//! flag load per flush). With one: a clock read at each end, a boxed [`Exchange`] (reference
//! counted clones of the target and of the header values kept, no copies), the observer's calls.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use crate::handler::ClientAddr;
use crate::tally::RouteTally;

/// `x-request-id`: a request's id, taken from the request or given to it, and returned in the
/// response.
pub(crate) static X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// Told about every request of the listeners it is given to.
pub(crate) trait Observer: Send + Sync + fmt::Debug + 'static {
    /// A request's head has arrived; `ex` holds what serving knows. Take from `headers` what
    /// [`Observer::finished`] will need (into `ex`), and give the request its id
    /// (`ex.request_id`) if this observer gives ids: it is returned in the response's
    /// `x-request-id` header and recorded in the request's tracing span.
    fn started(&self, headers: &HeaderMap, ex: &mut Exchange);

    /// The request has finished (see the module doc): called once per request.
    fn finished(&self, ex: &Exchange);
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not finished yet.
    Open,
    /// The response's last byte was written.
    Written,
    /// The connection closed before the response was all written.
    Cut,
    /// The client left before the handler answered (no response was sent).
    Abandoned,
}

/// One request and its response, as recorded.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// When its head arrived.
    pub started: Instant,
    /// From `started` to the end (set when it finishes).
    pub duration: Duration,
    /// The request's method.
    pub method: Method,
    /// The request target as received (for HTTP/2, built from its pseudo-headers).
    pub uri: Uri,
    /// The HTTP version.
    pub version: Version,
    /// The client (the proxied one, with the PROXY protocol).
    pub client: ClientAddr,
    /// The response's status (`499` when the client left before an answer).
    pub status: StatusCode,
    /// Response body bytes taken by the connection.
    pub bytes: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The request's id, if the observer gives ids.
    pub request_id: Option<RequestId>,
    /// The `User-Agent` header, if the observer kept it.
    pub user_agent: Option<HeaderValue>,
    /// The `Referer` header, if the observer kept it.
    pub referer: Option<HeaderValue>,
    /// The matched route's counters, when its server counts requests (metrics).
    pub tally: Option<Arc<RouteTally>>,
}

/// A request's id: the one it came with, or one made for it (kept inline: no allocation until
/// it is put in the response).
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    /// Its own `x-request-id` (a reference to the request head's bytes).
    Given(HeaderValue),
    /// Made for it: `buf[..len]`.
    Made {
        /// The id's bytes (visible ASCII).
        buf: [u8; RequestId::MADE_MAX],
        /// How many of them.
        len: u8,
    },
}

impl RequestId {
    /// The longest id [`RequestId::Made`] holds.
    pub(crate) const MADE_MAX: usize = 40;

    /// The id's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(v) => v.as_bytes(),
            RequestId::Made { buf, len } => &buf[..usize::from(*len)],
        }
    }

    /// The id as a header value, for the response.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        match self {
            RequestId::Given(v) => Some(v.clone()),
            RequestId::Made { .. } => HeaderValue::from_bytes(self.as_bytes()).ok(),
        }
    }
}

/// The id as text (its bytes are visible ASCII, whichever kind it is).
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// nginx's status for a request whose client closed the connection before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request being recorded: finished exactly once, by [`Recording::written`] or, failing that,
/// when dropped (see the module doc). One pointer wide, so the futures and bodies that carry it
/// grow by a word only (hyper moves them).
pub(crate) struct Recording(Box<Recorded>);

struct Recorded {
    observer: Arc<dyn Observer>,
    ex: Exchange,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.ex.fmt(f)
    }
}

impl Recording {
    /// Start recording `req` from `client` for `observer`.
    pub(crate) fn start<B>(
        observer: &Arc<dyn Observer>,
        req: &http::Request<B>,
        client: ClientAddr,
    ) -> Recording {
        let mut r = Box::new(Recorded {
            observer: observer.clone(),
            ex: Exchange {
                started: Instant::now(),
                duration: Duration::ZERO,
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                client,
                status: StatusCode::OK,
                bytes: 0,
                outcome: Outcome::Open,
                request_id: None,
                user_agent: None,
                referer: None,
                tally: None,
            },
        });
        observer.started(req.headers(), &mut r.ex);
        Recording(r)
    }

    /// The request's id, if it has one.
    pub(crate) fn request_id(&self) -> Option<&RequestId> {
        self.0.ex.request_id.as_ref()
    }

    /// The tracing span the handler runs in: `request{request_id=…}`, when the request has an
    /// id. (When the `request` span's level is off, this is a disabled span: no cost beyond a
    /// check.)
    pub(crate) fn span(&self) -> Option<tracing::Span> {
        let id = self.0.ex.request_id.as_ref()?;
        let span = tracing::info_span!("request", request_id = %id);
        (!span.is_disabled()).then_some(span)
    }

    /// The route table routed the request: it counts in `tally` (when its server counts).
    pub(crate) fn routed(&mut self, tally: Option<&Arc<RouteTally>>) {
        self.0.ex.tally = tally.cloned();
    }

    /// The handler answered with `status`.
    pub(crate) fn answered(&mut self, status: StatusCode) {
        self.0.ex.status = status;
        self.0.ex.outcome = Outcome::Cut;
    }

    /// The connection took `n` more body bytes.
    pub(crate) fn took(&mut self, n: usize) {
        self.0.ex.bytes += n as u64;
    }

    /// The response's last byte was written.
    fn written(mut self) {
        self.0.ex.outcome = Outcome::Written;
        self.finish();
    }

    fn finish(&mut self) {
        let Recorded { observer, ex } = &mut *self.0;
        ex.duration = ex.started.elapsed();
        if ex.outcome == Outcome::Open {
            ex.outcome = Outcome::Abandoned;
            ex.status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(ex.status);
        }
        observer.finished(ex);
    }
}

impl Drop for Recording {
    /// Not written: cut after its answer, or abandoned before one (`written` finishes the
    /// others, then marks them so this does nothing).
    fn drop(&mut self) {
        match self.0.ex.outcome {
            Outcome::Written => {}
            _ => self.finish(),
        }
    }
}

/// A connection's responses whose bodies have ended but whose last bytes may not be written
/// yet: finished by the connection's next completed flush, or (as cut) when the connection's
/// state is dropped.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    /// True while `list` may be non-empty (one load per flush when nothing is recorded).
    any: AtomicBool,
    list: Mutex<Vec<Recording>>,
}

impl Unflushed {
    /// A response's body has ended.
    pub(super) fn push(&self, r: Recording) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.push(r);
        self.any.store(true, Ordering::Release);
    }

    /// The connection's I/O completed a flush: what was pushed before is written.
    #[inline]
    pub(super) fn flushed(&self) {
        if self.any.load(Ordering::Acquire) {
            self.finish_all();
        }
    }

    /// Finish what the list holds, one at a time (the list keeps its allocation: one push and
    /// one pop per response, no allocation once the connection has had a response).
    fn finish_all(&self) {
        loop {
            let (r, more) = {
                let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
                let r = list.pop();
                if list.is_empty() {
                    self.any.store(false, Ordering::Release);
                }
                (r, !list.is_empty())
            };
            let Some(r) = r else { return };
            // Outside the lock: the observer formats and queues the line.
            r.written();
            if !more {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(Outcome, u16, u64)>>);

    impl Observer for Seen {
        fn started(&self, headers: &HeaderMap, ex: &mut Exchange) {
            ex.user_agent = headers.get(http::header::USER_AGENT).cloned();
        }
        fn finished(&self, ex: &Exchange) {
            self.0
                .lock()
                .unwrap()
                .push((ex.outcome, ex.status.as_u16(), ex.bytes));
        }
    }

    fn rec(o: &Arc<dyn Observer>) -> Recording {
        let req = http::Request::builder()
            .uri("/x?y=1")
            .header("user-agent", "t/1")
            .body(())
            .unwrap();
        Recording::start(o, &req, ClientAddr(([127, 0, 0, 1], 9).into()))
    }

    #[test]
    fn each_request_finishes_once_whatever_its_end() {
        let seen = Arc::new(Seen::default());
        let o: Arc<dyn Observer> = seen.clone();
        // Written: only at the flush after its body ended.
        let mut a = rec(&o);
        a.answered(StatusCode::CREATED);
        a.took(5);
        let un = Unflushed::default();
        un.flushed();
        un.push(a);
        assert!(seen.0.lock().unwrap().is_empty(), "finished before a flush");
        un.flushed();
        un.flushed();
        // Answered, never flushed: cut when the connection's state goes.
        let mut b = rec(&o);
        b.answered(StatusCode::OK);
        un.push(b);
        drop(un);
        // Never answered: abandoned.
        drop(rec(&o));
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![
                (Outcome::Written, 201, 5),
                (Outcome::Cut, 200, 0),
                (Outcome::Abandoned, 499, 0)
            ]
        );
    }
}
