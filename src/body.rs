//! [`Body`]: the body type of every request and response.
//!
//! - **Requests**: a handler (or a hosted tower service) receives the connection's request body
//!   as a [`Body`] and reads it through [`http_body::Body`], frame by frame as the client sends
//!   it: nothing is buffered ahead, so a handler that reads slowly slows the client down
//!   (backpressure), and one that never reads holds nothing. A read fails with a [`BodyError`]
//!   when the connection does.
//! - **Responses**: most are one buffer ([`Body::from`] a `String`, `&'static str` or [`Bytes`]),
//!   which costs no allocation beyond the buffer. [`Body::new`] wraps any other
//!   [`http_body::Body`] (an axum or tower-http body, a stream of your own): it is polled by the
//!   connection as the client takes the data, with no task or channel in between (an
//!   `axum::body::Body`, what an axum `Router` answers with, is carried as it is; any other body
//!   is put in one box), and an error
//!   it returns mid-response resets the HTTP/2 stream or closes the HTTP/1 connection (the
//!   client sees a cut response, never a short one that looks whole) and is logged.
//!   [`Body::channel`] hands back a [`BodySender`] to push chunks into from a task of your own;
//!   the body ends when the sender is dropped.
//!
//! - **Limits**: a request body under `max_request_body` fails to read (a [`BodyError`] saying
//!   so) once it has grown past the limit, whatever reads it (a handler, a hosted tower service);
//!   the connection then answers `413` for the handler (see `serve::guarded`).
//!
//! Built-in handlers that produce data on demand (the `static` handler reads a file chunk by
//! chunk as the body is polled) wrap their own [`http_body::Body`] (crate-internal).
//!
//! A request can be made without a connection, for tests: `http::Request::new(Body::from("…"))`.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// What other bodies' and services' errors are converted into (tower's `BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body could not be read: the client's connection failed while a request body was being
/// read, or a wrapped response body returned an error.
#[derive(Debug)]
pub struct BodyError(BoxError);

impl BodyError {
    /// Wrap any error.
    pub fn new(e: impl Into<BoxError>) -> BodyError {
        BodyError(e.into())
    }

    /// The error it wraps.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A request or response body: empty, one buffer, the connection's request body, or a stream.
pub struct Body(Kind);

enum Kind {
    Full(Option<Bytes>),
    /// A request body as hyper reads it from the connection.
    Incoming(hyper::body::Incoming),
    /// The same, reporting its handler's waits to the connection (boxed: only requests with a
    /// body to come pay for it).
    Watched(Box<Watched>),
    Channel(mpsc::Receiver<Bytes>),
    Stream(Pin<Box<dyn StreamBody>>),
    /// An axum body (`axum::body::Body`, itself one box), carried as it is: no second box
    /// around it (feature `axum-body`).
    #[cfg(feature = "axum-body")]
    Axum(axum_core::body::Body),
    /// Any other body, its errors boxed.
    Boxed(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BodyError> + Send>>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Kind::Full(None) => "empty",
            Kind::Full(Some(_)) => "full",
            Kind::Incoming(_) | Kind::Watched(_) => "incoming",
            Kind::Channel(_) => "channel",
            Kind::Stream(_) => "stream",
            #[cfg(feature = "axum-body")]
            Kind::Axum(_) => "axum",
            Kind::Boxed(_) => "boxed",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

/// Who watches a request body's progress (the connection it arrives on): told when the handler
/// starts waiting for the next frame (a poll returned `Pending`) and when that wait ends (a
/// frame or the end arrived, or the body was dropped).
pub(crate) trait BodyWatch: Send + Sync {
    fn wait_started(&self);
    fn wait_ended(&self);
}

/// A watched request body ([`Body::incoming_watched`]).
struct Watched {
    inner: hyper::body::Incoming,
    watch: Arc<dyn BodyWatch>,
    /// True while the last poll returned `Pending` (counted by the watch as waiting).
    waiting: bool,
    /// `max_request_body`, if one applies ([`Body::limit`]): the bytes still allowed, and who
    /// is told when the body grows past them.
    limit: Option<(u64, Arc<Cutoff>)>,
}

impl Watched {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some((_, cutoff)) = &self.limit
            && cutoff.is(Cutoff::TOO_LARGE)
        {
            return Poll::Ready(Some(Err(BodyError::new(TooLarge))));
        }
        let r = http_body::Body::poll_frame(Pin::new(&mut self.inner), cx);
        match (r.is_pending(), self.waiting) {
            (true, false) => self.watch.wait_started(),
            (false, true) => self.watch.wait_ended(),
            _ => {}
        }
        self.waiting = r.is_pending();
        if let (Poll::Ready(Some(Ok(f))), Some((left, cutoff))) = (&r, &mut self.limit)
            && let Some(d) = f.data_ref()
        {
            match left.checked_sub(d.len() as u64) {
                Some(l) => *left = l,
                None => {
                    cutoff.trip(Cutoff::TOO_LARGE);
                    return Poll::Ready(Some(Err(BodyError::new(TooLarge))));
                }
            }
        }
        r.map_err(|e| BodyError(Box::new(e)))
    }
}

/// The error a request body read returns once the body has grown past `max_request_body`.
#[derive(Debug)]
struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body is larger than max_request_body")
    }
}

