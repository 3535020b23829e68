//! One request as serving sees it ([`Exchange`]), and the [`Observer`] told about each request
//! once, when it has finished. This is the one point where requests are recorded: the access
//! log and the metrics (`crate::observe`, a layer above this one) implement [`Observer`] and are
//! handed down to each listener's [`super::Endpoint`]; serving never imports them.
//!
//! # When a request has finished
//! A request has finished when the last byte of its response has been *written to the socket*
//! (DESIGN property 4), not when hyper dropped its body (which only means the last chunk was
//! queued, possibly megabytes before a slow client reads it). So:
//! 1. [`Recording::start`] takes the request's facts when its head arrives (method, version, the
//!    client as the connection reports it in [`ClientAddr`] — the proxied client with the PROXY
//!    protocol — and what the observer wants from the target and the headers);
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
//! Cost: nothing at all for a listener without an observer (one `Option` test per request, two
//! loads per flush). With one: a monotonic clock read at each end ([`mono_ns`]: plain
//! nanoseconds, so a duration is one subtraction), the record itself (boxed, and the box reused
//! by the connection's next request: see [`Unflushed`]; its references to the request head's
//! bytes are taken only if the observer wants them, and dropped when it finishes), and no lock:
//! an HTTP/1 request's record moves from its body to the flush and back to the next request by
//! a compare-and-swap and three swaps. Then the observer's calls. Measured on a keep-alive
//! `hello` request with the JSON access log, metrics and request ids (BENCHMARKS (ai)):
//! [`Recording::start`] 261 instructions (the access log's `started` 181 of them: the path,
//! the header pass, the id), the answer's bookkeeping 44 besides the `x-request-id` insert
//! (235, `http`'s own), the body's end 57 (with the body's own drop and the busy count's), the
//! flush's finishing 143 besides the log line (the second clock read, the references let go,
//! the tally's three additions): about 505 in all, down from 644. A made id then moved into
//! the response instead of being cloned there, its 33 bytes kept in the record for the log
//! ([`Exchange::id_bytes`]): about 30 less (BENCHMARKS (aj)).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use crate::handler::ClientAddr;
use crate::sys::BoxSlot;
use crate::tally::RouteTally;

/// `x-request-id`: a request's id, taken from the request or given to it, and returned in the
/// response.
pub(crate) static X_REQUEST_ID: http::header::HeaderName = X_REQUEST_ID_NAME;

/// [`X_REQUEST_ID`] as a `const`, to give away: each use is a new copy of the value (a static
/// `Bytes`: a few stores), where cloning the static calls through the `Bytes` vtable (about 20
/// instructions more per response).
// The `AtomicPtr` inside `Bytes` that the lint sees is never used by a static `Bytes` (its
// vtable ignores it), and the const is only ever moved, never borrowed.
#[allow(clippy::declare_interior_mutable_const)]
pub(crate) const X_REQUEST_ID_NAME: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// The monotonic clock (`CLOCK_MONOTONIC`, as [`std::time::Instant`] reads it) in nanoseconds:
/// a plain number, so a duration is a subtraction and an offset from another reading an
/// addition, with no library call (`Instant`'s arithmetic is not inlined).
#[inline]
pub(crate) fn mono_ns() -> u64 {
    crate::sys::monotonic_ns()
}

/// Told about every request of the listeners it is given to.
pub(crate) trait Observer: Send + Sync + fmt::Debug + 'static {
    /// A request's head has arrived; `ex` holds what serving knows. Take from `uri` and
    /// `headers` what [`Observer::finished`] will need (into `ex`), and give the request its id
    /// (`ex.request_id`) if this observer gives ids: it is recorded in the request's tracing
    /// span, and returned in the response's `x-request-id` header when `ex.echo_id` is set.
    fn started(&self, uri: &Uri, headers: &HeaderMap, ex: &mut Exchange);

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
    /// When its head arrived ([`mono_ns`]).
    pub started: u64,
    /// From `started` to the end, in ns (set when it finishes).
    pub duration_ns: u64,
    /// The request's method.
    pub method: Method,
    /// The request target's path and query as received (for HTTP/2, from its `:path`), if the
    /// observer kept it.
    pub path: Option<PathAndQuery>,
    /// The target of a request in authority form (a `CONNECT`'s `host:port`, which has no
    /// path), if the observer kept it. Boxed: the record stays in its allocator size class
    /// (304 bytes, in mimalloc's 320 bin; at 336 it shared tokio's task cells' bin, and a
    /// new connection cost ~100 instructions more in the allocator's slow path).
    pub authority: Option<Box<Authority>>,
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
    /// The request's id (visible ASCII), if the observer gives ids: its own `x-request-id`, or
    /// one made for it. Read it with [`Exchange::id_bytes`]: once answered, an id of a made id's
    /// length has moved into the response and only its copy is here.
    pub request_id: Option<HeaderValue>,
    /// The id goes into the response's `x-request-id` (the observer says so with the id).
    pub echo_id: bool,
    /// The copy of the id that went into the response (when `id_sent`).
    sent_id: [u8; crate::sys::ID_LEN],
    /// The id moved into the response: `sent_id` holds it.
    id_sent: bool,
    /// The `User-Agent` header, if the observer kept it.
    pub user_agent: Option<HeaderValue>,
    /// The `Referer` header, if the observer kept it.
    pub referer: Option<HeaderValue>,
    /// The matched route's counters, when its server counts requests (metrics).
    pub tally: Option<Arc<RouteTally>>,
}

