//! [`Body`]: the response body type every handler returns.
//!
//! Most responses are one buffer ([`Body::from`] a `String`, `&'static str` or [`Bytes`]), which
//! costs no allocation beyond the buffer. Streaming responses (the `sleep` handler writes a line,
//! waits, writes another) use [`Body::channel`], which hands back a [`BodySender`] to push chunks
//! into; the body ends when the sender is dropped. Built-in handlers that produce data on demand
//! (the `static` handler reads a file chunk by chunk as the body is polled) wrap their own
//! [`http_body::Body`] (crate-internal).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body: empty, one buffer, or a stream of chunks.
#[derive(Debug)]
pub struct Body(Kind);

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
    Stream(Pin<Box<dyn StreamBody>>),
}

/// A body made on demand, polled for each chunk.
pub(crate) trait StreamBody:
    http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + std::fmt::Debug
{
}

impl<B> StreamBody for B where
    B: http_body::Body<Data = Bytes, Error = std::convert::Infallible>
        + Send
        + Sync
        + std::fmt::Debug
{
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body(Kind::Full(None))
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
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
            Kind::Stream(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Channel(_) => false,
            Kind::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Channel(_) => SizeHint::default(),
            Kind::Stream(b) => b.size_hint(),
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
}
