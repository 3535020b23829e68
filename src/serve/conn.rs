//! One connection: optional TLS handshake, then HTTP/1.1 or HTTP/2 through hyper, then the
//! drain rules described in the [`crate::serve`] module doc.
//!
//! Protocol choice: on TLS, ALPN decides (`h2` or `http/1.1`); on plain TCP, the first bytes are
//! read and looked at for the HTTP/2 prior-knowledge preface (h2c), and otherwise it is HTTP/1.1
//! ([`super::sniff`]). The chosen hyper connection gets those bytes back on its first read, then
//! reads the socket itself (instead of hyper-util's auto connection re-reading through a buffer
//! for the connection's life).
//!
//! The peer's address (from `accept`; [`ClientAddr::UNIX`] on a Unix socket) goes to the
//! router, which puts it in the request's extensions as [`ClientAddr`] for handlers that want
//! it. On a server with `proxy_protocol: true` the connection's PROXY header is read first
//! ([`super::proxy`]): the client it names becomes the `ClientAddr`, and the real peer travels
//! beside it for the admin's loopback check; a connection without a valid header is closed.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::exchange::{Recording, X_REQUEST_ID_NAME};
use super::guarded::Guarded;
use super::progress::{Busy, End, TrackedBody, TrackedIo};
use super::proxy::{self, Peek, Source};
use super::watchdog::{BODY_SEEN, ConnState};
use super::{Endpoint, Serving};
use crate::body::{Body, BodyWatch};
use crate::handler::text;
use crate::handler::{ClientAddr, Peer};
use http::StatusCode;
use hyper::body::Incoming;

/// Which HTTP versions a connection may speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Proto {
    /// Plain TCP: HTTP/1.1 or h2c prior knowledge.
    Auto,
    Http1,
    Http2,
}

/// An accepted connection's socket: TCP or Unix.
pub(crate) trait Stream:
    AsyncRead + AsyncWrite + Peek + Unpin + Send + Sync + 'static
{
}

impl<T: AsyncRead + AsyncWrite + Peek + Unpin + Send + Sync + 'static> Stream for T {}

/// Serve one accepted plain connection to the end (HTTP/1.1, or h2c with prior knowledge).
/// Its deadlines (first request head, keep-alive idle, drain grace) are enforced from outside by
/// the [`super::watchdog`], which drops this future when one passes; `state` is this
/// connection's entry there.
pub(crate) async fn serve_plain<S: Stream>(
    mut stream: S,
    peer: ClientAddr,
    ep: Arc<Endpoint>,
    serving: Arc<Serving>,
    state: Arc<ConnState>,
) {
    let Some(peer) = client_of(&mut stream, peer, &ep).await else {
        return;
    };
    let Some((proto, stream)) = super::sniff::first_bytes(stream).await else {
        return;
    };
    serve_io(stream, peer, proto, End::Close, ep, serving, state).await
}

/// Whom the connection serves: its peer, or on a `proxy_protocol` server the client its PROXY
/// header names (`None`: no valid header; the connection is to be closed). Within the header
/// deadline, like everything before the first request.
async fn client_of<S: Stream>(stream: &mut S, peer: ClientAddr, ep: &Endpoint) -> Option<Peer> {
    if !ep.proxy_protocol {
        return Some(Peer::direct(peer));
    }
    match proxy::read_header(stream).await {
        Ok(Source::Client(c)) => Some(Peer {
            client: ClientAddr(c),
            proxied_by: Some(peer.0),
        }),
        Ok(Source::Own) => Some(Peer::direct(peer)),
        Err(e) => {
            tracing::debug!(listener = %ep.key, peer = %peer.0, error = %e, "connection closed");
            None
        }
    }
}

/// Serve one accepted connection on an HTTPS listener to the end: the TLS handshake (bounded by
/// `header_read_timeout` through the watchdog), then HTTP/2 or HTTP/1.1 as ALPN chose.
pub(crate) async fn serve_tls<S: Stream>(
    mut stream: S,
    peer: ClientAddr,
    ep: Arc<Endpoint>,
    serving: Arc<Serving>,
    state: Arc<ConnState>,
) {
    let Some(acceptor) = ep.tls.clone() else {
        return;
    };
    // The PROXY header comes before the TLS handshake.
    let Some(peer) = client_of(&mut stream, peer, &ep).await else {
        return;
    };
    // A handshake under way when the drain starts is completed (bounded by the watchdog): the
    // client then gets its answer with `Connection: close`.
    match acceptor.accept(stream).await {
        Ok(tls) => {
            let proto = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Proto::Http2,
                _ => Proto::Http1,
            };
            serve_io(tls, peer, proto, End::Shutdown, ep, serving, state).await
        }
        Err(e) => tracing::debug!(listener = %ep.key, error = %e, "TLS handshake failed"),
    }
}