impl Exchange {
    /// A request from `client` whose head arrived at `started`.
    pub(crate) fn new(
        started: u64,
        method: Method,
        version: Version,
        client: ClientAddr,
    ) -> Exchange {
        Exchange {
            started,
            duration_ns: 0,
            method,
            path: None,
            authority: None,
            version,
            client,
            status: StatusCode::OK,
            bytes: 0,
            outcome: Outcome::Open,
            request_id: None,
            echo_id: false,
            sent_id: [0; crate::sys::ID_LEN],
            id_sent: false,
            user_agent: None,
            referer: None,
            tally: None,
        }
    }

    /// Let go of what refers to other memory (the request head's bytes, the route's counters),
    /// once finished.
    fn release(&mut self) {
        self.path = None;
        self.authority = None;
        self.request_id = None;
        self.id_sent = false;
        self.user_agent = None;
        self.referer = None;
        self.tally = None;
    }
}

impl Exchange {
    /// The request's id, if it has one: its copy once the value went into the response.
    #[inline]
    pub(crate) fn id_bytes(&self) -> Option<&[u8]> {
        if self.id_sent {
            Some(&self.sent_id)
        } else {
            self.request_id.as_ref().map(HeaderValue::as_bytes)
        }
    }
}

/// A request's tracing span: one callsite for every request, so [`spans_wanted`] asks about
/// the very span [`Recording::span`] makes.
fn request_span(id: &HeaderValue) -> tracing::Span {
    tracing::info_span!("request", request_id = %id.to_str().unwrap_or("-"))
}

/// Whether requests' spans may be recorded at all (their callsite is not off for good). Asked
/// once per connection: the answer changes only with the subscriber (a worker sets its own
/// once), and when it is no, [`Recording::span`] is not called (its check costs about 80
/// instructions per request).
pub(crate) fn spans_wanted() -> bool {
    !request_span(&HeaderValue::from_static("-")).is_disabled()
}

/// nginx's status for a request whose client closed the connection before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request being recorded: finished exactly once, by [`Unflushed`] when its last byte is
/// written or, failing that, when dropped (see the module doc). One pointer wide, so the futures
/// and bodies that carry it grow by a word only (hyper moves them).
pub(crate) struct Recording(Box<Recorded>);

/// Finished when dropped unless already finished (`outcome` is then [`Outcome::Written`]: a
/// spare box kept for reuse is in that state).
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
    /// Start recording `req` from `client` for `observer`, on the connection whose finished
    /// recordings `unflushed` keeps (its spare box is reused).
    pub(crate) fn start<B>(
        observer: &Arc<dyn Observer>,
        req: &http::Request<B>,
        client: ClientAddr,
        unflushed: &Unflushed,
    ) -> Recording {
        let started = mono_ns();
        let mut r = match unflushed.take_spare() {
            Some(mut r) => {
                if !Arc::ptr_eq(&r.observer, observer) {
                    r.observer = observer.clone();
                }
                // Set in place; the references were released when it finished.
                let ex = &mut r.ex;
                ex.started = started;
                ex.method = req.method().clone();
                ex.version = req.version();
                ex.client = client;
                ex.status = StatusCode::OK;
                ex.bytes = 0;
                ex.outcome = Outcome::Open;
                r
            }
            None => Recorded::boxed(observer, started, req.method(), req.version(), client),
        };
        let Recorded { observer, ex } = &mut *r;
        observer.started(req.uri(), req.headers(), ex);
        Recording(r)
    }

    /// The id to return in the response, if the request has one. An id of a made id's length
    /// (every made one) is moved there and its bytes copied for the record, so no reference
    /// count is taken now and released at the finish (about 30 instructions); another is cloned.
    /// Called once, when the handler answers.
    pub(crate) fn id_for_response(&mut self) -> Option<HeaderValue> {
        let ex = &mut self.0.ex;
        if !ex.echo_id {
            return None;
        }
        let id = ex.request_id.as_ref()?;
        match <&[u8; crate::sys::ID_LEN]>::try_from(id.as_bytes()) {
            Ok(bytes) => {
                ex.sent_id = *bytes;
                ex.id_sent = true;
                ex.request_id.take()
            }
            Err(_) => Some(id.clone()),
        }
    }

    /// The tracing span the handler runs in: `request{request_id=…}`, when the request has an
    /// id. (When the `request` span's level is off, this is a disabled span: no cost beyond a
    /// check; the id is not even read.)
    pub(crate) fn span(&self) -> Option<tracing::Span> {
        let span = request_span(self.0.ex.request_id.as_ref()?);
        (!span.is_disabled()).then_some(span)
    }

    /// The route table routed the request: it counts in `tally` (when its server counts).
    pub(crate) fn routed(&mut self, tally: Option<&Arc<RouteTally>>) {
        if let Some(t) = tally {
            self.0.ex.tally = Some(t.clone());
        }
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

    /// The response's last byte was written: finish it, and hand back its box for reuse.
    fn written(self) -> Box<Recorded> {
        let mut r = self.0;
        r.ex.outcome = Outcome::Written;
        r.finish();
        r
    }
}