impl std::error::Error for TooLarge {}

/// Why a request must be answered before its handler does: its body grew past
/// `max_request_body` ([`Cutoff::TOO_LARGE`]) or its route's `timeout` passed
/// ([`Cutoff::TIMED_OUT`]). Shared by the request's body, the watchdog's deadline list and the
/// future that answers for the handler, which is woken when a reason is set.
#[derive(Debug, Default)]
pub(crate) struct Cutoff {
    reasons: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Cutoff {
    /// The request body grew past `max_request_body`.
    pub(crate) const TOO_LARGE: u8 = 1;
    /// The route's `timeout` passed before the handler answered.
    pub(crate) const TIMED_OUT: u8 = 2;

    /// Whether `reason` is set.
    pub(crate) fn is(&self, reason: u8) -> bool {
        self.reasons.load(Ordering::Acquire) & reason != 0
    }

    /// Set `reason` and wake the answering future.
    pub(crate) fn trip(&self, reason: u8) {
        self.reasons.fetch_or(reason, Ordering::AcqRel);
        if let Some(w) = self.lock().take() {
            w.wake();
        }
    }

    /// Wake `waker` when a reason is set (call, then look at the reasons again).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = self.lock();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.waiting {
            self.watch.wait_ended();
        }
    }
}

/// A body made on demand, polled for each chunk.
pub(crate) trait StreamBody:
    http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + fmt::Debug
{
}

impl<B> StreamBody for B where
    B: http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + fmt::Debug
{
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body(Kind::Full(None))
    }

    /// Wrap any body whose data is [`Bytes`] (an `axum::body::Body`, a tower-http body, a
    /// `http_body_util::StreamBody`, …). It is polled directly by the connection as the client
    /// takes the data (one allocation, no task); an error it returns ends the response as
    /// described in the module doc. A [`Body`] is returned as it is, and so is an
    /// `axum::body::Body` (already a box of its own; feature `axum-body`, on by default).
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        if let Some(b) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Body>>() {
            return b.take().unwrap_or_default();
        }
        #[cfg(feature = "axum-body")]
        if let Some(b) = (&mut slot as &mut dyn Any).downcast_mut::<Option<axum_core::body::Body>>()
        {
            return b.take().map_or_else(Body::empty, |b| Body(Kind::Axum(b)));
        }
        match slot {
            Some(b) => Body(Kind::Boxed(Box::pin(MapErr { inner: b }))),
            None => Body::empty(),
        }
    }

    /// The request body hyper reads from a connection.
    pub(crate) fn incoming(b: hyper::body::Incoming) -> Body {
        Body(Kind::Incoming(b))
    }

    /// The request body hyper reads from a connection, reporting to `watch` when the handler
    /// starts and stops waiting for data (so a body that stops arriving is found out).
    pub(crate) fn incoming_watched(b: hyper::body::Incoming, watch: Arc<dyn BodyWatch>) -> Body {
        Body(Kind::Watched(Box::new(Watched {
            inner: b,
            watch,
            waiting: false,
            limit: None,
        })))
    }

    /// Apply `max_request_body` (`max` bytes) to a request body still to come from a
    /// connection: a read that takes it past `max` fails, and `cutoff` is told. False for any
    /// other body (nothing to limit).
    pub(crate) fn limit(&mut self, max: u64, cutoff: Arc<Cutoff>) -> bool {
        match &mut self.0 {
            Kind::Watched(w) => {
                w.limit = Some((max, cutoff));
                true
            }
            _ => false,
        }
    }

    /// A streaming body and the sender that feeds it. Chunks are sent as they are pushed; the
    /// body ends when the [`BodySender`] is dropped.
    pub fn channel() -> (BodySender, Body) {
        let (tx, rx) = mpsc::channel(16);
        (BodySender(tx), Body(Kind::Channel(rx)))
    }

    /// A body whose chunks `body` makes when polled (nothing is read ahead).
    pub(crate) fn stream(body: impl StreamBody + 'static) -> Body {
        Body(Kind::Stream(Box::pin(body)))
    }
}