/// hyper's connection builders, made once per generation (see `Serving`). No hyper timers on
/// HTTP/1: the watchdog enforces the header-read deadline for all connections at once.
///
/// HTTP/2 memory per connection is bounded by the stream cap (`http2_max_concurrent_streams`)
/// times what one stream may buffer: hyper asks a body for a chunk only when the stream has
/// window, and h2 buffers at most [`H2_SEND_BUF`] of it per stream beyond the window.
#[derive(Debug)]
pub(crate) struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// For the rare plain connection whose protocol the first bytes did not settle.
    auto: auto::Builder<TokioExecutor>,
}

/// What one HTTP/2 stream may buffer for sending beyond its window (hyper's default is 400 KiB).
const H2_SEND_BUF: usize = 64 << 10;

impl Builders {
    pub(crate) fn new(max_streams: u32) -> Builders {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(max_streams)
            .max_send_buf_size(H2_SEND_BUF);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(max_streams)
            .max_send_buf_size(H2_SEND_BUF);
        Builders {
            http1: http1::Builder::new(),
            http2,
            auto,
        }
    }
}

/// Serve `io` with hyper as `proto`; `end`: what hyper's shutdown at the end does (see [`End`]).
pub(super) async fn serve_io<I>(
    io: I,
    peer: Peer,
    proto: Proto,
    end: End,
    ep: Arc<Endpoint>,
    serving: Arc<Serving>,
    state: Arc<ConnState>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if proto == Proto::Http2 {
        state.mark_h2();
    }
    let svc = {
        let routes = ep.routes.clone();
        let observer = ep.observer.clone();
        // Asked once per connection, not per request (see `exchange::spans_wanted`).
        let spans = observer.is_some() && super::exchange::spans_wanted();
        let state = state.clone();
        // Only a server with route timeouts holds the deadline list (a reference count per
        // connection otherwise saved).
        let deadlines = routes
            .has_timeouts()
            .then(|| serving.watchdog.deadlines.clone());
        let requests = serving.requests.clone();
        service_fn(move |req: http::Request<Incoming>| {
            let busy = state.request_started();
            if let Some(r) = &requests {
                r.count();
            }
            let http1 = req.version() < http::Version::HTTP_2;
            // hyper puts an `OnUpgrade` in the extensions of a request asking for an upgrade,
            // and of a `CONNECT` (an empty map costs one test to look in): a `101` answer, or a
            // 2xx to an HTTP/1 `CONNECT`, hands the connection to the application (see
            // `super::upgrade`).
            let upgrade = req
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some()
                .then(|| Upgrade::of(&req, http1));
            if !http1 {
                state.mark_h2();
            }
            // Recorded from here until its last byte is written (see `exchange`); dropped
            // unanswered (the client left), it is recorded as abandoned.
            let mut rec = observer
                .as_ref()
                .map(|o| Recording::start(o, &req, peer.client, &state.unflushed));
            let span = rec.as_ref().filter(|_| spans).and_then(Recording::span);
            // A body still to come is watched (see `progress`): if the handler waits for it
            // and nothing arrives for `idle_timeout`, the answer is 408.
            let (req, watched) = if http_body::Body::is_end_stream(req.body()) {
                (req.map(Body::incoming), None)
            } else {
                state.set(BODY_SEEN);
                let w: Arc<dyn BodyWatch> = state.clone();
                (
                    req.map(|b| Body::incoming_watched(b, w)),
                    Some(state.clone()),
                )
            };
            let bodiless = watched.is_none();
            let version = req.version();
            let (fut, tally, guards) = routes.dispatch_from(req, peer);
            if let Some(r) = &mut rec {
                r.routed(tally);
            }
            // Boxed again only when the span is on: the future hyper holds stays small.
            let fut: crate::handler::BoxFuture = match span {
                None => fut,
                Some(span) => Box::pin(fut.instrument(span)),
            };
            // A route's timeout or body limit (answered for the handler when it trips), or a
            // body still to come (`408` if it stalls): the handler's future is wrapped, in a
            // second box. Without either, hyper holds the handler's future as it is.
            let pending = match (guards.cutoff.clone(), watched) {
                (None, None) => Pending::Handler(fut),
                (None, Some(st)) => Pending::Guarded(Box::pin(async move {
                    answer_unless_body_stalls(async move { (fut.await, false) }, &st).await
                })),
                (Some(c), None) => Pending::Guarded(Box::pin(Guarded::new(
                    fut,
                    guards,
                    c,
                    deadlines.as_ref(),
                    version,
                ))),
                (Some(c), Some(st)) => {
                    let g = Guarded::new(fut, guards, c, deadlines.as_ref(), version);
                    Pending::Guarded(Box::pin(
                        async move { answer_unless_body_stalls(g, &st).await },
                    ))
                }
            };
            Answer {
                pending,
                busy: Some(busy),
                rec,
                upgrade,
                http1,
                bodiless,
            }
        })
    };
    let io = TokioIo::new(TrackedIo::new(io, state.clone(), end));
    let b = &serving.builders;
    // One branch per protocol. The HTTP/2 and auto connections are boxed, so the future every
    // connection task carries is only as big as HTTP/1's (tokio copies it when spawning): one
    // allocation per HTTP/2 connection, which is long-lived and multiplexed anyway.
    match proto {
        Proto::Http1 => {
            let conn = pin!(b.http1.serve_connection(io, svc).with_upgrades());
            drive(conn, |c| c.graceful_shutdown(), &ep, &serving, &state).await
        }
        Proto::Http2 => {
            let conn = Box::pin(b.http2.serve_connection(io, svc));
            drive(conn, |c| c.graceful_shutdown(), &ep, &serving, &state).await
        }
        Proto::Auto => {
            let conn = Box::pin(b.auto.serve_connection_with_upgrades(io, svc));
            drive(conn, |c| c.graceful_shutdown(), &ep, &serving, &state).await
        }
    }
    // Handed to the application (a WebSocket): still this connection, counted until the
    // application drops it or the host closes it (`super::upgrade`).
    if state.upgraded() {
        poll_fn(|_| {
            if state.stream_ended() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// What gives a request's answer: the handler's own future, or one that may answer for it and
/// says whether the HTTP/1 connection must close after the answer.
enum Pending {
    Handler(crate::handler::BoxFuture),
    Guarded(Pin<Box<dyn Future<Output = (crate::Response, bool)> + Send>>),
}

/// The future hyper holds for one request: a handful of words, written into hyper's slot for
/// each request (an `async` block holding the same, with one await per kind of [`Pending`],
/// was several times larger and cost a copy of itself per request).
struct Answer {
    pending: Pending,
    /// The request in flight; handed to the response body with the answer.
    busy: Option<Busy>,
    /// The request's recording, if its listener has an observer.
    rec: Option<Recording>,
    /// What the request asked to become, when hyper can hand its connection over.
    upgrade: Option<Upgrade>,
    http1: bool,
    /// The request came without a body.
    bodiless: bool,
}

impl Future for Answer {
    type Output = Result<http::Response<TrackedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // (No tuple for the usual kind: each move of a response is a copy of it.)
        let mut timed_out = false;
        let mut resp = match &mut this.pending {
            Pending::Handler(f) => ready!(f.as_mut().poll(cx)),
            Pending::Guarded(f) => {
                let (resp, cut) = ready!(f.as_mut().poll(cx));
                timed_out = cut;
                resp
            }
        };
        // Answered already (hyper does not poll again): never again.
        let Some(busy) = this.busy.take() else {
            return Poll::Pending;
        };
        if this.rec.is_some() {
            answered(&mut this.rec, &mut resp);
        }
        // A `101`, or a 2xx to an HTTP/1 `CONNECT` (a tunnel, as a forward proxy opens):
        // hyper hands the connection to the application once the head is written.
        let switching = match (resp.status(), this.upgrade) {
            (StatusCode::SWITCHING_PROTOCOLS, _) => true,
            (s, Some(Upgrade::Connect)) => s.is_success(),
            _ => false,
        };
        if let (Some(u), true) = (this.upgrade, switching) {
            busy.upgrading(u == Upgrade::WebSocket);
        }
        // Once draining, every HTTP/1 response closes its connection: the client learns it
        // before sending another request, so none is lost. (The generation's flag, reached
        // through the connection's state: no reference count is touched.) (Not on a `101`: its
        // `Connection: upgrade` is what makes it one; nor on a tunnel, which has no body.)
        let close = this.http1 && !switching && (timed_out || busy.generation_draining());
        if this.http1 {
            // Whether a close now ends it with `close` alone (see `progress::End`).
            busy.last_word(this.bodiless && !close);
        }
        let (mut head, body) = resp.into_parts();
        if close {
            head.headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let body = TrackedBody::new(body, busy, this.rec.take());
        Poll::Ready(Ok(http::Response::from_parts(head, body)))
    }
}

/// What a request hyper can hand the connection over for asks to become (see `super::upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    /// `Upgrade: websocket`, on a `101`.
    WebSocket,
    /// Another `Upgrade` protocol, on a `101`.
    Other,
    /// An HTTP/1 `CONNECT`: a tunnel, on a 2xx. (An HTTP/2 `CONNECT` is one stream of its
    /// connection, which stays the host's.)
    Connect,
}

impl Upgrade {
    /// What `req` (carrying hyper's `OnUpgrade`) asks for.
    fn of<B>(req: &http::Request<B>, http1: bool) -> Upgrade {
        if req.method() == http::Method::CONNECT {
            return if http1 {
                Upgrade::Connect
            } else {
                Upgrade::Other
            };
        }
        let websocket = req
            .headers()
            .get_all(http::header::UPGRADE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if websocket {
            Upgrade::WebSocket
        } else {
            Upgrade::Other
        }
    }
}

/// The handler answered: note its status and give the response the request's id. Out of line,
/// so the response is passed by reference and the path without a recording moves nothing more.
#[inline(never)]
fn answered(rec: &mut Option<Recording>, resp: &mut crate::Response) {
    if let Some(r) = rec {
        r.answered(resp.status());
        if let Some(id) = r.id_for_response() {
            resp.headers_mut().insert(X_REQUEST_ID_NAME, id);
        }
    }
}

/// The handler's answer, or `408` (and true) if its request body stalls first: the watchdog
/// found the handler waiting for a body that made no progress for `idle_timeout`. The handler is
/// dropped (its request body with it); the connection closes after the `408`.
async fn answer_unless_body_stalls(
    fut: impl Future<Output = (crate::Response, bool)>,
    state: &ConnState,
) -> (crate::Response, bool) {
    let stalled = state.body_stalled();
    tokio::select! {
        biased;
        r = fut => r,
        () = stalled => (
            text(StatusCode::REQUEST_TIMEOUT, "408 request timeout: the request body stopped arriving\n"),
            true,
        ),
    }
}

/// Run a hyper connection to its end. HTTP/1 needs nothing here when the drain starts (responses
/// carry `Connection: close`, the watchdog closes idle connections after the grace); HTTP/2 sends
/// GOAWAY as soon as the drain wakes this task (or the watchdog finds it idle for
/// `idle_timeout`), then finishes its open streams.
async fn drive<P, C, E>(
    mut conn: Pin<P>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    ep: &Endpoint,
    serving: &Serving,
    state: &ConnState,
) where
    P: std::ops::DerefMut<Target = C>,
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let r = poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if state.is_h2() && (serving.is_draining() || state.goaway_requested()) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    let r = match r {
        Some(r) => r,
        None => {
            graceful_shutdown(conn.as_mut());
            conn.as_mut().await
        }
    };
    if let Err(e) = r {
        tracing::debug!(listener = %ep.key, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::Upgrade;

    fn req(method: &str, upgrade: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri("/");
        if let Some(u) = upgrade {
            b = b.header(http::header::UPGRADE, u);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn what_a_request_asks_to_become() {
        assert_eq!(
            Upgrade::of(&req("GET", Some("WebSocket")), true),
            Upgrade::WebSocket
        );
        assert_eq!(Upgrade::of(&req("GET", Some("h2c")), true), Upgrade::Other);
        assert_eq!(Upgrade::of(&req("CONNECT", None), true), Upgrade::Connect);
        // An HTTP/2 CONNECT is a stream of a connection that stays the host's.
        assert_eq!(Upgrade::of(&req("CONNECT", None), false), Upgrade::Other);
    }
}