impl Recorded {
    /// A new record (out of line: a connection's first request only).
    #[cold]
    #[inline(never)]
    fn boxed(
        observer: &Arc<dyn Observer>,
        started: u64,
        method: &Method,
        version: Version,
        client: ClientAddr,
    ) -> Box<Recorded> {
        Box::new(Recorded {
            observer: observer.clone(),
            ex: Exchange::new(started, method.clone(), version, client),
        })
    }

    fn finish(&mut self) {
        let ex = &mut self.ex;
        ex.duration_ns = mono_ns().saturating_sub(ex.started);
        if ex.outcome == Outcome::Open {
            ex.outcome = Outcome::Abandoned;
            ex.status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(ex.status);
        }
        self.observer.finished(ex);
        ex.release();
    }
}

impl Drop for Recorded {
    /// Not written: cut after its answer, or abandoned before one (`written` finishes the
    /// others, and marks them so this does nothing).
    fn drop(&mut self) {
        if self.ex.outcome != Outcome::Written {
            self.finish();
        }
    }
}

/// A connection's responses whose bodies have ended but whose last bytes may not be written
/// yet: finished by the connection's next completed flush, or (as cut) when the connection's
/// state is dropped. It also keeps the box of the last one finished, which the connection's next
/// request reuses (one allocation per connection, not one per request).
///
/// The list is `first` then `more`. An HTTP/1 connection has one response at a time, so the
/// usual list of one is an atomic slot: its body's end puts the record there with one
/// compare-and-swap, and the flush takes it with one swap; no lock is taken. Only a second
/// record pushed before the flush (pipelined HTTP/1, HTTP/2 streams) goes to `more`, behind a
/// lock. Pushes on one thread (HTTP/1: the connection's task) are finished in order: `first` is
/// taken before `more` is drained, and a push goes to `more` only while `first` is full.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    /// The first record pushed since the last flush.
    first: BoxSlot<Recorded>,
    /// True while `more` may be non-empty (set under its lock).
    any_more: AtomicBool,
    /// The records pushed while `first` was full, in order.
    more: Mutex<Vec<Recording>>,
    /// The box of the last request finished, for the next one (an atomic swap to put, one to
    /// take).
    spare: BoxSlot<Recorded>,
}

impl Unflushed {
    fn lock_more(&self) -> MutexGuard<'_, Vec<Recording>> {
        self.more.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The box of the last request finished, for the next one.
    fn take_spare(&self) -> Option<Box<Recorded>> {
        self.spare.take()
    }

    /// A response's body has ended.
    #[inline]
    pub(super) fn push(&self, r: Recording) {
        if let Err(b) = self.first.put_if_empty(r.0) {
            self.push_more(Recording(b));
        }
    }

    #[inline(never)]
    fn push_more(&self, r: Recording) {
        let mut more = self.lock_more();
        more.push(r);
        self.any_more.store(true, Ordering::Release);
    }

    /// The connection's I/O completed a flush: what was pushed before is written.
    #[inline]
    pub(super) fn flushed(&self) {
        if self.first.is_full() || self.any_more.load(Ordering::Acquire) {
            self.finish_all();
        }
    }

    /// Finish what the list holds, in the order the bodies ended (`more` keeps its allocation).
    /// The observer is called with `more`'s lock held while that is drained: only this
    /// connection's body ends wait on it, and the observer takes no lock of serving's.
    #[inline(never)]
    fn finish_all(&self) {
        if let Some(r) = self.first.take() {
            self.spare.put(Recording(r).written());
        }
        if self.any_more.load(Ordering::Acquire) {
            self.finish_more();
        }
    }

    /// Finish `more` (out of line: the usual list has only `first`).
    #[cold]
    #[inline(never)]
    fn finish_more(&self) {
        let mut more = self.lock_more();
        self.any_more.store(false, Ordering::Release);
        for r in more.drain(..) {
            self.spare.put(r.written());
        }
    }
}

#[cfg(test)]
mod tests;