pin_project_lite::pin_project! {
    /// A body with its errors converted to [`BodyError`].
    struct MapErr<B> {
        #[pin]
        inner: B,
    }
}

impl<B> http_body::Body for MapErr<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.project()
            .inner
            .poll_frame(cx)
            .map_err(|e| BodyError(e.into()))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        if b.is_empty() {
            Body::empty()
        } else {
            Body(Kind::Full(Some(b)))
        }
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::from(Bytes::from(v))
    }
}

/// Feeds a [`Body::channel`] body.
#[derive(Debug, Clone)]
pub struct BodySender(mpsc::Sender<Bytes>);

impl BodySender {
    /// Send one chunk. Returns false when the client has gone (the body was dropped).
    pub async fn send(&self, chunk: impl Into<Bytes>) -> bool {
        self.0.send(chunk.into()).await.is_ok()
    }

    /// Resolves when the body has been dropped (the client went away or the response ended).
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| BodyError(Box::new(e))),
            Kind::Watched(w) => w.poll_frame(cx),
            Kind::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
            Kind::Stream(b) => b.as_mut().poll_frame(cx).map_err(|e| match e {}),
            #[cfg(feature = "axum-body")]
            Kind::Axum(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| BodyError(e.into_inner())),
            Kind::Boxed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Watched(w) => w.inner.is_end_stream(),
            Kind::Channel(_) => false,
            Kind::Stream(b) => b.is_end_stream(),
            #[cfg(feature = "axum-body")]
            Kind::Axum(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Watched(w) => w.inner.size_hint(),
            Kind::Channel(_) => SizeHint::default(),
            Kind::Stream(b) => b.size_hint(),
            #[cfg(feature = "axum-body")]
            Kind::Axum(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_body_yields_its_bytes_once() {
        let b = Body::from("hello");
        assert_eq!(http_body::Body::size_hint(&b).exact(), Some(5));
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello");
    }

    #[tokio::test]
    async fn channel_body_ends_when_sender_drops() {
        let (tx, body) = Body::channel();
        tokio::spawn(async move {
            assert!(tx.send("a").await);
            assert!(tx.send("b").await);
        });
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"ab");
    }

    #[tokio::test]
    async fn new_wraps_any_body_and_keeps_its_size_and_errors() {
        // A body is returned as it is (no second box).
        let b = Body::new(Body::from("same"));
        assert!(matches!(b.0, Kind::Full(Some(_))), "{b:?}");
        // Another body streams through, with its exact size.
        let full = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let b = Body::new(full);
        assert_eq!(http_body::Body::size_hint(&b).exact(), Some(10));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "0123456789");
        // An error mid-body comes out as a BodyError, after the data before it.
        let mut b = Body::new(Failing(Some(Bytes::from_static(b"part"))));
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[cfg(feature = "axum-body")]
    #[tokio::test]
    async fn an_axum_body_is_carried_as_it_is_with_its_size_and_errors() {
        let b = Body::new(axum::body::Body::from("from axum"));
        assert!(matches!(b.0, Kind::Axum(_)), "{b:?}");
        assert_eq!(http_body::Body::size_hint(&b).exact(), Some(9));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "from axum");
        // An axum body around a failing one: its error comes out as a BodyError, after the data.
        let mut b = Body::new(axum::body::Body::new(Failing(Some(Bytes::from_static(
            b"part",
        )))));
        assert!(matches!(b.0, Kind::Axum(_)), "{b:?}");
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    /// Yields its chunk, then an error.
    struct Failing(Option<Bytes>);

    impl http_body::Body for Failing {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(match self.0.take() {
                Some(b) => Ok(Frame::data(b)),
                None => Err(std::io::Error::other("disk on fire")),
            }))
        }
    }
}
